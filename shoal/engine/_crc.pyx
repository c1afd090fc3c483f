# cython: language_level=3
"""crc32c over any buffer, computed without the GIL."""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from libc.stdint cimport uint32_t


cdef extern from "crc32c.h" nogil:
    uint32_t shoal_crc32c(uint32_t crc, const void *buf, size_t len)
    uint32_t shoal_crc32c_portable(uint32_t crc, const void *buf, size_t len)
    int shoal_crc32c_hw()


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


def crc32c_portable(data, unsigned int value=0):
    """Like :func:`crc32c` but always with the table kernel, so tests can check it too."""
    cdef Py_buffer view
    cdef uint32_t out
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        with nogil:
            out = shoal_crc32c_portable(value, view.buf, <size_t>view.len)
    finally:
        PyBuffer_Release(&view)
    return out


def hardware():
    """True when the SSE4.2 kernel is in use."""
    return bool(shoal_crc32c_hw())
