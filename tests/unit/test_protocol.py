"""The wire protocol: frames over a socketpair, descriptors passing, error mapping, request
checks."""

from __future__ import annotations

import errno
import os
import socket
import struct
import threading

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal import ShoalError
from shoal._errors import PageCorruptedError, StaleLocationError, TierFullError
from shoal.control.proto import (
    FRAME,
    MAX_FDS,
    OPS,
    ProtocolError,
    check_request,
    decode_error,
    encode_error,
    recv_frame,
    recv_header,
    recv_into,
    send_frame,
)
from shoal.control.ufs import ObjectChangedError, StoreConnectionError


@pytest.fixture
def pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    yield a, b
    a.close()
    b.close()


def send_async(sock, *args, **kwargs):
    """Send in a thread: a big frame does not fit in the socket buffer."""
    errors = []

    def run():
        try:
            send_frame(sock, *args, **kwargs)
        except BaseException as exc:  # reported by join()
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()

    def join():
        t.join(10)
        assert not t.is_alive()
        if errors:
            raise errors[0]

    return join


values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text() | st.binary(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=10,
)


@settings(max_examples=40, deadline=None)
@given(
    header=st.dictionaries(st.text(max_size=10), values, max_size=5),
    parts=st.lists(st.binary(max_size=3000), max_size=6),
)
def test_frames_round_trip(header, parts):
    a, b = socket.socketpair()
    try:
        join = send_async(a, header, parts)
        got = recv_frame(b)
        join()
        assert got == (header, b"".join(parts), [])
    finally:
        a.close()
        b.close()


def test_payload_received_straight_into_buffers(pair):
    a, b = pair
    data = np.random.default_rng(1).integers(0, 256, 3 << 20, dtype=np.uint8)
    join = send_async(a, {"op": "x"}, [data[: 1 << 20], memoryview(data)[1 << 20 :]])
    header, length, fds = recv_header(b)
    assert header == {"op": "x"} and length == data.nbytes and fds == []
    dest = np.zeros(data.nbytes + 10, dtype=np.uint8)
    # Uneven destination pieces: the payload is split by the receiver, not the sender.
    recv_into(b, [dest[:7], memoryview(dest)[7:100_000], dest[100_000 : data.nbytes]])
    join()
    assert np.array_equal(dest[: data.nbytes], data)
    assert not dest[data.nbytes :].any()


def test_many_payload_buffers(pair):
    a, b = pair
    parts = [bytes([i % 256]) * 3 for i in range(2000)]  # more than IOV_MAX buffers
    join = send_async(a, {}, parts)
    header, payload, _ = recv_frame(b)
    join()
    assert payload == b"".join(parts)


def test_descriptors_pass_and_close_on_exec(pair, tmp_path):
    a, b = pair
    files = []
    for i in range(3):
        path = tmp_path / f"f{i}"
        path.write_bytes(b"file %d" % i)
        files.append(os.open(path, os.O_RDONLY))
    try:
        send_frame(a, {"n": 3}, [b"xy"], fds=files)
        send_frame(a, {"n": 0})
        header, payload, fds = recv_frame(b)
        assert header == {"n": 3} and payload == b"xy" and len(fds) == 3
        for i, fd in enumerate(fds):
            assert fd not in files  # new descriptors for the same files
            assert os.pread(fd, 100, 0) == b"file %d" % i
            assert not os.get_inheritable(fd)
            os.close(fd)
        assert recv_frame(b) == ({"n": 0}, b"", [])
    finally:
        for fd in files:
            os.close(fd)


def test_too_many_descriptors_refused(pair):
    a, _ = pair
    with pytest.raises(ValueError, match="at most"):
        send_frame(a, {}, fds=[0] * (MAX_FDS + 1))


def test_clean_close_between_frames(pair):
    a, b = pair
    a.close()
    assert recv_header(b) is None


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (FRAME.pack(10, 0) + b"abc", "middle of a frame header"),
        (b"\x01\x00", "middle of a frame prefix"),
        (FRAME.pack(1, 0) + b"\xc1", "not valid msgpack"),
        (FRAME.pack(1, 0) + msgpack.packb(5), "must be a map"),
        (FRAME.pack(0xFFFFFFFF, 0), "exceeds"),
    ],
)
def test_malformed_frames(pair, raw, match):
    a, b = pair
    a.sendall(raw)
    a.shutdown(socket.SHUT_WR)
    with pytest.raises(ProtocolError, match=match) as info:
        recv_frame(b)
    assert info.value.errno == errno.EPROTO
    assert isinstance(info.value, ConnectionError)


