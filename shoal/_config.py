"""Configuration: one frozen, validated dataclass, from defaults, ``$SHOAL_HOME/config.yaml``
and ``SHOAL_*`` environment variables (later sources win).

Defaults work out of the box on one node: an SSD tier under ``$SHOAL_HOME/cache`` sized to
20% of the free disk (at most 100 GiB) and, where ``/dev/shm`` exists, a MEM tier there
sized to 10% of RAM.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ._units import parse_size

__all__ = ["Config", "default_home", "load_config"]

MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40
SHM = "/dev/shm"
# Past these a page, chunk or region size is a mistake, not a setting.
_MAX_UNIT = TiB
_U64_MAX = (1 << 64) - 1
# The page store numbers a tier's regions with 4 bytes.
_MAX_REGIONS = 1 << 32

# SHOAL_* variable -> field; sizes are parsed, the rest taken as text
_ENV_FIELDS = {
    "SHOAL_PAGE_SIZE": "page_size",
    "SHOAL_CHUNK_SIZE": "chunk_size",
    "SHOAL_REGION_SIZE": "region_size",
    "SHOAL_HIGH_WATERMARK": "high_watermark",
    "SHOAL_LOW_WATERMARK": "low_watermark",
    "SHOAL_HOST_ID": "host_id",
    "SHOAL_LISTEN": "listen",
    "SHOAL_METRICS_LISTEN": "metrics_listen",
    "SHOAL_ETCD": "etcd",
    "SHOAL_MEMBERSHIP_FILE": "membership_file",
    "SHOAL_CACHE_DIR": "cache_dir",
    "SHOAL_CAPACITY": "capacity",
    "SHOAL_MEM_CAPACITY": "mem_capacity",
    "SHOAL_METADATA_CACHE": "metadata_cache",
    "SHOAL_DIRTY_BYTES": "dirty_bytes",
    "SHOAL_DIRTY_WAIT": "dirty_wait",
    "SHOAL_CLUSTER_SECRET_FILE": "cluster_secret_file",
    "SHOAL_ADMIN_SECRET_FILE": "admin_secret_file",
    "SHOAL_TLS_CERT": "tls_cert",
    "SHOAL_TLS_KEY": "tls_key",
    "SHOAL_TLS_CA": "tls_ca",
    "SHOAL_ALLOWED_MOUNTS": "allowed_mounts",
    "SHOAL_CREDENTIAL_ENV": "credential_env",
    "SHOAL_CREDENTIAL_DIR": "credential_dir",
    "SHOAL_MAX_CONNECTIONS": "max_connections",
    "SHOAL_MAX_CONNECTIONS_PER_PEER": "max_connections_per_peer",
    "SHOAL_IDLE_TIMEOUT": "idle_timeout",
    "SHOAL_SEND_TIMEOUT": "send_timeout",
    "SHOAL_ETCD_USER": "etcd_user",
    "SHOAL_ETCD_PASSWORD_FILE": "etcd_password_file",
    "SHOAL_ETCD_CA": "etcd_ca",
    "SHOAL_ETCD_CERT": "etcd_cert",
    "SHOAL_ETCD_KEY": "etcd_key",
}
# Settings that are lists: a comma-separated value in a variable.
_LIST_FIELDS = ("allowed_mounts", "credential_env")
_PATH_FIELDS = (
    "cluster_secret_file",
    "admin_secret_file",
    "tls_cert",
    "tls_key",
    "tls_ca",
    "credential_dir",
    "etcd_password_file",
    "etcd_ca",
    "etcd_cert",
    "etcd_key",
)
#: What a worker mounts by default: object stores, no local directory, no web server.
DEFAULT_ALLOWED_MOUNTS = ("s3://", "gs://", "gcs://", "abfs://", "az://")
#: Environment variables a mount may name as its credentials by default.
DEFAULT_CREDENTIAL_ENV = ("AWS_*",)
_SIZE_FIELDS = (
    "page_size", "chunk_size", "region_size", "capacity", "mem_capacity", "metadata_cache",
    "dirty_bytes",
)  # fmt: skip


def default_home(environ: Mapping[str, str] = os.environ) -> str:
    """``$SHOAL_HOME``, or ``~/.shoal``."""
    return os.path.abspath(os.path.expanduser(environ.get("SHOAL_HOME") or "~/.shoal"))


def _existing(path: str) -> str:
    """``path``, or its nearest ancestor that exists."""
    probe = path
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    return probe


def _free_bytes(path: str) -> int:
    st = os.statvfs(_existing(path))
    return st.f_bavail * st.f_frsize


def _filesystem_bytes(path: str) -> tuple[int, str]:
    """Size of the filesystem that holds ``path``, and the existing path measured."""
    probe = _existing(path)
    st = os.statvfs(probe)
    return st.f_blocks * st.f_frsize, probe


def _ram_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


@dataclass(frozen=True)
class Config:
    """Settings of a Shoal worker and its clients.

    Attributes
    ----------
    home
        State directory: sockets, lock, index, metadata (``$SHOAL_HOME``, ``~/.shoal``).
    cache_dir
        Directory of the SSD tier (default ``home/cache``).
    capacity
        Bytes of the SSD tier (default 20% of the free disk, at most 100 GiB); at most the
        size of the filesystem that holds ``cache_dir``.
    mem_capacity
        Bytes of the MEM tier on ``/dev/shm`` (default 10% of RAM, at most the size of
        ``/dev/shm``; 0 disables it); at most the size of ``/dev/shm``.
    page_size, chunk_size, region_size
        Storage page, placement chunk and page-store region sizes. Pages are a multiple of
        4 KiB; a chunk is a whole number of pages; a region holds at least one page. None
        is over 1 TiB, and a tier holds at most 2**32 regions.
    high_watermark, low_watermark
        Eviction starts above ``high`` and stops at ``low`` (fractions of a tier).
    host_id
        This machine's identity in a cluster (default: the hostname).
    listen
        ``HOST:PORT`` for the worker's TCP endpoint (cluster mode), or None.
    metrics_listen
        ``HOST:PORT`` where the worker serves Prometheus metrics over HTTP (``/metrics``;
        port 0: any free one, named in ``shoal report``), or None for none. Unauthenticated:
        keep it on loopback or a monitoring network.
    etcd
        etcd endpoint URL (cluster mode), or None for the single-node default.
    membership_file
        A YAML or JSON file listing the cluster's workers, for clusters without etcd
        (see :func:`shoal.control._membership.load_static_members`); None by default.
    cluster_secret_file
        A file holding the cluster's secret: every TCP peer (worker or client) proves it
        knows it before any op. Required by a worker listening beyond loopback.
    admin_secret_file
        A file holding the admin secret: a client over TCP that proves it may mount,
        unmount, free, write job records and stop (the worker's own user may on the
        Unix socket without it).
    tls_cert, tls_key, tls_ca
        TLS on the worker's TCP port: its certificate and key (worker), the CA that signed
        the workers' certificates (clients and workers); None: no TLS.
    allowed_mounts
        URI prefixes a worker mounts (``s3://``, ``file:///data/``, ``gs://bucket/``):
        object stores by default, no ``file://`` or ``http(s)://``. A prefix matches whole
        names (``file:///data/`` admits neither ``file:///data-other`` nor
        ``file:///data/../etc``), and a ``file:`` mount must stay under one once symbolic
        links are resolved (see :class:`shoal.control._admission.MountPolicy`).
    credential_env
        Names or ``fnmatch`` patterns (case-sensitive) of the environment variables of the
        worker that a mount may name as its credentials (``AWS_*`` by default).
    credential_dir
        The directory under which a mount may name credential files (symbolic links
        resolved); None: none may.
    max_connections, max_connections_per_peer
        Connections a worker serves at once, in all and per peer (a TCP peer's address, a
        Unix-socket peer's uid); one more is refused with an error.
    metadata_cache
        Bytes of memory a worker's cache of file metadata (stats and listings) may take,
        as estimated (128 MiB by default); past it the oldest entries go.
    dirty_bytes
        Bytes of written files a worker holds before they reach their under-store (the
        dirty budget; default half of ``capacity``), kept under ``home/dirty``; a writer
        past it waits up to ``dirty_wait`` seconds for uploads to make room, then gets
        ``ENOSPC``.
    dirty_wait
        Seconds a writer waits for room in the dirty budget (default 30).
    idle_timeout
        Seconds a worker keeps a connection that sends no request (clients reconnect).
    send_timeout
        Seconds a worker waits for a peer to take any of an answer before dropping it.
    etcd_user, etcd_password_file
        The etcd user Shoal authenticates as, and the file (mode 0600 or 0400) holding its
        password, read when a token is needed and never logged; both or neither.
    etcd_ca
        PEM CA certificates that etcd's certificate is checked against (an ``https://``
        endpoint; default: the system's CAs).
    etcd_cert, etcd_key
        PEM client certificate and key that Shoal shows etcd (mutual TLS, an ``https://``
        endpoint); both or neither.
    """

    home: str = field(default_factory=default_home)
    cache_dir: str | None = None
    capacity: int | None = None
    mem_capacity: int | None = None
    metadata_cache: int = 128 * MiB
    dirty_bytes: int | None = None
    dirty_wait: float = 30.0
    page_size: int = 4 * MiB
    chunk_size: int = 64 * MiB
    region_size: int = 64 * MiB
    high_watermark: float = 0.95
    low_watermark: float = 0.85
    host_id: str = field(default_factory=socket.gethostname)
    listen: str | None = None
    metrics_listen: str | None = None
    etcd: str | None = None
    membership_file: str | None = None
    cluster_secret_file: str | None = None
    admin_secret_file: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None
    allowed_mounts: tuple[str, ...] = DEFAULT_ALLOWED_MOUNTS
    credential_env: tuple[str, ...] = DEFAULT_CREDENTIAL_ENV
    credential_dir: str | None = None
    max_connections: int = 2048
    max_connections_per_peer: int = 512
    idle_timeout: float = 600.0
    send_timeout: float = 60.0
    etcd_user: str | None = None
    etcd_password_file: str | None = None
    etcd_ca: str | None = None
    etcd_cert: str | None = None
    etcd_key: str | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "home", os.path.abspath(os.path.expanduser(_text(self.home, "home"))))
        cache_dir = self.cache_dir or os.path.join(self.home, "cache")
        set_(self, "cache_dir", os.path.abspath(os.path.expanduser(_text(cache_dir, "cache_dir"))))
        for name in _SIZE_FIELDS:
            value = getattr(self, name)
            if value is not None:
                set_(self, name, _size(value, name))
        for name in ("high_watermark", "low_watermark"):
            set_(self, name, _fraction(getattr(self, name), name))
        if not self.low_watermark < self.high_watermark:
            raise ValueError(
                f"low_watermark ({self.low_watermark}) must be below high_watermark "
                f"({self.high_watermark})"
            )
        if self.page_size <= 0 or self.page_size % 4096:
            raise ValueError(f"page_size must be a positive multiple of 4096, got {self.page_size}")
        if self.chunk_size <= 0 or self.chunk_size % self.page_size:
            raise ValueError(
                f"chunk_size ({self.chunk_size}) must be a positive multiple of page_size "
                f"({self.page_size})"
            )
        if self.region_size < self.page_size or self.region_size % 4096:
            raise ValueError(
                f"region_size ({self.region_size}) must be a multiple of 4096 and hold at least "
                f"one page ({self.page_size})"
            )
        for name in ("page_size", "chunk_size", "region_size"):
            if getattr(self, name) > _MAX_UNIT:
                raise ValueError(f"{name} ({getattr(self, name)}) must be at most 1 TiB")
        set_(self, "host_id", _text(self.host_id, "host_id"))
        if self.listen is not None:
            _host_port(self.listen, "listen")
        if self.metrics_listen is not None:
            _host_port(self.metrics_listen, "metrics_listen")
        if self.etcd is not None and not _text(self.etcd, "etcd").startswith(
            ("http://", "https://")
        ):
            raise ValueError(f"etcd must be an http:// or https:// URL, got {self.etcd!r}")
        if self.membership_file is not None:
            path = _text(self.membership_file, "membership_file")
            set_(self, "membership_file", os.path.abspath(os.path.expanduser(path)))
            if self.etcd is not None:
                raise ValueError("etcd and membership_file are exclusive: set one of them")
        for name in _PATH_FIELDS:
            value = getattr(self, name)
            if value is not None:
                set_(self, name, os.path.abspath(os.path.expanduser(_text(value, name))))
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: set both or neither")
        self._check_etcd_credentials()
        for name in _LIST_FIELDS:
            set_(self, name, _texts(getattr(self, name), name))
        for prefix in self.allowed_mounts:
            if "://" not in prefix:
                raise ValueError(
                    f"allowed_mounts: {prefix!r} is not a URI prefix (such as s3:// or "
                    "file:///data/)"
                )
        if self.capacity is None:
            default = min(_free_bytes(self.cache_dir) // 5, 100 * GiB)
            set_(self, "capacity", default // self.region_size * self.region_size)
        if self.mem_capacity is None:
            mem = min(_ram_bytes() // 10, _filesystem_bytes(SHM)[0]) if os.path.isdir(SHM) else 0
            set_(self, "mem_capacity", mem // self.region_size * self.region_size)
        _check_capacity(self.capacity, "capacity", "cache_dir", self.cache_dir, self.region_size)
        if self.mem_capacity:
            _check_capacity(
                self.mem_capacity, "mem_capacity", "the MEM tier", self.mem_dir, self.region_size
            )
        if self.capacity < self.region_size:
            raise ValueError(
                f"capacity ({self.capacity}) must hold at least one region ({self.region_size}); "
                f"free space under {self.cache_dir} may be too low"
            )
        if 0 < self.mem_capacity < self.region_size:
            raise ValueError(
                f"mem_capacity ({self.mem_capacity}) must be 0 or hold at least one region "
                f"({self.region_size})"
            )
        for name in ("max_connections", "max_connections_per_peer", "metadata_cache"):
            set_(self, name, _positive(getattr(self, name), name, int))
        if self.dirty_bytes is None:
            set_(self, "dirty_bytes", self.capacity // 2)
        set_(self, "dirty_bytes", _positive(self.dirty_bytes, "dirty_bytes", int))
        for name in ("idle_timeout", "send_timeout", "dirty_wait"):
            set_(self, name, _positive(getattr(self, name), name, float))

    def _check_etcd_credentials(self) -> None:
        if self.etcd_user is not None:
            object.__setattr__(self, "etcd_user", _text(self.etcd_user, "etcd_user"))
        if (self.etcd_user is None) != (self.etcd_password_file is None):
            raise ValueError("etcd_user and etcd_password_file go together: set both or neither")
        if (self.etcd_cert is None) != (self.etcd_key is None):
            raise ValueError("etcd_cert and etcd_key go together: set both or neither")
        if self.etcd is not None and _text(self.etcd, "etcd").startswith("http://"):
            for name in ("etcd_ca", "etcd_cert"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{name} needs an https:// etcd endpoint, not http://")

    @property
    def mem_dir(self) -> str:
        """The MEM tier's directory on /dev/shm, distinct per ``home``."""
        return mem_dir_of(self.home)

    def tiers(self):
        """The page store's tiers, fastest first."""
        from .engine import TierConfig

        out = []
        if self.mem_capacity:
            out.append(TierConfig("MEM", self.mem_dir, self.mem_capacity))
        out.append(TierConfig("SSD", self.cache_dir, self.capacity))
        return out


def _size(value: Any, name: str) -> int:
    """``parse_size`` of a setting, with a number too large for it refused as such."""
    try:
        size = parse_size(value, name)
    except OverflowError:
        size = None
    if size is None or size > _U64_MAX:
        text = str(value)
        shown = text if len(text) <= 40 else f"{text[:20]}...{text[-8:]} ({len(text)} characters)"
        raise ValueError(f"{name}: {shown} does not fit in 64 bits")
    return size


def _check_capacity(value: int, name: str, what: str, path: str, region_size: int) -> None:
    """Refuse a tier capacity larger than the filesystem that holds the tier's directory,
    or of more regions than the page store can number."""
    size, probe = _filesystem_bytes(path)
    if value > size:
        measured = "" if probe == path else f", measured at {probe}"
        raise ValueError(
            f"{name} ({value}) is larger than the filesystem that holds {what} {path} "
            f"({size} bytes{measured})"
        )
    if value // region_size > _MAX_REGIONS:
        raise ValueError(
            f"{name} ({value}) makes more than {_MAX_REGIONS} regions of region_size "
            f"({region_size}): set a larger region_size"
        )


def mem_dir_of(home: str) -> str:
    """The MEM tier directory of the worker of ``home`` (an absolute path)."""
    digest = hashlib.sha1(home.encode()).hexdigest()[:12]
    return os.path.join(SHM, f"shoal-{os.getuid()}-{digest}")


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    return value.strip()


def _texts(value: Any, name: str) -> tuple[str, ...]:
    """A tuple of non-empty strings from a list, or from a comma-separated string."""
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{name} must be a list of strings, got {type(value).__name__}")
    return tuple(_text(v, name) for v in value)


def _positive(value: Any, name: str, kind: type) -> int | float:
    """A positive int or finite float, also from text (a SHOAL_* variable)."""
    try:
        number = kind(value) if isinstance(value, (str, int, float)) else None
    except (ValueError, OverflowError):
        number = None
    if isinstance(value, bool) or number is None or not 0 < number < float("inf"):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    if kind is int and isinstance(value, float) and value != number:
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    return number


def _fraction(value: Any, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number between 0 and 1, got {value!r}") from None
    if isinstance(value, bool) or not 0 < number <= 1:
        raise ValueError(f"{name} must be a number in (0, 1], got {value!r}")
    return number


def _host_port(value: Any, name: str) -> tuple[str, int]:
    text = _text(value, name)
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{name} must be HOST:PORT (port 0-65535), got {value!r}")
    return host.strip("[]"), int(port)


def load_config(
    path: str | os.PathLike | None = None,
    *,
    environ: Mapping[str, str] = os.environ,
    **overrides: Any,
) -> Config:
    """Build the :class:`Config`: defaults, then the YAML file, then ``SHOAL_*`` variables,
    then ``overrides`` (e.g. command-line flags; ``None`` values are ignored).

    ``path`` defaults to ``$SHOAL_HOME/config.yaml``, read when it exists. Unknown keys and
    bad values raise ``ValueError`` naming the key and the source.
    """
    home = overrides.get("home") or default_home(environ)
    values: dict[str, Any] = {"home": home}
    sources: dict[str, str] = {}
    names = {f.name for f in dataclasses.fields(Config)}
    file = os.fspath(path) if path is not None else os.path.join(home, "config.yaml")
    if path is not None or os.path.exists(file):
        doc = _read_yaml(file, names)
        values.update(doc)
        sources.update(dict.fromkeys(doc, file))
    for var, name in _ENV_FIELDS.items():
        if environ.get(var, "") != "":
            values[name] = environ[var]
            sources[name] = var
    unknown = set(overrides) - names
    if unknown:
        raise ValueError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    given = {k: v for k, v in overrides.items() if v is not None}
    values.update(given)
    sources.update(dict.fromkeys(given, "an argument"))
    try:
        return Config(**values)
    except ValueError as exc:
        blamed = [
            f"{n} from {src}"
            for n, src in sorted(sources.items())
            if re.search(rf"\b{n}\b", str(exc))
        ]
        if not blamed:
            raise
        raise ValueError(f"{exc} ({'; '.join(blamed)})") from None


def _read_yaml(file: str, names: set[str]) -> dict[str, Any]:
    import yaml

    try:
        with open(file, encoding="utf-8") as f:
            # libyaml's parser where PyYAML has it: every client process reads this file,
            # and the pure-Python parser took a millisecond of a new process's start.
            doc = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except FileNotFoundError:
        raise FileNotFoundError(f"configuration file {file} does not exist") from None
    except yaml.YAMLError as exc:
        # Where and what, never the line itself: it may hold a value not meant to be shown.
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "cannot be parsed"
        raise ValueError(f"{file}: not valid YAML{where}: {problem}") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ValueError(f"{file}: expected a mapping of settings, got {type(doc).__name__}")
    unknown = sorted(str(k) for k in doc if k not in names)
    if unknown:
        raise ValueError(
            f"{file}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}"
        )
    return doc
