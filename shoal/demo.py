"""``python -m shoal.demo`` (``make demo``): a training loop reading a dataset from S3,
directly with boto3 and through Shoal on the single-node default.

It starts a local S3 server (moto), uploads a synthetic dataset (about 2,000 objects,
1 GiB, 16 KiB to 8 MiB), gives Shoal a temporary ``$SHOAL_HOME`` (the user's cache is never
touched), mounts the bucket, and runs epochs of a simulated training loop: batches of
files read into pre-allocated buffers while the previous batch "computes" (a fixed time
per batch). Per epoch it prints the throughput, the cache hit ratio and the fraction of
time the loop waited for data, and it checks every object's crc32c. A last epoch reads the
same dataset as plain files with ``open()`` under ``shoal fuse mount`` (skipped, with a
note, where FUSE is not available). Everything it started is stopped (and unmounted) at
the end, on Ctrl-C and on error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np

from ._units import format_size

__all__ = ["EpochResult", "main"]

MiB = 1 << 20
MOUNT = "/datasets/demo"
BUCKET = "shoal-demo"
_READ_CHUNK = 1 * MiB  # bytes per readinto from a boto3 response stream
_ALIGN = 4096


class DataMismatchError(ValueError):
    """An object read back does not match the bytes uploaded (size or crc32c)."""


@dataclass
class EpochResult:
    """One epoch of the training loop.

    Attributes
    ----------
    reader
        ``boto3``, ``shoal`` (the client) or ``fuse`` (plain files under a FUSE mount).
    epoch
        1, 2, ...
    label
        ``cold``, ``warm`` or empty.
    files, nbytes
        Objects and bytes read.
    seconds
        Wall time of the epoch (reads overlapped with compute).
    wait_seconds
        Time the loop waited for a batch.
    read_seconds
        Time the loader spent reading batches.
    hit_ratio
        Pages served from the cache / pages asked for (None without a cache).
    """

    reader: str
    epoch: int
    label: str
    files: int
    nbytes: int
    seconds: float
    wait_seconds: float
    read_seconds: float
    hit_ratio: float | None

    @property
    def mb_per_s(self) -> float:
        """Dataset bytes per second of the epoch, in MB/s (10**6)."""
        return self.nbytes / self.seconds / 1e6

    @property
    def read_mb_per_s(self) -> float:
        """Bytes per second of reading alone, in MB/s."""
        return self.nbytes / self.read_seconds / 1e6 if self.read_seconds else 0.0

    @property
    def wait_fraction(self) -> float:
        """Time waiting for data / epoch time."""
        return self.wait_seconds / self.seconds

    def as_dict(self) -> dict:
        return {
            **asdict(self),
            "mb_per_s": self.mb_per_s,
            "read_mb_per_s": self.read_mb_per_s,
            "wait_fraction": self.wait_fraction,
        }


# --------------------------------------------------------------------- the training loop

Fetch = Callable[[list[tuple[int, memoryview]]], Sequence[int]]


def prefaulted(nbytes: int) -> np.ndarray:
    """A buffer of ``nbytes`` whose pages are already mapped (written once)."""
    buf = np.empty(max(nbytes, 1), dtype=np.uint8)
    buf.fill(1)
    return buf


def _aligned(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


def batch_bytes(batch: Sequence[int], sizes: Sequence[int]) -> int:
    """Arena bytes a batch needs: each object at a 4 KiB-aligned offset."""
    return sum(_aligned(sizes[i]) for i in batch)


def _layout(arena: np.ndarray, batch: Sequence[int], sizes: Sequence[int]) -> list[memoryview]:
    views, offset = [], 0
    whole = memoryview(arena)
    for i in batch:
        views.append(whole[offset : offset + sizes[i]])
        offset += _aligned(sizes[i])
    return views


def verify(batch, views, got, sizes, crcs, keys) -> None:
    """Check each object's byte count and crc32c; ``DataMismatchError`` on the first bad."""
    from .engine import crc32c

    for i, view, n in zip(batch, views, got, strict=True):
        if n != sizes[i]:
            raise DataMismatchError(f"{keys[i]}: read {n} bytes, the object has {sizes[i]}")
        if crc32c(view[:n]) != crcs[i]:
            raise DataMismatchError(f"{keys[i]}: the bytes read do not match their crc32c")


