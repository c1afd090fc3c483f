"""Engine benchmarks against local baselines, printed as one table of results and ratios.

    python perf/engine.py [--size-gib 1] [--files 20000] [--rounds 5]

Every number in the table comes from this one run. Each measurement is repeated ``--rounds``
times, alternating the contenders (the order rotating each round) so that they share whatever
else the machine is doing, and the best round is kept. Data lives in a temporary directory on
the repository's disk and is removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# numpy's BLAS threads spin after use and would steal a core from the measurement.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from _common import GiB, MiB, Table, aligned, best_of, data_root  # noqa: E402

from shoal import engine  # noqa: E402
from shoal.engine import _crc, _engine  # noqa: E402

DROP_CACHES = "/proc/sys/vm/drop_caches"


def can_drop_caches() -> bool:
    return os.geteuid() == 0 and os.access(DROP_CACHES, os.W_OK)


def drop_caches() -> None:
    os.sync()
    with open(DROP_CACHES, "w") as f:
        f.write("3\n")


# ---- hot sequential read -----------------------------------------------------------------


def make_file(path: Path, size: int) -> None:
    block = np.random.default_rng(0).integers(0, 256, min(size, 64 * MiB), dtype=np.uint8)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, block.nbytes)
            f.write(block[:n].data)
            left -= n


def warm(path: Path, request: int) -> None:
    buf = aligned(request)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass


def fio(path: Path, size: int, request: int, depth: int, ioengine: str, loops: int):
    """GB/s of a buffered sequential read by fio, or None without fio."""
    exe = shutil.which("fio")
    if exe is None:
        return None
    cmd = [
        exe,
        "--name=seq",
        f"--filename={path}",
        "--rw=read",
        f"--bs={request}",
        f"--iodepth={depth}",
        f"--ioengine={ioengine}",
        f"--size={size}",
        f"--loops={loops}",
        "--invalidate=0",  # keep the page cache hot (fio drops it by default)
        "--iomem_align=4096",  # page-aligned buffers, as ours
        "--output-format=json",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    job = json.loads(out[out.index("{") :])["jobs"][0]
    return job["read"]["bw_bytes"] / 1e9


def bench_sequential(args, root: Path, table: Table) -> None:
    size = int(args.size_gib * GiB) // args.request * args.request
    request, batch = args.request, args.batch
    path = root / "sequential"
    make_file(path, size)
    warm(path, request)
    fd = os.open(path, os.O_RDONLY)
    buf = aligned(request * batch)
    view = memoryview(buf)
    starts = range(0, size, request * batch)
    batches = [
        [
            (fd, s + i * request, min(request, size - s - i * request), buf, i * request)
            for i in range(batch)
            if s + i * request < size
        ]
        for s in starts
    ]
    uring = engine.get_backend("io_uring") if _engine.io_uring_available() else None
    threads = engine.get_backend("threads")
    # Expected crc32c of every request, as the page store keeps them.
    sums = []
    for reqs in batches:
        engine.read_batch(reqs, engine=threads)
        sums.append([engine.crc32c(view[r[4] : r[4] + r[2]]) for r in reqs])

    # The same batches into a buffer 16 bytes off a cache line, as numpy's own allocations
    # often are: the kernel's copy runs at about half speed there.
    loose = aligned(request * batch + 64)[16 : 16 + request * batch]
    loose_batches = [[(*r[:3], loose, r[4]) for r in reqs] for reqs in batches]

    def run(eng, verify=False, reqs_list=batches):
        def go():
            for reqs, expected in zip(reqs_list, sums, strict=True):
                engine.read_batch(reqs, checksums=expected if verify else None, engine=eng)

        return go

    def readinto(dest=view):
        def go():
            with open(path, "rb", buffering=0) as f:
                while True:
                    for i in range(batch):
                        if not f.readinto(dest[i * request : (i + 1) * request]):
                            return

        return go

    main = "engine io_uring" if uring is not None else "engine threads"
    main_eng = uring if uring is not None else threads
    contenders = {"python readinto": readinto(), "engine threads": run(threads)}
    if uring is not None:
        contenders["engine io_uring"] = run(uring)
    contenders[f"{main} + crc32c"] = run(main_eng, verify=True)
    contenders["python readinto, loose buffer"] = readinto(memoryview(loose))
    contenders[f"{main}, loose buffer"] = run(main_eng, reqs_list=loose_batches)
    contenders[f"{main} + crc32c, loose buffer"] = run(main_eng, True, loose_batches)
    times = best_of(args.rounds, contenders)
    os.close(fd)
    gbs = {name: size / t / 1e9 for name, t in times.items()}
    if not args.no_fio:
        gbs["fio io_uring"] = fio(path, size, request, batch, "io_uring", args.rounds)
        gbs["fio psync"] = fio(path, size, request, 1, "psync", args.rounds)
    path.unlink()

    section = (
        f"hot sequential read, {size / GiB:.2f} GiB file, {request // MiB} MiB requests, "
        f"{batch} per batch, page-aligned buffer"
    )
    notes = {
        "fio io_uring": f"iodepth {batch}, buffered",
        "fio psync": f"one {request // MiB} MiB buffer, buffered",
        f"{main} + crc32c": "every request verified",
        "python readinto, loose buffer": "buffer 16 bytes off a cache line",
    }
    for name, value in gbs.items():
        table.add(section, name, value, "GB/s", notes.get(name, "" if value else "fio not found"))
    baselines = {
        k: v for k, v in gbs.items() if v and not k.startswith("engine") and "loose" not in k
    }
    best_name = max(baselines, key=baselines.get)
    table.ratio(
        section, f"{main} / best baseline ({best_name})", gbs[main], baselines[best_name], 0.9
    )
    table.ratio(section, f"{main} / python readinto", gbs[main], gbs["python readinto"])
    table.ratio(section, f"{main} + crc32c / {main}", gbs[f"{main} + crc32c"], gbs[main], 0.8)
    table.ratio(
        section,
        f"{main} + crc32c / {main}, loose buffer",
        gbs[f"{main} + crc32c, loose buffer"],
        gbs[f"{main}, loose buffer"],
        0.8,
    )


# ---- small files -------------------------------------------------------------------------


def make_files(folder: Path, count: int, nbytes: int) -> list[str]:
    folder.mkdir()
    payload = np.random.default_rng(1).integers(0, 256, nbytes, dtype=np.uint8).tobytes()
    names = [f"{i:06d}" for i in range(count)]
    dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in names:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=dfd)
            os.write(fd, payload)
            os.close(fd)
    finally:
        os.close(dfd)
    return names


def bench_small_files(args, root: Path, table: Table) -> None:
    folder = root / "small"
    nbytes = args.file_kib * 1024
    names = make_files(folder, args.files, nbytes)
    encoded = [n.encode() for n in names]
    batch = args.files_batch
    pool = aligned(nbytes * batch)
    bufs = [pool[i * nbytes : (i + 1) * nbytes] for i in range(batch)]
    views = [memoryview(b) for b in bufs]
    dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    eng = engine.get_backend()

    def loop():
        for start in range(0, len(encoded), batch):
            for name, view in zip(encoded[start : start + batch], views, strict=False):
                fd = os.open(name, os.O_RDONLY, dir_fd=dfd)
                os.preadv(fd, [view], 0)
                os.close(fd)

    def read_files():
        for start in range(0, len(encoded), batch):
            chunk = encoded[start : start + batch]
            engine.read_files(chunk, bufs[: len(chunk)], dir_fd=dfd, engine=eng)

    loop()  # warm: every file in the page cache
    times = best_of(args.rounds, {"python loop": loop, f"engine {eng.name}": read_files})
    section = (
        f"small files, {len(names):,} files of {args.file_kib} KiB, read_files batches of "
        f"{batch} (loop: os.open + os.preadv + os.close)"
    )
    rates = {name: len(names) / t for name, t in times.items()}
    for name, value in rates.items():
        table.add(section, f"hot: {name}", value, "files/s")
    table.ratio(
        section,
        f"hot: engine {eng.name} / python loop",
        rates[f"engine {eng.name}"],
        rates["python loop"],
        1.2,
    )

    if args.no_cold:
        table.add(section, "cold: skipped (--no-cold)", None, "")
    elif not can_drop_caches():
        table.add(section, "cold: skipped, not root", None, "")
    else:
        cold = dict.fromkeys(("python loop", f"engine {eng.name}"), float("inf"))
        for _ in range(args.cold_rounds):
            for name, fn in (("python loop", loop), (f"engine {eng.name}", read_files)):
                drop_caches()
                start = time.perf_counter()
                fn()
                cold[name] = min(cold[name], time.perf_counter() - start)
        cold_rates = {name: len(names) / t for name, t in cold.items()}
        for name, value in cold_rates.items():
            table.add(section, f"cold: {name}", value, "files/s", "after drop_caches")
        table.ratio(
            section,
            f"cold: engine {eng.name} / python loop",
            cold_rates[f"engine {eng.name}"],
            cold_rates["python loop"],
            1.5,
        )
    os.close(dfd)
    shutil.rmtree(folder)


# ---- crc32c ------------------------------------------------------------------------------


def bench_crc(args, table: Table) -> None:
    section = "crc32c, hot buffer, per call"
    data = aligned(4 * MiB)
    data[:] = np.random.default_rng(2).integers(0, 256, data.nbytes, dtype=np.uint8)
    for size in (64 * 1024, 4 * MiB):
        view = data[:size]
        calls = max(1, GiB // size)
        for kernel in _crc.kernels():
            n = calls if kernel != "table" else max(1, calls // 16)

            def go(kernel=kernel, view=view, n=n):
                for _ in range(n):
                    _crc.crc32c_with(kernel, view)

            t = best_of(args.rounds, {kernel: go})[kernel]
            used = " (in use)" if kernel == _crc.kernels()[-1] else ""
            table.add(section, f"{kernel}{used}, {size // 1024} KiB", n * size / t / 1e9, "GB/s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size-gib", type=float, default=1.0, help="sequential file size")
    p.add_argument("--files", type=int, default=20_000, help="number of small files")
    p.add_argument("--file-kib", type=int, default=64, help="size of each small file")
    p.add_argument("--rounds", type=int, default=5, help="rounds per hot measurement")
    p.add_argument("--cold-rounds", type=int, default=1, help="rounds per cold measurement")
    p.add_argument("--request-mib", type=int, default=4, help="sequential request size")
    p.add_argument("--batch", type=int, default=4, help="sequential requests per batch")
    p.add_argument("--files-batch", type=int, default=256, help="files per read_files call")
    p.add_argument("--no-fio", action="store_true", help="skip the fio baselines")
    p.add_argument("--no-cold", action="store_true", help="skip the cold small-file runs")
    p.add_argument("--dir", type=Path, default=None, help="where to put the data")
    args = p.parse_args(argv)
    args.request = args.request_mib * MiB

    print("command:", shlex.join([sys.executable, *sys.argv]))
    root = Path(tempfile.mkdtemp(prefix="shoal-bench-", dir=args.dir or data_root()))
    print(f"data: {root}; engine backend: {engine.backend()}; crc32c kernels: {_crc.kernels()}")
    table = Table()
    started = time.perf_counter()
    try:
        bench_sequential(args, root, table)
        bench_small_files(args, root, table)
        bench_crc(args, table)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(table.render())
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
