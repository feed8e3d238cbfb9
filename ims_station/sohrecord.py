"""``ims-station soh record``: append the SOH documents stations publish to a JSON-lines file.

There is no SOH store at the station or the relay; this subscriber is the simplest honest source of
SOH history for ``ims-station plot soh`` (docs/plots.md).  It subscribes read-only to
``{p}/{STA}/soh`` (``+`` for every station, docs/topics.md) on the broker of a relay file
(``--relay``: TLS and credentials as the relay uses them) or a plain ``--broker HOST:PORT``, and
appends every document as one compact line, flushed at once.

Owns the command only.  Every message is untrusted: larger than :data:`MAX_MESSAGE`, not a JSON
object, or on a topic that is not an SOH topic, it is counted as dropped and not written; nothing a
message holds ends the command.  The retained document seen again after a restart is written again;
``plot soh`` drops repeated (station, time) pairs.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from typing import Any

from ims_station.errors import ImsStationError

MAX_MESSAGE = 1 << 20          # an SOH document is a few kB


class SohRecorder:
    """Writes the SOH documents of its MQTT messages to *fh* (``feed`` is the per-message path)."""

    def __init__(self, fh: Any, *, prefix: str = "ims", count: int | None = None) -> None:
        self.fh, self.prefix, self.count = fh, prefix, count
        self.counters = {"written": 0, "dropped": 0}
        self.done = threading.Event()

    def feed(self, topic: str, payload: bytes) -> bool:
        """One message; True if it was written."""
        from ims_station import topics

        try:
            _, kind = topics.parse(self.prefix, topic)
            if kind != "soh" or len(payload) > MAX_MESSAGE:
                raise ValueError(kind)
            doc = json.loads(payload)
            if not isinstance(doc, dict):
                raise ValueError("not an object")
            line = json.dumps(doc, separators=(",", ":"), default=str)
        except Exception:             # an untrusted message never ends the recorder
            self.counters["dropped"] += 1
            return False
        self.fh.write(line + "\n")
        self.fh.flush()
        self.counters["written"] += 1
        if self.count is not None and self.counters["written"] >= self.count:
            self.done.set()
        return True


def _broker_from(args: argparse.Namespace) -> tuple[Any, str]:
    from ims_station.broker import BrokerConfig

    if args.relay:
        from ims_station.relay.cli import load_config

        conf = load_config(args.relay)
        return conf["brokers"][0], args.prefix or conf["relay"].get("prefix", "ims")
    host, _, port = args.broker.rpartition(":")
    if not host or not port.isdigit():
        raise ImsStationError(f"--broker {args.broker!r}: write HOST:PORT (e.g. 127.0.0.1:1883)")
    return BrokerConfig(host=host.strip("[]"), port=int(port)), args.prefix or "ims"


def _cmd_record(args: argparse.Namespace) -> int:
    import paho.mqtt.client as mqtt

    if args.count is not None and args.count < 1:
        raise ImsStationError(f"--count: must be at least 1, got {args.count}")
    broker, prefix = _broker_from(args)
    stations = args.station or ["+"]
    try:
        fh = open(args.out, "a", encoding="utf-8")
    except OSError as err:
        raise ImsStationError(f"{args.out}: cannot append: {err.strerror or err}") from None
    rec = SohRecorder(fh, prefix=prefix, count=args.count)
    connected = threading.Event()

    def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, props: Any = None) -> None:
        if getattr(reason, "is_failure", False):
            print(f"ims-station soh record: broker refused: {reason}", file=sys.stderr)
            return
        connected.set()
        for sta in stations:
            client.subscribe(f"{prefix}/{sta}/soh", qos=1)

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"ims-soh-record-{int(time.time() * 1000):x}")
    broker.apply(c)
    c.on_connect = on_connect
    c.on_message = lambda client, userdata, msg: rec.feed(msg.topic, msg.payload)
    try:
        c.connect_async(broker.host, broker.port, keepalive=30)
        c.loop_start()
        if not connected.wait(args.connect_timeout):
            raise ImsStationError(f"{broker.host}:{broker.port}: no connection within {args.connect_timeout:g} s")
        while not rec.done.wait(1.0):
            pass
    finally:
        c.disconnect()
        c.loop_stop()
        fh.close()
        print(f"{rec.counters['written']} document(s) written to {args.out}, {rec.counters['dropped']} dropped",
              file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("soh", help="state of health: record the SOH documents stations publish")
    ssub = p.add_subparsers(dest="soh_command", metavar="SUBCOMMAND")
    r = ssub.add_parser("record", help="append SOH documents from the broker to a JSON-lines file (for plot soh)",
                        description="Subscribes to {prefix}/{STA}/soh and appends each document as one line "
                                    "(docs/plots.md). Runs until interrupted or --count documents.")
    src = r.add_mutually_exclusive_group(required=True)
    src.add_argument("--relay", metavar="RELAY_TOML", help="the broker, TLS, credentials and prefix of this relay file")
    src.add_argument("--broker", metavar="HOST:PORT", help="this broker (no TLS, no credentials)")
    r.add_argument("--prefix", help="topic prefix (default: the relay file's, else ims)")
    r.add_argument("--station", action="append", metavar="STA", help="this station only (repeatable; default all)")
    r.add_argument("--out", required=True, metavar="FILE.jsonl", help="file to append to")
    r.add_argument("--count", type=int, metavar="N", help="stop after N documents")
    r.add_argument("--connect-timeout", type=float, default=10.0, metavar="S", help="seconds to wait for the broker")
    r.set_defaults(handler=_cmd_record)
    p.set_defaults(handler=lambda args: (p.print_help(), 2)[1])
