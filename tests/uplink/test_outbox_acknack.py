"""``Outbox.apply_acknack``: the same decisions as the plain rule (every gap checked for every frame),
at a cost near-linear in frames + gaps, with the gap count bounded (issue 7 §4).

The cost is checked by counting the Python lines the outbox executes (deterministic), never by
timing: the timings are in ``bench/bench_acknack.py`` and docs/benchmarks.md.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ims_station.edge.outbox as outbox_mod
from ims_station.cd11.wire import MAX_GAPS
from ims_station.clock import FakeClock
from ims_station.edge.outbox import AcknackTooLargeError, Outbox, merge_gaps

FS = "STA01:0"
OTHER = "STA02:0"
HOLDOFF = 5.0

# How a frame stands when the acknack arrives.
KINDS = ("new", "sent_old", "sent_recent", "sent_old_pubacked", "sent_recent_pubacked", "requeued",
         "requeued_pubacked")


def reference(frames: dict[int, str], lowest: int, highest: int, gaps) -> tuple[int, set[int], set[int]]:
    """The acknack rule written plainly (the pre-fix implementation's loop): returns (deleted,
    remaining seqs, pending seqs afterwards)."""
    deleted, remaining, pending = 0, set(), set()
    for seq, kind in frames.items():
        sent = kind.startswith("sent")
        pubacked = kind.endswith("pubacked")
        held = kind.startswith("sent_recent")          # sent within the hold-off
        in_gap = any(a <= seq < b for a, b in gaps)
        if highest >= lowest and lowest <= seq <= highest and not in_gap:
            if pubacked:
                deleted += 1
                continue
            remaining.add(seq)
            if not sent:
                pending.add(seq)
        else:
            remaining.add(seq)
            if not sent or not held:                   # never sent, or re-queued now
                pending.add(seq)
    return deleted, remaining, pending


def build(directory: Path, clock: FakeClock, frames: dict[int, str], others: int = 3) -> Outbox:
    box = Outbox(directory / "o.sqlite", max_bytes=1 << 30, max_age_s=1e9, clock=clock, synchronous="NORMAL",
                 resend_holdoff_s=HOLDOFF, reserve_bytes=0)
    ids = {}
    for seq in sorted(frames):
        box.put("cd11", FS, seq, clock.t, b"f%d" % seq)
    for seq in range(others):                          # another frame set: never touched
        box.put("cd11", OTHER, seq, clock.t, b"o%d" % seq)
    ids = {(it.frame_set, it.seq): it.id for it in box.next_to_send(10_000, live_window_s=1e12)}

    def of(*kinds):
        return [ids[FS, s] for s, k in frames.items() if k in kinds]

    box.mark_sent(of("sent_old", "sent_old_pubacked", "requeued", "requeued_pubacked")
                  + [ids[OTHER, s] for s in range(others)])
    box.mark_pubacked(of("sent_old_pubacked", "requeued_pubacked") + [ids[OTHER, s] for s in range(others)])
    box.requeue(of("requeued", "requeued_pubacked"))
    clock.advance(100.0)                               # the first ones are past the hold-off
    box.mark_sent(of("sent_recent", "sent_recent_pubacked"))
    box.mark_pubacked(of("sent_recent_pubacked"))
    clock.advance(1.0)                                 # these are not
    return box


seqs = st.integers(min_value=-3, max_value=40)
frames_st = st.dictionaries(st.integers(min_value=0, max_value=36), st.sampled_from(KINDS), max_size=25)
gaps_st = st.lists(st.tuples(seqs, seqs), max_size=10)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=frames_st, lowest=seqs, highest=seqs, gaps=gaps_st)
def test_apply_acknack_decides_exactly_as_the_plain_rule(frames, lowest, highest, gaps):
    want_deleted, want_remaining, want_pending = reference(frames, lowest, highest, gaps)
    with tempfile.TemporaryDirectory() as d:
        box = build(Path(d), FakeClock(), frames)
        try:
            assert box.apply_acknack(FS, lowest, highest, gaps) == want_deleted
            assert {s for s in frames if box.contains(FS, s)} == want_remaining
            pending = box.next_to_send(10_000, live_window_s=1e12)
            assert {i.seq for i in pending if i.frame_set == FS} == want_pending
            assert not any(i.frame_set == OTHER for i in pending)        # the other set is untouched
            assert box.stats()["frames"] == len(want_remaining) + 3
        finally:
            box.close()


@settings(max_examples=300, deadline=None)
@given(lowest=seqs, highest=seqs, gaps=gaps_st)
def test_merged_gaps_are_disjoint_sorted_and_hold_exactly_the_gap_numbers_in_range(lowest, highest, gaps):
    merged = merge_gaps(lowest, highest, gaps)
    assert all(a < b for a, b in merged)
    assert all(b1 < a2 for (_, b1), (a2, _) in zip(merged, merged[1:]))    # disjoint, not even touching
    for x in range(-5, 45):
        assert any(a <= x < b for a, b in merged) == (lowest <= x <= highest and any(a <= x < b for a, b in gaps))


def _lines_executed_in_outbox(fn) -> int:
    """Python lines executed inside edge/outbox.py while *fn* runs (a cost that does not depend on
    the machine or its load)."""
    count = 0
    target = outbox_mod.__file__

    def local(frame, event, arg):
        nonlocal count
        if event == "line":
            count += 1
        return local

    def glob(frame, event, arg):
        return local if frame.f_code.co_filename == target else None

    old = sys.gettrace()
    sys.settrace(glob)
    try:
        fn()
    finally:
        sys.settrace(old)
    return count


@pytest.mark.parametrize("nframes, ngaps", [(400, 400), (100, 1600)])
def test_the_cost_of_an_acknack_grows_with_frames_plus_gaps_not_their_product(tmp_path, nframes, ngaps):
    """Issue 7: 60 480 frames x 4 000 gaps took 11 s on the MQTT thread (every gap for every frame)."""
    clock = FakeClock()
    box = build(tmp_path, clock, {s: "sent_old_pubacked" for s in range(0, 2 * nframes, 2)}, others=0)
    gaps = [(k, k + 1) for k in range(1, 2 * ngaps, 2)]      # every odd number: no frame in a gap
    gaps.reverse()                                         # in no particular order
    try:
        lines = _lines_executed_in_outbox(lambda: box.apply_acknack(FS, 0, 2 * nframes, gaps))
        assert box.stats()["frames"] == 0
    finally:
        box.close()
    # A few lines per frame and per gap; the product (160 000 and more) would be far above.
    assert lines <= 20 * (nframes + ngaps), lines


def test_an_acknack_with_more_gaps_than_the_codec_allows_is_refused_and_changes_nothing(tmp_path):
    clock = FakeClock()
    box = build(tmp_path, clock, {s: "sent_old_pubacked" for s in range(10)}, others=0)
    try:
        with pytest.raises(AcknackTooLargeError, match=str(MAX_GAPS)):
            box.apply_acknack(FS, 0, 9, ((100 + k, 101 + k) for k in range(MAX_GAPS + 1)))
        assert box.stats()["frames"] == 10
        assert box.apply_acknack(FS, 0, 9, [(100 + k, 101 + k) for k in range(MAX_GAPS)]) == 10
    finally:
        box.close()
