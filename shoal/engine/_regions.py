"""Region files, the shared generation table, page locations and the out-of-process reader.

A tier directory of the page store looks like this::

    <tier>/generations      one little-endian u64 per region, shared through mmap
    <tier>/regions/000017   fixed-size region files
    <tier>/lock             held (flock) by the one PageStore that writes the tier

The writer bumps a region's generation in ``generations`` before it writes new data into a
reclaimed region, so a reader that checks the generation after its read can tell whether the
bytes it read still belong to the page it asked for.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import struct
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .._errors import PageCorruptedError, StaleLocationError
from ._crc import FAULTED, copy_verify_many, memory_backed
from ._engine import get_backend, in_parts, read_batch, submit_reads
from ._requests import OFFSET_MAX, host_view

__all__ = ["TIER_NAMES", "GenerationTable", "PageLocation", "RegionReader", "region_path"]

TIER_NAMES = ("MEM", "SSD", "HDD")
REGIONS_DIR = "regions"
GENERATIONS_FILE = "generations"
_U64 = struct.Struct("<Q")


def region_path(tier_dir: str, number: int) -> str:
    """Path of region ``number`` in a tier directory."""
    return os.path.join(tier_dir, REGIONS_DIR, f"{number:06d}")


def generations_path(tier_dir: str) -> str:
    """Path of a tier's shared generation table."""
    return os.path.join(tier_dir, GENERATIONS_FILE)


class GenerationTable:
    """The ``generations`` file of a tier: one little-endian u64 per region, via mmap.

    The writer opens it with ``count`` entries (as many as the tier has regions in use, or
    more) and opens it again with a larger count as regions come into use; the file is
    allocated, never sparse. Readers open it read-only and map it again when asked about a
    region past the end of their mapping (the writer may have grown it since).
    """

    def __init__(self, path: str, count: int | None = None, *, fd: int | None = None):
        self.path = path
        self.writable = count is not None
        if fd is not None and self.writable:
            raise ValueError("GenerationTable: an adopted descriptor is read-only (no count)")
        flags = (os.O_RDWR | os.O_CREAT) if self.writable else os.O_RDONLY
        # ``fd``: a descriptor of the table opened by someone else; the table owns it.
        self._fd = fd if fd is not None else os.open(path, flags | os.O_CLOEXEC, 0o600)
        self._map: mmap.mmap | None = None
        try:
            if self.writable and os.fstat(self._fd).st_size < count * _U64.size:
                # Allocated, not sparse: a store through the mapping into a hole of a full
                # filesystem would kill the writer with SIGBUS; this fails here instead.
                os.posix_fallocate(self._fd, 0, count * _U64.size)
            self._remap()
        except BaseException:
            self.close()
            raise

    def _remap(self) -> None:
        size = os.fstat(self._fd).st_size
        if size < _U64.size:
            raise OSError(0, "generation table is empty: not a page store tier", self.path)
        access = mmap.ACCESS_WRITE if self.writable else mmap.ACCESS_READ
        # The old mapping is left to the garbage collector: another thread may still use it.
        self._map = mmap.mmap(self._fd, size - size % _U64.size, access=access)

    def __len__(self) -> int:
        return len(self._map) // _U64.size

    def get(self, number: int) -> int | None:
        """Generation of region ``number``, or None when the table has no such region."""
        if number >= len(self) and not self.writable:
            self._remap()
        if number >= len(self):
            return None
        return _U64.unpack_from(self._map, number * _U64.size)[0]

    def set(self, number: int, generation: int) -> None:
        """Publish a region's generation (writer only)."""
        _U64.pack_into(self._map, number * _U64.size, generation)

    def flush(self) -> None:
        """Write the table to stable storage (for ``sync=True`` stores)."""
        self._map.flush()

    def close(self) -> None:
        """Unmap and close the file; idempotent."""
        if self._map is not None:
            self._map.close()
            self._map = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


