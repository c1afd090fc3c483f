# cython: language_level=3
"""Lookups in a table of checksummed 64-byte slots that another process writes (open
addressing, linear probing, 16-byte keys): each slot is copied once and believed only if
its copy checks out. And the reads of whole small files through such a table, out of
mapped region files, with no Python per file (``read_published``)."""

from cpython.buffer cimport (
    PyBUF_C_CONTIGUOUS, PyBUF_SIMPLE, PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer,
)
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.exc cimport PyErr_Clear
from cpython.long cimport PyLong_AsLongLong, PyLong_CheckExact
from cpython.unicode cimport PyUnicode_CheckExact
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcmp, memcpy, memset
from posix.types cimport off_t
from posix.unistd cimport pread

from shoal.engine._crc cimport copy_crc32c_guarded, copy_guard


cdef extern from "crc32c.h" nogil:
    uint32_t shoal_crc32c(uint32_t crc, const void *buf, size_t len)

cdef extern from "blake2b.h" nogil:
    void shoal_blake2b(uint8_t *out, size_t outlen, const void *data, size_t inlen)

cdef extern from "Python.h":
    const char *PyUnicode_AsUTF8AndSize(object s, Py_ssize_t *size) except NULL
    bint PyUnicode_IS_ASCII(object s)


cdef extern from *:
    """
    static inline void shoal_store32_release(void *p, uint32_t v) {
        __atomic_store_n((uint32_t *)p, v, __ATOMIC_RELEASE);
    }
    static inline void shoal_fence_release(void) { __atomic_thread_fence(__ATOMIC_RELEASE); }
    static inline void shoal_fence_acquire(void) { __atomic_thread_fence(__ATOMIC_ACQUIRE); }
    """
    void shoal_store32_release(void *p, uint32_t v) nogil
    void shoal_fence_release() nogil
    void shoal_fence_acquire() nogil


cdef enum:
    SLOT = 64
    TIERS = 3  # tier codes 0, 1, 2
    NOGIL_BYTES = 256 * 1024  # pages from this size on are copied with the GIL released


cdef struct Fields:
    # The fields of a file slot (see ``control._filetable``) after its key.
    uint32_t size
    int tier
    uint32_t region
    uint64_t offset  # of the page in its region file
    uint32_t crc
    uint32_t generation
    uint64_t fresh  # until when (monotonic ns)


cdef void _decode(const uint8_t *slot, Fields *f) noexcept nogil:
    f.tier = slot[29]
    memcpy(&f.region, slot + 32, 4)
    memcpy(&f.crc, slot + 36, 4)
    memcpy(&f.generation, slot + 40, 4)
    memcpy(&f.size, slot + 44, 4)
    memcpy(&f.offset, slot + 48, 8)
    memcpy(&f.fresh, slot + 56, 8)


cdef tuple _fields(const uint8_t *slot):
    """The fields of a file slot: size, tier, region, page offset, crc32c, generation,
    fresh until."""
    cdef Fields f
    _decode(slot, &f)
    return (f.size, f.tier, f.region, f.offset, f.crc, f.generation, f.fresh)


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


cdef struct _Put:
    # One slot for ``put_files`` to write: its path's UTF-8 and its fields.
    const char *text
    Py_ssize_t size
    const uint8_t *fields
    int result


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


cdef bint _canonical(const char *p, Py_ssize_t n, Py_ssize_t max_bytes,
                     int max_components) noexcept nogil:
    """True for a path (ASCII) already in the canonical form of ``normalize_path``:
    absolute, no empty, ``.`` or ``..`` component, no trailing ``/``, no NUL, within the
    limits; such a path is its own normalised form."""
    cdef Py_ssize_t k
    cdef int slashes = 0
    if n < 2 or n > max_bytes or p[0] != b'/' or p[n - 1] == b'/':
        return False
    for k in range(n):
        if p[k] == 0:
            return False
        if p[k] == b'/':
            slashes += 1
            if p[k + 1] == b'/' or p[k + 1] == b'.':
                return False
    return slashes <= max_components


