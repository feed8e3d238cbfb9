"""The relay against a real Mosquitto on a free port: archive, acknacks, manual PUBACK, sessions, load sharing.

Needs Mosquitto (``./run`` installs it): the shared ``mosquitto`` fixture of tests/conftest.py, one broker
per test because the relays keep persistent sessions under fixed client ids.  Not skipped without it, so
a missing broker is a visible failure.  ``Relay.wait_connected()`` returns after the SUBACK of the
relay's subscription, so a frame published right after it reaches the relay."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ims_station import cd11
from ims_station.broker import BrokerConfig
from ims_station.relay.archive import FileArchive
from ims_station.relay.relay import Relay
from ims_station.relay.state import SqliteStateStore

BASE = 8640 * 8700
TIMEOUT = 15.0
ROOT = Path(__file__).resolve().parents[2]


class Observed:
    """Collects things from callback threads; ``wait(pred)`` blocks on a condition, not a sleep loop."""

    def __init__(self) -> None:
        self.items: list = []
        self.cond = threading.Condition()

    def add(self, items) -> None:
        with self.cond:
            self.items.extend(items)
            self.cond.notify_all()

    def wait(self, pred, timeout: float = TIMEOUT):
        with self.cond:
            assert self.cond.wait_for(lambda: pred(self.items), timeout), f"timed out; have {self.items!r:.800}"
            return list(self.items)


class StationClient:
    """A bare MQTT station: publishes frames on its cd11 topic, collects acknacks."""

    def __init__(self, broker, station: str = "STA01") -> None:
        import paho.mqtt.client as mqtt

        self.station = station
        self.acknacks = Observed()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-{station}")
        self.c.on_message = lambda c, u, m: self.acknacks.add([cd11.parse_frame(m.payload)[0]])
        subscribed = threading.Event()
        self.c.on_subscribe = lambda *a: subscribed.set()
        # Subscribe once the CONNACK is in (amqtt ignores a SUBSCRIBE that overtakes it).
        self.c.on_connect = lambda c, *a: c.subscribe(f"ims/{station}/acknack", qos=1)
        broker.config.apply(self.c)               # the embedded broker wants a username
        self.c.connect(broker.host, broker.port)
        self.c.loop_start()
        assert subscribed.wait(TIMEOUT)

    def publish(self, payload: bytes, station: str | None = None) -> None:
        self.c.publish(f"ims/{station or self.station}/cd11", payload, qos=1).wait_for_publish(TIMEOUT)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def make_relay(broker, keys, data: Path, stores, *, instance="r1", seen: Observed | None = None,
               **kw) -> tuple[Relay, Observed]:
    seen = seen or Observed()
    kw.setdefault("acknack_interval_s", 0.5)
    kw.setdefault("acknack_min_spacing_s", 0.05)
    # BASE frames are of 2023 and these relays run on the system clock: no lower time bound here
    # (the time-plausibility rule has its own tests, test_poison.py).
    kw.setdefault("max_past_s", None)
    r = Relay(broker.config, keys.trust, stores.state(data / "state.sqlite"),
              stores.archive(data / "archive", writer=instance), instance=instance, group="relays",
              on_outcomes=lambda outs: seen.add([(instance, o) for o in outs]), backoff_base_s=0.05, backoff_max_s=0.2, **kw)
    return r, seen


def results(items) -> list[str]:
    return [o.result for _, o in items]


def test_archive_and_acknack_gaps_end_to_end(mosquitto, keys, factory, tmp_path, stores):
    relay, seen = make_relay(mosquitto, keys, tmp_path, stores)
    sta = StationClient(mosquitto)
    with relay:
        assert relay.wait_connected(TIMEOUT)
        for s in (0, 1, 3, 4):
            sta.publish(factory.build(BASE + s))
        sta.publish(b"garbage that must not crash anything")
        sta.publish(factory.build(BASE + 9), station="STA02")                 # wrong topic
        seen.wait(lambda it: len(it) == 6)
        acks = sta.acknacks.wait(lambda a: any(x.gaps == [(BASE + 2, BASE + 3)] for x in a))
        assert all(a.frame_set == "STA01:0" and a.lowest == BASE for a in acks)
        sta.publish(factory.build(BASE + 2))                                 # the station resends
        sta.acknacks.wait(lambda a: (a[-1].lowest, a[-1].highest, a[-1].gaps) == (BASE, BASE + 4, []))
        st = relay.stats()
    sta.close()
    assert sorted(results(seen.items)) == sorted(["archived"] * 5 + ["malformed", "station_mismatch"])
    assert st["archived"] == 5 and st["quarantined"] == 2 and st["transport"]["protocol"] == "5"
    assert st["transport"]["subscription"] == "$share/relays/ims/+/cd11"
    assert st["transport"]["acked"] == 7


@pytest.mark.parametrize("stores", ["sqlite"], indirect=True)    # MQTT readiness only: one backend
def test_connected_means_the_subscription_was_acknowledged(mosquitto, keys, factory, tmp_path, stores):
    """wait_connected() returns after the SUBACK: the first frame published at that instant arrives
    (a shared subscription has no session at the broker before it)."""
    relay, seen = make_relay(mosquitto, keys, tmp_path, stores)
    sta = StationClient(mosquitto)
    with relay:
        assert relay.wait_connected(TIMEOUT)
        assert relay.stats()["transport"]["subscriptions_acknowledged"] == 3  # cd11, events, ims20
        sta.publish(factory.build(BASE))
        assert results(seen.wait(lambda it: len(it) == 1)) == ["archived"]
    sta.close()


@pytest.mark.parametrize("stores", ["sqlite"], indirect=True)    # MQTT readiness only: one backend
def test_on_a_3_1_1_broker_ready_after_the_suback_of_the_fallback_connection(embedded, keys, factory, tmp_path, stores):
    """The embedded amqtt broker (3.1.1 only, no shared subscriptions: the relay runs without a
    group, as the demo does): MQTT 5 is refused, the relay falls back to 3.1.1 and is connected only
    after that connection's SUBACK -- the first frame published then arrives."""
    # amqtt does not answer an MQTT 5 CONNECT: a short deadline keeps the test quick (a 3.1.1
    # attempt that missed it under load is simply retried).
    relay, seen = make_relay(embedded, keys, tmp_path, stores, connect_timeout_s=2.0)
    relay.group = None
    sta = StationClient(embedded)
    with relay:
        assert relay.wait_connected(TIMEOUT)
        tr = relay.stats()["transport"]
        assert tr["protocol"] == "3.1.1" and tr["protocol_fallbacks"] == 1
        assert tr["subscriptions_acknowledged"] == 3 and tr["subscription"] == "ims/+/cd11"
        assert tr["subscriptions"] == ["ims/+/cd11", "ims/+/events", "ims/+/ims20"]
        sta.publish(factory.build(BASE))
        assert results(seen.wait(lambda it: len(it) == 1)) == ["archived"]
    sta.close()


