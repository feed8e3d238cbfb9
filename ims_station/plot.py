"""``ims-station plot event|soh``: headless PNGs for operators (matplotlib, Agg backend).

Owns the two commands and their figures only:

* ``plot event`` -- an event's waveforms and, below each, the characteristic function the station's
  own trigger computes on them (``edge/trigger_stage``'s filter -> STA/LTA -> on/off pipeline with the
  settings of a station file's ``[trigger]`` table or of the ``trigger replay`` options), the on/off
  thresholds, each channel's trigger spans and the network trigger's on/off marks (the station's
  ``Detector`` run over the same samples, as ``trigger replay`` runs it).  Data come from miniSEED
  files (read by ``edge/trigger_cli.read_segments``) or from the relay archive through its miniSEED
  export (``Archive.export_mseed``), never from a second reader of CD-1.1.
* ``plot soh`` -- chosen numeric fields of SOH documents recorded as JSON lines over time.

Does not own: the trigger numerics and settings (``edge/trigger.py``, ``edge/trigger_stage.py``),
reading miniSEED (``edge/trigger_cli.py``), the archive (``relay/archive.py``).  docs/plots.md.

Missing data, unreadable files, bad settings and a missing matplotlib end the command with one
line on stderr and exit status 2 (:class:`~ims_station.errors.ImsStationError`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from ims_station.errors import ImsStationError

WARMUP_LTAS = 5.0           # the characteristic function is computed from this many LTA windows before the plot
WARMUP_EXTRA_S = 10.0       # ... plus this (filter settling)
MAX_CHANNELS = 12           # rows of a figure: more would be unreadable
MAX_LINE_BYTES = 1 << 20    # a JSON line longer than this is skipped (SOH documents are a few kB)
MAX_POINTS = 2_000_000      # samples drawn per trace at most (decimated for drawing beyond)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


# ------------------------------------------------------------------------------------------------
# shared


def _pyplot() -> Any:
    """matplotlib.pyplot on the headless Agg backend, or the error naming the extra."""
    try:
        import matplotlib
    except ImportError:
        raise ImsStationError("plots need matplotlib: pip install 'ims-station[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, out: str) -> None:
    """Write the figure to *out* (atomically: a reader never sees half a PNG)."""
    tmp = f"{out}.tmp{os.getpid()}.png"
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, out)
    except OSError as err:
        raise ImsStationError(f"{out}: cannot write: {err.strerror or err}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def parse_time_us(text: str) -> int:
    """ISO 8601 (naive = UTC, ``Z`` allowed) -> microseconds since 1970."""
    try:
        t = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ImsStationError(f"--time: {text!r} is not an ISO 8601 time (e.g. 2026-12-03T13:00:00Z)") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return (t - _EPOCH) // timedelta(microseconds=1)


def _iso(us: int) -> str:
    return (_EPOCH + timedelta(microseconds=us)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ------------------------------------------------------------------------------------------------
# plot event


def _station_of(code: str) -> str:
    parts = code.split(".")
    return parts[1] if len(parts) == 4 else ""


def _matches(code: str, pattern: str) -> bool:
    from ims_station.edge.trigger_stage import TriggerSettings

    return TriggerSettings(channels=(pattern,)).selects(code)


def _in_event(code: str, event: dict) -> bool:
    """Is *code* one of the archived event's channels (listed as NET.STA.LOC.CHA, LOC.CHA or CHA)?"""
    return any(isinstance(c, str) and (code == c or code.endswith("." + c)) for c in event.get("channels", []))


