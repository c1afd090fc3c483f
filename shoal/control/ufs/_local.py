"""A local or NAS directory as an under-store (``file://`` URIs and absolute paths)."""

from __future__ import annotations

import bisect
import contextlib
import errno
import logging
import os
import stat as stat_mod
import time
import uuid
import weakref
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote, urlsplit

from ...engine import _fs
from ._base import (
    FETCH_ROUNDS,
    ObjectInfo,
    Source,
    UnderStore,
    _writable_view,
    entry_order,
    read_chunk,
)
from ._errors import ObjectChangedError, os_errors
from ._options import redact_uri
from ._paths import normalize_key

__all__ = ["LocalStore"]

log = logging.getLogger("shoal.ufs")

_TMP_PREFIX = ".shoal-tmp-"
_COPY_CHUNK = 1 << 20
_DIR = os.O_RDONLY | os.O_DIRECTORY
# O_NONBLOCK keeps an open of a FIFO from waiting for a writer; regular files ignore it.
_READ = os.O_RDONLY | os.O_NONBLOCK
_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


def _version(st: os.stat_result) -> str:
    return _version_of(st.st_mtime_ns, st.st_size)


def _version_of(mtime_ns: int, size: int) -> str:
    """A file's version: its modification time (ns) and size."""
    return f"{mtime_ns}-{size}"


