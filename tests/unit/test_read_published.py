"""The native read of whole small files through the table of published files
(``engine._slots.read_published``, by ``FileTableReader.read_many``): every page checked
(region generation before and after, crc32c), every item it cannot take whole left to the
caller's own checks, from the first such item on."""

from __future__ import annotations

import mmap
import os
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.control._filetable import FileTableReader, FileTableWriter
from shoal.engine import crc32c

REGION = 5  # the region the files are in (tier code 0)
GEN = 7
CODE = REGION  # tier code 0 << 32 | region
FRESH = time.monotonic_ns() + 3600 * 10**9


class Store:
    """A table of ``count`` published files (``/d/fNNN``, 1 to 300 bytes) packed in one
    region buffer, with a generation table, as a client maps them."""

    def __init__(self, count: int = 40, seed: int = 3):
        rng = np.random.default_rng(seed)
        self.files: dict[str, bytes] = {}
        self.region = bytearray()
        self.writer = FileTableWriter(1024)
        entries = []
        for i in range(count):
            data = rng.integers(0, 256, int(rng.integers(1, 300)), dtype=np.uint8).tobytes()
            path = f"/d/f{i:03d}"
            entries.append((path, len(data), 0, REGION, len(self.region), crc32c(data), GEN,
                            FRESH))  # fmt: skip
            self.region += data + bytes(-len(data) % 64)
            self.files[path] = data
        assert self.writer.publish_many(entries) == count
        self.gens = bytearray(8 * 16)
        self.gens[8 * REGION : 8 * REGION + 8] = GEN.to_bytes(8, "little")
        self.maps = {CODE: self.region}
        self.reader = FileTableReader(self.writer.reader_fd())

    def read(self, items, out=None, limit=None, maps=None, gens=None):
        out = [None] * len(items) if out is None else out
        maps = self.maps if maps is None else maps
        gens = self.gens if gens is None else gens
        counts, lacking = {}, set()
        stop = self.reader.read_many(
            items,
            out,
            len(items) if limit is None else limit,
            (
                self.maps if maps is None else maps,
                [self.gens if gens is None else gens, None, None],
            ),
            counts,
            lacking,
        )
        return stop, out, counts, lacking

    def close(self):
        self.reader.close()
        self.writer.close()


@pytest.fixture
def store():
    s = Store()
    yield s
    s.close()


def test_whole_files_are_read_checked_and_counted(store):
    paths = list(store.files)
    bufs = [bytearray(len(store.files[p]) + 5) for p in paths]
    items = [
        (b, p) if i % 2 else [b, p, 0] for i, (b, p) in enumerate(zip(bufs, paths, strict=True))
    ]
    stop, out, counts, lacking = store.read(items)
    assert stop == len(items) and not lacking
    assert out == [len(store.files[p]) for p in paths]
    assert counts == {CODE: len(paths)}
    for b, p in zip(bufs, paths, strict=True):
        assert bytes(b[: len(store.files[p])]) == store.files[p]


def test_numpy_and_memoryview_destinations(store):
    data = store.files["/d/f001"]
    arr = np.zeros(512, dtype=np.float32)  # any dtype: its bytes are the destination
    view = memoryview(bytearray(400))
    stop, out, _, _ = store.read([(arr, "/d/f001"), (view, "/d/f001")])
    assert stop == 2 and out == [len(data), len(data)]
    assert arr.tobytes()[: len(data)] == data and bytes(view[: len(data)]) == data


def test_what_is_not_read_whole_is_left(store):
    data = store.files["/d/f002"]
    items = [
        (bytearray(len(data) - 1), "/d/f002"),  # part of the page: the caller checks all
        (bytearray(10), "/d/f002", 1),  # the same
        (bytearray(10), "/d/f002", len(data)),  # at the end: nothing to read
        (bytearray(10), "/d/f002", len(data) + 9),
        (bytearray(400), "/d/absent"),  # not in the table
        (bytearray(400), "/d/f002", 0),
    ]
    stop, out, counts, _ = store.read(items)
    assert stop == len(items)
    assert out == [None, None, 0, 0, None, len(data)]
    assert counts == {CODE: 1}


