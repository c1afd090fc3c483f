"""Mounts an operator allows, against a real worker daemon and the moto S3 server: each
attack a client allowed to mount could make (read the worker's files, make it fetch
internal URLs, make it send one of its environment variables to a server of the
attacker's, store a literal secret in the mount table) is refused before any request
leaves the worker, and no error, listing or log line repeats the refused value."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
import yaml
from conftest import TEST_ALLOWED_MOUNTS, shoal_environment, stop_worker
from s3server import FAKE_ACCESS_KEY, FAKE_SECRET_KEY

from shoal._config import DEFAULT_ALLOWED_MOUNTS, DEFAULT_CREDENTIAL_ENV, load_config
from shoal.cli._main import main
from shoal.client import Client
from shoal.control._daemon import LOG_FILE
from shoal.control._metastore import LocalMetaStore
from shoal.control._namespace import MountTable

#: The worker's defaults, as a fresh install has them.
DEFAULTS = {
    "allowed_mounts": list(DEFAULT_ALLOWED_MOUNTS),
    "credential_env": list(DEFAULT_CREDENTIAL_ENV),
}
#: A variable of the worker's that no mount may name, and its value.
PRIVATE_ENV = "SHOAL_TEST_DB_PASSWORD"
PRIVATE = "db-password-Zq81wX4vT7"
#: A literal secret as a client might paste it into an option no filter knew.
LITERAL = "AccountKey=c2VjcmV0LXZhbHVlLTQy+Zz9/Qq=="
BEARER = "Bearer eyJhbGciOiJub25lIn0.c2hvYWwtdGVzdA"
#: Names of the moto credentials that the default credential_env (AWS_*) admits.
AWS_ACCESS_ENV = "AWS_SHOAL_TEST_ACCESS_KEY"
AWS_SECRET_ENV = "AWS_SHOAL_TEST_SECRET_KEY"


class Listener:
    """A TCP server of the test's own: records every connection and byte it gets."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.received: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(1.0)
                with contextlib.suppress(OSError):
                    self.received.append(conn.recv(65536) or b"<connected>")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    server = Listener()
    yield server
    server.close()


@contextlib.contextmanager
def worker(**settings) -> Iterator[tuple[Client, str]]:
    """A worker daemon of its own home, configured with ``settings`` over the tests' small
    configuration, with a private variable in its environment: ``(client, home)``."""
    with shoal_environment(**settings) as home, pytest.MonkeyPatch.context() as mp:
        mp.setenv(PRIVATE_ENV, PRIVATE)
        mp.setenv(AWS_ACCESS_ENV, FAKE_ACCESS_KEY)
        mp.setenv(AWS_SECRET_ENV, FAKE_SECRET_KEY)
        client = Client(load_config())
        try:
            client.mounts()  # the worker starts now, with that environment
            yield client, home
        finally:
            client.close()


def worker_log(home: str) -> str:
    with open(os.path.join(home, LOG_FILE), encoding="utf-8", errors="replace") as f:
        return f.read()


def cli(capsys, *argv: str) -> str:
    capsys.readouterr()
    assert main(list(argv)) == 0
    return capsys.readouterr().out


def s3_options(bucket, **extra) -> dict:
    return bucket.options(access_key_env=AWS_ACCESS_ENV, secret_key_env=AWS_SECRET_ENV, **extra)


def test_a_fresh_worker_refuses_every_attack(moto_server, bucket, listener, capsys):
    attacks = [
        ("/etc", "file:///etc", {}, PermissionError),
        ("/etc2", "/etc", {}, PermissionError),
        ("/root", "file://localhost/", {}, PermissionError),
        ("/web", listener.url + "/", {}, PermissionError),
        ("/web2", f"https://127.0.0.1:{listener.port}/", {}, PermissionError),
        # The worker would sign a request to the listener with the variable's value as
        # its access key id.
        ("/env", "s3://b/", {"endpoint_url": listener.url, "access_key_env": PRIVATE_ENV,
                             "secret_key_env": AWS_SECRET_ENV}, PermissionError),
        # Within AWS_*, the secret key's variable named as the access key's.
        ("/swap", "s3://b/", {"endpoint_url": listener.url, "access_key_env": AWS_SECRET_ENV,
                              "secret_key_env": AWS_ACCESS_ENV}, ValueError),
        ("/file", "s3://b/", {"endpoint_url": listener.url,
                              "credentials_file": "/etc/shadow"}, PermissionError),
        ("/az", "abfs://container/x", {"connection_string": LITERAL}, ValueError),
        ("/gs", "gs://bucket/x", {"headers": {"Authorization": BEARER}}, ValueError),
        ("/s3lit", "s3://b/", {"endpoint_url": listener.url,
                               "session_token": BEARER}, ValueError),
    ]  # fmt: skip
    with worker(**DEFAULTS) as (client, home):
        for path, uri, options, exc in attacks:
            with pytest.raises(exc) as info:
                client.mount(path, uri, **options)
            if exc is PermissionError:
                assert info.value.errno == errno.EACCES
            text = str(info.value)
            for value in (PRIVATE, LITERAL, BEARER, FAKE_SECRET_KEY, FAKE_ACCESS_KEY):
                assert value not in text, (path, text)
            assert PRIVATE_ENV not in text and AWS_SECRET_ENV not in text, (path, text)
        with pytest.raises(PermissionError, match="not under this worker's allowed_mounts"):
            client.mount("/x", "/etc")
        assert client.mounts() == []
        for argv in (["mount", "ls"], ["mount", "ls", "--json"]):
            out = cli(capsys, *argv)
            assert LITERAL not in out and BEARER not in out and "/az" not in out
        # An allowed mount still works: the bucket, with AWS_* variables named.
        bucket.put("obj", b"bytes of the bucket")
        client.mount("/b", f"s3://{bucket.name}", **s3_options(bucket))
        buf = bytearray(19)
        assert client.read_into(buf, "/b/obj") == 19 and bytes(buf) == b"bytes of the bucket"
        log = worker_log(home)
    assert listener.received == [], "a request left the worker"
    assert log.count("refused") >= len(attacks)
    for value in (PRIVATE, LITERAL, BEARER, FAKE_SECRET_KEY, FAKE_ACCESS_KEY, PRIVATE_ENV):
        assert value not in log


