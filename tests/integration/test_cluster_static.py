"""A cluster without etcd: two workers and a client share a membership file; a mount and a
policy made through the client reach every worker (each keeps its own mount table and
policies)."""

from __future__ import annotations

import numpy as np
import pytest
from shoal_cluster import PAGE, static_cluster

from shoal import Client
from shoal.cli._main import main
from shoal.client._connection import Connection

pytestmark = pytest.mark.slow


def test_static_membership_cluster(bucket, tmp_path, capsys):
    with static_cluster(tmp_path, "static") as cluster:
        config, addresses, members = cluster.config, cluster.addresses, cluster.members
        files = {}
        for i in range(10):
            data = np.random.default_rng(i).integers(0, 256, (i + 2) * PAGE // 3, np.uint8)
            bucket.put(f"s{i}", data.tobytes())
            files[f"/st/s{i}"] = data.tobytes()
        client = Client(config, start_worker=False)
        try:
            client.mount("/st", f"s3://{bucket.name}", **bucket.options())
            client.set_policy("/st", replicas="all")
            for path, data in files.items():
                buf = bytearray(len(data))
                assert client.read_into(buf, path) == len(data)
                assert buf == data, path
        finally:
            client.close()
        sent = []
        for a in addresses:
            conn = Connection(None, 10.0, address=a, config=config)
            try:
                assert [m["path"] for m in conn.call({"op": "mounts"})["mounts"]] == ["/st"]
                assert conn.call({"op": "policies"})["policies"] == [
                    {"path": "/st", "policy": {"replicas": "all"}}
                ]
                report = conn.call({"op": "report"})["report"]
                assert conn.hello["worker_id"] in ("static-0", "static-1")
                sent.append(report["bytes_sent"])
            finally:
                conn.close()
        assert all(sent), sent
        assert main(["workers", "--membership-file", str(members)]) == 0
        assert "2 worker(s), 2 online" in capsys.readouterr().out