@dataclass(slots=True, unsafe_hash=True)
class PageLocation:
    """Where a page lives, with what a reader in another process needs to check it. Never
    changed once made; hashed by value (not frozen only because a frozen dataclass takes
    five times as long to make, and a load of small files makes one per file).

    Attributes
    ----------
    tier
        Tier name (``"MEM"``, ``"SSD"`` or ``"HDD"``).
    region
        Region number within the tier.
    path
        Path of the region file.
    offset
        Byte offset of the page in the region file: a multiple of the store's page_align for
        pages of pack_below bytes or more, of its small_align for shorter ones.
    length
        Page length in bytes.
    crc32c
        crc32c of the page bytes.
    generation
        Generation of the region when the page was written; the location is valid only
        while the tier's ``generations`` table still holds this value for the region.
    """

    tier: str
    region: int
    path: str
    offset: int
    length: int
    crc32c: int
    generation: int


class RegionReader:
    """Reads pages by :class:`PageLocation`, without access to the page store's index.

    Meant for a process other than the store's owner (a short-circuit client): it gets
    locations from the owner, reads the region files with the engine, checks each page's
    crc32c, then checks that the region's generation has not changed during the read. A
    read never returns bytes of another page: a location whose region was reclaimed raises
    :class:`~shoal.engine.StaleLocationError` (ask the owner again), and bytes that do not
    match their crc32c raise :class:`~shoal.engine.PageCorruptedError`.

    Region files are opened from the tier directories given here, never from
    ``PageLocation.path``, so a peer cannot make the reader open arbitrary files. A reader
    without access to the directories reads through descriptors the owner passed to it
    instead (over a Unix socket), handed over with :meth:`adopt`.

    Parameters
    ----------
    tier_paths
        Tier name -> tier directory, e.g. ``PageStore.tier_paths``; None or empty to read
        only through adopted descriptors.
    direct
        Read with O_DIRECT where buffer, offset and length are aligned.
    map_memory
        Copy pages of region files that live in memory (tmpfs, ramfs: the MEM tier) out
        of a read-only mapping of the file, checking the crc32c of each piece right after
        its copy, instead of reading them through the kernel and checking them in a
        second pass. A mapped file truncated under the reader fails the pages past its new
        end (:class:`~shoal.engine.StaleLocationError`) instead of killing the process
        with SIGBUS, and is mapped again at its new size.

    Notes
    -----
    Thread-safe. Call :meth:`close` (or use it as a context manager) to release its file
    descriptors and mappings.
    """

    def __init__(
        self,
        tier_paths: Mapping[str, str | os.PathLike] | None = None,
        *,
        direct: bool = False,
        map_memory: bool = True,
    ):
        if tier_paths is None:
            tier_paths = {}
        if not isinstance(tier_paths, Mapping):
            raise TypeError("RegionReader: tier_paths must be a mapping of tier name -> path")
        self._dirs: dict[str, str] = {}
        for name, path in tier_paths.items():
            if name not in TIER_NAMES:
                raise ValueError(
                    f"RegionReader: tier name {name!r} is not one of {', '.join(TIER_NAMES)}"
                )
            self._dirs[name] = os.path.abspath(os.fspath(path))
        self._direct = bool(direct)
        self._lock = threading.Lock()
        self._tables: dict[str, GenerationTable] = {}
        self._fds: dict[tuple[str, int], int] = {}
        # Region -> read-only mapping of its file, or None where it is not in memory.
        self._maps: dict[tuple[str, int], mmap.mmap | None] = {}
        # The same, by ``tier code << 32 | region``: the mapping, or the descriptor where
        # there is none.
        self._by_code: dict[int, mmap.mmap | int] = {}
        self._map_memory = bool(map_memory)
        # Region -> {page offset: the generation its crc32c was checked at}, for parts of
        # pages read again (kept while the region's mapping is).
        self._verified: dict[tuple[str, int], dict[int, int]] = {}
        self._closed = False

    def _table(self, location: PageLocation) -> GenerationTable:
        if not isinstance(location, PageLocation):
            raise TypeError(f"expected a PageLocation, got {type(location).__name__}")
        with self._lock:
            if self._closed:
                raise ValueError("RegionReader is closed")
            table = self._tables.get(location.tier)
            tier_dir = self._dirs.get(location.tier)
            if table is None and tier_dir is None:
                raise ValueError(
                    f"location names tier {location.tier!r}; this reader knows "
                    f"{', '.join(sorted({*self._dirs, *self._tables})) or 'none'}"
                )
            if table is None:
                table = self._tables[location.tier] = GenerationTable(generations_path(tier_dir))
            return table

    def _fd(self, location: PageLocation) -> int:
        with self._lock:
            if self._closed:
                raise ValueError("RegionReader is closed")
            fd = self._fds.get((location.tier, location.region))
            if fd is None:
                if location.tier not in self._dirs:
                    raise ValueError(
                        f"no descriptor for region {location.region} of tier {location.tier}"
                    )
                path = region_path(self._dirs[location.tier], location.region)
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                self._fds[location.tier, location.region] = fd
            return fd

    def read_into(self, location: PageLocation, buf: Any) -> int:
        """Read one page into the start of ``buf``.

        Parameters
        ----------
        location
            Where the page is, as handed out by :meth:`PageStore.locate`.
        buf
            Writable host buffer of at least ``location.length`` bytes.

        Returns
        -------
        int
            The page length.

        Raises
        ------
        StaleLocationError
            The region was reclaimed since the location was handed out.
        PageCorruptedError
            The bytes read do not match the page's crc32c.
        ValueError
            ``buf`` is smaller than the page.
        """
        return self.read_many_into([(location, buf)])[0]

    def read_many_into(self, items: Iterable[tuple[PageLocation, Any]]) -> list[int]:
        """Read many pages in one engine batch.

        Parameters
        ----------
        items
            ``(location, buffer)`` pairs; each page goes to the start of its buffer.

        Returns
        -------
        list of int
            Each page's length.

        Raises
        ------
        OSError
            :class:`StaleLocationError` or :class:`PageCorruptedError` (or an I/O error) of
            the first failing item, after every read completed; ``exc.index`` is that item's
            position and ``exc.results`` holds each item's length or exception, as with
            :func:`shoal.engine.read_batch`.
        """
        results: list[Any] = []
        pending: list[tuple[int, PageLocation, GenerationTable]] = []
        copied: list[tuple[int, PageLocation, GenerationTable]] = []  # out of mappings
        requests, checksums, copies = [], [], []
        for i, item in enumerate(items):
            try:
                location, buf = item
            except (TypeError, ValueError):
                raise ValueError(f"item {i}: expected (location, buffer), got {item!r}") from None
            table = self._table(location)
            view = host_view(buf, writable=True, what=f"item {i}")
            if view.nbytes < location.length:
                raise ValueError(
                    f"item {i}: buffer of {view.nbytes} bytes is smaller than the page of "
                    f"{location.length} bytes"
                )
            if table.get(location.region) != location.generation:
                results.append(_stale(location))
                continue
            fd = self._fd(location)
            results.append(None)
            key = (location.tier, location.region)
            with self._lock:
                mapped = self._map(key, fd, location.offset + location.length)
            if mapped is not None and 0 <= location.offset <= len(mapped) - location.length:
                copies.append((mapped, location.offset, location.length, view, location.crc32c))
                copied.append((i, location, table))
                continue
            pending.append((i, location, table))
            requests.append((fd, location.offset, location.length, view, 0))
            checksums.append(location.crc32c)
        if copies:
            for (i, loc, _), copy, n in zip(copied, copies, _copy_out(copies), strict=True):
                if n == FAULTED:
                    n = self._faulted(loc.tier, loc.region, copy[0], loc.offset, loc.length)
                elif n < 0:
                    n = _corrupt(loc.tier, loc.region, loc.offset, loc.length, loc.crc32c)
                results[i] = n
        if requests:
            try:
                done: list[Any] = read_batch(requests, direct=self._direct, checksums=checksums)
            except OSError as exc:
                if not hasattr(exc, "results"):
                    raise
                done = exc.results
            for (i, _, _), res in zip(pending, done, strict=True):
                results[i] = res
        for i, location, table in (*copied, *pending):
            # Checked after the read: the writer bumps it before overwriting the region.
            if table.get(location.region) != location.generation:
                results[i] = _stale(location)
        for i, res in enumerate(results):
            if isinstance(res, BaseException):
                res.index = i
                res.results = results
                raise res
        return results

    def read_located(self, items: list[tuple]) -> list[Any]:
        """Read many pages in one engine batch, for callers that hold locations as plain
        tuples (the short-circuit client): no :class:`PageLocation` objects, generations
        checked once per distinct region instead of once per page.

        Parameters
        ----------
        items
            ``(tier, region, offset, length, crc32c, generation, buffer)`` tuples; each
            page goes to the start of its buffer. An item may add ``start, n``: only bytes
            ``[start, start + n)`` of the page go to its buffer (the result is then ``n``).
            The crc32c covers the whole page, so the first such read of a page reads and
            checks all of it; later ones of a page in memory, while its region keeps the
            generation it was checked at, copy just their bytes.

        Returns
        -------
        list
            Per item, the page length or the exception that item failed with
            (:class:`StaleLocationError` when its region was reclaimed, its file truncated
            under the reader, or this reader has no descriptor of it,
            :class:`PageCorruptedError`, an I/O error). Nothing is raised for a failing
            item.

        Raises
        ------
        ValueError, TypeError
            A malformed item or buffer (as :func:`~shoal.engine.read_batch` reports them).
        """
        results: list[Any] = [None] * len(items)
        requests, checksums, slots = [], [], []
        copies: list[tuple] = []  # out of mapped region files
        copied: list[int] = []
        parts: list[tuple] = []  # (item, whole page read, start, n, destination)
        unchecked: set[int] = set()  # parts of pages checked before: copied as they are
        # The requests as the backend takes them, while each passes read_batch's checks here
        # (the usual case: one pass over the batch instead of three); None once one does not.
        checked: list[tuple] | None = []
        regions: dict[tuple[str, int], GenerationTable] = {}
        current: dict[tuple[str, int], int | None] = {}  # generation before the read
        with self._lock:
            if self._closed:
                raise ValueError("RegionReader is closed")
            fds, tables, verified = self._fds, self._tables, self._verified
            for i, item in enumerate(items):
                if len(item) == 7:
                    tier, region, offset, length, crc, generation, buf = item
                    part = None
                else:
                    tier, region, offset, length, crc, generation, buf, *part = item
                key = (tier, region)
                fd = fds.get(key)
                table = tables.get(tier)
                if fd is None or table is None:
                    results[i] = StaleLocationError(
                        f"no descriptor for region {region} of tier {tier}"
                    )
                    continue
                if key not in regions:
                    regions[key] = table
                    current[key] = table.get(region)
                if current[key] != generation:
                    results[i] = _stale_region(tier, region, generation)
                    continue
                mapped = None
                if type(offset) is int and type(length) is int:
                    mapped = self._map(key, fd, offset + length)
                if part is not None:
                    start, n = _part(i, part, length)
                    if (
                        mapped is not None
                        and 0 <= offset <= len(mapped) - length
                        and verified.get(key, _NONE).get(offset) == generation
                    ):
                        copies.append((mapped, offset + start, n, buf, 0))
                        copied.append(i)
                        unchecked.add(i)
                        continue
                    page = bytearray(length)
                    parts.append((i, page, start, n, buf))
                    buf = page
                if mapped is not None and 0 <= offset <= len(mapped) - length:
                    copies.append((mapped, offset, length, buf, crc))
                    copied.append(i)
                    continue
                requests.append((fd, offset, length, buf, 0))
                checksums.append(crc)
                slots.append(i)
                if checked is None:
                    continue
                view = None
                if type(buf) is bytearray:
                    view = memoryview(buf)
                elif (
                    type(buf) is memoryview
                    and buf.ndim == 1
                    and buf.format == "B"
                    and buf.c_contiguous
                    and not buf.readonly
                ):
                    view = buf
                if (
                    view is not None
                    and type(offset) is int
                    and type(length) is int
                    and type(crc) is int
                    and offset >= 0
                    and 0 <= length <= view.nbytes
                    and offset + length <= OFFSET_MAX
                    and 0 <= crc <= 0xFFFFFFFF
                ):
                    checked.append((fd, offset, length, view, 0, buf))
                else:
                    checked = None
        if copies:
            for i, copy, n in zip(copied, copies, _copy_out(copies), strict=True):
                if n == FAULTED:
                    results[i] = self._faulted(*items[i][:2], copy[0], copy[1], copy[2])
                elif n >= 0 or i in unchecked:
                    results[i] = copy[2]
                else:
                    results[i] = _corrupt(*items[i][:5])
        if requests:
            done: list[Any]
            if checked is not None:
                done = submit_reads(get_backend(), checked, self._direct, checksums)
            else:
                try:
                    done = read_batch(requests, direct=self._direct, checksums=checksums)
                except OSError as exc:
                    if not hasattr(exc, "results"):
                        raise
                    done = exc.results
            for i, res in zip(slots, done, strict=True):
                results[i] = res
        if requests or copies:
            # The writer bumps a region's generation before it overwrites the region.
            after = {key: table.get(key[1]) for key, table in regions.items()}
            for i in (*copied, *slots):
                tier, region, _, _, _, generation = items[i][:6]
                if after[tier, region] != generation:
                    results[i] = _stale_region(tier, region, generation)
        for i, page, start, n, buf in parts:
            if type(results[i]) is int:
                tier, region, offset, _, _, generation = items[i][:6]
                _byte_view(buf)[:n] = memoryview(page)[start : start + n]
                results[i] = n
                with self._lock:
                    if self._maps.get((tier, region)) is not None:
                        self._verified.setdefault((tier, region), {})[offset] = generation
        return results

    def mapped(self) -> tuple[dict[int, mmap.mmap | int], list[mmap.mmap | None]]:
        """What :func:`~shoal.engine._slots.read_published` reads through: the region files
        looked at so far, by ``tier code << 32 | region`` (the reader's own dict, changed
        as regions are mapped and let go), each its mapping, or its descriptor where it is
        on a disk; and each tier's generation table (by tier code)."""
        tables = self._tables
        return self._by_code, [
            None if (t := tables.get(name)) is None else t._map for name in TIER_NAMES
        ]

    def map_regions(self, codes: Iterable[int]) -> None:
        """Map the files of these regions (``tier code << 32 | region``) that the reader
        holds, at their current size, for :meth:`mapped` (those on a disk are read
        through their descriptors instead)."""
        with self._lock:
            for code in codes:
                key = region_of(code)
                fd = self._fds.get(key)
                if fd is not None:
                    self._map(key, fd, OFFSET_MAX)

    def _map(self, key: tuple[str, int], fd: int, end: int) -> mmap.mmap | None:
        """A read-only mapping of a region file in memory (lock held), made on first use and
        again for a page past its ``end`` when the file has changed size since; None for a
        file on a disk, whose pages a mapping would fault in one at a time, or an empty one."""
        mapped = self._maps.get(key, False)
        if mapped is None or (mapped is not False and end <= len(mapped)):
            return mapped
        if mapped is False and not (self._map_memory and memory_backed(fd)):
            self._maps[key] = None
            self._by_code[_code(key)] = fd  # read with pread
            return None
        try:
            size = os.fstat(fd).st_size
            if mapped is not False and size == len(mapped):
                return mapped  # the page is past the end of the file, not of the mapping
            fresh = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ) if size else False
        except (OSError, ValueError):
            fresh = None
        if fresh is False:  # empty for now: mapped once it holds pages
            self._maps.pop(key, None)
            self._by_code.pop(_code(key), None)
            return None
        # A mapping replaced here is left to the garbage collector: a read in another thread
        # may be about to copy out of it.
        self._maps[key] = fresh
        self._by_code[_code(key)] = fd if fresh is None else fresh
        return fresh

    def _faulted(
        self, tier: str, region: int, mapped: mmap.mmap, offset: int, length: int
    ) -> OSError:
        """The error of a page whose copy out of ``mapped`` raised SIGBUS. A file shorter
        than the mapping now loses it, so the next read maps the file at its new size instead
        of faulting again."""
        key = (tier, region)
        with self._lock:
            fd = self._fds.get(key)
            try:
                size = os.fstat(fd).st_size if fd is not None else None
            except OSError:
                size = None
            if self._maps.get(key) is mapped and (size is None or size < len(mapped)):
                del self._maps[key]  # not closed: another read may still copy out of it
                self._by_code.pop(_code(key), None)
                self._verified.pop(key, None)
        if size is None or size < offset + length:
            now = "no longer open" if size is None else f"now {size} bytes"
            return StaleLocationError(
                f"{length} bytes at offset {offset} of region {region} of tier {tier} are "
                f"past the end of its file ({now}): truncated under the reader"
            )
        return OSError(
            errno.EIO,
            f"reading {length} bytes at offset {offset} of region {region} of tier {tier} "
            "out of its mapped file raised SIGBUS",
        )

    def _unmap(self, key: tuple[str, int]) -> None:
        """Forget a region's mapping (lock held); a read still copying out of it keeps
        it until that read ends."""
        mapped = self._maps.pop(key, None)
        self._by_code.pop(_code(key), None)
        self._verified.pop(key, None)
        if mapped is not None:
            # Exported to a read in progress: unmapped when that read lets it go.
            with contextlib.suppress(BufferError):
                mapped.close()

    def adopt(self, tier: str, region: int | None, fd: int) -> None:
        """Read ``tier`` through ``fd``, a descriptor opened for reading by the store's
        owner: region file ``region``, or the tier's ``generations`` table when ``region``
        is None. The reader owns ``fd`` from here on (it closes it); one it held for the
        same file before is closed."""
        if tier not in TIER_NAMES:
            os.close(fd)
            raise ValueError(
                f"RegionReader: tier name {tier!r} is not one of {', '.join(TIER_NAMES)}"
            )
        table = None
        if region is None:  # on failure the table closes fd
            table = GenerationTable(f"<{tier} generations, fd {fd}>", fd=fd)
        with self._lock:
            if self._closed:
                if table is not None:
                    table.close()
                else:
                    os.close(fd)
                raise ValueError("RegionReader is closed")
            if table is not None:
                old = self._tables.pop(tier, None)
                self._tables[tier] = table
                if old is not None:
                    old.close()
            else:
                old_fd = self._fds.pop((tier, region), None)
                self._fds[tier, region] = fd
                self._unmap((tier, region))
                if old_fd is not None:
                    os.close(old_fd)

    def release(self, tier: str, region: int) -> None:
        """Close the descriptor of a region file, if the reader holds one."""
        with self._lock:
            fd = self._fds.pop((tier, region), None)
            self._unmap((tier, region))
        if fd is not None:
            os.close(fd)

    def close(self) -> None:
        """Close region files and generation tables; idempotent."""
        with self._lock:
            self._closed = True
            for key in list(self._maps):
                self._unmap(key)
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
            for table in self._tables.values():
                table.close()
            self._tables.clear()

    def __enter__(self) -> RegionReader:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


