"""``ims-station sim network``: a whole monitoring network on one machine, faster than real time,
through the production path from the stream assembler on into a real Mosquitto and a real relay
process, to measure the centre.

Per station (``edge/station.assemble``, the code ``edge run`` uses, from a station file written for
the run): stream assembler -> CD-1.1 framer (channel and frame signatures with keys generated for
the run) -> outbox (SQLite on disk) -> MQTT uplink -> Mosquitto -> ``ims-station relay run`` (a
child process) -> the relay's archive.  What stands in for the field:

* **waveform stations** (kinds with channels): a :class:`SyntheticBoard` per digitizer board hands
  the port's production event path (``PortPump.on_events``: stream codes, SOH, ``Gateway.on_events``)
  one :class:`~ims_station.edge.ingest.DataBlock` of noise per ``block_seconds`` and takes the
  gateway's acknowledgements, in place of the serial line and link decoder;
* **a few HIL stations** (``hil_stations``): the demo's station (``ims_station.demo._make_rig``) --
  the firmware on emulated peripherals, the ``sim://`` serial line and the link decoder -- so the
  serial/HIL stage is sampled, not skipped;
* **radionuclide stations** (kinds with ``messages``): IMS 2.0 SAMPLEPHD messages built by the
  noble-gas driver's builder (``edge/noblegas_messages.phd_message``) on a schedule, committed through
  the station's signed-envelope message path (``edge/station.message_emitter``, kind ``ims20``).

Time: the stations run on a simulated clock that starts at a frame boundary and is paced to run
``speed`` times faster than the wall clock; a worker that cannot keep that pace runs behind it
(reported as the achieved speed-up).  The relay is a separate process on the system clock: the
simulated time runs ahead of it (within the relay's ``max_future_s``, a day).  Latency is measured
in wall time, from the frame's commit at the station (``on_commit``) to the relay's ``received_at``
in its archive index (written in the archive commit's transaction), and reported also in simulated
seconds (times the speed).

Processes: the stations are shared round-robin among ``workers`` processes (each: one driver thread
for its synthetic stations, one thread per HIL station, one uplink thread per station).  CPU time of
the relay, of Mosquitto and of the workers is read from ``/proc/PID/stat``.

Owns the orchestration (files, keys, broker, relay process, workers, pacing) and the report; does
not own the network description (``simnet_network.py``), the station wiring (``edge/station.py``),
the demo's HIL station or the relay.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

log = logging.getLogger(__name__)

DRAIN_S = 45.0              # simulated seconds after the sampling span (a HIL board's last window waits 30 s)
DELIVERY_TIMEOUT_S = 120.0
MAX_STATIONS_PER_WORKER = 90    # file descriptors below 1024 (run_network)
WORKER_NICE = 3             # the station processes' niceness above ours  # wall seconds the outboxes get to empty after the stations stopped


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("sim", help="simulations of the whole network (sim network)",
                              description="Simulations that measure the centre (docs/sim-network.md).")
    sub = p.add_subparsers(dest="sim_command", required=True)
    n = sub.add_parser("network", help="run N stations of an IMS-like mix through Mosquitto and a relay process",
                       description="Runs the stations of a network description (default: the IMS-like mix of 321 "
                                   "stations) through the production path from the stream assembler on (framer, "
                                   "signatures, outbox, uplink) into Mosquitto and `relay run`, faster than real "
                                   "time; reports frames, loss, latency, relay and broker CPU (docs/sim-network.md).")
    n.add_argument("--network", metavar="FILE", help="network description (TOML); default: the IMS-like mix")
    n.add_argument("--print-network", action="store_true", help="print the default network description and exit")
    n.add_argument("--stations", type=int, help="scale the kinds' counts to this many stations")
    n.add_argument("--minutes", type=float, help="simulated minutes (default: the file's, 60)")
    n.add_argument("--speed", type=float, help="simulated seconds per wall second to aim for (default: the file's, 20)")
    n.add_argument("--workers", type=int, help="station processes (default: the file's, 2)")
    n.add_argument("--hil", type=int, help="stations run through the HIL firmware and serial link (default 2)")
    n.add_argument("--workdir", help="keep keys, outboxes, the archive and logs here (default: a temporary dir)")
    n.add_argument("--json", action="store_true", help="print only the JSON report")
    n.set_defaults(handler=_cmd)


@dataclass
class SimOptions:
    network: str | None = None
    stations: int | None = None
    minutes: float | None = None
    speed: float | None = None
    workers: int | None = None
    hil: int | None = None
    workdir: str | None = None
    block_seconds: float | None = None


# ------------------------------------------------------------------------------- the field stand-in


class SyntheticBoard:
    """Stands in for one digitizer board and its link decoder (the serial stage of a station that
    does not run HIL): hands out :class:`DataBlock` s of band-limited noise, GNSS-locked and
    contiguous, with link sequence numbers, and takes the gateway's acknowledgements (the ACK point
    a real board would free its ring up to).  ``counters`` has the link decoder's keys, all zero
    (there is no line), for the station's SOH document."""

    def __init__(self, board_id: int, channels: int, rate: float, seed: int, counters: dict) -> None:
        import numpy as np

        self.board_id, self.channels, self.rate = board_id, channels, float(rate)
        self.rate_mhz = int(round(self.rate * 1000))
        self.epoch, self.seq, self.acked = 1, 0, -1
        self.counters = dict.fromkeys(counters, 0)
        rng = np.random.default_rng(seed)
        # A minute of noise per channel, smoothed (a seismometer's output is not white), reused cyclically.
        n = int(self.rate * 60)
        white = rng.normal(0.0, 400.0, (channels, n + 4))
        self._noise = ((white[:, :-4] + white[:, 1:-3] + white[:, 2:-2] + white[:, 3:-1]) / 2).astype("int32")
        self._pos = 0

    def block(self, t_first_us: int, n: int) -> Any:
        import numpy as np

        from ims_station.edge.ingest import DataBlock
        from ims_station.firmware import link

        total = self._noise.shape[1]
        idx = (np.arange(self._pos, self._pos + n) % total)
        self._pos = (self._pos + n) % total
        b = DataBlock(board_id=self.board_id, epoch=self.epoch, seq=self.seq, t_first_us=t_first_us,
                      rate_mhz=self.rate_mhz, time_quality=link.TQ_LOCKED, status=0, clip_mask=0,
                      channel_ids=tuple(range(self.channels)), samples=np.ascontiguousarray(self._noise[:, idx]))
        self.seq += 1
        self.counters["packets_ok"] = self.counters.get("packets_ok", 0) + 1
        self.counters["samples_delivered"] = self.counters.get("samples_delivered", 0) + int(b.samples.size)
        return b

    # the link decoder's consumer hooks that the gateway calls
    def acknowledge(self, seq: int, board_id: int | None = None, epoch: int | None = None) -> None:
        if epoch is None or epoch == self.epoch:
            self.acked = max(self.acked, seq)

    def hold(self, *args: Any, **kw: Any) -> bool:
        return False            # one clock for board and gateway: never a clock hold

    def release(self, board_id: int | None = None) -> None:
        pass


