"""Object reads of :class:`~shoal.control.ufs.S3Store` without botocore's request pipeline.

A GET of object bytes is the request a cache worker sends most. Through a boto3 client it
costs about 3 ms of CPU (parameter checks, serialisation, signing, event hooks, response
parsing); here the client signs a URL for the key once (presigned, kept for a few
minutes) and urllib3 sends the GET with its ``Range`` and ``If-Match`` headers, which a
presigned URL leaves free: about half the CPU per request. Errors are mapped exactly as
the client's are (``_client_error``), so callers cannot tell the two paths apart.

Not used when the environment names a proxy (botocore honours it and urllib3 alone would
not); the store then reads through the client. A CA bundle named by ``AWS_CA_BUNDLE`` is
used as botocore uses it.
"""

from __future__ import annotations

import errno
import os
import re
import threading
import time
from typing import Any

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

__all__ = ["LeanGets", "lean_gets_allowed", "read_answer"]

_URL_LIFE = 300.0  # seconds a presigned URL is used; it is signed for twice as long
_MAX_URLS = 4096  # cached URLs; the cache starts over when full
_READ_CHUNK = 1 << 20
_CODE = re.compile(rb"<Code>([^<]{1,100})</Code>")
_MESSAGE = re.compile(rb"<Message>([^<]{0,500})</Message>")
_BUCKET_NAME = re.compile(rb"<BucketName>([^<]{1,100})</BucketName>")
# Proxy settings botocore takes from the environment that urllib3 on its own would ignore.
_PROXIES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


def lean_gets_allowed() -> bool:
    """False when the environment sets a proxy."""
    return not any(os.environ.get(name) or os.environ.get(name.lower()) for name in _PROXIES)


class LeanGets:
    """Ranged or whole GETs of one bucket's objects, as described in the module.

    Parameters
    ----------
    client
        The store's boto3 S3 client (it presigns the URLs).
    bucket
        The bucket.
    max_connections, connect_timeout, read_timeout
        As the store's configuration says.
    """

    def __init__(
        self,
        client: Any,
        bucket: str,
        *,
        max_connections: int,
        connect_timeout: float,
        read_timeout: float,
    ):
        self._client = client
        self._bucket = bucket
        self._http = urllib3.PoolManager(
            maxsize=max_connections,
            block=False,
            retries=False,
            ca_certs=os.environ.get("AWS_CA_BUNDLE") or None,
        )
        self._timeout = urllib3.Timeout(connect=connect_timeout, read=read_timeout)
        self._urls: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def _url(self, key: str, fresh: bool = False) -> str:
        now = time.monotonic()
        with self._lock:
            hit = self._urls.get(key)
        if hit is not None and hit[1] > now and not fresh:
            return hit[0]
        url = self._client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self._bucket, "Key": key},
            ExpiresIn=int(2 * _URL_LIFE),
        )
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
        headers = {}
        if not whole:
            headers["Range"] = f"bytes={offset}-{offset + view.nbytes - 1}"
        if version is not None:
            headers["If-Match"] = f'"{version}"'
        resp = self._send(key, uri, headers)
        for retry in (True, False):
            if resp.status < 300:
                break
            body = resp.data  # error documents are small
            resp.release_conn()
            if resp.status == 416:
                return None
            if not (retry and resp.status == 403 and b"expired" in body.lower()):
                raise _status_error(resp.status, body, uri)
            resp = self._send(key, uri, headers, fresh=True)  # the URL outlived its life
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

    def _send(self, key: str, uri: str, headers: dict, fresh: bool = False):
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
