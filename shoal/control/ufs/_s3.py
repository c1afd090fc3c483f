"""S3 and S3-compatible object stores (``s3://bucket/prefix``) through boto3.

``endpoint_url`` points the store at an S3-compatible service (Alibaba OSS, Tencent COS,
Volcengine TOS, MinIO, Ceph RGW ...). Credentials are passed by reference only.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import math
import os
import re
from collections.abc import Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, fields
from typing import Any, BinaryIO
from urllib.parse import urlsplit

from botocore.exceptions import ClientError

from ..._units import parse_size
from ._base import FETCH_ROUNDS, ObjectInfo, Source, UnderStore, entry_order, read_chunk
from ._errors import ObjectChangedError, botocore_errors
from ._options import check_env_name, check_name, env_value, redact_uri, reject_literal_secrets
from ._paths import is_normal_key, normalize_prefix
from ._retry import RetryPolicy
from ._s3get import Fetched, LeanGets, lean_gets_allowed, read_answer, read_fetched

__all__ = ["S3Config", "S3Store"]

MiB = 1 << 20
MIN_PART_SIZE = 5 * MiB  # S3's floor for every part but the last
MAX_PART_SIZE = 5 * 1024 * MiB
MAX_PARTS = 10_000
_BUCKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_REGION = re.compile(r"^[A-Za-z0-9_-]+$")
# Names of variables that hold a secret key or a password, never an access key id or token.
_SECRET_VARIABLE = re.compile(r"secret|passw|private", re.IGNORECASE)
_PAGE = 1000  # S3's most keys per ListObjectsV2 page
# The kind of request (UnderStore.requests) each client method sends.
_KINDS = {
    "head_object": "HEAD",
    "get_object": "GET",
    "list_objects_v2": "LIST",
    "put_object": "PUT",
    "upload_part": "PUT",
    "create_multipart_upload": "POST",
    "complete_multipart_upload": "POST",
    "abort_multipart_upload": "DELETE",
    "delete_object": "DELETE",
}


@dataclass(frozen=True)
class S3Config:
    """Options of an :class:`S3Store`; every field is checked when it is made.

    Parameters
    ----------
    endpoint_url
        ``http(s)://host[:port]`` of an S3-compatible service; AWS when ``None``.
    region
        Signing region; boto3's configuration decides when ``None``.
    access_key_env, secret_key_env
        NAMES of the environment variables holding the access key id and the secret
        key; both or neither.
    session_token_env
        Name of the environment variable holding a session token (with the two above).
    credentials_file
        Path of an AWS-style shared credentials file (INI); ``profile`` selects the
        section (default ``default``).
    profile
        Profile of the AWS configuration (or of ``credentials_file``).
    anonymous
        Send unsigned requests (public buckets); excludes every other credential.
    addressing_style
        ``"auto"``, ``"path"`` (MinIO, Ceph) or ``"virtual"`` (OSS, COS, TOS).
    max_pool_connections
        HTTP connections kept per store; size it to the threads using the store.
    connect_timeout, read_timeout
        Seconds before a connection attempt, or a wait for bytes, gives up.
    part_size
        Objects larger than this are uploaded in parts of this size (an int or a size
        such as ``"16MiB"``; 5 MiB to 5 GiB). Grown when 10,000 parts would not suffice.
    upload_concurrency
        Parts uploaded at once; memory used is about ``part_size`` times this.
    retry
        :class:`RetryPolicy` (or a mapping of its fields) for every request.

    When no credential option is given, boto3's default chain applies (environment,
    shared files, instance metadata).
    """

    endpoint_url: str | None = None
    region: str | None = None
    access_key_env: str | None = None
    secret_key_env: str | None = None
    session_token_env: str | None = None
    credentials_file: str | None = None
    profile: str | None = None
    anonymous: bool = False
    addressing_style: str = "auto"
    max_pool_connections: int = 16
    connect_timeout: float = 3.0
    read_timeout: float = 30.0
    part_size: int = 8 * MiB
    upload_concurrency: int = 8
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    def __post_init__(self) -> None:
        if self.endpoint_url is not None:
            _check_endpoint(self.endpoint_url)
        if self.region is not None and (
            not isinstance(self.region, str) or not _REGION.match(self.region)
        ):
            # Not echoed: a key pasted into the wrong field would land in a log.
            raise ValueError(
                "region must be a region name such as 'us-east-1' (letters, digits, '-' "
                "and '_'); the value given is not shown"
            )
        for name in ("access_key_env", "secret_key_env", "session_token_env"):
            if getattr(self, name) is not None:
                check_env_name(getattr(self, name), name)
        for name in ("access_key_env", "session_token_env"):
            if getattr(self, name) is not None and _SECRET_VARIABLE.search(getattr(self, name)):
                # Every request carries these two values as they are (the Authorization
                # and X-Amz-Security-Token headers), to whatever endpoint_url names.
                raise ValueError(
                    f"{name} names a variable whose name says it holds a secret key or a "
                    "password; S3 sends the access key id and the session token in the "
                    "clear, so they must come from variables of their own (the name given "
                    "is not shown)"
                )
        if (self.access_key_env is None) != (self.secret_key_env is None):
            raise ValueError("access_key_env and secret_key_env go together: give both")
        if self.session_token_env is not None and self.access_key_env is None:
            raise ValueError("session_token_env needs access_key_env and secret_key_env")
        if self.credentials_file is not None:
            if not isinstance(self.credentials_file, (str, os.PathLike)):
                raise TypeError("credentials_file must be a path")
            object.__setattr__(self, "credentials_file", os.fspath(self.credentials_file))
        if self.profile is not None:
            check_name(self.profile, "profile")
        if self.access_key_env is not None and (self.credentials_file or self.profile):
            raise ValueError(
                "give credentials one way: access_key_env/secret_key_env, or "
                "credentials_file/profile"
            )
        if not isinstance(self.anonymous, bool):
            raise TypeError(f"anonymous must be a bool, got {type(self.anonymous).__name__}")
        if self.anonymous and (self.access_key_env or self.credentials_file or self.profile):
            raise ValueError("anonymous=True excludes every other credential option")
        if self.addressing_style not in ("auto", "path", "virtual"):
            raise ValueError(
                f"addressing_style must be 'auto', 'path' or 'virtual', "
                f"got {self.addressing_style!r}"
            )
        for name in ("max_pool_connections", "upload_concurrency"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {value!r}")
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        for name in ("connect_timeout", "read_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number of seconds, got {value!r}")
            if not 0 < value < math.inf:
                raise ValueError(f"{name} must be > 0 seconds, got {value}")
        part = parse_size(self.part_size, "part_size")
        if not MIN_PART_SIZE <= part <= MAX_PART_SIZE:
            raise ValueError(f"part_size must be between 5 MiB and 5 GiB, got {part} bytes")
        object.__setattr__(self, "part_size", part)
        object.__setattr__(self, "retry", RetryPolicy.coerce(self.retry))

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> S3Config:
        """A config from store options, refusing literal secrets and unknown names."""
        known = {f.name for f in fields(cls)}
        reject_literal_secrets(options, "S3Store", allowed=known)
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(
                f"S3Store: unknown option(s) {', '.join(map(repr, unknown))}; "
                f"known: {', '.join(sorted(known))}"
            )
        return cls(**options)

    def credential_source(self) -> str:
        """Where credentials come from, for display (never the credentials)."""
        if self.anonymous:
            return "anonymous"
        if self.access_key_env:
            return f"env:{self.access_key_env}/{self.secret_key_env}"
        if self.credentials_file:
            return f"file:{self.credentials_file}[{self.profile or 'default'}]"
        if self.profile:
            return f"profile:{self.profile}"
        return "default chain"


def _check_endpoint(url: object) -> None:
    """Raise ``ValueError`` unless ``url`` is ``http(s)://host[:port]``; messages show it
    only through :func:`redact_uri` (a query, or text before an ``@``, may be a key)."""
    if not isinstance(url, str):
        raise TypeError(f"endpoint_url must be a str, got {type(url).__name__}")
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None or "@" in url:
        # Never echo it: the user part may be a key pair.
        raise ValueError("endpoint_url must not carry credentials (user:password@); not shown")
    shown = repr(redact_uri(url))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"endpoint_url must look like http(s)://host[:port], got {shown}")
    if parts.query or parts.fragment:
        raise ValueError(f"endpoint_url must not have a query or fragment, got {shown}")
    try:
        parts.port  # noqa: B018 (parsing the port validates it)
    except ValueError:
        raise ValueError(f"endpoint_url has an invalid port: {shown}") from None


def _etag(value: str) -> str:
    return value.strip('"')


class S3Store(UnderStore):
    """Objects in an S3 bucket (or an S3-compatible one), under an optional key prefix.

    Paths map to keys ``prefix + path``. ``version`` is the object's ETag. Reads are
    ranged GETs streamed straight into the destination buffer, a known ``version`` sent
    as ``If-Match`` (an object overwritten between two reads of one version raises
    :class:`ObjectChangedError`, never mixes bytes); :meth:`fetch_into` is one such GET
    whose ``Content-Range``, ``ETag`` and ``Last-Modified`` tell the metadata;
    :meth:`list_dir` is one ``ListObjectsV2`` with ``Delimiter="/"`` per 1000 entries.
    Writes larger than ``part_size`` use a multipart upload, ``upload_concurrency``
    parts at once, aborted on failure. The boto3 client is shared by every thread; it
    does not retry by itself, the store's :class:`RetryPolicy` does.
    :meth:`requests` counts every HTTP request sent, by kind; :meth:`latencies` times each
    from its sending to its answer read (a GET's bytes included).

    Parameters
    ----------
    bucket
        The bucket.
    prefix
        Key prefix of the store's root (``""``: the whole bucket).
    **options
        The fields of :class:`S3Config`. Literal secrets (``secret_key``,
        ``aws_secret_access_key`` ...) are refused with ``ValueError``: pass the name of
        an environment variable instead (``secret_key_env``).
    """

    scheme = "s3"
    _counts_requests = True
    # ``profile`` picks one of the worker's own AWS profiles, as the default chain picks
    # ``default``: a name, never a key. ``endpoint_url`` says where requests go; they
    # carry the access key id and a signature, never the secret key.
    public_options = frozenset(
        {
            "retry",
            "endpoint_url",
            "region",
            "profile",
            "anonymous",
            "addressing_style",
            "max_pool_connections",
            "connect_timeout",
            "read_timeout",
            "part_size",
            "upload_concurrency",
        }
    )
    credential_file_options = frozenset({"credentials_file"})

    def __init__(self, bucket: str, prefix: str = "", **options: Any):
        config = S3Config.from_options(options)
        super().__init__(retry=config.retry)
        if not isinstance(bucket, str) or not _BUCKET.match(bucket):
            shown = repr(redact_uri(bucket)) if isinstance(bucket, str) else type(bucket).__name__
            raise ValueError(f"S3Store: {shown} is not a bucket name")
        prefix = normalize_prefix(prefix)
        self._bucket = bucket
        self._prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        self.config = config
        self._client, credentials = _make_client(config)
        self._gets: LeanGets | None = None
        if lean_gets_allowed():
            self._gets = LeanGets(
                self._client,
                bucket,
                credentials,
                max_connections=config.max_pool_connections,
                connect_timeout=config.connect_timeout,
                read_timeout=config.read_timeout,
                request=self._request,
            )

    @classmethod
    def from_uri(cls, uri: str, **options: Any) -> S3Store:
        # docstring inherited
        scheme, sep, rest = uri.partition("://")
        shown = redact_uri(uri)
        if scheme.lower() != "s3" or not sep:
            raise ValueError(f"S3Store serves s3://bucket/prefix URIs, not {shown!r}")
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise ValueError(f"S3 URI names no bucket: {shown!r}")
        if not _BUCKET.match(bucket):
            raise ValueError(
                f"S3 URI {shown!r} names no valid bucket (letters, digits, '.', '-' and '_'; "
                "credentials, user:password@, have no place in it)"
            )
        return cls(bucket, prefix, **options)

    @property
    def uri(self) -> str:
        # docstring inherited
        return f"s3://{self._bucket}/{self._prefix}"

    @property
    def bucket(self) -> str:
        """The bucket's name."""
        return self._bucket

    def uri_of(self, path: str) -> str:
        # docstring inherited
        return f"s3://{self._bucket}/{self._prefix}{path}"

    def __repr__(self) -> str:
        where = f", endpoint_url={self.config.endpoint_url!r}" if self.config.endpoint_url else ""
        region = f", region={self.config.region!r}" if self.config.region else ""
        return (
            f"S3Store({self.uri!r}{where}{region}, credentials={self.config.credential_source()!r})"
        )

    # -- requests, each translated and retried --------------------------------------

    def _call(self, op: str, path: str, method: str, **kwargs: Any) -> dict:
        fn = getattr(self._client, method)
        kind = _KINDS[method]

        def once() -> dict:
            with self._request(kind), botocore_errors(op, self.uri_of(path)):
                return fn(Bucket=self._bucket, **kwargs)

        return self.retry.call(once)

    def _page(
        self,
        prefix: str,
        page_size: int,
        start_after: str | None,
        token: str | None,
        op: str = "list",
        about: str | None = None,
        delimiter: bool = False,
    ) -> dict:
        """One ListObjectsV2 page; ``op`` and ``about`` (a path) are for error messages.
        With ``delimiter``, keys below the next ``/`` come as ``CommonPrefixes``."""
        kwargs: dict[str, Any] = {"Prefix": self._prefix + prefix, "MaxKeys": page_size}
        if delimiter:
            kwargs["Delimiter"] = "/"
        if token is not None:
            kwargs["ContinuationToken"] = token
        elif start_after is not None:
            kwargs["StartAfter"] = self._prefix + start_after
        return self._call(op, prefix if about is None else about, "list_objects_v2", **kwargs)

    # -- operations -----------------------------------------------------------------

    def _stat(self, key: str) -> ObjectInfo:
        # docstring inherited
        try:
            return self._head(key, "stat")
        except FileNotFoundError:
            # No such object: a "directory" if objects live under key/; this listing also
            # tells a missing bucket (HEAD cannot) and raises naming it.
            if self._page(key + "/", 1, None, None, "stat", key).get("KeyCount", 0):
                return ObjectInfo(key, 0, "", 0.0, is_dir=True)
            raise

    def _head(self, key: str, op: str) -> ObjectInfo:
        """The object's metadata from one HEAD (``op`` names the operation in errors)."""
        head = self._call(op, key, "head_object", Key=self._prefix + key)
        return ObjectInfo(
            key, head["ContentLength"], _etag(head["ETag"]), head["LastModified"].timestamp()
        )

    def _list(self, prefix: str, page_size: int, start_after: str | None) -> Iterator[ObjectInfo]:
        # docstring inherited
        token = None
        cut = len(self._prefix)
        while True:
            page = self._page(prefix, page_size, start_after, token)
            for obj in page.get("Contents", ()):
                path = obj["Key"][cut:]
                if not is_normal_key(path):
                    continue  # "folder/" markers, keys with // or ..: no path names them
                yield ObjectInfo(
                    path, obj["Size"], _etag(obj["ETag"]), obj["LastModified"].timestamp()
                )
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    def _list_dir(self, directory: str) -> list[ObjectInfo]:
        # docstring inherited; one ListObjectsV2 with Delimiter="/" per 1000 entries. A
        # prefix with nothing under it is an empty listing: no request can tell an empty
        # "directory" from a missing one, and none is spent on it.
        prefix = directory + "/" if directory else ""
        cut = len(self._prefix)
        entries = []
        token = None
        while True:
            page = self._page(prefix, _PAGE, None, token, "list", directory, delimiter=True)
            for obj in page.get("Contents", ()):
                path = obj["Key"][cut:]
                if is_normal_key(path):  # not the "directory/" marker itself
                    entries.append(
                        ObjectInfo(
                            path, obj["Size"], _etag(obj["ETag"]), obj["LastModified"].timestamp()
                        )
                    )
            for common in page.get("CommonPrefixes", ()):
                path = common["Prefix"][cut:-1]
                if is_normal_key(path):  # not "a//": no path names it
                    entries.append(ObjectInfo(path, 0, "", 0.0, is_dir=True))
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return sorted(entries, key=entry_order)

    def _read_into(self, key: str, offset: int, view: memoryview, version: str | None) -> int:
        # docstring inherited
        if view.nbytes == 0:
            self._check_version(key, version)  # a missing object raises all the same
            return 0
        got = self.retry.call(self._get_range, key, offset, view, version)
        if got is None:  # the range starts at or past the end; If-Match was not evaluated
            if version is not None:
                self._check_version(key, version)
            return 0
        return got

    def _check_version(self, key: str, version: str | None) -> None:
        info = self._stat(key)
        if version is not None and info.version != version:
            raise self._changed(key, info.version, version)

    def _changed(self, key: str, found: str, expected: str) -> ObjectChangedError:
        return ObjectChangedError(
            f"read: the object changed: ETag {found}, expected {expected}", self.uri_of(key)
        )

    def _fetch_into(
        self, key: str, offset: int, view: memoryview, version: str | None
    ) -> tuple[int, ObjectInfo]:
        # docstring inherited; one ranged GET, whose headers tell the metadata
        for _ in range(FETCH_ROUNDS):
            if view.nbytes:
                fetched = self.retry.call(self._fetch_range, key, offset, view, version, True)
                if fetched is None and offset == 0:
                    # Refused from its first byte: the object is empty. A GET without a
                    # range tells its metadata (and its bytes, if it was just rewritten).
                    fetched = self.retry.call(self._fetch_range, key, 0, view, version, False)
                if fetched is not None:
                    return fetched.got, self._fetched_info(key, fetched)
            # Nothing asked for, or a range past the end: only a HEAD tells the rest.
            info = self._head(key, "read")
            if version is not None and info.version != version:
                raise self._changed(key, info.version, version)
            if view.nbytes == 0 or offset >= info.size:
                return 0, info
            # The object grew between the GET and the HEAD: read it again.
        raise ObjectChangedError(
            "read: the object kept changing while it was read", self.uri_of(key)
        )

    def _fetched_info(self, key: str, fetched: Fetched) -> ObjectInfo:
        if not fetched.etag:
            raise OSError(errno.EIO, "read: the answer carries no ETag", self.uri_of(key))
        return ObjectInfo(key, fetched.size, _etag(fetched.etag), fetched.mtime)

    def _fetch_range(
        self, key: str, offset: int, view: memoryview, version: str | None, ranged: bool
    ) -> Fetched | None:
        """One GET from ``offset`` into ``view`` (with a ``Range`` if ``ranged``) that
        also tells the object's metadata; ``None`` when the range is not satisfiable."""
        uri = self.uri_of(key)
        if self._gets is not None:
            return self._gets.fetch(self._prefix + key, uri, offset, view, version, ranged)
        with self._request("GET"), botocore_errors("read", uri):
            resp = self._get_object(self._get_kwargs(key, offset, view, version, ranged))
            if resp is None:
                return None
            with contextlib.closing(resp["Body"]) as body:
                got, size, _ = read_fetched(
                    body,
                    resp["ResponseMetadata"]["HTTPStatusCode"],
                    resp["ContentLength"],
                    resp.get("ContentRange", ""),
                    offset,
                    view,
                    uri,
                )
            modified = resp.get("LastModified")
            return Fetched(
                got, size, resp.get("ETag", ""), modified.timestamp() if modified else 0.0
            )

    def _get_object(self, kwargs: dict[str, Any]) -> dict[str, Any] | None:
        """A GET through the boto3 client (sent in its caller's ``_request``); None when its
        range is not satisfiable."""
        try:
            return self._client.get_object(**kwargs)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "InvalidRange":
                return None
            raise

    def _get_kwargs(
        self, key: str, offset: int, view: memoryview, version: str | None, ranged: bool
    ) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"Bucket": self._bucket, "Key": self._prefix + key}
        if ranged:
            kwargs["Range"] = f"bytes={offset}-{offset + view.nbytes - 1}"
        if version is not None:
            kwargs["IfMatch"] = f'"{version}"'
        return kwargs

    def _read_whole_into(self, key: str, view: memoryview, version: str | None) -> int:
        # docstring inherited; a GET without a range costs some servers less
        got = self.retry.call(self._get_range, key, 0, view, version, True)
        assert got is not None  # only a ranged GET can be unsatisfiable
        return got

    def _get_range(
        self, key: str, offset: int, view: memoryview, version: str | None, whole: bool = False
    ) -> int | None:
        """One ranged GET into ``view``; ``None`` when the range is not satisfiable. With
        ``whole``, a GET of the whole object, which must be ``view.nbytes`` long."""
        uri = self.uri_of(key)
        if self._gets is not None:
            return self._gets.get(self._prefix + key, uri, offset, view, version, whole)
        with self._request("GET"), botocore_errors("read", uri):
            resp = self._get_object(self._get_kwargs(key, offset, view, version, not whole))
            if resp is None:
                return None
            with contextlib.closing(resp["Body"]) as body:
                length, content_range = resp["ContentLength"], resp.get("ContentRange", "")
                return read_answer(body, length, content_range, offset, view, whole, uri)

    def _write(self, key: str, source: Source) -> ObjectInfo:
        # docstring inherited
        part_size = self.config.part_size
        if isinstance(source, memoryview):
            size = source.nbytes
            if size <= part_size:
                self._put(key, _whole(source))
                return self._stat(key)
            # Grow the parts when 10,000 would not hold the object; whole MiB keep it tidy.
            part_size = max(part_size, math.ceil(size / MAX_PARTS / MiB) * MiB)
            chunks = (bytes(source[i : i + part_size]) for i in range(0, size, part_size))
            self._multipart(key, chunks, part_size)
            return self._stat(key)
        first = read_chunk(source, part_size)
        second = read_chunk(source, part_size) if len(first) == part_size else b""
        if not second:
            self._put(key, first)
        else:
            self._multipart(key, _stream_chunks(first, second, source, part_size), part_size)
        return self._stat(key)

    def _put(self, key: str, data: bytes | bytearray) -> None:
        self._call("write", key, "put_object", Key=self._prefix + key, Body=data)

    def _multipart(self, key: str, chunks: Iterator[bytes], part_size: int) -> None:
        full = self._prefix + key
        upload = self._call("write", key, "create_multipart_upload", Key=full)["UploadId"]
        try:
            parts = self._upload_parts(key, upload, chunks, part_size)
            self._call(
                "write",
                key,
                "complete_multipart_upload",
                Key=full,
                UploadId=upload,
                MultipartUpload={"Parts": parts},
            )
        except BaseException:
            # Best effort: an upload left behind only costs storage until the bucket's
            # lifecycle rule (if any) removes it; the original error matters more.
            with contextlib.suppress(Exception), self._request("DELETE"):
                self._client.abort_multipart_upload(Bucket=self._bucket, Key=full, UploadId=upload)
            raise

    def _upload_parts(
        self, key: str, upload: str, chunks: Iterator[bytes], part_size: int
    ) -> list[dict]:
        full = self._prefix + key
        done: dict[int, str] = {}
        pending: set[Future] = set()

        def one(number: int, data: bytes) -> tuple[int, str]:
            resp = self._call(
                "write", key, "upload_part", Key=full, UploadId=upload, PartNumber=number, Body=data
            )
            return number, resp["ETag"]

        def collect(futures: set[Future]) -> None:
            for fut in futures:
                number, etag = fut.result()
                done[number] = etag

        with ThreadPoolExecutor(self.config.upload_concurrency, "shoal-s3-upload") as pool:
            try:
                for number, data in enumerate(chunks, start=1):
                    if number > MAX_PARTS:
                        raise OSError(
                            errno.EFBIG,
                            f"write: more than {MAX_PARTS} parts of {part_size} bytes; "
                            "raise part_size",
                            self.uri_of(key),
                        )
                    pending.add(pool.submit(one, number, data))
                    if len(pending) >= self.config.upload_concurrency:
                        finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                        collect(finished)
                finished, pending = wait(pending)
                collect(finished)
            finally:
                for fut in pending:
                    fut.cancel()
        return [{"PartNumber": n, "ETag": done[n]} for n in sorted(done)]

    def _delete(self, key: str, missing_ok: bool) -> None:
        # docstring inherited
        if not missing_ok:
            info = self._stat(key)
            if info.is_dir:
                raise IsADirectoryError(errno.EISDIR, "delete: is a directory", self.uri_of(key))
        self._call("delete", key, "delete_object", Key=self._prefix + key)

    def _close(self) -> None:
        # docstring inherited
        if self._gets is not None:
            self._gets.close()
        self._client.close()


