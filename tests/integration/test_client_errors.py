"""Bad input gives a clear error of the right class: paths, mounts, stores, buffers."""

from __future__ import annotations

import errno
import os
import socket
import tempfile

import pytest

WRONG_ACCESS_ENV = "SHOAL_TEST_WRONG_ACCESS_KEY"  # set by conftest.shoal_environment
WRONG_SECRET_ENV = "SHOAL_TEST_WRONG_SECRET_KEY"


@pytest.fixture(scope="module")
def s3(shared):
    client, bucket, _ = shared
    bucket.put("dir/file", b"content")
    return client, bucket


@pytest.mark.parametrize(
    ("path", "exc", "match"),
    [
        ("/s3/dir/missing", FileNotFoundError, "missing"),
        ("/nowhere/file", FileNotFoundError, "not under any mount"),
        ("/s3/../etc/passwd", ValueError, r"must not contain '\.\.'"),
        ("/s3/dir/../../x", ValueError, r"'\.\.'"),
        ("s3/dir/file", ValueError, "absolute"),
        ("", ValueError, "absolute"),
        ("/s3/dir/fi\0le", ValueError, "NUL"),
        (b"/s3/dir/file", ValueError, "must be a str"),
    ],
)
def test_bad_paths(s3, path, exc, match):
    client, _ = s3
    with pytest.raises(exc, match=match):
        client.read_into(bytearray(10), path)
    with pytest.raises(exc, match=match):
        client.stat(path)


def test_missing_object_error_details(s3):
    client, bucket = s3
    with pytest.raises(FileNotFoundError) as info:
        client.read_into(bytearray(10), "/s3/dir/missing")
    assert info.value.errno == errno.ENOENT
    assert bucket.name in str(info.value)
    with pytest.raises(FileNotFoundError):
        client.open("/s3/dir/missing")
    with pytest.raises(FileNotFoundError):
        client.ls("/s3/no-such-dir")
    with pytest.raises(FileNotFoundError, match="not under any mount") as info:
        client.ls("/nowhere")
    assert info.value.errno == errno.ENOENT and info.value.filename == "/nowhere"


def test_directory_is_not_a_file(s3):
    client, _ = s3
    with pytest.raises(IsADirectoryError):
        client.read_into(bytearray(10), "/s3/dir")
    with pytest.raises(IsADirectoryError):
        client.open("/s3")


@pytest.mark.parametrize(
    ("offset", "exc", "match"),
    [
        (-1, ValueError, "offset must be >= 0"),
        (1.5, TypeError, "offset must be an int"),
        (True, TypeError, "offset must be an int"),
    ],  # fmt: skip
)
def test_bad_offsets(s3, offset, exc, match):
    client, _ = s3
    with pytest.raises(exc, match=match):
        client.read_into(bytearray(10), "/s3/dir/file", offset)


@pytest.mark.parametrize(
    ("buf", "exc", "match"),
    [
        (b"read-only bytes", TypeError, "read-only"),
        (memoryview(bytearray(10)).toreadonly(), TypeError, "read-only"),
        ("text", TypeError, "not a buffer"),
        (None, TypeError, "not a buffer"),
        (memoryview(bytearray(20))[::2], ValueError, "not C-contiguous"),
    ],
)
def test_bad_buffers(s3, buf, exc, match):
    client, _ = s3
    with pytest.raises(exc, match=match):
        client.read_into(buf, "/s3/dir/file")


def test_bad_batch_items(s3):
    client, _ = s3
    with pytest.raises(ValueError, match="expected"):
        client.read_many_into([(bytearray(1),)])
    with pytest.raises(ValueError, match="expected"):
        client.read_many_into(["not a tuple"])
    with pytest.raises(FileNotFoundError):
        client.read_many_into([(bytearray(7), "/s3/dir/file"), (bytearray(1), "/s3/nope")])


