"""``ims-station relay ...``: run the central relay, export miniSEED, inspect the archive, list events
and IMS 2.0 messages (``relay ims2 list`` / ``relay ims2 get``).

Owns the relay's command line and its configuration file (TOML, validated by JSON Schema with
errors naming file, key and reason; relative paths are taken from the config file's folder;
deployed as ``/etc/ims-relay/<instance>.toml``, docs/deployment.md)::

    [relay]
    data_dir = "/var/lib/ims-relay"     # archive (frames, quarantine, index) and state.sqlite
    trust_dir = "trust"                 # public keys of the stations (ims-station keys export);
                                        # reloaded on SIGHUP and when it changes (trust_poll_s)
    instance = "relay1"                 # unique per relay process sharing a data_dir / broker group
    prefix = "ims"                      # topic prefix
    group = "relay"                     # shared subscription group ("" = plain subscription)
    name = "IDC"                        # creator of our acknack frames
    # optional, defaults shown:
    protocol = "auto"                   # "auto" (MQTT 5, else 3.1.1), "5", "3.1.1"
    acknack_interval_s = 50.0           # periodic acknack per active frame set (<= 60: CD-1.1)
    acknack_min_spacing_s = 2.0         # rate limit of gap-triggered acknacks
    max_payload = 4194304               # bytes; larger payloads are quarantined unread
    require_signatures = true
    max_gaps = 4000
    gap_expiry_days = 8.0               # then a gap is given up (frames counted as lost)
    quarantine_max_bytes = 1073741824
    batch_max = 64
    max_past_s = 2592000.0              # time plausibility: frames older than 30 days are quarantined
    max_future_s = 86400.0              # ... and frames ending more than a day ahead of our clock
    trust_poll_s = 5.0                  # how often trust_dir is checked for changes (0: SIGHUP only)
    silent_alarm_s = 600.0              # a station without a frame this long is an alarm (0: none)
    [relay.state]                       # optional: where state and archive index live (relay/backend.py)
    backend = "sqlite"                  # default; "postgresql": dsn or dsn_file, schema, objects_dir
    [relay.acknack_key]                 # optional: sign acknacks with one of our keys
    keystore = "relay-keys"
    key_id = 900

    [status]                            # optional: the local status API (docs/status-api.md)
    enabled = true                      # GET /status, /metrics (Prometheus), /health
    # socket = "/var/lib/ims-relay/status-relay1.sock"   # default: <data_dir>/status-<instance>.sock, mode 0660
    listen = "127.0.0.1:9102"           # default "": no TCP; loopback only unless allow_remote = true

    [[broker]]                          # one or more, tried in order (fail-over); input = "mqtt" only
    host = "mqtt.example.org"
    port = 8883
    tls_ca = "ca.pem"
    username = "relay"
    password_file = "relay.password"    # mode 0600

    # --- clustered input (docs/centre-cluster.md): [relay] input = "jetstream" instead of [[broker]]
    [jetstream]
    servers = ["tls://nats1.example.org:4222", "tls://nats2.example.org:4222", "tls://nats3.example.org:4222"]
    tls_ca = "cluster-ca.pem"
    username = "relay"
    password_file = "nats.password"     # mode 0600 (or creds_file = "relay.creds")
    # optional, defaults shown: stream = "IMS", consumer = "relay", replicas = 3, create = true,
    # ack_wait_s = 30.0, max_ack_pending = 10000, fetch_wait_s = 0.2, max_bytes = 0, connect_timeout_s = 5.0

Heavy imports (paho, cryptography, numpy) happen inside the handlers.
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
from pathlib import Path
from typing import Any

from ims_station.relay.backend import SCHEMA as RELAY_STATE_SCHEMA
from ims_station.service import StopSignals
from ims_station.statusapi import SCHEMA as STATUS_SCHEMA

# The longest that stopping ``relay run`` may take, from SIGTERM to the archive closed: well inside
# TimeoutStopSec=30 of deploy/systemd/ims-relay@.service (tests/deploy/test_stop_deadline.py).
SHUTDOWN_BUDGET_S = 10.0

RELAY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["relay"],          # and [[broker]] or [jetstream] as [relay] input says (load_config)
    "properties": {
        "relay": {
            "type": "object",
            "additionalProperties": False,
            "required": ["data_dir", "trust_dir"],
            "properties": {
                "data_dir": {"type": "string", "minLength": 1},
                "input": {"enum": ["mqtt", "jetstream", "amqp"]},   # where stations' messages come from
                "trust_dir": {"type": "string", "minLength": 1},
                "instance": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,32}$"},
                "prefix": {"type": "string", "pattern": "^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$"},
                "group": {"type": "string", "pattern": "^[A-Za-z0-9_-]*$"},
                "name": {"type": "string", "pattern": "^[ -~]{1,8}$"},
                "protocol": {"enum": ["auto", "5", "3.1.1"]},
                "acknack_interval_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 60},
                "acknack_min_spacing_s": {"type": "number", "minimum": 0},
                "max_payload": {"type": "integer", "minimum": 1024, "maximum": 16777216},
                "require_signatures": {"type": "boolean"},
                "max_gaps": {"type": "integer", "minimum": 1, "maximum": 100000},
                "gap_expiry_days": {"type": "number", "exclusiveMinimum": 0},
                "quarantine_max_bytes": {"type": "integer", "minimum": 0},
                "batch_max": {"type": "integer", "minimum": 1, "maximum": 10000},
                "max_past_s": {"type": "number", "exclusiveMinimum": 0},
                "max_future_s": {"type": "number", "exclusiveMinimum": 0},
                "trust_poll_s": {"type": "number", "minimum": 0, "maximum": 86400},
                "silent_alarm_s": {"type": "number", "minimum": 0},
                "state": RELAY_STATE_SCHEMA,    # relay/backend.py: sqlite (default) or postgresql
                "acknack_key": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["keystore", "key_id"],
                    "properties": {"keystore": {"type": "string"}, "key_id": {"type": "integer", "minimum": 1}},
                },
            },
        },
        "status": STATUS_SCHEMA,    # the local status API (ims_station/statusapi.py, docs/status-api.md)
        "broker": {
            "oneOf": [{"type": "object"}, {"type": "array", "minItems": 1, "items": {"type": "object"}}],
        },
        # -- clustered input (relay/jetstream.py, docs/centre-cluster.md) --
        "jetstream": {
            "type": "object",
            "additionalProperties": False,
            "required": ["servers"],
            "properties": {
                "servers": {"type": "array", "minItems": 1, "maxItems": 32,
                            "items": {"type": "string", "minLength": 1, "maxLength": 256}},
                "stream": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
                "consumer": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
                "replicas": {"type": "integer", "minimum": 1, "maximum": 5},
                "create": {"type": "boolean"},
                "ack_wait_s": {"type": "number", "minimum": 1, "maximum": 3600},
                "max_ack_pending": {"type": "integer", "minimum": 1, "maximum": 1000000},
                "fetch_wait_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 10},
                "max_bytes": {"type": "integer", "minimum": 0},
                "connect_timeout_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 300},
                "tls_ca": {"type": "string"}, "tls_cert": {"type": "string"}, "tls_key": {"type": "string"},
                "username": {"type": "string", "minLength": 1}, "password_file": {"type": "string"},
                "creds_file": {"type": "string"},
            },
        },
        "amqp": {                   # relay/amqp.py: RabbitMQ quorum queue
            "type": "object",
            "additionalProperties": False,
            "required": ["servers"],
            "properties": {
                "servers": {"type": "array", "minItems": 1, "maxItems": 32,
                            "items": {"type": "string", "minLength": 1, "maxLength": 256}},
                "queue": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,128}$"},
                "vhost": {"type": "string", "minLength": 1, "maxLength": 128},
                "prefetch": {"type": "integer", "minimum": 1, "maximum": 65535},
                "fetch_wait_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 10},
                "heartbeat_s": {"type": "integer", "minimum": 0, "maximum": 3600},
                "connect_timeout_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 300},
                "tls_ca": {"type": "string"}, "tls_cert": {"type": "string"}, "tls_key": {"type": "string"},
                "username": {"type": "string", "minLength": 1}, "password_file": {"type": "string"},
            },
        },
    },
}


def load_config(file: str | Path) -> dict[str, Any]:
    """Read and validate a relay config; returns ``{"relay": {...}, "brokers": [BrokerConfig]}``
    with paths resolved against the file's folder."""
    from ims_station.broker import BrokerConfig
    from ims_station.config import load_toml, validate
    from ims_station.errors import ConfigError


    path = Path(file)
    data = load_toml(path)
    validate(data, RELAY_SCHEMA, path)
    base = path.resolve().parent

    def resolve(p: str | None) -> str | None:
        return None if p is None else str((base / p) if not Path(p).is_absolute() else Path(p))

    relay = dict(data["relay"])
    for k in ("data_dir", "trust_dir"):
        relay[k] = resolve(relay[k])
    if "acknack_key" in relay:
        relay["acknack_key"] = dict(relay["acknack_key"], keystore=resolve(relay["acknack_key"]["keystore"]))
    from ims_station.relay import backend        # [relay.state]: checked now (DSN file permissions too)

    relay["state_settings"] = backend.settings(relay.get("state"), file=path, data_dir=relay["data_dir"],
                                               resolve=resolve)
    if "status" in data:        # checked now: a non-loopback listen address without allow_remote is refused
        from ims_station.statusapi import settings_from_table

        settings_from_table(data["status"], file=path, data_dir=relay["data_dir"])
    # -- [relay] input: [[broker]] (MQTT) or [jetstream] (the cluster, relay/jetstream.py) --
    jetstream = amqp = None
    source = relay.get("input", "mqtt")
    if source in ("jetstream", "amqp") and source not in data:
        raise ConfigError(str(path), source, f'missing: [relay] input = "{source}" needs a [{source}] table')
    if source == "jetstream":
        from ims_station.relay.jetstream import JetStreamConfig

        jetstream = JetStreamConfig.from_mapping(data["jetstream"], file=str(path), resolve=resolve)
    elif source == "amqp":
        from ims_station.relay.amqp import AmqpConfig

        amqp = AmqpConfig.from_mapping(data["amqp"], file=str(path), resolve=resolve)
    elif "broker" not in data:
        raise ConfigError(str(path), "broker",
                          'missing: at least one [[broker]] (or [relay] input = "jetstream" / "amqp")')
    raw = data.get("broker", [])
    raw = raw if isinstance(raw, list) else [raw]
    brokers = []
    for i, b in enumerate(raw):
        cfg = BrokerConfig.from_mapping(b, file=str(path), key=f"broker[{i}]")
        brokers.append(dataclasses.replace(cfg, **{k: resolve(getattr(cfg, k)) for k in
                                                   ("tls_ca", "tls_cert", "tls_key", "password_file")}))
    return {"relay": relay, "brokers": brokers, "file": str(path), "status": data.get("status"),
            "jetstream": jetstream, "amqp": amqp}


