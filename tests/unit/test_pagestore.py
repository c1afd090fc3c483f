"""The region page store: a state machine against a dict model, and every error path."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import pwd
import random
import shutil
import stat
import struct
import tempfile
import threading
import time
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from shoal.engine import (
    PageCorruptedError,
    PageLocation,
    PageNotFoundError,
    PageStore,
    RegionReader,
    StaleLocationError,
    TierConfig,
    TierFullError,
)
from shoal.engine import _pagestore as pagestore_module

KiB = 1024
MiB = 1 << 20
TiB = 1 << 40
RS = 64 * KiB  # region size used throughout: small, so a few pages fill a region


def payload(key: bytes | str, size: int, seed: int = 0) -> bytes:
    """Deterministic bytes for a key, so a checker knows what a page must hold."""
    k = key.encode() if isinstance(key, str) else key
    return random.Random(k + seed.to_bytes(4, "little")).randbytes(size)


def make_store(tmp_path, regions=8, tiers=("SSD",), **kwargs) -> PageStore:
    configs = [TierConfig(name, tmp_path / name.lower(), regions * RS) for name in tiers]
    kwargs.setdefault("region_size", RS)
    return PageStore(configs, tmp_path / "index", **kwargs)


def read(store: PageStore, key) -> bytes:
    loc = store.locate([key])[0]
    buf = bytearray(loc.length if loc else RS)
    n = store.get_into(key, buf)
    return bytes(buf[:n])


@pytest.fixture
def store(tmp_path):
    s = make_store(tmp_path)
    yield s
    s.close()


# ------------------------------------------------------------------ basics


def test_put_get_replace_delete(store):
    store.put("a", b"hello")
    assert store.contains("a") and store.contains(b"a") and "a" in store
    assert read(store, b"a") == b"hello"
    store.put(b"a", b"bye")  # str and bytes name the same page
    assert read(store, "a") == b"bye"
    assert len(store) == 1
    assert store.delete("a") is True
    assert store.delete("a") is False
    assert not store.contains("a")
    assert store.locate(["a"]) == [None]


def test_buffers_of_every_kind(store):
    data = np.arange(3000, dtype=np.uint16)
    store.put("np", data)
    out = np.zeros(4000, dtype=np.uint16)
    assert store.get_into("np", out) == data.nbytes
    assert np.array_equal(out[:3000], data)
    store.put("mv", memoryview(b"xyz" * 100))
    torch = pytest.importorskip("torch")
    t = torch.zeros(300, dtype=torch.uint8)
    assert store.get_into("mv", t) == 300
    assert bytes(t.numpy()) == b"xyz" * 100


def test_empty_page_and_full_region_page(store):
    store.put("empty", b"")
    assert store.get_into("empty", bytearray()) == 0
    big = payload("big", RS)
    store.put("big", big)
    loc = store.locate(["big"])[0]
    assert loc.offset == 0 and loc.length == RS
    assert read(store, "big") == big


@pytest.mark.parametrize(
    "pack_below, align, second",
    [(0, 4096, 8192), (5000, 4096, 8192), (5010, 64, 5056), (64 * KiB, 64, 5056)],
)
def test_pages_are_aligned_and_packed(tmp_path, pack_below, align, second):
    with make_store(tmp_path, pack_below=pack_below) as store:
        store.put_many([(f"k{i}", payload(f"k{i}", 5000 + i)) for i in range(10)])
        locs = store.locate([f"k{i}" for i in range(10)])
        assert all(loc.offset % align == 0 for loc in locs)
        assert locs[0].region == locs[1].region  # appended to the same open region
        assert locs[1].offset == second
        for i, loc in enumerate(locs):
            with open(loc.path, "rb") as f:
                f.seek(loc.offset)
                assert f.read(loc.length) == payload(f"k{i}", 5000 + i)


def test_put_many_duplicate_key_last_wins(store):
    store.put_many([("d", b"one"), ("d", b"two"), ("e", b"three")])
    assert read(store, "d") == b"two"
    assert store.usage()["SSD"].pages == 2


def test_get_many_into_reports_misses(store):
    store.put_many([("a", b"A" * 10), ("b", b"B" * 20)])
    bufs = [bytearray(32) for _ in range(3)]
    assert store.get_many_into(zip(["a", "zz", b"b"], bufs, strict=True)) == [10, None, 20]
    assert bytes(bufs[0][:10]) == b"A" * 10 and bytes(bufs[2][:20]) == b"B" * 20
    assert store.get_many_into([]) == []


def test_reopen_keeps_pages_and_appends_after_them(tmp_path):
    with make_store(tmp_path) as s:
        s.put_many([(f"k{i}", payload(f"k{i}", 3000)) for i in range(5)])
        before = s.locate([f"k{i}" for i in range(5)])
        s.delete("k4")  # the open region's tail: its bytes must not be reused
    with make_store(tmp_path) as s:
        assert len(s) == 4
        assert s.locate([f"k{i}" for i in range(4)]) == before[:4]
        s.put("new", b"n" * 100)
        new = s.locate(["new"])[0]
        assert new.region == before[0].region
        assert new.offset > before[4].offset  # append offset survived the restart
        for i in range(4):
            assert read(s, f"k{i}") == payload(f"k{i}", 3000)
        with RegionReader(s.tier_paths) as reader:
            buf = bytearray(3000)
            assert reader.read_into(before[4], buf) == 3000  # deleted, bytes untouched
            assert bytes(buf) == payload("k4", 3000)


def test_many_regions_and_large_fields_round_trip_through_the_index(tmp_path):
    # 300 one-page regions: region numbers past one byte must survive the index encoding
    configs = [TierConfig("SSD", tmp_path / "ssd", 300 * 4 * KiB)]
    with PageStore(configs, tmp_path / "index", region_size=4 * KiB) as s:
        s.put_many([(f"p{i}", payload(f"p{i}", 4 * KiB)) for i in range(290)])
        far = s.locate(["p289"])[0]
        assert far.region >= 256
    with PageStore(configs, tmp_path / "index", region_size=4 * KiB) as s:
        assert s.locate(["p289"])[0] == far
        for i in (0, 255, 256, 289):
            assert read(s, f"p{i}") == payload(f"p{i}", 4 * KiB)


def test_usage_accounting(tmp_path):
    with make_store(tmp_path, tiers=("SSD", "MEM")) as s:
        s.put("p", b"x" * 100, pin=True)
        s.put("d", b"y" * 200, tier="MEM", dirty=True)
        s.put("n", b"z" * 300)
        u = s.usage()
        assert u["SSD"].pinned_bytes == 100 and u["SSD"].dirty_bytes == 0
        assert u["MEM"].dirty_bytes == 200 and u["MEM"].pages == 1
        assert u["SSD"].live_bytes == 400 and u["SSD"].pages == 2
        assert u["SSD"].regions_used == 2  # ordinary and pinned pages in their own regions
        assert u["SSD"].allocated_bytes == 2 * RS <= u["SSD"].capacity
        assert u["SSD"].regions_total == 8
        assert u["SSD"].filled_bytes == 400 and u["MEM"].filled_bytes == 200
        s.unpin("p")
        s.mark_clean("d")
        u = s.usage()
        assert u["SSD"].pinned_bytes == 0 and u["MEM"].dirty_bytes == 0
        s.put("d", b"w" * 50)  # replacing moves the page to the default tier
        u = s.usage()
        assert u["MEM"].pages == 0
        assert s.locate(["d"])[0].tier == "SSD"
        # After "n" (300 bytes), at the next 64-byte boundary. The old "d" still fills its
        # MEM region (open, so not reclaimed), though nothing live is left there.
        assert s.locate(["d"])[0].offset == 320
        assert u["SSD"].filled_bytes == 100 + 370
        assert u["MEM"].filled_bytes == 200 and u["MEM"].live_bytes == 0


def test_sync_store_round_trip(tmp_path):
    with make_store(tmp_path, sync=True) as s:
        for i in range(20):
            s.put(f"k{i}", payload(f"k{i}", 20000))
    with make_store(tmp_path, sync=True) as s:
        present = [i for i in range(20) if s.contains(f"k{i}")]
        assert present
        for i in present:
            assert read(s, f"k{i}") == payload(f"k{i}", 20000)


def test_direct_reads(tmp_path):
    with make_store(tmp_path, direct=True) as s:
        s.put("a", payload("a", 8192))
        buf = np.zeros(8192 + 4096, dtype=np.uint8)
        start = -buf.ctypes.data % 4096
        aligned = buf[start : start + 8192]
        assert s.get_into("a", aligned) == 8192
        assert aligned.tobytes() == payload("a", 8192)


# ------------------------------------------------------------------ eviction


def test_eviction_keeps_usage_under_capacity_and_is_lru(tmp_path):
    with make_store(tmp_path, regions=8, high_watermark=1.0, low_watermark=0.75) as s:
        page = 16 * KiB  # four pages per region
        for i in range(28):  # seven regions
            s.put(f"k{i}", payload(f"k{i}", page))
        assert s.usage()["SSD"].regions_used == 7
        s.get_into("k0", bytearray(page))  # region 0 is now the most recently used
        for i in range(28, 36):
            s.put(f"k{i}", payload(f"k{i}", page))
            assert s.usage()["SSD"].allocated_bytes <= 8 * RS
        # Two regions were needed past the eighth: the least recently used went, not region 0.
        assert s.contains("k0") and s.contains("k3")
        assert not s.contains("k4") and not s.contains("k8")
        assert s.usage()["SSD"].regions_used <= 8


def test_regions_without_live_pages_go_first(tmp_path):
    with make_store(tmp_path, regions=8, high_watermark=1.0, low_watermark=0.85) as s:
        page = 32 * KiB  # two pages per region
        for i in range(12):  # regions 0 to 5
            s.put(f"k{i}", payload(f"k{i}", page))
        s.delete("k10")
        s.delete("k11")  # region 5: nothing live, though recently used
        for i in range(12, 16):  # regions 6 and 7
            s.put(f"k{i}", payload(f"k{i}", page))
        s.get_into("k0", bytearray(page))  # region 0 becomes the most recently used
        s.put("k16", payload("k16", page))  # all eight in use: three must go
        present = [s.contains(f"k{i}") for i in range(17)]
        # Region 5 first, then the least recently used: regions 1 and 2.
        assert present == [True] * 2 + [False] * 4 + [True] * 4 + [False] * 2 + [True] * 5


def test_a_sealed_region_emptied_is_reused_first(tmp_path):
    with make_store(tmp_path, regions=8) as s, RegionReader(s.tier_paths) as reader:
        page = 32 * KiB  # two pages per region
        for i in range(8):  # regions 0 to 3, the last one still open
            s.put(f"k{i}", payload(f"k{i}", page))
        old = s.locate(["k2"])[0]
        assert old.region == 1
        s.delete("k2")
        assert s.usage()["SSD"].regions_used == 4  # region 1 still holds k3
        s.put("k3", payload("k3-new", page))  # the replacement empties region 1
        assert s.locate(["k3"])[0].region == 4  # region 3 was full
        assert s.usage()["SSD"].regions_used == 4  # 0, 2, 3 and 4: region 1 is free
        for i in range(8, 11):  # k8 fills region 4; then region 1, not a new one
            s.put(f"k{i}", payload(f"k{i}", page))
        fresh = s.locate(["k8", "k9", "k10"])
        assert [loc.region for loc in fresh] == [4, 1, 1]
        fresh = fresh[1:]
        assert fresh[0].generation == old.generation + 1
        assert s.usage()["SSD"].regions_used == 5  # regions 0 to 4: none beyond
        with pytest.raises(StaleLocationError):
            reader.read_into(old, bytearray(page))  # the old location never reads new bytes
        assert read(s, "k10") == payload("k10", page)
        s.pin("k0")
        s.put("k1", payload("k1-new", page))  # a region with a page left is not freed
        assert s.locate(["k0"])[0].region == 0 and read(s, "k0") == payload("k0", page)


def test_evict_explicit(tmp_path):
    with make_store(tmp_path, regions=8) as s:
        for i in range(16):
            s.put(f"k{i}", payload(f"k{i}", 30 * KiB))
        s.put("pinned", b"p" * 100, pin=True)
        s.put("dirty", b"d" * 100, dirty=True)  # same sticky region as the pinned page
        before = s.usage()["SSD"].allocated_bytes
        freed = s.evict("SSD", 0)
        after = s.usage()["SSD"]
        assert freed % RS == 0 and freed == before - after.allocated_bytes
        assert after.regions_used == 2  # the open ordinary region and the sticky one
        assert s.contains("pinned") and s.contains("dirty")
        assert s.evict("SSD", 10 * RS) == 0
        with pytest.raises(ValueError, match="to_bytes"):
            s.evict("SSD", -1)
        with pytest.raises(TypeError, match="to_bytes"):
            s.evict("SSD", 1.5)
        with pytest.raises(ValueError, match="unknown tier 'HDD'"):
            s.evict("HDD", 0)


def test_pinned_and_dirty_pages_are_never_evicted(tmp_path):
    with make_store(tmp_path, regions=6) as s:
        s.put("pinned", payload("pinned", 1000))
        assert not s.pinned("pinned") and not s.pinned("absent")
        s.pin("pinned")  # pinned in place, in an ordinary region
        assert s.pinned("pinned")
        s.put("dirty", payload("dirty", 1000), dirty=True)
        for i in range(60):
            s.put(f"k{i}", payload(f"k{i}", 30 * KiB))
        assert read(s, "pinned") == payload("pinned", 1000)
        assert read(s, "dirty") == payload("dirty", 1000)
        s.unpin("pinned")
        assert not s.pinned("pinned")
        s.mark_clean("dirty")
        for i in range(60, 120):
            s.put(f"k{i}", payload(f"k{i}", 30 * KiB))
        assert not s.contains("pinned")
        # The dirty page sits in the open region for pinned and dirty pages, kept while open.
        assert s.contains("dirty")


def test_enospc_when_everything_is_pinned(tmp_path):
    with make_store(tmp_path, regions=4) as s:
        s.put("plain", b"x" * 10)  # the open ordinary region gives way as a last resort
        for i in range(8):
            s.put(f"p{i}", payload(f"p{i}", 32 * KiB), pin=True)
        with pytest.raises(TierFullError) as info:
            s.put("one-more", b"x", pin=True)
        assert info.value.errno == errno.ENOSPC
        assert isinstance(info.value, OSError)
        assert "tier SSD" in str(info.value)
        with pytest.raises(TierFullError):
            s.put("plain-too", b"x")
        assert not s.contains("one-more") and not s.contains("plain")
        u = s.usage()["SSD"]
        assert u.regions_used == 4 and u.pinned_bytes == 8 * 32 * KiB
        for i in range(8):
            assert read(s, f"p{i}") == payload(f"p{i}", 32 * KiB)
        # A failed put_many stores nothing, even the items that had room.
        s.unpin("p0")
        s.unpin("p1")
        with pytest.raises(TierFullError):
            s.put_many([(f"q{i}", b"q" * (32 * KiB)) for i in range(4)], pin=True)
        assert not any(s.contains(f"q{i}") for i in range(4))
        s.put("fits-now", b"f" * 100, pin=True)
        assert read(s, "fits-now") == b"f" * 100


def test_replacing_a_key_keeps_the_old_page_on_enospc(tmp_path):
    with make_store(tmp_path, regions=2) as s:
        for i in range(4):
            s.put(f"p{i}", payload(f"p{i}", 32 * KiB), pin=True)
        with pytest.raises(TierFullError):
            s.put("p0", b"new", pin=True)
        assert read(s, "p0") == payload("p0", 32 * KiB)


def test_reclaiming_a_region_leaves_the_pages_that_moved_out_of_it(tmp_path):
    # A region keeps the keys of every page put there, those since replaced elsewhere or
    # deleted included: its reclaim must remove only the pages still in it.
    with make_store(tmp_path, regions=8) as s:
        page = 15 * KiB  # four pages per region, packed at 64-byte offsets

        def expect(regions, live):
            assert [loc and loc.region for loc in s.locate([f"k{i}" for i in range(7)])] == regions
            u = s.usage()["SSD"]
            assert (u.pages, u.live_bytes) == (sum(r is not None for r in regions), live)

        s.put_many([(f"k{i}", payload(f"k{i}", page)) for i in range(4)])  # region 0
        s.put("k0", payload("k0-new", page))  # region 0 is full: to region 1
        s.delete("k1")
        s.put("k1", payload("k1-new", page))  # region 1
        s.pin("k2")  # flags changed in place: k2 stays in region 0
        s.unpin("k2")
        s.put("k5", payload("k5", page))
        s.put("k5", payload("k5-new", page))  # replaced in its own region, which it fills
        s.put("k6", payload("k6", page))  # region 2
        expect([1, 1, 0, 0, None, 1, 2], 6 * page)
        s.get_many_into([(k, bytearray(page)) for k in ("k0", "k6")])  # region 0 is the LRU
        assert s.evict("SSD", 2 * RS) == RS
        expect([1, 1, None, None, None, 1, 2], 4 * page)
        assert read(s, "k0") == payload("k0-new", page) and read(s, "k5") == payload("k5-new", page)
        assert s.evict("SSD", RS) == RS  # region 1, whose k5 was put there twice
        expect([None] * 6 + [2], page)
    with make_store(tmp_path, regions=8) as s:
        expect([None] * 6 + [2], page)
        assert read(s, "k6") == payload("k6", page)


def test_a_key_put_again_and_again_in_one_region_takes_bounded_memory(tmp_path):
    # Empty pages take no room, so one region takes them all: the keys it keeps for its
    # reclaim, of pages since replaced or deleted too, are weeded out as they pile up.
    key = "a key long enough to be a new object each time it is encoded"
    with make_store(tmp_path) as s:
        s.put("other", b"x")
        tracemalloc.start()
        try:
            for i in range(3000):
                s.put(key, b"")
                if i % 3 == 0:
                    s.delete(key)
            grown, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert grown < 64 * KiB, grown  # 300 KiB if every key put were kept
        assert len(s) == 2 and s.locate([key])[0].region == s.locate(["other"])[0].region == 0
        s.put("full", bytes(RS))  # seals region 0
        s.delete("other")
        s.delete(key)  # the last page of sealed region 0: reclaimed at once
        u = s.usage()["SSD"]
        assert (u.regions_used, u.pages, u.live_bytes) == (1, 1, RS)


def test_rocksdb_memory_is_bounded_whatever_the_size_of_the_index(tmp_path):
    # One block cache that holds the index and filter blocks too (else they are held per
    # table file, growing with the index), and two memtables of 16 MiB.
    with make_store(tmp_path) as s:
        assert s._db.property_int_value("rocksdb.block-cache-capacity") == 16 * MiB
    options = max((tmp_path / "index").glob("OPTIONS-*")).read_text().splitlines()
    for line in (
        "write_buffer_size=16777216",
        "max_write_buffer_number=2",
        "cache_index_and_filter_blocks=true",
    ):
        assert f"  {line}" in options


# ------------------------------------------------------------------ corruption and staleness


def flip_byte(loc: PageLocation, at: int = 7) -> None:
    fd = os.open(loc.path, os.O_RDWR)
    try:
        old = os.pread(fd, 1, loc.offset + at)
        os.pwrite(fd, bytes([old[0] ^ 0x40]), loc.offset + at)
    finally:
        os.close(fd)


def test_flipped_byte_is_detected_and_dropped(store):
    store.put_many([(f"k{i}", payload(f"k{i}", 9000)) for i in range(4)])
    locs = store.locate(["k1", "k2"])
    for loc in locs:
        flip_byte(loc)
    with RegionReader(store.tier_paths) as reader, pytest.raises(PageCorruptedError) as info:
        reader.read_into(locs[0], bytearray(9000))
    assert info.value.errno == errno.EIO
    with pytest.raises(PageCorruptedError) as info:
        store.get_into("k1", bytearray(9000))
    assert "crc32c" in str(info.value)
    assert not store.contains("k1")
    with pytest.raises(PageNotFoundError):
        store.get_into("k1", bytearray(9000))
    bufs = [bytearray(9000) for _ in range(3)]
    assert store.get_many_into(zip(["k0", "k2", "k3"], bufs, strict=True)) == [9000, None, 9000]
    assert not store.contains("k2")
    assert bytes(bufs[2]) == payload("k3", 9000)
    assert store.usage()["SSD"].pages == 2


def test_corrupt_page_stays_dropped_after_reopen(tmp_path):
    with make_store(tmp_path) as s:
        s.put("a", payload("a", 5000))
        flip_byte(s.locate(["a"])[0])
        assert s.get_many_into([("a", bytearray(5000))]) == [None]
    with make_store(tmp_path) as s:
        assert not s.contains("a")


def test_region_reader_detects_reclaim_and_reuse(tmp_path):
    with make_store(tmp_path, regions=4) as s, RegionReader(s.tier_paths) as reader:
        s.put_many([(f"k{i}", payload(f"k{i}", 20000)) for i in range(3)])
        old = s.locate(["k0", "k1"])
        s.put("next-region", payload("x", RS))  # seals the first region
        assert s.evict("SSD", 0) == RS
        with pytest.raises(StaleLocationError) as info:
            reader.read_into(old[0], bytearray(20000))
        assert info.value.errno == errno.ESTALE
        s.put("n0", payload("n0", 20000))  # reuses the region: new bytes at the old offset
        fresh = s.locate(["n0"])[0]
        assert (fresh.region, fresh.offset) == (old[0].region, old[0].offset)
        assert fresh.generation == old[0].generation + 1
        bufs = [bytearray(20000), bytearray(20000)]
        with pytest.raises(StaleLocationError) as info:
            reader.read_many_into(zip(old, bufs, strict=True))
        assert info.value.index == 0
        assert isinstance(info.value.results[1], StaleLocationError)
        buf = bytearray(20000)
        assert reader.read_many_into([(fresh, buf)]) == [20000]
        assert bytes(buf) == payload("n0", 20000)


def test_region_reader_errors(tmp_path):
    with make_store(tmp_path) as s:
        s.put("a", b"abc")
        loc = s.locate(["a"])[0]
        with pytest.raises(TypeError, match="mapping"):
            RegionReader([])
        with pytest.raises(ValueError, match="tier name 'FLASH'"):
            RegionReader({"FLASH": tmp_path})
        with (
            RegionReader({"MEM": tmp_path / "mem"}) as reader,
            pytest.raises(ValueError, match="tier 'SSD'"),
        ):
            reader.read_into(loc, bytearray(3))
        with RegionReader(s.tier_paths) as reader:
            with pytest.raises(TypeError, match="PageLocation"):
                reader.read_into(("SSD", 0), bytearray(3))
            with pytest.raises(ValueError, match="2 bytes is smaller than the page of 3"):
                reader.read_into(loc, bytearray(2))
            with pytest.raises(ValueError, match="expected \\(location, buffer\\)"):
                reader.read_many_into([loc])
        reader.close()
        with pytest.raises(ValueError, match="closed"):
            reader.read_into(loc, bytearray(3))
        nowhere = RegionReader({"SSD": tmp_path / "nowhere"})
        with nowhere, pytest.raises(FileNotFoundError):
            nowhere.read_into(loc, bytearray(3))


def test_reopen_drops_pages_of_regions_whose_generation_moved(tmp_path):
    with make_store(tmp_path) as s:
        s.put_many([(f"k{i}", payload(f"k{i}", 30 * KiB)) for i in range(4)])  # two regions
        locs = s.locate([f"k{i}" for i in range(4)])
    assert {loc.region for loc in locs} == {0, 1}
    # A reclaim cut short after publishing the new generation: region 0 must count as free.
    with open(tmp_path / "ssd" / "generations", "r+b") as f:
        f.write(struct.pack("<Q", locs[0].generation + 1))
    with make_store(tmp_path) as s:
        assert [s.contains(f"k{i}") for i in range(4)] == [False, False, True, True]
        assert s.usage()["SSD"].regions_used == 1
        with RegionReader(s.tier_paths) as reader, pytest.raises(StaleLocationError):
            reader.read_into(locs[0], bytearray(30 * KiB))


def test_reopen_drops_pages_of_missing_region_files(tmp_path):
    with make_store(tmp_path) as s:
        s.put_many([(f"k{i}", payload(f"k{i}", 30 * KiB)) for i in range(4)])
        locs = s.locate(["k0", "k3"])
    os.unlink(locs[0].path)
    with make_store(tmp_path) as s:
        assert not s.contains("k0") and not s.contains("k1") and s.contains("k3")
        s.put_many([(f"n{i}", payload(f"n{i}", 30 * KiB)) for i in range(4)])
        for i in range(4):
            assert read(s, f"n{i}") == payload(f"n{i}", 30 * KiB)


def test_capacity_shrink_on_reopen(tmp_path):
    with make_store(tmp_path, regions=8) as s:
        s.put_many([(f"k{i}", payload(f"k{i}", 30 * KiB)) for i in range(12)])  # six regions
        last = s.locate(["k11"])[0]
    with make_store(tmp_path, regions=3) as s:
        assert s.usage()["SSD"].regions_total == 3
        assert [s.contains(f"k{i}") for i in range(12)] == [True] * 6 + [False] * 6
        assert not os.path.exists(last.path)
        with RegionReader(s.tier_paths) as reader, pytest.raises(StaleLocationError):
            reader.read_into(last, bytearray(30 * KiB))


def test_region_reader_follows_a_growing_tier(tmp_path):
    with make_store(tmp_path, regions=2) as s:
        s.put("a", b"a" * 10)
        reader = RegionReader(s.tier_paths)
        reader.read_into(s.locate(["a"])[0], bytearray(10))  # maps a table of two regions
    with reader, make_store(tmp_path, regions=6) as s:
        s.put_many([(f"k{i}", payload(f"k{i}", 40 * KiB)) for i in range(5)])
        loc = s.locate(["k4"])[0]
        assert loc.region >= 2
        buf = bytearray(40 * KiB)
        assert reader.read_into(loc, buf) == 40 * KiB
        assert bytes(buf) == payload("k4", 40 * KiB)


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "kwargs, exc, message",
    [
        ({"name": 3}, TypeError, "TierConfig.name must be a str"),
        ({"name": "NVME"}, ValueError, "TierConfig.name must be one of MEM, SSD, HDD"),
        ({"path": 5}, TypeError, "TierConfig.path"),
        ({"path": ""}, ValueError, "TierConfig.path"),
        ({"path": b"/tmp/x"}, TypeError, "TierConfig.path"),
        ({"capacity": "1G"}, TypeError, "TierConfig.capacity must be an int"),
        ({"capacity": True}, TypeError, "TierConfig.capacity must be an int"),
        ({"capacity": 0}, ValueError, "TierConfig.capacity must be > 0"),
    ],
)
def test_tier_config_rejects(tmp_path, kwargs, exc, message):
    args = {"name": "SSD", "path": tmp_path / "t", "capacity": RS, **kwargs}
    with pytest.raises(exc, match=message):
        TierConfig(**args)


def test_tier_config_paths(tmp_path):
    cfg = TierConfig("ssd", tmp_path / "a" / "b", RS)
    assert cfg.name == "SSD" and cfg.path == str(tmp_path / "a" / "b")
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(ValueError, match="TierConfig.path: .* is not a directory"):
        TierConfig("SSD", tmp_path / "file", RS)
    with pytest.raises(
        ValueError, match="TierConfig.path: .* is under .*file, which is not a directory"
    ):
        TierConfig("SSD", tmp_path / "file" / "sub", RS)
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(ValueError, match="TierConfig.path: .*no write access"):
            TierConfig("SSD", locked / "sub", RS)
    with pytest.raises(dataclass_frozen_error()):
        cfg.capacity = 1


def dataclass_frozen_error():
    from dataclasses import FrozenInstanceError

    return FrozenInstanceError


@pytest.mark.parametrize(
    "kwargs, exc, message",
    [
        ({"region_size": 1000}, ValueError, "region_size must be a positive multiple"),
        ({"region_size": 0}, ValueError, "region_size must be a positive multiple"),
        ({"region_size": 64.0 * KiB}, TypeError, "region_size must be an int"),
        ({"page_align": 3000}, ValueError, "page_align must be a power of two"),
        ({"page_align": 256}, ValueError, "page_align must be a power of two >= 512"),
        ({"pack_below": -1}, ValueError, "pack_below must be >= 0 bytes, got -1"),
        ({"pack_below": 4096.0}, TypeError, "pack_below must be an int, got float"),
        ({"pack_below": True}, TypeError, "pack_below must be an int, got bool"),
        ({"small_align": 4}, ValueError, "small_align must be a power of two from 8 to"),
        ({"small_align": 96}, ValueError, "small_align must be a power of two from 8 to"),
        ({"small_align": 8192}, ValueError, "from 8 to page_align=4096, got 8192"),
        ({"small_align": 1024, "page_align": 512}, ValueError, "page_align=512, got 1024"),
        ({"small_align": "64"}, TypeError, "small_align must be an int, got str"),
        ({"high_watermark": 1.5}, ValueError, "high_watermark must be in"),
        ({"high_watermark": "0.9"}, TypeError, "high_watermark must be a number"),
        ({"low_watermark": 0}, ValueError, "low_watermark must be in"),
        ({"low_watermark": 0.97}, ValueError, "low_watermark \\(0.97\\) must be below"),
        ({"region_size": 2 * RS}, ValueError, "tier SSD capacity of 65536 bytes is less than"),
    ],
)
def test_page_store_rejects(tmp_path, kwargs, exc, message):
    tiers = [TierConfig("SSD", tmp_path / "ssd", RS)]
    kwargs = {"region_size": RS, **kwargs}
    with pytest.raises(exc, match=message):
        PageStore(tiers, tmp_path / "index", **kwargs)


def test_page_store_rejects_tier_lists(tmp_path):
    a = TierConfig("SSD", tmp_path / "a", RS)
    with pytest.raises(ValueError, match="tiers must not be empty"):
        PageStore([], tmp_path / "i", region_size=RS)
    with pytest.raises(TypeError, match="tiers must be a sequence"):
        PageStore(a, tmp_path / "i", region_size=RS)
    with pytest.raises(TypeError, match="tiers\\[1\\] is a dict"):
        PageStore([a, {}], tmp_path / "i", region_size=RS)
    with pytest.raises(ValueError, match="tier names must be distinct"):
        PageStore([a, TierConfig("SSD", tmp_path / "b", RS)], tmp_path / "i", region_size=RS)
    with pytest.raises(ValueError, match="tier paths must be distinct"):
        PageStore([a, TierConfig("HDD", tmp_path / "a", RS)], tmp_path / "i", region_size=RS)
    with pytest.raises(TypeError, match="index_path"):
        PageStore([a], None, region_size=RS)
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(ValueError, match="index_path"):
        PageStore([a], tmp_path / "f", region_size=RS)


def test_geometry_is_fixed_for_an_index(tmp_path):
    make_store(tmp_path).close()
    with pytest.raises(ValueError, match="created with region_size=65536, got region_size=131072"):
        make_store(tmp_path, region_size=2 * RS)
    with pytest.raises(ValueError, match="created with page_align=4096, got page_align=8192"):
        make_store(tmp_path, page_align=8192)
    make_store(tmp_path).close()  # nothing was left locked by the failed opens


def test_one_owner_at_a_time(tmp_path):
    with make_store(tmp_path):
        with pytest.raises(OSError, match="page index"):
            make_store(tmp_path)
        other_index = [TierConfig("SSD", tmp_path / "ssd", 8 * RS)]
        with pytest.raises(OSError, match="tier SSD is in use") as info:
            PageStore(other_index, tmp_path / "index2", region_size=RS)
        assert info.value.errno == errno.EBUSY


# ------------------------------------------------------------------ private files


def modes(root) -> dict[str, int]:
    """Path relative to ``root`` -> permission bits, of everything beneath it."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            out[os.path.relpath(path, root)] = stat.S_IMODE(os.lstat(path).st_mode)
    return out


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.parametrize(
    "mask",
    [
        0,
        0o022,
        0o077,
        pytest.param(
            0o777,
            marks=pytest.mark.skipif(
                os.geteuid() != 0, reason="RocksDB cannot reopen its own mode 0000 files"
            ),
        ),
    ],
)
def test_everything_created_is_private_whatever_the_umask(tmp_path, mask):
    # Missing parents too: os.makedirs would give them the umask's mode. A umask of 0777
    # narrows what the store creates: it is widened back to 0700 and 0600.
    tiers = [
        TierConfig("MEM", tmp_path / "a" / "b" / "mem", 4 * RS),
        TierConfig("SSD", tmp_path / "ssd", 4 * RS),
    ]
    with umask(mask), PageStore(tiers, tmp_path / "c" / "index", region_size=RS) as s:
        s.put_many([(f"k{i}", payload(f"k{i}", 40 * KiB)) for i in range(4)], tier="MEM")
        s.put("s", b"ssd page", tier="SSD")
    found = modes(tmp_path)
    rocksdb = {p: m for p, m in found.items() if p.startswith("c/index/")}
    ours = {p: m for p, m in found.items() if p not in rocksdb}
    assert ours == {
        "a": 0o700, "a/b": 0o700, "a/b/mem": 0o700, "a/b/mem/regions": 0o700,
        "a/b/mem/lock": 0o600, "a/b/mem/generations": 0o600,
        **{f"a/b/mem/regions/{n:06d}": 0o600 for n in range(4)},  # a page per region
        "ssd": 0o700, "ssd/regions": 0o700, "ssd/lock": 0o600, "ssd/generations": 0o600,
        "ssd/regions/000000": 0o600,
        "c": 0o700, "c/index": 0o700,
    }  # fmt: skip
    assert rocksdb  # RocksDB's own files: the umask's, behind the 0700 index directory
    with PageStore(tiers, tmp_path / "c" / "index", region_size=RS) as s:
        assert read(s, "k3") == payload("k3", 40 * KiB) and read(s, "s") == b"ssd page"


