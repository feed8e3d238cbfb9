"""``ims-station cd11 send|receive``: test a CD-1.1/TCP link end to end.

* ``send FILE... --to HOST:PORT [--station STA]`` -- a scripted CD-1.1 station: reads the data
  frames of the files (concatenated frames allowed), one provider per frame set (connection request,
  redirect, option request, acknacks, resends of what the consumer reports missing), sends them
  byte-identical and exits 0 once the consumer acknowledged every frame; 1 with the reason on
  timeout or refusal; 2 on unusable input.
* ``receive --listen [HOST:]PORT --out DIR [--data-port [HOST:]P] [--station STA[@ADDR,...]]...`` --
  a minimal consumer: connection manager + data consumer, every frame written durably (fsync) to
  ``DIR/<creator>_<destination>/<seq>.cd11`` before it is acknowledged, gap state in
  ``DIR/state.sqlite`` (``store.DirectorySink``); one line per link event on stdout; SIGINT/SIGTERM
  end it (open links get an Alert).

Owns only the command-line front end (registered under ``cd11`` by ``ims_station.cd11.cli``); cheap
to import, the library is imported inside the handlers.  Documentation: ``docs/cd11-tcp.md``.
"""

from __future__ import annotations

import argparse
import sys


def register_subcommands(sub) -> None:
    """Add ``send`` and ``receive`` to the ``cd11`` subcommand parser *sub*."""
    s = sub.add_parser("send", help="send CD-1.1 frame files to a consumer over TCP (a scripted station)",
                       description="Send the data frames of FILEs to a CD-1.1 consumer: handshake, "
                                   "frames, acknack handling and resends; exit 0 once every frame is "
                                   "acknowledged.")
    s.add_argument("files", nargs="+", metavar="FILE")
    s.add_argument("--to", required=True, metavar="HOST:PORT", help="the consumer's well-known port")
    s.add_argument("--station", help="station name in the connection request (default: each frame "
                                     "set's creator; with it, every frame must have this creator)")
    s.add_argument("--timeout", type=float, default=60.0, metavar="S",
                   help="give up (exit 1) if not everything is acknowledged within S seconds (default 60)")
    _link_args(s)
    _tls_args(s, server=False)
    s.set_defaults(handler=cmd_send)

    r = sub.add_parser("receive", help="a minimal CD-1.1 consumer writing every frame to a directory",
                       description="Run a connection manager and a data consumer; write every frame "
                                   "durably to DIR before acknowledging it.")
    r.add_argument("--listen", required=True, metavar="[HOST:]PORT",
                   help="well-known port (connection manager); HOST defaults to 127.0.0.1")
    r.add_argument("--data-port", default="0", metavar="[HOST:]PORT",
                   help="data consumer port (default: any free port on the --listen host)")
    r.add_argument("--advertise", metavar="IP:PORT",
                   help="data address sent in connection responses (NAT, proxies)")
    r.add_argument("--out", required=True, metavar="DIR", help="where frames and gap state are written")
    r.add_argument("--station", action="append", default=[], metavar="STA[@ADDR,...]",
                   help="accept this station (optionally only from these addresses/networks); "
                        "repeatable; without any, every station is accepted")
    r.add_argument("--name", default="IDC", help="creator of our frames (default IDC)")
    r.add_argument("--max-connections", type=int, default=256)
    _link_args(r)
    _tls_args(r, server=True)
    r.set_defaults(handler=cmd_receive)


def _link_args(p) -> None:
    p.add_argument("--acknack-interval", type=float, default=55.0, metavar="S",
                   help="send an acknack at least every S seconds (<= 60; default 55)")
    p.add_argument("--heartbeat-timeout", type=float, default=120.0, metavar="S",
                   help="close a link on which nothing arrived for S seconds (default 120)")
    p.add_argument("--max-frame-size", type=int, default=1 << 20, metavar="BYTES")


