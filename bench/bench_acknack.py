"""Acknack cost at the station: ``Outbox.apply_acknack`` on a full outbox, on the uplink's MQTT thread.

Issue 7 §4 measured the old code at 11 s for 60 480 frames x 4 000 gaps and 104 s for 20 000 frames
x 100 000 gaps: for every frame it scanned every gap (frames x gaps), and all that time the uplink's
network thread neither published nor answered the broker's keep-alive.

Cases (a real outbox: SQLite WAL, ``synchronous=FULL``, every frame sent and PUBACKed, the resend
hold-off passed, so the acknack deletes the covered frames and re-queues the gap frames):

* **7 days** of 10-s frames (60 480) x 4 000 gaps (the relay's default ``max_gaps``), gaps of 3
  frames spread over the range;
* **20 000 frames x 100 000 gaps** (the codec's ``MAX_GAPS``, the most an acknack can carry): gaps of
  one sequence number every second one over a range ten times wider than the frames.

Each is printed beside a reference measured in the same run on the same outbox copy:

* for the 7-day case, the **old quadratic** ``apply_acknack`` (kept below verbatim as
  :func:`quadratic_apply_acknack`): the ratio is the speed-up;
* for the 100 000-gap case (the old code takes minutes there), a **plain sorted merge in Python** over
  the same (seq, state, pubacked) rows already in memory, no SQLite: the floor of the classification.
  The ratio says how close the outbox gets to it (the rest is SQLite reading and deleting rows).
  With ``BENCH_ACKNACK_OLD=1`` the old quadratic code is timed there too (once; minutes), in the note.

The outbox is built once per case with the outbox's own ``put`` (``synchronous=NORMAL`` to build it
fast) and copied for every timed round.  Files go to ``$BENCH_OUTBOX_DIR`` (default: the project
folder), as in ``bench_outbox``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from bench.harness import Result

GROUP = "acknack"
FS = "STA01:0"
BASE = 170_000_000          # sequence numbers derived from time are large


class _Clock:
    def __init__(self) -> None:
        self.t = time.time()
        self.m = 1000.0

    def time(self) -> float:
        return self.t

    def monotonic(self) -> float:
        return self.m


def _build(path: Path, n: int) -> None:
    from ims_station.edge.outbox import Outbox

    clock = _Clock()
    box = Outbox(path, max_bytes=1 << 40, max_age_s=30 * 86400, clock=clock, synchronous="NORMAL",
                 reserve_bytes=0)
    for i in range(n):
        box.put("cd11", FS, BASE + i, clock.t - 10 * (n - i), i.to_bytes(8, "big") * 8)
    box.close()


def _open(src: Path, dst: Path):
    """A copy of the built outbox with every frame sent and PUBACKed, the hold-off passed."""
    from ims_station.edge.outbox import Outbox

    for suffix in ("", "-wal"):
        if Path(str(src) + suffix).exists():
            shutil.copyfile(str(src) + suffix, str(dst) + suffix)
    clock = _Clock()
    box = Outbox(dst, max_bytes=1 << 40, max_age_s=30 * 86400, clock=clock, reserve_bytes=0)
    ids = [it.id for it in box.next_to_send(1 << 30, live_window_s=0)]
    for k in range(0, len(ids), 10_000):
        box.mark_sent(ids[k:k + 10_000])
    box.mark_pubacked(ids)
    clock.m += 3600
    return box


def _remove(p: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(str(p) + suffix).unlink(missing_ok=True)


def quadratic_apply_acknack(box, frame_set, lowest, highest, gaps) -> int:
    """The ``Outbox.apply_acknack`` of issue 7 (before the fix), verbatim: every gap for every frame."""
    from ims_station.edge.outbox import STATE_SENT

    gaps = [(int(a), int(b)) for a, b in gaps]
    with box._lock:
        hold = box._clock.monotonic() - box.resend_holdoff_s
        rows = box._db.execute(
            "SELECT id, seq, size, state, last_sent, pubacked FROM frames WHERE frame_set = ?",
            (frame_set,)).fetchall()
        delete, resend = [], []
        empty = highest < lowest
        for rid, seq, size, state, last_sent, pubacked in rows:
            in_gap = any(a <= seq < b for a, b in gaps)
            if not empty and lowest <= seq <= highest and not in_gap:
                if pubacked:
                    delete.append((rid, size))
            elif state == STATE_SENT and (last_sent is None or last_sent <= hold):
                resend.append(rid)
        if not delete and not resend:
            return 0
        with box._txn():
            box._db.executemany("DELETE FROM frames WHERE id = ?", [(r,) for r, _ in delete])
            box._db.executemany("UPDATE frames SET state = 0 WHERE id = ?", [(r,) for r in resend])
            box._counters["acked_frames"] += len(delete)
            box._db.execute("INSERT OR REPLACE INTO meta VALUES ('acked_frames', ?)",
                            (box._counters["acked_frames"],))
            box._frames -= len(delete)
            box._bytes -= sum(s for _, s in delete)
        box._resends_queued += len(resend)
        return len(delete)


def merge_floor(rows, lowest, highest, gaps) -> tuple[int, int]:
    """The least any implementation must do: one sorted walk of frames against sorted, clipped gaps
    (rows: (seq, state, pubacked) sorted by seq).  Returns (to delete, to resend)."""
    g = sorted((max(a, lowest), min(b, highest + 1)) for a, b in gaps if a < b and a <= highest and b > lowest)
    j, ndel, nres = 0, 0, 0
    for seq, state, pubacked in rows:
        while j < len(g) and g[j][1] <= seq:
            j += 1
        covered = lowest <= seq <= highest and not (j < len(g) and g[j][0] <= seq)
        if covered:
            ndel += pubacked
        elif state == 1:
            nres += 1
    return ndel, nres


def _timed(src: Path, work: Path, fn, rounds: int) -> tuple[float, int]:
    best, result = float("inf"), None
    for _ in range(rounds):
        box = _open(src, work)
        try:
            t0 = time.perf_counter()
            result = fn(box)
            best = min(best, time.perf_counter() - t0)
        finally:
            box.close()
            _remove(work)
    return best, result


def run(quick: bool) -> list[Result]:
    if quick:
        cases = [("600 frames x 40 gaps", 600, 40, 3, 600, "quadratic"),
                 ("200 frames x 1 000 gaps", 200, 1000, 1, 2000, "floor")]
    else:
        cases = [("7 days: 60 480 frames x 4 000 gaps", 60_480, 4000, 3, 60_480, "quadratic"),
                 ("20 000 frames x 100 000 gaps (codec max)", 20_000, 100_000, 1, 200_000, "floor")]
    where = Path(os.environ.get("BENCH_OUTBOX_DIR") or Path(__file__).resolve().parent.parent)
    out = []
    with tempfile.TemporaryDirectory(prefix="bench-acknack-", dir=where) as d:
        for name, nframes, ngaps, width, span, ref in cases:
            src, work = Path(d) / f"src-{nframes}.sqlite", Path(d) / "work.sqlite"
            _build(src, nframes)
            step = span // ngaps
            gaps = [(BASE + k * step, BASE + k * step + width) for k in range(ngaps)]
            lowest, highest = BASE, BASE + span - 1
            new_s, deleted = _timed(src, work, lambda b: b.apply_acknack(FS, lowest, highest, gaps), 3)
            note = f"{new_s * 1e3:.1f} ms per acknack; {deleted} frames deleted"
            if ref == "quadratic":
                ref_s, ref_deleted = _timed(src, work, lambda b: quadratic_apply_acknack(b, FS, lowest, highest,
                                                                                          gaps), 1)
                assert ref_deleted == deleted, (ref_deleted, deleted)
                reference = f"old quadratic apply_acknack, same outbox ({ref_s:.2f} s)"
            else:
                box = _open(src, work)
                rows = [(s, st, p) for s, st, p in box._db.execute(
                    "SELECT seq, state, pubacked FROM frames WHERE frame_set = ? ORDER BY seq", (FS,))]
                box.close()
                _remove(work)
                ref_s = float("inf")
                for _ in range(3):
                    t0 = time.perf_counter()
                    ndel, _ = merge_floor(rows, lowest, highest, gaps)
                    ref_s = min(ref_s, time.perf_counter() - t0)
                assert ndel == deleted, (ndel, deleted)
                reference = f"plain sorted merge in Python, rows in memory, no SQLite ({ref_s * 1e3:.1f} ms)"
                if os.environ.get("BENCH_ACKNACK_OLD"):     # the old code here too: minutes
                    old_s, old_deleted = _timed(src, work, lambda b: quadratic_apply_acknack(
                        b, FS, lowest, highest, gaps), 1)
                    assert old_deleted == deleted, (old_deleted, deleted)
                    note += f"; old quadratic apply_acknack {old_s:.1f} s ({old_s / new_s:.0f}x)"
            out.append(Result(GROUP, f"apply_acknack {name}", 1 / new_s, "acknacks/s", reference=reference,
                              reference_value=1 / ref_s, note=note,
                              extra={"seconds": new_s, "reference_seconds": ref_s, "frames": nframes,
                                     "gaps": ngaps}))
            _remove(src)
    return out