def test_payload_cut_short(pair):
    a, b = pair
    a.sendall(FRAME.pack(1, 100) + msgpack.packb({}) + b"x" * 10)
    a.close()
    header, length, _ = recv_header(b)
    assert length == 100
    with pytest.raises(ProtocolError, match="10 of 100"):
        recv_into(b, [bytearray(100)])


def test_bad_header_type():
    with pytest.raises(TypeError, match="dict"):
        send_frame(None, [1, 2])


@pytest.mark.parametrize(
    "exc",
    [
        FileNotFoundError(errno.ENOENT, "/data/x is not under any mount"),
        FileNotFoundError(errno.ENOENT, "no such object", "s3://b/k"),
        PermissionError(errno.EACCES, "read: AccessDenied", "s3://b/k"),
        IsADirectoryError(errno.EISDIR, "is a directory", "/d"),
        FileExistsError(errno.EEXIST, "/m is already a mount point"),
        ConnectionRefusedError(errno.ECONNREFUSED, "refused"),
        TimeoutError(errno.ETIMEDOUT, "slow"),
        OSError(errno.EIO, "disk on fire", "/dev/x"),
        ValueError("path must be absolute"),
        TypeError("offset must be an int"),
        PageCorruptedError("crc mismatch", "/cache/r1"),
        StaleLocationError("region reclaimed"),
        TierFullError("tier SSD is full", "/cache"),
        ObjectChangedError("read: the object changed", "s3://b/k"),
        StoreConnectionError(errno.ECONNREFUSED, "stat: could not connect", "s3://b/k"),
        ProtocolError("bad frame"),
    ],
)
def test_errors_round_trip(exc):
    doc = encode_error(exc)
    back = decode_error(msgpack.unpackb(msgpack.packb(doc)))
    assert type(back) is type(exc)
    assert str(back) == str(exc)
    if isinstance(exc, OSError):
        assert back.errno == exc.errno
        assert back.filename == exc.filename


def test_unlisted_errors_map_to_nearest_listed_class():
    class Custom(ShoalError, FileNotFoundError):
        pass

    back = decode_error(encode_error(Custom(errno.ENOENT, "gone", "/x")))
    assert type(back) is FileNotFoundError and back.errno == errno.ENOENT

    back = decode_error(encode_error(KeyError("k")))
    assert type(back) is OSError and back.errno == errno.EIO
    assert "KeyError" in str(back)

    back = decode_error(encode_error(RuntimeError("boom")))
    assert type(back) is OSError and "RuntimeError: boom" in str(back)


def test_decode_never_instantiates_unknown_classes():
    back = decode_error({"type": "SystemExit", "errno": None, "message": "bye"})
    assert type(back) is OSError and back.errno == errno.EIO
    assert isinstance(decode_error("garbage"), ProtocolError)
    back = decode_error({"type": "FileNotFoundError", "errno": "x", "message": 5})
    assert type(back) is FileNotFoundError


def test_check_request_accepts_every_op():
    samples = {
        "hello": {"pid": 1, "version": 1},
        "mount": {"path": "/m", "uri": "s3://b", "options": {}},
        "unmount": {"path": "/m"},
        "mounts": {},
        "stat": {"paths": ["/a"]},
        "ls": {"path": "/"},
        "refresh": {"path": "/"},
        "read": {
            "files": [["/m/a", "v1"]],
            "items": [[0, 0, 0, 10]],
            "mode": "locate",
            "forget": [["SSD", 3], ["MEM", -1]],
        },
        "load": {"paths": ["/m"], "metadata_only": False},
        "free": {"path": "/m"},
        "report": {},
        "touch": {"regions": [["SSD", 3, 2], ["MEM", 0, 1]]},
        "job_put": {"key": "jobs/load/1", "record": {"state": "DONE"}},
        "jobs": {"prefix": "jobs/load/", "limit": 10},
        "stop": {},
    }
    assert set(samples) == set(OPS)
    for op, fields in samples.items():
        assert check_request({"op": op, **fields}) == op


