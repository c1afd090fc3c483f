"""Checkpoints in safetensors files, read through a client: every tensor as a view over
one buffer that holds the whole file (:func:`load_checkpoint`), or each tensor's bytes
read straight into an array or tensor the caller made (:func:`load_checkpoint_into`).

A safetensors file is an 8-byte little-endian header length ``N``, ``N`` bytes of JSON
(per tensor its ``dtype``, ``shape`` and ``data_offsets`` ``[begin, end)`` in the data
that follows; ``__metadata__`` a map of strings), then the data. Every field of a header
is checked before a byte of data is trusted: a file that does not follow the format is a
``ValueError`` naming what is wrong, never an array that reads past its buffer.

numpy has no bfloat16 and no 8-bit floats: :func:`load_checkpoint` gives their bits, as
``uint16`` and ``uint8`` arrays of the same shape (``torch.from_numpy(a).view(
torch.bfloat16)`` makes a bfloat16 tensor of one without a copy);
:func:`load_checkpoint_into` fills tensors of those types as they are.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ..engine._requests import host_view


class Client(Protocol):
    """What reading a checkpoint takes of a :class:`shoal.Client`."""

    def stat(self, path: str) -> Any: ...

    def read_into(self, buf: Any, path: str, offset: int = 0) -> int: ...

    def read_many_into(self, items: Any) -> list[int]: ...


__all__ = [
    "Header", "TensorEntry", "load_checkpoint", "load_checkpoint_into", "parse_header",
    "save_checkpoint",
]  # fmt: skip

#: Longest header read (the reference implementation's own bound).
MAX_HEADER = 100 << 20
_LENGTH = struct.Struct("<Q")
#: safetensors dtype -> (numpy type string of the array loaded, torch dtype name).
DTYPES: Mapping[str, tuple[str, str]] = {
    "F64": ("<f8", "float64"),
    "F32": ("<f4", "float32"),
    "F16": ("<f2", "float16"),
    "BF16": ("<u2", "bfloat16"),
    "F8_E4M3": ("u1", "float8_e4m3fn"),
    "F8_E5M2": ("u1", "float8_e5m2"),
    "I64": ("<i8", "int64"),
    "I32": ("<i4", "int32"),
    "I16": ("<i2", "int16"),
    "I8": ("i1", "int8"),
    "U64": ("<u8", "uint64"),
    "U32": ("<u4", "uint32"),
    "U16": ("<u2", "uint16"),
    "U8": ("u1", "uint8"),
    "BOOL": ("?", "bool"),
}
#: Bytes per element of each dtype.
_ITEMSIZE = {name: 1 if kind == "?" else int(kind[-1]) for name, (kind, _) in DTYPES.items()}


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a checkpoint: its safetensors dtype, shape, and where its bytes lie
    in the file (``offset``, ``nbytes``)."""

    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int


@dataclass(frozen=True)
class Header:
    """A checkpoint's header: its tensors by name, its ``__metadata__``, and the size the
    file must have."""

    tensors: dict[str, TensorEntry]
    metadata: dict[str, str]
    data_start: int
    size: int


def header_length(prefix: bytes, path: str, size: int) -> int:
    """The header length that the first 8 bytes of a file of ``size`` bytes give."""
    if size < _LENGTH.size or len(prefix) < _LENGTH.size:
        raise ValueError(f"{path}: {size} bytes is too short for a safetensors file")
    (n,) = _LENGTH.unpack_from(prefix)
    if n > MAX_HEADER:
        raise ValueError(f"{path}: a header of {n} bytes is longer than {MAX_HEADER}")
    if _LENGTH.size + n > size:
        raise ValueError(
            f"{path}: its header of {n} bytes runs past the end of the file ({size} bytes)"
        )
    return n


