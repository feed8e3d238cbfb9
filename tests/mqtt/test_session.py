"""ims_station.mqtt.MqttSession: the connection code the uplink and the relay share.

Against real brokers (the shared fixtures of tests/conftest.py): fail-over across a dead port to a
live Mosquitto, the MQTT 5 -> 3.1.1 fall-back on the embedded amqtt broker (remembered per broker),
the CONNACK deadline on a listener that never answers.  Without a broker: readiness (CONNACK and
every SUBACK), the backoff bounds (hypothesis), and configuration errors.

Waits are on the session's own events (``wait_connected``) or on a counter, bounded by wall time;
nothing sleeps a fixed time.
"""

from __future__ import annotations

import random
import socket
import threading
import time
import types
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from ims_station.broker import BrokerConfig, free_port
from ims_station.mqtt import MqttSession, MqttSessionError, backoff_delay

TIMEOUT = 15.0


def wait_for(pred, timeout: float = TIMEOUT, what: str = "condition") -> None:
    """Poll *pred* (a counter written by the session thread), bounded by wall time."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def session(brokers, **kw) -> MqttSession:
    kw.setdefault("backoff_base_s", 0.02)
    kw.setdefault("backoff_max_s", 0.1)
    kw.setdefault("connect_timeout_s", 5.0)
    return MqttSession(brokers, client_name=f"t-{uuid.uuid4().hex[:8]}", label="test", **kw)


# -- against brokers ------------------------------------------------------------------------------

def test_fails_over_from_a_dead_port_to_a_live_broker(mosquitto_session):
    dead = BrokerConfig(port=free_port())                  # nobody listens there
    s = session([dead, mosquitto_session.config])
    s.start("t-failover")
    try:
        assert s.wait_connected(TIMEOUT)
        assert s.broker == mosquitto_session.config and s.protocol == "5"
        assert s.counters["connect_failures"] >= 1 and s.counters["failovers"] >= 1
        assert s.counters["connects"] == 1 and s.counters["protocol_fallbacks"] == 0
    finally:
        s.stop()
    assert not s.connected and s.thread is None


def test_falls_back_to_3_1_1_on_the_embedded_broker_and_remembers_it_per_broker(embedded, mosquitto):
    """amqtt speaks 3.1.1 only: the first attempt (MQTT 5) gets no positive CONNACK, the second uses
    3.1.1.  When that broker goes away the session fails over to Mosquitto, which still gets MQTT 5."""
    s = session([embedded.config, mosquitto.config], connect_timeout_s=3.0)   # amqtt ignores MQTT 5
    s.start("t-fallback")
    try:
        assert s.wait_connected(TIMEOUT)
        assert s.broker == embedded.config and s.protocol == "3.1.1"
        assert s.counters["protocol_fallbacks"] == 1
        embedded.stop()
        wait_for(lambda: s.connected and s.broker == mosquitto.config, what="fail-over to Mosquitto")
        assert s.protocol == "5" and s.brokers[0].protocol == "3.1.1"
        assert s.counters["protocol_fallbacks"] == 1 and s.counters["disconnects"] >= 1
    finally:
        s.stop()


def test_forced_3_1_1_never_tries_mqtt5(mosquitto_session):
    s = session([mosquitto_session.config], protocol="3.1.1")
    s.start("t-311")
    try:
        assert s.wait_connected(TIMEOUT)
        assert s.protocol == "3.1.1" and s.counters["protocol_fallbacks"] == 0
    finally:
        s.stop()


def test_a_listener_that_never_sends_connack_is_abandoned_at_the_deadline():
    """TCP accepted, no CONNACK: the attempt ends after connect_timeout_s, is counted as a failure,
    and (protocol "auto") the next attempt on that broker uses 3.1.1."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        accepted: list[socket.socket] = []
        stop = threading.Event()

        def accept() -> None:
            srv.settimeout(0.1)
            while not stop.is_set():
                try:
                    accepted.append(srv.accept()[0])     # keep the socket open, say nothing
                except OSError:
                    pass

        t = threading.Thread(target=accept, daemon=True)
        t.start()
        s = session([BrokerConfig(port=srv.getsockname()[1])], connect_timeout_s=0.3, backoff_max_s=5.0)
        s.start("t-silent")
        try:
            wait_for(lambda: s.counters["connect_failures"] >= 1, what="the CONNACK deadline")
            assert s.protocol == "3.1.1" and s.counters["protocol_fallbacks"] == 1
            assert not s.connected and s.counters["connects"] == 0
        finally:
            s.stop()
            stop.set()
            t.join()
            for c in accepted:
                c.close()


