"""The client's memory of file metadata: records asked of a worker (a ``stat`` per batch),
kept for the client's ``metadata_ttl``, the paths it has normalised, and the reads that
rest on it (asked again when the worker knows a newer version)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .._config import Config
from ..control._namespace import normalize_path
from ..control.proto import MAX_LIST, decode_error
from ..control.ufs import ObjectChangedError
from ..engine._requests import host_view
from ._direct import stat_from_etcd
from ._meta import FileMeta
from ._router import Router

__all__ = ["ClientMetadata"]

log = logging.getLogger("shoal.client")

#: Entries past which expired ones are dropped.
_MAX_ENTRIES = 1_000_000
#: Normalised paths remembered at most (some 20 MiB).
_MAX_NORMS = 1 << 17


class ClientMetadata:
    """File metadata of one client, per normalised path, for ``ttl`` seconds (0: none).

    Attributes
    ----------
    entries
        Path -> (monotonic expiry, :class:`FileMeta`); read directly by the read path.
    """

    def __init__(self, config: Config, ttl: float):
        self._config = config
        self.ttl = ttl
        self.entries: dict[str, tuple[float, FileMeta]] = {}
        self._norms: dict[str, str] = {}

    def normalized(self, path: Any) -> str:
        """``normalize_path(path)``, remembered for a str."""
        norms = self._norms
        norm = norms.get(path) if type(path) is str else None
        if norm is None:
            norm = normalize_path(path)
            if len(norms) >= _MAX_NORMS:
                norms.clear()
            norms[path] = norm
        return norm

    def metas(
        self, router: Router, paths: Sequence[str], reads: Sequence | None = None
    ) -> list[FileMeta]:
        """The metadata of ``paths``, remembered or asked of a worker; ``reads`` (per path
        the ``[start, end)`` about to be read) lets the worker learn a cold file's
        metadata from the read itself."""
        now = time.monotonic()
        out: list[FileMeta | None] = []
        missing: dict[str, list[int]] = {}
        entries = self.entries
        for i, p in enumerate(paths):
            entry = entries.get(p)
            if entry is not None and entry[0] > now:
                out.append(entry[1])
            else:
                out.append(None)
                missing.setdefault(p, []).append(i)
        if missing:
            fetch = None if reads is None else [reads[slots[0]] for slots in missing.values()]
            records = self._records(router, list(missing), fetch)
            expiry = time.monotonic() + self.ttl
            for (p, slots), record in zip(missing.items(), records, strict=True):
                if "error" in record:
                    raise decode_error(record["error"])
                meta = FileMeta.from_record(record)
                if self.ttl > 0:
                    entries[p] = (expiry, meta)
                for i in slots:
                    out[i] = meta
            if len(entries) > _MAX_ENTRIES:
                self.entries = {p: e for p, e in entries.items() if e[0] > now}
        return out

    def read_many(self, live: Callable[[], Router], items: Iterable[Sequence[Any]]) -> list[int]:
        """:meth:`shoal.Client.read_many_into`. When this client keeps metadata at all,
        whole small files the local worker publishes are read first, natively, with no
        request and no Python per file; the items left are checked, then read through this
        metadata and the router ``live()`` gives."""
        if type(items) is not list:
            items = list(items)
        if not self.ttl or not items:
            return self._read_many(live, items)
        out = live().read_published(items, whole=True)
        if out is None:
            return self._read_many(live, items)
        left = [i for i, n in enumerate(out) if n is None]
        if not left:
            return out
        rest = self._read_many(live, [items[i] for i in left], left)
        for i, n in zip(left, rest, strict=True):
            out[i] = n
        return out

    def _read_many(
        self, live: Callable[[], Router], items: list, numbers: list[int] | None = None
    ) -> list[int]:
        """:meth:`read_many` of items none of which was read yet: checked, then read
        through this metadata (and the table of published files, for files this process
        knows nothing of yet). ``numbers``: each item's place in the caller's batch, for
        the errors (default: its place in ``items``)."""
        checked = []
        cache, now, normalized = self.entries, time.monotonic(), self.normalized
        for i, item in enumerate(items):
            if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
                at = i if numbers is None else numbers[i]
                raise ValueError(f"item {at}: expected (buf, path, offset), got {item!r}")
            buf, path = item[0], item[1]
            offset = item[2] if len(item) == 3 else 0
            if isinstance(offset, bool) or not isinstance(offset, int):
                raise TypeError(f"offset must be an int, got {type(offset).__name__}")
            if offset < 0:
                raise ValueError(f"offset must be >= 0, got {offset}")
            if type(buf) is not memoryview and hasattr(buf, "__cuda_array_interface__"):
                raise TypeError(
                    f"{type(buf).__name__} is a GPU buffer; Client reads into host memory"
                )
            view = host_view(buf, writable=True, what="read_into")
            # A path found in the cache was normalised when it was put there.
            entry = cache.get(path) if type(path) is str else None
            if entry is not None and entry[0] > now:
                checked.append([view, path, offset, entry[1]])
                continue
            checked.append([view, normalized(path), offset, None])
        if not checked:
            return []
        router = live()
        fresh = [i for i, item in enumerate(checked) if item[3] is None]
        if not fresh or not self.ttl:
            return self.read(router, checked)
        # Files this process knows nothing of yet: those the local worker published are
        # read with no request at all.
        every = len(fresh) == len(checked)
        got = router.read_published(checked if every else [checked[i] for i in fresh])
        if not got:
            return self.read(router, checked)
        if every and None not in got:
            return got
        if all(n is None for n in got):
            return self.read(router, checked)
        out = [0] * len(checked)
        for i, n in zip(fresh, got, strict=True):
            if n is not None:
                out[i] = n
                checked[i] = None
        rest = [i for i, item in enumerate(checked) if item is not None]
        if rest:
            for i, n in zip(rest, self.read(router, [checked[i] for i in rest]), strict=True):
                out[i] = n
        return out

    def read(self, router: Router, checked: list[list]) -> list[int]:
        """Read items checked by :meth:`shoal.Client.read_many_into` (``[view, path,
        offset, meta or None]``) through this metadata (asked for where None) and the
        router's read loop; metadata found older than the worker's is asked again."""
        for attempt in range(3):
            missing = [item for item in checked if item[3] is None]
            if missing:
                # On one node the worker may learn a cold file from the read itself; in a
                # cluster the file's worker depends on its version, so it is stat'd first.
                reads = None if router.cluster else [[m[2], m[2] + m[0].nbytes] for m in missing]
                metas = self.metas(router, [m[1] for m in missing], reads)
                for item, meta in zip(missing, metas, strict=True):
                    item[3] = meta
            results = []
            wanted = []
            for view, _, offset, meta in checked:
                if meta.is_dir:
                    raise IsADirectoryError(21, "is a directory", meta.path)
                n = meta.size - offset
                n = 0 if n < 0 else view.nbytes if n > view.nbytes else n
                results.append(n)
                if n:
                    wanted.append((view if n == view.nbytes else view[:n], meta, offset))
            if not wanted:
                return results
            try:
                router.read(wanted)
                return results
            except ObjectChangedError:
                # Our metadata is older than the worker's: drop it and ask again.
                for item in checked:
                    self.entries.pop(item[1], None)
                    item[3] = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _records(self, router: Router, paths: list[str], fetch: list | None) -> list[dict]:
        """File records from a worker; in an etcd cluster where no worker answers, from
        the mount table in etcd and the under-stores themselves."""
        try:
            records = []
            for at in range(0, len(paths), MAX_LIST):  # what one request may hold
                header: dict[str, Any] = {"op": "stat", "paths": paths[at : at + MAX_LIST]}
                if fetch is not None:
                    header["fetch"] = fetch[at : at + MAX_LIST]
                records += router.call(header)["files"]
            return records
        except (ConnectionError, TimeoutError) as exc:
            if self._config.etcd is None:
                raise
            log.warning("no Shoal worker answers (%s); asking the under-stores directly", exc)
        return stat_from_etcd(self._config, paths, router.direct)

    def forget(self, path: str) -> None:
        """Forget ``path`` and everything under it."""
        under = path.rstrip("/") + "/"
        for p in [p for p in self.entries if p == path or p.startswith(under)]:
            self.entries.pop(p, None)

    def clear(self) -> None:
        """Forget everything (a forked child starts afresh)."""
        self.entries = {}
