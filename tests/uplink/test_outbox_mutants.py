"""The outbox's bookkeeping that a station operator reads or relies on, stated exactly: what an
acknack deletes and counts, what an eviction removes and reports, what the SOH statistics say, what
the maintenance commands change.  Written from the survivors of a mutation run (docs/testing.md,
"Mutation testing"): each test names the behaviour, with figures exact enough that an off-by-one
or a swapped field fails it."""

from __future__ import annotations

import errno
import itertools
import logging
import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from ims_station.cd11.wire import MAX_GAPS
from ims_station.edge.outbox import AcknackTooLargeError, Outbox, OutboxError, OutboxFullError

from tests.uplink.test_outbox import FS, make, published


def pending(box: Outbox) -> list[int]:
    return [i.seq for i in box.next_to_send(10_000, live_window_s=1e9)]


# -- acknack ------------------------------------------------------------------------------------
def test_acknowledged_frames_are_counted_across_acknacks_and_restarts_and_free_their_bytes(tmp_path, clock):
    box = make(tmp_path, clock)
    for seq, size in ((1, 100), (2, 200), (3, 300), (4, 400)):
        box.put("cd11", FS, seq, clock.t, bytes([seq]) * size)
    published(box)
    assert box.apply_acknack(FS, 1, 2, []) == 2
    st = box.stats()
    assert (st["acked_frames"], st["frames"], st["bytes"]) == (2, 2, 700)
    assert box.apply_acknack(FS, 3, 3, []) == 1
    st = box.stats()
    assert (st["acked_frames"], st["frames"], st["bytes"]) == (3, 1, 400)
    box.close()
    st = make(tmp_path, clock).stats()
    assert (st["acked_frames"], st["frames"], st["bytes"]) == (3, 1, 400)


def test_resends_queued_counts_every_frame_an_acknack_sent_back(tmp_path, clock):
    box = make(tmp_path, clock, resend_holdoff_s=5)
    for seq in range(1, 6):
        box.put("cd11", FS, seq, clock.t, bytes([seq]))
    published(box)
    clock.advance(10)
    assert box.apply_acknack(FS, 1, 5, [(2, 4)]) == 3                # 2 and 3 in a gap
    assert box.stats()["resends_queued"] == 2
    published(box)
    clock.advance(10)
    assert box.apply_acknack(FS, 2, 2, [(2, 3)]) == 0                # 2 a gap, 3 an implied gap
    assert box.stats()["resends_queued"] == 4


def test_a_frame_sent_exactly_the_holdoff_ago_is_sent_again(tmp_path, clock):
    box = make(tmp_path, clock, resend_holdoff_s=5)
    box.put("cd11", FS, 1, clock.t, b"a")
    box.put("cd11", FS, 2, clock.t, b"b")
    published(box)
    clock.advance(5)
    assert box.apply_acknack(FS, 1, 1, []) == 1
    assert pending(box) == [2]


def test_frames_between_several_gaps_are_deleted_and_those_inside_them_kept(tmp_path, clock):
    box = make(tmp_path, clock)
    for seq in range(0, 8):
        box.put("cd11", FS, seq, clock.t, bytes([seq]))
    published(box)
    clock.advance(10)
    assert box.apply_acknack(FS, 0, 7, [(1, 2), (3, 4), (5, 6)]) == 5
    assert pending(box) == [1, 3, 5]


def test_an_acknack_reads_at_most_one_gap_more_than_the_codec_allows(tmp_path, clock):
    box = make(tmp_path, clock)
    box.put("cd11", FS, 1, clock.t, b"a")
    drawn = itertools.count()

    def endless_gaps():
        for n in drawn:
            yield (n, n + 1)

    with pytest.raises(AcknackTooLargeError):
        box.apply_acknack(FS, 0, 10, endless_gaps())
    assert next(drawn) == MAX_GAPS + 1             # the bound is on what is read, not only on the list
    assert box.contains(FS, 1)


