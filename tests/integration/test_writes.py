"""Writes through the worker, against real worker processes, a real local directory and a
real S3 server (moto; one of the test's own where the store has to go away): round trips
in every write mode, read-your-writes before the upload, a worker killed right after a
checkpoint is saved, the dirty budget, deletes and renames racing uploads, bad input."""

from __future__ import annotations

import errno
import os
import shutil
import threading
import time

import numpy as np
import pytest
from conftest import PAGE, TEST_ALLOWED_MOUNTS, shoal_environment
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from s3server import ACCESS_KEY_ENV, SECRET_KEY_ENV

from shoal._config import load_config
from shoal.client import Client
from shoal.control._server import ConnectionState
from shoal.control._worker import Worker

MiB = 1 << 20


def s3_options(server) -> dict:
    return {
        "endpoint_url": server.endpoint_url,
        "region": "us-east-1",
        "addressing_style": "path",
        "access_key_env": ACCESS_KEY_ENV,
        "secret_key_env": SECRET_KEY_ENV,
    }


def objects(server, bucket: str) -> dict[str, bytes]:
    s3 = server.client()
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    return {k: s3.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}


def read(client: Client, path: str) -> bytes:
    buf = bytearray(client.stat(path).size)
    assert client.read_into(buf, path) == len(buf)
    return bytes(buf)


