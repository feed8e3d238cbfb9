"""The central relay process: an MQTT client around :class:`~ims_station.relay.core.RelayCore`.

Owns the relay's MQTT session: paho-mqtt 2.x, MQTT 5 with a session expiry when the broker offers it
(MQTT 3.1.1 with ``clean_session=False`` otherwise), TLS / username + password via
:class:`ims_station.broker.BrokerConfig` (no default credentials), a shared subscription
``$share/{group}/{prefix}/+/cd11`` at QoS 1 so several relay processes share the stations, manual
PUBACKs, reconnection with backoff and fail-over along a list of brokers, and publishing the core's acknacks on each station's acknack
topic.  It does not own verification, dedupe, archive, state or the acknack schedule (``core``).

Delivery rule (why no frame is lost here): the client is created with ``manual_ack=True``
(paho 2.x), so paho does not PUBACK a QoS 1 message on receipt; the relay calls
``client.ack(mid, 1)`` only after ``RelayCore.process`` returned, i.e. after the frame is archived or
quarantined durably and the frame-set state is saved.  If the relay dies before that, the broker
still holds the message in the persistent session and redelivers it on reconnect; if the broker
loses it too (peers.md §3), the station's outbox still holds the frame and resends it when the
acknack shows the gap.  If storing fails (disk full), the batch is not acknowledged and the relay
drops the connection so that the broker redelivers it later.  PUBACKs are sent in the order the
messages arrived (MQTT 3.1.1 §4.6).

Threading: one thread of ours owns the paho client and runs its network loop (``Client.loop``), so
paho callbacks, batch processing, acks and acknack publishing all happen on it; no locks around
paho.  Messages are processed in batches (up to ``batch_max`` or ``batch_wait_s``) so the archive's
fsync and the state commit are amortised over many frames.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from typing import Any, Callable, Sequence

from ims_station import topics
from ims_station.broker import BrokerConfig
from ims_station.relay.archive import Archive
from ims_station.relay.core import Incoming, Outcome, RelayCore
from ims_station.relay.errors import RelayError
from ims_station.relay.state import StateStore

log = logging.getLogger(__name__)

PROTOCOLS = ("auto", "5", "3.1.1")


def backoff_delay(attempt: int, *, base: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with equal jitter (never zero, never in lock-step with other relays)."""
    step = min(cap, base * (2 ** min(attempt, 30)))
    return step / 2 + rng.uniform(0, step / 2)


