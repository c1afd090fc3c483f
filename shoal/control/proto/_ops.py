"""The operations a worker serves: names, request fields and what each answers.

Every request is one frame whose header holds ``op`` and the op's fields; every answer is
one frame whose header is ``{"ok": True, ...}`` or ``{"ok": False, "error": {...}}`` (see
``_errors``). Only ``load`` answers with several frames: progress frames with ``done``
false, then a last one with ``done`` true.

===========  =================================================  ===============================
op           request fields                                     answer fields
===========  =================================================  ===============================
hello        ``pid``, ``version``; over TCP also ``nonce``,      ``version``, ``worker_pid``,
             ``admin``; on a Unix socket optional ``table``     ``host_id``, ``page_size``,
                                                                ``chunk_size``, ``home``,
                                                                ``capacity``, ``worker_id``,
                                                                ``admin``, ``table``; or a
                                                                challenge
table        (none; Unix socket only)                           (none); one descriptor
regions      ``regions`` ([tier, region] pairs; Unix socket)    ``fds``
auth         ``proof``, ``admin_proof`` (TCP, after ``hello``)  what ``hello`` answers
mount        ``path``, ``uri``, ``options`` (dict)              ``mount``
unmount      ``path``                                           ``mount``
mounts       (none)                                             ``mounts`` (list)
stat         ``paths`` (list); optional ``fetch``: per path     ``files``: per path a file
             None or ``[start, end]``                           record or ``{"error": ...}``
ls           ``path``                                           ``entries`` (list)
refresh      ``path``                                           ``dropped`` (entries forgotten)
read         ``files`` ([path, version] pairs), ``items``        ``locs``, ``fds`` (or ``crcs``
             ([file, page, start, length]), ``mode``            with ``segments``); payload:
             (``"locate"`` or ``"data"``), ``forget``,          the pieces not located
             optional ``segments``
load         ``paths`` (list), ``metadata_only``                ``progress`` ... then ``done``
free         ``path``                                           ``pages``, ``bytes``
report       (none)                                             ``report`` (dict)
du           ``path``                                           ``path``, ``bytes``, ``pages``,
                                                                ``files``, ``tiers`` (bytes per
                                                                tier)
touch        ``regions`` ([tier, region, pages] triples)        (none)
job_put      ``key`` (``jobs/<kind>/<id>``), ``record`` (dict)  (none)
jobs         ``prefix`` (``jobs/...``), ``limit`` (int)         ``jobs``: records, newest first
policy_set   ``path``, ``policy`` (field -> value)              ``policy``: the rule after
policy_rm    ``path``, ``fields`` (names; none: every field)    ``policy``: the rule after
policies     (none)                                             ``policies``: rules, by path
policy_show  ``path``                                           ``effective``
write_open   ``path``, ``size`` (-1: not known yet)              ``handle``, ``mode``,
                                                                ``reserved``; on a Unix socket
                                                                one descriptor to write to
write_grow   ``handle``, ``size`` (bytes the file may reach)    ``reserved``
write_data   ``handle``, ``offset``; payload: the next bytes    ``written``
write_commit ``handle``, ``size``                               ``size``, ``version``,
                                                                ``mode``, ``persisted``
write_abort  ``handle``                                         (none)
delete       ``path``                                           (none)
rename       ``src``, ``dst``                                   (none)
persisted    ``paths`` (list)                                   ``persisted``: a bool per path
wait_persisted ``path`` ("" for all), ``timeout`` (seconds)     ``files``, ``bytes`` left
stop         (none)                                             (none); the worker exits
===========  =================================================  ===============================

Writes (see ``_writeback``): ``write_open`` checks the path's write mode and reserves room
in the worker's dirty budget; a client on the Unix socket writes the bytes itself to the
descriptor it is given, a TCP client sends them with ``write_data`` (at most
:data:`MAX_WRITE_PAYLOAD` bytes a request, in order); ``write_commit`` makes the file
durable as its write mode says and visible to every reader. A write not committed when
its connection ends is dropped.

``hello`` and ``auth`` authenticate a TCP peer when the worker holds a cluster secret
(see ``_auth``); until then the worker serves nothing else. Ops in :data:`ADMIN_OPS` are
served to the worker's own user (or root) on its Unix socket and to TCP peers that proved
the admin secret; every other op to any authenticated peer.

A request stays within the limits below (:data:`MAX_LIST` entries per list,
:data:`MAX_PATH_BYTES` per path, :data:`MAX_READ_BYTES` asked of one ``read``); past them
it is answered an ``OSError`` (``E2BIG``, ``ENAMETOOLONG``) and the connection serves on.

A file record (``stat``) holds ``path``, ``size``, ``version``, ``mtime``, ``is_dir``,
``fid`` (the 16-byte file id), ``mount`` (the mount point), ``uri`` and ``options`` (the
mount's under-store URI and store options, for reading it directly when the worker is
gone), ``rel`` (the path relative to the mount), and the mount's ``metadata_ttl`` and
``replicas``. Directories are listed whole (one level, every page of the listing) once per
``metadata_ttl``, and a path absent from its directory's listing is answered
``FileNotFoundError`` from it. A ``stat`` whose ``fetch`` gives, for a path, the bytes
``[start, end)`` its client is about to read lets a worker that knows nothing of that file
yet learn its metadata from one read of those pages (the answer to a GET tells the size
and version), which it caches: a cold read of a small object costs one request to the
store, not a HEAD and a GET. Clients of a cluster leave ``fetch`` out (the worker that
caches a file's pages depends on its version).

``read`` in ``locate`` mode answers, per item, the location of its page in the page store
(``[tier, region, offset, length, crc32c, generation]``) or ``None``; the items without a
location are in the payload. ``fds`` lists the descriptors attached to the answer, in order,
as ``[tier, region]`` (region ``-1`` for the tier's generation table); each is sent once per
connection, and ``forget`` (``[tier, region]`` pairs) tells the worker which ones the client
has closed since. In ``data`` mode every item's bytes are in the payload. The payload holds
exactly the requested piece (``start``, ``length``) of each page, in item order.

On TCP (a cluster's remote clients) no descriptor crosses: ``read`` is served in ``data``
mode. A remote ``read`` with ``segments`` true has whole cached pages sent straight from
their region files (through memory over TLS), unchecked, and answers ``crcs``: per item
the page's crc32c (checked by the client, which asks again without ``segments`` on a
mismatch) or ``None`` for a piece the worker read and checked itself. ``load`` takes an
optional ``placement`` (``{"nodes": [[id, weight], ...]}``): the worker then loads only
the pages placed on itself. A ``progress`` holds ``files_done``, ``files_total``,
``bytes_done``, ``bytes_total``, ``pages_done``, ``pages_total`` and, among the pages done,
those cached already: ``pages_skipped``, ``bytes_skipped``.

``du`` answers what the worker caches under ``path`` (whole components), seen through
its file records (see ``_usage``): ``bytes``, ``pages``, ``files`` (those with a page
cached) and ``tiers`` (bytes per tier, every tier of the worker, 0 when empty); a path under
no mount that holds none is a ``FileNotFoundError``. Like ``report`` it changes nothing:
any authenticated peer may ask.

``job_put`` stores a job record (a JSON document) in the worker's MetaStore (etcd in a
cluster); ``jobs`` lists the records under a prefix, newest (greatest key) first.

A rule is ``{"path": ..., "policy": {field: value}}`` (see ``_policy``); a ``policy_set``
value is None, a bool, a number or a short string, checked by the worker field by field (a
bad one is a ``ValueError``). ``effective`` holds ``path``, ``mount``, ``policy`` (every
field's value in force) and ``sources`` (per field the prefix of its rule, ``"mount"``,
``"default"`` or None).

``hello`` with ``table`` true, on a Unix socket, is answered with one descriptor (and
``table`` true): the worker's table of published files (see ``_filetable``), which the
client maps read-only to read cached small files with no request; ``table`` answers the
current one after the client found its own superseded. ``regions`` answers the
descriptors of region files (as ``fds`` tokens, with their tiers' generation tables) that
the client lacks, for the pages the table points to.

A client remembers the locations it was given and reads those pages again without asking;
``touch`` reports such reads now and then (pages per region), so that the worker counts
them as hits and keeps their regions as recently used.
"""

