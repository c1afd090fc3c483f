"""GPU destinations reach ``shoal.engine.gpu``; checked on a CPU with a stand-in for KvikIO.

There is no GPU here, so "device memory" is host memory behind ``__cuda_array_interface__``
and ``kvikio`` is a small fake module injected in ``sys.modules`` (the one mock the project
allows). It records every call and really copies the bytes, so placement is checked too.
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys
import types

import numpy as np
import pytest

from shoal import engine
from shoal.engine import gpu

SENTINEL = 0xA5


class FakeDeviceArray:
    """Host memory presented as a CUDA array."""

    def __init__(self, nbytes: int, *, readonly: bool = False, dtype=np.uint8):
        self.host = np.full(nbytes, SENTINEL, dtype=np.uint8).view(dtype)
        self.__cuda_array_interface__ = {
            "shape": self.host.shape,
            "typestr": self.host.dtype.str,
            "data": (self.host.ctypes.data, readonly),
            "strides": None,
            "version": 3,
        }

    @property
    def address(self) -> int:
        return self.host.ctypes.data

    def bytes(self) -> bytes:
        return self.host.tobytes()


class FakeFuture:
    def __init__(self, value: int | None = None, error: Exception | None = None):
        self.value, self.error = value, error

    def get(self) -> int:
        if self.error is not None:
            raise self.error
        return self.value


def make_fake_kvikio(calls: list, fail_on_offset: int | None = None):
    mod = types.ModuleType("kvikio")

    class CuFile:
        def __init__(self, path, flags="r"):
            calls.append(("open", path, flags))
            self.fd = os.open(path, os.O_RDONLY)

        def pread(self, buf, size=None, file_offset=0, task_size=None):
            iface = buf.__cuda_array_interface__
            address = iface["data"][0]
            calls.append(("pread", size, file_offset, address, iface["shape"]))
            if file_offset == fail_on_offset:
                return FakeFuture(error=RuntimeError("cuFile error: device busy"))
            data = os.pread(self.fd, size, file_offset)
            ctypes.memmove(address, data, len(data))
            return FakeFuture(len(data))

        def close(self):
            calls.append(("close",))
            os.close(self.fd)

    mod.CuFile = CuFile
    return mod


@pytest.fixture
def fresh_probe():
    gpu._kvikio.cache_clear()
    yield
    gpu._kvikio.cache_clear()


@pytest.fixture
def no_kvikio(monkeypatch, fresh_probe):
    monkeypatch.setitem(sys.modules, "kvikio", None)  # import kvikio raises ImportError


@pytest.fixture
def fake_kvikio(monkeypatch, fresh_probe):
    calls: list = []
    monkeypatch.setitem(sys.modules, "kvikio", make_fake_kvikio(calls))
    return calls


@pytest.fixture
def data_file(tmp_path):
    data = np.random.default_rng(5).integers(0, 256, 20_000, dtype=np.uint8).tobytes()
    path = tmp_path / "data"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    yield fd, data, path
    os.close(fd)


def test_without_kvikio_the_error_says_what_to_install(no_kvikio, data_file):
    fd, _, _ = data_file
    host = bytearray([SENTINEL]) * 10
    assert not gpu.is_available()
    with pytest.raises(ImportError, match=r"pip install 'shoal\[gpu\]'") as info:
        engine.read_batch([(fd, 0, 10, host, 0), (fd, 0, 10, FakeDeviceArray(10), 0)])
    assert isinstance(info.value, gpu.GpuSupportMissingError)
    assert bytes(host) == bytes([SENTINEL]) * 10  # nothing was read before the error


def test_host_only_batches_never_import_kvikio(no_kvikio, data_file):
    fd, data, _ = data_file
    buf = bytearray(10)
    assert engine.read_batch([(fd, 0, 10, buf, 0)]) == [10]


def test_mixed_batch_keeps_order_and_results(fake_kvikio, data_file):
    fd, data, path = data_file
    dev_a, dev_b = FakeDeviceArray(100), FakeDeviceArray(5000)
    host_a, host_b = bytearray(50), np.zeros(50, np.uint8)
    reqs = [
        (fd, 0, 50, host_a, 0),
        (fd, 1000, 60, dev_a, 30),  # device offset 30
        (fd, 19_990, 50, host_b, 0),  # 10 bytes before end of file
        (fd, 19_000, 4000, dev_b, 1000),  # crosses end of file: 1000 bytes
        (fd, 30_000, 10, dev_a, 0),  # past end of file: nothing to read
    ]
    assert gpu.is_available()
    assert engine.read_batch(reqs) == [50, 60, 10, 1000, 0]
    assert bytes(host_a) == data[:50]
    assert host_b[:10].tobytes() == data[19_990:]
    raw_a, raw_b = dev_a.bytes(), dev_b.bytes()
    assert raw_a[30:90] == data[1000:1060]
    assert set(raw_a[:30] + raw_a[90:]) == {SENTINEL}
    assert raw_b[1000:2000] == data[19_000:]
    assert set(raw_b[:1000] + raw_b[2000:]) == {SENTINEL}
    # One CuFile per descriptor, opened by path, closed after the batch.
    assert fake_kvikio[0] == ("open", f"/proc/self/fd/{fd}", "r")
    preads = [c for c in fake_kvikio if c[0] == "pread"]
    assert preads == [
        ("pread", 60, 1000, dev_a.address + 30, (60,)),
        ("pread", 1000, 19_000, dev_b.address + 1000, (1000,)),
    ]
    assert fake_kvikio[-1] == ("close",)
    assert sum(c[0] == "open" for c in fake_kvikio) == 1


def test_device_arrays_of_other_dtypes(fake_kvikio, data_file):
    fd, data, _ = data_file
    dev = FakeDeviceArray(400, dtype=np.float32)
    assert engine.read_batch([(fd, 4, 400, dev, 0)]) == [400]
    assert dev.bytes() == data[4:404]


def test_device_bad_fd_is_named(fake_kvikio):
    with pytest.raises(OSError) as info:
        engine.read_batch([(987_654, 0, 10, FakeDeviceArray(10), 0)])
    assert info.value.errno == errno.EBADF
    assert info.value.filename == "<fd 987654>"
    assert not [c for c in fake_kvikio if c[0] == "open"]


def test_device_read_from_a_pipe(fake_kvikio):
    r, w = os.pipe()
    try:
        with pytest.raises(OSError) as info:
            engine.read_batch([(r, 0, 4, FakeDeviceArray(4), 0)])
        assert info.value.errno == errno.ESPIPE
    finally:
        os.close(r)
        os.close(w)


def test_kvikio_failure_becomes_oserror(monkeypatch, fresh_probe, data_file):
    fd, data, path = data_file
    calls: list = []
    monkeypatch.setitem(sys.modules, "kvikio", make_fake_kvikio(calls, fail_on_offset=100))
    dev_ok, dev_bad = FakeDeviceArray(10), FakeDeviceArray(10)
    with pytest.raises(OSError) as info:
        engine.read_batch([(fd, 0, 10, dev_ok, 0), (fd, 100, 10, dev_bad, 0)])
    exc = info.value
    assert exc.errno == errno.EIO and exc.filename == str(path)
    assert "device busy" in str(exc)
    assert isinstance(exc.__cause__, RuntimeError)
    assert exc.index == 1 and exc.results[0] == 10
    assert dev_ok.bytes() == data[:10]
    assert calls[-1] == ("close",)


@pytest.mark.parametrize(
    ("dest", "length", "buf_offset", "exc", "match"),
    [
        (lambda: FakeDeviceArray(10, readonly=True), 5, 0, TypeError, "read-only"),
        (lambda: FakeDeviceArray(10), 11, 0, ValueError, "too small for 11 bytes"),
        (lambda: FakeDeviceArray(10), 5, 6, ValueError, "at buffer offset 6"),
    ],
)
def test_bad_device_destinations(fake_kvikio, data_file, dest, length, buf_offset, exc, match):
    fd, _, _ = data_file
    host = bytearray([SENTINEL]) * 10
    with pytest.raises(exc, match=match):
        engine.read_batch([(fd, 0, 10, host, 0), (fd, 0, length, dest(), buf_offset)])
    assert bytes(host) == bytes([SENTINEL]) * 10  # checked before any byte moved
    assert not [c for c in fake_kvikio if c[0] == "pread"]


def test_non_contiguous_device_array(fake_kvikio, data_file):
    fd, _, _ = data_file
    dev = FakeDeviceArray(16)
    dev.__cuda_array_interface__ = dict(dev.__cuda_array_interface__, shape=(8,), strides=(2,))
    with pytest.raises(ValueError, match="not C-contiguous"):
        engine.read_batch([(fd, 0, 4, dev, 0)])


def test_checksums_are_refused_for_device_destinations(fake_kvikio, data_file):
    fd, data, _ = data_file
    with pytest.raises(ValueError, match="GPU destinations"):
        engine.read_batch([(fd, 0, 4, FakeDeviceArray(4), 0)], checksums=[0])
    assert engine.read_batch(
        [(fd, 0, 4, bytearray(4), 0), (fd, 0, 4, FakeDeviceArray(4), 0)],
        checksums=[engine.crc32c(data[:4]), None],
    ) == [4, 4]


def test_writes_from_device_are_refused(data_file):
    fd, _, _ = data_file
    with pytest.raises(TypeError, match="GPU source buffers"):
        engine.write_batch([(fd, 0, 4, FakeDeviceArray(4), 0)])


def test_probe_is_cached(monkeypatch, fresh_probe):
    monkeypatch.setitem(sys.modules, "kvikio", None)
    assert not gpu.is_available()
    monkeypatch.setitem(sys.modules, "kvikio", make_fake_kvikio([]))
    assert not gpu.is_available()  # probed once per process
    gpu._kvikio.cache_clear()
    assert gpu.is_available()
