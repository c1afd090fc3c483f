"""The worker's sockets: accepts connections on its Unix socket (and on TCP in a cluster),
authenticates TCP peers, reads request frames, dispatches each through an op -> handler
table and writes the answers, within limits no peer can exceed.

One thread per connection: clients keep one connection per thread, so a node serves tens of
them, and each waits mostly on the page store or an under-store.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import os
import socket
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .proto import (
    ADMIN,
    ADMIN_OPS,
    CLIENT,
    DATA,
    LOCATE,
    MAX_GREETING_HEADER,
    MAX_REQUEST_HEADER,
    MAX_WRITE_PAYLOAD,
    NONCE_BYTES,
    SCHEME,
    WORKER,
    WRITE_OPS,
    ProtocolError,
    check_proof,
    check_request,
    check_version,
    discard,
    encode_error,
    is_tls,
    new_nonce,
    pack_header,
    proof,
    recv_header,
    recv_into,
    send_frame,
    transcript,
)

__all__ = [
    "ConnectionState",
    "FileSegment",
    "Handler",
    "Reply",
    "Server",
    "ServerLimits",
    "ServerSecurity",
    "tls_server_context",
]

log = logging.getLogger("shoal.worker")

_MAX_REQUEST_PAYLOAD = 1 << 20  # requests carry no bulk bytes (but ``write_data``)
#: accept() errors that mean the process or the system is out of something: back off.
_EXHAUSTED = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_MAX_BACKOFF = 1.0
_LINGER = 2.0  # seconds a refused connection is drained before it is closed
_MAX_LINGERING = 256
_SEGMENT_COPY = 1 << 20  # bytes read at a time from a region file for a TLS peer
_PEERCRED = struct.Struct("3i")  # pid, uid, gid


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
    owned: bool = False  # the server closes ``fds`` once the answer is sent


def _no_progress(state: dict) -> None:
    raise ProtocolError("progress frames are only sent while a load runs")


@dataclass
class ConnectionState:
    """What the server and the handlers remember about one client connection."""

    sent: set[tuple[str, int]] = field(default_factory=set)  # descriptors the client holds
    last_page: OrderedDict[bytes, int] = field(default_factory=OrderedDict)
    pid: int | None = None
    remote: bool = False  # a TCP connection: no descriptors, bytes only
    #: Who is at the other end: ``HOST:PORT`` over TCP, ``uid N`` on the Unix socket.
    peer: str = ""
    uid: int | None = None  # the peer's uid on the Unix socket (SO_PEERCRED)
    authenticated: bool = False
    admin: bool = False  # may run the ops of ADMIN_OPS
    #: Sends a progress frame ahead of the answer (ops that take long, such as ``load``).
    progress: Callable[[dict], None] = _no_progress
    #: The bytes of a ``write_data`` request (a buffer reused by the connection).
    payload: memoryview | None = None
    buffer: bytearray | None = None  # where it is received
    #: Called once when the connection ends (writes left open are dropped).
    closers: list[Callable[[], None]] = field(default_factory=list)


#: A handler serves one op: (connection state, request header) -> answer.
Handler = Callable[[ConnectionState, dict], Reply]


@dataclass(frozen=True)
class ServerSecurity:
    """What TCP peers must prove.

    Attributes
    ----------
    cluster_secret
        Every TCP peer proves it before any op (see ``proto._auth``); None: TCP peers are
        not authenticated (a worker on loopback only).
    admin_secret
        A TCP peer that proves it may run the ops of ``ADMIN_OPS``; None: no TCP peer may.
    tls
        An ``ssl.SSLContext`` (server side) for the TCP port, or None.
    """

    cluster_secret: bytes | None = None
    admin_secret: bytes | None = None
    tls: Any = None


@dataclass(frozen=True)
class ServerLimits:
    """What one peer may make the server hold.

    Attributes
    ----------
    max_connections, max_connections_per_peer
        Connections served at once, in all and per peer (TCP: its address; Unix socket:
        its uid). One more gets an error frame and is closed.
    handshake_timeout
        Seconds a TCP peer has to authenticate (TLS included) from its connection.
    idle_timeout
        Seconds a connection may wait between requests (or in the middle of one).
    send_timeout
        Seconds an answer may wait for the peer to take any of its bytes; past it the
        connection is dropped, with the memory its answer held.
    """

    max_connections: int = 2048
    max_connections_per_peer: int = 512
    handshake_timeout: float = 5.0
    idle_timeout: float = 600.0
    send_timeout: float = 60.0


class _Client:
    """A connection the server tracks: its socket (replaced once TLS wraps it), thread
    and peer key."""

    __slots__ = ("key", "sock", "thread")

    def __init__(self, sock: socket.socket, key: Any):
        self.sock = sock
        self.key = key
        self.thread: threading.Thread | None = None


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
        a TCP connection: every ``read`` is served in ``data`` mode.
    on_request
        Called with the op of each request served.
    security
        What TCP peers must prove (a cluster secret, an admin secret) and TLS.
    limits
        Connections, timeouts.

    Notes
    -----
    Who may do what: a peer on the Unix socket runs any op when it is the worker's own user
    or root (``SO_PEERCRED``), the ops outside ``ADMIN_OPS`` otherwise. A TCP peer proves
    the cluster secret first when there is one (nothing else is served before), and runs
    the ops of ``ADMIN_OPS`` only when it proved the admin secret too. A refused op is a
    ``PermissionError`` naming it; the connection serves on.

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
        on_request: Callable[[str], None] | None = None,
        security: ServerSecurity | None = None,
        limits: ServerLimits | None = None,
    ):
        self.handlers = dict(handlers)
        self.path = path
        self.listen = listen
        self.security = security if security is not None else ServerSecurity()
        self.limits = limits if limits is not None else ServerLimits()
        self._on_stop = on_stop
        self._on_request = on_request
        self._listener: socket.socket | None = None
        self._tcp: socket.socket | None = None
        self._tcp_acceptor: threading.Thread | None = None
        self._lock = threading.Lock()
        self._conns: dict[int, _Client] = {}
        self._per_peer: collections.Counter = collections.Counter()
        self._stopping = threading.Event()
        self._acceptor: threading.Thread | None = None
        self._uid = os.getuid()

    def start(self, before_accepting: Callable[[], None] | None = None) -> None:
        """Bind, listen and start accepting.

        ``before_accepting`` runs once the sockets listen and before any connection is
        served: whatever it does (e.g. log that the worker serves) happens before a
        client's first answer.
        """
        # TCP first: whoever sees the Unix socket accept (the launcher's wait for a ready
        # worker) may use the TCP port at once.
        if self.listen is not None:
            self._tcp = _tcp_listener(self.listen)
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
            if self._tcp is not None:
                self._tcp.close()
                self._tcp = None
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

    def connections(self) -> int:
        """Connections served now."""
        with self._lock:
            return len(self._conns)

    # ----------------------------------------------------------------- accepting

    def _accept_loop(self, listener: socket.socket, remote: bool) -> None:
        lingering: collections.deque = collections.deque()  # refused: (deadline, socket)
        try:
            self._accept(listener, remote, lingering)
        finally:
            for _, conn in lingering:
                conn.close()

    def _accept(self, listener: socket.socket, remote: bool, lingering) -> None:
        short_since: float | None = None  # when accept() began to fail for lack of resources
        failures = 0
        delay = 0.0
        while not self._stopping.is_set():
            if lingering:
                _close_lingering(lingering)
            try:
                conn, addr = listener.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if self._stopping.is_set():
                    return
                if exc.errno in _EXHAUSTED:
                    failures += 1
                    if short_since is None:
                        short_since = time.monotonic()
                        log.error(
                            "accept failed: %s; new connections wait until some close "
                            "(backing off, logged once)",
                            os.strerror(exc.errno),
                        )
                    delay = min(_MAX_BACKOFF, max(0.01, delay * 2))
                else:
                    log.warning("accept failed: %s", exc)
                    delay = 0.01
                self._stopping.wait(delay)
                continue
            if short_since is not None:
                log.warning(
                    "accepting connections again after %.1f s (%d accepts failed)",
                    time.monotonic() - short_since,
                    failures,
                )
                short_since, failures, delay = None, 0, 0.0
            self._admit(conn, addr, remote, lingering)

    def _admit(self, conn: socket.socket, addr: Any, remote: bool, lingering) -> None:
        """Serve ``conn`` in a thread of its own, or refuse it past the limits."""
        conn.setblocking(True)
        if remote:
            key: Any = addr[0]
            peer = f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"
            uid = None
        else:
            try:
                uid = _PEERCRED.unpack(
                    conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
                )[1]
            except OSError:
                conn.close()
                return
            key = ("uid", uid)
            peer = f"uid {uid}"
        limits = self.limits
        with self._lock:
            if self._stopping.is_set():
                conn.close()
                return
            if len(self._conns) >= limits.max_connections:
                refusal = (
                    f"the worker serves {len(self._conns)} connections, its limit "
                    "(max_connections); try again later"
                )
            elif self._per_peer[key] >= limits.max_connections_per_peer:
                refusal = (
                    f"{peer.rsplit(':', 1)[0] if remote else peer} has "
                    f"{self._per_peer[key]} connections to the worker, the limit per peer "
                    "(max_connections_per_peer); close idle ones"
                )
            else:
                refusal = None
                client = _Client(conn, key)
                self._conns[id(client)] = client
                self._per_peer[key] += 1
        if refusal is not None:
            log.warning("connection from %s refused: %s", peer, refusal)
            _refuse_later(conn, refusal, lingering)
            return
        if remote:
            # Requests are small frames answered at once: do not let Nagle hold them.
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Daemon threads: one stuck on a slow store must not keep the process alive.
        thread = threading.Thread(
            target=self._serve, args=(client, remote, peer, uid), name="shoal-conn", daemon=True
        )
        client.thread = thread
        try:
            thread.start()
        except RuntimeError as exc:  # no more threads
            self._forget(client)
            log.warning("connection from %s refused: %s", peer, exc)
            _refuse_later(conn, f"the worker cannot serve another connection now: {exc}", lingering)

    def _forget(self, client: _Client) -> None:
        with self._lock:
            if self._conns.pop(id(client), None) is not None:
                self._per_peer[client.key] -= 1
                if self._per_peer[client.key] <= 0:
                    del self._per_peer[client.key]

    # ----------------------------------------------------------------- serving

    def _serve(self, client: _Client, remote: bool, peer: str, uid: int | None) -> None:
        state = ConnectionState(remote=remote, peer=peer, uid=uid)
        sock = client.sock
        limits, security = self.limits, self.security
        try:
            _set_timeout_option(sock, socket.SO_SNDTIMEO, limits.send_timeout)
            if remote and (security.tls is not None or security.cluster_secret is not None):
                deadline = time.monotonic() + limits.handshake_timeout
                if security.tls is not None:
                    sock = client.sock = self._tls_accept(sock, deadline)
                state.progress = _progress_sender(sock)
                if security.cluster_secret is not None:
                    if not self._authenticate(sock, state, deadline):
                        return
                else:
                    state.authenticated = True
                sock.settimeout(None)
            else:
                state.progress = _progress_sender(sock)
                state.authenticated = True
                state.admin = not remote and uid in (0, self._uid)
            _set_timeout_option(sock, socket.SO_RCVTIMEO, limits.idle_timeout)
            while not self._stopping.is_set():
                got = recv_header(sock, MAX_REQUEST_HEADER)
                if got is None:
                    return
                header, payload_len, fds = got
                for fd in fds:  # clients pass no descriptors
                    os.close(fd)
                state.payload = None
                if header.get("op") == "write_data" and payload_len <= MAX_WRITE_PAYLOAD:
                    state.payload = _receive_payload(sock, state, payload_len)
                elif payload_len > _MAX_REQUEST_PAYLOAD:
                    raise ProtocolError(f"request payload of {payload_len} bytes is too large")
                elif payload_len:
                    discard(sock, payload_len)
                if not self._answer(sock, state, header):
                    return
        except (ConnectionError, OSError) as exc:
            if isinstance(exc, ProtocolError):  # tell the peer what was wrong, if it listens
                with contextlib.suppress(OSError):
                    _send_error(sock, exc)
                    _close_gently(sock)
            if not self._stopping.is_set():
                log.info("connection from %s closed: %s", peer, _why(exc))
        finally:
            for close in state.closers:
                try:
                    close()
                except Exception:
                    log.exception("cleanup of a connection from %s failed", peer)
            self._forget(client)
            with contextlib.suppress(OSError):
                sock.close()

    def _tls_accept(self, sock: socket.socket, deadline: float):
        """The TLS side of ``sock``; a peer that speaks plain frames is told to use TLS."""
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        first = sock.recv(3, socket.MSG_PEEK)
        if first[:1] != b"\x16":  # not a TLS handshake record
            if first:
                _refused(
                    sock,
                    "this worker's TCP port speaks TLS: give the client tls_ca (the CA "
                    "that signed the worker's certificate)",
                )
            raise ConnectionResetError(errno.ECONNRESET, "a peer without TLS was refused")
        tls = self.security.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        tls.settimeout(max(0.001, deadline - time.monotonic()))
        tls.do_handshake()
        return tls

    def _authenticate(self, sock, state: ConnectionState, deadline: float) -> bool:
        """The challenge-response of ``proto._auth`` before any op; False when the peer
        failed it (told why) or left."""
        secret = self.security.cluster_secret
        hello: dict | None = None
        t = b""
        while True:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            got = recv_header(sock, MAX_GREETING_HEADER)
            if got is None:
                return False
            header, payload_len, _ = got
            if payload_len:
                raise ProtocolError("a request before authentication carries no payload")
            op = header.get("op")
            if hello is None:
                if op != "hello":
                    return _refused(
                        sock,
                        f"{str(op)[:64]!r} refused: this worker serves TCP peers that prove "
                        "the cluster secret, and this one has not (send hello first)",
                    )
                try:
                    check_request(header)
                    check_version(header["version"])
                except (ProtocolError, OSError) as exc:
                    _send_error(sock, exc)
                    _close_gently(sock)
                    return False
                nonce = header.get("nonce")
                if not isinstance(nonce, bytes) or len(nonce) != NONCE_BYTES:
                    return _refused(
                        sock,
                        "this worker requires the cluster secret, and the client offered "
                        "none: give the client cluster_secret_file (SHOAL_CLUSTER_SECRET_FILE)",
                    )
                hello = header
                mine = new_nonce()
                t = transcript(
                    nonce,
                    mine,
                    header["pid"],
                    header["version"],
                    is_tls(sock),
                    header.get("admin") is True,
                )
                send_frame(
                    sock,
                    {"ok": True, "auth": SCHEME, "nonce": mine, "proof": proof(secret, WORKER, t)},
                )
                continue
            if op != "auth" or not isinstance(header.get("proof"), bytes):
                return _refused(
                    sock, f"{str(op)[:64]!r} refused before authentication (auth with a proof)"
                )
            if not check_proof(secret, CLIENT, t, header["proof"]):
                log.warning("connection from %s refused: wrong cluster secret", state.peer)
                return _refused(
                    sock,
                    "authentication failed: the client's proof does not match this worker's "
                    "cluster secret (the two hold different secrets)",
                )
            given = header.get("admin_proof")
            admin = self.security.admin_secret
            if given is not None and admin is not None:
                if not check_proof(admin, ADMIN, t, given):
                    log.warning("connection from %s refused: wrong admin secret", state.peer)
                    return _refused(
                        sock,
                        "admin authentication failed: the client's admin proof does not "
                        "match this worker's admin secret",
                    )
                state.admin = True
            state.authenticated = True
            return self._answer(sock, state, hello)

    def _answer(self, sock: socket.socket, state: ConnectionState, header: dict) -> bool:
        """Serve one request; False when the connection should close."""
        op = None
        try:
            op = check_request(header)
            if op in ADMIN_OPS and not state.admin:
                raise PermissionError(errno.EPERM, self._refusal(op, state))
            if op in WRITE_OPS and state.remote and self.security.cluster_secret is None:
                raise PermissionError(
                    errno.EPERM,
                    f"{op} is refused over TCP: this worker has no cluster secret, so its TCP "
                    "peers are not authenticated (writes go through its Unix socket only)",
                )
            if state.remote and op == "read":
                # Descriptors cannot cross a TCP connection: bytes, from the region
                # files as they are when the client checks them itself.
                header["mode"] = LOCATE if header.get("segments") is True else DATA
            if self._on_request is not None:
                self._on_request(op)
            handler = self.handlers.get(op)
            if handler is None:
                raise ProtocolError(f"op {op!r} has no handler")
            reply = handler(state, header)
        except ProtocolError as exc:
            _send_error(sock, exc)
            return False
        except (OSError, ValueError, TypeError) as exc:
            _send_error(sock, exc)
            return True
        except Exception as exc:
            log.exception("op %s failed", op)
            _send_error(sock, exc)
            return True
        try:
            return self._send_reply(sock, op, reply)
        finally:
            if reply.owned:
                for fd in reply.fds:
                    os.close(fd)

    def _send_reply(self, sock: socket.socket, op: str, reply: Reply) -> bool:
        """Send a handler's answer; False when the connection should close."""
        answer = {"ok": True, **reply.header}
        try:
            if any(isinstance(p, FileSegment) for p in reply.payload):
                _send_segments(sock, answer, reply.payload)
            else:
                send_frame(sock, answer, reply.payload, reply.fds)
        except UnicodeEncodeError as exc:  # before any byte went out: a name not UTF-8
            bad = exc.object[max(0, exc.start - 40) : exc.end + 40]
            _send_error(
                sock,
                OSError(errno.EILSEQ, f"{op}: the answer holds a name that is not UTF-8: {bad!r}"),
            )
            return True
        except ValueError as exc:  # raised before any byte went out: an answer too large
            _send_error(sock, OSError(errno.E2BIG, f"{op}: {exc}; ask for less at a time"))
            return True
        if op == "stop" and self._on_stop is not None:
            self._on_stop()
        return True

    def _refusal(self, op: str, state: ConnectionState) -> str:
        if not state.remote:
            return (
                f"{op} is refused to uid {state.uid}: only the worker's own user "
                f"(uid {self._uid}) or root may {op}"
            )
        if op == "stop":
            return (
                "stop is refused over TCP without the admin secret: stop a worker on its own "
                "host, or connect with admin_secret_file"
            )
        if self.security.admin_secret is None:
            return (
                f"{op} is refused over TCP: this worker has no admin secret, so only its own "
                "user on its host may run it"
            )
        return (
            f"{op} is refused over TCP without the admin secret: connect with "
            "admin_secret_file (SHOAL_ADMIN_SECRET_FILE)"
        )

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
            clients = list(self._conns.values())
        for client in clients:
            with contextlib.suppress(OSError):
                client.sock.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + 10
        for client in clients:
            if client.thread is not None:
                client.thread.join(max(0.0, deadline - time.monotonic()))


