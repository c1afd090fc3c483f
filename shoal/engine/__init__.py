"""Shoal's native engine: batched io_uring reads and writes, crc32c, and the page store."""

from .._errors import PageCorruptedError, PageNotFoundError, StaleLocationError, TierFullError
from ._engine import backend, crc32c, get_backend, read_batch, read_files, write_batch

__all__ = [
    "PageCorruptedError",
    "PageNotFoundError",
    "StaleLocationError",
    "TierFullError",
    "backend",
    "crc32c",
    "get_backend",
    "read_batch",
    "read_files",
    "write_batch",
]
