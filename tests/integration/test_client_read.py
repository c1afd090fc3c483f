"""Reads through a real worker daemon: S3 (moto) and local mounts, exact bytes, the cache
(hits, short-circuit, corruption, eviction), metadata, load and free, many readers."""

from __future__ import annotations

import io
import multiprocessing
import os
import pickle
import shutil
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal import Client
from shoal.client import FileInfo, LoadProgress

PAGE = 64 << 10  # the page size of the tests' configuration (conftest.SMALL_CONFIG)
SIZES = [0, 1, 1000, PAGE - 1, PAGE, PAGE + 1, 3 * PAGE + 17, 1_000_003]


def random_bytes(size: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


@pytest.fixture(scope="module")
def s3_files(shared):
    client, bucket, _ = shared
    files = {}
    for i, size in enumerate(SIZES):
        data = random_bytes(size, i)
        bucket.put(f"data/f{i}", data)
        files[f"/s3/data/f{i}"] = data
    return files


def read_all(client, path, size, offset=0, extra=0):
    buf = bytearray(size + extra)
    n = client.read_into(buf, path, offset)
    return bytes(buf[:n])


def test_s3_reads_exact_bytes_cold_then_warm(shared, s3_files):
    client, _, _ = shared
    before = client.report()
    for path, data in s3_files.items():
        assert read_all(client, path, len(data), extra=10) == data
    cold = client.report()
    for path, data in s3_files.items():
        assert read_all(client, path, len(data)) == data
    warm = client.report()
    pages = sum(-(-len(d) // PAGE) for d in s3_files.values())
    assert cold["ufs_bytes"] - before["ufs_bytes"] == sum(len(d) for d in s3_files.values())
    # The warm pass is served from the cache: hits only, read short-circuit.
    assert warm["ufs_bytes"] == cold["ufs_bytes"]
    assert warm["page_hits"] - cold["page_hits"] == pages
    assert warm["page_misses"] == cold["page_misses"]
    assert warm["pages_located"] - cold["pages_located"] == pages
    assert warm["hit_ratio"] > 0


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    which=st.integers(0, len(SIZES) - 1),
    offset=st.integers(0, 1_100_000),
    length=st.integers(0, 300_000),
)
def test_ranges_match_the_object(shared, s3_files, which, offset, length):
    client, _, _ = shared
    path = f"/s3/data/f{which}"
    data = s3_files[path]
    buf = bytearray(b"\xee" * (length + 3))
    view = memoryview(buf)[:length]
    n = client.read_into(view, path, offset)
    expected = data[offset : offset + length]
    assert n == len(expected)
    assert bytes(buf[:n]) == expected
    assert buf[length:] == b"\xee" * 3  # nothing written past the destination


def test_buffers_numpy_torch_memoryview(shared, s3_files):
    import torch

    client, _, _ = shared
    path = "/s3/data/f7"
    data = s3_files[path]
    arr = np.zeros(len(data), dtype=np.uint8)
    assert client.read_into(arr, path) == len(data)
    assert arr.tobytes() == data
    words = np.zeros(1000, dtype=np.float32)  # 4000 bytes, any dtype
    assert client.read_into(words, path, 10) == 4000
    assert words.tobytes() == data[10:4010]
    tensor = torch.zeros(5000, dtype=torch.uint8)
    assert client.read_into(tensor, path, 3 * PAGE - 5) == 5000
    assert bytes(tensor.numpy()) == data[3 * PAGE - 5 : 3 * PAGE + 4995]


def test_eof_and_past_it(shared, s3_files):
    client, _, _ = shared
    data = s3_files["/s3/data/f6"]
    buf = bytearray(100)
    assert client.read_into(buf, "/s3/data/f6", len(data) - 40) == 40
    assert bytes(buf[:40]) == data[-40:]
    assert client.read_into(buf, "/s3/data/f6", len(data)) == 0
    assert client.read_into(buf, "/s3/data/f6", 10**15) == 0
    assert client.read_into(bytearray(0), "/s3/data/f6", 5) == 0
    assert client.read_into(buf, "/s3/data/f0") == 0  # an empty object


def test_read_many_into(shared, s3_files):
    client, _, _ = shared
    items = [(bytearray(len(d) + 5), p, 0) for p, d in s3_files.items()]
    items.append((bytearray(100), "/s3/data/f7", 500))
    items.append((bytearray(10), "/s3/data/f2"))
    counts = client.read_many_into(items)
    for (buf, path, *rest), n in zip(items, counts, strict=True):
        offset = rest[0] if rest else 0
        expected = s3_files[path][offset : offset + len(buf)]
        assert n == len(expected) and bytes(buf[:n]) == expected
    assert client.read_many_into([]) == []


def test_open_is_a_seekable_file(shared, s3_files):
    client, _, _ = shared
    data = s3_files["/s3/data/f7"]
    with client.open("/s3/data/f7") as f:
        assert isinstance(f, io.BufferedReader)
        assert f.seekable() and f.readable()
        assert f.read(10) == data[:10]
        assert f.seek(PAGE - 3) == PAGE - 3
        assert f.read(10) == data[PAGE - 3 : PAGE + 7]
        f.seek(-5, os.SEEK_END)
        assert f.read() == data[-5:]
        assert f.read() == b""
        f.seek(100)
        assert f.tell() == 100
        assert f.read() == data[100:]
    with pytest.raises(ValueError, match="closed"):
        f.read(1)
    with client.open("/s3/data/f3") as f:
        assert b"".join(iter(lambda: f.read(777), b"")) == s3_files["/s3/data/f3"]
        with pytest.raises(ValueError, match="negative seek"):
            f.seek(-1)


def test_stat_ls_exists_mounts(shared, s3_files):
    client, bucket, _ = shared
    info = client.stat("/s3/data/f4")
    assert isinstance(info, FileInfo)
    assert (info.path, info.size, info.is_dir) == ("/s3/data/f4", PAGE, False)
    assert info.version and info.mtime > 0
    assert client.stat("/s3/data").is_dir
    assert client.stat("/s3").is_dir
    names = [e.path for e in client.ls("/s3/data")]
    assert names == sorted(s3_files)
    assert [(e.path, e.is_dir) for e in client.ls("/s3")] == [("/s3/data", True)]
    assert [(e.path, e.is_dir) for e in client.ls("/")] == [("/s3", True)]
    assert [e.path for e in client.ls("/s3/data/f2")] == ["/s3/data/f2"]
    assert client.exists("/s3/data/f1")
    assert not client.exists("/s3/data/nope")
    assert not client.exists("/elsewhere/x")
    mounts = client.mounts()
    assert [(m.path, m.uri) for m in mounts] == [("/s3", f"s3://{bucket.name}")]
    assert mounts[0].options["access_key_env"]  # a reference to a variable, not a secret


def test_local_mount(client, tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    files = {f"sub/x{i}": random_bytes(s, 100 + i) for i, s in enumerate([5, PAGE * 2 + 1])}
    for name, data in files.items():
        (root / name).write_bytes(data)
    client.mount("/local", str(root))
    for name, data in files.items():
        assert read_all(client, f"/local/{name}", len(data)) == data
    mount = client.unmount("/local")
    assert mount.uri == str(root)
    with pytest.raises(FileNotFoundError, match="not under any mount"):
        client.read_into(bytearray(5), "/local/sub/x0")
    client.mount("/local", f"file://{root}")
    assert read_all(client, "/local/sub/x0", 5) == files["sub/x0"]


def test_changed_object_after_refresh(client, bucket):
    client.mount("/m", f"s3://{bucket.name}", **bucket.options())
    old, new = random_bytes(3 * PAGE, 1), random_bytes(2 * PAGE + 5, 2)
    bucket.put("obj", old)
    assert read_all(client, "/m/obj", len(old)) == old
    bucket.put("obj", new)
    # Until refreshed, the cached version is served whole: never a mix of both.
    assert read_all(client, "/m/obj", len(old)) == old
    client.refresh("/m")
    assert client.stat("/m/obj").size == len(new)
    assert read_all(client, "/m/obj", len(old)) == new


def test_zero_metadata_ttl_sees_changes_at_once(client, bucket):
    client.mount("/m", f"s3://{bucket.name}", **bucket.options(metadata_ttl=0))
    fresh = Client(client.config, metadata_ttl=0)
    try:
        bucket.put("obj", b"first version")
        assert read_all(fresh, "/m/obj", 100) == b"first version"
        bucket.put("obj", b"second, longer version")
        assert read_all(fresh, "/m/obj", 100) == b"second, longer version"
    finally:
        fresh.close()


def test_object_changed_under_a_stale_client(client, bucket):
    """The worker checks every read's version; a client with old metadata retries."""
    client.mount("/m", f"s3://{bucket.name}", **bucket.options(metadata_ttl=0))
    bucket.put("obj", b"a" * 100)
    assert read_all(client, "/m/obj", 100) == b"a" * 100  # client caches version 1
    bucket.put("obj", b"b" * 50)
    assert read_all(client, "/m/obj", 100) == b"b" * 50


def test_load_and_free(client, bucket):
    client.mount("/m", f"s3://{bucket.name}", **bucket.options())
    files = {f"ds/{i:03d}": random_bytes(1000 * i + 1, i) for i in range(30)}
    files["ds/big"] = random_bytes(5 * PAGE + 3, 99)
    for key, data in files.items():
        bucket.put(key, data)
    total = sum(len(d) for d in files.values())
    done = client.load("/m/ds", metadata_only=True)
    assert done == LoadProgress(len(files), len(files), total, total)
    assert client.report()["pages"] == 0
    seen = []

    def progress(p):
        seen.append(p)
        client.report()  # the client stays usable while it loads

    done = client.load(["/m/ds"], progress=progress)
    assert done == LoadProgress(len(files), len(files), total, total)
    assert seen and seen[-1] == done
    assert all(isinstance(p, LoadProgress) and p.files_total == len(files) for p in seen)
    assert [p.files_done for p in seen] == sorted(p.files_done for p in seen)
    report = client.report()
    pages = sum(-(-len(d) // PAGE) for d in files.values())
    assert report["pages"] == pages
    ufs = report["ufs_bytes"]
    for key, data in files.items():
        assert read_all(client, f"/m/{key}", len(data)) == data
    assert client.report()["ufs_bytes"] == ufs  # every page came from the cache
    assert client.free("/m/ds/big") == {"pages": 6, "bytes": 5 * PAGE + 3}
    assert client.free("/m/ds") == {"pages": pages - 6, "bytes": total - (5 * PAGE + 3)}
    assert client.report()["pages"] == 0
    assert read_all(client, "/m/ds/big", 6 * PAGE) == files["ds/big"]
    assert client.load("/m/ds/005") == LoadProgress(1, 1, 5001, 5001)


def test_sequential_reads_prefetch(client, bucket):
    client.mount("/m", f"s3://{bucket.name}", **bucket.options(read_ahead=3))
    data = random_bytes(10 * PAGE, 5)
    bucket.put("seq", data)
    with client.open("/m/seq", buffer_size=PAGE) as f:
        assert f.read(PAGE) == data[:PAGE]
        report = client.report()
        assert report["pages_prefetched"] == 3
        assert f.read() == data[PAGE:]


def test_corrupt_cached_pages_are_refetched(client, shoal_home, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    data = random_bytes(4 * PAGE + 100, 8)
    (root / "f").write_bytes(data)
    client.mount("/c", str(root))
    assert read_all(client, "/c/f", len(data)) == data
    before = client.report()
    regions = os.path.join(shoal_home, "cache", "regions")
    for name in os.listdir(regions):
        path = os.path.join(regions, name)
        with open(path, "r+b") as f:
            f.write(b"\x5a" * os.path.getsize(path))  # every cached byte is now wrong
    assert read_all(client, "/c/f", len(data)) == data
    after = client.report()
    assert after["ufs_bytes"] - before["ufs_bytes"] == len(data)
    assert after["pages_sent"] > before["pages_sent"]  # served over the socket instead


def test_more_data_than_cache(daemons, bucket):
    """A 4 MiB cache, a file larger than it and more data than it, read twice: regions are
    reclaimed while their pages are being read."""
    files = {"big": random_bytes(6 << 20, 300)}
    files.update({f"k{i}": random_bytes(1 << 20, 200 + i) for i in range(4)})
    for key, data in files.items():
        bucket.put(key, data)
    with daemons.environment(capacity=4 << 20):
        client = Client()
        try:
            client.mount("/m", f"s3://{bucket.name}", **bucket.options())
            for _ in range(2):
                for key, data in files.items():
                    assert read_all(client, f"/m/{key}", len(data)) == data
            usage = client.report()["tiers"]["SSD"]
            assert usage["allocated_bytes"] <= usage["capacity"] == 4 << 20
        finally:
            client.close()


def test_threads_share_a_client(shared, s3_files):
    client, _, _ = shared
    errors = []

    def reader(seed):
        rng = np.random.default_rng(seed)
        try:
            for _ in range(30):
                path = f"/s3/data/f{rng.integers(len(SIZES))}"
                data = s3_files[path]
                offset = int(rng.integers(0, len(data) + 1))
                assert read_all(client, path, 70_000, offset) == data[offset : offset + 70_000]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors


def _read_in_child(client, expected: dict) -> list[str]:
    bad = []
    for path, data in expected.items():
        buf = bytearray(len(data))
        if client.read_into(buf, path) != len(data) or bytes(buf) != data:
            bad.append(path)
    return bad


_INHERITED = {}


def _forked_reader(_):
    client, expected = _INHERITED["client"], _INHERITED["files"]
    return os.getpid(), _read_in_child(client, expected)


def _spawned_reader(args):
    client, expected = args
    return os.getpid(), _read_in_child(client, expected)


def test_forked_processes_read(shared, s3_files):
    client, _, _ = shared
    assert read_all(client, "/s3/data/f7", 10) == s3_files["/s3/data/f7"][:10]
    _INHERITED.update(client=client, files=s3_files)
    try:
        with multiprocessing.get_context("fork").Pool(3) as pool:
            results = pool.map(_forked_reader, range(6))
    finally:
        _INHERITED.clear()
    assert all(bad == [] for _, bad in results)
    # The parent's connection still works: the children never touched it.
    assert read_all(client, "/s3/data/f7", 10) == s3_files["/s3/data/f7"][:10]


def test_spawned_processes_read(shared, s3_files):
    client, _, _ = shared
    assert pickle.loads(pickle.dumps(client)).config == client.config
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = pool.map(_spawned_reader, [(client, s3_files)] * 2)
    assert all(bad == [] for _, bad in results)


def test_concurrent_misses_fetch_each_page_once(client, bucket):
    client.mount("/m", f"s3://{bucket.name}", **bucket.options(read_ahead=0))
    data = random_bytes(12 * PAGE + 1, 11)
    bucket.put("hot", data)
    client.stat("/m/hot")
    before = client.report()
    start = threading.Barrier(4)
    errors = []

    def reader():
        try:
            start.wait(10)
            assert read_all(client, "/m/hot", len(data)) == data
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    after = client.report()
    assert after["ufs_pages"] - before["ufs_pages"] == 13  # every page fetched once
    assert after["ufs_bytes"] - before["ufs_bytes"] == len(data)


def test_mem_tier_first(daemons, tmp_path):
    """With a MEM tier (tmpfs), pages go there first and are read short-circuit from it."""
    (tmp_path / "f").write_bytes(data := random_bytes(3 * PAGE, 12))
    with daemons.environment(mem_capacity=1 << 20) as home:
        client = Client()
        mem_dir = client.config.mem_dir
        try:
            client.mount("/d", str(tmp_path))
            for _ in range(2):
                assert read_all(client, "/d/f", len(data)) == data
            report = client.report()
            assert report["tiers"]["MEM"]["pages"] == 3
            assert report["tiers"]["SSD"]["pages"] == 0
            assert report["pages_located"] == 6
        finally:
            client.close()
            daemons.stop(home)
            shutil.rmtree(mem_dir, ignore_errors=True)


def test_reads_larger_than_a_round(daemons, tmp_path):
    """4 KiB pages in 4 KiB regions, a 255-region cache: a read of 230 pages goes in
    rounds of a quarter of the cache, each located and read before the next."""
    data = random_bytes(230 * 4096 - 100, 13)
    (tmp_path / "f").write_bytes(data)
    tiny = {"page_size": 4096, "region_size": 4096, "chunk_size": 16384, "capacity": 255 * 4096}
    with daemons.environment(**tiny):
        client = Client()
        try:
            client.mount("/d", str(tmp_path))
            for _ in range(2):
                assert read_all(client, "/d/f", len(data)) == data
                assert read_all(client, "/d/f", 5000, 4090) == data[4090:9090]
            report = client.report()
            assert report["requests"] > 4  # rounds
            assert report["pages_located"] == 2 * (230 + 3)  # 5000 bytes at 4090: 3 pages
        finally:
            client.close()


def test_batch_of_cold_small_files_lists_instead_of_stat(client, bucket):
    client.mount("/m", f"s3://{bucket.name}", **bucket.options())
    files = {f"set/{i:03d}": random_bytes(100 + i, 400 + i) for i in range(40)}
    bucket.put("set/000-other", b"not asked for")
    bucket.put("zzz", b"elsewhere")
    for key, data in files.items():
        bucket.put(key, data)
    items = [(bytearray(200), f"/m/{key}", 0) for key in list(files)[5:35]]
    items.append((bytearray(10), "/m/zzz", 0))
    counts = client.read_many_into(items)
    for (buf, path, _), n in zip(items, counts, strict=True):
        expected = b"elsewhere" if path == "/m/zzz" else files[path[3:]]
        assert bytes(buf[:n]) == expected
    sent = client.report()["ufs_requests"]
    # One listing for the 30 files of set/ (the mount's check listed one object before);
    # zzz, alone in its directory, is learnt from its GET: no HEAD at all.
    assert (sent["LIST"], sent["HEAD"], sent["GET"]) == (2, 0, 31)
    # The listing says what is not there either: no request at all.
    with pytest.raises(FileNotFoundError):
        client.read_many_into([(bytearray(1), f"/m/set/{i:03d}x", 0) for i in range(10)])
    assert client.report()["ufs_requests"] == sent


def test_region_descriptors_past_the_limit_are_closed(daemons, tmp_path, monkeypatch):
    """A connection keeps few region files open (8 here): older ones are closed after each
    read and the worker told, so it passes them again when they are needed."""
    from shoal.client import _connection

    monkeypatch.setattr(_connection, "MAX_REGION_FDS", 8)
    data = random_bytes(100 * 4096 - 7, 14)
    (tmp_path / "f").write_bytes(data)
    tiny = {"page_size": 4096, "region_size": 4096, "chunk_size": 16384, "capacity": 200 * 4096}
    with daemons.environment(**tiny):
        client = Client()
        try:
            client.mount("/d", str(tmp_path))
            for _ in range(3):
                assert read_all(client, "/d/f", len(data)) == data
                assert read_all(client, "/d/f", 100, 50 * 4096 - 50) == data[50 * 4096 - 50 :][:100]
            conn = client._router.home()
            assert conn.region_fds() <= 8
            report = client.report()
            assert report["pages_sent"] == 0  # every page read short-circuit
            assert report["pages_located"] == 3 * (100 + 2)
        finally:
            client.close()