def parse_header(raw: bytes, path: str, size: int) -> Header:
    """The header of a safetensors file of ``size`` bytes, from its JSON ``raw``.

    Raises
    ------
    ValueError
        A header that is no JSON object, an unknown dtype, a shape that is no list of
        ints >= 0, offsets outside the data or that overlap, or bytes that do not match
        the dtype and shape; the message names the file and the tensor.
    """
    try:
        doc = json.loads(bytes(raw).decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ValueError(f"{path}: its header is not a JSON object") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: its header is not a JSON object")
    data_start = _LENGTH.size + len(raw)
    data_size = size - data_start
    metadata = doc.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise ValueError(f"{path}: __metadata__ must map strings to strings")
    tensors: dict[str, TensorEntry] = {}
    for name, entry in doc.items():
        tensors[name] = _entry(path, name, entry, data_start, data_size)
    spans = sorted((t.offset, t.offset + t.nbytes, name) for name, t in tensors.items())
    for (_, end, first), (start, _, second) in zip(spans, spans[1:], strict=False):
        if start < end:
            raise ValueError(f"{path}: the bytes of tensors {first!r} and {second!r} overlap")
    return Header(tensors, dict(metadata), data_start, size)


def _entry(path: str, name: str, entry: Any, data_start: int, data_size: int) -> TensorEntry:
    where = f"{path}: tensor {name!r}"
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected an object with dtype, shape and data_offsets")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPES:
        raise ValueError(f"{where}: unknown dtype {dtype!r} (known: {', '.join(DTYPES)})")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise ValueError(f"{where}: shape must be a list of ints >= 0, got {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(type(o) is int for o in offsets)
        or not 0 <= offsets[0] <= offsets[1] <= data_size
    ):
        raise ValueError(
            f"{where}: data_offsets must be [begin, end] within the {data_size} bytes of "
            f"data, got {offsets!r}"
        )
    nbytes = offsets[1] - offsets[0]
    if nbytes != math.prod(shape) * _ITEMSIZE[dtype]:
        raise ValueError(
            f"{where}: {nbytes} bytes do not hold a {dtype} tensor of shape {tuple(shape)}"
        )
    return TensorEntry(dtype, tuple(shape), data_start + offsets[0], nbytes)


def read_header(client: Client, path: str) -> Header:
    """The header of the checkpoint at ``path``, with two small reads."""
    size = client.stat(path).size
    prefix = bytearray(_LENGTH.size)
    client.read_into(prefix, path)
    n = header_length(bytes(prefix), path, size)
    raw = bytearray(n)
    if client.read_into(raw, path, _LENGTH.size) != n:
        raise ValueError(f"{path}: the file ended inside its header (it changed?)")
    return parse_header(raw, path, size)


def load_checkpoint(client: Client, path: str) -> dict[str, Any]:
    """:meth:`shoal.Client.load_checkpoint`."""
    import numpy as np

    size = client.stat(path).size
    buf = np.empty(size, dtype=np.uint8)
    got = client.read_into(buf, path)
    if got != size:
        raise ValueError(f"{path}: read {got} of its {size} bytes (it changed?)")
    n = header_length(buf[: _LENGTH.size].tobytes(), path, size)
    header = parse_header(buf[_LENGTH.size : _LENGTH.size + n].tobytes(), path, size)
    out = {}
    for name, t in header.tensors.items():
        dtype = np.dtype(DTYPES[t.dtype][0])
        count = t.nbytes // dtype.itemsize
        out[name] = np.frombuffer(buf, dtype, count, t.offset).reshape(t.shape)
    return out


def load_checkpoint_into(client: Client, path: str, tensors: Mapping[str, Any]) -> int:
    """:meth:`shoal.Client.load_checkpoint_into`."""
    if not isinstance(tensors, Mapping):
        raise TypeError(f"tensors must be a mapping of name -> array, got {type(tensors).__name__}")
    header = read_header(client, path)
    missing = sorted(set(tensors) - set(header.tensors))
    if missing:
        raise ValueError(f"{path}: no tensor named {', '.join(map(repr, missing[:5]))}")
    items = []
    for name, dest in tensors.items():
        t = header.tensors[name]
        items.append((_destination(path, name, t, dest), path, t.offset))
    done = client.read_many_into(items)
    for (view, _, _), n, name in zip(items, done, tensors, strict=True):
        if n != view.nbytes:
            raise ValueError(f"{path}: tensor {name!r} read {n} of {view.nbytes} bytes")
    return sum(done)


def _destination(path: str, name: str, t: TensorEntry, dest: Any) -> memoryview:
    """The bytes of ``dest``, a destination of the tensor ``name``: it must have the
    tensor's shape and dtype (numpy arrays, torch tensors; numpy's stand-ins for the
    types it lacks too) and be a contiguous, writable host buffer of its bytes."""
    where = f"{path}: tensor {name!r}"
    shape = getattr(dest, "shape", None)
    if shape is not None and tuple(shape) != t.shape:
        raise ValueError(f"{where} has shape {t.shape}, the destination {tuple(shape)}")
    dtype = getattr(dest, "dtype", None)
    numpy_type, torch_name = DTYPES[t.dtype]
    if dtype is not None:
        spelled = str(dtype).removeprefix("torch.")
        if spelled != torch_name and not _is_numpy_type(dtype, numpy_type):
            raise ValueError(f"{where} is {t.dtype} ({torch_name}), the destination {spelled}")
    if hasattr(dest, "__cuda_array_interface__") or str(getattr(dest, "device", "cpu")) != "cpu":
        raise TypeError(f"{where}: the destination is on a GPU; checkpoints load into host memory")
    if type(dest).__module__.startswith("torch") and hasattr(dest, "is_contiguous"):
        import torch

        if not dest.is_contiguous():
            raise ValueError(f"{where}: the destination tensor is not contiguous")
        dest = dest.reshape(-1).view(torch.uint8)  # bytes: numpy lacks some of its types
    view = host_view(dest, writable=True, what=f"tensor {name!r}")
    if view.nbytes != t.nbytes:
        raise ValueError(f"{where} has {t.nbytes} bytes, the destination {view.nbytes}")
    return view


def _is_numpy_type(dtype: Any, numpy_type: str) -> bool:
    import numpy as np

    try:
        return np.dtype(dtype) == np.dtype(numpy_type)
    except TypeError:
        return False


def save_checkpoint(
    client: Any, path: str, tensors: Mapping[str, Any], metadata: Mapping[str, str] | None
) -> int:
    """:meth:`shoal.Client.save_checkpoint`: the header, then each tensor's bytes written
    straight from its memory (one copy, into the worker's staging file)."""
    if not isinstance(tensors, Mapping):
        raise TypeError(f"tensors must be a mapping of name -> array, got {type(tensors).__name__}")
    header: dict[str, Any] = {}
    if metadata is not None:
        if not isinstance(metadata, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
        ):
            raise TypeError("metadata must be a mapping of str -> str")
        header["__metadata__"] = dict(metadata)
    views = []
    at = 0
    for name, tensor in tensors.items():
        if not isinstance(name, str) or not name or name == "__metadata__":
            raise ValueError(f"{path}: tensor names must be non-empty str, got {name!r:.64}")
        dtype, shape, view = _source(path, name, tensor)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [at, at + view.nbytes]}
        views.append(view)
        at += view.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # data aligned to 8 bytes, as the reference writes it
    size = _LENGTH.size + len(raw) + at
    with client.open(path, "wb", 0, size=size) as f:
        f.write(_LENGTH.pack(len(raw)) + raw)
        for view in views:
            f.write(view)
    return size


