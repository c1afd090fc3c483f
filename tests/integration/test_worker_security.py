"""A worker that serves only those it should, within limits no request can exceed: each
attack as a peer on the network (or a local process) would make it, with raw sockets and
msgpack frames where the attack needs them, against real worker processes.

Authentication: no secret, a wrong secret, a worker that cannot prove the secret, TLS.
Ops by who may do them: admin ops over TCP need the admin secret; on the Unix socket, the
worker's own user or root. Limits: announced headers, huge requests, long paths,
connections per peer and in all, descriptors exhausted, peers that never read, idle
connections, a flood of bad frames in the log; and random frames, before and after
authentication."""

from __future__ import annotations

import contextlib
import datetime
import errno
import os
import pwd
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time

import msgpack
import pytest
from conftest import shoal_environment
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from other_user import OTHER, python_for, runner
from shoal_cluster import REPO, SMALL, Secrets, wait_until

from shoal._config import Config, load_config
from shoal.cli._main import main
from shoal.cli._secret import write_secret
from shoal.client import Client
from shoal.client._connection import Connection
from shoal.control._daemon import run_worker
from shoal.control._server import Reply, Server
from shoal.control.proto import (
    CLIENT,
    FRAME,
    MAX_REQUEST_HEADER,
    PROTOCOL_VERSION,
    SCHEME,
    WORKER,
    decode_error,
    new_nonce,
    proof,
    recv_frame,
    transcript,
)

pytestmark = pytest.mark.slow

ADMIN_REQUESTS = {
    "mount": {"op": "mount", "path": "/etc", "uri": "file:///etc", "options": {}},
    "unmount": {"op": "unmount", "path": "/etc"},
    "free": {"op": "free", "path": "/etc"},
    "job_put": {"op": "job_put", "key": "jobs/load/x", "record": {"state": "RUNNING"}},
    "policy_set": {"op": "policy_set", "path": "/etc", "policy": {"metadata_ttl": 0}},
    "policy_rm": {"op": "policy_rm", "path": "/etc", "fields": []},
    "stop": {"op": "stop"},
}
READ_REQUESTS = {
    "mounts": {"op": "mounts"},
    "stat": {"op": "stat", "paths": ["/etc/shadow"]},
    "ls": {"op": "ls", "path": "/"},
    "read": {
        "op": "read",
        "files": [["/etc/shadow", "v"]],
        "items": [[0, 0, 0, 10]],
        "mode": "data",
        "forget": [],
    },
    "load": {"op": "load", "paths": ["/etc"], "metadata_only": True},
    "report": {"op": "report"},
    "du": {"op": "du", "path": "/etc"},
    "policies": {"op": "policies"},
    "policy_show": {"op": "policy_show", "path": "/etc/shadow"},
}


# --------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as s:
        return s.getsockname()[1]


def frame(header: dict, payload: bytes = b"") -> bytes:
    raw = msgpack.packb(header, use_bin_type=True)
    return FRAME.pack(len(raw), len(payload)) + raw + payload


def answer_of(sock: socket.socket) -> dict | None:
    """The next frame's header, or None when the worker closed the connection."""
    try:
        got = recv_frame(sock)
    except ConnectionResetError:
        return None
    return None if got is None else got[0]


def raw_call(sock: socket.socket, header: dict) -> dict | None:
    sock.sendall(frame(header))
    return answer_of(sock)


def error_of(answer: dict) -> BaseException:
    assert answer is not None and answer["ok"] is False, answer
    return decode_error(answer["error"])