def test_a_store_of_an_earlier_version_is_narrowed(tmp_path):
    with make_store(tmp_path, tiers=("SSD", "MEM")) as s:
        s.put_many([(f"k{i}", payload(f"k{i}", 30 * KiB)) for i in range(6)], tier="MEM")
    for path, mode in modes(tmp_path).items():  # what earlier versions left: 0755 and 0644
        if not path.startswith("index/"):
            os.chmod(tmp_path / path, 0o755 if mode == 0o700 else 0o644)
    os.chmod(tmp_path / "index", 0o755)
    with make_store(tmp_path, tiers=("SSD", "MEM")) as s:
        assert [read(s, f"k{i}") for i in range(6)] == [
            payload(f"k{i}", 30 * KiB) for i in range(6)
        ]
    for path, mode in modes(tmp_path).items():
        if not path.startswith("index/"):
            assert mode == (0o700 if (tmp_path / path).is_dir() else 0o600), path
    assert stat.S_IMODE(os.stat(tmp_path / "index").st_mode) == 0o700


def refusal(info: pytest.ExceptionInfo, path) -> str:
    """The message of a refusal, checked to be a PermissionError naming ``path``."""
    assert isinstance(info.value, PermissionError) and info.value.errno == errno.EPERM
    assert info.value.filename == str(path)
    return info.value.strerror


