"""The worker: one per node. It owns the page store, the mount table and the under-stores;
its methods serve the ops of the wire protocol (the server's op -> handler table comes from
:meth:`Worker.handlers`). Files are resolved by ``_files``, pages fetched by ``_fetch``;
``_daemon`` runs the worker as a process and ``_server`` puts it on its sockets.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, NamedTuple

from .. import engine
from .._config import Config
from ..engine import PageLocation, PageStore
from ..engine._regions import TIER_NAMES
from ._admission import MountPolicy
from ._fetch import Fetcher, Page
from ._filerecords import decode_record, encode_record
from ._files import File, FileResolver
from ._filetable import FileTableWriter
from ._jobs import check_job_key, mark_abandoned, newest_first
from ._metastore import LocalMetaStore, MetaStore
from ._metrics import Counters
from ._namespace import Mount, MountTable, split_mount_options
from ._pages import file_id, page_key
from ._server import ConnectionState, FileSegment, Handler, Reply
from .proto import DATA, GENERATIONS, MAX_FDS, PROTOCOL_VERSION, check_version
from .ufs import ObjectChangedError, ObjectInfo

__all__ = ["Worker"]


#: Seconds a starting worker spends at most taking back its file records before it serves.
_RESTORE_WAIT = 10.0
#: Whole one-page files a load fetches in one task.
_LOAD_CHUNK = 64


def _one_page(f: File, pages: list[Page]) -> bool:
    """True for a file whose one page (of those placed here) is all of it."""
    return len(pages) == 1 and pages[0].index == 0 and pages[0].length == f.info.size


class _Where(NamedTuple):
    tier: str
    region: int


log = logging.getLogger("shoal.worker")


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
        self.started = time.time()
        self._lock = threading.Lock()
        self._client_fds: dict[tuple[str, int], int] = {}
        self._counters = Counters()
        self._closed = False
        # Another worker may change a shared mount table: look again for an unknown path.
        shared = meta_store is not None
        self._meta_store = meta_store or LocalMetaStore(os.path.join(config.home, "meta"))
        self.worker_id: str | None = None
        self.metrics_address: str | None = None  # HOST:PORT of the Prometheus endpoint
        self.cluster_health: Callable[[], dict] | None = None
        try:
            mounts = MountTable(self._meta_store)
            if not shared:
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
        self.files = FileResolver(
            mounts,
            shared=shared,
            counters=self._counters,
            policy=MountPolicy.from_config(config),
            stat_threads=fetch_threads,
        )
        self.fetcher = Fetcher(
            self._store,
            [t.name for t in config.tiers()],
            self._counters,
            page_size=config.page_size,
            chunk_size=config.chunk_size,
            on_changed=self.files.metadata.refresh,
            fetch_threads=fetch_threads,
            read_ahead_threads=read_ahead_threads,
            whole_file_bytes=whole_file_bytes,
        )
        self.files.fetch_first = self.fetcher.fetch_first
        #: Cached small files, published for the clients of this node to read with no
        #: request; void (superseded) whenever what a path means may have changed.
        # Sized for the pages cached already, so that a large cache's table seldom grows
        # (each growth copies every slot while publishing waits).
        pages = len(self._store)
        self.table = FileTableWriter(min(24, max(16, math.ceil(math.log2(pages / 0.6 + 1)))))
        self.files.metadata.on_refresh = self.table.supersede
        self.fetcher.record_of = self._record_of
        # The files cached before a restart, known again before the first client comes
        # (for at most _RESTORE_WAIT seconds; the rest of a large index in the background,
        # the worker serving meanwhile as it would without).
        self._restoring = threading.Thread(
            target=self._restore_files, name="shoal-restore", daemon=True
        )
        self._restoring.start()
        self._restoring.join(_RESTORE_WAIT)

    @property
    def in_cluster(self) -> bool:
        """True when pages are placed on several workers."""
        return self.fetcher.in_cluster

    @in_cluster.setter
    def in_cluster(self, value: bool) -> None:
        self.fetcher.in_cluster = bool(value)

    def handlers(self) -> dict[str, Handler]:
        """The op -> handler table the server dispatches through."""
        return {
            "hello": self.hello,
            "table": self._table_op,
            "regions": self._regions_op,
            "read": self.read,
            "stat": lambda _, h: Reply({"files": self.stat(h["paths"], h.get("fetch"))}),
            "mount": lambda _, h: Reply({"mount": self.mount(h["path"], h["uri"], h["options"])}),
            "unmount": lambda _, h: Reply({"mount": self.unmount(h["path"])}),
            "mounts": lambda _, h: Reply({"mounts": self.mounts()}),
            "ls": lambda _, h: Reply({"entries": self.ls(h["path"])}),
            "refresh": lambda _, h: Reply({"dropped": self.refresh(h["path"])}),
            "free": lambda _, h: Reply(self.free(h["path"])),
            "report": lambda _, h: Reply({"report": self.report()}),
            "touch": lambda _, h: Reply(self.touch(h["regions"])),
            "job_put": lambda _, h: Reply(self.put_job(h["key"], h["record"])),
            "jobs": lambda _, h: Reply({"jobs": self.jobs(h["prefix"], h["limit"])}),
            "load": self._load_op,
            "stop": self._stop_op,
        }

    def count_request(self, op: str) -> None:
        """Count one request served; those naming files (``stat``, ``read``) apart too."""
        if op in ("stat", "read"):
            self._counters.add(requests=1, file_requests=1)
        else:
            self._counters.add(requests=1)

    # ----------------------------------------------------------------- namespace

    def hello(self, conn: ConnectionState, header: dict) -> Reply:
        """The first op of a connection (the server has authenticated a TCP peer before):
        versions checked, the node's sizes told, and whether the peer may run admin ops."""
        check_version(header["version"])
        conn.pid = header["pid"]
        table = header.get("table") is True and not conn.remote
        return Reply(
            {
                "table": table,
                "version": PROTOCOL_VERSION,
                "worker_pid": os.getpid(),
                "host_id": self.config.host_id,
                "page_size": self.config.page_size,
                "chunk_size": self.config.chunk_size,
                "home": self.config.home,
                "capacity": sum(t.capacity for t in self.config.tiers()),
                "worker_id": self.worker_id,
                "admin": conn.admin,
            },
            fds=[self.table.reader_fd()] if table else [],
            owned=True,
        )

    def _table_op(self, conn: ConnectionState, header: dict) -> Reply:
        """``table``: the current table of published files (after one was superseded)."""
        if conn.remote:
            raise PermissionError(errno.EPERM, "table: served on the worker's Unix socket only")
        return Reply({}, fds=[self.table.reader_fd()], owned=True)

    def _regions_op(self, conn: ConnectionState, header: dict) -> Reply:
        """``regions``: the descriptors of region files (and their tiers' generation
        tables) a client needs to read pages the table of published files points to;
        those it holds already, and those that do not exist, left out."""
        if conn.remote:
            raise PermissionError(errno.EPERM, "regions: served on the worker's Unix socket only")
        fds: list[int] = []
        tokens: list[list] = []
        for tier, region in header["regions"]:
            if tier not in self._store.tier_paths:
                continue
            try:
                if not self._pass_fds(conn, _Where(tier, region), fds, tokens):
                    break
            except (OSError, ValueError):
                continue  # never used, or out of the tier: the client asks through a read
        return Reply({"fds": tokens}, fds=fds)

    def _record_of(self, path: str, mount: Mount, rel: str, info: ObjectInfo):
        """The record kept with the first page of the file at ``path``: its metadata and
        until when it holds (None when its mount caches no metadata)."""
        ttl = split_mount_options(mount.options)[0]["metadata_ttl"]
        if ttl <= 0 or info.is_dir:
            return None
        until = self.files.metadata.expiry(path, info)
        left = ttl if until is None else until - time.monotonic()
        if left <= 0:
            return None
        name = path.encode("utf-8", "surrogateescape")
        return (name, encode_record(mount.child_uri(rel), info, left))

    def _restore_files(self, batch: int = 1024) -> None:
        """Take back the records of the files cached before a restart: their metadata
        (for the time it still holds) and, for one-page files, their place in the table of
        published files. Records of files gone from the cache, moved to another URI or
        past their time are dropped."""
        try:
            pending: list[tuple[str, ObjectInfo, bytes, float]] = []
            stale: list[bytes] = []
            restored = 0
            refreshes = self.files.metadata.refreshes
            admitted: dict[str, bool] = {}
            for name, value in self._store.records():
                if self._closed or self.files.metadata.refreshes != refreshes:
                    return  # a refresh since: what the records say may be void
                record = decode_record(value)
                path = name.decode("utf-8", "surrogateescape")
                left = record.expires - time.time() if record is not None else 0.0
                try:
                    mount, rel = self.files.mount_of(path)
                except (OSError, ValueError):
                    mount = rel = None
                if left <= 0 or mount is None or mount.child_uri(rel) != record.uri:
                    stale.append(name)
                    continue
                if mount.path not in admitted:
                    try:  # a mount the operator no longer allows serves nothing
                        self.files.store_of(mount)
                        admitted[mount.path] = True
                    except (OSError, ValueError):
                        admitted[mount.path] = False
                if not admitted[mount.path]:
                    continue
                first = page_key(file_id(record.uri, record.info.version), 0)
                pending.append((path, record.info, first, left))
                if len(pending) >= batch:
                    restored += self._restore_batch(pending, stale, refreshes)
                    time.sleep(0)  # requests first, once the worker serves
            restored += self._restore_batch(pending, stale, refreshes)
            if stale:
                self._store.delete_records(stale)
            if restored or stale:
                log.info("%d cached files known again, %d records dropped", restored, len(stale))
        except Exception:  # the worker serves on: files are stat'd as without records
            if not self._closed:
                log.exception("file records not restored")

    def _restore_batch(self, pending: list, stale: list[bytes], refreshes: int) -> int:
        if not pending or self.files.metadata.refreshes != refreshes:
            pending.clear()
            return 0
        ps = self.page_size
        located = self._store.locate([first for _, _, first, _ in pending])
        entries, known = [], 0
        for (path, info, _, left), loc in zip(pending, located, strict=True):
            if loc is None:
                stale.append(path.encode("utf-8", "surrogateescape"))
                continue
            if self.files.metadata.get_stat(path) is None:
                self.files.metadata.put_stat(path, info, left)
            known += 1
            if 0 < info.size <= ps and loc.length == info.size:
                entries.append(
                    (path, info.size, TIER_NAMES.index(loc.tier), loc.region, loc.offset,
                     loc.crc32c, loc.generation, time.monotonic_ns() + int(left * 1e9))
                )  # fmt: skip
        pending.clear()
        if entries:
            self.table.publish_many(entries)
        return known

    def _publish(self, located: list[tuple[File, PageLocation]]) -> None:
        """Publish cached one-page files in the table, while their metadata holds."""
        expiry = self.files.metadata.expiry
        now, now_ns = time.monotonic(), time.monotonic_ns()
        entries = []
        for f, loc in located:
            until = expiry(f.path, f.info)
            if until is not None and loc.length == f.info.size:
                entries.append(
                    (f.path, f.info.size, TIER_NAMES.index(loc.tier), loc.region, loc.offset,
                     loc.crc32c, loc.generation, now_ns + int((until - now) * 1e9))
                )  # fmt: skip
        if entries:
            self.table.publish_many(entries)

    def mount(self, path: str, uri: str, options: dict) -> dict:
        """Mount ``uri`` at ``path`` (see :meth:`FileResolver.mount`)."""
        return self.files.mount(path, uri, options).to_json()

    def unmount(self, path: str) -> dict:
        """Remove the mount at exactly ``path``."""
        return self.files.unmount(path).to_json()

    def mounts(self) -> list[dict]:
        """Every mount, sorted by path."""
        return [m.to_json() for m in self.files.mounts()]

    def file(self, path: str) -> File:
        """The file (or directory) at ``path``."""
        return self.files.file(path)

    def stat(self, paths: list[str], fetch: list | None = None) -> list[dict]:
        """File records, or ``{"error": ...}`` per path that fails.

        ``fetch``: per path None, or the ``[start, end)`` its caller reads next: a path
        whose metadata nothing tells yet is then learnt from a read of those bytes (one
        request to the store, the pages cached) instead of a stat."""
        if fetch is not None:
            if not isinstance(fetch, list) or len(fetch) != len(paths):
                raise ValueError("stat: fetch must be a list with one entry per path")
            for want in fetch:
                if want is not None and not (
                    isinstance(want, list)
                    and len(want) == 2
                    and all(type(v) is int for v in want)
                    and 0 <= want[0] <= want[1] < 1 << 63
                ):
                    raise ValueError(f"stat: a fetch range must be [start, end], got {want!r}")
        return self.files.stat(paths, fetch)

    def ls(self, path: str) -> list[dict]:
        """Entries directly under ``path``: files, directories, and mount points."""
        return self.files.ls(path)

    def refresh(self, path: str) -> int:
        """Forget the metadata of ``path`` and everything under it."""
        return self.files.refresh(path)

    # ----------------------------------------------------------------- reads

    def read(self, conn: ConnectionState, header: dict) -> Reply:
        """Serve a ``read``: locations of cached pages (descriptors passed along) or bytes."""
        for tier, region in header["forget"]:
            conn.sent.discard((tier, region))
        files = []
        for path, version in header["files"]:
            f = self.files.file(path)
            if f.info.is_dir:
                raise IsADirectoryError(errno.EISDIR, "is a directory", f.path)
            if f.info.version != version:
                raise ObjectChangedError(
                    f"{f.path} changed since its metadata was read (version {version!r}, now "
                    f"{f.info.version!r}); read it again",
                    f.path,
                )
            files.append(f)
        pages: dict[bytes, Page] = {}
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
            pages.setdefault(key, Page(key, f, index, plen))
            items.append((key, start, length))
            span = spans.setdefault(fi, [index, index])
            span[0], span[1] = min(span[0], index), max(span[1], index)
        got = self.fetcher.obtain(list(pages.values()), need_bytes=header["mode"] == DATA)
        if conn.remote and header["mode"] != DATA:
            reply = self._segments(items, pages, got)
        else:
            reply = self._located(conn, items, pages, got)
        for fi, (first, last) in spans.items():
            self.fetcher.read_ahead(conn.last_page, files[fi], first, last)
        return reply

    def _located(self, conn: ConnectionState, items: list, pages: dict, got: dict) -> Reply:
        """A local ``read`` answered with the locations of cached pages (the descriptors
        the client lacks passed along) and the bytes of the others."""
        locs: list[Any] = []
        fds: list[int] = []
        tokens: list[list] = []
        inline = []
        ps = self.page_size
        located = [
            (p.file, got[k]) for k, p in pages.items()
            if p.index == 0 and p.file.info.size <= ps and isinstance(got[k], PageLocation)
        ]  # fmt: skip
        if located:
            self._publish(located)
        for i, (key, _, _) in enumerate(items):
            value = got[key]
            if isinstance(value, PageLocation) and self._pass_fds(conn, value, fds, tokens):
                locs.append(
                    [value.tier, value.region, value.offset, value.length, value.crc32c,
                     value.generation]
                )  # fmt: skip
            else:
                locs.append(None)
                inline.append(i)
        need = {items[i][0]: pages[items[i][0]] for i in inline}
        stored = [k for k in need if isinstance(got[k], PageLocation)]
        if stored:
            got.update(self.fetcher.obtain([need[k] for k in stored], need_bytes=True))
        payload = []
        for i in inline:
            key, start, length = items[i]
            payload.append(memoryview(got[key])[start : start + length])
        sent_bytes = sum(v.nbytes for v in payload)
        self._counters.add(
            pages_located=len(items) - len(inline), pages_sent=len(inline), bytes_sent=sent_bytes
        )
        return Reply({"locs": locs, "fds": tokens}, payload, fds)

    def _segments(self, items: list, pages: dict, got: dict) -> Reply:
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
                fd = self._client_fd(value.tier, value.region)
                payload.append(FileSegment(fd, value.offset, value.length))
                crcs.append(value.crc32c)
                continue
            if isinstance(value, PageLocation):
                partial[key] = pages[key]
            payload.append((key, start, length))
            crcs.append(None)
        if partial:
            got.update(self.fetcher.obtain(list(partial.values()), need_bytes=True))
        for i, part in enumerate(payload):
            if type(part) is tuple:  # (key, start, length); a FileSegment is sent as is
                key, start, length = part
                payload[i] = memoryview(got[key])[start : start + length]
        self._counters.add(pages_sent=len(items), bytes_sent=sum(i[2] for i in items))
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
            fds.append(self._client_fd(tier, region))
            tokens.append([tier, region])
            conn.sent.add((tier, region))
        return True

    def _client_fd(self, tier: str, region: int) -> int:
        """A read-only descriptor of a region file (or a tier's generation table) to pass to
        clients; opened once and kept, since region files live as long as the store."""
        with self._lock:
            fd = self._client_fds.get((tier, region))
            if fd is None:
                fd = self._store.open_for_reader(tier, None if region == GENERATIONS else region)
                self._client_fds[tier, region] = fd
            return fd

    def touch(self, regions: list[list]) -> dict:
        """Count pages a client read through locations it remembered (``[tier, region,
        pages]`` each): hits, read short-circuit, and their regions recently used."""
        pages = sum(n for _, _, n in regions)
        self._counters.add(page_hits=pages, pages_located=pages)
        self._store.touch([(tier, region) for tier, region, _ in regions])
        return {}

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
        fetcher = self.fetcher
        files = self.files.files_under(paths)
        mine = placement_filter(placement, self.worker_id, self.page_size, self.config.chunk_size)
        sizes, counts = {}, {}
        placed = {}
        for f in files:
            pages = placed[f.path] = mine(f, fetcher.pages_of(f))
            sizes[f.path], counts[f.path] = sum(p.length for p in pages), len(pages)
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
        last = 0.0

        def tick() -> None:
            nonlocal last
            now = time.monotonic()
            if now - last > 0.1 or state["files_done"] == state["files_total"]:
                last = now
                progress(dict(state))

        ones = [f for f in files if _one_page(f, placed[f.path])]
        if ones:
            self._load_ones(ones, [placed.pop(f.path)[0] for f in ones], state, tick)
            files = [f for f in files if f.path in placed]
        pending: deque[tuple[File, dict, int]] = deque()
        inflight = [0]  # futures in ``pending``

        def finish_first() -> None:
            f, futures, fetched_bytes = pending.popleft()
            inflight[0] -= len(futures)
            fetcher.results(futures)
            state["files_done"] += 1
            state["bytes_done"] += sizes[f.path]
            state["pages_done"] += counts[f.path]
            state["pages_skipped"] += counts[f.path] - len(futures)
            state["bytes_skipped"] += sizes[f.path] - fetched_bytes
            tick()

        for f in files:
            pages = [p for p in placed.pop(f.path) if not fetcher.contains(p)]
            self._counters.add(page_misses=len(pages))
            futures = fetcher.start(pages)
            pending.append((f, futures, sum(p.length for p in pages)))
            inflight[0] += len(futures)
            while inflight[0] > window:
                finish_first()
            while pending and all(fut.done() for fut in pending[0][1].values()):
                finish_first()
        while pending:
            finish_first()
        if not state["files_total"]:
            progress(dict(state))
        return state

    def _load_ones(
        self, files: list[File], pages: list[Page], state: dict, tick: Callable[[], None]
    ) -> None:
        """The whole one-page files of a load (``pages``: the page of each): a task of
        ``_LOAD_CHUNK`` files at a time on the fetch threads, with no future or
        single-flight entry per file; each task's pages are committed, then published,
        together. The first file that fails fails the load, as in the general path."""
        fetcher = self.fetcher
        inflight: deque[tuple[list[File], list[Page], Future | None]] = deque()

        def finish() -> None:
            chunk, todo, fut = inflight.popleft()
            if fut is not None:
                for value in fut.result():
                    if isinstance(value, BaseException):
                        raise value
            locs = self._store.locate([page_key(f.fid, 0) for f in chunk])
            self._publish([(f, loc) for f, loc in zip(chunk, locs, strict=True) if loc])
            size = sum(f.info.size for f in chunk)
            state["files_done"] += len(chunk)
            state["bytes_done"] += size
            state["pages_done"] += len(chunk)
            state["pages_skipped"] += len(chunk) - len(todo)
            state["bytes_skipped"] += size - sum(p.length for p in todo)
            tick()

        for at in range(0, len(files), _LOAD_CHUNK):
            chunk = files[at : at + _LOAD_CHUNK]
            todo = [p for p in pages[at : at + _LOAD_CHUNK] if not fetcher.contains(p)]
            self._counters.add(page_misses=len(todo))
            inflight.append(
                (chunk, todo, fetcher.submit(fetcher.fetch_files, todo) if todo else None)
            )
            while len(inflight) > 2 * fetcher.threads:
                finish()
            while inflight and (inflight[0][2] is None or inflight[0][2].done()):
                finish()
        while inflight:
            finish()

    def _load_op(self, conn: ConnectionState, h: dict) -> Reply:
        """``load``: progress frames while it runs, then the final counters."""
        final = self.load(
            h["paths"], h["metadata_only"], conn.progress, placement=h.get("placement")
        )
        return Reply({"done": True, "progress": final})

    def _stop_op(self, conn: ConnectionState, h: dict) -> Reply:
        log.info("stop requested by client pid %s (%s)", conn.pid, conn.peer)
        return Reply({})

    def put_job(self, key: str, record: dict) -> dict:
        """Store a job record (``jobs/<kind>/<id>``) in the MetaStore."""
        self._meta_store.put(check_job_key(key), record)
        return {}

    def jobs(self, prefix: str, limit: int) -> list[dict]:
        """The job records under ``prefix``, newest first, at most ``limit``."""
        return newest_first(self._meta_store.scan(prefix), limit)

    def free(self, path: str) -> dict:
        """Drop the cached pages of every file under ``path`` (their current versions)."""
        pages = freed = 0
        for f in self.files.files_under([path]):
            for p in self.fetcher.pages_of(f):
                if self._store.delete(p.key):
                    pages += 1
                    freed += p.length
        self.table.supersede()  # freed files must not be read through the table any more
        return {"pages": pages, "bytes": freed}

    # ----------------------------------------------------------------- report

    def report(self) -> dict:
        """Capacity, use and health per tier, page counts, hit ratio, requests to
        under-stores."""
        counters = self._counters.snapshot()
        asked = counters["page_hits"] + counters["page_misses"]
        tiers = {name: dataclasses.asdict(u) for name, u in self._store.usage().items()}
        for name, health in self.fetcher.health.report().items():
            tiers[name].update(health)
        requests = self.files.requests()
        return {
            "worker": {
                "pid": os.getpid(),
                "host_id": self.config.host_id,
                "home": self.config.home,
                "uptime": time.time() - self.started,
                "engine": engine.backend(),
                "page_size": self.config.page_size,
                "metrics": self.metrics_address,
            },
            "tiers": tiers,
            "pages": sum(t["pages"] for t in tiers.values()),
            "hit_ratio": counters["page_hits"] / asked if asked else 0.0,
            "mounts": self.files.mount_count(),
            "ufs_requests": _summed(requests),
            "ufs_requests_by_mount": requests,
            "metadata_entries": len(self.files.metadata),
            "published": {**self.table.stats(), "restoring": self._restoring.is_alive()},
            **({"cluster": self.cluster_health()} if self.cluster_health is not None else {}),
            **counters,
        }

    def used_bytes(self) -> int:
        """Bytes of cached pages, over every tier."""
        return sum(u.live_bytes for u in self._store.usage().values())

    # ----------------------------------------------------------------- lifetime

    def close(self) -> None:
        """Stop fetching, then close the page store, the mount table and the stores."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.fetcher.close()
        self._restoring.join()
        self.table.close()
        self.files.close()
        with self._lock:
            fds = list(self._client_fds.values())
            self._client_fds.clear()
        for fd in fds:
            os.close(fd)
        self._store.close()
        self._meta_store.close()


def _summed(per_mount: dict[str, dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for counts in per_mount.values():
        for kind, n in counts.items():
            out[kind] = out.get(kind, 0) + n
    return out


def placement_filter(placement: dict | None, me: str | None, page_size: int, chunk_size: int):
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

    def mine(f: File, pages: list[Page]) -> list[Page]:
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
