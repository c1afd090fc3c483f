"""Policies as data: parsing of every field (durations, sizes, choices) and its errors, the
frozen record, longest-prefix resolution against a brute-force model, the effective policy
with its sources, the refusal of fields not enforced yet; then the worker's side in one
process: policies kept in a MetaStore, followed by a second worker sharing it, and overlaid
on the mount's options where files are resolved."""

from __future__ import annotations

import dataclasses
import math
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.control._admission import MountPolicy
from shoal.control._files import FileResolver
from shoal.control._metastore import LocalMetaStore
from shoal.control._metrics import Counters
from shoal.control._namespace import Mount, MountTable
from shoal.control._policies import WorkerPolicies
from shoal.control._policy import (
    ENFORCED,
    FIELDS,
    MOUNT_FIELDS,
    OWN_DEFAULTS,
    Policy,
    PolicyTable,
    check_enforced,
    effective,
    field_name,
    format_duration,
    parse_duration,
)

# --------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30.0),
        ("10m", 600.0),
        ("2h", 7200.0),
        ("7d", 604800.0),
        ("1.5s", 1.5),
        (" 10M ", 600.0),
        ("45", 45.0),
        (45, 45.0),
        (0.25, 0.25),
        ("0s", 0.0),
    ],
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("-5s", "must be >= 0"),
        (-1, "finite number of seconds >= 0"),
        ("abc", "is not a duration"),
        ("10y", "is not a duration"),
        ("", "is not a duration"),
        ("1e3s", "is not a duration"),
        (math.nan, "finite"),
        (math.inf, "finite"),
        (10**400, "finite"),
        (True, "expected a duration"),
        (None, "expected a duration"),
        ([1], "expected a duration"),
    ],
)
def test_bad_durations_name_the_field_and_value(value, match):
    with pytest.raises(ValueError, match=match) as info:
        parse_duration(value, "metadata_ttl")
    text = str(info.value)
    assert text.startswith("metadata_ttl: ") and "\n" not in text


@given(st.one_of(st.integers(0, 10**9), st.floats(0, 1e6, allow_nan=False).map(lambda f: f / 8)))
def test_formatted_durations_read_back(seconds):
    text = format_duration(seconds)
    assert parse_duration(text) == seconds
    assert text[-1] in "smhd"


def test_durations_are_spelled_in_their_largest_exact_unit():
    spelled = [format_duration(s) for s in (0, 59, 60, 90, 3600, 5400, 86400, 2.5)]
    assert spelled == ["0s", "59s", "1m", "90s", "1h", "90m", "1d", "2.5s"]


@pytest.mark.parametrize(
    ("fields", "canonical"),
    [
        ({"tier": "mem"}, {"tier": "MEM"}),
        ({"tier": " Ssd"}, {"tier": "SSD"}),
        ({"priority": "HIGH"}, {"priority": "high"}),
        ({"write_mode": "write-back"}, {"write_mode": "write_back"}),
        ({"write-mode": "Cache-Only"}, {"write_mode": "cache_only"}),
        ({"write_mode": "write_through"}, {"write_mode": "write_through"}),
        ({"ttl": "2h"}, {"ttl": 7200.0}),
        ({"metadata_ttl": 0}, {"metadata_ttl": 0.0}),
        ({"quota": "64MiB"}, {"quota": 64 << 20}),
        ({"quota": 4096}, {"quota": 4096}),
        ({"replicas": "ALL"}, {"replicas": "all"}),
        ({"replicas": 3}, {"replicas": 3}),
        ({"pin": False}, {"pin": False}),
        ({"read_ahead": 0}, {"read_ahead": 0}),
        ({"Read-Ahead": 8}, {"read_ahead": 8}),
    ],
)
def test_fields_are_checked_and_made_canonical(fields, canonical):
    assert Policy.from_fields(fields).to_json() == canonical


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"tier": "FAST"}, "tier: 'FAST' is not one of MEM, SSD, HDD"),
        ({"tier": 1}, "tier: 1 is not one of"),
        ({"priority": "urgent"}, "priority: 'urgent' is not one of high, normal, low"),
        ({"write_mode": "sync"}, "write_mode: 'sync' is not one of write-back"),
        ({"ttl": 0}, "ttl: must be longer than 0 s"),
        ({"ttl": "-1h"}, "ttl: a duration must be >= 0"),
        ({"metadata_ttl": "soon"}, "metadata_ttl: 'soon' is not a duration"),
        ({"quota": 0}, "quota: must be more than 0 bytes"),
        ({"quota": "-1GiB"}, "quota: a size must be more than 0 bytes"),
        ({"quota": -5}, "quota: size must be >= 0"),
        ({"quota": "12XB"}, "quota: '12XB' is not a size"),
        ({"quota": 1.5}, "quota: expected a size"),
        ({"quota": "9999999TiB"}, "quota: must be more than 0 bytes and less than 2\\*\\*63"),
        ({"replicas": 0}, "replicas: expected an int >= 1 \\(below 2\\*\\*31\\) or 'all'"),
        ({"replicas": "3"}, "replicas: expected an int >= 1 \\(below 2\\*\\*31\\) or 'all'"),
        ({"replicas": 1 << 31}, "replicas: expected"),
        ({"read_ahead": -1}, "read_ahead: expected an int >= 0"),
        ({"read_ahead": True}, "read_ahead: expected an int >= 0"),
        ({"pin": "yes"}, "pin: expected true or false"),
        ({"pin": 1}, "pin: expected true or false"),
        ({"colour": "blue"}, "unknown policy field 'colour'"),
        ({3: "x"}, "unknown policy field 3"),
        ({"tier": None}, "tier: give a value"),
    ],
)
def test_bad_fields_are_one_line_value_errors(fields, match):
    with pytest.raises(ValueError, match=match) as info:
        Policy.from_fields(fields)
    assert "\n" not in str(info.value)


