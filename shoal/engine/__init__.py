"""Shoal's native engine: batched io_uring reads and writes, crc32c, region readers and the
page store.

The page store (and RocksDB with it) is loaded on first use only: a client reads region
files with :class:`RegionReader` and never opens a store.
"""

from typing import Any

from .._errors import PageCorruptedError, PageNotFoundError, StaleLocationError, TierFullError
from ._engine import backend, crc32c, get_backend, read_batch, read_files, write_batch
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

_PAGESTORE_NAMES = ("PageStore", "TierConfig", "TierUsage")


def __getattr__(name: str) -> Any:
    if name in _PAGESTORE_NAMES:
        from . import _pagestore

        for n in _PAGESTORE_NAMES:
            globals()[n] = getattr(_pagestore, n)
        return globals()[name]
    raise AttributeError(f"module 'shoal.engine' has no attribute {name!r}")
