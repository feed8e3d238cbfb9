"""The station's MQTT uplink: drains the outbox to a broker and applies the relay's acknacks.

Owns the MQTT session of one station: connection to one of a list of brokers (fail-over), MQTT 5
with a session expiry when the broker offers it and MQTT 3.1.1 with ``clean_session=False``
otherwise, TLS / username + password (via :class:`ims_station.broker.BrokerConfig`; no default
credentials), Last Will ``offline`` and ``online`` retained on the status topic, reconnection with
exponential backoff and jitter, an in-flight window, retained SOH JSON, and the translation of the
relay's CD-1.1 acknack frames into outbox deletions and resends.  It does not own durability (the
outbox), the frame format (``ims_station.cd11``) or the topic names (``ims_station.topics``).

Delivery rule: a frame leaves the outbox only when a relay acknack covers it, never on the
broker's PUBACK -- brokers drop queued messages when full and clients lose QoS 1 messages across
reconnects (``peers.md`` §3), so the broker is a transport, not a store.  Frames that the acknack
lists as gaps, or that lie outside its [lowest, highest] range (implied gaps, spec §6.3), are resent
from the outbox with their original bytes (§6.4).  A frame is therefore published at least once and
the relay dedupes by (frame set, sequence number).

Threading: one thread of ours owns the paho client and runs its network loop
(``Client.loop``), so every paho callback, every publish and every outbox read of the uplink
happens on that thread.  paho's own reconnect logic is not used because it cannot switch brokers;
paho's ``loop_start`` thread is therefore not used either.  Other threads call :meth:`notify`
after committing a frame (wakes the pump) and :meth:`request_soh`.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ims_station import topics
from ims_station.broker import BrokerConfig
from ims_station.errors import ImsStationError

log = logging.getLogger(__name__)

PROTOCOLS = ("auto", "5", "3.1.1")


class UplinkError(ImsStationError):
    """The uplink was configured wrongly (no brokers, bad protocol name)."""


@dataclass
class _BrokerState:
    config: BrokerConfig
    protocol: str            # "5" or "3.1.1": what to try next on this broker


def backoff_delay(attempt: int, *, base: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with "equal jitter": half the step fixed, half random, so a fleet of
    stations that lost the same broker does not reconnect in lock-step (and never with zero delay)."""
    step = min(cap, base * (2 ** min(attempt, 30)))
    return step / 2 + rng.uniform(0, step / 2)


