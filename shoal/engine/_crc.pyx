# cython: language_level=3
"""crc32c over any buffer, computed without the GIL."""

from cpython.buffer cimport PyBUF_SIMPLE, PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.exc cimport PyErr_SetFromErrno
from libc.stdlib cimport calloc, free
from libc.stdint cimport uint32_t


cdef extern from "crc32c.h" nogil:
    int SHOAL_CRC32C_TABLE
    int SHOAL_CRC32C_STREAMS
    int SHOAL_CRC32C_FOLD
    uint32_t shoal_crc32c(uint32_t crc, const void *buf, size_t len)
    int shoal_crc32c_kernels()
    int shoal_crc32c_with(int kernel, uint32_t *crc, const void *buf, size_t len)


# Buffers from this size on are checksummed with the GIL released (some microseconds of
# work, longer than the wait for the GIL again when other threads hold it).
cdef enum:
    _NOGIL_BYTES = 256 * 1024

KERNELS = {
    "table": SHOAL_CRC32C_TABLE,
    "sse4.2": SHOAL_CRC32C_STREAMS,
    "vpclmulqdq": SHOAL_CRC32C_FOLD,
}


def crc32c(data, unsigned int value=0):
    """Return the crc32c of ``data`` (any contiguous buffer), continuing from ``value``."""
    cdef Py_buffer view
    cdef uint32_t out
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        if view.len < _NOGIL_BYTES:
            out = shoal_crc32c(value, view.buf, <size_t>view.len)
        else:
            with nogil:
                out = shoal_crc32c(value, view.buf, <size_t>view.len)
    finally:
        PyBuffer_Release(&view)
    return out


def kernels():
    """Names of the kernels this CPU can run, slowest first; the last one is used."""
    cdef int have = shoal_crc32c_kernels()
    return [name for name, bit in KERNELS.items() if have & bit]


def crc32c_with(kernel, data, unsigned int value=0):
    """Like :func:`crc32c` with one named kernel, so tests can check each of them."""
    cdef Py_buffer view
    cdef uint32_t out = value
    cdef int rc
    cdef int bit = KERNELS.get(kernel, 0)
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        with nogil:
            rc = shoal_crc32c_with(bit, &out, view.buf, <size_t>view.len)
    finally:
        PyBuffer_Release(&view)
    if rc < 0:
        raise ValueError(f"crc32c kernel {kernel!r} is not available on this CPU")
    return out


def hardware():
    """True when a hardware kernel (SSE4.2 or VPCLMULQDQ) is in use."""
    return shoal_crc32c_kernels() != SHOAL_CRC32C_TABLE


cdef extern from "crc32c.h" nogil:
    int shoal_copy_guard()
    int shoal_copy_crc32c_guarded(uint32_t *crc, void *dst, const void *src, size_t len)


cdef int copy_guard() except -1:
    """``shoal_copy_guard()``: OSError when the handler cannot be installed."""
    if shoal_copy_guard() < 0:
        PyErr_SetFromErrno(OSError)
    return 0


cdef int copy_crc32c_guarded(uint32_t *crc, void *dst, const void *src,
                             size_t length) noexcept nogil:
    """``shoal_copy_crc32c_guarded()``, after :func:`copy_guard` in the same batch."""
    return shoal_copy_crc32c_guarded(crc, dst, src, length)


cdef enum:
    COPY_MISMATCH = -1
    COPY_FAULTED = -2

MISMATCH = COPY_MISMATCH
"""Result of a :func:`copy_verify_many` item whose bytes do not match their crc32c."""
FAULTED = COPY_FAULTED
"""Result of a :func:`copy_verify_many` item whose source faulted (SIGBUS) while read: a
mapped file truncated under the mapping, or a failing filesystem."""


cdef extern from "<sys/vfs.h>" nogil:
    struct statfs:
        long f_type
    int fstatfs(int fd, statfs *buf)


