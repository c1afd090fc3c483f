"""The ``ttl``, ``quota`` and ``priority`` of a policy, and pages moving between tiers,
enforced by real worker processes on ``file://`` and S3 (moto) mounts:

- an expired page is never served (fetched again, through every way a client reads:
  requests, remembered locations, the table of published files) and is reclaimed by the
  sweep without a read;
- a quota is never exceeded after reading far more than it, evicts its own least
  recently used files (never another prefix's, never pinned ones), and refuses to be set
  below the bytes pinned under it;
- high-priority pages outlive a scan that evicts low and normal ones;
- pages evicted from MEM move down to SSD, and pages read often from SSD move back up,
  as ``shoal du`` shows.
"""

from __future__ import annotations

import os
import time

import pytest
from conftest import PAGE

from shoal._config import load_config
from shoal.client import Client

CAPACITY = 16 << 20  # conftest.SMALL_CONFIG: one SSD tier


def files(root, name: str, count: int, pages: int = 1) -> None:
    (root / name).mkdir(parents=True)
    for i in range(count):
        (root / name / f"f{i:04d}").write_bytes(os.urandom(pages * PAGE))


def gets(client) -> int:
    return client.report()["ufs_requests"].get("GET", 0)


def read(client, path: str, expected: bytes) -> None:
    buf = bytearray(len(expected))
    assert client.read_into(buf, path) == len(expected)
    assert buf == expected


