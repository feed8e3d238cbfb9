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

:func:`setup_logging` is the one logging set-up of the ``ims-station`` command: level from the
command's default (``INFO`` for the daemons ``edge run`` / ``relay run``, ``WARNING`` otherwise) and
``-v``; on a terminal or in a file, lines with a time stamp; under systemd (stderr is the journal
stream named by ``$JOURNAL_STREAM``) no time stamp (journald adds its own) and a ``<N>`` syslog
priority prefix, so ``journalctl -p warning`` filters by our levels.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import IO, Any, Mapping

from ims_station.clock import Clock, SystemClock

__all__ = ["RateLimitedLog", "SystemClock", "setup_logging", "under_journald"]


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



# sd-daemon(3) priorities; journald reads the "<N>" prefix of a stream line (SyslogLevelPrefix=yes).
_SYSLOG_PRIORITY = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))
PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JOURNAL_FORMAT = "%(name)s: %(message)s"


class JournalFormatter(logging.Formatter):
    """No time stamp, a syslog priority prefix on the line (a traceback's lines go with it)."""

    def __init__(self) -> None:
        super().__init__(JOURNAL_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        prio = next((p for lvl, p in _SYSLOG_PRIORITY if record.levelno >= lvl), 7)
        text = super().format(record)
        return "\n".join(f"<{prio}>{line}" for line in text.split("\n"))


def under_journald(stream: IO[str] | None = None, env: Mapping[str, str] | None = None) -> bool:
    """True if *stream* (stderr) is the journal stream systemd connected (``$JOURNAL_STREAM`` is
    its ``device:inode``; a child whose stderr was redirected elsewhere inherits the variable but
    not the stream, hence the comparison, as systemd.exec(5) advises)."""
    env = os.environ if env is None else env
    value = env.get("JOURNAL_STREAM", "")
    stream = sys.stderr if stream is None else stream
    try:
        dev, ino = (int(x) for x in value.split(":", 1))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


_handler: logging.Handler | None = None


def setup_logging(verbose: int = 0, *, default: int = logging.WARNING, stream: IO[str] | None = None,
                  env: Mapping[str, str] | None = None) -> logging.Handler | None:
    """Configure the root logger: level *default* lowered by 10 per ``-v`` (down to DEBUG), to
    *stream* (stderr).  A second call replaces our handler; like ``logging.basicConfig``, nothing is
    changed when someone else configured the root logger already (an embedding program, pytest).
    Returns the handler in use, or None."""
    global _handler
    root = logging.getLogger()
    if any(h is not _handler for h in root.handlers):
        return None
    stream = sys.stderr if stream is None else stream
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JournalFormatter() if under_journald(stream, env) else logging.Formatter(PLAIN_FORMAT))
    if _handler is not None:
        root.removeHandler(_handler)
    root.addHandler(handler)
    root.setLevel(max(logging.DEBUG, default - 10 * max(0, verbose)))
    _handler = handler
    return handler
