"""The uplink's sending window without a broker: the ``max_unacked`` cap, the ack-timeout resend on
the injected clock, and no frame before the acknack subscription's SUBACK.

The uplink's hooks (``_periodic``, ``_on_publish``, ``_on_message``) and the session's paho callbacks
(CONNACK, SUBACK) are what the session thread calls inside paho's loop; here a recording client
stands in for paho and the test delivers CONNACK and SUBACK itself, so protocol time is the fake
clock's (the uplink is given it; nothing is patched) and the 300-s timeout takes no wall time.
"""

from __future__ import annotations

import types

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from ims_station import cd11, topics
from ims_station.broker import BrokerConfig
from ims_station.edge.outbox import Outbox
from ims_station.edge.uplink import Uplink

from .test_uplink import FS, STA, T0, fill


class RecordingClient:
    """What the uplink uses of a paho client: publish (PUBACK is up to the test) and subscribe."""

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []
        self.subscriptions: dict[int, str] = {}       # mid -> topic filter
        self._mid = 0

    def publish(self, topic, payload, qos=0, retain=False):
        self._mid += 1
        self.published.append((topic, bytes(payload)))
        return types.SimpleNamespace(rc=mqtt.MQTT_ERR_SUCCESS, mid=self._mid, is_published=lambda: True)

    def subscribe(self, topic, qos=0, **kw):
        self._mid += 1
        self.subscriptions[self._mid] = topic
        return (mqtt.MQTT_ERR_SUCCESS, self._mid)

    def connack(self, up: Uplink) -> None:
        """The broker accepts the connection (the session's own on_connect handler runs)."""
        flags = types.SimpleNamespace(session_present=False)
        up._mqtt._handle_connect(self, None, flags, ReasonCode(PacketTypes.CONNACK, "Success"), None)

    def suback(self, up: Uplink, *, granted: bool = True) -> None:
        """The broker answers every SUBSCRIBE sent so far (QoS 1 granted, or 0x87 not authorised)."""
        code = 1 if granted else 0x87
        for mid in list(self.subscriptions):
            up._mqtt._handle_subscribe(self, None, mid, [ReasonCode(PacketTypes.SUBACK, identifier=code)], None)
        self.subscriptions.clear()

    def frames(self) -> list[int]:
        return [cd11.parse_frame(p)[0].sequence for t, p in self.published if t.endswith("/cd11")]

    def puback_all(self, up: Uplink) -> None:
        for mid in list(up._pending_mids):
            up._on_publish(self, None, mid, 0, None)


@pytest.fixture
def rig(tmp_path, clock):
    box = Outbox(tmp_path / "outbox.sqlite", max_bytes=10 << 20, max_age_s=7 * 86400, clock=clock)
    clock.t = T0 + 10 * 30
    yield box
    box.close()


def connected(up: Uplink) -> RecordingClient:
    """A client on which CONNACK and the acknack subscription's SUBACK have arrived."""
    c = RecordingClient()
    c.connack(up)
    assert c.subscriptions == {1: topics.topic("ims", STA, "acknack")}
    c.suback(up)
    assert up.connected
    return c


def acknack(up: Uplink, client: RecordingClient, lowest: int, highest: int, gaps=()) -> None:
    wire = cd11.Acknack(creator="RELAY", frame_set=FS, lowest=lowest, highest=highest, gaps=list(gaps)).to_bytes()
    up._on_message(client, None, types.SimpleNamespace(topic=topics.topic("ims", STA, "acknack"), payload=wire))


def test_max_unacked_caps_frames_sent_but_not_yet_acknowledged_by_the_relay(rig, clock):
    fill(rig, range(20))
    up = Uplink(STA, [BrokerConfig()], rig, clock=clock, inflight=32, max_unacked=5, live_window_s=0)
    c = connected(up)
    up._periodic(c)
    assert c.frames() == [0, 1, 2, 3, 4]            # oldest first, and only max_unacked of them
    c.puback_all(up)                                # the broker took them: that frees nothing
    clock.advance(1)
    up._periodic(c)
    assert c.frames() == [0, 1, 2, 3, 4] and rig.in_flight_count() == 5
    acknack(up, c, 0, 2)                            # the relay has 0..2: three places free
    # (3 and 4 lie above its range, but were sent within the resend hold-off: still on their way)
    clock.advance(1)
    up._periodic(c)
    assert c.frames() == [0, 1, 2, 3, 4, 5, 6, 7] and rig.stats()["frames"] == 17
    assert up.stats()["frames_acked"] == 3


