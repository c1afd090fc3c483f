"""A client's connection to a worker: the socket (authenticated, TLS where configured, on
TCP), the region descriptors received over it, and finding (or starting) the local worker.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import os
import select
import socket
import threading
import time
from collections import OrderedDict
from typing import Any

from .._config import Config
from .._errors import ShoalError
from .._private import private_dir
from ..control._daemon import LOCK_FILE, run_worker, running_pid, socket_path, wait_ready
from ..control._filetable import FileTableReader
from ..control.proto import (
    ADMIN,
    CLIENT,
    GENERATIONS,
    NONCE_BYTES,
    PROTOCOL_VERSION,
    SCHEME,
    WORKER,
    ProtocolError,
    check_proof,
    decode_error,
    is_tls,
    load_secret,
    new_nonce,
    proof,
    recv_header,
    recv_into,
    send_frame,
    transcript,
)
from ..engine import RegionReader

__all__ = ["Connection", "WorkerLost", "connect"]

#: Region descriptors a connection keeps open at most; older ones are closed (and the
#: worker told so) past it, which keeps a process well inside its descriptor limit.
MAX_REGION_FDS = 256
_HELLO_TIMEOUT = 30.0
#: A connection idle for longer is checked (a poll, no wait) for a close by the worker
#: before it is used again: workers close connections idle past their idle_timeout.
_IDLE_CHECK = 1.0


class WorkerLost(ShoalError, ConnectionError):
    """The connection to the worker failed (closed, reset, timed out, garbled): the worker
    is gone or unusable (ECONNRESET). Reads fall back to the under-store and other calls
    reconnect once; the caller sees it only when that fails too."""

    def __init__(self, message: str):
        super().__init__(errno.ECONNRESET, message)


class Connection:
    """One connection to a worker, used by one thread at a time.

    Holds the descriptors the worker passed (region files and generation tables) in a
    :class:`~shoal.engine.RegionReader`, at most :data:`MAX_REGION_FDS` region files, least
    recently used closed first.

    With ``address`` (``HOST:PORT``) it connects over TCP to a worker on another host
    instead of ``path``: :attr:`remote` is then true and no descriptor is ever passed. Over
    TCP, ``config`` gives what the connection proves and checks: its
    ``cluster_secret_file`` (the worker must prove it knows the same secret, and so must
    this client), ``admin_secret_file`` (for the admin ops), ``tls_ca`` (TLS, the worker's
    certificate checked against this CA).

    :attr:`broken` is true once the connection cannot serve: it failed, or, after a second
    idle, the worker closed it (checked without waiting); the router then opens another.

    Raises
    ------
    PermissionError
        The worker refused this client's proof, asked for a secret this client lacks,
        failed to prove it holds the cluster secret, or presented a certificate the CA did
        not sign.
    ConnectionError
        No worker answers (refused, reset, TLS failed).
    """

    def __init__(
        self,
        path: str | None,
        timeout: float | None,
        address: str | None = None,
        config: Config | None = None,
    ):
        self.pid = os.getpid()
        self._broken = False
        self._used = time.monotonic()
        self._thread = threading.get_ident()  # the thread that uses it (others only look)
        self.timeout = timeout
        self.remote = address is not None
        self.where = address if address is not None else path
        first = min(timeout or _HELLO_TIMEOUT, _HELLO_TIMEOUT)
        if address is not None:
            self.sock = _tcp_socket(address, first)
            if config is not None and config.tls_ca is not None:
                self.sock = _tls_socket(self.sock, address, config.tls_ca)
        else:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.reader: RegionReader | None = None
        #: The local worker's table of published files (None over TCP, or from a worker
        #: that publishes none).
        self.table: FileTableReader | None = None
        self._regions: OrderedDict[tuple[str, int], None] = OrderedDict()
        self._adopted: dict[tuple[str, int], int] = {}  # every descriptor the reader holds
        self._forget: list[list] = []
        try:
            # A worker that accepts but does not answer is given up on soon.
            self.sock.settimeout(first)
            if address is None:
                self.sock.connect(path)
            self.reader = RegionReader()
            self.hello = self._hello(config)
            self.sock.settimeout(timeout)
        except BaseException:
            self.close()
            raise

    def _hello(self, config: Config | None) -> dict:
        """``hello``, and over TCP the challenge-response of ``proto._auth``."""
        request: dict[str, Any] = {"op": "hello", "pid": self.pid, "version": PROTOCOL_VERSION}
        if not self.remote:
            request["table"] = True
            self.send(request)
            answer = self._take_table()
            return answer
        secret = admin = None
        if config is not None and config.cluster_secret_file is not None:
            secret = load_secret(config.cluster_secret_file, "cluster_secret_file")
        if config is not None and config.admin_secret_file is not None:
            admin = load_secret(config.admin_secret_file, "admin_secret_file")
        nonce = new_nonce()
        request.update(nonce=nonce, admin=admin is not None)
        answer = self.call(request)
        if "auth" not in answer:
            if secret is not None:
                raise PermissionError(
                    errno.EACCES,
                    f"the worker at {self.where} runs without a cluster secret, so it cannot "
                    "prove it belongs to this client's cluster; refusing it (start it with "
                    "--cluster-secret-file)",
                )
            return answer
        theirs, given = answer.get("nonce"), answer.get("proof")
        if (
            answer["auth"] != SCHEME
            or not isinstance(theirs, bytes)
            or len(theirs) != NONCE_BYTES
            or not isinstance(given, bytes)
        ):
            raise self._lost(ProtocolError(f"malformed challenge: {answer['auth']!r:.64}"))
        if secret is None:
            raise PermissionError(
                errno.EACCES,
                f"the worker at {self.where} serves only peers that prove the cluster secret: "
                "give this client cluster_secret_file (SHOAL_CLUSTER_SECRET_FILE)",
            )
        t = transcript(
            nonce, theirs, self.pid, PROTOCOL_VERSION, is_tls(self.sock), admin is not None
        )
        if not check_proof(secret, WORKER, t, given):
            raise PermissionError(
                errno.EACCES,
                f"the worker at {self.where} failed to prove it holds the cluster secret: the "
                "two hold different secrets, or it is not a worker of this cluster",
            )
        auth: dict[str, Any] = {"op": "auth", "proof": proof(secret, CLIENT, t)}
        if admin is not None:
            auth["admin_proof"] = proof(admin, ADMIN, t)
        return self.call(auth)

    # ----------------------------------------------------------------- frames

    @property
    def broken(self) -> bool:
        """True once the connection cannot serve (failed, closed, or closed by the worker
        while idle: asked of the thread that uses it, between requests)."""
        if self._broken:
            return True
        if (
            threading.get_ident() == self._thread
            and time.monotonic() - self._used > _IDLE_CHECK
            and self._peer_closed()
        ):
            self.close()
            return True
        return False

    @broken.setter
    def broken(self, value: bool) -> None:
        self._broken = bool(value)

    def _peer_closed(self) -> bool:
        """True if the worker closed the connection (or sent what nobody asked for)."""
        try:
            if is_tls(self.sock) and self.sock.pending():
                return True
            poller = select.poll()
            poller.register(self.sock, select.POLLIN | select.POLLPRI)
            return bool(poller.poll(0))
        except (OSError, ValueError):
            return True

    def _lost(self, exc: BaseException) -> WorkerLost:
        self.broken = True
        self.close()
        return WorkerLost(f"connection to the Shoal worker at {self.where} failed: {exc}")

    def send(self, header: dict, payload: list | tuple = ()) -> None:
        """Send a request (with ``payload`` buffers); ``WorkerLost`` when the connection
        fails (or the worker closed it while it was idle)."""
        if self.broken:
            raise WorkerLost(f"connection to the Shoal worker at {self.where} is closed")
        try:
            send_frame(self.sock, header, payload)
        except OSError as exc:
            raise self._lost(exc) from exc
        self._used = time.monotonic()

    def receive(self) -> tuple[dict, int, list[int]]:
        """The next answer's header, payload length and descriptors; raises the worker's
        error for a failed request (after consuming the frame)."""
        try:
            got = recv_header(self.sock)
            if got is None:
                raise ProtocolError("the worker closed the connection")
        except OSError as exc:
            raise self._lost(exc) from exc
        header, payload_len, fds = got
        self._used = time.monotonic()
        if header.get("ok") is True:
            return header, payload_len, fds
        for fd in fds:
            os.close(fd)
        if payload_len:
            self.recv_payload([bytearray(payload_len)], payload_len)
        raise decode_error(header.get("error"))

    def recv_payload(self, views: list[Any], expected: int) -> None:
        """Receive a payload of ``expected`` bytes straight into ``views``."""
        total = sum(memoryview(v).nbytes for v in views)
        if total != expected:
            self.broken = True
            self.close()
            raise WorkerLost(f"the worker sent {expected} payload bytes where {total} were due")
        try:
            recv_into(self.sock, views)
        except OSError as exc:
            raise self._lost(exc) from exc
        self._used = time.monotonic()

    def call(self, header: dict) -> dict:
        """One request, one answer without payload or descriptors."""
        self.send(header)
        answer, payload_len, fds = self.receive()
        for fd in fds:
            os.close(fd)
        if payload_len:
            self.recv_payload([bytearray(payload_len)], payload_len)
        return answer

    # ----------------------------------------------------------------- descriptors

    def _take_table(self) -> dict:
        """Receive an answer that may carry the table of published files, and map it."""
        answer, payload_len, fds = self.receive()
        if payload_len:
            self.recv_payload([bytearray(payload_len)], payload_len)
        if len(fds) == 1 and answer.get("table", True):
            old, self.table = self.table, None
            if old is not None:
                old.close()
            try:
                self.table = FileTableReader(fds[0])
            except (OSError, ValueError):
                self.table = None  # reads ask the worker, as without a table
        else:
            for fd in fds:
                os.close(fd)
        return answer

    def renew_table(self) -> None:
        """Map the worker's current table of published files (the one held was
        superseded)."""
        self.send({"op": "table"})
        self._take_table()

    def fetch_regions(self, regions: list[list]) -> None:
        """Get the descriptors of these ``[tier, region]`` files (and their generation
        tables) that the connection lacks, in one request."""
        self.send({"op": "regions", "regions": regions})
        answer, payload_len, fds = self.receive()
        if payload_len:
            self.recv_payload([bytearray(payload_len)], payload_len)
        self.adopt(answer.get("fds", []), fds)

    def adopt(self, tokens: list, fds: list[int]) -> None:
        """Take the descriptors passed with an answer, named by its ``fds`` tokens."""
        if len(tokens) != len(fds):
            for fd in fds:
                os.close(fd)
            self.broken = True
            self.close()
            raise WorkerLost(f"the worker passed {len(fds)} descriptors for {len(tokens)} tokens")
        for (tier, region), fd in zip(tokens, fds, strict=True):
            self._adopted[tier, region] = fd
            if region == GENERATIONS:
                self.reader.adopt(tier, None, fd)
                continue
            self.reader.adopt(tier, region, fd)
            self._regions[tier, region] = None
            self._regions.move_to_end((tier, region))

    def trim(self) -> None:
        """Close the least recently used region files past :data:`MAX_REGION_FDS` (after a
        read, so that none its locations need goes before it is read)."""
        while len(self._regions) > MAX_REGION_FDS:
            (tier, region), _ = self._regions.popitem(last=False)
            self.reader.release(tier, region)
            del self._adopted[tier, region]
            self._forget.append([tier, region])

    def holds(self, tier: str, region: int) -> bool:
        """True if this connection can read ``region`` of ``tier`` short-circuit."""
        return (tier, region) in self._adopted and (tier, GENERATIONS) in self._adopted

    def region_fds(self) -> int:
        """Region files held open."""
        return len(self._regions)

    def used(self, tier: str, region: int) -> None:
        """Note a region as recently used."""
        if (tier, region) in self._regions:
            self._regions.move_to_end((tier, region))

    def forget(self, tier: str, region: int) -> None:
        """Have the worker forget that this connection holds a descriptor."""
        self._forget.append([tier, region])

    def take_forget(self) -> list[list]:
        """Descriptors closed since the last request, for the worker to forget."""
        out, self._forget = self._forget, []
        return out

    # ----------------------------------------------------------------- lifetime

    def close(self) -> None:
        """Close the socket and every descriptor; idempotent."""
        self._broken = True
        with contextlib.suppress(OSError):
            self.sock.close()
        if self.reader is not None:
            self.reader.close()
        if self.table is not None:
            self.table.close()
        self._adopted.clear()

    def abandon(self) -> None:
        """In a forked child: close this process's copies of the socket and descriptors
        without touching the parent's connection (no shutdown, no message), and without
        taking any lock (a thread of the parent may have held one when it forked)."""
        self._broken = True
        with contextlib.suppress(OSError):
            self.sock.close()
        for fd in self._adopted.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._adopted.clear()
        self.reader = None  # its descriptors are closed; its mappings go with it
        self.table = None  # its mapping too


def _tcp_socket(address: str, timeout: float) -> socket.socket:
    """A TCP socket connected to ``HOST:PORT``; ``ConnectionError`` naming it otherwise."""
    host, _, port = address.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        sock = socket.create_connection((host, int(port)), timeout=timeout)
    except socket.gaierror as exc:
        raise ConnectionRefusedError(
            errno.ECONNREFUSED, f"cannot resolve the worker address {address}: {exc}"
        ) from None
    except ConnectionError as exc:
        raise type(exc)(
            exc.errno, f"no Shoal worker answers at {address}: {exc.strerror}"
        ) from None
    except TimeoutError:
        raise TimeoutError(
            errno.ETIMEDOUT, f"no Shoal worker answers at {address} within {timeout:.0f} s"
        ) from None
    except OSError as exc:  # no route, network down ...
        raise ConnectionRefusedError(
            exc.errno or errno.ECONNREFUSED, f"cannot reach the worker at {address}: {exc}"
        ) from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


@functools.lru_cache(maxsize=8)
def _tls_context(cafile: str):
    import ssl

    try:
        context = ssl.create_default_context(cafile=cafile)
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, f"tls_ca: no such file {cafile}") from None
    except ssl.SSLError as exc:
        raise ValueError(f"tls_ca {cafile} is not a PEM file of certificates: {exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _tls_socket(sock: socket.socket, address: str, cafile: str):
    """``sock`` with TLS, the worker's certificate checked against ``cafile`` and the host
    of ``address``."""
    import ssl

    host = address.rpartition(":")[0].strip("[]")
    try:
        return _tls_context(cafile).wrap_socket(sock, server_hostname=host)
    except ssl.SSLCertVerificationError as exc:
        sock.close()
        raise PermissionError(
            errno.EACCES,
            f"the worker at {address} has a certificate tls_ca does not vouch "
            f"for: {exc.verify_message or exc}",
        ) from None
    except (ssl.SSLError, OSError) as exc:
        sock.close()
        raise ConnectionRefusedError(
            errno.ECONNREFUSED,
            f"TLS with the worker at {address} failed ({exc}); does it run with tls_cert "
            "and tls_key?",
        ) from None


#: Seconds a killed worker's last threads may take to let go of its pid file.
_EXIT_GRACE = 5.0


def _lock(path: str, timeout: float) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise TimeoutError(
                    errno.ETIMEDOUT, f"timed out waiting for the worker start-up lock {path}"
                ) from None
            time.sleep(0.02)


def connect(config: Config, *, start: bool, timeout: float | None, start_timeout: float):
    """A :class:`Connection` to the worker of ``config.home``; when none answers and
    ``start`` is true, start one as a daemon first (under a file lock, so that many
    processes starting at once get one worker)."""
    path = socket_path(config.home)
    # A worker that dies as we connect resets the connection (WorkerLost): as none answering.
    try:
        return Connection(path, timeout)
    except (FileNotFoundError, ConnectionRefusedError, WorkerLost):
        if not start:
            raise ConnectionRefusedError(
                errno.ECONNREFUSED,
                f"no Shoal worker answers on {path}; start one with `shoal up` "
                "(or create the Client with start_worker=True)",
            ) from None
    private_dir(config.home, "Shoal home")
    fd = _lock(os.path.join(config.home, LOCK_FILE), start_timeout)
    try:
        with contextlib.suppress(FileNotFoundError, ConnectionRefusedError, WorkerLost):
            return Connection(path, timeout)  # another process started it meanwhile
        pid = running_pid(config.home)
        if pid is not None:
            try:
                wait_ready(config.home, pid if pid > 0 else None, start_timeout)
                return Connection(path, timeout)
            except ConnectionError:
                # That worker died as we looked: its threads may hold its pid file's lock a
                # moment longer than its main thread lives. Once they let go, start one.
                deadline = time.monotonic() + min(start_timeout, _EXIT_GRACE)
                while running_pid(config.home) is not None:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.01)
        run_worker(config, foreground=False, timeout=start_timeout)
        return Connection(path, timeout)
    finally:
        os.close(fd)
