"""``ims-station trigger replay FILE...``: the station's own trigger run on miniSEED recordings.

Owns the command only: reading miniSEED with ``pymseed`` (libmseed, the FDSN reference library),
cutting the traces into time-aligned rounds of chunks and feeding them to the same
:class:`~ims_station.edge.trigger_stage.Detector` the station runs, with the settings of the
options or of a station file's ``[trigger]`` table (``--config``; options given as well override
it).  Prints the completed events (``--json``: one object ``{"events": [...]}``), so operators can
tune the parameters on real recordings (docs/trigger.md, "Replay").

Unreadable files, files without miniSEED and bad settings end the command with one line on
stderr and exit status 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ims_station.errors import ImsStationError

ROUND_S = 10.0              # seconds of every channel fed before the detector decides
MAX_FILE_BYTES = 1 << 31    # refuse larger files rather than unpack them into memory

# option -> [trigger] key (for the error messages: they name the option the user gave)
_OPTIONS = {"algorithm": "--algorithm", "sta": "--sta", "lta": "--lta", "on": "--on", "off": "--off",
            "filter": "--filter", "coincidence_sum": "--coincidence", "min_duration": "--min-duration",
            "max_duration": "--max-duration", "coincidence_window": "--coincidence-window", "pick": "--pick",
            "pick_window": "--pick-window"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("trigger", help="local triggering: replay recordings through the station's trigger")
    tsub = p.add_subparsers(dest="trigger_command", metavar="SUBCOMMAND")
    r = tsub.add_parser(
        "replay", help="run the station's trigger on miniSEED files and print the events",
        description="Runs the station's trigger (edge/trigger_stage.Detector: filter, STA/LTA, on/off "
                    "with minimum duration, coincidence) on miniSEED files and prints the events. "
                    "Settings not given take the [trigger] defaults (docs/configuration.md).")
    r.add_argument("files", nargs="+", metavar="FILE", help="miniSEED file(s); all channels in them take part")
    add_settings_options(r)
    r.add_argument("--json", action="store_true", help="print one JSON object")
    r.set_defaults(handler=_replay)
    p.set_defaults(handler=lambda args: (p.print_help(), 2)[1])


def add_settings_options(r: argparse.ArgumentParser) -> None:
    """The trigger settings options (``--config`` station file, ``--sta``, ``--on``, ...) shared by
    ``trigger replay`` and ``plot event``; :func:`settings_from_args` reads them."""
    r.add_argument("--config", metavar="FILE", help="take the settings from this station file's [trigger] table "
                                                     "(options given as well override it)")
    r.add_argument("--algorithm", metavar="NAME",
                   help="recstalta (default), classicstalta, delayedstalta or carlstatrig")
    r.add_argument("--sta", type=float, metavar="S", help="short-term window, seconds")
    r.add_argument("--lta", type=float, metavar="S", help="long-term window, seconds")
    r.add_argument("--on", type=float, metavar="X", help="trigger-on threshold")
    r.add_argument("--off", type=float, metavar="Y", help="trigger-off threshold (below --on)")
    r.add_argument("--filter", metavar="SPEC", help="bandpass:FMIN:FMAX | highpass:F | lowpass:F (Hz)")
    r.add_argument("--coincidence", type=float, metavar="N", help="coincidence sum needed for an event")
    r.add_argument("--coincidence-window", type=float, metavar="S",
                   help="seconds after a trigger's end in which another still joins it")
    r.add_argument("--min-duration", type=float, metavar="S", help="seconds above threshold before a trigger counts")
    r.add_argument("--max-duration", type=float, metavar="S", help="a channel trigger is cut after this long")
    r.add_argument("--pick", metavar="NAME", help="refined onset pick: aic (default) or none")
    r.add_argument("--pick-window", type=float, metavar="S", help="seconds before the trigger in which the AIC picks")


def settings_from_args(args: Any, channels: dict[str, float], *,
                       command: str = "ims-station trigger replay") -> Any:
    """The replay's settings: the ``[trigger]`` table of ``--config`` (if any) overridden by the
    options given; checked like the station's, against the channels found in the files."""
    from ims_station.config import load_toml, validate
    from ims_station.edge.config import SCHEMA
    from ims_station.edge.trigger_stage import settings_from_table

    table: dict[str, Any] = {}
    if args.config:
        data = load_toml(args.config)
        validate(data, SCHEMA, args.config)
        table = dict(data.get("trigger", {}))
    given = {key: getattr(args, opt.lstrip("-").replace("-", "_"))
             for key, opt in _OPTIONS.items() if getattr(args, opt.lstrip("-").replace("-", "_")) is not None}
    table.update(given)
    if args.config:
        # errors name the station file's key, or the option when the option set it
        file, prefix, names = args.config, "trigger.", {k: f"(option {_OPTIONS[k]}) {k}" for k in given}
    else:
        file, prefix, names = command, "", dict(_OPTIONS)
    return settings_from_table(table, file=file, prefix=prefix, key_names=names, channels=channels)


