"""The worker's read op in-process: descriptor budget per answer, data mode, bad pieces."""

from __future__ import annotations

import contextlib
import os
import shutil

import pytest
from conftest import TEST_ALLOWED_MOUNTS

from shoal._config import load_config
from shoal.control._server import ConnectionState
from shoal.control._worker import Worker
from shoal.control.proto import DATA, GENERATIONS, LOCATE, MAX_FDS
from shoal.control.ufs import ObjectChangedError

PAGE = 4096


@pytest.fixture
def worker(tmp_path):
    config = load_config(
        home=str(tmp_path / "home"),
        page_size=PAGE,
        region_size=PAGE,
        chunk_size=4 * PAGE,
        capacity=255 * PAGE,
        mem_capacity=0,
        allowed_mounts=TEST_ALLOWED_MOUNTS,
    )
    w = Worker(config)
    data = os.urandom(230 * PAGE - 100)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_bytes(data)
    w.mount("/d", str(tmp_path / "src"), {"read_ahead": 0})
    yield w, data
    w.close()


def read(w, conn, version, items, mode=LOCATE, forget=()):
    header = {"files": [["/d/f", version]], "items": items, "mode": mode, "forget": list(forget)}
    reply = w.read(conn, header)
    for fd in reply.fds:
        assert fd >= 0  # the worker's own descriptors, kept by it
    return reply


def test_descriptor_budget_per_answer(worker):
    w, data = worker
    version = w.file("/d/f").info.version
    conn = ConnectionState()
    items = [[0, i, 0, min(PAGE, len(data) - i * PAGE)] for i in range(230)]
    reply = read(w, conn, version, items)
    located = [loc for loc in reply.header["locs"] if loc is not None]
    assert len(reply.fds) == len(reply.header["fds"]) == MAX_FDS
    assert reply.header["fds"][0] == ["SSD", GENERATIONS]
    assert len(located) == MAX_FDS - 1  # one region each, plus the generation table
    inline = b"".join(bytes(v) for v in reply.payload)
    expected = b"".join(
        data[i * PAGE : (i + 1) * PAGE] for i, loc in enumerate(reply.header["locs"]) if loc is None
    )
    assert inline == expected
    # Next time only the regions the client does not hold yet come along.
    again = read(w, conn, version, items)
    assert len(again.fds) == 230 - (MAX_FDS - 1)
    assert all(loc is not None for loc in again.header["locs"])
    # Forgotten descriptors are sent again.
    forget = again.header["fds"][:3]
    third = read(w, conn, version, items, forget=forget)
    assert third.header["fds"] == forget


def test_data_mode_and_pieces(worker):
    w, data = worker
    version = w.file("/d/f").info.version
    reply = read(w, ConnectionState(), version, [[0, 3, 100, 50], [0, 229, 0, PAGE - 100]], DATA)
    assert reply.header["locs"] == [None, None] and reply.fds == []
    assert (
        b"".join(bytes(v) for v in reply.payload)
        == data[3 * PAGE + 100 : 3 * PAGE + 150] + (data[229 * PAGE :])
    )


def test_bad_reads(worker):
    w, data = worker
    version = w.file("/d/f").info.version
    conn = ConnectionState()
    with pytest.raises(ValueError, match="outside page 229"):
        read(w, conn, version, [[0, 229, 0, PAGE]])
    with pytest.raises(ValueError, match="outside page 230"):
        read(w, conn, version, [[0, 230, 0, 1]])
    with pytest.raises(ObjectChangedError, match="changed since its metadata was read"):
        read(w, conn, "not-the-version", [[0, 0, 0, 1]])
    with pytest.raises(FileNotFoundError, match="not under any mount"):
        w.read(conn, {"files": [["/x/f", "v"]], "items": [], "mode": LOCATE, "forget": []})
    with pytest.raises(IsADirectoryError):
        w.read(conn, {"files": [["/d", ""]], "items": [], "mode": LOCATE, "forget": []})


def test_pages_spill_to_the_next_tier_when_the_first_is_full(tmp_path):
    config = load_config(
        home=str(tmp_path / "home"),
        page_size=PAGE,
        region_size=4 * PAGE,
        chunk_size=4 * PAGE,
        capacity=16 * PAGE,
        mem_capacity=4 * PAGE,
        allowed_mounts=TEST_ALLOWED_MOUNTS,
    )
    with contextlib.ExitStack() as cleanup:  # the MEM tier goes even if the worker fails
        cleanup.callback(shutil.rmtree, config.mem_dir, ignore_errors=True)
        w = Worker(config)
        cleanup.callback(w.close)
        assert [t.name for t in config.tiers()] == ["MEM", "SSD"]
        # Pinned pages fill the MEM tier's only region: it can take no more.
        for i in range(4):
            w._store.put(b"pinned%d" % i, bytes(PAGE), tier="MEM", pin=True)
        data = os.urandom(3 * PAGE)
        (tmp_path / "src").mkdir()
        (tmp_path / "src" / "f").write_bytes(data)
        w.mount("/d", str(tmp_path / "src"), {})
        version = w.file("/d/f").info.version
        items = [[0, i, 0, PAGE] for i in range(3)]
        reply = read(w, ConnectionState(), version, items)
        assert [loc[0] for loc in reply.header["locs"]] == ["SSD"] * 3
        assert w.report()["tiers"]["SSD"]["pages"] == 3
        assert w.report()["store_full"] == 0
