"""Membership: which workers are live, where they listen, how much they hold.

Three sources behind one :class:`Membership` interface:

- :class:`LocalMembership`, the single-node default: the one local worker, no service;
- :class:`StaticMembership`, a YAML or JSON file listing the workers, for clusters
  without etcd; re-read when the file changes;
- :class:`EtcdMembership`, a watch on the workers that :class:`WorkerRegistration` keeps
  registered in etcd under a lease, so that a dead worker drops out when its lease expires.

Layout in etcd, under the cluster's prefix (default ``/shoal/``):

- ``workers/<id>``: a live worker's :class:`WorkerInfo` (JSON), attached to its lease;
- ``drain/<id>``: set by :meth:`EtcdMembership.drain`, kept across the worker's restarts
  until :meth:`EtcdMembership.undrain`;
- ``roster/<id>``: the last :class:`WorkerInfo` a worker published, never leased, so that
  workers that are gone are listed OFFLINE;
- ``meta/``: the cluster's MetaStore (``_etcd.EtcdMetaStore``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import json
import logging
import math
import os
import re
import secrets
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._errors import ShoalError
from .._private import private_dir
from .._units import parse_size
from ._placement import Node

if TYPE_CHECKING:
    from ._etcd import EtcdCredentials, KeyValue

__all__ = [
    "DEFAULT_TTL",
    "WORKER_ID_FILE",
    "EtcdMembership",
    "LocalMembership",
    "Membership",
    "StaticMembership",
    "WorkerInfo",
    "WorkerNotFoundError",
    "WorkerRegistration",
    "WorkerState",
    "load_static_members",
    "load_worker_id",
    "local_worker_info",
    "members_to_nodes",
]

log = logging.getLogger("shoal.membership")

WORKER_ID_FILE = "worker-id"
DEFAULT_TTL = 3
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_BACKOFF_MIN = 0.1
_BACKOFF_MAX = 2.0


class WorkerState(str, enum.Enum):
    """ONLINE: in placement. DRAINING: alive and serving, out of placement. OFFLINE: known
    but gone (only in :meth:`Membership.roster`)."""

    ONLINE = "ONLINE"
    DRAINING = "DRAINING"
    OFFLINE = "OFFLINE"


class WorkerNotFoundError(ShoalError, FileNotFoundError):
    """No worker with this id is registered (ENOENT)."""


def _check_id(value: Any, what: str = "worker id") -> str:
    if not isinstance(value, str) or not _ID.match(value):
        raise ValueError(
            f"{what} must be 1-128 letters, digits, '.', '_' or '-' starting with a letter "
            f"or digit, got {value!r}"
        )
    return value


def _check_address(value: Any) -> str:
    text = value if isinstance(value, str) else ""
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ValueError(f"address must be HOST:PORT (port 1-65535), got {value!r}")
    return text


def _check_count(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum} (bytes), got {value!r}")
    return value


@dataclass(frozen=True)
class WorkerInfo:
    """What a worker publishes about itself.

    Attributes
    ----------
    id
        Stable worker id (see :func:`load_worker_id`).
    host_id
        The machine it runs on; clients with the same host id read short-circuit.
    address
        ``HOST:PORT`` of its TCP endpoint, or None (single node: Unix socket only).
    socket_path
        Its Unix socket, for clients on the same host, or None.
    capacity
        Bytes of cache it holds at most (its placement weight).
    used
        Bytes of cache in use.
    state
        ``ONLINE`` or ``DRAINING`` (``OFFLINE`` only in rosters).
    started
        When it started (seconds since the epoch; 0 when unknown).
    """

    id: str
    host_id: str
    address: str | None = None
    socket_path: str | None = None
    capacity: int = 1
    used: int = 0
    state: WorkerState = WorkerState.ONLINE
    started: float = 0.0

    def __post_init__(self) -> None:
        _check_id(self.id)
        if not isinstance(self.host_id, str) or not self.host_id.strip():
            raise ValueError(f"host_id must be a non-empty string, got {self.host_id!r}")
        if self.address is not None:
            _check_address(self.address)
        if self.socket_path is not None and (
            not isinstance(self.socket_path, str) or not os.path.isabs(self.socket_path)
        ):
            raise ValueError(f"socket_path must be an absolute path, got {self.socket_path!r}")
        _check_count(self.capacity, "capacity", 1)
        _check_count(self.used, "used", 0)
        try:
            object.__setattr__(self, "state", WorkerState(self.state))
        except ValueError:
            states = ", ".join(s.value for s in WorkerState)
            raise ValueError(f"state must be one of {states}, got {self.state!r}") from None
        if (
            isinstance(self.started, bool)
            or not isinstance(self.started, (int, float))
            or not 0 <= self.started < math.inf
        ):
            raise ValueError(f"started must be a time in seconds >= 0, got {self.started!r}")
        object.__setattr__(self, "started", float(self.started))

    def to_dict(self) -> dict[str, Any]:
        """The record as plain JSON types."""
        record = dataclasses.asdict(self)
        record["state"] = self.state.value
        return record

    @classmethod
    def from_dict(cls, record: Mapping[str, Any], *, strict: bool = True) -> WorkerInfo:
        """A :class:`WorkerInfo` from :meth:`to_dict`'s form. Unknown keys are a
        ``ValueError`` when ``strict``, ignored otherwise (records of newer versions)."""
        if not isinstance(record, Mapping):
            raise ValueError(f"a worker record is a mapping, got {type(record).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(str(k) for k in record if k not in names)
        if unknown and strict:
            raise ValueError(
                f"unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}"
            )
        for required in ("id", "host_id"):
            if required not in record:
                raise ValueError(f"missing field {required!r}")
        return cls(**{k: v for k, v in record.items() if k in names})

    def to_json(self) -> str:
        """The record as a JSON text (keys sorted)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> WorkerInfo:
        """Inverse of :meth:`to_json`; ``ValueError`` naming the problem."""
        try:
            record = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"a worker record is not JSON: {exc}") from None
        return cls.from_dict(record, strict=False)

    def with_state(self, state: WorkerState) -> WorkerInfo:
        """A copy in ``state``."""
        return dataclasses.replace(self, state=state)


