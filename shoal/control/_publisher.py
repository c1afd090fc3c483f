"""What a worker tells of the files it caches beyond answering requests: the table of
published files (``_filetable``) that clients on the node read with no request, and the
file records (``_filerecords``) kept with the page index, which a restarted worker takes
back."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from ..engine import PageLocation, PageStore
from ._filerecords import decode_record, encode_record, encode_records
from ._files import File, FileResolver
from ._filetable import FileTableWriter, slots_for
from ._pages import file_id, page_key
from .ufs import ObjectInfo

__all__ = ["Publisher"]

log = logging.getLogger("shoal.worker")

#: Seconds a starting worker spends at most taking back its file records before it serves.
RESTORE_WAIT = 10.0


class Publisher:
    """The table of published files and the file records of one worker.

    Opening one takes back the records of the files cached before (for at most
    :data:`RESTORE_WAIT` seconds, then in the background while the worker serves).

    Parameters
    ----------
    store
        The worker's page store (records live in its index).
    files
        The worker's file resolver: its metadata cache is filled from the records, and
        every refresh of it supersedes the table (but one of a single object changed
        through the worker, which voids that file's slot alone).
    page_size
        The node's page size: files of one page are published.
    """

    def __init__(self, store: PageStore, files: FileResolver, page_size: int):
        self._store = store
        self._files = files
        self._page_size = page_size
        self._closed = False
        # Sized for the pages cached already, so that a large cache's table seldom grows
        # (each growth copies every slot while publishing waits).
        self.table = FileTableWriter(max(1 << 16, slots_for(len(store))))
        files.metadata.on_refresh = self._refreshed
        self._restoring = threading.Thread(target=self._restore, name="shoal-restore", daemon=True)
        self._restoring.start()
        self._restoring.join(RESTORE_WAIT)

    def _refreshed(self, path: str | None) -> None:
        """What the worker said of paths is void: of ``path`` alone (its object changed
        through the worker), or of any path (None)."""
        if path is None:
            self.table.supersede()
        else:
            self.table.expire([path])

    # ----------------------------------------------------------------- publishing

    def publish(self, located: list[tuple[File, PageLocation]]) -> None:
        """Publish cached one-page files, while their metadata holds."""
        files = [f for f, _ in located]
        untils = self._files.metadata.expiries([(f.path, f.info) for f in files])
        self.publish_stored(files, [loc for _, loc in located], untils)

    def publish_stored(
        self, files: list[File], located: list[PageLocation | None], untils: list[float | None]
    ) -> None:
        """Publish one-page ``files`` just stored at ``located`` (None: not stored), whose
        metadata holds until ``untils`` (monotonic seconds; None: it does not), as
        :meth:`records_of` told."""
        now, now_ns = time.monotonic(), time.monotonic_ns()
        fresh_for = self._files.fresh_for
        paths, locations, fresh = [], [], []
        for f, loc, until in zip(files, located, untils, strict=True):
            if until is None or loc is None or loc.length != f.info.size:
                continue
            if f.own["ttl"] and fresh_for is not None:  # read no longer than it may be served
                until = min(until, now + fresh_for(f))
            paths.append(f.path)
            locations.append(loc)
            fresh.append(now_ns + int((until - now) * 1e9))
        if paths:
            self.table.publish_located(paths, locations, fresh)

    def publish_files(self, files: list[File]) -> None:
        """Publish the one-page ``files`` whose page is cached."""
        located = self._store.locate([page_key(f.fid, 0) for f in files])
        self.publish([(f, loc) for f, loc in zip(files, located, strict=True) if loc])

    def record_of(self, path: str, uri: str, info: ObjectInfo, ttl: float):
        """The record kept with the first page of the file at ``path`` (``uri`` in its
        store, its mount's ``metadata_ttl``), ``(name, value)``: its metadata and until
        when it holds (None when the mount caches no metadata)."""
        until = self._files.metadata.expiry(path, info)
        return _record(path, uri, info, ttl, until, time.monotonic())

    def records_of(self, files: list[File]) -> tuple[list[float | None], list[tuple | None]]:
        """For ``files`` about to be stored, until when the metadata of each holds
        (monotonic seconds, or None) and its record, as :meth:`record_of` makes it (or
        None), with one look at the metadata cache for them all."""
        untils = self._files.metadata.expiries([(f.path, f.info) for f in files])
        now = time.monotonic()
        records: list[tuple | None] = [None] * len(files)
        kept, items = [], []  # as _record makes them, encoded together
        for k, (f, until) in enumerate(zip(files, untils, strict=True)):
            left = _left(f.info, f.own["metadata_ttl"], until, now)
            if left is not None:
                kept.append(k)
                items.append((f.mount.child_uri(f.rel), f.info, left))
        for k, value in zip(kept, encode_records(items), strict=True):
            records[k] = (files[k].path.encode("utf-8", "surrogateescape"), value)
        return untils, records

    # ----------------------------------------------------------------- restart

    def _restore(self, batch: int = 1024) -> None:
        """Take back the records of the files cached before a restart: their metadata
        (for the time it still holds) and, for one-page files, their slots in the table.
        Records of files gone from the cache, moved to another URI or past their time are
        dropped; those of a mount the operator no longer allows are left alone."""
        metadata = self._files.metadata
        try:
            pending: list[tuple[str, ObjectInfo, bytes, float]] = []
            stale: list[bytes] = []
            restored = 0
            refreshes = metadata.refreshes
            admitted: dict[str, bool] = {}
            for name, value in self._store.records(b"/"):  # file records: named by path
                if self._closed or metadata.refreshes != refreshes:
                    return  # a refresh since: what the records say may be void
                record = decode_record(value)
                path = name.decode("utf-8", "surrogateescape")
                left = record.expires - time.time() if record is not None else 0.0
                try:
                    mount, rel = self._files.mount_of(path)
                except (OSError, ValueError):
                    mount = rel = None
                if left <= 0 or mount is None or mount.child_uri(rel) != record.uri:
                    stale.append(name)
                    continue
                if mount.path not in admitted:
                    try:  # a mount the operator no longer allows serves nothing
                        self._files.store_of(mount)
                        admitted[mount.path] = True
                    except (OSError, ValueError):
                        admitted[mount.path] = False
                if not admitted[mount.path]:
                    continue
                first = page_key(file_id(record.uri, record.info.version), 0)
                pending.append((path, record.info, first, left))
                if len(pending) >= batch:
                    restored += self._restore_batch(pending, stale, refreshes)
                    time.sleep(0)  # requests first, once the worker serves
            restored += self._restore_batch(pending, stale, refreshes)
            if stale:
                self._store.delete_records(stale)
            if restored or stale:
                log.info("%d cached files known again, %d records dropped", restored, len(stale))
        except Exception:  # the worker serves on: files are stat'd as without records
            if not self._closed:
                log.exception("file records not restored")

    def _restore_batch(self, pending: list, stale: list[bytes], refreshes: int) -> int:
        metadata = self._files.metadata
        if not pending or metadata.refreshes != refreshes:
            pending.clear()
            return 0
        located = self._store.locate([first for _, _, first, _ in pending])
        paths, locations, fresh, known = [], [], [], 0
        for (path, info, _, left), loc in zip(pending, located, strict=True):
            if loc is None:
                stale.append(path.encode("utf-8", "surrogateescape"))
                continue
            if metadata.get_stat(path) is None:
                metadata.put_stat(path, info, left)
            known += 1
            if (
                0 < info.size <= self._page_size
                and loc.length == info.size
                and not self._files.options_at(path)["ttl"]  # told by the first stat
            ):
                paths.append(path)
                locations.append(loc)
                fresh.append(time.monotonic_ns() + int(left * 1e9))
        pending.clear()
        if paths:
            self.table.publish_located(paths, locations, fresh)
        return known

    # ----------------------------------------------------------------- lifetime

    def stats(self) -> dict[str, Any]:
        """Files published, slots, tables made, and whether records are still read back."""
        return {**self.table.stats(), "restoring": self._restoring.is_alive()}

    def close(self) -> None:
        """Stop taking records back and close the table (its readers see it closed)."""
        self._closed = True
        self._restoring.join()
        self.table.close()


def _record(
    path: str, uri: str, info: ObjectInfo, ttl: float, until: float | None, now: float
) -> tuple[bytes, bytes] | None:
    """The record of a file whose cached metadata holds ``until`` (monotonic seconds; None:
    it is not cached, and holds ``ttl`` from ``now``); None when it holds no more."""
    left = _left(info, ttl, until, now)
    if left is None:
        return None
    return (path.encode("utf-8", "surrogateescape"), encode_record(uri, info, left))


def _left(info: ObjectInfo, ttl: float, until: float | None, now: float) -> float | None:
    """The seconds a file's record holds (see :func:`_record`), or None: none to keep."""
    left = ttl if until is None else until - now
    return None if ttl <= 0 or left <= 0 or info.is_dir else left