class SimClock:
    """The simulated clock of a worker's synthetic stations: ``monotonic()`` is the simulated
    seconds since the start, set by the driver; ``time()`` adds the start (POSIX seconds)."""

    def __init__(self, start_utc: float) -> None:
        self.start_utc = float(start_utc)
        self.t = 0.0

    def monotonic(self) -> float:
        return self.t

    def time(self) -> float:
        return self.start_utc + self.t


# ------------------------------------------------------------------------------- IMS 2.0 messages


class MessageMaker:
    """SAMPLEPHD texts (``edge/noblegas_messages.phd_message``): beta-gamma (256 x 256 histogram,
    noble gas) or HPGe (8192-channel gamma spectrum, particulate); spectra drawn once per worker."""

    def __init__(self, seed: int) -> None:
        import numpy as np

        rng = np.random.default_rng(seed)
        self.hist = rng.poisson(0.3, (256, 256)).astype("int64")
        self.gamma_bg = self.hist.sum(axis=1)
        self.beta = self.hist.sum(axis=0)
        self.hpge = rng.poisson(np.linspace(40, 1, 8192)).astype("int64")
        self.n = 0

    def text(self, kind: str, station: str, t: float, interval_s: float) -> bytes:
        from datetime import datetime, timezone

        from ims_station.edge.noblegas_messages import Measurement, phd_message

        self.n += 1
        start = t - interval_s
        bg = kind == "noble_gas"
        meas = Measurement(kind="ACQUIRE", start=start, real_s=interval_s, live_s=interval_s * 0.98,
                           gamma=self.gamma_bg if bg else self.hpge, beta=self.beta if bg else None,
                           hist=self.hist if bg else None,
                           sample={"COLL_START": start - interval_s, "COLL_STOP": start, "AIR_VOLUME": 10.0,
                                   "XE_VOLUME": 1.2, "XE_VOLUME_ERR": 0.05, "XE_YIELD": 0.8, "XE_YIELD_ERR": 0.02})
        msg_id = datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y%m%d%H%M%S") + f"{self.n % 1000:03d}"
        _, text = phd_message(meas, qualifier="FULL", station=station, detector=f"{station}_001", beta_gamma=bg,
                              calibration=None, msg_id=msg_id, transmit=t)
        return text.encode("ascii")


def message_times(plan: Any, span_s: float) -> list[float]:
    """Simulated seconds at which a radionuclide station sends its messages within *span_s*."""
    if not plan.messages:
        return []
    out, t = [], plan.message_phase_s
    while t < span_s:
        out.append(t)
        t += plan.message_s
    return out


# ------------------------------------------------------------------------------- a worker process


@dataclass
class WorkerJob:
    root: str
    plans: list
    keys: dict
    broker: Any                  # BrokerConfig
    start_utc: int
    go_wall: float               # time.time() at simulated time 0
    speed: float
    span_s: float                # sampling span (simulated seconds)
    frame_seconds: int
    block_seconds: float
    worker: int


