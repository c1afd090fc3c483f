"""The PyTorch datasets over a real worker and real files: exact bytes, one request per batch,
DataLoader workers (fork and spawn) that each read through connections of their own, the
split of an iterable dataset over ranks and workers, and errors."""

from __future__ import annotations

import os
import pickle
import random
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader

from shoal import Client
from shoal.torch import Sample, ShoalIterableDataset, ShoalMapDataset

FILES = 300
MAX_SIZE = 5000


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """``/data``: a few hundred files of random sizes (some empty) in nested directories,
    an empty directory among them; ``files`` maps each Shoal path to its bytes."""
    from conftest import shoal_environment

    root = tmp_path_factory.mktemp("torch-data")
    rng = random.Random(7)
    files = {}
    for i in range(FILES):
        rel = f"{'abc'[i % 3]}/{i // 30:02d}/f{i:04d}.bin" if i % 10 else f"top{i:04d}.bin"
        size = 0 if i % 50 == 0 else rng.randint(0, MAX_SIZE)
        payload = rng.randbytes(size)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(payload)
        files[f"/data/{rel}"] = payload
    (root / "empty").mkdir()
    with shoal_environment() as home:
        client = Client()
        client.mount("/data", root.as_uri())
        try:
            yield SimpleNamespace(client=client, files=files, home=home)
        finally:
            client.close()


def samples_by_path(samples) -> dict[str, bytes]:
    """``{path: bytes}`` of ``samples``; fails on a path seen twice."""
    out: dict[str, bytes] = {}
    for s in samples:
        assert isinstance(s, Sample)
        assert s.data.dtype == torch.uint8 and s.data.dim() == 1
        assert s.path not in out, f"{s.path} read twice"
        out[s.path] = s.data.numpy().tobytes()
    return out


def sockets() -> set[str]:
    """The sockets this process holds open (``socket:[inode]``)."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:"):
            found.add(target)
    return found


def where_read(path: str, data: torch.Tensor) -> tuple:
    """A transform: the file, its bytes, and the process that read it with its sockets."""
    return path, data.numpy().tobytes(), os.getpid(), frozenset(sockets())


def padded(path: str, data: torch.Tensor) -> tuple[str, torch.Tensor, int]:
    """A transform to samples of one shape, as decoding would make."""
    return path, torch.nn.functional.pad(data, (0, MAX_SIZE - len(data))), len(data)


class CountingClient(Client):
    """A client that counts its batch calls."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = {"read_many_into": 0, "stat_many": 0, "ls": 0}

    def read_many_into(self, items):
        self.calls["read_many_into"] += 1
        return super().read_many_into(items)

    def stat_many(self, paths):
        self.calls["stat_many"] += 1
        return super().stat_many(paths)

    def ls(self, path):
        self.calls["ls"] += 1
        return super().ls(path)


# ----------------------------------------------------------------- map dataset


def test_a_prefix_is_every_file_under_it_sorted_with_exact_bytes(data):
    ds = ShoalMapDataset("/data")
    assert len(ds) == FILES
    assert ds.paths == sorted(data.files)
    for i, path in enumerate(ds.paths):
        sample = ds[i]
        assert sample.path == path
        assert sample.data.numpy().tobytes() == data.files[path]
    assert ds[-1].path == ds.paths[-1]
    assert ShoalMapDataset("/data/a/03").paths == sorted(
        p for p in data.files if p.startswith("/data/a/03/")
    )
    one = next(iter(data.files))
    assert ShoalMapDataset(one).paths == [one]


def test_a_batch_is_one_read_into_one_buffer_and_equals_items(data):
    paths = list(data.files)
    random.Random(1).shuffle(paths)
    client = CountingClient()
    try:
        ds = ShoalMapDataset(paths, client=client)
        assert len(ds) == FILES and client.calls["stat_many"] == 0
        batch = [5, 0, 299, 17, 17, 150, -3] + list(range(40, 80))
        got = ds.__getitems__(batch)
        assert client.calls == {"read_many_into": 1, "stat_many": 1, "ls": 0}
        assert [s.path for s in got] == [paths[i] for i in batch]
        for s in got:
            assert s.data.numpy().tobytes() == data.files[s.path]
        # One buffer: each sample is a view of its part.
        storages = {s.data.untyped_storage().data_ptr() for s in got}
        assert len(storages) == 1
        # Sizes are known now: the next batch of the same files is one request, no stat.
        again = ds.__getitems__(batch)
        assert client.calls == {"read_many_into": 2, "stat_many": 1, "ls": 0}
        for a, b in zip(got, again, strict=True):
            assert a.path == b.path and torch.equal(a.data, b.data)
        for i, s in zip(batch, got, strict=True):
            one = ds[i]
            assert one.path == s.path and torch.equal(one.data, s.data)
        assert ds.__getitems__([]) == []
    finally:
        client.close()


