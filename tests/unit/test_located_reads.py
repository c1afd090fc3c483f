"""Reads through remembered locations: ``RegionReader.read_located``, ``PageStore.touch``
and the client's bounded ``LocationCache``."""

from __future__ import annotations

import errno
import os
import random
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal.client._locations import LocationCache
from shoal.engine import (
    PageCorruptedError,
    PageStore,
    RegionReader,
    StaleLocationError,
    TierConfig,
)

KiB = 1024
RS = 64 * KiB


def payload(key: str, size: int) -> bytes:
    return random.Random(key).randbytes(size)


def make_store(tmp_path, regions=8, **kwargs) -> PageStore:
    return PageStore(
        [TierConfig("SSD", tmp_path / "ssd", regions * RS)],
        tmp_path / "index",
        region_size=RS,
        **kwargs,
    )


def as_tuple(loc, buf) -> tuple:
    return (loc.tier, loc.region, loc.offset, loc.length, loc.crc32c, loc.generation, buf)


def adopted_reader(store: PageStore) -> RegionReader:
    """A reader holding descriptors only, as a short-circuit client does."""
    reader = RegionReader()
    for tier, path in store.tier_paths.items():
        reader.adopt(tier, None, os.open(os.path.join(path, "generations"), os.O_RDONLY))
        for name in os.listdir(os.path.join(path, "regions")):
            fd = os.open(os.path.join(path, "regions", name), os.O_RDONLY)
            reader.adopt(tier, int(name), fd)
    return reader


# ------------------------------------------------------------------ read_located


def test_read_located_reads_pages_and_reports_failures_per_item(tmp_path):
    with make_store(tmp_path, regions=4) as s:
        sizes = {f"k{i}": 5000 + 3000 * i for i in range(5)}
        s.put_many([(k, payload(k, n)) for k, n in sizes.items()])
        locs = s.locate(list(sizes))
        with adopted_reader(s) as reader:
            bufs = [bytearray(n + 7) for n in sizes.values()]
            got = reader.read_located([as_tuple(x, b) for x, b in zip(locs, bufs, strict=True)])
            assert got == list(sizes.values())
            for (k, n), b in zip(sizes.items(), bufs, strict=True):
                assert bytes(b[:n]) == payload(k, n)
            # A wrong crc, an unknown region and an old generation fail their item only.
            bad_crc = (*as_tuple(locs[0], bytearray(5000))[:4], locs[0].crc32c ^ 1,
                       locs[0].generation, bytearray(5000))  # fmt: skip
            no_fd = ("SSD", 3, 0, 10, 0, 1, bytearray(10))
            old_gen = (*as_tuple(locs[1], None)[:5], locs[1].generation - 1, bytearray(8000))
            ok = as_tuple(locs[2], bytearray(11000))
            got = reader.read_located([bad_crc, no_fd, old_gen, ok])
            assert isinstance(got[0], PageCorruptedError) and got[0].errno == errno.EIO
            assert isinstance(got[1], StaleLocationError) and got[1].errno == errno.ESTALE
            assert "no descriptor for region 3" in str(got[1])
            assert isinstance(got[2], StaleLocationError)
            assert got[3] == 11000 and bytes(ok[6]) == payload("k2", 11000)
            assert reader.read_located([]) == []


def test_read_located_detects_reclaim_and_reuse(tmp_path):
    with make_store(tmp_path, regions=4) as s:
        s.put_many([(f"k{i}", payload(f"k{i}", 20000)) for i in range(3)])
        old = s.locate(["k0", "k1"])
        s.put("next-region", payload("x", RS))  # seals the first region
        with adopted_reader(s) as reader:
            assert s.evict("SSD", 0) == RS
            s.put("n0", payload("n0", 20000))  # new bytes at the old offset
            fresh = s.locate(["n0"])[0]
            assert (fresh.region, fresh.offset) == (old[0].region, old[0].offset)
            bufs = [bytearray(20000) for _ in range(3)]
            got = reader.read_located(
                [as_tuple(old[0], bufs[0]), as_tuple(old[1], bufs[1]), as_tuple(fresh, bufs[2])]
            )
            assert isinstance(got[0], StaleLocationError)
            assert isinstance(got[1], StaleLocationError)
            assert got[2] == 20000 and bytes(bufs[2]) == payload("n0", 20000)


