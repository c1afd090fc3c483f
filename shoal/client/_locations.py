"""The client's memory of where the local worker keeps pages, so that a warm read needs no
round trip to the worker.

A remembered location is only a hint: every read through it checks the page's crc32c and
its region's generation, and a location that fails either is forgotten and asked of the
worker again. So the memory may be stale at any time; it only has to be bounded.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable

__all__ = ["DEFAULT_MAX_LOCATIONS", "LocationCache"]

#: Page locations a client remembers at most (about 400 bytes each: some 25 MiB).
DEFAULT_MAX_LOCATIONS = 1 << 16

#: A remembered location: ``(tier, region, offset, length, crc32c, generation, path)``,
#: ``path`` being the Shoal path of the file the page belongs to.
Location = tuple[str, int, int, int, int, int, str]


class LocationCache:
    """Page key ``(file id, page index)`` -> location of that page in the worker's store,
    least recently used forgotten first past ``max_entries``.

    Parameters
    ----------
    max_entries
        Locations kept at most; 0 keeps none (every read asks the worker).

    Notes
    -----
    Thread-safe; each method takes the lock once, so a batch costs one acquisition.
    """

    def __init__(self, max_entries: int = DEFAULT_MAX_LOCATIONS):
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 0:
            raise ValueError(f"max_entries must be an int >= 0, got {max_entries!r}")
        self.max_entries = max_entries
        #: The worker the locations belong to, ``(host id, home)``; None before the first.
        self.owner: tuple[str, str] | None = None
        #: Monotonic time of the oldest read not yet reported to the worker, or 0.
        self.touched_since = 0.0
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[bytes, int], Location] = OrderedDict()
        self._touched: dict[tuple[str, int], int] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get_many(self, keys: Iterable[tuple[bytes, int]]) -> list[Location | None]:
        """The location of each key (None when unknown), each found one marked as used."""
        out = []
        with self._lock:
            entries = self._entries
            get, used = entries.get, entries.move_to_end
            for key in keys:
                loc = get(key)
                if loc is not None:
                    used(key)
                out.append(loc)
        return out

    def put_many(
        self, owner: tuple[str, str], items: Iterable[tuple[tuple[bytes, int], Location]]
    ) -> None:
        """Remember locations handed out by the worker ``owner``, forgetting the least
        recently used past the bound (and everything, when the owner changes)."""
        if not self.max_entries:
            return
        self.claim(owner)
        with self._lock:
            entries = self._entries
            for key, loc in items:
                entries[key] = loc
                entries.move_to_end(key)
            while len(entries) > self.max_entries:
                entries.popitem(last=False)

    def claim(self, owner: tuple[str, str]) -> None:
        """Make ``owner`` the worker the memory is about (everything forgotten when it
        was another one)."""
        with self._lock:
            if owner != self.owner:
                self._entries.clear()
                self._touched.clear()
                self.touched_since = 0.0
                self.owner = owner

    def drop_many(self, keys: Iterable[tuple[bytes, int]]) -> None:
        """Forget these keys (their locations failed a check, or were not readable)."""
        with self._lock:
            for key in keys:
                self._entries.pop(key, None)

    def drop_path(self, path: str) -> int:
        """Forget the pages of the file at ``path`` and of every file under it; how many."""
        under = path.rstrip("/") + "/"
        with self._lock:
            gone = [
                k for k, loc in self._entries.items() if loc[6] == path or loc[6].startswith(under)
            ]
            for k in gone:
                del self._entries[k]
        return len(gone)

    def touch(self, counts: dict[tuple[str, int], int], now: float) -> None:
        """Count pages read through remembered locations, per ``(tier, region)``: the
        worker is told later (its hit counters and its eviction order need them)."""
        with self._lock:
            touched = self._touched
            for key, n in counts.items():
                touched[key] = touched.get(key, 0) + n
            if not self.touched_since:
                self.touched_since = now

    def take_touched(self) -> list[list]:
        """The counts not yet reported, as ``[tier, region, pages]``, and forget them."""
        with self._lock:
            touched, self._touched = self._touched, {}
            self.touched_since = 0.0
        return [[tier, region, n] for (tier, region), n in touched.items()]

    def clear(self) -> None:
        """Forget every location and count."""
        with self._lock:
            self._entries.clear()
            self._touched.clear()
            self.touched_since = 0.0
