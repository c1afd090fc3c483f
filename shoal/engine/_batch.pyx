# cython: language_level=3
"""Per-item work of batches, each step one native pass over a batch: a page store's batch
put (checks and checksums, reservations, index records, coalesced writes, index links), a
listing's file ids, file records, and a metadata cache's stats put and looked up. A load
of small files does these for thousands of files a batch, and the same steps in Python
took about a microsecond a file each of a thread that holds the GIL."""

from cpython.buffer cimport (
    PyBUF_C_CONTIGUOUS, PyBUF_FORMAT, PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer,
)
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_FromStringAndSize
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy, memset

cdef extern from "crc32c.h" nogil:
    uint32_t shoal_crc32c(uint32_t crc, const void *buf, size_t len)

# A page record, as struct.Struct("<BIQQQIB") packs it: tier code, region number,
# generation, offset, length, crc32c, flags.
cdef enum:
    RECORD = 34


cdef inline void _put64(uint8_t *p, uint64_t v) noexcept nogil:
    memcpy(p, &v, 8)  # little-endian hosts only (x86-64, aarch64), as the store itself


def page_records(list prepared, list reserved, int code, int flags, str tier,
                 bytes prefix, location):
    """Index records of pages written (``prepared``: ``(key, view, crc)``; ``reserved``:
    ``(region, offset)`` each): ``(puts, new, located)``, where ``puts`` holds the
    ``(prefix + key, record)`` pairs to commit, ``new`` the ``(key, record, region,
    length)`` of each page, ``located`` its ``location(tier, region number, region path,
    offset, length, crc, generation)``."""
    cdef Py_ssize_t n = len(prepared), i, plen = len(prefix)
    cdef list puts = [None] * n, new = [None] * n, located = [None] * n
    cdef tuple item, place
    cdef bytes key, record, full
    cdef uint8_t *r
    cdef uint64_t number, generation, offset, length
    cdef uint32_t crc
    cdef char *f
    if len(reserved) != n:
        raise ValueError(f"page_records: {n} pages, {len(reserved)} places")
    for i in range(n):
        item = <tuple>prepared[i]
        place = <tuple>reserved[i]
        key = <bytes>item[0]
        region = place[0]
        number = region.number
        generation = region.generation
        offset = place[1]
        length = item[1].nbytes
        crc = item[2]
        record = PyBytes_FromStringAndSize(NULL, RECORD)
        r = <uint8_t *>PyBytes_AS_STRING(record)
        r[0] = <uint8_t>code
        memcpy(r + 1, &number, 4)
        _put64(r + 5, generation)
        _put64(r + 13, offset)
        _put64(r + 21, length)
        memcpy(r + 29, &crc, 4)
        r[33] = <uint8_t>flags
        full = PyBytes_FromStringAndSize(NULL, plen + len(key))
        f = PyBytes_AS_STRING(full)
        memcpy(f, PyBytes_AS_STRING(prefix), plen)
        memcpy(f + plen, PyBytes_AS_STRING(key), len(key))
        puts[i] = (full, record)
        new[i] = (key, record, region, length)
        located[i] = location(tier, number, region.path, offset, length, crc, generation)
    return puts, new, located


def coalesced(list prepared, list reserved, Py_ssize_t small, Py_ssize_t align):
    """The writes of pages (``prepared``: ``(key, view, crc)``, ``reserved``: ``(region,
    offset)`` each), ``(fd, offset, length, buffer, 0)`` each, for the engine's
    ``write_batch``: a run of pages shorter than ``small`` reserved one right after the
    other in one region (at most ``align`` bytes apart) is copied into one buffer, one
    write, zeros between the pages; a longer page is written from its own buffer."""
    cdef Py_ssize_t n = len(prepared), i, first = 0, count = 0, end = 0, offset, nbytes
    cdef list writes = []
    cdef tuple place
    run_region = None
    if len(reserved) != n:
        raise ValueError(f"coalesced: {n} pages, {len(reserved)} places")
    for i in range(n):
        view = (<tuple>prepared[i])[1]
        place = <tuple>reserved[i]
        region = place[0]
        offset = place[1]
        nbytes = view.nbytes
        if count and (nbytes >= small or region is not run_region
                      or not (end <= offset < end + align)):
            writes.append(_run(prepared, reserved, first, count, run_region.fd))
            count = 0
        if nbytes >= small:
            writes.append((region.fd, offset, nbytes, view, 0))
            continue
        if not count:
            first = i
        run_region, end = region, offset + nbytes
        count += 1
    if count:
        writes.append(_run(prepared, reserved, first, count, run_region.fd))
    return writes


