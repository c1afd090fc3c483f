"""The engine's contract, run against every backend: reads, writes, small files, crc32c."""

from __future__ import annotations

import errno
import os
import signal
import threading
import warnings
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from shoal import engine
from shoal.engine import PageCorruptedError, _crc, _engine
from shoal.engine._requests import ALIGN

BACKENDS = ["threads", "io_uring"]
FILE_SIZES = [0, 1, 4095, 4096, 5000, 3 * 4096 + 17, 70_000, 300_000]
SENTINEL = 0xA5

settings.register_profile(
    "engine", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
ENGINE_SETTINGS = settings.get_profile("engine")


@pytest.fixture(scope="module", params=BACKENDS)
def eng(request):
    if request.param == "io_uring" and not _engine.io_uring_available():
        pytest.skip("io_uring is not available in this process")
    return engine.get_backend(request.param)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("engine")


@pytest.fixture(scope="module")
def files(data_dir):
    """Open read-only descriptors of files of FILE_SIZES random bytes, with their contents."""
    rng = np.random.default_rng(7)
    out = []
    for i, size in enumerate(FILE_SIZES):
        data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        path = data_dir / f"f{i}"
        path.write_bytes(data)
        out.append((os.open(path, os.O_RDONLY), data, path))
    yield out
    for fd, _, _ in out:
        os.close(fd)


def aligned_array(nbytes: int, fill: int = SENTINEL) -> np.ndarray:
    """A uint8 array of nbytes whose first byte sits on a 4 KiB boundary."""
    raw = np.full(nbytes + ALIGN, fill, dtype=np.uint8)
    start = -raw.ctypes.data % ALIGN
    return raw[start : start + nbytes]


def make_buffer(kind: str, nbytes: int):
    if kind == "bytearray":
        return bytearray([SENTINEL]) * nbytes
    if kind == "numpy":
        return np.full(nbytes, SENTINEL, dtype=np.uint8)
    if kind == "aligned":
        return aligned_array(nbytes)
    if kind == "memoryview":
        return memoryview(bytearray([SENTINEL]) * nbytes)
    if kind == "torch":
        return torch.full((nbytes,), SENTINEL, dtype=torch.uint8)
    raise AssertionError(kind)


def as_bytes(buf) -> bytes:
    if isinstance(buf, torch.Tensor):
        return buf.numpy().tobytes()
    return bytes(buf)


# ---- reads -------------------------------------------------------------------------------


read_request = st.tuples(
    st.integers(0, len(FILE_SIZES) - 1),  # file
    st.integers(0, 310_000),  # file offset, often past end of file
    st.one_of(st.integers(0, 9000), st.integers(0, 120_000)),  # length
    st.sampled_from(["bytearray", "numpy", "aligned", "memoryview", "torch"]),
    st.integers(0, 5000),  # buffer offset
    st.integers(0, 300),  # spare bytes after the range
)


@ENGINE_SETTINGS
@given(
    reqs=st.lists(read_request, max_size=12),
    direct=st.booleans(),
    verify=st.booleans(),
)
def test_read_batch_matches_reference(eng, files, reqs, direct, verify):
    requests, checksums, expect = [], [], []
    for fidx, offset, length, kind, buf_offset, spare in reqs:
        fd, data, _ = files[fidx]
        buf = make_buffer(kind, buf_offset + length + spare)
        requests.append((fd, offset, length, buf, buf_offset))
        want = data[offset : offset + length]
        expect.append(want)
        checksums.append(engine.crc32c(want) if verify else None)
    got = engine.read_batch(
        requests, direct=direct, checksums=checksums if verify else None, engine=eng
    )
    assert got == [len(w) for w in expect]
    for (_, _, _, buf, buf_offset), want in zip(requests, expect, strict=True):
        raw = as_bytes(buf)
        assert raw[buf_offset : buf_offset + len(want)] == want
        # Nothing outside the bytes read is touched.
        assert set(raw[:buf_offset]) <= {SENTINEL}
        assert set(raw[buf_offset + len(want) :]) <= {SENTINEL}


def test_read_counts_at_and_past_end_of_file(eng, files):
    fd, data, _ = files[FILE_SIZES.index(5000)]
    bufs = [bytearray(100) for _ in range(4)]
    reqs = [(fd, 4950, 100, bufs[0], 0), (fd, 5000, 100, bufs[1], 0)]
    reqs += [(fd, 10**9, 100, bufs[2], 0), (fd, 0, 0, bufs[3], 0)]
    assert engine.read_batch(reqs, engine=eng) == [50, 0, 0, 0]
    assert bytes(bufs[0][:50]) == data[4950:]


def test_empty_batch(eng):
    assert engine.read_batch([], engine=eng) == []
    assert engine.write_batch([], engine=eng) == []
    assert engine.read_files([], [], engine=eng) == []


def test_batch_larger_than_the_ring(eng, files):
    fd, data, _ = files[FILE_SIZES.index(300_000)]
    n = 1500  # several rings' worth of requests
    dest = np.zeros(n * 64, dtype=np.uint8)
    offsets = [(i * 7919) % (len(data) - 64) for i in range(n)]
    reqs = [(fd, off, 64, dest, i * 64) for i, off in enumerate(offsets)]
    assert engine.read_batch(reqs, engine=eng) == [64] * n
    want = b"".join(data[off : off + 64] for off in offsets)
    assert dest.tobytes() == want


def test_one_request_spans_many_chunks(eng, data_dir):
    # A request bigger than a single kernel read (about 2 GiB) would be cut; 64 MiB shows
    # a big request arrives whole.
    path = data_dir / "big"
    data = np.random.default_rng(1).integers(0, 256, 64 << 20, dtype=np.uint8)
    data.tofile(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        dest = np.empty_like(data)
        assert engine.read_batch([(fd, 0, data.nbytes, dest, 0)], engine=eng) == [data.nbytes]
        assert np.array_equal(dest, data)
    finally:
        os.close(fd)
        path.unlink()


def test_other_dtypes_are_filled_bytewise(eng, files):
    fd, data, _ = files[FILE_SIZES.index(70_000)]
    dest = np.zeros(100, dtype=np.float32)
    tens = torch.zeros(50, dtype=torch.int64)
    assert engine.read_batch([(fd, 8, 400, dest, 0), (fd, 0, 400, tens, 0)], engine=eng) == [
        400,
        400,
    ]
    assert dest.tobytes() == data[8:408]
    assert tens.numpy().tobytes() == data[:400]


# ---- O_DIRECT ----------------------------------------------------------------------------


def test_direct_aligned_and_unaligned_mix(eng, data_dir):
    size = 64 * ALIGN + 1000  # a tail that is not a whole block
    data = os.urandom(size)
    path = data_dir / "direct"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        dest = aligned_array(32 * ALIGN)
        reqs = [
            (fd, 0, 4 * ALIGN, dest, 0),  # aligned: O_DIRECT
            (fd, 8 * ALIGN, 2 * ALIGN, dest, 4 * ALIGN),  # aligned
            (fd, 100, 3000, dest, 6 * ALIGN),  # unaligned offset and length
            (fd, ALIGN, ALIGN, dest, 7 * ALIGN + 1),  # unaligned address
            (fd, 63 * ALIGN, 2 * ALIGN, dest, 10 * ALIGN),  # aligned, crosses end of file
            (fd, 80 * ALIGN, ALIGN, dest, 12 * ALIGN),  # aligned, past end of file
        ]
        got = engine.read_batch(reqs, direct=True, engine=eng)
        assert got == [4 * ALIGN, 2 * ALIGN, 3000, ALIGN, ALIGN + 1000, 0]
        raw = dest.tobytes()
        assert raw[: 4 * ALIGN] == data[: 4 * ALIGN]
        assert raw[4 * ALIGN : 6 * ALIGN] == data[8 * ALIGN : 10 * ALIGN]
        assert raw[6 * ALIGN : 6 * ALIGN + 3000] == data[100:3100]
        assert raw[7 * ALIGN + 1 : 8 * ALIGN + 1] == data[ALIGN : 2 * ALIGN]
        assert raw[10 * ALIGN : 11 * ALIGN + 1000] == data[63 * ALIGN :]
    finally:
        os.close(fd)


def test_direct_sees_data_still_in_the_page_cache(eng, data_dir):
    # O_DIRECT reads must see writes not yet flushed to disk.
    path = data_dir / "dirty"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    try:
        data = os.urandom(8 * ALIGN)
        engine.write_batch([(fd, 0, len(data), data, 0)], engine=eng)
        dest = aligned_array(len(data))
        assert engine.read_batch([(fd, 0, len(data), dest, 0)], direct=True, engine=eng) == [
            len(data)
        ]
        assert dest.tobytes() == data
    finally:
        os.close(fd)


def test_direct_on_a_file_system_without_it(eng):
    # tmpfs may refuse O_DIRECT; the read then goes through the page cache.
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm")
    fd = os.open("/dev/shm", os.O_RDWR | os.O_TMPFILE)
    try:
        data = os.urandom(2 * ALIGN)
        os.pwrite(fd, data, 0)
        dest = aligned_array(len(data))
        assert engine.read_batch([(fd, 0, len(data), dest, 0)], direct=True, engine=eng) == [
            len(data)
        ]
        assert dest.tobytes() == data
    finally:
        os.close(fd)


def test_direct_read_from_write_only_descriptor_fails(eng, data_dir):
    path = data_dir / "wronly"
    path.write_bytes(b"\0" * ALIGN)
    fd = os.open(path, os.O_WRONLY)
    try:
        with pytest.raises(OSError) as info:
            engine.read_batch([(fd, 0, ALIGN, aligned_array(ALIGN), 0)], direct=True, engine=eng)
        assert info.value.errno == errno.EBADF
        assert info.value.filename == str(path)
    finally:
        os.close(fd)


# ---- writes ------------------------------------------------------------------------------


@st.composite
def write_batches(draw):
    """Non-overlapping writes (their order within a batch is not defined)."""
    cuts = sorted(draw(st.lists(st.integers(0, 200_000), min_size=2, max_size=14, unique=True)))
    pieces = list(zip(cuts[:-1], cuts[1:], strict=True))
    chosen = [p for p in pieces if draw(st.booleans())]
    out = []
    for start, end in chosen:
        kind = draw(st.sampled_from(["bytes", "bytearray", "numpy", "memoryview", "torch"]))
        pad = draw(st.integers(0, 100))
        out.append((start, end - start, kind, pad))
    return out


@ENGINE_SETTINGS
@given(batches=st.lists(write_batches(), min_size=1, max_size=3), seed=st.integers(0, 2**32 - 1))
def test_writes_then_reads(eng, data_dir, batches, seed):
    rng = np.random.default_rng(seed)
    path = data_dir / "written"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    model = bytearray()
    try:
        for batch in batches:
            reqs = []
            for offset, length, kind, pad in batch:
                payload = rng.integers(0, 256, pad + length, dtype=np.uint8)
                src = {
                    "bytes": payload.tobytes(),
                    "bytearray": bytearray(payload.tobytes()),
                    "numpy": payload,
                    "memoryview": memoryview(payload.tobytes()),
                    "torch": torch.from_numpy(payload),
                }[kind]
                reqs.append((fd, offset, length, src, pad))
                if len(model) < offset + length:
                    model.extend(b"\0" * (offset + length - len(model)))
                model[offset : offset + length] = payload[pad:].tobytes()
            assert engine.write_batch(reqs, engine=eng) == [r[2] for r in reqs]
        assert os.fstat(fd).st_size == len(model)
        dest = bytearray(len(model) + 10)
        assert engine.read_batch([(fd, 0, len(dest), dest, 0)], engine=eng) == [len(model)]
        assert dest[: len(model)] == model
    finally:
        os.close(fd)


def test_write_to_read_only_descriptor_names_the_file(eng, files):
    fd, _, path = files[0]
    with pytest.raises(OSError) as info:
        engine.write_batch([(fd, 0, 3, b"abc", 0)], engine=eng)
    assert info.value.errno == errno.EBADF
    assert info.value.filename == str(path)


# ---- small files -------------------------------------------------------------------------


@ENGINE_SETTINGS
@given(
    sizes=st.lists(
        st.one_of(st.just(0), st.integers(0, 5000), st.integers(0, 200_000)), max_size=20
    ),
    extra=st.lists(st.integers(0, 3000), min_size=20, max_size=20),
    relative=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
@example(sizes=[0, 0, 1], extra=[0] * 20, relative=False, seed=0)
def test_read_files_matches_reference(eng, data_dir, sizes, extra, relative, seed):
    rng = np.random.default_rng(seed)
    folder = data_dir / "small"
    folder.mkdir(exist_ok=True)
    contents, paths, bufs = [], [], []
    for i, size in enumerate(sizes):
        data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        (folder / f"s{i}").write_bytes(data)
        contents.append(data)
        paths.append(f"s{i}" if relative else folder / f"s{i}")
        bufs.append(make_buffer(["bytearray", "numpy", "torch"][i % 3], size + extra[i]))
    dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY) if relative else None
    try:
        assert engine.read_files(paths, bufs, dir_fd=dir_fd, engine=eng) == sizes
    finally:
        if dir_fd is not None:
            os.close(dir_fd)
    for data, buf in zip(contents, bufs, strict=True):
        raw = as_bytes(buf)
        assert raw[: len(data)] == data
        assert set(raw[len(data) :]) <= {SENTINEL}


def test_read_files_many_more_than_in_flight(eng, data_dir):
    folder = data_dir / "many"
    folder.mkdir(exist_ok=True)
    n = 700
    for i in range(n):
        (folder / f"{i}").write_bytes(i.to_bytes(2, "little") * (i % 50))
    bufs = [bytearray(100) for _ in range(n)]
    paths = [str(folder / f"{i}").encode() for i in range(n)]
    assert engine.read_files(paths, bufs, engine=eng) == [2 * (i % 50) for i in range(n)]
    for i, buf in enumerate(bufs):
        assert bytes(buf[: 2 * (i % 50)]) == i.to_bytes(2, "little") * (i % 50)


def test_read_files_missing_file_is_named_and_others_are_read(eng, data_dir):
    (data_dir / "here").write_bytes(b"hello")
    bufs = [bytearray(10), bytearray(10), bytearray(10)]
    paths = [data_dir / "here", data_dir / "missing", data_dir / "here"]
    with pytest.raises(FileNotFoundError) as info:
        engine.read_files(paths, bufs, engine=eng)
    exc = info.value
    assert exc.errno == errno.ENOENT
    assert exc.filename == str(data_dir / "missing")
    assert exc.index == 1
    assert exc.results[0] == 5 and exc.results[2] == 5
    assert bytes(bufs[0][:5]) == bytes(bufs[2][:5]) == b"hello"


def test_read_files_buffer_too_small_names_both_sizes(eng, data_dir):
    (data_dir / "seven").write_bytes(b"1234567")
    for cap in (0, 6):
        with pytest.raises(ValueError, match=rf"seven: file of 7 bytes .* buffer of {cap} bytes"):
            engine.read_files([data_dir / "seven"], [bytearray(cap)], engine=eng)
    assert engine.read_files([data_dir / "seven"], [bytearray(7)], engine=eng) == [7]


def test_read_files_directory_is_an_error(eng, data_dir):
    with pytest.raises(IsADirectoryError) as info:
        engine.read_files([data_dir], [bytearray(1 << 16)], engine=eng)
    assert info.value.filename == str(data_dir)


def test_read_files_bad_dir_fd(eng):
    with pytest.raises(OSError) as info:
        engine.read_files(["x"], [bytearray(1)], dir_fd=987_654, engine=eng)
    assert info.value.errno == errno.EBADF


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"paths": [b"a\0b"], "buffers": [bytearray(1)]}, ValueError, "NUL"),
        ({"paths": ["a"], "buffers": []}, ValueError, "1 paths given for 0 buffers"),
        ({"paths": ["a"], "buffers": [b"ro"]}, TypeError, "read-only"),
        ({"paths": ["a"], "buffers": [object()]}, TypeError, "not a buffer"),
        ({"paths": ["a"], "buffers": [bytearray(1)], "dir_fd": True}, TypeError, "dir_fd"),
        ({"paths": ["a"], "buffers": [bytearray(1)], "dir_fd": "3"}, TypeError, "dir_fd"),
        ({"paths": ["a"], "buffers": [bytearray(1)], "dir_fd": -1}, ValueError, "dir_fd"),
    ],
)
def test_read_files_bad_arguments(eng, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        engine.read_files(engine=eng, **kwargs)


# ---- request validation ------------------------------------------------------------------


def test_bad_fd_is_named(eng):
    buf = bytearray(10)
    with pytest.raises(OSError) as info:
        engine.read_batch([(987_654, 0, 10, buf, 0)], engine=eng)
    assert info.value.errno == errno.EBADF
    assert info.value.filename == "<fd 987654>"


def test_pipes_have_no_offsets(eng, files):
    # pread on a pipe fails with ESPIPE; the engine must not read the stream instead.
    r, w = os.pipe()
    try:
        os.write(w, b"stream")
        buf = bytearray(6)
        with pytest.raises(OSError) as info:
            engine.read_batch([(files[2][0], 0, 1, bytearray(1), 0), (r, 0, 6, buf, 0)], engine=eng)
        assert info.value.errno == errno.ESPIPE and info.value.index == 1
        assert info.value.results[0] == 1
        assert bytes(buf) == b"\0" * 6
        with pytest.raises(OSError) as info:
            engine.write_batch([(w, 0, 3, b"abc", 0)], engine=eng)
        assert info.value.errno == errno.ESPIPE
        assert os.read(r, 100) == b"stream"
    finally:
        os.close(r)
        os.close(w)


def test_failure_reports_index_and_every_result(eng, files):
    fd, data, _ = files[FILE_SIZES.index(5000)]
    bufs = [bytearray(10) for _ in range(3)]
    reqs = [(fd, 0, 10, bufs[0], 0), (987_654, 0, 10, bufs[1], 0), (fd, 10, 10, bufs[2], 0)]
    with pytest.raises(OSError) as info:
        engine.read_batch(reqs, engine=eng)
    assert info.value.index == 1
    assert info.value.results[0] == 10 and info.value.results[2] == 10
    assert isinstance(info.value.results[1], OSError)
    assert bytes(bufs[2]) == data[10:20]


@pytest.mark.parametrize(
    ("request_", "exc", "match"),
    [
        ((-1, 0, 1, bytearray(1), 0), ValueError, "fd must be >= 0"),
        ((0, -1, 1, bytearray(1), 0), ValueError, "file_offset must be >= 0"),
        ((0, 0, -1, bytearray(1), 0), ValueError, "length must be >= 0"),
        ((0, 0, 1, bytearray(1), -1), ValueError, "buffer_offset must be >= 0"),
        ((True, 0, 1, bytearray(1), 0), TypeError, "fd must be an int, got bool"),
        ((0, 0.0, 1, bytearray(1), 0), TypeError, "file_offset must be an int, got float"),
        ((0, 0, "1", bytearray(1), 0), TypeError, "length must be an int, got str"),
        ((0, 0, 1, bytearray(1), None), TypeError, "buffer_offset must be an int"),
        ((2**40, 0, 1, bytearray(1), 0), ValueError, "out of range"),
        ((0, 2**63 - 1, 1, bytearray(1), 0), ValueError, "beyond the largest file offset"),
        ((0, 0, 1, bytes(1), 0), TypeError, "read-only"),
        ((0, 0, 2, np.zeros((2, 2), np.uint8)[:, 0], 0), ValueError, "not C-contiguous"),
        ((0, 0, 1, "text", 0), TypeError, "not a buffer"),
        ((0, 0, 11, bytearray(10), 0), ValueError, "too small for 11 bytes"),
        ((0, 0, 5, bytearray(10), 6), ValueError, "at buffer offset 6"),
        ((0, 0, 1, bytearray(1)), ValueError, "expected \\(fd, file_offset"),
        ((0, 0, 1, bytearray(1), 0, 0), ValueError, "expected \\(fd, file_offset"),
        (None, ValueError, "expected \\(fd, file_offset"),
        (42, ValueError, "expected \\(fd, file_offset"),
    ],
)
def test_bad_request_fields(eng, request_, exc, match):
    with pytest.raises(exc, match=match):
        engine.read_batch([request_], engine=eng)


def test_read_only_numpy_destination(eng, files):
    fd = files[1][0]
    arr = np.zeros(4, np.uint8)
    arr.flags.writeable = False
    with pytest.raises(TypeError, match="read-only"):
        engine.read_batch([(fd, 0, 1, arr, 0)], engine=eng)


def test_checksum_mismatch_is_page_corrupted(eng, files):
    fd, data, path = files[FILE_SIZES.index(70_000)]
    good = engine.crc32c(data[100:4196])
    bufs = [bytearray(4096), bytearray(4096)]
    reqs = [(fd, 100, 4096, bufs[0], 0), (fd, 100, 4096, bufs[1], 0)]
    assert engine.read_batch(reqs, checksums=[good, None], engine=eng) == [4096, 4096]
    with pytest.raises(PageCorruptedError) as info:
        engine.read_batch(reqs, checksums=[None, good ^ 1], engine=eng)
    exc = info.value
    assert isinstance(exc, OSError) and exc.errno == errno.EIO
    assert exc.filename == str(path)
    assert exc.index == 1 and exc.results[0] == 4096
    assert f"expected {good ^ 1:#010x}" in str(exc)
    assert f"read back as {good:#010x}" in str(exc)


def test_checksum_covers_the_bytes_read_at_end_of_file(eng, files):
    fd, data, _ = files[FILE_SIZES.index(5000)]
    buf = bytearray(1000)
    assert engine.read_batch(
        [(fd, 4500, 1000, buf, 0)], checksums=[engine.crc32c(data[4500:])], engine=eng
    ) == [500]


@pytest.mark.parametrize("direct", [False, True])
def test_checksum_on_reads_of_many_pieces(eng, data_dir, direct):
    # Checked reads may be read and checksummed piece by piece; the crc covers them all.
    size = 3 * 2**20 + 5000
    data = np.random.default_rng(11).integers(0, 256, size, dtype=np.uint8).tobytes()
    path = data_dir / "checked"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        dest = aligned_array(4 * 2**20)
        reqs = [(fd, 0, 2**20, dest, 0), (fd, 2**20, 3 * 2**20, dest, 2**20)]
        sums = [engine.crc32c(data[: 2**20]), engine.crc32c(data[2**20 :])]
        got = engine.read_batch(reqs, direct=direct, checksums=sums, engine=eng)
        assert got == [2**20, size - 2**20]
        assert dest.tobytes()[:size] == data
        with pytest.raises(PageCorruptedError) as info:
            engine.read_batch(reqs, direct=direct, checksums=[sums[0], sums[1] ^ 4], engine=eng)
        assert info.value.index == 1
        assert f"{size - 2**20} bytes at offset {2**20}" in str(info.value)
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    ("checksums", "exc", "match"),
    [
        ([1, 2], ValueError, "2 checksums given for 1 requests"),
        (["x"], TypeError, "checksum 0 must be an int or None, got str"),
        ([True], TypeError, "got bool"),
        ([-1], ValueError, "not a 32-bit crc32c"),
        ([2**32], ValueError, "not a 32-bit crc32c"),
    ],
)
def test_bad_checksums(eng, files, checksums, exc, match):
    with pytest.raises(exc, match=match):
        engine.read_batch([(files[1][0], 0, 1, bytearray(1), 0)], checksums=checksums, engine=eng)


