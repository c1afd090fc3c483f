"""Cluster administration and trouble: `shoal workers`, `shoal worker drain`, etcd stopped
while a client reads, a membership file instead of etcd, and bad input (an unknown worker
id, an unreachable etcd, a malformed membership file), each a clear error."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml
from shoal_cluster import PAGE, REPO, SMALL, running_cluster, wait_until

from shoal import Client
from shoal._config import Config
from shoal.cli._main import main
from shoal.cli._report import render_report

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(etcd, moto_server):
    with running_cluster(etcd.endpoint, 2) as c:
        yield c


@pytest.fixture(scope="module")
def files(cluster, moto_server):
    from conftest import new_bucket

    bucket = new_bucket(moto_server)
    data = {}
    for i in range(12):
        blob = np.random.default_rng(i).integers(0, 256, (i + 1) * PAGE // 2, np.uint8)
        bucket.put(f"f{i}", blob.tobytes())
        data[f"/adm/f{i}"] = blob.tobytes()
    client = cluster.client()
    try:
        client.mount("/adm", f"s3://{bucket.name}", **bucket.options())
    finally:
        client.close()
    return data


def read_all(client: Client, files: dict[str, bytes]) -> None:
    for path, data in files.items():
        buf = bytearray(len(data))
        assert client.read_into(buf, path) == len(data)
        assert buf == data, path


def test_workers_listing_and_drain(cluster, capsys):
    first, second = cluster.workers
    assert main(["workers", "--etcd", cluster.etcd]) == 0
    out = capsys.readouterr().out
    assert first.id in out and second.id in out and "2 worker(s), 2 online" in out
    assert "16.0 MiB" in out and "ONLINE" in out

    assert main(["worker", "drain", first.id, "--etcd", cluster.etcd]) == 0
    assert "DRAINING" in capsys.readouterr().out
    try:
        wait_until(
            lambda: cluster.membership.member(first.id).state.value == "DRAINING", 10, "drain"
        )
        assert main(["workers", "--etcd", cluster.etcd, "--json"]) == 0
        states = {w["id"]: w["state"] for w in yaml.safe_load(capsys.readouterr().out)}
        assert states == {first.id: "DRAINING", second.id: "ONLINE"}
    finally:
        assert main(["worker", "undrain", first.id, "--etcd", cluster.etcd]) == 0
    capsys.readouterr()

    assert main(["worker", "drain", "w-nosuchworker", "--etcd", cluster.etcd]) == 1
    err = capsys.readouterr().err
    assert "w-nosuchworker" in err and "no worker" in err
    assert main(["worker", "drain", "bad id!", "--etcd", cluster.etcd]) == 1
    assert "worker id must be" in capsys.readouterr().err


def test_reads_go_on_while_etcd_is_down(cluster, etcd, files):
    client = cluster.client()
    try:
        read_all(client, files)
        etcd.stop()
        try:
            # longer than the lease TTL: the workers keep serving, the client keeps its view
            deadline = time.monotonic() + 4.5
            while time.monotonic() < deadline:
                read_all(client, files)
            report = cluster.report(cluster.workers[0])
            assert report["cluster"]["registered"] is False
            assert "etcd" in report["cluster"]["last_error"]
            assert client.membership().healthy is False
            text = render_report(client.report())  # what `shoal report` shows
            assert "NOT registered" in text and "last view kept" in text, text
        finally:
            etcd.start()
        for w in cluster.workers:
            wait_until(lambda w=w: cluster.report(w)["cluster"]["registered"], 20, "re-register")
        wait_until(lambda: client.membership().healthy, 20, "the client's membership")
        wait_until(lambda: len(client.membership().members()) == 2, 20, "both workers")
        read_all(client, files)
    finally:
        client.close()


def test_membership_file_instead_of_etcd(cluster, files, tmp_path):
    members = [m.to_dict() for m in cluster.membership.members()]
    doc = {
        "workers": [
            {k: m[k] for k in ("id", "host_id", "address", "capacity", "socket_path")}
            for m in members
        ]
    }
    path = tmp_path / "members.yaml"
    path.write_text(yaml.safe_dump(doc))
    config = Config(
        home=str(tmp_path / "h"), host_id="client-host", membership_file=str(path),
        **cluster.secrets.settings(), **SMALL,
    )  # fmt: skip
    client = Client(config, start_worker=False)
    try:
        read_all(client, files)
        assert {m.id for m in client.membership().members()} == {w.id for w in cluster.workers}
    finally:
        client.close()
    assert main(["workers", "--membership-file", str(path)]) == 0


def test_unreachable_etcd_is_a_clear_error(tmp_path, capsys):
    dead = "http://127.0.0.1:1"
    client = Client(Config(home=str(tmp_path), host_id="c", etcd=dead, **SMALL))
    try:
        with pytest.raises(ConnectionError, match="127.0.0.1:1"):
            client.stat("/x")
    finally:
        client.close()
    assert main(["workers", "--etcd", dead]) == 1
    assert "127.0.0.1:1" in capsys.readouterr().err
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
    env["PYTHONPATH"] = REPO
    with open(tmp_path / "config.yaml", "w") as f:
        yaml.safe_dump(SMALL, f)
    out = subprocess.run(
        [sys.executable, "-m", "shoal", "worker", "--home", str(tmp_path), "--etcd", dead,
         "--listen", "127.0.0.1:0", "--host-id", "h"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 1
    assert "127.0.0.1:1" in out.stderr


def test_malformed_membership_file_is_a_clear_error(tmp_path, capsys):
    path = tmp_path / "members.yaml"
    path.write_text("workers:\n  - id: w1\n    host_id: h\n    capacity: 1GiB\n")
    client = Client(Config(home=str(tmp_path), host_id="c", membership_file=str(path), **SMALL))
    try:
        with pytest.raises(ValueError, match=r"members.yaml.*address"):
            client.stat("/x")
    finally:
        client.close()
    assert main(["workers", "--membership-file", str(path)]) == 1
    assert "missing field(s) address" in capsys.readouterr().err
    with pytest.raises(ValueError, match="exclusive"):
        Config(home=str(tmp_path), etcd="http://127.0.0.1:2379", membership_file=str(path))


def test_stop_is_refused_over_tcp_and_free_reaches_every_worker(cluster, files):
    conn = cluster.connect(cluster.workers[0])  # the cluster secret, not the admin secret
    try:
        assert conn.hello["admin"] is False
        with pytest.raises(PermissionError, match="refused over TCP"):
            conn.call({"op": "stop"})
        with pytest.raises(PermissionError, match="free is refused over TCP"):
            conn.call({"op": "free", "path": "/adm"})
        assert conn.call({"op": "mounts"})["mounts"]  # the connection still serves
    finally:
        conn.close()
    client = cluster.client()
    try:
        read_all(client, files)
        cached = sum(cluster.report(w)["pages"] for w in cluster.workers)
        assert cached >= len(files)
        freed = client.free("/adm")
        assert freed["pages"] == cached
        assert sum(cluster.report(w)["pages"] for w in cluster.workers) == 0
        read_all(client, files)
    finally:
        client.close()


def test_every_worker_gone_reads_from_the_under_store(cluster, files):
    """Runs last in this module: it stops the workers."""
    warm = cluster.client()
    try:
        read_all(warm, files)  # metadata cached in this client
        for w in cluster.workers:
            w.stop()
        wait_until(lambda: not cluster.membership.members(), 10, "the workers to leave")
        read_all(warm, files)
        cold = cluster.client()  # knows nothing: the mount table comes from etcd
        try:
            read_all(cold, files)
            assert cold.stat("/adm/f3").size == len(files["/adm/f3"])
            with pytest.raises(FileNotFoundError):
                cold.stat("/adm/nothing-here")
        finally:
            cold.close()
    finally:
        warm.close()
