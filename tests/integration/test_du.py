"""``shoal du`` and ``shoal report --cluster`` against real worker processes: bytes cached
under a path counted exactly on a ``file://`` mount (per tier, by whole path components,
across a restart, not through a mount that changed), the documented limit of
``metadata_ttl`` 0, clear errors for bad paths and bad requests over the socket, and a
cluster of two workers from a membership file whose usage and reports are summed."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from conftest import PAGE, TMP_MOUNTS, shoal_environment
from hypothesis import given, settings
from hypothesis import strategies as st
from shoal_cli import error, ok
from shoal_cluster import SMALL, static_cluster

from shoal._config import load_config
from shoal.cli._main import main
from shoal.client import Client
from shoal.client._connection import Connection
from shoal.control._pages import page_count
from shoal.control.proto import ProtocolError

#: The files of ``data``, by path under the mount, and their sizes. ``a`` and ``ab`` share
#: a prefix that is not a path component; ``zero`` has no page to cache.
SIZES = {
    "a/x": 3 * PAGE + 100,
    "a/sub/y": 5000,
    "ab/z": 2 * PAGE,
    "a.bin": PAGE - 1,
    "zero": 0,
}


@pytest.fixture
def data(tmp_path):
    """A directory to mount holding :data:`SIZES`, and an empty directory ``empty``."""
    assert tmp_path.as_uri().startswith(TMP_MOUNTS)
    root = tmp_path / "data"
    (root / "empty").mkdir(parents=True)
    for i, (name, size) in enumerate(SIZES.items()):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(os.urandom(size) if size else b"")
        assert i < 16
    return root


def read_whole(client: Client, path: str) -> None:
    size = client.stat(path).size
    buf = bytearray(size)
    assert client.read_into(buf, path) == size


def expected(*names: str) -> dict:
    """What ``du`` counts of the files ``names`` once all of them are cached."""
    return {
        "bytes": sum(SIZES[n] for n in names),
        "pages": sum(page_count(SIZES[n], PAGE) for n in names),
        "files": sum(1 for n in names if SIZES[n]),
    }


def counted(doc: dict) -> dict:
    return {k: doc[k] for k in ("bytes", "pages", "files")}


def live(report: dict) -> dict[str, int]:
    return {name: t["live_bytes"] for name, t in report["tiers"].items()}


def raw(home: str) -> Connection:
    """A connection of the worker's own user to its Unix socket."""
    return Connection(os.path.join(home, "worker.sock"), 30.0)


# --------------------------------------------------------------------- one worker


def test_du_counts_what_is_cached_by_whole_components(client, data):
    assert counted(client.du("/")) == {"bytes": 0, "pages": 0, "files": 0}  # no mount yet
    client.mount("/d", data.as_uri())
    empty = client.du("/d")
    assert counted(empty) == {"bytes": 0, "pages": 0, "files": 0}
    assert empty["tiers"] == {"SSD": 0} and empty["path"] == "/d"  # every tier, 0 when empty
    read_whole(client, "/d/a/x")
    assert counted(client.du("/d")) == expected("a/x")
    client.load(["/d/a/sub", "/d/ab", "/d/a.bin", "/d/zero"])
    everything = expected(*SIZES)
    for path in ("/", "/d", "/d/"):
        doc = client.du(path)
        assert counted(doc) == everything, path
        assert doc["tiers"] == {"SSD": everything["bytes"]}
    assert doc["tiers"] == live(client.report())  # nothing else is cached
    one = next(iter(doc["workers"].values()))
    assert list(doc["workers"]) == ["test-node"] and doc["unreachable"] == []
    assert one == {k: doc[k] for k in ("bytes", "pages", "files", "tiers")}
    # Whole components: /d/a is not /d/ab nor /d/a.bin.
    assert counted(client.du("/d/a")) == expected("a/x", "a/sub/y")
    assert counted(client.du("/d/ab")) == expected("ab/z")
    assert counted(client.du("/d/a.bin")) == expected("a.bin")
    assert counted(client.du("/d/a/sub")) == expected("a/sub/y")
    assert counted(client.du("/d/a/x")) == expected("a/x")  # a file
    assert counted(client.du("/d/a/s")) == expected()
    for path in ("/d/empty", "/d/zero", "/d/nothing/here"):
        assert counted(client.du(path)) == expected(), path
    client.free("/d/a")
    assert counted(client.du("/d")) == expected("ab/z", "a.bin")
    # The same directory mounted twice, its files cached through both paths: each path
    # counts them, and what holds both counts them once.
    client.mount("/again", data.as_uri())
    client.load("/again/a")
    assert counted(client.du("/again")) == expected("a/x", "a/sub/y")
    assert counted(client.du("/d")) == everything
    assert counted(client.du("/")) == everything
    assert client.du("/")["tiers"] == live(client.report())