def members_to_nodes(members: Iterable[WorkerInfo]) -> list[Node]:
    """Placement candidates: the ONLINE workers, weighted by capacity (draining and offline
    workers take no new data)."""
    return [Node(m.id, float(m.capacity)) for m in members if m.state is WorkerState.ONLINE]


def load_worker_id(home: str | os.PathLike) -> str:
    """This worker's stable id, kept in ``home/worker-id``: made on first use, the same
    after every restart. Two processes making it at once agree on one."""
    home = os.fspath(home)
    path = os.path.join(home, WORKER_ID_FILE)
    try:
        return _read_worker_id(path)
    except FileNotFoundError:
        pass
    private_dir(home, "Shoal home")
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
        f.write(f"w-{secrets.token_hex(8)}\n")
        f.flush()
        os.fsync(f.fileno())
    try:
        # link, not rename: a file made meanwhile by someone else wins and is kept
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        os.unlink(tmp)
    return _read_worker_id(path)


def _read_worker_id(path: str) -> str:
    with open(path, encoding="ascii", errors="replace") as f:
        text = f.read().strip()
    try:
        return _check_id(text)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}; remove the file to make a new id") from None


def local_worker_info(
    config,
    *,
    address: str | None = None,
    socket_path: str | None = None,
    used: int = 0,
    started: float | None = None,
) -> WorkerInfo:
    """The :class:`WorkerInfo` of the worker of ``config`` (a ``shoal.Config``): its stable
    id from ``config.home``, host id, capacity of its tiers; ``address`` defaults to
    ``config.listen`` (pass the bound address when listening on port 0)."""
    return WorkerInfo(
        id=load_worker_id(config.home),
        host_id=config.host_id,
        address=address if address is not None else config.listen,
        socket_path=socket_path,
        capacity=config.capacity + config.mem_capacity,
        used=used,
        started=time.time() if started is None else started,
    )


# ---------------------------------------------------------------------- interface