def _tls_args(p, *, server: bool) -> None:
    p.add_argument("--tls-ca", metavar="FILE", help="CA (PEM) of the peer's certificate; enables TLS"
                   + (" client authentication" if server else ""))
    p.add_argument("--tls-cert", metavar="FILE", help="our certificate (PEM)" + ("; enables TLS" if server else ""))
    p.add_argument("--tls-key", metavar="FILE", help="our private key (PEM, mode 0600)")
    if not server:
        p.add_argument("--tls-server-name", metavar="NAME", help="name to verify in the consumer's certificate")


def _limits(args):
    from ims_station.cd11tcp import LinkLimits

    extra = {"max_connections": args.max_connections} if hasattr(args, "max_connections") else {}
    return LinkLimits(acknack_interval_s=args.acknack_interval, heartbeat_timeout_s=args.heartbeat_timeout,
                      max_frame_size=args.max_frame_size, **extra)


def _fail(cmd: str, msg: str, code: int) -> int:
    print(f"ims-station cd11 {cmd}: {msg}", file=sys.stderr)
    return code


# --- send ----------------------------------------------------------------------------------------
def load_frame_sets(paths: list[str], station: str | None) -> dict[str, dict[int, bytes]]:
    """Data frames of *paths* by frame set and sequence number.  ValueError says file and reason."""
    from pathlib import Path

    from ims_station import cd11
    from ims_station.cd11tcp.consumer import DATA_FRAME_TYPES

    sets: dict[str, dict[int, bytes]] = {}
    for path in paths:
        try:
            buf = Path(path).read_bytes()
        except OSError as err:
            raise ValueError(f"{path}: cannot read: {err.strerror}") from None
        if not buf:
            raise ValueError(f"{path}: empty file")
        offset = 0
        while offset < len(buf):
            try:
                frame, end = cd11.parse_frame(buf, offset)
            except cd11.Cd11Error as err:
                raise ValueError(f"{path}: {err}") from None
            if frame.header.frame_type not in DATA_FRAME_TYPES:
                raise ValueError(f"{path}: frame at byte {offset} is a {type(frame).__name__}, not a data frame")
            if station is not None and frame.creator != station:
                raise ValueError(f"{path}: frame at byte {offset} has creator {frame.creator!r}, not "
                                 f"--station {station!r}")
            fs = sets.setdefault(f"{frame.creator}:{frame.destination}", {})
            old = fs.get(frame.sequence)
            if old is not None and old != frame.raw:
                raise ValueError(f"{path}: frame at byte {offset}: sequence {frame.sequence} of "
                                 f"{frame.creator}:{frame.destination} appears twice with different bytes")
            fs[frame.sequence] = frame.raw
            offset = end
    return sets


def cmd_send(args: argparse.Namespace) -> int:
    import asyncio

    from ims_station.cd11tcp import parse_hostport
    from ims_station.errors import ConfigError

    try:
        to = parse_hostport(args.to, what="--to")
        sets = load_frame_sets(args.files, args.station)
        limits = _limits(args)
        ctx = _client_tls(args)
    except (ValueError, ConfigError) as err:
        return _fail("send", str(err), 2)
    for fs in sets:
        if len(fs.partition(":")[0]) > 8 or not fs.partition(":")[0]:
            return _fail("send", f"frame set {fs!r}: creator is not a 1..8 character station name", 2)
    return asyncio.run(_send(args, to, sets, limits, ctx))


def _client_tls(args):
    from ims_station.cd11tcp import TlsSettings

    if not (args.tls_ca or args.tls_cert or args.tls_key):
        return None
    return TlsSettings(ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key,
                       server_hostname=args.tls_server_name, source="<command line>").client_context("--tls")