def test_a_refused_shared_subscription_is_replaced_and_readiness_waits_for_the_new_suback(keys, tmp_path):
    """A broker that refuses ``$share`` with a failure code: the relay subscribes ``ims/+/cd11`` and is
    connected only at that SUBACK.  (No broker at hand refuses it -- amqtt grants the filter literally
    -- so a recording client delivers the CONNACK and SUBACKs to the session's own handlers.)"""
    import types

    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.reasoncodes import ReasonCode

    class Client:
        def __init__(self):
            self.subs, self.mid = {}, 0

        def subscribe(self, topic, qos=0):
            self.mid += 1
            self.subs[self.mid] = topic
            return 0, self.mid

    relay = Relay(BrokerConfig(), keys.trust, SqliteStateStore(tmp_path / "s.sqlite"),
                  FileArchive(tmp_path / "a", writer="r"), group="relays")
    c = Client()
    relay._mqtt._handle_connect(c, None, types.SimpleNamespace(session_present=False),
                                ReasonCode(PacketTypes.CONNACK, "Success"), None)
    assert c.subs == {1: "$share/relays/ims/+/cd11", 2: "$share/relays/ims/+/events",
                      3: "$share/relays/ims/+/ims20"} and not relay.connected
    for mid in (1, 2, 3):
        relay._mqtt._handle_subscribe(c, None, mid, [ReasonCode(PacketTypes.SUBACK, identifier=0x9E)], None)
    # 0x9E: shared subscriptions not supported -- each replaced by its plain filter
    assert (c.subs[4], c.subs[5], c.subs[6]) == ("ims/+/cd11", "ims/+/events", "ims/+/ims20") and not relay.connected
    relay._mqtt._handle_subscribe(c, None, 4, [ReasonCode(PacketTypes.SUBACK, identifier=1)], None)
    relay._mqtt._handle_subscribe(c, None, 5, [ReasonCode(PacketTypes.SUBACK, identifier=1)], None)
    assert not relay.connected                                      # the ims20 SUBACK is still due
    relay._mqtt._handle_subscribe(c, None, 6, [ReasonCode(PacketTypes.SUBACK, identifier=1)], None)
    assert relay.connected
    tr = relay.stats()["transport"]
    assert tr["shared_subscription_refused"] == 3 and tr["subscription"] == "ims/+/cd11"
    assert tr["subscriptions"] == ["ims/+/cd11", "ims/+/events", "ims/+/ims20"]
    relay.close()


