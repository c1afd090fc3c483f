"""One suite every under-store passes: a directory, S3 (a real moto server) and fsspec's
``memory://``. A new backend joins by adding a case to the ``store`` fixture."""

from __future__ import annotations

import errno
import io
import time
import uuid

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from s3server import ACCESS_KEY_ENV, SECRET_KEY_ENV

from shoal.control.ufs import ObjectChangedError, ObjectInfo, UnderStore, open_store

MiB = 1 << 20
BUCKET = "shoal-conformance"

# Keys chosen for their order: "-" (0x2d) sorts before "/" (0x2f), "0" after it.
KEYS = [
    "a-b",
    "a/c",
    "a/d/e",
    "a0",
    "ab",
    "b/x/y/z",
    "b/x1",
    "c",
]

per_example = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def payload(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


@pytest.fixture(params=["local", "s3", "memory"])
def backend(request, tmp_path):
    """``(store, parent)``: the store under test, rooted at ``.../root``, and a store on
    the directory above it, which puts decoys next to the root that must never show."""
    kind = request.param
    if kind == "local":
        (tmp_path / "root").mkdir()
        parent = open_store(str(tmp_path))
        store = open_store(f"file://{tmp_path}/root")
    elif kind == "s3":
        server = request.getfixturevalue("s3_server")
        server.client().create_bucket(Bucket=BUCKET)
        options = dict(
            endpoint_url=server.endpoint_url,
            region="us-east-1",
            access_key_env=ACCESS_KEY_ENV,
            secret_key_env=SECRET_KEY_ENV,
            part_size="5MiB",
        )
        parent = open_store(f"s3://{BUCKET}", **options)
        store = open_store(f"s3://{BUCKET}/root", **options)
    else:
        base = f"memory://shoal-test-{uuid.uuid4().hex}"
        parent = open_store(base)
        store = open_store(base + "/root")
    for decoy in ("outside", "root-sibling/x", "rootx"):
        parent.write(decoy, b"decoy")
    yield store, parent
    if kind == "memory":
        parent.fs.rm(parent.fs._strip_protocol(parent.uri), recursive=True)
    store.close()
    parent.close()


@pytest.fixture
def store(backend) -> UnderStore:
    return backend[0]


@pytest.fixture
def filled(store) -> UnderStore:
    for i, key in enumerate(KEYS):
        store.write(key, f"content of {key} #{i}".encode())
    return store


# -- stat ---------------------------------------------------------------------------


def test_write_returns_what_stat_says(store):
    before = time.time()
    info = store.write("dir/object.bin", b"0123456789")
    assert isinstance(info, ObjectInfo)
    assert info == store.stat("dir/object.bin")
    assert (info.path, info.size, info.is_dir) == ("dir/object.bin", 10, False)
    assert info.version
    # Some stores stamp whole seconds: allow for it and for clock skew.
    assert before - 5 <= info.mtime <= time.time() + 5


def test_stat_of_a_directory(store):
    store.write("d/e/f", b"x")
    info = store.stat("d/e")
    assert info.is_dir and info.size == 0 and info.path == "d/e"


def test_stat_missing_object(store):
    with pytest.raises(FileNotFoundError) as exc_info:
        store.stat("no/such/object")
    assert exc_info.value.errno == errno.ENOENT
    assert exc_info.value.filename.endswith("root/no/such/object")


def test_paths_are_normalised(store):
    store.write("x//y/./z", b"abc")
    assert store.stat("x/y/z").size == 3
    assert [o.path for o in store.list("x/")] == ["x/y/z"]


# -- list ---------------------------------------------------------------------------


def test_list_everything_in_order(filled):
    listed = list(filled.list())
    assert [o.path for o in listed] == sorted(KEYS)
    for info in listed:
        assert info == filled.stat(info.path)


@pytest.mark.parametrize("page_size", [1, 2, 3, 1000])
def test_list_pages(filled, page_size):
    assert [o.path for o in filled.list(page_size=page_size)] == sorted(KEYS)
    assert [o.path for o in filled.list("b/", page_size=page_size)] == ["b/x/y/z", "b/x1"]


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("a", ["a-b", "a/c", "a/d/e", "a0", "ab"]),
        ("a/", ["a/c", "a/d/e"]),
        ("a/d", ["a/d/e"]),
        ("b/x", ["b/x/y/z", "b/x1"]),
        ("b/x/", ["b/x/y/z"]),
        ("c", ["c"]),
        ("zzz", []),
        ("nothing/here/", []),
    ],
)
def test_list_prefix(filled, prefix, expected):
    assert [o.path for o in filled.list(prefix)] == expected


