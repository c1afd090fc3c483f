"""The page store's placement policy: page priorities, demotion of reclaimed pages to the
tier below, moves between tiers, and the counters of all three."""

from __future__ import annotations

import errno
import inspect
import os
import random
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.engine import PageStore, RegionReader, StaleLocationError, TierConfig

KiB = 1024
RS = 64 * KiB  # region size: four pages of PAGE to a region
PAGE = 16 * KiB
PRIORITIES = ("low", "normal", "high")
REPO = Path(__file__).resolve().parents[2]


def payload(key: str, size: int = PAGE) -> bytes:
    """Bytes that follow from the key, so a checker knows what a page must hold."""
    return random.Random(key).randbytes(size)


def make_store(tmp_path: Path, regions: dict[str, int], **kwargs) -> PageStore:
    """A store with ``regions[name]`` regions per tier, fastest first; reclaim starts when
    a tier is full and frees regions down to three quarters of it."""
    configs = [TierConfig(name, tmp_path / name.lower(), n * RS) for name, n in regions.items()]
    kwargs.setdefault("high_watermark", 1.0)
    kwargs.setdefault("low_watermark", 0.75)
    return PageStore(configs, tmp_path / "index", region_size=RS, **kwargs)


def read(store: PageStore, key: str) -> bytes:
    buf = bytearray(RS)
    return bytes(buf[: store.get_into(key, buf)])


def where(store: PageStore, key: str) -> tuple[str, int] | None:
    loc = store.locate([key], touch=False)[0]
    return None if loc is None else (loc.tier, loc.region)


def all_keys(store: PageStore) -> list[bytes]:
    """Every key of the store, region by region."""
    return [
        k
        for name, u in store.usage().items()
        for number in range(u.regions_total)
        for k in store.region_keys(name, number)
    ]


# ------------------------------------------------------------------ priorities


def test_reclaim_takes_low_then_normal_least_recently_used_and_keeps_high(tmp_path):
    with make_store(tmp_path, {"SSD": 8}) as s:
        for priority in ("high", "normal", "low"):  # two regions each, the second open
            for i in range(8):
                s.put(f"{priority[0]}{i}", payload(f"{priority[0]}{i}"), priority=priority)
        assert s.usage()["SSD"].regions_used == 6
        for i in range(8, 16):  # two more normal regions: all eight in use
            s.put(f"n{i}", payload(f"n{i}"))
        s.get_into("n0", bytearray(PAGE))  # the first normal region is now the most recent
        s.put("n16", payload("n16"))  # three regions must go
        present = {k: s.contains(k) for p in "hnl" for k in (f"{p}{i}" for i in range(17))}
        # The sealed low region, then the least recently used normal ones; the high region,
        # the oldest of all, stays.
        assert all(present[f"h{i}"] for i in range(8))
        assert [present[f"l{i}"] for i in range(8)] == [False] * 4 + [True] * 4
        assert [present[f"n{i}"] for i in range(17)] == ([True] * 4 + [False] * 8 + [True] * 5)
        assert read(s, "h0") == payload("h0") and read(s, "n0") == payload("n0")
        assert s.stats() == {
            "evicted_pages": 12,
            "evicted_bytes": 12 * PAGE,
            "demoted_pages": 0,
            "demoted_bytes": 0,
            "moved_pages": 0,
            "moved_bytes": 0,
            "regions_reclaimed": 3,
        }


def test_evict_takes_regions_in_the_same_order(tmp_path):
    with make_store(tmp_path, {"SSD": 8}) as s:
        for priority in ("high", "low", "normal"):
            for i in range(5):  # a sealed region each, and an open one
                s.put(f"{priority[0]}{i}", payload(f"{priority[0]}{i}"), priority=priority)
        assert s.evict("SSD", 5 * RS) == RS
        assert not s.contains("l0") and s.contains("n0") and s.contains("h0")
        assert s.evict("SSD", 4 * RS) == RS
        assert not s.contains("n0") and s.contains("h0")
        assert s.evict("SSD", 0) == RS  # the three open regions stay
        assert not s.contains("h0") and s.contains("h4") and s.contains("l4")


