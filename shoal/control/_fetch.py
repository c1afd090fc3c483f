"""Getting pages into the worker's page store: single-flight fetches from the under-stores
(a small file in one request), read-back, sequential read-ahead, and the health of each
cache tier, so that a failing disk never fails a read whose bytes exist elsewhere."""

from __future__ import annotations

import contextlib
import enum
import errno
import logging
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from .._errors import TierFullError
from ..engine import PageLocation, PageStore
from ._files import File
from ._metrics import Counters
from ._namespace import Mount
from ._pages import file_id, page_count, page_key, page_length
from .ufs import ObjectChangedError, ObjectInfo, UnderStore

if TYPE_CHECKING:
    from ._enforce import Enforcer
    from ._publisher import Publisher

__all__ = ["Fetcher", "FilesRead", "Page", "TierHealth", "TierState"]

log = logging.getLogger("shoal.worker")

_PROBE_KEY = b"\0shoal-tier-probe"
_MAX_FRESH = 1 << 16  # pages fetched ahead of the read that asked for them, remembered
#: The share of each tier's capacity that pinned pages may take; beyond it, pages of
#: pinned files are stored as any other (and ``pins_refused`` counts them).
PINNED_SHARE = 0.5


@dataclass(slots=True)
class Page:
    """One page of a file: its store key, index and length. Never changed once made (not
    frozen only because a frozen dataclass takes four times as long to make, and a load
    makes one per file)."""

    key: bytes
    file: File
    index: int
    length: int


#: Whole one-page files fetched by one task at most, for a read.
_SMALL_BATCH = 64
#: Options of files fetched together that must be the same: where and how they are stored.
_GROUPED = ("tier", "pin", "priority", "ttl", "quota", "quota_at")


class FilesRead(NamedTuple):
    """Whole one-page files being fetched (see :meth:`Fetcher.begin_files`)."""

    todo: list[Page]  # those not cached
    pages: list[Page]  # those of them claimed: in flight nowhere else
    shared: Future  # theirs in the single-flight table
    waits: list[Future]  # fetches that had some of the pages in flight already
    reads: list[tuple[list[int], list[Page], list[memoryview], Future]]  # per store group


def _views_and_items(group: list[Page]) -> tuple[list[memoryview], list[tuple]]:
    """A buffer for the pages of ``group``, one after the other: a view of it per page,
    and the items of :meth:`UnderStore.read_many_into` that read the whole one-page files
    into them."""
    buf = memoryview(bytearray(sum(p.length for p in group)))
    views, items, at = [], [], 0
    for p in group:
        f, view = p.file, buf[at : at + p.length]
        views.append(view)
        items.append((f.rel, view, f.info.version))
        at += p.length
    return views, items


class TierState(str, enum.Enum):
    """Health of a cache tier."""

    NORMAL = "normal"  # no I/O error lately
    UNSTABLE = "unstable"  # errors lately, still used
    DOWN = "down"  # too many errors: takes no pages, its pages read elsewhere, probed