def test_du_per_tier_matches_the_report(data):
    """With a MEM tier too small for everything, pages land in both tiers (or are
    reclaimed from MEM): ``du`` of the mount is what each tier holds."""
    for i in range(6):
        (data / f"many/f{i}").parent.mkdir(exist_ok=True)
        (data / f"many/f{i}").write_bytes(os.urandom(3 * PAGE + i))
    with shoal_environment(mem_capacity=8 * PAGE), Client(load_config()) as c:
        c.mount("/d", data.as_uri())
        c.load("/d")
        doc = c.du("/d")
        tiers = live(c.report())
        assert set(doc["tiers"]) == {"MEM", "SSD"} and doc["tiers"] == tiers
        assert doc["bytes"] == sum(tiers.values()) > 0
        assert doc["tiers"]["MEM"] > 0 and doc["tiers"]["SSD"] > 0


def test_du_after_a_restart_and_through_a_changed_mount(shoal_home, data, daemons, tmp_path):
    with Client(load_config()) as c:
        c.mount("/d", data.as_uri())
        c.load("/d")
        before = c.du("/d")
    assert counted(before) == expected(*SIZES)
    daemons.stop(shoal_home)
    with Client(load_config()) as c:
        assert c.du("/d") == before  # the records came back with the pages
        # The same path, another directory: what is cached came from the old one.
        other = tmp_path / "other"
        shutil.copytree(data, other)
        c.unmount("/d")
        c.mount("/d", other.as_uri())
        assert counted(c.du("/d")) == expected()
        assert sum(live(c.report()).values()) == before["bytes"]  # still cached


def test_du_does_not_see_files_cached_without_metadata_ttl(client, data):
    """The documented limit: a mount that caches no metadata keeps no file records, and
    ``du`` sees files through their records only."""
    client.mount("/d", data.as_uri(), metadata_ttl=0)
    read_whole(client, "/d/a/x")
    assert sum(live(client.report()).values()) == SIZES["a/x"]
    assert counted(client.du("/d")) == expected()


def test_du_of_a_bad_path_is_a_clear_error(client, data):
    client.mount("/d", data.as_uri())
    with pytest.raises(FileNotFoundError, match=r"du /nowhere: the path is under no mount"):
        client.du("/nowhere")
    with pytest.raises(FileNotFoundError, match="under no mount"):
        client.du("/dd")  # not /d
    with pytest.raises(ValueError, match="absolute"):
        client.du("d")
    with pytest.raises(ValueError, match=r"\.\."):
        client.du("/d/../etc")


