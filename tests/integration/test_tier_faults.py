"""A failing cache tier fails no read: drills with real faults under a running worker
(region files truncated under it, a tier's filesystem filled up), many reads from two
threads, zero application errors and exact bytes."""

from __future__ import annotations

import contextlib
import glob
import os
import random
import subprocess
import tempfile
import threading
import time

import pytest

from shoal._config import load_config
from shoal.client import Client

PAGE = 64 << 10


def dataset(root: str, count: int, size: int) -> dict[str, bytes]:
    files = {}
    for i in range(count):
        data = random.Random(900 + i).randbytes(size + i)
        with open(os.path.join(root, f"f{i:03d}"), "wb") as f:
            f.write(data)
        files[f"/d/f{i:03d}"] = data
    return files


def read_all(client: Client, files: dict[str, bytes], rounds: int, threads: int = 2) -> list:
    """Every file read ``rounds`` times from ``threads`` threads (half of them one at a
    time, half in one batch); the errors seen, and any bytes that were wrong."""
    problems: list = []
    paths = sorted(files)

    def run(k: int) -> None:
        try:
            for _ in range(rounds):
                if k % 2:
                    bufs = [bytearray(len(files[p])) for p in paths]
                    counts = client.read_many_into(list(zip(bufs, paths, strict=True)))
                    got = dict(zip(paths, bufs, strict=True))
                    assert counts == [len(files[p]) for p in paths]
                else:
                    got = {}
                    for p in paths:
                        buf = bytearray(len(files[p]))
                        assert client.read_into(buf, p) == len(buf)
                        got[p] = buf
                for p in paths:
                    if got[p] != files[p]:
                        problems.append(f"wrong bytes in {p}")
        except Exception as exc:  # every error is a failure of the drill
            problems.append(exc)

    workers = [threading.Thread(target=run, args=(k,)) for k in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    return problems


def test_region_files_truncated_under_a_running_worker(daemons, tmp_path):
    """The MEM tier's region files are cut to nothing and to the middle of a page while
    clients hold them mapped: every read still returns exact bytes, the tier's errors
    are counted, and its pages are fetched again."""
    src = tmp_path / "src"
    src.mkdir()
    files = dataset(str(src), 24, 100_000)  # two pages each
    with daemons.environment(mem_capacity=8 << 20, capacity=16 << 20) as home:
        client = Client()
        try:
            client.mount("/d", str(src))
            assert read_all(client, files, rounds=2) == []
            before = client.report()
            assert before["tiers"]["MEM"]["pages"] == 48
            mem_dir = load_config(home=home).mem_dir
            regions = sorted(glob.glob(os.path.join(mem_dir, "regions", "*")))
            assert regions
            for k, path in enumerate(regions):
                os.truncate(path, 0 if k % 2 else PAGE // 2)
            assert read_all(client, files, rounds=3) == []
            after = client.report()
            mem = after["tiers"]["MEM"]
            assert mem["io_errors"] > 0 and mem["state"] in ("unstable", "down")
            assert after["ufs_bytes"] > before["ufs_bytes"]  # the lost pages, fetched again
            assert read_all(client, files, rounds=1) == []
        finally:
            client.close()


@contextlib.contextmanager
def small_filesystem(size: int):
    """A tmpfs of ``size`` bytes mounted on a new directory, always unmounted."""
    where = tempfile.mkdtemp(prefix="shoal-tier-fs-")
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", where],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); needs root")
        try:
            yield where
        finally:
            subprocess.run(["umount", "-l", where], check=False)
    finally:
        os.rmdir(where)


def test_tier_on_a_full_filesystem(daemons, tmp_path):
    """The only tier's filesystem fills up under the worker: pages no tier takes are
    served from memory, the tier goes down after a few errors and takes no more pages;
    once there is room again, a probe brings it back."""
    src = tmp_path / "src"
    src.mkdir()
    files = dataset(str(src), 16, 100_000)
    with small_filesystem(4 << 20) as fs:
        cache = os.path.join(fs, "cache")
        settings = {"mem_capacity": 0, "capacity": 2 << 20, "cache_dir": cache}
        with daemons.environment(**settings):
            client = Client()
            try:
                client.mount("/d", str(src))
                # Fill what is left of the filesystem, so that new region files fail.
                filler = os.path.join(fs, "filler")
                with open(filler, "wb", buffering=0) as f, contextlib.suppress(OSError):
                    while True:
                        f.write(b"\0" * (64 << 10))
                assert read_all(client, files, rounds=3) == []
                report = client.report()
                ssd = report["tiers"]["SSD"]
                assert ssd["state"] == "down" and ssd["io_errors"] >= 3
                assert report["store_full"] > 0  # pages served from memory, not cached
                os.unlink(filler)
                deadline = time.monotonic() + 30
                while client.report()["tiers"]["SSD"]["state"] != "normal":
                    assert time.monotonic() < deadline, "the tier was never probed back"
                    assert read_all(client, files, rounds=1, threads=1) == []
                    time.sleep(0.5)
                assert read_all(client, files, rounds=1) == []
            finally:
                client.close()
