"""Shoal's exceptions: each one also inherits the builtin OSError subclass that fits it,
so callers can catch ``FileNotFoundError`` or ``OSError`` as they would for local files."""

from __future__ import annotations

import errno
import os

__all__ = [
    "ShoalError",
    "PageCorruptedError",
    "PageNotFoundError",
    "StaleLocationError",
    "TierFullError",
]


class ShoalError(Exception):
    """Base of every error Shoal raises on purpose."""


def _oserror_args(code: int, message: str, filename: object | None) -> tuple:
    if filename is None:
        return (code, message)
    return (code, message, os.fspath(filename) if isinstance(filename, os.PathLike) else filename)


class PageCorruptedError(ShoalError, OSError):
    """Bytes read back do not match the crc32c recorded when they were written (EIO)."""

    def __init__(self, message: str, filename: object | None = None):
        super().__init__(*_oserror_args(errno.EIO, message, filename))


class PageNotFoundError(ShoalError, FileNotFoundError):
    """The page store holds no page under this key (ENOENT)."""

    def __init__(self, message: str, filename: object | None = None):
        super().__init__(*_oserror_args(errno.ENOENT, message, filename))


class StaleLocationError(ShoalError, OSError):
    """A page location handed out earlier no longer holds the page: its region was
    reclaimed, and perhaps reused, since (ESTALE). Ask the owner of the store again."""

    def __init__(self, message: str, filename: object | None = None):
        super().__init__(*_oserror_args(errno.ESTALE, message, filename))


class TierFullError(ShoalError, OSError):
    """A tier cannot take a page even after eviction (ENOSPC)."""

    def __init__(self, message: str, filename: object | None = None):
        super().__init__(*_oserror_args(errno.ENOSPC, message, filename))
