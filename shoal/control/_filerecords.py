"""File records kept with the page index: what a worker knows of the files it cached
(their under-store URI, version, size, modification time, and until when that metadata
holds), so that after a restart it serves them without asking the under-stores again.

A record is written in the same index batch as the file's first page, under the file's
Shoal path. A restarted worker takes back the records whose metadata still holds, whose
path still resolves to the same URI, and whose first page is still cached; it drops the
others. The mount's ``metadata_ttl`` decides, as before the restart, when a store is asked
again: the time left is kept in wall-clock seconds, across the restart.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import msgpack

from ..engine._batch import pack_rows
from .ufs import ObjectInfo

__all__ = ["FileRecord", "decode_record", "encode_record", "encode_records"]

_FORMAT = 1


class FileRecord(NamedTuple):
    """A file as a worker once cached it."""

    uri: str
    info: ObjectInfo
    expires: float  # wall-clock seconds until which the metadata holds


def encode_record(uri: str, info: ObjectInfo, ttl_left: float) -> bytes:
    """The record of a file whose metadata holds ``ttl_left`` seconds more."""
    return encode_records([(uri, info, ttl_left)])[0]


def encode_records(items: list[tuple[str, ObjectInfo, float]]) -> list[bytes]:
    """:func:`encode_record` of each ``(uri, info, ttl_left)``, packed natively with one
    look at the clock for them all. A name the file system gave in bytes that are not
    UTF-8 keeps them (as ``surrogateescape`` decoded them)."""
    now = time.time()
    return pack_rows(
        [
            (_FORMAT, uri, info.path, info.version, info.size, info.mtime, now + left)
            for uri, info, left in items
        ]
    )


def decode_record(value: bytes) -> FileRecord | None:
    """The record in ``value``; None for one of another format or malformed."""
    try:
        fields = msgpack.unpackb(value, unicode_errors="surrogateescape")
    except (ValueError, msgpack.UnpackException):
        return None
    if not isinstance(fields, list) or len(fields) != 7 or fields[0] != _FORMAT:
        return None
    _, uri, path, version, size, mtime, expires = fields
    if not (
        isinstance(uri, str) and isinstance(path, str) and isinstance(version, str)
        and type(size) is int and size >= 0 and isinstance(mtime, (int, float))
        and isinstance(expires, (int, float))
    ):  # fmt: skip
        return None
    return FileRecord(uri, ObjectInfo(path, size, version, float(mtime)), float(expires))
