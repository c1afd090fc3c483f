"""The wire protocol: frames over a socketpair, descriptors passing, error mapping, request
checks and their limits, the authentication proofs and secret files."""

from __future__ import annotations

import errno
import os
import socket
import struct
import threading
import time
import tracemalloc

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal import ShoalError
from shoal._errors import PageCorruptedError, StaleLocationError, TierFullError
from shoal.control._namespace import MAX_PATH_BYTES
from shoal.control.proto import (
    ADMIN,
    ADMIN_OPS,
    CLIENT,
    FRAME,
    MAX_FDS,
    MAX_HEADER,
    MAX_LIST,
    MAX_READ_BYTES,
    MAX_REQUEST_HEADER,
    OPS,
    WORKER,
    ProtocolError,
    check_proof,
    check_request,
    decode_error,
    encode_error,
    load_secret,
    new_nonce,
    new_secret,
    proof,
    recv_frame,
    recv_header,
    recv_into,
    send_frame,
    transcript,
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
        "auth": {"proof": b"x" * 32},
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
        "du": {"path": "/m/a"},
        "touch": {"regions": [["SSD", 3, 2], ["MEM", 0, 1]]},
        "table": {},
        "regions": {"regions": [["SSD", 3], ["MEM", 0]]},
        "job_put": {"key": "jobs/load/1", "record": {"state": "DONE"}},
        "jobs": {"prefix": "jobs/load/", "limit": 10},
        "policy_set": {"path": "/m", "policy": {"metadata_ttl": "30s", "read_ahead": 2}},
        "policy_rm": {"path": "/m", "fields": ["read_ahead"]},
        "policies": {},
        "policy_show": {"path": "/m/a"},
        "write_open": {"path": "/m/a", "size": -1},
        "write_grow": {"handle": 1, "size": 1 << 20},
        "write_data": {"handle": 1, "offset": 0},
        "write_commit": {"handle": 1, "size": 3},
        "write_abort": {"handle": 1},
        "delete": {"path": "/m/a"},
        "rename": {"src": "/m/a", "dst": "/m/b"},
        "persisted": {"paths": ["/m/a"]},
        "wait_persisted": {"path": "", "timeout": 1.5},
        "stop": {},
    }
    assert set(samples) == set(OPS)
    for op, fields in samples.items():
        assert check_request({"op": op, **fields}) == op