@dataclass
class _Synth:
    plan: Any
    edge: Any
    ports: list = field(default_factory=list)         # (StationPort, SyntheticBoard)
    built: dict = field(default_factory=dict)         # seq -> wall time of the commit
    emitted: dict = field(default_factory=dict)       # ims20 seq -> wall time
    emit: Any = None
    schedule: list = field(default_factory=list)
    error: str | None = None


def _station_file(job: WorkerJob, plan: Any) -> Path:
    from ims_station.demo import write_station_file

    root = Path(job.root)
    keys = job.keys[plan.code]
    ports = []
    for p in plan.ports:
        ports.append({"name": f"board{p.board_id}", "url": f"synthetic://{plan.code}/{p.board_id}",
                      "board": str(root / "boards" / f"{p.board_name}.toml"), "board_id": p.board_id,
                      "baudrate": 921600, "key_file": str(keys.board_key_file), "channels": dict(p.channels)})
    if not ports:       # a radionuclide station: the schema wants a port; it has no channels and is not fed
        ports = [{"name": "board1", "url": f"synthetic://{plan.code}/1", "board": "sim", "board_id": 1,
                  "baudrate": 115200, "key_file": str(keys.board_key_file), "channels": {}}]
    return write_station_file(root / plan.code / "station.toml", plan.code, keys, sim_name="", board_id=0, baud=0,
                              broker=job.broker, frame_seconds=job.frame_seconds, acknack_trust=root / "acknack-trust",
                              ports=ports, ack_timeout_s=300.0 * max(job.speed, 1.0))


def _make_synth(job: WorkerJob, plan: Any, clock: SimClock, maker: MessageMaker) -> _Synth:
    from ims_station.edge.config import load_station_config
    from ims_station.edge.station import assemble, message_emitter

    cfg = load_station_config(_station_file(job, plan))
    s = _Synth(plan, None)

    def on_commit(seq: int, raw: bytes) -> None:
        s.built[seq] = time.time()

    s.edge = assemble(cfg, clock=clock, on_commit=on_commit,
                      uplink_options={"backoff_base_s": 0.1, "backoff_max_s": 2.0})
    _scale_network_waits(s.edge, job.speed)
    if plan.messages:
        s.emit = message_emitter(plan.code, "ims20", s.edge.outbox, clock, s.edge.uplink.notify,
                                 signer=s.edge.framer.station_signer)
        s.schedule = message_times(plan, job.span_s)
    else:
        for sp, pp in zip(s.edge.ports, plan.ports):
            board = SyntheticBoard(pp.board_id, len(pp.channels), pp.rate, seed=plan.index * 100 + pp.board_id,
                                   counters=sp.decoder.counters)
            sp.decoder = board          # the port's event path acknowledges to it (Gateway._acknowledge)
            s.ports.append((sp, board))
    return s


def _scale_network_waits(edge: Any, speed: float) -> None:
    """The outbox's resend hold-off (a frame still on its way is not resent for 5 s of the
    station's clock) bounds a network delay, which is wall time: on the simulated clock it is
    multiplied by the speed, as the station file's ``ack_timeout_s`` is (:func:`_station_file`).
    Without it a frame in flight for more than 5/speed wall seconds would be sent twice."""
    edge.outbox.resend_holdoff_s *= max(speed, 1.0)


def _feed(s: _Synth, t0: float, t1: float, start_utc: float) -> None:
    """Samples of [t0, t1) simulated seconds for every board of *s*, through each port's event path."""
    for sp, board in s.ports:
        n = int(round((t1 - t0) * board.rate))
        blk = board.block(int(round((start_utc + t0) * 1e6)), n)
        sp.pump.on_events([blk])


