"""_fs.read_items_beneath: files opened a window at a time, their cold bytes asked of the
disk all together, read right whatever the page cache holds and however few descriptors
the process may open."""

from __future__ import annotations

import errno
import os
import resource

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.engine import _fs


def payload(size: int, seed: int) -> bytes:
    return bytes((seed * 31 + i * 7) % 251 for i in range(size))


def uncache(path) -> None:
    """Drop the page cache's copy of a file (written back first)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


@pytest.fixture
def root_fd(tmp_path):
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    yield fd
    os.close(fd)


def version_of(path) -> str:
    st_ = os.stat(path)
    return f"{st_.st_mtime_ns}-{st_.st_size}"


def read(root_fd, names, bufs, versions=None) -> list[int]:
    """``_fs.read_items_beneath`` of ``names`` into ``bufs``, each of its version."""
    versions = versions or [None] * len(names)
    return _fs.read_items_beneath(root_fd, list(zip(names, bufs, versions, strict=True)))


def check(got, names, bufs, want: dict[str, bytes]) -> None:
    for name, buf, n in zip(names, bufs, got, strict=True):
        data = want.get(name)
        if data is None:
            assert n == -errno.ENOENT, name
            continue
        assert n == min(len(data), len(buf)), name  # its version as asked, else -ESTALE
        assert bytes(buf[:n]) == data[:n]


def test_a_batch_longer_than_a_window_with_every_kind_of_failure(tmp_path, root_fd):
    os.mkdir(tmp_path / "dir")
    os.symlink("f000", tmp_path / "link")
    names, bufs, want = [], [], {}
    for i in range(300):
        name = f"f{i:03d}"
        data = payload(i * 13 % 5000, i)
        (tmp_path / name).write_bytes(data)
        want[name] = data
        names.append(name)
        bufs.append(bytearray(len(data) + (i % 5) - 2 if len(data) > 2 else len(data)))
        if i % 50 == 7:  # failures among them, in every window
            names += ["missing", "dir", "link", "../f000"]
            bufs += [bytearray(8) for _ in range(4)]
    for name in names[::3]:
        if name in want:
            uncache(tmp_path / name)
    versions = [version_of(tmp_path / n) if n in want else None for n in names]
    got = read(root_fd, names, bufs, versions)
    for name, res in zip(names, got, strict=True):
        if name == "dir":
            assert res == -errno.EISDIR
        elif name == "link":
            assert res in (-errno.ELOOP, -errno.EXDEV)
        elif name == "../f000":
            assert res == -errno.EINVAL
    kept = [i for i, n in enumerate(names) if n in want or n == "missing"]
    check([got[i] for i in kept], [names[i] for i in kept], [bufs[i] for i in kept], want)


def test_few_descriptors_left_shorten_the_window_not_the_batch(tmp_path, root_fd):
    names = [f"f{i:03d}" for i in range(200)]
    want = {}
    for i, name in enumerate(names):
        want[name] = payload(100 + i, i)
        (tmp_path / name).write_bytes(want[name])
    bufs = [bytearray(len(want[n])) for n in names]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Descriptors are numbered lowest free first: a few left below the limit.
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 8, hard))
    versions = [version_of(tmp_path / n) for n in names]
    try:
        got = read(root_fd, names, bufs, versions)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    check(got, names, bufs, want)


def test_no_descriptor_left_fails_each_file_with_emfile(tmp_path, root_fd):
    (tmp_path / "a").write_bytes(b"alpha")
    (tmp_path / "b").write_bytes(b"bravo")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    held = []
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 4, hard))
    try:
        while True:  # take every descriptor the limit leaves
            try:
                held.append(os.open(os.devnull, os.O_RDONLY))
            except OSError:
                break
        got = read(root_fd, ["a", "b"], [bytearray(5), bytearray(5)])
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert got == [-errno.EMFILE, -errno.EMFILE]


def test_a_file_partly_in_the_page_cache(tmp_path, root_fd):
    data = payload(256 << 10, 3)
    (tmp_path / "big").write_bytes(data)
    uncache(tmp_path / "big")
    fd = os.open(tmp_path / "big", os.O_RDONLY)
    try:
        os.pread(fd, 4096, 0)  # the first pages (and some readahead) cached, not all
    finally:
        os.close(fd)
    buf = bytearray(len(data) + 1)
    [n] = read(root_fd, ["big"], [buf], [version_of(tmp_path / "big")])
    assert n == len(data)
    assert bytes(buf[:n]) == data


@settings(max_examples=40, deadline=None)
@given(
    files=st.lists(
        st.tuples(st.integers(0, 20_000), st.integers(-3, 3), st.booleans()), max_size=40
    )
)
def test_whatever_the_sizes_and_the_cache_the_bytes_are_the_files(tmp_path_factory, files):
    tmp_path = tmp_path_factory.mktemp("whole")
    names, bufs, want = [], [], {}
    for i, (size, slack, cold) in enumerate(files):
        name = f"f{i}"
        data = payload(size, i)
        (tmp_path / name).write_bytes(data)
        if cold:
            uncache(tmp_path / name)
        want[name] = data
        names.append(name)
        bufs.append(bytearray(max(0, size + slack)))
    versions = [version_of(tmp_path / n) for n in names]
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        got = read(fd, names, bufs, versions)
    finally:
        os.close(fd)
    check(got, names, bufs, want)


def test_names_that_are_not_utf8_are_read_by_their_bytes(tmp_path, root_fd):
    raw = b"caf\xe9-\xff"  # not UTF-8: its str form holds surrogates
    with open(os.path.join(os.fsencode(tmp_path), raw), "wb") as f:
        f.write(b"latin")
    buf = bytearray(5)
    assert read(root_fd, [os.fsdecode(raw), raw], [buf, bytearray(5)]) == [5, -errno.EINVAL]
    assert buf == b"latin"  # the bytes form is not taken: a path is a str


@settings(max_examples=50, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 300), min_size=1, max_size=20),
    asked=st.lists(st.sampled_from(["own", "other", "none", "missing"]), min_size=20, max_size=20),
)
def test_read_items_reads_each_file_of_its_version_only(tmp_path_factory, sizes, asked):
    root = tmp_path_factory.mktemp("versions")
    items, want = [], []
    for i, (size, ask) in enumerate(zip(sizes, asked[: len(sizes)], strict=True)):
        name = f"f{i}" if ask != "missing" else f"gone{i}"
        if ask != "missing":
            (root / name).write_bytes(payload(size, i))
            st_ = os.stat(root / name)
            own = f"{st_.st_mtime_ns}-{st_.st_size}"
        else:
            own = "1-1"
        version = {"own": own, "other": f"{own}0", "none": None, "missing": own}[ask]
        items.append((name, bytearray(size), version))
        want.append(
            -errno.ENOENT if ask == "missing" else -errno.ESTALE if ask == "other" else size
        )
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        got = _fs.read_items_beneath(fd, items)
    finally:
        os.close(fd)
    assert got == want
    for i, (n, (_, buf, _)) in enumerate(zip(got, items, strict=True)):
        if n >= 0:
            assert bytes(buf) == payload(sizes[i], i)


def test_read_items_leaves_what_it_does_not_take_to_the_caller(tmp_path, root_fd):
    (tmp_path / "a").write_bytes(b"abc")
    good = bytearray(3)
    items = [
        ("a", good, None),
        (str(tmp_path / "a"), bytearray(3), None),  # absolute
        ("../a", bytearray(3), None),
        ("", bytearray(3), None),
        (b"a", bytearray(3), None),  # not a str
        ("a", b"abc", None),  # not writable
        ("a", memoryview(bytearray(6))[::2], None),  # not contiguous
        ("a", bytearray(3), b"1-3"),  # a version that is not a str
        ("a", bytearray(3)),  # not a triple
        ["a", bytearray(3), None],  # not a tuple
    ]
    got = _fs.read_items_beneath(root_fd, items)
    assert got == [3] + [-errno.EINVAL] * (len(items) - 1)
    assert bytes(good) == b"abc"