def _receive_payload(sock, state: ConnectionState, length: int) -> memoryview:
    """A ``write_data`` payload, received into the connection's buffer (kept for the next
    one: fresh memory is slow to touch)."""
    buf = state.buffer
    if buf is None or len(buf) < length:
        buf = state.buffer = bytearray(max(length, 1 << 20))
    view = memoryview(buf)[:length]
    recv_into(sock, [view])
    return view


def _refuse_later(conn: socket.socket, message: str, lingering) -> None:
    """Answer ``ConnectionRefusedError`` without waiting, and leave ``conn`` in
    ``lingering`` to be closed once the peer has read it (its request drained meanwhile,
    so that the close resets nothing)."""
    error = ConnectionRefusedError(errno.ECONNREFUSED, message)
    frame = pack_header({"ok": False, "error": encode_error(error)}, 0)
    try:
        conn.setblocking(False)
        conn.send(frame)
        conn.shutdown(socket.SHUT_WR)
    except OSError:
        conn.close()
        return
    lingering.append((time.monotonic() + _LINGER, conn))
    while len(lingering) > _MAX_LINGERING:
        lingering.popleft()[1].close()


def _close_lingering(lingering) -> None:
    """Close the refused connections whose peer closed or whose time is up."""
    now = time.monotonic()
    for _ in range(len(lingering)):
        deadline, conn = lingering.popleft()
        try:
            while conn.recv(65536):
                pass
            done = True  # the peer closed
        except BlockingIOError:
            done = deadline < now
        except OSError:
            done = True
        if done:
            conn.close()
        else:
            lingering.append((deadline, conn))


