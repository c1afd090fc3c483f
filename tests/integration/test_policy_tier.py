"""The ``tier`` of a policy or a mount, enforced by a real worker with a MEM and an SSD
tier: new pages of the files under it go to that tier, through every way a page is
fetched (a cold read, a read of a known file, a load of many small files)."""

from __future__ import annotations

import os

import pytest
from conftest import PAGE

from shoal.client import Client


def pages_by_tier(client: Client) -> dict[str, int]:
    return {name: t["pages"] for name, t in client.report()["tiers"].items()}


def read(client: Client, path: str, size: int) -> bytes:
    buf = bytearray(size)
    assert client.read_into(buf, path) == size
    return bytes(buf)


def test_new_pages_go_to_the_tier_of_the_policy(two_tiers, tmp_path):
    client = two_tiers
    for d in ("hot", "cold"):
        (tmp_path / d).mkdir()
        for i in range(8):
            (tmp_path / d / f"s{i}").write_bytes(bytes([i]) * 100)
        (tmp_path / d / "big").write_bytes(os.urandom(3 * PAGE))
    client.mount("/d", tmp_path.as_uri())
    client.set_policy("/d/cold", tier="ssd")
    assert client.effective_policy("/d/cold/big")["policy"]["tier"] == "SSD"
    assert pages_by_tier(client) == {"MEM": 0, "SSD": 0}
    # A cold read of a file never seen, a read of one stat'd first, a load of small files.
    assert read(client, "/d/cold/big", 3 * PAGE) == (tmp_path / "cold" / "big").read_bytes()
    assert client.stat("/d/hot/big").size == 3 * PAGE
    assert read(client, "/d/hot/big", 3 * PAGE) == (tmp_path / "hot" / "big").read_bytes()
    assert pages_by_tier(client) == {"MEM": 3, "SSD": 3}
    client.load(["/d"])
    assert pages_by_tier(client) == {"MEM": 11, "SSD": 11}
    # A policy that no longer names a tier: the fastest again, for new pages.
    client.remove_policy("/d/cold", "tier")
    (tmp_path / "cold" / "late").write_bytes(b"late")
    client.load(["/d/cold/late"])
    assert pages_by_tier(client) == {"MEM": 12, "SSD": 11}


def test_the_tier_of_a_mount_and_a_full_tier(two_tiers, tmp_path):
    client = two_tiers
    (tmp_path / "a").write_bytes(os.urandom(PAGE))
    client.mount("/s", tmp_path.as_uri(), tier="SSD")
    assert client.effective_policy("/s/a")["sources"]["tier"] == "mount"
    read(client, "/s/a", PAGE)
    assert pages_by_tier(client) == {"MEM": 0, "SSD": 1}
    # More than the MEM tier holds (4 regions of 4 pages), sent there: its least recently
    # used regions make room, their pages moving down to SSD; nothing is lost.
    client.mount("/m", tmp_path.as_uri(), tier="MEM")
    (tmp_path / "many").mkdir()
    for i in range(40):
        (tmp_path / "many" / f"f{i}").write_bytes(os.urandom(PAGE))
    client.load(["/m/many"])
    tiers = pages_by_tier(client)
    assert 0 < tiers["MEM"] <= 16 and tiers["MEM"] + tiers["SSD"] == 41
    for i in range(40):
        assert read(client, f"/m/many/f{i}", PAGE) == (tmp_path / "many" / f"f{i}").read_bytes()


def test_a_bad_tier_is_a_clear_error(two_tiers, tmp_path):
    with pytest.raises(ValueError, match="tier must be one of MEM, SSD, HDD, got 'FAST'"):
        two_tiers.mount("/x", tmp_path.as_uri(), tier="FAST")
    with pytest.raises(ValueError, match="tier must be one of MEM, SSD, HDD, got 3"):
        two_tiers.mount("/x", tmp_path.as_uri(), tier=3)
    assert two_tiers.mounts() == []
