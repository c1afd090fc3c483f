"""Helpers for the demo, the benchmarks and the tests: a local S3 server (moto) in a child
process, synthetic datasets with known checksums, a temporary home, a FUSE mount. Not part
of the public API."""

from ._data import Dataset, dataset_sizes, make_dataset, object_bytes
from ._fuse import fuse_mounted
from ._home import TemporaryHome
from ._s3 import S3Server

__all__ = [
    "Dataset",
    "S3Server",
    "TemporaryHome",
    "dataset_sizes",
    "fuse_mounted",
    "make_dataset",
    "object_bytes",
]
