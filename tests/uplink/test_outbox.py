"""The outbox: durable before put returns, bounded with alarms, acknack-driven deletion and resend,
disk full never fatal."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ims_station.edge.outbox import Outbox, OutboxFullError, SequenceReuseError

FS = "STA01:0"


def make(tmp_path, clock, **kw) -> Outbox:
    kw.setdefault("max_bytes", 10_000_000)
    kw.setdefault("max_age_s", 7 * 86400)
    return Outbox(tmp_path / "outbox.sqlite", clock=clock, **kw)


def published(box: Outbox, n: int = 1000) -> list:
    """Send the pending frames and let the broker PUBACK them (what the uplink records)."""
    items = box.next_to_send(n, live_window_s=1e9)
    box.mark_sent([i.id for i in items])
    box.mark_pubacked([i.id for i in items])
    return items


def test_put_is_idempotent_for_same_bytes_and_refuses_reuse(tmp_path, clock):
    box = make(tmp_path, clock)
    assert box.put("cd11", FS, 10, clock.t, b"frame-10")
    assert box.put("cd11", FS, 10, clock.t, b"frame-10")          # same bytes: no-op
    with pytest.raises(SequenceReuseError, match="seq 10 already committed"):
        box.put("cd11", FS, 10, clock.t, b"other bytes")
    assert box.stats()["frames"] == 1
    # After the relay acknowledged 10 it is gone, but the number stays used, across a reopen too.
    published(box)
    assert box.apply_acknack(FS, 10, 10, []) == 1
    box.close()
    box = make(tmp_path, clock)
    assert box.highest_committed(FS) == 10
    with pytest.raises(SequenceReuseError, match="not above the highest committed"):
        box.put("cd11", FS, 10, clock.t, b"frame-10")
    assert box.put("cd11", FS, 11, clock.t, b"frame-11")
    assert box.highest_committed("OTHER:0") is None


def test_board_ack_points_are_durable_and_only_move_forward_within_an_epoch(tmp_path, clock):
    box = make(tmp_path, clock)
    assert box.ack_points() == {}
    box.set_ack_point(1, 4, 100, 1_767_225_610_000_000)
    box.set_ack_point(1, 4, 90, 1_767_225_600_000_000)        # older: ignored
    box.set_ack_point(2, 0, 7, None)
    box.close()
    box = make(tmp_path, clock)                                # survives a reopen (a restart)
    assert box.ack_points() == {1: (4, 100, 1_767_225_610_000_000), 2: (0, 7, None)}
    box.set_ack_point(1, 5, 3, 1_767_225_700_000_000)         # the board rebooted: new epoch, lower seq
    assert box.ack_points()[1] == (5, 3, 1_767_225_700_000_000)


def test_an_ack_point_of_a_new_board_run_at_the_same_epoch_replaces_the_old_one(tmp_path, clock):
    """A replaced board (or a wiped epoch file) is back at epoch 0 / seq 0 with another boot number:
    its ACK point replaces the old run's although its seq is lower, and survives a reopen."""
    box = Outbox(tmp_path / "o.sqlite", max_bytes=1 << 30, max_age_s=1e9, clock=clock)
    box.set_ack_point(1, 0, 1100, 1_767_225_610_000_000, boot=0xA1)
    box.set_ack_point(1, 0, 900, 1_767_225_600_000_000, boot=0xA1)    # same run, older: ignored
    assert box.ack_points()[1] == (0, 1100, 1_767_225_610_000_000) and box.ack_point_boots() == {1: 0xA1}
    box.set_ack_point(1, 0, 5, 1_767_225_700_000_000, boot=0xB2)      # the new board's first frames
    box.close()
    box = Outbox(tmp_path / "o.sqlite", max_bytes=1 << 30, max_age_s=1e9, clock=clock)
    assert box.ack_points()[1] == (0, 5, 1_767_225_700_000_000) and box.ack_point_boots() == {1: 0xB2}


