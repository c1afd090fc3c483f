"""Authentication of TCP peers: a challenge-response keyed by the cluster secret, and a
second proof keyed by the admin secret. No secret ever crosses the wire.

On a TCP connection to a worker that holds a cluster secret, the first exchange is:

1. client -> worker: ``hello`` with ``pid``, ``version``, ``nonce`` (:data:`NONCE_BYTES`
   random bytes, ``Nc``) and ``admin`` (true when the client holds the admin secret);
2. worker -> client: ``{"ok": True, "auth": SCHEME, "nonce": Nw, "proof": Pw}`` where
   ``Pw = HMAC-SHA256(cluster secret, "worker" | T)`` and ``T`` is the :func:`transcript`
   of the connection (both nonces, the client's pid, the protocol version, whether TLS is
   on, whether admin rights are asked for);
3. the client checks ``Pw`` (the worker knows the secret), then sends ``auth`` with
   ``proof`` ``HMAC-SHA256(cluster secret, "client" | T)`` and, when it holds the admin
   secret, ``admin_proof`` ``HMAC-SHA256(admin secret, "admin" | T)``;
4. the worker checks them and answers as it answers ``hello`` (with ``admin`` true or
   false), or answers a ``PermissionError`` and closes the connection.

Fresh nonces on both sides make every proof good for one connection only; the role in
front of the transcript keeps a proof of one side from passing for the other's.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import os
import secrets
import stat

import msgpack

__all__ = [
    "ADMIN",
    "CLIENT",
    "MIN_SECRET_BYTES",
    "NONCE_BYTES",
    "SCHEME",
    "WORKER",
    "check_proof",
    "load_secret",
    "new_nonce",
    "new_secret",
    "proof",
    "transcript",
]

#: The proof scheme a worker names in its challenge.
SCHEME = "hmac-sha256"
#: Random bytes of each side's nonce.
NONCE_BYTES = 32
#: The shortest secret accepted (``shoal secret new`` writes 64 hex digits).
MIN_SECRET_BYTES = 32
_MAX_SECRET_BYTES = 4096
#: Roles of the proofs.
WORKER, CLIENT, ADMIN = "worker", "client", "admin"


def new_nonce() -> bytes:
    """A fresh nonce."""
    return os.urandom(NONCE_BYTES)


def new_secret() -> str:
    """A new secret: 32 random bytes as 64 hex digits."""
    return secrets.token_hex(32)


def transcript(
    client_nonce: bytes, worker_nonce: bytes, pid: int, version: int, tls: bool, admin: bool
) -> bytes:
    """The bytes both sides prove: the connection's nonces and parameters."""
    return msgpack.packb(
        ["shoal-auth", SCHEME, version, client_nonce, worker_nonce, pid, tls, admin],
        use_bin_type=True,
    )


def proof(secret: bytes, role: str, transcript: bytes) -> bytes:
    """``HMAC-SHA256(secret, role | 0 | transcript)``."""
    return hmac.new(secret, role.encode() + b"\0" + transcript, hashlib.sha256).digest()


def check_proof(secret: bytes, role: str, transcript: bytes, given: object) -> bool:
    """True if ``given`` is the proof of ``role`` over ``transcript`` (constant time)."""
    if not isinstance(given, bytes):
        return False
    return hmac.compare_digest(proof(secret, role, transcript), given)


def load_secret(path: str, what: str, *, min_bytes: int = MIN_SECRET_BYTES) -> bytes:
    """The secret held in file ``path`` (surrounding whitespace stripped), for setting
    ``what`` (named in errors, which never show the secret); ``min_bytes`` is the shortest
    accepted (a password chosen elsewhere, such as etcd's, may be shorter than a secret).

    Raises
    ------
    PermissionError
        The file is readable or writable by its group or by others (it must be 0600 or
        0400), or it cannot be read.
    FileNotFoundError
        No such file.
    ValueError
        Not a regular file, empty, shorter than ``min_bytes`` or over 4096 bytes.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise FileNotFoundError(
            errno.ENOENT, f"{what}: no such file; make one with `shoal secret new {path}`", path
        ) from None
    except PermissionError:
        raise PermissionError(errno.EACCES, f"{what}: cannot read the file", path) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{what}: {path} is not a regular file")
        if st.st_mode & 0o077:
            raise PermissionError(
                errno.EACCES,
                f"{what}: the file is open to its group or others (mode "
                f"{stat.S_IMODE(st.st_mode):04o}); a secret file must be 0600 or 0400: "
                f"chmod 600 {path}",
                path,
            )
        data = os.read(fd, _MAX_SECRET_BYTES + 1)
    finally:
        os.close(fd)
    secret = data.strip()
    if not secret:
        raise ValueError(f"{what}: {path} is empty; make a secret with `shoal secret new FILE`")
    if len(data) > _MAX_SECRET_BYTES:
        raise ValueError(f"{what}: {path} is over {_MAX_SECRET_BYTES} bytes: not a secret file")
    if len(secret) < min_bytes:
        raise ValueError(
            f"{what}: {path} holds {len(secret)} bytes; a secret needs at least "
            f"{min_bytes} (make one with `shoal secret new FILE`)"
        )
    return secret
