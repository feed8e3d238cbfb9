"""The uplink's behaviour that a station operator reads or relies on, stated exactly, without a
broker (the recording client of the window tests): which acknacks are trusted and how each refusal
is counted, what an acknack deletes, counts and reports, when frames are requeued and resent, what
goes out on connecting and stopping (topic, QoS, retain, payload), and the SOH.  Written from the
survivors of a mutation run (docs/testing.md, "Mutation testing"): each test names the behaviour,
with figures exact enough that an off-by-one or a swapped field fails it."""

from __future__ import annotations

import json
import types

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from ims_station import cd11, topics
from ims_station.broker import BrokerConfig
from ims_station.edge.uplink import AcknackTrustError, Uplink, relay_acknack_keys

from .test_uplink import FS, STA, T0, fill, frame
from .test_uplink_window import RecordingClient, connected, forged, relay_keys, rig  # noqa: F401  (fixtures)


def _signed_ack(signer=None, creator="RELAY", **kw):
    return cd11.Acknack(creator=creator, frame_set=FS, lowest=0, highest=3, **kw).to_bytes(signer)


# -- acknack authentication ---------------------------------------------------------------------
def test_every_refused_acknack_is_counted_once_under_its_reason_and_none_as_invalid(rig, clock,  # noqa: F811
                                                                                     relay_keys):  # noqa: F811
    """Unsigned (no key id, no signature) and badly signed acknacks are counted apart, one each, and
    handling them is not itself an error (``acknacks_invalid`` is for malformed acknacks)."""
    keystore, trust = relay_keys
    fill(rig, range(4))
    up = Uplink(STA, [BrokerConfig()], rig, clock=clock, live_window_s=0, acknack_trust=trust,
                acknack_key_ids=[900])
    c = connected(up)
    up._periodic(c)
    c.puback_all(up)
    forged(up, c, _signed_ack())
    forged(up, c, _signed_ack())
    st = up.stats()
    assert (st["acknacks_unsigned"], st["acknacks_bad_signature"], st["acknacks_invalid"]) == (2, 0, 0)
    # The relay's key id with no signature, and a signature with no key id: signed, wrongly.
    forged(up, c, _signed_ack(auth_key_id=900, auth_value=b""))
    forged(up, c, _signed_ack(auth_key_id=0, auth_value=bytes(64)))
    forged(up, c, _signed_ack(keystore.signer(901)))
    st = up.stats()
    assert (st["acknacks_unsigned"], st["acknacks_bad_signature"], st["acknacks_invalid"]) == (2, 3, 0)
    assert (st["acknacks"], st["frames_acked"], rig.stats()["frames"]) == (0, 0, 4)
    forged(up, c, _signed_ack(keystore.signer(900)))
    st = up.stats()
    assert (st["acknacks"], st["frames_acked"], st["acknacks_invalid"], rig.stats()["frames"]) == (1, 4, 0, 0)


