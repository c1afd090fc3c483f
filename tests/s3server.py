"""A real S3 server for the tests: moto's, in this process, on 127.0.0.1 and a free port.

Port 0 lets the kernel pick the port, so parallel test runs never collide on a fixed one.
"""

from __future__ import annotations

import contextlib
import logging
import urllib.request
from collections.abc import Iterator

# Fake credentials the fixture exports; moto accepts any unless told to enforce IAM.
ACCESS_KEY_ENV = "SHOAL_TEST_S3_ACCESS_KEY"
SECRET_KEY_ENV = "SHOAL_TEST_S3_SECRET_KEY"
FAKE_ACCESS_KEY = "AKIASHOALTESTKEY0001"
FAKE_SECRET_KEY = "shoal-test-secret-value-do-not-print"


class MotoS3Server:
    """moto's threaded server: :meth:`start`, :meth:`reset` between tests, :meth:`stop`."""

    def __init__(self) -> None:
        self._server = None
        self.endpoint_url = ""

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        # werkzeug logs every request at INFO; the test output does not need them.
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def _post(self, path: str, body: bytes = b"") -> None:
        request = urllib.request.Request(
            self.endpoint_url + path,
            data=body,
            method="POST",
            headers={"Content-Type": "text/plain"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()

    def reset(self) -> None:
        """Forget every bucket, object and IAM user."""
        self._post("/moto-api/reset")

    @contextlib.contextmanager
    def enforcing_auth(self) -> Iterator[None]:
        """Within the block the server checks signatures and IAM policies, as AWS does:
        unknown keys get InvalidAccessKeyId, users without a policy AccessDenied."""
        self._post("/moto-api/reset-auth", b"0")
        try:
            yield
        finally:
            self._post("/moto-api/reset-auth", b"inf")

    def client(self):
        """A plain boto3 client with the fake credentials, to arrange test state."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id=FAKE_ACCESS_KEY,
            aws_secret_access_key=FAKE_SECRET_KEY,
        )

    def iam_client(self):
        import boto3

        return boto3.client(
            "iam",
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id=FAKE_ACCESS_KEY,
            aws_secret_access_key=FAKE_SECRET_KEY,
        )
