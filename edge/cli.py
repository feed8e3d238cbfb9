"""``ims-station edge run --config FILE``: ingest every serial port of a station.

Owns the command only: it loads the station file, runs one :class:`PortPump` thread per port
(LinkDecoder -> StreamAssembler) and prints counters.  Later issues hang CD-1.1 framing, the outbox
and the uplink off the assembler's chunks here.
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("edge", help="the station gateway")
    esub = p.add_subparsers(dest="edge_command", metavar="SUBCOMMAND")
    run = esub.add_parser("run", help="ingest the station's serial ports")
    run.add_argument("--config", required=True, metavar="FILE", help="station TOML file")
    run.add_argument("--seconds", type=float, default=0.0, help="stop after this long (0: until Ctrl-C)")
    run.add_argument("--interval", type=float, default=10.0, help="seconds between status lines")
    run.add_argument("--json", action="store_true", help="status lines and summary as JSON")
    run.set_defaults(handler=_run)
    p.set_defaults(handler=lambda args: (p.print_help(), 2)[1])


def _run(args: argparse.Namespace) -> int:
    import threading
    import time

    from ims_station.output import print_json

    from .config import load_station_config
    from .ingest import LinkDecoder
    from .logutil import SystemClock
    from .serialport import PortPump
    from .streams import StreamAssembler

    cfg = load_station_config(args.config)
    clock = SystemClock()
    stop = threading.Event()
    lock = threading.Lock()
    pumps, threads = [], []
    for port in cfg.ports:
        assembler = StreamAssembler()

        def on_events(events, assembler=assembler, port=port):
            with lock:
                for ev in events:
                    # Codes are known once the board id is (from the config or the first packet).
                    bid = getattr(ev, "board_id", None)
                    if bid is not None and port.channels:
                        assembler.add_codes(port.codes(bid))
                    assembler.push(ev)

        dec = LinkDecoder(port.key, clock, board_id=port.board_id, **port.link)
        pump = PortPump(port.url, dec, baudrate=port.baudrate, timeout=port.timeout, clock=clock,
                        on_events=on_events)
        pumps.append((port, pump, assembler))
        t = threading.Thread(target=pump.run, args=(stop,), name=f"pump-{port.name}", daemon=True)
        threads.append(t)
        t.start()

    def status() -> dict:
        with lock:
            return {"station": f"{cfg.network}.{cfg.code}", "ports": [
                {"name": p.name, "url": p.url, "connected": pump.connected, "port": dict(pump.counters),
                 "link": dict(pump.decoder.counters), "streams": asm.summary()} for p, pump, asm in pumps]}

    t0 = time.monotonic()
    next_status = t0 + args.interval
    try:
        while not stop.is_set():
            now = time.monotonic()
            if args.seconds and now - t0 >= args.seconds:
                break
            if now >= next_status:
                _show(status(), args.json, print_json)
                next_status += args.interval
            stop.wait(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=2)
    _show(status(), args.json, print_json)
    return 0


def _show(doc: dict, as_json: bool, print_json) -> None:
    if as_json:
        print_json(doc)
        return
    for p in doc["ports"]:
        c = p["link"]
        print(f"{doc['station']} {p['name']} ({p['url']}): {'up' if p['connected'] else 'DOWN'}  "
              f"ok={c['packets_ok']} crc={c['crc_errors']} hmac={c['hmac_errors']} "
              f"resent={c['packets_recovered']} lost={c['packets_unrecoverable']} "
              f"samples={c['samples_delivered']} garbage={c['garbage_bytes']}B")
