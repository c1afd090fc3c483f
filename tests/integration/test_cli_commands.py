"""The real ``shoal`` command (``python -m shoal`` in a subprocess) against a real worker
daemon and the session's moto S3 server."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

import numpy as np
import pytest
import yaml
from conftest import TEST_ALLOWED_MOUNTS, TEST_CREDENTIAL_ENV
from s3server import ACCESS_KEY_ENV, FAKE_ACCESS_KEY, FAKE_SECRET_KEY, SECRET_KEY_ENV

from shoal.cli._worker import stop_worker
from shoal.control._daemon import process_alive, running_pid

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PAGE = 64 << 10
#: Small pages and regions: files span several pages, and the cache stays small.
CONFIG = {
    "page_size": PAGE,
    "chunk_size": 4 * PAGE,
    "region_size": 4 * PAGE,
    "capacity": 16 << 20,
    "mem_capacity": 0,
    "host_id": "cli-test",
    "allowed_mounts": TEST_ALLOWED_MOUNTS,
    "credential_env": TEST_CREDENTIAL_ENV,
}


def random_bytes(size: int, seed: int) -> bytes:
    return np.random.default_rng(seed).bytes(size)


@contextlib.contextmanager
def cli_home():
    """A fresh ``$SHOAL_HOME`` (short: it holds a socket) with the small configuration;
    its worker, if any command started one, is stopped (and checked gone) on exit."""
    home = tempfile.mkdtemp(prefix="shoal-cli-", dir="/tmp")
    with pytest.MonkeyPatch.context() as mp:
        for var in list(os.environ):
            if var.startswith("SHOAL_") and not var.startswith("SHOAL_TEST_"):
                mp.delenv(var)
        mp.setenv("SHOAL_HOME", home)
        with open(os.path.join(home, "config.yaml"), "w", encoding="utf-8") as f:
            yaml.safe_dump(CONFIG, f)
        try:
            yield home
        finally:
            try:
                stop_worker(home, timeout=15, force=True)
                assert running_pid(home) is None
            finally:
                shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def shoal_home():
    with cli_home() as home:
        yield home


def new_bucket(server):
    s3 = server.client()
    name = f"shoal-cli-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name, s3


FILES = {
    "a/small.txt": b"hello, shoal\n",
    "a/b/pages.bin": random_bytes(5 * PAGE + 123, seed=1),
    "big.bin": random_bytes(1 << 20, seed=2),
    "empty": b"",
    "z/huge.bin": random_bytes(6 << 20, seed=3),  # more than a pipe holds
}


class Bucket:
    def __init__(self, name: str, endpoint_url: str):
        self.name, self.endpoint_url = name, endpoint_url


def run(
    *argv: str, stdin: bytes | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    """``shoal argv`` as a user runs it; stdout as bytes, stderr as text."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    env.pop("SHOAL_DEBUG", None)
    proc = subprocess.run(
        [sys.executable, "-m", "shoal", *argv],
        input=stdin,
        capture_output=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    proc.stderr = proc.stderr.decode(errors="replace")
    return proc


def ok(*argv: str, **kwargs) -> str:
    proc = run(*argv, **kwargs)
    assert proc.returncode == 0, (argv, proc.stderr)
    return proc.stdout.decode()


def fails(code: int, *argv: str) -> str:
    """Run ``shoal argv`` expecting exit ``code`` with nothing on stdout; its stderr."""
    proc = run(*argv)
    assert proc.returncode == code, (argv, proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == b""
    assert "Traceback" not in proc.stderr
    return proc.stderr


def one_error_line(stderr: str) -> str:
    assert stderr.startswith("shoal: error: "), stderr
    assert stderr.count("\n") == 1, stderr
    return stderr[len("shoal: error: ") :].rstrip("\n")


@pytest.fixture(scope="module")
def mounted(moto_server):
    """A worker (started by the first command) with a bucket of FILES mounted at /s3."""
    with cli_home() as home:
        name, s3 = new_bucket(moto_server)
        for key, data in FILES.items():
            s3.put_object(Bucket=name, Key=key, Body=data)
        bucket = Bucket(name, moto_server.endpoint_url)
        out = ok(
            "mount",
            "add",
            "/s3",
            f"s3://{bucket.name}",
            "--endpoint-url",
            bucket.endpoint_url,
            "--region",
            "us-east-1",
            "--access-key-env",
            ACCESS_KEY_ENV,
            "--secret-key-env",
            SECRET_KEY_ENV,
            "--metadata-ttl",
            "30",
            "-o",
            "addressing_style=path",
        )
        assert out == f"mounted s3://{bucket.name} at /s3\n"
        yield home, bucket


# --------------------------------------------------------------------- daemon


def test_up_and_down(shoal_home):
    out = ok("up")
    assert out.startswith("worker started (pid ")
    pid = running_pid(shoal_home)
    assert pid and process_alive(pid)
    assert f"(pid {pid})" in out and f"home {shoal_home}" in out
    assert ok("up") == f"worker already running (pid {pid}), home {shoal_home}\n"
    assert ok("down") == f"worker stopped (pid {pid}), home {shoal_home}\n"
    assert not process_alive(pid)
    assert running_pid(shoal_home) is None
    assert ok("down") == f"no worker running, home {shoal_home}\n"


def test_up_and_down_with_home_flag(shoal_home):
    other = shoal_home + "-other"
    try:
        out = ok(
            "up", "--home", other, "--capacity", "128MiB", "--mem-capacity", "0",
            "--page-size", "64KiB", "--host-id", "flagged",
        )  # fmt: skip
        assert f"home {other}" in out
        assert running_pid(shoal_home) is None
        report = json.loads(ok("report", "--json", "--home", other))
        assert report["tiers"]["SSD"]["capacity"] == 128 << 20
        assert report["worker"]["host_id"] == "flagged"
        assert ok("down", "--home", other).startswith("worker stopped")
    finally:
        stop_worker(other, timeout=15, force=True)
        shutil.rmtree(other, ignore_errors=True)


def test_worker_in_the_foreground(shoal_home):
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen(
        [sys.executable, "-m", "shoal", "worker", "--page-size", "128KiB", "--host-id", "fg"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(os.path.join(shoal_home, "worker.sock")):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the foreground worker did not start"
            time.sleep(0.05)
        report = json.loads(ok("report", "--json"))
        assert report["worker"]["pid"] == proc.pid
        assert report["worker"]["page_size"] == 128 << 10
        assert report["worker"]["host_id"] == "fg"
        # A second worker for the same home refuses to start.
        err = fails(1, "worker")
        assert one_error_line(err) == f"another worker (pid {proc.pid}) already serves {shoal_home}"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert f"worker {proc.pid} stopped" in proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


# --------------------------------------------------------------------- namespace


def test_mount_ls_shows_env_names_never_secrets(mounted):
    home, bucket = mounted
    for argv in (["mount", "ls"], ["mount", "ls", "--json"]):
        out = ok(*argv)
        assert FAKE_SECRET_KEY not in out and FAKE_ACCESS_KEY not in out
        assert ACCESS_KEY_ENV in out and SECRET_KEY_ENV in out
    lines = ok("mount", "ls").splitlines()
    assert lines[0].split() == ["PATH", "URI", "OPTIONS"]
    assert lines[1].split()[:2] == ["/s3", f"s3://{bucket.name}"]
    assert "addressing_style=path" in lines[1] and "metadata_ttl=30.0" in lines[1]
    (doc,) = json.loads(ok("mount", "ls", "--json"))
    assert doc["path"] == "/s3" and doc["options"]["access_key_env"] == ACCESS_KEY_ENV


def test_mount_add_rm(mounted):
    home, bucket = mounted
    ok("mount", "add", "/more/data", f"s3://{bucket.name}/a", "--endpoint-url",
       bucket.endpoint_url, "--region", "us-east-1", "--access-key-env", ACCESS_KEY_ENV,
       "--secret-key-env", SECRET_KEY_ENV, "-o", "addressing_style=path")  # fmt: skip
    assert "/more/data" in ok("mount", "ls")
    assert ok("ls", "/more/data") == "b/\nsmall.txt\n"
    err = fails(1, "mount", "add", "/more/data", f"s3://{bucket.name}", "--endpoint-url",
                bucket.endpoint_url, "--access-key-env", ACCESS_KEY_ENV, "--secret-key-env",
                SECRET_KEY_ENV)  # fmt: skip
    assert one_error_line(err).startswith("/more/data is already a mount point")
    assert ok("mount", "rm", "/more/data") == f"unmounted /more/data (s3://{bucket.name}/a)\n"
    assert "/more/data" not in ok("mount", "ls")
    assert one_error_line(fails(1, "mount", "rm", "/more/data")) == (
        "/more/data is not a mount point"
    )


def test_mount_refuses_a_literal_secret_without_echoing_it(mounted):
    err = fails(1, "mount", "add", "/leak", "s3://whatever", "-o", "secret_key=TOPSECRET123")
    assert "TOPSECRET123" not in err
    assert "secret_key_env" in one_error_line(err)
    assert "/leak" not in ok("mount", "ls")


def test_mount_bad_uri(mounted):
    msg = one_error_line(fails(1, "mount", "add", "/bad", "nosuchscheme://x/y"))
    assert "nosuchscheme" in msg


def test_ls(mounted):
    assert ok("ls", "/s3") == "a/\nbig.bin\nempty\nz/\n"
    assert ok("ls", "/s3/a/") == "b/\nsmall.txt\n"
    assert "s3/" in ok("ls", "/").splitlines()
    long = ok("ls", "-l", "/s3/a/b").splitlines()
    assert long[0].split() == ["TYPE", "SIZE", "MODIFIED", "NAME"]
    assert long[1].split()[0:2] == ["-", str(len(FILES["a/b/pages.bin"]))]
    assert long[1].endswith(" pages.bin")
    (entry,) = json.loads(ok("ls", "--json", "/s3/a/b/pages.bin"))
    assert entry["path"] == "/s3/a/b/pages.bin" and entry["type"] == "file"


def test_stat(mounted):
    size = len(FILES["a/b/pages.bin"])
    lines = ok("stat", "/s3/a/b/pages.bin").splitlines()
    assert lines[0] == "path     /s3/a/b/pages.bin"
    assert lines[1] == "type     file"
    assert lines[2] == f"size     320.1 KiB ({size} B)"
    doc = json.loads(ok("stat", "--json", "/s3/a/b/pages.bin"))
    assert doc["size"] == size and doc["version"]
    assert json.loads(ok("stat", "--json", "/s3/a"))["type"] == "directory"


def test_cat_bytes_exact(mounted):
    for key, data in FILES.items():
        assert run("cat", f"/s3/{key}").stdout == data, key
    data = FILES["a/b/pages.bin"]
    cases = [("0", "10"), ("65530", "20"), ("64KiB", "128KiB"), (str(len(data) - 5), "100")]
    for offset, length in cases:
        out = run("cat", "/s3/a/b/pages.bin", "--offset", offset, "--length", length).stdout
        start = int(offset) if offset.isdigit() else 64 << 10
        stop = start + (int(length) if length.isdigit() else 128 << 10)
        assert out == data[start:stop], (offset, length)
    assert run("cat", "/s3/a/b/pages.bin", "--offset", "1G").stdout == b""
    assert run("cat", "/s3/big.bin", "--offset", "1000").stdout == FILES["big.bin"][1000:]


def test_cat_into_a_closed_pipe(mounted):
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen(
        [sys.executable, "-m", "shoal", "cat", "/s3/z/huge.bin"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        assert proc.stdout.read(10) == FILES["z/huge.bin"][:10]
        proc.stdout.close()
        assert proc.wait(60) == 141  # as 128 + SIGPIPE, quietly
        assert proc.stderr.read() == b""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


# --------------------------------------------------------------------- cache jobs


def test_load_free_report(mounted):
    ok("free", "/s3")
    before = json.loads(ok("report", "--json"))
    proc = run("load", "/s3/a", "/s3/big.bin")
    assert proc.returncode == 0, proc.stderr
    total = len(FILES["a/small.txt"]) + len(FILES["a/b/pages.bin"]) + len(FILES["big.bin"])
    # Not a terminal: plain progress lines, the last one complete.
    last = proc.stderr.splitlines()[-1]
    assert last.startswith("load: 100%, 3/3 files, "), proc.stderr
    assert proc.stdout.decode().startswith("loaded 3 files, 1.3 MiB in ")
    after = json.loads(ok("report", "--json"))
    pages = 1 + 6 + 16
    assert after["pages"] - before["pages"] == pages
    assert after["ufs_bytes"] - before["ufs_bytes"] == total

    text = ok("report")
    assert f"pages       {after['pages']} cached" in text
    assert "hit ratio   " in text and "under-store " in text
    assert text.splitlines()[4].split()[0] == "SSD"

    # Cached now: reading them again hits.
    assert run("cat", "/s3/big.bin").stdout == FILES["big.bin"]
    again = json.loads(ok("report", "--json"))
    assert again["page_hits"] - after["page_hits"] == 16
    assert again["ufs_bytes"] == after["ufs_bytes"]

    out = ok("free", "/s3/a")
    assert out == "freed 7 pages, 320.1 KiB under /s3/a\n"
    freed = json.loads(ok("report", "--json"))
    assert freed["pages"] == after["pages"] - 7


def test_load_file_list_and_metadata_only(mounted, tmp_path):
    ok("free", "/s3")
    listing = tmp_path / "files.txt"
    listing.write_text("# two files\n/s3/a/small.txt\n\n/s3/empty\n")
    proc = run("load", "--file-list", str(listing), "--metadata-only")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode() == "loaded the metadata of 2 files (13 B)\n"
    assert proc.stderr.splitlines()[-1].startswith("metadata: 100%, 2/2 files")
    assert json.loads(ok("report", "--json"))["pages"] == 0
    proc = run("load", "--file-list", "-", "-q", stdin=b"/s3/a/small.txt\n")
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout.decode().startswith("loaded 1 files, 13 B in ")


# --------------------------------------------------------------------- bad input


def test_path_outside_mounts(mounted):
    for argv in (["ls", "/nope"], ["stat", "/nope/x"], ["cat", "/nope/x"], ["load", "/nope"]):
        assert one_error_line(fails(1, *argv)) == (
            f"{argv[1]} is not under any mount (see `shoal mount ls`)"
        )


def test_nonexistent_file(mounted):
    for argv in (["stat", "/s3/missing"], ["cat", "/s3/missing"], ["free", "/s3/missing"]):
        msg = one_error_line(fails(1, *argv))
        assert "missing" in msg and ("Not Found" in msg or "no such" in msg.lower()), msg


def test_cat_a_directory(mounted):
    assert one_error_line(fails(1, "cat", "/s3/a")) == "is a directory: /s3/a"


def test_usage_errors(mounted):
    err = fails(2, "bogus")
    assert "invalid choice: 'bogus'" in err and err.startswith("usage: shoal")
    assert "required: PATH" in fails(2, "stat")
    assert "is not a size" in fails(2, "cat", "/s3/big.bin", "--length", "12XB")
    assert "path must be absolute" in fails(2, "ls", "s3")
    assert "nothing to load" in fails(2, "load")


def test_debug_traceback(mounted):
    env = dict(os.environ, PYTHONPATH=ROOT, SHOAL_DEBUG="1")
    proc = subprocess.run(
        [sys.executable, "-m", "shoal", "stat", "/nope/x"],
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert b"Traceback (most recent call last)" in proc.stderr
    assert proc.stderr.rstrip().endswith(
        b"shoal: error: /nope/x is not under any mount (see `shoal mount ls`)"
    )
