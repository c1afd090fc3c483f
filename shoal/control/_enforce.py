"""The policies one worker enforces on the pages it caches, beyond where they go (tier,
pin, priority: see ``_fetch``): TTLs, quotas and promotion.

**TTL.** A file under a ``ttl`` has a clock on this worker: the wall-clock time its pages
were first cached here (or first seen under the policy, for pages cached before it was
set), kept in memory and as a record of the page index (so a restart keeps it). Before
the pages of such a file are looked up for a read, a file past its TTL has them deleted
here and fetched again; a sweep, at an interval no longer than the shortest TTL and at
most 60 s, deletes those of the files expired since. What the worker tells clients (a
stat's record, the table of published files) holds no longer than the pages may be
served, so no client serves an expired page through a location it remembers.

**Quota.** A prefix with a ``quota`` has a book on this worker: the files cached under it
here, least recently used first, and their bytes. Before pages are stored under it, its
own least recently used files are evicted (never another prefix's, never pinned ones)
until the new pages fit; pages that cannot fit are not cached (they are served from
memory). Bytes are counted when stored, before the put, so concurrent puts cannot pass
the quota together; pages the store evicts for capacity meanwhile are counted until the
book is counted again (when the store has evicted pages since the last count and the
prefix needs room). The quota is per worker; ``shoal du`` sums the cluster's.

**Promotion.** A page read through the worker from a slower tier than its file's tier
(the policy's, or the fastest) for the second time is moved up to that tier, in the
background. Pages read with no request (locations a client remembers, the table of
published files) are reported by region: a region of a slower tier read twice per page
it holds has its demoted pages moved back up a tier.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..engine import PageLocation, PageStore
from ._files import File, FileResolver
from ._pages import page_count, page_key, page_length

__all__ = ["Enforcer"]

log = logging.getLogger("shoal.worker")

#: Seconds between sweeps of expired files at most.
SWEEP_MAX = 60.0
#: Reads of a page from a slower tier than its file's that move it up.
PROMOTE_AFTER = 2
_SEEN_MAX = 1 << 16  # pages whose reads from a slow tier are counted, at most
_CLOCK_PREFIX = b"\x00ttl/"  # records of the TTL clock (file records are paths: "/...")
_CLOCK = struct.Struct("<dI")  # cached at (wall seconds), pages; then the path


class _Book:
    """The files one quota prefix holds on this worker, least recently used first."""

    __slots__ = ("files", "pending", "used")

    def __init__(self) -> None:
        self.files: OrderedDict[bytes, list[int]] = OrderedDict()  # fid -> [bytes, pages]
        self.pending: dict[bytes, int] = {}  # fid -> puts admitted, not settled: not evicted
        self.used = 0


class Enforcer:
    """TTLs, quotas and promotion of one worker's pages (see the module's notes).

    Parameters
    ----------
    store
        The worker's page store.
    files
        The worker's file resolver (its policies; paths of files).
    tiers
        The worker's tier names, fastest first.
    page_size
        The node's page size.
    in_cluster
        ``() -> bool``: pages are placed on several workers (another worker may hold a
        file's pages since earlier: a stat's record then lets no client remember
        locations of a file under a TTL).
    recorded
        ``(prefix) -> (path, file id, pages)`` of the files recorded under a prefix
        (:meth:`CacheUsage.recorded_files`): how the quota books are counted again.
    on_freed
        Called after :meth:`free` (the table of published files is superseded: freed files
        are not read through it).

    Notes
    -----
    Thread-safe. Call :meth:`close` before the store closes.
    """

    def __init__(
        self,
        store: PageStore,
        files: FileResolver,
        tiers: list[str],
        page_size: int,
        *,
        in_cluster: Callable[[], bool],
        recorded: Callable[[str], Iterable[tuple[str, bytes, int]]],
        on_freed: Callable[[], None],
    ):
        self._store = store
        self._page_size = page_size
        self._recorded = recorded
        self._on_freed = on_freed
        self._files = files
        self._tiers = list(tiers)
        self._in_cluster = in_cluster
        self._lock = threading.Lock()
        self._clock: dict[bytes, tuple[float, int, str]] = {}  # fid -> (since, pages, path)
        self._books: dict[str, _Book] = {}
        self._evicted = 0  # pages the store had evicted when the books were last counted
        self._seen: OrderedDict[bytes, int] = OrderedDict()  # slow page key -> reads
        self._moving: set[bytes] = set()
        self._demoted: OrderedDict[bytes, None] = OrderedDict()  # keys demoted, newest last
        self._region_reads: OrderedDict[tuple[str, int], int] = OrderedDict()
        self._mover = ThreadPoolExecutor(1, "shoal-promote")  # one move at a time
        self.counts = dict.fromkeys(
            ("ttl_pages", "ttl_bytes", "quota_pages", "quota_bytes", "quota_refused",
             "promoted_pages", "promoted_bytes"), 0,
        )  # fmt: skip
        self._watched: tuple[object, bool] = (None, False)  # (policy table, any ttl/quota)
        self._stop = threading.Event()
        self._wake = threading.Event()  # a change of policies: count the books again
        self._load_clock()
        files.fresh_for = self.fresh_for
        previous = files.on_policies

        def changed(prefixes: list[str]) -> None:
            if previous is not None:
                previous(prefixes)
            self._wake.set()

        files.on_policies = changed
        self._sweeper = threading.Thread(target=self._sweep_loop, name="shoal-sweep", daemon=True)
        self._sweeper.start()

    # ----------------------------------------------------------------- TTL

    def _load_clock(self) -> None:
        for name, value in self._store.records(_CLOCK_PREFIX):
            fid = name[len(_CLOCK_PREFIX) :]
            if len(fid) != 16 or len(value) < _CLOCK.size:
                continue
            since, pages = _CLOCK.unpack_from(value)
            path = value[_CLOCK.size :].decode("utf-8", "surrogateescape")
            self._clock[fid] = (since, pages, path)

    def _stamp(self, fid: bytes, pages: int, path: str, since: float) -> None:
        """Start a file's clock (lock held by the caller or not needed)."""
        self._clock[fid] = (since, pages, path)
        value = _CLOCK.pack(since, pages) + path.encode("utf-8", "surrogateescape")
        self._store.put_records([(_CLOCK_PREFIX + fid, value)])

    def fresh_for(self, f: File) -> float:
        """Seconds the cached pages of ``f`` (under a TTL) may still be served by a
        client that remembers their locations."""
        ttl = f.own["ttl"]
        if not ttl:
            return float("inf")
        if self._in_cluster():
            return 0.0  # another worker may hold pages of it since earlier than this one
        with self._lock:
            clock = self._clock.get(f.fid)
        if clock is None:
            return ttl  # pages cached from now on start their clock after this
        return max(0.0, clock[0] + ttl - time.time())

    def watching(self) -> bool:
        """True when some policy sets a ``ttl`` or a ``quota`` (reads then go through
        :meth:`check`); kept per table of policies, so a read pays one comparison."""
        table = self._files.policies
        if self._watched[0] is not table:
            self._watched = (table, any(p.ttl or p.quota for p in table.rules.values()))
        return self._watched[1]

    def check(self, files: Iterable[File]) -> None:
        """Before the pages of ``files`` are looked up for a read: delete those of the
        files past their TTL (they are fetched again), start the clock of those under a
        TTL that have none, and mark files under a quota as used now."""
        now = time.time()
        expired = []
        with self._lock:
            for f in files:
                own = f.own
                if own["ttl"]:
                    clock = self._clock.get(f.fid)
                    if clock is None:
                        pages = page_count(f.info.size, self._page_size)
                        self._stamp(f.fid, pages, f.path, now)
                    elif now >= clock[0] + own["ttl"]:
                        expired.append((f.fid, clock[1]))
                        self._forget_clock(f.fid)
                if own["quota"]:
                    book = self._books.get(own["quota_at"])
                    if book is not None and f.fid in book.files:
                        book.files.move_to_end(f.fid)
            for fid, pages in expired:
                self._drop(fid, pages, "ttl")

    def start_clocks(self) -> int:
        """Start the clock of the files recorded under a TTL that are cached and have
        none (cached before the policy was set: their TTL counts from now); how many."""
        now, started = time.time(), 0
        for prefix, policy in self._files.policies.rules.items():
            if not policy.ttl:
                continue
            for path, fid, pages in self._recorded(prefix):
                if fid in self._clock or not self._store.contains(page_key(fid, 0)):
                    continue
                with self._lock:
                    if fid not in self._clock:
                        self._stamp(fid, pages, path, now)
                        started += 1
        return started

    def _forget_clock(self, fid: bytes) -> None:
        if self._clock.pop(fid, None) is not None:
            self._store.delete_records([_CLOCK_PREFIX + fid])

    def _drop(self, fid: bytes, pages: int, reason: str) -> int:
        """Delete the cached pages of a file; the bytes freed (lock held)."""
        keys = [page_key(fid, i) for i in range(pages)]
        freed = n = 0
        for key, loc in zip(keys, self._store.locate(keys, touch=False), strict=True):
            if loc is not None and self._store.delete(key):
                freed += loc.length
                n += 1
        for book in self._books.values():
            entry = book.files.pop(fid, None)
            if entry is not None:
                book.used -= entry[0]
        self.counts[f"{reason}_pages"] += n
        self.counts[f"{reason}_bytes"] += freed
        return freed

    def forget(self, fid: bytes) -> None:
        """A file's pages were freed: its clock and quota counts start afresh."""
        with self._lock:
            self._forget_clock(fid)
            for book in self._books.values():
                entry = book.files.pop(fid, None)
                if entry is not None:
                    book.used -= entry[0]

    def free(self, path: str) -> dict:
        """Drop the cached pages of every file under ``path`` (their current versions): the
        ``free`` op; ``{"pages": ..., "bytes": ...}`` dropped."""
        pages = freed = 0
        for f in self._files.files_under([path]):
            self.forget(f.fid)
            for i in range(page_count(f.info.size, self._page_size)):
                if self._store.delete(page_key(f.fid, i)):
                    pages += 1
                    freed += page_length(i, f.info.size, self._page_size)
        self._on_freed()
        return {"pages": pages, "bytes": freed}

    def sweep(self) -> int:
        """Delete the pages of every file past its TTL now; the files expired."""
        now = time.time()
        with self._lock:
            candidates = list(self._clock.items())
        due, void = [], []
        for fid, (since, pages, path) in candidates:
            try:
                ttl = self._files.options_at(path)["ttl"]
            except (OSError, ValueError):
                ttl = 0.0  # under no mount now: nothing reads it through this path
            if not ttl:
                void.append(fid)  # no TTL there any more: the pages stay, uncounted
            elif now >= since + ttl:
                due.append((fid, pages))
        with self._lock:
            for fid in void:
                self._forget_clock(fid)
            for fid, pages in due:
                if fid in self._clock:
                    self._forget_clock(fid)
                    self._drop(fid, pages, "ttl")
        return len(due)

    def _interval(self) -> float:
        ttls = [p.ttl for p in self._files.policies.rules.values() if p.ttl]
        return min([SWEEP_MAX, *ttls])

    def _sweep_loop(self) -> None:
        self._wake.set()  # the books are counted from the records at start
        while not self._stop.is_set():
            self._wake.wait(self._interval())
            if self._stop.is_set():
                return
            woken = self._wake.is_set()
            self._wake.clear()
            try:
                if woken:
                    self.start_clocks()
                    self.count_books()
                self.sweep()
            except (OSError, ValueError) as exc:  # the store closing
                if not self._stop.is_set():
                    log.info("expired pages not swept: %s", exc)
            except Exception:
                log.exception("expired pages not swept")

    # ----------------------------------------------------------------- quota

    def admit(self, fid: bytes, size: int, own: Mapping[str, Any], nbytes: int) -> bool:
        """Before ``nbytes`` of pages of the file ``fid`` (of ``size`` bytes) are stored
        under ``own``'s quota: make room by evicting the prefix's least recently used
        files (not those being stored) and count the bytes; False when they cannot fit
        (store nothing). True: call :meth:`settle` once the put is done, or failed."""
        limit = own["quota"]
        if not limit:
            return True
        with self._lock:
            book = self._books.setdefault(own["quota_at"], _Book())
            if book.used + nbytes > limit:
                self._recount(book)
            while book.used + nbytes > limit:
                victim = None
                if nbytes <= limit:
                    victim = next(
                        (
                            v
                            for v in book.files
                            if v != fid and v not in book.pending and not self._pinned(v)
                        ),
                        None,
                    )
                if victim is None:
                    self.counts["quota_refused"] += 1
                    return False
                self._drop(victim, book.files[victim][1], "quota")
            entry = book.files.setdefault(fid, [0, 0])
            entry[0] += nbytes
            entry[1] = max(entry[1], page_count(size, self._page_size))
            book.files.move_to_end(fid)
            book.used += nbytes
            book.pending[fid] = book.pending.get(fid, 0) + 1
            return True

    def settle(
        self, fid: bytes, path: str, size: int, own: Mapping[str, Any], admitted: int, stored: int
    ) -> None:
        """After a put of pages of the file ``fid`` (at ``path``, of ``size`` bytes) under
        ``own`` that :meth:`admit` let through with ``admitted`` bytes, of which
        ``stored`` were stored: give back the rest to its quota, start its TTL clock."""
        with self._lock:
            if own["ttl"] and stored and fid not in self._clock:
                self._stamp(fid, page_count(size, self._page_size), path, time.time())
            book = self._books.get(own["quota_at"]) if own["quota"] else None
            if book is None:
                return
            left = book.pending.pop(fid, 1) - 1
            if left > 0:
                book.pending[fid] = left
            entry = book.files.get(fid)
            if entry is not None and admitted > stored:
                entry[0] -= admitted - stored
                book.used -= admitted - stored
                if entry[0] <= 0:
                    del book.files[fid]

    def _pinned(self, fid: bytes) -> bool:
        """True for a file whose first page is pinned here (a quota does not evict it)."""
        return self._store.pinned(page_key(fid, 0))

    def _recount(self, book: _Book) -> None:
        """Count a book's bytes again from the store, when it has evicted pages for
        capacity since the last count (lock held)."""
        evicted = self._store.stats()["evicted_pages"]
        if evicted == self._evicted:
            return
        self._evicted = evicted
        for fid, entry in list(book.files.items()):
            if fid in book.pending:
                continue  # being stored: counted as admitted
            keys = [page_key(fid, i) for i in range(entry[1])]
            held = sum(loc.length for loc in self._store.locate(keys, touch=False) if loc)
            book.used += held - entry[0]
            if held:
                entry[0] = held
            else:
                del book.files[fid]

    def count_books(self) -> None:
        """Count the books again from the file records under each quota prefix (after a
        start or a change of policies), then evict what is over each quota. Puts under a
        quota wait meanwhile."""
        quotas = {
            prefix: policy.quota
            for prefix, policy in self._files.policies.rules.items()
            if policy.quota
        }
        with self._lock:
            books = {}
            for prefix in quotas:
                book = books[prefix] = _Book()
                for path, fid, pages in self._recorded(prefix):
                    try:
                        if self._files.options_at(path)["quota_at"] != prefix:
                            continue  # a longer prefix's quota counts it
                    except (OSError, ValueError):
                        continue
                    keys = [page_key(fid, i) for i in range(pages)]
                    held = sum(loc.length for loc in self._store.locate(keys, touch=False) if loc)
                    if held:
                        book.files[fid] = [held, pages]
                        book.used += held
                old = self._books.get(prefix)
                if old is not None:
                    book.pending = old.pending
                for fid, entry in old.files.items() if old is not None else ():
                    # Files without a record (metadata_ttl 0), and the recency order known.
                    if fid not in book.files:
                        book.files[fid] = entry
                        book.used += entry[0]
                    else:
                        book.files.move_to_end(fid)
            self._books = books
            for prefix, book in books.items():
                while book.used > quotas[prefix]:
                    victim = next(
                        (v for v in book.files if v not in book.pending and not self._pinned(v)),
                        None,
                    )
                    if victim is None:
                        break
                    self._drop(victim, book.files[victim][1], "quota")

    def usage(self) -> dict[str, dict[str, int]]:
        """Per quota prefix: its quota and the bytes counted against it here."""
        with self._lock:
            books = {p: b.used for p, b in self._books.items()}
        rules = self._files.policies.rules
        return {
            p: {"quota": rules[p].quota, "bytes": used}
            for p, used in books.items()
            if p in rules and rules[p].quota
        }

    # ----------------------------------------------------------------- promotion

    def read_from(self, located: Iterable[tuple[File, bytes, PageLocation]]) -> None:
        """Pages read through the worker where they are (file, page key, location): those
        read from a slower tier than their file's tier :data:`PROMOTE_AFTER` times are
        moved up, in the background."""
        fastest = self._tiers[0]
        up: dict[str, list[bytes]] = {}
        with self._lock:
            for f, key, loc in located:
                if loc.tier == fastest:
                    continue
                want = f.own["tier"] if f.own["tier"] in self._tiers else fastest
                if self._tiers.index(want) >= self._tiers.index(loc.tier) or key in self._moving:
                    continue
                n = self._seen.pop(key, 0) + 1
                if n < PROMOTE_AFTER:
                    self._seen[key] = n
                    if len(self._seen) > _SEEN_MAX:
                        self._seen.popitem(last=False)
                    continue
                up.setdefault(want, []).append(key)
                self._moving.add(key)
        for tier, keys in up.items():
            try:
                self._mover.submit(self._promote, tier, keys)
            except RuntimeError:  # closed: the worker is stopping
                with self._lock:
                    self._moving.difference_update(keys)

    def touched(self, regions: list[list]) -> None:
        """Pages read through locations clients remembered, or the table of published
        files (``[tier, region, pages]`` each): their regions are marked used now, and a
        region of a slower tier read :data:`PROMOTE_AFTER` times per page it holds has
        its pages that came down by demotion moved back up a tier, in the background
        (pages put there on purpose, by a ``tier`` policy, stay)."""
        self._store.touch([(tier, region) for tier, region, _ in regions])
        slow = [r for r in regions if r[0] in self._tiers[1:]]
        if not slow:
            return
        with self._lock:
            for key in self._store.take_demoted():
                self._demoted[key] = None
            while len(self._demoted) > _SEEN_MAX:
                self._demoted.popitem(last=False)
            due = []
            for tier, region, pages in slow:
                reads = self._region_reads.pop((tier, region), 0) + pages
                keys = self._store.region_keys(tier, region)
                if reads < PROMOTE_AFTER * max(1, len(keys)):
                    self._region_reads[tier, region] = reads
                    if len(self._region_reads) > _SEEN_MAX:
                        self._region_reads.popitem(last=False)
                    continue
                up = [k for k in keys if k in self._demoted and k not in self._moving]
                if up:
                    due.append((self._tiers[self._tiers.index(tier) - 1], up))
                    self._moving.update(up)
                    for k in up:
                        del self._demoted[k]
        for tier, keys in due:
            try:
                self._mover.submit(self._promote, tier, keys)
            except RuntimeError:  # closed: the worker is stopping
                with self._lock:
                    self._moving.difference_update(keys)

    def _promote(self, tier: str, keys: list[bytes]) -> None:
        try:
            before = self._store.locate(keys, touch=False)
            going = [k for k, loc in zip(keys, before, strict=True) if loc and loc.tier != tier]
            moved = self._store.move(going, tier)
            after = self._store.locate(going, touch=False)
            with self._lock:
                self.counts["promoted_pages"] += moved
                self.counts["promoted_bytes"] += sum(
                    loc.length for loc in after if loc is not None and loc.tier == tier
                )
        except (OSError, ValueError) as exc:
            log.info("pages not promoted to %s: %s", tier, exc)
        finally:
            with self._lock:
                self._moving.difference_update(keys)

    def report(self) -> dict[str, Any]:
        """The worker report's sections of what policies did: evictions by reason
        (``capacity``: the store's, ``ttl``, ``quota``), pages moved (demoted, promoted,
        or to regions of another priority), puts a quota refused, and each quota's bytes
        here."""
        store, counts = self._store.stats(), self.stats()

        def pair(pages: int, nbytes: int) -> dict[str, int]:
            return {"pages": pages, "bytes": nbytes}

        return {
            "evictions": {
                "capacity": pair(store["evicted_pages"], store["evicted_bytes"]),
                "ttl": pair(counts["ttl_pages"], counts["ttl_bytes"]),
                "quota": pair(counts["quota_pages"], counts["quota_bytes"]),
            },
            "tier_moves": {
                "demoted": pair(store["demoted_pages"], store["demoted_bytes"]),
                "promoted": pair(counts["promoted_pages"], counts["promoted_bytes"]),
                # The store's other moves: to regions of the priority a policy set later.
                "reprioritized": pair(
                    store["moved_pages"] - counts["promoted_pages"],
                    store["moved_bytes"] - counts["promoted_bytes"],
                ),
            },
            "quota_refused": counts["quota_refused"],
            "quotas": self.usage(),
        }

    # ----------------------------------------------------------------- lifetime

    def stats(self) -> dict[str, int]:
        """Pages and bytes evicted for TTLs and quotas, puts refused by a quota, pages
        promoted, since start."""
        with self._lock:
            return dict(self.counts)

    def close(self) -> None:
        """Stop sweeping and promoting (a move in progress ends first)."""
        self._stop.set()
        self._wake.set()
        self._sweeper.join()
        self._mover.shutdown(wait=True, cancel_futures=True)
