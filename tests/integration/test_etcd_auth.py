"""An etcd that wants credentials, shown them by reference. With a user and a password file,
a worker, its clients and ``shoal workers`` work, and a token that etcd dropped is replaced
unseen; a wrong or missing password, or a password file open to others, is a
``PermissionError`` naming etcd and the user, never the password. With mutual TLS, a client
certificate that etcd's CA signed is enough, and its absence is a clear refusal."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import os
import secrets as random
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from types import SimpleNamespace

import pytest
from etcdserver import EtcdServer
from shoal_cluster import PAGE, SMALL, Secrets, WorkerProcess, wait_until

from shoal._config import Config
from shoal.cli import main
from shoal.client import Client
from shoal.client._connection import Connection
from shoal.control._etcd import (
    EtcdAuthError,
    EtcdClient,
    EtcdCredentials,
    EtcdMetaStore,
    prefix_range_end,
)
from shoal.control._membership import EtcdMembership

pytestmark = pytest.mark.slow

USER = "shoal"
#: etcd drops a token this many seconds after its last use.
TOKEN_TTL = 2


def gateway(endpoint: str, path: str, body: dict, token: str | None = None) -> dict:
    """POST ``body`` to etcd's JSON gateway, as an operator's tool would."""
    request = urllib.request.Request(
        f"{endpoint}/v3/{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **({"Authorization": token} if token else {})},
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.load(resp)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def enable_auth(endpoint: str, password: str) -> None:
    """Users ``root`` and :data:`USER` (read and write on ``/shoal/`` only), then auth on."""
    gateway(endpoint, "auth/role/add", {"name": "root"})
    gateway(endpoint, "auth/user/add", {"name": "root", "password": random.token_hex(16)})
    gateway(endpoint, "auth/user/grant", {"user": "root", "role": "root"})
    gateway(endpoint, "auth/role/add", {"name": "shoal"})
    perm = {"key": b64(b"/shoal/"), "range_end": b64(prefix_range_end(b"/shoal/"))}
    gateway(endpoint, "auth/role/grant", {"name": "shoal", "perm": {**perm, "permType": 2}})
    gateway(endpoint, "auth/user/add", {"name": USER, "password": password})
    gateway(endpoint, "auth/user/grant", {"user": USER, "role": "shoal"})
    gateway(endpoint, "auth/enable", {})


def write_file(directory: str, name: str, text: str, mode: int = 0o600) -> str:
    path = os.path.join(directory, name)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    os.chmod(path, mode)
    return path


@pytest.fixture(scope="module")
def passwords():
    """The user's password, a wrong one, and files of them (one of them mode 0644)."""
    directory = tempfile.mkdtemp(prefix="shoal-etcdpw-", dir="/tmp")
    right, wrong = f"right-{random.token_hex(8)}", f"wrong-{random.token_hex(8)}"
    yield SimpleNamespace(
        right=right,
        wrong=wrong,
        right_file=write_file(directory, "right", right),
        wrong_file=write_file(directory, "wrong", wrong),
        loose_file=write_file(directory, "loose", right, 0o644),
        empty_file=write_file(directory, "empty", ""),
        dir=directory,
    )
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def auth_etcd(passwords):
    """An etcd of the module's own with authentication on, dropping tokens soon."""
    server = EtcdServer(args=[f"--auth-token-ttl={TOKEN_TTL}"])
    try:
        server.start()
        enable_auth(server.endpoint, passwords.right)
        yield server
    finally:
        server.close()


@pytest.fixture
def homes():
    """Temporary Shoal homes, removed at the end: ``homes()`` makes one."""
    made = []

    def make() -> str:
        made.append(tempfile.mkdtemp(prefix="shoal-ea-", dir="/tmp"))
        return made[-1]

    yield make
    for home in made:
        shutil.rmtree(home, ignore_errors=True)


def flags_of(passwords, which: str = "right") -> list[str]:
    return ["--etcd-user", USER, "--etcd-password-file", getattr(passwords, f"{which}_file")]


def exited(worker: WorkerProcess, timeout: float = 60.0) -> str:
    """The log of ``worker``, once it has exited with an error."""
    try:
        code = worker.proc.wait(timeout)
        log = worker.log()
    finally:
        worker.kill()
        shutil.rmtree(worker.home, ignore_errors=True)
    assert code != 0, log
    return log


def report(address: str, secrets: Secrets, home: str) -> dict:
    config = Config(home=home, **secrets.settings(admin=False), **SMALL)
    conn = Connection(None, 30.0, address=address, config=config)
    try:
        return conn.call({"op": "report"})["report"]
    finally:
        conn.close()


# --------------------------------------------------------------- user and password