def test_list_start_after_resumes(filled):
    seen = []
    last = None
    while True:
        page = []
        for info in filled.list(start_after=last):
            page.append(info.path)
            if len(page) == 3:
                break
        if not page:
            break
        seen += page
        last = page[-1]
    assert seen == sorted(KEYS)


@per_example
@given(
    prefix=st.sampled_from(["", "a", "a/", "a/d", "b", "b/x", "b/x/", "c", "q"]),
    start_after=st.one_of(
        st.none(),
        st.sampled_from([*KEYS, "a", "a/", "a/d/", "b/", "b/x/y", "0", "zz"]),
        st.text(alphabet="ab-0xyz", min_size=1, max_size=4),
    ),
    page_size=st.integers(1, 4),
)
def test_list_matches_reference(filled, prefix, start_after, page_size):
    expected = [
        k for k in KEYS if k.startswith(prefix) and (start_after is None or k > start_after)
    ]
    got = [o.path for o in filled.list(prefix, page_size=page_size, start_after=start_after)]
    assert got == sorted(expected)


def test_list_empty_store(store):
    assert list(store.list()) == []
    assert list(store.list("a/")) == []


def test_list_checks_arguments_at_call(store):
    with pytest.raises(ValueError, match=r"'\.\.'"):
        store.list("../x")
    with pytest.raises(ValueError, match="page_size"):
        store.list(page_size=0)
    with pytest.raises(TypeError, match="page_size"):
        store.list(page_size=2.0)
    with pytest.raises(ValueError, match="absolute"):
        store.list("/etc")


# -- read_into ----------------------------------------------------------------------

REFERENCE = payload(100_003, seed=1)


@pytest.fixture
def with_reference(store) -> UnderStore:
    store.write("ref.bin", REFERENCE)
    return store


@per_example
@given(offset=st.integers(0, len(REFERENCE) + 64), length=st.integers(0, 40_000))
def test_read_into_random_ranges(with_reference, offset, length):
    buf = bytearray(length)
    n = with_reference.read_into("ref.bin", offset, buf)
    expected = REFERENCE[offset : offset + length]
    assert n == len(expected)
    assert bytes(buf[:n]) == expected


def test_read_into_at_and_past_end(store):
    store.write("f", b"0123456789")
    buf = bytearray(4)
    assert store.read_into("f", 8, buf) == 2 and buf[:2] == b"89"
    assert store.read_into("f", 10, buf) == 0
    assert store.read_into("f", 1000, buf) == 0
    assert store.read_into("f", 0, bytearray()) == 0


def test_read_into_empty_object(store):
    store.write("empty", b"")
    assert store.stat("empty").size == 0
    assert store.read_into("empty", 0, bytearray(8)) == 0


def test_read_into_missing_object(store):
    with pytest.raises(FileNotFoundError):
        store.read_into("missing", 0, bytearray(8))
    with pytest.raises(FileNotFoundError):
        store.read_into("missing", 0, bytearray())


