"""``shoal report``: the worker's capacity, use and health per tier, pages, hit ratio, and
its traffic, with the requests it sent to each under-store by kind; pages evicted and moved
between tiers; per mount, hits, misses and bytes served, and how long its under-store's
requests took; the write-back (uploads pending, done, failed); ``--cluster``: the sum over
every live worker, and a line per worker."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from .._units import format_size
from ..control._metrics import histogram_quantile
from ._common import add_home_option, format_duration, format_table, open_client, print_json

__all__ = ["files_phrase", "register", "render_cluster_report", "render_report", "writeback_lines"]


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def render_report(report: Mapping[str, Any]) -> str:
    """The worker's report (``Client.report()``) as text; a sum of reports (with no
    ``worker``) as well."""
    lines = []
    if "worker" in report:
        w = report["worker"]
        lines += [
            f"worker      pid {w.get('pid', '?')} on {w.get('host_id', '?')}, "
            f"up {format_duration(w.get('uptime', 0.0))}, engine {w.get('engine', '?')}, "
            f"page size {format_size(w.get('page_size', 0))}",
            f"home        {w.get('home', '?')}",
            "",
        ]
    tiers = report.get("tiers", {})
    rows = []
    totals = {"capacity": 0, "allocated_bytes": 0, "live_bytes": 0, "pages": 0}
    for name, t in tiers.items():
        rows.append(
            (
                name,
                format_size(t.get("capacity", 0)),
                format_size(t.get("allocated_bytes", 0)),
                format_size(t.get("live_bytes", 0)),
                _pct(t.get("allocated_bytes", 0), t.get("capacity", 0)),
                t.get("pages", 0),
                f"{t.get('regions_used', 0)}/{t.get('regions_total', 0)}",
                t.get("state", "-"),
                t.get("io_errors", 0),
            )
        )
        for key in totals:
            totals[key] += t.get(key, 0)
    if len(rows) > 1:
        rows.append(
            (
                "total",
                format_size(totals["capacity"]),
                format_size(totals["allocated_bytes"]),
                format_size(totals["live_bytes"]),
                _pct(totals["allocated_bytes"], totals["capacity"]),
                totals["pages"],
                "",
                "",
                "",
            )
        )
    if rows:
        lines.append(
            format_table(
                rows,
                (
                    "TIER",
                    "CAPACITY",
                    "ALLOCATED",
                    "LIVE",
                    "USE",
                    "PAGES",
                    "REGIONS",
                    "STATE",
                    "IO ERRORS",
                ),
                right=(1, 2, 3, 4, 5, 6, 8),
            )  # fmt: skip
        )
        lines.append("")
        for name, t in tiers.items():
            if t.get("last_error") and t.get("state") != "normal":
                lines.append(f"tier {name} {t['state']}: {t['last_error']}")
    hits, misses = report.get("page_hits", 0), report.get("page_misses", 0)
    ratio = report.get("hit_ratio")
    shown_ratio = f"{100 * ratio:.1f}%" if (hits + misses) and ratio is not None else "-"
    lines += [
        f"pages       {report.get('pages', 0)} cached",
        f"hit ratio   {shown_ratio} ({hits} hits, {misses} misses)",
        f"under-store {format_size(report.get('ufs_bytes', 0))} read in "
        f"{report.get('ufs_reads', 0)} reads ({report.get('ufs_pages', 0)} pages); "
        f"requests sent {_kinds(report.get('ufs_requests', {}))}",
        f"served      {report.get('pages_located', 0)} pages short-circuit, "
        f"{report.get('pages_sent', 0)} pages ({format_size(report.get('bytes_sent', 0))}) "
        f"over the socket, {report.get('pages_prefetched', 0)} prefetched",
        f"requests    {report.get('requests', 0)} ({report.get('file_requests', 0)} naming files)",
        f"published   {_published(report.get('published', {}))}",
        f"metadata    {report.get('metadata_entries', 0)} entries, "
        f"{format_size(report.get('metadata_bytes', 0))}",
        f"mounts      {report.get('mounts', 0)}",
    ]
    metrics = report.get("worker", {}).get("metrics")
    if metrics:
        lines.append(f"metrics     http://{metrics}/metrics")
    by_mount = report.get("ufs_requests_by_mount", {})
    if len(by_mount) > 1:
        for where in sorted(by_mount):
            lines.append(f"  {where}: {_kinds(by_mount[where])}")
    if report.get("store_full"):
        lines.append(f"not cached  {report['store_full']} pages (no tier took them)")
    if report.get("evictions") is not None:
        lines.append(f"evicted     {_moved(report['evictions'])}")
    if report.get("tier_moves") is not None:
        lines.append(f"tier moves  {_moved(report['tier_moves'])}")
    for prefix, q in sorted((report.get("quotas") or {}).items()):
        used, quota = format_size(q.get("bytes", 0)), format_size(q.get("quota", 0))
        lines.append(f"quota       {prefix}: {used} of {quota} cached here")
    if report.get("quota_refused"):
        refused = report["quota_refused"]
        lines.append(f"quota       {refused} puts not cached (no room under a quota)")
    if "writeback" in report:
        lines += writeback_lines(report["writeback"])
    lines += _mount_lines(report.get("by_mount") or {})
    lines += _latency_lines(report.get("ufs_latency") or {}, report.get("ufs_errors") or {})
    lines += _cluster_lines(report)
    return "\n".join(lines)


def writeback_lines(wb: Mapping[str, Any]) -> list[str]:
    """The write-back counters (``Client.report()["writeback"]``) as two lines: what waits
    to be uploaded, against the dirty budget, and what was uploaded since the start."""
    files, dirty, budget = (
        wb.get("dirty_files", 0),
        wb.get("dirty_bytes", 0),
        wb.get("budget_bytes", 0),
    )
    if files:
        pending = (
            f"{files_phrase(files)} pending ({format_size(dirty)} of a "
            f"{format_size(budget)} budget, {_pct(dirty, budget)}), "
            f"{wb.get('uploading', 0)} uploading, the oldest for "
            f"{format_duration(wb.get('oldest_seconds', 0.0))}"
        )
    else:
        pending = f"nothing pending (budget {format_size(budget)})"
    failures = wb.get("upload_failures", 0)
    return [
        f"write-back  {pending}",
        f"uploaded    {files_phrase(wb.get('uploaded_files', 0))} "
        f"({format_size(wb.get('uploaded_bytes', 0))}), {failures} failed attempt"
        f"{'' if failures == 1 else 's'} (retried)",
    ]


def files_phrase(n: int) -> str:
    """``1 file``, ``3 files``."""
    return f"{n} file" if n == 1 else f"{n} files"


def _worker_row(wid: str, report: Mapping[str, Any]) -> tuple:
    hits, misses = report.get("page_hits", 0), report.get("page_misses", 0)
    used = sum(t.get("live_bytes", 0) for t in report.get("tiers", {}).values())
    host = report.get("worker", {}).get("host_id", "-")
    return (wid, host, report.get("pages", 0), format_size(used), _pct(hits, hits + misses))


def render_cluster_report(doc: Mapping[str, Any], cluster: bool) -> str:
    """The reports of every live worker and their sum (``Client.report(cluster=True)``)
    as text: the sum as :func:`render_report` shows one worker, then a line per worker;
    ``cluster`` False says that the one worker of a single node is shown."""
    workers = doc.get("workers", {})
    if cluster:
        head = f"cluster     {len(workers)} worker(s) answered, summed below"
    else:
        head = "cluster     none: a single node, its one worker shown"
    lines = [head]
    if doc.get("unreachable"):
        lines.append(f"not summed  {', '.join(doc['unreachable'])} (did not answer)")
    lines += ["", render_report(doc.get("total", {})), ""]
    rows = [_worker_row(wid, r) for wid, r in sorted(workers.items())]
    lines.append(
        format_table(rows, ("WORKER", "HOST", "PAGES", "LIVE", "HIT RATIO"), right=(2, 3, 4))
    )
    return "\n".join(lines)


def _published(p: Mapping[str, Any]) -> str:
    """The table of published files: ``1,204 files in 65,536 slots``."""
    if not p:
        return "-"
    text = f"{p.get('files', 0):,} files in {p.get('slots', 0):,} slots"
    return text + (", file records still read back" if p.get("restoring") else "")


def _kinds(counts: Mapping[str, int]) -> str:
    """Requests by kind, the kinds sent at all: ``GET 12, LIST 1``."""
    sent = [f"{kind} {n}" for kind, n in counts.items() if n]
    return ", ".join(sent) if sent else "none"


def _moved(moved: Mapping[str, Mapping[str, int]]) -> str:
    """Pages moved by reason or direction, those that moved any: ``capacity 120 pages
    (7.5 MiB), ttl 3 pages (192.0 KiB)``."""
    shown = [
        f"{why} {c.get('pages', 0)} pages ({format_size(c.get('bytes', 0))})"
        for why, c in moved.items()
        if c.get("pages")
    ]
    return ", ".join(shown) if shown else "none"


def _mount_lines(by_mount: Mapping[str, Mapping[str, int]]) -> list[str]:
    """A table of the pages hit and missed and the bytes served per mount."""
    if not by_mount:
        return []
    rows = []
    for mount, c in sorted(by_mount.items()):
        hits, misses = c.get("page_hits", 0), c.get("page_misses", 0)
        rows.append(
            (
                mount,
                hits,
                misses,
                _pct(hits, hits + misses),
                format_size(c.get("bytes_short_circuit", 0)),
                format_size(c.get("bytes_socket", 0)),
                format_size(c.get("bytes_ufs", 0)),
            )
        )
    headers = ("MOUNT", "HITS", "MISSES", "HIT RATIO", "SHORT-CIRCUIT", "SOCKET", "UNDER-STORE")
    return ["", format_table(rows, headers, right=(1, 2, 3, 4, 5, 6))]


def _latency_lines(
    latency: Mapping[str, Mapping[str, Mapping[str, Any]]],
    errors: Mapping[str, Mapping[str, int]],
) -> list[str]:
    """A table of the requests to each mount's under-store by kind: how many, how many
    failed, and how long they took (the mean, and the median and 99th percentile
    estimated from the histogram's buckets)."""
    rows = []
    for mount, kinds in sorted(latency.items()):
        for kind, h in sorted(kinds.items()):
            count = h.get("count", 0)
            if not count:
                continue
            rows.append(
                (
                    mount,
                    kind,
                    count,
                    errors.get(mount, {}).get(kind, 0),
                    _seconds(h["sum"] / count),
                    _quantile(0.5, h),
                    _quantile(0.99, h),
                )
            )
    if not rows:
        return []
    headers = ("MOUNT", "KIND", "REQUESTS", "ERRORS", "MEAN", "P50", "P99")
    return ["", format_table(rows, headers, right=(2, 3, 4, 5, 6))]


def _quantile(q: float, h: Mapping[str, Any]) -> str:
    """A quantile of a latency histogram; past its last bound, ``>`` that bound."""
    value = histogram_quantile(q, h)
    if value is None:
        return "-"
    beyond = q * h["count"] > h["counts"][-1]  # in the +Inf bucket
    return (">" if beyond else "") + _seconds(value)


def _seconds(seconds: float) -> str:
    """A request's duration: ``85us``, ``12.3ms``, ``1.25s``."""
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f}us"
    if seconds < 1:
        return f"{seconds * 1e3:.1f}ms"
    return f"{seconds:.2f}s"


