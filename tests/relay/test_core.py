"""The relay core: every tampering case rejected, quarantined and counted; acknack schedule; state lag.

Issue 4, must-show 4: a flipped bit, a frame re-signed with another station's key, a frame replayed
under a new sequence number, a station publishing on another station's topic -- each rejected and
counted.  Runs the transport-independent core (the MQTT relay feeds it the same items).
"""

from __future__ import annotations

import random

import pytest

from ims_station import cd11
from ims_station.relay.core import Incoming, RelayCore
from ims_station.relay.errors import StateStoreError

from .conftest import KEY_IDS

T = "ims/STA01/cd11"


@pytest.fixture
def core(tmp_path, keys, clock, stores):
    c = RelayCore(keys.trust, stores.state(tmp_path / "state.sqlite"), stores.archive(tmp_path / "archive"),
                  clock=clock, acknack_interval_s=50.0, acknack_min_spacing_s=2.0)
    yield c
    c.close()


def run(core, *items):
    return [o.result for o in core.process([Incoming(t, p, i) for i, (t, p) in enumerate(items)])]


BASE = 8640 * 8700     # sequence numbers = 10-s frames since 2000 (2023-10-26)


def test_valid_frames_are_archived_and_duplicates_counted(core, factory):
    a, b = factory.build(BASE), factory.build(BASE + 1)
    assert run(core, (T, a), (T, b), (T, a)) == ["archived", "archived", "duplicate"]
    c = core.counters
    assert (c.received, c.verified, c.archived, c.duplicates, c.quarantined) == (3, 3, 2, 1, 0)
    assert core.archive.read_frame("STA01:0", BASE) == a


