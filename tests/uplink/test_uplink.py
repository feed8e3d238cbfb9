"""The uplink against a real Mosquitto: frames leave the outbox only on the relay's acknack, gaps are
resent, broker restarts and fail-over lose nothing, Last Will marks the station offline."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from ims_station import cd11, topics
from ims_station.broker import BrokerConfig, free_port
from ims_station.edge.outbox import Outbox
from ims_station.edge.uplink import Uplink, UplinkError, backoff_delay

STA = "STA01"
FS = f"{STA}:0"
T0 = 1_700_000_000.0


def wait_until(pred, timeout=15.0, what="condition"):
    """Poll *pred* (the broker runs in another process; there is no event to wait on)."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def frame(seq: int) -> bytes:
    t = T0 + 10 * seq
    return cd11.build_data_frame(STA, seq, t, [cd11.ChannelInput(STA, "BHZ", "00", np.arange(20, dtype=np.int32) * seq,
                                                                 2.0, t)])


class FakeRelay:
    """A relay reduced to what the station sees: it records frames and publishes acknacks."""

    def __init__(self, cfg: BrokerConfig, prefix: str = topics.DEFAULT_PREFIX) -> None:
        self.seqs: list[int] = []
        self.lock = threading.Lock()
        self.prefix = prefix
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fake-relay", clean_session=False)
        self.c.on_message = self._msg
        # Ready on the SUBACK, not the CONNACK: a frame published before the broker acknowledged the
        # subscription may not reach us (same rule as the real relay's wait_connected()).
        self.connected = threading.Event()
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{prefix}/+/cd11", qos=1)
        self.c.on_subscribe = lambda c, u, mid, rcs, p: (not any(r.is_failure for r in rcs)) and self.connected.set()
        self.c.connect(cfg.host, cfg.port)
        self.c.loop_start()
        assert self.connected.wait(10)

    def _msg(self, c, u, msg):
        f, _ = cd11.parse_frame(msg.payload)
        with self.lock:
            self.seqs.append(f.sequence)

    def received(self) -> set[int]:
        with self.lock:
            return set(self.seqs)

    def ack(self, lowest: int, highest: int, gaps=()) -> None:
        wire = cd11.Acknack(creator="RELAY", frame_set=FS, lowest=lowest, highest=highest, gaps=list(gaps)).to_bytes()
        self.c.publish(topics.topic(self.prefix, STA, "acknack"), wire, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


@pytest.fixture
def outbox(tmp_path, clock):
    box = Outbox(tmp_path / "outbox.sqlite", max_bytes=10 << 20, max_age_s=7 * 86400, clock=clock,
                 resend_holdoff_s=0)
    yield box
    box.close()


def fill(box, seqs):
    for s in seqs:
        assert box.put("cd11", FS, s, T0 + 10 * s, frame(s))


def test_backoff_grows_exponentially_with_jitter_and_a_cap():
    import random

    rng = random.Random(1)
    d = [backoff_delay(n, base=0.5, cap=60, rng=rng) for n in range(12)]
    assert all(0.25 * 2 ** min(n, 6.9) <= x <= 0.5 * 2 ** n for n, x in enumerate(d[:7]))
    assert all(30 <= x <= 60 for x in d[8:])
    assert len(set(d)) == len(d)           # jittered


def test_frames_leave_the_outbox_only_when_the_acknack_covers_them(mosquitto, outbox, clock):
    relay = FakeRelay(mosquitto.config)
    fill(outbox, range(1, 11))
    up = Uplink(STA, [mosquitto.config], outbox, clock=clock, backoff_base_s=0.05)
    up.start()
    try:
        wait_until(lambda: relay.received() == set(range(1, 11)), what="10 frames at the relay")
        wait_until(lambda: up.stats()["pubacks"] == 10, what="PUBACKs")
        assert outbox.stats()["frames"] == 10          # the broker's PUBACK deletes nothing
        # The relay has 1..10 except 4 and 7: both come back, with their original bytes.
        before = len(relay.seqs)
        relay.ack(1, 10, [(4, 5), (7, 8)])
        wait_until(lambda: outbox.stats()["frames"] == 2, what="acknack applied")
        wait_until(lambda: len(relay.seqs) == before + 2, what="gap frames resent")
        assert sorted(relay.seqs[before:]) == [4, 7]
        assert up.stats()["resent"] == 2
        relay.ack(1, 10)
        wait_until(lambda: outbox.stats()["frames"] == 0, what="outbox empty")
        # An acknack for another frame set or a malformed one changes nothing and is counted.
        relay.c.publish(topics.topic("ims", STA, "acknack"), b"\x00garbage", qos=1).wait_for_publish(5)
        wait_until(lambda: up.stats()["acknacks_invalid"] == 1, what="bad acknack counted")
        assert up.stats()["connected"]
    finally:
        up.stop()
        relay.close()


def test_implied_gaps_beyond_the_relays_range_are_resent(mosquitto, outbox, clock):
    """A relay that restarted and knows only 1..3 (its highest) makes the station resend 4..6."""
    relay = FakeRelay(mosquitto.config)
    fill(outbox, range(1, 7))
    up = Uplink(STA, [mosquitto.config], outbox, clock=clock, backoff_base_s=0.05)
    up.start()
    try:
        wait_until(lambda: relay.received() == set(range(1, 7)), what="frames")
        n = len(relay.seqs)
        relay.ack(1, 3)
        wait_until(lambda: len(relay.seqs) >= n + 3, what="implied gaps resent")
        assert sorted(relay.seqs[n:]) == [4, 5, 6]
        assert outbox.available(FS) == (4, 6)
    finally:
        up.stop()
        relay.close()


def _subscribe(broker, topic):
    got = []
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    sub.on_message = lambda c, u, m: got.append((m.topic, json.loads(m.payload), m.retain))
    sub.connect(broker.host, broker.port)
    sub.subscribe(topic, qos=1)
    sub.loop_start()
    return sub, got


def test_status_online_retained_then_offline_on_clean_stop(mosquitto, outbox, clock):
    up = Uplink(STA, [mosquitto.config], outbox, clock=clock, backoff_base_s=0.05)
    up.start()
    assert up.wait_connected(10)
    wait_until(lambda: up.stats()["soh_published"] >= 1, what="first SOH")
    # A subscriber arriving later gets both from the broker's retained store (retain flag set).
    sub, got = _subscribe(mosquitto, f"ims/{STA}/#")
    try:
        wait_until(lambda: any(t.endswith("/status") and d["status"] == "online" and r for t, d, r in got),
                   what="retained online")
        wait_until(lambda: any(t.endswith("/soh") and r and d["outbox"]["frames"] == 0 for t, d, r in got),
                   what="retained SOH")
        up.stop()
        wait_until(lambda: got[-1][0].endswith("/status") and got[-1][1]["status"] == "offline", what="offline")
        assert got[-1][1]["reason"] == "stopped"
    finally:
        up.stop()
        sub.loop_stop()
        sub.disconnect()


_CHILD = textwrap.dedent("""
    import sys, time
    from types import SimpleNamespace
    from ims_station.broker import BrokerConfig
    from ims_station.edge.outbox import Outbox
    from ims_station.edge.uplink import Uplink
    clock = SimpleNamespace(time=time.time, monotonic=time.monotonic)
    box = Outbox(sys.argv[1], max_bytes=1 << 20, max_age_s=1e9, clock=clock)
    up = Uplink("STA01", [BrokerConfig(port=int(sys.argv[2]), keepalive=5)], box, clock=clock).start()
    up.wait_connected(10)
    print("connected", flush=True)
    time.sleep(60)
""")


def test_last_will_marks_the_station_offline_when_the_gateway_dies(mosquitto, tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path / "o.sqlite"), str(mosquitto.port)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "connected"
        got = []
        sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        sub.on_message = lambda c, u, m: got.append(json.loads(m.payload))
        sub.connect(mosquitto.host, mosquitto.port)
        sub.subscribe(f"ims/{STA}/status", qos=1)
        sub.loop_start()
        wait_until(lambda: got and got[-1]["status"] == "online", what="online")
        proc.kill()   # SIGKILL: no DISCONNECT, the broker publishes the will
        wait_until(lambda: got[-1]["status"] == "offline", what="Last Will")
        assert got[-1]["reason"] == "connection lost"
        sub.loop_stop()
        sub.disconnect()
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


@pytest.mark.parametrize("protocol", ["auto", "3.1.1"])
def test_broker_restart_loses_nothing(mosquitto, outbox, clock, protocol):
    relay = FakeRelay(mosquitto.config)
    up = Uplink(STA, [mosquitto.config], outbox, clock=clock, backoff_base_s=0.05, backoff_max_s=0.2,
                protocol=protocol)
    up.start()
    try:
        assert up.wait_connected(10)
        assert up.stats()["protocol"] == ("5" if protocol == "auto" else "3.1.1")
        fill(outbox, range(1, 21))
        up.notify()
        mosquitto.kill()                    # a crash, not a clean stop: its queue is gone
        fill(outbox, range(21, 41))         # the station keeps committing while the broker is down
        mosquitto.start()
        relay.connected.clear()
        assert relay.connected.wait(15)     # paho's own reconnect for the fake relay
        wait_until(lambda: up.connected, what="uplink reconnected")
        # The relay acknowledges what it has, periodically, as the real one does (also while it
        # has nothing: 0/-1); whatever the crash swallowed -- or what was published while the
        # relay had not re-subscribed yet -- is a gap or an implied gap, and is resent.
        deadline = time.monotonic() + 20
        while outbox.stats()["frames"] and time.monotonic() < deadline:
            got = relay.received()
            if got:
                lo, hi = min(got), max(got)
                relay.ack(lo, hi, _gaps(got, lo, hi))
            else:
                relay.ack(0, -1)
            time.sleep(0.2)
        assert relay.received() == set(range(1, 41))
        assert outbox.stats()["frames"] == 0
        assert up.stats()["connects"] >= 2
    finally:
        up.stop()
        relay.close()


def _gaps(got: set[int], lo: int, hi: int) -> list[tuple[int, int]]:
    out, start = [], None
    for s in range(lo, hi + 2):
        if s not in got and s <= hi and start is None:
            start = s
        elif (s in got or s > hi) and start is not None:
            out.append((start, s))
            start = None
    return out


def test_fail_over_to_the_second_broker(mosquitto, outbox, clock):
    dead = BrokerConfig(port=free_port())                 # nobody listens here
    relay = FakeRelay(mosquitto.config)
    fill(outbox, range(1, 6))
    up = Uplink(STA, [dead, mosquitto.config], outbox, clock=clock, backoff_base_s=0.02, backoff_max_s=0.1)
    up.start()
    try:
        wait_until(lambda: relay.received() == set(range(1, 6)), what="frames via the second broker")
        st = up.stats()
        assert st["failovers"] >= 1 and st["broker"] == f"127.0.0.1:{mosquitto.port}"
        relay.ack(1, 5)
        wait_until(lambda: outbox.stats()["frames"] == 0, what="acked via the second broker")
    finally:
        up.stop()
        relay.close()


def test_acknack_parsing_uses_the_codec_and_checks_the_frame_set(outbox, clock):
    """Sans broker: the acknack handler on its own (what the relay sends is CD-1.1, CRC checked)."""
    fill(outbox, [1, 2])
    up = Uplink(STA, [BrokerConfig()], outbox, clock=clock)
    other = cd11.Acknack(creator="RELAY", frame_set="OTHER:0", lowest=1, highest=2).to_bytes()
    up._handle_acknack(other)
    assert outbox.stats()["frames"] == 2 and up.stats()["acknacks_other_set"] == 1
    good = bytearray(cd11.Acknack(creator="RELAY", frame_set=FS, lowest=1, highest=2).to_bytes())
    good[-1] ^= 1                      # CRC broken
    with pytest.raises(cd11.Cd11Error):
        up._handle_acknack(bytes(good))
    good[-1] ^= 1
    items = outbox.next_to_send(10, live_window_s=1e9)     # published, and the broker PUBACKed them
    outbox.mark_sent([i.id for i in items])
    outbox.mark_pubacked([i.id for i in items])
    up._handle_acknack(bytes(good))
    assert outbox.stats()["frames"] == 0
    assert struct.unpack(">i", bytes(good[:4]))[0] == 6


def test_frames_in_flight_without_acknacks_reconnect_after_acknack_stall_s(mosquitto, outbox, clock):
    """[uplink] acknack_stall_s (docs/centre-cluster.md: a clustered broker can keep a failed-over
    session that never delivers the acknacks): frames in flight and no acknack on the connection
    for that long -> a new connection; an acknack, or nothing in flight, resets it; 0 is off."""
    relay = FakeRelay(mosquitto.config)
    fill(outbox, range(1, 4))
    up = Uplink(STA, [mosquitto.config], outbox, clock=clock, backoff_base_s=0.05, acknack_stall_s=60)
    up.start()
    try:
        wait_until(lambda: up.stats()["pubacks"] == 3, what="PUBACKs")
        clock.advance(59)
        time.sleep(0.3)
        assert up.stats()["acknack_stall_reconnects"] == 0 and up.stats()["connects"] == 1
        clock.advance(2)
        wait_until(lambda: up.stats()["acknack_stall_reconnects"] == 1 and up.stats()["connects"] == 2
                   and up.stats()["connected"], what="a new connection")
        c = up._mqtt.client                     # MQTT 5 here: clean_start on that one connection
        assert getattr(c, "_clean_start", None) is True and up._mqtt.clean_next is False
        relay.ack(1, 3)
        wait_until(lambda: outbox.stats()["frames"] == 0, what="acknack applied")
        clock.advance(120)                          # nothing in flight: no reason to reconnect
        time.sleep(0.3)
        assert up.stats()["acknack_stall_reconnects"] == 1 and up.stats()["connects"] == 2
    finally:
        up.stop()
        relay.close()


def test_acknack_qos_0_subscribes_outside_the_session_and_acknacks_still_apply(mosquitto, outbox, clock):
    """[uplink] acknack_qos = 0 (docs/centre-cluster.md: the acknack subscription out of the
    persistent session a clustered broker may fail to move): the broker grants QoS 0 and the
    relay's acknacks delete from the outbox as before; anything but 0 or 1 is refused."""
    with pytest.raises(UplinkError, match="acknack_qos"):
        Uplink(STA, [mosquitto.config], outbox, clock=clock, acknack_qos=2)
    relay = FakeRelay(mosquitto.config)
    fill(outbox, range(1, 4))
    up = Uplink(STA, [mosquitto.config], outbox, clock=clock, backoff_base_s=0.05, acknack_qos=0)
    granted = []
    orig = up._on_subscribed
    up._mqtt._on_subscribed = lambda c, mid, rcs: granted.extend(rc.value for rc in rcs) or orig(c, mid, rcs)
    up.start()
    try:
        wait_until(lambda: up.stats()["pubacks"] == 3, what="PUBACKs")
        assert granted == [0]
        relay.ack(1, 3)
        wait_until(lambda: outbox.stats()["frames"] == 0, what="acknack applied")
    finally:
        up.stop()
        relay.close()