def test_ack_points_written_before_boot_numbers_open_with_boot_0(tmp_path, clock):
    import sqlite3

    # An outbox of the previous release: the whole schema, but ack_points without its boot column.
    Outbox(tmp_path / "o.sqlite", max_bytes=1 << 30, max_age_s=1e9, clock=clock).close()
    db = sqlite3.connect(tmp_path / "o.sqlite")
    db.execute("DROP TABLE ack_points")
    db.execute("CREATE TABLE ack_points (board_id INTEGER PRIMARY KEY, epoch INTEGER NOT NULL, "
               "seq INTEGER NOT NULL, t_end_us INTEGER, updated REAL NOT NULL)")
    db.execute("INSERT INTO ack_points VALUES (3, 2, 77, NULL, 0)")
    db.commit()
    db.close()
    box = Outbox(tmp_path / "o.sqlite", max_bytes=1 << 30, max_age_s=1e9, clock=clock)
    assert box.ack_points() == {3: (2, 77, None)} and box.ack_point_boots() == {3: 0}
    box.set_ack_point(3, 2, 80, None, boot=0x33)
    assert box.ack_points()[3] == (2, 80, None) and box.ack_point_boots() == {3: 0x33}


def test_acknack_deletes_covered_frames_and_requeues_gaps_and_implied_gaps(tmp_path, clock):
    box = make(tmp_path, clock, resend_holdoff_s=5)
    for seq in range(100, 110):
        box.put("cd11", FS, seq, clock.t + seq, b"x%d" % seq)
    items = published(box, 100)
    assert [i.seq for i in items] == list(range(100, 110))
    assert box.next_to_send(100, live_window_s=1e9) == []
    clock.advance(10)  # past the resend hold-off
    # Relay has 101..107 except the gap [103, 105): 100 is below its lowest, 108/109 above its highest.
    deleted = box.apply_acknack(FS, 101, 107, [(103, 105)])
    assert deleted == 5                                             # 101, 102, 105, 106, 107
    resend = [i.seq for i in box.next_to_send(100, live_window_s=1e9)]
    assert resend == [100, 103, 104, 108, 109]
    assert box.stats()["frames"] == 5
    # Other frame sets are untouched; an empty consumer range (0, -1) deletes nothing.
    assert box.apply_acknack("OTHER:0", 0, 1000, []) == 0
    assert box.apply_acknack(FS, 0, -1, []) == 0


def test_resend_holdoff_keeps_frames_in_flight_from_being_sent_twice(tmp_path, clock):
    box = make(tmp_path, clock, resend_holdoff_s=5)
    box.put("cd11", FS, 1, clock.t, b"a")
    box.put("cd11", FS, 2, clock.t, b"b")
    published(box)
    clock.advance(1)
    assert box.apply_acknack(FS, 1, 1, []) == 1                    # 2 was just sent: not a gap yet
    assert box.next_to_send(10, live_window_s=1e9) == []
    clock.advance(10)
    box.apply_acknack(FS, 1, 1, [])
    assert [i.seq for i in box.next_to_send(10, live_window_s=1e9)] == [2]


def test_live_first_then_backfill_oldest_first(tmp_path, clock):
    box = make(tmp_path, clock)
    now = clock.t
    for seq, age in ((1, 3600), (2, 3590), (3, 3580), (4, 20), (5, 10)):
        box.put("cd11", FS, seq, now - age, b"f%d" % seq)
    assert [i.seq for i in box.next_to_send(3, live_window_s=60)] == [4, 5, 1]
    assert [i.seq for i in box.next_to_send(10, live_window_s=60)] == [4, 5, 1, 2, 3]


