"""Load job records on one node: a load is recorded DONE with its counts, an identical
load skips everything, an interrupted load (its progress callback raising, Ctrl-C, the
worker killed) is recorded STOPPED or FAILED and a new run resumes it; ``shoal load
--history`` lists them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from shoal.cli import main
from shoal.client import LoadProgress

PAGE = 64 << 10  # the page size of the tests' configuration (conftest.SMALL_CONFIG)


def dataset(client, bucket, files: int = 24, pages: int = 2) -> tuple[int, int]:
    """``files`` files of ``pages`` pages and a bit, mounted at ``/m``: (bytes, pages)."""
    client.mount("/m", f"s3://{bucket.name}", **bucket.options())
    size = pages * PAGE + 100
    rng = np.random.default_rng(7)
    for i in range(files):
        bucket.put(f"ds/{i:03d}", rng.bytes(size))
    return files * size, files * (pages + 1)


def test_load_recorded_done_then_skipped_and_listed(client, bucket, capsys):
    total, pages = dataset(client, bucket)
    first = client.load("/m/ds")
    assert first == LoadProgress(24, 24, total, total, 0, 0)
    again = client.load(["/m/ds"])
    assert again == LoadProgress(24, 24, total, total, pages, total)  # all cached already
    meta = client.load("/m/ds", metadata_only=True)
    history = client.load_history()
    assert [r["state"] for r in history] == ["DONE"] * 3
    newest, second, oldest = history
    assert newest["metadata_only"] and newest["pages_total"] == 0
    assert meta.files_done == 24
    assert oldest["id"] < second["id"] < newest["id"]
    assert oldest["paths"] == {"count": 1, "first": ["/m/ds"]}
    assert oldest["replicas"] is None and oldest["error"] is None
    assert oldest["started"] <= oldest["finished"] <= second["started"]
    for r, skipped in ((oldest, 0), (second, pages)):
        assert r["files_done"] == r["files_total"] == 24
        assert r["bytes_done"] == r["bytes_total"] == total
        assert r["pages_done"] == r["pages_total"] == pages
        assert r["pages_skipped"] == skipped
        assert r["bytes_skipped"] == (total if skipped else 0)
    assert client.load_history(limit=1) == [newest]
    assert client.load_history(limit=0) == []
    assert client.load_history(limit=None) == history
    with pytest.raises(ValueError, match="limit"):
        client.load_history(limit=-1)

    # the command line, in this process ($SHOAL_HOME is this test's)
    capsys.readouterr()
    assert main(["load", "-q", "/m/ds"]) == 0
    assert "cached already" in capsys.readouterr().out
    assert main(["load", "--history", "--limit", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ID", "STATE", "STARTED", "DURATION", "FILES", "BYTES", "SKIPPED"]
    assert len(lines) == 3
    assert lines[2].split()[1] == "DONE" and lines[2].split()[0] == newest["id"]
    assert "24/24" in lines[1] and lines[1].split()[1] == "DONE"
    assert main(["load", "--history", "--json", "--limit", "0"]) == 0
    docs = json.loads(capsys.readouterr().out)
    assert [d["id"] for d in docs] == [d["id"] for d in client.load_history(limit=None)]
    assert len(docs) == 4


@pytest.mark.parametrize("interrupt", [RuntimeError("enough"), KeyboardInterrupt()])
def test_load_interrupted_by_the_caller_is_stopped_then_resumed(client, bucket, interrupt):
    total, pages = dataset(client, bucket)
    seen = []

    def progress(p: LoadProgress) -> None:
        seen.append(p)
        raise interrupt

    with pytest.raises(type(interrupt)):
        client.load("/m/ds", progress=progress)
    (stopped,) = client.load_history()
    assert stopped["state"] == "STOPPED"
    assert stopped["error"] == ("RuntimeError: enough" if str(interrupt) else "KeyboardInterrupt")
    assert stopped["files_done"] == seen[0].files_done < 24
    assert stopped["finished"] >= stopped["started"]
    done = client.load("/m/ds")  # resumes: the pages loaded before are skipped
    assert done.files_done == 24 and done.bytes_done == total
    history = client.load_history()
    assert [r["state"] for r in history] == ["DONE", "STOPPED"]
    assert history[0]["pages_skipped"] == done.pages_skipped >= stopped["pages_done"] > 0
    assert client.load("/m/ds").pages_skipped == pages


def test_load_whose_worker_is_killed_is_failed_then_resumed(client, bucket, shoal_home, daemons):
    total, pages = dataset(client, bucket, files=40)
    killed = []

    def progress(p: LoadProgress) -> None:
        if not killed:
            killed.append(daemons.kill(shoal_home))

    with pytest.raises(ConnectionError):
        client.load("/m/ds", progress=progress)
    # recorded through the worker the client starts again
    (failed,) = client.load_history()
    assert failed["state"] == "FAILED" and failed["error"]
    assert failed["files_done"] < 40 and client.worker_pid() != killed[0]
    done = client.load("/m/ds")
    assert done.files_done == 40 and done.bytes_done == total
    assert 0 <= done.pages_skipped < pages
    assert [r["state"] for r in client.load_history()] == ["DONE", "FAILED"]
    assert client.load("/m/ds").pages_skipped == pages


def test_load_whose_client_is_killed_is_failed_by_its_missing_heartbeat(
    client, bucket, shoal_home, monkeypatch
):
    """A client killed during a load cannot record its end: its record stays RUNNING while
    heartbeats come, and is FAILED once three intervals pass without one."""
    import os
    import signal
    import subprocess
    import sys
    import time

    dataset(client, bucket, files=40, pages=1)
    monkeypatch.setenv("SHOAL_LOAD_HEARTBEAT", "0.3")
    # Its progress callback holds the load up (and the client alive) until it is killed.
    script = "import time, shoal; shoal.Client().load('/m/ds', progress=lambda p: time.sleep(60))"
    proc = subprocess.Popen([sys.executable, "-c", script], env=dict(os.environ))
    try:
        deadline = time.monotonic() + 60
        while not client.load_history() or client.load_history()[0]["files_done"] == 0:
            assert proc.poll() is None, "the load ended before it could be killed"
            assert time.monotonic() < deadline, "the load never started"
            time.sleep(0.05)
        time.sleep(1.0)  # heartbeats keep it RUNNING meanwhile
        (running,) = client.load_history()
        assert running["state"] == "RUNNING" and running["heartbeat"] > running["started"]
        assert running["heartbeat_every"] == 0.3
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    time.sleep(1.2)  # more than three intervals
    (failed,) = client.load_history()
    assert failed["state"] == "FAILED" and "no heartbeat" in failed["error"]
    assert client.load_history() == [failed]  # kept FAILED
    monkeypatch.setenv("SHOAL_LOAD_HEARTBEAT", "soon")
    with pytest.raises(ValueError, match="SHOAL_LOAD_HEARTBEAT must be seconds > 0"):
        client.load("/m/ds")