def run_epoch(
    fetch: Fetch,
    batches: Sequence[Sequence[int]],
    arenas: Sequence[np.ndarray],
    sizes: Sequence[int],
    crcs: Sequence[int],
    keys: Sequence[str],
    compute: float,
) -> tuple[float, float, float]:
    """One epoch: a loader reads batch after batch into the arenas while the loop
    verifies and "computes" on the one before (``len(arenas) - 1`` batches ahead; one
    arena reads and computes in turn).

    Returns
    -------
    (seconds, wait_seconds, read_seconds)
    """
    clock = time.perf_counter
    if len(arenas) == 1:
        start = clock()
        waited = 0.0
        for batch in batches:
            views = _layout(arenas[0], batch, sizes)
            t0 = clock()
            got = fetch(list(zip(batch, views, strict=True)))
            waited += clock() - t0
            _compute(batch, views, got, sizes, crcs, keys, compute)
        total = clock() - start
        return total, waited, waited

    free: queue.Queue = queue.Queue()
    ready: queue.Queue = queue.Queue()
    for arena in arenas:
        free.put(arena)
    stop = threading.Event()

    def loader() -> None:
        for batch in batches:
            arena = free.get()
            if arena is None or stop.is_set():
                return
            views = _layout(arena, batch, sizes)
            t0 = clock()
            try:
                got = fetch(list(zip(batch, views, strict=True)))
            except BaseException as exc:
                ready.put(exc)
                return
            ready.put((batch, views, got, clock() - t0, arena))

    thread = threading.Thread(target=loader, name="demo-loader", daemon=True)
    start = clock()
    thread.start()
    waited = read = 0.0
    try:
        for _ in batches:
            t0 = clock()
            item = ready.get()
            waited += clock() - t0
            if isinstance(item, BaseException):
                raise item
            batch, views, got, seconds, arena = item
            read += seconds
            _compute(batch, views, got, sizes, crcs, keys, compute)
            free.put(arena)
        total = clock() - start
    finally:
        stop.set()
        free.put(None)
        thread.join(60)
    return total, waited, read


def _compute(batch, views, got, sizes, crcs, keys, compute: float) -> None:
    """The training step: verify the batch (part of the step's time), then wait out the
    rest of the fixed compute time."""
    t0 = time.perf_counter()
    verify(batch, views, got, sizes, crcs, keys)
    left = compute - (time.perf_counter() - t0)
    if left > 0:
        time.sleep(left)


def boto3_fetcher(s3, bucket: str, keys: Sequence[str], pool: ThreadPoolExecutor) -> Fetch:
    """Read objects whole with ``get_object``, streamed into the destination, ``pool``'s
    threads at once."""

    def get(item: tuple[int, memoryview]) -> int:
        i, view = item
        resp = s3.get_object(Bucket=bucket, Key=keys[i])
        got = 0
        with contextlib.closing(resp["Body"]) as body:
            while got < view.nbytes:
                n = body.readinto(view[got : got + _READ_CHUNK])
                if not n:
                    break
                got += n
        return got

    def fetch(items: list[tuple[int, memoryview]]) -> list[int]:
        return list(pool.map(get, items))

    return fetch


def shoal_fetcher(client, paths: Sequence[str]) -> Fetch:
    """Read objects with one ``read_many_into`` per batch."""

    def fetch(items: list[tuple[int, memoryview]]) -> list[int]:
        return client.read_many_into([(view, paths[i], 0) for i, view in items])

    return fetch


def read_fully(f, view: memoryview) -> int:
    """Fill ``view`` from the file object ``f`` (short only at its end); bytes read."""
    got = 0
    while got < view.nbytes:
        n = f.readinto(view[got:])
        if not n:
            break
        got += n
    return got


