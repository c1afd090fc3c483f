"""A real etcd for the tests: Debian's ``etcd`` binary, one member, in a temporary data
directory, on 127.0.0.1 and free ports.

Ports are picked by binding port 0 first, so parallel test runs never collide on a fixed
one. :meth:`EtcdServer.stop` and :meth:`EtcdServer.start` again keep the data and the ports:
an outage and a recovery, as clients see them. ``args`` adds flags of etcd's own
(``--auth-token-ttl=2``); ``tls`` serves ``https://`` and wants client certificates.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Sequence

START_TIMEOUT = 30.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EtcdServer:
    """One etcd member: :meth:`start`, :meth:`stop` (an outage), :meth:`start` again,
    :meth:`close` at the end (stops it and removes its data).

    ``tls`` is ``(ca, cert, key)``: etcd serves ``cert`` (which must allow client auth as
    well, for etcd's gateway dials etcd with it) and takes only clients whose certificate
    ``ca`` signed; the health check shows ``cert`` too."""

    def __init__(self, args: Sequence[str] = (), tls: tuple[str, str, str] | None = None) -> None:
        binary = shutil.which("etcd")
        if binary is None:
            raise RuntimeError(
                "etcd is not installed: the cluster tests need Debian's etcd-server "
                "(`make test` installs it)"
            )
        self.binary = binary
        self.dir = tempfile.mkdtemp(prefix="shoal-etcd-")
        self.client_port = _free_port()
        self.peer_port = _free_port()
        self.args = list(args)
        self.tls = tls
        self.endpoint = f"{'https' if tls else 'http'}://127.0.0.1:{self.client_port}"
        self._proc: subprocess.Popen | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _command(self) -> list[str]:
        peer = f"http://127.0.0.1:{self.peer_port}"
        return [
            self.binary,
            "--name=shoal-test",
            f"--data-dir={os.path.join(self.dir, 'data')}",
            f"--listen-client-urls={self.endpoint}",
            f"--advertise-client-urls={self.endpoint}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=shoal-test={peer}",
            "--initial-cluster-state=new",
            # a single member elects itself sooner with a shorter election timeout
            "--heartbeat-interval=50",
            "--election-timeout=500",
            "--logger=zap",
            "--log-outputs=stderr",
            "--log-level=warn",
            *self._tls_args(),
            *self.args,
        ]

    def _tls_args(self) -> list[str]:
        if self.tls is None:
            return []
        ca, cert, key = self.tls
        return [
            "--client-cert-auth",
            f"--trusted-ca-file={ca}",
            f"--cert-file={cert}",
            f"--key-file={key}",
        ]

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start etcd (again) and wait until it reports healthy."""
        if self.running:
            return
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
        log = open(os.path.join(self.dir, "etcd.log"), "ab")  # noqa: SIM115 (kept by the child)
        try:
            self._proc = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                start_new_session=True,
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"etcd exited with {self._proc.returncode} at start:\n{self.log_tail()}"
                )
            if self.healthy():
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"etcd was not healthy within {timeout} s:\n{self.log_tail()}")

    def healthy(self) -> bool:
        """etcd answers its health check."""
        context = None
        if self.tls is not None:
            ca, cert, key = self.tls
            context = ssl.create_default_context(cafile=ca)
            context.load_cert_chain(cert, key)
        try:
            with urllib.request.urlopen(
                self.endpoint + "/health", timeout=1, context=context
            ) as resp:
                return b'"true"' in resp.read()
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGKILL) -> None:
        """Stop etcd (``kill -9`` by default); its data and ports stay for :meth:`start`."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def log_tail(self, lines: int = 20) -> str:
        try:
            with open(os.path.join(self.dir, "etcd.log"), encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def close(self) -> None:
        """Stop etcd and remove its data."""
        try:
            self.stop(signal.SIGTERM)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
