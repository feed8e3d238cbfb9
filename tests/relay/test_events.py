"""Issue 9, events: the relay's path for trigger events (``{p}/STA/events``, signed envelopes).

Every case through ``RelayCore.process`` (real archive and state store in a tmp dir): a good event
archived verbatim and acknowledged for frame set ``STA:events``; the same bytes again a duplicate,
other bytes under the same seq a conflict; unsigned, badly signed, another station's key, another
station's topic, garbage, a body that is not an event, an implausible time -- each quarantined
with its reason, counted and never archived.  ``ims-station relay events`` merges the ``on`` and
``off`` of an event.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from ims_station import cd11, envelope
from ims_station.cli import main
from ims_station.relay.core import Incoming, RelayCore

from .conftest import KEY_IDS

T = "ims/STA01/events"
NOW = 1_700_000_000.0          # FakeClock's default time()


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat().replace("+00:00", "Z")


def event_doc(seq: int, *, state: str = "on", event_id: str = "STA01-1", station: str = "STA01",
              t: float = NOW - 5, **extra) -> dict:
    doc = {"type": "trigger", "state": state, "event_id": event_id, "time": iso(t), "onset_s": t,
           "end_s": None if state == "on" else t + 3.5, "duration": None if state == "on" else 3.5,
           "peak": 7.25, "coincidence_sum": 2.0, "stations": [station], "channels": ["BHZ", "BHN"],
           "time_quality": 0, "algorithm": "recstalta", "decided_s": t + 0.5, "pre_s": 5.0,
           "post_s": 10.0, "clipped": False, "station": station, "seq": seq}
    doc.update(extra)
    return doc


def make_event(keys, seq: int = 0, *, sender: str = "STA01", key: str | None = "STA01",
               time_us: int | None = None, doc: dict | None = None, **kw) -> bytes:
    signer = keys.keystore.signer(KEY_IDS[key][0]) if key else None
    body = doc if doc is not None else event_doc(seq, station=sender, **kw)
    hseq = body.get("seq") if isinstance(body, dict) else None
    hseq = hseq if type(hseq) is int and 0 <= hseq <= envelope.MAX_SEQ else 0
    return envelope.pack_json("event", sender, body, time_us=int(NOW * 1e6) if time_us is None else time_us,
                              signer=signer, seq=hseq)


def new_core(tmp_path, keys, clock, stores, **kw):
    return RelayCore(keys.trust, stores.state(tmp_path / "state.sqlite"), stores.archive(tmp_path / "archive"),
                     clock=clock, acknack_interval_s=50.0, acknack_min_spacing_s=2.0, **kw)


@pytest.fixture
def core(tmp_path, keys, clock, stores):
    c = new_core(tmp_path, keys, clock, stores)
    yield c
    c.close()


def run(core, *items):
    return [o.result for o in core.process([Incoming(t, p, i) for i, (t, p) in enumerate(items)])]


def test_a_good_event_is_archived_verbatim_and_acknowledged_for_its_frame_set(core, keys, stores):
    ev0, ev1 = make_event(keys, 0), make_event(keys, 1, state="off")
    assert run(core, (T, ev0), (T, ev1)) == ["archived", "archived"]
    assert core.archive.read_event("STA01:events", 0) == ev0
    assert core.archive.read_event("STA01:events", 1) == ev1
    assert core.counters.events_archived == 2 and core.counters.quarantined == 0
    st = core.states["STA01:events"]
    assert (st.lowest, st.highest, st.gaps) == (0, 1, [])
    due = {fs: (topic, raw) for topic, fs, raw in core.due_acknacks()}
    topic, raw = due["STA01:events"]
    ack, _ = cd11.parse_frame(raw)
    assert topic == "ims/STA01/acknack" and (ack.frame_set, ack.lowest, ack.highest, ack.gaps) == \
        ("STA01:events", 0, 1, [])
    [(a, stored)] = [x for x in core.archive.iter_events("STA01") if x[0].sequence == 0]
    assert stored == ev0 and a.event_id == "STA01-1" and a.state == "on" and a.key_id == KEY_IDS["STA01"][0]
    if stores.pg:                       # the commit's content-addressed object
        assert a.file.startswith("objects/") and len(a.file) == len("objects/") + 65
    else:                               # the station's UTC-day file
        assert a.file.startswith("events/STA01/2023/STA01.2023.") and a.file.endswith(".ev")
    assert core.archive.stats()["events"] == 2 and core.archive.stats()["frames"] == 0


def test_a_missing_event_opens_a_gap_in_the_acknack(core, keys):
    assert run(core, (T, make_event(keys, 0)), (T, make_event(keys, 2))) == ["archived", "archived"]
    assert [(g.start, g.end) for g in core.states["STA01:events"].gaps] == [(1, 2)]


def test_same_seq_same_bytes_is_a_duplicate_other_bytes_a_conflict(core, keys):
    ev = make_event(keys, 0)
    other = make_event(keys, 0, event_id="STA01-2")
    assert run(core, (T, ev), (T, ev)) == ["archived", "duplicate"]
    assert run(core, (T, other)) == ["duplicate_conflict"]
    assert core.archive.read_event("STA01:events", 0) == ev            # never overwritten
    [q] = core.archive.quarantine_entries(reason="duplicate_conflict")
    assert q["frame_set"] == "STA01:events" and q["seq"] == 0
    assert core.counters.security_events == 1 and core.counters.duplicates == 1


def test_a_restarted_relay_does_not_archive_an_event_twice(tmp_path, keys, clock, stores):
    ev = make_event(keys, 0)
    c = new_core(tmp_path, keys, clock, stores)
    assert run(c, (T, ev)) == ["archived"]
    c.close()
    c = new_core(tmp_path, keys, clock, stores)
    try:
        assert run(c, (T, ev)) == ["duplicate"]
        assert len(list(c.archive.iter_events())) == 1
    finally:
        c.close()


@pytest.mark.parametrize("case,reason", [
    ("unsigned", "unsigned"),
    ("bad_signature", "event_signature"),
    ("other_stations_key", "wrong_station_key"),
    ("other_stations_topic", "station_mismatch"),
    ("body_names_other_station", "station_mismatch"),
    ("garbage", "malformed"),
    ("cd11_frame_on_events_topic", "malformed"),
    ("command_envelope", "malformed"),
    ("body_not_object", "malformed"),
    ("seq_missing", "malformed"),
    ("seq_negative", "malformed"),
    ("header_seq_not_body_seq", "malformed"),
    ("time_not_iso", "malformed"),
    ("channels_not_list", "malformed"),
    ("not_json", "malformed"),
    ("envelope_time_far_future", "implausible_time"),
    ("event_time_far_past", "implausible_time"),
])
def test_each_bad_event_is_quarantined_with_its_reason_and_never_archived(core, keys, factory, case, reason):
    topic = T
    if case == "unsigned":
        p = make_event(keys, key=None)
    elif case == "bad_signature":
        b = bytearray(make_event(keys))
        b[-1] ^= 0x40
        p = bytes(b)
    elif case == "other_stations_key":
        p = make_event(keys, key="STA02")
    elif case == "other_stations_topic":
        p, topic = make_event(keys), "ims/STA02/events"
    elif case == "body_names_other_station":
        p = make_event(keys, doc=event_doc(0, station="STA02"))
    elif case == "garbage":
        p = b"\x00garbage that is no envelope"
    elif case == "cd11_frame_on_events_topic":
        p = factory.build(8640 * 8700)
    elif case == "command_envelope":
        p = envelope.pack_json("command", "STA01", {"seq": 0, "station": "STA01"}, time_us=int(NOW * 1e6),
                               signer=keys.keystore.signer(KEY_IDS["STA01"][0]))
    elif case == "body_not_object":
        p = make_event(keys, doc=[1, 2, 3])
    elif case == "seq_missing":
        d = event_doc(0)
        del d["seq"]
        p = make_event(keys, doc=d)
    elif case == "header_seq_not_body_seq":
        p = envelope.pack_json("event", "STA01", event_doc(0), time_us=int(NOW * 1e6),
                               signer=keys.keystore.signer(KEY_IDS["STA01"][0]), seq=1)
    elif case == "seq_negative":
        p = make_event(keys, doc=event_doc(-1))
    elif case == "time_not_iso":
        p = make_event(keys, doc=event_doc(0, time="yesterday"))
    elif case == "channels_not_list":
        p = make_event(keys, doc=event_doc(0, channels="BHZ"))
    elif case == "not_json":
        p = envelope.pack("event", "STA01", b"{not json", time_us=int(NOW * 1e6),
                          signer=keys.keystore.signer(KEY_IDS["STA01"][0]))
    elif case == "envelope_time_far_future":
        p = make_event(keys, time_us=int((NOW + 3 * 86400) * 1e6))
    elif case == "event_time_far_past":
        p = make_event(keys, t=NOW - 90 * 86400)
    assert run(core, (topic, p)) == [reason]
    assert list(core.archive.iter_events()) == []
    assert "STA01:events" not in core.states
    assert core.counters.quarantined == 1 and core.counters.rejected[reason] == 1
    [q] = core.archive.quarantine_entries()
    assert q["reason"] == reason and core.archive.read_quarantined(q) == p


def test_an_event_on_the_cd11_topic_is_not_a_frame(core, keys):
    assert run(core, ("ims/STA01/cd11", make_event(keys))) == ["malformed"]


def test_without_required_signatures_an_unsigned_event_is_archived(tmp_path, keys, clock, stores):
    from ims_station.relay.verify import Verifier

    c = new_core(tmp_path, keys, clock, stores, verifier=Verifier(keys.trust, require_signatures=False))
    try:
        assert run(c, (T, make_event(keys, key=None))) == ["archived"]
        [(a, _)] = list(c.archive.iter_events())
        assert a.key_id == 0
    finally:
        c.close()


def test_frames_and_events_in_one_batch_keep_their_order(core, keys, factory):
    base = 8640 * 8700
    items = [("ims/STA01/cd11", factory.build(base)), (T, make_event(keys, 0)),
             ("ims/STA01/cd11", factory.build(base + 1)), (T, make_event(keys, 0)), (T, b"junk")]
    outs = core.process([Incoming(t, p, i) for i, (t, p) in enumerate(items)])
    assert [(o.token, o.result, o.frame_set) for o in outs] == [
        (0, "archived", "STA01:0"), (1, "archived", "STA01:events"), (2, "archived", "STA01:0"),
        (3, "duplicate", "STA01:events"), (4, "malformed", None)]
    assert set(core.states) == {"STA01:0", "STA01:events"}


def test_relay_events_cli_merges_on_and_off_and_filters(core, keys, tmp_path, capsys, stores):
    t1, t2 = NOW - 600, NOW - 60
    items = [make_event(keys, 0, event_id="E1", t=t1),
             make_event(keys, 1, event_id="E1", state="off", t=t1, peak=9.5, channels=["BHZ", "BHE"],
                        clipped=True),
             make_event(keys, 2, event_id="E2", t=t2)]
    assert run(core, *[(T, p) for p in items]) == ["archived"] * 3
    root = str(tmp_path / "archive")

    def events(*args):
        assert main(["relay", "events", *stores.cli(root), "--json", *args]) == 0
        return json.loads(capsys.readouterr().out)["events"]

    e1, e2 = events()
    assert (e1["event_id"], e1["time"], e1["duration"], e1["peak"], e1["clipped"], e1["open"]) == \
        ("E1", iso(t1), 3.5, 9.5, True, False)
    assert e1["channels"] == ["BHZ", "BHN", "BHE"] and e1["stations"] == ["STA01"]
    assert e1["key_ids"] == [KEY_IDS["STA01"][0]] and e1["states"] == ["on", "off"]
    assert (e2["event_id"], e2["duration"], e2["open"]) == ("E2", None, True)
    assert [e["event_id"] for e in events("--since", iso(t2 - 1))] == ["E2"]
    assert [e["event_id"] for e in events("--until", iso(t2 - 1), "--station", "STA01")] == ["E1"]
    assert events("--station", "STA02") == []
    assert main(["relay", "events", *stores.cli(root)]) == 0
    text = capsys.readouterr().out
    assert "E1" in text and "CLIPPED" in text and "open" in text
