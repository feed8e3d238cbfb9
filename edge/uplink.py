"""The station's MQTT uplink: drains the outbox to a broker and applies the relay's acknacks.

Owns what one station says over MQTT: Last Will ``offline`` and ``online`` retained on the status
topic, an in-flight window, retained SOH JSON, and the translation of the relay's CD-1.1 acknack
frames into outbox deletions and resends.  The connection itself -- fail-over along a list of
brokers, MQTT 5 with a session expiry (3.1.1 with ``clean_session=False`` as fall-back), TLS /
username + password via :class:`ims_station.broker.BrokerConfig` (no default credentials),
reconnection with exponential backoff and jitter -- is :class:`ims_station.mqtt.MqttSession`, shared
with the relay.  It does not own durability (the outbox), the frame format (``ims_station.cd11``) or
the topic names (``ims_station.topics``).

Delivery rule: a frame leaves the outbox only when a relay acknack covers it, never on the
broker's PUBACK -- brokers drop queued messages when full and clients lose QoS 1 messages across
reconnects (``peers.md`` §3), so the broker is a transport, not a store.  Frames that the acknack
lists as gaps, or that lie outside its [lowest, highest] range (implied gaps, spec §6.3), are resent
from the outbox with their original bytes (§6.4).  A frame is therefore published at least once and
the relay dedupes by (frame set, sequence number).

Kinds and frame sets: each outbox item is published on the topic of its kind
(:func:`ims_station.topics.outbox_topic`: ``cd11`` frames on ``{p}/STA/cd11``, trigger ``events``
-- signed envelopes, ``edge/station.event_emitter`` -- on ``{p}/STA/events``, IMS 2.0 messages
on ``{p}/STA/ims20``), and the relay's acknacks are applied for every frame set the station owns
(:attr:`Uplink.frame_sets`: ``STA:0``, ``STA:events`` and ``STA:ims20``), so an event or an IMS 2.0
message leaves the outbox only when the relay archived it, exactly like a frame.  Acknacks of any other frame set are counted ``acknacks_other_set`` and ignored.

Acknack trust (defence in depth; docs/uplink.md, "Acknack authentication"): an acknack deletes
frames, so

* with *acknack_trust* (a :class:`ims_station.auth.TrustStore` holding the relay's public key), an
  acknack is applied only if it comes from the relay by name *and* key: its creator is *relay_name*
  (the relay's ``[relay] name``, default :data:`ims_station.topics.DEFAULT_RELAY_NAME`), it is
  signed by one of the relay's keys (:func:`relay_acknack_keys`: *acknack_key_ids* when given, else
  every key of the trust store listed for *relay_name*; a key also listed for any other station is
  refused at start-up, since that station holds it), and the signature verifies for *relay_name*.
  Unsigned ones are counted ``acknacks_unsigned``, the others ``acknacks_bad_signature``, and both
  are dropped.  Another station's key in the same trust store therefore never deletes anything,
  whatever creator the acknack claims;
* whatever the signatures, the outbox deletes only frames the broker PUBACKed
  (:meth:`Outbox.apply_acknack`), and an acknack whose ``highest`` lies above the highest sequence
  number this station ever published in the frame set is counted ``acknacks_suspicious`` and logged
  (it is still applied under the PUBACK rule: a relay restored from a backup may legitimately be
  ahead of a station whose outbox was wiped).

Readiness: the acknack subscription goes through :meth:`ims_station.mqtt.MqttSession.subscribe`, so
:attr:`Uplink.connected` turns true only after the broker's SUBACK, and no frame is published on a
connection before that SUBACK arrived: the relay's acknack for a frame could otherwise be sent
before the broker routes acknacks to us (a first connection has no stored subscription) and the
station would wait for the 300-s ack timeout.  A refused acknack subscription (an ACL that forgets
the station's acknack topic) is logged and counted (``acknack_subscribe_refused``); frames are still
sent, because the archive needs the data more than the outbox needs its deletions -- they stay in
the outbox and the ack timeout resends them (the relay dedupes) until an operator fixes the ACL.
With ``acknack_stall_s`` (off by default; for a clustered centre, docs/centre-cluster.md) frames in
flight and no acknack on a connection for that long make the uplink reconnect with a clean session
once: a clustered broker can keep a failed-over station's session without delivering its acknacks.
With ``acknack_qos = 0`` (default 1) the acknack subscription is QoS 0, outside the broker's
persistent session: the relay repeats acknacks, so none needs storing, and a clustered broker then
has no session queue of it to carry across a node's loss (docs/centre-cluster.md).

Commands (auxiliary stations; docs/uplink.md, "Auxiliary mode"): with a *command_handler*
(:class:`ims_station.edge.commands.CommandHandler`), the uplink also subscribes to its ``cmd`` topic
and publishes what the handler answers on ``cmd/response``; the handler authenticates and
bounds each command and never raises.  A refused ``cmd`` subscription is logged and counted
(``cmd_subscribe_refused``) and does not hold the frames back.

Time: protocol schedules (the ack-timeout check, the SOH interval) run on the injected *clock*;
network waits (the poll of the outbox, the 2-s grace for the ``offline`` message when stopping) on
the session's wall clock, because they bound real socket waits.

Threading: the session's thread owns the paho client and runs its network loop (``Client.loop``),
so every paho callback, every publish and every outbox read of the uplink happens on that thread
(the hooks below run there).  Other threads call :meth:`notify` after committing a frame (wakes the
pump) and :meth:`request_soh`.
"""

