"""``ims-station edge run --config FILE``: the station gateway.

Owns the command only.  It runs the full gateway -- every serial port (LinkDecoder ->
StreamAssembler) -> CD-1.1 framer -> durable outbox -> MQTT uplink -- through
:func:`ims_station.edge.station.run`, the same code as ``python -m ims_station.edge.station``, from
one station file (docs/configuration.md).  ``--uplink FILE`` is kept for configurations that still
have the gateway tables in a second file.
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("edge", help="the station gateway")
    esub = p.add_subparsers(dest="edge_command", metavar="SUBCOMMAND")
    run = esub.add_parser("run", help="run the station gateway (serial ports -> frames -> outbox -> MQTT)")
    add_run_arguments(run)
    run.set_defaults(handler=_run)
    p.set_defaults(handler=lambda args: (p.print_help(), 2)[1])


def add_run_arguments(ap: argparse.ArgumentParser) -> None:
    """The options of ``ims-station edge run`` and ``python -m ims_station.edge.station``.

    Kept here, not in ``station``, so that building the ``ims-station`` parser imports no numpy.
    """
    ap.add_argument("--config", required=True, metavar="FILE",
                    help="station TOML file ([station], [[ports]], [framer], [outbox], [keys], [uplink])")
    ap.add_argument("--uplink", metavar="FILE", default=None,
                    help="compatibility: [framer]/[outbox]/[keys]/[uplink] from a separate file")
    ap.add_argument("--seconds", type=float, default=0.0, help="stop after this long (0: until SIGTERM/Ctrl-C)")
    ap.add_argument("--interval", type=float, default=0.0, help="seconds between status lines (0: only at the end)")
    ap.add_argument("--json", action="store_true", help="status as JSON lines")


def _run(args: argparse.Namespace) -> int:
    from .station import run_from_args

    return run_from_args(args)
