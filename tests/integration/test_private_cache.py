"""The cache is private: another Unix user (``nobody``) can neither read nor change it, nor
make the page store adopt a directory of theirs.

These tests run as root and switch to ``nobody`` with ``setpriv`` (or ``su``) in a child
process, so they are skipped where that user or those tools do not exist, or without root.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile

import pytest
from other_user import OTHER, python_for, runner

from shoal._config import Config
from shoal.engine import PageStore, RegionReader, crc32c

KiB = 1024
RS = 64 * KiB

# Run as the other user: each named action on a path, and what became of it.
ATTACK = r"""
import json, os, sys

def attempt(action, path):
    try:
        if action == "list":
            os.listdir(path)
        elif action == "read":
            with open(path, "rb") as f:
                f.read(1)
        elif action == "write":
            os.close(os.open(path, os.O_WRONLY))
        elif action == "mkdir":
            os.mkdir(path, 0o777)
            os.chmod(path, 0o777)
        elif action == "symlink":
            target, link = path.split("\0")
            os.mkdir(target, 0o777)
            os.symlink(target, link)
        return "done"
    except OSError as exc:
        return exc.__class__.__name__

print(json.dumps([attempt(a, p) for a, p in json.loads(sys.argv[1])]))
"""


@pytest.fixture(scope="module")
def as_other():
    """``as_other([(action, path), ...])`` runs each action as ``OTHER``; per action
    ``"done"`` or the name of the OSError it raised."""
    prefix = runner()
    python = python_for(prefix)

    def run(actions: list[tuple[str, str]]) -> list[str]:
        out = subprocess.run(
            [*prefix, python, "-I", "-c", ATTACK, json.dumps(actions)],
            cwd="/",
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return json.loads(out.stdout)

    return run


@pytest.fixture
def place():
    """A directory that ``OTHER`` may enter and list (0755), as /tmp or a home is, and a
    MEM tier directory name on /dev/shm that nobody has taken yet: ``(base, config)``.
    Both are removed afterwards."""
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm")
    base = tempfile.mkdtemp(prefix="shoal-private-", dir="/tmp")
    os.chmod(base, 0o755)
    config = Config(
        home=os.path.join(base, "home"), capacity=8 * RS, mem_capacity=4 * RS, region_size=RS,
        page_size=RS, chunk_size=RS,
    )  # fmt: skip
    try:
        yield base, config
    finally:
        if os.path.islink(config.mem_dir):
            os.unlink(config.mem_dir)
        shutil.rmtree(config.mem_dir, ignore_errors=True)
        shutil.rmtree(base, ignore_errors=True)


def open_store(config: Config) -> PageStore:
    """The page store a worker of ``config`` opens: its tiers, its index."""
    return PageStore(config.tiers(), os.path.join(config.home, "index"), region_size=RS)


def test_the_other_user_can_neither_list_read_nor_write_the_cache(place, as_other):
    base, config = place
    os.makedirs(config.home)
    os.chmod(config.home, 0o755)  # the home's mode is not what keeps the cache private
    secret = b"root:$6$a cached secret\n" * 100
    with open_store(config) as store:
        store.put("secret", secret, tier="MEM")
        store.put("other", secret, tier="SSD")
        mem, ssd = store.locate(["secret", "other"])
        visible = os.path.join(base, "visible")
        with open(visible, "wb") as f:
            f.write(b"anyone may read this")
        results = as_other(
            [
                ("read", visible),  # the switch of user works, and it may read what is open
                ("list", "/dev/shm"),
                ("list", config.mem_dir),
                ("list", os.path.join(config.mem_dir, "regions")),
                ("read", mem.path),
                ("write", mem.path),
                ("read", os.path.join(config.mem_dir, "generations")),
                ("list", config.cache_dir),
                ("read", ssd.path),
                ("write", ssd.path),
                ("list", os.path.join(config.home, "index")),
            ]
        )
        assert results[:2] == ["done", "done"]
        assert results[2:] == ["PermissionError"] * 9
    assert os.stat(mem.path).st_mode & 0o777 == 0o600
    assert os.stat(config.mem_dir).st_mode & 0o777 == 0o700


def test_a_page_cannot_be_rewritten_by_the_other_user(place, as_other):
    """The takeover: the other user rewrites a cached page, keeping its crc32c, so that the
    worker serves forged bytes. It cannot open the region file for writing at all."""
    _, config = place
    page = b"the real page " * 300
    with open_store(config) as store:
        store.put("page", page, tier="MEM")
        loc = store.locate(["page"])[0]
        assert loc.crc32c == crc32c(page)
        assert as_other([("write", loc.path)]) == ["PermissionError"]
        buf = bytearray(loc.length)
        assert store.get_into("page", buf) == len(page) and bytes(buf) == page
        with RegionReader(store.tier_paths) as reader:
            assert reader.read_into(loc, buf) == len(page) and bytes(buf) == page


def test_a_mem_tier_directory_made_beforehand_by_the_other_user_is_refused(place, as_other):
    _, config = place
    assert as_other([("mkdir", config.mem_dir)]) == ["done"]
    with pytest.raises(PermissionError) as info:
        open_store(config)
    other = pwd.getpwnam(OTHER).pw_uid
    assert info.value.filename == config.mem_dir
    assert info.value.strerror == (
        f"tier MEM directory is owned by uid {other} ({OTHER}), not by uid 0 (root) that "
        "runs the page store: remove it (the page store then creates it afresh), or chown "
        "it to uid 0 if its contents can be trusted"
    )
    assert os.listdir(config.mem_dir) == []  # nothing of ours was put in it
    shutil.rmtree(config.mem_dir)
    with open_store(config) as store:  # removed: the store makes its own
        store.put("k", b"v", tier="MEM")
    assert os.stat(config.mem_dir).st_uid == 0


def test_a_symbolic_link_made_by_the_other_user_in_place_of_the_tier_is_refused(place, as_other):
    _, config = place
    target = config.mem_dir + "-target"
    try:
        assert as_other([("symlink", f"{target}\0{config.mem_dir}")]) == ["done"]
        with pytest.raises(PermissionError) as info:
            open_store(config)
        assert info.value.filename == config.mem_dir
        assert info.value.strerror.startswith(
            "tier MEM directory is a symbolic link, which the page store does not follow"
        )
        assert os.listdir(target) == []
    finally:
        shutil.rmtree(target, ignore_errors=True)


def test_a_directory_of_ours_that_anyone_may_write_is_refused(place):
    _, config = place
    os.mkdir(config.mem_dir)
    os.chmod(config.mem_dir, 0o777)
    with pytest.raises(PermissionError) as info:
        open_store(config)
    assert info.value.filename == config.mem_dir
    assert info.value.strerror == (
        "tier MEM directory is writable by its group and others (mode 0777), who could have "
        "changed cached pages: remove it (the page store then creates it afresh), or chmod "
        "it to 0700 if its contents can be trusted"
    )


# --------------------------------------------------------------------- the worker's home

SMALL_HOME = {"capacity": 8 << 20, "page_size": RS, "chunk_size": RS, "region_size": RS}


def test_everything_in_a_workers_home_is_private(tmp_path, as_other):
    """A worker started from a process with a wide umask: its home and all it holds (the
    socket, pid and lock files, log, worker id, mount table, index, cache) are 0700 or
    0600, and the other user can neither list the home nor read its files."""
    from shoal._testing import TemporaryHome
    from shoal.client import Client

    old = os.umask(0o022)
    try:
        with TemporaryHome(config={**SMALL_HOME, "mem_capacity": 0}) as home:
            os.chmod(home, 0o755)  # as a home made by hand might be: narrowed at start
            with Client() as client:
                client.mounts()
            modes = {}
            for root, dirs, files in os.walk(home):
                for name in dirs + files:
                    path = os.path.join(root, name)
                    modes[os.path.relpath(path, home)] = os.lstat(path).st_mode & 0o777
            assert os.stat(home).st_mode & 0o777 == 0o700
            # config.yaml is the operator's (written here with the umask): the 0700 home
            # keeps it from others all the same
            wide = {p: oct(m) for p, m in modes.items() if m & 0o077 and p != "config.yaml"}
            assert wide == {}, wide
            assert {"worker.sock", "worker.pid", "worker.log", "worker-id", "meta", "index"} <= set(
                modes
            )
            targets = [os.path.join(home, n) for n in ("worker.log", "worker-id", "config.yaml")]
            assert as_other([("list", home)] + [("read", t) for t in targets]) == [
                "PermissionError"
            ] * (1 + len(targets))
    finally:
        os.umask(old)


def test_a_home_made_beforehand_by_the_other_user_is_refused(as_other):
    from shoal._config import load_config
    from shoal.client import Client

    base = tempfile.mkdtemp(prefix="shoal-private-", dir="/tmp")
    os.chmod(base, 0o1777)  # as /tmp is: anyone may make a directory there
    home = os.path.join(base, "home")
    try:
        assert as_other([("mkdir", home)]) == ["done"]
        config = load_config(home=home, **SMALL_HOME, mem_capacity=0)
        with pytest.raises(PermissionError) as info:
            Client(config).mounts()
        assert info.value.filename == home
        assert info.value.strerror.startswith(
            f"Shoal home is owned by uid {pwd.getpwnam(OTHER).pw_uid}"
        )
        assert os.listdir(home) == []  # no socket, no lock, no log of ours in it
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_shoal_down_purge_removes_the_mem_tier(tmp_path):
    from shoal._testing import TemporaryHome
    from shoal.cli import main
    from shoal.client import Client

    (tmp_path / "f").write_bytes(b"x" * 100_000)
    config = {**SMALL_HOME, "mem_capacity": 4 << 20, "allowed_mounts": ["file:///tmp/"]}
    with TemporaryHome(config=config) as home:
        mem_dir = Config(home=home, **SMALL_HOME, mem_capacity=0).mem_dir
        with Client() as client:
            client.mount("/d", str(tmp_path))
            buf = bytearray(100_000)
            client.read_into(buf, "/d/f")
            assert os.listdir(os.path.join(mem_dir, "regions"))
        assert main(["down", "--home", home, "--purge"]) == 0
        assert not os.path.exists(mem_dir)
        with Client() as client:  # a new worker: the lost MEM pages are fetched again
            buf = bytearray(100_000)
            assert client.read_into(buf, "/d/f") == 100_000 and buf == b"x" * 100_000
