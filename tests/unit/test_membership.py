"""Membership without etcd: worker records, worker ids, the local and static memberships,
placement candidates, etcd endpoints and key ranges, and failing fast when etcd is absent."""

from __future__ import annotations

import json
import os
import socket
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal._config import Config
from shoal.control._etcd import (
    EtcdClient,
    EtcdMetaStore,
    EtcdUnavailableError,
    check_prefix,
    parse_endpoint,
    prefix_range_end,
)
from shoal.control._membership import (
    WORKER_ID_FILE,
    EtcdMembership,
    LocalMembership,
    StaticMembership,
    WorkerInfo,
    WorkerRegistration,
    WorkerState,
    load_static_members,
    load_worker_id,
    local_worker_info,
    members_to_nodes,
)
from shoal.control._placement import Node, place

GiB = 1 << 30


def info(worker_id="w1", **fields) -> WorkerInfo:
    base = {"host_id": "node-a", "address": "127.0.0.1:7000", "capacity": GiB}
    return WorkerInfo(worker_id, **{**base, **fields})


# ---------------------------------------------------------------------- WorkerInfo

ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True)
records = st.builds(
    WorkerInfo,
    id=ids,
    host_id=st.text(min_size=1, max_size=20).filter(str.strip),
    address=st.none() | st.builds(lambda p: f"10.0.0.1:{p}", st.integers(1, 65535)),
    socket_path=st.none() | st.just("/tmp/shoal/worker.sock"),
    capacity=st.integers(1, 1 << 50),
    used=st.integers(0, 1 << 50),
    state=st.sampled_from([WorkerState.ONLINE, WorkerState.DRAINING]),
    started=st.floats(0, 4e9, allow_nan=False),
)


@settings(max_examples=100, deadline=None)
@given(records)
def test_worker_info_json_round_trip(record):
    text = record.to_json()
    assert json.loads(text)["state"] in ("ONLINE", "DRAINING")
    assert WorkerInfo.from_json(text) == record
    assert WorkerInfo.from_json(text.encode()) == record
    assert WorkerInfo.from_dict(record.to_dict()) == record


def test_worker_info_state_from_text_and_newer_fields_ignored():
    record = info().to_dict()
    record["state"] = "DRAINING"
    record["zone"] = "eu-1"  # a field of a newer version
    parsed = WorkerInfo.from_json(json.dumps(record))
    assert parsed.state is WorkerState.DRAINING
    with pytest.raises(ValueError, match="unknown field.*zone"):
        WorkerInfo.from_dict(record)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"id": ""}, "worker id"),
        ({"id": "a/b"}, "worker id"),
        ({"id": "-x"}, "worker id"),
        ({"id": 7}, "worker id"),
        ({"host_id": ""}, "host_id"),
        ({"host_id": None}, "host_id"),
        ({"address": "nohost"}, "address"),
        ({"address": "h:0"}, "address"),
        ({"address": "h:70000"}, "address"),
        ({"address": ":80"}, "address"),
        ({"socket_path": "relative.sock"}, "socket_path"),
        ({"capacity": 0}, "capacity"),
        ({"capacity": "1G"}, "capacity"),
        ({"capacity": True}, "capacity"),
        ({"used": -1}, "used"),
        ({"state": "ASLEEP"}, "state must be one of ONLINE, DRAINING, OFFLINE"),
        ({"started": float("nan")}, "started"),
        ({"started": -1}, "started"),
    ],
)
def test_worker_info_rejects_bad_fields(fields, message):
    base = {"id": "w1", "host_id": "h", "address": "127.0.0.1:1", "capacity": 1}
    with pytest.raises(ValueError, match=message):
        WorkerInfo(**{**base, **fields})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not JSON"),
        ("[1, 2]", "mapping"),
        ('{"host_id": "h"}', "missing field 'id'"),
        ('{"id": "w", "host_id": "h", "capacity": -5}', "capacity"),
    ],
)
def test_worker_info_from_bad_json(text, message):
    with pytest.raises(ValueError, match=message):
        WorkerInfo.from_json(text)


def test_ipv6_address():
    assert info(address="[::1]:7000").address == "[::1]:7000"


# ---------------------------------------------------------------------- worker id


def test_worker_id_is_made_once_and_kept(tmp_path):
    home = tmp_path / "home"
    first = load_worker_id(home)
    assert first == load_worker_id(home) == load_worker_id(str(home))
    assert (home / WORKER_ID_FILE).read_text().strip() == first
    assert load_worker_id(tmp_path / "other") != first
    assert [p.name for p in home.iterdir()] == [WORKER_ID_FILE]  # no temporary left