def wait_for(what, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, "gave up waiting"
        time.sleep(0.05)


@pytest.fixture
def local(client, tmp_path):
    """A client with ``/w`` (write-back), ``/t`` (write-through), ``/c`` (cache-only) and
    ``/r`` (read-only) mounted on directories of their own; the directories by mount."""
    dirs = {}
    for name, mode in [("w", "write_back"), ("t", "write_through"), ("c", "cache_only"),
                       ("r", "read_only")]:  # fmt: skip
        d = tmp_path / name
        d.mkdir()
        client.mount(f"/{name}", d.as_uri(), write_mode=mode)
        dirs[name] = d
    return client, dirs


# --------------------------------------------------------------------- round trips


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    size=st.one_of(
        st.integers(0, 3 * PAGE + 1),
        st.sampled_from([PAGE - 1, PAGE, PAGE + 1, 2 * PAGE, 3 * PAGE - 1]),
    ),
    mode=st.sampled_from(["w", "t", "c"]),
    pieces=st.integers(1, 5),
)
def test_every_mode_reads_back_what_was_written(local, size, mode, pieces):
    client, dirs = local
    data = os.urandom(size)
    path = f"/{mode}/f-{size}-{pieces}.bin"
    if pieces == 1:
        assert client.write(path, data) == size
    else:
        with client.open(path, "wb", buffer_size=PAGE // 3) as f:
            step = max(1, size // pieces)
            for at in range(0, size, step):
                f.write(data[at : at + step])
    assert read(client, path) == data  # at once, from this worker, uploaded or not
    stored = dirs[mode] / path.split("/")[-1]
    if mode == "t":
        assert stored.read_bytes() == data  # in the store when the write returned
        assert client.persisted(path)
    elif mode == "w":
        client.wait_persisted(path, timeout=60)
        assert stored.read_bytes() == data
    else:
        client.wait_persisted(timeout=60)  # cache_only: nothing to wait for
        assert not stored.exists() and not client.persisted(path)
        assert read(client, path) == data


def test_write_modes_on_s3_and_read_your_writes_before_the_upload(moto_process, shoal_home):
    moto_process.start("modes")
    client = Client(load_config())
    client.mount("/s3", "s3://modes", metadata_ttl=600, **s3_options(moto_process))
    client.set_policy("/s3/through", write_mode="write-through")
    client.set_policy("/s3/scratch", write_mode="cache-only")
    big = os.urandom(3 * MiB + 17)  # several pages, one multipart upload
    assert client.write("/s3/through/a.bin", big) == len(big)
    assert objects(moto_process, "modes") == {"through/a.bin": big}

    client.ls("/s3")  # listed while the store is there (kept for the mount's TTL)
    moto_process.kill()  # uploads wait now; writes go on
    client.write("/s3/back/b.bin", big[: PAGE + 3])
    client.write("/s3/scratch/c.bin", b"scratch")
    assert not client.persisted("/s3/back/b.bin")
    assert read(client, "/s3/back/b.bin") == big[: PAGE + 3]
    assert read(client, "/s3/scratch/c.bin") == b"scratch"
    assert [e.path for e in client.ls("/s3")] == ["/s3/back", "/s3/scratch", "/s3/through"]
    with pytest.raises(ConnectionError, match="Could not connect"):
        client.write("/s3/through/d.bin", b"needs the store")  # write-through fails: told
    assert client.persisted("/s3/through/d.bin")  # nothing kept of it: not acknowledged
    assert client.report()["writeback"]["dirty_files"] == 2
    with pytest.raises(TimeoutError, match=r"1 files \(\d+ bytes\) under /s3"):
        client.wait_persisted("/s3", timeout=0.5)

    moto_process.start("modes")  # back: the upload goes through
    client.wait_persisted(timeout=120)
    assert client.persisted("/s3/back/b.bin")
    got = objects(moto_process, "modes")
    assert got == {"back/b.bin": big[: PAGE + 3]}  # a new server: the old objects are gone
    assert read(client, "/s3/back/b.bin") == big[: PAGE + 3]  # now the store's version
    report = client.report()["writeback"]
    assert report["dirty_files"] == 1 and report["dirty_bytes"] == len(b"scratch")
    assert report["upload_failures"] >= 1
    client.close()


# --------------------------------------------------------------------- crashes


def test_a_checkpoint_survives_kill_9_right_after_save(moto_process, shoal_home, daemons):
    moto_process.start("ckpt")
    client = Client(load_config())
    client.mount("/s3", "s3://ckpt", metadata_ttl=600, **s3_options(moto_process))
    client.ls("/s3")
    moto_process.kill()  # the upload cannot have happened when the worker dies
    rng = np.random.default_rng(7)
    tensors = {f"layer{i}.w": rng.standard_normal((64, 96), dtype=np.float32) for i in range(6)}
    tensors["step"] = np.array([1200], dtype=np.int64)
    size = client.save_checkpoint("/s3/run/step-1200.safetensors", tensors, {"step": "1200"})
    daemons.kill(shoal_home)
    client.close()

    moto_process.start("ckpt")
    client = Client(load_config())  # a new worker resumes from the journal
    got = client.load_checkpoint("/s3/run/step-1200.safetensors")
    assert set(got) == set(tensors)
    for name, t in tensors.items():
        assert np.array_equal(got[name], t)
    client.wait_persisted(timeout=120)
    raw = objects(moto_process, "ckpt")["run/step-1200.safetensors"]
    assert len(raw) == size
    from safetensors.numpy import load

    for name, t in load(raw).items():
        assert np.array_equal(t, tensors[name])
    client.close()


def test_a_write_not_committed_when_its_client_dies_leaves_nothing(client, tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    client.mount("/d", d.as_uri())
    f = client.open("/d/half.bin", "wb")
    f.write(os.urandom(2 * PAGE))
    f.flush()
    f.raw._conn.close()  # the connection ends with the write open
    wait_for(lambda: client.report()["writeback"]["reserved_bytes"] == 0)
    assert not client.exists("/d/half.bin")
    with pytest.raises(RuntimeError), client.open("/d/fail.bin", "wb") as g:
        g.write(b"partial")
        raise RuntimeError("the job failed")
    assert not client.exists("/d/fail.bin") and not (d / "fail.bin").exists()
    assert os.listdir(os.path.join(os.environ["SHOAL_HOME"], "dirty")) == []


# --------------------------------------------------------------------- budget


def test_a_full_dirty_budget_waits_then_refuses_and_loses_nothing(moto_process):
    with shoal_environment(dirty_bytes=4 * MiB, dirty_wait=1.0):
        moto_process.start("budget")
        client = Client(load_config())
        client.mount("/s3", "s3://budget", metadata_ttl=600, **s3_options(moto_process))
        client.ls("/s3")
        moto_process.kill()
        first = os.urandom(3 * MiB)
        client.write("/s3/first.bin", first)
        start = time.monotonic()
        with pytest.raises(OSError) as info:
            client.write("/s3/second.bin", os.urandom(2 * MiB))
        assert info.value.errno == errno.ENOSPC
        assert time.monotonic() - start >= 0.9  # it waited for uploads first
        assert "dirty budget of 4194304 bytes is full" in str(info.value)
        assert "\n" not in str(info.value)
        stream = client.open("/s3/stream.bin", "wb", buffer_size=0)
        with pytest.raises(OSError, match="dirty budget") as info, stream as f:
            for _ in range(3):
                f.write(os.urandom(MiB))
        assert info.value.errno == errno.ENOSPC
        assert not client.exists("/s3/stream.bin") and not client.exists("/s3/second.bin")
        assert read(client, "/s3/first.bin") == first  # acknowledged: kept

        moto_process.start("budget")
        client.wait_persisted(timeout=120)
        assert objects(moto_process, "budget") == {"first.bin": first}
        second = os.urandom(2 * MiB)
        client.write("/s3/second.bin", second)  # room again
        assert read(client, "/s3/second.bin") == second
        client.close()


# --------------------------------------------------------------------- delete, rename


def test_deletes_and_renames_are_ordered_after_uploads(moto_process, shoal_home):
    moto_process.start("order")
    client = Client(load_config())
    client.mount("/s3", "s3://order", metadata_ttl=600, **s3_options(moto_process))
    client.ls("/s3")
    old = os.urandom(MiB)
    client.write("/s3/gone.bin", old)
    client.wait_persisted(timeout=60)
    # Racing the uploads: each call comes while the write before it may be uploading.
    for i in range(3):
        client.write(f"/s3/r{i}.tmp", os.urandom(2 * MiB + i))
    client.write("/s3/gone.bin", os.urandom(2 * MiB))
    client.delete("/s3/gone.bin")
    assert not client.exists("/s3/gone.bin")
    final = {}
    for i in range(3):
        data = read(client, f"/s3/r{i}.tmp")
        client.rename(f"/s3/r{i}.tmp", f"/s3/r{i}.bin")
        final[f"r{i}.bin"] = data
        assert read(client, f"/s3/r{i}.bin") == data and not client.exists(f"/s3/r{i}.tmp")
    client.wait_persisted(timeout=120)
    assert objects(moto_process, "order") == final  # no late upload brought one back

    # A rename of a file the store holds: copied, then deleted.
    client.rename("/s3/r0.bin", "/s3/moved/r0.bin")
    assert objects(moto_process, "order")["moved/r0.bin"] == final["r0.bin"]
    assert "r0.bin" not in objects(moto_process, "order")
    client.close()


def test_deletes_and_renames_while_the_store_is_down(moto_process, shoal_home):
    moto_process.start("down")
    client = Client(load_config())
    client.mount("/s3", "s3://down", metadata_ttl=600, **s3_options(moto_process))
    client.write("/s3/keep.bin", b"old")
    client.wait_persisted(timeout=60)
    client.ls("/s3")
    moto_process.kill()
    client.write("/s3/a.tmp", b"checkpoint")
    client.rename("/s3/a.tmp", "/s3/a.bin")  # what a checkpoint library commits with
    client.delete("/s3/keep.bin")
    assert [e.path for e in client.ls("/s3")] == ["/s3/a.bin"]
    assert read(client, "/s3/a.bin") == b"checkpoint"
    moto_process.start("down")  # a new, empty server: the journaled delete finds nothing
    client.wait_persisted(timeout=120)
    assert objects(moto_process, "down") == {"a.bin": b"checkpoint"}
    client.close()


def test_what_a_wait_for_persistence_saw_stays_cached(tmp_path, monkeypatch):
    """A wait for persistence returns once an upload is wholly taken in (its pages cached,
    its stat renewed), not as soon as the store holds it: a listing cached right after
    the wait is never voided by the rest of that upload's work (the store may be gone by
    then). In one process, the upload's caching slowed down to widen the window."""
    home, src = tmp_path / "home", tmp_path / "src"
    src.mkdir()
    w = Worker(load_config(home=str(home), mem_capacity=0, allowed_mounts=TEST_ALLOWED_MOUNTS))
    try:
        w.mount("/d", src.as_uri(), {"metadata_ttl": 600})
        ingest = w.writeback._ingest

        def slow_ingest(*args):
            time.sleep(0.5)
            ingest(*args)

        monkeypatch.setattr(w.writeback, "_ingest", slow_ingest)
        ops = w.handlers()
        conn = ConnectionState(remote=True)
        handle = ops["write_open"](conn, {"path": "/d/keep.bin", "size": 3}).header["handle"]
        conn.payload = memoryview(b"old")
        ops["write_data"](conn, {"handle": handle, "offset": 0})
        ops["write_commit"](conn, {"handle": handle, "size": 3})
        assert ops["wait_persisted"](conn, {"path": "", "timeout": 60}).header["files"] == 0
        assert [e["path"] for e in w.ls("/d")] == ["/d/keep.bin"]
        shutil.rmtree(src)  # the store goes away; its listing is cached for 600 s
        time.sleep(1.0)  # longer than the slowed caching of the upload
        assert [e["path"] for e in w.ls("/d")] == ["/d/keep.bin"]
    finally:
        w.close()


# --------------------------------------------------------------------- bad input


def test_bad_writes_are_clear_errors(local, tmp_path):
    client, dirs = local
    (dirs["w"] / "sub").mkdir()
    cases = [
        (lambda: client.write("/nowhere/x", b"x"), FileNotFoundError, "not under any mount"),
        (lambda: client.write("/r/x", b"x"), PermissionError, "read-only"),
        (lambda: client.write("/w", b"x"), IsADirectoryError, "mount point"),
        (lambda: client.write("/w/sub", b"x"), IsADirectoryError, "is a directory"),
        (lambda: client.write("w/x", b"x"), ValueError, "absolute"),
        (lambda: client.write("/w/x", "text"), TypeError, "bytes-like"),
        (lambda: client.write("/w/x", 12), TypeError, "bytes-like"),
        (lambda: client.rename("/w/a", "/t/a"), OSError, "different mounts"),
        (lambda: client.rename("/w/none", "/w/b"), FileNotFoundError, None),
        (lambda: client.delete("/w/none"), FileNotFoundError, None),
        (lambda: client.delete("/w/sub"), IsADirectoryError, None),
        (lambda: client.open("/w/x", "ab"), ValueError, "mode"),
        (lambda: client.open("/w/x", "wb", size=-1), ValueError, "size"),
        (lambda: client.wait_persisted(timeout=-1), ValueError, "timeout"),
        (lambda: client.save_checkpoint("/w/c", {"a": [1, 2]}), TypeError, "numpy"),
        (lambda: client.save_checkpoint("/w/c", {"": np.zeros(1)}), ValueError, "names"),
        (lambda: client.save_checkpoint("/w/c", {"a": np.zeros(1, ">f4")}), ValueError, "dtype"),
        (lambda: client.save_checkpoint("/w/c", {"a": np.zeros(1)}, {"k": 1}), TypeError, "str"),
    ]
    for call, kind, match in cases:
        with pytest.raises(kind, match=match) as info:
            call()
        assert "\n" not in str(info.value)
    client.set_policy("/w/q", quota=3 * PAGE)
    for call in (
        lambda: client.write("/w/q/big", bytes(3 * PAGE + 1)),
        lambda: client.open("/w/q/big", "wb", buffer_size=0).write(bytes(4 * PAGE)),
    ):
        with pytest.raises(OSError, match="exceed the quota") as info:
            call()
        assert info.value.errno == errno.EDQUOT
    assert not client.exists("/w/q/big")  # the writer that failed commits nothing
    assert client.write("/w/q/fits", bytes(3 * PAGE)) == 3 * PAGE
    client.write("/w/a", b"a")
    with pytest.raises(OSError) as info:
        client.rename("/w/a", "/t/a")
    assert info.value.errno == errno.EXDEV
    assert read(client, "/w/a") == b"a"  # the worker serves on
    assert client.report()["writeback"]["reserved_bytes"] == 0


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(name=st.text(min_size=1, max_size=40))
def test_any_name_is_written_or_refused_cleanly(local, name):
    client, _ = local
    path = "/w/" + name
    try:
        client.write(path, b"n")
    except (ValueError, OSError) as exc:
        assert "\n" not in str(exc)
        return
    assert read(client, path) == b"n"


def test_concurrent_writers_of_one_path_leave_the_last_commit(local):
    client, dirs = local
    datas = [bytes([i]) * (PAGE + i) for i in range(8)]
    commits = {}  # the worker's order of commits (its journal's sequence) -> data

    def writer(i):
        with Client(load_config()) as c:
            f = c.open("/w/same.bin", "wb", buffer_size=0)
            with f:
                f.write(datas[i])
            seq = int(f.committed["version"].split("-")[1].removeprefix("w"))
            commits[seq] = datas[i]

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    client.wait_persisted(timeout=60)
    last = commits[max(commits)]
    assert len(commits) == 8
    assert (dirs["w"] / "same.bin").read_bytes() == last  # uploads in commit order
    assert read(client, "/w/same.bin") == last