def test_read_located_bad_items(tmp_path):
    with make_store(tmp_path) as s:
        s.put("k", payload("k", 4000))
        loc = s.locate(["k"])[0]
        reader = adopted_reader(s)
        with pytest.raises(TypeError, match="read-only"):
            reader.read_located([as_tuple(loc, b"x" * 4000)])
        with pytest.raises(ValueError, match="too small"):
            reader.read_located([as_tuple(loc, bytearray(100))])
        with pytest.raises(TypeError, match="not a buffer"):
            reader.read_located([as_tuple(loc, 42)])
        with pytest.raises(ValueError):
            reader.read_located([("SSD", loc.region)])
        reader.close()
        with pytest.raises(ValueError, match="closed"):
            reader.read_located([as_tuple(loc, bytearray(4000))])


def test_read_located_while_regions_are_reclaimed(tmp_path):
    """A writer reclaims and refills regions while a reader reads old locations: every
    item either holds its page's bytes or fails as stale or corrupt, never other bytes."""
    with make_store(tmp_path, regions=4, high_watermark=1.0, low_watermark=0.5) as s:
        size = 16 * KiB
        s.put_many([(f"a{i}", payload(f"a{i}", size)) for i in range(12)])
        locs = s.locate([f"a{i}" for i in range(12)])
        stop = threading.Event()

        def write() -> None:
            i = 0
            while not stop.is_set() and i < 400:
                s.put(f"b{i}", payload(f"b{i}", size))
                i += 1

        with adopted_reader(s) as reader:
            writer = threading.Thread(target=write)
            writer.start()
            try:
                for _ in range(40):
                    bufs = [bytearray(size) for _ in locs]
                    got = reader.read_located(
                        [as_tuple(x, b) for x, b in zip(locs, bufs, strict=True)]
                    )
                    for i, (res, buf) in enumerate(zip(got, bufs, strict=True)):
                        if isinstance(res, BaseException):
                            assert isinstance(res, (StaleLocationError, PageCorruptedError))
                        else:
                            assert bytes(buf) == payload(f"a{i}", size)
            finally:
                stop.set()
                writer.join()


# ------------------------------------------------------------------ PageStore.touch


def test_touched_regions_are_evicted_last(tmp_path):
    with make_store(tmp_path, regions=8, high_watermark=1.0, low_watermark=0.75) as s:
        page = 16 * KiB  # four pages per region
        for i in range(28):  # seven regions
            s.put(f"k{i}", payload(f"k{i}", page))
        region0 = s.locate(["k0"])[0].region
        s.touch([("SSD", region0), ("SSD", 10_000), ("HDD", 0)])  # unknown ones ignored
        for i in range(28, 36):
            s.put(f"k{i}", payload(f"k{i}", page))
        assert s.contains("k0") and s.contains("k3")
        assert not s.contains("k4") and not s.contains("k8")
    with pytest.raises(ValueError, match="closed"):
        s.touch([("SSD", 0)])


# ------------------------------------------------------------------ LocationCache

OWNER = ("host", "/home")


def loc(i: int, path: str = "/m/f") -> tuple:
    return ("SSD", i, 4096 * i, 100 + i, i, 1, path)


def test_location_cache_is_bounded_lru():
    cache = LocationCache(3)
    assert not cache and cache.owner is None
    cache.put_many(OWNER, [((b"f", i), loc(i)) for i in range(3)])
    assert len(cache) == 3 and cache.owner == OWNER
    assert cache.get_many([(b"f", 0), (b"g", 0)]) == [loc(0), None]  # 0 used last now
    cache.put_many(OWNER, [((b"f", 3), loc(3))])
    assert cache.get_many([(b"f", i) for i in range(4)]) == [loc(0), None, loc(2), loc(3)]
    cache.drop_many([(b"f", 0), (b"nothing", 1)])
    assert len(cache) == 2


