"""A cluster without etcd: two workers and a client share a membership file; a mount and a
policy made through the client reach every worker (each keeps its own mount table and
policies)."""

from __future__ import annotations

import shutil
import socket
import tempfile
import time

import numpy as np
import pytest
import yaml
from shoal_cluster import PAGE, SMALL, Secrets, WorkerProcess

from shoal import Client
from shoal._config import Config
from shoal.cli._main import main
from shoal.client._connection import Connection

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as s:
        return s.getsockname()[1]


def wait_listening(
    address: str, worker: WorkerProcess, config: Config, timeout: float = 60.0
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            Connection(None, 5.0, address=address, config=config).close()
            return
        except ConnectionError:
            assert worker.proc.poll() is None, f"worker exited:\n{worker.log()}"
            assert time.monotonic() < deadline, f"worker at {address} did not start"
            time.sleep(0.05)


def test_static_membership_cluster(bucket, tmp_path, capsys):
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    members = tmp_path / "members.yaml"
    members.write_text(
        yaml.safe_dump(
            {
                "workers": [
                    {"id": f"static-{n}", "host_id": f"host-{n}", "address": a, "capacity": "16MiB"}
                    for n, a in enumerate(addresses)
                ]
            }
        )  # fmt: skip
    )
    secrets = Secrets()
    workers = [
        WorkerProcess(None, f"host-{n}", listen=a, membership_file=str(members), secrets=secrets)
        for n, a in enumerate(addresses)
    ]
    home = tempfile.mkdtemp(prefix="shoal-st-", dir="/tmp")
    config = Config(
        home=home, host_id="client-host", membership_file=str(members), **secrets.settings(),
        **SMALL,
    )  # fmt: skip
    try:
        for w, a in zip(workers, addresses, strict=True):
            wait_listening(a, w, config)
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
    finally:
        for w in workers:
            w.stop()
        for w in workers:
            shutil.rmtree(w.home, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)
        secrets.close()