class Membership(ABC):
    """The live workers of a cluster, as this process sees them.

    A caller should expect this sequence: construct (which loads a first view or raises),
    then :meth:`members`, :attr:`version`, :meth:`watch` ... in any order from any thread,
    and :meth:`close` once at the end. A subclass fills the view with :meth:`_publish` and
    reports trouble with :meth:`_set_health`.
    """

    def __init__(self) -> None:
        self._view_lock = threading.Lock()
        self._publish_lock = threading.RLock()
        self._view: dict[str, WorkerInfo] = {}
        self._version = 0
        self._callbacks: list[Callable[[list[WorkerInfo]], None]] = []
        self._healthy = True
        self._last_error: str | None = None

    def members(self) -> list[WorkerInfo]:
        """The live workers (ONLINE and DRAINING), by id."""
        self._refresh()
        with self._view_lock:
            return sorted(self._view.values(), key=lambda m: m.id)

    def member(self, worker_id: str) -> WorkerInfo | None:
        """The live worker ``worker_id``, or None."""
        self._refresh()
        with self._view_lock:
            return self._view.get(worker_id)

    def roster(self) -> list[WorkerInfo]:
        """Every worker known, live or OFFLINE, by id (here: the live ones)."""
        return self.members()

    @property
    def version(self) -> int:
        """A counter that grows whenever :meth:`members` changes."""
        self._refresh()
        return self._version

    @property
    def healthy(self) -> bool:
        """False while the source of membership cannot be read: the view is the last one
        seen."""
        return self._healthy

    @property
    def last_error(self) -> str | None:
        """Why the source could not be read (kept after recovery), or None."""
        return self._last_error

    def watch(self, callback: Callable[[list[WorkerInfo]], None]) -> Callable[[], None]:
        """Call ``callback(members)`` after every change of the view, from the thread that
        saw it; returns a function that stops the calls. Exceptions of ``callback`` are
        logged."""
        if not callable(callback):
            raise TypeError(f"callback must be callable, got {callback!r}")
        with self._publish_lock:
            self._callbacks.append(callback)

        def cancel() -> None:
            with self._publish_lock, contextlib.suppress(ValueError):
                self._callbacks.remove(callback)

        return cancel

    @abstractmethod
    def close(self) -> None:
        """Stop following the source; :meth:`members` keeps the last view."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self._view)} members, version {self._version})"

    # ---------------------------------------------------------------- for subclasses

    def _refresh(self) -> None:
        """Bring the view up to date before it is read (default: nothing to do)."""
        return None

    def _publish(self, members: Iterable[WorkerInfo]) -> bool:
        """Make ``members`` the view; True (and callbacks called) when it changed."""
        with self._publish_lock:
            view = {m.id: m for m in members}
            with self._view_lock:
                if view == self._view:
                    return False
                self._view = view
                self._version += 1
            current = sorted(view.values(), key=lambda m: m.id)
            for callback in list(self._callbacks):
                try:
                    callback(current)
                except Exception:
                    log.exception("membership callback %r failed", callback)
            return True

    def _set_health(self, error: BaseException | str | None, source: str) -> None:
        """Record success (``error`` None) or failure of reading ``source``: a warning when
        an outage starts, one line when it ends, nothing per retry."""
        if error is None:
            if not self._healthy:
                self._healthy = True
                log.info("%s: membership recovered", source)
            return
        self._last_error = str(error)
        if self._healthy:
            self._healthy = False
            log.warning(
                "%s: membership unavailable (%s); keeping the last view of %d worker(s)",
                source,
                error,
                len(self._view),
            )


class LocalMembership(Membership):
    """The single-node default: one worker, this host's, and no service to ask."""

    def __init__(self, info: WorkerInfo):
        super().__init__()
        if not isinstance(info, WorkerInfo):
            raise TypeError(f"LocalMembership needs a WorkerInfo, got {type(info).__name__}")
        self._publish([info])

    def update(self, info: WorkerInfo) -> None:
        """Replace the worker's record (e.g. its use)."""
        if not isinstance(info, WorkerInfo):
            raise TypeError(f"update needs a WorkerInfo, got {type(info).__name__}")
        self._publish([info])

    def close(self) -> None:
        # docstring inherited
        pass


# ---------------------------------------------------------------------- static file

_STATIC_FIELDS = ("id", "host_id", "address", "capacity", "socket_path", "state")