def test_a_worker_and_its_clients_work_with_the_password(
    auth_etcd, passwords, bucket, homes, capsys
):
    endpoint = auth_etcd.endpoint
    credentials = EtcdCredentials(USER, passwords.right_file)
    secrets = Secrets()
    worker = WorkerProcess(endpoint, "host-auth", secrets=secrets, flags=flags_of(passwords))
    client = None
    try:
        with EtcdMembership(endpoint, credentials=credentials) as membership:

            def registered():
                assert worker.proc.poll() is None, f"worker exited:\n{worker.log()}"
                return membership.member(worker.id)

            member = wait_until(registered, 60, "the worker to register")
            config = Config(
                home=homes(), host_id="client-host", etcd=endpoint, etcd_user=USER,
                etcd_password_file=passwords.right_file, **secrets.settings(admin=True),
                **SMALL,
            )  # fmt: skip
            client = Client(config, start_worker=False)
            assert [m.id for m in client.membership().members()] == [worker.id]
            for n in range(2):
                data = os.urandom(3 * PAGE + 17 * n + 5)
                bucket.put(f"auth{n}/obj", data)
                client.mount(f"/auth{n}", f"s3://{bucket.name}/auth{n}", **bucket.options())
                buf = bytearray(len(data))
                assert client.read_into(buf, f"/auth{n}/obj") == len(data)
                assert buf == data
                if n == 0:
                    # etcd drops every token it gave: the worker, the client and the
                    # membership's watch each get another when they next need one
                    time.sleep(TOKEN_TTL + 1.5)
            state = report(member.address, secrets, homes())["cluster"]
            assert state["registered"] and state["last_error"] is None, state
            assert main(["workers", "--etcd", endpoint, *flags_of(passwords)]) == 0
            assert worker.id in capsys.readouterr().out
            assert membership.healthy
        log = worker.log()
        assert passwords.right not in log, log
    finally:
        if client is not None:
            client.close()
        worker.stop()
        shutil.rmtree(worker.home, ignore_errors=True)
        secrets.close()


def test_a_token_etcd_dropped_is_replaced(auth_etcd, passwords):
    credentials = EtcdCredentials(USER, passwords.right_file)
    with (
        EtcdClient(auth_etcd.endpoint, credentials=credentials) as kv,
        EtcdClient(auth_etcd.endpoint, credentials=credentials) as watcher,
    ):
        revision = kv.put(b"/shoal/renew/a", b"1")
        old = kv._token
        time.sleep(TOKEN_TTL + 1.5)
        with pytest.raises(urllib.error.HTTPError) as info:
            gateway(auth_etcd.endpoint, "kv/range", {"key": b64(b"/shoal/renew/a")}, old)
        assert "invalid auth token" in info.value.read().decode()
        info.value.close()
        assert kv.get(b"/shoal/renew/a").value == b"1"
        assert kv._token != old
        # a watch opened with a dropped token: etcd cancels it, the client opens it again
        stale = watcher._token
        stream = watcher.watch(b"/shoal/renew/", revision, idle=2)
        try:
            assert next(stream).events == []  # the watch is in place
            assert next(stream).events[0].kv.key == b"/shoal/renew/a"
        finally:
            stream.close()
        assert watcher._token != stale


def test_a_wrong_or_missing_password_is_refused_naming_etcd_and_the_user(
    auth_etcd, passwords, homes, capsys
):
    endpoint = auth_etcd.endpoint
    with pytest.raises(PermissionError) as info:
        EtcdClient(endpoint, credentials=EtcdCredentials(USER, passwords.wrong_file))
    text = str(info.value)
    assert isinstance(info.value, EtcdAuthError)
    assert f"etcd at {endpoint}" in text and f"user {USER!r}" in text
    assert "wrong user name or password" in text and passwords.wrong_file in text
    assert passwords.wrong not in text and passwords.right not in text
    with pytest.raises(PermissionError, match=f"etcd at {endpoint} requires authentication"):
        EtcdMembership(endpoint)
    config = Config(
        home=homes(), etcd=endpoint, etcd_user=USER, etcd_password_file=passwords.wrong_file,
        **SMALL,
    )  # fmt: skip
    client = Client(config, start_worker=False)
    try:
        with pytest.raises(PermissionError, match=f"etcd at {endpoint} refused user {USER!r}"):
            client.read_into(bytearray(10), "/auth0/obj")
    finally:
        client.close()

    assert main(["workers", "--etcd", endpoint, *flags_of(passwords, "wrong")]) == 1
    err = capsys.readouterr().err
    assert f"etcd at {endpoint} refused user {USER!r}" in err and passwords.wrong not in err
    assert main(["workers", "--etcd", endpoint]) == 1
    err = capsys.readouterr().err
    assert "requires authentication" in err and "--etcd-user" in err

    # a worker stops at start, saying why
    wrong = WorkerProcess(endpoint, "host-wrong", flags=flags_of(passwords, "wrong"))
    log = exited(wrong)
    assert f"etcd at {endpoint} refused user {USER!r}" in log, log
    assert passwords.wrong not in log and passwords.right not in log
    log = exited(WorkerProcess(endpoint, "host-none"))
    assert f"etcd at {endpoint} requires authentication" in log, log


