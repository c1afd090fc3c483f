"""The table of published files: one writer, readers in other processes, every slot
checked before it is believed."""

from __future__ import annotations

import mmap
import os
import struct
import subprocess
import sys
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.control._filetable import (
    HEADER_SIZE,
    SLOT_SIZE,
    FileTableReader,
    FileTableWriter,
    Published,
    path_key,
)
from shoal.engine import PageLocation

FRESH = time.monotonic_ns() + 3600 * 10**9


def entry(path: str, n: int = 0) -> tuple:
    return (path, 100 + n, n % 3, n, n * 128, n * 7 + 1, n + 1, FRESH)


def reader(writer: FileTableWriter) -> FileTableReader:
    return FileTableReader(writer.reader_fd())


def test_published_files_are_found_and_others_not():
    w = FileTableWriter(1024)
    paths = [f"/d/{i}" for i in range(500)]
    assert w.publish_many(entry(p, i) for i, p in enumerate(paths)) == 500
    r = reader(w)
    got = r.lookup_many(paths + ["/d/500", "/other"])
    for i, rec in enumerate(got[:500]):
        assert rec == Published(100 + i, i % 3, i, i * 128, i * 7 + 1, i + 1, FRESH)
    assert got[500:] == [None, None]
    assert w.stats()["files"] == 500


def test_republishing_replaces_in_place():
    w = FileTableWriter(1024)
    w.publish_many([entry("/a", 1), entry("/b", 2)])
    r = reader(w)
    w.publish_many([entry("/a", 5)])
    assert r.lookup_many(["/a"])[0].region == 5
    assert r.lookup_many(["/b"])[0].region == 2
    assert w.stats()["files"] == 2


def test_expiring_paths_voids_their_slots_alone_in_place():
    w = FileTableWriter(1024)
    paths = [f"/d/{i}" for i in range(50)]
    w.publish_many(entry(p, i) for i, p in enumerate(paths))
    r = reader(w)
    assert w.expire(["/d/3", "/d/7", "/d/absent", "/d"]) == 2
    got = r.lookup_many(paths + ["/d/absent"])
    assert r.current and w.stats() == {"files": 50, "slots": 1024, "tables": 1}
    for i, rec in enumerate(got[:50]):
        if i in (3, 7):  # as published, but with a time long past
            assert rec == Published(100 + i, i % 3, i, i * 128, i * 7 + 1, i + 1, 1)
        else:
            assert rec == Published(100 + i, i % 3, i, i * 128, i * 7 + 1, i + 1, FRESH)
    assert got[50] is None  # no slot made for a path that had none
    assert w.expire([]) == 0
    w.publish_many([entry("/d/3", 3)])  # published again: read again
    assert r.lookup_many(["/d/3"])[0].fresh_until_ns == FRESH
    w.close()
    assert w.expire(["/d/4"]) == 0


def test_growth_supersedes_the_old_table_and_keeps_every_file():
    w = FileTableWriter(1024, 16384)
    first = reader(w)
    paths = [f"/g/{i}" for i in range(3000)]  # past 0.8 of 1024 slots: two growths
    w.publish_many(entry(p, i) for i, p in enumerate(paths))
    assert not first.current
    now = reader(w)
    assert now.current
    assert all(rec is not None and rec.region == i for i, rec in enumerate(now.lookup_many(paths)))


def test_a_full_table_at_its_limit_publishes_no_more():
    w = FileTableWriter(1024, 1024)
    done = w.publish_many(entry(f"/f/{i}", i) for i in range(2000))
    assert done < 2000
    r = reader(w)
    assert sum(rec is not None for rec in r.lookup_many([f"/f/{i}" for i in range(2000)])) == done


def test_supersede_and_close_are_seen_by_readers():
    w = FileTableWriter(1024)
    w.publish_many([entry("/a")])
    r = reader(w)
    w.supersede()
    assert not r.current
    fresh = reader(w)
    assert fresh.current and fresh.lookup_many(["/a"]) == [None]
    w.close()
    assert not fresh.current
    with pytest.raises(ValueError, match="closed"):
        w.reader_fd()
    w.close()  # idempotent


def test_entries_that_do_not_fit_a_slot_are_left_out():
    w = FileTableWriter(1024)
    bad = [
        ("/big", 1 << 32, 0, 0, 0, 0, 1, FRESH),
        ("/gen", 1, 0, 0, 0, 0, 1 << 32, FRESH),
        ("/tier", 1, 256, 0, 0, 0, 1, FRESH),
        ("/stale", 1, 0, 0, 0, 0, 1, 0),
    ]
    assert w.publish_many(bad) == 0
    assert reader(w).lookup_many([b[0] for b in bad]) == [None] * 4


