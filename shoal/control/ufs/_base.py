"""The abstract under-store and the metadata it returns."""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, ClassVar

from ._paths import normalize_key, normalize_prefix
from ._retry import RetryPolicy

__all__ = ["ObjectInfo", "UnderStore"]


@dataclass(frozen=True)
class ObjectInfo:
    """Metadata of one object (or directory) in an under-store.

    Attributes
    ----------
    path
        Path relative to the store's root, ``/``-separated.
    size
        Size in bytes (0 for a directory).
    version
        Changes whenever the content may have changed: the ETag on S3,
        ``f"{mtime_ns}-{size}"`` for files. Empty for a directory.
    mtime
        Last modification, in seconds since the epoch.
    is_dir
        True for a directory (or, on an object store, a prefix holding objects).
    """

    path: str
    size: int
    version: str
    mtime: float
    is_dir: bool = False


Source = memoryview | BinaryIO


class UnderStore(abc.ABC):
    """A store that holds the data Shoal caches: a directory, a bucket, any fsspec target.

    A store is rooted at the URI it was opened with; every path it takes or returns is
    relative to that root, ``/``-separated, and may not climb out of it (``..``, NUL
    bytes and absolute paths are rejected with ``ValueError``).

    Call order: construct the store (it validates its options and fails then, naming the
    bad one); call :meth:`stat`, :meth:`list`, :meth:`read_into`, :meth:`write` and
    :meth:`delete` any number of times; call :meth:`close` once (later calls do nothing).
    After ``close`` every other method raises ``ValueError``. A store is also a context
    manager that closes it on exit.

    Thread safety: after construction, every method may be called from many threads at
    once; each call is independent. ``close`` must not race with calls in flight.

    Errors: every failure of the store is an ``OSError`` subclass with an errno
    (``FileNotFoundError``, ``PermissionError``, :class:`ObjectChangedError`,
    :class:`StoreConnectionError` ...), the backend's own exception kept as
    ``__cause__``. Transient failures are retried by :attr:`retry` first.

    A subclass implements ``from_uri``, ``uri`` and ``_stat``, ``_list``, ``_read_into``,
    ``_write``, ``_delete``, ``_close``; they receive paths already normalised, offsets
    already checked and buffers as flat writable byte views.
    """

    #: URI scheme the store serves (``"file"``, ``"s3"`` ...).
    scheme: ClassVar[str] = ""

    def __init__(self, *, retry: RetryPolicy | dict | None = None):
        self.retry = RetryPolicy.coerce(retry)
        self._closed = False

    @classmethod
    @abc.abstractmethod
    def from_uri(cls, uri: str, **options: Any) -> UnderStore:
        """Open the store rooted at ``uri`` with backend ``options``."""

    @property
    @abc.abstractmethod
    def uri(self) -> str:
        """URI of the store's root."""

    def uri_of(self, path: str) -> str:
        """URI of ``path`` (already normalised) under the root, for messages."""
        return self.uri.rstrip("/") + "/" + path

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"

    # -- public API -------------------------------------------------------------------

    def stat(self, path: str) -> ObjectInfo:
        """Metadata of the object (or directory) at ``path``.

        Raises
        ------
        FileNotFoundError
            Nothing exists at ``path`` (or, on S3, the bucket does not exist).
        """
        key = self._key(path)
        self._check_open()
        return self._stat(key)

    def list(
        self, prefix: str = "", *, page_size: int = 1000, start_after: str | None = None
    ) -> Iterator[ObjectInfo]:
        """Every object whose path starts with ``prefix``, in lexicographic order of path.

        ``prefix`` is a string prefix (``data/im`` matches ``data/img1.jpg``); the empty
        prefix lists the whole store. Directories are not listed, their objects are.
        Arguments are checked at once; the objects are fetched lazily, one page of at
        most ``page_size`` objects per request to the store.

        Parameters
        ----------
        prefix
            Only objects whose path starts with it.
        page_size
            Objects per request (object stores cap it, S3 at 1000).
        start_after
            Only objects whose path sorts strictly after it: resume a listing with the
            last path seen.
        """
        prefix = normalize_prefix(prefix)
        start = None if start_after is None else normalize_prefix(start_after, "start_after")
        if isinstance(page_size, bool) or not isinstance(page_size, int):
            raise TypeError(f"page_size must be an int, got {type(page_size).__name__}")
        if page_size < 1:
            raise ValueError(f"page_size must be >= 1, got {page_size}")
        self._check_open()
        return self._paged(prefix, page_size, start or None)

    def _paged(self, prefix: str, page_size: int, start: str | None) -> Iterator[ObjectInfo]:
        for info in self._list(prefix, page_size, start):
            self._check_open()
            yield info

    def read_into(
        self,
        path: str,
        offset: int,
        buf: Any,
        *,
        version: str | None = None,
        size: int | None = None,
    ) -> int:
        """Read the object at ``path`` from ``offset`` straight into ``buf``.

        Parameters
        ----------
        path
            The object.
        offset
            Byte offset in the object, >= 0.
        buf
            Writable, C-contiguous destination with the buffer protocol (bytearray,
            memoryview, numpy array, torch CPU tensor); up to ``len`` of it in bytes is
            filled.
        version
            The version the caller expects (from :meth:`stat` or :meth:`list`). If the
            object has another one, :class:`ObjectChangedError` is raised rather than
            bytes of two versions mixed.
        size
            The object's size as the caller knows it (from the same :meth:`stat` or
            :meth:`list` as ``version``). When ``offset`` is 0 and ``buf`` holds ``size``
            bytes, the whole object is asked for in one request without a range where the
            store allows (S3); an object found to have another size there raises
            :class:`ObjectChangedError`.

        Returns
        -------
        int
            Bytes read: the buffer's size, fewer at the end of the object, 0 past it.

        Raises
        ------
        FileNotFoundError
            No object at ``path``.
        ObjectChangedError
            ``version`` was given and the object's version differs.
        """
        key = self._key(path)
        if isinstance(offset, bool) or not isinstance(offset, int):
            raise TypeError(f"offset must be an int, got {type(offset).__name__}")
        if offset < 0:
            raise ValueError(f"offset must be >= 0, got {offset}")
        if version is not None and not isinstance(version, str):
            raise TypeError(f"version must be a str, got {type(version).__name__}")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
            raise ValueError(f"size must be an int >= 0, got {size!r}")
        view = _writable_view(buf)
        self._check_open()
        if size and offset == 0 and size <= view.nbytes:
            return self._read_whole_into(key, view[:size], version)
        return self._read_into(key, offset, view, version)

    def write(self, path: str, data: Any) -> ObjectInfo:
        """Create or replace the object at ``path``.

        Parameters
        ----------
        path
            The object.
        data
            The content: a bytes-like object, or a binary file object read to its end.
            Large content is uploaded in parts where the store supports it.

        Returns
        -------
        ObjectInfo
            The new object's metadata; its version differs from the replaced one's.
        """
        key = self._key(path)
        source = _source(data)
        self._check_open()
        return self._write(key, source)

    def delete(self, path: str, *, missing_ok: bool = False) -> None:
        """Remove the object at ``path``.

        Raises
        ------
        FileNotFoundError
            No object at ``path`` and ``missing_ok`` is false.
        """
        key = self._key(path)
        self._check_open()
        self._delete(key, missing_ok)

    def close(self) -> None:
        """Release the store's connections and handles; calling it again does nothing."""
        if not self._closed:
            self._closed = True
            self._close()

    def __enter__(self) -> UnderStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- for subclasses ---------------------------------------------------------------

    def _key(self, path: object) -> str:
        return normalize_key(path)

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"I/O operation on a closed store ({self.uri})")

    @abc.abstractmethod
    def _stat(self, key: str) -> ObjectInfo: ...

    @abc.abstractmethod
    def _list(self, prefix: str, page_size: int, start_after: str | None) -> Iterator[ObjectInfo]:
        """Objects under ``prefix`` after ``start_after``, sorted by path."""

    @abc.abstractmethod
    def _read_into(self, key: str, offset: int, view: memoryview, version: str | None) -> int: ...

    def _read_whole_into(self, key: str, view: memoryview, version: str | None) -> int:
        """Read an object the caller says is ``view.nbytes`` long, whole; by default a
        read from offset 0 (a store that can ask for a whole object more cheaply than for
        a range overrides it)."""
        return self._read_into(key, 0, view, version)

    @abc.abstractmethod
    def _write(self, key: str, source: Source) -> ObjectInfo:
        """``source`` is a flat byte memoryview or a binary file object."""

    @abc.abstractmethod
    def _delete(self, key: str, missing_ok: bool) -> None: ...

    @abc.abstractmethod
    def _close(self) -> None:
        """Release connections and handles."""


