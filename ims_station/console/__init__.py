"""``ims-station console``: the operator's terminal UI (docs/console.md).

Owns the ``console`` command: which sources the app attaches to (a gateway's status API by
``--socket``/``--url``/``--config``; the relay's view over MQTT by ``--relay FILE`` or
``--broker HOST:PORT``) and ``--serve`` (the same app in a browser through ``textual-serve``).
The app is :mod:`ims_station.console.app`, its data :mod:`ims_station.console.sources`.
Textual is an optional extra: without it the command says how to install it.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

INSTALL_HINT = "pip install 'ims-station[console]'"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "console", help="terminal UI of a running gateway (status API) and/or of the network (MQTT)",
        description="A Textual terminal UI, usable at 80x24 over SSH: channels, link, outbox and uplink, keys, "
                    "trigger and noble-gas stages of one gateway (its status API), and the relay's view of every "
                    "station over MQTT. Actions (calibrate, resend, next key) need the Unix socket. "
                    f"Needs the console extra: {INSTALL_HINT}.")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--socket", help="the gateway's status socket (e.g. /var/lib/ims-station/status.sock)")
    where.add_argument("--url", help="the gateway's status URL (http://127.0.0.1:9101; read-only: no actions)")
    where.add_argument("--config", help="a station file: attach where its [status] table says")
    relay = p.add_mutually_exclusive_group()
    relay.add_argument("--relay", metavar="RELAY_TOML", help="relay view: the brokers and prefix of this relay file")
    relay.add_argument("--broker", metavar="HOST:PORT", help="relay view: this broker (no TLS, no credentials)")
    p.add_argument("--prefix", default=None, help="topic prefix with --broker (default ims)")
    p.add_argument("--serve", action="store_true", help="serve the same console to a browser (textual-serve)")
    p.add_argument("--host", default="127.0.0.1", help="--serve: address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="--serve: port (default 8000)")
    p.set_defaults(handler=_cmd)


def _need_textual(serve: bool = False) -> None:
    from ims_station.errors import ImsStationError

    mods = ["textual"] + (["textual_serve"] if serve else [])
    for m in mods:
        try:
            __import__(m)
        except ImportError:
            raise ImsStationError(f"the console needs {m.replace('_', '-')}: {INSTALL_HINT}") from None


def sources_from_args(args: argparse.Namespace) -> tuple[Any, Any]:
    from ims_station.broker import BrokerConfig
    from ims_station.console.sources import RelaySource, StationSource
    from ims_station.errors import ImsStationError
    from ims_station.statusapi import settings_from_table

    station = relay = None
    if args.socket or args.url:
        station = StationSource(socket_path=args.socket, url=args.url)
    elif args.config:
        from ims_station.edge.config import load_station_config

        cfg = load_station_config(args.config, read_key=lambda *a, **k: None)
        s = settings_from_table(cfg.raw.get("status"), file=cfg.file, data_dir=cfg.data_dir)
        if s.socket is not None:
            station = StationSource(socket_path=str(s.socket))
        elif s.listen is not None:
            station = StationSource(url=f"http://{s.listen[0]}:{s.listen[1]}")
        else:
            raise ImsStationError(f"{args.config}: [status] has neither a socket nor a listen address")
    if args.relay:
        from ims_station.relay.cli import load_config

        conf = load_config(args.relay)
        relay = RelaySource(conf["brokers"][0], prefix=conf["relay"].get("prefix", "ims"))
    elif args.broker:
        host, _, port = args.broker.rpartition(":")
        if not host or not port.isdigit():
            raise ImsStationError(f"--broker {args.broker!r}: write HOST:PORT (e.g. 127.0.0.1:1883)")
        host = host.strip("[]")
        relay = RelaySource(BrokerConfig(host=host, port=int(port)), prefix=args.prefix or "ims")
    if station is None and relay is None:
        raise ImsStationError("console: give --socket, --url or --config (a gateway) and/or --relay or --broker "
                              "(the network view)")
    return station, relay


def _cmd(args: argparse.Namespace) -> int:
    _need_textual(serve=args.serve)
    if args.serve:
        from textual_serve.server import Server

        argv = [a for a in sys.argv[1:] if a != "--serve"]
        # The browser's app is the same command without --serve, run by textual-serve per session.
        cmd = shlex.join([sys.executable, "-m", "ims_station", *_drop_serve_args(argv)])
        Server(cmd, host=args.host, port=args.port, title="ims-station console").serve()
        return 0
    station, relay = sources_from_args(args)
    from ims_station.console.app import ConsoleApp

    if relay is not None:
        relay.start()
    try:
        ConsoleApp(station, relay).run()
    finally:
        if relay is not None:
            relay.stop()
    return 0


def _drop_serve_args(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--host", "--port"):
            skip = True
            continue
        if a.startswith(("--host=", "--port=")):
            continue
        out.append(a)
    return out