def test_field_names():
    assert FIELDS == (
        "tier", "ttl", "pin", "priority", "quota", "replicas", "write_mode", "metadata_ttl",
        "read_ahead",
    )  # fmt: skip
    assert field_name("write-mode") == "write_mode" and field_name(" TTL ") == "ttl"
    with pytest.raises(ValueError, match="unknown policy field 'tiers'"):
        field_name("tiers")
    assert set(MOUNT_FIELDS) == {
        "metadata_ttl",
        "read_ahead",
        "replicas",
        "tier",
        "pin",
        "write_mode",
    }


def test_a_policy_is_frozen_and_slotted():
    policy = Policy(tier="ssd", read_ahead=2)
    assert policy.tier == "SSD"
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.tier = "MEM"
    assert not hasattr(policy, "__dict__")
    assert Policy(read_ahead=2, tier="SSD") == policy
    with pytest.raises(ValueError, match="read_ahead"):
        Policy(read_ahead=-2)


def test_merged_and_without():
    base = Policy(metadata_ttl=60, read_ahead=4)
    both = base.merged(Policy(read_ahead=8, replicas="all"))
    assert both.to_json() == {"replicas": "all", "metadata_ttl": 60.0, "read_ahead": 8}
    assert both.without(["read_ahead", "replicas"]) == Policy(metadata_ttl=60)
    assert both.without(FIELDS).to_json() == {}


def test_only_the_enforced_fields_may_be_set():
    enforced = {"metadata_ttl", "read_ahead", "replicas", "tier", "pin", "ttl", "priority"}
    assert enforced | {"quota", "write_mode"} == ENFORCED
    check_enforced(Policy(metadata_ttl=0, read_ahead=1, replicas=2, tier="SSD", pin=True))
    check_enforced(Policy(ttl="1h", priority="low", quota="1G", write_mode="cache-only"))


# --------------------------------------------------------------------- resolution

component = st.sampled_from(["a", "b", "ab", "bc"])
prefix = st.lists(component, max_size=4).map(lambda parts: "/" + "/".join(parts))
policy = st.fixed_dictionaries(
    {},
    optional={
        "tier": st.sampled_from(["MEM", "SSD", "HDD"]),
        "ttl": st.sampled_from([1.0, 60.0]),
        "metadata_ttl": st.sampled_from([0.0, 5.0, 60.0]),
        "read_ahead": st.integers(0, 3),
        "replicas": st.sampled_from([1, 2, "all"]),
        "quota": st.sampled_from([1, 1 << 30]),
        "write_mode": st.sampled_from(["write_back", "cache_only"]),
    },
).map(lambda fields: Policy(**fields))
#: The fields a file's options hold (its mount's options and the other enforced fields).
OWN_FIELDS = {*MOUNT_FIELDS, "ttl", "priority", "quota"}


def covers(rule: str, path: str) -> bool:
    """True when ``rule`` is ``path`` or one of its ancestors, by whole components."""
    return rule == "/" or path == rule or path.startswith(rule + "/")


