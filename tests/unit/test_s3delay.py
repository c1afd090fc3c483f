"""The benchmarks' S3 proxy (perf/_s3delay.py): requests counted by kind, exactly, through
keep-alive, bodies and pipelining; bytes intact; the answer delay applied once per request."""

from __future__ import annotations

import http.client
import importlib.util
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "perf" / "_s3delay.py"
_spec = importlib.util.spec_from_file_location("_s3delay", _PATH)
s3delay = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(s3delay)

BLOB = bytes(range(256)) * 300  # 76,800 bytes: more than one recv of the proxy's buffer


class _Handler(BaseHTTPRequestHandler):
    """GET /chunked answers BLOB chunked; other GETs answer BLOB with a length; HEAD the
    length alone; PUT and POST echo the body's size; /continue answers 100 first."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if not size:
                    while self.rfile.readline() not in (b"\r\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def do_GET(self) -> None:
        if self.path.startswith("/continue"):
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.send_response(200)
        if self.path.startswith("/chunked"):
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(BLOB), 10_000):
                piece = BLOB[i : i + 10_000]
                self.wfile.write(b"%x;ext=1\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\nX-Trailer: 1\r\n\r\n")
            return
        self.send_header("Content-Length", str(len(BLOB)))
        self.end_headers()
        self.wfile.write(BLOB)

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(BLOB)))
        self.end_headers()

    def _echo(self) -> None:
        body = str(len(self._body())).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_PUT = do_POST = _echo

    def do_DELETE(self) -> None:
        self.send_response(204)
        self.end_headers()


@pytest.fixture(scope="module")
def upstream():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[:2]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def proxy(upstream):
    with s3delay.DelayProxy(upstream) as p:
        yield p


def _kinds(proxy) -> dict[str, int]:
    deadline = time.monotonic() + 2
    while True:
        counts = proxy.counts()
        done = sum(counts[k] for k in s3delay.KINDS) == counts["answered"]
        if done or time.monotonic() > deadline:
            assert counts["unparsed"] == 0
            return {k: counts[k] for k in s3delay.KINDS}
        time.sleep(0.01)


def test_classify():
    c = s3delay.classify
    assert c("GET", "/bucket/train/part-000001.bin") == "GET"
    assert c("GET", "/bucket/a.bin?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Expires=300") == "GET"
    assert c("GET", "/bucket?list-type=2&prefix=train%2F&max-keys=1000") == "LIST"
    assert c("GET", "/bucket/?delimiter=%2F") == "LIST"
    assert c("GET", "/bucket?prefix=a&marker=b") == "LIST"
    assert c("GET", "/bucket") == "LIST"
    assert c("GET", "/") == "GET"
    assert c("HEAD", "/bucket/a.bin") == "HEAD"
    assert c("PUT", "/bucket/a.bin") == "other"
    assert c("POST", "/bucket/a.bin?uploads") == "other"


def test_one_request_is_counted_and_forwarded_intact(proxy):
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    try:
        conn.request("GET", "/bucket/key")
        assert conn.getresponse().read() == BLOB
    finally:
        conn.close()
    assert _kinds(proxy) == {"GET": 1, "HEAD": 0, "LIST": 0, "other": 0}


def test_keep_alive_with_bodies_counts_every_request(proxy):
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    try:
        conn.request("GET", "/bucket/key")
        assert conn.getresponse().read() == BLOB
        conn.request("HEAD", "/bucket/key")
        r = conn.getresponse()
        assert r.read() == b"" and r.headers["Content-Length"] == str(len(BLOB))
        conn.request("GET", "/bucket?list-type=2&prefix=a%2F")
        assert conn.getresponse().read() == BLOB
        conn.request("PUT", "/bucket/up", body=BLOB)
        assert conn.getresponse().read() == str(len(BLOB)).encode()
        conn.request("POST", "/bucket/up?uploads", body=iter([BLOB, b"xyz"]), encode_chunked=True)
        assert conn.getresponse().read() == str(len(BLOB) + 3).encode()
        conn.request("GET", "/chunked/key")
        assert conn.getresponse().read() == BLOB
        conn.request("DELETE", "/bucket/up")
        assert conn.getresponse().read() == b""
        conn.request("GET", "/bucket/key?delimiter=%2F")
        assert conn.getresponse().read() == BLOB
    finally:
        conn.close()
    assert _kinds(proxy) == {"GET": 2, "HEAD": 1, "LIST": 2, "other": 3}


def test_pipelined_requests_in_one_segment(proxy):
    requests = b"".join(
        b"%s /bucket/%s HTTP/1.1\r\nHost: x\r\n\r\n" % (m, k)
        for m, k in ((b"GET", b"a"), (b"HEAD", b"b"), (b"GET", b"?list-type=2"), (b"GET", b"c"))
    )
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
        s.sendall(requests)
        s.shutdown(socket.SHUT_WR)
        got = bytearray()
        while chunk := s.recv(1 << 16):
            got += chunk
    assert got.count(b"HTTP/1.1 200") == 4
    assert len(got) > 3 * len(BLOB)
    assert _kinds(proxy) == {"GET": 2, "HEAD": 1, "LIST": 1, "other": 0}


def test_delay_once_per_request(proxy):
    proxy.delay = 0.1
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    try:
        for path in ("/bucket/key", "/chunked/key", "/continue/key"):
            t0 = time.perf_counter()
            conn.request("GET", path)
            assert conn.getresponse().read() == BLOB
            elapsed = time.perf_counter() - t0
            # One delay per answer: not per packet, not again after a 100 Continue.
            assert 0.1 <= elapsed < 0.19, (path, elapsed)
    finally:
        conn.close()
    assert _kinds(proxy) == {"GET": 3, "HEAD": 0, "LIST": 0, "other": 0}


def test_framing_holds_however_the_stream_is_cut():
    body = b"0123456789" * 7
    chunked = b"5\r\nhello\r\n1a;name=v\r\n" + b"z" * 26 + b"\r\n0\r\nTrailer: t\r\n\r\n"
    stream = (
        b"PUT /b/k HTTP/1.1\r\nContent-Length: 70\r\n\r\n" + body
        + b"GET /b/k HTTP/1.1\r\nHost: x\r\n\r\n"
        + b"POST /b/k?uploads HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked
        + b"HEAD /b/GET%20/b/x HTTP/1.1\r\nContent-Length: 0\r\n\r\n"
    )  # fmt: skip
    firsts = [b"PUT /b/k", b"GET /b/k", b"POST /b/k?uploads", b"HEAD /b/GET%20/b/x"]
    for step in (1, 2, 3, 7, 64, len(stream)):
        seen = []

        def on_head(lines, seen=seen):
            seen.append(lines[0].rsplit(b" ", 1)[0])
            return s3delay._body_of(s3delay._headers(lines[1:]), allow_until_close=False)

        framer = s3delay._Framer(on_head)
        starts = []
        for i in range(0, len(stream), step):
            starts += [i + off for off in framer.feed(memoryview(stream[i : i + step]))]
        assert seen == firsts, step
        assert [stream[s : s + 4] for s in starts] == [b"PUT ", b"GET ", b"POST", b"HEAD"]
        assert framer.state == framer.HEAD and not framer.line and not framer.failed
