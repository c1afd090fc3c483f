"""Object reads of :class:`~shoal.control.ufs.S3Store` without botocore's request pipeline.

A GET of object bytes is the request a cache worker sends most. Through a boto3 client it
costs about 3 ms of CPU (parameter checks, serialisation, signing, event hooks, response
parsing); here a URL for the key is signed once (a SigV4 query signature made here, as
botocore's presigner makes it, kept for a few minutes) and urllib3 sends the GET with its
``Range`` and ``If-Match`` headers, which a presigned URL leaves free: about a third of
the CPU per request. Errors are mapped exactly as
the client's are (``_client_error``), so callers cannot tell the two paths apart.

A GET that also tells the object's metadata (:meth:`LeanGets.fetch`, for
``S3Store.fetch_into``) takes its size from ``Content-Range`` (``bytes a-b/TOTAL``) or
``Content-Length``, its version from ``ETag`` and its time from ``Last-Modified``.

Not used when the environment names a proxy (botocore honours it and urllib3 alone would
not); the store then reads through the client. A CA bundle named by ``AWS_CA_BUNDLE`` is
used as botocore uses it.
"""

from __future__ import annotations

import datetime
import email.utils
import errno
import hashlib
import hmac
import os
import re
import threading
import time
import urllib.parse
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, NamedTuple, TypeVar

import urllib3
from botocore.exceptions import ClientError
from urllib3 import exceptions as ux

from ._errors import (
    ObjectChangedError,
    StoreConnectionError,
    StoreTimeoutError,
    _chained_errno,
    _client_error,
)

__all__ = [
    "Fetched",
    "LeanGets",
    "QuerySigner",
    "http_time",
    "lean_gets_allowed",
    "read_answer",
    "read_fetched",
]

_ALGORITHM = "AWS4-HMAC-SHA256"
_TERM = "aws4_request"
_PROBE_KEY = "shoal-url-probe"
_URL_LIFE = 300.0  # seconds a presigned URL is used; it is signed for twice as long
_MAX_URLS = 4096  # cached URLs; the cache starts over when full
_READ_CHUNK = 1 << 20
_CODE = re.compile(rb"<Code>([^<]{1,100})</Code>")
_MESSAGE = re.compile(rb"<Message>([^<]{0,500})</Message>")
_BUCKET_NAME = re.compile(rb"<BucketName>([^<]{1,100})</BucketName>")
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")
# Proxy settings botocore takes from the environment that urllib3 on its own would ignore.
_PROXIES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")

T = TypeVar("T")


class Fetched(NamedTuple):
    """What one GET of a fetch brought: the bytes read into the buffer, and the
    object's size, ``ETag`` (as sent) and ``Last-Modified`` (seconds since the epoch)."""

    got: int
    size: int
    etag: str
    mtime: float


def lean_gets_allowed() -> bool:
    """False when the environment sets a proxy."""
    return not any(os.environ.get(name) or os.environ.get(name.lower()) for name in _PROXIES)


