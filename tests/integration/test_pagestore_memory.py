"""The memory a worker takes for ten million cached pages, as it builds it when it
restarts with them: the budget is 300 bytes per cached file, all included.

The index is written the fast way, in the store's own format: page records streamed into
one RocksDB table file and ingested, with the records of the regions they are in and
region files of the right size (sparse: they cost no disk). A fresh process then starts a
worker (``Worker``: page store, mount table, metadata cache, table of published files
sized for the pages) on that home, whose recovery builds the in-memory index exactly as
after a restart, publishes every file in its table, fills its metadata cache to its bound,
and reports how much its resident memory grew. (The worker's cache of resolved files,
bounded at 131,072 entries, some 40 MiB, is not filled: 4 bytes a file at this scale.)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import rocksdict

from shoal.engine import PageStore, TierConfig, crc32c
from shoal.engine import _pagestore as pagestore_module

pytestmark = pytest.mark.slow

PAGES = 10_000_000
REGION_SIZE = 64 << 20
SLOT = 64  # one page per slot: pages of 1 to 64 bytes, packed as the store packs them
PER_REGION = REGION_SIZE // SLOT
REGIONS = -(-PAGES // PER_REGION)
CHUNK = 1_000_000  # pages generated at a time
SAMPLES = 64  # pages the measured process looks up and reads
BUDGET = 300  # bytes per page

# Runs in a fresh process: resident memory before and after the store opens, and what it
# finds under the sampled keys.
MEASURE = textwrap.dedent(
    """
    import json, os, sys, time
    import yaml

    def resident(field):
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024

    args = json.loads(sys.argv[1])
    settings = {"cache_dir": args["tier"], "capacity": args["capacity"], "mem_capacity": 0,
                "region_size": args["region_size"]}
    with open(os.path.join(args["home"], "config.yaml"), "w") as f:
        yaml.safe_dump(settings, f)
    os.environ["SHOAL_HOME"] = args["home"]
    from shoal._config import load_config
    from shoal.control._worker import Worker

    config = load_config()
    before = resident("VmRSS")
    began = time.perf_counter()
    worker = Worker(config)
    opened = time.perf_counter() - began
    after = resident("VmRSS")
    store = worker._store
    try:
        # Every file published in the table of published files, as after a load or reads
        fresh = time.monotonic_ns() + 3600 * 10**9
        began = time.perf_counter()
        published = 0
        for start in range(0, args["pages"], 500_000):
            published += worker.publisher.table.publish_many(
                (f"/mount/d{i % 1000:03d}/file-{i:08d}", 64, 1, i // 1048576, i % 1048576 * 64,
                 i & 0xFFFFFFFF, 1, fresh)
                for i in range(start, min(start + 500_000, args["pages"]))
            )
        publishing = time.perf_counter() - began
        with_table = resident("VmRSS")
        # and the metadata cache filled to its bound with the stats of files
        from shoal.control.ufs import ObjectInfo
        metadata = worker.files.metadata
        i = 0
        while metadata.bytes < metadata._max_bytes * 0.85:
            path = f"/mount/d{i % 1000:03d}/file-{i:08d}"
            info = ObjectInfo(path[7:], 64, f"{1700000000000000000 + i}-64", 1.7e9)
            metadata.put_stat(path, info, 3600)
            i += 1
        full = resident("VmRSS")
        keys = [bytes.fromhex(k) for k in args["keys"]]
        locations = [
            None if loc is None else [loc.region, loc.offset, loc.length, loc.crc32c]
            for loc in store.locate(keys)
        ]
        reads = []
        for key, loc in zip(keys, locations):
            buf = bytearray(64)
            n = store.get_into(key, buf)
            reads.append([n, not any(buf)])
        usage = store.usage()["SSD"]
        result = {
            "before": before, "after": after, "peak": resident("VmHWM"), "opened": opened,
            "pages": len(store), "usage_pages": usage.pages, "live_bytes": usage.live_bytes,
            "locations": locations, "reads": reads,
            "published": published, "publishing": publishing, "with_table": with_table,
            "full": full, "stats": len(metadata),
        }
    finally:
        worker.close()
    print(json.dumps(result))
    """
)


def build_index(root, rng: np.random.Generator) -> tuple[TierConfig, dict]:
    """Write an index of PAGES pages: 20-byte page keys (a 16-byte file id, page 0), in
    increasing order so that they stream into one table file; returns the tier and the
    sampled pages, key (hex) -> [region, offset, length, crc32c]."""
    tier = TierConfig("SSD", root / "ssd", REGIONS * REGION_SIZE)
    index = root / "index"
    PageStore([tier], index, region_size=REGION_SIZE).close()  # directories, format record
    for number in range(REGIONS):
        fd = os.open(tier.path + f"/regions/{number:06d}", os.O_RDWR | os.O_CREAT, 0o600)
        os.ftruncate(fd, REGION_SIZE)
        os.close(fd)

    page = pagestore_module._PAGE
    code = pagestore_module._TIER_CODES["SSD"]
    record = np.dtype(
        [
            ("tier", "u1"), ("region", "<u4"), ("generation", "<u8"), ("offset", "<u8"),
            ("length", "<u8"), ("crc", "<u4"), ("flags", "u1"),
        ]
    )  # fmt: skip
    assert record.itemsize == page.size
    # Region files are holes: each page reads as zeros, with the crc32c of zeros.
    zero_crc = np.array([crc32c(bytes(n)) for n in range(SLOT + 1)], dtype=np.uint32)
    sampled = set(rng.choice(PAGES, SAMPLES, replace=False).tolist())
    samples = {}
    sst = str(root / "pages.sst")
    writer = rocksdict.SstFileWriter(rocksdict.Options(raw_mode=True))
    writer.open(sst)
    put = writer.__setitem__
    ksize = 1 + 20
    for start in range(0, PAGES, CHUNK):
        stop = min(start + CHUNK, PAGES)
        i = np.arange(start, stop, dtype=np.uint64)
        keys = np.empty((stop - start, ksize), dtype=np.uint8)
        keys[:, 0] = pagestore_module._PAGE_PREFIX[0]
        # File ids that increase with i (i in the high bytes, random below), then page 0.
        high = (i << np.uint64(24)) | rng.integers(0, 1 << 24, stop - start, dtype=np.uint64)
        keys[:, 1:9] = high.astype(">u8").view(np.uint8).reshape(-1, 8)
        keys[:, 9:17] = rng.integers(0, 256, (stop - start, 8), dtype=np.uint8)
        keys[:, 17:] = 0
        records = np.zeros(stop - start, dtype=record)
        records["tier"] = code
        records["region"] = i // PER_REGION
        records["offset"] = i % PER_REGION * SLOT
        lengths = rng.integers(1, SLOT + 1, stop - start)
        records["length"] = lengths
        records["crc"] = zero_crc[lengths]
        kb, vb = keys.tobytes(), records.tobytes()
        for j in range(stop - start):
            put(kb[j * ksize : (j + 1) * ksize], vb[j * page.size : (j + 1) * page.size])
        for n in sampled.intersection(range(start, stop)):
            r = records[n - start]
            samples[kb[(n - start) * ksize + 1 : (n - start + 1) * ksize].hex()] = [
                int(r["region"]), int(r["offset"]), int(r["length"]), int(r["crc"])
            ]  # fmt: skip
    writer.finish()

    db = rocksdict.Rdict(str(index), rocksdict.Options(raw_mode=True))
    try:
        ingest = rocksdict.IngestExternalFileOptions()
        ingest.set_move_files(True)  # linked into the index, not copied
        db.ingest_external_file([sst], ingest)
        batch = rocksdict.WriteBatch(raw_mode=True)
        for number in range(REGIONS):
            fill = min(PER_REGION, PAGES - number * PER_REGION) * SLOT
            batch.put(
                pagestore_module._REGION_PREFIX + bytes((code,)) + number.to_bytes(4, "big"),
                pagestore_module._REGION.pack(
                    0, pagestore_module._SEALED, pagestore_module._NORMAL, fill
                ),
            )
        db.write(batch)
    finally:
        db.close()
    return tier, samples


@pytest.mark.timeout(300)
def test_a_worker_with_ten_million_small_files_takes_at_most_300_bytes_each(tmp_path):
    began = time.perf_counter()
    try:
        tier, samples = build_index(tmp_path, np.random.default_rng(10))
        built = time.perf_counter() - began
        args = {
            "pages": PAGES,
            "home": str(tmp_path),
            "tier": tier.path,
            "capacity": tier.capacity,
            "index": str(tmp_path / "index"),
            "region_size": REGION_SIZE,
            "keys": list(samples),
        }
        proc = subprocess.run(
            [sys.executable, "-c", MEASURE, json.dumps(args)],
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
    finally:
        for name in ("index", "ssd", "meta"):  # 400 MB that pytest would keep
            shutil.rmtree(tmp_path / name, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    index = (result["after"] - result["before"]) / PAGES
    per_file = (result["full"] - result["before"]) / PAGES
    print(
        f"\n{PAGES:,} files of one page: index built in {built:.1f} s, recovered in "
        f"{result['opened']:.1f} s, published in {result['publishing']:.1f} s; resident "
        f"memory per file: {index:.0f} B for the page index, "
        f"{(result['with_table'] - result['after']) / PAGES:.0f} B for the table of published "
        f"files, {(result['full'] - result['with_table']) / PAGES:.0f} B for the metadata "
        f"cache at its bound ({result['stats']:,} entries); {per_file:.0f} B in all "
        f"(peak {result['peak'] / 2**20:,.0f} MiB)"
    )
    assert result["pages"] == result["usage_pages"] == PAGES
    assert result["published"] == PAGES
    assert result["locations"] == list(samples.values())
    assert result["reads"] == [[length, True] for _, _, length, _ in samples.values()]
    assert per_file <= BUDGET, f"{per_file:.0f} bytes per cached file, over {BUDGET}"
