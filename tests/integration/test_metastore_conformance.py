"""The MetaStore interface, run on every backend: RocksDB on one node, etcd in a cluster."""

from __future__ import annotations

import threading
import uuid

import pytest

from shoal.control._etcd import EtcdMetaStore
from shoal.control._metastore import LocalMetaStore


@pytest.fixture(params=["local", "etcd"])
def store(request, tmp_path):
    if request.param == "local":
        s = LocalMetaStore(tmp_path / "meta")
    else:
        server = request.getfixturevalue("etcd_server")
        s = EtcdMetaStore(server.endpoint, prefix=f"/shoal-{uuid.uuid4().hex[:12]}/")
    yield s
    s.close()


DOCUMENTS = [
    {"uri": "s3://bucket/data/", "options": {"region": "us-east-1", "read_only": True}},
    [1, 2.5, "three", None, {"nested": [True, False]}],
    'text with ünïcødé and "quotes"',
    12345678901234567890,
    0.1,
    True,
    {},
]


def test_missing_key(store):
    assert store.get("mounts/none") is None
    assert store.delete("mounts/none") is False
    assert list(store.scan("mounts/")) == []


@pytest.mark.parametrize("doc", DOCUMENTS, ids=lambda d: type(d).__name__)
def test_put_get_round_trip(store, doc):
    store.put("doc", doc)
    assert store.get("doc") == doc


def test_overwrite_and_delete(store):
    store.put("policies/a", {"tier": "SSD"})
    store.put("policies/a", {"tier": "MEM", "ttl": 60})
    assert store.get("policies/a") == {"tier": "MEM", "ttl": 60}
    assert store.delete("policies/a") is True
    assert store.get("policies/a") is None
    assert store.delete("policies/a") is False


def test_scan_is_by_prefix_in_key_order(store):
    keys = ["mounts/b", "mounts/a", "mounts/a/deeper", "mountsX", "mount", "jobs/1", "mounts/c"]
    for i, key in enumerate(keys):
        store.put(key, {"n": i})
    got = list(store.scan("mounts/"))
    assert [k for k, _ in got] == ["mounts/a", "mounts/a/deeper", "mounts/b", "mounts/c"]
    assert dict(got)["mounts/b"] == {"n": 0}
    assert [k for k, _ in store.scan("mount")] == sorted(k for k in keys if k != "jobs/1")
    assert [k for k, _ in store.scan("")] == sorted(keys)
    assert list(store.scan("zzz")) == []


def test_unicode_keys_sort_by_utf8_bytes(store):
    keys = ["m/é", "m/z", "m/a", "m/日本", "m/\x7f", "m/ÿ"]
    for key in keys:
        store.put(key, key)
    got = [k for k, _ in store.scan("m/")]
    assert got == sorted(keys, key=str.encode)
    assert store.get("m/日本") == "m/日本"
    assert [k for k, _ in store.scan("m/é")] == ["m/é"]


def test_scan_of_many_keys(store):
    for i in range(120):
        store.put(f"jobs/{i:04d}", i)
    got = list(store.scan("jobs/"))
    assert [v for _, v in got] == list(range(120))


def test_concurrent_writers(store):
    def write(t):
        for i in range(15):
            store.put(f"c/{t}/{i:02d}", [t, i])

    threads = [threading.Thread(target=write, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = list(store.scan("c/"))
    assert len(got) == 60
    assert all(v == [int(k.split("/")[1]), int(k.split("/")[2])] for k, v in got)


def test_unserialisable_value(store):
    with pytest.raises(TypeError):
        store.put("bad", {"x": object()})
    assert store.get("bad") is None


def test_context_manager_closes(store):
    with store as s:
        s.put("k", 1)
        assert s.get("k") == 1


def test_compare_and_set(store):
    # absent -> created, both keys at once
    assert store.compare_and_set({"v": (None, {"version": 1}), "r/a": (None, {"x": 1})})
    assert store.get("v") == {"version": 1} and store.get("r/a") == {"x": 1}
    # one comparison fails: nothing changes
    assert not store.compare_and_set({"v": ({"version": 1}, {"version": 2}), "r/a": (None, 5)})
    assert not store.compare_and_set({"v": ({"version": 0}, {"version": 2})})
    assert not store.compare_and_set({"v": (None, {"version": 2})})
    assert store.get("v") == {"version": 1} and store.get("r/a") == {"x": 1}
    # documents compare as JSON, whatever the order of their keys
    store.put("r/b", {"b": 2, "a": 1})
    assert store.compare_and_set({"r/b": ({"a": 1, "b": 2}, None), "v": ({"version": 1}, 2)})
    assert store.get("r/b") is None and store.get("v") == 2


def test_compare_and_set_lets_one_writer_win(store):
    store.put("counter", 0)
    wins = []

    def bump(t):
        for _ in range(10):
            while True:
                now = store.get("counter")
                if store.compare_and_set({"counter": (now, now + 1)}):
                    wins.append(t)
                    break

    threads = [threading.Thread(target=bump, args=(t,)) for t in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.get("counter") == 30 and len(wins) == 30
