"""Where cluster-wide state lives: the mount table, policies, job records.

One interface, two homes: the worker's own RocksDB on a single node, etcd in a cluster.
Values are JSON documents; keys are ``/``-separated strings under a fixed prefix.
"""

from __future__ import annotations

import json
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from typing import Any

from .._private import private_dir

__all__ = ["LocalMetaStore", "MetaStore"]


class MetaStore(ABC):
    """A small, consistent key-value store of JSON documents.

    A subclass should expect ``get`` / ``put`` / ``delete`` / ``scan`` /
    ``compare_and_set`` in any order from several threads, and ``close`` once at the end.
    ``put``, ``delete`` and ``compare_and_set`` are durable when they return.
    """

    @abstractmethod
    def get(self, key: str) -> Any | None:
        """The document under ``key``, or ``None``."""

    @abstractmethod
    def put(self, key: str, value: Any) -> None:
        """Store ``value`` (JSON-serialisable) under ``key``."""

    @abstractmethod
    def delete(self, key: str) -> bool:
        """Remove ``key``; True when it existed."""

    @abstractmethod
    def scan(self, prefix: str) -> Iterator[tuple[str, Any]]:
        """Every ``(key, document)`` whose key starts with ``prefix``, in key order."""

    @abstractmethod
    def compare_and_set(self, changes: Mapping[str, tuple[Any | None, Any | None]]) -> bool:
        """Change several keys at once if none changed meanwhile: when each key of
        ``changes`` holds the first document of its pair (None: the key is absent), store
        the second (None: delete the key) under every key and return True; otherwise
        change nothing and return False. Documents compare as their JSON (keys sorted)."""

    @abstractmethod
    def close(self) -> None:
        """Release the store's resources."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class LocalMetaStore(MetaStore):
    """A MetaStore in a RocksDB directory, for the single-node default."""

    def __init__(self, path: str | os.PathLike):
        from rocksdict import Rdict

        private_dir(path, "mount table directory")
        self._db = Rdict(os.fspath(path))
        self._lock = threading.Lock()

    def get(self, key: str) -> Any | None:
        # docstring inherited
        raw = self._db.get(key.encode())
        return None if raw is None else json.loads(raw)

    def put(self, key: str, value: Any) -> None:
        # docstring inherited
        raw = json.dumps(value, sort_keys=True).encode()
        with self._lock:
            self._db[key.encode()] = raw
            self._db.flush_wal(True)

    def delete(self, key: str) -> bool:
        # docstring inherited
        k = key.encode()
        with self._lock:
            existed = self._db.get(k) is not None
            if existed:
                del self._db[k]
                self._db.flush_wal(True)
        return existed

    def scan(self, prefix: str) -> Iterator[tuple[str, Any]]:
        # docstring inherited
        p = prefix.encode()
        it = self._db.iter()
        it.seek(p)
        while it.valid():
            key = it.key()
            if not key.startswith(p):
                break
            yield key.decode(), json.loads(it.value())
            it.next()

    def compare_and_set(self, changes: Mapping[str, tuple[Any | None, Any | None]]) -> bool:
        # docstring inherited
        from rocksdict import WriteBatch

        batch = WriteBatch()
        for key, (_, new) in changes.items():
            if new is None:
                batch.delete(key.encode())
            else:
                batch.put(key.encode(), json.dumps(new, sort_keys=True).encode())
        with self._lock:  # every writer takes it: nothing changes between check and write
            for key, (old, _) in changes.items():
                raw = self._db.get(key.encode())
                if raw != (None if old is None else json.dumps(old, sort_keys=True).encode()):
                    return False
            self._db.write(batch)
            self._db.flush_wal(True)
        return True

    def close(self) -> None:
        # docstring inherited
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