def closed(sock: socket.socket, timeout: float = 5.0) -> bool:
    """True once the peer closed ``sock`` (whatever it sent before is read and dropped)."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        return False
    return True


def tcp(address: str) -> socket.socket:
    host, _, port = address.rpartition(":")
    return socket.create_connection((host, int(port)), timeout=10)


def unix(home: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(os.path.join(home, "worker.sock"))
    return s


def proc_status(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} for pid {pid}")


def settled_threads(w) -> int:
    """The worker's threads once it has served a request and closed its connection (its
    listeners all started, no connection thread left)."""
    probe = Connection(os.path.join(w.home, "worker.sock"), 10.0)
    probe.call({"op": "report"})
    probe.close()
    counts = [proc_status(w.pid, "Threads")]
    while len(counts) < 3 or len(set(counts[-3:])) > 1:
        time.sleep(0.1)
        counts.append(proc_status(w.pid, "Threads"))
    return counts[-1]


def rss(pid: int) -> int:
    """Resident memory of ``pid`` in bytes (VmRSS)."""
    return proc_status(pid, "VmRSS") * 1024


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def secret_of(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read().strip()


def read_log(home: str) -> str:
    with open(os.path.join(home, "worker.log"), encoding="utf-8", errors="replace") as f:
        return f.read()


class Running:
    """A worker daemon under test: its home, pid and TCP address."""

    def __init__(self, home: str, pid: int, address: str | None):
        self.home = home
        self.pid = pid
        self.address = address

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        with open(f"/proc/{self.pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")

    def log(self) -> str:
        return read_log(self.home)


@contextlib.contextmanager
def worker(secrets: Secrets | None = None, admin: bool = True, listen: bool = True, **settings):
    """A worker daemon with ``settings``, on TCP loopback when ``listen``, holding the
    cluster secret (and the admin secret if ``admin``) of ``secrets``."""
    address = f"127.0.0.1:{free_port()}" if listen else None
    if address is not None:
        settings["listen"] = address
    if secrets is not None:
        settings.update(secrets.settings(admin))
    with shoal_environment(**settings) as home:
        pid = run_worker(load_config(), foreground=False, timeout=60)
        yield Running(home, pid, address)


_client_homes: list[str] = []


@pytest.fixture(autouse=True)
def _remove_client_homes():
    yield
    while _client_homes:
        shutil.rmtree(_client_homes.pop(), ignore_errors=True)


def client_config(secrets: Secrets | None = None, admin: bool = False, **extra) -> Config:
    """What a client on another host holds: the cluster secret (and the admin secret)."""
    home = tempfile.mkdtemp(prefix="shoal-sc-", dir="/tmp")
    _client_homes.append(home)
    settings = secrets.settings(admin) if secrets is not None else {}
    return Config(home=home, host_id="elsewhere", **{**SMALL, **settings, **extra})


def connect(w: Running, config: Config | None) -> Connection:
    return Connection(None, 10.0, address=w.address, config=config)


@pytest.fixture
def secrets():
    s = Secrets()
    yield s
    s.close()


# --------------------------------------------------------------------- authentication


def test_without_the_secret_nothing_is_served(secrets):
    """A TCP peer that does not prove the cluster secret gets a PermissionError for its
    first request, whatever it is (file:///etc mounted by nobody), and the connection
    closes: nothing else is served."""
    with worker(secrets) as w:
        for name, header in {**ADMIN_REQUESTS, **READ_REQUESTS}.items():
            with tcp(w.address) as s:
                error = error_of(raw_call(s, header))
                assert isinstance(error, PermissionError), name
                assert "cluster secret" in str(error) and name in str(error)
                assert closed(s), name
        with tcp(w.address) as s:  # a hello without a nonce: told what it lacks
            error = error_of(raw_call(s, {"op": "hello", "pid": 1, "version": PROTOCOL_VERSION}))
            assert isinstance(error, PermissionError)
            assert "cluster_secret_file" in str(error)
            assert closed(s)
        with pytest.raises(PermissionError, match="give this client cluster_secret_file"):
            connect(w, None)
        with pytest.raises(PermissionError, match="give this client cluster_secret_file"):
            connect(w, client_config())
        admin = connect(w, client_config(secrets, admin=True))
        try:
            assert admin.call({"op": "mounts"})["mounts"] == []  # nothing was mounted
        finally:
            admin.close()
        assert w.alive()
        assert "cluster secret" in w.log()


def test_a_wrong_secret_is_refused_and_the_secret_never_crosses(secrets, tmp_path):
    other = write_secret(str(tmp_path / "other.secret"))
    with worker(secrets) as w:
        # The client checks the worker first: a worker of another cluster fails to prove it.
        with pytest.raises(PermissionError, match="failed to prove it holds the cluster secret"):
            connect(w, client_config(cluster_secret_file=other))
        # A peer that sends a wrong proof anyway is refused, and the connection closes.
        with tcp(w.address) as s:
            nonce = new_nonce()
            challenge = raw_call(
                s, {"op": "hello", "pid": 7, "version": PROTOCOL_VERSION, "nonce": nonce}
            )
            assert challenge["ok"] and challenge["auth"] == SCHEME
            t = transcript(nonce, challenge["nonce"], 7, PROTOCOL_VERSION, False, False)
            secret = secret_of(secrets.cluster)
            assert challenge["proof"] == proof(secret, WORKER, t)
            wrong = proof(secret_of(other), CLIENT, t)
            error = error_of(raw_call(s, {"op": "auth", "proof": wrong}))
            assert isinstance(error, PermissionError) and "authentication failed" in str(error)
            assert closed(s)
        # A replayed proof is worth nothing on a new connection (fresh nonces).
        with tcp(w.address) as s:
            challenge = raw_call(
                s, {"op": "hello", "pid": 7, "version": PROTOCOL_VERSION, "nonce": nonce}
            )
            error = error_of(raw_call(s, {"op": "auth", "proof": proof(secret, CLIENT, t)}))
            assert isinstance(error, PermissionError)
        # A wrong admin secret is refused too.
        config = client_config(secrets, admin_secret_file=other)
        with pytest.raises(PermissionError, match="admin authentication failed"):
            connect(w, config)
        assert "wrong cluster secret" in w.log() and "wrong admin secret" in w.log()
        assert secret.decode() not in w.log()


def fake_worker(answer):
    """A TCP server that records what a client sends and answers its hello with
    ``answer(hello)``; (address, received bytes, thread)."""
    server = socket.create_server(("127.0.0.1", 0))
    received = bytearray()

    def run():
        with server:
            conn, _ = server.accept()
            with conn:
                conn.settimeout(5)
                hello = recv_frame(conn)[0]
                received.extend(msgpack.packb(hello))
                conn.sendall(frame(answer(hello)))
                with contextlib.suppress(OSError):
                    while data := conn.recv(65536):
                        received.extend(data)

    thread = threading.Thread(target=run)
    thread.start()
    return f"127.0.0.1:{server.getsockname()[1]}", received, thread


def test_a_client_trusts_no_worker_that_cannot_prove_the_secret(secrets, tmp_path):
    config = client_config(secrets, admin=True)
    secret = secret_of(secrets.cluster)
    admin = secret_of(secrets.admin)
    impostor = secret_of(write_secret(str(tmp_path / "x")))

    def challenge(hello):
        t = transcript(hello["nonce"], b"n" * 32, hello["pid"], hello["version"], False, True)
        return {"ok": True, "auth": SCHEME, "nonce": b"n" * 32, "proof": proof(impostor, WORKER, t)}

    def no_challenge(hello):
        return {"ok": True, "version": PROTOCOL_VERSION, "page_size": 1, "chunk_size": 1}

    for answer, match in (
        (challenge, "failed to prove it holds the cluster secret"),
        (no_challenge, "runs without a cluster secret"),
    ):
        address, received, thread = fake_worker(answer)
        with pytest.raises(PermissionError, match=match):
            Connection(None, 5.0, address=address, config=config)
        thread.join(10)
        assert received
        for value in (secret, admin):  # never sent, in any form
            assert value not in received and bytes.fromhex(value.decode()) not in received


def test_tls_on_the_same_port(secrets, tmp_path, bucket):
    """TLS: the client checks the worker's certificate against its CA; the cached pages a
    remote read gets come from memory instead of sendfile, checked the same."""
    x509 = pytest.importorskip("cryptography.x509")
    ca, cert, key = make_certificates(tmp_path, x509)
    other_ca, _, _ = make_certificates(tmp_path / "other", x509)
    data = os.urandom(5 * SMALL["page_size"] + 123)
    bucket.put("tls/obj", data)
    with worker(secrets, tls_cert=cert, tls_key=key) as w:
        local = Client(load_config())
        try:
            local.mount("/b", f"s3://{bucket.name}", **bucket.options())
            local.load("/b/tls")
            meta = local.stat("/b/tls/obj")
        finally:
            local.close()
        conn = connect(w, client_config(secrets, tls_ca=ca))
        try:
            assert isinstance(conn.sock, ssl.SSLSocket)
            page = SMALL["page_size"]
            items = [[0, i, 0, min(page, len(data) - i * page)] for i in range(6)]
            for segments in (True, False):
                conn.send(
                    {"op": "read", "files": [["/b/tls/obj", meta.version]], "items": items,
                     "mode": "data", "forget": [], "segments": segments}
                )  # fmt: skip
                answer, length, _ = conn.receive()
                buf = bytearray(length)
                conn.recv_payload([buf], length)
                assert bytes(buf) == data
                assert (answer.get("crcs") is not None) == segments
        finally:
            conn.close()
        with pytest.raises(PermissionError, match="speaks TLS: give the client tls_ca"):
            connect(w, client_config(secrets))
        with pytest.raises(PermissionError, match="certificate"):
            connect(w, client_config(secrets, tls_ca=other_ca))
    with (
        worker(secrets) as plain,
        pytest.raises(ConnectionRefusedError, match="TLS with the worker"),
    ):
        connect(plain, client_config(secrets, tls_ca=ca))


def make_certificates(directory, x509) -> tuple[str, str, str]:
    """A throwaway CA and a certificate it signed for 127.0.0.1: (ca, cert, key) paths."""
    import ipaddress

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    os.makedirs(directory, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "shoal test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "worker")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = [os.path.join(directory, name) for name in ("ca.pem", "cert.pem", "key.pem")]
    pem = serialization.Encoding.PEM
    with open(paths[0], "wb") as f:
        f.write(ca.public_bytes(pem))
    with open(paths[1], "wb") as f:
        f.write(cert.public_bytes(pem))
    with open(paths[2], "wb") as f:
        f.write(
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
    os.chmod(paths[2], 0o600)
    return paths[0], paths[1], paths[2]


def test_a_worker_refuses_to_start_insecurely(secrets, tmp_path):
    """Beyond loopback without a cluster secret, with a secret file others can read, or
    with one too short: the worker does not start, and says why and what to do."""
    loose = write_secret(str(tmp_path / "loose"))
    os.chmod(loose, 0o644)
    short = tmp_path / "short"
    short.write_text("hunter2\n")
    short.chmod(0o600)
    cases = [
        ({"listen": "0.0.0.0:0"}, "shoal secret new FILE"),
        ({"listen": "127.0.0.1:0", "cluster_secret_file": loose}, "chmod 600"),
        ({"listen": "127.0.0.1:0", "cluster_secret_file": str(short)}, "holds 7 bytes"),
        (
            {"listen": "127.0.0.1:0", "admin_secret_file": secrets.admin},
            "admin_secret_file needs cluster_secret_file",
        ),
    ]
    for fields, match in cases:
        with shoal_environment(**fields):
            with pytest.raises(ConnectionError, match="exited during start-up") as info:
                run_worker(load_config(), foreground=False, timeout=60)
            assert match in str(info.value)
            assert "hunter2" not in str(info.value)
    with shoal_environment() as home:
        env = {**os.environ, "PYTHONPATH": REPO}
        out = subprocess.run(
            [sys.executable, "-m", "shoal", "worker", "--listen", "0.0.0.0:0"],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert out.returncode == 1
        assert "reachable from other hosts" in out.stderr
        assert "--cluster-secret-file" in out.stderr
        assert not os.path.exists(os.path.join(home, "worker.sock"))


def test_secret_new_writes_a_private_secret(tmp_path, capsys):
    path = tmp_path / "s"
    assert main(["secret", "new", str(path)]) == 0
    assert "mode 0600" in capsys.readouterr().out
    text = path.read_text()
    assert len(text.strip()) == 64 and int(text, 16) >= 0
    assert path.stat().st_mode & 0o777 == 0o600
    assert main(["secret", "new", str(path)]) == 1
    assert "exists" in capsys.readouterr().err
    assert path.read_text() == text
    assert main(["secret", "new", "--force", str(path)]) == 0
    assert path.read_text() != text


# --------------------------------------------------------------------- who may do what


def test_admin_ops_need_the_admin_secret(secrets, bucket):
    with worker(secrets) as w:
        reader = connect(w, client_config(secrets))
        admin = connect(w, client_config(secrets, admin=True))
        try:
            assert reader.hello["admin"] is False and admin.hello["admin"] is True
            mount = {
                "op": "mount", "path": "/b", "uri": f"s3://{bucket.name}",
                "options": bucket.options(),
            }  # fmt: skip
            requests = {
                **ADMIN_REQUESTS,
                "mount": mount,
                "unmount": {"op": "unmount", "path": "/b"},
            }
            for op, header in requests.items():
                with pytest.raises(PermissionError, match=f"{op} is refused over TCP") as info:
                    reader.call(header)
                assert info.value.errno == errno.EPERM
                assert reader.call({"op": "mounts"})["mounts"] == []  # still usable
            assert admin.call(mount)["mount"]["path"] == "/b"
            assert [m["path"] for m in reader.call({"op": "mounts"})["mounts"]] == ["/b"]
            assert reader.call({"op": "du", "path": "/b"})["bytes"] == 0  # a reader's op
            assert admin.call({"op": "free", "path": "/b"}) == {"ok": True, "pages": 0, "bytes": 0}
            admin.call(ADMIN_REQUESTS["job_put"])
            assert reader.call({"op": "jobs", "prefix": "jobs/", "limit": 5})["jobs"]
            admin.call({"op": "unmount", "path": "/b"})
            admin.call({"op": "stop"})
        finally:
            reader.close()
            admin.close()
        wait_until(lambda: not w.alive(), 15, "the worker to stop")
    with worker(secrets, admin=False) as w:
        conn = connect(w, client_config(secrets, admin=True))
        try:
            assert conn.hello["admin"] is False
            with pytest.raises(PermissionError, match="has no admin secret"):
                conn.call(ADMIN_REQUESTS["mount"])
        finally:
            conn.close()
        # The worker's own user on its Unix socket needs no secret.
        local = Connection(os.path.join(w.home, "worker.sock"), 10.0)
        try:
            assert local.hello["admin"] is True
            with pytest.raises(FileNotFoundError):
                local.call({"op": "unmount", "path": "/nothing"})
        finally:
            local.close()


NOBODY_CLIENT = """
import json, socket, struct, sys
import msgpack

def call(s, header):
    raw = msgpack.packb(header)
    s.sendall(struct.pack("<II", len(raw), 0) + raw)
    size = struct.unpack("<II", s.recv(8, socket.MSG_WAITALL))[0]
    return msgpack.unpackb(s.recv(size, socket.MSG_WAITALL))

s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
out = [call(s, {"op": "hello", "pid": 1, "version": 1})]
out.append(call(s, {"op": "mount", "path": "/etc", "uri": "file:///etc", "options": {}}))
out.append(call(s, {"op": "mounts"}))
print(json.dumps(out, default=str))
"""


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root")
def test_unix_socket_peers_are_told_apart_by_uid(tmp_path):
    """Another user on the worker's Unix socket (were it open to them) may read, not mount:
    the server learns the peer's uid from the kernel (SO_PEERCRED)."""
    import json

    mounted = []
    handlers = {
        "hello": lambda c, h: Reply({"uid": c.uid, "admin": c.admin}),
        "mount": lambda c, h: Reply(mounted.append(h["path"]) or {}),
        "mounts": lambda c, h: Reply({"mounts": mounted}),
    }
    prefix = runner()
    python = python_for(prefix)
    directory = tempfile.mkdtemp(prefix="shoal-uid-", dir="/tmp")
    path = os.path.join(directory, "s.sock")
    server = Server(handlers, path)
    server.start()
    try:
        os.chmod(directory, 0o755)
        os.chmod(path, 0o666)
        # msgpack where the other user may read it (this checkout may be private)
        site = os.path.join(directory, "site")
        shutil.copytree(os.path.dirname(msgpack.__file__), os.path.join(site, "msgpack"))
        for root, dirs, files in os.walk(site):
            for name in dirs + files:
                os.chmod(os.path.join(root, name), 0o755)
        os.chmod(site, 0o755)
        out = subprocess.run(
            [*prefix, python, "-c", NOBODY_CLIENT, path],
            env={"PYTHONPATH": site, "PATH": os.environ["PATH"]},
            cwd="/", capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        hello, mount, mounts = json.loads(out.stdout)
        other = pwd.getpwnam(OTHER).pw_uid
        assert hello["uid"] == other and hello["admin"] is False
        assert mount["ok"] is False and mount["error"]["type"] == "PermissionError"
        assert f"mount is refused to uid {other}" in mount["error"]["message"]
        assert mounts == {"ok": True, "mounts": []} and mounted == []
        own = Connection(path, 10.0)
        try:
            assert own.hello["admin"] is True and own.hello["uid"] == os.getuid()
            own.call({"op": "mount", "path": "/x", "uri": "s3://b", "options": {}})
            assert mounted == ["/x"]
        finally:
            own.close()
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


# --------------------------------------------------------------------- limits


def test_announced_headers_then_silence_cost_a_small_buffer(secrets):
    """16 connections that announce a 64 MiB header (the attack) are refused at once; 16
    that announce the largest header allowed and send 100 bytes of it hold a small buffer
    each, and are closed after the idle timeout; 16 TCP peers that say nothing are closed
    after the handshake timeout."""
    with worker(secrets, idle_timeout=2) as w:
        silent = [tcp(w.address) for _ in range(16)]
        started = time.monotonic()
        before = rss(w.pid)
        for make in (lambda: tcp(w.address), lambda: unix(w.home)):
            for _ in range(16):
                with make() as s:
                    s.sendall(FRAME.pack(64 << 20, 0))
                    error = error_of(answer_of(s))
                    assert "exceeds" in str(error)
                    assert closed(s)
        slow = []
        for _ in range(16):
            s = unix(w.home)
            s.sendall(FRAME.pack(MAX_REQUEST_HEADER, 0) + b"\x81" * 100)
            slow.append(s)
        time.sleep(1.0)
        grown = rss(w.pid) - before
        assert grown < 32 << 20, f"the worker grew by {grown >> 20} MiB"
        for s in slow:
            assert closed(s, timeout=10)
            s.close()
        for s in silent:
            assert closed(s, timeout=10)
            s.close()
        assert time.monotonic() - started < 15
        probe = Connection(os.path.join(w.home, "worker.sock"), 10.0)
        try:
            assert probe.call({"op": "mounts"})["mounts"] == []
        finally:
            probe.close()


def test_a_huge_read_is_answered_at_once(secrets):
    """A read of 640k items: refused with E2BIG in well under a second of the worker's CPU;
    the connection serves on."""
    with worker(secrets) as w:
        conn = Connection(os.path.join(w.home, "worker.sock"), 30.0)
        try:
            header = {
                "op": "read", "files": [["/m/f", "v"]], "items": [[0, 0, 0, 1]] * 640_000,
                "mode": "data", "forget": [],
            }  # fmt: skip
            before = cpu_seconds(w.pid)
            start = time.monotonic()
            with pytest.raises(OSError, match="read: items: 640000 entries") as info:
                conn.call(header)
            assert info.value.errno == errno.E2BIG
            assert cpu_seconds(w.pid) - before < 0.6
            assert time.monotonic() - start < 5
            assert conn.call({"op": "mounts"})["mounts"] == []
        finally:
            conn.close()


def test_a_long_path_is_refused_fast_and_others_are_served(secrets):
    with worker(secrets) as w:
        attacker = Connection(os.path.join(w.home, "worker.sock"), 30.0)
        other = Connection(os.path.join(w.home, "worker.sock"), 30.0)
        stop = threading.Event()
        slowest = []

        def serve_other():
            worst = 0.0
            while not stop.is_set():
                start = time.monotonic()
                other.call({"op": "mounts"})
                worst = max(worst, time.monotonic() - start)
            slowest.append(worst)

        thread = threading.Thread(target=serve_other)
        thread.start()
        try:
            for _ in range(5):
                start = time.monotonic()
                with pytest.raises(OSError) as info:
                    attacker.call({"op": "stat", "paths": ["/a" * 250_000]})
                assert info.value.errno == errno.ENAMETOOLONG
                assert time.monotonic() - start < 1.0
            with pytest.raises(FileNotFoundError, match="not under any mount"):
                attacker.call({"op": "ls", "path": "/a" * 1024})
        finally:
            stop.set()
            thread.join(30)
            attacker.close()
            other.close()
        assert slowest and slowest[0] < 1.0


def test_connections_past_the_limits_are_refused_with_an_error(secrets):
    with worker(secrets, max_connections=6, max_connections_per_peer=4) as w:
        path = os.path.join(w.home, "worker.sock")
        held = [Connection(path, 10.0) for _ in range(4)]
        try:
            with pytest.raises(ConnectionRefusedError, match="max_connections_per_peer"):
                Connection(path, 10.0)
            held.pop().close()

            def room_again():
                with contextlib.suppress(ConnectionRefusedError):
                    return Connection(path, 10.0)

            held.append(wait_until(room_again, 10, "room for one more"))
            config = client_config(secrets)
            held += [connect(w, config) for _ in range(2)]
            with pytest.raises(ConnectionRefusedError, match="its limit \\(max_connections\\)"):
                connect(w, config)
            assert w.alive()
        finally:
            for conn in held:
                conn.close()
        wait_until(lambda: "max_connections_per_peer" in w.log(), 5, "the refusal logged")


def test_descriptors_exhausted_the_worker_backs_off_and_serves_again(tmp_path):
    """Connections past the descriptor limit: the worker survives, logs the condition
    once (no spinning, no flood of tracebacks), and serves again once they close."""
    limit = 128
    with shoal_environment() as home, open(tmp_path / "stderr.log", "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "shoal", "worker"],
            env={**os.environ, "PYTHONPATH": REPO},
            stdout=err, stderr=err,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit)),
        )  # fmt: skip
        conns = []
        try:
            path = os.path.join(home, "worker.sock")
            wait_until(lambda: os.path.exists(path) or proc.poll() is not None, 60, "start")
            assert proc.poll() is None, (tmp_path / "stderr.log").read_text()
            for _ in range(limit + 40):
                s = socket.socket(socket.AF_UNIX)
                s.connect(path)
                conns.append(s)
            log = tmp_path / "stderr.log"
            wait_until(lambda: "Too many open files" in log.read_text(), 10, "EMFILE")
            before, size = cpu_seconds(proc.pid), log.stat().st_size
            time.sleep(2)
            assert cpu_seconds(proc.pid) - before < 0.5  # backing off, not spinning
            assert log.stat().st_size - size < 2000
            assert proc.poll() is None
            for s in conns:
                s.close()
            conns.clear()
            conn = Connection(path, 20.0)
            try:
                assert conn.call({"op": "mounts"})["mounts"] == []
            finally:
                conn.close()
            text = log.read_text()
            assert text.count("accept failed: Too many open files") == 1
            assert "accepting connections again" in text
            assert "Traceback" not in text
        finally:
            for s in conns:
                s.close()
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


