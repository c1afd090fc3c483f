"""``shoal workers`` (the cluster's workers) and ``shoal worker drain|undrain ID``."""

from __future__ import annotations

import argparse

from .._units import format_size
from ._common import format_table, print_json

__all__ = [
    "ETCD_CREDENTIAL_FLAGS",
    "add_etcd_credential_options",
    "drain",
    "register",
    "render_workers",
]

#: Flags (and Config fields) of what etcd is shown: ``add_etcd_credential_options`` adds them.
ETCD_CREDENTIAL_FLAGS = ("etcd_user", "etcd_password_file", "etcd_ca", "etcd_cert", "etcd_key")


def add_etcd_credential_options(group) -> None:
    """Add the ``--etcd-user`` ... flags (credentials by reference: paths, never secrets)."""
    group.add_argument(
        "--etcd-user",
        metavar="NAME",
        help="etcd user to authenticate as, with --etcd-password-file ($SHOAL_ETCD_USER)",
    )
    group.add_argument(
        "--etcd-password-file",
        metavar="FILE",
        help="file (mode 0600) holding the etcd user's password ($SHOAL_ETCD_PASSWORD_FILE)",
    )
    group.add_argument(
        "--etcd-ca",
        metavar="FILE",
        help="PEM CA certificates that an https:// etcd's certificate is checked against "
        "($SHOAL_ETCD_CA; default: the system's CAs)",
    )
    group.add_argument(
        "--etcd-cert",
        metavar="FILE",
        help="PEM client certificate shown to etcd, with --etcd-key ($SHOAL_ETCD_CERT)",
    )
    group.add_argument(
        "--etcd-key", metavar="FILE", help="PEM private key of --etcd-cert ($SHOAL_ETCD_KEY)"
    )


def _membership_source(args: argparse.Namespace):
    """``(etcd, membership_file, etcd credentials)`` from the flags over the configuration."""
    from .._config import load_config
    from ..control._etcd import EtcdCredentials

    names = ("etcd", "membership_file", *ETCD_CREDENTIAL_FLAGS)
    overrides = {name: getattr(args, name, None) for name in names}
    config = load_config(
        getattr(args, "config", None), home=getattr(args, "home", None), **overrides
    )
    if config.etcd is None and config.membership_file is None:
        raise ValueError(
            "no cluster configured: give --etcd URL (or --membership-file FILE), or set "
            "SHOAL_ETCD or etcd in config.yaml"
        )
    return config.etcd, config.membership_file, EtcdCredentials.from_config(config)


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

    etcd, members_file, credentials = _membership_source(args)
    if etcd is not None:
        with EtcdMembership(etcd, credentials=credentials) as membership:
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

    etcd, _, credentials = _membership_source(args)
    if etcd is None:
        raise ValueError(
            "drain needs etcd (--etcd URL or SHOAL_ETCD); with a membership file, set the "
            "worker's state to DRAINING in the file"
        )
    with EtcdMembership(etcd, credentials=credentials) as membership:
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
    add_etcd_credential_options(p.add_argument_group("etcd credentials"))
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_workers)
