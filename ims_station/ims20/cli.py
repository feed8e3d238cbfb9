"""``ims-station ims2 dump FILE... [--json]``: print parsed IMS 2.0 messages.

Owns only the command-line front end: reading files (bounded by the codec's message limit) and
printing.  Parsing is :func:`ims_station.ims20.parse`; the JSON form is
:func:`ims_station.ims20.model.to_jsonable` (every block's fields by name, times as ISO 8601 UTC,
spectra and the histogram as integer arrays).  Cheap to import: the codec (numpy) is imported inside
the handler.

Exit status: 0 when every file parsed; 2 when a file cannot be read or is not a valid message (one
line on stderr per file: ``FILE: IMS 2.0: line N: #Block: field: reason``).
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser("ims2", help="IMS 2.0 message tools (dump)",
                              description="Inspect IMS 2.0 messages (PHD spectra, RMSSOH, ALERT_*).")
    sub = p.add_subparsers(dest="ims2_command", metavar="SUBCOMMAND")
    d = sub.add_parser("dump", help="print the parsed message of one or more files",
                       description="Parse IMS 2.0 message files and print the envelope, every block's "
                                   "fields, and spectra and histograms as integer arrays.")
    d.add_argument("files", nargs="+", metavar="FILE")
    d.add_argument("--json", action="store_true", help="one JSON object per file on stdout")
    d.set_defaults(handler=cmd_dump)
    p.set_defaults(handler=lambda args: (p.print_help(), 2)[1])


def _read(path: str, limit: int) -> bytes:
    with open(path, "rb") as f:
        data = f.read(limit + 1)     # one byte more than allowed, so the codec reports the size
    return data


def cmd_dump(args: argparse.Namespace) -> int:
    from ims_station.ims20 import DEFAULT_LIMITS, Ims20Error, parse, to_jsonable
    from ims_station.output import print_json

    status = 0
    for path in args.files:
        try:
            msg = parse(_read(path, DEFAULT_LIMITS.max_message_bytes), DEFAULT_LIMITS)
        except OSError as err:
            print(f"ims-station ims2 dump: {path}: cannot read: {err.strerror}", file=sys.stderr)
            status = 2
            continue
        except Ims20Error as err:
            print(f"ims-station ims2 dump: {path}: {err}", file=sys.stderr)
            status = 2
            continue
        if args.json:
            print_json({"file": path, **to_jsonable(msg)})
        else:
            _print_human(path, msg)
    return status


def _print_human(path: str, msg) -> None:
    from ims_station.ims20 import model as m

    print(f"{path}: {msg.msg_type} message {msg.msg_id}" + (f" from {msg.source}" if msg.source else "")
          + f", {len(msg.sections)} section(s)")
    for sec in msg.sections:
        body = sec.body
        print(f"  DATA_TYPE {sec.data_type}" + (f" {sec.format}" if sec.format else ""))
        if isinstance(body, (m.PhdBody, m.RmsSohBody)):
            for name, value in vars(body).items():
                if value is None or name == "extra_blocks":
                    continue
                print(f"    {name}: {_short(value)}")
            for rb in body.extra_blocks:
                print(f"    #{rb.name} (not interpreted): {len(rb.lines)} line(s)")
        elif isinstance(body, m.AlertBody):
            print(f"    {body.station} {body.alert_type} {body.time.isoformat()}: {body.description}")
        else:
            print(f"    (not interpreted) {len(body.lines)} line(s)")


def _short(value) -> str:
    from ims_station.ims20 import model as m

    if isinstance(value, m.Spectrum):
        return (f"{value.counts.size} channels, span {value.energy_span:g} keV, "
                f"{int(value.counts.sum())} counts")
    if isinstance(value, m.Histogram):
        return (f"{value.gamma_channels} x {value.beta_channels} channels (gamma x beta), spans "
                f"{value.gamma_span:g} / {value.beta_span:g} keV, {int(value.counts.sum())} counts")
    from dataclasses import fields
    from datetime import datetime

    rows = getattr(value, "rows", None)
    parts = []
    for f in fields(value):
        v = getattr(value, f.name)
        if f.name == "rows":
            parts.append(f"{len(rows)} row(s)")
        elif isinstance(v, datetime):
            parts.append(f"{f.name}={m.format_time(v)}")
        else:
            parts.append(f"{f.name}={v!r}")
    text = ", ".join(parts)
    return text if len(text) <= 200 else text[:197] + "..."
