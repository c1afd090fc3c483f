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
