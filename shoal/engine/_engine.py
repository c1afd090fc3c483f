"""The engine's public functions: validation, GPU dispatch, error reporting, backend choice.

Backends (``io_uring`` in ``_uring.pyx``, ``threads`` in ``_threads.py``) receive validated
requests and return one result per request: a byte count or an exception instance. This
module turns the first failure into the exception the caller sees.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from . import _crc
from ._requests import FD_MAX, host_view, io_requests

__all__ = ["backend", "crc32c", "get_backend", "read_batch", "read_files", "write_batch"]

BACKENDS = ("io_uring", "threads")

# A read batch of at least PARALLEL_BYTES is split over up to PARALLEL_WAYS threads, each
# with its own ring and at least SPLIT_BYTES: one core copies out of the page cache (and
# checksums) at about half the speed two do.
PARALLEL_BYTES = 8 << 20
SPLIT_BYTES = 4 << 20
PARALLEL_WAYS = min(4, os.cpu_count() or 1)


@functools.cache
def _make(name: str):
    if name == "threads":
        from ._threads import ThreadsBackend

        return ThreadsBackend()
    if name == "io_uring":
        from . import _uring

        return _uring.UringBackend()
    raise ValueError(f"unknown engine backend {name!r}; choose one of {', '.join(BACKENDS)}")


@functools.cache
def io_uring_available() -> bool:
    """Probe once whether this process may set up an io_uring (seccomp often forbids it)."""
    try:
        from . import _uring
    except ImportError:
        return False
    return _uring.probe()


def get_backend(name: str | None = None):
    """The backend object named ``name``, or the one ``SHOAL_ENGINE`` selects (default auto)."""
    if name is None:
        name = os.environ.get("SHOAL_ENGINE", "auto").strip().lower() or "auto"
        if name == "auto":
            name = "io_uring" if io_uring_available() else "threads"
        elif name not in BACKENDS:
            raise ValueError(
                f"SHOAL_ENGINE={name!r} is not a backend; use auto, {' or '.join(BACKENDS)}"
            )
    if name == "io_uring" and not io_uring_available():
        raise OSError(
            "io_uring is not available in this process (kernel too old or blocked by "
            "seccomp); set SHOAL_ENGINE=threads"
        )
    return _make(name)


_pool_lock = threading.Lock()
_pool: tuple[int, ThreadPoolExecutor] | None = None


def _read_pool() -> ThreadPoolExecutor:
    """The threads that take parts of large batches; made anew in a forked child, whose
    copy of the parent's pool has no threads."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool[0] != os.getpid():
            pool = ThreadPoolExecutor(PARALLEL_WAYS - 1, thread_name_prefix="shoal-read")
            _pool = (os.getpid(), pool)
        return _pool[1]