def test_pages_of_different_priorities_never_share_a_region(tmp_path):
    rng = random.Random(7)
    with make_store(tmp_path, {"MEM": 16, "SSD": 16}) as s:
        kinds = {}
        for n in range(40):
            kind = rng.choice([*PRIORITIES, "pinned", "dirty"])
            tier = rng.choice(["MEM", "SSD"])
            batch = [f"b{n}-{i}" for i in range(rng.randrange(1, 5))]
            s.put_many(
                [(k, payload(k, rng.randrange(1, 8 * KiB))) for k in batch],
                tier=tier,
                pin=kind == "pinned",
                dirty=kind == "dirty",
                priority=kind if kind in PRIORITIES else rng.choice(PRIORITIES),
            )
            kinds.update(dict.fromkeys(batch, "sticky" if kind in ("pinned", "dirty") else kind))
        regions: dict[tuple[str, int], set[str]] = {}
        for key, kind in kinds.items():
            place = where(s, key)
            if place is not None:
                regions.setdefault(place, set()).add(kind)
        assert all(len(found) == 1 for found in regions.values()), regions
        assert {kind for found in regions.values() for kind in found} == {
            *PRIORITIES,
            "sticky",
        }


def test_priorities_survive_close_and_reopen(tmp_path):
    with make_store(tmp_path, {"SSD": 8}) as s:
        for priority in ("high", "low", "normal"):  # a sealed region each, and an open one
            for i in range(5):
                s.put(f"{priority[0]}{i}", payload(f"{priority[0]}{i}"), priority=priority)
        open_regions = {p: where(s, f"{p[0]}4") for p in PRIORITIES}
    with make_store(tmp_path, {"SSD": 8}) as s:
        # Each kind's open region is open again for its own pages.
        for priority in PRIORITIES:
            key = f"{priority[0]}5"
            s.put(key, payload(key), priority=priority)
            assert where(s, key) == open_regions[priority]
        for i in range(6, 17):  # fill normal regions until three must go
            s.put(f"n{i}", payload(f"n{i}"))
        # The high region was written first, yet the low one and two normal ones went.
        assert s.contains("h0") and not s.contains("l0")
        assert not s.contains("n0") and not s.contains("n4")
        assert s.stats()["regions_reclaimed"] == 3
        assert read(s, "h3") == payload("h3")


def test_pinned_and_dirty_pages_go_to_their_own_regions_whatever_their_priority(tmp_path):
    with make_store(tmp_path, {"SSD": 8}) as s:
        s.put("p", b"p" * 100, pin=True, priority="low")
        s.put("d", b"d" * 100, dirty=True, priority="high")
        s.put("n", b"n" * 100)
        assert where(s, "p") == where(s, "d") != where(s, "n")


def test_bad_priorities_are_refused(tmp_path):
    with make_store(tmp_path, {"SSD": 2}) as s:

        @settings(max_examples=60, deadline=None)
        @given(st.text().filter(lambda p: p not in PRIORITIES))
        def unknown(priority):
            with pytest.raises(ValueError, match="unknown priority") as info:
                s.put("k", b"x", priority=priority)
            assert repr(priority) in str(info.value) and "'high'" in str(info.value)
            with pytest.raises(ValueError, match="unknown priority"):
                s.put_many([], priority=priority)

        @settings(max_examples=30, deadline=None)
        @given(st.one_of(st.none(), st.integers(), st.floats(), st.binary(), st.just(["low"])))
        def not_text(priority):
            with pytest.raises(TypeError, match="priority must be a str"):
                s.put_many([("k", b"x")], priority=priority)

        unknown()
        not_text()
        assert len(s) == 0


# ------------------------------------------------------------------ demotion