@pytest.mark.parametrize(
    "where, mode, message",
    [
        ("ssd", 0o777, "tier SSD directory is writable by its group and others (mode 0777)"),
        ("ssd", 0o720, "tier SSD directory is writable by its group (mode 0720)"),
        ("ssd/regions", 0o702, "tier SSD regions directory is writable by others (mode 0702)"),
        ("ssd/regions/000000", 0o666, "tier SSD region file is writable by its group and "),
        ("ssd/regions/000005", 0o646, "tier SSD region file is writable by others (mode 0646)"),
        ("ssd/lock", 0o660, "tier SSD lock file is writable by its group (mode 0660)"),
        ("ssd/generations", 0o606, "tier SSD generation table is writable by others"),
        ("index", 0o777, "page index directory is writable by its group and others"),
    ],
)
def test_anything_others_may_write_is_refused(tmp_path, where, mode, message):
    with make_store(tmp_path) as s:
        s.put("k", b"page")
    path = tmp_path / where
    if not path.exists():  # a region file not written yet: left by a larger store
        path.write_bytes(b"")
    os.chmod(path, mode)
    with pytest.raises(PermissionError) as info:
        make_store(tmp_path)
    text = refusal(info, path)
    assert text.startswith(message)
    assert "who could have changed cached pages: remove it" in text
    expected = "0700" if path.is_dir() else "0600"
    assert text.endswith(f"or chmod it to {expected} if its contents can be trusted")
    os.chmod(path, 0o700 if path.is_dir() else 0o600)
    with make_store(tmp_path) as s:  # nothing was left open or half-done
        assert read(s, "k") == b"page"


