"""The native steps of a batch put (``engine/_batch.pyx``) against what they stand for."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.engine import _batch, _crc
from shoal.engine._regions import PageLocation

_PAGE = struct.Struct("<BIQQQIB")  # as the page store packs a page record


class Region:
    """What the steps read of a region: its number, generation, path, file, fill."""

    def __init__(self, number: int, fill: int = 0):
        self.number, self.generation, self.path = number, 2**40 + number, f"/r/{number}"
        self.fd, self.fill = 100 + number, fill


@st.composite
def pages(draw):
    """Pages reserved as a store reserves them: runs in regions, each page at or after the
    end of the one before (a gap at times), some of them long."""
    regions = [Region(n) for n in range(draw(st.integers(1, 3)))]
    prepared, reserved, at = [], [], {}
    for i in range(draw(st.integers(0, 40))):
        region = draw(st.sampled_from(regions))
        length = draw(st.sampled_from([1, 7, 64, 100, 700, 5000]))
        offset = at.get(region.number, 0) + draw(st.sampled_from([0, 0, 0, 3, 64, 4096]))
        data = bytes([i % 251 + 1]) * length
        prepared.append((b"k%04d" % i, memoryview(data), _crc.crc32c(data)))
        reserved.append((region, offset))
        at[region.number] = offset + length
    return prepared, reserved


def _files(writes):
    """The bytes each region's file holds after ``writes``, by file descriptor."""
    files: dict[int, bytearray] = {}
    for fd, offset, length, buf, _ in writes:
        f = files.setdefault(fd, bytearray())
        f.extend(b"\0" * max(0, offset + length - len(f)))
        f[offset : offset + length] = bytes(buf)[:length]
    return files


@settings(max_examples=300, deadline=None)
@given(batch=pages(), small=st.sampled_from([1, 64, 4096]), align=st.sampled_from([64, 4096]))
def test_coalesced_writes_put_every_page_at_its_place(batch, small, align):
    prepared, reserved = batch
    writes = _batch.coalesced(prepared, reserved, small, align)
    files = _files(writes)
    for (_, view, _), (region, offset) in zip(prepared, reserved, strict=True):
        assert files[region.fd][offset : offset + view.nbytes] == view
    # Short pages close together went in one write; long ones each in their own.
    assert len(writes) <= len(prepared)
    assert sum(1 for *_, buf, _ in writes if isinstance(buf, memoryview)) == sum(
        1 for _, view, _ in prepared if view.nbytes >= small
    )
    for _, _, length, buf, flags in writes:
        assert len(buf) == length and flags == 0


def test_coalesced_writes_pages_out_of_order_apart_and_refuses_a_short_list():
    region = Region(0)
    a, b = memoryview(b"a" * 10), memoryview(b"b" * 10)
    writes = _batch.coalesced([(b"a", a, 0), (b"b", b, 0)], [(region, 20), (region, 5)], 64, 64)
    assert [(offset, bytes(buf)) for _, offset, _, buf, _ in writes] == [(20, a), (5, b)]
    with pytest.raises(ValueError, match="2 pages, 1 places"):
        _batch.coalesced([(b"a", a, 0), (b"b", b, 0)], [(region, 0)], 64, 64)


@settings(max_examples=300, deadline=None)
@given(
    fill=st.integers(0, 10_000),
    lengths=st.lists(st.integers(1, 9000), max_size=30),
    first=st.integers(0, 5),
    small=st.sampled_from([1, 8, 64]),
    pack_below=st.sampled_from([1, 512, 4096]),
)
def test_place_reserves_as_many_as_fit_each_aligned(fill, lengths, first, small, pack_below):
    page_align, region_size = 4096, 32_768
    first = min(first, len(lengths))
    region, reserved = Region(0, fill), []
    fit, end = _batch.place(
        region, lengths, first, small, pack_below, page_align, region_size, reserved
    )
    # As the page store reserved them one by one before.
    expected, at = [], fill
    for length in lengths[first:]:
        align = small if length < pack_below else page_align
        offset = -(-at // align) * align
        if offset + length > region_size:
            break
        expected.append((region, offset))
        at = offset + length
    assert reserved == expected and fit == len(expected) and end == at


@settings(max_examples=200, deadline=None)
@given(batch=pages(), flags=st.integers(0, 3), code=st.integers(0, 2))
def test_page_records_are_those_the_store_packs(batch, flags, code):
    prepared, reserved = batch
    puts, new, located = _batch.page_records(
        prepared, reserved, code, flags, "MEM", b"\x01", PageLocation
    )
    for (k, view, crc), (region, offset), put, item, loc in zip(
        prepared, reserved, puts, new, located, strict=True
    ):
        record = _PAGE.pack(code, region.number, region.generation, offset, view.nbytes, crc, flags)
        assert put == (b"\x01" + k, record)
        assert item == (k, record, region, view.nbytes)
        assert loc == PageLocation(
            "MEM", region.number, region.path, offset, view.nbytes, crc, region.generation
        )


@settings(max_examples=200, deadline=None)
@given(batch=pages(), before=st.sets(st.integers(0, 40)))
def test_index_pages_maps_keys_and_tells_runs_and_replaced_records(batch, before):
    prepared, reserved = batch
    _, new, _ = _batch.page_records(prepared, reserved, 0, 0, "MEM", b"\x01", PageLocation)
    entries = {b"k%04d" % i: b"old%d" % i for i in before}
    old = dict(entries)
    replaced, runs = _batch.index_pages(new, entries)
    assert replaced == [old[k] for k, *_ in new if k in old]
    assert entries == {**old, **{k: record for k, record, _, _ in new}}
    # Runs: consecutive pages of one region, in order, with their bytes.
    assert [k for _, keys, _ in runs for k in keys] == [k for k, *_ in new]
    for (region, keys, nbytes), after in zip(runs, [*runs[1:], None][: len(runs)], strict=True):
        mine = [item for item in new if item[0] in keys]
        assert all(item[2] is region for item in mine)
        assert nbytes == sum(item[3] for item in mine)
        assert after is None or after[0] is not region


def test_prepared_takes_the_common_case_and_leaves_every_other_to_the_checks():
    data = memoryview(bytearray(b"abcdefgh"))
    got = _batch.prepared([(b"k1", data), (b"k2", data[2:5])], 64)
    assert got == [(b"k1", data, _crc.crc32c(data)), (b"k2", data[2:5], _crc.crc32c(b"cde"))]
    assert got[0][1] is data  # the caller's own view, not a copy
    assert _batch.prepared([], 64) == []
    others = [
        [("k", data)],  # a str key
        [(b"", data)],  # an empty key
        [(b"k", b"bytes")],  # not a memoryview
        [(b"k", data[::2])],  # not contiguous
        [(b"k", memoryview(bytearray(8)).cast("B", (2, 4)))],  # two dimensions
        [(b"k", memoryview(bytearray(8)).cast("i"))],  # not bytes
        [(b"k", data)] * 2 + [(b"big", memoryview(bytearray(65)))],  # larger than a region
        [[b"k", data]],  # not a tuple
        [(b"k", data, 0)],  # not a pair
    ]
    for items in others:
        assert _batch.prepared(items, 64) is None, items
