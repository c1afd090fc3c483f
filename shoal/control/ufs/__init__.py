"""Under-stores: where the data Shoal caches lives (a directory, S3, anything fsspec
reaches), behind one small interface, :class:`UnderStore`.

Open one with :func:`open_store`; backends are imported when first used.
"""

from __future__ import annotations

from typing import Any

from ._base import REQUEST_KINDS, ObjectInfo, UnderStore
from ._errors import (
    ObjectChangedError,
    StoreConnectionError,
    StoreServerError,
    StoreTimeoutError,
    ThrottledError,
)
from ._registry import open_store, register_store, registered_schemes, store_class
from ._retry import RETRYABLE_ERRORS, RetryPolicy

__all__ = [
    "REQUEST_KINDS",
    "RETRYABLE_ERRORS",
    "FsspecStore",
    "LocalStore",
    "ObjectChangedError",
    "ObjectInfo",
    "RetryPolicy",
    "S3Config",
    "S3Store",
    "StoreConnectionError",
    "StoreServerError",
    "StoreTimeoutError",
    "ThrottledError",
    "UnderStore",
    "open_store",
    "register_store",
    "registered_schemes",
    "store_class",
]

# Backends load on first use, so importing this package does not import boto3 or fsspec.
_LAZY = {
    "LocalStore": "._local",
    "S3Store": "._s3",
    "S3Config": "._s3",
    "FsspecStore": "._fsspec",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
