"""Cluster reads: three workers as separate processes on loopback, each on a host id of
its own, and a client on yet another host, so that every page comes over TCP from the
worker that placement gives it; a worker killed mid-epoch; restarted, it serves its cache."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
from shoal_cluster import PAGE, running_cluster, wait_until

pytestmark = pytest.mark.slow


def random_bytes(size: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


@pytest.fixture(scope="module")
def cluster(etcd, moto_server):
    with running_cluster(etcd.endpoint, 3) as c:
        yield c


def dataset(bucket, prefix: str, count: int, seed: int) -> dict[str, bytes]:
    """Files of 0 to 5 pages (some not page-aligned), put in ``bucket``."""
    files = {}
    rng = np.random.default_rng(seed)
    for i in range(count):
        size = int(rng.integers(1, 5 * PAGE))
        data = random_bytes(size, seed * 1000 + i)
        bucket.put(f"{prefix}/f{i:03d}", data)
        files[f"f{i:03d}"] = data
    return files


def read_all(client, mount: str, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        buf = bytearray(len(data))
        assert client.read_into(buf, f"{mount}/{name}") == len(data)
        assert buf == data, name


def test_dataset_read_across_three_workers(cluster, bucket):
    files = dataset(bucket, "ds", 24, seed=1)
    client = cluster.client()
    try:
        client.mount("/ds", f"s3://{bucket.name}/ds", **bucket.options())
        read_all(client, "/ds", files)
        # a batch of small reads, and a range across pages
        bufs = [bytearray(100) for _ in files]
        got = client.read_many_into([(b, f"/ds/{n}", 7) for b, n in zip(bufs, files, strict=True)])
        for b, n, (name, data) in zip(bufs, got, files.items(), strict=True):
            assert bytes(b[:n]) == data[7 : 7 + 100], name
        reports = [cluster.report(w) for w in cluster.workers]
        # every worker served pages over TCP, none was read short-circuit
        assert all(r["bytes_sent"] > 0 for r in reports), [r["bytes_sent"] for r in reports]
        assert sum(r["pages_located"] for r in reports) == 0
        assert all(r["cluster"]["registered"] for r in reports)
        # a second epoch comes from the workers' caches, not from S3
        before = sum(r["ufs_pages"] for r in reports)
        read_all(client, "/ds", files)
        after = sum(cluster.report(w)["ufs_pages"] for w in cluster.workers)
        assert after == before
    finally:
        client.close()


def test_kill_9_during_an_epoch_then_its_cache_serves_again(cluster, bucket):
    files = dataset(bucket, "kill", 30, seed=2)
    client = cluster.client()
    try:
        client.mount("/kill", f"s3://{bucket.name}/kill", **bucket.options())
        read_all(client, "/kill", files)  # every page cached by its owner
        victim = cluster.workers[1]
        # Epochs in other threads (each with its connections) while the victim dies: the
        # whole dataset in one batch, so that reads are in flight when it goes.
        stop, errors, epochs = threading.Event(), [], [0]

        def reader() -> None:
            names = list(files)
            bufs = [bytearray(len(files[n])) for n in names]
            try:
                while not stop.is_set():
                    got = client.read_many_into(
                        [(b, f"/kill/{n}") for b, n in zip(bufs, names, strict=True)]
                    )
                    for b, n, count in zip(bufs, names, got, strict=True):
                        assert count == len(files[n]) and b == files[n], n
                    epochs[0] += 1
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=reader) for _ in range(2)]
        for t in threads:
            t.start()
        try:
            wait_until(lambda: epochs[0] >= 2 or errors, 30, "epochs before the kill")
            victim.kill()
            done = epochs[0]
            wait_until(lambda: epochs[0] >= done + 4 or errors, 60, "epochs after the kill")
        finally:
            stop.set()
            for t in threads:
                t.join(60)
        assert not errors, errors[0]
        # its lease expires: the others serve its chunks (read-through) meanwhile
        wait_until(lambda: cluster.membership.member(victim.id) is None, 15, "the lease to expire")
        read_all(client, "/kill", files)
        victim.start()
        cluster.wait_members({victim.id})
        before = cluster.report(victim)
        assert before["ufs_pages"] == 0
        wait_until(lambda: client.membership().member(victim.id), 10, "the client to see it")
        read_all(client, "/kill", files)
        after = cluster.report(victim)
        assert after["page_hits"] > 0, "the restarted worker served nothing from its cache"
        assert after["ufs_pages"] == 0, "the restarted worker lost its cache"
    finally:
        client.close()


def pages_of(files: dict[str, bytes]) -> int:
    return sum(-(-len(d) // PAGE) for d in files.values())


def test_distributed_load_splits_by_placement_and_replicas_spread_reads(cluster, bucket):
    one = dataset(bucket, "one", 12, seed=3)
    every = dataset(bucket, "all", 6, seed=4)
    client = cluster.client()
    try:
        client.mount("/one", f"s3://{bucket.name}/one", **bucket.options())
        client.mount("/all", f"s3://{bucket.name}/all", **bucket.options(replicas="all"))
        before = [cluster.report(w) for w in cluster.workers]
        seen = []
        done = client.load("/one", progress=seen.append)
        assert done.files_done == done.files_total == len(one)
        assert done.bytes_done == done.bytes_total == sum(len(d) for d in one.values())
        assert seen and seen[-1] == done
        after = [cluster.report(w) for w in cluster.workers]
        fetched = [a["ufs_pages"] - b["ufs_pages"] for a, b in zip(after, before, strict=True)]
        # each page fetched once, by its owner; every worker had some
        assert sum(fetched) == pages_of(one) and all(fetched), fetched
        again = client.load("/one")  # pages present are skipped
        assert again.bytes_done == done.bytes_done
        assert sum(cluster.report(w)["ufs_pages"] for w in cluster.workers) == sum(
            a["ufs_pages"] for a in after
        )

        done = client.load("/all")
        assert done.bytes_total == 3 * sum(len(d) for d in every.values())
        loaded = [cluster.report(w) for w in cluster.workers]
        got = [a["ufs_pages"] - b["ufs_pages"] for a, b in zip(loaded, after, strict=True)]
        assert got == [pages_of(every)] * 3, got  # every worker holds every page
        read_all(client, "/all", every)
        read_all(client, "/one", one)
        final = [cluster.report(w) for w in cluster.workers]
        assert [f["ufs_pages"] for f in final] == [x["ufs_pages"] for x in loaded]
        sent = [f["bytes_sent"] - x["bytes_sent"] for f, x in zip(final, loaded, strict=True)]
        assert all(sent), sent  # the replicas of /all share the reads
        # a second copy of /one, asked for by the load (`shoal load --replicas 2`)
        before = sum(f["ufs_pages"] for f in final)
        done = client.load("/one", replicas=2)
        assert done.bytes_total == 2 * sum(len(d) for d in one.values())
        now = sum(cluster.report(w)["ufs_pages"] for w in cluster.workers)
        assert now - before == pages_of(one)
    finally:
        client.close()


def test_corrupted_pages_of_a_remote_worker_are_never_served(cluster, bucket):
    """Whole pages leave a worker straight from its region files: the client checks their
    crc32c and has a mismatch read again, checked by the worker, which drops the page
    and fetches it anew."""
    files = dataset(bucket, "rot", 8, seed=5)
    client = cluster.client()
    try:
        client.mount("/rot", f"s3://{bucket.name}/rot", **bucket.options())
        read_all(client, "/rot", files)
        damaged = 0
        for w in cluster.workers:
            regions = os.path.join(w.home, "cache", "regions")
            for name in os.listdir(regions):
                path = os.path.join(regions, name)
                size = os.path.getsize(path)
                with open(path, "r+b") as f:
                    for offset in range(0, size, PAGE):
                        f.seek(offset + 100)
                        f.write(b"\xff" * 64)
                        damaged += 1
        assert damaged
        before = sum(cluster.report(w)["ufs_pages"] for w in cluster.workers)
        read_all(client, "/rot", files)
        # the damaged pages were dropped and fetched again from S3
        assert sum(cluster.report(w)["ufs_pages"] for w in cluster.workers) > before
    finally:
        client.close()


def test_training_reads_run_while_a_distributed_load_runs(cluster, bucket):
    files = dataset(bucket, "busy", 30, seed=6)
    loader, reader = cluster.client(), cluster.client()
    try:
        loader.mount("/busy", f"s3://{bucket.name}/busy", **bucket.options())
        before = sum(cluster.report(w)["ufs_pages"] for w in cluster.workers)
        outcome: dict = {}

        def load():
            try:
                outcome["done"] = loader.load("/busy")
            except BaseException as exc:  # reported by the assertion below
                outcome["error"] = exc

        thread = threading.Thread(target=load)
        thread.start()
        # an epoch in batches while the workers fetch their shares of the same files
        names = list(files)
        for start in range(0, len(names), 8):
            batch = names[start : start + 8]
            bufs = [bytearray(len(files[n])) for n in batch]
            got = reader.read_many_into(
                [(b, f"/busy/{n}", 0) for b, n in zip(bufs, batch, strict=True)]
            )
            for b, n, name in zip(bufs, got, batch, strict=True):
                assert n == len(files[name]) and b == files[name], name
        thread.join(timeout=120)
        assert not thread.is_alive() and "error" not in outcome, outcome
        done = outcome["done"]
        assert done.files_done == done.files_total == len(files)
        # each page came from S3 once, whether the load or a read asked for it first
        after = sum(cluster.report(w)["ufs_pages"] for w in cluster.workers)
        assert after - before == pages_of(files)
        read_all(reader, "/busy", files)
    finally:
        loader.close()
        reader.close()