def test_reclaimed_pages_are_demoted_to_the_tier_below(tmp_path):
    with (
        make_store(tmp_path, {"MEM": 4, "SSD": 16}, demote=True) as s,
        RegionReader(s.tier_paths) as reader,
    ):
        for i in range(16):  # four regions, the last one open
            s.put(f"m{i}", payload(f"m{i}"))
        old = s.locate(["m0"], touch=False)[0]
        assert old.tier == "MEM"
        s.put("m16", payload("m16"))  # MEM is full: its two oldest regions are reclaimed
        for i in range(17):
            assert where(s, f"m{i}")[0] == ("SSD" if i < 8 else "MEM"), i
            assert read(s, f"m{i}") == payload(f"m{i}")
        new = s.locate(["m0"])[0]
        assert (new.length, new.crc32c) == (old.length, old.crc32c)
        buf = bytearray(PAGE)
        with pytest.raises(StaleLocationError):
            reader.read_into(old, buf)
        reader.read_into(new, buf)
        assert bytes(buf) == payload("m0")
        assert s.stats() == {
            "evicted_pages": 0,
            "evicted_bytes": 0,
            "demoted_pages": 8,
            "demoted_bytes": 8 * PAGE,
            "moved_pages": 0,
            "moved_bytes": 0,
            "regions_reclaimed": 2,
        }
        usage = s.usage()
        assert (usage["MEM"].pages, usage["SSD"].pages) == (9, 8)
        assert usage["SSD"].live_bytes == 8 * PAGE
        # Which pages came down, once: what tells them from pages put on SSD on purpose.
        assert sorted(s.take_demoted()) == sorted(f"m{i}".encode() for i in range(8))
        assert s.take_demoted() == []


def test_demoted_pages_keep_their_priority_and_flags(tmp_path):
    size = 15 * KiB  # four to a region, with room left for a small page
    with make_store(tmp_path, {"MEM": 4, "SSD": 16}, demote=True) as s:
        for i in range(5):
            s.put(f"h{i}", payload(f"h{i}", size), priority="high")
        for i in range(5):
            s.put(f"n{i}", payload(f"n{i}", size))
        s.pin("n4")  # pinned in place: its region, the open normal one, is kept
        s.evict("MEM", 0)  # the sealed high and normal regions go
        assert where(s, "h0")[0] == "SSD" and where(s, "n0")[0] == "SSD"
        assert where(s, "h0")[1] != where(s, "n0")[1]
        assert read(s, "h3") == payload("h3", size)
        s.put("h-new", payload("h-new", 1000), tier="SSD", priority="high")
        s.put("n-new", payload("n-new", 1000), tier="SSD")
        assert where(s, "h-new") == where(s, "h0") and where(s, "n-new") == where(s, "n0")
        assert s.pinned("n4") and where(s, "n4")[0] == "MEM"
        assert s.stats()["demoted_pages"] == 8


def test_low_priority_pages_are_dropped_not_demoted(tmp_path):
    with make_store(tmp_path, {"MEM": 4, "SSD": 16}, demote=True) as s:
        for i in range(5):  # a sealed low region, and an open one
            s.put(f"l{i}", payload(f"l{i}"), priority="low")
        for i in range(8):  # a sealed normal region, and an open one: all four in use
            s.put(f"n{i}", payload(f"n{i}"))
        s.put("n8", payload("n8"))  # a fifth region: two must go, low first
        assert not any(s.contains(f"l{i}") for i in range(4)) and s.contains("l4")
        assert all(where(s, f"n{i}")[0] == "SSD" for i in range(4))
        assert s.usage()["SSD"].pages == 4
        stats = s.stats()
        assert (stats["evicted_pages"], stats["evicted_bytes"]) == (4, 4 * PAGE)
        assert (stats["demoted_pages"], stats["demoted_bytes"]) == (4, 4 * PAGE)
        assert sorted(s.take_demoted()) == sorted(f"n{i}".encode() for i in range(4))


def test_without_demote_reclaimed_pages_are_dropped(tmp_path):
    with make_store(tmp_path, {"MEM": 4, "SSD": 16}) as s:
        for i in range(17):
            s.put(f"m{i}", payload(f"m{i}"))
        assert [s.contains(f"m{i}") for i in range(17)] == [False] * 8 + [True] * 9
        assert s.usage()["SSD"].regions_used == 0
        stats = s.stats()
        assert (stats["evicted_pages"], stats["demoted_pages"]) == (8, 0)


