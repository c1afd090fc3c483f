"""Cluster benchmarks: remote reads against raw TCP, an epoch over three workers against
one, and placement at 10, 100 and 1,000 workers, printed as one table.

    python perf/cluster.py [--mib 256] [--files 48] [--file-mib 4] [--rounds 3]
                           [--keys 200000]

(a) a warm read of one large file by a client on another host id than its worker, so that
every page comes over TCP (``Client.read_into`` into a pre-faulted numpy buffer), against
raw loopback TCP in the same run: a server process ``sendall``-ing the same number of
bytes from memory and the client ``recv_into``-ing them; (b) one epoch (cold, then warm)
over ``--files`` files with one worker, then with three, each worker a process of its own;
(c) rendezvous placement with ``place_many``: balance (most loaded worker over the mean)
and the share of keys that move when one worker joins or leaves, times N.

Workers register in a real etcd (Debian's ``etcd-server``) started for the run; the data
sits on a ``file://`` mount on the repository's disk. On a 2-core machine, three workers
and a client share the two cores: (b) shows the overhead of spreading an epoch, not a
speed-up. Every byte read is checked against the source (outside the timed reads).
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import yaml  # noqa: E402
from _common import REPO, MiB, Table, aligned, best_of, data_root, timed  # noqa: E402

sys.path.insert(0, str(REPO / "tests"))

from etcdserver import EtcdServer  # noqa: E402

from shoal import Client  # noqa: E402
from shoal._config import DEFAULT_ALLOWED_MOUNTS, Config  # noqa: E402
from shoal.client._connection import Connection  # noqa: E402
from shoal.control._membership import EtcdMembership, load_worker_id  # noqa: E402
from shoal.control._placement import Node, place_many  # noqa: E402

SECTION_A = "(a) remote read, one client from one worker over TCP"
SECTION_B = "(b) epoch over three workers vs one (2 cores: overhead, not speed-up)"
SECTION_C = "(c) placement (rendezvous, place_many)"

_SINK = """
import socket, sys
buf = bytearray(int(sys.argv[1]))
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(1)
print(srv.getsockname()[1], flush=True)
conn, _ = srv.accept()
conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
view = memoryview(buf)
while True:
    n = conn.recv(8)
    if not n:
        break
    conn.sendall(view[: int.from_bytes(n, "little")])
"""


def secret_files(root: str) -> dict[str, str]:
    """The cluster and admin secrets of the run (files of 64 hex digits, mode 0600, made
    once under ``root``), as settings for workers and clients."""
    files = {}
    for name in ("cluster_secret_file", "admin_secret_file"):
        path = os.path.join(root, name.replace("_file", ""))
        if not os.path.exists(path):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
        files[name] = path
    return files


class Workers:
    """``shoal worker`` processes registered in one etcd, each on a host id of its own,
    holding the run's secrets."""

    def __init__(self, etcd: str, count: int, root: str, capacity: str):
        self.etcd = etcd
        self.root = root
        self.procs: list[subprocess.Popen] = []
        self.homes: list[str] = []
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
        env["PYTHONPATH"] = str(REPO)
        ids = set()
        for n in range(count):
            home = tempfile.mkdtemp(prefix="shoal-pc-", dir="/tmp")
            self.homes.append(home)
            cache = tempfile.mkdtemp(prefix="shoal-pc-cache-", dir=root)
            # The epochs' data lies in directories under root.
            allowed = [*DEFAULT_ALLOWED_MOUNTS, Path(root).as_uri() + "/"]
            settings = {
                "mem_capacity": 0, "cache_dir": cache, "allowed_mounts": allowed,
                **secret_files(root),
            }  # fmt: skip
            with open(os.path.join(home, "config.yaml"), "w", encoding="utf-8") as f:
                yaml.safe_dump(settings, f)
            ids.add(load_worker_id(home))
            log = open(os.path.join(home, "worker.log"), "ab")  # noqa: SIM115
            command = [
                sys.executable, "-m", "shoal", "worker", "--home", home, "--etcd", etcd,
                "--listen", "127.0.0.1:0", "--capacity", capacity, "--host-id", f"bench-{n}",
            ]  # fmt: skip
            self.procs.append(subprocess.Popen(command, stdout=log, stderr=log, env=env))
            log.close()
        with EtcdMembership(etcd) as membership:
            deadline = time.monotonic() + 60
            while {m.id for m in membership.members()} != ids:
                if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                    raise RuntimeError(f"workers did not register; see {self.homes}/worker.log")
                time.sleep(0.05)
            self.addresses = [m.address for m in membership.members()]

    def ufs_reads(self) -> int:
        total = 0
        for address in self.addresses:
            conn = Connection(None, 60.0, address=address, config=client_config(self.root))
            try:
                total += conn.call({"op": "report"})["report"]["ufs_reads"]
            finally:
                conn.close()
        return total

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        for home in self.homes:
            with open(os.path.join(home, "config.yaml"), encoding="utf-8") as f:
                shutil.rmtree(yaml.safe_load(f)["cache_dir"], ignore_errors=True)
            shutil.rmtree(home, ignore_errors=True)


