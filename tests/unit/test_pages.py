"""Page arithmetic: ranges to pages and buffer slices, file identity, page keys."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from shoal.control._pages import (
    MAX_PAGES,
    PageSlice,
    chunk_of,
    file_id,
    file_ids,
    page_count,
    page_key,
    page_length,
    page_slices,
    read_length,
)
from shoal.control.ufs import ObjectInfo

PAGE_SIZES = st.sampled_from([1, 7, 4096, 65536, 4 << 20])
HUGE = 1 << 62


@settings(max_examples=300, deadline=None)
@given(
    page_size=PAGE_SIZES,
    size=st.integers(0, 1 << 40),
    offset=st.integers(0, HUGE),
    length=st.integers(0, 1 << 30),
)
@example(page_size=4096, size=0, offset=0, length=100)
@example(page_size=4096, size=4096, offset=4096, length=1)
@example(page_size=4096, size=4097, offset=4095, length=2)
@example(page_size=1, size=3, offset=0, length=3)
def test_slices_cover_exactly_the_bytes_read(page_size, size, offset, length):
    size = min(size, MAX_PAGES * page_size)
    length = min(length, 5_000 * page_size)  # keep the slice list small enough to check
    slices = page_slices(offset, length, size, page_size)
    n = read_length(offset, length, size)
    assert n == max(0, min(length, size - offset))
    assert sum(s.length for s in slices) == n
    pos, buf = offset, 0
    for s in slices:
        assert isinstance(s, PageSlice)
        assert s.length > 0
        assert s.index * page_size + s.start == pos  # contiguous in the file
        assert s.buf_offset == buf  # contiguous in the buffer
        assert 0 <= s.start < page_size
        assert s.start + s.length <= page_length(s.index, size, page_size)
        pos += s.length
        buf += s.length
    if slices:
        first = slices[0].index
        assert [s.index for s in slices] == list(range(first, first + len(slices)))
    # Every slice but the first starts a page; every one but the last ends one.
    for s in slices[1:]:
        assert s.start == 0
    for s in slices[:-1]:
        assert s.start + s.length == page_length(s.index, size, page_size)


@settings(max_examples=200, deadline=None)
@given(page_size=PAGE_SIZES, size=st.integers(0, 1 << 40))
def test_pages_partition_the_file(page_size, size):
    size = min(size, MAX_PAGES * page_size)
    count = page_count(size, page_size)
    assert count == -(-size // page_size)
    if count:
        last = page_length(count - 1, size, page_size)
        assert 0 < last <= page_size
        assert (count - 1) * page_size + last == size
        assert page_length(0, size, page_size) == min(size, page_size)
    with pytest.raises(ValueError, match="past the end"):
        page_length(count, size, page_size)


def test_empty_file_and_reads_past_the_end():
    assert page_count(0, 4096) == 0
    assert page_slices(0, 10, 0, 4096) == []
    assert page_slices(5000, 10, 4096, 4096) == []
    assert page_slices(0, 0, 4096, 4096) == []
    assert page_slices(HUGE, 10, 100, 4096) == []
    assert read_length(HUGE, 10, 100) == 0


def test_small_file_is_one_page():
    assert page_slices(0, 1 << 20, 1000, 4 << 20) == [PageSlice(0, 0, 1000, 0)]
    assert page_slices(10, 5, 1000, 4 << 20) == [PageSlice(0, 10, 5, 0)]


def test_range_across_pages():
    assert page_slices(4000, 200, 10_000, 4096) == [
        PageSlice(0, 4000, 96, 0),
        PageSlice(1, 0, 104, 96),
    ]


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: page_slices(-1, 10, 100, 4096), ValueError, "offset"),
        (lambda: page_slices(0, -1, 100, 4096), ValueError, "length"),
        (lambda: page_slices(0, 1, -5, 4096), ValueError, "size"),
        (lambda: page_slices(0, 1, 100, 0), ValueError, "page_size"),
        (lambda: page_slices(0.5, 1, 100, 4096), TypeError, "offset"),
        (lambda: page_slices(True, 1, 100, 4096), TypeError, "offset"),
        (lambda: page_count(MAX_PAGES * 4096 + 1, 4096), ValueError, "at most"),
        (lambda: page_slices(0, 1, MAX_PAGES * 2, 1), ValueError, "at most"),
        (lambda: chunk_of(3, 4096, 4096 * 3 + 1), ValueError, "multiple"),
        (lambda: chunk_of(-1, 4096, 8192), ValueError, "page index"),
        (lambda: page_key(b"short", 0), ValueError, "16 bytes"),
        (lambda: page_key(bytes(16), MAX_PAGES), ValueError, "does not fit"),
        (lambda: file_id("", "v"), ValueError, "uri"),
        (lambda: file_id("s3://b/k", None), TypeError, "version"),
    ],
)
def test_bad_arguments(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@settings(max_examples=100, deadline=None)
@given(index=st.integers(0, 1 << 40), pages_per_chunk=st.integers(1, 64))
def test_chunk_of(index, pages_per_chunk):
    page_size = 4096
    chunk = chunk_of(index, page_size, page_size * pages_per_chunk)
    assert chunk * pages_per_chunk <= index < (chunk + 1) * pages_per_chunk


def test_file_identity_changes_with_version_and_uri():
    a = file_id("s3://bucket/x", "etag1")
    assert len(a) == 16
    assert a == file_id("s3://bucket/x", "etag1")
    assert a != file_id("s3://bucket/x", "etag2")
    assert a != file_id("s3://bucket/y", "etag1")
    # The separator keeps (uri, version) pairs apart that concatenate alike.
    assert file_id("s3://b/x1", "2") != file_id("s3://b/x", "12")


@settings(max_examples=100, deadline=None)
@given(index=st.integers(0, MAX_PAGES - 1))
def test_page_keys_are_distinct_and_ordered(index):
    fid = file_id("file:///data/f", "1-2")
    key = page_key(fid, index)
    assert len(key) == 20 and key[:16] == fid
    assert int.from_bytes(key[16:], "big") == index
    if index:
        assert page_key(fid, index - 1) < key


@given(
    base=st.text(min_size=1).map(lambda s: "file:///" + s.strip("/") + "/"),
    objects=st.lists(st.tuples(st.text(min_size=1), st.text()), max_size=8),
)
@example(base="file:///d\udcff/", objects=[("é\udc80" * 200, "v\udcfe"), ("", "")])
def test_file_ids_of_a_listing_are_each_files_file_id(base, objects):
    infos = [ObjectInfo(path, 1, version, 0.0) for path, version in objects]
    assert file_ids(base, infos) == [file_id(base + i.path, i.version) for i in infos]
