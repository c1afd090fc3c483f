"""Small pages packed tight: where pages go, how much of the filled space they hold, and
every read path over pages at offsets O_DIRECT cannot use."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal.engine import PageStore, RegionReader, TierConfig

KiB = 1024
MiB = 1 << 20


def payload(key: str, size: int) -> bytes:
    return random.Random(key).randbytes(size)


def aligned_buffer(size: int, shift: int = 0) -> np.ndarray:
    """``size`` bytes starting ``shift`` bytes past a 4 KiB boundary."""
    raw = np.zeros(size + 8192, dtype=np.uint8)
    start = -raw.ctypes.data % 4096 + shift
    return raw[start : start + size]


def spans_by_region(locations) -> dict[tuple[str, int], list[tuple[int, int]]]:
    spans: dict[tuple[str, int], list[tuple[int, int]]] = {}
    for loc in locations:
        spans.setdefault((loc.tier, loc.region), []).append((loc.offset, loc.length))
    for pages in spans.values():
        pages.sort()
    return spans


def assert_aligned(store: PageStore, loc) -> None:
    align = store.page_align if loc.length >= store.pack_below else store.small_align
    assert loc.offset % align == 0, (loc, align)
    assert loc.offset + loc.length <= store.region_size


def check_layout(store: PageStore, locations) -> None:
    """Alignment by page length, no overlap, and ``filled_bytes`` equal to the end of the
    last page of each region (every region used holds a page: nothing was removed)."""
    for loc in locations:
        assert_aligned(store, loc)
    ends: dict[str, int] = {}
    for (tier, _), pages in spans_by_region(locations).items():
        for (a, alen), (b, _) in zip(pages, pages[1:], strict=False):
            assert a + alen <= b
        ends[tier] = ends.get(tier, 0) + pages[-1][0] + pages[-1][1]
    for name, u in store.usage().items():
        assert u.filled_bytes == ends.get(name, 0) <= u.allocated_bytes
        assert u.live_bytes <= u.filled_bytes


# ------------------------------------------------------------------ packing ratios


def fill(tmp_path, sizes, **kwargs) -> PageStore:
    # Room for every page, even each at its own 4 KiB: nothing evicted.
    capacity = ((len(sizes) * 4 * KiB + sum(sizes)) // (4 * MiB) + 4) * 4 * MiB
    store = PageStore(
        [TierConfig("SSD", tmp_path / "ssd", capacity)],
        tmp_path / "index",
        region_size=4 * MiB,
        **kwargs,
    )
    source = memoryview(random.Random(0).randbytes(max(sizes)))
    for start in range(0, len(sizes), 200):
        chunk = range(start, min(start + 200, len(sizes)))
        store.put_many([(f"k{i}", source[: sizes[i]]) for i in chunk])
    return store


@pytest.mark.parametrize("pack_below, ratio", [(64 * KiB, 100 / 128), (0, 100 / 4096)])
def test_100_byte_pages_fill_most_of_their_space(tmp_path, pack_below, ratio):
    with fill(tmp_path, [100] * 4000, pack_below=pack_below) as store:
        u = store.usage()["SSD"]
        assert u.live_bytes == 400_000 and u.pages == 4000
        # The last page ends the region's fill: no padding after it.
        assert u.live_bytes / u.filled_bytes == pytest.approx(ratio, rel=2e-3)
        if pack_below:
            assert u.live_bytes / u.filled_bytes >= 0.5
            assert u.regions_used == 1  # 4000 pages in 512,000 bytes of one region


def test_pages_of_random_sizes_fill_most_of_their_space(tmp_path):
    rng = random.Random(7)
    sizes = [rng.randint(1, 64 * KiB) for _ in range(3000)]
    sizes[::500] = [64 * KiB] * 6  # at pack_below: page aligned
    with fill(tmp_path, sizes) as store:
        u = store.usage()["SSD"]
        assert u.live_bytes == sum(sizes)
        assert u.live_bytes / u.filled_bytes >= 0.9
        locations = store.locate([f"k{i}" for i in range(len(sizes))])
        check_layout(store, locations)
        large = [loc for loc in locations if loc.length >= 64 * KiB]
        assert len(large) == 6 and all(loc.offset % 4096 == 0 for loc in large)
        assert any(loc.offset % 4096 for loc in locations)  # the others are packed


# ------------------------------------------------------------------ reads of every kind


@contextlib.contextmanager
def tier_dirs():
    """An SSD tier directory on disk and, where there is one, a MEM one on tmpfs (whose
    pages readers copy out of a mapping)."""
    root = tempfile.mkdtemp(prefix="shoal-packing-")
    shm = (
        tempfile.mkdtemp(dir="/dev/shm", prefix="shoal-test-")
        if os.path.isdir("/dev/shm")
        else root
    )
    try:
        yield root, {"SSD": os.path.join(root, "ssd"), "MEM": os.path.join(shm, "mem")}
    finally:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(shm, ignore_errors=True)


PACKING = st.fixed_dictionaries(
    {
        "pack_below": st.sampled_from([0, 100, 4 * KiB, 64 * KiB, 256 * KiB, 1 * MiB]),
        "small_align": st.sampled_from([8, 64, 512]),
        "page_align": st.sampled_from([512, 4096]),
        "direct": st.booleans(),
    }
)
RS = 512 * KiB  # room for the largest pages drawn


def page_sizes(pack_below: int):
    sizes = [st.just(0), st.integers(1, 300), st.integers(1, 16 * KiB), st.integers(1, 300 * KiB)]
    if pack_below <= 300 * KiB:  # both sides of the threshold, where a page fits a region
        sizes.append(st.integers(max(0, pack_below - 80), pack_below + 80))
    return st.one_of(sizes)


@st.composite
def scenarios(draw):
    packing = draw(PACKING)
    pages = draw(
        st.lists(
            st.tuples(page_sizes(packing["pack_below"]), st.sampled_from(["SSD", "MEM"])),
            min_size=1,
            max_size=25,
        )
    )
    # Calls of put_many: cut points into the list; each call's tier and flags are the first
    # page's tier and a draw.
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(pages) - 1)), max_size=6)))
    pins = draw(st.lists(st.booleans(), min_size=len(cuts) + 1, max_size=len(cuts) + 1))
    return packing, pages, cuts, pins


def read_everything(store: PageStore, keys: list[str], data: dict[str, bytes], direct: bool):
    """Every page read back byte-exact through every read path of the store and of a
    region reader."""
    # get_into, into buffers aligned (O_DIRECT where the page is) and not.
    for i, key in enumerate(keys):
        n = len(data[key])
        buf = aligned_buffer(max(n, 1), shift=0 if i % 2 else 1)
        assert store.get_into(key, buf) == n
        assert buf[:n].tobytes() == data[key]
    # get_many_into, one batch.
    bufs = [aligned_buffer(max(len(data[k]), 1)) for k in keys]
    assert store.get_many_into(zip(keys, bufs, strict=True)) == [len(data[k]) for k in keys]
    for key, buf in zip(keys, bufs, strict=True):
        assert buf[: len(data[key])].tobytes() == data[key]
    locations = store.locate(keys)
    # A reader by tier directory.
    with RegionReader(store.tier_paths, direct=direct) as reader:
        bufs = [aligned_buffer(max(loc.length, 1)) for loc in locations]
        assert reader.read_many_into(zip(locations, bufs, strict=True)) == [
            loc.length for loc in locations
        ]
        for key, buf in zip(keys, bufs, strict=True):
            assert buf[: len(data[key])].tobytes() == data[key]
    # A reader of descriptors from the owner, reading plain tuples: whole pages and parts,
    # then the parts again (those of mapped pages are then copied without a new check).
    with RegionReader(direct=direct) as reader:
        for tier in store.tier_paths:
            reader.adopt(tier, None, store.open_for_reader(tier, None))
        for tier, region in {(loc.tier, loc.region) for loc in locations}:
            reader.adopt(tier, region, store.open_for_reader(tier, region))
        for whole in (True, False):
            items, expected = [], []
            for key, loc in zip(keys, locations, strict=True):
                fields = (loc.tier, loc.region, loc.offset, loc.length, loc.crc32c)
                fields += (loc.generation,)
                if whole:
                    items.append((*fields, bytearray(loc.length)))
                    expected.append(data[key])
                start, n = loc.length // 3, loc.length // 2
                items.append((*fields, bytearray(n), start, n))
                expected.append(data[key][start : start + n])
            results = reader.read_located(items)
            for item, want, res in zip(items, expected, results, strict=True):
                assert res == len(want), res
                assert bytes(item[6][: len(want)]) == want
    return locations


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios())
def test_mixed_pages_round_trip_and_survive_a_reopen(scenario):
    packing, pages, cuts, pins = scenario
    direct = packing.pop("direct")
    with tier_dirs() as (root, dirs):
        configs = [TierConfig(name, path, 32 * RS) for name, path in dirs.items()]

        def open_store() -> PageStore:
            return PageStore(
                configs, os.path.join(root, "index"), region_size=RS, direct=direct, **packing
            )

        keys = [f"p{i}" for i in range(len(pages))]
        data = {key: payload(key, size) for key, (size, _) in zip(keys, pages, strict=True)}
        with open_store() as store:
            bounds = [0, *cuts, len(pages)]
            for (a, b), pin in zip(zip(bounds, bounds[1:], strict=False), pins, strict=True):
                if a == b:
                    continue
                tier = pages[a][1]
                if b - a == 1 and not pin:
                    store.put(keys[a], data[keys[a]], tier=tier)
                else:
                    put = store.put_many([(k, data[k]) for k in keys[a:b]], tier=tier, pin=pin)
                    assert put == store.locate(keys[a:b])  # where put_many says they went
            assert len(store) == len(keys)  # nothing was evicted
            assert all(store.contains(k) for k in keys) and not store.contains("absent")
            assert store.absent(["absent", *keys, b"gone"]) == [0, len(keys) + 1]
            before = read_everything(store, keys, data, direct)
            check_layout(store, before)
            usage = store.usage()
        with open_store() as store:
            assert store.locate(keys) == before
            assert {n: (u.filled_bytes, u.live_bytes) for n, u in store.usage().items()} == {
                n: (u.filled_bytes, u.live_bytes) for n, u in usage.items()
            }
            read_everything(store, keys, data, direct)
            # New pages go after the old ones, by the same rules.
            store.put_many([("late-small", b"s" * 10), ("late-large", payload("l", 70 * KiB))])
            late = store.locate(["late-small", "late-large"])
            check_layout(store, before + late)


# ------------------------------------------------------------------ recovery


def open_store(tmp_path, **kwargs) -> PageStore:
    return PageStore(
        [TierConfig("SSD", tmp_path / "ssd", 8 * RS)], tmp_path / "index", region_size=RS, **kwargs
    )


def test_an_index_of_page_aligned_pages_opens_with_packing(tmp_path):
    # An index written before packing (every page at a 4 KiB boundary) stays valid.
    with open_store(tmp_path, pack_below=0) as s:
        s.put_many([(f"old{i}", payload(f"old{i}", 100 + i)) for i in range(5)])
        old = s.locate([f"old{i}" for i in range(5)])
        assert [loc.offset for loc in old] == [0, 4096, 8192, 12288, 16384]
    with open_store(tmp_path) as s:
        assert s.locate([f"old{i}" for i in range(5)]) == old
        s.put_many([("new0", b"n" * 100), ("new1", b"m" * 100)])
        new = s.locate(["new0", "new1"])
        assert [loc.offset for loc in new] == [16384 + 128, 16384 + 256]
        for i in range(5):
            buf = bytearray(200)
            assert s.get_into(f"old{i}", buf) == 100 + i
            assert bytes(buf[: 100 + i]) == payload(f"old{i}", 100 + i)


@pytest.mark.parametrize(
    "first, then",
    [
        ({"small_align": 8}, {"small_align": 512}),
        ({"pack_below": 64 * KiB}, {"pack_below": 0}),
        ({"pack_below": 64 * KiB}, {"pack_below": 100}),
    ],
)
def test_changing_the_packing_between_opens_keeps_every_page(tmp_path, first, then):
    sizes = [8, 50, 100, 3000, 9, 5000]
    keys = [f"k{i}" for i in range(len(sizes))]
    with open_store(tmp_path, **first) as s:
        s.put_many([(k, payload(k, n)) for k, n in zip(keys, sizes, strict=True)], dirty=True)
        before = s.locate(keys)
        assert any(loc.offset % 512 for loc in before)
    with open_store(tmp_path, **then) as s:
        assert s.locate(keys) == before  # dirty pages above all must survive
        assert s.usage()["SSD"].dirty_bytes == sum(sizes)
        for k, n in zip(keys, sizes, strict=True):
            buf = bytearray(n)
            assert s.get_into(k, buf) == n and bytes(buf) == payload(k, n)
        s.put("after", b"a" * 100, dirty=True)
        assert_aligned(s, s.locate(["after"])[0])  # new pages follow the new rules


def test_direct_store_reads_packed_and_aligned_pages(tmp_path):
    with open_store(tmp_path, direct=True) as s:
        sizes = [100, 8192, 64 * KiB, 300, 128 * KiB]
        keys = [f"k{i}" for i in range(len(sizes))]
        s.put_many([(k, payload(k, n)) for k, n in zip(keys, sizes, strict=True)])
        locs = s.locate(keys)
        assert locs[2].offset % 4096 == 0 and locs[4].offset % 4096 == 0
        assert locs[1].offset % 4096  # 8 KiB, but packed after the 100-byte page
        bufs = [aligned_buffer(n) for n in sizes]
        assert s.get_many_into(zip(keys, bufs, strict=True)) == sizes
        for k, n, buf in zip(keys, sizes, bufs, strict=True):
            assert buf.tobytes() == payload(k, n)
