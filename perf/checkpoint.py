"""Checkpoint benchmarks: a training job's state dict saved to S3 through Shoal
(``Client.save_checkpoint`` on a write-back mount) and loaded back, against what a job does
without Shoal, in one table of ratios.

    python perf/checkpoint.py [--mb 1024] [--cold-mb 256] [--rounds 3] [--cold-rounds 3]
    SHOAL_CKPT_MB=64 python perf/checkpoint.py      (a quick check)

The state dict: about ``--mb`` MiB (default ``$SHOAL_CKPT_MB``, else 1024) in some 400
numpy tensors shaped like a transformer's: per layer float16 attention and MLP weights, an
int8 copy of one with its float32 scales, float32 norms and biases, int32 and int64
buffers; a float32 embedding and a float16 output head make up the rest. Random bytes,
built once, pre-faulted.

Each of ``--rounds`` rounds runs three contenders, in an order that rotates every round,
with the disk synced (untimed) before each:

- shoal: ``save_checkpoint`` to a new path of an S3 mount whose ``write_mode`` is the
  default, ``write_back`` (it returns once the file is durable on the node), then
  ``wait_persisted`` until the upload is in S3; the previous round's file is deleted;
- boto3: ``safetensors.numpy.save`` to bytes, then one ``put_object`` of them, as a job
  writes a checkpoint to S3 synchronously (the object deleted after, untimed); then, for
  context, ``upload_fileobj`` of the same bytes (a multipart upload, as Shoal's is);
- local: ``safetensors.numpy.save_file`` to a file on the disk of the worker's home, then,
  timed apart, an ``fsync`` of it.

(a) the time ``save_checkpoint`` holds the caller over boto3's save + put (target <= 0.1x);
(b) its throughput over ``save_file``'s, which does not fsync (target >= 1.0x);
(e) the save plus the wait until the object is in S3, over boto3's ``put_object`` alone:
the background upload adds at most 10% (target <= 1.1x).
Then (c) a warm ``load_checkpoint`` (the file loaded once already; that first load after
the save is shown too) against ``safetensors.numpy.load_file`` of the local file, in the
page cache (target >= 1.0x), and (d) a cold ``load_checkpoint`` from S3 by a new worker
(the one that wrote the file may serve it from its own copy, which ``Client.free``
leaves), its cache freed before each round, against boto3
``download_fileobj`` (its default transfer settings) into memory then
``safetensors.numpy.load`` (target >= 1.5x), each in alternating rounds. Every ratio is of
medians over the rounds; the S3 requests of each side are counted (boto3's by a hook on its
client, Shoal's by the worker's report).

(d) uses a smaller checkpoint of the same mix, ``--cold-mb`` (256 MiB by default): moto
reads an object's whole value to answer each ranged GET, one GET of an object at a time,
so a cold load of N bytes in ranges of R costs it N * N / R, minutes for 2 GiB in 4 MiB
pages (the time of one ranged GET of the object is shown). Real S3 answers a range in time
of the range, many at once.

1 GiB by default, not the issue's 2 GiB: here moto takes in about 150 MB/s and keeps a
multipart object's parts beside its bytes, so at 2 GiB a round of saves took 50 to 120 s
(three rounds alone near 5 minutes) and the disk's 16 GB free ran out; ``--mb 2048`` runs
the issue's size where there is room.

Every number comes from this one run, on a temporary Shoal home with its own worker and a
moto S3 server in a child process, torn down at the end. Every load is checked against the
saved tensors byte for byte (outside the timed parts); warm loads read nothing from S3 and
cold ones all of the file (both checked).
"""

from __future__ import annotations

import argparse
import collections
import io
import math
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# numpy's BLAS threads spin after use and would steal a core from the measurement.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from _common import MiB, Table, data_root, describe_worker, timed  # noqa: E402
from safetensors.numpy import load as st_load  # noqa: E402
from safetensors.numpy import load_file, save, save_file  # noqa: E402

import shoal  # noqa: E402
from shoal._testing import S3Server, TemporaryHome  # noqa: E402

BUCKET = "shoal-ckpt"
MOUNT = "/ckpt"
LAYERS = 24
REGION = 64 * MiB
DEFAULT_MB = 1024  # not 2048: see the module's doc
WAIT_LIMIT = 900.0  # seconds wait_persisted may take before the run fails


def step(text: str) -> None:
    """Progress on stderr; the results come as one table at the end."""
    print(f"  ... {text}", file=sys.stderr, flush=True)


