"""The datasets of :mod:`shoal.torch`, over the public :class:`shoal.Client` only.

A batch of files is read with one :meth:`~shoal.Client.read_many_into` into one buffer;
each sample is a view of its own part of it. A dataset connects only when it first needs
the worker (to list a prefix, or to read), through a client made in that process (each
DataLoader worker makes its own); a client the user gives reconnects on its own in a
forked or unpickled copy.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
import torch.distributed
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from ..client import Client

if TYPE_CHECKING:
    from .._config import Config

__all__ = ["Sample", "ShoalIterableDataset", "ShoalMapDataset", "shard"]

#: What a dataset makes of a file: ``transform(path, data)``, data as in :class:`Sample`.
Transform = Callable[[str, torch.Tensor], Any]


class Sample(NamedTuple):
    """A file as a dataset gives it when no ``transform`` is given.

    Attributes
    ----------
    path
        The file's Shoal path.
    data
        Its bytes: a 1-D ``torch.uint8`` tensor, a view of the one buffer its batch was
        read into (no copy; while it lives, that buffer does). ``data.numpy()`` is a numpy
        view of it; ``io.BytesIO(data.numpy())`` reads it as a file, without a copy.
    """

    path: str
    data: torch.Tensor


def shard(n: int, rank: int, world_size: int, worker: int, num_workers: int) -> range:
    """The positions in an epoch's order of ``n`` files that one DataLoader worker of one
    rank reads.

    Rank ``r`` takes every ``world_size``-th position from ``r``; of those, worker ``w``
    takes every ``num_workers``-th from its ``w``-th. Over all ranks and workers each
    position comes exactly once; the shares of ranks differ by one file at most, and so
    do those of a rank's workers.

    Parameters
    ----------
    n
        Files in the epoch, >= 0.
    rank, world_size
        The rank, ``0 <= rank < world_size``.
    worker, num_workers
        The DataLoader worker of the rank, ``0 <= worker < num_workers``.

    Returns
    -------
    range
        Increasing positions in ``[0, n)``.
    """
    for name, value in (("n", n), ("rank", rank), ("worker", worker)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    for name, value in (("world_size", world_size), ("num_workers", num_workers)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if rank >= world_size or worker >= num_workers:
        raise ValueError(
            f"rank {rank} of {world_size}, worker {worker} of {num_workers}: "
            "each must be below its count"
        )
    return range(rank + worker * world_size, n, world_size * num_workers)


class _Files:
    """The files of a dataset, their sizes, and the client that reads them in this process.

    A prefix is listed on first use; the sizes of an explicit list of paths are asked for
    on first use too, only those of the files about to be read (one ``stat_many``).
    """

    def __init__(
        self,
        source: str | Iterable[str],
        transform: Transform | None,
        client: Client | None,
        config: Config | None,
        etcd: str | None,
    ):
        if client is not None:
            if not isinstance(client, Client):
                raise TypeError(f"client must be a shoal Client, got {type(client).__name__}")
            if config is not None or etcd is not None:
                raise ValueError("give a client, or config and etcd to make one: not both")
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable, got {type(transform).__name__}")
        self.prefix: str | None = None
        self.paths: list[str] | None = None
        self.sizes: np.ndarray | None = None  # bytes per file; -1 while not known
        if isinstance(source, str):
            _check_path(source, "source")
            self.prefix = source
        elif isinstance(source, (bytes, bytearray)) or not isinstance(source, Iterable):
            raise TypeError(
                f"source must be a Shoal path or a list of them, got {type(source).__name__}"
            )
        else:
            self.paths = list(source)
            for i, path in enumerate(self.paths):
                _check_path(path, f"source[{i}]")
            self.sizes = np.full(len(self.paths), -1, dtype=np.int64)
        self.transform = transform
        self._given = client
        self._config = config
        self._etcd = etcd
        self._client: Client | None = None  # made by client(), in the process that reads
        self._pid = 0

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_client"], state["_pid"] = None, 0  # the copy makes its own on first use
        return state

    def client(self) -> Client:
        """The user's client, or this process's own, made now if it has none."""
        if self._given is not None:
            return self._given
        if self._client is None or self._pid != os.getpid():
            self._client = Client(self._config, etcd=self._etcd)
            self._pid = os.getpid()
        return self._client

    def listed(self) -> tuple[list[str], np.ndarray]:
        """The paths and sizes (-1 where not known yet), the prefix listed if need be."""
        if self.paths is None or self.sizes is None:
            assert self.prefix is not None
            self.paths, self.sizes = _walk(self.client(), self.prefix)
        return self.paths, self.sizes

    def __len__(self) -> int:
        return len(self.listed()[0])

    def read(self, indices: Sequence[int]) -> list[Any]:
        """The samples of the files at ``indices`` (valid, non-negative), read with one
        ``read_many_into`` into one buffer."""
        if not indices:
            return []
        paths, sizes = self.listed()
        client = self.client()
        unknown = sorted({i for i in indices if sizes[i] < 0})
        if unknown:
            infos = client.stat_many([paths[i] for i in unknown])
            sizes[unknown] = [info.size for info in infos]
        lengths = sizes[indices]
        ends = np.cumsum(lengths)
        starts = (ends - lengths).tolist()
        buf = torch.empty(int(ends[-1]), dtype=torch.uint8)
        view = memoryview(buf.numpy())
        counts = client.read_many_into(
            [
                (view[start:end], paths[i])
                for i, start, end in zip(indices, starts, ends.tolist(), strict=True)
            ]
        )
        # A file that shrank since its size was learned reads short: its sample too.
        make = self.transform if self.transform is not None else Sample
        return [
            make(paths[i], buf[start : start + n])
            for i, start, n in zip(indices, starts, counts, strict=True)
        ]


def _check_path(path: Any, what: str) -> None:
    if not isinstance(path, str):
        raise TypeError(f"{what} must be a Shoal path (str), got {type(path).__name__}")
    if not path.startswith("/"):
        raise ValueError(f"{what} must be an absolute Shoal path (start with /), got {path!r}")


def _walk(client: Client, prefix: str) -> tuple[list[str], np.ndarray]:
    """Every file under ``prefix`` (itself when it is a file), sorted by path, and sizes."""
    found: list[tuple[str, int]] = []
    dirs: list[str] = []

    def take(entries: list) -> None:
        for e in entries:
            if e.is_dir:
                dirs.append(e.path)
            else:
                found.append((e.path, e.size))

    take(client.ls(prefix))
    while dirs:
        try:
            take(client.ls(dirs.pop()))
        except FileNotFoundError:
            continue  # gone since its parent was listed (a prefix whose objects went)
    found.sort()
    return [p for p, _ in found], np.array([s for _, s in found], dtype=np.int64)


def _dist_ranks() -> tuple[int, int] | None:
    """This process's rank and world size, when ``torch.distributed`` is initialised."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return None


