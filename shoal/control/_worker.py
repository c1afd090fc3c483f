"""The worker: one per node. It owns the page store, the mount table and the under-stores;
its methods serve the ops of the wire protocol (the server's op -> handler table comes from
:meth:`Worker.handlers`). Files are resolved by ``_files``, pages fetched by ``_fetch``;
``_daemon`` runs the worker as a process and ``_server`` puts it on its sockets.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from .. import engine
from .._config import Config
from ..engine import PageLocation, PageStore
from ._admission import MountPolicy
from ._enforce import Enforcer
from ._fetch import Fetcher, Page
from ._files import File, FileResolver
from ._jobs import mark_abandoned
from ._load import Loader, job_handlers
from ._metastore import LocalMetaStore, MetaStore
from ._metrics import Counters, process_facts, summed_by_kind
from ._namespace import MountTable
from ._policies import WorkerPolicies
from ._publisher import Publisher
from ._server import ConnectionState, FileSegment, Handler, Reply
from ._usage import CacheUsage
from ._writeback import WriteBack
from .proto import DATA, GENERATIONS, MAX_FDS, PROTOCOL_VERSION, check_version
from .ufs import ObjectChangedError

__all__ = ["Worker"]


class _Where(NamedTuple):
    tier: str
    region: int


log = logging.getLogger("shoal.worker")


class Worker:
    """The node's cache service, without its socket (see ``_server.Server``).

    Opens the page store (``$SHOAL_HOME/index`` and the tiers of ``config``), the mount table
    and the policies (``$SHOAL_HOME/meta``); all survive restarts. Each public method serves
    one op of the wire protocol and raises the error the client should see; ``policies``
    serves the ops of policies.

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
        Where the mount table and the policies live (the cluster's ``EtcdMetaStore``); the
        worker closes it. Default: a RocksDB store under ``$SHOAL_HOME/meta``.
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
                demote=True,
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
            metadata_bytes=config.metadata_cache,
        )
        self.fetcher = Fetcher(
            self._store, [t.name for t in config.tiers()], self._counters,
            page_size=config.page_size, chunk_size=config.chunk_size,
            on_changed=self.files.metadata.refresh, fetch_threads=fetch_threads,
            read_ahead_threads=read_ahead_threads, whole_file_bytes=whole_file_bytes,
        )  # fmt: skip
        self.files.fetch_first = self.fetcher.fetch_first
        self.policies = WorkerPolicies(self._meta_store, self.files, shared=shared)
        # The table of published files (cached small files that the node's clients read
        # with no request) and the file records; the files cached before a restart are
        # known again before the first client comes (most of them).
        self.publisher = Publisher(self._store, self.files, config.page_size)
        self.fetcher.publisher = self.publisher
        self.usage = CacheUsage(self._store, self.files, self.fetcher, config.page_size)  # du, pins
        self.policies.pinned_bytes = self.usage.pinned_bytes
        self.enforcer = self.fetcher.enforcer = Enforcer(  # TTLs, quotas, promotion
            self._store, self.files, [t.name for t in config.tiers()], config.page_size,
            in_cluster=lambda: self.fetcher.in_cluster, recorded=self.usage.recorded_files,
            on_freed=self.publisher.table.supersede,
        )  # fmt: skip
        self.loader = Loader(
            self.files, self.fetcher, self._store, self.publisher, self._counters,
            page_size=config.page_size, chunk_size=config.chunk_size,
        )  # fmt: skip
        self.writeback = WriteBack(  # writes: staging files, journal, uploads
            self._store, self.files, cache=self.fetcher.cache, record_of=self.publisher.record_of,
            directory=os.path.join(config.home, "dirty"), budget=config.dirty_bytes,
            wait=config.dirty_wait, page_size=config.page_size, in_cluster=lambda: self.in_cluster,
        )  # fmt: skip

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
            "free": lambda _, h: Reply(self.enforcer.free(h["path"])),
            "report": lambda _, h: Reply({"report": self.report()}),
            "touch": lambda _, h: Reply(self.touch(h["regions"])),
            **job_handlers(self._meta_store),
            "load": self._load_op,
            "stop": self._stop_op,
            **self.policies.handlers(),
            **self.usage.handlers(),
            **self.writeback.handlers(),
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
            fds=[self.publisher.table.reader_fd()] if table else [],
            owned=True,
        )

    def _table_op(self, conn: ConnectionState, header: dict) -> Reply:
        """``table``: the current table of published files (after one was superseded)."""
        if conn.remote:
            raise PermissionError(errno.EPERM, "table: served on the worker's Unix socket only")
        return Reply({}, fds=[self.publisher.table.reader_fd()], owned=True)

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
            self.publisher.publish(located)
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
        inlined = set(inline)
        self._counters.add_mounts(
            (pages[k].file.mount.path, "bytes_socket" if i in inlined else "bytes_short_circuit", n)
            for i, (k, _, n) in enumerate(items)
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
        self._counters.add_mounts(
            (pages[key].file.mount.path, "bytes_socket", length) for key, _, length in items
        )
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
        self.enforcer.touched(regions)  # regions used now; demoted pages read often go up
        return {}

    # ----------------------------------------------------------------- jobs

    def _load_op(self, conn: ConnectionState, h: dict) -> Reply:
        """``load``: progress frames while it runs, then the final counters."""
        self.loader.worker_id = self.worker_id
        final = self.loader.load(
            h["paths"], h["metadata_only"], conn.progress, placement=h.get("placement")
        )
        return Reply({"done": True, "progress": final})

    def _stop_op(self, conn: ConnectionState, h: dict) -> Reply:
        log.info("stop requested by client pid %s (%s)", conn.pid, conn.peer)
        return Reply({})

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
                **process_facts(),
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
            "ufs_requests": summed_by_kind(requests),
            "ufs_requests_by_mount": requests,
            "ufs_latency": self.files.latencies(),
            "ufs_errors": self.files.ufs_errors(),
            "by_mount": self._counters.by_mount(),
            "metadata_entries": len(self.files.metadata),
            "metadata_bytes": self.files.metadata.bytes,
            "published": self.publisher.stats(),
            **self.enforcer.report(),
            "writeback": self.writeback.report(),
            **({"cluster": self.cluster_health()} if self.cluster_health is not None else {}),
            **counters,
        }

    # ----------------------------------------------------------------- lifetime

    def close(self) -> None:
        """Stop fetching, then close the page store, the mount table and the stores."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.writeback.close()
        self.policies.close()
        self.enforcer.close()
        self.fetcher.close()
        self.publisher.close()
        self.files.close()
        with self._lock:
            fds = list(self._client_fds.values())
            self._client_fds.clear()
        for fd in fds:
            os.close(fd)
        self._store.close()
        self._meta_store.close()
