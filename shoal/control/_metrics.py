"""The worker's counters (requests served, pages hit and missed, bytes sent, requests sent
to under-stores; the same per mount), the latency histograms of under-store requests, and
their Prometheus endpoint."""

from __future__ import annotations

import gc
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from .ufs._latency import LATENCY_BUCKETS, Histogram

if TYPE_CHECKING:
    from .ufs import UnderStore

__all__ = [
    "LATENCY_BUCKETS",
    "Counters",
    "Histogram",
    "MetricsServer",
    "UnderStoreTraffic",
    "histogram_quantile",
    "merge_histograms",
    "merged_by_kind",
    "process_facts",
    "report_metrics",
    "summed_by_kind",
]


class Counters:
    """Named integer counters, added to from many threads, read as one snapshot; and the
    same per mount for :attr:`MOUNT_FIELDS`."""

    FIELDS = (
        "requests",
        "file_requests",
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
        "pins_refused",
    )
    #: Counted per mount point: pages found cached and not, bytes of pages handed to a
    #: client on the node by their location (it reads them from the region files), bytes
    #: sent over the socket, bytes read from the mount's under-store.
    MOUNT_FIELDS = ("page_hits", "page_misses", "bytes_short_circuit", "bytes_socket", "bytes_ufs")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.values = dict.fromkeys(self.FIELDS, 0)
        self._mounts: dict[str, dict[str, int]] = {}

    def add(self, **deltas: int) -> None:
        """Add to the named counters."""
        with self._lock:
            for name, delta in deltas.items():
                self.values[name] += delta

    def add_mount(self, mount: str, **deltas: int) -> None:
        """Add to the named counters of the mount at ``mount`` (its mount point), fields of
        :attr:`MOUNT_FIELDS`; the worker-wide counters are not touched (see :meth:`add`).

        Raises
        ------
        ValueError
            A name that is not one of :attr:`MOUNT_FIELDS` (nothing is added then).
        """
        self.add_mounts((mount, name, delta) for name, delta in deltas.items())

    def add_mounts(self, counts: Iterable[tuple[str, str, int]]) -> None:
        """Add ``(mount, field, delta)`` each (the pages of one read, say, over the mounts
        they come from), summed first and added under one lock: as :meth:`add_mount`
        for each, cheaper.

        Raises
        ------
        ValueError
            A field that is not one of :attr:`MOUNT_FIELDS` (nothing is added then).
        """
        summed: dict[str, dict[str, int]] = {}
        for mount, name, delta in counts:
            per = summed.get(mount)
            if per is None:
                per = summed[mount] = {}
            per[name] = per.get(name, 0) + delta
        unknown = {name for per in summed.values() for name in per} - set(self.MOUNT_FIELDS)
        if unknown:
            raise ValueError(
                f"no counter {', '.join(sorted(unknown))} per mount; "
                f"known: {', '.join(self.MOUNT_FIELDS)}"
            )
        with self._lock:
            for mount, deltas in summed.items():
                values = self._mounts.get(mount)
                if values is None:
                    values = self._mounts[mount] = dict.fromkeys(self.MOUNT_FIELDS, 0)
                for name, delta in deltas.items():
                    values[name] += delta

    def snapshot(self) -> dict[str, int]:
        """Every counter, at one moment."""
        with self._lock:
            return dict(self.values)

    def by_mount(self) -> dict[str, dict[str, int]]:
        """``{mount point: {field: n}}`` for every mount counted so far (unmounted ones
        included), every field of :attr:`MOUNT_FIELDS`; a new dict, at one moment."""
        with self._lock:
            return {mount: dict(values) for mount, values in self._mounts.items()}


def process_facts() -> dict[str, Any]:
    """The worker process's own part of its report: its pid, and its cyclic garbage
    collector's thresholds and collections so far per generation (a worker holds many
    objects per cached file: how often the collector walks them matters)."""
    return {
        "pid": os.getpid(),
        "gc": {
            "thresholds": list(gc.get_threshold()),
            "collections": [g["collections"] for g in gc.get_stats()],
        },
    }


def summed_by_kind(per_mount: dict[str, dict[str, int]]) -> dict[str, int]:
    """Requests to under-stores per kind, summed over the mounts."""
    out: dict[str, int] = {}
    for counts in per_mount.values():
        for kind, n in counts.items():
            out[kind] = out.get(kind, 0) + n
    return out


# ----------------------------------------------------------------------- histograms