@pytest.mark.parametrize(
    ("header", "match"),
    [
        ({"op": "nope"}, "unknown op"),
        ({}, "unknown op"),
        ({"op": "hello", "pid": 1}, "'version' is missing"),
        ({"op": "hello", "pid": True, "version": 1}, "'pid'"),
        ({"op": "ls", "path": 5}, "'path' must be str"),
        ({"op": "load", "paths": ["/a"], "metadata_only": 1}, "metadata_only"),
        ({"op": "stat", "paths": ["/a", 3]}, "strings"),
        ({"op": "touch", "regions": [["SSD", 3]]}, "tier, region, pages"),
        ({"op": "touch", "regions": [[3, 3, 1]]}, "tier, region, pages"),
        ({"op": "touch", "regions": [["SSD", -1, 1]]}, "touch: region"),
        ({"op": "touch", "regions": [["SSD", 1, 0]]}, "touch: pages"),
        ({"op": "jobs", "prefix": "mounts/", "limit": 1}, "prefix must start with 'jobs/'"),
        ({"op": "jobs", "prefix": "jobs/", "limit": -1}, "jobs: limit"),
        ({"op": "job_put", "key": "jobs/load/1", "record": []}, "'record' must be dict"),
        (
            {"op": "read", "files": [], "items": [], "mode": "other", "forget": []},
            "mode must be",
        ),
        (
            {"op": "read", "files": [["/a"]], "items": [], "mode": "data", "forget": []},
            "path, version",
        ),
        (
            {
                "op": "read",
                "files": [["/a", "v"]],
                "items": [[1, 0, 0, 5]],
                "mode": "data",
                "forget": [],
            },
            "item file",
        ),  # fmt: skip
        (
            {
                "op": "read",
                "files": [["/a", "v"]],
                "items": [[0, 0, 0, 0]],
                "mode": "data",
                "forget": [],
            },
            "item length",
        ),  # fmt: skip
        (
            {
                "op": "read",
                "files": [["/a", "v"]],
                "items": [[0, -1, 0, 5]],
                "mode": "data",
                "forget": [],
            },
            "item page",
        ),  # fmt: skip
        (
            {"op": "read", "files": [], "items": [], "mode": "data", "forget": [["SSD"]]},
            "forget",
        ),
    ],
)
def test_check_request_rejects(header, match):
    with pytest.raises(ProtocolError, match=match):
        check_request(header)


def test_frame_struct_is_two_little_endian_u32():
    assert FRAME.format in ("<II", b"<II")
    assert FRAME.size == 8
    assert struct.unpack("<II", FRAME.pack(1, 2)) == (1, 2)


def test_page_store_descriptors_read_by_another_reader(pair, tmp_path):
    """What the worker does for a short-circuit client: locate a page, pass its region
    file and the tier's generation table over the socket; the receiver reads and checks the
    page with a RegionReader that has no access to the store's directories."""
    from shoal.engine import PageLocation, PageStore, RegionReader, TierConfig
    from shoal.engine._regions import generations_path

    a, b = pair
    tier = TierConfig("SSD", tmp_path / "tier", 1 << 20)
    with PageStore([tier], tmp_path / "index", region_size=256 << 10) as store:
        data = os.urandom(10_000)
        store.put(b"key", data)
        loc = store.locate([b"key"])[0]
        mine = [
            os.open(generations_path(store.tier_paths["SSD"]), os.O_RDONLY),
            os.open(loc.path, os.O_RDONLY),
        ]
        try:
            send_frame(a, {"loc": [loc.region, loc.offset, loc.length, loc.crc32c,
                                   loc.generation]}, fds=mine)  # fmt: skip
        finally:
            for fd in mine:
                os.close(fd)
        header, _, fds = recv_frame(b)
        region, offset, length, crc, generation = header["loc"]
        with RegionReader() as reader:
            reader.adopt("SSD", None, fds[0])
            reader.adopt("SSD", region, fds[1])
            got = PageLocation("SSD", region, "", offset, length, crc, generation)
            buf = bytearray(length)
            assert reader.read_into(got, buf) == len(data) and bytes(buf) == data
            with pytest.raises(StaleLocationError):
                reader.read_into(PageLocation("SSD", region, "", offset, length, crc,
                                              generation + 1), buf)  # fmt: skip
            with pytest.raises(PageCorruptedError):
                reader.read_into(PageLocation("SSD", region, "", offset, length, crc ^ 1,
                                              generation), buf)  # fmt: skip
            reader.release("SSD", region)
            with pytest.raises(ValueError, match="no descriptor"):
                reader.read_into(got, buf)
            with pytest.raises(ValueError, match="tier 'MEM'"):
                reader.read_into(PageLocation("MEM", 0, "", 0, 1, 0, 0), buf)
