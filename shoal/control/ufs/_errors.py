"""Errors of the under-stores, and the one place where backend errors become them.

Every backend error leaves an under-store as an ``OSError`` subclass with an errno: the
builtin one where it fits (``FileNotFoundError``, ``PermissionError``), else a
:class:`~shoal.ShoalError` that also inherits the builtin class that fits. The original
exception is kept as ``__cause__``. Messages name the operation and the object's URI, never
a credential.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator

from ..._errors import ShoalError

__all__ = [
    "ObjectChangedError",
    "StoreConnectionError",
    "StoreServerError",
    "StoreTimeoutError",
    "ThrottledError",
    "botocore_errors",
    "fsspec_errors",
    "os_errors",
]


class ObjectChangedError(ShoalError, OSError):
    """The object no longer has the version the caller asked for (ESTALE): it was
    overwritten since its metadata was read. Refresh the metadata and read again."""

    def __init__(self, message: str, filename: str | None = None):
        super().__init__(*_args(errno.ESTALE, message, filename))


class ThrottledError(ShoalError, OSError):
    """The store asks the client to slow down (EAGAIN); retried with backoff."""

    def __init__(self, message: str, filename: str | None = None):
        super().__init__(*_args(errno.EAGAIN, message, filename))


class StoreServerError(ShoalError, OSError):
    """The store failed on its side (an HTTP 5xx, EIO); retried with backoff."""

    def __init__(self, message: str, filename: str | None = None):
        super().__init__(*_args(errno.EIO, message, filename))


class StoreConnectionError(ShoalError, ConnectionError):
    """The store could not be reached, or dropped the connection (ECONNREFUSED,
    ECONNRESET, ...); retried with backoff."""

    def __init__(self, code: int, message: str, filename: str | None = None):
        super().__init__(*_args(code, message, filename))


class StoreTimeoutError(ShoalError, TimeoutError):
    """The store did not answer within the configured timeout (ETIMEDOUT); retried with
    backoff."""

    def __init__(self, message: str, filename: str | None = None):
        super().__init__(*_args(errno.ETIMEDOUT, message, filename))


def _args(code: int, message: str, filename: str | None) -> tuple:
    return (code, message) if filename is None else (code, message, filename)


# S3 error codes whose meaning the HTTP status alone does not carry.
_S3_CODES: dict[str, tuple[type[OSError], int]] = {
    "NoSuchKey": (FileNotFoundError, errno.ENOENT),
    "NoSuchBucket": (FileNotFoundError, errno.ENOENT),
    "NoSuchUpload": (FileNotFoundError, errno.ENOENT),
    "NotFound": (FileNotFoundError, errno.ENOENT),
    "AccessDenied": (PermissionError, errno.EACCES),
    "AllAccessDisabled": (PermissionError, errno.EACCES),
    "InvalidAccessKeyId": (PermissionError, errno.EACCES),
    "SignatureDoesNotMatch": (PermissionError, errno.EACCES),
    "ExpiredToken": (PermissionError, errno.EACCES),
    "InvalidToken": (PermissionError, errno.EACCES),
    "AccountProblem": (PermissionError, errno.EACCES),
    "EntityTooLarge": (OSError, errno.EFBIG),
    "KeyTooLongError": (OSError, errno.ENAMETOOLONG),
}
_THROTTLING = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestLimitExceeded",
        "TooManyRequests",
        "TooManyRequestsException",
        "ServiceUnavailable",
    }
)
_STATUS: dict[int, tuple[type[OSError], int]] = {
    400: (OSError, errno.EINVAL),
    401: (PermissionError, errno.EACCES),
    403: (PermissionError, errno.EACCES),
    404: (FileNotFoundError, errno.ENOENT),
    405: (PermissionError, errno.EPERM),
    409: (OSError, errno.EBUSY),
}


def _client_error(exc, op: str, uri: str) -> OSError:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    message = error.get("Message") or "no message"
    if code and code != str(status):
        detail = f"{op}: {code}: {message}"
    else:  # a HEAD response has no body: the status is all there is
        detail = f"{op}: HTTP {status} {message}"
    if code == "NoSuchBucket":
        bucket = error.get("BucketName") or uri.split("/")[2]
        return FileNotFoundError(errno.ENOENT, f"{op}: bucket {bucket!r} does not exist", uri)
    if code == "PreconditionFailed" or status == 412:
        return ObjectChangedError(f"{op}: the object changed (its version no longer matches)", uri)
    if code in _THROTTLING or status in (429, 503):
        return ThrottledError(detail, uri)
    if status >= 500:
        return StoreServerError(detail, uri)
    cls, code_errno = _S3_CODES.get(code) or _STATUS.get(status) or (OSError, errno.EIO)
    return cls(code_errno, detail, uri)


def _chained_errno(exc: BaseException) -> int | None:
    """The errno of the first OSError found down an exception's chain, if any."""
    seen = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and isinstance(e.errno, int) and e.errno > 0:
            return e.errno
        kwargs = getattr(e, "kwargs", None)
        inner = kwargs.get("error") if isinstance(kwargs, dict) else None
        stack.extend([inner, getattr(e, "reason", None), e.__cause__, e.__context__])
        stack = [s for s in stack if s is None or isinstance(s, BaseException)]
    return None


