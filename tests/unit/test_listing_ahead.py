"""Listings taken ahead of their caller by a thread of their own (``_files._ahead``), and
``files_under`` over several directories with them: every object once, in order; a
store's error raised where it comes; a caller that stops, or drops a listing unread,
stops its thread and closes the store's iterator."""

from __future__ import annotations

import gc
import shutil
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.control._admission import MountPolicy
from shoal.control._files import FileResolver, _ahead, _overlap
from shoal.control._metastore import LocalMetaStore
from shoal.control._metrics import Counters
from shoal.control._namespace import MountTable


class Source:
    """An iterator of ``count`` numbers that fails at ``fail_at`` (if given) and records
    being closed."""

    def __init__(self, count: int, fail_at: int | None = None):
        self.closed = threading.Event()
        self._gen = self._run(count, fail_at)

    def _run(self, count, fail_at):
        try:
            for i in range(count):
                if i == fail_at:
                    raise FileNotFoundError(f"object {i} is gone")
                yield i
        finally:
            self.closed.set()

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._gen)

    def close(self):
        self._gen.close()


def listing_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "shoal-list")


def wait_until(what, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if what():
            return True
        time.sleep(0.01)
    return what()


@settings(max_examples=40, deadline=None)
@given(count=st.integers(0, 300), run=st.integers(1, 64), depth=st.integers(1, 4))
def test_every_item_comes_once_in_order_in_runs(count, run, depth):
    source = Source(count)
    runs = list(_ahead(source, run, depth))
    assert [i for r in runs for i in r] == list(range(count))
    assert all(1 <= len(r) <= run for r in runs)
    assert all(len(r) == run for r in runs[:-1])
    assert source.closed.wait(10)


def test_an_error_of_the_store_is_raised_where_it_comes():
    source = Source(100, fail_at=45)
    got = []
    with pytest.raises(FileNotFoundError, match="object 45 is gone"):
        for part in _ahead(source, 10):
            got += part
    assert got == list(range(40))  # the runs before the failing one
    assert source.closed.wait(10)


def test_a_caller_that_stops_early_stops_the_thread():
    before = listing_threads()
    source = Source(10_000)
    it = _ahead(source, 10, depth=2)
    assert next(it) == list(range(10))
    it.close()
    assert source.closed.wait(10)
    assert wait_until(lambda: listing_threads() == before)


def test_a_listing_dropped_unread_stops_its_thread():
    before = listing_threads()
    source = Source(10_000)
    it = _ahead(source, 10, depth=2)  # begun: its thread fills the queue, then waits
    del it
    gc.collect()
    assert source.closed.wait(10)
    assert wait_until(lambda: listing_threads() == before)


@pytest.fixture
def resolver(tmp_path):
    meta = LocalMetaStore(tmp_path / "meta")
    policy = MountPolicy(allowed_mounts=[tmp_path.as_uri() + "/"])
    r = FileResolver(MountTable(meta), shared=False, counters=Counters(), policy=policy)
    yield r
    r.close()
    meta.close()


def test_files_under_several_directories_lists_each_file_once(resolver, tmp_path):
    src = tmp_path / "src"
    names = []
    for d in range(4):
        for i in range(30):
            (src / f"d{d}").mkdir(parents=True, exist_ok=True)
            (src / f"d{d}" / f"f{i:02d}").write_bytes(b"x" * i)
            names.append(f"/m/d{d}/f{i:02d}")
    resolver.mount("/m", src.as_uri(), {})
    paths = ["/m/d0", "/m/d2/f03", "/m/d1", "/m/d2", "/m/d0", "/m/d3"]
    files = resolver.files_under(paths)
    got = [f.path for f in files]
    assert len(got) == len(set(got)) == 120
    assert sorted(got) == sorted(names)
    assert got[:31] == [*(f"/m/d0/f{i:02d}" for i in range(30)), "/m/d2/f03"]
    assert all(f.info.size == int(f.path[-2:]) for f in files)
    again = [f.path for f in resolver.files_under(paths)]  # from the cached listings
    assert again == got
    runs = list(resolver.files_under_runs(["/m/d1", "/m/d3"], run=7))
    assert [len(r) for r in runs] == [7, 7, 7, 7, 2] * 2
    with pytest.raises(FileNotFoundError):
        resolver.files_under(["/m/d1", "/m/nowhere"])
    # A directory gone between its stat (cached) and its listing (begun ahead) lists
    # nothing, as a prefix with no object under it; no listing thread is left behind.
    resolver.refresh("/m")
    assert resolver.file("/m/d3").info.is_dir
    shutil.rmtree(src / "d3")
    got = [f.path for f in resolver.files_under(["/m/d3", "/m/d1"])]
    assert got == [f"/m/d1/f{i:02d}" for i in range(30)]
    assert wait_until(lambda: listing_threads() == 0)


@settings(max_examples=300, deadline=None)
@given(
    paths=st.lists(
        st.lists(st.sampled_from(["a", "b", "a-b", "ab"]), max_size=3).map(
            lambda parts: "/" + "/".join(parts)
        ),
        max_size=6,
    )
)
def test_overlap_tells_a_path_named_twice_or_under_another(paths):
    def under(p: str, q: str) -> bool:
        return p == q or q == "/" or p.startswith(q + "/")

    want = any(under(p, q) for i, p in enumerate(paths) for j, q in enumerate(paths) if i != j)
    assert _overlap(paths) == want


def test_files_under_a_directory_and_what_lies_under_it_lists_each_file_once(resolver, tmp_path):
    src = tmp_path / "src"
    for d in range(2):
        (src / f"d{d}").mkdir(parents=True)
        for i in range(5):
            (src / f"d{d}" / f"f{i}").write_bytes(b"x")
    resolver.mount("/m", src.as_uri(), {})
    got = [f.path for f in resolver.files_under(["/m/d1/f2", "/m", "/m/d1"])]
    assert got[0] == "/m/d1/f2" and sorted(got) == sorted(set(got)) and len(got) == 10
