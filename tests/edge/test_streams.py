"""StreamAssembler: continuity in time, gap/overlap accounting, segments, per-station chunks."""

from __future__ import annotations

import numpy as np

from ims_station.edge.ingest import DataBlock, GapReport
from ims_station.edge.streams import Interval, StreamAssembler
from ims_station.firmware import link

T0 = 1_700_000_000_000_000
CODES = {(7, 0): "IM.XS01.00.BHZ", (7, 1): "IM.XS01.00.BHN", (7, 2): "IM.XS01.00.BHE", (7, 3): "IM.XS02.00.BDF"}


def blk(seq, t, n=100, rate=100_000, chans=(0, 1, 2), tq=link.TQ_LOCKED, status=0, clip=0, start=0):
    x = np.arange(start, start + n, dtype=np.int32)
    return DataBlock(7, 1, seq, t, rate, tq, status, clip, tuple(chans),
                     np.vstack([x + 1000 * c for c in chans]).astype(np.int32))


def test_contiguous_blocks_within_half_a_sample_make_one_segment_and_contiguous_chunks():
    sa = StreamAssembler(CODES)
    c1 = sa.push(blk(0, T0))
    c2 = sa.push(blk(1, T0 + 1_000_000 + 4_999, start=100))      # 4.999 ms late at 100 sps: within 5 ms
    assert [c.contiguous for c in c1 + c2] == [False, True]
    assert c1[0].station == "IM.XS01" and c1[0].codes == ("IM.XS01.00.BHZ", "IM.XS01.00.BHN", "IM.XS01.00.BHE")
    assert c1[0].samples.shape == (3, 100) and c1[0].samples.dtype == np.int32
    s = sa.streams["IM.XS01.00.BHZ"]
    assert (s.samples, s.gaps, s.overlaps, len(s.segments)) == (200, 0, 0, 1)


def test_gap_is_counted_with_its_exact_interval():
    sa = StreamAssembler(CODES)
    sa.push(blk(0, T0))
    (c,) = sa.push(blk(2, T0 + 2_000_000))                           # one block of 1 s missing
    assert not c.contiguous
    s = sa.streams["IM.XS01.00.BHN"]
    assert (s.gaps, s.gap_us) == (1, 1_000_000)
    assert list(s.gap_intervals) == [Interval(T0 + 1_000_000, T0 + 2_000_000)]
    assert len(s.segments) == 2


def test_overlap_trims_the_new_block_and_keeps_each_instant_once():
    sa = StreamAssembler(CODES)
    sa.push(blk(0, T0))
    (c,) = sa.push(blk(1, T0 + 700_000, start=70))                   # clock stepped back 300 ms
    s = sa.streams["IM.XS01.00.BHZ"]
    assert (s.overlaps, s.overlap_us, s.samples_dropped) == (1, 300_000, 30)
    assert list(s.overlap_intervals) == [Interval(T0 + 700_000, T0 + 1_000_000)]
    assert c.t_first_us == T0 + 1_000_000 and c.n_samples == 70 and c.contiguous
    np.testing.assert_array_equal(c.samples[0], np.arange(100, 170))
    assert s.samples == 170
    # A block entirely inside what was delivered yields nothing.
    assert sa.push(blk(2, T0 + 100_000, n=10)) == []
    assert s.samples_dropped == 40


def test_time_quality_and_flags_split_segments():
    sa = StreamAssembler(CODES)
    sa.push(blk(0, T0))
    sa.push(blk(1, T0 + 1_000_000, tq=link.TQ_HOLDOVER))
    sa.push(blk(2, T0 + 2_000_000, tq=link.TQ_HOLDOVER, status=link.S_CALIBRATION, clip=0b010))
    sa.push(blk(3, T0 + 3_000_000, tq=link.TQ_HOLDOVER, status=link.S_CALIBRATION))
    segs = list(sa.streams["IM.XS01.00.BHN"].segments)
    assert [(g.time_quality, g.status, g.samples, g.clip) for g in segs] == [
        (link.TQ_LOCKED, 0, 100, False), (link.TQ_HOLDOVER, 0, 100, False),
        (link.TQ_HOLDOVER, link.S_CALIBRATION, 200, True)]
    assert segs[2].start_us == T0 + 2_000_000 and segs[2].end_us == T0 + 4_000_000
    assert sa.streams["IM.XS01.00.BHZ"].segments[-1].clip is False


def test_chunks_are_per_station_and_unknown_channels_use_board_ids():
    sa = StreamAssembler(CODES)
    chunks = sa.push(blk(0, T0, chans=(0, 3, 5), clip=0b110))
    by = {c.station: c for c in chunks}
    assert set(by) == {"IM.XS01", "IM.XS02", "board7"}
    assert by["IM.XS02"].codes == ("IM.XS02.00.BDF",) and by["IM.XS02"].clip_mask == 1
    assert by["board7"].codes == ("7/5",) and by["IM.XS01"].clip_mask == 0
    np.testing.assert_array_equal(by["board7"].samples[0], np.arange(5000, 5100))


def test_link_gap_reports_are_kept():
    sa = StreamAssembler()
    g = GapReport(7, 1, 3, 4, T0, T0 + 10, (0,), 100_000, "timeout")
    assert sa.push(g) == [] and sa.link_gaps == [g] and sa.summary()["link_gaps"] == 1
