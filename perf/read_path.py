"""Read-path benchmarks: Shoal against local files, direct boto3 and fsspec's caches over
the same S3 data, printed as one table of results and ratios.

    python perf/read_path.py [--big-mib 1024] [--small 20000] [--mixed-objects 500]
                             [--mixed-mib 256] [--rounds 3] [--no-fsspec]
                             [--objects 360] [--s3-delay-ms 20] [--only a|b|c|mlperf]

(a) a warm read of one large object with ``Client.read_into`` into a pre-faulted numpy
buffer, against ``readinto`` of the same bytes from a local file in the page cache;
(b) many small objects (16 to 64 KiB) warm with ``Client.read_many_into``, against the
best Python loop over local files (``os.open(dir_fd=)`` + ``os.preadv`` + ``os.close``);
(c) a cold epoch over mixed sizes (16 KiB to 8 MiB) through Shoal, against ``get_object``
with the same concurrency; (d) fsspec's ``filecache`` and ``blockcache`` over s3fs, epochs
1 and 2 of the same data, against Shoal's warm epoch; (e) an MLPerf-style training epoch
from S3, cold: 360 objects of 48 KiB to 3 MiB read in batches of 12 with
``read_many_into``, one batch read ahead, 15 ms of compute per batch, against the same loop
with ``get_object`` from 4 threads, each side's S3 requests counted by kind by a proxy
(perf/_s3delay.py) that both sides go through, once as it is and once with a delay before
each answer (``--s3-delay-ms``, default 20) standing for a real object store's latency.

The S3 server is moto, in a child process on 127.0.0.1; Shoal runs on the single-node
default in a temporary home. (a) and (b) measure warm reads, which do not touch the
under-store, so by default their objects sit on a ``file://`` mount (``--big-source s3``,
``--small-source s3`` put them in S3: moto needs minutes for 20,000 uploads and fetches,
and its ranged GETs of a large object take time proportional to the whole object).

Every number comes from this one run: warm measurements are the best of ``--rounds``
alternating rounds (checked to have read nothing from an under-store), epochs are single
passes. Every byte Shoal returns, and every byte of every epoch, is checked against its
crc32c (outside the timed reads).
"""

from __future__ import annotations

import argparse
import itertools
import os
import shlex
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

# numpy's BLAS threads spin after use and would steal a core from the measurement.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from _common import MiB, Table, aligned, best_of, data_root, describe_worker, timed  # noqa: E402
from _s3delay import KINDS, ProxyProcess, difference  # noqa: E402

import shoal  # noqa: E402
from shoal import engine  # noqa: E402
from shoal._config import DEFAULT_ALLOWED_MOUNTS  # noqa: E402
from shoal._testing import (  # noqa: E402
    S3Server,
    TemporaryHome,
    dataset_sizes,
    make_dataset,
    object_bytes,
)
from shoal._testing._s3 import FAKE_ACCESS_KEY, FAKE_SECRET_KEY, s3_client  # noqa: E402
from shoal.demo import (  # noqa: E402
    _layout,
    batch_bytes,
    boto3_fetcher,
    epoch_order,
    read_fully,
    run_epoch,
    shoal_fetcher,
    verify,
)

BUCKET = "shoal-bench"
MOUNT = "/bench"
KiB = 1 << 10


def step(text: str) -> None:
    """Progress on stderr; the results come as one table at the end."""
    print(f"  ... {text}", file=sys.stderr, flush=True)


def cache_only(before: dict, after: dict) -> None:
    """Check that nothing was read from an under-store between two reports."""
    fetched = after["ufs_bytes"] - before["ufs_bytes"]
    assert fetched == 0, f"a warm measurement fetched {fetched} bytes from the under-store"


