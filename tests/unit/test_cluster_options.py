"""Cluster settings and their bad values: the replicas mount option, --replicas,
shoal worker drain arguments, membership_file, the TCP listener, load placement."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal import Client
from shoal._config import Config
from shoal.cli import build_parser, main
from shoal.client._router import _rounds
from shoal.control._load import placement_filter
from shoal.control._namespace import split_mount_options
from shoal.control._server import _tcp_listener


@pytest.mark.parametrize("value", [1, 3, "all"])
def test_replicas_option(value):
    own, store = split_mount_options({"replicas": value, "endpoint_url": "http://x"})
    assert own["replicas"] == value and store == {"endpoint_url": "http://x"}
    assert split_mount_options({})[0]["replicas"] == 1


@pytest.mark.parametrize("value", [0, -2, "two", "ALL", True, 1.5, None])
def test_bad_replicas_option(value):
    with pytest.raises(ValueError, match="replicas must be an int >= 1 or 'all'"):
        split_mount_options({"replicas": value})


def test_mount_add_replicas_flag(capsys):
    args = build_parser().parse_args(["mount", "add", "/m", "s3://b", "--replicas", "all"])
    assert args.replicas == "all"
    args = build_parser().parse_args(["mount", "add", "/m", "s3://b", "--replicas", "2"])
    assert args.replicas == 2
    for bad in ("0", "x", "-1"):
        with pytest.raises(SystemExit) as exc:
            build_parser().parse_args(["mount", "add", "/m", "s3://b", "--replicas", bad])
        assert exc.value.code == 2
        assert "expected an int >= 1 or 'all'" in capsys.readouterr().err


def test_worker_drain_arguments(capsys):
    assert main(["worker", "drain"]) == 1
    assert "give the worker's ID" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["worker", "evict", "w-1"])
    capsys.readouterr()


def test_workers_without_a_cluster(tmp_path, monkeypatch, capsys):
    for var in ("SHOAL_ETCD", "SHOAL_MEMBERSHIP_FILE"):
        monkeypatch.delenv(var, raising=False)
    assert main(["workers", "--home", str(tmp_path)]) == 1
    assert "no cluster configured" in capsys.readouterr().err


def test_membership_file_setting(tmp_path):
    config = Config(home=str(tmp_path), membership_file="members.yaml", capacity="64MiB")
    assert config.membership_file.endswith("/members.yaml") and config.membership_file[0] == "/"
    with pytest.raises(ValueError, match="membership_file must be a non-empty string"):
        Config(home=str(tmp_path), membership_file=" ", capacity="64MiB")
    with pytest.raises(ValueError, match="exclusive"):
        Config(home=str(tmp_path), membership_file="m", etcd="http://h:1", capacity="64MiB")


def test_tcp_listener_errors():
    sock = _tcp_listener("127.0.0.1:0")
    try:
        port = sock.getsockname()[1]
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}"):
            _tcp_listener(f"127.0.0.1:{port}")  # taken
    finally:
        sock.close()
    with pytest.raises(OSError, match="cannot listen on no-such-host.invalid:1"):
        _tcp_listener("no-such-host.invalid:1")


class _File:
    def __init__(self, fid: bytes, replicas):
        self.fid = fid
        self.own = {"replicas": replicas}


class _Page:
    def __init__(self, index: int):
        self.index = index


def test_placement_filter_splits_pages_and_honours_replicas():
    nodes = [["a", 1.0], ["b", 1.0], ["c", 2.0]]
    pages = [_Page(i) for i in range(64)]
    for replicas, copies in ((1, 1), (2, 2), ("all", 3)):
        f = _File(b"f" * 16, replicas)
        held = {}
        for me in "abc":
            mine = placement_filter({"nodes": nodes}, me, 4096, 4 * 4096)
            for p in mine(f, pages):
                held[p.index] = held.get(p.index, 0) + 1
        assert held == dict.fromkeys(range(64), copies)
        # whole chunks go together
        mine = placement_filter({"nodes": nodes}, "a", 4096, 4 * 4096)
        per_chunk = {}
        for p in mine(f, pages):
            per_chunk[p.index // 4] = per_chunk.get(p.index // 4, 0) + 1
        assert set(per_chunk.values()) <= {4}
    assert placement_filter(None, None, 4096, 4096)(f, pages) is pages


@pytest.mark.parametrize(
    "placement, match",
    [
        ({"nodes": [["a", 1.0]]}, "is not among"),
        ({"nodes": []}, "is not among"),
        ({}, "malformed placement"),
        ({"nodes": [["a", -1]]}, "malformed placement"),
        ({"nodes": "ab"}, "malformed placement"),
    ],
)
def test_bad_placement(placement, match):
    with pytest.raises(ValueError, match=match):
        placement_filter(placement, "z", 4096, 4096)


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 5000), max_size=40),
    round_bytes=st.integers(1, 20000),
)
def test_rounds_keep_order_and_stay_within_the_round_size(sizes, round_bytes):
    pieces = [(memoryview(bytearray(n)), i) for i, n in enumerate(sizes)]
    batches = _rounds(pieces, round_bytes)
    assert [p for b in batches for p in b] == pieces
    for batch in batches:
        assert batch
        total = sum(p[0].nbytes for p in batch)
        assert total <= round_bytes or len(batch) == 1


def test_load_replicas_override_and_flag(tmp_path):
    nodes = [["a", 1.0], ["b", 1.0], ["c", 1.0]]
    pages = [_Page(i) for i in range(32)]
    f = _File(b"g" * 16, 1)
    for forced, copies in ((2, 2), ("all", 3)):
        held = {}
        for me in "abc":
            mine = placement_filter({"nodes": nodes, "replicas": forced}, me, 4096, 4096)
            for p in mine(f, pages):
                held[p.index] = held.get(p.index, 0) + 1
        assert held == dict.fromkeys(range(32), copies)
    with pytest.raises(ValueError, match="malformed placement"):
        placement_filter({"nodes": nodes, "replicas": 0}, "a", 4096, 4096)
    assert build_parser().parse_args(["load", "/x", "--replicas", "all"]).replicas == "all"
    client = Client(Config(home=str(tmp_path), capacity="64MiB"), start_worker=False)
    try:
        with pytest.raises(ValueError, match="replicas must be an int >= 1 or 'all'"):
            client.load("/x", replicas=0)
    finally:
        client.close()