def reference(rules: dict[str, Policy], path: str) -> dict[str, tuple]:
    """Per field: the value and the prefix of the longest rule over ``path`` that sets it."""
    out = {}
    for name in FIELDS:
        setting = [p for p, pol in rules.items() if covers(p, path) and name in pol.to_json()]
        if setting:
            best = max(setting, key=lambda p: 0 if p == "/" else p.count("/"))
            out[name] = (getattr(rules[best], name), best)
    return out


@settings(max_examples=300, deadline=None)
@given(rules=st.dictionaries(prefix, policy, max_size=8), query=prefix)
def test_longest_prefix_wins_field_by_field(rules, query):
    table = PolicyTable(rules)
    want = reference(rules, query)
    assert table.resolve(query) == want
    own = {f: v for f, (v, _) in want.items() if f in OWN_FIELDS}
    if "quota" in want:
        own["quota_at"] = want["quota"][1]  # the prefix whose quota counts the file
    assert table.overrides(query) == own
    sets_mount_field = [p for p, pol in rules.items() if set(pol.to_json()) & OWN_FIELDS]
    assert table.covers(query) == any(
        covers(p, query) or covers(query, p) for p in sets_mount_field
    )
    assert list(table.rules) == sorted(p for p, pol in rules.items() if pol.to_json())


def test_prefixes_match_whole_components():
    table = PolicyTable({"/a/b": Policy(read_ahead=1), "/a": Policy(read_ahead=0, tier="HDD")})
    assert table.resolve("/a/bc") == {"tier": ("HDD", "/a"), "read_ahead": (0, "/a")}
    assert table.resolve("/a/b/c") == {"tier": ("HDD", "/a"), "read_ahead": (1, "/a/b")}
    assert table.resolve("/ab") == {}
    assert not table.covers("/ab") and table.covers("/") and table.covers("/a/bc")
    assert PolicyTable({"/a": Policy(priority="low")}).covers("/a")  # a file option
    assert PolicyTable({"/a": Policy(write_mode="cache_only")}).covers("/a")  # a mount option


def test_effective_policy_and_its_sources():
    mount = Mount("/m", "file:///data", {"read_ahead": 2, "metadata_ttl": 60})
    table = PolicyTable(
        {"/m/a": Policy(metadata_ttl=0), "/m/a/b": Policy(tier="SSD"), "/m/x": Policy(quota=5)}
    )
    doc = effective(table, "/m/a/b/file", mount)
    assert doc["path"] == "/m/a/b/file" and doc["mount"] == "/m"
    assert doc["policy"] == {
        "tier": "SSD", "ttl": None, "pin": False, "priority": None, "quota": None,
        "replicas": 1, "write_mode": "write_back", "metadata_ttl": 0.0, "read_ahead": 2,
    }  # fmt: skip
    assert doc["sources"] == {
        "tier": "/m/a/b", "ttl": None, "pin": "default", "priority": None, "quota": None,
        "replicas": "default", "write_mode": "default", "metadata_ttl": "/m/a",
        "read_ahead": "mount",
    }  # fmt: skip


# --------------------------------------------------------------------- the worker's side


class Node:
    """One worker's policies and resolver over a MetaStore that may be shared."""

    def __init__(self, store: LocalMetaStore, allowed: str, interval: float = 0.05):
        self.files = FileResolver(
            MountTable(store),
            shared=True,
            counters=Counters(),
            policy=MountPolicy([allowed], [], None),
        )
        self.policies = WorkerPolicies(store, self.files, shared=True, interval=interval)
        self.store = store

    def close(self) -> None:
        self.policies.close()
        self.files.close()


@pytest.fixture
def shared(tmp_path):
    """Two nodes sharing one MetaStore, a directory of files mounted at /m through the
    first: ``(a, b, directory)``."""
    data = tmp_path / "data"
    (data / "a" / "b").mkdir(parents=True)
    (data / "a" / "bc").mkdir()
    for name in ("a/b/f", "a/bc/f", "top"):
        (data / name).write_bytes(b"x" * 10)
    store = LocalMetaStore(tmp_path / "meta")
    nodes = []
    try:
        for _ in range(2):
            nodes.append(Node(store, data.as_uri() + "/"))
        nodes[0].files.mount("/m", data.as_uri(), {"metadata_ttl": 60})
        yield nodes[0], nodes[1], data
    finally:
        for node in nodes:
            node.close()
        store.close()


