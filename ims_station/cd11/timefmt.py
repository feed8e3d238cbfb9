"""CD-1.1 time stamps: exactly 20 ASCII characters ``yyyyddd hh:mm:ss.ttt`` (UTC, day of year).

Owns validation and conversion of the time-stamp text; frame objects keep the text itself so that
re-encoding is byte-identical.  Does not own clocks (callers pass datetimes or epoch seconds).

``datetime.strptime`` is not used for validation: it accepts variable-width fields ("2019 1 ..."),
and it is ~20x slower than the fixed-position check below, which runs once per channel per frame.
A leap second (``ss`` = 60) is accepted, as a station's GPS clock may emit one; converting it to
a datetime rolls over to the next minute.

Both directions are total on what this module accepts: :func:`check_time` passes only texts that
:func:`to_datetime` / :func:`to_epoch` / :func:`to_ms` convert (year 0001 to 9999, and not the leap
second that would roll ``9999365 23:59:60`` into year 10000), so code holding a parsed frame may
convert its times without a try.  :func:`format_time` refuses a datetime or epoch value outside
that range (or NaN) with :class:`~ims_station.cd11.errors.Cd11BuildError`, never a
``ValueError``/``OverflowError`` from ``datetime``.
"""

from __future__ import annotations

import calendar
import functools
import re
from datetime import datetime, timedelta, timezone

TIME_LEN = 20
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_RE = re.compile(rb"\d{7} \d\d:\d\d:\d\d\.\d{3}\Z")


@functools.lru_cache(maxsize=1024)  # a frame repeats its time stamp in every subframe
def check_time(raw: bytes) -> str | None:
    """Return None if *raw* (20 bytes) is a valid CD-1.1 time stamp, else the reason."""
    if len(raw) != TIME_LEN or not _RE.match(raw):
        return f"time stamp {raw!r} is not 'yyyyddd hh:mm:ss.ttt'"
    year = int(raw[0:4])
    doy = int(raw[4:7])
    if not 1 <= doy <= (366 if calendar.isleap(year) else 365):
        return f"time stamp {raw.decode()!r}: day of year {doy} out of range"
    if int(raw[8:10]) > 23 or int(raw[11:13]) > 59 or int(raw[14:16]) > 60:
        return f"time stamp {raw.decode()!r}: hour/minute/second out of range"
    if year == 0:
        return f"time stamp {raw.decode()!r}: year 0000 is before the first representable year 0001"
    try:
        to_datetime(raw.decode("ascii"))
    except (OverflowError, ValueError):
        # Only 9999365/9999366 23:59:60.xxx gets here: the leap second rolls into year 10000.
        return f"time stamp {raw.decode()!r}: after the last representable instant (9999-12-31)"
    return None


def to_datetime(text: str) -> datetime:
    """Convert a (valid) time stamp to an aware UTC datetime."""
    year, doy = int(text[0:4]), int(text[4:7])
    h, m, s, ms = int(text[8:10]), int(text[11:13]), int(text[14:16]), int(text[17:20])
    base = datetime(year, 1, 1, tzinfo=timezone.utc)
    return base + timedelta(days=doy - 1, hours=h, minutes=m, seconds=s, milliseconds=ms)


def format_time(t: datetime | float | int | str) -> str:
    """Format a datetime (naive = UTC) or POSIX seconds as a time stamp, truncated to milliseconds.

    A string is validated and returned unchanged.
    """
    if isinstance(t, str):
        reason = check_time(t.encode("ascii", "replace"))
        if reason:
            from ims_station.cd11.errors import Cd11BuildError

            raise Cd11BuildError(reason)
        return t
    try:
        if not isinstance(t, datetime):
            # Integer milliseconds avoid float rounding (…59.9999 -> "…59.999" not "…60.000").
            ms = int(round(float(t) * 1000))
            t = _EPOCH + timedelta(milliseconds=ms)
        elif t.tzinfo is not None:
            t = t.astimezone(timezone.utc)
    except (OverflowError, ValueError) as err:   # NaN, inf, beyond year 1..9999
        from ims_station.cd11.errors import Cd11BuildError

        raise Cd11BuildError(f"time {t!r} cannot be a CD-1.1 time stamp (years 0001-9999): {err}") from None
    doy = t.timetuple().tm_yday
    return f"{t.year:04d}{doy:03d} {t.hour:02d}:{t.minute:02d}:{t.second:02d}.{t.microsecond // 1000:03d}"


def try_format_time(t: datetime | float | int) -> str | None:
    """:func:`format_time`, or None where no time stamp can hold *t* (for values read from a
    peer -- a board's clock -- that go into a log line or an optional field)."""
    from ims_station.cd11.errors import Cd11BuildError

    try:
        return format_time(t)
    except Cd11BuildError:
        return None


def to_epoch(text: str) -> float:
    """POSIX seconds of a (valid) time stamp."""
    return to_datetime(text).timestamp()


def to_ms(text: str) -> int:
    """Integer milliseconds since 1970-01-01 of a (valid) time stamp (exact, no float rounding)."""
    return (to_datetime(text) - _EPOCH) // timedelta(milliseconds=1)
