"""Synthetic datasets: object sizes between two bounds, deterministic contents, and each
object's crc32c, so that a reader can check every byte it got."""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ..engine import crc32c

__all__ = ["Dataset", "dataset_sizes", "make_dataset", "object_bytes"]

KiB = 1 << 10
MiB = 1 << 20


def dataset_sizes(
    count: int, total: int, low: int = 16 * KiB, high: int = 8 * MiB, seed: int = 0
) -> list[int]:
    """``count`` object sizes in ``[low, high]`` adding up to about ``total`` bytes.

    Sizes are spread on a log scale: ``low * (high / low) ** (u ** k)`` for uniform ``u``.
    ``k = 1`` is log-uniform; ``k`` is chosen (by bisection) so that the sizes add up to
    ``total``, which skews them toward small sizes when the mean asked for is below the
    log-uniform mean, and toward large ones when it is above.

    Raises ``ValueError`` when ``total / count`` is outside ``[low, high]``.
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    if not 0 < low <= high:
        raise ValueError(f"need 0 < low <= high, got {low} and {high}")
    if not low * count <= total <= high * count:
        raise ValueError(
            f"{count} objects of {low} to {high} bytes cannot add up to {total} bytes: "
            f"the mean size must be between them, it is {total / count:.0f}"
        )
    u = np.random.default_rng(seed).random(count)
    span = math.log(high / low) if high > low else 0.0

    def sizes(k: float) -> np.ndarray:
        return np.floor(low * np.exp(span * u**k)).astype(np.int64).clip(low, high)

    lo, hi = -40.0, 40.0  # log2 of k: the sum falls as k grows
    for _ in range(100):
        mid = (lo + hi) / 2
        if sizes(2.0**mid).sum() > total:
            lo = mid
        else:
            hi = mid
    return [int(s) for s in sizes(2.0**hi)]


def object_bytes(seed: int, index: int, size: int) -> bytes:
    """The contents of object ``index`` of the dataset made with ``seed``."""
    return np.random.default_rng([seed, index]).bytes(size)


@dataclass(frozen=True)
class Dataset:
    """Objects in a bucket: ``keys[i]`` has ``sizes[i]`` bytes with crc32c ``crcs[i]``."""

    bucket: str
    prefix: str
    keys: list[str]
    sizes: list[int]
    crcs: list[int]

    @property
    def total(self) -> int:
        """Bytes in all objects."""
        return sum(self.sizes)

    def __len__(self) -> int:
        return len(self.keys)


def make_dataset(
    s3,
    bucket: str,
    sizes: list[int],
    *,
    prefix: str = "train/",
    seed: int = 0,
    threads: int = 16,
    progress: Callable[[int, int], None] | None = None,
) -> Dataset:
    """Create ``bucket`` (when missing) and upload one object per size, under
    ``prefix`` as ``part-000000.bin`` ..., with :func:`object_bytes` contents.

    Parameters
    ----------
    s3
        A boto3 S3 client.
    progress
        Called with (objects done, objects total) as uploads complete.
    """
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if bucket not in existing:
        s3.create_bucket(Bucket=bucket)
    width = max(6, len(str(len(sizes) - 1)))
    keys = [f"{prefix}part-{i:0{width}d}.bin" for i in range(len(sizes))]
    crcs = [0] * len(sizes)

    def put(i: int) -> None:
        data = object_bytes(seed, i, sizes[i])
        crcs[i] = crc32c(data)
        s3.put_object(Bucket=bucket, Key=keys[i], Body=data)

    with ThreadPoolExecutor(threads) as pool:
        for done, fut in enumerate(pool.map(put, range(len(sizes))), 1):
            del fut
            if progress is not None:
                progress(done, len(sizes))
    return Dataset(bucket, prefix, keys, list(sizes), crcs)
