"""The latency of requests to an under-store: durations counted in fixed buckets, as a
Prometheus histogram counts them (the worker's metrics merge and serve them)."""

from __future__ import annotations

import itertools
from bisect import bisect_left
from collections.abc import Sequence
from typing import Any

__all__ = ["LATENCY_BUCKETS", "Histogram"]

#: Upper bounds, in seconds, of the buckets that time requests to under-stores: from a
#: tenth of a millisecond (a local disk) to ten seconds (a large object over a slow link).
#: Slower requests fall in the last bucket, ``+Inf``.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


class Histogram:
    """Durations counted in buckets of fixed upper bounds, with their sum: a Prometheus
    histogram, kept in integer nanoseconds.

    Not thread-safe: its owner holds a lock around :meth:`observe_ns` and
    :meth:`snapshot` (an under-store holds the lock it counts requests with).

    Parameters
    ----------
    bounds
        Upper bounds of the buckets in seconds: finite, > 0, increasing. A duration equal
        to a bound falls in that bound's bucket; one above the last, in ``+Inf``'s.

    Raises
    ------
    ValueError
        Bounds that are not finite, positive and increasing, or none.
    """

    __slots__ = ("_bounds_ns", "_counts", "_sum_ns", "bounds")

    def __init__(self, bounds: Sequence[float] = LATENCY_BUCKETS):
        bounds = tuple(float(b) for b in bounds)
        if not bounds or not all(0 < b < float("inf") for b in bounds):
            raise ValueError(f"histogram bounds must be finite numbers > 0, got {bounds!r}")
        if any(a >= b for a, b in itertools.pairwise(bounds)):
            raise ValueError(f"histogram bounds must increase, got {bounds!r}")
        self.bounds = bounds
        self._bounds_ns = tuple(round(b * 1e9) for b in bounds)
        self._counts = [0] * (len(bounds) + 1)
        self._sum_ns = 0

    def observe_ns(self, ns: int, times: int = 1) -> None:
        """Count ``times`` durations of ``ns`` nanoseconds each (>= 0)."""
        self._counts[bisect_left(self._bounds_ns, ns)] += times
        self._sum_ns += ns * times

    def snapshot(self) -> dict[str, Any]:
        """The histogram as plain data (JSON and msgpack carry it as it is).

        Returns
        -------
        dict
            ``buckets``: the finite upper bounds in seconds; ``counts``: per bound, how
            many durations were at most that long (cumulative, as Prometheus counts
            them); ``sum``: their total in seconds; ``count``: how many there were,
            which is the count of the last bucket, ``+Inf``, left out of ``buckets``.
        """
        counts = list(itertools.accumulate(self._counts))
        return {
            "buckets": list(self.bounds),
            "counts": counts[:-1],
            "sum": self._sum_ns / 1e9,
            "count": counts[-1],
        }