def load_static_members(path: str | os.PathLike) -> list[WorkerInfo]:
    """The workers listed in a membership file.

    The file is YAML or JSON: a list of workers, or a mapping with a ``workers`` list.
    Each worker has ``id``, ``host_id``, ``address`` (``HOST:PORT``) and ``capacity``
    (bytes or a size such as ``100GiB``), optionally ``state`` (``ONLINE`` or
    ``DRAINING``) and ``socket_path``. Anything else is a ``ValueError`` naming the file,
    the entry and the field.
    """
    import yaml

    path = os.fspath(path)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"membership file {path}: not valid YAML or JSON: {exc}") from None
    if isinstance(doc, dict):
        extra = sorted(str(k) for k in doc if k != "workers")
        if extra:
            raise ValueError(
                f"membership file {path}: unknown key(s) {', '.join(extra)}; expected 'workers'"
            )
        doc = doc.get("workers")
    if not isinstance(doc, list):
        raise ValueError(
            f"membership file {path}: expected a list of workers (or 'workers: [...]'), "
            f"got {type(doc).__name__}"
        )
    if not doc:
        raise ValueError(f"membership file {path}: lists no workers")
    members: dict[str, WorkerInfo] = {}
    for n, entry in enumerate(doc, 1):
        where = f"membership file {path}, worker #{n}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected a mapping, got {type(entry).__name__}")
        if isinstance(entry.get("id"), str):
            where += f" ({entry['id']})"
        unknown = sorted(str(k) for k in entry if k not in _STATIC_FIELDS)
        if unknown:
            raise ValueError(
                f"{where}: unknown field(s) {', '.join(unknown)}; known: "
                f"{', '.join(_STATIC_FIELDS)}"
            )
        missing = [k for k in ("id", "host_id", "address", "capacity") if k not in entry]
        if missing:
            raise ValueError(f"{where}: missing field(s) {', '.join(missing)}")
        state = entry.get("state", "ONLINE")
        if state not in ("ONLINE", "DRAINING"):
            raise ValueError(f"{where}: state must be ONLINE or DRAINING, got {state!r}")
        try:
            info = WorkerInfo(
                id=entry["id"],
                host_id=entry["host_id"],
                address=entry["address"],
                socket_path=entry.get("socket_path"),
                capacity=parse_size(entry["capacity"], "capacity"),
                state=state,
            )
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        if info.id in members:
            raise ValueError(f"{where}: worker id {info.id!r} is listed twice")
        members[info.id] = info
    return list(members.values())


class StaticMembership(Membership):
    """Workers listed in a file (see :func:`load_static_members`), for clusters without etcd.

    The file is checked again whenever the view is read, and at most every ``poll``
    seconds by a thread once :meth:`watch` has a callback; it is re-read when its
    modification time, size or inode changed. A malformed file at start is a ``ValueError``;
    later, the last good view stays, :attr:`healthy` turns False and :attr:`last_error`
    says why, until the file is fixed.
    """

    def __init__(self, path: str | os.PathLike, *, poll: float = 1.0):
        super().__init__()
        self.path = os.path.abspath(os.fspath(path))
        if isinstance(poll, bool) or not isinstance(poll, (int, float)) or not 0 < poll < 3600:
            raise ValueError(f"poll must be a number of seconds in (0, 3600), got {poll!r}")
        self._poll = float(poll)
        self._stamp: tuple | None = None
        self._load_lock = threading.RLock()  # callbacks run under it and may read the view
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        stamp = self._file_stamp()
        self._publish(load_static_members(self.path))
        self._stamp = stamp

    def _file_stamp(self) -> tuple:
        st = os.stat(self.path)
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def reload(self) -> bool:
        """Read the file now; True when the view changed. Raises ``ValueError`` for a
        malformed file and ``OSError`` for an unreadable one (the view stays)."""
        with self._load_lock:
            try:
                stamp = self._file_stamp()
            except OSError as exc:
                self._stamp = None
                self._set_health(exc, self.path)
                raise
            self._stamp = stamp  # a broken file is read again only once it changes
            try:
                members = load_static_members(self.path)
            except (OSError, ValueError) as exc:
                self._set_health(exc, self.path)
                raise
            self._set_health(None, self.path)
            return self._publish(members)

    def _refresh(self) -> None:
        try:
            stamp = self._file_stamp()
        except OSError as exc:
            self._set_health(exc, self.path)
            return
        if stamp != self._stamp:
            with contextlib.suppress(OSError, ValueError):
                self.reload()

    def watch(self, callback: Callable[[list[WorkerInfo]], None]) -> Callable[[], None]:
        # docstring inherited
        cancel = super().watch(callback)
        with self._load_lock:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(
                    target=self._run, name="shoal-membership-file", daemon=True
                )
                self._thread.start()
        return cancel

    def _run(self) -> None:
        while not self._stop.wait(self._poll):
            self._refresh()

    def close(self) -> None:
        # docstring inherited
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()