def test_a_peer_that_never_reads_is_dropped(secrets):
    """Requests piped in, answers never read: past the send timeout the connection is
    dropped, its thread and the answers it held released; others are served meanwhile."""
    with worker(secrets, send_timeout=1.5) as w:
        threads = settled_threads(w)
        hog = unix(w.home)
        hog.sendall(frame({"op": "report"}) * 5000)
        wait_until(lambda: proc_status(w.pid, "Threads") > threads, 10, "its thread")
        other = Connection(os.path.join(w.home, "worker.sock"), 10.0)
        try:
            assert "tiers" in other.call({"op": "report"})["report"]
        finally:
            other.close()
        wait_until(lambda: proc_status(w.pid, "Threads") <= threads, 15, "the hog dropped")
        assert closed(hog, timeout=10)
        hog.close()
        assert "no traffic within its timeout" in w.log()


def test_idle_connections_are_closed_and_clients_reconnect_unseen(secrets):
    with worker(secrets, idle_timeout=1.0) as w:
        client = Client(load_config())
        tcp_conn = connect(w, client_config(secrets))
        try:
            assert client.mounts() == []
            pid = client.worker_pid()
            time.sleep(2.5)  # the worker closes both connections meanwhile
            assert client.mounts() == []  # no error: the client noticed and reconnected
            assert client.worker_pid() == pid
            assert tcp_conn.broken
            with pytest.raises(ConnectionError, match="is closed"):
                tcp_conn.send({"op": "mounts"})
        finally:
            client.close()
            tcp_conn.close()


