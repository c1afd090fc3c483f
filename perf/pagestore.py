"""Page store benchmarks: reads, writes and index lookups, against the raw engine, in one run.

    python perf/pagestore.py [--size-gib 1] [--rounds 3] [--batch-mib 64] [--packing-only]

Two stores are filled, one with 4 MiB pages and one with 64 KiB pages (``--size-gib`` of each),
on the repository's disk. Reads go into pre-faulted, page-aligned buffers reused across
batches, with the page cache hot. The raw engine baseline reads the very same (file, offset,
length) ranges from the region files with ``read_batch``, once without and once with the
crc32c check the page store always makes, so the ratios show what the store itself costs.
Each measurement is repeated ``--rounds`` times, alternating contenders, best round kept.

Packing: stores filled with 100-byte pages and with pages of random sizes from 1 to 64 KiB,
packed (the default ``pack_below``) and each at its own 4 KiB boundary (``pack_below=0``,
the layout before packing); the ratio of bytes cached to bytes filled (``live_bytes /
filled_bytes``) says how much of the space written holds pages.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

# numpy's BLAS threads spin after use and would steal a core from the measurement.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from _common import GiB, KiB, MiB, Table, aligned, best_of, data_root  # noqa: E402

from shoal import engine  # noqa: E402
from shoal.engine import PageStore, TierConfig  # noqa: E402


def raw_write(folder: Path, count: int, page: int, region: int, batches, sources) -> float:
    """Seconds for write_batch to put the same pages at the same offsets of fresh region files."""
    folder.mkdir()
    per_region = region // page
    fds = []
    for r in range(-(-count // per_region)):
        fd = os.open(folder / f"{r:06d}", os.O_RDWR | os.O_CREAT, 0o644)
        os.ftruncate(fd, region)
        fds.append(fd)
    os.sync()
    start = time.perf_counter()
    for b in batches:
        engine.write_batch(
            [
                (fds[i // per_region], i % per_region * page, page, sources[i % len(sources)], 0)
                for i in b
            ]
        )
    elapsed = time.perf_counter() - start
    for fd in fds:
        os.close(fd)
    shutil.rmtree(folder)
    return elapsed


def bench_pages(args, root: Path, page: int, table: Table) -> None:
    count = int(args.size_gib * GiB) // page
    per_batch = max(1, args.batch_mib * MiB // page)
    region = args.region_mib * MiB
    capacity = (count * page // region + 4) * region  # room for everything: no eviction here
    rng = np.random.default_rng(page)
    sources = [rng.integers(0, 256, page, dtype=np.uint8) for _ in range(8)]
    keys = [f"bench/{page}/{i:08d}" for i in range(count)]
    batches = [range(s, min(s + per_batch, count)) for s in range(0, count, per_batch)]
    label = f"{page // MiB} MiB" if page >= MiB else f"{page // KiB} KiB"

    # Writes go to fresh files every round (a fresh store for put_many); the two contenders
    # take turns going first, each after a sync and with the other's files deleted.
    put_raw_time = put_time = float("inf")
    store = None
    for r in range(args.write_rounds):
        for contender in ("raw", "store") if r % 2 == 0 else ("store", "raw"):
            if contender == "raw":
                elapsed = raw_write(root / f"raw-{page}", count, page, region, batches, sources)
                put_raw_time = min(put_raw_time, elapsed)
                continue
            if store is not None:
                store.close()
                shutil.rmtree(root / f"store-{page}")
            folder = root / f"store-{page}"
            store = PageStore(
                [TierConfig("SSD", folder / "ssd", capacity)], folder / "index", region_size=region
            )
            os.sync()
            start = time.perf_counter()
            for b in batches:
                store.put_many([(keys[i], sources[i % len(sources)]) for i in b])
            put_time = min(put_time, time.perf_counter() - start)
    with store:
        pool = aligned(per_batch * page)
        bufs = [pool[j * page : (j + 1) * page] for j in range(per_batch)]
        items = [[(keys[i], bufs[j]) for j, i in enumerate(b)] for b in batches]
        locations = store.locate(keys)
        fds = {loc.path: os.open(loc.path, os.O_RDONLY) for loc in locations}
        raw = [
            [
                (fds[locations[i].path], locations[i].offset, page, bufs[j], 0)
                for j, i in enumerate(b)
            ]
            for b in batches
        ]
        sums = [[locations[i].crc32c for i in b] for b in batches]

        def store_read():
            for batch in items:
                store.get_many_into(batch)

        def raw_read():
            for reqs in raw:
                engine.read_batch(reqs)

        def raw_read_crc():
            for reqs, expected in zip(raw, sums, strict=True):
                engine.read_batch(reqs, checksums=expected)

        store_read()  # warm the page cache and check every page is there
        assert all(n == page for n in store.get_many_into(items[0]))
        times = best_of(
            args.rounds,
            {"store": store_read, "raw": raw_read, "raw+crc": raw_read_crc},
        )
        for fd in fds.values():
            os.close(fd)

        lookups = keys[: min(count, 20000)]
        chunks = [lookups[i : i + 1000] for i in range(0, len(lookups), 1000)]

        def locate():
            for chunk in chunks:
                store.locate(chunk)

        def contains():
            for key in lookups:
                store.contains(key)

        lookup_times = best_of(args.rounds, {"locate": locate, "contains": contains})
        usage = store.usage()["SSD"]

    total = count * page
    section = (
        f"{label} pages: {count:,} pages, {total / GiB:.2f} GiB, batches of {per_batch}, "
        f"{args.region_mib} MiB regions ({usage.regions_used} used)"
    )
    gbs = {name: total / t / 1e9 for name, t in times.items()}
    table.add(
        section, "put_many", total / put_time / 1e9, "GB/s", f"{count / put_time:,.0f} pages/s"
    )
    table.add(
        section,
        "raw engine write_batch",
        total / put_raw_time / 1e9,
        "GB/s",
        "same layout, fresh files",
    )
    table.ratio(section, "put_many / raw engine", put_raw_time, put_time)
    table.add(
        section,
        "get_many_into",
        gbs["store"],
        "GB/s",
        f"{count / times['store']:,.0f} pages/s, crc32c",
    )
    table.add(section, "raw engine read_batch", gbs["raw"], "GB/s", "same ranges, no check")
    table.add(
        section, "raw engine read_batch + crc32c", gbs["raw+crc"], "GB/s", "same ranges and check"
    )
    target = 0.8 if page >= MiB else None
    table.ratio(section, "get_many_into / raw engine", gbs["store"], gbs["raw"], target)
    table.ratio(
        section, "get_many_into / raw engine + crc32c", gbs["store"], gbs["raw+crc"], target
    )
    table.add(
        section, "locate, 1000 keys per call", len(lookups) / lookup_times["locate"], "lookups/s"
    )
    table.add(
        section,
        "contains, one key per call",
        len(lookups) / lookup_times["contains"],
        "lookups/s",
    )


def bench_packing(root: Path, table: Table) -> None:
    rng = np.random.default_rng(0)
    source = memoryview(rng.integers(0, 256, 64 * KiB, dtype=np.uint8))
    workloads = [
        ("100 B pages", 0.5, [100] * 4000),
        ("1-64 KiB pages", 0.9, rng.integers(1, 64 * KiB + 1, 3000).tolist()),
    ]
    section = "packing: live_bytes / filled_bytes (pages shorter than 64 KiB at 64-byte offsets)"
    for label, target, sizes in workloads:
        ratios = {}
        for pack_below in (64 * KiB, 0):
            folder = root / f"packing-{pack_below}"
            # Room for every page at its own 4 KiB boundary: nothing is evicted.
            capacity = (len(sizes) * 4 * KiB + sum(sizes)) // (4 * MiB) * 4 * MiB + 16 * MiB
            with PageStore(
                [TierConfig("SSD", folder / "ssd", capacity)],
                folder / "index",
                region_size=4 * MiB,
                pack_below=pack_below,
            ) as store:
                for start in range(0, len(sizes), 200):
                    store.put_many(
                        [
                            (f"p{i}", source[: sizes[i]])
                            for i in range(start, min(start + 200, len(sizes)))
                        ]
                    )
                usage = store.usage()["SSD"]
                assert usage.pages == len(sizes)
                ratios[pack_below] = usage.live_bytes / usage.filled_bytes
            shutil.rmtree(folder)
        table.ratio(section, f"{label}, packed", ratios[64 * KiB], 1.0, target)
        table.add(
            section,
            f"{label}, each at 4 KiB",
            ratios[0],
            "x",
            f"{len(sizes):,} pages, the layout before packing",
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size-gib", type=float, default=1.0, help="bytes stored per page size")
    p.add_argument("--rounds", type=int, default=9, help="rounds per read measurement")
    p.add_argument("--write-rounds", type=int, default=3, help="rounds per write measurement")
    p.add_argument("--batch-mib", type=int, default=64, help="bytes per put_many / get call")
    p.add_argument("--region-mib", type=int, default=64, help="region size")
    p.add_argument("--dir", type=Path, default=None, help="where to put the stores")
    p.add_argument("--packing-only", action="store_true", help="measure packing alone")
    args = p.parse_args(argv)

    print("command:", shlex.join([sys.executable, *sys.argv]))
    root = Path(tempfile.mkdtemp(prefix="shoal-bench-pagestore-", dir=args.dir or data_root()))
    print(f"data: {root}; engine backend: {engine.backend()}")
    table = Table()
    started = time.perf_counter()
    try:
        for page in () if args.packing_only else (4 * MiB, 64 * KiB):
            bench_pages(args, root, page, table)
            shutil.rmtree(root / f"store-{page}")
        bench_packing(root, table)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(table.render())
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
