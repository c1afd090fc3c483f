"""Fixtures shared by the whole suite."""

from __future__ import annotations

import pytest
from s3server import (
    ACCESS_KEY_ENV,
    FAKE_ACCESS_KEY,
    FAKE_SECRET_KEY,
    SECRET_KEY_ENV,
    MotoS3Server,
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
