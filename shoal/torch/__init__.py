"""PyTorch datasets over Shoal (the optional extra ``shoal[torch]``).

:class:`ShoalMapDataset` is a map-style dataset (a DataLoader batch is read with one
request), :class:`ShoalIterableDataset` an iterable one, shuffled per epoch and split
across DataLoader workers and distributed ranks. Without a transform, a sample is a
:class:`Sample`: the file's path and its bytes as a ``torch.uint8`` tensor.
:class:`StorageReader` loads ``torch.distributed.checkpoint`` checkpoints through Shoal,
:class:`StorageWriter` saves them, and :func:`latest_checkpoint` finds the newest complete
one under a prefix.
"""

from __future__ import annotations

try:
    import torch  # noqa: F401  (probed here for the install hint)
except ImportError as exc:
    raise ImportError(
        f"shoal.torch needs PyTorch, which cannot be imported ({exc}): pip install 'shoal[torch]'"
    ) from exc

from ._datasets import Sample, ShoalIterableDataset, ShoalMapDataset
from ._dcp import StorageReader, StorageWriter, latest_checkpoint

__all__ = [
    "Sample",
    "ShoalIterableDataset",
    "ShoalMapDataset",
    "StorageReader",
    "StorageWriter",
    "latest_checkpoint",
]