def _botocore_error(exc: Exception, op: str, uri: str) -> BaseException:
    from botocore import exceptions as bx

    if isinstance(exc, bx.ClientError):
        return _client_error(exc, op, uri)
    if isinstance(exc, (bx.ConnectTimeoutError, bx.ReadTimeoutError)):
        return StoreTimeoutError(f"{op}: {exc}", uri)
    if isinstance(exc, (bx.EndpointConnectionError, bx.ConnectionError)):
        code = _chained_errno(exc) or errno.ECONNREFUSED
        return StoreConnectionError(code, f"{op}: {exc}", uri)
    if isinstance(exc, (bx.HTTPClientError, bx.IncompleteReadError)):
        return StoreConnectionError(errno.ECONNRESET, f"{op}: {exc}", uri)
    if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError)):
        return PermissionError(errno.EACCES, f"{op}: {exc}", uri)
    if isinstance(exc, bx.ParamValidationError):
        return ValueError(f"{op} {uri}: {exc}")
    return OSError(errno.EIO, f"{op}: {exc}", uri)


@contextlib.contextmanager
def botocore_errors(op: str, uri: str) -> Iterator[None]:
    """Turn botocore and urllib3 errors raised inside the block into OSError subclasses.

    ``op`` names the operation (``"stat"``, ``"read"``...) and ``uri`` the object, both
    for the message.
    """
    from botocore.exceptions import BotoCoreError, ClientError
    from urllib3.exceptions import HTTPError as Urllib3Error

    try:
        yield
    except (BotoCoreError, ClientError) as exc:
        raise _botocore_error(exc, op, uri) from exc
    except Urllib3Error as exc:
        raise StoreConnectionError(errno.ECONNRESET, f"{op}: {exc}", uri) from exc


def _os_error(exc: OSError, op: str, uri: str) -> OSError:
    if isinstance(exc, ShoalError):
        return exc
    code = exc.errno if isinstance(exc.errno, int) else None
    if code is None:
        # Some backends raise a bare FileNotFoundError(path): give it its errno back.
        for cls, default in (
            (FileNotFoundError, errno.ENOENT),
            (PermissionError, errno.EACCES),
            (IsADirectoryError, errno.EISDIR),
            (NotADirectoryError, errno.ENOTDIR),
            (FileExistsError, errno.EEXIST),
            (TimeoutError, errno.ETIMEDOUT),
            (ConnectionRefusedError, errno.ECONNREFUSED),
            (ConnectionError, errno.ECONNRESET),
        ):
            if isinstance(exc, cls):
                code = default
                break
        else:
            code = errno.EIO
    text = str(exc)
    # A bare FileNotFoundError(path) says nothing the URI does not: use the errno's text.
    reason = exc.strerror or (text if text and text not in uri else os.strerror(code))
    # OSError(errno, ...) picks the subclass matching the errno (ENOENT: FileNotFoundError).
    return OSError(code, f"{op}: {reason}", uri)


@contextlib.contextmanager
def os_errors(op: str, uri: str) -> Iterator[None]:
    """Re-raise OSErrors from the block with an errno and the object's URI in them."""
    try:
        yield
    except OSError as exc:
        new = _os_error(exc, op, uri)
        if new is exc:
            raise
        raise new from exc


@contextlib.contextmanager
def fsspec_errors(op: str, uri: str) -> Iterator[None]:
    """Like :func:`os_errors`, and any other backend failure becomes ``OSError(EIO)``.

    ``ValueError`` and ``TypeError`` pass unchanged: they report a bad argument.
    """
    try:
        yield
    except (ValueError, TypeError):
        raise
    except OSError as exc:
        new = _os_error(exc, op, uri)
        if new is exc:
            raise
        raise new from exc
    except Exception as exc:
        raise OSError(errno.EIO, f"{op}: {type(exc).__name__}: {exc}", uri) from exc