class Relay:
    """Subscribe to every station's CD-1.1 topic, verify, dedupe, archive, track gaps, send acknacks."""

    def __init__(self, broker: BrokerConfig | Sequence[BrokerConfig], trust: Any, state: StateStore, archive: Archive, *,
                 prefix: str = topics.DEFAULT_PREFIX, group: str | None = "relay", clock: Any = None,
                 instance: str = "relay", protocol: str = "auto", session_expiry_s: int = 86400,
                 batch_max: int = 64, batch_wait_s: float = 0.02, backoff_base_s: float = 0.5,
                 backoff_max_s: float = 30.0, connect_timeout_s: float = 10.0,
                 on_outcomes: Callable[[list[Outcome]], None] | None = None, **core_kw: Any) -> None:
        """*on_outcomes* is called (on the relay thread) with each batch's outcomes after they were
        stored and acknowledged, e.g. for the demo's latency figures; *core_kw* go to
        :class:`~ims_station.relay.core.RelayCore` (verifier, name, acknack_signer, intervals...)."""
        if protocol not in PROTOCOLS:
            raise RelayError(f"protocol {protocol!r} must be one of {', '.join(PROTOCOLS)}")
        self.brokers = [broker] if isinstance(broker, BrokerConfig) else list(broker)
        if not self.brokers:
            raise RelayError("no broker configured")
        self._idx = 0
        self.prefix = prefix
        self.group = group or None
        self.instance = instance
        self.core = RelayCore(trust, state, archive, prefix=prefix, clock=clock, **core_kw)
        self.session_expiry_s = session_expiry_s
        self.on_outcomes = on_outcomes
        self.batch_max = max(1, batch_max)
        self.batch_wait_s = batch_wait_s
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.connect_timeout_s = connect_timeout_s
        self._protocol_pref = protocol
        self._protocol = "3.1.1" if protocol == "3.1.1" else "5"
        self._inbox: list[tuple[str, bytes, int, int]] = []       # topic, payload, mid, qos
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()            # guards core counters for stats() from other threads
        self._rng = random.Random()
        self._connack: int | None = None
        self._subscribed_filter: str | None = None
        self._sub_mid: int | None = None
        self.transport = Counter()

    # -- public ------------------------------------------------------------------------------------
    @property
    def broker(self) -> BrokerConfig:
        """The broker currently used (or tried)."""
        return self.brokers[self._idx]

    @property
    def subscription(self) -> str:
        return topics.shared_subscription(self.prefix, "cd11", self.group)

    def start(self) -> "Relay":
        if self._thread is not None:
            raise RelayError("relay already started")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"relay-{self.instance}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def close(self) -> None:
        self.stop()
        self.core.close()

    def wait_connected(self, timeout: float = 10.0) -> bool:
        return self._connected.wait(timeout)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def run_forever(self) -> None:
        """Run on the calling thread until :meth:`stop` is called from another (or Ctrl-C)."""
        self._run()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            d = self.core.stats()
        d["transport"] = dict(self.transport, connected=self.connected, protocol=self._protocol,
                              subscription=self._subscribed_filter)
        return d

    def __enter__(self) -> "Relay":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- session loop ------------------------------------------------------------------------------
    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            try:
                got_connected = self._session()
            except Exception:  # never let the relay thread die on a bug in a callback
                log.exception("relay %s: unexpected error in the MQTT session", self.instance)
                got_connected = False
            if self._stop.is_set():
                break
            attempt = 0 if got_connected else attempt + 1
            if not got_connected:
                self.transport["connect_failures"] += 1
                if len(self.brokers) > 1:      # fail over to the next broker of the list
                    self._idx = (self._idx + 1) % len(self.brokers)
                    self.transport["failovers"] += 1
            self._stop.wait(backoff_delay(attempt, base=self.backoff_base_s, cap=self.backoff_max_s, rng=self._rng))

    def _make_client(self) -> Any:
        import paho.mqtt.client as mqtt

        kw: dict[str, Any] = ({"protocol": mqtt.MQTTv5} if self._protocol == "5"
                              else {"protocol": mqtt.MQTTv311, "clean_session": False})
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.broker.client_id(f"relay-{self.instance}"),
                             reconnect_on_failure=False, manual_ack=True, **kw)
        self.broker.apply(client)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        return client

    def _session(self) -> bool:
        import paho.mqtt.client as mqtt

        client = self._make_client()
        self._connack = None
        self._inbox.clear()
        b = self.broker
        kw: dict[str, Any] = {}
        if self._protocol == "5":
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.session_expiry_s
            # The broker must not send us anything bigger than we would accept anyway.
            props.MaximumPacketSize = self.core.verifier.max_payload + 4096
            kw = {"clean_start": False, "properties": props}
        try:
            client.connect(b.host, b.port, b.keepalive, **kw)
        except (OSError, ValueError) as err:
            log.info("relay %s: cannot connect to %s:%s: %s", self.instance, b.host, b.port, err)
            return False
        deadline = time.monotonic() + self.connect_timeout_s
        ever_connected = False
        try:
            while not self._stop.is_set():
                wait = 0.05 if not self._connected.is_set() else min(0.05, self.core.next_acknack_in())
                rc = client.loop(timeout=wait)
                if rc != mqtt.MQTT_ERR_SUCCESS:
                    break
                if self._connected.is_set():
                    ever_connected = True
                    if self._inbox:
                        self._gather(client)
                        if not self._process(client):
                            break                    # storing failed: reconnect for redelivery
                    self._send_acknacks(client)
                elif self._connack is not None or time.monotonic() > deadline:
                    break
        finally:
            if ever_connected:
                self.transport["disconnects"] += 1
            self._connected.clear()
            try:
                client.disconnect()
                client.loop(timeout=0.01)
            except Exception:  # noqa: BLE001 - the socket may already be gone
                pass
        if not ever_connected and self._protocol == "5" and self._protocol_pref == "auto":
            self._protocol = "3.1.1"
            self.transport["protocol_fallbacks"] += 1
            log.info("relay %s: %s:%s refused MQTT 5, using 3.1.1", self.instance, b.host, b.port)
        return ever_connected

    def _gather(self, client: Any) -> None:
        """Read more already-arrived messages (without waiting long) to fill the batch."""
        t_end = time.monotonic() + self.batch_wait_s
        while len(self._inbox) < self.batch_max and time.monotonic() < t_end:
            n = len(self._inbox)
            if client.loop(timeout=0.0 if n else 0.005) != 0:
                break
            if len(self._inbox) == n:
                break

    def _process(self, client: Any) -> bool:
        batch, self._inbox = self._inbox, []
        items = [Incoming(topic, payload, (mid, qos)) for topic, payload, mid, qos in batch]
        try:
            with self._lock:
                outcomes = self.core.process(items)
        except RelayError as err:
            self.core.counters.store_errors += 1
            log.error("relay %s: could not store a batch of %d message(s), not acknowledged: %s",
                      self.instance, len(items), err)
            return False
        for o in outcomes:               # in arrival order (MQTT requires PUBACKs in order)
            mid, qos = o.token
            if qos > 0:
                client.ack(mid, qos)
        self.transport["acked"] += sum(1 for o in outcomes if o.token[1] > 0)
        if self.on_outcomes is not None:
            try:
                self.on_outcomes(outcomes)
            except Exception:  # an observer's bug must not stop the relay
                log.exception("relay %s: on_outcomes callback failed", self.instance)
        return True

    def _send_acknacks(self, client: Any) -> None:
        if self.core.next_acknack_in() > 0:
            return
        with self._lock:
            due = self.core.due_acknacks()
        for topic, _fs, payload in due:
            client.publish(topic, payload, qos=1, retain=False)

    # -- paho callbacks (on our thread, inside client.loop) ------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connack = 0 if not reason_code.is_failure else (reason_code.value or 1)
        if reason_code.is_failure:
            log.warning("relay %s: connection refused: %s", self.instance, reason_code)
            return
        self.transport["connects"] += 1
        self._subscribed_filter = self.subscription
        res, self._sub_mid = client.subscribe(self._subscribed_filter, qos=1)
        self._connected.set()
        log.info("relay %s: connected (MQTT %s, session present: %s), subscribing %s", self.instance,
                 self._protocol, flags.session_present, self._subscribed_filter)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        if not any(rc.is_failure for rc in reason_codes):
            return
        if self.group and self._subscribed_filter != topics.shared_subscription(self.prefix, "cd11", None):
            # A broker without shared subscriptions (e.g. the embedded amqtt): one relay still works.
            self.transport["shared_subscription_refused"] += 1
            self._subscribed_filter = topics.shared_subscription(self.prefix, "cd11", None)
            log.warning("relay %s: broker refused the shared subscription; subscribing %s (run a single "
                        "relay process on this broker)", self.instance, self._subscribed_filter)
            client.subscribe(self._subscribed_filter, qos=1)
        else:
            log.error("relay %s: broker refused subscription %s", self.instance, self._subscribed_filter)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connected.clear()

    def _on_message(self, client, userdata, msg) -> None:
        # Everything is decided later, in the batch; here only bytes and the ack token are kept.
        self._inbox.append((msg.topic, bytes(msg.payload), msg.mid, msg.qos))
