"""ims_station.clock: the Clock protocol, the system clock, the fake clock, and the project's other
implementations of the protocol (the HIL simulation's and the demo's)."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ims_station.clock import Clock, FakeClock, SystemClock


def test_fake_clock_moves_only_when_advanced_both_readings_together():
    c = FakeClock(t=1_700_000_000.0, m=1000.0)
    assert (c.time(), c.monotonic()) == (1_700_000_000.0, 1000.0)
    assert (c.time(), c.monotonic()) == (1_700_000_000.0, 1000.0)     # no wall time leaks in
    c.advance(2.5)
    assert (c.time(), c.monotonic()) == (1_700_000_002.5, 1002.5)
    c.advance(0)
    assert c.monotonic() == 1002.5


def test_fake_clock_refuses_to_go_backwards():
    c = FakeClock()
    with pytest.raises(ValueError, match="dt must be >= 0"):
        c.advance(-0.001)
    assert c.monotonic() == 1000.0


@given(st.lists(st.floats(0, 1e6), max_size=50))
def test_fake_clock_monotonic_is_the_sum_of_its_steps(steps):
    c = FakeClock(m=0.0, t=0.0)
    last = c.monotonic()
    for dt in steps:
        c.advance(dt)
        assert c.monotonic() >= last
        last = c.monotonic()
    assert c.monotonic() == pytest.approx(sum(steps)) and c.time() == pytest.approx(sum(steps))


def test_fake_clock_defaults_keep_zero_meaning_never():
    c = FakeClock()
    assert c.monotonic() > 0 and c.time() > 1_600_000_000


def test_system_clock_reads_the_real_clocks():
    c = SystemClock()
    a, b = c.monotonic(), c.monotonic()
    assert b >= a
    assert abs(c.time() - time.time()) < 60          # same source; a minute allows any scheduling


def test_every_clock_of_the_project_implements_the_protocol():
    from ims_station.demo import PacedClock
    from ims_station.hil.sim import SimClock

    for c in (SystemClock(), FakeClock(), SimClock(), PacedClock(start_utc=1_700_000_000.0, speed=10.0)):
        assert isinstance(c, Clock), type(c).__name__
        assert isinstance(c.monotonic(), float) and isinstance(c.time(), float)


def test_sim_clock_time_is_its_start_plus_simulated_seconds():
    from ims_station.hil.sim import SimClock

    c = SimClock(start_utc=1_767_225_600)
    c.now_ns = 2_500_000_000
    assert c.monotonic() == 2.5 and c.time() == 1_767_225_602.5


def test_something_without_time_is_not_a_clock():
    class OnlyMonotonic:
        def monotonic(self) -> float:
            return 0.0

    assert not isinstance(OnlyMonotonic(), Clock)