def mb_s(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e6


# --------------------------------------------------------------------- (a) one large object


def bench_big(args, ctx, table: Table) -> None:
    size = int(args.big_mib * MiB)
    section = f"(a) warm read of one {size / MiB:,.0f} MiB object into a pre-faulted buffer"
    folder = ctx.root / "big"
    folder.mkdir()
    local = folder / "big.bin"
    data = aligned(size)
    data[:] = np.frombuffer(np.random.default_rng(1).bytes(size), dtype=np.uint8)
    crc = engine.crc32c(data)
    with open(local, "wb") as f:
        f.write(data.data)
    del data
    if args.big_source == "s3":
        from boto3.s3.transfer import TransferConfig

        transfer = TransferConfig(
            multipart_chunksize=64 * MiB, max_concurrency=args.threads, use_threads=True
        )
        step(f"(a) uploading a {size / MiB:,.0f} MiB object")
        up = timed(lambda: ctx.s3.upload_file(str(local), BUCKET, "big.bin", Config=transfer))
        table.add(section, "upload to S3 (boto3 upload_file)", mb_s(size, up), "MB/s", "setup")
        mount = MOUNT
    else:
        # The warm path does not depend on the under-store, and moto answers each ranged
        # GET in time proportional to the whole object: a directory mount instead.
        mount = "/bench-big"
        ctx.client.mount(mount, folder.as_uri())
    path = f"{mount}/big.bin"
    step("(a) loading it into Shoal")
    load = timed(lambda: ctx.client.load(path))
    source = "S3" if args.big_source == "s3" else "a file:// mount"
    table.add(section, f"cold: shoal load from {source}", mb_s(size, load), "MB/s")
    step("(a) warm reads")

    buf = aligned(size)
    view = memoryview(buf)

    def shoal_read() -> None:
        n = ctx.client.read_into(buf, path)
        assert n == size, (n, size)

    def local_read() -> None:
        got = 0
        with open(local, "rb", buffering=0) as f:
            while got < size:
                n = f.readinto(view[got:])
                if not n:
                    break
                got += n
        assert got == size

    local_read()  # the page cache holds it now
    shoal_read()
    assert engine.crc32c(buf) == crc, "Shoal returned wrong bytes"
    before = ctx.client.report()
    times = best_of(args.rounds, {"shoal": shoal_read, "local": local_read})
    cache_only(before, ctx.client.report())
    table.add(section, "warm: shoal Client.read_into", mb_s(size, times["shoal"]), "MB/s")
    table.add(section, "warm: local file readinto (page cache)", mb_s(size, times["local"]), "MB/s")
    table.ratio(section, "shoal / local file", 1 / times["shoal"], 1 / times["local"], 0.8)
    ctx.client.free(path)  # the cache is shared with the other parts
    if args.big_source != "s3":
        ctx.client.unmount(mount)
    shutil.rmtree(folder)


# --------------------------------------------------------------------- (c), (d) epochs


def _fsspec_fetcher(fs, keys):
    def get(item) -> int:
        i, view = item
        with fs.open(f"{BUCKET}/{keys[i]}", "rb") as f:
            return read_fully(f, view)

    def fetch(items):
        # One at a time: the cached filesystems' metadata is not safe to share between
        # threads (a concurrent download can make another thread's open fail).
        return [get(item) for item in items]

    return fetch


def bench_epochs(args, ctx, table: Table) -> None:
    sizes = dataset_sizes(args.mixed_objects, int(args.mixed_mib * MiB), seed=2)
    step(f"(c) uploading {len(sizes):,} objects of mixed sizes")
    up = timed(
        lambda: ctx.datasets.setdefault(
            "mixed",
            make_dataset(ctx.s3, BUCKET, sizes, prefix="mixed/", seed=2, threads=args.threads),
        )
    )
    data = ctx.datasets["mixed"]
    total = data.total
    section = (
        f"(c), (d) epochs over {len(data):,} objects, {total / MiB:,.0f} MiB, 16 KiB to 8 MiB "
        f"(median {int(np.median(sizes)) // KiB} KiB), batches of {args.epoch_batch}, "
        f"{args.threads} concurrent requests"
    )
    table.add(section, "upload to S3 (boto3 put_object)", mb_s(total, up), "MB/s", "setup")
    batches = epoch_order(len(data), 2, 1, args.epoch_batch)
    arenas = [aligned(max(batch_bytes(b, sizes) for b in batches))]

    def epoch(fetch) -> float:
        # Seconds spent reading; each batch is then checked against the crc32c (untimed).
        _, _, read = run_epoch(fetch, batches, arenas, sizes, data.crcs, data.keys, 0.0)
        return mb_s(total, read)

    paths = [f"{MOUNT}/{k}" for k in data.keys]
    shoal_fetch = shoal_fetcher(ctx.client, paths)
    with ThreadPoolExecutor(args.threads) as pool:
        boto3_fetch = boto3_fetcher(ctx.s3, BUCKET, data.keys, pool)
        boto = cold = 0.0
        for r in range(args.cold_rounds):
            step(f"(c) cold epochs, round {r + 1} of {args.cold_rounds}: boto3, then shoal")
            boto = max(boto, epoch(boto3_fetch))
            ctx.client.free(f"{MOUNT}/{data.prefix.rstrip('/')}")  # cold again
            cold = max(cold, epoch(shoal_fetch))
    rounds = f"best of {args.cold_rounds}"
    table.add(section, f"cold: boto3 get_object ({rounds})", boto, "MB/s")
    table.add(section, f"cold: shoal read_many_into, epoch 1 ({rounds})", cold, "MB/s")
    table.ratio(section, "(c) cold shoal / boto3", cold, boto, 0.9)

    warm_contenders = {"shoal": lambda: epoch(shoal_fetch)}
    if args.no_fsspec:
        table.add(section, "fsspec: skipped (--no-fsspec)", None, "")
    else:
        try:
            import fsspec
            import s3fs  # noqa: F401 (fsspec's s3 protocol)
        except ImportError:
            fsspec = None
            table.add(section, "fsspec: skipped, s3fs is not installed", None, "")
        for kind in ("filecache", "blockcache") if fsspec is not None else ():
            step(f"(d) fsspec {kind}, epoch 1")
            fs = fsspec.filesystem(
                kind,
                target_protocol="s3",
                target_options={
                    "key": FAKE_ACCESS_KEY,
                    "secret": FAKE_SECRET_KEY,
                    "client_kwargs": {
                        "endpoint_url": ctx.server.endpoint_url,
                        "region_name": "us-east-1",
                    },
                },
                cache_storage=str(ctx.root / kind),
                skip_instance_cache=True,
            )
            fetch = _fsspec_fetcher(fs, data.keys)
            table.add(section, f"cold: fsspec {kind}, epoch 1 (one thread)", epoch(fetch), "MB/s")
            warm_contenders[kind] = lambda fetch=fetch: epoch(fetch)

    step("(c), (d) warm epochs")
    best = dict.fromkeys(warm_contenders, 0.0)
    before = ctx.client.report()
    for _ in range(args.rounds):
        for name, run in warm_contenders.items():
            best[name] = max(best[name], run())
    cache_only(before, ctx.client.report())
    rounds = f"best of {args.rounds}"
    table.add(section, f"warm: shoal read_many_into, epoch 2+ ({rounds})", best["shoal"], "MB/s")
    for kind in ("filecache", "blockcache"):
        if kind in best:
            table.add(section, f"warm: fsspec {kind}, epoch 2+ ({rounds})", best[kind], "MB/s")
    if "filecache" in best:
        table.ratio(
            section,
            "(d) warm shoal / warm fsspec filecache",
            best["shoal"],
            best["filecache"],
            1.0,
        )
        table.ratio(
            section, "warm shoal / warm fsspec blockcache", best["shoal"], best["blockcache"]
        )


# --------------------------------------------------------------------- (b) small objects


def bench_small(args, ctx, table: Table) -> None:
    rng = np.random.default_rng(3)
    low, high = args.small_min_kib * KiB, args.small_max_kib * KiB
    sizes = [int(s) for s in rng.integers(low, high + 1, args.small)]
    crcs = [0] * len(sizes)
    total = sum(sizes)
    section = (
        f"(b) {len(sizes):,} small objects, {args.small_min_kib}-{args.small_max_kib} KiB "
        f"({total / MiB:,.0f} MiB), warm, batches of {args.small_batch}"
    )
    folder = ctx.root / "small"
    folder.mkdir()
    names = [f"part-{i:06d}.bin" for i in range(len(sizes))]
    step(f"(b) writing {len(sizes):,} small files")
    dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i, name in enumerate(names):
            blob = object_bytes(3, i, sizes[i])
            crcs[i] = engine.crc32c(blob)
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=dfd)
            os.write(fd, blob)
            os.close(fd)
        if args.small_source == "s3":
            step(f"(b) uploading {len(sizes):,} small objects")
            up = timed(
                lambda: make_dataset(
                    ctx.s3, BUCKET, sizes, prefix="small/", seed=3, threads=args.threads
                )
            )
            table.add(section, "upload to S3 (boto3 put_object)", len(sizes) / up, "files/s")
            mount = f"{MOUNT}/small"
        else:
            # The warm path does not depend on the under-store: a directory mount saves
            # the 40,000 requests to moto that uploading and fetching would cost.
            mount = "/bench-small"
            ctx.client.mount(mount, folder.as_uri())
        keys = [f"{mount}/{name}" for name in names]

        step("(b) loading them into Shoal")
        load = timed(lambda: ctx.client.load(mount))
        table.add(
            section,
            f"cold: shoal load from {'S3' if args.small_source == 's3' else 'a file:// mount'}",
            len(sizes) / load,
            "files/s",
        )

        batch = args.small_batch
        order = [list(range(i, min(i + batch, len(sizes)))) for i in range(0, len(sizes), batch)]
        arena = aligned(max(batch_bytes(b, sizes) for b in order))
        layouts = [_layout(arena, b, sizes) for b in order]
        shoal_items = [
            [(v, keys[i], 0) for i, v in zip(b, views, strict=True)]
            for b, views in zip(order, layouts, strict=True)
        ]
        local_items = [
            [(names[i].encode(), [v]) for i, v in zip(b, views, strict=True)]
            for b, views in zip(order, layouts, strict=True)
        ]

        def shoal_read() -> None:
            for items in shoal_items:
                ctx.client.read_many_into(items)

        def local_read() -> None:
            for items in local_items:
                for name, bufs in items:
                    fd = os.open(name, os.O_RDONLY, dir_fd=dfd)
                    os.preadv(fd, bufs, 0)
                    os.close(fd)

        step("(b) warm reads")
        for b, views, items in zip(order, layouts, shoal_items, strict=True):
            got = ctx.client.read_many_into(items)
            verify(b, views, got, sizes, crcs, keys)
        local_read()
        before = ctx.client.report()
        times = best_of(args.rounds, {"shoal": shoal_read, "local": local_read})
        cache_only(before, ctx.client.report())
    finally:
        os.close(dfd)
    n = len(sizes)
    table.add(section, "warm: shoal read_many_into", n / times["shoal"], "files/s")
    table.add(section, "warm: python loop, os.open + os.preadv", n / times["local"], "files/s")
    table.ratio(section, "shoal / python loop", 1 / times["shoal"], 1 / times["local"], 0.8)
    if args.small_source != "s3":
        ctx.client.unmount(mount)
    shutil.rmtree(folder)