def test_an_event_behind_a_large_unsent_backlog_is_sent_first(tmp_path, clock):
    """Issue 9: a station event must not wait behind back-fill or live data: committed after 3000
    unsent frames (hours of back-fill and a live minute), the next call returns it first, and it
    is returned even when the uplink's bound on unacknowledged data leaves no room for data."""
    box = make(tmp_path, clock)
    now = clock.t
    for seq in range(3000):
        box.put("cd11", FS, seq, now - 3 * 3600 + seq * 3.6, b"f%d" % seq)
    box.put("events", "STA01:events", 0, now, b"event-0")
    first = box.next_to_send(32, live_window_s=60)
    assert [(i.kind, i.seq) for i in first[:1]] == [("events", 0)] and len(first) == 32
    assert [i.kind for i in first[1:]] == ["cd11"] * 31
    assert [(i.kind, i.seq) for i in box.next_to_send(32, live_window_s=60, data_limit=0)] == [("events", 0)]
    box.mark_sent([first[0].id])                     # sent: not returned again; the data is unchanged
    assert [i.kind for i in box.next_to_send(32, live_window_s=60)] == ["cd11"] * 32
    assert box.stats()["frames"] == 3001


def test_bounded_by_bytes_oldest_evicted_with_alarm(tmp_path, clock):
    alarms = []
    box = make(tmp_path, clock, max_bytes=10_000, on_alarm=alarms.append)
    for seq in range(30):
        clock.advance(10)
        box.put("cd11", FS, seq, clock.t, bytes(1000))
    st = box.stats()
    assert st["bytes"] <= 10_000 and st["frames"] == 10
    assert st["evicted"] == 20 and st["alarms"] == len(alarms) == 20
    assert all(a["reason"] == "bytes" and a["alarm"] == "outbox_eviction" for a in alarms)
    assert [i.seq for i in box.next_to_send(100, live_window_s=1e9)] == list(range(20, 30))  # newest kept
    box.close()
    assert make(tmp_path, clock, max_bytes=10_000).stats()["evicted"] == 20  # counters are durable


def test_bounded_by_age(tmp_path, clock):
    alarms = []
    box = make(tmp_path, clock, max_age_s=3600, on_alarm=alarms.append)
    box.put("cd11", FS, 1, clock.t, b"old")
    box.put("cd11", FS, 2, clock.t + 1800, b"mid")
    clock.advance(3700)
    box.put("cd11", FS, 3, clock.t, b"new")
    assert [i.seq for i in box.next_to_send(10, live_window_s=1e9)] == [2, 3]
    assert alarms[0]["reason"] == "age" and alarms[0]["first_seq"] == 1


def test_disk_full_via_max_page_count_evicts_oldest_and_keeps_running(tmp_path, clock):
    alarms = []
    box = make(tmp_path, clock, max_bytes=1 << 40, on_alarm=alarms.append)
    # SQLite reports "database or disk is full" when the file reaches max_page_count, exactly as
    # for a full file system: the simulated disk holds ~400 KB.
    box._db.execute("PRAGMA max_page_count=100")
    payload = os.urandom(2000)
    for seq in range(1000):
        clock.advance(10)
        assert box.put("cd11", FS, seq, clock.t, payload[:1900] + seq.to_bytes(4, "big"))
    st = box.stats()
    assert st["disk_full_events"] > 0 and any(a["reason"] == "disk_full" for a in alarms)
    kept = [i.seq for i in box.next_to_send(10_000, live_window_s=1e9)]
    assert kept[-1] == 999 and kept == list(range(kept[0], 1000))   # newest kept, contiguous
    assert st["evicted"] + st["frames"] == 1000                     # every frame accounted for


def test_disk_full_with_nothing_to_evict_raises_outbox_full(tmp_path, clock):
    box = make(tmp_path, clock)
    box._db.execute("PRAGMA max_page_count=30")
    with pytest.raises(OutboxFullError, match="nothing left to evict"):
        box.put("cd11", FS, 1, clock.t, os.urandom(500_000))
    assert box.put("cd11", FS, 2, clock.t, b"small still fits")      # still usable afterwards


