"""LocalStore: never outside its root, atomic writes, a version that always moves."""

from __future__ import annotations

import errno
import os

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from shoal.control.ufs import LocalStore, open_store


@pytest.fixture
def root(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "secret.txt").write_bytes(b"outside the root")
    (tmp_path / "outdir").mkdir()
    (tmp_path / "outdir" / "f").write_bytes(b"outside too")
    return tmp_path / "root"


@pytest.fixture
def store(root):
    return LocalStore(root)


def test_symlink_out_of_the_root_is_refused(store, root):
    os.symlink(root.parent / "secret.txt", root / "escape")
    with pytest.raises(PermissionError, match="symbolic link") as exc_info:
        store.stat("escape")
    assert exc_info.value.errno == errno.EACCES
    with pytest.raises(PermissionError):
        store.read_into("escape", 0, bytearray(8))
    assert list(store.list()) == []


def test_many_reads_refuse_links_and_tell_each_error(store, root):
    os.symlink(root.parent / "secret.txt", root / "escape")
    (root / "ok").write_bytes(b"fine")
    (root / "dir").mkdir()
    bufs = [bytearray(16) for _ in range(4)]
    got = store.read_many_into(
        [("escape", bufs[0], None), ("ok", bufs[1], None), ("dir", bufs[2], None),
         ("missing", bufs[3], None)]
    )  # fmt: skip
    assert isinstance(got[0], PermissionError) and b"outside" not in bufs[0]
    assert got[1] == 4 and bufs[1][:4] == b"fine"
    assert isinstance(got[2], IsADirectoryError)
    assert isinstance(got[3], FileNotFoundError)


def test_symlinked_directory_out_of_the_root_is_refused(store, root):
    os.symlink(root.parent / "outdir", root / "linkdir")
    with pytest.raises(PermissionError):
        store.read_into("linkdir/f", 0, bytearray(8))
    with pytest.raises(PermissionError):
        store.write("linkdir/new", b"x")
    assert not (root.parent / "outdir" / "new").exists()
    with pytest.raises(PermissionError):
        store.write("linkdir/sub/new", b"x")
    assert not (root.parent / "outdir" / "sub").exists()
    assert list(store.list()) == []


def test_symlink_inside_the_root_is_refused_too(store, root):
    # No link is followed at all: one swapped for its target between two calls could
    # otherwise lead anywhere.
    (root / "real").write_bytes(b"data")
    os.symlink(root / "real", root / "alias")
    os.symlink("real", root / "relative")
    for name in ("alias", "relative"):
        with pytest.raises(PermissionError, match="symbolic link"):
            store.read_into(name, 0, bytearray(4))
        with pytest.raises(PermissionError, match="symbolic link"):
            store.stat(name)
    assert [o.path for o in store.list()] == ["real"]


def test_deleting_a_link_never_touches_its_target(store, root):
    os.symlink(root.parent / "secret.txt", root / "escape")
    store.delete("escape")
    assert not os.path.lexists(root / "escape")
    assert (root.parent / "secret.txt").read_bytes() == b"outside the root"


def test_absolute_paths_inside_the_root(store, root):
    store.write("a/b", b"x")
    assert store.stat(str(root / "a" / "b")).path == "a/b"
    with pytest.raises(ValueError, match="outside the store root"):
        store.stat(str(root.parent / "secret.txt"))
    with pytest.raises(ValueError, match=r"'\.\.'"):
        store.stat(f"{root}/../secret.txt")
    with pytest.raises(ValueError, match="outside"):
        store.stat(f"{root}x/file")  # shares a string prefix, not a directory


def test_root_given_through_a_link(root):
    link = root.parent / "link-to-root"
    os.symlink(root, link)
    store = LocalStore(link)
    store.write("f", b"x")
    assert (root / "f").read_bytes() == b"x"
    assert store.stat(str(link / "f")).size == 1


def test_writes_are_atomic_and_leave_no_temporary_files(store, root):
    store.write("dir/f", b"old")
    store.write("dir/f", b"new content")
    assert sorted(os.listdir(root / "dir")) == ["f"]
    assert (root / "dir" / "f").read_bytes() == b"new content"


def test_failed_write_keeps_the_old_object(store, root):
    store.write("f", b"old")

    class Broken:
        def read(self, n=-1):
            raise OSError(errno.EIO, "source failed")

    with pytest.raises(OSError, match="source failed"):
        store.write("f", Broken())
    assert (root / "f").read_bytes() == b"old"
    assert os.listdir(root) == ["f"]


def test_leftover_temporary_files_are_not_listed(store, root):
    (root / ".shoal-tmp-0123").write_bytes(b"crash leftover")
    store.write("kept", b"x")
    assert [o.path for o in store.list()] == ["kept"]


def test_names_not_utf8_are_left_out_of_listings_with_a_warning(store, root, caplog):
    raw = os.fsencode(root)
    for name in (b"bad\xff", b"sub/caf\xe9", b"sub/ok"):
        os.makedirs(os.path.dirname(os.path.join(raw, name)), exist_ok=True)
        with open(os.path.join(raw, name), "wb") as f:
            f.write(b"x")
    os.makedirs(os.path.join(raw, b"dir\xfe", b"inner"))
    with open(os.path.join(raw, b"dir\xfe", b"inner", b"f"), "wb") as f:
        f.write(b"x")
    store.write("\u00e9t\u00e9", b"text")  # not ASCII, but UTF-8: kept
    with caplog.at_level("WARNING", logger="shoal.ufs"):
        assert [o.path for o in store.list()] == ["sub/ok", "\u00e9t\u00e9"]
        assert [(o.path, o.is_dir) for o in store.list_dir("")] == [
            ("sub", True),
            ("\u00e9t\u00e9", False),
        ]
        assert [o.path for o in store.list_dir("sub")] == ["sub/ok"]
    warned = [r.getMessage() for r in caplog.records]
    assert any("root: left out 2 of its names" in m for m in warned), warned
    assert any("sub: left out 1 of its names" in m for m in warned), warned


