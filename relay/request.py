"""``ims-station relay request``: ask an auxiliary station for the data of a time window.

Owns the relay's side of the ``send_window`` command (the protocol is ``edge/commands.py``'s,
docs/topics.md "Commands"): :func:`make_command` builds the command, a signed envelope (kind
``command``, sender the relay's ``[relay] name``, signed with ``[relay.acknack_key]`` -- the key
the stations already trust as the relay's, ``[uplink] acknack_trust``); :func:`check_response`
verifies a station's answer (kind ``command_response``, sender the station, signed with a key the
relay's trust store holds for it, the command's id) before anything of it is believed; and
:func:`request_window` publishes the command on ``{p}/{STA}/cmd`` and waits for the answer on
``{p}/{STA}/cmd/response`` over one short MQTT connection (the first broker of the relay's
config that accepts it).  The frames themselves come the usual way (``{p}/{STA}/cd11``, archived
by the running relay).  The first two are protocol cores (no I/O, no clock).
"""

from __future__ import annotations

import queue
import uuid
from typing import Any

from ims_station import envelope, topics
from ims_station.errors import ConfigError, ImsStationError, RemoteProtocolError


class RequestError(ImsStationError):
    """No (valid) answer: the broker could not be reached, or the station did not answer in time."""


def make_command(relay_name: str, signer: Any, start: float, end: float, *, id: str, now: float) -> bytes:
    """The signed ``send_window`` command for [*start*, *end*) (POSIX seconds)."""
    from ims_station.edge.commands import iso

    doc = {"cmd": "send_window", "id": id, "start": iso(start), "end": iso(end)}
    return envelope.pack_json("command", relay_name, doc, time_us=int(now * 1e6), signer=signer)


def check_response(payload: bytes, trust: Any, station: str, id: str) -> dict | None:
    """The verified answer of *station* to command *id*, or None if *payload* answers another
    command; :class:`RemoteProtocolError` if it is not a well-formed answer signed by the station."""
    env = envelope.unpack(payload, kind="command_response")
    res = envelope.verify(env, trust, station)
    if not res.ok:
        raise RemoteProtocolError(f"answer from {env.sender!r} not authenticated as {station}'s: {res.reason}")
    doc = env.json()
    if not isinstance(doc, dict):
        raise RemoteProtocolError("answer body is not a JSON object")
    return doc if doc.get("id") == id else None


def request_window(conf: dict[str, Any], station: str, start: float, end: float, *, wait_s: float = 30.0,
                   now: float | None = None) -> dict:
    """Send the command to *station* and return its verified answer (``RequestError`` when none
    arrives within *wait_s* seconds).  *conf*: the relay's (``relay/cli.py`` ``load_config``)."""
    import time

    import paho.mqtt.client as mqtt

    from ims_station.auth import Keystore, TrustStore

    r = conf["relay"]
    if "acknack_key" not in r:
        raise ConfigError(conf.get("file", "<relay config>"), "relay.acknack_key",
                          "window requests are signed with the relay's key: set [relay.acknack_key] "
                          "(the key the stations trust as the relay's, [uplink] acknack_trust)")
    topics.check_station(station)
    signer = Keystore.load(r["acknack_key"]["keystore"]).signer(r["acknack_key"]["key_id"])
    trust = TrustStore.load(r["trust_dir"])
    prefix = r.get("prefix", topics.DEFAULT_PREFIX)
    cid = uuid.uuid4().hex
    payload = make_command(r.get("name", topics.DEFAULT_RELAY_NAME), signer, start, end, id=cid,
                           now=time.time() if now is None else now)
    answers: queue.Queue = queue.Queue()
    subacked: queue.Queue = queue.Queue()
    connected: queue.Queue = queue.Queue()
    rejected: list[str] = []
    last_err: Exception | None = None
    for broker in conf["brokers"]:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"relay-request-{cid[:12]}",
                             protocol=mqtt.MQTTv311, clean_session=True)
        broker.apply(client)
        client.on_connect = lambda c, u, f, rc, p: connected.put(rc)
        client.on_subscribe = lambda c, u, mid, rcs, p: subacked.put(rcs)
        client.on_message = lambda c, u, m: answers.put(bytes(m.payload))
        try:
            client.connect(broker.host, broker.port, keepalive=30)
        except OSError as err:
            last_err = err
            continue
        client.loop_start()
        try:
            rc = connected.get(timeout=min(wait_s, 10.0))
            if rc.is_failure:
                last_err = RequestError(f"broker {broker.host}:{broker.port} refused the connection: {rc}")
                continue
            client.subscribe(topics.topic(prefix, station, "cmd/response"), qos=1)
            rcs = subacked.get(timeout=min(wait_s, 10.0))
            if any(x.is_failure for x in rcs):
                raise RequestError(f"broker {broker.host}:{broker.port} refused the subscription to "
                                   f"{topics.topic(prefix, station, 'cmd/response')} (ACL?)")
            client.publish(topics.topic(prefix, station, "cmd"), payload, qos=1)
            deadline = time.monotonic() + wait_s
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    extra = f" (ignored: {'; '.join(rejected[:3])})" if rejected else ""
                    raise RequestError(f"no answer from {station} within {wait_s:g} s{extra}")
                try:
                    msg = answers.get(timeout=left)
                except queue.Empty:
                    continue
                try:
                    doc = check_response(msg, trust, station, cid)
                except RemoteProtocolError as err:
                    rejected.append(str(err))
                    continue
                if doc is not None:
                    return doc
        except queue.Empty:
            last_err = RequestError(f"broker {broker.host}:{broker.port} did not answer in time")
        finally:
            client.disconnect()
            client.loop_stop()
    raise RequestError(f"no broker reachable: {last_err}")


def parse_cli_time(text: str) -> float:
    """``--start``/``--end``: ISO-8601 (UTC if no zone) or POSIX seconds."""
    import argparse

    from ims_station.edge.commands import CommandRefused, parse_time

    try:
        return parse_time(float(text) if _is_number(text) else text, "time")
    except CommandRefused as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
