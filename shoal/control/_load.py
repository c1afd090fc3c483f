"""Load jobs: files under paths brought into the page store ahead of use, with progress
as they go; the whole one-page files of a job read by the fetch threads as they are
listed, chunks ahead, and stored in the job's own thread."""

from __future__ import annotations

import contextlib
import errno
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import CancelledError

from ..engine import PageStore
from ._fetch import Fetcher, FilesRead, Page
from ._files import File, FileResolver
from ._jobs import COUNTS, check_job_key, mark_stale, newest_first
from ._metastore import MetaStore
from ._metrics import Counters
from ._namespace import split_mount_options
from ._pages import page_key
from ._publisher import Publisher
from ._server import Handler, Reply

__all__ = ["Loader", "job_handlers", "placement_filter"]

#: Whole one-page files a load hands the fetcher at once: at most this many, or the first
#: that reach this many bytes; and such chunks in flight, read ahead while the first is
#: stored. Large chunks spread the work of each (an index commit, the table, the reads'
#: hand-over) over many small files; the bytes keep the room a load claims at once in a
#: tier a small part of it. (Chunks of 2,048, two in flight, loaded 200,000 small local
#: files faster than 512 with four or eight, or 4,096 with two.)
_LOAD_CHUNK = 2048
_LOAD_CHUNK_BYTES = 8 << 20
_LOAD_TASKS = 2
#: The end of the key of a file's first page (see ``page_key``), the file's id before it.
_FIRST_PAGE = page_key(bytes(16), 0)[16:]


class Loader:
    """Runs load jobs for a worker.

    Parameters
    ----------
    files, fetcher, store, publisher, counters
        The worker's parts: files are resolved and listed by ``files``, fetched by
        ``fetcher`` into ``store``, one-page ones published by ``publisher``; misses are
        counted in ``counters``.
    worker_id
        The worker's id in a cluster (what a job's placement names), or None.
    page_size, chunk_size
        The node's page and placement chunk sizes.
    """

    def __init__(
        self,
        files: FileResolver,
        fetcher: Fetcher,
        store: PageStore,
        publisher: Publisher,
        counters: Counters,
        *,
        page_size: int,
        chunk_size: int,
    ):
        self.files = files
        self.fetcher = fetcher
        self._store = store
        self._publisher = publisher
        self._counters = counters
        self.page_size = page_size
        self.chunk_size = chunk_size
        self.worker_id: str | None = None

    def load(
        self,
        paths: list[str],
        metadata_only: bool,
        progress: Callable[[dict], None],
        window: int = 64,
        placement: dict | None = None,
    ) -> dict:
        """Fill the metadata cache (and, unless ``metadata_only``, the page store) with
        the files under ``paths``; ``progress`` gets the counters after each file: files,
        bytes and pages done of their totals, and the pages and bytes among those done
        that were cached already (``pages_skipped``, ``bytes_skipped``). The whole
        one-page files are fetched as they are listed, but progress is told from the end
        of the listing on: every report holds the final totals.

        In a cluster, ``placement`` (``{"nodes": [[id, weight], ...]}``, the live workers
        as the client sees them) limits the job to the pages placed on this worker, a
        file's ``replicas`` mount option honoured; bytes count those pages."""
        fetcher = self.fetcher
        mine = placement_filter(placement, self.worker_id, self.page_size, self.chunk_size)
        rest: list[tuple[File, list[Page], int]] = []  # other files: pages, their bytes
        ps = self.page_size
        state = dict.fromkeys(COUNTS, 0)
        listed = False  # progress is told once the listing is whole: its totals final
        last, told = 0.0, None

        def tell() -> None:
            nonlocal last, told
            last, told = time.monotonic(), dict(state)
            progress(told)

        def tick() -> None:
            if listed and (
                time.monotonic() - last > 0.1 or state["files_done"] == state["files_total"]
            ):
                tell()

        # Whole one-page files are fetched as they are listed, while the store lists the
        # next ones (see _Ones); the others once the listing is whole.
        ones = None if metadata_only else _Ones(self, state, tick)
        try:
            for files in self.files.files_under_runs(paths, _LOAD_CHUNK):
                new: list[Page] = []  # the pages of whole one-page files
                nbytes = 0
                for f in files:
                    size = f.info.size
                    if placement is None and 0 < size <= ps:  # one page, all of it here
                        new.append(Page(f.fid + _FIRST_PAGE, f, 0, size))  # as page_key
                        nbytes += size
                        continue
                    pages = mine(f, fetcher.pages_of(f))
                    size = sum(p.length for p in pages)
                    nbytes += size
                    if _one_page(f, pages):
                        new.append(pages[0])
                    else:
                        rest.append((f, pages, size))
                        state["pages_total"] += len(pages)
                state["files_total"] += len(files)
                state["bytes_total"] += nbytes
                state["pages_total"] += len(new)
                if ones is not None:
                    ones.add(new)
            listed = True
            if ones is None:  # metadata only
                state["pages_total"] = 0
                state["files_done"] = state["files_total"]
                state["bytes_done"] = state["bytes_total"]
                tell()
                return state
            ones.finish()
        finally:
            if ones is not None:
                ones.abandon()
        # (file, its pages, their bytes, futures of those fetched, their bytes)
        pending: deque[tuple[File, list[Page], int, dict, int]] = deque()
        inflight = [0]  # futures in ``pending``

        def finish_first() -> None:
            f, pages, size, futures, fetched_bytes = pending.popleft()
            inflight[0] -= len(futures)
            fetcher.results(futures)
            state["files_done"] += 1
            state["bytes_done"] += size
            state["pages_done"] += len(pages)
            state["pages_skipped"] += len(pages) - len(futures)
            state["bytes_skipped"] += size - fetched_bytes
            tick()

        for f, pages, size in rest:
            todo = [p for p in pages if not fetcher.contains(p)]
            self._counters.add(page_misses=len(todo))
            self._counters.add_mount(f.mount.path, page_misses=len(todo))
            futures = fetcher.start(todo)
            pending.append((f, pages, size, futures, sum(p.length for p in todo)))
            inflight[0] += len(futures)
            while inflight[0] > window:
                finish_first()
            while pending and all(fut.done() for fut in pending[0][3].values()):
                finish_first()
        while pending:
            finish_first()
        if told != state:  # all done while the files were listed, or no file at all
            tell()
        return state


