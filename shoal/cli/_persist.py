"""``shoal persist``: what the worker still has to upload to the under-stores, and a wait
until it is there."""

from __future__ import annotations

import argparse
import errno
import sys
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .._units import format_size
from ._common import add_home_option, format_duration, open_client, path_arg, seconds_arg
from ._progress import ProgressBar, add_progress_options
from ._report import files_phrase, writeback_lines

if TYPE_CHECKING:
    from ..client import Client

__all__ = ["register", "wait_for_uploads"]

#: Seconds between two looks at the write-back counters while waiting.
_POLL = 0.25


def register(subparsers) -> None:
    """Add ``persist``."""
    p = subparsers.add_parser(
        "persist",
        help="show or wait for the uploads still pending",
        description="Show what the worker still has to upload to the under-stores (files "
        "written in write_back mode: durable on this node, uploaded in the background), "
        "and whether PATH has an upload pending. With --wait, wait until everything under "
        "PATH (default: everything) is in its under-store; progress goes to stderr. Exit "
        "status 1 when --timeout passes first.",
    )
    p.add_argument(
        "path", type=path_arg, nargs="?", metavar="PATH", help="a file or directory (default: all)"
    )
    wait = p.add_argument_group("waiting")
    wait.add_argument(
        "--wait", action="store_true", help="wait until everything under PATH is uploaded"
    )
    wait.add_argument(
        "--timeout",
        type=seconds_arg,
        metavar="S",
        help="with --wait: give up after S seconds (default: no limit)",
    )
    add_progress_options(p)
    add_home_option(p)
    p.set_defaults(func=_persist, parser=p)


def progress_bar(args: argparse.Namespace) -> ProgressBar | None:
    """The progress display of an upload wait on stderr; None with ``--quiet``."""
    if getattr(args, "quiet", False):
        return None
    return ProgressBar(sys.stderr, "upload", interval=getattr(args, "progress_interval", 5.0))


def wait_for_uploads(
    client: Client, path: str | None, timeout: float | None, bar: ProgressBar | None
) -> tuple[int, int]:
    """Block until every upload pending under ``path`` (everything for None) reached its
    under-store, showing the worker's write-back counters on ``bar`` (all of its uploads,
    whatever the path).

    Returns
    -------
    tuple of int
        Files and bytes the worker uploaded meanwhile.

    Raises
    ------
    TimeoutError
        ``timeout`` seconds passed first; the message names the files and bytes left under
        ``path``.
    """
    first = client.report()["writeback"]
    outcome: list[BaseException | None] = []

    def wait() -> None:
        try:
            client.wait_persisted(path, timeout=timeout)
        except BaseException as exc:
            outcome.append(exc)
        else:
            outcome.append(None)

    def done(wb: Mapping[str, Any]) -> tuple[int, int]:
        return (
            wb["uploaded_files"] - first["uploaded_files"],
            wb["uploaded_bytes"] - first["uploaded_bytes"],
        )

    def draw(wb: Mapping[str, Any]) -> None:
        if bar is not None:
            files, size = done(wb)
            bar.update(files, files + wb["dirty_files"], size, size + wb["dirty_bytes"])

    # The wait in a thread of its own (the client serves each thread on its own connection),
    # the counters polled here: the bar moves while the worker holds the wait.
    waiter = threading.Thread(target=wait, name="shoal-persist-wait", daemon=True)
    try:
        draw(first)
        waiter.start()
        while waiter.is_alive():
            waiter.join(_POLL)
            draw(client.report()["writeback"])
        if outcome[0] is not None:
            raise outcome[0]
        wb = client.report()["writeback"]
    except BaseException:
        if bar is not None:
            bar.abort()
        raise
    if bar is not None:
        draw(wb)
        bar.finish()
    return done(wb)


def _check_mounted(client: Client, path: str) -> None:
    """``FileNotFoundError`` when ``path`` is under no mount (nothing can be pending there)."""
    if path == "/":
        return
    for m in client.mounts():
        point = m.path.rstrip("/")
        if path == point or path.startswith(point + "/"):
            return
    raise FileNotFoundError(
        errno.ENOENT,
        f"persist {path}: the path is under no mount (see `shoal mount ls`)",
        path,
    )


def _state_of(client: Client, path: str) -> str:
    """Whether ``path`` (a file, or a directory: the files under it) waits for uploads."""
    try:
        client.wait_persisted(path, timeout=0)
        under = False
    except TimeoutError:
        under = True
    if client.persisted(path):
        return "uploads pending under it" if under else "persisted"
    # A write of the path itself that no upload waits for is one kept on the node only.
    return "upload pending" if under else "not persisted (cache_only: kept on this node only)"


def _persist(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args.parser
    if args.timeout is not None and not args.wait:
        parser.error("--timeout goes with --wait")
    with open_client(args) as client:
        if args.path is not None:
            _check_mounted(client, args.path)
        if not args.wait:
            for line in writeback_lines(client.report()["writeback"]):
                print(line)
            if args.path is not None:
                print(f"{args.path}: {_state_of(client, args.path)}")
            return 0
        start = time.monotonic()
        files, size = wait_for_uploads(client, args.path, args.timeout, progress_bar(args))
    where = "everything" if args.path is None else f"everything under {args.path}"
    text = f"{where} is in its under-store"
    if files:
        text += (
            f" (waited {format_duration(time.monotonic() - start)}; the worker uploaded "
            f"{files_phrase(files)}, {format_size(size)} meanwhile)"
        )
    print(text)
    return 0