def build_relay(conf: dict[str, Any], *, clock: Any = None):
    """A :class:`~ims_station.relay.relay.Relay` from a loaded config (not started)."""
    from ims_station.auth import Keystore, ReloadingTrustStore
    from ims_station.relay.backend import open_stores
    from ims_station.relay.relay import Relay
    from ims_station.relay.status import DEFAULT_SILENT_ALARM_S
    from ims_station.relay.verify import (
        DEFAULT_MAX_FUTURE_S,
        DEFAULT_MAX_PAST_S,
        DEFAULT_MAX_PAYLOAD,
        Verifier,
    )

    r = conf["relay"]
    # Reloaded between messages on SIGHUP (relay run) and when the directory changes.
    trust = ReloadingTrustStore(r["trust_dir"], poll_s=r.get("trust_poll_s", 5.0))
    signer = None
    if "acknack_key" in r:
        signer = Keystore.load(r["acknack_key"]["keystore"]).signer(r["acknack_key"]["key_id"])
    instance = r.get("instance", "relay")
    verifier = Verifier(trust, max_payload=r.get("max_payload", DEFAULT_MAX_PAYLOAD),
                        require_signatures=r.get("require_signatures", True))
    state, archive = open_stores(r, writer=instance, quarantine_max_bytes=r.get("quarantine_max_bytes", 1 << 30))
    core_kw = dict(
        verifier=verifier, name=r.get("name", "RELAY"), acknack_signer=signer,
        acknack_interval_s=r.get("acknack_interval_s", 50.0),
        acknack_min_spacing_s=r.get("acknack_min_spacing_s", 2.0),
        max_gaps=r.get("max_gaps", 4000), gap_expiry_s=r.get("gap_expiry_days", 8.0) * 86400,
        max_past_s=r.get("max_past_s", DEFAULT_MAX_PAST_S),
        max_future_s=r.get("max_future_s", DEFAULT_MAX_FUTURE_S),
        silent_alarm_s=r.get("silent_alarm_s", DEFAULT_SILENT_ALARM_S) or None)
    if conf.get("jetstream") is not None:          # [relay] input = "jetstream" (relay/jetstream.py)
        from ims_station.relay.jetstream import JetStreamRelay

        return JetStreamRelay(conf["jetstream"], trust, state, archive, prefix=r.get("prefix", "ims"),
                              clock=clock, instance=instance, batch_max=r.get("batch_max", 64), **core_kw)
    if conf.get("amqp") is not None:               # [relay] input = "amqp" (relay/amqp.py)
        from ims_station.relay.amqp import AmqpRelay

        return AmqpRelay(conf["amqp"], trust, state, archive, prefix=r.get("prefix", "ims"),
                         clock=clock, instance=instance, batch_max=r.get("batch_max", 64), **core_kw)
    return Relay(conf["brokers"], trust, state, archive, prefix=r.get("prefix", "ims"),
                 group=r.get("group", "relay"), clock=clock, instance=instance,
                 protocol=r.get("protocol", "auto"), batch_max=r.get("batch_max", 64), **core_kw)


