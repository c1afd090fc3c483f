"""The abstract under-store and the metadata it returns."""

from __future__ import annotations

import abc
import contextlib
import errno
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, ClassVar

from ._errors import ObjectChangedError
from ._latency import Histogram
from ._paths import normalize_key, normalize_prefix
from ._retry import RetryPolicy

__all__ = ["REQUEST_KINDS", "ObjectInfo", "UnderStore"]

#: Kinds of request counted by :meth:`UnderStore.requests`: ``GET`` reads object bytes,
#: ``HEAD`` the metadata of one object, ``LIST`` one page of a listing, ``PUT`` writes an
#: object, a part of a multipart upload or a directory, ``POST`` starts or completes a
#: multipart upload, ``DELETE`` removes an object or aborts an upload.
REQUEST_KINDS = ("GET", "HEAD", "LIST", "PUT", "POST", "DELETE")

#: Rounds of :meth:`UnderStore.fetch_into` when the object changes between the requests
#: of one fetch, before it gives up with :class:`ObjectChangedError`.
FETCH_ROUNDS = 3

#: Errors that are the store's answer about an object, not a failure of the request: not
#: counted by :meth:`UnderStore.errors`.
_ANSWERS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, ObjectChangedError)
#: The context of a hook call that a store counting its own requests times where it sends
#: them.
_UNTIMED = contextlib.nullcontext()


