"""Saving torch.distributed.checkpoint checkpoints through a real worker with
``shoal.torch.StorageWriter``: loaded back exactly by ``shoal.torch.StorageReader`` and by
torch's own FileSystemReader from the mounted directory (or from the objects of an S3
mount), the metadata committed last, failed saves and overwrites leaving no mixed
checkpoint, stream transforms, paths that cannot be written."""

from __future__ import annotations

import errno
import pickle

import pytest
import torch
import torch.distributed.checkpoint as dcp
from hypothesis import given
from hypothesis import strategies as st
from test_torch_dcp import Gzip, assert_same, blank
from torch import nn
from torch.distributed.checkpoint._extension import ExtensionRegistry
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import (
    ChunkStorageMetadata,
    MetadataIndex,
    TensorProperties,
)
from torch.distributed.checkpoint.planner import TensorWriteData, WriteItem, WriteItemType

from shoal import Client
from shoal.torch import StorageReader, StorageWriter, _dcp, latest_checkpoint

# DCP warns that it saves and loads in one process when no process group is initialised.
pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")


def state(seed: int = 3) -> dict:
    """A small model's state dict (a Linear and an Embedding) beside a bf16 tensor, one
    spanning many pages, a view of a larger tensor, and values that are not tensors."""
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(16, 8), nn.Embedding(20, 4))
    return {
        "model": model.state_dict(),
        "half": torch.randn(9, 33, generator=gen).to(torch.bfloat16),
        "big": torch.randn(300, 257, generator=gen),
        "view": torch.arange(1000, dtype=torch.int32)[100:164],
        "step": 12 + seed,
        "name": f"run-{seed}",
    }


def save(sd: dict, writer: StorageWriter, **kwargs) -> None:
    dcp.save(sd, storage_writer=writer, no_dist=True, **kwargs)


def load(sd: dict, reader: dcp.StorageReader) -> dict:
    dcp.load(sd, storage_reader=reader, no_dist=True)
    return sd


def save_error(sd: dict, writer: StorageWriter, **kwargs) -> BaseException:
    """What :func:`save` raised on rank 0, out of DCP's ``CheckpointException``."""
    with pytest.raises(CheckpointException) as info:
        save(sd, writer, **kwargs)
    return info.value.failures[0][0]


@pytest.fixture
def mnt(client, tmp_path) -> str:
    """``/mnt``: ``tmp_path`` mounted (write_back, the default)."""
    client.mount("/mnt", tmp_path.as_uri())
    return "/mnt"


def test_a_saved_checkpoint_loads_exactly_through_shoal_and_torch(client, mnt, tmp_path):
    layouts = {
        "one": ({}, ["__0_0.distcp"]),
        "three": ({"thread_count": 3}, [f"__0_{n}.distcp" for n in range(3)]),
        "per-item": ({"single_file_per_rank": False, "thread_count": 2}, None),
    }
    for name, (options, shards) in layouts.items():
        save(state(), StorageWriter(f"/mnt/{name}", client=client, **options))
        assert_same(load(blank(state()), StorageReader(f"/mnt/{name}", client=client)), state())
        files = sorted(e.path.rsplit("/", 1)[1] for e in client.ls(f"/mnt/{name}"))
        assert files[0] == ".metadata" and all(f.endswith(".distcp") for f in files[1:]), files
        if shards is not None:
            assert files[1:] == shards
    assert len(files) == 1 + 8  # a shard per item: 3 of the model, 3 more tensors, 2 values
    client.wait_persisted()
    for name in layouts:
        assert_same(load(blank(state()), dcp.FileSystemReader(tmp_path / name)), state())
    assert not list(tmp_path.rglob("*.tmp"))
    assert latest_checkpoint("/mnt", client=client) in {f"/mnt/{name}" for name in layouts}


def test_checkpoint_id_given_to_save_replaces_the_path(client, mnt):
    writer = StorageWriter("/mnt/elsewhere", client=client)
    save(state(), writer, checkpoint_id="/mnt/ckpt")
    assert writer.checkpoint_id == "/mnt/ckpt" and not client.exists("/mnt/elsewhere")
    assert_same(load(blank(state()), StorageReader("/mnt/ckpt", client=client)), state())
    metadata = pickle.loads(client.open("/mnt/ckpt/.metadata").read())
    assert metadata.storage_meta.checkpoint_id == "/mnt/ckpt"
    assert metadata.storage_meta.save_id == writer.save_id
    assert StorageWriter.validate_checkpoint_id("/mnt/ckpt")
    assert not StorageWriter.validate_checkpoint_id("relative/ckpt")
    assert not StorageWriter.validate_checkpoint_id("s3://bucket/ckpt")


