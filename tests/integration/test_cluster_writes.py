"""Cluster writes: three workers as separate processes on loopback, an S3 (moto) mount. A
file written through one worker is uploaded before its commit returns, so that a client of
any other worker reads it at once; a client on another host writes over TCP in
``write_data`` requests; bad ``write_data`` requests are refused and leave nothing."""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import new_bucket
from shoal_cluster import PAGE, running_cluster, wait_until
from test_cluster_read import random_bytes

from shoal.client import Client
from shoal.client._connection import Connection

pytestmark = pytest.mark.slow

MiB = 1 << 20


@pytest.fixture(scope="module")
def cluster(etcd, moto_server):
    with running_cluster(etcd.endpoint, 3) as c:
        yield c


@pytest.fixture(scope="module")
def s3(cluster, moto_server):
    """``(client, bucket)``: a client on another host (TCP to every worker) that mounted a
    new bucket at ``/w``."""
    bucket = new_bucket(moto_server)
    client = cluster.client()
    client.mount("/w", f"s3://{bucket.name}", **bucket.options())
    try:
        yield client, bucket
    finally:
        client.close()


def client_on(cluster, n: int) -> Client:
    """A client on the host of worker ``n``: its home is that worker, on its Unix socket."""
    client = cluster.client(host_id=cluster.workers[n].host_id)
    assert not client._live().home().remote
    return client


def read(client: Client, path: str) -> bytes:
    buf = bytearray(client.stat(path).size)
    assert client.read_into(buf, path) == len(buf)
    return bytes(buf)


def stored(bucket, key: str) -> bytes:
    return bucket.s3.get_object(Bucket=bucket.name, Key=key)["Body"].read()


def test_a_checkpoint_saved_through_one_worker_is_read_at_once_through_another(cluster, s3):
    _, bucket = s3
    writer, reader = client_on(cluster, 0), client_on(cluster, 1)
    rng = np.random.default_rng(7)
    tensors = {
        "embed": rng.standard_normal((512, 1024), dtype=np.float32),  # 2 MiB
        "layer.0.w": rng.standard_normal((300, 700)).astype(np.float16),
        "layer.0.b": rng.integers(-(2**40), 2**40, 3001, dtype=np.int64),
        "step": np.array(12345, dtype=np.int32),
        "mask": rng.integers(0, 2, (33, 77), dtype=np.uint8).astype(bool),
    }
    try:
        size = writer.save_checkpoint("/w/ckpt/model.safetensors", tensors, {"step": "12345"})
        assert size > 8 * 4 * PAGE  # more chunks than workers: every worker holds some
        # write_back acts as write_through in a cluster: the store has it on return
        assert writer.persisted("/w/ckpt/model.safetensors")
        assert writer.report()["writeback"]["dirty_bytes"] == 0
        assert len(stored(bucket, "ckpt/model.safetensors")) == size
        got = reader.load_checkpoint("/w/ckpt/model.safetensors")
        assert sorted(got) == sorted(tensors)
        for name, want in tensors.items():
            assert got[name].dtype == want.dtype and got[name].shape == want.shape, name
            np.testing.assert_array_equal(got[name], want, err_msg=name)
        assert read(reader, "/w/ckpt/model.safetensors") == stored(bucket, "ckpt/model.safetensors")
    finally:
        writer.close()
        reader.close()