from __future__ import annotations

import errno

from .._namespace import MAX_PATH_BYTES
from .._pages import MAX_PAGES
from ._frames import MAX_FDS, ProtocolError

__all__ = [
    "ADMIN_OPS",
    "DATA",
    "GENERATIONS",
    "LOCATE",
    "MAX_LIST",
    "MAX_READ_BYTES",
    "MAX_WRITE_PAYLOAD",
    "WRITE_OPS",
    "OPS",
    "PROTOCOL_VERSION",
    "check_request",
    "check_version",
]

PROTOCOL_VERSION = 1

#: ``read`` modes.
LOCATE, DATA = "locate", "data"
#: The region number that names a tier's generation table in ``fds``.
GENERATIONS = -1

#: Entries of any list in a request (read items and files, stat and load paths, touch
#: regions, forget entries) at most.
MAX_LIST = 1 << 16
#: Bytes one ``read`` may ask for at most (what its answer holds until it is sent).
MAX_READ_BYTES = 1 << 30
#: Bytes one ``write_data`` request carries at most.
MAX_WRITE_PAYLOAD = 16 << 20
_MAX_NAME = 1024  # bytes of a version, tier name, job key or prefix
_MAX_URI = 2 * MAX_PATH_BYTES
_MAX_OPTIONS = 64
_MAX_PAGES_PER_TOUCH = 1 << 24  # pages of one region reported read, at most

