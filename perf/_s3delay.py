"""A TCP proxy in front of an S3 server that counts requests by kind and can hold back each
answer by a fixed delay, as a real object store's latency would.

    python perf/_s3delay.py HOST:PORT [--delay-ms N]

Bytes are forwarded as they come, keep-alive connections stay as they are: the proxy only
reads the head of each HTTP/1.1 message, at message boundaries it finds by the message's
own framing (``Content-Length``, chunked bodies, bodies that end at close, answers that
have none: to HEAD, 1xx, 204, 304). Per request it counts one of ``GET``, ``HEAD``,
``LIST`` (a GET whose query asks for a listing: ``list-type``, ``delimiter``, ``prefix``
...) or ``other``; with a delay set, it waits that long before forwarding the first byte
of each request's answer (once per request, not per packet). Requests are told apart by
their path-style form (``/bucket/key``), as the benchmarks address the server.

:class:`DelayProxy` runs in the caller's process (for tests); :class:`ProxyProcess` runs one
in a child process of its own, so that forwarding does not compete with the reader being
measured for the caller's GIL. Run as a script, this module is that child: it prints its
port, then answers ``delay MS`` and ``counts`` commands on stdin, one line each, and exits
when stdin closes.
"""

from __future__ import annotations

import collections
import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
from urllib.parse import parse_qsl, urlsplit

__all__ = ["KINDS", "DelayProxy", "ProxyProcess", "classify", "difference"]

#: Request kinds, in the order they are printed.
KINDS = ("GET", "HEAD", "LIST", "other")

# Query parameters of ListObjects (v1 and v2); a GetObject carries none of them.
_LIST_PARAMS = frozenset(
    ("list-type", "delimiter", "prefix", "marker", "max-keys", "continuation-token",
     "start-after", "encoding-type", "fetch-owner")
)  # fmt: skip
_MAX_HEAD = 64 << 10  # a longer head is not HTTP the proxy understands: forwarded blind
_BUFFER = 256 << 10


def classify(method: str, target: str) -> str:
    """The kind of a request (one of :data:`KINDS`) from its method and request target."""
    if method == "HEAD":
        return "HEAD"
    if method != "GET":
        return "other"
    parts = urlsplit(target)
    params = {k for k, _ in parse_qsl(parts.query, keep_blank_values=True)}
    bucket_only = parts.path.strip("/") != "" and "/" not in parts.path.strip("/")
    if params & _LIST_PARAMS or (bucket_only and not params):
        return "LIST"
    return "GET"