def test_location_cache_drops_by_path_and_on_a_new_owner():
    cache = LocationCache()
    cache.put_many(
        OWNER,
        [
            ((b"a", 0), loc(0, "/m/a")),
            ((b"b", 0), loc(1, "/m/ab")),
            ((b"c", 0), loc(2, "/m/a/c")),
            ((b"d", 0), loc(3, "/n/a")),
        ],
    )
    assert cache.drop_path("/m/a") == 2
    assert cache.get_many([(b"a", 0), (b"b", 0), (b"c", 0)]) == [None, loc(1, "/m/ab"), None]
    assert cache.drop_path("/") == 2 and not cache
    cache.put_many(OWNER, [((b"a", 0), loc(0))])
    cache.touch({("SSD", 0): 2}, 5.0)
    cache.put_many(("other", "/home"), [((b"b", 0), loc(1))])  # another worker's
    assert cache.get_many([(b"a", 0), (b"b", 0)]) == [None, loc(1)]
    assert cache.take_touched() == []


def test_location_cache_counts_touches():
    cache = LocationCache()
    assert cache.touched_since == 0.0
    cache.touch({("SSD", 1): 2, ("MEM", 0): 1}, 10.0)
    cache.touch({("SSD", 1): 3}, 11.0)
    assert cache.touched_since == 10.0  # the oldest unreported read
    assert sorted(cache.take_touched()) == [["MEM", 0, 1], ["SSD", 1, 5]]
    assert cache.touched_since == 0.0 and cache.take_touched() == []
    cache.touch({("SSD", 1): 1}, 12.0)
    cache.clear()
    assert cache.take_touched() == [] and cache.touched_since == 0.0


def test_location_cache_of_no_entries_and_bad_bounds():
    cache = LocationCache(0)
    cache.put_many(OWNER, [((b"f", 0), loc(0))])
    assert not cache and cache.get_many([(b"f", 0)]) == [None]
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(ValueError, match="max_entries"):
            LocationCache(bad)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    bound=st.integers(1, 6),
    ops=st.lists(
        st.tuples(st.sampled_from(["put", "get", "drop"]), st.integers(0, 9)), max_size=60
    ),
)
def test_location_cache_matches_an_lru_model(bound, ops):
    cache = LocationCache(bound)
    model: list[int] = []  # keys, least recently used first
    for op, i in ops:
        key = (b"f", i)
        if op == "put":
            cache.put_many(OWNER, [(key, loc(i))])
            if i in model:
                model.remove(i)
            model.append(i)
            del model[: max(0, len(model) - bound)]
        elif op == "get":
            assert cache.get_many([key]) == [loc(i) if i in model else None]
            if i in model:
                model.remove(i)
                model.append(i)
        else:
            cache.drop_many([key])
            if i in model:
                model.remove(i)
        assert len(cache) == len(model)


# ------------------------------------------------------------------ engine requests


@pytest.mark.parametrize("backend", ["io_uring", "threads"])
def test_memoryview_destinations_get_every_check(tmp_path, backend):
    """Flat byte memoryviews skip re-wrapping in the engine's validation; others do not
    skip any check."""
    from shoal import engine

    if backend == "io_uring" and not engine._engine.io_uring_available():
        pytest.skip("io_uring is not available here")
    eng = engine.get_backend(backend)
    data = payload("file", 10_000)
    (tmp_path / "f").write_bytes(data)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        arena = memoryview(bytearray(20_000))
        assert engine.read_batch([(fd, 5, 100, arena[1000:1100], 0)], engine=eng) == [100]
        assert bytes(arena[1000:1100]) == data[5:105]
        ints = memoryview(bytearray(400)).cast("i", (10, 10))  # 2-D, 4-byte items
        assert engine.read_batch([(fd, 0, 400, ints, 0)], engine=eng) == [400]
        assert ints.tobytes() == data[:400]
        cases = [
            (memoryview(bytes(10)), TypeError, "read-only"),
            (arena[::2], ValueError, "not C-contiguous"),
            (arena[:50], ValueError, "too small for 100 bytes"),
        ]
        for view, exc, match in cases:
            with pytest.raises(exc, match=match):
                engine.read_batch([(fd, 0, 100, view, 0)], engine=eng)
        with pytest.raises(TypeError, match="checksum 0 must be an int or None, got bool"):
            engine.read_batch([(fd, 0, 10, arena, 0)], checksums=[True], engine=eng)
        with pytest.raises(ValueError, match="not a 32-bit crc32c"):
            engine.read_batch([(fd, 0, 10, arena, 0)], checksums=[1 << 32], engine=eng)
    finally:
        os.close(fd)