# ---- concurrency and processes -----------------------------------------------------------


def test_threads_read_at_once(eng, files):
    fd, data, _ = files[FILE_SIZES.index(300_000)]
    errors = []
    start = threading.Barrier(6)

    def worker(seed):
        rng = np.random.default_rng(seed)
        try:
            start.wait()
            for _ in range(40):
                offs = rng.integers(0, len(data), 16)
                dest = np.zeros(16 * 512, np.uint8)
                reqs = [(fd, int(o), 512, dest, i * 512) for i, o in enumerate(offs)]
                got = engine.read_batch(reqs, engine=eng)
                for i, o in enumerate(offs):
                    want = data[o : o + 512]
                    assert got[i] == len(want)
                    assert dest[i * 512 : i * 512 + len(want)].tobytes() == want
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_forked_child_gets_its_own_ring(eng, files):
    fd, data, _ = files[FILE_SIZES.index(5000)]
    buf = bytearray(100)
    engine.read_batch([(fd, 0, 100, buf, 0)], engine=eng)  # the parent's ring exists now
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads alive
        pid = os.fork()
    if pid == 0:
        code = 1
        try:
            child = bytearray(100)
            if engine.read_batch([(fd, 100, 100, child, 0)], engine=eng) == [100]:
                code = 0 if bytes(child) == data[100:200] else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert engine.read_batch([(fd, 200, 100, buf, 0)], engine=eng) == [100]
    assert bytes(buf) == data[200:300]