# ---------------------------------------------------------------------- etcd


class _Keys:
    """Key names of one cluster in etcd."""

    def __init__(self, prefix: str | None):
        from ._etcd import DEFAULT_PREFIX, check_prefix

        prefix = check_prefix(DEFAULT_PREFIX if prefix is None else prefix)
        self.prefix = prefix
        self.workers = (prefix + "workers/").encode()
        self.drains = (prefix + "drain/").encode()
        self.roster = (prefix + "roster/").encode()

    def worker(self, worker_id: str) -> bytes:
        return self.workers + worker_id.encode()

    def drain(self, worker_id: str) -> bytes:
        return self.drains + worker_id.encode()

    def rostered(self, worker_id: str) -> bytes:
        return self.roster + worker_id.encode()


def _parse_record(kv: KeyValue, base: bytes) -> WorkerInfo | None:
    """The worker record of ``kv``, or None (logged) when it is not one."""
    key_id = kv.key[len(base) :].decode(errors="replace")
    try:
        info = WorkerInfo.from_json(kv.value)
    except ValueError as exc:
        log.warning("ignoring the malformed worker record %r: %s", kv.key.decode("latin-1"), exc)
        return None
    if info.id != key_id:
        log.warning("ignoring the record of worker %r stored under id %r", info.id, key_id)
        return None
    return info