def wait_for(test, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not test():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def evicted(client, reason: str) -> int:
    return client.report()["evictions"][reason]["pages"]


# ----------------------------------------------------------------- TTL


def test_an_expired_file_is_fetched_again_however_it_is_read(client, tmp_path):
    files(tmp_path, "t", 2, pages=3)  # read with requests (and remembered locations)
    files(tmp_path, "t/small", 2)  # one page each: the table of published files
    client.mount("/d", tmp_path.as_uri())
    client.set_policy("/d/t", ttl="2s")
    big = (tmp_path / "t" / "f0000").read_bytes()
    small = (tmp_path / "t" / "small" / "f0000").read_bytes()
    read(client, "/d/t/f0000", big)
    read(client, "/d/t/small/f0000", small)
    before = gets(client)
    read(client, "/d/t/f0000", big)
    read(client, "/d/t/small/f0000", small)
    assert gets(client) == before  # cached: served with no request to the store
    time.sleep(2.3)
    read(client, "/d/t/f0000", big)
    read(client, "/d/t/small/f0000", small)
    assert gets(client) == before + 2  # each expired, fetched again (one request each)
    assert evicted(client, "ttl") >= 1
    # A client that never read them: no page it may serve is older than the TTL either.
    with Client(load_config()) as other:
        read(other, "/d/t/f0000", big)
    assert gets(client) == before + 2


def test_the_sweep_reclaims_expired_pages_without_a_read(client, tmp_path):
    files(tmp_path, "t", 4, pages=2)
    files(tmp_path, "keep", 4, pages=2)
    client.mount("/d", tmp_path.as_uri())
    client.set_policy("/d/t", ttl="1s")
    client.load(["/d/t", "/d/keep"])
    assert client.du("/d/t")["bytes"] == 8 * PAGE
    wait_for(lambda: evicted(client, "ttl") == 8, "expired pages were not swept", 10)
    assert client.du("/d/t")["bytes"] == 0
    assert client.du("/d/keep")["bytes"] == 8 * PAGE  # no TTL there


def test_pages_cached_before_a_ttl_count_from_when_it_was_set(client, tmp_path):
    files(tmp_path, "t", 3)
    client.mount("/d", tmp_path.as_uri())
    client.load(["/d/t"])
    client.set_policy("/d/t", ttl="1s")
    wait_for(lambda: evicted(client, "ttl") == 3, "pages cached before the TTL were not swept")
    assert client.du("/d/t")["bytes"] == 0


def test_pages_outlive_a_ttl_removed_before_it_ran_out(client, tmp_path):
    files(tmp_path, "t", 3)
    client.mount("/d", tmp_path.as_uri())
    client.set_policy("/d/t", ttl="2s", read_ahead=0)
    client.load(["/d/t"])
    client.remove_policy("/d/t", "ttl")
    time.sleep(2.5)
    assert client.du("/d/t")["bytes"] == 3 * PAGE
    assert evicted(client, "ttl") == 0


def test_a_restarted_worker_keeps_the_clock(shoal_home, tmp_path):
    from conftest import stop_worker

    files(tmp_path, "t", 1, pages=2)
    data = (tmp_path / "t" / "f0000").read_bytes()
    with Client(load_config()) as client:
        client.mount("/d", tmp_path.as_uri())
        client.set_policy("/d/t", ttl="3s")
        read(client, "/d/t/f0000", data)
        cached_at = time.monotonic()
    stop_worker(shoal_home)
    with Client(load_config()) as client:
        before = gets(client)
        read(client, "/d/t/f0000", data)
        if time.monotonic() - cached_at < 2.5:
            assert gets(client) == before  # within its TTL: from the cache
        time.sleep(max(0.0, cached_at + 3.3 - time.monotonic()))
        read(client, "/d/t/f0000", data)
        assert gets(client) == before + 1  # the TTL counts from the first caching


# ----------------------------------------------------------------- quota


def test_a_quota_is_never_exceeded_and_evicts_only_its_own_files(client, tmp_path):
    files(tmp_path, "q", 40)
    files(tmp_path, "other", 4)
    (tmp_path / "q" / "big").write_bytes(os.urandom(12 * PAGE))
    client.mount("/d", tmp_path.as_uri())
    client.set_policy("/d/q", quota=8 * PAGE)
    client.load(["/d/other"])
    for i in range(40):
        read(client, f"/d/q/f{i:04d}", (tmp_path / "q" / f"f{i:04d}").read_bytes())
        assert client.du("/d/q")["bytes"] <= 8 * PAGE
    assert client.du("/d/q")["bytes"] == 8 * PAGE
    assert client.du("/d/other")["bytes"] == 4 * PAGE  # another prefix's: untouched
    # Least recently used first: the last eight read are the ones kept.
    before = gets(client)
    for i in range(32, 40):
        read(client, f"/d/q/f{i:04d}", (tmp_path / "q" / f"f{i:04d}").read_bytes())
    assert gets(client) == before
    # A file larger than the quota reads right and is not cached past it; a load too.
    read(client, "/d/q/big", (tmp_path / "q" / "big").read_bytes())
    client.load(["/d/q"])
    assert client.du("/d/q")["bytes"] <= 8 * PAGE
    report = client.report()
    assert report["evictions"]["quota"]["pages"] >= 32
    assert report["quotas"]["/d/q"] == {"quota": 8 * PAGE, "bytes": client.du("/d/q")["bytes"]}


def test_a_quota_set_later_evicts_down_to_it_and_spares_pinned_files(client, tmp_path):
    files(tmp_path, "q/pinned", 2)
    files(tmp_path, "q/rest", 10)
    client.mount("/d", tmp_path.as_uri())
    client.set_policy("/d/q/pinned", pin=True)
    client.load(["/d/q"])
    assert client.du("/d/q")["bytes"] == 12 * PAGE
    with pytest.raises(ValueError, match="below the 131072 bytes pinned under /d/q"):
        client.set_policy("/d/q", quota=PAGE)
    client.set_policy("/d/q", quota=5 * PAGE)
    wait_for(lambda: client.du("/d/q")["bytes"] <= 5 * PAGE, "the quota set later was not met")
    assert client.du("/d/q/pinned")["bytes"] == 2 * PAGE


def test_ttl_and_quota_on_an_s3_mount(client, bucket):
    for i in range(6):
        bucket.put(f"q/f{i}", bytes([i]) * PAGE)
    client.mount("/s3", f"s3://{bucket.name}", **bucket.options())
    client.set_policy("/s3/q", quota=3 * PAGE, ttl="1s")
    for i in range(6):
        read(client, f"/s3/q/f{i}", bytes([i]) * PAGE)
        assert client.du("/s3/q")["bytes"] <= 3 * PAGE
    wait_for(lambda: client.du("/s3/q")["bytes"] == 0, "expired S3 pages were not swept", 10)
    before = gets(client)
    read(client, "/s3/q/f5", bytes([5]) * PAGE)
    assert gets(client) == before + 1


def test_tier_and_pin_on_an_s3_mount(two_tiers, bucket):
    client = two_tiers
    for name in ("ssd", "pinned"):
        bucket.put(f"{name}/f", os.urandom(2 * PAGE))
    for i in range(20):
        bucket.put(f"fill/f{i}", os.urandom(PAGE))
    client.mount("/s3", f"s3://{bucket.name}", **bucket.options())
    client.set_policy("/s3/ssd", tier="SSD")
    client.set_policy("/s3/pinned", pin=True)
    client.load(["/s3/ssd", "/s3/pinned"])
    assert client.du("/s3/ssd")["tiers"] == {"MEM": 0, "SSD": 2 * PAGE}
    client.load(["/s3/fill"])  # more than MEM holds: its other pages move down
    assert client.du("/s3/pinned")["tiers"] == {"MEM": 2 * PAGE, "SSD": 0}
    assert client.du("/s3/fill")["bytes"] == 20 * PAGE


def test_priority_and_demotion_on_an_s3_mount(two_tiers, bucket):
    client = two_tiers
    for i in range(8):
        bucket.put(f"low/f{i}", bytes([i]) * PAGE)
    for i in range(20):
        bucket.put(f"fill/f{i}", bytes([i]) * PAGE)
    client.mount("/s3", f"s3://{bucket.name}", **bucket.options())
    client.set_policy("/s3/low", priority="low")
    client.load(["/s3/low"])
    client.load(["/s3/fill"])  # more than MEM holds
    low = client.du("/s3/low")
    # Low pages are dropped, never moved down: only the region still open for them stays.
    assert low["tiers"]["SSD"] == 0 and low["bytes"] <= 4 * PAGE
    assert client.du("/s3/fill")["bytes"] == 20 * PAGE  # normal pages moved down instead
    assert client.report()["evictions"]["capacity"]["pages"] >= 4


# ----------------------------------------------------------------- priority


def test_high_priority_pages_outlive_a_scan_that_evicts_low_ones(client, tmp_path):
    files(tmp_path, "hi", 8)
    files(tmp_path, "lo", 8)
    files(tmp_path, "scan", 3 * CAPACITY // PAGE)
    client.mount("/d", tmp_path.as_uri())
    client.set_policy("/d/hi", priority="high")
    client.set_policy("/d/lo", priority="low")
    client.load(["/d/hi", "/d/lo"])
    client.load(["/d/scan"])
    assert client.du("/d/hi")["bytes"] == 8 * PAGE
    # Every sealed region of low pages went first; the one still open for them stays.
    assert client.du("/d/lo")["bytes"] <= 4 * PAGE  # a region: 4 pages
    assert evicted(client, "capacity") > 0


def test_a_priority_set_later_moves_the_pages_cached_before(client, tmp_path):
    files(tmp_path, "hi", 8)
    files(tmp_path, "scan", 3 * CAPACITY // PAGE)
    client.mount("/d", tmp_path.as_uri())
    client.load(["/d/hi"])
    client.set_policy("/d/hi", priority="high")
    wait_for(
        lambda: client.report()["tier_moves"]["reprioritized"]["pages"] == 8,
        "the pages cached before were not moved to high-priority regions",
    )
    client.load(["/d/scan"])
    assert client.du("/d/hi")["bytes"] == 8 * PAGE


# ----------------------------------------------------------------- tiers


def test_pages_evicted_from_mem_move_down_and_pages_read_often_move_up(two_tiers, tmp_path):
    client = two_tiers
    files(tmp_path, "m", 20, pages=2)
    client.mount("/d", tmp_path.as_uri())
    client.load(["/d/m"])
    du = client.du("/d/m")
    assert du["bytes"] == 40 * PAGE  # nothing lost: what MEM could not keep is on SSD
    assert 0 < du["tiers"]["MEM"] <= 16 * PAGE and du["tiers"]["SSD"] > 0
    assert client.report()["tier_moves"]["demoted"]["pages"] > 0
    # A file on SSD read twice through the worker (fresh clients: nothing remembered).
    on_ssd = next(
        f"/d/m/f{i:04d}"
        for i in range(20)
        if client.du(f"/d/m/f{i:04d}")["tiers"]["SSD"] == 2 * PAGE
    )
    expected = (tmp_path / "m" / on_ssd.rsplit("/", 1)[1]).read_bytes()
    for _ in range(2):
        with Client(load_config()) as reader:
            read(reader, on_ssd, expected)
    wait_for(lambda: client.du(on_ssd)["tiers"]["MEM"] == 2 * PAGE, "the file was not promoted")
    assert client.report()["tier_moves"]["promoted"]["pages"] >= 2
    with Client(load_config()) as reader:
        read(reader, on_ssd, expected)


def test_demoted_pages_read_short_circuit_move_back_up(two_tiers, tmp_path):
    client = two_tiers
    files(tmp_path, "m", 20, pages=2)
    client.mount("/d", tmp_path.as_uri())
    client.load(["/d/m"])
    on_ssd = next(
        f"/d/m/f{i:04d}"
        for i in range(20)
        if client.du(f"/d/m/f{i:04d}")["tiers"]["SSD"] == 2 * PAGE
    )
    expected = (tmp_path / "m" / on_ssd.rsplit("/", 1)[1]).read_bytes()
    with Client(load_config()) as reader:
        read(reader, on_ssd, expected)  # asks the worker where the pages are, once

        def promoted() -> bool:
            # Later reads need no request: reported by region about once a second.
            read(reader, on_ssd, expected)
            return client.du(on_ssd)["tiers"]["MEM"] == 2 * PAGE

        wait_for(promoted, "pages read short-circuit were not promoted")
        read(reader, on_ssd, expected)


# ----------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"ttl": "0s"}, "ttl: must be longer than 0 s"),
        ({"ttl": "-5s"}, "ttl: a duration must be >= 0"),
        ({"ttl": "soon"}, "is not a duration"),
        ({"quota": "-1"}, "quota: a size must be more than 0 bytes"),
        ({"quota": "lots"}, "quota"),
        ({"priority": "urgent"}, "priority: 'urgent' is not one of high, normal, low"),
    ],
)
def test_bad_values_are_refused_with_one_line(client, tmp_path, fields, message):
    client.mount("/d", tmp_path.as_uri())
    with pytest.raises(ValueError, match=message) as info:
        client.set_policy("/d", **fields)
    assert "\n" not in str(info.value)