def test_a_reclaimed_region_a_bad_page_or_an_old_slot_is_never_served(store):
    data = store.files["/d/f003"]
    item = [(bytearray(400), "/d/f003")]
    store.gens[8 * REGION] = GEN + 1  # the region was reclaimed since
    assert store.read(item)[1] == [None]
    store.gens[8 * REGION] = GEN
    at = store.region.find(data)
    store.region[at] ^= 0xFF  # its bytes no longer match their crc32c
    assert store.read(item)[1] == [None]
    store.region[at] ^= 0xFF
    assert store.read(item)[1] == [len(data)]
    assert store.read(item, gens=bytearray(8 * REGION))[1] == [None]  # no such region yet
    old = Store(count=4)
    try:
        old.writer.publish_many([("/d/f000", 5, 0, REGION, 0, 1, GEN, time.monotonic_ns())])
        assert old.read([(bytearray(400), "/d/f000")])[1] == [None]  # its time is past
        old.writer.publish_many([("/d/f000", 5, 1, REGION, 0, 1, GEN, FRESH)])
        ssd = 1 << 32 | REGION  # no generation table of tier 1: asked for
        _, out, _, lacking = old.read([(bytearray(400), "/d/f000")], maps={ssd: old.region})
        assert out == [None] and lacking == {ssd}
    finally:
        old.close()


def test_regions_not_mapped_or_mapped_short_are_asked_for(store):
    items = [(bytearray(400), p) for p in store.files]
    stop, out, counts, lacking = store.read(items, maps={})
    assert stop == len(items) and out == [None] * len(items)
    assert lacking == {CODE} and counts == {}
    first = len(store.files["/d/f000"])
    short = {CODE: store.region[: first + 1]}  # mapped before the region file grew
    stop, out, counts, lacking = store.read(items, maps=short)
    assert lacking == {CODE} and out == [first] + [None] * (len(items) - 1)
    assert counts == {CODE: 1}


def test_region_files_on_a_disk_are_read_with_pread(store, tmp_path):
    path = tmp_path / "region"
    path.write_bytes(bytes(store.region))
    fd = os.open(path, os.O_RDONLY)
    try:
        paths = list(store.files)
        items = [(bytearray(400), p) for p in paths]
        stop, out, counts, lacking = store.read(items, maps={CODE: fd})
        assert stop == len(items) and not lacking
        assert out == [len(store.files[p]) for p in paths] and counts == {CODE: len(paths)}
        for (buf, p), n in zip(items, out, strict=True):
            assert bytes(buf[:n]) == store.files[p]
        store.gens[8 * REGION] = GEN + 1  # reclaimed: not served
        assert store.read(items[:1], maps={CODE: fd})[1] == [None]
        store.gens[8 * REGION] = GEN
        os.truncate(path, 64)  # cut short under the reader: a short read, left
        assert store.read(items[1:2], maps={CODE: fd})[1] == [None]
        path.write_bytes(bytes(len(store.region)))  # other bytes: their crc32c fails
        assert store.read(items[:3], maps={CODE: fd})[1] == [None] * 3
    finally:
        os.close(fd)
    assert store.read(items[:1], maps={CODE: fd})[1] == [None]  # a closed descriptor


def test_only_the_items_still_none_before_the_limit_are_read(store):
    items = [(bytearray(400), p) for p in list(store.files)[:6]]
    out = [None, 123, None, None, None, None]
    stop, out, counts, _ = store.read(items, out=out, limit=3)
    assert stop == 3
    assert out[1] == 123 and out[0] and out[2] and out[3:] == [None, None, None]
    assert counts == {CODE: 2}
    assert bytes(items[1][0]) == bytes(400)


class CudaLike(bytearray):
    """Host memory that also says it is a CUDA array: the caller refuses it."""

    __cuda_array_interface__ = {"shape": (1,), "typestr": "|u1", "data": (0, False)}


