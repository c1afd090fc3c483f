"""A Shoal cluster on loopback for the tests: workers as separate processes (``shoal
worker``), each with its own home, cache directory, host id and TCP port, registered in a
real etcd; clients with yet another host id, so that every read takes the remote path.
Workers and clients share a cluster secret and an admin secret, as a real cluster does: every
TCP connection of these tests is authenticated."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

import yaml

from shoal._config import Config
from shoal.cli._secret import write_secret
from shoal.client import Client
from shoal.client._connection import Connection
from shoal.control._membership import EtcdMembership, load_worker_id

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PAGE = 64 << 10
SMALL = {
    "page_size": PAGE,
    "chunk_size": 4 * PAGE,
    "region_size": 4 * PAGE,
    "capacity": 16 << 20,
    "mem_capacity": 0,
}
#: A worker's settings besides: its mounts may name the moto server's credentials.
WORKER_SETTINGS = {**SMALL, "credential_env": ["AWS_*", "SHOAL_TEST_*"]}


class Secrets:
    """A cluster secret and an admin secret (files, mode 0600) in a directory of their own."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="shoal-sec-", dir="/tmp")
        self.cluster = write_secret(os.path.join(self.dir, "cluster.secret"))
        self.admin = write_secret(os.path.join(self.dir, "admin.secret"))

    def flags(self) -> list[str]:
        """``shoal worker`` flags that give a worker both secrets."""
        return ["--cluster-secret-file", self.cluster, "--admin-secret-file", self.admin]

    def settings(self, admin: bool = True) -> dict:
        """Config fields of a client: the cluster secret, and the admin secret if ``admin``."""
        out = {"cluster_secret_file": self.cluster}
        if admin:
            out["admin_secret_file"] = self.admin
        return out

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