def test_demotion_cascades_to_the_slowest_tier_and_ends_there(tmp_path):
    rng = random.Random(3)
    tiers = {"MEM": 4, "SSD": 4, "HDD": 8}
    with make_store(tmp_path, tiers, demote=True) as s:
        priorities = {}
        for n in range(60):
            batch = [f"k{n}-{i}" for i in range(rng.randrange(1, 4))]
            priority = rng.choice(PRIORITIES)
            s.put_many([(k, payload(k)) for k in batch], priority=priority)
            priorities.update(dict.fromkeys(batch, priority))
        newest = batch[-1]
        stats = s.stats()
        # Every page put is either still here or was dropped once: none lost, none twice.
        assert len(s) + stats["evicted_pages"] == len(priorities)
        assert stats["evicted_bytes"] == stats["evicted_pages"] * PAGE
        usage = s.usage()
        assert all(usage[name].regions_used <= n for name, n in tiers.items())
        assert usage["HDD"].pages > 0 and stats["demoted_pages"] > usage["SSD"].pages
        for key, priority in priorities.items():
            place = where(s, key)
            if place is None:
                continue
            assert read(s, key) == payload(key)
            if priority == "low":
                assert place[0] == "MEM"  # low pages are never demoted
        assert where(s, newest)[0] == "MEM"
        before = {key: s.locate([key], touch=False)[0] for key in priorities}
    # The index after all those demotions is what a reopened store finds.
    with make_store(tmp_path, tiers, demote=True) as s:
        assert {key: s.locate([key], touch=False)[0] for key in priorities} == before
        assert sorted(all_keys(s)) == sorted(k.encode() for k, loc in before.items() if loc)
        for key, loc in before.items():
            if loc is not None:
                assert read(s, key) == payload(key)
        assert s.stats() == dict.fromkeys(s.stats(), 0)  # counters start again at each open


def test_a_demotion_that_finds_the_tier_below_full_drops_the_pages(tmp_path):
    with make_store(tmp_path, {"MEM": 4, "SSD": 2}, demote=True) as s:
        s.put_many([(f"p{i}", payload(f"p{i}")) for i in range(8)], tier="SSD", pin=True)
        for i in range(17):  # two MEM regions reclaimed; SSD has no room for their pages
            s.put(f"m{i}", payload(f"m{i}"))
        assert [s.contains(f"m{i}") for i in range(17)] == [False] * 8 + [True] * 9
        assert all(read(s, f"p{i}") == payload(f"p{i}") for i in range(8))
        stats = s.stats()
        assert (stats["evicted_pages"], stats["demoted_pages"]) == (8, 0)


def test_a_demotion_whose_write_fails_drops_the_pages(tmp_path, monkeypatch):
    with make_store(tmp_path, {"MEM": 4, "SSD": 8}, demote=True) as s:
        write = s._write
        ssd = os.path.join(str(tmp_path), "ssd") + os.sep

        def failing_on_ssd(prepared, reserved):
            if any(region.path.startswith(ssd) for region, _ in reserved):
                raise OSError(errno.EIO, "injected")
            write(prepared, reserved)

        monkeypatch.setattr(s, "_write", failing_on_ssd)
        for i in range(17):  # the put that made room does not fail
            s.put(f"m{i}", payload(f"m{i}"))
        assert [s.contains(f"m{i}") for i in range(17)] == [False] * 8 + [True] * 9
        assert s.usage()["SSD"].pages == 0
        assert s.stats()["evicted_pages"] == 8
        monkeypatch.undo()
    with make_store(tmp_path, {"MEM": 4, "SSD": 8}, demote=True) as s:
        assert sorted(all_keys(s)) == sorted(f"m{i}".encode() for i in range(8, 17))
        assert all(read(s, f"m{i}") == payload(f"m{i}") for i in range(8, 17))