@pytest.fixture
def tiny_fs(tmp_path):
    """A real 2 MB file system (tmpfs), so SQLite meets a true ENOSPC."""
    from tests.conftest import need_root

    need_root("mounting a tmpfs (the max_page_count tests above cover the logic; CI runs as root)")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_on_a_real_full_tmpfs(tiny_fs, clock):
    alarms = []
    box = Outbox(tiny_fs / "outbox.sqlite", max_bytes=1 << 40, max_age_s=1e9, clock=clock, on_alarm=alarms.append)
    payload = os.urandom(3000)
    for seq in range(2000):                      # ~6 MB offered to a 2 MB file system
        clock.advance(10)
        assert box.put("cd11", FS, seq, clock.t, payload + seq.to_bytes(4, "big"))
    st = box.stats()
    # Evicted before SQLite hit ENOSPC (free-space margin), with alarms; the store keeps
    # the newest ~1 MB and never failed a put.
    assert st["evicted"] > 1000 and any(a["reason"] == "disk_full" for a in alarms)
    kept = [i.seq for i in box.next_to_send(10_000, live_window_s=1e9)]
    assert kept[-1] == 1999 and len(kept) > 100 and kept == list(range(kept[0], 2000))
    assert st["evicted"] + st["frames"] == 2000
    box.close()
    reopened = Outbox(tiny_fs / "outbox.sqlite", max_bytes=1 << 40, max_age_s=1e9, clock=clock)
    assert [i.seq for i in reopened.next_to_send(10_000, live_window_s=1e9)] == kept
    reopened.close()


def test_disk_filled_by_another_process_hits_enospc_and_recovers(tiny_fs, clock):
    """Another writer (a log file) takes every free byte: SQLite itself meets ENOSPC; the outbox
    gives up its reserve file, evicts, and keeps committing the newest frames."""
    alarms = []
    box = Outbox(tiny_fs / "outbox.sqlite", max_bytes=1 << 40, max_age_s=1e9, clock=clock, on_alarm=alarms.append)
    payload = os.urandom(3000)
    for seq in range(100):
        clock.advance(10)
        box.put("cd11", FS, seq, clock.t, payload + seq.to_bytes(4, "big"))
    fd = os.open(tiny_fs / "filler.log", os.O_WRONLY | os.O_CREAT)
    with pytest.raises(OSError):
        while True:
            os.write(fd, bytes(4096))
    os.close(fd)
    for seq in range(100, 1000):
        clock.advance(10)
        assert box.put("cd11", FS, seq, clock.t, payload + seq.to_bytes(4, "big"))
    st = box.stats()
    assert st["disk_full_events"] >= 1 and st["reserve_released"] == 1
    kept = [i.seq for i in box.next_to_send(10_000, live_window_s=1e9)]
    assert kept[-1] == 999 and kept == list(range(kept[0], 1000))
    assert st["evicted"] + st["frames"] == 1000 == st["evicted"] + len(kept)
    assert sum(a["frames"] for a in alarms) == st["evicted"]


_WRITER = textwrap.dedent("""
    import sys, time
    from types import SimpleNamespace
    from ims_station.edge.outbox import Outbox
    clock = SimpleNamespace(time=time.time, monotonic=time.monotonic)
    box = Outbox(sys.argv[1], max_bytes=1 << 40, max_age_s=1e12, clock=clock)
    start = int(sys.argv[2])
    for seq in range(start, start + 100000):
        box.put("cd11", "STA01:0", seq, 1.7e9 + 10 * seq, seq.to_bytes(8, "big") * 300)
        sys.stdout.write(f"{seq}\\n")
        sys.stdout.flush()
""")


def test_sigkill_mid_write_loses_nothing_committed(tmp_path):
    """A child commits frames as fast as it can and prints each seq after ``put`` returned; it is
    SIGKILLed at random moments.  Every printed seq must be there after reopening, intact."""
    path = tmp_path / "outbox.sqlite"
    rng = random.Random(4)
    committed: list[int] = []
    start = 0
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), str(start)], stdout=subprocess.PIPE,
                                text=True)
        target = rng.randint(20, 300)
        for line in proc.stdout:  # kill at a random point after `target` commits, mid-stream
            committed.append(int(line))
            if len(committed) - start >= target:
                break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        from types import SimpleNamespace
        import time as _t

        box = Outbox(path, max_bytes=1 << 40, max_age_s=1e12,
                     clock=SimpleNamespace(time=_t.time, monotonic=_t.monotonic))
        items = {i.seq: i.payload for i in box.next_to_send(1_000_000, live_window_s=0)}
        assert set(committed) <= set(items)
        assert all(items[s] == s.to_bytes(8, "big") * 300 for s in committed)
        start = box.highest_committed(FS) + 1       # what the framer does after a restart
        box.close()
    assert len(committed) >= 80