def test_a_directory_made_beforehand_with_mode_0777_is_refused(tmp_path):
    os.mkdir(tmp_path / "ssd")
    os.chmod(tmp_path / "ssd", 0o777)
    with pytest.raises(PermissionError) as info:
        make_store(tmp_path)
    assert "writable by its group and others (mode 0777)" in refusal(info, tmp_path / "ssd")
    assert os.listdir(tmp_path / "ssd") == []  # nothing created in it


@pytest.mark.parametrize(
    "where, what",
    [
        ("ssd", "tier SSD directory"),
        ("ssd/regions", "tier SSD regions directory"),
        ("ssd/regions/000000", "tier SSD region file"),
        ("ssd/lock", "tier SSD lock file"),
        ("ssd/generations", "tier SSD generation table"),
        ("index", "page index directory"),
    ],
)
def test_a_symbolic_link_is_refused(tmp_path, where, what):
    with make_store(tmp_path) as s:
        s.put("k", b"page")
    path = tmp_path / where
    real = tmp_path / "moved"
    os.rename(path, real)  # the link points to the store's own, private, item
    os.symlink(real, path)
    with pytest.raises(PermissionError) as info:
        make_store(tmp_path)
    assert refusal(info, path) == (
        f"{what} is a symbolic link, which the page store does not follow: remove the link "
        "(and configure the path it points to, if that is meant)"
    )


