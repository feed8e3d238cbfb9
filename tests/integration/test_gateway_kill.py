"""Must-show 2: the gateway process SIGKILLed at 20 random (seeded) moments.

Three processes besides the test: the HIL board behind a pty (``ims-station hil run``, so the board
and its ring buffer outlive the gateway), the gateway (``python -m ims_station.edge.station``, killed
and restarted), the relay (``ims-station relay run``); and a real Mosquitto.

Kill moments follow the gateway's progress, not its start: the test polls the outbox and the
archive (read-only SQLite, every 20 ms) and kills each process after its 1st or 2nd commit (new
sequence numbers), either a seeded random 0-1.5 s later or the moment a frame is sent and awaiting
the relay's acknack (state persisted in the outbox).  A kill timed from the start alone mostly hit
processes still starting up or replaying the ring, before any commit.  Each kill is recorded
(:class:`Kill`: commits of that process, frames in flight and pending at the kill, read from the
outbox after it) and the records are checked too.  Properties checked:

* every frame the gateway ever committed (seen in its outbox after any kill) reaches the archive,
  exactly once (archive primary key, and the relay's index has one row per sequence number);
* no sequence number is ever committed or archived with two different contents;
* the kills hit processes that had committed (at least 90 %), some of them with frames in flight;
* the samples the board held in its ring while the gateway was dead are recovered: the archived
  frames form an unbroken sequence, and every frame between the first and the last is full
  (every channel, every sample of the window).
"""

from __future__ import annotations

import datetime as dt
import random
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from .harness import RelayProcess, archived_sequences, start_mosquitto, wait_for

pytestmark = pytest.mark.usefixtures("mosquitto_installed")     # tests/conftest.py: skip, or fail in CI

STA = "KIL1"
FRAME_SET = f"{STA}:0"
KILLS = 20
COMMIT_DEADLINE_S = 20.0   # wall seconds a restarted gateway gets to commit its first frames
IN_FLIGHT_DEADLINE_S = 3.0 # after the planned commit: wait this long at most for a frame in flight
SPEED = 4.0            # the board runs 4x real time: a restart gap of ~1.5 s is ~6 s of samples
RATE = 100             # sps (boards/sim.toml default)
CHANNELS = {0: "00.BHZ", 1: "00.BHN", 2: "00.BHE", 3: "10.BDF"}
SIM_EPOCH = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)   # hil/sim.py DEFAULT_START_UTC


def _keys(root: Path) -> tuple[Path, Path, Path]:
    from ims_station.auth import export_public, generate_key
    from ims_station.config import write_secret_file

    ks, trust = root / "keys", root / "trust"
    start = SIM_EPOCH - dt.timedelta(days=30)          # the board's clock starts at the HIL epoch
    for n in range(len(CHANNELS) + 1):
        generate_key("ed25519", 500 + n, ks, station=STA, valid_from=start)
        export_public(ks, 500 + n, trust)
    board_key = write_secret_file(root / "board.key", bytes(random.Random(1).getrandbits(8) for _ in range(32)))
    return ks, trust, board_key


def _configs(root: Path, pty: str, broker_port: int, ks: Path, board_key: Path) -> Path:
    """One station file for the whole gateway: ports, framer, outbox, keys, uplink."""
    station = root / "station.toml"
    chans = ", ".join(f'{k} = "{v}"' for k, v in CHANNELS.items())
    gateway = _gateway_tables(ks, broker_port)
    station.write_text(f"""
[station]
code = "{STA}"
network = "XX"
data_dir = "{root / 'gw'}"

[[ports]]
name = "board"
url = "{pty}"
baudrate = 115200
board = "sim"
board_id = 1
key_file = "{board_key}"
channels = {{ {chans} }}
{gateway}""")
    return station


def _gateway_tables(ks: Path, broker_port: int) -> str:
    ids = ", ".join(f'"{v}" = {501 + k}' for k, v in CHANNELS.items())
    return f"""
[framer]
frame_seconds = 10
max_wait_s = 30
max_clock_offset_s = 630_720_000   # 20 years: the HIL board's clock starts at 2026-01-01, whatever today is

[outbox]
max_bytes = 200_000_000
max_age_days = 3650          # the HIL board's clock starts at 2026-01-01, whatever today is

[keys]
keystore = "{ks}"
station_key_id = 500
channel_key_ids = {{ {ids} }}

[uplink]
prefix = "ims"
ack_timeout_s = 5.0

[[uplink.brokers]]
host = "127.0.0.1"
port = {broker_port}
"""


