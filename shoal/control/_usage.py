"""What one worker caches under a path (``du``): bytes, pages and files, per tier.

The page index keys pages by file id (a hash of the file's URI and version), which says
nothing of paths; what ties cached pages to paths are the file records (``_filerecords``),
one per cached file, named by its Shoal path. ``du`` reads the records under a path, skips
those whose URI the path no longer resolves to (a mount changed since), and looks up
every page of each recorded file.

Known limits: a record is written with a file's first page and only while its mount
caches metadata (``metadata_ttl`` > 0), so pages of files cached under ``metadata_ttl``
0, and in a cluster the pages a worker holds of a file whose first page another worker
holds, are not seen. Pages are looked up without marking their regions used: a ``du``
leaves the eviction order as it was.
"""

from __future__ import annotations

import errno
import itertools
import logging
import threading
from collections.abc import Iterator

from ..engine import PageStore
from ._fetch import Fetcher
from ._filerecords import FileRecord, decode_record
from ._files import FileResolver
from ._namespace import Mount, normalize_path
from ._pages import file_id, page_count, page_key
from ._server import Handler, Reply

__all__ = ["CacheUsage"]

log = logging.getLogger("shoal.worker")

_LOCATE_BATCH = 4096  # page keys looked up with one call of the page store


def _uri_dir(uri: str) -> str:
    return uri.rstrip("/") + "/"


def _aliased(mounts: list[Mount]) -> set[str]:
    """The mount points among ``mounts`` whose URIs overlap another's (the same store
    mounted twice, or inside another mount): their files may share pages."""
    out = set()
    for a in mounts:
        for b in mounts:
            if a.path != b.path and _uri_dir(b.uri).startswith(_uri_dir(a.uri)):
                out.update((a.path, b.path))
    return out


