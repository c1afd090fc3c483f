"""The region page store: pages appended to fixed-size region files, indexed in RocksDB.

Layout on disk (see ``_regions`` for the tier directory):

- index (rocksdict, raw mode) at ``index_path``:
  ``b"m"`` -> format and geometry; ``b"p" + key`` -> page record;
  ``b"r" + tier code + region number`` -> region record (generation, state, kind, fill);
  a region's kind says which pages it takes: ordinary ones of one priority, or pinned and
  dirty ones;
  ``b"f" + name`` -> a caller's record (see :meth:`PageStore.put_records`), opaque here.
- Data first, index second: page bytes are written with the engine, then one WriteBatch
  commits the page records together with the records of the regions they touched (and the
  caller's records given with the pages).
"""

from __future__ import annotations

import errno
import fcntl
import heapq
import itertools
import math
import numbers
import operator
import os
import stat
import struct
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import rocksdict

from .._errors import PageCorruptedError, PageNotFoundError, TierFullError
from .._private import open_failure, open_private_dir, open_private_file, open_private_path, refusal
from . import _batch, _crc
from ._engine import read_batch, write_batch
from ._regions import (
    GENERATIONS_FILE,
    REGIONS_DIR,
    TIER_NAMES,
    GenerationTable,
    PageLocation,
    generations_path,
    region_path,
)
from ._requests import host_view

__all__ = ["PageStore", "TierConfig", "TierUsage"]

KiB = 1 << 10
MiB = 1 << 20
TiB = 1 << 40

#: The largest region the store takes: past it a region is no cache unit but a mistake.
MAX_REGION_SIZE = TiB
# The index holds region numbers in 4 bytes, and sizes and capacities in 8.
_MAX_REGIONS = 1 << 32
_U64_MAX = (1 << 64) - 1
# Regions a generation table starts with; it doubles as regions are first used.
_TABLE_START = 1024
#: The largest value of a record (:meth:`PageStore.put_records`): records describe files,
#: they do not hold their bytes.
MAX_RECORD_SIZE = 64 * KiB
# The smallest small_align a store takes; recovery accepts page offsets that are multiples
# of it, whatever the alignments are now.
_MIN_SMALL_ALIGN = 8
# Records a scan (PageStore.records) reads per hold of the lock.
_RECORD_CHUNK = 256
# Stale keys a region's reverse map may hold beyond twice its pages before it is weeded.
_STALE_KEYS = 64
# Read-ahead of a scan of the index (recovery reads it whole).
_SCAN_READAHEAD = 2 * MiB
# RocksDB's memory, bounded whatever the size of the index: a block cache that holds the
# index and filter blocks too (not one set per table file, growing with the index), and
# at most two memtables being filled or flushed.
_BLOCK_CACHE = 16 * MiB
_MEMTABLE = 16 * MiB
_MEMTABLES = 2

_TIER_CODES = {name: code for code, name in enumerate(TIER_NAMES)}
_PIN, _DIRTY = 1, 2
_FREE, _OPEN, _SEALED = 0, 1, 2
# Region kinds: ordinary pages of normal, low or high priority, or pinned / dirty pages
# (sticky); 0 and 1 are those of stores written before priorities.
_NORMAL, _STICKY, _LOW, _HIGH = 0, 1, 2, 3
_KINDS = 4
_PRIORITIES = {"low": _LOW, "normal": _NORMAL, "high": _HIGH}
# Reclaim order by kind of the regions with live pages: low, then normal (with sticky
# regions left without a pinned or dirty page), then high.
_RECLAIM_RANK = (2, 2, 1, 3)
# Bytes a move (PageStore.move) reads and writes per round.
_MOVE_CHUNK = 64 * MiB
#: Keys of demoted pages :meth:`PageStore.take_demoted` keeps at most.
_DEMOTED_LOG = 1 << 18
_COUNTERS = (
    "evicted_pages", "evicted_bytes", "demoted_pages", "demoted_bytes", "moved_pages",
    "moved_bytes", "regions_reclaimed",
)  # fmt: skip

# the fields of _Entry, in its order: tier code, region, generation, offset, length, crc, flags
_PAGE = struct.Struct("<BIQQQIB")
# the head of a page record: tier code, region, generation (where the page is)
_PAGE_HEAD = struct.Struct("<BIQ")
# generation, state, kind, fill (append offset)
_REGION = struct.Struct("<QBBQ")
# magic, format version, region size, page alignment
_META = struct.Struct("<4sIQQ")
_MAGIC, _VERSION = b"SHPS", 1
_META_KEY, _PAGE_PREFIX, _REGION_PREFIX, _RECORD_PREFIX = b"m", b"p", b"r", b"f"


@dataclass(frozen=True)
class TierConfig:
    """One tier of a page store: a directory and how many bytes it may hold.

    Parameters
    ----------
    name
        ``"MEM"`` (a directory on tmpfs such as /dev/shm), ``"SSD"`` or ``"HDD"``; any case,
        stored upper-case.
    path
        The tier directory; created (0700, as are missing parents) when the store opens, so
        it must either be a writable directory or not exist under a writable directory.
        Stored absolute. An existing one must pass the checks of :class:`PageStore`.
    capacity
        Bytes the tier may hold; the store uses ``capacity // region_size`` regions, so it
        must be at least one region. At most the size of the filesystem that holds
        ``path`` (that of its nearest existing ancestor).
    """

    name: str
    path: str | os.PathLike
    capacity: int

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise TypeError(f"TierConfig.name must be a str, got {type(self.name).__name__}")
        name = self.name.strip().upper()
        if name not in TIER_NAMES:
            raise ValueError(
                f"TierConfig.name must be one of {', '.join(TIER_NAMES)}, got {self.name!r}"
            )
        object.__setattr__(self, "name", name)
        if not isinstance(self.path, (str, os.PathLike)):
            raise TypeError(
                f"TierConfig.path must be a str or os.PathLike, got {type(self.path).__name__}"
            )
        path = os.fspath(self.path)
        if not isinstance(path, str) or not path:
            raise ValueError(f"TierConfig.path must be a non-empty text path, got {self.path!r}")
        path = os.path.abspath(path)
        object.__setattr__(self, "path", path)
        existing = _check_creatable_dir(path, "TierConfig.path")
        if isinstance(self.capacity, bool) or not isinstance(self.capacity, int):
            raise TypeError(
                f"TierConfig.capacity must be an int, got {type(self.capacity).__name__}"
            )
        if self.capacity <= 0:
            raise ValueError(f"TierConfig.capacity must be > 0 bytes, got {self.capacity}")
        if self.capacity > _U64_MAX:
            raise ValueError(
                f"TierConfig.capacity of {self.capacity} bytes does not fit in 64 bits"
            )
        st = os.statvfs(existing)
        size = st.f_blocks * st.f_frsize
        if self.capacity > size:
            raise ValueError(
                f"TierConfig.capacity of {self.capacity} bytes is larger than the filesystem "
                f"that holds {path} ({size} bytes, measured at {existing})"
            )


def _check_creatable_dir(path: str, field: str) -> str:
    """Check that ``path`` is a directory that exists or can be created; return it or its
    nearest existing ancestor."""
    probe = path
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        what = (
            "is not a directory" if probe == path else f"is under {probe}, which is not a directory"
        )
        raise ValueError(f"{field}: {path} {what}")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(
            f"{field}: {path} cannot be created or written (no write access to {probe})"
        )
    return probe


@dataclass(frozen=True)
class TierUsage:
    """Space accounting of one tier, as returned by :meth:`PageStore.usage`.

    Attributes
    ----------
    capacity
        Configured capacity in bytes.
    region_size
        Bytes per region.
    regions_total
        Regions the tier may use (``capacity // region_size``).
    regions_used
        Regions holding pages or open for appends.
    allocated_bytes
        ``regions_used * region_size``: never more than ``capacity``.
    live_bytes
        Bytes of the pages currently indexed.
    filled_bytes
        Bytes the used regions' appended pages take: the sum of each used region's fill
        (its append offset), alignment padding and the bytes of pages since deleted or
        replaced included, the unused tail of a region not. ``live_bytes / filled_bytes``
        measures how tightly pages are packed (see ``pack_below`` of :class:`PageStore`);
        ``filled_bytes <= allocated_bytes``.
    pages
        Number of pages indexed.
    pinned_bytes, dirty_bytes
        Bytes of pinned pages, of dirty pages.
    """

    capacity: int
    region_size: int
    regions_total: int
    regions_used: int
    allocated_bytes: int
    live_bytes: int
    filled_bytes: int
    pages: int
    pinned_bytes: int
    dirty_bytes: int


class _Entry(NamedTuple):
    tier: int
    region: int
    generation: int
    offset: int
    length: int
    crc: int
    flags: int


def _entry(record: bytes) -> _Entry:
    """The fields of a page record (the in-memory index keeps records packed)."""
    return _Entry._make(_PAGE.unpack(record))


# Up to this many pages are written with pwrite in the calling thread: io_uring hands a
# buffered write to a file on tmpfs (the MEM tier) to one of its worker threads, which
# costs two context switches per page; a batch pays that once for all its pages.
_INLINE_WRITES = 2


def _pwrite_all(region: _Region, offset: int, view: memoryview) -> None:
    """Write ``view`` at ``offset`` of the region's file, finishing short writes."""
    done = 0
    try:
        while done < view.nbytes:
            done += os.pwrite(region.fd, view[done:], offset + done)
    except OSError as exc:
        raise OSError(exc.errno, f"write: {exc.strerror}", region.path) from None


class _Region:
    __slots__ = (
        "number", "path", "generation", "state", "kind", "fill", "keys", "pages",
        "live_bytes", "sticky", "inflight", "last_access", "fd",
    )  # fmt: skip

    def __init__(self, number: int, path: str):
        self.number = number
        self.path = path
        self.generation = 0
        self.state = _FREE
        self.kind = _NORMAL
        self.fill = 0  # append offset: end of the last reserved page
        # Reverse map for reclaim: every key linked here since the region was last reclaimed,
        # so those of its pages plus stale ones (deleted, replaced), weeded out now and then;
        # a list takes a fifth of a set's memory.
        self.keys: list[bytes] = []
        self.pages = 0  # pages here
        self.live_bytes = 0
        self.sticky = 0  # pages here that are pinned or dirty
        self.inflight = 0  # reserved pages whose write has not been committed yet
        self.last_access = 0
        self.fd = -1

    def record(self) -> bytes:
        return _REGION.pack(self.generation, self.state, self.kind, self.fill)


