"""Small-file benchmarks: Shoal against local files and the engine, in one table of ratios.

The benchmark of the "massive small files" issue.

    python perf/small_files.py [--files 200000] [--mixed-files 3000] [--loader-files 50000]
                               [--rounds 3] [--batch 256] [--quick]

The data: ``--files`` files of 100 bytes in 20 directories, on a ``file://`` mount at
/small; and ``--mixed-files`` files of 1 to 64 KiB (random sizes) for the space row.

(1) local baseline: a Python loop (``os.open(dir_fd=)`` + ``os.preadv`` + ``os.close``)
over every seventh file, into pre-faulted reused buffers, page cache warm (the best of
three passes a round);
(2) the same files warm in Shoal, read with ``Client.read_many_into`` in batches of
``--batch`` into reused buffers by a new process (this script with ``--child``): its first
pass, its third pass, and the first pass of another new process after the worker was
restarted (``shoal down``; the cache stays on tmpfs and disk); (2d) the first pass of new
processes with the same files cached on a disk tier alone (a second home with no MEM tier,
its region files read with ``pread``); with the requests each first pass made to the
worker (from the worker's report, taken before the process starts and after its first
pass);
(3) a torch DataLoader epoch (4 workers, workers not persistent: each epoch forks new
processes) over ``--loader-files`` warm files, each item 64 files read with
``read_many_into`` by a client made in the worker process, against the same loader over
the local files with a Python loop; the second and later epochs (both sides warm);
(4) space: bytes cached over bytes filled in the MEM tier (``filled_bytes`` of the tier
when the page store reports it, else ``allocated_bytes``), for the 100-byte files and
for the 1 to 64 KiB files (loaded alone, into the MEM tier of a second, empty home);
(5) worker memory per cached file: VmRSS of the worker with the 100-byte files cached,
less that of the fresh worker with nothing cached, over the files; and the same from half
of them cached to all, which leaves the worker's fixed costs out (its fetch threads'
buffers, say);
(6) a cold ``Client.load`` of the 100-byte files into an empty cache (two calls of ten
directories each, the worker's memory taken after each; the files' pages dropped from the
kernel's page cache first with ``POSIX_FADV_DONTNEED``), against ``shoal.engine.read_files``
over the same files, cold, in batches of ``--batch``.

Every number comes from this one run, on a temporary Shoal home with its own worker, torn
down at the end. Warm measurements read nothing from the under-store (checked); every byte
the new processes and the DataLoader epochs read is checked (outside the timed parts).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

# numpy's BLAS threads spin after use and would steal a core from the measurement.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from _common import REPO, KiB, MiB, Table, aligned, data_root, describe_worker  # noqa: E402

import shoal  # noqa: E402
from shoal import engine  # noqa: E402
from shoal._config import DEFAULT_ALLOWED_MOUNTS  # noqa: E402
from shoal._testing import TemporaryHome  # noqa: E402

SMALL = "/small"  # mount of the 100-byte files
MIXED = "/mixed"  # mount of the 1 to 64 KiB files
FILE_BYTES = 100
DIRS = 20
EVERY = 7  # (1), (2) read every seventh file
SLOT = 4 * KiB  # bytes of buffer per 100-byte file: page-aligned destinations
GROUP = 64  # files per DataLoader item
PASSES = 3


def step(text: str) -> None:
    """Progress on stderr; the results come as one table at the end."""
    print(f"  ... {text}", file=sys.stderr, flush=True)


def small_name(i: int) -> str:
    return f"d{i % DIRS:02d}/f{i:07d}.bin"


def small_bytes(i: int) -> bytes:
    """The content of small file ``i``: its number, repeated."""
    return (b"%07d " % i * 13)[:FILE_BYTES]


def slots(count: int, size: int = SLOT) -> list[memoryview]:
    """``count`` views of ``size`` bytes each, over one pre-faulted, page-aligned arena."""
    arena = memoryview(aligned(count * size))
    return [arena[k * size : (k + 1) * size] for k in range(count)]


def batched(seq: list, size: int) -> list[list]:
    return [seq[at : at + size] for at in range(0, len(seq), size)]


def make_small(folder: Path, n: int) -> None:
    for d in range(DIRS):
        (folder / f"d{d:02d}").mkdir(parents=True)
    dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(n):
            fd = os.open(small_name(i), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=dfd)
            os.write(fd, small_bytes(i))
            os.close(fd)
    finally:
        os.close(dfd)


def make_mixed(folder: Path, n: int, seed: int = 11) -> int:
    """``n`` files of 1 to 64 KiB (random sizes and bytes); their total size."""
    rng = random.Random(seed)
    folder.mkdir(parents=True)
    total = 0
    for i in range(n):
        size = rng.randint(1 * KiB, 64 * KiB)
        (folder / f"m{i:06d}.bin").write_bytes(rng.randbytes(size))
        total += size
    return total


def drop_page_cache(folder: Path, names: list[str]) -> None:
    """Drop the kernel's cached pages of the files (written back first, or they stay).
    Dentries and inodes stay cached."""
    os.sync()
    dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in names:
            fd = os.open(name, os.O_RDONLY, dir_fd=dfd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)
    finally:
        os.close(dfd)


def still_cached(folder: Path, names: list[str]) -> int | None:
    """Of ``names`` (a sample), how many still have pages in the page cache (``fincore``);
    None when ``fincore`` is not installed."""
    if shutil.which("fincore") is None:
        return None
    cmd = ["fincore", "--bytes", "--noheadings", "--raw", "--output", "RES"]
    done = subprocess.run(
        cmd + [str(folder / n) for n in names], capture_output=True, text=True, check=True
    )
    return sum(1 for line in done.stdout.split() if int(line) > 0)


def memory(pid: int) -> dict[str, int]:
    """VmRSS and RssAnon of a process, in bytes."""
    out = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon"):
                out[key] = int(value.split()[0]) * KiB
    return out


def requests_between(before: dict, after: dict) -> int:
    """Requests the worker served between two reports, less the second report's own."""
    return after["requests"] - before["requests"] - 1


