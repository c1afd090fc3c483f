"""The worker: one per node. It owns the page store, the mount table and the under-stores,
serves reads through the cache (read-through, single-flight, sequential read-ahead) and runs
load and free jobs. :func:`run_worker` runs it as a process; ``_server`` puts it on a
socket.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .. import engine
from .._config import Config, load_config
from .._errors import ShoalError, TierFullError
from ..engine import PageLocation, PageStore
from ..engine._regions import generations_path
from ._jobs import check_job_key, mark_abandoned, newest_first
from ._membership import load_worker_id
from ._metadata import MetadataCache
from ._metastore import LocalMetaStore, MetaStore
from ._namespace import Mount, MountTable, normalize_path
from ._pages import file_id, page_count, page_key, page_length
from .proto import DATA, GENERATIONS, MAX_FDS, PROTOCOL_VERSION, ProtocolError, encode_error
from .ufs import ObjectChangedError, ObjectInfo, UnderStore, open_store

__all__ = [
    "DEFAULT_READ_AHEAD",
    "LOCK_FILE",
    "LOG_FILE",
    "PID_FILE",
    "SOCKET_FILE",
    "Worker",
    "WorkerBusyError",
    "run_worker",
    "split_mount_options",
]

log = logging.getLogger("shoal.worker")

SOCKET_FILE = "worker.sock"
PID_FILE = "worker.pid"  # locked by the running worker for its lifetime; holds its pid
LOCK_FILE = "worker.lock"  # taken by whoever starts a worker, so that only one does
LOG_FILE = "worker.log"
DEFAULT_READ_AHEAD = 4  # pages fetched ahead of a sequential reader
DEFAULT_METADATA_TTL = 60.0
_SUN_PATH_MAX = 107  # bytes of a Unix socket path, without the NUL
_MAX_FILES = 1 << 20  # files remembered for fast lookup
_PRIME_MIN = 8  # uncached files of one directory in one stat worth listing it for

# Mount options that Shoal itself reads; every other option goes to the under-store.
_MOUNT_OPTIONS = ("metadata_ttl", "read_ahead", "replicas")


class WorkerBusyError(ShoalError, OSError):
    """Another worker already serves this ``$SHOAL_HOME`` (EBUSY)."""


def split_mount_options(options: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a mount's options into Shoal's own (checked, with defaults) and the store's.

    Shoal's options: ``metadata_ttl`` (seconds a stat or listing is cached, >= 0, default
    60), ``read_ahead`` (pages prefetched ahead of a sequential reader, >= 0, default 4)
    and ``replicas`` (workers that hold each chunk in a cluster, an int >= 1 or ``"all"``,
    default 1).
    """
    own = {"metadata_ttl": DEFAULT_METADATA_TTL, "read_ahead": DEFAULT_READ_AHEAD, "replicas": 1}
    store = {}
    for key, value in options.items():
        if key not in _MOUNT_OPTIONS:
            store[key] = value
            continue
        if key == "metadata_ttl":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"metadata_ttl must be a number of seconds, got {value!r}")
            if not 0 <= value < math.inf:
                raise ValueError(f"metadata_ttl must be a finite number >= 0, got {value}")
        elif key == "replicas":
            if value != "all" and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"replicas must be an int >= 1 or 'all', got {value!r}")
            if value != "all" and value < 1:
                raise ValueError(f"replicas must be an int >= 1 or 'all', got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"read_ahead must be an int >= 0 (pages), got {value!r}")
        own[key] = value
    return own, store


@dataclass(frozen=True)
class _File:
    """One version of a file, as the worker serves it."""

    path: str
    mount: Mount
    rel: str
    info: ObjectInfo
    fid: bytes
    store: UnderStore | None
    own: Mapping[str, Any]
    epoch: int = 0  # of the mount table it was resolved in

    def record(self) -> dict[str, Any]:
        """The file record of the ``stat`` op."""
        return {
            "path": self.path,
            "size": self.info.size,
            "version": self.info.version,
            "mtime": self.info.mtime,
            "is_dir": self.info.is_dir,
            "fid": self.fid,
            "mount": self.mount.path,
            "uri": self.mount.uri,
            "options": split_mount_options(self.mount.options)[1],
            "rel": self.rel,
            "metadata_ttl": self.own["metadata_ttl"],
            "replicas": self.own["replicas"],
        }


@dataclass(frozen=True)
class _Page:
    key: bytes
    file: _File
    index: int
    length: int


@dataclass
class ConnectionState:
    """What the worker remembers about one client connection."""

    sent: set[tuple[str, int]] = field(default_factory=set)  # descriptors the client holds
    last_page: OrderedDict[bytes, int] = field(default_factory=OrderedDict)
    pid: int | None = None
    remote: bool = False  # a TCP connection: no descriptors, bytes only


class FileSegment(NamedTuple):
    """Payload bytes sent straight from a file (``sendfile``): descriptor, offset, length."""

    fd: int
    offset: int
    length: int


@dataclass
class Reply:
    """An answer: header fields (``ok`` is added), payload buffers, descriptors to pass."""

    header: dict[str, Any]
    payload: list[Any] = field(default_factory=list)
    fds: list[int] = field(default_factory=list)


class _Counters:
    FIELDS = (
        "requests",
        "page_hits",
        "page_misses",
        "pages_located",
        "pages_sent",
        "bytes_sent",
        "pages_prefetched",
        "ufs_reads",
        "ufs_pages",
        "ufs_bytes",
        "ufs_stats",
        "ufs_lists",
        "store_full",
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.values = dict.fromkeys(self.FIELDS, 0)

    def add(self, **deltas: int) -> None:
        with self._lock:
            for name, delta in deltas.items():
                self.values[name] += delta

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.values)


class Worker:
    """The node's cache service, without its socket (see ``_server.Server``).

    Opens the page store (``$SHOAL_HOME/index`` and the tiers of ``config``) and the mount
    table (``$SHOAL_HOME/meta``); both survive restarts. Each public method serves one op of
    the wire protocol and raises the error the client should see.

    Parameters
    ----------
    config
        The node's settings.
    fetch_threads
        Concurrent ranged reads from under-stores for misses and loads.
    read_ahead_threads
        Concurrent reads for read-ahead, apart so that prefetching never delays a miss.
    whole_file_bytes
        A file of at most this size whose pages are all missing is fetched with one
        request; larger files with one request per page, several at once.
    meta_store
        Where the mount table lives (the cluster's ``EtcdMetaStore``); the worker closes
        it. Default: a RocksDB store under ``$SHOAL_HOME/meta``.
    """

    def __init__(
        self,
        config: Config,
        *,
        fetch_threads: int = 16,
        read_ahead_threads: int = 4,
        whole_file_bytes: int = 16 << 20,
        meta_store: MetaStore | None = None,
    ):
        self.config = config
        self.page_size = config.page_size
        self.whole_file_bytes = whole_file_bytes
        self.started = time.time()
        self._lock = threading.Lock()
        self._stores: dict[str, UnderStore] = {}
        self._inflight: dict[bytes, Future] = {}
        self._client_fds: dict[tuple[str, int], int] = {}
        self._counters = _Counters()
        self._metadata = MetadataCache()
        self._files: dict[str, _File] = {}  # path as asked -> file, while current
        self._mount_epoch = 0
        self._closed = False
        # Another worker may change a shared mount table: look again for an unknown path.
        self._shared_mounts = meta_store is not None
        self._meta_store = meta_store or LocalMetaStore(os.path.join(config.home, "meta"))
        self.worker_id: str | None = None
        self.in_cluster = False  # pages are placed on several workers
        self.cluster_health: Callable[[], dict] | None = None
        try:
            self._mounts = MountTable(self._meta_store)
            if not self._shared_mounts:
                # The node's own records: a load still RUNNING went through a worker of
                # this home that is gone, and its client lost it.
                mark_abandoned(self._meta_store, "the worker stopped during the load")
            self._store = PageStore(
                config.tiers(),
                os.path.join(config.home, "index"),
                region_size=config.region_size,
                high_watermark=config.high_watermark,
                low_watermark=config.low_watermark,
            )
        except BaseException:
            self._meta_store.close()
            raise
        self._tier_order = [t.name for t in config.tiers()]
        self._fetch_pool = ThreadPoolExecutor(fetch_threads, "shoal-fetch")
        self._stat_pool = ThreadPoolExecutor(fetch_threads, "shoal-stat")
        self._ahead_pool = ThreadPoolExecutor(read_ahead_threads, "shoal-read-ahead")
        self._fetch_buffers = threading.local()

    # ----------------------------------------------------------------- namespace

    def hello(self, conn: ConnectionState, header: dict) -> Reply:
        if header["version"] != PROTOCOL_VERSION:
            raise ProtocolError(
                f"client speaks protocol {header['version']}, this worker {PROTOCOL_VERSION}; "
                "upgrade the older side"
            )
        conn.pid = header["pid"]
        return Reply(
            {
                "version": PROTOCOL_VERSION,
                "worker_pid": os.getpid(),
                "host_id": self.config.host_id,
                "page_size": self.config.page_size,
                "chunk_size": self.config.chunk_size,
                "home": self.config.home,
                "capacity": sum(t.capacity for t in self.config.tiers()),
                "worker_id": self.worker_id,
            }
        )

    def mount(self, path: str, uri: str, options: dict) -> dict:
        """Mount ``uri`` at ``path`` after opening the store and listing one object, so a
        bad URI, option, endpoint or credential fails here with a clear error."""
        path = normalize_path(path)
        _, store_options = split_mount_options(options)
        try:
            store = open_store(uri, **store_options)
        except ImportError as exc:
            raise ValueError(f"mount {path}: {exc}") from exc
        try:
            next(iter(store.list("", page_size=1)), None)
            mount = self._mounts.mount(path, uri, **options)
        except BaseException:
            store.close()
            raise
        with self._lock:
            old = self._stores.pop(mount.path, None)
            self._stores[mount.path] = store
            self._mount_epoch += 1
        if old is not None:
            old.close()
        self._metadata.refresh(mount.path)
        log.info("mounted %s at %s", uri, mount.path)
        return mount.to_json()

    def unmount(self, path: str) -> dict:
        mount = self._mounts.unmount(path)
        with self._lock:
            store = self._stores.pop(mount.path, None)
            self._mount_epoch += 1
        if store is not None:
            store.close()
        self._metadata.refresh(mount.path)
        log.info("unmounted %s", mount.path)
        return mount.to_json()

    def mounts(self) -> list[dict]:
        if self._shared_mounts:
            self._reload_mounts()
        return [m.to_json() for m in self._mounts.mounts()]

    def _reload_mounts(self) -> None:
        """Read a shared mount table again (kept as it was while its store is down)."""
        try:
            self._mounts.reload()
        except OSError as exc:
            log.warning("mount table not reloaded: %s", exc)
            return
        with self._lock:
            self._mount_epoch += 1

    def _store_of(self, mount: Mount) -> UnderStore:
        with self._lock:
            store = self._stores.get(mount.path)
        if store is not None:
            return store
        _, store_options = split_mount_options(mount.options)
        store = open_store(mount.uri, **store_options)
        with self._lock:
            current = self._stores.setdefault(mount.path, store)
        if current is not store:
            store.close()
        return current

    def file(self, path: str) -> _File:
        """The file (or directory) at ``path``, from the metadata cache or the store."""
        f = self._files.get(path)
        # Still current while the metadata cache holds the same stat and no mount changed.
        if (
            f is not None
            and f.epoch == self._mount_epoch
            and self._metadata.get_stat(f.path) is f.info
        ):
            return f
        raw = path
        path = normalize_path(path)
        epoch = self._mount_epoch
        try:
            mount, rel = self._mounts.resolve(path)
        except FileNotFoundError:
            if not self._shared_mounts:
                raise
            self._reload_mounts()
            epoch = self._mount_epoch
            mount, rel = self._mounts.resolve(path)
        own, _ = split_mount_options(mount.options)
        if not rel:
            info = ObjectInfo("", 0, "", 0.0, is_dir=True)
            return _File(path, mount, rel, info, b"", None, own, epoch)
        store = self._store_of(mount)
        info = self._metadata.stat(path, own["metadata_ttl"], lambda: self._stat_one(store, rel))
        fid = b"" if info.is_dir else file_id(mount.child_uri(rel), info.version)
        f = _File(path, mount, rel, info, fid, store, own, epoch)
        if len(self._files) >= _MAX_FILES:
            self._files.clear()
        self._files[raw] = f
        return f

    def _stat_one(self, store: UnderStore, rel: str) -> ObjectInfo:
        self._counters.add(ufs_stats=1)
        return store.stat(rel)

    def stat(self, paths: list[str]) -> list[dict]:
        """File records, or ``{"error": ...}`` per path that fails; the stores are asked
        about several paths at once."""

        def one(p: str) -> dict:
            try:
                return self.file(p).record()
            except (OSError, ValueError, TypeError) as exc:
                return {"error": encode_error(exc)}

        if len(paths) == 1:
            return [one(paths[0])]
        self._prime(paths)
        return list(self._stat_pool.map(one, paths))

    def _prime(self, paths: list[str]) -> None:
        """Fill the metadata cache for many uncached files of one directory with a listing
        (one request per thousand objects) rather than a stat each (the cold epoch of a
        dataset of small files)."""
        groups: dict[tuple[str, str], list[str]] = {}
        mounts: dict[str, Mount] = {}
        for p in paths:
            try:
                path = normalize_path(p)
                mount, rel = self._mounts.resolve(path)
            except (ValueError, FileNotFoundError):
                continue  # reported by the stat of that path
            if rel and self._metadata.get_stat(path) is None:
                groups.setdefault((mount.path, rel.rpartition("/")[0]), []).append(rel)
                mounts[mount.path] = mount
        for (where, parent), rels in groups.items():
            ttl = split_mount_options(mounts[where].options)[0]["metadata_ttl"]
            if len(rels) < _PRIME_MIN or ttl <= 0:
                continue
            rels.sort()
            base = where.rstrip("/")
            budget = 4 * len(rels) + 1000  # objects listed at most: others may sit between
            try:
                store = self._store_of(mounts[where])
                self._counters.add(ufs_lists=1)
                # Start just before the first wanted object, stop after the last.
                listing = store.list(parent + "/" if parent else "", start_after=rels[0][:-1])
                for info in listing:
                    self._metadata.put_stat(f"{base}/{info.path}", info, ttl)
                    budget -= 1
                    if info.path >= rels[-1] or budget <= 0:
                        break
            except (OSError, ValueError):
                continue  # the stat of each path reports what is wrong

    def _listing(self, f: _File) -> list[ObjectInfo]:
        prefix = f.rel + "/" if f.rel else ""
        cached = self._metadata.get_list(f.path)
        if cached is not None:
            return cached
        store = self._store_of(f.mount)
        self._counters.add(ufs_lists=1)
        infos = list(store.list(prefix))
        ttl = f.own["metadata_ttl"]
        self._metadata.put_list(f.path, infos, ttl)
        base = f.mount.path.rstrip("/")
        for info in infos:
            self._metadata.put_stat(f"{base}/{info.path}", info, ttl)
        return infos

    def ls(self, path: str) -> list[dict]:
        """Entries directly under ``path``: files, directories, and mount points."""
        path = normalize_path(path)
        entries: dict[str, dict] = {}
        under = path.rstrip("/") + "/"
        for m in self._mounts.mounts():
            if m.path.startswith(under) and m.path != path:
                name = m.path[len(under) :].split("/")[0]
                entries[name] = _entry(under + name, ObjectInfo(name, 0, "", 0.0, True))
        try:
            f = self.file(path)
        except FileNotFoundError:
            if entries or path == "/":
                return [entries[n] for n in sorted(entries)]
            raise
        if not f.info.is_dir:
            return [_entry(path, f.info)]
        prefix = f.rel + "/" if f.rel else ""
        base = f.mount.path.rstrip("/")
        for info in self._listing(f):
            rest = info.path[len(prefix) :]
            name, sep, _ = rest.partition("/")
            if sep:
                entries.setdefault(name, _entry(under + name, ObjectInfo(name, 0, "", 0.0, True)))
            else:
                entries[name] = _entry(f"{base}/{info.path}", info)
        if not entries and f.rel:
            # A directory on an object store exists only through its objects.
            raise FileNotFoundError(errno.ENOENT, f"{path}: no such file or directory", path)
        return [entries[n] for n in sorted(entries)]

    def refresh(self, path: str) -> int:
        path = normalize_path(path)
        return self._metadata.refresh(path)

    def _files_under(self, paths: Iterable[str]) -> list[_File]:
        """The files named by ``paths``, directories expanded to every file below them."""
        out: dict[str, _File] = {}
        for p in paths:
            f = self.file(p)
            if not f.info.is_dir:
                out[f.path] = f
                continue
            base = f.mount.path.rstrip("/")
            store = self._store_of(f.mount)
            for info in self._listing(f):
                child = f"{base}/{info.path}"
                fid = file_id(f.mount.child_uri(info.path), info.version)
                out[child] = _File(child, f.mount, info.path, info, fid, store, f.own, f.epoch)
        return list(out.values())

    # ----------------------------------------------------------------- pages

    def _pages_of(self, f: _File) -> list[_Page]:
        return [
            _Page(page_key(f.fid, i), f, i, page_length(i, f.info.size, self.page_size))
            for i in range(page_count(f.info.size, self.page_size))
        ]

    def _scratch(self, nbytes: int) -> memoryview:
        """A buffer of ``nbytes`` for one fetch: the thread's own, reused, when at most two
        pages (fresh memory costs more to touch than to fill), else a new one."""
        if nbytes > 2 * self.page_size:
            return memoryview(bytearray(nbytes))
        buf = getattr(self._fetch_buffers, "buf", None)
        if buf is None:
            buf = self._fetch_buffers.buf = bytearray(2 * self.page_size)
        return memoryview(buf)[:nbytes]

    def _fetch_run(self, run: list[tuple[_Page, Future]]) -> None:
        """Fetch consecutive pages of one file with one read from its under-store and
        cache them. A page's future resolves to None once the store holds it, or to its
        bytes when no tier could keep it."""
        f = run[0][0].file
        pending = {p.key for p, _ in run}
        try:
            # Another fetch may have stored the pages between our caller's lookup and our
            # start (it leaves the in-flight table once stored).
            if all(self._store.contains(p.key) for p, _ in run):
                for _, fut in run:
                    fut.set_result(None)
                return
            total = sum(p.length for p, _ in run)
            buf = self._scratch(total)
            offset = run[0][0].index * self.page_size
            # A whole file is asked for without a range (the size comes with the version).
            n = f.store.read_into(f.rel, offset, buf, version=f.info.version, size=f.info.size)
            self._counters.add(ufs_reads=1, ufs_pages=len(run), ufs_bytes=n)
            if n != total:
                raise ObjectChangedError(
                    f"read: {f.path} ended at {offset + n} bytes, its metadata says "
                    f"{f.info.size}: it changed; read it again",
                    f.path,
                )
            views, at = [], 0
            for p, _ in run:
                views.append(buf[at : at + p.length])
                at += p.length
            kept = self._cache([(p, v) for (p, _), v in zip(run, views, strict=True)])
            for (p, fut), v in zip(run, views, strict=True):
                fut.set_result(None if p.key in kept else bytearray(v))
                pending.discard(p.key)
        except BaseException as exc:
            if isinstance(exc, ObjectChangedError):
                self._metadata.refresh(f.path)
            for p, fut in run:
                if p.key in pending:
                    fut.set_exception(exc)
        finally:
            with self._lock:
                for p, fut in run:
                    if self._inflight.get(p.key) is fut:
                        del self._inflight[p.key]

    def _cache(self, pages: list[tuple[_Page, memoryview]]) -> set[bytes]:
        """Put fetched pages in the first tier that takes them (fastest first); returns
        the keys of the pages stored."""
        items = [(p.key, v) for p, v in pages]
        for tier in self._tier_order:
            try:
                self._store.put_many(items, tier=tier)
                return {key for key, _ in items}
            except TierFullError as exc:
                error = exc
        if len(items) > 1:  # no tier takes them all at once: one page at a time
            return set().union(*(self._cache([item]) for item in pages))
        self._counters.add(store_full=1)
        log.warning("page of %s not cached: %s", pages[0][0].file.path, error)
        return set()

    def _read_back(self, pages: list[_Page]) -> dict[bytes, bytearray]:
        """The bytes of pages just fetched: from the store, or straight from the under-store
        for any evicted meanwhile."""
        bufs = [bytearray(p.length) for p in pages]
        found = self._store.get_many_into([(p.key, b) for p, b in zip(pages, bufs, strict=True)])
        out = {}
        for p, b, n in zip(pages, bufs, found, strict=True):
            if n is None:
                f = p.file
                n = f.store.read_into(
                    f.rel, p.index * self.page_size, b, version=f.info.version, size=f.info.size
                )
                self._counters.add(ufs_reads=1, ufs_pages=1, ufs_bytes=n)
                if n != p.length:
                    raise ObjectChangedError(
                        f"read: {f.path} is shorter than its metadata says: it changed; "
                        "read it again",
                        f.path,
                    )
            out[p.key] = b
        return out

    def _start_fetches(self, pages: Iterable[_Page], pool: ThreadPoolExecutor) -> dict:
        """Futures of the pages' bytes: one fetch per page however many ask (single-flight).

        The pages of a file of at most ``whole_file_bytes`` that are all fetched at once
        are read with one request; other pages with one each, so that a large file is
        read with many requests at once."""
        futures: dict[bytes, Future] = {}
        start: dict[bytes, list[tuple[_Page, Future]]] = {}
        with self._lock:
            for p in pages:
                fut = self._inflight.get(p.key)
                if fut is None:
                    fut = self._inflight[p.key] = Future()
                    start.setdefault(p.file.fid, []).append((p, fut))
                futures[p.key] = fut
        runs = []
        for group in start.values():
            f = group[0][0].file
            whole = (
                len(group) > 1
                and f.info.size <= self.whole_file_bytes
                and len(group) == page_count(f.info.size, self.page_size)
            )
            if whole:
                group.sort(key=lambda item: item[0].index)
                runs.append(group)
            else:
                runs.extend([item] for item in group)
        for run in runs:
            try:
                pool.submit(self._fetch_run, run)
            except RuntimeError:  # the pool is shut down: the worker is stopping
                with self._lock:
                    for p, _ in run:
                        self._inflight.pop(p.key, None)
                for _, fut in run:
                    fut.set_exception(OSError(errno.ESHUTDOWN, "the worker is shutting down"))
        return futures

    @staticmethod
    def _results(futures: Mapping[bytes, Future]) -> dict[bytes, Any]:
        out, error = {}, None
        for key, fut in futures.items():
            try:
                out[key] = fut.result()
            except Exception as exc:
                error = error or exc
        if error is not None:
            raise error
        return out

    def _obtain(self, pages: list[_Page], need_bytes: bool) -> dict[bytes, Any]:
        """Every page's location in the store, or its bytes (``need_bytes``, or when the
        store could not keep it); misses are fetched from the under-store first."""
        out: dict[bytes, Any] = {}
        missing = []
        if need_bytes:
            bufs = [bytearray(p.length) for p in pages]
            found = self._store.get_many_into(
                [(p.key, b) for p, b in zip(pages, bufs, strict=True)]
            )
            for p, b, n in zip(pages, bufs, found, strict=True):
                if n is None:
                    missing.append(p)
                else:
                    out[p.key] = b
        else:
            for p, loc in zip(pages, self._store.locate([p.key for p in pages]), strict=True):
                if loc is None:
                    missing.append(p)
                else:
                    out[p.key] = loc
        self._counters.add(page_hits=len(pages) - len(missing), page_misses=len(missing))
        if not missing:
            return out
        futures = self._start_fetches(missing, self._fetch_pool)
        back = []  # pages fetched into the store whose bytes are wanted
        if need_bytes:
            for key, value in self._results(futures).items():
                if value is None:
                    back.append(key)
                else:
                    out[key] = value
        else:
            # Located as each fetch completes.
            keys = {fut: key for key, fut in futures.items()}
            error = None
            for fut in as_completed(keys):
                key = keys[fut]
                try:
                    value = fut.result()
                except Exception as exc:
                    error = error or exc
                    continue
                loc = self._store.locate([key])[0] if value is None else None
                if loc is not None:
                    out[key] = loc
                elif value is not None:
                    out[key] = value  # the store could not keep it
                else:
                    back.append(key)  # evicted already
            if error is not None:
                raise error
        if back:
            by_key = {p.key: p for p in missing}
            out.update(self._read_back([by_key[k] for k in back]))
        return out

    def _read_ahead(self, conn: ConnectionState, f: _File, first: int, last: int) -> None:
        ahead = f.own["read_ahead"]
        if not ahead or (last + 1) * self.page_size >= f.info.size:
            return  # nothing to read ahead (a small file, or its end)
        previous = conn.last_page.pop(f.fid, None)
        conn.last_page[f.fid] = last
        if len(conn.last_page) > 1024:
            conn.last_page.popitem(last=False)
        if first != 0 and previous not in (first - 1, first):
            return  # not a sequential reader
        count = page_count(f.info.size, self.page_size)
        if self.in_cluster:  # the next chunk may be placed on another worker
            per_chunk = self.config.chunk_size // self.page_size
            count = min(count, (last // per_chunk + 1) * per_chunk)
        wanted = [
            _Page(page_key(f.fid, i), f, i, page_length(i, f.info.size, self.page_size))
            for i in range(last + 1, min(count, last + 1 + ahead))
        ]
        with self._lock:
            wanted = [p for p in wanted if p.key not in self._inflight]
        wanted = [p for p in wanted if not self._store.contains(p.key)]
        if wanted:
            self._counters.add(pages_prefetched=len(wanted))
            self._start_fetches(wanted, self._ahead_pool)

    def read(self, conn: ConnectionState, header: dict) -> Reply:
        """Serve a ``read``: locations of cached pages (descriptors passed along) or bytes."""
        for tier, region in header["forget"]:
            conn.sent.discard((tier, region))
        files = []
        for path, version in header["files"]:
            f = self.file(path)
            if f.info.is_dir:
                raise IsADirectoryError(errno.EISDIR, "is a directory", f.path)
            if f.info.version != version:
                raise ObjectChangedError(
                    f"{f.path} changed since its metadata was read (version {version!r}, now "
                    f"{f.info.version!r}); read it again",
                    f.path,
                )
            files.append(f)
        pages: dict[bytes, _Page] = {}
        items = []
        spans: dict[int, list[int]] = {}
        ps = self.page_size
        for fi, index, start, length in header["items"]:
            f = files[fi]
            plen = min(ps, f.info.size - index * ps)
            if start + length > plen:
                raise ValueError(
                    f"read: piece [{start}, {start + length}) is outside page {index} of "
                    f"{f.path} ({f.info.size} bytes)"
                )
            key = f.fid + index.to_bytes(4, "big")  # page_key(); index checked < 2**32
            pages.setdefault(key, _Page(key, f, index, plen))
            items.append((key, start, length))
            span = spans.setdefault(fi, [index, index])
            span[0], span[1] = min(span[0], index), max(span[1], index)
        got = self._obtain(list(pages.values()), need_bytes=header["mode"] == DATA)
        if conn.remote and header["mode"] != DATA:
            return self._segments(conn, files, pages, items, got, spans)
        locs: list[Any] = []
        fds: list[int] = []
        tokens: list[list] = []
        inline = []
        for i, (key, _, _) in enumerate(items):
            value = got[key]
            if isinstance(value, PageLocation) and self._pass_fds(conn, value, fds, tokens):
                locs.append(
                    [
                        value.tier,
                        value.region,
                        value.offset,
                        value.length,
                        value.crc32c,
                        value.generation,
                    ]  # fmt: skip
                )
            else:
                locs.append(None)
                inline.append(i)
        need = {items[i][0]: pages[items[i][0]] for i in inline}
        stored = [k for k in need if isinstance(got[k], PageLocation)]
        if stored:
            got.update(self._obtain([need[k] for k in stored], need_bytes=True))
        payload = []
        for i in inline:
            key, start, length = items[i]
            payload.append(memoryview(got[key])[start : start + length])
        sent_bytes = sum(v.nbytes for v in payload)
        self._counters.add(
            pages_located=len(items) - len(inline), pages_sent=len(inline), bytes_sent=sent_bytes
        )
        for fi, (first, last) in spans.items():
            self._read_ahead(conn, files[fi], first, last)
        return Reply({"locs": locs, "fds": tokens}, payload, fds)

    def _segments(self, conn, files, pages, items, got, spans) -> Reply:
        """A remote ``read`` answered with the region files' bytes sent as they are
        (``sendfile``), each whole page with its crc32c in ``crcs`` for the client to
        check (the region may be reclaimed meanwhile); pieces of pages, and pages the
        store could not keep, are read and checked here."""
        payload: list[Any] = []
        crcs: list[int | None] = []
        partial = {}
        for key, start, length in items:
            value = got[key]
            if isinstance(value, PageLocation) and start == 0 and length == value.length:
                fd = self._client_fd(value.tier, value.region, value)
                payload.append(FileSegment(fd, value.offset, value.length))
                crcs.append(value.crc32c)
                continue
            if isinstance(value, PageLocation):
                partial[key] = pages[key]
            payload.append((key, start, length))
            crcs.append(None)
        if partial:
            got.update(self._obtain(list(partial.values()), need_bytes=True))
        for i, part in enumerate(payload):
            if type(part) is tuple:  # (key, start, length); a FileSegment is sent as is
                key, start, length = part
                payload[i] = memoryview(got[key])[start : start + length]
        self._counters.add(pages_sent=len(items), bytes_sent=sum(i[2] for i in items))
        for fi, (first, last) in spans.items():
            self._read_ahead(conn, files[fi], first, last)
        return Reply({"crcs": crcs}, payload)

    def _pass_fds(self, conn: ConnectionState, loc: PageLocation, fds: list, tokens: list) -> bool:
        """Add the descriptors a client needs to read ``loc`` that it does not hold yet;
        False when they would not fit in this answer."""
        sent = conn.sent
        if (loc.tier, loc.region) in sent and (loc.tier, GENERATIONS) in sent:
            return True
        new = [t for t in ((loc.tier, GENERATIONS), (loc.tier, loc.region)) if t not in sent]
        if len(fds) + len(new) > MAX_FDS:
            return False
        for tier, region in new:
            fds.append(self._client_fd(tier, region, loc))
            tokens.append([tier, region])
            conn.sent.add((tier, region))
        return True

    def _client_fd(self, tier: str, region: int, loc: PageLocation) -> int:
        """A read-only descriptor of a region file (or a tier's generation table) to pass to
        clients; opened once and kept, since region files live as long as the store."""
        with self._lock:
            fd = self._client_fds.get((tier, region))
            if fd is None:
                if region == GENERATIONS:
                    path = generations_path(self._store.tier_paths[tier])
                else:
                    path = loc.path
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                self._client_fds[tier, region] = fd
            return fd

    # ----------------------------------------------------------------- jobs

    def load(
        self,
        paths: list[str],
        metadata_only: bool,
        progress: Callable[[dict], None],
        window: int = 64,
        placement: dict | None = None,
    ) -> dict:
        """Fill the metadata cache (and, unless ``metadata_only``, the page store) with
        the files under ``paths``; ``progress`` gets the counters after each file: files,
        bytes and pages done of their totals, and the pages and bytes among those done
        that were cached already (``pages_skipped``, ``bytes_skipped``).

        In a cluster, ``placement`` (``{"nodes": [[id, weight], ...]}``, the live workers
        as the client sees them) limits the job to the pages placed on this worker, a
        file's ``replicas`` mount option honoured; bytes count those pages."""
        files = self._files_under(paths)
        mine = _placement_filter(placement, self.worker_id, self.page_size, self.config.chunk_size)
        sizes, counts = {}, {}
        for f in files:
            placed = mine(f, self._pages_of(f))
            sizes[f.path], counts[f.path] = sum(p.length for p in placed), len(placed)
        state = {
            "files_done": 0,
            "files_total": len(files),
            "bytes_done": 0,
            "bytes_total": sum(sizes.values()),
            "pages_done": 0,
            "pages_total": 0 if metadata_only else sum(counts.values()),
            "pages_skipped": 0,  # present already
            "bytes_skipped": 0,
        }
        if metadata_only:
            state["files_done"], state["bytes_done"] = state["files_total"], state["bytes_total"]
            progress(dict(state))
            return state
        pending: list[tuple[_File, dict, int]] = []
        last = 0.0

        def finish_first() -> None:
            nonlocal last
            f, futures, fetched_bytes = pending.pop(0)
            self._results(futures)
            state["files_done"] += 1
            state["bytes_done"] += sizes[f.path]
            state["pages_done"] += counts[f.path]
            state["pages_skipped"] += counts[f.path] - len(futures)
            state["bytes_skipped"] += sizes[f.path] - fetched_bytes
            now = time.monotonic()
            if now - last > 0.1 or state["files_done"] == state["files_total"]:
                last = now
                progress(dict(state))

        for f in files:
            pages = [p for p in mine(f, self._pages_of(f)) if not self._store.contains(p.key)]
            self._counters.add(page_misses=len(pages))
            fetched_bytes = sum(p.length for p in pages)
            pending.append((f, self._start_fetches(pages, self._fetch_pool), fetched_bytes))
            while sum(len(futures) for _, futures, _ in pending) > window:
                finish_first()
            while pending and all(fut.done() for fut in pending[0][1].values()):
                finish_first()
        while pending:
            finish_first()
        if not files:
            progress(dict(state))
        return state

    def put_job(self, key: str, record: dict) -> None:
        """Store a job record (``jobs/<kind>/<id>``) in the MetaStore."""
        self._meta_store.put(check_job_key(key), record)

    def jobs(self, prefix: str, limit: int) -> list[dict]:
        """The job records under ``prefix``, newest first, at most ``limit``."""
        return newest_first(self._meta_store.scan(prefix), limit)

    def free(self, path: str) -> dict:
        """Drop the cached pages of every file under ``path`` (their current versions)."""
        pages = freed = 0
        for f in self._files_under([path]):
            for p in self._pages_of(f):
                if self._store.delete(p.key):
                    pages += 1
                    freed += p.length
        return {"pages": pages, "bytes": freed}

    def report(self) -> dict:
        """Capacity and use per tier, page counts, hit ratio, bytes from under-stores."""
        counters = self._counters.snapshot()
        asked = counters["page_hits"] + counters["page_misses"]
        tiers = {name: dataclasses.asdict(u) for name, u in self._store.usage().items()}
        return {
            "worker": {
                "pid": os.getpid(),
                "host_id": self.config.host_id,
                "home": self.config.home,
                "uptime": time.time() - self.started,
                "engine": engine.backend(),
                "page_size": self.config.page_size,
            },
            "tiers": tiers,
            "pages": sum(t["pages"] for t in tiers.values()),
            "hit_ratio": counters["page_hits"] / asked if asked else 0.0,
            "mounts": len(self._mounts.mounts()),
            "metadata_entries": len(self._metadata),
            **({"cluster": self.cluster_health()} if self.cluster_health is not None else {}),
            **counters,
        }

    def used_bytes(self) -> int:
        """Bytes of cached pages, over every tier."""
        return sum(u.live_bytes for u in self._store.usage().values())

    def touch(self, regions: list[list]) -> None:
        """Count pages a client read through locations it remembered (``[tier, region,
        pages]`` each): hits, read short-circuit, and their regions recently used."""
        pages = sum(n for _, _, n in regions)
        self._counters.add(page_hits=pages, pages_located=pages)
        self._store.touch([(tier, region) for tier, region, _ in regions])

    def count_request(self) -> None:
        self._counters.add(requests=1)

    # ----------------------------------------------------------------- lifetime

    def close(self) -> None:
        """Stop fetching, then close the page store, the mount table and the stores."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._ahead_pool.shutdown(wait=True, cancel_futures=True)
        self._stat_pool.shutdown(wait=True, cancel_futures=True)
        self._fetch_pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            # Fetches cancelled before they ran leave their futures unresolved.
            for fut in self._inflight.values():
                if not fut.done():
                    fut.set_exception(OSError(errno.ESHUTDOWN, "the worker is shutting down"))
            self._inflight.clear()
            stores = list(self._stores.values())
            self._stores.clear()
            fds = list(self._client_fds.values())
            self._client_fds.clear()
        for store in stores:
            with contextlib.suppress(Exception):
                store.close()
        for fd in fds:
            os.close(fd)
        self._store.close()
        self._meta_store.close()


def _placement_filter(placement: dict | None, me: str | None, page_size: int, chunk_size: int):
    """``mine(file, pages)``: the pages of a file that ``placement`` (see
    :meth:`Worker.load`) gives to worker ``me``; every page without one."""
    if placement is None:
        return lambda f, pages: pages
    from ._pages import chunk_of
    from ._placement import Node, chunk_key, place

    try:
        nodes = [Node(str(i), float(w)) for i, w in placement["nodes"]]
        forced = split_mount_options({"replicas": placement.get("replicas", 1)})[0]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"load: malformed placement {placement!r}: {exc}") from None
    if not nodes or me not in {n.id for n in nodes}:
        raise ValueError(f"load: this worker ({me!r}) is not among the placement's workers")

    def mine(f: _File, pages: list[_Page]) -> list[_Page]:
        wanted = forced["replicas"] if "replicas" in placement else f.own["replicas"]
        k = len(nodes) if wanted == "all" else min(wanted, len(nodes))
        out, owners = [], {}
        for p in pages:
            chunk = chunk_of(p.index, page_size, chunk_size)
            if chunk not in owners:
                owners[chunk] = {n.id for n in place(chunk_key(f.fid, chunk), nodes, k)}
            if me in owners[chunk]:
                out.append(p)
        return out

    return mine


def _entry(path: str, info: ObjectInfo) -> dict:
    return {
        "path": path,
        "size": info.size,
        "version": info.version,
        "mtime": info.mtime,
        "is_dir": info.is_dir,
    }


# --------------------------------------------------------------------- the process


def socket_path(home: str) -> str:
    """The worker's Unix socket under ``home``; ``ValueError`` when too long for one."""
    path = os.path.join(home, SOCKET_FILE)
    if len(os.fsencode(path)) > _SUN_PATH_MAX:
        raise ValueError(
            f"socket path {path} is longer than {_SUN_PATH_MAX} bytes, the limit of a Unix "
            "socket; set SHOAL_HOME to a shorter directory"
        )
    return path


def _lock_pid_file(home: str) -> int:
    fd = os.open(os.path.join(home, PID_FILE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    # running_pid() holds a shared lock for a moment: only a lock held for a while is a worker.
    for attempt in range(20):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if attempt == 19:
                other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise WorkerBusyError(
                    errno.EBUSY, f"another worker (pid {other}) already serves {home}"
                ) from None
            time.sleep(0.01)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def running_pid(home: str) -> int | None:
    """The pid of the worker serving ``home``, or None when no worker holds its lock."""
    path = os.path.join(home, PID_FILE)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _serve(config: Config, stop: threading.Event) -> None:
    from ._server import Server

    os.makedirs(config.home, mode=0o700, exist_ok=True)
    sock_path = socket_path(config.home)
    lock_fd = _lock_pid_file(config.home)
    try:
        worker = Worker(config, meta_store=_cluster_meta_store(config))
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(sock_path)  # left by a worker that died: we hold the lock now
            worker.worker_id = load_worker_id(config.home)  # in hello from the first client
            server = Server(worker, sock_path, on_stop=stop.set, listen=config.listen)
            server.start(
                before_accepting=lambda: log.info(
                    "worker %d serving %s (engine %s, tiers %s)",
                    os.getpid(),
                    sock_path,
                    engine.backend(),
                    ", ".join(f"{t.name} {t.capacity} B at {t.path}" for t in config.tiers()),
                )
            )
            try:
                registration = _join_cluster(config, worker, server.address, sock_path)
            except BaseException:
                server.stop()
                raise
            if server.address is not None:
                log.info("worker %s listening on %s", worker.worker_id, server.address)
            try:
                while not stop.wait(0.5):
                    pass
            finally:
                log.info("worker %d stopping", os.getpid())
                if registration is not None:
                    registration.close()  # leave placement before refusing requests
                server.stop()
        finally:
            worker.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(sock_path)
    finally:
        os.close(lock_fd)
    log.info("worker %d stopped", os.getpid())


def _cluster_meta_store(config: Config) -> MetaStore | None:
    """The cluster's shared MetaStore (in etcd), or None for the node's own."""
    if config.etcd is None:
        return None
    from ._etcd import EtcdMetaStore

    return EtcdMetaStore(config.etcd)


def _advertised(address: str | None) -> str | None:
    """The address other hosts reach a TCP endpoint at (a wildcard bind names this host)."""
    if address is None:
        return None
    host, _, port = address.rpartition(":")
    if host in ("0.0.0.0", "[::]", ""):
        host = socket.getfqdn()
    return f"{host}:{port}"


def _join_cluster(config: Config, worker: Worker, address: str | None, sock_path: str):
    """Give the worker its stable id and, with etcd, register it (the registration is
    returned, to be closed before the server stops); a static membership file is checked
    to list it."""
    from ._membership import WorkerRegistration, load_static_members

    worker.in_cluster = config.etcd is not None or config.membership_file is not None
    if config.membership_file is not None:
        members = load_static_members(config.membership_file)
        mine = [m for m in members if m.address == address or m.address == config.listen]
        if not mine:
            mine = [m for m in members if m.host_id == config.host_id]
        if len(mine) != 1:
            raise ValueError(
                f"membership file {config.membership_file}: no single worker with address "
                f"{config.listen} or host id {config.host_id!r}"
            )
        worker.worker_id = mine[0].id
        return None
    if config.etcd is None:
        return None
    if address is None:
        raise ValueError("a worker in an etcd cluster needs listen (HOST:PORT) set")
    from ._membership import local_worker_info

    info = local_worker_info(config, address=_advertised(address), socket_path=sock_path)
    registration = WorkerRegistration(config.etcd, info, used_bytes=worker.used_bytes)

    def health() -> dict:
        return {
            "worker_id": registration.info.id,
            "etcd": registration.endpoint,
            "state": registration.info.state.value,
            "registered": registration.healthy,
            "last_error": registration.last_error,
        }

    worker.cluster_health = health
    log.info("worker %s registered in etcd at %s", info.id, registration.endpoint)
    return registration


def run_worker(config: Config | None = None, foreground: bool = True, timeout: float = 60.0):
    """Run the worker of ``config.home`` (the loaded configuration by default).

    Parameters
    ----------
    config
        Settings; :func:`~shoal._config.load_config` when None.
    foreground
        True: serve in this process until SIGTERM or SIGINT (or a ``stop`` request), then
        shut down cleanly (stop accepting, abort requests in flight, close the page store
        and the mount table, remove the socket) and return None. False: start a detached
        daemon (a session of its own, output appended to ``$SHOAL_HOME/worker.log``), wait
        until it accepts connections and return its pid.
    timeout
        Seconds to wait for a daemon to accept connections.

    Raises
    ------
    WorkerBusyError
        Another worker already serves this home (foreground).
    ConnectionError
        The daemon exited or did not answer in time; the message points at the log.
    """
    config = config if config is not None else load_config()
    if not foreground:
        return _start_daemon(config, timeout)
    stop = threading.Event()
    old = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            old[signum] = signal.signal(signum, lambda *_: stop.set())
    try:
        _serve(config, stop)
    finally:
        for signum, handler in old.items():
            signal.signal(signum, handler)
    return None


# The daemon: a short-lived launcher starts it in a session of its own and exits, so the
# daemon is nobody's child (no zombie in the process that asked for it).
_LAUNCHER = """
import os, subprocess, sys
home, log, code, cfg = sys.argv[1:5]
with open(log, "ab") as out:
    p = subprocess.Popen([sys.executable, "-c", code, cfg], stdin=subprocess.DEVNULL,
                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                         close_fds=True, cwd="/")
print(p.pid, flush=True)
"""
_DAEMON = "from shoal.control._worker import _daemon_main; _daemon_main()"


def _daemon_main() -> None:
    """Entry point of the daemon process: the configuration comes as JSON in argv[1]."""
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s",
    )
    config = Config(**json.loads(sys.argv[1]))
    try:
        run_worker(config, foreground=True)
    except WorkerBusyError as exc:
        log.error("%s", exc.strerror)
        sys.exit(1)
    except BaseException:
        log.exception("worker failed")
        sys.exit(1)


def _start_daemon(config: Config, timeout: float) -> int:
    os.makedirs(config.home, mode=0o700, exist_ok=True)
    socket_path(config.home)  # fail early on a home too long for a socket
    log_path = os.path.join(config.home, LOG_FILE)
    env = dict(os.environ)
    # The daemon must import this same shoal, installed or not.
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    cfg = json.dumps(dataclasses.asdict(config))
    out = subprocess.run(
        [sys.executable, "-c", _LAUNCHER, config.home, log_path, _DAEMON, cfg],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    if out.returncode != 0 or not out.stdout.strip().isdigit():
        raise ConnectionError(
            errno.ECHILD,
            f"could not launch the worker daemon: {out.stderr.decode(errors='replace')[-2000:]}",
        )
    pid = int(out.stdout)
    wait_ready(config.home, pid, timeout)
    return pid


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, exited but not reaped, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in (b"Z", b"X")


def log_tail(home: str, lines: int = 20) -> str:
    """The last lines of the worker's log, for error messages."""
    try:
        with open(os.path.join(home, LOG_FILE), "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def wait_ready(home: str, pid: int | None, timeout: float) -> None:
    """Wait until the worker of ``home`` accepts connections.

    Raises ``ConnectionError`` naming the log when process ``pid`` exits first or the
    timeout passes.
    """
    path = socket_path(home)
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.connect(path)
                return
            except (FileNotFoundError, ConnectionRefusedError):
                pass
        logfile = os.path.join(home, LOG_FILE)
        if pid is not None and not process_alive(pid):
            raise ConnectionError(
                errno.ECONNREFUSED,
                f"the Shoal worker (pid {pid}) exited during start-up; see {logfile}:\n"
                + log_tail(home),
            )
        if time.monotonic() > deadline:
            raise ConnectionError(
                errno.ETIMEDOUT,
                f"the Shoal worker did not answer on {path} within {timeout:.0f} s; see {logfile}",
            )
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