def _cmd_run(args: argparse.Namespace) -> int:
    import time

    from ims_station.output import print_json

    conf = load_config(args.config)
    relay = build_relay(conf)
    # The handlers only wake the main loop (self-pipe, ims_station/service.py): a handler calling
    # Event.set() deadlocked when SIGTERM came while the main thread was inside that Event's wait.
    # SIGHUP: the relay thread swaps the new trust store in between two messages (ReloadingTrustStore).
    signals = StopSignals((signal.SIGTERM, signal.SIGINT),
                          actions={signal.SIGHUP: relay.core.trust.request_reload}).install()
    relay.start()
    from ims_station.statusapi import serve_relay

    api = serve_relay(conf, relay)      # [status]: /status, /metrics, /health (docs/status-api.md)
    # systemd (Type=notify, watchdog, STATUS=) and the journal's INFO summary: relay/supervision.py
    from ims_station.relay.supervision import relay_heartbeat

    heartbeat = relay_heartbeat(relay, stats_every=0 if args.json else args.stats_every)
    heartbeat.started()
    next_json = time.monotonic() + args.stats_every
    try:
        tick = max(0.05, min(1.0, args.stats_every or 1.0, heartbeat.ping_s or 1.0))
        while not signals.wait(tick):
            heartbeat.turn()
            if args.json and time.monotonic() >= next_json:
                next_json += args.stats_every
                print_json({"event": "stats", **relay.stats()})
    finally:
        # One deadline for all of it, well inside the unit's TimeoutStopSec (ims-relay@.service).
        deadline = time.monotonic() + SHUTDOWN_BUDGET_S
        heartbeat.stopping()
        relay.request_stop()            # gives up a connection attempt now, in parallel with the rest
        if api is not None:
            api.close(timeout=min(2.0, SHUTDOWN_BUDGET_S))
        relay.close(timeout=max(0.0, deadline - time.monotonic()))
        signals.close()
    if args.json:
        print_json({"event": "stopped", **relay.stats()})
    return 0


