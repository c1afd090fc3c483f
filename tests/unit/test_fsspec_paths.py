"""The arithmetic and the path forms of ``shoal://``, with no worker: URLs to Shoal paths,
fsspec's ``start``/``end`` to a byte span, the landing buffers reads fill, the checks of
the filesystem's options (no client is made before the first read)."""

from __future__ import annotations

import errno
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal._fsspec import ShoalFileSystem, _Landing, byte_span, read_only_error

bound = st.none() | st.integers(-10_000, 10_000)


@settings(max_examples=500)
@given(size=st.integers(0, 5000), start=bound, end=bound)
def test_byte_span_is_python_slicing(size, start, end):
    data = bytes(range(256)) * (size // 256 + 1)
    data = data[:size]
    offset, length = byte_span(size, start, end)
    assert 0 <= offset <= size and 0 <= length <= size - offset
    assert data[offset : offset + length] == data[start:end]


@pytest.mark.parametrize("bad", [1.0, "3", True])
def test_byte_span_takes_ints_or_none(bad):
    with pytest.raises(TypeError, match="start must be an int or None"):
        byte_span(10, bad, None)
    with pytest.raises(TypeError, match="end must be an int or None"):
        byte_span(10, 0, bad)


@pytest.mark.parametrize(
    "url, path",
    [
        ("shoal:///datasets/x/part-0", "/datasets/x/part-0"),
        ("shoal://datasets/x/part-0", "/datasets/x/part-0"),  # the host is a component
        ("shoal:////datasets/x", "/datasets/x"),
        ("/datasets/x/", "/datasets/x"),
        ("shoal://", "/"),
        ("shoal:///", "/"),
        ("/", "/"),
        ("relative/x", "relative/x"),  # left for the client to refuse, naming it
    ],
)
def test_urls_to_shoal_paths(url, path):
    assert ShoalFileSystem._strip_protocol(url) == path


def test_lists_and_pathlike_are_stripped_too(tmp_path):
    assert ShoalFileSystem._strip_protocol(["shoal:///a/", "shoal://b"]) == ["/a", "/b"]
    assert ShoalFileSystem._strip_protocol(tmp_path) == str(tmp_path)


@pytest.mark.parametrize("n, count", [(0, 0), (1, 1), (10, 4), (1 << 20, 1 << 20), (5000, 1)])
def test_landing_hands_out_what_was_written(n, count):
    landing = _Landing(n)
    assert landing.view.nbytes == n and not landing.view.readonly
    landing.view[:count] = bytes(range(7)) * (count // 7) + bytes(range(count % 7))
    out = landing.take(count)
    assert type(out) is bytes and len(out) == count
    assert out == bytes(range(7)) * (count // 7) + bytes(range(count % 7))


def test_landing_allocates_once_and_never_copies():
    n = 32 << 20
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        landing = _Landing(n)
        landing.view[-3:] = b"end"
        out = landing.take(n)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out[-3:] == b"end"
    assert peak < n + (1 << 20)  # a copy would double it


def test_read_only_error_names_the_paths():
    err = read_only_error("/data/x")
    assert err.errno == errno.EROFS and str(err).endswith(": /data/x")
    many = read_only_error([f"/data/{i}" for i in range(5)])
    assert str(many).endswith("/data/0, /data/1, /data/2 and 2 more")


def test_options_are_checked_before_any_client_is_made():
    fs = ShoalFileSystem(metadata_ttl=0, timeout=None, asynchronous=True, skip_instance_cache=True)
    assert fs._client is None
    with pytest.raises(TypeError, match="unknown option"):
        ShoalFileSystem(endpoint="x")
    with pytest.raises(TypeError, match="etcd must be a str"):
        ShoalFileSystem(etcd=2379)
    with pytest.raises(ValueError, match="timeout must be a number of seconds > 0 or None"):
        ShoalFileSystem(timeout=-1)
    with pytest.raises(ValueError, match="metadata_ttl"):
        ShoalFileSystem(metadata_ttl=True)


def test_the_filesystem_pickles_by_its_arguments():
    import pickle

    fs = ShoalFileSystem(config="/nonexistent/config.yaml", metadata_ttl=1.5)
    again = pickle.loads(pickle.dumps(fs))
    assert again.storage_options == {"config": "/nonexistent/config.yaml", "metadata_ttl": 1.5}
    assert again._client is None
    ShoalFileSystem.clear_instance_cache()
