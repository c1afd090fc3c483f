"""Fixtures shared by the whole suite."""

from __future__ import annotations

import os

import pytest
from s3server import (
    ACCESS_KEY_ENV,
    FAKE_ACCESS_KEY,
    FAKE_SECRET_KEY,
    SECRET_KEY_ENV,
    MotoS3Server,
)

SHM = "/dev/shm"


def _shm_entries() -> set[str]:
    """Entries of /dev/shm named as Shoal names its MEM tiers and its tests their
    directories there (``shoal-...``)."""
    try:
        return {name for name in os.listdir(SHM) if name.startswith("shoal")}
    except FileNotFoundError:
        return set()


def _in_use(names: set[str]) -> set[str]:
    """Those of ``names`` beneath which a process holds a file open: a page store open now,
    such as one of another test session on this machine."""
    used = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith(SHM + "/"):
                used.add(target[len(SHM) + 1 :].split("/", 1)[0])
    return used & names


@pytest.fixture(scope="session", autouse=True)
def nothing_left_in_shm():
    """Fail the session when it leaves entries in /dev/shm: a MEM tier there holds RAM
    until someone removes it. Every test that makes one (a ``Config`` without
    ``mem_capacity=0`` has a MEM tier of 10% of RAM) removes it when it ends, passed or
    failed. Entries still in use at the end are not counted: they belong to a live store."""
    before = _shm_entries()
    yield
    new = _shm_entries() - before
    left = sorted(new - _in_use(new)) if new else []
    if left:
        pytest.fail(
            f"this test session left {len(left)} entries in {SHM}, each holding memory until "
            f"it is removed: {', '.join(os.path.join(SHM, name) for name in left)}; the test "
            "that made one must remove it when it ends (see tests/conftest.py)",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def moto_server():
    """One moto S3 server for the session, with fake credentials in the environment
    (under names of our own, so real AWS credentials of the machine are never used)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ACCESS_KEY_ENV, FAKE_ACCESS_KEY)
        mp.setenv(SECRET_KEY_ENV, FAKE_SECRET_KEY)
        server = MotoS3Server()
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
def s3_server(moto_server):
    """The session's moto server, emptied before the test."""
    moto_server.reset()
    return moto_server


@pytest.fixture(scope="session")
def etcd_server():
    """One etcd (Debian's etcd-server) for the session, on free loopback ports in a
    temporary data directory; tests keep apart by key prefix."""
    from etcdserver import EtcdServer

    server = EtcdServer()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def private_etcd():
    """An etcd of the test's own, for outages: ``stop()`` kills it, ``start()`` brings it
    back on the same ports with the same data."""
    from etcdserver import EtcdServer

    server = EtcdServer()
    try:
        server.start()
        yield server
    finally:
        server.close()
