"""The relay's network view: per-station status (``ims-station relay status``) and the silent-station alarm.

Owns what an operator at the data centre sees per station -- online, last frame, latency p50/p99,
backlog and open gaps from the acknack state, quarantined payloads, verification failures -- and
the alarm of a station silent for longer than ``[relay] silent_alarm_s``
(:class:`SilenceWatch`, run by the relay core).  It reads what the relay stores anyway, never a
waveform file: the archive index (``index.sqlite``: frames, quarantine, the ``kpi_station`` table
of ``relay.kpi``) and the frame-set states (``state.sqlite``), through **read-only** SQLite
connections, so it works while the relay runs (WAL: readers never block the writer) and after it
stopped.  It does not own the figures per day (``relay.kpi``) nor the counters of a running
process (``RelayCore.counters``).

Definitions (docs/relay.md, "Network view"):

* *online*: the station's last archived frame arrived at most ``silent_alarm_s`` ago (relay clock);
  else it is *silent* -- an alarm.
* *latency*: arrival - (nominal time + frame length) of the station's latest ``window`` frames (by
  nominal time), nearest-rank p50 and p99.
* *backlog*: frames missing inside the acknacked range of its frame sets (what the acknacks ask the
  station to resend); *gaps open*: the number of gap runs.
* *quarantined*: every quarantined payload from its topics; *verification failures*: those with a
  security reason (``relay.core.SECURITY_REASONS``: the same set as the relay's ``security_events``
  counter and ``/metrics`` ``ims_relay_station_verification_failures``, but from the archive, so
  across restarts).
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from ims_station.relay import kpi

log = logging.getLogger(__name__)

#: Default of ``[relay] silent_alarm_s``: a station silent this long (s) is an alarm.
DEFAULT_SILENT_ALARM_S = 600.0
#: Frames per station over which ``relay status`` takes the latency percentiles.
DEFAULT_LATENCY_WINDOW = 500

def _verification_failures() -> frozenset[str]:
    from ims_station.relay.core import SECURITY_REASONS     # core imports this module

    return SECURITY_REASONS


class SilenceWatch:
    """The silent-station alarm: ``seen(station, t)`` for each verified frame, ``check(now)`` now
    and then; a station whose last frame is older than *silent_s* goes silent (one WARNING), and
    back (one INFO) with its next frame.  Pure apart from the log (no clock, no I/O)."""

    def __init__(self, silent_s: float | None, *, on_change: Callable[[str, bool, float], None] | None = None) -> None:
        self.silent_s = silent_s
        self.last: dict[str, float] = {}
        self.silent: set[str] = set()
        self.alarms = 0
        self.on_change = on_change

    def seen(self, station: str, t: float) -> None:
        if t > self.last.get(station, float("-inf")):
            self.last[station] = t
        if station in self.silent and self.silent_s is not None:
            self.silent.discard(station)
            log.info("station %s: frames again (silent alarm cleared)", station)
            if self.on_change:
                self.on_change(station, False, t)

    def check(self, now: float) -> list[str]:
        """Stations that went silent at this check (each logged once at WARNING)."""
        if not self.silent_s:
            return []
        new = []
        for station, t in self.last.items():
            if station not in self.silent and now - t > self.silent_s:
                self.silent.add(station)
                self.alarms += 1
                new.append(station)
                log.warning("ALARM station %s silent: no frame for %.0f s (silent_alarm_s %.0f)",
                            station, now - t, self.silent_s)
                if self.on_change:
                    self.on_change(station, True, now)
        return new


def connect_ro(path: Path) -> sqlite3.Connection:
    """A read-only connection to the relay's SQLite file *path* (the relay may be writing)."""
    from ims_station.relay.errors import ArchiveError

    if not path.is_file():
        raise ArchiveError(f"{path}: not found (no relay data here)")
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10.0)
        db.execute("PRAGMA query_only = 1")
        db.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
        return db
    except sqlite3.Error as err:
        raise ArchiveError(f"{path}: cannot open read-only: {err}") from err


