"""CD-1.1 consumer gap lists (spec cd11.md §3.3, §6.3): lowest, highest, gaps [first missing, next present)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ims_station.relay.gaps import Arrival, FrameSetState, Gap


def missing_runs(received: set[int]) -> list[tuple[int, int]]:
    """The reference: maximal runs of missing numbers strictly inside [min, max], end exclusive."""
    if not received:
        return []
    runs, start = [], None
    for n in range(min(received), max(received) + 1):
        if n not in received and start is None:
            start = n
        elif n in received and start is not None:
            runs.append((start, n))
            start = None
    return runs


def test_empty_set_is_acknowledged_as_zero_minus_one():
    assert FrameSetState("STA01:0").acknack_fields() == (0, -1, [])


def test_spec_example_acknack():
    # The spec's acknack vector: lowest 100, highest 120, gaps [103,105) and [110,111).
    s = FrameSetState("STA01:0")
    for n in [*range(100, 103), *range(105, 110), *range(111, 121)]:
        s.add(n, 0.0)
    assert s.acknack_fields() == (100, 120, [(103, 105), (110, 111)])
    assert s.missing() == 3 and s.received_count() == 18
    assert s.holds(102) and not s.holds(103) and not s.holds(99) and not s.holds(121)


def test_arrival_kinds_and_new_gap_flags():
    s = FrameSetState("X:0")
    assert s.add(10, 0).arrival is Arrival.FIRST
    assert s.add(11, 0).arrival is Arrival.NEXT
    r = s.add(15, 0)
    assert (r.arrival, r.new_gap) == (Arrival.AHEAD, True)
    assert s.acknack_fields() == (10, 15, [(12, 15)])
    r = s.add(13, 0)
    assert (r.arrival, r.new_gap) == (Arrival.FILLED, False)
    assert s.acknack_fields() == (10, 15, [(12, 13), (14, 15)])
    assert s.add(13, 0).arrival is Arrival.SEEN
    r = s.add(7, 0)                      # back-fill below lowest opens [8, 10)
    assert (r.arrival, r.new_gap) == (Arrival.BELOW, True)
    assert s.acknack_fields() == (7, 15, [(8, 10), (12, 13), (14, 15)])
    r = s.add(9, 0)
    assert (r.arrival, r.new_gap) == (Arrival.FILLED, False)
    assert s.add(6, 0).new_gap is False  # adjacent below: no gap


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 300), min_size=1, max_size=200))
def test_any_arrival_order_gives_exactly_the_missing_numbers(arrivals):
    s = FrameSetState("X:0", max_gaps=10_000)
    for n in arrivals:
        s.add(n, 0.0)
    received = set(arrivals)
    lowest, highest, gaps = s.acknack_fields()
    assert (lowest, highest) == (min(received), max(received))
    assert gaps == missing_runs(received)
    assert all(s.holds(n) for n in received)
    assert s.received_count() == len(received)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 500), min_size=1, max_size=300), st.integers(1, 6))
def test_cap_never_under_reports(arrivals, cap):
    """With a cap, gaps may cover received frames (resent, counted duplicate) but must cover every
    missing one: dropping a gap would make the station delete frames we never got."""
    s = FrameSetState("X:0", max_gaps=cap)
    merged = 0
    for n in arrivals:
        merged += s.add(n, 0.0).merged
    received = set(arrivals)
    lowest, highest, gaps = s.acknack_fields()
    assert (lowest, highest) == (min(received), max(received))
    assert len(gaps) <= cap
    reported = {n for a, b in gaps for n in range(a, b)}
    truly_missing = set(range(lowest, highest + 1)) - received
    assert truly_missing <= reported
    assert all(a < b for a, b in gaps) and all(gaps[i][1] < gaps[i + 1][0] for i in range(len(gaps) - 1))
    assert len(reported - truly_missing) <= merged


def test_cap_merges_the_closest_neighbours():
    s = FrameSetState("X:0", max_gaps=2)
    for n in (0, 2, 10, 12, 40):           # gaps [1,2) [3,10) [11,12) [13,40)
        s.add(n, 0.0)
    # Each new gap beyond 2 merged the pair with the fewest received frames between them.
    lowest, highest, gaps = s.acknack_fields()
    assert len(gaps) == 2 and (lowest, highest) == (0, 40)
    assert gaps == [(1, 12), (13, 40)]


def test_expiry_gives_up_old_gaps_only():
    s = FrameSetState("X:0", gap_expiry_s=100.0)
    s.add(0, 0.0)
    s.add(5, 10.0)        # gap [1,5) since 10
    s.add(9, 50.0)        # gap [6,9) since 50
    assert s.expire(105.0) == []
    gone = s.expire(120.0)
    assert [(g.start, g.end) for g in gone] == [(1, 5)]
    assert s.acknack_fields() == (0, 9, [(6, 9)])
    # A split gap keeps its age: filling part of it does not restart the clock.
    s.add(7, 140.0)
    assert [(g.start, g.end, g.since) for g in s.gaps] == [(6, 7, 50.0), (8, 9, 50.0)]


def test_record_round_trip():
    s = FrameSetState("STA01:0", sequence_offset=-3)
    for n in (5, 9, 20):
        s.add(n, 1.5)
    t = FrameSetState.from_record(s.to_record())
    assert t.acknack_fields() == s.acknack_fields() and t.sequence_offset == -3
    assert t.gaps == [Gap(6, 9, 1.5), Gap(10, 20, 1.5)]
    t.add(7, 2.0)                  # bisect index rebuilt from the record
    assert t.acknack_fields()[2] == [(6, 7), (8, 9), (10, 20)]


def test_invalid_cap_is_refused():
    with pytest.raises(ValueError):
        FrameSetState("X:0", max_gaps=0)
