"""FsspecStore: options reach the fsspec filesystem, secrets only by reference."""

from __future__ import annotations

import datetime
import io
import uuid

import pytest

from shoal.control.ufs import FsspecStore, open_store
from shoal.control.ufs._fsspec import _mtime_ns


def memory_uri() -> str:
    return f"memory://fsspec-unit-{uuid.uuid4().hex}"


def test_env_options_are_resolved(monkeypatch):
    monkeypatch.setenv("SHOAL_TEST_FS_TOKEN", "token-value-from-env")
    store = open_store(memory_uri(), token_env="SHOAL_TEST_FS_TOKEN", use_cache=False)
    assert store.fs.storage_options["token"] == "token-value-from-env"
    assert store.fs.storage_options["use_cache"] is False
    assert "token-value-from-env" not in repr(store)
    assert "token_env" in repr(store)


@pytest.mark.parametrize("key", ["token", "password", "secret", "account_key", "sas_token"])
def test_literal_secrets_rejected(key):
    with pytest.raises(ValueError, match=f"'{key}_env'") as exc_info:
        open_store(memory_uri(), **{key: "LITERAL-VALUE"})
    assert "LITERAL-VALUE" not in str(exc_info.value)


def test_nested_literal_secret_rejected():
    with pytest.raises(ValueError, match="client_kwargs"):
        open_store(memory_uri(), client_kwargs={"aws_secret_access_key": "LITERAL"})


def test_env_option_checks(monkeypatch):
    monkeypatch.delenv("SHOAL_TEST_FS_UNSET", raising=False)
    with pytest.raises(ValueError, match="SHOAL_TEST_FS_UNSET is not set"):
        open_store(memory_uri(), token_env="SHOAL_TEST_FS_UNSET")
    with pytest.raises(ValueError, match="NAME of an environment variable"):
        open_store(memory_uri(), token_env="not a name/=")


def test_needs_a_uri():
    with pytest.raises(ValueError, match="protocol://path"):
        FsspecStore("/just/a/path")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1.5, 1_500_000_000),
        (1_700_000_000.123456, 1_700_000_000_123_456_000),
        (datetime.datetime(1970, 1, 1, 0, 0, 1, 250, tzinfo=datetime.timezone.utc), 1_000_250_000),
        (datetime.datetime(1970, 1, 1, 0, 0, 2), 2_000_000_000),
        ("1970-01-01T00:00:03Z", 3_000_000_000),
        ("yesterday", None),
        (None, None),
        (True, None),
    ],
)
def test_times_in_any_form(value, expected):
    assert _mtime_ns(value) == expected


def test_float_and_datetime_forms_agree():
    moment = datetime.datetime(2026, 5, 4, 3, 2, 1, 123457, tzinfo=datetime.timezone.utc)
    assert _mtime_ns(moment) == _mtime_ns(moment.timestamp())


def test_large_stream_write_is_spooled():
    store = open_store(memory_uri())
    data = bytes(range(256)) * (5 * 4096 + 7)  # larger than one 4 MiB copy chunk
    info = store.write("big", io.BytesIO(data))
    assert info.size == len(data)
    buf = bytearray(len(data))
    assert store.read_into("big", 0, buf) == len(data) and buf == data
