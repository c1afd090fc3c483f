"""etcd access for cluster mode: key-value calls, leases, prefix watches, and the
:class:`EtcdMetaStore`.

etcd3gw talks to etcd's JSON gateway (``/v3/`` from etcd 3.4 on, checked when a client
connects); this module uses it as the transport and does the rest itself: keys are bytes
(UTF-8 for text) and prefix ranges are computed on bytes, every call has a deadline, errors
become ``OSError`` subclasses naming the endpoint, and watches read the gateway's stream
directly so that a broken stream (etcd stopped) ends the watch instead of blocking forever.

An etcd that wants credentials gets them by reference (:class:`EtcdCredentials`): a user
whose password is read from a file when a token is needed (a token etcd no longer takes is
replaced once, then the call is made again), and a client certificate for mutual TLS. No
error message or log line shows a password or a token.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import json
import logging
import math
import re
import socket
import threading
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .._errors import ShoalError
from ._metastore import MetaStore

__all__ = [
    "DEFAULT_PREFIX",
    "EtcdAuthError",
    "EtcdClient",
    "EtcdCompactedError",
    "EtcdCredentials",
    "EtcdError",
    "EtcdMetaStore",
    "EtcdUnavailableError",
    "KeyValue",
    "WatchBatch",
    "WatchEvent",
    "check_prefix",
    "cmp_absent",
    "cmp_exists",
    "cmp_mod_revision",
    "cmp_value",
    "op_delete",
    "op_put",
    "parse_endpoint",
    "prefix_range_end",
]

DEFAULT_PREFIX = "/shoal/"
DEFAULT_PORT = 2379
DEFAULT_TIMEOUT = 3.0
_CONNECT_TIMEOUT = 2.0
_MIN_VERSION = (3, 4)
_API_PATH = "/v3/"
_SCAN_PAGE = 500
_HOW_TO_AUTHENTICATE = (
    "give etcd_user and etcd_password_file (--etcd-user, --etcd-password-file; "
    "SHOAL_ETCD_USER, SHOAL_ETCD_PASSWORD_FILE)"
)
_TLS_ALERT = re.compile(
    r"ALERT_(BAD_CERTIFICATE|CERTIFICATE_REQUIRED|UNKNOWN_CA|CERTIFICATE_UNKNOWN)"
)
_SSL_TEXT = re.compile(r"\[SSL: [A-Z0-9_]+\] ([^(]+)")

log = logging.getLogger(__name__)


class EtcdUnavailableError(ShoalError, ConnectionError):
    """etcd does not answer at its endpoint: refused, timed out, or a stream broke."""

    def __init__(self, message: str, code: int = errno.ECONNREFUSED):
        super().__init__(code, message)


class EtcdError(ShoalError, OSError):
    """etcd answered, but with an error, or with something that is not etcd's (EIO)."""

    def __init__(self, message: str):
        super().__init__(errno.EIO, message)


class EtcdCompactedError(EtcdError):
    """A watch asked for revisions that etcd has compacted away: read the state again."""


class EtcdAuthError(EtcdError, PermissionError):
    """etcd refused this client: no credentials or wrong ones, a right it lacks, or a TLS
    certificate on either side that the other does not accept (EACCES)."""

    def __init__(self, message: str):
        OSError.__init__(self, errno.EACCES, message)


class _StaleTokenError(EtcdAuthError):
    """etcd no longer takes the token (it expired, or etcd's auth store changed)."""


