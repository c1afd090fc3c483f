"""``shoal persist``, the wait of ``shoal down`` for pending uploads and the write-back
section of ``shoal report``, run as a user runs them against a real worker: files written
in write_back mode to a ``file://`` mount, and to an S3 mount whose server goes away (a
moto server of the test's own, in a process of its own, killed and started again on the
same port) so that uploads stay pending."""

from __future__ import annotations

import os
import re
import time

import pytest
from s3server import ACCESS_KEY_ENV, SECRET_KEY_ENV, MotoProcess
from shoal_cli import error, ok, shoal

from shoal._config import load_config
from shoal.cli._report import render_report
from shoal.client import Client
from shoal.control._daemon import process_alive, running_pid

MiB = 1 << 20
#: What a wait that timed out says of one file of 2 MiB left.
LEFT = r"1 files? \((2097152 bytes|2\.0 MiB)\) under {where} .*after {timeout} s"


def write(path: str, data: bytes) -> None:
    with Client(load_config()) as client:
        assert client.write(path, data) == len(data)


def mount_s3(server: MotoProcess, bucket: str) -> None:
    ok("mount", "add", "/s3", f"s3://{bucket}", "--endpoint-url", server.endpoint_url,
       "--region", "us-east-1", "--access-key-env", ACCESS_KEY_ENV, "--secret-key-env",
       SECRET_KEY_ENV, "--metadata-ttl", "600", "-o", "addressing_style=path")  # fmt: skip
    ok("ls", "/s3")  # listed now: a write there later needs no request to the store


def writeback() -> dict:
    with Client(load_config()) as client:
        return client.report()["writeback"]


