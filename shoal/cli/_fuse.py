"""``shoal fuse mount|umount``: Shoal's namespace as a file system."""

from __future__ import annotations

import argparse
import functools
import os

from ._common import add_home_option, size_arg

__all__ = ["register"]


def register(subparsers) -> None:
    """Add ``fuse mount`` and ``fuse umount``."""
    p = subparsers.add_parser(
        "fuse",
        help="mount the Shoal namespace as a file system",
        description="Serve the whole Shoal namespace (every mount, as a directory) at a "
        "mount point, read-only, from a process of its own: a worker that restarts under "
        "it costs no error. Plain open()/read() then reads through Shoal's cache.",
    )
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    m = sub.add_parser(
        "mount",
        help="mount at MOUNTPOINT",
        description="Mount Shoal at MOUNTPOINT (an existing directory; a dead Shoal mount "
        "there, whose process is gone, is replaced). Without --foreground the mount is "
        "served by a daemon and the command returns once it answers; the daemon mounts "
        "again at once if the process serving the mount dies. `shoal fuse umount "
        "MOUNTPOINT` stops it.",
    )
    m.add_argument("mountpoint", metavar="MOUNTPOINT")
    m.add_argument(
        "-f", "--foreground", action="store_true", help="serve in this process until unmounted"
    )
    m.add_argument(
        "--allow-other",
        action="store_true",
        help="let other users read the mount (non-root: needs user_allow_other in /etc/fuse.conf)",
    )
    m.add_argument(
        "--threads", type=int, default=16, metavar="N", help="requests served at once (16)"
    )
    m.add_argument(
        "--read-ahead",
        type=size_arg,
        default=None,
        metavar="SIZE",
        help="the kernel's read-ahead for the mount (root only; default 8MiB)",
    )
    m.add_argument("--etcd", metavar="URL", help="read through a cluster: its etcd ($SHOAL_ETCD)")
    m.add_argument("--log", metavar="FILE", help="the daemon's log (default: discarded)")
    m.add_argument(
        "--no-restart",
        dest="restart",
        action="store_false",
        help="when the process serving the mount dies, leave the mount dead (default: a "
        "new one mounts it again at once)",
    )
    add_home_option(m)
    m.set_defaults(func=_mount)

    u = sub.add_parser(
        "umount",
        aliases=["unmount"],
        help="unmount MOUNTPOINT",
        description="Unmount the Shoal FUSE mount at MOUNTPOINT; its daemon exits.",
    )
    u.add_argument("mountpoint", metavar="MOUNTPOINT")
    u.add_argument(
        "-z", "--lazy", action="store_true", help="detach now, even while files are open"
    )
    u.set_defaults(func=_umount)


#: Seconds the mount's client keeps a file's metadata: the kernel keeps attributes for the
#: mount's metadata TTL already; this only spares the worker a second question when a
#: lookup is followed by an open, and bounds how late a new version is seen at open.
FUSE_CLIENT_METADATA_TTL = 1.0


def _client(home: str | None, etcd: str | None):
    from .._config import load_config
    from ..client import Client

    return Client(load_config(home=home), etcd=etcd, metadata_ttl=FUSE_CLIENT_METADATA_TTL)


def _mount(args: argparse.Namespace) -> int:
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    try:
        from ..fuse import DEFAULT_READ_AHEAD, mount
    except ImportError as exc:
        raise ImportError(
            f"the FUSE mount needs pyfuse3 ({exc}): pip install 'shoal[fuse]' (with Debian's "
            "fuse3, libfuse3-dev and pkg-config installed)"
        ) from None
    read_ahead = DEFAULT_READ_AHEAD if args.read_ahead is None else args.read_ahead
    log_file = os.path.abspath(args.log) if args.log else None
    home = os.path.abspath(os.path.expanduser(args.home)) if args.home else None
    pid = mount(
        args.mountpoint,
        functools.partial(_client, home, args.etcd),
        foreground=args.foreground,
        allow_other=args.allow_other,
        threads=args.threads,
        read_ahead=read_ahead,
        log_file=log_file,
        restart=args.restart,
    )
    if not args.foreground:
        print(f"mounted Shoal at {os.path.abspath(args.mountpoint)} (pid {pid})")
    return 0


def _umount(args: argparse.Namespace) -> int:
    from ..fuse import unmount

    unmount(args.mountpoint, lazy=args.lazy)
    return 0
