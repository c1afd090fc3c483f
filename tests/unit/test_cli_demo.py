"""The demo's parts that need no server: dataset sizes, buffer layout, the training loop."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal._testing import dataset_sizes, object_bytes
from shoal.demo import (
    DataMismatchError,
    EpochResult,
    _layout,
    batch_bytes,
    epoch_order,
    prefaulted,
    run_epoch,
)
from shoal.engine import crc32c

KiB, MiB = 1 << 10, 1 << 20


@given(
    count=st.integers(1, 3000),
    mean=st.floats(0, 1),
    seed=st.integers(0, 2**32 - 1),
)
@settings(max_examples=60, deadline=None)
def test_dataset_sizes_stay_in_bounds_and_add_up(count, mean, seed):
    low, high = 16 * KiB, 8 * MiB
    total = int(low * count + mean * (high - low) * count)
    sizes = dataset_sizes(count, total, low, high, seed=seed)
    assert len(sizes) == count
    assert all(low <= s <= high for s in sizes)
    # Flooring to whole bytes and clipping cost at most a byte per object, plus the
    # bisection's resolution.
    assert abs(sum(sizes) - total) <= count + total * 1e-6
    assert sizes == dataset_sizes(count, total, low, high, seed=seed)


def test_dataset_sizes_spread_on_a_log_scale():
    sizes = np.array(dataset_sizes(2000, 1 << 30))
    assert sizes.min() < 20 * KiB and sizes.max() > 7 * MiB
    assert sizes.sum() == pytest.approx(1 << 30, rel=1e-4)
    # Every power of two between the bounds is represented.
    assert len(set(np.floor(np.log2(sizes)).astype(int))) == 9  # 2**14 to 2**22


@pytest.mark.parametrize(("count", "total"), [(10, 10 * 16 * KiB - 1), (2, 17 * MiB), (0, 1)])
def test_dataset_sizes_refuse_impossible_means(count, total):
    with pytest.raises(ValueError):
        dataset_sizes(count, total)


def test_object_bytes_are_deterministic():
    assert object_bytes(7, 3, 1000) == object_bytes(7, 3, 1000)
    assert object_bytes(7, 3, 1000) != object_bytes(7, 4, 1000)
    assert len(object_bytes(0, 0, 0)) == 0


@given(st.lists(st.integers(0, 3 * MiB), min_size=1, max_size=40), st.data())
@settings(max_examples=60, deadline=None)
def test_layout_gives_disjoint_aligned_views_inside_the_arena(sizes, data):
    batch = data.draw(st.permutations(range(len(sizes))))
    need = batch_bytes(batch, sizes)
    assert need >= sum(sizes) and need % 4096 == 0
    arena = np.zeros(max(need, 1), dtype=np.uint8)
    views = _layout(arena, batch, sizes)
    base = arena.ctypes.data
    spans = []
    for i, view in zip(batch, views, strict=True):
        assert view.nbytes == sizes[i]
        start = np.frombuffer(view, dtype=np.uint8).ctypes.data - base if view.nbytes else None
        if start is not None:
            assert start % 4096 == 0 and start + view.nbytes <= need
            spans.append((start, start + view.nbytes))
    spans.sort()
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))


def test_epoch_order_is_a_shuffled_partition():
    batches = epoch_order(100, seed=1, epoch=1, batch=32)
    assert [len(b) for b in batches] == [32, 32, 32, 4]
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(100)) and flat != list(range(100))
    assert epoch_order(100, 1, 2, 32) != batches


def test_prefaulted_buffer():
    buf = prefaulted(3 * 4096 + 1)
    assert buf.nbytes == 3 * 4096 + 1 and buf.dtype == np.uint8 and (buf == 1).all()


class Dataset:
    """An in-memory dataset and a reader of it, as the demo's fetch functions work."""

    def __init__(self, n: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.sizes = [int(s) for s in rng.integers(0, 70_000, n)]
        self.blobs = [object_bytes(seed, i, s) for i, s in enumerate(self.sizes)]
        self.crcs = [crc32c(b) for b in self.blobs]
        self.keys = [f"k{i}" for i in range(n)]
        self.batches_read = 0

    def fetch(self, items):
        self.batches_read += 1
        out = []
        for i, view in items:
            view[:] = self.blobs[i]
            out.append(len(self.blobs[i]))
        return out


@pytest.mark.parametrize("prefetch", [0, 1, 3])
def test_run_epoch_reads_and_verifies_every_object(prefetch):
    data = Dataset(50)
    batches = epoch_order(50, 0, 1, 8)
    need = max(batch_bytes(b, data.sizes) for b in batches)
    arenas = [prefaulted(need) for _ in range(prefetch + 1)]
    seconds, waited, read = run_epoch(
        data.fetch, batches, arenas, data.sizes, data.crcs, data.keys, compute=0.002
    )
    assert data.batches_read == len(batches)
    assert 0 <= waited <= seconds and read >= 0
    assert seconds >= 0.002 * len(batches)


@pytest.mark.parametrize("prefetch", [0, 1])
def test_run_epoch_detects_wrong_bytes(prefetch):
    data = Dataset(20)
    victim = max(range(20), key=lambda i: data.sizes[i])
    blob = bytearray(data.blobs[victim])
    blob[len(blob) // 2] ^= 0xFF
    data.blobs[victim] = bytes(blob)
    batches = epoch_order(20, 0, 1, 5)
    need = max(batch_bytes(b, data.sizes) for b in batches)
    arenas = [prefaulted(need) for _ in range(prefetch + 1)]
    with pytest.raises(DataMismatchError, match=f"k{victim}: the bytes read do not match"):
        run_epoch(data.fetch, batches, arenas, data.sizes, data.crcs, data.keys, compute=0)


def test_run_epoch_detects_short_reads_and_passes_errors_on():
    data = Dataset(10)
    batches = epoch_order(10, 0, 1, 5)
    need = max(batch_bytes(b, data.sizes) for b in batches)
    arenas = [prefaulted(need), prefaulted(need)]

    def short(items):
        return [n - 1 if n else 0 for n in data.fetch(items)]

    with pytest.raises(DataMismatchError, match="bytes, the object has"):
        run_epoch(short, batches, arenas, data.sizes, data.crcs, data.keys, compute=0)

    def broken(items):
        raise ConnectionResetError(104, "connection reset by peer")

    with pytest.raises(ConnectionResetError):
        run_epoch(broken, batches, arenas, data.sizes, data.crcs, data.keys, compute=0)


def test_epoch_result_numbers():
    r = EpochResult("shoal", 2, "warm", 10, 50_000_000, 2.0, 0.5, 0.25, 1.0)
    assert r.mb_per_s == 25.0 and r.read_mb_per_s == 200.0 and r.wait_fraction == 0.25
    doc = r.as_dict()
    assert doc["reader"] == "shoal" and doc["wait_fraction"] == 0.25