def test_the_du_command(shoal_home, data):
    ok("mount", "add", "/d", data.as_uri())
    ok("load", "/d")
    doc = json.loads(ok("du", "/d", "--json"))
    with Client(load_config()) as c:
        assert doc == c.du("/d")
    assert counted(doc) == expected(*SIZES)
    whole = expected(*SIZES)["bytes"]
    lines = ok("du", "/d/a/").splitlines()
    assert lines[0] == "path    /d/a"
    part = expected("a/x", "a/sub/y")
    assert lines[1].startswith("cached  ")
    assert f"({part['bytes']} B) in {part['pages']} pages of 2 files" in lines[1]
    assert lines[2].startswith("tiers   SSD ")
    assert len(lines) == 3  # one node: no line per worker
    assert f"({whole} B)" in ok("du", "/")
    assert error(1, "du", "/nowhere") == (
        "du /nowhere: the path is under no mount (see `shoal mount ls`)"
    )
    assert "must be absolute" in error(2, "du", "relative")
    # report --cluster on one node: its one worker, and it says so.
    text = ok("report", "--cluster")
    assert text.startswith("cluster     none: a single node, its one worker shown\n")
    assert "\nWORKER " in text
    summed = json.loads(ok("report", "--cluster", "--json"))
    [(wid, report)] = summed["workers"].items()
    assert wid == "test-node" and summed["unreachable"] == []
    total = summed["total"]
    assert total["workers"] == 1 and total["pages"] == report["pages"] == doc["pages"]
    assert live(total) == live(report) == doc["tiers"]
    for key in ("page_hits", "page_misses", "hit_ratio", "ufs_bytes", "ufs_requests"):
        assert total[key] == report[key], key


def test_bad_du_requests_over_the_socket(client, data, shoal_home):
    client.mount("/d", data.as_uri())
    conn = raw(shoal_home)
    try:
        # Strings, but not paths: an error each, and the connection serves on.
        for path, kind, match in [
            ("relative", ValueError, "must be absolute"),
            ("/d/../x", ValueError, r"\.\."),
            ("/d/\0", ValueError, "NUL"),
            ("/nowhere", FileNotFoundError, "under no mount"),
            ("/" + "a" * 5000, OSError, "du: path"),
            ("/é" * 3000, OSError, "du: path"),
        ]:
            with pytest.raises(kind, match=match):
                conn.call({"op": "du", "path": path})
        assert conn.call({"op": "du", "path": "/d"})["bytes"] == 0
    finally:
        conn.close()
    # Wrong types: a protocol error, then the connection is closed; the worker serves on.
    for header, match in [
        ({"op": "du"}, "'path' is missing"),
        ({"op": "du", "path": None}, "'path' is missing"),
        ({"op": "du", "path": 3}, "'path' must be str"),
        ({"op": "du", "path": b"/d"}, "'path' must be str"),
        ({"op": "du", "path": ["/d"]}, "'path' must be str"),
        ({"op": "du", "path": {"/d": 1}}, "'path' must be str"),
        ({"op": "du", "path": False}, "'path' is missing or has the wrong type"),
    ]:
        conn = raw(shoal_home)
        try:
            with pytest.raises(ProtocolError, match=match):
                conn.call(header)
        finally:
            conn.close()
    assert client.du("/d")["path"] == "/d" and client.report()["mounts"] == 1


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory):
    """A worker of the module's own with a directory of one file mounted at /f: its home."""
    data = tmp_path_factory.mktemp("fuzzed")
    (data / "a").write_bytes(b"x" * 100)
    with shoal_environment() as home:
        with Client(load_config()) as c:
            c.mount("/f", data.as_uri())
            c.load("/f")
        yield home


@settings(max_examples=60, deadline=None)
@given(
    path=st.sampled_from(["/", "/f", "/f/a", "/f/", "/g", "f", "/f/../x", ""])
    | st.text(max_size=12)
    | st.integers(-(2**63), 2**64 - 1)
    | st.binary(max_size=8)
    | st.none()
    | st.lists(st.text(max_size=3), max_size=2),
    extra=st.dictionaries(
        st.text(max_size=6), st.integers(-(2**63), 2**63) | st.text(max_size=6), max_size=3
    ),
)
def test_random_du_requests_are_answered_and_the_worker_serves_on(fuzzed, path, extra):
    conn = raw(fuzzed)
    try:
        doc = conn.call({**extra, "op": "du", "path": path})
        assert doc["bytes"] in (0, 100) and set(doc["tiers"]) == {"SSD"}
    except (ProtocolError, ValueError, FileNotFoundError):
        pass  # refused, with the reason
    finally:
        conn.close()
    conn = raw(fuzzed)
    try:
        assert conn.call({"op": "du", "path": "/f"})["bytes"] == 100
    finally:
        conn.close()


