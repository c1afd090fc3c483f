"""Frames on a stream socket: ``struct "<II"`` (header length, payload length), a msgpack
header (a dict), then the raw payload bytes.

Bulk bytes travel only in payloads, which the receiver reads with ``recv_into`` straight
into their destinations. Open file descriptors ride along with a frame's first bytes as
``SCM_RIGHTS`` ancillary data (Unix sockets only); the header says how many to expect.

A header is read as its bytes arrive, in growing pieces: a frame that announces a large
header and then sends nothing costs its receiver a small buffer, not the announced size.
"""

from __future__ import annotations

import array
import errno
import os
import socket
import struct
import sys
from collections.abc import Sequence
from typing import Any

import msgpack

from ..._errors import ShoalError

__all__ = [
    "FRAME",
    "MAX_FDS",
    "MAX_GREETING_HEADER",
    "MAX_HEADER",
    "MAX_REQUEST_HEADER",
    "ProtocolError",
    "discard",
    "is_tls",
    "pack_header",
    "recv_frame",
    "recv_header",
    "recv_into",
    "send_frame",
]

#: Header length and payload length, little-endian u32 each.
FRAME = struct.Struct("<II")
#: Largest header a client accepts in an answer: headers carry metadata, never bulk bytes.
MAX_HEADER = 64 << 20
#: Largest request header a worker accepts from an authenticated peer.
MAX_REQUEST_HEADER = 16 << 20
#: Largest request header a worker accepts before the peer has authenticated.
MAX_GREETING_HEADER = 4096
#: Descriptors one frame may carry (the kernel's limit per message is 253).
MAX_FDS = 200
_IOV_BATCH = 512  # buffers per sendmsg call, well under IOV_MAX (1024)
_FD_SIZE = array.array("i").itemsize
_FIRST_PIECE = 64 << 10  # a header buffer starts this small and doubles as bytes arrive
_SMALL = 16 << 10  # payload buffers below this are copied together rather than sent alone
_COALESCE = 256 << 10  # ... into pieces of about this size


class ProtocolError(ShoalError, ConnectionError):
    """The peer sent something that is not a valid frame, or closed the connection in
    the middle of one (EPROTO)."""

    def __init__(self, message: str):
        super().__init__(errno.EPROTO, message)


def is_tls(sock: socket.socket) -> bool:
    """True for a TLS socket (one that cannot pass descriptors or use ``sendfile``)."""
    ssl = sys.modules.get("ssl")  # no TLS socket can exist before ssl is imported
    return ssl is not None and isinstance(sock, ssl.SSLSocket)


def _views(payload: Sequence[Any]) -> list[memoryview]:
    out = []
    for part in payload:
        view = part if isinstance(part, memoryview) else memoryview(part)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        if view.nbytes:
            out.append(view)
    return out


def _gathered(payload: Sequence[Any]) -> tuple[list, int]:
    """The payload's buffers, runs of small ones joined into one (a syscall and an iovec
    entry per tiny buffer would cost more than copying it); their total length."""
    out: list = []
    run: list = []
    run_bytes = total = 0
    for part in payload:
        kind = type(part)
        if kind is bytes or kind is bytearray:
            view, n = part, len(part)
        else:
            view = part if kind is memoryview else memoryview(part)
            if view.format != "B" or view.ndim != 1:
                view = view.cast("B")
            n = view.nbytes
        if not n:
            continue
        total += n
        if n < _SMALL:
            run.append(view)
            run_bytes += n
            if run_bytes >= _COALESCE:
                out.append(b"".join(run))
                run, run_bytes = [], 0
            continue
        if run:
            out.append(b"".join(run))
            run, run_bytes = [], 0
        out.append(view)
    if run:
        out.append(b"".join(run))
    return out, total


def pack_header(header: dict, payload_len: int, max_header: int = MAX_HEADER) -> bytes:
    """A frame's prefix and msgpack header; ``ValueError`` past ``max_header`` bytes."""
    if not isinstance(header, dict):
        raise TypeError(f"frame header must be a dict, got {type(header).__name__}")
    raw = msgpack.packb(header, use_bin_type=True)
    if len(raw) > max_header:
        raise ValueError(f"frame header of {len(raw)} bytes exceeds {max_header}")
    if payload_len >= 1 << 32:
        raise ValueError(f"frame payload of {payload_len} bytes does not fit in 32 bits")
    return FRAME.pack(len(raw), payload_len) + raw


def send_frame(
    sock: socket.socket,
    header: dict,
    payload: Sequence[Any] = (),
    fds: Sequence[int] = (),
) -> None:
    """Send one frame.

    Parameters
    ----------
    sock
        A connected stream socket (blocking), TLS or not.
    header
        A dict of msgpack-serialisable values.
    payload
        Buffers (bytes, bytearray, memoryview, numpy arrays ...) sent back to back after the
        header, without copying them (small ones are gathered first); their total is the
        payload length.
    fds
        Open descriptors passed to the peer with ``SCM_RIGHTS`` (a Unix socket only); at
        most :data:`MAX_FDS`. The caller keeps its own copies.
    """
    if not isinstance(header, dict):
        raise TypeError(f"frame header must be a dict, got {type(header).__name__}")
    if len(fds) > MAX_FDS:
        raise ValueError(f"a frame may carry at most {MAX_FDS} descriptors, got {len(fds)}")
    buffers, total = _gathered(payload)
    prefix = pack_header(header, total)
    if is_tls(sock):
        if fds:
            raise ValueError("descriptors cannot cross a TLS connection")
        for buf in (prefix, *buffers):
            sock.sendall(buf)
        return
    parts = [memoryview(prefix), *map(memoryview, buffers)]
    ancillary = []
    if fds:
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
    first, count = 0, len(parts)
    while first < count:
        sent = sock.sendmsg(parts[first : first + _IOV_BATCH], ancillary)
        ancillary = []  # descriptors go with the first bytes only
        # Step over what went out; a partial send leaves the rest of a buffer to go next.
        while sent:
            head = parts[first]
            if sent >= head.nbytes:
                sent -= head.nbytes
                first += 1
            else:
                parts[first] = head[sent:]
                sent = 0


