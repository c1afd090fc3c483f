"""The worker's metadata cache: TTLs, refresh of a path, a prefix and the listings above."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.control._metadata import MetadataCache
from shoal.control.ufs import ObjectInfo


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


sizes = st.integers(0, 3)


def info(path: str, version: str = "v1") -> ObjectInfo:
    return ObjectInfo(path, 10, version, 0.0)


def test_entries_expire_after_their_ttl():
    clock = Clock()
    cache = MetadataCache(clock=clock)
    cache.put_stat("/m/a", info("a"), ttl=5)
    cache.put_list("/m", [info("a")], ttl=1)
    assert cache.get_stat("/m/a") == info("a")
    assert cache.get_list("/m") == [info("a")]
    clock.now += 2
    assert cache.get_list("/m") is None
    assert cache.get_stat("/m/a") is not None
    clock.now += 3
    assert cache.get_stat("/m/a") is None
    assert len(cache) == 0


def test_zero_ttl_caches_nothing():
    cache = MetadataCache()
    cache.put_stat("/m/a", info("a"), ttl=0)
    assert cache.get_stat("/m/a") is None
    loads = []
    for _ in range(2):
        cache.stat("/m/a", 0, lambda: loads.append(1) or info("a"))
    assert len(loads) == 2


def test_stat_loads_once_within_ttl():
    cache = MetadataCache()
    loads = []
    for _ in range(3):
        assert cache.stat("/m/a", 60, lambda: loads.append(1) or info("a")) == info("a")
    assert len(loads) == 1


def test_refresh_drops_path_prefix_and_listings_above():
    cache = MetadataCache()
    for p in ("/m/d/a", "/m/d/b", "/m/d2/a", "/m/e"):
        cache.put_stat(p, info(p), 60)
    for p in ("/m", "/m/d", "/m/d2"):
        cache.put_list(p, [], 60)
    assert cache.refresh("/m/d") == 2 + 2  # two stats, its own listing and /m's
    assert cache.get_stat("/m/d2/a") is not None  # a sibling sharing a name prefix stays
    assert cache.get_list("/m/d2") == []
    assert cache.get_list("/m") is None
    assert cache.refresh("/m/d2/a") == 2  # the file and its directory's listing
    assert cache.refresh("/") == 1  # /m/e
    assert len(cache) == 0


def test_oldest_entries_go_past_the_limit():
    clock = Clock()
    cache = MetadataCache(max_entries=3, clock=clock)
    cache.put_stat("/a", info("a"), 1)
    for p in ("/b", "/c", "/d"):
        cache.put_stat(p, info(p), 60)
    assert cache.get_stat("/a") is None and len(cache) <= 3  # the oldest went
    clock.now += 30
    cache.put_stat("/e", info("e"), 60)
    assert cache.get_stat("/b") is None and cache.get_stat("/e") is not None


def test_puts_past_the_limit_do_not_each_scan_the_cache():
    cache = MetadataCache(max_entries=1000)
    scans = 0
    shrink = cache._shrink

    def counted(keep) -> None:
        nonlocal scans
        scans += 1
        shrink(keep)

    cache._shrink = counted
    for i in range(20_000):
        cache.put_stat(f"/f{i}", info(str(i)), 60)
        assert len(cache) <= 1000
    assert scans <= 20_000 // 100 + 1  # one scan per tenth of the bound, not per put


def test_expired_entries_go_before_live_ones_whatever_their_age():
    """At the bound, entries whose time is up go first, the newest among them too; the
    cache looks for them only once one may have expired (a shrink before that looks at
    no entry's time)."""
    clock = Clock()
    cache = MetadataCache(max_entries=10, clock=clock)
    for i in range(5):
        cache.put_stat(f"/long{i}", info(str(i)), 600)  # oldest, live for long
    for i in range(5):
        cache.put_stat(f"/short{i}", info(str(i)), 10)
    assert len(cache) == 10
    cache.put_stat("/one-more", info("x"), 600)  # past the bound, nothing expired yet
    assert cache.get_stat("/one-more") is not None and len(cache) == 9
    assert cache.get_stat("/long0") is None and cache.get_stat("/long1") is None  # oldest
    clock.now += 11  # the short ones' time is up
    for i in range(5, 10):
        cache.put_stat(f"/long{i}", info(str(i)), 600)
    # The expired went, not the oldest live ones.
    assert all(cache.get_stat(f"/long{i}") is not None for i in range(2, 10))
    assert all(cache.get_stat(f"/short{i}") is None for i in range(5))


def test_entries_past_the_byte_bound_go_oldest_first():
    cache = MetadataCache(max_bytes=100_000)
    for i in range(2_000):
        cache.put_stat(f"/dir/file-{i:06d}", info(str(i)), 60)
        assert cache.bytes <= 100_000
    assert cache.get_stat("/dir/file-001999") is not None
    assert cache.get_stat("/dir/file-000000") is None
    kept = len(cache)
    assert 100 < kept < 2_000
    cache.put_list("/dir", [info(str(i)) for i in range(50)], 60)
    assert cache.bytes <= 100_000 and cache.get_list("/dir") is not None
    # Listings go before stats: a listing asks the store again once for many files.
    names = [f"/dir/file-{i:06d}" for i in range(2_000)]

    def stats() -> int:
        return sum(cache.get_stat(name) is not None for name in names)

    before = stats()
    for i in range(40):
        cache.put_list(f"/l{i}", [info(str(i)) for i in range(50)], 60)
        assert cache.bytes <= 100_000
    assert cache.get_list("/dir") is None and cache.get_list("/l39") is not None
    assert stats() == before  # every stat kept
    cache.refresh("/")
    assert cache.bytes == 0 and len(cache) == 0


def test_bad_limit():
    with pytest.raises(ValueError, match="max_entries"):
        MetadataCache(max_entries=0)
    with pytest.raises(ValueError, match="max_bytes"):
        MetadataCache(max_bytes=True)


def test_batched_puts_and_expiries_agree_with_single_ones():
    clock = Clock()
    one, many = MetadataCache(clock=clock), MetadataCache(clock=clock)
    items = [(f"/m/f{i}", info(f"f{i}")) for i in range(20)]
    for path, i in items:
        one.put_stat(path, i, ttl=5)
    many.put_stats(items, ttl=5)
    many.put_stats([], ttl=5)
    many.put_stats(items[:3], ttl=0)  # caches nothing, changes nothing
    assert many.bytes == one.bytes and len(many) == len(one) == 20
    asked = [*items, ("/m/f0", info("f0", "v2")), ("/m/none", info("none"))]
    want = [one.expiry(path, i) for path, i in asked]
    assert many.expiries(asked) == want == [1005.0] * 20 + [None, None]
    clock.now += 6
    assert many.expiries(items) == [None] * 20


def test_batched_puts_keep_the_bounds():
    cache = MetadataCache(max_entries=10)
    cache.put_stats([(f"/m/f{i}", info(f"f{i}")) for i in range(25)], ttl=60)
    assert len(cache) <= 10
    assert cache.get_stat("/m/f24") is not None  # the newest stay


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.lists(
            st.tuples(st.integers(0, 7), st.sampled_from(["v1", "v2", "a-longer-one"]), sizes),
            max_size=12,
        ),
        max_size=6,
    ),
    st.lists(st.tuples(st.integers(0, 9), st.sampled_from(["v1", "v2"]), sizes), max_size=12),
)
def test_batched_puts_and_expiries_agree_with_single_ones_entry_for_entry(batches, asked):
    """Batches of stats (the same path more than once, new versions among them) cached
    natively give the entries, their order (the order of age), the bytes and the expiries
    that one put at a time gives."""
    clock = Clock()
    one, many = MetadataCache(clock=clock), MetadataCache(clock=clock)
    for batch in batches:
        items = [(f"/m/f{p}", ObjectInfo(f"f{p}", size, v, 0.0)) for p, v, size in batch]
        for path, i in items:
            one.put_stat(path, i, ttl=3)
        many.put_stats(items, ttl=3)
        clock.now += 1
    assert many.bytes == one.bytes
    assert list(many._stats.items()) == list(one._stats.items())
    items = [(f"/m/f{p}", ObjectInfo(f"f{p}", size, v, 0.0)) for p, v, size in asked]
    want = []
    for path, i in items:
        entry = one._stats.get(path)
        live = entry is not None and entry[0] > clock.now
        same = live and (entry[1].version, entry[1].size) == (i.version, i.size)
        want.append(entry[0] if same else None)
    assert many.expiries(items) == want


def test_a_batch_with_a_bad_item_caches_none_of_it():
    cache = MetadataCache()
    cache.put_stats([("/m/a", info("a"))], ttl=5)
    before = (cache.bytes, dict(cache._stats))
    for bad in [
        ("/m/b", info("b"), 1),
        (b"/m/b", info("b")),
        ("/m/b", ObjectInfo("b", 1, None, 0.0)),
    ]:
        with pytest.raises(TypeError, match="item 1"):
            cache.put_stats([("/m/c", info("c")), bad], ttl=5)
        assert (cache.bytes, dict(cache._stats)) == before
    with pytest.raises(TypeError, match="item 0"):
        cache.expiries(["/m/a"])