def mb_s(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e6


# --------------------------------------------------------------------- the state dict


def _fill(arr: np.ndarray, block: np.ndarray, start: int) -> None:
    """Fill ``arr``'s bytes from ``block``, cycling, from ``start``."""
    flat = arr.reshape(-1).view(np.uint8)
    at = 0
    while at < flat.size:
        take = min(flat.size - at, block.size - start)
        flat[at : at + take] = block[start : start + take]
        at += take
        start = 0


def state_dict(nbytes: int, seed: int = 7) -> dict[str, np.ndarray]:
    """About ``nbytes`` of tensors shaped like a transformer's (see the module's doc), their
    bytes random, written (so pre-faulted)."""
    d = max(64, math.isqrt(int(0.8 * nbytes / (LAYERS * 25))) // 64 * 64)
    specs: list[tuple[str, tuple[int, ...], str]] = []
    for i in range(LAYERS):
        p = f"layers.{i}"
        specs += [(f"{p}.attn.{w}.weight", (d, d), "<f2") for w in "qkvo"]
        specs += [
            (f"{p}.attn.o.weight_int8", (d, d), "i1"),
            (f"{p}.attn.o.weight_scale", (d,), "<f4"),
            (f"{p}.attn.rotary.inv_freq", (d // 32,), "<f4"),
            (f"{p}.mlp.up.weight", (4 * d, d), "<f2"),
            (f"{p}.mlp.up.bias", (4 * d,), "<f4"),
            (f"{p}.mlp.down.weight", (d, 4 * d), "<f2"),
            (f"{p}.mlp.down.bias", (d,), "<f4"),
            (f"{p}.norm1.weight", (d,), "<f4"),
            (f"{p}.norm1.bias", (d,), "<f4"),
            (f"{p}.norm2.weight", (d,), "<f4"),
            (f"{p}.norm2.bias", (d,), "<f4"),
            (f"{p}.attn.bucket_ids", (d,), "<i4"),
            (f"{p}.num_batches_tracked", (), "<i8"),
        ]
    used = sum(math.prod(s) * np.dtype(t).itemsize for _, s, t in specs)
    vocab = max(1, (nbytes - used) // (6 * d))  # the embedding (4 bytes) and head (2)
    specs += [
        ("embed.weight", (vocab, d), "<f4"),
        ("lm_head.weight", (vocab, d), "<f2"),
        ("position_ids", (1, 4096), "<i8"),
        ("step", (), "<i8"),
    ]
    rng = np.random.default_rng(seed)
    block = np.frombuffer(rng.bytes(16 * MiB + 4093), dtype=np.uint8)
    out = {}
    for k, (name, shape, dtype) in enumerate(specs):
        arr = np.empty(shape, dtype=dtype)
        _fill(arr, block, (k * 4093) % block.size)
        out[name] = arr
    return out


def total_bytes(tensors: dict[str, np.ndarray]) -> int:
    return sum(a.nbytes for a in tensors.values())


def describe(tensors: dict[str, np.ndarray]) -> str:
    """``N tensors (float16 1,234 MiB, ...)``, bytes by dtype, largest first."""
    by = collections.Counter()
    for a in tensors.values():
        by[a.dtype.name] += a.nbytes
    parts = ", ".join(f"{t} {n / MiB:,.0f} MiB" for t, n in by.most_common())
    return f"{len(tensors)} tensors ({parts})"


def check_same(got: dict, want: dict[str, np.ndarray], what: str) -> None:
    """Every tensor of ``want`` in ``got``, with its dtype, shape and bytes."""
    assert got.keys() == want.keys(), f"{what}: other tensor names"
    for name, a in want.items():
        b = got[name]
        assert b.dtype == a.dtype and b.shape == a.shape, f"{what}: {name} {b.dtype}{b.shape}"
        assert np.array_equal(b.reshape(-1).view(np.uint8), a.reshape(-1).view(np.uint8)), (
            f"{what}: {name} holds other bytes"
        )


# --------------------------------------------------------------------- measuring


class RequestCounter:
    """The HTTP requests a boto3 client sends, by method (retries included)."""

    def __init__(self, s3) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        s3.meta.events.register("before-send.s3", self._sent)

    def _sent(self, request, **_) -> None:
        self.counts[request.method] += 1

    def snapshot(self) -> dict[str, int]:
        return dict(self.counts)


def difference(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


def requests_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"


def sync_disk() -> None:
    """Flush what the last contender left in the page cache, so that no writeback of its
    runs under the next one."""
    os.sync()


def spread(values: list[float]) -> str:
    return "rounds " + ", ".join(f"{v:.2f}" for v in values)


def at_most(table: Table, section: str, what: str, num: float, den: float, target: float) -> None:
    """Add ``num / den`` with a target it must not exceed (Table.ratio checks >=)."""
    value = num / den
    met = value <= target
    table.add(section, what, value, "x", f"target <= {target:g}x: " + ("met" if met else "MISSED"))
    if not met:
        table.missed.append(what)


def rotated(names: list[str], r: int) -> list[str]:
    shift = r % len(names)
    return names[shift:] + names[:shift]


# --------------------------------------------------------------------- (a), (b), (e) saves


def bench_saves(args, ctx, table: Table) -> str:
    """The rounds of saves; the Shoal path of the last checkpoint saved (kept)."""
    tensors, client, s3, counter = ctx.tensors, ctx.client, ctx.s3, ctx.counter
    size = total_bytes(tensors)
    local = ctx.root / "local.safetensors"
    times: dict[str, list[float]] = collections.defaultdict(list)
    shoal_requests: list[dict[str, int]] = []
    boto_requests: list[dict[str, int]] = []
    multipart_requests: list[dict[str, int]] = []
    uploads: list[dict[str, int]] = []
    last: str | None = None

    def shoal_round(r: int) -> None:
        nonlocal last
        path = f"{MOUNT}/step-{r:04d}.safetensors"
        if last is not None:
            # A job keeps its last checkpoints, not all; deleted first, untimed, so that
            # moto holds one (its multipart objects keep their parts: twice the size).
            client.delete(last)
        before = client.report()
        t_save = timed(lambda: client.save_checkpoint(path, tensors))
        t_wait = timed(lambda: client.wait_persisted(path, timeout=WAIT_LIMIT))
        after = client.report()
        times["save"].append(t_save)
        times["wait"].append(t_wait)
        shoal_requests.append(difference(after["ufs_requests"], before["ufs_requests"]))
        wb, wb0 = after["writeback"], before["writeback"]
        uploads.append(
            {k: wb[k] - wb0[k] for k in ("uploaded_files", "uploaded_bytes", "upload_failures")}
        )
        assert client.persisted(path), f"{path}: wait_persisted returned before its upload"
        last = path

    def boto3_round(r: int) -> None:
        key = f"boto3/step-{r:04d}.safetensors"
        box: list[bytes] = []
        t_ser = timed(lambda: box.append(save(tensors)))
        before = counter.snapshot()
        t_put = timed(lambda: s3.put_object(Bucket=BUCKET, Key=key, Body=box[0]))
        boto_requests.append(difference(counter.snapshot(), before))
        s3.delete_object(Bucket=BUCKET, Key=key)
        # What moto makes of a multipart upload, as Shoal's is: boto3's, its defaults.
        sync_disk()
        before = counter.snapshot()
        t_multi = timed(lambda: s3.upload_fileobj(io.BytesIO(box[0]), BUCKET, key))
        multipart_requests.append(difference(counter.snapshot(), before))
        s3.delete_object(Bucket=BUCKET, Key=key)
        assert len(box[0]) >= size
        box.clear()
        times["serialize"].append(t_ser)
        times["put"].append(t_put)
        times["multipart"].append(t_multi)

    def local_round(_r: int) -> None:
        times["save_file"].append(timed(lambda: save_file(tensors, str(local))))

        def flush() -> None:
            fd = os.open(local, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

        times["fsync"].append(timed(flush))

    contenders: dict[str, Callable[[int], None]] = {
        "shoal": shoal_round,
        "boto3": boto3_round,
        "local": local_round,
    }
    for r in range(args.rounds):
        order = rotated(list(contenders), r)
        step(f"(a), (b), (e) round {r + 1} of {args.rounds}: {', '.join(order)}")
        for name in order:
            sync_disk()
            contenders[name](r)
        step(
            f"  save {times['save'][-1]:.2f} s + wait {times['wait'][-1]:.2f} s; boto3 "
            f"serialize {times['serialize'][-1]:.2f} s + put {times['put'][-1]:.2f} s "
            f"(upload_fileobj {times['multipart'][-1]:.2f} s); "
            f"save_file {times['save_file'][-1]:.2f} s + fsync {times['fsync'][-1]:.2f} s"
        )
    med = {k: statistics.median(v) for k, v in times.items()}
    persisted = [s + w for s, w in zip(times["save"], times["wait"], strict=True)]
    med["persisted"] = statistics.median(persisted)
    boto_total = [s + p for s, p in zip(times["serialize"], times["put"], strict=True)]
    med["boto3"] = statistics.median(boto_total)

    sec = (
        f"(a), (b), (e) saving a {size / MiB:,.0f} MiB state dict, {describe(tensors)}, "
        f"median of {args.rounds} rounds"
    )
    mode = ctx.write_mode

    def row(what: str, key: str, values: list[float], rate: bool = True) -> None:
        note = f"{mb_s(size, med[key]):,.0f} MB/s; " if rate else ""
        table.add(sec, what, med[key], "s", note + spread(values))

    row(f"shoal save_checkpoint ({mode}: returns once on the node)", "save", times["save"])
    row("shoal: then wait_persisted (upload to S3)", "wait", times["wait"])
    row("shoal: save + wait, until the object is in S3", "persisted", persisted)
    same = all(u == uploads[0] for u in uploads) and all(
        c == shoal_requests[0] for c in shoal_requests
    )
    upload_note = (
        f"{requests_text(shoal_requests[-1])}; writeback: {uploads[-1]['uploaded_files']} file, "
        f"{uploads[-1]['uploaded_bytes'] / MiB:,.0f} MiB uploaded, "
        f"{uploads[-1]['upload_failures']} failed attempts"
    )
    if not same:
        upload_note += " (last round; rounds differ)"
    table.add(sec, "  shoal: S3 requests of one save", None, "", upload_note)
    row("boto3: safetensors.numpy.save to bytes", "serialize", times["serialize"])
    row("boto3: put_object of those bytes", "put", times["put"])
    row("boto3: save + put, until the object is in S3", "boto3", boto_total)
    table.add(sec, "  boto3: S3 requests of one put", None, "", requests_text(boto_requests[-1]))
    row("  context: boto3 upload_fileobj (multipart) instead", "multipart", times["multipart"])
    table.add(sec, "  its S3 requests", None, "", requests_text(multipart_requests[-1]))
    row("local: safetensors.numpy.save_file (no fsync)", "save_file", times["save_file"])
    row("local: fsync of that file, after", "fsync", times["fsync"], rate=False)
    at_most(table, sec, "(a) shoal save blocks / boto3 save + put", med["save"], med["boto3"], 0.1)
    table.ratio(
        sec,
        "(b) shoal save / local save_file, throughput",
        1 / med["save"],
        1 / med["save_file"],
        1.0,
    )
    at_most(
        table, sec, "(e) shoal save + wait / boto3 put_object", med["persisted"], med["put"], 1.1
    )
    assert last is not None
    return last


# --------------------------------------------------------------------- (c) warm loads


def bench_warm(args, ctx, table: Table, path: str) -> None:
    tensors, client = ctx.tensors, ctx.client
    size = total_bytes(tensors)
    local = str(ctx.root / "local.safetensors")
    step("(c) first loads, checked")
    before = client.report()
    loaded: list = []
    first = timed(lambda: loaded.append(client.load_checkpoint(path)))
    after = client.report()
    check_same(loaded.pop(), tensors, f"shoal load_checkpoint {path}")
    sent = difference(after["ufs_requests"], before["ufs_requests"])
    first_note = (
        f"{first:.2f} s; S3 {requests_text(sent)}, "
        f"{(after['ufs_bytes'] - before['ufs_bytes']) / MiB:,.0f} MiB counted as fetched"
    )
    got = load_file(local)
    check_same(got, tensors, f"load_file {local}")
    del got

    times: dict[str, list[float]] = {"shoal": [], "local": []}
    loaders = {"shoal": lambda: client.load_checkpoint(path), "local": lambda: load_file(local)}
    before = client.report()
    for r in range(args.rounds):
        for name in rotated(list(loaders), r):
            box: list = []
            times[name].append(timed(lambda fn=loaders[name], box=box: box.append(fn())))
            assert len(box[0]) == len(tensors)
            del box
    fetched = client.report()["ufs_bytes"] - before["ufs_bytes"]
    assert fetched == 0, f"a warm load fetched {fetched} bytes from S3"
    med = {k: statistics.median(v) for k, v in times.items()}
    sec = f"(c) warm load of the {size / MiB:,.0f} MiB checkpoint, median of {args.rounds} rounds"
    table.add(
        sec,
        "shoal load_checkpoint, warm (loaded once before)",
        mb_s(size, med["shoal"]),
        "MB/s",
        f"{med['shoal']:.2f} s; {spread(times['shoal'])}; nothing fetched from S3",
    )
    table.add(
        sec, "  context: shoal's first load after the save", mb_s(size, first), "MB/s", first_note
    )
    table.add(
        sec,
        "local: safetensors.numpy.load_file (page cache)",
        mb_s(size, med["local"]),
        "MB/s",
        f"{med['local']:.2f} s; {spread(times['local'])}",
    )
    table.ratio(
        sec, "(c) warm shoal / local load_file, throughput", 1 / med["shoal"], 1 / med["local"], 1.0
    )


# --------------------------------------------------------------------- (d) cold loads


def save_cold(args, ctx, last: str) -> tuple[str, dict[str, np.ndarray]]:
    """The checkpoint (d) loads, in S3: the last one saved, or one of ``--cold-mb``."""
    if args.cold_mb >= args.mb:
        return last, ctx.tensors
    step(f"(d) building and saving a {args.cold_mb:g} MiB checkpoint")
    tensors = state_dict(int(args.cold_mb * MiB), seed=11)
    path = f"{MOUNT}/cold.safetensors"
    ctx.client.save_checkpoint(path, tensors)
    ctx.client.wait_persisted(path, timeout=WAIT_LIMIT)
    return path, tensors


def bench_cold(args, ctx, table: Table, path: str, tensors: dict[str, np.ndarray]) -> None:
    """Cold loads of ``path`` by a worker that did not write it (``ctx.client``'s)."""
    client, s3, counter = ctx.client, ctx.s3, ctx.counter
    size = client.stat(path).size
    key = path[len(MOUNT) + 1 :]
    page = client.report()["worker"]["page_size"]
    # Untimed: the worker's connections to S3 opened, as boto3's are by now.
    client.load_checkpoint(path)
    # What moto's answers cost: one ranged GET of a page of this object.
    one_get = timed(
        lambda: s3.get_object(Bucket=BUCKET, Key=key, Range=f"bytes=0-{page - 1}")["Body"].read()
    )

    def shoal_cold() -> dict:
        return client.load_checkpoint(path)

    def boto3_cold() -> dict:
        buf = io.BytesIO()
        s3.download_fileobj(BUCKET, key, buf)
        return st_load(buf.getvalue())

    times: dict[str, list[float]] = {"shoal": [], "boto3": []}
    requests: dict[str, list[dict[str, int]]] = {"shoal": [], "boto3": []}
    for r in range(args.cold_rounds):
        for name in rotated(["shoal", "boto3"], r):
            step(f"(d) cold load, round {r + 1} of {args.cold_rounds}: {name}")
            box: list[dict] = []
            if name == "shoal":
                client.free(path)
                before = client.report()
                times[name].append(timed(lambda box=box: box.append(shoal_cold())))
                after = client.report()
                fetched = after["ufs_bytes"] - before["ufs_bytes"]
                sent = difference(after["ufs_requests"], before["ufs_requests"])
                assert fetched >= size, f"a cold load fetched {fetched} of {size} bytes"
                # Whole pages fetched, several to a GET: as many GETs as 16 MiB ranges.
                assert sent.get("GET", 0) >= size // (16 << 20), f"a cold load sent only {sent}"
                requests[name].append(sent)
            else:
                before_n = counter.snapshot()
                times[name].append(timed(lambda box=box: box.append(boto3_cold())))
                requests[name].append(difference(counter.snapshot(), before_n))
            if r == 0:
                check_same(box[0], tensors, f"{name} cold load")
            del box
            sync_disk()
    med = {k: statistics.median(v) for k, v in times.items()}
    smaller = f", not {args.mb:g} MiB" if args.cold_mb < args.mb else ""
    sec = (
        f"(d) cold load from S3 of a {size / MiB:,.0f} MiB checkpoint{smaller}, median of "
        f"{args.cold_rounds} rounds, by a new worker. moto answers the GETs of one object one "
        f"at a time (a lock per key), each in the time of the whole object ({one_get:.2f} s for a "
        f"{page // MiB} MiB range of this one): a load takes about its GETs times that"
    )
    labels = {
        "shoal": "shoal load_checkpoint, cold (cache freed)",
        "boto3": "boto3 download_fileobj + safetensors.numpy.load",
    }
    for name, label in labels.items():
        seen = sorted({requests_text(c) for c in requests[name]})
        note = f"{med[name]:.2f} s; {spread(times[name])}; S3 {' | '.join(seen)}"
        table.add(sec, label, mb_s(size, med[name]), "MB/s", note)
    table.ratio(sec, "(d) cold shoal / boto3, throughput", 1 / med["shoal"], 1 / med["boto3"], 1.5)


# --------------------------------------------------------------------- main


class Context:
    """What every part shares."""

    def __init__(self, tensors, client, s3, counter, root: Path, write_mode: str):
        self.tensors, self.client, self.s3, self.counter = tensors, client, s3, counter
        self.root, self.write_mode = root, write_mode


def worker_config(size: int) -> dict:
    """Room for a checkpoint being written while the last one is cached, and a dirty budget
    that holds one whole checkpoint."""

    def regions(n: float) -> int:
        return max(1, math.ceil(n / REGION)) * REGION

    return {"capacity": regions(3 * size + 2 * REGION), "dirty_bytes": regions(1.5 * size)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--mb",
        type=float,
        default=float(os.environ.get("SHOAL_CKPT_MB", DEFAULT_MB)),
        help=f"state dict size in MiB (default $SHOAL_CKPT_MB, else {DEFAULT_MB}; see the doc)",
    )
    p.add_argument(
        "--cold-mb",
        type=float,
        default=256,
        help="checkpoint size of (d), at most --mb (default 256; see the module's doc)",
    )
    p.add_argument("--rounds", type=int, default=3, help="rounds of saves and warm loads (3)")
    p.add_argument("--cold-rounds", type=int, default=3, help="rounds of cold loads (3)")
    args = p.parse_args(argv)
    if args.mb < 1 or args.cold_mb < 1 or args.rounds < 1 or args.cold_rounds < 1:
        p.error("sizes must be >= 1 MiB and rounds >= 1")
    args.cold_mb = min(args.cold_mb, args.mb)

    print("command:", shlex.join([sys.executable, *sys.argv]), flush=True)
    if args.mb == DEFAULT_MB:
        print(
            f"size: {DEFAULT_MB} MiB, not the issue's 2048: with moto a round of 2 GiB saves "
            "took 50-120 s here and filled the disk (see the module's doc); --mb 2048 runs it",
            flush=True,
        )
    print(f"load average before the run: {os.getloadavg()[0]:.2f}", flush=True)
    started = time.perf_counter()
    table = Table()
    step(f"building a {args.mb:g} MiB state dict")
    tensors = state_dict(int(args.mb * MiB))
    size = total_bytes(tensors)
    root = Path(tempfile.mkdtemp(prefix="shoal-ckpt-", dir=data_root()))
    try:
        with S3Server() as server:
            s3 = server.client()
            s3.create_bucket(Bucket=BUCKET)
            counter = RequestCounter(s3)
            with (
                TemporaryHome("shoal-ckpt-", server.credentials_env(), config=worker_config(size)),
                shoal.Client() as client,
            ):
                client.mount(MOUNT, f"s3://{BUCKET}", **server.mount_options())
                # None: not set on the mount, whose default is write_back.
                mode = client.effective_policy(MOUNT)["policy"].get("write_mode") or "write_back"
                print(
                    f"S3: moto at {server.endpoint_url}; Shoal: "
                    f"{describe_worker(client.report())}; mount {MOUNT} write_mode {mode}; "
                    f"local file in {root}; state dict {size / MiB:,.0f} MiB, "
                    f"{describe(tensors)}",
                    flush=True,
                )
                ctx = Context(tensors, client, s3, counter, root, mode)
                last = bench_saves(args, ctx, table)
                bench_warm(args, ctx, table, last)
                cold_path, cold_tensors = save_cold(args, ctx, last)
            # A new worker: the one that wrote the file may serve it from its own copy.
            with (
                TemporaryHome("shoal-ckpt-", server.credentials_env(), config=worker_config(size)),
                shoal.Client() as client,
            ):
                client.mount(MOUNT, f"s3://{BUCKET}", **server.mount_options())
                ctx = Context(tensors, client, s3, counter, root, mode)
                bench_cold(args, ctx, table, cold_path, cold_tensors)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(
        "\nreproduce: "
        + shlex.join(
            [
                sys.executable,
                "perf/checkpoint.py",
                f"--mb={args.mb:g}",
                f"--cold-mb={args.cold_mb:g}",
                f"--rounds={args.rounds}",
                f"--cold-rounds={args.cold_rounds}",
            ]
        )
    )
    table.print_with_total(started)
    print(f"load average after the run: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
