"""fsspec's own conformance suite (``fsspec.tests.abstract``) run against ``shoal://``.

Which suites run:

* ``AbstractGetTests`` (copying from the filesystem under test to the local disk: ``get``
  of files, directories, globs and lists, with and without ``recursive`` and
  ``maxdepth``): every test, over two under-stores, a local directory mounted at
  ``/data`` and a bucket of the moto S3 server mounted at ``/s3``.

Which do not, and why:

* ``AbstractCopyTests`` (``cp`` within the filesystem), ``AbstractPutTests`` (local disk
  to the filesystem), ``AbstractPipeTests`` (``pipe_file``) and ``AbstractOpenTests``
  (``open(..., "wb")`` and ``"xb"``) write to the filesystem under test; ``shoal://`` is
  read-only until Shoal has a write path, and ``test_fsspec.py`` checks that each of
  those writes fails with ``EROFS``.

The suite's fixtures make their source trees with ``fs.makedirs``, ``fs.touch`` and
``fs.pipe`` on the filesystem under test. Here the same builders (the suite's own
``_bulk_operations_scenario_0`` and the like) make the trees in the mounted under-store
instead (the local directory through fsspec's ``LocalFileSystem``, the bucket with
``put_object``), and the metadata Shoal cached is forgotten before the test reads. One
test, ``test_get_directory_recursive``, makes its source inline with ``fs.mkdir`` and
``fs.touch``; it runs unchanged, given the filesystem under test with just those two
calls sent to the under-store.
"""

from __future__ import annotations

import itertools
import posixpath
from dataclasses import dataclass
from typing import Any

import pytest
from fsspec.implementations.local import LocalFileSystem
from fsspec.tests.abstract import AbstractFixtures
from fsspec.tests.abstract.get import AbstractGetTests

from shoal._fsspec import ShoalFileSystem

_names = itertools.count()


class BucketWriter:
    """What the suite's tree builders call, for keys of a bucket (``makedirs`` has nothing
    to do: a directory of an object store exists through its objects)."""

    def __init__(self, bucket):
        self._bucket = bucket

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        pass

    def mkdir(self, path: str, create_parents: bool = True) -> None:
        pass

    def touch(self, path: str) -> None:
        self._bucket.put(path, b"")

    def pipe(self, path: str, value: bytes) -> None:
        self._bucket.put(path, value)


@dataclass
class UnderStore:
    """A test's directory in a mounted under-store.

    Attributes
    ----------
    writer
        Makes directories and files there (``makedirs``, ``mkdir``, ``touch``, ``pipe``).
    root
        The directory as ``writer`` names it.
    path
        The same directory as a Shoal path.
    """

    writer: Any
    root: str
    path: str

    def store_path(self, shoal_path: str) -> str:
        """Where the Shoal path ``shoal_path`` (under :attr:`path`) lies in the store."""
        return posixpath.join(self.root, posixpath.relpath(shoal_path, self.path))


class SeededFileSystem:
    """The filesystem under test, except that ``mkdir`` and ``touch`` make the entry in
    the under-store (and have Shoal forget what it cached there)."""

    def __init__(self, fs: ShoalFileSystem, under: UnderStore):
        self._fs = fs
        self._under = under

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        self._under.writer.mkdir(self._under.store_path(path), create_parents=True)
        self._fs.invalidate_cache(self._under.path)

    def touch(self, path: str, **kwargs: Any) -> None:
        self._under.writer.touch(self._under.store_path(path))
        self._fs.invalidate_cache(self._under.path)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fs, name)


@pytest.fixture(scope="module")
def mounted(shared, tmp_path_factory):
    """The module's worker with a local directory mounted at ``/data`` (and the bucket of
    ``shared`` at ``/s3``): ``(client, bucket, local directory)``."""
    client, bucket, _ = shared
    root = tmp_path_factory.mktemp("fsspec-abstract")
    client.mount("/data", root.as_uri())
    return client, bucket, root


class ShoalFixtures(AbstractFixtures):
    """The suite's fixtures for ``shoal://``: the trees are made in the under-store."""

    @pytest.fixture(params=["file", "s3"])
    def under(self, request, mounted) -> UnderStore:
        _, bucket, root = mounted
        name = f"t{next(_names)}"
        if request.param == "file":
            return UnderStore(LocalFileSystem(auto_mkdir=True), str(root / name), f"/data/{name}")
        return UnderStore(BucketWriter(bucket), name, f"/s3/{name}")

    @pytest.fixture
    def fs(self, mounted):
        return ShoalFileSystem(client=mounted[0])

    @pytest.fixture
    def fs_join(self):
        return posixpath.join

    @pytest.fixture
    def fs_path(self, under):
        return under.path

    def _seed(self, build, fs: ShoalFileSystem, under: UnderStore) -> str:
        """Run one of the suite's tree builders on the under-store; the Shoal path of the
        ``source`` directory it made."""
        build(under.writer, posixpath.join, under.root)
        fs.invalidate_cache(under.path)
        source = posixpath.join(under.path, "source")
        assert fs.isdir(source)
        return source

    @pytest.fixture
    def fs_bulk_operations_scenario_0(self, fs, under):
        return self._seed(self._bulk_operations_scenario_0, fs, under)

    @pytest.fixture
    def fs_glob_edge_cases_files(self, fs, under):
        return self._seed(self._glob_edge_cases_files, fs, under)

    @pytest.fixture
    def fs_dir_and_file_with_same_name_prefix(self, fs, under):
        return self._seed(self._dir_and_file_with_same_name_prefix, fs, under)

    @pytest.fixture
    def fs_10_files_with_hashed_names(self, fs, under):
        return self._seed(self._10_files_with_hashed_names, fs, under)


class TestShoalGet(AbstractGetTests, ShoalFixtures):
    def test_get_directory_recursive(
        self, fs, fs_join, fs_path, local_fs, local_join, local_target, under
    ):
        # fsspec's test makes its source with fs.mkdir and fs.touch.
        super().test_get_directory_recursive(
            SeededFileSystem(fs, under), fs_join, fs_path, local_fs, local_join, local_target
        )
