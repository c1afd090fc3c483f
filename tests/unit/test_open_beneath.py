"""open_beneath: opens beneath a directory that follow no symbolic link, with openat2 and
with the component walk that stands in for it where seccomp or an old kernel refuses it."""

from __future__ import annotations

import errno
import os
import platform
import subprocess
import sys
import tempfile
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.engine import _fs

USING = [
    pytest.param(
        "openat2",
        marks=pytest.mark.skipif(
            not _fs.openat2_available(), reason="openat2 is not available here"
        ),
    ),
    "walk",
]


@pytest.fixture(params=USING)
def using(request) -> str:
    return request.param


@pytest.fixture
def tree(tmp_path):
    """``root/`` with ``a/b/f``, a link out of it and links inside it; ``secret`` and
    ``outdir/`` lie beside it."""
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "f").write_bytes(b"inside")
    (tmp_path / "secret").write_bytes(b"secret")
    (tmp_path / "outdir").mkdir()
    (tmp_path / "outdir" / "f").write_bytes(b"outside")
    os.symlink(tmp_path / "outdir", root / "a" / "out")  # absolute, out of the root
    os.symlink("b", root / "a" / "in")  # relative, inside the root
    os.symlink("b/f", root / "a" / "flink")
    os.symlink(tmp_path / "secret", root / "escape")
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    yield root, fd
    os.close(fd)


def read_all(fd: int) -> bytes:
    try:
        return os.read(fd, 1 << 16)
    finally:
        os.close(fd)


def test_opens_files_and_directories(tree, using):
    root, fd = tree
    assert read_all(_fs.open_beneath(fd, "a/b/f", os.O_RDONLY, using=using)) == b"inside"
    assert read_all(_fs.open_beneath(fd, "a//./b/f", os.O_RDONLY, using=using)) == b"inside"
    for path in ("a/b", ".", "a/"):
        d = _fs.open_beneath(fd, path, os.O_RDONLY | os.O_DIRECTORY, using=using)
        try:
            assert os.path.samestat(os.fstat(d), os.stat(root / path))
        finally:
            os.close(d)
    d = _fs.open_beneath(fd, "a/b/f", os.O_PATH, using=using)
    try:
        assert os.fstat(d).st_size == len(b"inside")
        assert os.get_inheritable(d) is False  # O_CLOEXEC is always added
    finally:
        os.close(d)


@pytest.mark.parametrize(
    "path",
    ["escape", "a/out/f", "a/out", "a/in/f", "a/in", "a/flink"],
)
@pytest.mark.parametrize(
    "flags",
    [
        os.O_RDONLY,
        os.O_PATH,
        os.O_PATH | os.O_NOFOLLOW,  # would open the link itself
        os.O_RDONLY | os.O_DIRECTORY,
        os.O_WRONLY | os.O_CREAT,
    ],
)
def test_any_link_in_the_path_is_refused(tree, using, path, flags):
    root, fd = tree
    with pytest.raises(PermissionError, match="symbolic link") as exc_info:
        os.close(_fs.open_beneath(fd, path, flags, using=using))
    assert exc_info.value.errno == errno.EACCES
    assert exc_info.value.filename == path
    assert (root.parent / "secret").read_bytes() == b"secret"
    assert os.listdir(root.parent / "outdir") == ["f"]


def test_creating_through_a_linked_directory_is_refused(tree, using):
    root, fd = tree
    with pytest.raises(PermissionError):
        _fs.open_beneath(fd, "a/out/new", os.O_WRONLY | os.O_CREAT | os.O_EXCL, using=using)
    assert not (root.parent / "outdir" / "new").exists()
    made = _fs.open_beneath(fd, "a/b/new", os.O_WRONLY | os.O_CREAT | os.O_EXCL, using=using)
    os.close(made)
    assert (root / "a" / "b" / "new").stat().st_mode & 0o777 == 0o600 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize(
    ("path", "flags", "error", "code"),
    [
        ("a/missing", os.O_RDONLY, FileNotFoundError, errno.ENOENT),
        ("a/missing/f", os.O_RDONLY, FileNotFoundError, errno.ENOENT),
        ("a/b/f/g", os.O_RDONLY, NotADirectoryError, errno.ENOTDIR),
        ("a/b/f", os.O_RDONLY | os.O_DIRECTORY, NotADirectoryError, errno.ENOTDIR),
        ("a/b", os.O_WRONLY, IsADirectoryError, errno.EISDIR),
    ],
)
def test_other_errors_keep_their_errno_and_path(tree, using, path, flags, error, code):
    _, fd = tree
    with pytest.raises(error) as exc_info:
        _fs.open_beneath(fd, path, flags, using=using)
    assert (exc_info.value.errno, exc_info.value.filename) == (code, path)