cdef tuple _run(list prepared, list reserved, Py_ssize_t first, Py_ssize_t count, fd):
    """The write of ``count`` pages from the ``first`` on, in one region, copied into one
    buffer: zeros between them."""
    cdef Py_ssize_t start = (<tuple>reserved[first])[1], i, at, filled = 0, size
    cdef Py_buffer view
    last = (<tuple>prepared[first + count - 1])[1]
    size = <Py_ssize_t>(<tuple>reserved[first + count - 1])[1] + last.nbytes - start
    out = PyByteArray_FromStringAndSize(NULL, size)
    cdef char *base = PyByteArray_AS_STRING(out)
    for i in range(first, first + count):
        at = <Py_ssize_t>(<tuple>reserved[i])[1] - start
        PyObject_GetBuffer((<tuple>prepared[i])[1], &view, PyBUF_SIMPLE)
        try:
            if at < filled or at + view.len > size:
                raise ValueError(f"coalesced: page {i} at {at + start} overlaps another")
            memset(base + filled, 0, at - filled)
            memcpy(base + at, view.buf, view.len)
            filled = at + view.len
        finally:
            PyBuffer_Release(&view)
    return (fd, start, size, out, 0)


def place(region, list lengths, Py_ssize_t first, Py_ssize_t small, Py_ssize_t pack_below,
          Py_ssize_t page_align, Py_ssize_t region_size, list reserved):
    """Reserve in ``region`` (an open region: its ``fill``) the pages of ``lengths`` from
    the ``first`` on, one after the other, as many as fit: a page shorter than
    ``pack_below`` at the next multiple of ``small``, a longer one at the next of
    ``page_align``. Appends ``(region, offset)`` of each to ``reserved``; returns how many
    fit and the region's new fill (the caller counts them in)."""
    cdef Py_ssize_t fill = region.fill, i, length, align, offset
    cdef Py_ssize_t n = len(lengths)
    for i in range(first, n):
        length = lengths[i]
        align = small if length < pack_below else page_align
        offset = (fill + align - 1) // align * align
        if offset + length > region_size:
            return i - first, fill
        reserved.append((region, offset))
        fill = offset + length
    return n - first, fill


def index_pages(list new, dict entries):
    """Map each key of ``new`` (``(key, record, region, length)`` each, as
    :func:`page_records` makes them) to its record in ``entries``; returns the records
    they replaced and the runs of pages in one region, ``(region, keys, nbytes)``."""
    cdef list replaced = [], runs = [], keys = []
    cdef tuple item
    cdef Py_ssize_t nbytes = 0
    run_region = None
    for item in new:
        key = item[0]
        old = entries.get(key)
        if old is not None:
            replaced.append(old)
        entries[key] = item[1]
        region = item[2]
        if region is not run_region and keys:
            runs.append((run_region, keys, nbytes))
            keys, nbytes = [], 0
        keys.append(key)
        run_region = region
        nbytes += <Py_ssize_t>item[3]
    if keys:
        runs.append((run_region, keys, nbytes))
    return replaced, runs


cdef extern from "Python.h":
    const char *PyUnicode_AsUTF8AndSize(object s, Py_ssize_t *size) except NULL


cdef extern from "blake2b.h" nogil:
    void shoal_blake2b(uint8_t *out, size_t outlen, const void *data, size_t inlen)


cdef class _Out:
    """A growing byte buffer for :func:`pack_rows`."""
    cdef char *buf
    cdef Py_ssize_t size, used

    def __dealloc__(self):
        free(self.buf)

    cdef char *room(self, Py_ssize_t n) except NULL:
        cdef char *grown
        cdef Py_ssize_t size
        if self.used + n > self.size:
            size = max(2 * self.size, self.used + n, 256)
            grown = <char *>realloc(self.buf, size)
            if grown == NULL:
                raise MemoryError()
            self.buf, self.size = grown, size
        self.used += n
        return self.buf + self.used - n

    cdef int put_head(self, int small, int base, int b8, int b16, int b32,
                      Py_ssize_t n) except -1:
        """A str, bin or array header: ``small`` entries or bytes fit ``base | n``."""
        cdef char *p
        if n < small:
            self.room(1)[0] = <char>(base | n)
        elif b8 and n < 256:
            p = self.room(2)
            p[0], p[1] = <char>b8, <char>n
        elif n < 65536:
            p = self.room(3)
            p[0] = <char>b16
            _be(p + 1, n, 2)
        else:
            p = self.room(5)
            p[0] = <char>b32
            _be(p + 1, n, 4)
        return 0


cdef inline void _be(char *p, unsigned long long v, int n) noexcept:
    cdef int i
    for i in range(n):
        p[n - 1 - i] = <char>(v & 0xff)
        v >>= 8


