"""Auxiliary mode in the outbox (edge/outbox.py, "Auxiliary mode"; docs/uplink.md): data frames are
held in the station's buffer until a window releases them; acknacks never make them sendable;
the buffer obeys the age and byte bounds; a version-1 outbox file opens and is upgraded."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ims_station.edge.outbox import SCHEMA_VERSION, Outbox, OutboxOpenError

from .test_outbox import published

FS = "AUX1:0"
EV = "AUX1:events"
DATA = Path(__file__).parent / "data"
T0 = 1_700_000_000.0


def make(tmp_path, clock, **kw) -> Outbox:
    kw.setdefault("max_bytes", 10_000_000)
    kw.setdefault("max_age_s", 7 * 86400)
    kw.setdefault("hold_kinds", ("cd11",))
    kw.setdefault("hold_span_s", 10.0)
    return Outbox(tmp_path / "outbox.sqlite", clock=clock, **kw)


def fill(box: Outbox, t0: float, seqs: range) -> None:
    """Frames seq s at t0 + 10 (s - first): one 10-s frame per sequence number."""
    for s in seqs:
        box.put("cd11", FS, s, t0 + 10 * (s - seqs.start), b"frame-%d" % s)


def sendable(box: Outbox) -> list[int]:
    return [it.seq for it in box.next_to_send(1000, live_window_s=1e9)]


def test_data_frames_are_held_and_events_are_not(tmp_path, clock):
    box = make(tmp_path, clock)
    t0 = clock.t - 100
    fill(box, t0, range(100, 105))
    box.put("events", EV, 0, clock.t, b'{"type":"trigger"}')
    assert [it.frame_set for it in box.next_to_send(100, live_window_s=1e9)] == [EV]
    st = box.stats()
    assert (st["held"], st["held_bytes"], st["oldest_held"], st["pending"]) == (5, 5 * 9, t0, 1)


def test_release_sends_the_frames_overlapping_the_window_and_only_those(tmp_path, clock):
    box = make(tmp_path, clock)
    t0 = clock.t - 100
    fill(box, t0, range(100, 110))
    # [t0 + 25, t0 + 45): frames starting at t0+20 (covers 20..30), 30, 40; not t0+50.
    assert box.release(FS, t0 + 25, t0 + 45) == 3
    assert sendable(box) == [102, 103, 104]
    assert box.release(FS, t0 + 25, t0 + 45) == 0           # already released: nothing new
    assert box.stats()["held"] == 7 and box.stats()["released_frames"] == 3
    w = box.window(FS, t0 + 25, t0 + 45)
    assert w == {"seqs": [102, 103, 104], "held": 0, "highest_committed": 109, "evicted_through": None}
    with pytest.raises(ValueError):
        box.release(FS, t0 + 45, t0 + 25)


def test_a_window_into_the_future_releases_frames_committed_later_and_is_durable(tmp_path, clock):
    box = make(tmp_path, clock)
    t0 = clock.t - 30
    fill(box, t0, range(100, 103))
    assert box.release(FS, t0 + 15, clock.t + 40) == 2      # 101 (t0+10..20) and 102
    box.close()
    box = make(tmp_path, clock)                             # the window survives a restart
    for s in range(103, 110):
        box.put("cd11", FS, s, t0 + 10 * (s - 100), b"frame-%d" % s)
    # t0 + 30 .. t0 + 60 start before clock.t + 40 = t0 + 70; 107 (t0 + 70) does not overlap.
    assert sendable(box) == [101, 102, 103, 104, 105, 106]
    assert box.stats()["held"] == 4                          # 100, 107, 108, 109
    box.put("cd11", "OTHER:0", 1, t0 + 40, b"x")            # another frame set: not released
    assert 1 not in sendable(box)


def test_acknack_gaps_never_resend_held_frames_and_delivered_frames_return_to_the_buffer(tmp_path, clock):
    box = make(tmp_path, clock, resend_holdoff_s=0)
    t0 = clock.t - 200
    fill(box, t0, range(100, 120))
    box.release(FS, t0 + 50, t0 + 70)                       # 105, 106
    box.release(FS, t0 + 150, t0 + 170)                     # 115, 116
    box.put("events", EV, 0, clock.t, b"{}")
    assert [it.seq for it in published(box)] == [0, 105, 106, 115, 116]     # the event first (issue 9)
    # The relay saw 105, 106, 115, 116: its gap [107, 115) covers held frames only.
    assert box.apply_acknack(FS, 105, 116, [(107, 115)]) == 4
    assert box.apply_acknack(EV, 0, 0, []) == 1
    assert sendable(box) == []                               # nothing requeued
    st = box.stats()
    assert st["held"] == 20 and st["frames"] == 20 and st["in_flight"] == 0   # delivered: held again
    # An acknack claiming everything is missing (a relay that lost its state) resends nothing held.
    assert box.apply_acknack(FS, 0, -1, []) == 0
    clock.advance(1)
    assert sendable(box) == []
    # A later request for the window sends the delivered frames again (the relay dedupes).
    assert box.release(FS, t0 + 50, t0 + 60) == 1 and sendable(box) == [105]


def test_held_frames_roll_off_by_age_without_alarm_and_bytes_evict_with_one(tmp_path, clock):
    alarms = []
    box = make(tmp_path, clock, max_age_s=100, max_bytes=2_000_000, on_alarm=alarms.append)
    t0 = clock.t - 95
    fill(box, t0, range(100, 110))                          # t0 .. t0 + 90
    clock.advance(30)                                       # 100..102 now older than 100 s
    box.put("cd11", FS, 110, t0 + 100, b"frame-110")
    st = box.stats()
    assert st["held_expired_frames"] == 3 and st["evicted"] == 0 and alarms == []
    assert box.window(FS, t0, t0 + 30)["evicted_through"] == 102
    assert st["oldest_held"] == t0 + 30
    # The byte bound evicts the oldest, held or not, with the usual alarm.
    big = make(tmp_path / "b", clock, max_bytes=1 << 20, on_alarm=alarms.append)
    for s in range(5):
        big.put("cd11", FS, s, clock.t - 50 + 10 * s, bytes(300_000))
    assert big.stats()["evicted"] == 2 and alarms and alarms[-1]["reason"] == "bytes"
    assert big.window(FS, clock.t - 60, clock.t)["evicted_through"] == 1


def test_opening_without_auxiliary_mode_sends_the_buffer(tmp_path, clock):
    box = make(tmp_path, clock)
    fill(box, clock.t - 50, range(100, 103))
    box.close()
    box = make(tmp_path, clock, hold_kinds=())
    assert sendable(box) == [100, 101, 102] and box.stats()["held"] == 0


def test_a_version_1_outbox_made_by_the_previous_code_opens_and_is_upgraded(tmp_path, clock):
    """tests/uplink/data/outbox-v1.sqlite was written by the outbox of main before auxiliary mode
    (schema 1): frames 178000000 (sent, PUBACKed), 178000001-2 of XV1:0, one event, one evicted
    frame, the ACK point of board 7 -- at time 1_780_000_050 with max_age_s 60."""
    shutil.copy(DATA / "outbox-v1.sqlite", tmp_path / "outbox.sqlite")
    clock.t = 1_780_000_050.0
    box = make(tmp_path, clock, max_age_s=3600)
    con = sqlite3.connect(tmp_path / "outbox.sqlite")
    assert con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == SCHEMA_VERSION == 2
    con.close()
    st = box.stats()
    assert (st["frames"], st["held"], st["evicted"]) == (4, 0, 1)
    assert box.ack_points() == {7: (1, 42, 123)} and box.ack_point_boots() == {7: 1}
    assert box.highest_committed("XV1:0") == 178_000_002
    # Its frames were committed before auxiliary mode: they are sent, the one in flight again.
    assert sorted(sendable(box)) == [0, 178_000_000, 178_000_001, 178_000_002]
    # New frames of the upgraded file are held; eviction is now remembered.
    box.put("cd11", "XV1:0", 178_000_003, 1_780_000_030.0, b"new")
    assert box.stats()["held"] == 1
    assert box.window("XV1:0", 1_780_000_000, 1_780_000_040)["evicted_through"] is None
    box.close()
    box = make(tmp_path, clock, max_age_s=3600)             # and opens again as version 2
    assert box.stats()["frames"] == 5


def test_an_outbox_of_a_newer_schema_is_refused(tmp_path, clock):
    make(tmp_path, clock).close()
    con = sqlite3.connect(tmp_path / "outbox.sqlite")
    con.execute("UPDATE meta SET value = 99 WHERE key = 'schema_version'")
    con.commit()
    con.close()
    with pytest.raises(OutboxOpenError, match="schema version 99.*newer"):
        make(tmp_path, clock)
    con = sqlite3.connect(tmp_path / "outbox.sqlite")
    con.execute("UPDATE meta SET value = 2 WHERE key = 'schema_version'")
    con.commit()
    con.close()
    make(tmp_path, clock).close()       # the refused open released its lock


def test_maintenance_commands_see_held_frames_and_leave_them_held(tmp_path, clock):
    from ims_station.edge import outbox_admin

    box = make(tmp_path, clock)
    fill(box, clock.t - 50, range(100, 103))
    box.release(FS, clock.t - 50, clock.t - 40)
    box.close()
    admin = outbox_admin.open_exclusive(tmp_path / "outbox.sqlite")      # as `ims-station edge outbox` opens it
    assert [(f.seq, f.state) for f in outbox_admin.list_frames(admin)] == [(100, "pending"), (101, "held"),
                                                                           (102, "held")]
    admin.close()
    assert make(tmp_path, clock).stats()["held"] == 2


OPS = st.lists(st.one_of(
    st.tuples(st.just("put"), st.integers(1, 3)),
    st.tuples(st.just("release"), st.integers(-2, 25), st.integers(1, 6)),
    st.tuples(st.just("publish"), st.integers(1, 5)),
    st.tuples(st.just("acknack"), st.integers(-1, 25), st.integers(-1, 25),
              st.lists(st.tuples(st.integers(0, 25), st.integers(0, 25)), max_size=3)),
    st.tuples(st.just("reopen"),)), max_size=25)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_only_released_frames_are_ever_sent_whatever_the_acknacks(tmp_path_factory, ops):
    """Any interleaving of commits, releases, publishes, acknacks (any range and gaps) and
    restarts: a data frame is handed to the uplink only if a window released before overlapped
    it, and no data frame ever leaves the buffer (the bounds are not reached here)."""
    from ims_station.clock import FakeClock

    clock = FakeClock(T0 + 1000)
    d = tmp_path_factory.mktemp("prop")
    box = make(d, clock, resend_holdoff_s=0)
    windows: list[tuple[float, float]] = []
    committed = 0
    try:
        for op in ops:
            if op[0] == "put":
                for _ in range(op[1]):
                    box.put("cd11", FS, committed, T0 + 10 * committed, b"f%d" % committed)
                    committed += 1
            elif op[0] == "release":
                a = T0 + 10 * op[1] + 3            # windows not on frame boundaries
                windows.append((a, a + 10 * op[2]))
                box.release(FS, *windows[-1])
            elif op[0] == "publish":
                items = box.next_to_send(op[1], live_window_s=1e9)
                for it in items:
                    t = T0 + 10 * it.seq
                    assert any(t < b and t + 10 > a for a, b in windows), (it.seq, windows)
                box.mark_sent([i.id for i in items])
                box.mark_pubacked([i.id for i in items])
            elif op[0] == "acknack":
                box.apply_acknack(FS, op[1], op[2], [(min(g), max(g)) for g in op[3]])
                clock.advance(1)
            else:
                box.close()
                box = make(d, clock, resend_holdoff_s=0)
            assert box.stats()["frames"] == committed
    finally:
        box.close()