class WorkerProcess:
    """``shoal worker --etcd ... --listen 127.0.0.1:0`` in a home of its own (or, with
    ``membership_file``, on the port ``listen`` names, listed in that file), with the
    cluster's ``secrets`` and any more ``flags``."""

    def __init__(
        self,
        etcd: str | None,
        host_id: str,
        listen: str = "127.0.0.1:0",
        membership_file: str | None = None,
        secrets: Secrets | None = None,
        flags: Sequence[str] = (),
    ):
        self.etcd = etcd
        self.flags = list(flags)
        self.host_id = host_id
        self.listen = listen
        self.secrets = secrets
        self.cluster = ["--etcd", etcd] if etcd else ["--membership-file", membership_file]
        self.home = tempfile.mkdtemp(prefix="shoal-cl-", dir="/tmp")
        with open(os.path.join(self.home, "config.yaml"), "w", encoding="utf-8") as f:
            yaml.safe_dump(WORKER_SETTINGS, f)
        self.id = load_worker_id(self.home)
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("SHOAL_") or k.startswith("SHOAL_TEST_")
        }
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")]))
        command = [
            sys.executable, "-m", "shoal", "worker", "--home", self.home, *self.cluster,
            "--listen", self.listen, "--cache-dir", os.path.join(self.home, "cache"),
            "--capacity", "16MiB", "--host-id", self.host_id,
            *(self.secrets.flags() if self.secrets is not None else ()), *self.flags,
        ]  # fmt: skip
        with open(os.path.join(self.home, "worker.log"), "ab") as log:
            self.proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env
            )

    def kill(self) -> None:
        """``kill -9``."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                raise

    def log(self) -> str:
        with open(os.path.join(self.home, "worker.log"), encoding="utf-8", errors="replace") as f:
            return f.read()[-3000:]


class Cluster:
    """Workers registered in one etcd, and a way to see them."""

    def __init__(self, etcd: str, count: int):
        self.etcd = etcd
        self.workers: list[WorkerProcess] = []
        self.secrets = Secrets()
        self.membership = EtcdMembership(etcd)
        self.homes: list[str] = []
        try:
            for n in range(count):
                self.workers.append(WorkerProcess(etcd, f"host-{n}", secrets=self.secrets))
            self.wait_members({w.id for w in self.workers})
        except BaseException:
            self.close()
            raise

    def wait_members(self, ids: set[str], timeout: float = 60.0) -> None:
        def ready():
            live = {m.id: m for m in self.membership.members()}
            dead = [w for w in self.workers if w.proc.poll() is not None and w.id in ids]
            assert not dead, f"worker exited:\n{dead[0].log()}"
            return set(live) >= ids

        wait_until(ready, timeout, f"workers {sorted(ids)} to register")

    def address(self, worker: WorkerProcess) -> str:
        member = self.membership.member(worker.id)
        assert member is not None, f"worker {worker.id} is not registered"
        return member.address

    def connect(self, worker: WorkerProcess, admin: bool = False) -> Connection:
        """A TCP connection to ``worker`` that proves the cluster secret (and the admin
        secret if ``admin``)."""
        config = Config(home=self.secrets.dir, **self.secrets.settings(admin), **SMALL)
        return Connection(None, 30.0, address=self.address(worker), config=config)

    def report(self, worker: WorkerProcess) -> dict:
        conn = self.connect(worker)
        try:
            return conn.call({"op": "report"})["report"]
        finally:
            conn.close()

    def client(self, admin: bool = True, host_id: str = "client-host", **kwargs) -> Client:
        """A client of the cluster, holding the cluster secret and, if ``admin``, the admin
        secret; on another host, or on the host of the workers whose ``host_id`` it is
        given."""
        home = tempfile.mkdtemp(prefix="shoal-clc-", dir="/tmp")
        self.homes.append(home)
        config = Config(
            home=home, host_id=host_id, etcd=self.etcd, **self.secrets.settings(admin),
            **SMALL,
        )  # fmt: skip
        return Client(config, start_worker=False, **kwargs)

    def close(self) -> None:
        errors = []
        for w in self.workers:
            try:
                w.stop()
            except Exception as exc:  # every worker is stopped whatever happens
                errors.append(exc)
        self.membership.close()
        for w in self.workers:
            shutil.rmtree(w.home, ignore_errors=True)
        for home in self.homes:
            shutil.rmtree(home, ignore_errors=True)
        self.secrets.close()
        if errors:
            raise errors[0]


@contextlib.contextmanager
def running_cluster(etcd: str, count: int = 3):
    cluster = Cluster(etcd, count)
    try:
        yield cluster
    finally:
        cluster.close()


@dataclasses.dataclass
class StaticCluster:
    """Workers listed in a membership file, and the settings of a client on another host
    (written to ``home``'s config.yaml as well, for commands run with ``--home``)."""

    members: str
    addresses: list[str]
    workers: list[WorkerProcess]
    home: str
    config: Config


@contextlib.contextmanager
def static_cluster(directory, name: str, count: int = 2, flags: Sequence[str] = ()):
    """``count`` workers (ids ``<name>-<n>`` on hosts ``host-<n>``) listed in a membership
    file in ``directory``, listening once this yields; stopped and removed at the end."""
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(count)]
    members = os.path.join(directory, "members.yaml")
    listed = [
        {"id": f"{name}-{n}", "host_id": f"host-{n}", "address": a, "capacity": "16MiB"}
        for n, a in enumerate(addresses)
    ]
    with open(members, "w", encoding="utf-8") as f:
        yaml.safe_dump({"workers": listed}, f)
    secrets = Secrets()
    workers = [
        WorkerProcess(
            None, f"host-{n}", listen=a, membership_file=members, secrets=secrets, flags=flags
        )
        for n, a in enumerate(addresses)
    ]
    home = tempfile.mkdtemp(prefix=f"shoal-{name}-", dir="/tmp")
    settings = {
        "host_id": "client-host", "membership_file": members, **secrets.settings(), **SMALL
    }  # fmt: skip
    try:
        with open(os.path.join(home, "config.yaml"), "w", encoding="utf-8") as f:
            yaml.safe_dump(settings, f)
        config = Config(home=home, **settings)
        for w, a in zip(workers, addresses, strict=True):
            wait_listening(a, w, config)
        yield StaticCluster(members, addresses, workers, home, config)
    finally:
        for w in workers:
            w.stop()
        for w in workers:
            shutil.rmtree(w.home, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)
        secrets.close()


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as s:
        return s.getsockname()[1]


def wait_listening(
    address: str, worker: WorkerProcess, config: Config, timeout: float = 60.0
) -> None:
    """Until ``worker`` answers at ``address``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            Connection(None, 5.0, address=address, config=config).close()
            return
        except ConnectionError:
            assert worker.proc.poll() is None, f"worker exited:\n{worker.log()}"
            assert time.monotonic() < deadline, f"worker at {address} did not start"
            time.sleep(0.05)
