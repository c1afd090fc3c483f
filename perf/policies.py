"""Policy benchmarks: what a pin keeps cached through a scan, and what enforcing policies
costs on the warm read path, in one table of ratios.

    python perf/policies.py [--tier-mib 256] [--files 20000] [--reps 7] [--quick]

(1) a pinned hot set under a scan: a worker whose pages live in a MEM tier of
``--tier-mib`` (regions of 2 MiB, pages of 256 KiB; the SSD tier every worker has is one
region) caches a hot set of one-page files, 20% of the tier, loaded before the scan. Then
files of 5x the tier, each read once, are scanned in batches of 32 with
``Client.read_many_into``; after each batch a batch of hot files is read, about five passes
over the hot set in all, picked two ways: at random (the same draws in every run), and in
turn, cycling through the hot set, so that a hot file comes back after about the tier's
size of scanned files. The hot set's hit ratio is 1 - the bytes the worker fetched from the
under-store while the hot batches were read (its ``ufs_bytes``) / the bytes of the hot
batches; measured with no policy and with ``pin=True`` on the hot set, each run on a worker
of its own with an empty cache. Pinned pages take at most half of a tier: 20% fits.

(2) the cost of enforcement on the warm read path: ``--files`` files of 4 KiB in 20
directories, cached, read in epochs of ``read_many_into`` batches of 256 into reused,
pre-faulted buffers, with no policy and with 100: one on the dataset, 20 on its
directories, 30 beside its files in those directories and 49 on sibling prefixes of the
mount. Those covering the files set the mount's own ``metadata_ttl`` and ``read_ahead``, so
that both sides read the same way and only the policy lookups differ. Two readers: a
client as a training loop keeps it (its metadata cached for 10 s), and a client with
``metadata_ttl=0``, whose every batch asks the worker. Two rounds in opposite orders
(none then 100, 100 then none), each side and reader an untimed epoch (every byte checked)
then ``--reps`` timed ones; the median of each side's timed epochs is shown. The policies
are set and removed between the sides, and the worker left to finish what a change sets
off in the background (its CPU time quiet for 0.5 s) before the next epoch; the calls'
wall time and the worker's CPU time from the first call until it is idle are shown too.

Every number comes from this one run, on temporary Shoal homes with their own workers (and
their MEM tiers on /dev/shm), torn down at the end; the data sits on ``file://`` mounts in
a temporary directory on the repository's disk. Every file (1) reads has its size and the
number stamped in it checked; the warm epochs of (2) read nothing from the under-store
(checked).
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

# numpy's BLAS threads spin after use and would steal a core from the measurement.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from _common import KiB, MiB, Table, data_root, describe_worker, timed  # noqa: E402
from small_files import batched, cache_only, requests_between, slots, step  # noqa: E402

import shoal  # noqa: E402
from shoal._config import DEFAULT_ALLOWED_MOUNTS  # noqa: E402
from shoal._testing import TemporaryHome  # noqa: E402
from shoal.control._fetch import PINNED_SHARE  # noqa: E402
from shoal.control._namespace import split_mount_options  # noqa: E402

# (1) the scan
SCAN = "/scan"  # mount of the hot set and the scanned files
HOT = f"{SCAN}/hot"
PAGE = 256 * KiB  # page size of (1)'s worker, and the size of each of its files
REGION = 2 * MiB
HOT_SHARE = 0.2  # of the MEM tier
SCAN_TIMES = 5  # the scan reads this many times the MEM tier
SCAN_BATCH = 32
HOT_PASSES = 5  # hot files read during the scan, in passes over the hot set
#: Policies on the hot set, one run each; a label and the fields set (None: no policy).
HOT_POLICIES: tuple[tuple[str, dict | None], ...] = (
    ("no policy", None),
    ("pin=True", {"pin": True}),
)

# (2) the warm epochs
DATA_MOUNT = "/pol"
DATA = f"{DATA_MOUNT}/data"
SMALL = 4 * KiB
DIRS = 20
BATCH = 256
ROUNDS = 4  # sides alternate in order: a drift of the machine weighs on both alike
QUIET = 0.5  # seconds of (almost) no CPU that make a worker idle


def step_of(part: str) -> Callable[[str], None]:
    return lambda text: step(f"({part}) {text}")


def write_files(folder: Path, names: list[str], content: Callable[[int], bytes]) -> None:
    """File ``names[i]`` under ``folder`` holds ``content(i)``; directories made first."""
    for d in sorted({os.path.dirname(n) for n in names} - {""}):
        (folder / d).mkdir(parents=True, exist_ok=True)
    dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i, name in enumerate(names):
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=dfd)
            os.write(fd, content(i))
            os.close(fd)
    finally:
        os.close(dfd)


# --------------------------------------------------------------------- (1) pin under a scan


def stamp(number: int) -> bytes:
    return number.to_bytes(8, "little")


@dataclass
class ScanSet:
    """The files of (1): hot ones numbered from 0, scanned ones from ``hot``."""

    folder: Path
    hot: int
    scanned: int

    def path(self, number: int) -> str:
        if number < self.hot:
            return f"{HOT}/h{number:06d}.bin"
        return f"{SCAN}/cold/c{number:06d}.bin"


def make_scan_set(folder: Path, tier: int) -> ScanSet:
    """One-page files, each its number stamped on the same random page."""
    hot, scanned = int(HOT_SHARE * tier) // PAGE, SCAN_TIMES * tier // PAGE
    block = os.urandom(PAGE)
    files = ScanSet(folder, hot, scanned)
    names = [files.path(n)[len(SCAN) + 1 :] for n in range(hot + scanned)]
    write_files(folder, names, lambda n: stamp(n) + block[8:])
    return files


def read_checked(client: shoal.Client, bufs: list[memoryview], files: ScanSet, numbers) -> None:
    items = [(bufs[k], files.path(n), 0) for k, n in enumerate(numbers)]
    for n, size, (view, _, _) in zip(numbers, client.read_many_into(items), items, strict=True):
        assert size == PAGE and view[:8] == stamp(n), f"{files.path(n)} read wrong"


@dataclass
class ScanRun:
    """What one run of (1) measured."""

    asked: int  # bytes of hot files read during the scan
    fetched: int  # of them, bytes fetched from the under-store
    pinned: int  # bytes pinned in the MEM tier at the end
    refused: int  # pins refused (the pinned share was full)
    seconds: float  # the scan and the hot reads

    @property
    def hit_ratio(self) -> float:
        return 1 - self.fetched / self.asked


def drawn(hot: int, size: int) -> Iterator[list[int]]:
    """Batches of ``size`` of the hot files drawn at random, the same draws every run."""
    draws = random.Random(5)
    while True:
        yield draws.sample(range(hot), size)


def in_turn(hot: int, size: int) -> Iterator[list[int]]:
    """Batches of ``size`` of the hot files in turn, cycling through them."""
    for at in itertools.count(0, size):
        yield [(at + k) % hot for k in range(size)]


#: How the hot files of each batch are picked.
HOT_ORDERS = {"at random": drawn, "in turn": in_turn}


def scan_run(
    args, files: ScanSet, allowed: dict, order: str, policy: tuple[str, dict | None], size: int
) -> ScanRun:
    """The hot set loaded, then the scan with a batch of ``size`` hot files after each of
    its batches, on a new worker of its own."""
    label, fields = policy
    say = step_of("1")
    config = {
        **allowed,
        "page_size": PAGE,
        "chunk_size": 4 * PAGE,
        "region_size": REGION,
        "mem_capacity": args.tier_mib * MiB,
        "capacity": REGION,
    }
    with TemporaryHome("shoal-pol-", config=config), shoal.Client() as client:
        client.mount(SCAN, files.folder.as_uri())
        if fields is not None:
            client.set_policy(HOT, **fields)
        client.load(HOT)
        report = client.report()
        tiers = ", ".join(f"{t} {u['capacity'] / MiB:.0f} MiB" for t, u in report["tiers"].items())
        print(
            f"(1) {order}, {label}: worker pid {report['worker']['pid']}, engine "
            f"{report['worker']['engine']}, tiers {tiers}, page {PAGE // KiB} KiB",
            flush=True,
        )
        say(f"hot files {order}, {label}: the hot set loaded, scanning {files.scanned:,} files")
        picks = HOT_ORDERS[order](files.hot, size)
        scan_bufs, hot_bufs = slots(SCAN_BATCH, PAGE), slots(size, PAGE)
        asked = fetched = 0
        start = time.perf_counter()
        for numbers in batched(range(files.hot, files.hot + files.scanned), SCAN_BATCH):
            read_checked(client, scan_bufs, files, numbers)
            before = client.report()["ufs_bytes"]
            read_checked(client, hot_bufs, files, next(picks))
            fetched += client.report()["ufs_bytes"] - before
            asked += size * PAGE
        seconds = time.perf_counter() - start
        final = client.report()
    return ScanRun(
        asked, fetched, final["tiers"]["MEM"]["pinned_bytes"], final["pins_refused"], seconds
    )


def bench_scan(args, root: Path, allowed: dict, table: Table) -> None:
    tier = args.tier_mib * MiB
    step_of("1")(f"writing {SCAN_TIMES + HOT_SHARE:.1f}x {args.tier_mib} MiB in files of 256 KiB")
    files = make_scan_set(root / "scan", tier)
    batches = -(-files.scanned // SCAN_BATCH)
    size = min(files.hot, max(1, round(HOT_PASSES * files.hot / batches)))
    for order in HOT_ORDERS:
        runs = {p[0]: scan_run(args, files, allowed, order, p, size) for p in HOT_POLICIES}
        sec = (
            f"(1) hot set of {files.hot:,} files ({files.hot * PAGE / MiB:.0f} MiB, "
            f"{HOT_SHARE:.0%} of a {args.tier_mib} MiB MEM tier) read during a scan of "
            f"{files.scanned:,} files ({SCAN_TIMES}x the tier): {size} hot files {order} "
            f"after every {SCAN_BATCH} scanned"
        )
        for label, run in runs.items():
            note = (
                f"{run.fetched / MiB:.0f} of {run.asked / MiB:.0f} MiB of hot reads fetched; "
                f"{run.seconds:.1f} s"
            )
            if run.pinned or run.refused:
                note += (
                    f"; {run.pinned / MiB:.0f} MiB pinned (at most {PINNED_SHARE:.0%} of the "
                    f"tier), {run.refused:,} pins refused"
                )
            table.add(sec, f"{label}: hot set hit ratio", 100 * run.hit_ratio, "%", note)
        (base, _), *others = HOT_POLICIES
        for label, _ in others:
            what = f"(1) hot files {order}: hit ratio, {label} / {base}"
            table.ratio(sec, what, runs[label].hit_ratio, runs[base].hit_ratio)


# --------------------------------------------------------------------- (2) enforcement


def small_name(i: int) -> str:
    """File ``i`` of (2), relative to its mount."""
    return f"{DATA[len(DATA_MOUNT) + 1 :]}/d{i % DIRS:02d}/f{i:07d}.bin"


def small_bytes(i: int) -> bytes:
    return (b"%07d " % i * (SMALL // 8 + 1))[:SMALL]


def hundred_policies() -> dict[str, dict]:
    """Path -> fields: 1 on the dataset, 20 on its directories, 30 beside its files and 49
    on sibling prefixes; those covering files set the mount's own values."""
    own = split_mount_options({})[0]
    same = {"metadata_ttl": own["metadata_ttl"], "read_ahead": own["read_ahead"]}
    others = ({"metadata_ttl": "30s"}, {"read_ahead": 8}, {"replicas": 1}, {"tier": "MEM"})
    rules = {DATA: same}
    rules.update({f"{DATA}/d{d:02d}": {"read_ahead": same["read_ahead"]} for d in range(DIRS)})
    rules.update({f"{DATA}/d{k % DIRS:02d}/other{k:02d}": others[k % 4] for k in range(30)})
    rules.update({f"{DATA_MOUNT}/sibling{k:02d}": others[k % 4] for k in range(49)})
    assert len(rules) == 100
    return rules


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of a process so far."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def settle(pid: int, timeout: float = 60.0) -> None:
    """Wait until the worker ``pid`` is idle: a policy change sets off work in the
    background (pins of the files it covers brought up to date, say), which would take a
    core from the epochs after it."""
    deadline = time.monotonic() + timeout
    last = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(QUIET)
        now = cpu_seconds(pid)
        if now - last <= 0.04 * QUIET:
            return
        last = now
    raise TimeoutError(f"the worker was still busy {timeout:.0f} s after a policy change")


