"""Backend errors become OSError subclasses with an errno, the original as __cause__."""

from __future__ import annotations

import errno

import pytest
from botocore import exceptions as bx
from urllib3.exceptions import ProtocolError

from shoal import ShoalError
from shoal.control.ufs import (
    ObjectChangedError,
    StoreConnectionError,
    StoreServerError,
    StoreTimeoutError,
    ThrottledError,
)
from shoal.control.ufs._errors import botocore_errors, fsspec_errors, os_errors

URI = "s3://bucket/key"


def client_error(code: str, status: int, message: str = "msg", **extra) -> bx.ClientError:
    error = {"Code": code, "Message": message, **extra}
    return bx.ClientError(
        {"Error": error, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject"
    )


def translated(exc: BaseException, context=botocore_errors) -> BaseException:
    with pytest.raises(BaseException) as exc_info, context("read", URI):
        raise exc
    assert exc_info.value.__cause__ is exc or exc_info.value is exc
    return exc_info.value


@pytest.mark.parametrize(
    ("code", "status", "cls", "code_errno"),
    [
        ("NoSuchKey", 404, FileNotFoundError, errno.ENOENT),
        ("404", 404, FileNotFoundError, errno.ENOENT),
        ("NoSuchUpload", 404, FileNotFoundError, errno.ENOENT),
        ("AccessDenied", 403, PermissionError, errno.EACCES),
        ("403", 403, PermissionError, errno.EACCES),
        ("InvalidAccessKeyId", 403, PermissionError, errno.EACCES),
        ("SignatureDoesNotMatch", 403, PermissionError, errno.EACCES),
        ("ExpiredToken", 400, PermissionError, errno.EACCES),
        ("PreconditionFailed", 412, ObjectChangedError, errno.ESTALE),
        ("SlowDown", 503, ThrottledError, errno.EAGAIN),
        ("Throttling", 400, ThrottledError, errno.EAGAIN),
        ("TooManyRequests", 429, ThrottledError, errno.EAGAIN),
        ("InternalError", 500, StoreServerError, errno.EIO),
        ("BadGateway", 502, StoreServerError, errno.EIO),
        ("InvalidArgument", 400, OSError, errno.EINVAL),
        ("EntityTooLarge", 400, OSError, errno.EFBIG),
        ("BucketNotEmpty", 409, OSError, errno.EBUSY),
        ("Teapot", 418, OSError, errno.EIO),
    ],
)
def test_client_errors(code, status, cls, code_errno):
    exc = client_error(code, status)
    new = translated(exc)
    assert type(new) is cls or isinstance(new, cls)
    assert isinstance(new, OSError)
    assert new.errno == code_errno
    assert new.filename == URI
    assert str(new).startswith(f"[Errno {code_errno}] read")


def test_no_such_bucket_names_the_bucket():
    new = translated(client_error("NoSuchBucket", 404, BucketName="my-data"))
    assert isinstance(new, FileNotFoundError)
    assert "bucket 'my-data' does not exist" in str(new)


def test_ours_are_shoal_errors():
    for exc in (client_error("SlowDown", 503), client_error("InternalError", 500)):
        assert isinstance(translated(exc), ShoalError)


@pytest.mark.parametrize(
    ("exc", "cls", "code_errno"),
    [
        (
            bx.EndpointConnectionError(endpoint_url="http://h"),
            StoreConnectionError,
            errno.ECONNREFUSED,
        ),
        (bx.ConnectTimeoutError(endpoint_url="http://h"), StoreTimeoutError, errno.ETIMEDOUT),
        (bx.ReadTimeoutError(endpoint_url="http://h"), StoreTimeoutError, errno.ETIMEDOUT),
        (
            bx.ConnectionClosedError(endpoint_url="http://h"),
            StoreConnectionError,
            errno.ECONNRESET,
        ),
        (
            bx.IncompleteReadError(actual_bytes=1, expected_bytes=2),
            StoreConnectionError,
            errno.ECONNRESET,
        ),
        (ProtocolError("connection broken"), StoreConnectionError, errno.ECONNRESET),
        (bx.NoCredentialsError(), PermissionError, errno.EACCES),
    ],
)
def test_transport_errors(exc, cls, code_errno):
    new = translated(exc)
    assert isinstance(new, cls)
    assert new.errno == code_errno


def test_connection_error_keeps_the_socket_errno():
    inner = ConnectionRefusedError(errno.EHOSTUNREACH, "no route to host")
    exc = bx.EndpointConnectionError(endpoint_url="http://h", error=inner)
    assert translated(exc).errno == errno.EHOSTUNREACH


def test_param_validation_is_a_value_error():
    new = translated(bx.ParamValidationError(report="bad Range"))
    assert isinstance(new, ValueError)


@pytest.mark.parametrize(
    ("exc", "cls", "code_errno"),
    [
        (FileNotFoundError("/mem/key"), FileNotFoundError, errno.ENOENT),
        (PermissionError("nope"), PermissionError, errno.EACCES),
        (IsADirectoryError("/mem/dir"), IsADirectoryError, errno.EISDIR),
        (TimeoutError(), TimeoutError, errno.ETIMEDOUT),
        (OSError("strange"), OSError, errno.EIO),
        (OSError(errno.ENOSPC, "No space left on device"), OSError, errno.ENOSPC),
    ],
)
def test_os_errors_get_an_errno_and_the_uri(exc, cls, code_errno):
    new = translated(exc, os_errors)
    assert isinstance(new, cls)
    assert new.errno == code_errno
    assert new.filename == URI


def test_fsspec_other_failures_are_eio_and_argument_errors_pass():
    new = translated(RuntimeError("backend exploded"), fsspec_errors)
    assert isinstance(new, OSError) and new.errno == errno.EIO
    assert "backend exploded" in str(new)
    with pytest.raises(ValueError, match="bad"), fsspec_errors("read", URI):
        raise ValueError("bad")


def test_our_errors_pass_through_unchanged():
    exc = ObjectChangedError("changed", URI)
    assert translated(exc, os_errors) is exc
