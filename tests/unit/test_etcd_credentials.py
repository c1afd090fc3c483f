"""etcd credentials by reference, without an etcd: what they hold, how the password file
is read, and what is refused before any connection."""

from __future__ import annotations

import os

import pytest

from shoal._config import Config
from shoal.control._etcd import EtcdClient, EtcdCredentials, parse_endpoint


def write(path, text: str, mode: int = 0o600) -> str:
    path.write_text(text)
    os.chmod(path, mode)
    return str(path)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"user": "shoal"}, "user and password file go together"),
        ({"password_file": "/pw"}, "user and password file go together"),
        ({"cert": "/c.pem"}, "certificate and key go together"),
        ({"key": "/k.pem"}, "certificate and key go together"),
        ({"user": "", "password_file": "/pw"}, "etcd user must be a non-empty string"),
    ],
)
def test_halves_of_a_pair_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        EtcdCredentials(**fields)


def test_from_config_holds_paths_only(tmp_path):
    config = Config(
        home=str(tmp_path / "home"), capacity="64MiB", mem_capacity=0,
        etcd="https://etcd.example:2379", etcd_user="shoal", etcd_password_file="pw",
        etcd_ca="ca.pem", etcd_cert="c.pem", etcd_key="k.pem",
    )  # fmt: skip
    creds = EtcdCredentials.from_config(config)
    assert creds.user == "shoal"
    for path in (creds.password_file, creds.ca, creds.cert, creds.key):
        assert os.path.isabs(path)
    assert creds.tls
    assert EtcdCredentials.from_config(
        Config(home=config.home, capacity="64MiB", mem_capacity=0)
    ) == (EtcdCredentials())


def test_the_password_file_is_checked_like_a_secret(tmp_path):
    # any length will do (etcd's password is chosen elsewhere); whitespace around is not kept
    assert EtcdCredentials("u", write(tmp_path / "short", "pw\n")).password() == "pw"
    loose = EtcdCredentials("u", write(tmp_path / "loose", "hunter2", 0o644))
    with pytest.raises(PermissionError, match="etcd_password_file.*0644") as info:
        loose.password()
    assert "hunter2" not in str(info.value)
    with pytest.raises(ValueError, match="etcd_password_file.*empty"):
        EtcdCredentials("u", write(tmp_path / "empty", " \n")).password()
    with pytest.raises(FileNotFoundError, match="etcd_password_file"):
        EtcdCredentials("u", str(tmp_path / "missing")).password()
    latin = tmp_path / "latin"
    latin.write_bytes(b"caf\xe9")
    os.chmod(latin, 0o600)
    with pytest.raises(ValueError, match="UTF-8"):
        EtcdCredentials("u", str(latin)).password()


def test_tls_files_and_endpoints_are_checked_before_connecting(tmp_path):
    with pytest.raises(ValueError, match="needs an https:// endpoint"):
        EtcdClient("http://127.0.0.1:1", credentials=EtcdCredentials(ca=str(tmp_path / "ca")))
    missing = EtcdCredentials(ca=str(tmp_path / "ca.pem"))
    with pytest.raises(FileNotFoundError, match="etcd_ca"):
        EtcdClient("https://127.0.0.1:1", credentials=missing)
    junk = EtcdCredentials(ca=write(tmp_path / "junk.pem", "not a certificate"))
    with pytest.raises(ValueError, match="etcd_ca .* is not a PEM file"):
        EtcdClient("https://127.0.0.1:1", credentials=junk)
    cert = EtcdCredentials(cert=str(tmp_path / "c.pem"), key=str(tmp_path / "k.pem"))
    with pytest.raises(FileNotFoundError, match="etcd_cert"):
        EtcdClient("https://127.0.0.1:1", credentials=cert)
    with pytest.raises(TypeError, match="EtcdCredentials"):
        EtcdClient("http://127.0.0.1:1", credentials={"user": "u"})


@pytest.mark.parametrize(
    "endpoint",
    ["http://shoal:hunter2@etcd:2379", "https://shoal:hunter2@etcd", "ftp://u:hunter2@etcd:x"],
)
def test_credentials_in_the_endpoint_are_refused_unrepeated(endpoint):
    with pytest.raises(ValueError) as info:
        parse_endpoint(endpoint)
    assert "hunter2" not in str(info.value)