class QuerySigner:
    """SigV4 query-string signatures of GET URLs of one bucket's objects, as botocore's
    presigner makes them, without its per-call request pipeline (endpoint rules, events,
    a request object: some 0.3 ms of CPU per URL).

    The URL of an object and the signing scope come from one URL botocore presigns at
    start, so endpoint, addressing style and region are whatever the client says.

    Parameters
    ----------
    client
        A boto3 S3 client.
    bucket
        The bucket.
    credentials
        botocore credentials (``get_frozen_credentials`` is asked at each signature, so
        temporary ones are renewed), or None: URLs are not signed.
    """

    def __init__(self, client: Any, bucket: str, credentials: Any):
        probe = client.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": _PROBE_KEY}, ExpiresIn=60
        )
        parts = urllib.parse.urlsplit(probe)
        if not parts.path.endswith("/" + _PROBE_KEY):
            raise ValueError(f"cannot tell the URL of an object from {parts.path!r}")
        self._base = f"{parts.scheme}://{parts.netloc}{parts.path[: -len(_PROBE_KEY)]}"
        self._path = parts.path[: -len(_PROBE_KEY)]
        self._host = parts.netloc
        query = dict(urllib.parse.parse_qsl(parts.query))
        scope = query.get("X-Amz-Credential", "").split("/")
        self._credentials = credentials if "X-Amz-Signature" in query else None
        if self._credentials is not None and (len(scope) != 5 or scope[3:] != ["s3", _TERM]):
            raise ValueError("the client presigns with a scheme other than SigV4 for S3")
        self._region = scope[2] if len(scope) == 5 else ""
        self._keys: tuple[str, str, bytes] | None = None  # secret, date, signing key

    def url(self, key: str, expires: int) -> str:
        """A URL that GETs ``key`` for ``expires`` seconds."""
        path = self._path + urllib.parse.quote(key, safe="/~")
        if self._credentials is None:
            return f"{self._base}{path[len(self._path) :]}"
        frozen = self._credentials.get_frozen_credentials()
        now = time.gmtime()
        date, stamp = time.strftime("%Y%m%d", now), time.strftime("%Y%m%dT%H%M%SZ", now)
        scope = f"{date}/{self._region}/s3/{_TERM}"
        params = {
            "X-Amz-Algorithm": _ALGORITHM,
            "X-Amz-Credential": f"{frozen.access_key}/{scope}",
            "X-Amz-Date": stamp,
            "X-Amz-Expires": str(expires),
            "X-Amz-SignedHeaders": "host",
        }
        if frozen.token:
            params["X-Amz-Security-Token"] = frozen.token
        query = "&".join(f"{_quote(k)}={_quote(v)}" for k, v in sorted(params.items()))
        canonical = f"GET\n{path}\n{query}\nhost:{self._host}\n\nhost\nUNSIGNED-PAYLOAD"
        digest = hashlib.sha256(canonical.encode()).hexdigest()
        to_sign = f"{_ALGORITHM}\n{stamp}\n{scope}\n{digest}"
        signature = hmac.new(
            self._signing_key(frozen.secret_key, date), to_sign.encode(), hashlib.sha256
        ).hexdigest()
        return f"{self._base}{path[len(self._path) :]}?{query}&X-Amz-Signature={signature}"

    def _signing_key(self, secret: str, date: str) -> bytes:
        keys = self._keys
        if keys is not None and keys[0] == secret and keys[1] == date:
            return keys[2]
        key = ("AWS4" + secret).encode()
        for part in (date, self._region, "s3", _TERM):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        self._keys = (secret, date, key)
        return key


def _quote(text: str) -> str:
    return urllib.parse.quote(text, safe="-_.~")


