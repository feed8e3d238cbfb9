"""``ims-station cd11 dump|verify|send|receive``: inspect CD-1.1 frame files, test a TCP link.

A file may hold one frame or many concatenated frames (as captured from a link).  Owns only the
command-line front end; parsing is ``ims_station.cd11.frames``/``data``, verification ``verify``.
Cheap to import: the codec (numpy, cryptography) is imported inside the handlers.

* ``dump FILE... [--json]`` -- one JSON object per frame (every header and trailer field,
  ``crc_ok``, and for data frames every subframe field with ``samples`` decoded), or a readable
  summary.  Exit status 1 if any file holds an undecodable frame or bad CRC.
* ``verify FILE... --trust DIR`` -- CRC and every frame and subframe signature; one line per
  failure (file, frame, subframe, why); exit status 1 on any failure.
* ``send`` / ``receive`` -- CD-1.1 over TCP (a scripted station, a minimal consumer): registered
  from ``ims_station.cd11tcp.cli``, which owns them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("cd11", help="CD-1.1 frame tools (dump, verify, send, receive)",
                              description="Inspect and verify CD-1.1 frame files; send and receive them over TCP.")
    sub = p.add_subparsers(dest="cd11_command", metavar="SUBCOMMAND")
    d = sub.add_parser("dump", help="print every frame of one or more files",
                       description="Print every frame (a file may hold concatenated frames).")
    d.add_argument("files", nargs="+", metavar="FILE")
    d.add_argument("--json", action="store_true", help="one JSON object per frame on stdout")
    d.add_argument("--no-samples", action="store_true", help="do not decode channel samples")
    d.set_defaults(handler=cmd_dump)
    v = sub.add_parser("verify", help="check CRC and signatures of every frame and subframe",
                       description="Check the CRC-64 and the frame and channel-subframe signatures "
                                   "of every frame; exit status 1 on any failure.")
    v.add_argument("files", nargs="+", metavar="FILE")
    v.add_argument("--trust", required=True, metavar="DIR", help="trust store directory")
    v.add_argument("--station", help="look keys up under this station (default: frame creator)")
    v.add_argument("--allow-unsigned", action="store_true",
                   help="do not count unsigned frames/subframes as failures")
    v.add_argument("--json", action="store_true", help="one JSON result per frame on stdout")
    v.set_defaults(handler=cmd_verify)
    from ims_station.cd11tcp.cli import register_subcommands

    register_subcommands(sub)
    p.set_defaults(handler=lambda args: (p.print_help(), 2)[1])


def _frames(path: str, errors: list[str]):
    """Yield the frames of a file; a parse error ends the file (CD-1.1 cannot resynchronise)."""
    try:
        buf = Path(path).read_bytes()
    except OSError as err:
        errors.append(f"{path}: cannot read: {err.strerror}")
        return
    yield from _frames_of(buf, path, errors)


def _frames_of(buf: bytes, path: str, errors: list[str]):
    """Yield the frames of *buf* (read from *path*); a codec error is one line in *errors*."""
    from ims_station.cd11 import Cd11Error, parse_frame

    if not buf:
        errors.append(f"{path}: empty file")
    offset = 0
    while offset < len(buf):
        try:
            frame, offset = parse_frame(buf, offset, check_crc=False)
        except Cd11Error as err:
            errors.append(f"{path}: {err}")
            return
        yield frame


def cmd_dump(args: argparse.Namespace) -> int:
    from ims_station.output import print_json

    errors: list[str] = []
    for path in args.files:
        for frame in _frames(path, errors):
            d = frame.to_dict(samples=not args.no_samples)
            if not d.get("crc_ok", True):
                errors.append(f"{path}: frame at byte {frame.offset}: CRC-64 mismatch")
            errors.extend(f"{path}: frame at byte {frame.offset}: subframe {i}: {sf['samples_error']}"
                          for i, sf in enumerate(d.get("subframes", ())) if "samples_error" in sf)
            if args.json:
                print_json({"file": path, **d})
            else:
                _print_human(path, d)
    for line in errors:
        print(f"ims-station cd11 dump: {line}", file=sys.stderr)
    return 1 if errors else 0


def _print_human(path: str, d: dict) -> None:
    print(f"{path} @{d['offset']}: {d['frame_name']} (type {d['frame_type']}) "
          f"{d['creator']}->{d['destination']} seq {d['sequence']} series {d['series']}, "
          f"{d['total_bytes']} bytes, CRC {'ok' if d['crc_ok'] else 'BAD'} {d['crc64_hex']}, "
          f"frame key {d['frame_auth_key_id']} ({d['frame_auth_size']}-byte signature)")
    skip = {"frame_type", "frame_name", "trailer_offset", "creator", "destination", "sequence",
            "series", "frame_auth_key_id", "frame_auth_size", "frame_auth_value_hex", "crc64_hex",
            "crc_ok", "total_bytes", "offset", "subframes"}
    for k, v in d.items():
        if k not in skip:
            print(f"    {k}: {v!r}")
    for i, sf in enumerate(d.get("subframes", ())):
        samples = sf.get("samples")
        head = f"{samples[:5]}..." if samples else sf.get("samples_error", "")
        print(f"    subframe {i}: {sf['site']}/{sf['chan']}/{sf['loc']} {sf['time_stamp']} "
              f"{sf['nsamples']} samples in {sf['subframe_time_length_ms']} ms, "
              f"transformation {sf['transformation']}, format {sf['data_format']}, "
              f"{sf['data_size']} data bytes, key {sf['auth_key_id']} ({sf['auth_size']} B) {head}")
        flags = sf.get("status", {})
        set_flags = [k for k, v in flags.items() if v is True]
        if set_flags:
            print(f"        status flags: {', '.join(set_flags)}")


def cmd_verify(args: argparse.Namespace) -> int:
    from ims_station.auth import TrustStore
    from ims_station.output import print_json

    trust = TrustStore.load(args.trust)
    errors: list[str] = []
    nframes = 0
    for path in args.files:
        for res, fails in verify_frames(_frames(path, errors), trust, station=args.station,
                                        require_signatures=not args.allow_unsigned):
            nframes += 1
            errors.extend(f"{path}: {line}" for line in fails)
            if args.json:
                print_json({"file": path, "offset": res.offset, "frame_type": res.frame_type,
                            "creator": res.creator, "sequence": res.sequence, "crc_ok": res.crc_ok,
                            "ok": not fails, "failures": fails,
                            "frame_signature": _vjson(res.frame),
                            "subframes": [{"index": s.index, "channel": s.channel,
                                           "signature": _vjson(s.result)} for s in res.subframes]})
    for line in errors:
        print(f"FAIL {line}", file=sys.stderr if args.json else sys.stdout)
    summary = f"{nframes} frames in {len(args.files)} files: " + (
        f"{len(errors)} failures" if errors else "all CRCs and signatures OK")
    print(summary, file=sys.stderr if args.json else sys.stdout)
    return 1 if errors else 0


def verify_frames(frames, trust, *, station: str | None = None, require_signatures: bool = True):
    """Yield (``FrameVerification``, failure lines) for each of *frames*: what ``cd11 verify``
    checks per frame.  Raises nothing for any parsed frame (``tests/relay/test_fuzz.py`` feeds it
    mutated frames through :func:`verify_buffer`)."""
    from ims_station.cd11 import verify_frame

    for frame in frames:
        res = verify_frame(frame, trust, station=station)
        yield res, res.failures(require_signatures=require_signatures)


def verify_buffer(buf: bytes, trust, *, path: str = "<buffer>", station: str | None = None,
                  require_signatures: bool = True) -> tuple[int, list[str]]:
    """``cd11 verify`` of the bytes of one file: (frames verified, failure lines)."""
    errors: list[str] = []
    n = 0
    for _, fails in verify_frames(_frames_of(buf, path, errors), trust, station=station,
                                  require_signatures=require_signatures):
        n += 1
        errors.extend(f"{path}: {line}" for line in fails)
    return n, errors


def _vjson(v) -> dict | None:
    if v is None:
        return None
    return {"ok": bool(v.ok), "key_id": v.key_id, "algorithm": v.algorithm, "reason": v.reason}
