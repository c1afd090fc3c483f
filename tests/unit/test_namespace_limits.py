"""Limits of the namespace: path length and components, mounts per table, and a resolve
that takes time linear in the path (it holds the table's lock)."""

from __future__ import annotations

import errno
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.control._metastore import LocalMetaStore
from shoal.control._namespace import (
    MAX_MOUNTS,
    MAX_PATH_BYTES,
    MAX_PATH_COMPONENTS,
    MountTable,
    normalize_path,
)


@pytest.fixture
def table(tmp_path):
    store = LocalMetaStore(tmp_path / "meta")
    yield MountTable(store)
    store.close()


def test_path_limits():
    assert normalize_path("/" + "a" * (MAX_PATH_BYTES - 1)) == "/" + "a" * (MAX_PATH_BYTES - 1)
    with pytest.raises(ValueError, match="longer than 4096"):
        normalize_path("/" + "a" * MAX_PATH_BYTES)
    with pytest.raises(ValueError, match="longer than 4096"):
        normalize_path("/" + "é" * 2048)  # 4097 bytes in UTF-8
    assert normalize_path("/a" * MAX_PATH_COMPONENTS).count("/") == MAX_PATH_COMPONENTS
    with pytest.raises(ValueError, match="1025 components"):
        normalize_path("/a" * (MAX_PATH_COMPONENTS + 1))


def test_a_250k_component_path_is_refused_at_once(table):
    table.mount("/d", "s3://bucket/")
    start = time.process_time()
    with pytest.raises(ValueError, match="longer than"):
        table.resolve("/d" + "/a" * 250_000)
    assert time.process_time() - start < 0.1


def test_resolve_is_linear_in_the_path(table):
    """The deepest path allowed, under many mounts: microseconds, not seconds."""
    for i in range(200):
        table.mount("/a" * (i % 50 + 1) + f"/m{i}", "s3://bucket/")
    table.mount("/a", "s3://bucket/top/")
    deep = "/a" * MAX_PATH_COMPONENTS
    start = time.perf_counter()
    for _ in range(100):
        mount, rel = table.resolve(deep)
    per_call = (time.perf_counter() - start) / 100
    assert mount.path == "/a" and rel == "/".join(["a"] * (MAX_PATH_COMPONENTS - 1))
    assert per_call < 0.005


@settings(max_examples=100, deadline=None)
@given(
    mounts=st.lists(
        st.lists(st.sampled_from("abc"), min_size=0, max_size=4).map(lambda p: "/" + "/".join(p)),
        min_size=1,
        max_size=6,
        unique=True,
    ),
    path=st.lists(st.sampled_from("abcd"), max_size=6).map(lambda p: "/" + "/".join(p)),
)
def test_resolve_finds_the_longest_mounted_prefix(tmp_path_factory, mounts, path):
    store = LocalMetaStore(tmp_path_factory.mktemp("meta"))
    try:
        table = MountTable(store)
        for m in mounts:
            table.mount(m, f"s3://bucket{m}")
        covering = [
            m for m in mounts if m == "/" or path == m or path.startswith(m.rstrip("/") + "/")
        ]
        if not covering:
            with pytest.raises(FileNotFoundError):
                table.resolve(path)
            return
        best = max(covering, key=len)
        mount, rel = table.resolve(path)
        assert mount.path == best
        assert rel == path[len(best) :].lstrip("/")
    finally:
        store.close()


def test_mount_table_is_capped(table):
    for i in range(MAX_MOUNTS):
        table.mount(f"/m{i}", "s3://bucket/")
    with pytest.raises(OSError, match="mount table is full") as info:
        table.mount("/one-more", "s3://bucket/")
    assert info.value.errno == errno.ENOSPC
    table.unmount("/m0")
    table.mount("/one-more", "s3://bucket/")


def test_other_resolves_go_on_while_a_long_path_is_refused(table):
    table.mount("/d", "s3://bucket/")
    done = []

    def attack():
        for _ in range(20):
            with pytest.raises(ValueError):
                table.resolve("/d" + "/a" * 250_000)
        done.append(True)

    t = threading.Thread(target=attack)
    t.start()
    slowest = 0.0
    while t.is_alive():
        start = time.perf_counter()
        assert table.resolve("/d/x")[1] == "x"
        slowest = max(slowest, time.perf_counter() - start)
    t.join()
    assert done and slowest < 0.1
