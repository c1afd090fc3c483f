"""Any filesystem fsspec reaches (``gs://``, ``abfs://``, ``hdfs://``, ``memory://`` ...)
as an under-store."""

from __future__ import annotations

import datetime
import errno
import posixpath
import tempfile
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Any, ClassVar

from ._base import FETCH_ROUNDS, ObjectInfo, Source, UnderStore, entry_order, read_chunk
from ._errors import ObjectChangedError, fsspec_errors
from ._options import check_env_name, env_value, has_password, redact_uri, reject_literal_secrets
from ._paths import is_normal_key

__all__ = ["FsspecStore"]

_READ_CHUNK = 16 << 20  # bytes asked of the backend per ranged read
_COPY_CHUNK = 4 << 20
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
_MTIME_FIELDS = ("mtime", "LastModified", "last_modified", "modified", "updated", "created")
# gcsfs: the project billed, the access scope asked for, checks and caching.
_GCS_OPTIONS = frozenset(
    {
        "project",
        "access",
        "consistency",
        "requester_pays",
        "default_location",
        "version_aware",
        "cache_timeout",
        "block_size",
    }
)
# adlfs: the account (its host is Azure's own), anonymous access, transfer sizes.
_AZURE_OPTIONS = frozenset(
    {"account_name", "anon", "blocksize", "version_aware", "max_concurrency"}
)


def resolve_options(options: Mapping[str, Any], store: str) -> dict[str, Any]:
    """Backend options with ``name_env`` entries replaced by ``name`` = the variable's
    value; a literal secret is refused."""
    reject_literal_secrets(options, store)
    resolved = {}
    for key, value in options.items():
        if key.endswith("_env"):
            resolved[key[: -len("_env")]] = env_value(check_env_name(value, key), key)
        else:
            resolved[key] = value
    return resolved


def _mtime_ns(value: Any) -> int | None:
    """Nanoseconds since the epoch from the forms fsspec backends report times in."""
    if isinstance(value, str):
        try:
            value = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.timezone.utc)
        return (value - _EPOCH) // datetime.timedelta(microseconds=1) * 1000
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        # A float of seconds holds about a microsecond; finer digits are noise, and a
        # backend may give the same time as a float here and a datetime there.
        return round(value * 1e6) * 1000
    return None