@pytest.mark.parametrize(
    ("uri", "options", "exc", "match"),
    [
        ("relative/dir", {}, ValueError, "neither an absolute path nor a URI"),
        ("nosuchscheme://x/y", {}, PermissionError, "allowed_mounts"),
        ("/no/such/directory", {}, PermissionError, "allowed_mounts"),
        (os.path.join(tempfile.gettempdir(), "shoal-none-here"), {}, FileNotFoundError, "exist"),
        ("s3://", {}, ValueError, "no bucket"),
        ("s3://bucket", {"secret_key": "literal"}, ValueError, "would hold a secret"),
        ("s3://bucket", {"no_such_option": 1}, ValueError, "'no_such_option' is not one"),
        ("s3://bucket", {"endpoint_url": "ftp://x"}, ValueError, "endpoint_url"),
        ("s3://bucket", {"metadata_ttl": -1}, ValueError, "metadata_ttl"),
        ("s3://bucket", {"read_ahead": "many"}, ValueError, "read_ahead"),
        ("", {}, ValueError, "non-empty"),
    ],
)
def test_bad_mounts(s3, uri, options, exc, match):
    client, _ = s3
    with pytest.raises(exc, match=match):
        client.mount("/bad", uri, **options)
    assert "/bad" not in [m.path for m in client.mounts()]


def test_bad_mount_points(s3, tmp_path):
    client, _ = s3
    with pytest.raises(ValueError, match="absolute"):
        client.mount("relative", str(tmp_path))
    with pytest.raises(ValueError, match=r"'\.\.'"):
        client.mount("/a/../b", str(tmp_path))
    with pytest.raises(FileExistsError, match="already a mount point"):
        client.mount("/s3", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="not a mount point"):
        client.unmount("/never-mounted")


def test_missing_bucket(s3):
    client, bucket = s3
    with pytest.raises(FileNotFoundError, match="does not exist"):
        client.mount("/gone", "s3://no-such-bucket-here", **bucket.options())


def test_unreachable_endpoint(s3):
    client, bucket = s3
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    options = bucket.options(endpoint_url=f"http://127.0.0.1:{port}", retry={"max_attempts": 1})
    with pytest.raises(ConnectionError) as info:
        client.mount("/down", f"s3://{bucket.name}", **options)
    assert info.value.errno == errno.ECONNREFUSED
    assert f"127.0.0.1:{port}" in str(info.value)


def test_wrong_credentials(s3, moto_server):
    client, bucket = s3
    options = bucket.options(
        access_key_env=WRONG_ACCESS_ENV, secret_key_env=WRONG_SECRET_ENV, retry={"max_attempts": 1}
    )
    with moto_server.enforcing_auth(), pytest.raises(PermissionError) as info:
        client.mount("/denied", f"s3://{bucket.name}", **options)
    assert info.value.errno == errno.EACCES
    assert "InvalidAccessKeyId" in str(info.value)
    assert "not-the-secret" not in str(info.value)


def test_credentials_variable_not_set(s3):
    client, bucket = s3
    options = bucket.options(access_key_env="SHOAL_TEST_UNSET_VARIABLE")
    with pytest.raises(ValueError, match="SHOAL_TEST_UNSET_VARIABLE is not set"):
        client.mount("/unset", f"s3://{bucket.name}", **options)


def test_gpu_destination_is_refused(s3):
    client, _ = s3

    class FakeDeviceArray:  # stands in for a CUDA array: no GPU here
        __cuda_array_interface__ = {"shape": (10,), "typestr": "|u1", "data": (0, False)}

    with pytest.raises(TypeError, match="GPU buffer; Client reads into host memory"):
        client.read_into(FakeDeviceArray(), "/s3/dir/file")


def test_local_mount_errors_name_the_shoal_path_and_empty_dirs_exist(client, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_bytes(b"x")
    client.mount("/loc", tmp_path.as_uri())
    assert client.ls("/loc/empty") == []  # a real directory, though nothing is under it
    assert client.stat("/loc/empty").is_dir
    with pytest.raises(FileNotFoundError) as info:
        client.stat("/loc/no/such.bin")
    assert info.value.filename == "/loc/no/such.bin" and "/loc/no/such.bin" in str(info.value)
    with pytest.raises(FileNotFoundError) as info:
        client.read_into(bytearray(4), "/loc/full/missing")
    assert info.value.filename == "/loc/full/missing"
    with pytest.raises(FileNotFoundError):
        client.ls("/loc/nothing-here")