@dataclass(slots=True, unsafe_hash=True)
class ObjectInfo:
    """Metadata of one object (or directory) in an under-store. Never changed once made;
    hashed by value (not frozen only because a frozen dataclass takes four times as long
    to make, and a listing makes one per object).

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
    bad one); call :meth:`stat`, :meth:`list`, :meth:`list_dir`, :meth:`read_into`,
    :meth:`fetch_into`, :meth:`write` and :meth:`delete` any number of times; call
    :meth:`close` once (later calls do nothing). After ``close`` every other method but
    :meth:`requests`, :meth:`latencies` and :meth:`errors` raises ``ValueError``. A store
    is also a context manager that closes it on exit.

    Thread safety: after construction, every method may be called from many threads at
    once; each call is independent. ``close`` must not race with calls in flight.

    Errors: every failure of the store is an ``OSError`` subclass with an errno
    (``FileNotFoundError``, ``PermissionError``, :class:`ObjectChangedError`,
    :class:`StoreConnectionError` ...), the backend's own exception kept as
    ``__cause__``. Transient failures are retried by :attr:`retry` first.

    A subclass implements ``from_uri``, ``uri`` and ``_stat``, ``_list``, ``_read_into``,
    ``_write``, ``_delete``, ``_close``; they receive paths already normalised, offsets
    already checked and buffers as flat writable byte views. ``_fetch_into`` and
    ``_list_dir`` have defaults built on those (a stat and a read; the recursive
    listing); a store that can do either in fewer requests overrides them. A store that
    sets ``_counts_requests`` sends every request inside ``with self._request(kind):``,
    which counts it, times it and counts its failure; for any other, the base class does
    the same for each call of a hook (see :meth:`requests`), and such a store's own
    overrides wrap what they do in ``with self._hook_call(kind):``.
    """

    #: URI scheme the store serves (``"file"``, ``"s3"`` ...).
    scheme: ClassVar[str] = ""
    #: True when the store counts each request it sends itself (:meth:`_count`).
    _counts_requests: ClassVar[bool] = False
    #: Options a mount may give this store as literal values: none of them can hold a
    #: secret (a worker's :class:`~shoal.control._admission.MountPolicy` refuses any other
    #: literal option). ``retry`` is every store's.
    public_options: ClassVar[frozenset[str]] = frozenset({"retry"})
    #: Options that name a file of credentials on the worker: admitted only beneath the
    #: worker's ``credential_dir``. Options named ``*_env`` name an environment variable.
    credential_file_options: ClassVar[frozenset[str]] = frozenset()
    #: True where a directory exists only through the objects under it (object stores):
    #: one with nothing under it is not there. False where directories are real (a POSIX
    #: directory may be empty).
    implicit_dirs: ClassVar[bool] = True

    def __init__(self, *, retry: RetryPolicy | dict | None = None):
        self.retry = RetryPolicy.coerce(retry)
        self._closed = False
        self._request_lock = threading.Lock()
        self._request_counts = dict.fromkeys(REQUEST_KINDS, 0)
        self._error_counts = dict.fromkeys(REQUEST_KINDS, 0)
        self._latency: dict[str, Histogram] = {}  # by kind, from its first request

    @classmethod
    @abc.abstractmethod
    def from_uri(cls, uri: str, **options: Any) -> UnderStore:
        """Open the store rooted at ``uri`` with backend ``options``."""

    @classmethod
    def literal_options(cls, scheme: str) -> frozenset[str]:
        """The options a store of this class for URIs of ``scheme`` takes as literal
        values, none of which can hold a secret: :attr:`public_options`. A class serving
        several schemes with different options overrides this."""
        return cls.public_options

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
        with self._hook_call("HEAD"):
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
        if self._counts_requests:  # each page's request is counted and timed as it is sent
            for info in self._list(prefix, page_size, start):
                self._check_open()
                yield info
            return
        # One listing is one request however much it scans: timed while the store works
        # on it, not while its caller holds the iterator between two runs of objects.
        self._count("LIST")
        elapsed, failed = 0, False
        try:
            runs = self._list_runs(prefix, page_size, start)
            while True:
                began = time.perf_counter_ns()
                try:
                    run = next(runs)
                except StopIteration:
                    break
                except Exception as exc:
                    failed = not isinstance(exc, _ANSWERS)
                    raise
                finally:
                    elapsed += time.perf_counter_ns() - began
                self._check_open()
                yield from run
        finally:
            self._observe("LIST", elapsed, failed)

    def list_dir(self, path: str = "") -> list[ObjectInfo]:
        """One level of the tree: the objects directly in directory ``path``, and its
        immediate subdirectories.

        An object ``path/name`` is listed as itself; every deeper one, ``path/sub/...``,
        makes ``path/sub`` listed once, as ``ObjectInfo(path, 0, "", 0.0, is_dir=True)``.
        Every page is fetched before it returns (on S3 one request per 1000 entries, a
        subdirectory counting as one entry). Sorted by path; an object and a directory
        of the same name, which only object stores can hold, are both listed, the
        object first. A directory that holds no object may be listed or not (object
        stores have none).

        This is a method of its own, not a flag of :meth:`list`: that one takes a string
        prefix (``data/im`` matches ``data/img1.jpg``), yields lazily page by page,
        resumes with ``start_after`` and never lists a directory; this one takes a
        directory, answers with the whole level at once and lists directories. A flag
        would leave ``page_size`` and ``start_after`` meaningless half of the time.

        Parameters
        ----------
        path
            The directory, relative to the root; ``""`` (the default) is the root. A
            trailing ``/`` changes nothing.

        Returns
        -------
        list of ObjectInfo
            Paths relative to the root, like :meth:`list`'s; each object's metadata
            equals what :meth:`stat` says of it.

        Raises
        ------
        FileNotFoundError
            No directory ``path``, where the store can tell: a local directory, a file
            system with directories. An object store cannot: a prefix with nothing under
            it is an empty listing there, and no request is spent to tell more (S3; a
            missing bucket still raises).
        NotADirectoryError
            ``path`` is an object, where the store can tell (not S3: an empty listing).
        """
        directory = normalize_prefix(path, "path").rstrip("/")
        self._check_open()
        return self._list_dir(directory)

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
        _check_read(offset, version)
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
            raise ValueError(f"size must be an int >= 0, got {size!r}")
        view = _writable_view(buf, "read_into")
        self._check_open()
        with self._hook_call("GET"):
            if size and offset == 0 and size <= view.nbytes:
                return self._read_whole_into(key, view[:size], version)
            return self._read_into(key, offset, view, version)

    def read_many_into(self, items: list[tuple[str, Any, str | None]]) -> list[Any]:
        """Read many whole objects, ``(path, buf, version)`` each, ``buf`` holding the
        object's size as the caller knows it: per object the bytes read (as
        :meth:`read_into` returns them) or the error it failed with (OSError,
        ValueError: nothing is raised for one object). A store that can read many
        objects at once more cheaply overrides it; this one reads them in turn."""
        out: list[Any] = []
        for path, buf, version in items:
            try:
                view = _writable_view(buf, "read_many_into")
                out.append(self.read_into(path, 0, view, version=version, size=view.nbytes))
            except (OSError, ValueError) as exc:
                out.append(exc)
        return out

    def fetch_into(
        self, path: str, offset: int, buf: Any, *, version: str | None = None
    ) -> tuple[int, ObjectInfo]:
        """Read the object at ``path`` from ``offset`` into ``buf``, and learn its
        metadata from the same answer: a cold read that needs no :meth:`stat` first.

        One request where the store allows it (S3: one GET, its size, version and time
        taken from the answer's headers). The bytes and the metadata are always of the
        same version of the object. Where one request cannot tell both, the store spends
        the fewest it can: on S3 a range that starts at or past the end is refused
        (HTTP 416), then a GET without a range (at offset 0: the object is empty) or a
        HEAD (past the end) tells the metadata. A store whose reads carry no metadata
        (fsspec; by default, any store that does not override it) stats the object,
        reads, and checks that the version did not move meanwhile.

        Parameters
        ----------
        path
            The object.
        offset
            Byte offset in the object, >= 0.
        buf
            Writable, C-contiguous destination with the buffer protocol; up to ``len`` of
            it in bytes is filled.
        version
            The version the caller expects; if the object has another one,
            :class:`ObjectChangedError` is raised (S3 sends it as ``If-Match``).

        Returns
        -------
        tuple of (int, ObjectInfo)
            Bytes read (the buffer's size, fewer at the end of the object, 0 at or past
            it or for an empty buffer) and the object's metadata, equal to what
            :meth:`stat` would say of that version.

        Raises
        ------
        FileNotFoundError
            No object at ``path``.
        IsADirectoryError
            ``path`` is a directory, where the store has directories.
        ObjectChangedError
            ``version`` was given and the object's version differs; or the object
            changed between the requests of one fetch, again and again.
        """
        key = self._key(path)
        _check_read(offset, version)
        view = _writable_view(buf, "fetch_into")
        self._check_open()
        return self._fetch_into(key, offset, view, version)

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
        with self._hook_call("PUT"):
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
        with self._hook_call("DELETE"):
            self._delete(key, missing_ok)

    def requests(self) -> dict[str, int]:
        """How many requests of each kind the store has sent since it was made.

        Every attempt counts, retries and failed ones included. S3 counts the HTTP
        requests it sends. fsspec counts the calls it makes to the filesystem
        (``cat_file`` a GET, ``info`` a HEAD, ``ls``/``find`` a LIST, ``pipe_file``,
        ``put_file`` and ``makedirs`` a PUT, ``rm_file`` a DELETE), which the backend
        may serve with more requests or from its cache. A store that does not count
        itself (a local directory) counts one per call of its hooks: a read (an open) a
        GET, a stat a HEAD, a listing a LIST however many directories it scans, a write
        a PUT, a delete a DELETE; :meth:`fetch_into` by default a HEAD and a GET.

        Returns
        -------
        dict of str to int
            A snapshot, a new dict: every kind of :data:`REQUEST_KINDS` (``GET``,
            ``HEAD``, ``LIST``, ``PUT``, ``POST``, ``DELETE``), 0 when none was sent.
        """
        with self._request_lock:
            return dict(self._request_counts)

    def latencies(self) -> dict[str, dict[str, Any]]:
        """How long the requests of each kind took, since the store was made.

        Every request that :meth:`requests` counts is timed, from just before it is sent
        to its answer read (the bytes of a GET included), failed ones too. A store that
        does not count its own requests times each call of a hook, its retries included;
        a listing (:meth:`list`) only while the store produces objects, not while the
        caller holds the iterator; many files read with one native call
        (:meth:`read_many_into` of a local directory) are each given the mean of that
        call's time.

        Returns
        -------
        dict of str to dict
            A snapshot, a new dict: per kind of :data:`REQUEST_KINDS` sent at least once,
            ``{"buckets": [upper bound, ...], "counts": [requests at most that long, ...],
            "sum": seconds, "count": requests}`` (Prometheus-style: ``counts`` is
            cumulative; the bounds are :data:`~shoal.control._metrics.LATENCY_BUCKETS`,
            in seconds; the last bucket, ``+Inf``, is left out: its count is ``count``).
        """
        with self._request_lock:
            return {kind: h.snapshot() for kind, h in self._latency.items()}

    def errors(self) -> dict[str, int]:
        """How many requests of each kind failed, since the store was made: those that
        raised an error other than the store's answer about the object. A missing
        object, a directory where an object was expected (or the reverse) and an object
        that changed are answers, not counted; a refused connection, a timeout, a
        throttled or failed request, a permission denied are counted (each attempt that
        :meth:`requests` counts, retried or not).

        Returns
        -------
        dict of str to int
            A snapshot, a new dict: every kind of :data:`REQUEST_KINDS`, 0 when none
            failed.
        """
        with self._request_lock:
            return dict(self._error_counts)

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

    def _count(self, kind: str) -> None:
        """Count one request of ``kind`` (one of :data:`REQUEST_KINDS`) about to be sent."""
        with self._request_lock:
            self._request_counts[kind] += 1

    def _observe(self, kind: str, elapsed_ns: int, failed: bool) -> None:
        """Time one request of ``kind`` counted before (``elapsed_ns``), and count its
        failure."""
        with self._request_lock:
            self._histogram(kind).observe_ns(elapsed_ns)
            if failed:
                self._error_counts[kind] += 1

    def _histogram(self, kind: str) -> Histogram:
        """The latency histogram of ``kind``, made on its first request; under the lock."""
        histogram = self._latency.get(kind)
        if histogram is None:
            histogram = self._latency[kind] = Histogram()
        return histogram

    def _request(self, kind: str) -> _Timed:
        """Count one request of ``kind`` about to be sent; the context to send it in, which
        times it and counts its failure: ``with self._request("GET"): ...``."""
        self._count(kind)
        return _Timed(self, kind)

    def _hook_call(self, kind: str) -> contextlib.AbstractContextManager:
        """:meth:`_request` for a call of a hook, for a store that does not count its own
        requests; for one that does, a context that does nothing."""
        return _UNTIMED if self._counts_requests else self._request(kind)

    def _hook_calls(self, kind: str, n: int, elapsed_ns: int) -> None:
        """Count ``n`` hook calls of ``kind`` served together by one native call that took
        ``elapsed_ns``, each timed at the mean (for a store that does not count its own
        requests)."""
        if self._counts_requests or n <= 0:
            return
        share = elapsed_ns // n
        with self._request_lock:
            self._request_counts[kind] += n
            self._histogram(kind).observe_ns(share, n)

    @abc.abstractmethod
    def _stat(self, key: str) -> ObjectInfo: ...

    @abc.abstractmethod
    def _list(self, prefix: str, page_size: int, start_after: str | None) -> Iterator[ObjectInfo]:
        """Objects under ``prefix`` after ``start_after``, sorted by path."""

    def _list_runs(
        self, prefix: str, page_size: int, start_after: str | None
    ) -> Iterator[Sequence[ObjectInfo]]:
        """:meth:`_list` in runs of objects, for a store that does not count its own
        requests: one by default; a store that finds them many at a time (a directory's
        files) yields each run whole, and the listing's time is taken once per run."""
        for info in self._list(prefix, page_size, start_after):
            yield (info,)

    @abc.abstractmethod
    def _read_into(self, key: str, offset: int, view: memoryview, version: str | None) -> int: ...

    def _read_whole_into(self, key: str, view: memoryview, version: str | None) -> int:
        """Read an object the caller says is ``view.nbytes`` long, whole; by default a
        read from offset 0 (a store that can ask for a whole object more cheaply than for
        a range overrides it)."""
        return self._read_into(key, 0, view, version)

    def _fetch_into(
        self, key: str, offset: int, view: memoryview, version: str | None
    ) -> tuple[int, ObjectInfo]:
        """Bytes from ``offset`` and the metadata of the same version of the object.

        By default a stat, then a read of the version it found (``_read_into`` checks it,
        so bytes of another version are never returned), again if the object changed in
        between. A store that can answer both in one request overrides it (and, if it
        does not count its own requests, wraps what it sends in ``_hook_call``).
        """
        for _ in range(FETCH_ROUNDS):
            with self._hook_call("HEAD"):
                info = self._stat(key)
            if info.is_dir:
                raise IsADirectoryError(errno.EISDIR, "read: is a directory", self.uri_of(key))
            if version is not None and info.version != version:
                raise _changed(self.uri_of(key), info.version, version)
            if view.nbytes == 0 or offset >= info.size:
                return 0, info
            try:
                with self._hook_call("GET"):
                    return self._read_into(key, offset, view, info.version), info
            except ObjectChangedError:
                if version is not None:
                    raise
        raise _changed(self.uri_of(key), None, version)

    def _list_dir(self, directory: str) -> list[ObjectInfo]:
        """The entries directly under ``directory`` (``""``: the root), sorted by path.

        By default folded from the recursive listing, which visits every object below
        (a store that can list one level in a request overrides it, counting as
        ``_fetch_into`` says); when nothing is found there, a stat tells an empty
        directory from a missing one or an object.
        """
        prefix = directory + "/" if directory else ""
        entries = []
        subdirectories: set[str] = set()
        with self._hook_call("LIST"):
            for info in self._list(prefix, 1000, None):
                name, below, _ = info.path[len(prefix) :].partition("/")
                if below:
                    subdirectories.add(prefix + name)
                else:
                    entries.append(info)
        if directory and not entries and not subdirectories:
            uri = self.uri_of(directory)
            try:
                with self._hook_call("HEAD"):
                    info = self._stat(directory)
            except FileNotFoundError as exc:
                raise FileNotFoundError(errno.ENOENT, "list: no such directory", uri) from exc
            if not info.is_dir:
                raise NotADirectoryError(errno.ENOTDIR, "list: not a directory", uri)
        entries += [ObjectInfo(d, 0, "", 0.0, is_dir=True) for d in subdirectories]
        return sorted(entries, key=entry_order)

    @abc.abstractmethod
    def _write(self, key: str, source: Source) -> ObjectInfo:
        """``source`` is a flat byte memoryview or a binary file object."""

    @abc.abstractmethod
    def _delete(self, key: str, missing_ok: bool) -> None: ...

    @abc.abstractmethod
    def _close(self) -> None:
        """Release connections and handles."""


