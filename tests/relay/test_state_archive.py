"""Durable state and archive: survive SIGKILL, dedupe, security events, replay, quarantine, miniSEED.

Each test that takes ``stores`` runs against both backends (tests/relay/conftest.py): the SQLite
default and PostgreSQL with content-addressed objects; the layout tests are per backend."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
from datetime import date
from pathlib import Path

import numpy as np
import pytest

from ims_station.relay.archive import FileArchive, FrameRecord, QuarantineRecord, StoreOutcome
from ims_station.relay.gaps import FrameSetState
from ims_station.relay.state import MemoryStateStore

ROOT = Path(__file__).resolve().parents[2]
DAY_MS = 86_400_000
T0 = 1_700_006_400_000          # 2023-11-15 00:00:00 UTC


def record(seq: int, raw: bytes | None = None, *, frame_set: str = "STA01:0", nominal_ms: int | None = None):
    raw = raw if raw is not None else f"frame {seq}".encode() * 10
    return FrameRecord("STA01", frame_set, seq, T0 + 10_000 * seq if nominal_ms is None else nominal_ms, raw)


# -- state ---------------------------------------------------------------------------------------
def test_state_store_round_trip(tmp_path, stores):
    _round_trip(stores.state(tmp_path / "s.sqlite"))


def test_memory_state_store_round_trip():
    _round_trip(MemoryStateStore())


def _round_trip(store):
    a = FrameSetState("STA01:0", sequence_offset=0)
    for n in (1, 2, 7):
        a.add(n, 5.0)
    b = FrameSetState("STA02:0")
    store.save([a, b])
    a.add(4, 6.0)
    store.save([a])
    got = store.load_all()
    assert set(got) == {"STA01:0", "STA02:0"}
    assert got["STA01:0"].acknack_fields() == (1, 7, [(3, 4), (5, 7)])
    assert got["STA01:0"].sequence_offset == 0
    assert got["STA02:0"].empty


def _run_child(code: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})


def _kill_after(proc: subprocess.Popen, lines: int) -> list[str]:
    seen = []
    for line in proc.stdout:
        seen.append(line.strip())
        if len(seen) >= lines:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return seen


@pytest.mark.parametrize("kill_after", [3, 17, 40])
def test_state_survives_sigkill(tmp_path, kill_after, stores):
    """Every save that returned before SIGKILL is there after reopening."""
    proc = _run_child(f"""
        from ims_station.relay.gaps import FrameSetState
        store = {stores.state_code(tmp_path / 's.sqlite')}
        s = FrameSetState("STA01:0")
        n = 0
        while True:
            n += 1
            s.add(2 * n, float(n))          # every other number: one gap per save
            store.save([s])
            print(n, flush=True)
        """, tmp_path)
    seen = _kill_after(proc, kill_after)
    last = int(seen[-1])
    st = stores.state(tmp_path / "s.sqlite").load_all()["STA01:0"]
    assert st.highest >= 2 * last
    lowest, highest, gaps = st.acknack_fields()
    assert lowest == 2 and len(gaps) == highest // 2 - 1


# -- archive -------------------------------------------------------------------------------------
def test_archive_dedupe_conflict_and_replay(tmp_path, stores):
    with stores.archive(tmp_path / "a") as arc:
        res = arc.commit([record(1), record(2), record(2)])                  # in-batch duplicate too
        assert [r.outcome for r in res] == [StoreOutcome.ARCHIVED, StoreOutcome.ARCHIVED, StoreOutcome.DUPLICATE]
        res = arc.commit([record(1), record(1, b"forged bytes"), record(9, nominal_ms=T0 + 10_000 * 2)])
        assert [r.outcome for r in res] == [StoreOutcome.DUPLICATE, StoreOutcome.CONFLICT, StoreOutcome.REPLAY]
        assert res[2].existing_sequence == 2
        # The archived frame is never overwritten; the forged bytes sit in the quarantine.
        assert arc.read_frame("STA01:0", 1) == record(1).raw
        assert arc.lookup("STA01:0", 9) is None
        q = arc.quarantine_entries()
        assert [(e["reason"], e["seq"]) for e in q] == [("duplicate_conflict", 1), ("replay", 9)]
        assert arc.read_quarantined(q[0]) == b"forged bytes"
        assert arc.stats()["quarantined_by_reason"] == {"duplicate_conflict": 1, "replay": 1}
        # Other frame sets are independent.
        assert arc.commit([record(1, frame_set="STA01:1")])[0].outcome is StoreOutcome.ARCHIVED


def test_archive_layout_is_per_station_per_day_and_readable_by_the_codec(tmp_path, factory):
    from ims_station import cd11
    from ims_station.cd11.timefmt import to_epoch

    with FileArchive(tmp_path / "a", writer="r1") as arc:
        frames = [factory.build(s) for s in (8640 * 8400 - 1, 8640 * 8400, 8640 * 8400 + 1)]  # across midnight
        recs = []
        for raw in frames:
            f, _ = cd11.parse_frame(raw)
            from ims_station.cd11.timefmt import to_epoch
            recs.append(FrameRecord("STA01", "STA01:0", f.sequence, int(round(to_epoch(f.nominal_time) * 1000)), raw))
        assert all(r.outcome is StoreOutcome.ARCHIVED for r in arc.commit(recs))
        files = sorted(p.relative_to(tmp_path / "a").as_posix() for p in (tmp_path / "a" / "frames").rglob("*.cd11"))
        d0, d1 = recs[0].day, recs[1].day
        assert d0 != d1 == recs[2].day
        assert files == [f"frames/STA01/{d.year}/STA01.{d.year}.{d.timetuple().tm_yday:03d}.r1.cd11" for d in (d0, d1)]
        # A day file is plain concatenated CD-1.1 frames.
        day2 = (tmp_path / "a" / files[1]).read_bytes()
        assert [f.sequence for f in cd11.iter_frames(day2)] == [recs[1].sequence, recs[2].sequence]
        assert [a.sequence for a, _ in arc.iter_day("STA01", recs[1].day)] == [recs[1].sequence, recs[2].sequence]


def test_archive_survives_sigkill_mid_commit(tmp_path, stores):
    """SIGKILL at an arbitrary moment: every commit that returned is intact, a torn tail is cut
    back on reopening (SQLite day files; PostgreSQL: an object no row points at is left alone),
    and appending afterwards keeps every index entry pointing at its bytes."""
    root = tmp_path / "a"
    proc = _run_child(f"""
        import os
        from ims_station.relay.archive import FrameRecord
        arc = {stores.archive_code(root)}
        n = 0
        while True:
            batch = []
            for _ in range(3):
                n += 1
                batch.append(FrameRecord("STA01", "STA01:0", n, 1_700_006_400_000 + 10_000 * n,
                                         os.urandom(500 + n % 700)))
            arc.commit(batch)
            print(n, flush=True)
        """, tmp_path)
    last = int(_kill_after(proc, 25)[-1])
    with stores.archive(root) as arc:
        keys = arc.frame_keys()
        assert len(keys) >= last
        for fs, seq in keys:
            a = arc.lookup(fs, seq)
            assert hashlib.sha256(arc.read_frame(fs, seq)).hexdigest() == a.sha256
        if stores.pg:
            # Every object is named by its content (a torn temp file is never renamed into place).
            for obj in (root / "objects").rglob("*"):
                if obj.is_file() and not obj.name.startswith(".tmp-"):
                    assert hashlib.sha256(obj.read_bytes()).hexdigest() == obj.parent.name + obj.name
        else:
            f = next((root / "frames").rglob("*.cd11"))
            # The file holds exactly the committed frames (no torn tail left).
            assert f.stat().st_size == sum(arc.lookup(fs, s).length for fs, s in keys)
        nxt = keys[-1][1] + 1
        assert arc.commit([record(nxt, b"after the crash")])[0].outcome is StoreOutcome.ARCHIVED
        assert arc.read_frame("STA01:0", nxt) == b"after the crash"


def test_uncommitted_tail_is_cut_on_open(tmp_path):
    root = tmp_path / "a"
    with FileArchive(root) as arc:
        arc.commit([record(1)])
    f = next((root / "frames").rglob("*.cd11"))
    good = f.read_bytes()
    with open(f, "ab") as fh:
        fh.write(b"half a frame written when the power went")
    with FileArchive(root) as arc:
        assert f.read_bytes() == good
        arc.commit([record(2)])
        assert arc.read_frame("STA01:0", 2) == record(2).raw


def test_quarantine_is_bounded(tmp_path, stores):
    with stores.archive(tmp_path / "a", quarantine_max_bytes=100) as arc:
        arc.commit([], [QuarantineRecord("crc", "bad", b"x" * 60, station="STA01"),
                        QuarantineRecord("crc", "bad", b"y" * 60, station="STA01")])
        q = arc.quarantine_entries(reason="crc")
        assert len(q) == 2 and q[0]["length"] == 60
        assert q[1]["file"] is None and q[1]["size"] == 60       # counted, payload not kept
        assert arc.read_quarantined(q[1]) is None


def test_second_writer_shares_the_index(tmp_path, stores):
    """Two relay processes on one data dir: own files, one index, dedupe across them."""
    a, b = stores.archive(tmp_path / "a", writer="r1"), stores.archive(tmp_path / "a", writer="r2")
    try:
        assert a.commit([record(1)])[0].outcome is StoreOutcome.ARCHIVED
        assert b.commit([record(1)])[0].outcome is StoreOutcome.DUPLICATE
        assert b.commit([record(2)])[0].outcome is StoreOutcome.ARCHIVED
        assert a.read_frame("STA01:0", 2) == record(2).raw
    finally:
        a.close()
        b.close()


# -- miniSEED ------------------------------------------------------------------------------------
def test_mseed_export_is_sample_identical_in_obspy(tmp_path, factory, stores):
    """Frames archived (out of order, one missing) -> pymseed export -> ObsPy reads every sample."""
    import obspy

    from ims_station import cd11
    from ims_station.cd11.timefmt import to_epoch

    base = 8640 * 8700                       # 2023-10-26 (a day of 10-s frames since 2000)
    seqs = [base + i for i in (3, 0, 1, 2, 5, 4, 7)]          # 6 missing -> two segments
    arc = stores.archive(tmp_path / "a")
    recs = []
    for s in seqs:
        raw = factory.build(s)
        f, _ = cd11.parse_frame(raw)
        recs.append(FrameRecord("STA01", "STA01:0", s, int(round(to_epoch(f.nominal_time) * 1000)), raw))
    arc.commit(recs)
    day = recs[0].day
    files = arc.export_mseed("STA01", day, tmp_path / "out", network="IM")
    assert [p.name for p in files] == [f"IM.STA01.00.{c}.{day.year}.{day.timetuple().tm_yday:03d}.mseed"
                                       for c in ("BHE", "BHN", "BHZ")]
    for ci, chan in enumerate(factory.channels):
        st = obspy.read(str(tmp_path / "out" / f"IM.STA01.00.{chan}.{day.year}.{day.timetuple().tm_yday:03d}.mseed"))
        st.merge(method=-1)
        assert len(st) == 2                                   # the gap at frame 6
        tr0, tr1 = sorted(st, key=lambda t: t.stats.starttime)
        assert (tr0.stats.network, tr0.stats.station, tr0.stats.location, tr0.stats.channel) == ("IM", "STA01", "00", chan)
        assert tr0.stats.sampling_rate == 40.0
        first = cd11.parse_frame(factory.build(base))[0]
        assert tr0.stats.starttime == obspy.UTCDateTime(to_epoch(first.nominal_time))
        want0 = np.concatenate([factory.samples(base + i, ci) for i in range(6)])
        want1 = factory.samples(base + 7, ci)
        assert tr0.data.dtype == np.int32
        np.testing.assert_array_equal(tr0.data, want0)
        np.testing.assert_array_equal(tr1.data, want1)
    arc.close()


def test_mseed_export_of_an_empty_day_is_an_error(tmp_path, stores):
    from ims_station.relay.errors import ExportError

    with stores.archive(tmp_path / "a") as arc, pytest.raises(ExportError, match="no data frames"):
        arc.export_mseed("STA01", date(2024, 1, 1), tmp_path / "out")


def test_concurrent_updates_from_two_stores_lose_nothing(tmp_path, stores):
    """Two relay processes (here: two connections in two threads) updating one frame set through
    ``update`` never overwrite each other's progress (a plain ``save`` of each one's copy would)."""
    import threading

    both = [stores.state(tmp_path / "s.sqlite") for _ in range(2)]

    def work(k: int) -> None:
        for n in range(k, 200, 2):           # store 0 adds the even numbers, store 1 the odd ones
            both[k].update(["STA01:0"], lambda states, n=n: states["STA01:0"].add(n, 0.0))

    threads = [threading.Thread(target=work, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert both[0].load("STA01:0").acknack_fields() == (0, 199, [])
    for s in both:
        s.close()


def test_pg_archive_writes_each_commit_once_under_its_content_address(tmp_path, factory, pg_cluster):
    """PgArchive: a commit's new bytes are one object ``objects/ab/cdef..`` (SHA-256 of its
    content), rows point into it, and a second relay sharing the index and the object root (another
    writer, a fresh connection) serves the frames; a resent batch writes nothing new."""
    from ims_station.relay.pgstore import PgArchive

    _, dsn = pg_cluster
    root = tmp_path / "objects-root"
    with PgArchive(dsn, root, schema="t_cas", writer="r1") as a, PgArchive(dsn, root, schema="t_cas", writer="r2") as b:
        recs = [record(n) for n in range(1, 5)]
        assert all(r.outcome is StoreOutcome.ARCHIVED for r in a.commit(recs))
        objs = [p for p in (root / "objects").rglob("*") if p.is_file()]
        assert len(objs) == 1
        blob = objs[0].read_bytes()
        assert objs[0].relative_to(root).as_posix() == f"objects/{hashlib.sha256(blob).hexdigest()[:2]}/" \
                                                     f"{hashlib.sha256(blob).hexdigest()[2:]}"
        assert blob == b"".join(r.raw for r in recs)                    # written once, nothing else
        assert [b.read_frame("STA01:0", n) for n in range(1, 5)] == [r.raw for r in recs]
        assert all(r.outcome is StoreOutcome.DUPLICATE for r in b.commit(recs))
        assert [p for p in (root / "objects").rglob("*") if p.is_file()] == objs