def bench_enforcement(args, root: Path, allowed: dict, table: Table) -> None:
    say = step_of("2")
    n = args.files
    folder = root / "small"
    say(f"writing {n:,} files of 4 KiB in {DIRS} directories")
    write_files(folder, [small_name(i) for i in range(n)], small_bytes)
    rules = hundred_policies()
    bufs = slots(BATCH, SMALL)
    batches = [
        [(bufs[k], f"{DATA_MOUNT}/{small_name(i)}", 0) for k, i in enumerate(b)]
        for b in batched(range(n), BATCH)
    ]

    def epoch(reader: shoal.Client) -> None:
        for items in batches:
            reader.read_many_into(items)

    def checked_epoch(reader: shoal.Client) -> None:
        for b, items in zip(batched(range(n), BATCH), batches, strict=True):
            for i, size, (view, _, _) in zip(b, reader.read_many_into(items), items, strict=True):
                assert size == SMALL and view[:size] == small_bytes(i), f"file {i} read wrong"

    sides = ("no policy", "100 policies")
    readers = ("one client", "client metadata_ttl=0")
    seconds = {(s, r): [] for s in sides for r in readers}
    requests = {(s, r): 0 for s in sides for r in readers}
    changes: dict[str, list[tuple[float, float]]] = {"set": [], "removed": []}
    with (
        TemporaryHome("shoal-pol-", config=allowed),
        shoal.Client() as client,
        shoal.Client(metadata_ttl=0) as asking,
    ):
        client.mount(DATA_MOUNT, folder.as_uri())
        print(f"(2) Shoal: {describe_worker(client.report())}", flush=True)
        say(f"loading {n:,} files")
        client.load(DATA)
        pid = client.report()["worker"]["pid"]

        def change(what: str, call: Callable[[str], object]) -> None:
            """``call`` on every path of ``rules``, the worker left to settle after; its
            wall seconds and the worker's CPU seconds until idle kept."""
            cpu, start = cpu_seconds(pid), time.perf_counter()
            for path in rules:
                call(path)
            wall = time.perf_counter() - start
            settle(pid)
            changes[what].append((wall, cpu_seconds(pid) - cpu))

        settle(pid)
        for r in range(ROUNDS):
            for side in sides if r % 2 == 0 else sides[::-1]:
                if side == sides[1]:
                    change("set", lambda path: client.set_policy(path, **rules[path]))
                for reader, who in zip((client, asking), readers, strict=True):
                    say(f"round {r + 1} of {ROUNDS}: {side}, {who}: {args.reps} epochs")
                    checked_epoch(reader)
                    before = client.report()
                    for _ in range(args.reps):
                        seconds[side, who].append(timed(lambda c=reader: epoch(c)))
                    after = client.report()
                    cache_only(before, after)
                    requests[side, who] += requests_between(before, after)
                if side == sides[1]:
                    change("removed", client.remove_policy)
                    assert client.policies() == []

    epochs = ROUNDS * args.reps
    sec = (
        f"(2) warm epochs over {n:,} files of 4 KiB, read_many_into {BATCH} a batch, "
        f"median of {epochs} epochs"
    )
    for who in readers:
        rates = {}
        for side in sides:
            rates[side] = n / statistics.median(seconds[side, who])
            note = f"{requests[side, who]:,} requests to the worker in {epochs} epochs"
            table.add(sec, f"{who}: {side}", rates[side], "files/s", note)
        table.ratio(sec, f"(2) {who}: 100 policies / none", rates[sides[1]], rates[sides[0]], 0.95)
    for what, done in changes.items():
        cpus = ", ".join(f"{cpu:.2f}" for _, cpu in done)
        table.add(
            sec,
            f"the 100 policies {what}: the calls",
            statistics.median(wall for wall, _ in done),
            "s",
            f"worker CPU from the first call until idle: {cpus} s",
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tier-mib", type=int, help="(1) the MEM tier, MiB (256; --quick 128)")
    p.add_argument("--files", type=int, help="(2) files of 4 KiB (20000; --quick 5000)")
    p.add_argument("--reps", type=int, help="(2) timed epochs per side and round (7; --quick 3)")
    p.add_argument("--quick", action="store_true", help="a smaller tier, fewer files and epochs")
    args = p.parse_args(argv)
    defaults = (128, 5000, 3) if args.quick else (256, 20_000, 7)
    for name, value in zip(("tier_mib", "files", "reps"), defaults, strict=True):
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.tier_mib * MiB < 16 * REGION:
        p.error(f"--tier-mib must be >= {16 * REGION // MiB}")
    if args.files < BATCH or args.reps < 1:
        p.error(f"--files must be >= {BATCH} and --reps >= 1")

    print("command:", shlex.join([sys.executable, *sys.argv]), flush=True)
    started = time.perf_counter()
    table = Table()
    root = Path(tempfile.mkdtemp(prefix="shoal-pol-", dir=data_root()))
    try:
        allowed = {"allowed_mounts": [*DEFAULT_ALLOWED_MOUNTS, root.as_uri() + "/"]}
        print(f"local data: {root}", flush=True)
        bench_scan(args, root, allowed, table)
        bench_enforcement(args, root, allowed, table)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    table.print_with_total(started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