def _reclaim_order(region: _Region) -> tuple[int, int]:
    """Sort key of regions to reclaim: those without live bytes first, then by priority
    (low first), least recently used first within each."""
    return (_RECLAIM_RANK[region.kind] if region.live_bytes else 0, region.last_access)


class _Tier:
    """A tier's regions. A region's state is made when the region is first used, so the
    memory it takes follows the regions in use, never the capacity."""

    def __init__(self, config: TierConfig, region_size: int):
        self.name = config.name
        self.code = _TIER_CODES[config.name]
        self.dir = config.path
        self.capacity = config.capacity
        self.count = config.capacity // region_size  # region numbers the tier may use
        self.regions: dict[int, _Region] = {}  # the regions used so far, by number
        self.open: list[_Region | None] = [None] * _KINDS  # per kind
        self.free: list[int] = []  # heap of the free numbers in ``regions``
        # Ranges [start, end) of numbers never used (not in ``regions``), highest first.
        self.unused: list[tuple[int, int]] = [(0, self.count)]
        self.used = 0
        self.table: GenerationTable | None = None
        self.lock_fd = -1
        self.dir_fd = self.regions_fd = -1  # the tier directory and its regions/, checked
        self.pages = self.live_bytes = self.pinned_bytes = self.dirty_bytes = 0
        self.filled = 0  # sum of the fills of the regions in use

    def region_key(self, number: int) -> bytes:
        return _REGION_PREFIX + bytes((self.code,)) + number.to_bytes(4, "big")

    def region(self, number: int) -> _Region:
        """Region ``number``, made on first use with the generation the table holds."""
        region = self.regions.get(number)
        if region is None:
            self._cover(number)
            region = _Region(number, region_path(self.dir, number))
            region.generation = self.table.get(number)
            self.regions[number] = region
        return region

    def _cover(self, number: int) -> None:
        """Grow the generation table to hold region ``number``: twice its length, at most
        the tier's region count (readers map it again when they look past its end)."""
        if number < len(self.table):
            return
        length = max(number + 1, min(2 * len(self.table), self.count))
        table = GenerationTable(self.table.path, length)
        self.table.close()
        self.table = table

    def has_free(self) -> bool:
        return bool(self.free or self.unused)

    def take_free(self) -> int:
        """The lowest free region number (a freed region's before any never used, since
        numbers are taken lowest first); the caller checked :meth:`has_free`."""
        if self.free and (not self.unused or self.free[0] < self.unused[-1][0]):
            return heapq.heappop(self.free)
        start, end = self.unused[-1]
        if start + 1 < end:
            self.unused[-1] = (start + 1, end)
        else:
            self.unused.pop()
        return start

    def find_unused(self) -> None:
        """Set ``unused`` to the numbers below ``count`` that are not in ``regions``."""
        gaps = []
        start = 0
        for number in sorted(self.regions):
            if start < number:
                gaps.append((start, number))
            start = number + 1
        if start < self.count:
            gaps.append((start, self.count))
        gaps.reverse()
        self.unused = gaps


def _cut_short(region: _Region, end: int) -> bool:
    """True if the region file ends before ``end``, the end of a page: a page that read
    wrong there was lost to a fault of the tier (a file truncated under the store), not to
    a bad sector."""
    try:
        return os.fstat(region.fd).st_size < end
    except OSError:
        return True


def _encode_key(key: Any, what: str = "page key") -> bytes:
    if isinstance(key, str):
        k = key.encode("utf-8")
    elif isinstance(key, (bytes, bytearray, memoryview)):
        k = bytes(key)
    else:
        raise TypeError(f"{what} must be bytes or str, got {type(key).__name__}")
    if not k:
        raise ValueError(f"{what} must not be empty")
    return k


def _priority_kind(priority: Any) -> int:
    """The region kind of ordinary pages of ``priority``."""
    if not isinstance(priority, str):
        raise TypeError(f"priority must be a str, got {type(priority).__name__}")
    kind = _PRIORITIES.get(priority)
    if kind is None:
        raise ValueError(
            f"unknown priority {priority!r}; choose one of {', '.join(map(repr, _PRIORITIES))}"
        )
    return kind


def _moving_kind(region_kind: int, flags: int) -> int:
    """The kind of region a page with ``flags`` in a region of ``region_kind`` goes to when
    it moves to another tier: sticky if pinned or dirty, else its region's priority (that
    of a sticky region's other pages is normal)."""
    if flags:
        return _STICKY
    return _NORMAL if region_kind == _STICKY else region_kind


class _Moving(NamedTuple):
    """A page on its way to another tier: its key, the record it had when read (it moves
    only if its key still maps to that), the kind of region it goes to, its bytes."""

    key: bytes
    record: bytes
    kind: int
    view: memoryview
    crc: int


def _encode_records(items: Any, what: str) -> list[tuple[bytes, bytes]]:
    """``(name, value)`` pairs checked and made index keys and values, before any write."""
    if isinstance(items, (str, bytes, bytearray, memoryview)):
        raise TypeError(f"{what}: expected an iterable of (name, value) pairs, got one value")
    out = []
    for i, item in enumerate(items):
        try:
            name, value = item
        except (TypeError, ValueError):
            raise ValueError(f"{what} item {i}: expected (name, value), got {item!r}") from None
        if type(name) is bytes and name and type(value) is bytes:  # as most come: no copy
            k, data, size = name, value, len(value)
        else:
            k = _encode_key(name, "record name")
            data = _source_view(value, f"record {name!r}")
            size = data.nbytes
        if size > MAX_RECORD_SIZE:
            raise ValueError(
                f"record {name!r} of {size} bytes is larger than MAX_RECORD_SIZE "
                f"({MAX_RECORD_SIZE} bytes)"
            )
        out.append((_RECORD_PREFIX + k, data if type(data) is bytes else bytes(data)))
    return out


_first = operator.itemgetter(0)


def _sorted_batch(*runs: list[tuple[bytes, bytes]]) -> rocksdict.WriteBatch:
    """An index batch of the ``(key, value)`` pairs of ``runs``, each run in key order:
    RocksDB inserts keys one next to the other into its memtable far faster than keys
    scattered over it (page keys are hashes), some 1.8 to 1.2 us a page and record. The
    sort is stable: of a key put twice, the last value still wins."""
    batch = rocksdict.WriteBatch(raw_mode=True)
    put = batch.put
    for run in runs:
        for key, value in sorted(run, key=_first):
            put(key, value)
    return batch


def _prepared(items: list, region_size: int) -> list[tuple[bytes, memoryview, int]]:
    """``(key, view, crc32c)`` of each ``(key, data)`` to put, each checked (see
    :meth:`PageStore.put_many` for what is refused)."""
    prepared = []
    for i, item in enumerate(items):
        try:
            key, data = item
        except (TypeError, ValueError):
            raise ValueError(f"put_many item {i}: expected (key, data), got {item!r}") from None
        if type(key) is bytes and key and type(data) is memoryview and data.c_contiguous:
            k, view = key, data.cast("B") if data.format != "B" else data
        else:  # every other kind of key and buffer, checked
            k = _encode_key(key)
            view = _source_view(data, f"page {key!r}")
        if view.nbytes > region_size:
            raise ValueError(
                f"page {key!r} of {view.nbytes} bytes is larger than a region "
                f"(region_size={region_size})"
            )
        prepared.append((k, view, _crc.crc32c(view, 0)))
    return prepared


def _source_view(data: Any, what: str) -> memoryview:
    try:
        return host_view(data, writable=False, what=what)
    except TypeError:
        if hasattr(data, "__cuda_array_interface__"):
            raise TypeError(f"{what}: GPU buffers cannot be stored; copy to host first") from None
        raise


def _dest_view(buf: Any, what: str) -> memoryview:
    try:
        return host_view(buf, writable=True, what=what)
    except TypeError:
        if hasattr(buf, "__cuda_array_interface__"):
            raise TypeError(
                f"{what}: GPU destinations are not supported (the crc32c check needs host "
                "memory); read into a host buffer"
            ) from None
        raise


def _db_error(exc: Exception, path: str) -> OSError:
    return OSError(errno.EIO, f"page index: {exc}", path)


