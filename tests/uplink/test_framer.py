"""The framer: windows, sequence numbers from time, signed CA frames, status from board flags, late
samples never rebuild a committed seq (also across a restart)."""

from __future__ import annotations

import numpy as np
import pytest

from ims_station import cd11
from ims_station.auth import Keystore, TrustStore, export_public, generate_key
from ims_station.edge.framer import EPOCH_2000_US, ChannelSpec, Framer, first_index_at_or_after, sample_offset_us
from ims_station.edge.outbox import Outbox
from ims_station.edge.streams import Chunk
from ims_station.firmware import link

STA = "STA01"
CODES = ("XX.STA01.00.BHZ", "XX.STA01.00.BHN")
RATE = 40_000                      # mHz
T0_US = 1_700_000_000 * 1_000_000  # a window boundary (multiple of 10 s since 2000)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    ks, trust = d / "keystore", d / "trust"
    for kid, alg in ((1, "ed25519"), (101, "ecdsa-p256"), (102, "ed25519")):
        generate_key(alg, kid, ks, station=STA, valid_from="2020-01-01T00:00:00Z")
        export_public(ks, kid, trust)
    return Keystore.load(ks), TrustStore.load(trust)


def chunk(t_us, n, *, codes=CODES, tq=link.TQ_LOCKED, status=0, clip=0, base=0):
    samples = np.vstack([np.arange(base, base + n, dtype=np.int32) * (k + 1) for k in range(len(codes))])
    return Chunk(STA, codes, t_us, RATE, samples, tq, status, clip, True)


def framer(tmp_path, clock, keys=None, **kw):
    box = Outbox(tmp_path / "outbox.sqlite", max_bytes=1 << 30, max_age_s=1e12, clock=clock)
    ks = keys[0] if keys else None
    specs = [ChannelSpec(CODES[0], 101 if keys else None), ChannelSpec(CODES[1], 102 if keys else None)]
    return box, Framer(STA, box, clock=clock, channels=specs, keystore=ks,
                       station_key_id=1 if keys else None, **kw)


def frames_in(box):
    return [cd11.parse_frame(i.payload)[0] for i in box.next_to_send(10_000, live_window_s=1e12)]


def test_window_cut_helpers_agree_with_the_stream_times():
    for rate in (40_000, 100_000, 33_333, 1000):
        for t0 in (T0_US - 123_457, T0_US):
            i = first_index_at_or_after(t0, rate, T0_US + 10_000_000)
            assert t0 + sample_offset_us(i, rate) >= T0_US + 10_000_000
            assert i == 0 or t0 + sample_offset_us(i - 1, rate) < T0_US + 10_000_000


def test_signed_ca_frames_every_10_s_with_time_derived_sequence_numbers(tmp_path, clock, keys):
    box, fr = framer(tmp_path, clock, keys)
    committed = []
    for k in range(25):                      # 25 one-second chunks: windows 0, 1 complete, 2 open
        committed += fr.add_chunk(chunk(T0_US + k * 1_000_000, 40, base=40 * k))
    seq0 = (T0_US - EPOCH_2000_US) // 10_000_000
    assert committed == [seq0, seq0 + 1]
    assert seq0 == cd11.sequence_from_time(T0_US / 1e6)
    frames = frames_in(box)
    assert [f.sequence for f in frames] == committed
    for f, seq in zip(frames, committed):
        assert f.creator == STA and f.frame_time_length_ms == 10_000
        assert f.nominal_time == cd11.format_time((EPOCH_2000_US + seq * 10_000_000) / 1e6)
        assert [sf.channel for sf in f.subframes] == ["BHN", "BHZ"]
        z = [sf for sf in f.subframes if sf.channel == "BHZ"][0]
        assert z.description.transformation in (cd11.TRANSFORM_CA_BEFORE_SIGNATURE,
                                                cd11.TRANSFORM_CA_AFTER_SIGNATURE)
        assert len(z.samples()) == 400
        v = cd11.verify_frame(f, keys[1])
        assert v.failures() == []                        # CRC, frame and both subframes signed
        assert f.auth_key_id == 1 and sorted(sf.auth_key_id for sf in f.subframes) == [101, 102]
    # Samples are exactly the stream's, in order, across the two frames.
    z = np.concatenate([[sf for sf in f.subframes if sf.channel == "BHZ"][0].samples() for f in frames])
    assert np.array_equal(z, np.arange(800, dtype=np.int32))


