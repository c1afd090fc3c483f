"""Reads into GPU memory through KvikIO (GPUDirect Storage where present).

Destinations are objects with ``__cuda_array_interface__`` (cupy arrays, torch CUDA tensors).
KvikIO is imported lazily from the optional extra ``shoal[gpu]``: nothing here is needed to
install or run Shoal on a machine without a GPU.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import importlib
import math
import os
import stat
from typing import Any

from .._errors import ShoalError
from ._requests import fd_name

__all__ = ["GpuSupportMissingError", "is_available", "read_batch", "require"]

INSTALL_HINT = "pip install 'shoal[gpu]'"


class GpuSupportMissingError(ShoalError, ImportError):
    """A GPU destination was given but KvikIO cannot be imported."""


@functools.cache
def _kvikio():
    try:
        return importlib.import_module("kvikio")
    except ImportError as exc:
        return exc


def is_available() -> bool:
    """True when KvikIO can be imported (probed once per process)."""
    return not isinstance(_kvikio(), BaseException)


def require():
    """The ``kvikio`` module, or :class:`GpuSupportMissingError` saying what to install."""
    mod = _kvikio()
    if isinstance(mod, BaseException):
        raise GpuSupportMissingError(
            f"reading into GPU memory needs KvikIO, which is not installed ({mod}); "
            f"install it with: {INSTALL_HINT}"
        ) from mod
    return mod


def _device_range(obj: Any, what: str) -> tuple[int, int]:
    """Device address and size in bytes of a contiguous, writable CUDA array."""
    iface = obj.__cuda_array_interface__
    try:
        shape = tuple(iface["shape"])
        typestr = iface["typestr"]
        address, readonly = iface["data"]
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{what}: malformed __cuda_array_interface__ {iface!r}") from None
    if readonly:
        raise TypeError(f"{what}: destination {type(obj).__name__} is read-only")
    itemsize = int(typestr[2:])
    strides = iface.get("strides")
    if strides is not None:
        expected, step = [], itemsize
        for dim in reversed(shape):
            expected.append(step)
            step *= dim
        if tuple(strides) != tuple(reversed(expected)) and math.prod(shape) > 1:
            raise ValueError(f"{what}: buffer {type(obj).__name__} is not C-contiguous")
    return address, math.prod(shape) * itemsize


class _DeviceSlice:
    """``length`` bytes at ``offset`` of a device array, as a CUDA array KvikIO can fill."""

    def __init__(self, owner: Any, address: int, length: int):
        self._owner = owner  # keeps the device memory alive while KvikIO writes to it
        self.__cuda_array_interface__ = {
            "shape": (length,),
            "typestr": "|u1",
            "data": (address, False),
            "strides": None,
            "version": 3,
        }


def read_batch(requests: list[tuple]) -> list[int | BaseException]:
    """Read checked requests whose destination is GPU memory.

    ``requests`` are ``(fd, file_offset, length, None, buffer_offset, device_array)`` tuples
    (see ``shoal.engine._requests.io_requests``). Every destination is checked before any
    read starts; then all reads are started with ``CuFile.pread`` before any is waited on, so
    KvikIO runs them in parallel. Returns the bytes read per request (fewer than ``length``
    at end of file) or an exception instance.
    """
    kvikio = require()
    addresses = []
    for i, (_, _, length, _, buf_offset, obj) in enumerate(requests):
        what = f"read request {i}"
        address, nbytes = _device_range(obj, what)
        if buf_offset + length > nbytes:
            raise ValueError(
                f"{what}: buffer of {nbytes} bytes is too small for {length} bytes "
                f"at buffer offset {buf_offset}"
            )
        addresses.append(address + buf_offset)
    results: list[int | BaseException | None] = [None] * len(requests)
    files: dict[int, Any] = {}
    pending = []
    try:
        for i, (fd, offset, length, _, _, obj) in enumerate(requests):
            try:
                st = os.fstat(fd)
            except OSError as exc:
                results[i] = OSError(exc.errno, exc.strerror, fd_name(fd))
                continue
            if not stat.S_ISREG(st.st_mode):  # as pread, no offsets on pipes; no size elsewhere
                code = (
                    errno.ESPIPE
                    if stat.S_ISFIFO(st.st_mode) or stat.S_ISSOCK(st.st_mode)
                    else errno.EINVAL
                )
                results[i] = OSError(code, "GPU reads need a regular file", fd_name(fd))
                continue
            size = st.st_size
            count = max(0, min(length, size - offset))  # stop at end of file, as host reads do
            if count == 0:
                results[i] = 0
                continue
            try:
                handle = files.get(fd)
                if handle is None:
                    handle = files[fd] = kvikio.CuFile(f"/proc/self/fd/{fd}", "r")
                future = handle.pread(_DeviceSlice(obj, addresses[i], count), count, offset)
            except Exception as exc:  # KvikIO reports its C++ errors as RuntimeError
                results[i] = _kvikio_error(exc, fd)
                continue
            pending.append((i, fd, future))
        for i, fd, future in pending:
            try:
                results[i] = future.get()
            except Exception as exc:
                results[i] = _kvikio_error(exc, fd)
    finally:
        for i, _, future in pending:
            if results[i] is None:  # leaving early: the device memory is still being written
                with contextlib.suppress(Exception):
                    future.get()
        for handle in files.values():
            with contextlib.suppress(Exception):
                handle.close()
    return results


def _kvikio_error(exc: Exception, fd: int) -> OSError:
    if isinstance(exc, OSError):
        err = OSError(exc.errno, exc.strerror, fd_name(fd))
    else:
        err = OSError(errno.EIO, f"KvikIO read failed: {exc}", fd_name(fd))
    err.__cause__ = exc
    return err