def test_worker_id_made_concurrently_is_one_id(tmp_path):
    got, barrier = [], threading.Barrier(8)

    def make():
        barrier.wait()
        got.append(load_worker_id(tmp_path))

    threads = [threading.Thread(target=make) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got)) == 1 and len(got) == 8


def test_malformed_worker_id_file_names_the_file(tmp_path):
    (tmp_path / WORKER_ID_FILE).write_text("not an id!\n")
    with pytest.raises(ValueError, match=f"{tmp_path / WORKER_ID_FILE}.*remove the file"):
        load_worker_id(tmp_path)


def test_local_worker_info_from_config(tmp_path):
    config = Config(
        home=str(tmp_path),
        capacity=64 << 20,
        mem_capacity=0,
        host_id="node-x",
        listen="0.0.0.0:0",
    )
    record = local_worker_info(config, address="10.1.2.3:7070", socket_path="/run/s.sock")
    assert record.id == load_worker_id(tmp_path)
    assert (record.host_id, record.capacity, record.used) == ("node-x", 64 << 20, 0)
    assert record.address == "10.1.2.3:7070" and record.socket_path == "/run/s.sock"
    assert record.started == pytest.approx(time.time(), abs=60)
    listening = Config(home=str(tmp_path), capacity=64 << 20, mem_capacity=0, listen="h:7")
    assert local_worker_info(listening).address == "h:7"


# ---------------------------------------------------------------------- placement


def test_members_to_nodes_takes_online_workers_weighted_by_capacity():
    members = [
        info("a", capacity=GiB),
        info("b", capacity=3 * GiB, state=WorkerState.DRAINING),
        info("c", capacity=2 * GiB),
        info("d", state=WorkerState.OFFLINE),
    ]
    assert members_to_nodes(members) == [Node("a", float(GiB)), Node("c", float(2 * GiB))]
    assert members_to_nodes([]) == []


def test_draining_worker_gets_no_keys():
    members = [info(f"w{i}") for i in range(4)]
    drained = [m.with_state(WorkerState.DRAINING) if m.id == "w2" else m for m in members]
    nodes = members_to_nodes(drained)
    assert all(place(key, nodes, replicas=2)[0].id != "w2" for key in range(2000))


# ---------------------------------------------------------------------- local


def test_local_membership_is_its_one_worker():
    me = info("me", address=None, socket_path="/tmp/x/worker.sock")
    membership = LocalMembership(me)
    assert membership.members() == [me] and membership.member("me") == me
    assert membership.member("other") is None
    assert membership.roster() == [me]
    assert membership.healthy and membership.last_error is None
    seen = []
    membership.watch(seen.append)
    version = membership.version
    membership.update(me)  # unchanged: no new version
    assert membership.version == version and seen == []
    busier = WorkerInfo(**{**me.to_dict(), "used": 5})
    membership.update(busier)
    assert membership.version == version + 1 and seen == [[busier]]
    membership.close()
    with pytest.raises(TypeError, match="WorkerInfo"):
        LocalMembership({"id": "me"})


def test_watch_callback_errors_are_logged_not_raised(caplog):
    membership = LocalMembership(info("a"))

    def broken(members):
        raise RuntimeError("callback bug")

    cancel = membership.watch(broken)
    seen = []
    membership.watch(seen.append)
    membership.update(info("a", used=1))
    assert len(seen) == 1 and "callback bug" in caplog.text
    cancel()
    cancel()  # twice is fine
    membership.update(info("a", used=2))
    assert len(seen) == 2
    with pytest.raises(TypeError, match="callable"):
        membership.watch("not callable")


# ---------------------------------------------------------------------- static file

GOOD_YAML = """\
workers:
  - id: w1
    host_id: node-a
    address: 10.0.0.1:7070
    capacity: 100GiB
  - id: w2
    host_id: node-b
    address: 10.0.0.2:7070
    capacity: 53687091200
    state: DRAINING
    socket_path: /var/lib/shoal/worker.sock
"""


def write(path, text):
    path.write_text(text)
    return path


def test_static_file_yaml(tmp_path):
    members = load_static_members(write(tmp_path / "m.yaml", GOOD_YAML))
    assert [m.id for m in members] == ["w1", "w2"]
    assert members[0].capacity == 100 * GiB and members[0].state is WorkerState.ONLINE
    assert members[1].capacity == 50 * GiB and members[1].state is WorkerState.DRAINING
    assert members[1].socket_path == "/var/lib/shoal/worker.sock"


