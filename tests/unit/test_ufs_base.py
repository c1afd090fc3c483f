"""What the base class gives every store: fetch_into and list_dir built on the hooks,
and request counts. Exercised through a store of dicts, whose objects a test can change
between two hook calls."""

from __future__ import annotations

import errno
import threading
from collections.abc import Iterator

import pytest

from shoal.control.ufs import REQUEST_KINDS, ObjectChangedError, ObjectInfo, UnderStore
from shoal.control.ufs._base import FETCH_ROUNDS


class DictStore(UnderStore):
    """Objects in a dict; ``before_read`` runs before every read (to change them)."""

    scheme = "dict"

    def __init__(self):
        super().__init__(retry={"max_attempts": 1})
        self.objects: dict[str, bytes] = {}
        self.generation = 0
        self.before_read = lambda: None
        self.calls: list[str] = []

    @classmethod
    def from_uri(cls, uri, **options):
        return cls()

    @property
    def uri(self) -> str:
        return "dict://"

    def put(self, key: str, data: bytes) -> None:
        self.generation += 1
        self.objects[key] = data

    def _info(self, key: str) -> ObjectInfo:
        return ObjectInfo(key, len(self.objects[key]), f"v{self.generation}", 0.0)

    def _stat(self, key):
        self.calls.append("stat")
        if key in self.objects:
            return self._info(key)
        if any(k.startswith(key + "/") for k in self.objects):
            return ObjectInfo(key, 0, "", 0.0, is_dir=True)
        raise FileNotFoundError(errno.ENOENT, "stat: no such object", self.uri_of(key))

    def _list(self, prefix, page_size, start_after) -> Iterator[ObjectInfo]:
        self.calls.append("list")
        for key in sorted(self.objects):
            if key.startswith(prefix):
                yield self._info(key)

    def _read_into(self, key, offset, view, version):
        self.calls.append("read")
        self.before_read()
        if version is not None and self._info(key).version != version:
            raise ObjectChangedError("read: changed", self.uri_of(key))
        data = self.objects[key][offset : offset + view.nbytes]
        view[: len(data)] = data
        return len(data)

    def _write(self, key, source):
        self.put(key, bytes(source))
        return self._info(key)

    def _delete(self, key, missing_ok):
        self.objects.pop(key, None)

    def _close(self):
        pass


@pytest.fixture
def store() -> DictStore:
    s = DictStore()
    s.put("a/b", b"0123456789")
    return s


def test_fetch_into_by_default_stats_then_reads_that_version(store):
    buf = bytearray(4)
    n, info = store.fetch_into("a/b", 3, buf)
    assert (n, bytes(buf), info) == (4, b"3456", store.stat("a/b"))
    assert store.calls == ["stat", "read", "stat"]


def test_fetch_into_reads_again_when_the_object_changes_in_between(store):
    changes = [b"second one", b"first rewrite"]
    store.before_read = lambda: changes and store.put("a/b", changes.pop())
    buf = bytearray(6)
    n, info = store.fetch_into("a/b", 0, buf)
    # the third round found the object as it read it: bytes and version agree
    assert (n, bytes(buf), info.version) == (6, b"second", f"v{store.generation}")
    assert store.calls == ["stat", "read"] * 3
    assert store.requests()["HEAD"] == 3 and store.requests()["GET"] == 3


def test_fetch_into_gives_up_after_rounds_of_changes(store):
    store.before_read = lambda: store.put("a/b", b"always new")
    with pytest.raises(ObjectChangedError, match="kept changing") as exc_info:
        store.fetch_into("a/b", 0, bytearray(4))
    assert exc_info.value.errno == errno.ESTALE
    assert store.calls == ["stat", "read"] * FETCH_ROUNDS


def test_fetch_into_with_a_version_does_not_read_again(store):
    version = store.stat("a/b").version
    store.before_read = lambda: store.put("a/b", b"rewritten")
    with pytest.raises(ObjectChangedError):
        store.fetch_into("a/b", 0, bytearray(4), version=version)
    with pytest.raises(ObjectChangedError, match="expected v1"):
        store.fetch_into("a/b", 0, bytearray(4), version="v1")


def test_fetch_into_past_the_end_or_into_nothing_reads_nothing(store):
    info = store.stat("a/b")
    store.calls.clear()
    assert store.fetch_into("a/b", 10, bytearray(4)) == (0, info)
    assert store.fetch_into("a/b", 0, bytearray()) == (0, info)
    assert store.calls == ["stat", "stat"]


def test_fetch_into_a_directory(store):
    with pytest.raises(IsADirectoryError) as exc_info:
        store.fetch_into("a", 0, bytearray(4))
    assert exc_info.value.errno == errno.EISDIR


def test_list_dir_folds_the_recursive_listing(store):
    for key in ("a/c/d", "a/c/e", "a/f", "a0", "a-b"):
        store.put(key, b"x")
    store.calls.clear()
    assert [(o.path, o.is_dir) for o in store.list_dir("a")] == [
        ("a/b", False),
        ("a/c", True),
        ("a/f", False),
    ]
    assert store.calls == ["list"]
    assert [(o.path, o.is_dir) for o in store.list_dir("")] == [
        ("a", True),
        ("a-b", False),
        ("a0", False),
    ]


def test_list_dir_stats_only_an_empty_level(store):
    store.calls.clear()
    with pytest.raises(FileNotFoundError, match="no such directory") as exc_info:
        store.list_dir("nothing")
    assert isinstance(exc_info.value.__cause__, FileNotFoundError)
    with pytest.raises(NotADirectoryError):
        store.list_dir("a/b")
    assert store.calls == ["list", "stat", "list", "stat"]
    assert store.requests() == {**dict.fromkeys(REQUEST_KINDS, 0), "LIST": 2, "HEAD": 2}


def test_hooks_are_counted_for_a_store_that_does_not_count(store):
    store.write("x", b"1")
    store.stat("x")
    list(store.list())
    store.read_into("x", 0, bytearray(1))
    store.read_into("x", 0, bytearray(1), size=1)
    store.delete("x")
    assert store.requests() == {
        "GET": 2,
        "HEAD": 1,
        "LIST": 1,
        "PUT": 1,
        "POST": 0,
        "DELETE": 1,
    }


def test_a_listing_is_counted_once_it_starts(store):
    listing = store.list()
    assert store.requests()["LIST"] == 0
    next(listing)
    assert store.requests()["LIST"] == 1


def test_counts_are_exact_under_threads(store):
    def hammer() -> None:
        for _ in range(20_000):
            store._count("GET")

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.requests()["GET"] == 160_000


def test_requests_returns_a_copy(store):
    snapshot = store.requests()
    assert list(snapshot) == list(REQUEST_KINDS)
    snapshot["GET"] = 99
    assert store.requests()["GET"] == 0
