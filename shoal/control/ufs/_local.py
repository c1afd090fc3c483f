"""A local or NAS directory as an under-store (``file://`` URIs and absolute paths)."""

from __future__ import annotations

import contextlib
import errno
import os
import stat as stat_mod
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote, urlsplit

from ._base import ObjectInfo, Source, UnderStore, read_chunk
from ._errors import ObjectChangedError, os_errors
from ._paths import normalize_key

__all__ = ["LocalStore"]

_TMP_PREFIX = ".shoal-tmp-"
_COPY_CHUNK = 1 << 20


def _version(st: os.stat_result) -> str:
    return f"{st.st_mtime_ns}-{st.st_size}"


class LocalStore(UnderStore):
    """Files under a directory: a local disk, or a NAS mounted on every node.

    Nothing outside the root is ever read or written: besides the path checks of every
    store, a path whose symbolic links lead outside the root raises ``PermissionError``.
    Listing does not descend into symbolically linked directories (they could loop).
    Writes are atomic: the content goes to a temporary file in the target's directory,
    is flushed (``fsync``, unless disabled) and renamed over the target, so a reader
    sees the old or the new object, never a mix.

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

    def __init__(self, root: str | os.PathLike, *, fsync: bool = True, retry: Any = None):
        super().__init__(retry=retry)
        root = os.fspath(root)
        if not isinstance(root, str) or not os.path.isabs(root) or "\0" in root:
            raise ValueError(f"LocalStore root must be an absolute path, got {root!r}")
        if not isinstance(fsync, bool):
            raise TypeError(f"fsync must be a bool, got {type(fsync).__name__}")
        self._root = os.path.abspath(root)
        self._real = os.path.realpath(self._root)
        if not os.path.isdir(self._real):
            if os.path.exists(self._real):
                raise NotADirectoryError(
                    errno.ENOTDIR, "LocalStore root is not a directory", self._root
                )
            raise FileNotFoundError(errno.ENOENT, "LocalStore root does not exist", self._root)
        self._fsync = fsync

    @classmethod
    def from_uri(cls, uri: str, **options: Any) -> LocalStore:
        # docstring inherited
        if uri.startswith("/"):
            return cls(uri, **options)
        parts = urlsplit(uri)
        if parts.scheme != "file":
            raise ValueError(f"LocalStore serves file:// URIs, not {uri!r}")
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"file:// URI names a remote host {parts.netloc!r}: {uri!r}")
        if parts.query or parts.fragment:
            raise ValueError(f"file:// URI must not have a query or fragment: {uri!r}")
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
        if isinstance(path, os.PathLike):
            path = os.fspath(path)
        if isinstance(path, str) and path.startswith("/") and "\0" not in path:
            if ".." in path.split("/"):
                raise ValueError(f"path {path!r} contains a '..' component")
            for base in (self._root, self._real):
                if path.startswith(base.rstrip("/") + "/"):
                    return normalize_key(path[len(base.rstrip("/")) + 1 :])
            raise ValueError(f"path {path!r} lies outside the store root {self._root}")
        return normalize_key(path)

    def _inside(self, real: str) -> bool:
        return real == self._real or real.startswith(self._real.rstrip("/") + "/")

    def _path(self, key: str, *, follow: bool = True) -> str:
        """The file for ``key``, after checking that its symlinks stay under the root.

        With ``follow`` false, the last component itself may be a link (to delete it).
        """
        full = os.path.join(self._real, key)
        real = (
            os.path.realpath(full)
            if follow
            else os.path.join(os.path.realpath(os.path.dirname(full)), os.path.basename(full))
        )
        if not self._inside(real):
            raise PermissionError(
                errno.EACCES, "a symbolic link leads outside the store root", self.uri_of(key)
            )
        return full

    # -- operations -----------------------------------------------------------------

    def _info(self, key: str, st: os.stat_result) -> ObjectInfo:
        if stat_mod.S_ISDIR(st.st_mode):
            return ObjectInfo(key, 0, "", st.st_mtime, is_dir=True)
        return ObjectInfo(key, st.st_size, _version(st), st.st_mtime)

    def _stat(self, key: str) -> ObjectInfo:
        # docstring inherited
        with os_errors("stat", self.uri_of(key)):
            return self.retry.call(lambda: self._info(key, os.stat(self._path(key))))

    def _list(self, prefix: str, page_size: int, start_after: str | None) -> Iterator[ObjectInfo]:
        # docstring inherited
        with os_errors("list", self.uri_of(prefix)):
            yield from self._walk("", prefix, start_after)

    def _walk(self, rel: str, prefix: str, start_after: str | None) -> Iterator[ObjectInfo]:
        """Objects under directory ``rel`` (``""`` or ending in ``/``), in path order.

        Sorting a directory's entries with ``/`` appended to subdirectory names puts every
        path of the tree in plain lexicographic order (``a-b`` before ``a/c``).
        """
        directory = os.path.join(self._real, rel) if rel else self._real
        try:
            with os.scandir(directory) as it:
                entries = [
                    (e.name + "/" if e.is_dir(follow_symlinks=False) else e.name, e) for e in it
                ]
        except FileNotFoundError:
            return
        entries.sort(key=lambda pair: pair[0])
        for name, entry in entries:
            path = rel + name
            if name.endswith("/"):
                wanted = path.startswith(prefix) or prefix.startswith(path)
                # Every path below sorts after start_after, or none does.
                skipped = (
                    start_after is not None
                    and start_after >= path
                    and not start_after.startswith(path)
                )
                if wanted and not skipped:
                    yield from self._walk(path, prefix, start_after)
                continue
            if not path.startswith(prefix) or (start_after is not None and path <= start_after):
                continue
            if name.startswith(_TMP_PREFIX):
                continue
            info = self._entry_info(path, entry)
            if info is not None:
                yield info

    def _entry_info(self, path: str, entry: os.DirEntry) -> ObjectInfo | None:
        try:
            if entry.is_symlink():
                if not self._inside(os.path.realpath(entry.path)):
                    return None
                st = os.stat(entry.path)
            else:
                st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            return None  # removed while listing, or a dangling link
        if not stat_mod.S_ISREG(st.st_mode):
            return None
        return ObjectInfo(path, st.st_size, _version(st), st.st_mtime)

    def _read_into(self, key: str, offset: int, view: memoryview, version: str | None) -> int:
        # docstring inherited
        with os_errors("read", self.uri_of(key)):
            return self.retry.call(self._read_once, key, offset, view, version)

    def _read_once(self, key: str, offset: int, view: memoryview, version: str | None) -> int:
        fd = os.open(self._path(key), os.O_RDONLY | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if stat_mod.S_ISDIR(st.st_mode):
                raise IsADirectoryError(errno.EISDIR, "is a directory", self.uri_of(key))
            self._check_version(key, st, version)
            done = 0
            while done < view.nbytes:
                n = os.preadv(fd, [view[done:]], offset + done)
                if n == 0:
                    break
                done += n
            if version is not None:
                # Writes through a store replace the file, but another writer may not.
                self._check_version(key, os.fstat(fd), version)
            return done
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
            full = self._path(key)
            os.makedirs(os.path.dirname(full), exist_ok=True)
            tmp = os.path.join(os.path.dirname(full), f"{_TMP_PREFIX}{uuid.uuid4().hex}")
            try:
                self._write_file(tmp, source)
                self._bump_mtime(full, tmp)
                os.replace(tmp, full)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            if self._fsync:
                _fsync_dir(os.path.dirname(full))
            return self._info(key, os.stat(full))

    def _write_file(self, tmp: str, source: Source) -> None:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
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
    def _bump_mtime(target: str, tmp: str) -> None:
        """Make sure the new file's version differs from the one it replaces.

        File systems stamp mtimes from a coarse clock (a few milliseconds), so a rewrite
        of the same size right after the last one could keep its version.
        """
        try:
            old = os.stat(target)
        except FileNotFoundError:
            return
        new = os.stat(tmp)
        if _version(new) == _version(old):
            os.utime(tmp, ns=(new.st_atime_ns, old.st_mtime_ns + 1))

    def _delete(self, key: str, missing_ok: bool) -> None:
        # docstring inherited
        with os_errors("delete", self.uri_of(key)):
            full = self._path(key, follow=False)
            try:
                os.unlink(full)
            except FileNotFoundError:
                if not missing_ok:
                    raise
                return
            # Object stores have no directories: drop the ones the object leaves empty.
            parent = os.path.dirname(full)
            while parent != self._real and parent.startswith(self._real):
                try:
                    os.rmdir(parent)
                except OSError:
                    break
                parent = os.path.dirname(parent)

    def _close(self) -> None:
        # docstring inherited
        return None  # no handle stays open between calls


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
