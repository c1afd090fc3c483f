"""``shoal.Client``: reads through the node's worker, short-circuit where pages are cached,
straight from the under-store when the worker is gone."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import io
import json
import logging
import os
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from .._config import Config, load_config
from ..control import _jobs
from ..control._membership import Membership, WorkerInfo, WorkerState, members_to_nodes
from ..control._namespace import Mount, normalize_path
from ..control._pages import PageSlice, chunk_of, page_slices
from ..control._placement import Node, chunk_key, place
from ..control.proto import DATA, LOCATE, decode_error
from ..control.ufs import ObjectChangedError, UnderStore, open_store
from ..engine import PageLocation, crc32c
from ..engine._requests import host_view
from ._connection import Connection, WorkerLost, connect
from ._locations import LocationCache

__all__ = ["Client", "FileInfo", "LoadProgress"]

log = logging.getLogger("shoal.client")

_clients: weakref.WeakSet[Client] = weakref.WeakSet()
_MAX_ROUND = 256 << 20  # bytes asked of a worker in one request at most
_WORKER_RETRY_DELAY = 5.0  # seconds reads go straight to the stores after a failed start
_TOUCH_DELAY = 1.0  # seconds pages read through remembered locations wait to be reported
_DOWN_DELAY = 3.0  # seconds a cluster worker that failed is skipped (about its lease TTL)


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


class LoadProgress(NamedTuple):
    """Progress of :meth:`Client.load`: files and bytes done, of the totals, and the pages
    and bytes among those done that were cached already (skipped)."""

    files_done: int
    files_total: int
    bytes_done: int
    bytes_total: int
    pages_skipped: int = 0
    bytes_skipped: int = 0

    @classmethod
    def of(cls, counts: dict) -> LoadProgress:
        """From a worker's progress counters (missing ones are 0)."""
        return cls(*(int(counts.get(f, 0)) for f in cls._fields))


@dataclass(frozen=True)
class _Meta:
    """A file as the worker described it, with what a direct read needs."""

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
    def from_record(cls, r: dict) -> _Meta:
        return cls(
            r["path"], r["size"], r["version"], r["mtime"], r["is_dir"], bytes(r["fid"]),
            r["mount"], r["uri"], dict(r["options"]), r["rel"], r.get("replicas", 1),
            fresh_until=time.monotonic() + r.get("metadata_ttl", 0.0),
        )  # fmt: skip

    def info(self) -> FileInfo:
        return FileInfo(self.path, self.size, self.mtime, self.version, self.is_dir)


