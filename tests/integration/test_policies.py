"""Policies against real worker processes: set, list, remove and show them through the
client and the ``shoal policy`` command, kept across a restart of the worker, the enforced
fields (``metadata_ttl``, ``read_ahead``, ``replicas``) in force end to end on a
``file://`` mount, the others refused, bad input over the socket answered with a clear
error, and two workers sharing etcd both enforcing a policy set through one of them."""

from __future__ import annotations

import json
import os
import time

import pytest
from conftest import PAGE, TMP_MOUNTS, shoal_environment
from hypothesis import given, settings
from hypothesis import strategies as st
from shoal_cli import error, ok
from shoal_cluster import running_cluster, wait_until

from shoal._config import load_config
from shoal.client import Client
from shoal.client._connection import Connection
from shoal.control._policy import FIELDS, Policy
from shoal.control.proto import ProtocolError


@pytest.fixture
def data(tmp_path):
    """A directory to mount: ``hot/f``, ``hotter/f`` and ``cold/f`` (small), and
    ``seq/big`` and ``plain/big`` (eight pages each)."""
    assert tmp_path.as_uri().startswith(TMP_MOUNTS)
    root = tmp_path / "data"
    for name in ("hot", "hotter", "cold", "seq", "plain"):
        (root / name).mkdir(parents=True)
    for name in ("hot/f", "hotter/f", "cold/f"):
        (root / name).write_bytes(b"one")
    for name in ("seq/big", "plain/big"):
        (root / name).write_bytes(os.urandom(8 * PAGE))
    return root


def rewrite(path, content: bytes) -> None:
    """New content, and a new version (mtime and size) for the store to see."""
    st = path.stat()
    path.write_bytes(content)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def read(client: Client, path: str) -> bytes:
    buf = bytearray(64)
    return bytes(buf[: client.read_into(buf, path)])


def raw(home: str) -> Connection:
    """A connection of the worker's own user to its Unix socket."""
    return Connection(os.path.join(home, "worker.sock"), 30.0)


# --------------------------------------------------------------------- the Python API


def test_set_list_remove_and_show(client, data):
    client.mount("/f", data.as_uri(), read_ahead=2)
    assert client.policies() == []
    rule = client.set_policy("/f/hot/", metadata_ttl="30s", replicas="all")
    assert rule == {"path": "/f/hot", "policy": {"replicas": "all", "metadata_ttl": 30.0}}
    assert client.set_policy("/f", read_ahead=1) == {"path": "/f", "policy": {"read_ahead": 1}}
    assert client.set_policy("/f/hot", metadata_ttl=0) == {
        "path": "/f/hot",
        "policy": {"replicas": "all", "metadata_ttl": 0.0},
    }
    assert [r["path"] for r in client.policies()] == ["/f", "/f/hot"]
    shown = client.effective_policy("/f/hot/f")
    assert shown["path"] == "/f/hot/f" and shown["mount"] == "/f"
    assert {k: shown["policy"][k] for k in ("metadata_ttl", "read_ahead", "replicas", "tier")} == {
        "metadata_ttl": 0.0,
        "read_ahead": 1,
        "replicas": "all",
        "tier": None,
    }
    assert {k: shown["sources"][k] for k in ("metadata_ttl", "read_ahead", "replicas", "tier")} == {
        "metadata_ttl": "/f/hot",
        "read_ahead": "/f",
        "replicas": "/f/hot",
        "tier": "default",
    }
    # /f/hot does not cover /f/hotter
    assert client.effective_policy("/f/hotter/f")["sources"]["metadata_ttl"] == "default"
    assert client.remove_policy("/f", "read-ahead") == {"path": "/f", "policy": {}}
    assert client.effective_policy("/f/hot/f")["sources"]["read_ahead"] == "mount"
    assert client.remove_policy("/f/hot", "replicas") == {
        "path": "/f/hot",
        "policy": {"metadata_ttl": 0.0},
    }
    assert client.remove_policy("/f/hot")["policy"] == {}
    assert client.policies() == []