cdef class _Region:
    """The region file a run of items is read from (one held at a time): its mapping, or
    its descriptor where it is on a disk (read with ``pread``, through the page cache)."""
    cdef Py_buffer view
    cdef bint held
    cdef int fd  # -1 when ``view`` holds the mapping
    cdef uint64_t code
    cdef object key

    cdef int take(self, dict maps, uint64_t code) except -1:
        """Hold the mapping or descriptor of ``code``; 0 when ``maps`` has neither."""
        self.release()
        self.code = code
        self.key = code
        mapped = maps.get(self.key)
        if mapped is None:
            return 0
        if type(mapped) is int:
            self.fd = mapped
        else:
            PyObject_GetBuffer(mapped, &self.view, PyBUF_SIMPLE)
            self.fd = -1
        self.held = True
        return 1

    cdef void release(self):
        if self.held and self.fd < 0:
            PyBuffer_Release(&self.view)
        self.held = False

    def __dealloc__(self):
        self.release()


cdef int _read_page(int fd, const char *mapped, void *dst, uint64_t offset, uint32_t size,
                    uint32_t *crc) noexcept nogil:
    """Copy ``size`` bytes at ``offset`` of a region file into ``dst`` (out of its mapping,
    or with ``pread`` from ``fd`` when it has none: ``fd`` >= 0), their crc32c into
    ``*crc``: 0, or -1 (a fault, an error or a short read: the caller's read reports it)."""
    cdef ssize_t got
    crc[0] = 0
    if fd < 0:
        return copy_crc32c_guarded(crc, dst, mapped + offset, size)
    got = pread(fd, dst, size, <off_t>offset)
    if got != <ssize_t>size:
        return -1
    crc[0] = shoal_crc32c(0, dst, size)
    return 0


