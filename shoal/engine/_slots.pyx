# cython: language_level=3
"""Lookups in a table of checksummed 64-byte slots that another process writes (open
addressing, linear probing, 16-byte keys): each slot is copied once and believed only if
its copy checks out."""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy


cdef extern from "crc32c.h" nogil:
    uint32_t shoal_crc32c(uint32_t crc, const void *buf, size_t len)

cdef extern from "blake2b.h" nogil:
    void shoal_blake2b(uint8_t *out, size_t outlen, const void *data, size_t inlen)

cdef extern from "Python.h":
    const char *PyUnicode_AsUTF8AndSize(object s, Py_ssize_t *size) except NULL


cdef enum:
    SLOT = 64


cdef tuple _fields(const uint8_t *slot):
    """The fields of a file slot (see ``control._filetable``) after its key: size, tier,
    region, page offset, crc32c, generation, fresh until."""
    cdef uint32_t region, crc, gen, size
    cdef uint64_t offset, fresh
    memcpy(&region, slot + 32, 4)
    memcpy(&crc, slot + 36, 4)
    memcpy(&gen, slot + 40, 4)
    memcpy(&size, slot + 44, 4)
    memcpy(&offset, slot + 48, 8)
    memcpy(&fresh, slot + 56, 8)
    return (size, slot[29], region, offset, crc, gen, fresh)


def blake2b_16(data):
    """The 16-byte BLAKE2b digest of ``data`` (bytes), as ``hashlib.blake2b(data,
    digest_size=16).digest()``."""
    cdef uint8_t out[16]
    cdef const char *p = data
    shoal_blake2b(out, 16, p, len(data))
    return PyBytes_FromStringAndSize(<char *>out, 16)


cdef const uint8_t *_probe(const uint8_t *base, Py_ssize_t header, uint64_t count,
                           int max_probes, int state_at, int empty, int live,
                           const uint8_t *key, uint8_t *slot) noexcept nogil:
    """Copy the slot of ``key`` that checks out into ``slot`` and return it; NULL when
    there is none."""
    cdef uint64_t i
    cdef uint32_t seq, check
    cdef Py_ssize_t at
    cdef int p
    memcpy(&i, key, 8)
    i %= count
    for p in range(max_probes):
        at = header + <Py_ssize_t>(i * SLOT)
        memcpy(slot, base + at, SLOT)
        if memcmp(slot + 8, key, 16) == 0:
            memcpy(&seq, slot, 4)
            memcpy(&check, slot + 4, 4)
            if (slot[state_at] == live and (seq & 1) == 0
                    and check == shoal_crc32c(0, slot + 8, SLOT - 8)):
                return slot
            return NULL
        if slot[state_at] == empty:
            return NULL
        i += 1
        if i == count:
            i = 0
    return NULL


def find_files(table, list paths, Py_ssize_t header, uint64_t count, int max_probes,
               int state_at, int empty, int live):
    """Per Shoal path, the fields of its file slot in ``table`` (a buffer of ``header``
    bytes and ``count`` slots; see ``_fields``), or None.

    A path's key is the 16-byte BLAKE2b digest of its UTF-8 (``surrogateescape``). Its
    slots are probed from the key's first 8 bytes (little-endian) modulo ``count``,
    at most ``max_probes`` of them, until its own or one whose byte ``state_at`` is
    ``empty``. A slot is a 32-bit sequence number (odd while it is written), the crc32c of
    bytes 8 to 64, the key at byte 8, and the rest; it is believed only when, in the one
    copy taken, the sequence is even, the crc32c matches and byte ``state_at`` is ``live``.
    """
    cdef Py_buffer view
    cdef uint8_t slot[SLOT]
    cdef uint8_t key[16]
    cdef const char *text
    cdef Py_ssize_t size
    if not 0 < count < (<uint64_t>1 << 40) or header < 0 or not 0 <= state_at < SLOT:
        raise ValueError("find_files: bad table geometry")
    out = []
    PyObject_GetBuffer(table, &view, PyBUF_SIMPLE)
    try:
        if <uint64_t>view.len < header + SLOT * count:
            raise ValueError(f"find_files: the table has {view.len} bytes, fewer than its slots")
        for path in paths:
            try:
                text = PyUnicode_AsUTF8AndSize(path, &size)
                shoal_blake2b(key, 16, text, size)
            except UnicodeEncodeError:
                encoded = (<str>path).encode("utf-8", "surrogateescape")
                shoal_blake2b(key, 16, <const char *>encoded, len(encoded))
            if _probe(<const uint8_t *>view.buf, header, count, max_probes, state_at, empty,
                      live, key, slot) == NULL:
                out.append(None)
            else:
                out.append(_fields(slot))
    finally:
        PyBuffer_Release(&view)
    return out