@pytest.mark.parametrize(
    ("path", "match"),
    [
        ("", "empty"),
        ("/etc/passwd", "absolute"),
        ("a/../b", "'..'"),
        ("..", "'..'"),
        ("a\0", "NUL"),
    ],
)
def test_bad_paths(tree, path, match):
    _, fd = tree
    with pytest.raises(ValueError, match=match):
        _fs.open_beneath(fd, path, os.O_RDONLY)


def test_bad_method_and_descriptor(tree):
    _, fd = tree
    with pytest.raises(ValueError, match="using"):
        _fs.open_beneath(fd, "a", os.O_PATH, using="realpath")
    with pytest.raises(OSError) as exc_info:
        _fs.open_beneath(987_654, "a", os.O_PATH, using="walk")
    assert exc_info.value.errno == errno.EBADF


def test_method_follows_the_environment(monkeypatch):
    monkeypatch.delenv("SHOAL_OPEN_BENEATH", raising=False)
    assert _fs.method() == ("openat2" if _fs.openat2_available() else "walk")
    monkeypatch.setenv("SHOAL_OPEN_BENEATH", "walk")
    assert _fs.method() == "walk"
    monkeypatch.setenv("SHOAL_OPEN_BENEATH", "realpath")
    with pytest.raises(ValueError, match="SHOAL_OPEN_BENEATH"):
        _fs.method()


# A filter that answers openat2 (437 on x86-64 and arm64) with an errno, as container
# runtimes do for system calls they do not know.
SECCOMP = textwrap.dedent(
    """
    import ctypes, errno, os, struct, sys

    def deny_openat2(code):
        prog = [
            (0x20, 0, 0, 0),  # load the system call number
            (0x15, 0, 1, 437),  # openat2?
            (0x06, 0, 0, 0x00050000 | code),  # then fail with code
            (0x06, 0, 0, 0x7FFF0000),  # else allow
        ]
        raw = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in prog))

        class Program(ctypes.Structure):
            _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

        libc = ctypes.CDLL(None, use_errno=True)
        program = Program(len(prog), ctypes.addressof(raw))
        if libc.prctl(38, 1, 0, 0, 0) or libc.prctl(22, 2, ctypes.byref(program), 0, 0):
            sys.exit(3)  # PR_SET_NO_NEW_PRIVS, then PR_SET_SECCOMP with a filter

    from shoal.engine import _fs

    code, root, when = getattr(errno, sys.argv[1]), sys.argv[2], sys.argv[3]
    if when == "after-probe":
        assert _fs.openat2_available()
    deny_openat2(code)
    if when == "before-probe":
        assert not _fs.openat2_available() and _fs.method() == "walk"
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    using = "openat2" if when == "after-probe" else None
    f = _fs.open_beneath(fd, "a/b/f", os.O_RDONLY, using=using)
    assert os.read(f, 100) == b"inside"
    try:
        _fs.open_beneath(fd, "a/in/f", os.O_RDONLY)
    except PermissionError:
        print("refused")
    """
)


@pytest.mark.parametrize("code", ["ENOSYS", "EPERM"])
@pytest.mark.parametrize("when", ["before-probe", "after-probe"])
@pytest.mark.skipif(
    platform.machine() not in ("x86_64", "aarch64"), reason="the filter is written for 437"
)
def test_openat2_refused_by_seccomp_falls_back_to_the_walk(tree, code, when):
    if when == "after-probe" and not _fs.openat2_available():
        pytest.skip("openat2 is not available here")
    root, _ = tree
    done = subprocess.run(
        [sys.executable, "-c", SECCOMP, code, str(root), when],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode == 3:
        pytest.skip("this process may not add a seccomp filter")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "refused"


component = st.text(
    alphabet=st.characters(blacklist_characters="/\0", blacklist_categories=("Cs",)),
    min_size=1,
    max_size=8,
).filter(lambda c: c not in (".", ".."))


@settings(max_examples=60, deadline=None)
@given(
    parts=st.lists(component, min_size=1, max_size=5),
    link_at=st.integers(min_value=0, max_value=4),
    inside=st.booleans(),
)
def test_both_methods_agree_on_any_path(parts, link_at, inside):
    # The same file for both methods; a link at any component refused by both.
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, "root")
        path = "/".join(parts)
        os.makedirs(os.path.join(root, *parts[:-1]))
        with open(os.path.join(root, path), "wb") as f:
            f.write(b"x")
        fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
        try:
            expected = os.stat(os.path.join(root, path))
            for using in ("openat2", "walk") if _fs.openat2_available() else ("walk",):
                got = _fs.open_beneath(fd, path, os.O_RDONLY, using=using)
                try:
                    assert os.path.samestat(os.fstat(got), expected)
                finally:
                    os.close(got)
            # Move one component aside and put a link to it (or out of the root) instead.
            at = min(link_at, len(parts) - 1)
            real = os.path.join(root, *parts[: at + 1])
            aside = os.path.join(root if inside else tmp, "moved-aside-target")
            os.rename(real, aside)
            os.symlink(aside if inside else os.path.relpath(aside, os.path.dirname(real)), real)
            for using in ("openat2", "walk") if _fs.openat2_available() else ("walk",):
                with pytest.raises(PermissionError, match="symbolic link"):
                    _fs.open_beneath(fd, path, os.O_RDONLY, using=using)
        finally:
            os.close(fd)