def _parse_day(text: str):
    from datetime import date, datetime

    try:
        if len(text) == 8 and text[4] == "-":       # YYYY-DDD
            return datetime.strptime(text, "%Y-%j").date()
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not YYYY-MM-DD or YYYY-DDD") from None


def _archive_from(args: argparse.Namespace):
    from ims_station.relay.archive import FileArchive
    from ims_station.relay.errors import ArchiveError

    if args.config:
        from ims_station.relay.backend import open_archive

        relay = load_config(args.config)["relay"]
        arc = open_archive(relay, writer="export")          # PostgreSQL: the index there
        if arc is not None:
            return arc
    root = Path(relay["data_dir"]) / "archive" if args.config else Path(args.archive)
    if not (root / "index.sqlite").is_file():
        raise ArchiveError(f"{root}: no relay archive here (index.sqlite missing)")
    return FileArchive(root, writer="export")


def _cmd_export(args: argparse.Namespace) -> int:
    from ims_station.output import print_json

    with _archive_from(args) as archive:
        days = [args.day] if args.day else archive.days(args.station)
        written = []
        for day in days:
            written += archive.export_mseed(args.station, day, args.out, network=args.network,
                                            channels=args.channel or None, encoding=args.encoding)
    if args.json:
        print_json({"files": [str(p) for p in written]})
    else:
        for p in written:
            print(p)
    return 0