def has_table(db: Any, name: str) -> bool:
    has = getattr(db, "has_table", None)          # PostgreSQL (relay.pgstore.PgReader)
    if has is not None:
        return bool(has(name))
    return db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() is not None


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (a latency that was actually observed)."""
    if not values:
        return None
    s = sorted(values)
    return s[max(0, math.ceil(p / 100.0 * len(s)) - 1)]


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, timezone.utc).isoformat().replace("+00:00", "Z")


def snapshot(index: Any, state: Any, *, now: float,
             silent_alarm_s: float = DEFAULT_SILENT_ALARM_S,
             window: int = DEFAULT_LATENCY_WINDOW) -> dict[str, Any]:
    """Per-station status from the archive index and the state store (connections from
    :func:`connect_ro`, or with the PostgreSQL backend ``relay.pgstore.connect_reader``: the SQL
    is common to both) as of *now* (relay clock, s)."""
    stations: dict[str, dict[str, Any]] = {}

    def row(sta: str) -> dict[str, Any]:
        return stations.setdefault(sta, {
            "station": sta, "online": False, "silent_alarm": False, "last_frame": None, "last_arrival": None,
            "age_s": None, "latency_p50_s": None, "latency_p99_s": None, "latency_frames": 0,
            "backlog": 0, "gaps_open": 0, "frame_sets": 0, "quarantined": 0, "verification_failures": 0})

    if has_table(index, "kpi_station"):
        for sta, frame_ms, last_nominal_ms, last_received_at in index.execute(
                "SELECT station, frame_ms, last_nominal_ms, last_received_at FROM kpi_station"):
            r = row(sta)
            r["last_frame"] = _iso((last_nominal_ms + frame_ms) / 1000.0)
            r["last_arrival"] = _iso(last_received_at)
            r["age_s"] = now - last_received_at
            r["online"] = r["age_s"] <= silent_alarm_s
            r["silent_alarm"] = not r["online"]
            lat = [received - (nominal + frame_ms) / 1000.0 for nominal, received in index.execute(
                "SELECT nominal_ms, received_at FROM frames WHERE station = ? AND day >= ? "
                "ORDER BY day DESC, nominal_ms DESC LIMIT ?",
                (sta, kpi.day_of_ms(last_nominal_ms - 86_400_000).isoformat(), window))]
            r["latency_frames"] = len(lat)
            r["latency_p50_s"] = percentile(lat, 50)
            r["latency_p99_s"] = percentile(lat, 99)
    failures = _verification_failures()
    for sta, reason, n in index.execute(
            "SELECT station, reason, COUNT(*) FROM quarantine WHERE station IS NOT NULL GROUP BY station, reason"):
        r = row(sta)
        r["quarantined"] += n
        if reason in failures:
            r["verification_failures"] += n
    if state is not None and has_table(state, "frame_sets"):
        for name, record in state.execute("SELECT name, record FROM frame_sets"):
            try:
                rec = json.loads(record)
                gaps = rec.get("gaps") or []
                missing = sum(int(g[1]) - int(g[0]) for g in gaps)
            except (ValueError, TypeError, KeyError, IndexError, AttributeError):
                continue             # not ours to repair here: the relay reports unreadable records
            r = row(name.split(":", 1)[0])
            r["frame_sets"] += 1
            r["gaps_open"] += len(gaps)
            r["backlog"] += missing
    return {"as_of": _iso(now), "silent_alarm_s": silent_alarm_s,
            "alarms": sorted(s for s, r in stations.items() if r["silent_alarm"]),
            "stations": [stations[s] for s in sorted(stations)]}


def format_table(snap: dict[str, Any]) -> str:
    """The per-station table of ``relay status`` (fits 80 columns at 8-character station codes)."""
    def num(v: Any, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    lines = [f"{'STATION':<8} {'STATE':<7} {'LAST FRAME END':<20} {'P50 S':>6} {'P99 S':>6} {'BACKLOG':>7} "
             f"{'GAPS':>5} {'QUAR':>5} {'VERIF':>5}"]
    for r in snap["stations"]:
        state = "online" if r["online"] else ("SILENT" if r["last_arrival"] else "-")
        last = (r["last_frame"] or "-")[:19]
        lines.append(f"{r['station']:<8} {state:<7} {last:<20} {num(r['latency_p50_s'], '6.1f')} "
                     f"{num(r['latency_p99_s'], '6.1f')} {r['backlog']:>7} {r['gaps_open']:>5} "
                     f"{r['quarantined']:>5} {r['verification_failures']:>5}")
    if snap["alarms"]:
        lines.append(f"ALARM: silent for more than {snap['silent_alarm_s']:.0f} s: {', '.join(snap['alarms'])}")
    return "\n".join(lines)
