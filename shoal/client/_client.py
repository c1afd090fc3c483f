"""``shoal.Client``: the public facade. Arguments are checked here; reads go through the
client's metadata (``_metadata``) and the router's one read loop (``_router``); jobs,
policies, ``du`` and reports through ``_jobs``, ``_policies`` and ``_usage``."""

from __future__ import annotations

import dataclasses
import io
import os
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from .._config import Config, load_config
from ..control._membership import Membership
from ..control._namespace import Mount, normalize_path
from . import _jobs, _policies, _usage, _writer
from ._jobs import LoadProgress
from ._meta import FileInfo
from ._metadata import ClientMetadata
from ._router import Router

__all__ = ["Client", "FileInfo", "LoadProgress"]

_clients: weakref.WeakSet[Client] = weakref.WeakSet()


class Client:
    """Reads and writes files under Shoal mounts through the node's worker, or a cluster's.

    With no arguments it loads the configuration (``$SHOAL_HOME/config.yaml`` and
    ``SHOAL_*`` variables), connects to the worker on ``$SHOAL_HOME/worker.sock`` and, when
    none answers, starts one as a daemon (logging to ``$SHOAL_HOME/worker.log``).

    Every read runs one loop, on one node as in a cluster: each page is placed on a worker
    (on one node, the local one). Pages a worker on this host has cached are read
    short-circuit: the worker says where they are and passes the region files'
    descriptors, the client reads them with the engine straight into the destination,
    checking each page's crc32c and its region's generation, and remembers where they are,
    so that reading them again needs no round trip. Pages of other workers come over TCP;
    pages not cached are fetched by their worker. When a worker dies during a read, its
    pages come from the next replica, then straight from the under-store; on one node, the
    next call starts a new worker.

    Parameters
    ----------
    config
        Settings; loaded with :func:`shoal._config.load_config` when None.
    start_worker
        Start the worker when none answers (else raise ``ConnectionRefusedError``).
    timeout
        Seconds to wait for any one answer of the worker before giving up on it (reads
        then go to the under-store); None waits for ever.
    start_timeout
        Seconds to wait for a worker being started.
    metadata_ttl
        Seconds this client keeps file metadata before asking the worker again (the worker
        has its own cache, per mount). A file's version is checked by the worker on every
        read it serves, so a stale entry costs one retry, never wrong bytes. Pages read
        before are read again without asking the worker (the client remembers where they
        are) only while the mount's ``metadata_ttl`` holds for the metadata.
    etcd
        ``http://HOST:PORT`` of the cluster's etcd (default ``config.etcd``,
        ``$SHOAL_ETCD``): cluster mode. The client then follows the workers registered
        there (``config.membership_file`` does the same from a file), reads each page from
        the worker that placement gives it, short-circuit when that worker runs on this
        client's host (``config.host_id``, ``$SHOAL_HOST_ID``) and over TCP otherwise,
        and never starts a worker.

    Notes
    -----
    Thread-safe: each thread gets its own connections. Fork-safe: a child process (a
    DataLoader worker, say) never uses its parent's connections or descriptors; it closes
    its inherited copies and connects anew. A client can be pickled (for spawn): the copy
    connects on first use.
    """

    def __init__(
        self,
        config: Config | None = None,
        *,
        start_worker: bool = True,
        timeout: float | None = 300.0,
        start_timeout: float = 60.0,
        metadata_ttl: float = 10.0,
        etcd: str | None = None,
    ):
        self._config = config if config is not None else load_config()
        if not isinstance(self._config, Config):
            raise TypeError(f"config must be a shoal Config, got {type(self._config).__name__}")
        if etcd is not None:
            self._config = dataclasses.replace(self._config, etcd=etcd, membership_file=None)
        for name, value in (("start_timeout", start_timeout), ("metadata_ttl", metadata_ttl)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name} must be a number of seconds >= 0, got {value!r}")
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0
        ):
            raise ValueError(f"timeout must be a number of seconds > 0 or None, got {timeout!r}")
        self._start = bool(start_worker)
        self._timeout = timeout
        self._start_timeout = start_timeout
        self._meta_ttl = metadata_ttl
        self._closed = False
        self._router = Router(
            self._config,
            start_worker=self._start,
            timeout=timeout,
            start_timeout=start_timeout,
        )
        self._meta = ClientMetadata(self._config, metadata_ttl)
        _clients.add(self)

    def __reduce__(self):
        return (
            _restore,
            (self._config, self._start, self._timeout, self._start_timeout, self._meta_ttl),
        )

    @property
    def config(self) -> Config:
        """The settings this client uses."""
        return self._config

    def _after_fork(self) -> None:
        self._router.after_fork()
        self._meta.clear()

    def _live(self) -> Router:
        """The router, checked open and not inherited from a parent process."""
        if self._closed:
            raise ValueError("I/O operation on a closed shoal Client")
        if os.getpid() != self._router.pid:
            self._after_fork()
        return self._router

    def _call(self, header: dict) -> dict:
        return self._live().call(header)

    # ----------------------------------------------------------------- metadata

    def _forget(self, path: str) -> None:
        self._router.shortcircuit.locations.drop_path(path)
        self._meta.forget(path)

    def stat(self, path: str) -> FileInfo:
        """Metadata of the file or directory at ``path``.

        Raises
        ------
        FileNotFoundError
            ``path`` is under no mount, or nothing exists there.
        ValueError
            ``path`` is not absolute, or holds ``..`` or a NUL byte.
        """
        return self._meta.metas(self._live(), [normalize_path(path)])[0].info()

    def stat_many(self, paths: Iterable[str]) -> list[FileInfo]:
        """Metadata of many files or directories, asked for in one batch (what a data
        loader needs before it reads a batch of files).

        Raises
        ------
        The errors of :meth:`stat`, for the first path that fails.
        """
        return [
            m.info() for m in self._meta.metas(self._live(), [normalize_path(p) for p in paths])
        ]

    def exists(self, path: str) -> bool:
        """True if a file or directory exists at ``path`` (False under no mount)."""
        try:
            self.stat(path)
        except FileNotFoundError:
            return False
        return True

    def ls(self, path: str) -> list[FileInfo]:
        """The files and directories directly under ``path`` (mount points included),
        sorted by name; for a file, the file itself."""
        entries = self._call({"op": "ls", "path": normalize_path(path)})["entries"]
        return [
            FileInfo(e["path"], e["size"], e["mtime"], e["version"], e["is_dir"]) for e in entries
        ]

    def refresh(self, path: str) -> None:
        """Forget cached metadata of ``path`` and everything under it, here and in the
        worker: the next read sees the under-store's current version."""
        path = normalize_path(path)
        self._forget(path)
        self._call({"op": "refresh", "path": path})

    # ----------------------------------------------------------------- mounts

    def mount(self, path: str, uri: str, **options: Any) -> Mount:
        """Mount the under-store ``uri`` at ``path``.

        Parameters
        ----------
        path
            Shoal path of the mount point.
        uri
            ``s3://bucket/prefix``, ``file:///dir`` (or ``/dir``), or any fsspec URL.
        **options
            The store's options (``endpoint_url``, ``region``, ``access_key_env`` and
            ``secret_key_env`` naming environment variables, ...: credentials by reference
            only), and Shoal's: ``metadata_ttl`` (seconds, default 60), ``read_ahead``
            (pages, default 4), ``replicas`` (workers holding each chunk in a cluster, an
            int or ``"all"``, default 1).

        Raises
        ------
        ValueError, TypeError
            A bad path, URI or option.
        FileExistsError
            ``path`` is already a mount point.
        PermissionError, ConnectionError, FileNotFoundError
            The store refused the credentials, cannot be reached, or its bucket does not
            exist (the worker lists one object to check).
        """
        path = normalize_path(path)
        if not isinstance(uri, str) or not uri:
            raise ValueError(f"mount {path}: the under-store URI must be a non-empty str")
        header = {"op": "mount", "path": path, "uri": uri, "options": options}
        doc = self._call(header)["mount"]
        self._router.broadcast(header, FileExistsError)
        self._forget(path)
        return Mount(doc["path"], doc["uri"], doc["options"])

    def unmount(self, path: str) -> Mount:
        """Remove the mount at exactly ``path``; ``FileNotFoundError`` if it is none."""
        path = normalize_path(path)
        doc = self._call({"op": "unmount", "path": path})["mount"]
        self._router.broadcast({"op": "unmount", "path": path}, FileNotFoundError)
        self._forget(path)
        return Mount(doc["path"], doc["uri"], doc["options"])

    def mounts(self) -> list[Mount]:
        """Every mount, sorted by path."""
        docs = self._call({"op": "mounts"})["mounts"]
        return [Mount(d["path"], d["uri"], d["options"]) for d in docs]

    # ----------------------------------------------------------------- policies

    def set_policy(self, path: str, **fields: Any) -> dict:
        """Set ``fields`` of the policy on the prefix ``path`` (others kept; the fields of
        :class:`~shoal.control._policy.Policy`); every worker enforces it within seconds.

        Returns ``{"path": ..., "policy": {field: value}}``, the rule after. Raises
        ``ValueError`` for a bad field or value, a field not enforced yet, or a path under
        no mount.
        """
        path = normalize_path(path)
        rule = _policies.set_policy(self._live(), path, fields)
        self._forget(path)
        return rule

    def remove_policy(self, path: str, *fields: str) -> dict:
        """Remove ``fields`` (every field when none is named) of the policy on ``path``;
        the rule after. ``FileNotFoundError`` when it sets none of them."""
        path = normalize_path(path)
        rule = _policies.remove_policy(self._live(), path, fields)
        self._forget(path)
        return rule

    def policies(self) -> list[dict]:
        """Every policy, sorted by path: ``{"path": ..., "policy": {field: value}}``."""
        return _policies.policies(self._live())

    def effective_policy(self, path: str) -> dict:
        """The policy in force at ``path``: ``policy`` (every field's value, None when
        unset) and ``sources`` (per field the prefix of the rule it comes from,
        ``"mount"``, ``"default"`` or None), with ``path`` and its ``mount``."""
        return _policies.effective_policy(self._live(), normalize_path(path))

    # ----------------------------------------------------------------- reads

    def read_into(self, buf: Any, path: str, offset: int = 0) -> int:
        """Read the file at ``path`` from ``offset`` into ``buf``.

        Parameters
        ----------
        buf
            Any writable, C-contiguous host buffer: bytearray, memoryview, numpy array,
            torch CPU tensor. Up to its size in bytes is filled.
        path
            Shoal path of a file.
        offset
            Byte offset in the file, >= 0.

        Returns
        -------
        int
            Bytes read: the buffer's size, fewer at the end of the file, 0 past it.

        Raises
        ------
        FileNotFoundError
            ``path`` is under no mount, or no such file exists.
        IsADirectoryError
            ``path`` is a directory.
        ValueError
            A bad path or a negative offset.
        TypeError
            ``buf`` is not a writable host buffer.
        """
        return self.read_many_into([(buf, path, offset)])[0]

    def read_many_into(self, items: Iterable[Sequence[Any]]) -> list[int]:
        """Read many files (or ranges of them) in one batch: the small-file case.

        Parameters
        ----------
        items
            ``(buf, path, offset)`` or ``(buf, path)`` tuples, as for :meth:`read_into`.

        Returns
        -------
        list of int
            Bytes read per item.

        Raises
        ------
        The errors of :meth:`read_into`, for the first item that fails; nothing is read
        then unless the items before it were valid.
        """
        return self._meta.read_many(self._live, items)

    def open(self, path: str, mode="rb", buffer_size=None, *, size: int | None = None) -> Any:
        """A binary file object on ``path``: ``"rb"`` a seekable reader, ``"wb"`` a writer
        whose ``close()`` commits the whole file as :meth:`write` does (leaving a ``with``
        block by an exception drops it). ``buffer_size``: default the page size (0: no
        write buffer); ``size``: the bytes about to be written, when known."""
        from ._file import ShoalRawFile
        from ._writer import open_writer

        path = normalize_path(path)
        if buffer_size is None:
            buffer_size = self._live().geometry()[0]
        if mode == "wb":
            self._forget(path)
            router = self._live()
            return open_writer(router.home(), path, size, buffer_size, router.changed)
        if mode != "rb":
            raise ValueError(f"open: mode must be 'rb' or 'wb', got {mode!r}")
        return io.BufferedReader(ShoalRawFile(self, path), buffer_size=buffer_size)

    # ----------------------------------------------------------------- writes

    def write(self, path: str, data: Any) -> int:
        """Create or replace the file ``path`` with ``data`` (bytes-like); the bytes written.
        Returns once durable as the path's ``write_mode`` says: ``write_back`` (default)
        on the node, fsynced and journaled, the upload following; ``write_through`` in the
        under-store; ``cache_only`` on the node, never uploaded. ``PermissionError`` for a
        ``read_only`` path; ``OSError(ENOSPC)`` when the worker's dirty budget stays full."""
        self._forget(path := normalize_path(path))
        router = self._live()
        return _writer.write(router.home(), path, data, router.changed)

    def delete(self, path: str) -> None:
        """Remove the file ``path`` (after an upload of it that is running)."""
        self._forget(path := normalize_path(path))
        self._call({"op": "delete", "path": path})
        self._router.changed([path])

    def rename(self, src: str, dst: str) -> None:
        """Move the file ``src`` to ``dst``, replacing it (atomic for a file not uploaded
        yet); ``OSError(EXDEV)`` across mounts."""
        src, dst = normalize_path(src), normalize_path(dst)
        self._forget(src), self._forget(dst)
        self._call({"op": "rename", "src": src, "dst": dst})
        self._router.changed([src, dst])

    def persisted(self, path: str) -> bool:
        """True when no write of ``path`` waits for its under-store."""
        return self._call({"op": "persisted", "paths": [normalize_path(path)]})["persisted"][0]

    def wait_persisted(self, path: str | None = None, timeout: float | None = None) -> None:
        """Wait until every write under ``path`` (or all) is in its under-store;
        ``TimeoutError`` naming what is left after ``timeout`` seconds."""
        _writer.wait_persisted(self._call, normalize_path(path) if path else "", timeout)

    # ----------------------------------------------------------------- checkpoints

    def load_checkpoint(self, path: str) -> dict[str, Any]:
        """The tensors of the safetensors checkpoint at ``path``, as numpy arrays: views over
        one buffer that holds the whole file (read with one call: a cold file is fetched
        with many ranged requests at once), no copy per tensor. bfloat16 and 8-bit float
        tensors come as their bits (``uint16``, ``uint8``; see ``_checkpoint``).

        Raises
        ------
        ValueError
            The file is not a safetensors file (the message says what is wrong).
        FileNotFoundError, IsADirectoryError
            As for :meth:`read_into`.
        """
        from ._checkpoint import load_checkpoint

        return load_checkpoint(self, normalize_path(path))

    def load_checkpoint_into(self, path: str, tensors: Mapping[str, Any]) -> int:
        """Read tensors of the safetensors checkpoint at ``path`` straight into ``tensors``
        (name -> numpy array or torch CPU tensor of the same shape and dtype, contiguous),
        with one batch of reads and no copy; tensors of the file not named are not read.
        Returns the bytes read.

        Raises
        ------
        ValueError
            A name the file does not hold, a shape or dtype that differs, a file that is not
            a safetensors file.
        TypeError
            A destination on a GPU, or no buffer.
        """
        from ._checkpoint import load_checkpoint_into

        return load_checkpoint_into(self, normalize_path(path), tensors)

    def save_checkpoint(
        self, path: str, tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None
    ) -> int:
        """Write ``tensors`` (name -> numpy array or torch tensor; GPU ones through host
        memory) as one safetensors file, as :meth:`write` does; the bytes written."""
        from ._checkpoint import save_checkpoint

        return save_checkpoint(self, normalize_path(path), tensors, metadata)

    # ----------------------------------------------------------------- jobs

    def load(
        self,
        paths: str | Iterable[str],
        metadata_only: bool = False,
        progress: Callable[[LoadProgress], None] | None = None,
        replicas: int | str | None = None,
    ) -> LoadProgress:
        """Have the workers cache the files under ``paths`` (a path or a list of paths;
        directories are expanded), or only their metadata.

        Parameters
        ----------
        paths
            Files or directories.
        metadata_only
            Fill only the metadata cache (stat and listings), not the page store.
        progress
            Called with a :class:`LoadProgress` as files complete.
        replicas
            In a cluster: workers to load each chunk on (an int >= 1 or ``"all"``),
            instead of the mount's ``replicas`` option. A single node holds one copy.

        Returns
        -------
        LoadProgress
            The final counts; in a cluster, bytes count every copy.
        """
        return _jobs.load(self._live(), paths, metadata_only, progress, replicas)

    def load_history(self, limit: int | None = 20) -> list[dict]:
        """The records of past and running loads (at most ``limit``; None: all), newest
        first: per load its ``id``, ``state``, times, paths and counters (see
        :func:`shoal.client._jobs.load_history`)."""
        return _jobs.load_history(self._live(), limit)

    def free(self, path: str) -> dict:
        """Drop the cached pages of the files under ``path``, on every live worker.

        Returns
        -------
        dict
            ``pages`` and ``bytes`` freed.
        """
        return _jobs.free(self._live(), normalize_path(path))

    def du(self, path: str) -> dict:
        """Bytes cached under ``path`` (by whole components), on every live worker.

        Returns ``path``, ``bytes``, ``pages``, ``files`` (files with a page cached) and
        ``tiers`` (bytes per tier) summed, ``workers`` (the same per worker: by id in a
        cluster, by host id on one node) and ``unreachable`` (workers that did not
        answer). Copies count once per worker. Files are seen through the records their
        worker keeps only while the mount caches metadata: pages cached under
        ``metadata_ttl`` 0 are not counted (nor, in a cluster, the pages a worker holds
        of a file whose first page another holds). ``FileNotFoundError`` for a path
        under no mount.
        """
        return _usage.du(self._live(), normalize_path(path))

    def report(self, cluster: bool = False) -> dict:
        """The worker's report, or with ``cluster`` those of every live worker and their
        sum: ``{"workers": {id: report}, "total": summed, "unreachable": [id, ...]}``. What
        a report holds: :func:`shoal.client._usage.report`."""
        return _usage.report(self._live(), self._config, bool(cluster))

    def worker_pid(self) -> int:
        """Pid of the worker this thread's control connection goes to."""
        return self._live().home().hello["worker_pid"]

    def membership(self) -> Membership:
        """The cluster's membership as this process follows it (cluster mode only); made
        on first use, anew in a forked child.

        Raises
        ------
        ValueError
            The client is not in cluster mode (no etcd, no membership file), or the
            membership file is malformed.
        ConnectionError
            etcd does not answer.
        """
        router = self._live()
        if not router.cluster:
            raise ValueError("this client is not in cluster mode (no etcd, no membership file)")
        return router.membership()

    # ----------------------------------------------------------------- lifetime

    def close(self) -> None:
        """Close every connection and descriptor of this client; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._router.close()

    def __enter__(self) -> Client:
        return self

    def __del__(self) -> None:
        # Not contextlib.suppress: at interpreter exit, modules may be torn down already.
        try:  # noqa: SIM105
            self.close()
        except Exception:
            pass

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<shoal.Client home={self._config.home!r}{' closed' if self._closed else ''}>"


def _restore(config, start, timeout, start_timeout, metadata_ttl) -> Client:
    return Client(
        config,
        start_worker=start,
        timeout=timeout,
        start_timeout=start_timeout,
        metadata_ttl=metadata_ttl,
    )


def _after_fork_in_child() -> None:
    for client in list(_clients):
        client._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