def _cmd_stats(args: argparse.Namespace) -> int:
    from ims_station.output import print_json

    with _archive_from(args) as archive:
        s = archive.stats()
        if args.quarantine:
            s["quarantine"] = archive.quarantine_entries()
    print_json(s)
    return 0


def _parse_time(text: str) -> int:
    """ISO 8601 (naive = UTC) -> milliseconds since 1970."""
    from datetime import datetime, timezone

    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time (e.g. 2026-12-03T13:00:00Z)") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return int(t.timestamp() * 1000)


def merge_events(entries: Any) -> tuple[list[dict[str, Any]], int]:
    """One row per event from archived (index entry, envelope bytes): the ``on`` and ``off``
    documents of one ``event_id`` (per station) merged -- time and onset from ``on``, duration and
    end from ``off``, the highest peak and coincidence sum, the stations and channels of both,
    clipped if either says so, the verifying key ids.  Returns (rows by time, unreadable count)."""
    from datetime import datetime, timezone

    from ims_station import envelope

    rows: dict[tuple, dict[str, Any]] = {}
    unreadable = 0
    for a, raw in entries:
        try:
            doc = envelope.unpack(raw, kind="event").json()
            if not isinstance(doc, dict):
                raise envelope.EnvelopeError("body is not an object")
        except envelope.EnvelopeError:
            unreadable += 1
            continue
        key = (a.station, a.event_id) if a.event_id is not None else (a.station, a.frame_set, a.sequence)
        row = rows.get(key)
        if row is None:
            row = rows[key] = {"station": a.station, "event_id": a.event_id, "type": doc.get("type"),
                               "time": None, "duration": None, "peak": None, "coincidence_sum": None,
                               "stations": [], "channels": [], "clipped": False, "states": [],
                               "time_quality": None, "key_ids": [], "seqs": [], "_ms": a.time_ms}
        state = doc.get("state")
        row["states"].append(state)
        row["seqs"].append(a.sequence)
        if a.key_id not in row["key_ids"]:
            row["key_ids"].append(a.key_id)
        if state != "off" or row["time"] is None:
            row["time"] = doc.get("time") or datetime.fromtimestamp(a.time_ms / 1000, timezone.utc).isoformat()
            row["_ms"] = a.time_ms
            if doc.get("time_quality") is not None:
                row["time_quality"] = doc.get("time_quality")
        if state == "off" and doc.get("duration") is not None:
            row["duration"] = doc["duration"]
        for k in ("peak", "coincidence_sum"):
            v = doc.get(k)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and (row[k] is None or v > row[k]):
                row[k] = v
        for k in ("stations", "channels"):
            for x in doc.get(k) or []:
                if x not in row[k]:
                    row[k].append(x)
        row["clipped"] = bool(row["clipped"] or doc.get("clipped"))
    out = sorted(rows.values(), key=lambda r: (r["_ms"], r["station"], str(r["event_id"])))
    for r in out:
        del r["_ms"]
        r["open"] = "off" not in r["states"]
    return out, unreadable


def _cmd_events(args: argparse.Namespace) -> int:
    from ims_station.output import print_json

    with _archive_from(args) as archive:
        rows, unreadable = merge_events(archive.iter_events(args.station, since_ms=args.since,
                                                            until_ms=args.until))
    if args.json:
        print_json({"events": rows, "unreadable": unreadable})
        return 0
    for r in rows:
        dur = "open" if r["duration"] is None else f"{r['duration']:.2f}s"
        peak = "-" if r["peak"] is None else f"{r['peak']:.2f}"
        print(f"{r['time']}  {r['station']:<8} {str(r['event_id']):<24} {dur:>9}  peak {peak:>7}  "
              f"stations {','.join(r['stations']) or '-'}  channels {','.join(r['channels']) or '-'}"
              f"{'  CLIPPED' if r['clipped'] else ''}  key {','.join(str(k) for k in r['key_ids'])}")
    if unreadable:
        print(f"({unreadable} archived event(s) could not be read)")
    return 0


def ims20_row(a: Any) -> dict[str, Any]:
    """The listing row of an archived IMS 2.0 message (``relay ims2 list --json``)."""
    from datetime import datetime, timezone

    return {"id": a.id, "station": a.station, "seq": a.sequence,
            "time": datetime.fromtimestamp(a.time_ms / 1000, timezone.utc).isoformat().replace("+00:00", "Z"),
            "data_type": a.data_type, "msg_type": a.msg_type, "msg_id": a.msg_id,
            "measurement_id": a.measurement_id, "srid": a.srid, "msg_station": a.msg_station,
            "qualifier": a.qualifier, "key_id": a.key_id, "bytes": a.length, "sha256": a.sha256, "file": a.file}


