"""The checks of a GET's answer before its bytes are read (``_s3get``), with answers the
S3 server of the integration tests does not give: ignored ranges, lying lengths, streams
cut short."""

from __future__ import annotations

import datetime
import errno
import io
import time
import urllib.parse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal.control.ufs import StoreConnectionError
from shoal.control.ufs._s3get import http_time, read_fetched

OBJECT = bytes(range(256)) * 4
URI = "s3://bucket/key"


def answer(offset: int, length: int) -> tuple[io.BytesIO, int, str]:
    """What S3 sends for ``bytes=offset-(offset+length-1)`` of OBJECT (offset inside)."""
    body = OBJECT[offset : offset + length]
    return io.BytesIO(body), len(body), f"bytes {offset}-{offset + len(body) - 1}/{len(OBJECT)}"


@given(offset=st.integers(0, len(OBJECT) - 1), length=st.integers(1, 2 * len(OBJECT)))
def test_a_range_answer_fills_the_buffer_and_tells_the_size(offset, length):
    stream, n, content_range = answer(offset, length)
    view = memoryview(bytearray(length))
    got, size, drained = read_fetched(stream, 206, n, content_range, offset, view, URI)
    assert (got, size, drained) == (n, len(OBJECT), True)
    assert bytes(view[:got]) == OBJECT[offset : offset + length]


@pytest.mark.parametrize("length", [0, 10, len(OBJECT), 2 * len(OBJECT)])
def test_a_whole_answer_fills_what_fits(length):
    stream = io.BytesIO(OBJECT)
    view = memoryview(bytearray(length))
    got, size, drained = read_fetched(stream, 200, len(OBJECT), "", 0, view, URI)
    assert (got, size) == (min(length, len(OBJECT)), len(OBJECT))
    assert drained == (length >= len(OBJECT))  # else the connection cannot be reused
    assert bytes(view[:got]) == OBJECT[:got]


@pytest.mark.parametrize(
    ("status", "length", "content_range", "offset", "match"),
    [
        (200, len(OBJECT), "", 5, "ignored the requested range"),
        (206, 4, "bytes 6-9/1024", 5, "not the one asked"),
        (206, 4, "bytes 5-8/*", 5, "not the one asked"),
        (206, 4, "", 5, "not the one asked"),
        (206, 5, "bytes 5-8/1024", 5, "do not fit"),
        (206, 20, "bytes 5-24/1024", 5, "do not fit"),
        (200, -1, "", 0, "ignored"),
        (204, 0, "", 0, "ignored"),
    ],
)
def test_answers_that_are_not_what_was_asked(status, length, content_range, offset, match):
    view = memoryview(bytearray(16))
    with pytest.raises(OSError, match=match) as exc_info:
        read_fetched(io.BytesIO(OBJECT), status, length, content_range, offset, view, URI)
    assert exc_info.value.errno == errno.EIO
    assert exc_info.value.filename == URI


def test_a_stream_cut_short_is_a_connection_error():
    stream = io.BytesIO(OBJECT[:3])
    with pytest.raises(StoreConnectionError, match="after 3 of 4 bytes") as exc_info:
        read_fetched(stream, 206, 4, "bytes 0-3/1024", 0, memoryview(bytearray(8)), URI)
    assert exc_info.value.errno == errno.ECONNRESET


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Tue, 01 Dec 2026 13:56:32 GMT", 1796133392.0),
        ("Thu, 01 Jan 1970 00:00:07 -0000", 7.0),
        ("Thu, 01 Jan 1970 01:00:07 +0100", 7.0),
        ("not a date", 0.0),
        ("", 0.0),
        (None, 0.0),
    ],
)
def test_http_times(value, expected):
    assert http_time(value) == expected


# --------------------------------------------------------------------- the URL signer


@pytest.mark.parametrize("style", ["path", "virtual"])
@pytest.mark.parametrize("token", [None, "session/token+with=chars"])
@pytest.mark.parametrize("key", ["a/b.jpg", "dir with space/ünïcode~x+y=z&q", "x" * 300])
def test_query_signatures_are_botocores(style, token, key, monkeypatch):
    """The URL signed here is the one botocore's presigner makes for the same second,
    endpoint, addressing style, region, credentials and key."""
    import boto3
    from botocore.config import Config
    from botocore.credentials import Credentials

    from shoal.control.ufs._s3get import QuerySigner

    credentials = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    session = boto3.Session(
        aws_access_key_id=credentials.access_key,
        aws_secret_access_key=credentials.secret_key,
        aws_session_token=token,
    )
    client = session.client(
        "s3",
        region_name="eu-west-3",
        endpoint_url="http://127.0.0.1:9000" if style == "path" else None,
        config=Config(signature_version="s3v4", s3={"addressing_style": style}),
    )
    # Both sign at one frozen second: two real clocks read apart can straddle one.
    import botocore.auth

    real_gmtime, moment = time.gmtime, time.gmtime(int(time.time()))
    monkeypatch.setattr(time, "gmtime", lambda *when: real_gmtime(*when) if when else moment)
    frozen = datetime.datetime(*moment[:6])
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda *_: frozen)
    ours = QuerySigner(client, "my-bucket", credentials).url(key, 600)
    theirs = client.generate_presigned_url(
        "get_object", Params={"Bucket": "my-bucket", "Key": key}, ExpiresIn=600
    )
    mine, botos = urllib.parse.urlsplit(ours), urllib.parse.urlsplit(theirs)
    assert mine._replace(query="") == botos._replace(query="")
    # the same parameters and signature (the server sorts them: their order is free)
    assert urllib.parse.parse_qs(mine.query) == urllib.parse.parse_qs(botos.query)


def test_unsigned_urls_for_anonymous_clients():
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    from shoal.control.ufs._s3get import QuerySigner

    client = boto3.Session().client(
        "s3",
        region_name="us-east-1",
        endpoint_url="http://127.0.0.1:9000",
        config=Config(signature_version=UNSIGNED),
    )
    signer = QuerySigner(client, "pub", None)
    assert signer.url("a b/c", 600) == "http://127.0.0.1:9000/pub/a%20b/c"
