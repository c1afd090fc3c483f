"""``shoal workers`` (the cluster's workers) and ``shoal worker drain|undrain ID``."""

from __future__ import annotations

import argparse

from .._units import format_size
from ._common import format_table, print_json

__all__ = ["drain", "register", "render_workers"]


def _membership_source(args: argparse.Namespace):
    """``(etcd, membership_file)`` from the flags, else from the configuration."""
    from .._config import load_config

    etcd = getattr(args, "etcd", None)
    members_file = getattr(args, "membership_file", None)
    if etcd is None and members_file is None:
        config = load_config(home=getattr(args, "home", None))
        etcd, members_file = config.etcd, config.membership_file
    if etcd is None and members_file is None:
        raise ValueError(
            "no cluster configured: give --etcd URL (or --membership-file FILE), or set "
            "SHOAL_ETCD or etcd in config.yaml"
        )
    return etcd, members_file


def render_workers(workers) -> str:
    """The table of ``shoal workers``: one line per worker, then a total."""
    rows = []
    for w in workers:
        use = f"{100 * w.used / w.capacity:.0f}%" if w.capacity else "-"
        rows.append(
            [w.id, w.state.value, w.host_id, w.address or "-", format_size(w.capacity),
             format_size(w.used), use]
        )  # fmt: skip
    table = format_table(
        rows, ["ID", "STATE", "HOST", "ADDRESS", "CAPACITY", "USED", "USE"], right=(4, 5, 6)
    )
    online = sum(1 for w in workers if w.state.value == "ONLINE")
    return f"{table}\n{len(workers)} worker(s), {online} online"


def _workers(args: argparse.Namespace) -> int:
    from ..control._membership import EtcdMembership, StaticMembership

    etcd, members_file = _membership_source(args)
    if etcd is not None:
        with EtcdMembership(etcd) as membership:
            workers = membership.roster()
    else:
        with StaticMembership(members_file) as membership:
            workers = membership.roster()
    if args.json:
        print_json([w.to_dict() for w in workers])
    elif not workers:
        print("no worker has registered")
    else:
        print(render_workers(workers))
    return 0


def drain(args: argparse.Namespace) -> int:
    """``shoal worker drain|undrain ID``: take a worker out of placement, or back in."""
    from ..control._membership import EtcdMembership

    etcd, _ = _membership_source(args)
    if etcd is None:
        raise ValueError(
            "drain needs etcd (--etcd URL or SHOAL_ETCD); with a membership file, set the "
            "worker's state to DRAINING in the file"
        )
    with EtcdMembership(etcd) as membership:
        if args.action == "drain":
            info = membership.drain(args.worker_id)
        else:
            info = membership.undrain(args.worker_id)
    verb = "drained" if args.action == "drain" else "back in placement"
    print(f"worker {info.id} {verb} (now {info.state.value})")
    return 0


def register(subparsers) -> None:
    """Add ``workers``."""
    p = subparsers.add_parser(
        "workers",
        help="list the cluster's workers",
        description="List every worker of the cluster: ONLINE (in placement), DRAINING "
        "(serving, taking no new data) or OFFLINE (registered once, gone now), with its "
        "host, address, capacity and use.",
    )
    group = p.add_argument_group("cluster")
    group.add_argument("--etcd", metavar="URL", help="etcd endpoint ($SHOAL_ETCD)")
    group.add_argument(
        "--membership-file", metavar="FILE", help="the cluster's membership file instead"
    )
    group.add_argument("--home", metavar="DIR", help="Shoal home whose config.yaml to read")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_workers)