def crop(segments: list, lo_us: int, hi_us: int) -> list:
    """The parts of *segments* (code, first sample us, rate mHz, samples) inside [lo_us, hi_us]."""
    from ims_station.edge.ingest import sample_offset_us

    out = []
    for code, start, rate, data in segments:
        n = len(data)
        # first sample at or after lo, first sample after hi (times as the station computes them)
        i0 = max(0, -(-(lo_us - start) * rate // 1_000_000_000))
        i1 = min(n, (hi_us - start) * rate // 1_000_000_000 + 1)
        while i0 > 0 and start + sample_offset_us(i0 - 1, rate) >= lo_us:
            i0 -= 1
        if i1 > i0:
            out.append((code, start + sample_offset_us(i0, rate), rate, data[i0:i1]))
    return out


def characteristic(segment: tuple, settings: Any) -> tuple[Any, Any, list]:
    """(filtered samples, characteristic function, channel triggers as (on, off) sample indices) of
    one contiguous segment, by the station's own pipeline (``trigger_stage._Pipeline``)."""
    from ims_station.edge.trigger_stage import _Pipeline

    _, _, rate, x = segment
    pipe = _Pipeline(settings, rate / 1000.0)
    y = x if pipe.filter is None else pipe.filter.process(x)
    cf = pipe.cf.process(y)
    done = pipe.onset.process(cf) + pipe.onset.flush()
    spans = [(e.on, e.off) for e in done if hasattr(e, "off")]
    return y, cf, spans


def _archive_segments(args: argparse.Namespace, lo_us: int, hi_us: int) -> tuple[list, dict | None]:
    """Segments of the station from the relay archive (through its miniSEED export) and the archived
    event at ``--time`` (merged on/off row of ``relay events``), if there is one."""
    import tempfile

    from ims_station.edge.trigger_cli import read_segments
    from ims_station.relay.cli import _archive_from, merge_events

    t_ms = args.t_us // 1000
    with _archive_from(argparse.Namespace(config=None, archive=args.archive)) as archive:
        rows, _ = merge_events(archive.iter_events(args.station, since_ms=t_ms - 1000, until_ms=t_ms + 1001))
        event = min(rows, key=lambda r: abs(parse_time_us(r["time"]) - args.t_us)) if rows else None
        network = args.network
        full = [c for c in (event or {}).get("channels", []) if isinstance(c, str) and len(c.split(".")) == 4]
        if full and not network:
            network = full[0].split(".")[0]
        day = (_EPOCH + timedelta(microseconds=lo_us)).date()
        last = (_EPOCH + timedelta(microseconds=hi_us)).date()
        with tempfile.TemporaryDirectory(prefix="ims-plot-") as tmp:
            files = []
            held = set(archive.days(args.station))
            while day <= last:
                if day in held:
                    files += archive.export_mseed(args.station, day, tmp, network=network or "XX")
                day += timedelta(days=1)
            if not files:
                raise ImsStationError(f"{args.archive}: no archived data of station {args.station} "
                                      f"between {_iso(lo_us)} and {_iso(hi_us)}")
            segments = read_segments([str(f) for f in files])
    return segments, event


def plot_event(args: argparse.Namespace) -> dict[str, Any]:
    """Build and write the event figure; returns what it shows (for ``--json``)."""
    from ims_station.edge.trigger_cli import read_segments, replay, settings_from_args

    plt = _pyplot()
    args.t_us = parse_time_us(args.time)
    # the settings decide the margins and the warm-up: read the data generously first
    if args.before is not None and args.before < 0 or args.after is not None and args.after < 0:
        raise ImsStationError("--before/--after: must not be negative")
    event = None
    if args.archive:
        # the export gives whole days: those of the hour around --time (cropped below)
        segments, event = _archive_segments(args, args.t_us - 3_600_000_000, args.t_us + 3_600_000_000)
    else:
        segments = read_segments(args.mseed)
    segments = [s for s in segments if _station_of(s[0]) == args.station]
    if not segments:
        raise ImsStationError(f"no samples of station {args.station} in the data given")
    rates: dict[str, float] = {}
    for code, _, rate, _ in segments:
        rates.setdefault(code, rate / 1000.0)
    settings = settings_from_args(args, rates, command="ims-station plot event")

    before = args.before if args.before is not None else settings.pre_event
    if args.after is not None:
        after = args.after
    elif event and event.get("duration") is not None:
        after = float(event["duration"]) + settings.post_event
    else:
        after = settings.post_event
    lo, hi = args.t_us - int(before * 1e6), args.t_us + int(after * 1e6)
    warm_lo = lo - int((WARMUP_LTAS * settings.lta + WARMUP_EXTRA_S) * 1e6)

    # channels drawn: --channel patterns, else the archived event's, else those the trigger uses
    if args.channel:
        codes = [c for c in rates if any(_matches(c, p) for p in args.channel)]
        if not codes:
            raise ImsStationError(f"--channel: {', '.join(args.channel)} selects none of {', '.join(rates)}")
    elif event and [c for c in rates if _in_event(c, event)]:
        codes = [c for c in rates if _in_event(c, event)]
    else:
        codes = [c for c in rates if settings.selects(c)] or list(rates)
    codes = sorted(codes)[:MAX_CHANNELS]

    data = crop(segments, warm_lo, hi)
    shown = [s for s in crop(data, lo, hi) if s[0] in codes]
    if not shown:
        raise ImsStationError(f"no samples of {', '.join(codes)} between {_iso(lo)} and {_iso(hi)}")
    decisions, _ = replay(data, settings) if data else ([], None)
    marks = [(d.onset_us, d.end_us) for d in decisions
             if d.end_us is not None and d.end_us >= lo and d.onset_us <= hi]

    import numpy as np

    fig, axes = plt.subplots(2 * len(codes), 1, sharex=True, figsize=(10, 0.5 + 2.2 * len(codes)), dpi=100,
                             gridspec_kw={"height_ratios": [3, 2] * len(codes)})
    axes = np.atleast_1d(axes)
    channels_out = []
    try:
        for k, code in enumerate(codes):
            ax_w, ax_c = axes[2 * k], axes[2 * k + 1]
            triggers = 0
            for seg in (s for s in data if s[0] == code):
                _, start, rate, _ = seg
                y, cf, spans = characteristic(seg, settings)
                t = (start - args.t_us) / 1e6 + np.arange(len(y)) * (1000.0 / rate)
                keep = (t >= -before) & (t <= after)
                step = max(1, int(keep.sum() // MAX_POINTS) + 1) if keep.sum() > MAX_POINTS else 1
                ax_w.plot(t[keep][::step], y[keep][::step], lw=0.6, color="black")
                ax_c.plot(t[keep][::step], cf[keep][::step], lw=0.8, color="tab:blue")
                for on, off in spans:
                    if t[off] >= -before and t[on] <= after:
                        triggers += 1
                        ax_c.axvspan(max(t[on], -before), min(t[off], after), color="tab:orange", alpha=0.25)
            ax_c.axhline(settings.on, color="tab:red", ls="--", lw=0.8, label=f"on {settings.on:g}")
            ax_c.axhline(settings.off, color="tab:green", ls="--", lw=0.8, label=f"off {settings.off:g}")
            for ax in (ax_w, ax_c):
                ax.axvline(0.0, color="grey", ls=":", lw=0.8)
                for on_us, end_us in marks:
                    ax.axvline((on_us - args.t_us) / 1e6, color="tab:red", lw=1.0)
                    ax.axvline((end_us - args.t_us) / 1e6, color="tab:green", lw=1.0)
                ax.tick_params(labelsize=7)
            ax_w.set_ylabel(code, fontsize=7)
            ax_c.set_ylabel(settings.algorithm, fontsize=7)
            ax_c.legend(loc="upper right", fontsize=6)
            channels_out.append({"channel": code, "channel_triggers": triggers})
        axes[-1].set_xlim(-before, after)
        axes[-1].set_xlabel(f"seconds after {_iso(args.t_us)}", fontsize=8)
        filt = str(settings.filter) if settings.filter else "no filter"
        axes[0].set_title(f"{args.station}  {_iso(args.t_us)}  {settings.algorithm} sta {settings.sta:g} s "
                          f"lta {settings.lta:g} s  {filt}  (red: trigger on, green: off)", fontsize=8)
        fig.tight_layout()
        _save(fig, args.out)
    finally:
        plt.close(fig)
    return {"out": args.out, "station": args.station, "time": _iso(args.t_us), "from": _iso(lo), "to": _iso(hi),
            "channels": channels_out,
            "events": [{"on": _iso(a), "off": _iso(b)} for a, b in marks],
            "archived_event": event["event_id"] if event else None}


# ------------------------------------------------------------------------------------------------
# plot soh


def _lookup(doc: Any, path: str) -> float | None:
    for part in path.split("."):
        if not isinstance(doc, dict) or part not in doc:
            return None
        doc = doc[part]
    if isinstance(doc, bool):
        return float(doc)
    if isinstance(doc, (int, float)) and math.isfinite(doc):
        return float(doc)
    return None


def _doc_time(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)) and math.isfinite(v):
        return float(v)
    if isinstance(v, str):
        try:
            return parse_time_us(v) / 1e6
        except ImsStationError:
            return None
    return None


def read_soh(files: list[str], *, time_field: str = "time", station: str | None = None) -> tuple[list, int]:
    """(time s, station, document) of every JSON object line of *files*, by time; and the number of
    lines skipped (not JSON, not an object, no time, too long).  A line ``TOPIC {json}`` (what
    ``mosquitto_sub -v`` prints) counts as its JSON; a station's document of a time already read
    (a retained one recorded twice) is read once."""
    docs, skipped = [], 0
    seen: set[tuple[float, str]] = set()
    for name in files:
        try:
            fh = open(name, "rb")
        except OSError as err:
            raise ImsStationError(f"{name}: cannot read: {err.strerror or err}") from None
        with fh:
            while True:
                line = fh.readline(MAX_LINE_BYTES + 1)
                if not line:
                    break
                if len(line) > MAX_LINE_BYTES:
                    skipped += 1
                    while line and not line.endswith(b"\n"):
                        line = fh.readline(MAX_LINE_BYTES + 1)
                    continue
                text = line.strip()
                if not text:
                    continue
                if not text.startswith(b"{") and b" {" in text:
                    text = text[text.index(b" {") + 1:]
                try:
                    doc = json.loads(text)
                except (ValueError, UnicodeDecodeError, RecursionError):
                    skipped += 1
                    continue
                t = _doc_time(doc.get(time_field)) if isinstance(doc, dict) else None
                if t is None:
                    skipped += 1
                    continue
                sta = str(doc.get("station", ""))
                if station is not None and sta != station and not sta.endswith("." + station):
                    continue
                if (t, sta) in seen:          # a retained document recorded again after a restart
                    continue
                seen.add((t, sta))
                docs.append((t, sta, doc))
    docs.sort(key=lambda d: d[0])
    return docs, skipped


def soh_series(docs: list, field: str) -> dict[str, tuple[list, list]]:
    """Per station: (times, values) of *field* (``a.b``; ``a.b/s``: its rate per second between
    documents, a counter that went down -- a restart -- leaves a gap)."""
    rate = field.endswith("/s")
    path = field[:-2] if rate else field
    out: dict[str, tuple[list, list]] = {}
    last: dict[str, tuple[float, float]] = {}
    for t, sta, doc in docs:
        v = _lookup(doc, path)
        ts, vs = out.setdefault(sta, ([], []))
        if rate:
            prev = last.get(sta)
            if v is not None:
                last[sta] = (t, v)
            if v is None or prev is None or t <= prev[0]:
                continue
            d = v - prev[1]
            v = d / (t - prev[0]) if d >= 0 else math.nan
        ts.append(t)
        vs.append(math.nan if v is None else v)
    return {s: tv for s, tv in out.items() if any(not math.isnan(x) for x in tv[1])}


def plot_soh(args: argparse.Namespace) -> dict[str, Any]:
    plt = _pyplot()
    fields = [f.strip() for f in args.fields.split(",") if f.strip()]
    if not fields:
        raise ImsStationError("--fields: name at least one field, e.g. outbox.frames,uplink.published/s")
    if len(fields) > MAX_CHANNELS:
        raise ImsStationError(f"--fields: at most {MAX_CHANNELS} fields in one figure")
    docs, skipped = read_soh(args.files, time_field=args.time_field, station=args.station)
    if not docs:
        raise ImsStationError(f"no SOH documents with a {args.time_field!r} time in {', '.join(args.files)}"
                              + (f" for station {args.station}" if args.station else "")
                              + (f" ({skipped} line(s) skipped)" if skipped else ""))
    series = {f: soh_series(docs, f) for f in fields}
    empty = [f for f, s in series.items() if not s]
    if empty:
        raise ImsStationError(f"--fields: no numeric value of {', '.join(empty)} in {len(docs)} document(s)")

    import numpy as np

    fig, axes = plt.subplots(len(fields), 1, sharex=True, figsize=(10, 0.8 + 1.8 * len(fields)), dpi=100)
    axes = np.atleast_1d(axes)
    try:
        for ax, f in zip(axes, fields):
            for sta, (ts, vs) in sorted(series[f].items()):
                when = [datetime.fromtimestamp(t, timezone.utc) for t in ts]
                ax.plot(when, vs, lw=1.0, marker="." if len(ts) < 200 else None, label=sta or "?")
            ax.set_ylabel(f, fontsize=7)
            ax.tick_params(labelsize=7)
            ax.grid(True, alpha=0.3)
            if len(series[f]) > 1:
                ax.legend(loc="upper right", fontsize=6)
        axes[-1].set_xlabel("UTC", fontsize=8)
        fig.autofmt_xdate()
        first = datetime.fromtimestamp(docs[0][0], timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        last = datetime.fromtimestamp(docs[-1][0], timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        axes[0].set_title(f"SOH {args.station or ''}  {first} .. {last} UTC  ({len(docs)} documents)", fontsize=8)
        fig.tight_layout()
        _save(fig, args.out)
    finally:
        plt.close(fig)
    return {"out": args.out, "documents": len(docs), "skipped": skipped,
            "fields": {f: sorted(s) for f, s in series.items()}}


# ------------------------------------------------------------------------------------------------
# command


def _run(fn: Any) -> Any:
    def handler(args: argparse.Namespace) -> int:
        from ims_station.output import print_json

        result = fn(args)
        if args.json:
            print_json(result)
        else:
            print(result["out"])
        return 0
    return handler


def register(sub: argparse._SubParsersAction) -> None:
    from ims_station.edge.trigger_cli import add_settings_options

    p = sub.add_parser("plot", help="PNG plots: an event's waveforms and trigger, SOH history (matplotlib)")
    psub = p.add_subparsers(dest="plot_command", metavar="SUBCOMMAND")
    e = psub.add_parser(
        "event", help="an event's waveforms with the trigger's characteristic function and thresholds",
        description="Draws each channel's samples around --time and below them the characteristic function "
                    "of the station's own trigger (filter, STA/LTA) with the on/off thresholds, the "
                    "channel trigger spans and the network trigger's on/off marks. docs/plots.md.")
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--archive", metavar="DIR", help="relay archive folder (data_dir/archive)")
    src.add_argument("--mseed", nargs="+", metavar="FILE", help="miniSEED file(s)")
    e.add_argument("--station", required=True, help="station code (STA of NET.STA.LOC.CHA)")
    e.add_argument("--time", required=True, metavar="ISO", help="event time (as `relay events` lists it), UTC")
    e.add_argument("--before", type=float, metavar="S", help="seconds shown before --time (default: pre_event)")
    e.add_argument("--after", type=float, metavar="S",
                   help="seconds shown after --time (default: the archived event's duration + post_event)")
    e.add_argument("--channel", action="append", metavar="PATTERN",
                   help="channels drawn (LOC.CHA or NET.STA.LOC.CHA, wildcards; repeatable)")
    e.add_argument("--network", help="network code of archived data (default: the archived event's, else XX)")
    add_settings_options(e)
    e.add_argument("--out", required=True, metavar="PNG", help="PNG file to write")
    e.add_argument("--json", action="store_true", help="print what was drawn as one JSON object")
    e.set_defaults(handler=_run(plot_event))

    s = psub.add_parser("soh", help="SOH history from recorded JSON lines",
                        description="Draws chosen numeric fields of SOH documents (one JSON object per line, "
                                    "e.g. recorded with mosquitto_sub) over time. docs/plots.md.")
    s.add_argument("files", nargs="+", metavar="FILE", help="JSON-lines file(s) of SOH documents")
    s.add_argument("--fields", required=True, metavar="A.B,C.D",
                   help="dotted paths of numeric fields; suffix /s for a counter's rate per second")
    s.add_argument("--station", help="only documents of this station")
    s.add_argument("--time-field", default="time", metavar="KEY",
                   help="key of the document time (POSIX seconds or ISO 8601; default: time)")
    s.add_argument("--out", required=True, metavar="PNG", help="PNG file to write")
    s.add_argument("--json", action="store_true", help="print what was drawn as one JSON object")
    s.set_defaults(handler=_run(plot_soh))
    p.set_defaults(handler=lambda args: (p.print_help(), 2)[1])