class EtcdMembership(Membership):
    """The workers registered in etcd, followed by a watch in a background thread.

    When etcd becomes unreachable the view stays as it was, :attr:`healthy` turns False
    (one warning in the log per outage) and the thread reconnects with capped backoff; the
    view is read again in full when it is back.

    Parameters
    ----------
    endpoint
        ``http://HOST:PORT`` of an etcd member.
    prefix
        The cluster's namespace in etcd (default ``/shoal/``).
    timeout
        Seconds a call to etcd may take.
    idle
        Seconds a watch stream may stay silent before it is reopened (this bounds how long
        a silently dead connection goes unnoticed).
    credentials
        What etcd wants to see, if anything (:class:`~shoal.control._etcd.EtcdCredentials`,
        used by the watch too).

    Raises
    ------
    EtcdUnavailableError
        (a ``ConnectionError`` naming the endpoint) when etcd does not answer at start.
    EtcdAuthError
        (a ``PermissionError`` naming etcd and the user) when etcd refuses the credentials,
        or wants some that were not given.
    ValueError
        for a malformed endpoint or prefix.
    """

    def __init__(
        self,
        endpoint: str,
        prefix: str | None = None,
        *,
        timeout: float = 3.0,
        idle: float = 10.0,
        credentials: EtcdCredentials | None = None,
    ):
        from ._etcd import EtcdClient

        super().__init__()
        self._keys = _Keys(prefix)
        self.prefix = self._keys.prefix
        if isinstance(idle, bool) or not isinstance(idle, (int, float)) or not 0 < idle < 3600:
            raise ValueError(f"idle must be a number of seconds in (0, 3600), got {idle!r}")
        self._idle = float(idle)
        self._client = EtcdClient(endpoint, timeout=timeout, credentials=credentials)
        self.endpoint = self._client.endpoint
        self._stop = threading.Event()
        try:
            revision = self._load()
        except BaseException:
            self._client.close()
            raise
        self._thread = threading.Thread(
            target=self._run, args=(revision + 1,), name="shoal-membership", daemon=True
        )
        self._thread.start()

    def _load(self) -> int:
        kvs, revision = self._client.snapshot(self._keys.workers)
        members = (_parse_record(kv, self._keys.workers) for kv in kvs)
        self._publish(m for m in members if m is not None)
        return revision

    def _apply(self, events) -> int:
        """Apply a batch of watch events to the view; the revision after the last."""
        with self._view_lock:
            view = dict(self._view)
        last = 0
        for event in events:
            last = max(last, event.kv.mod_revision)
            key_id = event.kv.key[len(self._keys.workers) :].decode(errors="replace")
            if event.kind == "DELETE":
                view.pop(key_id, None)
                continue
            info = _parse_record(event.kv, self._keys.workers)
            if info is None:
                view.pop(key_id, None)
            else:
                view[key_id] = info
        self._publish(view.values())
        return last

    def _run(self, start: int) -> None:
        from ._etcd import EtcdCompactedError, EtcdError, EtcdUnavailableError

        delay = _BACKOFF_MIN
        reload = False
        while not self._stop.is_set():
            try:
                if reload:
                    start = self._load() + 1
                    reload = False
                synced = 0
                for batch in self._client.watch(self._keys.workers, start, idle=self._idle):
                    self._set_health(None, self.endpoint)
                    delay = _BACKOFF_MIN
                    synced = synced or batch.revision
                    if batch.events:
                        start = self._apply(batch.events) + 1
                # idle: all changes up to the watch's first revision arrived, so the next
                # watch starts after it (etcd need not replay a long quiet history)
                start = max(start, synced + 1)
            except EtcdCompactedError:
                reload = True
            except (EtcdUnavailableError, EtcdError) as exc:
                if self._stop.is_set():
                    return
                self._set_health(exc, self.endpoint)
                reload = True
                self._stop.wait(delay)
                delay = min(delay * 2, _BACKOFF_MAX)
            except Exception:
                log.exception("membership watch of %s failed; retrying", self.endpoint)
                reload = True
                self._stop.wait(_BACKOFF_MAX)

    def roster(self) -> list[WorkerInfo]:
        """Every worker that ever registered under the prefix: the live ones as they are,
        the others OFFLINE with their last record. Raises ``EtcdUnavailableError`` when etcd
        does not answer."""
        live = {m.id: m for m in self.members()}
        known = dict(live)
        for kv in self._client.scan(self._keys.roster):
            info = _parse_record(kv, self._keys.roster)
            if info is not None and info.id not in live:
                known[info.id] = info.with_state(WorkerState.OFFLINE)
        return sorted(known.values(), key=lambda m: m.id)

    def drain(self, worker_id: str) -> WorkerInfo:
        """Take worker ``worker_id`` out of placement: it stays DRAINING (serving what it
        holds, taking no new data) until :meth:`undrain`, across its restarts.

        Returns its record. Raises :class:`WorkerNotFoundError` (a ``FileNotFoundError``)
        naming the id when no such worker ever registered.
        """
        return self._set_drain(worker_id, True)

    def undrain(self, worker_id: str) -> WorkerInfo:
        """Put worker ``worker_id`` back into placement; the inverse of :meth:`drain`."""
        return self._set_drain(worker_id, False)

    def _set_drain(self, worker_id: str, draining: bool) -> WorkerInfo:
        from ._etcd import EtcdError, cmp_mod_revision, op_delete, op_put

        _check_id(worker_id)
        client, keys = self._client, self._keys
        state = WorkerState.DRAINING if draining else WorkerState.ONLINE
        mark = [op_put(keys.drain(worker_id), json.dumps({"since": time.time()}).encode())]
        unmark = [op_delete(keys.drain(worker_id))]
        for _ in range(10):
            kv = client.get(keys.worker(worker_id))
            if kv is None:
                known = client.get(keys.rostered(worker_id))
                if known is None:
                    raise WorkerNotFoundError(
                        f"no worker {worker_id!r} is registered in etcd at {self.endpoint} "
                        f"under {keys.prefix}"
                    )
                # not running: the mark applies when it registers again
                if draining:
                    client.put(keys.drain(worker_id), json.dumps({"since": time.time()}).encode())
                else:
                    client.delete(keys.drain(worker_id))
                info = WorkerInfo.from_json(known.value)
                return info.with_state(WorkerState.OFFLINE)
            info = WorkerInfo.from_json(kv.value).with_state(state)
            record = info.to_json().encode()
            ops = [
                op_put(keys.worker(worker_id), record, lease=kv.lease),
                op_put(keys.rostered(worker_id), record),
            ]
            # only if the record did not change meanwhile (the worker publishes its use)
            if client.txn(
                [cmp_mod_revision(keys.worker(worker_id), kv.mod_revision)],
                ops + (mark if draining else unmark),
                [],
            ):
                return info
        raise EtcdError(f"worker {worker_id!r} kept changing its record; drain not applied")

    def close(self) -> None:
        # docstring inherited
        self._stop.set()
        self._client.close()
        if self._thread is not threading.current_thread():
            self._thread.join()