def test_list_sorted_tells_files_and_directories_as_stat_does(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub-b").mkdir()
    for name, size in (("b.bin", 100), ("a", 0), ("ünï", 7), (".tmp-x", 3), ("z\u00e9", 1)):
        (tmp_path / name).write_bytes(b"x" * size)
    raw = os.fsencode(tmp_path)
    os.mkdir(os.path.join(raw, b"dir\xfe"))  # names not UTF-8: left out, counted
    with open(os.path.join(raw, b"bad\xff"), "wb"):
        pass
    os.symlink(tmp_path / "a", tmp_path / "link")
    os.symlink(tmp_path / "sub", tmp_path / "dirlink")
    os.mkfifo(tmp_path / "fifo")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(2):  # read from the start each time
            files, dirs, odd = _fs.list_sorted(fd, "p/", lambda *a: a, ".tmp-")
            assert (dirs, odd) == (["sub", "sub-b"], 2)
            assert [f[0] for f in files] == ["p/a", "p/b.bin", "p/z\u00e9", "p/ünï"]
            for path, size, version, mtime in files:
                st = os.stat(tmp_path / path[2:])
                assert (size, version, mtime) == (
                    st.st_size,
                    f"{st.st_mtime_ns}-{st.st_size}",
                    st.st_mtime,
                )
    finally:
        os.close(fd)
    with pytest.raises(OSError) as err:
        _fs.list_sorted(10**6, "", tuple)  # not a descriptor
    assert err.value.errno == errno.EBADF
    fd = os.open(tmp_path / "a", os.O_RDONLY)
    try:
        with pytest.raises(OSError) as err:
            _fs.list_sorted(fd, "", tuple)  # not a directory
        assert err.value.errno == errno.ENOTDIR
    finally:
        os.close(fd)


@settings(max_examples=30, deadline=None)
@given(
    names=st.sets(
        st.text(
            st.characters(exclude_categories=["Cs"], exclude_characters="/\0"),
            min_size=1,
            max_size=20,
        ),
        max_size=40,
    )
)
def test_list_sorted_orders_names_as_python_orders_str(tmp_path_factory, names):
    root = tmp_path_factory.mktemp("names")
    names = {n for n in names if n not in (".", "..") and len(n.encode()) <= 255}
    for name in names:
        (root / name).write_bytes(b"")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        files, dirs, odd = _fs.list_sorted(fd, "", lambda path, *_: path)
    finally:
        os.close(fd)
    assert (files, dirs, odd) == (sorted(names), [], 0)


def test_list_sorted_of_many_entries_tells_each_once(tmp_path):
    """More entries than its first buffers hold: every file and directory once, in
    order, links and other kinds left out, a name of 255 bytes whole."""
    names = {f"f{i:05d}" for i in range(2 * 4096 + 3)} | {"n" * 255}
    for name in names:
        (tmp_path / name).write_bytes(b"")
    subdirs = {f"d{i}" for i in range(5)}
    for name in subdirs:
        (tmp_path / name).mkdir()
    os.symlink(tmp_path / "f00000", tmp_path / "link")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        files, dirs, odd = _fs.list_sorted(fd, "", lambda path, *_: path)
    finally:
        os.close(fd)
    assert files == sorted(names)
    assert dirs == sorted(subdirs)
    assert odd == 0