# --------------------------------------------------------------------- a cluster


@pytest.mark.slow
def test_du_and_report_sum_the_workers_of_a_cluster(data, tmp_path, capsys):
    """Two workers and a client on another host share a membership file: ``du`` and
    ``report --cluster`` ask both and sum them, with a line (a key) per worker."""
    for i in range(16):  # files of one chunk at most: each lies on one worker
        (data / f"c/f{i}").parent.mkdir(exist_ok=True)
        (data / f"c/f{i}").write_bytes(os.urandom((i + 1) * PAGE // 4))
    sizes = {f"/d/c/f{i}": (i + 1) * PAGE // 4 for i in range(16)}
    with static_cluster(tmp_path, "du", flags=["--allowed-mount", TMP_MOUNTS]) as cluster:
        home, config = cluster.home, cluster.config
        with Client(config, start_worker=False) as client:
            client.mount("/d", data.as_uri())
            client.load("/d/c")
            doc = client.du("/d")
            reports = client.report(cluster=True)
        assert sorted(doc["workers"]) == ["du-0", "du-1"] and doc["unreachable"] == []
        assert doc["bytes"] == sum(sizes.values())
        assert doc["files"] == len(sizes)
        assert doc["bytes"] == sum(w["bytes"] for w in doc["workers"].values())
        assert all(w["bytes"] > 0 for w in doc["workers"].values()), doc["workers"]
        for wid, w in doc["workers"].items():
            assert w["tiers"] == live(reports["workers"][wid]), wid
        assert doc["tiers"] == live(reports["total"])

        assert main(["report", "--cluster", "--json", "--home", home]) == 0
        summed = json.loads(capsys.readouterr().out)
        each = list(summed["workers"].values())
        assert sorted(summed["workers"]) == ["du-0", "du-1"] and summed["unreachable"] == []
        total = summed["total"]
        assert total["workers"] == 2
        for key in ("pages", "page_hits", "page_misses", "requests", "ufs_bytes", "ufs_reads"):
            assert total[key] == sum(r[key] for r in each), key
        for kind in total["ufs_requests"]:
            assert total["ufs_requests"][kind] == sum(r["ufs_requests"][kind] for r in each)
        for name, tier in total["tiers"].items():
            for key in ("capacity", "live_bytes", "pages", "allocated_bytes", "io_errors"):
                assert tier[key] == sum(r["tiers"][name][key] for r in each), (name, key)
            assert tier["state"] == "normal" and tier["region_size"] == SMALL["region_size"]
        asked = total["page_hits"] + total["page_misses"]
        assert total["hit_ratio"] == (total["page_hits"] / asked if asked else 0.0)
        assert total["mounts"] == 1 and "worker" not in total
        assert sum(live(total).values()) == doc["bytes"]

        assert main(["report", "--cluster", "--home", home]) == 0
        text = capsys.readouterr().out
        assert text.startswith("cluster     2 worker(s) answered, summed below\n")
        rows = [line.split() for line in text.splitlines() if line.startswith("du-")]
        assert [r[:2] for r in rows] == [["du-0", "host-0"], ["du-1", "host-1"]]
        assert main(["du", "/d", "--home", home]) == 0
        rows = [line.split() for line in capsys.readouterr().out.splitlines()]
        assert [r[0] for r in rows if r and r[0].startswith("du-")] == ["du-0", "du-1"]