class WorkerRegistration:
    """A worker's registration in etcd: ``workers/<id>`` under a lease of ``ttl`` seconds,
    kept alive by a thread (renewed every ``ttl / 3`` s).

    The thread also publishes the worker's use (``used_bytes()``, every
    ``update_interval`` s, when it changed), puts the record back if it went missing,
    and registers again under a new lease when the old one expired (after an etcd outage
    longer than the TTL, say). A worker drained by an operator stays DRAINING.

    A caller should expect: construct (registers, or raises), :meth:`update` and
    :meth:`drain` at any time, :meth:`close` once (revokes the lease: the worker leaves
    the membership at once).

    Parameters
    ----------
    endpoint
        ``http://HOST:PORT`` of an etcd member.
    info
        The worker's record (see :func:`local_worker_info`).
    ttl
        Lease TTL in seconds: a worker that stops renewing is dropped after it.
    prefix
        The cluster's namespace in etcd (default ``/shoal/``).
    used_bytes
        Returns the bytes of cache in use; called from the keep-alive thread.
    update_interval
        Seconds between two checks of ``used_bytes`` and of the record.
    credentials
        What etcd wants to see, if anything (:class:`~shoal.control._etcd.EtcdCredentials`).

    Raises
    ------
    EtcdUnavailableError
        (a ``ConnectionError`` naming the endpoint) when etcd does not answer at start.
    EtcdAuthError
        (a ``PermissionError`` naming etcd and the user) when etcd refuses the credentials,
        or wants some that were not given.
    """

    def __init__(
        self,
        endpoint: str,
        info: WorkerInfo,
        *,
        ttl: int = DEFAULT_TTL,
        prefix: str | None = None,
        used_bytes: Callable[[], int] | None = None,
        update_interval: float = 5.0,
        credentials: EtcdCredentials | None = None,
    ):
        from ._etcd import EtcdClient

        if not isinstance(info, WorkerInfo):
            raise TypeError(f"info must be a WorkerInfo, got {type(info).__name__}")
        if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= 3600:
            raise ValueError(f"ttl must be an int of seconds in [1, 3600], got {ttl!r}")
        if used_bytes is not None and not callable(used_bytes):
            raise TypeError(f"used_bytes must be callable, got {used_bytes!r}")
        if (
            isinstance(update_interval, bool)
            or not isinstance(update_interval, (int, float))
            or not 0 < update_interval < math.inf
        ):
            raise ValueError(
                f"update_interval must be a positive number of seconds, got {update_interval!r}"
            )
        self._keys = _Keys(prefix)
        self.ttl = ttl
        self._used_bytes = used_bytes
        self._update_interval = float(update_interval)
        self._draining = info.state is WorkerState.DRAINING
        self._info = info
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._lease = 0
        self._dirty = False
        self._healthy = True
        self._last_error: str | None = None
        # calls must end well within a renewal period, or the lease lapses meanwhile
        self._client = EtcdClient(
            endpoint, timeout=max(0.5, min(3.0, ttl / 2)), credentials=credentials
        )
        self.endpoint = self._client.endpoint
        try:
            with self._lock:
                self._register()
        except BaseException:
            self._client.close()
            raise
        self._thread = threading.Thread(
            target=self._run, name=f"shoal-registration-{info.id}", daemon=True
        )
        self._thread.start()

    @property
    def info(self) -> WorkerInfo:
        """The record as last published."""
        return self._info

    @property
    def lease(self) -> int:
        """The current lease id."""
        return self._lease

    @property
    def healthy(self) -> bool:
        """False while etcd does not answer the keep-alives."""
        return self._healthy

    @property
    def last_error(self) -> str | None:
        return self._last_error

    def update(self, *, used: int) -> bool:
        """Publish ``used`` bytes now; False when etcd does not answer (the keep-alive
        thread publishes it once etcd is back)."""
        from ._etcd import EtcdError, EtcdUnavailableError

        _check_count(used, "used", 0)
        with self._lock:
            self._info = dataclasses.replace(self._info, used=used)
            self._dirty = True
            try:
                self._put()
            except (EtcdUnavailableError, EtcdError) as exc:
                self._set_health(exc)
                return False
        return True

    def drain(self) -> None:
        """Leave placement: the record says DRAINING for the rest of this registration.

        Raises ``EtcdUnavailableError`` when etcd does not answer (the record then says
        DRAINING as soon as etcd is back)."""
        with self._lock:
            self._draining = True
            self._dirty = True
            self._put()

    def _register(self) -> None:
        self._lease, _ = self._client.grant(self.ttl)
        self._dirty = True
        self._put()

    def _put(self) -> None:
        """Publish the record under the lease; DRAINING when drained here or by an operator
        (decided by etcd in the same transaction)."""
        from ._etcd import cmp_exists, op_put

        keys, worker_id = self._keys, self._info.id
        drained = self._info.with_state(WorkerState.DRAINING)
        mine = drained if self._draining else self._info.with_state(WorkerState.ONLINE)

        def ops(info: WorkerInfo) -> list[dict]:
            record = info.to_json().encode()
            return [
                op_put(keys.worker(worker_id), record, lease=self._lease),
                op_put(keys.rostered(worker_id), record),
            ]

        marked = self._client.txn([cmp_exists(keys.drain(worker_id))], ops(drained), ops(mine))
        self._info = drained if marked else mine
        self._dirty = False

    def _check_record(self) -> None:
        """Publish again if the record is gone or not under our lease; adopt a drain."""
        kv = self._client.get(self._keys.worker(self._info.id))
        if kv is None or kv.lease != self._lease:
            self._dirty = True
            return
        with contextlib.suppress(ValueError):
            seen = WorkerInfo.from_json(kv.value)
            if seen.state is not self._info.state:
                self._dirty = True

    def _sample_used(self) -> None:
        if self._used_bytes is None:
            return
        try:
            used = _check_count(self._used_bytes(), "used_bytes()", 0)
        except Exception:
            log.exception("worker %s: used_bytes() failed", self._info.id)
            return
        if used != self._info.used:
            with self._lock:
                self._info = dataclasses.replace(self._info, used=used)
                self._dirty = True

    def _run(self) -> None:
        from ._etcd import EtcdError, EtcdUnavailableError

        period = self.ttl / 3
        next_update = time.monotonic() + self._update_interval
        while not self._stop.wait(period):
            try:
                with self._lock:
                    if self._client.keepalive(self._lease) <= 0:
                        log.warning(
                            "worker %s: lease expired (etcd unreachable for longer than its "
                            "%d s TTL?); registering again",
                            self._info.id,
                            self.ttl,
                        )
                        self._register()
                if time.monotonic() >= next_update:
                    next_update = time.monotonic() + self._update_interval
                    self._sample_used()
                    with self._lock:
                        self._check_record()
                with self._lock:
                    if self._dirty:
                        self._put()
                self._set_health(None)
            except (EtcdUnavailableError, EtcdError) as exc:
                if self._stop.is_set():
                    return
                self._set_health(exc)

    def _set_health(self, error: BaseException | None) -> None:
        if error is None:
            if not self._healthy:
                self._healthy = True
                log.info("worker %s: registered in etcd again", self._info.id)
            return
        self._last_error = str(error)
        if self._healthy:
            self._healthy = False
            log.warning(
                "worker %s: cannot renew its registration (%s); retrying every %.1f s",
                self._info.id,
                error,
                self.ttl / 3,
            )

    def close(self) -> None:
        """Stop renewing and revoke the lease, so the worker leaves the membership now
        (when etcd does not answer, the lease expires by itself)."""
        from ._etcd import EtcdError, EtcdUnavailableError

        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join()
        with contextlib.suppress(EtcdUnavailableError, EtcdError):
            self._client.revoke(self._lease)
        self._client.close()

    def __enter__(self) -> WorkerRegistration:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