class ShoalMapDataset(Dataset):
    """A map-style dataset of files under Shoal: sample ``i`` is the ``i``-th file.

    Parameters
    ----------
    source
        A list of absolute Shoal paths (files, in the dataset's order; their sizes are
        asked for when they are first read, a batch at a time), or one Shoal path as a
        str: every file under that directory, recursively, sorted by path (a file: that
        file alone). The directory is listed (with :meth:`shoal.Client.ls`, one call per
        directory) on first use: by ``len()`` or the first read, in the process that
        makes that call. Files are taken not to change while the dataset is used: sizes
        are learned once per process (a file that shrinks reads short, one that grows is
        cut at its old size).
    transform
        ``transform(path, data)``, ``data`` as :attr:`Sample.data`: what to make of a
        file (decode it, say). Default: the :class:`Sample` ``(path, data)``.
    client
        The :class:`shoal.Client` to read with. Default: one made with ``config`` and
        ``etcd`` on first use, in each process that reads.
    etcd, config
        For the client made by default: see :class:`shoal.Client`.

    Raises
    ------
    ValueError
        A path is not absolute; both ``client`` and ``config`` or ``etcd`` are given.
    TypeError
        ``source`` is neither a str nor a list of str; ``transform`` is not callable.

    Notes
    -----
    A DataLoader with a ``batch_size`` calls :meth:`__getitems__` with a whole batch: one
    request reads it into one buffer, and each :attr:`Sample.data` is a view of it.
    PyTorch's default collate stacks the samples' ``data`` and so needs files of one size;
    for files of many sizes, give ``collate_fn=list`` (a batch is a list of samples), or a
    ``transform`` that decodes each file to tensors of one shape.

    The dataset holds no connection until it reads; with ``num_workers > 0`` each worker
    (``fork`` or ``spawn``) reads through a client of its own. Listing a prefix (``len()``
    in the parent, as a DataLoader's sampler does) connects the parent's client; forked
    workers never use its connections (they inherit the listing, and make their own).
    """

    def __init__(
        self,
        source: str | Iterable[str],
        *,
        transform: Transform | None = None,
        client: Client | None = None,
        etcd: str | None = None,
        config: Config | None = None,
    ):
        self._files = _Files(source, transform, client, config, etcd)

    @property
    def paths(self) -> list[str]:
        """The files' Shoal paths, in index order (a prefix is listed now, if not yet)."""
        return self._files.listed()[0]

    def __len__(self) -> int:
        return len(self._files)

    def __getitem__(self, index: int) -> Any:
        """The sample of file ``index`` (negative counts from the end).

        Raises
        ------
        IndexError
            ``index`` is out of range.
        FileNotFoundError
            The file does not exist (the error names it).
        IsADirectoryError
            The path is a directory.
        """
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[Any]:
        """The samples of files ``indices``, read with one request into one buffer (what
        a DataLoader calls for a whole batch).

        Raises
        ------
        The errors of :meth:`__getitem__`, for the first index or file that fails.
        """
        n = len(self._files)
        checked = []
        for index in indices:
            i = operator.index(index)
            if i < 0:
                i += n
            if not 0 <= i < n:
                raise IndexError(f"index {index} out of range for a dataset of {n} files")
            checked.append(i)
        return self._files.read(checked)