class FsspecStore(UnderStore):
    """A path of any fsspec filesystem.

    ``version`` is the backend's ETag when its metadata has one, else
    ``f"{mtime_ns}-{size}"``, else fsspec's ``ukey``. fsspec has no paginated listing:
    :meth:`list` asks for the whole tree under the prefix's directory at once, then
    yields it in order; :meth:`list_dir` is one ``ls``, past fsspec's listing cache.
    Reads are ranged (``cat_file``) in chunks of at most 16 MiB; atomicity of writes is
    the backend's. fsspec reads carry no metadata, so :meth:`fetch_into` costs an
    ``info`` before the read and one after it, which proves both of one version.
    :meth:`requests` counts the calls made to the filesystem, by kind, and
    :meth:`latencies` times each.

    The URI shown (:attr:`uri`, messages, ``repr``) has its userinfo as ``***``.

    Parameters
    ----------
    uri
        ``protocol://path`` (fsspec chained URLs work too).
    retry
        Retry policy (:class:`RetryPolicy` or a mapping of its fields).
    **options
        Passed to the fsspec filesystem. Secrets are passed by reference: an option
        ``token_env="NAME"`` passes ``token`` = the value of environment variable
        ``NAME``; a literal ``token=``, ``password=``, ``secret=`` ... is refused.
    """

    _counts_requests = True
    #: Literal options per protocol that name no secret and send no credential anywhere
    #: but to the service itself: no ``endpoint_url``, ``account_host`` or
    #: ``client_kwargs`` (these backends send bearer tokens, which any endpoint could
    #: keep), no ``token`` or ``credential``. Any other protocol takes ``retry`` and
    #: ``*_env`` references only.
    protocol_options: ClassVar[Mapping[str, frozenset[str]]] = MappingProxyType(
        {
            **dict.fromkeys(("gs", "gcs"), _GCS_OPTIONS),
            **dict.fromkeys(("abfs", "abfss", "az"), _AZURE_OPTIONS),
        }
    )

    @classmethod
    def literal_options(cls, scheme: str) -> frozenset[str]:
        # docstring inherited
        return cls.public_options | cls.protocol_options.get(scheme.lower(), frozenset())

    def __init__(self, uri: str, *, retry: Any = None, **options: Any):
        super().__init__(retry=retry)
        from fsspec.core import url_to_fs

        if not isinstance(uri, str):
            raise TypeError(f"FsspecStore needs a protocol://path URI, got {type(uri).__name__}")
        shown = redact_uri(uri)
        if "://" not in uri:
            raise ValueError(f"FsspecStore needs a protocol://path URI, got {shown!r}")
        if has_password(uri):
            raise ValueError(
                f"FsspecStore {shown!r}: a URI must not carry a password (user:password@); "
                "pass it by reference, as an option naming an environment variable "
                "(password_env=...)"
            )
        resolved = resolve_options(options, "FsspecStore")
        try:
            fs, root = url_to_fs(uri, **resolved)
        except ImportError as exc:
            raise ImportError(f"{shown}: {exc}") from exc
        self._fs = fs
        self._root = root.rstrip("/")
        self._uri = shown if shown.endswith("://") else shown.rstrip("/")
        self._option_names = sorted(options)
        protocol = fs.protocol
        self.scheme = protocol if isinstance(protocol, str) else protocol[0]

    @classmethod
    def from_uri(cls, uri: str, **options: Any) -> FsspecStore:
        # docstring inherited
        return cls(uri, **options)

    @property
    def uri(self) -> str:
        # docstring inherited
        return self._uri

    @property
    def fs(self):
        """The fsspec filesystem."""
        return self._fs

    def __repr__(self) -> str:
        names = f", options={self._option_names}" if self._option_names else ""
        return f"FsspecStore({self._uri!r}{names})"

    def _full(self, key: str) -> str:
        return f"{self._root}/{key}" if self._root else key

    def _relative(self, name: str) -> str:
        name = self._fs._strip_protocol(name)
        if self._root:
            return name[len(self._root) + 1 :]
        return name.lstrip("/")

    def _object(self, key: str, info: Mapping[str, Any]) -> ObjectInfo:
        if info.get("type") == "directory":
            return ObjectInfo(key, 0, "", 0.0, is_dir=True)
        size = int(info.get("size") or 0)
        mtime_ns = None
        for name in _MTIME_FIELDS:
            mtime_ns = _mtime_ns(info.get(name))
            if mtime_ns is not None:
                break
        etag = info.get("ETag") or info.get("etag")
        if etag:
            version = str(etag).strip('"')
        elif mtime_ns is not None:
            version = f"{mtime_ns}-{size}"
        else:
            with self._request("HEAD"):  # ukey asks for the object's info
                version = str(self._fs.ukey(self._full(key)))
        return ObjectInfo(key, size, version, (mtime_ns or 0) / 1e9)

    def _info(self, full: str) -> dict:
        with self._request("HEAD"):
            return self._fs.info(full)

    # -- operations -----------------------------------------------------------------

    def _stat(self, key: str) -> ObjectInfo:
        # docstring inherited
        def once() -> ObjectInfo:
            with fsspec_errors("stat", self.uri_of(key)):
                return self._object(key, self._info(self._full(key)))

        return self.retry.call(once)

    def _list(self, prefix: str, page_size: int, start_after: str | None) -> Iterator[ObjectInfo]:
        # docstring inherited
        directory = prefix.rsplit("/", 1)[0] if "/" in prefix else ""

        def find() -> dict:
            with self._request("LIST"), fsspec_errors("list", self.uri_of(prefix)):
                try:
                    found = self._fs.find(
                        self._full(directory) if directory else self._root,
                        withdirs=False,
                        detail=True,
                    )
                except FileNotFoundError:
                    return {}
                return found if isinstance(found, dict) else {}

        found = self.retry.call(find)
        objects = []
        for name, info in found.items():
            path = self._relative(name)
            if not path.startswith(prefix) or (start_after is not None and path <= start_after):
                continue
            if info.get("type") == "directory" or not is_normal_key(path):
                continue
            objects.append((path, info))
        objects.sort(key=lambda pair: pair[0])
        for path, info in objects:
            yield self._object(path, info)

    def _list_dir(self, directory: str) -> list[ObjectInfo]:
        # docstring inherited; one ls
        full = self._full(directory) if directory else self._root
        uri = self.uri_of(directory) if directory else self._uri

        def ls() -> list:
            with self._request("LIST"), fsspec_errors("list", uri):
                # Listed once per metadata TTL by the worker: never from a stale cache.
                self._fs.invalidate_cache(full)
                return self._fs.ls(full, detail=True)

        try:
            listed = self.retry.call(ls)
        except FileNotFoundError:
            if directory:
                raise
            return []  # the root of a store nothing was written to yet, as list() has it
        entries = []
        for item in listed:
            path = self._relative(item["name"])
            if path == directory:  # ls of a file lists the file itself
                if item.get("type") != "directory":
                    raise NotADirectoryError(errno.ENOTDIR, "list: not a directory", uri)
                continue
            if path.rpartition("/")[0] == directory and is_normal_key(path):
                entries.append(self._object(path, item))
        return sorted(entries, key=entry_order)

    def _read_into(self, key: str, offset: int, view: memoryview, version: str | None) -> int:
        # docstring inherited
        def once() -> int:
            uri = self.uri_of(key)
            with fsspec_errors("read", uri):
                if version is not None:
                    self._check_version(key, version)
                full = self._full(key)
                if view.nbytes == 0:
                    self._info(full)  # a missing object still raises
                    return 0
                got = self._cat_into(full, offset, view)
                if version is not None:
                    self._check_version(key, version)
                return got

        return self.retry.call(once)

    def _cat_into(self, full: str, offset: int, view: memoryview) -> int:
        """Bytes from ``offset`` into ``view``, in ranged reads of at most 16 MiB."""
        got = 0
        while got < view.nbytes:
            want = min(_READ_CHUNK, view.nbytes - got)
            with self._request("GET"):
                data = self._fs.cat_file(full, start=offset + got, end=offset + got + want)
            view[got : got + len(data)] = data
            got += len(data)
            if len(data) < want:
                break
        return got

    def _fetch_into(
        self, key: str, offset: int, view: memoryview, version: str | None
    ) -> tuple[int, ObjectInfo]:
        # docstring inherited; fsspec reads tell no metadata: an info before the read
        # gives it, an info after proves the bytes are of that version
        uri = self.uri_of(key)
        full = self._full(key)

        def once() -> tuple[int, ObjectInfo]:
            with fsspec_errors("read", uri):
                for _ in range(FETCH_ROUNDS):
                    info = self._object(key, self._info(full))
                    if info.is_dir:
                        raise IsADirectoryError(errno.EISDIR, "read: is a directory", uri)
                    if version is not None and info.version != version:
                        raise self._changed(key, info.version, version)
                    if view.nbytes == 0 or offset >= info.size:
                        return 0, info
                    got = self._cat_into(full, offset, view[: info.size - offset])
                    after = self._object(key, self._info(full))
                    if after == info:
                        return got, info
                    if version is not None:
                        raise self._changed(key, after.version, version)
                raise ObjectChangedError("read: the object kept changing while it was read", uri)

        return self.retry.call(once)

    def _check_version(self, key: str, version: str) -> None:
        current = self._object(key, self._info(self._full(key))).version
        if current != version:
            raise self._changed(key, current, version)

    def _changed(self, key: str, found: str, expected: str) -> ObjectChangedError:
        return ObjectChangedError(
            f"read: the object changed: version {found}, expected {expected}", self.uri_of(key)
        )

    def _write(self, key: str, source: Source) -> ObjectInfo:
        # docstring inherited
        full = self._full(key)
        uri = self.uri_of(key)
        if isinstance(source, memoryview):
            data = bytes(source)
            self._upload(uri, full, lambda: self._fs.pipe_file(full, data))
            return self._stat(key)
        first = read_chunk(source, _COPY_CHUNK)
        if len(first) < _COPY_CHUNK:
            self._upload(uri, full, lambda: self._fs.pipe_file(full, first))
            return self._stat(key)
        # A large stream is spooled to a local file first: a failure while reading it
        # then leaves the store untouched (a backend would commit what it got so far),
        # and the upload can be retried.
        with tempfile.NamedTemporaryFile(prefix="shoal-upload-") as spool:
            chunk = first
            while chunk:
                spool.write(chunk)
                chunk = read_chunk(source, _COPY_CHUNK)
            spool.flush()
            self._upload(uri, full, lambda: self._fs.put_file(spool.name, full))
        return self._stat(key)

    def _upload(self, uri: str, full: str, send: Callable[[], None]) -> None:
        """``send()`` with retries; once more after making the directory if it is missing."""

        def once() -> None:
            with self._request("PUT"), fsspec_errors("write", uri):
                send()

        try:
            self.retry.call(once)
        except FileNotFoundError:
            # Hierarchical backends (HDFS, SFTP ...) want the directory first.
            with self._request("PUT"), fsspec_errors("write", uri):
                self._fs.makedirs(posixpath.dirname(full), exist_ok=True)
            self.retry.call(once)

    def _delete(self, key: str, missing_ok: bool) -> None:
        # docstring inherited
        uri = self.uri_of(key)
        if not missing_ok and self._stat(key).is_dir:
            raise IsADirectoryError(errno.EISDIR, "delete: is a directory", uri)

        def remove() -> None:
            with self._request("DELETE"), fsspec_errors("delete", uri):
                self._fs.rm_file(self._full(key))

        try:
            self.retry.call(remove)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def _close(self) -> None:
        # docstring inherited
        self._fs = None  # fsspec caches and shares filesystem instances: do not close it
