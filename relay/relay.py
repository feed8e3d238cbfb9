"""The central relay process: an MQTT client around :class:`~ims_station.relay.core.RelayCore`.

Owns what the relay does over MQTT: shared subscriptions ``$share/{group}/{prefix}/+/cd11`` and
``.../+/events`` (trigger events) and ``.../+/ims20`` (IMS 2.0 messages; ``topics.RELAY_KINDS``) at QoS 1 so several relay processes share the stations (ready --
:attr:`connected` -- only once the broker acknowledged every subscription with a SUBACK), manual PUBACKs, batching, and publishing the core's
acknacks on each station's acknack topic.  The connection itself -- paho-mqtt 2.x, MQTT 5 with a
session expiry (MQTT 3.1.1 with ``clean_session=False`` as fall-back), TLS / username + password via
:class:`ims_station.broker.BrokerConfig` (no default credentials), fail-over along a list of brokers,
reconnection with backoff -- is :class:`ims_station.mqtt.MqttSession`, shared with the station
uplink.  It does not own verification, dedupe, archive, state or the acknack schedule (``core``).

Delivery rule (why no frame is lost here): the client is created with ``manual_ack=True``
(paho 2.x), so paho does not PUBACK a QoS 1 message on receipt; the relay calls
``client.ack(mid, 1)`` only after ``RelayCore.process`` returned, i.e. after the frame is archived or
quarantined durably and the frame-set state is saved.  If the relay dies before that, the broker
still holds the message in the persistent session and redelivers it on reconnect; if the broker
loses it too (peers.md §3), the station's outbox still holds the frame and resends it when the
acknack shows the gap.  If storing fails (disk full), the batch is not acknowledged and the relay
drops the connection so that the broker redelivers it later.  A message that makes processing raise
anything else (a poison message) is quarantined by the core as ``internal_error`` and acknowledged
like any rejection: the persistent session never redelivers it forever.  PUBACKs are sent in the
order the messages arrived (MQTT 3.1.1 §4.6).

Threading: the session's thread owns the paho client and runs its network loop (``Client.loop``),
so paho callbacks, batch processing, acks and acknack publishing all happen on it (the hooks below
run there); no locks around paho.  Messages are processed in batches (up to ``batch_max`` or
``batch_wait_s``) so the archive's fsync and the state commit are amortised over many frames.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import Counter
from typing import Any, Callable, Sequence

from ims_station import topics
from ims_station.broker import BrokerConfig
from ims_station.clock import Clock
# backoff_delay is re-exported: it was defined here before the session moved to ims_station.mqtt.
from ims_station.mqtt import PROTOCOLS, MqttSession, SessionOwner, backoff_delay  # noqa: F401
from ims_station.relay.archive import Archive
from ims_station.relay.core import Incoming, Outcome, RelayCore
from ims_station.relay.errors import RelayError
from ims_station.relay.state import StateStore

log = logging.getLogger(__name__)


class Relay(SessionOwner):
    """Subscribe to every station's CD-1.1, events and ims20 topics, verify, dedupe, archive, track gaps,
    send acknacks."""

    def __init__(self, broker: BrokerConfig | Sequence[BrokerConfig], trust: Any, state: StateStore, archive: Archive, *,
                 prefix: str = topics.DEFAULT_PREFIX, group: str | None = "relay", clock: Clock | None = None,
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
        self.prefix = prefix
        self.group = group or None
        self.instance = instance
        self.core = RelayCore(trust, state, archive, prefix=prefix, clock=clock, **core_kw)
        self.on_outcomes = on_outcomes
        self.batch_max = max(1, batch_max)
        self.batch_wait_s = batch_wait_s
        self._inbox: list[tuple[str, bytes, int, int]] = []       # topic, payload, mid, qos
        self._lock = threading.Lock()            # guards core counters for stats() from other threads
        self._filters: dict[str, str] = {}         # topic kind -> filter subscribed on this connection
        self._sub_kinds: dict[int, str] = {}       # SUBSCRIBE mid -> topic kind
        self.transport = Counter()
        self._mqtt = MqttSession(
            self.brokers, client_name=f"relay-{instance}", label=f"relay {instance}", protocol=protocol,
            session_expiry_s=session_expiry_s, manual_ack=True, backoff_base_s=backoff_base_s,
            backoff_max_s=backoff_max_s, connect_timeout_s=connect_timeout_s, counters=self.transport,
            logger=log, setup=self._setup_client, connect_properties=self._connect_properties,
            on_begin=lambda: self._inbox.clear(), on_connected=self._on_connected,
            on_subscribed=self._on_subscribed, on_turn=self._turn,
            loop_timeout=lambda: min(0.05, self.core.next_acknack_in()),
            # Stopping: one last turn, so what already arrived is stored and acknowledged.
            on_stop=self._turn)

    # -- public ------------------------------------------------------------------------------------
    @property
    def broker(self) -> BrokerConfig:
        """The broker currently used (or tried)."""
        return self._mqtt.broker

    @property
    def subscription(self) -> str:
        """The CD-1.1 subscription filter (:attr:`subscriptions` has every kind's)."""
        return topics.shared_subscription(self.prefix, "cd11", self.group)

    @property
    def subscriptions(self) -> list[str]:
        """One (shared) subscription filter per kind the relay archives (``topics.RELAY_KINDS``)."""
        return [topics.shared_subscription(self.prefix, k, self.group) for k in topics.RELAY_KINDS]

    def start(self) -> "Relay":
        if not self._mqtt.start(f"relay-{self.instance}"):
            raise RelayError("relay already started")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._mqtt.stop(timeout)

    def request_stop(self) -> None:
        """Begin :meth:`stop` without waiting (a connection attempt in progress is given up)."""
        self._mqtt.request_stop()

    def close(self, timeout: float = 10.0) -> None:
        """Stop (the session's thread gets up to *timeout*) and close state and archive."""
        self.stop(timeout)
        if self.running:
            log.warning("relay %s: the MQTT session did not end within %g s; closing the archive "
                        "regardless", self.instance, timeout)
        self.core.close()

    def run_forever(self) -> None:
        """Run on the calling thread until :meth:`stop` is called from another (or Ctrl-C)."""
        self._mqtt.run()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            d = self.core.stats()
        if hasattr(self.core.trust, "stats"):
            d["trust"] = self.core.trust.stats()
        d["transport"] = dict(self.transport, connected=self.connected, protocol=self._mqtt.protocol,
                              subscription=self._filters.get("cd11"),
                              subscriptions=[self._filters[k] for k in topics.RELAY_KINDS if k in self._filters])
        return d

    def __enter__(self) -> "Relay":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- session hooks (on the session thread) --------------------------------------------------------
    def _setup_client(self, client: Any) -> None:
        client.on_message = self._on_message

    def _connect_properties(self, props: Any) -> None:
        # The broker must not send us anything bigger than we would accept anyway.
        props.MaximumPacketSize = self.core.verifier.max_payload + 4096

    def _turn(self, client: Any) -> bool:
        # Between batches, never inside one: each message is verified against one trust store.
        refresh = getattr(self.core.trust, "refresh", None)
        if refresh is not None:
            with self._lock:
                refresh()
        if self._inbox:
            self._gather(client)
            if not self._process(client):
                return False                 # storing failed: reconnect for redelivery
        self._send_acknacks(client)
        with self._lock:
            self.core.check_silence()
        return True

    def _on_connected(self, client: Any, flags: Any) -> None:
        # Through the session: the relay counts as connected only after every SUBACK.  Before it, a
        # frame published by a station may find no subscription (shared group, or first session).
        self._filters.clear()
        self._sub_kinds.clear()
        for kind in topics.RELAY_KINDS:
            self._subscribe(client, kind, topics.shared_subscription(self.prefix, kind, self.group))
        log.info("relay %s: connected (MQTT %s, session present: %s), subscribing %s", self.instance,
                 self._mqtt.protocol, flags.session_present, ", ".join(self._filters.values()))

    def _subscribe(self, client: Any, kind: str, filt: str) -> int | None:
        self._filters[kind] = filt
        mid = self._mqtt.subscribe(client, filt, qos=1)
        if mid is not None:
            self._sub_kinds[mid] = kind
        return mid

    def _gather(self, client: Any) -> None:
        """Read more already-arrived messages (without waiting long) to fill the batch."""
        clock = self._mqtt.clock          # a network wait: wall time, like the session's deadlines
        t_end = clock.monotonic() + self.batch_wait_s
        while len(self._inbox) < self.batch_max and clock.monotonic() < t_end:
            n = len(self._inbox)
            if client.loop(timeout=0.0 if n else 0.005) != 0:
                break
            if len(self._inbox) == n:
                break

    def _process(self, client: Any) -> bool:
        batch, self._inbox = self._inbox, []
        items = [Incoming(topic, payload, (mid, qos)) for topic, payload, mid, qos in batch]
        outcomes = process_guarded(self.core, items, lock=self._lock, label=f"relay {self.instance}",
                                   transport=self.transport)
        if outcomes is None:
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

    # -- paho callbacks (on the session thread, inside client.loop) ------------------------------------
    def _on_subscribed(self, client: Any, mid: int, reason_codes: Any) -> bool:
        """A SUBACK: True if the relay can work on this connection (the session then reports it
        connected once no other SUBACK is due)."""
        kind = self._sub_kinds.pop(mid, "cd11")
        if not any(rc.is_failure for rc in reason_codes):
            self.transport["subscriptions_acknowledged"] += 1
            return True
        plain = topics.shared_subscription(self.prefix, kind, None)
        if self.group and self._filters.get(kind) != plain:
            # A broker without shared subscriptions (e.g. the embedded amqtt): one relay still works.
            self.transport["shared_subscription_refused"] += 1
            log.warning("relay %s: broker refused the shared subscription; subscribing %s (run a single "
                        "relay process on this broker)", self.instance, plain)
            # Replaced: readiness now waits for this SUBACK instead.
            return self._subscribe(client, kind, plain) is not None
        log.error("relay %s: broker refused subscription %s", self.instance, self._filters.get(kind))
        self.transport["subscription_refused"] += 1
        return False

    def _on_message(self, client, userdata, msg) -> None:
        # Everything is decided later, in the batch; here only bytes and the ack token are kept.
        self._inbox.append((msg.topic, bytes(msg.payload), msg.mid, msg.qos))


def process_guarded(core: RelayCore, items: list[Incoming], *, lock: threading.Lock, label: str,
                    transport: Counter) -> list[Outcome] | None:
    """``core.process(items)`` for a transport: the outcomes (one per item, in order) to acknowledge,
    or None if storing failed (:class:`RelayError`: nothing may be acknowledged, the transport lets
    the broker redeliver).  Shared by the MQTT relay and the JetStream relay (``relay.jetstream``).

    ``RelayCore.process`` is the poison-message boundary and raises nothing else; should a bug get
    past it, no message may block the input: each one alone, and one that still fails is
    acknowledged unstored (counted in *transport* ``poison_unstored``, logged) rather than
    redelivered forever."""
    try:
        with lock:
            return core.process(items)
    except RelayError as err:
        core.counters.store_errors += 1
        log.error("%s: could not store a batch of %d message(s), not acknowledged: %s", label, len(items), err)
        return None
    except Exception:
        log.exception("%s: processing a batch of %d message(s) raised; retrying one by one", label, len(items))
    outcomes: list[Outcome] = []
    for item in items:
        try:
            with lock:
                outcomes += core.process([item])
        except RelayError as err:
            core.counters.store_errors += 1
            log.error("%s: could not store a message, not acknowledged: %s", label, err)
            return None
        except Exception as err:
            from ims_station.relay.core import describe_exception

            digest = hashlib.sha256(item.payload).hexdigest()[:16]
            transport["poison_unstored"] += 1
            core.counters.internal_errors += 1
            log.error("%s: message on %s (sha256 %s..) could not be processed nor quarantined, "
                      "acknowledged unstored: %s", label, item.topic, digest, describe_exception(err))
            outcomes.append(Outcome(item.token, "internal_error", detail=describe_exception(err)))
    return outcomes