def test_default_collate_with_a_transform_to_one_shape(data):
    ds = ShoalMapDataset("/data", transform=padded)
    loader = DataLoader(ds, batch_size=32, num_workers=0)
    seen = {}
    for paths, tensors, lengths in loader:
        assert tensors.shape == (len(paths), MAX_SIZE)
        for path, tensor, n in zip(paths, tensors, lengths.tolist(), strict=True):
            seen[path] = tensor[:n].numpy().tobytes()
    assert seen == data.files


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_dataloader_workers_read_every_file_once(data, context):
    # Spawn pickles the dataset: the explicit list, and no client.
    source = "/data" if context == "fork" else sorted(data.files)
    ds = ShoalMapDataset(source)
    loader = DataLoader(
        ds,
        batch_size=16,
        shuffle=True,
        num_workers=2,
        multiprocessing_context=context,
        collate_fn=list,
    )
    assert samples_by_path(s for batch in loader for s in batch) == data.files


# ----------------------------------------------------------------- connections


@pytest.mark.parametrize("source", ["prefix", "paths", "given client"])
def test_forked_workers_never_use_the_parents_connections(data, source):
    before = sockets()
    if source == "given client":
        client = Client()
        client.stat("/data")  # the parent's client is connected before the fork
        ds = ShoalMapDataset(sorted(data.files), client=client, transform=where_read)
    elif source == "prefix":
        ds = ShoalMapDataset("/data", transform=where_read)
        assert ds._files._client is None
        len(ds)  # lists: the parent's own client connects
        assert ds._files._client is not None
    else:
        ds = ShoalMapDataset(sorted(data.files), transform=where_read)
        assert len(ds) == FILES
        assert ds._files._client is None
    at_fork = sockets()
    parents = at_fork - before  # the connections of this dataset's client in the parent
    assert bool(parents) == (source != "paths")
    loader = DataLoader(
        ds, batch_size=20, num_workers=2, multiprocessing_context="fork", collate_fn=list
    )
    seen = {}
    children = {}
    for batch in loader:
        for path, payload, pid, held in batch:
            seen[path] = payload
            children.setdefault(pid, set()).update(held)
    assert seen == data.files
    assert len(children) == 2 and os.getpid() not in children
    for held in children.values():
        assert not held & parents
        assert held - at_fork  # a connection of the child's own
    if source == "paths":
        assert ds._files._client is None  # the parent never read
    if source == "given client":
        client.close()


def test_a_pickled_dataset_carries_no_client(data):
    ds = ShoalMapDataset(sorted(data.files))
    ds[0]
    made = ds._files._client
    assert made is not None
    copy = pickle.loads(pickle.dumps(ds))
    assert copy._files._client is None
    assert copy[0].data.numpy().tobytes() == data.files[copy.paths[0]]
    assert copy._files._client is not made


# ----------------------------------------------------------------- iterable dataset


def epoch_of(ds_per_rank, epoch: int, num_workers: int, files: dict) -> list[list[str]]:
    """The paths each rank reads in ``epoch``, in order, checking their bytes."""
    out = []
    for ds in ds_per_rank:
        ds.set_epoch(epoch)
        if num_workers:
            loader = DataLoader(
                ds,
                batch_size=8,
                num_workers=num_workers,
                multiprocessing_context="fork",
                collate_fn=list,
            )
            samples = [s for batch in loader for s in batch]
        else:
            samples = list(ds)
        out.append([s.path for s in samples])
        for s in samples:
            assert s.data.numpy().tobytes() == files[s.path]
    return out


def ranks(source, **options) -> list[ShoalIterableDataset]:
    """The datasets of ranks 0 and 1 of 2."""
    return [ShoalIterableDataset(source, rank=r, world_size=2, **options) for r in range(2)]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_iterable_splits_over_ranks_and_workers_without_overlap_or_loss(data, num_workers):
    datasets = ranks("/data", shuffle=True, seed=3, batch_size=7)
    per_rank = epoch_of(datasets, 0, num_workers, data.files)
    everything = [p for paths in per_rank for p in paths]
    assert sorted(everything) == sorted(data.files)  # each file once
    assert abs(len(per_rank[0]) - len(per_rank[1])) <= 1