def test_static_file_json_list(tmp_path):
    doc = [{"id": "w1", "host_id": "h", "address": "a:1", "capacity": "1G"}]
    membership = StaticMembership(write(tmp_path / "m.json", json.dumps(doc)))
    assert [(m.id, m.capacity) for m in membership.members()] == [("w1", GiB)]
    assert membership.healthy
    membership.close()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("workers: [", "not valid YAML or JSON"),
        ("", "expected a list of workers"),
        ("42", "expected a list of workers"),
        ("workers: []", "lists no workers"),
        ("nodes: []", "unknown key.*nodes"),
        ("- just a string", r"worker #1: expected a mapping"),
        (
            "- {id: w1, host_id: h, address: 'a:1'}",
            r"worker #1 \(w1\): missing field\(s\) capacity",
        ),
        (
            "- {id: w1, host_id: h, address: 'a:1', capacity: 1G}\n"
            "- {id: w2, host_id: h, address: 'nohost', capacity: 1G}",
            r"worker #2 \(w2\): address must be HOST:PORT",
        ),
        (
            "- {id: w1, host_id: h, address: 'a:1', capacity: lots}",
            r"worker #1 \(w1\): capacity: 'lots' is not a size",
        ),
        (
            "- {id: w1, host_id: h, address: 'a:1', capacity: 0}",
            r"worker #1 \(w1\): capacity must be",
        ),
        ("- {id: 'a b', host_id: h, address: 'a:1', capacity: 1G}", "worker id must be"),
        (
            "- {id: w1, host_id: h, address: 'a:1', capacity: 1G, weight: 3}",
            r"worker #1 \(w1\): unknown field\(s\) weight",
        ),
        (
            "- {id: w1, host_id: h, address: 'a:1', capacity: 1G, state: OFFLINE}",
            "state must be ONLINE or DRAINING",
        ),
        (
            "- {id: w1, host_id: h, address: 'a:1', capacity: 1G}\n"
            "- {id: w1, host_id: h2, address: 'b:1', capacity: 1G}",
            r"worker #2 \(w1\): worker id 'w1' is listed twice",
        ),
    ],
)
def test_malformed_static_file_names_file_entry_and_field(tmp_path, text, message):
    path = write(tmp_path / "members.yaml", text)
    with pytest.raises(ValueError, match=message) as excinfo:
        StaticMembership(path)
    assert str(path) in str(excinfo.value)


def test_missing_static_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        StaticMembership(tmp_path / "absent.yaml")


def bump(path, text):
    """Rewrite ``path`` with a modification time surely different from before."""
    before = os.stat(path).st_mtime_ns
    path.write_text(text)
    os.utime(path, ns=(before + 10**9, before + 10**9))


def test_static_file_reloads_when_it_changes(tmp_path, caplog):
    path = write(tmp_path / "m.yaml", GOOD_YAML)
    membership = StaticMembership(path)
    version = membership.version
    assert membership.version == version  # unchanged file: same view
    bump(path, GOOD_YAML.replace("w2", "w3"))
    assert [m.id for m in membership.members()] == ["w1", "w3"]
    assert membership.version == version + 1
    # a broken edit keeps the last good view and says so, once
    bump(path, "workers: [")
    assert [m.id for m in membership.members()] == ["w1", "w3"]
    assert [m.id for m in membership.members()] == ["w1", "w3"]
    assert not membership.healthy and "not valid YAML" in membership.last_error
    assert caplog.text.count("membership unavailable") == 1
    with pytest.raises(ValueError, match="not valid YAML"):
        membership.reload()
    bump(path, GOOD_YAML)
    assert [m.id for m in membership.members()] == ["w1", "w2"] and membership.healthy
    # removed file: last view, unhealthy
    path.unlink()
    assert len(membership.members()) == 2 and not membership.healthy
    membership.close()


def test_static_file_watch_polls(tmp_path):
    path = write(tmp_path / "m.yaml", GOOD_YAML)
    membership = StaticMembership(path, poll=0.05)
    seen = threading.Event()
    got = []
    # a callback may read the view (it runs while the file is being taken in)
    membership.watch(lambda members: (got.append(membership.members()), seen.set()))
    bump(path, GOOD_YAML.replace("node-b", "node-c"))
    assert seen.wait(10)
    assert got[-1][1].host_id == "node-c"
    membership.close()
    with pytest.raises(ValueError, match="poll"):
        StaticMembership(path, poll=0)


# ---------------------------------------------------------------------- etcd arguments


