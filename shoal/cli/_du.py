"""``shoal du PATH``: bytes cached under a path, per tier and, in a cluster, per worker."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from .._units import format_size
from ._common import add_home_option, format_bytes, format_table, open_client, path_arg, print_json

__all__ = ["register", "render_du"]


def _tiers(tiers: Mapping[str, int]) -> str:
    return ", ".join(f"{name} {format_size(n)}" for name, n in tiers.items()) or "-"


def render_du(doc: Mapping[str, Any], cluster: bool) -> str:
    """What is cached under a path (``Client.du()``) as text; with ``cluster``, a line
    per worker too."""
    lines = [
        f"path    {doc['path']}",
        f"cached  {format_bytes(doc['bytes'])} in {doc['pages']} pages of {doc['files']} files",
        f"tiers   {_tiers(doc['tiers'])}",
    ]
    if cluster and doc["workers"]:
        names = list(doc["tiers"])
        rows = [
            (wid, format_size(w["bytes"]), w["pages"], w["files"],
             *(format_size(w["tiers"].get(t, 0)) for t in names))
            for wid, w in sorted(doc["workers"].items())
        ]  # fmt: skip
        headers = ("WORKER", "CACHED", "PAGES", "FILES", *names)
        lines += ["", format_table(rows, headers, right=tuple(range(1, len(headers))))]
    if doc.get("unreachable"):
        lines.append(f"not counted: worker(s) {', '.join(doc['unreachable'])} did not answer")
    return "\n".join(lines)


def register(subparsers) -> None:
    """Add ``du``."""
    p = subparsers.add_parser(
        "du",
        help="show the bytes cached under a path, per tier and per worker",
        description="Show the bytes, pages and files cached under PATH (by whole "
        "components: /d/a does not cover /d/ab), per tier, and in a cluster per worker "
        "(copies count once per worker). Files are seen through the records a worker keeps "
        "while their mount caches metadata: pages cached under metadata_ttl 0 are not "
        "counted.",
    )
    p.add_argument("path", type=path_arg, metavar="PATH", help="a path under a mount, or /")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_home_option(p)
    p.set_defaults(func=_du)


def _du(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        doc = client.du(args.path)
        cluster = client.config.etcd is not None or client.config.membership_file is not None
    if args.json:
        print_json(doc)
    else:
        print(render_du(doc, cluster))
    return 0