@pytest.fixture
def unanswered_lookup(monkeypatch):
    """``broker.invalid`` resolves never (a resolver that does not answer) until the test ends;
    ``lookups`` lists the lookups begun."""
    release = threading.Event()
    real = socket.getaddrinfo

    def getaddrinfo(host, *args, **kw):
        if host == "broker.invalid":
            lookups.append(host)
            release.wait()
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return real(host, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield BrokerConfig(host="broker.invalid", port=1883)
    release.set()


lookups: list[str] = []


def test_an_attempt_stuck_in_the_name_lookup_fails_at_the_connect_deadline(unanswered_lookup):
    """connect_timeout_s bounds the whole attempt, name lookup and TCP/TLS included, not only the
    wait for CONNACK: the session goes on (backs off, tries again) while the lookup hangs."""
    s = session([unanswered_lookup], connect_timeout_s=0.2)
    s.start("t-lookup")
    try:
        wait_for(lambda: s.counters["connect_failures"] >= 2, what="two attempts given up")
        assert s.counters["protocol_fallbacks"] == 0      # nothing answered: no reason to fall back
    finally:
        s.stop()


def test_stop_does_not_wait_for_a_connection_attempt_in_progress(unanswered_lookup):
    """The gateway's and the relay's shutdown join the session thread: it must end while the
    attempt is still stuck (the attempt is left on its own daemon thread)."""
    s = session([unanswered_lookup], connect_timeout_s=3600.0)
    lookups.clear()             # before start: the session thread may begin its lookup at once
    s.start("t-stop")
    thread = s.thread
    wait_for(lambda: lookups, what="the attempt's name lookup")
    s.stop(timeout=TIMEOUT)
    assert not thread.is_alive() and s.thread is None
    assert s.counters["connects"] == 0


# -- readiness without a broker -------------------------------------------------------------------

class RecordingClient:
    """What the session's callbacks touch of a paho client: subscribe() with growing message ids."""

    def __init__(self) -> None:
        self.subs: dict[int, str] = {}
        self.mid = 0

    def subscribe(self, topic, qos=0):
        self.mid += 1
        self.subs[self.mid] = topic
        return 0, self.mid


def connack(s: MqttSession, c: RecordingClient) -> None:
    s._handle_connect(c, None, types.SimpleNamespace(session_present=False),
                      ReasonCode(PacketTypes.CONNACK, "Success"), None)


def suback(s: MqttSession, c: RecordingClient, mid: int, code: int = 1) -> None:
    s._handle_subscribe(c, None, mid, [ReasonCode(PacketTypes.SUBACK, identifier=code)], None)


def test_connected_only_after_connack_and_every_suback():
    s = session([BrokerConfig()], on_connected=lambda c, flags: [s.subscribe(c, t) for t in ("a/#", "b/#")])
    c = RecordingClient()
    connack(s, c)
    assert s.link_up and not s.connected and not s.subscriptions_settled
    suback(s, c, 1)
    assert not s.connected and not s.wait_connected(0)
    suback(s, c, 99)                         # a SUBACK for something this connection did not send
    assert not s.connected
    suback(s, c, 2)
    assert s.connected and s.subscriptions_settled
    s._handle_disconnect(c, None, None, ReasonCode(PacketTypes.DISCONNECT, "Normal disconnection"), None)
    assert not s.connected and not s.link_up


def test_without_subscriptions_connected_at_connack():
    s = session([BrokerConfig()])
    connack(s, RecordingClient())
    assert s.connected


def test_a_refused_subscription_keeps_the_session_not_ready():
    s = session([BrokerConfig()], on_connected=lambda c, flags: s.subscribe(c, "a/#"))
    c = RecordingClient()
    connack(s, c)
    suback(s, c, 1, code=0x87)               # not authorised
    assert not s.connected and s.subscriptions_settled


def test_the_owner_may_replace_a_refused_subscription():
    def on_subscribed(client, mid, rcs):
        if any(rc.is_failure for rc in rcs):
            return s.subscribe(client, "plain/#") is not None
        return True

    s = session([BrokerConfig()], on_connected=lambda c, flags: s.subscribe(c, "$share/g/plain/#"),
                on_subscribed=on_subscribed)
    c = RecordingClient()
    connack(s, c)
    suback(s, c, 1, code=0x9E)               # shared subscriptions not supported
    assert c.subs[2] == "plain/#" and not s.connected
    suback(s, c, 2)
    assert s.connected


# -- backoff and configuration --------------------------------------------------------------------

@given(attempt=st.integers(0, 10_000), base=st.floats(0.001, 10.0), cap=st.floats(0.01, 600.0),
       seed=st.integers(0, 2**32 - 1))
def test_backoff_lies_between_half_step_and_step_and_never_exceeds_the_cap(attempt, base, cap, seed):
    step = min(cap, base * 2 ** min(attempt, 30))
    d = backoff_delay(attempt, base=base, cap=cap, rng=random.Random(seed))
    assert step / 2 <= d <= step <= cap
    assert d > 0


def test_backoff_grows_until_the_cap_then_stays_there():
    lows = [backoff_delay(n, base=0.5, cap=60, rng=random.Random(n)) for n in range(20)]
    assert lows[0] <= 0.5 and lows[3] >= 2.0 and all(30 <= d <= 60 for d in lows[7:])


@pytest.mark.parametrize("brokers, kw, match", [
    ([], {}, "at least one broker"),
    ([BrokerConfig()], {"protocol": "4"}, "protocol must be one of"),
])
def test_bad_configuration_is_refused(brokers, kw, match):
    with pytest.raises(MqttSessionError, match=match):
        MqttSession(brokers, client_name="x", label="test", **kw)