@pytest.mark.parametrize(
    ("endpoint", "normal"),
    [
        ("http://127.0.0.1:2379", "http://127.0.0.1:2379"),
        ("http://etcd.local", "http://etcd.local:2379"),
        (" https://h:1/ ", "https://h:1"),
        ("http://[::1]:2379", "http://[::1]:2379"),
    ],
)
def test_parse_endpoint(endpoint, normal):
    assert parse_endpoint(endpoint) == normal


@pytest.mark.parametrize(
    ("endpoint", "message"),
    [
        ("127.0.0.1:2379", "http:// or https://"),
        ("etcd://h:1", "http:// or https://"),
        ("http://", "names no host"),
        ("http://h:99999", "invalid port"),
        ("http://h:x", "invalid port"),
        ("http://h:0", "port 0"),
        ("http://u:p@h:1", "credentials"),
        ("http://h:1/v3", "no path"),
        ("http://h:1?x=1", "no path"),
    ],
)
def test_bad_endpoint_is_a_value_error(endpoint, message):
    with pytest.raises(ValueError, match=message):
        parse_endpoint(endpoint)
    with pytest.raises(ValueError, match=message):
        EtcdMembership(endpoint)
    with pytest.raises(ValueError, match=message):
        EtcdMetaStore(endpoint)
    with pytest.raises(ValueError, match=message):
        WorkerRegistration(endpoint, info())


def test_bad_arguments():
    with pytest.raises(TypeError, match="URL string"):
        parse_endpoint(2379)
    for prefix in ("shoal/", "/shoal", ""):
        with pytest.raises(ValueError, match="start and end with '/'"):
            check_prefix(prefix)
    with pytest.raises(TypeError, match="prefix must be a str"):
        check_prefix(b"/shoal/")
    with pytest.raises(ValueError, match="timeout"):
        EtcdClient("http://127.0.0.1:1", timeout=0)
    with pytest.raises(TypeError, match="WorkerInfo"):
        WorkerRegistration("http://127.0.0.1:1", {"id": "w"})
    with pytest.raises(ValueError, match="ttl"):
        WorkerRegistration("http://127.0.0.1:1", info(), ttl=0)
    with pytest.raises(ValueError, match="idle"):
        EtcdMembership("http://127.0.0.1:1", idle=-1)


# ---------------------------------------------------------------------- key ranges


@settings(max_examples=300, deadline=None)
@given(prefix=st.binary(min_size=1, max_size=6), key=st.binary(max_size=8))
def test_prefix_range_holds_exactly_the_keys_with_the_prefix(prefix, key):
    end = prefix_range_end(prefix)
    in_range = prefix <= key and (end == b"\0" or key < end)
    assert in_range == key.startswith(prefix)


@settings(max_examples=100, deadline=None)
@given(prefix=st.binary(min_size=1, max_size=6), tail=st.binary(max_size=4))
def test_prefix_range_edges(prefix, tail):
    # every extension of the prefix is inside, however many 0xff bytes it has
    end = prefix_range_end(prefix)
    key = prefix + tail + b"\xff" * 3
    assert prefix <= key and (end == b"\0" or key < end)


def test_prefix_range_end_examples():
    assert prefix_range_end(b"/shoal/") == b"/shoal0"
    assert prefix_range_end(b"a\xff") == b"b"
    assert prefix_range_end(b"\xff\xff") == b"\0"


# ---------------------------------------------------------------------- no etcd there


def closed_port_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.parametrize(
    "connect",
    [
        lambda e: EtcdMembership(e),
        lambda e: WorkerRegistration(e, info()),
        lambda e: EtcdMetaStore(e),
    ],
    ids=["membership", "registration", "metastore"],
)
def test_unreachable_endpoint_fails_fast_naming_it(connect):
    endpoint = closed_port_endpoint()
    start = time.monotonic()
    with pytest.raises(ConnectionError, match=f"cannot reach etcd at {endpoint}") as excinfo:
        connect(endpoint)
    assert time.monotonic() - start < 5
    assert isinstance(excinfo.value, EtcdUnavailableError)
    assert excinfo.value.errno is not None


def test_silent_endpoint_times_out_instead_of_hanging():
    # a listener that accepts connections and never answers
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        endpoint = f"http://127.0.0.1:{server.getsockname()[1]}"
        start = time.monotonic()
        with pytest.raises(ConnectionError, match=f"etcd at {endpoint} did not answer"):
            EtcdMembership(endpoint, timeout=1.0)
        assert time.monotonic() - start < 5


def test_endpoint_that_is_not_etcd():
    import http.server

    class NotEtcd(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"<html>hello</html>"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotEtcd)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        with pytest.raises(OSError, match="does not answer like etcd"):
            EtcdMetaStore(endpoint)
    finally:
        server.shutdown()
        server.server_close()