def client_config(root: str, **settings) -> Config:
    """A client's settings: the run's secrets, on a host of its own."""
    home = settings.pop("home", None) or tempfile.mkdtemp(prefix="shoal-pc-client-", dir="/tmp")
    return Config(home=home, host_id="bench-client", **secret_files(root), **settings)


def client_of(etcd: str, home: str, root: str) -> Client:
    return Client(client_config(root, home=home, etcd=etcd), start_worker=False)


def raw_tcp(nbytes: int, rounds: int) -> float:
    """Best seconds to ``recv_into`` ``nbytes`` that another process ``sendall``s."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _SINK, str(nbytes)], stdout=subprocess.PIPE, text=True
    )
    try:
        port = int(proc.stdout.readline())
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = aligned(nbytes)
        view = memoryview(buf).cast("B")

        def once() -> None:
            sock.sendall(nbytes.to_bytes(8, "little"))
            got = 0
            while got < nbytes:
                got += sock.recv_into(view[got:])

        best = best_of(rounds, {"raw": once})["raw"]
        sock.close()
        return best
    finally:
        proc.wait(30)
        proc.stdout.close()


def remote_read(table: Table, etcd: str, root: str, mib: int, rounds: int) -> None:
    size = mib * MiB
    data_dir = tempfile.mkdtemp(prefix="shoal-pc-data-", dir=root)
    data = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8)
    data.tofile(os.path.join(data_dir, "big"))
    workers = Workers(etcd, 1, root, f"{2 * mib + 256}MiB")
    home = tempfile.mkdtemp(prefix="shoal-pc-client-", dir="/tmp")
    client = client_of(etcd, home, root)
    try:
        client.mount("/d", data_dir)
        client.load("/d/big")
        buf = aligned(size)
        reads = workers.ufs_reads()
        shoal_s = best_of(rounds, {"shoal": lambda: client.read_into(buf, "/d/big")})["shoal"]
        assert workers.ufs_reads() == reads, "the warm read went to the under-store"
        assert np.array_equal(buf, data), "wrong bytes"
        raw_s = raw_tcp(size, rounds)
    finally:
        client.close()
        workers.close()
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(data_dir, ignore_errors=True)
    table.add(SECTION_A, f"Shoal remote read_into, {mib} MiB warm", size / shoal_s / 1e9, "GB/s")
    table.add(SECTION_A, "raw TCP loopback sendall / recv_into", size / raw_s / 1e9, "GB/s")
    table.ratio(SECTION_A, "Shoal / raw TCP", raw_s, shoal_s, target=0.6)


def epochs(table: Table, etcd: str, root: str, files: int, file_mib: int) -> None:
    data_dir = tempfile.mkdtemp(prefix="shoal-pc-epoch-", dir=root)
    blobs = {}
    for i in range(files):
        blob = np.random.default_rng(i + 1).integers(0, 256, file_mib * MiB, dtype=np.uint8)
        blob.tofile(os.path.join(data_dir, f"f{i:04d}"))
        blobs[f"/e/f{i:04d}"] = blob
    total = files * file_mib * MiB
    results = {}
    try:
        for count in (1, 3):
            workers = Workers(etcd, count, root, f"{files * file_mib + 512}MiB")
            home = tempfile.mkdtemp(prefix="shoal-pc-client-", dir="/tmp")
            client = client_of(etcd, home, root)
            try:
                if count == 1:
                    client.mount("/e", data_dir)
                buf = aligned(file_mib * MiB)

                def epoch(client=client, buf=buf) -> None:
                    for path in blobs:
                        client.read_into(buf, path)

                results[count, "cold"] = timed(epoch)
                results[count, "warm"] = timed(epoch)
                for path, blob in blobs.items():  # checked outside the timed epochs
                    client.read_into(buf, path)
                    assert np.array_equal(buf, blob), path
            finally:
                client.close()
                workers.close()
                shutil.rmtree(home, ignore_errors=True)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    for kind in ("cold", "warm"):
        for count in (1, 3):
            table.add(
                SECTION_B,
                f"{kind} epoch, {files} x {file_mib} MiB, {count} worker(s)",
                total / results[count, kind] / 1e9,
                "GB/s",
            )
        table.ratio(SECTION_B, f"{kind}: three workers / one", results[1, kind], results[3, kind])


def placement(table: Table, keys: int) -> None:
    rng = np.random.default_rng(7)
    for n in (10, 100, 1000):
        count = keys if n < 1000 else keys // 2  # 1,000 workers: a score per key and worker
        ks = rng.integers(0, 1 << 63, count, dtype=np.uint64)
        nodes = [Node(f"worker-{i}") for i in range(n)]
        start = time.perf_counter()
        owner = place_many(ks, nodes)[:, 0]
        seconds = time.perf_counter() - start
        load = np.bincount(owner, minlength=n)
        joined = place_many(ks, [*nodes, Node(f"worker-{n}")])[:, 0]
        moved_join = np.count_nonzero(joined != owner) / count
        left = place_many(ks, nodes[:-1])[:, 0]
        moved_leave = np.count_nonzero(left != owner) / count  # the last worker left
        # a key that was not on the worker that left keeps its owner
        assert np.all(left[owner != n - 1] == owner[owner != n - 1])
        label = f"{n:>5} workers, {count:,} keys"
        table.add(SECTION_C, f"{label}: max / mean load", load.max() / load.mean(), "x")
        table.add(SECTION_C, f"{label}: moved on join x N", moved_join * (n + 1), "x", "ideal 1")
        table.add(SECTION_C, f"{label}: moved on leave x N", moved_leave * n, "x", "ideal 1")
        table.add(SECTION_C, f"{label}: place_many", count / seconds / 1e6, "M keys/s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mib", type=int, default=256, help="size of the remote read (MiB)")
    p.add_argument("--files", type=int, default=48, help="files of the epoch")
    p.add_argument("--file-mib", type=int, default=4, help="size of each file (MiB)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of the warm reads")
    p.add_argument("--keys", type=int, default=200_000, help="placement keys")
    args = p.parse_args(argv)
    table = Table()
    root = str(data_root())
    etcd = EtcdServer()
    etcd.start()
    try:
        remote_read(table, etcd.endpoint, root, args.mib, args.rounds)
        epochs(table, etcd.endpoint, root, args.files, args.file_mib)
    finally:
        etcd.close()
    placement(table, args.keys)
    print(table.render())
    print(f"\ncommand: python perf/cluster.py {' '.join(argv or sys.argv[1:])}".rstrip())
    if table.missed:
        print(f"targets missed: {', '.join(table.missed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
