"""Helpers for the demo and the benchmarks: a local S3 server (moto) in a child process, and
synthetic datasets with known checksums. Not part of the public API."""

from ._data import Dataset, dataset_sizes, make_dataset, object_bytes
from ._home import TemporaryHome
from ._s3 import S3Server

__all__ = [
    "Dataset",
    "S3Server",
    "TemporaryHome",
    "dataset_sizes",
    "make_dataset",
    "object_bytes",
]