def read_published(table, Py_ssize_t header, uint64_t count, int max_probes, int state_at,
                   int empty, int live, items, list out, Py_ssize_t limit, dict maps,
                   list generations, uint64_t now_ns, Py_ssize_t max_path,
                   int max_components, dict counts, set lacking):
    """Read whole small files that a table of file slots (geometry as for
    :func:`find_files`) holds, straight from the region files, checked: the reads of
    ``Client.read_many_into`` that need no Python per file.

    ``items`` (a list) are ``(buffer, path)`` or ``(buffer, path, offset)``. From the
    first, while each item is one this function can take whole (a tuple or list of two or
    three; a writable C-contiguous host buffer, not one that also offers
    ``__cuda_array_interface__``; a canonical ASCII path; an int offset >= 0), and
    before ``limit``, an item whose ``out`` entry is None is read when the table holds its
    file live and fresh (its slot's time past ``now_ns``) and its page is the whole read
    (offset 0, a buffer of at least the file's size) or nothing is read (offset at or past
    the end): ``out[i]`` becomes the bytes read. Every other item is left as it is.

    A page is read only from ``maps[key]`` (``key`` the int ``tier code << 32 | region``):
    a buffer, the mapped region file, copied out of; or an int, a descriptor of the region
    file, read with ``pread``. It is read between two looks at the region's generation in
    ``generations[tier code]`` (a buffer of little-endian uint64 per region, or None) that
    both match the slot's, and its bytes must match the slot's crc32c; a region with
    neither, no generation table, or a mapping too short for the page, has its key added
    to ``lacking``. Pages read are counted per key in ``counts``.

    Returns the index of the first item not taken whole (``len(items)`` or ``limit``
    when all were): what the caller checks and reads its own way, from there on.
    """
    cdef Py_buffer tview, dst
    cdef Py_buffer gens[TIERS]
    cdef bint has_gen[TIERS]
    cdef _Region mapped = _Region()
    cdef uint8_t slot[SLOT]
    cdef uint8_t key[16]
    cdef const uint8_t *got
    cdef const char *text
    cdef const char *base
    cdef Py_ssize_t i, n_items = len(items), size_text, offset
    cdef Fields f
    cdef uint32_t check
    cdef uint64_t before, after, want
    cdef int t, fault
    cdef bint guarded = False
    cdef long run = 0
    cdef object run_key = None, host_type = None
    if limit > n_items:
        limit = n_items
    if len(out) < limit or len(generations) != TIERS:
        raise ValueError("read_published: out too short, or not one generation table a tier")
    for t in range(TIERS):
        has_gen[t] = False
    PyObject_GetBuffer(table, &tview, PyBUF_SIMPLE)
    try:
        _check_geometry("read_published", tview.len, header, count, state_at)
        for t in range(TIERS):
            if generations[t] is not None:
                PyObject_GetBuffer(generations[t], &gens[t], PyBUF_SIMPLE)
                has_gen[t] = True
        for i in range(limit):
            item = items[i]
            if not (type(item) is tuple or type(item) is list) or not 2 <= len(item) <= 3:
                return i
            path = item[1]
            offset = 0
            if len(item) == 3:
                o = item[2]
                if not PyLong_CheckExact(o):
                    return i
                try:
                    offset = PyLong_AsLongLong(o)
                except OverflowError:
                    PyErr_Clear()
                    return i
                if offset < 0:
                    return i
            if not PyUnicode_CheckExact(path) or not PyUnicode_IS_ASCII(path):
                return i
            text = PyUnicode_AsUTF8AndSize(path, &size_text)
            if not _canonical(text, size_text, max_path, max_components):
                return i
            buf = item[0]
            if type(buf) is not host_type and type(buf) is not bytearray:
                if type(buf) is not memoryview and hasattr(buf, "__cuda_array_interface__"):
                    return i  # refused by the caller's check, as a GPU buffer
                host_type = type(buf)
            try:
                PyObject_GetBuffer(buf, &dst, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS)
            except Exception:
                PyErr_Clear()
                return i
            try:
                if out[i] is not None:
                    continue
                shoal_blake2b(key, 16, text, size_text)
                got = _probe(<const uint8_t *>tview.buf, header, count, max_probes, state_at,
                             empty, live, key, slot)
                if got == NULL:
                    continue
                _decode(slot, &f)
                if f.fresh <= now_ns or f.tier >= TIERS:
                    continue
                if offset >= f.size:
                    out[i] = 0
                    continue
                if offset != 0 or dst.len < f.size:
                    continue  # part of the page: the caller's read checks the whole
                want = (<uint64_t>f.tier << 32) | f.region
                if not mapped.held or mapped.code != want:
                    if not mapped.take(maps, want):
                        lacking.add(mapped.key)
                        continue
                if not has_gen[f.tier]:
                    lacking.add(mapped.key)  # asked for with the region's descriptor
                    continue
                if mapped.fd < 0 and (f.offset > <uint64_t>mapped.view.len
                                      or f.size > mapped.view.len - f.offset):
                    lacking.add(mapped.key)  # the file grew since it was mapped
                    continue
                if <uint64_t>gens[f.tier].len < (<uint64_t>f.region + 1) * 8:
                    continue
                memcpy(&before, <const char *>gens[f.tier].buf + <Py_ssize_t>f.region * 8, 8)
                if before != f.generation:
                    continue  # reclaimed since the slot was written
                if not guarded and mapped.fd < 0:
                    copy_guard()
                    guarded = True
                base = <const char *>mapped.view.buf if mapped.fd < 0 else NULL
                if mapped.fd < 0 and f.size < NOGIL_BYTES:  # a short copy out of memory
                    fault = _read_page(mapped.fd, base, dst.buf, f.offset, f.size, &check)
                else:  # a long copy, or a read that may wait for the disk
                    with nogil:
                        fault = _read_page(mapped.fd, base, dst.buf, f.offset, f.size, &check)
                shoal_fence_acquire()  # the page's bytes are read before the generation
                memcpy(&after, <const char *>gens[f.tier].buf + <Py_ssize_t>f.region * 8, 8)
                if fault < 0 or check != f.crc or after != f.generation:
                    continue  # the caller's read tells what is wrong, or asks the worker
                out[i] = f.size
                if run_key is not mapped.key:
                    if run:
                        counts[run_key] = counts.get(run_key, 0) + run
                    run = 0
                    run_key = mapped.key
                run += 1
            finally:
                PyBuffer_Release(&dst)
        return limit
    finally:
        if run:
            counts[run_key] = counts.get(run_key, 0) + run
        mapped.release()
        for t in range(TIERS):
            if has_gen[t]:
                PyBuffer_Release(&gens[t])
        PyBuffer_Release(&tview)


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
    cdef Py_ssize_t k, n = len(paths), size
    cdef _Put *puts
    if len(bodies) != n:
        raise ValueError(f"put_files: {n} paths for {len(bodies)} bodies")
    for body in bodies:
        if not isinstance(body, bytes) or len(<bytes>body) != SLOT:
            raise ValueError("put_files: every body must be 64 bytes")
    puts = <_Put *>malloc((n or 1) * sizeof(_Put))
    if puts == NULL:
        raise MemoryError()
    # What the slots are made of, alive while the GIL is let go whatever becomes of the
    # caller's lists: the paths, the bodies, the UTF-8 of paths with surrogates.
    cdef tuple held_paths = tuple(paths), held_bodies = tuple(bodies)
    kept = []
    try:
        for k in range(n):  # the paths' UTF-8: their str's own, cached by Python
            path = held_paths[k]
            if not PyUnicode_CheckExact(path):
                raise TypeError(f"put_files: a path must be a str, got {type(path).__name__}")
            try:
                puts[k].text = PyUnicode_AsUTF8AndSize(path, &size)
            except UnicodeEncodeError:
                encoded = (<str>path).encode("utf-8", "surrogateescape")
                kept.append(encoded)
                puts[k].text = <const char *>encoded
                size = len(encoded)
            puts[k].size = size
            puts[k].fields = <const uint8_t *>(<bytes>held_bodies[k]) + 24
        PyObject_GetBuffer(table, &view, PyBUF_WRITABLE)
        try:
            _check_geometry("put_files", view.len, header, count, state_at)
            with nogil:  # hashing and writing the slots: some 0.3 us a file
                for k in range(n):
                    shoal_blake2b(key, 16, puts[k].text, puts[k].size)
                    puts[k].result = _put_slot(<uint8_t *>view.buf, header, count,
                                               max_probes, state_at, empty, key,
                                               puts[k].fields)
        finally:
            PyBuffer_Release(&view)
        return [puts[k].result for k in range(n)]
    finally:
        free(puts)


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