class LeanGets:
    """Ranged or whole GETs of one bucket's objects, as described in the module.

    Parameters
    ----------
    client
        The store's boto3 S3 client (it tells the URL of an object).
    bucket
        The bucket.
    credentials
        The client's botocore credentials (refreshed as they expire), or None for
        unsigned requests.
    max_connections, connect_timeout, read_timeout
        As the store's configuration says.
    request
        Called with ``"GET"`` for every request sent, which is sent and its answer read
        in the context it returns (the store's ``_request``: it counts and times it).
    """

    def __init__(
        self,
        client: Any,
        bucket: str,
        credentials: Any,
        *,
        max_connections: int,
        connect_timeout: float,
        read_timeout: float,
        request: Callable[[str], AbstractContextManager],
    ):
        self._client = client
        self._bucket = bucket
        self._request = request
        self._http = urllib3.PoolManager(
            maxsize=max_connections,
            block=False,
            retries=False,
            ca_certs=os.environ.get("AWS_CA_BUNDLE") or None,
        )
        self._timeout = urllib3.Timeout(connect=connect_timeout, read=read_timeout)
        self._urls: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()
        self._credentials = credentials
        self._signer: QuerySigner | None = None  # made on first use: it presigns a probe

    def _url(self, key: str, fresh: bool = False) -> str:
        now = time.monotonic()
        with self._lock:
            hit = self._urls.get(key)
        if hit is not None and hit[1] > now and not fresh:
            return hit[0]
        if self._signer is None:
            self._signer = QuerySigner(self._client, self._bucket, self._credentials)
        url = self._signer.url(key, int(2 * _URL_LIFE))
        with self._lock:
            if len(self._urls) >= _MAX_URLS:
                self._urls.clear()
            self._urls[key] = (url, now + _URL_LIFE)
        return url

    def get(
        self, key: str, uri: str, offset: int, view: memoryview, version: str | None, whole: bool
    ) -> int | None:
        """One GET into ``view`` (see ``S3Store._get_range``): the bytes read, None when
        the range starts past the end of the object."""
        headers = _headers(offset, view.nbytes, version, not whole)
        return self._exchange(
            key, uri, headers, lambda resp: _read_got(resp, uri, offset, view, whole)
        )

    def fetch(
        self, key: str, uri: str, offset: int, view: memoryview, version: str | None, ranged: bool
    ) -> Fetched | None:
        """One GET into ``view`` that also tells the object's metadata (see
        ``S3Store._fetch_range``); None when the range starts past the end."""
        headers = _headers(offset, view.nbytes, version, ranged)
        return self._exchange(
            key, uri, headers, lambda resp: _read_fetched(resp, uri, offset, view)
        )

    def _exchange(self, key: str, uri: str, headers: dict, read: Callable[[Any], T]) -> T | None:
        """Send the GET and ``read`` its answer, as one request (counted and timed); again
        with a URL signed now if the one from the cache outlived its life."""
        try:
            return self._request_once(key, uri, headers, read, fresh=False)
        except _ExpiredURL:
            return self._request_once(key, uri, headers, read, fresh=True)

    def _request_once(
        self, key: str, uri: str, headers: dict, read: Callable[[Any], T], fresh: bool
    ) -> T | None:
        with self._request("GET"):
            resp = self._answer(key, uri, headers, fresh)
            return None if resp is None else read(resp)

    def _answer(self, key: str, uri: str, headers: dict, fresh: bool):
        """Send the GET (with a URL signed now if ``fresh``): the response with its body
        unread, None for a range that starts past the end (416), else the error the
        answer means, raised; :class:`_ExpiredURL` when a URL from the cache outlived its
        life."""
        resp = self._send(key, uri, headers, fresh)
        if resp.status < 300:
            return resp
        body = _error_body(resp)
        if resp.status == 403 and not fresh and b"expired" in body.lower():
            raise _ExpiredURL
        if resp.status == 416:
            return None
        raise _status_error(resp.status, body, uri)

    def _send(self, key: str, uri: str, headers: dict, fresh: bool):
        url = self._url(key, fresh)
        try:
            return self._http.request(
                "GET",
                url,
                headers=headers,
                preload_content=False,
                redirect=False,
                timeout=self._timeout,
            )
        except ux.HTTPError as exc:
            raise _urllib3_error(exc, uri) from exc

    def close(self) -> None:
        self._http.clear()


class _ExpiredURL(Exception):
    """The server refused a URL from the cache as expired: a failed request, sent again
    with a URL signed now."""


def _headers(offset: int, nbytes: int, version: str | None, ranged: bool) -> dict:
    headers = {}
    if ranged:
        headers["Range"] = f"bytes={offset}-{offset + nbytes - 1}"
    if version is not None:
        headers["If-Match"] = f'"{version}"'
    return headers


def _read_got(resp: Any, uri: str, offset: int, view: memoryview, whole: bool) -> int:
    """The bytes of a GET's answer into ``view`` (see :func:`read_answer`); the
    connection reused when the body was read to its end."""
    clean = False
    try:
        length = int(resp.headers.get("Content-Length", -1))
        content_range = resp.headers.get("Content-Range", "")
        got = read_answer(resp, length, content_range, offset, view, whole, uri)
        clean = True
    except ux.HTTPError as exc:
        raise _urllib3_error(exc, uri) from exc
    finally:
        if clean:
            resp.release_conn()
        else:
            resp.close()  # bytes left in the stream: the connection cannot be reused
    return got


def _read_fetched(resp: Any, uri: str, offset: int, view: memoryview) -> Fetched:
    """The bytes and the metadata of a fetch's answer (see :func:`read_fetched`)."""
    drained = False
    try:
        length = int(resp.headers.get("Content-Length", -1))
        content_range = resp.headers.get("Content-Range", "")
        got, size, drained = read_fetched(
            resp, resp.status, length, content_range, offset, view, uri
        )
    except ux.HTTPError as exc:
        raise _urllib3_error(exc, uri) from exc
    finally:
        if drained:
            resp.release_conn()
        else:
            resp.close()
    etag = resp.headers.get("ETag", "")
    return Fetched(got, size, etag, http_time(resp.headers.get("Last-Modified")))


def _error_body(resp: Any) -> bytes:
    body = resp.data  # error documents are small
    resp.release_conn()
    return body


