import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal._units import format_size, parse_size


@pytest.mark.parametrize(
    "text, expected",
    [
        ("4096", 4096),
        ("64MiB", 64 << 20),
        ("64 mib", 64 << 20),
        ("10G", 10 << 30),
        ("2TB", 2 * 10**12),
        ("1.5GiB", 3 << 29),
        ("0", 0),
    ],
)
def test_parse(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["", "ten", "5 XB", "-1", "1e3", None, True, 1.5, -4])
def test_parse_rejects_with_field_name(bad):
    with pytest.raises(ValueError, match="capacity"):
        parse_size(bad, "capacity")


@given(st.integers(min_value=0, max_value=2**60))
def test_ints_pass_through_and_format_round_trips_roughly(n):
    assert parse_size(n) == n
    text = format_size(n)
    back = parse_size(text.replace(" ", ""))
    assert abs(back - n) <= max(n * 0.06, 1)
