"""The writers of the power-loss tests: the real stores, unmodified, on a powerfs mount.

Run as ``python -m tests.powerloss.scenarios SCENARIO DIR --round N [--mutant NAME] [--report-only]``
(from the project root).  One JSON object a line on stdout:

* ``{"seen": ...}`` first: what the store holds after opening it (i.e. after the previous cut and
  the store's own recovery), or ``{"open_failed": "..."}`` when it refuses to open;
* then ``{"ack": ...}`` lines, each printed only once the store said the data is durable -- the
  moment the real system acknowledges it (to the board, to the broker, to the station) -- except
  the outbox's ``acknack`` line, which *releases* frames (the relay has them; the outbox may now
  delete them) and is therefore printed *before* the outbox is asked to delete them.  The rule:
  a line that adds to what must survive comes after the store returned, a line that takes away
  from it comes before the store acts; either way a cut at any instant leaves the test's ledger
  requiring no more than the disk must hold.

The writer runs until it is killed (the test cuts the power at a moment of its choosing).
``--mutant`` first rewrites one line of a store's source (``MUTANTS``), so the suite can show that
the harness detects a store that does not sync (tests/powerloss/test_powerloss.py).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import random
import sys
import time
from pathlib import Path
from types import SimpleNamespace

FRAME_SET = "STA01:0"
BOARD = 1

#: name -> (module, exact source text, replacement): each a one-line "forgot to sync" mutant.
MUTANTS: dict[str, tuple[str, str, str]] = {
    "outbox-synchronous-off": ("ims_station.edge.outbox", 'self._db.execute(f"PRAGMA synchronous={synchronous}")',
                               'self._db.execute("PRAGMA synchronous=OFF")'),
    "outbox-synchronous-normal": ("ims_station.edge.outbox", 'synchronous: str = "FULL"', 'synchronous: str = "NORMAL"'),
    "archive-synchronous-off": ("ims_station.relay.archive", 'self._db.execute("PRAGMA synchronous=FULL")',
                                'self._db.execute("PRAGMA synchronous=OFF")'),
    "archive-day-file-not-fsynced": ("ims_station.relay.archive",
                                     "            fh.flush()\n            os.fsync(fh.fileno())\n",
                                     "            fh.flush()\n"),
    "archive-new-file-dir-not-fsynced": ("ims_station.relay.archive", "                fsync_dir(p.parent)\n",
                                         "                pass\n"),
    "state-synchronous-off": ("ims_station.relay.state", 'self._db.execute("PRAGMA synchronous=FULL")',
                              'self._db.execute("PRAGMA synchronous=OFF")'),
    # The PostgreSQL backend's objects (relay/pgstore.py): the index is PostgreSQL's (off the
    # powerfs disk), the bytes are ours.
    "pg-object-not-fsynced": ("ims_station.relay.pgstore", "            fh.flush()\n            os.fsync(fh.fileno())\n",
                              "            fh.flush()\n"),
    "pg-object-dir-not-fsynced": ("ims_station.relay.pgstore", "        raise\n    fsync_dir(path.parent)\n",
                                  "        raise\n"),
}


def apply_mutant(name: str) -> None:
    """Re-execute the module's source with the one change, in place (before its users import it)."""
    module, old, new = MUTANTS[name]
    mod = importlib.import_module(module)
    src = Path(mod.__file__).read_text()
    if src.count(old) != 1:
        raise SystemExit(f"mutant {name}: {old!r} occurs {src.count(old)} times in {mod.__file__}, "
                         "expected once (update MUTANTS)")
    exec(compile(src.replace(old, new), mod.__file__, "exec"), mod.__dict__)


def emit(kind: str, value) -> None:
    sys.stdout.write(json.dumps({kind: value}) + "\n")
    sys.stdout.flush()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- edge outbox -------------------------------------------------------------------------------------
def outbox_payload(seq: int) -> bytes:
    """The frame of *seq*: the same bytes whichever round (re)builds it, 0.2 to 9 KiB."""
    rng = random.Random(seq)
    return rng.randbytes(rng.randrange(200, 9000))