def test_channel_status_format1_from_board_flags(tmp_path, clock):
    box, fr = framer(tmp_path, clock)
    fr.add_soh("XX.STA01", last_sync_us=T0_US - 5_000_000, clock_diff_us=2500)
    fr.add_chunk(chunk(T0_US, 400, tq=link.TQ_HOLDOVER, status=link.S_TAMPER | link.S_CALIBRATION | link.S_SUPPLY_LOW,
                       clip=0b01))
    f = frames_in(box)[0]
    st = {sf.channel: sf.status_format1 for sf in f.subframes}
    z, n = st["BHZ"], st["BHN"]
    assert z.clipped and not n.clipped
    for s in (z, n):
        assert s.calibration_underway and s.equipment_housing_open and s.main_power_failure
        assert s.gps_receiver_unlocked and not s.gps_receiver_off
        assert s.clock_differential_too_large and s.clock_differential_us == 2500
        assert s.last_gps_sync == cd11.format_time((T0_US - 5_000_000) / 1e6)
        assert not s.dead_sensor_channel


def test_a_last_gps_sync_beyond_year_9999_is_left_empty_not_a_framing_error(tmp_path, clock):
    """Issue 7 §1 (the same class on the edge): a board's SOH ``last_sync_us`` no CD-1.1 time stamp
    can hold made building every frame raise; the field is then unknown ('')."""
    box, fr = framer(tmp_path, clock)
    fr.add_soh("XX.STA01", last_sync_us=2 ** 62, clock_diff_us=0)
    fr.add_chunk(chunk(T0_US, 400))
    f = frames_in(box)[0]
    assert all(sf.status_format1.last_gps_sync == "" for sf in f.subframes)


def test_incomplete_window_waits_then_commits_partial_and_late_samples_are_dropped(tmp_path, clock):
    box, fr = framer(tmp_path, clock, max_wait_s=30)
    # BHN stops half-way through the window (a dead board): nothing is committed yet...
    assert fr.add_chunk(chunk(T0_US, 200)) == []
    assert fr.add_chunk(chunk(T0_US + 5_000_000, 200, codes=CODES[:1], base=200)) == []
    clock.advance(29)
    assert fr.poll() == []
    clock.advance(2)
    seq0 = (T0_US - EPOCH_2000_US) // 10_000_000
    assert fr.poll() == [seq0]                      # ...until max_wait_s, then what there is
    assert fr.stats()["partial_frames"] == 1
    # The rest of BHN arrives after the commit: dropped and counted, seq never rebuilt.
    assert fr.add_chunk(chunk(T0_US + 5_000_000, 200, codes=CODES[1:], base=200)) == []
    assert fr.stats()["late_samples"] == 200
    assert [f.sequence for f in frames_in(box)] == [seq0]
    assert fr.committed_until_us == T0_US + 10_000_000


def test_a_gap_inside_a_window_gives_two_subframes_of_that_channel(tmp_path, clock):
    box, fr = framer(tmp_path, clock)
    fr.add_chunk(chunk(T0_US, 100))
    fr.add_chunk(chunk(T0_US + 5_000_000, 200, base=200))      # 2.5 s missing
    fr.add_chunk(chunk(T0_US + 10_000_000, 40, base=400))      # pushes window 0 out: complete
    f = frames_in(box)[0]
    z = [sf for sf in f.subframes if sf.channel == "BHZ"]
    assert [len(sf.samples()) for sf in z] == [100, 200]
    assert [sf.time for sf in z] == [cd11.format_time(T0_US / 1e6), cd11.format_time(T0_US / 1e6 + 5)]