@pytest.fixture(scope="module")
def shm_file():
    """A file on tmpfs, which the io_uring backend reads with pread in the calling thread."""
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm")
    import tempfile

    data = payload("shm", 3 * (256 * KiB) + 12345)
    fd, path = tempfile.mkstemp(dir="/dev/shm", prefix="shoal-test-")
    try:
        os.write(fd, data)
        os.close(fd)
        fd = os.open(path, os.O_RDONLY)
        yield fd, data
        os.close(fd)
    finally:
        os.unlink(path)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    ranges=st.lists(
        st.tuples(st.integers(0, 800 * KiB), st.integers(0, 600 * KiB), st.booleans()),
        min_size=1,
        max_size=6,
    ),
    backend=st.sampled_from(["io_uring", "threads"]),
)
def test_reads_of_a_file_in_memory(shm_file, ranges, backend):
    from shoal import engine

    if backend == "io_uring" and not engine._engine.io_uring_available():
        backend = "threads"
    eng = engine.get_backend(backend)
    fd, data = shm_file
    bufs = [bytearray(length + 3) for _, length, _ in ranges]
    reqs = [(fd, off, length, buf, 3) for (off, length, _), buf in zip(ranges, bufs, strict=True)]
    sums = [
        engine.crc32c(data[off : off + length]) ^ (0 if good else 1) for off, length, good in ranges
    ]
    try:
        got = engine.read_batch(reqs, checksums=sums, engine=eng)
    except PageCorruptedError as exc:
        got = exc.results
    for (off, length, good), buf, res in zip(ranges, bufs, got, strict=True):
        want = data[off : off + length]
        if good:
            assert res == len(want) and bytes(buf[3 : 3 + res]) == want
        else:  # even an empty read has a crc32c (0), which does not match
            assert isinstance(res, PageCorruptedError) and res.errno == errno.EIO


# ------------------------------------------------------------------ copies out of a mapping


@settings(max_examples=60, deadline=None)
@given(
    items=st.lists(
        st.tuples(st.integers(0, 70_000), st.integers(0, 70_000), st.booleans()),
        min_size=0,
        max_size=8,
    )
)
def test_copy_verify_many_matches_a_reference(items):
    from shoal.engine import _crc

    src = payload("src", 140_000)
    dsts = [bytearray(length + 5) for _, length, _ in items]
    batch = [
        (src, off, length, dst, _crc.crc32c(src[off : off + length]) ^ (0 if good else 1))
        for (off, length, good), dst in zip(items, dsts, strict=True)
    ]
    got = _crc.copy_verify_many(batch)
    for (off, length, good), dst, res in zip(items, dsts, got, strict=True):
        assert bytes(dst[:length]) == src[off : off + length]  # copied either way
        assert res == (length if good else -1)
        assert dst[length:] == bytearray(5)


def test_copy_verify_many_rejects_bad_items():
    from shoal.engine import _crc

    src = bytes(100)
    with pytest.raises(ValueError, match="outside the source"):
        _crc.copy_verify_many([(src, 90, 20, bytearray(20), 0)])
    with pytest.raises(ValueError, match="smaller than 20 bytes"):
        _crc.copy_verify_many([(src, 0, 20, bytearray(10), 0)])
    with pytest.raises(ValueError, match="negative"):
        _crc.copy_verify_many([(src, -1, 20, bytearray(20), 0)])
    with pytest.raises(BufferError):  # a read-only destination
        _crc.copy_verify_many([(src, 0, 20, bytes(20), 0)])
    with pytest.raises(ValueError):  # not a 5-tuple
        _crc.copy_verify_many([(src, 0, 20)])
    assert _crc.copy_verify_many([]) == []


@pytest.fixture
def mem_store(tmp_path):
    """A store whose MEM tier lives in memory (tmpfs) and SSD tier on disk."""
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm")
    import shutil
    import tempfile

    shm = tempfile.mkdtemp(dir="/dev/shm", prefix="shoal-test-")
    try:
        tiers = [
            TierConfig("MEM", os.path.join(shm, "mem"), 4 * RS),
            TierConfig("SSD", tmp_path, 4 * RS),
        ]
        with PageStore(tiers, tmp_path / "index", region_size=RS) as store:
            yield store
    finally:
        shutil.rmtree(shm, ignore_errors=True)


