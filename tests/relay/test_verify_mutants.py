"""The relay's acceptance checks stated exactly: where the time windows end (to the millisecond),
what an operator reads in a rejection's detail, which event bodies are refused and why.  Written
from the survivors of a mutation run (docs/testing.md, "Mutation testing"); the tampering cases
end to end are in test_core.py, the events' in test_events.py."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from ims_station.relay.verify import (
    MAX_EVENT_LIST,
    MAX_EVENT_SEQ,
    MAX_EVENT_TEXT,
    Control,
    Rejection,
    StationPolicy,
    Verified,
    VerifiedEvent,
    VerifiedIms20,
    Verifier,
    _event_problem,
    _event_time_ms,
    check_message_time,
    check_sequence,
    check_time_window,
    sequence_index,
)

from .conftest import KEY_IDS, nominal_of

NOW_S = 1_700_000_000.0                 # 2023-11-14 22:13:20 UTC
NOW_MS = 1_700_000_000_000
EPOCH_2000_MS = 946_684_800_000


def verified(nominal_ms: int, frame_ms: int = 10_000, seq: int = 77) -> Verified:
    frame = SimpleNamespace(nominal_time="2023318 22:13:20.000")     # only its text is quoted
    return Verified(frame, "STA01", "STA01:0", seq, nominal_ms, frame_ms)


# -- check_time_window ------------------------------------------------------------------------------
def test_time_window_accepts_a_frame_exactly_at_either_bound():
    assert check_time_window(verified(NOW_MS - 3_600_000), NOW_S, 3600.0, 60.0) is None
    assert check_time_window(verified(NOW_MS + 60_000 - 10_000), NOW_S, 3600.0, 60.0) is None   # ends at the bound
    assert check_time_window(verified(NOW_MS + 60_000, frame_ms=0), NOW_S, 3600.0, 60.0) is None
    # a negative frame length counts as 0
    assert check_time_window(verified(NOW_MS + 60_000, frame_ms=-5000), NOW_S, 3600.0, 60.0) is None


def test_time_window_refuses_a_frame_one_ms_too_old_saying_by_how_much():
    r = check_time_window(verified(NOW_MS - 3_600_001), NOW_S, 3600.0, 60.0)
    assert r == Rejection("implausible_time", "STA01:0 seq 77: nominal time 2023318 22:13:20.000 is 3600 s "
                          "before the relay's clock (max_past_s 3600)", "STA01:0", 77)
    r = check_time_window(verified(NOW_MS - 90_000_000), NOW_S, 2.5, None)
    assert r.detail == ("STA01:0 seq 77: nominal time 2023318 22:13:20.000 is 90000 s before the relay's "
                        "clock (max_past_s 2.5)")


def test_time_window_refuses_a_frame_ending_one_ms_too_late_saying_by_how_much():
    r = check_time_window(verified(NOW_MS + 60_001 - 10_000), NOW_S, 3600.0, 60.0)
    assert r == Rejection("implausible_time", "STA01:0 seq 77: frame ending 60 s after the relay's clock "
                          "(nominal time 2023318 22:13:20.000 + 10000 ms; max_future_s 60)", "STA01:0", 77)
    r = check_time_window(verified(NOW_MS + 7_200_000, frame_ms=0), NOW_S, None, 0.5)
    assert r.detail == ("STA01:0 seq 77: frame ending 7200 s after the relay's clock (nominal time "
                        "2023318 22:13:20.000 + 0 ms; max_future_s 0.5)")


def test_time_window_bounds_are_milliseconds_of_fractional_seconds():
    now_s = NOW_S + 0.25                               # the relay's clock between two seconds
    assert check_time_window(verified(NOW_MS + 250 - 1500), now_s, 1.5, None) is None
    assert check_time_window(verified(NOW_MS + 250 - 1501), now_s, 1.5, None) is not None
    assert check_time_window(verified(NOW_MS + 250 + 1500, frame_ms=0), now_s, None, 1.5) is None
    assert check_time_window(verified(NOW_MS + 250 + 1501, frame_ms=0), now_s, None, 1.5) is not None


def test_time_window_without_bounds_accepts_any_time():
    assert check_time_window(verified(0), NOW_S, None, None) is None
    assert check_time_window(verified(10 * NOW_MS), NOW_S, None, None) is None


# -- check_sequence ---------------------------------------------------------------------------------
def test_sequence_index_counts_frames_since_2000():
    assert sequence_index(EPOCH_2000_MS, 10_000) == 0
    assert sequence_index(EPOCH_2000_MS + 10_000 * 123 + 9_999, 10_000) == 123
    assert sequence_index(EPOCH_2000_MS - 1, 10_000) == -1
    assert sequence_index(EPOCH_2000_MS + 42, 0) == 42           # a zero frame length counts as 1 ms
    assert sequence_index(EPOCH_2000_MS + 42, -3) == 42


def test_check_sequence_learns_and_then_enforces_the_offset():
    nominal = EPOCH_2000_MS + 10_000 * 1000
    assert check_sequence(verified(nominal, seq=1000), None) == (0, None)
    assert check_sequence(verified(nominal, seq=1005), None) == (5, None)
    assert check_sequence(verified(nominal, seq=1005), 5) == (5, None)
    off, r = check_sequence(verified(nominal, seq=2000), 5)
    assert off == 1000
    assert r == Rejection("sequence_time", "STA01:0 seq 2000: nominal time 2023318 22:13:20.000 implies seq "
                          "1005 (offset 5 learned for this frame set); replayed or renumbered", "STA01:0", 2000)


# -- check_message_time -----------------------------------------------------------------------------
def event(sent_ms: int, time_ms: int, seq: int = 9) -> VerifiedEvent:
    env = SimpleNamespace(time_us=sent_ms * 1000 + 999, key_id=5)
    return VerifiedEvent(env, {}, "STA01", "STA01:events", seq, time_ms, b"")


def ims20(sent_ms: int, seq: int = 4) -> VerifiedIms20:
    env = SimpleNamespace(time_us=sent_ms * 1000, key_id=5, body=b"BEGIN IMS2.0")
    return VerifiedIms20(env, None, "STA01", "STA01:ims20", seq, 0, b"")


def test_message_time_accepts_both_times_at_the_bounds():
    assert check_message_time(event(NOW_MS - 60_000, NOW_MS + 30_000), NOW_S, 60.0, 30.0) is None
    assert check_message_time(event(NOW_MS + 30_000, NOW_MS - 60_000), NOW_S, 60.0, 30.0) is None
    assert check_message_time(event(0, 10 * NOW_MS), NOW_S, None, None) is None
    assert check_message_time(ims20(NOW_MS + 30_000), NOW_S, 60.0, 30.0) is None


def test_message_time_names_which_time_is_out_and_by_how_much():
    assert check_message_time(event(NOW_MS - 60_001, NOW_MS), NOW_S, 60.0, 30.0) == Rejection(
        "implausible_time", "STA01:events seq 9: envelope time is 60 s before the relay's clock (max_past_s 60)",
        "STA01:events", 9)
    assert check_message_time(event(NOW_MS + 30_001, NOW_MS), NOW_S, 60.0, 30.0) == Rejection(
        "implausible_time", "STA01:events seq 9: envelope time is 30 s after the relay's clock (max_future_s 30)",
        "STA01:events", 9)
    assert check_message_time(event(NOW_MS, NOW_MS - 7_200_000), NOW_S, 60.0, 30.0) == Rejection(
        "implausible_time", "STA01:events seq 9: event time is 7200 s before the relay's clock (max_past_s 60)",
        "STA01:events", 9)
    assert check_message_time(event(NOW_MS, NOW_MS + 7_200_000), NOW_S, 60.0, 30.5) == Rejection(
        "implausible_time", "STA01:events seq 9: event time is 7200 s after the relay's clock (max_future_s 30.5)",
        "STA01:events", 9)
    assert check_message_time(ims20(NOW_MS - 60_001), NOW_S, 60.0, 30.0) == Rejection(
        "implausible_time", "STA01:ims20 seq 4: envelope time is 60 s before the relay's clock (max_past_s 60)",
        "STA01:ims20", 4)


def test_message_time_bounds_are_milliseconds_of_fractional_seconds():
    now_s = NOW_S + 0.25
    assert check_message_time(ims20(NOW_MS + 250 - 1500), now_s, 1.5, 1.5) is None
    assert check_message_time(ims20(NOW_MS + 250 - 1501), now_s, 1.5, 1.5) is not None
    assert check_message_time(ims20(NOW_MS + 250 + 1500), now_s, 1.5, 1.5) is None
    assert check_message_time(ims20(NOW_MS + 250 + 1501), now_s, 1.5, 1.5) is not None


# -- event bodies -----------------------------------------------------------------------------------
OK = {"seq": 3, "station": "STA01"}


@pytest.mark.parametrize("doc", [
    OK,
    {"seq": 0, "station": ""},
    {"seq": MAX_EVENT_SEQ, "station": "STA01"},
    dict(OK, type="x" * MAX_EVENT_TEXT, state="confirmed", event_id="e1", algorithm="stalta",
         time="2023-11-14T22:13:20", pick="2023-11-14T22:13:21.5+00:00"),
    dict(OK, stations=["A"] * MAX_EVENT_LIST, channels=["x" * MAX_EVENT_TEXT]),
    dict(OK, stations=[], onset_s=1, pick_s=1.5, end_s=-2, duration=0, peak=1e9, coincidence_sum=2,
         decided_s=0.0, pre_s=3, post_s=4),
    dict(OK, type=None, time=None, stations=None, peak=None),
])
def test_event_bodies_that_are_accepted(doc):
    assert _event_problem(doc) == ""


@pytest.mark.parametrize("doc, problem", [
    ([1, 2], "a JSON list, not an object"),
    ("seq", "a JSON str, not an object"),
    ({"station": "STA01"}, f"seq None is not an integer in 0..{MAX_EVENT_SEQ}"),
    ({"seq": -1, "station": "STA01"}, f"seq -1 is not an integer in 0..{MAX_EVENT_SEQ}"),
    ({"seq": MAX_EVENT_SEQ + 1, "station": "STA01"}, f"seq {MAX_EVENT_SEQ + 1} is not an integer in 0..{MAX_EVENT_SEQ}"),
    ({"seq": True, "station": "STA01"}, f"seq True is not an integer in 0..{MAX_EVENT_SEQ}"),
    ({"seq": 1.0, "station": "STA01"}, f"seq 1.0 is not an integer in 0..{MAX_EVENT_SEQ}"),
    ({"seq": "1", "station": "STA01"}, f"seq '1' is not an integer in 0..{MAX_EVENT_SEQ}"),
    ({"seq": 1}, "station missing or not a string"),
    ({"seq": 1, "station": 5}, "station missing or not a string"),
    (dict(OK, type="x" * (MAX_EVENT_TEXT + 1)), f"type is not a string of at most {MAX_EVENT_TEXT} characters"),
    (dict(OK, state=1), f"state is not a string of at most {MAX_EVENT_TEXT} characters"),
    (dict(OK, event_id=["e"]), f"event_id is not a string of at most {MAX_EVENT_TEXT} characters"),
    (dict(OK, algorithm="a" * 65), f"algorithm is not a string of at most {MAX_EVENT_TEXT} characters"),
    (dict(OK, time=1700000000), f"time is not a string of at most {MAX_EVENT_TEXT} characters"),
    (dict(OK, pick="p" * 65), f"pick is not a string of at most {MAX_EVENT_TEXT} characters"),
    (dict(OK, time="yesterday"), "time 'yesterday' is not an ISO 8601 time"),
    (dict(OK, pick="2023-13-01T00:00:00"), "pick '2023-13-01T00:00:00' is not an ISO 8601 time"),
    (dict(OK, stations=["A"] * (MAX_EVENT_LIST + 1)), f"stations is not a list of at most {MAX_EVENT_LIST} short strings"),
    (dict(OK, stations="A"), f"stations is not a list of at most {MAX_EVENT_LIST} short strings"),
    (dict(OK, channels=["BHZ", 1]), f"channels is not a list of at most {MAX_EVENT_LIST} short strings"),
    (dict(OK, channels=["x" * (MAX_EVENT_TEXT + 1)]), f"channels is not a list of at most {MAX_EVENT_LIST} short strings"),
    (dict(OK, onset_s="1.5"), "onset_s is not a number"),
    (dict(OK, pick_s=True), "pick_s is not a number"),
    (dict(OK, end_s=[1]), "end_s is not a number"),
    (dict(OK, duration=False), "duration is not a number"),
    (dict(OK, peak="high"), "peak is not a number"),
    (dict(OK, coincidence_sum={}), "coincidence_sum is not a number"),
    (dict(OK, decided_s="now"), "decided_s is not a number"),
    (dict(OK, pre_s="1"), "pre_s is not a number"),
    (dict(OK, post_s="1"), "post_s is not a number"),
])
def test_event_bodies_that_are_refused_and_why(doc, problem):
    assert _event_problem(doc) == problem


def test_event_time_is_iso_8601_naive_meaning_utc():
    assert _event_time_ms("2023-11-14T22:13:20") == NOW_MS
    assert _event_time_ms("2023-11-14T22:13:20.250") == NOW_MS + 250
    assert _event_time_ms("2023-11-14T23:13:20+01:00") == NOW_MS
    assert _event_time_ms("1970-01-01T00:00:00Z") == 0
    # whole milliseconds, microseconds dropped
    assert _event_time_ms("2023-11-14T22:13:20.000999") == NOW_MS
    assert type(_event_time_ms("2023-11-14T22:13:20.000999")) is int
    # the longest time accepted is MAX_EVENT_TEXT characters (Python reads any number of digits of a fraction)
    longest = "2023-11-14T22:13:20.5" + "0" * (MAX_EVENT_TEXT - 21)
    assert len(longest) == MAX_EVENT_TEXT and _event_time_ms(longest) == NOW_MS + 500
    assert _event_problem(dict(OK, time=longest)) == ""
    assert _event_time_ms(longest + "0") is None
    for bad in (None, 1700000000, "yesterday", "2023-11-14T22:13:20" + "x" * 60, ""):
        assert _event_time_ms(bad) is None


# -- Verifier.check: data frames ------------------------------------------------------------------
BASE = 8640 * 8700                      # 2023-10-27 00:00:00 UTC, "2023300 00:00:00.000"
FS = "STA01:0"
UNKNOWN_KEY = 901                       # STA01's key, never exported to the trust store


@pytest.fixture(scope="module")
def unknown_signer(tmp_path_factory):
    from ims_station.auth import Keystore, generate_key

    ks = tmp_path_factory.mktemp("unknown-key")
    generate_key("ed25519", UNKNOWN_KEY, ks, station="STA01", valid_from="2000-01-01T00:00:00Z")
    return Keystore.load(ks).signer(UNKNOWN_KEY)


def own(keys, which: int, station: str = "STA01"):
    return keys.keystore.signer(KEY_IDS[station][which])


def frame(keys, seq: int = BASE, *, fsign="own", csign="own", offsets_ms=(0, 0), station: str = "STA01") -> bytes:
    """A frame of two 10-s channels (BHZ, BHN) whose subframes start *offsets_ms* after its nominal time."""
    from datetime import timedelta

    from ims_station import cd11

    fsign = own(keys, 0, station) if fsign == "own" else fsign
    csign = own(keys, 1, station) if csign == "own" else csign
    t = nominal_of(seq)
    chans = [cd11.ChannelInput(station, ch, "00", np.arange(400, dtype=np.int32) * (i + 1), 40.0,
                               t + timedelta(milliseconds=off), None, csign)
             for i, (ch, off) in enumerate(zip(("BHZ", "BHN"), offsets_ms))]
    return cd11.build_data_frame(station, seq, t, chans, fsign)


def recrc(buf: bytearray) -> bytes:
    from ims_station.cd11.crc64 import crc64

    buf[-8:] = crc64(bytes(buf[:-8])).to_bytes(8, "big")
    return bytes(buf)


def test_a_valid_frame_is_verified_with_its_set_sequence_and_times(keys):
    v = Verifier(keys.trust).check("STA01", frame(keys))
    assert isinstance(v, Verified)
    assert (v.station, v.frame_set, v.sequence, v.nominal_ms, v.frame_ms, v.unverified) == (
        "STA01", FS, BASE, 1_698_364_800_000, 10_000, ())


def test_payload_size_bound_is_inclusive(keys):
    raw = frame(keys)
    assert isinstance(Verifier(keys.trust, max_payload=len(raw)).check("STA01", raw), Verified)
    assert Verifier(keys.trust, max_payload=len(raw) - 1).check("STA01", raw) == Rejection(
        "oversize", f"{len(raw)} bytes exceeds max_payload {len(raw) - 1}")


def test_crc_trailing_bytes_and_foreign_creator_are_named(keys):
    raw = frame(keys)
    bad = bytearray(raw)
    bad[-1] ^= 1
    r = Verifier(keys.trust).check("STA01", bytes(bad))
    assert (r.reason, r.frame_set, r.sequence) == ("crc", None, None) and "CRC" in r.detail.upper()
    assert Verifier(keys.trust).check("STA01", raw + b"\0\0") == Rejection(
        "malformed", f"2 bytes after the frame's end at byte {len(raw)}")
    assert Verifier(keys.trust).check("STA02", raw) == Rejection(
        "station_mismatch", "frame creator 'STA01' published on station 'STA02''s topic", FS, BASE)


def test_non_data_frames_are_not_accepted_on_the_cd11_topic(keys):
    from ims_station import cd11

    req = cd11.ConnectionRequest(creator="STA01", station="STA01").to_bytes(own(keys, 0))
    r = Verifier(keys.trust).check("STA01", req)
    assert r.reason == "frame_type" and r.detail.startswith("ConnectionRequest (type ")
    assert r.detail.endswith(") is not accepted on the cd11 topic")
    cd1 = bytearray(frame(keys))
    cd1[0:4] = (13).to_bytes(4, "big")                      # the same frame as a CD-1 encapsulation
    assert Verifier(keys.trust).check("STA01", recrc(cd1)) == Rejection(
        "frame_type", "Cd1Encapsulation (type 13) is not accepted on the cd11 topic", FS, BASE)


def test_unsigned_frame_or_subframe_is_refused_unless_signatures_are_optional(keys):
    unsigned = frame(keys, fsign=None, csign=None)
    assert Verifier(keys.trust).check("STA01", unsigned) == Rejection(
        "unsigned", f"{FS} seq {BASE}: frame is not signed", FS, BASE)
    assert Verifier(keys.trust).check("STA01", frame(keys, csign=None)) == Rejection(
        "unsigned", f"{FS} seq {BASE}: subframe 0 (STA01/BHZ/00) is not signed", FS, BASE)
    assert isinstance(Verifier(keys.trust, require_signatures=False).check("STA01", unsigned), Verified)
    # a station's policy overrides the relay-wide one, both ways
    lax = {"STA01": StationPolicy(require_signatures=False)}
    assert isinstance(Verifier(keys.trust, station_policies=lax).check("STA01", unsigned), Verified)
    strict = {"STA01": StationPolicy(require_signatures=True)}
    assert Verifier(keys.trust, require_signatures=False, station_policies=strict).check(
        "STA01", unsigned).reason == "unsigned"


def test_signature_failures_name_the_key(keys, unknown_signer):
    v = Verifier(keys.trust)
    r = v.check("STA01", frame(keys, fsign=own(keys, 0, "STA02")))
    assert (r.reason, r.frame_set, r.sequence) == ("wrong_station_key", FS, BASE)
    assert r.detail.startswith(f"{FS} seq {BASE}: frame signature (key 201): ")
    r = v.check("STA01", frame(keys, fsign=unknown_signer))
    assert r.reason == "frame_signature"
    assert r.detail.startswith(f"{FS} seq {BASE}: frame signature (key {UNKNOWN_KEY}): ")
    r = v.check("STA01", frame(keys, csign=own(keys, 1, "STA02")))
    assert r.reason == "wrong_station_key"
    assert r.detail.startswith(f"{FS} seq {BASE}: subframe 0 (STA01/BHZ/00) signature (key 202): ")
    r = v.check("STA01", frame(keys, csign=unknown_signer))
    assert r.reason == "subframe_signature"
    assert r.detail.startswith(f"{FS} seq {BASE}: subframe 0 (STA01/BHZ/00) signature (key {UNKNOWN_KEY}): ")


def test_legacy_policy_accepts_unknown_keys_as_unverified_but_never_a_known_key_that_fails(keys, unknown_signer):
    legacy = Verifier(keys.trust, station_policies={"STA01": StationPolicy(accept_unknown_keys=True)})
    v = legacy.check("STA01", frame(keys, fsign=unknown_signer, csign=unknown_signer))
    assert isinstance(v, Verified)
    assert v.unverified == (f"frame (key {UNKNOWN_KEY})", f"subframe 0 STA01/BHZ/00 (key {UNKNOWN_KEY})",
                            f"subframe 1 STA01/BHN/00 (key {UNKNOWN_KEY})")
    assert legacy.check("STA01", frame(keys, csign=unknown_signer)).unverified == (
        f"subframe 0 STA01/BHZ/00 (key {UNKNOWN_KEY})", f"subframe 1 STA01/BHN/00 (key {UNKNOWN_KEY})")
    assert legacy.check("STA01", frame(keys, fsign=own(keys, 0, "STA02"))).reason == "wrong_station_key"
    assert legacy.check("STA01", frame(keys, csign=own(keys, 1, "STA02"))).reason == "wrong_station_key"
    # the policy is the named station's only
    assert Verifier(keys.trust, station_policies={"STA02": StationPolicy(accept_unknown_keys=True)}).check(
        "STA01", frame(keys, fsign=unknown_signer)).reason == "frame_signature"


def test_subframe_start_must_lie_in_the_frame_window_with_the_tolerance(keys):
    v = Verifier(keys.trust)
    assert isinstance(v.check("STA01", frame(keys, offsets_ms=(0, -1000))), Verified)
    assert v.check("STA01", frame(keys, offsets_ms=(0, -1001))) == Rejection(
        "subframe_time", f"{FS} seq {BASE}: subframe 1 (STA01/BHN) starts at 2023299 23:59:58.999, outside "
        "frame window 2023300 00:00:00.000 + 10000 ms", FS, BASE)
    assert isinstance(v.check("STA01", frame(keys, offsets_ms=(9999, 0))), Verified)
    assert v.check("STA01", frame(keys, offsets_ms=(10_000, 0))).detail == (
        f"{FS} seq {BASE}: subframe 0 (STA01/BHZ) starts at 2023300 00:00:10.000, outside frame window "
        "2023300 00:00:00.000 + 10000 ms")
    tight = Verifier(keys.trust, subframe_time_tolerance_ms=0)
    assert isinstance(tight.check("STA01", frame(keys)), Verified)
    assert tight.check("STA01", frame(keys, offsets_ms=(-1, 0))).reason == "subframe_time"


def test_control_frames_are_checked_like_data_frames_but_not_dated(keys, unknown_signer):
    from ims_station import cd11

    alert = cd11.Alert(creator="STA01", message="Shutting down")
    ack = cd11.Acknack(creator="STA01", frame_set="STA01:0", lowest=1, highest=2)
    c = Verifier(keys.trust).check("STA01", alert.to_bytes(own(keys, 0)))
    assert isinstance(c, Control) and c.kind == "alert" and c.frame.message == "Shutting down"
    c = Verifier(keys.trust).check("STA01", ack.to_bytes(own(keys, 0)))
    assert isinstance(c, Control) and c.kind == "acknack"
    r = Verifier(keys.trust).check("STA01", alert.to_bytes())
    assert r == Rejection("unsigned", f"{r.frame_set} alert seq {r.sequence}: frame is not signed",
                          r.frame_set, r.sequence)
    assert r.frame_set.startswith("STA01:")
    assert isinstance(Verifier(keys.trust, require_signatures=False).check("STA01", alert.to_bytes()), Control)
    r = Verifier(keys.trust).check("STA01", ack.to_bytes(own(keys, 0, "STA02")))
    assert r.reason == "wrong_station_key"
    assert r.detail.startswith(f"{r.frame_set} acknack seq {r.sequence}: frame signature (key 201): ")
    r = Verifier(keys.trust).check("STA01", ack.to_bytes(unknown_signer))
    assert r.reason == "frame_signature" and f"(key {UNKNOWN_KEY})" in r.detail


# -- Verifier.check_event / check_ims20 -------------------------------------------------------------
ENV_US = NOW_MS * 1000 + 123_456


def ev(keys, doc, *, sender="STA01", signer="own", seq=None, time_us=ENV_US) -> bytes:
    from ims_station import envelope

    signer = own(keys, 0) if signer == "own" else signer
    seq = doc.get("seq", 0) if seq is None else seq
    return envelope.pack_json("event", sender, doc, time_us=time_us, signer=signer, seq=seq)


def test_a_valid_event_carries_its_body_sequence_and_time(keys):
    doc = {"seq": 4, "station": "STA01", "time": "2023-11-14T22:13:19.5"}
    raw = ev(keys, doc)
    v = Verifier(keys.trust).check_event("STA01", bytearray(raw))
    assert isinstance(v, VerifiedEvent)
    assert (v.doc, v.station, v.frame_set, v.sequence, v.time_ms, v.raw) == (
        doc, "STA01", "STA01:events", 4, NOW_MS - 500, raw)
    assert type(v.raw) is bytes and (v.key_id, v.sent_ms) == (KEY_IDS["STA01"][0], NOW_MS + 123)
    # without a time of its own, the event is dated by its envelope
    assert Verifier(keys.trust).check_event("STA01", ev(keys, {"seq": 4, "station": "STA01"})).time_ms == NOW_MS + 123


def test_event_envelope_rejections_name_the_problem(keys, unknown_signer):
    doc = {"seq": 4, "station": "STA01"}
    raw = ev(keys, doc)
    v = Verifier(keys.trust)
    assert isinstance(Verifier(keys.trust, max_payload=len(raw)).check_event("STA01", raw), VerifiedEvent)
    assert Verifier(keys.trust, max_payload=len(raw) - 1).check_event("STA01", raw) == Rejection(
        "oversize", f"{len(raw)} bytes exceeds max_payload {len(raw) - 1}")
    r = v.check_event("STA01", b"junk")
    assert (r.reason, r.frame_set) == ("malformed", None) and r.detail.startswith("envelope: 4 bytes")
    assert v.check_event("STA01", ev(keys, {"seq": 4, "station": "STA02"}, sender="STA02",
                                     signer=own(keys, 0, "STA02"))) == Rejection(
        "station_mismatch", "event envelope from 'STA02' published on station 'STA01''s topic", "STA01:events")
    assert v.check_event("STA01", ev(keys, doc, signer=None)) == Rejection(
        "unsigned", "STA01:events: event envelope is not signed", "STA01:events")
    assert isinstance(Verifier(keys.trust, require_signatures=False).check_event("STA01", ev(keys, doc, signer=None)),
                      VerifiedEvent)
    r = v.check_event("STA01", ev(keys, doc, signer=own(keys, 0, "STA02")))
    assert (r.reason, r.frame_set) == ("wrong_station_key", "STA01:events")
    assert r.detail.startswith("STA01:events: event signature (key 201): ")
    r = v.check_event("STA01", ev(keys, doc, signer=unknown_signer))
    assert r.reason == "event_signature" and r.detail.startswith(f"STA01:events: event signature (key {UNKNOWN_KEY}): ")


def test_event_body_rejections_name_the_problem_and_the_seq_when_it_is_one(keys):
    from ims_station import envelope

    v = Verifier(keys.trust)
    not_json = envelope.pack("event", "STA01", b"\xff{", time_us=ENV_US, signer=own(keys, 0))
    r = v.check_event("STA01", not_json)
    assert (r.reason, r.frame_set, r.sequence) == ("malformed", "STA01:events", None)
    assert r.detail.startswith("STA01:events: envelope body: not UTF-8 JSON")
    assert v.check_event("STA01", ev(keys, {"seq": 5, "station": 1})) == Rejection(
        "malformed", "STA01:events: event body: station missing or not a string", "STA01:events", 5)
    for seq in (0, MAX_EVENT_SEQ):
        assert v.check_event("STA01", ev(keys, {"seq": seq}, seq=0)).sequence == seq
    for seq in (-1, MAX_EVENT_SEQ + 1, True, "5"):
        r = v.check_event("STA01", ev(keys, {"seq": seq, "station": "STA01"}, seq=0))
        assert (r.reason, r.sequence) == ("malformed", None)
        assert r.detail == f"STA01:events: event body: seq {seq!r} is not an integer in 0..{MAX_EVENT_SEQ}"
    assert v.check_event("STA01", ev(keys, [1, 2], seq=0)) == Rejection(
        "malformed", "STA01:events: event body: a JSON list, not an object", "STA01:events", None)
    assert v.check_event("STA01", ev(keys, {"seq": 4, "station": "STA01"}, seq=3)) == Rejection(
        "malformed", "STA01:events: envelope sequence number 3 is not the body's seq 4", "STA01:events")
    assert v.check_event("STA01", ev(keys, {"seq": 4, "station": "STA02"})) == Rejection(
        "station_mismatch", "STA01:events seq 4: event body names station 'STA02'", "STA01:events", 4)
    huge = (1 << 63) - 1                      # an envelope time no date (and no key's validity) can hold
    lax = Verifier(keys.trust, require_signatures=False)
    assert lax.check_event("STA01", ev(keys, {"seq": 4, "station": "STA01"}, signer=None, time_us=huge)) == Rejection(
        "implausible_time", f"STA01:events seq 4: event time {huge // 1000} ms is not a date", "STA01:events", 4)


@pytest.fixture(scope="module")
def phd(shared_dir) -> bytes:
    return (shared_dir / "samples" / "ims20" / "SPIKE20211228080107855.PHD").read_bytes()


def msg(keys, text: bytes, seq: int = 6, *, signer="own", time_us: int = ENV_US) -> bytes:
    from ims_station import envelope

    signer = own(keys, 0) if signer == "own" else signer
    return envelope.pack("ims20", "STA01", text, time_us=time_us, signer=signer, seq=seq)


def test_a_valid_ims20_message_keeps_its_text_and_envelope_time(keys, phd):
    raw = msg(keys, phd)
    v = Verifier(keys.trust).check_ims20("STA01", bytearray(raw))
    assert isinstance(v, VerifiedIms20)
    assert (v.station, v.frame_set, v.sequence, v.time_ms, v.raw, v.text) == (
        "STA01", "STA01:ims20", 6, NOW_MS + 123, raw, phd)
    assert type(v.raw) is bytes and (v.key_id, v.sent_ms) == (KEY_IDS["STA01"][0], NOW_MS + 123)
    assert v.message is not None


def test_ims20_rejections_name_the_problem(keys, phd):
    v = Verifier(keys.trust)
    r = v.check_ims20("STA01", msg(keys, b"not an IMS 2.0 message\n"))
    assert (r.reason, r.frame_set, r.sequence) == ("malformed_ims20", "STA01:ims20", 6)
    assert r.detail.startswith("STA01:ims20 seq 6: ")
    assert v.check_ims20("STA01", msg(keys, phd, signer=None)) == Rejection(
        "unsigned", "STA01:ims20: ims20 envelope is not signed", "STA01:ims20")
    r = v.check_ims20("STA01", msg(keys, phd, signer=own(keys, 0, "STA02")))
    assert r.reason == "wrong_station_key" and r.detail.startswith("STA01:ims20: ims20 signature (key 201): ")
    huge = (1 << 63) - 1
    lax = Verifier(keys.trust, require_signatures=False)
    assert lax.check_ims20("STA01", msg(keys, phd, signer=None, time_us=huge)) == Rejection(
        "implausible_time", f"STA01:ims20 seq 6: envelope time {huge} us is not a date", "STA01:ims20", 6)


def test_channel_data_that_cannot_be_decoded_is_refused_unless_decoding_is_off(keys):
    from ims_station import cd11

    raw = frame(keys, fsign=None, csign=None)
    start = cd11.parse_frame(raw)[0].subframes[1].span[0]
    bad = bytearray(raw)
    bad[start + 9] = 254                    # the subframe's transformation byte: no such compression
    bad = recrc(bad)
    r = Verifier(keys.trust, require_signatures=False).check("STA01", bad)
    assert (r.reason, r.frame_set, r.sequence) == ("undecodable", FS, BASE)
    assert r.detail.startswith(f"{FS} seq {BASE}: subframe 1 (STA01/BHN): ") and "transformation 254" in r.detail
    assert isinstance(Verifier(keys.trust, require_signatures=False, decode_samples=False).check("STA01", bad),
                      Verified)


class NoKeyLookup:
    """A trust store that verifies signatures but cannot look a key up by id."""

    def __init__(self, trust) -> None:
        self._trust = trust

    def __getattr__(self, name):
        if name == "key":
            raise AttributeError(name)
        return getattr(self._trust, name)


def test_without_key_lookup_no_key_counts_as_unknown_to_the_legacy_policy(keys, unknown_signer):
    legacy = Verifier(NoKeyLookup(keys.trust), station_policies={"STA01": StationPolicy(accept_unknown_keys=True)})
    assert legacy.check("STA01", frame(keys, fsign=unknown_signer)).reason == "frame_signature"
    assert legacy.check("STA01", frame(keys, csign=unknown_signer)).reason == "subframe_signature"
    assert isinstance(legacy.check("STA01", frame(keys)), Verified)
