"""Cluster membership on a real etcd: workers register under leases, other processes
watch them come, drain and go; outages of etcd keep the last view and recover."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from shoal.control._etcd import EtcdClient, EtcdCompactedError, EtcdUnavailableError
from shoal.control._membership import (
    EtcdMembership,
    WorkerInfo,
    WorkerNotFoundError,
    WorkerRegistration,
    WorkerState,
    load_worker_id,
    members_to_nodes,
)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MiB = 1 << 20

# A worker process as far as membership goes: registers, says so, waits for stdin to close.
WORKER = """
import json, sys, time
from shoal.control._membership import WorkerInfo, WorkerRegistration, load_worker_id
endpoint, prefix, home, port = sys.argv[1:]
info = WorkerInfo(load_worker_id(home), host_id="child-host", address=f"127.0.0.1:{port}",
                  capacity=64 << 20, started=time.time())
registration = WorkerRegistration(endpoint, info, prefix=prefix, ttl=3)
print(json.dumps({"id": info.id, "lease": registration.lease}), flush=True)
sys.stdin.read()
registration.close()
"""


def new_prefix() -> str:
    return f"/shoal-{uuid.uuid4().hex[:12]}/"


def wait_until(predicate, timeout: float, what: str) -> float:
    """Seconds until ``predicate()`` held; fails after ``timeout``."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.02)
    return time.monotonic() - start


def ids(membership) -> list[str]:
    return [m.id for m in membership.members()]


def record(worker_id: str, **fields) -> WorkerInfo:
    base = {"host_id": "test-host", "address": "127.0.0.1:7001", "capacity": 64 * MiB}
    return WorkerInfo(worker_id, **{**base, **fields})


class WorkerProcess:
    def __init__(self, endpoint: str, prefix: str, home: str, port: int = 7100):
        env = {**os.environ, "PYTHONPATH": REPO}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WORKER, endpoint, prefix, home, str(port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=REPO,
            env=env,
            text=True,
        )
        line = self.proc.stdout.readline()
        assert line, f"worker process exited with {self.proc.wait(10)}"
        self.id = json.loads(line)["id"]

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._close_pipes()

    def stop(self) -> None:
        """Close its stdin: it closes its registration and exits."""
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(10)
        self._close_pipes()

    def _close_pipes(self) -> None:
        for pipe in (self.proc.stdin, self.proc.stdout):
            if not pipe.closed:
                pipe.close()


@pytest.fixture
def prefix() -> str:
    return new_prefix()


@pytest.fixture
def membership(etcd_server, prefix):
    m = EtcdMembership(etcd_server.endpoint, prefix)
    yield m
    m.close()


def test_worker_process_joins_dies_and_returns_with_its_id(etcd_server, prefix, tmp_path):
    home = str(tmp_path / "home")
    with EtcdMembership(etcd_server.endpoint, prefix) as watcher:
        version = watcher.version
        worker = WorkerProcess(etcd_server.endpoint, prefix, home)
        try:
            # seen by this process (the etcd watch) at once after the worker registered
            wait_until(lambda: worker.id in ids(watcher), 2.0, "registration seen")
            seen = watcher.member(worker.id)
            assert (seen.host_id, seen.address) == ("child-host", "127.0.0.1:7100")
            assert seen.capacity == 64 * MiB and seen.state is WorkerState.ONLINE
            assert watcher.version > version and watcher.healthy
            assert worker.id == load_worker_id(home)

            worker.kill()
            assert worker.id in ids(watcher)  # the lease, not the connection, decides
            gone = wait_until(lambda: worker.id not in ids(watcher), 8.0, "dead worker dropped")
            assert gone >= 0.5
            offline = {m.id: m.state for m in watcher.roster()}
            assert offline == {worker.id: WorkerState.OFFLINE}

            again = WorkerProcess(etcd_server.endpoint, prefix, home, port=7200)
            assert again.id == worker.id
            wait_until(lambda: worker.id in ids(watcher), 2.0, "restarted worker seen")
            assert watcher.member(worker.id).address == "127.0.0.1:7200"
            again.stop()  # a clean stop revokes the lease: gone without waiting for the TTL
            wait_until(lambda: worker.id not in ids(watcher), 1.5, "stopped worker dropped")
        finally:
            worker.stop()


