"""What a process that uses Shoal loads: ``import shoal`` and a client, even one that has
started a worker and read through it, load none of the worker's code, no page store,
no RocksDB and no etcd client (every DataLoader worker process imports shoal)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from shoal._testing import TemporaryHome

WORKER_SIDE = (
    "shoal.control._worker",
    "shoal.control._server",
    "shoal.control._files",
    "shoal.control._fetch",
    "shoal.control._etcd",
    "shoal.engine._pagestore",
    "rocksdict",
)

PROGRAM = """
import json, sys
import shoal
client = shoal.Client
loaded = {"import": [m for m in WORKER_SIDE if m in sys.modules]}
if len(sys.argv) > 1:
    c = shoal.Client()
    c.mount("/d", sys.argv[1])
    buf = bytearray(5)
    c.read_into(buf, "/d/f")
    assert bytes(buf) == b"hello", buf
    c.close()
    loaded["read"] = [m for m in WORKER_SIDE if m in sys.modules]
print(json.dumps(loaded))
"""


def run(*args: str) -> dict:
    code = f"WORKER_SIDE = {WORKER_SIDE!r}\n{PROGRAM}"
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=dict(os.environ),
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_import_shoal_loads_no_worker_code():
    assert run() == {"import": []}


def test_a_client_that_started_a_worker_and_read_loads_no_worker_code(tmp_path):
    (tmp_path / "f").write_bytes(b"hello")
    config = {"capacity": 64 << 20, "mem_capacity": 0, "allowed_mounts": ["file:///"]}
    with TemporaryHome(config=config):
        assert run(str(tmp_path)) == {"import": [], "read": []}
