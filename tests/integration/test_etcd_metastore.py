"""What the etcd MetaStore adds to the shared conformance suite: its place in etcd's key
space, sharing and isolation between processes' stores, paged scans, and errors."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from shoal.control._etcd import EtcdClient, EtcdError, EtcdMetaStore, EtcdUnavailableError


def new_prefix() -> str:
    return f"/shoal-{uuid.uuid4().hex[:12]}/"


@pytest.fixture
def client(etcd_server):
    with EtcdClient(etcd_server.endpoint) as c:
        yield c


def test_documents_live_under_prefix_meta(etcd_server, client):
    prefix = new_prefix()
    with EtcdMetaStore(etcd_server.endpoint, prefix) as store:
        store.put("mounts/data", {"uri": "s3://b/", "options": {}})
        raw = client.get(f"{prefix}meta/mounts/data".encode())
        assert json.loads(raw.value) == {"uri": "s3://b/", "options": {}}
        assert store.endpoint == etcd_server.endpoint
        # keys outside meta/ are not the store's
        client.put(f"{prefix}workers/w1".encode(), b"{}")
        assert [k for k, _ in store.scan("")] == ["mounts/data"]


def test_same_prefix_shares_other_prefix_isolates(etcd_server):
    prefix = new_prefix()
    with (
        EtcdMetaStore(etcd_server.endpoint, prefix) as a,
        EtcdMetaStore(etcd_server.endpoint, prefix) as b,
        EtcdMetaStore(etcd_server.endpoint, new_prefix()) as other,
    ):
        a.put("policies/x", {"replicas": 2})
        assert b.get("policies/x") == {"replicas": 2}
        assert other.get("policies/x") is None and list(other.scan("")) == []
        assert b.delete("policies/x") and a.get("policies/x") is None


def test_paged_scan_reads_one_revision(etcd_server, client):
    base = f"{new_prefix()}jobs/".encode()
    for i in range(23):
        client.put(base + b"%02d" % i, b"%d" % i)
    pages = client.scan(base, page=5)
    first = [next(pages) for _ in range(6)]  # past the first page
    client.put(base + b"99", b"late")  # after the scan's revision: not seen
    client.delete(base + b"20")  # deleted after it: still seen
    rest = list(pages)
    assert [kv.value for kv in first + rest] == [b"%d" % i for i in range(23)]
    kvs, revision = client.snapshot(base, page=4)
    assert len(kvs) == 23 and revision > 0


def test_bad_keys_and_oversized_values(etcd_server):
    with EtcdMetaStore(etcd_server.endpoint, new_prefix()) as store:
        with pytest.raises(TypeError, match="keys are str"):
            store.get(b"bytes")
        with pytest.raises(TypeError, match="keys are str"):
            store.put(7, {})
        with pytest.raises(TypeError, match="keys are str"):
            list(store.scan(None))
        with pytest.raises(EtcdError, match="request is too large"):
            store.put("huge", "x" * (1800 << 10))
        assert store.get("huge") is None


def test_closed_store(etcd_server):
    store = EtcdMetaStore(etcd_server.endpoint, new_prefix())
    store.close()
    with pytest.raises(OSError, match="closed"):
        store.get("k")


def test_etcd_down_is_a_connection_error_then_recovers(private_etcd):
    store = EtcdMetaStore(private_etcd.endpoint, new_prefix(), timeout=2.0)
    store.put("k", 1)
    private_etcd.stop()
    start = time.monotonic()
    with pytest.raises(ConnectionError, match=f"etcd at {private_etcd.endpoint}") as excinfo:
        store.put("k", 2)
    assert isinstance(excinfo.value, EtcdUnavailableError)
    with pytest.raises(ConnectionError):
        store.get("k")
    assert time.monotonic() - start < 10
    private_etcd.start()
    assert store.get("k") == 1
    store.put("k", 3)
    assert store.get("k") == 3
    store.close()