# ---- backend choice ----------------------------------------------------------------------


def test_shoal_engine_bogus(monkeypatch):
    monkeypatch.setenv("SHOAL_ENGINE", "bogus")
    with pytest.raises(ValueError, match="SHOAL_ENGINE"):
        engine.get_backend()
    with pytest.raises(ValueError, match="SHOAL_ENGINE"):
        engine.read_batch([])


@pytest.mark.parametrize("name", BACKENDS)
def test_shoal_engine_selects(monkeypatch, name):
    if name == "io_uring" and not _engine.io_uring_available():
        pytest.skip("io_uring is not available in this process")
    monkeypatch.setenv("SHOAL_ENGINE", name.upper())
    assert engine.backend() == name


def test_auto_prefers_io_uring(monkeypatch):
    monkeypatch.setenv("SHOAL_ENGINE", "auto")
    want = "io_uring" if _engine.io_uring_available() else "threads"
    assert engine.backend() == want


def test_unknown_backend_name():
    with pytest.raises(ValueError, match="unknown engine backend 'nope'"):
        engine.get_backend("nope")


# ---- crc32c ------------------------------------------------------------------------------


def crc32c_bitwise(data: bytes, crc: int = 0) -> int:
    """The definition: reflected Castagnoli polynomial, one bit at a time."""
    crc ^= 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