def test_members_seen_at_start_and_watch_callbacks(etcd_server, prefix):
    first = WorkerRegistration(etcd_server.endpoint, record("w-a"), prefix=prefix)
    try:
        with EtcdMembership(etcd_server.endpoint, prefix) as m:
            assert ids(m) == ["w-a"]  # read in full at start
            calls = []
            cancel = m.watch(lambda members: calls.append([x.id for x in members]))
            second = WorkerRegistration(etcd_server.endpoint, record("w-b"), prefix=prefix)
            wait_until(lambda: ["w-a", "w-b"] in calls, 2.0, "callback with both workers")
            cancel()
            second.close()
            wait_until(lambda: ids(m) == ["w-a"], 2.0, "second worker gone")
            assert calls[-1] == ["w-a", "w-b"]
    finally:
        first.close()


def test_drain_and_undrain(etcd_server, prefix, membership):
    a = WorkerRegistration(etcd_server.endpoint, record("w-a"), prefix=prefix, update_interval=0.2)
    b = WorkerRegistration(etcd_server.endpoint, record("w-b"), prefix=prefix)
    try:
        wait_until(lambda: ids(membership) == ["w-a", "w-b"], 2.0, "both registered")
        drained = membership.drain("w-a")
        assert drained.state is WorkerState.DRAINING
        wait_until(
            lambda: membership.member("w-a").state is WorkerState.DRAINING, 2.0, "drain seen"
        )
        assert [n.id for n in members_to_nodes(membership.members())] == ["w-b"]
        wait_until(lambda: a.info.state is WorkerState.DRAINING, 3.0, "worker knows")
        a.update(used=5 * MiB)  # its own updates keep the drain
        wait_until(lambda: membership.member("w-a").used == 5 * MiB, 2.0, "use published")
        assert membership.member("w-a").state is WorkerState.DRAINING
        # a drain outlives the registration: the worker comes back draining
        a.close()
        a = WorkerRegistration(etcd_server.endpoint, record("w-a"), prefix=prefix)
        assert a.info.state is WorkerState.DRAINING

        assert membership.undrain("w-a").state is WorkerState.ONLINE
        wait_until(lambda: membership.member("w-a").state is WorkerState.ONLINE, 2.0, "undrain")
        assert [n.id for n in members_to_nodes(membership.members())] == ["w-a", "w-b"]

        # a worker that is down can be drained; it registers draining
        b.close()
        wait_until(lambda: ids(membership) == ["w-a"], 2.0, "b gone")
        assert membership.drain("w-b").state is WorkerState.OFFLINE
        b = WorkerRegistration(etcd_server.endpoint, record("w-b"), prefix=prefix)
        wait_until(
            lambda: getattr(membership.member("w-b"), "state", None) is WorkerState.DRAINING,
            2.0,
            "b back, draining",
        )
    finally:
        a.close()
        b.close()


def test_drain_of_unknown_or_malformed_worker_id(membership):
    with pytest.raises(WorkerNotFoundError, match="no worker 'w-nobody' is registered") as exc:
        membership.drain("w-nobody")
    assert isinstance(exc.value, FileNotFoundError)
    with pytest.raises(FileNotFoundError, match="w-nobody"):
        membership.undrain("w-nobody")
    with pytest.raises(ValueError, match="worker id"):
        membership.drain("../etc")


def test_self_drain_and_use_updates(etcd_server, prefix, membership):
    used = [0]
    reg = WorkerRegistration(
        etcd_server.endpoint,
        record("w-a"),
        prefix=prefix,
        used_bytes=lambda: used[0],
        update_interval=0.2,
    )
    try:
        wait_until(lambda: ids(membership) == ["w-a"], 2.0, "registered")
        used[0] = 7 * MiB
        wait_until(lambda: membership.member("w-a").used == 7 * MiB, 3.0, "use sampled")
        reg.drain()
        assert reg.info.state is WorkerState.DRAINING
        wait_until(
            lambda: membership.member("w-a").state is WorkerState.DRAINING, 2.0, "self-drain"
        )
        assert members_to_nodes(membership.members()) == []
        with pytest.raises(ValueError, match="used"):
            reg.update(used=-1)
    finally:
        reg.close()