def test_default_client(client, mnt):
    writer = StorageWriter("/mnt/ckpt")
    save(state(), writer)
    assert writer.client.worker_pid() == client.worker_pid()
    writer.client.close()
    assert_same(load(blank(state()), StorageReader("/mnt/ckpt", client=client)), state())


class RecordingClient(Client):
    """A client that records, in order, the files it commits and renames."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.events: list[tuple[str, str]] = []

    def open(self, path, mode="rb", *args, **kwargs):
        file = super().open(path, mode, *args, **kwargs)
        return _Recorded(file, self.events, path) if "w" in mode else file

    def write(self, path, data):
        written = super().write(path, data)
        self.events.append(("write", path))
        return written

    def rename(self, src, dst):
        super().rename(src, dst)
        self.events.append(("rename", dst))


class _Recorded:
    """A file being written, whose commit (its close) is recorded."""

    def __init__(self, file, events: list, path: str):
        self._file, self._events, self._path = file, events, path

    def write(self, data) -> int:
        return self._file.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self._file.__exit__(*exc_info)
        self._events.append(("commit", self._path))


class Probe(dcp.DefaultSavePlanner):
    """A planner that calls ``check`` whenever the writer asks it for an item's data
    (while shards are being written)."""

    def __init__(self, check):
        super().__init__()
        self.check = check

    def resolve_data(self, write_item):
        self.check(write_item)
        return super().resolve_data(write_item)


def test_the_metadata_is_committed_last_and_only_then_found(client, mnt):
    save(state(1), StorageWriter("/mnt/run/step-1", client=client))
    seen = set()

    def check(_):
        seen.add(latest_checkpoint("/mnt/run", client=client))
        assert not client.exists("/mnt/run/step-2/.metadata")

    recording = RecordingClient(client.config)
    try:
        save(
            state(2),
            StorageWriter("/mnt/run/step-2", client=recording, thread_count=2),
            planner=Probe(check),
        )
        events = recording.events
    finally:
        recording.close()
    assert seen == {"/mnt/run/step-1"}, "step-2 was visible before it was complete"
    assert latest_checkpoint("/mnt/run", client=client) == "/mnt/run/step-2"
    commits = [path for op, path in events if op == "commit"]
    assert sorted(commits) == ["/mnt/run/step-2/__0_0.distcp", "/mnt/run/step-2/__0_1.distcp"]
    (op, temporary), last = events[-2], events[-1]
    assert op == "write" and temporary.startswith("/mnt/run/step-2/.metadata.")
    assert last == ("rename", "/mnt/run/step-2/.metadata")
    assert not client.exists(temporary)
    assert_same(load(blank(state(2)), StorageReader("/mnt/run/step-2", client=client)), state(2))


def test_a_failed_save_leaves_no_checkpoint(client, mnt):
    save(state(1), StorageWriter("/mnt/run/step-1", client=client))

    def fail(item):
        if item.index.fqn == "big":
            raise OSError(errno.EIO, "the disk is on fire")

    error = save_error(
        state(2), StorageWriter("/mnt/run/step-2", client=client), planner=Probe(fail)
    )
    assert isinstance(error, OSError) and error.errno == errno.EIO
    assert not client.exists("/mnt/run/step-2/.metadata")
    assert not client.exists("/mnt/run/step-2/__0_0.distcp"), "the failed shard was committed"
    assert latest_checkpoint("/mnt/run", client=client) == "/mnt/run/step-1"


def test_overwrite(client, mnt):
    save(state(1), StorageWriter("/mnt/ckpt", client=client))
    hidden = []
    probe = Probe(lambda _: hidden.append(not client.exists("/mnt/ckpt/.metadata")))
    save(state(2), StorageWriter("/mnt/ckpt", client=client), planner=probe)
    assert hidden and all(hidden), "the old metadata was there while new shards were written"
    assert_same(load(blank(state(2)), StorageReader("/mnt/ckpt", client=client)), state(2))
    error = save_error(state(3), StorageWriter("/mnt/ckpt", client=client, overwrite=False))
    assert isinstance(error, FileExistsError) and error.errno == errno.EEXIST
    assert "a DCP checkpoint is already at /mnt/ckpt (overwrite=False)" in str(error)
    assert_same(load(blank(state(2)), StorageReader("/mnt/ckpt", client=client)), state(2))


def test_rank_local_metadata(client, mnt, tmp_path):
    save(state(), StorageWriter("/mnt/local", client=client), use_collectives=False)
    assert client.exists("/mnt/local/__0.metadata") and not client.exists("/mnt/local/.metadata")
    assert_same(load(blank(state()), StorageReader("/mnt/local", client=client)), state())


def test_stream_transforms(client, mnt, tmp_path):
    sd = {"zeros": torch.zeros(1 << 16), "step": 3}
    save(sd, StorageWriter("/mnt/gz", client=client, extensions=[Gzip()]))
    assert client.stat("/mnt/gz/__0_0.distcp").size < 1 << 14
    registry = ExtensionRegistry()
    registry.register(Gzip)
    got = load(
        {"zeros": torch.ones(1 << 16), "step": None},
        StorageReader("/mnt/gz", client=client, extension_registry=registry),
    )
    assert torch.equal(got["zeros"], sd["zeros"]) and got["step"] == 3
    client.wait_persisted()
    got = load(
        {"zeros": torch.ones(1 << 16), "step": None},
        dcp.FileSystemReader(tmp_path / "gz", _extension_registry=registry),
    )
    assert torch.equal(got["zeros"], sd["zeros"]) and got["step"] == 3


def test_an_s3_mount(client, bucket, tmp_path):
    client.mount("/s3", f"s3://{bucket.name}/runs", **bucket.options())
    save(state(), StorageWriter("/s3/ckpt", client=client, thread_count=2))
    assert_same(load(blank(state()), StorageReader("/s3/ckpt", client=client)), state())
    client.wait_persisted("/s3/ckpt", timeout=30)
    listed = bucket.s3.list_objects_v2(Bucket=bucket.name, Prefix="runs/ckpt/")
    keys = sorted(obj["Key"] for obj in listed.get("Contents", []))
    assert keys == ["runs/ckpt/.metadata", "runs/ckpt/__0_0.distcp", "runs/ckpt/__0_1.distcp"]
    local = tmp_path / "downloaded"
    local.mkdir()
    for key in keys:
        body = bucket.s3.get_object(Bucket=bucket.name, Key=key)["Body"].read()
        (local / key.rsplit("/", 1)[1]).write_bytes(body)
    assert_same(load(blank(state()), dcp.FileSystemReader(local)), state())


def test_paths_that_cannot_be_written(client, tmp_path):
    (tmp_path / "ro").mkdir()
    client.mount("/ro", (tmp_path / "ro").as_uri(), write_mode="read_only")
    writer = StorageWriter("/nowhere/ckpt", client=client)
    with pytest.raises(FileNotFoundError, match="/nowhere/ckpt: it is under no Shoal mount"):
        writer.set_up_storage_writer(True)
    error = save_error(state(), writer)
    assert isinstance(error, FileNotFoundError) and error.errno == errno.ENOENT
    error = save_error(state(), StorageWriter("/ro/ckpt", client=client))
    assert isinstance(error, PermissionError) and error.errno == errno.EROFS
    assert "the mount at /ro is read_only" in str(error)
    assert not list((tmp_path / "ro").iterdir())


def test_bad_arguments():
    with pytest.raises(ValueError, match="absolute"):
        StorageWriter("ckpt/step-1")
    with pytest.raises(TypeError, match="str"):
        StorageWriter(7)
    with pytest.raises(TypeError, match="shoal Client"):
        StorageWriter("/ckpt", client=object())
    for count in (0, 1.5, True):
        with pytest.raises(ValueError, match="thread_count must be an int >= 1"):
            StorageWriter("/ckpt", thread_count=count)


def item(n: int, size: int | None) -> WriteItem:
    """A BYTE_IO item (``size`` None) or a tensor item of ``size`` float32 elements."""
    index = MetadataIndex(f"item-{n}")
    if size is None:
        return WriteItem(index, WriteItemType.BYTE_IO)
    shape = torch.Size([size])
    chunk = ChunkStorageMetadata(torch.Size([0]), shape)
    data = TensorWriteData(chunk, TensorProperties(dtype=torch.float32), shape)
    return WriteItem(index, WriteItemType.TENSOR, tensor_data=data)


@given(st.lists(st.one_of(st.none(), st.integers(0, 1000))), st.integers(1, 6))
def test_items_are_spread_over_shards_by_size(sizes, bins):
    items = [item(n, size) for n, size in enumerate(sizes)]
    groups = _dcp._spread_by_size(items, bins)
    assert len(groups) == bins
    assert sorted(i.index.fqn for g in groups for i in g) == sorted(i.index.fqn for i in items)
    values = [sum(i.type == WriteItemType.BYTE_IO for i in g) for g in groups]
    assert max(values) - min(values) <= 1
    loads = [sum(4 * s for i, s in zip(items, sizes, strict=True) if i in g and s) for g in groups]
    assert max(loads) - min(loads) <= 4 * max((s or 0 for s in sizes), default=0)