class _Ones:
    """The whole one-page files of a load, fetched as they are listed: in chunks of at
    most :data:`_LOAD_CHUNK` files and, but for a first page as large,
    :data:`_LOAD_CHUNK_BYTES` bytes, single-flight with the reads going on (a page a read
    fetches now is not fetched again). The fetch threads read the next chunks, each with
    one call of its store, while the load's thread stores and publishes the chunk read
    before and makes the next: the Python work of a load in one thread (see
    :meth:`Fetcher.begin_files`). The first file that fails fails the load, as in the
    general path."""

    def __init__(self, loader: Loader, state: dict, tick: Callable[[], None]):
        self._fetcher = loader.fetcher
        self._publisher = loader._publisher
        self._counters = loader._counters
        self._state = state
        self._tick = tick
        self._chunk: list[Page] = []
        self._bytes = 0
        self._inflight: deque[tuple[list[Page], FilesRead]] = deque()

    def add(self, pages: list[Page]) -> None:
        """Pages more: each chunk they fill begun."""
        if not pages:
            return
        self._publisher.table.reserve(len(pages))
        chunk, nbytes = self._chunk, self._bytes
        for p in pages:
            if chunk and (len(chunk) == _LOAD_CHUNK or nbytes + p.length > _LOAD_CHUNK_BYTES):
                self._begin(chunk)
                chunk, nbytes = [], 0
            chunk.append(p)
            nbytes += p.length
        self._chunk, self._bytes = chunk, nbytes

    def finish(self) -> None:
        """Begin the last chunk; finish every one."""
        if self._chunk:
            chunk, self._chunk, self._bytes = self._chunk, [], 0
            self._begin(chunk)
        while self._inflight:
            self._end()

    def abandon(self) -> None:
        """Give up the chunks still in flight (after an error): the reads not begun
        cancelled, what the others read stored, no page left claimed."""
        while self._inflight:
            _, batch = self._inflight.popleft()
            for *_, read in batch.reads:
                read.cancel()
            with contextlib.suppress(Exception):  # the load's own error is told
                self._fetcher.end_files(batch)

    def _begin(self, chunk: list[Page]) -> None:
        batch = self._fetcher.begin_files(chunk)
        self._counters.add(page_misses=len(batch.todo))
        self._counters.add_mounts((p.file.mount.path, "page_misses", 1) for p in batch.todo)
        self._inflight.append((chunk, batch))
        while len(self._inflight) > _LOAD_TASKS:
            self._end()

    def _end(self) -> None:
        chunk, batch = self._inflight.popleft()
        todo = batch.todo
        values = self._fetcher.end_files(batch, publish=True)
        error = next((v for v in values if isinstance(v, BaseException)), None)
        for fut in batch.waits:  # fetches (of reads) that had some of the pages
            try:
                fut.result()
            except CancelledError:  # queued when the worker began to stop
                error = error or OSError(errno.ESHUTDOWN, "the worker is shutting down")
            except Exception as exc:
                error = error or exc
        if error is not None:
            raise error
        if len(todo) < len(chunk):  # those cached before (the others are published)
            fetched = {p.key for p in todo}
            self._publisher.publish_files([p.file for p in chunk if p.key not in fetched])
        state = self._state
        size = sum(p.length for p in chunk)
        state["files_done"] += len(chunk)
        state["bytes_done"] += size
        state["pages_done"] += len(chunk)
        state["pages_skipped"] += len(chunk) - len(todo)
        state["bytes_skipped"] += size - sum(p.length for p in todo)
        self._tick()