def read_segments(files: list[str]) -> list[tuple[str, int, int, Any]]:
    """Every contiguous segment of the files: (``NET.STA.LOC.CHA``, first sample us, rate mHz,
    samples as float64)."""
    import numpy as np
    import pymseed

    out = []
    for name in files:
        path = Path(name)
        try:
            size = path.stat().st_size
        except OSError as err:
            raise ImsStationError(f"{name}: cannot read: {err.strerror or err}") from None
        if not path.is_file():
            raise ImsStationError(f"{name}: not a file")
        if size > MAX_FILE_BYTES:
            raise ImsStationError(f"{name}: {size} bytes is more than the {MAX_FILE_BYTES} a replay reads")
        try:
            traces = pymseed.MS3TraceList(str(path), unpack_data=True)
            for tid in traces:
                net, sta, loc, cha = pymseed.sourceid2nslc(tid.sourceid)
                code = f"{net}.{sta}.{loc}.{cha}"
                for seg in tid:
                    rate = float(seg.samprate)
                    if not (rate > 0 and np.isfinite(rate)):
                        raise ImsStationError(f"{name}: {code}: sampling rate {rate!r} is not positive")
                    data = seg.np_datasamples
                    if data is None or data.dtype.kind not in "iuf":
                        raise ImsStationError(f"{name}: {code}: samples are not numbers")
                    out.append((code, (int(seg.starttime) + 500) // 1000, int(round(rate * 1000)),
                                np.asarray(data, dtype=np.float64)))
        except pymseed.MiniSEEDError as err:
            raise ImsStationError(f"{name}: not readable as miniSEED: {err}") from None
    if not out:
        raise ImsStationError(f"no samples in {', '.join(files)}")
    return out


def replay(segments: list[tuple[str, int, int, Any]], settings: Any, *, round_s: float = ROUND_S) -> tuple[list, Any]:
    """Feed *segments* to a :class:`Detector` in time-aligned rounds of *round_s* seconds (every
    channel's samples of a round, then the decisions), then flush.  Returns (the completed events'
    ``off`` decisions in order, the detector)."""
    from ims_station.edge.ingest import sample_offset_us
    from ims_station.edge.trigger_stage import Detector

    det = Detector(settings, station="REPLAY")
    segments = sorted(segments, key=lambda s: (s[1], s[0]))
    t0 = segments[0][1]
    step = int(round_s * 1e6)
    pieces = []             # (round, t_first_us, code, rate_mhz, samples)
    for code, start, rate, data in segments:
        i = 0
        n = len(data)
        while i < n:
            t = start + sample_offset_us(i, rate)
            k = (t - t0) // step
            end_us = t0 + (k + 1) * step
            j = i + 1
            # samples of this segment before the end of round k
            j = max(j, min(n, -(-(end_us - start) * rate // 1_000_000_000)))
            pieces.append((k, t, code, rate, data[i:j]))
            i = j
    pieces.sort(key=lambda p: (p[0], p[1], p[2]))
    decisions = []
    for idx, (k, t, code, rate, x) in enumerate(pieces):
        decisions += det.push([code], t, rate, x, decide=False)
        if idx + 1 == len(pieces) or pieces[idx + 1][0] != k:
            decisions += det.decide()
    decisions += det.flush()
    return [d for d in decisions if d.state == "off" and d.kept], det


def event_json(d: Any) -> dict:
    from ims_station.edge.trigger_stage import iso_time

    pick_us = d.onset_us if d.pick_us is None else d.pick_us
    return {"time": iso_time(d.onset_us), "pick": iso_time(pick_us), "pick_s": pick_us / 1e6,
            "duration": d.duration, "stations": list(d.stations),
            "channels": list(d.channels), "coincidence_sum": d.coincidence_sum, "peak": d.peak,
            "clipped": d.clipped}


def _replay(args: Any) -> int:
    from ims_station.output import print_json

    segments = read_segments(args.files)
    channels: dict[str, float] = {}
    for code, _, rate, _ in segments:
        channels.setdefault(code, rate / 1000.0)
    settings = settings_from_args(args, channels)
    events, det = replay(segments, settings)
    docs = [event_json(d) for d in events]
    if args.json:
        print_json({"events": docs})
        return 0
    for e in docs:
        print(f"{e['time']}  pick {e['pick'][11:]}  {e['duration']:8.2f} s  sum {e['coincidence_sum']:g}  peak {e['peak']:.2f}  "
              f"{' '.join(e['channels'])}")
    st = det.stats()
    print(f"{len(docs)} event(s); gaps {st['resets_gap']}, rate changes {st['rate_changes']}")
    return 0