# -- bounds and evictions -------------------------------------------------------------------------
def test_an_eviction_alarm_names_frames_bytes_and_sequence_range_and_counters_add_up(tmp_path, clock):
    alarms = []
    box = make(tmp_path, clock, max_bytes=300, on_alarm=alarms.append)
    for seq in (1, 2, 3):
        box.put("cd11", FS, seq, clock.t + seq, bytes(100))
    assert alarms == []                                        # exactly at the bound: nothing evicted
    box.put("cd11", FS, 4, clock.t + 4, bytes(100))
    assert alarms == [{"alarm": "outbox_eviction", "reason": "bytes", "time": clock.t,
                       "frames": 1, "bytes": 100, "first_seq": 1, "last_seq": 1}]
    clock.advance(1)
    box.put("cd11", FS, 5, clock.t + 5, bytes(250))            # 550 bytes: 2, 3 and 4 must go
    assert alarms[-1] == {"alarm": "outbox_eviction", "reason": "bytes", "time": clock.t,
                          "frames": 3, "bytes": 300, "first_seq": 2, "last_seq": 4}
    st = box.stats()
    assert (st["evicted"], st["evicted_bytes"], st["alarms"]) == (4, 400, 2)
    assert st["last_alarm"] == alarms[-1]
    assert pending(box) == [5]


def test_the_byte_bound_holds_when_exceeded_by_a_single_byte(tmp_path, clock):
    box = make(tmp_path, clock, max_bytes=300)
    for seq in (1, 2, 3):
        box.put("cd11", FS, seq, clock.t + seq, bytes(100))
    box.put("cd11", FS, 4, clock.t + 4, bytes(101))            # 401 bytes: one frame is not enough
    st = box.stats()
    assert st["bytes"] <= 300 and (st["frames"], st["bytes"], st["evicted"]) == (2, 201, 2)
    assert pending(box) == [3, 4]


# -- what the SOH statistics report ---------------------------------------------------------------
def test_stats_of_an_empty_outbox(tmp_path, clock):
    st = make(tmp_path, clock, max_bytes=1000, max_age_s=60).stats()
    assert {k: st[k] for k in ("frames", "bytes", "max_bytes", "max_age_s", "fill", "oldest",
                               "oldest_age_s", "pending", "in_flight", "resends_queued", "last_alarm")} == {
        "frames": 0, "bytes": 0, "max_bytes": 1000, "max_age_s": 60.0, "fill": 0.0, "oldest": None,
        "oldest_age_s": None, "pending": 0, "in_flight": 0, "resends_queued": 0, "last_alarm": None}


def test_stats_report_fill_age_of_the_oldest_frame_pending_and_in_flight(tmp_path, clock):
    box = make(tmp_path, clock, max_bytes=1000, max_age_s=3600)
    box.put("cd11", FS, 1, clock.t - 300, bytes(100))
    box.put("cd11", FS, 2, clock.t - 200, bytes(150))
    box.put("cd11", FS, 3, clock.t - 100, bytes(250))
    first = box.next_to_send(1, live_window_s=1e9)
    box.mark_sent([first[0].id])
    clock.advance(20)
    st = box.stats()
    assert {k: st[k] for k in ("frames", "bytes", "max_bytes", "max_age_s", "fill", "oldest",
                               "oldest_age_s", "pending", "in_flight")} == {
        "frames": 3, "bytes": 500, "max_bytes": 1000, "max_age_s": 3600.0, "fill": 0.5,
        "oldest": clock.t - 320, "oldest_age_s": 320.0, "pending": 2, "in_flight": 1}


def test_next_to_send_with_a_limit_of_one_gives_one_frame(tmp_path, clock):
    box = make(tmp_path, clock)
    box.put("cd11", FS, 1, clock.t, b"a")
    box.put("cd11", FS, 2, clock.t, b"b")
    assert [i.seq for i in box.next_to_send(1, live_window_s=60)] == [1]
    assert box.next_to_send(0, live_window_s=60) == []