class ShoalIterableDataset(IterableDataset):
    """An iterable dataset of files under Shoal, shuffled per epoch and split across
    DataLoader workers and distributed ranks.

    Each epoch, every file is read exactly once over all ranks and all their DataLoader
    workers (no padding, no overlap): see :func:`shard`. Files are read ``batch_size`` at
    a time, each batch with one request into one buffer.

    Parameters
    ----------
    source
        A list of absolute Shoal paths, or one Shoal path as a str: every file under that
        directory, recursively, sorted by path. Listed on first use in each process that
        iterates (each DataLoader worker lists it, unless the dataset was listed before it
        was handed to them, by :attr:`paths`): the directory must not change meanwhile, or
        workers would split different lists. See :class:`ShoalMapDataset`.
    shuffle
        Read the files in an order drawn anew per epoch (from ``seed + epoch``, as
        ``DistributedSampler`` does; the same on every rank and worker), else in the
        source's order.
    seed
        Seed of the shuffle.
    batch_size
        Files read per request (not the DataLoader's batch size).
    transform
        ``transform(path, data)``: see :class:`ShoalMapDataset`.
    client, etcd, config
        See :class:`ShoalMapDataset`.
    rank, world_size
        This process's share of the files: rank ``rank`` of ``world_size`` (both or
        neither). Default: those of ``torch.distributed`` when it is initialised (asked
        when the dataset is made, when it is pickled for a spawned worker, and when it is
        iterated), else one rank.

    Raises
    ------
    ValueError
        A bad path, ``batch_size``, ``seed``, ``rank`` or ``world_size``; both ``client``
        and ``config`` or ``etcd``.
    TypeError
        ``source`` is neither a str nor a list of str; ``transform`` is not callable.

    Notes
    -----
    Call :meth:`set_epoch` before each epoch, as with ``DistributedSampler``: without it
    every epoch has the same order. With ``persistent_workers=True`` the workers keep the
    epoch they were started with, so a shuffle needs ``persistent_workers=False``.

    Ranks get numbers of files that differ by one at most, so their numbers of batches
    may differ by one: a loop that needs as many steps on every rank bounds them itself
    (``itertools.islice``) or joins unevenly (``DistributedDataParallel.join``).
    """

    def __init__(
        self,
        source: str | Iterable[str],
        *,
        shuffle: bool = False,
        seed: int = 0,
        batch_size: int = 64,
        transform: Transform | None = None,
        client: Client | None = None,
        etcd: str | None = None,
        config: Config | None = None,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {seed!r}")
        if (rank is None) != (world_size is None):
            raise ValueError("give both rank and world_size, or neither")
        self._ranks: tuple[int, int] | None = None
        if rank is not None and world_size is not None:
            shard(0, rank, world_size, 0, 1)  # checks them
            self._ranks = (rank, world_size)
        self._files = _Files(source, transform, client, config, etcd)
        self.shuffle = bool(shuffle)
        self.seed = seed
        self.batch_size = batch_size
        self.epoch = 0
        self._dist = _dist_ranks()  # what a spawned worker, where it is not initialised, uses

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_dist"] = _dist_ranks() or self._dist
        return state

    @property
    def paths(self) -> list[str]:
        """The files' Shoal paths in the source's order (a prefix is listed now, if not
        yet, and the listing goes with the dataset to DataLoader workers)."""
        return self._files.listed()[0]

    def set_epoch(self, epoch: int) -> None:
        """Use the order of epoch ``epoch`` (an int >= 0) from the next iteration on."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be an int >= 0, got {epoch!r}")
        self.epoch = epoch

    def __iter__(self) -> Iterator[Any]:
        paths, _ = self._files.listed()
        rank, world_size = self._ranks or _dist_ranks() or self._dist or (0, 1)
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(self.seed + self.epoch)
            order = torch.randperm(len(paths), generator=generator).numpy()
        else:
            order = np.arange(len(paths))
        mine = shard(len(paths), rank, world_size, worker, num_workers)
        mine_order = order[mine.start : mine.stop : mine.step]
        for at in range(0, len(mine_order), self.batch_size):
            yield from self._files.read(mine_order[at : at + self.batch_size].tolist())
