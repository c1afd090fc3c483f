# cython: language_level=3
"""Lookups in a table of checksummed 64-byte slots that another process writes (open
addressing, linear probing, 16-byte keys): each slot is copied once and believed only if
its copy checks out."""

from cpython.buffer cimport PyBUF_SIMPLE, PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
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


cdef int _check_geometry(str name, Py_ssize_t length, Py_ssize_t header, uint64_t count,
                         int state_at) except -1:
    """Refuse a table geometry that does not fit ``length`` bytes."""
    if not 0 < count < (<uint64_t>1 << 40) or header < 0 or not 0 <= state_at < SLOT:
        raise ValueError(f"{name}: bad table geometry")
    if <uint64_t>length < header + SLOT * count:
        raise ValueError(f"{name}: the table has {length} bytes, fewer than its slots")
    return 0


cdef int _path_key(path, uint8_t *key) except -1:
    """The 16-byte key of a Shoal path (a str): BLAKE2b of its UTF-8, ``surrogateescape``."""
    cdef const char *text
    cdef Py_ssize_t size
    try:
        text = PyUnicode_AsUTF8AndSize(path, &size)
        shoal_blake2b(key, 16, text, size)
    except UnicodeEncodeError:
        encoded = (<str>path).encode("utf-8", "surrogateescape")
        shoal_blake2b(key, 16, <const char *>encoded, len(encoded))
    return 0


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
    out = []
    PyObject_GetBuffer(table, &view, PyBUF_SIMPLE)
    try:
        _check_geometry("find_files", view.len, header, count, state_at)
        for path in paths:
            _path_key(path, key)
            if _probe(<const uint8_t *>view.buf, header, count, max_probes, state_at, empty,
                      live, key, slot) == NULL:
                out.append(None)
            else:
                out.append(_fields(slot))
    finally:
        PyBuffer_Release(&view)
    return out


cdef extern from *:
    """
    static inline void shoal_store32_release(void *p, uint32_t v) {
        __atomic_store_n((uint32_t *)p, v, __ATOMIC_RELEASE);
    }
    static inline void shoal_fence_release(void) { __atomic_thread_fence(__ATOMIC_RELEASE); }
    """
    void shoal_store32_release(void *p, uint32_t v) nogil
    void shoal_fence_release() nogil


def put_files(table, list paths, list bodies, Py_ssize_t header, uint64_t count,
              int max_probes, int state_at, int empty):
    """Write file slots into ``table`` (writable; geometry as for :func:`find_files`), the
    writer's side of the slots that :func:`find_files` reads: per path, its 64-byte slot
    ``body`` (bytes 24 to 64 are the slot's fields; its first 24 bytes are made here) goes
    to the slot of the path's key, or else to the empty slot that ends its probe path.

    Each slot is rewritten as readers in other processes expect it: its sequence number
    made odd, the key and fields written, their crc32c, then the sequence made even.

    Returns, per path: 1 when it took an empty slot, 0 when it replaced its own slot, -1
    when the probe limit was reached first (nothing written).
    """
    cdef Py_buffer view
    cdef uint8_t key[16]
    cdef Py_ssize_t k, n = len(paths)
    if len(bodies) != n:
        raise ValueError(f"put_files: {n} paths for {len(bodies)} bodies")
    for body in bodies:
        if not isinstance(body, bytes) or len(<bytes>body) != SLOT:
            raise ValueError("put_files: every body must be 64 bytes")
    out = []
    PyObject_GetBuffer(table, &view, PyBUF_WRITABLE)
    try:
        _check_geometry("put_files", view.len, header, count, state_at)
        for k in range(n):
            _path_key(paths[k], key)
            out.append(_put_slot(<uint8_t *>view.buf, header, count, max_probes, state_at,
                                 empty, key, <const uint8_t *>(<bytes>bodies[k]) + 24))
    finally:
        PyBuffer_Release(&view)
    return out


def copy_slots(source, table, Py_ssize_t header, uint64_t count, int max_probes,
               int state_at, int empty, int live):
    """Put every live slot of ``source`` (a buffer of whole 64-byte slots, such as the
    slots of a table about to be replaced, copied out of it) into ``table`` (geometry as
    for :func:`find_files`) as :func:`put_files` puts a slot, its key taken from the slot
    itself. How many took a slot (a key that finds no slot within ``max_probes`` is left
    out)."""
    cdef Py_buffer src, view
    cdef const uint8_t *slot
    cdef Py_ssize_t at
    cdef long placed = 0
    PyObject_GetBuffer(source, &src, PyBUF_SIMPLE)
    try:
        if src.len % SLOT:
            raise ValueError("copy_slots: the source is not made of whole slots")
        PyObject_GetBuffer(table, &view, PyBUF_WRITABLE)
        try:
            _check_geometry("copy_slots", view.len, header, count, state_at)
            for at in range(0, src.len, SLOT):
                slot = <const uint8_t *>src.buf + at
                if slot[state_at] == live:
                    placed += _put_slot(<uint8_t *>view.buf, header, count, max_probes,
                                        state_at, empty, slot + 8, slot + 24) == 1
        finally:
            PyBuffer_Release(&view)
    finally:
        PyBuffer_Release(&src)
    return placed


cdef int _put_slot(uint8_t *base, Py_ssize_t header, uint64_t count, int max_probes,
                   int state_at, int empty, const uint8_t *key,
                   const uint8_t *fields) noexcept nogil:
    """Write the slot of ``key`` (16 bytes) with ``fields`` (its last 40 bytes), as
    :func:`put_files` describes: 1 (an empty slot taken), 0 (its own replaced) or -1."""
    cdef uint64_t i
    cdef uint32_t seq, check
    cdef uint8_t *slot = NULL
    cdef int p, fresh
    memcpy(&i, key, 8)
    i %= count
    for p in range(max_probes):
        slot = base + header + <Py_ssize_t>(i * SLOT)
        if slot[state_at] == empty or memcmp(slot + 8, key, 16) == 0:
            break
        slot = NULL
        i += 1
        if i == count:
            i = 0
    if slot == NULL:
        return -1
    fresh = slot[state_at] == empty
    memcpy(&seq, slot, 4)
    seq &= ~(<uint32_t>1)
    shoal_store32_release(slot, seq + 1)  # odd while written
    shoal_fence_release()
    memcpy(slot + 8, key, 16)
    memcpy(slot + 24, fields, SLOT - 24)
    check = shoal_crc32c(0, slot + 8, SLOT - 8)
    memcpy(slot + 4, &check, 4)
    shoal_store32_release(slot, seq + 2)
    return fresh
