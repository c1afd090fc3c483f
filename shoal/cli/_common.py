"""Pieces every command group uses: argument types, the ``--home`` option, the client,
and plain-text formatting (tables, sizes, durations)."""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
from collections.abc import Sequence
from typing import IO, Any

from .._units import format_size, parse_size
from ..control._namespace import normalize_path

__all__ = [
    "add_home_option",
    "describe_error",
    "format_duration",
    "format_mtime",
    "format_table",
    "open_client",
    "path_arg",
    "print_json",
    "seconds_arg",
    "size_arg",
]


def size_arg(text: str) -> int:
    """argparse type: a byte size such as ``4096``, ``64MiB`` or ``10G``."""
    try:
        return parse_size(text, "size")
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size (examples: 4096, 64MiB, 10G, 2TB)"
        ) from None


def seconds_arg(text: str) -> float:
    """argparse type: a number of seconds >= 0."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds >= 0")
    return value


def path_arg(text: str) -> str:
    """argparse type: a Shoal path, normalised (absolute, no ``..``, no NUL byte)."""
    try:
        return normalize_path(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_home_option(parser: argparse.ArgumentParser) -> None:
    """``--home``: the Shoal home whose worker the command talks to."""
    group = parser.add_argument_group("worker")
    group.add_argument(
        "--home",
        metavar="DIR",
        help="Shoal home of the worker to use (default: $SHOAL_HOME, else ~/.shoal)",
    )


def open_client(args: argparse.Namespace):
    """A :class:`shoal.Client` of the worker under ``args.home`` (started when absent)."""
    from .._config import load_config
    from ..client import Client

    return Client(load_config(home=getattr(args, "home", None)))


def describe_error(exc: BaseException) -> str:
    """A one-line (where possible) account of ``exc`` for ``shoal: error: ...``."""
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
        if exc.filename is not None and str(exc.filename) not in text:
            text = f"{text}: {exc.filename}"
    else:
        text = str(exc)
        if isinstance(exc, KeyError) and exc.args:
            text = str(exc.args[0])
    if not text:
        return type(exc).__name__
    if not isinstance(exc, (OSError, ValueError, TypeError)):
        return f"{type(exc).__name__}: {text}"
    return text


def format_table(
    rows: Sequence[Sequence[Any]],
    headers: Sequence[str],
    right: Sequence[int] = (),
) -> str:
    """Rows as aligned columns under ``headers``; columns in ``right`` align right.

    The last column is not padded, so lines carry no trailing blanks.
    """
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        parts = []
        for i, cell in enumerate(row):
            last = i == len(row) - 1
            if i in right:
                parts.append(cell.rjust(widths[i]))
            else:
                parts.append(cell if last else cell.ljust(widths[i]))
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def format_duration(seconds: float) -> str:
    """``seconds`` for people: ``850ms``, ``12.3s``, ``4m05s``, ``3h02m``, ``2d04h``."""
    if seconds < 0:
        seconds = 0.0
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def format_mtime(mtime: float) -> str:
    """A modification time in local time, to the second; ``-`` when unknown (0)."""
    if not mtime:
        return "-"
    return _dt.datetime.fromtimestamp(mtime).strftime("%Y-%m-%d %H:%M:%S")


def format_bytes(n: int) -> str:
    """Bytes for people, with the exact count when it is not already exact."""
    text = format_size(n)
    return text if text.endswith(" B") else f"{text} ({n} B)"


def print_json(doc: Any, stream: IO[str] | None = None) -> None:
    """``doc`` as indented JSON, keys sorted, on ``stream`` (stdout)."""
    stream = stream if stream is not None else sys.stdout
    json.dump(doc, stream, indent=2, sort_keys=True, default=str)
    stream.write("\n")


def env_flag(name: str) -> bool:
    """True when environment variable ``name`` is set to something other than 0/empty."""
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")
