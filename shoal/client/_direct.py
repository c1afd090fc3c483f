"""Reads without a worker: pages with no live owner come straight from their under-store,
and, in an etcd cluster where no worker answers, metadata from the mount table in etcd
and the stores themselves. The application sees no error while its data exists
somewhere."""

from __future__ import annotations

import contextlib
import json
import threading

from ..control.ufs import ObjectChangedError, UnderStore, open_store
from ._meta import FileMeta

__all__ = ["DirectReader", "stat_from_etcd"]


class DirectReader:
    """Under-store reads on the client's side, with one store opened per mount and
    options (kept until :meth:`close`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stores: dict[str, UnderStore] = {}

    def store(self, meta: FileMeta) -> UnderStore:
        """The store that holds ``meta``'s file."""
        key = meta.uri + "\0" + json.dumps(meta.options, sort_keys=True)
        with self._lock:
            store = self._stores.get(key)
        if store is None:
            store = open_store(meta.uri, **meta.options)
            with self._lock:
                current = self._stores.setdefault(key, store)
            if current is not store:
                store.close()
                store = current
        return store

    def read_range(self, view: memoryview, meta: FileMeta, offset: int) -> None:
        """Fill ``view`` with the bytes of ``meta`` from ``offset`` (all of it within the
        file), of the version the metadata names."""
        got = self.store(meta).read_into(meta.rel, offset, view, version=meta.version or None)
        if got != view.nbytes:
            raise ObjectChangedError(
                f"read: {meta.path} is shorter than its metadata says; read it again", meta.path
            )

    def close(self) -> None:
        """Close every store."""
        with self._lock:
            stores, self._stores = list(self._stores.values()), {}
        for store in stores:
            with contextlib.suppress(Exception):
                store.close()

    def abandon(self) -> None:
        """In a forked child: forget the parent's stores without closing them."""
        self._stores = {}
        self._lock = threading.Lock()


def stat_from_etcd(config, paths: list[str], direct: DirectReader) -> list[dict]:
    """File records as a worker would give them, from the mount table in etcd and the
    under-stores themselves (no worker answers); ``{"error": ...}`` per path that fails."""
    from ..control._etcd import EtcdCredentials, EtcdMetaStore
    from ..control._namespace import MountTable, split_mount_options
    from ..control._pages import file_id
    from ..control.proto import encode_error

    meta_store = EtcdMetaStore(config.etcd, credentials=EtcdCredentials.from_config(config))
    try:
        table = MountTable(meta_store)
    finally:
        meta_store.close()
    records = []
    for path in paths:
        try:
            mount, rel = table.resolve(path)
            own, options = split_mount_options(mount.options)
            opened = FileMeta(path, 0, "", 0.0, True, b"", mount.path, mount.uri, options, rel)
            info = direct.store(opened).stat(rel) if rel else None
        except (OSError, ValueError, TypeError) as exc:
            records.append({"error": encode_error(exc)})
            continue
        is_dir = info is None or info.is_dir
        records.append(
            {"path": path, "size": 0 if info is None else info.size,
             "version": "" if info is None else info.version,
             "mtime": 0.0 if info is None else info.mtime, "is_dir": is_dir,
             "fid": b"" if is_dir else file_id(mount.child_uri(rel), info.version),
             "mount": mount.path, "uri": mount.uri, "options": options, "rel": rel,
             "replicas": own["replicas"], "metadata_ttl": own["metadata_ttl"]}
        )  # fmt: skip
    return records
