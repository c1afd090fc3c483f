"""The worker's sockets: accepts connections on its Unix socket (and on TCP in a cluster),
reads request frames, dispatches each through an op -> handler table and writes the
answers.

One thread per connection: clients keep one connection per thread, so a node serves tens of
them, and each waits mostly on the page store or an under-store.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .proto import (
    DATA,
    FRAME,
    LOCATE,
    ProtocolError,
    check_request,
    encode_error,
    recv_header,
    recv_into,
    send_frame,
)

__all__ = ["ConnectionState", "FileSegment", "Handler", "Reply", "Server"]

log = logging.getLogger("shoal.worker")

_MAX_REQUEST_PAYLOAD = 1 << 20  # requests carry no bulk bytes


class FileSegment(NamedTuple):
    """Payload bytes sent straight from a file (``sendfile``): descriptor, offset, length."""

    fd: int
    offset: int
    length: int


@dataclass
class Reply:
    """An answer: header fields (``ok`` is added), payload buffers and
    :class:`FileSegment` pieces, descriptors to pass."""

    header: dict[str, Any]
    payload: list[Any] = field(default_factory=list)
    fds: list[int] = field(default_factory=list)


def _no_progress(state: dict) -> None:
    raise ProtocolError("progress frames are only sent while a load runs")


@dataclass
class ConnectionState:
    """What the server and the handlers remember about one client connection."""

    sent: set[tuple[str, int]] = field(default_factory=set)  # descriptors the client holds
    last_page: OrderedDict[bytes, int] = field(default_factory=OrderedDict)
    pid: int | None = None
    remote: bool = False  # a TCP connection: no descriptors, bytes only
    #: Sends a progress frame ahead of the answer (ops that take long, such as ``load``).
    progress: Callable[[dict], None] = _no_progress


#: A handler serves one op: (connection state, request header) -> answer.
Handler = Callable[[ConnectionState, dict], Reply]


class Server:
    """Serves a worker on a Unix socket, and on TCP in a cluster.

    Parameters
    ----------
    handlers
        The op -> handler table (see :meth:`~shoal.control._worker.Worker.handlers`).
    path
        Socket path; created by :meth:`start` (mode 0600: only the worker's user may
        connect), removed by the caller after :meth:`stop`.
    on_stop
        Called when a client sends ``stop``.
    listen
        ``HOST:PORT`` of a TCP endpoint for clients on other hosts (port 0: any free port,
        see :attr:`address`), or None. The protocol is the same, but no descriptor crosses
        a TCP connection: every ``read`` is served in ``data`` mode, and ``stop`` is
        refused there.

    Notes
    -----
    Call order: :meth:`start`, then :meth:`stop` once. :meth:`stop` closes the listening
    socket, shuts every connection down (requests in flight are aborted: their clients see
    the connection close) and waits for the connection threads.
    """

    def __init__(
        self,
        handlers: Mapping[str, Handler],
        path: str,
        on_stop: Callable[[], None] | None = None,
        listen: str | None = None,
        on_request: Callable[[], None] | None = None,
    ):
        self.handlers = dict(handlers)
        self.path = path
        self.listen = listen
        self._on_stop = on_stop
        self._on_request = on_request
        self._listener: socket.socket | None = None
        self._tcp: socket.socket | None = None
        self._tcp_acceptor: threading.Thread | None = None
        self._lock = threading.Lock()
        self._conns: dict[socket.socket, threading.Thread] = {}
        self._stopping = threading.Event()
        self._acceptor: threading.Thread | None = None

    def start(self, before_accepting: Callable[[], None] | None = None) -> None:
        """Bind, listen and start accepting.

        ``before_accepting`` runs once the sockets listen and before any connection is
        served: whatever it does (e.g. log that the worker serves) happens before a
        client's first answer.
        """
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            old_mask = os.umask(0o177)
            try:
                listener.bind(self.path)
            finally:
                os.umask(old_mask)
            listener.listen(128)
            listener.settimeout(0.2)  # so that the accept loop notices stop()
        except BaseException:
            listener.close()
            raise
        if self.listen is not None:
            try:
                self._tcp = _tcp_listener(self.listen)
            except BaseException:
                listener.close()
                raise
        self._listener = listener
        if before_accepting is not None:
            before_accepting()
        self._acceptor = threading.Thread(
            target=self._accept_loop, args=(listener, False), name="shoal-accept"
        )
        self._acceptor.start()
        if self._tcp is not None:
            self._tcp_acceptor = threading.Thread(
                target=self._accept_loop, args=(self._tcp, True), name="shoal-accept-tcp"
            )
            self._tcp_acceptor.start()

    @property
    def address(self) -> str | None:
        """``HOST:PORT`` the TCP endpoint is bound to (the real port when asked for 0)."""
        if self._tcp is None:
            return None
        host, port = self._tcp.getsockname()[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def _accept_loop(self, listener: socket.socket, remote: bool) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                log.exception("accept failed")
                continue
            conn.setblocking(True)
            if remote:
                # Requests are small frames answered at once: do not let Nagle hold them.
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # Daemon threads: one stuck on a slow store must not keep the process alive.
            thread = threading.Thread(
                target=self._serve, args=(conn, remote), name="shoal-conn", daemon=True
            )
            with self._lock:
                if self._stopping.is_set():
                    conn.close()
                    return
                self._conns[conn] = thread
            thread.start()

    def _serve(self, conn: socket.socket, remote: bool = False) -> None:
        state = ConnectionState(remote=remote)
        state.progress = lambda counts: send_frame(
            conn, {"ok": True, "done": False, "progress": counts}
        )
        try:
            while not self._stopping.is_set():
                got = recv_header(conn)
                if got is None:
                    return
                header, payload_len, fds = got
                for fd in fds:  # clients pass no descriptors
                    os.close(fd)
                if payload_len > _MAX_REQUEST_PAYLOAD:
                    raise ProtocolError(f"request payload of {payload_len} bytes is too large")
                if payload_len:
                    recv_into(conn, [bytearray(payload_len)])
                if not self._answer(conn, state, header):
                    return
        except (ConnectionError, OSError) as exc:
            if not self._stopping.is_set():
                log.info("connection closed: %s", exc)
        finally:
            with self._lock:
                self._conns.pop(conn, None)
            conn.close()

    def _answer(self, conn: socket.socket, state, header: dict) -> bool:
        """Serve one request; False when the connection should close."""
        op = None
        try:
            op = check_request(header)
            if state.remote:
                if op == "stop":
                    raise PermissionError(
                        errno.EPERM, "stop is refused over TCP: stop a worker on its own host"
                    )
                if op == "read":
                    # Descriptors cannot cross a TCP connection: bytes, from the region
                    # files as they are when the client checks them itself.
                    header["mode"] = LOCATE if header.get("segments") is True else DATA
            if self._on_request is not None:
                self._on_request()
            handler = self.handlers.get(op)
            if handler is None:
                raise ProtocolError(f"op {op!r} has no handler")
            reply = handler(state, header)
        except ProtocolError as exc:
            send_frame(conn, {"ok": False, "error": encode_error(exc)})
            return False
        except (OSError, ValueError, TypeError) as exc:
            send_frame(conn, {"ok": False, "error": encode_error(exc)})
            return True
        except Exception as exc:
            log.exception("op %s failed", op)
            send_frame(conn, {"ok": False, "error": encode_error(exc)})
            return True
        if any(isinstance(p, FileSegment) for p in reply.payload):
            _send_segments(conn, {"ok": True, **reply.header}, reply.payload)
        else:
            send_frame(conn, {"ok": True, **reply.header}, reply.payload, reply.fds)
        if op == "stop" and self._on_stop is not None:
            self._on_stop()
        return True

    def stop(self) -> None:
        """Stop accepting, abort every connection and wait for their threads."""
        self._stopping.set()
        if self._acceptor is not None:
            self._acceptor.join()
        if self._tcp_acceptor is not None:
            self._tcp_acceptor.join()
        for listener in (self._listener, self._tcp):
            if listener is not None:
                listener.close()
        with self._lock:
            conns = dict(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + 10
        for thread in conns.values():
            thread.join(max(0.0, deadline - time.monotonic()))


def _tcp_listener(listen: str) -> socket.socket:
    """A listening TCP socket on ``HOST:PORT``; ``OSError`` naming the address."""
    host, _, port = listen.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        family, kind, proto, _, sockaddr = socket.getaddrinfo(
            host, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise OSError(errno.EADDRNOTAVAIL, f"cannot listen on {listen}: {exc}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(128)
        sock.settimeout(0.2)  # so that the accept loop notices stop()
    except OSError as exc:
        sock.close()
        raise type(exc)(exc.errno, f"cannot listen on {listen}: {exc.strerror}") from None
    return sock


def _send_segments(sock: socket.socket, header: dict, payload: list) -> None:
    """One frame whose payload mixes buffers and :class:`FileSegment` pieces, the latter
    sent from their files by the kernel (``sendfile``), never copied through Python."""
    import msgpack

    total = sum(p.length if isinstance(p, FileSegment) else memoryview(p).nbytes for p in payload)
    raw = msgpack.packb(header, use_bin_type=True)
    sock.sendall(FRAME.pack(len(raw), total) + raw)
    out = sock.fileno()
    for part in payload:
        if not isinstance(part, FileSegment):
            sock.sendall(part)
            continue
        offset, left = part.offset, part.length
        while left:
            n = os.sendfile(out, part.fd, offset, left)
            if n == 0:
                # The peer cannot be told in the middle of a payload: drop the connection.
                raise ProtocolError(f"region file ended {left} bytes short of a page")
            offset += n
            left -= n
