"""The worker's view of files: Shoal paths resolved through the mount table to objects of
the under-stores, their metadata cached per mount, directory listings, and the stores
themselves (one per mount, opened once)."""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from queue import Full, Queue
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from ._metadata import MetadataCache
from ._metrics import Counters, UnderStoreTraffic
from ._namespace import Mount, MountTable, normalize_path, split_mount_options
from ._pages import file_id, file_ids
from ._policy import OWN_DEFAULTS, PolicyTable
from .proto import encode_error
from .ufs import ObjectInfo, UnderStore, open_store
from .ufs._options import redact_uri

if TYPE_CHECKING:
    from ._admission import MountPolicy

__all__ = ["File", "FileResolver"]

log = logging.getLogger("shoal.worker")

_MAX_FILES = 1 << 17  # files remembered for fast lookup (some 40 MiB)
_PRIME_MIN = 8  # uncached files of one directory in one stat worth listing it for
#: Directories whose listings run ahead of the one a caller works on, each in a thread:
#: their system calls overlap (the Python of each still takes the GIL in turn).
_LISTINGS_AHEAD = 2


@dataclass(slots=True)
class File:
    """One version of a file (or a directory), as the worker serves it. Never changed once
    made (not frozen: see ``Page``)."""

    path: str
    mount: Mount
    rel: str
    info: ObjectInfo
    fid: bytes
    store: UnderStore | None
    own: Mapping[str, Any]
    epoch: int = 0  # of the mount table and policies it was resolved in

    def record(self) -> dict[str, Any]:
        """The file record of the ``stat`` op."""
        return {
            "path": self.path,
            "size": self.info.size,
            "version": self.info.version,
            "mtime": self.info.mtime,
            "is_dir": self.info.is_dir,
            "fid": self.fid,
            "mount": self.mount.path,
            "uri": self.mount.uri,
            "options": split_mount_options(self.mount.options)[1],
            "rel": self.rel,
            "metadata_ttl": self.own["metadata_ttl"],
            "replicas": self.own["replicas"],
        }


class PendingFiles(dict):
    """:attr:`FileResolver.pending`: normalised path -> :class:`File` (or None), which
    also knows every directory above its files (:meth:`dirs`, worked out again after a
    change)."""

    def __init__(self) -> None:
        super().__init__()
        self._dirs: frozenset[str] | None = None

    def __setitem__(self, path: str, f: File | None) -> None:
        self._dirs = None
        super().__setitem__(path, f)

    def __delitem__(self, path: str) -> None:
        self._dirs = None
        super().__delitem__(path)

    def pop(self, path: str, *default: Any) -> Any:
        self._dirs = None
        return super().pop(path, *default)

    def setdefault(self, path: str, f: File | None = None) -> Any:
        self._dirs = None
        return super().setdefault(path, f)

    def dirs(self) -> frozenset[str]:
        """The directories above the files (not the deleted ones)."""
        dirs = self._dirs
        if dirs is None:
            found = set()
            for path, f in list(self.items()):
                while f is not None and path not in ("/", ""):
                    path = path.rsplit("/", 1)[0] or "/"
                    if path in found:
                        break
                    found.add(path)
            dirs = self._dirs = frozenset(found)
        return dirs


def _text(exc: BaseException) -> str:
    """An exception's message without the ``[Errno N]`` an OSError's ``str`` starts with."""
    if isinstance(exc, OSError) and exc.strerror is not None:
        return exc.strerror
    return str(exc)


def _dir_path(mount: Mount, parent: str) -> str:
    """The Shoal path of the directory ``parent`` (relative to ``mount``)."""
    return f"{mount.path.rstrip('/')}/{parent}" if parent else mount.path


def entry(path: str, info: ObjectInfo) -> dict:
    """An entry of the ``ls`` op."""
    return {
        "path": path,
        "size": info.size,
        "version": info.version,
        "mtime": info.mtime,
        "is_dir": info.is_dir,
    }


