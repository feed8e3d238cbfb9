"""Issue 10: IMS 2.0 messages on the uplink -- published on ``{p}/STA/ims20`` and deleted from the
outbox only by the relay's acknack of frame set ``STA:ims20`` (never by the data's or the events').

The messages are committed by ``edge/station.message_emitter(station, "ims20", ...)`` (what
``StageContext.emit_message("ims20", text)`` calls), signed with the station's key.
"""

from __future__ import annotations

from ims_station import envelope
from ims_station.broker import BrokerConfig
from ims_station.edge.station import event_emitter, message_emitter
from ims_station.edge.uplink import Uplink

from .test_uplink import FS, STA, fill
from .test_uplink_events import EFS, acknack, keys, rig  # noqa: F401 - fixtures
from .test_uplink_window import connected

IFS = f"{STA}:ims20"
TEXT = b"BEGIN IMS2.0\nMSG_TYPE DATA\nMSG_ID 1\nDATA_TYPE ALERT_FLOW\nSTA01 FLOW 2026/12/03 14:00:00.0\nlow\nSTOP\n"


def test_ims20_messages_go_on_their_topic_and_only_their_acknack_deletes_them(rig, clock, keys):  # noqa: F811
    fill(rig, range(2))
    sign = lambda at: keys[0].signer_for(STA, at)  # noqa: E731
    ev = event_emitter(STA, rig, clock, lambda: None, signer=sign)
    msg = message_emitter(STA, "ims20", rig, clock, lambda: None, signer=sign)
    ev({"type": "trigger", "event_id": "E0"})
    assert [msg(TEXT + b"\n" * i) for i in range(3)] == [0, 1, 2]
    up = Uplink(STA, [BrokerConfig()], rig, clock=clock, live_window_s=0)
    assert IFS in up.frame_sets
    c = connected(up)
    up._periodic(c)
    by_topic: dict[str, list[bytes]] = {}
    for t, p in c.published:
        by_topic.setdefault(t, []).append(p)
    sent = by_topic["ims/STA01/ims20"]
    assert len(sent) == 3 and len(by_topic["ims/STA01/events"]) == 1 and len(by_topic["ims/STA01/cd11"]) == 2
    envs = [envelope.unpack(p, kind="ims20") for p in sent]
    assert [e.seq for e in envs] == [0, 1, 2] and envs[0].body == TEXT and envs[0].sender == STA
    st = up.stats()
    assert (st["ims20_published"], st["events_published"], st["published"]) == (3, 1, 6)
    c.puback_all(up)
    acknack(up, c, FS, 0, 1)                       # data: frames only
    acknack(up, c, EFS, 0, 0)                      # events: the event only
    assert [it.seq for it, _ in rig.items("ims20")] == [0, 1, 2] and list(rig.items("events")) == []
    acknack(up, c, IFS, 0, 1)                      # ims20: the messages it covers, nothing else
    assert [it.seq for it, _ in rig.items("ims20")] == [2]
    st = up.stats()
    assert (st["frames_acked"], st["events_acked"], st["ims20_acked"]) == (2, 1, 2)
    assert st["last_acknack"]["frame_set"] == IFS and st["acknacks_other_set"] == 0
    acknack(up, c, "STA02:ims20", 0, 2)            # not ours
    assert up.stats()["acknacks_other_set"] == 1 and [it.seq for it, _ in rig.items("ims20")] == [2]
