"""``shoal ls``, ``shoal stat`` and ``shoal cat``: the namespace, read through the worker."""

from __future__ import annotations

import argparse
import errno
import os
import posixpath
import sys
from collections.abc import Sequence

from ._common import (
    add_home_option,
    format_bytes,
    format_mtime,
    format_table,
    open_client,
    path_arg,
    print_json,
    size_arg,
)

__all__ = ["register", "render_listing", "render_stat"]

#: Bytes ``cat`` reads per call: large enough to keep the worker busy, small enough for RAM.
CAT_CHUNK = 8 << 20


def _name(info) -> str:
    name = posixpath.basename(info.path) or info.path
    return name + "/" if info.is_dir else name


def render_listing(entries: Sequence, long: bool = False) -> str:
    """Entries of ``ls``: names (directories end in ``/``), or with ``long`` one line
    each with type, size in bytes, modification time and name."""
    if not long:
        return "\n".join(_name(e) for e in entries)
    rows = [("d" if e.is_dir else "-", e.size, format_mtime(e.mtime), _name(e)) for e in entries]
    return format_table(rows, ("TYPE", "SIZE", "MODIFIED", "NAME"), right=(1,))


def _info_doc(info) -> dict:
    return {
        "path": info.path,
        "type": "directory" if info.is_dir else "file",
        "size": info.size,
        "mtime": info.mtime,
        "version": info.version,
    }


def render_stat(info) -> str:
    """``stat`` output: one ``field  value`` line per attribute."""
    rows = [
        ("path", info.path),
        ("type", "directory" if info.is_dir else "file"),
        ("size", format_bytes(info.size)),
        ("modified", format_mtime(info.mtime)),
        ("version", info.version or "-"),
    ]
    return "\n".join(f"{k:<9}{v}" for k, v in rows)


def register(subparsers) -> None:
    """Add ``ls``, ``stat`` and ``cat``."""
    p = subparsers.add_parser(
        "ls",
        help="list a directory",
        description="List the files and directories under PATH (mount points included); "
        "for a file, the file itself.",
    )
    p.add_argument("path", type=path_arg, metavar="PATH", nargs="?", default="/")
    fmt = p.add_argument_group("output")
    fmt.add_argument(
        "-l", dest="long", action="store_true", help="long format: type, size, time, name"
    )
    fmt.add_argument("--json", action="store_true", help="print JSON")
    add_home_option(p)
    p.set_defaults(func=_ls)

    p = subparsers.add_parser(
        "stat",
        help="show a file's metadata",
        description="Show the size, modification time and version of PATH.",
    )
    p.add_argument("path", type=path_arg, metavar="PATH")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_home_option(p)
    p.set_defaults(func=_stat)

    p = subparsers.add_parser(
        "cat",
        help="write a file's bytes to stdout",
        description="Write the bytes of PATH (or of a range of it) to standard output, "
        "read through the cache.",
    )
    p.add_argument("path", type=path_arg, metavar="PATH")
    rng = p.add_argument_group("range")
    rng.add_argument(
        "--offset", type=size_arg, default=0, metavar="N", help="first byte (default 0)"
    )
    rng.add_argument(
        "--length", type=size_arg, metavar="N", help="bytes to write (default: to the end)"
    )
    add_home_option(p)
    p.set_defaults(func=_cat)


def _ls(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        entries = client.ls(args.path)
    if args.json:
        print_json([_info_doc(e) for e in entries])
    elif entries:
        print(render_listing(entries, long=args.long))
    return 0


def _stat(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        info = client.stat(args.path)
    if args.json:
        print_json(_info_doc(info))
    else:
        print(render_stat(info))
    return 0


def _write_all(fd: int, data: memoryview) -> None:
    # os.write straight to the descriptor: a reader that went away fails the next write
    # with EPIPE (the buffered stdout may not report it).
    while data:
        n = os.write(fd, data)
        data = data[n:]


def _cat(args: argparse.Namespace) -> int:
    sys.stdout.flush()
    fd = sys.stdout.fileno()
    with open_client(args) as client:
        info = client.stat(args.path)
        if info.is_dir:
            raise IsADirectoryError(errno.EISDIR, "is a directory", args.path)
        end = info.size if args.length is None else min(info.size, args.offset + args.length)
        pos = args.offset
        buf = memoryview(bytearray(max(0, min(CAT_CHUNK, end - pos))))
        while pos < end:
            n = client.read_into(buf[: min(len(buf), end - pos)], args.path, pos)
            if n == 0:
                raise OSError(
                    errno.EIO, f"file ended at byte {pos}, its size was {info.size}", args.path
                )
            _write_all(fd, buf[:n])
            pos += n
    return 0