def _close_gently(sock, seconds: float = 1.0) -> None:
    """Close after the peer has read what was sent: shut writing down, then drain what the
    peer still sends until it closes (a close with unread bytes would reset the
    connection, and the peer could lose the last answer)."""
    with contextlib.suppress(OSError, ValueError):
        sock.settimeout(seconds)
        if not is_tls(sock):
            sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + seconds
        while sock.recv(65536) and time.monotonic() < deadline:
            pass


def _progress_sender(sock) -> Callable[[dict], None]:
    return lambda counts: send_frame(sock, {"ok": True, "done": False, "progress": counts})


def _send_error(sock, exc: BaseException) -> None:
    send_frame(sock, {"ok": False, "error": encode_error(exc)})


def _refused(sock, message: str) -> bool:
    """Tell the peer it was refused (``PermissionError``); False: close the connection."""
    _send_error(sock, PermissionError(errno.EACCES, message))
    _close_gently(sock)
    return False


def _why(exc: BaseException) -> str:
    if isinstance(exc, (BlockingIOError, TimeoutError)) or type(exc).__name__.startswith("SSLWant"):
        return "no traffic within its timeout"
    return str(exc)


def _set_timeout_option(sock, option: int, seconds: float) -> None:
    """A kernel timeout on a blocking socket (``SO_RCVTIMEO``/``SO_SNDTIMEO``): a call that
    makes no progress for ``seconds`` fails with EAGAIN (``sendfile`` included)."""
    whole = int(seconds)
    sock.setsockopt(
        socket.SOL_SOCKET, option, struct.pack("ll", whole, int((seconds - whole) * 1e6))
    )


