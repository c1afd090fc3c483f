"""The metrics operators asked for, from a real worker: the latency of every request sent
to an under-store and its failures, pages hit and missed and bytes served per mount,
evictions and moves between tiers, scraped over HTTP, agree with ``shoal report --json``
and with the reads done; and the latencies and errors an S3 store records against a real
S3 server, failures injected by a proxy."""

from __future__ import annotations

import json
import math
import os

import pytest
from conftest import shoal_environment
from prometheus_client.utils import floatToGoString
from s3server import ACCESS_KEY_ENV, SECRET_KEY_ENV, FaultyProxy
from shoal_cli import ok
from test_metrics import scrape

from shoal import Client
from shoal._config import load_config
from shoal.control._metrics import LATENCY_BUCKETS
from shoal.control.ufs import REQUEST_KINDS, open_store

PAGE = 64 << 10


def read_whole(path: str, size: int) -> None:
    """Read a file with a client of its own: no page location remembered from before, so
    every page is asked of the worker (a hit or a miss there)."""
    client = Client(load_config())
    try:
        assert client.read_into(bytearray(size), path) == size
    finally:
        client.close()


def test_under_store_latency_and_per_mount_counts_agree_with_the_report(tmp_path):
    sizes = {"/a/f": 3 * PAGE + 100, "/b/g": 2 * PAGE + 7}  # 4 pages and 3 pages
    reads = {"/a": ("/a/f", 2), "/b": ("/b/g", 1)}  # per mount: the file, and reads of it
    for path, size in sizes.items():
        where = tmp_path / path.strip("/")
        where.parent.mkdir(exist_ok=True)
        where.write_bytes(os.urandom(size))
    os.symlink(tmp_path / "a" / "f", tmp_path / "a" / "link")  # a store refuses links
    with shoal_environment(metrics_listen="127.0.0.1:0"):
        client = Client(load_config())
        try:
            client.mount("/a", (tmp_path / "a").as_uri())
            client.mount("/b", (tmp_path / "b").as_uri())
            with pytest.raises(PermissionError):
                client.stat("/a/link")
            read_whole("/a/f", sizes["/a/f"])  # 4 misses
            read_whole("/a/f", sizes["/a/f"])  # 4 hits
            read_whole("/b/g", sizes["/b/g"])  # 3 misses
            address = client.report()["worker"]["metrics"]
        finally:
            client.close()
        got = scrape(address)
        report = json.loads(ok("report", "--json"))
        text = ok("report")

    # Every request counted is timed, per mount and kind, and the scrape says what the
    # report says.
    latency, requests = report["ufs_latency"], report["ufs_requests_by_mount"]
    assert set(latency) == {"/a", "/b"}
    for mount, kinds in latency.items():
        sent = {kind: n for kind, n in requests[mount].items() if n}
        assert {kind: h["count"] for kind, h in kinds.items()} == sent, mount
        for kind, h in kinds.items():
            labels = (("kind", kind), ("mount", mount))
            assert got["shoal_ufs_request_seconds_count", labels] == h["count"]
            assert math.isclose(got["shoal_ufs_request_seconds_sum", labels], h["sum"])
            assert 0 < h["sum"] < 60
            assert h["buckets"] == list(LATENCY_BUCKETS)
            for bound, n in zip(h["buckets"], h["counts"], strict=True):
                le = (("kind", kind), ("le", floatToGoString(bound)), ("mount", mount))
                assert got["shoal_ufs_request_seconds_bucket", le] == n
            inf = (("kind", kind), ("le", "+Inf"), ("mount", mount))
            assert got["shoal_ufs_request_seconds_bucket", inf] == h["count"]
    for mount in ("/a", "/b"):
        assert got["shoal_ufs_request_seconds_count", (("kind", "GET"), ("mount", mount))] > 0
    # The refused link is the one failure.
    assert report["ufs_errors"]["/a"] == {**dict.fromkeys(REQUEST_KINDS, 0), "HEAD": 1}
    assert report["ufs_errors"]["/b"] == dict.fromkeys(REQUEST_KINDS, 0)
    for mount, kinds in report["ufs_errors"].items():
        for kind, n in kinds.items():
            assert got["shoal_ufs_request_errors_total", (("kind", kind), ("mount", mount))] == n

    # Pages hit and missed, and bytes, per mount: those of the reads done.
    by_mount = report["by_mount"]
    assert {m: (c["page_hits"], c["page_misses"]) for m, c in by_mount.items()} == {
        "/a": (4, 4),
        "/b": (0, 3),
    }
    assert sum(c["page_misses"] for c in by_mount.values()) == report["page_misses"]
    assert sum(c["page_hits"] for c in by_mount.values()) == report["page_hits"]
    assert {m: c["bytes_ufs"] for m, c in by_mount.items()} == {
        m: sizes[p] for m, (p, _) in reads.items()
    }
    assert sum(c["bytes_ufs"] for c in by_mount.values()) == report["ufs_bytes"]
    for mount, (path, times) in reads.items():
        c = by_mount[mount]
        assert c["bytes_short_circuit"] + c["bytes_socket"] == times * sizes[path]
        m = (("mount", mount),)
        assert got["shoal_mount_page_hits_total", m] == c["page_hits"]
        assert got["shoal_mount_page_misses_total", m] == c["page_misses"]
        assert got["shoal_mount_ufs_read_bytes_total", m] == c["bytes_ufs"]
        for path, field in (("short_circuit", "bytes_short_circuit"), ("socket", "bytes_socket")):
            labels = (("mount", mount), ("path", path))
            assert got["shoal_mount_served_bytes_total", labels] == c[field]

    # Evictions and moves between tiers: the scrape says what the report says.
    for key, name, label in (("evictions", "shoal_evicted", "reason"),
                             ("tier_moves", "shoal_tier_moved", "direction")):  # fmt: skip
        for value, c in report[key].items():
            assert got[f"{name}_pages_total", ((label, value),)] == c["pages"]
            assert got[f"{name}_bytes_total", ((label, value),)] == c["bytes"]

    # shoal report shows the same, per mount and per kind.
    lines = [line.split() for line in text.splitlines()]
    assert ["/a", "4", "4", "50.0%"] in [row[:4] for row in lines]
    assert ["/b", "0", "3", "0.0%"] in [row[:4] for row in lines]
    get_a = latency["/a"]["GET"]
    assert ["/a", "GET", str(get_a["count"]), "0"] in [row[:4] for row in lines]
    assert ["/a", "HEAD", str(latency["/a"]["HEAD"]["count"]), "1"] in [row[:4] for row in lines]


