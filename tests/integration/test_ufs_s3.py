"""What only S3 has: credentials, multipart uploads, missing buckets, unreachable or
silent endpoints, servers that enforce authentication. Against a real moto server."""

from __future__ import annotations

import contextlib
import errno
import io
import socket
import threading
import time

import pytest
from s3server import (
    ACCESS_KEY_ENV,
    FAKE_ACCESS_KEY,
    FAKE_SECRET_KEY,
    SECRET_KEY_ENV,
    FaultyProxy,
)

from shoal.control.ufs import (
    ObjectChangedError,
    S3Store,
    StoreConnectionError,
    StoreServerError,
    StoreTimeoutError,
    open_store,
)

MiB = 1 << 20
BUCKET = "shoal-s3"


def options(server, **extra):
    return dict(
        endpoint_url=server.endpoint_url,
        region="us-east-1",
        access_key_env=ACCESS_KEY_ENV,
        secret_key_env=SECRET_KEY_ENV,
        **extra,
    )


@pytest.fixture
def bucket(s3_server):
    s3_server.client().create_bucket(Bucket=BUCKET)
    return s3_server


@pytest.fixture
def store(bucket):
    with open_store(f"s3://{BUCKET}/data", **options(bucket, part_size="5MiB")) as s:
        yield s


