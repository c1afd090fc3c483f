"""Helpers of the read-path benchmarks: the results table, pre-faulted buffers, timing and
a data directory on the repository's disk."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
ALIGN = 4096  # buffers are page aligned: a destination off a 64-byte line halves copy speed


class Table:
    """Measurements and ratios, grouped by section, printed at the end."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str, str]] = []
        self.missed: list[str] = []

    def add(self, section: str, what: str, value: float | None, unit: str, note: str = "") -> None:
        if value is None:
            text = "-"
        elif value >= 1000:
            text = f"{value:,.0f}"
        else:
            text = f"{value:.2f}"
        self.rows.append((section, what, text, unit, note))

    def ratio(
        self,
        section: str,
        what: str,
        num: float | None,
        den: float | None,
        target: float | None = None,
    ) -> float | None:
        """Add ``num / den`` (with its target, met or missed); the ratio."""
        if num is None or not den:
            self.add(section, what, None, "x", "not measured")
            return None
        value = num / den
        note = ""
        if target is not None:
            met = value >= target
            note = f"target >= {target:g}x: " + ("met" if met else "MISSED")
            if not met:
                self.missed.append(what)
        self.add(section, what, value, "x", note)
        return value

    def print_with_total(self, started: float) -> None:
        """Print the table, the run's wall time since ``started`` (``perf_counter``) and the
        targets missed."""
        print(self.render())
        print(f"\ntotal {time.perf_counter() - started:.0f} s")
        if self.missed:
            print(f"targets missed: {', '.join(self.missed)}")

    def render(self) -> str:
        widths = [max(len(r[i]) for r in self.rows) for i in range(5)]
        lines, last = [], None
        for section, what, value, unit, note in self.rows:
            if section != last:
                lines.append(f"\n{section}")
                last = section
            lines.append(
                f"  {what:<{widths[1]}}  {value:>{widths[2]}} {unit:<{widths[3]}}  {note}".rstrip()
            )
        return "\n".join(lines)


def aligned(nbytes: int) -> np.ndarray:
    """A page-aligned, pre-faulted byte array."""
    raw = np.empty(nbytes + ALIGN, dtype=np.uint8)
    arr = raw[-raw.ctypes.data % ALIGN :][:nbytes]
    arr.fill(1)
    return arr


def best_of(rounds: int, contenders: dict[str, Callable[[], object]]) -> dict[str, float]:
    """Shortest wall time of each contender over ``rounds`` rounds.

    Every round runs each contender once, the order rotating by one each round, so that no
    contender always goes first.
    """
    best = dict.fromkeys(contenders, float("inf"))
    names = list(contenders)
    for r in range(rounds if names else 0):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            contenders[name]()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def timed(fn: Callable[[], object]) -> float:
    """Wall seconds of one call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def data_root() -> Path:
    """A directory on the repository's disk: /tmp when it is that disk (not a tmpfs)."""
    tmp = Path(tempfile.gettempdir())
    with contextlib.suppress(OSError):
        if os.stat(tmp).st_dev == os.stat(REPO).st_dev:
            return tmp
    return REPO


def describe_worker(report: dict) -> str:
    """A worker's report in one line: pid, engine, tiers, page size."""
    w = report["worker"]
    tiers = ", ".join(
        f"{name} {t['capacity'] / GiB:.1f} GiB" for name, t in report["tiers"].items()
    )
    page = w["page_size"] // MiB
    return f"worker pid {w['pid']}, engine {w['engine']}, tiers {tiers}, page {page} MiB"
