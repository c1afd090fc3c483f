"""What the workers cache and report, as a client gathers it: ``du`` of a path and the
report of one worker or of every live worker, summed (see :meth:`shoal.Client.du` and
:meth:`shoal.Client.report`).

On one node the one worker answers; in a cluster every live worker is asked in turn, and
those that do not answer are listed as ``unreachable`` rather than failing the call.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from .._config import Config
from ..control._metrics import merge_histograms
from ._router import Router

__all__ = ["du", "report", "summed_reports"]

log = logging.getLogger("shoal.client")

#: Fields of a report that are not the worker's use or traffic: left out of a sum.
_NOT_SUMMED = frozenset({"worker", "cluster", "membership", "hit_ratio", "last_error"})
#: Numbers that are settings or the cluster's (the same on every worker): the largest kept.
_LARGEST = frozenset({"region_size", "page_size", "mounts"})
#: Tier states, best first: a sum is in the worst state of its parts.
_STATES = ("normal", "unstable", "down")


def _ask_every_worker(router: Router, header: dict) -> tuple[dict[str, dict], list[str]]:
    """``header`` sent to every live worker: the answers by worker (its id in a cluster,
    its host id on one node) and the ids of the workers that did not answer (skipped in a
    cluster; on one node the error is raised)."""
    answers: dict[str, dict] = {}
    unreachable: list[str] = []
    for member in router.membership().members():
        if router.cluster and router.is_down(member):
            unreachable.append(member.id)
            continue
        try:
            conn = router.conn_of(member)
            answer = conn.call(header)
        except (ConnectionError, TimeoutError) as exc:
            if not router.cluster:
                raise
            router.mark_down(member, exc)
            unreachable.append(member.id)
            continue
        answers[member.id if router.cluster else conn.hello["host_id"]] = answer
    return answers, unreachable


def du(router: Router, path: str) -> dict:
    """``du`` on every live worker, summed: ``path``, ``bytes``, ``pages``, ``files``,
    ``tiers`` (bytes per tier name), and per worker ``workers`` (its ``bytes``,
    ``pages``, ``files`` and ``tiers``) and ``unreachable``."""
    answers, unreachable = _ask_every_worker(router, {"op": "du", "path": path})
    workers = {
        wid: {k: a[k] for k in ("bytes", "pages", "files", "tiers")} for wid, a in answers.items()
    }
    tiers: dict[str, int] = {}
    for w in workers.values():
        for name, n in w["tiers"].items():
            tiers[name] = tiers.get(name, 0) + n
    return {
        "path": path,
        "bytes": sum(w["bytes"] for w in workers.values()),
        "pages": sum(w["pages"] for w in workers.values()),
        "files": sum(w["files"] for w in workers.values()),
        "tiers": tiers,
        "workers": workers,
        "unreachable": unreachable,
    }


def report(router: Router, config: Config, cluster: bool) -> dict:
    """The home worker's report (with this client's view of the membership in a
    cluster), or with ``cluster`` every live worker's and their sum: ``{"workers": {id:
    report}, "total": summed, "unreachable": [id, ...]}``. A report holds:

    ``tiers`` (per tier: capacity, regions used, live and filled bytes, pages,
    ``state`` (``normal``, ``unstable`` or ``down``) and ``io_errors`` ...),
    ``pages``, ``page_hits``, ``page_misses``, ``hit_ratio``, ``ufs_reads``,
    ``ufs_pages`` and ``ufs_bytes`` (requests, pages and bytes from
    under-stores), ``pages_located`` (read short-circuit), ``pages_sent`` and
    ``bytes_sent`` (over the socket), ``pages_prefetched``, ``requests`` and
    ``file_requests`` (those naming files), ``published`` (the table of
    published files: files, slots, tables made, ``restoring``),
    ``metadata_entries`` and ``metadata_bytes``, ``mounts``, ``worker`` (pid,
    host id, home, uptime, engine, page size),
    ``writeback`` (files written and not in their under-store yet: ``dirty_files``,
    ``dirty_bytes``, ``budget_bytes``, ``pending_uploads``, ``uploading``,
    ``oldest_seconds``, ``uploaded_files``, ``uploaded_bytes``, ``upload_failures``).
    In a cluster, also ``cluster`` (the worker's registration: id, state,
    whether etcd renews it) and ``membership`` (this client's view: workers
    seen, whether its source answers, the last error).
    """
    if router.shortcircuit.locations.touched_since:
        # Pages read with no round trip: the counters include them.
        try:
            router.shortcircuit.report_touched(router.home())
        except (ConnectionError, TimeoutError) as exc:
            log.warning("pages read short-circuit not reported: %s", exc)
    if cluster:
        answers, unreachable = _ask_every_worker(router, {"op": "report"})
        workers = {wid: a["report"] for wid, a in answers.items()}
        return {"workers": workers, "total": summed_reports(workers.values()),
                "unreachable": unreachable}  # fmt: skip
    doc = router.call({"op": "report"})["report"]
    if router.cluster:
        m = router.membership()
        doc["membership"] = {
            "source": config.etcd or config.membership_file,
            "workers": len(m.members()),
            "healthy": m.healthy,
            "last_error": m.last_error,
        }
    return doc


def summed_reports(reports: Any) -> dict:
    """The sum of workers' reports: every number of use and traffic summed (tiers by
    name, requests by kind and mount, counters per mount, evictions by reason, tier
    moves by direction), latency histograms merged (counts bucket by bucket, sums and
    counts added), settings kept (the largest), each tier in the worst state of its
    parts, ``hit_ratio`` recomputed from the summed hits and misses, and ``workers``: how
    many were summed. Who each worker is (``worker``, ``cluster``) is left out."""
    reports = list(reports)
    total = _summed(reports) if reports else {}
    hits, misses = total.get("page_hits", 0), total.get("page_misses", 0)
    total["hit_ratio"] = hits / (hits + misses) if hits + misses else 0.0
    total["workers"] = len(reports)
    return total


def _summed(values: list) -> Any:
    """Histograms merged, other dicts merged key by key, numbers summed, flags or-ed; any
    other value kept when every part has it, else None."""
    if values and all(_is_histogram(v) for v in values):
        total = values[0]
        for h in values[1:]:
            total = merge_histograms(total, h)
        return total
    if all(isinstance(v, Mapping) for v in values):
        keys = dict.fromkeys(k for v in values for k in v)
        return {
            k: _field(k, [v[k] for v in values if k in v]) for k in keys if k not in _NOT_SUMMED
        }
    if all(type(v) in (int, float) for v in values):
        return sum(values)
    if all(type(v) is bool for v in values):
        return any(values)
    return values[0] if all(v == values[0] for v in values) else None


def _is_histogram(value: Any) -> bool:
    """True for a latency histogram (``ufs_latency``'s, see ``UnderStore.latencies``)."""
    return isinstance(value, Mapping) and value.keys() == {"buckets", "counts", "sum", "count"}


def _field(key: str, values: list) -> Any:
    if key in _LARGEST and all(type(v) in (int, float) for v in values):
        return max(values)
    if key == "state" and all(v in _STATES for v in values):
        return max(values, key=_STATES.index)
    return _summed(values)
