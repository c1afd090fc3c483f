"""Region files truncated under a reader's mapping: the pages past the new end fail as
errors for those items only, never with a SIGBUS that kills the reading process; a SIGBUS
that is not the reader's still reaches the handler installed before (faulthandler)."""

from __future__ import annotations

import errno
import mmap
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading

import pytest

from shoal.engine import (
    PageCorruptedError,
    PageStore,
    RegionReader,
    StaleLocationError,
    TierConfig,
    _crc,
)

KiB = 1024
RS = 256 * KiB

pytestmark = pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm")


def payload(key: str, size: int) -> bytes:
    return random.Random(key).randbytes(size)


@pytest.fixture
def shm_path():
    """A file on tmpfs, removed afterwards."""
    fd, path = tempfile.mkstemp(dir="/dev/shm", prefix="shoal-test-")
    os.close(fd)
    try:
        yield path
    finally:
        os.unlink(path)


@pytest.fixture
def mem_store(tmp_path):
    """A store whose MEM tier lives in a directory on tmpfs, removed afterwards."""
    shm = tempfile.mkdtemp(dir="/dev/shm", prefix="shoal-test-")
    try:
        store = PageStore(
            [TierConfig("MEM", os.path.join(shm, "mem"), 4 * RS)],
            tmp_path / "index",
            region_size=RS,
        )
        yield store
        store.close()
    finally:
        shutil.rmtree(shm, ignore_errors=True)


def as_tuple(loc, buf) -> tuple:
    return (loc.tier, loc.region, loc.offset, loc.length, loc.crc32c, loc.generation, buf)


def fill(store: PageStore, count: int = 10, size: int = 60_000) -> list:
    """``count`` pages in the MEM tier, so that two regions hold several pages each; their
    locations, and the payload of each."""
    keys = [f"p{i}" for i in range(count)]
    store.put_many([(k, payload(k, size)) for k in keys], tier="MEM")
    locs = store.locate(keys)
    assert len({loc.region for loc in locs}) >= 2
    return list(zip(locs, [payload(k, size) for k in keys], strict=True))


def adopted_reader(store: PageStore) -> RegionReader:
    """A reader holding descriptors only, as a short-circuit client does."""
    reader = RegionReader()
    path = store.tier_paths["MEM"]
    reader.adopt("MEM", None, os.open(os.path.join(path, "generations"), os.O_RDONLY))
    for name in os.listdir(os.path.join(path, "regions")):
        reader.adopt("MEM", int(name), os.open(os.path.join(path, "regions", name), os.O_RDONLY))
    return reader


def region_file(store: PageStore, region: int) -> str:
    return os.path.join(store.tier_paths["MEM"], "regions", f"{region:06d}")


def truncate(path: str, size: int) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)


def check(pages: list, results: list, bufs: list, cut: int, region: int) -> None:
    """Pages of ``region`` past ``cut`` failed, every other page came back exact."""
    for (loc, data), res, buf in zip(pages, results, bufs, strict=True):
        if loc.region == region and loc.offset + loc.length > cut:
            assert isinstance(res, OSError), res
            assert isinstance(res, (StaleLocationError, PageCorruptedError))
            assert res.errno in (errno.ESTALE, errno.EIO)
        else:
            assert res == loc.length, res
            assert bytes(buf[: loc.length]) == data


# ------------------------------------------------------------------ the native copy


@pytest.mark.parametrize("cut", [0, 300_000])
def test_copies_past_the_end_of_a_truncated_mapping_fail_alone(shm_path, cut):
    data = payload("file", 1 << 20)
    with open(shm_path, "wb") as f:
        f.write(data)
    fd = os.open(shm_path, os.O_RDONLY)
    try:
        mapped = mmap.mmap(fd, len(data), mmap.MAP_SHARED, mmap.PROT_READ)
    finally:
        os.close(fd)
    spans = [
        (0, 4096),
        (250_000, 100_000),
        (600_000, 200_000),
        (4096, 70_000),
        (290_000, 12_000),
        (1_000_000, 48_576),
    ]
    crcs = [_crc.crc32c(data[o : o + n]) for o, n in spans]
    truncate(shm_path, cut)
    # Bytes of the last page of the file that the cut leaves are still readable (zeros).
    readable = -(-cut // mmap.PAGESIZE) * mmap.PAGESIZE

    def batch() -> None:
        bufs = [bytearray(n) for _, n in spans]
        got = _crc.copy_verify_many(
            [(mapped, o, n, b, c) for (o, n), b, c in zip(spans, bufs, crcs, strict=True)]
        )
        for (o, n), b, res in zip(spans, bufs, got, strict=True):
            if o + n <= cut:
                assert res == n and bytes(b) == data[o : o + n]
            elif o + n <= readable:
                assert res == _crc.MISMATCH  # zeros past the end, in the file's last page
            else:
                assert res == _crc.FAULTED

    errors = []

    def loop() -> None:
        try:
            for _ in range(200):
                batch()
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=loop) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    mapped.close()


# ------------------------------------------------------------------ RegionReader