def test_read_into_numpy_and_views(store):
    data = payload(4096, seed=2)
    store.write("n", data)
    arr = np.zeros(1024, dtype=np.uint8)
    assert store.read_into("n", 100, arr) == 1024
    assert arr.tobytes() == data[100:1124]
    floats = np.zeros(8, dtype=np.float32)
    assert store.read_into("n", 0, floats) == 32
    assert floats.tobytes() == data[:32]
    grid = np.zeros((4, 16), dtype=np.uint8)
    assert store.read_into("n", 64, grid) == 64
    assert grid.tobytes() == data[64:128]
    backing = bytearray(b"." * 32)
    assert store.read_into("n", 0, memoryview(backing)[8:24]) == 16
    assert backing == b"." * 8 + data[:16] + b"." * 8


def test_read_into_torch_tensor(store):
    torch = pytest.importorskip("torch")
    data = payload(256, seed=3)
    store.write("t", data)
    tensor = torch.zeros(64, dtype=torch.uint8)
    assert store.read_into("t", 10, tensor) == 64
    assert bytes(tensor.numpy()) == data[10:74]


def test_read_into_bad_arguments(store):
    store.write("f", b"abc")
    with pytest.raises(TypeError, match="read-only"):
        store.read_into("f", 0, b"xxx")
    with pytest.raises(ValueError, match="contiguous"):
        store.read_into("f", 0, np.zeros(8, dtype=np.uint8)[::2])
    with pytest.raises(TypeError, match="not a buffer"):
        store.read_into("f", 0, "abc")
    with pytest.raises(ValueError, match="offset"):
        store.read_into("f", -1, bytearray(2))
    with pytest.raises(TypeError, match="offset"):
        store.read_into("f", True, bytearray(2))
    with pytest.raises(TypeError, match="version"):
        store.read_into("f", 0, bytearray(2), version=3)


def test_read_into_checks_version(store):
    old = store.write("v", b"first version")
    buf = bytearray(5)
    assert store.read_into("v", 0, buf, version=old.version) == 5
    new = store.write("v", b"other version")
    assert new.version != old.version
    with pytest.raises(ObjectChangedError) as exc_info:
        store.read_into("v", 0, buf, version=old.version)
    assert exc_info.value.errno == errno.ESTALE
    assert isinstance(exc_info.value, OSError)
    assert store.read_into("v", 6, buf, version=new.version) == 5 and buf == b"versi"
    with pytest.raises(ObjectChangedError):
        store.read_into("v", 1000, buf, version=old.version)  # past the end as well


@per_example
@given(spare=st.integers(0, 64), offset=st.sampled_from([0, 1, 4096]))
def test_read_into_with_the_size_reads_the_whole_object(with_reference, spare, offset):
    info = with_reference.stat("ref.bin")
    buf = bytearray(info.size + spare)
    n = with_reference.read_into("ref.bin", offset, buf, version=info.version, size=info.size)
    assert n == info.size - offset
    assert bytes(buf[:n]) == REFERENCE[offset:]
    assert not any(buf[n:])


def test_read_into_with_the_size_checks_version(store):
    old = store.write("w", b"first version")
    new = store.write("w", b"other version")
    with pytest.raises(ObjectChangedError):
        store.read_into("w", 0, bytearray(13), version=old.version, size=old.size)
    buf = bytearray(13)
    assert store.read_into("w", 0, buf, version=new.version, size=new.size) == 13
    assert buf == b"other version"


def test_read_many_into_reports_each_object_apart(store):
    a = store.write("many/a", b"alpha")
    old = store.write("many/b", b"bravo!")
    b = store.write("many/b", b"beta..")
    bufs = [bytearray(5), bytearray(6), bytearray(6), bytearray(3), bytearray(4)]
    got = store.read_many_into(
        [
            ("many/a", bufs[0], a.version),
            ("many/b", bufs[1], b.version),
            ("many/b", bufs[2], old.version),  # changed since
            ("many/missing", bufs[3], None),
            ("../escape", bufs[4], None),
        ]
    )
    assert got[:2] == [5, 6] and bufs[0] == b"alpha" and bufs[1] == b"beta.."
    assert isinstance(got[2], ObjectChangedError)
    assert isinstance(got[3], FileNotFoundError)
    assert isinstance(got[4], (ValueError, OSError))
    assert store.read_many_into([]) == []