def cache_only(before: dict, after: dict) -> None:
    """Check that nothing was read from an under-store between two reports."""
    fetched = after["ufs_bytes"] - before["ufs_bytes"]
    assert fetched == 0, f"a warm measurement fetched {fetched} bytes from the under-store"


def tier_space(report: dict) -> tuple[str, int, int, str]:
    """The MEM tier's (name, cached bytes, filled bytes, the field filled bytes came from):
    ``filled_bytes`` when the page store reports it, else ``allocated_bytes``."""
    name = "MEM" if "MEM" in report["tiers"] else next(iter(report["tiers"]))
    tier = report["tiers"][name]
    basis = "filled_bytes" if "filled_bytes" in tier else "allocated_bytes"
    return name, tier["live_bytes"], tier[basis], basis


# --------------------------------------------------------------------- the child


def child_main(argv: list[str]) -> int:
    """A new process reading every seventh file warm, ``--passes`` passes.

    Prints one JSON line after the first pass, waits for a line on stdin (the parent takes
    the worker's report meanwhile), then runs the other passes and an untimed pass that
    checks every byte, and prints one JSON line of every pass's files/s.
    """
    p = argparse.ArgumentParser(prog="small_files.py --child")
    p.add_argument("--files", type=int, required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--passes", type=int, required=True)
    args = p.parse_args(argv)
    indices = list(range(0, args.files, EVERY))
    bufs = slots(args.batch)
    batches = [
        [(bufs[k], f"{SMALL}/{small_name(i)}", 0) for k, i in enumerate(b)]
        for b in batched(indices, args.batch)
    ]
    client = shoal.Client()
    rates = []
    for n in range(args.passes):
        start = time.perf_counter()
        for items in batches:
            client.read_many_into(items)
        rates.append(len(indices) / (time.perf_counter() - start))
        if n == 0:
            print(json.dumps({"pass": 1, "files_per_s": rates[0]}), flush=True)
            sys.stdin.readline()
    for b, items in zip(batched(indices, args.batch), batches, strict=True):
        got = client.read_many_into(items)
        for i, (view, _, _), size in zip(b, items, got, strict=True):
            assert size == FILE_BYTES and view[:size] == small_bytes(i), f"file {i} is wrong"
    client.close()
    print(json.dumps({"files": len(indices), "files_per_s": rates}), flush=True)
    return 0


@dataclass
class ChildRun:
    """What one new process measured, and the requests its first pass made."""

    rates: list[float]
    requests: int


def run_child(client: shoal.Client, n_files: int, batch: int, passes: int) -> ChildRun:
    """This script with ``--child`` in a new process, on the same home (``$SHOAL_HOME``)."""
    options = {"--files": n_files, "--batch": batch, "--passes": passes}
    cmd = [sys.executable, __file__, "--child", *(f"{k}={v}" for k, v in options.items())]
    before = client.report()
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()
        if not first:
            raise RuntimeError(f"the child process failed (exit status {proc.wait()})")
        after = client.report()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        last = proc.stdout.readline()
        if proc.wait(timeout=600) != 0 or not last:
            raise RuntimeError(f"the child process failed (exit status {proc.returncode})")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    cache_only(before, client.report())
    doc = json.loads(last)
    assert doc["files_per_s"][0] == json.loads(first)["files_per_s"]
    return ChildRun(doc["files_per_s"], requests_between(before, after))


# --------------------------------------------------------------------- the DataLoader


class LocalGroups:
    """A map-style dataset: item ``k`` is files ``k * 64`` to ``k * 64 + 63`` of a list,
    read with a Python loop (``os.open`` + ``os.preadv`` + ``os.close``), their bytes
    joined."""

    def __init__(self, folder: Path, indices: list[int]):
        self.folder = str(folder)
        self.groups = [[small_name(i).encode() for i in g] for g in batched(indices, GROUP)]
        self._pid = 0
        self._dfd = -1
        self._bufs: list[memoryview] = []

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, k: int) -> bytes:
        if self._pid != os.getpid():
            # A DataLoader worker: a descriptor (closed as it exits) and buffers of its own.
            self._dfd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)
            self._bufs = slots(GROUP)
            self._pid = os.getpid()
        parts = []
        for name, buf in zip(self.groups[k], self._bufs, strict=False):
            fd = os.open(name, os.O_RDONLY, dir_fd=self._dfd)
            n = os.preadv(fd, [buf], 0)
            os.close(fd)
            parts.append(buf[:n])
        return b"".join(parts)