class LocalStore(UnderStore):
    """Files under a directory: a local disk, or a NAS mounted on every node.

    Nothing outside the root is ever read or written. The root is opened once, when the
    store is made (a symbolic link in the root's own path is followed then), and every
    open, stat, listing, write and delete goes beneath that descriptor with no symbolic
    link followed, the kernel resolving each component (``openat2`` with
    ``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS``, or one ``O_NOFOLLOW`` open per component:
    see :func:`shoal.engine._fs.open_beneath`). A path with a symbolic link in any
    component raises ``PermissionError``, whether the link points inside the root or out
    of it: a link swapped in for a file between two calls can then never lead outside.
    Listings skip symbolic links, to files and to directories alike, so they list only
    what reads serve. Reads fill the buffer from the descriptor they opened and take the
    version from that descriptor, so bytes and version are of the same file. Only regular
    files are objects. Writes are atomic: the content goes to a temporary file in the
    target's directory, is flushed (``fsync``, unless disabled) and renamed over the
    target, so a reader sees the old or the new object, never a mix.

    Parameters
    ----------
    root
        An existing directory.
    fsync
        Flush written files to the device before renaming them into place.
    retry
        Retry policy (:class:`RetryPolicy` or a mapping of its fields); local errors
        are retried only when they are transient (``ETIMEDOUT`` from a NAS, say).
    """

    scheme = "file"
    public_options = frozenset({"retry", "fsync"})
    implicit_dirs = False

    def __init__(self, root: str | os.PathLike, *, fsync: bool = True, retry: Any = None):
        super().__init__(retry=retry)
        root = os.fspath(root)
        if not isinstance(root, str) or not os.path.isabs(root) or "\0" in root:
            shown = repr(redact_uri(root)) if isinstance(root, str) else type(root).__name__
            raise ValueError(f"LocalStore root must be an absolute path, got {shown}")
        if not isinstance(fsync, bool):
            raise TypeError(f"fsync must be a bool, got {type(fsync).__name__}")
        self._method = _fs.method()
        self._root = os.path.abspath(root)
        self._real = os.path.realpath(self._root)
        try:
            fd = os.open(self._root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except NotADirectoryError:
            raise NotADirectoryError(
                errno.ENOTDIR, "LocalStore root is not a directory", self._root
            ) from None
        except FileNotFoundError:
            raise FileNotFoundError(
                errno.ENOENT, "LocalStore root does not exist", self._root
            ) from None
        self._root_fd = fd
        self._release = weakref.finalize(self, os.close, fd)
        self._fsync = fsync

    @classmethod
    def from_uri(cls, uri: str, **options: Any) -> LocalStore:
        # docstring inherited
        if uri.startswith("/"):
            return cls(uri, **options)
        parts = urlsplit(uri)
        shown = redact_uri(uri)  # the userinfo or the query could hold a key
        if parts.scheme != "file":
            raise ValueError(f"LocalStore serves file:// URIs, not {shown!r}")
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"file:// URI names a remote host: {shown!r}")
        if parts.query or parts.fragment:
            raise ValueError(f"file:// URI must not have a query or fragment: {shown!r}")
        return cls(unquote(parts.path), **options)

    @property
    def uri(self) -> str:
        # docstring inherited
        return "file://" + self._root

    @property
    def root(self) -> str:
        """The root directory, as given (absolute)."""
        return self._root

    def _key(self, path: object) -> str:
        # An absolute path is accepted when it lies under the root.
        if type(path) is not str and isinstance(path, os.PathLike):
            path = os.fspath(path)
        if isinstance(path, str) and path.startswith("/") and "\0" not in path:
            if ".." in path.split("/"):
                raise ValueError(f"path {path!r} contains a '..' component")
            for base in (self._root, self._real):
                if path.startswith(base.rstrip("/") + "/"):
                    return normalize_key(path[len(base.rstrip("/")) + 1 :])
            raise ValueError(f"path {path!r} lies outside the store root {self._root}")
        return normalize_key(path)

    def _open(self, key: str, flags: int, dir_fd: int | None = None) -> int:
        """A descriptor of ``key`` beneath the root (or ``dir_fd``), no link followed."""
        return _fs.open_beneath(
            self._root_fd if dir_fd is None else dir_fd, key, flags, using=self._method
        )

    def _parent(self, key: str, *, create: bool = False) -> tuple[int, str]:
        """A readable descriptor of the directory holding ``key``, and ``key``'s last name;
        with ``create``, the missing directories are made on the way."""
        parent, _, name = key.rpartition("/")
        try:
            return self._open(parent or ".", _DIR), name
        except FileNotFoundError:
            if not create:
                raise
        fd = self._open(".", _DIR)
        try:
            for part in parent.split("/"):
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o777, dir_fd=fd)
                inner = self._open(part, _DIR, dir_fd=fd)
                os.close(fd)
                fd = inner
        except BaseException:
            os.close(fd)
            raise
        return fd, name

    # -- operations -----------------------------------------------------------------

    def _info(self, key: str, st: os.stat_result) -> ObjectInfo:
        if stat_mod.S_ISDIR(st.st_mode):
            return ObjectInfo(key, 0, "", st.st_mtime, is_dir=True)
        return ObjectInfo(key, st.st_size, _version(st), st.st_mtime)

    def _stat(self, key: str) -> ObjectInfo:
        # docstring inherited
        with os_errors("stat", self.uri_of(key)):
            return self.retry.call(self._stat_once, key)

    def _stat_once(self, key: str) -> ObjectInfo:
        fd = self._open(key, os.O_PATH)
        try:
            return self._info(key, os.fstat(fd))
        finally:
            os.close(fd)

    def _list(self, prefix: str, page_size: int, start_after: str | None) -> Iterator[ObjectInfo]:
        # docstring inherited
        for run in self._list_runs(prefix, page_size, start_after):
            yield from run

    def _list_runs(
        self, prefix: str, page_size: int, start_after: str | None
    ) -> Iterator[list[ObjectInfo]]:
        # docstring inherited
        with os_errors("list", self.uri_of(prefix)):
            yield from self._walk(self._open(".", _DIR), "", prefix, start_after)

    def _walk(
        self, fd: int, rel: str, prefix: str, start_after: str | None
    ) -> Iterator[list[ObjectInfo]]:
        """Objects under directory ``rel`` (``""`` or ending in ``/``), open as ``fd``
        (closed here), in path order, in runs: the files of one directory between two of
        its subdirectories.

        Sorting a directory's entries with ``/`` appended to subdirectory names puts every
        path of the tree in plain lexicographic order (``a-b`` before ``a/c``).
        """
        try:
            # One native pass: names, sizes, times, in name order, the objects made.
            files, dirs, odd = _fs.list_sorted(fd, rel, ObjectInfo, _TMP_PREFIX)
            if odd:
                self._left_out(rel, odd)
            all_wanted = rel.startswith(prefix) and start_after is None
            at = 0
            dirs.sort(key=_as_dir)
            for name in dirs:  # the runs of files between subdirectories, in path order
                path = rel + name + "/"
                end = bisect.bisect_left(files, path, at, key=_path)
                if run := _wanted(files[at:end], prefix, start_after, all_wanted):
                    yield run
                at = end
                wanted = path.startswith(prefix) or prefix.startswith(path)
                # Every path below sorts after start_after, or none does.
                skipped = (
                    start_after is not None
                    and start_after >= path
                    and not start_after.startswith(path)
                )
                if wanted and not skipped:
                    inner = _open_entry(fd, name, _DIR)
                    if inner is not None:
                        yield from self._walk(inner, path, prefix, start_after)
            if run := _wanted(files[at:] if at else files, prefix, start_after, all_wanted):
                yield run
        finally:
            os.close(fd)

    def _left_out(self, rel: str, count: int) -> None:
        """Warn of ``count`` names of directory ``rel`` left out of its listing: they are
        not UTF-8, and Shoal paths are text, as on an object store (the FUSE mount finds
        no other name either)."""
        log.warning(
            "%s: left out %d of its names, which are not UTF-8 (Shoal paths are text)",
            self.uri_of(rel.rstrip("/")) if rel else self.uri,
            count,
        )

    def _list_dir(self, directory: str) -> list[ObjectInfo]:
        # docstring inherited; one native pass (_fs.list_sorted, the GIL let go once for
        # the directory: os.scandir lets it go per entry, and with the worker's other
        # threads busy each entry waited its turn), links skipped as list() skips them
        prefix = directory + "/" if directory else ""
        uri = self.uri_of(directory) if directory else self.uri
        with self._hook_call("LIST"), os_errors("list", uri):
            fd = self._open(directory or ".", _DIR)  # ENOENT, ENOTDIR, or a link refused
            try:
                files, dirs, odd = _fs.list_sorted(fd, prefix, ObjectInfo, _TMP_PREFIX)
            finally:
                os.close(fd)
        if odd:
            self._left_out(prefix, odd)
        files += [ObjectInfo(prefix + name, 0, "", 0.0, is_dir=True) for name in dirs]
        return sorted(files, key=entry_order)

    def read_many_into(self, items: list[tuple[str, Any, str | None]]) -> list[Any]:
        """Read many whole files with one native call (``_fs.read_items_beneath``: the
        same opens beneath the root, the GIL released once for them all, each version
        checked there, no Python per file); a file that fails there, or that it does not
        take (an absolute path, a buffer to check), is read again the ordinary way, for
        its exact error. Each file read by the native call is a GET timed at that call's
        mean (see :meth:`latencies`)."""
        self._check_open()
        began = time.perf_counter_ns()
        out: list[Any] = _fs.read_items_beneath(
            self._root_fd, items if type(items) is list else list(items), using=self._method
        )
        elapsed = time.perf_counter_ns() - began
        again = [i for i, n in enumerate(out) if n < 0]
        self._hook_calls("GET", len(out) - len(again), elapsed)
        for i in again:
            try:  # the ordinary read says what went wrong (or reads a file changed since)
                path, buf, version = items[i]
                view = _writable_view(buf, "read_many_into")
                out[i] = self.read_into(path, 0, view, version=version, size=view.nbytes)
            except (OSError, ValueError) as exc:
                out[i] = exc
        return out

    def _read_into(self, key: str, offset: int, view: memoryview, version: str | None) -> int:
        # docstring inherited
        with os_errors("read", self.uri_of(key)):
            return self.retry.call(self._read_once, key, offset, view, version)[0]

    def _fetch_into(
        self, key: str, offset: int, view: memoryview, version: str | None
    ) -> tuple[int, ObjectInfo]:
        # docstring inherited; one open: bytes and version of the same descriptor
        with self._hook_call("GET"), os_errors("read", self.uri_of(key)):
            done, st = self.retry.call(self._read_once, key, offset, view, version, True)
        return done, self._info(key, st)

    def _read_once(
        self,
        key: str,
        offset: int,
        view: memoryview,
        version: str | None,
        settle: bool = False,
    ) -> tuple[int, os.stat_result]:
        """Bytes from ``offset`` and the stat of the descriptor they came from. With
        ``settle``, a file written in place while it was read is read again, else only a
        ``version`` is checked after the read."""
        fd = self._open(key, _READ)
        try:
            st = os.fstat(fd)
            if stat_mod.S_ISDIR(st.st_mode):
                raise IsADirectoryError(errno.EISDIR, "is a directory", self.uri_of(key))
            if not stat_mod.S_ISREG(st.st_mode):
                raise OSError(errno.EINVAL, "not a regular file", self.uri_of(key))
            for _ in range(FETCH_ROUNDS):
                self._check_version(key, st, version)
                done = 0
                while done < view.nbytes:
                    n = os.preadv(fd, [view[done:]], offset + done)
                    if n == 0:
                        break
                    done += n
                if version is None and not settle:
                    return done, st
                # Writes through a store replace the file, but another writer may not.
                after = os.fstat(fd)
                if _version(after) == _version(st):
                    return done, st
                st = after
            raise ObjectChangedError(
                "read: the file kept changing while it was read", self.uri_of(key)
            )
        finally:
            os.close(fd)

    def _check_version(self, key: str, st: os.stat_result, version: str | None) -> None:
        if version is not None and _version(st) != version:
            raise ObjectChangedError(
                f"read: the file changed: version {_version(st)}, expected {version}",
                self.uri_of(key),
            )

    def _write(self, key: str, source: Source) -> ObjectInfo:
        # docstring inherited
        with os_errors("write", self.uri_of(key)):
            dir_fd, name = self._parent(key, create=True)
            try:
                tmp = f"{_TMP_PREFIX}{uuid.uuid4().hex}"
                try:
                    self._write_file(dir_fd, tmp, source)
                    self._bump_mtime(name, tmp, dir_fd=dir_fd)
                    os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(tmp, dir_fd=dir_fd)
                    raise
                if self._fsync:
                    os.fsync(dir_fd)
                return self._info(key, os.stat(name, dir_fd=dir_fd, follow_symlinks=False))
            finally:
                os.close(dir_fd)

    def _write_file(self, dir_fd: int, tmp: str, source: Source) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW
        fd = os.open(tmp, flags, 0o644, dir_fd=dir_fd)
        try:
            if isinstance(source, memoryview):
                done = 0
                while done < source.nbytes:
                    done += os.write(fd, source[done : done + (64 << 20)])
            else:
                while chunk := read_chunk(source, _COPY_CHUNK):
                    view = memoryview(chunk)
                    done = 0
                    while done < len(view):
                        done += os.write(fd, view[done:])
            if self._fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    @staticmethod
    def _bump_mtime(target: str, tmp: str, *, dir_fd: int | None = None) -> None:
        """Make sure the new file's version differs from the one it replaces.

        File systems stamp mtimes from a coarse clock (a few milliseconds), so a rewrite
        of the same size right after the last one could keep its version. Names resolve
        against ``dir_fd`` when given; links are not followed.
        """
        try:
            old = os.stat(target, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        new = os.stat(tmp, dir_fd=dir_fd, follow_symlinks=False)
        if _version(new) == _version(old):
            os.utime(
                tmp,
                ns=(new.st_atime_ns, old.st_mtime_ns + 1),
                dir_fd=dir_fd,
                follow_symlinks=False,
            )

    def _delete(self, key: str, missing_ok: bool) -> None:
        # docstring inherited
        with os_errors("delete", self.uri_of(key)):
            try:
                dir_fd, name = self._parent(key)
                try:
                    # unlinkat removes a link itself, never its target.
                    os.unlink(name, dir_fd=dir_fd)
                finally:
                    os.close(dir_fd)
            except FileNotFoundError:
                if not missing_ok:
                    raise
                return
            # Object stores have no directories: drop the ones the object leaves empty.
            parts = key.split("/")[:-1]
            while parts:
                name = parts.pop()
                try:
                    up = self._open("/".join(parts) or ".", os.O_PATH | os.O_DIRECTORY)
                    try:
                        os.rmdir(name, dir_fd=up)
                    finally:
                        os.close(up)
                except OSError:
                    break

    def _close(self) -> None:
        # docstring inherited
        self._release()


def _open_entry(dir_fd: int, name: str, flags: int) -> int | None:
    """A descriptor of the entry ``name`` of a directory being listed, or None when it is
    gone or was replaced by a link since it was read."""
    try:
        return os.open(name, flags | _NOFOLLOW, dir_fd=dir_fd)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None
        raise


def _path(info: ObjectInfo) -> str:
    return info.path


def _as_dir(name: str) -> str:
    """The sort key of a subdirectory among files: its name and ``/`` (see ``_walk``)."""
    return name + "/"


def _wanted(
    infos: list[ObjectInfo], prefix: str, start_after: str | None, all_wanted: bool
) -> list[ObjectInfo]:
    """Those of ``infos`` under ``prefix`` and after ``start_after`` (``all_wanted``:
    all of them)."""
    if all_wanted:
        return infos
    return [
        i
        for i in infos
        if i.path.startswith(prefix) and (start_after is None or i.path > start_after)
    ]