@per_example
@given(size=st.one_of(st.integers(max_value=-1), st.booleans(), st.floats(), st.text()))
def test_read_into_bad_size(with_reference, size):
    with pytest.raises(ValueError, match="size"):
        with_reference.read_into("ref.bin", 0, bytearray(8), size=size)


# -- fetch_into ---------------------------------------------------------------------


def spent(store: UnderStore, before: dict[str, int]) -> dict[str, int]:
    """Requests of each kind sent since ``before`` (a :meth:`requests` snapshot), the
    kinds with none left out."""
    return {k: n - before[k] for k, n in store.requests().items() if n != before[k]}


@per_example
@given(
    size=st.integers(0, 3000),
    offset=st.integers(0, 3100),
    length=st.integers(0, 3100),
    with_version=st.booleans(),
)
def test_fetch_into_matches_reference(store, size, offset, length, with_version):
    data = payload(size, seed=size)
    written = store.write("fetched", data)
    buf = bytearray(length)
    version = written.version if with_version else None
    n, info = store.fetch_into("fetched", offset, buf, version=version)
    expected = data[offset : offset + length]
    assert n == len(expected)
    assert bytes(buf[:n]) == expected
    assert not any(buf[n:])
    assert info == written


def test_fetch_into_whole_object_tells_what_stat_says(with_reference):
    buf = np.zeros(len(REFERENCE) + 100, dtype=np.uint8)
    n, info = with_reference.fetch_into("ref.bin", 0, buf)
    assert n == len(REFERENCE)
    assert buf[:n].tobytes() == REFERENCE
    assert info == with_reference.stat("ref.bin")
    assert (info.path, info.size, info.is_dir) == ("ref.bin", len(REFERENCE), False)


def test_fetch_into_ranges(with_reference):
    info = with_reference.stat("ref.bin")
    for offset, length in [(0, 1), (1, 4096), (50_000, 50_003), (100_000, 3), (99_999, 100)]:
        buf = bytearray(length)
        n, got = with_reference.fetch_into("ref.bin", offset, buf)
        assert bytes(buf[:n]) == REFERENCE[offset : offset + length]
        assert got == info


def test_fetch_into_at_and_past_end(store):
    written = store.write("f", b"0123456789")
    buf = bytearray(4)
    assert store.fetch_into("f", 8, buf) == (2, written) and buf[:2] == b"89"
    for offset in (10, 11, 1000):
        assert store.fetch_into("f", offset, bytearray(4)) == (0, written)
        assert store.fetch_into("f", offset, bytearray(4), version=written.version) == (
            0,
            written,
        )
    assert store.fetch_into("f", 0, bytearray()) == (0, written)
    assert store.fetch_into("f", 5, bytearray()) == (0, written)


def test_fetch_into_empty_object(store):
    written = store.write("empty", b"")
    assert written.size == 0
    for offset in (0, 1, 100):
        for length in (0, 8):
            assert store.fetch_into("empty", offset, bytearray(length)) == (0, written)
    assert store.fetch_into("empty", 0, bytearray(8), version=written.version) == (0, written)


def test_fetch_into_missing_object(store):
    for length in (8, 0):
        with pytest.raises(FileNotFoundError) as exc_info:
            store.fetch_into("missing", 0, bytearray(length))
        assert exc_info.value.errno == errno.ENOENT
        assert exc_info.value.filename.endswith("root/missing")


def test_fetch_into_checks_version(store):
    old = store.write("v", b"first version")
    new = store.write("v", b"other version")
    assert new.version != old.version
    for offset, length in [(0, 13), (0, 100), (6, 4), (12, 4), (13, 4), (1000, 4), (0, 0)]:
        with pytest.raises(ObjectChangedError) as exc_info:
            store.fetch_into("v", offset, bytearray(length), version=old.version)
        assert exc_info.value.errno == errno.ESTALE
    buf = bytearray(5)
    assert store.fetch_into("v", 6, buf, version=new.version) == (5, new)
    assert buf == b"versi"