def _cluster_lines(report: Mapping[str, Any]) -> list[str]:
    """The worker's registration and the client's membership, in a cluster."""
    lines = []
    c = report.get("cluster")
    if c:
        where = f"etcd at {c.get('etcd')}"
        if c.get("registered"):
            state = f"registered in {where}"
        else:
            state = f"NOT registered: {where} unreachable ({c.get('last_error')})"
        lines.append(f"cluster     worker {c.get('worker_id')} {c.get('state')}, {state}")
    m = report.get("membership")
    if m:
        if m.get("healthy"):
            state = f"from {m.get('source')}"
        else:
            state = f"{m.get('source')} unreachable ({m.get('last_error')}): last view kept"
        lines.append(f"membership  {m.get('workers')} worker(s) seen, {state}")
    return lines


def register(subparsers) -> None:
    """Add ``report``."""
    p = subparsers.add_parser(
        "report",
        help="show the worker's capacity, use and hit ratio",
        description="Show capacity, use and health per tier (normal, unstable or down, "
        "with its I/O errors), cached pages, the hit ratio, the bytes read from "
        "under-stores and the requests sent to them by kind (GET, HEAD, LIST ...), pages "
        "evicted and moved between tiers, and per mount the hits, misses and bytes served "
        "and the under-store's requests: how many failed and how long they took (mean, "
        "median and 99th percentile), and the write-back: files waiting for their upload "
        "against the dirty budget, uploads done and failed attempts, since the worker "
        "started.",
    )
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    p.add_argument(
        "--cluster",
        action="store_true",
        help="every live worker's report and their sum (with --json: "
        '{"workers": {ID: report}, "total": sum, "unreachable": [ID]})',
    )
    add_home_option(p)
    p.set_defaults(func=_report)


def _report(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        report = client.report(cluster=args.cluster)
        cluster = client.config.etcd is not None or client.config.membership_file is not None
    if args.json:
        print_json(report)
    elif args.cluster:
        print(render_cluster_report(report, cluster))
    else:
        print(render_report(report))
    return 0
