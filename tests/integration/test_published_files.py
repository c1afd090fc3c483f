"""The table of published files from the client's side: a new process reads warm small
files with no request naming them, and never gets stale bytes from the table (a region
reclaimed, a file changed, a path freed or refreshed, a worker restarted)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from conftest import kill_worker, shoal_environment, stop_worker

from shoal import Client
from shoal._config import load_config
from shoal.client._published import PublishedReads

# A new process: reads every path given (JSON on stdin: mount point, names) into buffers
# one byte larger than the file's size on disk, and prints per file whether the bytes match
# the directory (the truth) and what it read.
_READER = """
import json, sys
from shoal import Client
job = json.load(sys.stdin)
c = Client()
names = job["names"]
bufs = [bytearray(job["sizes"][n] + 1) for n in names]
counts = []
for at in range(0, len(names), 64):
    chunk = names[at : at + 64]
    counts += c.read_many_into([(b, job["mount"] + "/" + n) for b, n in zip(bufs[at:], chunk)])
bad = []
for n, b, k in zip(names, bufs, counts):
    with open(job["root"] + "/" + n, "rb") as f:
        want = f.read()
    if k != len(want) or bytes(b[:k]) != want:
        bad.append(n)
print(json.dumps({"bad": bad, "published": len(names)}))
c.close()
"""


def new_process_reads(root, mount: str, names: list[str]) -> list[str]:
    """Read ``names`` under ``mount`` in a new process; the names read wrong."""
    job = {
        "root": str(root),
        "mount": mount,
        "names": names,
        "sizes": {n: os.path.getsize(root / n) for n in names},
    }
    out = subprocess.run(
        [sys.executable, "-c", _READER],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ.copy(),
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])["bad"]


def write_files(root, count: int, size: int, seed: int, prefix: str = "f") -> list[str]:
    rng = np.random.default_rng(seed)
    root.mkdir(exist_ok=True)
    names = []
    for i in range(count):
        name = f"{prefix}{i:04d}"
        n = size if size else int(rng.integers(1, 4096))
        (root / name).write_bytes(rng.integers(0, 256, n, dtype=np.uint8).tobytes())
        names.append(name)
    return names


def read_all(client: Client, mount: str, root, names: list[str]) -> None:
    items = [(bytearray(os.path.getsize(root / n)), f"{mount}/{n}") for n in names]
    for at in range(0, len(items), 128):
        client.read_many_into(items[at : at + 128])
    for (buf, _), n in zip(items, names, strict=True):
        assert bytes(buf) == (root / n).read_bytes()


@pytest.fixture
def small(client, tmp_path):
    root = tmp_path / "small"
    names = write_files(root, 300, 0, seed=1)
    client.mount("/s", str(root), metadata_ttl=3600)
    read_all(client, "/s", root, names)
    return root, names


def test_a_new_process_reads_warm_files_with_no_request_naming_them(client, small):
    root, names = small
    assert client.report()["published"]["files"] == len(names)
    before = client.report()
    assert new_process_reads(root, "/s", names) == []
    after = client.report()
    assert after["file_requests"] == before["file_requests"]  # no stat, no read
    # hello, the touch report at close, our own report, and at most one request for
    # descriptors per region first met: none per file.
    regions = sum(t["regions_used"] for t in after["tiers"].values())
    assert regions < len(names) / 20
    assert after["requests"] - before["requests"] <= 3 + regions
    assert after["ufs_reads"] == before["ufs_reads"]


def test_reads_through_the_table_are_counted_as_hits(client, small):
    root, names = small
    before = client.report()
    assert new_process_reads(root, "/s", names) == []
    deadline = time.monotonic() + 10
    while client.report()["page_hits"] - before["page_hits"] < len(names):
        assert time.monotonic() < deadline, "the new process's reads were never reported"
        time.sleep(0.05)


def test_parts_of_files_and_reads_past_the_end(client, small):
    root, names = small
    other = Client(load_config())
    try:
        data = (root / names[5]).read_bytes()
        buf = bytearray(10)
        assert other.read_into(buf, f"/s/{names[5]}", 3) == min(10, len(data) - 3)
        assert bytes(buf[: min(10, len(data) - 3)]) == data[3:13]
        assert other.read_into(bytearray(4), f"/s/{names[5]}", len(data)) == 0
        assert other.read_into(bytearray(4), f"/s/{names[5]}", len(data) + 100) == 0
    finally:
        other.close()


def test_a_batch_of_every_kind_of_item_is_read_right(client, small):
    """Whole files come from the table natively; parts, files not cached and items after
    one the native read cannot take are read the ordinary way; bad items get the errors
    they always got."""
    root, names = small
    other = Client(load_config())
    try:
        before = client.report()
        whole = [(bytearray(4096), f"/s/{n}") for n in names[100:200]]
        want = [(root / n).read_bytes() for n in names[100:200]]
        assert other.read_many_into(whole) == [len(w) for w in want]
        assert [bytes(b[: len(w)]) for (b, _), w in zip(whole, want, strict=True)] == want
        assert other.report()["file_requests"] == before["file_requests"]  # none for them

        (root / "new").write_bytes(b"not cached yet")
        client.refresh("/s/new")  # the listing of /s is cached (this empties the table)
        read_all(client, "/s", root, names[:6])  # published again
        datas = [(root / n).read_bytes() for n in names[:6]]
        bufs = [bytearray(4096) for _ in range(4)]
        arr = np.zeros(1024, dtype=np.float32)
        items = [
            (bufs[0], f"/s/{names[0]}"),
            (arr, f"/s/{names[1]}", 0),
            (bufs[1], f"/s/{names[2]}", 3),  # a part
            (bufs[2], f"/s/{names[3]}", len(datas[3])),  # at the end
            (memoryview(bufs[3]), f"/s//{names[4]}"),  # canonical only once normalised
            (bytearray(64), "/s/new"),
        ]
        got = other.read_many_into(items)
        assert got == [len(datas[0]), len(datas[1]), len(datas[2]) - 3, 0, len(datas[4]), 14]
        assert bytes(bufs[0][: got[0]]) == datas[0]
        assert arr.tobytes()[: got[1]] == datas[1]
        assert bytes(bufs[1][: got[2]]) == datas[2][3:]
        assert bytes(bufs[3][: got[4]]) == datas[4]
        assert bytes(items[5][0][:14]) == b"not cached yet"
        assert client.report()["ufs_reads"] == before["ufs_reads"] + 1  # /s/new only

        bad = [(bytearray(4096), f"/s/{names[7]}"), (bytearray(4096), "s/relative")]
        with pytest.raises(ValueError, match="absolute"):
            other.read_many_into(bad)
        with pytest.raises(ValueError, match="^item 2: expected"):  # its place in the batch
            other.read_many_into([items[0], items[1], "text"])  # two read from the table
        with pytest.raises(TypeError, match="offset must be an int"):
            other.read_many_into([(bytearray(4096), f"/s/{names[8]}", True)])
        with pytest.raises(TypeError, match="read-only"):
            other.read_many_into([(bytes(4096), f"/s/{names[9]}")])
    finally:
        other.close()


def test_a_changed_file_is_read_new_after_a_refresh(client, small):
    root, names = small
    (root / names[0]).write_bytes(b"new content, longer than it was before" * 200)
    (root / names[1]).write_bytes(b"x")
    client.refresh("/s")
    assert new_process_reads(root, "/s", names[:10]) == []


@pytest.mark.parametrize("mem", [0, 8 << 20], ids=["disk tier", "memory tier"])
def test_whole_files_come_from_the_native_read(tmp_path, monkeypatch, mem):
    """Whole warm files are read by the native call, with no Python per file: out of the
    mapped region files of a memory tier, with ``pread`` from those of a disk tier. The
    Python path of the table is made to fail here, so anything it served would show."""
    with shoal_environment(mem_capacity=mem):
        c = Client(load_config())
        try:
            root = tmp_path / "n"
            names = write_files(root, 200, 0, seed=5)
            c.mount("/n", str(root), metadata_ttl=3600)
            read_all(c, "/n", root, names)
            tiers = c.report()["tiers"]
            assert tiers["MEM" if mem else "SSD"]["regions_used"] > 0
            assert mem or "MEM" not in tiers

            def python_path(*args):
                raise AssertionError("a whole file was read by the Python path")

            monkeypatch.setattr(PublishedReads, "read", python_path)
            with Client(load_config()) as other:
                before = c.report()
                read_all(other, "/n", root, names)  # every byte checked
                assert c.report()["file_requests"] == before["file_requests"]
                with pytest.raises(AssertionError, match="Python path"):
                    other.read_into(bytearray(10), f"/n/{names[0]}", 1)  # a part: Python
        finally:
            c.close()


def test_threads_of_one_client_read_through_the_table_at_once(client, small):
    """Each thread has its own connection, mapped table and region mappings: threads
    reading the same files at once all get the right bytes, with no request per file."""
    root, names = small
    want = {n: (root / n).read_bytes() for n in names}
    other = Client(load_config())
    errors: list[BaseException] = []

    def reader(seed: int) -> None:
        try:
            order = list(names)
            random.Random(seed).shuffle(order)
            for _ in range(3):
                items = [(bytearray(4096), f"/s/{n}") for n in order]
                got = other.read_many_into(items)
                for (buf, _), n, k in zip(items, order, got, strict=True):
                    assert k == len(want[n]) and bytes(buf[:k]) == want[n]
        except BaseException as exc:  # reported by the test's thread
            errors.append(exc)

    try:
        other.read_many_into([(bytearray(4096), f"/s/{names[0]}")])  # connected
        before = client.report()
        threads = [threading.Thread(target=reader, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert client.report()["file_requests"] == before["file_requests"]
    finally:
        other.close()


def test_writes_deletes_and_renames_void_their_own_files_only(client, small):
    """A file written, deleted or renamed through the worker is never read old from the
    table, and the table is not superseded for it: every other file still needs no
    request (a checkpoint saved during training leaves the data files' table alone)."""
    root, names = small
    other = Client(load_config())
    try:
        read_all(other, "/s", root, names[:3])
        tables = client.report()["published"]["tables"]
        client.write(f"/s/{names[0]}", b"written through the worker")
        client.delete(f"/s/{names[1]}")
        client.rename(f"/s/{names[2]}", "/s/moved")
        assert client.report()["published"]["tables"] == tables  # not superseded
        buf = bytearray(4096)
        assert other.read_many_into([(buf, f"/s/{names[0]}")]) == [26]
        assert bytes(buf[:26]) == b"written through the worker"
        with pytest.raises(FileNotFoundError):
            other.read_many_into([(bytearray(4096), f"/s/{names[1]}")])
        with pytest.raises(FileNotFoundError):
            other.read_many_into([(bytearray(4096), f"/s/{names[2]}")])
        client.wait_persisted(timeout=60)
        assert new_process_reads(root, "/s", [names[0], "moved"]) == []
        before = client.report()
        assert new_process_reads(root, "/s", names[3:]) == []
        assert client.report()["file_requests"] == before["file_requests"]
    finally:
        other.close()


def test_a_changed_file_is_read_new_once_its_metadata_expires(client, tmp_path):
    root = tmp_path / "ttl"
    names = write_files(root, 20, 0, seed=2)
    client.mount("/t", str(root), metadata_ttl=1)
    read_all(client, "/t", root, names)
    (root / names[0]).write_bytes(b"changed")
    time.sleep(1.2)
    assert new_process_reads(root, "/t", names) == []


def test_freed_and_unmounted_paths_are_not_read_from_the_table(client, small, tmp_path):
    root, names = small
    client.free("/s")
    assert new_process_reads(root, "/s", names[:20]) == []
    other_root = tmp_path / "other"
    write_files(other_root, 300, 0, seed=9)  # same names, other bytes
    client.unmount("/s")
    client.mount("/s", str(other_root), metadata_ttl=3600)
    assert new_process_reads(other_root, "/s", names) == []


def test_a_long_lived_client_moves_to_the_new_table(client, small):
    root, names = small
    other = Client(load_config())
    try:
        read_all(other, "/s", root, names[:50])
        client.refresh("/s")  # supersedes the table other holds
        (root / names[3]).write_bytes(b"after the refresh")
        read_all(other, "/s", root, names[:50])
    finally:
        other.close()


def test_entries_of_reclaimed_regions_are_never_served(tmp_path):
    # 16 MiB of cache in regions of 256 KiB: the second set evicts the first one's regions,
    # which then hold other files' pages at the offsets the table still names.
    with shoal_environment():
        c = Client(load_config())
        try:
            root = tmp_path / "r"
            first = write_files(root, 60, 40 << 10, seed=3, prefix="a")
            second = write_files(root, 420, 40 << 10, seed=4, prefix="b")
            c.mount("/r", str(root), metadata_ttl=3600)
            read_all(c, "/r", root, first)
            read_all(c, "/r", root, second)
            before = c.report()
            assert new_process_reads(root, "/r", first) == []
            after = c.report()
            # Their entries failed their checks: the new process asked the worker.
            assert after["file_requests"] > before["file_requests"]
        finally:
            c.close()


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_after_a_worker_restart_files_are_read_right(client, small, how):
    root, names = small
    if how == "stop":
        stop_worker(os.environ["SHOAL_HOME"])
    else:
        kill_worker(os.environ["SHOAL_HOME"])
    (root / names[7]).write_bytes(b"changed while the worker was down")
    assert new_process_reads(root, "/s", [n for n in names if n != names[7]]) == []
    # The client that held the old worker's table reads right too.
    read_all(client, "/s", root, [n for n in names[:40] if n != names[7]])


def wait_published(client: Client, count: int) -> None:
    deadline = time.monotonic() + 30
    while client.report()["published"]["files"] < count:
        assert time.monotonic() < deadline, "the restarted worker did not publish its files"
        time.sleep(0.05)


def test_a_restarted_worker_knows_its_files_without_asking_the_store(client, small):
    root, names = small
    stop_worker(os.environ["SHOAL_HOME"])
    wait_published(client, len(names))  # the client starts a new worker
    before = client.report()
    assert new_process_reads(root, "/s", names) == []
    after = client.report()
    assert after["file_requests"] == before["file_requests"]
    # and through the worker (stat and read), with no request to the store either
    other = Client(load_config(), metadata_ttl=0)
    try:
        read_all(other, "/s", root, names)
    finally:
        other.close()
    after = client.report()
    assert sum(after["ufs_requests"].values()) == 0  # no HEAD, LIST or GET since the restart
    assert after["ufs_reads"] == 0


def test_records_past_their_time_or_moved_are_not_taken_back(client, tmp_path):
    root = tmp_path / "short"
    names = write_files(root, 30, 0, seed=5)
    client.mount("/short", str(root), metadata_ttl=1)
    read_all(client, "/short", root, names)
    stop_worker(os.environ["SHOAL_HOME"])
    time.sleep(1.2)
    (root / names[0]).write_bytes(b"changed while the worker was down and the ttl ran out")
    assert client.report()["published"]["files"] == 0
    assert new_process_reads(root, "/short", names) == []


def test_bad_table_and_region_requests_are_refused_and_the_worker_serves_on(client, small):
    from shoal.client._connection import Connection
    from shoal.control._daemon import socket_path

    conn = Connection(socket_path(os.environ["SHOAL_HOME"]), 10)
    try:
        assert conn.table is not None and conn.table.current
        # Unknown tiers, regions past the tier, regions never used: no descriptor, no error.
        conn.fetch_regions([["NOPE", 1], ["SSD", (1 << 32) - 1], ["SSD", 63], ["HDD", 0]])
        assert conn.region_fds() == 0
        with pytest.raises((OSError, ValueError)):
            conn.call({"op": "regions", "regions": [["SSD"]]})  # malformed: refused
    finally:
        conn.close()
    root, names = small
    assert new_process_reads(root, "/s", names[:20]) == []
    assert client.report()["published"]["files"] == len(names)


def test_names_not_utf8_are_left_out_of_listings_and_loads_and_refused_by_path(client, tmp_path):
    root = tmp_path / "odd"
    root.mkdir()
    (root / "good").write_bytes(b"g" * 100)
    for name in (b"bad\xff", b"caf\xe9"):
        with open(os.path.join(os.fsencode(root), name), "wb") as f:
            f.write(b"b" * 100)
    os.mkdir(os.path.join(os.fsencode(root), b"dir\xfe"))
    client.mount("/odd", str(root), metadata_ttl=3600)
    assert [e.path for e in client.ls("/odd")] == ["/odd/good"]
    done = client.load("/odd")
    assert (done.files_done, done.files_total, done.bytes_done) == (1, 1, 100)
    bad = "/odd/" + os.fsdecode(b"bad\xff")
    with pytest.raises(ValueError, match="not UTF-8"):
        client.stat(bad)
    with pytest.raises(ValueError, match="not UTF-8"):
        client.read_into(bytearray(100), bad)
    assert client.report()["published"]["files"] == 1
    stop_worker(os.environ["SHOAL_HOME"])
    wait_published(client, 1)  # the new worker took the record back
    assert new_process_reads(root, "/odd", ["good"]) == []
