"""No message of an under-store repeats a secret: not one passed where the name of an
environment variable belongs, nor one inside a URI (``s3://KEY:SECRET@bucket``), nor the
signature of a presigned URL."""

from __future__ import annotations

import pytest

from shoal.control.ufs import FsspecStore, S3Store, open_store
from shoal.control.ufs._options import check_env_name, has_password, looks_like_key, redact_uri

KEY_ID = "AKIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
TOKEN = "ghp_16C7e42F292c6912E7710c838347Ae178B4a"


def refused(call, exc=ValueError) -> str:
    """The text of the error ``call()`` raises, with its chain."""
    with pytest.raises(exc) as exc_info:
        call()
    err = exc_info.value
    return " | ".join(str(e) for e in (err, err.__cause__, err.__context__) if e is not None)


@pytest.mark.parametrize(
    "call",
    [
        # a key where the NAME of its variable belongs
        lambda: S3Store("bucket", access_key_env=KEY_ID, secret_key_env="SHOAL_S"),
        lambda: S3Store("bucket", access_key_env="SHOAL_A", secret_key_env=SECRET),
        lambda: S3Store("bucket", access_key_env="A", secret_key_env="B", session_token_env=TOKEN),
        lambda: S3Store("bucket", access_key_env=f"{KEY_ID}:{SECRET}", secret_key_env="B"),
        lambda: open_store("memory://x", token_env=TOKEN),
        lambda: open_store("memory://x", token_env=KEY_ID),
        # a key where a name belongs
        lambda: S3Store("bucket", profile=KEY_ID),
        lambda: S3Store("bucket", region=SECRET),
        # keys in URIs
        lambda: open_store(f"s3://{KEY_ID}:{SECRET}@bucket/prefix"),
        lambda: open_store(f"s3://{KEY_ID}@bucket/prefix"),
        lambda: S3Store.from_uri(f"s3://{KEY_ID}:{SECRET}@bucket/prefix"),
        lambda: S3Store.from_uri(f"s3://{TOKEN}@bucket/prefix"),
        lambda: S3Store(f"{KEY_ID}:{SECRET}@bucket"),
        lambda: open_store(f"{KEY_ID}:{SECRET}@bucket/prefix"),
        lambda: open_store(f"s3:{KEY_ID}:{SECRET}@bucket"),
        lambda: open_store(f"file://{KEY_ID}:{SECRET}@host/data"),
        lambda: open_store(f"ftp://user:{SECRET}@host/data"),
        lambda: open_store(f"sftp://{KEY_ID}:{TOKEN}@host/data"),
        lambda: open_store(f"memory://{KEY_ID}:{TOKEN}@x\0y"),
        lambda: FsspecStore(f"{KEY_ID}:{SECRET}@nowhere"),
        # keys in endpoints
        lambda: S3Store("bucket", endpoint_url=f"{KEY_ID}:{SECRET}@127.0.0.1:9000"),
        lambda: S3Store("bucket", endpoint_url=f"http://{KEY_ID}:{SECRET}@127.0.0.1:9000"),
        lambda: S3Store("bucket", endpoint_url=f"http://{KEY_ID}@127.0.0.1:9000"),
        lambda: S3Store("bucket", endpoint_url=f"http://127.0.0.1:9000/?X-Amz-Credential={KEY_ID}"),
        lambda: S3Store("bucket", endpoint_url=f"http://127.0.0.1:9000/#{SECRET}"),
        lambda: S3Store("bucket", endpoint_url=f"ftp://127.0.0.1/?token={TOKEN}"),
    ],
)
def test_refusals_do_not_repeat_the_secret(call):
    text = refused(call)
    for secret in (KEY_ID, SECRET, TOKEN, SECRET.split("/")[0], SECRET.split("/")[1]):
        assert secret not in text, text


def test_refusals_still_say_what_is_wrong():
    assert "access_key_env" in refused(
        lambda: S3Store("bucket", access_key_env=KEY_ID, secret_key_env="SHOAL_S")
    )
    assert "profile" in refused(lambda: S3Store("bucket", profile=KEY_ID))
    assert "region" in refused(lambda: S3Store("bucket", region=SECRET))
    text = refused(lambda: open_store(f"s3://{KEY_ID}:{SECRET}@bucket/prefix"))
    assert "password" in text and "s3://***@bucket/prefix" in text
    text = refused(lambda: S3Store.from_uri(f"s3://{TOKEN}@bucket/prefix"))
    assert "s3://***@bucket/prefix" in text and "bucket" in text
    text = refused(lambda: S3Store("bucket", endpoint_url="http://127.0.0.1:9000/?sig=x"))
    assert "'http://127.0.0.1:9000/?***'" in text


def test_a_store_shows_its_uri_without_userinfo():
    store = FsspecStore(f"memory://{TOKEN}@shoal-secrets-test/root")
    assert store.uri == "memory://***@shoal-secrets-test/root"
    assert TOKEN not in repr(store)
    with pytest.raises(FileNotFoundError) as exc_info:
        store.stat("missing")
    assert exc_info.value.filename == "memory://***@shoal-secrets-test/root/missing"


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("s3://bucket/prefix", "s3://bucket/prefix"),
        ("s3://KEY:SECRET@bucket/prefix", "s3://***@bucket/prefix"),
        ("s3://KEY:SE/CRET@bucket/prefix", "s3://***@bucket/prefix"),
        ("sftp://user@host:22/data", "sftp://***@host:22/data"),
        ("http://host/path?X-Amz-Signature=abc#frag", "http://host/path?***"),
        ("http://host/path#frag?x", "http://host/path#***"),
        ("KEY:SECRET@bucket", "***@bucket"),
        ("file:///data/dir", "file:///data/dir"),
        ("/abs/path", "/abs/path"),
        ("", ""),
    ],
)
def test_redact_uri(uri, shown):
    assert redact_uri(uri) == shown


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://KEY:SECRET@bucket", True),
        ("s3://KEY:SE/CRET@bucket/prefix", True),
        ("ftp://user:pass@host:21/data", True),
        ("sftp://user@host:22/data", False),
        ("http://host:8080/user@example.com/file", False),
        ("s3://bucket/a:b@c", False),
        ("s3://bucket/prefix", False),
        ("http://host/?q=a:b@c", False),
        ("/abs/path", False),
    ],
)
def test_has_password(uri, expected):
    assert has_password(uri) is expected


@pytest.mark.parametrize(
    ("value", "is_key"),
    [
        (KEY_ID, True),
        (TOKEN, True),
        ("GOOG1EABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", True),
        ("AWS_SECRET_ACCESS_KEY", False),
        ("SHOAL_TEST_S3_ACCESS_KEY", False),
        ("MY_VERY_LONG_VARIABLE_NAME_WITHOUT_DIGITS", False),
        ("PROFILE2024", False),
        ("prod-eu-west-1", False),
    ],
)
def test_keys_are_told_from_names(value, is_key):
    assert looks_like_key(value) is is_key
    if is_key and value.replace("_", "").isalnum():
        with pytest.raises(ValueError, match="looks like a key"):
            check_env_name(value, "token_env")
    elif not is_key and value.replace("_", "").isalnum():
        assert check_env_name(value, "token_env") == value
