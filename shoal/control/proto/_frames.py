"""Frames on a stream socket: ``struct "<II"`` (header length, payload length), a msgpack
header (a dict), then the raw payload bytes.

Bulk bytes travel only in payloads, which the receiver reads with ``recv_into`` straight
into their destinations. Open file descriptors ride along with a frame's first bytes as
``SCM_RIGHTS`` ancillary data (Unix sockets only); the header says how many to expect.
"""

from __future__ import annotations

import array
import errno
import os
import socket
import struct
from collections.abc import Sequence
from typing import Any

import msgpack

from ..._errors import ShoalError

__all__ = [
    "FRAME",
    "MAX_FDS",
    "MAX_HEADER",
    "ProtocolError",
    "recv_frame",
    "recv_header",
    "recv_into",
    "send_frame",
]

#: Header length and payload length, little-endian u32 each.
FRAME = struct.Struct("<II")
#: Largest header accepted: headers carry metadata, never bulk bytes.
MAX_HEADER = 64 << 20
#: Descriptors one frame may carry (the kernel's limit per message is 253).
MAX_FDS = 200
_IOV_BATCH = 512  # buffers per sendmsg call, well under IOV_MAX (1024)
_FD_SIZE = array.array("i").itemsize


class ProtocolError(ShoalError, ConnectionError):
    """The peer sent something that is not a valid frame, or closed the connection in
    the middle of one (EPROTO)."""

    def __init__(self, message: str):
        super().__init__(errno.EPROTO, message)


def _views(payload: Sequence[Any]) -> list[memoryview]:
    out = []
    for part in payload:
        view = part if isinstance(part, memoryview) else memoryview(part)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        if view.nbytes:
            out.append(view)
    return out


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
        A connected stream socket (blocking).
    header
        A dict of msgpack-serialisable values.
    payload
        Buffers (bytes, bytearray, memoryview, numpy arrays ...) sent back to back after the
        header, without copying them; their total is the payload length.
    fds
        Open descriptors passed to the peer with ``SCM_RIGHTS`` (a Unix socket only); at
        most :data:`MAX_FDS`. The caller keeps its own copies.
    """
    if not isinstance(header, dict):
        raise TypeError(f"frame header must be a dict, got {type(header).__name__}")
    if len(fds) > MAX_FDS:
        raise ValueError(f"a frame may carry at most {MAX_FDS} descriptors, got {len(fds)}")
    raw = msgpack.packb(header, use_bin_type=True)
    if len(raw) > MAX_HEADER:
        raise ValueError(f"frame header of {len(raw)} bytes exceeds {MAX_HEADER}")
    views = _views(payload)
    total = sum(v.nbytes for v in views)
    if total >= 1 << 32:
        raise ValueError(f"frame payload of {total} bytes does not fit in 32 bits")
    parts = [memoryview(FRAME.pack(len(raw), total) + raw), *views]
    ancillary = []
    if fds:
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
    while parts:
        batch = parts[:_IOV_BATCH]
        sent = sock.sendmsg(batch, ancillary)
        ancillary = []  # descriptors go with the first bytes only
        # Drop what went out; a partial send leaves the rest of a buffer to go next.
        while sent and parts:
            head = parts[0]
            if sent >= head.nbytes:
                sent -= head.nbytes
                parts.pop(0)
            else:
                parts[0] = head[sent:]
                sent = 0


def _recv_exact(sock: socket.socket, view: memoryview, what: str) -> None:
    got = 0
    while got < view.nbytes:
        n = sock.recv_into(view[got:])
        if n == 0:
            raise ProtocolError(
                f"connection closed by the peer in the middle of a {what} "
                f"({got} of {view.nbytes} bytes received)"
            )
        got += n


def _take_fds(ancdata, flags: int, fds: list[int]) -> None:
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(data) - len(data) % _FD_SIZE
            fds.extend(array.array("i", data[:usable]))
    if flags & socket.MSG_CTRUNC:
        for fd in fds:
            os.close(fd)
        raise ProtocolError("descriptors passed by the peer were truncated (too many at once)")


def recv_header(sock: socket.socket) -> tuple[dict, int, list[int]] | None:
    """Receive a frame's prefix and header.

    Returns
    -------
    tuple or None
        ``(header, payload_length, fds)``: the caller must then consume exactly
        ``payload_length`` payload bytes (:func:`recv_into`) and owns ``fds`` (opened
        close-on-exec). ``None`` when the peer closed the connection between frames.

    Raises
    ------
    ProtocolError
        A malformed frame, or the connection closed in the middle of one.
    """
    prefix = bytearray(FRAME.size)
    got = 0
    fds: list[int] = []
    space = socket.CMSG_SPACE(MAX_FDS * _FD_SIZE)
    cloexec = getattr(socket, "MSG_CMSG_CLOEXEC", 0)
    while got < FRAME.size:
        data, ancdata, flags, _ = sock.recvmsg(FRAME.size - got, space, cloexec)
        _take_fds(ancdata, flags, fds)
        if not data:
            for fd in fds:
                os.close(fd)
            if got == 0:
                return None
            raise ProtocolError("connection closed by the peer in the middle of a frame prefix")
        prefix[got : got + len(data)] = data
        got += len(data)
    try:
        header_len, payload_len = FRAME.unpack(prefix)
        if header_len > MAX_HEADER:
            raise ProtocolError(f"frame header of {header_len} bytes exceeds {MAX_HEADER}")
        raw = bytearray(header_len)
        _recv_exact(sock, memoryview(raw), "frame header")
        try:
            header = msgpack.unpackb(raw, raw=False, strict_map_key=False)
        except (ValueError, msgpack.UnpackException) as exc:
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


def recv_frame(sock: socket.socket) -> tuple[dict, bytes, list[int]] | None:
    """A whole frame with its payload as bytes (for small payloads); None at a clean close."""
    got = recv_header(sock)
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