def test_read_located_copies_pages_in_memory_out_of_a_mapping(mem_store):
    s = mem_store
    s.put_many([(f"m{i}", payload(f"m{i}", 20_000 + i)) for i in range(3)], tier="MEM")
    s.put("d", payload("d", 5000), tier="SSD")
    keys = ["m0", "m1", "m2", "d"]
    locs = s.locate(keys)
    with adopted_reader(s) as reader:
        bufs = [bytearray(loc.length) for loc in locs]
        got = reader.read_located([as_tuple(loc, b) for loc, b in zip(locs, bufs, strict=True)])
        assert got == [loc.length for loc in locs]
        assert [bytes(b) for b in bufs] == [
            payload(k, loc.length) for k, loc in zip(keys, locs, strict=True)
        ]
        mem_region = ("MEM", locs[0].region)
        assert reader._maps[mem_region] is not None  # the MEM region file is mapped
        assert reader._maps[("SSD", locs[3].region)] is None  # a file on disk is not
        again = [bytearray(loc.length) for loc in locs]  # by PageLocation: the same
        assert reader.read_many_into(list(zip(locs, again, strict=True))) == got
        assert again == bufs
        # A flipped byte in the mapped file fails the page's crc32c.
        path = os.path.join(s.tier_paths["MEM"], "regions", f"{locs[1].region:06d}")
        with open(path, "r+b") as f:
            f.seek(locs[1].offset + 7)
            byte = f.read(1)
            f.seek(locs[1].offset + 7)
            f.write(bytes([byte[0] ^ 0xFF]))
        res = reader.read_located([as_tuple(locs[1], bytearray(locs[1].length))])[0]
        assert isinstance(res, PageCorruptedError) and res.errno == errno.EIO
        with pytest.raises(PageCorruptedError) as info:
            reader.read_many_into([(locs[0], bytearray(RS)), (locs[1], bytearray(RS))])
        assert info.value.index == 1 and info.value.results[0] == locs[0].length
        # Reclaimed and reused: the old location is stale, never the new bytes.
        s.put("full", payload("full", RS), tier="MEM")  # seals the first region
        s.evict("MEM", 0)
        s.put("n0", payload("n0", 20_000), tier="MEM")
        res = reader.read_located([as_tuple(locs[0], bytearray(locs[0].length))])[0]
        assert isinstance(res, StaleLocationError)
        # A new descriptor for the region replaces its mapping.
        reader.adopt("MEM", locs[0].region, os.open(path, os.O_RDONLY))
        assert mem_region not in reader._maps
        fresh = s.locate(["n0"])[0]
        assert (fresh.tier, fresh.region, fresh.offset) == ("MEM", locs[0].region, 0)
        buf = bytearray(fresh.length)
        assert reader.read_located([as_tuple(fresh, buf)]) == [fresh.length]
        assert bytes(buf) == payload("n0", 20_000)
    assert reader._maps == {}


def test_read_located_without_mappings_reads_the_same(mem_store):
    s = mem_store
    s.put_many([(f"m{i}", payload(f"m{i}", 30_000)) for i in range(4)], tier="MEM")
    locs = s.locate([f"m{i}" for i in range(4)])
    reader = adopted_reader(s)
    plain = RegionReader(map_memory=False)
    for tier, path in s.tier_paths.items():
        plain.adopt(tier, None, os.open(os.path.join(path, "generations"), os.O_RDONLY))
        for loc in locs:
            if loc.tier == tier:
                plain.adopt(tier, loc.region, os.open(loc.path, os.O_RDONLY))
    with reader, plain:
        a = [bytearray(30_000) for _ in locs]
        b = [bytearray(30_000) for _ in locs]
        assert reader.read_located([as_tuple(loc, x) for loc, x in zip(locs, a, strict=True)])
        assert plain.read_located([as_tuple(loc, x) for loc, x in zip(locs, b, strict=True)])
        assert a == b == [bytearray(payload(f"m{i}", 30_000)) for i in range(4)]
        assert all(m is None for m in plain._maps.values())


