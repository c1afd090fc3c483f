"""``shoal://`` through fsspec, with the module's worker: a local directory mounted at
``/data`` and a moto bucket at ``/s3``; what fsspec, pandas, pyarrow and zarr read must be
what the directory and the bucket hold."""

from __future__ import annotations

import errno
import multiprocessing
import os
import pickle
import posixpath
from datetime import datetime, timezone

import fsspec
import numpy as np
import pytest
from fsspec.implementations.local import LocalFileSystem
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal._config import load_config
from shoal._fsspec import ShoalFile, ShoalFileSystem

PAGE = 64 << 10  # the page size of the tests' configuration (conftest.SMALL_CONFIG)
#: The files of the local tree, by path under ``/data``: their sizes.
TREE = {
    "tree/big.bin": 1_000_003,
    "tree/empty.bin": 0,
    "tree/one.bin": 1,
    "tree/sub1/page.bin": PAGE + 1,
    "tree/sub1/pages.bin": 3 * PAGE + 17,
    "tree/sub1/deep/leaf.bin": 1000,
    "tree/sub2/other.bin": PAGE - 1,
}
#: Objects of the bucket, by key (under ``/s3``): their sizes.
OBJECTS = {"objs/o1": 5 * PAGE + 3, "objs/deep/o2": 777}
LINES = b"".join(b"line %d %s\n" % (i, b"x" * (i * 37 % 5000)) for i in range(400)) + b"tail"