def test_restart_never_rebuilds_a_committed_seq(tmp_path, clock):
    box, fr = framer(tmp_path, clock)
    fr.add_chunk(chunk(T0_US, 400))
    fr.add_chunk(chunk(T0_US + 10_000_000, 120, base=400))     # window 1 open, uncommitted
    seq0 = (T0_US - EPOCH_2000_US) // 10_000_000
    assert fr.committed_seq == seq0
    box.close()
    # A new gateway process: the board re-sends from its ring, starting inside the committed window.
    box2 = Outbox(tmp_path / "outbox.sqlite", max_bytes=1 << 30, max_age_s=1e12, clock=clock)
    fr2 = Framer(STA, box2, clock=clock, channels=[ChannelSpec(c) for c in CODES])
    assert fr2.committed_seq == seq0
    assert fr2.add_chunk(chunk(T0_US + 9_000_000, 440, base=360)) == [seq0 + 1]
    assert fr2.stats()["late_samples"] == 2 * 40
    frames = frames_in(box2)
    assert [f.sequence for f in frames] == [seq0, seq0 + 1]
    z1 = [sf for sf in frames[1].subframes if sf.channel == "BHZ"][0].samples()
    assert np.array_equal(z1, np.arange(400, 800, dtype=np.int32))


@pytest.mark.parametrize("t_us, tq, why", [
    (12 * 1_000_000, link.TQ_LOCKED, "1970 + uptime: a board without a time fix"),
    (EPOCH_2000_US - 10_000_000, link.TQ_LOCKED, "before 2000-01-01: the sequence number would be negative"),
    (T0_US - 1024 * 7 * 86400 * 1_000_000, link.TQ_LOCKED,
     "GPS week roll-over: 19.6 years in the past, although the receiver says it is locked"),
    (T0_US + 2 * 86400 * 1_000_000, link.TQ_HOLDOVER, "two days ahead of the gateway's clock, not locked"),
    (2 ** 62, link.TQ_LOCKED,
     "beyond year 9999, locked: no CD-1.1 time stamp holds it (issue 7 §1: the alarm's log line raised)"),
])
def test_samples_with_implausible_time_are_never_framed_counted_and_alarmed(tmp_path, clock, t_us, tq, why):
    alarms = []
    box, fr = framer(tmp_path, clock, on_alarm=alarms.append)
    clock.t = T0_US / 1e6 + 30                 # the gateway's clock: 30 s after T0
    for k in range(30):                        # 30 s of bad time, then 25 s of good
        assert fr.add_chunk(chunk(t_us + k * 1_000_000, 40, base=40 * k, tq=tq)) == [], why
    clock.advance(60)                          # beyond max_wait_s: nothing is waiting to be forced out
    assert fr.poll() == [] and box.stats()["frames"] == 0, why
    st = fr.stats()
    assert st["implausible_time_samples"] == 30 * 40 * len(CODES) and st["implausible_time_chunks"] == 30
    # One alarm for the episode, not one per chunk; it names the time and the offset.
    assert len(alarms) == 1 and st["alarms"] == 1 and st["last_alarm"] == alarms[0]
    assert alarms[0]["alarm"] == "implausible_time" and alarms[0]["sample_time"] == t_us / 1e6
    committed = []
    for k in range(25):
        committed += fr.add_chunk(chunk(T0_US + k * 1_000_000, 40, base=40 * k))
    assert committed == [fr.seq_of(T0_US), fr.seq_of(T0_US) + 1]     # good time frames as usual
    fr.add_chunk(chunk(t_us, 40, tq=tq))                             # a new episode: a new alarm
    assert len(alarms) == 2


def test_the_time_rule_trusts_a_locked_board_ahead_of_a_lagging_gateway_clock(tmp_path, clock):
    box, fr = framer(tmp_path, clock, max_clock_offset_s=3600)
    clock.t = T0_US / 1e6
    hours = 5 * 3600 * 1_000_000
    assert fr.judge_time(T0_US + 10, T0_US + 20, link.TQ_UNLOCKED) == "ok"
    # The gateway's clock lags a locked board (no RTC, before NTP): the board is the better clock.
    assert fr.judge_time(T0_US + hours, T0_US + hours + 10, link.TQ_LOCKED) == "board"
    # Not locked, or locked but in the past (a receiver after a week roll-over): hold until they agree.
    assert fr.judge_time(T0_US + hours, T0_US + hours + 10, link.TQ_HOLDOVER) == "hold"
    assert fr.judge_time(T0_US - hours, T0_US - hours + 10, link.TQ_LOCKED) == "hold"
    assert fr.judge_time(EPOCH_2000_US - 10, EPOCH_2000_US + 10, link.TQ_LOCKED) == "refuse"