def difference(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    """Counts ``after - before``, per key of ``after``."""
    return {k: after[k] - before.get(k, 0) for k in after}


class _Head(Exception):
    """A message head the proxy cannot parse."""


def _headers(lines: list[bytes]) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(b":")
        if not sep:
            raise _Head(f"a header line without a colon: {line[:80]!r}")
        key = name.strip().decode("latin-1").lower()
        value_text = value.strip().decode("latin-1")
        out[key] = f"{out[key]}, {value_text}" if key in out else value_text
    return out


# Body framing of a message: how its end is found.
_NONE, _LENGTH, _CHUNKED, _UNTIL_CLOSE, _OPAQUE = range(5)


def _body_of(headers: dict[str, str], allow_until_close: bool) -> tuple[int, int]:
    """(framing, length) of a message's body from its headers (RFC 9112, section 6.3)."""
    coding = headers.get("transfer-encoding")
    if coding is not None:
        if coding.rsplit(",", 1)[-1].strip().lower() == "chunked":
            return _CHUNKED, 0
        return (_UNTIL_CLOSE, 0) if allow_until_close else (_OPAQUE, 0)
    length = headers.get("content-length")
    if length is not None:
        values = {v.strip() for v in length.split(",")}
        if len(values) != 1 or not next(iter(values)).isdigit():
            raise _Head(f"a bad Content-Length: {length!r}")
        n = int(values.pop())
        return (_LENGTH, n) if n else (_NONE, 0)
    return (_UNTIL_CLOSE, 0) if allow_until_close else (_NONE, 0)


class _Framer:
    """Finds the messages in one direction of an HTTP/1.1 connection.

    :meth:`feed` takes the bytes as they arrive and returns the offsets, in them, at which
    a message starts (those for which ``marks()`` is true, when given); ``on_head(lines)``
    is called with each complete head and returns the (framing, length) of its body. A
    head that cannot be parsed turns the framer off (everything after it is forwarded
    unparsed) and sets ``failed``.
    """

    # States.
    HEAD, BODY, CHUNK_SIZE, CHUNK_DATA, CHUNK_END, TRAILER, UNTIL_CLOSE, OFF = range(8)

    def __init__(self, on_head, marks=None) -> None:
        self.on_head = on_head
        self.marks = marks
        self.state = self.HEAD
        self.line = bytearray()  # the head (or chunk-size / trailer line) read so far
        self.remaining = 0
        self.failed = False

    def feed(self, data: memoryview) -> list[int]:
        starts: list[int] = []
        i, n = 0, len(data)
        while i < n:
            state = self.state
            if state == self.HEAD:
                if not self.line:
                    while i < n and data[i] in (13, 10):  # empty lines before a message
                        i += 1
                    if i == n:
                        break
                    if self.marks is None or self.marks():
                        starts.append(i)
                i = self._take_head(data, i)
            elif state == self.BODY or state == self.CHUNK_DATA:
                take = min(self.remaining, n - i)
                i += take
                self.remaining -= take
                if not self.remaining:
                    if state == self.BODY:
                        self.state = self.HEAD
                    else:
                        self.state, self.remaining = self.CHUNK_END, 2  # the CRLF after it
            elif state == self.CHUNK_END:
                take = min(self.remaining, n - i)
                self.remaining -= take
                i += take
                if not self.remaining:
                    self.state = self.CHUNK_SIZE
            elif state == self.CHUNK_SIZE or state == self.TRAILER:
                i = self._take_line(data, i)
            else:  # UNTIL_CLOSE, OFF
                break
        return starts

    def _take_head(self, data: memoryview, i: int) -> int:
        old = len(self.line)
        end = data.nbytes
        self.line += data[i:end]
        found = self.line.find(b"\r\n\r\n", max(0, old - 3))
        if found < 0:
            if len(self.line) > _MAX_HEAD:
                self._fail()
            return end
        used = found + 4 - old  # bytes of this feed that belong to the head
        head, self.line = bytes(self.line[: found + 4]), bytearray()
        try:
            framing, length = self.on_head(head[:-4].split(b"\r\n"))
        except _Head:
            self._fail()
            return end
        if framing == _LENGTH:
            self.state, self.remaining = self.BODY, length
        elif framing == _CHUNKED:
            self.state = self.CHUNK_SIZE
        elif framing == _NONE:
            self.state = self.HEAD
        elif framing == _UNTIL_CLOSE:
            self.state = self.UNTIL_CLOSE
        else:
            self._fail()
        return i + used

    def _take_line(self, data: memoryview, i: int) -> int:
        end = data.nbytes
        old = len(self.line)
        self.line += data[i:end]
        found = self.line.find(b"\r\n", max(0, old - 1))
        if found < 0:
            if len(self.line) > _MAX_HEAD:
                self._fail()
            return end
        line, self.line = bytes(self.line[:found]), bytearray()
        used = found + 2 - old
        if self.state == self.TRAILER:
            if not line:
                self.state = self.HEAD
            return i + used
        size = line.split(b";", 1)[0].strip()
        try:
            self.remaining = int(size, 16)
        except ValueError:
            self._fail()
            return end
        self.state = self.CHUNK_DATA if self.remaining else self.TRAILER
        return i + used

    def _fail(self) -> None:
        self.failed = True
        self.state = self.OFF
        self.line = bytearray()


class DelayProxy:
    """The proxy, in this process: listens on 127.0.0.1 (``port`` once started) and forwards
    each connection to ``upstream`` (``(host, port)``).

    Parameters
    ----------
    upstream
        Address of the S3 server.
    delay
        Seconds to wait before forwarding the first byte of each request's answer.
    """

    def __init__(self, upstream: tuple[str, int], delay: float = 0.0) -> None:
        self.upstream = upstream
        self.delay = delay
        self.port = 0
        self._lock = threading.Lock()
        self._counts = dict.fromkeys((*KINDS, "answered", "unparsed"), 0)
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []

    def start(self) -> DelayProxy:
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.port = self._listener.getsockname()[1]
        t = threading.Thread(target=self._accept, name="s3delay-accept", daemon=True)
        t.start()
        self._threads.append(t)
        return self

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def counts(self) -> dict[str, int]:
        """Requests per kind so far; ``answered``: requests whose answer head went back
        (``in flight = sum of the kinds - answered``); ``unparsed``: connections on which a
        message could not be parsed, whose later requests went uncounted."""
        with self._lock:
            return dict(self._counts)

    def _count(self, key: str) -> None:
        with self._lock:
            self._counts[key] += 1

    def stop(self) -> None:
        """Stop listening and close every connection; idempotent."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        for t in self._threads:
            t.join(5)
        for s in conns:
            s.close()

    def __enter__(self) -> DelayProxy:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # ---------------------------------------------------------------- forwarding

    def _accept(self) -> None:
        listener = self._listener
        while listener is not None:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                if self._listener is None:
                    client.close()
                    server.close()
                    return
                self._conns.update((client, server))
            self._serve(client, server)

    def _serve(self, client: socket.socket, server: socket.socket) -> None:
        methods: collections.deque[str] = collections.deque()  # requests not yet answered
        interim = [False]  # the last answer head was a 1xx: its final answer is not delayed

        def on_request(lines: list[bytes]) -> tuple[int, int]:
            parts = lines[0].split(b" ")
            if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
                raise _Head(f"not an HTTP/1.x request line: {lines[0][:80]!r}")
            method, target = parts[0].decode("latin-1"), parts[1].decode("latin-1")
            framing = _body_of(_headers(lines[1:]), allow_until_close=False)
            methods.append(method)
            self._count(classify(method, target))
            return framing

        def on_answer(lines: list[bytes]) -> tuple[int, int]:
            parts = lines[0].split(b" ", 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
                raise _Head(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
            status = int(parts[1])
            headers = _headers(lines[1:])
            if status == 101:
                return _OPAQUE, 0  # switched protocols: nothing more to parse
            if 100 <= status < 200:
                interim[0] = True
                return _NONE, 0
            interim[0] = False
            method = methods.popleft() if methods else "GET"
            self._count("answered")
            if method == "HEAD" or status in (204, 304):
                return _NONE, 0
            return _body_of(headers, allow_until_close=True)

        pending = [2]

        def done() -> None:
            with self._lock:
                pending[0] -= 1
                last = pending[0] == 0
                if last:
                    self._conns.difference_update((client, server))
            if last:
                client.close()
                server.close()

        def upstream() -> None:
            self._pump(client, server, _Framer(on_request), delayed=False)
            done()

        def downstream() -> None:
            # Each request's first answer is held back; a final answer after a 1xx is not.
            self._pump(server, client, _Framer(on_answer, lambda: not interim[0]), delayed=True)
            done()

        for target, name in ((upstream, "s3delay-up"), (downstream, "s3delay-down")):
            threading.Thread(target=target, name=name, daemon=True).start()

    def _pump(self, src, dst, framer: _Framer, delayed: bool) -> None:
        """Forward ``src`` to ``dst`` until ``src`` closes, waiting out the delay (when
        ``delayed``) before each message start the framer marks."""
        buf = bytearray(_BUFFER)
        view = memoryview(buf)
        try:
            while True:
                n = src.recv_into(buf)
                if not n:
                    break
                data = view[:n]
                starts = framer.feed(data)
                if framer.failed:
                    framer.failed = False
                    self._count("unparsed")
                sent = 0
                delay = self.delay if delayed else 0.0
                for off in starts if delay > 0 else ():
                    if off > sent:
                        dst.sendall(data[sent:off])
                        sent = off
                    time.sleep(delay)
                dst.sendall(data[sent:])
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)


class ProxyProcess:
    """A :class:`DelayProxy` in a child process: :meth:`start`, :meth:`set_delay`,
    :meth:`counts`, :meth:`stop`; usable as a context manager. The child exits when its
    stdin closes, so it never outlives the caller."""

    def __init__(self, upstream_url: str, delay: float = 0.0) -> None:
        parts = urlsplit(upstream_url)
        self.upstream = f"{parts.hostname}:{parts.port}"
        self.delay = delay
        self.port = 0
        self._proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> ProxyProcess:
        self._proc = subprocess.Popen(
            [sys.executable, __file__, self.upstream, "--delay-ms", repr(self.delay * 1000)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
            close_fds=True,
        )
        line = self._proc.stdout.readline().strip()
        if not line.isdigit():
            self.stop()
            raise ConnectionError(f"the S3 proxy did not start (it said {line!r})")
        self.port = int(line)
        return self

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _ask(self, command: str) -> str:
        self._proc.stdin.write(command + "\n")
        self._proc.stdin.flush()
        return self._proc.stdout.readline().strip()

    def set_delay(self, seconds: float) -> None:
        """Hold back each answer by ``seconds`` from now on."""
        answer = self._ask(f"delay {seconds * 1000!r}")
        if answer != "ok":
            raise RuntimeError(f"the S3 proxy refused the delay: {answer!r}")
        self.delay = seconds

    def counts(self) -> dict[str, int]:
        """As :meth:`DelayProxy.counts`."""
        return json.loads(self._ask("counts"))

    def settled_counts(self, quiet: float = 0.25, timeout: float = 10.0) -> dict[str, int]:
        """:meth:`counts` once every request has its answer and nothing came for ``quiet``
        seconds (requests a reader sends in the background after its last read count)."""
        deadline = time.monotonic() + timeout
        last = self.counts()
        while time.monotonic() < deadline:
            time.sleep(quiet)
            now = self.counts()
            if now == last and sum(now[k] for k in KINDS) == now["answered"]:
                break
            last = now
        return last

    def stop(self) -> None:
        """Stop the child and wait for it; idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()

    def __enter__(self) -> ProxyProcess:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("upstream", help="HOST:PORT of the S3 server")
    p.add_argument("--delay-ms", type=float, default=0.0, help="answer delay (default 0)")
    args = p.parse_args(argv)
    host, _, port = args.upstream.rpartition(":")
    with DelayProxy((host, int(port)), args.delay_ms / 1000) as proxy:
        print(proxy.port, flush=True)
        for line in sys.stdin:
            command, _, value = line.strip().partition(" ")
            if command == "delay":
                proxy.delay = max(0.0, float(value) / 1000)
                print("ok", flush=True)
            elif command == "counts":
                print(json.dumps(proxy.counts()), flush=True)
            else:
                print(f"unknown command {command!r}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
