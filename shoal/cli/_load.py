"""``shoal load`` (warm the cache, with a progress bar) and ``shoal free`` (drop it)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable

from .._units import format_size
from ._common import add_home_option, format_duration, open_client, path_arg
from ._mount import replicas_arg
from ._progress import ProgressBar

__all__ = ["read_file_list", "register"]


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
    out = p.add_argument_group("output")
    out.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    out.add_argument(
        "--progress-interval",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds between progress lines when stderr is not a terminal (default 5)",
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
            bar.update(*state)

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
        bar.update(*final)
        bar.finish()
    elapsed = time.monotonic() - start
    if args.metadata_only:
        size = format_size(final.bytes_total)
        print(f"loaded the metadata of {final.files_total} files ({size})")
    else:
        rate = final.bytes_done / elapsed if elapsed > 0 else 0.0
        print(
            f"loaded {final.files_done} files, {format_size(final.bytes_done)} in "
            f"{format_duration(elapsed)} ({format_size(int(rate))}/s)"
        )
    return 0


def _free(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        freed = client.free(args.path)
    print(f"freed {freed['pages']} pages, {format_size(freed['bytes'])} under {args.path}")
    return 0
