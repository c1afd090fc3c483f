"""The worker's counters (requests served, pages hit and missed, bytes sent, requests sent
to under-stores) and their Prometheus endpoint."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["Counters", "MetricsServer", "report_metrics", "summed_by_kind"]


class Counters:
    """Named integer counters, added to from many threads, read as one snapshot."""

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


def summed_by_kind(per_mount: dict[str, dict[str, int]]) -> dict[str, int]:
    """Requests to under-stores per kind, summed over the mounts."""
    out: dict[str, int] = {}
    for counts in per_mount.values():
        for kind, n in counts.items():
            out[kind] = out.get(kind, 0) + n
    return out


def report_metrics(report: dict) -> Iterator[Any]:
    """Prometheus metric families of a worker's ``report`` (``shoal report`` shows the same
    numbers): counters end in ``_total``, sizes in ``_bytes``."""
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
        self._server, self._thread = start_http_server(
            int(port), addr=host.strip("[]"), registry=registry
        )
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