async def _send(args, to, sets, limits, ctx) -> int:
    import asyncio

    from ims_station.cd11tcp import MemorySource, Provider

    providers = []
    for fs, frames in sets.items():
        creator = fs.partition(":")[0]
        p = Provider(args.station or creator, to, MemorySource(frames), frame_set=fs, creator=creator,
                     limits=limits, ssl_context=ctx, server_hostname=args.tls_server_name,
                     live_queue=len(frames), backoff_initial_s=0.5, backoff_max_s=5.0,
                     on_event=lambda ev: print(ev, flush=True) if ev.kind in ("redirect", "connected",
                                                                           "alert-received", "closed") else None)
        for seq in sorted(frames):
            p.offer(seq, frames[seq])
        providers.append((fs, frames, p))
        p.start()

    async def finish(p, last: int) -> bool:
        ok = await p.wait_acked(last, timeout=args.timeout)
        await p.stop("all frames sent" if ok else "giving up")
        return ok

    results = await asyncio.gather(*(finish(p, max(frames)) for _, frames, p in providers))
    code = 0
    for (fs, frames, p), ok in zip(providers, results):
        s = p.stats
        if ok:
            print(f"{fs}: {len(frames)} frames acknowledged by {to[0]}:{to[1]} (sent {s.sent}, resent "
                  f"{s.resent}, consumer range {s.acked_lowest}..{s.acked_highest})", flush=True)
        else:
            code = 1
            why = s.last_error or "no acknowledgement of every frame"
            print(f"ims-station cd11 send: {fs}: not all {len(frames)} frames acknowledged within "
                  f"{args.timeout:g} s: {why} (consumer range {s.acked_lowest}..{s.acked_highest}, "
                  f"{s.acked_gaps} gaps)", file=sys.stderr)
    return code


# --- receive ------------------------------------------------------------------------------------
def _stations(specs: list[str]):
    if not specs:
        return None
    table: dict[str, list[str] | None] = {}
    for spec in specs:
        name, sep, addrs = spec.partition("@")
        if not 1 <= len(name) <= 8:
            raise ValueError(f"--station {spec!r}: station name of 1..8 characters")
        table[name] = [a for a in addrs.split(",") if a] if sep else None
    return table


def cmd_receive(args: argparse.Namespace) -> int:
    import asyncio

    from ims_station.cd11tcp import TlsSettings, parse_hostport
    from ims_station.errors import ConfigError

    try:
        listen = parse_hostport(args.listen, what="--listen", default_host="127.0.0.1")
        data = parse_hostport(args.data_port, what="--data-port", default_host=listen[0])
        stations = _stations(args.station)
        limits = _limits(args)
        ctx = None
        if args.tls_cert or args.tls_key or args.tls_ca:
            ctx = TlsSettings(ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key,
                              source="<command line>").server_context("--tls")
    except (ValueError, ConfigError) as err:
        return _fail("receive", str(err), 2)
    try:
        return asyncio.run(_receive(args, listen, data, stations, limits, ctx))
    except OSError as err:
        return _fail("receive", f"cannot listen: {err}", 1)


async def _receive(args, listen, data, stations, limits, ctx) -> int:
    import asyncio
    import signal

    from ims_station.cd11tcp import ConnectionManager, DataConsumer
    from ims_station.cd11tcp.store import DirectorySink

    sink = DirectorySink(args.out, max_gaps=limits.max_gaps)

    def on_event(ev) -> None:
        print(ev, flush=True)

    try:
        dc = await DataConsumer(sink, stations, host=data[0], port=data[1], limits=limits, ssl_context=ctx,
                                name=args.name, advertise=args.advertise, on_event=on_event).start()
    except ValueError as err:
        sink.close()
        return _fail("receive", f"--advertise: {err}", 2)
    cm = await ConnectionManager(dc, host=listen[0], port=listen[1], limits=limits, ssl_context=ctx,
                                 name=args.name, on_event=on_event).start()
    adv = dc.advertised(listen[0])
    print(f"listening manager={cm.address[0]}:{cm.address[1]} data={dc.address[0]}:{dc.address[1]} "
          f"advertised={adv[0]}:{adv[1]} out={args.out}"
          + ("" if stations else " (accepting any station)"), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await cm.stop()
    await dc.stop("consumer shutting down")
    print(f"stopped: {sink.stored} frames stored, {sink.duplicates} duplicates, {sink.conflicts} "
          f"conflicts, {dc.stats.refused + cm.stats.refused} refused", flush=True)
    sink.close()
    return 0
