"""Jobs a client runs through the workers: load (split by placement in a cluster), free,
and the load job records kept in the MetaStore."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from ..control import _jobs
from ..control._membership import WorkerInfo, WorkerState, members_to_nodes
from ..control._namespace import normalize_path
from ..control.proto import MAX_LIST
from ._connection import Connection
from ._router import Router

__all__ = ["LoadProgress", "free", "load", "load_history"]

log = logging.getLogger("shoal.client")


class LoadProgress(NamedTuple):
    """Progress of :meth:`Client.load`: files and bytes done, of the totals, and the pages
    and bytes among those done that were cached already (skipped)."""

    files_done: int
    files_total: int
    bytes_done: int
    bytes_total: int
    pages_skipped: int = 0
    bytes_skipped: int = 0

    @classmethod
    def of(cls, counts: dict) -> LoadProgress:
        """From a worker's progress counters (missing ones are 0)."""
        return cls(*(int(counts.get(f, 0)) for f in cls._fields))


def load(
    router: Router,
    paths: str | Iterable[str],
    metadata_only: bool,
    progress: Callable[[LoadProgress], None] | None,
    replicas: int | str | None,
) -> LoadProgress:
    """Run a load job and keep its record (see :meth:`shoal.Client.load`), its
    arguments checked first."""
    if (
        replicas is not None
        and replicas != "all"
        and (isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1)
    ):
        raise ValueError(f"replicas must be an int >= 1 or 'all', got {replicas!r}")
    paths = [normalize_path(p) for p in ([paths] if isinstance(paths, str) else paths)]
    if len(paths) > MAX_LIST:
        raise ValueError(
            f"load takes at most {MAX_LIST} paths at once, got {len(paths)}: give their "
            "directories (a directory loads every file under it), or load in parts"
        )
    metadata_only = bool(metadata_only)
    router.home()  # checks the client, starts the worker if need be
    started = time.time()
    every = _heartbeat_every()
    record = _jobs.load_record(
        _jobs.new_job_id(started), paths, metadata_only, replicas, started, every
    )
    _put_job(router, record)
    counts: dict[str, int] = {}  # the last counts, replaced whole (read by the heartbeat)
    caller_stopped = False
    done = threading.Event()

    def heartbeat() -> None:  # the record again now and then: this client is alive
        while not done.wait(every):
            _put_job(router, {**record, **counts, "heartbeat": time.time()})

    beating = threading.Thread(target=heartbeat, name="shoal-load-heartbeat", daemon=True)
    beating.start()

    def seen(state: dict) -> None:
        nonlocal caller_stopped, counts
        counts = {k: state[k] for k in _jobs.COUNTS if k in state}
        if progress is not None:
            try:
                progress(LoadProgress.of(state))
            except BaseException:
                caller_stopped = True
                raise

    try:
        try:
            final = _load_members(router, paths, metadata_only, seen, replicas)
        finally:
            done.set()
            beating.join()
    except BaseException as exc:
        # Interrupted by the caller (Ctrl-C, its progress callback): STOPPED; the load or
        # the connection failed: FAILED. Running it again resumes it.
        stopped = caller_stopped or not isinstance(exc, Exception)
        state = _jobs.STOPPED if stopped else _jobs.FAILED
        error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        _put_job(router, _jobs.finish_record(record, state, counts, error))
        raise
    _put_job(router, _jobs.finish_record(record, _jobs.DONE, final))
    return LoadProgress.of(final)


def _heartbeat_every() -> float:
    """Seconds between two heartbeats of a load: ``$SHOAL_LOAD_HEARTBEAT`` (a number >
    0), else :data:`~shoal.control._jobs.HEARTBEAT_EVERY`."""
    text = os.environ.get("SHOAL_LOAD_HEARTBEAT", "")
    if not text:
        return _jobs.HEARTBEAT_EVERY
    try:
        every = float(text)
    except ValueError:
        every = 0.0
    if not 0 < every < 86400:
        raise ValueError(f"SHOAL_LOAD_HEARTBEAT must be seconds > 0, got {text[:32]!r}")
    return every


def _put_job(router: Router, record: dict) -> None:
    """Write a job record through the worker (every worker of a membership file, each
    keeping its own); a failure is logged, never raised: the load matters more."""
    header = {"op": "job_put", "key": _jobs.LOAD_PREFIX + record["id"], "record": record}
    try:
        router.call(header)
        router.broadcast(header, FileExistsError)
    except (OSError, ValueError) as exc:
        log.warning("load %s: its job record was not written: %s", record["id"], exc)


