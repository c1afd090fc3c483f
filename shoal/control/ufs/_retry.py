"""Retries of under-store calls: the one place that decides what is retried and how long
to wait. Backends turn their errors into ours first (``_errors.py``), then call through a
:class:`RetryPolicy`; their own client libraries are told not to retry."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from ._errors import StoreServerError, ThrottledError

__all__ = ["RETRYABLE_ERRORS", "RetryPolicy"]

log = logging.getLogger("shoal.ufs")

T = TypeVar("T")

#: Errors worth another attempt: the store is busy, failing on its side, unreachable or
#: slow. Everything else (missing object, no permission, bad argument) fails at once.
RETRYABLE_ERRORS: tuple[type[BaseException], ...] = (
    ThrottledError,
    StoreServerError,
    ConnectionError,
    TimeoutError,
)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently an under-store call is retried.

    Attempt ``n`` (from 0) that fails with one of :data:`RETRYABLE_ERRORS` is followed by a
    sleep drawn uniformly from ``[0, min(max_delay, base_delay * 2**n)]`` ("full jitter"),
    until ``max_attempts`` attempts have failed; the last error is raised.

    Parameters
    ----------
    max_attempts
        Attempts in total, at least 1 (1 means no retry).
    base_delay
        Upper bound of the first sleep, in seconds.
    max_delay
        Cap on every sleep, in seconds.
    """

    max_attempts: int = 4
    base_delay: float = 0.1
    max_delay: float = 2.0

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            raise TypeError(f"max_attempts must be an int, got {self.max_attempts!r}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        for name in ("base_delay", "max_delay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number of seconds, got {value!r}")
            if not 0 <= value < float("inf"):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if self.max_delay < self.base_delay:
            raise ValueError(
                f"max_delay ({self.max_delay}) must be >= base_delay ({self.base_delay})"
            )

    @classmethod
    def coerce(cls, value: RetryPolicy | Mapping[str, Any] | None) -> RetryPolicy:
        """A policy from ``None`` (the defaults), a policy, or a mapping of its fields."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            unknown = set(value) - {"max_attempts", "base_delay", "max_delay"}
            if unknown:
                raise TypeError(f"retry: unknown field(s) {', '.join(sorted(unknown))}")
            return cls(**value)
        raise TypeError(f"retry must be a RetryPolicy or a mapping, got {type(value).__name__}")

    def delay(self, attempt: int) -> float:
        """Seconds to sleep after failed attempt ``attempt`` (counted from 0)."""
        return random.uniform(0.0, min(self.max_delay, self.base_delay * 2.0**attempt))

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)``, retried on :data:`RETRYABLE_ERRORS`."""
        attempt = 0
        while True:
            try:
                return fn(*args, **kwargs)
            except RETRYABLE_ERRORS as exc:
                attempt += 1
                if attempt >= self.max_attempts:
                    raise
                pause = self.delay(attempt - 1)
                log.info(
                    "retrying after attempt %d/%d failed (%s); next in %.2f s",
                    attempt,
                    self.max_attempts,
                    exc,
                    pause,
                )
                time.sleep(pause)
