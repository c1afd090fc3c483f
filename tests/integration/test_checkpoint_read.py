"""Checkpoints read through a real worker: safetensors files written by the reference
library, on a ``file://`` and an S3 (moto) mount, load as views over one buffer
(``Client.load_checkpoint``) or straight into numpy arrays and torch tensors, bfloat16
included (``Client.load_checkpoint_into``); a second load is served from the cache; bad
files and bad destinations are one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import PAGE
from safetensors.numpy import save, save_file
from safetensors.torch import save_file as save_torch


def gets(client) -> int:
    return client.report()["ufs_requests"].get("GET", 0)


@pytest.fixture
def tensors():
    rng = np.random.default_rng(7)
    return {
        "embed.weight": rng.standard_normal((300, 128), dtype=np.float32),  # 150 KiB: pages
        "layer.0.bias": rng.standard_normal(17).astype(np.float16),
        "step": np.array(1234, dtype=np.int64),
        "mask": rng.integers(0, 2, (5, 3)).astype(bool),
        "empty": np.zeros((0, 4), dtype=np.int32),
    }


def test_a_checkpoint_loads_as_views_of_one_buffer_then_from_the_cache(client, tmp_path, tensors):
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"step": "1234"})
    client.mount("/ckpt", tmp_path.as_uri())
    got = client.load_checkpoint("/ckpt/model.safetensors")
    assert set(got) == set(tensors)
    for name, array in tensors.items():
        assert got[name].dtype == array.dtype and got[name].shape == array.shape
        assert np.array_equal(got[name], array)
    bases = {id(a.base) for a in got.values()}
    assert len(bases) == 1  # one buffer, no copy per tensor
    before = gets(client)
    again = client.load_checkpoint("/ckpt/model.safetensors")
    assert np.array_equal(again["embed.weight"], tensors["embed.weight"])
    assert gets(client) == before  # from the cache


def test_tensors_load_straight_into_arrays_and_tensors(client, tmp_path, tensors):
    save_file(tensors, str(tmp_path / "m.safetensors"))
    weights = {"w": torch.randn(64, 33, dtype=torch.bfloat16), "b": torch.arange(5)}
    save_torch(weights, str(tmp_path / "t.safetensors"))
    client.mount("/ckpt", tmp_path.as_uri())
    into = {"embed.weight": np.empty((300, 128), np.float32), "step": np.empty((), np.int64)}
    n = client.load_checkpoint_into("/ckpt/m.safetensors", into)
    assert n == into["embed.weight"].nbytes + 8
    assert np.array_equal(into["embed.weight"], tensors["embed.weight"])
    assert into["step"] == 1234
    dest = {"w": torch.empty(64, 33, dtype=torch.bfloat16), "b": torch.empty(5, dtype=torch.int64)}
    client.load_checkpoint_into("/ckpt/t.safetensors", dest)
    assert torch.equal(dest["w"], weights["w"]) and torch.equal(dest["b"], weights["b"])
    # bfloat16 in numpy: its bits, a view torch turns back into bfloat16 with no copy
    bits = client.load_checkpoint("/ckpt/t.safetensors")["w"]
    assert bits.dtype == np.uint16
    assert torch.equal(torch.from_numpy(bits.copy()).view(torch.bfloat16), weights["w"])
    into16 = {"w": np.empty((64, 33), np.uint16)}
    client.load_checkpoint_into("/ckpt/t.safetensors", into16)
    assert np.array_equal(into16["w"], bits)


def test_a_checkpoint_on_s3_loads_cold_and_warm(client, bucket, tensors):
    bucket.put("ckpt/model.safetensors", save(tensors))
    client.mount("/s3", f"s3://{bucket.name}", **bucket.options())
    got = client.load_checkpoint("/s3/ckpt/model.safetensors")
    assert np.array_equal(got["embed.weight"], tensors["embed.weight"])
    assert got["embed.weight"].nbytes > 2 * PAGE  # spans pages: fetched with ranged GETs
    before = gets(client)
    into = {"layer.0.bias": np.empty(17, np.float16)}
    client.load_checkpoint_into("/s3/ckpt/model.safetensors", into)
    assert np.array_equal(into["layer.0.bias"], tensors["layer.0.bias"])
    assert gets(client) == before


def test_bad_files_and_destinations_are_one_line_errors(client, tmp_path, tensors):
    save_file(tensors, str(tmp_path / "m.safetensors"))
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\0\0\0\0\0\0\0not json at all!")
    (tmp_path / "short").write_bytes(b"\x01")
    client.mount("/ckpt", tmp_path.as_uri())
    cases = [
        (lambda: client.load_checkpoint("/ckpt/junk.safetensors"), ValueError, "not a JSON"),
        (lambda: client.load_checkpoint("/ckpt/short"), ValueError, "too short"),
        (lambda: client.load_checkpoint("/ckpt/none"), FileNotFoundError, "none"),
        (
            lambda: client.load_checkpoint_into("/ckpt/m.safetensors", {"nope": np.empty(1)}),
            ValueError,
            "no tensor named 'nope'",
        ),
        (
            lambda: client.load_checkpoint_into(
                "/ckpt/m.safetensors", {"step": np.empty((), np.int32)}
            ),
            ValueError,
            "is I64 \\(int64\\), the destination int32",
        ),
        (
            lambda: client.load_checkpoint_into(
                "/ckpt/m.safetensors", {"embed.weight": np.empty((128, 300), np.float32)}
            ),
            ValueError,
            "has shape \\(300, 128\\), the destination \\(128, 300\\)",
        ),
        (
            lambda: client.load_checkpoint_into(
                "/ckpt/m.safetensors", {"embed.weight": torch.empty(128, 300).t()}
            ),
            ValueError,
            "not contiguous",
        ),
        (
            lambda: client.load_checkpoint_into("/ckpt/m.safetensors", ["step"]),
            TypeError,
            "mapping",
        ),
    ]
    for call, kind, message in cases:
        with pytest.raises(kind, match=message) as info:
            call()
        assert "\n" not in str(info.value)