from __future__ import annotations

import json
import logging
import random
import threading
from typing import Any, Callable, Sequence

from ims_station import topics
from ims_station.broker import BrokerConfig
from ims_station.clock import Clock
from ims_station.errors import ImsStationError
# backoff_delay is re-exported: it was defined here before the session moved to ims_station.mqtt.
from ims_station.mqtt import LOOP_TIMEOUT_S, PROTOCOLS, MqttSession, SessionOwner, backoff_delay  # noqa: F401

from .logutil import RateLimitedLog
from .outbox import URGENT_KINDS

log = logging.getLogger(__name__)


class UplinkError(ImsStationError):
    """The uplink was configured wrongly (no brokers, bad protocol name)."""


class AcknackTrustError(UplinkError):
    """The acknack trust settings cannot identify the relay's keys; *setting* is the ``[uplink]``
    key at fault (``acknack_trust`` or ``acknack_key_ids``; the reason names ``relay_name`` when the
    name may be what is wrong)."""

    def __init__(self, setting: str, reason: str) -> None:
        super().__init__(f"uplink: {setting}: {reason}")
        self.setting = setting
        self.reason = reason


def relay_acknack_keys(trust: Any, relay_name: str, key_ids: Sequence[int] | None = None) -> frozenset[int]:
    """The key ids that may sign the relay's acknacks: *key_ids* when given (each must be in *trust*
    and listed for *relay_name*), else every key of *trust* listed for *relay_name*.  A chosen key
    that the trust store also lists for another station is refused: that station holds the private
    key and could sign "the relay's" acknacks.  Raises :class:`AcknackTrustError` naming the setting."""
    by_id = {k: frozenset(trust.key(k).info.stations) for k in trust.key_ids()}
    if key_ids is None:
        setting = "acknack_trust"
        chosen = sorted(k for k, st in by_id.items() if relay_name in st)
        if not chosen:
            raise AcknackTrustError(setting, f"no key in trust store {trust.directory} is the relay's: none "
                                    f"lists the relay's name {relay_name!r} under stations (set [uplink] "
                                    "relay_name to the relay's [relay] name, or export the relay's acknack key)")
    else:
        setting = "acknack_key_ids"
        chosen = sorted(int(k) for k in key_ids)
        for k in chosen:
            if k not in by_id:
                raise AcknackTrustError(setting, f"key {k} is not in trust store {trust.directory}")
            if relay_name not in by_id[k]:
                raise AcknackTrustError(setting, f"key {k} is not the relay's: trust store {trust.directory} "
                                        f"lists it for {', '.join(sorted(by_id[k]))}, not for the relay's name "
                                        f"{relay_name!r} ([uplink] relay_name)")
    for k in chosen:
        others = by_id[k] - {relay_name}
        if others:
            raise AcknackTrustError(setting, f"key {k} is listed for the relay {relay_name!r} and also for "
                                    f"{', '.join(sorted(others))} in trust store {trust.directory}: a key "
                                    "another station holds cannot authenticate the relay's acknacks")
    return frozenset(chosen)


