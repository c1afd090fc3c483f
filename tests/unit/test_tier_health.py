"""The health of a cache tier: normal -> unstable -> down on I/O errors, probed back, and
unstable errors forgotten after their window."""

from __future__ import annotations

import errno

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.control._fetch import TierHealth, TierState


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def error() -> OSError:
    return OSError(errno.EIO, "read: input/output error", "/shm/regions/000001")


def test_errors_make_a_tier_unstable_then_down_and_a_probe_brings_it_back():
    clock = Clock()
    health = TierHealth(["MEM", "SSD"], down_after=3, window=60, probe_interval=5, clock=clock)
    assert health.state("MEM") is TierState.NORMAL and health.usable("MEM")
    health.failed("MEM", error())
    assert health.state("MEM") is TierState.UNSTABLE and health.usable("MEM")
    health.failed("MEM", error())
    health.failed("MEM", error())
    assert health.state("MEM") is TierState.DOWN and not health.usable("MEM")
    assert health.state("SSD") is TierState.NORMAL  # tiers apart
    assert not health.probe_due("MEM")  # not before the interval
    clock.now += 5
    assert health.probe_due("MEM") and not health.probe_due("MEM")  # one prober at a time
    health.probed("MEM", error())
    assert health.state("MEM") is TierState.DOWN
    clock.now += 5
    assert health.probe_due("MEM")
    health.probed("MEM", None)
    assert health.state("MEM") is TierState.NORMAL and health.usable("MEM")
    report = health.report()
    assert report["MEM"]["io_errors"] == 3 and "input/output error" in report["MEM"]["last_error"]
    assert report["SSD"] == {"state": "normal", "io_errors": 0, "last_error": None}


def test_an_unstable_tier_is_normal_again_after_a_quiet_window():
    clock = Clock()
    health = TierHealth(["SSD"], down_after=3, window=60, clock=clock)
    health.failed("SSD", error())
    health.failed("SSD", error())
    clock.now += 61
    assert health.state("SSD") is TierState.NORMAL
    health.failed("SSD", error())  # the old errors no longer count towards down
    assert health.state("SSD") is TierState.UNSTABLE


@given(st.lists(st.floats(0, 30), max_size=40))
@settings(max_examples=100, deadline=None)
def test_down_only_with_enough_errors_within_the_window(gaps):
    clock = Clock()
    health = TierHealth(["HDD"], down_after=3, window=60, clock=clock)
    times = []
    for gap in gaps:
        clock.now += gap
        times.append(clock.now)
        health.failed("HDD", error())
        recent = [t for t in times if t > clock.now - 60]
        if health.state("HDD") is TierState.DOWN:
            break
        assert len(recent) < 3
    else:
        return
    assert len([t for t in times if t > clock.now - 60]) >= 3


@pytest.mark.parametrize(
    "kwargs",
    [{"down_after": 0}, {"down_after": True}, {"window": 0}, {"probe_interval": -1}],
)
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        TierHealth(["MEM"], **kwargs)