cdef unsigned long TMPFS_MAGIC = 0x01021994
cdef unsigned long RAMFS_MAGIC = 0x858458f6


def memory_backed(int fd):
    """True when ``fd`` is a file in memory (tmpfs or ramfs): mapping it never waits on a
    disk."""
    cdef statfs sfs
    if fstatfs(fd, &sfs) < 0:
        return False
    return <unsigned long>sfs.f_type == TMPFS_MAGIC or <unsigned long>sfs.f_type == RAMFS_MAGIC


def copy_verify_many(list items):
    """Copy pages out of buffers (mapped region files) and check each one's crc32c as it
    is copied, without the GIL.

    ``items`` are ``(src, offset, length, dst, crc)``: ``length`` bytes of ``src`` from
    ``offset`` go to the start of the writable buffer ``dst``. Returns, per item, ``length``
    when the bytes match ``crc``, :data:`MISMATCH` when they do not, and :data:`FAULTED`
    when reading ``src`` raised SIGBUS (a mapped file that got shorter than the mapping):
    that item fails, the process goes on. A range outside ``src`` or a ``dst`` smaller than
    ``length`` raises ValueError before anything is copied.

    The first call installs a process-wide SIGBUS handler; a SIGBUS outside these copies
    still reaches the handler installed before it (or the default action), and each call
    puts it back in front of a handler installed since.
    """
    cdef Py_ssize_t n = len(items)
    cdef Py_ssize_t i, held = 0
    cdef Py_buffer *srcs = <Py_buffer *>calloc(n if n else 1, sizeof(Py_buffer))
    cdef Py_buffer *dsts = <Py_buffer *>calloc(n if n else 1, sizeof(Py_buffer))
    cdef Py_ssize_t *offs = <Py_ssize_t *>calloc(n if n else 1, sizeof(Py_ssize_t))
    cdef Py_ssize_t *lens = <Py_ssize_t *>calloc(n if n else 1, sizeof(Py_ssize_t))
    cdef uint32_t *crcs = <uint32_t *>calloc(n if n else 1, sizeof(uint32_t))
    cdef signed char *ok = <signed char *>calloc(n if n else 1, 1)
    cdef Py_ssize_t offset, length
    cdef uint32_t got
    try:
        if not (srcs and dsts and offs and lens and crcs and ok):
            raise MemoryError()
        for i in range(n):
            src, offset, length, dst, crc = items[i]
            if offset < 0 or length < 0:
                raise ValueError(f"item {i}: negative offset or length")
            PyObject_GetBuffer(src, &srcs[i], PyBUF_SIMPLE)
            try:
                PyObject_GetBuffer(dst, &dsts[i], PyBUF_SIMPLE | PyBUF_WRITABLE)
            except BaseException:
                PyBuffer_Release(&srcs[i])
                raise
            held += 1
            if offset + length > srcs[i].len:
                raise ValueError(
                    f"item {i}: bytes [{offset}, {offset + length}) are outside the source "
                    f"of {srcs[i].len} bytes"
                )
            if length > dsts[i].len:
                raise ValueError(
                    f"item {i}: buffer of {dsts[i].len} bytes is smaller than {length} bytes"
                )
            offs[i] = offset
            lens[i] = length
            crcs[i] = crc
        copy_guard()
        with nogil:
            for i in range(n):
                got = 0
                if shoal_copy_crc32c_guarded(
                    &got, dsts[i].buf, <const char *>srcs[i].buf + offs[i], <size_t>lens[i]
                ) < 0:
                    ok[i] = COPY_FAULTED
                else:
                    ok[i] = 1 if got == crcs[i] else COPY_MISMATCH
        return [lens[i] if ok[i] == 1 else ok[i] for i in range(n)]
    finally:
        for i in range(held):
            PyBuffer_Release(&srcs[i])
            PyBuffer_Release(&dsts[i])
        free(srcs)
        free(dsts)
        free(offs)
        free(lens)
        free(crcs)
        free(ok)