@pytest.mark.parametrize(
    ("header", "match"),
    [
        ({"op": "nope"}, "unknown op"),
        ({"op": "write_open", "path": "/m/a", "size": -2}, "write_open: size must be an int"),
        ({"op": "write_data", "handle": -1, "offset": 0}, "write_data: handle must be an int"),
        ({"op": "rename", "src": "/m/a", "dst": 3}, "field 'dst' must be str"),
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
        ({"op": "regions", "regions": [["SSD", 3, 2]]}, "tier, region"),
        ({"op": "regions", "regions": [[3, 3]]}, "tier, region"),
        ({"op": "regions", "regions": [["SSD", -1]]}, "regions: region"),
        ({"op": "regions", "regions": [["SSD", True]]}, "regions: region"),
        ({"op": "jobs", "prefix": "mounts/", "limit": 1}, "prefix must start with 'jobs/'"),
        ({"op": "jobs", "prefix": "jobs/", "limit": -1}, "jobs: limit"),
        ({"op": "job_put", "key": "jobs/load/1", "record": []}, "'record' must be dict"),
        ({"op": "policy_set", "path": "/m", "policy": []}, "'policy' must be dict"),
        ({"op": "policy_set", "path": "/m", "policy": {1: 2}}, "field names must be strings"),
        ({"op": "policy_set", "path": "/m", "policy": {"tier": ["SSD"]}}, "must be a bool, a"),
        ({"op": "policy_set", "path": "/m", "policy": {"x": {"y": 1}}}, "got dict"),
        ({"op": "policy_set", "path": "/m", "policy": {"x": b"1"}}, "got bytes"),
        ({"op": "policy_rm", "path": "/m", "fields": "tier"}, "'fields' must be list"),
        ({"op": "policy_rm", "path": "/m", "fields": [None]}, "field names must be strings"),
        ({"op": "policy_show", "path": None}, "'path' is missing"),
        ({"op": "du"}, "'path' is missing"),
        ({"op": "du", "path": None}, "'path' is missing"),
        ({"op": "du", "path": 7}, "'path' must be str"),
        ({"op": "du", "path": ["/m"]}, "'path' must be str"),
        ({"op": "du", "path": True}, "'path' is missing or has the wrong type"),
        ({"op": "du", "path": b"/m"}, "'path' must be str"),
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


# --------------------------------------------------------------------- limits


def read_request(items: list, files: list | None = None, **extra) -> dict:
    files = files if files is not None else [["/m/a", "v1"]]
    return {"op": "read", "files": files, "items": items, "mode": "data", "forget": [], **extra}


@pytest.mark.parametrize(
    ("header", "code", "match"),
    [
        (read_request([[0, 0, 0, 1]] * (MAX_LIST + 1)), errno.E2BIG, "read: items"),
        (read_request([], [["/a", "v"]] * (MAX_LIST + 1)), errno.E2BIG, "read: files"),
        (read_request([], forget=[["SSD", 1]] * (MAX_LIST + 1)), errno.E2BIG, "read: forget"),
        (read_request([[0, 0, 0, 1 << 31]] * 3), errno.E2BIG, "bytes asked"),
        ({"op": "stat", "paths": ["/a"] * (MAX_LIST + 1)}, errno.E2BIG, "stat: paths"),
        (
            {"op": "load", "paths": ["/a"] * (MAX_LIST + 1), "metadata_only": True},
            errno.E2BIG,
            "load: paths",
        ),
        ({"op": "touch", "regions": [["SSD", 1, 1]] * (MAX_LIST + 1)}, errno.E2BIG, "touch"),
        ({"op": "regions", "regions": [["SSD", 1]] * 201}, errno.E2BIG, "regions"),
        ({"op": "stat", "paths": ["/" + "a" * MAX_PATH_BYTES]}, errno.ENAMETOOLONG, "a path"),
        ({"op": "stat", "paths": ["/a" * 250_000]}, errno.ENAMETOOLONG, "a path"),
        ({"op": "ls", "path": "/" + "é" * 2048}, errno.ENAMETOOLONG, "ls: path"),
        ({"op": "du", "path": "/" + "a" * MAX_PATH_BYTES}, errno.ENAMETOOLONG, "du: path"),
        ({"op": "du", "path": "/é" * 2048}, errno.ENAMETOOLONG, "du: path"),
        (read_request([], [["/" + "a" * 5000, "v"]]), errno.ENAMETOOLONG, "read: a path"),
        (read_request([], [["/a", "v" * 5000]]), errno.ENAMETOOLONG, "read: a version"),
        (
            {
                "op": "mount",
                "path": "/m",
                "uri": "s3://b",
                "options": {str(i): i for i in range(99)},
            },
            errno.E2BIG,
            "options",
        ),
        ({"op": "job_put", "key": "jobs/" + "x" * 2000, "record": {}}, errno.ENAMETOOLONG, "key"),
        (
            {"op": "policy_set", "path": "/m", "policy": {str(i): i for i in range(99)}},
            errno.E2BIG,
            "policy_set: 99 fields",
        ),
        (
            {"op": "policy_set", "path": "/m", "policy": {"tier": "M" * 5000}},
            errno.ENAMETOOLONG,
            "policy_set: field 'tier'",
        ),
        (
            {"op": "policy_set", "path": "/m", "policy": {"t" * 5000: 1}},
            errno.ENAMETOOLONG,
            "a field name",
        ),
        (
            {"op": "policy_rm", "path": "/m", "fields": ["tier"] * (MAX_LIST + 1)},
            errno.E2BIG,
            "policy_rm: fields",
        ),
    ],
)
def test_check_request_limits(header, code, match):
    """Past a limit: an OSError naming it (the connection serves on), found fast."""
    start = time.process_time()
    with pytest.raises(OSError, match=match) as info:
        check_request(header)
    assert info.value.errno == code
    assert not isinstance(info.value, ProtocolError)
    assert time.process_time() - start < 0.5


def test_check_request_at_the_limits():
    assert check_request(read_request([[0, 0, 0, 1]] * MAX_LIST)) == "read"
    assert check_request(read_request([[0, 0, 0, MAX_READ_BYTES]])) == "read"
    assert check_request({"op": "stat", "paths": ["/" + "a" * (MAX_PATH_BYTES - 1)]}) == "stat"


@settings(max_examples=200, deadline=None)
@given(
    tier=st.one_of(st.text(max_size=8), st.integers(), st.none(), st.binary(max_size=4)),
    region=st.one_of(st.integers(-(2**70), 2**70), st.floats(), st.booleans(), st.text()),
    pages=st.one_of(st.integers(-(2**70), 2**70), st.floats(), st.booleans(), st.none()),
)
def test_touch_counters_are_checked(tier, region, pages):
    """``touch`` numbers: ints (not bools) in range, or a ProtocolError; nothing else."""
    header = {"op": "touch", "regions": [[tier, region, pages]]}
    valid = (
        isinstance(tier, str)
        and type(region) is int
        and 0 <= region < 1 << 32
        and type(pages) is int
        and 1 <= pages < 1 << 24
    )
    if valid:
        assert check_request(header) == "touch"
    else:
        with pytest.raises(ProtocolError):
            check_request(header)


def test_admin_ops():
    assert {"mount", "unmount", "free", "job_put", "policy_set", "policy_rm", "stop"} == ADMIN_OPS
    assert set(OPS) > ADMIN_OPS
    assert "du" not in ADMIN_OPS and "report" not in ADMIN_OPS  # readers may look


# --------------------------------------------------------------------- frames: costs


def test_announced_header_costs_only_what_arrives(pair):
    """A frame announcing a header of 64 MiB, 100 bytes of it sent, then a close: the
    receiver allocated a small buffer, not the announced size."""
    a, b = pair
    a.sendall(FRAME.pack(64 << 20, 0) + b"\x81" * 100)
    a.close()
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError, match="100 of 67108864 bytes"):
            recv_header(b, max_header=64 << 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_header_over_the_cap_is_refused_before_any_is_read(pair):
    a, b = pair
    a.sendall(FRAME.pack(MAX_REQUEST_HEADER + 1, 0))
    with pytest.raises(ProtocolError, match="exceeds"):
        recv_header(b, max_header=MAX_REQUEST_HEADER)
    a.sendall(FRAME.pack(MAX_HEADER + 1, 0))
    with pytest.raises(ProtocolError, match="exceeds"):
        recv_header(b)


def test_big_header_arrives_whole(pair):
    """A header of several MiB, sent in pieces, grows its buffer up to its full size."""
    a, b = pair
    header = {"blob": os.urandom(5 << 20), "n": 1}
    join = send_async(a, header)
    got, length, _ = recv_header(b)
    join()
    assert got == header and length == 0


def test_send_frame_time_is_linear_in_its_buffers():
    """640k payload buffers (a read of 640k items) go out in well under a second of CPU:
    no buffer is copied or dropped from the front of a list one at a time."""
    a, b = socket.socketpair()
    parts = [b"x"] * 640_000
    received = []

    def drain():
        total = 0
        while total < 640_000:
            data = b.recv(1 << 20)
            if not data:
                break
            total += len(data)
        received.append(total)

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        start = time.thread_time()
        send_frame(a, {}, parts)
        spent = time.thread_time() - start
    finally:
        reader.join(30)
        a.close()
        b.close()
    assert received and received[0] >= 640_000
    assert spent < 1.0, f"{spent:.2f} s of CPU to send 640k buffers"


# --------------------------------------------------------------------- frames: fuzz


@settings(max_examples=300, deadline=None)
@given(
    prefix=st.binary(min_size=0, max_size=16),
    header_len=st.integers(0, 2**32 - 1),
    body=st.one_of(st.binary(max_size=200), values.map(lambda v: msgpack.packb(v))),
)
def test_any_bytes_make_a_frame_or_a_protocol_error(prefix, header_len, body):
    """Whatever a peer sends: a header dict, ``None`` (closed before a frame), or a
    ``ProtocolError``; never another exception, never more memory than what was sent."""
    a, b = socket.socketpair()
    try:
        data = prefix if len(prefix) < FRAME.size else FRAME.pack(header_len, 0) + body
        a.sendall(data)
        a.close()
        tracemalloc.start()
        try:
            try:
                got = recv_header(b, max_header=MAX_REQUEST_HEADER)
            except ProtocolError:
                got = "error"
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert got is None or got == "error" or isinstance(got[0], dict)
        assert peak < (1 << 20) + 64 * len(data)
    finally:
        b.close()


# --------------------------------------------------------------------- authentication


def test_proofs_bind_role_secret_and_transcript():
    secret, other = new_secret().encode(), new_secret().encode()
    nc, nw = new_nonce(), new_nonce()
    t = transcript(nc, nw, 42, 1, False, False)
    mine = proof(secret, CLIENT, t)
    assert len(mine) == 32 and len(nc) == 32 and nc != nw
    assert check_proof(secret, CLIENT, t, mine)
    assert not check_proof(secret, WORKER, t, mine)  # a client's proof never passes for a worker's
    assert not check_proof(secret, ADMIN, t, mine)
    assert not check_proof(other, CLIENT, t, mine)
    for changed in (
        transcript(nw, nc, 42, 1, False, False),
        transcript(nc, nw, 43, 1, False, False),
        transcript(nc, nw, 42, 2, False, False),
        transcript(nc, nw, 42, 1, True, False),
        transcript(nc, nw, 42, 1, False, True),
    ):
        assert not check_proof(secret, CLIENT, changed, mine)
    for junk in (None, "text", mine[:-1], 5, [mine]):
        assert not check_proof(secret, CLIENT, t, junk)


def test_load_secret(tmp_path):
    good = tmp_path / "good"
    good.write_text(new_secret() + "\n")
    good.chmod(0o600)
    assert load_secret(str(good), "cluster_secret_file") == good.read_text().strip().encode()
    good.chmod(0o400)
    assert len(load_secret(str(good), "x")) == 64

    loose = tmp_path / "loose"
    loose.write_text(new_secret())
    loose.chmod(0o640)
    with pytest.raises(PermissionError, match=r"cluster_secret_file.*mode 0640.*chmod 600") as info:
        load_secret(str(loose), "cluster_secret_file")
    assert loose.read_text() not in str(info.value)

    empty = tmp_path / "empty"
    empty.write_text("\n ")
    empty.chmod(0o600)
    with pytest.raises(ValueError, match="is empty.*shoal secret new"):
        load_secret(str(empty), "admin_secret_file")

    short = tmp_path / "short"
    short.write_text("hunter2")
    short.chmod(0o600)
    with pytest.raises(ValueError, match="holds 7 bytes; a secret needs at least 32") as info:
        load_secret(str(short), "admin_secret_file")
    assert "hunter2" not in str(info.value)

    with pytest.raises(FileNotFoundError, match="shoal secret new"):
        load_secret(str(tmp_path / "missing"), "cluster_secret_file")
    with pytest.raises(ValueError, match="not a regular file"):
        load_secret(str(tmp_path), "cluster_secret_file")


def test_an_answer_holding_a_name_not_utf8_is_an_error_that_says_so():
    from shoal.control._server import Reply, Server

    here, there = socket.socketpair()
    try:
        answer = Reply({"entries": [{"path": "/d/caf" + os.fsdecode(b"\xe9")}]})
        assert Server._send_reply(object.__new__(Server), here, "ls", answer)
        header, _, _ = recv_frame(there)
        assert header["ok"] is False
        exc = decode_error(header["error"])
        assert isinstance(exc, OSError) and exc.errno == errno.EILSEQ
        assert "not UTF-8" in str(exc) and "caf" in str(exc)
    finally:
        here.close()
        there.close()
