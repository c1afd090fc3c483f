"""Shoal's native engine: batched io_uring reads and writes, crc32c, and the page store."""

from .._errors import PageCorruptedError, PageNotFoundError, StaleLocationError, TierFullError
from ._engine import backend, crc32c, get_backend, read_batch, read_files, write_batch
from ._pagestore import PageStore, TierConfig, TierUsage
from ._regions import PageLocation, RegionReader

__all__ = [
    "PageCorruptedError",
    "PageLocation",
    "PageNotFoundError",
    "PageStore",
    "RegionReader",
    "StaleLocationError",
    "TierConfig",
    "TierFullError",
    "TierUsage",
    "backend",
    "crc32c",
    "get_backend",
    "read_batch",
    "read_files",
    "write_batch",
]