def test_unstored_batch_is_not_acked_and_comes_back(mosquitto, keys, factory, tmp_path, stores):
    """Manual PUBACK: when storing fails the broker keeps the message and redelivers it after the
    relay reconnects -- no station resend needed (the test station never resends)."""
    from ims_station.relay.errors import ArchiveError

    relay, seen = make_relay(mosquitto, keys, tmp_path, stores)
    real_commit = relay.core.archive.commit
    failures = []

    def flaky(frames, quarantined=()):
        if not failures:
            failures.append(1)
            raise ArchiveError("disk full (simulated)")
        return real_commit(frames, quarantined)

    relay.core.archive.commit = flaky
    sta = StationClient(mosquitto)
    with relay:
        assert relay.wait_connected(TIMEOUT)
        sta.publish(factory.build(BASE))
        seen.wait(lambda it: results(it) == ["archived"])
        st = relay.stats()
        assert relay.core.archive.frame_keys() == [("STA01:0", BASE)]
    sta.close()
    assert failures == [1]
    assert st["store_errors"] == 1 and st["transport"]["disconnects"] >= 1 and st["transport"]["connects"] >= 2


def test_frames_sent_while_the_relay_is_down_arrive_after_restart(mosquitto, keys, factory, tmp_path, stores):
    """Persistent session (MQTT 5, session expiry): the broker queues for the stopped relay."""
    relay, _ = make_relay(mosquitto, keys, tmp_path, stores)
    relay.start()
    assert relay.wait_connected(TIMEOUT)
    relay.close()
    sta = StationClient(mosquitto)
    for s in range(5):
        sta.publish(factory.build(BASE + s))
    relay2, seen = make_relay(mosquitto, keys, tmp_path, stores)
    with relay2:
        seen.wait(lambda it: results(it).count("archived") == 5)
        sta.acknacks.wait(lambda a: a and (a[-1].lowest, a[-1].highest, a[-1].gaps) == (BASE, BASE + 4, []))
    sta.close()


def test_two_relays_share_the_load_and_one_state(mosquitto, keys, factory, tmp_path, stores):
    """A shared subscription hands each frame to one relay; both archive into one index and one
    state store, so neither reports the other's frames as gaps."""
    seen = Observed()
    r1, _ = make_relay(mosquitto, keys, tmp_path, stores, instance="r1", seen=seen)
    r2, _ = make_relay(mosquitto, keys, tmp_path, stores, instance="r2", seen=seen)
    sta = StationClient(mosquitto)
    n = 30
    with r1, r2:
        assert r1.wait_connected(TIMEOUT) and r2.wait_connected(TIMEOUT)
        for s in range(n):
            sta.publish(factory.build(BASE + s))
        seen.wait(lambda it: len(it) == n)
        sta.acknacks.wait(lambda a: a and (a[-1].lowest, a[-1].highest, a[-1].gaps) == (BASE, BASE + n - 1, []))
    sta.close()
    by = {name for name, _ in seen.items}
    assert by == {"r1", "r2"}, "both relays should have received part of the load"
    assert results(seen.items) == ["archived"] * n
    with stores.archive(tmp_path / "archive", writer="check") as arc:
        assert len(arc.frame_keys()) == n
        assert all(arc.read_frame("STA01:0", BASE + s) == factory.build(BASE + s) for s in range(n))
    if not stores.pg:         # SQLite: each relay its own day files; PostgreSQL: shared objects
        assert sorted(p.name.split(".")[-2] for p in (tmp_path / "archive" / "frames").rglob("*.cd11")) == ["r1", "r2"]