def _whole(view: memoryview) -> bytes | bytearray:
    """The content as bytes for the request body, copied only if it must be."""
    if isinstance(view.obj, (bytes, bytearray)) and len(view.obj) == view.nbytes:
        return view.obj
    return bytes(view)


def _stream_chunks(
    first: bytes, second: bytes, source: BinaryIO, part_size: int
) -> Iterator[bytes]:
    yield first
    yield second
    while chunk := read_chunk(source, part_size):
        yield chunk


@functools.cache
def _shared_loader():
    """One botocore model loader for every store: each session would otherwise parse the
    S3 service model again (a tenth of a second and megabytes per store)."""
    from botocore.loaders import create_loader

    return create_loader()


def _make_client(config: S3Config):
    """A boto3 client for ``config``, and the credentials it signs with (None: anonymous)."""
    import boto3
    import botocore.session
    from botocore import UNSIGNED
    from botocore.config import Config
    from botocore.credentials import SharedCredentialProvider
    from botocore.exceptions import ProfileNotFound

    session = botocore.session.Session()
    session.register_component("data_loader", _shared_loader())
    if config.access_key_env:
        session.set_credentials(
            env_value(config.access_key_env, "access_key_env"),
            env_value(config.secret_key_env, "secret_key_env"),
            env_value(config.session_token_env, "session_token_env")
            if config.session_token_env
            else None,
        )
    elif config.credentials_file:
        path = os.path.expanduser(config.credentials_file)
        if not os.path.isfile(path):
            raise FileNotFoundError(errno.ENOENT, "credentials_file does not exist", path)
        profile = config.profile or "default"
        creds = SharedCredentialProvider(creds_filename=path, profile_name=profile).load()
        if creds is None:
            raise ValueError(f"credentials_file {path}: no credentials for profile {profile!r}")
        session.set_credentials(creds.access_key, creds.secret_key, creds.token)
    elif config.profile:
        session.set_config_variable("profile", config.profile)
    found = None
    if not config.anonymous:
        try:
            found = session.get_credentials()
        except ProfileNotFound:
            raise ValueError(f"profile {config.profile!r} is not configured") from None
        if found is None:
            raise PermissionError(
                errno.EACCES,
                "S3Store: no credentials found; pass access_key_env/secret_key_env, "
                "credentials_file or profile, or anonymous=True for a public bucket",
            )
    client_config = Config(
        connect_timeout=config.connect_timeout,
        read_timeout=config.read_timeout,
        # One retry loop only: the store's RetryPolicy.
        retries={"total_max_attempts": 1, "mode": "standard"},
        max_pool_connections=config.max_pool_connections,
        s3={"addressing_style": config.addressing_style},
        # SigV4 named: presigned URLs (object reads, see _s3get) would otherwise be SigV2,
        # which newer AWS regions refuse.
        signature_version=UNSIGNED if config.anonymous else "s3v4",
        # Many S3-compatible services reject the newer default checksum trailers.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    client = boto3.Session(botocore_session=session).client(
        "s3", region_name=config.region, endpoint_url=config.endpoint_url, config=client_config
    )
    return client, found