def test_a_sync_store_demotes_too(tmp_path):
    with make_store(tmp_path, {"MEM": 4, "SSD": 8}, demote=True, sync=True) as s:
        for i in range(17):
            s.put(f"m{i}", payload(f"m{i}"))
        assert all(where(s, f"m{i}")[0] == "SSD" for i in range(8))
    with make_store(tmp_path, {"MEM": 4, "SSD": 8}, demote=True, sync=True) as s:
        assert all(read(s, f"m{i}") == payload(f"m{i}") for i in range(17))


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, RS), st.sampled_from(PRIORITIES)), min_size=1, max_size=14),
    st.sampled_from([0, 4 * KiB, 64 * KiB]),
)
def test_demotions_and_moves_keep_every_byte_and_the_accounting(pages, pack_below):
    with (
        tempfile.TemporaryDirectory() as root,
        make_store(Path(root), {"MEM": 4, "SSD": 8}, demote=True, pack_below=pack_below) as s,
    ):
        sizes = {f"k{i}": size for i, (size, _) in enumerate(pages)}
        for i, (size, priority) in enumerate(pages):
            s.put(f"k{i}", payload(f"k{i}", size), priority=priority)
        s.evict("MEM", 0)
        up = s.move(list(sizes)[::2], "MEM")
        s.evict("SSD", 2 * RS)
        down = s.move(list(sizes)[1::2], "SSD")
        stats = s.stats()
        assert stats["moved_pages"] == up + down
        assert len(s) + stats["evicted_pages"] == len(sizes)  # no page lost, none counted twice
        for name, u in s.usage().items():
            keys = [k.decode() for r in range(u.regions_total) for k in s.region_keys(name, r)]
            assert len(keys) == u.pages and sum(sizes[k] for k in keys) == u.live_bytes
            assert u.live_bytes <= u.filled_bytes <= u.allocated_bytes <= u.capacity
        for key, size in sizes.items():
            if s.contains(key):
                assert read(s, key) == payload(key, size)


WRITER = """
root, seed = Path(sys.argv[1]), int(sys.argv[2])
rng = random.Random(seed)
store = make_store(root, TIERS, demote=True)
announced = False
for n in itertools.count():
    keys = [f"r{seed}-{n}-{i}" for i in range(rng.randrange(1, 4))]
    store.put_many([(k, payload(k, rng.randrange(1, 3 * PAGE))) for k in keys],
                   priority=rng.choice(["low", "normal", "high"]))
    if not announced and store.stats()["demoted_pages"] >= 30:
        print("demoting", flush=True)
        announced = True
"""


@pytest.mark.timeout(120)
def test_a_writer_killed_while_demoting_leaves_every_page_right(tmp_path):
    tiers = {"MEM": 3, "SSD": 3, "HDD": 4}
    program = (
        "import itertools, random, sys\nfrom pathlib import Path\n"
        "from shoal.engine import PageStore, TierConfig\n"
        f"RS = {RS}\nPAGE = {PAGE}\nTIERS = {tiers!r}\n"
        + "".join(inspect.getsource(f) for f in (payload, make_store))
        + textwrap.dedent(WRITER)
    )
    rng = random.Random(11)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for round_ in range(3):
        writer = subprocess.Popen(
            [sys.executable, "-c", program, str(tmp_path), str(round_)],
            env=env,
            stdout=subprocess.PIPE,
        )
        try:
            assert writer.stdout.readline() == b"demoting\n"
            time.sleep(rng.uniform(0.0, 0.3))
            assert writer.poll() is None, "the writer died on its own"
        finally:
            writer.kill()
            writer.wait()
            writer.stdout.close()
        with make_store(tmp_path, tiers, demote=True) as s:
            keys = all_keys(s)
            assert len(keys) == len(s) > 0
            assert {loc.tier for loc in s.locate(keys, touch=False)} - {"MEM"}
            buf = bytearray(RS)
            for k in keys:
                n = s.get_into(k, buf)
                key = k.decode()
                assert bytes(buf[:n]) == payload(key, n), key


# ------------------------------------------------------------------ moves


