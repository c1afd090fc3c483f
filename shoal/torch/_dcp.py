"""``torch.distributed.checkpoint`` (DCP) checkpoints through Shoal.

:class:`StorageReader` reads and :class:`StorageWriter` writes a checkpoint in the layout
of torch's ``FileSystemWriter`` (a ``.metadata`` file and ``__<rank>_<n>.distcp`` shard
files in one directory) at a Shoal path, every byte through a :class:`shoal.Client` and so
through the node's cache. The writer commits ``.metadata`` last, by a rename, so that a
checkpoint is complete or invisible to :func:`latest_checkpoint`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import io
import math
import os
import pickle
import posixpath
import queue
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import IO, TYPE_CHECKING, Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed._shard._utils import narrow_tensor_by_index
from torch.distributed.checkpoint.filesystem import (
    CURRENT_DCP_VERSION,
    DEFAULT_SUFFIX,
    _StorageInfo,
    _StoragePrefix,
)
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
from torch.distributed.checkpoint.planner import (
    LoadItemType,
    LoadPlan,
    LoadPlanner,
    ReadItem,
    SavePlan,
    SavePlanner,
    WriteItem,
    WriteItemType,
)
from torch.distributed.checkpoint.storage import WriteResult
from torch.futures import Future

from ..client import Client

if TYPE_CHECKING:
    from torch.distributed.checkpoint._extension import (
        ExtensionRegistry,
        StreamTransformExtension,
    )

__all__ = ["StorageReader", "StorageWriter", "latest_checkpoint"]

#: Bytes of shard data read with one ``read_many_into`` before they are handed to the
#: planner (a plan's items are read in batches of about this size, to bound memory).
BATCH_BYTES = 256 << 20
#: The first bytes of every ``torch.save`` archive (a zip file).
_ZIP_MAGIC = b"PK\x03\x04"
_METADATA = ".metadata"


class _CheckpointDir:
    """A checkpoint's directory at a Shoal path, and the client that reaches it (what
    :class:`StorageReader` and :class:`StorageWriter` share)."""

    def __init__(self, path: str | os.PathLike, client: Client | None):
        super().__init__()
        self.path = _checkpoint_path(path)
        self._client = _checked_client(client)

    @property
    def client(self) -> Client:
        """The client that reaches the checkpoint (made now if none was given)."""
        if self._client is None:
            self._client = Client()
        return self._client

    @property
    def checkpoint_id(self) -> str:
        """The checkpoint's Shoal path."""
        return self.path

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike) -> bool:
        """Whether ``checkpoint_id`` can name a checkpoint here: an absolute path, not a
        URL (nothing is read or written to tell)."""
        try:
            _checkpoint_path(checkpoint_id)
        except (TypeError, ValueError):
            return False
        return True


