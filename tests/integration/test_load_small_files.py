"""Loads of many small files: read ahead in batches with a future per batch, still
single-flight with the reads that run meanwhile, every byte right, the first failing file
failing the load (and leaving no file claimed); and the worker daemon's collector tuned
for a heap of cached files."""

from __future__ import annotations

import errno
import os
import threading

import numpy as np
import pytest
from conftest import PAGE, SMALL_CONFIG

from shoal._config import load_config
from shoal.control._daemon import GC_THRESHOLDS
from shoal.control._worker import Worker

FILES = 3000
S3_FILES = 400


def small_files(root, count: int, dirs: int = 6) -> dict[str, bytes]:
    """``count`` files of 1 to 300 bytes in ``dirs`` directories: name -> bytes."""
    rng = np.random.default_rng(7)
    out = {}
    for i in range(count):
        name = f"d{i % dirs}/f{i:05d}"
        data = rng.integers(0, 256, int(rng.integers(1, 301)), dtype=np.uint8).tobytes()
        path = root / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        out[name] = data
    return out


def gets(client) -> int:
    return client.report()["ufs_requests"].get("GET", 0)


def read_all(client, mount: str, names: list[str], files: dict[str, bytes]) -> list[str]:
    """Read ``names`` under ``mount`` 64 to a batch; the names read wrong."""
    wrong = []
    for at in range(0, len(names), 64):
        part = names[at : at + 64]
        bufs = [bytearray(512) for _ in part]
        sizes = client.read_many_into(
            [(b, f"{mount}/{n}", 0) for b, n in zip(bufs, part, strict=True)]
        )
        wrong += [n for n, b, k in zip(part, bufs, sizes, strict=True) if bytes(b[:k]) != files[n]]
    return wrong


def test_a_load_with_reads_of_the_same_files_fetches_each_file_once(client, bucket):
    # On S3 (moto answers a GET in milliseconds) a load and the reads overlap for long.
    files = {}
    rng = np.random.default_rng(3)
    for i in range(S3_FILES):
        files[f"d{i % 3}/f{i:04d}"] = rng.integers(0, 256, 1 + i % 300, np.uint8).tobytes()
        bucket.put(f"d{i % 3}/f{i:04d}", files[f"d{i % 3}/f{i:04d}"])
    names = sorted(files)
    client.mount("/s3", f"s3://{bucket.name}", **bucket.options())
    client.load(["/s3"], metadata_only=True)  # known: reads need no stat (nor its GET)
    before = gets(client)
    wrong: list[str] = []
    errors: list[BaseException] = []

    def reader(order: list[str]) -> None:
        try:
            wrong.extend(read_all(client, "/s3", order, files))
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    readers = [
        threading.Thread(target=reader, args=(names[::-1],)),
        threading.Thread(target=reader, args=(names[1::2],)),
    ]
    for t in readers:
        t.start()
    done = client.load(["/s3"])
    for t in readers:
        t.join(120)
    assert not errors and not wrong
    assert done.files_done == S3_FILES
    assert done.bytes_done == sum(len(b) for b in files.values())
    # Every file read from the store once, by the load or by a read, never both.
    assert gets(client) - before == S3_FILES
    again = client.load(["/s3"])
    assert again.pages_skipped == S3_FILES and gets(client) - before == S3_FILES
    assert not read_all(client, "/s3", names, files)


def test_a_load_of_many_small_local_files_reads_every_byte(client, tmp_path):
    files = small_files(tmp_path, FILES)
    client.mount("/m", tmp_path.as_uri())
    done = client.load(["/m"])
    assert (done.files_done, done.pages_skipped) == (FILES, 0)
    assert done.bytes_done == sum(len(b) for b in files.values())
    before = gets(client)
    assert not read_all(client, "/m", sorted(files), files)
    assert gets(client) == before  # all cached by the load


def test_a_file_that_fails_in_a_loads_batch_fails_the_load_naming_it(client, tmp_path):
    files = small_files(tmp_path, 600, dirs=2)
    client.mount("/m", tmp_path.as_uri())
    client.load(["/m"], metadata_only=True)
    victim = sorted(files)[333]
    (tmp_path / victim).write_bytes(files[victim] + b"longer now")  # changed since listed
    with pytest.raises(OSError, match=victim.split("/")[-1]):
        client.load(["/m"])
    # The others were loaded; the changed file reads its new bytes.
    buf = bytearray(512)
    n = client.read_into(buf, f"/m/{victim}")
    assert bytes(buf[:n]) == files[victim] + b"longer now"