_NONE: dict[int, int] = {}


def _code(key: tuple[str, int]) -> int:
    """``tier code << 32 | region`` of ``(tier, region)``: how the native reads name a
    region (see :meth:`RegionReader.mapped`)."""
    return TIER_NAMES.index(key[0]) << 32 | key[1]


def region_of(code: int) -> tuple[str, int]:
    """``(tier, region)`` of a region's code (``tier code << 32 | region``)."""
    return TIER_NAMES[code >> 32], code & 0xFFFFFFFF


def _part(i: int, part: list, length: int) -> tuple[int, int]:
    """``(start, n)`` of item ``i``, checked to lie within its page of ``length`` bytes."""
    if len(part) != 2 or not all(type(v) is int for v in part):
        raise ValueError(f"item {i}: expected 7 fields, or 9 with an int start and length")
    start, n = part
    if start < 0 or n < 0 or start + n > length:
        raise ValueError(f"item {i}: bytes [{start}, {start + n}) are outside its page")
    return start, n


def _byte_view(buf: Any) -> memoryview:
    view = memoryview(buf)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def _copy_out(copies: list[tuple]) -> list[int]:
    """``copy_verify_many`` of ``copies``, a large batch split over the cores."""
    return in_parts(lambda a, b: copy_verify_many(copies[a:b]), [c[2] for c in copies])


def _corrupt(tier: str, region: int, offset: int, length: int, crc: int) -> PageCorruptedError:
    """The error of a page copied out of a mapping that does not match its crc32c."""
    return PageCorruptedError(
        f"crc32c mismatch: {length} bytes at offset {offset} of region {region} of tier "
        f"{tier} do not match {crc:#010x}"
    )


def _stale(location: PageLocation) -> StaleLocationError:
    return _stale_region(location.tier, location.region, location.generation, location.path)


def _stale_region(tier: str, region: int, generation: int, path: str = "") -> StaleLocationError:
    return StaleLocationError(
        f"region {region} of tier {tier} was reclaimed since this location "
        f"(generation {generation}) was handed out",
        path or None,
    )
