"""``ims-station edge run --config FILE``: the station gateway; ``ims-station edge outbox``: its outbox.

Owns the command only.  It runs the full gateway -- every serial port (LinkDecoder ->
StreamAssembler) -> CD-1.1 framer -> durable outbox -> MQTT uplink -- through
:func:`ims_station.edge.station.run`, the same code as ``python -m ims_station.edge.station``, from
one station file (docs/configuration.md).  ``--uplink FILE`` is kept for configurations that still
have the gateway tables in a second file.

``ims-station edge status`` asks the running gateway's status API (``ims_station/statusapi.py``)
for a short summary.  ``ims-station edge outbox list|purge|resign`` lists the frames waiting in the outbox by signing
key, deletes them or re-signs them (``edge/outbox_admin.py``; docs/keys.md, "Rotation").
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("edge", help="the station gateway")
    esub = p.add_subparsers(dest="edge_command", metavar="SUBCOMMAND")
    run = esub.add_parser("run", help="run the station gateway (serial ports -> frames -> outbox -> MQTT)")
    add_run_arguments(run)
    run.set_defaults(handler=_run)
    _register_outbox(esub)
    _register_status(esub)
    from ims_station.doctor import add_check_parser

    add_check_parser(esub, "station")
    p.set_defaults(handler=lambda args: (p.print_help(), 2)[1])


def _register_outbox(esub: argparse._SubParsersAction) -> None:
    ob = esub.add_parser("outbox", help="frames waiting in the outbox, by signing key: list, purge, re-sign",
                         description="Frames in the station's outbox by signing key (docs/keys.md, Rotation). "
                                     "Refused while a gateway has the outbox open.")
    osub = ob.add_subparsers(dest="outbox_command", metavar="ACTION")
    common = argparse.ArgumentParser(add_help=False)
    where = common.add_argument_group("which outbox")
    where.add_argument("--config", metavar="FILE", help="station TOML file (its [outbox] path and [keys] keystore)")
    where.add_argument("--outbox", metavar="FILE", help="the outbox database (overrides the station file)")
    where.add_argument("--keystore", metavar="DIR",
                       help="keystore for resign (overrides the station file's [keys] keystore)")
    sel = common.add_argument_group("which frames")
    sel.add_argument("--key-id", type=int, action="append", default=[], metavar="N",
                     help="frames signed (frame or a subframe) with key N (repeatable)")
    sel.add_argument("--seq", metavar="A[-B]", help="sequence number or inclusive range")
    common.add_argument("--json", action="store_true", help="print one JSON object")
    ls = osub.add_parser("list", parents=[common], help="list frames with their frame and subframe key ids")
    ls.set_defaults(handler=_outbox, action="list")
    pg = osub.add_parser("purge", parents=[common], help="delete the selected frames (needs --yes)")
    pg.add_argument("--all", action="store_true", help="select every frame (instead of --key-id/--seq)")
    pg.add_argument("--yes", action="store_true", help="really delete (without it: only show what would go)")
    pg.set_defaults(handler=_outbox, action="purge")
    rs = osub.add_parser("resign", parents=[common],
                         help="re-sign the selected frames with the keystore's key for each frame's time")
    rs.add_argument("--with-key", type=int, metavar="N", help="sign with key N (must be valid at each frame's time)")
    rs.add_argument("--force", action="store_true", help="also frames already signed with the chosen keys")
    rs.set_defaults(handler=_outbox, action="resign")
    ob.set_defaults(handler=lambda args: (ob.print_help(), 2)[1])


def _register_status(esub: argparse._SubParsersAction) -> None:
    st = esub.add_parser("status", help="ask the running gateway's status API for a short summary",
                         description="Query the running gateway's status API (docs/status-api.md) and print "
                                     "a summary. Exit status 0 healthy, 1 degraded, 2 not reachable.")
    where = st.add_mutually_exclusive_group()
    where.add_argument("--socket", metavar="PATH", help="the API's Unix socket (default: from --config)")
    where.add_argument("--url", metavar="URL", help="the API's TCP address, e.g. http://127.0.0.1:9101")
    where.add_argument("--config", metavar="FILE", default="/etc/ims-station/station.toml",
                       help="station TOML file: its [status] socket or listen (default: %(default)s)")
    st.add_argument("--json", action="store_true", help="print the status document as JSON")
    st.set_defaults(handler=_status)


def _status(args: argparse.Namespace) -> int:
    from ims_station.output import print_json
    from ims_station.statusapi import query

    doc, problems = query(socket_path=args.socket, url=args.url, config=args.config)
    if args.json:
        print_json(doc)
    else:
        from ims_station.statusapi import summary_lines

        for line in summary_lines(doc, problems):
            print(line)
    return 1 if problems else 0


def _seq_range(text: str | None) -> tuple[int | None, int | None]:
    from ims_station.errors import ImsStationError

    if not text:
        return None, None
    a, _, b = text.partition("-")
    try:
        return int(a), int(b or a)
    except ValueError:
        raise ImsStationError(f"--seq {text!r}: expected N or A-B") from None


def _outbox(args: argparse.Namespace) -> int:
    import sys

    from ims_station.edge import outbox_admin as admin
    from ims_station.errors import ImsStationError
    from ims_station.output import print_json

    path, ks_dir = admin.locate(args.config, args.outbox, getattr(args, "keystore", None))
    lo, hi = _seq_range(args.seq)
    if args.action == "purge" and not (args.all or args.key_id or args.seq):
        raise ImsStationError("purge: say which frames (--key-id N, --seq A-B, or --all)")
    keystore = None
    if args.action == "resign":
        if ks_dir is None:
            raise ImsStationError("resign: no keystore (--keystore DIR, or [keys] keystore in the station file)")
        from ims_station.auth import Keystore

        keystore = Keystore.load(ks_dir)
    box = admin.open_exclusive(path)
    try:
        frames = admin.list_frames(box, key_ids=args.key_id, seq_from=lo, seq_to=hi)
        doc: dict = {"outbox": str(path), "action": args.action}
        if args.action == "list":
            doc["frames"] = [f.to_dict() for f in frames]
        elif args.action == "purge":
            doc["selected"] = len(frames)
            doc["frames"] = [f.to_dict() for f in frames]
            doc["purged"], doc["purged_bytes"] = admin.purge(box, frames) if args.yes else (0, 0)
        else:
            res = admin.resign(box, keystore, frames, key_id=args.with_key, force=args.force)
            doc["resigned"] = [f.to_dict() for f in res.resigned]
            doc["unchanged"] = len(res.unchanged)
            doc["skipped"] = [{**f.to_dict(), "reason": why} for f, why in res.skipped]
    finally:
        box.close()
    if args.json:
        print_json(doc)
    else:
        _print_outbox(doc, sys.stdout)
    if args.action == "purge" and not args.yes and frames:
        print(f"{len(frames)} frame(s) selected; nothing deleted: add --yes to delete them", file=sys.stderr)
        return 1
    return 0


def _print_outbox(doc: dict, out) -> None:
    def line(f: dict, extra: str = "") -> str:
        keys = "?" if f["frame_key_id"] is None else str(f["frame_key_id"])
        subs = ",".join(map(str, f["subframe_key_ids"])) or "-"
        return (f"{f['frame_set']:<12} seq {f['seq']:<10} {f['nominal_time']}  {f['state']:<7} "
                f"frame key {keys:<6} subframe keys {subs:<12} {f['bytes']} B{extra}")

    action = doc["action"]
    if action == "list":
        for f in doc["frames"]:
            print(line(f, f"  ({f['error']})" if f.get("error") else ""), file=out)
        print(f"{len(doc['frames'])} frame(s) in {doc['outbox']}", file=out)
    elif action == "purge":
        for f in doc["frames"]:
            print(line(f), file=out)
        print(f"purged {doc['purged']} of {doc['selected']} selected frame(s) ({doc['purged_bytes']} B)", file=out)
    else:
        for f in doc["resigned"]:
            print("resigned " + line(f), file=out)
        for f in doc["skipped"]:
            print("skipped  " + line(f, f"  ({f['reason']})"), file=out)
        print(f"resigned {len(doc['resigned'])}, unchanged {doc['unchanged']}, skipped {len(doc['skipped'])}",
              file=out)


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
    ap.add_argument("--stats-every", type=float, default=60.0, metavar="S",
                    help="seconds between the INFO summary line in the log, also systemd's STATUS= "
                         "(0: none; default %(default)s)")
    ap.set_defaults(log_level=20)   # logging.INFO: the daemon's routine summary is an INFO line


def _run(args: argparse.Namespace) -> int:
    from .station import run_from_args

    return run_from_args(args)