def test_a_load_that_fails_early_leaves_no_file_claimed(client, tmp_path):
    """A file of the first chunk fails the load while later chunks are read ahead: the
    files of those chunks are not left claimed (a read of them would wait for ever), and
    read right afterwards."""
    files = small_files(tmp_path, 7000, dirs=1)  # chunks of 2,048: the fourth in flight
    client.mount("/m", tmp_path.as_uri())
    client.load(["/m"], metadata_only=True)
    names = sorted(files)
    victim = names[5]
    (tmp_path / victim).write_bytes(files[victim] + b"longer now")  # changed since listed
    files[victim] += b"longer now"
    with pytest.raises(OSError, match=victim):
        client.load(["/m"])
    wrong: list[str] = []
    reader = threading.Thread(target=lambda: wrong.extend(read_all(client, "/m", names, files)))
    reader.start()
    reader.join(120)
    assert not reader.is_alive(), "a read waits on a file the failed load left claimed"
    assert not wrong


def test_the_worker_daemon_runs_with_the_tuned_collector(client):
    pid = client.report()["worker"]["pid"]
    assert pid != os.getpid()  # a daemon of its own
    assert tuple(client.report()["worker"]["gc"]["thresholds"]) == GC_THRESHOLDS


def test_a_load_tells_its_final_totals_in_every_report(client, tmp_path):
    """The one-page files are fetched as they are listed (chunks of 2,048; here some are
    stored before the last of the six directories is listed): progress is told once the
    listing is whole, each report with the totals of the whole load, its counters never
    going back."""
    files = small_files(tmp_path, 12000, dirs=6)
    (tmp_path / "big").write_bytes(os.urandom(2 * PAGE + 100))  # of three pages
    client.mount("/m", tmp_path.as_uri())
    size = sum(len(b) for b in files.values()) + 2 * PAGE + 100
    seen: list = []
    done = client.load(["/m"], progress=seen.append)
    assert (done.files_done, done.files_total, done.bytes_done) == (12001, 12001, size)
    record = client.load_history(1)[0]
    assert record["pages_total"] == record["pages_done"] == 12003 and done.pages_skipped == 0
    assert seen and seen[-1] == done
    assert all((p.files_total, p.bytes_total) == (12001, size) for p in seen)
    for a, b in zip(seen, seen[1:], strict=False):
        assert a.files_done <= b.files_done and a.bytes_done <= b.bytes_done
    assert not read_all(client, "/m", sorted(files), files)


def test_a_listing_that_fails_midway_fails_the_load_leaving_no_file_claimed(tmp_path):
    """A store's listing fails after chunks of the files listed before were begun, one of
    them stored already: the load fails with the listing's error, the chunks in flight
    are ended (what their reads had read stored, the reads not begun cancelled) with no
    file left claimed, and a load again stores the rest."""
    src = tmp_path / "src"
    src.mkdir()
    small_files(src, 9000, dirs=3)  # listed (one walk) in runs of 2,048 files
    home = {**SMALL_CONFIG, "capacity": 64 << 20, "home": str(tmp_path / "home")}
    w = Worker(load_config(**home))
    try:
        w.mount("/m", src.as_uri(), {})
        resolver = w.loader.files
        listed = resolver.files_under_runs

        def failing(paths, run):
            for k, files in enumerate(listed(paths, run)):
                if k == 4:  # after 8,192 files: the first chunk stored, two in flight
                    raise OSError(errno.EIO, "the listing failed")
                yield files

        resolver.files_under_runs = failing
        with pytest.raises(OSError, match="the listing failed"):
            w.loader.load(["/m"], False, lambda state: None)
        assert not w.fetcher._inflight  # no page left claimed
        del resolver.files_under_runs
        state = w.loader.load(["/m"], False, lambda state: None)
        assert state["files_done"] == state["pages_done"] == 9000
        # The chunk stored before the failure, and those in flight whose reads had begun.
        assert 2048 <= state["pages_skipped"] <= 3 * 2048
        again = w.loader.load(["/m"], False, lambda state: None)
        assert again["pages_skipped"] == 9000  # every file stored
    finally:
        w.close()
