"""Writes through the worker: files written whole, held on the node until their
under-store has them (write-back), journaled so that a crash loses nothing acknowledged.

A write lands in a staging file of its own under ``$SHOAL_HOME/dirty`` (0700; files 0600).
A client on the worker's Unix socket is handed a descriptor of it and writes its bytes
there itself, with one copy; a TCP client sends them in ``write_data`` requests. At commit
the worker checks the size, fsyncs the file, and journals the upload in its RocksDB index
(a record per write, synced): from then on the file is durable on the node and every
reader of the worker sees it (:attr:`FileResolver.pending`), served from the staging file
through the page store like any file. Uploads run in the background, oldest first, one at
a time per path, retried with backoff while the store fails; a journal record goes only
once the object is in the store, then the bytes become ordinary cached pages of the new
object and the staging file goes. A restart resumes from the journal.

Written bytes not yet uploaded count against the dirty budget (``Config.dirty_bytes``):
a writer is reserved room before it writes; past the budget it waits up to
``Config.dirty_wait`` seconds for uploads, then gets ``ENOSPC``. Staging files are never
evicted. A delete or rename of a file being uploaded waits for that upload (a late
upload never brings an old version back); one of a file whose upload has not started
changes the journal instead. ``write_through`` uploads before the commit returns (and so
does ``write_back`` in a cluster, whose other workers cannot read this node's staging
files); ``cache_only`` files are never uploaded and stay in the budget until deleted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import itertools
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..engine import PageStore
from ._files import File, FileResolver
from ._namespace import normalize_path
from ._pages import file_id, page_count, page_key, page_length
from ._server import ConnectionState, Reply
from .ufs import ObjectChangedError, ObjectInfo, UnderStore

__all__ = ["WriteBack"]

log = logging.getLogger("shoal.worker")

_JOURNAL = b"\x00wb/"  # record name prefix: 8-byte sequence number -> JSON entry
_UPLOADERS = 2
_MAX_BACKOFF = 30.0
_INGEST_PAGES = 8  # pages read from a staging file at a time into the cache


@dataclass
class _Entry:
    """One journaled write (``kind`` ``put``) or delete of a store object (``rm``)."""

    seq: int
    kind: str
    path: str
    name: str = ""  # the staging file
    size: int = 0
    mode: str = "write_back"
    mtime: float = field(default_factory=time.time)  # when it was committed
    uploading: bool = False  # until its upload is done with (landed and cached)
    landed: bool = False  # in its store: persisted, the staging file not gone yet
    attempts: int = 0
    not_before: float = 0.0  # monotonic: no new attempt before

    @property
    def unsettled(self) -> bool:
        """Not in its store yet, or in it and still being taken in (cached, the stats and
        listings said of it renewed): what readers see may still change because of it."""
        return not self.landed or self.uploading

    def record(self) -> tuple[bytes, bytes]:
        value = {"kind": self.kind, "path": self.path, "name": self.name, "size": self.size,
                 "mode": self.mode, "mtime": self.mtime}  # fmt: skip
        return _JOURNAL + self.seq.to_bytes(8, "big"), json.dumps(value).encode()


@dataclass
class _Open:
    """A write in progress on one connection."""

    path: str
    name: str
    fd: int
    mode: str
    owner: int  # id of its connection
    reserved: int = 0
    written: int = 0  # bytes received over TCP
    quota: int | None = None  # bytes its path's quota allows


class _Staged(UnderStore):
    """The under-store of one written file while it is pending: its staging file, opened
    by name for each read (no descriptor outlives the file: a read after the file went
    is told to ask again, and finds the uploaded object)."""

    scheme = "shoal-staged"

    def __init__(self, dir_fd: int, name: str, info: ObjectInfo, uri: str):
        super().__init__()
        self._dir_fd, self._name, self._info, self._uri = dir_fd, name, info, uri

    @classmethod
    def from_uri(cls, uri: str, **options: Any) -> UnderStore:
        raise ValueError("a staging file is no store to mount")

    @property
    def uri(self) -> str:
        return self._uri

    def uri_of(self, path: str) -> str:
        return self._uri

    def _stat(self, key: str) -> ObjectInfo:
        return self._info

    def _list(self, prefix, page_size, start_after):
        return iter(())

    def _read_into(self, key: str, offset: int, view: memoryview, version: str | None) -> int:
        if version is not None and version != self._info.version:
            raise ObjectChangedError(f"{self._uri} changed; read it again", self._uri)
        try:
            fd = os.open(
                self._name, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW, dir_fd=self._dir_fd
            )
        except OSError:
            raise ObjectChangedError(
                f"{self._uri} was uploaded; read it again", self._uri
            ) from None
        try:
            end = min(self._info.size, offset + view.nbytes)
            done = 0
            while offset + done < end:
                n = os.preadv(fd, [view[done : end - offset]], offset + done)
                if n == 0:
                    raise OSError(errno.EIO, f"{self._uri}: staging file is shorter than written")
                done += n
            return done
        finally:
            os.close(fd)

    def _write(self, key, source):
        raise PermissionError(errno.EPERM, "a staging file is written by its writer only")

    def _delete(self, key, missing_ok):
        raise PermissionError(errno.EPERM, "a staging file is removed by the worker only")

    def _close(self) -> None:
        pass


class _Bounded:
    """A binary reader of the first ``size`` bytes of a descriptor (what an upload sends:
    exactly the bytes committed)."""

    def __init__(self, fd: int, size: int):
        self._fd, self._left, self._at = fd, size, 0

    def read(self, n: int = -1) -> bytes:
        n = self._left if n is None or n < 0 else min(n, self._left)
        if n <= 0:
            return b""
        data = os.pread(self._fd, n, self._at)
        if not data:
            raise OSError(errno.EIO, "staging file is shorter than committed")
        self._at += len(data)
        self._left -= len(data)
        return data


def _check_quota(path: str, size: int, quota: int | None) -> None:
    """``EDQUOT`` for a file larger than ``quota``, the quota in force at its path."""
    if quota is not None and size > quota:
        raise OSError(
            errno.EDQUOT, f"{path}: {size} bytes exceed the quota of {quota} bytes there", path
        )


class WriteBack:
    """The worker's writes: staging files, the dirty budget, the journal, the uploaders.

    Parameters
    ----------
    store
        The page store: the journal lives in its index, uploaded bytes go to its pages.
    files
        The worker's files: mounts, options in force (``write_mode``), and the pending
        files every reader sees (:attr:`FileResolver.pending`).
    cache
        ``(items, path, record, own, size) -> keys stored``: puts pages of an uploaded
        file into the cache (``Fetcher.cache``).
    record_of
        ``(path, uri, info, ttl) -> record``: the file record kept with its first page.
    directory, budget, wait
        Where staging files go; bytes of them allowed; seconds a writer waits for room.
    in_cluster
        True when other workers read this node's files: ``write_back`` then uploads
        before a commit returns (they cannot read staging files).
    """

    def __init__(
        self,
        store: PageStore,
        files: FileResolver,
        *,
        cache: Callable[..., set],
        record_of: Callable[..., Any],
        directory: str,
        budget: int,
        wait: float,
        page_size: int,
        in_cluster: Callable[[], bool] = lambda: False,
    ):
        self._store, self._files = store, files
        self._cache, self._record_of = cache, record_of
        self._budget, self._wait, self._page_size = budget, wait, page_size
        self._in_cluster = in_cluster
        os.makedirs(directory, mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)
        self.directory = directory
        self._dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._cond = threading.Condition()
        self._entries: dict[int, _Entry] = {}  # by sequence number: oldest first
        self._open: dict[int, _Open] = {}
        self._handles = itertools.count(1)
        self._dirty = 0  # committed bytes not in their store yet (cache_only included)
        self._reserved = 0  # room reserved by writes in progress
        self._stats = dict.fromkeys(
            ("uploaded_files", "uploaded_bytes", "upload_failures", "written_files",
             "written_bytes", "enospc"), 0,
        )  # fmt: skip
        self._closing = False
        self._seq = self._resume()
        self._threads = [
            threading.Thread(target=self._upload_loop, name=f"shoal-upload-{i}", daemon=True)
            for i in range(_UPLOADERS)
        ]
        for t in self._threads:
            t.start()

    def handlers(self) -> dict[str, Callable[[ConnectionState, dict], Reply]]:
        """The write ops, for the server's table."""
        return {
            "write_open": self._open_op,
            "write_grow": lambda c, h: Reply({"reserved": self._grow(c, h["handle"], h["size"])}),
            "write_data": self._data_op,
            "write_commit": lambda c, h: Reply(self._commit(c, h["handle"], h["size"])),
            "write_abort": lambda c, h: Reply(self._abort(self._take(c, h["handle"]))),
            "delete": lambda c, h: Reply(self.delete(h["path"])),
            "rename": lambda c, h: Reply(self.rename(h["src"], h["dst"])),
            "persisted": lambda c, h: Reply({"persisted": self.persisted(h["paths"])}),
            "wait_persisted": lambda c, h: Reply(self.wait(h["path"], h["timeout"])),
        }

    # ----------------------------------------------------------------- writing

    def _target(self, path: str) -> tuple[str, str, Any]:
        """The normalised path, its write mode and options; the errors a write there
        gets (no mount, a mount point or directory, a read-only path)."""
        path = normalize_path(path)
        mount, rel = self._files.mount_of(path)
        if not rel:
            raise IsADirectoryError(errno.EISDIR, f"{path} is a mount point, not a file", path)
        own = self._files.options_at(path)
        mode = own["write_mode"]
        if mode == "read_only":
            raise PermissionError(errno.EROFS, f"{path}: read-only (write_mode read_only)", path)
        if not self._files.store_of(mount).implicit_dirs:  # real directories (a POSIX one)
            try:
                is_dir = self._files.file(path).info.is_dir
            except OSError:
                is_dir = False  # nothing there (or the store is down: the upload tells)
            if is_dir:
                raise IsADirectoryError(errno.EISDIR, f"{path} is a directory", path)
        return path, mode, own

    def _open_op(self, conn: ConnectionState, h: dict) -> Reply:
        path, mode, own = self._target(h["path"])
        size = h["size"]
        _check_quota(path, size, own.get("quota"))
        reserved = self._reserve(max(size, 0), path)
        name = "w" + secrets.token_hex(12)
        flags = os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            fd = os.open(name, os.O_RDWR | flags, 0o600, dir_fd=self._dir_fd)
        except BaseException:
            self._release(reserved)
            raise
        handle = next(self._handles)
        op = _Open(path, name, fd, mode, id(conn), reserved, quota=own.get("quota"))
        with self._cond:
            self._open[handle] = op
        if not any(getattr(c, "func", None) == self._drop_connection for c in conn.closers):
            conn.closers.append(functools.partial(self._drop_connection, id(conn)))
        answer = {"handle": handle, "mode": mode, "reserved": reserved}
        if conn.remote:
            return Reply(answer)
        wfd = os.open(name, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW, dir_fd=self._dir_fd)
        return Reply(answer, fds=[wfd], owned=True)

    def _take(self, conn: ConnectionState, handle: int, keep: bool = False) -> _Open:
        with self._cond:
            op = self._open.get(handle)
            if op is None or op.owner != id(conn):
                raise ValueError(f"write handle {handle} is not open on this connection")
            if not keep:
                del self._open[handle]
        return op

    def _grow(self, conn: ConnectionState, handle: int, size: int) -> int:
        """Reserve room for the write ``handle`` to reach ``size`` bytes."""
        op = self._take(conn, handle, keep=True)
        _check_quota(op.path, size, op.quota)
        if size > op.reserved:
            got = self._reserve(size - op.reserved, op.path)
            with self._cond:
                op.reserved += got
        return op.reserved

    def _data_op(self, conn: ConnectionState, h: dict) -> Reply:
        op = self._take(conn, h["handle"], keep=True)
        data = conn.payload
        if data is None:
            raise ValueError("write_data: no payload")
        if h["offset"] != op.written:
            raise ValueError(f"write_data: offset {h['offset']}, expected {op.written} (in order)")
        self._grow(conn, h["handle"], op.written + data.nbytes)
        done = 0
        while done < data.nbytes:
            done += os.pwrite(op.fd, data[done:], op.written + done)
        op.written += done
        return Reply({"written": op.written})

    def _commit(self, conn: ConnectionState, handle: int, size: int) -> dict:
        op = self._take(conn, handle)
        try:
            have = os.fstat(op.fd).st_size
            if have < size:
                raise ValueError(f"write_commit: {op.path} holds {have} bytes, not {size}")
            if size > op.reserved:
                got = self._reserve(size - op.reserved, op.path)
                op.reserved += got
            if have > size:
                os.ftruncate(op.fd, size)
            if op.mode != "cache_only":
                os.fsync(op.fd)
            now = op.mode == "write_through" or (op.mode == "write_back" and self._in_cluster())
            entry = self._journal(op, size, claim=now)
        except BaseException:
            self._abort(op)
            raise
        if now:
            self._upload_now(entry)
        return {"size": size, "version": self._pending_version(entry), "mode": op.mode,
                "persisted": entry.seq not in self._entries}  # fmt: skip

    def _journal(self, op: _Open, size: int, claim: bool = False) -> _Entry:
        """Record the committed write ``op`` in the journal (synced) and show its file;
        ``claim``: the caller uploads it (no uploader takes it)."""
        with self._cond:
            entry = _Entry(self._seq, "put", op.path, op.name, size, op.mode, time.time())
            entry.uploading = claim
            self._seq += 1
            self._store.put_records([entry.record()], sync=op.mode != "cache_only")
            self._entries[entry.seq] = entry
            self._reserved -= op.reserved
            self._dirty += size
            # A path read before may be in the table of published files: void it.
            known = op.path in self._files.pending or (
                self._files.metadata.get_stat(op.path) is not None
            )
            self._show(entry)
            self._stats["written_files"] += 1
            self._stats["written_bytes"] += size
            self._cond.notify_all()
        if known:  # the listings above stay: the pending file overrides them
            self._files.metadata.refresh(op.path, above=False, only=True)
        return entry

    def _show(self, entry: _Entry) -> None:
        """Make ``entry``'s file what readers of its path see (under the lock)."""
        mount, rel = self._files.mount_of(entry.path)
        version = self._pending_version(entry)
        info = ObjectInfo(rel, entry.size, version, entry.mtime)
        uri = mount.child_uri(rel)
        own = self._files.options_at(entry.path)
        store = _Staged(self._dir_fd, entry.name, info, uri)
        self._files.pending[entry.path] = File(
            entry.path, mount, rel, info, file_id(uri, version), store, own
        )

    def _open_staged(self, name: str) -> int:
        return os.open(name, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW, dir_fd=self._dir_fd)

    @staticmethod
    def _pending_version(entry: _Entry) -> str:
        return f"shoal-w{entry.seq}-{entry.size}"

    def _abort(self, op: _Open) -> dict:
        with contextlib.suppress(OSError):
            os.close(op.fd)
        with contextlib.suppress(OSError):
            os.unlink(op.name, dir_fd=self._dir_fd)
        self._release(op.reserved)
        return {}

    def _drop_connection(self, owner: int) -> None:
        """Drop the writes a closed connection left open."""
        with self._cond:
            ops = [h for h, op in self._open.items() if op.owner == owner]
            dropped = [self._open.pop(h) for h in ops]
        for op in dropped:
            self._abort(op)

    # ----------------------------------------------------------------- budget

    def _reserve(self, n: int, path: str) -> int:
        """Reserve ``n`` bytes of the dirty budget, waiting up to ``wait`` seconds for
        uploads to make room; ``ENOSPC`` naming the budget otherwise."""
        if n <= 0:
            return 0
        deadline = time.monotonic() + self._wait
        with self._cond:
            while self._dirty + self._reserved + n > self._budget:
                left = deadline - time.monotonic()
                uploadable = any(e.mode != "cache_only" for e in self._entries.values())
                if n > self._budget or left <= 0 or not uploadable or self._closing:
                    self._stats["enospc"] += 1
                    raise OSError(
                        errno.ENOSPC,
                        f"{path}: the worker's dirty budget of {self._budget} bytes is full "
                        f"({self._dirty} written and not uploaded yet, {self._reserved} being "
                        f"written; {n} more asked); waited {self._wait:g} s for uploads "
                        "(dirty_bytes and dirty_wait in the worker's config)",
                        path,
                    )
                self._cond.wait(min(left, 1.0))
            self._reserved += n
        return n

    def _release(self, n: int) -> None:
        if n:
            with self._cond:
                self._reserved -= n
                self._cond.notify_all()

    # ----------------------------------------------------------------- delete, rename

    def _latest(self, path: str) -> list[_Entry]:
        return [e for e in self._entries.values() if e.path == path and e.kind == "put"]

    def _fence(self, path: str) -> list[_Entry]:
        """Wait until no upload of ``path`` runs; its entries then (under the lock)."""
        while True:
            entries = self._latest(path)
            if not any(e.uploading for e in entries):
                return entries
            self._cond.wait(1.0)

    def _drop_entries(self, entries: list[_Entry]) -> None:
        """Forget journaled puts that will not be uploaded (under the lock)."""
        if not entries:
            return
        self._store.put_records([], delete=[e.record()[0] for e in entries], sync=True)
        for e in entries:
            del self._entries[e.seq]
            self._dirty -= e.size
            with contextlib.suppress(OSError):
                os.unlink(e.name, dir_fd=self._dir_fd)
        self._cond.notify_all()

    def delete(self, path: str) -> dict:
        """Remove the file at ``path``. An upload of it running is waited for and its
        writes not uploaded yet are dropped; then, under ``write_back``, the delete is
        journaled and sent to the store in order (the file is gone for readers at once),
        else sent now. ``FileNotFoundError`` when there is nothing to delete."""
        path, mode, _ = self._target(path)
        mount, rel = self._files.mount_of(path)
        now = mode == "write_through" or self._in_cluster()
        with self._cond:
            pending = self._fence(path)
        if not pending:
            self._files.file(path)  # FileNotFoundError when nothing is there
        with self._cond:
            pending = self._fence(path)
            self._drop_entries(pending)  # before the lock goes: no uploader takes them now
            if mode == "cache_only" and pending:
                self._files.pending.pop(path, None)
            elif not now:
                rm = _Entry(self._seq, "rm", path, mode=mode)
                self._seq += 1
                self._store.put_records([rm.record()], sync=True)
                self._entries[rm.seq] = rm
                self._files.pending[path] = None  # gone, though the store says otherwise yet
                self._cond.notify_all()
            else:
                self._files.pending.pop(path, None)
        try:
            if now or (mode == "cache_only" and not pending):
                self._files.store_of(mount).delete(rel, missing_ok=bool(pending))
        finally:
            self._files.metadata.refresh(path, above=now, only=True)
        return {}

    def rename(self, src: str, dst: str) -> dict:
        """Move the file ``src`` to ``dst`` (replacing it). A file not uploaded yet is
        moved in the journal, atomically (its upload goes to ``dst``, then the store's
        ``src``, if any, is deleted); one its store holds is copied, then deleted."""
        src = normalize_path(src)
        dst, _, _ = self._target(dst)
        smount, _ = self._files.mount_of(src)
        dmount, _ = self._files.mount_of(dst)
        if smount.path != dmount.path:
            raise OSError(
                errno.EXDEV, f"rename: {src} and {dst} are under different mounts", src, None, dst
            )
        if src == dst:
            return {}
        with self._cond:
            entries = self._fence(src)
            latest = entries[-1] if entries else None
            if latest is not None:
                self._drop_entries(entries[:-1])
                older = self._fence(dst)
                moved = dataclasses.replace(latest, path=dst)  # same record name: replaced
                writes = [moved.record()]
                rm = None
                if latest.mode != "cache_only":  # the store may hold an older src
                    rm = _Entry(self._seq, "rm", src, mode=latest.mode)
                    self._seq += 1
                    writes.append(rm.record())
                self._store.put_records(writes, sync=True)
                self._entries[moved.seq] = moved
                if rm is not None:
                    self._entries[rm.seq] = rm
                    self._files.pending[src] = None  # gone, though the store may say otherwise
                else:
                    self._files.pending.pop(src, None)
                self._show(moved)
                self._drop_entries(older)
                self._cond.notify_all()
        if latest is None:
            self._rename_stored(src, dst)
        self._files.metadata.refresh(src, above=latest is None, only=True)
        self._files.metadata.refresh(dst, above=latest is None, only=True)
        if latest is not None and (latest.mode == "write_through" or self._in_cluster()):
            left = self.wait(dst, self._wait)["files"] + self.wait(src, self._wait)["files"]
            if left:
                raise TimeoutError(
                    errno.ETIMEDOUT,
                    f"rename: {src} is {dst} now, but the store has not taken the change "
                    f"after {self._wait:g} s; its upload goes on in the background",
                    dst,
                )
        return {}

    def _rename_stored(self, src: str, dst: str) -> None:
        """Rename a file its store holds: copied to ``dst`` (through a staging file),
        then deleted."""
        f = self._files.file(src)
        if f.info.is_dir:
            raise IsADirectoryError(errno.EISDIR, f"rename: {src} is a directory", src)
        dmount, drel = self._files.mount_of(dst)
        name = "r" + secrets.token_hex(12)
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
        fd = os.open(name, flags, 0o600, dir_fd=self._dir_fd)
        try:
            buf = bytearray(min(f.info.size, 16 << 20) or 1)
            at = 0
            while at < f.info.size:
                n = f.store.read_into(f.rel, at, buf, version=f.info.version)
                if n <= 0:
                    raise OSError(errno.EIO, f"rename: {src} ended early")
                os.pwrite(fd, memoryview(buf)[:n], at)
                at += n
            self._files.store_of(dmount).write(drel, _Bounded(fd, f.info.size))
        finally:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=self._dir_fd)
        f.store.delete(f.rel)

    # ----------------------------------------------------------------- persistence

    def persisted(self, paths: list[str]) -> list[bool]:
        """Per path: True when no write of it waits for its store (a ``cache_only``
        file is never persisted)."""
        norm = [normalize_path(p) for p in paths]
        with self._cond:
            waiting = {e.path for e in self._entries.values() if e.unsettled}
        return [p not in waiting for p in norm]

    def _left(self, path: str) -> tuple[int, int]:
        """Files under ``path`` and their bytes :attr:`_Entry.unsettled`: a waiter woken
        when none are left sees what the store holds, and nothing voids it later."""
        under = path.rstrip("/") + "/"
        left = [
            e for e in self._entries.values()
            if e.mode != "cache_only" and e.unsettled
            and (not path or e.path == path or e.path.startswith(under))
        ]  # fmt: skip
        return len(left), sum(e.size for e in left)

    def wait(self, path: str, timeout: float) -> dict:
        """Wait up to ``timeout`` seconds until nothing under ``path`` ("" for all) waits
        for its store; what is left then."""
        path = normalize_path(path) if path else ""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                files, nbytes = self._left(path)
                left = deadline - time.monotonic()
                if not files or left <= 0:
                    return {"files": files, "bytes": nbytes}
                self._cond.wait(min(left, 1.0))

    def report(self) -> dict:
        """What ``shoal report`` shows of writes."""
        now = time.time()
        with self._cond:
            live = [e for e in self._entries.values() if not e.landed]
            waiting = [e for e in live if e.mode != "cache_only"]
            return {
                "dirty_files": sum(1 for e in live if e.kind == "put"),
                "dirty_bytes": self._dirty,
                "reserved_bytes": self._reserved,
                "budget_bytes": self._budget,
                "pending_uploads": len(waiting),
                "uploading": sum(1 for e in waiting if e.uploading),
                "oldest_seconds": max((now - e.mtime for e in waiting), default=0.0),
                **self._stats,
            }

    # ----------------------------------------------------------------- uploads

    def _next(self) -> _Entry | None:
        """The oldest entry to upload now (under the lock), marked uploading."""
        now = time.monotonic()
        busy = {e.path for e in self._entries.values() if e.uploading}
        for e in self._entries.values():
            if e.mode == "cache_only" or e.uploading:
                continue
            if e.path in busy:
                busy.add(e.path)
                continue
            busy.add(e.path)  # a later entry of the same path waits for this one
            if e.not_before > now:
                continue
            e.uploading = True
            return e
        return None

    def _upload_loop(self) -> None:
        while True:
            with self._cond:
                entry = self._next()
                while entry is None and not self._closing:
                    self._cond.wait(0.5)
                    entry = self._next()
                if self._closing:
                    if entry is not None:
                        entry.uploading = False
                    return
            self._attempt(entry)

    def _attempt(self, entry: _Entry) -> None:
        try:
            info = self._send(entry)
        except Exception as exc:  # kept and tried again: nothing acknowledged is dropped
            with self._cond:
                entry.uploading = False
                entry.attempts += 1
                entry.not_before = time.monotonic() + min(_MAX_BACKOFF, 0.25 * 2**entry.attempts)
                self._stats["upload_failures"] += 1
                self._cond.notify_all()
            log.warning("upload of %s failed (attempt %d): %s", entry.path, entry.attempts, exc)
            return
        self._done(entry, info)

    def _upload_now(self, entry: _Entry) -> None:
        """Upload ``entry`` in the caller's thread (write-through); on failure its write
        is dropped and the error raised: nothing was acknowledged."""
        with self._cond:  # claimed at commit: after the uploads of its path before it
            while any(e.uploading for e in self._latest(entry.path) if e.seq < entry.seq):
                self._cond.wait(1.0)
        try:
            info = self._send(entry)
        except BaseException:
            with self._cond:
                entry.uploading = False
                if self._files.pending.get(entry.path) is not None and (
                    self._files.pending[entry.path].info.version == self._pending_version(entry)
                ):
                    del self._files.pending[entry.path]
                self._drop_entries([entry])
            raise
        self._done(entry, info)

    def _send(self, entry: _Entry) -> ObjectInfo | None:
        mount, rel = self._files.mount_of(entry.path)
        store = self._files.store_of(mount)
        if entry.kind == "rm":
            store.delete(rel, missing_ok=True)
            return None
        fd = self._open_staged(entry.name)
        try:
            return store.write(rel, _Bounded(fd, entry.size))
        finally:
            os.close(fd)

    def _done(self, entry: _Entry, info: ObjectInfo | None) -> None:
        """``entry`` reached its store: out of the journal and the budget; its bytes
        become cached pages of the new object, then its staging file goes."""
        metadata = self._files.metadata
        if entry.kind == "rm":
            metadata.refresh(entry.path, notify=False)  # the listings above are stale now
        with self._cond:
            self._store.put_records([], delete=[entry.record()[0]])
            entry.landed = True
            if entry.kind == "put":
                self._dirty -= entry.size
                self._stats["uploaded_files"] += 1
                self._stats["uploaded_bytes"] += entry.size
            shown = self._files.pending.get(entry.path)
            current = shown is not None and shown.info.version == self._pending_version(entry)
            gone = entry.kind == "rm" and shown is None and entry.path in self._files.pending
            if gone and not self._latest(entry.path):
                del self._files.pending[entry.path]  # the store agrees now
            self._cond.notify_all()
        if current and info is not None:
            with contextlib.suppress(Exception):
                self._ingest(entry, shown, info)
            # What the store says now, before the pending file stops hiding it.
            metadata.refresh(entry.path, notify=False)
            metadata.put_stat(entry.path, info, shown.own["metadata_ttl"])
        with self._cond:
            if current and self._files.pending.get(entry.path) is shown:
                del self._files.pending[entry.path]
            self._entries.pop(entry.seq, None)
            entry.uploading = False  # a delete or rename of its path may go on now
            self._cond.notify_all()
        with contextlib.suppress(OSError):
            if entry.kind == "put":
                os.unlink(entry.name, dir_fd=self._dir_fd)

    def _ingest(self, entry: _Entry, shown: File, info: ObjectInfo) -> None:
        """Cache the pages of the uploaded object from its staging file."""
        if info.size != entry.size:
            return
        ps = self._page_size
        uri = shown.mount.child_uri(shown.rel)
        fid = file_id(uri, info.version)
        record = self._record_of(entry.path, uri, info, shown.own["metadata_ttl"])
        count = page_count(info.size, ps)
        buf = bytearray(min(count, _INGEST_PAGES) * ps or 1)
        view = memoryview(buf)
        for first in range(0, count, _INGEST_PAGES):
            items = []
            at = 0
            for index in range(first, min(count, first + _INGEST_PAGES)):
                n = page_length(index, info.size, ps)
                shown.store.read_into(shown.rel, index * ps, view[at : at + n])
                items.append((page_key(fid, index), view[at : at + n]))
                at += n
            self._cache(items, entry.path, record if first == 0 else None, shown.own, info.size)

    # ----------------------------------------------------------------- restart, close

    def _resume(self) -> int:
        """Take back the journal: pending writes shown and queued again, staging files
        no record names removed. The next sequence number."""
        seq = 0
        named = set()
        for key, value in self._store.records(_JOURNAL):
            try:
                doc = json.loads(value)
                seq_of = int.from_bytes(key[len(_JOURNAL) :], "big")
                fields = [doc[k] for k in ("kind", "path", "name", "size", "mode", "mtime")]
                entry = _Entry(seq_of, *fields)
            except (ValueError, KeyError, TypeError):
                log.error("journal record %r is unreadable; left alone", key)
                continue
            seq = max(seq, entry.seq + 1)
            if entry.kind == "put":
                try:
                    if os.stat(entry.name, dir_fd=self._dir_fd).st_size < entry.size:
                        raise FileNotFoundError(errno.ENOENT, "staging file is short")
                except OSError as exc:
                    log.error("pending write of %s lost its staging file (%s)", entry.path, exc)
                    continue
                named.add(entry.name)
                self._dirty += entry.size
                try:
                    self._show(entry)
                except (OSError, ValueError) as exc:  # its mount is gone: kept, retried
                    log.warning("pending write of %s is not readable: %s", entry.path, exc)
            else:
                self._files.pending.setdefault(entry.path, None)
            self._entries[entry.seq] = entry
        for name in os.listdir(self._dir_fd):
            if name not in named:
                with contextlib.suppress(OSError):
                    os.unlink(name, dir_fd=self._dir_fd)
        if self._entries:
            log.info("resuming %d pending writes (%d bytes)", len(self._entries), self._dirty)
        return seq

    def close(self, drain: float = 0.0) -> None:
        """Stop the uploaders (after up to ``drain`` seconds for pending uploads); what
        is left stays journaled for the next start."""
        if drain > 0:
            self.wait("", drain)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        for t in self._threads:
            t.join()
        with self._cond:
            ops, self._open = list(self._open.values()), {}
        for op in ops:
            self._abort(op)
        os.close(self._dir_fd)
