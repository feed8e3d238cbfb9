"""A small network for the end-to-end fault tests: keys, a real Mosquitto on a free port, the relay
as a separate process (``ims-station relay run``, so it can be SIGKILLed), and the station side
(outbox + uplink, production code) in the test process.

Acceleration: every component runs on the wall clock, but the data is 10-s CD-1.1 frames whose
nominal times lie in the recent past and are committed as fast as the test wants (a 30-minute run
takes seconds), and the protocol timers that would otherwise dominate are shortened through the
components' own settings (relay acknack every second, uplink ack timeout, outbox resend hold-off).

Frame source: :class:`FrameFactory` builds real, signed, CA-compressed CD-1.1 data frames with the
codec's ``build_data_frame`` from deterministic samples.  It stands in for the edge framer
(``edge/framer.py``) in the tests that are about store-and-forward (broker, relay, disk), where
*which* samples are in a frame does not matter; the gateway-kill test uses the real gateway.
:class:`PacedStation` runs the real station path in the test process (HIL board -> ``sim://`` ->
LinkDecoder -> StreamAssembler -> Framer -> Outbox -> Uplink), assembled by
``edge/station.assemble`` from a station file (``demo.write_station_file``) as ``ims-station edge
run`` and the demo assemble it, paced by a :class:`ims_station.demo.PacedClock`, for the tests whose
fault is defined in simulated time (the broker stopped for 5 of 30 minutes).
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import threading

import numpy as np

from ims_station.broker import BrokerConfig, MosquittoBroker

FRAME_S = 10
CHANNELS = ("BHZ", "BHN", "BHE")


def write_keys(root: Path, stations: list[str]) -> dict[str, Path]:
    """Station + channel keys (Ed25519) per station, public halves in ``root/trust``."""
    from ims_station.auth import export_public, generate_key

    start = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=2)).replace(microsecond=0)
    stores = {}
    for i, sta in enumerate(stations):
        ks = root / "keys" / sta
        base = 100 * (i + 1)
        for n in range(len(CHANNELS) + 1):
            generate_key("ed25519", base + n, ks, station=sta, valid_from=start)
            export_public(ks, base + n, root / "trust")
        stores[sta] = ks
    return stores


class FrameFactory:
    """Signed 10-s data frames of one station, 3 channels (40 sps by default), samples seeded by
    (station, seq): a random walk with steps up to *step* counts (larger steps, larger frames)."""

    def __init__(self, station: str, keystore: Path, key_base: int, *, rate: float = 40.0,
                 step: int = 50) -> None:
        from ims_station.auth import Keystore

        self.rate, self.step = rate, step
        ks = Keystore.load(keystore)
        self.station = station
        self.frame_signer = ks.signer(key_base)
        self.channel_signers = [ks.signer(key_base + 1 + i) for i in range(len(CHANNELS))]

    def frame(self, nominal_time: float) -> tuple[int, bytes]:
        from ims_station import cd11

        seq = cd11.sequence_from_time(nominal_time, FRAME_S)
        rng = np.random.default_rng([seq, sum(self.station.encode())])
        n = int(self.rate * FRAME_S)
        chans = [cd11.ChannelInput(self.station, ch, "",
                                   np.cumsum(rng.integers(-self.step, self.step, n)).astype(np.int32),
                                   self.rate, nominal_time, None, signer)
                 for ch, signer in zip(CHANNELS, self.channel_signers)]
        return seq, cd11.build_data_frame(self.station, seq, nominal_time, chans, self.frame_signer)


class PacedStation:
    """One simulated station, production code from the board to the uplink, driven in a thread
    so that its simulated time runs *speed* times faster than the wall clock.

    The simulation's own clock (``sim.clock``) is the clock of every station component, as in
    ``ims-station demo``: the framer's windows, the outbox's ages and the uplink's ack timeout run
    in simulated time.  ``committed`` records what the framer handed to the outbox (seq -> SHA-256
    of the exact bytes) and ``commit_times`` the simulated time of each commit (seconds from the
    start), so a test can compare the archive with what was committed, byte for byte.
    """

    def __init__(self, root: Path, station: str, broker: MosquittoBroker, *, speed: float, seed: int = 3,
                 frame_seconds: int = FRAME_S, start_utc: int | None = None, ack_timeout_s: float = 300.0,
                 keystore: Path | None = None) -> None:
        """*keystore*: sign with its keys chosen per frame by time (docs/keys.md, "Rotation") instead
        of the pinned frame and channel keys of ``make_keys``."""
        from ims_station.demo import SIM_CHANNELS, PacedClock, make_keys, write_station_file
        from ims_station.edge.config import load_station_config
        from ims_station.edge.station import assemble
        from ims_station.hil.sim import Simulation, register, unregister

        if start_utc is None:                   # on a window boundary: every window of the run is full
            start_utc = int(time.time()) // frame_seconds * frame_seconds
        self.station = station
        self.frame_set = f"{station}:0"
        keys, self.trust = make_keys(root, [station], [c for _, c in SIM_CHANNELS], valid_from=start_utc)
        k = keys[station]
        self.sim = Simulation(board="sim", seed=seed, key=k.board_key, start_utc=start_utc)
        self.sim_name = f"paced-{os.getpid()}-{id(self)}-{station}"
        register(self.sim_name, self.sim)
        clock = self.sim.clock
        self.paced = PacedClock(start_utc, speed)
        self.committed: dict[int, str] = {}
        self.committed_raw: dict[int, bytes] = {}
        self.commit_times: dict[int, float] = {}
        self.alarms: list[dict] = []
        self.error: str | None = None

        def on_commit(seq: int, raw: bytes) -> None:
            assert seq not in self.committed or self.committed[seq] == sha256(raw), f"seq {seq} reused"
            self.committed[seq] = sha256(raw)
            self.committed_raw[seq] = raw
            self.commit_times[seq] = clock.monotonic()

        # The production assembly from a station file (as `ims-station edge run` builds it), on
        # the simulation's clock; only the retry pacing is shortened.
        try:
            cfg = load_station_config(write_station_file(
                root / station / "station.toml", station, k, sim_name=self.sim_name,
                board_id=self.sim.board.board_id, baud=self.sim.baud, broker=broker.config,
                frame_seconds=frame_seconds, pin_keys=keystore is None, keystore=keystore,
                ack_timeout_s=ack_timeout_s))
            self.edge = assemble(cfg, clock=clock, on_commit=on_commit, on_alarm=self.alarms.append,
                                 uplink_options={"backoff_base_s": 0.05, "backoff_max_s": 0.5,
                                                 "connect_timeout_s": 3.0},
                                 pump_options={"backoff_initial": 0.5, "backoff_max": 4.0})
        except BaseException:
            unregister(self.sim_name)
            raise
        e = self.edge
        self.outbox, self.framer, self.uplink, self.gateway = e.outbox, e.framer, e.uplink, e.gateway
        self.decoder, self.assembler, self.pump = e.ports[0].decoder, e.ports[0].assembler, e.ports[0].pump
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sim_time(self) -> float:
        """Simulated seconds the station has run (it may lag the paced clock, never lead it)."""
        return self.sim.clock.monotonic()

    def start(self, *, sampling_s: float, drain_s: float = 45.0) -> "PacedStation":
        """Sample for *sampling_s* simulated seconds, then run *drain_s* more (the last window is
        committed after the framer's ``max_wait_s``), in a thread paced against the wall clock."""
        self.sim.stop_sampling(at_s=sampling_s)
        self.t_end = sampling_s + drain_s
        self.uplink.start()
        self.paced.restart()
        self._thread = threading.Thread(target=self._drive, name=f"paced-{self.station}", daemon=True)
        self._thread.start()
        return self

    def _drive(self) -> None:
        try:
            while not self._stop.is_set() and self.sim.clock.monotonic() < self.t_end:
                ahead = -self.paced.wall_until(self.sim.clock.monotonic())
                if ahead < 0:               # ahead of the paced clock: let the wall clock catch up
                    self._stop.wait(min(0.05, -ahead))
                    continue
                self.edge.step()
        except Exception as err:            # reported by done(), never silent
            self.error = f"{type(err).__name__}: {err}"
            raise

    def done(self) -> bool:
        """The simulation ran to its end (raises if its thread died)."""
        assert self.error is None, f"station {self.station} stopped: {self.error}"
        return self._thread is not None and not self._thread.is_alive()

    def close(self) -> None:
        from ims_station.hil.sim import unregister

        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        try:
            self.edge.close()
        finally:
            unregister(self.sim_name)


def frame_times(n: int, *, end_ago_s: float = 60.0) -> list[float]:
    """*n* consecutive 10-s nominal times ending *end_ago_s* before now, on frame boundaries."""
    end = (int(time.time() - end_ago_s) // FRAME_S) * FRAME_S
    return [float(end - (n - i) * FRAME_S) for i in range(n)]


@dataclass
class RelayProcess:
    """``ims-station relay run --config`` as a child process (SIGKILL-able)."""

    root: Path
    broker: BrokerConfig | None          # None with jetstream / amqp (the relay reads the cluster, not MQTT)
    trust: Path
    acknack_interval_s: float = 1.0
    max_past_s: float | None = None      # [relay] max_past_s (None: the relay's default)
    instance: str = "relay1"
    data_dir: Path | None = None         # default root/data; relays of one group may share one
    jetstream: list[str] | None = None   # NATS servers: [relay] input = "jetstream" instead of MQTT
    ack_wait_s: float = 2.0              # [jetstream] ack_wait_s (redelivery after a relay died)
    amqp: list[str] | None = None        # RabbitMQ AMQP URLs: [relay] input = "amqp"
    amqp_auth: tuple[str, Path] | None = None   # (username, password_file) for amqp
    proc: subprocess.Popen | None = None
    starts: int = 0
    log_files: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.config = self.root / "relay.toml"
        self.data_dir = self.data_dir or self.root / "data"
        if self.jetstream is not None:
            source, kind = ("\n[jetstream]\n" + f"servers = {list(self.jetstream)!r}\n".replace("'", '"') +
                            f"ack_wait_s = {self.ack_wait_s}\nfetch_wait_s = 0.05\n"), "jetstream"
        elif self.amqp is not None:
            user, pw = self.amqp_auth
            source, kind = ("\n[amqp]\n" + f"servers = {list(self.amqp)!r}\n".replace("'", '"') +
                            f'username = "{user}"\npassword_file = "{pw}"\nfetch_wait_s = 0.05\n'), "amqp"
        else:
            source, kind = ("\n[[broker]]\n"
                            f'host = "{self.broker.host}"\n'
                            f"port = {self.broker.port}\n"), None
        self.config.write_text(
            "[relay]\n"
            f'data_dir = "{self.data_dir}"\n'
            f'trust_dir = "{self.trust}"\n'
            f'instance = "{self.instance}"\n'
            + (f'input = "{kind}"\n' if kind else 'group = "relay"\n') +
            'name = "IDC"\n'
            f"acknack_interval_s = {self.acknack_interval_s}\n"
            "acknack_min_spacing_s = 0.1\n"
            + (f"max_past_s = {self.max_past_s}\n" if self.max_past_s is not None else "") + source)

    def start(self) -> "RelayProcess":
        log = self.root / f"relay-{self.starts}.log"
        self.log_files.append(log)
        with open(log, "wb") as fh:
            self.proc = subprocess.Popen([sys.executable, "-m", "ims_station", "relay", "run", "--config",
                                          str(self.config), "--json", "--stats-every", "0.5"],
                                         stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        self.starts += 1
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in self.log_files if p.exists())

    def archive(self):
        """The relay's archive, opened read-side (while the relay is stopped)."""
        from ims_station.relay.archive import FileArchive

        return FileArchive(self.data_dir / "archive", writer="check")


def archived_sequences(archive_root: Path, frame_set: str, table: str = "frames") -> dict[int, str]:
    """(seq -> sha256) of everything archived in *frame_set* -- frames, or with *table* ``events`` /
    ``ims20`` the archive's enveloped messages -- read from the archive's index directly (works while
    the relay process runs: SQLite WAL readers do not block the writer); a seq archived twice fails."""
    assert table in ("frames", "events", "ims20"), table
    import sqlite3

    db = archive_root / "index.sqlite"
    if not db.exists():
        return {}
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        rows = con.execute(f"SELECT seq, sha256 FROM {table} WHERE frame_set = ?", (frame_set,)).fetchall()
    except sqlite3.OperationalError:
        return {}
    finally:
        con.close()
    out: dict[int, str] = {}
    for seq, digest in rows:
        assert seq not in out, f"{table} sequence {seq} archived twice"
        out[int(seq)] = digest
    return out


def wait_for(predicate, timeout: float, what: str, *, on_timeout=None, pause: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        v = predicate()
        if v:
            return v
        if time.monotonic() > deadline:
            extra = on_timeout() if on_timeout else ""
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{extra}")
        time.sleep(pause)


def start_mosquitto(tmp: Path, **kw) -> MosquittoBroker:
    return MosquittoBroker(tmp / "broker", **kw).start()


def sha256(b: bytes) -> str:
    import hashlib

    return hashlib.sha256(b).hexdigest()


os.environ.setdefault("PYTHONUNBUFFERED", "1")
