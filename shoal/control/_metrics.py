"""The worker's counters: requests served, pages hit and missed, bytes sent, requests sent
to under-stores."""

from __future__ import annotations

import threading

__all__ = ["Counters"]


class Counters:
    """Named integer counters, added to from many threads, read as one snapshot."""

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
        "store_full",
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.values = dict.fromkeys(self.FIELDS, 0)

    def add(self, **deltas: int) -> None:
        """Add to the named counters."""
        with self._lock:
            for name, delta in deltas.items():
                self.values[name] += delta

    def snapshot(self) -> dict[str, int]:
        """Every counter, at one moment."""
        with self._lock:
            return dict(self.values)