def test_flipped_bit_anywhere_is_rejected_as_crc(core, factory):
    good = factory.build(BASE)
    rng = random.Random(4)
    payloads = []
    for _ in range(25):
        bad = bytearray(good)
        bit = rng.randrange(len(bad) * 8)
        bad[bit // 8] ^= 1 << (bit % 8)
        payloads.append((T, bytes(bad)))
    results = run(core, *payloads)
    # CRC-64 catches every single-bit error; a flip in the length fields may be caught earlier.
    assert set(results) <= {"crc", "malformed"} and results.count("crc") >= 20
    assert core.counters.archived == 0
    assert core.counters.quarantined == 25
    assert len(core.archive.quarantine_entries()) == 25


def test_bit_flip_with_recomputed_crc_fails_the_signature(core, factory):
    """An attacker who fixes up the CRC still cannot pass the signatures."""
    from ims_station.cd11.crc64 import crc64

    good = bytearray(factory.build(BASE))
    f, _ = cd11.parse_frame(bytes(good))
    sf_start = f.subframes[1].span[0]
    good[sf_start + 200] ^= 0x01           # inside subframe 1's channel data (signed range)
    good[-8:] = crc64(bytes(good[:-8])).to_bytes(8, "big")
    # The frame signature covers the whole payload and is checked first.
    assert run(core, (T, bytes(good))) == ["frame_signature"]
    # Creator rewritten STA01 -> STA02 (CRC fixed up): wrong topic, and on STA02's topic the
    # signature is by a key that belongs to STA01.
    good = bytearray(factory.build(BASE + 1))
    good[12] ^= ord("1") ^ ord("2")
    good[-8:] = crc64(bytes(good[:-8])).to_bytes(8, "big")
    assert run(core, (T, bytes(good)), ("ims/STA02/cd11", bytes(good))) == ["station_mismatch", "wrong_station_key"]
    assert core.counters.archived == 0


def test_resigned_with_another_stations_key(core, factory):
    # Frame key of STA02 on an STA01 frame (correct topic, correct creator).
    r1 = run(core, (T, factory.build(BASE, frame_key="STA02")))
    # Subframes signed with STA02's channel key, frame key right.
    r2 = run(core, (T, factory.build(BASE + 1, channel_key="STA02")))
    assert r1 == ["wrong_station_key"] and r2 == ["wrong_station_key"]
    assert core.counters.rejected["wrong_station_key"] == 2
    assert core.counters.security_events == 2
    detail = core.archive.quarantine_entries()[0]["detail"]
    assert "key 201" in detail and "STA01" in detail


def test_station_publishing_on_another_stations_topic(core, factory, keys):
    from tests.relay.conftest import FrameFactory

    sta02 = FrameFactory(keys, "STA02")
    # STA02's genuine frame on STA01's topic; and STA01's genuine frame on STA02's topic.
    assert run(core, (T, sta02.build(BASE)), ("ims/STA02/cd11", factory.build(BASE))) == \
        ["station_mismatch", "station_mismatch"]
    # A frame claiming to be STA01 (creator) signed with STA02's keys, published on STA02's topic.
    assert run(core, ("ims/STA02/cd11", factory.build(BASE, frame_key="STA02", channel_key="STA02"))) == \
        ["station_mismatch"]
    assert core.counters.rejected["station_mismatch"] == 3
    assert core.counters.per_station["STA02"]["station_mismatch"] == 2
    assert core.counters.archived == 0


def test_replay_under_a_new_sequence_number(core, factory):
    """The station's key signs whatever the gateway hands it; a compromised or buggy gateway that
    renumbers old data is caught two ways."""
    assert run(core, (T, factory.build(BASE))) == ["archived"]
    # 1. Same content (nominal time BASE) under seq BASE+5: nominal time inconsistent with seq.
    assert run(core, (T, factory.build(BASE + 5, nominal_seq=BASE))) == ["sequence_time"]
    # 2. Sequence check off (a station whose numbering is not time-derived): the archive still sees
    #    the nominal time already archived under another sequence number.
    core.sequence_check = False
    assert run(core, (T, factory.build(BASE + 6, nominal_seq=BASE))) == ["replay"]
    assert core.counters.rejected == {"sequence_time": 1, "replay": 1}
    assert core.counters.security_events == 2
    assert core.archive.frame_keys() == [("STA01:0", BASE)]
    assert core.states["STA01:0"].acknack_fields() == (BASE, BASE, [])


def test_same_sequence_number_different_content_is_a_security_event(core, factory):
    a = factory.build(BASE)
    assert run(core, (T, a)) == ["archived"]
    other = cd11.parse_frame(a)[0]
    other.subframes[0].data = cd11.parse_frame(factory.build(BASE + 1))[0].subframes[0].data
    other.subframes[0].nsamples = 400
    other.subframes[0].sign(factory.keys.keystore.signer(102))
    forged = other.to_bytes(factory.keys.keystore.signer(101))
    assert run(core, (T, forged)) == ["duplicate_conflict"]
    assert core.archive.read_frame("STA01:0", BASE) == a
    assert core.counters.security_events == 1


@pytest.mark.parametrize("payload,reason", [
    (b"", "malformed"),
    (b"\x00" * 3, "malformed"),
    (b"\xff" * 100, "malformed"),
    (b"not a frame at all, just text" * 3, "malformed"),
])
def test_garbage_never_crashes(core, payload, reason):
    assert run(core, (T, payload)) == [reason]


def test_unsigned_oversize_trailing_and_bad_topics(core, factory, tmp_path):
    unsigned = factory.build(BASE, sign=False)
    assert run(core, (T, unsigned)) == ["unsigned"]
    assert run(core, (T, factory.build(BASE) + b"\0")) == ["malformed"]
    assert run(core, ("ims/STA01/soh", factory.build(BASE))) == ["bad_topic"]
    assert run(core, ("other/STA01/cd11", factory.build(BASE))) == ["bad_topic"]
    assert run(core, ("ims/sta 1/cd11", factory.build(BASE))) == ["bad_topic"]
    core.verifier.max_payload = 1000
    assert run(core, (T, factory.build(BASE))) == ["oversize"]
    assert core.counters.archived == 0


def test_control_frames_are_counted_not_archived(core, keys):
    sign = keys.keystore.signer(KEY_IDS["STA01"][0])
    alert = cd11.Alert(creator="STA01", message="Shutting down").to_bytes(sign)
    ack = cd11.Acknack(creator="STA01", frame_set="STA01:0", lowest=1, highest=2).to_bytes(sign)
    req = cd11.ConnectionRequest(creator="STA01", station="STA01").to_bytes(sign)
    assert run(core, (T, alert), (T, ack), (T, req)) == ["control", "control", "frame_type"]
    assert core.counters.control == 2


def test_control_frames_are_verified_before_the_relay_acts_on_them(core, keys, caplog):
    """An alert is logged as the station's: CRC, creator and signature must hold first."""
    own, other = keys.keystore.signer(KEY_IDS["STA01"][0]), keys.keystore.signer(KEY_IDS["STA02"][0])
    unsigned = cd11.Alert(creator="STA01", message="forged").to_bytes()
    foreign = cd11.Alert(creator="STA01", message="forged").to_bytes(other)
    impostor = cd11.Alert(creator="STA02", message="forged").to_bytes(other)
    flipped = bytearray(cd11.Alert(creator="STA01", message="forged").to_bytes(own))
    flipped[40] ^= 0x01
    resigned = cd11.Acknack(creator="STA01", frame_set="STA01:0", lowest=1, highest=2).to_bytes(own)
    bad_sig = bytearray(resigned)
    bad_sig[-20] ^= 0x01                    # inside the signature, CRC recomputed below
    bad_sig = cd11.parse_frame(bytes(bad_sig), check_crc=False)[0].to_bytes()
    with caplog.at_level("WARNING"):
        got = run(core, (T, unsigned), (T, foreign), (T, impostor), (T, bytes(flipped)), (T, bad_sig))
    assert got == ["unsigned", "wrong_station_key", "station_mismatch", "crc", "frame_signature"]
    assert core.counters.control == 0 and core.counters.quarantined == 5
    assert core.counters.rejected["unsigned"] == 1 and core.counters.rejected["frame_signature"] == 1
    assert "sent an alert" not in caplog.text


def test_acknack_schedule_gap_periodic_and_idle(core, factory, clock):
    run(core, (T, factory.build(BASE)))
    due = core.due_acknacks()                         # first frame of a set: at once
    assert len(due) == 1 and due[0][0] == "ims/STA01/acknack"
    ack = cd11.parse_frame(due[0][2])[0]
    assert isinstance(ack, cd11.Acknack) and ack.creator == "RELAY"
    assert (ack.frame_set, ack.lowest, ack.highest, ack.gaps) == ("STA01:0", BASE, BASE, [])
    run(core, (T, factory.build(BASE + 1)))
    assert core.due_acknacks() == []                  # in order: nothing new to say yet
    run(core, (T, factory.build(BASE + 4)))            # a gap appears
    assert core.due_acknacks() == []                  # ... but rate-limited
    clock.advance(2.0)
    (topic, fs, raw), = core.due_acknacks()
    ack = cd11.parse_frame(raw)[0]
    assert (ack.lowest, ack.highest, ack.gaps) == (BASE, BASE + 4, [(BASE + 2, BASE + 4)])
    clock.advance(47.0)
    assert core.due_acknacks() == [] and core.next_acknack_in() == pytest.approx(3.0)
    clock.advance(3.0)
    assert len(core.due_acknacks()) == 1               # periodic: at least once a minute
    clock.advance(1000.0)
    assert core.due_acknacks() == []                  # idle frame set: no heartbeat spam
    assert len(core.due_acknacks(force=True)) == 1


def test_signed_acknacks(tmp_path, keys, factory, clock, stores):
    signer = keys.keystore.signer(101)     # any key of ours; the station's trust store holds it
    c = RelayCore(keys.trust, stores.state(tmp_path / "s"), stores.archive(tmp_path / "a"), clock=clock,
                  acknack_signer=signer, name="IDC")
    try:
        c.process([Incoming(T, factory.build(BASE))])
        (_, _, raw), = c.due_acknacks()
        ack = cd11.parse_frame(raw)[0]
        assert ack.auth_key_id == 101 and ack.creator == "IDC"
        assert keys.trust.verify("STA01", 101, raw[:ack.header.trailer_offset], ack.auth_value).ok
    finally:
        c.close()


def test_state_lagging_the_archive_heals_through_resend(tmp_path, keys, factory, clock, stores):
    """Crash after the archive commit and before the state save: the acknack under-reports, the
    station resends, the archive says duplicate and the state catches up."""
    arc = stores.archive(tmp_path / "a")
    c1 = RelayCore(keys.trust, stores.state(tmp_path / "s"), arc, clock=clock)
    c1.process([Incoming(T, factory.build(BASE)), Incoming(T, factory.build(BASE + 1))])
    # The state save fails (a crash there leaves the same stores; any other exception is a poison
    # message for the core, see test_poison.py).
    c1.state_store.update = lambda *a, **k: (_ for _ in ()).throw(StateStoreError("killed"))
    with pytest.raises(StateStoreError):
        c1.process([Incoming(T, factory.build(BASE + 2))])
    assert arc.lookup("STA01:0", BASE + 2) is not None
    c2 = RelayCore(keys.trust, stores.state(tmp_path / "s"), arc, clock=clock)
    assert c2.states["STA01:0"].acknack_fields() == (BASE, BASE + 1, [])     # under-reports
    assert [o.result for o in c2.process([Incoming(T, factory.build(BASE + 2))])] == ["duplicate"]
    assert c2.states["STA01:0"].acknack_fields() == (BASE, BASE + 2, [])
    c2.close()


def test_gap_expiry_counts_frames_given_up(tmp_path, keys, factory, clock, stores):
    c = RelayCore(keys.trust, stores.state(tmp_path / "s"), stores.archive(tmp_path / "a"), clock=clock,
                  gap_expiry_s=3600)
    c.process([Incoming(T, factory.build(BASE)), Incoming(T, factory.build(BASE + 10))])
    c.due_acknacks()
    clock.advance(3601)
    (_, _, raw), = c.due_acknacks()
    assert cd11.parse_frame(raw)[0].gaps == []
    assert (c.counters.gaps_expired, c.counters.frames_given_up) == (1, 9)
    c.close()


def test_mutated_frames_never_raise(keys, factory):
    """Seeded mutations *with the CRC fixed up*, so they reach the payload parser, the signature
    checks and the sample decoder: the verifier always answers, never raises."""
    from ims_station.cd11.crc64 import crc64
    from ims_station.relay.verify import Rejection, Verified, Verifier

    v = Verifier(keys.trust)
    good = factory.build(BASE)
    rng = random.Random(1234)
    reasons = set()
    truncated = 0
    for _ in range(1500):
        b = bytearray(good)
        kind = rng.random()
        if kind < 0.6:
            for _ in range(rng.randint(1, 4)):
                b[rng.randrange(len(b) - 8)] = rng.randrange(256)
        elif kind < 0.8:
            # Cut 1-200 bytes out of the frame itself (``del b[i:][:n]`` cut a copy and sent the
            # frame undamaged).
            i, n = rng.randrange(36, len(b) - 8), rng.randint(1, 200)
            del b[i:i + n]
            assert len(b) == max(i, len(good) - n) < len(good)
            truncated += 1
        else:
            i = rng.randrange(36, len(b) - 8)
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
        b[-8:] = crc64(bytes(b[:-8])).to_bytes(8, "big")
        r = v.check("STA01", bytes(b))
        assert isinstance(r, (Rejection, Verified))
        if isinstance(r, Rejection):
            reasons.add(r.reason)
        elif len(b) < len(good):
            raise AssertionError(f"a frame with bytes cut out was accepted: {r}")
    # Damage is caught at every layer, not only by the parser.
    assert {"malformed", "frame_signature"} <= reasons
    assert truncated >= 200, truncated