def test_a_locked_board_years_ahead_is_held_not_framed_and_later_samples_are_not_lost(tmp_path, clock):
    """Review of issue 7: a locked board is believed ahead of the gateway only up to
    max_board_ahead_s.  One glitched locked block ten years ahead, framed by board time, moved the
    committed point past every later good sample: all counted late, acknowledged and lost."""
    box, fr = framer(tmp_path, clock, max_clock_offset_s=3600, max_board_ahead_s=30 * 86400)
    clock.t = T0_US / 1e6
    day, years = 86400 * 1_000_000, 10 * 365 * 86400 * 1_000_000
    assert fr.judge_time(T0_US + 29 * day, T0_US + 29 * day + 10, link.TQ_LOCKED) == "board"
    assert fr.judge_time(T0_US + years, T0_US + years + 10, link.TQ_LOCKED) == "hold"
    committed = fr.add_chunk(chunk(T0_US + years, 40))          # fed directly: refused, not framed
    committed += [s for k in range(12) for s in fr.add_chunk(chunk(T0_US + k * 1_000_000, 40, base=40 * k))]
    assert committed == [fr.seq_of(T0_US)] and fr.stats()["late_samples"] == 0


def test_the_ring_backlog_within_the_clock_offset_is_framed(tmp_path, clock):
    box, fr = framer(tmp_path, clock, max_clock_offset_s=3600)
    clock.t = T0_US / 1e6 + 3000               # 50 minutes after the samples: a long gateway outage
    committed = []
    for k in range(10):
        committed += fr.add_chunk(chunk(T0_US + k * 1_000_000, 40, base=40 * k))
    assert committed == [fr.seq_of(T0_US)] and fr.stats()["implausible_time_samples"] == 0


def test_a_high_rate_uncompressed_channel_never_gives_a_subframe_of_64_kib(tmp_path, clock, keys):
    """Issue 8: a subframe of 64 KiB or more, first in a frame with an odd channel count, is misread
    by the data centre's reader.  2000 sps sent uncompressed is 80 000 bytes per channel and 10-s
    window: the frame carries each channel as consecutive subframes below 64 KiB, all signed, and
    every sample once."""
    codes = ("XX.STA01.00.BHZ", "XX.STA01.00.BHN", "XX.STA01.00.BHE")           # odd count
    box = Outbox(tmp_path / "outbox.sqlite", max_bytes=1 << 30, max_age_s=1e12, clock=clock)
    fr = Framer(STA, box, clock=clock, channels=[ChannelSpec(c, 101) for c in codes], keystore=keys[0],
                station_key_id=1, compress=False)
    rate = 2_000_000                                                         # mHz
    for k in range(11):
        x = np.vstack([np.arange(2000 * k, 2000 * (k + 1), dtype=np.int32) * (j + 1) for j in range(3)])
        fr.add_chunk(Chunk(STA, codes, T0_US + k * 1_000_000, rate, x, link.TQ_LOCKED, 0, 0, True))
    (frame,) = frames_in(box)
    lengths = [int.from_bytes(frame.raw[sf.span[0]:sf.span[0] + 4], "big") for sf in frame.subframes]
    assert max(lengths) < 65536 and len(frame.subframes) == 6, lengths
    assert cd11.verify_frame(frame, keys[1]).failures() == []
    for chan in ("BHZ", "BHN", "BHE"):
        got = np.concatenate([sf.samples() for sf in frame.subframes if sf.channel == chan])
        assert np.array_equal(got, np.arange(20_000, dtype=np.int32) * (codes.index(f"XX.STA01.00.{chan}") + 1))
