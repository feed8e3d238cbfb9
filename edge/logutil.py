"""Re-export of :class:`ims_station.logutil.RateLimitedLog` (its home since the relay uses it too)
and of ``SystemClock`` (home: :mod:`ims_station.clock`), for existing imports."""

from ims_station.logutil import RateLimitedLog, SystemClock

__all__ = ["RateLimitedLog", "SystemClock"]