def test_an_ack_point_set_without_a_boot_number_records_boot_0(tmp_path, clock):
    box = make(tmp_path, clock)
    box.set_ack_point(3, 1, 42)
    assert box.ack_point_boots() == {3: 0}
    assert box.ack_points() == {3: (1, 42, None)}


# -- maintenance: delete and replace_payload ------------------------------------------------------
def test_maintenance_refuses_delete_and_replace_on_an_outbox_a_gateway_could_hold(tmp_path, clock):
    box = make(tmp_path, clock)
    box.put("cd11", FS, 1, clock.t, b"a")
    with pytest.raises(OutboxError, match=r": delete needs the outbox opened with exclusive=True "
                                          r"\(no gateway running\)"):
        box.delete([1])
    with pytest.raises(OutboxError, match=r": replace_payload needs the outbox opened with exclusive=True"):
        box.replace_payload([(1, b"b")])
    assert box.contains(FS, 1)


def test_delete_skips_unknown_ids_counts_what_it_removed_and_the_purge_count_is_durable(tmp_path, clock):
    box = make(tmp_path, clock, exclusive=True)
    for seq, size in ((1, 10), (2, 20), (3, 30)):
        box.put("cd11", FS, seq, clock.t, bytes([seq]) * size)
    ids = {i.seq: i.id for i in box.next_to_send(10, live_window_s=1e9)}
    assert box.delete([ids[1], 9999, ids[3]]) == (2, 40)
    st = box.stats()
    assert (st["frames"], st["bytes"], st["purged_frames"]) == (1, 20, 2)
    assert box.delete([ids[2]]) == (1, 20)
    assert (box.stats()["frames"], box.stats()["bytes"], box.stats()["purged_frames"]) == (0, 0, 3)
    box.close()
    assert make(tmp_path, clock).stats()["purged_frames"] == 3


def test_replace_payload_skips_unknown_ids_and_the_byte_count_follows_the_new_sizes(tmp_path, clock):
    box = make(tmp_path, clock, exclusive=True)
    for seq, size in ((1, 10), (2, 20), (3, 30)):
        box.put("cd11", FS, seq, clock.t, bytes([seq]) * size)
    ids = {i.seq: i.id for i in published(box)}
    assert box.replace_payload([(ids[1], bytes(15)), (9999, b"x"), (ids[3], bytes(5))]) == 2
    assert box.stats()["bytes"] == 15 + 20 + 5
    # The new bytes are pending and not PUBACKed: an acknack cannot delete them before they are
    # published again; the untouched frame 2 it can.
    assert pending(box) == [1, 3]
    clock.advance(10)
    assert box.apply_acknack(FS, 1, 3, []) == 1
    assert [it.seq for it, _ in box.items()] == [1, 3]
    assert [bytes(it.payload) for it, _ in box.items()] == [bytes(15), bytes(5)]


def test_outbox_full_says_why_the_disk_was_full(tmp_path, clock):
    box = make(tmp_path, clock)
    box._db.execute("PRAGMA max_page_count=30")
    with pytest.raises(OutboxFullError) as info:
        box.put("cd11", FS, 1, clock.t, os.urandom(500_000))
    assert isinstance(info.value.__cause__, sqlite3.OperationalError)
    assert "full" in str(info.value.__cause__)


# -- what counts as a full disk (put evicts and retries on it, and only on it) ----------------------
def _sqlite_error(cls, message: str, code: int | None = None):
    err = cls(message)
    if code is not None:
        err.sqlite_errorcode = code
    return err


@pytest.mark.parametrize("err, full", [
    (_sqlite_error(sqlite3.OperationalError, "whatever the message", sqlite3.SQLITE_FULL), True),
    (_sqlite_error(sqlite3.OperationalError, "database or disk is full"), True),
    (_sqlite_error(sqlite3.OperationalError, "Database or disk is full"), True),
    (_sqlite_error(sqlite3.OperationalError, "disk I/O error: No space left on device"), True),
    (_sqlite_error(sqlite3.OperationalError, "database is locked", sqlite3.SQLITE_BUSY), False),
    (_sqlite_error(sqlite3.OperationalError, "database is locked"), False),
    (OSError(errno.ENOSPC, "No space left on device"), True),
    (OSError(errno.EIO, "Input/output error"), False),
    (ValueError("database or disk is full"), False),
])
def test_a_full_disk_is_recognised_by_sqlite_code_message_or_errno_and_nothing_else(err, full):
    from ims_station.edge.outbox import _is_disk_full

    assert _is_disk_full(err) is full


