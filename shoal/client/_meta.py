"""What the client knows about a file: :class:`FileInfo` for users, :class:`FileMeta` with
what a read needs (the file's id, its mount, store and placement options)."""

from __future__ import annotations

import time
from dataclasses import dataclass

__all__ = ["FileInfo", "FileMeta"]


@dataclass(frozen=True)
class FileInfo:
    """Metadata of a file or directory under a mount.

    Attributes
    ----------
    path
        Shoal path.
    size
        Bytes (0 for a directory).
    mtime
        Last modification in seconds since the epoch (0 when the store does not say).
    version
        The under-store's version of the content (ETag, or mtime and size); empty for a
        directory.
    is_dir
        True for a directory (or a prefix holding objects, or a mount point).
    """

    path: str
    size: int
    mtime: float
    version: str
    is_dir: bool


@dataclass(frozen=True)
class FileMeta:
    """A file as a worker described it, with what a read without the worker needs."""

    path: str
    size: int
    version: str
    mtime: float
    is_dir: bool
    fid: bytes
    mount: str
    uri: str
    options: dict
    rel: str
    replicas: int | str = 1  # workers holding each chunk in a cluster, or "all"
    fresh_until: float = 0.0  # monotonic time until which the worker's metadata holds

    @classmethod
    def from_record(cls, r: dict) -> FileMeta:
        """From a file record of the ``stat`` op."""
        return cls(
            r["path"], r["size"], r["version"], r["mtime"], r["is_dir"], bytes(r["fid"]),
            r["mount"], r["uri"], dict(r["options"]), r["rel"], r.get("replicas", 1),
            fresh_until=time.monotonic() + r.get("metadata_ttl", 0.0),
        )  # fmt: skip

    def info(self) -> FileInfo:
        """The user's view of it."""
        return FileInfo(self.path, self.size, self.mtime, self.version, self.is_dir)