def test_iterable_shuffle_is_per_epoch_and_reproducible(data):
    paths = sorted(data.files)
    one = ranks(paths, shuffle=True, seed=11, batch_size=50)
    epoch0 = epoch_of(one, 0, 0, data.files)
    epoch1 = epoch_of(one, 1, 0, data.files)
    assert epoch0 != epoch1
    # Ranks share each epoch's order out anew, as DistributedSampler does.
    assert sorted(epoch0[0] + epoch0[1]) == sorted(epoch1[0] + epoch1[1]) == paths
    assert epoch_of(ranks(paths, shuffle=True, seed=11), 0, 0, data.files) == epoch0
    assert epoch_of(one, 1, 0, data.files) == epoch1
    assert epoch_of(ranks(paths, shuffle=True, seed=12), 0, 0, data.files) != epoch0
    # With DataLoader workers, each rank reads the same files as without.
    with_workers = epoch_of(one, 1, 2, data.files)
    for a, b in zip(epoch1, with_workers, strict=True):
        assert sorted(a) == sorted(b)
    # Unshuffled: the source's order, ranks taking turns.
    plain = epoch_of(ranks(paths, batch_size=9), 0, 0, data.files)
    assert plain == [paths[0::2], paths[1::2]]


def test_iterable_with_spawned_workers(data):
    ds = ShoalIterableDataset(sorted(data.files), shuffle=True, batch_size=10)
    ds.set_epoch(2)
    loader = DataLoader(
        ds, batch_size=4, num_workers=2, multiprocessing_context="spawn", collate_fn=list
    )
    assert samples_by_path(s for batch in loader for s in batch) == data.files


def test_rank_of_torch_distributed_goes_with_the_dataset(data, monkeypatch):
    dist = torch.distributed
    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda *a, **k: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda *a, **k: 2)
    paths = sorted(data.files)
    ds = ShoalIterableDataset(paths, batch_size=32)
    assert [s.path for s in ds] == paths[1::2]
    given = ShoalIterableDataset(paths, rank=0, world_size=3)
    assert [s.path for s in given] == paths[0::3]
    # Pickled for a spawned worker, where torch.distributed is not initialised.
    monkeypatch.undo()
    assert [s.path for s in pickle.loads(pickle.dumps(ds))] == paths[1::2]
    assert [s.path for s in ShoalIterableDataset(paths)] == paths


# ----------------------------------------------------------------- errors


def test_bad_input(data):
    with pytest.raises(ValueError, match="absolute"):
        ShoalMapDataset(["/data/a", "data/b"])
    with pytest.raises(ValueError, match="absolute"):
        ShoalIterableDataset("data")
    with pytest.raises(TypeError):
        ShoalMapDataset(b"/data")
    with pytest.raises(TypeError):
        ShoalMapDataset(["/data/x", 3])
    with pytest.raises(ValueError, match="not both"):
        ShoalMapDataset("/data", client=data.client, etcd="http://127.0.0.1:2379")
    with pytest.raises(TypeError, match="callable"):
        ShoalMapDataset("/data", transform=3)
    for bad in ({"batch_size": 0}, {"rank": 1}, {"rank": 2, "world_size": 2}, {"seed": 1.5}):
        with pytest.raises(ValueError):
            ShoalIterableDataset("/data", **bad)
    with pytest.raises(ValueError):
        ShoalIterableDataset("/data").set_epoch(-1)

    paths = sorted(data.files)[:3]
    ds = ShoalMapDataset([*paths, "/data/no/such.bin"])
    for index in (4, -5, 10**6):
        with pytest.raises(IndexError):
            ds[index]
    with pytest.raises(IndexError):
        ds.__getitems__([0, 4])
    with pytest.raises(TypeError):
        ds["0"]
    with pytest.raises(FileNotFoundError, match="/data/no/such.bin") as missing:
        ds[3]
    assert missing.value.filename == "/data/no/such.bin"
    with pytest.raises(FileNotFoundError, match="/data/no/such.bin"):
        ds.__getitems__([0, 3])
    assert ds[1].data.numpy().tobytes() == data.files[paths[1]]
    with pytest.raises(FileNotFoundError, match="/elsewhere/x"):
        list(ShoalIterableDataset(["/elsewhere/x"]))
    with pytest.raises(FileNotFoundError, match="/data/nothing"):
        len(ShoalMapDataset("/data/nothing"))
    with pytest.raises(IsADirectoryError):
        ShoalMapDataset(["/data/a"])[0]


# ----------------------------------------------------------------- imports

PROGRAM = """
import sys
import shoal, shoal.client
assert shoal.Client is shoal.client.Client
assert "torch" not in sys.modules, "import shoal loaded torch"
sys.modules["torch"] = None  # as if it were not installed
try:
    import shoal.torch
except ImportError as exc:
    print(exc)
"""


def test_shoal_loads_no_torch_and_shoal_torch_says_how_to_install_it():
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "pip install 'shoal[torch]'" in done.stdout
