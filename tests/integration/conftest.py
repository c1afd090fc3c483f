"""Fixtures of the integration tests: a Shoal home with a small configuration, the worker
daemon serving it (always stopped in teardown, checked by its pid), S3 buckets on the
session's moto server."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from s3server import ACCESS_KEY_ENV, SECRET_KEY_ENV, MotoProcess

from shoal._config import DEFAULT_ALLOWED_MOUNTS, load_config
from shoal._testing._home import remove_mem_tier
from shoal.client import Client
from shoal.control._daemon import process_alive, running_pid

PAGE = 64 << 10
#: The temporary directory (pytest's ``tmp_path`` lies under it), as a mount prefix.
TMP_MOUNTS = Path(tempfile.gettempdir()).resolve().as_uri().rstrip("/") + "/"
#: What the tests' workers mount: the object stores allowed by default, and directories
#: under the temporary directory (never the rest of the machine).
TEST_ALLOWED_MOUNTS = [*DEFAULT_ALLOWED_MOUNTS, TMP_MOUNTS]
#: Variables the tests' mounts name: the moto server's credentials (``SHOAL_TEST_*``).
TEST_CREDENTIAL_ENV = ["AWS_*", "SHOAL_TEST_*"]
#: Small pages, chunks and regions keep the tests fast and make files span many pages.
SMALL_CONFIG = {
    "page_size": PAGE,
    "chunk_size": 4 * PAGE,
    "region_size": 4 * PAGE,
    "capacity": 16 << 20,
    "mem_capacity": 0,
    "host_id": "test-node",
    "allowed_mounts": TEST_ALLOWED_MOUNTS,
    "credential_env": TEST_CREDENTIAL_ENV,
}
WRONG_ACCESS_ENV = "SHOAL_TEST_WRONG_ACCESS_KEY"
WRONG_SECRET_ENV = "SHOAL_TEST_WRONG_SECRET_KEY"


def write_config(home: str, **settings) -> None:
    import yaml

    with open(os.path.join(home, "config.yaml"), "w", encoding="utf-8") as f:
        yaml.safe_dump({**SMALL_CONFIG, **settings}, f)


def stop_worker(home: str, timeout: float = 15.0) -> None:
    """Stop the worker serving ``home`` (SIGTERM, then SIGKILL) and check that it is gone."""
    pid = running_pid(home)
    if pid is None or pid <= 0:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    if process_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
        raise AssertionError(f"worker {pid} ignored SIGTERM for {timeout} s and was killed")
    assert running_pid(home) is None


def kill_worker(home: str) -> int:
    """``kill -9`` the worker of ``home``; its pid, once it is gone."""
    pid = running_pid(home)
    assert pid and pid > 0, "no worker runs"
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while process_alive(pid):
        assert time.monotonic() < deadline, f"worker {pid} survived SIGKILL"
        time.sleep(0.01)
    return pid


@contextlib.contextmanager
def shoal_environment(**settings) -> Iterator[str]:
    """A fresh home (short path: it holds a Unix socket) with the small configuration,
    as ``$SHOAL_HOME``; on exit the worker it got is stopped, then the home and the MEM
    tier on /dev/shm that ``settings`` may give it are removed."""
    home = tempfile.mkdtemp(prefix="shoal-it-", dir="/tmp")
    with pytest.MonkeyPatch.context() as mp:
        for var in list(os.environ):
            if var.startswith("SHOAL_") and not var.startswith("SHOAL_TEST_"):
                mp.delenv(var)
        mp.setenv("SHOAL_HOME", home)
        mp.setenv(WRONG_ACCESS_ENV, "AKIANOSUCHKEY0000000")
        mp.setenv(WRONG_SECRET_ENV, "not-the-secret")
        write_config(home, **settings)
        try:
            yield home
        finally:
            try:
                stop_worker(home)
            finally:
                remove_mem_tier(home)
                shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def shoal_home() -> Iterator[str]:
    """A fresh ``$SHOAL_HOME`` for one test; its worker is stopped at the end."""
    with shoal_environment() as home:
        yield home


@pytest.fixture
def client(shoal_home) -> Iterator[Client]:
    """A client of a worker of its own (started on first use)."""
    c = Client(load_config())
    yield c
    c.close()


@pytest.fixture
def two_tiers() -> Iterator[Client]:
    """A client of a worker of its own with a MEM tier of 1 MiB (4 regions of 4 pages)
    before its SSD tier."""
    with shoal_environment(mem_capacity=1 << 20):
        c = Client(load_config())
        try:
            yield c
        finally:
            c.close()


@dataclass
class Bucket:
    """A bucket on the moto server, with the mount options that reach it."""

    name: str
    endpoint_url: str
    s3: object

    def options(self, **extra) -> dict:
        return {
            "endpoint_url": self.endpoint_url,
            "region": "us-east-1",
            "addressing_style": "path",
            "access_key_env": ACCESS_KEY_ENV,
            "secret_key_env": SECRET_KEY_ENV,
            **extra,
        }

    def put(self, key: str, data: bytes) -> None:
        self.s3.put_object(Bucket=self.name, Key=key, Body=data)


def new_bucket(server) -> Bucket:
    s3 = server.client()
    name = f"shoal-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return Bucket(name, server.endpoint_url, s3)


@pytest.fixture
def bucket(moto_server) -> Bucket:
    """A new, empty bucket (the session's server is not reset: module-scoped workers keep
    their buckets)."""
    return new_bucket(moto_server)


@pytest.fixture(scope="module")
def shared(moto_server) -> Iterator[tuple[Client, Bucket, str]]:
    """One worker for a module's read-only tests: ``(client, bucket, home)``; the bucket
    is mounted at ``/s3``."""
    with shoal_environment() as home:
        b = new_bucket(moto_server)
        c = Client(load_config())
        c.mount("/s3", f"s3://{b.name}", **b.options())
        try:
            yield c, b, home
        finally:
            c.close()


class Daemons:
    """Control of worker daemons for the tests: find, stop or kill the one of a home."""

    pid = staticmethod(running_pid)
    alive = staticmethod(process_alive)
    stop = staticmethod(stop_worker)
    kill = staticmethod(kill_worker)
    environment = staticmethod(shoal_environment)


@pytest.fixture
def daemons() -> type[Daemons]:
    return Daemons


@pytest.fixture(scope="module")
def etcd():
    """An etcd of the test module's own: a cluster module's workers, leases and mount table
    start from nothing and never meet another module's."""
    from etcdserver import EtcdServer

    server = EtcdServer()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def moto_process(moto_server) -> Iterator[MotoProcess]:
    """A moto server of the test's own (``moto_server`` puts its credentials in the
    environment), killed at the end."""
    server = MotoProcess()
    try:
        yield server
    finally:
        server.kill()
