"""Reads of cached small files through the local worker's table of published files (see
``control._filetable``): a process that never read a file before reads it warm with no
request naming it, straight from the worker's region file into the caller's buffer.

Every read through the table is checked as a remembered location is (region generation,
page crc32c); a file the table does not hold, holds stale, or whose page fails a check is
left to the ordinary read, which asks the worker.
"""

from __future__ import annotations

import time

from ..control._filetable import FileTableReader
from ..control.proto import MAX_FDS
from ..engine._regions import TIER_NAMES, region_of
from ._connection import Connection
from ._shortcircuit import ShortCircuit

__all__ = ["PublishedReads"]

_MAX_REGIONS = MAX_FDS // 2  # region descriptors asked for at once (with generation tables)


class PublishedReads:
    """Reads through the table of the worker behind a connection.

    Parameters
    ----------
    shortcircuit
        The client's short-circuit reader: pages read here count as its reads (the worker
        hears of them with its ``touch`` reports).
    """

    def __init__(self, shortcircuit: ShortCircuit):
        self._sc = shortcircuit

    def read_many(self, conn: Connection, items: list) -> list[int | None] | None:
        """Read what the table holds of ``Client.read_many_into``'s own ``items`` natively
        (whole small files; see ``engine._slots.read_published``): per item the bytes read,
        or None for an item left to the caller (which checks it: those from the first item
        the native read could not take whole are all left). None when the connection has
        no table."""
        table = self._table(conn)
        if table is None:
            return None
        reader = conn.reader
        out: list[int | None] = [None] * len(items)
        counts: dict[int, int] = {}
        lacking: set[int] = set()
        stop = table.read_many(items, out, len(items), reader.mapped(), counts, lacking)
        if lacking:  # regions this connection holds no descriptor or mapping of yet
            missing = [list(r) for r in map(region_of, lacking) if not conn.holds(*r)]
            if missing:
                conn.fetch_regions(missing[:_MAX_REGIONS])
            reader.map_regions(lacking)
            maps, generations = reader.mapped()
            if any(c in maps for c in lacking):
                table.read_many(items, out, stop, (maps, generations), counts, set())
        if counts:  # reported now unless the items left are read on (and report then)
            named = {region_of(c): k for c, k in counts.items()}
            self._account(conn, named, report=None not in out)
        conn.trim()
        return out

    @staticmethod
    def _table(conn: Connection) -> FileTableReader | None:
        """The connection's current table (renewed when superseded), or None."""
        table = conn.table
        if table is None:
            return None
        if not table.current:
            conn.renew_table()
            table = conn.table
            if table is None or not table.current:
                return None
        return table

    def _account(
        self, conn: Connection, counts: dict[tuple[str, int], int], report: bool = True
    ) -> None:
        """Pages read through the table (per region) count as the short-circuit reader's:
        the worker hears of them with its ``touch`` reports (``report``: one is sent now
        if it is due)."""
        sc = self._sc
        sc.locations.claim(sc.owner(conn))
        sc.account(conn, counts, [], time.monotonic())
        if report:
            sc.report_due(conn)

    def read(self, conn: Connection, items: list) -> list[int | None]:
        """Read what the table holds of ``items`` (``[view, normalised path, offset,
        ...]`` each): per item the bytes read, or None for an item left to the caller."""
        out: list[int | None] = [None] * len(items)
        table = self._table(conn)
        if table is None:
            return out
        found = table.lookup_many([item[1] for item in items])
        now_ns = time.monotonic_ns()
        batch, slots = [], []
        lacking: dict[tuple[str, int], None] = {}
        names = TIER_NAMES
        holds = conn.holds
        for k, rec in enumerate(found):
            if rec is None:
                continue
            size, tier_code, region, page_offset, crc, generation, fresh = rec
            if fresh <= now_ns or tier_code >= len(names):
                continue
            item = items[k]
            view, offset = item[0], item[2]
            n = size - offset
            if n <= 0:
                out[k] = 0
                continue
            if n > view.nbytes:
                n = view.nbytes
            tier = names[tier_code]
            if not holds(tier, region):
                lacking[tier, region] = None
            if offset == 0 and n == size:  # the whole page, straight into the caller's
                dest = view if n == view.nbytes else view[:n]
                batch.append((tier, region, page_offset, size, crc, generation, dest))
            else:  # part of the page (the engine checks the whole)
                batch.append((tier, region, page_offset, size, crc, generation, view, offset, n))
            slots.append((k, n))
        if not batch:
            return out
        if lacking:
            conn.fetch_regions([list(r) for r in list(lacking)[:_MAX_REGIONS]])
        results = conn.reader.read_located(batch)
        counts: dict[tuple[str, int], int] = {}
        for (k, n), loc, res in zip(slots, batch, results, strict=True):
            if type(res) is int:
                out[k] = n
                counts[loc[0], loc[1]] = counts.get((loc[0], loc[1]), 0) + 1
        if counts:
            self._account(conn, counts)
        conn.trim()
        return out