# --------------------------------------------------------------------- (e) MLPerf-style epoch


def log_uniform_sizes(count: int, low: int, high: int, seed: int) -> list[int]:
    """``count`` sizes spread log-uniformly over ``[low, high]``, the same for a seed."""
    u = np.random.default_rng(seed).random(count)
    return [int(s) for s in np.floor(low * (high / low) ** u).clip(low, high)]


def _requests(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {counts[k]}" for k in KINDS)


@dataclass(frozen=True)
class _Epoch:
    """One epoch of one side: wall and data-wait seconds, the S3 requests it sent by kind."""

    nbytes: int
    seconds: float
    wait: float
    counts: dict[str, int]
    note: str = ""

    @property
    def mb_s(self) -> float:
        return mb_s(self.nbytes, self.seconds)

    def describe(self) -> str:
        note = f", {self.note}" if self.note else ""
        return (
            f"{self.seconds:.2f} s, {self.mb_s:.0f} MB/s, data wait "
            f"{100 * self.wait / self.seconds:.1f}%{note}; S3 requests {_requests(self.counts)}"
        )


def bench_mlperf(args, ctx, table: Table) -> None:
    seed = 5
    sizes = log_uniform_sizes(args.mlperf_objects, 48 * KiB, 3 * MiB, seed)
    step(f"(e) uploading {len(sizes):,} objects of 48 KiB to 3 MiB")
    # Straight to the server, not through the proxy: only the epochs are counted.
    data = make_dataset(ctx.s3, BUCKET, sizes, prefix="mlperf/", seed=seed, threads=args.threads)
    total = data.total
    # The loader knows every size from the dataset's index, as from a manifest: the loop
    # itself calls no stat or ls.
    batches = epoch_order(len(data), seed, 1, args.mlperf_batch)
    # Two buffers, touched once here (first touch of fresh memory is slow in a VM) and
    # shared by both sides: one is read into while the other's batch computes.
    arenas = [aligned(max(batch_bytes(b, sizes) for b in batches)) for _ in range(2)]
    compute = args.compute_ms / 1000
    threads = args.mlperf_threads

    def epoch(fetch) -> tuple[float, float]:
        seconds, wait, _ = run_epoch(fetch, batches, arenas, sizes, data.crcs, data.keys, compute)
        return seconds, wait

    with ProxyProcess(ctx.server.endpoint_url) as proxy:

        def boto3_epoch() -> _Epoch:
            s3 = s3_client(proxy.endpoint_url, max_pool_connections=max(threads, 10))
            with ThreadPoolExecutor(threads, "bench-boto3") as pool:
                fetch = boto3_fetcher(s3, BUCKET, data.keys, pool)
                before = proxy.settled_counts()
                seconds, wait = epoch(fetch)
                counts = difference(proxy.settled_counts(), before)
            s3.close()
            return _Epoch(total, seconds, wait, counts)

        def shoal_epoch(k: int) -> _Epoch:
            # A mount point never used before: neither the client nor the worker holds
            # metadata under it. Pages are keyed by object, not by Shoal path, so free
            # drops those of an earlier epoch, and refresh the listing free made.
            path = f"/bench-mlperf-{k}"
            options = dict(ctx.server.mount_options(), endpoint_url=proxy.endpoint_url)
            ctx.client.mount(path, f"s3://{BUCKET}/{data.prefix}", **options)
            try:
                ctx.client.free(path)
                ctx.client.refresh(path)
                paths = [f"{path}/{key[len(data.prefix) :]}" for key in data.keys]
                fetch = shoal_fetcher(ctx.client, paths)
                report = ctx.client.report()
                before = proxy.settled_counts()
                seconds, wait = epoch(fetch)
                counts = difference(proxy.settled_counts(), before)
                after = ctx.client.report()
            finally:
                ctx.client.free(path)
                ctx.client.unmount(path)
            hits = after["page_hits"] - report["page_hits"]
            fetched = after["ufs_bytes"] - report["ufs_bytes"]
            assert hits == 0, f"a cold epoch found {hits} pages in the cache"
            assert fetched >= total, f"a cold epoch fetched {fetched} of {total} bytes"
            # The worker's own count of what it asked of S3, beside the proxy's.
            sent, before_sent = after["ufs_requests"], report["ufs_requests"]
            own = ", ".join(
                f"{kind} {sent.get(kind, 0) - before_sent.get(kind, 0)}"
                for kind in ("GET", "HEAD", "LIST")
            )
            note = f"hit ratio 0.0%, {fetched / total:.2f}x the dataset fetched; worker: {own}"
            return _Epoch(total, seconds, wait, counts, note)

        mounts = itertools.count(1)
        delays = [0.0] + ([args.s3_delay_ms / 1000] if args.s3_delay_ms > 0 else [])
        for delay in delays:
            proxy.set_delay(delay)
            latency = f"{delay * 1000:g} ms added per request" if delay else "no added latency"
            runs: dict[str, list[_Epoch]] = {"boto3": [], "shoal": []}
            for r in range(args.mlperf_rounds):
                step(f"(e) cold epochs, {latency}, round {r + 1}: boto3, then shoal")
                for name in ("boto3", "shoal"):
                    run = boto3_epoch() if name == "boto3" else shoal_epoch(next(mounts))
                    runs[name].append(run)
                    step(f"(e)   {name}: {run.describe()}")
            _mlperf_rows(args, table, data, sizes, latency, delay, runs)


def _mlperf_rows(args, table: Table, data, sizes, latency: str, delay: float, runs) -> None:
    section = (
        f"(e) MLPerf-style cold epoch, {latency}: {len(data):,} objects from S3, "
        f"{data.total / MiB:,.0f} MiB, 48 KiB to 3 MiB (median {int(np.median(sizes)) // KiB} "
        f"KiB), batches of {args.mlperf_batch}, one read ahead, {args.compute_ms:g} ms compute "
        f"per batch; every S3 request through the counting proxy"
    )
    rounds = f"best of {args.mlperf_rounds}" if args.mlperf_rounds > 1 else "one epoch"
    labels = {
        "boto3": f"boto3 get_object, {args.mlperf_threads} threads",
        "shoal": "shoal read_many_into, cold",
    }
    best = {}
    for name, epochs in runs.items():
        run = best[name] = min(epochs, key=lambda e: e.seconds)
        note = f"{run.mb_s:.0f} MB/s, data wait {100 * run.wait / run.seconds:.1f}%"
        table.add(section, f"{labels[name]}: epoch ({rounds})", run.seconds, "s", note)
        seen = [_requests(e.counts) for e in epochs]
        if len(set(seen)) == 1:
            counts = f"{seen[0]} ({sum(epochs[0].counts[k] for k in KINDS):,} in all)"
        else:
            counts = " | ".join(seen)
        unparsed = sum(e.counts.get("unparsed", 0) for e in epochs)
        if unparsed:
            counts += f"; {unparsed} connections not parsed, their later requests uncounted"
        table.add(section, f"  {name}: S3 requests per epoch", None, "", counts)
    # Targets: 0.9x without added latency, 1.5x with 20 ms (none set for other delays).
    targets = {0: 0.9, 20: 1.5}
    target = targets.get(round(delay * 1000))
    table.ratio(
        section,
        f"(e) cold shoal / boto3, {latency}",
        1 / best["shoal"].seconds,
        1 / best["boto3"].seconds,
        target,
    )


# --------------------------------------------------------------------- main


class Context:
    """What every part shares: the S3 server and client, Shoal's client, a directory."""

    def __init__(self, server, s3, client, root: Path):
        self.server, self.s3, self.client, self.root = server, s3, client, root
        self.datasets: dict = {}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a = p.add_argument_group("(a) one large object")
    a.add_argument("--big-mib", type=float, default=1024, help="object size (default 1024)")
    a.add_argument(
        "--big-source",
        choices=("local", "s3"),
        default="local",
        help="under-store of the object: a directory mount (default) or S3 (slow: a moto "
        "ranged GET takes time proportional to the whole object)",
    )
    b = p.add_argument_group("(b) small objects")
    b.add_argument("--small", type=int, default=20_000, help="objects (default 20000)")
    b.add_argument("--small-min-kib", type=int, default=16, help="smallest (default 16)")
    b.add_argument("--small-max-kib", type=int, default=64, help="largest (default 64)")
    b.add_argument("--small-batch", type=int, default=256, help="files per read_many_into")
    b.add_argument(
        "--small-source",
        choices=("local", "s3"),
        default="local",
        help="under-store of the small objects: a directory mount (default) or S3 (slow: "
        "moto serves a few hundred requests a second)",
    )
    c = p.add_argument_group("(c), (d) epochs")
    c.add_argument("--mixed-objects", type=int, default=500, help="objects (default 500)")
    c.add_argument("--mixed-mib", type=float, default=256, help="total MiB (default 256)")
    c.add_argument("--epoch-batch", type=int, default=32, help="files per batch (default 32)")
    c.add_argument(
        "--cold-rounds", type=int, default=2, help="cold epochs per contender, best kept (2)"
    )
    c.add_argument("--no-fsspec", action="store_true", help="skip the fsspec baselines")
    e = p.add_argument_group("(e) MLPerf-style cold epoch")
    e.add_argument(
        "--objects", "--mlperf-objects", dest="mlperf_objects", type=int, default=360,
        help="objects of 48 KiB to 3 MiB (default 360)",
    )  # fmt: skip
    e.add_argument("--mlperf-batch", type=int, default=12, help="files per batch (default 12)")
    e.add_argument(
        "--compute-ms", type=float, default=15, help="simulated compute per batch (default 15)"
    )
    e.add_argument(
        "--mlperf-threads", type=int, default=4, help="boto3 requests at once (default 4)"
    )
    e.add_argument(
        "--s3-delay-ms",
        type=float,
        default=20,
        help="latency the proxy adds to each S3 request for the second pair of epochs "
        "(default 20; 0: only the epochs without it)",
    )
    e.add_argument(
        "--mlperf-rounds",
        type=int,
        default=2,
        help="epochs per side and latency, alternating boto3 and shoal; best kept (2)",
    )
    g = p.add_argument_group("all")
    g.add_argument("--threads", type=int, default=16, help="boto3/fsspec concurrency (16)")
    g.add_argument("--rounds", type=int, default=3, help="rounds per warm measurement (3)")
    g.add_argument(
        "--only", choices=("a", "b", "c", "mlperf"), action="append", help="run only these"
    )
    args = p.parse_args(argv)
    for name in ("mlperf_objects", "mlperf_batch", "mlperf_threads", "mlperf_rounds"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.compute_ms < 0 or args.s3_delay_ms < 0:
        p.error("--compute-ms and --s3-delay-ms must be >= 0")
    parts = set(args.only or ("a", "b", "c", "mlperf"))

    print("command:", shlex.join([sys.executable, *sys.argv]), flush=True)
    started = time.perf_counter()
    table = Table()
    root = Path(tempfile.mkdtemp(prefix="shoal-bench-", dir=data_root()))
    try:
        # The worker mounts the bucket and, for (a) and (b), directories under root.
        allowed = {"allowed_mounts": [*DEFAULT_ALLOWED_MOUNTS, root.as_uri() + "/"]}
        with (
            S3Server() as server,
            TemporaryHome("shoal-bench-", server.credentials_env(), config=allowed),
        ):
            s3 = server.client(max_pool_connections=max(args.threads, 10))
            s3.create_bucket(Bucket=BUCKET)
            with shoal.Client() as client:
                client.mount(MOUNT, f"s3://{BUCKET}", **server.mount_options())
                print(
                    f"S3: moto at {server.endpoint_url}; Shoal: "
                    f"{describe_worker(client.report())}; local data: {root}",
                    flush=True,
                )
                ctx = Context(server, s3, client, root)
                if "a" in parts:
                    bench_big(args, ctx, table)
                if "c" in parts:
                    bench_epochs(args, ctx, table)
                if "mlperf" in parts:
                    bench_mlperf(args, ctx, table)
                if "b" in parts:
                    bench_small(args, ctx, table)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    table.print_with_total(started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