class _Timed:
    """One request in flight (see ``UnderStore._request``): timed from entry to exit,
    counted as failed when it raises anything but an answer about the object."""

    __slots__ = ("_kind", "_start", "_store")

    def __init__(self, store: UnderStore, kind: str):
        self._store = store
        self._kind = kind
        self._start = 0

    def __enter__(self) -> _Timed:
        self._start = time.perf_counter_ns()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: object, tb: object) -> None:
        elapsed = time.perf_counter_ns() - self._start
        failed = (
            exc_type is not None
            and issubclass(exc_type, Exception)
            and not issubclass(exc_type, _ANSWERS)
        )
        self._store._observe(self._kind, elapsed, failed)


def entry_order(info: ObjectInfo) -> tuple[str, bool]:
    """Sort key of a one-level listing: by path, an object before a directory."""
    return info.path, info.is_dir


def _changed(uri: str, found: str | None, expected: str | None) -> ObjectChangedError:
    if found is None:
        return ObjectChangedError("read: the object kept changing while it was read", uri)
    return ObjectChangedError(
        f"read: the object changed: version {found}, expected {expected}", uri
    )


def _check_read(offset: object, version: object) -> None:
    if isinstance(offset, bool) or not isinstance(offset, int):
        raise TypeError(f"offset must be an int, got {type(offset).__name__}")
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    if version is not None and not isinstance(version, str):
        raise TypeError(f"version must be a str, got {type(version).__name__}")


def _writable_view(buf: Any, what: str) -> memoryview:
    if hasattr(buf, "__cuda_array_interface__"):
        raise TypeError(
            f"{what}: {type(buf).__name__} is a GPU buffer; under-stores read into host "
            "memory (the engine moves pages to the GPU)"
        )
    from ...engine._requests import host_view

    return host_view(buf, writable=True, what=what)


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