def wait_for(predicate, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_policies_are_overlaid_on_mount_options_by_prefix(shared):
    a, _, _ = shared
    before = a.files.file("/m/a/b/f")
    assert before.own["metadata_ttl"] == 60 and before.own["read_ahead"] == 4
    a.policies.set("/m/a/b", {"metadata_ttl": "0s", "replicas": 2})
    a.policies.set("/m/a", {"read_ahead": 9})
    f = a.files.file("/m/a/b/f")
    assert f is not before  # the table changed: resolved again
    assert dict(f.own) == {
        "metadata_ttl": 0.0,
        "read_ahead": 9,
        "replicas": 2,
        "tier": None,
        "pin": False,
        "write_mode": "write_back",
        **OWN_DEFAULTS,
    }
    assert f.record()["metadata_ttl"] == 0.0 and f.record()["replicas"] == 2
    sibling = a.files.file("/m/a/bc/f")  # /m/a/b does not cover /m/a/bc
    assert dict(sibling.own) == {
        "metadata_ttl": 60,
        "read_ahead": 9,
        "replicas": 1,
        "tier": None,
        "pin": False,
        "write_mode": "write_back",
        **OWN_DEFAULTS,
    }
    top = {"metadata_ttl": 60, "read_ahead": 4, "replicas": 1, "tier": None, "pin": False}
    top["write_mode"] = "write_back"
    top.update(OWN_DEFAULTS)
    assert dict(a.files.file("/m/top").own) == top
    under = a.files.files_under(["/m"])
    assert [f.path for f in under if f.own["replicas"] == 2] == ["/m/a/b/f"]
    a.policies.remove("/m/a/b", ["replicas"])
    assert a.files.file("/m/a/b/f").own["replicas"] == 1


def test_a_policy_change_through_one_worker_holds_on_the_other(shared):
    a, b, _ = shared
    rule = a.policies.set("/m/a", {"read_ahead": 1})
    assert rule == {"path": "/m/a", "policy": {"read_ahead": 1}}
    wait_for(lambda: b.policies.rules() == [rule])
    wait_for(lambda: b.files.file("/m/a/b/f").own["read_ahead"] == 1)
    assert b.policies.effective("/m/a/b/f")["sources"]["read_ahead"] == "/m/a"
    b.policies.remove("/m/a", [])
    wait_for(lambda: a.policies.rules() == [])
    assert a.files.file("/m/a/b/f").own["read_ahead"] == 4


def test_concurrent_changes_through_two_workers_all_land(shared):
    a, b, _ = shared
    values = {"read_ahead": 3, "replicas": 2, "metadata_ttl": 7.0}
    errors = []

    def set_one(node, name):
        try:
            node.policies.set("/m/a", {name: values[name]})
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    threads = [
        threading.Thread(target=set_one, args=(node, name))
        for node, name in zip((a, b, a), values, strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    want = [{"path": "/m/a", "policy": {"replicas": 2, "metadata_ttl": 7.0, "read_ahead": 3}}]
    wait_for(lambda: a.policies.rules() == want and b.policies.rules() == want)


def test_bad_changes_are_refused(shared):
    a, _, _ = shared
    with pytest.raises(ValueError, match="policy on /elsewhere/x: the path is under no mount"):
        a.policies.set("/elsewhere/x", {"read_ahead": 1})
    with pytest.raises(ValueError, match="write_mode: 'maybe' is not one of"):
        a.policies.set("/m", {"write_mode": "maybe"})
    with pytest.raises(ValueError, match="no field given"):
        a.policies.set("/m", {})
    with pytest.raises(ValueError, match="must be absolute"):
        a.policies.set("m", {"read_ahead": 1})
    with pytest.raises(FileNotFoundError, match="no policy on /m/a"):
        a.policies.remove("/m/a", [])
    a.policies.set("/m/a", {"read_ahead": 1})
    with pytest.raises(FileNotFoundError, match="sets none of replicas"):
        a.policies.remove("/m/a", ["replicas"])
    with pytest.raises(ValueError, match="unknown policy field 'colour'"):
        a.policies.remove("/m/a", ["colour"])
    with pytest.raises(FileNotFoundError, match="not under any mount"):
        a.policies.effective("/elsewhere")
    assert a.policies.rules() == [{"path": "/m/a", "policy": {"read_ahead": 1}}]


def test_an_unreadable_stored_rule_is_left_out_and_may_be_removed(shared, caplog):
    a, _, _ = shared
    a.store.put("policies/rules//m/odd", {"path": "/m/odd", "policy": {"colour": "blue"}})
    a.policies.set("/m/a", {"read_ahead": 1})
    assert [r["path"] for r in a.policies.rules()] == ["/m/a"]
    assert "policy on /m/odd left out: unknown policy field 'colour'" in caplog.text
    assert a.policies.remove("/m/odd", []) == {"path": "/m/odd", "policy": {}}
    assert a.store.get("policies/rules//m/odd") is None