def test_pages_evicted_for_room_are_counted_as_the_report_counts_them(tmp_path):
    for i in range(6):
        (tmp_path / f"f{i}").write_bytes(os.urandom(1 << 20))
    with shoal_environment(metrics_listen="127.0.0.1:0", capacity=4 << 20):
        client = Client(load_config())
        try:
            client.mount("/d", tmp_path.as_uri())
            for i in range(6):  # 6 MiB through a 4 MiB cache
                assert client.read_into(bytearray(1 << 20), f"/d/f{i}") == 1 << 20
            address = client.report()["worker"]["metrics"]
        finally:
            client.close()
        got = scrape(address)
        report = json.loads(ok("report", "--json"))
    capacity = report["evictions"]["capacity"]
    assert capacity["pages"] > 0 and capacity["bytes"] >= capacity["pages"]
    reason = (("reason", "capacity"),)
    assert got["shoal_evicted_pages_total", reason] == capacity["pages"]
    assert got["shoal_evicted_bytes_total", reason] == capacity["bytes"]
    assert report["by_mount"]["/d"]["page_misses"] == 6 * (1 << 20) // PAGE


# ------------------------------------------------------------------- S3


BUCKET = "shoal-latency"


@pytest.fixture
def proxied(s3_server):
    s3_server.client().create_bucket(Bucket=BUCKET)
    s3_server.client().put_object(Bucket=BUCKET, Key="obj", Body=b"0123456789")
    proxies, stores = [], []

    def make(faults):
        proxy = FaultyProxy(s3_server.endpoint_url, faults)
        proxies.append(proxy)
        store = open_store(
            f"s3://{BUCKET}",
            endpoint_url=proxy.endpoint_url,
            region="us-east-1",
            access_key_env=ACCESS_KEY_ENV,
            secret_key_env=SECRET_KEY_ENV,
            retry={"max_attempts": 4, "base_delay": 0.01, "max_delay": 0.05},
        )
        stores.append(store)
        return proxy, store

    yield make
    for store in stores:
        store.close()
    for proxy in proxies:
        proxy.close()


def sent(store) -> dict[str, int]:
    return {kind: n for kind, n in store.requests().items() if n}


def failed(store) -> dict[str, int]:
    return {kind: n for kind, n in store.errors().items() if n}


@pytest.mark.parametrize("via", ["presigned", "client"])
def test_an_s3_store_times_every_request_and_counts_its_failures(proxied, monkeypatch, via):
    if via == "client":  # a proxy in the environment: reads go through the boto3 client
        monkeypatch.setenv("HTTP_PROXY", "http://192.0.2.1:9")
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    proxy, store = proxied([(f"GET /{BUCKET}/obj", 503, "SlowDown")])
    assert (store._gets is None) == (via == "client")
    buf = bytearray(4)
    assert store.read_into("obj", 2, buf) == 4 and buf == b"2345"  # throttled, then read
    assert store.fetch_into("obj", 0, bytearray(10))[0] == 10
    with pytest.raises(FileNotFoundError):
        store.stat("missing")  # a HEAD and a LIST answered: no failure
    store.write("new", b"abc")
    store.delete("new")
    assert sent(store) == {"GET": 3, "HEAD": 3, "LIST": 1, "PUT": 1, "DELETE": 1}
    assert {kind: h["count"] for kind, h in store.latencies().items()} == sent(store)
    assert failed(store) == {"GET": 1}
    assert len(proxy.seen) == sum(sent(store).values())
    for h in store.latencies().values():
        assert 0 < h["sum"] < 60 and h["counts"][-1] == h["count"]


def test_an_expired_url_is_a_failed_get_timed_apart(proxied):
    fault = (f"GET /{BUCKET}/obj", 403, "AccessDenied", "Request has expired")
    proxy, store = proxied([fault])
    assert store.read_into("obj", 0, bytearray(10)) == 10
    assert sent(store) == {"GET": 2}
    assert store.latencies()["GET"]["count"] == 2
    assert failed(store) == {"GET": 1}


def test_a_server_that_keeps_failing_fails_every_attempt(proxied):
    proxy, store = proxied([(f"HEAD /{BUCKET}/obj", 500, "InternalError")] * 10)
    with pytest.raises(OSError):
        store.stat("obj")
    assert sent(store) == failed(store) == {"HEAD": 4}
    assert store.latencies()["HEAD"]["count"] == 4