# -- a client that records what the uplink asks of paho --------------------------------------------
class Client(RecordingClient):
    """The window tests' recording client, also keeping each message's QoS and retain flag, each
    subscription's QoS, the Last Will and the in-flight window the uplink sets."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[str, bytes, int, bool]] = []
        self.sub_qos: dict[str, int] = {}
        self.will = None
        self.max_inflight = None

    def publish(self, topic, payload, qos=0, retain=False):
        self.sent.append((topic, bytes(payload), qos, retain))
        return super().publish(topic, payload, qos, retain)

    def subscribe(self, topic, qos=0, **kw):
        self.sub_qos[topic] = qos
        return super().subscribe(topic, qos, **kw)

    def will_set(self, topic, payload=None, qos=0, retain=False, properties=None):
        self.will = (topic, payload, qos, retain)

    def max_inflight_messages_set(self, n):
        self.max_inflight = n

    def suback_topics(self, up: Uplink, refused=()) -> None:
        """SUBACK for every SUBSCRIBE sent so far: refused (0x87) for the topics in *refused*."""
        for mid, t in list(self.subscriptions.items()):
            code = 0x87 if t in refused else 1
            up._mqtt._handle_subscribe(self, None, mid, [ReasonCode(PacketTypes.SUBACK, identifier=code)], None)
        self.subscriptions.clear()

    def on(self, topic_kind: str) -> list[tuple[bytes, int, bool]]:
        return [(p, q, r) for t, p, q, r in self.sent if t == topics.topic("ims", STA, topic_kind)]


class Handler:
    """A command handler (edge/commands.py's interface): records each command, answers *answer*."""

    def __init__(self, answer=b"done", fail=False) -> None:
        self.got: list = []
        self.answer = answer
        self.fail = fail

    def handle(self, payload):
        self.got.append(payload)
        if self.fail:
            raise RuntimeError("handler bug")
        return self.answer

    def stats(self) -> dict:
        return {"handled": len(self.got)}


def message(kind: str, payload: bytes):
    return types.SimpleNamespace(topic=topics.topic("ims", STA, kind), payload=payload)


# -- connecting: status, subscriptions, Last Will ---------------------------------------------------
def test_the_will_and_the_inflight_window_are_set_before_connecting(rig, clock):  # noqa: F811
    for inflight, window in ((1, 1), (0, 1), (7, 7)):
        up = Uplink(STA, [BrokerConfig()], rig, clock=clock, inflight=inflight)
        c = Client()
        up._setup_client(c)
        topic, payload, qos, retain = c.will
        assert (topic, qos, retain) == (topics.topic("ims", STA, "status"), 1, True)
        assert json.loads(payload) == {"station": STA, "status": "offline", "reason": "connection lost",
                                       "time": None, "connected_at": clock.time()}
        assert c.max_inflight == window
        assert c.on_publish == up._on_publish and c.on_message == up._on_message


def test_on_connecting_the_station_says_online_retained_and_subscribes_at_qos_1(rig, clock):  # noqa: F811
    up = Uplink(STA, [BrokerConfig()], rig, clock=clock, command_handler=Handler())
    c = Client()
    c.connack(up)
    assert c.sub_qos == {topics.topic("ims", STA, "acknack"): 1, topics.topic("ims", STA, "cmd"): 1}
    [(payload, qos, retain)] = c.on("status")
    assert (qos, retain) == (1, True)
    assert json.loads(payload) == {"station": STA, "status": "online", "time": clock.time()}
    assert not up.connected                 # both SUBACKs still outstanding
    c.suback_topics(up)
    assert up.connected
    st = up.stats()
    assert (st["cmd_subscribe_refused"], st["acknack_subscribe_refused"]) == (0, 0)
    assert st["commands_detail"] == {"handled": 0}


def test_a_refused_command_subscription_is_counted_and_holds_nothing_back(rig, clock):  # noqa: F811
    fill(rig, range(2))
    up = Uplink(STA, [BrokerConfig()], rig, clock=clock, live_window_s=0, command_handler=Handler())
    for n in (1, 2):                         # on each connection
        c = Client()
        c.connack(up)
        c.suback_topics(up, refused={topics.topic("ims", STA, "cmd")})
        assert up.connected                  # the acknacks can reach the station: it is ready
        st = up.stats()
        assert (st["cmd_subscribe_refused"], st["acknack_subscribe_refused"]) == (n, 0)
    up._periodic(c)
    assert c.frames() == [0, 1]


def test_a_refused_acknack_subscription_is_counted_on_each_connection(rig, clock):  # noqa: F811
    up = Uplink(STA, [BrokerConfig()], rig, clock=clock, command_handler=Handler())
    for n in (1, 2):
        c = Client()
        c.connack(up)
        c.suback_topics(up, refused={topics.topic("ims", STA, "acknack")})
        assert not up.connected
        st = up.stats()
        assert (st["acknack_subscribe_refused"], st["cmd_subscribe_refused"]) == (n, 0)


# -- stopping ------------------------------------------------------------------------------------
class Loop:
    """The paho client while stopping: the ``offline`` message is PUBACKed after *turns* loop turns
    (never if None); each turn takes half a second of the session's wall clock, or fails (*rc*)."""

    def __init__(self, turns=None, rc=0) -> None:
        self.client = Client()
        self.turns, self.rc = turns, rc
        self.timeouts: list[float] = []
        self.t = 0.0
        self.client.loop = self.loop
        self.client.publish = self.publish

    def monotonic(self) -> float:
        return self.t

    def publish(self, topic, payload, qos=0, retain=False):
        Client.publish(self.client, topic, payload, qos, retain)
        return types.SimpleNamespace(is_published=lambda: self.turns is not None and len(self.timeouts) >= self.turns)

    def loop(self, timeout=1.0):
        self.timeouts.append(timeout)
        self.t += 0.5
        return self.rc


@pytest.mark.parametrize("turns, rc, loops", [
    (0, 0, 0),           # PUBACKed at once: no wait
    (1, 0, 1),
    (3, 0, 3),
    (None, 0, 4),        # never: the wait ends after 2 s of wall time
    (None, 7, 1),        # the connection is lost meanwhile: no point waiting
])
def test_stopping_publishes_offline_retained_and_waits_up_to_2_s_for_its_puback(rig, clock,  # noqa: F811
                                                                                turns, rc, loops):
    up = Uplink(STA, [BrokerConfig()], rig, clock=clock)
    wall = Loop(turns, rc)
    up._mqtt.clock = wall
    up._graceful_close(wall.client)
    [(payload, qos, retain)] = wall.client.on("status")
    assert (qos, retain) == (1, True)
    assert json.loads(payload) == {"station": STA, "status": "offline", "time": clock.time(), "reason": "stopped"}
    assert wall.timeouts == [0.05] * loops


# -- messages: acknacks and commands --------------------------------------------------------------
def ack_of(frame_set: str, lowest: int, highest: int, gaps=()) -> bytes:
    return cd11.Acknack(creator="RELAY", frame_set=frame_set, lowest=lowest, highest=highest,
                        gaps=list(gaps)).to_bytes()


def test_an_acknack_is_reported_in_the_stats_and_handed_to_the_callback(rig, clock):  # noqa: F811
    fill(rig, range(6))
    seen = []
    up = Uplink(STA, [BrokerConfig()], rig, clock=clock, live_window_s=0, on_acknack=seen.append)
    c = connected(up)
    up._periodic(c)
    c.puback_all(up)
    clock.advance(7)
    up._on_message(c, None, message("acknack", ack_of(FS, 0, 5, [(1, 3)])))
    st = up.stats()
    assert st["last_acknack"] == {"lowest": 0, "highest": 5, "gaps": 1, "deleted": 4, "time": clock.time(),
                                  "frame_set": FS}
    assert (st["acknacks"], st["frames_acked"], st["acknacks_suspicious"]) == (1, 4, 0)
    assert [(f.frame_set, f.lowest, f.highest, f.gaps) for f in seen] == [(FS, 0, 5, [(1, 3)])]
    up._on_message(c, None, message("acknack", ack_of(FS, 0, 5)))
    st = up.stats()
    assert (st["acknacks"], st["frames_acked"], st["last_acknack"]["deleted"]) == (2, 6, 2)
    assert len(seen) == 2


def test_acknacks_of_other_frame_sets_and_malformed_ones_are_counted_each_time(rig, clock):  # noqa: F811
    fill(rig, range(2))
    up = Uplink(STA, [BrokerConfig()], rig, clock=clock, live_window_s=0)
    c = connected(up)
    up._periodic(c)
    c.puback_all(up)
    for _ in range(2):
        up._on_message(c, None, message("acknack", ack_of("STA02:0", 0, 1)))
        up._on_message(c, None, message("acknack", b"\x00garbage"))
        up._on_message(c, None, message("acknack", ack_of(FS, 0, 1) + b"\x00"))    # one byte too many
    st = up.stats()
    assert (st["acknacks_other_set"], st["acknacks_invalid"], st["acknacks"]) == (2, 4, 0)
    assert rig.stats()["frames"] == 2 and st["last_acknack"] is None


def test_an_acknack_that_is_not_one_acknack_frame_says_what_it_was(rig, clock):  # noqa: F811
    up = Uplink(STA, [BrokerConfig()], rig, clock=clock)
    wire = cd11.Acknack(creator="RELAY", frame_set=FS, lowest=0, highest=1).to_bytes()
    with pytest.raises(ValueError, match=rf"^not exactly one acknack frame \(Acknack, {len(wire)} of "
                                         rf"{len(wire) + 3} bytes\)$"):
        up._handle_acknack(wire + b"abc")
    data = frame(1)
    with pytest.raises(ValueError, match=rf"^not exactly one acknack frame \(DataFrame, {len(data)} of "
                                         rf"{len(data)} bytes\)$"):
        up._handle_acknack(data)


def test_every_acknack_beyond_what_was_published_is_suspicious_even_a_single_number(rig, clock):  # noqa: F811
    fill(rig, range(3))
    up = Uplink(STA, [BrokerConfig()], rig, clock=clock, live_window_s=0)
    c = connected(up)
    up._periodic(c)                          # 0..2 published
    c.puback_all(up)
    up._periodic(c)
    for lo, hi, suspicious in ((0, 2, 0), (3, 2, 0), (3, 3, 1), (2, 2, 1), (0, 9, 2)):
        up._on_message(c, None, message("acknack", ack_of(FS, lo, hi)))
        assert up.stats()["acknacks_suspicious"] == suspicious, (lo, hi)
    assert up.stats()["acknacks"] == 5


def test_a_command_is_handed_to_the_handler_and_its_answer_published(rig, clock):  # noqa: F811
    handler = Handler(answer=b"answer")
    up = Uplink(STA, [BrokerConfig()], rig, clock=clock, command_handler=handler)
    c = Client()
    c.connack(up)
    c.suback_topics(up)
    up._on_message(c, None, message("cmd", bytearray(b"request")))
    assert handler.got == [b"request"] and type(handler.got[0]) is bytes
    assert c.on("cmd/response") == [(b"answer", 1, False)]
    handler.answer = None                       # nothing to say: nothing published
    up._on_message(c, None, message("cmd", b"request 2"))
    assert len(c.on("cmd/response")) == 1
    st = up.stats()
    assert (st["commands"], st["command_errors"], st["acknacks_invalid"]) == (2, 0, 0)
    assert st["commands_detail"] == {"handled": 2}


def test_a_failing_command_handler_is_counted_and_does_not_stop_the_uplink(rig, clock):  # noqa: F811
    up = Uplink(STA, [BrokerConfig()], rig, clock=clock, command_handler=Handler(fail=True))
    c = connected_with_commands(up)
    up._on_message(c, None, message("cmd", b"x"))
    up._on_message(c, None, message("cmd", b"y"))
    st = up.stats()
    assert (st["commands"], st["command_errors"]) == (2, 2)
    assert c.on("cmd/response") == []


def test_acknacks_still_apply_with_a_command_handler_and_commands_need_one(rig, clock):  # noqa: F811
    fill(rig, range(2))
    handler = Handler()
    up = Uplink(STA, [BrokerConfig()], rig, clock=clock, live_window_s=0, command_handler=handler)
    c = connected_with_commands(up)
    up._periodic(c)
    c.puback_all(up)
    up._on_message(c, None, message("acknack", ack_of(FS, 0, 1)))
    assert rig.stats()["frames"] == 0 and handler.got == []
    assert (up.stats()["commands"], up.stats()["acknacks"]) == (0, 1)
    plain = Uplink(STA, [BrokerConfig()], rig, clock=clock)        # no handler: a cmd message is ignored
    c2 = connected(plain)
    plain._on_message(c2, None, message("cmd", b"x"))
    st = plain.stats()
    assert (st["commands"], st["command_errors"], st["acknacks_invalid"]) == (0, 0, 0)


def test_a_command_wakes_the_pump_a_request_may_have_released_frames(rig, clock):  # noqa: F811
    up = Uplink(STA, [BrokerConfig()], rig, clock=clock, live_window_s=0, command_handler=Handler())
    c = connected_with_commands(up)
    wall = types.SimpleNamespace(monotonic=lambda: 50.0)       # no wall time passes: no poll
    up._mqtt.clock = wall
    up._periodic(c)
    fill(rig, range(2))                      # committed without notify()
    up._periodic(c)
    assert c.frames() == []
    up._on_message(c, None, message("cmd", b"x"))
    up._periodic(c)
    assert c.frames() == [0, 1]


def connected_with_commands(up: Uplink) -> Client:
    c = Client()
    c.connack(up)
    c.suback_topics(up)
    assert up.connected
    return c


# -- sending: the window, the wake-up, requeueing ---------------------------------------------------
class Still:
    """The session's wall clock standing still: the pump runs only when woken, never on its 0.5-s poll."""

    def monotonic(self) -> float:
        return 50.0


def test_frames_go_at_qos_1_not_retained_and_unknown_kinds_are_counted_each(rig, clock):  # noqa: F811
    fill(rig, range(2))
    rig.put("mystery", f"{STA}:x", 0, T0, b"?")
    rig.put("mystery", f"{STA}:x", 1, T0, b"?")
    up = Uplink(STA, [BrokerConfig()], rig, clock=clock, live_window_s=0)
    c = Client()
    c.connack(up)
    c.suback_topics(up)
    up._periodic(c)
    assert [(q, r) for _, q, r in c.on("cd11")] == [(1, False)] * 2
    assert up.stats()["unknown_kind"] == 2


def test_a_full_window_does_not_query_the_outbox(rig, clock):  # noqa: F811
    fill(rig, range(4))
    up = Uplink(STA, [BrokerConfig()], rig, clock=clock, inflight=2, live_window_s=0)
    c = connected(up)
    up._periodic(c)
    assert c.frames() == [0, 1]
    asked = []
    real = rig.next_to_send
    rig.next_to_send = lambda *a, **kw: asked.append(a) or real(*a, **kw)
    up._pump(c)
    assert asked == [] and c.frames() == [0, 1]


def test_after_draining_the_outbox_the_uplink_waits_for_a_notify_or_its_poll(rig, clock):  # noqa: F811
    """A pump that sent everything there was (data, or events alone) does not wake itself again."""
    rig.put("events", f"{STA}:events", 0, T0, b"event")
    up = Uplink(STA, [BrokerConfig()], rig, clock=clock, live_window_s=0)
    c = connected(up)
    up._mqtt.clock = Still()
    up._periodic(c)
    assert [t for t, _ in c.published if t.endswith("/events")] == ["ims/STA01/events"]
    fill(rig, [0])                           # committed without notify()
    up._periodic(c)
    assert c.frames() == []
    up.notify()
    up._periodic(c)
    assert c.frames() == [0]
    fill(rig, [1])
    up._periodic(c)
    assert c.frames() == [0]
    up.notify()
    up._periodic(c)
    assert c.frames() == [0, 1]


class Refusing(Client):
    """paho refusing to publish (rc != success, e.g. the connection just went) from the *n*-th frame on."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n
        self.attempts = 0

    def publish(self, topic, payload, qos=0, retain=False):
        if topic.endswith("/cd11"):
            self.attempts += 1
            if self.attempts >= self.n:
                return types.SimpleNamespace(rc=mqtt.MQTT_ERR_NO_CONN, mid=None)
        return super().publish(topic, payload, qos, retain)


def test_a_refused_publish_stops_the_turn_keeps_what_went_and_is_retried_at_the_poll(rig, clock):  # noqa: F811
    fill(rig, range(5))
    up = Uplink(STA, [BrokerConfig()], rig, clock=clock, inflight=3, live_window_s=0)
    c = Refusing(3)
    c.connack(up)
    c.suback_topics(up)
    up._mqtt.clock = Still()
    up._periodic(c)
    assert c.frames() == [0, 1] and c.attempts == 3
    assert rig.in_flight_count() == 2 and up.stats()["published"] == 2
    up._periodic(c)                          # no busy retry: the next attempt is at the poll
    assert c.attempts == 3


def test_frames_awaiting_puback_when_the_connection_ends_are_requeued_and_counted(rig, clock):  # noqa: F811
    fill(rig, range(4))
    up = Uplink(STA, [BrokerConfig()], rig, clock=clock, live_window_s=0)
    c = connected(up)
    up._periodic(c)
    for mid in sorted(up._pending_mids)[:2]:     # 0 and 1 PUBACKed, 2 and 3 not
        up._on_publish(c, None, mid, 0, None)
    up._requeue_unpubacked()                     # the session's end-of-connection hook
    st = up.stats()
    assert (st["requeued_on_disconnect"], st["awaiting_puback"]) == (2, 0)
    assert rig.in_flight_count() == 2
    c = connected(up)
    up._periodic(c)
    assert c.frames() == [2, 3] and up.stats()["resent"] == 2
    up._requeue_unpubacked()
    assert up.stats()["requeued_on_disconnect"] == 4
    up._requeue_unpubacked()                     # nothing awaiting a PUBACK: nothing to do
    assert up.stats()["requeued_on_disconnect"] == 4


def test_a_failing_requeue_is_not_counted_and_does_not_raise(rig, clock):  # noqa: F811
    fill(rig, range(2))
    up = Uplink(STA, [BrokerConfig()], rig, clock=clock, live_window_s=0)
    c = connected(up)
    up._periodic(c)

    def broken(ids):
        raise OSError("disk gone")

    rig.requeue = broken
    up._requeue_unpubacked()
    st = up.stats()
    assert (st["requeued_on_disconnect"], st["awaiting_puback"]) == (0, 0)


# -- the periodic turn: ack timeout, SOH, acknack stall --------------------------------------------
@pytest.mark.parametrize("timeout, quiet, due", [
    (300.0, (280, 301), 310),        # checked every 30 s (a quarter would be 75)
    (40.0, (32, 41), 42),            # every quarter of the timeout
])
def test_the_ack_timeout_is_checked_every_quarter_timeout_at_most_every_30_s(rig, clock,  # noqa: F811
                                                                            timeout, quiet, due):
    fill(rig, range(2))
    up = Uplink(STA, [BrokerConfig()], rig, clock=clock, live_window_s=0, ack_timeout_s=timeout)
    c = connected(up)
    t0 = clock.monotonic()
    up._periodic(c)
    c.puback_all(up)
    assert c.frames() == [0, 1]
    for t in quiet:                  # a check at the first, none at the second (too soon after it)
        clock.m = t0 + t
        up._periodic(c)
        assert c.frames() == [0, 1], t
    clock.m = t0 + due               # one check interval after the last check: both are due
    up._periodic(c)
    assert c.frames() == [0, 1, 0, 1] and up.stats()["requeued_ack_timeout"] == 2
    c.puback_all(up)
    clock.m += 2 * timeout
    up._periodic(c)
    assert c.frames() == [0, 1] * 3 and up.stats()["requeued_ack_timeout"] == 4


def test_the_soh_goes_retained_at_the_interval_and_on_request(rig, clock):  # noqa: F811
    up = Uplink(STA, [BrokerConfig()], rig, clock=clock, soh_interval_s=60,
                soh_provider=lambda: {"gateway": {"frames": 7}})
    c = Client()
    c.connack(up)
    c.suback_topics(up)
    up._periodic(c)                              # on connecting
    for dt, n in ((30, 1), (29, 1), (1, 2), (59, 2), (1, 3)):
        clock.advance(dt)
        up._periodic(c)
        assert len(c.on("soh")) == n, dt
    up.request_soh()
    up._periodic(c)
    assert len(c.on("soh")) == 4 and up.stats()["soh_published"] == 4
    payload, qos, retain = c.on("soh")[-1]
    assert (qos, retain) == (1, True)
    doc = json.loads(payload)
    assert (doc["station"], doc["time"], doc["uplink"]["soh_published"]) == (STA, clock.time(), 3)
    assert doc["outbox"]["frames"] == 0 and doc["gateway"] == {"frames": 7}


def test_frames_in_flight_and_no_acknack_for_acknack_stall_s_reconnect_with_a_clean_session(rig, clock):  # noqa: F811
    fill(rig, [0])
    up = Uplink(STA, [BrokerConfig()], rig, clock=clock, live_window_s=0, acknack_stall_s=60)
    for n in (1, 2):                             # counted on each connection
        c = connected(up)
        up._periodic(c)                          # one frame in flight
        assert rig.in_flight_count() == 1
        clock.advance(59)
        assert up._periodic(c) is True
        clock.advance(1)                         # exactly acknack_stall_s
        assert up._periodic(c) is False          # the session drops this connection
        assert up._mqtt.clean_next is True and up.stats()["acknack_stall_reconnects"] == n
        up._mqtt.clean_next = False
        up._requeue_unpubacked()
    c = connected(up)
    up._periodic(c)
    clock.advance(50)                            # an acknack (of another of our frame sets) restarts the wait
    up._on_message(c, None, message("acknack", ack_of(f"{STA}:events", 0, -1)))
    clock.advance(50)
    assert up._periodic(c) is True
    clock.advance(10)
    assert up._periodic(c) is False and up.stats()["acknack_stall_reconnects"] == 3


# -- which keys are the relay's ------------------------------------------------------------------
class Trust:
    """A trust store reduced to what relay_acknack_keys reads: key id -> the stations it is listed for."""

    directory = "/etc/ims/trust"

    def __init__(self, keys: dict) -> None:
        self._keys = keys

    def key_ids(self):
        return list(self._keys)

    def key(self, k):
        return types.SimpleNamespace(info=types.SimpleNamespace(stations=self._keys[k]))


def trust_error(keys, key_ids=None):
    with pytest.raises(AcknackTrustError) as ei:
        relay_acknack_keys(Trust(keys), "RELAY", key_ids)
    return ei.value


def test_trust_settings_that_cannot_tell_the_relays_key_say_which_setting_and_what_to_do():
    err = trust_error({2: ["STA02"]})
    assert (err.setting, err.reason) == ("acknack_trust", (
        "no key in trust store /etc/ims/trust is the relay's: none lists the relay's name 'RELAY' under "
        "stations (set [uplink] relay_name to the relay's [relay] name, or export the relay's acknack key)"))
    err = trust_error({900: ["RELAY"]}, [7])
    assert (err.setting, err.reason) == ("acknack_key_ids", "key 7 is not in trust store /etc/ims/trust")
    err = trust_error({900: ["RELAY"], 5: ["STA03", "STA02"]}, [5])
    assert (err.setting, err.reason) == ("acknack_key_ids", (
        "key 5 is not the relay's: trust store /etc/ims/trust lists it for STA02, STA03, not for the "
        "relay's name 'RELAY' ([uplink] relay_name)"))
    err = trust_error({900: ["STA03", "RELAY", "STA02"]})
    assert (err.setting, err.reason) == ("acknack_trust", (
        "key 900 is listed for the relay 'RELAY' and also for STA02, STA03 in trust store /etc/ims/trust: "
        "a key another station holds cannot authenticate the relay's acknacks"))
    assert str(err) == f"uplink: acknack_trust: {err.reason}"
    assert relay_acknack_keys(Trust({900: ["RELAY"], 901: ["RELAY"], 2: ["STA02"]}), "RELAY") == {900, 901}
    assert relay_acknack_keys(Trust({900: ["RELAY"], 901: ["RELAY"]}), "RELAY", ["901"]) == {901}


# -- the session thread ----------------------------------------------------------------------------
def test_the_session_thread_is_named_after_the_station_and_started_once(rig, clock):  # noqa: F811
    from ims_station.broker import free_port

    up = Uplink(STA, [BrokerConfig(port=free_port())], rig, clock=clock, backoff_base_s=5, backoff_max_s=5)
    try:
        assert up.start() is up
        thread = up._thread
        assert thread.name == "uplink-STA01" and thread.daemon
        assert up.start() is up and up._thread is thread
    finally:
        up.stop()
    assert up._thread is None and not thread.is_alive()


def test_stop_waits_for_a_hung_session_thread_10_s_by_default_then_returns(rig, clock):  # noqa: F811
    class Hung:
        def __init__(self) -> None:
            self.waits: list = []

        def join(self, timeout=None):
            self.waits.append(timeout)

        def is_alive(self) -> bool:
            return True

    up = Uplink(STA, [BrokerConfig()], rig, clock=clock)
    up._mqtt.thread = hung = Hung()
    up.stop()
    up.stop(0.5)
    assert hung.waits == [10.0, 0.5] and up._thread is hung        # still running: not forgotten


# -- configuration ---------------------------------------------------------------------------------
def test_the_defaults_are_the_documented_ones_and_those_of_the_uplink_table(rig, clock):  # noqa: F811
    from ims_station.edge.uplink_config import DEFAULTS

    up = Uplink(STA, [BrokerConfig()], rig, clock=clock)
    got = {"inflight": up.inflight, "max_unacked": up.max_unacked, "live_window_s": up.live_window_s,
           "ack_timeout_s": up.ack_timeout_s, "soh_interval_s": up.soh_interval_s, "prefix": up.prefix,
           "acknack_stall_s": up.acknack_stall_s, "acknack_qos": up.acknack_qos, "relay_name": up.relay_name}
    assert got == {"inflight": 32, "max_unacked": 2000, "live_window_s": 60.0, "ack_timeout_s": 300.0,
                   "soh_interval_s": 60.0, "prefix": "ims", "acknack_stall_s": 0.0, "acknack_qos": 1,
                   "relay_name": "RELAY"}
    assert got == {k: DEFAULTS["uplink"][k] for k in got}
    s = up._mqtt          # the connection's (docs/uplink.md, "Uplink")
    assert (s.session_expiry_s, s.backoff_base_s, s.backoff_max_s, s.connect_timeout_s) == (7 * 86400, 0.5, 60.0, 10.0)
    assert (up.loop_wait_s, up.client_name, s.client_name) == (0.05, STA, STA)
    assert (up.acknack_trust, up.acknack_key_ids, up.command_handler) == (None, None, None)


def test_the_client_name_prefix_and_loop_wait_are_taken_as_given(rig, clock):  # noqa: F811
    up = Uplink(STA, [BrokerConfig()], rig, clock=clock, prefix="x/y", client_name="gw-7", loop_wait_s=0.01)
    assert (up.prefix, up.client_name, up._mqtt.client_name, up.loop_wait_s) == ("x/y", "gw-7", "gw-7", 0.01)
    assert (up.t_acknack, up.t_status, up.t_soh) == ("x/y/STA01/acknack", "x/y/STA01/status", "x/y/STA01/soh")
    # the wait is clamped to [0, one network-loop turn]
    assert Uplink(STA, [BrokerConfig()], rig, clock=clock, loop_wait_s=-1).loop_wait_s == 0.0
    assert Uplink(STA, [BrokerConfig()], rig, clock=clock, loop_wait_s=5).loop_wait_s == 0.05


def test_every_counter_is_in_the_stats_from_the_start_at_zero(rig, clock):  # noqa: F811
    up = Uplink(STA, [BrokerConfig(host="b1", port=1884)], rig, clock=clock)
    st = up.stats()
    counters = {k: v for k, v in st.items() if k not in ("connected", "broker", "protocol", "awaiting_puback",
                                                         "last_acknack")}
    assert counters == dict.fromkeys((
        "connects", "connect_failures", "disconnects", "failovers", "published", "resent", "pubacks",
        "acknacks", "acknacks_invalid", "acknacks_other_set", "frames_acked", "events_published",
        "events_acked", "ims20_published", "ims20_acked", "acknacks_unsigned", "acknacks_bad_signature",
        "acknacks_suspicious", "requeued_on_disconnect", "requeued_ack_timeout", "soh_published",
        "protocol_fallbacks", "acknack_subscribe_refused", "unknown_kind", "commands", "command_errors",
        "cmd_subscribe_refused", "acknack_stall_reconnects"), 0)
    assert (st["connected"], st["broker"], st["awaiting_puback"], st["last_acknack"]) == (False, "b1:1884", 0, None)


@pytest.mark.parametrize("kw, message", [
    ({"brokers": []}, "uplink: at least one broker is needed"),
    ({"protocol": "4"}, "uplink: protocol must be one of ('auto', '5', '3.1.1'), not '4'"),
    ({"acknack_key_ids": [900]}, "uplink: acknack_key_ids given but no acknack trust store"),
    ({"acknack_qos": 2}, "uplink: acknack_qos must be 0 or 1, not 2"),
])
def test_configuration_errors_say_what_is_wrong(rig, clock, kw, message):  # noqa: F811
    from ims_station.edge.uplink import UplinkError

    kw = {"brokers": [BrokerConfig()], **kw}
    with pytest.raises(UplinkError) as ei:
        Uplink(STA, kw.pop("brokers"), rig, clock=clock, **kw)
    assert str(ei.value) == message


# -- one connection through the session, with a scripted paho client --------------------------------
class Scripted(Client):
    """paho as the session drives it, on the test's thread: CONNACK at the first loop turn (refused
    with *refuse*), SUBACK at the second, the first frame's PUBACK at the fourth, and the connection
    lost at the fifth."""

    made: list = []

    def __init__(self, *a, client_id=None, refuse=None, **kw) -> None:
        super().__init__()
        self.client_id, self.refuse = client_id, refuse
        self.connect_kw: dict = {}
        self.timeouts: list[float] = []
        Scripted.made.append(self)

    def connect(self, host, port, keepalive, **kw):
        self.connect_kw = kw
        return 0

    def loop(self, timeout=1.0):
        self.timeouts.append(timeout)
        turn = len(self.timeouts)
        if turn == 1:
            code = ReasonCode(PacketTypes.CONNACK, self.refuse or "Success")
            self.on_connect(self, None, types.SimpleNamespace(session_present=False), code, None)
        elif turn == 2:
            for mid in list(self.subscriptions):
                self.on_subscribe(self, None, mid, [ReasonCode(PacketTypes.SUBACK, identifier=1)], None)
        elif turn == 4:
            self.on_publish(self, None, min(self.on_publish.__self__._pending_mids), 0, None)
        elif turn == 5:
            return mqtt.MQTT_ERR_CONN_LOST
        return mqtt.MQTT_ERR_SUCCESS

    def disconnect(self):
        pass

    def socket(self):
        return None


def test_a_lost_connection_requeues_what_awaits_a_puback_and_the_next_one_resends_it(rig, clock,  # noqa: F811
                                                                                     monkeypatch):
    monkeypatch.setattr(mqtt, "Client", Scripted)
    Scripted.made = []
    fill(rig, range(3))
    up = Uplink(STA, [BrokerConfig()], rig, clock=clock, live_window_s=0, client_name="gw-7", loop_wait_s=0.01,
                session_expiry_s=3600)
    assert up._mqtt._session(up._mqtt.current) is True
    c = Scripted.made[-1]
    assert c.client_id == "ims-gw-7" and c.connect_kw["properties"].SessionExpiryInterval == 3600
    assert c.frames() == [0, 1, 2]
    # the loop waits one network turn until CONNACK, then the uplink's loop_wait_s
    assert c.timeouts[:5] == [0.05, 0.01, 0.01, 0.01, 0.01]
    st = up.stats()
    assert (st["pubacks"], st["requeued_on_disconnect"], st["disconnects"], st["awaiting_puback"]) == (1, 2, 1, 0)
    assert rig.in_flight_count() == 1
    assert up._mqtt._session(up._mqtt.current) is True
    assert Scripted.made[-1].frames() == [1, 2] and up.stats()["resent"] == 2


def test_the_connection_logs_under_the_uplinks_logger_and_label(rig, clock, monkeypatch, caplog):  # noqa: F811
    monkeypatch.setattr(mqtt, "Client", lambda *a, **kw: Scripted(*a, refuse="Not authorized", **kw))
    up = Uplink(STA, [BrokerConfig()], rig, clock=clock)
    with caplog.at_level("WARNING"):
        assert up._mqtt._session(up._mqtt.current) is False
    assert [(r.name, r.getMessage()) for r in caplog.records if r.levelname == "WARNING"] == [
        ("ims_station.edge.uplink", "uplink STA01: connection refused: Not authorized")]


def test_the_backoff_and_connect_timeout_are_the_connections(rig, clock):  # noqa: F811
    import random

    rng = random.Random(4)
    up = Uplink(STA, [BrokerConfig()], rig, clock=clock, backoff_base_s=2, backoff_max_s=30, connect_timeout_s=4,
                rng=rng)
    s = up._mqtt
    assert (s.backoff_base_s, s.backoff_max_s, s.connect_timeout_s, s.rng) == (2.0, 30.0, 4.0, rng)


class Wall:
    """The session's wall clock, set by the test."""

    def __init__(self) -> None:
        self.t = 100.0

    def monotonic(self) -> float:
        return self.t