# -- the error an operator reads when the database cannot be opened --------------------------------
def test_open_errors_say_damaged_read_only_or_other_and_name_the_file(tmp_path):
    from ims_station.edge.outbox import OutboxCorruptError, OutboxOpenError, _open_error

    p = tmp_path / "outbox.sqlite"
    for err in (_sqlite_error(sqlite3.DatabaseError, "file is not a database", sqlite3.SQLITE_NOTADB),
                _sqlite_error(sqlite3.OperationalError, "database disk image is malformed", sqlite3.SQLITE_CORRUPT),
                sqlite3.DatabaseError("file is not a database")):
        e = _open_error(p, err)
        assert type(e) is OutboxCorruptError
        assert str(e).startswith(f"outbox {p} is damaged ({err}): move it")
        assert f"`sqlite3 {p} .recover`" in str(e)
    for err in (_sqlite_error(sqlite3.OperationalError, "attempt to write a database", sqlite3.SQLITE_READONLY),
                sqlite3.OperationalError("attempt to write a readonly database")):
        e = _open_error(p, err)
        assert type(e) is OutboxOpenError
        assert str(e) == (f"outbox {p} cannot be written ({err}): make it and its directory writable by "
                          "the gateway's user (is the file system mounted read-only?)")
    err = _sqlite_error(sqlite3.OperationalError, "disk I/O error", sqlite3.SQLITE_IOERR)
    e = _open_error(p, err)
    assert type(e) is OutboxOpenError
    assert str(e) == f"outbox {p} cannot be opened ({err}): check the file, its directory and the file system"


# -- the default byte bound ---------------------------------------------------------------------------
def test_the_default_bound_counts_only_streams_with_channels_and_a_rate_and_says_how(tmp_path):
    from ims_station.edge.outbox import FALLBACK_MAX_BYTES, default_max_bytes, estimate_frame_bytes

    assert estimate_frame_bytes([(1, 1.0)]) == 10 * 4 + 160 + 192          # 10-s frames by default
    # One channel at 1 sps (a real weather channel) counts; no channels or no rate do not.
    bound, how = default_max_bytes([(1, 1.0), (3, 0.0), (0, 100.0)])
    assert (bound, how) == (60480 * 392, {"rule": "7 days", "frame_bytes": 392, "frames": 60480,
                                          "wanted": 60480 * 392})
    bound, how = default_max_bytes([(1, 1.0)], frame_seconds=5.0)
    assert (bound, how["frame_bytes"], how["frames"]) == (120960 * 372, 5 * 4 + 160 + 192, 120960)
    assert default_max_bytes([(2, 0.0)]) == (FALLBACK_MAX_BYTES, {"rule": "no channels known: fixed fallback",
                                                                 "wanted": FALLBACK_MAX_BYTES})


def test_the_default_bound_is_capped_only_by_a_disk_smaller_than_it(tmp_path, monkeypatch):
    from ims_station.edge import outbox as ob

    want = 60480 * 392
    for disk, capped in ((want, False), (want - 1, True)):
        monkeypatch.setattr(ob, "disk_bound", lambda path, min_free_bytes=None, d=disk: d)
        bound, how = ob.default_max_bytes([(1, 1.0)], path=tmp_path / "outbox.sqlite")
        assert bound == disk and how["disk"] == disk and ("capped_by" in how) is capped


