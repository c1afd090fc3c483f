"""``shoal://`` for fsspec: Shoal's files as an fsspec filesystem, read-only for now.

``fsspec.filesystem("shoal")``, ``fsspec.open("shoal:///datasets/x/part-0")`` and every
library that takes an fsspec URL (pandas, pyarrow, zarr, dask ...) read through the
public :class:`shoal.Client` only: metadata from :meth:`~shoal.Client.stat` and
:meth:`~shoal.Client.ls`, bytes from :meth:`~shoal.Client.read_into` and, for many files
or ranges at once, from one :meth:`~shoal.Client.read_many_into` per batch.

URLs: ``shoal:///datasets/x`` is the Shoal path ``/datasets/x``. As in fsspec's
``memory://``, a host part is the first component of the path: ``shoal://datasets/x``
names the same file. A path without the protocol must be absolute.

Bytes are read into the storage of a ``bytes`` object that is handed out as it is: one
allocation per read and no copy after it (see :class:`_Landing`).
"""

from __future__ import annotations

import errno
import io
import os
import threading
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from fsspec.spec import AbstractBufferedFile, AbstractFileSystem
from fsspec.utils import stringify_path, tokenize

if TYPE_CHECKING:
    from ._config import Config
    from .client import Client, FileInfo

__all__ = ["ShoalFile", "ShoalFileSystem"]

#: Bytes a file object fetches at once (and reads ahead): Shoal's default page size.
DEFAULT_BLOCK_SIZE = 4 << 20
#: Options of fsspec's own that callers pass to any filesystem (zarr asks every one for
#: ``asynchronous=True`` and wraps a synchronous one itself): accepted and ignored.
_GENERIC_OPTIONS = frozenset({"asynchronous", "loop"})


def read_only_error(path: Any) -> OSError:
    """The error of every write: ``EROFS``, naming what was to be written."""
    if isinstance(path, (list, tuple)):
        shown = ", ".join(map(str, path[:3])) + (
            f" and {len(path) - 3} more" if len(path) > 3 else ""
        )
    else:
        shown = str(path)
    return OSError(errno.EROFS, f"shoal:// is read-only until Shoal's write path lands: {shown}")


def byte_span(size: int, start: int | None, end: int | None) -> tuple[int, int]:
    """``(offset, length)`` of ``data[start:end]`` in a file of ``size`` bytes.

    ``start`` and ``end`` are as fsspec's ``cat_file`` takes them: None for the file's
    start or end, negative counting back from the end, clipped to the file like a Python
    slice.

    Raises
    ------
    TypeError
        ``start`` or ``end`` is neither an int nor None.
    """
    for name, value in (("start", start), ("end", end)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise TypeError(f"{name} must be an int or None, got {type(value).__name__}")
    first, last = slice(start, end).indices(size)[:2]
    return first, max(0, last - first)


class _Landing:
    """``n`` bytes to read into, given out as a ``bytes`` object with no copy.

    The storage is a :class:`io.BytesIO`'s own: :meth:`io.BytesIO.getbuffer` lends it
    writable, and once the loan is released ``getvalue`` returns that same ``bytes``
    object (CPython; elsewhere a copy, still correct). A ``bytearray`` would need a copy
    to become the ``bytes`` that fsspec callers expect.
    """

    __slots__ = ("_bio", "view")

    def __init__(self, n: int):
        self._bio = io.BytesIO()
        if n:
            self._bio.seek(n - 1)
            self._bio.write(b"\0")
        self.view = self._bio.getbuffer()

    def take(self, count: int) -> bytes:
        """The first ``count`` bytes, as ``bytes``; the landing is spent."""
        self.view.release()
        self._bio.truncate(count)
        return self._bio.getvalue()


def _entry(fi: FileInfo) -> dict[str, Any]:
    """fsspec's description of a file or directory."""
    return {
        "name": fi.path,
        "size": fi.size,
        "type": "directory" if fi.is_dir else "file",
        "mtime": fi.mtime,
        "version": fi.version,
    }


def _named(exc: OSError, path: str) -> OSError:
    """``exc``, or the same error naming the Shoal ``path`` when it names something else (a
    worker that asked its under-store names the store's URI, kept as the cause)."""
    if exc.filename == path or exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.EISDIR):
        return exc
    named = type(exc)(exc.errno, os.strerror(exc.errno), path)
    named.__cause__ = exc
    return named


def _directory(path: str) -> dict[str, Any]:
    return {"name": path, "size": 0, "type": "directory", "mtime": 0.0, "version": ""}