def test_same_size_rewrites_always_change_version(root):
    # File systems stamp mtimes from a coarse clock: back-to-back rewrites of one size
    # often share an mtime, and the store must still give each a new version.
    store = LocalStore(root, fsync=False)
    versions = [store.write("f", bytes([i]) * 16).version for i in range(50)]
    assert len(set(versions)) == len(versions)


def test_a_colliding_mtime_is_moved_on(tmp_path):
    # What the rewrite does when the clock did not tick: simulated with utime.
    old, new = tmp_path / "old", tmp_path / "new"
    old.write_bytes(b"aaaa")
    new.write_bytes(b"bbbb")
    os.utime(old, ns=(0, 1_700_000_000_000_000_000))
    os.utime(new, ns=(0, 1_700_000_000_000_000_000))
    LocalStore._bump_mtime(str(old), str(new))
    assert new.stat().st_mtime_ns == old.stat().st_mtime_ns + 1


def test_delete_prunes_empty_directories(store, root):
    store.write("a/b/c", b"x")
    store.write("a/keep", b"x")
    store.delete("a/b/c")
    assert not (root / "a" / "b").exists()
    assert (root / "a").exists()
    store.delete("a/keep")
    assert not (root / "a").exists()
    assert root.exists()


def test_directory_is_not_an_object(store, root):
    (root / "d").mkdir()
    with pytest.raises(IsADirectoryError):
        store.read_into("d", 0, bytearray(4))
    with pytest.raises(IsADirectoryError):
        store.delete("d")


def test_fifo_and_other_specials_are_not_listed(store, root):
    os.mkfifo(root / "pipe")
    store.write("f", b"x")
    assert [o.path for o in store.list()] == ["f"]


def test_options(root):
    assert LocalStore(root, fsync=False).write("f", b"x").size == 1
    with pytest.raises(TypeError, match="fsync"):
        LocalStore(root, fsync="no")
    with pytest.raises(ValueError, match="absolute"):
        LocalStore("relative/dir")
    with pytest.raises(TypeError):
        open_store(str(root), unknown_option=1)
    assert repr(LocalStore(root)) == f"LocalStore('file://{root}')"


def test_one_level_listing_skips_what_the_whole_listing_skips(store, root):
    """``list_dir`` (one native pass) and ``list`` tell the same objects of a directory:
    regular files with their stat, subdirectories, no link, FIFO or temporary file."""
    (root / "d" / "sub").mkdir(parents=True)
    (root / "d" / ".shoal-tmp-partial").write_bytes(b"half")
    (root / "d" / ".shoal-tmp-dir").mkdir()  # a directory of that name is a directory
    for name, size in (("a", 0), ("b.bin", 100), ("ünï", 7)):
        (root / "d" / name).write_bytes(b"x" * size)
    os.symlink(root / "d" / "a", root / "d" / "link")
    os.symlink(root / "d" / "sub", root / "d" / "dirlink")
    os.mkfifo(root / "d" / "fifo")
    got = store.list_dir("d")
    assert [(o.path, o.is_dir) for o in got] == [
        ("d/.shoal-tmp-dir", True), ("d/a", False), ("d/b.bin", False), ("d/sub", True),
        ("d/ünï", False),
    ]  # fmt: skip
    whole = {o.path: o for o in store.list("d/") if o.path.count("/") == 1}
    assert {o.path: o for o in got if not o.is_dir} == whole
    for o in got:
        if not o.is_dir:
            st = os.stat(root / o.path)
            assert (o.size, o.version, o.mtime) == (
                st.st_size,
                f"{st.st_mtime_ns}-{st.st_size}",
                st.st_mtime,
            )


@settings(max_examples=60, deadline=None)
@given(
    paths=st.sets(
        st.lists(st.text("a-b0.", min_size=1, max_size=3), min_size=1, max_size=3).map("/".join),
        max_size=25,
    ),
    prefix=st.sampled_from(["", "a", "a-", "a/", "b0"]),
    start_after=st.none()
    | st.lists(st.text("a-b0", min_size=1, max_size=3), min_size=1, max_size=2).map("/".join),
)
@example(paths={"a/x", "a-/x", "a.b", "a0/y/z", "a-b"}, prefix="", start_after=None)
def test_a_tree_is_listed_in_path_order(tmp_path_factory, paths, prefix, start_after):
    root = tmp_path_factory.mktemp("tree")
    made = []
    for path in sorted(paths, key=len):  # a path whose parent is a file is left out
        parts = path.split("/")
        if (
            any(p in (".", "..") for p in parts)
            or any("/".join(parts[:k]) in made for k in range(1, len(parts)))
            or any(m.startswith(path + "/") for m in made)
        ):
            continue
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(b"x")
        made.append(path)
    want = sorted(
        p for p in made if p.startswith(prefix) and (start_after is None or p > start_after)
    )
    store = LocalStore(root)
    assert [o.path for o in store.list(prefix, start_after=start_after)] == want