#: op -> required request fields and their types.
OPS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "hello": {"pid": int, "version": int},
    "auth": {"proof": bytes},
    "mount": {"path": str, "uri": str, "options": dict},
    "unmount": {"path": str},
    "mounts": {},
    "stat": {"paths": list},
    "ls": {"path": str},
    "refresh": {"path": str},
    "read": {"files": list, "items": list, "mode": str, "forget": list},
    "load": {"paths": list, "metadata_only": bool},
    "free": {"path": str},
    "report": {},
    "du": {"path": str},
    "touch": {"regions": list},
    "table": {},
    "regions": {"regions": list},
    "job_put": {"key": str, "record": dict},
    "jobs": {"prefix": str, "limit": int},
    "policy_set": {"path": str, "policy": dict},
    "policy_rm": {"path": str, "fields": list},
    "policies": {},
    "policy_show": {"path": str},
    "write_open": {"path": str, "size": int},
    "write_grow": {"handle": int, "size": int},
    "write_data": {"handle": int, "offset": int},
    "write_commit": {"handle": int, "size": int},
    "write_abort": {"handle": int},
    "delete": {"path": str},
    "rename": {"src": str, "dst": str},
    "persisted": {"paths": list},
    "wait_persisted": {"path": str, "timeout": (int, float)},
    "stop": {},
}
#: Ops that change what the worker serves or stores for others, or stop it.
ADMIN_OPS = frozenset({"mount", "unmount", "free", "job_put", "policy_set", "policy_rm", "stop"})
#: Ops that change files in under-stores: served to TCP peers only when they proved the
#: cluster secret (a worker without one serves them on its Unix socket only).
WRITE_OPS = frozenset(
    {"write_open", "write_grow", "write_data", "write_commit", "write_abort", "delete", "rename"}
)


def _int(value: object, what: str, low: int = 0, high: int = 1 << 63) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value < high:
        raise ProtocolError(f"{what} must be an int in [{low}, {high}), got {value!r}")
    return value


def _count(values: list, what: str) -> None:
    if len(values) > MAX_LIST:
        raise OSError(errno.E2BIG, f"{what}: {len(values)} entries; at most {MAX_LIST} per request")


def _text(value: str, what: str, limit: int) -> None:
    """``ENAMETOOLONG`` for text over ``limit`` bytes (UTF-8)."""
    if len(value) <= limit and value.isascii():
        return
    size = len(value.encode(errors="replace"))
    if size > limit:
        raise OSError(errno.ENAMETOOLONG, f"{what}: {size} bytes; at most {limit}")


def _paths(values: list, what: str) -> None:
    _count(values, what)
    for p in values:
        if not isinstance(p, str):
            raise ProtocolError(f"{what}: paths must be strings")
        _text(p, f"{what}: a path", MAX_PATH_BYTES)


def _tier_regions(entries: list, what: str, fields: str, low: int = 0) -> list:
    """``entries`` after checking that each is a list ``[tier, region, ...]`` of the
    ``fields`` named, its tier a name and its region a number from ``low``."""
    width = fields.count(",") + 1
    for entry in entries:
        if not isinstance(entry, list) or len(entry) != width or not isinstance(entry[0], str):
            raise ProtocolError(f"{what}: each entry must be [{fields}], got {entry!r:.200}")
        _text(entry[0], f"{what}: tier", _MAX_NAME)
        _int(entry[1], f"{what}: region", low, 1 << 32)
    return entries


def check_version(version: int) -> None:
    """``ProtocolError`` unless a peer's protocol ``version`` is this one."""
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"client speaks protocol {version}, this worker {PROTOCOL_VERSION}; "
            "upgrade the older side"
        )


