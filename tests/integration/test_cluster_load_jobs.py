"""Distributed load jobs: three workers as separate processes (real etcd, moto S3), a
client on another host. The job record lives in etcd; a worker killed during the load
hands its share to the others, and the load is DONE."""

from __future__ import annotations

import numpy as np
import pytest
from shoal_cluster import PAGE, running_cluster

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(etcd, moto_server):
    with running_cluster(etcd.endpoint, 3) as c:
        yield c


def dataset(bucket, count: int = 36) -> tuple[dict[str, bytes], int, int]:
    """Files of 3 pages and a bit under ``ds/``: (files, pages, bytes)."""
    rng = np.random.default_rng(11)
    files = {f"f{i:03d}": rng.bytes(3 * PAGE + i + 1) for i in range(count)}
    for name, data in files.items():
        bucket.put(f"ds/{name}", data)
    pages = sum(-(-len(d) // PAGE) for d in files.values())
    return files, pages, sum(len(d) for d in files.values())


def test_a_load_stopped_by_the_caller_is_recorded_in_etcd(cluster, bucket):
    files, pages, total = dataset(bucket)
    client = cluster.client()
    try:
        client.mount("/st", f"s3://{bucket.name}/ds", **bucket.options())

        def progress(p) -> None:
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            client.load("/st", progress=progress)
        stopped = client.load_history(limit=1)[0]
        assert stopped["state"] == "STOPPED" and stopped["error"] == "KeyboardInterrupt"
        assert stopped["paths"] == {"count": 1, "first": ["/st"]}
        other = cluster.client()  # another client sees the record (it is in etcd)
        try:
            assert other.load_history(limit=1) == [stopped]
            done = other.load("/st")
            assert done.files_done == len(files) and done.bytes_done == total
        finally:
            other.close()
        assert client.load_history(limit=1)[0]["state"] == "DONE"
    finally:
        client.close()


def test_a_killed_worker_hands_its_share_to_the_others(cluster, bucket):
    files, pages, total = dataset(bucket)
    victim, *survivors = cluster.workers
    client = cluster.client()
    try:
        client.mount("/ds", f"s3://{bucket.name}/ds", **bucket.options())
        before = [cluster.report(w)["pages"] for w in survivors]
        killed = []

        def progress(p) -> None:
            if not killed:
                victim.kill()
                killed.append(p)

        done = client.load("/ds", progress=progress)
        assert killed, "the load ended before the kill"
        assert done.files_done == done.files_total == len(files)
        assert done.bytes_done == done.bytes_total == total
        # placed over the two survivors alone, every page is on one of them
        held = [cluster.report(w)["pages"] - b for w, b in zip(survivors, before, strict=True)]
        assert sum(held) == pages and all(held), held
        record = client.load_history(limit=1)[0]  # etcd keeps the other tests' loads too
        assert record["state"] == "DONE" and record["error"] is None
        assert record["files_done"] == len(files) and record["bytes_done"] == total
        assert record["pages_done"] == pages
        # what the survivors loaded before the kill is not counted as cached already
        assert record["pages_skipped"] == 0, record
        again = client.load("/ds")
        assert again.pages_skipped == pages and again.bytes_skipped == total
        assert [r["state"] for r in client.load_history(limit=2)] == ["DONE", "DONE"]
        with pytest.raises(FileNotFoundError):
            client.load("/ds/nope")
        failed = client.load_history(limit=1)[0]
        assert failed["state"] == "FAILED" and "nope" in failed["error"]
    finally:
        client.close()
