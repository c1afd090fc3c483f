"""Front-end benchmarks: the FUSE mount and the PyTorch dataset against Shoal's own client,
local files and boto3, printed as one table of results and ratios.

    python perf/frontends.py [--big-mib 1024] [--small 20000] [--loader-objects 2000]
                             [--fio-seconds 3] [--rounds 3] [--only seq|fio|small|loader]

(seq) a warm 1 GiB file read sequentially with 1 MiB reads: through the FUSE mount with
the kernel's copy of the file dropped first (every byte comes from the FUSE process, which
reads Shoal's cache short-circuit), through the mount again with the kernel's page cache
kept (a second read of an unchanged file), with ``Client.read_into`` in the same 1 MiB
pieces, and from a local file in the page cache;
(fio) random 4 KiB reads, fio with 4 jobs, on the same file through the mount (the
kernel's copy dropped first) and on the local file in the page cache;
(small) 20,000 files of 16 to 64 KiB, warm in Shoal, each opened, read whole and closed
(as ``cat`` does) through the mount, first pass and second (kernel cache kept), against
the same loop over a local directory in the page cache; and the same files through
``shoal://`` (``fs.cat`` of 256 paths at a time) against ``read_many_into``; (seq) also
reads the large file through ``shoal://``'s ``fs.open``;
(loader) a PyTorch DataLoader epoch (4 workers, 32 files a batch, 5 ms of simulated
compute a batch) over small objects in S3 (moto): ``shoal.torch.ShoalMapDataset`` cold
and warm, against a plain ``Dataset`` that gets each object with boto3.

Every number comes from this one run; warm measurements are the best of ``--rounds``
rounds. The FUSE mount is served by ``shoal fuse mount`` in a process of its own, as a
user runs it, and unmounted at the end. Alluxio publishes 2.1 GB/s for one thread reading
its FUSE mount on an i3en.metal: printed as context, not compared.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from _common import GiB, KiB, MiB, Table, aligned, data_root  # noqa: E402

import shoal  # noqa: E402
from shoal._config import DEFAULT_ALLOWED_MOUNTS  # noqa: E402
from shoal._testing import S3Server, TemporaryHome, fuse_mounted, make_dataset  # noqa: E402
from shoal._testing._s3 import s3_client  # noqa: E402

BUCKET = "shoal-frontends"
ALLUXIO_FUSE_GBPS = 2.1


def step(text: str) -> None:
    print(f"-- {text}", flush=True)


def drop_kernel_copy(path: Path) -> None:
    """Drop the kernel's cached pages of ``path`` (for a FUSE file: the next read asks the
    FUSE process again)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def read_sequential(path: Path, buf: memoryview) -> int:
    total = 0
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            total += n
    return total


def read_pieces(client, path: str, buf: memoryview) -> int:
    total = 0
    while n := client.read_into(buf, path, total):
        total += n
    return total


@contextlib.contextmanager
def null_fuse(mountpoint: Path, size: int):
    """perf/_nullfuse.py mounted at ``mountpoint``: the floor of a pyfuse3 file system."""
    from shoal.fuse._mount import DEFAULT_READ_AHEAD, _device, set_read_ahead

    mountpoint.mkdir(exist_ok=True)
    here = Path(__file__).resolve().parent
    proc = subprocess.Popen([sys.executable, str(here / "_nullfuse.py"), str(mountpoint),
                             str(size)])  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while _device(str(mountpoint)) is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("perf/_nullfuse.py did not mount")
            time.sleep(0.02)
        time.sleep(0.2)
        set_read_ahead(str(mountpoint), DEFAULT_READ_AHEAD)
        yield mountpoint / "f"
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True)
        proc.wait(timeout=30)
        with contextlib.suppress(OSError):
            mountpoint.rmdir()


def best(rounds: int, fn) -> float:
    out = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        out = min(out, time.perf_counter() - start)
    return out


# ---------------------------------------------------------------------- (seq)


