"""The FUSE request handlers: Shoal's namespace as a read-only file system.

Every request that needs the client (a lookup, a listing, a read) runs in a thread of a
bounded pool, so a slow under-store holds one thread, never the FUSE loop. Reads go through
:meth:`shoal.Client.read_into`, so pages of this node's worker are read short-circuit
straight into the reply buffer, others over the data plane, and when no worker answers,
from the under-store itself.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyfuse3
import trio

from ..client import Client, FileInfo

__all__ = ["ShoalOperations", "errno_of"]

log = logging.getLogger("shoal.fuse")

ROOT = pyfuse3.ROOT_INODE
#: Attributes of the directories above the mounts (``/``, ``/datasets`` over a mount at
#: ``/datasets/imagenet``) are kept this long: mounts come and go rarely.
ABOVE_MOUNTS_TTL = 1.0
#: How often the mount table (and so each mount's metadata TTL) is read again.
MOUNTS_TTL = 5.0
#: Largest read the kernel sends (its ``max_pages`` limit, 256 pages): reply buffers of
#: this size are kept and reused, never allocated per request.
MAX_READ = 1 << 20


def errno_of(exc: BaseException) -> int:
    """The errno a FUSE reply carries for ``exc``: ENOENT for a missing file, EACCES for a
    refusal, EIO only when no copy could be read anywhere."""
    if isinstance(exc, pyfuse3.FUSEError):
        return exc.errno
    if isinstance(exc, FileNotFoundError):
        return errno.ENOENT
    if isinstance(exc, IsADirectoryError):
        return errno.EISDIR
    if isinstance(exc, NotADirectoryError):
        return errno.ENOTDIR
    if isinstance(exc, PermissionError):
        return errno.EACCES
    if isinstance(exc, TimeoutError):
        return errno.ETIMEDOUT
    if isinstance(exc, (ConnectionError, MemoryError)):
        return errno.EIO
    if isinstance(exc, OSError) and isinstance(exc.errno, int) and exc.errno > 0:
        return exc.errno
    if isinstance(exc, (ValueError, UnicodeError)):
        return errno.EINVAL
    return errno.EIO


@dataclass
class _Node:
    """An inode the kernel knows: its Shoal path, what we last said about it, and how many
    lookups the kernel holds (it forgets the inode when that reaches zero)."""

    ino: int
    path: str
    info: FileInfo
    expires: float  # monotonic time until which ``info`` may be served as is
    lookups: int = 0
    #: The version whose pages the kernel's page cache holds, when it holds any.
    cached_version: str | None = None


class _Lane:
    """Whether calls of one kind run in the FUSE loop's own thread: after ``FAST_STREAK``
    calls in a row answered within ``SLOW`` seconds, until one does not."""

    SLOW = 0.002
    FAST_STREAK = 16

    __slots__ = ("inline", "_streak")

    def __init__(self) -> None:
        self.inline = False
        self._streak = 0

    def took(self, seconds: float) -> None:
        if seconds > self.SLOW:
            self.inline = False
            self._streak = 0
        else:
            self._streak += 1
            if self._streak >= self.FAST_STREAK:
                self.inline = True


@dataclass
class _Handle:
    path: str
    size: int


class ShoalOperations(pyfuse3.Operations):
    """pyfuse3 handlers over a :class:`shoal.Client`: the whole Shoal namespace, mounts as
    directories, read-only.

    Parameters
    ----------
    client
        The client every request goes through (its own process; never the worker's).
    threads
        Requests served at once (each blocks a thread while it waits for the worker or
        the under-store).
    uid, gid
        Owner shown for every file (default: the mounting user).
    """

    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(
        self,
        client: Client,
        *,
        threads: int = 16,
        uid: int | None = None,
        gid: int | None = None,
    ):
        super().__init__()
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be an int >= 1, got {threads!r}")
        self._client = client
        self._limiter = trio.CapacityLimiter(threads)
        self._uid = os.getuid() if uid is None else uid
        self._gid = os.getgid() if gid is None else gid
        self._lock = threading.Lock()
        root = FileInfo("/", 0, 0.0, "", True)
        self._nodes: dict[int, _Node] = {ROOT: _Node(ROOT, "/", root, 0.0, lookups=1)}
        self._by_path: dict[str, int] = {"/": ROOT}
        self._next_ino = ROOT + 1
        self._handles: dict[int, _Handle] = {}
        self._dirs: dict[int, list[tuple[bytes, str, FileInfo]]] = {}
        self._next_fh = 1
        self._buffers: list[bytearray] = []
        self._read_lane = _Lane()
        self._meta_lane = _Lane()
        self._mounts: list[tuple[str, float]] = []
        self._mounts_read = -MOUNTS_TTL
        self.started = time.time()

    # ----------------------------------------------------------------- helpers

    async def _run(self, lane: _Lane, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)``, its exception as a FUSE error: in this thread while calls of its
        ``lane`` answer fast (warm pages, cached metadata: a hand-off to a thread would cost
        more than the call), in a pool thread otherwise, so that a slow call (an
        under-store's answer) holds one thread, not the loop."""

        def timed() -> Any:
            start = time.perf_counter()
            try:
                return fn(*args)
            finally:  # the call's own time, not its wait for a thread
                lane.took(time.perf_counter() - start)

        try:
            if lane.inline:
                return timed()
            return await trio.to_thread.run_sync(timed, limiter=self._limiter)
        except pyfuse3.FUSEError:
            raise
        except Exception as exc:
            code = errno_of(exc)
            if code == errno.EIO:
                log.warning("%s%s: %s", fn.__name__, args, exc, exc_info=True)
            raise pyfuse3.FUSEError(code) from None

    def _ttl(self, path: str, refresh: bool = True) -> float:
        """How long the kernel may keep what we say about ``path``: the metadata TTL of
        its mount (the worker asks the store again no sooner either). ``refresh``: read
        the mount table again when it is old (a round trip: never in the FUSE loop's own
        thread unless that call is fast)."""
        now = time.monotonic()
        if refresh and now - self._mounts_read > MOUNTS_TTL:
            try:
                self._mounts = sorted(
                    (
                        (m.path.rstrip("/") + "/", float(m.options.get("metadata_ttl", 60.0)))
                        for m in self._client.mounts()
                    ),
                    key=lambda m: -len(m[0]),
                )
                self._mounts_read = now
            except Exception as exc:  # the worker is away: keep what we had
                log.debug("mount table not read: %s", exc)
        inside = path.rstrip("/") + "/"
        for prefix, ttl in self._mounts:
            if inside.startswith(prefix):
                return ttl
        return ABOVE_MOUNTS_TTL

    def _attrs(self, node: _Node) -> pyfuse3.EntryAttributes:
        info = node.info
        a = pyfuse3.EntryAttributes()
        a.st_ino = node.ino
        a.generation = 0
        ttl = max(0.0, node.expires - time.monotonic())
        a.entry_timeout = ttl
        a.attr_timeout = ttl
        if info.is_dir:
            a.st_mode = stat.S_IFDIR | 0o555
            a.st_nlink = 2
            a.st_size = 0
        else:
            a.st_mode = stat.S_IFREG | 0o444
            a.st_nlink = 1
            a.st_size = info.size
        a.st_uid = self._uid
        a.st_gid = self._gid
        ns = int(info.mtime * 1e9) if info.mtime else int(self.started * 1e9)
        a.st_mtime_ns = a.st_ctime_ns = a.st_atime_ns = ns
        a.st_blksize = MAX_READ
        a.st_blocks = (info.size + 511) // 512 if not info.is_dir else 0
        return a

    def _remember(self, path: str, info: FileInfo, ttl: float) -> _Node:
        """The node of ``path``, created or brought up to date with ``info``."""
        with self._lock:
            ino = self._by_path.get(path)
            if ino is None:
                ino = self._next_ino
                self._next_ino += 1
                node = _Node(ino, path, info, time.monotonic() + ttl)
                self._nodes[ino] = node
                self._by_path[path] = ino
            else:
                node = self._nodes[ino]
                node.info = info
                node.expires = time.monotonic() + ttl
            return node

    def _node(self, ino: int) -> _Node:
        node = self._nodes.get(ino)
        if node is None:
            raise pyfuse3.FUSEError(errno.ESTALE)
        return node

    def _stat(self, path: str) -> tuple[FileInfo, float]:
        if path == "/":
            return FileInfo("/", 0, 0.0, "", True), ABOVE_MOUNTS_TTL
        try:
            return self._client.stat(path), self._ttl(path)
        except FileNotFoundError:
            inside = path.rstrip("/") + "/"
            if any(inside.startswith(prefix) for prefix, _ in self._mounts):
                raise  # under a mount: missing indeed
            # Maybe a directory above mount points (/datasets over a mount at /datasets/x),
            # of a mount made since the table was read.
            self._mounts_read = -MOUNTS_TTL
            self._ttl(path)
            if any(prefix.startswith(inside) for prefix, _ in self._mounts):
                return FileInfo(path, 0, 0.0, "", True), ABOVE_MOUNTS_TTL
            raise

    async def _fresh(self, node: _Node) -> _Node:
        """``node`` with attributes no older than its mount's metadata TTL."""
        if node.expires <= time.monotonic():
            info, ttl = await self._run(self._meta_lane, self._stat, node.path)
            node = self._remember(node.path, info, ttl)
        return node

    # ----------------------------------------------------------------- metadata

    async def lookup(self, parent_inode, name, ctx=None):
        # docstring inherited
        parent = self._node(parent_inode)
        if name == b".":
            node = parent
        elif name == b"..":
            up = parent.path.rsplit("/", 1)[0] or "/"
            ino = self._by_path.get(up)
            if ino is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            node = self._nodes[ino]
        else:
            try:
                text = os.fsdecode(name)
                text.encode("utf-8")  # a name Shoal can hold
            except UnicodeError:
                raise pyfuse3.FUSEError(errno.ENOENT) from None
            if not parent.info.is_dir:
                raise pyfuse3.FUSEError(errno.ENOTDIR)
            path = parent.path.rstrip("/") + "/" + text
            ino = self._by_path.get(path)
            known = self._nodes.get(ino) if ino is not None else None
            if known is not None and known.expires > time.monotonic():
                node = known
            else:
                info, ttl = await self._run(self._meta_lane, self._stat, path)
                node = self._remember(path, info, ttl)
        with self._lock:
            node.lookups += 1
        return self._attrs(node)

    async def forget(self, inode_list):
        # docstring inherited
        with self._lock:
            for ino, n in inode_list:
                node = self._nodes.get(ino)
                if node is None or ino == ROOT:
                    continue
                node.lookups -= n
                if node.lookups <= 0:
                    del self._nodes[ino]
                    if self._by_path.get(node.path) == ino:
                        del self._by_path[node.path]

    async def getattr(self, inode, ctx=None):
        # docstring inherited
        return self._attrs(await self._fresh(self._node(inode)))

    async def setattr(self, inode, attr, fields, fh, ctx):
        # docstring inherited
        raise pyfuse3.FUSEError(errno.EROFS)

    async def access(self, inode, mode, ctx):
        # docstring inherited
        if mode & os.W_OK:
            raise pyfuse3.FUSEError(errno.EROFS)
        return True

    def _cache_use(self) -> tuple[int, int]:
        """Bytes the cache may hold over all tiers of this node's worker, and bytes in use."""
        tiers = self._client.report()["tiers"].values()
        return sum(t["capacity"] for t in tiers), sum(t["allocated_bytes"] for t in tiers)

    async def statfs(self, ctx):
        # docstring inherited
        # What `df` shows of the mount: the cache (the under-stores have no size to tell).
        s = pyfuse3.StatvfsData()
        s.f_bsize = MAX_READ
        s.f_frsize = 4096
        s.f_namemax = 255
        try:
            capacity, used = await self._run(self._meta_lane, self._cache_use)
        except pyfuse3.FUSEError:
            return s  # no worker answers: sizes unknown, shown as 0
        s.f_blocks = capacity // s.f_frsize
        s.f_bfree = s.f_bavail = max(0, capacity - used) // s.f_frsize
        return s

    async def getxattr(self, inode, name, ctx):
        # docstring inherited
        raise pyfuse3.FUSEError(errno.ENODATA)

    async def listxattr(self, inode, ctx):
        # docstring inherited
        return []

    # ----------------------------------------------------------------- directories

    async def opendir(self, inode, ctx):
        # docstring inherited
        node = await self._fresh(self._node(inode))
        if not node.info.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        entries = await self._run(self._meta_lane, self._client.ls, node.path)
        listing = []
        for e in entries:
            name = e.path.rstrip("/").rsplit("/", 1)[-1]
            if name and e.path != node.path:
                listing.append((os.fsencode(name), e.path, e))
        with self._lock:
            fh = self._next_fh
            self._next_fh += 1
            self._dirs[fh] = listing
        return fh

    async def readdir(self, fh, start_id, token):
        # docstring inherited
        listing = self._dirs.get(fh)
        if listing is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        for i in range(start_id, len(listing)):
            name, path, info = listing[i]
            node = self._remember(path, info, self._ttl(path, refresh=False))
            if not pyfuse3.readdir_reply(token, name, self._attrs(node), i + 1):
                return
            with self._lock:
                node.lookups += 1

    async def releasedir(self, fh):
        # docstring inherited
        self._dirs.pop(fh, None)

    # ----------------------------------------------------------------- files

    async def open(self, inode, flags, ctx):
        # docstring inherited
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise pyfuse3.FUSEError(errno.EROFS)
        node = await self._fresh(self._node(inode))
        info = node.info
        if info.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        # The kernel keeps the file's pages across opens while its version holds.
        keep = node.cached_version == info.version
        node.cached_version = info.version
        with self._lock:
            fh = self._next_fh
            self._next_fh += 1
            self._handles[fh] = _Handle(node.path, info.size)
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep)

    def _read(self, path: str, buf: bytearray, off: int, size: int) -> int:
        return self._client.read_into(memoryview(buf)[:size], path, off)

    async def read(self, fh, off, size):
        # docstring inherited
        handle = self._handles.get(fh)
        if handle is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        if off >= handle.size or size <= 0:
            return b""
        size = min(size, handle.size - off)
        pool = self._buffers
        buf = pool.pop() if pool else bytearray(max(size, MAX_READ))
        if len(buf) < size:
            buf = bytearray(size)
        try:
            n = await self._run(self._read_lane, self._read, handle.path, buf, off, size)
        finally:
            # Safe to reuse at once: pyfuse3 copies the reply into the kernel before any
            # other request of this loop runs (no await between our return and the reply).
            pool.append(buf)
        return memoryview(buf)[:n]

    async def release(self, fh):
        # docstring inherited
        self._handles.pop(fh, None)

    # ----------------------------------------------------------------- writes

    async def create(self, parent_inode, name, mode, flags, ctx):
        # docstring inherited
        raise pyfuse3.FUSEError(errno.EROFS)

    async def mkdir(self, parent_inode, name, mode, ctx):
        # docstring inherited
        raise pyfuse3.FUSEError(errno.EROFS)

    async def unlink(self, parent_inode, name, ctx):
        # docstring inherited
        raise pyfuse3.FUSEError(errno.EROFS)

    async def rmdir(self, parent_inode, name, ctx):
        # docstring inherited
        raise pyfuse3.FUSEError(errno.EROFS)

    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        # docstring inherited
        raise pyfuse3.FUSEError(errno.EROFS)
