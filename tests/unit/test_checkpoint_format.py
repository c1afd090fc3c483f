"""The safetensors header as ``Client.load_checkpoint`` reads it: every header the
reference writer makes is read back as written, and any other bytes are a one-line
``ValueError``, never an entry that points outside the file."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import save

from shoal.client._checkpoint import DTYPES, MAX_HEADER, header_length, parse_header

NUMPY_KINDS = {"F64", "F32", "F16", "I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8", "BOOL"}


def split(blob: bytes):
    """The header length, header bytes and size of a whole file."""
    n = header_length(blob[:8], "f", len(blob))
    return parse_header(blob[8 : 8 + n], "f", len(blob))


arrays = st.dictionaries(
    st.text(min_size=1, max_size=12).filter(lambda name: name != "__metadata__"),
    st.tuples(
        st.sampled_from(sorted(NUMPY_KINDS)),
        st.lists(st.integers(0, 4), max_size=3),
    ),
    max_size=6,
)


@settings(max_examples=150, deadline=None)
@given(arrays)
def test_headers_of_the_reference_writer_are_read_as_written(spec):
    tensors = {
        name: (np.arange(int(np.prod(shape))) % 3).astype(DTYPES[kind][0]).reshape(shape)
        for name, (kind, shape) in spec.items()
    }
    blob = save(tensors, metadata={"step": "7"})
    header = split(blob)
    assert header.metadata == {"step": "7"}
    assert set(header.tensors) == set(tensors)
    for name, array in tensors.items():
        entry = header.tensors[name]
        assert entry.shape == array.shape and entry.nbytes == array.nbytes
        got = np.frombuffer(blob, DTYPES[entry.dtype][0], array.size, entry.offset)
        assert np.array_equal(got.reshape(array.shape), array)


def file_of(doc, data: bytes = b"") -> bytes:
    raw = json.dumps(doc).encode()
    return struct.pack("<Q", len(raw)) + raw + data


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"", "too short for a safetensors file"),
        (struct.pack("<Q", 1 << 40), "longer than"),
        (struct.pack("<Q", 100) + b"{}", "runs past the end of the file"),
        (struct.pack("<Q", 2) + b"[]", "is not a JSON object"),
        (struct.pack("<Q", 2) + b"\xff\xfe", "is not a JSON object"),
        (file_of({"t": {"dtype": "F128", "shape": [1], "data_offsets": [0, 16]}}), "unknown dtype"),
        (file_of({"t": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}), "shape must"),
        (file_of({"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}), "within the 0"),
        (file_of({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"x" * 4),
         "do not hold a F32 tensor of shape (2,)"),
        (file_of({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
                  "b": {"dtype": "U8", "shape": [4], "data_offsets": [2, 6]}}, b"x" * 6),
         "overlap"),
        (file_of({"__metadata__": {"k": 1}}), "__metadata__ must map strings"),
        (file_of({"t": [1, 2]}), "expected an object"),
    ],
)  # fmt: skip
def test_malformed_files_are_one_line_errors(blob, message):
    with pytest.raises(ValueError, match="^f: .*" + _escaped(message)) as info:
        split(blob)
    assert "\n" not in str(info.value)


def _escaped(text: str) -> str:
    import re

    return re.escape(text)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_are_a_header_or_a_value_error(blob):
    try:
        header = split(blob)
    except ValueError:
        return
    for entry in header.tensors.values():
        assert header.data_start <= entry.offset <= entry.offset + entry.nbytes <= len(blob)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.text(max_size=4),
        st.fixed_dictionaries(
            {
                "dtype": st.sampled_from([*DTYPES, "X"]),
                "shape": st.lists(st.integers(-1, 3), max_size=2),
                "data_offsets": st.lists(st.integers(-2, 40), min_size=0, max_size=3),
            }
        ),
        max_size=4,
    ),
    st.integers(0, 40),
)
def test_headers_of_any_fields_are_checked_against_the_data(doc, data):
    blob = file_of(doc, b"\0" * data)
    try:
        header = split(blob)
    except ValueError:
        return
    spans = sorted((e.offset, e.offset + e.nbytes) for e in header.tensors.values())
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert end <= start
    assert all(e.offset + e.nbytes <= len(blob) for e in header.tensors.values())


def test_the_header_bound():
    big = 1 << 40  # the file's size: the bound alone decides
    assert header_length(struct.pack("<Q", MAX_HEADER), "f", big) == MAX_HEADER
    with pytest.raises(ValueError, match=f"longer than {MAX_HEADER}"):
        header_length(struct.pack("<Q", MAX_HEADER + 1), "f", big)