class ShoalGroups:
    """The same items through Shoal: one ``read_many_into`` of 64 files each, through a
    client made in the process that reads (never before the DataLoader forks)."""

    def __init__(self, indices: list[int]):
        self.groups = [[f"{SMALL}/{small_name(i)}" for i in g] for g in batched(indices, GROUP)]
        self._pid = 0
        self._client: shoal.Client | None = None
        self._bufs: list[memoryview] = []

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, k: int) -> bytes:
        if self._pid != os.getpid():
            self._client = shoal.Client()
            self._bufs = slots(GROUP)
            self._pid = os.getpid()
        bufs = self._bufs
        got = self._client.read_many_into(
            [(bufs[j], path, 0) for j, path in enumerate(self.groups[k])]
        )
        return b"".join([bufs[j][:n] for j, n in enumerate(got)])


def loader_epoch(dataset, expected: list[bytes] | None = None) -> float:
    """Seconds of one epoch: 4 workers, forked anew (``persistent_workers=False``). With
    ``expected``, the items are kept and checked against it after the epoch."""
    from torch.utils.data import DataLoader

    kept = []
    with warnings.catch_warnings():
        # 4 workers on a machine of fewer cores is the measurement asked for.
        warnings.filterwarnings("ignore", message="This DataLoader will create")
        loader = DataLoader(dataset, batch_size=None, shuffle=False, num_workers=4)
        start = time.perf_counter()
        for item in loader:
            if expected is not None:
                kept.append(item)
        seconds = time.perf_counter() - start
    assert expected is None or kept == expected, "a DataLoader epoch returned wrong bytes"
    return seconds


