"""The worker's metadata cache: stat results, directory listings (one level, whole) and
recursive listings per Shoal path, each kept for the TTL of its mount.

A cached stat carries the object's version, and page keys are derived from it, so until an
entry expires (or is refreshed) readers keep getting the version they have been getting,
never a mix; once it is dropped, the next stat sees the new version and new page keys.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from ..engine._batch import expiries, put_stats
from .ufs import ObjectInfo

__all__ = ["MetadataCache"]

# What one cached entry costs, roughly, in CPython: its dict slot and tuple, the key, and
# per object described its ObjectInfo and strings (besides their characters).
_ENTRY_BYTES = 200
_INFO_BYTES = 250


def _cost(path: str, value) -> int:
    """The estimated memory of an entry of ``path`` holding ``value``."""
    if isinstance(value, ObjectInfo):
        return _ENTRY_BYTES + _INFO_BYTES + len(path) + len(value.path) + len(value.version)
    infos = value.values() if isinstance(value, dict) else value
    return (
        _ENTRY_BYTES
        + len(path)
        + sum(_INFO_BYTES + 2 * len(i.path) + len(i.version) for i in infos)
    )


class MetadataCache:
    """Stat results (:class:`ObjectInfo`), directory listings and recursive listings per
    normalised Shoal path.

    Parameters
    ----------
    max_entries
        Entries kept at most (stat and list together); past it, expired entries go first,
        then the oldest.
    max_bytes
        Memory the entries may take, as estimated (:func:`_cost`: the objects' sizes in
        CPython, roughly); past it, the same.
    clock
        Monotonic seconds (for tests).

    Notes
    -----
    Thread-safe. Loading a missing entry happens outside the lock; two threads missing the
    same path at once may both load it, and the last one wins (both results are current).
    """

    def __init__(
        self,
        *,
        max_entries: int = 1_000_000,
        max_bytes: int = 128 << 20,
        clock: Callable[[], float] = time.monotonic,
    ):
        for name, value in (("max_entries", max_entries), ("max_bytes", max_bytes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        self._max = max_entries
        self._max_bytes = max_bytes
        self.bytes = 0  # estimated memory of the entries
        self._clock = clock
        self._lock = threading.Lock()
        self._stats: dict[str, tuple[float, ObjectInfo]] = {}
        self._lists: dict[str, tuple[float, list[ObjectInfo]]] = {}
        self._dirs: dict[str, tuple[float, dict[str, ObjectInfo]]] = {}
        self._tables = (self._stats, self._lists, self._dirs)
        # No entry expires before this (monotonic seconds): a shrink looks for expired
        # entries only from then on, not through every entry each time.
        self._first_expiry = math.inf
        #: Called after every :meth:`refresh` (what was said of those paths is void):
        #: with the path when only the object at that path changed, else with None.
        self.on_refresh: Callable[[str | None], None] | None = None
        #: Refreshes (and clears) so far.
        self.refreshes = 0

    def __len__(self) -> int:
        with self._lock:
            return sum(len(t) for t in self._tables)

    def _get(self, table: dict, path: str):
        with self._lock:
            entry = table.get(path)
            if entry is None:
                return None
            if entry[0] <= self._clock():
                del table[path]
                self.bytes -= entry[2]
                return None
            return entry[1]

    def _put(self, table: dict, path: str, value, ttl: float) -> None:
        if ttl <= 0:
            return
        cost = _cost(path, value)
        with self._lock:
            old = table.pop(path, None)  # re-inserted last: insertion order is age order
            if old is not None:
                self.bytes -= old[2]
            until = self._clock() + ttl
            table[path] = (until, value, cost)
            self._first_expiry = min(self._first_expiry, until)
            self.bytes += cost
            stats, lists, dirs = self._tables
            if self.bytes > self._max_bytes or len(stats) + len(lists) + len(dirs) > self._max:
                self._shrink((table, path))

    def _shrink(self, keep: tuple[dict, str]) -> None:
        """Drop expired entries, then the oldest, down to 90% of the bounds; never
        ``keep``, the entry just put (``(table, path)``)."""
        now = self._clock()
        if now >= self._first_expiry:
            first = math.inf
            for table in self._tables:
                expired = []
                for path, (expiry, _, _) in table.items():
                    if expiry <= now:
                        expired.append(path)
                    elif expiry < first:
                        first = expiry
                for path in expired:
                    self.bytes -= table.pop(path)[2]
            self._first_expiry = first
        # Down to 90% of the bounds, so that the next puts do not each pay a scan. Listings
        # first (one request lists a thousand objects again, a stat asks for one), so that
        # what a listing told of each file, copied to its stat, outlives the listing.
        excess = sum(len(t) for t in self._tables) - self._max * 9 // 10
        for table in (self._lists, self._dirs, self._stats):
            while table and (excess > 0 or self.bytes > self._max_bytes * 9 // 10):
                oldest = next(iter(table))
                if table is keep[0] and oldest == keep[1]:
                    break  # the entry just put, newest of its table: the others go first
                self.bytes -= table.pop(oldest)[2]
                excess -= 1

    def get_stat(self, path: str) -> ObjectInfo | None:
        """The cached stat of ``path``, or None when missing or expired."""
        return self._get(self._stats, path)

    def put_stat(self, path: str, info: ObjectInfo, ttl: float) -> None:
        """Cache the stat of ``path`` for ``ttl`` seconds (not at all if ``ttl <= 0``)."""
        self._put(self._stats, path, info, ttl)

    def put_stats(self, items: list[tuple[str, ObjectInfo]], ttl: float) -> None:
        """:meth:`put_stat` of each ``(path, info)``, with one look at the lock and clock."""
        if ttl <= 0 or not items:
            return
        with self._lock:
            until = self._clock() + ttl
            self._first_expiry = min(self._first_expiry, until)
            # Natively, each re-inserted last (insertion order is age order) and costed as
            # _cost costs an ObjectInfo.
            self.bytes += put_stats(self._stats, items, until, _ENTRY_BYTES + _INFO_BYTES)
            if self.bytes > self._max_bytes or sum(len(t) for t in self._tables) > self._max:
                self._shrink((self._stats, items[-1][0]))

    def expiry(self, path: str, info: ObjectInfo) -> float | None:
        """Until when (monotonic seconds) the cached stat of ``path`` holds, if it is
        ``info`` still; None otherwise."""
        return self.expiries([(path, info)])[0]

    def expiries(self, items: list[tuple[str, ObjectInfo]]) -> list[float | None]:
        """:meth:`expiry` of each ``(path, info)``, with one look at the lock and clock
        (natively)."""
        with self._lock:
            return expiries(self._stats, items, self._clock())

    def stat(self, path: str, ttl: float, load: Callable[[], ObjectInfo]) -> ObjectInfo:
        """The cached stat of ``path``, else ``load()``'s result, cached for ``ttl``."""
        info = self.get_stat(path)
        if info is None:
            info = load()
            self.put_stat(path, info, ttl)
        return info

    def get_list(self, path: str) -> list[ObjectInfo] | None:
        """The cached listing under ``path``, or None when missing or expired."""
        return self._get(self._lists, path)

    def put_list(self, path: str, infos: list[ObjectInfo], ttl: float) -> None:
        """Cache the listing under ``path`` for ``ttl`` seconds."""
        self._put(self._lists, path, list(infos), ttl)

    def get_dir(self, path: str) -> dict[str, ObjectInfo] | None:
        """The cached listing of the directory ``path`` (name -> entry), or None."""
        return self._get(self._dirs, path)

    def put_dir(self, path: str, entries: dict[str, ObjectInfo], ttl: float) -> None:
        """Cache the whole listing of the directory ``path`` for ``ttl`` seconds."""
        self._put(self._dirs, path, entries, ttl)

    def refresh(
        self, path: str, notify: bool = True, above: bool = True, only: bool = False
    ) -> int:
        """Forget ``path`` and everything under it (every entry for ``/``), and the
        listings of the directories above it, which hold its old stat too. ``notify``
        false: :attr:`on_refresh` is not told (the caller knows nothing else said of
        those paths, e.g. a new file written through the worker). ``above`` false: the
        listings above are kept (what they say of ``path`` is overridden meanwhile).
        ``only``: the caller knows that only the object at ``path`` changed (a write,
        delete or rename through the worker), which :attr:`on_refresh` is told.

        Returns
        -------
        int
            Entries dropped.
        """
        under = path.rstrip("/") + "/"
        parents = set()
        probe = path if above else "/"
        while probe not in ("/", ""):
            probe = probe.rsplit("/", 1)[0] or "/"
            parents.add(probe)
        dropped = 0
        with self._lock:
            for table in self._tables:
                doomed = [p for p in table if p == path or p.startswith(under)]
                if table is not self._stats:
                    doomed += [p for p in parents if p in table]
                for p in doomed:
                    self.bytes -= table.pop(p)[2]
                dropped += len(doomed)
        self.refreshes += 1
        if notify and self.on_refresh is not None:
            self.on_refresh(path if only else None)
        return dropped

    def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            for table in self._tables:
                table.clear()
            self.bytes = 0
            self._first_expiry = math.inf
        self.refreshes += 1
        if self.on_refresh is not None:
            self.on_refresh(None)
