"""A real S3 server for the tests: moto's, in this process, on 127.0.0.1 and a free port.

Port 0 lets the kernel pick the port, so parallel test runs never collide on a fixed one.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
import urllib.request
from collections.abc import Iterator

from shoal._testing._s3 import s3_client as local_s3_client

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
        return s3_client(self.endpoint_url)

    def iam_client(self):
        import boto3

        return boto3.client(
            "iam",
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id=FAKE_ACCESS_KEY,
            aws_secret_access_key=FAKE_SECRET_KEY,
        )


class FaultyProxy:
    """An HTTP proxy in front of the S3 server that answers chosen requests with an S3
    error instead of forwarding them: throttling and server failures on demand.

    ``faults`` is a list of ``(match, status, code)`` or ``(match, status, code, message)``:
    the next request whose ``"METHOD /path?query"`` contains ``match`` gets that error,
    once per entry.
    """

    def __init__(self, target: str, faults: list[tuple]):
        import http.server
        import threading
        import urllib.parse

        self.faults = list(faults)
        self.seen: list[str] = []
        self.ranges: list[str | None] = []  # the Range header of each request in seen
        target_netloc = urllib.parse.urlsplit(target).netloc
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def handle_one(self) -> None:
                import http.client

                line = f"{self.command} {self.path}"
                proxy.seen.append(line)
                proxy.ranges.append(self.headers.get("Range"))
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                for i, (match, status, code, *message) in enumerate(proxy.faults):
                    if match in line:
                        del proxy.faults[i]
                        text = message[0] if message else "injected by the test proxy"
                        xml = (
                            f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code>"
                            f"<Message>{text}</Message></Error>"
                        ).encode()
                        self.send_response(status)
                        self.send_header("Content-Type", "application/xml")
                        self.send_header("Content-Length", str(len(xml)))
                        self.end_headers()
                        if self.command != "HEAD":
                            self.wfile.write(xml)
                        return
                conn = http.client.HTTPConnection(target_netloc, timeout=10)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                payload = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                # A HEAD response announces the length of the body it does not send.
                length = resp.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)
                conn.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = handle_one

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.endpoint_url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


#: A moto S3 server on 127.0.0.1 and the port given (0: any free one), which it prints.
_MOTO = """
import logging, sys
from moto.server import ThreadedMotoServer
logging.getLogger("werkzeug").setLevel(logging.ERROR)
server = ThreadedMotoServer(ip_address="127.0.0.1", port=int(sys.argv[1]), verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()
"""


class MotoProcess:
    """A moto S3 server in a process of its own: killed, it closes every connection at
    once (a server thread of this process would keep serving open keep-alive ones)."""

    def __init__(self) -> None:
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, bucket: str) -> None:
        """Start the server (on the port it had, if any) with an empty ``bucket``."""
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _MOTO, str(self.port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.port = int(self.proc.stdout.readline())
        self.client().create_bucket(Bucket=bucket)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc.stdin.close()
            self.proc.stdout.close()
            self.proc = None

    def client(self):
        return s3_client(self.endpoint_url)


def s3_client(endpoint_url: str):
    """A plain boto3 client of the server at ``endpoint_url`` with the fake credentials."""
    return local_s3_client(endpoint_url, FAKE_ACCESS_KEY, FAKE_SECRET_KEY)
