"""Loading torch.distributed.checkpoint checkpoints through a real worker: checkpoints
written by torch's FileSystemWriter into a directory that a worker mounts, loaded with
``shoal.torch.StorageReader`` and compared exactly; the second load served by the cache;
stream transforms; missing, truncated and corrupt checkpoints."""

from __future__ import annotations

import errno
import gzip
import os
from typing import IO

import pytest
import torch
import torch.distributed.checkpoint as dcp
from hypothesis import given
from hypothesis import strategies as st
from torch.distributed.checkpoint._extension import ExtensionRegistry, StreamTransformExtension
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import MetadataIndex
from torch.distributed.checkpoint.planner import LoadItemType, ReadItem

from shoal import Client
from shoal.torch import StorageReader, _dcp

# DCP warns that it loads in one process when no process group is initialised.
pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")


def state() -> dict:
    """A state dict of tensors of several dtypes and shapes (one spanning many pages), a
    nested dict, and values that are not tensors."""
    gen = torch.Generator().manual_seed(3)
    return {
        "weight": torch.randn(300, 257, generator=gen),
        "half": torch.randn(7, 5, generator=gen).to(torch.bfloat16),
        "steps": torch.randint(-(2**40), 2**40, (33,), generator=gen),
        "mask": torch.rand(4, 4, 4, generator=gen) > 0.5,
        "scale": torch.tensor(0.25, dtype=torch.float64),
        "none": torch.empty(0, 3, dtype=torch.int16),
        "optim": {"lr": torch.tensor([1e-3]), "betas": [0.9, 0.999], "step": 12},
        "epoch": 5,
        "name": "run-7",
    }


def blank(sd: dict) -> dict:
    """``sd`` with each tensor made zeros and every other value replaced."""
    out: dict = {}
    for key, value in sd.items():
        if isinstance(value, dict):
            out[key] = blank(value)
        elif isinstance(value, torch.Tensor):
            out[key] = torch.zeros_like(value)
        else:
            out[key] = None
    return out


