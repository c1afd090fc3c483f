"""The FUSE mount, mounted for real (``shoal fuse mount`` as a user runs it) in a temporary
directory and always unmounted: plain tools and ``open()`` see Shoal's namespace as a
read-only local disk, errors carry the right errno, and the worker may die under it."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal._testing import fuse_mounted
from shoal.fuse import is_mounted


def shoal_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", "shoal", *args], capture_output=True, text=True, timeout=120
    )
    if check:
        assert done.returncode == 0, done.stderr
    return done


#: The pids ``shoal fuse mount`` printed (the supervisors of the mounts), latest last.
MOUNTED: list[int] = []


@contextlib.contextmanager
def mounted(mountpoint: Path, log: Path, *options: str):
    """``shoal fuse mount`` at ``mountpoint``: its pid; unmounted and its process gone on
    exit, whatever happened (checked)."""
    try:
        with fuse_mounted(str(mountpoint), str(log), *options) as pid:
            assert is_mounted(str(mountpoint))
            MOUNTED.append(pid)
            yield pid
    except BaseException:
        if log.exists():  # the FUSE process's own account, shown with the failure
            print(f"--- {log}:\n{log.read_text(errors='replace')}")
        raise
    assert not is_mounted(str(mountpoint))


def make_tree(root: Path) -> dict[str, bytes]:
    """A small dataset: nested directories, an empty file, a multi-page file, odd names."""
    rng = __import__("random").Random(7)
    files = {
        "train/0001.bin": rng.randbytes(100_000),
        "train/0002.bin": rng.randbytes(1),
        "train/deep/er/x.txt": b"hello\n",
        "val/empty": b"",
        "val/with space.txt": b"spaced out\n",
        "big.bin": rng.randbytes(3 * (1 << 20) + 12345),
    }
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return files


@pytest.fixture
def fuse(client, tmp_path):
    """``(mountpoint / "d", files, data dir, client)``: a local directory mounted at ``/d``
    in a worker of its own, the whole namespace under a FUSE mount."""
    data = tmp_path / "data"
    files = make_tree(data)
    client.mount("/d", data.as_uri())
    mp = tmp_path / "mnt"
    with mounted(mp, tmp_path / "fuse.log"):
        yield mp / "d", files, data, client


def test_namespace_as_directories(fuse):
    root, files, data, _ = fuse
    assert sorted(os.listdir(root.parent)) == ["d"]
    found = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            p = Path(dirpath) / name
            found[str(p.relative_to(root))] = p.stat().st_size
    assert found == {rel: len(b) for rel, b in files.items()}
    # df shows the cache: its capacity, and what the cached files take.
    vfs = os.statvfs(root)
    assert vfs.f_blocks * vfs.f_frsize == 16 << 20  # the test worker's one tier
    assert 0 < vfs.f_bfree <= vfs.f_blocks
    st_ = (root / "big.bin").stat()
    assert st_.st_size == len(files["big.bin"])
    assert abs(st_.st_mtime - (data / "big.bin").stat().st_mtime) < 1
    assert st_.st_mode & 0o777 == 0o444 and (root / "train").is_dir()


def test_plain_tools_read_it_as_a_local_disk(fuse, tmp_path):
    root, files, data, _ = fuse
    # md5sum, cat, find, du and cp agree with the local directory.
    ours = subprocess.run(["md5sum", "big.bin", "train/0001.bin"], cwd=root, capture_output=True,
                          text=True, check=True).stdout  # fmt: skip
    local = subprocess.run(["md5sum", "big.bin", "train/0001.bin"], cwd=data, capture_output=True,
                           text=True, check=True).stdout  # fmt: skip
    assert ours == local
    cat = subprocess.run(
        ["cat", str(root / "train/deep/er/x.txt")], capture_output=True, check=True
    )
    assert cat.stdout == b"hello\n"
    names = subprocess.run(["find", ".", "-type", "f"], cwd=root, capture_output=True, text=True,
                           check=True).stdout.split("\n")  # fmt: skip
    assert sorted(n[2:] for n in names if n) == sorted(files)
    du = subprocess.run(["du", "-ab", "big.bin"], cwd=root, capture_output=True, text=True,
                        check=True).stdout  # fmt: skip
    assert int(du.split()[0]) == len(files["big.bin"])
    subprocess.run(["cp", "-r", str(root), str(tmp_path / "copy")], check=True)
    for rel, content in files.items():
        assert (tmp_path / "copy" / rel).read_bytes() == content
    # tar archives it whole.
    subprocess.run(["tar", "cf", str(tmp_path / "d.tar"), "-C", str(root), "."], check=True)
    with tarfile.open(tmp_path / "d.tar") as tar:
        got = {m.name[2:]: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    assert got == files


def test_open_seek_read(fuse):
    root, files, _, _ = fuse
    big = files["big.bin"]
    with open(root / "big.bin", "rb", buffering=0) as f:
        assert f.read(10) == big[:10]
        f.seek((1 << 20) - 5)
        assert f.read(1 << 20) == big[(1 << 20) - 5 : (2 << 20) - 5]
        f.seek(len(big) - 3)
        assert f.read(100) == big[-3:]
        assert f.read(100) == b""
    assert hashlib.sha256((root / "big.bin").read_bytes()).digest() == hashlib.sha256(big).digest()
    assert (root / "val/empty").read_bytes() == b""
    assert (root / "val/with space.txt").read_text() == "spaced out\n"


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(offset=st.integers(0, 4 << 20), length=st.integers(0, 3 << 20))
def test_ranges_match_the_file(fuse, offset, length):
    root, files, _, _ = fuse
    big = files["big.bin"]
    fd = os.open(root / "big.bin", os.O_RDONLY)
    try:
        assert os.pread(fd, length, offset) == big[offset : offset + length]
    finally:
        os.close(fd)


def test_errors_carry_the_right_errno(fuse):
    root, _, _, _ = fuse
    with pytest.raises(FileNotFoundError):
        (root / "nope").read_bytes()
    with pytest.raises(FileNotFoundError):
        os.stat(root.parent / "no-such-mount")
    with pytest.raises(IsADirectoryError):
        (root / "train").read_bytes()
    with pytest.raises(NotADirectoryError):
        os.stat(root / "big.bin" / "x")
    for attempt in (
        lambda: os.open(root / "big.bin", os.O_RDWR),
        lambda: os.open(root / "new", os.O_WRONLY | os.O_CREAT),
        lambda: os.mkdir(root / "newdir"),
        lambda: os.unlink(root / "big.bin"),
        lambda: os.rename(root / "big.bin", root / "moved"),
        lambda: os.rmdir(root / "val"),
        lambda: os.chmod(root / "big.bin", 0o600),
    ):
        with pytest.raises(OSError) as info:
            attempt()
        assert info.value.errno == errno.EROFS, info.value


def test_a_worker_killed_under_the_mount_costs_no_error(fuse, daemons, shoal_home):
    root, files, _, client = fuse
    assert (root / "train/0001.bin").read_bytes() == files["train/0001.bin"]
    first = daemons.kill(shoal_home)
    # Files not read yet (so not in the kernel's page cache) still read right: from the
    # under-store while no worker answers, then through the worker the client starts again.
    assert (root / "big.bin").read_bytes() == files["big.bin"]
    assert (root / "val/with space.txt").read_bytes() == files["val/with space.txt"]
    assert sorted(os.listdir(root / "train")) == ["0001.bin", "0002.bin", "deep"]
    deadline = time.monotonic() + 30
    while daemons.pid(shoal_home) in (None, first) and time.monotonic() < deadline:
        (root / "train/0002.bin").read_bytes()
        time.sleep(0.05)
    assert daemons.pid(shoal_home) not in (None, first), "no worker came back"
    # Killed again, mid-listing of a fresh mount point: the mount itself stays up.
    daemons.kill(shoal_home)
    assert (root / "train/deep/er/x.txt").read_bytes() == b"hello\n"
    assert is_mounted(str(root.parent))


def test_kernel_cache_kept_while_the_version_holds(client, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_bytes(b"a" * (1 << 20))
    client.mount("/d", data.as_uri(), metadata_ttl=0.5)
    mp = tmp_path / "mnt"
    with mounted(mp, tmp_path / "fuse.log"):
        f = mp / "d" / "f"

        def resident() -> int:
            out = subprocess.run(["fincore", "-b", "-n", "-o", "RES", str(f)],
                                 capture_output=True, text=True, check=True).stdout  # fmt: skip
            return int(out.split()[0])

        # The kernel's own reclaim may take a page back at any time; an invalidation would
        # drop them all: "kept" is most of them.
        kept = (1 << 20) * 3 // 4
        assert f.read_bytes() == b"a" * (1 << 20)
        assert resident() > kept  # a second open keeps the pages
        assert resident() > kept
        time.sleep(0.6)
        assert resident() > kept  # the attributes expired, the version did not change
        (data / "f").write_bytes(b"b" * (1 << 19))
        client.refresh("/d/f")
        # The new version drops the old pages at the first open that sees it (once the
        # kernel's attributes and the mount's client's metadata, a second, have expired);
        # reads see the new bytes.
        deadline = time.monotonic() + 10
        while resident() != 0:
            assert time.monotonic() < deadline, "the old version's pages were kept"
            time.sleep(0.2)
        assert f.read_bytes() == b"b" * (1 << 19)


def test_objects_of_an_s3_mount_below_plain_directories(client, bucket, tmp_path):
    bucket.put("a/b/c.bin", b"x" * 70_000)
    bucket.put("top.txt", b"top\n")
    client.mount("/datasets/s3", f"s3://{bucket.name}", **bucket.options())
    mp = tmp_path / "mnt"
    with mounted(mp, tmp_path / "fuse.log"):
        # /datasets is no mount, only the directory above one.
        assert os.listdir(mp) == ["datasets"] and (mp / "datasets").is_dir()
        assert os.listdir(mp / "datasets") == ["s3"]
        s3 = mp / "datasets" / "s3"
        assert sorted(os.listdir(s3)) == ["a", "top.txt"]
        assert (s3 / "a/b/c.bin").read_bytes() == b"x" * 70_000
        assert (s3 / "top.txt").stat().st_size == 4
        assert not (mp / "datasets" / "nothing").exists()
        # A mount made while mounted shows up.
        client.mount("/datasets/more", f"s3://{bucket.name}/a", **bucket.options())
        assert (mp / "datasets" / "more" / "b" / "c.bin").stat().st_size == 70_000


def test_mount_and_umount_errors(shoal_home, tmp_path):
    missing = shoal_cli("fuse", "mount", str(tmp_path / "nowhere"), check=False)
    assert missing.returncode == 1 and "does not exist" in missing.stderr
    (tmp_path / "file").write_bytes(b"")
    not_dir = shoal_cli("fuse", "mount", str(tmp_path / "file"), check=False)
    assert not_dir.returncode == 1 and "not a directory" in not_dir.stderr
    not_mounted = shoal_cli("fuse", "umount", str(tmp_path), check=False)
    assert not_mounted.returncode == 1 and "no Shoal FUSE mount" in not_mounted.stderr
    mp = tmp_path / "mnt"
    with mounted(mp, tmp_path / "fuse.log"):
        twice = shoal_cli("fuse", "mount", str(mp), check=False)
        assert twice.returncode == 1 and "mounted there already" in twice.stderr
        shoal_cli("fuse", "umount", str(mp))
        assert not is_mounted(str(mp))


def test_sigterm_unmounts(shoal_home, tmp_path):
    mp = tmp_path / "mnt"
    with mounted(mp, tmp_path / "fuse.log") as pid:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while is_mounted(str(mp)) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not is_mounted(str(mp))


def test_other_users_only_with_allow_other(client, tmp_path):
    from other_user import runner

    as_other = runner()
    data = tmp_path / "data"
    data.mkdir()
    (data / "f.txt").write_bytes(b"for everyone\n")
    client.mount("/d", data.as_uri())
    # A mount point the other user can reach (the test's own directory is private).
    place = Path(tempfile.mkdtemp(prefix="shoal-fuse-", dir="/tmp"))
    try:
        place.chmod(0o755)
        for options, readable in (((), False), (("--allow-other",), True)):
            mp = place / "mnt"
            with mounted(mp, tmp_path / "fuse.log", *options):
                assert (mp / "d" / "f.txt").read_bytes() == b"for everyone\n"
                done = subprocess.run([*as_other, "cat", str(mp / "d" / "f.txt")],
                                      capture_output=True, cwd="/")  # fmt: skip
                if readable:
                    assert done.returncode == 0 and done.stdout == b"for everyone\n"
                else:
                    assert done.returncode != 0 and b"Permission denied" in done.stderr
    finally:
        shutil.rmtree(place, ignore_errors=True)


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(c) for c in f.read().split()]


def test_a_dead_fuse_process_is_replaced_and_its_mount_comes_back(fuse):
    root, files, _, _ = fuse
    supervisor = MOUNTED[-1]
    assert (root / "train/0001.bin").read_bytes() == files["train/0001.bin"]
    (server,) = children(supervisor)
    os.kill(server, signal.SIGKILL)  # the process serving the mount, not its supervisor
    deadline = time.monotonic() + 30
    while True:
        try:
            got = (root / "big.bin").read_bytes()
            break
        except OSError as exc:  # ENOTCONN until the new process has mounted
            assert time.monotonic() < deadline, f"the mount did not come back: {exc}"
            time.sleep(0.05)
    assert got == files["big.bin"]
    assert children(supervisor) != [server]
    assert is_mounted(str(root.parent))


def test_shoal_fuse_mount_replaces_a_dead_mount(shoal_home, tmp_path):
    mp = tmp_path / "mnt"
    with mounted(mp, tmp_path / "fuse.log", "--no-restart") as pid:
        (server,) = children(pid)
        os.kill(server, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while True:  # with --no-restart, the supervisor takes the dead mount down and ends
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            assert time.monotonic() < deadline
            time.sleep(0.05)
    # Dead by hand: a mount whose processes are all gone ("Transport endpoint is not
    # connected") is replaced by the next `shoal fuse mount`.
    with mounted(mp, tmp_path / "fuse.log") as pid:
        (server,) = children(pid)
        os.kill(pid, signal.SIGKILL)
        os.kill(server, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while True:
            try:
                os.listdir(mp)
            except OSError as exc:
                if exc.errno == errno.ENOTCONN:
                    break
            assert time.monotonic() < deadline, "the mount did not die"
            time.sleep(0.05)
        done = shoal_cli("fuse", "mount", str(mp), "--log", str(tmp_path / "again.log"))
        again = int(done.stdout.rsplit("pid ", 1)[1].rstrip(")\n"))
        try:
            assert os.listdir(mp) == []  # no mount in this home's worker yet
        finally:
            shoal_cli("fuse", "umount", str(mp))
            deadline = time.monotonic() + 10
            while os.path.exists(f"/proc/{again}"):
                assert time.monotonic() < deadline
                time.sleep(0.05)


def test_foreground_mount_ends_on_ctrl_c(client, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_bytes(b"in the foreground\n")
    client.mount("/d", data.as_uri())
    mp = tmp_path / "mnt"
    mp.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "shoal", "fuse", "mount", str(mp), "--foreground"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while not is_mounted(str(mp)):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the foreground mount did not come up"
            time.sleep(0.05)
        assert (mp / "d" / "f").read_bytes() == b"in the foreground\n"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        assert not is_mounted(str(mp))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if is_mounted(str(mp)):
            subprocess.run(["fusermount3", "-u", "-z", str(mp)], capture_output=True)
        proc.stdout.close()
        proc.stderr.close()
