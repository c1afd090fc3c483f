"""The worker daemon's life: started by the first client (once, however many start at
once), refused twice, stopped cleanly, restarted with its cache and mounts, killed in the
middle of a read."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from shoal import Client
from shoal._config import load_config
from shoal.control._daemon import LOG_FILE, SOCKET_FILE, run_worker

PAGE = 64 << 10


def random_bytes(size: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


def test_first_client_starts_the_worker(client, shoal_home, daemons):
    assert daemons.pid(shoal_home) is None
    pid = client.worker_pid()
    assert daemons.pid(shoal_home) == pid and daemons.alive(pid)
    assert pid != os.getpid()
    assert os.path.exists(os.path.join(shoal_home, SOCKET_FILE))
    assert "serving" in Path(shoal_home, LOG_FILE).read_text()
    report = client.report()
    assert report["worker"]["pid"] == pid and report["worker"]["home"] == shoal_home
    assert report["tiers"]["SSD"]["capacity"] == 16 << 20


def test_many_clients_starting_at_once_get_one_worker(shoal_home, daemons):
    code = "from shoal import Client; print(Client().worker_pid(), flush=True)"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env)
        for _ in range(4)
    ]
    pids = set()
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0
        pids.add(int(out))
    assert len(pids) == 1
    assert daemons.pid(shoal_home) == pids.pop()


def test_second_worker_on_the_same_home_exits(client, shoal_home):
    pid = client.worker_pid()
    code = "from shoal.control._daemon import _daemon_main; _daemon_main()"
    cfg = __import__("json").dumps(__import__("dataclasses").asdict(client.config))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run(
        [sys.executable, "-c", code, cfg], capture_output=True, env=env, timeout=60
    )
    assert out.returncode == 1
    assert f"another worker (pid {pid}) already serves {shoal_home}" in out.stderr.decode()
    assert client.worker_pid() == pid  # the first one is unharmed


def test_run_worker_in_the_foreground_refuses_a_busy_home(client, shoal_home):
    client.worker_pid()
    with pytest.raises(OSError, match="already serves") as info:
        run_worker(load_config(), foreground=True)
    assert info.value.errno == 16  # EBUSY


def test_sigterm_shuts_down_cleanly(client, shoal_home, daemons, tmp_path):
    (tmp_path / "f").write_bytes(b"x" * 1000)
    client.mount("/d", str(tmp_path))
    assert client.read_into(bytearray(1000), "/d/f") == 1000
    pid = client.worker_pid()
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while daemons.alive(pid):
        assert time.monotonic() < deadline, "worker did not stop on SIGTERM"
        time.sleep(0.02)
    assert not os.path.exists(os.path.join(shoal_home, SOCKET_FILE))
    assert daemons.pid(shoal_home) is None
    log = Path(shoal_home, LOG_FILE).read_text()
    assert f"worker {pid} stopped" in log


def test_restart_keeps_cache_and_mounts(client, shoal_home, daemons, bucket):
    client.mount("/m", f"s3://{bucket.name}", **bucket.options())
    data = random_bytes(5 * PAGE + 7, 3)
    bucket.put("obj", data)
    buf = bytearray(len(data))
    assert client.read_into(buf, "/m/obj") == len(data) and bytes(buf) == data
    first = client.worker_pid()
    daemons.stop(shoal_home)
    # A call that needs the worker starts a new one, which reopens the cache and mounts.
    assert [m.path for m in client.mounts()] == ["/m"]
    assert client.worker_pid() != first
    buf = bytearray(len(data))
    assert client.read_into(buf, "/m/obj") == len(data) and bytes(buf) == data
    report = client.report()
    assert report["ufs_bytes"] == 0
    assert report["page_hits"] == 6 and report["page_misses"] == 0
    assert report["pages"] == 6


def test_kill_9_between_reads_falls_back_then_restarts(client, shoal_home, daemons, bucket):
    client.mount("/m", f"s3://{bucket.name}", **bucket.options(read_ahead=0))
    data = random_bytes(40 * PAGE + 11, 4)
    bucket.put("big", data)
    got = bytearray()
    with client.open("/m/big", buffer_size=PAGE) as f:
        got += f.read(3 * PAGE)
        killed = daemons.kill(shoal_home)
        got += f.read(PAGE)  # the worker is gone: read straight from S3
        got += f.read()
    assert bytes(got) == data
    new = client.worker_pid()
    assert new != killed and daemons.alive(new)


def test_kill_9_during_a_read(client, shoal_home, daemons, bucket):
    client.mount("/m", f"s3://{bucket.name}", **bucket.options())
    data = random_bytes(200 * PAGE, 5)  # 12.5 MiB, cold: a few hundred ms of fetching
    bucket.put("big", data)
    client.stat("/m/big")
    first = client.worker_pid()
    timer = threading.Timer(0.15, daemons.kill, args=(shoal_home,))
    buf = np.zeros(len(data), dtype=np.uint8)
    timer.start()
    try:
        assert client.read_into(buf, "/m/big") == len(data)
    finally:
        timer.join()
    assert buf.tobytes() == data
    assert not daemons.alive(first)
    assert client.worker_pid() != first


def test_start_failure_points_at_the_log(shoal_home):
    with open(os.path.join(shoal_home, "blocker"), "w") as f:
        f.write("not a directory")
    config = load_config(cache_dir=os.path.join(shoal_home, "blocker", "cache"), capacity=1 << 20)
    client = Client(config, start_timeout=30)
    try:
        with pytest.raises(ConnectionError, match="exited during start-up; see .*worker.log"):
            client.stat("/anything")
    finally:
        client.close()


def test_no_start_without_permission(shoal_home):
    client = Client(load_config(), start_worker=False)
    try:
        with pytest.raises(ConnectionRefusedError, match="no Shoal worker answers"):
            client.mounts()
    finally:
        client.close()


def test_home_too_long_for_a_socket(tmp_path):
    home = tmp_path / ("h" * 120)
    client = Client(load_config(home=str(home), capacity=1 << 20, mem_capacity=0,
                                region_size=1 << 20, page_size=1 << 16, chunk_size=1 << 20),
                    start_worker=True)  # fmt: skip
    try:
        with pytest.raises(ValueError, match="longer than 107 bytes.*SHOAL_HOME"):
            client.mounts()
    finally:
        client.close()


def test_closed_client(client):
    client.close()
    client.close()
    with pytest.raises(ValueError, match="closed"):
        client.mounts()


def test_reads_go_direct_when_no_worker_can_start(client, shoal_home, daemons, bucket):
    client.mount("/m", f"s3://{bucket.name}", **bucket.options())
    data = random_bytes(3 * PAGE, 6)
    bucket.put("obj", data)
    buf = bytearray(len(data))
    assert client.read_into(buf, "/m/obj") == len(data)
    daemons.stop(shoal_home)
    cache = os.path.join(shoal_home, "cache")
    os.rename(cache, cache + ".moved")
    with open(cache, "w") as f:
        f.write("a file where the cache directory should be: the worker cannot start")
    buf = bytearray(len(data))
    assert client.read_into(buf, "/m/obj") == len(data) and bytes(buf) == data
    assert daemons.pid(shoal_home) is None
    # The read tried to start a worker (its connection was lost) and went direct; calls
    # within the retry delay do not try again, and say where to look.
    with pytest.raises(ConnectionError, match="could not be started a moment ago; see .*log"):
        client.stat("/m/other")
    assert daemons.pid(shoal_home) is None


def test_a_socket_that_resets_at_hello_counts_as_no_worker(shoal_home, daemons):
    """What a client meets when it connects to a worker in the instant it is killed: the
    socket accepts, then the connection is reset. It starts a worker as if none ran."""
    import socket

    path = os.path.join(shoal_home, SOCKET_FILE)
    dying = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dying.bind(path)
    dying.listen(8)

    def reset_one() -> None:
        conn, _ = dying.accept()
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        conn.close()  # with linger 0: a reset, as from a process that died
        dying.close()

    t = threading.Thread(target=reset_one)
    t.start()
    c = Client(load_config())
    try:
        assert c.worker_pid() > 0 and daemons.pid(shoal_home) == c.worker_pid()
        assert c.mounts() == []
    finally:
        c.close()
        t.join(timeout=10)


def test_a_pid_file_still_locked_by_a_dying_worker_delays_the_start_only(shoal_home, daemons):
    """A killed worker's last threads may hold its pid file's lock a moment after its main
    thread is gone: a client then waits for the lock, and starts a worker."""
    import fcntl

    from shoal.control._daemon import PID_FILE

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    fd = os.open(os.path.join(shoal_home, PID_FILE), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, dead.stdout.strip().encode())
    release = threading.Timer(0.5, os.close, (fd,))
    release.start()
    started = time.monotonic()
    c = Client(load_config())
    try:
        assert c.worker_pid() != int(dead.stdout) and daemons.alive(c.worker_pid())
        assert time.monotonic() - started >= 0.5  # it waited for the lock
    finally:
        c.close()
        release.join()
