"""Loading ``torch.distributed.checkpoint`` (DCP) checkpoints through Shoal.

:class:`StorageReader` reads a checkpoint in the layout of torch's ``FileSystemWriter``
(a ``.metadata`` file and ``__<rank>_<n>.distcp`` shard files in one directory) from a
Shoal path, every byte through a :class:`shoal.Client` and so through the node's cache.
There is no StorageWriter: Shoal mounts are read-only.
"""

from __future__ import annotations

import errno
import io
import os
import pickle
import posixpath
import uuid
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed._shard._utils import narrow_tensor_by_index
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
from torch.distributed.checkpoint.planner import LoadItemType, LoadPlan, LoadPlanner, ReadItem
from torch.futures import Future

from ..client import Client

if TYPE_CHECKING:
    from torch.distributed.checkpoint._extension import ExtensionRegistry

__all__ = ["StorageReader", "latest_checkpoint"]

#: Bytes of shard data read with one ``read_many_into`` before they are handed to the
#: planner (a plan's items are read in batches of about this size, to bound memory).
BATCH_BYTES = 256 << 20
#: The first bytes of every ``torch.save`` archive (a zip file).
_ZIP_MAGIC = b"PK\x03\x04"


class StorageReader(dcp.StorageReader):
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
        super().__init__()
        if client is not None and not isinstance(client, Client):
            raise TypeError(f"client must be a shoal Client, got {type(client).__name__}")
        self.path = _checkpoint_path(path)
        self._client = client
        self._extension_registry = extension_registry
        self.storage_data: dict[Any, Any] = {}
        self.load_id = str(uuid.uuid4())

    @property
    def client(self) -> Client:
        """The client that reads the checkpoint (made now if none was given)."""
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
        URL (nothing is read to tell)."""
        try:
            _checkpoint_path(checkpoint_id)
        except (TypeError, ValueError):
            return False
        return True

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
        name = ".metadata" if rank is None else f"__{rank}.metadata"
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
    if own:
        client = Client()
    elif not isinstance(client, Client):
        raise TypeError(f"client must be a shoal Client, got {type(client).__name__}")
    try:
        entries = client.ls(prefix)
        if len(entries) == 1 and entries[0].path == prefix and not entries[0].is_dir:
            raise NotADirectoryError(errno.ENOTDIR, "not a directory of checkpoints", prefix)
        best: tuple[tuple[float, str], str] | None = None
        for entry in entries:
            if not entry.is_dir:
                continue
            try:
                meta = client.stat(f"{entry.path.rstrip('/')}/.metadata")
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