def wait_for(what, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, "gave up waiting"
        time.sleep(0.05)


# --------------------------------------------------------------------- format


WRITEBACK = {
    "dirty_files": 3,
    "dirty_bytes": 12 * MiB,
    "budget_bytes": 64 * MiB,
    "uploading": 1,
    "uploaded_files": 7,
    "uploaded_bytes": 5 * MiB,
    "upload_failures": 2,
    "oldest_seconds": 4.25,
}


def test_the_report_shows_the_write_back_when_there_is_one():
    lines = render_report({"writeback": WRITEBACK}).splitlines()
    section = [line for line in lines if line.startswith(("write-back ", "uploaded "))]
    assert section == [
        "write-back  3 files pending (12.0 MiB of a 64.0 MiB budget, 18.8%), 1 uploading, "
        "the oldest for 4.2s",
        "uploaded    7 files (5.0 MiB), 2 failed attempts (retried)",
    ]
    idle = {**WRITEBACK, "dirty_files": 0, "dirty_bytes": 0, "uploading": 0}
    assert "write-back  nothing pending (budget 64.0 MiB)" in render_report({"writeback": idle})
    assert "write-back" not in render_report({})


# --------------------------------------------------------------------- file:// mount


@pytest.fixture
def store(shoal_home, tmp_path):
    """An empty directory mounted at /w (write_back, the default)."""
    root = tmp_path / "store"
    root.mkdir()
    ok("mount", "add", "/w", root.as_uri())
    return root


def test_persist_shows_then_waits_for_the_uploads(store):
    data = os.urandom(MiB + 1)
    write("/w/a/x.bin", data)
    write("/w/b.bin", b"small")
    lines = ok("persist", "/w/a/x.bin").splitlines()
    assert lines[0].startswith("write-back  ")
    assert lines[1].startswith("uploaded    ")
    assert lines[2] in ("/w/a/x.bin: persisted", "/w/a/x.bin: upload pending")
    assert len(lines) == 3
    proc = shoal("persist", "--wait", "/w")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("everything under /w is in its under-store")
    assert "Traceback" not in proc.stderr
    assert (store / "a" / "x.bin").read_bytes() == data
    assert (store / "b.bin").read_bytes() == b"small"
    assert ok("persist", "/w/a/x.bin").endswith("\n/w/a/x.bin: persisted\n")
    assert ok("persist", "--wait", "-q") == "everything is in its under-store\n"
    text = ok("report")
    assert "\nwrite-back  nothing pending (budget " in text
    assert "\nuploaded    2 files (1.0 MiB), 0 failed attempts (retried)\n" in text


def test_down_leaves_the_written_files_in_the_under_store(store, shoal_home):
    data = os.urandom(3 * MiB)
    write("/w/ckpt.bin", data)
    out = ok("down")
    assert out.splitlines()[-1].startswith("worker stopped (pid ")
    assert running_pid(shoal_home) is None
    assert (store / "ckpt.bin").read_bytes() == data


def test_bad_input_is_a_one_line_error(store):
    assert "under no mount" in error(1, "persist", "/not/mounted")
    assert "under no mount" in error(1, "persist", "--wait", "/not/mounted")
    assert error(2, "persist", "--timeout", "1").endswith("--timeout goes with --wait")
    assert "number of seconds" in error(2, "persist", "--wait", "--timeout", "soon")
    assert "must be absolute" in error(2, "persist", "relative")


# --------------------------------------------------------------------- a store that is gone


def test_uploads_to_a_store_that_is_gone(moto_process, shoal_home):
    moto_process.start("gone")
    mount_s3(moto_process, "gone")
    moto_process.kill()
    data = os.urandom(2 * MiB)
    write("/s3/ckpt.bin", data)  # durable on the node: the store is not needed yet

    lines = ok("persist", "/s3/ckpt.bin").splitlines()
    assert lines[0].startswith("write-back  1 file pending (2.0 MiB of a ")
    assert lines[2] == "/s3/ckpt.bin: upload pending"
    # The message is the client's TimeoutError: what is left, under what, after how long.
    assert re.fullmatch(
        LEFT.format(where="the worker", timeout="1"),
        error(1, "persist", "--wait", "--timeout", "1"),
    )
    assert re.fullmatch(
        LEFT.format(where="/s3", timeout="0.5"),
        error(1, "persist", "/s3", "--wait", "--timeout", "0.5"),
    )
    wait_for(lambda: writeback()["upload_failures"] > 0, timeout=60)
    report = ok("report")
    assert "\nwrite-back  1 file pending (2.0 MiB of a " in report
    assert re.search(
        r"\nuploaded    0 files \(0 B\), [1-9]\d* failed attempts? \(retried\)\n", report
    )

    # `down` gives up after its --upload-timeout and leaves the worker running.
    pid = running_pid(shoal_home)
    proc = shoal("down", "--upload-timeout", "1")
    assert proc.returncode == 1
    assert proc.stdout == f"worker (pid {pid}) has 1 file (2.0 MiB) to upload; waiting\n"
    (line,) = proc.stderr.splitlines()
    assert re.fullmatch(
        "shoal: error: "
        + LEFT.format(where="the worker", timeout="1")
        + re.escape("; the worker keeps running (`shoal down --no-wait` stops it with its "
                    "uploads pending)"),
        line,
    )  # fmt: skip
    assert running_pid(shoal_home) == pid and process_alive(pid)

    # The store comes back: `down` waits for the upload (unless the worker's next try
    # made it first), then stops the worker.
    moto_process.start("gone")
    lines = ok("down", "--upload-timeout", "120").splitlines()
    if len(lines) == 3:
        assert lines[0] == f"worker (pid {pid}) has 1 file (2.0 MiB) to upload; waiting"
        assert lines[1].startswith("uploaded 1 file (2.0 MiB) in ")
    assert lines[-1] == f"worker stopped (pid {pid}), home {shoal_home}"
    assert len(lines) in (1, 3)
    assert not process_alive(pid)
    got = moto_process.client().get_object(Bucket="gone", Key="ckpt.bin")["Body"].read()
    assert got == data


def test_down_no_wait_stops_the_worker_with_uploads_pending(moto_process, shoal_home):
    moto_process.start("later")
    mount_s3(moto_process, "later")
    moto_process.kill()
    data = os.urandom(MiB)
    write("/s3/later.bin", data)
    pid = running_pid(shoal_home)
    assert ok("down", "--no-wait") == f"worker stopped (pid {pid}), home {shoal_home}\n"
    assert not process_alive(pid)
    # The next worker uploads what the last one left pending, once the store is back.
    moto_process.start("later")
    proc = shoal("persist", "--wait", "--timeout", "120", "-q")
    assert proc.returncode == 0, proc.stderr
    got = moto_process.client().get_object(Bucket="later", Key="later.bin")["Body"].read()
    assert got == data
    assert ok("persist", "/s3/later.bin").endswith("\n/s3/later.bin: persisted\n")