def test_move_up_and_down_keeps_bytes_flags_and_priority(tmp_path):
    with make_store(tmp_path, {"MEM": 4, "SSD": 8}) as s:
        s.put_many([(f"s{i}", payload(f"s{i}")) for i in range(4)], tier="SSD")
        s.put("h0", payload("h0"), tier="SSD", priority="high")
        s.put("p0", payload("p0", 5000), tier="SSD", pin=True)
        s.put("m0", payload("m0"))  # already in MEM
        source = where(s, "s0")
        sizes = {"p0": 5000}
        keys = ["s0", "s1", "h0", "p0", "m0", "missing", b"s0"]
        assert s.move(keys, "MEM") == 4
        for key in ("s0", "s1", "h0", "p0"):
            assert where(s, key)[0] == "MEM"
            assert read(s, key) == payload(key, sizes.get(key, PAGE))
        assert s.pinned("p0") and not s.pinned("s0")
        # Each page went to the open region of its kind.
        s.put("h-new", payload("h-new"), priority="high")
        s.put("p-new", payload("p-new"), pin=True)
        assert where(s, "h-new") == where(s, "h0") != where(s, "s0")
        assert where(s, "p-new") == where(s, "p0") != where(s, "s0")
        assert s.move(keys, "MEM") == 0  # all there already
        assert s.region_keys(*source) == [b"s2", b"s3"]
        assert s.move(["s0", "s1", "h0", "p0", "h-new", "p-new"], "SSD") == 6
        for key in ("s0", "s1", "h0", "p0", "h-new", "p-new"):
            assert where(s, key)[0] == "SSD"
            assert read(s, key) == payload(key, sizes.get(key, PAGE))
        assert s.pinned("p-new")
        usage = s.usage()
        assert (usage["MEM"].pages, usage["SSD"].pages) == (1, 8)
        assert usage["MEM"].live_bytes == PAGE
        stats = s.stats()
        assert stats["moved_pages"] == 10
        assert stats["moved_bytes"] == 8 * PAGE + 2 * 5000
        assert stats["evicted_pages"] == stats["demoted_pages"] == 0
    with make_store(tmp_path, {"MEM": 4, "SSD": 8}) as s:  # moves are in the index
        assert where(s, "h0")[0] == "SSD" and read(s, "h0") == payload("h0")
        assert s.pinned("p0") and read(s, "p0") == payload("p0", 5000)


def test_a_move_with_a_priority_changes_the_regions_of_pages_in_their_tier(tmp_path):
    with make_store(tmp_path, {"MEM": 8}) as s:
        s.put_many([(f"n{i}", payload(f"n{i}")) for i in range(4)])  # a normal region
        s.put("p0", payload("p0"), pin=True)
        s.put("h0", payload("h0"), priority="high")
        normal = where(s, "n0")
        # To high: in MEM still, in the region of high pages; a pinned page stays put.
        assert s.move(["n0", "n1", "p0", "h0"], "MEM", priority="high") == 2
        assert where(s, "n0") == where(s, "n1") == where(s, "h0") != normal
        assert where(s, "p0")[0] == "MEM" and s.pinned("p0")
        assert read(s, "n1") == payload("n1")
        assert s.move(["n0", "n1"], "MEM", priority="high") == 0  # there already
        # A scan that needs room reclaims normal regions before the high one.
        s.put_many([(f"x{i}", payload(f"x{i}")) for i in range(24)])
        assert s.contains("n0") and s.contains("h0") and not s.contains("n2")
        with pytest.raises(ValueError, match="unknown priority 'urgent'"):
            s.move(["n0"], "MEM", priority="urgent")


def test_moving_a_whole_region_frees_it(tmp_path):
    with make_store(tmp_path, {"MEM": 4, "SSD": 8}) as s:
        s.put_many([(f"s{i}", payload(f"s{i}")) for i in range(5)], tier="SSD")
        region = where(s, "s0")
        keys = s.region_keys(*region)
        assert keys == [b"s0", b"s1", b"s2", b"s3"]
        assert s.usage()["SSD"].regions_used == 2
        assert s.move(keys, "MEM") == 4
        assert s.usage()["SSD"].regions_used == 1
        assert s.region_keys(*region) == []
        assert s.stats()["regions_reclaimed"] == 1