def in_parts(read: Callable[[int, int], list], lengths: Sequence[int]) -> list:
    """``read(0, n)`` of a batch of ``n`` requests of ``lengths`` bytes; a large batch is
    split in contiguous parts of about equal bytes, ``read(a, b)`` of each run at once by
    the caller and pool threads, and the results joined in order."""
    total = sum(lengths)
    ways = min(PARALLEL_WAYS, len(lengths), total // SPLIT_BYTES)
    if total < PARALLEL_BYTES or ways < 2:
        return read(0, len(lengths))
    bounds, start, acc = [], 0, 0
    for i, length in enumerate(lengths):
        acc += length
        if acc * ways >= total * (len(bounds) + 1) and len(bounds) < ways - 1:
            bounds.append((start, i + 1))
            start = i + 1
    bounds.append((start, len(lengths)))
    pool = _read_pool()
    parts = [pool.submit(read, a, b) for a, b in bounds[1:]]
    results = read(*bounds[0])
    for part in parts:
        results.extend(part.result())
    return results


def submit_reads(eng, checked: list[tuple], direct: bool, checksums) -> list:
    """``eng.read_batch`` of validated host requests; a large batch on io_uring is split
    over the cores (:func:`in_parts`), each part on its own ring."""
    if eng.name != "io_uring":
        return eng.read_batch(checked, direct, checksums)
    return in_parts(
        lambda a, b: eng.read_batch(checked[a:b], direct, checksums[a:b] if checksums else None),
        [req[2] for req in checked],
    )


def backend() -> str:
    """Name of the backend in use: ``"io_uring"`` or ``"threads"``."""
    return get_backend().name


def _finish(results: list, op: str) -> list[int]:
    for index, res in enumerate(results):
        if isinstance(res, BaseException):
            res.index = index
            res.results = results
            raise res
    return results


def _split_device(checked: list[tuple]) -> tuple[list[int], list[int]]:
    host, device = [], []
    for i, req in enumerate(checked):
        (device if req[3] is None else host).append(i)
    return host, device


def _checksums(checksums: Sequence[int | None], count: int) -> list[int | None]:
    checksums = list(checksums)
    if len(checksums) != count:
        raise ValueError(f"{len(checksums)} checksums given for {count} requests")
    for i, c in enumerate(checksums):
        if c is None or (type(c) is int and 0 <= c <= 0xFFFFFFFF):
            continue
        if isinstance(c, bool) or not isinstance(c, int):
            raise TypeError(f"checksum {i} must be an int or None, got {type(c).__name__}")
        if not 0 <= c <= 0xFFFFFFFF:
            raise ValueError(f"checksum {i} is not a 32-bit crc32c: {c}")
    return checksums


def read_batch(
    requests: Sequence[Any],
    *,
    direct: bool = False,
    checksums: Sequence[int | None] | None = None,
    engine=None,
) -> list[int]:
    """Read many ranges in one submission.

    Parameters
    ----------
    requests
        ``(fd, file_offset, length, buffer, buffer_offset)`` tuples. ``buffer`` is any
        writable buffer (bytearray, memoryview, numpy array, torch CPU tensor) or an object
        with ``__cuda_array_interface__`` (read through ``shoal.engine.gpu``).
    direct
        Use O_DIRECT for the requests whose buffer address, file offset and length are
        4 KiB aligned; the others are read through the page cache.
    checksums
        Optional expected crc32c per request (``None`` to skip one), checked on the bytes
        read; a mismatch fails that request with ``PageCorruptedError``.

    Returns
    -------
    list of int
        Bytes read per request: ``length``, or fewer at end of file.

    Raises
    ------
    OSError
        Of the first failing request, naming its file; ``exc.index`` is that request's
        position and ``exc.results`` holds every request's count or exception. The other
        requests have completed.
    """
    checked = io_requests(requests, writable=True, op="read")
    if checksums is not None:
        checksums = _checksums(checksums, len(checked))
    eng = engine or get_backend()
    host, device = _split_device(checked)
    if not device:
        return _finish(submit_reads(eng, checked, direct, checksums), "read")
    if checksums is not None and any(checksums[i] is not None for i in device):
        raise ValueError("read_batch: checksums cannot be verified for GPU destinations")
    from . import gpu

    results: list = [None] * len(checked)
    # Device requests first: their destinations are checked before any byte moves.
    for i, r in zip(device, gpu.read_batch([checked[i] for i in device]), strict=True):
        results[i] = r
    if host:
        sub = [checked[i] for i in host]
        sums = [checksums[i] for i in host] if checksums is not None else None
        for i, r in zip(host, submit_reads(eng, sub, direct, sums), strict=True):
            results[i] = r
    return _finish(results, "read")


def write_batch(requests: Sequence[Any], *, engine=None) -> list[int]:
    """Write many ranges in one submission.

    ``requests`` are ``(fd, file_offset, length, buffer, buffer_offset)`` tuples; the
    buffers may be read-only. Returns the bytes written per request (always ``length``).
    Errors are reported as in :func:`read_batch`.
    """
    checked = io_requests(requests, writable=False, op="write")
    if any(req[3] is None for req in checked):
        raise TypeError("write_batch: GPU source buffers are not supported; copy to host first")
    return _finish((engine or get_backend()).write_batch(checked), "write")


def read_files(
    paths: Sequence[str | bytes | os.PathLike],
    buffers: Sequence[Any],
    *,
    dir_fd: int | None = None,
    engine=None,
) -> list[int]:
    """Read whole small files into buffers, one open-read-close chain per file.

    Returns each file's size. A missing file raises ``FileNotFoundError`` naming it; a
    buffer smaller than its file raises ``ValueError`` naming the file and both sizes.
    Relative paths resolve against ``dir_fd`` when given. Errors are reported as in
    :func:`read_batch`.
    """
    if len(paths) != len(buffers):
        raise ValueError(f"{len(paths)} paths given for {len(buffers)} buffers")
    if dir_fd is not None and (isinstance(dir_fd, bool) or not isinstance(dir_fd, int)):
        raise TypeError(f"read_files: dir_fd must be an int or None, got {type(dir_fd).__name__}")
    if dir_fd is not None and not 0 <= dir_fd <= FD_MAX:
        raise ValueError(f"read_files: dir_fd {dir_fd} is out of range")
    encoded = [os.fsencode(p) for p in paths]
    for i, p in enumerate(encoded):
        if b"\0" in p:
            raise ValueError(f"read_files: path {i} contains a NUL byte: {p!r}")
    views: list[memoryview] = []
    try:
        for b in buffers:
            views.append(host_view(b, writable=True, what="read_files buffer"))
    except (TypeError, ValueError):
        # Again for a message with the buffer's index (kept off the fast path).
        i = len(views)
        host_view(buffers[i], writable=True, what=f"read_files buffer {i}")
        raise
    return _finish((engine or get_backend()).read_files(encoded, views, dir_fd), "read_files")


def crc32c(data: Any, value: int = 0) -> int:
    """crc32c of a buffer, continuing from ``value``; hardware-accelerated with SSE4.2."""
    return _crc.crc32c(host_view(data, writable=False, what="crc32c"), value)
