"""The retry policy: what is retried, how often, how long it waits."""

from __future__ import annotations

import errno

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.control.ufs import (
    RETRYABLE_ERRORS,
    ObjectChangedError,
    RetryPolicy,
    StoreConnectionError,
    StoreServerError,
    StoreTimeoutError,
    ThrottledError,
)

FAST = RetryPolicy(max_attempts=4, base_delay=0.001, max_delay=0.002)


class Flaky:
    """Fails with ``errors`` in turn, then returns ``"ok"``."""

    def __init__(self, *errors: BaseException):
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


@pytest.mark.parametrize(
    "error",
    [
        ThrottledError("slow down"),
        StoreServerError("internal error"),
        StoreConnectionError(errno.ECONNRESET, "reset"),
        StoreTimeoutError("timed out"),
        ConnectionRefusedError(errno.ECONNREFUSED, "refused"),
        OSError(errno.ETIMEDOUT, "NFS server not responding"),  # becomes TimeoutError
    ],
)
def test_transient_errors_are_retried(error):
    fn = Flaky(error, error)
    assert FAST.call(fn) == "ok"
    assert fn.calls == 3


@pytest.mark.parametrize(
    "error",
    [
        FileNotFoundError(errno.ENOENT, "missing"),
        PermissionError(errno.EACCES, "denied"),
        ObjectChangedError("changed"),
        ValueError("bad argument"),
        OSError(errno.EIO, "device error"),
    ],
)
def test_other_errors_fail_at_once(error):
    fn = Flaky(error)
    with pytest.raises(type(error)):
        FAST.call(fn)
    assert fn.calls == 1


def test_gives_up_after_max_attempts():
    errors = [ThrottledError(f"attempt {i}") for i in range(10)]
    fn = Flaky(*errors)
    with pytest.raises(ThrottledError, match="attempt 3"):
        FAST.call(fn)
    assert fn.calls == 4
    fn = Flaky(ThrottledError("once"))
    with pytest.raises(ThrottledError):
        RetryPolicy(max_attempts=1).call(fn)
    assert fn.calls == 1


def test_arguments_are_passed():
    assert FAST.call(lambda a, b=0: a + b, 2, b=3) == 5


@settings(max_examples=100)
@given(
    base=st.floats(0, 5),
    extra=st.floats(0, 60),
    attempt=st.integers(0, 40),
)
def test_delay_is_capped_full_jitter(base, extra, attempt):
    policy = RetryPolicy(max_attempts=3, base_delay=base, max_delay=base + extra)
    delay = policy.delay(attempt)
    assert 0.0 <= delay <= min(base + extra, base * 2.0**attempt) + 1e-9


def test_retryable_tuple():
    assert ThrottledError in RETRYABLE_ERRORS
    assert all(issubclass(e, BaseException) for e in RETRYABLE_ERRORS)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"max_attempts": 0}, ValueError, "max_attempts"),
        ({"max_attempts": 2.5}, TypeError, "max_attempts"),
        ({"max_attempts": True}, TypeError, "max_attempts"),
        ({"base_delay": -1}, ValueError, "base_delay"),
        ({"max_delay": float("inf")}, ValueError, "max_delay"),
        ({"base_delay": "1s"}, TypeError, "base_delay"),
        ({"base_delay": 3, "max_delay": 1}, ValueError, "max_delay"),
    ],
)
def test_bad_policies(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        RetryPolicy(**kwargs)


def test_coerce():
    assert RetryPolicy.coerce(None) == RetryPolicy()
    assert RetryPolicy.coerce({"max_attempts": 2}).max_attempts == 2
    assert RetryPolicy.coerce(FAST) is FAST
    with pytest.raises(TypeError, match="unknown"):
        RetryPolicy.coerce({"tries": 2})
    with pytest.raises(TypeError, match="RetryPolicy or a mapping"):
        RetryPolicy.coerce(3)