def file_fetcher(root: str, rels: Sequence[str], pool: ThreadPoolExecutor) -> Fetch:
    """Read files whole with plain ``open()`` and ``readinto``, ``pool``'s threads at once:
    what a training script that knows nothing of Shoal does under its FUSE mount."""

    def read(item: tuple[int, memoryview]) -> int:
        i, view = item
        with open(os.path.join(root, rels[i]), "rb", buffering=0) as f:
            return read_fully(f, view)

    def fetch(items: list[tuple[int, memoryview]]) -> list[int]:
        return list(pool.map(read, items))

    return fetch


def fuse_unavailable() -> str | None:
    """Why this machine cannot mount Shoal with FUSE, or None when it can."""
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    try:
        import pyfuse3  # noqa: F401
    except ImportError as exc:
        return f"pyfuse3 is not installed ({exc}; pip install 'shoal[fuse]')"
    return None


def epoch_order(n: int, seed: int, epoch: int, batch: int) -> list[list[int]]:
    """A shuffled pass over ``n`` objects, cut into batches."""
    order = np.random.default_rng([seed, epoch]).permutation(n).tolist()
    return [order[i : i + batch] for i in range(0, n, batch)]


# --------------------------------------------------------------------- output


def results_table(results: Sequence[EpochResult]) -> str:
    """The per-epoch results as an aligned table."""
    from .cli._common import format_table

    rows = []
    for r in results:
        rows.append(
            (
                r.reader,
                f"{r.epoch} {r.label}".strip(),
                f"{r.seconds:.2f}s",
                f"{r.mb_per_s:.0f}",
                f"{r.read_mb_per_s:.0f}",
                "-" if r.hit_ratio is None else f"{100 * r.hit_ratio:.1f}%",
                f"{100 * r.wait_fraction:.1f}%",
            )
        )
    return format_table(
        rows,
        ("reader", "epoch", "time", "MB/s", "read MB/s", "hit ratio", "data wait"),
        right=(2, 3, 4, 5, 6),
    )


def _say(text: str = "") -> None:
    print(text, flush=True)