def _outbox_rows(path: Path) -> dict[int, tuple[bytes, int]]:
    """(seq -> (SHA-256 digest, state)) of every frame in the outbox, read-only (the gateway may be
    running: SQLite WAL readers do not block it).  State 1 is "sent, awaiting the relay's acknack";
    it is persisted when the frame is published, so a read after a SIGKILL shows what was in
    flight at the moment of the kill."""
    if not path.exists():
        return {}
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return {int(s): (bytes(d), int(st)) for s, d, st in
                con.execute("SELECT seq, digest, state FROM frames WHERE frame_set = ?", (FRAME_SET,))}
    except sqlite3.OperationalError:
        return {}
    finally:
        con.close()


@dataclass
class Kill:
    """What one SIGKILL hit: the plan (kill after the *after*-th commit of the run, then *delay*
    seconds later, or as soon as a frame awaits its acknack) and what the outbox held at that
    moment, read after the kill."""

    run: int
    after: int
    mode: str                      # "delay" or "in_flight"
    delay: float
    committed_in_run: int = 0      # frames this gateway process committed before it died
    seqs: tuple[int, ...] = ()     # their sequence numbers
    in_flight: int = 0             # frames sent and awaiting the relay's acknack at the kill
    pending: int = 0               # frames committed and not (or no longer) sent at the kill
    alive_s: float = 0.0           # wall seconds the process lived


def _archive_frames(relay: RelayProcess) -> dict[int, bytes]:
    from ims_station.relay.archive import FileArchive

    arch = FileArchive(relay.root / "data" / "archive", writer="check")
    try:
        return {s: arch.read_frame(FRAME_SET, s) for s in archived_sequences(relay.root / "data" / "archive", FRAME_SET)}
    finally:
        arch.close()


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory):
    """The scenario, run once for the module: 20 SIGKILLs, then a final run until every committed
    frame is archived.  Returns (frames archived: seq -> bytes, seen: seq -> digest, conflicts,
    relay stats, the kill records)."""
    tmp_path = tmp_path_factory.mktemp("gwkill")
    rng = random.Random(20260101)
    ks, trust, board_key = _keys(tmp_path)
    broker = start_mosquitto(tmp_path)
    # The HIL board's clock starts at 2026-01-01, whatever today is: no 30-day time bound here.
    relay = RelayProcess(tmp_path / "relay", broker.config, trust, max_past_s=630_720_000).start()
    board = subprocess.Popen([sys.executable, "-m", "ims_station", "hil", "run", "--key-file", str(board_key),
                              "--speed", str(SPEED), "--seed", "5"],
                             stdout=subprocess.PIPE, stderr=open(tmp_path / "board.log", "wb"), text=True,
                             start_new_session=True)
    gw_log = open(tmp_path / "gateway.log", "ab")
    gw = None
    seen: dict[int, bytes] = {}            # seq -> digest, from every outbox snapshot
    conflicts: list[tuple[int, bytes, bytes]] = []
    kills: list[Kill] = []

    def start_gateway():
        return subprocess.Popen([sys.executable, "-m", "ims_station.edge.station", "--config", str(station_toml)],
                                stdout=gw_log, stderr=gw_log,
                                start_new_session=True)

    def snapshot():
        for seq, (digest, _state) in _outbox_rows(tmp_path / "gw" / "outbox.sqlite").items():
            if seq in seen and seen[seq] != digest:
                conflicts.append((seq, seen[seq], digest))
            seen.setdefault(seq, digest)

    outbox = tmp_path / "gw" / "outbox.sqlite"
    archive = relay.root / "data" / "archive"

    def gw_log_tail() -> str:
        return (tmp_path / "gateway.log").read_text(errors="replace")[-3000:]

    def kill_when(plan: Kill, known: set[int]) -> None:
        """Poll the outbox and the archive (20 ms) and SIGKILL the gateway at the planned moment,
        relative to the commits this process made (new sequence numbers), not to its start."""
        t0 = time.monotonic()
        new: set[int] = set()
        t_commit = None
        while time.monotonic() - t0 < COMMIT_DEADLINE_S:
            rows = _outbox_rows(outbox)
            new |= (set(rows) | set(archived_sequences(archive, FRAME_SET))) - known
            assert gw.poll() is None, gw_log_tail()
            if t_commit is None and len(new) >= plan.after:
                t_commit = time.monotonic()
            if t_commit is not None:
                if plan.mode == "in_flight" and any(st == 1 for _d, st in rows.values()):
                    break
                if plan.mode == "delay" and time.monotonic() - t_commit >= plan.delay:
                    break
                if time.monotonic() - t_commit >= IN_FLIGHT_DEADLINE_S:
                    break           # no frame seen in flight: kill anyway, the record says so
            time.sleep(0.02)
        gw.send_signal(signal.SIGKILL)
        gw.wait()
        plan.alive_s = time.monotonic() - t0
        rows = _outbox_rows(outbox)
        plan.seqs = tuple(sorted((set(rows) | set(archived_sequences(archive, FRAME_SET))) - known))
        plan.committed_in_run = len(plan.seqs)
        plan.in_flight = sum(st == 1 for _d, st in rows.values())
        plan.pending = sum(st == 0 for _d, st in rows.values())

    try:
        pty = board.stdout.readline().strip()
        assert pty.startswith("/dev/"), pty
        station_toml = _configs(tmp_path, pty, broker.port, ks, board_key)
        for k in range(KILLS):
            # The fault schedule (seeded): after the 1st or 2nd commit of this process, either a
            # random 0-1.5 s later or the moment a frame is awaiting the relay's acknack.
            plan = Kill(k, after=rng.choice((1, 1, 2)), mode=rng.choice(("delay", "in_flight")),
                        delay=rng.uniform(0.0, 1.5))
            known = set(seen) | set(archived_sequences(archive, FRAME_SET))
            gw = start_gateway()
            kill_when(plan, known)
            kills.append(plan)
            snapshot()
        assert conflicts == [], "a sequence number was committed with two different contents"
        # Last run: the gateway stays up until every frame committed so far has been archived and
        # the windows recovered from the board's ring are complete.
        gw = start_gateway()
        committed = set(seen)
        wait_for(lambda: committed <= set(archived_sequences(relay.root / "data" / "archive", FRAME_SET)),
                 120, "every committed frame archived",
                 on_timeout=lambda: f"{(tmp_path / 'gateway.log').read_text()[-3000:]}\n{relay.logs()}")
        gw.send_signal(signal.SIGTERM)
        gw.wait(15)
        gw = None
        snapshot()
        relay.stop()
        frames = _archive_frames(relay)
    finally:
        if gw is not None and gw.poll() is None:
            gw.kill()
            gw.wait()
        board.send_signal(signal.SIGTERM)
        try:
            board.wait(10)
        except subprocess.TimeoutExpired:
            board.kill()
        relay.stop()
        broker.close()
        gw_log.close()

    from .test_faults import relay_stats

    return frames, seen, conflicts, relay_stats(relay), kills


