"""``ims-station keys``: create signing keys and publish their public halves into a trust store.

    ims-station keys generate --algorithm ed25519 --key-id 7 --out /etc/ims-station/keystore --station STA01
    ims-station keys export --keystore /etc/ims-station/keystore --key-id 7 --trust STA01-trust

Cheap to import: ``cryptography`` is loaded by the handlers (``ims_station.auth.keys``).
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    keys = subparsers.add_parser("keys", help="signing keys: generate, export to a trust store",
                                 description=__doc__.splitlines()[0])
    sub = keys.add_subparsers(dest="keys_command", metavar="ACTION")
    keys.set_defaults(handler=lambda args: (keys.print_help(), 2)[1])

    gen = sub.add_parser("generate", help="create a private key (PEM, mode 0600) and its metadata")
    gen.add_argument("--algorithm", required=True, choices=["ed25519", "ecdsa-p256", "dsa", "dsa-sha1"],
                     help="dsa = DSA-1024/SHA-1 (IMS interoperability); ed25519 or ecdsa-p256 otherwise")
    gen.add_argument("--key-id", type=int, required=True, help="key identifier 1..2147483647 (never reused)")
    gen.add_argument("--out", required=True, help="keystore directory")
    gen.add_argument("--station", action="append", help="station code the key signs for (repeatable)")
    gen.add_argument("--valid-from", metavar="ISO", help="start of validity, e.g. 2025-01-01T00:00:00Z "
                     "(default: now)")
    gen.add_argument("--valid-until", metavar="ISO", help="end of validity (default: open end)")
    gen.add_argument("--json", action="store_true", help="print only JSON")
    gen.set_defaults(handler=_generate)

    exp = sub.add_parser("export", help="copy a key's public half and metadata into a trust store")
    exp.add_argument("--keystore", required=True, help="keystore directory (or the key's .pem file)")
    exp.add_argument("--key-id", type=int, required=True)
    exp.add_argument("--trust", required=True, help="trust store directory")
    exp.add_argument("--station", action="append", help="override the station(s) the key is trusted for")
    exp.add_argument("--valid-from", metavar="ISO", help="override the start of validity")
    exp.add_argument("--valid-until", metavar="ISO", help="override the end of validity (key rotation)")
    exp.add_argument("--json", action="store_true", help="print only JSON")
    exp.set_defaults(handler=_export)


def _describe(pem, trust: bool) -> dict:
    from ims_station.auth.keys import KEYSTORE_SCHEMA, TRUST_SCHEMA, _read_info

    info = _read_info(pem.with_suffix(".toml"), TRUST_SCHEMA if trust else KEYSTORE_SCHEMA)
    return {
        "key_id": info.key_id,
        "algorithm": info.algorithm,
        "stations": sorted(info.stations),
        "valid_from": info.valid_from.isoformat(),
        "valid_until": info.valid_until.isoformat() if info.valid_until else None,
        "public_key_sha256": info.public_key_sha256,
        "key_file": str(pem),
        "metadata_file": str(info.file),
    }


def _generate(args: argparse.Namespace) -> int:
    from ims_station.auth.keys import generate_key
    from ims_station.output import print_json

    pem = generate_key(args.algorithm, args.key_id, args.out, station=args.station,
                       valid_from=args.valid_from, valid_until=args.valid_until)
    doc = _describe(pem, trust=False)
    if args.json:
        print_json(doc)
    else:
        print(f"created {doc['algorithm']} key {doc['key_id']}: {pem} (mode 0600), metadata {doc['metadata_file']}")
        print(f"  stations: {', '.join(doc['stations']) or '(none yet; give --station on export)'}")
        print(f"  valid: {doc['valid_from']} .. {doc['valid_until'] or 'open end'}")
        print(f"  public key sha256: {doc['public_key_sha256']}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from ims_station.auth.keys import export_public
    from ims_station.output import print_json

    pem = export_public(args.keystore, args.key_id, args.trust, station=args.station,
                        valid_from=args.valid_from, valid_until=args.valid_until)
    doc = _describe(pem, trust=True)
    if args.json:
        print_json(doc)
    else:
        print(f"exported public key {doc['key_id']} ({doc['algorithm']}) to {pem}")
        print(f"  trusted for: {', '.join(doc['stations'])}")
        print(f"  valid: {doc['valid_from']} .. {doc['valid_until'] or 'open end'}")
    return 0
