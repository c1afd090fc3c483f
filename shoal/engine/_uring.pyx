# cython: language_level=3
"""io_uring backend: a thin layer over ``src/uring_engine.c``.

Each thread gets its own ring, made on first use, so threads can submit at once. Buffers are
pinned (``Py_buffer``) for as long as the kernel may write to them.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING
from libc.stdint cimport int64_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free

import os
import threading

from .._errors import PageCorruptedError
from ._requests import fd_name

__all__ = ["UringBackend", "probe"]


cdef extern from "<fcntl.h>":
    int AT_FDCWD

cdef extern from "<unistd.h>" nogil:
    int getpid()

cdef extern from "uring_engine.h" nogil:
    ctypedef struct shoal_ring:
        pass

    ctypedef struct shoal_io:
        int fd
        int check
        uint64_t offset
        uint64_t length
        unsigned char *buf
        uint32_t expected
        int64_t result
        uint32_t crc
        int corrupt

    ctypedef struct shoal_file:
        const char *path
        unsigned char *buf
        uint64_t capacity
        int64_t result
        int too_big
        int64_t size

    int shoal_uring_probe()
    int shoal_ring_open(shoal_ring **out)
    void shoal_ring_close(shoal_ring *ring)
    int shoal_ring_pid(const shoal_ring *ring)
    int shoal_uring_rw(shoal_ring *ring, shoal_io *ios, size_t n, int write, int direct)
    int shoal_uring_read_files(shoal_ring *ring, shoal_file *files, size_t n, int dir_fd)


def probe():
    """True when this process can set up an io_uring with every operation the engine uses
    (false under seccomp filters, with ENOSYS or EPERM, or on kernels that are too old)."""
    return shoal_uring_probe() == 0


cdef class _Ring:
    """One thread's ring."""

    cdef shoal_ring *ptr

    def __cinit__(self):
        cdef int rc = shoal_ring_open(&self.ptr)
        if rc < 0:
            raise OSError(-rc, f"cannot set up an io_uring: {os.strerror(-rc)}")

    cdef void abandon(self):
        # Requests may still be in flight: keep the ring (and its kernel state) forever.
        self.ptr = NULL

    def __dealloc__(self):
        if self.ptr is not NULL:
            shoal_ring_close(self.ptr)


_local = threading.local()


cdef _Ring _thread_ring():
    cdef _Ring ring = getattr(_local, "ring", None)
    # A forked child inherits its parent's ring memory but must not share the ring.
    if ring is None or ring.ptr is NULL or shoal_ring_pid(ring.ptr) != getpid():
        ring = _Ring()
        _local.ring = ring
    return ring


cdef _ring_failed(_Ring ring):
    ring.abandon()
    _local.ring = None


cdef object _io_error(int64_t res, int fd):
    cdef int err = <int>-res
    return OSError(err, os.strerror(err), fd_name(fd))


cdef list _rw(list requests, bint write, bint direct, object checksums):
    cdef Py_ssize_t n = len(requests), i, pinned = 0
    cdef shoal_io *ios = <shoal_io *>calloc(n or 1, sizeof(shoal_io))
    cdef Py_buffer *bufs = <Py_buffer *>calloc(n or 1, sizeof(Py_buffer))
    cdef int rc = 0
    cdef int flags = PyBUF_SIMPLE if write else PyBUF_WRITABLE
    cdef _Ring ring
    cdef shoal_io *io
    cdef list results
    if ios is NULL or bufs is NULL:
        free(ios)
        free(bufs)
        raise MemoryError()
    try:
        for i in range(n):
            fd, offset, length, view, buf_offset, _ = requests[i]
            io = &ios[i]
            io.fd = fd
            io.offset = offset
            io.length = length
            PyObject_GetBuffer(view, &bufs[i], flags)
            pinned += 1
            if buf_offset + length > bufs[i].len:  # checked by the caller; kept as a guard
                raise ValueError(f"request {i}: buffer of {bufs[i].len} bytes is too small")
            io.buf = <unsigned char *>bufs[i].buf + <Py_ssize_t>buf_offset
            if checksums is not None and checksums[i] is not None:
                io.check = 1
                io.expected = checksums[i]
        ring = _thread_ring()
        with nogil:
            rc = shoal_uring_rw(ring.ptr, ios, <size_t>n, write, direct)
        if rc < 0:
            _ring_failed(ring)
        results = []
        for i in range(n):
            io = &ios[i]
            if io.result < 0:
                results.append(_io_error(io.result, io.fd))
            elif io.corrupt:
                results.append(PageCorruptedError(
                    f"crc32c mismatch: {io.result} bytes at offset {io.offset} read back as "
                    f"{io.crc:#010x}, expected {io.expected:#010x}",
                    fd_name(io.fd),
                ))
            else:
                results.append(io.result)
        return results
    finally:
        # After a ring failure the kernel may still write to the buffers: keep them pinned.
        if rc >= 0:
            for i in range(pinned):
                PyBuffer_Release(&bufs[i])
            free(bufs)
        free(ios)


cdef list _read_files(list paths, list views, object dir_fd):
    cdef Py_ssize_t n = len(paths), i, pinned = 0
    cdef shoal_file *files = <shoal_file *>calloc(n or 1, sizeof(shoal_file))
    cdef Py_buffer *bufs = <Py_buffer *>calloc(n or 1, sizeof(Py_buffer))
    cdef int rc = 0
    cdef int dfd = AT_FDCWD if dir_fd is None else dir_fd
    cdef _Ring ring
    cdef shoal_file *f
    cdef bytes path
    cdef list results
    if files is NULL or bufs is NULL:
        free(files)
        free(bufs)
        raise MemoryError()
    try:
        for i in range(n):
            path = paths[i]
            f = &files[i]
            f.path = PyBytes_AS_STRING(path)  # kept alive by `paths`
            PyObject_GetBuffer(views[i], &bufs[i], PyBUF_WRITABLE)
            pinned += 1
            f.buf = <unsigned char *>bufs[i].buf
            f.capacity = <uint64_t>bufs[i].len
        ring = _thread_ring()
        with nogil:
            rc = shoal_uring_read_files(ring.ptr, files, <size_t>n, dfd)
        if rc < 0:
            _ring_failed(ring)
        results = []
        for i in range(n):
            f = &files[i]
            if f.too_big or f.result < 0:
                name = os.fsdecode(paths[i])
            if f.too_big:
                # The size is unknown only if the file shrank or vanished since the read.
                size = f"{f.size}" if f.size > <int64_t>f.capacity else f"more than {f.capacity}"
                results.append(ValueError(
                    f"{name}: file of {size} bytes does not fit in a buffer of {f.capacity} bytes"
                ))
            elif f.result < 0:
                err = <int>-f.result
                results.append(OSError(err, os.strerror(err), name))
            else:
                results.append(f.result)
        return results
    finally:
        if rc >= 0:
            for i in range(pinned):
                PyBuffer_Release(&bufs[i])
            free(bufs)
        free(files)


class UringBackend:
    """Submits each batch to the calling thread's io_uring with the GIL released."""

    name = "io_uring"

    def read_batch(self, requests, direct, checksums):
        return _rw(list(requests), False, direct, checksums)

    def write_batch(self, requests):
        return _rw(list(requests), True, False, None)

    def read_files(self, paths, views, dir_fd):
        return _read_files(list(paths), list(views), dir_fd)
