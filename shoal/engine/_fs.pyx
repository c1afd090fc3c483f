# cython: language_level=3
"""Opens beneath a directory that follow no symbolic link: a thin layer over
``src/beneath.c``.

``openat2(2)`` with ``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`` where the kernel has it
(Linux 5.6 and later) and no seccomp filter refuses it, else a walk of ``openat(2)`` calls,
one per component, each with ``O_NOFOLLOW``. Either way the kernel resolves every
component of the path itself, so a link swapped in between a check and an open is never
followed: there is no check apart from the open.
"""

import errno
import os

__all__ = ["METHODS", "method", "open_beneath", "openat2_available"]


cdef extern from "<sys/types.h>":
    ctypedef unsigned int mode_t

cdef extern from "beneath.h" nogil:
    int SHOAL_BENEATH_OPENAT2
    int SHOAL_BENEATH_WALK
    int shoal_openat2_probe()
    int shoal_open_beneath(int root_fd, const char *path, int flags, mode_t mode, int method)


#: What ``SHOAL_OPEN_BENEATH`` may name, besides ``auto``.
METHODS = ("openat2", "walk")

cdef int _probed = 0  # 0: not yet; else 1 + the probe's result (0 or -errno)


def openat2_available():
    """True when this process may call ``openat2`` with the resolve flags used here;
    probed once, then cached (false on kernels before 5.6 and under seccomp filters that
    answer ``ENOSYS`` or ``EPERM``)."""
    global _probed
    cdef int rc
    if _probed == 0:
        with nogil:
            rc = shoal_openat2_probe()
        _probed = 1 + rc
    return _probed == 1


def method():
    """Name of the method :func:`open_beneath` uses by default: ``"openat2"`` or ``"walk"``.

    ``SHOAL_OPEN_BENEATH`` chooses one (``auto``, the default, takes ``openat2`` when
    :func:`openat2_available`); naming ``openat2`` where it is unavailable raises
    ``OSError(ENOSYS)``.
    """
    name = os.environ.get("SHOAL_OPEN_BENEATH", "auto").strip().lower() or "auto"
    if name == "auto":
        return "openat2" if openat2_available() else "walk"
    if name not in METHODS:
        raise ValueError(
            f"SHOAL_OPEN_BENEATH={name!r} is not a method; use auto, {' or '.join(METHODS)}"
        )
    if name == "openat2" and not openat2_available():
        raise OSError(
            errno.ENOSYS,
            "openat2 is not available in this process (kernel before 5.6, or refused by "
            "seccomp); set SHOAL_OPEN_BENEATH=walk",
        )
    return name


def open_beneath(int root_fd, path, int flags, int mode=0o600, *, using=None):
    """Open ``path`` beneath the directory ``root_fd`` without following any symbolic link.

    Parameters
    ----------
    root_fd
        Descriptor of a directory (``O_PATH`` is enough); the caller keeps it.
    path
        Relative and ``/``-separated (``str`` or ``bytes``); empty and ``.`` components are
        skipped, so ``"."`` opens the directory itself.
    flags
        ``os.O_*`` flags; ``O_CLOEXEC`` is added. ``openat2`` refuses flags it does not know,
        and any but ``O_DIRECTORY`` and ``O_CLOEXEC`` together with ``O_PATH``.
    mode
        Permissions of a file made with ``O_CREAT`` (the umask applies).
    using
        ``"openat2"`` or ``"walk"``; by default the one :func:`method` names.

    Returns
    -------
    int
        The new descriptor; the caller closes it.

    Raises
    ------
    PermissionError
        ``EACCES`` when any component of the path, the last included, is a symbolic link
        (wherever it points), besides the usual permission errors.
    ValueError
        The path is empty, absolute, or has a NUL byte or a ``..`` component.
    OSError
        Any other failure of the open (``FileNotFoundError``, ``NotADirectoryError`` ...),
        with its errno and ``path``.
    """
    cdef bytes encoded = os.fsencode(path)
    cdef const char *c_path
    cdef int c_method, fd
    cdef int c_flags = flags | os.O_CLOEXEC
    if not encoded:
        raise ValueError("open_beneath: the path is empty")
    if encoded.startswith(b"/"):
        raise ValueError(f"open_beneath: {path!r} is absolute")
    if b"\0" in encoded:
        raise ValueError(f"open_beneath: {path!r} contains a NUL byte")
    if b".." in encoded.split(b"/"):
        raise ValueError(f"open_beneath: {path!r} contains a '..' component")
    name = method() if using is None else using
    if name == "openat2":
        c_method = SHOAL_BENEATH_OPENAT2
    elif name == "walk":
        c_method = SHOAL_BENEATH_WALK
    else:
        raise ValueError(f"open_beneath: using must be one of {METHODS}, got {name!r}")
    c_path = encoded
    with nogil:
        fd = shoal_open_beneath(root_fd, c_path, c_flags, <mode_t>mode, c_method)
    if fd >= 0:
        return fd
    if fd == -errno.ELOOP or fd == -errno.EXDEV:
        raise PermissionError(
            errno.EACCES,
            "a symbolic link is in the path (no link is followed beneath the root)",
            os.fsdecode(path),
        )
    raise OSError(-fd, os.strerror(-fd), os.fsdecode(path))