def check_request(header: dict) -> str:
    """The op of a request header after checking its fields; ``ProtocolError`` naming the
    field otherwise, ``OSError`` (``E2BIG``, ``ENAMETOOLONG``) for a request past the
    limits. ``read`` items are checked in depth (they index into ``files``)."""
    op = header.get("op")
    fields = OPS.get(op) if isinstance(op, str) else None
    if fields is None:
        raise ProtocolError(f"unknown op {str(op)[:64]!r}; known: {', '.join(sorted(OPS))}")
    for name, kind in fields.items():
        value = header.get(name)
        if value is None or isinstance(value, bool) is not (kind is bool):
            raise ProtocolError(f"{op}: field {name!r} is missing or has the wrong type")
        if not isinstance(value, kind):
            raise ProtocolError(
                f"{op}: field {name!r} must be {getattr(kind, '__name__', kind)}, "
                f"got {type(value).__name__}"
            )
    for name in ("path", "uri", "key", "prefix", "src", "dst"):
        value = header.get(name)
        if name in fields and isinstance(value, str):
            limit = {"path": MAX_PATH_BYTES, "uri": _MAX_URI, "src": MAX_PATH_BYTES,
                     "dst": MAX_PATH_BYTES}.get(name, _MAX_NAME)  # fmt: skip
            _text(value, f"{op}: {name}", limit)
    if op == "read":
        _check_read(header)
    elif op.startswith("write_"):
        for name in ("handle", "size", "offset"):
            if name in fields:
                low = -1 if (op, name) == ("write_open", "size") else 0
                _int(header[name], f"{op}: {name}", low, 1 << 62)
    elif op == "wait_persisted":
        timeout = header["timeout"]
        if not 0 <= timeout <= 3600:
            raise ValueError(f"wait_persisted: timeout must be 0 to 3600 seconds, got {timeout}")
    elif op in ("stat", "load", "persisted"):
        _paths(header["paths"], f"{op}: paths")
    elif op == "touch":
        _count(header["regions"], "touch: regions")
        for entry in _tier_regions(header["regions"], "touch", "tier, region, pages"):
            _int(entry[2], "touch: pages", 1, _MAX_PAGES_PER_TOUCH)
    elif op == "regions":
        if len(header["regions"]) > MAX_FDS:
            raise OSError(
                errno.E2BIG, f"regions: {len(header['regions'])} entries; at most {MAX_FDS}"
            )
        _tier_regions(header["regions"], "regions", "tier, region")
    elif op == "mount" and len(header["options"]) > _MAX_OPTIONS:
        raise OSError(
            errno.E2BIG,
            f"mount: {len(header['options'])} options; at most {_MAX_OPTIONS}",
        )
    elif op == "policy_set":
        _check_policy(header["policy"])
    elif op == "policy_rm":
        _count(header["fields"], "policy_rm: fields")
        for name in header["fields"]:
            if not isinstance(name, str):
                raise ProtocolError(f"policy_rm: field names must be strings, got {name!r:.64}")
            _text(name, "policy_rm: a field name", _MAX_NAME)
    elif op == "jobs":
        _int(header["limit"], "jobs: limit", 0, 1 << 31)
        if not header["prefix"].startswith("jobs/"):
            raise ProtocolError(
                f"jobs: prefix must start with 'jobs/', got {header['prefix'][:64]!r}"
            )
    return op


def _check_policy(policy: dict) -> None:
    """A ``policy_set`` policy: at most :data:`_MAX_OPTIONS` fields, named by strings, each
    value None, a bool, a number or a string (its meaning is the worker's to check)."""
    if len(policy) > _MAX_OPTIONS:
        raise OSError(errno.E2BIG, f"policy_set: {len(policy)} fields; at most {_MAX_OPTIONS}")
    for name, value in policy.items():
        if not isinstance(name, str):
            raise ProtocolError(f"policy_set: field names must be strings, got {name!r:.64}")
        _text(name, "policy_set: a field name", _MAX_NAME)
        if value is not None and not isinstance(value, (bool, int, float, str)):
            raise ProtocolError(
                f"policy_set: field {name[:64]!r} must be a bool, a number or a string, "
                f"got {type(value).__name__}"
            )
        if isinstance(value, str):
            _text(value, f"policy_set: field {name[:64]!r}", _MAX_NAME)


def _check_read(header: dict) -> None:
    if header["mode"] not in (LOCATE, DATA):
        raise ProtocolError(
            f"read: mode must be {LOCATE!r} or {DATA!r}, got {header['mode'][:64]!r}"
        )
    files = header["files"]
    items = header["items"]
    _count(files, "read: files")
    _count(items, "read: items")
    _count(header["forget"], "read: forget")
    for f in files:
        if (
            not isinstance(f, list)
            or len(f) != 2
            or not isinstance(f[0], str)
            or not isinstance(f[1], str)
        ):
            raise ProtocolError(f"read: each file must be [path, version], got {f!r:.200}")
        _text(f[0], "read: a path", MAX_PATH_BYTES)
        _text(f[1], "read: a version", _MAX_NAME)
    total = 0
    for item in items:
        if not isinstance(item, list) or len(item) != 4:
            raise ProtocolError(
                f"read: each item must be [file, page, start, length], got {item!r:.200}"
            )
        _int(item[0], "read: item file", 0, len(files))
        _int(item[1], "read: item page", 0, MAX_PAGES)
        _int(item[2], "read: item start", 0, 1 << 32)
        total += _int(item[3], "read: item length", 1, 1 << 32)
    if total > MAX_READ_BYTES:
        raise OSError(
            errno.E2BIG, f"read: {total} bytes asked; at most {MAX_READ_BYTES} per request"
        )
    _tier_regions(header["forget"], "read: forget", "tier, region", low=GENERATIONS)