def test_inflight_caps_frames_awaiting_puback_below_max_unacked(rig, clock):
    fill(rig, range(20))
    up = Uplink(STA, [BrokerConfig()], rig, clock=clock, inflight=3, max_unacked=100, live_window_s=0)
    c = connected(up)
    up._periodic(c)
    assert c.frames() == [0, 1, 2] and up.stats()["awaiting_puback"] == 3
    up._on_publish(c, None, next(iter(up._pending_mids)), 0, None)
    up._pump(c)
    assert c.frames() == [0, 1, 2, 3]


def test_frames_never_acknacked_are_resent_after_the_ack_timeout(rig, clock):
    fill(rig, range(4))
    up = Uplink(STA, [BrokerConfig()], rig, clock=clock, live_window_s=0)      # ack_timeout_s = 300
    assert up.ack_timeout_s == 300
    c = connected(up)
    up._periodic(c)
    c.puback_all(up)
    assert c.frames() == [0, 1, 2, 3]
    # The relay stays silent (it lost its state, its acknacks are lost): no acknack says anything
    # about these frames, so only the timeout can bring them back.
    for _ in range(9):                              # 270 s: an acknack may still come
        clock.advance(30)
        up._periodic(c)
    assert c.frames() == [0, 1, 2, 3] and up.stats()["requeued_ack_timeout"] == 0
    clock.advance(31)                               # 301 s after sending: due again
    up._periodic(c)
    assert c.frames() == [0, 1, 2, 3, 0, 1, 2, 3]
    st = up.stats()
    assert st["requeued_ack_timeout"] == 4 and st["resent"] == 4
    c.puback_all(up)
    acknack(up, c, 0, 3)
    assert rig.stats()["frames"] == 0


def test_no_frame_is_published_before_the_acknack_subscription_is_acknowledged(rig, clock):
    fill(rig, range(3))
    up = Uplink(STA, [BrokerConfig()], rig, clock=clock, live_window_s=0)
    c = RecordingClient()
    c.connack(up)
    assert not up.connected and not up.wait_connected(0)
    up._periodic(c)
    clock.advance(60)
    up._periodic(c)
    assert c.frames() == []                         # status and SOH may go, frames wait for SUBACK
    assert [t for t, _ in c.published if t.endswith("/status")] == [topics.topic("ims", STA, "status")]
    c.suback(up)
    assert up.wait_connected(0)
    up._periodic(c)
    assert c.frames() == [0, 1, 2]


def test_a_refused_acknack_subscription_is_counted_and_frames_still_go(rig, clock):
    """An ACL without the acknack topic: the archive still gets the data; the uplink never reports
    itself connected on that connection (it cannot hear the relay)."""
    fill(rig, range(2))
    up = Uplink(STA, [BrokerConfig()], rig, clock=clock, live_window_s=0)
    c = RecordingClient()
    c.connack(up)
    c.suback(up, granted=False)
    assert not up.connected and up.stats()["acknack_subscribe_refused"] == 1
    up._periodic(c)
    assert c.frames() == [0, 1]


def test_the_ack_timeout_runs_on_the_injected_clock_not_on_wall_time(rig, clock):
    """Wall time passes (a real paho loop), the injected clock does not: nothing is resent."""
    fill(rig, range(2))
    up = Uplink(STA, [BrokerConfig()], rig, clock=clock, live_window_s=0, ack_timeout_s=300)
    c = connected(up)
    up._periodic(c)
    c.puback_all(up)
    wall = types.SimpleNamespace(t=0.0, monotonic=lambda: wall.t)
    up._mqtt.clock = wall                           # the session's wall clock runs a day ahead
    for _ in range(10):
        wall.t += 8640
        up._periodic(c)
    assert c.frames() == [0, 1] and up.stats()["requeued_ack_timeout"] == 0
    clock.advance(301)
    up._periodic(c)
    assert c.frames() == [0, 1, 0, 1] and up.stats()["requeued_ack_timeout"] == 2


# -- acknack authentication (docs/uplink.md, "Acknack authentication") ----------------------------

def forged(up: Uplink, client: RecordingClient, wire: bytes) -> None:
    up._on_message(client, None, types.SimpleNamespace(topic=topics.topic("ims", STA, "acknack"), payload=wire))


