"""``shoal mount add|rm|ls``: the mount table.

Credentials are passed by reference only (names of environment variables), and the table
is shown without secrets. The worker hides every value its mount policy would not admit
(an entry stored before the policy, or by another worker); this module masks once more
what could still be one, should an older worker send it: options whose name looks like a
secret, values shaped like a key, strings inside nested options, and URIs' userinfo.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from typing import Any

from ..control.ufs._options import looks_like_key, looks_secret, redact_uri
from ._common import add_home_option, format_table, open_client, path_arg, print_json, seconds_arg

__all__ = ["mount_options", "option_arg", "parse_option_value", "register", "render_mounts"]

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MASK = "<hidden>"


def parse_option_value(text: str) -> Any:
    """An ``-o`` value as the type it spells: int, float, ``true``/``false``, ``none``,
    else the text itself."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def option_arg(text: str) -> tuple[str, Any]:
    """argparse type of ``-o KEY=VALUE``."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not _KEY.match(key):
        raise argparse.ArgumentTypeError(
            f"expected KEY=VALUE with KEY made of letters, digits and _, got {text!r}"
        )
    return key, parse_option_value(value)


def replicas_arg(text: str) -> int | str:
    """``--replicas``: an int >= 1, or ``all``."""
    if text.strip().lower() == "all":
        return "all"
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1 or 'all', got {text!r}")
    return value


def mount_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options of ``mount add`` from its flags and ``-o`` pairs.

    Raises ``ValueError`` when a key is given twice (by a flag and ``-o``, or two ``-o``).
    """
    options: dict[str, Any] = {}
    flags = {
        "endpoint_url": args.endpoint_url,
        "region": args.region,
        "access_key_env": args.access_key_env,
        "secret_key_env": args.secret_key_env,
        "metadata_ttl": args.metadata_ttl,
        "replicas": args.replicas,
        "anonymous": True if args.anonymous else None,
    }
    for key, value in flags.items():
        if value is not None:
            options[key] = value
    for key, value in args.options:
        if key in options:
            raise ValueError(f"mount option {key!r} given twice")
        options[key] = value
    return options


def _masked(key: str, value: Any, nested: bool) -> bool:
    """True for a value that could be a secret: under a name that looks like one, shaped
    like a key, or a string inside a nested option (``headers={"Authorization": ...}``)."""
    if looks_secret(key):
        return True
    if isinstance(value, str):
        return nested or looks_like_key(value)
    return False


def _shown_value(key: str, value: Any, nested: bool = False) -> str:
    if _masked(key, value, nested):
        return _MASK
    if isinstance(value, Mapping):
        inner = ",".join(
            f"{k}={_shown_value(str(k), v, True)}" for k, v in sorted(value.items(), key=str)
        )
        return "{" + inner + "}"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def shown_options(options: Mapping[str, Any], nested: bool = False) -> dict[str, Any]:
    """``options`` with any value that could be a secret replaced by a mask."""
    out: dict[str, Any] = {}
    for key, value in options.items():
        if _masked(str(key), value, nested):
            out[key] = _MASK
        elif isinstance(value, Mapping):
            out[key] = shown_options(value, True)
        else:
            out[key] = value
    return out


def render_mounts(mounts) -> str:
    """The mount table as text: path, URI and options (``key=value``, secrets masked)."""
    if not mounts:
        return "no mounts (add one with `shoal mount add PATH URI`)"
    rows = []
    for m in mounts:
        opts = " ".join(
            f"{k}={_shown_value(str(k), v)}" for k, v in sorted(m.options.items(), key=str)
        )
        rows.append((m.path, redact_uri(m.uri), opts or "-"))
    return format_table(rows, ("PATH", "URI", "OPTIONS"))


def register(subparsers) -> None:
    """Add ``mount`` with its sub-commands ``add``, ``rm`` and ``ls``."""
    mount = subparsers.add_parser(
        "mount",
        help="add, remove and list mounts",
        description="The mount table maps Shoal paths to under-store URIs. It is kept by "
        "the worker and survives restarts.",
    )
    sub = mount.add_subparsers(dest="mount_command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "add",
        help="mount an under-store at a path",
        description="Mount URI (s3://bucket/prefix, file:///dir, or any fsspec URL) at "
        "PATH. The worker connects and lists one object first, so a bad URI, endpoint or "
        "credential fails here. Credentials are given by reference: the NAMES of "
        "environment variables that the worker reads. The worker mounts only URIs under "
        "its allowed_mounts (object stores by default, no file:// or http://), reads only "
        "the variables its credential_env allows (AWS_* by default) and files under its "
        "credential_dir, and takes literal values only for options that cannot hold a "
        "secret.",
    )
    p.add_argument("path", type=path_arg, metavar="PATH", help="Shoal path, e.g. /datasets/x")
    p.add_argument("uri", metavar="URI", help="under-store URI, e.g. s3://bucket/prefix")
    s3 = p.add_argument_group("S3 and S3-compatible stores")
    s3.add_argument("--endpoint-url", metavar="URL", help="http(s)://host[:port] of the service")
    s3.add_argument("--region", metavar="R", help="signing region")
    creds = p.add_argument_group("credentials (by reference only)")
    creds.add_argument(
        "--access-key-env",
        metavar="NAME",
        help="name of the environment variable holding the access key id",
    )
    creds.add_argument(
        "--secret-key-env",
        metavar="NAME",
        help="name of the environment variable holding the secret key",
    )
    creds.add_argument(
        "--anonymous", action="store_true", help="send unsigned requests (public buckets)"
    )
    behaviour = p.add_argument_group("mount behaviour")
    behaviour.add_argument(
        "--metadata-ttl",
        type=seconds_arg,
        metavar="S",
        help="seconds a stat or listing is cached (default 60)",
    )
    behaviour.add_argument(
        "--replicas",
        type=replicas_arg,
        metavar="K|all",
        help="in a cluster, workers that hold each chunk: K, or all of them (default 1)",
    )
    behaviour.add_argument(
        "-o",
        "--option",
        dest="options",
        type=option_arg,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other option of the store or the mount, e.g. -o addressing_style=path "
        "-o read_ahead=8 (repeatable)",
    )
    add_home_option(p)
    p.set_defaults(func=_add)

    p = sub.add_parser("rm", help="remove a mount", description="Remove the mount at PATH.")
    p.add_argument("path", type=path_arg, metavar="PATH", help="the mount point")
    add_home_option(p)
    p.set_defaults(func=_rm)

    p = sub.add_parser(
        "ls",
        help="list the mounts",
        description="List the mounts: path, URI and options. Credentials appear only as "
        "the names of the environment variables that hold them.",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    add_home_option(p)
    p.set_defaults(func=_ls)


def _add(args: argparse.Namespace) -> int:
    options = mount_options(args)
    with open_client(args) as client:
        mount = client.mount(args.path, args.uri, **options)
    print(f"mounted {mount.uri} at {mount.path}")
    return 0


def _rm(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        mount = client.unmount(args.path)
    print(f"unmounted {mount.path} ({mount.uri})")
    return 0


def _ls(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        mounts = client.mounts()
    if args.json:
        print_json(
            [
                {"path": m.path, "uri": redact_uri(m.uri), "options": shown_options(m.options)}
                for m in mounts
            ]
        )
    else:
        print(render_mounts(mounts))
    return 0