BAD = [
    ("read-only buffer", lambda p: (bytes(400), p)),
    ("not a buffer", lambda p: ("text", p)),
    ("GPU buffer", lambda p: (CudaLike(400), p)),
    ("relative path", lambda p: (bytearray(400), p[1:])),
    ("empty component", lambda p: (bytearray(400), p.replace("/", "//", 1))),
    ("dot component", lambda p: (bytearray(400), "/d/./" + p[3:])),
    ("trailing slash", lambda p: (bytearray(400), p + "/")),
    ("non-ASCII path", lambda p: (bytearray(400), p + "é")),
    ("NUL", lambda p: (bytearray(400), p + "\0")),
    ("bytes path", lambda p: (bytearray(400), p.encode())),
    ("bool offset", lambda p: (bytearray(400), p, False)),
    ("float offset", lambda p: (bytearray(400), p, 0.0)),
    ("negative offset", lambda p: (bytearray(400), p, -1)),
    ("huge offset", lambda p: (bytearray(400), p, 1 << 70)),
    ("one field", lambda p: (bytearray(400),)),
    ("four fields", lambda p: (bytearray(400), p, 0, 0)),
    ("not a sequence", lambda p: p),
]


@pytest.mark.parametrize("make", [m for _, m in BAD], ids=[name for name, _ in BAD])
def test_items_it_cannot_take_whole_end_its_part(store, make):
    paths = list(store.files)
    items = [(bytearray(400), p) for p in paths[:3]] + [make(paths[3])]
    items += [(bytearray(400), p) for p in paths[4:6]]
    stop, out, _, _ = store.read(items)
    assert stop == 3
    assert out[:3] == [len(store.files[p]) for p in paths[:3]] and out[3:] == [None] * 3
    assert all(bytes(buf) == bytes(400) for buf, _ in items[4:])


def test_bad_arguments_are_refused(store):
    with pytest.raises(ValueError, match="out too short"):
        store.read([(bytearray(4), "/d/f000")], out=[])
    with pytest.raises(ValueError, match="one generation table a tier"):
        store.reader.read_many([], [], 0, ({}, [None]), {}, set())


def test_a_region_file_cut_short_under_its_mapping_fails_the_read_only(store):
    fd = os.memfd_create("region")
    try:
        os.write(fd, bytes(store.region))
        mapped = mmap.mmap(fd, len(store.region), prot=mmap.PROT_READ)
        os.ftruncate(fd, 0)  # reading the mapping now raises SIGBUS
        items = [(bytearray(400), p) for p in store.files]
        stop, out, counts, _ = store.read(items, maps={CODE: mapped})
        assert stop == len(items) and out == [None] * len(items) and counts == {}
        mapped.close()
    finally:
        os.close(fd)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("file"), st.integers(0, 39), st.integers(-5, 400)),
            st.tuples(st.just("absent"), st.integers(0, 9), st.just(0)),
            st.tuples(st.just("bad"), st.integers(0, len(BAD) - 1), st.just(0)),
        ),
        max_size=40,
    )
)
def test_any_batch_reads_what_a_model_says(kinds):
    store = Store()
    try:
        paths = list(store.files)
        items, want = [], []
        for kind, k, extra in kinds:
            if kind == "file":
                data = store.files[paths[k]]
                cap = max(0, len(data) + extra)  # shorter, as long or longer than the file
                items.append((bytearray(cap), paths[k]))
                want.append(len(data) if cap >= len(data) else None)
            elif kind == "absent":
                items.append((bytearray(8), f"/d/none{k}"))
                want.append(None)
            else:
                items.append(BAD[k][1](paths[0]))
                want.append("stop")
        first_bad = want.index("stop") if "stop" in want else len(items)
        stop, out, counts, _ = store.read(items)
        assert stop == first_bad
        assert out == want[:first_bad] + [None] * (len(items) - first_bad)
        assert counts == ({CODE: sum(n is not None for n in out)} if any(out) else {})
        for (buf, path, *_), n in zip(items[:first_bad], out, strict=False):
            if n:
                assert bytes(buf[:n]) == store.files[path]
    finally:
        store.close()
