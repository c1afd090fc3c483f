# cython: language_level=3
"""crc32c over any buffer, computed without the GIL."""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from libc.stdint cimport uint32_t


cdef extern from "crc32c.h" nogil:
    int SHOAL_CRC32C_TABLE
    int SHOAL_CRC32C_STREAMS
    int SHOAL_CRC32C_FOLD
    uint32_t shoal_crc32c(uint32_t crc, const void *buf, size_t len)
    int shoal_crc32c_kernels()
    int shoal_crc32c_with(int kernel, uint32_t *crc, const void *buf, size_t len)


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