def test_bad_policies_are_clear_errors(client, data):
    client.mount("/f", data.as_uri())
    with pytest.raises(ValueError, match="write_mode: 'sync' is not one of write-back"):
        client.set_policy("/f/hot", write_mode="sync")
    with pytest.raises(ValueError, match="policy on /nowhere/x: the path is under no mount"):
        client.set_policy("/nowhere/x", read_ahead=1)
    with pytest.raises(ValueError, match="tier: 'FAST' is not one of MEM, SSD, HDD"):
        client.set_policy("/f", tier="FAST")
    with pytest.raises(ValueError, match="metadata_ttl: a duration must be >= 0"):
        client.set_policy("/f", metadata_ttl="-5s")
    with pytest.raises(ValueError, match="quota: '12XB' is not a size"):
        client.set_policy("/f", quota="12XB")
    with pytest.raises(ValueError, match="unknown policy field 'colour'"):
        client.set_policy("/f", colour="blue")
    with pytest.raises(ValueError, match="must be absolute"):
        client.set_policy("f", read_ahead=1)
    with pytest.raises(FileNotFoundError, match="no policy on /f/hot"):
        client.remove_policy("/f/hot")
    with pytest.raises(FileNotFoundError, match="not under any mount"):
        client.effective_policy("/nowhere")
    assert client.policies() == []


def test_policies_survive_a_restart_of_the_worker(shoal_home, data, daemons):
    with Client(load_config()) as c:
        c.mount("/f", data.as_uri())
        c.set_policy("/f/hot", metadata_ttl="2m", read_ahead=0)
        pid = c.worker_pid()
    daemons.stop(shoal_home)
    with Client(load_config()) as c:
        assert c.worker_pid() != pid
        assert c.policies() == [
            {"path": "/f/hot", "policy": {"metadata_ttl": 120.0, "read_ahead": 0}}
        ]
        assert c.effective_policy("/f/hot/f")["sources"]["metadata_ttl"] == "/f/hot"


# --------------------------------------------------------------------- enforcement


def test_metadata_ttl_of_a_policy_holds_end_to_end(shoal_home, data):
    # A client that keeps no metadata of its own: what it reads is what the worker knows.
    with Client(load_config(), metadata_ttl=0) as c:
        c.mount("/f", data.as_uri())  # the mount's metadata_ttl: 60 s
        assert read(c, "/f/hot/f") == b"one" and read(c, "/f/hotter/f") == b"one"
        rewrite(data / "hot/f", b"two!")
        rewrite(data / "hotter/f", b"two!")
        assert read(c, "/f/hot/f") == b"one"  # the mount's TTL hides the change
        c.set_policy("/f/hot", metadata_ttl=0)
        assert read(c, "/f/hot/f") == b"two!"  # at once
        rewrite(data / "hot/f", b"three")
        assert read(c, "/f/hot/f") == b"three"  # and at every read
        assert read(c, "/f/hotter/f") == b"one"  # outside the prefix, the mount's TTL holds
        c.remove_policy("/f/hot")  # the mount's TTL again, from the next stat on
        assert read(c, "/f/hot/f") == b"three"
        rewrite(data / "hot/f", b"four!!")
        assert read(c, "/f/hot/f") == b"three"


def test_metadata_ttl_of_a_policy_holds_across_a_restart(shoal_home, data, daemons):
    """A restarted worker knows the files it cached while their metadata holds (from the
    records kept with their pages): for the policy's TTL, not the mount's."""
    with Client(load_config()) as c:
        c.mount("/f", data.as_uri())  # 60 s
        c.set_policy("/f/hot", metadata_ttl="1s")
        assert read(c, "/f/hot/f") == b"one" and read(c, "/f/cold/f") == b"one"
    rewrite(data / "hot/f", b"two!")
    rewrite(data / "cold/f", b"two!")
    daemons.stop(shoal_home)
    time.sleep(1.5)
    with Client(load_config(), metadata_ttl=0) as c:
        assert read(c, "/f/hot/f") == b"two!"
        assert read(c, "/f/cold/f") == b"one"


def test_read_ahead_of_a_policy_holds_end_to_end(client, data):
    client.mount("/f", data.as_uri(), read_ahead=0)
    client.set_policy("/f/seq", read_ahead=3)
    page = bytearray(PAGE)
    assert client.read_into(page, "/f/plain/big") == PAGE
    assert client.report()["pages_prefetched"] == 0  # the mount reads nothing ahead
    assert client.read_into(page, "/f/seq/big") == PAGE
    assert client.report()["pages_prefetched"] == 3
    assert page == (data / "seq/big").read_bytes()[:PAGE]


def test_replicas_and_metadata_ttl_reach_the_file_records(client, data, shoal_home):
    client.mount("/f", data.as_uri(), replicas=2)
    client.set_policy("/f/hot", replicas="all", metadata_ttl="5m")
    conn = raw(shoal_home)
    try:
        hot, cold = conn.call({"op": "stat", "paths": ["/f/hot/f", "/f/cold/f"]})["files"]
    finally:
        conn.close()
    assert (hot["replicas"], hot["metadata_ttl"]) == ("all", 300.0)
    assert (cold["replicas"], cold["metadata_ttl"]) == (2, 60.0)


