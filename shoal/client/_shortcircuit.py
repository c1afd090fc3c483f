"""Short-circuit reads: pages a worker on this host holds are read by the client itself,
from the worker's region files, straight into the caller's buffer.

Two ways to a page's location: remembered from an earlier answer (no round trip at all),
or asked of the worker with a ``locate`` read, whose answer brings the locations of cached
pages (and the region descriptors the connection lacks) and the bytes of the others.

One retry rule: a located page whose read fails a check (crc32c, region generation, a
descriptor missing, a region file cut short under us) is forgotten and asked of the same
worker again as bytes; the worker reads its own store, or the under-store when its copy is
bad.
"""

from __future__ import annotations

import contextlib
import os
import time

from ..control._pages import PageSlice, page_slices
from ..control.proto import DATA, LOCATE, decode_error
from ._connection import Connection
from ._locations import LocationCache
from ._meta import FileMeta

__all__ = ["Piece", "ShortCircuit"]

_TOUCH_DELAY = 1.0  # seconds pages read through remembered locations wait to be reported

#: A piece of a read: destination view, page slice, file.
Piece = tuple[memoryview, PageSlice, FileMeta]


class ShortCircuit:
    """Short-circuit reads for one client, with its memory of page locations.

    Parameters
    ----------
    locations
        Where pages read before are (shared by every thread of the client).
    """

    def __init__(self, locations: LocationCache | None = None):
        self.locations = locations if locations is not None else LocationCache()

    def owner(self, conn: Connection) -> tuple[str, str]:
        """The worker behind ``conn`` as the location memory names it."""
        return (conn.hello["host_id"], conn.hello["home"])

    # ----------------------------------------------------------------- remembered

    def read_remembered(
        self, conn: Connection, items: list[tuple[memoryview, FileMeta, int]]
    ) -> list[tuple[memoryview, FileMeta, int]]:
        """Read, with no round trip to the worker, the items whose every page this client
        remembers the location of; the items left (those with a page not remembered, or
        failing a check: forgotten then)."""
        locs = self.locations
        if not locs or locs.owner != self.owner(conn):
            return items
        page_size = conn.hello["page_size"]
        now = time.monotonic()
        rest, wanted, keys = [], [], []
        for item in items:
            view, meta, offset = item
            n = meta.size - offset
            if n > view.nbytes:
                n = view.nbytes
            if n <= 0:
                continue
            if meta.fresh_until <= now:
                rest.append(item)  # the worker checks the file's version again
                continue
            index, start = divmod(offset, page_size)
            if start + n <= page_size:  # within one page, the common case
                wanted.append((item, len(keys), start, n, None))
                keys.append((meta.fid, index))
                continue
            slices = page_slices(offset, view.nbytes, meta.size, page_size)
            wanted.append((item, len(keys), 0, 0, slices))
            fid = meta.fid
            keys.extend([(fid, s.index) for s in slices])
        found = locs.get_many(keys)
        batch, served = [], []
        for item, k, start, n, slices in wanted:
            view = item[0]
            first = len(batch)
            if slices is None:
                loc = found[k]
                if loc is None or start + n > loc[3]:
                    rest.append(item)
                    continue
                tier, region, offset, plen, crc, generation, _ = loc
                if start or n != plen:  # part of a page (the engine checks the whole)
                    batch.append((tier, region, offset, plen, crc, generation, view, start, n))
                else:
                    batch.append((tier, region, offset, plen, crc, generation, view))
                served.append((item, first, first + 1, k))
                continue
            item_locs = found[k : k + len(slices)]
            for (_, start, n, buf_offset), loc in zip(slices, item_locs, strict=True):
                if loc is None or start + n > loc[3]:
                    del batch[first:]  # a page not remembered: the whole item to the worker
                    rest.append(item)
                    break
                tier, region, offset, plen, crc, generation, _ = loc
                dest = view[buf_offset : buf_offset + n] if buf_offset else view
                if start == 0 and n == plen:  # a whole page: straight into the caller's
                    batch.append((tier, region, offset, plen, crc, generation, dest))
                else:
                    batch.append((tier, region, offset, plen, crc, generation, dest, start, n))
            else:
                served.append((item, first, len(batch), k))
        if not batch:
            return rest
        results = conn.reader.read_located(batch)
        good = [type(res) is int for res in results]
        failed, counts = [], {}
        for item, first, end, k in served:
            if good[first] if end == first + 1 else all(good[first:end]):
                for loc in batch[first:end]:
                    region = (loc[0], loc[1])
                    counts[region] = counts.get(region, 0) + 1
            else:
                failed.extend(keys[k : k + end - first])
                rest.append(item)
        self.account(conn, counts, failed, now)
        if counts:
            self.report_due(conn)
        return rest

    def report_due(self, conn: Connection) -> None:
        """Report the pages read with no request when the oldest waits long enough."""
        if time.monotonic() - self.locations.touched_since >= _TOUCH_DELAY:
            with contextlib.suppress(ConnectionError, TimeoutError):
                self.report_touched(conn)

    def account(self, conn: Connection, counts: dict, failed: list, now: float) -> None:
        """After reads through remembered locations: forget those that ``failed``, count
        the pages read per region (``counts``), for the worker to hear of later."""
        if failed:
            self.locations.drop_many(failed)
        if counts:
            for tier, region in counts:
                conn.used(tier, region)
            self.locations.touch(counts, now)

    def report_touched(self, conn: Connection) -> None:
        """Tell the worker about the pages read through remembered locations since the last
        time: they count as hits, and their regions as recently used."""
        touched = self.locations.take_touched()
        if touched and self.locations.owner == self.owner(conn):
            conn.call({"op": "touch", "regions": touched})

    # ----------------------------------------------------------------- located

    def _read_remembered_pieces(self, conn: Connection, pieces: list[Piece]) -> list[Piece]:
        """Read the pieces whose page this client remembers the location of (with no
        round trip); the pieces left."""
        locs = self.locations
        if not locs or locs.owner != self.owner(conn):
            return pieces
        now = time.monotonic()
        found = locs.get_many(
            [(meta.fid, s.index) if meta.fresh_until > now else None for _, s, meta in pieces]
        )
        batch, used, rest = [], [], []
        for piece, loc in zip(pieces, found, strict=True):
            dest, s, _ = piece
            if loc is None or s.start + s.length > loc[3]:
                rest.append(piece)
                continue
            tier, region, offset, plen, crc, generation, _ = loc
            if s.start or s.length != plen:  # part of a page (the engine checks the whole)
                batch.append((tier, region, offset, plen, crc, generation, dest, s.start, s.length))
            else:
                batch.append((tier, region, offset, plen, crc, generation, dest))
            used.append(piece)
        if not batch:
            return rest
        results = conn.reader.read_located(batch)
        counts, failed = {}, []
        for (tier, region, *_), piece, res in zip(batch, used, results, strict=True):
            if type(res) is int:
                counts[tier, region] = counts.get((tier, region), 0) + 1
            else:
                rest.append(piece)
                failed.append((piece[2].fid, piece[1].index))
        self.account(conn, counts, failed, now)
        return rest

    def read(self, conn: Connection, pieces: list[Piece]) -> None:
        """Read pieces placed on the worker of ``conn``: those whose location is
        remembered with no round trip, located ones short-circuit, the rest (and any that
        fail their checks) as bytes over the socket."""
        pieces = self._read_remembered_pieces(conn, pieces)
        if not pieces:
            return
        files: dict[tuple[str, str], int] = {}
        requested = []
        for dest, s, meta in pieces:
            fi = files.setdefault((meta.path, meta.version), len(files))
            requested.append((dest, [fi, s.index, s.start, s.length]))
        file_list = [list(k) for k in files]
        conn.send(
            {
                "op": "read",
                "files": file_list,
                "items": [item for _, item in requested],
                "mode": LOCATE,
                "forget": conn.take_forget(),
            }
        )
        answer, payload_len, fds = conn.receive()
        conn.adopt(answer["fds"], fds)
        locs = answer["locs"]
        if len(locs) != len(requested):
            raise decode_error({"type": "ProtocolError", "message": "wrong number of locations"})
        conn.recv_payload(
            [d for (d, _), loc in zip(requested, locs, strict=True) if loc is None], payload_len
        )
        retry = self._read_located(conn, requested, locs)
        self._remember(conn, pieces, locs, retry)
        conn.trim()
        if retry:
            conn.send(
                {
                    "op": "read",
                    "files": file_list,
                    "items": [requested[k][1] for k in retry],
                    "mode": DATA,
                    "forget": conn.take_forget(),
                }
            )
            _, payload_len, fds = conn.receive()
            for fd in fds:
                os.close(fd)
            conn.recv_payload([requested[k][0] for k in retry], payload_len)

    @staticmethod
    def _read_located(conn: Connection, pieces: list, locs: list) -> list[int]:
        """Short-circuit reads of the located pieces; the indexes of those to fetch again
        (region reclaimed since, bytes not matching their crc32c, descriptor missing,
        region file unreadable)."""
        batch, slots, retry = [], [], []
        regions = set()
        for k, ((dest, (_, _, start, length)), loc) in enumerate(zip(pieces, locs, strict=True)):
            if loc is None:
                continue
            tier, region, offset, plen, crc, generation = loc
            if not conn.holds(tier, region):
                # The worker believes we hold this descriptor: have it sent again next time,
                # and get these bytes over the socket.
                conn.forget(tier, region)
                retry.append(k)
                continue
            regions.add((tier, region))
            if start == 0 and length == plen:  # a whole page: zero-copy into the caller's
                batch.append((tier, region, offset, plen, crc, generation, dest))
            else:  # part of a page (the engine checks the whole)
                batch.append((tier, region, offset, plen, crc, generation, dest, start, length))
            slots.append(k)
        if not batch:
            return retry
        for tier, region in regions:
            conn.used(tier, region)
        results = conn.reader.read_located(batch)
        failed = [slots[j] for j, res in enumerate(results) if type(res) is not int]
        return sorted(retry + failed) if failed else retry

    def _remember(self, conn: Connection, pieces: list, locs: list, retry: list[int]) -> None:
        """Keep the locations a worker handed out and that read well, for later reads."""
        failed = set(retry)
        keep, drop = [], []
        for k, ((_, s, meta), loc) in enumerate(zip(pieces, locs, strict=True)):
            if loc is None:
                continue
            key = (meta.fid, s.index)
            if k in failed:
                drop.append(key)
            else:
                keep.append((key, (*loc, meta.path)))
        if drop:
            self.locations.drop_many(drop)
        if keep:
            self.locations.put_many(self.owner(conn), keep)
