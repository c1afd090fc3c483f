"""Validation of engine requests, shared by every backend so they fail the same way."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

ALIGN = 4096
FD_MAX = 2**31 - 1  # descriptors are C ints
OFFSET_MAX = 2**63 - 1  # file offsets are signed 64-bit


def fd_name(fd: int) -> str:
    """Best-effort path of an open descriptor, for error messages."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return f"<fd {fd}>"


def host_view(obj: Any, *, writable: bool, what: str) -> memoryview:
    """A flat byte view of a host buffer: buffer protocol first, then DLPack (torch CPU)."""
    try:
        view = memoryview(obj)
    except TypeError:
        if not hasattr(obj, "__dlpack__"):
            raise TypeError(
                f"{what}: {type(obj).__name__} is not a buffer (need bytearray, memoryview, "
                "numpy array, torch CPU tensor, or a CUDA array)"
            ) from None
        import numpy as np

        view = memoryview(np.from_dlpack(obj))
    if writable and view.readonly:
        raise TypeError(f"{what}: destination {type(obj).__name__} is read-only")
    if not view.c_contiguous:
        raise ValueError(f"{what}: buffer {type(obj).__name__} is not C-contiguous")
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view


def _int(value: Any, what: str, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what}: {field} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{what}: {field} must be >= 0, got {value}")
    return value


def io_requests(requests: Sequence[Any], *, writable: bool, op: str) -> list[tuple]:
    """Check ``(fd, file_offset, length, buffer, buffer_offset)`` requests.

    Returns ``(fd, file_offset, length, view, buffer_offset, original_buffer)`` tuples.
    """
    out = []
    for i, req in enumerate(requests):
        what = f"{op} request {i}"
        try:
            fd, offset, length, buf, buf_offset = req
        except (TypeError, ValueError):
            raise ValueError(
                f"{what}: expected (fd, file_offset, length, buffer, buffer_offset), got {req!r}"
            ) from None
        _int(fd, what, "fd")
        _int(offset, what, "file_offset")
        _int(length, what, "length")
        _int(buf_offset, what, "buffer_offset")
        if fd > FD_MAX:
            raise ValueError(f"{what}: fd {fd} is out of range")
        if offset + length > OFFSET_MAX:
            raise ValueError(
                f"{what}: file_offset {offset} + length {length} is beyond the largest file offset"
            )
        if hasattr(buf, "__cuda_array_interface__"):
            out.append((fd, offset, length, None, buf_offset, buf))
            continue
        view = host_view(buf, writable=writable, what=what)
        if buf_offset + length > view.nbytes:
            raise ValueError(
                f"{what}: buffer of {view.nbytes} bytes is too small for {length} bytes "
                f"at buffer offset {buf_offset}"
            )
        out.append((fd, offset, length, view, buf_offset, buf))
    return out


def is_aligned(view: memoryview, buf_offset: int, offset: int, length: int) -> bool:
    """True when a read may use O_DIRECT: address, file offset and length 4 KiB aligned."""
    import ctypes

    if (offset | length) % ALIGN:
        return False
    if view.readonly:
        return False
    address = ctypes.addressof(ctypes.c_char.from_buffer(view)) + buf_offset
    return address % ALIGN == 0