cdef int _pack_int(_Out out, v) except -1:
    cdef long long s
    cdef unsigned long long u
    cdef char *p
    if v >= 0:
        u = v  # OverflowError past 64 bits, as msgpack
        if u < 128:
            out.room(1)[0] = <char>u
        elif u < 256:
            p = out.room(2); p[0] = <char>0xcc; p[1] = <char>u
        elif u < 65536:
            p = out.room(3); p[0] = <char>0xcd; _be(p + 1, u, 2)
        elif u < 4294967296:
            p = out.room(5); p[0] = <char>0xce; _be(p + 1, u, 4)
        else:
            p = out.room(9); p[0] = <char>0xcf; _be(p + 1, u, 8)
        return 0
    s = v
    if s >= -32:
        out.room(1)[0] = <char>(s & 0xff)
    elif s >= -128:
        p = out.room(2); p[0] = <char>0xd0; p[1] = <char>(s & 0xff)
    elif s >= -32768:
        p = out.room(3); p[0] = <char>0xd1; _be(p + 1, <unsigned long long>s, 2)
    elif s >= -2147483648:
        p = out.room(5); p[0] = <char>0xd2; _be(p + 1, <unsigned long long>s, 4)
    else:
        p = out.room(9); p[0] = <char>0xd3; _be(p + 1, <unsigned long long>s, 8)
    return 0


def pack_rows(list rows):
    """Each of ``rows`` (tuples of None, bool, int, float, str or bytes) as a MessagePack
    array, as ``msgpack.Packer(unicode_errors="surrogateescape").pack(list(row))`` packs
    it: str in UTF-8 (a name the file system gave in other bytes keeps them), floats in
    64 bits, every int and length in the fewest bytes."""
    cdef list packed = []
    cdef _Out out = _Out()
    cdef tuple row
    cdef double d
    cdef unsigned long long bits
    cdef bytes data
    cdef char *p
    for row in rows:
        out.used = 0
        out.put_head(16, 0x90, 0, 0xdc, 0xdd, len(row))
        for v in row:
            if v is None:
                out.room(1)[0] = <char>0xc0
            elif v is True or v is False:
                out.room(1)[0] = <char>(0xc3 if v else 0xc2)
            elif type(v) is int:
                _pack_int(out, v)
            elif type(v) is float:
                d = v
                memcpy(&bits, &d, 8)
                p = out.room(9)
                p[0] = <char>0xcb
                _be(p + 1, bits, 8)
            elif type(v) is str:
                data = (<str>v).encode("utf-8", "surrogateescape")
                out.put_head(32, 0xa0, 0xd9, 0xda, 0xdb, len(data))
                memcpy(out.room(len(data)), PyBytes_AS_STRING(data), len(data))
            elif type(v) is bytes:
                out.put_head(0, 0, 0xc4, 0xc5, 0xc6, len(<bytes>v))
                memcpy(out.room(len(<bytes>v)), PyBytes_AS_STRING(v), len(<bytes>v))
            else:
                raise TypeError(f"pack_rows: cannot pack {type(v).__name__} {v!r}")
        packed.append(PyBytes_FromStringAndSize(out.buf, out.used))
    return packed


def file_ids(str base, list infos):
    """The 16-byte BLAKE2b digest of ``base + info.path + "\\0" + info.version`` (UTF-8,
    surrogates escaped) of each of ``infos`` (objects with ``path`` and ``version``, both
    str): a listing's file ids in one pass, hashed with the GIL let go."""
    cdef bytes head = base.encode("utf-8", "surrogateescape")
    cdef Py_ssize_t n = len(infos), k, plen, vlen, hlen = len(head)
    cdef _Out text = _Out()  # every id's input, one after the other
    cdef Py_ssize_t *ends = <Py_ssize_t *>malloc((n + 1) * sizeof(Py_ssize_t))
    cdef uint8_t *digests = <uint8_t *>malloc((n or 1) * 16)
    cdef const char *p
    cdef const char *v
    cdef char *at
    try:
        if ends == NULL or digests == NULL:
            raise MemoryError()
        ends[0] = 0
        for k in range(n):
            info = infos[k]
            path, version = info.path, info.version
            escaped_path = escaped_version = None  # alive until copied, below
            if type(path) is not str or type(version) is not str:
                raise TypeError("file_ids: a path and a version must be str")
            try:
                p = PyUnicode_AsUTF8AndSize(path, &plen)  # the str's own cached UTF-8
            except UnicodeEncodeError:
                escaped_path = (<str>path).encode("utf-8", "surrogateescape")
                p, plen = PyBytes_AS_STRING(escaped_path), len(escaped_path)
            try:
                v = PyUnicode_AsUTF8AndSize(version, &vlen)
            except UnicodeEncodeError:
                escaped_version = (<str>version).encode("utf-8", "surrogateescape")
                v, vlen = PyBytes_AS_STRING(escaped_version), len(escaped_version)
            at = text.room(hlen + plen + 1 + vlen)
            memcpy(at, PyBytes_AS_STRING(head), hlen)
            memcpy(at + hlen, p, plen)
            at[hlen + plen] = 0
            memcpy(at + hlen + plen + 1, v, vlen)
            ends[k + 1] = text.used
        with nogil:
            for k in range(n):
                shoal_blake2b(digests + 16 * k, 16, text.buf + ends[k], ends[k + 1] - ends[k])
        return [PyBytes_FromStringAndSize(<char *>digests + 16 * k, 16) for k in range(n)]
    finally:
        free(ends)
        free(digests)


