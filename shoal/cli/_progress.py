"""A small progress display for long jobs, on stderr.

On a terminal it is one line redrawn in place (a bar, percent, counts, rate, ETA). Written
to a file or a pipe, it is a plain line every few seconds and one at the end, so logs stay
readable.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from typing import IO

from .._units import format_size
from ._common import format_duration

__all__ = ["ProgressBar"]


def _pair(done: int, total: int) -> str:
    """``done`` of ``total`` bytes, the unit written once when both share it."""
    a, b = format_size(done), format_size(total)
    unit = b.rsplit(" ", 1)[1]
    if a.endswith(" " + unit):
        return f"{a.rsplit(' ', 1)[0]}/{b}"
    return f"{a}/{b}"


class ProgressBar:
    """Progress of a job counted in files and bytes.

    Parameters
    ----------
    stream
        Where to write (stderr, usually).
    label
        Word that starts each line, e.g. ``load``.
    tty
        Draw in place; default: whether ``stream`` is a terminal.
    interval
        Seconds between plain lines (not a terminal).
    tty_interval
        Seconds between redraws on a terminal.
    width
        Line width on a terminal; default: the terminal's.
    clock
        Monotonic time source (seconds).

    Notes
    -----
    Call :meth:`update` as often as convenient (it draws only when due), then
    :meth:`finish` once.
    """

    def __init__(
        self,
        stream: IO[str],
        label: str = "progress",
        *,
        tty: bool | None = None,
        interval: float = 5.0,
        tty_interval: float = 0.1,
        width: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.stream = stream
        self.label = label
        if tty is None:
            isatty = getattr(stream, "isatty", None)
            tty = bool(isatty and isatty())
        self.tty = tty
        self.interval = interval if not tty else tty_interval
        self.width = width
        self._clock = clock
        self._start = clock()
        self._last_draw: float | None = None
        self._last_line = ""
        self._state = (0, 0, 0, 0)
        self._finished = False
        self._cells: int | None = None

    # ----------------------------------------------------------------- text

    def _numbers(self) -> tuple[float, float, float | None]:
        """Fraction done, bytes per second, seconds left (None when unknown)."""
        files_done, files_total, bytes_done, bytes_total = self._state
        if bytes_total:
            fraction = bytes_done / bytes_total
        elif files_total:
            fraction = files_done / files_total
        else:
            fraction = 1.0 if self._finished else 0.0
        elapsed = max(self._clock() - self._start, 1e-9)
        rate = bytes_done / elapsed
        left = None
        if 0 < fraction < 1:
            left = elapsed * (1 - fraction) / fraction
        return min(max(fraction, 0.0), 1.0), rate, left

    def plain_line(self) -> str:
        """The current state as one plain line."""
        files_done, files_total, bytes_done, bytes_total = self._state
        fraction, rate, left = self._numbers()
        elapsed = self._clock() - self._start
        parts = [
            f"{self.label}: {fraction * 100:3.0f}%",
            f"{files_done}/{files_total} files",
            f"{format_size(bytes_done)} of {format_size(bytes_total)}",
            f"{format_size(int(rate))}/s",
            f"{format_duration(elapsed)} elapsed",
        ]
        if left is not None and not self._finished:
            parts.append(f"ETA {format_duration(left)}")
        return ", ".join(parts)

    def tty_line(self) -> str:
        """The current state as a bar line, fitted to the width."""
        files_done, files_total, bytes_done, bytes_total = self._state
        fraction, rate, left = self._numbers()
        width = self.width or shutil.get_terminal_size((80, 24)).columns
        tail = (
            f" {fraction * 100:3.0f}%  {files_done}/{files_total} files  "
            f"{_pair(bytes_done, bytes_total)}  {format_size(int(rate))}/s"
        )
        if left is not None and not self._finished:
            tail += f"  ETA {format_duration(left)}"
        elif self._finished:
            tail += f"  in {format_duration(self._clock() - self._start)}"
        head = f"{self.label} "
        if self._cells is None:
            # Sized once, with room for the counts to grow, so the bar does not jump.
            widest = (
                f" 100%  {files_total}/{files_total} files  {_pair(bytes_total, bytes_total)}"
                "  1023.9 MiB/s  ETA 59m59s"
            )
            room = width - 1 - len(head) - 2 - len(widest)
            self._cells = min(room, 30) if room >= 10 else 0
        cells = self._cells
        if cells:
            full = int(fraction * cells)
            bar = "[" + "#" * full + "-" * (cells - full) + "]"
            line = head + bar + tail
        else:
            line = head.rstrip() + tail
        return line[: max(width - 1, 1)]

    # ----------------------------------------------------------------- drawing

    def update(self, files_done: int, files_total: int, bytes_done: int, bytes_total: int) -> None:
        """Record the counts; draw when a line is due."""
        self._state = (files_done, files_total, bytes_done, bytes_total)
        now = self._clock()
        if self.tty:
            if self._last_draw is None or now - self._last_draw >= self.interval:
                self._draw_tty()
                self._last_draw = now
        elif now - (self._last_draw if self._last_draw is not None else self._start) >= (
            self.interval
        ):
            self._write_plain()
            self._last_draw = now

    def _draw_tty(self) -> None:
        line = self.tty_line()
        pad = max(len(self._last_line) - len(line), 0)
        self.stream.write("\r" + line + " " * pad)
        self.stream.flush()
        self._last_line = line

    def _write_plain(self) -> None:
        line = self.plain_line()
        self.stream.write(line + "\n")
        self.stream.flush()
        self._last_line = line

    def finish(self) -> None:
        """Draw the final state (and end the terminal line); idempotent."""
        if self._finished:
            return
        self._finished = True
        if self.tty:
            self._draw_tty()
            self.stream.write("\n")
            self.stream.flush()
        else:
            self._write_plain()

    def abort(self) -> None:
        """End the display without a final state (the job failed); idempotent."""
        if self._finished:
            return
        self._finished = True
        if self.tty and self._last_line:
            self.stream.write("\n")
            self.stream.flush()


def add_progress_options(parser) -> None:
    """The ``output`` options of a command that shows progress: ``-q`` and
    ``--progress-interval``."""
    out = parser.add_argument_group("output")
    out.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    out.add_argument(
        "--progress-interval",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds between progress lines when stderr is not a terminal (default 5)",
    )