def _slot_of(w: FileTableWriter, path: str) -> int:
    """Offset of ``path``'s slot, found by scanning the writer's own mapping."""
    key = path_key(path)
    mm = w._mm
    for i in range((len(mm) - HEADER_SIZE) // SLOT_SIZE):
        at = HEADER_SIZE + i * SLOT_SIZE
        if mm[at + 8 : at + 24] == key:
            return at
    raise AssertionError(path)


@pytest.mark.parametrize("where", [4, 30, 33, 41, 50, 60])
def test_a_torn_or_damaged_slot_is_never_believed(where):
    w = FileTableWriter(1024)
    w.publish_many([entry("/t", 3)])
    r = reader(w)
    at = _slot_of(w, "/t")
    w._mm[at + where] ^= 0x5A
    assert r.lookup_many(["/t"]) == [None]


def test_a_slot_being_written_is_never_believed():
    w = FileTableWriter(1024)
    w.publish_many([entry("/t", 3)])
    r = reader(w)
    at = _slot_of(w, "/t")
    seq = struct.unpack_from("<I", w._mm, at)[0]
    struct.pack_into("<I", w._mm, at, seq + 1)  # odd: a write in progress
    assert r.lookup_many(["/t"]) == [None]


def test_readers_cannot_write_the_table():
    w = FileTableWriter(1024)
    fd = w.reader_fd()
    try:
        with pytest.raises(PermissionError):
            mmap.mmap(fd, HEADER_SIZE + (SLOT_SIZE << 10))
        with pytest.raises(OSError):
            os.write(fd, b"x")
        with pytest.raises(OSError):
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)


def test_not_a_table_is_refused():
    fd = os.memfd_create("x")
    os.ftruncate(fd, HEADER_SIZE + SLOT_SIZE * 1024)
    with pytest.raises(ValueError, match="not a Shoal file table"):
        FileTableReader(fd)
    fd = os.memfd_create("y")
    with pytest.raises(ValueError, match="too short"):
        FileTableReader(fd)


def test_the_native_probe_checks_its_arguments():
    from shoal.engine._slots import find_files

    w = FileTableWriter(1024)
    mm = w._mm
    with pytest.raises(TypeError):
        find_files(mm, [b"/not-a-str"], HEADER_SIZE, 1024, 8, 28, 0, 1)
    with pytest.raises(ValueError, match="fewer than its slots"):
        find_files(mm, ["/a"], HEADER_SIZE, 2048, 8, 28, 0, 1)
    with pytest.raises(ValueError, match="geometry"):
        find_files(mm, ["/a"], HEADER_SIZE, 1024, 8, 64, 0, 1)
    assert find_files(mm, [], HEADER_SIZE, 1024, 8, 28, 0, 1) == []


def test_the_native_writer_checks_its_arguments():
    from shoal.engine._slots import put_files

    w = FileTableWriter(1024)
    mm, body = w._mm, bytes(SLOT_SIZE)
    with pytest.raises(ValueError, match="1 paths for 2 bodies"):
        put_files(mm, ["/a"], [body, body], HEADER_SIZE, 1024, 8, 28, 0)
    with pytest.raises(ValueError, match="64 bytes"):
        put_files(mm, ["/a"], [body[:63]], HEADER_SIZE, 1024, 8, 28, 0)
    with pytest.raises(ValueError, match="fewer than its slots"):
        put_files(mm, ["/a"], [body], HEADER_SIZE, 2048, 8, 28, 0)
    with pytest.raises(ValueError, match="geometry"):
        put_files(mm, ["/a"], [body], HEADER_SIZE, 1024, 8, 64, 0)
    with pytest.raises(TypeError):
        put_files(mm, [b"/not-a-str"], [body], HEADER_SIZE, 1024, 8, 28, 0)
    with pytest.raises(BufferError):  # a read-only table
        put_files(
            bytes(HEADER_SIZE + SLOT_SIZE * 1024), ["/a"], [body], HEADER_SIZE, 1024, 8, 28, 0
        )
    assert put_files(mm, [], [], HEADER_SIZE, 1024, 8, 28, 0) == []


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=40).map(lambda t: "/" + t), max_size=60))
def test_the_native_writer_writes_the_slots_the_python_writer_writes(paths):
    # publish_many writes natively; a path past its probe limit is put again by the Python
    # writer after a growth: the two must leave the same bytes for the same files (the
    # sequence numbers aside).
    native = FileTableWriter(1024)
    native.publish_many(entry(p, i) for i, p in enumerate(paths))
    python = FileTableWriter(1024)
    with python._lock:
        for p in dict.fromkeys(paths):
            *_, n = [j for j, q in enumerate(paths) if q == p]  # the last entry of p wins
            e = entry(p, n)
            fields = (e[2], 0, e[3], e[5], e[6], e[1], e[4], e[7])
            body = struct.pack("<II16sIBBHIIIIQQ", 0, 0, path_key(p), 0, 1, *fields)
            assert python._put(body)

    def slots(w):
        out = []
        for k in range(1024):
            at = HEADER_SIZE + k * SLOT_SIZE
            out.append(bytes(w._mm[at + 4 : at + SLOT_SIZE]))
        return out

    assert slots(native) == slots(python)
    assert native._live == python._live == len(set(paths))
    got = reader(native).lookup_many(paths)
    assert all(g is not None for g in got)