def test_without_a_notify_the_outbox_is_polled_every_half_second_of_wall_time(rig, clock):  # noqa: F811
    up = Uplink(STA, [BrokerConfig()], rig, clock=clock, live_window_s=0)
    c = connected(up)
    up._mqtt.clock = wall = Wall()
    up._periodic(c)                          # woken by the connection: polls (nothing there yet)
    fill(rig, [0])                           # committed without notify()
    wall.t += 0.25
    up._periodic(c)
    wall.t += 0.125
    up._periodic(c)
    assert c.frames() == []                  # 0.375 s after the poll
    wall.t += 0.125
    up._periodic(c)
    assert c.frames() == [0]                 # 0.5 s: polled again
    fill(rig, [1])
    wall.t += 0.375
    up._periodic(c)
    assert c.frames() == [0]
    wall.t += 0.125
    up._periodic(c)
    assert c.frames() == [0, 1]


def test_the_soh_carries_what_json_cannot_as_text_and_survives_a_failing_provider(rig, clock):  # noqa: F811
    import datetime as dt

    since = dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    up = Uplink(STA, [BrokerConfig()], rig, clock=clock, soh_provider=lambda: {"gateway": {"since": since}})
    c = Client()
    up._publish_soh(c)
    assert json.loads(c.on("soh")[-1][0])["gateway"] == {"since": str(since)}

    def broken():
        raise RuntimeError("provider bug")

    up._soh_provider = broken
    up._publish_soh(c)
    doc = json.loads(c.on("soh")[-1][0])
    assert set(doc) == {"station", "time", "uplink", "outbox"} and doc["outbox"]["frames"] == 0
    assert up.stats()["soh_published"] == 2