def located_bodies(list locations, list fresh, dict tier_codes, int live):
    """The 64-byte slot bodies (keys left to :func:`put_files`) of files whose one page is
    at ``locations`` (page locations: ``tier``, ``region``, ``crc32c``, ``generation``,
    ``length``, ``offset``), fresh until ``fresh`` (monotonic ns) each, in state ``live``:
    None for one whose numbers do not fit a slot."""
    cdef Py_ssize_t k, n = len(locations)
    cdef list out = [None] * n
    cdef unsigned long long size, region, generation, offset, until
    cdef uint32_t v32
    cdef uint8_t *p
    cdef bytes body
    if len(fresh) != n:
        raise ValueError(f"located_bodies: {n} locations, {len(fresh)} times")
    for k in range(n):
        loc = locations[k]
        size, region, generation = loc.length, loc.region, loc.generation
        offset, until = loc.offset, fresh[k]
        if not (size < 4294967296 and region < 4294967296 and generation < 4294967296
                and offset < 9223372036854775808 and 0 < until < 9223372036854775808):
            continue
        body = PyBytes_FromStringAndSize(NULL, SLOT)
        p = <uint8_t *><char *>body
        memset(p, 0, 32)
        p[28] = <uint8_t>live
        p[29] = <uint8_t>tier_codes[loc.tier]
        v32 = <uint32_t>region
        memcpy(p + 32, &v32, 4)
        v32 = <uint32_t>loc.crc32c
        memcpy(p + 36, &v32, 4)
        v32 = <uint32_t>generation
        memcpy(p + 40, &v32, 4)
        v32 = <uint32_t>size
        memcpy(p + 44, &v32, 4)
        memcpy(p + 48, &offset, 8)
        memcpy(p + 56, &until, 8)
        out[k] = body
    return out
