"""File records kept with the page index: packed natively, read back as they were written,
whatever bytes the file system gave a name in."""

from __future__ import annotations

import time

import msgpack
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from shoal.control._filerecords import decode_record, encode_record, encode_records
from shoal.control.ufs import ObjectInfo
from shoal.engine import _batch

# Names as a local store gives them: any text, and bytes that are not UTF-8 decoded with
# surrogateescape (lone surrogates U+DC80 to U+DCFF).
names = st.text(
    st.one_of(
        st.characters(exclude_categories=["Cs"]),
        st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF),
    )
)
values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(),
    names,
    st.binary(max_size=300),
    st.sampled_from(["x" * 31, "x" * 32, "y" * 300, "z" * 70_000, b"b" * 70_000]),
)


@settings(max_examples=300, deadline=None)
@given(rows=st.lists(st.tuples(*[values] * 3) | st.lists(values, max_size=20).map(tuple)))
@example(rows=[tuple(range(-40, 40, 3)), (2**32, -(2**31) - 1, -(2**15) - 1, 65535, 65536)])
def test_pack_rows_packs_as_msgpack_does(rows):
    packer = msgpack.Packer(unicode_errors="surrogateescape")
    assert _batch.pack_rows(rows) == [packer.pack(list(row)) for row in rows]


def test_pack_rows_refuses_what_it_cannot_pack():
    with pytest.raises(TypeError, match="cannot pack list"):
        _batch.pack_rows([(1, [2])])
    with pytest.raises(OverflowError):
        _batch.pack_rows([(2**64,)])
    with pytest.raises(TypeError):
        _batch.pack_rows([[1, 2]])


@settings(max_examples=200, deadline=None)
@given(
    uri=names.map(lambda s: "file:///" + s),
    path=names,
    version=names,
    size=st.integers(0, 2**63),
    mtime=st.floats(0, 4e9),
    left=st.floats(1, 1e9),
)
@example(uri="file:///d/bad\udcff", path="bad\udcff", version="1-2", size=0, mtime=0.0, left=1.0)
def test_a_record_reads_back_as_it_was_written(uri, path, version, size, mtime, left):
    info = ObjectInfo(path, size, version, mtime)
    before = time.time()
    (value,) = encode_records([(uri, info, left)])
    after = time.time()
    record = decode_record(value)
    assert record is not None
    assert (record.uri, record.info) == (uri, info)
    assert before + left <= record.expires <= after + left
    assert decode_record(encode_record(uri, info, left)).info == info


def test_records_of_another_format_or_malformed_are_none():
    good = encode_record("file:///a", ObjectInfo("a", 1, "1-1", 0.0), 5.0)
    assert decode_record(good) is not None
    assert decode_record(good[:-3]) is None
    assert decode_record(msgpack.packb([2, "file:///a", "a", "1-1", 1, 0.0, 5.0])) is None
    assert decode_record(msgpack.packb([1, "file:///a", "a", "1-1", -1, 0.0, 5.0])) is None
    assert decode_record(b"\xc1") is None