class FileResolver:
    """Resolves Shoal paths to :class:`File` records, through the mount table and a
    metadata cache kept per mount for its ``metadata_ttl``. The policies in force at a path
    (:meth:`set_policies`) override its mount's options of the same name.

    Parameters
    ----------
    mounts
        The mount table.
    shared
        The table is shared with other workers (etcd): an unknown path makes it read again.
    counters
        Where requests to under-stores are counted.
    policy
        What may be mounted (:class:`~shoal.control._admission.MountPolicy`): checked
        before a mount's store is opened, whether the mount is new or read from the
        table (written by another worker, or before the operator narrowed the policy).
    stat_threads
        Stores asked about several paths at once.
    metadata_bytes
        Memory the metadata cache may take, as estimated (see :class:`MetadataCache`).

    Notes
    -----
    Thread-safe. Call :meth:`close` once at the end: it closes every store.
    """

    def __init__(
        self,
        mounts: MountTable,
        *,
        shared: bool,
        counters: Counters,
        policy: MountPolicy,
        stat_threads: int = 16,
        metadata_bytes: int = 128 << 20,
    ):
        self._mounts = mounts
        self._shared = shared
        self._counters = counters
        self._policy = policy
        self._refused: dict[str, Mount] = {}  # mounts of the table refused at use, as logged
        self.metadata = MetadataCache(max_bytes=metadata_bytes)
        self._lock = threading.Lock()
        self._stores: dict[str, UnderStore] = {}
        #: Requests, latencies and errors per mount point, those of closed stores kept.
        self.traffic = UnderStoreTraffic()
        self._files: dict[str, File] = {}  # path as asked -> file, while current
        self._epoch = 0
        self._policies = PolicyTable()
        #: Told of the prefixes whose policies changed (after the change holds).
        self.on_policies: Callable[[list[str]], None] | None = None
        # mount point -> (mount, policies, its options, whether policies change them below)
        self._owns: dict[str, tuple[Mount, PolicyTable, Mapping[str, Any], bool]] = {}
        self._pool = ThreadPoolExecutor(stat_threads, "shoal-stat")
        self._opening: dict[str, threading.Event] = {}  # paths read for their metadata now
        #: ``(mount, rel, store, path, start, end, own) -> ObjectInfo``: reads the first
        #: pages of a file whose metadata nothing tells, caches them (as its options in
        #: force, ``own``, say), and says what it is.
        self.fetch_first: Callable[..., ObjectInfo] | None = None
        #: ``(file) -> seconds``: how long the cached pages of a file under a ``ttl`` may
        #: still be served; a stat's record tells clients no longer than that.
        self.fresh_for: Callable[[File], float] | None = None
        #: Files written here that their under-store does not hold yet (``_writeback``):
        #: normalised path -> the file, or None for one deleted here whose delete the
        #: store has not seen yet. They hide what the store says of the same paths.
        self.pending: PendingFiles = PendingFiles()

    # ----------------------------------------------------------------- mounts

    def mount(self, path: str, uri: str, options: Mapping[str, Any]) -> Mount:
        """Mount ``uri`` at ``path`` once the policy admits it, after opening the store
        and listing one object, so a bad URI, option, endpoint or credential fails here
        with a clear error. A refusal by the policy is logged (without the values)."""
        path = normalize_path(path)
        _, store_options = split_mount_options(options)
        try:
            self._policy.check(uri, options)
        except ImportError as exc:
            raise ValueError(f"mount {path}: {exc}") from exc
        except (OSError, ValueError, TypeError) as exc:
            log.warning("mount of %s at %s refused: %s", redact_uri(uri), path, _text(exc))
            raise
        try:
            store = open_store(uri, **store_options)
        except ImportError as exc:
            raise ValueError(f"mount {path}: {exc}") from exc
        try:
            next(iter(store.list("", page_size=1)), None)
            mount = self._mounts.mount(path, uri, **options)
        except BaseException:
            store.close()
            raise
        with self._lock:
            old = self._stores.pop(mount.path, None)
            self._stores[mount.path] = store
            self._epoch += 1
        if old is not None:
            self._retire(mount.path, old)
        self.metadata.refresh(mount.path)
        log.info("mounted %s at %s", uri, mount.path)
        return mount

    def unmount(self, path: str) -> Mount:
        """Remove the mount at exactly ``path`` and close its store."""
        mount = self._mounts.unmount(path)
        with self._lock:
            store = self._stores.pop(mount.path, None)
            self._epoch += 1
        if store is not None:
            self._retire(mount.path, store)
        self.metadata.refresh(mount.path)
        log.info("unmounted %s", mount.path)
        return mount

    def mounts(self) -> list[Mount]:
        """Every mount, sorted by path (a shared table read again first), fit to show:
        values the policy would not admit are hidden (see
        :meth:`~shoal.control._admission.MountPolicy.shown`)."""
        if self._shared:
            self._reload_mounts()
        return [self._policy.shown(m) for m in self._mounts.mounts()]

    def mount_count(self) -> int:
        """Mounts in the table as last read."""
        return len(self._mounts.mounts())

    def set_policies(self, table: PolicyTable, changed: Iterable[str]) -> None:
        """Overlay the policies of ``table`` on the mounts' options from now on, and forget
        the metadata under the prefixes ``changed`` (cached for a TTL that may no longer
        hold); ``on_policies`` is told of them."""
        with self._lock:
            self._policies = table
            self._epoch += 1
        changed = list(changed)
        for prefix in changed:
            self.metadata.refresh(prefix)
        if changed and self.on_policies is not None:
            self.on_policies(changed)

    @property
    def policies(self) -> PolicyTable:
        """The policies in force."""
        return self._policies

    def options_at(self, path: str) -> Mapping[str, Any]:
        """Shoal's options in force at ``path`` (its mount's, overridden by policies);
        ``FileNotFoundError`` for a path under no mount."""
        path = normalize_path(path)
        return self._own(self.mount_of(path)[0], path)

    def _own(self, mount: Mount, path: str) -> Mapping[str, Any]:
        """Shoal's options in force at the normalised ``path`` under ``mount``: the
        mount's, and the other enforced policy fields (``OWN_DEFAULTS``), where no policy
        overrides them. Cheap when no policy touches the mount:
        its options are split once per mount and table."""
        own, covered = self._own_at(mount)
        if not covered:
            return own
        overrides = self._policies.overrides(path)
        return {**own, **overrides} if overrides else own

    def _own_at(self, mount: Mount) -> tuple[Mapping[str, Any], bool]:
        """The options in force at ``mount``'s root, and whether a policy may override them
        somewhere beneath it (else they hold at every path of the mount)."""
        policies = self._policies
        cached = self._owns.get(mount.path)
        if cached is None or cached[0] is not mount or cached[1] is not policies:
            own = MappingProxyType({**OWN_DEFAULTS, **split_mount_options(mount.options)[0]})
            cached = (mount, policies, own, policies.covers(mount.path))
            self._owns[mount.path] = cached
        return cached[2], cached[3]

    def _reload_mounts(self) -> None:
        """Read a shared mount table again (kept as it was while its store is down)."""
        before = self._mounts.mounts()
        try:
            self._mounts.reload()
        except OSError as exc:
            log.warning("mount table not reloaded: %s", exc)
            return
        with self._lock:
            self._epoch += 1
        if self._mounts.mounts() != before and self.metadata.on_refresh is not None:
            self.metadata.on_refresh(None)  # what was said of paths under another mount is void

    def _retire(self, where: str, store: UnderStore) -> None:
        """Close a mount's store, keeping its request counts, latencies and errors."""
        self.traffic.retire(where, store)
        with contextlib.suppress(Exception):
            store.close()

    def requests(self) -> dict[str, dict[str, int]]:
        """Requests sent to each mount's under-store since the worker started, by kind
        (``GET``, ``HEAD``, ``LIST`` ...), per mount point (unmounted ones included)."""
        return self.traffic.requests(self._open_stores())

    def latencies(self) -> dict[str, dict[str, dict]]:
        """How long the requests to each mount's under-store took since the worker
        started: a histogram per kind, per mount point (unmounted ones included; see
        :meth:`UnderStore.latencies`)."""
        return self.traffic.latencies(self._open_stores())

    def ufs_errors(self) -> dict[str, dict[str, int]]:
        """Requests to each mount's under-store that failed since the worker started, by
        kind, per mount point (unmounted ones included; see :meth:`UnderStore.errors`)."""
        return self.traffic.errors(self._open_stores())

    def _open_stores(self) -> dict[str, UnderStore]:
        with self._lock:
            return dict(self._stores)

    def store_of(self, mount: Mount) -> UnderStore:
        """The open store of ``mount``, opened on first use once the policy admits it.

        Raises
        ------
        PermissionError, ValueError
            The policy refuses the mount (a mount another worker wrote into a shared
            table, or one stored before the operator narrowed the policy); logged once
            per mount.
        """
        with self._lock:
            store = self._stores.get(mount.path)
        if store is not None:
            return store
        self._admit(mount)
        _, store_options = split_mount_options(mount.options)
        store = open_store(mount.uri, **store_options)
        with self._lock:
            current = self._stores.setdefault(mount.path, store)
        if current is not store:
            store.close()
        return current

    def _admit(self, mount: Mount) -> None:
        """Raise the policy's refusal of a mount of the table, naming the mount point;
        the first refusal of each mount is logged."""
        try:
            self._policy.check(mount.uri, mount.options)
        except ImportError as exc:
            raise ValueError(f"mount {mount.path}: {exc}") from exc
        except (OSError, ValueError, TypeError) as exc:
            with self._lock:
                first = self._refused.get(mount.path) != mount
                self._refused[mount.path] = mount
            if first:
                log.warning(
                    "mount %s (%s) refused at use: %s",
                    mount.path,
                    redact_uri(mount.uri),
                    _text(exc),
                )
            hint = f"; unmount it (shoal mount rm {mount.path}) or have the operator allow it"
            if isinstance(exc, OSError):
                raise type(exc)(exc.errno, f"mount {mount.path}: {_text(exc)}{hint}") from None
            raise type(exc)(f"mount {mount.path}: {exc}{hint}") from None

    # ----------------------------------------------------------------- files

    def _resolve(self, path: str) -> tuple[str, Mount, str, int]:
        """``path`` normalised, its mount, the path relative to it, the table's epoch."""
        path = normalize_path(path)
        epoch = self._epoch
        try:
            mount, rel = self._mounts.resolve(path)
        except FileNotFoundError:
            if not self._shared:
                raise
            self._reload_mounts()
            epoch = self._epoch
            mount, rel = self._mounts.resolve(path)
        return path, mount, rel, epoch

    def mount_of(self, path: str) -> tuple[Mount, str]:
        """The mount serving the normalised ``path`` and the path relative to it;
        ``FileNotFoundError`` when none does (a shared table read again first)."""
        try:
            return self._mounts.resolve(path)
        except FileNotFoundError:
            if not self._shared:
                raise
            self._reload_mounts()
            return self._mounts.resolve(path)

    def _current(self, path: str) -> File | None:
        """The file resolved for ``path`` before, while it is still current: the metadata
        cache holds the same stat and no mount changed since."""
        f = self._files.get(path)
        if f is not None and f.epoch == self._epoch and self.metadata.get_stat(f.path) is f.info:
            return f
        return None

    def file(self, path: str) -> File:
        """The file (or directory) at ``path``: from the metadata cache, from the cached
        listing of its directory (which also tells that it does not exist), or from the
        store (a stat); a file written here and not in its store yet first."""
        if self.pending:
            f = self._pending_file(path)
            if f is not None:
                return f
        f = self._current(path)
        if f is not None:
            return f
        raw = path
        path, mount, rel, epoch = self._resolve(path)
        own = self._own(mount, path)
        if not rel:
            self._admit(mount)  # its record carries the mount's options
            info = ObjectInfo("", 0, "", 0.0, is_dir=True)
            return File(path, mount, rel, info, b"", None, own, epoch)
        store = self.store_of(mount)
        ttl = own["metadata_ttl"]
        if self.pending and path in self.pending.dirs():  # holds files written here
            info = ObjectInfo(rel, 0, "", 0.0, is_dir=True)
        else:
            info = self.metadata.stat(
                path, ttl, lambda: self._stat_one(mount, store, rel, path, ttl)
            )
        fid = b"" if info.is_dir else file_id(mount.child_uri(rel), info.version)
        f = File(path, mount, rel, info, fid, store, own, epoch)
        if len(self._files) >= _MAX_FILES:
            self._files.clear()
        self._files[raw] = f
        return f

    def _pending_file(self, path: str) -> File | None:
        """The file written here at ``path`` that its store does not hold yet (None if
        there is none); ``FileNotFoundError`` for one deleted here."""
        norm = normalize_path(path)
        f = self.pending.get(norm, False)
        if f is None:
            raise FileNotFoundError(errno.ENOENT, f"{norm}: no such file or directory", norm)
        return f or None

    def pending_under(self, path: str) -> dict[str, File | None]:
        """Files written here under the directory ``path`` (normalised) that its store
        does not hold yet: child name -> the file, None for a deleted one, or ``...`` for
        a subdirectory holding some."""
        if not self.pending:
            return {}
        under = path.rstrip("/") + "/"
        out: dict[str, Any] = {}
        for p, f in list(self.pending.items()):
            if p.startswith(under):
                name, sep, _ = p[len(under) :].partition("/")
                if sep:
                    if f is not None:
                        out[name] = ...
                elif out.get(name) is not ...:
                    out[name] = f
        return out

    def _stat_one(
        self, mount: Mount, store: UnderStore, rel: str, path: str, ttl: float
    ) -> ObjectInfo:
        parent, _, name = rel.rpartition("/")
        where = _dir_path(mount, parent)
        listed = None
        # A listing is kept for its directory's TTL: it tells of a file whose TTL is no shorter.
        if self._own(mount, where)["metadata_ttl"] <= ttl:
            listed = self.metadata.get_dir(where)
        if listed is not None:
            info = listed.get(name)
            if info is None:
                raise FileNotFoundError(errno.ENOENT, f"{path}: no such file or directory", path)
            return info
        try:
            return store.stat(rel)
        except FileNotFoundError as exc:  # named by its Shoal path, and where it was looked for
            raise FileNotFoundError(
                errno.ENOENT, f"{path}: no such file or directory in {mount.child_uri(rel)}", path
            ) from exc

    def _file_to_read(self, path: str, start: int, end: int) -> File:
        """:meth:`file`, for a caller about to read bytes ``[start, end)`` of it: when
        nothing tells its metadata yet, one read of its first pages (cached on the way)
        tells it instead of a stat: a cold read costs one request."""
        if self.pending:
            f = self._pending_file(path)
            if f is not None:
                return f
        fetch_first = self.fetch_first
        f = self._current(path)
        if f is not None:
            return f
        norm, mount, rel, _ = self._resolve(path)
        own = self._own(mount, norm)
        if (
            not rel
            or fetch_first is None
            or own["metadata_ttl"] <= 0
            or self.metadata.get_stat(norm) is not None
            or self.metadata.get_dir(_dir_path(mount, rel.rpartition("/")[0])) is not None
        ):
            return self.file(path)
        with self._lock:
            waiting = self._opening.get(norm)
            if waiting is None:
                self._opening[norm] = threading.Event()
        if waiting is not None:  # another thread reads it first: its answer serves us
            waiting.wait()
            return self.file(path)
        try:
            info = fetch_first(mount, rel, self.store_of(mount), norm, start, end, own)
            self.metadata.put_stat(norm, info, own["metadata_ttl"])
        except (FileNotFoundError, IsADirectoryError):
            pass  # a directory (on an object store, a prefix), or nothing: a stat tells
        finally:
            with self._lock:
                self._opening.pop(norm).set()
        return self.file(path)

    def stat(self, paths: list[str], fetch: list | None = None) -> list[dict]:
        """File records, or ``{"error": ...}`` per path that fails; the stores are asked
        about several paths at once, and the directories of many uncached files listed.

        ``fetch``: per path, None or the ``[start, end)`` the caller is about to read (see
        :meth:`_file_to_read`)."""

        def one(i: int) -> dict:
            try:
                want = fetch[i] if fetch is not None else None
                f = self.file(paths[i]) if want is None else self._file_to_read(paths[i], *want)
                record = f.record()
                if f.own["ttl"] and self.fresh_for is not None:
                    # Remembered locations are used only while the pages may be served.
                    record["metadata_ttl"] = min(record["metadata_ttl"], self.fresh_for(f))
                return record
            except (OSError, ValueError, TypeError) as exc:
                return {"error": encode_error(exc)}

        if len(paths) == 1:
            return [one(0)]
        self._prime(paths)
        # Those the cache or a listing answers, here; the others (a request to the store
        # each) several at once.
        out: list[dict | None] = [None] * len(paths)
        asking = []
        for i, p in enumerate(paths):
            if self._known(p):
                out[i] = one(i)
            else:
                asking.append(i)
        for i, record in zip(asking, self._pool.map(one, asking), strict=True):
            out[i] = record
        return out

    def _known(self, path: str) -> bool:
        """True if the metadata cache, or the cached listing of its directory, tells what
        ``path`` is (no request to a store needed)."""
        if self._current(path) is not None:
            return True
        try:
            norm, mount, rel, _ = self._resolve(path)
        except (OSError, ValueError):
            return True  # an error, told at once
        return (
            not rel
            or self.metadata.get_stat(norm) is not None
            or self.metadata.get_dir(_dir_path(mount, rel.rpartition("/")[0])) is not None
        )

    def _prime(self, paths: list[str]) -> None:
        """List the directories of many uncached files (whole, cached for the mount's
        TTL) rather than stat each: the cold epoch of a dataset of small files costs one
        listing per directory."""
        groups: dict[tuple[str, str], int] = {}
        mounts: dict[str, Mount] = {}
        for p in paths:
            try:
                path = normalize_path(p)
                mount, rel = self._mounts.resolve(path)
            except (ValueError, FileNotFoundError):
                continue  # reported by the stat of that path
            if rel and self.metadata.get_stat(path) is None:
                key = (mount.path, rel.rpartition("/")[0])
                groups[key] = groups.get(key, 0) + 1
                mounts[mount.path] = mount
        for (where, parent), count in groups.items():
            mount = mounts[where]
            own = self._own(mount, _dir_path(mount, parent))
            if count < _PRIME_MIN or own["metadata_ttl"] <= 0:
                continue
            with contextlib.suppress(OSError, ValueError):  # each stat reports what is wrong
                self.directory(mount, parent, own)

    def directory(self, mount: Mount, parent: str, own: Mapping[str, Any]) -> dict[str, ObjectInfo]:
        """The entries directly in the directory ``parent`` (relative to ``mount``), by
        name: one whole listing per directory per metadata TTL."""
        path = _dir_path(mount, parent)
        cached = self.metadata.get_dir(path)
        if cached is not None:
            return cached
        infos = self.store_of(mount).list_dir(parent)
        entries: dict[str, ObjectInfo] = {}
        ttl = own["metadata_ttl"]
        base = mount.path.rstrip("/")
        for info in infos:
            name = info.path.rpartition("/")[2]
            if name not in entries:  # an object and a directory of one name: the object
                entries[name] = info
            if not info.is_dir:
                child = f"{base}/{info.path}"
                self.metadata.put_stat(child, info, self._own(mount, child)["metadata_ttl"])
        self.metadata.put_dir(path, entries, ttl)
        return entries

    def _listing_runs(
        self, f: File, run: int, listed: Iterator[list[ObjectInfo]] | None = None
    ) -> Iterator[list[tuple[str, ObjectInfo]]]:
        """Every object under the directory ``f`` (its listing cached for the mount's
        TTL), as ``(path, info)`` in runs of at most ``run`` (``listed``: the store's
        listing in runs, begun already by :meth:`_begin_listing`), each run's stats
        cached as it comes (a cached listing's too: its stats may have gone before it);
        the listing is cached once it is whole."""
        base = f.mount.path.rstrip("/")
        cached = None
        if listed is None:
            cached = self.metadata.get_list(f.path)
            if cached is None:
                listed = self._begin_listing(f, run)
            else:
                listed = (cached[at : at + run] for at in range(0, len(cached), run))
        infos: list[ObjectInfo] = []
        for part in listed:
            if cached is None:
                infos += part
            known = [(f"{base}/{info.path}", info) for info in part]
            self._put_stats(f.mount, known)
            yield known
        if cached is None:
            self.metadata.put_list(f.path, infos, f.own["metadata_ttl"])

    def _begin_listing(self, f: File, run: int) -> Iterator[list[ObjectInfo]]:
        """The store's listing under the directory ``f`` in runs of at most ``run``, begun
        now in a thread of its own (see :func:`_ahead`)."""
        return _ahead(self.store_of(f.mount).list(f.rel + "/" if f.rel else ""), run)

    def _put_stats(self, mount: Mount, items: list[tuple[str, ObjectInfo]]) -> None:
        """Cache the stats of files under ``mount`` (``(path, info)``), each for the
        ``metadata_ttl`` in force at its path, those of one TTL together."""
        own, covered = self._own_at(mount)
        if not covered:  # one TTL for them all
            self.metadata.put_stats(items, own["metadata_ttl"])
            return
        by_ttl: dict[float, list[tuple[str, ObjectInfo]]] = {}
        for item in items:
            by_ttl.setdefault(self._own(mount, item[0])["metadata_ttl"], []).append(item)
        for ttl, group in by_ttl.items():
            self.metadata.put_stats(group, ttl)

    def ls(self, path: str) -> list[dict]:
        """Entries directly under ``path``: files, directories, and mount points."""
        path = normalize_path(path)
        entries: dict[str, dict] = {}
        under = path.rstrip("/") + "/"
        for m in self._mounts.mounts():
            if m.path.startswith(under) and m.path != path:
                name = m.path[len(under) :].split("/")[0]
                entries[name] = entry(under + name, ObjectInfo(name, 0, "", 0.0, True))
        pending = self.pending_under(path)
        try:
            f = self.file(path)
        except FileNotFoundError:
            if entries or path == "/":
                return [entries[n] for n in sorted(entries)]
            raise
        if not f.info.is_dir:
            return [entry(path, f.info)]
        base = f.mount.path.rstrip("/")
        try:
            listed = self.directory(f.mount, f.rel, f.own)
        except FileNotFoundError:
            if not pending:
                raise
            listed = {}  # a directory of files written here only
        for name, info in listed.items():
            if info.is_dir:
                entries.setdefault(name, entry(under + name, ObjectInfo(name, 0, "", 0.0, True)))
            else:
                entries[name] = entry(f"{base}/{info.path}", info)
        for name, pf in pending.items():  # written here, not in the store yet
            if pf is None:
                entries.pop(name, None)
            elif pf is ...:
                entries.setdefault(name, entry(under + name, ObjectInfo(name, 0, "", 0.0, True)))
            else:
                entries[name] = entry(under + name, pf.info)
        if not entries and f.rel and (f.store is None or f.store.implicit_dirs):
            # A directory on an object store exists only through its objects.
            raise FileNotFoundError(errno.ENOENT, f"{path}: no such file or directory", path)
        return [entries[n] for n in sorted(entries)]

    def refresh(self, path: str) -> int:
        """Forget the metadata of ``path`` and everything under it; entries dropped."""
        return self.metadata.refresh(normalize_path(path))

    def files_under(self, paths: Iterable[str]) -> list[File]:
        """The files named by ``paths``, directories expanded to every file below them."""
        return [f for run in self.files_under_runs(paths) for f in run]

    def files_under_runs(self, paths: Iterable[str], run: int = 4096) -> Iterator[list[File]]:
        """:meth:`files_under` in runs of at most ``run`` files, each as soon as the
        store has listed it (a load works on one while the store lists the next). A file
        named twice comes once. The store lists the next directory while the caller works
        on the runs of this one."""
        named = [self.file(p) for p in paths]
        # A file comes twice only where one path named is another or lies under another.
        seen: set[str] | None = set() if _overlap([f.path for f in named]) else None

        def begun(k: int) -> Iterator[list[ObjectInfo]] | None:
            """The listing of the k-th path begun, unless there is none to make."""
            if k >= len(named) or not named[k].info.is_dir:
                return None
            if self.metadata.get_list(named[k].path) is not None:
                return None
            return self._begin_listing(named[k], run)

        ahead = deque(begun(k) for k in range(_LISTINGS_AHEAD))
        for k, f in enumerate(named):
            listed = ahead.popleft()
            ahead.append(begun(k + _LISTINGS_AHEAD))
            if not f.info.is_dir:
                if seen is None or f.path not in seen:
                    if seen is not None:
                        seen.add(f.path)
                    yield [f]
                continue
            mount, epoch = f.mount, f.epoch
            store = self.store_of(mount)
            uri = mount.uri.rstrip("/") + "/"
            own, covered = self._own_at(mount)
            for known in self._listing_runs(f, run, listed):
                fids = file_ids(uri, [info for _, info in known])  # each as file_id makes it
                if seen is None and not covered:  # the common case: one set of options
                    out = [
                        File(child, mount, info.path, info, fid, store, own, epoch)
                        for (child, info), fid in zip(known, fids, strict=True)
                    ]
                else:
                    out = []
                    for (child, info), fid in zip(known, fids, strict=True):
                        if seen is not None:
                            if child in seen:
                                continue
                            seen.add(child)
                        if covered:
                            own = self._own(mount, child)
                        out.append(File(child, mount, info.path, info, fid, store, own, epoch))
                if out:
                    yield out

    # ----------------------------------------------------------------- lifetime

    def close(self) -> None:
        """Stop the stat threads and close every store."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            stores = list(self._stores.values())
            self._stores.clear()
        for store in stores:
            with contextlib.suppress(Exception):
                store.close()


def _overlap(paths: list[str]) -> bool:
    """True when one of ``paths`` (normalised Shoal paths) is another one, or lies under
    another one."""
    named = set(paths)
    if len(named) < len(paths) or ("/" in named and len(named) > 1):
        return True
    for path in paths:
        cut = path.rfind("/")
        while cut > 0:
            path = path[:cut]
            if path in named:
                return True
            cut = path.rfind("/")
    return False


def _ahead(items: Iterator[Any], run: int, depth: int = 4) -> Iterator[list[Any]]:
    """``items`` in lists of at most ``run``, taken from it from now on by a thread of
    their own, at most ``depth`` lists ahead of the caller: a store's listing goes on
    (natively, the GIL let go, for a local directory) while the caller works on what was
    listed before. An error of ``items`` is raised where it comes; a caller that stops
    early, or drops the iterator unread, stops the thread."""
    done = object()
    queue: Queue = Queue(depth)
    stop = threading.Event()

    def put(value: Any) -> bool:
        """Hand ``value`` over; False once the caller stopped."""
        while not stop.is_set():
            with contextlib.suppress(Full):
                queue.put(value, timeout=0.1)
                return True
        return False

    def produce() -> None:
        try:
            while part := list(itertools.islice(items, run)):
                if not put(part):
                    return
            put((done, None))
        except BaseException as exc:  # noqa: BLE001 - raised in the caller
            put((done, exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:  # a listing's descriptors closed now, in this thread
                close()

    def consume() -> Iterator[list[Any]]:
        try:
            while True:
                part = queue.get()
                if type(part) is tuple and part[0] is done:
                    if part[1] is not None:
                        raise part[1]
                    return
                yield part
        finally:
            stop.set()

    threading.Thread(target=produce, name="shoal-list", daemon=True).start()
    out = consume()
    weakref.finalize(out, stop.set)  # dropped before its first run: no finally of its own
    return out