def _check_seconds(metadata_ttl: Any, timeout: Any) -> None:
    """The checks :class:`shoal.Client` makes of these, made before it is."""
    if (
        isinstance(metadata_ttl, bool)
        or not isinstance(metadata_ttl, (int, float))
        or metadata_ttl < 0
    ):
        raise ValueError(f"metadata_ttl must be a number of seconds >= 0, got {metadata_ttl!r}")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0
    ):
        raise ValueError(f"timeout must be a number of seconds > 0 or None, got {timeout!r}")


class _ShoalFileSystemType(type(AbstractFileSystem)):
    """fsspec keys its instance cache by the ``str()`` of the arguments, which two clients
    of one home share: a filesystem given a client of its own is never taken from it."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("client") is not None:
            kwargs["skip_instance_cache"] = True
        return super().__call__(*args, **kwargs)


class ShoalFileSystem(AbstractFileSystem, metaclass=_ShoalFileSystemType):
    """Files under Shoal's mounts, through a :class:`shoal.Client`; read-only.

    Paths are Shoal paths (``/datasets/x/part-0``), with or without ``shoal://``. Every
    write (``open(..., "wb")``, ``pipe``, ``put``, ``touch``, ``mkdir``, ``rm``, ``mv``,
    ``copy``) raises ``OSError`` with ``errno.EROFS`` until Shoal has a write path.

    Parameters
    ----------
    client
        A client to read through; it is shared, never closed here. Without one, a client
        is made on first use from ``config``, ``etcd``, ``metadata_ttl`` and ``timeout``.
    config
        A :class:`shoal._config.Config`, or the path of a ``config.yaml`` (loaded with
        :func:`shoal._config.load_config`); default ``$SHOAL_HOME/config.yaml`` and the
        ``SHOAL_*`` variables.
    etcd
        ``http://HOST:PORT`` of a cluster's etcd: cluster mode (see :class:`shoal.Client`).
    metadata_ttl
        Seconds the client keeps file metadata (see :class:`shoal.Client`).
    timeout
        Seconds to wait for any one answer of a worker; None waits for ever.
    **storage_options
        fsspec's generic ``asynchronous`` and ``loop``, accepted and ignored (this
        filesystem is synchronous; zarr wraps it in fsspec's ``AsyncFileSystemWrapper``).

    Notes
    -----
    The client is made in the process that first reads, so a filesystem made before a
    ``fork`` or unpickled elsewhere connects anew there (a given client does the same on
    its own). Pickling keeps the constructor's arguments, as for any fsspec filesystem.

    Metadata is cached by the client (``metadata_ttl``) and by the worker (the mount's
    ``metadata_ttl``), not by this object: :meth:`invalidate_cache` asks both to forget.
    """

    protocol = "shoal"
    root_marker = "/"
    blocksize = DEFAULT_BLOCK_SIZE

    def __init__(
        self,
        *,
        client: Client | None = None,
        config: Config | str | os.PathLike | None = None,
        etcd: str | None = None,
        metadata_ttl: float = 10.0,
        timeout: float | None = 300.0,
        **storage_options: Any,
    ):
        unknown = sorted(set(storage_options) - _GENERIC_OPTIONS)
        if unknown:
            raise TypeError(f"ShoalFileSystem got unknown option(s): {', '.join(unknown)}")
        if client is not None:
            from .client import Client

            if not isinstance(client, Client):
                raise TypeError(f"client must be a shoal Client, got {type(client).__name__}")
            if config is not None or etcd is not None:
                raise ValueError("give either a client or the config and etcd to make one")
        if config is not None and not isinstance(config, (str, os.PathLike)):
            from ._config import Config

            if not isinstance(config, Config):
                raise TypeError(
                    f"config must be a shoal Config or the path of a config.yaml, "
                    f"got {type(config).__name__}"
                )
        if etcd is not None and not isinstance(etcd, str):
            raise TypeError(f"etcd must be a str (http://HOST:PORT), got {type(etcd).__name__}")
        _check_seconds(metadata_ttl, timeout)
        super().__init__()
        self._client = client
        self._client_lock = threading.Lock()
        self._settings = (config, etcd, metadata_ttl, timeout)

    # ----------------------------------------------------------------- the client

    @property
    def client(self) -> Client:
        """The client this filesystem reads through (made on first use)."""
        client = self._client
        if client is None:
            with self._client_lock:
                if self._client is None:
                    self._client = self._make_client()
                client = self._client
        return client

    def _make_client(self) -> Client:
        from ._config import load_config
        from .client import Client

        config, etcd, metadata_ttl, timeout = self._settings
        if isinstance(config, (str, os.PathLike)):
            config = load_config(config)
        return Client(config, etcd=etcd, metadata_ttl=metadata_ttl, timeout=timeout)

    # ----------------------------------------------------------------- paths

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        # docstring inherited
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        path = stringify_path(path)
        if path.startswith("shoal://"):
            # The host part, if any, is the path's first component.
            path = "/" + path[len("shoal://") :].lstrip("/")
        elif path.startswith("shoal::"):
            path = path[len("shoal::") :]
        return path.rstrip("/") or cls.root_marker

    def unstrip_protocol(self, name: str) -> str:
        # docstring inherited
        return name if name.startswith("shoal://") else "shoal://" + name

    # ----------------------------------------------------------------- metadata

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list:
        """The entries directly under ``path`` (for a file, the file itself), sorted.

        Parameters
        ----------
        path
            A Shoal path (mount points and the directories above them list too).
        detail
            Dicts as :meth:`info` gives them, else names only.
        **kwargs
            ``refresh=True`` forgets the cached metadata first (see
            :meth:`invalidate_cache`); others are ignored, as fsspec allows.
        """
        path = self._strip_protocol(path)
        if kwargs.get("refresh"):
            self.invalidate_cache(path)
        try:
            entries = [_entry(fi) for fi in self.client.ls(path)]
        except (FileNotFoundError, NotADirectoryError) as exc:
            missing = exc
        else:
            return entries if detail else [e["name"] for e in entries]
        # The worker finds nothing in an empty directory; a stat tells that it is one.
        if not self._is_dir(path):
            raise _named(missing, path)
        return []

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        """``name`` (the Shoal path), ``size``, ``type`` (``"file"`` or ``"directory"``),
        ``mtime`` (seconds since the epoch, 0 when the under-store does not say) and
        ``version`` (the under-store's version: an ETag, or mtime and size; empty for a
        directory) of ``path``.

        Raises
        ------
        FileNotFoundError
            Nothing is at ``path``.
        ValueError
            ``path`` is relative, or holds ``..`` or a NUL byte.
        """
        path = self._strip_protocol(path)
        try:
            return _entry(self.client.stat(path))
        except (FileNotFoundError, NotADirectoryError) as exc:
            missing = exc
        # "/" and the directories above mount points lie in no mount, yet list.
        if isinstance(missing, FileNotFoundError) and self._lists(path):
            return _directory(path)
        raise _named(missing, path)

    def _lists(self, path: str) -> bool:
        """True if the worker lists ``path`` (mount points above, at least)."""
        try:
            self.client.ls(path)
        except FileNotFoundError:
            return False
        return True

    def _is_dir(self, path: str) -> bool:
        """True if a directory is at ``path``."""
        try:
            return self.client.stat(path).is_dir
        except (FileNotFoundError, NotADirectoryError):
            return False

    def exists(self, path: str, **kwargs: Any) -> bool:
        """True if a file or directory is at ``path``; a bad path or an unreachable worker
        raises rather than answer False."""
        try:
            self.info(path)
        except (FileNotFoundError, NotADirectoryError):
            return False
        return True

    def ukey(self, path: str) -> str:
        """A token that changes with the file's version (under-store ETag, or mtime and
        size)."""
        info = self.info(path)
        if info["type"] == "file":
            return tokenize(info["name"], info["size"], info["version"])
        return tokenize(info)

    def checksum(self, path: str) -> int:
        # docstring inherited
        return int(self.ukey(path), 16)

    def modified(self, path: str) -> datetime:
        """When the under-store says ``path`` was last modified, in UTC.

        Raises
        ------
        NotImplementedError
            The under-store tells no time for it (an object store's directory, a mount
            point).
        """
        info = self.info(path)
        if not info["mtime"]:
            raise NotImplementedError(f"{info['name']}: its under-store tells no modified time")
        return datetime.fromtimestamp(info["mtime"], tz=timezone.utc)

    def invalidate_cache(self, path: str | None = None) -> None:
        """Have the client and the worker forget the metadata of ``path`` and everything
        under it (of everything when None): the next read sees the under-store's current
        version."""
        self.client.refresh(self._strip_protocol(path) if path else self.root_marker)
        super().invalidate_cache(path)

    # ----------------------------------------------------------------- reads

    def _read(self, path: str, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes of ``path`` from ``offset`` (fewer at its end)."""
        landing = _Landing(length)
        return landing.take(self.client.read_into(landing.view, path, offset))

    def _read_alone(self, item: tuple[memoryview, str, int]) -> int | Exception:
        """One range of a batch that failed, read by itself: its count or its error."""
        try:
            return self.client.read_into(*item)
        except (OSError, ValueError) as exc:
            return exc

    def _stat_each(self, paths: list[str], raising: bool) -> list[Any]:
        """Per path its :class:`~shoal.client.FileInfo`, asked for in one batch, or (unless
        ``raising``) its error; ``raising``, the first error."""
        client = self.client
        try:
            return client.stat_many(paths)
        except (OSError, ValueError):
            pass
        # Which path failed, and why, each alone tells.
        out: list[Any] = []
        for p in paths:
            try:
                out.append(client.stat(p))
            except OSError as exc:
                out.append(_named(exc, p))
            except ValueError as exc:
                out.append(exc)
            if raising and isinstance(out[-1], Exception):
                raise out[-1]
        return out

    def _read_spans(
        self,
        paths: list[str],
        starts: Sequence[int | None],
        ends: Sequence[int | None],
        raising: bool,
    ) -> list[Any]:
        """Per path the bytes ``[start, end)`` of it (as :meth:`cat_file` takes them), or
        (unless ``raising``) its error: one stat request and one read for the batch."""
        out: list[Any] = [b""] * len(paths)
        reads: list[tuple[int, _Landing, str, int]] = []
        infos = self._stat_each(paths, raising)
        for i, (fi, start, end) in enumerate(zip(infos, starts, ends, strict=True)):
            try:
                if isinstance(fi, Exception):
                    raise fi
                if fi.is_dir:
                    raise IsADirectoryError(errno.EISDIR, "is a directory", fi.path)
                offset, length = byte_span(fi.size, start, end)
            except (OSError, ValueError, TypeError) as exc:
                if raising:
                    raise
                out[i] = exc
                continue
            if length:
                reads.append((i, _Landing(length), fi.path, offset))
        if not reads:
            return out
        items = [(landing.view, path, offset) for _, landing, path, offset in reads]
        try:
            counts: list[Any] = self.client.read_many_into(items)
        except (OSError, ValueError):
            if raising:
                raise
            # A file changed or went since the stat: each range alone tells which.
            counts = [self._read_alone(item) for item in items]
        for (i, landing, _, _), count in zip(reads, counts, strict=True):
            out[i] = count if isinstance(count, Exception) else landing.take(count)
        return out

    def cat_file(
        self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any
    ) -> bytes:
        """The bytes ``[start, end)`` of the file at ``path``, as ``data[start:end]`` would
        give them (None for either end of the file, negative values from its end).

        Raises
        ------
        FileNotFoundError, IsADirectoryError
            No file is at ``path``.
        ValueError
            A bad path.
        """
        return self._read_spans([self._strip_protocol(path)], [start], [end], raising=True)[0]

    def cat_ranges(
        self,
        paths: list[str],
        starts: int | None | list[int | None],
        ends: int | None | list[int | None],
        max_gap: int | None = None,
        on_error: str = "return",
        **kwargs: Any,
    ) -> list[Any]:
        """Byte ranges of one or more files, read in one batch: one stat request and one
        :meth:`~shoal.Client.read_many_into` for them all.

        Parameters
        ----------
        paths
            Files, one per range (a file may come more than once).
        starts, ends
            Per range, or one value for every range, as for :meth:`cat_file`.
        max_gap
            Ignored: a batch is one request whatever the gaps between its ranges.
        on_error
            ``"return"`` puts a range's error in its place in the list; anything else
            raises the first.
        """
        if not isinstance(paths, list):
            raise TypeError(f"paths must be a list, got {type(paths).__name__}")
        starts = starts if isinstance(starts, list) else [starts] * len(paths)
        ends = ends if isinstance(ends, list) else [ends] * len(paths)
        if len(starts) != len(paths) or len(ends) != len(paths):
            raise ValueError(f"{len(paths)} paths but {len(starts)} starts and {len(ends)} ends")
        stripped = [self._strip_protocol(p) for p in paths]
        return self._read_spans(stripped, starts, ends, raising=on_error != "return")

    def cat(
        self, path: str | list[str], recursive: bool = False, on_error: str = "raise", **kwargs: Any
    ) -> bytes | dict[str, Any]:
        """The contents of one file, or of many (a list, a glob, a directory with
        ``recursive``) as ``{path: bytes}``, read in one batch.

        Parameters
        ----------
        on_error
            For many files: ``"raise"`` the first error, ``"omit"`` the files that fail,
            or ``"return"`` each error in its file's place.
        **kwargs
            Passed to :meth:`expand_path` (``maxdepth``).
        """
        paths = self.expand_path(path, recursive=recursive, **kwargs)
        if (
            len(paths) == 1
            and not isinstance(path, list)
            and paths[0] == self._strip_protocol(path)
        ):
            return self.cat_file(paths[0])
        data = self._read_spans(
            paths, [None] * len(paths), [None] * len(paths), on_error == "raise"
        )
        return {
            p: d
            for p, d in zip(paths, data, strict=True)
            if not (on_error == "omit" and isinstance(d, Exception))
        }

    def head(self, path: str, size: int = 1024) -> bytes:
        # docstring inherited
        return self.cat_file(path, 0, size)

    def tail(self, path: str, size: int = 1024) -> bytes:
        # docstring inherited
        return self.cat_file(path, -size) if size > 0 else self.cat_file(path, 0, 0)

    def _open(
        self,
        path: str,
        mode: str = "rb",
        block_size: int | None = None,
        autocommit: bool = True,
        cache_options: dict | None = None,
        cache_type: str = "readahead",
        size: int | None = None,
        **kwargs: Any,
    ) -> ShoalFile:
        """A buffered, seekable file object reading ``path`` (mode ``"rb"`` only).

        Parameters
        ----------
        block_size
            Bytes fetched at once (default 4 MiB).
        cache_type, cache_options
            fsspec's read cache (``"readahead"``, ``"none"``, ``"bytes"``, ``"blockcache"``
            ...), see :mod:`fsspec.caching`.
        size
            The file's size, when the caller knows it (no stat is made then).
        """
        if mode != "rb":
            raise read_only_error(path)
        path = self._strip_protocol(path)
        details = None
        if size is None:
            details = self.info(path)
            if details["type"] != "file":
                raise IsADirectoryError(errno.EISDIR, "is a directory", path)
            size = details["size"]
        return ShoalFile(
            self,
            path,
            block_size=block_size or self.blocksize,
            autocommit=autocommit,
            cache_type=cache_type,
            cache_options=cache_options,
            size=size,
            details=details,
            **kwargs,
        )

    # ----------------------------------------------------------------- writes

    def pipe_file(self, path: str, value: bytes, mode: str = "overwrite", **kwargs: Any) -> None:
        # docstring inherited
        raise read_only_error(path)

    def pipe(self, path: str | dict, value: bytes | None = None, **kwargs: Any) -> None:
        # docstring inherited
        raise read_only_error(list(path) if isinstance(path, dict) else path)

    def touch(self, path: str, truncate: bool = True, **kwargs: Any) -> None:
        # docstring inherited
        raise read_only_error(path)

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        # docstring inherited
        raise read_only_error(path)

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        # docstring inherited
        raise read_only_error(path)

    def rmdir(self, path: str) -> None:
        # docstring inherited
        raise read_only_error(path)

    def rm_file(self, path: str) -> None:
        # docstring inherited
        raise read_only_error(path)

    def _rm(self, path: str) -> None:
        raise read_only_error(path)

    def rm(
        self, path: str | list[str], recursive: bool = False, maxdepth: int | None = None
    ) -> None:
        # docstring inherited
        raise read_only_error(path)

    def cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        # docstring inherited
        raise read_only_error(path2)

    def copy(self, path1: Any, path2: Any, *args: Any, **kwargs: Any) -> None:
        # docstring inherited
        raise read_only_error(path2)

    def mv(self, path1: Any, path2: Any, *args: Any, **kwargs: Any) -> None:
        # docstring inherited
        raise read_only_error(path1)

    def put_file(self, lpath: str, rpath: str, *args: Any, **kwargs: Any) -> None:
        # docstring inherited
        raise read_only_error(rpath)

    def put(self, lpath: Any, rpath: Any, *args: Any, **kwargs: Any) -> None:
        # docstring inherited
        raise read_only_error(rpath)


class ShoalFile(AbstractBufferedFile):
    """A file of :class:`ShoalFileSystem` open for reading: fsspec's buffered file, whose
    every fetch is one :meth:`shoal.Client.read_into` into the ``bytes`` it returns.

    Pickles as the path, position and options: an unpickled copy reopens the file (with
    the size it had) through an unpickled filesystem.
    """

    def __init__(
        self,
        fs: ShoalFileSystem,
        path: str,
        mode: str = "rb",
        *,
        details: dict[str, Any] | None = None,
        **kwargs: Any,
    ):
        if mode != "rb":
            raise read_only_error(path)
        self._details = details
        super().__init__(fs, path, mode, **kwargs)

    def _fetch_range(self, start: int, end: int) -> bytes:
        end = min(end, self.size)
        if end <= start:
            return b""
        return self.fs._read(self.path, start, end - start)