# --------------------------------------------------------------------- the parent


@dataclass
class Results:
    """Every measurement of the run; the table is made from it at the end."""

    n: int = 0
    seventh: int = 0
    local_rate: float | None = None
    children: list[ChildRun] = field(default_factory=list)
    restarted: list[ChildRun] = field(default_factory=list)
    on_disk: list[ChildRun] = field(default_factory=list)  # (2d): no MEM tier
    loader_files: int = 0
    loader_local: float | None = None
    loader_shoal: float | None = None
    loader_requests: int | None = None
    space: dict[str, tuple[str, int, int, str]] = field(default_factory=dict)
    rss: dict[str, dict[str, int]] = field(default_factory=dict)  # fresh, half, all
    half_files: int = 0  # files cached when rss["half"] was taken
    load_rate: float | None = None
    load_note: str = ""
    read_files_rate: float | None = None
    cold_note: str = ""


def bench_cold_load(args, client: shoal.Client, folder: Path, res: Results) -> None:
    """(6), with (4) and (5) for the 100-byte files: a fresh worker's memory, a cold load
    into its empty cache in two halves (its memory taken after each), the space used."""
    n = args.files
    names = [small_name(i) for i in range(n)]
    pid = client.report()["worker"]["pid"]
    res.rss["fresh"] = memory(pid)

    step(f"(6) cold engine.read_files of {n:,} files, batches of {args.batch}")
    drop_page_cache(folder, names)
    sample = names[:: max(1, n // 50)]
    left = [still_cached(folder, sample)]
    bufs = slots(args.batch)
    dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        start = time.perf_counter()
        for part in batched(names, args.batch):
            sizes = engine.read_files(part, bufs[: len(part)], dir_fd=dfd)
            assert all(s == FILE_BYTES for s in sizes), sizes
        res.read_files_rate = n / (time.perf_counter() - start)
    finally:
        os.close(dfd)

    step(f"(6) cold Client.load of {n:,} files into an empty cache, in two halves")
    drop_page_cache(folder, names)
    left.append(still_cached(folder, sample))
    before = client.report()
    seconds, files = 0.0, 0
    halves = (range(DIRS // 2), range(DIRS // 2, DIRS))
    for half, dirs in zip(("half", "all"), halves, strict=True):
        start = time.perf_counter()
        done = client.load([f"{SMALL}/d{d:02d}" for d in dirs])
        seconds += time.perf_counter() - start
        res.rss[half] = memory(pid)
        files += done.files_done
        assert done.bytes_done == done.files_done * FILE_BYTES, done
        if half == "half":
            res.half_files = files
    assert files == n, (files, n)
    res.load_rate = n / seconds
    after = client.report()
    sent = {
        k: after["ufs_requests"][k] - before["ufs_requests"].get(k, 0)
        for k in ("GET", "HEAD", "LIST")
    }
    res.load_note = "worker to the under-store: " + ", ".join(f"{k} {v:,}" for k, v in sent.items())
    if None in left:
        res.cold_note = "page cache dropped with POSIX_FADV_DONTNEED (not checked: no fincore)"
    else:
        res.cold_note = (
            f"page cache dropped with POSIX_FADV_DONTNEED; fincore: {left[0]} and {left[1]} "
            f"of {len(sample)} sampled files still cached before each run"
        )
    res.space["100 B"] = tier_space(after)


def bench_warm(args, client: shoal.Client, folder: Path, res: Results) -> None:
    """(1) and (2): the local loop in this process, Shoal in new processes."""
    indices = list(range(0, args.files, EVERY))
    res.seventh = len(indices)
    bufs = slots(args.batch)
    local_items = [
        [(small_name(i).encode(), [bufs[k]]) for k, i in enumerate(b)]
        for b in batched(indices, args.batch)
    ]
    dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)

    def local_pass() -> float:
        start = time.perf_counter()
        for items in local_items:
            for name, dest in items:
                fd = os.open(name, os.O_RDONLY, dir_fd=dfd)
                os.preadv(fd, dest, 0)
                os.close(fd)
        return time.perf_counter() - start

    try:
        local_pass()  # the page cache holds them now
        best = float("inf")
        for r in range(args.rounds):
            step(f"(1), (2) round {r + 1} of {args.rounds}: local loop, then a new process")
            best = min(best, *(local_pass() for _ in range(PASSES)))
            res.children.append(run_child(client, args.files, args.batch, PASSES))
    finally:
        os.close(dfd)
    res.local_rate = len(indices) / best

    for r in range(args.rounds):
        step(f"(2c) round {r + 1} of {args.rounds}: shoal down, a new worker, a new process")
        pages = client.report()["pages"]
        old = client.worker_pid()
        down = [sys.executable, "-m", "shoal", "down"]
        subprocess.run(down, check=True, capture_output=True, cwd=REPO)  # this shoal
        report = client.report()  # this client's next call starts a new worker
        assert report["worker"]["pid"] != old, "the worker was not restarted"
        assert report["pages"] == pages, f"{pages} pages before the restart, {report['pages']}"
        res.restarted.append(run_child(client, args.files, args.batch, 1))


def bench_loader(args, client: shoal.Client, folder: Path, res: Results) -> None:
    """(3): DataLoader epochs, local files and Shoal, alternating; the first untimed."""
    count = min(args.loader_files, args.files) // GROUP * GROUP
    res.loader_files = count
    indices = random.Random(7).sample(range(args.files), count)
    expected = [b"".join(small_bytes(i) for i in g) for g in batched(indices, GROUP)]
    local, ours = LocalGroups(folder, indices), ShoalGroups(indices)
    step(f"(3) DataLoader epoch 1 over {count:,} files: local, then Shoal (checked)")
    loader_epoch(local, expected)
    loader_epoch(ours, expected)
    best = {"local": float("inf"), "shoal": float("inf")}
    for r in range(args.rounds):
        step(f"(3) DataLoader epoch {r + 2}: local, then Shoal")
        best["local"] = min(best["local"], loader_epoch(local))
        before = client.report()
        best["shoal"] = min(best["shoal"], loader_epoch(ours))
        after = client.report()
        cache_only(before, after)
        res.loader_requests = requests_between(before, after)  # the last epoch's
    res.loader_local = count / best["local"]
    res.loader_shoal = count / best["shoal"]


def bench_mixed_space(args, root: Path, allowed: dict, res: Results) -> None:
    """(4) for the 1 to 64 KiB files: loaded alone into a second, empty home."""
    folder = root / "mixed"
    total = make_mixed(folder, args.mixed_files)
    step(f"(4) {args.mixed_files:,} files of 1 to 64 KiB into an empty cache")
    with TemporaryHome("shoal-small-", config=allowed), shoal.Client() as client:
        client.mount(MIXED, folder.as_uri())
        done = client.load(MIXED)
        assert done.bytes_done == total, (done, total)
        res.space["1 to 64 KiB"] = tier_space(client.report())


def bench_disk_tier(args, folder: Path, allowed: dict, res: Results) -> None:
    """(2d): the warm files of (2a) cached on a disk tier alone (a second home with no MEM
    tier), read by new processes."""
    step("(2d) every 7th file cached on a disk tier alone (no MEM tier), then new processes")
    with (
        TemporaryHome("shoal-small-", config={**allowed, "mem_capacity": 0}),
        shoal.Client() as client,
    ):
        client.mount(SMALL, folder.as_uri())
        bufs = slots(args.batch)
        for b in batched(list(range(0, args.files, EVERY)), args.batch):
            client.read_many_into([(bufs[k], f"{SMALL}/{small_name(i)}") for k, i in enumerate(b)])
        assert "MEM" not in client.report()["tiers"]
        for _ in range(args.rounds):
            res.on_disk.append(run_child(client, args.files, args.batch, 1))


def fill_table(args, res: Results, table: Table) -> None:
    n = res.n
    sec = (
        f"(1), (2) warm reads of {res.seventh:,} of the {n:,} files (every 7th), "
        f"{FILE_BYTES} B each, into reused buffers"
    )
    table.add(
        sec,
        f"(1) local: python loop, os.open + os.preadv + os.close (best of "
        f"{args.rounds * PASSES} passes)",
        res.local_rate,
        "files/s",
        "page cache warm",
    )
    first = max(c.rates[0] for c in res.children)
    third = max(c.rates[-1] for c in res.children)
    again = max(c.rates[0] for c in res.restarted)
    on_disk = max(c.rates[0] for c in res.on_disk)
    rounds = f"best of {args.rounds} processes" if args.rounds > 1 else "one process"
    how = f"read_many_into, {args.batch} a batch, {rounds}"
    table.add(
        sec,
        f"(2a) shoal: a new process, first pass ({how})",
        first,
        "files/s",
        "timed from its first read: the connection included",
    )
    table.add(sec, f"(2b) shoal: the same process, pass {PASSES}", third, "files/s")
    table.add(
        sec,
        "(2c) shoal: a new process after a worker restart, first pass",
        again,
        "files/s",
        "after shoal down; a new worker started, the cache kept",
    )
    table.add(
        sec,
        "(2d) shoal: a new process, first pass, the files on a disk tier",
        on_disk,
        "files/s",
        "a home with no MEM tier: pages read with pread",
    )
    for label, runs in (("(2a)", res.children), ("(2c)", res.restarted), ("(2d)", res.on_disk)):
        counts = sorted({c.requests for c in runs})
        per_k = 1000 * min(counts) / res.seventh
        shown = " or ".join(f"{c:,}" for c in counts)
        table.add(
            sec,
            f"{label} requests to the worker, first pass",
            per_k,
            "per 1k files",
            f"{shown} requests for {res.seventh:,} files, from process start",
        )
    table.ratio(sec, "(2a) new process, first pass / local", first, res.local_rate, 1.0)
    table.ratio(sec, f"(2b) new process, pass {PASSES} / local", third, res.local_rate, 1.3)
    table.ratio(sec, "(2c) after a worker restart, first pass / local", again, res.local_rate, 0.8)
    table.ratio(sec, "(2d) disk tier, new process, first pass / local", on_disk, res.local_rate)

    sec = (
        f"(3) torch DataLoader epoch, 4 workers (not persistent), {res.loader_files:,} warm "
        f"files, {GROUP} per item"
    )
    epochs = f"epochs 2 to {args.rounds + 1}, best" if args.rounds > 1 else "epoch 2"
    table.add(sec, f"local files, python loop ({epochs})", res.loader_local, "files/s")
    table.add(
        sec, f"shoal read_many_into, a client per worker ({epochs})", res.loader_shoal, "files/s"
    )
    table.add(
        sec,
        "requests to the worker, one epoch",
        1000 * res.loader_requests / res.loader_files,
        "per 1k files",
        f"{res.loader_requests:,} requests",
    )
    table.ratio(sec, "(3) shoal / local", res.loader_shoal, res.loader_local, 1.0)

    sec = "(4) space: bytes cached / bytes filled, MEM tier"
    for what, target in (("100 B", 0.5), ("1 to 64 KiB", 0.9)):
        tier, cached, filled, basis = res.space[what]
        note = f"{basis} (no filled_bytes reported)" if basis != "filled_bytes" else basis
        table.add(sec, f"{what} files: cached", cached / MiB, "MiB", f"tier {tier}")
        table.add(sec, f"{what} files: filled", filled / MiB, "MiB", note)
        table.ratio(sec, f"(4) {what} files: cached / filled", cached, filled, target)

    sec = f"(5) worker memory per cached file, {n:,} files of {FILE_BYTES} B"
    rss, half = res.rss, res.half_files
    table.add(sec, "VmRSS, a fresh worker, nothing cached", rss["fresh"]["VmRSS"] / MiB, "MiB")
    table.add(sec, f"VmRSS, {half:,} files cached", rss["half"]["VmRSS"] / MiB, "MiB")
    table.add(sec, f"VmRSS, {n:,} files cached", rss["all"]["VmRSS"] / MiB, "MiB")

    def per_file(key: str, start: str, files: int) -> float:
        return (rss["all"][key] - rss[start][key]) / files

    table.add(
        sec,
        "(5) VmRSS growth per cached file, fresh to all cached",
        per_file("VmRSS", "fresh", n),
        "B/file",
        f"target <= 300 B at 10M files (measured at {n:,}); RssAnon "
        f"{per_file('RssAnon', 'fresh', n):.0f} B/file",
    )
    table.add(
        sec,
        f"    the same from {half:,} to {n:,} files cached",
        per_file("VmRSS", "half", n - half),
        "B/file",
        f"the worker's fixed costs left out; RssAnon "
        f"{per_file('RssAnon', 'half', n - half):.0f} B/file",
    )

    sec = f"(6) cold: {n:,} files of {FILE_BYTES} B, page cache dropped, into an empty cache"
    table.add(
        sec,
        "shoal Client.load, 2 calls of 10 directories (Python API)",
        res.load_rate,
        "files/s",
        res.load_note,
    )
    table.add(
        sec,
        f"engine.read_files, {args.batch} paths a batch",
        res.read_files_rate,
        "files/s",
        res.cold_note,
    )
    table.ratio(sec, "(6) Client.load / engine.read_files", res.load_rate, res.read_files_rate, 0.8)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child_main(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, help="100-byte files (200000; --quick 20000)")
    p.add_argument("--mixed-files", type=int, help="1 to 64 KiB files (3000; --quick 1000)")
    p.add_argument(
        "--loader-files", type=int, help="files of a DataLoader epoch (50000; --quick 10000)"
    )
    p.add_argument("--rounds", type=int, help="rounds per warm measurement (3; --quick 1)")
    p.add_argument("--batch", type=int, default=256, help="files per read_many_into (256)")
    p.add_argument("--quick", action="store_true", help="smaller sizes, one round")
    args = p.parse_args(argv)
    defaults = (20_000, 1000, 10_000, 1) if args.quick else (200_000, 3000, 50_000, 3)
    for name, value in zip(
        ("files", "mixed_files", "loader_files", "rounds"), defaults, strict=True
    ):
        if getattr(args, name) is None:
            setattr(args, name, value)
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.batch < 1 or args.files < GROUP:
        p.error(f"--batch must be >= 1 and --files >= {GROUP}")

    print("command:", shlex.join([sys.executable, *sys.argv]), flush=True)
    started = time.perf_counter()
    table = Table()
    res = Results(n=args.files)
    root = Path(tempfile.mkdtemp(prefix="shoal-small-", dir=data_root()))
    try:
        folder = root / "small"
        step(f"writing {args.files:,} files of {FILE_BYTES} B in {DIRS} directories")
        make_small(folder, args.files)
        allowed = {"allowed_mounts": [*DEFAULT_ALLOWED_MOUNTS, root.as_uri() + "/"]}
        with TemporaryHome("shoal-small-", config=allowed), shoal.Client() as client:
            client.mount(SMALL, folder.as_uri())
            print(f"Shoal: {describe_worker(client.report())}; local data: {root}", flush=True)
            bench_cold_load(args, client, folder, res)
            bench_warm(args, client, folder, res)
            bench_loader(args, client, folder, res)
        bench_mixed_space(args, root, allowed, res)
        bench_disk_tier(args, folder, allowed, res)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    fill_table(args, res, table)
    table.print_with_total(started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