def test_a_password_file_open_to_others_is_refused(auth_etcd, passwords):
    loose = EtcdCredentials(USER, passwords.loose_file)
    with pytest.raises(PermissionError, match="etcd_password_file.*0644.*chmod 600") as info:
        EtcdClient(auth_etcd.endpoint, credentials=loose)
    assert passwords.right not in str(info.value)
    with pytest.raises(ValueError, match="etcd_password_file.*empty"):
        EtcdClient(auth_etcd.endpoint, credentials=EtcdCredentials(USER, passwords.empty_file))


def test_a_user_for_an_etcd_without_authentication_is_not_needed(etcd_server, passwords, caplog):
    credentials = EtcdCredentials(USER, passwords.right_file)
    with EtcdClient(etcd_server.endpoint, credentials=credentials) as client:
        assert client.put(b"/shoal/noauth/a", b"1") > 0
        assert client.get(b"/shoal/noauth/a").value == b"1"
    assert f"etcd at {etcd_server.endpoint} has authentication disabled" in caplog.text


# --------------------------------------------------------------- client certificates


def make_certificates(directory: str) -> SimpleNamespace:
    """A throwaway CA; a certificate it signed for etcd on 127.0.0.1 (for client auth too:
    etcd's gateway dials etcd with it); one for a client; and another CA."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    pem = serialization.Encoding.PEM

    def name(text):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    def certificate(subject, key, issuer, issuer_key, extensions):
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(name(issuer))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
        )
        for extension in extensions:
            builder = builder.add_extension(extension, critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    def save(stem, cert, key):
        paths = os.path.join(directory, f"{stem}.pem"), os.path.join(directory, f"{stem}-key.pem")
        with open(paths[0], "wb") as f:
            f.write(cert.public_bytes(pem))
        with open(os.open(paths[1], os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
            f.write(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))  # fmt: skip
        return paths

    out = {}
    for ca_name in ("ca", "other-ca"):
        key = ec.generate_private_key(ec.SECP256R1())
        ca = certificate(ca_name, key, ca_name, key, [x509.BasicConstraints(True, None)])
        out[ca_name] = (ca, key, save(ca_name, ca, key)[0])
    ca, ca_key, ca_path = out["ca"]
    usages = {
        "server": [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        "client": [ExtendedKeyUsageOID.CLIENT_AUTH],
    }
    paths = {}
    for who, usage in usages.items():
        key = ec.generate_private_key(ec.SECP256R1())
        extensions = [x509.ExtendedKeyUsage(usage)]
        if who == "server":
            address = ipaddress.ip_address("127.0.0.1")
            extensions.append(x509.SubjectAlternativeName([x509.IPAddress(address)]))
        paths[who] = save(who, certificate(who, key, "ca", ca_key, extensions), key)
    return SimpleNamespace(
        ca=ca_path, other_ca=out["other-ca"][2], server=paths["server"], client=paths["client"]
    )


@pytest.fixture(scope="module")
def tls_etcd():
    """An etcd of the module's own on https://, taking only clients with a certificate that
    its CA signed: ``(server, certificates)``."""
    directory = tempfile.mkdtemp(prefix="shoal-etcdtls-", dir="/tmp")
    try:
        certs = make_certificates(directory)
        server = EtcdServer(tls=(certs.ca, *certs.server))
        try:
            server.start()
            yield server, certs
        finally:
            server.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_a_client_certificate_is_enough(tls_etcd, capsys):
    server, certs = tls_etcd
    cert, key = certs.client
    credentials = EtcdCredentials(ca=certs.ca, cert=cert, key=key)
    tls = ["--etcd-ca", certs.ca, "--etcd-cert", cert, "--etcd-key", key]
    secrets = Secrets()
    worker = WorkerProcess(server.endpoint, "host-tls", secrets=secrets, flags=tls)
    try:
        with EtcdMembership(server.endpoint, credentials=credentials) as membership:

            def registered():
                assert worker.proc.poll() is None, f"worker exited:\n{worker.log()}"
                return membership.member(worker.id)

            wait_until(registered, 60, "the worker to register")  # seen through the watch
        store = EtcdMetaStore(server.endpoint, credentials=credentials)
        try:
            store.put("tls/probe", {"n": 1})
            assert store.get("tls/probe") == {"n": 1}
        finally:
            store.close()
        assert main(["workers", "--etcd", server.endpoint, *tls]) == 0
        assert worker.id in capsys.readouterr().out
    finally:
        worker.stop()
        shutil.rmtree(worker.home, ignore_errors=True)
        secrets.close()


def test_no_client_certificate_or_an_unknown_ca_is_refused_clearly(tls_etcd, capsys):
    server, certs = tls_etcd
    with pytest.raises(PermissionError, match="wants a client certificate.*--etcd-cert"):
        EtcdClient(server.endpoint, credentials=EtcdCredentials(ca=certs.ca))
    assert main(["workers", "--etcd", server.endpoint, "--etcd-ca", certs.ca]) == 1
    assert "wants a client certificate" in capsys.readouterr().err
    cert, key = certs.client
    other = EtcdCredentials(ca=certs.other_ca, cert=cert, key=key)
    with pytest.raises(PermissionError, match=f"etcd_ca {certs.other_ca} does not vouch for"):
        EtcdClient(server.endpoint, credentials=other)