def _pid_cpu(pid: int) -> float | None:
    """utime + stime of process *pid* in seconds (/proc/PID/stat), None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_worker(job: WorkerJob, conn: Any) -> None:
    """A worker process: builds its stations, waits for ``go_wall``, drives them through the
    sampling span and the drain, waits (bounded) for its outboxes to empty, reports back on *conn*."""
    import sys

    from ims_station.logutil import setup_logging

    setup_logging(0, default=logging.WARNING)
    # The stations are the load generator: on a shared machine the centre (relay, broker) gets
    # the CPU first, so that what is measured of it is not our own contention.
    os.nice(WORKER_NICE)
    # The worker's own log file (the report quotes its tail when something failed).
    fh = logging.FileHandler(Path(job.root) / f"worker-{job.worker}.log")
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    fh.setLevel(os.environ.get("IMS_SIMNET_LOG_LEVEL", "WARNING"))
    if os.environ.get("IMS_SIMNET_LOG_LEVEL"):
        logging.getLogger().setLevel(os.environ["IMS_SIMNET_LOG_LEVEL"])
    logging.getLogger().addHandler(fh)
    profile = None
    if os.environ.get("IMS_SIMNET_PROFILE"):          # docs/sim-network.md, "What bounds it"
        import cProfile

        profile = cProfile.Profile()
    # The GIL's switch interval bounds how long a ready uplink thread waits behind the driver.
    sys.setswitchinterval(0.001)
    result: dict[str, Any] = {"worker": job.worker, "stations": {}, "error": None}
    synth: list[_Synth] = []
    rigs: list = []
    threads: list[threading.Thread] = []
    stop = threading.Event()
    try:
        clock = SimClock(job.start_utc)
        maker = MessageMaker(job.worker + 1)
        for plan in job.plans:
            if plan.hil:
                rigs.append(_make_hil(job, plan))
            else:
                synth.append(_make_synth(job, plan, clock, maker))
        for s in synth:
            s.edge.uplink.start()
        for r, _ in rigs:
            r.uplink.start()
        fds = len(os.listdir("/proc/self/fd")) + 3 * len(job.plans)     # + each uplink's sockets
        if fds > 1000:
            raise RuntimeError(f"{len(job.plans)} stations need about {fds} file descriptors in one process: "
                               "paho's select() fails above 1023; use more workers")
        conn.send({"ready": job.worker})
        job.go_wall = float(conn.recv())        # sent once every worker is ready: simulated time 0
        from ims_station.demo import PacedClock, _drive

        paced = PacedClock(job.start_utc, job.speed)
        delay = job.go_wall - time.time()
        if delay > 0:
            time.sleep(delay)
        paced.restart()
        t_end = job.span_s + DRAIN_S
        for r, _ in rigs:
            r.sim.stop_sampling(at_s=job.span_s)
            th = threading.Thread(target=_drive, args=(r, paced, t_end, stop), name=f"hil-{r.station}", daemon=True)
            th.start()
            threads.append(th)
        wall0 = time.monotonic()
        behind, steps = 0.0, 0
        if profile is not None:
            profile.enable()
        step = job.block_seconds
        t = 0.0
        while t < t_end - 1e-9:
            target = paced.monotonic()
            nxt = min(t + step, t_end)
            if target < nxt:
                time.sleep(min(0.05, (nxt - target) / job.speed))
                continue
            behind = max(behind, target - nxt)
            clock.t = nxt
            for s in synth:
                try:
                    if s.ports and nxt <= job.span_s + 1e-9:
                        _feed(s, t, nxt, job.start_utc)
                    while s.schedule and s.schedule[0] <= nxt:
                        s.schedule.pop(0)
                        text = maker.text(s.plan.messages, s.plan.code, clock.time(), s.plan.message_s)
                        seq = s.emit(text)
                        s.emitted[seq] = time.time()
                    s.edge.gateway.poll()
                    if s.edge.soh is not None:
                        s.edge.soh.poll()
                except Exception as err:     # reported per station; the others go on
                    if s.error is None:
                        log.exception("sim network: station %s stopped", s.plan.code)
                        s.error = f"{type(err).__name__}: {err}"
                        s.ports = []
                        s.schedule = []
            t = nxt
            steps += 1
        run_wall = time.monotonic() - wall0
        if profile is not None:
            profile.disable()
            profile.dump_stats(f"{os.environ['IMS_SIMNET_PROFILE']}.{job.worker}")
        for th in threads:
            th.join()
        # Delivery: every outbox empty (each frame and message acknacked by the relay: archived).
        boxes = [s.edge.outbox for s in synth] + [r.outbox for r, _ in rigs]
        deadline = time.monotonic() + DELIVERY_TIMEOUT_S
        while time.monotonic() < deadline and any(b.stats()["frames"] for b in boxes):
            time.sleep(0.1)
        result.update(run_wall_s=run_wall, delivered_wall_s=time.monotonic() - wall0, simulated_s=t,
                      max_behind_s=round(behind, 3), steps=steps, cpu_s=_pid_cpu(os.getpid()))
        for s in synth:
            result["stations"][s.plan.code] = _station_result(s.plan, s.edge, s.built, s.emitted, s.error)
        for r, built in rigs:
            result["stations"][r.station] = _station_result(_plan_of(job, r.station), r.edge, built, {}, r.error,
                                                            hil=r)
    except Exception as err:
        log.exception("sim network: worker %d failed", job.worker)
        result["error"] = f"{type(err).__name__}: {err}"
    finally:
        stop.set()
        for s in synth:
            try:
                s.edge.close()
            except Exception:
                log.exception("sim network: closing %s", s.plan.code)
        for r, _ in rigs:
            try:
                r.close()
            except Exception:
                log.exception("sim network: closing %s", r.station)
        conn.send(result)
        conn.close()


def _plan_of(job: WorkerJob, code: str) -> Any:
    return next(p for p in job.plans if p.code == code)


def _make_hil(job: WorkerJob, plan: Any) -> tuple[Any, dict]:
    """A HIL station: the demo's (board firmware, ``sim://`` line, link decoder, the same assembly)."""
    from ims_station.demo import DemoOptions, _make_rig, stages_available

    built: dict[int, float] = {}
    opts = DemoOptions(minutes=job.span_s / 60, speed=job.speed, frame_seconds=job.frame_seconds, trigger=False)
    broker = SimpleNamespace(config=job.broker, caps=SimpleNamespace(mqtt5=True))
    rig = _make_rig(plan.index, plan.code, job.keys[plan.code], opts, job.start_utc, Path(job.root), broker,
                    stages_available(), on_built=lambda seq, raw: built.__setitem__(seq, time.time()))
    _scale_network_waits(rig.edge, job.speed)
    return rig, built