def test_move_skips_pages_deleted_or_replaced_meanwhile(tmp_path, monkeypatch):
    with make_store(tmp_path, {"MEM": 4, "SSD": 8}) as s:
        s.put_many([(f"s{i}", payload(f"s{i}")) for i in range(4)], tier="SSD")
        fetch = s._fetch

        def fetch_then_change(pages):
            moving = fetch(pages)
            s.delete("s1")
            s.put("s2", b"new bytes", tier="SSD")
            return moving

        monkeypatch.setattr(s, "_fetch", fetch_then_change)
        assert s.move(["s0", "s1", "s2", "s3"], "MEM") == 2
        monkeypatch.undo()
        assert where(s, "s0")[0] == where(s, "s3")[0] == "MEM"
        assert not s.contains("s1")
        assert where(s, "s2")[0] == "SSD" and read(s, "s2") == b"new bytes"
        assert s.usage()["MEM"].pages == 2
        # The space reserved for the pages that did not move holds nothing indexed.
        assert s.region_keys(*where(s, "s0")) == [b"s0", b"s3"]


def test_move_skips_a_page_that_reads_wrong(tmp_path):
    with make_store(tmp_path, {"MEM": 4, "SSD": 8}) as s:
        s.put_many([(f"s{i}", payload(f"s{i}")) for i in range(2)], tier="SSD")
        loc = s.locate(["s0"])[0]
        fd = os.open(loc.path, os.O_RDWR)
        try:
            os.pwrite(fd, bytes([os.pread(fd, 1, loc.offset)[0] ^ 0xFF]), loc.offset)
        finally:
            os.close(fd)
        assert s.move(["s0", "s1"], "MEM") == 1
        assert where(s, "s0")[0] == "SSD" and where(s, "s1")[0] == "MEM"


def test_move_stops_when_the_tier_is_full(tmp_path):
    with make_store(tmp_path, {"MEM": 3, "SSD": 8}) as s:
        s.put_many([(f"p{i}", payload(f"p{i}")) for i in range(8)], pin=True)  # 2 regions
        s.put_many([(f"s{i}", payload(f"s{i}")) for i in range(8)], tier="SSD")
        assert s.move([f"s{i}" for i in range(8)], "MEM") == 4  # one region's worth
        assert [where(s, f"s{i}")[0] for i in range(8)] == ["MEM"] * 4 + ["SSD"] * 4
        assert all(read(s, f"s{i}") == payload(f"s{i}") for i in range(8))
        assert s.stats()["moved_pages"] == 4


def test_a_move_may_demote_to_make_room(tmp_path):
    with make_store(tmp_path, {"MEM": 4, "SSD": 8}, demote=True) as s:
        s.put_many([(f"m{i}", payload(f"m{i}")) for i in range(16)])
        s.put_many([(f"s{i}", payload(f"s{i}")) for i in range(4)], tier="SSD")
        assert s.move([f"s{i}" for i in range(4)], "MEM") == 4
        assert all(where(s, f"s{i}")[0] == "MEM" for i in range(4))
        assert all(where(s, f"m{i}")[0] == "SSD" for i in range(8))
        assert all(read(s, k) == payload(k) for k in [f"m{i}" for i in range(16)])
        stats = s.stats()
        assert (stats["moved_pages"], stats["demoted_pages"]) == (4, 8)


def test_move_and_region_keys_reject_bad_arguments(tmp_path):
    with make_store(tmp_path, {"SSD": 2}) as s:
        s.put("a", b"a")
        with pytest.raises(ValueError, match="unknown tier 'HDD'"):
            s.move(["a"], "HDD")
        with pytest.raises(TypeError, match="tier must be a tier name"):
            s.move(["a"], None)
        with pytest.raises(TypeError, match="one key"):
            s.move("a", "SSD")
        with pytest.raises(ValueError, match="must not be empty"):
            s.move([""], "SSD")
        with pytest.raises(TypeError, match="page key must be bytes or str"):
            s.move([1], "SSD")
        assert s.region_keys("SSD", 0) == [b"a"]
        assert s.region_keys("SSD", 1) == s.region_keys("SSD", 99) == []
        assert s.region_keys("SSD", -1) == []
        with pytest.raises(ValueError, match="unknown tier 'MEM'"):
            s.region_keys("MEM", 0)
        with pytest.raises(TypeError, match="region must be an int"):
            s.region_keys("SSD", "0")
        with pytest.raises(TypeError, match="tier must be a tier name"):
            s.region_keys(0, 0)
    with pytest.raises(ValueError, match="closed"):
        s.move(["a"], "SSD")
    with pytest.raises(ValueError, match="closed"):
        s.region_keys("SSD", 0)