# --------------------------------------------------------------------- the command


def test_the_policy_command(shoal_home, data):
    ok("mount", "add", "/f", data.as_uri())
    assert ok("policy", "ls") == "no policies (set one with `shoal policy set PATH ...`)\n"
    out = ok("policy", "set", "/f/hot", "--metadata-ttl", "10m", "--read-ahead", "2")
    assert out == "policy on /f/hot: metadata_ttl=10m read_ahead=2\n"
    assert ok("policy", "set", "/f", "--replicas", "all") == "policy on /f: replicas=all\n"
    lines = ok("policy", "ls").splitlines()
    assert lines[0].split() == ["PATH", "POLICY"]
    assert lines[1].split() == ["/f", "replicas=all"]
    assert lines[2].split() == ["/f/hot", "metadata_ttl=10m", "read_ahead=2"]
    assert json.loads(ok("policy", "ls", "--json")) == [
        {"path": "/f", "policy": {"replicas": "all"}},
        {"path": "/f/hot", "policy": {"metadata_ttl": 600.0, "read_ahead": 2}},
    ]
    shown = ok("policy", "show", "/f/hot/f").splitlines()
    assert shown[:2] == ["path   /f/hot/f", "mount  /f"]
    rows = {line.split()[0]: line.split()[1:] for line in shown[3:]}
    assert rows["FIELD"] == ["VALUE", "FROM"]
    assert rows["metadata_ttl"] == ["10m", "/f/hot"]
    assert rows["read_ahead"] == ["2", "/f/hot"]
    assert rows["replicas"] == ["all", "/f"]
    assert rows["quota"] == ["-", "-"]
    doc = json.loads(ok("policy", "show", "--json", "/f/cold/f"))
    assert doc["policy"]["read_ahead"] == 4 and doc["sources"]["read_ahead"] == "default"
    assert ok("policy", "rm", "/f/hot", "read-ahead") == "policy on /f/hot: metadata_ttl=10m\n"
    assert ok("policy", "rm", "/f/hot") == "policy on /f/hot removed\n"
    assert ok("policy", "rm", "/f") == "policy on /f removed\n"
    assert ok("policy", "ls", "--json") == "[]\n"


def test_the_policy_command_errors(shoal_home, data):
    ok("mount", "add", "/f", data.as_uri())
    assert error(2, "policy", "set", "/f", "--write-mode", "sync") == (
        "shoal policy set: error: argument --write-mode: write_mode: 'sync' is not one of "
        "write-back, write-through, cache-only, read-only"
    )
    assert error(1, "policy", "set", "/nowhere", "--read-ahead", "1") == (
        "policy on /nowhere: the path is under no mount (see `shoal mount ls`)"
    )
    assert error(1, "policy", "rm", "/f") == "no policy on /f (see `shoal policy ls`)"
    assert error(1, "policy", "show", "/nowhere") == (
        "/nowhere is not under any mount (see `shoal mount ls`)"
    )
    assert "tier: 'FAST' is not one of MEM, SSD, HDD" in error(
        2, "policy", "set", "/f", "--tier", "FAST"
    )
    assert "ttl: a duration must be >= 0, got '-5s'" in error(2, "policy", "set", "/f", "--ttl=-5s")
    assert "metadata_ttl: 'soon' is not a duration" in error(
        2, "policy", "set", "/f", "--metadata-ttl", "soon"
    )
    assert "quota: '1ZB' is not a size" in error(2, "policy", "set", "/f", "--quota", "1ZB")
    assert "read_ahead: expected an int >= 0" in error(
        2, "policy", "set", "/f", "--read-ahead", "-1"
    )
    assert "give at least one field" in error(2, "policy", "set", "/f")
    assert "unknown policy field 'colour'" in error(2, "policy", "rm", "/f", "colour")
    assert ok("policy", "ls", "--json") == "[]\n"


# --------------------------------------------------------------------- bad input