class Uplink(SessionOwner):
    """Publishes the outbox of one station over MQTT and applies the relay's acknacks."""

    def __init__(self, station: str, brokers: Sequence[BrokerConfig], outbox: Any, *,
                 prefix: str = topics.DEFAULT_PREFIX, clock: Clock, on_acknack: Callable[[Any], None] | None = None,
                 frame_set: str | None = None, protocol: str = "auto", session_expiry_s: int = 7 * 86400,
                 inflight: int = 32, max_unacked: int = 2000, live_window_s: float = 60.0,
                 ack_timeout_s: float = 300.0, backoff_base_s: float = 0.5, backoff_max_s: float = 60.0,
                 connect_timeout_s: float = 10.0, soh_interval_s: float = 60.0,
                 soh_provider: Callable[[], dict] | None = None, rng: random.Random | None = None,
                 client_name: str | None = None, acknack_trust: Any = None,
                 acknack_key_ids: Sequence[int] | None = None,
                 relay_name: str = topics.DEFAULT_RELAY_NAME, command_handler: Any = None,
                 loop_wait_s: float = LOOP_TIMEOUT_S, acknack_stall_s: float = 0.0,
                 acknack_qos: int = 1) -> None:
        """*loop_wait_s*: the longest one network-loop turn waits on the socket (wall seconds) before
        the uplink looks at its outbox again -- the most a committed event or frame waits for its
        publish (the demo, whose simulated time runs faster, shortens it in proportion)."""
        if not brokers:
            raise UplinkError("uplink: at least one broker is needed")
        if protocol not in PROTOCOLS:
            raise UplinkError(f"uplink: protocol must be one of {PROTOCOLS}, not {protocol!r}")
        self.station = topics.check_station(station)
        self.prefix = prefix
        self.frame_set = frame_set or f"{station}:0"
        # Frame set of each enveloped-message outbox kind (topics.MESSAGE_KINDS: STA:events, STA:ims20).
        self.message_frame_sets = {k: topics.message_frame_set(station, k) for k in topics.MESSAGE_KINDS}
        self._kind_of_set = {fs: k for k, fs in self.message_frame_sets.items()}
        # Every frame set this station owns: the relay's acknack of any of them deletes from the outbox.
        self.frame_sets = frozenset({self.frame_set, *self.message_frame_sets.values()})
        self.outbox = outbox
        self._clock = clock
        self._rlog = RateLimitedLog(log, clock)   # acknacks are untrusted input
        self._on_acknack = on_acknack
        self.acknack_trust = acknack_trust
        self.relay_name = relay_name
        if acknack_key_ids is not None and acknack_trust is None:
            raise UplinkError("uplink: acknack_key_ids given but no acknack trust store")
        # The relay's keys (never "any key of the trust store": it may hold station keys too).
        self.acknack_key_ids = (None if acknack_trust is None
                                else relay_acknack_keys(acknack_trust, relay_name, acknack_key_ids))
        self._pubacked: list[int] = []    # outbox ids PUBACKed, not yet recorded in the outbox
        self.inflight = int(inflight)
        self.max_unacked = int(max_unacked)
        self.live_window_s = float(live_window_s)
        self.ack_timeout_s = float(ack_timeout_s)
        self.soh_interval_s = float(soh_interval_s)
        self.loop_wait_s = min(max(float(loop_wait_s), 0.0), LOOP_TIMEOUT_S)
        self._soh_provider = soh_provider
        self.client_name = client_name or station
        # Each outbox kind on its own topic (ims_station.topics.OUTBOX_TOPICS: the one mapping).
        self._topics = {k: topics.outbox_topic(prefix, station, k) for k in topics.OUTBOX_TOPICS}
        self.t_acknack = topics.topic(prefix, station, "acknack")
        self.t_soh = topics.topic(prefix, station, "soh")
        self.t_status = topics.topic(prefix, station, "status")
        self.command_handler = command_handler
        self.t_cmd = topics.topic(prefix, station, "cmd")
        self.t_cmd_response = topics.topic(prefix, station, "cmd/response")
        self._cmd_sub_mid: int | None = None

        self._wake = threading.Event()
        self._soh_due = threading.Event()
        self._pending_mids: dict[int, int] = {}        # mid -> outbox id, PUBACK not yet received
        self._last_pump = None           # wall clock (session's), a poll
        self._last_soh = None            # injected clock
        self._last_requeue = None        # injected clock
        self._counters = dict(connects=0, connect_failures=0, disconnects=0, failovers=0, published=0,
                              resent=0, pubacks=0, acknacks=0, acknacks_invalid=0, acknacks_other_set=0,
                              frames_acked=0, events_published=0, events_acked=0, ims20_published=0,
                              ims20_acked=0, acknacks_unsigned=0,
                              acknacks_bad_signature=0, acknacks_suspicious=0, requeued_on_disconnect=0, requeued_ack_timeout=0,
                              soh_published=0, protocol_fallbacks=0, acknack_subscribe_refused=0,
                              unknown_kind=0, commands=0, command_errors=0, cmd_subscribe_refused=0,
                              acknack_stall_reconnects=0)
        # [uplink] acknack_stall_s: frames in flight and no acknack on this connection for this long
        # -> reconnect (a clustered broker can keep a failed-over session that never delivers the
        # acknacks again, docs/centre-cluster.md); 0: off.
        self.acknack_stall_s = acknack_stall_s
        # [uplink] acknack_qos: 0 keeps the acknack subscription out of the broker's persistent
        # session (the relay repeats every acknack, so none needs storing); for a clustered centre,
        # whose session store can outlive its usefulness after a fail-over (docs/centre-cluster.md).
        if acknack_qos not in (0, 1):
            raise UplinkError(f"uplink: acknack_qos must be 0 or 1, not {acknack_qos!r}")
        self.acknack_qos = int(acknack_qos)
        self._acknack_seen: float | None = None
        self.last_acknack: dict | None = None
        self._mqtt = MqttSession(
            brokers, client_name=self.client_name, label=f"uplink {self.station}", protocol=protocol,
            session_expiry_s=session_expiry_s, backoff_base_s=backoff_base_s, backoff_max_s=backoff_max_s,
            connect_timeout_s=connect_timeout_s, counters=self._counters, rng=rng, logger=log,
            setup=self._setup_client, on_begin=lambda: self._pending_mids.clear(),
            on_connected=self._on_connected, on_subscribed=self._on_subscribed, on_turn=self._periodic,
            on_stop=self._graceful_close, on_end=self._requeue_unpubacked, loop_timeout=lambda: self.loop_wait_s)

    # -- public ----------------------------------------------------------------------------------
    def start(self) -> "Uplink":
        self._mqtt.start(f"uplink-{self.station}")      # no-op if already running
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Publish ``offline`` (retained), disconnect cleanly (no Last Will) and end the thread."""
        self._wake.set()
        self._mqtt.stop(timeout)

    def request_stop(self) -> None:
        """Begin :meth:`stop` without waiting (the gateway shuts its other parts down meanwhile)."""
        self._wake.set()
        self._mqtt.request_stop()

    def notify(self) -> None:
        """A frame was committed to the outbox: publish it now rather than at the next poll."""
        self._wake.set()

    def request_soh(self) -> None:
        """Publish the SOH at the next loop turn (e.g. after an outbox alarm)."""
        self._soh_due.set()
        self._wake.set()

    @property
    def _thread(self) -> threading.Thread | None:
        # The session's thread, under the name tests and tools used before the session moved out.
        return self._mqtt.thread

    def stats(self) -> dict:
        b = self._mqtt.broker
        extra = {} if self.command_handler is None else {"commands_detail": self.command_handler.stats()}
        return {**self._counters, **extra, "connected": self.connected,
                "broker": f"{b.host}:{b.port}", "protocol": self._mqtt.protocol,
                "awaiting_puback": len(self._pending_mids), "last_acknack": self.last_acknack}

    # -- session hooks (on the session thread) -------------------------------------------------------
    def _setup_client(self, client: Any) -> None:
        client.will_set(self.t_status, self._will_payload(), qos=1, retain=True)
        # Our window, not paho's: paho queues beyond max_inflight in memory, which we do not want.
        client.max_inflight_messages_set(max(self.inflight, 1))
        client.on_publish = self._on_publish
        client.on_message = self._on_message

    def _graceful_close(self, client: Any) -> None:
        """Stopping while connected: ``offline`` (retained) before the clean DISCONNECT."""
        info = client.publish(self.t_status, self._status_payload("offline", "stopped"), qos=1, retain=True)
        wall = self._mqtt.clock
        deadline = wall.monotonic() + 2.0
        while not info.is_published() and wall.monotonic() < deadline:
            if client.loop(timeout=0.05) != 0:
                break

    def _on_connected(self, client: Any, flags: Any) -> None:
        self._acknack_seen = self._clock.monotonic()     # the stall clock starts with the connection
        # Through the session: frames wait for this SUBACK (see the module docstring, Readiness).
        self._mqtt.subscribe(client, self.t_acknack, qos=self.acknack_qos)
        if self.command_handler is not None:
            self._cmd_sub_mid = self._mqtt.subscribe(client, self.t_cmd, qos=1)
        client.publish(self.t_status, self._status_payload("online"), qos=1, retain=True)
        self._soh_due.set()
        self._wake.set()
        log.info("uplink %s: connected (session present: %s)", self.station, flags.session_present)

    def _on_subscribed(self, client: Any, mid: int, reason_codes: Any) -> bool:
        if mid == self._cmd_sub_mid and mid is not None:
            if any(rc.is_failure for rc in reason_codes):
                self._counters["cmd_subscribe_refused"] += 1
                log.error("uplink %s: broker refused the command subscription %s (%s): the relay's window "
                          "requests cannot reach this station; check the broker's ACL", self.station, self.t_cmd,
                          ", ".join(str(rc) for rc in reason_codes))
            return True          # frames do not wait for commands
        if any(rc.is_failure for rc in reason_codes):
            self._counters["acknack_subscribe_refused"] += 1
            log.error("uplink %s: broker refused the acknack subscription %s (%s): frames are sent but "
                      "only the ack timeout can clear them; check the broker's ACL", self.station,
                      self.t_acknack, ", ".join(str(rc) for rc in reason_codes))
            return False
        self._wake.set()                 # frames may go now
        return True

    # -- paho callbacks (run on the session thread, inside client.loop) ---------------------------------
    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        rid = self._pending_mids.pop(mid, None)
        if rid is not None:
            self._counters["pubacks"] += 1
            self._pubacked.append(rid)
            self._wake.set()

    def _record_pubacks(self) -> None:
        # Batched: one outbox transaction per loop turn rather than one fsync per PUBACK.  Must run
        # before an acknack is applied, or it would find its frames not yet PUBACKed.
        if self._pubacked:
            ids, self._pubacked = self._pubacked, []
            self.outbox.mark_pubacked(ids)

    def _on_message(self, client, userdata, msg) -> None:
        if msg.topic == self.t_cmd and self.command_handler is not None:
            self._on_command(client, bytes(msg.payload))
            return
        if msg.topic != self.t_acknack:
            return
        try:
            self._handle_acknack(bytes(msg.payload))
        except Exception as err:  # a bad acknack must never stop the uplink
            self._counters["acknacks_invalid"] += 1
            self._rlog("acknack_invalid", logging.WARNING, "uplink %s: rejected acknack (%d bytes): %s",
                       self.station, len(msg.payload), err)

    def _on_command(self, client: Any, payload: bytes) -> None:
        self._counters["commands"] += 1
        try:
            answer = self.command_handler.handle(payload)
            if answer is not None:
                client.publish(self.t_cmd_response, answer, qos=1)
            self._wake.set()          # a request may have released frames
        except Exception as err:      # the handler never raises; this is the uplink's own guard
            self._counters["command_errors"] += 1
            self._rlog("command_error", logging.ERROR, "uplink %s: command (%d bytes) failed: %s",
                       self.station, len(payload), err)

    def _handle_acknack(self, payload: bytes) -> None:
        from ims_station.cd11 import Acknack, parse_frame

        frame, end = parse_frame(payload)
        if end != len(payload) or not isinstance(frame, Acknack):
            raise ValueError(f"not exactly one acknack frame ({type(frame).__name__}, {end} of "
                             f"{len(payload)} bytes)")
        if frame.frame_set not in self.frame_sets:
            self._counters["acknacks_other_set"] += 1
            return
        if self.acknack_trust is not None and not self._acknack_authentic(frame):
            return
        self._counters["acknacks"] += 1
        self._acknack_seen = self._clock.monotonic()
        self._record_pubacks()
        sent = self.outbox.highest_sent(frame.frame_set)
        if frame.highest >= frame.lowest and (sent is None or frame.highest > sent):
            self._counters["acknacks_suspicious"] += 1
            log.warning("uplink %s: acknack from %r covers %d..%d but the highest sequence number this "
                        "station published is %s: only PUBACKed frames are deleted", self.station,
                        frame.creator, frame.lowest, frame.highest, sent)
        n = self.outbox.apply_acknack(frame.frame_set, frame.lowest, frame.highest, frame.gaps)
        kind = self._kind_of_set.get(frame.frame_set)
        self._counters[f"{kind}_acked" if kind else "frames_acked"] += n
        self.last_acknack = {"lowest": frame.lowest, "highest": frame.highest, "gaps": len(frame.gaps),
                             "deleted": n, "time": self._clock.time(), "frame_set": frame.frame_set}
        self._wake.set()
        if self._on_acknack is not None:
            self._on_acknack(frame)

    def _acknack_authentic(self, frame: Any) -> bool:
        """The acknack comes from the relay: its creator is the relay's name, and its frame
        signature, by one of the relay's keys, verifies for that name."""
        from ims_station.cd11 import verify_frame

        if not frame.auth_key_id and not frame.auth_value:
            self._counters["acknacks_unsigned"] += 1
            self._rlog("acknack_unsigned", logging.WARNING,
                       "uplink %s: dropped an unsigned acknack from %r (acknack trust is configured)",
                       self.station, frame.creator)
            return False
        if frame.creator != self.relay_name:
            reason = f"its creator is not the relay {self.relay_name!r}"
        elif frame.auth_key_id not in self.acknack_key_ids:
            reason = f"key {frame.auth_key_id} is not one of the relay's keys {sorted(self.acknack_key_ids)}"
        else:
            res = verify_frame(frame, self.acknack_trust, station=self.relay_name).frame
            if res is not None and res.ok:
                return True
            reason = "not signed" if res is None else res.reason
        self._counters["acknacks_bad_signature"] += 1
        self._rlog("acknack_bad_signature", logging.WARNING,
                   "uplink %s: dropped an acknack from %r (key %s) not authenticated as the relay's: %s",
                   self.station, frame.creator, frame.auth_key_id, reason)
        return False

    # -- sending -----------------------------------------------------------------------------------
    def _periodic(self, client: Any) -> bool:
        self._record_pubacks()
        now = self._clock.monotonic()
        if self._last_requeue is None or now - self._last_requeue >= min(self.ack_timeout_s / 4, 30.0):
            self._last_requeue = now
            n = self.outbox.requeue_unacked(self.ack_timeout_s)
            if n:
                self._counters["requeued_ack_timeout"] += n
                self._wake.set()
        if self._soh_due.is_set() or self._last_soh is None or now - self._last_soh >= self.soh_interval_s:
            self._soh_due.clear()
            self._last_soh = now
            self._publish_soh(client)
        if (self.acknack_stall_s and self._acknack_seen is not None
                and now - self._acknack_seen >= self.acknack_stall_s and self.outbox.in_flight_count() > 0):
            # Frames wait for an acknack that this connection does not deliver: a new connection
            # (and a new acknack subscription) rather than resending at every ack timeout forever.
            # The broker's session for this station is dropped (a clean session once): reconnecting
            # into the same stuck session was measured not to help (RabbitMQ 3.10 after a fail-over).
            self._acknack_seen = now
            self._counters["acknack_stall_reconnects"] += 1
            self._rlog("acknack_stall", logging.WARNING,
                       "uplink %s: no acknack for %.0f s with frames in flight: reconnecting with a clean "
                       "session", self.station, self.acknack_stall_s)
            self._mqtt.clean_next = True
            return False
        if not self._mqtt.subscriptions_settled:
            return True          # no frame before the acknack SUBACK (the wake stays set for then)
        wall = self._mqtt.clock.monotonic()
        if self._wake.is_set() or self._last_pump is None or wall - self._last_pump >= 0.5:
            self._wake.clear()
            self._last_pump = wall
            self._pump(client)
        return True              # the uplink never drops a working connection itself (but see above)

    def _pump(self, client: Any) -> None:
        import paho.mqtt.client as mqtt

        room = self.inflight - len(self._pending_mids)
        if room <= 0:
            return
        # Events (outbox.URGENT_KINDS) come first and do not wait for the unacknowledged-data bound:
        # a back-fill filling max_unacked must not hold a station event back (issue 9).
        data_room = max(0, self.max_unacked - self.outbox.in_flight_count())
        items = self.outbox.next_to_send(room, live_window_s=self.live_window_s, data_limit=data_room)
        urgent = [it for it in items if it.kind in URGENT_KINDS]
        held_back = bool(urgent) and len(urgent) < len(items)
        if held_back:
            # Events go alone; the data follows at the next loop turn (the events' PUBACKs end its
            # wait): at the relay they then make a batch of their own, whose archive commit does
            # not wait for the data's (e.g. an auxiliary station's first frames of a day).
            items = urgent
        sent = []
        for it in items:
            t = self._topics.get(it.kind)
            if t is None:
                # Only our own code writes the outbox: a kind without a topic is a bug, never data.
                self._counters["unknown_kind"] += 1
                self._rlog("unknown_kind", logging.ERROR, "uplink %s: outbox item %s seq %d has kind %r, "
                           "which has no topic (ims_station.topics.OUTBOX_TOPICS); not sent", self.station,
                           it.frame_set, it.seq, it.kind)
                continue
            info = client.publish(t, it.payload, qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                break
            self._pending_mids[info.mid] = it.id
            sent.append(it.id)
            self._counters["published"] += 1
            if it.kind in self.message_frame_sets:
                self._counters[f"{it.kind}_published"] += 1
            if it.sent_count:
                self._counters["resent"] += 1
        if sent:
            self.outbox.mark_sent(sent)
        if held_back or len(sent) == len(items) == room:
            self._wake.set()       # the window was the limit, or data was held back: more may be waiting

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

    def _will_payload(self) -> bytes:
        """The Last Will (``offline``, ``connection lost``).  It is registered now, before the
        CONNECT, and published by the broker whenever it notices the loss -- a moment this process
        cannot know -- so it carries no time (``"time": null``: consumers use the time they receive
        it) and, labelled as such, the time this connection was opened (``connected_at``)."""
        doc = {"station": self.station, "status": "offline", "reason": "connection lost", "time": None,
               "connected_at": self._clock.time()}
        return json.dumps(doc).encode()

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