def random_bytes(size: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


@pytest.fixture(scope="module")
def data(shared, tmp_path_factory):
    """Writes the files, mounts them; ``{shoal path: bytes}`` and the local directory."""
    import pandas as pd
    import zarr

    client, bucket, _ = shared
    root = tmp_path_factory.mktemp("fsspec")
    files = {}
    for i, (rel, size) in enumerate(TREE.items()):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        files[f"/data/{rel}"] = random_bytes(size, i)
        (root / rel).write_bytes(files[f"/data/{rel}"])
    (root / "tree" / "emptydir").mkdir()
    (root / "lines.txt").write_bytes(LINES)
    files["/data/lines.txt"] = LINES
    frame = pd.DataFrame({"n": np.arange(500), "x": np.linspace(0, 1, 500), "s": ["a", "b"] * 250})
    frame.to_csv(root / "x.csv", index=False)
    frame.to_parquet(root / "x.parquet", row_group_size=100)
    array = np.arange(40 * 30, dtype="float64").reshape(40, 30)
    zarr.create_array(str(root / "arr.zarr"), data=array, chunks=(16, 8))
    for i, (key, size) in enumerate(OBJECTS.items()):
        files[f"/s3/{key}"] = random_bytes(size, 100 + i)
        bucket.put(key, files[f"/s3/{key}"])
    client.mount("/data", root.as_uri())
    return {"files": files, "root": root, "frame": frame, "array": array, "client": client}


@pytest.fixture(autouse=True)
def fresh_instances():
    """``fsspec.filesystem("shoal")`` (and pandas, zarr ... which call it) makes an
    instance for this module's ``$SHOAL_HOME``, never one cached by another module."""
    ShoalFileSystem.clear_instance_cache()
    yield
    ShoalFileSystem.clear_instance_cache()


@pytest.fixture(scope="module")
def fs(data):
    """A filesystem of the module's worker, found as users find it: by ``$SHOAL_HOME``."""
    fs = ShoalFileSystem(skip_instance_cache=True)
    yield fs
    fs.client.close()


@pytest.fixture
def own_fs(data):
    """A filesystem with a client of its own (for spying on its calls)."""
    fs = ShoalFileSystem(skip_instance_cache=True)
    yield fs
    fs.client.close()


def spy(monkeypatch, obj, name: str, keep=lambda *args, **kwargs: (args, kwargs)) -> list:
    """Record the calls of ``obj.name``: per call, what ``keep`` makes of its arguments."""
    calls = []
    real = getattr(obj, name)

    def recording(*args, **kwargs):
        calls.append(keep(*args, **kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(obj, name, recording)
    return calls


# --------------------------------------------------------------------- entry and URLs


def test_registered_protocol_and_urls(data):
    files = data["files"]
    fs = fsspec.filesystem("shoal")
    assert isinstance(fs, ShoalFileSystem)
    assert fsspec.filesystem("shoal") is fs  # fsspec's instance cache
    with fsspec.open("shoal:///data/tree/sub1/page.bin", "rb") as f:
        assert isinstance(f, ShoalFile)
        assert f.read() == files["/data/tree/sub1/page.bin"]
    # The host part of a URL is the path's first component.
    with fsspec.open("shoal://data/tree/one.bin", "rb") as f:
        assert f.read() == files["/data/tree/one.bin"]
    _, path = fsspec.core.url_to_fs("shoal:///data/tree/big.bin")
    assert path == "/data/tree/big.bin"
    assert fs.unstrip_protocol("/data/x") == "shoal:///data/x"
    with fsspec.open("shoal:///data/lines.txt", "rt", encoding="ascii") as f:
        assert f.readline() == "line 0 \n"


def test_paths_are_stripped_to_shoal_paths():
    strip = ShoalFileSystem._strip_protocol
    assert strip("shoal:///a/b") == "/a/b"
    assert strip("shoal://a/b") == "/a/b"
    assert strip("/a/b/") == "/a/b"
    assert strip("shoal://") == "/"
    assert strip("shoal:///") == "/"
    assert strip(["shoal:///a", "/b/"]) == ["/a", "/b"]


# --------------------------------------------------------------------- metadata


def local_view(root) -> dict[str, dict]:
    """What fsspec's LocalFileSystem says of the directory, named as Shoal paths."""
    local = LocalFileSystem()
    found = local.find(str(root / "tree"), withdirs=True, detail=True)
    return {
        "/data/" + posixpath.relpath(name, str(root)): {"type": d["type"], "size": d["size"]}
        for name, d in found.items()
    }


def test_find_ls_info_agree_with_the_directory(fs, data):
    root = data["root"]
    expected = local_view(root)
    found = fs.find("/data/tree", withdirs=True, detail=True)
    assert sorted(found) == sorted(expected)
    for name, d in found.items():
        assert d["name"] == name
        assert d["type"] == expected[name]["type"], name
        if d["type"] == "file":
            assert d["size"] == expected[name]["size"], name
            info = fs.info(name)
            st = os.stat(root / name[len("/data/") :])
            assert info["size"] == st.st_size
            assert info["mtime"] == pytest.approx(st.st_mtime)
            assert info["version"]
    assert fs.find("/data/tree") == sorted(n for n, d in expected.items() if d["type"] == "file")
    assert fs.ls("/data/tree", detail=False) == sorted(
        "/data/tree/" + n for n in os.listdir(root / "tree")
    )
    assert fs.ls("/data/tree/one.bin") == [fs.info("/data/tree/one.bin")]
    assert fs.ls("/data/tree/emptydir") == []
    assert fs.isdir("/data/tree/emptydir") and fs.isdir("/data/tree")
    assert fs.isfile("/data/tree/one.bin") and not fs.isfile("/data/tree")
    assert fs.info("/data/tree/sub1")["type"] == "directory"


def test_walk_glob_du_agree_with_the_directory(fs, data):
    root = data["root"]
    local = LocalFileSystem()
    base = str(root)

    def shoal(name: str) -> str:
        return "/data/" + posixpath.relpath(name, base)

    walked = sorted(
        (shoal(d), sorted(dirs), sorted(files)) for d, dirs, files in local.walk(base + "/tree")
    )
    assert sorted((d, sorted(ds), sorted(fs_)) for d, ds, fs_ in fs.walk("/data/tree")) == walked
    for pattern in ["tree/*", "tree/**/*.bin", "tree/sub?/*", "tree/**", "tree/*/deep/*"]:
        assert fs.glob("/data/" + pattern) == [shoal(n) for n in local.glob(f"{base}/{pattern}")], (
            pattern
        )
    assert fs.du("/data/tree") == local.du(base + "/tree") == sum(TREE.values())
    assert fs.du("/data/tree", total=False) == {
        shoal(n): size for n, size in local.du(base + "/tree", total=False).items()
    }


def test_root_mount_points_and_s3(fs, data):
    files = data["files"]
    assert [(e["name"], e["type"]) for e in fs.ls("/")] == [
        ("/data", "directory"),
        ("/s3", "directory"),
    ]
    assert fs.info("/") == {
        "name": "/",
        "size": 0,
        "type": "directory",
        "mtime": 0.0,
        "version": "",
    }
    assert fs.find("/s3") == sorted(f"/s3/{k}" for k in OBJECTS)
    assert fs.info("/s3/objs/deep")["type"] == "directory"
    info = fs.info("/s3/objs/o1")
    assert info["size"] == OBJECTS["objs/o1"] and info["type"] == "file"
    assert info["version"]  # the ETag
    assert fs.cat_file("/s3/objs/deep/o2") == files["/s3/objs/deep/o2"]
    assert fs.modified("/s3/objs/o1").tzinfo is timezone.utc


def test_ukey_checksum_modified(fs, data):
    root = data["root"]
    path = "/data/tree/sub2/other.bin"
    st = os.stat(root / "tree/sub2/other.bin")
    assert fs.modified(path) == datetime.fromtimestamp(st.st_mtime, tz=timezone.utc)
    assert fs.ukey(path) == fs.ukey(path) != fs.ukey("/data/tree/one.bin")
    assert fs.checksum(path) == int(fs.ukey(path), 16)
    with pytest.raises(NotImplementedError, match="no modified time"):
        fs.modified("/data")
    with pytest.raises(NotImplementedError):
        fs.created(path)  # Shoal knows no creation time


def test_a_changed_file_is_seen_after_invalidate_cache(own_fs, data):
    fs, root = own_fs, data["root"]
    local = root / "changing" / "f.bin"
    local.parent.mkdir()
    local.write_bytes(b"first version")
    fs.invalidate_cache("/data")
    before = fs.ukey("/data/changing/f.bin")
    assert fs.cat_file("/data/changing/f.bin") == b"first version"
    local.write_bytes(b"the second version, longer")  # another size: another version
    fs.invalidate_cache("/data/changing")
    assert fs.ukey("/data/changing/f.bin") != before
    assert fs.cat_file("/data/changing/f.bin") == b"the second version, longer"
    (root / "changing" / "g.bin").write_bytes(b"g")
    assert fs.ls("/data/changing", detail=False, refresh=True) == [
        "/data/changing/f.bin",
        "/data/changing/g.bin",
    ]


# --------------------------------------------------------------------- reads


@settings(max_examples=50, deadline=None)
@given(
    which=st.sampled_from(sorted(TREE) + sorted(f"s3:{k}" for k in OBJECTS)),
    start=st.none() | st.integers(-1_100_000, 1_100_000),
    end=st.none() | st.integers(-1_100_000, 1_100_000),
)
def test_cat_file_is_python_slicing(fs, data, which, start, end):
    path = f"/s3/{which[3:]}" if which.startswith("s3:") else f"/data/{which}"
    expected = data["files"][path][start:end]
    got = fs.cat_file(path, start, end)
    assert type(got) is bytes
    assert got == expected


def test_cat_ranges_is_one_batch(own_fs, data, monkeypatch):
    fs, files = own_fs, data["files"]
    paths = [
        "/data/tree/big.bin",
        "/data/tree/big.bin",
        "shoal:///data/tree/sub1/pages.bin",
        "/s3/objs/o1",
        "/data/tree/empty.bin",
        "/data/tree/one.bin",
        "/data/tree/sub1/page.bin",
        "/s3/objs/deep/o2",
    ]
    starts = [0, 999_000, PAGE - 5, -PAGE - 10, None, 5, 10**9, None]
    ends = [PAGE + 1, None, -3, None, None, None, None, -(10**9)]
    reads = spy(monkeypatch, fs.client, "read_many_into")
    singles = spy(monkeypatch, fs.client, "read_into")
    stats = spy(monkeypatch, fs.client, "stat_many")
    got = fs.cat_ranges(paths, starts, ends)
    expected = [
        files[fs._strip_protocol(p)][s:e] for p, s, e in zip(paths, starts, ends, strict=True)
    ]
    assert got == expected
    assert all(type(g) is bytes for g in got)
    assert len(reads) == 1 and len(stats) == 1 and singles == []
    # Ranges that are empty are not asked for.
    assert len(reads[0][0][0]) == 4
    assert (
        fs.cat_ranges(["/data/tree/big.bin"] * 3, 10, 20)
        == [files["/data/tree/big.bin"][10:20]] * 3
    )


def test_cat_ranges_errors_in_place(fs, data):
    files = data["files"]
    got = fs.cat_ranges(
        ["/data/tree/one.bin", "/data/tree/nothing", "/data/tree", "/data/tree/big.bin"],
        [0, 0, 0, -5],
        [None, 5, 5, None],
    )
    assert got[0] == files["/data/tree/one.bin"]
    assert isinstance(got[1], FileNotFoundError) and got[1].filename == "/data/tree/nothing"
    assert isinstance(got[2], IsADirectoryError)
    assert got[3] == files["/data/tree/big.bin"][-5:]
    with pytest.raises(FileNotFoundError, match="/data/tree/nothing"):
        fs.cat_ranges(["/data/tree/one.bin", "/data/tree/nothing"], 0, 5, on_error="raise")
    with pytest.raises(ValueError, match="2 paths but 1 starts"):
        fs.cat_ranges(["/data/a", "/data/b"], [0], [1])


def test_cat_many_files_is_one_batch(own_fs, data, monkeypatch):
    fs, files = own_fs, data["files"]
    reads = spy(monkeypatch, fs.client, "read_many_into")
    got = fs.cat("/data/tree/sub1/*.bin")
    assert got == {p: files[p] for p in ["/data/tree/sub1/page.bin", "/data/tree/sub1/pages.bin"]}
    assert len(reads) == 1
    listed = ["/data/tree/one.bin", "shoal:///s3/objs/o1"]
    assert fs.cat(listed) == {p: files[p] for p in ["/data/tree/one.bin", "/s3/objs/o1"]}
    assert fs.cat("/data/tree/one.bin") == files["/data/tree/one.bin"]
    assert len(reads) == 3
    with_missing = ["/data/tree/one.bin", "/data/tree/missing"]
    assert fs.cat(with_missing, on_error="omit") == {
        "/data/tree/one.bin": files["/data/tree/one.bin"]
    }
    returned = fs.cat(with_missing, on_error="return")
    assert isinstance(returned["/data/tree/missing"], FileNotFoundError)
    with pytest.raises(FileNotFoundError):
        fs.cat(with_missing)


def test_head_tail(fs, data):
    big = data["files"]["/data/tree/big.bin"]
    assert fs.head("/data/tree/big.bin", 100) == big[:100]
    assert fs.tail("/data/tree/big.bin", 100) == big[-100:]
    assert fs.tail("/data/tree/big.bin", 0) == b""
    assert fs.tail("/data/tree/one.bin", 100) == data["files"]["/data/tree/one.bin"]


def test_open_seek_read(fs, data):
    big = data["files"]["/data/tree/big.bin"]
    with fs.open("/data/tree/big.bin", block_size=PAGE) as f:
        assert f.size == len(big)
        assert f.read(10) == big[:10]
        assert f.seek(PAGE - 3) == PAGE - 3
        assert f.read(7) == big[PAGE - 3 : PAGE + 4]
        assert f.seek(100, os.SEEK_CUR) == PAGE + 104
        assert f.read(5) == big[PAGE + 104 : PAGE + 109]
        assert f.seek(-20, os.SEEK_END) == len(big) - 20
        assert f.read() == big[-20:]
        assert f.read() == b""
        assert f.seek(3 * PAGE + 1) == 3 * PAGE + 1
        assert f.read(2 * PAGE) == big[3 * PAGE + 1 : 5 * PAGE + 1]
        assert f.info()["version"] == fs.info("/data/tree/big.bin")["version"]
    # Not "mmap": fsspec's MMapCache leaves its temporary file for the garbage collector.
    for cache_type in ["none", "bytes", "blockcache", "first", "adaptive", "background"]:
        with fs.open("/data/tree/big.bin", cache_type=cache_type, block_size=100_000) as f:
            f.seek(99_990)
            assert f.read(30) == big[99_990:100_020], cache_type
            f.seek(0)
            assert f.read() == big, cache_type


def test_each_fetch_is_one_read_into(own_fs, data, monkeypatch):
    fs = own_fs
    big = data["files"]["/data/tree/big.bin"]
    with fs.open("/data/tree/big.bin", cache_type="none") as f:
        reads = spy(
            monkeypatch, fs.client, "read_into", lambda buf, path, offset: (len(buf), path, offset)
        )
        f.seek(1000)
        chunk = f.read(PAGE + 5)
    assert type(chunk) is bytes and chunk == big[1000 : 1000 + PAGE + 5]
    assert reads == [(PAGE + 5, "/data/tree/big.bin", 1000)]


def test_readline_and_iteration(fs, data):
    with fs.open("/data/lines.txt", block_size=4096) as f:
        assert list(f) == LINES.splitlines(keepends=True)
    with fs.open("/data/lines.txt", block_size=1000) as f:
        assert f.readline() == b"line 0 \n"
        f.seek(len(LINES) - 20)
        rest = LINES[len(LINES) - 20 :]
        assert f.readline() == rest.split(b"\n")[0] + b"\n"
        assert f.readline() == b"tail"
        assert f.readline() == b""
    with fs.open("/data/lines.txt", "r", encoding="ascii", block_size=2048) as t:
        assert t.readlines() == LINES.decode().splitlines(keepends=True)


# --------------------------------------------------------------------- errors


def test_missing_paths_and_directories(fs, data):
    for call in (fs.info, fs.cat_file, fs.open, fs.ls, fs.ukey):
        with pytest.raises(FileNotFoundError) as raised:
            call("/data/tree/no-such-file")
        assert raised.value.filename == "/data/tree/no-such-file", call
        assert raised.value.errno == errno.ENOENT
    with pytest.raises(FileNotFoundError, match="/nowhere/x"):
        fs.info("/nowhere/x")
    with pytest.raises(NotADirectoryError) as raised:
        fs.info("/data/tree/one.bin/below")
    assert raised.value.filename == "/data/tree/one.bin/below"
    assert not fs.exists("/data/tree/no-such-file")
    assert not fs.exists("/data/tree/one.bin/below")
    assert fs.exists("/data/tree") and fs.exists("/") and fs.exists("/data/tree/one.bin")
    for call in (fs.open, fs.cat_file):
        with pytest.raises(IsADirectoryError) as raised:
            call("/data/tree/sub1")
        assert raised.value.errno == errno.EISDIR, call
    with pytest.raises(IsADirectoryError):
        fs.open("/")


@pytest.mark.parametrize(
    "bad, message",
    [
        ("relative/path", "must be absolute"),
        ("/data/tree/\0x", "NUL byte"),
        ("/data/../etc/passwd", "'..'"),
        ("shoal:///data/tree/../one.bin", "'..'"),
    ],
)
def test_bad_paths_raise_value_error_naming_them(fs, data, bad, message):
    for call in (fs.info, fs.ls, fs.cat_file, fs.open, fs.exists):
        with pytest.raises(ValueError, match=message) as raised:
            call(bad)
        assert repr(fs._strip_protocol(bad)) in str(raised.value), call


@pytest.mark.parametrize(
    "write",
    [
        lambda fs, p: fs.open(p, "wb"),
        lambda fs, p: fs.open(p, "ab"),
        lambda fs, p: fs.open(p, "xb"),
        lambda fs, p: fs.open(p, "w"),
        lambda fs, p: fs.write_text(p, "text"),
        lambda fs, p: fs.pipe(p, b"data"),
        lambda fs, p: fs.pipe({p: b"data"}),
        lambda fs, p: fs.pipe_file(p, b"data"),
        lambda fs, p: fs.touch(p),
        lambda fs, p: fs.mkdir(p),
        lambda fs, p: fs.makedirs(p, exist_ok=True),
        lambda fs, p: fs.rmdir(p),
        lambda fs, p: fs.rm(p, recursive=True),
        lambda fs, p: fs.rm_file(p),
        lambda fs, p: fs.mv(p, "/data/elsewhere"),
        lambda fs, p: fs.copy("/data/tree/one.bin", p),
        lambda fs, p: fs.cp_file("/data/tree/one.bin", p),
        lambda fs, p: fs.put(__file__, p),
        lambda fs, p: fs.put_file(__file__, p),
    ],
)
def test_writes_are_refused_with_erofs(fs, data, write):
    path = "/data/tree/one.bin"
    with pytest.raises(OSError) as raised:
        write(fs, path)
    assert raised.value.errno == errno.EROFS
    assert "read-only" in str(raised.value) and path in str(raised.value)
    assert fs.cat_file(path) == data["files"][path]


def test_options_are_checked(data, tmp_path):
    with pytest.raises(TypeError, match="unknown option"):
        ShoalFileSystem(metadata_tll=3)
    with pytest.raises(ValueError, match="either a client"):
        ShoalFileSystem(client=data["client"], etcd="http://127.0.0.1:2379")
    with pytest.raises(TypeError, match="client must be a shoal Client"):
        ShoalFileSystem(client="not a client")
    with pytest.raises(TypeError, match="config must be"):
        ShoalFileSystem(config=42)
    with pytest.raises(ValueError, match="metadata_ttl"):
        ShoalFileSystem(metadata_ttl=-1)
    with pytest.raises(ValueError, match="timeout"):
        ShoalFileSystem(timeout=0)


def test_config_client_and_instance_cache(data):
    client = data["client"]
    home = client.config.home
    from_file = ShoalFileSystem(config=os.path.join(home, "config.yaml"), skip_instance_cache=True)
    from_config = ShoalFileSystem(config=load_config(), metadata_ttl=0, skip_instance_cache=True)
    given = ShoalFileSystem(client=client)
    try:
        for fs in (from_file, from_config, given):
            assert fs.cat_file("/data/tree/one.bin") == data["files"]["/data/tree/one.bin"]
        assert given.client is client
        assert from_file.client.config.home == home
        # A filesystem given a client is never taken from fsspec's instance cache.
        assert ShoalFileSystem(client=client) is not given
        assert ShoalFileSystem() is ShoalFileSystem()
    finally:
        from_file.client.close()
        from_config.client.close()


# --------------------------------------------------------------------- processes


def test_pickle_filesystem_and_open_file(fs, data):
    files = data["files"]
    again = pickle.loads(pickle.dumps(fs))
    assert again.cat_file("/data/tree/sub1/page.bin") == files["/data/tree/sub1/page.bin"]
    with_client = ShoalFileSystem(client=data["client"])
    copy = pickle.loads(pickle.dumps(with_client))
    try:
        assert copy.client is not data["client"]
        assert copy.client.config == data["client"].config
        assert copy.cat_file("/s3/objs/o1", 5, 50) == files["/s3/objs/o1"][5:50]
    finally:
        copy.client.close()
    big = files["/data/tree/big.bin"]
    with fs.open("/data/tree/big.bin", block_size=PAGE) as f:
        f.seek(PAGE * 2 + 11)
        clone = pickle.loads(pickle.dumps(f))
    with clone:
        assert isinstance(clone, ShoalFile)
        assert clone.tell() == PAGE * 2 + 11 and clone.blocksize == PAGE
        assert clone.read(1000) == big[PAGE * 2 + 11 : PAGE * 2 + 1011]


_INHERITED: dict = {}


def _read_in_child(path: str) -> tuple[int, bytes, bool]:
    fs = _INHERITED["fs"]
    return os.getpid(), fs.cat_file(path), fs._client is not None


@pytest.mark.parametrize("used_before_fork", [False, True])
def test_filesystem_made_before_fork_reads_in_children(data, used_before_fork):
    files = data["files"]
    fs = ShoalFileSystem(skip_instance_cache=True)
    if used_before_fork:
        assert fs.cat_file("/data/tree/one.bin") == files["/data/tree/one.bin"]
    else:
        assert fs._client is None  # made on first use only
    paths = ["/data/tree/big.bin", "/s3/objs/o1", "/data/tree/sub1/pages.bin", "/data/lines.txt"]
    _INHERITED["fs"] = fs
    try:
        with multiprocessing.get_context("fork").Pool(2) as pool:
            results = pool.map(_read_in_child, paths)
    finally:
        _INHERITED.clear()
    assert [r[1] for r in results] == [files[p] for p in paths]
    assert all(pid != os.getpid() and made for pid, _, made in results)
    assert (fs._client is not None) == used_before_fork
    assert fs.cat_file("/s3/objs/deep/o2") == files["/s3/objs/deep/o2"]
    fs.client.close()


# --------------------------------------------------------------------- libraries


def test_pandas_reads_csv_and_parquet(data):
    import pandas as pd

    frame = data["frame"]
    pd.testing.assert_frame_equal(pd.read_csv("shoal:///data/x.csv"), frame)
    pd.testing.assert_frame_equal(pd.read_parquet("shoal:///data/x.parquet"), frame)


def test_pyarrow_reads_parquet_through_the_filesystem(fs, data):
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    frame = data["frame"]
    table = pq.read_table("/data/x.parquet", filesystem=fs)
    pd_frame = table.to_pandas()
    assert pd_frame.equals(frame)
    wrapped = pafs.PyFileSystem(pafs.FSSpecHandler(fs))
    info = wrapped.get_file_info("/data/x.parquet")
    assert info.size == os.path.getsize(data["root"] / "x.parquet")
    subset = pq.read_table("/data/x.parquet", filesystem=wrapped, columns=["x"])
    assert subset.column("x").to_pylist() == frame["x"].tolist()
    assert pq.ParquetFile("/data/x.parquet", filesystem=wrapped).metadata.num_row_groups == 5


def test_zarr_reads_an_array_written_locally(fs, data):
    import zarr
    from fsspec.implementations.asyn_wrapper import AsyncFileSystemWrapper
    from zarr.storage import FsspecStore

    array = data["array"]
    by_url = zarr.open_array("shoal:///data/arr.zarr", mode="r")
    np.testing.assert_array_equal(by_url[:], array)
    np.testing.assert_array_equal(by_url[3:20, 5:9], array[3:20, 5:9])
    store = FsspecStore(
        AsyncFileSystemWrapper(fs, asynchronous=True), read_only=True, path="/data/arr.zarr"
    )
    by_store = zarr.open_array(store, mode="r")
    assert by_store.shape == array.shape and by_store.chunks == (16, 8)
    np.testing.assert_array_equal(by_store[:], array)