def test_fetch_into_a_version_read_before(store):
    # What the worker does on a warm read after a cold one: the version the fetch told.
    store.write("w", b"0123456789")
    _, info = store.fetch_into("w", 0, bytearray(4))
    buf = bytearray(4)
    assert store.read_into("w", 4, buf, version=info.version) == 4 and buf == b"4567"
    store.write("w", b"abcdefghij")
    with pytest.raises(ObjectChangedError):
        store.read_into("w", 4, buf, version=info.version)


def test_fetch_into_bad_arguments(store):
    store.write("f", b"abc")
    with pytest.raises(TypeError, match="read-only"):
        store.fetch_into("f", 0, b"xxx")
    with pytest.raises(ValueError, match="offset"):
        store.fetch_into("f", -1, bytearray(2))
    with pytest.raises(TypeError, match="offset"):
        store.fetch_into("f", 1.0, bytearray(2))
    with pytest.raises(TypeError, match="version"):
        store.fetch_into("f", 0, bytearray(2), version=b"v")
    with pytest.raises(ValueError, match=r"'\.\.'"):
        store.fetch_into("../f", 0, bytearray(2))


# -- list_dir -----------------------------------------------------------------------


def level(store: UnderStore, path: str) -> list[tuple[str, bool]]:
    return [(o.path, o.is_dir) for o in store.list_dir(path)]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (
            "",
            [("a", True), ("a-b", False), ("a0", False), ("ab", False), ("b", True), ("c", False)],
        ),
        ("a", [("a/c", False), ("a/d", True)]),
        ("a/", [("a/c", False), ("a/d", True)]),
        ("./a/", [("a/c", False), ("a/d", True)]),
        ("a/d", [("a/d/e", False)]),
        ("b", [("b/x", True), ("b/x1", False)]),
        ("b/x", [("b/x/y", True)]),
        ("b/x/y", [("b/x/y/z", False)]),
    ],
)
def test_list_dir_one_level(filled, path, expected):
    assert level(filled, path) == expected


def test_list_dir_objects_are_what_stat_says(filled):
    for path in ("", "a", "b/x/y"):
        for info in filled.list_dir(path):
            if info.is_dir:
                assert (info.size, info.version) == (0, "")
                assert filled.stat(info.path).is_dir
            else:
                assert info == filled.stat(info.path)


def test_list_dir_nested_directories(store):
    for key in ["top/f1", "top/f2", "top/sub/g", "top/sub/deeper/h", "top/sub2/i", "top-x"]:
        store.write(key, key.encode())
    assert level(store, "top") == [
        ("top/f1", False),
        ("top/f2", False),
        ("top/sub", True),
        ("top/sub2", True),
    ]
    assert level(store, "top/sub") == [("top/sub/deeper", True), ("top/sub/g", False)]
    assert level(store, "top/sub/deeper") == [("top/sub/deeper/h", False)]
    assert level(store, "") == [("top", True), ("top-x", False)]


def test_list_dir_shows_nothing_outside_the_root(backend):
    store, parent = backend
    store.write("inside", b"in")
    assert level(store, "") == [("inside", False)]
    assert ("root", True) in level(parent, "")


def test_list_dir_empty_store(store):
    assert store.list_dir() == []
    assert store.list_dir("") == []


def test_list_dir_missing_directory(filled):
    if filled.scheme == "s3":
        # An object store cannot tell an empty prefix from a missing one, nor spends a
        # request to tell a prefix that is an object's name.
        assert filled.list_dir("nothing/here") == []
        assert filled.list_dir("c") == []
        return
    with pytest.raises(FileNotFoundError) as exc_info:
        filled.list_dir("nothing/here")
    assert exc_info.value.errno == errno.ENOENT
    with pytest.raises(NotADirectoryError) as exc_info:
        filled.list_dir("c")
    assert exc_info.value.errno == errno.ENOTDIR