def _cumulative(h: Mapping[str, Any]) -> dict[float, int]:
    """``{bound: cumulative count}`` of a histogram's snapshot, its shape checked."""
    buckets, counts = h["buckets"], h["counts"]
    if len(buckets) != len(counts):
        raise ValueError(
            f"histogram: {len(buckets)} bucket bounds but {len(counts)} counts; "
            "a count per bound is expected"
        )
    return dict(zip(buckets, counts, strict=True))


def merge_histograms(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """The histogram of the durations of both ``a`` and ``b`` (snapshots as
    :meth:`Histogram.snapshot` makes them): counts and sums added.

    The buckets are the bounds both have: all of them when both were made with the same
    bounds (every worker's under-stores use :data:`LATENCY_BUCKETS`); the cumulative count
    at a bound both have is exact, so the merge stays exact, and associative, even
    between histograms of other bounds.

    Raises
    ------
    ValueError
        A histogram whose ``counts`` and ``buckets`` differ in length.
    """
    at_a, at_b = _cumulative(a), _cumulative(b)
    bounds = [x for x in a["buckets"] if x in at_b]
    return {
        "buckets": bounds,
        "counts": [at_a[x] + at_b[x] for x in bounds],
        "sum": a["sum"] + b["sum"],
        "count": a["count"] + b["count"],
    }


def merged_by_kind(
    a: Mapping[str, Mapping[str, Any]], b: Mapping[str, Mapping[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Histograms by request kind (``{kind: histogram}``, as
    :meth:`UnderStore.latencies <shoal.control.ufs.UnderStore.latencies>` returns them),
    merged kind by kind (:func:`merge_histograms`); a kind in one only is kept as it is."""
    out = {kind: _copied(h) for kind, h in a.items()}
    for kind, h in b.items():
        out[kind] = merge_histograms(out[kind], h) if kind in out else _copied(h)
    return out


def _copied(h: Mapping[str, Any]) -> dict[str, Any]:
    return {**h, "buckets": list(h["buckets"]), "counts": list(h["counts"])}


def histogram_quantile(q: float, h: Mapping[str, Any]) -> float | None:
    """The ``q``-quantile (0 <= q <= 1) of a histogram's durations, estimated as
    Prometheus' ``histogram_quantile`` estimates it: by linear interpolation within the
    bucket that holds it (the first bucket from 0). A quantile in the ``+Inf`` bucket is
    the last finite bound. None for an empty histogram, or one with no finite bound.

    Raises
    ------
    ValueError
        ``q`` outside [0, 1], or a malformed histogram.
    """
    if not 0 <= q <= 1:
        raise ValueError(f"quantile must be between 0 and 1, got {q!r}")
    count = h["count"]
    if count <= 0:
        return None
    _cumulative(h)
    rank = q * count
    lower, below = 0.0, 0
    for bound, cumulative in zip(h["buckets"], h["counts"], strict=True):
        if cumulative >= rank and cumulative > below:
            return lower + (bound - lower) * (rank - below) / (cumulative - below)
        lower, below = bound, cumulative
    return lower if h["buckets"] else None


class UnderStoreTraffic:
    """Requests, their latencies and their errors, per mount point, of every under-store a
    worker opened since it started: those of stores closed since (a mount replaced or
    removed) kept, and added to those of the store open now at the same mount point.

    Thread-safe. Call :meth:`retire` with a store just before it is closed; the other
    methods take the stores open now, ``{mount point: store}``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[str, dict[str, int]] = {}
        self._errors: dict[str, dict[str, int]] = {}
        self._latency: dict[str, dict[str, dict[str, Any]]] = {}

    def retire(self, mount: str, store: UnderStore) -> None:
        """Keep what ``store``, the store of ``mount`` about to be closed, has counted."""
        requests, errors, latency = store.requests(), store.errors(), store.latencies()
        with self._lock:
            _add_counts(self._requests.setdefault(mount, {}), requests)
            _add_counts(self._errors.setdefault(mount, {}), errors)
            self._latency[mount] = merged_by_kind(self._latency.get(mount, {}), latency)

    def requests(self, stores: Mapping[str, UnderStore]) -> dict[str, dict[str, int]]:
        """Requests sent per mount point and kind (``GET``, ``HEAD``, ``LIST`` ...)."""
        with self._lock:
            out = {mount: dict(counts) for mount, counts in self._requests.items()}
        for mount, store in stores.items():
            _add_counts(out.setdefault(mount, {}), store.requests())
        return out

    def errors(self, stores: Mapping[str, UnderStore]) -> dict[str, dict[str, int]]:
        """Failed requests per mount point and kind (see
        :meth:`UnderStore.errors <shoal.control.ufs.UnderStore.errors>`)."""
        with self._lock:
            out = {mount: dict(counts) for mount, counts in self._errors.items()}
        for mount, store in stores.items():
            _add_counts(out.setdefault(mount, {}), store.errors())
        return out

    def latencies(self, stores: Mapping[str, UnderStore]) -> dict[str, dict[str, dict]]:
        """Latency histograms per mount point and kind (see
        :meth:`UnderStore.latencies <shoal.control.ufs.UnderStore.latencies>`); a mount
        whose stores sent nothing yet has an empty dict."""
        with self._lock:
            out = {mount: merged_by_kind(kinds, {}) for mount, kinds in self._latency.items()}
        for mount, store in stores.items():
            out[mount] = merged_by_kind(out.get(mount, {}), store.latencies())
        return out


def _add_counts(into: dict[str, int], counts: Mapping[str, int]) -> None:
    for kind, n in counts.items():
        into[kind] = into.get(kind, 0) + n


def report_metrics(report: dict) -> Iterator[Any]:
    """Prometheus metric families of a worker's ``report`` (``shoal report`` shows the same
    numbers): counters end in ``_total``, sizes in ``_bytes``, durations in ``_seconds``.

    The keys ``by_mount``, ``evictions``, ``tier_moves``, ``ufs_latency`` and
    ``ufs_errors`` are optional: a report without one (an older worker's) has no family
    for it."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    def counter(name: str, text: str, value: float) -> CounterMetricFamily:
        return CounterMetricFamily(name, text, value=value)

    yield counter("shoal_requests", "Requests the worker served.", report["requests"])
    yield counter(
        "shoal_file_requests",
        "Requests that named files (stat, read); reads through the table of published files "
        "make none.",
        report["file_requests"],
    )
    yield counter("shoal_page_hits", "Pages asked for and found cached.", report["page_hits"])
    yield counter("shoal_page_misses", "Pages asked for and fetched.", report["page_misses"])
    served = CounterMetricFamily(
        "shoal_pages_served", "Pages served, by how they reached the reader.", labels=["path"]
    )
    served.add_metric(["short_circuit"], report["pages_located"])
    served.add_metric(["socket"], report["pages_sent"])
    yield served
    yield counter("shoal_sent_bytes", "Bytes sent over sockets.", report["bytes_sent"])
    yield counter(
        "shoal_pages_prefetched", "Pages fetched by read-ahead.", report["pages_prefetched"]
    )
    yield counter("shoal_ufs_reads", "Reads from under-stores.", report["ufs_reads"])
    yield counter("shoal_ufs_read_bytes", "Bytes read from under-stores.", report["ufs_bytes"])
    yield counter(
        "shoal_store_full", "Pages no tier could keep (served from memory).", report["store_full"]
    )
    yield counter(
        "shoal_pins_refused",
        "Puts of pinned pages stored unpinned: the tier's pinned share was full.",
        report["pins_refused"],
    )
    requests = CounterMetricFamily(
        "shoal_ufs_requests", "Requests sent to under-stores.", labels=["mount", "kind"]
    )
    for mount, kinds in sorted(report["ufs_requests_by_mount"].items()):
        for kind, n in sorted(kinds.items()):
            requests.add_metric([mount, kind], n)
    yield requests
    yield GaugeMetricFamily(
        "shoal_hit_ratio", "Page hits / pages asked for, since start.", value=report["hit_ratio"]
    )
    yield GaugeMetricFamily("shoal_mounts", "Mounts.", value=report["mounts"])
    yield GaugeMetricFamily(
        "shoal_published_files",
        "Cached files in the table that clients on the node read with no request.",
        value=report["published"]["files"],
    )
    yield GaugeMetricFamily(
        "shoal_metadata_entries", "Entries of the metadata cache.", value=report["metadata_entries"]
    )
    yield GaugeMetricFamily(
        "shoal_metadata_bytes",
        "Memory of the metadata cache's entries, as estimated (bounded).",
        value=report["metadata_bytes"],
    )
    yield GaugeMetricFamily(
        "shoal_uptime_seconds",
        "Seconds since the worker started.",
        value=report["worker"]["uptime"],
    )
    tiers = report["tiers"]
    for field, name, text in (
        ("capacity", "shoal_tier_capacity_bytes", "Bytes the tier may hold."),
        ("allocated_bytes", "shoal_tier_allocated_bytes", "Bytes of the tier's regions in use."),
        ("live_bytes", "shoal_tier_live_bytes", "Bytes of cached pages."),
        ("filled_bytes", "shoal_tier_filled_bytes", "Bytes the pages take, padding included."),
        ("pinned_bytes", "shoal_tier_pinned_bytes", "Bytes of pinned pages."),
        ("dirty_bytes", "shoal_tier_dirty_bytes", "Bytes not yet persisted elsewhere."),
        ("pages", "shoal_tier_pages", "Cached pages."),
        ("regions_used", "shoal_tier_regions_used", "Regions holding pages."),
    ):
        family = GaugeMetricFamily(name, text, labels=["tier"])
        for tier, usage in sorted(tiers.items()):
            family.add_metric([tier], usage[field])
        yield family
    errors = CounterMetricFamily("shoal_tier_io_errors", "I/O errors per tier.", labels=["tier"])
    state = GaugeMetricFamily(
        "shoal_tier_state", "1 for the state each tier is in.", labels=["tier", "state"]
    )
    for tier, usage in sorted(tiers.items()):
        errors.add_metric([tier], usage["io_errors"])
        for name in ("normal", "unstable", "down"):
            state.add_metric([tier, name], 1 if usage["state"] == name else 0)
    yield errors
    yield state
    yield from _mount_families(report.get("by_mount"))
    yield from _moved_families(report.get("evictions"), report.get("tier_moves"))
    yield from _quota_families(report.get("quotas"), report.get("quota_refused"))
    yield from _writeback_families(report.get("writeback"))
    yield from _ufs_families(report.get("ufs_latency"), report.get("ufs_errors"))


def _mount_families(by_mount: Mapping[str, Mapping[str, int]] | None) -> Iterator[Any]:
    """Per mount: pages hit and missed, bytes served by path, bytes read from its store."""
    if by_mount is None:
        return
    from prometheus_client.core import CounterMetricFamily

    hits = CounterMetricFamily(
        "shoal_mount_page_hits", "Pages asked for and found cached, per mount.", labels=["mount"]
    )
    misses = CounterMetricFamily(
        "shoal_mount_page_misses", "Pages asked for and fetched, per mount.", labels=["mount"]
    )
    served = CounterMetricFamily(
        "shoal_mount_served_bytes",
        "Bytes of pages served per mount, by how they reached the reader: by their location "
        "(short_circuit, a client on the node reads the region files) or over the socket.",
        labels=["mount", "path"],
    )
    read = CounterMetricFamily(
        "shoal_mount_ufs_read_bytes", "Bytes read from each mount's under-store.", labels=["mount"]
    )
    for mount, c in sorted(by_mount.items()):
        hits.add_metric([mount], c.get("page_hits", 0))
        misses.add_metric([mount], c.get("page_misses", 0))
        served.add_metric([mount, "short_circuit"], c.get("bytes_short_circuit", 0))
        served.add_metric([mount, "socket"], c.get("bytes_socket", 0))
        read.add_metric([mount], c.get("bytes_ufs", 0))
    yield from (hits, misses, served, read)


def _writeback_families(wb: Mapping[str, Any] | None) -> Iterator[Any]:
    """Written files not in their under-store yet, the budget, and the uploads."""
    if wb is None:
        return
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    for key, name, text in (
        ("dirty_files", "shoal_dirty_files", "Files written and not in their store yet."),
        ("dirty_bytes", "shoal_dirty_bytes", "Bytes written and not in their store yet."),
        ("budget_bytes", "shoal_dirty_budget_bytes", "The dirty budget: past it writers wait."),
        ("oldest_seconds", "shoal_dirty_oldest_seconds", "Age of the oldest pending upload."),
    ):
        yield GaugeMetricFamily(name, text, value=wb.get(key, 0))
    for key, name, text in (
        ("uploaded_files", "shoal_uploaded_files", "Files uploaded to their store."),
        ("uploaded_bytes", "shoal_uploaded_bytes", "Bytes uploaded to their store."),
        ("upload_failures", "shoal_upload_failures", "Failed upload attempts (retried)."),
        ("written_bytes", "shoal_written_bytes", "Bytes of files written through the worker."),
        ("enospc", "shoal_write_enospc", "Writes refused: the dirty budget stayed full."),
    ):
        yield CounterMetricFamily(name, text, value=wb.get(key, 0))


def _quota_families(
    quotas: Mapping[str, Mapping[str, int]] | None, refused: int | None
) -> Iterator[Any]:
    """Each quota prefix's limit and the bytes counted against it here, and the puts a
    quota refused."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    if quotas is not None:
        limit = GaugeMetricFamily(
            "shoal_quota_bytes", "The quota of a prefix (per worker).", labels=["prefix"]
        )
        used = GaugeMetricFamily(
            "shoal_quota_used_bytes",
            "Bytes cached under a prefix with a quota, counted against it.",
            labels=["prefix"],
        )
        for prefix, q in sorted(quotas.items()):
            limit.add_metric([prefix], q.get("quota", 0))
            used.add_metric([prefix], q.get("bytes", 0))
        yield from (limit, used)
    if refused is not None:
        yield CounterMetricFamily(
            "shoal_quota_refused",
            "Puts of pages not cached: larger than their prefix's quota, or no file of the "
            "prefix could make room.",
            value=refused,
        )


def _moved_families(
    evictions: Mapping[str, Mapping[str, int]] | None,
    tier_moves: Mapping[str, Mapping[str, int]] | None,
) -> Iterator[Any]:
    """Pages and bytes evicted by reason, and moved between tiers by direction."""
    from prometheus_client.core import CounterMetricFamily

    for moved, name, label, text in (
        (evictions, "shoal_evicted", "reason", "evicted, by reason (capacity, ttl, quota)"),
        (
            tier_moves,
            "shoal_tier_moved",
            "direction",
            "moved between tiers (demoted, promoted) or to regions of another priority "
            "(reprioritized)",
        ),
    ):
        if moved is None:
            continue
        pages = CounterMetricFamily(f"{name}_pages", f"Pages {text}.", labels=[label])
        nbytes = CounterMetricFamily(f"{name}_bytes", f"Bytes of pages {text}.", labels=[label])
        for value, c in sorted(moved.items()):
            pages.add_metric([value], c.get("pages", 0))
            nbytes.add_metric([value], c.get("bytes", 0))
        yield from (pages, nbytes)


def _ufs_families(
    latency: Mapping[str, Mapping[str, Mapping[str, Any]]] | None,
    errors: Mapping[str, Mapping[str, int]] | None,
) -> Iterator[Any]:
    """Latency histograms and errors of requests to under-stores, per mount and kind."""
    from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
    from prometheus_client.utils import floatToGoString

    if latency is not None:
        seconds = HistogramMetricFamily(
            "shoal_ufs_request_seconds",
            "Seconds requests to under-stores took, per mount and kind (every attempt, "
            "failed ones too; a listing of a local directory: the time spent scanning it).",
            labels=["mount", "kind"],
        )
        for mount, kinds in sorted(latency.items()):
            for kind, h in sorted(kinds.items()):
                buckets = [
                    (floatToGoString(bound), n)
                    for bound, n in zip(h["buckets"], h["counts"], strict=True)
                ]
                buckets.append(("+Inf", h["count"]))
                seconds.add_metric([mount, kind], buckets, h["sum"])
        yield seconds
    if errors is not None:
        failed = CounterMetricFamily(
            "shoal_ufs_request_errors",
            "Requests to under-stores that failed (connection, timeout, throttling, server "
            "error, no permission ...; a missing or changed object is an answer, not counted), "
            "per mount and kind.",
            labels=["mount", "kind"],
        )
        for mount, kinds in sorted(errors.items()):
            for kind, n in sorted(kinds.items()):
                failed.add_metric([mount, kind], n)
        yield failed


class MetricsServer:
    """An HTTP server of Prometheus metrics (``/metrics``), each scrape made from a fresh
    ``report()``.

    Parameters
    ----------
    listen
        ``HOST:PORT`` (port 0: any free one; :attr:`address` tells which).
    report
        The worker's report, called on every scrape (from the server's thread).

    Raises
    ------
    ImportError
        prometheus-client is not installed.
    OSError
        The address cannot be bound.
    """

    def __init__(self, listen: str, report: Callable[[], dict]):
        from prometheus_client import CollectorRegistry, start_http_server

        host, _, port = listen.rpartition(":")
        collector = _ReportCollector(report)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(collector)
        try:
            self._server, self._thread = start_http_server(
                int(port), addr=host.strip("[]"), registry=registry
            )
        except OSError as exc:
            raise type(exc)(
                exc.errno, f"cannot serve metrics on {listen}: {exc.strerror or exc}"
            ) from None
        bound = self._server.server_address
        host = host.strip("[]")
        self.address = f"[{host}]:{bound[1]}" if ":" in host else f"{host}:{bound[1]}"

    def close(self) -> None:
        """Stop serving; idempotent."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


class _ReportCollector:
    def __init__(self, report: Callable[[], dict]):
        self._report = report

    def collect(self) -> Iterator[Any]:
        return report_metrics(self._report())