def test_large_batches_out_of_a_mapping_are_split(mem_store, monkeypatch):
    from shoal.engine import _engine

    monkeypatch.setattr(_engine, "PARALLEL_BYTES", 1 << 16)
    monkeypatch.setattr(_engine, "SPLIT_BYTES", 1 << 14)
    s = mem_store
    s.put_many([(f"m{i}", payload(f"m{i}", 30_000)) for i in range(8)], tier="MEM")
    locs = s.locate([f"m{i}" for i in range(8)])
    with adopted_reader(s) as reader:
        bufs = [bytearray(30_000) for _ in locs]
        items = [as_tuple(loc, b) for loc, b in zip(locs, bufs, strict=True)]
        items[5] = (*items[5][:4], items[5][4] ^ 1, *items[5][5:])  # one wrong crc
        got = reader.read_located(items)
        assert isinstance(got[5], PageCorruptedError)
        assert [g for i, g in enumerate(got) if i != 5] == [30_000] * 7
        assert [bytes(b) for i, b in enumerate(bufs) if i != 5] == [
            payload(f"m{i}", 30_000) for i in range(8) if i != 5
        ]


def flip_byte(path: str, at: int) -> None:
    with open(path, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0xFF]))


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(parts=st.lists(st.tuples(st.integers(0, 30_000), st.integers(0, 30_000)), max_size=6))
def test_parts_of_pages_are_checked_whole_once_then_copied(mem_store, parts):
    s = mem_store
    if not s.contains("p0"):
        s.put_many([("p0", payload("p0", 30_000)), ("d0", payload("d0", 30_000))], tier="MEM")
        s.put("d1", payload("d1", 30_000), tier="SSD")
    with adopted_reader(s) as reader:
        for loc in s.locate(["p0", "d1"]):
            data = payload("p0" if loc.tier == "MEM" else "d1", 30_000)
            for start, n in parts:
                start, n = min(start, 30_000), min(n, 30_000 - min(start, 30_000))
                buf = bytearray(n + 3)
                got = reader.read_located([(*as_tuple(loc, buf), start, n)])
                assert got == [n] and bytes(buf[:n]) == data[start : start + n]
        verified = reader._verified
        assert all(tier == "MEM" for tier, _ in verified)  # pages in memory only


def test_part_reads_after_a_check_and_after_reclaim(mem_store):
    s = mem_store
    s.put_many([("p0", payload("p0", 30_000)), ("p1", payload("p1", 30_000))], tier="MEM")
    p0, p1 = s.locate(["p0", "p1"])
    with adopted_reader(s) as reader:
        # A corrupt page fails its first part read: the whole page is checked.
        flip_byte(p1.path, p1.offset + 20_000)
        res = reader.read_located([(*as_tuple(p1, bytearray(10)), 0, 10)])[0]
        assert isinstance(res, PageCorruptedError)
        assert ("MEM", p1.region) not in reader._verified or p1.offset not in reader._verified[
            ("MEM", p1.region)
        ]
        # A good one is checked once; its later parts are copied as they are.
        buf = bytearray(100)
        assert reader.read_located([(*as_tuple(p0, buf), 500, 100)]) == [100]
        assert reader._verified[("MEM", p0.region)][p0.offset] == p0.generation
        assert bytes(buf) == payload("p0", 30_000)[500:600]
        # Bad parts are refused before anything is read.
        with pytest.raises(ValueError, match="outside its page"):
            reader.read_located([(*as_tuple(p0, bytearray(10)), 29_995, 10)])
        with pytest.raises(ValueError, match="9 with an int start"):
            reader.read_located([(*as_tuple(p0, bytearray(10)), 0)])
        # Reclaimed and reused: stale, never the new bytes, and the check is forgotten
        # along with the region's mapping when a new descriptor comes.
        s.put("full", payload("full", RS), tier="MEM")
        s.evict("MEM", p0.region)
        s.put("n0", payload("n0", 30_000), tier="MEM")
        res = reader.read_located([(*as_tuple(p0, bytearray(10)), 0, 10)])[0]
        assert isinstance(res, StaleLocationError)
        reader.adopt("MEM", p0.region, os.open(p0.path, os.O_RDONLY))
        assert ("MEM", p0.region) not in reader._verified