def test_lost_record_and_expired_lease_are_restored(etcd_server, prefix, membership):
    reg = WorkerRegistration(
        etcd_server.endpoint, record("w-a"), prefix=prefix, update_interval=0.2
    )
    try:
        with EtcdClient(etcd_server.endpoint) as client:
            wait_until(lambda: ids(membership) == ["w-a"], 2.0, "registered")
            client.delete(f"{prefix}workers/w-a".encode())
            wait_until(lambda: ids(membership) == [], 2.0, "record deleted")
            wait_until(lambda: ids(membership) == ["w-a"], 3.0, "record put back")

            old = reg.lease
            client.revoke(old)  # as if the lease had expired during an outage
            wait_until(lambda: reg.lease != old, 3.0, "new lease")
            wait_until(lambda: ids(membership) == ["w-a"], 2.0, "registered again")
            kv = client.get(f"{prefix}workers/w-a".encode())
            assert kv.lease == reg.lease
    finally:
        reg.close()


def test_etcd_outage_keeps_last_view_then_recovers(private_etcd, caplog):
    prefix = new_prefix()
    endpoint = private_etcd.endpoint
    caplog.set_level("INFO", logger="shoal.membership")
    reg = WorkerRegistration(endpoint, record("w-a"), prefix=prefix)
    m = EtcdMembership(endpoint, prefix)
    try:
        wait_until(lambda: ids(m) == ["w-a"], 2.0, "registered")
        private_etcd.stop()
        wait_until(lambda: not m.healthy, 5.0, "membership notices the outage")
        wait_until(lambda: not reg.healthy, 5.0, "registration notices the outage")
        time.sleep(1.5)  # retries go on meanwhile, silently
        assert ids(m) == ["w-a"]  # the last view, not an empty one
        assert endpoint in m.last_error and endpoint in reg.last_error
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert sum("membership unavailable" in w for w in warnings) == 1
        assert sum("cannot renew its registration" in w for w in warnings) == 1
        assert reg.update(used=9 * MiB) is False  # kept for later, no exception

        private_etcd.start()
        wait_until(lambda: m.healthy and reg.healthy, 10.0, "recovery")
        wait_until(lambda: ids(m) == ["w-a"], 5.0, "worker registered after the outage")
        wait_until(lambda: m.member("w-a").used == 9 * MiB, 3.0, "use published after it")
        # the watch follows changes again
        other = WorkerRegistration(endpoint, record("w-b"), prefix=prefix)
        wait_until(lambda: ids(m) == ["w-a", "w-b"], 2.0, "new worker after recovery")
        other.close()
        assert "membership recovered" in caplog.text
    finally:
        m.close()
        reg.close()


def test_close_while_etcd_is_down_does_not_hang(private_etcd):
    prefix = new_prefix()
    reg = WorkerRegistration(private_etcd.endpoint, record("w-a"), prefix=prefix)
    m = EtcdMembership(private_etcd.endpoint, prefix)
    private_etcd.stop()
    start = time.monotonic()
    reg.close()
    m.close()
    assert time.monotonic() - start < 5
    with pytest.raises(EtcdUnavailableError):
        EtcdMembership(private_etcd.endpoint, prefix)


def test_quiet_watch_reopens_and_compaction_reloads(etcd_server, prefix):
    with EtcdClient(etcd_server.endpoint) as client:
        m = EtcdMembership(etcd_server.endpoint, prefix, idle=0.2)
        try:
            start = client.put(f"{prefix}unrelated".encode(), b"x")
            time.sleep(0.7)  # a few quiet watches ended and reopened
            assert m.healthy
            reg = WorkerRegistration(etcd_server.endpoint, record("w-a"), prefix=prefix)
            wait_until(lambda: ids(m) == ["w-a"], 2.0, "seen after quiet reopenings")
            reg.close()
            wait_until(lambda: ids(m) == [], 2.0, "gone")
            # history before a compaction cannot be watched: the caller must read again
            revision = client.put(f"{prefix}unrelated".encode(), b"y")
            client.call("/kv/compaction", {"revision": revision, "physical": True})
            with pytest.raises(EtcdCompactedError, match="compacted"):
                for _ in client.watch(f"{prefix}workers/".encode(), start, idle=2):
                    pass
            reg = WorkerRegistration(etcd_server.endpoint, record("w-b"), prefix=prefix)
            wait_until(lambda: ids(m) == ["w-b"], 2.0, "seen after a compaction")
            reg.close()
        finally:
            m.close()