class PageStore:
    """Pages (byte strings under a key) kept in region files on one or more tiers.

    Each tier directory holds up to ``capacity // region_size`` region files. Pages are
    appended to the tier's open region: pages of ``pack_below`` bytes or more at
    ``page_align``-aligned offsets, so O_DIRECT and GPUDirect Storage can read them, shorter
    ones packed tight at ``small_align``-aligned offsets (a 100-byte page takes 128 bytes,
    not 4 KiB; it is read through the page cache). Each tier has one open region per kind of
    page: ordinary pages of low, normal and high priority (see ``priority`` of
    :meth:`put_many`) each have their own, so no region mixes priorities, and pinned and
    dirty pages have theirs, so they do not keep regions full of ordinary pages from being
    reclaimed. A region's kind is kept in the index with it. A RocksDB index maps each key
    to its page (tier, region, region generation, offset, length, crc32c, flags); writes go
    data first, index second. After a restart the index is the truth.

    The same index keeps the caller's records (:meth:`put_records`): small named values,
    such as what a worker knows of the files whose pages it holds, committed with pages
    (:meth:`put_many` with ``records``) or alone, read back after a restart. They are not
    held in memory, and neither eviction nor :meth:`delete` touches them.

    When a tier needs a new region and its allocated bytes would go above
    ``high_watermark * capacity``, whole regions are reclaimed until they are at or below
    ``low_watermark * capacity``: regions without live bytes first, then regions of low
    priority, then normal, then high, least recently used first within each. Regions
    holding a pinned or dirty page, open regions and regions with writes in progress are
    never reclaimed (but for one last resort: when no region is left free, the open region
    of another kind may go, if it holds no pinned or dirty page and no write is in
    progress). Reclaiming bumps the region's generation in the tier's shared
    ``generations`` file before any new data is written there, so readers holding an old
    :class:`PageLocation` detect it.

    With ``demote=True``, a region reclaimed for capacity (by the watermarks or
    :meth:`evict`) first has its pages of normal and high priority moved to the next slower
    tier (the next one in ``tiers``), with their key, crc32c, flags and priority; pages of
    low priority and those of the last tier are dropped. Placing them may reclaim regions
    of the tier below, demoting further down, never back up. The move runs under the
    store's lock, data first, index second, before the region's generation is bumped: a
    crash while it runs loses at most the pages being moved. A page that cannot be placed
    (the tier below is full, an I/O error) is dropped, as without ``demote``; the write
    that made room never fails because of it. :meth:`move` moves pages between tiers on
    request (to promote them, say); :meth:`take_demoted` tells which pages came down.

    Every read checks the page's crc32c; a mismatch drops the page.

    Parameters
    ----------
    tiers
        One :class:`TierConfig` per tier, distinct names and directories, fastest first
        (``demote`` moves pages from each tier to the next). The first tier is the default
        for :meth:`put`.
    index_path
        Directory of the RocksDB index (created 0700 if missing, as are missing parents;
        an existing one must pass the checks below). RocksDB creates its own files with
        the process umask: this directory being 0700 is what keeps them from other users.
    region_size
        Bytes per region file; a multiple of ``page_align``, at most every tier's capacity
        and at most 1 TiB, with no tier holding more than 2**32 regions. Fixed for the life
        of the index.
    high_watermark, low_watermark
        Fractions of capacity, ``0 < low_watermark < high_watermark <= 1``.
    page_align
        Alignment of the offsets of pages of ``pack_below`` bytes or more: a power of two,
        at least 512. Fixed for the life of the index.
    pack_below
        Pages shorter than this many bytes are packed at ``small_align``-aligned offsets;
        an int >= 0 (0: every page at ``page_align``).
    small_align
        Alignment of the offsets of pages shorter than ``pack_below``: a power of two from
        8 to ``page_align``.
    sync
        fdatasync page data (and flush generation tables) before each index commit, and
        commit the index with sync, for durability across power loss. Off by default: a
        killed process loses nothing that the kernel has, and crc32c catches torn pages.
    direct
        Read pages with O_DIRECT (where the destination buffer is aligned too).
    demote
        Move the pages worth keeping of a region reclaimed for capacity to the next slower
        tier instead of dropping them (see above). Off by default.

    Raises
    ------
    PermissionError
        A directory or file of the store fails the checks below; the message names it,
        says why and what to do.

    Notes
    -----
    The store's files are private: every directory it creates (tier directories, their
    ``regions/``, the index directory, missing parents of these) is 0700 and every file
    (region files, ``generations``, ``lock``) 0600, whatever the umask. A tier or index
    directory that exists already, a tier's ``regions/`` and every region file, ``lock``
    and ``generations`` in it are opened without following symbolic links and used only
    if they are a real directory (regular file), owned by the effective uid of the
    process and writable by neither group nor others; anything else (a directory
    created beforehand by another user, a mode 0777, a symbolic link) makes the store
    refuse to open with a ``PermissionError``. One owned by us that others may only read
    (0755 and 0644, as earlier versions made them) is narrowed to 0700 (0600) instead.
    The checks are made on the descriptors the store then uses (directories, region files,
    ``lock``), so those cannot be swapped between check and use; RocksDB and the
    generation table open their files by path, in directories no other user can change.
    Readers in other processes get descriptors from the owner (see :class:`RegionReader`
    and :meth:`open_for_reader`): they need no access to the directories.

    A region's state, in memory and in the ``generations`` table, is made when the region
    is first used, lowest numbers first (a freed region before one never used): opening a
    store takes time and memory in proportion to the regions in use, whatever the capacity.
    Each page costs memory too: its key and its index record, packed (about 190 bytes for
    a 20-byte key, measured at ten million pages). RocksDB's own memory is bounded (a
    16 MiB block cache that holds index and filter blocks too, two 16 MiB memtables).

    ``pack_below`` and ``small_align`` only place new pages: they may change between opens
    of an index, and pages already written stay where they are (recovery takes any offset
    that is a multiple of 8), so no page, dirty ones included, is lost to such a change.

    Call order: construct (opens the index, recovers the tiers and drops index entries whose
    region generation no longer matches; records are kept as they are), then any mix of
    :meth:`put`, :meth:`put_many`, :meth:`get_into`, :meth:`get_many_into`,
    :meth:`locate`, :meth:`contains`, :meth:`delete`, :meth:`pin`, :meth:`unpin`,
    :meth:`mark_clean`, :meth:`usage`, :meth:`stats`, :meth:`evict`, :meth:`touch`,
    :meth:`region_keys`, :meth:`move`, :meth:`take_demoted`, :meth:`open_for_reader`, and
    of the record calls :meth:`put_records`, :meth:`delete_records`, :meth:`get_record`,
    :meth:`records`, then
    :meth:`close` (or use the store as a context manager). A worker that restarts reads its
    records first (:meth:`records`) to know its files again, then their pages. One process
    owns a store at a time (the index and each tier directory are locked); other processes
    read through :class:`RegionReader` with locations from :meth:`locate`.

    All methods are thread-safe. One lock guards the index and the allocator; page I/O runs
    outside it (writes and moves reserve their space first and commit afterwards), so reads
    are not held up by writes; demotion alone does its I/O under the lock, as part of the
    reclaim that needs it. :meth:`close` waits for I/O in progress.

    ``put`` replaces a key's page with a new one, flags and priority included. :meth:`pin`
    or marking an existing ordinary page dirty leaves it where it is, so its region is kept
    as long as the flag is set.
    """

    def __init__(
        self,
        tiers: Sequence[TierConfig],
        index_path: str | os.PathLike,
        *,
        region_size: int = 64 * MiB,
        high_watermark: float = 0.95,
        low_watermark: float = 0.85,
        page_align: int = 4096,
        pack_below: int = 64 * KiB,
        small_align: int = 64,
        sync: bool = False,
        direct: bool = False,
        demote: bool = False,
    ):
        self._check_args(tiers, index_path, region_size, high_watermark, low_watermark, page_align)
        self._check_packing(pack_below, small_align, page_align)
        self.region_size = region_size
        self.page_align = page_align
        self.pack_below = pack_below
        self.small_align = small_align
        self.high_watermark = float(high_watermark)
        self.low_watermark = float(low_watermark)
        self.index_path = os.path.abspath(os.fspath(index_path))
        self._sync = bool(sync)
        self._direct = bool(direct)
        self._demote = bool(demote)
        self._tiers = {t.name: _Tier(t, region_size) for t in tiers}
        self._default_tier = tiers[0].name
        self._by_code = {t.code: t for t in self._tiers.values()}
        # tier code -> the next slower tier of the store (the next in ``tiers``), or None
        order = [self._tiers[t.name] for t in tiers]
        self._below = {t.code: below for t, below in zip(order, [*order[1:], None], strict=True)}
        self._stats = dict.fromkeys(_COUNTERS, 0)  # see stats()
        self._demoted: deque[bytes] = deque(maxlen=_DEMOTED_LOG)  # see take_demoted()
        # key -> its page record, the very bytes the index holds (see _entry): a fraction of
        # the memory of a tuple of ints, which matters at tens of millions of pages.
        self._entries: dict[bytes, bytes] = {}
        self._unsaved: set[tuple[int, int]] = set()  # (tier code, region) records to write
        self._clock = itertools.count(1)
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._active = 0  # I/O running outside the lock
        self._closed = False
        self._db: rocksdict.Rdict | None = None
        self._write_opts = rocksdict.WriteOptions()
        self._write_opts.sync = self._sync
        try:
            self._open_index()
            for tier in self._tiers.values():
                self._open_tier(tier)
            self._recover()
        except BaseException:
            self._release()
            raise

    @staticmethod
    def _check_args(tiers, index_path, region_size, high, low, page_align) -> None:
        if isinstance(tiers, TierConfig) or not isinstance(tiers, Sequence):
            raise TypeError("PageStore: tiers must be a sequence of TierConfig")
        if not tiers:
            raise ValueError("PageStore: tiers must not be empty")
        for i, t in enumerate(tiers):
            if not isinstance(t, TierConfig):
                raise TypeError(f"PageStore: tiers[{i}] is a {type(t).__name__}, not a TierConfig")
        names = [t.name for t in tiers]
        if len(set(names)) != len(names):
            raise ValueError(f"PageStore: tier names must be distinct, got {names}")
        paths = [os.path.realpath(t.path) for t in tiers]
        if len(set(paths)) != len(paths):
            raise ValueError(f"PageStore: tier paths must be distinct, got {paths}")
        if not isinstance(index_path, (str, os.PathLike)):
            raise TypeError(
                "PageStore: index_path must be a str or os.PathLike, got "
                f"{type(index_path).__name__}"
            )
        if not os.fspath(index_path):
            raise ValueError("PageStore: index_path must not be empty")
        _check_creatable_dir(os.path.abspath(os.fspath(index_path)), "PageStore: index_path")
        for field, value in (("page_align", page_align), ("region_size", region_size)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"PageStore: {field} must be an int, got {type(value).__name__}")
        if page_align < 512 or page_align & (page_align - 1):
            raise ValueError(
                f"PageStore: page_align must be a power of two >= 512, got {page_align}"
            )
        if region_size <= 0 or region_size % page_align:
            raise ValueError(
                f"PageStore: region_size must be a positive multiple of page_align={page_align}, "
                f"got {region_size}"
            )
        if region_size > MAX_REGION_SIZE:
            raise ValueError(
                f"PageStore: region_size of {region_size} bytes is over the largest region, "
                f"{MAX_REGION_SIZE} bytes (1 TiB)"
            )
        for field, value in (("high_watermark", high), ("low_watermark", low)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(f"PageStore: {field} must be a number, got {type(value).__name__}")
            if not 0 < value <= 1:
                raise ValueError(f"PageStore: {field} must be in (0, 1], got {value}")
        if not low < high:
            raise ValueError(
                f"PageStore: low_watermark ({low}) must be below high_watermark ({high})"
            )
        for t in tiers:
            if t.capacity < region_size:
                raise ValueError(
                    f"PageStore: tier {t.name} capacity of {t.capacity} bytes is less than one "
                    f"region (region_size={region_size})"
                )
            if t.capacity // region_size > _MAX_REGIONS:
                raise ValueError(
                    f"PageStore: tier {t.name} capacity of {t.capacity} bytes makes more "
                    f"regions of {region_size} bytes than the index can number "
                    f"({_MAX_REGIONS}): use larger regions"
                )

    @staticmethod
    def _check_packing(pack_below, small_align, page_align) -> None:
        for field, value in (("pack_below", pack_below), ("small_align", small_align)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"PageStore: {field} must be an int, got {type(value).__name__}")
        if pack_below < 0:
            raise ValueError(f"PageStore: pack_below must be >= 0 bytes, got {pack_below}")
        if (
            small_align < _MIN_SMALL_ALIGN
            or small_align & (small_align - 1)
            or small_align > page_align
        ):
            raise ValueError(
                f"PageStore: small_align must be a power of two from {_MIN_SMALL_ALIGN} to "
                f"page_align={page_align}, got {small_align}"
            )

    # ----------------------------------------------------------------- open and recovery

    def _open_index(self) -> None:
        # RocksDB creates its files with the process umask: the private directory is what
        # keeps them from other users.
        os.close(open_private_path(self.index_path, "page index directory"))
        opts = rocksdict.Options(raw_mode=True)
        opts.create_if_missing(True)
        table = rocksdict.BlockBasedOptions()
        table.set_block_cache(rocksdict.Cache(_BLOCK_CACHE))
        table.set_cache_index_and_filter_blocks(True)
        table.set_pin_l0_filter_and_index_blocks_in_cache(True)
        opts.set_block_based_table_factory(table)
        opts.set_write_buffer_size(_MEMTABLE)
        opts.set_max_write_buffer_number(_MEMTABLES)
        try:
            self._db = rocksdict.Rdict(self.index_path, opts)
        except Exception as exc:
            raise _db_error(exc, self.index_path) from exc
        meta = self._db.get(_META_KEY)
        if meta is None:
            self._db.put(_META_KEY, _META.pack(_MAGIC, _VERSION, self.region_size, self.page_align))
            return
        try:
            magic, version, region_size, page_align = _META.unpack(meta)
        except struct.error:
            magic = version = region_size = page_align = None
        if magic != _MAGIC or version != _VERSION:
            raise ValueError(f"PageStore: {self.index_path} is not a page store index (version 1)")
        for field, have, want in (
            ("region_size", region_size, self.region_size),
            ("page_align", page_align, self.page_align),
        ):
            if have != want:
                raise ValueError(
                    f"PageStore: index {self.index_path} was created with {field}={have}, "
                    f"got {field}={want}"
                )

    def _open_tier(self, tier: _Tier) -> None:
        what = f"tier {tier.name}"
        tier.dir_fd = open_private_path(tier.dir, f"{what} directory")
        tier.regions_fd = open_private_dir(
            tier.dir_fd,
            REGIONS_DIR,
            os.path.join(tier.dir, REGIONS_DIR),
            f"{what} regions directory",
        )
        tier.lock_fd = open_private_file(
            tier.dir_fd, "lock", os.path.join(tier.dir, "lock"), f"{what} lock file",
            os.O_RDWR | os.O_CREAT,
        )  # fmt: skip
        try:
            fcntl.flock(tier.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OSError(
                errno.EBUSY, f"tier {tier.name} is in use by another PageStore", tier.dir
            ) from None
        for name in os.listdir(tier.regions_fd):
            if name.isdigit():
                path = os.path.join(tier.dir, REGIONS_DIR, name)
                flags = os.O_RDONLY | os.O_NONBLOCK  # no wait on a FIFO: it is refused
                os.close(
                    open_private_file(tier.regions_fd, name, path, f"{what} region file", flags)
                )
        # Created and checked through the directory's descriptor; the table opens it again
        # by path, which no other user can change now that the directory is private.
        table = generations_path(tier.dir)
        os.close(
            open_private_file(
                tier.dir_fd,
                GENERATIONS_FILE,
                table,
                f"{what} generation table",
                os.O_RDWR | os.O_CREAT,
            )  # fmt: skip
        )
        tier.table = GenerationTable(table, min(tier.count, _TABLE_START))

    def _scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Every ``(key, value)`` of the index under ``prefix``, read ahead and without
        filling the block cache (a scan reads each block once)."""
        # No iterate_upper_bound: rocksdict's iterator points into the ReadOptions for it,
        # and reads freed memory once they are collected.
        opts = rocksdict.ReadOptions()
        opts.fill_cache(False)
        opts.set_readahead_size(_SCAN_READAHEAD)
        for key, value in self._db.items(from_key=prefix, read_opt=opts):
            if not key.startswith(prefix):
                return
            yield key, value

    def _recover(self) -> None:
        batch = rocksdict.WriteBatch(raw_mode=True)
        stored: dict[tuple[int, int], bytes] = {}
        # Region records: the generation is the larger of the index's and the shared
        # table's; a table ahead of the index means a reclaim was cut short: the region is free.
        for key, value in self._scan(_REGION_PREFIX):
            tier = self._by_code.get(key[1]) if len(key) == 6 else None
            number = int.from_bytes(key[2:6], "big")
            if tier is None or number >= tier.count or len(value) != _REGION.size:
                batch.delete(key)
                continue
            region = tier.region(number)
            stored[tier.code, number] = value
            generation, state, kind, fill = _REGION.unpack(value)
            region.generation = generation
            if tier.table.get(number) > generation or state not in (_OPEN, _SEALED):
                continue
            region.state, region.fill = state, fill
            region.kind = kind if kind < _KINDS else _NORMAL
        for tier in self._tiers.values():
            for region in tier.regions.values():
                region.generation = max(region.generation, tier.table.get(region.number))
                if region.state != _FREE and not self._region_file_ok(tier, region):
                    region.state = _FREE
                    region.generation += 1
            self._drop_extra_region_files(tier)
        self._recover_pages(batch)
        for tier in self._tiers.values():
            regions = [tier.regions[number] for number in sorted(tier.regions)]
            for region in regions:
                if region.state == _SEALED and not region.pages:
                    region.state = _FREE  # nothing live: reclaim now
                    region.generation += 1
                if region.state == _OPEN:
                    # One open region per kind: keep the emptiest, seal the others.
                    current = tier.open[region.kind]
                    if current is None or current.fill > region.fill:
                        if current is not None:
                            current.state = _SEALED
                        tier.open[region.kind] = region
                    else:
                        region.state = _SEALED
            for region in regions:
                if region.state == _FREE:
                    region.fill = 0
                    region.kind = _NORMAL
                    heapq.heappush(tier.free, region.number)
                else:
                    tier.used += 1
                    tier.filled += region.fill
                    region.last_access = next(self._clock)
                    self._open_region_file(tier, region)
                if tier.table.get(region.number) != region.generation:
                    tier.table.set(region.number, region.generation)
                old = stored.get((tier.code, region.number))
                if old != region.record() and (old is not None or region.generation):
                    self._unsaved.add((tier.code, region.number))
            tier.find_unused()
        self._commit(batch)

    def _recover_pages(self, batch: rocksdict.WriteBatch) -> None:
        """Index the page records that match their region; delete the others in ``batch``.

        The loop of a restart, once per page (tens of millions): kept flat, records kept as
        the bytes read.
        """
        entries, by_code, unpack = self._entries, self._by_code, _PAGE.unpack
        size, region_size = _PAGE.size, self.region_size
        for key, value in self._scan(_PAGE_PREFIX):
            if len(value) != size:
                batch.delete(key)
                continue
            code, number, generation, offset, length, _, flags = unpack(value)
            tier = by_code.get(code)
            region = tier.regions.get(number) if tier is not None else None
            if (
                region is None  # no record: a region never used, or reclaimed since
                or region.state == _FREE
                or region.generation != generation
                or offset % _MIN_SMALL_ALIGN
                or offset + length > region_size
            ):
                batch.delete(key)
                continue
            k = key[1:]
            entries[k] = value
            region.keys.append(k)
            region.pages += 1
            region.live_bytes += length
            tier.pages += 1
            tier.live_bytes += length
            if flags:
                self._count_flags(tier, region, length, flags, +1)
            if offset + length > region.fill:
                region.fill = offset + length

    def _region_file_ok(self, tier: _Tier, region: _Region) -> bool:
        name = os.path.basename(region.path)
        try:
            st = os.stat(name, dir_fd=tier.regions_fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return stat.S_ISREG(st.st_mode) and st.st_size == self.region_size

    def _drop_extra_region_files(self, tier: _Tier) -> None:
        """Remove region files past the tier's region count (its capacity shrank)."""
        for name in os.listdir(tier.regions_fd):
            if not name.isdigit() or int(name) < tier.count:
                continue
            number = int(name)
            generation = tier.table.get(number)
            if generation is not None:
                tier.table.set(number, generation + 1)  # readers of it see a stale location
            os.unlink(name, dir_fd=tier.regions_fd)

    def _open_region_file(self, tier: _Tier, region: _Region) -> None:
        if region.fd >= 0:
            return
        fd = open_private_file(
            tier.regions_fd, os.path.basename(region.path), region.path,
            f"tier {tier.name} region file", os.O_RDWR | os.O_CREAT,
        )  # fmt: skip
        try:
            if os.fstat(fd).st_size != self.region_size:
                os.ftruncate(fd, self.region_size)
        except BaseException:
            os.close(fd)
            raise
        region.fd = fd

    # ----------------------------------------------------------------- index bookkeeping

    def _link(self, k: bytes, tier: _Tier, region: _Region, length: int, flags: int) -> None:
        """Count a page just put under ``k`` in ``self._entries``, in ``region``."""
        self._link_many([k], tier, region, length, flags)

    def _link_many(
        self, ks: list[bytes], tier: _Tier, region: _Region, nbytes: int, flags: int
    ) -> None:
        """:meth:`_link` of pages just put under ``ks``, all in ``region``, ``nbytes`` in
        all, all with ``flags``."""
        keys = region.keys
        keys.extend(ks)
        self._count(tier, region, nbytes, flags, len(ks))
        if len(keys) > 2 * region.pages + _STALE_KEYS:
            # More stale keys than pages: weed them out (amortized O(1) per link).
            head = _PAGE_HEAD.pack(tier.code, region.number, region.generation)
            entries = self._entries
            region.keys = [
                key for key in dict.fromkeys(keys) if entries.get(key, b"").startswith(head)
            ]

    def _unlink(self, record: bytes) -> tuple[_Tier, _Region]:
        """Uncount the page of ``record``, which its key no longer maps to; its key stays
        in the region's ``keys``, stale."""
        entry = _entry(record)
        tier = self._by_code[entry.tier]
        region = tier.regions[entry.region]
        self._count(tier, region, -entry.length, entry.flags, -1)
        return tier, region

    def _count(self, tier: _Tier, region: _Region, nbytes: int, flags: int, pages: int) -> None:
        """Count ``pages`` pages more (fewer when negative) of ``nbytes`` bytes in all (of
        the same sign), all with ``flags``, in ``region`` of ``tier``."""
        region.pages += pages
        region.live_bytes += nbytes
        tier.pages += pages
        tier.live_bytes += nbytes
        if flags:
            self._count_flags(tier, region, nbytes, flags, pages)

    def _reclaim_emptied(self, unlinked: Iterable[tuple[_Tier, _Region]]) -> None:
        """Reclaim the sealed regions among ``unlinked`` left without a page (deleted or
        replaced), so that their space is reused before a region never written; called
        with the lock held."""
        empty: dict[int, tuple[_Tier, list[_Region]]] = {}
        for tier, region in unlinked:
            if region.state == _SEALED and not region.pages and not region.inflight:
                regions = empty.setdefault(tier.code, (tier, []))[1]
                if region not in regions:
                    regions.append(region)
        for tier, regions in empty.values():
            self._reclaim(regions, tier)

    @staticmethod
    def _count_flags(tier: _Tier, region: _Region, nbytes: int, flags: int, pages: int) -> None:
        region.sticky += pages
        if flags & _PIN:
            tier.pinned_bytes += nbytes
        if flags & _DIRTY:
            tier.dirty_bytes += nbytes

    def _commit(self, batch: rocksdict.WriteBatch, opts: Any = None) -> None:
        """Write ``batch`` plus every changed region record, in one atomic index write
        (with ``opts``, the store's write options by default)."""
        for code, number in self._unsaved:
            tier = self._by_code[code]
            batch.put(tier.region_key(number), tier.regions[number].record())
        if batch.is_empty():
            return
        try:
            self._db.write(batch, opts or self._write_opts)
        except Exception as exc:
            raise _db_error(exc, self.index_path) from exc
        self._unsaved.clear()

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("PageStore is closed")

    def _tier(self, name: str | None) -> _Tier:
        if name is None:
            name = self._default_tier
        tier = self._tiers.get(name) if isinstance(name, str) else None
        if tier is None:
            raise ValueError(f"unknown tier {name!r}; this store has {', '.join(self._tiers)}")
        return tier

    # ----------------------------------------------------------------- allocation

    def _reserve(self, tier: _Tier, kind: int, length: int) -> tuple[_Region, int]:
        """Space for a page in the tier's open region of ``kind``; called with the lock held.

        A page shorter than ``pack_below`` goes to the next ``small_align`` boundary, a
        longer one to the next ``page_align`` boundary (where O_DIRECT can read it).
        """
        return self._reserve_many(tier, kind, [length])[0]

    def _reserve_many(self, tier: _Tier, kind: int, lengths: list[int]) -> list[tuple]:
        """:meth:`_reserve` of pages of ``lengths``, one after the other, in one pass;
        called with the lock held. All or none: a page that finds no room releases those
        reserved before it. A region that a page does not fit is sealed, and the page goes
        to a new one."""
        reserved: list[tuple[_Region, int]] = []
        small, pack_below, page_align = self.small_align, self.pack_below, self.page_align
        region_size = self.region_size
        region = tier.open[kind]
        used: list[_Region] = []  # the regions the pages went to
        at = 0
        try:
            while at < len(lengths):
                if region is None:
                    region = self._allocate(tier, kind, lengths[at])
                fit, fill = _batch.place(
                    region, lengths, at, small, pack_below, page_align, region_size, reserved
                )
                if fit:
                    used.append(region)
                tier.filled += fill - region.fill
                region.fill = fill
                region.inflight += fit
                at += fit
                if at < len(lengths):  # the next page does not fit: a new region
                    if not fit and not region.fill:
                        raise ValueError(f"a page of {lengths[at]} bytes is larger than a region")
                    region.state = _SEALED
                    tier.open[kind] = None
                    self._unsaved.add((tier.code, region.number))
                    region = None
        except BaseException:
            for r, _ in reserved:
                r.inflight -= 1
            raise
        if reserved:  # once per region the pages went to
            stamp = next(self._clock)
            for r in used:
                r.last_access = stamp
                self._unsaved.add((tier.code, r.number))
        return reserved

    def _allocate(self, tier: _Tier, kind: int, length: int) -> _Region:
        rs = self.region_size
        if (tier.used + 1) * rs > self.high_watermark * tier.capacity:
            # Down to the low watermark, counting the region about to be allocated.
            self._reclaim_lru(tier, math.floor(self.low_watermark * tier.capacity / rs) - 1)
        if not tier.has_free():
            # Last resort before ENOSPC: another kind's open region, if one may go.
            others = [
                r
                for r in tier.open
                if r is not None and r.kind != kind and not r.sticky and not r.inflight
            ]
            if others:
                other = min(others, key=_reclaim_order)
                tier.open[other.kind] = None
                self._reclaim([other], tier, demote=self._demote)
        if not tier.has_free():
            raise TierFullError(
                f"tier {tier.name} is full: no region free for a page of {length} bytes; all "
                f"{tier.count} regions of {rs} bytes hold pinned or dirty pages or "
                "writes in progress",
                tier.dir,
            )
        number = tier.take_free()
        try:
            region = tier.region(number)
            self._open_region_file(tier, region)
        except BaseException:
            if number in tier.regions:
                heapq.heappush(tier.free, number)
            else:
                tier.unused.append((number, number + 1))
            raise
        region.state = _OPEN
        region.kind = kind
        region.fill = 0
        tier.used += 1
        tier.open[kind] = region
        return region

    def _reclaim_lru(self, tier: _Tier, max_used: int) -> int:
        """Reclaim regions for capacity, until at most ``max_used`` are in use or none may
        go: those without live bytes first, then those of low, normal, high priority, least
        recently used first within each; returns how many were reclaimed."""
        excess = tier.used - max_used
        if excess <= 0:
            return 0
        candidates = sorted(
            (
                r
                for r in tier.regions.values()
                if r.state == _SEALED and not r.sticky and not r.inflight
            ),
            key=_reclaim_order,
        )[:excess]
        self._reclaim(candidates, tier, demote=self._demote)
        return len(candidates)

    def _reclaim(self, regions: list[_Region], tier: _Tier, demote: bool = False) -> None:
        """Free ``regions`` of ``tier`` and drop their pages; called with the lock held.

        With ``demote`` (a reclaim for capacity of a store made with ``demote=True``), the
        pages worth keeping are first moved to the tier below (see :meth:`_demote_pages`).
        """
        if not regions:
            return
        if demote:
            self._demote_pages(tier, regions)
        batch = rocksdict.WriteBatch(raw_mode=True)
        heads = []
        for region in regions:
            heads.append(_PAGE_HEAD.pack(tier.code, region.number, region.generation))
            # Published before anything else happens to the region: from here on readers
            # holding its old generation fail their check.
            region.generation += 1
            tier.table.set(region.number, region.generation)
        if self._sync:
            tier.table.flush()
        entries = self._entries
        for region, head in zip(regions, heads, strict=True):
            for k in region.keys:
                # A stale key maps to nothing, or to a page elsewhere, or was seen already.
                if entries.get(k, b"").startswith(head):
                    del entries[k]
                    batch.delete(_PAGE_PREFIX + k)
            tier.pages -= region.pages
            tier.live_bytes -= region.live_bytes
            self._stats["evicted_pages"] += region.pages
            self._stats["evicted_bytes"] += region.live_bytes
            region.keys = []
            region.pages = 0
            region.live_bytes = 0
            region.state = _FREE
            region.kind = _NORMAL
            tier.filled -= region.fill
            region.fill = 0
            tier.used -= 1
            heapq.heappush(tier.free, region.number)
            self._unsaved.add((tier.code, region.number))
        self._stats["regions_reclaimed"] += len(regions)
        self._commit(batch)

    def _demote_pages(self, tier: _Tier, regions: list[_Region]) -> None:
        """Move the live pages of ``regions``, about to be reclaimed for capacity, to the
        next slower tier; called with the lock held.

        Pages of low priority stay (and go with their region), as do those of the slowest
        tier. Placing pages in the tier below may reclaim regions there, demoting further
        down: each step goes one tier lower, so it ends at the slowest tier, and never
        touches ``tier``. A page that cannot be placed (the tier below is full, an I/O error)
        stays behind, dropped with its region as eviction drops it.
        """
        lower = self._below[tier.code]
        if lower is None:
            return
        entries = self._entries
        for region in regions:
            if region.kind == _LOW or not region.pages:
                continue
            kind = _moving_kind(region.kind, 0)  # a reclaimed region holds no flagged page
            head = _PAGE_HEAD.pack(tier.code, region.number, region.generation)
            pages = []
            for k in dict.fromkeys(region.keys):
                record = entries.get(k)
                if record is not None and record.startswith(head):
                    pages.append((k, record, kind, region))
            try:
                moving = self._fetch(pages)
                reserved, _ = self._reserve_moving(lower, moving)
                moving = moving[: len(reserved)]
                try:
                    self._write([(p.key, p.view, p.crc) for p in moving], reserved)
                finally:
                    for target, _ in reserved:
                        target.inflight -= 1
                _, count, nbytes = self._commit_moving(lower, moving, reserved)
            except OSError:
                continue  # the pages go with their region
            self._stats["demoted_pages"] += count
            self._stats["demoted_bytes"] += nbytes
            self._demoted.extend(p.key for p in moving)

    def _fetch(self, pages: list[tuple[bytes, bytes, int, _Region]]) -> list[_Moving]:
        """Read pages (``(key, record, kind of region to go to, region)``) for a move: those
        read whole with their crc32c right, in order; the others are left out."""
        if not pages:
            return []
        unpack = _PAGE.unpack
        fields = [unpack(record) for _, record, _, _ in pages]
        buf = memoryview(bytearray(sum(f[4] for f in fields)))
        requests, checksums, views = [], [], []
        start = 0
        for (_, _, _, region), (_, _, _, offset, length, crc, _) in zip(pages, fields, strict=True):
            view = buf[start : start + length]
            start += length
            requests.append((region.fd, offset, length, view, 0))
            checksums.append(crc)
            views.append(view)
        try:
            done: list[Any] = read_batch(requests, checksums=checksums)
        except OSError as exc:
            if not hasattr(exc, "results"):
                raise
            done = exc.results
        return [
            _Moving(k, record, kind, view, crc)
            for (k, record, kind, _), view, crc, res in zip(
                pages, views, checksums, done, strict=True
            )
            if res == view.nbytes
        ]

    def _reserve_moving(self, tier: _Tier, moving: list[_Moving]) -> tuple[list, bool]:
        """Space in ``tier`` for pages on the move, in order, until the tier is full; called
        with the lock held. Returns the reservations and whether the tier was full."""
        reserved: list[tuple[_Region, int]] = []
        try:
            for page in moving:
                reserved.append(self._reserve(tier, page.kind, page.view.nbytes))
        except TierFullError:
            return reserved, True
        except BaseException:
            for region, _ in reserved:
                region.inflight -= 1
            raise
        return reserved, False

    def _commit_moving(
        self, tier: _Tier, moving: list[_Moving], reserved: list[tuple[_Region, int]]
    ) -> tuple[list[tuple[_Tier, _Region]], int, int]:
        """Point the keys of pages written to ``tier`` at their new places, those whose key
        still maps to the record read, in one index batch; called with the lock held.
        Returns the regions the pages left (to reclaim if emptied), the pages and bytes
        moved."""
        entries = self._entries
        batch = rocksdict.WriteBatch(raw_mode=True)
        done = []
        for page, (region, offset) in zip(moving, reserved, strict=True):
            if entries.get(page.key) != page.record:
                continue  # deleted, replaced or moved since it was read
            flags = _entry(page.record).flags
            length = page.view.nbytes
            record = _PAGE.pack(
                tier.code, region.number, region.generation, offset, length, page.crc, flags
            )
            batch.put(_PAGE_PREFIX + page.key, record)
            done.append((page, record, region, length, flags))
        self._commit(batch)
        unlinked = []
        nbytes = 0
        for page, record, region, length, flags in done:
            unlinked.append(self._unlink(page.record))
            entries[page.key] = record
            self._link(page.key, tier, region, length, flags)
            nbytes += length
        return unlinked, len(done), nbytes

    def _write(self, prepared: Sequence[tuple], reserved: list[tuple[_Region, int]]) -> None:
        """Write pages (``(key, view, crc)``) to their reserved places, and with ``sync``
        make them durable: what must be done before their index records are committed."""
        if len(prepared) <= _INLINE_WRITES:
            for (_, view, _), (region, offset) in zip(prepared, reserved, strict=True):
                _pwrite_all(region, offset, view)
        elif prepared:
            write_batch(_batch.coalesced(prepared, reserved, self.pack_below, self.small_align))
        if self._sync:
            for fd in {region.fd for region, _ in reserved}:
                os.fdatasync(fd)

    # ----------------------------------------------------------------- writes

    def put(self, key: bytes | str, data: Any, tier: str | None = None, pin: bool = False,
            dirty: bool = False, priority: str = "normal") -> None:  # fmt: skip
        """Store one page; see :meth:`put_many`."""
        self.put_many([(key, data)], tier=tier, pin=pin, dirty=dirty, priority=priority)

    def put_many(
        self,
        items: Iterable[tuple[bytes | str, Any]],
        tier: str | None = None,
        pin: bool = False,
        dirty: bool = False,
        records: Iterable[tuple[bytes | str, Any]] | None = None,
        priority: str = "normal",
    ) -> list[PageLocation]:
        """Store pages: write them all with one engine batch, then commit one index batch.

        Parameters
        ----------
        items
            ``(key, data)`` pairs. ``key`` is bytes or str (UTF-8), not empty; ``data`` is
            any host buffer of at most ``region_size`` bytes and must not change until the
            call returns. An existing key is replaced (flags included); if a key appears
            twice, the last one wins.
        tier
            Tier name; None for the store's first tier.
        pin
            Never evict these pages (until :meth:`unpin`).
        dirty
            The pages are not persisted elsewhere yet: never evict them (until
            :meth:`mark_clean`).
        records
            ``(name, value)`` pairs, as for :meth:`put_records`, committed in the same index
            batch as the pages, once their bytes are written: the records are stored if and
            only if the pages are (they stay when the pages are later evicted or deleted).
            With no pages, the records alone are stored.
        priority
            ``"low"``, ``"normal"`` or ``"high"``: the pages go to regions of that priority
            only, and regions are reclaimed low first, high last. Pages put pinned or dirty
            go to regions of their own whatever their priority (reclaimed as normal ones
            once every page there is unpinned and clean).

        Raises
        ------
        TierFullError
            The tier cannot take the pages even after eviction; nothing was stored.
        ValueError
            An empty key, a page larger than a region, an unknown tier or priority, a bad
            record (as for :meth:`put_records`); nothing was stored.
        TypeError
            A key that is neither bytes nor str, data that is not a host buffer, a priority
            that is not a str.
        OSError
            The write or the index commit failed; nothing was stored.

        Returns
        -------
        list[PageLocation]
            Where each page went, in the order of ``items``.
        """
        target = self._tier(tier)
        flags = (_PIN if pin else 0) | (_DIRTY if dirty else 0)
        kind = _priority_kind(priority)
        if flags:
            kind = _STICKY
        region_size = self.region_size
        items = items if type(items) is list else list(items)
        prepared = _batch.prepared(items, region_size)  # the common case, in one pass
        if prepared is None:
            prepared = _prepared(items, region_size)
        named = _encode_records(records, "put_many records") if records is not None else []
        if not prepared:
            if named:
                self._put_records(named)
            return []
        with self._lock:
            self._check_open()
            reserved = self._reserve_many(target, kind, [view.nbytes for _, view, _ in prepared])
            self._active += 1
        return self._write_and_commit(
            prepared,
            reserved,
            lambda: self._commit_pages(target, flags, prepared, reserved, named),
        )

    def _write_and_commit(self, prepared: Sequence[tuple], reserved: list, commit) -> Any:
        """Write pages (``(key, view, crc)``) to the places reserved for them, outside the
        lock (the caller counted itself in ``_active`` under it); then, under the lock,
        release the reservations and, when the write succeeded, return ``commit()``."""
        written = False
        try:
            self._write(prepared, reserved)
            written = True
        finally:
            with self._lock:
                for region, _ in reserved:
                    region.inflight -= 1
                self._active -= 1
                self._idle.notify_all()
                if written:
                    done = commit()
        return done

    def _commit_pages(
        self, tier: _Tier, flags: int, prepared, reserved, named
    ) -> list[PageLocation]:
        puts, new, located = _batch.page_records(
            prepared, reserved, tier.code, flags, tier.name, _PAGE_PREFIX, PageLocation
        )
        self._commit(_sorted_batch(puts, named))
        replaced, runs = _batch.index_pages(new, self._entries)
        unlinked = [self._unlink(old) for old in replaced]
        for region, keys, nbytes in runs:
            self._link_many(keys, tier, region, nbytes, flags)
        self._reclaim_emptied(unlinked)
        return located

    def delete(self, key: bytes | str) -> bool:
        """Remove a page; True if it was there.

        Its bytes stay in the region (and readers holding its location may still read them)
        until the region is reclaimed: at once when it was the last page of a sealed region
        (the space is reused before any region never written), else by the watermarks.
        """
        k = _encode_key(key)
        with self._lock:
            self._check_open()
            record = self._entries.get(k)
            if record is None:
                return False
            batch = rocksdict.WriteBatch(raw_mode=True)
            batch.delete(_PAGE_PREFIX + k)
            self._commit(batch)
            del self._entries[k]
            self._reclaim_emptied([self._unlink(record)])
            return True

    def _set_flags(self, key: bytes | str, set_bits: int, clear_bits: int) -> None:
        k = _encode_key(key)
        with self._lock:
            self._check_open()
            record = self._entries.get(k)
            if record is None:
                raise PageNotFoundError(f"no page under key {key!r}")
            entry = _entry(record)
            flags = (entry.flags | set_bits) & ~clear_bits
            if flags == entry.flags:
                return
            new = _PAGE.pack(*entry._replace(flags=flags))
            batch = rocksdict.WriteBatch(raw_mode=True)
            batch.put(_PAGE_PREFIX + k, new)
            self._commit(batch)
            tier, region = self._unlink(record)
            self._entries[k] = new
            # The page stays in its region: its key is in the region's keys already.
            self._count(tier, region, entry.length, flags, +1)

    def pin(self, key: bytes | str) -> None:
        """Keep a page from eviction until :meth:`unpin`; raises PageNotFoundError on a miss."""
        self._set_flags(key, _PIN, 0)

    def pinned(self, key: bytes | str) -> bool:
        """True for a page stored and pinned; False for one not pinned, or not stored."""
        k = _encode_key(key)
        with self._lock:
            self._check_open()
            record = self._entries.get(k)
            return record is not None and bool(_entry(record).flags & _PIN)

    def unpin(self, key: bytes | str) -> None:
        """Let a pinned page be evicted again; raises PageNotFoundError on a miss."""
        self._set_flags(key, 0, _PIN)

    def mark_clean(self, key: bytes | str) -> None:
        """Record that a dirty page is persisted elsewhere (evictable again, unless pinned);
        raises PageNotFoundError on a miss."""
        self._set_flags(key, 0, _DIRTY)

    # ----------------------------------------------------------------- moves between tiers

    def move(self, keys: Iterable[bytes | str], tier: str, priority: str | None = None) -> int:
        """Move pages to another tier (to promote them, say), keeping key, crc32c, flags and
        priority; or, with ``priority``, to regions of that priority (in ``tier``, their
        own tier included: to change the priority of pages cached already).

        Pages are read (their crc32c checked), space is reserved in ``tier`` under the
        store's lock, they are written outside it, then their index records are committed,
        a few tens of MiB at a time. A page moves only if its key still maps to the very
        page read when the records are committed.

        Parameters
        ----------
        keys
            Keys (bytes or str) of the pages to move. Keys without a page, pages already in
            ``tier``, pages that read wrong and pages deleted, replaced or evicted while
            being moved are skipped.
        tier
            Name of the tier to move them to, faster or slower.
        priority
            ``"low"``, ``"normal"`` or ``"high"``: the priority the pages take (pinned and
            dirty ones stay in regions of their own, and are skipped in their own tier);
            pages in ``tier`` already in regions of that priority are skipped. None: each
            page keeps its own.

        Returns
        -------
        int
            Pages moved. When ``tier`` is full (even after eviction), the move stops there
            and returns what it moved so far.

        Raises
        ------
        ValueError
            An empty key, an unknown tier, a closed store.
        TypeError
            A key that is neither bytes nor str, a tier name that is not a str.
        OSError
            A read or write of the engine, or the index commit, failed in a way other than a
            page that reads wrong; pages moved before stay moved.
        """
        if not isinstance(tier, str):
            raise TypeError(f"move: tier must be a tier name (str), got {type(tier).__name__}")
        if isinstance(keys, (str, bytes, bytearray, memoryview)):
            raise TypeError("move: expected an iterable of keys, got one key")
        kind = None if priority is None else _priority_kind(priority)
        pending = list(dict.fromkeys(_encode_key(key) for key in keys))
        target = self._tier(tier)
        with self._lock:
            self._check_open()
        moved = 0
        start = 0
        while start < len(pending):
            with self._lock:
                self._check_open()
                pages, start = self._pages_to_move(pending, start, target, kind)
                if not pages:
                    continue
                self._active += 1
            try:
                moving = self._fetch(pages)
            finally:
                with self._lock:
                    self._active -= 1
                    self._idle.notify_all()
            count, full = self._place(moving, target)
            moved += count
            if full:
                break
        return moved

    def _pages_to_move(
        self, pending: list[bytes], start: int, target: _Tier, kind: int | None = None
    ) -> tuple[list[tuple[bytes, bytes, int, _Region]], int]:
        """The next pages of ``pending`` from ``start`` to move to ``target`` (into regions
        of ``kind`` when given), up to about ``_MOVE_CHUNK`` bytes, and where the next
        round starts; called with the lock held."""
        entries, by_code, unpack = self._entries, self._by_code, _PAGE.unpack
        pages = []
        nbytes = 0
        while start < len(pending) and nbytes < _MOVE_CHUNK:
            k = pending[start]
            start += 1
            record = entries.get(k)
            if record is None:
                continue
            code, number, _, _, length, _, flags = unpack(record)
            region = by_code[code].regions[number]
            going = _moving_kind(region.kind if kind is None else kind, flags)
            if code == target.code and (kind is None or going == region.kind):
                continue  # where it should be already
            pages.append((k, record, going, region))
            nbytes += length
        return pages, start

    def _place(self, moving: list[_Moving], target: _Tier) -> tuple[int, bool]:
        """Reserve, write and commit pages read for :meth:`move`; returns how many moved and
        whether ``target`` was full."""
        if not moving:
            return 0, False
        with self._lock:
            self._check_open()
            reserved, full = self._reserve_moving(target, moving)
            if not reserved:
                return 0, full
            self._active += 1
        moving = moving[: len(reserved)]

        def commit() -> int:
            unlinked, count, nbytes = self._commit_moving(target, moving, reserved)
            self._stats["moved_pages"] += count
            self._stats["moved_bytes"] += nbytes
            self._reclaim_emptied(unlinked)
            return count

        prepared = [(p.key, p.view, p.crc) for p in moving]
        return self._write_and_commit(prepared, reserved, commit), full

    def region_keys(self, tier: str, region: int) -> list[bytes]:
        """The keys of the pages in a region now (an empty list for a region not in use or
        out of the tier), to move them all with :meth:`move`, say.

        Raises
        ------
        ValueError
            An unknown tier, a closed store.
        TypeError
            A tier name that is not a str, a region number that is not an int.
        """
        if not isinstance(tier, str):
            raise TypeError(
                f"region_keys: tier must be a tier name (str), got {type(tier).__name__}"
            )
        if isinstance(region, bool) or not isinstance(region, int):
            raise TypeError(f"region_keys: region must be an int, got {type(region).__name__}")
        with self._lock:
            self._check_open()
            t = self._tier(tier)
            r = t.regions.get(region)
            if r is None or r.state == _FREE:
                return []
            head = _PAGE_HEAD.pack(t.code, r.number, r.generation)
            entries = self._entries
            return [k for k in dict.fromkeys(r.keys) if entries.get(k, b"").startswith(head)]

    # ----------------------------------------------------------------- records

    def put_records(
        self,
        items: Iterable[tuple[bytes | str, Any]],
        *,
        delete: Iterable[bytes | str] = (),
        sync: bool = False,
    ) -> None:
        """Store records, all in one index batch (all or none).

        Parameters
        ----------
        items
            ``(name, value)`` pairs. ``name`` is bytes or str (UTF-8), not empty; ``value``
            is a bytes-like host buffer of at most :data:`MAX_RECORD_SIZE` (64 KiB) bytes.
            An existing name is replaced; if a name appears twice, the last one wins.
        delete
            Names of records removed in the same batch (before the puts).
        sync
            Commit with the index's write-ahead log synced to disk (durable across a crash
            of the machine, not only of the process), whatever the store's ``sync``.

        Raises
        ------
        ValueError
            An empty name, a value over ``MAX_RECORD_SIZE``, an item that is not a pair;
            nothing was stored.
        TypeError
            A name that is neither bytes nor str, a value that is not a buffer.
        OSError
            The index commit failed; nothing was stored.
        """
        named = _encode_records(items, "put_records")
        if isinstance(delete, (str, bytes, bytearray, memoryview)):
            raise TypeError("put_records: delete must be an iterable of names, got one name")
        gone = [_RECORD_PREFIX + _encode_key(name, "record name") for name in delete]
        if named or gone:
            self._put_records(named, gone, sync)

    def _put_records(self, named: list[tuple[bytes, bytes]], gone=(), sync=False) -> None:
        batch = rocksdict.WriteBatch(raw_mode=True)
        for key in gone:
            batch.delete(key)
        for key, value in named:
            batch.put(key, value)
        opts = None
        if sync and not self._sync:
            opts = rocksdict.WriteOptions()
            opts.sync = True
        with self._lock:
            self._check_open()
            self._commit(batch, opts)

    def delete_records(self, names: Iterable[bytes | str]) -> None:
        """Remove records, all in one index batch; names without a record are ignored.

        Raises
        ------
        ValueError, TypeError
            A name that is empty, or neither bytes nor str; nothing was removed.
        """
        if isinstance(names, (str, bytes, bytearray, memoryview)):
            raise TypeError("delete_records: expected an iterable of names, got one name")
        keys = [_RECORD_PREFIX + _encode_key(name, "record name") for name in names]
        if not keys:
            return
        batch = rocksdict.WriteBatch(raw_mode=True)
        for key in keys:
            batch.delete(key)
        with self._lock:
            self._check_open()
            self._commit(batch)

    def get_record(self, name: bytes | str) -> bytes | None:
        """The value of the record ``name``, or None if there is none."""
        key = _RECORD_PREFIX + _encode_key(name, "record name")
        with self._lock:
            self._check_open()
            try:
                return self._db.get(key)
            except Exception as exc:
                raise _db_error(exc, self.index_path) from exc

    def records(self, prefix: bytes | str = b"") -> Iterator[tuple[bytes, bytes]]:
        """``(name, value)`` of every record whose name starts with ``prefix``, by name.

        A scan of the index, read a few hundred records at a time (no more is held in
        memory): records put or deleted while it runs may or may not be seen, and one that
        stays is seen once. Raises ValueError at its next step if the store is closed.
        """
        if isinstance(prefix, str):
            prefix = prefix.encode("utf-8")
        elif isinstance(prefix, (bytes, bytearray, memoryview)):
            prefix = bytes(prefix)
        else:
            raise TypeError(f"records: prefix must be bytes or str, got {type(prefix).__name__}")
        with self._lock:
            self._check_open()
        return self._scan_records(_RECORD_PREFIX + prefix)

    def _scan_records(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        start = prefix
        while True:
            chunk = self._record_chunk(start, prefix)
            for key, value in chunk:
                yield key[len(_RECORD_PREFIX) :], value
            if len(chunk) < _RECORD_CHUNK:
                return
            start = chunk[-1][0] + b"\0"  # the next key after the last one seen

    def _record_chunk(self, start: bytes, prefix: bytes) -> list[tuple[bytes, bytes]]:
        chunk: list[tuple[bytes, bytes]] = []
        with self._lock:  # the index iterator lives and dies inside it: close() cannot race
            self._check_open()
            try:
                for key, value in self._db.items(from_key=start):
                    if not key.startswith(prefix):
                        break
                    chunk.append((key, value))
                    if len(chunk) == _RECORD_CHUNK:
                        break
            except Exception as exc:
                raise _db_error(exc, self.index_path) from exc
        return chunk

    # ----------------------------------------------------------------- reads

    def _read(
        self,
        keys: list[bytes],
        views: list[memoryview],
        names: list,
        skip: frozenset[str] = frozenset(),
        drop_failed: bool = False,
    ) -> list[Any]:
        """Read pages into views: per item its length, None (miss), or the exception,
        which carries the page's tier name as ``tier``.

        A page whose region was reclaimed during the read is looked up again once; a crc32c
        mismatch in an unchanged region drops the entry and yields PageCorruptedError, and
        so does any I/O error with ``drop_failed``. Pages in the tiers named in ``skip``
        are not read: misses.
        """
        results: list[Any] = [None] * len(keys)
        todo = list(range(len(keys)))
        for _attempt in range(2):
            if not todo:
                break
            reads = []  # (slot, record, tier, region, generation, page end)
            requests, checksums = [], []
            with self._lock:
                self._check_open()
                entries, by_code, unpack = self._entries, self._by_code, _PAGE.unpack
                for i in todo:
                    record = entries.get(keys[i])
                    if record is None:
                        results[i] = None
                        continue
                    code, number, generation, offset, length, crc, _ = unpack(record)
                    tier = by_code[code]
                    if skip and tier.name in skip:
                        results[i] = None
                        continue
                    if views[i].nbytes < length:
                        raise ValueError(
                            f"buffer of {views[i].nbytes} bytes is smaller than page "
                            f"{names[i]!r} of {length} bytes"
                        )
                    region = tier.regions[number]
                    region.last_access = next(self._clock)
                    reads.append((i, record, tier, region, generation, offset + length))
                    requests.append((region.fd, offset, length, views[i], 0))
                    checksums.append(crc)
                if not reads:
                    break
                self._active += 1
            try:
                try:
                    done: list[Any] = read_batch(requests, direct=self._direct, checksums=checksums)
                except OSError as exc:
                    if not hasattr(exc, "results"):
                        raise
                    done = exc.results
            finally:
                with self._lock:
                    self._active -= 1
                    self._idle.notify_all()
            todo = []
            corrupt = []
            for (i, record, tier, region, generation, end), res in zip(reads, done, strict=True):
                if region.generation != generation:
                    todo.append(i)  # reclaimed under us: the page may have moved
                    results[i] = None
                    continue
                if isinstance(res, PageCorruptedError) and _cut_short(region, end):
                    res = OSError(errno.EIO, "region file cut short under its pages", region.path)
                if isinstance(res, BaseException):
                    res.tier = tier.name
                    if isinstance(res, PageCorruptedError) or (
                        drop_failed and isinstance(res, OSError)
                    ):
                        corrupt.append((i, record))
                results[i] = res
            if corrupt:
                self._drop(corrupt, keys)
        return results

    def _drop(self, corrupt: list[tuple[int, bytes]], keys: list[bytes]) -> None:
        """Remove the pages that read wrong, unless their keys were put again since: the
        records compare equal only if the key still maps to the very page read."""
        with self._lock:
            if self._closed:
                return
            batch = rocksdict.WriteBatch(raw_mode=True)
            gone = []
            for i, record in corrupt:
                k = keys[i]
                if self._entries.get(k) == record:
                    batch.delete(_PAGE_PREFIX + k)
                    gone.append((k, record))
            self._commit(batch)
            unlinked = []
            for k, record in gone:
                if self._entries.get(k) == record:
                    del self._entries[k]
                    unlinked.append(self._unlink(record))
            self._reclaim_emptied(unlinked)

    def get_into(self, key: bytes | str, buf: Any) -> int:
        """Read a page into the start of ``buf``.

        Parameters
        ----------
        key
            The page's key.
        buf
            Writable host buffer (bytearray, numpy array, torch CPU tensor...) of at least
            the page's length.

        Returns
        -------
        int
            The page length.

        Raises
        ------
        PageNotFoundError
            No page under ``key`` (or it was evicted while being read).
        PageCorruptedError
            The bytes read do not match the page's crc32c; the page has been dropped.
        ValueError
            ``buf`` is smaller than the page.
        """
        k = _encode_key(key)
        result = self._read([k], [_dest_view(buf, "get_into buffer")], [key])[0]
        if result is None:
            raise PageNotFoundError(f"no page under key {key!r}")
        if isinstance(result, BaseException):
            raise result
        return result

    def get_many_into(
        self,
        items: Iterable[tuple[bytes | str, Any]],
        *,
        on_error: Callable[[int, str, OSError], None] | None = None,
        skip: frozenset[str] = frozenset(),
    ) -> list[int | None]:
        """Read many pages with one engine batch.

        Parameters
        ----------
        items
            ``(key, buffer)`` pairs; each page goes to the start of its buffer.
        on_error
            With it, a page whose read fails with an I/O error is dropped from the store
            and counts as a miss, and ``on_error(item index, tier name, error)`` is
            called for it (a region file found shorter than its pages is such an error,
            EIO); without it, the first such error is raised.
        skip
            Names of tiers not to read (failing ones): their pages count as misses.

        Returns
        -------
        list of int or None
            Per item the page length, or None for a miss or for a page dropped because its
            crc32c did not match.

        Raises
        ------
        ValueError
            A buffer smaller than its page (before any read).
        OSError
            An I/O error other than a checksum mismatch, without ``on_error``.
        """
        keys, views, names = [], [], []
        for i, item in enumerate(items):
            try:
                key, buf = item
            except (TypeError, ValueError):
                raise ValueError(
                    f"get_many_into item {i}: expected (key, buffer), got {item!r}"
                ) from None
            keys.append(_encode_key(key))
            views.append(_dest_view(buf, f"get_many_into item {i}"))
            names.append(key)
        results = self._read(keys, views, names, skip, drop_failed=on_error is not None)
        for i, res in enumerate(results):
            if isinstance(res, PageCorruptedError):
                results[i] = None
            elif isinstance(res, BaseException):
                res.index = i
                if on_error is None or not isinstance(res, OSError):
                    raise res
                results[i] = None
                on_error(i, res.tier, res)
        return results

    def locate(self, keys: Iterable[bytes | str], touch: bool = True) -> list[PageLocation | None]:
        """Where pages are, for reading them elsewhere (see :class:`RegionReader`).

        Returns one :class:`PageLocation` per key, None for a miss. A location stays valid
        until its region is reclaimed; a reader detects that by the generation check.
        ``touch``: mark the regions found as used now (for the eviction order); a lookup
        that reads nothing (an account of the cache, say) passes False.
        """
        encoded = [_encode_key(key) for key in keys]
        out: list[PageLocation | None] = []
        with self._lock:
            self._check_open()
            entries, by_code, unpack = self._entries, self._by_code, _PAGE.unpack
            for k in encoded:
                record = entries.get(k)
                if record is None:
                    out.append(None)
                    continue
                code, number, generation, offset, length, crc, _ = unpack(record)
                tier = by_code[code]
                region = tier.regions[number]
                if touch:
                    region.last_access = next(self._clock)
                out.append(
                    PageLocation(tier.name, number, region.path, offset, length, crc, generation)
                )
        return out

    def touch(self, regions: Iterable[tuple[str, int]]) -> None:
        """Mark regions as used now, for the eviction order: their pages were read through
        locations handed out earlier (see :meth:`locate`). Unknown regions are ignored."""
        with self._lock:
            self._check_open()
            for name, number in regions:
                tier = self._tiers.get(name)
                region = tier.regions.get(number) if tier is not None else None
                if region is not None:
                    region.last_access = next(self._clock)

    def contains(self, key: bytes | str) -> bool:
        """True if a page is stored under ``key``."""
        k = _encode_key(key)
        with self._lock:
            self._check_open()
            return k in self._entries

    def absent(self, keys: list[bytes | str]) -> list[int]:
        """The places in ``keys`` of those not in the store (see :meth:`contains`), with
        one look at the index's lock."""
        if all(type(k) is bytes and k for k in keys):
            encoded = keys
        else:
            encoded = [k if type(k) is bytes and k else _encode_key(k) for k in keys]
        with self._lock:
            self._check_open()
            entries = self._entries
            return [i for i, k in enumerate(encoded) if k not in entries]

    def __contains__(self, key: bytes | str) -> bool:
        return self.contains(key)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    # ----------------------------------------------------------------- space

    @property
    def tier_paths(self) -> dict[str, str]:
        """Tier name -> directory, what a :class:`RegionReader` needs."""
        return {name: tier.dir for name, tier in self._tiers.items()}

    def open_for_reader(self, tier: str, region: int | None) -> int:
        """A new read-only descriptor of a region file, or of a tier's generation table, to
        hand to a reader in another process (see :meth:`RegionReader.adopt`).

        The file is opened beneath the tier directory the store holds open and checked,
        without following a symbolic link, with O_CLOEXEC: a path changed since the store
        opened cannot redirect it.

        Parameters
        ----------
        tier
            Tier name.
        region
            Region number, or None for the tier's ``generations`` table.

        Returns
        -------
        int
            The descriptor; the caller owns it and closes it.

        Raises
        ------
        ValueError
            An unknown tier, a region number outside the tier, or a closed store.
        FileNotFoundError
            The region has no file (it was never used).
        PermissionError
            The name is a symbolic link or not a regular file.
        """
        with self._lock:  # the directory descriptors stay open until close() takes it
            self._check_open()
            if not isinstance(tier, str):
                raise ValueError(f"open_for_reader: tier must be a tier name, got {tier!r}")
            t = self._tier(tier)
            if region is None:
                dir_fd, name, path = t.dir_fd, GENERATIONS_FILE, generations_path(t.dir)
                what = f"tier {t.name} generation table"
            elif isinstance(region, bool) or not isinstance(region, int):
                raise ValueError(f"open_for_reader: region must be an int or None, got {region!r}")
            elif not 0 <= region < t.count:
                raise ValueError(
                    f"open_for_reader: tier {t.name} has regions 0 to {t.count - 1}, got {region}"
                )
            else:
                path = region_path(t.dir, region)
                dir_fd, name = t.regions_fd, os.path.basename(path)
                what = f"tier {t.name} region file"
            # O_NONBLOCK: no wait on a FIFO in place of the file; cleared once it is checked.
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
            try:
                fd = os.open(name, flags, dir_fd=dir_fd)
            except OSError as exc:
                raise open_failure(exc, dir_fd, name, path, what) from None
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise refusal(path, what, "is not a regular file", "remove it")
                os.set_blocking(fd, True)
            except BaseException:
                os.close(fd)
                raise
            return fd

    def usage(self) -> dict[str, TierUsage]:
        """Space accounting per tier name."""
        with self._lock:
            self._check_open()
            return {
                name: TierUsage(
                    capacity=t.capacity,
                    region_size=self.region_size,
                    regions_total=t.count,
                    regions_used=t.used,
                    allocated_bytes=t.used * self.region_size,
                    live_bytes=t.live_bytes,
                    filled_bytes=t.filled,
                    pages=t.pages,
                    pinned_bytes=t.pinned_bytes,
                    dirty_bytes=t.dirty_bytes,
                )
                for name, t in self._tiers.items()
            }

    def stats(self) -> dict[str, int]:
        """Counters since the store opened, each only growing.

        Returns
        -------
        dict[str, int]
            ``evicted_pages``, ``evicted_bytes``: pages dropped by reclaims for capacity
            (the watermarks, :meth:`evict`), demoted ones not counted;
            ``demoted_pages``, ``demoted_bytes``: pages moved to the tier below instead
            (``demote=True``); ``moved_pages``, ``moved_bytes``: pages moved by
            :meth:`move`; ``regions_reclaimed``: regions reclaimed, for capacity or because
            their last page was deleted, replaced or moved.
        """
        with self._lock:
            return dict(self._stats)

    def take_demoted(self) -> list[bytes]:
        """The keys of the pages demoted since the last call (the last
        :data:`_DEMOTED_LOG` of them at most, oldest first; a key may since have been moved,
        deleted or evicted): what a caller that moves pages read often back up needs to
        tell them from pages put in a slower tier on purpose."""
        with self._lock:
            keys = list(self._demoted)
            self._demoted.clear()
        return keys

    def evict(self, tier: str, to_bytes: int) -> int:
        """Reclaim regions of ``tier`` until its allocated bytes are at most ``to_bytes`` or
        no region may go: regions without live bytes first, then those of low, normal and
        high priority, least recently used first within each. With ``demote=True``, their
        pages worth keeping move to the tier below first (see :class:`PageStore`).

        Regions with pinned or dirty pages, open regions and regions being written are kept.

        Returns
        -------
        int
            Allocated bytes freed (a multiple of ``region_size``).
        """
        if isinstance(to_bytes, bool) or not isinstance(to_bytes, int):
            raise TypeError(f"evict: to_bytes must be an int, got {type(to_bytes).__name__}")
        if to_bytes < 0:
            raise ValueError(f"evict: to_bytes must be >= 0, got {to_bytes}")
        with self._lock:
            self._check_open()
            t = self._tier(tier)
            return self.region_size * self._reclaim_lru(t, to_bytes // self.region_size)

    # ----------------------------------------------------------------- lifetime

    def close(self) -> None:
        """Wait for I/O in progress, then close the index, region files and tables.

        Idempotent. Committed pages survive; the store can be opened again.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            while self._active:
                self._idle.wait()
            if self._unsaved and self._db is not None:
                self._commit(rocksdict.WriteBatch(raw_mode=True))
        self._release()

    def _release(self) -> None:
        self._closed = True
        if self._db is not None:
            self._db.close()
            self._db = None
        for tier in self._tiers.values():
            for region in tier.regions.values():
                if region.fd >= 0:
                    os.close(region.fd)
                    region.fd = -1
            if tier.table is not None:
                tier.table.close()
                tier.table = None
            if tier.lock_fd >= 0:
                os.close(tier.lock_fd)
                tier.lock_fd = -1
            for fd in (tier.regions_fd, tier.dir_fd):
                if fd >= 0:
                    os.close(fd)
            tier.regions_fd = tier.dir_fd = -1

    def __enter__(self) -> PageStore:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._entries)} pages"
        return f"<PageStore {self.index_path} tiers={list(self._tiers)} {state}>"