def load_history(router: Router, limit: int | None) -> list[dict]:
    """The records of past and running loads, newest first (see
    :meth:`shoal.Client.load_history`). Per load: ``id`` (sorts by start time),
    ``state`` (``RUNNING``, ``DONE``, ``FAILED`` or ``STOPPED``), ``started`` and
    ``finished`` (Unix times; ``finished`` None while running), ``paths`` (``count``
    and the ``first`` few), ``metadata_only``, ``replicas``, ``error`` (None unless it failed or
    was stopped), and the counters ``files_done``, ``files_total``,
    ``bytes_done``, ``bytes_total``, ``pages_done``, ``pages_total``,
    ``pages_skipped`` and ``bytes_skipped`` (cached already, not fetched).
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be an int >= 0 or None, got {limit!r}")
    answer = router.call(
        {
            "op": "jobs",
            "prefix": _jobs.LOAD_PREFIX,
            "limit": (1 << 31) - 1 if limit is None else limit,
        }
    )
    return answer["jobs"]


def _load_members(
    router: Router,
    paths: list[str],
    metadata_only: bool,
    progress: Callable[[dict], None],
    replicas: int | str | None = None,
) -> dict:
    """A load on every ONLINE worker at once, each fetching the pages placed on it. A
    worker lost on the way (its connection fails) hands its share to the others: they load
    again, placed over themselves alone, and skip the pages they hold already. Any other
    error fails the load."""
    members = [
        m
        for m in router.membership().members()
        if m.state is WorkerState.ONLINE and not router.is_down(m)
    ]
    fetched: dict[str, list[int]] = {}  # worker id -> [pages, bytes] of earlier rounds
    last_loss: BaseException | None = None
    while members:
        earlier = [0, 0]
        for m in members:
            got = fetched.get(m.id, [0, 0])
            earlier = [earlier[0] + got[0], earlier[1] + got[1]]
        states, lost, final = _load_round(
            router, paths, metadata_only, progress, replicas, members, earlier
        )
        if not lost:
            return final
        if not router.cluster:
            raise lost[0][1]
        for member, exc in lost:
            router.mark_down(member, exc)
            last_loss = exc
        gone = {member.id for member, _ in lost}
        log.warning("load: workers %s lost; the others take their share", sorted(gone))
        for mid, s in states.items():
            got = fetched.setdefault(mid, [0, 0])
            got[0] += s.get("pages_done", 0) - s.get("pages_skipped", 0)
            got[1] += s.get("bytes_done", 0) - s.get("bytes_skipped", 0)
        members = [m for m in members if m.id not in gone]
    raise ConnectionRefusedError(
        errno.ECONNREFUSED,
        "no worker of the Shoal cluster is ONLINE: nothing to load on"
        + (f" (last lost: {last_loss})" if last_loss is not None else ""),
    )


def _load_round(
    router: Router,
    paths: list[str],
    metadata_only: bool,
    progress: Callable[[dict], None],
    replicas: int | str | None,
    members: list[WorkerInfo],
    earlier: list[int],
) -> tuple[dict[str, dict], list[tuple[WorkerInfo, BaseException]], dict]:
    """One load on ``members`` at once, placed over them: their last counters, the workers
    lost (connection failed) and the summed counters. Progress sums their counters (files:
    those every worker is done with); pages and bytes skipped leave out ``earlier`` (what
    these workers fetched in earlier rounds of the same load)."""
    request: dict[str, Any] = {"op": "load", "paths": paths, "metadata_only": metadata_only}
    if router.cluster:
        placement: dict[str, Any] = {"nodes": [[n.id, n.weight] for n in members_to_nodes(members)]}
        if replicas is not None:
            placement["replicas"] = replicas
        request["placement"] = placement
    states: dict[str, dict] = {}
    lost: list[tuple[WorkerInfo, BaseException]] = []
    errors: list[BaseException] = []
    conns: list[Connection] = []
    lock = threading.Lock()
    stop = threading.Event()

    def total() -> dict:
        out = {k: sum(s.get(k, 0) for s in states.values()) for k in _jobs.COUNTS}
        done = [s["files_done"] for s in states.values()]
        out["files_done"] = min(done) if len(done) == len(members) else 0
        out["files_total"] = max((s["files_total"] for s in states.values()), default=0)
        out["pages_skipped"] = max(0, out["pages_skipped"] - earlier[0])
        out["bytes_skipped"] = max(0, out["bytes_skipped"] - earlier[1])
        return out

    def abort() -> None:  # with the lock held
        stop.set()
        for c in conns:
            with contextlib.suppress(OSError):
                c.sock.shutdown(socket.SHUT_RDWR)

    def run(member: WorkerInfo) -> None:
        # A connection of its own: the progress callback may use the client meanwhile, and
        # a load takes as long as it takes (no timeout; progress shows it is alive).
        try:
            conn = router.open_unpooled(member)
        except (ConnectionError, TimeoutError) as exc:
            with lock:
                lost.append((member, exc))
            return
        with lock:
            if stop.is_set():
                conn.close()
                return
            conns.append(conn)
        try:
            conn.send(request)
            while True:
                answer, _, fds = conn.receive()
                for fd in fds:
                    os.close(fd)
                with lock:
                    states[member.id] = answer["progress"]
                    progress(total())
                if answer.get("done"):
                    return
        except BaseException as exc:
            with lock:
                if (
                    conn.broken
                    and not stop.is_set()
                    and isinstance(exc, (ConnectionError, TimeoutError))
                ):
                    lost.append((member, exc))
                else:
                    errors.append(exc)
                    abort()
        finally:
            conn.close()

    if len(members) == 1:
        run(members[0])  # in the caller's thread: its progress callback runs there
    else:
        threads = [
            threading.Thread(target=run, args=(m,), name=f"shoal-load-{m.id}") for m in members
        ]
        for t in threads:
            t.start()
        try:
            for t in threads:
                t.join()
        except BaseException:
            with lock:
                abort()
            for t in threads:
                t.join()
            raise
    if errors:
        raise errors[0]
    return states, lost, total()


def free(router: Router, path: str) -> dict:
    """``free`` on every live worker (a cluster worker that does not answer is skipped)."""
    router.shortcircuit.locations.drop_path(path)
    total = {"pages": 0, "bytes": 0}
    for member in router.membership().members():
        if router.cluster and router.is_down(member):
            continue
        try:
            answer = router.conn_of(member).call({"op": "free", "path": path})
        except (ConnectionError, TimeoutError) as exc:
            if not router.cluster:
                raise
            router.mark_down(member, exc)
            continue
        total["pages"] += answer["pages"]
        total["bytes"] += answer["bytes"]
    return total