class Uplink:
    """Publishes the outbox of one station over MQTT and applies the relay's acknacks."""

    def __init__(self, station: str, brokers: Sequence[BrokerConfig], outbox: Any, *,
                 prefix: str = topics.DEFAULT_PREFIX, clock: Any, on_acknack: Callable[[Any], None] | None = None,
                 frame_set: str | None = None, protocol: str = "auto", session_expiry_s: int = 7 * 86400,
                 inflight: int = 32, max_unacked: int = 2000, live_window_s: float = 60.0,
                 ack_timeout_s: float = 300.0, backoff_base_s: float = 0.5, backoff_max_s: float = 60.0,
                 connect_timeout_s: float = 10.0, soh_interval_s: float = 60.0,
                 soh_provider: Callable[[], dict] | None = None, rng: random.Random | None = None,
                 client_name: str | None = None) -> None:
        if not brokers:
            raise UplinkError("uplink: at least one broker is needed")
        if protocol not in PROTOCOLS:
            raise UplinkError(f"uplink: protocol must be one of {PROTOCOLS}, not {protocol!r}")
        self.station = topics.check_station(station)
        self.prefix = prefix
        self.frame_set = frame_set or f"{station}:0"
        self.outbox = outbox
        self._clock = clock
        self._on_acknack = on_acknack
        self._brokers = [_BrokerState(b, "3.1.1" if protocol == "3.1.1" else "5") for b in brokers]
        self._protocol_pref = protocol
        self.session_expiry_s = int(session_expiry_s)
        self.inflight = int(inflight)
        self.max_unacked = int(max_unacked)
        self.live_window_s = float(live_window_s)
        self.ack_timeout_s = float(ack_timeout_s)
        self.backoff_base_s = float(backoff_base_s)
        self.backoff_max_s = float(backoff_max_s)
        self.connect_timeout_s = float(connect_timeout_s)
        self.soh_interval_s = float(soh_interval_s)
        self._soh_provider = soh_provider
        self._rng = rng or random.Random()
        self.client_name = client_name or station
        self.t_cd11 = topics.topic(prefix, station, "cd11")
        self.t_acknack = topics.topic(prefix, station, "acknack")
        self.t_soh = topics.topic(prefix, station, "soh")
        self.t_status = topics.topic(prefix, station, "status")

        self._idx = 0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._soh_due = threading.Event()
        self._connected = threading.Event()
        self._client: Any = None
        self._pending_mids: dict[int, int] = {}        # mid -> outbox id, PUBACK not yet received
        self._connack: Any = None
        self._last_pump = 0.0
        self._last_soh = 0.0
        self._last_requeue = 0.0
        self._counters = dict(connects=0, connect_failures=0, disconnects=0, failovers=0, published=0,
                              resent=0, pubacks=0, acknacks=0, acknacks_invalid=0, acknacks_other_set=0,
                              frames_acked=0, requeued_on_disconnect=0, requeued_ack_timeout=0,
                              soh_published=0, protocol_fallbacks=0)
        self.last_acknack: dict | None = None

    # -- public ----------------------------------------------------------------------------------
    def start(self) -> "Uplink":
        if self._thread is not None:
            return self
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"uplink-{self.station}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Publish ``offline`` (retained), disconnect cleanly (no Last Will) and end the thread."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def notify(self) -> None:
        """A frame was committed to the outbox: publish it now rather than at the next poll."""
        self._wake.set()

    def request_soh(self) -> None:
        """Publish the SOH at the next loop turn (e.g. after an outbox alarm)."""
        self._soh_due.set()
        self._wake.set()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def stats(self) -> dict:
        b = self._brokers[self._idx]
        return {**self._counters, "connected": self.connected,
                "broker": f"{b.config.host}:{b.config.port}", "protocol": b.protocol,
                "awaiting_puback": len(self._pending_mids), "last_acknack": self.last_acknack}

    # -- the connection loop -----------------------------------------------------------------------
    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            state = self._brokers[self._idx]
            try:
                got_connected = self._session(state)
            except Exception:  # never let the uplink thread die: the outbox keeps the data
                log.exception("uplink %s: unexpected error in the MQTT session", self.station)
                got_connected = False
            if self._stop.is_set():
                break
            if got_connected:
                attempt = 0          # lost a working connection: first try the same broker again
            else:
                attempt += 1
                self._counters["connect_failures"] += 1
                if len(self._brokers) > 1:
                    self._idx = (self._idx + 1) % len(self._brokers)
                    self._counters["failovers"] += 1
            self._stop.wait(backoff_delay(attempt, base=self.backoff_base_s, cap=self.backoff_max_s, rng=self._rng))

    def _make_client(self, state: _BrokerState) -> Any:
        import paho.mqtt.client as mqtt

        v5 = state.protocol == "5"
        kw: dict[str, Any] = {"protocol": mqtt.MQTTv5} if v5 else {"protocol": mqtt.MQTTv311, "clean_session": False}
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=state.config.client_id(self.client_name),
                             reconnect_on_failure=False, **kw)
        state.config.apply(client)
        client.will_set(self.t_status, self._status_payload("offline", "connection lost"), qos=1, retain=True)
        # Our window, not paho's: paho queues beyond max_inflight in memory, which we do not want.
        client.max_inflight_messages_set(max(self.inflight, 1))
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    def _session(self, state: _BrokerState) -> bool:
        """One connection attempt and, if it succeeds, its lifetime.  True if CONNACK was positive."""
        import paho.mqtt.client as mqtt

        client = self._make_client(state)
        self._client = client
        self._connack = None
        self._connected.clear()
        self._pending_mids.clear()
        b = state.config
        kw: dict[str, Any] = {}
        if state.protocol == "5":
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.session_expiry_s
            kw = {"clean_start": False, "properties": props}
        try:
            client.connect(b.host, b.port, b.keepalive, **kw)
        except (OSError, ValueError) as err:
            log.info("uplink %s: cannot connect to %s:%s: %s", self.station, b.host, b.port, err)
            return False
        deadline = time.monotonic() + self.connect_timeout_s
        ever_connected = False
        try:
            while True:
                rc = client.loop(timeout=0.05)
                if self._stop.is_set():
                    if self._connected.is_set():
                        self._graceful_close(client)
                    break
                if rc != mqtt.MQTT_ERR_SUCCESS:
                    break
                if self._connected.is_set():
                    ever_connected = True
                    self._periodic(client)
                elif self._connack is not None or time.monotonic() > deadline:
                    break      # refused, or no CONNACK in time
        finally:
            if self._connected.is_set() or ever_connected:
                self._counters["disconnects"] += 1
            self._connected.clear()
            self._requeue_unpubacked()
            try:
                client.disconnect()
            except Exception:
                pass
            try:
                client.loop(timeout=0.01)
                client.socket() and client.socket().close()
            except Exception:
                pass
        if not ever_connected and state.protocol == "5" and self._protocol_pref == "auto":
            # TCP (and TLS) worked but no positive CONNACK with MQTT 5: a 3.1.1-only broker refuses
            # the version (CONNACK 1) or just closes.  Fall back to 3.1.1 for this broker.
            state.protocol = "3.1.1"
            self._counters["protocol_fallbacks"] += 1
            log.info("uplink %s: %s:%s refused MQTT 5, using 3.1.1", self.station, b.host, b.port)
        return ever_connected

    def _graceful_close(self, client: Any) -> None:
        info = client.publish(self.t_status, self._status_payload("offline", "stopped"), qos=1, retain=True)
        deadline = time.monotonic() + 2.0
        while not info.is_published() and time.monotonic() < deadline:
            if client.loop(timeout=0.05) != 0:
                break

    # -- paho callbacks (run on our thread, inside client.loop) ----------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connack = 0 if not reason_code.is_failure else (reason_code.value or 1)
        if reason_code.is_failure:
            log.warning("uplink %s: connection refused: %s", self.station, reason_code)
            return
        self._counters["connects"] += 1
        client.subscribe(self.t_acknack, qos=1)
        client.publish(self.t_status, self._status_payload("online"), qos=1, retain=True)
        self._connected.set()
        self._soh_due.set()
        self._wake.set()
        log.info("uplink %s: connected (session present: %s)", self.station, flags.session_present)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connected.clear()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        if self._pending_mids.pop(mid, None) is not None:
            self._counters["pubacks"] += 1
            self._wake.set()

    def _on_message(self, client, userdata, msg) -> None:
        if msg.topic != self.t_acknack:
            return
        try:
            self._handle_acknack(bytes(msg.payload))
        except Exception as err:  # a bad acknack must never stop the uplink
            self._counters["acknacks_invalid"] += 1
            log.warning("uplink %s: rejected acknack (%d bytes): %s", self.station, len(msg.payload), err)

    def _handle_acknack(self, payload: bytes) -> None:
        from ims_station.cd11 import Acknack, parse_frame

        frame, end = parse_frame(payload)
        if end != len(payload) or not isinstance(frame, Acknack):
            raise ValueError(f"not exactly one acknack frame ({type(frame).__name__}, {end} of "
                             f"{len(payload)} bytes)")
        if frame.frame_set != self.frame_set:
            self._counters["acknacks_other_set"] += 1
            return
        self._counters["acknacks"] += 1
        n = self.outbox.apply_acknack(frame.frame_set, frame.lowest, frame.highest, frame.gaps)
        self._counters["frames_acked"] += n
        self.last_acknack = {"lowest": frame.lowest, "highest": frame.highest, "gaps": len(frame.gaps),
                             "deleted": n, "time": self._clock.time()}
        self._wake.set()
        if self._on_acknack is not None:
            self._on_acknack(frame)

    # -- sending -----------------------------------------------------------------------------------
    def _periodic(self, client: Any) -> None:
        now = time.monotonic()
        if now - self._last_requeue >= min(self.ack_timeout_s / 4, 30.0):
            self._last_requeue = now
            n = self.outbox.requeue_unacked(self.ack_timeout_s)
            if n:
                self._counters["requeued_ack_timeout"] += n
                self._wake.set()
        if self._soh_due.is_set() or now - self._last_soh >= self.soh_interval_s:
            self._soh_due.clear()
            self._last_soh = now
            self._publish_soh(client)
        if self._wake.is_set() or now - self._last_pump >= 0.5:
            self._wake.clear()
            self._last_pump = now
            self._pump(client)

    def _pump(self, client: Any) -> None:
        import paho.mqtt.client as mqtt

        room = self.inflight - len(self._pending_mids)
        if room <= 0:
            return
        room = min(room, self.max_unacked - self.outbox.in_flight_count())
        if room <= 0:
            return
        items = self.outbox.next_to_send(room, live_window_s=self.live_window_s)
        sent = []
        for it in items:
            info = client.publish(self.t_cd11, it.payload, qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                break
            self._pending_mids[info.mid] = it.id
            sent.append(it.id)
            self._counters["published"] += 1
            if it.sent_count:
                self._counters["resent"] += 1
        if sent:
            self.outbox.mark_sent(sent)
        if len(sent) == len(items) == room:
            self._wake.set()       # the window was the limit: more may be waiting

    def _requeue_unpubacked(self) -> None:
        # No PUBACK: the broker may or may not have the frame.  Send it again after reconnecting
        # (the relay dedupes) rather than trust paho or the broker session to redeliver (peers §3).
        if self._pending_mids:
            ids = list(self._pending_mids.values())
            self._pending_mids.clear()
            try:
                self.outbox.requeue(ids)
            except Exception:
                log.exception("uplink %s: requeue failed", self.station)
                return
            self._counters["requeued_on_disconnect"] += len(ids)

    def _status_payload(self, status: str, reason: str = "") -> bytes:
        doc = {"station": self.station, "status": status, "time": self._clock.time()}
        if reason:
            doc["reason"] = reason
        return json.dumps(doc).encode()

    def _publish_soh(self, client: Any) -> None:
        doc: dict[str, Any] = {"station": self.station, "time": self._clock.time(), "uplink": self.stats()}
        try:
            doc["outbox"] = self.outbox.stats()
            if self._soh_provider is not None:
                doc.update(self._soh_provider())
        except Exception:
            log.exception("uplink %s: SOH provider failed", self.station)
        client.publish(self.t_soh, json.dumps(doc, default=str).encode(), qos=1, retain=True)
        self._counters["soh_published"] += 1
