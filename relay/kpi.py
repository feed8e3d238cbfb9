"""The monitoring network's quality figures (KPIs) per station, channel and UTC day.

Owns the definitions and the arithmetic of the figures the relay reports (docs/relay.md, "Quality
figures"), the aggregate tables that hold them (in the archive index, ``index.sqlite``), their
per-batch update and the report (``ims-station relay kpi``, its CSV and the availability PNG).
It does not own the transaction: :class:`~ims_station.relay.archive.FileArchive` calls
:func:`record_batch` inside its commit, so a frame is counted exactly when it is archived -- a
crash loses both or neither, a resend of an archived frame is a duplicate and not counted twice,
and the figures survive restarts without reading a waveform file again.

Definitions (the seed organisation's figures; ``T = 300 s``)::

    availability        = samples received / samples expected            (station, channel, day)
    timeliness          = samples received within T of the sample's time / samples received
    timely availability = samples received within T / samples expected
    refilled share      = samples of refilled frames / samples received
    auth pass rate      = frames passing verification / (passing + failing)   (station, day)

* **samples received**: the ``nsamples`` of each channel subframe of every *archived* frame (not
  duplicates, not quarantined frames), each sample on the UTC day of its own time
  (``t_i = t_0 + i * length / nsamples``: a subframe across midnight is split exactly).
* **samples expected**: the channel's nominal rate (``nsamples / time length`` of its subframes, the
  last one seen that day, else the channel's latest) times the part of the day from the channel's
  first sample ever archived (a new station is not charged for days before it existed) to the end
  of the day, or to the report's ``now`` for the current day.
* **within T**: per sample, ``arrival - t_i <= T``, arrival = the relay's clock when the batch
  holding the frame was processed (``Incoming.received_at``).
* **refilled**: a frame archived after a frame of the same frame set with a higher sequence number
  was already archived, i.e. it filled a hole the acknacks reported (a resend), or came late.
* **authentication**: per station and UTC day *of reception* (a rejected frame's own time is not
  trusted): a data frame (``cd11`` topic) that reached the signature checks passes if they all
  passed (archived, duplicate, or rejected later: :data:`AUTH_PASSED_REJECTIONS`) and fails with a
  reason in :data:`AUTH_FAILED`.  Frames that never reached the checks (``crc``, ``malformed``,
  ``oversize``, ...) count neither way.

Figures start with the first frame archived by a relay that has these tables (an archive written
before them is not re-scanned).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from fractions import Fraction
from typing import Any, Iterable, Sequence

#: A sample is timely when its frame arrived within this many seconds of the sample's time.
TIMELY_S = 300
#: Rejection reasons that are a failed authentication (signature or key of a data frame).
AUTH_FAILED = frozenset({"unsigned", "wrong_station_key", "frame_signature", "subframe_signature"})
#: Rejection reasons decided only after every signature of the frame verified (``relay.verify``
#: order; ``duplicate_conflict`` and ``replay`` are the archive's): authentication passed.
AUTH_PASSED_REJECTIONS = frozenset({"subframe_time", "undecodable", "implausible_time", "sequence_time",
                                    "duplicate_conflict", "replay"})
_DAY_MS = 86_400_000
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

SCHEMA = """
CREATE TABLE IF NOT EXISTS kpi_channel_day (
    station     TEXT NOT NULL,
    channel     TEXT NOT NULL,          -- SITE/CHAN, or SITE/CHAN/LOC when a location code is set
    day         TEXT NOT NULL,          -- YYYY-MM-DD (UTC) of the samples
    samples     INTEGER NOT NULL,       -- samples received (archived frames)
    timely      INTEGER NOT NULL,       -- ... of which arrived within TIMELY_S of their time
    refilled    INTEGER NOT NULL,       -- ... of which came in refilled frames
    rate        REAL NOT NULL,          -- nominal rate (sps), last seen that day
    first_ms    INTEGER NOT NULL,       -- earliest sample time received that day
    PRIMARY KEY (station, channel, day)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS kpi_auth_day (
    station     TEXT NOT NULL,
    day         TEXT NOT NULL,          -- YYYY-MM-DD (UTC) of reception
    passed      INTEGER NOT NULL,
    failed      INTEGER NOT NULL,
    PRIMARY KEY (station, day)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS kpi_station (
    station          TEXT PRIMARY KEY,
    frame_ms         INTEGER NOT NULL,  -- time length of its latest frame
    last_nominal_ms  INTEGER NOT NULL,  -- latest nominal time archived
    last_received_at REAL NOT NULL      -- latest arrival of an archived frame (relay clock)
) WITHOUT ROWID;
"""


@dataclass(frozen=True)
class ChannelSpan:
    """One channel subframe of a frame, as the KPIs see it."""

    channel: str
    start_ms: int        # time of the first sample, ms since 1970
    nsamples: int
    length_ms: int       # subframe time length

    @property
    def rate(self) -> float:
        return self.nsamples * 1000.0 / self.length_ms if self.length_ms > 0 else 0.0


def channel_id(site: str, channel: str, location: str = "") -> str:
    loc = location.strip()
    return f"{site.strip()}/{channel.strip()}" + (f"/{loc}" if loc else "")


def spans_of(frame: Any) -> tuple[ChannelSpan, ...]:
    """The :class:`ChannelSpan` of each subframe of a verified ``cd11.DataFrame``."""
    from ims_station.cd11.timefmt import to_datetime

    return tuple(ChannelSpan(channel_id(sf.site, sf.channel, sf.location),
                             (to_datetime(sf.time) - _EPOCH) // timedelta(milliseconds=1),
                             int(sf.nsamples), int(sf.time_length_ms))
                 for sf in frame.subframes)


_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


def day_of_ms(ms: int) -> date:
    return date.fromordinal(_EPOCH_ORDINAL + ms // _DAY_MS)


def day_start_ms(d: date) -> int:
    return (d.toordinal() - _EPOCH_ORDINAL) * _DAY_MS


def _first_index_at(span: ChannelSpan, t_us: int) -> int:
    """Smallest sample index i with ``t_i >= t_us`` (microseconds), clamped to [0, nsamples]:
    integer arithmetic, exact (``t_i = start + i * length / nsamples``)."""
    num = (t_us - span.start_ms * 1000) * span.nsamples
    i = -(-num // (span.length_ms * 1000))           # ceil
    return min(max(i, 0), span.nsamples)


def split_span(span: ChannelSpan, received_at: float, refilled: bool) -> list[tuple[date, int, int, int, int]]:
    """(day, samples, timely, refilled, first sample ms of that day) for *span* arriving at
    *received_at* (relay clock, s; taken to the microsecond): its samples per UTC day, and how
    many of them arrived within :data:`TIMELY_S` of their own time."""
    n_all = span.nsamples
    if n_all <= 0:
        return []
    arrival_us = round(received_at * 1_000_000)
    if span.length_ms <= 0:       # no duration (a degenerate but verified subframe): one instant
        late = arrival_us - span.start_ms * 1000 > TIMELY_S * 1_000_000
        return [(day_of_ms(span.start_ms), n_all, 0 if late else n_all, n_all if refilled else 0, span.start_ms)]
    timely_from = _first_index_at(span, arrival_us - TIMELY_S * 1_000_000)
    out = []
    i0 = 0
    day_n = span.start_ms // _DAY_MS
    while i0 < n_all:
        i1 = _first_index_at(span, (day_n + 1) * _DAY_MS * 1000)
        if i1 > i0:
            n = i1 - i0
            first = span.start_ms + (i0 * span.length_ms) // n_all
            out.append((date.fromordinal(_EPOCH_ORDINAL + day_n), n, max(0, i1 - max(i0, timely_from)),
                        n if refilled else 0, first))
        i0 = max(i0, i1)
        day_n += 1
    return out


def record_batch(db: Any, archived: Sequence[tuple[Any, bool]], passed: Iterable[tuple[str, float]],
                 failed: Iterable[tuple[str, float]]) -> None:
    """Add one archive batch to the KPI tables on *db* (inside the caller's transaction).

    *archived*: (``FrameRecord``, refilled) of each frame archived now (its ``channels`` spans,
    ``frame_ms``, ``received_at``); *passed* / *failed*: (station, received_at) of each data frame
    that passed / failed authentication.  The SQL is common to SQLite and PostgreSQL (``?``
    parameters; ``relay.pgstore`` translates them): no two-argument MIN/MAX, columns of the
    existing row qualified by their table."""
    cells: dict[tuple[str, str, str], list] = {}
    stations: dict[str, list] = {}
    for fr, refilled in archived:
        for span in getattr(fr, "channels", ()) or ():
            for d, n, timely, refill, first in split_span(span, fr.received_at, refilled):
                c = cells.setdefault((fr.station, span.channel, d.isoformat()), [0, 0, 0, span.rate, first])
                c[0] += n
                c[1] += timely
                c[2] += refill
                c[3] = span.rate
                c[4] = min(c[4], first)
        frame_ms = int(getattr(fr, "frame_ms", 0) or 0)
        s = stations.setdefault(fr.station, [frame_ms, fr.nominal_ms, fr.received_at])
        if fr.nominal_ms >= s[1]:
            s[0], s[1] = frame_ms, fr.nominal_ms
        s[2] = max(s[2], fr.received_at)
    if cells:
        db.executemany(
            "INSERT INTO kpi_channel_day(station, channel, day, samples, timely, refilled, rate, first_ms) "
            "VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(station, channel, day) DO UPDATE SET "
            "samples = kpi_channel_day.samples + excluded.samples, "
            "timely = kpi_channel_day.timely + excluded.timely, "
            "refilled = kpi_channel_day.refilled + excluded.refilled, rate = excluded.rate, "
            "first_ms = CASE WHEN excluded.first_ms < kpi_channel_day.first_ms THEN excluded.first_ms "
            "ELSE kpi_channel_day.first_ms END",
            [(*k, *v) for k, v in cells.items()])
    if stations:
        db.executemany(
            "INSERT INTO kpi_station(station, frame_ms, last_nominal_ms, last_received_at) VALUES (?,?,?,?) "
            "ON CONFLICT(station) DO UPDATE SET "
            "frame_ms = CASE WHEN excluded.last_nominal_ms >= kpi_station.last_nominal_ms "
            "THEN excluded.frame_ms ELSE kpi_station.frame_ms END, "
            "last_nominal_ms = CASE WHEN excluded.last_nominal_ms > kpi_station.last_nominal_ms "
            "THEN excluded.last_nominal_ms ELSE kpi_station.last_nominal_ms END, "
            "last_received_at = CASE WHEN excluded.last_received_at > kpi_station.last_received_at "
            "THEN excluded.last_received_at ELSE kpi_station.last_received_at END",
            [(k, *v) for k, v in stations.items()])
    auth: dict[tuple[str, str], list[int]] = {}
    for i, items in enumerate((passed, failed)):
        for station, t in items:
            day = datetime.fromtimestamp(t, timezone.utc).date().isoformat()
            auth.setdefault((station, day), [0, 0])[i] += 1
    if auth:
        db.executemany(
            "INSERT INTO kpi_auth_day(station, day, passed, failed) VALUES (?,?,?,?) "
            "ON CONFLICT(station, day) DO UPDATE SET passed = kpi_auth_day.passed + excluded.passed, "
            "failed = kpi_auth_day.failed + excluded.failed",
            [(*k, *v) for k, v in auth.items()])


# -- the report ------------------------------------------------------------------------------------
def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


def report(db: Any, day_from: date, day_to: date, *, station: str | None = None,
           now: float) -> dict[str, Any]:
    """The figures of [*day_from*, *day_to*] (UTC days, inclusive) as of *now* (s since 1970):
    ``{"channels": [row per station, channel, day], "stations": [row per station, day]}``.
    Days after *now* are left out; a channel appears from the day of its first archived sample."""
    now_ms = Fraction(now) * 1000
    q_station = "" if station is None else " WHERE station = ?"
    args: tuple = () if station is None else (station,)
    chans = db.execute(f"SELECT station, channel, MIN(first_ms) FROM kpi_channel_day{q_station} "
                       "GROUP BY station, channel ORDER BY station, channel", args).fetchall()
    cells = {(s, c, d): (n, t, r, rate) for s, c, d, n, t, r, rate in db.execute(
        f"SELECT station, channel, day, samples, timely, refilled, rate FROM kpi_channel_day{q_station}", args)}
    latest_rate: dict[tuple[str, str], list[tuple[str, float]]] = {}
    for s, c, d, rate in db.execute(f"SELECT station, channel, day, rate FROM kpi_channel_day{q_station} "
                                    "ORDER BY day", args):
        latest_rate.setdefault((s, c), []).append((d, rate))
    auth = {(s, d): (p, f) for s, d, p, f in db.execute(
        f"SELECT station, day, passed, failed FROM kpi_auth_day{q_station}", args)}

    rows: list[dict[str, Any]] = []
    per_station: dict[tuple[str, str], list[float]] = {}
    d = day_from
    while d <= day_to:
        start, end = day_start_ms(d), day_start_ms(d + timedelta(days=1))
        if start >= now_ms:
            break
        ds = d.isoformat()
        for s, c, first_ms in chans:
            w0, w1 = max(start, first_ms), min(Fraction(end), now_ms)
            if first_ms >= end:
                continue
            n, timely, refilled, rate = cells.get((s, c, ds), (0, 0, 0, None))
            if rate is None:        # no frame that day: the rate last seen before it, else the first
                hist = latest_rate.get((s, c), [])
                before = [r for dd, r in hist if dd <= ds]
                rate = before[-1] if before else (hist[0][1] if hist else 0.0)
            expected = float(max(Fraction(0), w1 - w0) * Fraction(rate) / 1000)
            rows.append({"station": s, "channel": c, "day": ds, "rate": rate, "samples": n,
                         "expected": expected, "availability": _ratio(n, expected),
                         "timely": timely, "timeliness": _ratio(timely, n),
                         "timely_availability": _ratio(timely, expected),
                         "refilled": refilled, "refilled_share": _ratio(refilled, n)})
            acc = per_station.setdefault((s, ds), [0, 0.0, 0, 0])
            acc[0] += n
            acc[1] += expected
            acc[2] += timely
            acc[3] += refilled
        d += timedelta(days=1)
    stations = []
    keys = set(per_station) | {k for k in auth if day_from.isoformat() <= k[1] <= day_to.isoformat()}
    for s, ds in sorted(keys):
        n, expected, timely, refilled = per_station.get((s, ds), (0, 0.0, 0, 0))
        p, f = auth.get((s, ds), (0, 0))
        stations.append({"station": s, "day": ds, "samples": n, "expected": expected,
                         "availability": _ratio(n, expected), "timely": timely,
                         "timeliness": _ratio(timely, n), "timely_availability": _ratio(timely, expected),
                         "refilled": refilled, "refilled_share": _ratio(refilled, n),
                         "auth_passed": p, "auth_failed": f, "auth_pass_rate": _ratio(p, p + f)})
    return {"from": day_from.isoformat(), "to": day_to.isoformat(),
            "as_of": datetime.fromtimestamp(now, timezone.utc).isoformat(), "timely_s": TIMELY_S,
            "channels": rows, "stations": stations}


CSV_COLUMNS = ("station", "channel", "day", "rate", "samples", "expected", "availability", "timely",
               "timeliness", "timely_availability", "refilled", "refilled_share", "auth_passed",
               "auth_failed", "auth_pass_rate")


def write_csv(rep: dict[str, Any], fh: Any) -> None:
    """One CSV row per station, channel and day; the station-day rows follow with channel ``*``
    (they alone carry the authentication figures, which are per station)."""
    import csv

    w = csv.DictWriter(fh, CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rep["channels"]:
        w.writerow(r)
    for r in rep["stations"]:
        w.writerow(dict(r, channel="*", rate=""))


def write_png(rep: dict[str, Any], path: Any) -> None:
    """A heat map of availability per station (rows) and day (columns); empty cells: no figure."""
    try:
        import matplotlib
    except ImportError:
        from ims_station.errors import ImsStationError

        raise ImsStationError("the availability PNG needs matplotlib: pip install 'ims-station[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    stations = sorted({r["station"] for r in rep["stations"]})
    days = sorted({r["day"] for r in rep["stations"]}) or [rep["from"]]
    grid = np.full((max(1, len(stations)), len(days)), np.nan)
    for r in rep["stations"]:
        if r["availability"] is not None:
            grid[stations.index(r["station"]), days.index(r["day"])] = r["availability"] * 100.0
    fig, ax = plt.subplots(figsize=(max(4.0, 1.0 + 0.6 * len(days)), max(2.0, 1.0 + 0.4 * len(stations))),
                           dpi=100)
    try:
        cmap = matplotlib.colormaps["RdYlGn"].with_extremes(bad="#dddddd")
        im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0.0, vmax=100.0, aspect="auto")
        ax.set_xticks(range(len(days)), days, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(stations)), stations or ["(none)"], fontsize=8)
        if grid.size <= 400:
            for (i, j), v in np.ndenumerate(grid):
                if not np.isnan(v):
                    ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=7)
        fig.colorbar(im, ax=ax, label="availability (%)")
        ax.set_title(f"Data availability {rep['from']} .. {rep['to']}", fontsize=10)
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
