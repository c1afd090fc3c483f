"""The worker's log: rotated by size, and the same message let through a bounded number
of times per interval, then counted."""

from __future__ import annotations

import logging
import os

from shoal.control._daemon import LogRateLimit, WorkerLogHandler


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def logger_with(handler: logging.Handler, name: str) -> logging.Logger:
    logger = logging.getLogger(name)
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger


def lines(path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


def test_the_same_message_is_let_through_burst_times_per_interval(tmp_path):
    clock = Clock()
    path = tmp_path / "worker.log"
    handler = WorkerLogHandler(str(path))
    handler.filters[:] = [LogRateLimit(handler, burst=5, interval=60.0, clock=clock)]
    log = logger_with(handler, "shoal.test.ratelimit")
    try:
        for i in range(1000):
            log.error("accept failed: %s (%d)", "Too many open files", i)
        log.info("another message")
        text = lines(path)
        assert sum("accept failed" in line for line in text) == 5
        assert sum("another message" in line for line in text) == 1
        clock.now += 61
        log.error("accept failed: %s (%d)", "Too many open files", 1000)
        text = lines(path)
        summary = [line for line in text if "were dropped" in line]
        assert len(summary) == 1
        assert "995 more messages like 'accept failed: %s (%d)'" in summary[0]
        assert "WARNING" in summary[0] or "ERROR" in summary[0]
        assert sum("accept failed: Too many" in line for line in text) == 6
    finally:
        handler.close()


def test_the_log_is_rotated_by_size(tmp_path):
    path = tmp_path / "worker.log"
    handler = WorkerLogHandler(str(path), max_bytes=10_000, backups=3)
    handler.filters.clear()  # distinct messages anyway; rotation alone here
    log = logger_with(handler, "shoal.test.rotate")
    try:
        for i in range(2000):
            log.info("line %d %s", i, "x" * 40)
    finally:
        handler.close()
    names = sorted(os.listdir(tmp_path))
    assert names == ["worker.log", "worker.log.1", "worker.log.2", "worker.log.3"]
    for name in names:
        assert os.path.getsize(tmp_path / name) <= 10_000
    assert lines(path)[-1].endswith(f"line 1999 {'x' * 40}")
