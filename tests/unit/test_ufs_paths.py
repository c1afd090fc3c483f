"""Object paths: normalised, never climbing out of the store's root."""

from __future__ import annotations

import pathlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.control.ufs._paths import is_normal_key, normalize_key, normalize_prefix

component = st.text(
    alphabet=st.characters(blacklist_characters="/\0", blacklist_categories=("Cs",)),
    min_size=1,
    max_size=8,
).filter(lambda c: c not in (".", ".."))
noise = st.sampled_from(["", ".", "/"])


@settings(max_examples=200)
@given(parts=st.lists(component, min_size=1, max_size=6), fillers=st.lists(noise, max_size=6))
def test_normalised_key_is_canonical(parts, fillers):
    # Empty and "." components, doubled and trailing slashes all vanish.
    messy = []
    for i, part in enumerate(parts):
        messy.append(part)
        if i < len(fillers):
            messy.append(fillers[i])
    path = "/".join(messy) + ("/" if fillers[-1:] == ["/"] else "")
    key = normalize_key(path)
    assert key == "/".join(parts)
    assert normalize_key(key) == key
    assert is_normal_key(key)
    assert not key.startswith("/") and "//" not in key and not key.endswith("/")


@settings(max_examples=200)
@given(
    before=st.lists(component, max_size=3),
    after=st.lists(component, max_size=3),
)
def test_dotdot_anywhere_is_rejected(before, after):
    with pytest.raises(ValueError, match=r"'\.\.'"):
        normalize_key("/".join([*before, "..", *after]))
    with pytest.raises(ValueError, match=r"'\.\.'"):
        normalize_prefix("/".join([*before, "..", *after]))


@pytest.mark.parametrize("path", ["", ".", "./", ".//", "./."])
def test_empty_keys_rejected(path):
    with pytest.raises(ValueError, match="empty"):
        normalize_key(path)


@pytest.mark.parametrize("path", ["/a", "//a", "/"])
def test_absolute_rejected(path):
    with pytest.raises(ValueError, match="absolute"):
        normalize_key(path)
    with pytest.raises(ValueError, match="absolute"):
        normalize_prefix(path)


def test_nul_rejected():
    with pytest.raises(ValueError, match="NUL"):
        normalize_key("a\0b")
    with pytest.raises(ValueError, match="NUL"):
        normalize_prefix("a\0")


def test_types():
    assert normalize_key(pathlib.PurePosixPath("a/b")) == "a/b"
    for bad in (b"a", 3, None):
        with pytest.raises(TypeError, match="must be a str"):
            normalize_key(bad)


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("", ""),
        (".", ""),
        ("a", "a"),
        ("a/", "a/"),
        ("a//b/", "a/b/"),
        ("a/.", "a/"),
        ("./a/im", "a/im"),
    ],
)
def test_prefix_keeps_its_meaning(prefix, expected):
    assert normalize_prefix(prefix) == expected


@pytest.mark.parametrize("key", ["a//b", "dir/", "./x", "a/../b", "/a", ""])
def test_keys_no_path_names(key):
    assert not is_normal_key(key)


@settings(max_examples=500)
@given(path=st.text(alphabet=st.sampled_from(["a", "b", ".", "/", "\0", "é"]), max_size=12))
def test_a_key_taken_as_canonical_at_once_is_what_the_full_check_makes(path):
    # normalize_key returns a canonical key as it is, before splitting it: that shortcut
    # and the component by component check agree on every path.
    from shoal.control.ufs._paths import _check, _parts

    try:
        parts = _parts(_check(path, "path"), "path")
        expected = "/".join(parts) if parts else ValueError
    except ValueError:
        expected = ValueError
    if expected is ValueError:
        with pytest.raises(ValueError):
            normalize_key(path)
    else:
        assert normalize_key(path) == expected
