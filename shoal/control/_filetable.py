"""The table of published files: where the worker keeps each cached small file, in a
shared memory file that every client process on the node maps read-only, so that a
process reads warm small files with no request to the worker at all.

One writer (the worker), many readers (client processes). The table is an open-addressing
hash table of fixed 64-byte slots in a ``memfd``, keyed by a 128-bit BLAKE2b digest of the
file's Shoal path. A slot holds what reading the file's one page takes: its size, the
page's tier, region, offset, crc32c and region generation, and the monotonic time until
which the worker's metadata of the file holds (its mount's ``metadata_ttl``).

A slot is only a hint, checked three ways before a byte of it is trusted:

- its own crc32c (over the rest of the slot) and an even sequence number: the writer makes
  the number odd while it rewrites a slot, so a copy torn by a concurrent write fails;
- its key: the digest of the path asked for;
- the page itself, when it is read: the region's generation (a reclaimed region has a new
  one) and the page's crc32c, as for every short-circuit read.

The worker never changes what a live table says about a path in a way a reader could
misread: a change of what paths mean (a refresh, a mount or unmount, a freed path, an
object found changed) supersedes the whole table with a fresh one, and readers that see
the ``superseded`` flag ask for the new one; a file written, deleted or renamed through
the worker has its own slot voided in place (its time set in the past), the slots of
every other file kept. A worker that stops cleanly sets ``closed``.

The client needs this module and the engine's native probe (``engine._slots``: BLAKE2b,
linear probing, the checks of a slot's copy): no RocksDB, no worker code.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
import threading
import time
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from ..engine import PageLocation, crc32c
from ..engine._regions import TIER_NAMES
from ..engine._slots import (
    blake2b_16,
    copy_slots,
    find_files,
    located_bodies,
    put_files,
    read_published,
)
from ._namespace import MAX_PATH_BYTES, MAX_PATH_COMPONENTS

__all__ = [
    "FileTableReader",
    "FileTableWriter",
    "Published",
    "path_key",
]

MAGIC, FORMAT = b"SHFT", 2
# magic, format, slot count, flags
_HEADER = struct.Struct("<4sIII")
HEADER_SIZE = 64
# sequence, check, key, (reserved), state, tier code, (pad), region, page crc32c,
# generation, size, page offset, fresh until (monotonic ns)
_SLOT = struct.Struct("<II16sIBBHIIIIQQ")
SLOT_SIZE = _SLOT.size
assert SLOT_SIZE == 64
_FLAGS_AT = 12  # offset of the header's flags
SUPERSEDED, CLOSED = 1, 2
_EMPTY, _LIVE = 0, 1
_STATE_AT = 28  # offset of a slot's state
#: Slots a lookup probes at most before it calls a path absent.
MAX_PROBES = 256
_MIN_SLOTS, _MAX_SLOTS = 1 << 10, 1 << 28
_LOAD = 0.8  # files / slots, at most, before the table grows
_U32 = 1 << 32
_NO_KEY = bytes(16)  # a slot body's key, before put_files writes the path's
_TIER_CODES = {name: code for code, name in enumerate(TIER_NAMES)}  # as a slot tells a tier


def path_key(path: str) -> bytes:
    """The 16-byte key of a Shoal path."""
    return blake2b_16(path.encode("utf-8", "surrogateescape"))


class Published(NamedTuple):
    """A published file: its one page, and until when its metadata holds."""

    size: int
    tier: int  # tier code (index in ``TIER_NAMES``)
    region: int
    offset: int
    crc: int
    generation: int
    fresh_until_ns: int  # time.monotonic_ns() clock


def _check_slots(n: int, what: str) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or not _MIN_SLOTS <= n <= _MAX_SLOTS:
        raise ValueError(f"{what} must be an int in [{_MIN_SLOTS}, {_MAX_SLOTS}], got {n!r}")
    return n


def slots_for(files: int, load: float = 0.75) -> int:
    """Slots that hold ``files`` at ``load`` (within the bounds of a table)."""
    return min(_MAX_SLOTS, max(_MIN_SLOTS, int(files / load) + 1))


class FileTableWriter:
    """The worker's side: publishes files, supersedes the table when paths change meaning.

    Parameters
    ----------
    slots
        The first table's slots (any number: a key's first slot is its hash modulo it); it
        doubles as files are published, up to ``max_slots`` (past which files are not
        published; readers ask the worker).

    Notes
    -----
    Thread-safe. Holds no Python object per file: the table is the only copy. A growth
    copies every live slot into the new table while publishing waits; size the first
    table for the files expected.
    """

    def __init__(self, slots: int = 1 << 16, max_slots: int = _MAX_SLOTS):
        self._n = _check_slots(slots, "slots")
        self._max_n = _check_slots(max_slots, "max_slots")
        if self._max_n < self._n:
            raise ValueError("max_slots must be >= slots")
        self._lock = threading.Lock()
        self._fd = self._ro_fd = -1
        self._mm: mmap.mmap | None = None
        self._live = 0
        self.tables = 0  # tables made so far (a new one per growth or supersession)
        self._new_table(self._n)

    # ----------------------------------------------------------------- tables

    def _new_table(self, n: int) -> None:
        """Make a fresh, empty table of ``n`` slots and make it current; the old one is
        marked superseded and let go (readers keep their mappings until they move)."""
        size = HEADER_SIZE + SLOT_SIZE * n
        fd = os.memfd_create("shoal-files", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        ro = -1
        try:
            os.ftruncate(fd, size)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
            mm = mmap.mmap(fd, size)
            mm[: _HEADER.size] = _HEADER.pack(MAGIC, FORMAT, n, 0)
            # Readers get a descriptor opened read-only: they cannot map it writable.
            ro = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
        except BaseException:
            os.close(fd)
            if ro >= 0:
                os.close(ro)
            raise
        old = self._mm, self._fd, self._ro_fd
        self._mm, self._fd, self._ro_fd, self._n = mm, fd, ro, n
        self._live = 0
        self.tables += 1
        self._retire(*old, SUPERSEDED)

    @staticmethod
    def _retire(mm: mmap.mmap | None, fd: int, ro: int, flag: int) -> None:
        if mm is not None:
            flags = struct.unpack_from("<I", mm, _FLAGS_AT)[0]
            struct.pack_into("<I", mm, _FLAGS_AT, flags | flag)
            mm.close()
        for d in (fd, ro):
            if d >= 0:
                os.close(d)

    def reader_fd(self) -> int:
        """A new read-only descriptor of the current table, to pass to a client; the
        caller closes it."""
        with self._lock:
            if self._mm is None:
                raise ValueError("the file table is closed")
            return os.dup(self._ro_fd)

    def supersede(self) -> None:
        """Paths may mean something else now (a refresh, a mount change, a freed path):
        readers drop everything this table says and ask for a fresh, empty one."""
        with self._lock:
            if self._mm is not None:
                self._new_table(self._n)

    def expire(self, paths: Sequence[str]) -> int:
        """Void what the table says of ``paths`` alone, in place: each one's slot is
        rewritten with a time already past, so readers ask the worker for it (a file
        written, deleted or renamed through the worker, where superseding the whole table
        would send the readers of every other file back to requests too). Slots of other
        paths, under these or not, stay. How many paths had a slot."""
        with self._lock:
            mm = self._mm
            if mm is None or not paths:
                return 0
            found = find_files(
                mm, list(paths), HEADER_SIZE, self._n, MAX_PROBES, _STATE_AT, _EMPTY, _LIVE
            )
        # Rewritten as published (a publish of newer bytes in between is voided too: its
        # readers ask the worker, never read stale bytes).
        entries = [(p, *t[:6], 1) for p, t in zip(paths, found, strict=True) if t is not None]
        return self.publish_many(entries) if entries else 0

    # ----------------------------------------------------------------- slots

    def publish_many(self, entries: Iterable[tuple[str, int, int, int, int, int, int, int]]) -> int:
        """Publish files: ``(path, size, tier code, region, offset, crc32c, generation,
        fresh_until_ns)`` each, replacing what the table said of the same path. Entries
        that do not fit the slot's fields are left out. How many were published.

        The slots are written natively (``_slots.put_files``), the table grown first when
        they would fill it past :data:`_LOAD`."""
        paths, bodies = [], []
        for path, size, tier, region, offset, crc, generation, fresh in entries:
            if not (
                0 <= size < _U32 and 0 <= region < _U32 and 0 <= generation < _U32
                and 0 <= tier < 256 and 0 <= offset < 1 << 63 and 0 < fresh < 1 << 63
            ):  # fmt: skip
                continue
            paths.append(path)
            fields = (tier, 0, region, crc, generation, size, offset, fresh)
            bodies.append(_SLOT.pack(0, 0, _NO_KEY, 0, _LIVE, *fields))
        return self._put_bodies(paths, bodies)

    def publish_located(
        self, paths: list[str], locations: list[PageLocation], fresh: list[int]
    ) -> int:
        """:meth:`publish_many` of files whose one page is at a location of the page store:
        ``paths``, ``locations`` and fresh until ``fresh`` (monotonic ns) each, the file's
        size the page's length. Their slots are made natively (``_slots.located_bodies``);
        a location whose numbers do not fit a slot is left out."""
        bodies = located_bodies(locations, fresh, _TIER_CODES, _LIVE)
        if None in bodies:
            paths = [p for p, body in zip(paths, bodies, strict=True) if body is not None]
            bodies = [body for body in bodies if body is not None]
        return self._put_bodies(list(paths), bodies)

    def _put_bodies(self, paths: list[str], bodies: list[bytes]) -> int:
        """Write the slots ``bodies`` (packed, keys left to :func:`put_files`) of
        ``paths``; how many were published."""
        with self._lock:
            if self._mm is None or not paths:
                return 0
            while self._live + len(paths) > _LOAD * self._n and self._grow():
                pass
            room = max(0, int(_LOAD * self._n) - self._live)  # the table at its largest
            del paths[room:], bodies[room:]
            got = put_files(
                self._mm, paths, bodies, HEADER_SIZE, self._n, MAX_PROBES, _STATE_AT, _EMPTY
            )
            self._live += got.count(1)
            done = len(got) - got.count(-1)
            for k in [k for k, r in enumerate(got) if r < 0]:
                # A probe path past the limit: a larger table spreads the keys out.
                body = bodies[k][:8] + path_key(paths[k]) + bodies[k][24:]
                if self._mm is not None and self._grow() and self._put(body):
                    done += 1
        return done

    def _find(self, key: bytes) -> int:
        """The offset of ``key``'s slot, else of the empty one that ends its probe path,
        else -1 (the probe limit reached)."""
        mm = self._mm
        n = self._n
        i = int.from_bytes(key[:8], "little") % n
        for _ in range(MAX_PROBES):
            at = HEADER_SIZE + i * SLOT_SIZE
            if mm[at + _STATE_AT] == _EMPTY or mm[at + 8 : at + 24] == key:
                return at
            i = i + 1 if i + 1 < n else 0
        return -1

    def _put(self, body: bytes) -> bool:
        key = body[8:24]
        at = self._find(key)
        if at < 0:
            return False
        if self._mm[at + _STATE_AT] == _EMPTY:
            self._live += 1
        self._write(at, body)
        return True

    def _write(self, at: int, body: bytes) -> None:
        """Rewrite the slot at ``at``: sequence made odd, body, check, sequence even."""
        mm = self._mm
        seq = struct.unpack_from("<I", mm, at)[0] & ~1
        struct.pack_into("<I", mm, at, (seq + 1) & 0xFFFFFFFF)  # odd while writing
        mm[at + 8 : at + SLOT_SIZE] = body[8:]
        struct.pack_into("<I", mm, at + 4, crc32c(body[8:]))
        struct.pack_into("<I", mm, at, (seq + 2) & 0xFFFFFFFE)

    def reserve(self, count: int) -> None:
        """Make room for ``count`` more files at once (one growth instead of several, each
        of which copies every slot); a table that grows at least doubles, so that many
        small reservations cost no more than one large one."""
        with self._lock:
            if self._mm is None:
                return
            n = slots_for(self._live + count)
            if n > self._n:
                self._regrow(min(self._max_n, max(n, 2 * self._n)))

    def _grow(self) -> bool:
        """A table of twice the slots holding every file of this one; False at the size
        limit."""
        n = min(self._max_n, 2 * self._n)
        if n == self._n:
            return False
        self._regrow(n)
        return True

    def _regrow(self, n: int) -> None:
        """Make the table one of ``n`` slots holding every live slot of this one (copied
        natively, ``_slots.copy_slots``)."""
        slots = self._mm[HEADER_SIZE : HEADER_SIZE + SLOT_SIZE * self._n]  # a copy
        self._new_table(n)
        self._live = copy_slots(
            slots, self._mm, HEADER_SIZE, n, MAX_PROBES, _STATE_AT, _EMPTY, _LIVE
        )

    def stats(self) -> dict[str, int]:
        """Files published, slots, tables made."""
        with self._lock:
            return {"files": self._live, "slots": self._n, "tables": self.tables}

    def close(self) -> None:
        """Mark the table closed for its readers and let it go; idempotent."""
        with self._lock:
            old = self._mm, self._fd, self._ro_fd
            self._mm, self._fd, self._ro_fd = None, -1, -1
            self._retire(*old, CLOSED)


class FileTableReader:
    """A client's read-only mapping of a worker's table.

    Parameters
    ----------
    fd
        The descriptor the worker passed; the reader maps it and closes it.

    Raises
    ------
    ValueError
        Not a table of this format.
    """

    def __init__(self, fd: int):
        try:
            size = os.fstat(fd).st_size
            if size < HEADER_SIZE + SLOT_SIZE:
                raise ValueError(f"file table of {size} bytes is too short")
            mm = mmap.mmap(fd, size, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        magic, fmt, n, _ = _HEADER.unpack_from(mm, 0)
        if magic != MAGIC or fmt != FORMAT or not _MIN_SLOTS <= n <= _MAX_SLOTS:
            mm.close()
            raise ValueError(f"not a Shoal file table of format {FORMAT}")
        if size != HEADER_SIZE + SLOT_SIZE * n:
            mm.close()
            raise ValueError(f"file table of {size} bytes does not hold {n} slots")
        self._mm = mm
        self._n = n

    @property
    def current(self) -> bool:
        """False once the worker has superseded or closed this table."""
        mm = self._mm
        return mm is not None and struct.unpack_from("<I", mm, _FLAGS_AT)[0] == 0

    def lookup_many(self, paths: Sequence[str]) -> list[Published | None]:
        """What the table says of each path (None: nothing, or nothing that checks out)."""
        mm = self._mm
        if mm is None:
            return [None] * len(paths)
        new = tuple.__new__
        return [
            None if t is None else new(Published, t)
            for t in find_files(
                mm, list(paths), HEADER_SIZE, self._n, MAX_PROBES, _STATE_AT, _EMPTY, _LIVE
            )
        ]

    def read_many(
        self,
        items: list,
        out: list,
        limit: int,
        regions: tuple[dict[int, mmap.mmap], list],
        counts: dict[int, int],
        lacking: set[int],
    ) -> int:
        """Read the whole small files of ``items`` (``Client.read_many_into``'s) that the
        table holds, out of the mapped region files ``regions`` (a reader's
        ``RegionReader.mapped()``), into ``out``; see ``engine._slots.read_published``. The
        index of the first item this left unchecked (0 once the table is closed)."""
        mm = self._mm
        if mm is None:
            return 0
        maps, generations = regions
        return read_published(
            mm, HEADER_SIZE, self._n, MAX_PROBES, _STATE_AT, _EMPTY, _LIVE, items, out, limit,
            maps, generations, time.monotonic_ns(), MAX_PATH_BYTES, MAX_PATH_COMPONENTS,
            counts, lacking,
        )  # fmt: skip

    def close(self) -> None:
        """Unmap the table; idempotent."""
        mm, self._mm = self._mm, None
        if mm is not None:
            mm.close()
