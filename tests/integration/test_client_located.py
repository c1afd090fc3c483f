"""Warm reads through remembered page locations: no round trip to the worker, the worker's
counters and eviction order told afterwards, and every way a remembered location can go
bad (reclaimed region, corrupt bytes, freed pages, changed files, metadata expiry)."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal import Client
from shoal.client import _shortcircuit

PAGE = 64 << 10  # the page size of the tests' configuration (conftest.SMALL_CONFIG)


def random_bytes(size: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


def write_files(root, count: int, seed: int = 0) -> dict[str, bytes]:
    """Small files (one page or less) plus one of three pages, keyed by file name."""
    root.mkdir(exist_ok=True)
    files = {f"f{i:03d}": random_bytes(1 + (i * 7919) % PAGE, seed + i) for i in range(count)}
    files["big"] = random_bytes(3 * PAGE - 5, seed + 999)
    for name, data in files.items():
        (root / name).write_bytes(data)
    return files


def read_batch(client, mount: str, files: dict[str, bytes]) -> None:
    items = [(bytearray(len(d) + 3), f"{mount}/{n}", 0) for n, d in files.items()]
    counts = client.read_many_into(items)
    for (buf, _, _), n, data in zip(items, counts, files.values(), strict=True):
        assert n == len(data) and bytes(buf[:n]) == data


@pytest.fixture
def local_files(client, tmp_path):
    files = write_files(tmp_path / "root", 40)
    client.mount("/d", str(tmp_path / "root"))
    return files


def test_warm_reads_need_no_round_trip(client, local_files):
    read_batch(client, "/d", local_files)  # cold: fetched, located, remembered
    before = client.report()
    for _ in range(3):
        read_batch(client, "/d", local_files)
    after = client.report()
    # The report itself, and one report of the pages read meanwhile: no read request.
    assert after["requests"] - before["requests"] == 2
    pages = len(local_files) + 2
    assert after["page_hits"] - before["page_hits"] == 3 * pages
    assert after["pages_located"] - before["pages_located"] == 3 * pages
    assert after["ufs_bytes"] == before["ufs_bytes"]


def test_reads_are_reported_to_the_worker_now_and_then(client, local_files, monkeypatch):
    monkeypatch.setattr(_shortcircuit, "_TOUCH_DELAY", 0.0)
    read_batch(client, "/d", local_files)
    other = Client(client.config)  # its report does not carry the first client's reads
    try:
        before = other.report()
        read_batch(client, "/d", local_files)
        after = other.report()
    finally:
        other.close()
    assert after["page_hits"] - before["page_hits"] == len(local_files) + 2
    assert after["requests"] - before["requests"] == 2  # report, touch


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_ranges_within_remembered_pages(client, local_files, data):
    names = sorted(local_files)
    picks = data.draw(st.lists(st.sampled_from(names), min_size=1, max_size=12))
    items, expected = [], []
    for name in picks:
        content = local_files[name]
        offset = data.draw(st.integers(0, len(content) + 2))
        length = data.draw(st.integers(0, 2 * PAGE))
        items.append((bytearray(length), f"/d/{name}", offset))
        expected.append(content[offset : offset + length])
    for _ in range(2):  # the first reads may locate; the second reads remembered pages
        for buf, _, _ in items:
            buf[:] = b"\xee" * len(buf)
        counts = client.read_many_into(items)
        for (buf, _, _), n, want in zip(items, counts, expected, strict=True):
            assert n == len(want) and bytes(buf[:n]) == want
            assert bytes(buf[n:]) == b"\xee" * (len(buf) - n)


def test_corrupt_pages_are_not_returned(client, local_files, shoal_home):
    read_batch(client, "/d", local_files)
    regions = os.path.join(shoal_home, "cache", "regions")
    for name in os.listdir(regions):
        with open(os.path.join(regions, name), "r+b") as f:
            f.write(b"\x5a" * os.path.getsize(f.name))
    before = client.report()
    read_batch(client, "/d", local_files)  # fetched again from the directory
    after = client.report()
    assert after["ufs_bytes"] - before["ufs_bytes"] == sum(map(len, local_files.values()))
    read_batch(client, "/d", local_files)


def test_free_forgets_remembered_pages(client, local_files):
    read_batch(client, "/d", local_files)
    assert client.free("/d")["pages"] == len(local_files) + 2
    before = client.report()
    read_batch(client, "/d", local_files)
    after = client.report()
    assert after["ufs_bytes"] - before["ufs_bytes"] == sum(map(len, local_files.values()))


def test_changed_file_after_refresh(client, local_files, tmp_path):
    read_batch(client, "/d", local_files)
    (tmp_path / "root" / "f001").write_bytes(b"new content")
    client.refresh("/d/f001")
    local_files["f001"] = b"new content"
    read_batch(client, "/d", local_files)
    read_batch(client, "/d", local_files)


def test_no_remembered_reads_when_the_mount_keeps_no_metadata(client, tmp_path):
    files = write_files(tmp_path / "root", 5)
    client.mount("/d", str(tmp_path / "root"), metadata_ttl=0)
    read_batch(client, "/d", files)
    before = client.report()
    read_batch(client, "/d", files)
    after = client.report()
    # One read request for the whole batch (the worker checks each version) and the
    # report; no pages read on the side, so nothing to report.
    assert after["requests"] - before["requests"] == 2
    assert after["pages_located"] - before["pages_located"] == len(files) + 2


def test_reclaimed_regions_are_read_through_the_worker(daemons, tmp_path):
    """A cache of 16 regions of one page: reading 40 one-page files evicts the first ones,
    whose remembered locations then fail the generation check (and with them a file of
    several pages, some of them reclaimed)."""
    files = {f"p{i:02d}": random_bytes(PAGE, 50 + i) for i in range(40)}
    multi = {"multi": random_bytes(4 * PAGE - 10, 49)}  # four pages, four regions
    files.update(multi)
    (tmp_path / "root").mkdir()
    for name, data in files.items():
        (tmp_path / "root" / name).write_bytes(data)
    tiny = {"region_size": PAGE, "capacity": 16 * PAGE}
    with daemons.environment(**tiny):
        client = Client()
        try:
            client.mount("/d", str(tmp_path / "root"))
            for _ in range(3):
                for i in range(0, 40, 8):
                    read_batch(client, "/d", multi)  # some of its pages reclaimed since
                    read_batch(client, "/d", dict(list(files.items())[i : i + 8]))
            assert client.report()["ufs_reads"] > 40  # evicted pages were fetched again
        finally:
            client.close()


def test_threads_share_remembered_locations(client, local_files):
    read_batch(client, "/d", local_files)
    errors = []

    def reader() -> None:
        try:
            for _ in range(5):
                read_batch(client, "/d", local_files)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors


def test_a_restarted_worker_is_asked_again(client, local_files, shoal_home, daemons):
    read_batch(client, "/d", local_files)
    daemons.stop(shoal_home)
    assert [m.path for m in client.mounts()] == ["/d"]  # a new worker
    read_batch(client, "/d", local_files)
    report = client.report()
    assert report["ufs_bytes"] == 0
    assert report["page_hits"] == len(local_files) + 2  # the new worker counts them all
