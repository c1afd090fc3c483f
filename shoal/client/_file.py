"""The file object of :meth:`shoal.Client.open`."""

from __future__ import annotations

import io
import os
from typing import Any

__all__ = ["ShoalRawFile"]


class ShoalRawFile(io.RawIOBase):
    """Unbuffered, seekable, read-only access to one Shoal file; every ``readinto`` is a
    :meth:`shoal.Client.read_into` at the current position."""

    def __init__(self, client, path: str):
        super().__init__()
        self._client = client
        self._info = client.stat(path)
        if self._info.is_dir:
            raise IsADirectoryError(21, "is a directory", path)
        self.name = path
        self._pos = 0

    @property
    def size(self) -> int:
        """The file's size when it was opened."""
        return self._info.size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        self._checkClosed()
        n = self._client.read_into(b, self.name, self._pos)
        self._pos += n
        return n

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self._checkClosed()
        if isinstance(offset, bool) or not isinstance(offset, int):
            raise TypeError(f"offset must be an int, got {type(offset).__name__}")
        if whence == os.SEEK_SET:
            pos = offset
        elif whence == os.SEEK_CUR:
            pos = self._pos + offset
        elif whence == os.SEEK_END:
            pos = self._info.size + offset
        else:
            raise ValueError(f"invalid whence ({whence}, should be 0, 1 or 2)")
        if pos < 0:
            raise ValueError(f"negative seek position {pos}")
        self._pos = pos
        return pos

    def tell(self) -> int:
        self._checkClosed()
        return self._pos

    def __repr__(self) -> str:
        return f"<ShoalRawFile {self.name!r}>"