class StorageReader(_CheckpointDir, dcp.StorageReader):
    """Reads a DCP checkpoint written by torch's ``FileSystemWriter`` from a Shoal path.

    Give it to :func:`torch.distributed.checkpoint.load`::

        dcp.load(state_dict, storage_reader=shoal.torch.StorageReader("/ckpt/step-1000"))

    Each rank reads the metadata, then the items its plan needs: each item's bytes (a
    range of a shard file, as the metadata's ``storage_data`` says) are read into a buffer
    of their own, a plan's items in batches of about :data:`BATCH_BYTES` with one
    :meth:`~shoal.Client.read_many_into` each, in file and offset order. Items are then
    decoded as ``FileSystemReader`` does: tensors with ``torch.load`` (``weights_only``,
    to the CPU), narrowed to the chunk the plan asks for and copied into the planner's
    tensor; other values handed to the planner as ``io.BytesIO``. Items written with
    stream transforms (DCP's experimental ``_extensions``, such as zstd compression) are
    undone with ``extension_registry``. Checkpoints whose ranks wrote metadata of their
    own (``__<rank>.metadata``) are read as DCP asks.

    A subclass of ``torch.distributed.checkpoint.StorageReader``: DCP calls ``reset`` (when
    ``load`` is given a ``checkpoint_id``), ``read_metadata``, ``set_up_storage_reader``,
    ``prepare_local_plan``, ``prepare_global_plan`` (the coordinator only), then
    ``read_data``.

    Parameters
    ----------
    path
        The checkpoint's directory: an absolute Shoal path (``str`` or path-like).
    client
        The :class:`shoal.Client` to read with. Default: one made on first use (so
        building a reader connects to nothing).
    extension_registry
        Torch's experimental ``ExtensionRegistry`` that maps the stream transforms named
        in the metadata to their code. Default: torch's own (zstd, when ``zstandard`` or
        ``pyzstd`` is installed).

    Raises
    ------
    ValueError
        ``path`` is not an absolute path.
    TypeError
        ``path`` is not a str or path-like; ``client`` is not a shoal Client.

    Warnings
    --------
    The metadata file is unpickled, as torch's own reader does, and non-tensor values are
    unpickled by DCP's planner: load only checkpoints you trust.

    Notes
    -----
    Errors of the methods DCP calls:

    - ``read_metadata``: ``FileNotFoundError`` naming the checkpoint when its path is
      under no mount or holds no metadata file.
    - ``read_data``: ``OSError`` (``EIO``) when a shard is shorter than the metadata says
      (truncated, or replaced since it was written); ``ValueError`` when an item is not
      what ``FileSystemWriter`` writes (a tensor that is not a ``torch.save`` archive, as
      in the safetensors format, which this reader does not read), when its stream
      transform is not in the registry, or when its shape differs from the planner's
      tensor; ``FileNotFoundError`` when a shard file is missing.

    DCP's ``load`` runs these steps inside its own error handling, as it does for every
    storage reader: what they raise reaches its caller as
    ``torch.distributed.checkpoint.api.CheckpointException`` (a ``BaseException``, not an
    ``Exception``), whose ``failures[rank][0]`` is the error. A failed metadata read is
    caught first (DCP then tries rank-local metadata) and shows there as an
    ``AssertionError`` that quotes both messages.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        client: Client | None = None,
        *,
        extension_registry: ExtensionRegistry | None = None,
    ):
        super().__init__(path, client)
        self._extension_registry = extension_registry
        self.storage_data: dict[Any, Any] = {}
        self.load_id = str(uuid.uuid4())

    def reset(self, checkpoint_id: str | os.PathLike | None = None) -> None:
        # docstring inherited
        self.storage_data = {}
        if checkpoint_id:
            self.path = _checkpoint_path(checkpoint_id)
        self.load_id = str(uuid.uuid4())

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        """The checkpoint's metadata: ``.metadata``, or ``__<rank>.metadata`` when DCP
        passes ``rank``.

        Raises
        ------
        FileNotFoundError
            The path is under no mount, or holds no such metadata file (names both).
        OSError
            The file is shorter than its size said (it changed while read).
        """
        rank = kwargs.get("rank")
        name = _metadata_name(rank)
        path = posixpath.join(self.path, name)
        try:
            size = self.client.stat(path).size
            buf = bytearray(size)
            got = self.client.read_into(buf, path)
        except FileNotFoundError as exc:
            raise FileNotFoundError(
                errno.ENOENT, f"no DCP checkpoint at {self.path}: {exc.strerror or exc}", path
            ) from exc
        if got != size:
            raise _short(self.path, name, f"its {size} bytes", got)
        metadata = pickle.loads(buf)
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata

    def set_up_storage_reader(
        self, metadata: Metadata, is_coordinator: bool, *args: Any, **kwargs: Any
    ) -> None:
        # docstring inherited
        if metadata.storage_data is None:
            raise ValueError(f"checkpoint {self.path}: its metadata maps no item to storage")
        self.storage_data = metadata.storage_data

    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        # docstring inherited
        return plan

    def prepare_global_plan(self, plans: list[LoadPlan]) -> list[LoadPlan]:
        # docstring inherited
        return plans

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        # docstring inherited
        items = sorted(
            plan.items,
            key=lambda r: (
                self.storage_data[r.storage_index].relative_path,
                self.storage_data[r.storage_index].offset,
            ),
        )
        for batch in _batches(items, self.storage_data, BATCH_BYTES):
            infos = [self.storage_data[r.storage_index] for r in batch]
            bufs = [bytearray(info.length) for info in infos]
            counts = self.client.read_many_into(
                [
                    (buf, posixpath.join(self.path, info.relative_path), info.offset)
                    for buf, info in zip(bufs, infos, strict=True)
                ]
            )
            for req, info, buf, got in zip(batch, infos, bufs, counts, strict=True):
                if got != info.length:
                    raise _short(
                        self.path,
                        info.relative_path,
                        f"item {req.storage_index.fqn!r} ({info.length} bytes at {info.offset})",
                        got,
                    )
                self._deliver(req, info, buf, planner)
        done: Future[None] = Future()
        done.set_result(None)
        return done

    def _deliver(self, req: ReadItem, info: Any, buf: bytearray, planner: LoadPlanner) -> None:
        """Hand the item ``req``, read into ``buf``, to the planner as FileSystemReader
        does."""
        descriptors = getattr(info, "transform_descriptors", None) or ()
        stream = io.BytesIO(buf) if not descriptors else self._untransform(req, descriptors, buf)
        if req.type == LoadItemType.BYTE_IO:
            planner.load_bytes(req, stream)
            return
        if stream.read(len(_ZIP_MAGIC)) != _ZIP_MAGIC:
            raise ValueError(
                f"checkpoint {self.path}: tensor {req.storage_index.fqn!r} in "
                f"{info.relative_path} is not a torch.save archive (a checkpoint in another "
                "format, such as safetensors, or a corrupt shard)"
            )
        stream.seek(0)
        tensor = torch.load(stream, map_location="cpu", weights_only=True)
        tensor = narrow_tensor_by_index(tensor, req.storage_offsets, req.lengths)
        target = planner.resolve_tensor(req).detach()
        if target.size() != tensor.size():
            raise ValueError(
                f"checkpoint {self.path}: tensor {req.storage_index.fqn!r} has shape "
                f"{tuple(tensor.size())} where the state dict's has {tuple(target.size())}"
            )
        target.copy_(tensor)
        planner.commit_tensor(req, target)

    def _untransform(self, req: ReadItem, descriptors: Sequence[str], buf: bytearray) -> io.BytesIO:
        """The bytes of ``buf`` with the stream transforms ``descriptors`` undone."""
        from torch.distributed.checkpoint._extension import (
            ExtensionRegistry,
            StreamTransformExtension,
        )

        registry = self._extension_registry or ExtensionRegistry()
        try:
            extensions = registry.from_descriptor_list(descriptors)
        except ValueError as exc:
            raise ValueError(
                f"checkpoint {self.path}: item {req.storage_index.fqn!r} was written with "
                f"stream transforms {list(descriptors)}, which cannot be undone here: {exc}"
            ) from exc
        stream: Any = io.BytesIO(buf)
        for extension in extensions:
            if isinstance(extension, StreamTransformExtension):
                stream = extension.transform_from(stream)
        return io.BytesIO(stream.read(-1))


class StorageWriter(_CheckpointDir, dcp.StorageWriter):
    """Writes a DCP checkpoint to a Shoal path, in the layout of torch's ``FileSystemWriter``.

    Give it to :func:`torch.distributed.checkpoint.save`::

        dcp.save(state_dict, storage_writer=shoal.torch.StorageWriter("/ckpt/step-1000"))

    Each rank writes its items to shard files ``__<rank>_<n>.distcp``, each streamed with
    ``client.open(path, "wb")`` and committed by its ``close()`` (durable on the node, then
    uploaded as the mount's ``write_mode`` says): tensors as ``torch.save`` archives, one
    per item, other values as DCP's planner serialized them, as ``FileSystemWriter``
    does. Once every rank's shards are committed, the coordinator writes the pickled
    ``Metadata`` (each item's ``_StorageInfo(relative_path, offset, length)``) to a
    temporary name and renames it to ``.metadata``: a checkpoint is complete or, to
    :class:`StorageReader`, torch's ``FileSystemReader`` and :func:`latest_checkpoint`,
    invisible. When ``dcp.save`` is given ``use_collectives=False``, each rank writes
    metadata of its own, ``__<rank>.metadata``, the same way.

    A subclass of ``torch.distributed.checkpoint.StorageWriter``: DCP calls ``reset``
    (when ``save`` is given a ``checkpoint_id``), ``storage_meta``,
    ``set_up_storage_writer``, ``prepare_local_plan``, ``prepare_global_plan`` (the
    coordinator only), ``write_data``, then ``finish`` (the coordinator only).

    Parameters
    ----------
    path
        The checkpoint's directory: an absolute Shoal path (``str`` or path-like) under a
        mount that is not ``read_only``.
    client
        The :class:`shoal.Client` to write with. Default: one made on first use (so
        building a writer connects to nothing).
    thread_count
        Shard files each rank writes at once, each from a thread of its own.
    single_file_per_rank
        Write ``thread_count`` shard files per rank (tensors spread over them by size);
        False: one shard file per item.
    sync_files
        Kept for code written for ``FileSystemWriter``; it changes nothing, since a shard's
        ``close()`` returns only once the shard is durable on the node (fsynced and
        journaled), whatever it says.
    overwrite
        Whether a checkpoint already at ``path`` may be replaced. Its ``.metadata`` is then
        removed before any shard is written, so that it never shows new and old shards
        mixed (a save that fails leaves neither checkpoint).
    extensions
        Stream transforms (torch's experimental ``StreamTransformExtension``, such as
        ``ZStandard``) applied to each item; a :class:`StorageReader` given an
        ``extension_registry`` that knows them undoes them.

    Raises
    ------
    ValueError
        ``path`` is not an absolute path; ``thread_count`` is not an int >= 1.
    TypeError
        ``path`` is not a str or path-like; ``client`` is not a shoal Client.

    Notes
    -----
    Errors of the methods DCP calls:

    - ``set_up_storage_writer``: ``FileNotFoundError`` when the path is under no mount,
      ``PermissionError`` (``EROFS``) when its mount is ``read_only``.
    - ``prepare_local_plan``: ``FileExistsError`` when a checkpoint is at the path and
      ``overwrite`` is False.
    - ``write_data``: what a shard's write raises (``OSError``); that shard is not
      committed, and no ``.metadata`` is written.

    DCP's ``save`` runs these steps inside its own error handling: what they raise reaches
    its caller as ``torch.distributed.checkpoint.api.CheckpointException`` (a
    ``BaseException``), whose ``failures[rank][0]`` is the error.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        client: Client | None = None,
        *,
        thread_count: int = 1,
        single_file_per_rank: bool = True,
        sync_files: bool = True,
        overwrite: bool = True,
        extensions: Sequence[StreamTransformExtension] | None = None,
    ):
        super().__init__(path, client)
        if isinstance(thread_count, bool) or not isinstance(thread_count, int) or thread_count < 1:
            raise ValueError(f"thread_count must be an int >= 1, got {thread_count!r}")
        self.thread_count = thread_count
        self.single_file_per_rank = bool(single_file_per_rank)
        self.sync_files = bool(sync_files)
        self.overwrite = bool(overwrite)
        self.extensions = tuple(extensions or ())
        self.save_id = str(uuid.uuid4())
        self.rank: int | None = None
        self.use_collectives = True

    def reset(self, checkpoint_id: str | os.PathLike | None = None) -> None:
        # docstring inherited
        if checkpoint_id:
            self.path = _checkpoint_path(checkpoint_id)
        self.save_id = str(uuid.uuid4())

    def storage_meta(self) -> StorageMeta:
        # docstring inherited
        return StorageMeta(checkpoint_id=self.path, save_id=self.save_id)

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        """Take the rank and whether ranks share one metadata file from DCP, and check
        that the path can be written.

        Raises
        ------
        FileNotFoundError
            The path is under no mount.
        PermissionError
            The path's mount is ``read_only`` (``EROFS``).
        """
        self.rank = kwargs.get("rank")
        self.use_collectives = kwargs.get("use_collectives", True)
        try:
            effective = self.client.effective_policy(self.path)
        except FileNotFoundError as exc:
            raise FileNotFoundError(
                errno.ENOENT,
                f"cannot write a DCP checkpoint to {self.path}: it is under no Shoal mount",
                self.path,
            ) from exc
        if effective["policy"].get("write_mode") == "read_only":
            raise PermissionError(
                errno.EROFS,
                f"cannot write a DCP checkpoint to {self.path}: "
                f"the mount at {effective['mount']} is read_only",
                self.path,
            )

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        # docstring inherited
        if not self.overwrite and self.client.exists(self._metadata_path()):
            raise FileExistsError(
                errno.EEXIST,
                f"a DCP checkpoint is already at {self.path} (overwrite=False)",
                self._metadata_path(),
            )
        if self.rank is not None and not self.use_collectives:
            plan = dataclasses.replace(plan, storage_data=_StoragePrefix(f"__{self.rank}_"))
        return plan

    def prepare_global_plan(self, plans: list[SavePlan]) -> list[SavePlan]:
        # docstring inherited
        # No rank writes a shard before this returns: an old checkpoint here goes now.
        with contextlib.suppress(FileNotFoundError):
            self.client.delete(self._metadata_path())
        return [
            plan
            if plan.storage_data is not None
            else dataclasses.replace(plan, storage_data=_StoragePrefix(f"__{rank}_"))
            for rank, plan in enumerate(plans)
        ]

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future[list[WriteResult]]:
        # docstring inherited
        if self.single_file_per_rank:
            groups = _spread_by_size(plan.items, self.thread_count)
        else:
            groups = [[item] for item in plan.items]
        shards: queue.SimpleQueue[tuple[str, list[WriteItem]]] = queue.SimpleQueue()
        for n, items in enumerate(groups):
            shards.put((f"{plan.storage_data.prefix}{n}{DEFAULT_SUFFIX}", items))

        def write_shards() -> list[WriteResult]:
            written: list[WriteResult] = []
            with contextlib.suppress(queue.Empty):
                while True:
                    written += self._write_shard(*shards.get_nowait(), planner)
            return written

        # This thread writes too, so that the default of one thread opens no connection.
        helpers = max(0, min(self.thread_count, len(groups)) - 1)
        with ThreadPoolExecutor(helpers or 1, thread_name_prefix="shoal-dcp") as pool:
            others = [pool.submit(write_shards) for _ in range(helpers)]
            try:
                results = write_shards()
                for other in others:
                    results += other.result()
            except BaseException:
                with contextlib.suppress(queue.Empty):
                    while True:  # the helpers stop after the shard they are writing
                        shards.get_nowait()
                raise
        done: Future[list[WriteResult]] = Future()
        done.set_result(results)
        return done

    def _write_shard(
        self, name: str, items: list[WriteItem], planner: SavePlanner
    ) -> list[WriteResult]:
        """Write ``items`` (other values first, then tensors, as FileSystemWriter does) to
        the shard file ``name``; their results once it is committed."""
        results = []
        offset = 0
        with self.client.open(posixpath.join(self.path, name), "wb") as shard:
            for item in sorted(items, key=lambda i: i.type != WriteItemType.BYTE_IO):
                stream = _ItemStream(shard)
                out: IO[bytes] = stream
                for extension in self.extensions:
                    out = extension.transform_to(out)
                data = planner.resolve_data(item)
                if item.type == WriteItemType.BYTE_IO:
                    out.write(data.getbuffer())
                else:
                    torch.save(_compact_cpu(data), out)
                out.close()
                descriptors = [e.get_descriptor() for e in reversed(self.extensions)] or None
                info = _StorageInfo(name, offset, stream.written, descriptors)
                results.append(WriteResult(item.index, stream.written, info))
                offset += stream.written
        return results

    def finish(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        """Write the checkpoint's metadata, making it complete: to a temporary name, then
        renamed to ``.metadata`` (``__<rank>.metadata`` without collectives)."""
        metadata.version = CURRENT_DCP_VERSION
        metadata.storage_data = {r.index: r.storage_data for rank in results for r in rank}
        metadata.storage_meta = self.storage_meta()
        path = self._metadata_path()
        temporary = f"{path}.{self.save_id}.tmp"
        self.client.write(temporary, pickle.dumps(metadata))
        try:
            self.client.rename(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                self.client.delete(temporary)
            raise

    def _metadata_path(self) -> str:
        """The path of the metadata file this rank commits (or checks)."""
        rank = self.rank if not self.use_collectives else None
        return posixpath.join(self.path, _metadata_name(rank))


def latest_checkpoint(prefix: str | os.PathLike, client: Client | None = None) -> str | None:
    """The newest complete DCP checkpoint directly under ``prefix``, for resuming: of the
    directories there holding a ``.metadata`` file (DCP writes it last, once every shard
    is written), the one whose ``.metadata`` is newest (the larger path on a tie); None
    when none is complete::

        path = latest_checkpoint("/ckpt/run-7")
        if path is not None:
            dcp.load(state_dict, storage_reader=StorageReader(path))

    Raises ``FileNotFoundError`` for a prefix under no mount or that does not exist,
    ``NotADirectoryError`` for a file.
    """
    prefix = _checkpoint_path(prefix)
    own = client is None
    client = Client() if own else _checked_client(client)
    try:
        entries = client.ls(prefix)
        if len(entries) == 1 and entries[0].path == prefix and not entries[0].is_dir:
            raise NotADirectoryError(errno.ENOTDIR, "not a directory of checkpoints", prefix)
        best: tuple[tuple[float, str], str] | None = None
        for entry in entries:
            if not entry.is_dir:
                continue
            try:
                meta = client.stat(f"{entry.path.rstrip('/')}/{_METADATA}")
            except (FileNotFoundError, IsADirectoryError):
                continue  # not a checkpoint, or one still being written
            key = (meta.mtime, entry.path)
            if best is None or key > best[0]:
                best = (key, entry.path)
        return best[1] if best is not None else None
    finally:
        if own:
            client.close()


def _checkpoint_path(path: Any) -> str:
    """``path`` as a str: an absolute Shoal path without a trailing slash."""
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if not isinstance(path, str):
        raise TypeError(f"path must be a Shoal path (str), got {type(path).__name__}")
    if not path.startswith("/"):
        raise ValueError(f"path must be an absolute Shoal path (start with /), got {path!r}")
    return path.rstrip("/") or "/"


def _checked_client(client: Any) -> Client | None:
    if client is not None and not isinstance(client, Client):
        raise TypeError(f"client must be a shoal Client, got {type(client).__name__}")
    return client


def _metadata_name(rank: int | None) -> str:
    """The metadata file's name: shared by every rank, or rank-local."""
    return _METADATA if rank is None else f"__{rank}{_METADATA}"


def _batches(items: list[ReadItem], storage_data: dict, budget: int) -> Iterator[list[ReadItem]]:
    """``items`` in consecutive runs of at most ``budget`` bytes of storage each (an item
    larger than that alone)."""
    batch: list[ReadItem] = []
    size = 0
    for req in items:
        length = storage_data[req.storage_index].length
        if batch and size + length > budget:
            yield batch
            batch, size = [], 0
        batch.append(req)
        size += length
    if batch:
        yield batch


def _short(checkpoint: str, name: str, what: str, got: int) -> OSError:
    return OSError(
        errno.EIO,
        f"checkpoint {checkpoint}: {name} is truncated: {got} bytes read of {what}",
        posixpath.join(checkpoint, name),
    )


def _spread_by_size(items: list[WriteItem], bins: int) -> list[list[WriteItem]]:
    """``items`` in ``bins`` groups (some maybe empty), as FileSystemWriter spreads them
    over its shard files: values that are not tensors in turn, then tensors, largest
    first, each to the group with the fewest tensor bytes so far."""
    groups: list[list[WriteItem]] = [[] for _ in range(bins)]
    sizes = [0] * bins
    values = [item for item in items if item.type == WriteItemType.BYTE_IO]
    for n, item in enumerate(values):
        groups[n % bins].append(item)
    tensors = [item for item in items if item.type != WriteItemType.BYTE_IO]
    for item in sorted(tensors, key=_tensor_bytes, reverse=True):
        smallest = sizes.index(min(sizes))
        groups[smallest].append(item)
        sizes[smallest] += _tensor_bytes(item)
    return groups


def _tensor_bytes(item: WriteItem) -> int:
    data = item.tensor_data
    return math.prod(data.size) * data.properties.dtype.itemsize


def _compact_cpu(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` on the CPU, in a storage of its own size (``torch.save`` writes a view's
    whole storage)."""
    tensor = tensor.detach().cpu()
    if tensor.untyped_storage().nbytes() != tensor.nbytes:
        tensor = tensor.clone()
    return tensor


class _ItemStream(io.RawIOBase):
    """One item's bytes, written through to its shard file and counted. Closing it (as a
    stream transform closes the stream it wraps) leaves the shard open."""

    def __init__(self, shard: IO[bytes]):
        super().__init__()
        self._shard = shard
        self.written = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        size = len(view)
        while view:  # a raw file object may take part of it
            view = view[self._shard.write(view) :]
        self.written += size
        return size
