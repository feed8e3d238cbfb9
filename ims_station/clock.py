"""Clocks: the one definition of the clock interface the whole project injects.

Owns :class:`Clock` (the protocol: ``monotonic()`` for timeouts and schedules, ``time()`` for UTC
seconds), :class:`SystemClock` (the real one) and :class:`FakeClock` (moves only when a test calls
:meth:`FakeClock.advance`, so hours of protocol time run in microseconds and no test sleeps).

Every component that measures time takes a clock object instead of calling :mod:`time` itself
(STYLE.md lesson 7).  Other implementations of the same protocol live beside what they simulate,
because they are part of that simulation rather than general-purpose clocks:

* :class:`ims_station.hil.sim.SimClock` -- the HIL simulation's discrete time (integer nanoseconds,
  advanced by its scheduler);
* :class:`ims_station.demo.PacedClock` -- simulated time running *speed* times faster than the wall
  clock, shared by the demo's stations and relay.

They match :class:`Clock` structurally (no inheritance needed; ``isinstance(c, Clock)`` holds because
the protocol is runtime-checkable).

Not owned here: network deadlines inside a paho loop (``ims_station.mqtt`` uses an injected
:class:`SystemClock` for them), sleeping or waiting (callers wait on events, never on a clock).
"""

from __future__ import annotations

import time as _time
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "SystemClock", "FakeClock"]


@runtime_checkable
class Clock(Protocol):
    """What a component needs from time: two readings, no sleeping."""

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin; never goes backwards (timeouts, rate limits, schedules)."""
        ...

    def time(self) -> float:
        """UTC seconds since 1970 (timestamps that must survive a restart or go on the wire)."""
        ...


class SystemClock:
    """The real clock: :func:`time.monotonic` and :func:`time.time`."""

    @staticmethod
    def monotonic() -> float:
        return _time.monotonic()

    @staticmethod
    def time() -> float:
        return _time.time()


class FakeClock:
    """A clock for tests: both readings move together, and only by :meth:`advance`.

    ``t`` is the UTC reading (``time()``) and ``m`` the monotonic one; both are plain attributes so a
    test can read them (``clock.t``) or set them.  The defaults put ``time()`` in November 2023 and
    ``monotonic()`` well away from zero, so code that treats 0 as "never" is not fooled.
    """

    def __init__(self, t: float = 1_700_000_000.0, m: float = 1000.0) -> None:
        self.t = float(t)
        self.m = float(m)

    def monotonic(self) -> float:
        return self.m

    def time(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        """Let *dt* seconds pass (dt >= 0: monotonic time never goes backwards)."""
        if dt < 0:
            raise ValueError(f"FakeClock.advance: dt must be >= 0, not {dt}")
        self.t += dt
        self.m += dt

    def __repr__(self) -> str:
        return f"FakeClock(t={self.t!r}, m={self.m!r})"