def slot_bytes(w: FileTableWriter) -> list[bytes]:
    """Every slot of a writer's table, but its sequence number."""
    out = []
    for k in range(w.stats()["slots"]):
        at = HEADER_SIZE + k * SLOT_SIZE
        out.append(bytes(w._mm[at + 4 : at + SLOT_SIZE]))
    return out


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=40).map(lambda t: "/" + t), max_size=200))
def test_growth_copies_the_slots_the_python_writer_would_put(paths):
    w = FileTableWriter(1024)
    w.publish_many(entry(p, i) for i, p in enumerate(paths))
    with w._lock:
        old = w._mm[HEADER_SIZE : HEADER_SIZE + SLOT_SIZE * w._n]
        w._regrow(2048)  # natively (copy_slots)
    python = FileTableWriter(2048)
    with python._lock:
        for at in range(0, len(old), SLOT_SIZE):
            if old[at + 28] == 1:  # live
                assert python._put(old[at : at + SLOT_SIZE])
    assert slot_bytes(w) == slot_bytes(python)
    assert w._live == python._live == len(set(paths))
    assert all(g is not None for g in reader(w).lookup_many(paths))


def test_the_native_copy_checks_its_arguments():
    from shoal.engine._slots import copy_slots

    w = FileTableWriter(1024)
    mm, slots = w._mm, bytes(SLOT_SIZE * 4)
    with pytest.raises(ValueError, match="whole slots"):
        copy_slots(slots[:-1], mm, HEADER_SIZE, 1024, 8, 28, 0, 1)
    with pytest.raises(ValueError, match="fewer than its slots"):
        copy_slots(slots, mm, HEADER_SIZE, 2048, 8, 28, 0, 1)
    with pytest.raises(ValueError, match="geometry"):
        copy_slots(slots, mm, HEADER_SIZE, 1024, 8, 64, 0, 1)
    with pytest.raises(BufferError):  # a read-only table
        copy_slots(slots, bytes(HEADER_SIZE + SLOT_SIZE * 1024), HEADER_SIZE, 1024, 8, 28, 0, 1)
    assert copy_slots(slots, mm, HEADER_SIZE, 1024, 8, 28, 0, 1) == 0  # none live


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=700))
def test_the_native_blake2b_is_hashlibs(data):
    import hashlib

    from shoal.engine._slots import blake2b_16

    assert blake2b_16(data) == hashlib.blake2b(data, digest_size=16).digest()


def test_paths_that_are_not_plain_utf8_are_found_too():
    w = FileTableWriter(1024)
    odd = ["/a\udcff/b", "/\u00e9t\u00e9", "/" + "x" * 300, "/\U0001f600"]
    w.publish_many(entry(p, i) for i, p in enumerate(odd))
    got = reader(w).lookup_many(odd)
    assert [g.region for g in got] == [0, 1, 2, 3]


def test_bad_sizes_are_refused():
    for args in [(5,), (1 << 30,), (4096, 2048), (True,)]:
        with pytest.raises(ValueError):
            FileTableWriter(*args)


