"""Job records: one JSON document per ``shoal load``, kept in the MetaStore.

A record lives under ``jobs/load/<id>``, where the id starts with the job's start time in
UTC (``20261122T095812.123456Z-3fa2``), so that key order is start order. The client that
runs a load writes its record (through a worker's ``job_put`` op) when it starts, again
every ``heartbeat_every`` seconds while it runs (its ``heartbeat``: when), and when it
ends: DONE, FAILED (the load or the connection failed) or STOPPED (the caller interrupted
it). ``jobs`` lists them, newest first; a RUNNING record whose client has sent no
heartbeat for :data:`STALE_HEARTBEATS` of its intervals is FAILED from then on (its client
was killed, or lost the workers).
"""

from __future__ import annotations

import datetime as _dt
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ._metastore import MetaStore

__all__ = [
    "COUNTS",
    "DONE",
    "FAILED",
    "JOB_PREFIX",
    "LOAD_PREFIX",
    "RUNNING",
    "STATES",
    "STOPPED",
    "check_job_key",
    "finish_record",
    "load_record",
    "mark_abandoned",
    "mark_stale",
    "new_job_id",
    "newest_first",
]

JOB_PREFIX = "jobs/"
LOAD_PREFIX = "jobs/load/"
RUNNING, DONE, FAILED, STOPPED = "RUNNING", "DONE", "FAILED", "STOPPED"
STATES = (RUNNING, DONE, FAILED, STOPPED)
#: The counters of a load record (the worker's progress fields, summed over workers).
COUNTS = (
    "files_done",
    "files_total",
    "bytes_done",
    "bytes_total",
    "pages_done",
    "pages_total",
    "pages_skipped",
    "bytes_skipped",
)
#: Paths kept in a record; the count says how many there were.
FIRST_PATHS = 5
#: Seconds between two heartbeats of a running load's client, by default.
HEARTBEAT_EVERY = 10.0
#: Heartbeat intervals without one after which a RUNNING record is FAILED.
STALE_HEARTBEATS = 3


def new_job_id(now: float | None = None) -> str:
    """A job id that sorts by start time: UTC time to the microsecond, then 16 random bits."""
    when = _dt.datetime.fromtimestamp(time.time() if now is None else now, _dt.timezone.utc)
    return f"{when.strftime('%Y%m%dT%H%M%S.%f')}Z-{os.urandom(2).hex()}"


def load_record(
    job_id: str,
    paths: Sequence[str],
    metadata_only: bool,
    replicas: int | str | None,
    started: float,
    heartbeat_every: float = HEARTBEAT_EVERY,
) -> dict[str, Any]:
    """The RUNNING record of a load that starts now, its client sending a heartbeat every
    ``heartbeat_every`` seconds."""
    return {
        "heartbeat": started,
        "heartbeat_every": heartbeat_every,
        "id": job_id,
        "kind": "load",
        "paths": {"count": len(paths), "first": list(paths[:FIRST_PATHS])},
        "metadata_only": bool(metadata_only),
        "replicas": replicas,
        "started": started,
        "finished": None,
        "state": RUNNING,
        "error": None,
        **dict.fromkeys(COUNTS, 0),
    }


def finish_record(
    record: Mapping[str, Any],
    state: str,
    counts: Mapping[str, int],
    error: str | None = None,
    finished: float | None = None,
) -> dict[str, Any]:
    """``record`` ended in ``state`` with ``counts`` (missing counters stay as they were)."""
    if state not in STATES or state == RUNNING:
        raise ValueError(f"a job ends DONE, FAILED or STOPPED, not {state!r}")
    out = dict(record)
    out.update({k: int(counts[k]) for k in COUNTS if k in counts})
    out["state"] = state
    out["error"] = error
    out["finished"] = time.time() if finished is None else finished
    return out


def check_job_key(key: str) -> str:
    """``key`` if it names a job record (``jobs/<kind>/<id>``); ``ValueError`` otherwise."""
    parts = key.split("/") if isinstance(key, str) else []
    if len(parts) != 3 or parts[0] != "jobs" or not all(parts[1:]):
        raise ValueError(f"a job key is jobs/<kind>/<id>, got {key!r}")
    return key


def newest_first(records: Iterable[tuple[str, Any]], limit: int | None = None) -> list[Any]:
    """The documents of ``(key, document)`` pairs, newest (greatest key) first, at most
    ``limit`` of them."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be an int >= 0 or None, got {limit!r}")
    docs = [doc for _, doc in sorted(records, key=lambda kv: kv[0], reverse=True)]
    return docs if limit is None else docs[:limit]


def mark_stale(store: MetaStore, records: Iterable[tuple[str, Any]], now: float | None = None):
    """``records`` (``(key, document)``), each RUNNING one whose client has sent no
    heartbeat for :data:`STALE_HEARTBEATS` of its intervals marked FAILED, in ``store``
    too."""
    now = time.time() if now is None else now
    out = []
    for key, doc in list(records):  # read them all before writing any
        if isinstance(doc, dict) and doc.get("state") == RUNNING:
            beat, every = doc.get("heartbeat"), doc.get("heartbeat_every")
            numbers = all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in (beat, every)
            )
            if numbers and now - beat > STALE_HEARTBEATS * every:
                doc = {
                    **doc,
                    "state": FAILED,
                    "finished": now,
                    "error": f"its client sent no heartbeat for {now - beat:.0f} s (killed, "
                    "or cut off from the workers)",
                }
                store.put(key, doc)
        out.append((key, doc))
    return out


def mark_abandoned(store: MetaStore, reason: str) -> int:
    """Mark FAILED the RUNNING load records of ``store`` (their loads cannot be going on:
    the node's worker restarted); how many."""
    count = 0
    for key, doc in list(store.scan(LOAD_PREFIX)):
        if isinstance(doc, dict) and doc.get("state") == RUNNING:
            store.put(key, {**doc, "state": FAILED, "error": reason})
            count += 1
    return count
