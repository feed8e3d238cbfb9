"""Issue 9, events on the station side: the emitter's signed envelope in the outbox, each outbox kind
on its own topic, and the relay's acknack of frame set ``STA:events`` deleting events exactly as
the acknack of ``STA:0`` deletes frames (no broker: the recording client of the window tests)."""

from __future__ import annotations

import types

import pytest

from ims_station import cd11, envelope, topics
from ims_station.broker import BrokerConfig
from ims_station.edge.outbox import Outbox
from ims_station.edge.station import event_emitter
from ims_station.edge.uplink import Uplink

from .test_uplink import FS, STA, T0, fill
from .test_uplink_window import connected

EFS = f"{STA}:events"


@pytest.fixture
def rig(tmp_path, clock):
    box = Outbox(tmp_path / "outbox.sqlite", max_bytes=10 << 20, max_age_s=7 * 86400, clock=clock)
    clock.t = T0 + 10 * 30
    yield box
    box.close()


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    from ims_station.auth import Keystore, TrustStore, export_public, generate_key

    ks, tr = tmp_path_factory.mktemp("ks"), tmp_path_factory.mktemp("trust")
    generate_key("ed25519", 11, ks, station=STA, valid_from="2000-01-01T00:00:00Z")
    export_public(ks, 11, tr)
    return Keystore.load(ks), TrustStore.load(tr)


def acknack(up, client, frame_set, lowest, highest, gaps=()):
    wire = cd11.Acknack(creator="RELAY", frame_set=frame_set, lowest=lowest, highest=highest,
                        gaps=list(gaps)).to_bytes()
    up._on_message(client, None, types.SimpleNamespace(topic=topics.topic("ims", STA, "acknack"), payload=wire))


def test_each_outbox_kind_has_one_topic():
    assert topics.OUTBOX_TOPICS == {"cd11": "cd11", "events": "events", "ims20": "ims20"}
    assert all(t in topics.KINDS for t in topics.OUTBOX_TOPICS.values())
    assert topics.outbox_topic("ims", STA, "events") == "ims/STA01/events"
    assert topics.outbox_topic("x/y", STA, "cd11") == "x/y/STA01/cd11"
    with pytest.raises(ValueError, match="no topic"):
        topics.outbox_topic("ims", STA, "soh")
    assert topics.events_frame_set(STA) == EFS


def test_the_emitter_commits_a_signed_envelope_with_the_next_seq(rig, clock, keys):
    keystore, trust = keys
    notified = []
    signed_at = []

    def signer(at):
        signed_at.append(at)
        return keystore.signer_for(STA, at)

    emit = event_emitter(STA, rig, clock, lambda: notified.append(1), signer=signer)
    assert emit({"type": "trigger", "state": "on", "event_id": "E1"}) == 0
    clock.advance(2.5)
    assert emit({"type": "trigger", "state": "off", "event_id": "E1"}) == 1
    assert notified == [1, 1] and rig.highest_committed(EFS) == 1
    items = [it for it, _state in rig.items("events")]
    assert [(it.kind, it.frame_set, it.seq) for it in items] == [("events", EFS, 0), ("events", EFS, 1)]
    env = envelope.unpack(items[1].payload, kind="event")
    assert env.sender == STA and env.key_id == 11 and env.time_us == int(clock.time() * 1e6)
    assert signed_at[1].timestamp() == clock.time()
    assert envelope.verify(env, trust, STA).ok
    assert env.json() == {"type": "trigger", "state": "off", "event_id": "E1", "station": STA, "seq": 1}


def test_without_a_key_the_event_is_committed_unsigned(rig, clock):
    emit = event_emitter(STA, rig, clock, lambda: None, signer=lambda at: None)
    emit({"type": "trigger"})
    emit2 = event_emitter(STA, rig, clock, lambda: None)
    assert emit2({"type": "trigger"}) == 1                  # the sequence survives another emitter
    for it, _ in rig.items("events"):
        assert envelope.unpack(it.payload).key_id == 0


def test_events_go_on_the_events_topic_and_the_relays_acknack_deletes_them(rig, clock, keys):
    fill(rig, range(3))
    emit = event_emitter(STA, rig, clock, lambda: None, signer=lambda at: keys[0].signer_for(STA, at))
    for i in range(3):
        emit({"type": "trigger", "event_id": f"E{i}"})
    up = Uplink(STA, [BrokerConfig()], rig, clock=clock, live_window_s=0)
    assert up.frame_sets == {FS, EFS, f"{STA}:ims20"}
    c = connected(up)
    up._periodic(c)
    by_topic = {}
    for t, p in c.published:
        by_topic.setdefault(t, []).append(p)
    assert len(by_topic["ims/STA01/cd11"]) == 3 and len(by_topic["ims/STA01/events"]) == 3
    assert all(envelope.unpack(p, kind="event").sender == STA for p in by_topic["ims/STA01/events"])
    assert up.stats()["events_published"] == 3 and up.stats()["published"] == 6
    c.puback_all(up)
    acknack(up, c, FS, 0, 2)                       # the data's acknack leaves the events alone
    assert [it.seq for it, _ in rig.items("events")] == [0, 1, 2] and list(rig.items("cd11")) == []
    acknack(up, c, EFS, 0, 1)                      # the events' acknack deletes the events it covers
    assert [it.seq for it, _ in rig.items("events")] == [2]
    st = up.stats()
    assert (st["frames_acked"], st["events_acked"], st["acknacks_other_set"]) == (3, 2, 0)
    assert st["last_acknack"]["frame_set"] == EFS
    acknack(up, c, "STA02:events", 0, 2)           # not ours
    assert up.stats()["acknacks_other_set"] == 1 and [it.seq for it, _ in rig.items("events")] == [2]


def test_an_outbox_kind_without_a_topic_is_counted_and_never_sent(rig, clock):
    fill(rig, range(2))
    rig.put("mystery", f"{STA}:x", 0, T0, b"?")
    up = Uplink(STA, [BrokerConfig()], rig, clock=clock, live_window_s=0)
    c = connected(up)
    up._periodic(c)
    assert [t for t, _ in c.published if not t.endswith(("/status", "/soh"))] == ["ims/STA01/cd11"] * 2
    assert up.stats()["unknown_kind"] == 1