def test_an_acknack_deletes_only_frames_the_broker_pubacked_and_one_beyond_them_is_suspicious(rig, clock):
    """Without signatures a forged acknack 'lowest = min, highest = max' used to empty the outbox."""
    fill(rig, range(10))
    up = Uplink(STA, [BrokerConfig()], rig, clock=clock, inflight=4, live_window_s=0)
    c = connected(up)
    up._periodic(c)                                 # 0..3 published
    assert c.frames() == [0, 1, 2, 3]
    for mid in sorted(up._pending_mids)[:2]:        # the broker PUBACKed 0 and 1 only
        up._on_publish(c, None, mid, 0, None)
    forged(up, c, cd11.Acknack(creator="RELAY", frame_set=FS, lowest=-(2**31), highest=2**31 - 1).to_bytes())
    # 0 and 1 went (the broker took them), 2 and 3 await their PUBACK, 4..9 were never sent.
    assert sorted(i.seq for i in rig.next_to_send(100, live_window_s=0)) == [4, 5, 6, 7, 8, 9]
    assert rig.stats()["frames"] == 8 and rig.in_flight_count() == 2
    st = up.stats()
    assert st["frames_acked"] == 2 and st["acknacks_suspicious"] == 1
    acknack(up, c, 0, 3)                            # the relay's own view, within what was sent
    assert up.stats()["acknacks_suspicious"] == 1   # not suspicious
    assert rig.stats()["frames"] == 8               # 2 and 3 still wait for their PUBACK
    c.puback_all(up)
    acknack(up, c, 0, 3)
    assert rig.stats()["frames"] == 6 and up.stats()["frames_acked"] == 4


def test_pubacks_are_recorded_durably_so_acknacks_after_a_restart_can_delete(tmp_path, clock):
    clock.t = T0 + 10 * 30
    box = Outbox(tmp_path / "o.sqlite", max_bytes=10 << 20, max_age_s=7 * 86400, clock=clock)
    fill(box, range(3))
    up = Uplink(STA, [BrokerConfig()], box, clock=clock, live_window_s=0)
    c = connected(up)
    up._periodic(c)
    c.puback_all(up)
    up._periodic(c)                                 # records the PUBACKs in the outbox
    box.close()
    box = Outbox(tmp_path / "o.sqlite", max_bytes=10 << 20, max_age_s=7 * 86400, clock=clock)
    assert box.highest_sent(FS) == 2
    assert box.apply_acknack(FS, 0, 2, []) == 3
    box.close()


@pytest.fixture(scope="module")
def relay_keys(tmp_path_factory):
    """The relay's acknack key (id 900, trusted for creator 'RELAY') and a stranger's (901, same
    name, not in the station's trust store), as ``ims-station keys generate/export`` make them."""
    from ims_station.auth import Keystore, TrustStore, export_public, generate_key

    ks, tr = tmp_path_factory.mktemp("relay-keys"), tmp_path_factory.mktemp("station-trust")
    for kid in (900, 901, 902):
        generate_key("ed25519", kid, ks, station="RELAY", valid_from="2000-01-01T00:00:00Z")
    export_public(ks, 900, tr)
    export_public(ks, 902, tr)                      # trusted, but not pinned as an acknack key
    return Keystore.load(ks), TrustStore.load(tr)


def test_with_a_trust_store_only_acknacks_signed_by_the_relay_are_applied(rig, clock, relay_keys):
    keystore, trust = relay_keys
    fill(rig, range(4))
    up = Uplink(STA, [BrokerConfig()], rig, clock=clock, live_window_s=0, acknack_trust=trust,
                acknack_key_ids=[900])
    c = connected(up)
    up._periodic(c)
    c.puback_all(up)

    def ack(signer=None, creator="RELAY"):
        return cd11.Acknack(creator=creator, frame_set=FS, lowest=0, highest=3).to_bytes(signer)

    tampered = bytearray(ack(keystore.signer(900)))
    tampered[-20] ^= 1                              # in the signature; CRC recomputed
    tampered = cd11.parse_frame(bytes(tampered), check_crc=False)[0].to_bytes()
    forged(up, c, ack())                            # unsigned
    forged(up, c, ack(keystore.signer(901)))        # a key the station does not trust
    forged(up, c, ack(keystore.signer(902)))        # trusted key, but not the relay's acknack key
    forged(up, c, ack(keystore.signer(900), creator="EVIL"))   # key not trusted for that creator
    forged(up, c, tampered)
    st = up.stats()
    assert (st["acknacks_unsigned"], st["acknacks_bad_signature"], st["acknacks"]) == (1, 4, 0)
    assert rig.stats()["frames"] == 4
    forged(up, c, ack(keystore.signer(900)))
    assert rig.stats()["frames"] == 0 and up.stats()["acknacks"] == 1


def test_key_ids_without_a_trust_store_are_refused(rig, clock):
    from ims_station.edge.uplink import UplinkError

    with pytest.raises(UplinkError, match="no acknack trust store"):
        Uplink(STA, [BrokerConfig()], rig, clock=clock, acknack_key_ids=[900])
