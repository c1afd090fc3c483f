"""open_store: a scheme picks the store class, imported on first use."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

import shoal
from shoal.control.ufs import (
    FsspecStore,
    LocalStore,
    ObjectInfo,
    S3Store,
    UnderStore,
    open_store,
    register_store,
    registered_schemes,
    store_class,
)


def test_local_paths_and_file_uris(tmp_path):
    for uri in (str(tmp_path), f"file://{tmp_path}", f"file://localhost{tmp_path}"):
        store = open_store(uri)
        assert isinstance(store, LocalStore)
        assert store.root == str(tmp_path)
        assert store.uri == f"file://{tmp_path}"


def test_file_uri_quoting(tmp_path):
    (tmp_path / "a b").mkdir()
    assert open_store(f"file://{tmp_path}/a%20b").root == str(tmp_path / "a b")


@pytest.mark.parametrize(
    ("uri", "exc", "match"),
    [
        ("relative/dir", ValueError, "neither an absolute path nor a URI"),
        ("", ValueError, "neither"),
        ("file://otherhost/data", ValueError, "remote host"),
        ("file:///tmp?x=1", ValueError, "query"),
        ("nosuchscheme://bucket/x", ValueError, "no under-store for scheme 'nosuchscheme'"),
        ("1bad://x", ValueError, "neither"),
        ("/tmp/\0", ValueError, "NUL"),
        (42, TypeError, "str"),
    ],
)
def test_bad_uris(uri, exc, match):
    with pytest.raises(exc, match=match):
        open_store(uri)


def test_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_store(str(tmp_path / "absent"))
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(NotADirectoryError):
        open_store(str(tmp_path / "file"))


def test_schemes_to_classes():
    assert store_class("file") is LocalStore
    assert store_class("S3") is S3Store
    assert store_class("memory") is FsspecStore
    assert {"file", "s3"} <= set(registered_schemes())


def test_memory_uri_is_fsspec():
    store = open_store(f"memory://registry-{uuid.uuid4().hex}")
    assert isinstance(store, FsspecStore) and store.scheme == "memory"


def test_known_fsspec_protocol_without_its_package_says_what_to_install():
    pytest.importorskip("fsspec")
    try:
        import gcsfs  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("gcsfs is installed")
    with pytest.raises(ImportError, match="gcsfs"):
        open_store("gcs://bucket/x")


def test_importing_the_package_loads_no_backend():
    code = (
        "import sys, shoal.control.ufs as u;"
        "assert 'boto3' not in sys.modules and 'botocore' not in sys.modules;"
        "u.open_store('memory://x');"
        "assert 'boto3' not in sys.modules"
    )
    root = pathlib.Path(shoal.__file__).parent.parent
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


class DictStore(UnderStore):
    """A minimal store kept in a dict, to show what a new backend implements."""

    scheme = "dict"

    def __init__(self, name: str):
        super().__init__()
        self.name = name
        self.objects: dict[str, bytes] = {}

    @classmethod
    def from_uri(cls, uri: str, **options) -> DictStore:
        return cls(uri.partition("://")[2], **options)

    @property
    def uri(self) -> str:
        return f"dict://{self.name}"

    def _stat(self, key: str) -> ObjectInfo:
        if key not in self.objects:
            raise FileNotFoundError(2, "no such object", self.uri_of(key))
        return ObjectInfo(key, len(self.objects[key]), str(hash(self.objects[key])), 0.0)

    def _list(self, prefix, page_size, start_after) -> Iterator[ObjectInfo]:
        for key in sorted(self.objects):
            if key.startswith(prefix) and (start_after is None or key > start_after):
                yield self._stat(key)

    def _read_into(self, key, offset, view, version) -> int:
        data = self.objects[key][offset : offset + view.nbytes]
        view[: len(data)] = data
        return len(data)

    def _write(self, key, source) -> ObjectInfo:
        self.objects[key] = bytes(source) if isinstance(source, memoryview) else source.read()
        return self._stat(key)

    def _delete(self, key, missing_ok) -> None:
        self.objects.pop(key)

    def _close(self) -> None:
        self.objects.clear()


def test_register_a_class():
    register_store("dict", DictStore)
    store = open_store("dict://mine")
    assert isinstance(store, DictStore)
    store.write("a/b", b"123")
    assert [o.path for o in store.list("a/")] == ["a/b"]
    with pytest.raises(ValueError):
        store.stat("../x")


def test_register_by_name_imports_lazily():
    register_store("lazydict", f"{__name__}:DictStore")
    assert store_class("lazydict") is DictStore
    register_store("broken", "shoal_no_such_module:Store", hint="pip install shoal-broken")
    with pytest.raises(ImportError, match="pip install shoal-broken"):
        store_class("broken")


@pytest.mark.parametrize(
    ("scheme", "target", "exc"),
    [
        ("bad scheme", DictStore, ValueError),
        ("ok", "no-colon", ValueError),
        ("ok", int, TypeError),
    ],
)
def test_register_checks(scheme, target, exc):
    with pytest.raises(exc):
        register_store(scheme, target)