def bench_seq(args, client, root: Path, mnt: Path, table: Table) -> None:
    size = int(args.big_mib * MiB)
    step(f"(seq) a {size / MiB:.0f} MiB file, 1 MiB reads")
    local = root / "big" / "big.bin"
    local.parent.mkdir()
    rng = np.random.default_rng(1)
    with open(local, "wb") as f:
        for at in range(0, size, 64 * MiB):
            f.write(rng.integers(0, 256, min(64 * MiB, size - at), dtype=np.uint8).tobytes())
    whole = aligned(size)
    assert client.read_into(whole, "/local/big/big.bin") == size  # cached in Shoal
    buf = memoryview(aligned(MiB))
    fuse_file = mnt / "local" / "big" / "big.bin"
    assert read_sequential(fuse_file, buf) == size

    def fuse_daemon() -> None:
        drop_kernel_copy(fuse_file)
        read_sequential(fuse_file, buf)

    t = {
        "read_into": best(args.rounds, lambda: read_pieces(client, "/local/big/big.bin", buf)),
        "fuse": best(args.rounds, fuse_daemon),
        "fuse_kernel": best(args.rounds, lambda: read_sequential(fuse_file, buf)),
        "local": best(args.rounds, lambda: read_sequential(local, buf)),
    }
    from shoal._fsspec import ShoalFileSystem

    fs = ShoalFileSystem(client=client)

    def fsspec_read() -> None:
        with fs.open("/local/big/big.bin", "rb", block_size=MiB, cache_type="none") as f:
            while f.readinto(buf):
                pass

    t["fsspec"] = best(args.rounds, fsspec_read)
    with null_fuse(mnt.parent / (mnt.name + "-null"), size) as null_file:

        def null_read() -> None:
            drop_kernel_copy(null_file)
            read_sequential(null_file, buf)

        t["null"] = best(args.rounds, null_read)
    got = bytearray(size)
    with open(fuse_file, "rb") as f:
        f.readinto(got)
    assert got == whole.tobytes(), "the FUSE mount returned wrong bytes"
    del got
    sec = "(seq) warm sequential read, 1 MiB reads"
    for name, what in (
        ("fuse", "FUSE, from the FUSE process"),
        ("fuse_kernel", "FUSE, kernel page cache kept"),
        ("read_into", "Client.read_into, 1 MiB pieces"),
        ("local", "local file, page cache"),
        ("null", "a FUSE file system answering every read with one buffer"),
        ("fsspec", "shoal:// fs.open, 1 MiB reads"),
    ):
        table.add(sec, what, size / t[name] / GiB, "GiB/s")
    table.add(sec, "Alluxio FUSE, 1 thread, i3en.metal (published)", ALLUXIO_FUSE_GBPS, "GB/s",
              "context only")  # fmt: skip
    table.ratio(sec, "FUSE / read_into", t["read_into"], t["fuse"], target=0.5)
    table.ratio(sec, "FUSE, kernel cache kept / read_into", t["read_into"], t["fuse_kernel"],
                target=0.5)  # fmt: skip
    table.ratio(sec, "FUSE / the do-nothing FUSE file system", t["null"], t["fuse"])
    table.ratio(sec, "shoal:// fs.open / read_into", t["read_into"], t["fsspec"])
    table.ratio(sec, "FUSE / local file", t["local"], t["fuse"])
    table.ratio(sec, "FUSE, kernel cache kept / local file", t["local"], t["fuse_kernel"])


# ---------------------------------------------------------------------- (fio)


