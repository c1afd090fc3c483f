"""The floor of a FUSE file system in Python on this machine: one file whose every read
is answered with the same buffer, through pyfuse3 and trio as ``shoal fuse`` uses them.

    python perf/_nullfuse.py MOUNTPOINT SIZE   (serves until unmounted)
"""

from __future__ import annotations

import errno
import stat
import sys

import pyfuse3
import trio

REPLY = memoryview(bytes(1 << 20))


class NullOperations(pyfuse3.Operations):
    """``/f``: ``size`` zero bytes."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def _attrs(self, ino: int) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = ino
        a.entry_timeout = a.attr_timeout = 3600
        if ino == pyfuse3.ROOT_INODE:
            a.st_mode = stat.S_IFDIR | 0o555
        else:
            a.st_mode = stat.S_IFREG | 0o444
            a.st_size = self.size
        return a

    async def getattr(self, inode, ctx=None):
        return self._attrs(inode)

    async def lookup(self, parent_inode, name, ctx=None):
        if parent_inode != pyfuse3.ROOT_INODE or name != b"f":
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attrs(2)

    async def open(self, inode, flags, ctx):
        return pyfuse3.FileInfo(fh=1, keep_cache=False)

    async def read(self, fh, off, size):
        return REPLY[: max(0, min(size, self.size - off))]


def main() -> None:
    mountpoint, size = sys.argv[1], int(sys.argv[2])
    pyfuse3.init(NullOperations(size), mountpoint, {"fsname=nullfuse", "ro"})
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=False)


if __name__ == "__main__":
    main()