def test_an_allowed_directory_is_mounted(tmp_path, moto_server, bucket):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_bytes(b"local bytes")
    (tmp_path / "src" / "out").symlink_to("/etc")
    with worker(**{**DEFAULTS, "allowed_mounts": TEST_ALLOWED_MOUNTS}) as (client, _):
        client.mount("/d", (tmp_path / "src").as_uri(), metadata_ttl=0)
        buf = bytearray(11)
        assert client.read_into(buf, "/d/f") == 11 and bytes(buf) == b"local bytes"
        for uri in ("file:///etc", str(tmp_path / "src" / "out"), f"{tmp_path}/src/../../x"):
            with pytest.raises((PermissionError, ValueError)):
                client.mount("/no", uri)
        client.mount("/b", f"s3://{bucket.name}", **s3_options(bucket))
        assert [m.path for m in client.mounts()] == ["/b", "/d"]


def test_a_narrowed_policy_refuses_a_stale_mount_at_use(tmp_path, moto_server, bucket):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_bytes(b"local bytes")
    bucket.put("obj", b"object")
    with worker(allowed_mounts=TEST_ALLOWED_MOUNTS) as (client, home):
        client.mount("/d", str(tmp_path / "src"))
        client.mount("/b", f"s3://{bucket.name}", **bucket.options())
        assert client.read_into(bytearray(11), "/d/f") == 11
        client.close()
        stop_worker(home)
        # The operator narrows what the worker mounts, and starts it again.
        with open(os.path.join(home, "config.yaml"), encoding="utf-8") as f:
            config = yaml.safe_load(f)
        config["allowed_mounts"] = list(DEFAULT_ALLOWED_MOUNTS)
        with open(os.path.join(home, "config.yaml"), "w", encoding="utf-8") as f:
            yaml.safe_dump(config, f)
        again = Client(load_config())
        while again.report()["published"]["restoring"]:  # records of /d/f read back
            time.sleep(0.02)
        # A new process finds nothing of /d in the table of published files either.
        reader = subprocess.run(
            [sys.executable, "-c", "import shoal; shoal.Client().read_into(bytearray(11), '/d/f')"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert reader.returncode != 0 and "allowed_mounts" in reader.stderr
        try:
            for _ in range(3):
                with pytest.raises(PermissionError) as info:
                    again.read_into(bytearray(11), "/d/f")
                assert info.value.errno == errno.EACCES
                message = str(info.value)
                assert "mount /d" in message and "allowed_mounts" in message
                assert "shoal mount rm /d" in message
            with pytest.raises(PermissionError):
                again.stat("/d")
            buf = bytearray(6)
            assert again.read_into(buf, "/b/obj") == 6 and bytes(buf) == b"object"
            assert [m.path for m in again.mounts()] == ["/b", "/d"]
            again.unmount("/d")
        finally:
            again.close()
        log = worker_log(home)
    assert log.count("mount /d") == 1 and "refused at use" in log


def test_an_old_entry_holding_a_secret_is_shown_hidden(capsys, moto_server, bucket):
    with shoal_environment() as home:
        # Entries as a worker before this policy (or another worker) could have stored.
        meta = LocalMetaStore(os.path.join(home, "meta"))
        try:
            table = MountTable(meta)
            table.mount("/old-az", "abfs://container/x", connection_string=LITERAL)
            table.mount("/old-gs", "gs://bucket/x", headers={"Authorization": BEARER})
            table.mount("/old-s3", f"s3://{bucket.name}", **bucket.options(session=BEARER))
        finally:
            meta.close()
        client = Client(load_config())
        try:
            shown = {m.path: dict(m.options) for m in client.mounts()}
            assert shown["/old-az"] == {"connection_string": "<hidden>"}
            assert shown["/old-gs"] == {"headers": "<hidden>"}
            assert shown["/old-s3"]["session"] == "<hidden>"
            assert shown["/old-s3"]["endpoint_url"] == bucket.endpoint_url
            text = cli(capsys, "mount", "ls")
            listed = cli(capsys, "mount", "ls", "--json")
            assert {doc["path"] for doc in json.loads(listed)} == set(shown)
            for out in (text, listed):
                assert LITERAL not in out and BEARER not in out and "<hidden>" in out
            for path in ("/old-az/f", "/old-gs/f", "/old-s3/f"):
                with pytest.raises(ValueError) as info:
                    client.stat(path)
                assert LITERAL not in str(info.value) and BEARER not in str(info.value)
        finally:
            client.close()
        log = worker_log(home)
    assert log.count("refused at use") == 3
    assert LITERAL not in log and BEARER not in log
