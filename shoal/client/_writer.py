"""Files written through the worker (see ``shoal.control._writeback``): a binary file
object whose ``close()`` commits, and the calls around it (delete, rename, persistence).

On the worker's Unix socket the worker hands over a descriptor of the file's staging file
and this process writes its bytes there itself (``pwrite``, one copy, straight from the
caller's buffers); over TCP the bytes go in ``write_data`` requests. Room in the worker's
dirty budget is reserved before bytes are written: all at once when the size is known,
else a step at a time.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
from typing import Any

from ..control.proto import MAX_WRITE_PAYLOAD
from ._connection import Connection

__all__ = ["WriteFile", "open_writer", "wait_persisted"]

_STEP = 64 << 20  # room reserved at a time when the size is not known


class WriteFile(io.RawIOBase):
    """A file being written: sequential, not seekable; ``close()`` commits it (durable as
    its write mode says, visible to every reader); :meth:`abort` drops it, and so does
    ``close()`` after a write failed. Use it from one thread at a time."""

    def __init__(self, conn: Connection, path: str, size: int = -1, on_commit=None):
        super().__init__()
        self.path = path
        self._conn = conn
        self._on_commit = on_commit
        self._fd, self._at = -1, 0
        self._aborted, self._failed = True, False  # nothing to commit until it is open
        #: The worker's answer to the commit (``size``, ``version``, ``persisted``).
        self.committed: dict | None = None
        conn.send({"op": "write_open", "path": path, "size": size})
        answer, _, fds = conn.receive()
        self._handle = answer["handle"]
        self.mode = answer["mode"]
        self._reserved = answer["reserved"]
        self._fd = fds[0] if fds else -1
        for fd in fds[1:]:
            os.close(fd)
        self._aborted = False

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._at

    def write(self, data: Any) -> int:
        try:
            return self._write(data)
        except BaseException:
            self._failed = True  # a file with a hole is never committed: close() drops it
            raise

    def _write(self, data: Any) -> int:
        if self.closed:
            raise ValueError(f"write to a closed file ({self.path})")
        view = memoryview(data)
        if not view.c_contiguous:
            raise ValueError(f"write: the buffer for {self.path} is not C-contiguous")
        view = view.cast("B") if view.format != "B" or view.ndim != 1 else view
        n = view.nbytes
        if self._aborted or not n:
            return n
        if self._fd < 0:
            for at in range(0, n, MAX_WRITE_PAYLOAD):
                piece = view[at : at + MAX_WRITE_PAYLOAD]
                header = {"op": "write_data", "handle": self._handle, "offset": self._at}
                self._conn.send(header, [piece])
                self._conn.receive()
                self._at += piece.nbytes
            return n
        end = self._at + n
        if end > self._reserved:
            want = max(end, min(self._reserved * 2, self._reserved + _STEP))
            grow = {"op": "write_grow", "handle": self._handle, "size": want}
            try:
                self._reserved = self._conn.call(grow)["reserved"]
            except OSError:
                if want == end:
                    raise
                grow["size"] = end
                self._reserved = self._conn.call(grow)["reserved"]
        done = 0
        while done < n:
            done += os.pwrite(self._fd, view[done:], self._at + done)
        self._at = end
        return n

    def abort(self) -> None:
        """Drop the file: nothing is committed (the file as it was stays)."""
        if self.closed or self._aborted:
            return
        self._aborted = True
        try:
            self._conn.call({"op": "write_abort", "handle": self._handle})
        finally:
            super().close()
            self._close_fd()

    def close(self) -> None:
        if self.closed:
            return
        if self._failed and not self._aborted:
            with contextlib.suppress(OSError, ConnectionError):
                self.abort()
            return
        try:
            if not self._aborted:
                header = {"op": "write_commit", "handle": self._handle, "size": self._at}
                self.committed = self._conn.call(header)
        finally:
            super().close()
            self._close_fd()
        if self.committed is not None and self._on_commit is not None:
            self._on_commit([self.path])

    def _close_fd(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class BufferedWriteFile(io.BufferedWriter):
    """A :class:`WriteFile` with a write buffer; leaving a ``with`` block by an exception
    aborts the file instead of committing it."""

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.raw.abort()
        return super().__exit__(exc_type, exc, tb)

    def abort(self) -> None:
        """Drop the file: nothing is committed."""
        self.raw.abort()
        super().close()


class _Unbuffered(WriteFile):
    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()
        return super().__exit__(exc_type, exc, tb)


def open_writer(
    conn: Connection, path: str, size: int | None, buffer_size: int, on_commit=None
) -> Any:
    """A file object writing ``path`` (normalised) through ``conn``; ``size``: the bytes
    it will hold, when known (room reserved at once); ``buffer_size`` 0: unbuffered;
    ``on_commit([path])`` called once it is committed."""
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise ValueError(f"size must be an int >= 0 or None, got {size!r}")
    if isinstance(buffer_size, bool) or not isinstance(buffer_size, int) or buffer_size < 0:
        raise ValueError(f"buffer_size must be an int >= 0, got {buffer_size!r}")
    hint = -1 if size is None else size
    if buffer_size == 0:
        return _Unbuffered(conn, path, hint, on_commit)
    return BufferedWriteFile(WriteFile(conn, path, hint, on_commit), buffer_size)


def write(conn: Connection, path: str, data: Any, on_commit=None) -> int:
    """Write ``data`` (bytes-like) as the whole file ``path``; the bytes written."""
    if isinstance(data, str):
        raise TypeError("write: data must be bytes-like, not str")
    try:
        view = memoryview(data)
    except TypeError:
        raise TypeError(f"write: data must be bytes-like, got {type(data).__name__}") from None
    with _Unbuffered(conn, path, view.nbytes, on_commit) as f:
        f.write(view)
    return view.nbytes


def wait_persisted(call, path: str, timeout: float | None) -> None:
    """Wait until nothing under ``path`` ("" for all) waits for its under-store;
    ``TimeoutError`` naming what is left after ``timeout`` seconds."""
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0
    ):
        raise ValueError(f"timeout must be a number of seconds >= 0 or None, got {timeout!r}")
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        step = 60.0 if deadline is None else max(0.0, min(60.0, deadline - time.monotonic()))
        left = call({"op": "wait_persisted", "path": path, "timeout": step})
        if not left["files"]:
            return
        if deadline is not None and time.monotonic() >= deadline:
            where = path or "the worker"
            raise TimeoutError(
                f"{left['files']} files ({left['bytes']} bytes) under {where} are not in their "
                f"under-store after {timeout:g} s"
            )