@pytest.mark.parametrize("how", ["write", "open"])
def test_writes_across_page_and_chunk_boundaries_read_back_through_another_worker(cluster, s3, how):
    _, bucket = s3
    writer, reader = client_on(cluster, 1), client_on(cluster, 2)
    chunk = 4 * PAGE
    sizes = [0, 1, PAGE - 1, PAGE, PAGE + 1, chunk + 17, 3 * chunk - 1, 5 * chunk + PAGE + 3]
    try:
        for i, size in enumerate(sizes):
            data = random_bytes(size, 100 * len(how) + i)
            path = f"/w/{how}/f{i}"
            if how == "write":
                assert writer.write(path, data) == size
            else:
                with writer.open(path, "wb") as f:
                    for at in range(0, size, PAGE // 3):  # pieces across pages
                        f.write(data[at : at + PAGE // 3])
            assert writer.persisted(path), path
            assert read(reader, path) == data, path
            with reader.open(path) as f:
                assert f.read() == data, path
            assert stored(bucket, f"{how}/f{i}") == data, path
        assert {e.path for e in reader.ls(f"/w/{how}")} == {
            f"/w/{how}/f{i}" for i in range(len(sizes))
        }
    finally:
        writer.close()
        reader.close()


def test_a_client_on_another_host_writes_over_tcp_in_several_requests(cluster, s3):
    client, bucket = s3
    assert client._live().home().remote
    other = client_on(cluster, 0)
    # The workers' dirty budget is half their 16 MiB capacity: a file of several MiB in
    # unbuffered writes of odd sizes, each one write_data request or more.
    pieces = [random_bytes(n, 40 + n % 7) for n in (3 * MiB + 5, 1, PAGE - 1, 2 * MiB + 3)]
    data = b"".join(pieces)
    before = {w.id: cluster.report(w)["writeback"]["written_bytes"] for w in cluster.workers}
    try:
        with client.open("/w/tcp/big", "wb", buffer_size=0) as f:
            for piece in pieces:
                assert f.write(piece) == len(piece)
        assert client.persisted("/w/tcp/big")
        after = {w.id: cluster.report(w)["writeback"]["written_bytes"] for w in cluster.workers}
        grew = [i for i in after if after[i] != before[i]]
        assert len(grew) == 1 and after[grew[0]] - before[grew[0]] == len(data)
        assert read(client, "/w/tcp/big") == data
        assert read(other, "/w/tcp/big") == data
        assert stored(bucket, "tcp/big") == data

        client.rename("/w/tcp/big", "/w/tcp/moved")
        assert not client.exists("/w/tcp/big")
        assert read(client, "/w/tcp/moved") == data
        assert read(other, "/w/tcp/moved") == data
        assert stored(bucket, "tcp/moved") == data
        keys = {o["Key"] for o in bucket.s3.list_objects_v2(Bucket=bucket.name)["Contents"]}
        assert "tcp/big" not in keys

        client.delete("/w/tcp/moved")
        assert not client.exists("/w/tcp/moved")
        with pytest.raises(FileNotFoundError):
            client.delete("/w/tcp/moved")
        listed = bucket.s3.list_objects_v2(Bucket=bucket.name, Prefix="tcp/")
        assert listed.get("KeyCount", 0) == 0
    finally:
        other.close()


def connect(cluster, n: int) -> Connection:
    conn = cluster.connect(cluster.workers[n])
    assert conn.remote
    return conn


def write_data(conn: Connection, handle: int, offset: int, data: bytes) -> dict:
    conn.send({"op": "write_data", "handle": handle, "offset": offset}, [data])
    return conn.receive()[0]


def test_write_data_for_a_handle_not_open_is_refused_and_the_connection_serves_on(cluster, s3):
    conn = connect(cluster, 0)
    try:
        with pytest.raises(ValueError, match="handle 987654 is not open"):
            write_data(conn, 987654, 0, b"abc")
        with pytest.raises(ValueError, match="not open"):
            conn.call({"op": "write_commit", "handle": 987654, "size": 3})
        assert conn.call({"op": "report"})["report"]["writeback"]["reserved_bytes"] == 0
    finally:
        conn.close()


def test_write_data_out_of_order_is_refused_naming_the_expected_offset(cluster, s3):
    client, _ = s3
    conn = connect(cluster, 1)
    try:
        handle = conn.call({"op": "write_open", "path": "/w/bad/order", "size": -1})["handle"]
        assert write_data(conn, handle, 0, b"0123456789")["written"] == 10
        with pytest.raises(ValueError, match="expected 10"):
            write_data(conn, handle, 5, b"56789")
        with pytest.raises(ValueError, match="expected 10"):
            write_data(conn, handle, 20, b"x")
        assert write_data(conn, handle, 10, b"abcdef")["written"] == 16
        done = conn.call({"op": "write_commit", "handle": handle, "size": 16})
        assert done["size"] == 16 and done["persisted"]
        assert read(client, "/w/bad/order") == b"0123456789abcdef"
    finally:
        conn.close()


def test_a_write_handle_belongs_to_its_connection(cluster, s3):
    client, _ = s3
    owner, thief = connect(cluster, 2), connect(cluster, 2)
    try:
        handle = owner.call({"op": "write_open", "path": "/w/bad/owned", "size": 6})["handle"]
        assert write_data(owner, handle, 0, b"mine")["written"] == 4
        with pytest.raises(ValueError, match="not open on this connection"):
            write_data(thief, handle, 4, b"xx")
        for header in (
            {"op": "write_grow", "handle": handle, "size": 100},
            {"op": "write_commit", "handle": handle, "size": 4},
            {"op": "write_abort", "handle": handle},
        ):
            with pytest.raises(ValueError, match="not open on this connection"):
                thief.call(header)
        assert not client.exists("/w/bad/owned")
        assert write_data(owner, handle, 4, b"!!")["written"] == 6
        assert owner.call({"op": "write_commit", "handle": handle, "size": 6})["size"] == 6
        assert read(client, "/w/bad/owned") == b"mine!!"
    finally:
        owner.close()
        thief.close()


def test_a_connection_closed_with_a_write_open_leaves_nothing(cluster, s3):
    client, bucket = s3
    worker = cluster.workers[0]
    conn = connect(cluster, 0)
    handle = conn.call({"op": "write_open", "path": "/w/bad/left", "size": 2 * MiB})["handle"]
    assert write_data(conn, handle, 0, random_bytes(MiB, 9))["written"] == MiB
    assert cluster.report(worker)["writeback"]["reserved_bytes"] == 2 * MiB
    conn.close()
    wait_until(
        lambda: cluster.report(worker)["writeback"]["reserved_bytes"] == 0,
        10,
        "the worker to drop the write of the closed connection",
    )
    assert os.listdir(os.path.join(worker.home, "dirty")) == []
    assert not client.exists("/w/bad/left")
    listed = bucket.s3.list_objects_v2(Bucket=bucket.name, Prefix="bad/left")
    assert listed.get("KeyCount", 0) == 0


def test_a_write_through_a_worker_that_has_not_seen_a_new_mount_yet(cluster, moto_server):
    bucket = new_bucket(moto_server)
    admin = cluster.client()
    home = admin._live().home_member().id
    n = next(i for i, w in enumerate(cluster.workers) if w.id != home)
    writer = client_on(cluster, n)
    try:
        admin.mount("/fresh", f"s3://{bucket.name}", **bucket.options())
        assert writer.write("/fresh/f", b"new mount") == 9
        assert stored(bucket, "f") == b"new mount"
    finally:
        writer.close()
        admin.close()


@pytest.mark.parametrize("change", ["overwrite", "create_in_listed_dir", "delete"])
def test_a_change_is_seen_at_once_through_a_worker_that_knew_the_path(cluster, s3, change):
    writer = client_on(cluster, 0)
    # no metadata kept by the client itself: what it sees is what worker 1 answers
    reader = cluster.client(host_id=cluster.workers[1].host_id, metadata_ttl=0)
    path = f"/w/seen/{change}/f"
    try:
        writer.write(f"/w/seen/{change}/other", b"o")
        if change != "create_in_listed_dir":
            writer.write(path, b"one" * 1000)
            assert read(reader, path) == b"one" * 1000
        assert reader.ls(f"/w/seen/{change}")
        if change == "delete":
            writer.delete(path)
            assert not reader.exists(path)
        else:
            writer.write(path, b"two!" * 5000)
            assert read(reader, path) == b"two!" * 5000
    finally:
        writer.close()
        reader.close()