def test_cli_run_and_export(mosquitto, keys, factory, tmp_path, stores):
    conf = tmp_path / "relay.toml"
    conf.write_text(f"""
[relay]
data_dir = "data"
trust_dir = "{keys.trust_dir}"
instance = "cli1"
acknack_interval_s = 1.0
max_past_s = 1e10              # BASE frames are of 2023
{stores.state_toml(tmp_path / "data")}
[[broker]]
host = "{mosquitto.host}"
port = {mosquitto.port}
""")
    proc = subprocess.Popen([sys.executable, "-m", "ims_station", "relay", "run", "--config", str(conf), "--json",
                             "--stats-every", "0.2"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        sta = StationClient(mosquitto)
        # Published before the relay may have subscribed: the station keeps publishing (as the
        # outbox does) until the relay's acknack covers the frame.
        acked = threading.Event()
        for _ in range(int(TIMEOUT / 0.2)):
            sta.publish(factory.build(BASE))
            sta.publish(factory.build(BASE + 1))
            with sta.acknacks.cond:
                if sta.acknacks.cond.wait_for(lambda: any(a.highest == BASE + 1 for a in sta.acknacks.items), 0.2):
                    acked.set()
                    break
        sta.close()
        assert acked.is_set()
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err
    last = [line for line in out.splitlines() if '"stopped"' in line]
    assert last and '"archived": 2' in last[0], (out[-2000:], err[-3000:])   # say why if it ever fails
    out_dir = tmp_path / "mseed"
    r = subprocess.run([sys.executable, "-m", "ims_station", "relay", "export-mseed", "--config", str(conf),
                        "--station", "STA01", "--out", str(out_dir), "--json"], cwd=tmp_path, capture_output=True,
                       text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    assert len(list(out_dir.glob("XX.STA01.00.BH?.*.mseed"))) == 3


def test_a_poison_message_in_a_live_stream_is_quarantined_acked_and_not_redelivered(mosquitto, keys, factory,
                                                                                   tmp_path, stores):
    """Issue 7 §1: an exception injected into the verifier for one message of a live stream: that
    message is quarantined as ``internal_error`` and acknowledged, every other frame is archived,
    and a restarted relay (same persistent session) does not get the poison message again."""
    relay, seen = make_relay(mosquitto, keys, tmp_path, stores)
    n = 12
    frames = [factory.build(BASE + s) for s in range(n)]
    poison = frames[5]
    real = relay.core.verifier.check

    def check(station, payload):
        if payload == poison:
            raise RuntimeError("injected bug")
        return real(station, payload)

    relay.core.verifier.check = check
    sta = StationClient(mosquitto)
    with relay:
        assert relay.wait_connected(TIMEOUT)
        for raw in frames:
            sta.publish(raw)
        seen.wait(lambda it: len(it) == n)
        st = relay.stats()
    assert sorted(results(seen.items)) == sorted(["archived"] * (n - 1) + ["internal_error"])
    assert st["internal_errors"] == 1 and st["transport"]["acked"] == n and st["store_errors"] == 0
    with stores.archive(tmp_path / "archive", writer="check") as arc:
        assert sorted(s for _, s in arc.frame_keys()) == [BASE + s for s in range(n) if s != 5]
        (q,) = arc.quarantine_entries(reason="internal_error")
        assert "RuntimeError: injected bug" in q["detail"] and arc.read_quarantined(q) == poison
    # Restart: the persistent session holds nothing of the old stream; the next frame is the first
    # (and only) message the new relay sees, and the station resends the poison's frame normally.
    relay2, seen2 = make_relay(mosquitto, keys, tmp_path, stores)
    with relay2:
        assert relay2.wait_connected(TIMEOUT)
        sta.publish(factory.build(BASE + n))
        sta.publish(poison)
        got = seen2.wait(lambda it: len(it) == 2)
    sta.close()
    assert [(o.result, o.sequence) for _, o in got] == [("archived", BASE + n), ("archived", BASE + 5)]
    assert relay2.stats()["received"] == 2


def test_the_session_loop_acks_a_message_even_if_a_bug_gets_past_the_core(keys, factory, tmp_path):
    """Defence in depth behind RelayCore.process's boundary: should process() itself raise anything
    but RelayError, the session retries message by message and acknowledges the one that still
    fails (counted) instead of reconnecting for a redelivery that would fail forever."""
    relay = Relay(BrokerConfig(), keys.trust, SqliteStateStore(tmp_path / "s.sqlite"),
                  FileArchive(tmp_path / "a", writer="r"), max_past_s=None)
    frames = [factory.build(BASE + s) for s in range(3)]
    real = relay.core.process

    def process(items):
        if any(i.payload == frames[1] for i in items):
            raise RuntimeError("a bug past the boundary")
        return real(items)

    relay.core.process = process

    class Client:
        acked: list = []

        def ack(self, mid, qos):
            self.acked.append(mid)

    c = Client()
    relay._inbox = [("ims/STA01/cd11", raw, mid, 1) for mid, raw in enumerate(frames, start=1)]
    assert relay._process(c) is True
    assert c.acked == [1, 2, 3]
    st = relay.stats()
    assert st["archived"] == 2 and st["internal_errors"] == 1 and st["transport"]["poison_unstored"] == 1
    relay.core.close()
