"""``shoal load`` (warm the cache, with a progress bar) and ``shoal free`` (drop it)."""

from __future__ import annotations

import argparse
import datetime as _dt
import sys
import time
from collections.abc import Iterable, Sequence

from .._units import format_size
from ._common import (
    add_home_option,
    format_duration,
    format_table,
    open_client,
    path_arg,
    print_json,
)
from ._mount import replicas_arg
from ._progress import ProgressBar, add_progress_options

__all__ = ["format_history", "read_file_list", "register"]


def read_file_list(lines: Iterable[str], source: str) -> list[str]:
    """Shoal paths from a file list: one per line; blank lines and ``#`` comments skipped.

    Raises ``ValueError`` naming ``source`` and the line of a path that is not valid.
    """
    paths = []
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            paths.append(path_arg(text))
        except argparse.ArgumentTypeError as exc:
            raise ValueError(f"{source}, line {number}: {exc}") from None
    return paths


def register(subparsers) -> None:
    """Add ``load`` and ``free``."""
    p = subparsers.add_parser(
        "load",
        help="cache files ahead of use",
        description="Have the worker fetch the files under the given paths (directories "
        "are expanded) into its cache, or only their metadata. Progress goes to stderr.",
    )
    what = p.add_argument_group("what to load")
    what.add_argument("paths", type=path_arg, nargs="*", metavar="PATH", help="files or dirs")
    what.add_argument(
        "--file-list",
        metavar="FILE",
        help="read the paths from FILE, one per line ('-' for stdin; # starts a comment)",
    )
    what.add_argument(
        "--metadata-only",
        action="store_true",
        help="cache only the metadata (stat and listings), not the bytes",
    )
    what.add_argument(
        "--replicas",
        type=replicas_arg,
        metavar="K|all",
        help="in a cluster: workers to load each chunk on (default: the mount's replicas)",
    )
    add_progress_options(p)
    past = p.add_argument_group("history")
    past.add_argument(
        "--history",
        action="store_true",
        help="list past and running loads, newest first, instead of loading",
    )
    past.add_argument("--json", action="store_true", help="with --history: print JSON")
    past.add_argument(
        "--limit",
        type=_limit_arg,
        default=20,
        metavar="N",
        help="with --history: at most N loads (default 20; 0: all)",
    )
    add_home_option(p)
    p.set_defaults(func=_load, needs_paths=p)

    p = subparsers.add_parser(
        "free",
        help="drop cached pages",
        description="Drop the cached pages of the files under PATH. The files stay in "
        "their under-store; the next read fetches them again.",
    )
    p.add_argument("path", type=path_arg, metavar="PATH")
    add_home_option(p)
    p.set_defaults(func=_free)


def _limit_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a count >= 0, got {text!r}")
    return value


def _when(t: float | None) -> str:
    if not t:
        return "-"
    return _dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


def format_history(records: Sequence[dict], now: float | None = None) -> str:
    """Load records (newest first, as :meth:`shoal.Client.load_history` gives them) as a
    table: id, state, start, duration (so far, for a running load), files, bytes done of
    the total, and bytes skipped (cached already). A failed or stopped load's error
    follows its row, indented."""
    now = time.time() if now is None else now
    rows, notes = [], {}
    for r in records:
        started, finished = r.get("started"), r.get("finished")
        if started and (finished or r.get("state") == "RUNNING"):
            duration = format_duration((finished or now) - started)
        else:
            duration = "-"
        files = f"{r.get('files_done', 0)}/{r.get('files_total', 0)}"
        done, total = r.get("bytes_done", 0), r.get("bytes_total", 0)
        size = format_size(done) if done == total else f"{format_size(done)}/{format_size(total)}"
        if r.get("metadata_only"):
            size += " (metadata)"
        rows.append(
            [r.get("id", "?"), r.get("state", "?"), _when(started), duration, files, size,
             format_size(r.get("bytes_skipped", 0))]
        )  # fmt: skip
        if r.get("error"):
            notes[len(rows)] = r["error"]
    table = format_table(
        rows, ["ID", "STATE", "STARTED", "DURATION", "FILES", "BYTES", "SKIPPED"], right=(3, 4)
    ).split("\n")
    out = [table[0]]
    for i, line in enumerate(table[1:], 1):
        out.append(line)
        if i in notes:
            out.append(f"    {notes[i]}")
    return "\n".join(out)


def _history(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args.needs_paths
    if args.paths or args.file_list is not None or args.metadata_only:
        parser.error("--history lists past loads: give no PATH, --file-list or --metadata-only")
    with open_client(args) as client:
        records = client.load_history(limit=args.limit or None)
    if args.json:
        print_json(records)
    elif not records:
        print("no load yet")
    else:
        print(format_history(records))
    return 0


def _paths(args: argparse.Namespace) -> list[str]:
    parser: argparse.ArgumentParser = args.needs_paths
    if args.file_list is not None and args.paths:
        parser.error("give PATHs or --file-list, not both")
    if args.file_list is None:
        if not args.paths:
            parser.error("nothing to load: give one or more PATHs, or --file-list FILE")
        return args.paths
    if args.file_list == "-":
        paths = read_file_list(sys.stdin, "standard input")
    else:
        with open(args.file_list, encoding="utf-8") as f:
            paths = read_file_list(f, args.file_list)
    if not paths:
        raise ValueError(f"{args.file_list} lists no path")
    return paths


def _load(args: argparse.Namespace) -> int:
    if args.history:
        return _history(args)
    if args.json:
        args.needs_paths.error("--json goes with --history")
    paths = _paths(args)
    bar = None
    if not args.quiet:
        bar = ProgressBar(
            sys.stderr,
            "metadata" if args.metadata_only else "load",
            interval=args.progress_interval,
        )

    def progress(state) -> None:
        if bar is not None:
            bar.update(*state[:4])

    start = time.monotonic()
    with open_client(args) as client:
        try:
            final = client.load(
                paths, metadata_only=args.metadata_only, progress=progress, replicas=args.replicas
            )
        except BaseException:
            if bar is not None:
                bar.abort()
            raise
    if bar is not None:
        bar.update(*final[:4])
        bar.finish()
    elapsed = time.monotonic() - start
    if args.metadata_only:
        size = format_size(final.bytes_total)
        print(f"loaded the metadata of {final.files_total} files ({size})")
    else:
        rate = final.bytes_done / elapsed if elapsed > 0 else 0.0
        skipped = (
            f"; {format_size(final.bytes_skipped)} cached already" if final.bytes_skipped else ""
        )
        print(
            f"loaded {final.files_done} files, {format_size(final.bytes_done)} in "
            f"{format_duration(elapsed)} ({format_size(int(rate))}/s){skipped}"
        )
    return 0


def _free(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        freed = client.free(args.path)
    print(f"freed {freed['pages']} pages, {format_size(freed['bytes'])} under {args.path}")
    return 0
