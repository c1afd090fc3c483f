"""The parser of the ``shoal`` command and its entry point."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence

from .. import __version__
from . import (
    _du,
    _fs,
    _fuse,
    _load,
    _mount,
    _persist,
    _policy,
    _report,
    _secret,
    _worker,
    _workers,
)
from ._common import describe_error, env_flag

__all__ = ["build_parser", "main"]

_EPILOG = """\
commands by topic:
  daemon      worker, up, down
  namespace   mount add|rm|ls, ls, stat, cat
  files       fuse mount|umount MOUNTPOINT
  cache       load, free, report [--cluster], du PATH
  uploads     persist [PATH] [--wait]
  policies    policy set|rm|ls|show
  cluster     workers, worker drain|undrain ID
  security    secret new FILE

Every command talks to the worker of $SHOAL_HOME (default ~/.shoal), starting it when
none runs (except `down` and `secret`). Sizes accept units: 4096, 64MiB, 10G, 2TB.
Exit status: 0 ok, 1 error (message on stderr), 2 bad usage.
Set SHOAL_DEBUG=1 to see a traceback with an error.
"""


def build_parser() -> argparse.ArgumentParser:
    """The ``shoal`` argument parser, every command registered."""
    parser = argparse.ArgumentParser(
        prog="shoal",
        description="Shoal: a data orchestration and caching layer for AI training.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"shoal {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    groups = (
        _worker, _mount, _fs, _fuse, _load, _persist, _report, _du, _policy, _workers, _secret,
    )  # fmt: skip
    for group in groups:
        group.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``shoal`` command with ``argv`` (default ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit status: 0 ok, 1 a runtime error (reported on stderr as
        ``shoal: error: ...``), 2 bad usage (argparse exits with it), 130 interrupted.
    """
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("shoal: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of our output went away (`shoal cat ... | head`): stop quietly, and
        # keep the interpreter's final flush from failing again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 141
    except Exception as exc:
        if env_flag("SHOAL_DEBUG"):
            traceback.print_exc()
        print(f"shoal: error: {describe_error(exc)}", file=sys.stderr)
        return 1