@dataclass(frozen=True)
class EtcdCredentials:
    """What Shoal shows etcd, by reference: only user names and file paths are held.

    Parameters
    ----------
    user, password_file
        The etcd user to authenticate as, and the file (mode 0600 or 0400) holding its
        password, read each time a token is needed; both or neither.
    ca
        PEM CA certificates that etcd's certificate is checked against (an ``https://``
        endpoint; None: the system's CAs).
    cert, key
        PEM client certificate and its (unencrypted) key, for mutual TLS; both or neither.

    Raises
    ------
    ValueError
        One of a pair without the other, or an empty value.
    """

    user: str | None = None
    password_file: str | None = None
    ca: str | None = None
    cert: str | None = None
    key: str | None = None

    def __post_init__(self) -> None:
        for name in ("user", "password_file", "ca", "cert", "key"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ValueError(f"etcd {name} must be a non-empty string, got {value!r}")
        if (self.user is None) != (self.password_file is None):
            raise ValueError("etcd user and password file go together: give both or neither")
        if (self.cert is None) != (self.key is None):
            raise ValueError("etcd client certificate and key go together: give both or neither")

    @classmethod
    def from_config(cls, config) -> EtcdCredentials:
        """The credentials a :class:`~shoal._config.Config` names (``etcd_user`` ...)."""
        return cls(
            user=config.etcd_user,
            password_file=config.etcd_password_file,
            ca=config.etcd_ca,
            cert=config.etcd_cert,
            key=config.etcd_key,
        )

    @property
    def tls(self) -> bool:
        """True when a CA or a client certificate is given (both need ``https://``)."""
        return self.ca is not None or self.cert is not None

    def password(self) -> str:
        """The password, read from :attr:`password_file` now.

        Raises
        ------
        PermissionError
            The file is open to its group or others, or cannot be read.
        FileNotFoundError
            No such file.
        ValueError
            Empty, not a regular file, or not UTF-8 text.
        """
        from .proto import load_secret

        data = load_secret(self.password_file, "etcd_password_file", min_bytes=1)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(
                f"etcd_password_file: {self.password_file} does not hold UTF-8 text"
            ) from None

    def check_tls_files(self) -> None:
        """Load the CA and the client certificate once, so that a missing or malformed
        file is named now rather than hidden in a failed connection.

        Raises
        ------
        FileNotFoundError, PermissionError
            A file that does not exist or cannot be read (named).
        ValueError
            A file that is not PEM, or a certificate and key that do not go together.
        """
        import ssl

        context = ssl.create_default_context()
        if self.ca is not None:
            try:
                context.load_verify_locations(cafile=self.ca)
            except ssl.SSLError as exc:
                raise ValueError(
                    f"etcd_ca {self.ca} is not a PEM file of certificates: {exc.reason}"
                ) from None
            except OSError as exc:
                raise _file_error("etcd_ca", exc, self.ca) from None
        if self.cert is not None:
            try:
                # an encrypted key would make OpenSSL prompt on the terminal: refuse it
                context.load_cert_chain(self.cert, self.key, password=b"")
            except ssl.SSLError as exc:
                raise ValueError(
                    f"etcd_cert {self.cert} and etcd_key {self.key} do not make a certificate "
                    f"chain (PEM, the key unencrypted): {exc.reason}"
                ) from None
            except OSError as exc:
                raise _file_error(
                    "etcd_cert or etcd_key", exc, f"{self.cert}, {self.key}"
                ) from None


def _file_error(what: str, exc: OSError, paths: str) -> OSError:
    """``exc`` (a file that cannot be opened) told in the terms of setting ``what``."""
    if isinstance(exc, FileNotFoundError):
        return FileNotFoundError(errno.ENOENT, f"{what}: no such file", exc.filename or paths)
    return PermissionError(errno.EACCES, f"{what}: cannot read the file", exc.filename or paths)


def parse_endpoint(endpoint: Any) -> str:
    """``endpoint`` checked and normalised to ``http(s)://HOST:PORT`` (port 2379 by default).

    Raises ``TypeError`` for a non-string and ``ValueError`` naming the problem for anything
    that is not a plain http or https URL of one etcd member.
    """
    if not isinstance(endpoint, str):
        raise TypeError(f"etcd endpoint must be a URL string, got {type(endpoint).__name__}")
    text = endpoint.strip()
    if "@" in text.partition("://")[2].partition("/")[0]:
        # checked first, as the messages below show the URL
        raise ValueError(
            "the etcd endpoint holds credentials, which do not belong in a URL: "
            + _HOW_TO_AUTHENTICATE
        )
    split = urllib.parse.urlsplit(text)
    if split.scheme not in ("http", "https"):
        raise ValueError(f"etcd endpoint must be an http:// or https:// URL, got {endpoint!r}")
    if not split.hostname:
        raise ValueError(f"etcd endpoint {endpoint!r} names no host")
    try:
        port = split.port
    except ValueError:
        raise ValueError(f"etcd endpoint {endpoint!r} has an invalid port") from None
    if port == 0:
        raise ValueError(f"etcd endpoint {endpoint!r} has port 0")
    if split.path not in ("", "/") or split.query or split.fragment:
        raise ValueError(f"etcd endpoint {endpoint!r} must have no path, query or fragment")
    host = f"[{split.hostname}]" if ":" in split.hostname else split.hostname
    return f"{split.scheme}://{host}:{port or DEFAULT_PORT}"


def check_prefix(prefix: Any) -> str:
    """``prefix`` if it is a key prefix Shoal can use: a string that starts and ends with ``/``."""
    if not isinstance(prefix, str):
        raise TypeError(f"etcd key prefix must be a str, got {type(prefix).__name__}")
    if not prefix.startswith("/") or not prefix.endswith("/"):
        raise ValueError(f"etcd key prefix must start and end with '/', got {prefix!r}")
    return prefix


def prefix_range_end(prefix: bytes) -> bytes:
    """The end (exclusive) of the key range holding every key that starts with ``prefix``.

    It is the prefix with its trailing ``0xff`` bytes dropped and the last byte left
    incremented. A prefix of only ``0xff`` bytes (or none) has no such bound: etcd's
    ``b"\\0"`` then means "to the end of the key space".
    """
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return b"\0"
    return trimmed[:-1] + bytes([trimmed[-1] + 1])


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


@dataclass(frozen=True)
class KeyValue:
    """One key as etcd holds it."""

    key: bytes
    value: bytes
    mod_revision: int
    lease: int

    @classmethod
    def from_wire(cls, kv: dict) -> KeyValue:
        """From the gateway's JSON form (base64 bytes, int64 as text, zeros left out)."""
        return cls(
            key=_unb64(kv["key"]),
            value=_unb64(kv.get("value", "")),
            mod_revision=int(kv.get("mod_revision", 0)),
            lease=int(kv.get("lease", 0)),
        )


@dataclass(frozen=True)
class WatchEvent:
    """A change seen by a watch: ``kind`` is ``"PUT"`` or ``"DELETE"``."""

    kind: str
    kv: KeyValue


@dataclass(frozen=True)
class WatchBatch:
    """One message of a watch: the store's ``revision`` when it was sent, and the changes
    it carries (none in the first one, which says that the watch is in place)."""

    revision: int
    events: list[WatchEvent]


_ERRNO_TEXT = re.compile(r"\[Errno -?\d+\] ([^'\"()]+)")


def _reason(exc: BaseException) -> str:
    """A short cause out of a requests/urllib3 error text ("Connection refused")."""
    text = getattr(exc, "detail_text", None) or str(exc)
    match = _ERRNO_TEXT.search(text)
    if match:
        return match.group(1).strip().rstrip(".")
    return text if len(text) <= 200 else text[:200] + "..."


def _error_text(exc: BaseException) -> str:
    """etcd's own message out of a gateway error body, or the body itself."""
    text = getattr(exc, "detail_text", None) or str(exc)
    try:
        doc = json.loads(text)
    except (TypeError, ValueError):
        return text.strip()[:200]
    if isinstance(doc, dict):
        return str(doc.get("error") or doc.get("message") or doc)
    return str(doc)


class EtcdClient:
    """A connection to one etcd member's JSON gateway, with a deadline on every call.

    Parameters
    ----------
    endpoint
        ``http://HOST:PORT`` of an etcd member (3.4 or later).
    timeout
        Seconds a call may take (connecting takes at most 2 of them).
    credentials
        What etcd wants to see, if anything: a user (authenticated here, at once) and a
        client certificate; the CA its certificate is checked against.

    Attributes
    ----------
    endpoint
        The endpoint, normalised to ``http(s)://HOST:PORT``.
    version
        The etcd server's version, e.g. ``"3.4.23"``.
    credentials
        The :class:`EtcdCredentials` in use (none by default).

    Raises
    ------
    EtcdUnavailableError
        (a ``ConnectionError``) when nothing answers at ``endpoint`` within ``timeout``.
    EtcdAuthError
        (a ``PermissionError`` naming etcd and the user) when etcd refuses the user and
        password, the client certificate or its absence, or shows a certificate that the
        CA does not vouch for; later, from any call, when etcd wants credentials that were
        not given or refuses an operation to the user.
    EtcdError
        when what answers is not etcd 3.4 or later.
    ValueError
        for a malformed endpoint or timeout, TLS settings with an ``http://`` endpoint, an
        empty password file or a CA, certificate or key file that is not PEM.
    FileNotFoundError, PermissionError
        naming a password, CA, certificate or key file that is missing, cannot be read, or
        (a password file) is open to its group or others.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        credentials: EtcdCredentials | None = None,
    ):
        self.endpoint = parse_endpoint(endpoint)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise TypeError(f"timeout must be a number of seconds, got {timeout!r}")
        if not 0 < timeout < math.inf:
            raise ValueError(f"timeout must be a positive finite number of seconds, got {timeout}")
        if credentials is None:
            credentials = EtcdCredentials()
        elif not isinstance(credentials, EtcdCredentials):
            raise TypeError(
                f"credentials must be EtcdCredentials, got {type(credentials).__name__}"
            )
        if credentials.tls and not self.endpoint.startswith("https://"):
            raise ValueError(
                f"etcd at {self.endpoint}: a CA or client certificate needs an https:// endpoint"
            )
        credentials.check_tls_files()
        import etcd3gw

        self.credentials = credentials
        self.timeout = float(timeout)
        self._timeouts = (min(_CONNECT_TIMEOUT, self.timeout), self.timeout)
        split = urllib.parse.urlsplit(self.endpoint)
        self._gw = etcd3gw.Etcd3Client(
            host=split.hostname,
            port=split.port,
            protocol=split.scheme,
            timeout=self._timeouts,
            api_path=_API_PATH,
        )
        # given with each request: a session's own verify loses to $REQUESTS_CA_BUNDLE
        self._tls: dict[str, Any] = {}
        if credentials.ca is not None:
            self._tls["verify"] = credentials.ca
        if credentials.cert is not None:
            self._tls["cert"] = (credentials.cert, credentials.key)
        self._lock = threading.Lock()
        self._auth_lock = threading.Lock()
        self._token: str | None = None  # sent as the Authorization header; never shown
        self._streams: set = set()  # open watch responses, shut down by close()
        self._closed = False
        try:
            self.version = self._check_version()
            if credentials.user is not None:
                self._authenticate()
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> EtcdClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EtcdClient({self.endpoint!r})"

    # ------------------------------------------------------------------ transport

    def _unavailable(self, exc: BaseException, what: str) -> EtcdError:
        import requests

        for cause in (exc, exc.__context__):  # etcd3gw raises its own error from requests'
            if isinstance(cause, requests.exceptions.SSLError):
                return self._tls_refused(cause)
        if isinstance(exc, requests.exceptions.Timeout) or "timed out" in str(exc).lower():
            return EtcdUnavailableError(
                f"etcd at {self.endpoint} did not answer {what} within {self.timeout:g} s",
                errno.ETIMEDOUT,
            )
        return EtcdUnavailableError(f"cannot reach etcd at {self.endpoint}: {_reason(exc)}")

    def _tls_refused(self, exc: BaseException) -> EtcdError:
        """What a failed TLS handshake with etcd means, in the terms of the settings."""
        text = str(exc)
        match = _SSL_TEXT.search(text)
        detail = match.group(1).strip() if match else _reason(exc)
        creds = self.credentials
        if "CERTIFICATE_VERIFY_FAILED" in text:
            judge = f"etcd_ca {creds.ca}" if creds.ca else "the system's CAs (set etcd_ca)"
            return EtcdAuthError(
                f"etcd at {self.endpoint} shows a certificate that {judge} does not vouch "
                f"for: {detail}"
            )
        if _TLS_ALERT.search(text):
            if creds.cert is None:
                return EtcdAuthError(
                    f"etcd at {self.endpoint} refused the connection: it wants a client "
                    "certificate; give etcd_cert and etcd_key (--etcd-cert, --etcd-key)"
                )
            return EtcdAuthError(
                f"etcd at {self.endpoint} refused the client certificate etcd_cert "
                f"{creds.cert}: {detail}"
            )
        return EtcdUnavailableError(f"TLS with etcd at {self.endpoint} failed: {detail}")

    def _auth_refusal(self, what: str, text: str) -> EtcdAuthError | None:
        """The :class:`EtcdAuthError` that etcd's error ``text`` for ``what`` means, or
        None when it is not about credentials."""
        lowered = text.lower()
        user = self.credentials.user
        who = f"user {user!r}" if user is not None else "a client with no user"
        if "invalid auth token" in lowered or "auth store is old" in lowered:
            return _StaleTokenError(
                f"etcd at {self.endpoint} refused the token of {who} for {what}: {text}"
            )
        if "user name is empty" in lowered:
            if user is not None:  # authentication was enabled after this client connected
                return _StaleTokenError(f"etcd at {self.endpoint} wants a token for {what}")
            return EtcdAuthError(
                f"etcd at {self.endpoint} requires authentication and refused {what} to "
                f"{who}: {_HOW_TO_AUTHENTICATE}"
            )
        if "authentication failed" in lowered:
            return EtcdAuthError(
                f"etcd at {self.endpoint} refused {who}: wrong user name or password (the "
                f"password is read from etcd_password_file {self.credentials.password_file})"
            )
        if "permission denied" in lowered:
            return EtcdAuthError(
                f"etcd at {self.endpoint} refused {what} to {who}: permission denied (the "
                "user needs read and write on the cluster's prefix)"
            )
        return None

    def _authenticate(self, stale: str | None = None) -> None:
        """Get a token for the user, the password read from its file now; with ``stale``
        (the token etcd refused), only if no other thread has replaced it meanwhile."""
        creds = self.credentials
        with self._auth_lock:
            if stale is not None and self._token != stale:
                return
            body = {"name": creds.user, "password": creds.password()}
            try:
                result = self._post("/auth/authenticate", body, None)
            except EtcdAuthError:
                raise
            except EtcdError as exc:
                if "authentication is not enabled" not in str(exc):
                    raise
                if stale is None:
                    log.warning(
                        "etcd at %s has authentication disabled: user %r is not used",
                        self.endpoint,
                        creds.user,
                    )
                self._token = None
                return
            token = result.get("token")
            if not isinstance(token, str) or not token:
                raise EtcdError(
                    f"etcd at {self.endpoint} answered /auth/authenticate for user "
                    f"{creds.user!r} with no token"
                )
            self._token = token
        log.debug("authenticated to etcd at %s as user %r", self.endpoint, creds.user)

    def _renew(self, stale: str | None) -> None:
        """:meth:`_authenticate` again after etcd refused token ``stale``; any failure
        is an :class:`EtcdError` (the callers' threads retry those)."""
        try:
            self._authenticate(stale)
        except EtcdError:
            raise
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise EtcdAuthError(
                f"cannot authenticate to etcd at {self.endpoint} as user "
                f"{self.credentials.user!r} again: {reason}"
            ) from exc

    def _check_version(self) -> str:
        import requests

        try:
            resp = self._gw.session.get(
                self.endpoint + "/version", timeout=self._timeouts, **self._tls
            )
        except requests.RequestException as exc:
            raise self._unavailable(exc, "/version") from exc
        try:
            text = resp.json()["etcdserver"]
            version = tuple(int(part) for part in text.split(".")[:2])
        except (ValueError, KeyError, TypeError, AttributeError):
            raise EtcdError(
                f"{self.endpoint} does not answer like etcd (GET /version gave HTTP "
                f"{resp.status_code}); is the endpoint an etcd client URL?"
            ) from None
        if version < _MIN_VERSION:
            raise EtcdError(
                f"etcd at {self.endpoint} is version {text}; Shoal needs 3.4 or later "
                "(its JSON gateway under /v3/)"
            )
        return text

    def call(self, path: str, body: dict) -> dict:
        """POST ``body`` to the gateway's ``path`` (e.g. ``"/kv/range"``); its JSON answer.

        With a user, a token that etcd no longer takes is replaced once and the call made
        again."""
        token = self._token
        try:
            return self._post(path, body, token)
        except _StaleTokenError:
            if self.credentials.user is None:
                raise
        self._renew(token)
        return self._post(path, body, self._token)

    def _post(self, path: str, body: dict, token: str | None) -> dict:
        import requests
        from etcd3gw import exceptions as gw

        if self._closed:
            raise EtcdError(f"the client of etcd at {self.endpoint} is closed")
        headers = {"Authorization": token} if token is not None else None
        try:
            return self._gw.post(self._gw.get_url(path), json=body, headers=headers, **self._tls)
        except gw.ConnectionTimeoutError as exc:
            raise EtcdUnavailableError(
                f"etcd at {self.endpoint} did not answer {path} within {self.timeout:g} s",
                errno.ETIMEDOUT,
            ) from exc
        except gw.ConnectionFailedError as exc:
            # also HTTP 503: etcd is up but has no leader
            raise self._unavailable(exc, path) from exc
        except gw.Etcd3Exception as exc:
            text = _error_text(exc)
            refusal = self._auth_refusal(path, text)
            if refusal is not None:
                raise refusal from None
            raise EtcdError(f"etcd at {self.endpoint} refused {path}: {text}") from exc
        except requests.RequestException as exc:
            raise self._unavailable(exc, path) from exc
        except ValueError as exc:
            raise EtcdError(f"etcd at {self.endpoint} answered {path} with non-JSON") from exc

    # ------------------------------------------------------------------ key-value

    def range(
        self,
        key: bytes,
        range_end: bytes | None = None,
        *,
        limit: int = 0,
        revision: int = 0,
    ) -> tuple[list[KeyValue], int, bool]:
        """Keys from ``key`` up to ``range_end`` (or just ``key``), in key order:
        ``(kvs, revision of the answer, more keys beyond limit)``."""
        body: dict[str, Any] = {"key": _b64(key)}
        if range_end is not None:
            body["range_end"] = _b64(range_end)
        if limit:
            body["limit"] = limit
        if revision:
            body["revision"] = revision
        result = self.call("/kv/range", body)
        kvs = [KeyValue.from_wire(kv) for kv in result.get("kvs", ())]
        return kvs, int(result["header"]["revision"]), bool(result.get("more", False))

    def get(self, key: bytes) -> KeyValue | None:
        """The key, or None."""
        kvs, _, _ = self.range(key)
        return kvs[0] if kvs else None

    def snapshot(self, prefix: bytes, *, page: int = _SCAN_PAGE) -> tuple[list[KeyValue], int]:
        """Every key under ``prefix`` at one revision, and that revision."""
        pages = list(self._pages(prefix, page))
        return [kv for batch, _ in pages for kv in batch], pages[0][1]

    def scan(self, prefix: bytes, *, page: int = _SCAN_PAGE) -> Iterator[KeyValue]:
        """Every key under ``prefix`` in key order, read in pages at one revision."""
        for batch, _ in self._pages(prefix, page):
            yield from batch

    def _pages(self, prefix: bytes, page: int) -> Iterator[tuple[list[KeyValue], int]]:
        end = prefix_range_end(prefix)
        start, revision = prefix, 0
        while True:
            kvs, rev, more = self.range(start, end, limit=page, revision=revision)
            revision = revision or rev
            yield kvs, revision
            if not more or not kvs:
                return
            start = kvs[-1].key + b"\0"

    def put(self, key: bytes, value: bytes, *, lease: int = 0) -> int:
        """Store ``value`` under ``key`` (attached to ``lease`` when given); the revision."""
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = lease
        return int(self.call("/kv/put", body)["header"]["revision"])

    def delete(self, key: bytes, range_end: bytes | None = None) -> int:
        """Delete ``key`` (or the range up to ``range_end``); how many keys existed."""
        body = {"key": _b64(key)}
        if range_end is not None:
            body["range_end"] = _b64(range_end)
        return int(self.call("/kv/deleterange", body).get("deleted", 0))

    def txn(self, compare: list[dict], success: list[dict], failure: list[dict]) -> bool:
        """Run a transaction built with :func:`op_put`, :func:`cmp_exists` ...; True when
        every comparison held (``success`` ran), False when ``failure`` ran."""
        result = self.call("/kv/txn", {"compare": compare, "success": success, "failure": failure})
        return bool(result.get("succeeded", False))

    # ------------------------------------------------------------------ leases

    def grant(self, ttl: int) -> tuple[int, int]:
        """A new lease: ``(id, granted ttl)`` (etcd may raise a small ttl to its minimum)."""
        result = self.call("/lease/grant", {"TTL": ttl, "ID": 0})
        if result.get("error"):
            raise EtcdError(f"etcd at {self.endpoint} granted no lease: {result['error']}")
        return int(result["ID"]), int(result.get("TTL", ttl))

    def keepalive(self, lease: int) -> int:
        """Renew ``lease``; its new TTL in seconds, or 0 when it has expired or is unknown."""
        result = self.call("/lease/keepalive", {"ID": lease}).get("result", {})
        return int(result.get("TTL", 0))

    def revoke(self, lease: int) -> None:
        """Revoke ``lease``: every key attached to it is deleted."""
        self.call("/lease/revoke", {"ID": lease})

    # ------------------------------------------------------------------ watch

    def watch(
        self, prefix: bytes, start_revision: int, *, idle: float = 10.0
    ) -> Iterator[WatchBatch]:
        """Changes to keys under ``prefix`` from ``start_revision`` on, a batch at a time.

        The first batch has no events: the watch is in place. The iterator ends when
        ``idle`` seconds pass without a message (every change up to the first batch's
        revision has then been sent: reopen after it) or when the client closes.

        Raises :class:`EtcdUnavailableError` when the stream cannot open or breaks,
        :class:`EtcdCompactedError` when ``start_revision`` is compacted,
        :class:`EtcdAuthError` when etcd refuses the watch to this client (a token it no
        longer takes is replaced once first).
        """
        request = {
            "create_request": {
                "key": _b64(prefix),
                "range_end": _b64(prefix_range_end(prefix)),
                "start_revision": start_revision,
            }
        }
        token = self._token
        started = False
        try:
            for batch in self._watch_stream(request, start_revision, idle, token):
                started = True
                yield batch
            return
        except _StaleTokenError:
            if started or self.credentials.user is None:
                raise
        self._renew(token)
        yield from self._watch_stream(request, start_revision, idle, self._token)

    def _watch_stream(
        self, request: dict, start_revision: int, idle: float, token: str | None
    ) -> Iterator[WatchBatch]:
        import requests

        # A session of its own: the stream holds its connection for as long as it is open.
        session = requests.Session()
        resp = None
        try:
            try:
                resp = session.post(
                    self._gw.get_url("/watch"),
                    json=request,
                    stream=True,
                    timeout=(self._timeouts[0], idle),
                    headers={"Authorization": token} if token is not None else None,
                    **self._tls,
                )
            except requests.RequestException as exc:
                raise self._unavailable(exc, "/watch") from exc
            if resp.status_code != 200:
                text = _error_text(resp.text)
                refusal = self._auth_refusal("/watch", text)
                if refusal is not None:
                    raise refusal
                raise EtcdError(
                    f"etcd at {self.endpoint} refused /watch: HTTP {resp.status_code} {text}"
                )
            with self._lock:
                if self._closed:
                    return
                self._streams.add(resp)
            yield from self._read_stream(resp, start_revision)
        finally:
            with self._lock:
                self._streams.discard(resp)
            if resp is not None:
                resp.close()
            session.close()

    def _read_stream(self, resp, start_revision: int) -> Iterator[WatchBatch]:
        import requests
        from urllib3.exceptions import ReadTimeoutError

        pending = b""
        try:
            for chunk in resp.iter_content(chunk_size=None):
                pending += chunk
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    if line.strip():
                        yield self._message(line, start_revision)
        except requests.exceptions.ConnectionError as exc:
            if self._closed:
                return
            if exc.args and isinstance(exc.args[0], ReadTimeoutError):
                return  # idle: the caller reopens from its next revision
            raise self._broken(exc) from exc
        except requests.RequestException as exc:
            if self._closed:
                return
            raise self._broken(exc) from exc
        if not self._closed:
            raise EtcdUnavailableError(f"etcd at {self.endpoint} closed the watch stream")

    def _broken(self, exc: BaseException) -> EtcdUnavailableError:
        return EtcdUnavailableError(
            f"the watch stream from etcd at {self.endpoint} broke: {_reason(exc)}"
        )

    def _message(self, line: bytes, start_revision: int) -> WatchBatch:
        try:
            message = json.loads(line)
        except ValueError:
            raise EtcdError(f"etcd at {self.endpoint} sent a malformed watch message") from None
        if "error" in message:
            error = message["error"]
            text = error.get("message", error) if isinstance(error, dict) else error
            code = error.get("http_code") if isinstance(error, dict) else None
            if code == 503:
                raise EtcdUnavailableError(f"etcd at {self.endpoint} stopped the watch: {text}")
            raise EtcdError(f"etcd at {self.endpoint} stopped the watch: {text}")
        result = message.get("result", {})
        if result.get("canceled"):
            if int(result.get("compact_revision", 0)):
                raise EtcdCompactedError(
                    f"etcd at {self.endpoint} compacted revision {start_revision} away "
                    f"(oldest kept: {result['compact_revision']})"
                )
            reason = str(result.get("cancel_reason", "no reason given"))
            refusal = self._auth_refusal("/watch", reason)
            if refusal is not None:
                raise refusal
            raise EtcdError(f"etcd at {self.endpoint} cancelled the watch: {reason}")
        events = [
            WatchEvent(event.get("type", "PUT"), KeyValue.from_wire(event["kv"]))
            for event in result.get("events", ())
        ]
        return WatchBatch(int(result.get("header", {}).get("revision", 0)), events)

    def close(self) -> None:
        """Close the connections; open watches end."""
        with self._lock:
            self._closed = True
            streams = list(self._streams)
        for resp in streams:
            # shutdown wakes the thread blocked reading the stream; close alone may not
            sock = getattr(getattr(resp.raw, "connection", None), "sock", None)
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        self._gw.session.close()


def op_put(key: bytes, value: bytes, *, lease: int = 0) -> dict:
    """A put of one key, in a transaction."""
    put: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
    if lease:
        put["lease"] = lease
    return {"request_put": put}


def op_delete(key: bytes) -> dict:
    """A delete of one key, in a transaction."""
    return {"request_delete_range": {"key": _b64(key)}}


def cmp_exists(key: bytes) -> dict:
    """A comparison of a transaction: ``key`` exists."""
    return {"key": _b64(key), "target": "CREATE", "result": "GREATER", "create_revision": 0}


def cmp_absent(key: bytes) -> dict:
    """A comparison of a transaction: ``key`` does not exist."""
    return {"key": _b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": 0}


def cmp_value(key: bytes, value: bytes) -> dict:
    """A comparison of a transaction: ``key`` holds ``value``."""
    return {"key": _b64(key), "target": "VALUE", "result": "EQUAL", "value": _b64(value)}


def cmp_mod_revision(key: bytes, revision: int) -> dict:
    """A comparison of a transaction: ``key`` was last changed at ``revision``."""
    return {"key": _b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": revision}


class EtcdMetaStore(MetaStore):
    """The cluster's :class:`MetaStore`: JSON documents in etcd under ``prefix + "meta/"``.

    Parameters
    ----------
    endpoint
        ``http://HOST:PORT`` of an etcd member.
    prefix
        Namespace of this Shoal cluster in etcd (starts and ends with ``/``).
    timeout
        Seconds a call may take.
    credentials
        What etcd wants to see, if anything (see :class:`EtcdClient`).

    Raises
    ------
    EtcdUnavailableError
        (a ``ConnectionError``) from the constructor or any call when etcd does not answer.
    EtcdAuthError
        (a ``PermissionError``) from the constructor or any call when etcd refuses the
        credentials, or wants some that were not given.
    """

    def __init__(
        self,
        endpoint: str,
        prefix: str = DEFAULT_PREFIX,
        *,
        timeout: float = 3.0,
        credentials: EtcdCredentials | None = None,
    ):
        self.prefix = check_prefix(prefix)
        self._root = (prefix + "meta/").encode()
        self._client = EtcdClient(endpoint, timeout=timeout, credentials=credentials)

    @property
    def endpoint(self) -> str:
        """The etcd endpoint, normalised."""
        return self._client.endpoint

    def _key(self, key: Any) -> bytes:
        if not isinstance(key, str):
            raise TypeError(f"MetaStore keys are str, got {type(key).__name__}")
        return self._root + key.encode()

    def get(self, key: str) -> Any | None:
        # docstring inherited
        kv = self._client.get(self._key(key))
        return None if kv is None else json.loads(kv.value)

    def put(self, key: str, value: Any) -> None:
        # docstring inherited
        k = self._key(key)
        self._client.put(k, json.dumps(value, sort_keys=True).encode())

    def delete(self, key: str) -> bool:
        # docstring inherited
        return self._client.delete(self._key(key)) > 0

    def scan(self, prefix: str) -> Iterator[tuple[str, Any]]:
        # docstring inherited
        skip = len(self._root)
        for kv in self._client.scan(self._key(prefix)):
            yield kv.key[skip:].decode(), json.loads(kv.value)

    def compare_and_set(self, changes: Mapping[str, tuple[Any | None, Any | None]]) -> bool:
        # docstring inherited
        compare, success = [], []
        for key, (old, new) in changes.items():
            k = self._key(key)
            if old is None:
                compare.append(cmp_absent(k))
            else:
                compare.append(cmp_value(k, json.dumps(old, sort_keys=True).encode()))
            if new is None:
                success.append(op_delete(k))
            else:
                success.append(op_put(k, json.dumps(new, sort_keys=True).encode()))
        return self._client.txn(compare, success, [])

    def close(self) -> None:
        # docstring inherited
        self._client.close()