def _cmd_ims2_list(args: argparse.Namespace) -> int:
    from ims_station.output import print_json

    with _archive_from(args) as archive:
        rows = [ims20_row(a) for a in archive.iter_ims20(args.station, since_ms=args.since, until_ms=args.until,
                                                         data_types=args.type)]
    if args.json:
        print_json({"messages": rows})
        return 0
    for r in rows:
        print(f"{r['time']}  {r['id']:<22} {str(r['data_type']):<12} {str(r['qualifier'] or '-'):<4}  "
              f"MSG_ID {r['msg_id']}  SRID {r['srid'] or '-'}  {r['measurement_id'] or '-'}  "
              f"{r['bytes']} bytes  key {r['key_id']}")
    return 0


def _parse_ims20_id(text: str) -> tuple[str, int]:
    """``STA:ims20:SEQ`` (as listed) or ``STA:SEQ`` -> (frame set, seq)."""
    from ims_station import topics

    parts = text.split(":")
    try:
        if len(parts) == 3 and parts[1] == "ims20" or len(parts) == 2:
            return topics.message_frame_set(parts[0], "ims20"), int(parts[-1])
    except (ValueError, topics.TopicError):
        pass
    raise argparse.ArgumentTypeError(f"{text!r} is not a message id STA:ims20:SEQ (relay ims2 list shows them)")


def _cmd_ims2_get(args: argparse.Namespace) -> int:
    import os

    from ims_station.errors import ImsStationError

    frame_set, seq = args.id
    with _archive_from(args) as archive:
        data = archive.read_ims20(frame_set, seq, envelope=args.envelope)
    if data is None:
        raise ImsStationError(f"{frame_set}:{seq}: no such IMS 2.0 message in the archive")
    if args.out == "-":
        import sys

        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return 0
    tmp = f"{args.out}.tmp{os.getpid()}"
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, args.out)
    return 0