def fio_iops(path: Path, seconds: float, invalidate: bool) -> float:
    cmd = [
        "fio", "--name=rand4k", f"--filename={path}", "--rw=randread", "--bs=4k",
        "--numjobs=4", "--ioengine=psync", "--time_based", f"--runtime={seconds}",
        f"--invalidate={int(invalidate)}", "--readonly", "--group_reporting",
        "--output-format=json",
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    doc = json.loads(done.stdout[done.stdout.index("{") :])
    return float(doc["jobs"][0]["read"]["iops"])


def bench_fio(args, root: Path, mnt: Path, table: Table) -> None:
    if shutil.which("fio") is None:
        table.add("(fio) random 4 KiB reads, 4 jobs", "fio", None, "", "fio not installed")
        return
    step("(fio) random 4 KiB reads, 4 jobs")
    local = root / "big" / "big.bin"
    fuse_file = mnt / "local" / "big" / "big.bin"
    read_sequential(local, memoryview(bytearray(MiB)))  # the baseline reads the page cache
    fuse = fio_iops(fuse_file, args.fio_seconds, invalidate=True)
    plain = fio_iops(local, args.fio_seconds, invalidate=False)
    sec = "(fio) random 4 KiB reads, 4 jobs"
    table.add(sec, "FUSE, from the FUSE process", fuse, "IOPS")
    table.add(sec, "local file, page cache", plain, "IOPS")
    table.ratio(sec, "FUSE / local file", fuse, plain)


# ---------------------------------------------------------------------- (small)


def bench_small(args, client, root: Path, mnt: Path, table: Table) -> None:
    n = args.small
    step(f"(small) {n:,} files of 16-64 KiB, read whole one by one")
    rng = random.Random(3)
    rels = []
    total = 0
    for i in range(n):
        rel = f"small/d{i % 20:02d}/f{i:06d}.bin"
        size = rng.randint(16 * KiB, 64 * KiB)
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(os.urandom(size))
        rels.append(rel)
        total += size
    client.load("/local/small")  # warm in Shoal
    buf = bytearray(64 * KiB)

    def cat_all(base: Path) -> int:
        got = 0
        for rel in rels:
            fd = os.open(base / rel, os.O_RDONLY)
            try:
                while k := os.readv(fd, [buf]):
                    got += k
            finally:
                os.close(fd)
        return got

    for rel in rels:  # the local baseline reads the page cache
        (root / rel).read_bytes()
    fuse_root = mnt / "local"
    start = time.perf_counter()
    assert cat_all(fuse_root) == total
    first = time.perf_counter() - start
    again = best(args.rounds, lambda: cat_all(fuse_root))
    plain = best(args.rounds, lambda: cat_all(root))
    sec = f"(small) {n:,} files of 16-64 KiB, open + read + close"
    table.add(sec, "FUSE, first pass (from the FUSE process)", n / first, "files/s")
    table.add(sec, "FUSE, later passes (kernel cache kept)", n / again, "files/s")
    table.add(sec, "local directory, page cache", n / plain, "files/s")
    table.ratio(sec, "FUSE first pass / local", plain, first)
    table.ratio(sec, "FUSE later passes / local", plain, again)

    # The same files through shoal:// for fsspec, 256 at a time, and with the client.
    from shoal._fsspec import ShoalFileSystem

    fs = ShoalFileSystem(client=client)
    paths = ["/local/" + rel for rel in rels]
    bufs = [bytearray(64 * KiB) for _ in range(256)]

    def fs_cat() -> None:
        for at in range(0, n, 256):
            fs.cat(paths[at : at + 256])

    def batches() -> None:
        for at in range(0, n, 256):
            client.read_many_into([(bufs[i], p) for i, p in enumerate(paths[at : at + 256])])

    got = fs.cat(paths[:256])
    assert all(got[p] == (root / r).read_bytes() for p, r in zip(paths, rels[:256], strict=False))
    t_fs = best(args.rounds, fs_cat)
    t_batch = best(args.rounds, batches)
    sec = f"(fsspec) the same {n:,} files, 256 at a time"
    table.add(sec, "shoal:// fs.cat(list)", n / t_fs, "files/s")
    table.add(sec, "Client.read_many_into", n / t_batch, "files/s")
    table.ratio(sec, "shoal:// / read_many_into", t_batch, t_fs)
    table.ratio(sec, "shoal:// / local open + read + close", plain, t_fs)


# ---------------------------------------------------------------------- (loader)


class Boto3Dataset:
    """What a user writes without Shoal: one ``get_object`` per sample, a boto3 client per
    DataLoader worker."""

    def __init__(self, endpoint: str, keys: list[str]):
        self.endpoint, self.keys = endpoint, keys
        self._s3 = None
        self._pid = 0

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> bytes:
        if self._s3 is None or self._pid != os.getpid():
            self._s3 = s3_client(self.endpoint)
            self._pid = os.getpid()
        return self._s3.get_object(Bucket=BUCKET, Key=self.keys[i])["Body"].read()


def loader_epoch(dataset, batch: int, compute: float, seed: int) -> tuple[float, float, int]:
    """One epoch: wall seconds, seconds spent waiting for data, bytes."""
    import warnings

    import torch
    from torch.utils.data import DataLoader

    # 4 workers on a machine of fewer cores is the measurement asked for.
    warnings.filterwarnings("ignore", message="This DataLoader will create")
    gen = torch.Generator()
    gen.manual_seed(seed)
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=4,
                        collate_fn=list, generator=gen)  # fmt: skip
    waited, nbytes = 0.0, 0
    start = time.perf_counter()
    it = iter(loader)
    while True:
        t = time.perf_counter()
        try:
            samples = next(it)
        except StopIteration:
            break
        waited += time.perf_counter() - t
        for s in samples:
            nbytes += len(s) if isinstance(s, bytes) else s.data.numel()
        time.sleep(compute)
    return time.perf_counter() - start, waited, nbytes