def test_links_above_the_store_are_followed(tmp_path):
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "link")
    tiers = [TierConfig("SSD", tmp_path / "link" / "ssd", 4 * RS)]
    with PageStore(tiers, tmp_path / "link" / "index", region_size=RS) as s:
        s.put("k", b"page")
    assert sorted(os.listdir(tmp_path / "real")) == ["index", "ssd"]


def test_a_file_in_place_of_the_tier_directory_is_refused(tmp_path):
    tier = TierConfig("SSD", tmp_path / "ssd", 4 * RS)  # checked while the path was free
    (tmp_path / "ssd").write_bytes(b"")
    with pytest.raises(PermissionError) as info:
        PageStore([tier], tmp_path / "index", region_size=RS)
    assert refusal(info, tmp_path / "ssd") == "tier SSD directory is not a directory: remove it"


@pytest.mark.parametrize(
    "where, kind, message",
    [
        ("ssd/regions", "file", "tier SSD regions directory is not a directory: remove it"),
        ("ssd/regions/000001", "fifo", "tier SSD region file is not a regular file: remove it"),
        ("ssd/lock", "directory", "tier SSD lock file is not a regular file: remove it"),
    ],
)
def test_the_wrong_kind_of_file_is_refused(tmp_path, where, kind, message):
    with make_store(tmp_path) as s:
        s.put("k", b"page")
    path = tmp_path / where
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
    if kind == "file":
        path.write_bytes(b"")
    elif kind == "fifo":
        os.mkfifo(path, 0o600)
    else:
        path.mkdir(mode=0o700)
    with pytest.raises(PermissionError) as info:
        make_store(tmp_path)
    assert refusal(info, path) == message


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
@pytest.mark.parametrize(
    "where, what",
    [
        ("ssd", "tier SSD directory"),
        ("ssd/regions", "tier SSD regions directory"),
        ("ssd/regions/000000", "tier SSD region file"),
        ("ssd/generations", "tier SSD generation table"),
        ("index", "page index directory"),
    ],
)
def test_anything_owned_by_another_user_is_refused(tmp_path, where, what):
    with make_store(tmp_path) as s:
        s.put("k", b"page")
    path = tmp_path / where
    os.chown(path, 65534, 65534)
    with pytest.raises(PermissionError) as info:
        make_store(tmp_path)
    other = f"uid 65534 ({pwd.getpwuid(65534).pw_name})" if has_user(65534) else "uid 65534"
    assert refusal(info, path) == (
        f"{what} is owned by {other}, not by uid 0 (root) that runs the page store: remove it "
        "(the page store then creates it afresh), or chown it to uid 0 if its contents can "
        "be trusted"
    )