def _station_result(plan: Any, edge: Any, built: dict, emitted: dict, error: str | None, hil: Any = None) -> dict:
    up = edge.uplink.stats() if edge.uplink is not None else {}
    out = {"kind": plan.kind, "hil": plan.hil, "channels": 4 if plan.hil else plan.n_channels,
           "uplink_connected": bool(up.get("connected")),
           "built": {str(k): v for k, v in built.items()}, "emitted": {str(k): v for k, v in emitted.items()},
           "outbox_left": edge.outbox.stats()["frames"], "evicted": edge.outbox.stats()["evicted"],
           "uplink": {k: up.get(k) for k in ("published", "resent", "requeued_ack_timeout", "acknacks",
                                             "acknacks_bad_signature") if k in up},
           "error": error}
    if hil is not None:
        out["link"] = {k: hil.decoder.counters.get(k, 0) for k in ("packets_ok", "crc_errors", "packets_recovered",
                                                                   "packets_unrecoverable")}
    return out


# ------------------------------------------------------------------------------- orchestration


def _write_toml_tables(d: dict) -> str:
    """A board definition (tables and arrays of tables of scalars) as TOML."""
    from ims_station.demo import _toml_value

    lines = []
    for name, v in d.items():
        if isinstance(v, dict):
            lines += [f"[{name}]", *(f"{k} = {_toml_value(x)}" for k, x in v.items()), ""]
    for name, v in d.items():
        if isinstance(v, list):
            for item in v:
                lines += [f"[[{name}]]", *(f"{k} = {_toml_value(x)}" for k, x in item.items()), ""]
    return "\n".join(lines)


def _relay_config(root: Path, broker: Any, speed: float) -> Path:
    """The relay's config: production defaults, except that its acknack timings (wall clock) are
    divided by the speed, so that they stay what they are in the stations' simulated time (the
    demo scales its waits the same way)."""
    q = json.dumps
    cfg = root / "relay" / "relay.toml"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    from ims_station.demo import RELAY_ACKNACK_KEY, RELAY_NAME

    cfg.write_text("\n".join([
        "[relay]", f"data_dir = {q(str(root / 'relay' / 'data'))}", f"trust_dir = {q(str(root / 'relay' / 'trust'))}",
        'instance = "simnet"', 'group = "relay"', f"name = {q(RELAY_NAME)}",
        f"acknack_interval_s = {max(50.0 / speed, 0.5):g}", f"acknack_min_spacing_s = {2.0 / speed:g}",
        "[relay.acknack_key]", f"keystore = {q(str(root / 'relay' / 'keys'))}", f"key_id = {RELAY_ACKNACK_KEY}",
        "", "[[broker]]", f"host = {q(broker.host)}", f"port = {int(broker.port)}", ""]))
    return cfg


