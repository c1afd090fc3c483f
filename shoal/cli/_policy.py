"""``shoal policy set|rm|ls|show``: policies on path prefixes (see ``control._policy``).

Values are checked as the flags are read (a bad one is a usage error); the worker checks
them again and refuses the fields it does not enforce yet.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from typing import Any

from ..control._policy import FIELDS, PRIORITIES, TIERS, WRITE_MODES, Policy, field_name
from ..control._policy import format_duration as spell_duration
from ._common import add_home_option, format_bytes, format_table, open_client, path_arg, print_json

__all__ = ["register", "render_effective", "render_policies", "render_value"]

_DURATIONS = ("ttl", "metadata_ttl")


def _int_or_text(text: str) -> int | str:
    try:
        return int(text)
    except ValueError:
        return text


def _field_arg(name: str, convert: Callable[[str], Any] = str) -> Callable[[str], Any]:
    """argparse type of the flag of field ``name``: its value, checked and canonical."""

    def parse(text: str) -> Any:
        try:
            return Policy(**{name: convert(text)}).to_json()[name]
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def _name_arg(text: str) -> str:
    """argparse type of a field name (``write-mode`` or ``write_mode``)."""
    try:
        return field_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def render_value(name: str, value: Any) -> str:
    """A field's value as people write it: ``10m``, ``1.0 GiB (1073741824 B)``, ``true``;
    ``-`` for None."""
    if value is None:
        return "-"
    if name in _DURATIONS:
        return spell_duration(value)
    if name == "quota":
        return format_bytes(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _fields_text(policy: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={render_value(k, v)}" for k, v in policy.items()) or "-"


def render_policies(rules: list[dict]) -> str:
    """Policies (``Client.policies()``) as a table: path, then the fields set."""
    if not rules:
        return "no policies (set one with `shoal policy set PATH ...`)"
    return format_table([(r["path"], _fields_text(r["policy"])) for r in rules], ("PATH", "POLICY"))


def render_effective(doc: Mapping[str, Any]) -> str:
    """The policy in force at a path (``Client.effective_policy()``): per field its value
    and where it comes from."""
    rows = [
        (name, render_value(name, doc["policy"][name]), doc["sources"][name] or "-")
        for name in FIELDS
    ]
    head = f"path   {doc['path']}\nmount  {doc['mount']}\n\n"
    return head + format_table(rows, ("FIELD", "VALUE", "FROM"))


def register(subparsers) -> None:
    """Add ``policy`` with its sub-commands ``set``, ``rm``, ``ls`` and ``show``."""
    policy = subparsers.add_parser(
        "policy",
        help="set, remove and show policies on path prefixes",
        description="A policy sets fields on a path prefix; for each field the longest "
        "prefix that sets it wins, and the mount's options are the defaults. Policies are "
        "kept by the worker (in etcd in a cluster) and every worker follows a change within "
        "seconds. Every field is enforced.",
    )
    sub = policy.add_subparsers(dest="policy_command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "set",
        help="set fields of the policy on a prefix",
        description="Set fields of the policy on PATH (a prefix under a mount); the fields "
        "not given keep their values. Durations: 30s, 10m, 2h, 7d, or seconds.",
    )
    p.add_argument("path", type=path_arg, metavar="PATH", help="the prefix, e.g. /datasets/x")
    enforced = p.add_argument_group("fields enforced")
    enforced.add_argument(
        "--metadata-ttl",
        type=_field_arg("metadata_ttl"),
        metavar="D",
        help="how long a stat or listing is cached, e.g. 0s, 30s, 10m",
    )
    enforced.add_argument(
        "--read-ahead",
        type=_field_arg("read_ahead", _int_or_text),
        metavar="N",
        help="pages fetched ahead of a sequential reader",
    )
    enforced.add_argument(
        "--replicas",
        type=_field_arg("replicas", _int_or_text),
        metavar="K|all",
        help="in a cluster, workers that hold each chunk: K, or all of them",
    )
    enforced.add_argument(
        "--tier",
        type=_field_arg("tier"),
        metavar="T",
        help=f"where new pages go: {', '.join(TIERS)}",
    )
    enforced.add_argument(
        "--ttl",
        type=_field_arg("ttl"),
        metavar="D",
        help="pages cached longer ago than this are not served, and are reclaimed",
    )
    enforced.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="never evict the pages (--no-pin: may be evicted)",
    )
    enforced.add_argument(
        "--priority",
        type=_field_arg("priority"),
        metavar="P",
        help=f"eviction order: {', '.join(PRIORITIES)}",
    )
    enforced.add_argument(
        "--quota",
        type=_field_arg("quota"),
        metavar="SIZE",
        help="bytes cached under the prefix at most, per worker, e.g. 10G",
    )
    later = p.add_argument_group("fields not enforced yet (refused by this version)")
    later.add_argument(
        "--write-mode",
        type=_field_arg("write_mode"),
        metavar="M",
        help=", ".join(m.replace("_", "-") for m in WRITE_MODES),
    )
    add_home_option(p)
    p.set_defaults(func=_set, parser=p)

    p = sub.add_parser(
        "rm",
        help="remove fields of a policy, or the whole policy",
        description="Remove FIELDs of the policy on PATH, or the whole policy when no FIELD "
        "is given; the values in force there then come from shorter prefixes and the mount.",
    )
    p.add_argument("path", type=path_arg, metavar="PATH", help="the prefix of the policy")
    p.add_argument("fields", type=_name_arg, nargs="*", metavar="FIELD", help="e.g. read-ahead")
    add_home_option(p)
    p.set_defaults(func=_rm)

    p = sub.add_parser("ls", help="list the policies", description="List every policy.")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_home_option(p)
    p.set_defaults(func=_ls)

    p = sub.add_parser(
        "show",
        help="show the policy in force at a path",
        description="Show the policy in force at PATH: per field its value and where it "
        "comes from (the prefix of a policy, the mount's option, or Shoal's default).",
    )
    p.add_argument("path", type=path_arg, metavar="PATH", help="a path under a mount")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_home_option(p)
    p.set_defaults(func=_show)


def _set(args: argparse.Namespace) -> int:
    fields = {name: getattr(args, name) for name in FIELDS if getattr(args, name) is not None}
    if not fields:
        args.parser.error("give at least one field to set, e.g. --metadata-ttl 30s")
    with open_client(args) as client:
        rule = client.set_policy(args.path, **fields)
    print(f"policy on {rule['path']}: {_fields_text(rule['policy'])}")
    return 0


def _rm(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        rule = client.remove_policy(args.path, *args.fields)
    if rule["policy"]:
        print(f"policy on {rule['path']}: {_fields_text(rule['policy'])}")
    else:
        print(f"policy on {rule['path']} removed")
    return 0


def _ls(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        rules = client.policies()
    if args.json:
        print_json(rules)
    else:
        print(render_policies(rules))
    return 0


def _show(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        doc = client.effective_policy(args.path)
    if args.json:
        print_json(doc)
    else:
        print(render_effective(doc))
    return 0
