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
    if (
        type(obj) is memoryview
        and obj.ndim == 1
        and obj.format == "B"
        and obj.c_contiguous
        and not (writable and obj.readonly)
    ):
        return obj  # already one: no new view
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


def _check_ints(fd: Any, offset: Any, length: Any, buf_offset: Any, what: str) -> None:
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


def io_requests(requests: Sequence[Any], *, writable: bool, op: str) -> list[tuple]:
    """Check ``(fd, file_offset, length, buffer, buffer_offset)`` requests.

    Returns ``(fd, file_offset, length, view, buffer_offset, original_buffer)`` tuples.
    """
    out = []
    append = out.append
    for i, req in enumerate(requests):
        try:
            fd, offset, length, buf, buf_offset = req
        except (TypeError, ValueError):
            raise ValueError(
                f"{op} request {i}: expected (fd, file_offset, length, buffer, buffer_offset), "
                f"got {req!r}"
            ) from None
        # The common case in one expression (bool is an int subclass: not an exact int);
        # anything else gets the checks one by one, for a message naming the field.
        if not (
            type(fd) is int
            and type(offset) is int
            and type(length) is int
            and type(buf_offset) is int
            and 0 <= fd <= FD_MAX
            and offset >= 0
            and length >= 0
            and buf_offset >= 0
            and offset + length <= OFFSET_MAX
        ):
            _check_ints(fd, offset, length, buf_offset, f"{op} request {i}")
        if (
            type(buf) is memoryview
            and buf.ndim == 1
            and buf.format == "B"
            and buf.c_contiguous
            and not (writable and buf.readonly)
        ):
            view = buf  # already a flat byte view: no new memoryview
        elif hasattr(buf, "__cuda_array_interface__"):
            append((fd, offset, length, None, buf_offset, buf))
            continue
        else:
            view = host_view(buf, writable=writable, what=f"{op} request {i}")
        if buf_offset + length > view.nbytes:
            raise ValueError(
                f"{op} request {i}: buffer of {view.nbytes} bytes is too small for {length} "
                f"bytes at buffer offset {buf_offset}"
            )
        append((fd, offset, length, view, buf_offset, buf))
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