def prepared(list items, Py_ssize_t region_size):
    """``(key, view, crc32c)`` of each ``(key, data)`` of ``items`` when every key is
    non-empty bytes and every data a contiguous one-dimensional memoryview of bytes of at
    most ``region_size``: what a batch put writes and records. None otherwise: the caller
    checks each item on its own, with its own errors."""
    cdef Py_buffer view
    cdef list out = []
    cdef uint32_t crc
    cdef bint fit
    for item in items:
        if type(item) is not tuple or len(<tuple>item) != 2:
            return None
        key, data = <tuple>item
        if type(key) is not bytes or not key or type(data) is not memoryview:
            return None
        try:
            PyObject_GetBuffer(data, &view, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS)
        except BufferError:  # not contiguous
            return None
        try:
            fit = (view.ndim == 1 and view.len <= region_size and view.format != NULL
                   and view.format[0] == 66 and view.format[1] == 0)  # "B"
            if fit:
                crc = shoal_crc32c(0, view.buf, <size_t>view.len)
        finally:
            PyBuffer_Release(&view)
        if not fit:
            return None
        out.append((key, data, crc))
    return out


def put_stats(dict table, list items, until, Py_ssize_t fixed):
    """Put each ``(path, info)`` of ``items`` into ``table`` (a metadata cache's stats: path
    -> ``(until, info, cost)``) as ``(until, info, cost)``, an entry there before taken
    out first (so that the table's order stays the order of age), ``cost`` being ``fixed``
    plus the lengths of ``path``, ``info.path`` and ``info.version``; the bytes added (the
    costs put less those replaced). Every item is checked before any is put: a path that is
    not a str, or an info whose path and version are not, raises ``TypeError`` and
    changes nothing."""
    cdef Py_ssize_t n = len(items), i, added = 0, cost
    cdef list costs = [None] * n
    cdef object item, path, info, name, version, old
    for i in range(n):
        item = items[i]
        if type(item) is not tuple or len(<tuple>item) != 2:
            raise TypeError(f"put_stats: item {i} is not a (path, info) pair: {item!r}")
        path, info = <tuple>item
        name = info.path
        version = info.version
        if type(path) is not str or type(name) is not str or type(version) is not str:
            raise TypeError(f"put_stats: item {i}: path, info.path and info.version must be "
                            f"str: {item!r}")
        costs[i] = fixed + len(<str>path) + len(<str>name) + len(<str>version)
    for i in range(n):
        path, info = <tuple>items[i]
        old = table.pop(path, None)
        if old is not None:
            added -= <Py_ssize_t>(<tuple>old)[2]
        cost = costs[i]
        table[path] = (until, info, cost)
        added += cost
    return added


def expiries(dict table, list items, double now):
    """Per ``(path, info)`` of ``items``: until when (the ``until`` of its entry in
    ``table``, as :func:`put_stats` puts them) the cached stat of ``path`` holds, if it
    holds after ``now`` and is ``info`` still (the same object, or the same version and
    size); None otherwise."""
    cdef Py_ssize_t n = len(items), i
    cdef list out = [None] * n
    cdef object item, path, info, entry, cached
    for i in range(n):
        item = items[i]
        if type(item) is not tuple or len(<tuple>item) != 2:
            raise TypeError(f"expiries: item {i} is not a (path, info) pair: {item!r}")
        path, info = <tuple>item
        entry = table.get(path)
        if entry is None or <double>(<tuple>entry)[0] <= now:
            continue
        cached = (<tuple>entry)[1]
        if cached is info or (cached.version == info.version and cached.size == info.size):
            out[i] = (<tuple>entry)[0]
    return out