def test_a_refused_subscription_is_logged_with_its_topic_reason_and_what_to_check(rig, clock, caplog):  # noqa: F811
    """The operator's pointer to a broker ACL that forgets one of the station's topics."""
    up = Uplink(STA, [BrokerConfig()], rig, clock=clock, command_handler=Handler())
    c = Client()
    with caplog.at_level("ERROR", logger="ims_station.edge.uplink"):
        c.connack(up)
        c.suback_topics(up, refused={topics.topic("ims", STA, "acknack"), topics.topic("ims", STA, "cmd")})
    assert sorted(r.getMessage() for r in caplog.records if "broker refused the" in r.getMessage()) == [
        "uplink STA01: broker refused the acknack subscription ims/STA01/acknack (Not authorized): frames are "
        "sent but only the ack timeout can clear them; check the broker's ACL",
        "uplink STA01: broker refused the command subscription ims/STA01/cmd (Not authorized): the relay's "
        "window requests cannot reach this station; check the broker's ACL"]


def test_a_dropped_acknack_is_logged_with_its_creator_key_and_reason(rig, clock, relay_keys, caplog):  # noqa: F811
    keystore, trust = relay_keys
    up = Uplink(STA, [BrokerConfig()], rig, clock=clock, acknack_trust=trust, acknack_key_ids=[900])
    c = connected(up)
    with caplog.at_level("WARNING", logger="ims_station.edge.uplink"):
        forged(up, c, _signed_ack())
        forged(up, c, _signed_ack(keystore.signer(900), creator="EVIL"))
        forged(up, c, _signed_ack(keystore.signer(902)))
        forged(up, c, _signed_ack(auth_key_id=900, auth_value=bytes(64)))
    assert [r.getMessage() for r in caplog.records] == [
        "uplink STA01: dropped an unsigned acknack from 'RELAY' (acknack trust is configured)",
        "uplink STA01: dropped an acknack from 'EVIL' (key 900) not authenticated as the relay's: its creator "
        "is not the relay 'RELAY'",
        "uplink STA01: dropped an acknack from 'RELAY' (key 902) not authenticated as the relay's: key 902 is "
        "not one of the relay's keys [900]",
        "uplink STA01: dropped an acknack from 'RELAY' (key 900) not authenticated as the relay's: signature "
        "does not verify with key 900 (ed25519)"]