def assert_same(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for key, value in want.items():
        if isinstance(value, dict):
            assert_same(got[key], value)
        elif isinstance(value, torch.Tensor):
            assert got[key].dtype == value.dtype and torch.equal(got[key], value), key
        else:
            assert got[key] == value, key


def save(sd: dict, directory, **writer) -> None:
    dcp.save(sd, storage_writer=dcp.FileSystemWriter(directory, **writer), no_dist=True)


def load(sd: dict, reader: StorageReader, **kwargs) -> dict:
    dcp.load(sd, storage_reader=reader, no_dist=True, **kwargs)
    return sd


def load_error(sd: dict, reader: StorageReader) -> BaseException:
    """What :func:`load` raised on rank 0, out of DCP's ``CheckpointException``."""
    with pytest.raises(CheckpointException) as info:
        load(sd, reader)
    return info.value.failures[0][0]


def gets(client: Client) -> int:
    return client.report()["ufs_requests"].get("GET", 0)


class CountingClient(Client):
    """A client that counts its batch reads."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.batches = 0

    def read_many_into(self, items):
        self.batches += 1
        return super().read_many_into(items)


class Gzip(StreamTransformExtension):
    """A stream transform, as DCP's experimental ``_extensions`` take: gzip."""

    @staticmethod
    def registry_name() -> str:
        return "test.gzip"

    @staticmethod
    def from_descriptor(version: str) -> Gzip:
        return Gzip()

    def get_descriptor(self) -> str:
        return f"{self.registry_name()}/1"

    def transform_to(self, output: IO[bytes]) -> IO[bytes]:
        return gzip.GzipFile(fileobj=output, mode="wb")

    def transform_from(self, input: IO[bytes]) -> IO[bytes]:
        return gzip.GzipFile(fileobj=input, mode="rb")


@pytest.fixture
def ckpt(client, tmp_path) -> str:
    """``/mnt``: a mounted directory holding ``ckpt``, a checkpoint of :func:`state`
    written in two shard files; the Shoal path of that checkpoint."""
    save(state(), tmp_path / "ckpt", thread_count=2)
    client.mount("/mnt", tmp_path.as_uri())
    return "/mnt/ckpt"


def test_a_checkpoint_loads_exactly_and_again_from_the_cache(client, ckpt, tmp_path):
    assert len(list((tmp_path / "ckpt").glob("__0_*.distcp"))) == 2
    before = gets(client)
    assert_same(load(blank(state()), StorageReader(ckpt, client=client)), state())
    assert gets(client) > before
    before = gets(client)
    assert_same(load(blank(state()), StorageReader(ckpt + "/", client=client)), state())
    assert gets(client) == before, "the second load went to the under-store"


def test_a_plan_is_read_in_batches_of_bounded_size(client, ckpt, monkeypatch):
    counting = CountingClient(client.config)
    try:
        load(blank(state()), StorageReader(ckpt, client=counting))
        assert counting.batches == 2  # the metadata, then every item at once
        monkeypatch.setattr(_dcp, "BATCH_BYTES", 4096)
        counting.batches = 0
        assert_same(load(blank(state()), StorageReader(ckpt, client=counting)), state())
        assert counting.batches > 4
    finally:
        counting.close()


def test_only_the_keys_asked_for_are_read(client, ckpt):
    want = state()
    got = load(
        {"half": torch.zeros(7, 5, dtype=torch.bfloat16)}, StorageReader(ckpt, client=client)
    )
    assert torch.equal(got["half"], want["half"])


def test_checkpoint_id_given_to_load_replaces_the_path(client, ckpt):
    reader = StorageReader("/mnt/elsewhere", client=client)
    assert_same(load(blank(state()), reader, checkpoint_id=ckpt), state())
    assert reader.checkpoint_id == ckpt
    assert StorageReader.validate_checkpoint_id(ckpt)
    assert not StorageReader.validate_checkpoint_id("relative/ckpt")
    assert not StorageReader.validate_checkpoint_id("s3://bucket/ckpt")


def test_default_client(client, ckpt):
    reader = StorageReader(ckpt)
    assert_same(load(blank(state()), reader), state())
    assert reader.client.worker_pid() == client.worker_pid()
    reader.client.close()


def test_rank_local_metadata(client, tmp_path):
    sd = {"w": torch.arange(12.0).reshape(3, 4), "n": 3}
    dcp.save(
        sd,
        storage_writer=dcp.FileSystemWriter(tmp_path / "local"),
        no_dist=True,
        use_collectives=False,
    )
    assert not (tmp_path / "local" / ".metadata").exists()
    client.mount("/mnt", tmp_path.as_uri())
    got = load({"w": torch.zeros(3, 4), "n": None}, StorageReader("/mnt/local", client=client))
    assert torch.equal(got["w"], sd["w"]) and got["n"] == 3


def test_stream_transforms(client, tmp_path):
    save(state(), tmp_path / "gz", _extensions=[Gzip()])
    client.mount("/mnt", tmp_path.as_uri())
    registry = ExtensionRegistry()
    registry.register(Gzip)
    reader = StorageReader("/mnt/gz", client=client, extension_registry=registry)
    assert_same(load(blank(state()), reader), state())
    error = load_error(blank(state()), StorageReader("/mnt/gz", client=client))
    assert isinstance(error, ValueError) and "test.gzip" in str(error)


def test_missing_checkpoint(client, tmp_path):
    client.mount("/mnt", tmp_path.as_uri())
    (tmp_path / "empty").mkdir()
    for path in ("/mnt/empty", "/mnt/nothing", "/nowhere/ckpt"):
        reader = StorageReader(path, client=client)
        with pytest.raises(FileNotFoundError, match=f"no DCP checkpoint at {path}") as info:
            reader.read_metadata()
        assert info.value.errno == errno.ENOENT and info.value.filename == f"{path}/.metadata"
    # DCP's load catches what read_metadata raises, and quotes it in its own error.
    error = load_error(blank(state()), StorageReader("/mnt/nothing", client=client))
    assert isinstance(error, AssertionError)
    assert "no DCP checkpoint at /mnt/nothing" in str(error)


@pytest.mark.timeout(60)
def test_truncated_shard(client, ckpt, tmp_path):
    load(blank(state()), StorageReader(ckpt, client=client))  # cached whole
    shard = max((tmp_path / "ckpt").glob("__0_*.distcp"), key=os.path.getsize)
    os.truncate(shard, shard.stat().st_size // 2)
    client.refresh(ckpt)
    error = load_error(blank(state()), StorageReader(ckpt, client=client))
    assert isinstance(error, OSError) and error.errno == errno.EIO
    assert f"{shard.name} is truncated" in str(error)


def test_corrupt_shard(client, tmp_path):
    save({"w": torch.ones(100)}, tmp_path / "ckpt")
    (shard,) = (tmp_path / "ckpt").glob("*.distcp")
    shard.write_bytes(bytes(shard.stat().st_size))
    client.mount("/mnt", tmp_path.as_uri())
    error = load_error({"w": torch.zeros(100)}, StorageReader("/mnt/ckpt", client=client))
    assert isinstance(error, ValueError)
    assert "'w' in __0_0.distcp is not a torch.save archive" in str(error)


class Transposing(dcp.DefaultLoadPlanner):
    """A planner whose tensors to load into are transposed views of the state dict's."""

    def resolve_tensor(self, read_item):
        return super().resolve_tensor(read_item).t()


def test_a_tensor_of_another_shape_than_the_planners(client, ckpt):
    reader = StorageReader(ckpt, client=client)
    with pytest.raises(CheckpointException) as info:
        dcp.load(
            {"half": torch.zeros(7, 5, dtype=torch.bfloat16)},
            storage_reader=reader,
            planner=Transposing(),
            no_dist=True,
        )
    error = info.value.failures[0][0]
    assert isinstance(error, ValueError)
    assert "'half' has shape (7, 5) where the state dict's has (5, 7)" in str(error)


def test_bad_arguments():
    with pytest.raises(ValueError, match="absolute"):
        StorageReader("ckpt/step-1")
    with pytest.raises(TypeError, match="str"):
        StorageReader(7)
    with pytest.raises(TypeError, match="shoal Client"):
        StorageReader("/ckpt", client=object())


@given(st.lists(st.integers(0, 100), max_size=30), st.integers(1, 150))
def test_batches_split_items_in_order_within_the_budget(lengths, budget):
    storage = {
        MetadataIndex(str(i)): _StorageInfo("__0_0.distcp", 0, n) for i, n in enumerate(lengths)
    }
    items = [
        ReadItem(LoadItemType.BYTE_IO, index, torch.Size(), index, torch.Size(), torch.Size())
        for index in storage
    ]
    batches = list(_dcp._batches(items, storage, budget))
    assert [r for b in batches for r in b] == items
    for batch in batches:
        size = sum(storage[r.storage_index].length for r in batch)
        assert batch and (size <= budget or len(batch) == 1)
    for first, second in zip(batches, batches[1:], strict=False):
        size = sum(storage[r.storage_index].length for r in first + second[:1])
        assert size > budget, "a batch was cut before its budget was spent"


def test_the_latest_complete_checkpoint_is_found_for_resuming(client, tmp_path):
    from shoal.torch import latest_checkpoint

    root = tmp_path / "run"
    for step, mtime in (("step-100", 1_000), ("step-300", 3_000), ("step-200", 2_000)):
        save(state(), root / step)
        os.utime(root / step / ".metadata", (mtime, mtime))
    (root / "step-400").mkdir()  # shards, no .metadata yet: still being written
    (root / "step-400" / "__0_0.distcp").write_bytes(b"partial")
    (root / "notes.txt").write_text("not a checkpoint")
    client.mount("/mnt", tmp_path.as_uri())
    assert latest_checkpoint("/mnt/run", client=client) == "/mnt/run/step-300"
    reader = StorageReader(latest_checkpoint("/mnt/run/", client=client), client=client)
    assert_same(load(blank(state()), reader), state())
    (tmp_path / "empty").mkdir()
    assert latest_checkpoint("/mnt/empty", client=client) is None
    with pytest.raises(FileNotFoundError):
        latest_checkpoint("/nowhere/run", client=client)
    with pytest.raises(NotADirectoryError, match="not a directory of checkpoints"):
        latest_checkpoint("/mnt/run/notes.txt", client=client)
    with pytest.raises(ValueError, match="absolute Shoal path"):
        latest_checkpoint("run", client=client)