def _source(path: str, name: str, tensor: Any) -> tuple[str, list[int], memoryview]:
    """A tensor's safetensors dtype, shape and bytes (a GPU tensor copied to the host)."""
    where = f"{path}: tensor {name!r}"
    module = type(tensor).__module__
    if module.startswith("torch") and hasattr(tensor, "detach"):
        import torch

        t = tensor.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        shape = list(t.shape)
        spelled = str(t.dtype).removeprefix("torch.")
        kinds = [k for k, (_, torch_name) in DTYPES.items() if torch_name == spelled]
        if not kinds:
            raise ValueError(f"{where}: dtype {spelled} has no safetensors type")
        data = t.contiguous().reshape(-1).view(torch.uint8).numpy()
        return kinds[0], shape, memoryview(data).cast("B")
    if hasattr(tensor, "__cuda_array_interface__") and hasattr(tensor, "get"):
        tensor = tensor.get()  # cupy: through host memory
    import numpy as np

    if not isinstance(tensor, np.ndarray):
        raise TypeError(f"{where}: expected a numpy array or torch tensor, got {type(tensor)}")
    dtype = tensor.dtype.newbyteorder("<") if tensor.dtype.byteorder == "=" else tensor.dtype
    kinds = [k for k, (kind, _) in DTYPES.items() if np.dtype(kind) == dtype]
    if not kinds or dtype.byteorder == ">":
        raise ValueError(f"{where}: dtype {tensor.dtype} has no safetensors type")
    kind = "U16" if kinds[0] == "BF16" else "U8" if kinds[0].startswith("F8") else kinds[0]
    data = np.ascontiguousarray(tensor)
    return kind, list(tensor.shape), memoryview(data.reshape(-1).view(np.uint8)).cast("B")