class CacheUsage:
    """The ``du`` op of a worker, the bytes its page store holds, and the pin of the pages
    it holds, kept as the policies say (they change: :meth:`repin`).

    Parameters
    ----------
    store
        The worker's page store (pages, and the file records in its index).
    files
        The worker's file resolver: its mount table says what a path is now, its policies
        whether a file is pinned; every change of its policies makes a :meth:`repin` of
        the prefixes changed, in the background.
    fetcher
        The worker's fetcher, which pins new pages: pins are counted against each tier's
        pinned share with it.
    page_size
        The node's page size.
    """

    def __init__(self, store: PageStore, files: FileResolver, fetcher: Fetcher, page_size: int):
        self._store = store
        self._files = files
        self._fetcher = fetcher
        self._page_size = page_size
        self._repinning = threading.Lock()  # one repin at a time, in the order asked
        files.on_policies = self._repin_soon

    def handlers(self) -> dict[str, Handler]:
        """The ops of cache usage, for the worker's op -> handler table."""
        return {"du": lambda _, h: Reply(self.du(h["path"]))}

    def _repin_soon(self, prefixes: list[str]) -> None:
        threading.Thread(target=self.repin, args=(prefixes,), daemon=True).start()

    def repin(self, prefixes: list[str]) -> int:
        """Pin the cached pages of the recorded files under ``prefixes`` whose policy pins
        them now, within each tier's pinned share (see :meth:`Fetcher.may_pin`), unpin
        those of the files it no longer pins, and move the others to regions of the
        priority the policy gives them now; the pages pinned, unpinned or moved.

        Pages are pinned where they are: a pinned page keeps its region from eviction
        (with the other pages of that region) until it is unpinned. Files without a record
        (see the module's notes) keep their pages as they are."""
        changed = 0
        with self._repinning:
            try:
                for prefix in prefixes:
                    under = prefix.rstrip("/") + "/"
                    for _, path, fid, count in self._recorded(prefix, under, set()):
                        own = self._files.options_at(path)
                        changed += self._repin_file(fid, count, own["pin"], own["priority"])
            except (OSError, ValueError) as exc:  # evicted meanwhile, or the store closed
                log.info("pins under %s not all brought up to date: %s", prefixes, exc)
        return changed

    def _repin_file(self, fid: bytes, count: int, pin: bool, priority: str) -> int:
        """Pin (within the pinned share) or unpin the cached pages of a file, and move
        those not in regions of its ``priority`` there (in the tier each is in)."""
        keys = [page_key(fid, i) for i in range(count)]
        done = 0
        by_tier: dict[str, list[bytes]] = {}
        for key, loc in zip(keys, self._store.locate(keys, touch=False), strict=True):
            if loc is None:
                continue
            by_tier.setdefault(loc.tier, []).append(key)
            if not pin:
                self._store.unpin(key)
                done += 1
                continue
            with self._fetcher.pinning(True):
                if self._store.pinned(key) or not self._fetcher.may_pin(loc.tier, loc.length):
                    continue
                self._store.pin(key)
            done += 1
        for tier, in_tier in by_tier.items():
            done += self._store.move(in_tier, tier, priority)
        return done

    def recorded_files(self, prefix: str) -> Iterator[tuple[str, bytes, int]]:
        """``(path, file id, pages)`` of each file recorded at ``prefix`` or under it."""
        prefix = normalize_path(prefix)
        for _, path, fid, count in self._recorded(prefix, prefix.rstrip("/") + "/", set()):
            yield path, fid, count

    def pinned_bytes(self, prefix: str) -> int:
        """Bytes of the pinned pages of the files recorded under ``prefix``."""
        total = 0
        for _, fid, count in self.recorded_files(prefix):
            keys = [page_key(fid, i) for i in range(count)]
            for key, loc in zip(keys, self._store.locate(keys, touch=False), strict=True):
                if loc is not None and self._store.pinned(key):
                    total += loc.length
        return total

    def used_bytes(self) -> int:
        """Bytes of cached pages, over every tier."""
        return sum(u.live_bytes for u in self._store.usage().values())

    def du(self, path: str) -> dict:
        """Bytes, pages and files cached under ``path`` (whole components: ``/d/a``
        covers ``/d/a/x``, not ``/d/ab``), per tier; every tier of the worker is listed.

        Only files with a record are seen (see the module's notes): pages of files cached
        under ``metadata_ttl`` 0 are not counted.

        Raises
        ------
        FileNotFoundError
            ``path`` is under no mount and holds none (``/`` always does).
        ValueError
            A bad path.
        """
        path = normalize_path(path)
        mounts = self._files.mounts()  # URIs shown redacted: enough to see overlaps
        under = path.rstrip("/") + "/"
        try:
            covering = [self._files.mount_of(path)[0]]
        except FileNotFoundError:
            covering = []
            if path != "/" and not any(m.path.startswith(under) for m in mounts):
                text = f"du {path}: the path is under no mount (see `shoal mount ls`)"
                raise FileNotFoundError(errno.ENOENT, text, path) from None
        scope = covering + [m for m in mounts if m.path.startswith(under)]
        aliased = _aliased(scope) if len(scope) > 1 else set()
        tiers = dict.fromkeys(self._store.tier_paths, 0)
        pages = files = 0
        pending: list[tuple[int, bytes]] = []  # (file's number, page key)
        last = -1  # the number of the last file counted

        def flush() -> None:
            nonlocal pages, files, last
            located = self._store.locate([key for _, key in pending], touch=False)
            for (n, _), loc in zip(pending, located, strict=True):
                if loc is None:
                    continue
                tiers[loc.tier] = tiers.get(loc.tier, 0) + loc.length
                pages += 1
                if n != last:  # files come in order, their pages too
                    files += 1
                    last = n
            pending.clear()

        for n, _, fid, count in self._recorded(path, under, aliased):
            for index in range(count):
                pending.append((n, page_key(fid, index)))
                if len(pending) >= _LOCATE_BATCH:
                    flush()
        flush()
        return {"path": path, "bytes": sum(tiers.values()), "pages": pages, "files": files,
                "tiers": tiers}  # fmt: skip

    def _recorded(
        self, path: str, under: str, aliased: set[str]
    ) -> Iterator[tuple[int, str, bytes, int]]:
        """``(number, path, file id, pages)`` of each file recorded at ``path`` or under it whose
        record still holds for the current mount of its path; a file of an aliased mount
        once only."""
        exact = path.encode("utf-8", "surrogateescape")
        found = self._store.get_record(exact) if path != "/" else None
        named = [(exact, found)] if found is not None else []
        scanned = self._store.records(under.encode("utf-8", "surrogateescape"))
        seen: set[bytes] = set()  # files of aliased mounts counted already
        n = 0
        for name, value in itertools.chain(named, scanned):
            record = decode_record(value)
            mount = self._current_mount(name, record)
            if record is None or mount is None:
                continue
            try:
                fid = file_id(record.uri, record.info.version)
                pages = page_count(record.info.size, self._page_size)
            except (TypeError, ValueError):
                continue
            if mount.path in aliased:
                if fid in seen:
                    continue
                seen.add(fid)
            yield n, name.decode("utf-8", "surrogateescape"), fid, pages
            n += 1

    def _current_mount(self, name: bytes, record: FileRecord | None) -> Mount | None:
        """The mount that serves the path ``name`` now, when it still resolves to the URI
        of ``record``; None otherwise."""
        if record is None:
            return None
        try:
            mount, rel = self._files.mount_of(name.decode("utf-8", "surrogateescape"))
        except (OSError, ValueError):
            return None
        return mount if mount.child_uri(rel) == record.uri else None