# -- default byte bound (docs/uplink.md, "Default byte bound") ------------------------------------

def test_default_bound_is_seven_days_at_the_configured_rates_worked_examples():
    from ims_station.edge.outbox import default_max_bytes

    # The examples of docs/uplink.md and docs/configuration.md, to the byte.
    assert default_max_bytes([(3, 100.0)])[0] == 60480 * (3 * (4000 + 160) + 192) == 766_402_560
    assert default_max_bytes([(30, 40.0)])[0] == 60480 * (30 * (1600 + 160) + 192) == 3_204_956_160
    # Ports add up; a shorter age gives a smaller bound; no channels known: the fixed fallback.
    assert default_max_bytes([(3, 100.0), (27, 40.0)])[0] < default_max_bytes([(3, 100.0)] * 10)[0]
    assert default_max_bytes([(3, 100.0)], days=1)[0] == 8640 * 12672
    assert default_max_bytes([])[0] == 2_000_000_000


@pytest.mark.parametrize("channels, rate, algorithm", [(3, 100.0, "ed25519"), (30, 40.0, "ed25519"),
                                                      (1, 1.0, "ed25519"), (4, 20.0, "ecdsa-p256"),
                                                      (2, 100.0, "dsa")])
def test_the_estimate_covers_a_signed_frame_of_incompressible_s4_samples(tmp_path, channels, rate, algorithm):
    """The worst case the bound is sized for: samples CA cannot compress, every subframe signed."""
    from datetime import datetime, timezone

    import numpy as np

    from ims_station import cd11
    from ims_station.auth import Keystore, generate_key
    from ims_station.edge.outbox import estimate_frame_bytes

    generate_key(algorithm, 1, tmp_path, station="STA01", valid_from="2000-01-01T00:00:00Z")
    signer = Keystore.load(tmp_path).signer(1)
    t = datetime(2024, 1, 1, tzinfo=timezone.utc)
    rng = np.random.default_rng(channels)
    n = int(10 * rate)
    chans = [cd11.ChannelInput("STA01", f"C{i:02d}", "00", rng.integers(-2**31, 2**31 - 1, n).astype(np.int32),
                               rate, t, None, signer) for i in range(channels)]
    size = len(cd11.build_data_frame("STA01", 1, t, chans, signer))
    est = estimate_frame_bytes([(channels, rate)], 10.0)
    assert size <= est <= size * 1.15 + 200, (size, est)


def test_default_bound_is_capped_by_free_disk_space(tmp_path, monkeypatch):
    import shutil as _shutil

    from ims_station.edge import outbox as ob

    usage = _shutil.disk_usage(tmp_path)._replace(total=10 << 30, free=500 << 20)
    monkeypatch.setattr(ob.shutil, "disk_usage", lambda p: usage)
    box_path = tmp_path / "sub" / "outbox.sqlite"                 # not created yet: its folder's disk
    bound, how = ob.default_max_bytes([(30, 40.0)], path=box_path)
    assert bound == int(((500 << 20) - (16 << 20)) * 0.9) and how["capped_by"] == "disk"
    box_path.parent.mkdir()
    box_path.write_bytes(b"\0" * (100 << 20))                      # an outbox already holding data
    assert ob.default_max_bytes([(30, 40.0)], path=box_path)[0] == int(((600 << 20) - (16 << 20)) * 0.9)
    assert ob.default_max_bytes([(3, 100.0)], path=box_path, min_free_bytes=0)[0] == int((600 << 20) * 0.9)
    usage = usage._replace(free=0)
    assert ob.default_max_bytes([(3, 100.0)], path=tmp_path / "x.sqlite")[0] == 1 << 20   # the floor