def _recv_exact(
    sock: socket.socket, view: memoryview, what: str, done: int = 0, total: int | None = None
) -> None:
    """Fill ``view``; ``done`` of ``total`` bytes of the ``what`` came before it (for the
    message when the peer closes in the middle)."""
    got = 0
    while got < view.nbytes:
        n = sock.recv_into(view[got:])
        if n == 0:
            raise ProtocolError(
                f"connection closed by the peer in the middle of a {what} "
                f"({done + got} of {total or view.nbytes} bytes received)"
            )
        got += n


def _recv_growing(sock: socket.socket, size: int) -> bytearray:
    """``size`` bytes, in a buffer that grows only as they arrive."""
    buf = bytearray(min(size, _FIRST_PIECE))
    got = 0
    while True:
        with memoryview(buf) as whole, whole[got:] as rest:  # released: the buffer may grow
            _recv_exact(sock, rest, "frame header", got, size)
        got = len(buf)
        if got == size:
            return buf
        buf.extend(bytes(min(got, size - got)))


def _take_fds(ancdata, flags: int, fds: list[int]) -> None:
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(data) - len(data) % _FD_SIZE
            fds.extend(array.array("i", data[:usable]))
    if flags & socket.MSG_CTRUNC:
        for fd in fds:
            os.close(fd)
        raise ProtocolError("descriptors passed by the peer were truncated (too many at once)")


def _recv_prefix(sock: socket.socket, fds: list[int]) -> bytes | None:
    """A frame's 8 prefix bytes (with the descriptors riding on them, on a Unix socket);
    None at a clean close before the first byte."""
    prefix = bytearray(FRAME.size)
    got = 0
    unix = not is_tls(sock) and sock.family == socket.AF_UNIX
    space = socket.CMSG_SPACE(MAX_FDS * _FD_SIZE)
    cloexec = getattr(socket, "MSG_CMSG_CLOEXEC", 0)
    while got < FRAME.size:
        if unix:
            data, ancdata, flags, _ = sock.recvmsg(FRAME.size - got, space, cloexec)
            _take_fds(ancdata, flags, fds)
        else:
            data = sock.recv(FRAME.size - got)
        if not data:
            for fd in fds:
                os.close(fd)
            fds.clear()
            if got == 0:
                return None
            raise ProtocolError("connection closed by the peer in the middle of a frame prefix")
        prefix[got : got + len(data)] = data
        got += len(data)
    return bytes(prefix)


def recv_header(
    sock: socket.socket, max_header: int = MAX_HEADER
) -> tuple[dict, int, list[int]] | None:
    """Receive a frame's prefix and header.

    Parameters
    ----------
    sock
        A connected stream socket, TLS or not.
    max_header
        The largest header accepted (checked before any of it is read).

    Returns
    -------
    tuple or None
        ``(header, payload_length, fds)``: the caller must then consume exactly
        ``payload_length`` payload bytes (:func:`recv_into`) and owns ``fds`` (opened
        close-on-exec). ``None`` when the peer closed the connection between frames.

    Raises
    ------
    ProtocolError
        A malformed frame, a header over ``max_header``, or the connection closed in the
        middle of a frame.
    """
    fds: list[int] = []
    prefix = _recv_prefix(sock, fds)
    if prefix is None:
        return None
    try:
        header_len, payload_len = FRAME.unpack(prefix)
        if header_len > max_header:
            raise ProtocolError(f"frame header of {header_len} bytes exceeds {max_header}")
        raw = _recv_growing(sock, header_len)
        try:
            header = msgpack.unpackb(raw, raw=False, strict_map_key=False)
        except (ValueError, TypeError, OverflowError, msgpack.UnpackException) as exc:
            raise ProtocolError(f"frame header is not valid msgpack: {exc}") from None
        if not isinstance(header, dict):
            raise ProtocolError(f"frame header must be a map, got {type(header).__name__}")
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return header, payload_len, fds


def recv_into(sock: socket.socket, views: Sequence[Any]) -> None:
    """Receive payload bytes straight into ``views``, filling each in turn."""
    for v in _views(views):
        _recv_exact(sock, v, "frame payload")


def discard(sock: socket.socket, length: int) -> None:
    """Receive and drop ``length`` payload bytes through a small buffer."""
    scratch = memoryview(bytearray(min(length, _FIRST_PIECE)))
    while length:
        piece = scratch[: min(length, scratch.nbytes)]
        _recv_exact(sock, piece, "frame payload")
        length -= piece.nbytes


def recv_frame(
    sock: socket.socket, max_header: int = MAX_HEADER
) -> tuple[dict, bytes, list[int]] | None:
    """A whole frame with its payload as bytes (for small payloads); None at a clean close."""
    got = recv_header(sock, max_header)
    if got is None:
        return None
    header, payload_len, fds = got
    payload = bytearray(payload_len)
    try:
        recv_into(sock, [payload])
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return header, bytes(payload), fds