def test_list_dir_bad_paths(store):
    for path in ("../x", "a/../../x", "/etc", "a\0b"):
        with pytest.raises(ValueError):
            store.list_dir(path)
    with pytest.raises(TypeError):
        store.list_dir(42)


# -- request counts -----------------------------------------------------------------

# Exact counts where they are the store's own: S3 counts HTTP requests, fsspec its calls
# to the filesystem. ``None``: the case raises ObjectChangedError.
FETCH_CASES = {
    # name: (content, offset, length, version) -> {scheme: requests}
    "small object, whole": (b"0123456789", 0, 100, None),
    "a range inside": (b"0123456789", 2, 4, None),
    "with its version": (b"0123456789", 2, 4, "current"),
    "past the end": (b"0123456789", 10, 4, None),
    "an empty buffer": (b"0123456789", 3, 0, None),
    "empty object": (b"", 0, 8, None),
    "empty object, past its end": (b"", 5, 8, None),
    "another version": (b"0123456789", 0, 8, "stale"),
}
FETCH_COSTS = {
    "s3": {
        "small object, whole": {"GET": 1},
        "a range inside": {"GET": 1},
        "with its version": {"GET": 1},
        "past the end": {"GET": 1, "HEAD": 1},
        "an empty buffer": {"HEAD": 1},
        "empty object": {"GET": 2},
        "empty object, past its end": {"GET": 1, "HEAD": 1},
        "another version": {"GET": 1},
    },
    "memory": {
        "small object, whole": {"HEAD": 2, "GET": 1},
        "a range inside": {"HEAD": 2, "GET": 1},
        "with its version": {"HEAD": 2, "GET": 1},
        "past the end": {"HEAD": 1},
        "an empty buffer": {"HEAD": 1},
        "empty object": {"HEAD": 1},
        "empty object, past its end": {"HEAD": 1},
        "another version": {"HEAD": 1},
    },
    "file": dict.fromkeys(FETCH_CASES, {"GET": 1}),
}


@pytest.mark.parametrize("case", FETCH_CASES)
def test_fetch_into_request_counts(store, case):
    content, offset, length, version = FETCH_CASES[case]
    written = store.write("obj", content)
    if version == "current":
        version = written.version
    before = store.requests()
    if version == "stale":
        with pytest.raises(ObjectChangedError):
            store.fetch_into("obj", offset, bytearray(length), version="0123-stale")
    else:
        assert store.fetch_into("obj", offset, bytearray(length), version=version)[1] == written
    cost = spent(store, before)
    assert cost == FETCH_COSTS[store.scheme][case]


def test_request_counts_of_other_operations(store):
    exact = store.scheme in ("s3", "memory")
    before = store.requests()
    store.write("a/x", b"x")
    # a write is followed by a stat, for the new version (a local file: the same call)
    assert spent(store, before) == ({"PUT": 1, "HEAD": 1} if exact else {"PUT": 1})
    before = store.requests()
    store.stat("a/x")
    assert spent(store, before) == {"HEAD": 1}
    before = store.requests()
    assert len(store.list_dir("a")) == 1
    assert spent(store, before) == {"LIST": 1}
    before = store.requests()
    assert len(list(store.list())) == 1
    assert spent(store, before) == {"LIST": 1}
    before = store.requests()
    store.read_into("a/x", 0, bytearray(1))
    assert spent(store, before) == {"GET": 1}
    before = store.requests()
    store.delete("a/x")
    assert spent(store, before) == ({"HEAD": 1, "DELETE": 1} if exact else {"DELETE": 1})


def test_requests_is_a_snapshot_of_every_kind(store):
    snapshot = store.requests()
    assert set(snapshot) == {"GET", "HEAD", "LIST", "PUT", "POST", "DELETE"}
    assert all(isinstance(n, int) and n >= 0 for n in snapshot.values())
    snapshot["GET"] = -1
    assert store.requests()["GET"] >= 0
    store.write("f", b"x")
    store.close()
    assert store.requests()["PUT"] == 1  # still readable once closed


