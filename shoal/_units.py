"""Byte sizes written the way people write them: ``64MiB``, ``10G``, ``4096``."""

from __future__ import annotations

import re

__all__ = ["format_size", "parse_size"]

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1000,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tb": 1000**4,
    "tib": 1024**4,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(value: int | str, field: str = "size") -> int:
    """Bytes in ``value``: an int, or a number with a unit (K, M, G, T are powers of 1024;
    KB, MB, GB, TB powers of 1000; KiB, MiB, GiB, TiB powers of 1024).

    Raises ``ValueError`` naming ``field`` for anything else or a negative size.
    """
    if isinstance(value, bool):
        raise ValueError(f"{field}: expected a size such as 64MiB, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{field}: size must be >= 0, got {value}")
        return value
    if not isinstance(value, str):
        raise ValueError(f"{field}: expected a size such as 64MiB, got {value!r}")
    match = _SIZE.match(value)
    unit = match and _UNITS.get(match.group(2).lower())
    if not match or unit is None:
        raise ValueError(f"{field}: {value!r} is not a size (examples: 4096, 64MiB, 10G, 2TB)")
    # Exact, however many digits: a float would round them, and overflow past 1e308.
    whole, _, fraction = match.group(1).partition(".")
    return (int(whole + fraction) * unit) // 10 ** len(fraction)


def format_size(n: int) -> str:
    """``n`` bytes for people: ``1.5 GiB``."""
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    size, i = float(n), 0
    while abs(size) >= 1024 and i < len(units) - 1:
        size, i = size / 1024, i + 1
    return f"{size:.0f} B" if i == 0 else f"{size:.1f} {units[i]}"