def test_a_flood_of_bad_frames_is_rate_limited_in_the_log(secrets):
    with worker(secrets) as w:
        for _ in range(300):
            with unix(w.home) as s:
                s.sendall(FRAME.pack(3, 0) + b"\xc1\xc1\xc1")  # not msgpack
                error_of(answer_of(s))
        probe = Connection(os.path.join(w.home, "worker.sock"), 10.0)
        probe.close()
        lines = [line for line in w.log().splitlines() if "not valid msgpack" in line]
        assert 1 <= len(lines) <= 20


# --------------------------------------------------------------------- random frames


@pytest.fixture(scope="module")
def live():
    """One worker with both secrets for the property tests, and a client that may read."""
    secrets = Secrets()
    try:
        with worker(secrets, max_connections_per_peer=1024) as w:
            yield w, client_config(secrets)
    finally:
        secrets.close()


def still_serving(w: Running, config: Config) -> None:
    conn = connect(w, config)
    try:
        assert conn.call({"op": "mounts"})["ok"]
    finally:
        conn.close()


def exchange(sock: socket.socket, data: bytes) -> None:
    """Send ``data`` and read until the worker answers and closes, or stops answering."""
    sock.settimeout(10)
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        sock.sendall(data)
    with contextlib.suppress(ConnectionResetError, TimeoutError):
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):
            pass


