"""The ``pin`` of a policy, enforced by a real worker (one SSD tier of 16 MiB): pinned
files stay cached through a scan of three times the tier that evicts everything else,
whether they were cached after the pin was set or before it; removing the pin lets them go;
pinned pages never take more than the tier's pinned share."""

from __future__ import annotations

import os
import time

from conftest import PAGE

from shoal.control._fetch import PINNED_SHARE

CAPACITY = 16 << 20  # conftest.SMALL_CONFIG


def files(root, name: str, count: int) -> None:
    (root / name).mkdir()
    for i in range(count):
        (root / name / f"f{i:04d}").write_bytes(os.urandom(PAGE))


def scan(client, root, name: str = "scan") -> None:
    """Load three times the tier's capacity of other files."""
    if not (root / name).exists():
        files(root, name, 3 * CAPACITY // PAGE)
    client.load([f"/d/{name}"])


def pinned_bytes(client) -> int:
    return client.report()["tiers"]["SSD"]["pinned_bytes"]


def wait_for(test, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not test():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def gets(client) -> int:
    return client.report()["ufs_requests"].get("GET", 0)


def test_pinned_files_survive_a_scan_that_evicts_the_rest(client, tmp_path):
    files(tmp_path, "hot", 8)
    files(tmp_path, "cold", 8)
    client.mount("/d", tmp_path.as_uri())
    client.set_policy("/d/hot", pin=True)
    client.load(["/d/hot", "/d/cold"])
    assert client.du("/d/hot")["bytes"] == client.du("/d/cold")["bytes"] == 8 * PAGE
    assert pinned_bytes(client) == 8 * PAGE
    scan(client, tmp_path)
    assert client.du("/d/hot")["bytes"] == 8 * PAGE  # all of it
    assert client.du("/d/cold")["bytes"] < 8 * PAGE  # evicted, some or all
    before = gets(client)
    buf = bytearray(PAGE)
    for i in range(8):
        assert client.read_into(buf, f"/d/hot/f{i:04d}") == PAGE
        assert buf == (tmp_path / "hot" / f"f{i:04d}").read_bytes()
    assert gets(client) == before  # served from the cache


def test_a_pin_set_later_holds_the_pages_cached_before_and_its_removal_frees_them(client, tmp_path):
    files(tmp_path, "warm", 8)
    client.mount("/d", tmp_path.as_uri())
    client.load(["/d/warm"])
    assert pinned_bytes(client) == 0
    client.set_policy("/d/warm", pin=True)
    wait_for(lambda: pinned_bytes(client) == 8 * PAGE, "the cached pages were not pinned")
    scan(client, tmp_path)
    assert client.du("/d/warm")["bytes"] == 8 * PAGE
    client.remove_policy("/d/warm", "pin")
    wait_for(lambda: pinned_bytes(client) == 0, "the pages were not unpinned")
    client.free("/d/scan")
    scan(client, tmp_path)
    assert client.du("/d/warm")["bytes"] < 8 * PAGE


def test_pinned_pages_stay_within_the_pinned_share(client, tmp_path):
    share = int(PINNED_SHARE * CAPACITY)
    files(tmp_path, "big", share // PAGE + 40)
    client.mount("/d", tmp_path.as_uri(), pin=True)  # a mount's option as well
    client.load(["/d/big"])
    report = client.report()
    assert 0 < report["tiers"]["SSD"]["pinned_bytes"] <= share
    assert report["pins_refused"] > 0
    buf = bytearray(PAGE)
    for i in range(0, share // PAGE + 40, 7):  # every file reads right, pinned or not
        assert client.read_into(buf, f"/d/big/f{i:04d}") == PAGE
        assert buf == (tmp_path / "big" / f"f{i:04d}").read_bytes()