def _one_page(f: File, pages: list[Page]) -> bool:
    """True for a file whose one page (of those placed here) is all of it."""
    return len(pages) == 1 and pages[0].index == 0 and pages[0].length == f.info.size


def placement_filter(placement: dict | None, me: str | None, page_size: int, chunk_size: int):
    """``mine(file, pages)``: the pages of a file that ``placement`` (see
    :meth:`Loader.load`) gives to worker ``me``; every page without one."""
    if placement is None:
        return lambda f, pages: pages
    from ._pages import chunk_of
    from ._placement import Node, chunk_key, place

    try:
        nodes = [Node(str(i), float(w)) for i, w in placement["nodes"]]
        forced = split_mount_options({"replicas": placement.get("replicas", 1)})[0]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"load: malformed placement {placement!r}: {exc}") from None
    if not nodes or me not in {n.id for n in nodes}:
        raise ValueError(f"load: this worker ({me!r}) is not among the placement's workers")

    def mine(f: File, pages: list[Page]) -> list[Page]:
        wanted = forced["replicas"] if "replicas" in placement else f.own["replicas"]
        k = len(nodes) if wanted == "all" else min(wanted, len(nodes))
        out, owners = [], {}
        for p in pages:
            chunk = chunk_of(p.index, page_size, chunk_size)
            if chunk not in owners:
                owners[chunk] = {n.id for n in place(chunk_key(f.fid, chunk), nodes, k)}
            if me in owners[chunk]:
                out.append(p)
        return out

    return mine


def job_handlers(store: MetaStore) -> dict[str, Handler]:
    """The ops of job records, for a worker's op -> handler table: ``job_put`` stores a
    record (``jobs/<kind>/<id>``), ``jobs`` lists those under a prefix, newest first, at
    most ``limit`` (RUNNING ones gone stale listed as FAILED)."""

    def put(_, h: dict) -> Reply:
        store.put(check_job_key(h["key"]), h["record"])
        return Reply({})

    def jobs(_, h: dict) -> Reply:
        return Reply({"jobs": newest_first(mark_stale(store, store.scan(h["prefix"])), h["limit"])})

    return {"job_put": put, "jobs": jobs}