def bench_loader(args, server, client, table: Table) -> None:
    from shoal.torch import ShoalMapDataset

    n = args.loader_objects
    step(f"(loader) DataLoader epochs over {n:,} objects of 16-64 KiB in S3")
    rng = random.Random(5)
    sizes = [rng.randint(16 * KiB, 64 * KiB) for _ in range(n)]
    s3 = server.client(max_pool_connections=16)
    data = make_dataset(s3, BUCKET, sizes, prefix="loader/", seed=5)
    client.mount("/s3", f"s3://{BUCKET}", **server.mount_options())
    total = sum(sizes)
    compute = args.compute_ms / 1000
    boto = Boto3Dataset(server.endpoint_url, data.keys)
    ours = ShoalMapDataset("/s3/loader")
    b_time, b_wait, b_bytes = loader_epoch(boto, 32, compute, seed=1)
    assert b_bytes == total
    cold = loader_epoch(ours, 32, compute, seed=1)
    warm = loader_epoch(ours, 32, compute, seed=2)
    assert cold[2] == warm[2] == total
    sec = f"(loader) DataLoader epoch, 4 workers, {n:,} objects, {args.compute_ms:g} ms compute"
    for what, (wall, wait, _) in (
        ("boto3 Dataset", (b_time, b_wait, 0)),
        ("ShoalMapDataset, cold", cold),
        ("ShoalMapDataset, warm", warm),
    ):
        table.add(sec, f"{what}: throughput", n / wall, "files/s")
        table.add(sec, f"{what}: data wait", wait, "s", f"of {wall:.2f} s")
    table.ratio(sec, "Shoal cold / boto3 (throughput)", b_time, cold[0])
    table.ratio(sec, "Shoal warm / boto3 (throughput)", b_time, warm[0])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--big-mib", type=float, default=1024, help="(seq) file size (1024)")
    p.add_argument("--fio-seconds", type=float, default=3, help="(fio) seconds per run (3)")
    p.add_argument("--small", type=int, default=20_000, help="(small) files (20000)")
    p.add_argument("--loader-objects", type=int, default=2000, help="(loader) objects (2000)")
    p.add_argument("--compute-ms", type=float, default=5, help="(loader) per batch (5)")
    p.add_argument("--rounds", type=int, default=3, help="rounds per warm measurement (3)")
    p.add_argument("--only", choices=("seq", "fio", "small", "loader"), action="append")
    args = p.parse_args(argv)
    if args.big_mib <= 0 or args.small < 1 or args.loader_objects < 1 or args.rounds < 1:
        p.error("sizes, counts and rounds must be > 0")
    parts = set(args.only or ("seq", "fio", "small", "loader"))
    if "fio" in parts:
        parts.add("seq")  # fio reads seq's file
    print("command:", shlex.join([sys.executable, *sys.argv]), flush=True)
    started = time.perf_counter()
    table = Table()
    root = Path(tempfile.mkdtemp(prefix="shoal-front-", dir=data_root()))
    mnt = Path(tempfile.mkdtemp(prefix="shoal-front-mnt-"))
    try:
        allowed = {"allowed_mounts": [*DEFAULT_ALLOWED_MOUNTS, root.as_uri() + "/"]}
        with (
            S3Server() as server,
            TemporaryHome("shoal-front-", server.credentials_env(), config=allowed),
            shoal.Client() as client,
        ):
            client.mount("/local", root.as_uri())
            with fuse_mounted(str(mnt), os.path.join(os.environ["SHOAL_HOME"], "fuse.log")):
                if "seq" in parts:
                    bench_seq(args, client, root, mnt, table)
                if "fio" in parts:
                    bench_fio(args, root, mnt, table)
                if "small" in parts:
                    bench_small(args, client, root, mnt, table)
            if "loader" in parts:
                bench_loader(args, server, client, table)
    finally:
        shutil.rmtree(root, ignore_errors=True)
        with contextlib.suppress(OSError):
            mnt.rmdir()
    table.print_with_total(started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