# --------------------------------------------------------------------- the demo


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m shoal.demo",
        description="A training loop reading a synthetic S3 dataset (a local moto server), "
        "directly with boto3 and through Shoal (cold, then warm). Everything it starts is "
        "stopped at the end; the user's Shoal home is never used.",
    )
    data = p.add_argument_group("dataset")
    data.add_argument("--objects", type=int, default=2000, help="objects (default 2000)")
    data.add_argument(
        "--total-mib", type=float, default=1024, help="dataset size in MiB (default 1024)"
    )
    data.add_argument("--seed", type=int, default=0, help="seed of sizes, contents, order")
    loop = p.add_argument_group("training loop")
    loop.add_argument("--batch", type=int, default=32, help="files per batch (default 32)")
    loop.add_argument(
        "--compute-ms",
        type=float,
        default=20.0,
        help="simulated compute per batch, in ms (default 20)",
    )
    loop.add_argument(
        "--prefetch",
        type=int,
        default=1,
        help="batches read ahead of the compute (default 1; 0 reads then computes)",
    )
    loop.add_argument(
        "--threads",
        type=int,
        default=16,
        help="concurrent requests of the boto3 reader (default 16, as Shoal's worker)",
    )
    loop.add_argument(
        "--no-fuse",
        action="store_true",
        help="skip the epoch read through a FUSE mount with plain open()",
    )
    out = p.add_argument_group("output")
    out.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    args = p.parse_args(argv)
    for name in ("objects", "batch", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    if args.prefetch < 0:
        p.error("--prefetch must be >= 0")
    if not args.total_mib > 0 or args.compute_ms < 0:
        p.error("--total-mib must be > 0 and --compute-ms >= 0")
    return args


def _on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; the exit status (0 ok, 1 error, 130 interrupted)."""
    args = _parse(argv)
    from ._testing import dataset_sizes

    try:
        sizes = dataset_sizes(args.objects, int(args.total_mib * MiB), seed=args.seed)
    except ValueError as exc:
        print(f"shoal.demo: error: {exc}", file=sys.stderr)
        return 2
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        results = _run(args, sizes)
    except KeyboardInterrupt:
        print("shoal.demo: interrupted; everything it started is stopped", file=sys.stderr)
        return 130
    except Exception as exc:
        from .cli._common import describe_error

        if os.environ.get("SHOAL_DEBUG", "") not in ("", "0"):
            raise
        print(f"shoal.demo: error: {describe_error(exc)}", file=sys.stderr)
        return 1
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
    return 0


def _run(args: argparse.Namespace, sizes: list[int]) -> dict:
    from ._testing import S3Server, TemporaryHome, make_dataset

    compute = args.compute_ms / 1000
    with contextlib.ExitStack() as stack:
        t0 = time.perf_counter()
        server = S3Server()
        server.start()
        stack.callback(_stopped, "S3 server (moto)", server.stop)
        _say(f"S3 server (moto) at {server.endpoint_url}, pid {server.pid}")

        s3 = server.client(max_pool_connections=max(args.threads, 10))
        t0 = time.perf_counter()
        data = make_dataset(s3, BUCKET, sizes, seed=args.seed, threads=args.threads)
        upload = time.perf_counter() - t0
        arr = np.array(sizes)
        _say(
            f"dataset: {len(data)} objects, {format_size(data.total)} in s3://{BUCKET}/"
            f"{data.prefix} (sizes {format_size(int(arr.min()))} to "
            f"{format_size(int(arr.max()))}, median {format_size(int(np.median(arr)))}), "
            f"uploaded in {upload:.1f}s"
        )

        batches = [epoch_order(len(data), args.seed, e, args.batch) for e in (1, 2, 3)]
        need = max(batch_bytes(b, sizes) for epoch in batches for b in epoch)
        arenas = [prefaulted(need) for _ in range(args.prefetch + 1)]
        _say(
            f"training loop: {len(batches[0])} batches of {args.batch} files, "
            f"{args.compute_ms:g} ms compute per batch, {args.prefetch} batch(es) read ahead, "
            f"{len(arenas)} pre-faulted buffers of {format_size(need)}"
        )
        results: list[EpochResult] = []

        def record(r: EpochResult) -> None:
            results.append(r)
            hit = "-" if r.hit_ratio is None else f"{100 * r.hit_ratio:.1f}%"
            _say(
                f"  {r.reader} epoch {f'{r.epoch} {r.label}'.strip()}: {r.seconds:.2f}s, "
                f"{r.mb_per_s:.0f} MB/s, hit ratio {hit}, data wait {100 * r.wait_fraction:.1f}%"
            )

        _say()
        _say(f"boto3: get_object into the buffers, {args.threads} threads")
        with ThreadPoolExecutor(args.threads, "demo-boto3") as pool:
            fetch = boto3_fetcher(s3, BUCKET, data.keys, pool)
            secs, wait, read = run_epoch(
                fetch, batches[0], arenas, sizes, data.crcs, data.keys, compute
            )
        record(EpochResult("boto3", 1, "", len(data), data.total, secs, wait, read, None))

        def stopped(what: str, value: object) -> None:
            _say(
                f"stopped the Shoal worker (pid {value})"
                if what == "worker"
                else f"removed {value}"
            )

        home = stack.enter_context(
            TemporaryHome("shoal-demo-", server.credentials_env(), on_stop=stopped)
        )
        import shoal

        client = shoal.Client()
        stack.callback(client.close)
        client.mount(MOUNT, f"s3://{BUCKET}/{data.prefix}", **server.mount_options())
        report = client.report()
        worker = report["worker"]
        tiers = ", ".join(
            f"{name} {format_size(t['capacity'])}" for name, t in report["tiers"].items()
        )
        _say()
        _say(
            f"shoal: worker pid {worker['pid']} (started by shoal.Client()), home {home}, "
            f"engine {worker['engine']}, tiers {tiers}; s3://{BUCKET}/{data.prefix} mounted "
            f"at {MOUNT}"
        )
        capacity = sum(t["capacity"] for t in report["tiers"].values())
        if capacity < data.total:
            _say(f"  note: the cache ({format_size(capacity)}) is smaller than the dataset")
        paths = [f"{MOUNT}/{k[len(data.prefix) :]}" for k in data.keys]
        fetch = shoal_fetcher(client, paths)
        for epoch, label in ((1, "cold"), (2, "warm")):
            before = client.report()
            secs, wait, read = run_epoch(
                fetch, batches[epoch - 1], arenas, sizes, data.crcs, data.keys, compute
            )
            after = client.report()
            hits = after["page_hits"] - before["page_hits"]
            asked = hits + after["page_misses"] - before["page_misses"]
            ratio = hits / asked if asked else 0.0
            record(
                EpochResult("shoal", epoch, label, len(data), data.total, secs, wait, read, ratio)
            )
        why_not = None if args.no_fuse else fuse_unavailable()
        if not args.no_fuse and why_not is None:
            mountpoint = os.path.join(home, "mnt")
            os.mkdir(mountpoint)
            from ._testing import fuse_mounted

            pid = stack.enter_context(fuse_mounted(mountpoint, os.path.join(home, "fuse.log")))
            stack.callback(_say, f"unmounted the FUSE mount at {mountpoint}")
            _say()
            _say(
                f"fuse: `shoal fuse mount {mountpoint}` (pid {pid}, not the worker); the "
                f"training loop reads {mountpoint}{MOUNT}/... with plain open(), "
                f"{args.threads} threads"
            )
            root = mountpoint + MOUNT
            rels = [k[len(data.prefix) :] for k in data.keys]
            before = client.report()
            with ThreadPoolExecutor(args.threads, "demo-fuse") as pool:
                secs, wait, read = run_epoch(
                    file_fetcher(root, rels, pool), batches[2], arenas, sizes, data.crcs,
                    data.keys, compute,
                )  # fmt: skip
            after = client.report()
            hits = after["page_hits"] - before["page_hits"]
            asked = hits + after["page_misses"] - before["page_misses"]
            record(
                EpochResult("fuse", 3, "open()", len(data), data.total, secs, wait, read,
                            hits / asked if asked else None)
            )  # fmt: skip
        elif why_not is not None:
            _say()
            _say(f"fuse: the step reading through a FUSE mount is skipped: {why_not}")
        final = client.report()

        _say()
        _say(results_table(results))
        _say()
        _say(
            f"verified: {len(results) * len(data)} object reads, every one the size and "
            "crc32c of the object uploaded"
        )
        base = results[0]
        warm = next(r for r in results if r.reader == "shoal" and r.label == "warm")
        _say(
            f"shoal warm vs boto3: {warm.mb_per_s / base.mb_per_s:.1f}x the throughput, data "
            f"wait {100 * warm.wait_fraction:.1f}% vs {100 * base.wait_fraction:.1f}%; "
            f"under-store reads {format_size(final['ufs_bytes'])} "
            f"({final['ufs_bytes'] / data.total:.2f}x the dataset)"
        )
        for r in results:
            if r.reader == "fuse":
                _say(
                    f"plain open() under the FUSE mount vs boto3: "
                    f"{r.mb_per_s / base.mb_per_s:.1f}x the throughput, data wait "
                    f"{100 * r.wait_fraction:.1f}%"
                )
        return {
            "dataset": {
                "objects": len(data),
                "bytes": data.total,
                "min": int(arr.min()),
                "median": int(np.median(arr)),
                "max": int(arr.max()),
            },
            "batch": args.batch,
            "compute_ms": args.compute_ms,
            "prefetch": args.prefetch,
            "threads": args.threads,
            "worker_pid": worker["pid"],
            "home": home,
            "epochs": [r.as_dict() for r in results],
            "ufs_bytes": final["ufs_bytes"],
        }


def _stopped(what: str, stop: Callable[[], object]) -> None:
    stop()
    _say(f"stopped the {what}")


if __name__ == "__main__":
    sys.exit(main())