def run_outbox(d: Path, rnd: int, report_only: bool, hold_after_acknack: bool = False) -> None:
    """What the gateway does (edge/station.py): commit frames, then the board's ACK point, and
    publish/acknack in between; the uplink deletes what the relay acknowledged.

    *hold_after_acknack*: when the first acknack's deletion returns (is durable), print
    ``{"hold": ...}`` and stop right there, inside the call, so that the test cuts the power at
    exactly that point (test_powerloss.py)."""
    from ims_station.edge.outbox import Outbox

    clock = SimpleNamespace(time=time.time, monotonic=time.monotonic)
    try:
        # One new level, as a gateway makes its data_dir on the first run (a missing parent is refused).
        box = Outbox(d / "outbox" / "outbox.sqlite", max_bytes=1 << 30, max_age_s=1e9,
                     clock=clock, resend_holdoff_s=0.0)
        items = box.next_to_send(1 << 20, live_window_s=0)
        seen = {"frames": [[i.frame_set, i.seq, sha(i.payload)] for i in items],
                "ack_points": {str(b): list(v) for b, v in box.ack_points().items()},
                "highest_committed": box.highest_committed(FRAME_SET)}
    except Exception as err:  # noqa: BLE001 - reported to the test, which judges it
        emit("open_failed", f"{type(err).__name__}: {err}")
        return
    emit("seen", seen)
    if report_only:
        return
    if hold_after_acknack:
        apply_acknack = box.apply_acknack

        def apply_then_hold(frame_set: str, lo: int, hi: int, gaps: list) -> int:
            # The deletion is committed (fsync'd) and this writer will print nothing more: the
            # instant a cut is most likely to expose a report printed after the store returned.
            apply_acknack(frame_set, lo, hi, gaps)
            emit("hold", {"acknack": [frame_set, lo, hi]})
            while True:       # the test cuts the power now, and kills us
                time.sleep(60)

        box.apply_acknack = apply_then_hold
    rng = random.Random(rnd)
    seq = (seen["highest_committed"] or 0) + 1
    while True:
        payload = outbox_payload(seq)
        box.put("cd11", FRAME_SET, seq, 1_700_000_000 + 10 * seq, payload)
        emit("ack", {"put": [FRAME_SET, seq, sha(payload)]})
        if rng.random() < 0.5:
            box.set_ack_point(BOARD, 7, seq, None)
            emit("ack", {"ack_point": [BOARD, 7, seq]})
        if rng.random() < 0.1:
            # The uplink published the pending frames, the broker PUBACKed, the relay acknowledged
            # all but the newest few: those are deleted (a deleted frame may come back after a cut:
            # the relay dedupes it; it must not be *required* any more).
            sent = box.next_to_send(1000, live_window_s=0)
            box.mark_sent([i.id for i in sent])
            box.mark_pubacked([i.id for i in sent])
            lo, hi = box.available(FRAME_SET)
            hi -= rng.randrange(0, 4)
            if hi >= lo:
                # Printed *before* the outbox applies it: this line lifts a requirement (the
                # relay holds these frames), so it must reach the test before the deletion can
                # be durable.  Printed after, a cut between the deletion's commit and the print
                # would report the durably deleted frames as lost (docs/testing.md).
                emit("ack", {"acknack": [FRAME_SET, hi]})
                box.apply_acknack(FRAME_SET, lo, hi, [])
        seq += 1


# -- relay: archive + state through the relay core ------------------------------------------------------
class Frames:
    """Signed 10-s data frames of STA01 (as tests/relay/conftest.py builds them; one 10-sps channel
    keeps them cheap: what is tested is the storage, not the codec)."""

    def __init__(self, keystore_dir: Path) -> None:
        from ims_station.auth import Keystore

        self.ks = Keystore.load(keystore_dir)

    def build(self, seq: int) -> bytes:
        import numpy as np

        from ims_station import cd11
        from datetime import datetime, timedelta, timezone

        t = datetime(2000, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=10 * seq)
        samples = np.cumsum(np.random.default_rng(seq).integers(-200, 200, 100)).astype(np.int32)
        chan = cd11.ChannelInput("STA01", "BHZ", "00", samples, 10.0, t, None, self.ks.signer(102))
        return cd11.build_data_frame("STA01", seq, t, [chan], self.ks.signer(101))


