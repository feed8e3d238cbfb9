"""Rate-limited logging for untrusted input: a token bucket per message kind.

A noisy serial line can produce thousands of bad frames per second, a misbehaving station thousands
of bad payloads; logging each would drown the log and cost more CPU than the decoding.  Shared by the
edge (serial ingest) and the relay (rejections, the poison-message boundary); ``edge/logutil.py``,
its former home, re-exports it.  :class:`RateLimitedLog` lets ``burst`` messages of one
kind through, then one per ``1 / rate`` seconds, and reports how many were suppressed when it
next lets one through.  The counters (not the log) are the exact record; the log is for humans.

The clock is injected (an :class:`ims_station.clock.Clock`; only ``monotonic()`` is read), so tests
need no sleeping.  The stdlib ``logging`` has no rate limiting of its own, hence this small helper.
``SystemClock`` is re-exported from :mod:`ims_station.clock` (its home) for existing imports.
"""

from __future__ import annotations

import logging
from typing import Any

from ims_station.clock import Clock, SystemClock

__all__ = ["RateLimitedLog", "SystemClock"]


class RateLimitedLog:
    def __init__(self, logger: logging.Logger, clock: Clock, *, rate: float = 1.0, burst: int = 5) -> None:
        self._log = logger
        self._clock = clock
        self._rate = float(rate)
        self._burst = float(burst)
        # kind -> [tokens, last refill time, suppressed since last emit]
        self._buckets: dict[str, list[float]] = {}

    def __call__(self, kind: str, level: int, msg: str, *args: Any) -> bool:
        """Log ``msg % args`` at *level* unless *kind* is over its budget.  Returns True if logged."""
        now = self._clock.monotonic()
        b = self._buckets.get(kind)
        if b is None:
            b = self._buckets[kind] = [self._burst, now, 0.0]
        b[0] = min(self._burst, b[0] + (now - b[1]) * self._rate)
        b[1] = now
        if b[0] < 1.0:
            b[2] += 1
            return False
        b[0] -= 1.0
        if b[2]:
            msg = msg + " (%d similar messages suppressed)"
            args = args + (int(b[2]),)
            b[2] = 0
        self._log.log(level, msg, *args)
        return True

    def suppressed(self, kind: str) -> int:
        b = self._buckets.get(kind)
        return int(b[2]) if b else 0

