"""Must-show 2: the gateway process SIGKILLed at 20 random (seeded) moments.

Three processes besides the test: the HIL board behind a pty (``ims-station hil run``, so the board
and its ring buffer outlive the gateway), the gateway (``python -m ims_station.edge.station``, killed
and restarted), the relay (``ims-station relay run``); and a real Mosquitto.  Properties checked:

* every frame the gateway ever committed (seen in its outbox after any kill) reaches the archive,
  exactly once (archive primary key, and the relay's index has one row per sequence number);
* no sequence number is ever committed or archived with two different contents;
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
from pathlib import Path

import pytest

from .harness import RelayProcess, archived_sequences, start_mosquitto, wait_for

pytestmark = pytest.mark.usefixtures("mosquitto_installed")     # tests/conftest.py: skip, or fail in CI

STA = "KIL1"
FRAME_SET = f"{STA}:0"
KILLS = 20
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


def _outbox_rows(path: Path) -> dict[int, bytes]:
    """(seq -> SHA-256 digest) of every frame in the outbox (read-only, after the gateway died)."""
    if not path.exists():
        return {}
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return {int(s): bytes(d) for s, d in
                con.execute("SELECT seq, digest FROM frames WHERE frame_set = ?", (FRAME_SET,))}
    except sqlite3.OperationalError:
        return {}
    finally:
        con.close()


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
    relay stats)."""
    tmp_path = tmp_path_factory.mktemp("gwkill")
    rng = random.Random(20260101)
    ks, trust, board_key = _keys(tmp_path)
    broker = start_mosquitto(tmp_path)
    relay = RelayProcess(tmp_path / "relay", broker.config, trust).start()
    board = subprocess.Popen([sys.executable, "-m", "ims_station", "hil", "run", "--key-file", str(board_key),
                              "--speed", str(SPEED), "--seed", "5"],
                             stdout=subprocess.PIPE, stderr=open(tmp_path / "board.log", "wb"), text=True,
                             start_new_session=True)
    gw_log = open(tmp_path / "gateway.log", "ab")
    gw = None
    seen: dict[int, bytes] = {}            # seq -> digest, from every outbox snapshot
    conflicts: list[tuple[int, bytes, bytes]] = []

    def start_gateway():
        return subprocess.Popen([sys.executable, "-m", "ims_station.edge.station", "--config", str(station_toml)],
                                stdout=gw_log, stderr=gw_log,
                                start_new_session=True)

    def snapshot():
        for seq, digest in _outbox_rows(tmp_path / "gw" / "outbox.sqlite").items():
            if seq in seen and seen[seq] != digest:
                conflicts.append((seq, seen[seq], digest))
            seen.setdefault(seq, digest)

    try:
        pty = board.stdout.readline().strip()
        assert pty.startswith("/dev/"), pty
        station_toml = _configs(tmp_path, pty, broker.port, ks, board_key)
        for k in range(KILLS):
            gw = start_gateway()
            time.sleep(rng.uniform(1.5, 4.0))  # the fault schedule: kill at a random moment
            assert gw.poll() is None, (tmp_path / "gateway.log").read_text()[-3000:]
            gw.send_signal(signal.SIGKILL)
            gw.wait()
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

    return frames, seen, conflicts, relay_stats(relay)


def test_every_committed_frame_archived_exactly_once_and_no_sequence_reused(killed_run):
    import hashlib

    frames, seen, conflicts, rs = killed_run
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

    frames, _seen, _conflicts, _rs = killed_run
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
