"""``ims-station relay status`` and ``ims-station relay kpi``: the network view at the relay.

Owns these two commands' arguments and output (table, JSON, CSV, PNG); the figures are
``relay.status`` (per-station status) and ``relay.kpi`` (quality figures per station, channel and
day).  Both read the relay's data directory through read-only SQLite connections -- or, when the
config's ``[relay.state]`` names PostgreSQL, a read-only PostgreSQL session -- so they run next to
a live relay.  Registered by ``relay.cli.register``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any


def _data_dir(args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    """(data_dir, the [relay] table or {}) from ``--config`` or ``--data-dir``."""
    if args.config:
        from ims_station.relay.cli import load_config

        relay = load_config(args.config)["relay"]
        return Path(relay["data_dir"]), relay
    return Path(args.data_dir), {}


def _open_readers(data: Path, relay: dict[str, Any]) -> tuple[Any, Any]:
    """(archive index, state store or None), read-only, of the config's backend."""
    from ims_station.relay.status import connect_ro

    st = relay.get("state_settings") or {}
    if st.get("backend") == "postgresql":
        from ims_station.relay.pgstore import connect_reader

        db = connect_reader(st["dsn"], schema=st["schema"])    # state and index share the schema
        return db, db
    index = connect_ro(data / "archive" / "index.sqlite")
    return index, (connect_ro(data / "state.sqlite") if (data / "state.sqlite").is_file() else None)


def _at(args: argparse.Namespace) -> float:
    return time.time() if args.at is None else args.at / 1000.0


def _cmd_status(args: argparse.Namespace) -> int:
    from ims_station.output import print_json
    from ims_station.relay.status import DEFAULT_SILENT_ALARM_S, format_table, snapshot

    data, relay = _data_dir(args)
    silent = args.silent_alarm_s or relay.get("silent_alarm_s", DEFAULT_SILENT_ALARM_S)
    index, state = _open_readers(data, relay)
    try:
        snap = snapshot(index, state, now=_at(args), silent_alarm_s=silent)
    finally:
        index.close()
        if state is not None and state is not index:
            state.close()
    if args.json:
        print_json(snap)
    else:
        print(format_table(snap))
    return 1 if snap["alarms"] and args.alarm_exit else 0


def _cmd_kpi(args: argparse.Namespace) -> int:
    from ims_station.output import print_json
    from ims_station.relay import kpi
    from ims_station.relay.status import has_table

    data, relay = _data_dir(args)
    if args.to < args.from_:
        from ims_station.errors import ImsStationError

        raise ImsStationError(f"--to {args.to} is before --from {args.from_}")
    index, state = _open_readers(data, relay)
    if state is not None and state is not index:
        state.close()
    try:
        if not has_table(index, "kpi_channel_day"):
            rep = {"from": args.from_.isoformat(), "to": args.to.isoformat(), "channels": [], "stations": []}
        else:
            rep = kpi.report(index, args.from_, args.to, station=args.station, now=_at(args))
    finally:
        index.close()
    if args.png:
        kpi.write_png(rep, args.png)
    if args.json:
        print_json(rep)
    elif args.csv:
        kpi.write_csv(rep, sys.stdout)
    else:
        def pct(v: Any) -> str:
            return "     -" if v is None else f"{100 * v:6.2f}"

        print(f"{'STATION':<8} {'DAY':<10} {'AVAIL%':>6} {'TIMELY%':>7} {'REFILL%':>7} {'AUTH%':>6} "
              f"{'SAMPLES':>10} {'EXPECTED':>10}")
        for r in rep["stations"]:
            print(f"{r['station']:<8} {r['day']:<10} {pct(r['availability'])} {pct(r['timeliness']):>7} "
                  f"{pct(r['refilled_share']):>7} {pct(r['auth_pass_rate'])} {r['samples']:>10} "
                  f"{r['expected']:>10.0f}")
    return 0


def register(sub: Any, parse_day: Any, parse_time: Any) -> None:
    """Add ``status`` and ``kpi`` to the ``relay`` subcommands *sub*."""
    def source(p: argparse.ArgumentParser) -> None:
        src = p.add_mutually_exclusive_group(required=True)
        src.add_argument("--config", help="relay TOML configuration (its data_dir)")
        src.add_argument("--data-dir", help="the relay's data_dir (archive/ and state.sqlite)")
        p.add_argument("--at", type=parse_time, metavar="ISO",
                       help="figures as of this UTC time (default: now)")

    st = sub.add_parser("status", help="per-station network view: online, last frame, latency, backlog, gaps",
                        description="Per-station status from the relay's archive index and acknack state "
                                    "(docs/relay.md, \"Network view\"); safe while the relay runs.")
    source(st)
    st.add_argument("--silent-alarm-s", type=float, metavar="S",
                    help="silent after this many seconds (default: the config's silent_alarm_s, else 600)")
    st.add_argument("--json", action="store_true", help="print the status as JSON")
    st.add_argument("--alarm-exit", action="store_true", help="exit 1 when a station is silent")
    st.set_defaults(handler=_cmd_status)

    k = sub.add_parser("kpi", help="quality figures per station, channel and day (availability, timeliness, ...)",
                       description="Data availability, timeliness, refilled share and authentication pass "
                                   "rate per station, channel and UTC day (docs/relay.md, \"Quality figures\").")
    source(k)
    k.add_argument("--from", dest="from_", required=True, type=parse_day, metavar="DAY",
                   help="first UTC day, YYYY-MM-DD or YYYY-DDD")
    k.add_argument("--to", required=True, type=parse_day, metavar="DAY", help="last UTC day (inclusive)")
    k.add_argument("--station", help="one station (default: all)")
    fmt = k.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print the figures as JSON")
    fmt.add_argument("--csv", action="store_true", help="print one CSV row per station, channel and day")
    k.add_argument("--png", metavar="FILE", help="also write a PNG of availability per station and day")
    k.set_defaults(handler=_cmd_kpi)
