"""A local S3 server: moto's, in a child process, on 127.0.0.1 and a port the kernel picks.

A child process keeps the server's request handling off the caller's GIL, so a benchmark
measures the reader, not a server sharing its interpreter. The child exits when the parent
closes its standard input, or dies: nothing is left running.
"""

from __future__ import annotations

import contextlib
import errno
import subprocess
import sys
import tempfile

__all__ = ["S3Server", "s3_client"]

#: Credentials the server accepts (moto takes any unless told to check them).
FAKE_ACCESS_KEY = "AKIASHOALDEMOKEY0001"
FAKE_SECRET_KEY = "shoal-demo-secret-not-a-real-one"

_CHILD = """
import logging, sys
from moto.server import ThreadedMotoServer
logging.getLogger("werkzeug").setLevel(logging.ERROR)
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()  # until the parent closes it, or dies
server.stop()
"""


class S3Server:
    """moto's S3 server in a child process: :meth:`start`, :meth:`client`, :meth:`stop`.

    Usable as a context manager. ``endpoint_url`` is set once started.
    """

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._log = None
        self.endpoint_url = ""

    def start(self, timeout: float = 60.0) -> None:
        """Start the server and wait until it listens.

        Raises
        ------
        ImportError
            moto (with its server extra) is not installed.
        ConnectionError
            The server did not come up; the message holds its output.
        """
        try:
            import moto.server  # noqa: F401 (checked here for a clear message)
        except ImportError as exc:
            raise ImportError(
                "a local S3 server needs moto: pip install 'moto[server]' (it is in Shoal's "
                "dev extra: pip install -e '.[dev]')"
            ) from exc
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 (kept until stop())
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            close_fds=True,
        )
        import selectors

        with selectors.DefaultSelector() as sel:
            sel.register(self._proc.stdout, selectors.EVENT_READ)
            ready = sel.select(timeout)
        line = self._proc.stdout.readline().strip() if ready else b""
        if not line.isdigit():
            output = self._output()
            self.stop()
            raise ConnectionError(
                errno.ECONNREFUSED, f"the S3 server (moto) did not start: {output[-2000:]}"
            )
        self.endpoint_url = f"http://127.0.0.1:{int(line)}"

    def _output(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    @property
    def pid(self) -> int | None:
        """The server process's pid while it runs."""
        return self._proc.pid if self._proc is not None else None

    def client(self, **config):
        """A boto3 S3 client of this server (see :func:`s3_client`)."""
        return s3_client(self.endpoint_url, **config)

    def credentials_env(self, prefix: str = "AWS_SHOAL_DEMO") -> dict[str, str]:
        """Environment variables holding the credentials, for mounts that name them:
        ``{NAME: value}`` with names ``PREFIX_ACCESS_KEY`` and ``PREFIX_SECRET_KEY``.

        The default names match ``AWS_*``, which a worker's default ``credential_env``
        lets mounts name; other names need that setting widened. No AWS tool reads them.
        """
        return {f"{prefix}_ACCESS_KEY": FAKE_ACCESS_KEY, f"{prefix}_SECRET_KEY": FAKE_SECRET_KEY}

    def mount_options(self, prefix: str = "AWS_SHOAL_DEMO") -> dict[str, str]:
        """Options of a Shoal mount of this server, naming the variables of
        :meth:`credentials_env` (which must be in the worker's environment)."""
        access, secret = self.credentials_env(prefix)
        return {
            "endpoint_url": self.endpoint_url,
            "region": "us-east-1",
            "addressing_style": "path",
            "access_key_env": access,
            "secret_key_env": secret,
        }

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server and wait for its process; idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            proc.stdout.close()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> S3Server:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def s3_client(
    endpoint_url: str,
    access_key: str = FAKE_ACCESS_KEY,
    secret_key: str = FAKE_SECRET_KEY,
    **config,
):
    """A boto3 S3 client of a local server at ``endpoint_url`` with fake credentials (this
    module's by default), path-style addressing; ``config``: more
    ``botocore.config.Config`` settings."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name="us-east-1",
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        config=Config(s3={"addressing_style": "path"}, **config),
    )