class TierHealth:
    """I/O errors counted per tier, each tier moving normal -> unstable -> down.

    A tier with an I/O error in the last ``window`` seconds is unstable; with
    ``down_after`` of them it is down: it takes no new pages and its pages count as
    missing (read from the under-store and cached elsewhere). A down tier is probed (a
    page written, read back and deleted) at most every ``probe_interval`` seconds; a probe
    that works makes it normal again. An unstable tier with no error for ``window``
    seconds is normal again.

    Parameters
    ----------
    tiers
        Tier names.
    down_after, window, probe_interval
        As above.
    clock
        Monotonic seconds (for tests).

    Notes
    -----
    Thread-safe; :meth:`usable` is cheap (a dict lookup while every tier is normal).
    """

    def __init__(
        self,
        tiers: Iterable[str],
        *,
        down_after: int = 3,
        window: float = 60.0,
        probe_interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        if isinstance(down_after, bool) or not isinstance(down_after, int) or down_after < 1:
            raise ValueError(f"down_after must be an int >= 1, got {down_after!r}")
        for name, value in (("window", window), ("probe_interval", probe_interval)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"{name} must be a number of seconds > 0, got {value!r}")
        self.down_after = down_after
        self.window = float(window)
        self.probe_interval = float(probe_interval)
        self._clock = clock
        self._lock = threading.Lock()
        self._errors: dict[str, deque[float]] = {t: deque() for t in tiers}
        self._total: dict[str, int] = dict.fromkeys(self._errors, 0)
        self._state: dict[str, TierState] = dict.fromkeys(self._errors, TierState.NORMAL)
        self._next_probe: dict[str, float] = {}
        self._last_error: dict[str, str] = {}

    def state(self, tier: str) -> TierState:
        """The tier's state now."""
        state = self._state[tier]
        if state is TierState.UNSTABLE:
            with self._lock:
                self._expire(tier, self._clock())
                state = self._state[tier]
        return state

    def _expire(self, tier: str, now: float) -> None:
        errors = self._errors[tier]
        while errors and errors[0] <= now - self.window:
            errors.popleft()
        if not errors and self._state[tier] is TierState.UNSTABLE:
            self._state[tier] = TierState.NORMAL

    def usable(self, tier: str) -> bool:
        """False while the tier is down: it takes no pages and its pages are not read."""
        return self._state[tier] is not TierState.DOWN

    def failed(self, tier: str, exc: BaseException) -> None:
        """Count an I/O error of ``tier``."""
        now = self._clock()
        with self._lock:
            self._expire(tier, now)
            self._errors[tier].append(now)
            self._total[tier] += 1
            self._last_error[tier] = f"{type(exc).__name__}: {exc}"
            before = self._state[tier]
            if before is TierState.DOWN:
                return
            if len(self._errors[tier]) >= self.down_after:
                self._state[tier] = TierState.DOWN
                self._next_probe[tier] = now + self.probe_interval
            else:
                self._state[tier] = TierState.UNSTABLE
            after = self._state[tier]
        if after is not before:
            log.warning("cache tier %s is %s: %s", tier, after.value, self._last_error[tier])

    def probe_due(self, tier: str) -> bool:
        """True, for one caller at a time, when a down tier should be probed now."""
        if self._state[tier] is not TierState.DOWN:
            return False
        now = self._clock()
        with self._lock:
            if now < self._next_probe.get(tier, 0.0):
                return False
            self._next_probe[tier] = now + self.probe_interval
            return True

    def probed(self, tier: str, exc: BaseException | None) -> None:
        """The outcome of a probe: None when it worked (the tier is normal again)."""
        if exc is not None:
            with self._lock:
                self._last_error[tier] = f"{type(exc).__name__}: {exc}"
            return
        with self._lock:
            self._errors[tier].clear()
            was = self._state[tier]
            self._state[tier] = TierState.NORMAL
        if was is not TierState.NORMAL:
            log.warning("cache tier %s works again", tier)

    def report(self) -> dict[str, dict[str, Any]]:
        """Per tier: ``state``, ``io_errors`` (since start), ``last_error``."""
        out = {}
        for tier in self._errors:
            state = self.state(tier)
            out[tier] = {
                "state": state.value,
                "io_errors": self._total[tier],
                "last_error": self._last_error.get(tier),
            }
        return out


class Fetcher:
    """Brings pages into the page store and hands out their locations or bytes.

    Parameters
    ----------
    store
        The node's page store.
    tiers
        Tier names, fastest first: a new page goes to the first usable tier with room.
    counters
        Where pages hit, missed and fetched are counted.
    page_size, chunk_size
        The node's page and placement chunk sizes.
    on_changed
        Called with a Shoal path whose object changed under a fetch (its metadata should
        be dropped).
    fetch_threads
        Concurrent reads from under-stores for misses and loads.
    read_ahead_threads
        Concurrent reads for read-ahead, apart so that prefetching never delays a miss.
    whole_file_bytes
        A file of at most this size whose pages are all missing is fetched with one
        request; larger files with one request per page, several at once.
    """

    def __init__(
        self,
        store: PageStore,
        tiers: list[str],
        counters: Counters,
        *,
        page_size: int,
        chunk_size: int,
        on_changed: Callable[[str], None],
        fetch_threads: int = 16,
        read_ahead_threads: int = 4,
        whole_file_bytes: int = 16 << 20,
    ):
        self._store = store
        self._tiers = list(tiers)
        self._counters = counters
        self.page_size = page_size
        self.chunk_size = chunk_size
        self.whole_file_bytes = whole_file_bytes
        self._on_changed = on_changed
        self.health = TierHealth(self._tiers)
        self.in_cluster = False  # pages are placed on several workers
        self._lock = threading.Lock()
        self._pin_lock = threading.Lock()
        self._inflight: dict[bytes, Future] = {}
        self._pool = ThreadPoolExecutor(fetch_threads, "shoal-fetch")
        self.threads = fetch_threads
        self._ahead_pool = ThreadPoolExecutor(read_ahead_threads, "shoal-read-ahead")
        self._buffers = threading.local()
        # Pages a stat fetched for the read that follows it: that read's miss, not a hit.
        self._fresh: OrderedDict[bytes, None] = OrderedDict()
        #: The worker's publisher: the file records kept with files' first pages, and the
        #: table of published files (see ``_publisher``).
        self.publisher: Publisher | None = None
        #: The worker's enforcer of TTLs, quotas and promotion (see ``_enforce``).
        self.enforcer: Enforcer | None = None

    def pages_of(self, f: File) -> list[Page]:
        """Every page of the file ``f``."""
        return [
            Page(page_key(f.fid, i), f, i, page_length(i, f.info.size, self.page_size))
            for i in range(page_count(f.info.size, self.page_size))
        ]

    def _scratch(self, nbytes: int) -> memoryview:
        """A buffer of ``nbytes`` for one fetch: the thread's own, reused, when at most two
        pages (fresh memory costs more to touch than to fill), else a new one."""
        if nbytes > 2 * self.page_size:
            return memoryview(bytearray(nbytes))
        buf = getattr(self._buffers, "buf", None)
        if buf is None:
            buf = self._buffers.buf = bytearray(2 * self.page_size)
        return memoryview(buf)[:nbytes]

    def _fetch_run(self, run: list[tuple[Page, Future]]) -> None:
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
            self._counters.add_mount(f.mount.path, bytes_ufs=n)
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
            record = None
            if run[0][0].index == 0 and self.publisher is not None:
                record = self.publisher.record_of(
                    f.path, f.mount.child_uri(f.rel), f.info, f.own["metadata_ttl"]
                )
            kept = self.cache(
                [(p.key, v) for (p, _), v in zip(run, views, strict=True)],
                f.path,
                record,
                f.own,
                f.info.size,
            )
            for (p, fut), v in zip(run, views, strict=True):
                fut.set_result(None if p.key in kept else bytearray(v))
                pending.discard(p.key)
        except BaseException as exc:
            if isinstance(exc, ObjectChangedError):
                self._on_changed(f.path)
            for p, fut in run:
                if p.key in pending:
                    fut.set_exception(exc)
        finally:
            self._release(run)

    def _fetch_small(self, run: list[tuple[Page, Future]], publish: bool = False) -> None:
        """Fetch whole one-page files with :meth:`fetch_files` (``publish`` as there);
        each file's future resolves as :meth:`_fetch_run` resolves it."""
        try:
            got = self.fetch_files([p for p, _ in run], publish=publish)
            for (_, fut), value in zip(run, got, strict=True):
                if isinstance(value, BaseException):
                    fut.set_exception(value)
                else:
                    fut.set_result(value)
        except BaseException as exc:
            for _, fut in run:
                if not fut.done():
                    fut.set_exception(exc)
        finally:
            self._release(run)

    def _release(self, run: list[tuple[Page, Future]]) -> None:
        """Take a fetch's pages out of the in-flight table (single-flight ends)."""
        with self._lock:
            for p, fut in run:
                if self._inflight.get(p.key) is fut:
                    del self._inflight[p.key]

    def fetch_files(self, pages: list[Page], publish: bool = False) -> list[Any]:
        """Fetch whole one-page files (their one page each), many with one call of their
        store (which reads them one after the other, a request each, or natively all at
        once) and one index commit; per page None once it is stored (or was already),
        its bytes when no tier kept it, or the error it failed with (an object found
        changed is reported to ``on_changed``). Called for pages in the single-flight
        table (see :meth:`start`). ``publish``: publish the files stored (see
        ``_publisher``) as they are stored."""
        out: list[Any] = [None] * len(pages)
        for slots in self._groups(pages, self._store.absent([p.key for p in pages])):
            group = [pages[i] for i in slots]
            views, items = _views_and_items(group)
            got = group[0].file.store.read_many_into(items)
            self._store_group(group, slots, views, got, out, publish)
        return out

    def begin_files(self, pages: list[Page]) -> FilesRead:
        """Start fetching whole one-page files (their one page each) that are not cached
        (see :meth:`missing`) as :meth:`fetch_files` fetches them, single-flight (as
        :meth:`start` does): their reads go to the fetch threads at once, what follows
        them is left to :meth:`end_files`, in the caller's thread. A load reads ahead so,
        its Python work all in one thread: threads that each read and then store their
        own batch contend for the GIL (a load of 200,000 small local files ran at 44,000
        files/s so, at 55,000 this way).

        A future per batch, not per page, stands for the pages in the single-flight
        table: a read that wants one of them meanwhile waits for the whole batch, then
        finds the page stored, or reads it as it reads a page evicted at once (a file that
        failed here fails there with its own error)."""
        todo = self.missing(pages)
        shared: Future = Future()
        claimed: list[Page] = []
        waits: dict[int, Future] = {}
        with self._lock:
            for p in todo:
                fut = self._inflight.get(p.key)
                if fut is None:
                    self._inflight[p.key] = shared
                    claimed.append(p)
                else:
                    waits[id(fut)] = fut
        reads = []
        try:
            for slots in self._groups(claimed, range(len(claimed))):
                group = [claimed[i] for i in slots]
                views, items = _views_and_items(group)
                try:
                    read = self._pool.submit(group[0].file.store.read_many_into, items)
                except RuntimeError:  # the pool is shut down: the worker is stopping
                    read = Future()
                    read.set_exception(OSError(errno.ESHUTDOWN, "the worker is shutting down"))
                reads.append((slots, group, views, read))
        except BaseException:
            self._release_shared(claimed, shared)
            raise
        return FilesRead(todo, claimed, shared, list(waits.values()), reads)

    def end_files(self, batch: FilesRead, publish: bool = False) -> list[Any]:
        """Wait for the reads of ``batch`` (see :meth:`begin_files`) and store what they
        read: per page of ``batch.pages``, as :meth:`fetch_files` tells it. Single-flight
        ends for them; ``batch.waits`` are left to the caller."""
        out: list[Any] = [None] * len(batch.pages)
        try:
            for slots, group, views, read in batch.reads:
                try:
                    got = read.result()
                except CancelledError:  # queued when the worker began to stop
                    got = [OSError(errno.ESHUTDOWN, "the worker is shutting down")] * len(group)
                except Exception as exc:
                    got = [exc] * len(group)
                self._store_group(group, slots, views, got, out, publish)
        finally:
            self._release_shared(batch.pages, batch.shared)
        return out

    @staticmethod
    def _groups(pages: list[Page], slots: Iterable[int]) -> list[list[int]]:
        """The places ``slots`` in ``pages`` by store and options of :data:`_GROUPED`: what
        :meth:`fetch_files` reads with one call of the store."""
        by_store: dict[tuple, list[int]] = {}
        groups: dict[tuple[int, int], tuple] = {}  # (store, options) by identity -> group
        store = own = None
        bucket: list[int] = []
        for i in slots:
            f = pages[i].file
            if f.store is not store or f.own is not own:  # files come listing by listing
                store, own = f.store, f.own
                group = groups.get((id(store), id(own)))
                if group is None:  # files of one listing share their options' mapping
                    group = (id(store), *[own[name] for name in _GROUPED])
                    groups[id(store), id(own)] = group
                bucket = by_store.setdefault(group, [])
            bucket.append(i)
        return list(by_store.values())

    def _store_group(
        self,
        group: list[Page],
        slots: list[int],
        views: list[memoryview],
        got: list[Any],
        out: list[Any],
        publish: bool,
    ) -> None:
        """:meth:`fetch_files` for the pages ``group`` (at ``slots`` of ``out``), files of
        one store whose options of :data:`_GROUPED` are the same, once their store read
        them into ``views``, as ``got`` tells (per file its size or an error)."""
        items, done, files = [], [], []  # stored: (key, view, path), (slot, view), file
        nbytes = 0
        for i, p, v, n in zip(slots, group, views, got, strict=True):
            f = p.file
            if type(n) is int and n == p.length:
                items.append((p.key, v, f.path))
                done.append((i, v))
                files.append(f)
                nbytes += n
                continue
            if type(n) is int:
                n = ObjectChangedError(
                    f"read: {f.path} has {n} bytes, its metadata says {f.info.size}: it "
                    "changed; read it again",
                    f.path,
                )
            if isinstance(n, ObjectChangedError):
                self._on_changed(f.path)
            out[i] = n
        self._counters.add(ufs_reads=len(group), ufs_pages=len(done), ufs_bytes=nbytes)
        if files:  # a group's files come from one store: one mount
            self._counters.add_mount(files[0].mount.path, bytes_ufs=nbytes)
        if not items:
            return
        untils, records = [None] * len(files), None
        if self.publisher is not None:
            untils, records = self.publisher.records_of(files)
        kept = self.cache_many(items, records, group[0].file.own)
        for (i, v), loc in zip(done, kept, strict=True):
            out[i] = None if loc is not None else bytearray(v)
        if publish and self.publisher is not None:
            self.publisher.publish_stored(files, kept, untils)

    def fetch_first(
        self,
        mount: Mount,
        rel: str,
        store: UnderStore,
        path: str,
        start: int,
        end: int,
        own: Mapping[str, Any],
    ) -> ObjectInfo:
        """Read the pages of an object that hold bytes ``[start, end)`` (at most
        ``whole_file_bytes``) with one request that also tells its metadata, cache the
        complete ones as the options in force at ``path`` (``own``) say, and return the
        metadata: a cold read that needs no stat."""
        ps = self.page_size
        lo = start // ps * ps
        hi = min(max(-(-end // ps) * ps, lo + ps), lo + self.whole_file_bytes)
        buf = self._scratch(hi - lo)
        n, info = store.fetch_into(rel, lo, buf)
        self._counters.add(ufs_reads=1, ufs_bytes=n)
        self._counters.add_mount(mount.path, bytes_ufs=n)
        if info.is_dir or n == 0:
            return info
        fid = file_id(mount.child_uri(rel), info.version)
        items = []
        index, count = lo // ps, page_count(info.size, ps)
        while index < count:
            length = page_length(index, info.size, ps)
            at = index * ps - lo
            if at + length > n:
                break
            key = page_key(fid, index)
            if not self._store.contains(key):
                items.append((key, buf[at : at + length]))
            index += 1
        if items:
            record = None
            if lo == 0 and self.publisher is not None:
                ttl = own["metadata_ttl"]
                record = self.publisher.record_of(path, mount.child_uri(rel), info, ttl)
            kept = self.cache(items, path, record, own, info.size)
            self._counters.add(ufs_pages=len(items))
            with self._lock:
                for key in kept:
                    self._fresh[key] = None
                while len(self._fresh) > _MAX_FRESH:
                    self._fresh.popitem(last=False)
        return info

    def _count(self, pages: list[Page], missing: list[Page]) -> None:
        """Count the hits and misses of a read, in all and per mount; pages a stat
        fetched for it are misses."""
        missed = {p.key for p in missing}
        if self._fresh:
            with self._lock:
                for p in pages:
                    if p.key in self._fresh:
                        del self._fresh[p.key]
                        missed.add(p.key)
        self._counters.add(page_hits=len(pages) - len(missed), page_misses=len(missed))
        self._counters.add_mounts(
            (p.file.mount.path, "page_misses" if p.key in missed else "page_hits", 1) for p in pages
        )

    def cache_many(
        self,
        items: list[tuple[bytes, memoryview, str]],
        records: list[tuple | None] | None,
        own: Mapping[str, Any],
    ) -> list[PageLocation | None]:
        """Pages of one-page files (``(key, bytes, path)``) with their file records (one
        per page, None where there is none; or None), all stored as ``own`` (the options
        in force at their paths) says: one commit when the first usable tier (see
        :meth:`tiers_from`) takes them all, else file by file as :meth:`cache` stores
        them; where each page went (None for one not kept: no tier took it, or its
        quota). ``own["pin"]``: as for :meth:`cache`."""
        enforcer = self.enforcer
        if enforcer is None or not (own["quota"] or own["ttl"]):
            return self._cache_many(items, records, own)
        admitted = [enforcer.admit(k[:16], v.nbytes, own, v.nbytes) for k, v, _ in items]
        out: list[PageLocation | None] = [None] * len(items)
        try:
            if all(admitted):
                out = self._cache_many(items, records, own)
            else:
                kept_items = [item for item, ok in zip(items, admitted, strict=True) if ok]
                kept_records = [
                    r for r, ok in zip(records or [None] * len(items), admitted, strict=True) if ok
                ]
                stored = iter(self._cache_many(kept_items, kept_records, own))
                out = [next(stored) if ok else None for ok in admitted]
        finally:
            for (key, view, path), ok, loc in zip(items, admitted, out, strict=True):
                if ok:
                    n = view.nbytes
                    enforcer.settle(key[:16], path, n, own, n, n if loc is not None else 0)
        return out

    def _cache_many(
        self,
        items: list[tuple[bytes, memoryview, str]],
        records: list[tuple | None] | None,
        own: Mapping[str, Any],
    ) -> list[PageLocation | None]:
        """:meth:`cache_many` of pages their quota admitted."""
        if not items:
            return []
        named = [r for r in records or () if r is not None]
        pages = [(k, v) for k, v, _ in items]
        pin = own["pin"]
        for tier_name in self.tiers_from(own["tier"]):
            if not self.health.usable(tier_name):
                continue
            try:
                with self.pinning(pin):
                    pinned = pin and self.may_pin(tier_name, sum(v.nbytes for _, v in pages))
                    return self._store.put_many(
                        pages,
                        tier=tier_name,
                        records=named or None,
                        pin=pinned,
                        priority=own["priority"],
                    )
            except (TierFullError, OSError) as exc:
                if not isinstance(exc, TierFullError):
                    self.health.failed(tier_name, exc)
            break
        kept: set[bytes] = set()
        for (key, view, path), record in zip(items, records or [None] * len(items), strict=True):
            kept |= self._cache([(key, view)], path, record, own)
        located = self._store.locate([k for k, _ in pages])
        return [loc if k in kept else None for (k, _), loc in zip(pages, located, strict=True)]

    def pinning(self, pin: bool) -> contextlib.AbstractContextManager:
        """Held from :meth:`may_pin` to the pin (pinned puts, one at a time, cannot
        together pass the pinned share); for ``pin`` False, nothing."""
        return self._pin_lock if pin else contextlib.nullcontext()

    def may_pin(self, tier: str, nbytes: int) -> bool:
        """True when ``nbytes`` more pinned bytes keep ``tier`` within its pinned share
        (:data:`PINNED_SHARE` of its capacity); counted in ``pins_refused`` otherwise.
        Call it with :meth:`pinning` held."""
        usage = self._store.usage()[tier]
        if usage.pinned_bytes + nbytes <= PINNED_SHARE * usage.capacity:
            return True
        self._counters.add(pins_refused=1)
        return False

    def tiers_from(self, tier: str | None) -> list[str]:
        """The tiers to put new pages in, in order: ``tier`` (a mount's or policy's), the
        slower ones after it, then the faster ones; every tier fastest first when ``tier``
        is None or not a tier of this worker."""
        if tier is None or tier not in self._tiers:
            return self._tiers
        at = self._tiers.index(tier)
        return self._tiers[at:] + self._tiers[:at]

    def cache(
        self,
        items: list[tuple[bytes, memoryview]],
        path: str,
        record: tuple[bytes, bytes] | None,
        own: Mapping[str, Any],
        size: int,
    ) -> set[bytes]:
        """Put pages (``(key, bytes)``) of the file at ``path`` (of ``size`` bytes) as
        ``own``, the options in force there, says; the keys of the pages stored.

        They go to the first usable tier that takes them, ``own["tier"]`` first (see
        :meth:`tiers_from`), with ``own["priority"]``. A tier that fails with an I/O error
        is counted as failing and the next one tried; pages no tier takes, or their quota
        does not admit, are left out (their caller serves them from memory).
        ``record``: the file's record, committed with the first of its pages stored.
        ``own["pin"]``: never evict them, while the tier's pinned share allows
        (:meth:`may_pin`; beyond it they are stored as any other page)."""
        enforcer = self.enforcer
        if enforcer is None or not (own["quota"] or own["ttl"]):
            return self._cache(items, path, record, own)
        fid = items[0][0][:16]
        nbytes = sum(memoryview(v).nbytes for _, v in items)
        if not enforcer.admit(fid, size, own, nbytes):
            return set()
        kept: set[bytes] = set()
        try:
            kept = self._cache(items, path, record, own)
        finally:
            stored = sum(memoryview(v).nbytes for k, v in items if k in kept)
            enforcer.settle(fid, path, size, own, nbytes, stored)
        return kept

    def _cache(
        self,
        items: list[tuple[bytes, memoryview]],
        path: str,
        record: tuple[bytes, bytes] | None,
        own: Mapping[str, Any],
    ) -> set[bytes]:
        """:meth:`cache` of pages their quota admitted."""
        error: BaseException | None = None
        pin = own["pin"]
        for tier in self.tiers_from(own["tier"]):
            if not self.health.usable(tier):
                if not self.health.probe_due(tier):
                    continue
                self._probe(tier)
                if not self.health.usable(tier):
                    continue
            try:
                with self.pinning(pin):
                    nbytes = sum(memoryview(v).nbytes for _, v in items) if pin else 0
                    pinned = pin and self.may_pin(tier, nbytes)
                    self._store.put_many(
                        items,
                        tier=tier,
                        records=[record] if record else None,
                        pin=pinned,
                        priority=own["priority"],
                    )
                return {key for key, _ in items}
            except TierFullError as exc:
                error = exc
            except OSError as exc:
                self.health.failed(tier, exc)
                error = exc
        if len(items) > 1 and isinstance(error, TierFullError):
            # No tier takes them all at once: one page at a time.
            kept: set[bytes] = set()
            for item in items:
                got = self._cache([item], path, None if kept else record, own)
                kept |= got
            return kept
        self._counters.add(store_full=1)
        if error is not None:  # with every tier down, their state changes said it all
            log.warning("page of %s not cached: %s", path, error)
        return set()

    def _probe(self, tier: str) -> None:
        """Write a page into a down tier, read it back and delete it."""
        data = os.urandom(4096)
        back = bytearray(len(data))
        try:
            self._store.put_many([(_PROBE_KEY, data)], tier=tier)
            try:
                got = self._store.get_many_into([(_PROBE_KEY, back)])[0]
            finally:
                self._store.delete(_PROBE_KEY)
            if got != len(data) or back != data:
                raise OSError(errno.EIO, f"tier {tier}: a probe page read back wrong")
        except OSError as exc:
            self.health.probed(tier, exc)
            return
        self.health.probed(tier, None)

    def read_pages(self, pages: list[Page], bufs: list[bytearray]) -> list[int | None]:
        """Read cached pages into ``bufs``: per page its length, or None for a miss (also
        for a page in a down tier, or whose read failed: its tier is counted as failing)."""

        def failed(_index: int, tier: str, exc: OSError) -> None:
            self.health.failed(tier, exc)

        return self._store.get_many_into(
            [(p.key, b) for p, b in zip(pages, bufs, strict=True)],
            on_error=failed,
            skip=self._down_tiers(),
        )

    def _down_tiers(self) -> frozenset[str]:
        return frozenset(t for t in self._tiers if not self.health.usable(t))

    def _read_back(self, pages: list[Page]) -> dict[bytes, bytearray]:
        """The bytes of pages just fetched: from the store, or straight from the under-store
        for any evicted (or unreadable) meanwhile."""
        bufs = [bytearray(p.length) for p in pages]
        found = self.read_pages(pages, bufs)
        out = {}
        for p, b, n in zip(pages, bufs, found, strict=True):
            if n is None:
                f = p.file
                n = f.store.read_into(
                    f.rel, p.index * self.page_size, b, version=f.info.version, size=f.info.size
                )
                self._counters.add(ufs_reads=1, ufs_pages=1, ufs_bytes=n)
                self._counters.add_mount(f.mount.path, bytes_ufs=n)
                if n != p.length:
                    raise ObjectChangedError(
                        f"read: {f.path} is shorter than its metadata says: it changed; "
                        "read it again",
                        f.path,
                    )
            out[p.key] = b
        return out

    def start(
        self, pages: Iterable[Page], *, ahead: bool = False, publish: bool = False
    ) -> dict[bytes, Future]:
        """Futures of the pages' fetches: one fetch per page however many ask
        (single-flight); each resolves to None once the page is stored, or to its bytes
        when no tier kept it.

        The pages of a file of at most ``whole_file_bytes`` that are all fetched at once
        are read with one request; other pages with one each, so that a large file is
        read with many requests at once. ``ahead``: on the read-ahead threads.
        ``publish``: whole one-page files fetched here are published as they are stored
        (see :meth:`fetch_files`)."""
        futures: dict[bytes, Future] = {}
        start: dict[bytes, list[tuple[Page, Future]]] = {}
        with self._lock:
            for p in pages:
                fut = self._inflight.get(p.key)
                if fut is None:
                    fut = self._inflight[p.key] = Future()
                    start.setdefault(p.file.fid, []).append((p, fut))
                futures[p.key] = fut
        runs = []
        smalls = []  # whole one-page files: fetched many at a time
        for group in start.values():
            f = group[0][0].file
            if len(group) == 1 and group[0][0].index == 0 and group[0][0].length == f.info.size:
                smalls.append(group[0])
                continue
            whole = (
                len(group) > 1
                and f.info.size <= self.whole_file_bytes
                and len(group) == page_count(f.info.size, self.page_size)
            )
            if whole:
                group.sort(key=lambda item: item[0].index)
                runs.append(group)
            else:
                runs.extend(self._runs(group))
        if len(smalls) == 1:
            runs.append(smalls)
        tasks = [(self._fetch_run, run, ()) for run in runs]
        if len(smalls) > 1:
            # Every fetch thread gets a share (as many requests in flight as one task per
            # file gave), at most _SMALL_BATCH files each.
            step = max(1, min(_SMALL_BATCH, -(-len(smalls) // self.threads)))
            tasks += [
                (self._fetch_small, smalls[i : i + step], (publish,))
                for i in range(0, len(smalls), step)
            ]
        pool = self._ahead_pool if ahead else self._pool
        for fetch, run, more in tasks:
            try:
                pool.submit(fetch, run, *more)
            except RuntimeError:  # the pool is shut down: the worker is stopping
                with self._lock:
                    for p, _ in run:
                        self._inflight.pop(p.key, None)
                for _, fut in run:
                    fut.set_exception(OSError(errno.ESHUTDOWN, "the worker is shutting down"))
        return futures

    def _release_shared(self, pages: list[Page], shared: Future) -> None:
        with self._lock:
            for p in pages:
                if self._inflight.get(p.key) is shared:
                    del self._inflight[p.key]
        if not shared.done():
            shared.set_result(None)

    def _runs(self, group: list[tuple[Page, Future]]) -> list[list[tuple[Page, Future]]]:
        """The pages of one file to fetch, as runs of consecutive pages each read with one
        request: one page a run while that keeps every fetch thread busy, else runs of up
        to ``whole_file_bytes`` (a large file read cold: fewer, larger requests, still
        as many at once as there are threads)."""
        longest = max(1, self.whole_file_bytes // self.page_size)
        size = min(longest, max(1, len(group) // self.threads))
        if size == 1:
            return [[item] for item in group]
        group.sort(key=lambda item: item[0].index)
        runs: list[list[tuple[Page, Future]]] = []
        for item in group:
            last = runs[-1] if runs else None
            if last and len(last) < size and last[-1][0].index + 1 == item[0].index:
                last.append(item)
            else:
                runs.append([item])
        return runs

    @staticmethod
    def results(futures: Mapping[bytes, Future]) -> dict[bytes, Any]:
        """Every future's result; the first error raised once all are done."""
        out, error = {}, None
        for key, fut in futures.items():
            try:
                out[key] = fut.result()
            except Exception as exc:
                error = error or exc
        if error is not None:
            raise error
        return out

    def contains(self, page: Page) -> bool:
        """True if the page is cached in a usable tier."""
        if not self._store.contains(page.key):
            return False
        if all(self.health.usable(t) for t in self._tiers):
            return True
        loc = self._store.locate([page.key])[0]
        return loc is not None and self.health.usable(loc.tier)

    def missing(self, pages: list[Page]) -> list[Page]:
        """The pages not cached in a usable tier (see :meth:`contains`)."""
        if not all(self.health.usable(t) for t in self._tiers):
            return [p for p in pages if not self.contains(p)]
        return [pages[i] for i in self._store.absent([p.key for p in pages])]

    def obtain(self, pages: list[Page], need_bytes: bool) -> dict[bytes, Any]:
        """Every page's location in the store, or its bytes (``need_bytes``, or when the
        store could not keep it); misses are fetched from the under-store first. Pages in
        a down tier, or whose read fails, count as misses."""
        out: dict[bytes, Any] = {}
        missing = []
        enforcer = self.enforcer
        if enforcer is not None and enforcer.watching():
            policed = {
                p.file.fid: p.file for p in pages if p.file.own["ttl"] or p.file.own["quota"]
            }
            if policed:
                enforcer.check(policed.values())
        if need_bytes:
            bufs = [bytearray(p.length) for p in pages]
            for p, b, n in zip(pages, bufs, self.read_pages(pages, bufs), strict=True):
                if n is None:
                    missing.append(p)
                else:
                    out[p.key] = b
        else:
            down = self._down_tiers()
            fastest, slow = self._tiers[0], []
            for p, loc in zip(pages, self._store.locate([p.key for p in pages]), strict=True):
                if loc is None or (down and loc.tier in down):
                    missing.append(p)
                else:
                    out[p.key] = loc
                    if loc.tier != fastest:
                        slow.append((p.file, p.key, loc))
            if slow and enforcer is not None:
                enforcer.read_from(slow)
        self._count(pages, missing)
        if not missing:
            return out
        futures = self.start(missing)
        back = []  # pages fetched into the store whose bytes are wanted
        if need_bytes:
            for key, value in self.results(futures).items():
                if value is None:
                    back.append(key)
                else:
                    out[key] = value
        else:
            # Located as each fetch completes (one future may stand for many pages: see
            # begin_files).
            keys: dict[Future, list[bytes]] = {}
            for key, fut in futures.items():
                keys.setdefault(fut, []).append(key)
            error = None
            for fut in as_completed(keys):
                try:
                    value = fut.result()
                except Exception as exc:
                    error = error or exc
                    continue
                for key in keys[fut]:
                    loc = self._store.locate([key])[0] if value is None else None
                    if loc is not None and self.health.usable(loc.tier):
                        out[key] = loc
                    elif value is not None:
                        out[key] = value  # the store could not keep it
                    else:
                        back.append(key)  # evicted already, or in a tier gone down
            if error is not None:
                raise error
        if back:
            by_key = {p.key: p for p in missing}
            out.update(self._read_back([by_key[k] for k in back]))
        return out

    def read_ahead(self, last_page: OrderedDict, f: File, first: int, last: int) -> None:
        """After a read of pages ``first`` to ``last`` of ``f`` by a reader whose last pages
        are in ``last_page`` (file id -> page index): fetch the next pages when it reads
        sequentially."""
        ahead = f.own["read_ahead"]
        if not ahead or (last + 1) * self.page_size >= f.info.size:
            return  # nothing to read ahead (a small file, or its end)
        previous = last_page.pop(f.fid, None)
        last_page[f.fid] = last
        if len(last_page) > 1024:
            last_page.popitem(last=False)
        if first != 0 and previous not in (first - 1, first):
            return  # not a sequential reader
        count = page_count(f.info.size, self.page_size)
        if self.in_cluster:  # the next chunk may be placed on another worker
            per_chunk = self.chunk_size // self.page_size
            count = min(count, (last // per_chunk + 1) * per_chunk)
        wanted = [
            Page(page_key(f.fid, i), f, i, page_length(i, f.info.size, self.page_size))
            for i in range(last + 1, min(count, last + 1 + ahead))
        ]
        with self._lock:
            wanted = [p for p in wanted if p.key not in self._inflight]
        wanted = [p for p in wanted if not self.contains(p)]
        if wanted:
            self._counters.add(pages_prefetched=len(wanted))
            self.start(wanted, ahead=True)

    def close(self) -> None:
        """Stop fetching: queued fetches are cancelled, their futures failed."""
        self._ahead_pool.shutdown(wait=True, cancel_futures=True)
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            # Fetches cancelled before they ran leave their futures unresolved.
            for fut in self._inflight.values():
                if not fut.done():
                    fut.set_exception(OSError(errno.ESHUTDOWN, "the worker is shutting down"))
            self._inflight.clear()
