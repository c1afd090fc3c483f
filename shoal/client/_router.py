"""The client's way to its data: membership (a single node is a cluster of one worker),
connections, placement, and one read loop for every read.

Pages of a read are placed on workers by rendezvous hashing over (file, chunk), the same on
every client and worker. Pages owned by a worker on this client's host are read
short-circuit (through remembered locations first, with no round trip at all), pages owned
elsewhere over the data plane, pages with no live owner straight from the under-store. A
worker that fails hands its pieces to the next replica, then to the under-store. The same
loop runs on one node and on a thousand.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import time

from .._config import Config
from ..control._daemon import socket_path
from ..control._membership import (
    EtcdMembership,
    LocalMembership,
    Membership,
    StaticMembership,
    WorkerInfo,
    members_to_nodes,
)
from ..control._pages import PageSlice, chunk_of, page_slices
from ..control._placement import chunk_key, place
from ..control.proto import DATA, MAX_LIST
from ..engine import crc32c
from ._connection import Connection, WorkerLost, connect
from ._direct import DirectReader
from ._meta import FileMeta
from ._published import PublishedReads
from ._shortcircuit import ShortCircuit

__all__ = ["LOCAL_ID", "Router"]

log = logging.getLogger("shoal.client")

#: The id of the one worker of a single node, as the client names it.
LOCAL_ID = "local"
_MAX_ROUND = 256 << 20  # bytes asked of a worker in one request at most
_START_RETRY_DELAY = 5.0  # seconds reads skip a local worker that could not be started
_DOWN_DELAY = 3.0  # seconds a cluster worker that failed is skipped (about its lease TTL)

#: What a read asks for: destination, file, offset (within the file, the view's bytes).
Item = tuple[memoryview, FileMeta, int]


class Router:
    """Membership, connections and placement of one client, and its read loop.

    Parameters
    ----------
    config
        The client's settings: ``etcd`` or ``membership_file`` make it a cluster client.
    start_worker
        On a single node, start the local worker when none answers.
    timeout
        Seconds to wait for any one answer of a worker (None: for ever).
    start_timeout
        Seconds to wait for a local worker being started.

    Notes
    -----
    Thread-safe: each thread keeps its own connections. :meth:`after_fork` in a forked
    child drops the parent's (closing only the child's copies of their descriptors).
    """

    def __init__(
        self,
        config: Config,
        *,
        start_worker: bool,
        timeout: float | None,
        start_timeout: float,
    ):
        self.config = config
        self.cluster = config.etcd is not None or config.membership_file is not None
        self.start_worker = start_worker
        self.timeout = timeout
        self.start_timeout = start_timeout
        self.direct = DirectReader()
        self._reset()

    def _reset(self) -> None:
        self.pid = os.getpid()
        self._lock = threading.Lock()
        self._local = threading.local()
        self._conns: list[Connection] = []
        self._membership: Membership | None = None
        self._down: dict[tuple[str, str | None], float] = {}  # failed workers, until when
        self._seed = chunk_key(f"{self.config.host_id}/{self.pid}", 0)
        self.shortcircuit = ShortCircuit()
        self.published = PublishedReads(self.shortcircuit)
        self._geometry: tuple[int, int] | None = None  # page size, chunk size

    # ----------------------------------------------------------------- membership

    def membership(self) -> Membership:
        """The workers this client reads from, made on first use: the one local worker on
        a single node, else those of etcd or of the membership file."""
        if os.getpid() != self.pid:
            self.after_fork()
        m = self._membership
        if m is None:
            with self._lock:
                if self._membership is None:
                    self._membership = self._make_membership()
                m = self._membership
        return m

    def _make_membership(self) -> Membership:
        if self.config.etcd is not None:
            from ..control._etcd import EtcdCredentials

            credentials = EtcdCredentials.from_config(self.config)
            return EtcdMembership(self.config.etcd, credentials=credentials)
        if self.config.membership_file is not None:
            return StaticMembership(self.config.membership_file)
        path = socket_path(self.config.home)
        return LocalMembership(WorkerInfo(LOCAL_ID, self.config.host_id, socket_path=path))

    def is_down(self, member: WorkerInfo) -> bool:
        """True while ``member`` failed lately and is skipped."""
        until = self._down.get((member.id, member.address))
        return until is not None and until > time.monotonic()

    def mark_down(self, member: WorkerInfo, exc: BaseException, delay: float = _DOWN_DELAY):
        """Skip ``member`` for ``delay`` seconds, its pooled connection closed."""
        if not self.is_down(member):
            log.warning("Shoal worker %s (%s) failed: %s", member.id, member.address, exc)
        self._down[member.id, member.address] = time.monotonic() + delay
        pool = getattr(self._local, "pool", None)
        conn = pool.pop(member.id, None) if pool else None
        if conn is not None:
            conn.close()

    def _lost(self, member: WorkerInfo, exc: BaseException, opening: bool) -> None:
        """A worker failed. In a cluster it is skipped for a while; a single node's worker
        only when it could not be started (a lost one is started again on the next call)."""
        if self.cluster:
            self.mark_down(member, exc)
        elif opening:
            self.mark_down(member, exc, _START_RETRY_DELAY)
        else:
            pool = getattr(self._local, "pool", None)
            conn = pool.pop(member.id, None) if pool else None
            if conn is not None:
                conn.close()
            log.warning("%s; reading from the under-stores directly", exc)

    # ----------------------------------------------------------------- connections

    def _open(self, member: WorkerInfo, timeout: float | None) -> Connection:
        """A new connection to ``member``: the local worker of a single node (started when
        none answers and the client may), a worker's Unix socket on this host (reads
        short-circuit), TCP otherwise."""
        if not self.cluster:
            return connect(
                self.config,
                start=self.start_worker,
                timeout=timeout,
                start_timeout=self.start_timeout,
            )
        if member.host_id == self.config.host_id and member.socket_path:
            return Connection(member.socket_path, timeout)
        if member.address is None:
            raise ConnectionRefusedError(
                errno.ECONNREFUSED, f"worker {member.id} on another host has no TCP address"
            )
        return Connection(None, timeout, address=member.address, config=self.config)

    def open_unpooled(self, member: WorkerInfo) -> Connection:
        """A connection of the caller's own to ``member``, with no timeout (a job that
        reports its progress as it goes); the caller closes it."""
        return self._open(member, None)

    def _track(self, conn: Connection) -> None:
        """Keep ``conn`` (this thread's) for :meth:`close`; close those of threads that
        ended (a thread pool's short-lived workers would otherwise leave theirs open)."""
        conn.thread = threading.current_thread()
        with self._lock:
            gone = [c for c in self._conns if c.broken or not c.thread.is_alive()]
            self._conns = [c for c in self._conns if c not in gone]
            self._conns.append(conn)
        for c in gone:
            if not c.broken:
                c.close()

    def conn_of(self, member: WorkerInfo) -> Connection:
        """This thread's connection to ``member``, opened when it has none."""
        if os.getpid() != self.pid:
            self.after_fork()
        pool = getattr(self._local, "pool", None)
        if pool is None:
            pool = self._local.pool = {}
        conn = pool.get(member.id)
        if conn is not None and not conn.broken and conn.member.address == member.address:
            return conn
        conn = self._open(member, self.timeout)
        conn.member = member
        pool[member.id] = conn
        self._track(conn)
        if self._geometry is None:
            self._geometry = (conn.hello["page_size"], conn.hello["chunk_size"])
        return conn

    def home(self) -> Connection:
        """The connection for metadata and control: a worker on this host if there is one,
        else one picked by this client's hash, the next on failure."""
        conn = getattr(self._local, "home", None)
        if conn is not None and not conn.broken and os.getpid() == self.pid:
            return conn
        members = [m for m in self.membership().members() if not self.is_down(m)]
        members.sort(
            key=lambda m: (m.host_id != self.config.host_id, chunk_key(m.id, 0) ^ self._seed)
        )
        error: BaseException | None = None
        for member in members:
            try:
                conn = self.conn_of(member)
            except (ConnectionError, TimeoutError) as exc:
                if not self.cluster:
                    raise
                self.mark_down(member, exc)
                error = exc
                continue
            self._local.home = conn
            return conn
        if not self.cluster:
            raise ConnectionRefusedError(
                errno.ECONNREFUSED,
                f"no Shoal worker answers on {socket_path(self.config.home)} (it could not be "
                f"started a moment ago; see {self.config.home}/worker.log)",
            )
        where = self.config.etcd or self.config.membership_file
        raise ConnectionRefusedError(
            errno.ECONNREFUSED,
            f"no worker of the Shoal cluster ({where}) answers"
            + (f"; last error: {error}" if error else ": none is registered"),
        )

    def open_local(self) -> Connection | None:
        """This thread's open connection to a worker on this host, if it has one (none is
        opened)."""
        if os.getpid() != self.pid:
            return None
        pool = getattr(self._local, "pool", None) or {}
        for conn in pool.values():
            if not conn.broken and not conn.remote:
                return conn
        return None

    def call(self, header: dict) -> dict:
        """One control request; on a lost connection, reconnect (starting a local worker,
        or moving to another one) and try once more."""
        try:
            return self.home().call(header)
        except WorkerLost as exc:
            if self.cluster:
                self.mark_down(self.home_member(), exc)
            return self.home().call(header)

    def home_member(self) -> WorkerInfo:
        """The worker of this thread's control connection."""
        return self.home().member

    def broadcast(self, header: dict, done: type[OSError] | tuple[type[OSError], ...] = ()) -> None:
        """With a membership file every worker keeps its own mount table and policies: make
        the same change on the workers other than this thread's home (``done``: the errors
        that say it was made there already)."""
        if not self.cluster or self.config.etcd is not None:
            return  # one node, or a mount table shared in etcd
        home = self.home_member()
        for member in self.membership().members():
            if member.id == home.id:
                continue
            try:
                self.conn_of(member).call(header)
            except done:
                pass
            except (ConnectionError, TimeoutError) as exc:
                log.warning(
                    "worker %s missed %s %s: %s", member.id, header["op"], header["path"], exc
                )
                self.mark_down(member, exc)

    def changed(self, paths: list[str]) -> None:
        """In a cluster, tell the workers other than this thread's home that ``paths`` were
        written, deleted or renamed through it: they forget what they cached of them (a
        worker that misses it sees the change within its mount's ``metadata_ttl``)."""
        if not self.cluster:
            return
        home = self.home_member()
        for member in self.membership().members():
            if member.id == home.id or self.is_down(member):
                continue
            for path in paths:
                try:
                    self.conn_of(member).call({"op": "refresh", "path": path})
                except (OSError, ValueError) as exc:
                    log.warning("worker %s missed the change of %s: %s", member.id, path, exc)
                    if isinstance(exc, (ConnectionError, TimeoutError)):
                        self.mark_down(member, exc)
                    break

    def geometry(self) -> tuple[int, int]:
        """The cluster's page and chunk sizes (from the first worker that answered)."""
        if self._geometry is None:
            self.home()
        assert self._geometry is not None
        return self._geometry

    # ----------------------------------------------------------------- reads

    def read(self, items: list[Item]) -> None:
        """Fill every item's view from its file: the one read loop."""
        members = [m for m in self.membership().members() if not self.is_down(m)]
        local = self._local_member(members)
        if local is not None and self.shortcircuit.locations:
            conn = self._pooled(local)
            if conn is not None:
                items = self.shortcircuit.read_remembered(conn, items)
                if not items:
                    return
        nodes = members_to_nodes(members)
        if not nodes:
            for view, meta, offset in items:
                self.direct.read_range(view, meta, offset)
            return
        try:
            page_size, chunk_size = self.geometry()
        except (ConnectionError, TimeoutError) as exc:
            # No worker answers (in a cluster, home() has marked each one down): the data
            # is still in its stores.
            if not self.cluster:
                self._lost(members[0], exc, opening=True)
            for view, meta, offset in items:
                self.direct.read_range(view, meta, offset)
            return
        self._read_placed(items, nodes, {m.id: m for m in members}, page_size, chunk_size)

    def read_published(self, items: list, whole: bool = False) -> list[int | None] | None:
        """Read what the local worker's table of published files holds of ``items``
        (``[view, normalised path, offset, ...]``), with no request naming them: per item
        the bytes read or None (left to :meth:`read`); None when no local worker answers.
        ``whole``: ``items`` are ``Client.read_many_into``'s own, read natively as
        :meth:`PublishedReads.read_many` does."""
        members = [m for m in self.membership().members() if not self.is_down(m)]
        local = self._local_member(members)
        if local is None:
            return None
        conn = self._pooled(local)
        if conn is None or conn.table is None:
            return None
        try:
            if whole:
                return self.published.read_many(conn, items)
            return self.published.read(conn, items)
        except WorkerLost as exc:
            self._lost(local, exc, opening=False)
            return None

    def _local_member(self, members: list[WorkerInfo]) -> WorkerInfo | None:
        for m in members:
            if m.host_id == self.config.host_id and m.socket_path:
                return m
        return None

    def _pooled(self, member: WorkerInfo) -> Connection | None:
        """This thread's open connection to ``member``, or one opened now (None when it
        cannot be opened)."""
        try:
            return self.conn_of(member)
        except (ConnectionError, TimeoutError) as exc:
            self._lost(member, exc, opening=True)
            return None

    def _read_placed(self, items, nodes, members, page_size: int, chunk_size: int) -> None:
        """Read pieces from the workers placement gives them: each piece from one of its
        replicas (picked by this client's hash), the next replica when a worker fails, the
        under-store when none is left."""
        one = nodes[0].id if len(nodes) == 1 else None
        # per piece: destination, page slice, file, candidate worker ids best first, item
        pending: list[list] = []
        placed: dict[tuple[bytes, int], list[str]] = {}
        for k, (view, meta, offset) in enumerate(items):
            end = min(offset + view.nbytes, meta.size)
            if end <= offset:
                continue
            index, start = divmod(offset, page_size)
            if start + end - offset <= page_size:
                slices = [PageSlice(index, start, end - offset, 0)]  # within one page
            else:
                slices = page_slices(offset, view.nbytes, meta.size, page_size)
            for s in slices:
                if one is not None:
                    order = [one]
                else:
                    chunk = chunk_of(s.index, page_size, chunk_size)
                    order = placed.get((meta.fid, chunk))
                    if order is None:
                        key = chunk_key(meta.fid, chunk)
                        wanted = meta.replicas
                        count = len(nodes) if wanted == "all" else min(int(wanted), len(nodes))
                        owners = [n.id for n in place(key, nodes, count)]
                        turn = (key ^ self._seed) % len(owners)
                        order = owners[turn:] + owners[:turn]
                        placed[meta.fid, chunk] = order
                if s.buf_offset == 0 and s.length == view.nbytes:
                    dest = view
                else:
                    dest = view[s.buf_offset : s.buf_offset + s.length]
                pending.append([dest, s, meta, list(order), k])
        while pending:
            groups: dict[str, list] = {}
            direct = []
            for piece in pending:
                candidates = piece[3]
                while candidates and (
                    candidates[0] not in members or self.is_down(members[candidates[0]])
                ):
                    candidates.pop(0)
                if candidates:
                    groups.setdefault(candidates[0], []).append(piece)
                else:
                    direct.append(piece)
            if direct:
                self._read_direct(items, direct, page_size)
            pending = self._read_rounds(groups, members, page_size)

    def _read_rounds(self, groups: dict[str, list], members: dict, page_size: int) -> list:
        """Read each worker's pieces in rounds, one request in flight per worker, sent to
        every worker before any answer is read (they serve at the same time); the pieces
        of workers that failed, their first candidate dropped."""
        failed: list = []

        def lose(member, batch_pieces, rest, exc, opening) -> None:
            self._lost(member, exc, opening)
            for piece in batch_pieces + [p for b in rest for p in b]:
                piece[3].pop(0)
                failed.append(piece)

        rounds: dict[str, list] = {}
        for wid, pieces in groups.items():
            rounds[wid] = [pieces]  # cut below once the worker's capacity is known
        cut: set[str] = set()
        while rounds:
            sent = []
            for wid in list(rounds):
                member = members[wid]
                try:
                    conn = self.conn_of(member)
                except (ConnectionError, TimeoutError) as exc:
                    lose(member, [], rounds.pop(wid), exc, opening=True)
                    continue
                if wid not in cut:
                    cut.add(wid)
                    round_bytes = max(page_size, min(_MAX_ROUND, conn.hello["capacity"] // 4))
                    rounds[wid] = _rounds(rounds[wid][0], round_bytes)
                batch = rounds[wid].pop(0)
                if not rounds[wid]:
                    del rounds[wid]
                try:
                    if conn.remote:
                        _send_data_read(conn, batch)
                    sent.append((member, conn, batch))
                except WorkerLost as exc:
                    lose(member, batch, rounds.pop(wid, []), exc, opening=False)
            for k, (member, conn, batch) in enumerate(sent):
                try:
                    if conn.remote:
                        _recv_data_read(conn, batch)
                    else:
                        self.shortcircuit.read(conn, [(d, s, m) for d, s, m, _, _ in batch])
                except WorkerLost as exc:
                    lose(member, batch, rounds.pop(member.id, []), exc, opening=False)
                except BaseException:
                    for _, other, _ in sent[k + 1 :]:
                        other.close()  # its answer is still on the way: start afresh
                    raise
        return failed

    def _read_direct(self, items: list[Item], pieces: list, page_size: int) -> None:
        """Pieces with no live owner, from the under-store: the neighbouring pieces of one
        item with one request."""
        pieces.sort(key=lambda p: (p[4], p[1].buf_offset))
        run = None  # [item, buffer start, buffer end, file offset]
        runs = []
        for _, s, _, _, k in pieces:
            offset = s.index * page_size + s.start
            if run is not None and run[0] == k and run[2] == s.buf_offset:
                run[2] += s.length
                continue
            run = [k, s.buf_offset, s.buf_offset + s.length, offset]
            runs.append(run)
        for k, start, end, offset in runs:
            view, meta, _ = items[k]
            self.direct.read_range(view[start:end], meta, offset)

    # ----------------------------------------------------------------- lifetime

    def after_fork(self) -> None:
        """In a forked child: close our copies of the parent's descriptors only (no
        shutdown, no message, no lock a parent's thread may have held), and start
        afresh."""
        for conn in self._conns:
            conn.abandon()
        self.direct.abandon()
        self._reset()

    def close(self) -> None:
        """Close every connection, the membership and the stores; first tell the worker
        of pages read with no round trip not told yet (it counts them as hits)."""
        forked = os.getpid() != self.pid
        if self.shortcircuit.locations.touched_since and not forked:
            conn = self.open_local()
            if conn is not None:
                with contextlib.suppress(ConnectionError, TimeoutError):
                    self.shortcircuit.report_touched(conn)
        with self._lock:
            conns, self._conns = self._conns, []
        membership, self._membership = self._membership, None
        if membership is not None and not forked:
            membership.close()
        for conn in conns:
            conn.abandon() if forked else conn.close()
        if forked:
            self.direct.abandon()
        else:
            self.direct.close()


def _rounds(pieces: list, round_bytes: int) -> list[list]:
    """``pieces`` cut into batches of about ``round_bytes`` and at most ``MAX_LIST``
    pieces (one piece at least)."""
    out, batch, total = [], [], 0
    for piece in pieces:
        if batch and (total + piece[0].nbytes > round_bytes or len(batch) >= MAX_LIST):
            out.append(batch)
            batch, total = [], 0
        batch.append(piece)
        total += piece[0].nbytes
    if batch:
        out.append(batch)
    return out


def _send_data_read(conn: Connection, batch: list, segments: bool = True) -> None:
    """Ask a remote worker for the bytes of ``batch``; with ``segments``, whole pages come
    straight from its region files, with their crc32c for us to check."""
    files: dict[tuple[str, str], int] = {}
    wanted = []
    for _, s, meta, *_ in batch:
        fi = files.setdefault((meta.path, meta.version), len(files))
        wanted.append([fi, s.index, s.start, s.length])
    conn.send(
        {"op": "read", "files": [list(k) for k in files], "items": wanted, "mode": DATA,
         "forget": [], "segments": segments}
    )  # fmt: skip


def _recv_data_read(conn: Connection, batch: list) -> None:
    answer, payload_len, fds = conn.receive()
    for fd in fds:
        os.close(fd)
    conn.recv_payload([piece[0] for piece in batch], payload_len)
    crcs = answer.get("crcs")
    if crcs is None:
        return
    if not isinstance(crcs, list) or len(crcs) != len(batch):
        conn.close()
        raise WorkerLost(f"the worker at {conn.where} sent a malformed crcs list")
    # A page whose region was reclaimed while it was sent: read it again, checked by the
    # worker this time.
    bad = [p for p, crc in zip(batch, crcs, strict=True) if crc is not None and crc32c(p[0]) != crc]
    if bad:
        _send_data_read(conn, bad, segments=False)
        _recv_data_read(conn, bad)
