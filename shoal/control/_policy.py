"""Policies as data: what Shoal does with the files under a path prefix.

A :class:`Policy` is a frozen, validated record of the fields an operator sets on one
prefix; a :class:`PolicyTable` holds the policy of each prefix and resolves a path field by
field: for each field the longest prefix that sets it wins (by whole path components:
``/a/b`` covers ``/a/b/c``, never ``/a/bc``). Under a mount, the mount's own options
(:data:`MOUNT_FIELDS`) are the defaults of the fields of the same name.

Durations are written ``30s``, ``10m``, ``2h``, ``7d`` or as seconds; sizes as
:func:`shoal._units.parse_size` reads them. The model holds every field; this version
enforces those of :data:`ENFORCED`, and the worker refuses to set the others
(:func:`check_enforced`) rather than keep a promise it cannot.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, fields
from decimal import Decimal
from types import MappingProxyType
from typing import Any

from .._units import parse_size
from ._namespace import MOUNT_OPTIONS, TIER_NAMES, WRITE_MODES, Mount, split_mount_options

__all__ = [
    "ENFORCED",
    "FIELDS",
    "MAX_POLICIES",
    "MOUNT_FIELDS",
    "OWN_DEFAULTS",
    "PRIORITIES",
    "TIERS",
    "WRITE_MODES",
    "Policy",
    "PolicyTable",
    "check_enforced",
    "effective",
    "field_name",
    "format_duration",
    "parse_duration",
]

TIERS = TIER_NAMES
PRIORITIES = ("high", "normal", "low")
#: Fields whose default under a mount is the mount's option of the same name.
MOUNT_FIELDS = MOUNT_OPTIONS
#: Fields this version of Shoal enforces; setting any other is refused.
ENFORCED = frozenset(
    {
        "metadata_ttl",
        "read_ahead",
        "replicas",
        "tier",
        "pin",
        "ttl",
        "priority",
        "quota",
        "write_mode",
    }
)
#: What a file's options hold for the enforced fields that are no mount option, when no
#: policy sets them: no TTL (0), normal priority, no quota (``quota_at``: the prefix of
#: the rule a file's quota comes from, which its cached bytes count against).
OWN_DEFAULTS: Mapping[str, Any] = MappingProxyType(
    {"ttl": 0.0, "priority": "normal", "quota": None, "quota_at": None}
)
_OWN_FIELDS = frozenset(MOUNT_FIELDS) | {"ttl", "priority", "quota"}
#: Prefixes with a policy, at most.
MAX_POLICIES = 1024

_MAX_INT = 1 << 31  # replicas and read-ahead pages at most (and what a request carries)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$", re.IGNORECASE)
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_RULE = "/"  # key of a node's rule in the prefix tree (no component holds a "/")


def parse_duration(value: Any, field: str = "duration") -> float:
    """Seconds in ``value``: a number of seconds, or a number with a unit (``30s``,
    ``10m``, ``2h``, ``7d``).

    Raises ``ValueError`` naming ``field`` for anything else, a negative or infinite one.
    """
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match is None:
            if value.strip().startswith("-"):
                raise ValueError(f"{field}: a duration must be >= 0, got {value!r}")
            raise ValueError(f"{field}: {value!r} is not a duration (examples: 30s, 10m, 2h, 7d)")
        seconds = float(match.group(1)) * _SECONDS[match.group(2).lower()]
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except OverflowError:
            seconds = math.inf
    else:
        raise ValueError(f"{field}: expected a duration such as 30s, 10m, 2h or 7d, got {value!r}")
    if not 0 <= seconds < math.inf:  # NaN fails too
        raise ValueError(
            f"{field}: a duration must be a finite number of seconds >= 0, got {value!r}"
        )
    return seconds


def format_duration(seconds: float) -> str:
    """``seconds`` as :func:`parse_duration` reads it back, in the largest exact unit:
    ``0s``, ``90s``, ``10m``, ``2h``, ``7d``, ``1.5s``."""
    if seconds != int(seconds):
        return f"{Decimal(repr(seconds)):f}s"  # the float's shortest exact digits, no exponent
    whole = int(seconds)
    for unit in ("d", "h", "m"):
        if whole and whole % _SECONDS[unit] == 0:
            return f"{whole // _SECONDS[unit]}{unit}"
    return f"{whole}s"


def _ttl(value: Any) -> float:
    seconds = parse_duration(value, "ttl")
    if seconds == 0:
        raise ValueError(f"ttl: must be longer than 0 s, got {value!r}")
    return seconds


def _choice(
    field: str, value: Any, allowed: tuple[str, ...], canonical: Callable[[str], str]
) -> str:
    text = canonical(value) if isinstance(value, str) else None
    if text not in allowed:
        spelled = ", ".join(a.replace("_", "-") for a in allowed)
        raise ValueError(f"{field}: {value!r} is not one of {spelled}")
    return text


def _count(field: str, value: Any, low: int, spelled: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value < _MAX_INT:
        raise ValueError(f"{field}: expected {spelled}, got {value!r}")
    return value


def _replicas(value: Any) -> int | str:
    if isinstance(value, str) and value.strip().lower() == "all":
        return "all"
    return _count("replicas", value, 1, "an int >= 1 (below 2**31) or 'all'")


def _quota(value: Any) -> int:
    if isinstance(value, str) and value.strip().startswith("-"):
        raise ValueError(f"quota: a size must be more than 0 bytes, got {value!r}")
    size = parse_size(value, "quota")
    if not 0 < size < 1 << 63:
        raise ValueError(f"quota: must be more than 0 bytes and less than 2**63, got {value!r}")
    return size


def _pin(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"pin: expected true or false, got {value!r}")
    return value


#: field -> the function that checks a value and returns its canonical form.
_PARSERS = {
    "tier": lambda v: _choice("tier", v, TIERS, lambda t: t.strip().upper()),
    "ttl": _ttl,
    "pin": _pin,
    "priority": lambda v: _choice("priority", v, PRIORITIES, lambda t: t.strip().lower()),
    "quota": _quota,
    "replicas": _replicas,
    "write_mode": lambda v: _choice(
        "write_mode", v, WRITE_MODES, lambda t: t.strip().lower().replace("-", "_")
    ),
    "metadata_ttl": lambda v: parse_duration(v, "metadata_ttl"),
    "read_ahead": lambda v: _count("read_ahead", v, 0, "an int >= 0 (pages, below 2**31)"),
}


def field_name(name: Any) -> str:
    """The policy field ``name`` spells (``write-mode`` is ``write_mode``); ``ValueError``
    for one that is no field."""
    text = name.strip().lower().replace("-", "_") if isinstance(name, str) else None
    if text not in _PARSERS:
        raise ValueError(f"unknown policy field {name!r} (fields: {', '.join(FIELDS)})")
    return text


@dataclass(frozen=True, slots=True)
class Policy:
    """The fields set on one path prefix; None for a field it leaves to shorter prefixes
    and the mount.

    Values are checked and made canonical when the record is made; a bad one raises
    ``ValueError`` naming the field and the value.

    Attributes
    ----------
    tier
        Where new pages go: ``MEM``, ``SSD`` or ``HDD``.
    ttl
        Seconds after which a cached page is no longer served (> 0).
    pin
        Pages never evicted.
    priority
        Eviction order: ``high``, ``normal`` or ``low``.
    quota
        Bytes cached under the prefix at most (> 0).
    replicas
        Workers holding each chunk in a cluster: an int >= 1 or ``"all"``.
    write_mode
        ``write_back``, ``write_through``, ``cache_only`` or ``read_only`` (hyphens
        accepted; see :data:`~shoal.control._namespace.WRITE_MODES`).
    metadata_ttl
        Seconds a stat or listing is cached (>= 0).
    read_ahead
        Pages fetched ahead of a sequential reader (>= 0).
    """

    tier: str | None = None
    ttl: float | None = None
    pin: bool | None = None
    priority: str | None = None
    quota: int | None = None
    replicas: int | str | None = None
    write_mode: str | None = None
    metadata_ttl: float | None = None
    read_ahead: int | None = None

    def __post_init__(self) -> None:
        for name, parse in _PARSERS.items():
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, parse(value))

    @classmethod
    def from_fields(cls, values: Mapping[str, Any]) -> Policy:
        """The policy that sets ``values`` (field -> value; ``write-mode`` spells
        ``write_mode`` too). ``ValueError`` for an unknown field, a bad value, or None (a
        field is removed, not set to None)."""
        out: dict[str, Any] = {}
        for key, value in values.items():
            name = field_name(key)
            if value is None:
                raise ValueError(
                    f"{name}: give a value (a field is removed with `shoal policy rm`)"
                )
            out[name] = value
        return cls(**out)

    def to_json(self) -> dict[str, Any]:
        """The fields set, in :data:`FIELDS` order."""
        return {f: v for f in FIELDS if (v := getattr(self, f)) is not None}

    def merged(self, other: Policy) -> Policy:
        """This policy with the fields ``other`` sets replaced by its values."""
        return Policy(**{**self.to_json(), **other.to_json()})

    def without(self, names: Iterable[str]) -> Policy:
        """This policy with the fields ``names`` unset."""
        drop = set(names)
        return Policy(**{f: v for f, v in self.to_json().items() if f not in drop})


#: Every policy field, in the order they are shown.
FIELDS = tuple(f.name for f in fields(Policy))


def check_enforced(policy: Policy) -> None:
    """``ValueError`` when ``policy`` sets a field this version does not enforce."""
    for name in policy.to_json():
        if name not in ENFORCED:
            raise ValueError(
                f"policy field {name!r} is not enforced yet by this version of Shoal (it "
                f"enforces {', '.join(f for f in FIELDS if f in ENFORCED)})"
            )


class PolicyTable:
    """The policy of each prefix, resolved field by field: the longest prefix that sets a
    field wins. Immutable: a change makes a new table.

    Parameters
    ----------
    rules
        Normalised path -> its :class:`Policy` (those setting nothing are left out).

    Notes
    -----
    :meth:`resolve` walks a tree of path components: time linear in the path's length,
    whatever the number of rules.
    """

    def __init__(self, rules: Mapping[str, Policy] | None = None):
        kept = {p: rules[p] for p in sorted(rules or {}) if rules[p].to_json()}
        self.rules: Mapping[str, Policy] = MappingProxyType(kept)
        self._tree: dict = {}
        for path, policy in kept.items():
            node = self._tree
            for name in _names(path):
                node = node.setdefault(name, {})
            node[_RULE] = (path, tuple(policy.to_json().items()))

    def _along(self, path: str) -> Iterator[dict]:
        """The tree's nodes on the way to ``path``, the root's first, as far as they go."""
        node = self._tree
        yield node
        for name in _names(path):
            node = node.get(name)
            if node is None:
                return
            yield node

    def resolve(self, path: str) -> dict[str, tuple[Any, str]]:
        """For each field some prefix of the normalised ``path`` sets: ``(value, prefix)``
        of the longest such prefix."""
        out: dict[str, tuple[Any, str]] = {}
        for node in self._along(path):
            rule = node.get(_RULE)
            if rule is not None:
                prefix, items = rule
                for field, value in items:
                    out[field] = (value, prefix)
        return out

    def overrides(self, path: str) -> dict[str, Any]:
        """The values of :data:`MOUNT_FIELDS`, ``ttl``, ``priority`` and ``quota`` that the
        policies in force at the normalised ``path`` set, in place of its mount's options
        and :data:`OWN_DEFAULTS` (with ``quota_at``, the prefix its quota comes from)."""
        out = {}
        for field, (value, prefix) in self.resolve(path).items():
            if field in _OWN_FIELDS:
                out[field] = value
                if field == "quota":
                    out["quota_at"] = prefix
        return out

    def covers(self, prefix: str) -> bool:
        """True when a rule at the normalised ``prefix``, above it or below it sets one of
        the fields of :meth:`overrides`: only then may a path under ``prefix`` see other
        values than its mount's options and :data:`OWN_DEFAULTS`."""
        nodes = list(self._along(prefix))
        if any(_sets_mount_field(node.get(_RULE)) for node in nodes):
            return True
        if len(nodes) <= len(_names(prefix)):
            return False  # the tree stops above it: no rule lies below it
        below = [child for key, child in nodes[-1].items() if key != _RULE]
        while below:
            here = below.pop()
            if _sets_mount_field(here.get(_RULE)):
                return True
            below.extend(child for key, child in here.items() if key != _RULE)
        return False


def _names(path: str) -> list[str]:
    return path.split("/")[1:] if path != "/" else []


def _sets_mount_field(rule: tuple | None) -> bool:
    return rule is not None and any(f in _OWN_FIELDS for f, _ in rule[1])


def effective(table: PolicyTable, path: str, mount: Mount) -> dict[str, Any]:
    """The policy in force at the normalised ``path`` under ``mount``.

    Returns
    -------
    dict
        ``path``, ``mount`` (its mount point), ``policy`` (every field: its value, None
        when nothing sets it) and ``sources`` (per field: the prefix of the rule it comes
        from, ``"mount"`` for the mount's option, ``"default"`` for Shoal's default of a
        mount option, None when nothing sets it).
    """
    resolved = table.resolve(path)
    own, _ = split_mount_options(mount.options)
    values: dict[str, Any] = {}
    sources: dict[str, str | None] = {}
    for name in FIELDS:
        if name in resolved:
            values[name], sources[name] = resolved[name]
        elif name in MOUNT_FIELDS:
            values[name] = own[name]
            sources[name] = "mount" if name in mount.options else "default"
        else:
            values[name] = sources[name] = None
    return {"path": path, "mount": mount.path, "policy": values, "sources": sources}