msgpack_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=40)
)
msgpack_values = st.recursive(
    msgpack_scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=20,
)
ops = st.sampled_from(sorted(set(READ_REQUESTS) | {"touch", "hello", "auth", "jobs", "refresh"}))


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    prefix=st.binary(max_size=12),
    header_len=st.integers(0, 2**32 - 1),
    payload_len=st.integers(0, 2**32 - 1),
    body=st.one_of(
        st.binary(max_size=300), msgpack_values.map(lambda v: msgpack.packb(v, use_bin_type=True))
    ),
)
def test_random_frames_before_authentication(live, prefix, header_len, payload_len, body):
    w, config = live
    data = prefix if len(prefix) < FRAME.size else FRAME.pack(header_len, payload_len) + body
    with tcp(w.address) as s:
        exchange(s, data)
    still_serving(w, config)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(op=ops, fields=st.dictionaries(st.text(max_size=10), msgpack_values, max_size=6))
def test_random_requests_after_authentication(live, op, fields):
    """Random fields for the ops a reader may send: an answer (often an error) or a
    close, and the worker serves on."""
    w, config = live
    conn = connect(w, config)
    try:
        conn.sock.settimeout(20)
        header = {**fields, "op": op}
        exchange(conn.sock, frame(header))
    finally:
        conn.close()
    still_serving(w, config)