# -- write --------------------------------------------------------------------------


def test_overwrite_changes_version_and_content(store):
    first = store.write("o", b"aaaa")
    second = store.write("o", b"bbbb")  # same size, right after
    assert second.version != first.version
    buf = bytearray(4)
    store.read_into("o", 0, buf)
    assert buf == b"bbbb"


def test_write_sources(store):
    store.write("from-bytes", b"bytes")
    store.write("from-bytearray", bytearray(b"bytearray"))
    store.write("from-numpy", np.arange(4, dtype=np.uint16))
    store.write("from-file", io.BytesIO(b"file object"))
    assert store.stat("from-numpy").size == 8
    buf = bytearray(11)
    assert store.read_into("from-file", 0, buf) == 11 and buf == b"file object"
    buf = np.zeros(4, dtype=np.uint16)
    store.read_into("from-numpy", 0, buf)
    assert buf.tolist() == [0, 1, 2, 3]


def test_write_rejects_bad_sources(store):
    with pytest.raises(TypeError, match="not str"):
        store.write("s", "text")
    with pytest.raises(TypeError, match="bytes-like"):
        store.write("s", 42)
    with pytest.raises(TypeError, match="binary mode"):
        store.write("s", io.StringIO("text"))
    with pytest.raises(FileNotFoundError):
        store.stat("s")


@pytest.mark.parametrize("source", ["buffer", "file"])
def test_write_large_object_in_parts(store, source):
    data = payload(12 * MiB + 12345, seed=4)
    info = store.write("big.bin", data if source == "buffer" else io.BytesIO(data))
    assert info.size == len(data)
    out = np.empty(len(data), dtype=np.uint8)
    assert store.read_into("big.bin", 0, out) == len(data)
    assert out.tobytes() == data
    # Around the 5 MiB part boundaries.
    for offset in (5 * MiB - 3, 10 * MiB - 3):
        buf = bytearray(6)
        store.read_into("big.bin", offset, buf)
        assert bytes(buf) == data[offset : offset + 6]


# -- delete -------------------------------------------------------------------------


def test_delete(store):
    store.write("gone/soon", b"x")
    store.delete("gone/soon")
    with pytest.raises(FileNotFoundError):
        store.stat("gone/soon")
    assert list(store.list()) == []
    with pytest.raises(FileNotFoundError):
        store.delete("gone/soon")
    store.delete("gone/soon", missing_ok=True)


# -- path safety, lifecycle ---------------------------------------------------------

BAD_PATHS = ["../outside", "a/../../outside", "a/..", "/etc/passwd", "a\0b", "", ".", "/"]


@pytest.mark.parametrize("path", BAD_PATHS)
def test_bad_paths_rejected(store, path):
    with pytest.raises(ValueError):
        store.stat(path)
    with pytest.raises(ValueError):
        store.read_into(path, 0, bytearray(4))
    with pytest.raises(ValueError):
        store.write(path, b"x")
    with pytest.raises(ValueError):
        store.delete(path)


def test_non_str_paths_rejected(store):
    with pytest.raises(TypeError):
        store.stat(42)
    with pytest.raises(TypeError):
        store.write(b"bytes-path", b"x")


def test_root_is_a_boundary(backend):
    store, parent = backend
    store.write("inside", b"in")
    assert parent.stat("root/inside").size == 2
    assert [o.path for o in store.list()] == ["inside"]
    with pytest.raises(FileNotFoundError):
        store.stat("outside")


def test_closed_store(store):
    store.write("f", b"x")
    store.close()
    store.close()
    with pytest.raises(ValueError, match="closed"):
        store.stat("f")
    with pytest.raises(ValueError, match="closed"):
        store.read_into("f", 0, bytearray(1))


def test_context_manager_closes(store):
    with store as s:
        s.write("f", b"x")
    with pytest.raises(ValueError, match="closed"):
        s.stat("f")