def read_answer(
    stream: Any,
    length: int,
    content_range: str,
    offset: int,
    view: memoryview,
    whole: bool,
    uri: str,
) -> int:
    """Check a GET's answer (``Content-Length``, ``Content-Range``) against what was
    asked, then read its ``length`` bytes from ``stream`` (``readinto``) into ``view``."""
    if whole:
        if length != view.nbytes:
            raise ObjectChangedError(
                f"read: the object is {length} bytes, expected {view.nbytes}: it changed; "
                "read it again",
                uri,
            )
    elif not 0 <= length <= view.nbytes or not (
        content_range.startswith(f"bytes {offset}-") or (offset == 0 and not content_range)
    ):
        raise OSError(errno.EIO, "read: the server ignored the requested range", uri)
    return _read_exactly(stream, view, length, uri)


def read_fetched(
    stream: Any,
    status: int,
    length: int,
    content_range: str,
    offset: int,
    view: memoryview,
    uri: str,
) -> tuple[int, int, bool]:
    """Check the answer of a fetch's GET (206 for a range; 200 for the whole object,
    asked for without a range at offset 0, or from a server that ignores ranges), then
    read its bytes from ``stream`` into ``view``, at most ``view.nbytes``.

    Returns
    -------
    tuple of (int, int, bool)
        Bytes read, the object's size, and whether the body was read to its end (a
        whole object larger than ``view`` is not: its connection cannot be reused).
    """
    if status == 206:
        match = _CONTENT_RANGE.fullmatch(content_range.strip())
        if match is None or int(match[1]) != offset:
            raise OSError(
                errno.EIO, f"read: the answer's range {content_range!r} is not the one asked", uri
            )
        size = int(match[3])
        if not 0 <= length <= view.nbytes or length != int(match[2]) - offset + 1:
            raise OSError(
                errno.EIO, f"read: {length} bytes do not fit the range {content_range!r}", uri
            )
        want = length
    elif status == 200 and offset == 0 and length >= 0:
        size = length
        want = min(length, view.nbytes)
    else:
        raise OSError(errno.EIO, "read: the server ignored the requested range", uri)
    return _read_exactly(stream, view, want, uri), size, want == length


def _read_exactly(stream: Any, view: memoryview, length: int, uri: str) -> int:
    """``length`` bytes of ``stream`` (``readinto``) into ``view``."""
    got = 0
    while got < length:
        n = stream.readinto(view[got : min(length, got + _READ_CHUNK)])
        if not n:
            break
        got += n
    if got < length:
        raise StoreConnectionError(
            errno.ECONNRESET, f"read: stream ended after {got} of {length} bytes", uri
        )
    return got


def http_time(value: str | None) -> float:
    """Seconds since the epoch of an HTTP date (``Last-Modified``); 0.0 without one."""
    if not value:
        return 0.0
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return 0.0
    if moment.tzinfo is None:  # "-0000": UTC, as HTTP dates are
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.timestamp()


def _status_error(status: int, body: bytes, uri: str) -> OSError:
    """The error a client would raise for this answer (``_client_error``'s mapping)."""
    code = _CODE.search(body)
    message = _MESSAGE.search(body)
    bucket = _BUCKET_NAME.search(body)
    error: dict[str, str] = {"Code": code.group(1).decode(errors="replace") if code else ""}
    error["Message"] = message.group(1).decode(errors="replace") if message else ""
    if bucket:
        error["BucketName"] = bucket.group(1).decode(errors="replace")
    response = {"Error": error, "ResponseMetadata": {"HTTPStatusCode": status}}
    cause = ClientError(response, "GetObject")  # kept as the cause, as the client's would be
    exc = _client_error(cause, "read", uri)
    exc.__cause__ = cause
    exc.__suppress_context__ = True
    return exc


def _urllib3_error(exc: BaseException, uri: str) -> OSError:
    if isinstance(exc, ux.NewConnectionError):  # a kind of ConnectTimeoutError in urllib3
        code = _chained_errno(exc) or errno.ECONNREFUSED
        if code != errno.ETIMEDOUT:
            return StoreConnectionError(code, f"read: {exc}", uri)
    if isinstance(exc, (ux.ConnectTimeoutError, ux.ReadTimeoutError)):
        return StoreTimeoutError(f"read: {exc}", uri)
    return StoreConnectionError(errno.ECONNRESET, f"read: {exc}", uri)
