"""The FUSE mount: Shoal's namespace as plain files, for training code that opens paths.

``shoal fuse mount MOUNTPOINT`` (or :func:`mount`) serves it from a process of its own,
never the worker's, through a :class:`shoal.Client`: a worker that dies or restarts under
the mount costs no error (reads go to the under-store meanwhile). Read-only until Shoal's
write path lands. Needs the ``fuse`` extra (pyfuse3, built on Debian's libfuse3).
"""

from ._mount import DEFAULT_READ_AHEAD, is_mounted, mount, unmount

__all__ = ["DEFAULT_READ_AHEAD", "is_mounted", "mount", "unmount"]