def test_a_reader_in_another_process_sees_what_the_writer_publishes():
    w = FileTableWriter(1024)
    w.publish_many(entry(f"/p/{i}", i) for i in range(100))
    fd = w.reader_fd()
    code = (
        "import sys; from shoal.control._filetable import FileTableReader as R;"
        "r = R(int(sys.argv[1])); got = r.lookup_many([f'/p/{i}' for i in range(100)]);"
        "print(sum(g is not None and g.region == i for i, g in enumerate(got)))"
    )
    try:
        out = subprocess.run(
            [sys.executable, "-c", code, str(fd)], pass_fds=[fd], capture_output=True, text=True,
            check=True, timeout=60,
        )  # fmt: skip
    finally:
        os.close(fd)
    assert out.stdout.strip() == "100"


paths = st.lists(
    st.text(st.characters(blacklist_characters="\0", blacklist_categories=["Cs"]), max_size=20).map(
        lambda s: "/" + s
    ),
    max_size=30,
)


@settings(max_examples=60, deadline=None)
@given(
    ops=st.lists(
        st.tuples(st.sampled_from(["put", "supersede"]), paths, st.integers(0, 1000)),
        max_size=25,
    )
)
def test_the_table_says_what_a_dict_says(ops):
    w = FileTableWriter(1024, 4096)
    model: dict[str, int] = {}
    for op, ps, n in ops:
        if op == "put":
            done = w.publish_many(entry(p, n) for p in ps)
            assert done == len(ps)
            model.update(dict.fromkeys(ps, n))
        else:
            w.supersede()
            model.clear()
    r = reader(w)
    asked = list(model) + ["/never-published"]
    got = r.lookup_many(asked)
    for p, rec in zip(asked, got, strict=True):
        if p in model:
            assert rec is not None and rec.region == model[p]
        else:
            assert rec is None
    assert w.stats()["files"] == len(model)


def test_reserving_room_grows_the_table_once():
    w = FileTableWriter(1024, 1 << 20)
    w.publish_many(entry(f"/r/{i}", i) for i in range(100))
    w.reserve(10_000)
    tables = w.stats()["tables"]
    assert w.stats()["slots"] >= 10_100 / 0.8
    w.publish_many(entry(f"/s/{i}", i) for i in range(10_000))
    assert w.stats()["tables"] == tables  # no growth while publishing
    got = reader(w).lookup_many(
        [f"/r/{i}" for i in range(100)] + [f"/s/{i}" for i in range(10_000)]
    )
    assert all(g is not None for g in got)


def test_many_small_reservations_grow_the_table_a_few_times():
    """Reserving a little at a time (a load reserves per listing run) doubles the table
    when it grows, not one slot's worth each time (each growth copies every slot)."""
    w = FileTableWriter(1024, 1 << 20)
    for k in range(200):
        w.reserve(100 * (k + 1))  # nothing published between: each asks for a bit more
    assert w.stats()["tables"] <= 6  # 1,024 slots to 32,768: five doublings at most
    assert w.stats()["slots"] >= 20_000 / 0.8


def located(n: int) -> PageLocation:
    return PageLocation(("MEM", "SSD", "HDD")[n % 3], n, "/r", n * 128, 100 + n, n * 7 + 1, n + 1)


def test_files_published_at_their_locations_are_the_files_published_by_fields():
    paths = [f"/p/{i}" for i in range(300)]
    by_fields, by_location = FileTableWriter(1024), FileTableWriter(1024)
    assert by_fields.publish_many(entry(p, i) for i, p in enumerate(paths)) == 300
    locations = [located(i) for i in range(len(paths))]
    assert by_location.publish_located(paths, locations, [FRESH] * len(paths)) == 300
    assert slot_bytes(by_location) == slot_bytes(by_fields)
    assert reader(by_location).lookup_many(paths) == reader(by_fields).lookup_many(paths)
    bad = [
        ("/big", PageLocation("MEM", 0, "/r", 0, 1 << 32, 0, 1), FRESH),
        ("/gen", PageLocation("MEM", 0, "/r", 0, 1, 0, 1 << 32), FRESH),
        ("/stale", PageLocation("MEM", 0, "/r", 0, 1, 0, 1), 0),
    ]
    assert by_location.publish_located(*map(list, zip(*bad, strict=True))) == 0
    # Among files that fit, those that do not are left out.
    mixed = [("/ok", located(7), FRESH), *bad, ("/ok2", located(8), FRESH)]
    assert by_location.publish_located(*map(list, zip(*mixed, strict=True))) == 2
    assert reader(by_location).lookup_many(["/ok", "/ok2"]) == reader(by_fields).lookup_many(
        [paths[7], paths[8]]
    )
    assert reader(by_location).lookup_many([b[0] for b in bad]) == [None] * 3
