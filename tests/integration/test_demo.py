"""``python -m shoal.demo`` at a tiny size: it runs, prints its table, checks the bytes and
leaves nothing running."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import pytest

from shoal._testing._home import remove_home
from shoal.control._daemon import process_alive

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def home_of(out: str | bytes | None) -> str | None:
    """The demo's home, from its output."""
    if isinstance(out, bytes):
        out = out.decode(errors="replace")
    match = re.search(r"home (\S+),", out or "")
    return match.group(1) if match else None


def clean_up_after_killed_demo(home: str | None) -> None:
    """What a demo killed before its own clean-up leaves: its worker, its home, its MEM
    tier (10% of RAM on /dev/shm)."""
    if home is not None and os.path.isdir(home):
        remove_home(home)


def test_tiny_demo(tmp_path):
    out_json = tmp_path / "demo.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
    env["PYTHONPATH"] = ROOT
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "shoal.demo", "--objects", "40", "--total-mib", "16",
             "--batch", "8", "--json", str(out_json)],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
            check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        clean_up_after_killed_demo(home_of(exc.stdout))
        raise
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "dataset: 40 objects, 16.0 MiB" in out
    lines = out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("reader "))
    table = [line.split() for line in lines[head : lines.index("", head)]]
    assert table[0] == [
        "reader",
        "epoch",
        "time",
        "MB/s",
        "read",
        "MB/s",
        "hit",
        "ratio",
        "data",
        "wait",
    ]
    assert [row[:3] for row in table[1:]] == [
        ["boto3", "1", table[1][2]],
        ["shoal", "1", "cold"],
        ["shoal", "2", "warm"],
        ["fuse", "3", "open()"],
    ]
    assert "verified: 160 object reads" in out

    results = json.loads(out_json.read_text())
    epochs = results["epochs"]
    assert [(e["reader"], e["epoch"], e["label"]) for e in epochs] == [
        ("boto3", 1, ""),
        ("shoal", 1, "cold"),
        ("shoal", 2, "warm"),
        ("fuse", 3, "open()"),
    ]
    for e in epochs:
        assert e["files"] == 40 and e["nbytes"] == 16 << 20
        assert 0 <= e["wait_fraction"] <= 1 and e["mb_per_s"] > 0
    assert epochs[0]["hit_ratio"] is None
    assert epochs[1]["hit_ratio"] < 0.5  # cold: fetched from S3
    assert epochs[2]["hit_ratio"] == 1.0  # warm: all from the cache
    assert results["ufs_bytes"] == 16 << 20  # each byte fetched from S3 once

    # Everything it started is stopped, its temporary home removed.
    assert not process_alive(results["worker_pid"])
    assert not os.path.exists(results["home"])
    for line in (
        "stopped the Shoal worker",
        "stopped the S3 server (moto)",
        "removed ",
        "unmounted the FUSE mount",
    ):
        assert line in out
    with open("/proc/self/mountinfo") as f:
        assert "fuse.shoal" not in f.read()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_demo_stops_everything(signum):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
    env["PYTHONPATH"] = ROOT
    proc = subprocess.Popen(
        [sys.executable, "-u", "-m", "shoal.demo", "--objects", "20", "--total-mib", "4",
         "--batch", "4", "--compute-ms", "400"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )  # fmt: skip
    home = None
    try:
        lines = []
        while True:
            line = proc.stdout.readline()
            assert line, "".join(lines) + proc.stderr.read()
            lines.append(line)
            if line.startswith("shoal: worker pid"):
                break
        moto_pid = int(re.search(r"pid (\d+)", lines[0]).group(1))
        worker_pid = int(re.search(r"worker pid (\d+)", line).group(1))
        home = re.search(r"home (\S+),", line).group(1)
        assert process_alive(worker_pid) and process_alive(moto_pid) and os.path.isdir(home)
        proc.send_signal(signum)  # during the first Shoal epoch (5 batches of 0.4 s)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
            clean_up_after_killed_demo(home)
    assert proc.returncode == 128 + signum, err
    assert f"stopped the Shoal worker (pid {worker_pid})" in out
    assert "stopped the S3 server (moto)" in out
    assert not process_alive(worker_pid)
    assert not process_alive(moto_pid)
    assert not os.path.exists(home)