def test_every_committed_frame_archived_exactly_once_and_no_sequence_reused(killed_run):
    import hashlib

    frames, seen, conflicts, rs, _kills = killed_run
    assert len(frames) >= 15, "too few frames for the test to mean anything"
    # A reused sequence number with other bytes would be a duplicate_conflict security event.
    assert rs["security_events"] == 0 and rs["quarantined"] == 0, rs
    # Exactly once, same content: archive rows are unique per seq (primary key); the content the
    # gateway committed is the content archived.
    for seq, digest in seen.items():
        assert seq in frames, f"committed frame {seq} never reached the archive"
        assert hashlib.sha256(frames[seq]).digest() == digest, f"seq {seq} archived with other content"
    assert conflicts == []


def test_samples_held_in_the_board_ring_during_outages_are_recovered(killed_run):
    from ims_station import cd11

    frames, _seen, _conflicts, _rs, _kills = killed_run
    # Ring recovery: an unbroken run of sequence numbers with full windows between the first and
    # the last frame (the first and the last window of the run may be partial).
    seqs = sorted(frames)
    assert seqs == list(range(seqs[0], seqs[-1] + 1)), \
        f"missing windows: {sorted(set(range(seqs[0], seqs[-1] + 1)) - set(seqs))}"
    short = []
    for seq in seqs[1:-1]:
        frame, _ = cd11.parse_frame(frames[seq])
        n_by_chan: dict[str, int] = {}
        for sf in frame.subframes:
            key = f"{sf.location}.{sf.channel}"
            n_by_chan[key] = n_by_chan.get(key, 0) + int(sf.samples().size)
        if sorted(n_by_chan) != sorted(CHANNELS.values()) or any(n != 10 * RATE for n in n_by_chan.values()):
            short.append((seq, n_by_chan))
    assert short == [], f"windows with samples missing after gateway restarts: {short[:5]}"


def test_kills_landed_after_commits_and_while_frames_awaited_their_acknack(killed_run):
    """The fault schedule did what it claims: the kills hit processes that had committed frames
    (not only start-ups), some of them while frames were awaiting the relay's acknack, others
    while frames were committed but not yet sent or acknowledged."""
    _frames, _seen, _conflicts, _rs, kills = killed_run
    table = "\n".join(str(k) for k in kills)
    assert len(kills) == KILLS
    assert sum(k.committed_in_run >= 1 for k in kills) >= 0.9 * KILLS, f"kills before any commit:\n{table}"
    assert sum(k.in_flight >= 1 for k in kills) >= 3, f"too few kills with frames in flight:\n{table}"
    assert sum(k.committed_in_run >= 2 for k in kills) >= 3, f"too few kills after several commits:\n{table}"