def test_bad_policy_requests_over_the_socket(client, data, shoal_home):
    client.mount("/f", data.as_uri())
    conn = raw(shoal_home)
    try:
        # Values of the right type but wrong: an error each, the connection serves on.
        for policy, match in [
            ({"read_ahead": -1}, "read_ahead: expected an int >= 0"),
            ({"tier": "X" * 1000}, "is not one of MEM"),
            ({"metadata_ttl": None}, "metadata_ttl: give a value"),
            ({"nonsense": 1}, "unknown policy field 'nonsense'"),
            ({"write_mode": "sometimes"}, "write_mode: 'sometimes' is not one of"),
            ({}, "no field given"),
        ]:
            with pytest.raises(ValueError, match=match):
                conn.call({"op": "policy_set", "path": "/f", "policy": policy})
        with pytest.raises(ValueError, match="must be absolute"):
            conn.call({"op": "policy_show", "path": "relative"})
        with pytest.raises(ValueError, match="unknown policy field 'x'"):
            conn.call({"op": "policy_rm", "path": "/f", "fields": ["x"]})
        assert conn.call({"op": "policies"})["policies"] == []
    finally:
        conn.close()
    # Wrong types: a protocol error, then the connection is closed; the worker serves on.
    for header, match in [
        ({"op": "policy_set", "path": "/f", "policy": [1]}, "'policy' must be dict"),
        ({"op": "policy_set", "path": "/f", "policy": {"tier": [1]}}, "must be a bool, a"),
        ({"op": "policy_set", "path": "/f", "policy": {7: 1}}, "names must be strings"),
        ({"op": "policy_set", "path": 3, "policy": {}}, "'path' must be str"),
        ({"op": "policy_rm", "path": "/f", "fields": "tier"}, "'fields' must be list"),
        ({"op": "policy_rm", "path": "/f", "fields": [b"tier"]}, "names must be strings"),
        ({"op": "policy_show"}, "'path' is missing"),
    ]:
        conn = raw(shoal_home)
        try:
            with pytest.raises(ProtocolError, match=match):
                conn.call(header)
        finally:
            conn.close()
    assert client.policies() == [] and client.report()["mounts"] == 1


scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(["all", "30s", "-1m", "MEM", "10G", "write-back"])
    | st.binary(max_size=8)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=8,
)
names = st.sampled_from([*FIELDS, "write-mode"]) | st.text(max_size=8) | st.integers(0, 9)


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory):
    """A worker of the module's own with a directory mounted at /f: its home."""
    data = tmp_path_factory.mktemp("fuzzed")
    with shoal_environment() as home:
        with Client(load_config()) as c:
            c.mount("/f", data.as_uri())
        yield home


@settings(max_examples=80, deadline=None)
@given(
    op=st.sampled_from(["policy_set", "policy_rm", "policy_show"]),
    path=st.sampled_from(["/f", "/f/a", "/g", "f", "/f/../x", ""]) | st.text(max_size=8),
    policy=st.dictionaries(names, values, max_size=4) | values,
    fields=st.lists(names | values, max_size=3) | values,
)
def test_random_policy_requests_are_answered_and_the_worker_serves_on(
    fuzzed, op, path, policy, fields
):
    conn = raw(fuzzed)
    try:
        conn.call({"op": op, "path": path, "policy": policy, "fields": fields})
    except (ProtocolError, ValueError):
        pass  # refused, with the reason
    except OSError as exc:  # a limit, a missing policy; never an unexpected failure
        assert "worker error" not in str(exc), exc
    finally:
        conn.close()
    conn = raw(fuzzed)
    try:
        for rule in conn.call({"op": "policies"})["policies"]:
            Policy.from_fields(rule["policy"])  # whatever was kept is valid
    finally:
        conn.close()


# --------------------------------------------------------------------- a cluster


@pytest.mark.slow
def test_two_workers_in_etcd_both_enforce_a_policy_set_through_one(etcd, bucket):
    bucket.put("hot/f", b"x" * 100)
    with running_cluster(etcd.endpoint, 2) as cluster:
        first, second = cluster.workers
        client = cluster.client()
        try:
            client.mount("/b", f"s3://{bucket.name}", **bucket.options())
        finally:
            client.close()
        one = cluster.connect(first, admin=True)
        other = cluster.connect(second)
        try:
            policy = {"replicas": "all", "ttl": "1h"}
            header = {"op": "policy_set", "path": "/b/hot", "policy": policy}
            one.call(header)

            def enforced():
                shown = other.call({"op": "policy_show", "path": "/b/hot/f"})["effective"]
                record = other.call({"op": "stat", "paths": ["/b/hot/f"]})["files"][0]
                return (
                    shown["sources"]["replicas"] == "/b/hot"
                    and record["replicas"] == "all"
                    # Under a TTL in a cluster, no client may trust a location it remembers.
                    and record["metadata_ttl"] == 0.0
                )

            wait_until(enforced, 10, "the second worker to enforce the policy")
            assert other.call({"op": "policies"})["policies"] == [
                {"path": "/b/hot", "policy": {"ttl": 3600.0, "replicas": "all"}}
            ]
            with pytest.raises(PermissionError, match="policy_set is refused over TCP"):
                other.call(header)  # no admin secret
        finally:
            one.close()
            other.close()