def tls_server_context(cert: str, key: str):
    """A server-side TLS context with ``cert`` and ``key`` (PEM files); ``OSError`` or
    ``ValueError`` naming the file that does not do."""
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.num_tickets = 0  # no resumption; nothing unasked for on an idle connection
    try:
        context.load_cert_chain(cert, key)
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            errno.ENOENT, f"TLS certificate or key not found: {exc.filename or cert}"
        ) from None
    except ssl.SSLError as exc:
        raise ValueError(
            f"tls_cert {cert} and tls_key {key} do not make a certificate chain: {exc.reason}"
        ) from None
    return context


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


def _send_segments(sock, header: dict, payload: list) -> None:
    """One frame whose payload mixes buffers and :class:`FileSegment` pieces, the latter
    sent from their files by the kernel (``sendfile``), never copied through Python; over
    TLS, read into a buffer and sent from there."""
    total = sum(p.length if isinstance(p, FileSegment) else memoryview(p).nbytes for p in payload)
    sock.sendall(pack_header(header, total))
    tls = is_tls(sock)
    scratch = bytearray(_SEGMENT_COPY) if tls else None
    out = sock.fileno()
    for part in payload:
        if not isinstance(part, FileSegment):
            sock.sendall(part)
            continue
        offset, left = part.offset, part.length
        while left:
            if scratch is not None:
                n = os.preadv(part.fd, [memoryview(scratch)[: min(left, len(scratch))]], offset)
                if n:
                    sock.sendall(memoryview(scratch)[:n])
            else:
                n = os.sendfile(out, part.fd, offset, left)
            if n == 0:
                # The peer cannot be told in the middle of a payload: drop the connection.
                raise ProtocolError(f"region file ended {left} bytes short of a page")
            offset += n
            left -= n