def run_relay(d: Path, rnd: int, report_only: bool, keystore: Path, trust: Path, dsn: str | None = None,
              schema: str = "public") -> None:
    """What the relay does (relay/relay.py): ``process`` a batch (archive, then state), ack the
    batch to the broker, send the acknacks (``due_acknacks``).  With *dsn*: the PostgreSQL backend,
    its objects on the powerfs disk, its index and state in PostgreSQL (not on the disk)."""
    from ims_station import cd11, topics
    from ims_station.auth import TrustStore
    from ims_station.relay.archive import FileArchive
    from ims_station.relay.core import Incoming, RelayCore
    from ims_station.relay.state import SqliteStateStore

    try:
        if dsn:
            from ims_station.relay.pgstore import PgArchive, PgStateStore

            archive = PgArchive(dsn, d / "relay" / "archive", schema=schema)
            state = PgStateStore(dsn, schema=schema)
        else:
            archive = FileArchive(d / "relay" / "archive")
            state = SqliteStateStore(d / "relay" / "state" / "state.sqlite")
        frames = [[fs, seq, sha(archive.read_frame(fs, seq))] for fs, seq in archive.frame_keys()]
        quarantine = [sha(archive.read_quarantined(e)) for e in archive.quarantine_entries() if e["file"]]
        states = {n: list(s.acknack_fields()) for n, s in state.load_all().items()}
        # Frames of 2000: outside the default plausibility window, which is not under test here.
        core = RelayCore(TrustStore.load(trust), state, archive, max_past_s=None)
    except Exception as err:  # noqa: BLE001 - reported to the test, which judges it
        emit("open_failed", f"{type(err).__name__}: {err}")
        return
    emit("seen", {"frames": frames, "quarantine": quarantine, "states": states})
    if report_only:
        return
    maker = Frames(keystore)
    topic = topics.topic(topics.DEFAULT_PREFIX, "STA01", "cd11")
    rng = random.Random(rnd)
    held = {seq for _, seq, _ in frames}
    seq = max(held, default=0) + 1
    skipped: list[int] = []
    n = 0
    while True:
        batch = []
        for _ in range(rng.randrange(1, 5)):
            r = rng.random()
            if r < 0.15:
                skipped.append(seq)              # lost on the way: a gap the acknack reports
                seq += 1
                continue
            if r < 0.25 and skipped:
                s = skipped.pop(0)               # the station's resend fills it
            elif r < 0.3 and held:
                s = rng.choice(sorted(held))     # a duplicate
            else:
                s, seq = seq, seq + 1
            raw = maker.build(s)
            if rng.random() < 0.05:
                raw = raw[:-40] + bytes(b ^ 0xFF for b in raw[-40:])   # damaged: quarantined
            batch.append(raw)
        outcomes = core.process([Incoming(topic, raw, token=i) for i, raw in enumerate(batch)])
        # process() returned: the MQTT client now PUBACKs the batch; the broker forgets it.
        archived, quarantined = [], []
        for o, raw in zip(outcomes, batch):
            if o.result in ("archived", "duplicate"):
                archived.append([o.frame_set, o.sequence, sha(raw)])
                held.add(o.sequence)
            else:
                quarantined.append(sha(raw[:1 << 20]))
        emit("ack", {"batch": {"archived": archived, "quarantined": quarantined}})
        n += 1
        if n % 2 == 0:
            for _topic, fs, data in core.due_acknacks(force=True):
                a, _ = cd11.parse_frame(data)
                emit("ack", {"acknack": [fs, a.lowest, a.highest, [list(g) for g in a.gaps]]})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.powerloss.scenarios")
    ap.add_argument("scenario", choices=["outbox", "relay", "relay-pg"])
    ap.add_argument("dir", type=Path, help="the powerfs mount point")
    ap.add_argument("--round", type=int, default=0, help="seeds this round's random choices")
    ap.add_argument("--mutant", choices=sorted(MUTANTS))
    ap.add_argument("--report-only", action="store_true", help="open, report what is held, exit")
    ap.add_argument("--hold-after-acknack", action="store_true",
                    help="outbox: stop (print a hold line) once the first acknack's deletion returned")
    ap.add_argument("--keystore", type=Path)
    ap.add_argument("--trust", type=Path)
    ap.add_argument("--dsn", help="relay-pg: the PostgreSQL connection string")
    ap.add_argument("--schema", default="public", help="relay-pg: the schema")
    args = ap.parse_args(argv)
    if args.mutant:
        apply_mutant(args.mutant)
    if args.scenario == "outbox":
        run_outbox(args.dir, args.round, args.report_only, args.hold_after_acknack)
    else:
        run_relay(args.dir, args.round, args.report_only, args.keystore, args.trust,
                  args.dsn if args.scenario == "relay-pg" else None, args.schema)
    return 0


if __name__ == "__main__":
    sys.exit(main())