def test_multipart_upload_uses_parts(store, bucket):
    data = bytes(range(256)) * (12 * MiB // 256)
    info = store.write("big", data)
    # A multipart object's ETag ends in -<parts>: 5 + 5 + 2 MiB.
    assert info.version.endswith("-3")
    head = bucket.client().head_object(Bucket=BUCKET, Key="data/big")
    assert head["ContentLength"] == len(data)
    assert head["ETag"].strip('"') == info.version


def test_small_objects_take_one_request(store):
    info = store.write("small", b"x" * (5 * MiB))
    assert "-" not in info.version


class FailingReader(io.RawIOBase):
    """A stream that breaks after ``good`` bytes, as a dying source would."""

    def __init__(self, good: int):
        self.left = good

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self.left <= 0:
            raise OSError(errno.EIO, "source device failed")
        n = min(len(b), self.left)
        b[:n] = b"z" * n
        self.left -= n
        return n


def test_failed_multipart_upload_is_aborted(store, bucket):
    with pytest.raises(OSError, match="source device failed"):
        store.write("broken", FailingReader(11 * MiB))
    with pytest.raises(FileNotFoundError):
        store.stat("broken")
    uploads = bucket.client().list_multipart_uploads(Bucket=BUCKET)
    assert uploads.get("Uploads", []) == []


def test_objects_outside_the_prefix_are_invisible(store, bucket):
    client = bucket.client()
    client.put_object(Bucket=BUCKET, Key="data-other", Body=b"1")
    client.put_object(Bucket=BUCKET, Key="elsewhere/x", Body=b"1")
    client.put_object(Bucket=BUCKET, Key="data/folder/", Body=b"")  # a console's marker
    client.put_object(Bucket=BUCKET, Key="data/a//b", Body=b"1")  # no path names it
    client.put_object(Bucket=BUCKET, Key="data/ok", Body=b"1")
    assert [o.path for o in store.list()] == ["ok"]


def test_missing_bucket(bucket):
    with open_store("s3://no-such-bucket/x", **options(bucket)) as store:
        for call in (
            lambda: store.stat("obj"),
            lambda: list(store.list()),
            lambda: store.read_into("obj", 0, bytearray(4)),
        ):
            with pytest.raises(FileNotFoundError, match="no-such-bucket") as exc_info:
                call()
            assert exc_info.value.errno == errno.ENOENT
            assert exc_info.value.__cause__ is not None


@contextlib.contextmanager
def dead_endpoint_store(*, listen: bool, **options):
    """An S3Store of a local endpoint that never answers: a bound socket that listens (the
    kernel completes the handshake, then nothing) or does not (connections are refused;
    no other process can take the port meanwhile). Closed on exit."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        if listen:
            sock.listen(16)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv(ACCESS_KEY_ENV, FAKE_ACCESS_KEY)
            mp.setenv(SECRET_KEY_ENV, FAKE_SECRET_KEY)
            store = S3Store(
                "bucket", endpoint_url=url, access_key_env=ACCESS_KEY_ENV,
                secret_key_env=SECRET_KEY_ENV, **options,
            )  # fmt: skip
        try:
            yield store
        finally:
            store.close()


def test_unreachable_endpoint_fails_fast():
    with dead_endpoint_store(listen=False) as store:
        start = time.monotonic()
        with pytest.raises(StoreConnectionError) as exc_info:
            store.stat("x")
        elapsed = time.monotonic() - start
    assert isinstance(exc_info.value, ConnectionError)
    assert exc_info.value.errno == errno.ECONNREFUSED
    assert "127.0.0.1" in str(exc_info.value)
    assert elapsed < 5, f"took {elapsed:.1f} s"


def test_silent_endpoint_times_out():
    retry = {"max_attempts": 2, "base_delay": 0.05}
    with dead_endpoint_store(listen=True, read_timeout=0.5, retry=retry) as store:
        start = time.monotonic()
        with pytest.raises(StoreTimeoutError) as exc_info:
            store.read_into("x", 0, bytearray(8))
        elapsed = time.monotonic() - start
    assert isinstance(exc_info.value, TimeoutError)
    assert exc_info.value.errno == errno.ETIMEDOUT
    assert elapsed < 5, f"took {elapsed:.1f} s"


class TestEnforcedAuth:
    """moto checks signatures and IAM policies once told to (``/moto-api/reset-auth``)."""

    @pytest.fixture
    def iam_key(self, bucket):
        iam = bucket.iam_client()
        iam.create_user(UserName="reader")
        key = iam.create_access_key(UserName="reader")["AccessKey"]
        return key["AccessKeyId"], key["SecretAccessKey"]

    def open_with(self, server, monkeypatch, access, secret):
        monkeypatch.setenv("SHOAL_TEST_OTHER_KEY", access)
        monkeypatch.setenv("SHOAL_TEST_OTHER_SECRET", secret)
        return open_store(
            f"s3://{BUCKET}",
            endpoint_url=server.endpoint_url,
            region="us-east-1",
            access_key_env="SHOAL_TEST_OTHER_KEY",
            secret_key_env="SHOAL_TEST_OTHER_SECRET",
        )

    def test_unknown_access_key(self, bucket, monkeypatch):
        store = self.open_with(bucket, monkeypatch, "AKIAUNKNOWN000000000", "wrong-secret")
        with bucket.enforcing_auth(), pytest.raises(PermissionError) as exc_info:
            list(store.list())
        assert exc_info.value.errno == errno.EACCES
        assert "InvalidAccessKeyId" in str(exc_info.value)
        assert "wrong-secret" not in str(exc_info.value)
        store.close()

    def test_wrong_secret(self, bucket, monkeypatch, iam_key):
        store = self.open_with(bucket, monkeypatch, iam_key[0], "not-the-secret")
        with bucket.enforcing_auth():
            with pytest.raises(PermissionError, match="SignatureDoesNotMatch"):
                list(store.list())
            with pytest.raises(PermissionError):
                store.stat("anything")
        store.close()

    def test_user_without_policy(self, bucket, monkeypatch, iam_key):
        store = self.open_with(bucket, monkeypatch, *iam_key)
        with bucket.enforcing_auth():
            with pytest.raises(PermissionError, match="AccessDenied"):
                list(store.list())
            with pytest.raises(PermissionError):
                store.write("x", b"data")
        store.close()


# -- credentials by reference -------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "secret_key",
        "aws_secret_access_key",
        "access_key",
        "aws_access_key_id",
        "session_token",
        "password",
        "key",
        "secret",
    ],
)
def test_literal_secrets_rejected(key):
    value = "LITERAL-SECRET-VALUE"
    with pytest.raises(ValueError, match=f"{key}_env") as exc_info:
        open_store("s3://bucket/prefix", **{key: value})
    assert value not in str(exc_info.value)


def test_env_name_that_looks_like_a_value_is_not_echoed():
    value = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
    with pytest.raises(ValueError, match="NAME of an environment variable") as exc_info:
        S3Store("bucket", access_key_env="A", secret_key_env=value)
    assert value not in str(exc_info.value)


def test_unset_env_var_named(monkeypatch):
    monkeypatch.delenv("SHOAL_TEST_UNSET_VAR", raising=False)
    monkeypatch.setenv("SHOAL_TEST_SET_VAR", "x")
    with pytest.raises(ValueError, match="SHOAL_TEST_UNSET_VAR is not set"):
        S3Store(
            "bucket", access_key_env="SHOAL_TEST_SET_VAR", secret_key_env="SHOAL_TEST_UNSET_VAR"
        )


def test_repr_and_errors_hold_no_secret(store):
    text = repr(store)
    assert "s3://shoal-s3/data/" in text and ACCESS_KEY_ENV in text
    assert FAKE_SECRET_KEY not in text and FAKE_ACCESS_KEY not in text
    with pytest.raises(FileNotFoundError) as exc_info:
        store.stat("missing")
    assert FAKE_SECRET_KEY not in str(exc_info.value)


def test_endpoint_with_userinfo_rejected_without_echo():
    with pytest.raises(ValueError, match="must not carry credentials") as exc_info:
        S3Store("bucket", endpoint_url="http://AKIA:SECRETVALUE@127.0.0.1:9000", anonymous=True)
    assert "SECRETVALUE" not in str(exc_info.value)


def test_credentials_file(bucket, tmp_path):
    creds = tmp_path / "credentials"
    creds.write_text(
        "[default]\naws_access_key_id = A\naws_secret_access_key = B\n"
        f"[shoal]\naws_access_key_id = {FAKE_ACCESS_KEY}\n"
        f"aws_secret_access_key = {FAKE_SECRET_KEY}\n"
    )
    common = dict(endpoint_url=bucket.endpoint_url, region="us-east-1")
    with open_store(
        f"s3://{BUCKET}", credentials_file=str(creds), profile="shoal", **common
    ) as store:
        store.write("via-file", b"ok")
        assert store.stat("via-file").size == 2
        assert "file:" in repr(store) and FAKE_SECRET_KEY not in repr(store)
    with pytest.raises(ValueError, match="no credentials for profile 'absent'"):
        open_store(f"s3://{BUCKET}", credentials_file=str(creds), profile="absent", **common)
    with pytest.raises(FileNotFoundError, match="credentials_file"):
        open_store(f"s3://{BUCKET}", credentials_file=str(tmp_path / "nope"), **common)


def test_anonymous_access(bucket):
    client = bucket.client()
    client.put_object(Bucket=BUCKET, Key="public", Body=b"open data", ACL="public-read")
    client.put_object(Bucket=BUCKET, Key="private", Body=b"closed")
    with open_store(
        f"s3://{BUCKET}", endpoint_url=bucket.endpoint_url, region="us-east-1", anonymous=True
    ) as store:
        buf = bytearray(4)
        assert store.read_into("public", 5, buf) == 4 and buf == b"data"
        with pytest.raises(PermissionError):
            store.read_into("private", 0, buf)
        assert "anonymous" in repr(store)


@pytest.mark.parametrize(
    ("opts", "exc", "match"),
    [
        ({"part_size": 1 << 20}, ValueError, "part_size"),
        ({"part_size": "6GiB"}, ValueError, "part_size"),
        ({"part_size": "lots"}, ValueError, "part_size"),
        ({"endpoint_url": "ftp://host"}, ValueError, "endpoint_url"),
        ({"endpoint_url": "http://host:99999"}, ValueError, "port"),
        ({"addressing_style": "sideways"}, ValueError, "addressing_style"),
        ({"connect_timeout": 0}, ValueError, "connect_timeout"),
        ({"read_timeout": "soon"}, TypeError, "read_timeout"),
        ({"max_pool_connections": 0}, ValueError, "max_pool_connections"),
        ({"upload_concurrency": 1.5}, TypeError, "upload_concurrency"),
        ({"region": "us east"}, ValueError, "region"),
        ({"anonymous": "yes"}, TypeError, "anonymous"),
        ({"access_key_env": "A"}, ValueError, "both"),
        ({"anonymous": True, "profile": "p"}, ValueError, "anonymous"),
        ({"retry": {"max_attempts": 0}}, ValueError, "max_attempts"),
        ({"retry": {"attempts": 3}}, TypeError, "attempts"),
        ({"bogus": 1}, TypeError, "unknown option"),
    ],
)
def test_bad_options(opts, exc, match):
    with pytest.raises(exc, match=match):
        S3Store("bucket", **opts)


@pytest.mark.parametrize(
    ("uri", "match"),
    [("s3://", "no bucket"), ("s3:///key", "no bucket"), ("s3://bad bucket/x", "bucket")],
)
def test_bad_uris(uri, match):
    with pytest.raises(ValueError, match=match):
        open_store(uri, anonymous=True)


def test_concurrent_reads_share_one_client(store):
    data = bytes(range(256)) * 4096  # 1 MiB
    store.write("shared", data)
    errors = []

    def reader(seed: int) -> None:
        try:
            for i in range(10):
                offset = (seed * 7919 + i * 104729) % len(data)
                buf = bytearray(4096)
                n = store.read_into("shared", offset, buf)
                assert bytes(buf[:n]) == data[offset : offset + 4096]
        except Exception as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


# -- throttling and server failures, injected by a proxy in front of moto ------------


@pytest.fixture
def proxied(bucket):
    proxies = []

    def make(faults, **extra):
        proxy = FaultyProxy(bucket.endpoint_url, faults)
        proxies.append(proxy)
        store = open_store(
            f"s3://{BUCKET}",
            endpoint_url=proxy.endpoint_url,
            region="us-east-1",
            access_key_env=ACCESS_KEY_ENV,
            secret_key_env=SECRET_KEY_ENV,
            retry={"max_attempts": 4, "base_delay": 0.01, "max_delay": 0.05},
            **extra,
        )
        return proxy, store

    yield make
    for proxy in proxies:
        proxy.close()


def test_throttled_reads_are_retried(bucket, proxied):
    bucket.client().put_object(Bucket=BUCKET, Key="obj", Body=b"0123456789")
    proxy, store = proxied([("GET /shoal-s3/obj", 503, "SlowDown")] * 2)
    buf = bytearray(4)
    assert store.read_into("obj", 3, buf) == 4 and buf == b"3456"
    assert sum(line.startswith("GET /shoal-s3/obj") for line in proxy.seen) == 3


def test_server_errors_give_up_after_max_attempts(bucket, proxied):
    proxy, store = proxied([("HEAD /shoal-s3/obj", 500, "InternalError")] * 10)
    with pytest.raises(StoreServerError) as exc_info:
        store.stat("obj")
    assert exc_info.value.errno == errno.EIO
    assert sum(line.startswith("HEAD") for line in proxy.seen) == 4


def test_a_throttled_part_is_sent_again(bucket, proxied):
    proxy, store = proxied([("partNumber=2", 503, "SlowDown")], part_size="5MiB")
    data = bytes(range(256)) * (11 * MiB // 256)
    info = store.write("multi", data)
    assert info.version.endswith("-3") and info.size == len(data)
    assert sum("partNumber=2" in line for line in proxy.seen) == 2
    out = bytearray(len(data))
    assert store.read_into("multi", 0, out) == len(data) and out == data


def test_whole_object_read_asks_for_no_range(bucket, proxied):
    bucket.client().put_object(Bucket=BUCKET, Key="obj", Body=b"0123456789")
    proxy, store = proxied([])
    info = store.stat("obj")
    buf = bytearray(10)
    assert store.read_into("obj", 0, buf, version=info.version, size=10) == 10
    assert buf == b"0123456789"
    assert store.read_into("obj", 2, buf, version=info.version, size=10) == 8
    assert store.read_into("obj", 0, bytearray(4), version=info.version, size=10) == 4
    gets = [r for line, r in zip(proxy.seen, proxy.ranges, strict=True) if line.startswith("GET")]
    assert gets == [None, "bytes=2-11", "bytes=0-3"]
    # a size that is not the object's: the object changed under the caller
    with pytest.raises(ObjectChangedError, match="10 bytes, expected 6"):
        store.read_into("obj", 0, bytearray(6), size=6)


def test_reads_go_out_as_presigned_gets(bucket, proxied):
    bucket.client().put_object(Bucket=BUCKET, Key="obj", Body=b"0123456789")
    proxy, store = proxied([])
    buf = bytearray(4)
    assert store.read_into("obj", 2, buf) == 4 and buf == b"2345"
    assert store.read_into("obj", 8, buf) == 2 and buf[:2] == b"89"
    gets = [line for line in proxy.seen if line.startswith("GET /shoal-s3/obj")]
    assert len(gets) == 2 and all("X-Amz-Signature=" in line for line in gets), gets
    store.close()


def test_with_a_proxy_in_the_environment_reads_go_through_the_client(bucket, proxied, monkeypatch):
    # botocore honours proxy settings, urllib3 alone would not: the client reads then.
    monkeypatch.setenv("HTTP_PROXY", "http://192.0.2.1:9")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    bucket.client().put_object(Bucket=BUCKET, Key="obj", Body=b"0123456789")
    proxy, store = proxied([])
    assert store._gets is None
    buf = bytearray(10)
    assert store.read_into("obj", 0, buf) == 10 and buf == b"0123456789"
    gets = [line for line in proxy.seen if line.startswith("GET /shoal-s3/obj")]
    assert len(gets) == 1 and "X-Amz-Signature=" not in gets[0], gets
    store.close()


def test_an_expired_url_is_signed_again(bucket, proxied):
    bucket.client().put_object(Bucket=BUCKET, Key="obj", Body=b"0123456789")
    fault = ("GET /shoal-s3/obj", 403, "AccessDenied", "Request has expired")
    proxy, store = proxied([fault])
    buf = bytearray(10)
    assert store.read_into("obj", 0, buf) == 10 and buf == b"0123456789"
    assert sum(line.startswith("GET /shoal-s3/obj") for line in proxy.seen) == 2
    store.close()


@pytest.mark.parametrize(
    ("status", "code", "exc", "match"),
    [
        (403, "AccessDenied", PermissionError, "AccessDenied"),
        (404, "NoSuchKey", FileNotFoundError, "NoSuchKey"),
        (404, "NoSuchBucket", FileNotFoundError, "bucket 'shoal-s3' does not exist"),
        (412, "PreconditionFailed", ObjectChangedError, "changed"),
        (500, "InternalError", StoreServerError, "InternalError"),
        (400, "InvalidArgument", OSError, "InvalidArgument"),
    ],
)
def test_read_errors_are_mapped_as_the_client_maps_them(bucket, proxied, status, code, exc, match):
    bucket.client().put_object(Bucket=BUCKET, Key="obj", Body=b"0123456789")
    proxy, store = proxied([("GET /shoal-s3/obj", status, code)] * 4)
    with pytest.raises(exc, match=match) as info:
        store.read_into("obj", 0, bytearray(4))
    assert "s3://shoal-s3/obj" in str(info.value)
    store.close()


def test_read_from_an_unreachable_endpoint_is_refused_fast():
    retry = {"max_attempts": 2, "base_delay": 0.01}
    with dead_endpoint_store(listen=False, retry=retry) as store:
        start = time.monotonic()
        with pytest.raises(StoreConnectionError) as info:
            store.read_into("x", 0, bytearray(8))
        assert time.monotonic() - start < 5
    assert info.value.errno == errno.ECONNREFUSED


# -- request counts, fetch_into and list_dir against what the server sees ------------

KINDS = ("GET", "HEAD", "LIST", "PUT", "POST", "DELETE")


def tally(seen: list[str]) -> dict[str, int]:
    """The requests a proxy saw, by the kinds a store counts."""
    kinds = dict.fromkeys(KINDS, 0)
    for line in seen:
        method, _, target = line.partition(" ")
        query = target.partition("?")[2]
        kinds["LIST" if method == "GET" and "list-type=2" in query else method] += 1
    return kinds


def spent(store, before: dict[str, int]) -> dict[str, int]:
    return {k: n - before[k] for k, n in store.requests().items() if n != before[k]}


def gets(proxy) -> list[str | None]:
    """The Range header of each object GET the proxy saw."""
    return [
        r
        for line, r in zip(proxy.seen, proxy.ranges, strict=True)
        if line.startswith("GET /shoal-s3/") and "list-type" not in line
    ]


def test_counts_are_the_requests_the_server_saw(bucket, proxied):
    proxy, store = proxied(
        [
            ("GET /shoal-s3/obj?", 503, "SlowDown"),  # a retried read: two GETs
            ("partNumber=2", 503, "SlowDown"),  # a retried part: two PUTs
            ("HEAD /shoal-s3/obj", 500, "InternalError"),  # a retried stat: two HEADs
            ("GET /shoal-s3/obj?", 403, "AccessDenied", "Request has expired"),  # signed again
        ],
        part_size="5MiB",
    )
    store.write("obj", b"0123456789")
    store.write("dir/big", bytes(11 * MiB))  # 3 parts
    store.write("dir/sub/x", b"x")
    store.read_into("obj", 2, bytearray(4))
    store.stat("obj")
    with pytest.raises(FileNotFoundError):
        store.stat("missing")  # a HEAD, then a LIST: is it a directory?
    assert len(list(store.list())) == 3
    assert [o.path for o in store.list_dir("dir")] == ["dir/big", "dir/sub"]
    store.read_into("obj", 0, bytearray(10))
    store.fetch_into("obj", 0, bytearray(100))
    store.fetch_into("obj", 10, bytearray(100))
    store.delete("dir/sub/x")
    with pytest.raises(OSError, match="source device failed"):
        store.write("broken", FailingReader(11 * MiB))  # started, one part, aborted
    counted = store.requests()
    assert counted == tally(proxy.seen)
    # GET: the read 3 (throttled, expired), 1 whole, 2 fetches (the second refused)
    # HEAD: 3 after writes + 1 retried, 2 stats, 1 after the refused range, 1 by delete
    # PUT: 2 objects, 3 parts + 1 retried, 2 parts of the aborted upload
    assert counted == {"GET": 6, "HEAD": 8, "LIST": 3, "PUT": 8, "POST": 3, "DELETE": 2}


def test_cold_fetch_of_a_small_object_is_one_get(bucket, proxied):
    bucket.client().put_object(Bucket=BUCKET, Key="obj", Body=b"0123456789")
    proxy, store = proxied([])
    buf = bytearray(64 << 10)  # a page: larger than the object
    n, info = store.fetch_into("obj", 0, buf)
    assert n == 10 and buf[:10] == b"0123456789"
    assert store.requests() == {"GET": 1, "HEAD": 0, "LIST": 0, "PUT": 0, "POST": 0, "DELETE": 0}
    assert gets(proxy) == [f"bytes=0-{len(buf) - 1}"]
    assert info == store.stat("obj")  # ETag, size and Last-Modified as a HEAD tells them


def test_fetch_of_an_empty_object_is_two_gets(bucket, proxied):
    bucket.client().put_object(Bucket=BUCKET, Key="empty", Body=b"")
    proxy, store = proxied([])
    assert store.fetch_into("empty", 0, bytearray(8)) == (0, store.stat("empty"))
    assert gets(proxy) == ["bytes=0-7", None]  # the range refused (416), then no range
    assert tally(proxy.seen)["HEAD"] == 1  # the stat of the check, not the fetch's


def test_fetch_when_the_object_was_rewritten_after_a_refused_range(bucket, proxied):
    # The 416 said "empty", the GET without a range finds the object grown: its bytes and
    # metadata come from that one answer, the part that does not fit left unread.
    bucket.client().put_object(Bucket=BUCKET, Key="obj", Body=b"0123456789")
    proxy, store = proxied([("GET /shoal-s3/obj?", 416, "InvalidRange")])
    buf = bytearray(4)
    assert store.fetch_into("obj", 0, buf) == (4, store.stat("obj")) and buf == b"0123"
    assert gets(proxy) == ["bytes=0-3", None]
    # the connection left with unread bytes was not reused: the next fetch is whole
    assert store.fetch_into("obj", 6, buf)[0] == 4 and buf == b"6789"


def test_fetch_reads_again_when_the_object_grew_past_the_offset(bucket, proxied):
    bucket.client().put_object(Bucket=BUCKET, Key="obj", Body=b"0123456789")
    proxy, store = proxied([("GET /shoal-s3/obj?", 416, "InvalidRange")])
    buf = bytearray(4)
    assert store.fetch_into("obj", 5, buf) == (4, store.stat("obj")) and buf == b"5678"
    assert gets(proxy) == ["bytes=5-8", "bytes=5-8"]
    assert sum(line.startswith("HEAD") for line in proxy.seen) == 2  # the fetch's, the test's


def test_fetch_gives_up_on_an_object_that_keeps_changing(bucket, proxied):
    bucket.client().put_object(Bucket=BUCKET, Key="obj", Body=b"0123456789")
    proxy, store = proxied([("GET /shoal-s3/obj?", 416, "InvalidRange")] * 3)
    with pytest.raises(ObjectChangedError, match="kept changing"):
        store.fetch_into("obj", 5, bytearray(4))
    assert tally(proxy.seen) == {"GET": 3, "HEAD": 3, "LIST": 0, "PUT": 0, "POST": 0, "DELETE": 0}


def test_fetch_past_the_end_checks_the_version_a_416_did_not(bucket, proxied):
    # A server may refuse the range before it looks at If-Match: the HEAD's ETag tells.
    bucket.client().put_object(Bucket=BUCKET, Key="obj", Body=b"0123456789")
    proxy, store = proxied([("GET /shoal-s3/obj?", 416, "InvalidRange")])
    with pytest.raises(ObjectChangedError, match="expected stale"):
        store.fetch_into("obj", 20, bytearray(4), version="stale")
    assert spent(store, dict.fromkeys(KINDS, 0)) == {"GET": 1, "HEAD": 1}


def test_fetch_is_retried_and_every_attempt_counted(bucket, proxied):
    bucket.client().put_object(Bucket=BUCKET, Key="obj", Body=b"0123456789")
    proxy, store = proxied([("GET /shoal-s3/obj?", 503, "SlowDown")] * 2)
    buf = bytearray(10)
    assert store.fetch_into("obj", 0, buf)[0] == 10 and buf == b"0123456789"
    assert store.requests()["GET"] == 3 == tally(proxy.seen)["GET"]


@pytest.mark.parametrize(
    ("status", "code", "exc"),
    [
        (404, "NoSuchKey", FileNotFoundError),
        (404, "NoSuchBucket", FileNotFoundError),
        (403, "AccessDenied", PermissionError),
        (412, "PreconditionFailed", ObjectChangedError),
    ],
)
def test_fetch_errors_are_mapped_as_reads_are(bucket, proxied, status, code, exc):
    bucket.client().put_object(Bucket=BUCKET, Key="obj", Body=b"0123456789")
    proxy, store = proxied([("GET /shoal-s3/obj?", status, code)])
    with pytest.raises(exc) as info:
        store.fetch_into("obj", 0, bytearray(4))
    assert "s3://shoal-s3/obj" in str(info.value)
    assert info.value.__cause__ is not None


@pytest.mark.parametrize("via", ["presigned", "client"])
def test_ranged_reads_of_one_version_never_mix(bucket, proxied, monkeypatch, via):
    if via == "client":
        monkeypatch.setenv("HTTP_PROXY", "http://192.0.2.1:9")
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    proxy, store = proxied([])
    assert (store._gets is None) == (via == "client")
    old = store.write("obj", b"a" * 8192)
    buf = bytearray(4096)
    before = store.requests()
    assert store.read_into("obj", 0, buf, version=old.version) == 4096 and buf == b"a" * 4096
    n, info = store.fetch_into("obj", 0, buf, version=old.version)
    assert (n, info.version) == (4096, old.version)
    store.write("obj", b"b" * 8192)  # same size, between two reads of one version
    with pytest.raises(ObjectChangedError):
        store.read_into("obj", 4096, buf, version=old.version)
    with pytest.raises(ObjectChangedError):
        store.fetch_into("obj", 4096, buf, version=old.version)
    assert buf == b"a" * 4096  # nothing of the new version written into it
    # The version travels as If-Match on the GET itself: no HEAD is spent on it.
    assert spent(store, before) == {"GET": 4, "PUT": 1, "HEAD": 1}


@pytest.mark.parametrize(
    ("name", "content", "offset", "length", "expected", "cost"),
    [
        ("small", b"0123456789", 0, 100, 10, {"GET": 1}),
        ("small", b"0123456789", 3, 4, 4, {"GET": 1}),
        ("small", b"0123456789", 10, 4, 0, {"GET": 1, "HEAD": 1}),
        ("empty", b"", 0, 8, 0, {"GET": 2}),
        ("empty", b"", 0, 0, 0, {"HEAD": 1}),
    ],
)
def test_fetch_through_the_client(
    bucket, proxied, monkeypatch, name, content, offset, length, expected, cost
):
    # With a proxy in the environment reads go through the boto3 client: same answers.
    monkeypatch.setenv("HTTP_PROXY", "http://192.0.2.1:9")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    bucket.client().put_object(Bucket=BUCKET, Key=name, Body=content)
    proxy, store = proxied([])
    assert store._gets is None
    buf = bytearray(length)
    n, info = store.fetch_into(name, offset, buf)
    assert n == expected and bytes(buf[:n]) == content[offset : offset + length]
    assert store.requests() == {**dict.fromkeys(KINDS, 0), **cost} == tally(proxy.seen)
    assert info == store.stat(name)
    assert all("X-Amz-Signature=" not in line for line in proxy.seen)
    store.close()


@pytest.mark.slow
def test_list_dir_of_2500_objects_is_three_lists(bucket):
    from concurrent.futures import ThreadPoolExecutor

    client = bucket.client()
    keys = [f"data/big/{i:05d}" for i in range(2490)]
    keys += [f"data/big/sub{i}/x" for i in range(10)]  # directories count as entries
    keys += ["data/big/sub0/y", "data/big-sibling", "data/other/z"]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: client.put_object(Bucket=BUCKET, Key=k, Body=b""), keys))
    with open_store(f"s3://{BUCKET}/data", **options(bucket)) as store:
        listed = store.list_dir("big")
        assert store.requests() == {**dict.fromkeys(KINDS, 0), "LIST": 3}
        assert len(listed) == 2500
        assert [o.path for o in listed if o.is_dir] == [f"big/sub{i}" for i in range(10)]
        assert [o.path for o in listed] == sorted(o.path for o in listed)
        assert listed[0] == store.stat("big/00000")
        assert [(o.path, o.is_dir) for o in store.list_dir("")] == [
            ("big", True),
            ("big-sibling", False),
            ("other", True),
        ]


def test_list_dir_skips_what_no_path_names(store, bucket):
    client = bucket.client()
    for key in ["data/d/", "data/d/ok", "data/d//b", "data/d/sub/", "data/d/../x"]:
        client.put_object(Bucket=BUCKET, Key=key, Body=b"")
    # the "d/" and "d/sub/" folder markers, "d//b" and "d/.." name no path
    assert [(o.path, o.is_dir) for o in store.list_dir("d")] == [("d/ok", False), ("d/sub", True)]


def test_list_dir_of_a_missing_bucket(bucket):
    with (
        open_store("s3://no-such-bucket/x", **options(bucket)) as store,
        pytest.raises(FileNotFoundError, match="no-such-bucket"),
    ):
        store.list_dir("")


def test_read_errors_hold_no_signed_url():
    # The read times out with the presigned URL in flight.
    with dead_endpoint_store(listen=True, read_timeout=0.3, retry={"max_attempts": 1}) as store:
        for call in (
            lambda: store.read_into("x", 0, bytearray(8)),
            lambda: store.fetch_into("x", 0, bytearray(8)),
        ):
            with pytest.raises(StoreTimeoutError) as exc_info:
                call()
            chain = [exc_info.value, exc_info.value.__cause__]
            for text in [str(e) for e in chain] + [repr(e) for e in chain]:
                assert "X-Amz-" not in text and FAKE_ACCESS_KEY not in text, text