def _cmd_request(args: argparse.Namespace) -> int:
    """Ask an auxiliary station for a window (relay/request.py); exit 0 when it sends frames,
    1 when it answers with an error, 2 (an ImsStationError) when no valid answer came."""
    from ims_station.output import print_json
    from ims_station.relay.request import request_window

    doc = request_window(load_config(args.config), args.station, args.start, args.end, wait_s=args.wait)
    if args.json:
        print_json(doc)
    elif doc.get("ok"):
        print(f"{args.station}: {doc['frames']} frames (seq {doc['first_seq']}..{doc['last_seq']}, "
              f"{doc.get('released', 0)} released now) for {doc['start']}..{doc['end']}")
    else:
        print(f"{args.station}: error: {doc.get('error')}")
    if not args.json:
        for m in doc.get("missing") or []:
            print(f"  missing {m['start']}..{m['end']}: {m['reason']}")
    return 0 if doc.get("ok") else 1


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("relay", help="the central relay: verify, dedupe, archive, acknack",
                              description="The central relay (see docs/relay.md).")
    sub = p.add_subparsers(dest="relay_command", metavar="SUBCOMMAND")
    run = sub.add_parser("run", help="run the relay (MQTT subscriber, verification, archive, acknacks)")
    run.add_argument("--config", required=True, help="relay TOML configuration (docs/relay.md)")
    run.add_argument("--json", action="store_true", help="print statistics as JSON lines")
    run.add_argument("--stats-every", type=float, default=60.0, metavar="S",
                     help="seconds between statistics: an INFO line in the log (also systemd's STATUS=), "
                          "or a JSON line with --json")
    run.set_defaults(handler=_cmd_run, log_level=20)   # logging.INFO: the routine summary is an INFO line

    exp = sub.add_parser("export-mseed", help="export archived frames as miniSEED (one file per channel and day)")
    src = exp.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="relay TOML configuration (its data_dir)")
    src.add_argument("--archive", help="archive folder (data_dir/archive)")
    exp.add_argument("--station", required=True, help="station code, e.g. STA01")
    exp.add_argument("--day", type=_parse_day, help="UTC day, YYYY-MM-DD or YYYY-DDD (default: every day)")
    exp.add_argument("--channel", action="append", help="channel code (repeatable; default: all)")
    exp.add_argument("--network", default="XX", help="SEED network code (default XX)")
    exp.add_argument("--encoding", default="steim2", choices=("steim2", "steim1", "int32"))
    exp.add_argument("--out", required=True, help="output folder")
    exp.add_argument("--json", action="store_true", help="print only JSON")
    exp.set_defaults(handler=_cmd_export)

    st = sub.add_parser("stats", help="archive statistics (frames, bytes, quarantine by reason)")
    src = st.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="relay TOML configuration (its data_dir)")
    src.add_argument("--archive", help="archive folder (data_dir/archive)")
    st.add_argument("--quarantine", action="store_true", help="list quarantined payloads")
    st.set_defaults(handler=_cmd_stats)

    ev = sub.add_parser("events", help="list archived trigger events (on/off of one event merged)")
    src = ev.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="relay TOML configuration (its data_dir)")
    src.add_argument("--archive", help="archive folder (data_dir/archive)")
    ev.add_argument("--station", help="station code (default: all)")
    ev.add_argument("--since", type=_parse_time, metavar="ISO", help="events at or after this UTC time")
    ev.add_argument("--until", type=_parse_time, metavar="ISO", help="events before this UTC time")
    ev.add_argument("--json", action="store_true", help='print {"events": [...]} as JSON')
    ev.set_defaults(handler=_cmd_events)

    i2 = sub.add_parser("ims2", help="archived IMS 2.0 messages: list, get",
                        description="IMS 2.0 messages the relay archived (docs/relay.md, \"IMS 2.0 messages\").")
    i2sub = i2.add_subparsers(dest="ims2_command", metavar="SUBCOMMAND")
    ls = i2sub.add_parser("list", help="list archived IMS 2.0 messages")
    src = ls.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="relay TOML configuration (its data_dir)")
    src.add_argument("--archive", help="archive folder (data_dir/archive)")
    ls.add_argument("--station", help="station code (default: all)")
    ls.add_argument("--since", type=_parse_time, metavar="ISO", help="messages sent at or after this UTC time")
    ls.add_argument("--until", type=_parse_time, metavar="ISO", help="messages sent before this UTC time")
    ls.add_argument("--type", action="append", metavar="DATA_TYPE",
                    help="data type, e.g. SAMPLEPHD, RMSSOH, ALERT_FLOW (repeatable; default: all)")
    ls.add_argument("--json", action="store_true", help='print {"messages": [...]} as JSON')
    ls.set_defaults(handler=_cmd_ims2_list)
    get = i2sub.add_parser("get", help="write an archived message's text, byte-identical")
    get.add_argument("id", type=_parse_ims20_id, help="message id STA:ims20:SEQ (from ims2 list)")
    src = get.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="relay TOML configuration (its data_dir)")
    src.add_argument("--archive", help="archive folder (data_dir/archive)")
    get.add_argument("--out", required=True, help="output file ('-': standard output)")
    get.add_argument("--envelope", action="store_true", help="the signed envelope as received, not the text")
    get.set_defaults(handler=_cmd_ims2_get)
    i2.set_defaults(handler=lambda a: (i2.print_help(), 2)[1])

    from ims_station.doctor import add_check_parser

    add_check_parser(sub, "relay")

    from ims_station.relay import cli_network

    cli_network.register(sub, _parse_day, _parse_time)

    from ims_station.relay.request import parse_cli_time

    rq = sub.add_parser("request", help="ask an auxiliary station for the data of a time window",
                        description="Publish a signed send_window command to STATION and print its verified "
                                    "answer (docs/relay.md, \"Window requests\").")
    rq.add_argument("station", help="station code, e.g. STA01")
    rq.add_argument("--start", required=True, type=parse_cli_time, help="ISO-8601 UTC time or POSIX seconds")
    rq.add_argument("--end", required=True, type=parse_cli_time, help="ISO-8601 UTC time or POSIX seconds")
    rq.add_argument("--config", default="/etc/ims-relay/relay1.toml", help="relay TOML configuration "
                    "(its brokers, name, acknack key and trust store; default: %(default)s)")
    rq.add_argument("--wait", type=float, default=30.0, metavar="S", help="seconds to wait for the answer")
    rq.add_argument("--json", action="store_true", help="print the answer as JSON")
    rq.set_defaults(handler=_cmd_request)
    p.set_defaults(handler=lambda a: (p.print_help(), 2)[1])
