"""LocalStore follows no symbolic link beneath its root, even one swapped in while it reads:
with openat2 and with the component walk that stands in for it."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import sys
import tempfile
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal.control.ufs import LocalStore
from shoal.engine import _fs

METHODS = [
    pytest.param(
        "openat2",
        marks=pytest.mark.skipif(
            not _fs.openat2_available(), reason="openat2 is not available here"
        ),
    ),
    "walk",
]
RACE_SECONDS = 2.0
PUBLIC = b"public bytes, served"
SECRET = b"SECRET bytes of a file outside the root"  # another size: stat would show it


@pytest.fixture(params=METHODS)
def method(request, monkeypatch) -> str:
    monkeypatch.setenv("SHOAL_OPEN_BENEATH", request.param)
    return request.param


@pytest.fixture
def root(tmp_path, method):
    (tmp_path / "root").mkdir()
    (tmp_path / "secret").write_bytes(SECRET)
    (tmp_path / "outdir").mkdir()
    (tmp_path / "outdir" / "f").write_bytes(SECRET)
    return tmp_path / "root"


@pytest.fixture
def store(root):
    with LocalStore(root) as store:
        assert store._method == os.environ["SHOAL_OPEN_BENEATH"]
        yield store


def _renameat2():
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        fn = libc.renameat2
    except AttributeError:
        pytest.skip("the C library has no renameat2")
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn


class Swapper(threading.Thread):
    """Exchanges two paths with renameat2(RENAME_EXCHANGE), as fast as it can."""

    AT_FDCWD = -100
    RENAME_EXCHANGE = 2

    def __init__(self, a: os.PathLike, b: os.PathLike):
        super().__init__(daemon=True)
        self.a, self.b = os.fsencode(a), os.fsencode(b)
        self.renameat2 = _renameat2()
        self.stop = threading.Event()
        self.swaps = 0
        self.error: OSError | None = None

    def run(self) -> None:
        while not self.stop.is_set():
            if self.renameat2(self.AT_FDCWD, self.a, self.AT_FDCWD, self.b, self.RENAME_EXCHANGE):
                code = ctypes.get_errno()
                self.error = OSError(code, os.strerror(code))
                return
            self.swaps += 1


@contextlib.contextmanager
def swapping(a: os.PathLike, b: os.PathLike):
    swapper = Swapper(a, b)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # hand the GIL over often: more interleavings
    swapper.start()
    try:
        yield swapper
    finally:
        swapper.stop.set()
        swapper.join()
        sys.setswitchinterval(interval)
    if swapper.error is not None:
        if swapper.error.errno in (errno.ENOSYS, errno.EINVAL):
            pytest.skip(f"RENAME_EXCHANGE is not supported here: {swapper.error}")
        raise swapper.error


@pytest.mark.slow
@pytest.mark.parametrize("swapped", ["file", "directory"])
def test_a_link_swapped_in_during_reads_never_serves_outside_bytes(store, root, swapped):
    if swapped == "file":
        (root / "obj").write_bytes(PUBLIC)
        os.symlink(root.parent / "secret", root / "swap")
        key, pair = "obj", (root / "obj", root / "swap")
    else:
        (root / "d").mkdir()
        (root / "d" / "f").write_bytes(PUBLIC)
        os.symlink(root.parent / "outdir", root / "swap")
        key, pair = "d/f", (root / "d", root / "swap")
    outcomes = {"public": 0, "refused": 0}
    leaked = []
    buf = bytearray(len(SECRET) + 16)
    with swapping(*pair) as swapper:
        deadline = time.monotonic() + RACE_SECONDS
        while time.monotonic() < deadline:
            try:
                n = store.read_into(key, 0, buf)
            except PermissionError as exc:
                assert exc.errno == errno.EACCES and "symbolic link" in str(exc)
                outcomes["refused"] += 1
            else:
                if bytes(buf[:n]) == PUBLIC:
                    outcomes["public"] += 1
                else:
                    leaked.append(bytes(buf[:n]))
            try:
                info = store.stat(key)
            except PermissionError:
                pass
            else:
                assert info.size == len(PUBLIC)
            assert all(o.size == len(PUBLIC) for o in store.list())
    assert swapper.swaps > 100
    assert leaked == []
    # Both sides of the race were seen: the test did race.
    assert outcomes["public"] > 0 and outcomes["refused"] > 0, outcomes


def test_linked_directory_in_the_middle_of_a_path_is_refused(store, root):
    (root / "a" / "real" / "b").mkdir(parents=True)
    (root / "a" / "real" / "b" / "f").write_bytes(PUBLIC)
    os.symlink("real", root / "a" / "link")  # inside the root, and still refused
    os.symlink(root.parent / "outdir", root / "a" / "out")
    for key in ("a/link/b/f", "a/out/f"):
        with pytest.raises(PermissionError, match="symbolic link"):
            store.read_into(key, 0, bytearray(64))
        with pytest.raises(PermissionError, match="symbolic link"):
            store.stat(key)
        with pytest.raises(PermissionError, match="symbolic link"):
            store.write(key + "-new", b"x")
        with pytest.raises(PermissionError, match="symbolic link"):
            store.write(key.rsplit("/", 1)[0] + "/sub/new", b"x")
        with pytest.raises(PermissionError, match="symbolic link"):
            store.delete(key)
    assert (root / "a" / "real" / "b" / "f").read_bytes() == PUBLIC
    assert sorted(os.listdir(root / "a" / "real" / "b")) == ["f"]
    assert sorted(os.listdir(root.parent / "outdir")) == ["f"]
    assert store.stat("a/real/b").is_dir


def test_links_to_files_and_directories_are_not_listed(store, root):
    store.write("dir/f", PUBLIC)
    os.symlink(root / "dir" / "f", root / "alias")  # inside the root
    os.symlink("dir", root / "dirlink")
    os.symlink(root.parent / "secret", root / "dir" / "escape")
    os.symlink(root.parent / "outdir", root / "outlink")
    os.symlink("missing", root / "dangling")
    assert [o.path for o in store.list()] == ["dir/f"]
    for key in ("alias", "dirlink/f", "dir/escape", "outlink/f", "dangling"):
        with pytest.raises(PermissionError):
            store.read_into(key, 0, bytearray(64))


def test_a_write_replaces_a_link_not_its_target(store, root):
    os.symlink(root.parent / "secret", root / "escape")
    info = store.write("escape", PUBLIC)
    assert info.size == len(PUBLIC)
    assert not (root / "escape").is_symlink()
    assert (root / "escape").read_bytes() == PUBLIC
    assert (root.parent / "secret").read_bytes() == SECRET


def test_the_root_is_held_open(store, root):
    # Swapping the root's path for a link after the store opened it redirects nothing.
    store.write("f", PUBLIC)
    os.rename(root, root.parent / "moved")
    os.symlink(root.parent / "outdir", root)
    buf = bytearray(64)
    assert buf[: store.read_into("f", 0, buf)] == PUBLIC
    assert [o.path for o in store.list()] == ["f"]


def test_special_files_are_not_read(store, root):
    os.mkfifo(root / "pipe")  # an open for reading would wait for a writer
    with pytest.raises(OSError, match="not a regular file") as exc_info:
        store.read_into("pipe", 0, bytearray(8))
    assert exc_info.value.errno == errno.EINVAL
    assert store.stat("pipe").size == 0
    assert list(store.list()) == []


def test_closing_releases_the_root(root):
    fds = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        LocalStore(root).close()
    for _ in range(20):
        LocalStore(root)  # dropped without close
    assert len(os.listdir("/proc/self/fd")) == fds


component = st.text(
    alphabet=st.characters(blacklist_characters="/\0", blacklist_categories=("Cs",)),
    min_size=1,
    max_size=8,
).filter(lambda c: c not in (".", "..") and not c.startswith(".shoal-tmp-"))


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(keys=st.lists(st.lists(component, min_size=1, max_size=4), min_size=1, max_size=4))
def test_objects_round_trip_beneath_the_root(method, keys):
    # Writes make directories beneath the root, deletes prune them: any set of paths.
    with tempfile.TemporaryDirectory() as tmp:
        store = LocalStore(tmp)
        written = {}
        for i, parts in enumerate(keys):
            key = "/".join(parts)
            if any(k.startswith(key + "/") or key.startswith(k + "/") for k in written):
                continue  # a file and a directory of one name
            data = f"{i}:{key}".encode()
            assert store.write(key, data) == store.stat(key)
            written[key] = data
        assert [o.path for o in store.list()] == sorted(written)
        for key, data in written.items():
            buf = bytearray(len(data) + 1)
            assert buf[: store.read_into(key, 0, buf)] == data
        for key in written:
            store.delete(key)
        assert os.listdir(tmp) == []
        store.close()
