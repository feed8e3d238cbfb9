"""The ``ims-station`` command.

Each area owns its subcommands in its own ``cli`` module, which exposes
``register(subparsers)``.  Those modules must be cheap to import: heavy imports (numpy, paho,
cryptography) happen inside the command handlers.  A handler returns the process exit status.

Conventions for every command:

* ``--json`` prints only JSON on stdout (one object, or one object per line for streams); without it
  long-running commands show progress on the terminal (rich) and a human summary.
* Errors of ours (:class:`~ims_station.errors.ImsStationError`) end the command with a one-line
  message on stderr and exit status 2; they never print a traceback.
* A reader that closes our stdout early (``ims-station cd11 dump FILE | head``) ends the command
  quietly with exit status 141 (128 + SIGPIPE, as ``cat`` would): :func:`ims_station.output.stdout_gone`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from ims_station import __version__
from ims_station.errors import ImsStationError

# (module path) -- each registers one or more top-level subcommands.
COMMAND_MODULES = [
    "ims_station.cd11.cli",      # cd11 dump / verify
    "ims_station.ims20.cli",     # ims2 dump
    "ims_station.auth.cli",      # keys generate / export
    "ims_station.hil.cli",       # hil soak / hil run
    "ims_station.edge.cli",      # edge run
    "ims_station.edge.trigger_cli",  # trigger replay
    "ims_station.relay.cli",     # relay run
    "ims_station.demo",          # demo (the main job)
    "ims_station.simnet",        # sim network (the whole network, measuring the centre)
    "ims_station.doctor",        # doctor
    "ims_station.plot",          # plot event / soh (the plot extra)
    "ims_station.sohrecord",     # soh record (SOH history for plot soh)
    "ims_station.console",       # console (Textual UI; the console extra)
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ims-station",
        description="Station software for an IMS-like monitoring network (digitizer link, HIL, CD-1.1, uplink, relay).",
    )
    parser.add_argument("--version", action="version", version=f"ims-station {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name == name:  # area not built yet
                continue
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from ims_station.logutil import setup_logging

    # The daemons (edge run, relay run) set log_level=INFO: their routine summary is an INFO line.
    setup_logging(args.verbose, default=getattr(args, "log_level", logging.WARNING))
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except ImsStationError as err:
        print(f"ims-station {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        from ims_station.output import stdout_broken, stdout_gone

        if not stdout_broken():   # a socket's, not our reader's: a real error
            raise
        return stdout_gone()