class Client:
    """Reads files under Shoal mounts through the node's worker.

    With no arguments it loads the configuration (``$SHOAL_HOME/config.yaml`` and
    ``SHOAL_*`` variables), connects to the worker on ``$SHOAL_HOME/worker.sock`` and, when
    none answers, starts one as a daemon (logging to ``$SHOAL_HOME/worker.log``).

    Pages the worker has cached are read short-circuit: the worker says where they are and
    passes the region files' descriptors, and the client reads them with the engine
    straight into the destination, checking each page's crc32c and its region's
    generation. Pages not cached are fetched by the worker and sent over the socket. When
    the worker dies during a read, the rest is read straight from the under-store; the next
    call starts a new worker.

    Parameters
    ----------
    config
        Settings; loaded with :func:`shoal._config.load_config` when None.
    start_worker
        Start the worker when none answers (else raise ``ConnectionRefusedError``).
    timeout
        Seconds to wait for any one answer of the worker before giving up on it (reads
        then go to the under-store); None waits for ever.
    start_timeout
        Seconds to wait for a worker being started.
    metadata_ttl
        Seconds this client keeps file metadata before asking the worker again (the worker
        has its own cache, per mount). A file's version is checked by the worker on every
        read it serves, so a stale entry costs one retry, never wrong bytes. Pages read
        before are read again without asking the worker (the client remembers where they
        are) only while the mount's ``metadata_ttl`` holds for the metadata.
    etcd
        ``http://HOST:PORT`` of the cluster's etcd (default ``config.etcd``,
        ``$SHOAL_ETCD``): cluster mode. The client then follows the workers registered
        there (``config.membership_file`` does the same from a file), reads each page from
        the worker that placement gives it, short-circuit when that worker runs on this
        client's host (``config.host_id``, ``$SHOAL_HOST_ID``) and over TCP otherwise,
        and never starts a worker. When a worker fails it moves to the page's next
        replica, then to the under-store.

    Notes
    -----
    Thread-safe: each thread gets its own connection. Fork-safe: a child process (a
    DataLoader worker, say) never uses its parent's connections or descriptors; it closes
    its inherited copies and connects anew. A client can be pickled (for spawn): the copy
    connects on first use.
    """

    def __init__(
        self,
        config: Config | None = None,
        *,
        start_worker: bool = True,
        timeout: float | None = 300.0,
        start_timeout: float = 60.0,
        metadata_ttl: float = 10.0,
        etcd: str | None = None,
    ):
        self._config = config if config is not None else load_config()
        if not isinstance(self._config, Config):
            raise TypeError(f"config must be a shoal Config, got {type(self._config).__name__}")
        if etcd is not None:
            self._config = dataclasses.replace(self._config, etcd=etcd, membership_file=None)
        self._cluster = self._config.etcd is not None or self._config.membership_file is not None
        for name, value in (("start_timeout", start_timeout), ("metadata_ttl", metadata_ttl)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name} must be a number of seconds >= 0, got {value!r}")
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0
        ):
            raise ValueError(f"timeout must be a number of seconds > 0 or None, got {timeout!r}")
        self._start = bool(start_worker)
        self._timeout = timeout
        self._start_timeout = start_timeout
        self._meta_ttl = metadata_ttl
        self._closed = False
        self._reset()
        _clients.add(self)

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._local = threading.local()
        self._conns: list[Connection] = []
        self._meta: dict[str, tuple[float, _Meta]] = {}
        self._stores: dict[str, UnderStore] = {}
        self._direct_until = 0.0  # monotonic time before which reads skip the worker
        self._locs = LocationCache()  # where the local worker keeps pages read before
        self._membership: Membership | None = None  # cluster mode, made on first use
        self._down: dict[tuple[str, str | None], float] = {}  # failed workers, until when
        self._seed = chunk_key(f"{self._config.host_id}/{self._pid}", 0)

    def __reduce__(self):
        return (
            _restore,
            (self._config, self._start, self._timeout, self._start_timeout, self._meta_ttl),
        )

    @property
    def config(self) -> Config:
        """The settings this client uses."""
        return self._config

    # ----------------------------------------------------------------- connections

    def _after_fork(self) -> None:
        # The parent's connections and stores are shared with it: close our copies of the
        # descriptors only, and start afresh.
        for conn in self._conns:
            conn.abandon()
        self._reset()

    def _conn(self) -> Connection:
        if self._closed:
            raise ValueError("I/O operation on a closed shoal Client")
        if os.getpid() != self._pid:
            self._after_fork()
        conn = getattr(self._local, "conn", None)
        if conn is not None and not conn.broken:
            return conn
        if self._cluster:
            conn = self._home_conn()
            self._local.conn = conn
            return conn
        conn = connect(
            self._config,
            start=self._start,
            timeout=self._timeout,
            start_timeout=self._start_timeout,
        )
        with self._lock:
            self._conns = [c for c in self._conns if not c.broken]
            self._conns.append(conn)
        self._local.conn = conn
        return conn

    def _call(self, header: dict) -> dict:
        """One request; on a lost worker, reconnect (starting one) and try once more."""
        try:
            return self._conn().call(header)
        except WorkerLost:
            return self._conn().call(header)

    # ----------------------------------------------------------------- metadata

    def _metas(self, paths: Sequence[str]) -> list[_Meta]:
        now = time.monotonic()
        out: list[_Meta | None] = []
        missing: dict[str, list[int]] = {}
        for i, p in enumerate(paths):
            entry = self._meta.get(p)
            if entry is not None and entry[0] > now:
                out.append(entry[1])
            else:
                out.append(None)
                missing.setdefault(p, []).append(i)
        if missing:
            records = self._stat_records(list(missing))
            expiry = time.monotonic() + self._meta_ttl
            for (p, slots), record in zip(missing.items(), records, strict=True):
                if "error" in record:
                    raise decode_error(record["error"])
                meta = _Meta.from_record(record)
                if self._meta_ttl > 0:
                    self._meta[p] = (expiry, meta)
                for i in slots:
                    out[i] = meta
            if len(self._meta) > 1_000_000:
                self._meta = {p: e for p, e in self._meta.items() if e[0] > now}
        return out

    def _stat_records(self, paths: list[str]) -> list[dict]:
        """File records from a worker; in an etcd cluster where no worker answers, from
        the mount table in etcd and the under-stores themselves."""
        try:
            return self._call({"op": "stat", "paths": paths})["files"]
        except (ConnectionError, TimeoutError) as exc:
            if not self._cluster or self._config.etcd is None:
                raise
            log.warning("no Shoal worker answers (%s); asking the under-stores directly", exc)
        from ..control._etcd import EtcdMetaStore
        from ..control._namespace import MountTable
        from ..control._pages import file_id
        from ..control._worker import split_mount_options
        from ..control.proto import encode_error

        meta_store = EtcdMetaStore(self._config.etcd)
        try:
            table = MountTable(meta_store)
        finally:
            meta_store.close()
        records = []
        for path in paths:
            try:
                mount, rel = table.resolve(path)
                own, options = split_mount_options(mount.options)
                opened = _Meta(path, 0, "", 0.0, True, b"", mount.path, mount.uri, options, rel)
                info = self._store(opened).stat(rel) if rel else None
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

    def _forget(self, path: str) -> None:
        self._locs.drop_path(path)
        under = path.rstrip("/") + "/"
        for p in [p for p in self._meta if p == path or p.startswith(under)]:
            self._meta.pop(p, None)

    def stat(self, path: str) -> FileInfo:
        """Metadata of the file or directory at ``path``.

        Raises
        ------
        FileNotFoundError
            ``path`` is under no mount, or nothing exists there.
        ValueError
            ``path`` is not absolute, or holds ``..`` or a NUL byte.
        """
        return self._metas([normalize_path(path)])[0].info()

    def exists(self, path: str) -> bool:
        """True if a file or directory exists at ``path`` (False under no mount)."""
        try:
            self.stat(path)
        except FileNotFoundError:
            return False
        return True

    def ls(self, path: str) -> list[FileInfo]:
        """The files and directories directly under ``path`` (mount points included),
        sorted by name; for a file, the file itself."""
        entries = self._call({"op": "ls", "path": normalize_path(path)})["entries"]
        return [
            FileInfo(e["path"], e["size"], e["mtime"], e["version"], e["is_dir"]) for e in entries
        ]

    def refresh(self, path: str) -> None:
        """Forget cached metadata of ``path`` and everything under it, here and in the
        worker: the next read sees the under-store's current version."""
        path = normalize_path(path)
        self._forget(path)
        self._call({"op": "refresh", "path": path})

    # ----------------------------------------------------------------- mounts

    def mount(self, path: str, uri: str, **options: Any) -> Mount:
        """Mount the under-store ``uri`` at ``path``.

        Parameters
        ----------
        path
            Shoal path of the mount point.
        uri
            ``s3://bucket/prefix``, ``file:///dir`` (or ``/dir``), or any fsspec URL.
        **options
            The store's options (``endpoint_url``, ``region``, ``access_key_env`` and
            ``secret_key_env`` naming environment variables, ...: credentials by reference
            only), and Shoal's: ``metadata_ttl`` (seconds, default 60), ``read_ahead``
            (pages, default 4).

        Raises
        ------
        ValueError, TypeError
            A bad path, URI or option.
        FileExistsError
            ``path`` is already a mount point.
        PermissionError, ConnectionError, FileNotFoundError
            The store refused the credentials, cannot be reached, or its bucket does not
            exist (the worker lists one object to check).
        """
        path = normalize_path(path)
        if not isinstance(uri, str) or not uri:
            raise ValueError(f"mount {path}: the under-store URI must be a non-empty str")
        header = {"op": "mount", "path": path, "uri": uri, "options": options}
        doc = self._call(header)["mount"]
        self._on_other_workers(header, FileExistsError)
        self._forget(path)
        return Mount(doc["path"], doc["uri"], doc["options"])

    def unmount(self, path: str) -> Mount:
        """Remove the mount at exactly ``path``; ``FileNotFoundError`` if it is none."""
        path = normalize_path(path)
        doc = self._call({"op": "unmount", "path": path})["mount"]
        self._on_other_workers({"op": "unmount", "path": path}, FileNotFoundError)
        self._forget(path)
        return Mount(doc["path"], doc["uri"], doc["options"])

    def _on_other_workers(self, header: dict, done: type[OSError]) -> None:
        """With a membership file every worker keeps its own mount table: make the same
        change on the workers other than this thread's (``done``: it was made already)."""
        if not self._cluster or self._config.etcd is not None:
            return  # one node, or a mount table shared in etcd
        home = self._conn()
        for member in self.membership().members():
            if member.id == getattr(getattr(home, "member", None), "id", None):
                continue
            try:
                self._conn_of(member, home).call(header)
            except done:
                pass
            except (ConnectionError, TimeoutError) as exc:
                log.warning(
                    "worker %s missed %s %s: %s", member.id, header["op"], header["path"], exc
                )
                self._mark_down(member, exc)

    def mounts(self) -> list[Mount]:
        """Every mount, sorted by path."""
        docs = self._call({"op": "mounts"})["mounts"]
        return [Mount(d["path"], d["uri"], d["options"]) for d in docs]

    # ----------------------------------------------------------------- reads

    def read_into(self, buf: Any, path: str, offset: int = 0) -> int:
        """Read the file at ``path`` from ``offset`` into ``buf``.

        Parameters
        ----------
        buf
            Any writable, C-contiguous host buffer: bytearray, memoryview, numpy array,
            torch CPU tensor. Up to its size in bytes is filled.
        path
            Shoal path of a file.
        offset
            Byte offset in the file, >= 0.

        Returns
        -------
        int
            Bytes read: the buffer's size, fewer at the end of the file, 0 past it.

        Raises
        ------
        FileNotFoundError
            ``path`` is under no mount, or no such file exists.
        IsADirectoryError
            ``path`` is a directory.
        ValueError
            A bad path or a negative offset.
        TypeError
            ``buf`` is not a writable host buffer.
        """
        return self.read_many_into([(buf, path, offset)])[0]

    def read_many_into(self, items: Iterable[Sequence[Any]]) -> list[int]:
        """Read many files (or ranges of them) in one batch: the small-file case.

        Parameters
        ----------
        items
            ``(buf, path, offset)`` or ``(buf, path)`` tuples, as for :meth:`read_into`.

        Returns
        -------
        list of int
            Bytes read per item.

        Raises
        ------
        The errors of :meth:`read_into`, for the first item that fails; nothing is read
        then unless the items before it were valid.
        """
        checked = []
        cache, now = self._meta, time.monotonic()
        for i, item in enumerate(items):
            if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
                raise ValueError(f"item {i}: expected (buf, path, offset), got {item!r}")
            buf, path = item[0], item[1]
            offset = item[2] if len(item) == 3 else 0
            if isinstance(offset, bool) or not isinstance(offset, int):
                raise TypeError(f"offset must be an int, got {type(offset).__name__}")
            if offset < 0:
                raise ValueError(f"offset must be >= 0, got {offset}")
            if type(buf) is not memoryview and hasattr(buf, "__cuda_array_interface__"):
                raise TypeError(
                    f"{type(buf).__name__} is a GPU buffer; Client reads into host memory"
                )
            view = host_view(buf, writable=True, what="read_into")
            # A path found in the cache was normalised when it was put there.
            entry = cache.get(path) if type(path) is str else None
            if entry is not None and entry[0] > now:
                checked.append([view, path, offset, entry[1]])
            else:
                checked.append([view, normalize_path(path), offset, None])
        if not checked:
            return []
        for attempt in range(3):
            missing = [item for item in checked if item[3] is None]
            if missing:
                for item, meta in zip(missing, self._metas([m[1] for m in missing]), strict=True):
                    item[3] = meta
            for _, _, _, meta in checked:
                if meta.is_dir:
                    raise IsADirectoryError(21, "is a directory", meta.path)
            try:
                return self._read([(v, m, o) for v, _, o, m in checked])
            except ObjectChangedError:
                # Our metadata is older than the worker's: drop it and ask again.
                for item in checked:
                    self._meta.pop(item[1], None)
                    item[3] = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _read(self, items: list[tuple[memoryview, _Meta, int]]) -> list[int]:
        results = [max(0, min(v.nbytes, m.size - o)) for v, m, o in items]
        if not any(results):
            return results
        if time.monotonic() >= self._direct_until:
            try:
                conn = self._conn()
                if self._cluster:
                    self._read_cluster(conn, items)
                    return results
            except (ConnectionError, TimeoutError) as exc:
                # No worker, and none could be started: the data is still in its store.
                log.warning("no Shoal worker (%s); reading from the under-stores directly", exc)
                self._direct_until = time.monotonic() + _WORKER_RETRY_DELAY
            else:
                try:
                    rest = self._read_cached(conn, items)
                    if rest:
                        self._read_pieces(conn, rest)
                    return results
                except WorkerLost as exc:
                    log.warning("%s; reading from the under-stores directly", exc)
        self._read_direct(items, results)
        return results

    def _read_cached(
        self, conn: Connection, items: list[tuple[memoryview, _Meta, int]]
    ) -> list[tuple[memoryview, _Meta, int]]:
        """Read short-circuit, with no round trip to the worker, the items whose every page
        this client remembers the location of; the items left for the worker (those with a
        page not remembered, or failing the crc32c or generation check: forgotten then)."""
        locs = self._locs
        if not locs or locs.owner != (conn.hello["host_id"], conn.hello["home"]):
            return items
        page_size = conn.hello["page_size"]
        now = time.monotonic()
        rest, wanted, keys = [], [], []
        for item in items:
            view, meta, offset = item
            n = meta.size - offset
            if n > view.nbytes:
                n = view.nbytes
            if n <= 0:
                continue
            if meta.fresh_until <= now:
                rest.append(item)  # the worker checks the file's version again
                continue
            index, start = divmod(offset, page_size)
            if start + n <= page_size:  # within one page, the common case
                wanted.append((item, len(keys), start, n, None))
                keys.append((meta.fid, index))
                continue
            slices = page_slices(offset, view.nbytes, meta.size, page_size)
            wanted.append((item, len(keys), 0, 0, slices))
            fid = meta.fid
            keys.extend([(fid, s.index) for s in slices])
        found = locs.get_many(keys)
        batch, partial, served = [], [], []
        for item, k, start, n, slices in wanted:
            view = item[0]
            first = len(batch)
            if slices is None:
                loc = found[k]
                if loc is None or start + n > loc[3]:
                    rest.append(item)
                    continue
                tier, region, offset, plen, crc, generation, _ = loc
                if start or n != plen:
                    dest = bytearray(plen)  # the crc32c covers the whole page
                    partial.append((first, view, 0, dest, start, n))
                    view = dest
                batch.append((tier, region, offset, plen, crc, generation, view))
                served.append((item, first, first + 1, k))
                continue
            item_locs = found[k : k + len(slices)]
            for (_, start, n, buf_offset), loc in zip(slices, item_locs, strict=True):
                if loc is None or start + n > loc[3]:
                    del batch[first:]  # a page not remembered: the whole item to the worker
                    partial = [x for x in partial if x[0] < first]
                    rest.append(item)
                    break
                tier, region, offset, plen, crc, generation, _ = loc
                if start == 0 and n == plen:  # a whole page: straight into the caller's
                    dest = view[buf_offset : buf_offset + n] if buf_offset else view
                else:
                    dest = bytearray(plen)  # the crc32c covers the whole page
                    partial.append((len(batch), view, buf_offset, dest, start, n))
                batch.append((tier, region, offset, plen, crc, generation, dest))
            else:
                served.append((item, first, len(batch), k))
        if not batch:
            return rest
        results = conn.reader.read_located(batch)
        good = [type(res) is int for res in results]
        failed, counts = [], {}
        for item, first, end, k in served:
            if good[first] if end == first + 1 else all(good[first:end]):
                for loc in batch[first:end]:
                    region = (loc[0], loc[1])
                    counts[region] = counts.get(region, 0) + 1
            else:
                failed.extend(keys[k : k + end - first])
                rest.append(item)
        for j, view, buf_offset, scratch, start, n in partial:
            if good[j]:
                view[buf_offset : buf_offset + n] = memoryview(scratch)[start : start + n]
        if failed:
            locs.drop_many(failed)
        if counts:
            for tier, region in counts:
                conn.used(tier, region)
            locs.touch(counts, now)
            if now - locs.touched_since >= _TOUCH_DELAY:
                with contextlib.suppress(ConnectionError, TimeoutError):
                    self._report_touched(conn)
        return rest

    def _report_touched(self, conn: Connection) -> None:
        """Tell the worker about the pages read through remembered locations since the last
        time: they count as hits, and their regions as recently used."""
        touched = self._locs.take_touched()
        if touched and self._locs.owner == (conn.hello["host_id"], conn.hello["home"]):
            conn.call({"op": "touch", "regions": touched})

    def _remember(self, conn: Connection, pieces: list, locs: list, retry: list[int]) -> None:
        """Keep the locations a worker handed out and that read well, for later reads."""
        failed = set(retry)
        keep, drop = [], []
        for k, ((_, s, meta), loc) in enumerate(zip(pieces, locs, strict=True)):
            if loc is None:
                continue
            key = (meta.fid, s.index)
            if k in failed:
                drop.append(key)
            else:
                keep.append((key, (*loc, meta.path)))
        if drop:
            self._locs.drop_many(drop)
        if keep:
            self._locs.put_many((conn.hello["host_id"], conn.hello["home"]), keep)

    def _members(self, conn: Connection) -> list[Node]:
        """The workers pages are placed on: the local one (a cluster adds members)."""
        return [Node(conn.hello["host_id"])]

    # ----------------------------------------------------------------- cluster

    def membership(self) -> Membership:
        """The cluster's membership as this process follows it (cluster mode only); made
        on first use, anew in a forked child.

        Raises
        ------
        ValueError
            The client is not in cluster mode, or the membership file is malformed.
        ConnectionError
            etcd does not answer.
        """
        if not self._cluster:
            raise ValueError("this client is not in cluster mode (no etcd, no membership file)")
        if os.getpid() != self._pid:
            self._after_fork()
        m = self._membership
        if m is None:
            with self._lock:
                if self._membership is None:
                    if self._config.etcd is not None:
                        from ..control._membership import EtcdMembership

                        self._membership = EtcdMembership(self._config.etcd)
                    else:
                        from ..control._membership import StaticMembership

                        self._membership = StaticMembership(self._config.membership_file)
                m = self._membership
        return m

    def _is_down(self, member: WorkerInfo) -> bool:
        until = self._down.get((member.id, member.address))
        return until is not None and until > time.monotonic()

    def _mark_down(self, member: WorkerInfo, exc: BaseException) -> None:
        if not self._is_down(member):
            log.warning("Shoal worker %s (%s) failed: %s", member.id, member.address, exc)
        self._down[member.id, member.address] = time.monotonic() + _DOWN_DELAY
        pool = getattr(self._local, "pool", None)
        conn = pool.pop(member.id, None) if pool else None
        if conn is not None:
            conn.close()

    def _open(self, member: WorkerInfo, timeout: float | None) -> Connection:
        """A new connection to ``member``: its Unix socket when it runs on this host (reads
        short-circuit), TCP otherwise."""
        if member.host_id == self._config.host_id and member.socket_path:
            return Connection(member.socket_path, timeout)
        if member.address is None:
            raise ConnectionRefusedError(
                errno.ECONNREFUSED, f"worker {member.id} on another host has no TCP address"
            )
        return Connection(None, timeout, address=member.address)

    def _track(self, conn: Connection) -> None:
        with self._lock:
            self._conns = [c for c in self._conns if not c.broken]
            self._conns.append(conn)

    def _home_conn(self) -> Connection:
        """A connection for metadata and control: a worker on this host if there is one,
        else one picked by this client's hash, the next on failure."""
        members = [m for m in self.membership().members() if not self._is_down(m)]
        members.sort(
            key=lambda m: (m.host_id != self._config.host_id, chunk_key(m.id, 0) ^ self._seed)
        )
        error: BaseException | None = None
        for member in members:
            try:
                conn = self._open(member, self._timeout)
            except (ConnectionError, TimeoutError) as exc:
                self._mark_down(member, exc)
                error = exc
                continue
            conn.member = member
            self._track(conn)
            return conn
        where = self._config.etcd or self._config.membership_file
        raise ConnectionRefusedError(
            errno.ECONNREFUSED,
            f"no worker of the Shoal cluster ({where}) answers"
            + (f"; last error: {error}" if error else ": none is registered"),
        )

    def _conn_of(self, member: WorkerInfo, home: Connection) -> Connection:
        """This thread's pooled connection to ``member``."""
        mine = getattr(home, "member", None)
        if (
            mine is not None
            and not home.broken
            and (mine.id, mine.address) == (member.id, member.address)
        ):
            return home
        pool = getattr(self._local, "pool", None)
        if pool is None:
            pool = self._local.pool = {}
        conn = pool.get(member.id)
        if conn is not None and not conn.broken and conn.member.address == member.address:
            return conn
        conn = self._open(member, self._timeout)
        conn.member = member
        pool[member.id] = conn
        self._track(conn)
        return conn

    def _replicas(self, meta: _Meta, count: int) -> int:
        wanted = meta.replicas
        return count if wanted == "all" else min(int(wanted), count)

    def _read_cluster(self, home: Connection, items: list[tuple[memoryview, _Meta, int]]) -> None:
        """Read pieces from the workers placement gives them: each piece from one of its
        replicas (picked by this client's hash), the next replica when a worker fails, the
        under-store when none is left."""
        page_size = home.hello["page_size"]
        chunk_size = home.hello["chunk_size"]
        members = {m.id: m for m in self.membership().members()}
        nodes = [n for n in members_to_nodes(members.values()) if not self._is_down(members[n.id])]
        # per piece: (destination, page slice, file, candidate worker ids best first)
        pending: list[tuple[memoryview, PageSlice, _Meta, list[str]]] = []
        placed: dict[tuple[bytes, int], list[str]] = {}
        for view, meta, offset in items:
            end = min(offset + view.nbytes, meta.size)
            if end <= offset:
                continue
            for s in page_slices(offset, view.nbytes, meta.size, page_size):
                dest = view[s.buf_offset : s.buf_offset + s.length]
                chunk = chunk_of(s.index, page_size, chunk_size)
                order = placed.get((meta.fid, chunk))
                if order is None:
                    key = chunk_key(meta.fid, chunk)
                    order = []
                    if nodes:
                        owners = [n.id for n in place(key, nodes, self._replicas(meta, len(nodes)))]
                        turn = (key ^ self._seed) % len(owners)
                        order = owners[turn:] + owners[:turn]
                    placed[meta.fid, chunk] = order
                pending.append((dest, s, meta, list(order)))
        round_bytes = max(page_size, min(_MAX_ROUND, home.hello["capacity"] // 4))
        while pending:
            groups: dict[str, list] = {}
            direct = []
            for piece in pending:
                candidates = piece[3]
                while candidates and (
                    candidates[0] not in members or self._is_down(members[candidates[0]])
                ):
                    candidates.pop(0)
                if candidates:
                    groups.setdefault(candidates[0], []).append(piece)
                else:
                    direct.append(piece)
            for dest, s, meta, _ in direct:
                self._read_piece_direct(dest, s, meta, page_size)
            pending = []
            # One request in flight per worker, sent to every worker before any answer is
            # read: the workers serve a batch at the same time.
            rounds = {w: _rounds(pieces, round_bytes) for w, pieces in groups.items()}
            while rounds:
                sent = []
                for wid in list(rounds):
                    batch = rounds[wid].pop(0)
                    if not rounds[wid]:
                        del rounds[wid]
                    member = members[wid]
                    try:
                        conn = self._conn_of(member, home)
                        if conn.remote:
                            self._send_data_read(conn, batch)
                        sent.append((member, conn, batch))
                    except (ConnectionError, TimeoutError) as exc:
                        self._mark_down(member, exc)
                        pending.extend(batch)
                        pending.extend(p for b in rounds.pop(wid, []) for p in b)
                for k, (member, conn, batch) in enumerate(sent):
                    try:
                        if conn.remote:
                            self._recv_data_read(conn, batch)
                        else:
                            self._read_from(conn, [(d, s, m) for d, s, m, _ in batch])
                    except (ConnectionError, TimeoutError) as exc:
                        self._mark_down(member, exc)
                        pending.extend(batch)
                        pending.extend(p for b in rounds.pop(member.id, []) for p in b)
                    except BaseException:
                        for _, other, _ in sent[k + 1 :]:
                            other.close()  # its answer is still on the way: start afresh
                        raise

    @staticmethod
    def _send_data_read(conn: Connection, batch: list, segments: bool = True) -> None:
        """Ask a remote worker for the bytes of ``batch``; with ``segments``, whole pages
        come straight from its region files, with their crc32c for us to check."""
        files: dict[tuple[str, str], int] = {}
        wanted = []
        for _, s, meta, _ in batch:
            fi = files.setdefault((meta.path, meta.version), len(files))
            wanted.append([fi, s.index, s.start, s.length])
        conn.send(
            {"op": "read", "files": [list(k) for k in files], "items": wanted, "mode": DATA,
             "forget": [], "segments": segments}
        )  # fmt: skip

    def _recv_data_read(self, conn: Connection, batch: list) -> None:
        answer, payload_len, fds = conn.receive()
        for fd in fds:
            os.close(fd)
        conn.recv_payload([dest for dest, _, _, _ in batch], payload_len)
        crcs = answer.get("crcs")
        if crcs is None:
            return
        if not isinstance(crcs, list) or len(crcs) != len(batch):
            conn.close()
            raise WorkerLost(f"the worker at {conn.where} sent a malformed crcs list")
        # A page whose region was reclaimed while it was sent: read it again, checked
        # by the worker this time.
        bad = [
            p for p, crc in zip(batch, crcs, strict=True) if crc is not None and crc32c(p[0]) != crc
        ]
        if bad:
            self._send_data_read(conn, bad, segments=False)
            self._recv_data_read(conn, bad)

    def _read_piece_direct(self, dest: memoryview, s: PageSlice, meta: _Meta, page_size: int):
        offset = s.index * page_size + s.start
        got = self._store(meta).read_into(meta.rel, offset, dest, version=meta.version or None)
        if got != dest.nbytes:
            raise ObjectChangedError(
                f"read: {meta.path} is shorter than its metadata says; read it again", meta.path
            )

    def _read_pieces(self, conn: Connection, items: list[tuple[memoryview, _Meta, int]]) -> None:
        page_size = conn.hello["page_size"]
        chunk_size = conn.hello["chunk_size"]
        members = self._members(conn)
        groups: dict[str, list] = {}  # owner id -> (destination, page slice, file)
        for view, meta, offset in items:
            end = min(offset + view.nbytes, meta.size)
            if end <= offset:
                continue
            index, start = divmod(offset, page_size)
            if start + end - offset <= page_size:
                slices = [PageSlice(index, start, end - offset, 0)]  # within one page
            else:
                slices = page_slices(offset, view.nbytes, meta.size, page_size)
            for s in slices:
                if len(members) == 1:
                    owner = members[0]
                else:
                    key = chunk_key(meta.fid, chunk_of(s.index, page_size, chunk_size))
                    owner = place(key, members)[0]
                dest = view[s.buf_offset : s.buf_offset + s.length]
                groups.setdefault(owner.id, []).append((dest, s, meta))
        # In rounds well below the cache's size: the pages a round located are still there
        # when the client reads them, and the worker never holds much in memory.
        round_bytes = max(page_size, min(_MAX_ROUND, conn.hello["capacity"] // 4))
        for owner, pieces in groups.items():
            target = self._conn_to(owner, conn)
            start = total = 0
            for end, (dest, _, _) in enumerate(pieces, 1):
                total += dest.nbytes
                if total >= round_bytes or end == len(pieces):
                    self._read_from(target, pieces[start:end])
                    start, total = end, 0

    @staticmethod
    def _conn_to(owner: str, local: Connection) -> Connection:
        if owner != local.hello["host_id"]:
            raise ConnectionError(f"no connection to worker {owner!r}")
        return local

    def _read_from(self, conn: Connection, pieces: list) -> None:
        """Read pieces placed on one worker: located ones short-circuit, the rest (and any
        that fail their checks) over the socket."""
        files: dict[tuple[str, str], int] = {}
        requested = []
        for dest, s, meta in pieces:
            fi = files.setdefault((meta.path, meta.version), len(files))
            requested.append((dest, [fi, s.index, s.start, s.length]))
        file_list = [list(k) for k in files]
        conn.send(
            {
                "op": "read",
                "files": file_list,
                "items": [item for _, item in requested],
                "mode": LOCATE,
                "forget": conn.take_forget(),
            }
        )
        answer, payload_len, fds = conn.receive()
        conn.adopt(answer["fds"], fds)
        locs = answer["locs"]
        if len(locs) != len(requested):
            raise decode_error({"type": "ProtocolError", "message": "wrong number of locations"})
        conn.recv_payload(
            [d for (d, _), loc in zip(requested, locs, strict=True) if loc is None], payload_len
        )
        retry = self._read_located(conn, requested, locs)
        self._remember(conn, pieces, locs, retry)
        conn.trim()
        if retry:
            conn.send(
                {
                    "op": "read",
                    "files": file_list,
                    "items": [requested[k][1] for k in retry],
                    "mode": DATA,
                    "forget": conn.take_forget(),
                }
            )
            _, payload_len, fds = conn.receive()
            for fd in fds:
                os.close(fd)
            conn.recv_payload([requested[k][0] for k in retry], payload_len)

    @staticmethod
    def _read_located(conn: Connection, pieces: list, locs: list) -> list[int]:
        """Short-circuit reads of the located pieces; the indexes of those to fetch again
        (region reclaimed since, bytes not matching their crc32c, descriptor missing)."""
        batch, slots, partial, retry = [], [], [], []
        regions = set()
        for k, ((dest, (_, _, start, length)), loc) in enumerate(zip(pieces, locs, strict=True)):
            if loc is None:
                continue
            tier, region, offset, plen, crc, generation = loc
            if not conn.holds(tier, region):
                # The worker believes we hold this descriptor: have it sent again next time,
                # and get these bytes over the socket.
                conn.forget(tier, region)
                retry.append(k)
                continue
            regions.add((tier, region))
            location = PageLocation(tier, region, "", offset, plen, crc, generation)
            if start == 0 and length == plen:
                batch.append((location, dest))  # a whole page: zero-copy into the caller's
            else:
                scratch = bytearray(plen)  # the crc32c covers the whole page
                batch.append((location, scratch))
                partial.append((len(batch) - 1, dest, scratch, start, length))
            slots.append(k)
        if not batch:
            return retry
        for tier, region in regions:
            conn.used(tier, region)
        try:
            results: list = conn.reader.read_many_into(batch)
        except OSError as exc:
            if not hasattr(exc, "results"):
                raise
            results = exc.results
        failed = {j for j, res in enumerate(results) if isinstance(res, BaseException)}
        for j, dest, scratch, start, length in partial:
            if j not in failed:
                dest[:] = memoryview(scratch)[start : start + length]
        return sorted(retry + [slots[j] for j in failed])

    def _store(self, meta: _Meta) -> UnderStore:
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

    def _read_direct(self, items, results: list[int]) -> None:
        for (view, meta, offset), n in zip(items, results, strict=True):
            if n:
                got = self._store(meta).read_into(
                    meta.rel, offset, view[:n], version=meta.version or None
                )
                if got != n:
                    raise ObjectChangedError(
                        f"read: {meta.path} is shorter than its metadata says; read it again",
                        meta.path,
                    )

    def open(self, path: str, buffer_size: int | None = None) -> io.BufferedReader:
        """A seekable binary file object reading ``path`` through this client.

        Parameters
        ----------
        path
            Shoal path of a file.
        buffer_size
            Read buffer size (default: the worker's page size).
        """
        from ._file import ShoalRawFile

        raw = ShoalRawFile(self, normalize_path(path))
        if buffer_size is None:
            buffer_size = self._conn().hello["page_size"]
        return io.BufferedReader(raw, buffer_size=buffer_size)

    # ----------------------------------------------------------------- jobs

    def load(
        self,
        paths: str | Iterable[str],
        metadata_only: bool = False,
        progress: Callable[[LoadProgress], None] | None = None,
        replicas: int | str | None = None,
    ) -> LoadProgress:
        """Have the worker cache the files under ``paths`` (a path or a list of paths;
        directories are expanded), or only their metadata.

        Parameters
        ----------
        paths
            Files or directories.
        metadata_only
            Fill only the metadata cache (stat and listings), not the page store.
        progress
            Called with a :class:`LoadProgress` as files complete.
        replicas
            In a cluster: workers to load each chunk on (an int >= 1 or ``"all"``),
            instead of the mount's ``replicas`` option. A single node holds one copy.

        Returns
        -------
        LoadProgress
            The final counts; in a cluster, bytes count every copy.
        """
        if (
            replicas is not None
            and replicas != "all"
            and (isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1)
        ):
            raise ValueError(f"replicas must be an int >= 1 or 'all', got {replicas!r}")
        if isinstance(paths, str):
            paths = [paths]
        paths = [normalize_path(p) for p in paths]
        metadata_only = bool(metadata_only)
        self._conn()  # checks the client, starts the worker if need be
        started = time.time()
        record = _jobs.load_record(
            _jobs.new_job_id(started), paths, metadata_only, replicas, started
        )
        self._put_job(record)
        counts: dict[str, int] = {}
        caller_stopped = False

        def seen(state: dict) -> None:
            nonlocal caller_stopped
            counts.update(state)
            if progress is not None:
                try:
                    progress(LoadProgress.of(state))
                except BaseException:
                    caller_stopped = True
                    raise

        try:
            if self._cluster:
                final = self._load_cluster(paths, metadata_only, seen, replicas)
            else:
                final = self._load_one(paths, metadata_only, seen)
        except BaseException as exc:
            # Interrupted by the caller (Ctrl-C, its progress callback): STOPPED; the load
            # or the connection failed: FAILED. Running it again resumes it.
            stopped = caller_stopped or not isinstance(exc, Exception)
            state = _jobs.STOPPED if stopped else _jobs.FAILED
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            self._put_job(_jobs.finish_record(record, state, counts, error))
            raise
        self._put_job(_jobs.finish_record(record, _jobs.DONE, final))
        return LoadProgress.of(final)

    def _put_job(self, record: dict) -> None:
        """Write a job record through the worker (every worker of a membership file, each
        keeping its own); a failure is logged, never raised: the load matters more."""
        header = {"op": "job_put", "key": _jobs.LOAD_PREFIX + record["id"], "record": record}
        try:
            self._call(header)
            self._on_other_workers(header, FileExistsError)
        except (OSError, ValueError) as exc:
            log.warning("load %s: its job record was not written: %s", record["id"], exc)

    def load_history(self, limit: int | None = 20) -> list[dict]:
        """The records of past and running loads, newest first.

        Parameters
        ----------
        limit
            At most this many (an int >= 0), or every record (None).

        Returns
        -------
        list of dict
            Per load: ``id`` (sorts by start time), ``state`` (``RUNNING``, ``DONE``,
            ``FAILED`` or ``STOPPED``), ``started`` and ``finished`` (Unix times;
            ``finished`` None while running), ``paths`` (``count`` and the ``first``
            few), ``metadata_only``, ``replicas``, ``error`` (None unless it failed or
            was stopped), and the counters ``files_done``, ``files_total``,
            ``bytes_done``, ``bytes_total``, ``pages_done``, ``pages_total``,
            ``pages_skipped`` and ``bytes_skipped`` (cached already, not fetched).
        """
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or limit < 0
        ):
            raise ValueError(f"limit must be an int >= 0 or None, got {limit!r}")
        answer = self._call(
            {
                "op": "jobs",
                "prefix": _jobs.LOAD_PREFIX,
                "limit": (1 << 31) - 1 if limit is None else limit,
            }
        )
        return answer["jobs"]

    def _load_one(
        self, paths: list[str], metadata_only: bool, progress: Callable[[dict], None]
    ) -> dict:
        # A connection of its own: the progress callback may use this client meanwhile, and
        # a load takes as long as it takes (no timeout; progress shows it is alive).
        conn = connect(self._config, start=self._start, timeout=None, start_timeout=1.0)
        try:
            conn.send({"op": "load", "paths": paths, "metadata_only": metadata_only})
            while True:
                answer, _, fds = conn.receive()
                for fd in fds:
                    os.close(fd)
                progress(answer["progress"])
                if answer.get("done"):
                    return answer["progress"]
        finally:
            conn.close()

    def _load_cluster(
        self,
        paths: list[str],
        metadata_only: bool,
        progress: Callable[[dict], None],
        replicas: int | str | None = None,
    ) -> dict:
        """A load split by placement: every ONLINE worker fetches the pages placed on it,
        all at once. A worker lost on the way (its connection fails) hands its share to
        the others: they load again, placed over themselves alone, and skip the pages
        they hold already. Any other error fails the load."""
        members = [
            m
            for m in self.membership().members()
            if m.state is WorkerState.ONLINE and not self._is_down(m)
        ]
        fetched: dict[str, list[int]] = {}  # worker id -> [pages, bytes] of earlier rounds
        last_loss: BaseException | None = None
        while members:
            earlier = [0, 0]
            for m in members:
                got = fetched.get(m.id, [0, 0])
                earlier = [earlier[0] + got[0], earlier[1] + got[1]]
            states, lost, final = self._load_round(
                paths, metadata_only, progress, replicas, members, earlier
            )
            if not lost:
                return final
            for member, exc in lost:
                self._mark_down(member, exc)
                last_loss = exc
            gone = {member.id for member, _ in lost}
            log.warning("load: workers %s lost; the others take their share", sorted(gone))
            for mid, s in states.items():
                got = fetched.setdefault(mid, [0, 0])
                got[0] += s.get("pages_done", 0) - s.get("pages_skipped", 0)
                got[1] += s.get("bytes_done", 0) - s.get("bytes_skipped", 0)
            members = [m for m in members if m.id not in gone]
        raise ConnectionRefusedError(
            errno.ECONNREFUSED,
            "no worker of the Shoal cluster is ONLINE: nothing to load on"
            + (f" (last lost: {last_loss})" if last_loss is not None else ""),
        )

    def _load_round(
        self,
        paths: list[str],
        metadata_only: bool,
        progress: Callable[[dict], None],
        replicas: int | str | None,
        members: list[WorkerInfo],
        earlier: list[int],
    ) -> tuple[dict[str, dict], list[tuple[WorkerInfo, BaseException]], dict]:
        """One load on ``members`` at once, placed over them: their last counters, the
        workers lost (connection failed) and the summed counters. Progress sums their
        counters (files: those every worker is done with); pages and bytes skipped leave
        out ``earlier`` (what these workers fetched in earlier rounds of the same load)."""
        placement: dict[str, Any] = {"nodes": [[n.id, n.weight] for n in members_to_nodes(members)]}
        if replicas is not None:
            placement["replicas"] = replicas
        states: dict[str, dict] = {}
        lost: list[tuple[WorkerInfo, BaseException]] = []
        errors: list[BaseException] = []
        conns: list[Connection] = []
        lock = threading.Lock()
        stop = threading.Event()

        def total() -> dict:
            out = {k: sum(s.get(k, 0) for s in states.values()) for k in _jobs.COUNTS}
            done = [s["files_done"] for s in states.values()]
            out["files_done"] = min(done) if len(done) == len(members) else 0
            out["files_total"] = max((s["files_total"] for s in states.values()), default=0)
            out["pages_skipped"] = max(0, out["pages_skipped"] - earlier[0])
            out["bytes_skipped"] = max(0, out["bytes_skipped"] - earlier[1])
            return out

        def abort() -> None:  # with the lock held
            stop.set()
            for c in conns:
                with contextlib.suppress(OSError):
                    c.sock.shutdown(socket.SHUT_RDWR)

        def run(member: WorkerInfo) -> None:
            try:
                conn = self._open(member, None)
            except (ConnectionError, TimeoutError) as exc:
                with lock:
                    lost.append((member, exc))
                return
            with lock:
                if stop.is_set():
                    conn.close()
                    return
                conns.append(conn)
            try:
                conn.send(
                    {"op": "load", "paths": paths, "metadata_only": metadata_only,
                     "placement": placement}
                )  # fmt: skip
                while True:
                    answer, _, fds = conn.receive()
                    for fd in fds:
                        os.close(fd)
                    with lock:
                        states[member.id] = answer["progress"]
                        progress(total())
                    if answer.get("done"):
                        return
            except BaseException as exc:
                with lock:
                    if (
                        conn.broken
                        and not stop.is_set()
                        and isinstance(exc, (ConnectionError, TimeoutError))
                    ):
                        lost.append((member, exc))
                    else:
                        errors.append(exc)
                        abort()
            finally:
                conn.close()

        threads = [
            threading.Thread(target=run, args=(m,), name=f"shoal-load-{m.id}") for m in members
        ]
        for t in threads:
            t.start()
        try:
            for t in threads:
                t.join()
        except BaseException:
            with lock:
                abort()
            for t in threads:
                t.join()
            raise
        if errors:
            raise errors[0]
        return states, lost, total()

    def free(self, path: str) -> dict:
        """Drop the cached pages of the files under ``path``.

        Returns
        -------
        dict
            ``pages`` and ``bytes`` freed.
        """
        path = normalize_path(path)
        self._locs.drop_path(path)
        if self._cluster:
            return self._free_cluster(path)
        answer = self._call({"op": "free", "path": path})
        return {"pages": answer["pages"], "bytes": answer["bytes"]}

    def _free_cluster(self, path: str) -> dict:
        """``free`` on every live worker (a worker that does not answer is skipped)."""
        home = self._conn()
        total = {"pages": 0, "bytes": 0}
        for member in self.membership().members():
            try:
                answer = self._conn_of(member, home).call({"op": "free", "path": path})
            except (ConnectionError, TimeoutError) as exc:
                self._mark_down(member, exc)
                continue
            total["pages"] += answer["pages"]
            total["bytes"] += answer["bytes"]
        return total

    def report(self) -> dict:
        """The worker's report.

        Returns
        -------
        dict
            ``tiers`` (per tier: capacity, regions used, live bytes, pages ...), ``pages``,
            ``page_hits``, ``page_misses``, ``hit_ratio``, ``ufs_reads``, ``ufs_pages``
            and ``ufs_bytes`` (requests, pages and bytes from under-stores),
            ``pages_located`` (read short-circuit), ``pages_sent`` and ``bytes_sent``
            (over the socket), ``pages_prefetched``, ``requests``,
            ``mounts``, ``worker`` (pid, host id, home, uptime, engine, page size).
            In a cluster, also ``cluster`` (the worker's registration: id, state,
            whether etcd renews it) and ``membership`` (this client's view: workers
            seen, whether its source answers, the last error).
        """
        if self._locs.touched_since:
            # Pages read with no round trip: the counters include them.
            with contextlib.suppress(ConnectionError, TimeoutError):
                self._report_touched(self._conn())
        report = self._call({"op": "report"})["report"]
        if self._cluster:
            m = self.membership()
            report["membership"] = {
                "source": self._config.etcd or self._config.membership_file,
                "workers": len(m.members()),
                "healthy": m.healthy,
                "last_error": m.last_error,
            }
        return report

    def worker_pid(self) -> int:
        """Pid of the worker this thread is connected to."""
        return self._conn().hello["worker_pid"]

    # ----------------------------------------------------------------- lifetime

    def close(self) -> None:
        """Close every connection and descriptor of this client; idempotent."""
        if self._closed:
            return
        self._closed = True
        with self._lock:
            conns, self._conns = self._conns, []
            stores, self._stores = list(self._stores.values()), {}
        forked = os.getpid() != self._pid
        membership, self._membership = self._membership, None
        if membership is not None and not forked:
            membership.close()
        for conn in conns:
            conn.abandon() if forked else conn.close()
        if not forked:
            for store in stores:
                with contextlib.suppress(Exception):
                    store.close()

    def __enter__(self) -> Client:
        return self

    def __del__(self) -> None:
        # Not contextlib.suppress: at interpreter exit, modules may be torn down already.
        try:  # noqa: SIM105
            self.close()
        except Exception:
            pass

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<shoal.Client home={self._config.home!r}{' closed' if self._closed else ''}>"


def _rounds(pieces: list, round_bytes: int) -> list[list]:
    """``pieces`` cut into batches of about ``round_bytes`` at most (one piece at least)."""
    out, batch, total = [], [], 0
    for piece in pieces:
        if batch and total + piece[0].nbytes > round_bytes:
            out.append(batch)
            batch, total = [], 0
        batch.append(piece)
        total += piece[0].nbytes
    if batch:
        out.append(batch)
    return out


def _restore(config, start, timeout, start_timeout, metadata_ttl) -> Client:
    return Client(
        config,
        start_worker=start,
        timeout=timeout,
        start_timeout=start_timeout,
        metadata_ttl=metadata_ttl,
    )


def _after_fork_in_child() -> None:
    for client in list(_clients):
        client._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