# A byte table derived from the bitwise definition, to check long inputs in reasonable time.
_TABLE = [crc32c_bitwise(bytes([n]), 0xFFFFFFFF) ^ 0xFFFFFFFF for n in range(256)]


def crc32c_reference(data: bytes, crc: int = 0) -> int:
    crc ^= 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def test_crc32c_known_values():
    assert crc32c_bitwise(b"123456789") == 0xE3069283
    assert engine.crc32c(b"123456789") == 0xE3069283
    assert engine.crc32c(b"") == 0
    assert engine.crc32c(b"\0" * 32) == 0x8A9136AA
    for n in range(0, 300, 7):
        data = bytes(range(n % 256)) * (n // 256 + 1)
        assert crc32c_reference(data) == crc32c_bitwise(data)


_BLOB = np.random.default_rng(3).integers(0, 256, 200_064, dtype=np.uint8).tobytes()


@settings(max_examples=60, deadline=None)
@given(
    # Edges of the kernels' block sizes: 16, 64, 256 and 512 bytes, 3 x 256 and 3 x 8192.
    length=st.one_of(
        st.integers(0, 100_000),
        st.integers(0, 1100),
        st.sampled_from([767, 768, 769, 24575, 24576, 24577, 24576 + 768 + 520]),
    ),
    align=st.integers(0, 63),
    split=st.integers(0, 100_000),
    start=st.integers(0, 0xFFFFFFFF),
)
def test_crc32c_matches_reference(length, align, split, start):
    view = memoryview(_BLOB)[align : align + length]
    want = crc32c_reference(view, start)
    assert engine.crc32c(view, start) == want
    for kernel in _crc.kernels():
        assert _crc.crc32c_with(kernel, view, start) == want, kernel
    split = min(split, length)
    assert engine.crc32c(view[split:], value=engine.crc32c(view[:split], start)) == want


def test_crc32c_buffers_of_every_kind():
    data = _BLOB[:1000]
    want = crc32c_reference(data)
    arr = np.frombuffer(data, np.uint8)
    for buf in (
        data,
        bytearray(data),
        memoryview(data),
        arr,
        arr.view(np.uint32),
        torch.from_numpy(arr.copy()),
    ):
        assert engine.crc32c(buf) == want
    with pytest.raises(TypeError, match="not a buffer"):
        engine.crc32c("text")


def test_crc32c_kernels():
    names = _crc.kernels()
    assert names[0] == "table"
    assert _crc.hardware() == (len(names) > 1)
    with pytest.raises(ValueError, match="'bogus' is not available"):
        _crc.crc32c_with("bogus", b"")


def test_crc32c_is_not_crc32():
    assert engine.crc32c(b"abc") != zlib.crc32(b"abc")


# ------------------------------------------------------------ large batches over threads


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    lengths=st.lists(st.integers(0, 6 << 20), min_size=2, max_size=12),
    bad=st.one_of(st.none(), st.integers(0, 11)),
)
def test_large_batches_split_over_threads_keep_order_and_errors(
    eng, data_dir, monkeypatch, lengths, bad
):
    # small thresholds, so that hypothesis' batches take the parallel path
    monkeypatch.setattr(_engine, "PARALLEL_BYTES", 1 << 20)
    monkeypatch.setattr(_engine, "SPLIT_BYTES", 256 << 10)
    monkeypatch.setattr(_engine, "PARALLEL_WAYS", 3)
    path = data_dir / "parallel"
    if not path.exists():
        path.write_bytes(np.random.default_rng(5).bytes(8 << 20))
    data = path.read_bytes()
    fd = os.open(path, os.O_RDONLY)
    try:
        dest = bytearray(sum(lengths))
        reqs, sums, pos = [], [], 0
        for i, n in enumerate(lengths):
            offset = (i * 1_000_003) % (len(data) - n + 1)
            reqs.append((fd, offset, n, dest, pos))
            crc = engine.crc32c(data[offset : offset + n])
            sums.append(crc ^ 1 if i == bad else crc)
            pos += n
        if bad is not None and bad < len(lengths):
            with pytest.raises(PageCorruptedError) as info:
                engine.read_batch(reqs, checksums=sums, engine=eng)
            assert info.value.index == bad
            assert [r for i, r in enumerate(info.value.results) if i != bad] == [
                n for i, n in enumerate(lengths) if i != bad
            ]
        else:
            assert engine.read_batch(reqs, checksums=sums, engine=eng) == lengths
        pos = 0
        for _fd, offset, n, _, _ in reqs:
            assert dest[pos : pos + n] == data[offset : offset + n]
            pos += n
    finally:
        os.close(fd)


def test_parallel_pool_is_made_anew_in_a_forked_child(data_dir, monkeypatch):
    monkeypatch.setattr(_engine, "PARALLEL_BYTES", 1 << 20)
    monkeypatch.setattr(_engine, "SPLIT_BYTES", 256 << 10)
    monkeypatch.setattr(_engine, "PARALLEL_WAYS", 2)
    path = data_dir / "fork-parallel"
    path.write_bytes(b"x" * (4 << 20))
    fd = os.open(path, os.O_RDONLY)
    try:
        buf = bytearray(4 << 20)
        reqs = [(fd, i << 20, 1 << 20, buf, i << 20) for i in range(4)]
        assert engine.read_batch(reqs) == [1 << 20] * 4  # the parent's pool exists now
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads running
            pid = os.fork()
        if pid == 0:
            ok = False
            try:
                signal.alarm(30)  # a pool inherited without its threads would wait forever
                ok = engine.read_batch(reqs) == [1 << 20] * 4 and buf == b"x" * (4 << 20)
            finally:
                os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        os.close(fd)