def _writable_view(buf: Any) -> memoryview:
    if hasattr(buf, "__cuda_array_interface__"):
        raise TypeError(
            f"read_into: {type(buf).__name__} is a GPU buffer; under-stores read into host "
            "memory (the engine moves pages to the GPU)"
        )
    from ...engine._requests import host_view

    return host_view(buf, writable=True, what="read_into")


def _source(data: Any) -> Source:
    if isinstance(data, str):
        raise TypeError("write: data must be bytes-like or a binary file object, not str")
    if hasattr(data, "read"):
        return data
    try:
        view = memoryview(data)
    except TypeError:
        raise TypeError(
            f"write: data must be bytes-like or a binary file object, got {type(data).__name__}"
        ) from None
    if not view.c_contiguous:
        raise ValueError(f"write: buffer {type(data).__name__} is not C-contiguous")
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view


def read_chunk(source: BinaryIO, size: int) -> bytes:
    """Up to ``size`` bytes from a binary file object: fewer only at its end."""
    parts = []
    need = size
    while need > 0:
        chunk = source.read(need)
        if not isinstance(chunk, (bytes, bytearray)):
            raise TypeError(
                f"write: the file object returned {type(chunk).__name__}, not bytes; "
                "open it in binary mode"
            )
        if not chunk:
            break
        parts.append(chunk)
        need -= len(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)