def test_the_disk_bound_counts_the_outbox_files_and_looks_at_the_nearest_existing_folder(tmp_path, monkeypatch):
    from ims_station.edge import outbox as ob

    asked = []
    total, free = 40_000_003, 20_000_000
    real = shutil.disk_usage(tmp_path)

    def usage(path):
        asked.append(Path(path))
        return real._replace(total=total, free=free)

    monkeypatch.setattr(ob.shutil, "disk_usage", usage)
    p = tmp_path / "outbox.sqlite"
    p.write_bytes(bytes(1000))
    p.with_name("outbox.sqlite-wal").write_bytes(bytes(300))
    p.with_name("outbox.sqlite.reserve").write_bytes(bytes(50))
    margin = min(16 << 20, total // 4)
    assert ob.disk_bound(p) == int((free + 1350 - margin) * 0.9)
    assert ob.disk_bound(p, min_free_bytes=0) == int((free + 1350) * 0.9)
    assert asked[-1] == tmp_path
    assert ob.disk_bound(tmp_path / "a" / "b" / "outbox.sqlite", min_free_bytes=0) == int(free * 0.9)
    assert asked[-1] == tmp_path                                   # not a folder that does not exist
    free = 0
    assert ob.disk_bound(p) == 0                                   # never negative


# -- low free space: evict before SQLite meets a full disk -------------------------------------------
def _low_space_box(tmp_path, clock, frames: int, **kw) -> Outbox:
    box = make(tmp_path, clock, reserve_bytes=0, **kw)
    box._free_bytes = lambda: (1 << 40, 1 << 41)                   # plenty while filling
    for seq in range(frames):
        box.put("cd11", FS, seq, clock.t + seq, bytes([seq % 256]) * 1000)
    return box


@pytest.mark.parametrize("total, free, min_free, evicts", [
    (1 << 30, 16 << 20, None, False),          # margin min(16 MiB, a quarter): exactly at it is enough
    (1 << 30, (16 << 20) - 1, None, True),
    (1 << 30, (16 << 20) + (1 << 19), None, False),
    (40 << 20, 10 << 20, None, False),         # a small file system: a quarter of it
    (40 << 20, 9 << 20, None, True),
    ((40 << 20) + 3, 10 << 20, None, False),   # a quarter in whole bytes
    (1 << 30, 1 << 20, 0, False),              # the operator's min_free_bytes replaces the default
    (1 << 30, 1 << 20, 2 << 20, True),
])
def test_eviction_starts_when_free_space_falls_under_the_margin(tmp_path, clock, total, free, min_free, evicts):
    box = _low_space_box(tmp_path, clock, 100, min_free_bytes=min_free)
    box._free_bytes = lambda: (free, total)
    box.put("cd11", FS, 1000, clock.t + 1000, bytes(1000))
    assert (box.stats()["evicted"] > 0) is evicts


def test_on_low_space_the_oldest_frames_go_in_steps_of_at_least_64_kib_plus_the_frames_overhead(tmp_path, clock):
    box = _low_space_box(tmp_path, clock, 300)
    page = box._db.execute("PRAGMA page_size").fetchone()[0]
    assert box._db.execute("PRAGMA freelist_count").fetchone()[0] == 0
    box._free_bytes = lambda: (0, 1 << 30)
    box.put("cd11", FS, 1000, clock.t + 1000, bytes(1000))         # small frame: 64 KiB at least
    st = box.stats()
    assert st["evicted"] == -(-(64 << 10) // 1000) == 66 and st["low_space_events"] == 1
    assert pending(box)[0] == 66                                      # the oldest went
    # A large frame: its size + a quarter + 4 pages, less the pages freed by the first eviction.
    reusable = box._db.execute("PRAGMA freelist_count").fetchone()[0] * page
    size = 200_000
    need = size + size // 4 + 4 * page - reusable
    box.put("cd11", FS, 1001, clock.t + 1001, bytes(size))
    st = box.stats()
    assert st["evicted"] == 66 + -(-need // 1000) and st["low_space_events"] == 2


def test_the_only_frame_stored_is_evicted_for_a_new_one_when_space_is_low(tmp_path, clock):
    box = _low_space_box(tmp_path, clock, 1)
    box._free_bytes = lambda: (0, 1 << 30)
    box.put("cd11", FS, 1, clock.t + 1, bytes(1000))
    assert pending(box) == [1] and box.stats()["evicted"] == 1


# -- a full disk: checkpoint, the reserve file, _make_room, put's retries -------------------------------
def _full(message: str = "database or disk is full") -> sqlite3.OperationalError:
    return _sqlite_error(sqlite3.OperationalError, message, sqlite3.SQLITE_FULL)


def test_a_disk_full_put_is_one_event_evicts_65_kib_more_than_the_frame_and_keeps_the_reserve(tmp_path, clock):
    # max_page_count is SQLite's "disk full" on any file system (the simulated disk: 100 pages).
    box = make(tmp_path, clock, max_bytes=1 << 40)
    box._db.execute("PRAGMA max_page_count=100")
    events = []
    for seq in range(140):
        box.put("cd11", FS, seq, clock.t + seq, bytes([seq % 256]) * 3000)
        st = box.stats()
        if not events or st["disk_full_events"] != events[-1][1]:
            events.append((seq, st["disk_full_events"], st["evicted"]))
    # Every disk-full put is counted once and frees its own size + 64 KiB (23 frames of 3000 bytes):
    # the next event comes 23 frames later.
    assert [e[1] for e in events[:4]] == [0, 1, 2, 3]
    assert [e[2] for e in events[1:4]] == [23, 46, 69]
    assert events[2][0] - events[1][0] == events[3][0] - events[2][0] == 23
    # The checkpoint alone could copy the WAL back: the reserve was not needed and is still there.
    assert "reserve_released" not in box.stats()
    assert (tmp_path / "outbox.sqlite.reserve").stat().st_size == 256 * 1024


def test_on_a_full_disk_the_only_frame_stored_makes_room_for_the_new_one(tmp_path, clock):
    box = make(tmp_path, clock, max_bytes=1 << 40)
    box.put("cd11", FS, 1, clock.t, bytes(100_000))
    box._db.execute("PRAGMA max_page_count=50")          # room for one such frame, not two
    assert box.put("cd11", FS, 2, clock.t + 10, bytes([2]) * 100_000)
    st = box.stats()
    assert (st["frames"], st["evicted"], st["disk_full_events"]) == (1, 1, 1)
    assert pending(box) == [2]


def test_a_full_disk_with_nothing_to_evict_is_one_event_not_one_per_retry(tmp_path, clock):
    box = make(tmp_path, clock)
    box._db.execute("PRAGMA max_page_count=30")
    with pytest.raises(OutboxFullError, match="nothing left to evict"):
        box.put("cd11", FS, 1, clock.t, bytes(500_000))
    assert box.stats()["disk_full_events"] == 1


def test_each_retry_of_a_put_on_a_full_disk_asks_for_twice_the_frame_plus_64_kib(tmp_path, clock):
    box = make(tmp_path, clock)
    asked = []
    box._make_room = lambda need: asked.append(need) or True
    real_txn = box._put_txn

    def txn(*args):
        if len(asked) < 4:                     # the disk stays full for four attempts
            raise _full()
        return real_txn(*args)

    box._put_txn = txn
    assert box.put("cd11", FS, 1, clock.t, bytes(1000))
    assert asked == [1000 + 65536, 2000 + 65536, 4000 + 65536, 8000 + 65536]
    assert pending(box) == [1]


def test_a_checkpoint_completes_only_when_no_reader_holds_the_wal(tmp_path, clock):
    box = make(tmp_path, clock)
    box._db.execute("PRAGMA busy_timeout=0")           # report a busy reader at once
    box.put("cd11", FS, 1, clock.t, bytes(3000))
    assert box._checkpoint() is True
    reader = sqlite3.connect(tmp_path / "outbox.sqlite", isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT COUNT(*) FROM frames").fetchone()      # a snapshot before frame 2
        box.put("cd11", FS, 2, clock.t, bytes(3000))
        assert box._checkpoint() is False                              # frame 2 cannot be copied
        reader.execute("COMMIT")
        box.put("cd11", FS, 3, clock.t, bytes(3000))
        reader.execute("BEGIN")
        reader.execute("SELECT COUNT(*) FROM frames").fetchone()      # a snapshot of everything
        # Every page copied, but the WAL cannot start over while the reader uses it: not done.
        assert box._checkpoint() is False
        reader.execute("COMMIT")
        assert box._checkpoint() is True
    finally:
        reader.close()
    box._db.execute("BEGIN IMMEDIATE")                 # SQLite refuses to checkpoint: not done either
    try:
        assert box._checkpoint() is False
    finally:
        box._db.execute("ROLLBACK")


def test_the_reserve_file_is_given_back_once_per_release_and_counted(tmp_path, clock):
    box = make(tmp_path, clock, reserve_bytes=4096)
    reserve = tmp_path / "outbox.sqlite.reserve"
    assert reserve.stat().st_size == 4096
    assert box._release_reserve() is True and not reserve.exists()
    assert box._release_reserve() is False                             # nothing left to give
    assert box.stats()["reserve_released"] == 1
    box._ensure_reserve()
    assert reserve.stat().st_size == 4096
    assert box._release_reserve() is True
    assert box.stats()["reserve_released"] == 2


def _failing_evictions(box: Outbox, failures: int) -> None:
    """The first *failures* evictions meet a full disk (the delete's WAL pages do not fit)."""
    real = box._evict_oldest_bytes
    left = [failures]

    def evict(reason, need):
        if left[0]:
            left[0] -= 1
            raise _full()
        return real(reason, need)

    box._evict_oldest_bytes = evict


def _filled_box(tmp_path, clock, **kw) -> Outbox:
    box = make(tmp_path, clock, reserve_bytes=4096, **kw)
    for seq in range(10):
        box.put("cd11", FS, seq, clock.t + seq, bytes([seq]) * 1000)
    return box


def test_when_even_a_delete_does_not_fit_the_reserve_is_given_up_and_the_eviction_retried(tmp_path, clock, caplog):
    box = _filled_box(tmp_path, clock)
    _failing_evictions(box, 1)
    with caplog.at_level(logging.ERROR, "ims_station.edge.outbox"):
        assert box._make_room(2500) is True
    st = box.stats()
    assert (st["evicted"], st["reserve_released"], st["disk_full_events"]) == (3, 1, 1)
    assert (tmp_path / "outbox.sqlite.reserve").stat().st_size == 4096        # space is back: recreated
    assert [r.getMessage() for r in caplog.records] == [
        "outbox: cannot evict on a full disk: database or disk is full"]


def test_when_no_delete_fits_even_without_the_reserve_nothing_is_evicted_and_it_says_so(tmp_path, clock, caplog):
    box = _filled_box(tmp_path, clock)
    _failing_evictions(box, 2)
    with caplog.at_level(logging.ERROR, "ims_station.edge.outbox"):
        assert box._make_room(2500) is False
    st = box.stats()
    assert (st["frames"], st["evicted"], st["reserve_released"]) == (10, 0, 1)
    assert not (tmp_path / "outbox.sqlite.reserve").exists()
    assert [r.getMessage() for r in caplog.records] == [
        "outbox: cannot evict on a full disk: database or disk is full",
        "outbox: cannot evict on a full disk even after releasing the reserve: database or disk is full"]


def test_when_the_wal_cannot_be_checkpointed_the_reserve_is_given_up_first(tmp_path, clock):
    box = _filled_box(tmp_path, clock)
    box._checkpoint = lambda: False                    # the database file cannot grow
    assert box._make_room(2500) is True
    st = box.stats()
    assert (st["evicted"], st["reserve_released"]) == (3, 1)
    assert (tmp_path / "outbox.sqlite.reserve").exists()


# -- opening an outbox written by an older version: upgraded in place, nothing lost ----------------------
def _older_outbox(tmp_path, clock, *, drop: tuple[str, ...], version: int | None = 1) -> Path:
    """A closed outbox holding frames 1-3 of FS (2 sent), as an older version wrote it: without the
    columns in *drop* and with *version* as its recorded schema version (None: none recorded)."""
    box = make(tmp_path, clock)
    for seq in (1, 2, 3):
        box.put("cd11", FS, seq, clock.t - 100 + seq, bytes([seq]) * 100)
    box.mark_sent([i.id for i in box.next_to_send(10, live_window_s=1e9) if i.seq == 2])
    box.close()
    path = tmp_path / "outbox.sqlite"
    db = sqlite3.connect(path)
    db.execute("DROP INDEX frames_sendable")               # it names the held column
    for table, col in (("frames", "pubacked"), ("frames", "held"), ("frame_sets", "evicted_through"),
                       ("ack_points", "boot")):
        if col in drop:
            db.execute(f"ALTER TABLE {table} DROP COLUMN {col}")
    if version is None:
        db.execute("DELETE FROM meta WHERE key = 'schema_version'")
    else:
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (version,))
    db.commit()
    db.close()
    return path


def _columns(path: Path, table: str) -> set[str]:
    db = sqlite3.connect(path)
    try:
        return {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
    finally:
        db.close()


@pytest.mark.parametrize("drop", [("held",), ("evicted_through",), ("held", "evicted_through"),
                                  ("pubacked", "held", "evicted_through", "boot"), ()])
def test_an_older_outbox_is_upgraded_in_place_and_keeps_its_frames(tmp_path, clock, drop):
    path = _older_outbox(tmp_path, clock, drop=drop)
    box = make(tmp_path, clock, hold_kinds=("cd11",), max_bytes=600)
    assert _columns(path, "frames") >= {"pubacked", "held"}
    assert "evicted_through" in _columns(path, "frame_sets") and "boot" in _columns(path, "ack_points")
    # Its frames were committed before auxiliary mode: all sendable, the one in flight again.
    assert pending(box) == [1, 2, 3] and box.stats()["held"] == 0
    # The upgraded file holds new data frames and remembers what it evicts.
    box.put("cd11", FS, 4, clock.t, bytes(500))
    st = box.stats()
    assert (st["frames"], st["held"], st["evicted"]) == (2, 1, 2)
    assert box.window(FS, clock.t - 200, clock.t + 10)["evicted_through"] == 2
    box.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == 2
    db.close()
    make(tmp_path, clock, hold_kinds=("cd11",)).close()     # and opens again, nothing left to upgrade


def test_an_outbox_that_never_recorded_a_schema_version_opens(tmp_path, clock):
    _older_outbox(tmp_path, clock, drop=("held", "evicted_through"), version=None)
    box = make(tmp_path, clock)
    assert pending(box) == [1, 2, 3]


def test_an_outbox_written_by_a_newer_version_is_refused_saying_which(tmp_path, clock):
    path = _older_outbox(tmp_path, clock, drop=(), version=3)
    with pytest.raises(OutboxError) as info:
        make(tmp_path, clock)
    assert str(info.value) == (f"outbox {path} has schema version 3, written by a newer ims-station (this one "
                               "knows up to 2): upgrade the software")


@pytest.mark.parametrize("hold_kinds, exclusive, held_after", [
    (("cd11",), False, 3),       # still in auxiliary mode: the buffer stays held
    ((), False, 0),              # a gateway out of auxiliary mode: the buffer is sent
    ((), True, 3),               # a maintenance command changes nothing it is not asked to
])
def test_reopening_releases_held_frames_only_for_a_gateway_out_of_auxiliary_mode(tmp_path, clock, hold_kinds,
                                                                                exclusive, held_after):
    box = make(tmp_path, clock, hold_kinds=("cd11",))
    for seq in (1, 2, 3):
        box.put("cd11", FS, seq, clock.t + seq, bytes([seq]))
    assert box.stats()["held"] == 3
    box.close()
    box = make(tmp_path, clock, hold_kinds=hold_kinds, exclusive=exclusive)
    assert box.stats()["held"] == held_after
    assert len(pending(box)) == 3 - held_after