@pytest.mark.parametrize("how", ["zero", "mid-page"])
def test_reads_of_a_truncated_region_fail_per_item(mem_store, how):
    pages = fill(mem_store)
    region = pages[0][0].region
    in_region = [loc for loc, _ in pages if loc.region == region]
    assert len(in_region) >= 3
    middle = in_region[1]
    cut = 0 if how == "zero" else middle.offset + middle.length // 2
    path = region_file(mem_store, region)
    with open(path, "rb") as f:
        original = f.read()
    with adopted_reader(mem_store) as reader:
        bufs = [bytearray(loc.length) for loc, _ in pages]
        got = reader.read_located(
            [as_tuple(loc, b) for (loc, _), b in zip(pages, bufs, strict=True)]
        )
        check(pages, got, bufs, RS, region)
        assert len(reader._maps["MEM", region]) == RS  # mapped whole
        truncate(path, cut)

        # The first read past the new end faults inside the guarded copy.
        bufs = [bytearray(loc.length) for loc, _ in pages]
        got = reader.read_located(
            [as_tuple(loc, b) for (loc, _), b in zip(pages, bufs, strict=True)]
        )
        check(pages, got, bufs, cut, region)
        failed = [res for (loc, _), res in zip(pages, got, strict=True) if loc.region == region]
        assert isinstance(failed[-1], StaleLocationError)
        assert "truncated under the reader" in str(failed[-1])

        for i in range(100):  # both read paths, again and again
            bufs = [bytearray(loc.length) for loc, _ in pages]
            if i % 2:
                got = reader.read_located(
                    [as_tuple(loc, b) for (loc, _), b in zip(pages, bufs, strict=True)]
                )
            else:
                with pytest.raises(OSError) as info:
                    reader.read_many_into(
                        [(loc, b) for (loc, _), b in zip(pages, bufs, strict=True)]
                    )
                got = info.value.results
                assert got[info.value.index] is info.value
            check(pages, got, bufs, cut, region)
        # The reader noticed: its mapping no longer reaches past the end of the file.
        if cut:
            assert len(reader._maps["MEM", region]) == cut
        else:
            assert ("MEM", region) not in reader._maps

        # The file back as it was: mapped whole again, every page reads.
        with open(path, "r+b") as f:
            f.write(original)
        bufs = [bytearray(loc.length) for loc, _ in pages]
        got = reader.read_located(
            [as_tuple(loc, b) for (loc, _), b in zip(pages, bufs, strict=True)]
        )
        check(pages, got, bufs, RS, region)
        assert len(reader._maps["MEM", region]) == RS


def test_two_threads_read_while_a_region_is_truncated_and_restored(mem_store):
    pages = fill(mem_store)
    region = pages[0][0].region
    path = region_file(mem_store, region)
    with open(path, "rb") as f:
        original = f.read()
    stop = threading.Event()
    errors: list[BaseException] = []
    outcomes = {"ok": 0, "failed": 0}

    def read(reader: RegionReader) -> None:
        try:
            while not stop.is_set():
                bufs = [bytearray(loc.length) for loc, _ in pages]
                got = reader.read_located(
                    [as_tuple(loc, b) for (loc, _), b in zip(pages, bufs, strict=True)]
                )
                for (loc, data), res, buf in zip(pages, got, bufs, strict=True):
                    if isinstance(res, OSError):
                        assert loc.region == region, res  # only pages of that region fail
                        outcomes["failed"] += 1
                    else:
                        assert res == loc.length and bytes(buf) == data  # never wrong bytes
                        outcomes["ok"] += 1
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
            stop.set()

    with adopted_reader(mem_store) as reader:
        threads = [threading.Thread(target=read, args=(reader,)) for _ in range(2)]
        for t in threads:
            t.start()
        try:
            rng = random.Random(7)
            for _ in range(60):
                truncate(path, rng.choice([0, rng.randrange(RS)]))
                stop.wait(0.005)
                with open(path, "r+b") as f:
                    f.write(original)
                stop.wait(0.005)
        finally:
            stop.set()
            for t in threads:
                t.join()
    assert errors == []
    assert outcomes["ok"] and outcomes["failed"]


# ------------------------------------------------------------------ other faults

TOUCH = textwrap.dedent(
    """
    import faulthandler, mmap, os, resource, sys
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    from shoal.engine import _crc

    path, order = sys.argv[1], sys.argv[2]
    with open(path, "wb") as f:
        f.write(bytes(1 << 20))
    fd = os.open(path, os.O_RDWR)
    mapped = mmap.mmap(fd, 1 << 20)

    def guarded_fault():
        os.ftruncate(fd, 0)
        got = _crc.copy_verify_many([(mapped, 8192, 4096, bytearray(4096), 0)])
        assert got == [_crc.FAULTED], got
        os.ftruncate(fd, 1 << 20)

    guarded_fault()  # installs the handler
    if order == "after":  # faulthandler behind ours once the next copy puts ours in front
        faulthandler.enable()
        guarded_fault()
    elif order == "after-unchecked":  # faulthandler in front of ours
        faulthandler.enable()
    elif order == "after-disabled":  # faulthandler removed again, ours passes on to it
        faulthandler.enable()
        guarded_fault()
        faulthandler.disable()
    print("survived", flush=True)
    os.ftruncate(fd, 0)
    mapped[8192]  # not a guarded copy: a SIGBUS as before
    print("unreachable", flush=True)
    """
)


@pytest.mark.parametrize(
    "order, dump",
    [
        ("before", True),  # faulthandler enabled first (-X faulthandler), as pytest does
        ("none", False),
        ("after", True),
        ("after-unchecked", True),
        ("after-disabled", False),
    ],
)
def test_a_sigbus_outside_a_guarded_copy_reaches_the_previous_handler(shm_path, order, dump):
    args = [sys.executable, "-X", "faulthandler"] if order == "before" else [sys.executable]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONFAULTHANDLER"}
    proc = subprocess.run(
        [*args, "-c", TOUCH, shm_path, order],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.stdout == "survived\n", proc.stderr
    assert proc.returncode == -signal.SIGBUS, proc.stderr
    assert proc.stderr.count("Fatal Python error: Bus error") == (1 if dump else 0), proc.stderr
    if dump:  # faulthandler's traceback, at the plain touch
        line = 1 + next(i for i, text in enumerate(TOUCH.splitlines()) if "mapped[8192]" in text)
        assert f"line {line}" in proc.stderr, proc.stderr
