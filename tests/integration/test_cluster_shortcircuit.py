"""Warm reads in a cluster need no round trip either: a client on the host of one of three
workers reads that worker's pages through the locations it remembers, as on one node,
and only the other workers' pages over TCP."""

from __future__ import annotations

import pytest
from shoal_cluster import running_cluster
from test_cluster_read import dataset, read_all

from shoal.client import _shortcircuit

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(etcd, moto_server):
    with running_cluster(etcd.endpoint, 3) as c:
        yield c


def served(cluster) -> list[int]:
    """Requests each worker served so far (asking costs each the same few requests)."""
    return [cluster.report(w)["requests"] for w in cluster.workers]


def test_warm_reads_of_this_hosts_pages_make_no_request(cluster, bucket, monkeypatch):
    monkeypatch.setattr(_shortcircuit, "_TOUCH_DELAY", 3600.0)  # no report of reads meanwhile
    files = dataset(bucket, "near", 24, seed=11)
    local = cluster.workers[0]
    client = cluster.client(host_id=local.host_id)
    try:
        client.mount("/near", f"s3://{bucket.name}/near", **bucket.options())
        read_all(client, "/near", files)  # cold: the local worker's pages located and kept
        read_all(client, "/near", files)
        base = served(cluster)
        asking = [b - a for a, b in zip(base, served(cluster), strict=True)]
        before = served(cluster)
        read_all(client, "/near", files)  # warm
        after = served(cluster)
        spent = [b - a - s for a, b, s in zip(before, after, asking, strict=True)]
        assert spent[0] == 0, spent  # not one request to the worker on this host
        assert spent[1] > 0 and spent[2] > 0, spent  # the others' pages came over TCP
        located = cluster.report(local)
        assert located["pages_located"] > 0 and located["pages_sent"] == 0
    finally:
        client.close()