class RelayChild:
    """``ims-station relay run`` as a child process; its stats lines (``--json``) say when it is
    connected."""

    def __init__(self, config: Path, log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "ims_station", "relay", "run", "--config", str(config),
                                      "--json", "--stats-every", "0.5"], stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait_connected(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            for line in self.log_path.read_text(errors="replace").splitlines()[::-1]:
                if line.startswith("{") and '"transport"' in line:
                    try:
                        doc = json.loads(line)
                    except ValueError:
                        continue
                    if doc.get("transport", {}).get("connected") and doc["transport"].get("subscriptions"):
                        return True
                    break
            time.sleep(0.1)
        return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def tail(self, n: int = 2000) -> str:
        return self.log_path.read_text(errors="replace")[-n:]


def run_network(opts: SimOptions) -> dict:
    """Run the simulation; returns the JSON-ready report (docs/sim-network.md, "The report")."""
    import multiprocessing as mp

    from ims_station.broker import MosquittoBroker, find_mosquitto
    from ims_station.demo import SIM_CHANNELS, make_keys
    from ims_station.errors import ImsStationError
    from ims_station.simnet_network import load_network

    if find_mosquitto() is None:
        raise ImsStationError("sim network: needs Mosquitto (apt-get install mosquitto); the run measures it")
    net = _load(opts, load_network)
    sim = net.simulation
    speed, span_s = float(sim["speed"]), float(sim["minutes"]) * 60.0
    # paho's network loop uses select(), which fails on a file descriptor above 1023 (it reports a
    # lost connection, for ever); a station takes about 10 (outbox database, WAL, shared memory,
    # lock, socket, the client's socket pair, ...): at most MAX_STATIONS_PER_WORKER share a process.
    workers = max(int(sim["workers"]), -(-len(net.stations) // MAX_STATIONS_PER_WORKER))
    sim["workers"] = workers
    fs = net.frame_seconds
    own = opts.workdir is None
    root = Path(tempfile.mkdtemp(prefix="ims-simnet-") if own else opts.workdir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    t_setup = time.monotonic()
    broker = relay = None
    procs: list = []
    try:
        (root / "boards").mkdir(exist_ok=True)
        for name, b in net.boards.items():
            (root / "boards" / f"{name}.toml").write_text(_write_toml_tables(b))
        start_utc = (int(time.time()) // fs + 2) * fs
        keys: dict = {}
        for st in net.stations:
            chans = [c for _, c in SIM_CHANNELS] if st.hil else st.channel_codes
            keys.update(make_keys(root, [st.code], chans, valid_from=start_utc, index_base=st.index,
                                  relay_key=False)[0])
        make_keys(root, [], [], valid_from=start_utc)           # the relay's acknack key
        broker = MosquittoBroker(root / "broker").start()
        relay = RelayChild(_relay_config(root, broker.config, speed), root / "relay" / "relay.log")
        if not relay.wait_connected(30):
            raise ImsStationError(f"sim network: the relay did not connect to Mosquitto: {relay.tail()}")
        ctx = mp.get_context("spawn")
        shares = [net.stations[i::workers] for i in range(workers)]
        for w, plans in enumerate(shares):
            if not plans:
                continue
            parent, child = ctx.Pipe()
            job = WorkerJob(str(root), plans, {p.code: keys[p.code] for p in plans}, broker.config, start_utc,
                            0.0, speed, span_s, fs, float(sim["block_seconds"]), w)
            procs.append((ctx.Process(target=run_worker, args=(job, child), name=f"simnet-{w}"), parent, job))
        # The start: every worker built its stations, then one wall moment is simulated time 0.
        for p, parent, job in procs:
            p.start()
        for p, parent, job in procs:
            msg = parent.recv() if parent.poll(600) else None
            if not msg or "ready" not in msg:
                raise ImsStationError(f"sim network: worker {job.worker} did not get ready: {msg}")
        setup_wall = time.monotonic() - t_setup     # keys, files, broker, relay, workers' assembly
        go = time.time() + 0.5
        for p, parent, job in procs:
            parent.send(go)
        cpu0 = {"relay": _pid_cpu(relay.proc.pid), "broker": _pid_cpu(broker.proc.pid)}
        wall0 = time.monotonic()
        results = []
        for p, parent, job in procs:
            results.append(parent.recv())
            p.join(60)
        wall = time.monotonic() - wall0
        cpu1 = {"relay": _pid_cpu(relay.proc.pid), "broker": _pid_cpu(broker.proc.pid)}
        relay.stop()
        relay_stats = _last_stats(relay)        # its "stopped" line: the final counters
        relay_log = relay.tail(4000)
        relay = None
        archived = _read_archive(root / "relay" / "data" / "archive" / "index.sqlite")
        return _report(net, speed, span_s, start_utc, go, results, archived, cpu0, cpu1, wall, setup_wall,
                       relay_stats, relay_log, root, own)
    finally:
        for p, _, _ in procs:
            if p.is_alive():
                p.terminate()
                p.join(5)
        if relay is not None:
            relay.stop()
        if broker is not None:
            broker.close()
        if own:
            shutil.rmtree(root, ignore_errors=True)


def _load(opts: SimOptions, load_network: Any) -> Any:
    """The network of *opts* with the command line's overrides of its ``[simulation]`` table."""
    from ims_station.errors import ConfigError

    overrides = {}
    for key, v, lo, hi in (("minutes", opts.minutes, 0.1, 7 * 24 * 60), ("speed", opts.speed, 0.1, 10000),
                           ("workers", opts.workers, 1, 64), ("block_seconds", opts.block_seconds, 0.1, 10),
                           ("hil_stations", opts.hil, 0, 20)):
        if v is not None:
            if not lo <= v <= hi:
                flag = "--hil" if key == "hil_stations" else f"--{key.replace('_', '-')}"
                raise ConfigError("sim network", flag, f"must be {lo:g}..{hi:g}")
            overrides[key] = v
    net = load_network(opts.network, stations=opts.stations, simulation=overrides)
    rate = net.simulation["block_seconds"]
    if abs(net.frame_seconds / rate - round(net.frame_seconds / rate)) > 1e-9:
        raise ConfigError(net.file, "simulation.block_seconds", "must divide network.frame_seconds")
    return net


def _last_stats(relay: RelayChild) -> dict:
    for line in relay.log_path.read_text(errors="replace").splitlines()[::-1]:
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return {}


def _read_archive(index: Path) -> dict:
    """(frame_set, seq) -> received_at of every archived frame and IMS 2.0 message, and the count
    of quarantined messages."""
    out: dict[str, Any] = {"frames": {}, "ims20": {}, "quarantined": 0}
    if not index.exists():
        return out
    db = sqlite3.connect(f"file:{index}?mode=ro", uri=True)
    try:
        for table in ("frames", "ims20"):
            for fs, seq, t in db.execute(f"SELECT frame_set, seq, received_at FROM {table}"):  # noqa: S608
                out[table][(fs, int(seq))] = float(t)
        out["quarantined"] = db.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0]
    finally:
        db.close()
    return out


def _pct(values: list[float], scale: float = 1.0) -> dict:
    from ims_station.demo import _percentiles

    return _percentiles([v * scale for v in values])


def _report(net: Any, speed: float, span_s: float, start_utc: int, go: float, results: list, archived: dict,
            cpu0: dict, cpu1: dict, wall: float, setup_wall: float, relay_stats: dict, relay_log: str,
            root: Path, own: bool) -> dict:
    from ims_station.demo import expected_frame_seqs, frame_accounting, loss_failures

    fs = net.frame_seconds
    plans = {p.code: p for p in net.stations}
    per: dict[str, dict] = {}
    failures: list[str] = []
    lat_all: list[float] = []
    kinds: dict[str, dict] = {}
    sim_s = min((r.get("simulated_s", 0.0) for r in results), default=0.0)
    run_wall = max((r.get("run_wall_s", 0.0) for r in results), default=0.0)
    for r in results:
        if r.get("error"):
            failures.append(f"worker {r['worker']}: {r['error']}")
    accounts = {}
    evicted = {}
    for r in results:
        for code, s in r["stations"].items():
            plan = plans[code]
            fset = f"{code}:0"
            built = {int(k): v for k, v in s["built"].items()}
            got = {seq: t for (f, seq), t in archived["frames"].items() if f == fset}
            waveform = bool(plan.ports) or plan.hil
            expected = expected_frame_seqs(start_utc, span_s, fs) if waveform else set()
            a = frame_accounting(expected, set(built), set(got))
            emitted = {int(k): v for k, v in s["emitted"].items()}
            mset = f"{code}:ims20"
            mgot = {seq: t for (f, seq), t in archived["ims20"].items() if f == mset}
            m_expected = set(range(len(message_times(plan, span_s))))
            m = frame_accounting(m_expected, set(emitted), set(mgot))
            lat = [got[q] - built[q] for q in built if q in got]
            mlat = [mgot[q] - emitted[q] for q in emitted if q in mgot]
            lat_all += lat
            accounts[code] = {**a, "error": s["error"]}
            accounts[f"{code} (IMS 2.0)"] = {**m, "error": None}
            evicted[code] = s["evicted"]
            per[code] = {"kind": s["kind"], "hil": s["hil"], "channels": s["channels"],
                         "frames": a, "messages": m,
                         "latency_wall_s": _pct(lat + mlat), "latency_sim_s": _pct(lat + mlat, speed),
                         "outbox_left": s["outbox_left"], "uplink": s["uplink"], "error": s["error"],
                         **({"link": s["link"]} if "link" in s else {})}
            k = kinds.setdefault(s["kind"], {"stations": 0, "channels": 0, "frames_expected": 0, "frames_built": 0,
                                             "frames_archived": 0, "frames_lost": 0, "messages_expected": 0,
                                             "messages_archived": 0, "messages_lost": 0})
            k["stations"] += 1
            k["channels"] += per[code]["channels"] if waveform else 0
            k["frames_expected"] += a["expected"]
            k["frames_built"] += a["built"]
            k["frames_archived"] += a["archived"]
            k["frames_lost"] += a["lost"]
            k["messages_expected"] += m["expected"]
            k["messages_archived"] += m["archived"]
            k["messages_lost"] += m["lost"]
    missing = sorted(set(plans) - set(per))
    failures += [f"{c}: no result (its worker failed)" for c in missing]
    failures += loss_failures(accounts, evicted=evicted)
    if archived["quarantined"]:
        failures.append(f"the relay quarantined {archived['quarantined']} message(s)")
    tot = lambda key: sum(a[key] for c, a in accounts.items() if not c.endswith(")"))  # noqa: E731
    mtot = lambda key: sum(a[key] for c, a in accounts.items() if c.endswith(")"))  # noqa: E731
    d_cpu = {k: (None if cpu0[k] is None or cpu1[k] is None else round(cpu1[k] - cpu0[k], 3)) for k in cpu0}
    n = len(net.stations)
    waveform_channels = sum(p["channels"] for p in per.values() if p["frames"]["expected"])
    # The speed-up: simulated time over the wall time the stations took for it (all frames built);
    # the last archive time says how far the centre was behind them at the end.
    speedup = round(sim_s / run_wall, 2) if run_wall > 0 else None
    last = max([*archived["frames"].values(), *archived["ims20"].values()], default=None)
    report = {
        "network": {"file": net.file, "stations": n, "kinds": net.counts(), "waveform_channels": waveform_channels,
                    "frame_seconds": fs, "hil_stations": sum(1 for p in net.stations if p.hil)},
        "options": {**{k: net.simulation[k] for k in ("minutes", "speed", "block_seconds", "workers")}},
        "frames": {"expected": tot("expected"), "built": tot("built"), "archived": tot("archived"),
                   "lost": tot("lost"), "never_built": tot("never_built"),
                   "built_not_archived": tot("built_not_archived"), "evicted_at_station": sum(evicted.values())},
        "messages": {"expected": mtot("expected"), "emitted": mtot("built"), "archived": mtot("archived"),
                     "lost": mtot("lost")},
        # Wall seconds from the commit at the station to the relay's received_at in its archive
        # index; simulated = wall x the speed aimed at.
        "latency_wall_s": _pct(lat_all), "latency_sim_s": _pct(lat_all, speed),
        "time": {"simulated_s": round(sim_s, 1), "wall_s": round(wall, 2), "stations_wall_s": round(run_wall, 2),
                 "setup_wall_s": round(setup_wall, 2), "speed_aimed": speed, "speedup": speedup,
                 "last_archived_after_s": None if last is None else round(last - go, 2),
                 "max_behind_s": max((r.get("max_behind_s", 0.0) for r in results), default=0.0)},
        "cpu": {"relay_s": d_cpu["relay"], "broker_s": d_cpu["broker"],
                "workers_s": round(sum(r.get("cpu_s") or 0.0 for r in results), 2),
                "relay_core_share": _share(d_cpu["relay"], wall), "broker_core_share": _share(d_cpu["broker"], wall),
                # The speed-up the relay alone would sustain on one core of its own: simulated
                # seconds per CPU second it spent.
                "relay_bound_speedup": (None if not d_cpu["relay"] else round(sim_s / d_cpu["relay"], 1)),
                "relay_ms_per_station_per_sim_hour": (None if d_cpu["relay"] is None or not sim_s else
                                                      round(1000 * d_cpu["relay"] / n / (sim_s / 3600), 1)),
                "cores": os.cpu_count(), "loadavg": [round(x, 2) for x in os.getloadavg()]},
        "relay": {k: relay_stats.get(k) for k in ("received", "verified", "archived", "duplicates", "quarantined",
                                                  "rejected", "security_events", "acknacks_sent")},
        "kinds": kinds,
        "stations": per,
        "failures": failures,
        "ok": not failures,
    }
    if not own:
        report["workdir"] = str(root)
    if failures:
        report["relay_log_tail"] = relay_log[-1500:]
        report["worker_log_tails"] = {p.name: p.read_text(errors="replace")[-1500:]
                                      for p in sorted(Path(root).glob("worker-*.log"))}
    return report


def _share(cpu: float | None, wall: float) -> float | None:
    return None if cpu is None or wall <= 0 else round(cpu / wall, 3)


def table_lines(report: dict) -> list[str]:
    """The human summary: one row per kind, then the totals and the centre's CPU."""
    t, c, f, m = report["time"], report["cpu"], report["frames"], report["messages"]
    out = [f"{'kind':<18}{'stations':>9}{'channels':>9}{'frames exp':>11}{'archived':>10}{'lost':>6}"
           f"{'msgs exp':>9}{'archived':>10}{'lost':>6}"]
    for k, v in report["kinds"].items():
        out.append(f"{k:<18}{v['stations']:>9}{v['channels']:>9}{v['frames_expected']:>11}{v['frames_archived']:>10}"
                   f"{v['frames_lost']:>6}{v['messages_expected']:>9}{v['messages_archived']:>10}{v['messages_lost']:>6}")
    lw, ls = report["latency_wall_s"], report["latency_sim_s"]
    out += [f"total: {report['network']['stations']} stations, {f['archived']}/{f['expected']} frames and "
            f"{m['archived']}/{m['expected']} IMS 2.0 messages archived, {f['lost'] + m['lost']} lost",
            f"build -> relay archive: p50 {lw['p50']} s, p99 {lw['p99']} s wall "
            f"(p50 {ls['p50']} s, p99 {ls['p99']} s simulated)",
            f"time: {t['simulated_s']} s simulated in {t['stations_wall_s']} s wall: {t['speedup']}x real time "
            f"(aimed at {t['speed_aimed']:g}x; the stations ran up to {t['max_behind_s']} s behind the pace; "
            f"the last frame archived {t['last_archived_after_s']} s after the start)",
            f"cpu: relay {c['relay_s']} s ({c['relay_core_share']} of a core, {c['relay_ms_per_station_per_sim_hour']}"
            f" ms per station per simulated hour), broker {c['broker_s']} s ({c['broker_core_share']}), "
            f"stations {c['workers_s']} s; {c['cores']} cores, load {c['loadavg']}"]
    out += [f"failure: {x}" for x in report["failures"][:20]]
    out.append("OK" if report["ok"] else "FAILED")
    return out


def _cmd(args: argparse.Namespace) -> int:
    from ims_station.output import print_json
    from ims_station.simnet_network import DEFAULT_NETWORK

    if args.print_network:
        sys.stdout.write(DEFAULT_NETWORK)
        return 0
    import signal

    # SIGTERM ends the run like Ctrl-C: the relay, Mosquitto and the workers are stopped (finally).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    report = run_network(SimOptions(network=args.network, stations=args.stations, minutes=args.minutes,
                                    speed=args.speed, workers=args.workers, hil=args.hil, workdir=args.workdir))
    print_json(report)
    if not args.json:
        for line in table_lines(report):
            print(line, file=sys.stderr)
    return 0 if report["ok"] else 1