def has_user(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


def test_bad_keys_and_pages(store):
    with pytest.raises(ValueError, match="page key must not be empty"):
        store.put("", b"x")
    with pytest.raises(ValueError, match="page key must not be empty"):
        store.get_into(b"", bytearray(1))
    with pytest.raises(TypeError, match="page key must be bytes or str, got int"):
        store.put(5, b"x")
    with pytest.raises(TypeError, match="page key must be bytes or str"):
        store.contains(None)
    with pytest.raises(ValueError, match=f"of {RS + 1} bytes is larger than a region"):
        store.put("big", bytes(RS + 1))
    with pytest.raises(TypeError, match="not a buffer"):
        store.put("s", "text is not bytes")
    with pytest.raises(ValueError, match="unknown tier 'MEM'; this store has SSD"):
        store.put("a", b"x", tier="MEM")
    with pytest.raises(ValueError, match="expected \\(key, data\\)"):
        store.put_many([("a", b"x", 3)])
    with pytest.raises(ValueError, match="expected \\(key, buffer\\)"):
        store.get_many_into(["a"])
    assert len(store) == 0


def test_bad_reads(store):
    store.put("a", b"x" * 100)
    with pytest.raises(PageNotFoundError) as info:
        store.get_into("missing", bytearray(10))
    assert isinstance(info.value, FileNotFoundError) and info.value.errno == errno.ENOENT
    with pytest.raises(ValueError, match="buffer of 99 bytes is smaller than page 'a' of 100"):
        store.get_into("a", bytearray(99))
    with pytest.raises(ValueError, match="smaller than page"):
        store.get_many_into([("missing", bytearray(1)), ("a", bytearray(10))])
    with pytest.raises(TypeError, match="read-only"):
        store.get_into("a", b"x" * 100)
    for method in (store.pin, store.unpin, store.mark_clean):
        with pytest.raises(PageNotFoundError, match="missing"):
            method("missing")


def test_closed_store(tmp_path):
    s = make_store(tmp_path)
    s.put("a", b"x")
    s.close()
    s.close()
    for call in (
        lambda: s.put("b", b"x"),
        lambda: s.get_into("a", bytearray(1)),
        lambda: s.contains("a"),
        lambda: s.locate(["a"]),
        lambda: s.usage(),
        lambda: s.delete("a"),
        lambda: s.evict("SSD", 0),
        lambda: s.put_records([("f", b"x")]),
        lambda: s.put_many([], records=[("f", b"x")]),
        lambda: s.delete_records(["f"]),
        lambda: s.get_record("f"),
        lambda: s.records(),
    ):
        with pytest.raises(ValueError, match="closed"):
            call()
    assert "closed" in repr(s)


# ------------------------------------------------------------------ records


def test_records_put_get_replace_delete(store):
    assert store.get_record("f/a") is None
    store.put_records([("f/a", b"one"), (b"f/b", bytearray(b"two")), ("f/c", memoryview(b""))])
    assert store.get_record(b"f/a") == b"one"
    assert store.get_record("f/b") == b"two"
    assert store.get_record("f/c") == b""  # empty, not missing
    store.put_records([("f/a", b"uno"), ("f/a", np.frombuffer(b"last", dtype=np.uint8))])
    assert store.get_record("f/a") == b"last"  # the last of a name wins
    store.delete_records(["f/a", b"f/c", "never-there"])
    assert store.get_record("f/a") is None and store.get_record("f/c") is None
    assert list(store.records()) == [(b"f/b", b"two")]
    store.put_records([])
    store.delete_records([])
    assert len(store) == 0 and not store.contains("f/b")  # records are not pages


def test_records_scan_by_prefix(store):
    names = [b"a", b"f/", b"f/1", b"f/1/x", b"f/2", b"f0", b"f\xff", b"g", b"\xff\xff"]
    store.put_records([(n, n[::-1]) for n in reversed(names)])
    assert list(store.records()) == [(n, n[::-1]) for n in names]  # by name, bytewise
    assert [n for n, _ in store.records("f/")] == [b"f/", b"f/1", b"f/1/x", b"f/2"]
    assert [n for n, _ in store.records(b"f/1")] == [b"f/1", b"f/1/x"]
    assert [n for n, _ in store.records(bytearray(b"f"))] == names[1:7]
    assert [n for n, _ in store.records(b"\xff")] == [b"\xff\xff"]
    assert list(store.records("h")) == []
    store.put_many([("f/1", b"a page of the same name")])
    assert [n for n, _ in store.records("f/1")] == [b"f/1", b"f/1/x"]  # pages are not records


def test_records_scan_reads_a_chunk_at_a_time(store, monkeypatch):
    monkeypatch.setattr(pagestore_module, "_RECORD_CHUNK", 7)
    store.put_records([(f"x/{i:03d}", bytes([i])) for i in range(50)])
    store.put_records([("w", b"before"), ("y", b"after")])
    scan = store.records("x/")
    first = [next(scan) for _ in range(10)]
    # Changes behind the scan are not seen, those ahead of it are; nothing is seen twice.
    store.delete_records(["x/000", "x/030"])
    store.put_records([("x/001a", b"behind"), ("x/0401", b"ahead")])
    rest = list(scan)
    names = [n for n, _ in first + rest]
    assert names == sorted(set(names))
    assert b"x/030" not in names and b"x/0401" in names and b"x/001a" not in names
    assert len(names) == 50
    for name, value in first + rest:
        assert value == (b"ahead" if name == b"x/0401" else bytes([int(name[2:])]))


def test_records_survive_close_and_reopen(tmp_path):
    big = payload("big", pagestore_module.MAX_RECORD_SIZE)
    with make_store(tmp_path) as s:
        s.put_records([("files/a", b"meta-a"), ("files/b", big)])
        s.put_many([("a:0", b"page")], records=[("files/c", b"meta-c")])
        s.delete_records(["files/a"])
    with make_store(tmp_path) as s:
        assert list(s.records("files/")) == [(b"files/b", big), (b"files/c", b"meta-c")]
        assert read(s, "a:0") == b"page"
        s.evict("SSD", 0)
        s.delete("a:0")
    with make_store(tmp_path) as s:  # neither eviction nor delete touches records
        assert s.get_record("files/c") == b"meta-c" and len(s) == 0


def test_a_record_put_with_pages_is_there_iff_the_pages_are(tmp_path, monkeypatch):
    with make_store(tmp_path, regions=2) as s:
        s.put_many([("f:0", b"a" * 100), ("f:1", b"b" * 200)], records=[("f", b"two pages")])
        assert s.get_record("f") == b"two pages" and s.contains("f:0") and s.contains("f:1")
        # No pages: the records alone.
        s.put_many([], records=[("empty-file", b"")])
        assert s.get_record("empty-file") == b""
        # Bad input of either kind: nothing at all.
        with pytest.raises(ValueError, match="record name must not be empty"):
            s.put_many([("g:0", b"g")], records=[("", b"x")])
        with pytest.raises(ValueError, match="larger than a region"):
            s.put_many([("g:0", bytes(RS + 1))], records=[("g", b"x")])
        assert s.get_record("g") is None and not s.contains("g:0")

        # The write fails: neither.
        def fail(*args):
            raise OSError(errno.EIO, "injected")

        with monkeypatch.context() as m:
            m.setattr(pagestore_module, "_pwrite_all", fail)
            m.setattr(pagestore_module, "write_batch", fail)
            for count in (1, 4):
                with pytest.raises(OSError, match="injected"):
                    s.put_many([(f"g:{i}", b"g") for i in range(count)], records=[("g", b"x")])
                assert s.get_record("g") is None and not s.contains("g:0")
        # The index commit fails: neither.
        db = s._db

        class FailingIndex:
            def write(self, *args):
                raise RuntimeError("injected")

            def __getattr__(self, name):
                return getattr(db, name)

        s._db = FailingIndex()
        try:
            with pytest.raises(OSError, match="page index: injected"):
                s.put_many([("g:0", b"g")], records=[("g", b"x")])
        finally:
            s._db = db
        assert s.get_record("g") is None and not s.contains("g:0")
        # The tier is full (both regions of pinned pages): neither.
        s.put_many([(f"p{i}", bytes(RS // 2)) for i in range(4)], pin=True)
        with pytest.raises(TierFullError):
            s.put_many([("g:0", b"g"), ("g:1", b"g")], records=[("g", b"x")])
        assert s.get_record("g") is None and not s.contains("g:0")
        s.unpin("p0")
        s.unpin("p1")
        s.put_many([("g:0", b"g")], records=[("g", b"x")])
        assert s.get_record("g") == b"x" and read(s, "g:0") == b"g"


def test_bad_records(store):
    store.put_records([("kept", b"v")])
    limit = pagestore_module.MAX_RECORD_SIZE
    for call, exc, message in [
        (lambda: store.put_records([("", b"x")]), ValueError, "record name must not be empty"),
        (lambda: store.put_records([(7, b"x")]), TypeError, "record name must be bytes or str"),
        (lambda: store.put_records([("a", "text")]), TypeError, "not a buffer"),
        (lambda: store.put_records([("a", None)]), TypeError, "not a buffer"),
        (
            lambda: store.put_records([("ok", b"x"), ("big", bytes(limit + 1))]),
            ValueError,
            f"record 'big' of {limit + 1} bytes is larger than MAX_RECORD_SIZE \\({limit} bytes",
        ),
        (lambda: store.put_records([("a", b"x", 3)]), ValueError, "expected \\(name, value\\)"),
        (lambda: store.put_records(b"ab"), TypeError, "got one value"),
        (lambda: store.put_many([], records=[("a",)]), ValueError, "put_many records item 0"),
        (lambda: store.delete_records("kept"), TypeError, "got one name"),
        (lambda: store.delete_records(["x", ""]), ValueError, "record name must not be empty"),
        (lambda: store.delete_records([None]), TypeError, "record name must be bytes or str"),
        (lambda: store.get_record(""), ValueError, "record name must not be empty"),
        (lambda: store.get_record(1.5), TypeError, "record name must be bytes or str"),
        (lambda: store.records(prefix=3), TypeError, "prefix must be bytes or str, got int"),
    ]:
        with pytest.raises(exc, match=message):
            call()
    assert list(store.records()) == [(b"kept", b"v")]  # nothing of a failed call was stored
    store.delete_records(iter(["kept"]))
    assert store.get_record("kept") is None


def test_a_scan_stops_when_the_store_closes(tmp_path, monkeypatch):
    monkeypatch.setattr(pagestore_module, "_RECORD_CHUNK", 2)
    s = make_store(tmp_path)
    s.put_records([(f"r{i}", b"v") for i in range(5)])
    scan = s.records()
    assert next(scan) == (b"r0", b"v")
    s.close()
    assert next(scan) == (b"r1", b"v")  # the chunk already read
    with pytest.raises(ValueError, match="closed"):
        next(scan)


def test_records_from_threads(tmp_path):
    """Writers of records and pages and scanners at once: every scan sees whole values."""
    with make_store(tmp_path, regions=4) as s:
        errors: list[BaseException] = []

        def writer(wid: int) -> None:
            try:
                for n in range(100):
                    name = f"w{wid}/{n % 10}"
                    if n % 3:
                        s.put_records([(name, payload(name, 100, n))])
                    else:
                        s.put_many(
                            [(f"{name}:p", b"p" * 500)], records=[(name, payload(name, 100, n))]
                        )
                    if n % 7 == 0:
                        s.delete_records([name])
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        def scanner() -> None:
            try:
                for _ in range(30):
                    names = []
                    for name, value in s.records("w"):
                        names.append(name)
                        assert len(value) == 100
                        assert any(value == payload(name, 100, n) for n in range(100))
                    assert names == sorted(set(names))
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(w,)) for w in range(2)]
        threads += [threading.Thread(target=scanner) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors


# ------------------------------------------------------------------ threads


def test_threads_never_see_wrong_bytes(tmp_path):
    """Writers force reclaims while readers read: every read is exact or a miss."""
    with make_store(tmp_path, regions=4) as s:
        stop = threading.Event()
        errors: list[BaseException] = []
        hits = [0]

        def writer(wid: int) -> None:
            try:
                for n in range(150):
                    s.put_many(
                        [(f"w{wid}-{n}-{j}", payload(f"w{wid}-{n}-{j}", 12000)) for j in range(2)]
                    )
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        def reader() -> None:
            rng = random.Random(1)
            buf = bytearray(12000)
            try:
                while not stop.is_set():
                    key = f"w{rng.randrange(2)}-{rng.randrange(150)}-{rng.randrange(2)}"
                    try:
                        n = s.get_into(key, buf)
                    except PageNotFoundError:
                        continue
                    assert bytes(buf[:n]) == payload(key, 12000), key
                    hits[0] += 1
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(w,)) for w in range(2)]
        threads += [threading.Thread(target=reader) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads[:2]:
            t.join()
        stop.set()
        for t in threads[2:]:
            t.join()
        assert not errors, errors
        assert hits[0] > 0
        assert s.usage()["SSD"].allocated_bytes <= 4 * RS


# ------------------------------------------------------------------ state machine

KEYS = [f"k{i}" for i in range(12)]
MACHINE_TIERS = {"SSD": 4, "MEM": 3}  # regions per tier
# Pages shorter than this are packed at 64-byte boundaries, longer ones at 4 KiB ones: the
# page sizes the machine draws fall on both sides.
MACHINE_PACK_BELOW = 3000


class PageStoreMachine(RuleBasedStateMachine):
    """Random operations against a dict model of what the store must hold."""

    tiers = MACHINE_TIERS  # regions per tier
    table_start: int | None = None  # regions a generation table starts with, if not the default

    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="pagestore-")
        self.table_was = pagestore_module._TABLE_START
        if self.table_start is not None:
            pagestore_module._TABLE_START = self.table_start
        # A capacity that is not a whole number of regions: the tail must go unused.
        self.configs = [
            TierConfig(name, os.path.join(self.dir, name), n * RS + 4096)
            for name, n in self.tiers.items()
        ]
        self.store = self._open()
        self.reader = RegionReader(self.store.tier_paths)
        self.model: dict[bytes, tuple[bytes, str, bool, bool]] = {}  # data, tier, pin, dirty
        self.seen: list[tuple[PageLocation, bytes]] = []  # old locations and their bytes

    def _open(self) -> PageStore:
        return PageStore(
            self.configs,
            os.path.join(self.dir, "index"),
            region_size=RS,
            pack_below=MACHINE_PACK_BELOW,
        )

    def teardown(self):
        self.reader.close()
        self.store.close()
        pagestore_module._TABLE_START = self.table_was
        shutil.rmtree(self.dir, ignore_errors=True)

    def _sticky_regions(self, tier: str) -> set[int]:
        keys = [k for k, (_, t, pin, dirty) in self.model.items() if t == tier and (pin or dirty)]
        return {loc.region for loc in self.store.locate(keys) if loc is not None}

    def _store(self, pages, tier, pin, dirty):
        try:
            if len(pages) == 1:
                self.store.put(pages[0][0], pages[0][1], tier=tier, pin=pin, dirty=dirty)
            else:
                self.store.put_many(pages, tier=tier, pin=pin, dirty=dirty)
        except TierFullError:
            event("tier full")
            self._sync_model()
            u = self.store.usage()[tier]
            assert u.regions_used == u.regions_total
            # Only regions holding pinned or dirty pages (or reserved by this very call) remain.
            assert len(self._sticky_regions(tier)) >= u.regions_total - (len(pages) - 1)
            return
        for k, data in pages:
            self.model[k.encode() if isinstance(k, str) else k] = (data, tier, pin, dirty)

    sizes = st.one_of(st.integers(0, 4096), st.integers(4097, RS))
    key = st.sampled_from(KEYS).flatmap(lambda k: st.sampled_from([k, k.encode()]))
    tier = st.sampled_from(list(MACHINE_TIERS))

    seed = st.integers(0, 3)

    @rule(key=key, size=sizes, seed=seed, tier=tier, pin=st.booleans(), dirty=st.booleans())
    def put(self, key, size, seed, tier, pin, dirty):
        small = size < RS // 2  # pinned pages are kept small, or ENOSPC would be all we see
        self._store([(key, payload(key, size, seed))], tier, pin and small, dirty and small)

    @rule(
        items=st.lists(st.tuples(key, st.integers(0, RS // 2), seed), min_size=2, max_size=5),
        tier=tier,
        sticky=st.booleans(),
    )
    def put_many(self, items, tier, sticky):
        self._store([(k, payload(k, size, seed)) for k, size, seed in items], tier, sticky, False)

    @rule(key=key)
    def delete(self, key):
        k = key.encode() if isinstance(key, str) else key
        assert self.store.delete(key) == (k in self.model)
        self.model.pop(k, None)

    @rule(key=key, flag=st.sampled_from(["pin", "unpin", "mark_clean", "dirty"]))
    def set_flag(self, key, flag):
        k = key.encode() if isinstance(key, str) else key
        if k not in self.model:
            with pytest.raises(PageNotFoundError):
                getattr(self.store, "pin" if flag == "dirty" else flag)(key)
            return
        data, tier, pin, dirty = self.model[k]
        if flag == "dirty":  # no public way to dirty a stored page: write it again, dirty
            self._store([(key, data)], tier, pin, True)
            return
        getattr(self.store, flag)(key)
        if flag == "pin":
            pin = True
        elif flag == "unpin":
            pin = False
        else:
            dirty = False
        self.model[k] = (data, tier, pin, dirty)

    @rule(keys=st.lists(key, min_size=1, max_size=6))
    def get_many(self, keys):
        bufs = [bytearray(RS) for _ in keys]
        results = self.store.get_many_into(zip(keys, bufs, strict=True))
        for key, buf, n in zip(keys, bufs, results, strict=True):
            k = key.encode() if isinstance(key, str) else key
            if n is None:
                assert k not in self.model or not (self.model[k][2] or self.model[k][3])
            else:
                assert bytes(buf[:n]) == self.model[k][0]

    @rule()
    def remember_locations(self):
        keys = list(self.model)
        for k, loc in zip(keys, self.store.locate(keys), strict=True):
            self.seen.append((loc, self.model[k][0]))
        self.seen = self.seen[-30:]

    @precondition(lambda self: self.seen)
    @rule()
    def read_old_locations(self):
        """A location read later yields exactly its bytes, or is reported stale."""
        for loc, data in self.seen:
            buf = bytearray(loc.length)
            try:
                self.reader.read_into(loc, buf)
            except StaleLocationError:
                event("stale location")
                continue
            assert bytes(buf) == data

    @rule(tier=tier, regions=st.integers(0, 6))
    def evict(self, tier, regions):
        before = self.store.usage()[tier].allocated_bytes
        freed = self.store.evict(tier, regions * RS)
        after = self.store.usage()[tier]
        assert freed % RS == 0 and after.allocated_bytes == before - freed
        self._sync_model()
        if after.allocated_bytes > regions * RS:  # stopped early: only kept regions remain
            assert after.regions_used <= len(self._sticky_regions(tier)) + 2

    @rule()
    def reopen(self):
        self.store.close()
        self.store = self._open()
        self._sync_model()
        assert len(self.store) == len(self.model)  # every committed page is back

    def _sync_model(self):
        for k in list(self.model):
            if not self.store.contains(k):
                data, tier, pin, dirty = self.model.pop(k)
                event("page evicted")
                assert not (pin or dirty), f"sticky page {k!r} disappeared"

    @invariant()
    def store_matches_model(self):
        self._sync_model()
        assert len(self.store) == len(self.model)  # nothing deleted comes back
        keys = list(self.model)
        bufs = [bytearray(RS) for _ in keys]
        results = self.store.get_many_into(zip(keys, bufs, strict=True))
        for k, buf, n in zip(keys, bufs, results, strict=True):
            assert n is not None and bytes(buf[:n]) == self.model[k][0]
        usage = self.store.usage()
        for name, u in usage.items():
            mine = [(d, p, dd) for d, t, p, dd in self.model.values() if t == name]
            assert u.allocated_bytes <= u.capacity
            assert u.regions_used <= u.regions_total == self.tiers[name]
            assert u.pages == len(mine)
            assert u.live_bytes == sum(len(d) for d, _, _ in mine)
            assert u.pinned_bytes == sum(len(d) for d, p, _ in mine if p)
            assert u.dirty_bytes == sum(len(d) for d, _, dd in mine if dd)

    @invariant()
    def pages_do_not_overlap(self):
        self._sync_model()  # a put may have evicted ordinary pages
        spans: dict[tuple[str, int], list[tuple[int, int]]] = {}
        for loc in self.store.locate(list(self.model)):
            align = 64 if loc.length < MACHINE_PACK_BELOW else 4096
            assert loc.offset % align == 0 and loc.offset + loc.length <= RS
            spans.setdefault((loc.tier, loc.region), []).append((loc.offset, loc.length))
        ends = dict.fromkeys(self.tiers, 0)  # per tier, the sum of each region's last page end
        for (tier, _), pages in spans.items():
            pages.sort()
            for (a, alen), (b, _) in zip(pages, pages[1:], strict=False):
                assert a + alen <= b
            ends[tier] += max(a + alen for a, alen in pages)
        for name, u in self.store.usage().items():
            # Regions fill up to past their last live page, and no further than their size.
            assert u.live_bytes <= ends[name] <= u.filled_bytes <= u.allocated_bytes


PageStoreMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_page_store_state_machine = PageStoreMachine.TestCase


def largest_regions(path: str, region_size: int, at_most: int) -> int:
    """Regions of ``region_size`` in at most ``at_most`` bytes that the filesystem holding
    ``path`` allows (a capacity may not exceed the filesystem's size)."""
    st_ = os.statvfs(path)
    return min(at_most, st_.f_blocks * st_.f_frsize) // region_size


class LargePageStoreMachine(PageStoreMachine):
    """The same operations on tiers of up to 1 TiB of 64 KiB regions (16 million: only
    the few in use may cost anything), with generation tables that start at two regions
    and grow as regions are first used."""

    tiers = {name: largest_regions(tempfile.gettempdir(), RS, TiB) - 1 for name in MACHINE_TIERS}
    table_start = 2


LargePageStoreMachine.TestCase.settings = settings(
    max_examples=25,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_large_page_store_state_machine = LargePageStoreMachine.TestCase


# ------------------------------------------------------------------ capacities


def filesystem_size(path) -> int:
    st_ = os.statvfs(path)
    return st_.f_blocks * st_.f_frsize


@pytest.mark.parametrize(
    "capacity, message",
    [
        (1 << 64, "TierConfig.capacity of 18446744073709551616 bytes does not fit in 64 bits"),
        (10**30, "does not fit in 64 bits"),
        ("filesystem + 1", "TierConfig.capacity of .* bytes is larger than the filesystem"),
    ],
)
def test_tier_config_refuses_capacities_past_the_filesystem(tmp_path, capacity, message):
    if capacity == "filesystem + 1":
        capacity = filesystem_size(tmp_path) + 1
    with pytest.raises(ValueError, match=message) as info:
        TierConfig("SSD", tmp_path / "a" / "ssd", capacity)
    if "filesystem" in message:
        text = str(info.value)
        assert str(tmp_path / "a" / "ssd") in text and f"measured at {tmp_path}" in text
        assert f"({filesystem_size(tmp_path)} bytes" in text
    TierConfig("SSD", tmp_path / "a" / "ssd", filesystem_size(tmp_path))  # the whole of it


def test_page_store_refuses_absurd_regions(tmp_path, monkeypatch):
    tier = TierConfig("SSD", tmp_path / "ssd", 4 * RS)
    with pytest.raises(
        ValueError, match=r"region_size of 2199023255552 bytes is over .* \(1 TiB\)"
    ):
        PageStore([tier], tmp_path / "index", region_size=2 * TiB)
    # More regions than the index numbers takes a filesystem over 2 TiB: pretend to have one.
    real = os.statvfs(tmp_path)
    fake = os.statvfs_result((real.f_bsize, 4096, 1 << 40, *real[3:]))
    monkeypatch.setattr(os, "statvfs", lambda path: fake)
    huge = TierConfig("SSD", tmp_path / "ssd", (1 << 32) * 4096 + 4096)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="more regions of 4096 bytes than the index can number"):
        PageStore([huge], tmp_path / "index", region_size=4096)
    assert not (tmp_path / "index").exists()  # refused before anything was made


@pytest.mark.timeout(60)
def test_a_huge_tier_costs_only_the_regions_in_use(tmp_path, monkeypatch):
    # 1 TiB of 4 KiB regions (268 million) where the filesystem is that large, else as
    # much as it holds: opening took 15 s and 490 MB for 4 GiB of them when every region
    # had its object, and the worker was killed at 21 GB for a capacity of 10**25.
    monkeypatch.setattr(pagestore_module, "_TABLE_START", 64)  # grown without 1024 files
    regions = largest_regions(str(tmp_path), 4 * KiB, TiB)
    tiers = [TierConfig("SSD", tmp_path / "ssd", regions * 4 * KiB)]
    tracemalloc.start()
    try:
        began = time.perf_counter()
        s = PageStore(tiers, tmp_path / "index", region_size=4 * KiB)
        opened = time.perf_counter() - began
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert opened < 2.0, opened  # milliseconds, with room for a busy machine
    assert peak < 4 * MiB, peak
    table = tmp_path / "ssd" / "generations"
    assert table.stat().st_size == 64 * 8
    with s, RegionReader(s.tier_paths) as reader:
        early = s.locate([])  # nothing yet
        assert early == []
        s.put("first", payload("first", 4 * KiB))
        first = s.locate(["first"])[0]
        s.put_many([(f"p{i}", payload(f"p{i}", 4 * KiB)) for i in range(200)])
        u = s.usage()["SSD"]
        assert u.regions_total == regions and u.regions_used == 201
        assert u.allocated_bytes == 201 * 4 * KiB
        assert table.stat().st_size == 256 * 8  # doubled twice, not sized to the capacity
        far = s.locate(["p199"])[0]
        assert far.region == 200
        buf = bytearray(4 * KiB)
        assert reader.read_into(first, buf) == 4 * KiB  # maps the table at 64 regions
        assert reader.read_into(far, buf) == 4 * KiB  # past that end: mapped again
        assert bytes(buf) == payload("p199", 4 * KiB)
        s.delete("p10")  # region 11, sealed, left empty: reclaimed, and reused first
        s.put("again", b"a" * 100)
        again = s.locate(["again"])[0]
        assert (again.region, again.generation) == (11, 1)
        assert s.evict("SSD", 0) == 200 * 4 * KiB  # all but the open region
        assert s.usage()["SSD"].regions_used == 1
    tracemalloc.start()
    try:
        s = PageStore(tiers, tmp_path / "index", region_size=4 * KiB)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * MiB, peak
    with s:
        assert len(s) == 1 and read(s, "again") == b"a" * 100
        s.put_many([(f"n{i}", payload(f"n{i}", 4 * KiB)) for i in range(3)])
        # Lowest free numbers first: those reclaimed, none past them.
        assert [loc.region for loc in s.locate(["n0", "n1", "n2"])] == [0, 1, 2]
        assert read(s, "n2") == payload("n2", 4 * KiB)
        assert s.usage()["SSD"].regions_total == regions


def test_a_region_whose_record_was_lost_is_reused_first(tmp_path):
    import rocksdict

    with make_store(tmp_path) as s:
        s.put_many([(f"k{i}", payload(f"k{i}", 30 * KiB)) for i in range(8)])  # regions 0-3
        assert s.locate(["k7"])[0].region == 3
    db = rocksdict.Rdict(str(tmp_path / "index"), rocksdict.Options(raw_mode=True))
    db.delete(b"r" + bytes((1,)) + (1).to_bytes(4, "big"))  # region 1 of SSD (tier code 1)
    db.close()
    with make_store(tmp_path) as s:
        assert [s.contains(f"k{i}") for i in range(8)] == [True] * 2 + [False] * 2 + [True] * 4
        s.put_many([(f"n{i}", payload(f"n{i}", 30 * KiB)) for i in range(4)])
        regions = [loc.region for loc in s.locate([f"n{i}" for i in range(4)])]
        assert regions == [1, 1, 4, 4]  # region 3 is full: region 1 before a new number
        assert s.usage()["SSD"].regions_used == 5


# ------------------------------------------------------------------ descriptors for readers


def test_open_for_reader(tmp_path):
    with make_store(tmp_path, tiers=("SSD", "MEM")) as s:
        s.put_many([(f"k{i}", payload(f"k{i}", 20000)) for i in range(4)])
        s.put("m", b"mem", tier="MEM")
        locs = s.locate(["k0", "k3", "m"])
        fds = {
            "table": s.open_for_reader("SSD", None),
            "region": s.open_for_reader("SSD", locs[1].region),
            "mem table": s.open_for_reader("MEM", None),
            "mem region": s.open_for_reader("MEM", locs[2].region),
        }
        for fd in fds.values():
            assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
            assert fcntl.fcntl(fd, fcntl.F_GETFL) & (os.O_ACCMODE | os.O_NONBLOCK) == os.O_RDONLY
            with pytest.raises(OSError) as info:
                os.write(fd, b"x")
            assert info.value.errno == errno.EBADF
        assert os.fstat(fds["region"]).st_ino == os.stat(locs[1].path).st_ino
        assert os.fstat(fds["table"]).st_ino == os.stat(tmp_path / "ssd" / "generations").st_ino
        with RegionReader() as reader:  # no access to the directories: descriptors only
            reader.adopt("SSD", None, fds.pop("table"))
            reader.adopt("SSD", locs[1].region, fds.pop("region"))
            reader.adopt("MEM", None, fds.pop("mem table"))
            reader.adopt("MEM", locs[2].region, fds.pop("mem region"))
            bufs = [bytearray(20000), bytearray(3)]
            items = [
                (loc.tier, loc.region, loc.offset, loc.length, loc.crc32c, loc.generation, buf)
                for loc, buf in zip(locs[1:], bufs, strict=True)
            ]
            assert reader.read_located(items) == [20000, 3]
            assert bytes(bufs[0]) == payload("k3", 20000) and bytes(bufs[1]) == b"mem"
        # The caller owns the descriptor: it outlives the store.
        kept = s.open_for_reader("SSD", locs[0].region)
    try:
        assert os.pread(kept, 5, locs[0].offset) == payload("k0", 20000)[:5]
    finally:
        os.close(kept)


def test_open_for_reader_opens_beneath_the_directories_it_checked(tmp_path):
    with make_store(tmp_path) as s:
        s.put("a", b"abc")
        loc = s.locate(["a"])[0]
        table_ino = os.stat(tmp_path / "ssd" / "generations").st_ino
        region_ino = os.stat(loc.path).st_ino
        # The tier directory moved and another put in its place: the store's own files.
        os.rename(tmp_path / "ssd", tmp_path / "moved")
        (tmp_path / "ssd" / "regions").mkdir(parents=True)
        (tmp_path / "ssd" / "generations").write_bytes(b"\0" * 64)
        (tmp_path / "ssd" / "regions" / os.path.basename(loc.path)).write_bytes(b"forged")
        for region, ino in ((None, table_ino), (loc.region, region_ino)):
            fd = s.open_for_reader("SSD", region)
            try:
                assert os.fstat(fd).st_ino == ino
            finally:
                os.close(fd)
        # A symbolic link in place of a region file is not followed.
        moved = tmp_path / "moved" / "regions" / os.path.basename(loc.path)
        os.rename(moved, tmp_path / "aside")
        os.symlink(tmp_path / "aside", moved)
        with pytest.raises(PermissionError) as info:
            s.open_for_reader("SSD", loc.region)
        assert "symbolic link" in refusal(info, loc.path)
        os.unlink(moved)
        os.mkfifo(moved, 0o600)
        with pytest.raises(PermissionError) as info:
            s.open_for_reader("SSD", loc.region)
        assert "not a regular file" in refusal(info, loc.path)


def test_open_for_reader_refuses(tmp_path):
    with make_store(tmp_path) as s:
        s.put("a", b"abc")
        with pytest.raises(ValueError, match="unknown tier 'MEM'"):
            s.open_for_reader("MEM", None)
        with pytest.raises(ValueError, match="tier must be a tier name"):
            s.open_for_reader(None, None)
        with pytest.raises(ValueError, match="tier SSD has regions 0 to 7, got 8"):
            s.open_for_reader("SSD", 8)
        with pytest.raises(ValueError, match="has regions 0 to 7, got -1"):
            s.open_for_reader("SSD", -1)
        with pytest.raises(ValueError, match="region must be an int or None, got True"):
            s.open_for_reader("SSD", True)
        with pytest.raises(FileNotFoundError) as info:
            s.open_for_reader("SSD", 5)  # never used: no file
        assert info.value.filename == os.path.join(str(tmp_path / "ssd"), "regions", "000005")
    with pytest.raises(ValueError, match="closed"):
        s.open_for_reader("SSD", 0)


@pytest.mark.parametrize("touch", [False, True])
def test_a_lookup_that_does_not_touch_leaves_the_eviction_order(tmp_path, touch):
    with make_store(tmp_path, regions=6) as s:
        s.put("old", payload("old", 30 * KiB))
        keys = [f"k{i}" for i in range(200)]
        at = 0
        while s.usage()["SSD"].regions_used < 4:  # "old" in the least recently used region
            s.put(keys[at], payload(keys[at], 30 * KiB))
            at += 1
        assert s.locate(["old"], touch=touch)[0] is not None
        while all(s.contains(k) for k in ["old", *keys[:at]]):  # up to the first eviction
            s.put(keys[at], payload(keys[at], 30 * KiB))
            at += 1
        assert s.contains("old") is touch  # touched: another region went first
