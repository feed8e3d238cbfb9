"""``ims-station demo``: a whole simulated network segment, end to end, in one process.

HIL digitizer(s) (the firmware itself on emulated peripherals, ``hil/sim.py``) -> serial line
(``sim://`` port, the gateway's production code path) -> edge gateway (link decoder, stream
assembly, CD-1.1 framer, durable outbox, MQTT uplink) -> broker (Mosquitto when installed, the
embedded amqtt broker otherwise; ``ims_station.broker``) -> relay (verification, dedupe, archive,
acknack) -> final JSON report: frames built, delivered, verified, quarantined, lost, and end-to-end
latency p50/p99 (sample time -> archived at the relay).

Owns: the orchestration of a demo run (keys in a temporary directory, broker, relay, gateways, the
pacing of simulated time against the wall clock, the live summary and the report) and the ``demo``
command.  Owns no protocol logic and does not wire the station: each station is written as a
station file (:func:`write_station_file`) and assembled by ``edge/station.assemble``, the code
``ims-station edge run`` uses, on the simulation's clock with a ``sim://`` port; the demo adds only
observing hooks (frames built, samples ingested).  The relay is built as ``relay/cli.py`` builds it.

Time: each station's simulation has its own clock (``SimClock``); the demo paces every simulation
so that simulated time runs ``--speed`` times faster than the wall clock, and gives the relay a
:class:`PacedClock` with the same mapping, so "sample time -> archived" is measured on one time
axis.  Latency figures are reported in simulated seconds and, divided by the speed, as the wall
time they took.

Keys: generated per run with :func:`ims_station.auth.generate_key` (station and channel signing
keys) and ``os.urandom`` (the board's link HMAC key), written mode 0600 into the run's directory.
There is no default key.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)

_names = itertools.count()


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo", help="run a simulated station end to end (HIL -> edge -> broker -> relay) and report",
        description="Runs HIL digitizer(s) through the edge gateway, an MQTT broker (Mosquitto when "
                    "installed, embedded otherwise) and the relay; prints a live summary and a final "
                    "JSON report (frames built, delivered, verified, quarantined, lost; end-to-end "
                    "latency p50/p99).")
    p.add_argument("--minutes", type=float, default=10.0, help="simulated minutes of data (default 10)")
    p.add_argument("--stations", type=int, default=1, help="number of simulated stations (default 1)")
    p.add_argument("--speed", type=float, default=10.0,
                   help="simulated seconds per wall second (default 10: 10 minutes take about a minute)")
    p.add_argument("--seed", type=int, default=1, help="simulation seed (default 1)")
    p.add_argument("--frame-seconds", type=float, default=10.0, help="CD-1.1 frame length (default 10 s)")
    p.add_argument("--broker", choices=("auto", "mosquitto", "embedded"), default="auto",
                   help="which broker to start (default: Mosquitto if installed)")
    p.add_argument("--ber", type=float, default=0.0, help="bit error rate on the serial line")
    p.add_argument("--drop", type=float, default=0.0, help="byte drop probability on the serial line")
    p.add_argument("--workdir", help="keep keys, outboxes and the archive here (default: a temporary dir, removed)")
    p.add_argument("--auxiliary", action="store_true",
                   help="auxiliary stations: data stays in the station's buffer; only the windows of its events "
                        "and one window the relay requests at the end reach the archive (docs/uplink.md)")
    p.add_argument("--json", action="store_true", help="print only the JSON report")
    p.set_defaults(handler=_cmd)


@dataclass
class DemoOptions:
    minutes: float = 10.0
    stations: int = 1
    speed: float = 10.0
    seed: int = 1
    frame_seconds: float = 10.0
    broker: str = "auto"
    ber: float = 0.0
    drop: float = 0.0
    workdir: str | None = None
    drain_s: float = 45.0            # simulated seconds after sampling ends: the last window waits max_wait_s (30 s)
    auxiliary: bool = False          # [station] mode = "auxiliary"; the relay requests one window at the end

    def check(self) -> None:
        from ims_station.errors import ConfigError

        if not 0 < self.minutes <= 24 * 60:
            raise ConfigError("demo", "--minutes", "must be > 0 and at most one day")
        if not 1 <= self.stations <= 20:
            raise ConfigError("demo", "--stations", "must be 1..20")
        if not 0.1 <= self.speed <= 1000:
            raise ConfigError("demo", "--speed", "must be 0.1..1000")
        if not 1 <= self.frame_seconds <= 60:
            raise ConfigError("demo", "--frame-seconds", "must be 1..60")


class PacedClock:
    """Simulated time that runs *speed* times faster than the wall clock, from *start_utc*.
    ``monotonic()`` / ``time()`` surface, so it can be given to any component of the project.
    Implements :class:`ims_station.clock.Clock` (structurally)."""

    def __init__(self, start_utc: float, speed: float) -> None:
        self.start_utc = float(start_utc)
        self.speed = float(speed)
        self._w0 = time.monotonic()

    def monotonic(self) -> float:
        return (time.monotonic() - self._w0) * self.speed

    def time(self) -> float:
        return self.start_utc + self.monotonic()

    def restart(self) -> None:
        """Simulated time 0 is now (called when the simulations start, after the set-up)."""
        self._w0 = time.monotonic()

    def wall_until(self, sim_monotonic: float) -> float:
        """Wall seconds until this clock reads *sim_monotonic* (<= 0 if already past)."""
        return (sim_monotonic - self.monotonic()) / self.speed


def _available(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name == module:
            return False
        raise
    return True


def stages_available() -> dict[str, bool]:
    """Which production stages exist in this tree (the demo runs as far as they go)."""
    return {
        "hil": _available("ims_station.hil.sim"),
        "ingest": _available("ims_station.edge.ingest") and _available("ims_station.edge.streams"),
        "framer": _available("ims_station.edge.framer"),
        "outbox": _available("ims_station.edge.outbox"),
        "uplink": _available("ims_station.edge.uplink"),
        "station": _available("ims_station.edge.station"),
        "relay": _available("ims_station.relay.relay"),
    }


# -------------------------------------------------------------------------------------- keys


@dataclass
class StationKeys:
    station: str
    board_key: bytes
    board_key_file: Path
    keystore: Path                    # private keys of this station (frame + channel keys)
    frame_key_id: int
    channel_key_ids: dict[str, int]   # channel code -> key id


RELAY_NAME = "RELAY"            # creator of the relay's acknacks
RELAY_ACKNACK_KEY = 900


def make_keys(root: Path, stations: list[str], channels: list[str], *, algorithm: str = "ed25519",
              valid_from: float) -> tuple[dict[str, StationKeys], Path]:
    """Per station: a link HMAC key for its board, a frame key and one key per channel (keystore),
    and the public halves in one relay trust store.  Key ids: station i uses 1000*(i+1) + n."""
    import datetime as dt

    from ims_station.auth import export_public, generate_key
    from ims_station.config import write_secret_file

    trust = root / "relay" / "trust"
    start = dt.datetime.fromtimestamp(valid_from - 86400, tz=dt.timezone.utc).replace(microsecond=0)
    out: dict[str, StationKeys] = {}
    for i, sta in enumerate(stations):
        ks = root / sta / "keys"
        base = 1000 * (i + 1)
        generate_key(algorithm, base, ks, station=sta, valid_from=start)
        export_public(ks, base, trust)
        ch_ids = {}
        for n, ch in enumerate(channels, start=1):
            generate_key(algorithm, base + n, ks, station=sta, valid_from=start)
            export_public(ks, base + n, trust)
            ch_ids[ch] = base + n
        board_key = os.urandom(32)
        bk = write_secret_file(root / sta / "board.key", board_key)
        out[sta] = StationKeys(sta, board_key, bk, ks, base, ch_ids)
    # The relay signs its acknacks; the stations trust only that key for them (docs/uplink.md,
    # "Acknack authentication").
    generate_key(algorithm, RELAY_ACKNACK_KEY, root / "relay" / "keys", station=RELAY_NAME, valid_from=start)
    export_public(root / "relay" / "keys", RELAY_ACKNACK_KEY, root / "acknack-trust")
    return out, trust


# -------------------------------------------------------------------------------------- stations


# The HIL "sim" board's channels (boards/sim.toml), by link channel id: (location, channel).
SIM_CHANNELS = [("00", "BHZ"), ("00", "BHN"), ("00", "BHE"), ("10", "BDF")]
NETWORK = "XX"


def write_station_file(path: Path, station: str, keys: StationKeys, *, sim_name: str, board_id: int, baud: int,
                       broker: Any, protocol: str = "auto", frame_seconds: int = 10, pin_keys: bool = True,
                       keystore: Path | None = None, acknack_trust: Path | None = None,
                       ack_timeout_s: float | None = None, auxiliary: bool = False) -> Path:
    """The station file (docs/configuration.md) of a simulated station: one ``sim://`` port to the
    HIL board *sim_name* (``sim`` board, channels :data:`SIM_CHANNELS`), the outbox in the file's
    folder, the keys of *keys* (pinned, or chosen by time from *keystore* with ``pin_keys=False``),
    the broker *broker* (a :class:`ims_station.broker.BrokerConfig`) and, with *acknack_trust*, the
    relay's acknack key.  The demo and the fault tests load it and call
    :func:`ims_station.edge.station.assemble`, as ``edge run`` does with an operator's file (its
    ``sim://NAME`` port exists only in the process that registered the simulation)."""
    import json

    q = json.dumps          # a TOML basic string is a JSON string for these values
    chans = ", ".join(f'"{i}" = {q(f"{loc}.{cha}")}' for i, (loc, cha) in enumerate(SIM_CHANNELS))
    lines = ["[station]", f"code = {q(station)}", f"network = {q(NETWORK)}", f"data_dir = {q(str(path.parent))}",
             *(['mode = "auxiliary"'] if auxiliary else []),
             "", "[[ports]]", 'name = "board"', f"url = {q('sim://' + sim_name)}", 'board = "sim"',
             f"board_id = {int(board_id)}", f"baudrate = {int(baud)}", f"key_file = {q(str(keys.board_key_file))}",
             f"channels = {{ {chans} }}",
             "", "[framer]", f"frame_seconds = {int(frame_seconds)}",
             # A fixed bound, not the default derived from the free disk space of a shared machine.
             "", "[outbox]", f"max_bytes = {1 << 30}",
             "", "[keys]", f"keystore = {q(str(keystore or keys.keystore))}"]
    if pin_keys:
        ids = ", ".join(f"{q(cha)} = {kid}" for cha, kid in keys.channel_key_ids.items())
        lines += [f"station_key_id = {keys.frame_key_id}", f"channel_key_ids = {{ {ids} }}"]
    lines += ["", "[uplink]", f"protocol = {q(protocol)}"]
    if ack_timeout_s is not None:
        lines.append(f"ack_timeout_s = {float(ack_timeout_s)}")
    if acknack_trust is not None:
        lines += [f"acknack_trust = {q(str(acknack_trust))}", f"acknack_key_ids = [{RELAY_ACKNACK_KEY}]",
                  f"relay_name = {q(RELAY_NAME)}"]
    lines += ["[[uplink.brokers]]", f"host = {q(broker.host)}", f"port = {int(broker.port)}"]
    for k in ("tls_ca", "tls_cert", "tls_key", "username", "password_file"):
        if getattr(broker, k) is not None:
            lines.append(f"{k} = {q(str(getattr(broker, k)))}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class StationRig:
    """One simulated station: its simulation (board + line) and the gateway reading it, assembled by
    :func:`ims_station.edge.station.assemble` from the station's file (``<root>/<station>/station.toml``)."""

    station: str
    sim: Any
    sim_name: str
    edge: Any                        # the assembled station (edge/station.py's Station)
    chunks: int = 0
    samples: int = 0
    frames_built: int = 0
    build_times: dict[int, float] = field(default_factory=dict)   # seq -> sim time frame committed
    error: str | None = None

    @property
    def gateway(self) -> Any:
        return self.edge.gateway

    @property
    def outbox(self) -> Any:
        return self.edge.outbox

    @property
    def uplink(self) -> Any:
        return self.edge.uplink

    @property
    def decoder(self) -> Any:
        return self.edge.ports[0].decoder

    @property
    def assembler(self) -> Any:
        return self.edge.ports[0].assembler

    def close(self) -> None:
        from ims_station.hil.sim import unregister

        try:
            self.edge.close()
        finally:
            unregister(self.sim_name)


def _make_rig(i: int, station: str, keys: StationKeys, opts: DemoOptions, start_utc: int, root: Path,
              broker: Any, stages: dict) -> StationRig:
    from ims_station.edge.config import load_station_config
    from ims_station.edge.station import assemble
    from ims_station.hil.faults import FaultPlan, LineFaults
    from ims_station.hil.sim import Simulation
    from ims_station.hil.sim import register as register_sim
    from ims_station.hil.sim import unregister

    line = LineFaults(ber=opts.ber, drop=opts.drop)
    plan = FaultPlan(down=line, up=line)
    sim = Simulation(board="sim", seed=opts.seed + i, plan=plan, key=keys.board_key, start_utc=start_utc)
    name = f"demo-{os.getpid()}-{next(_names)}-{station}"
    register_sim(name, sim)
    try:
        cfg = load_station_config(write_station_file(
            root / station / "station.toml", station, keys, sim_name=name, board_id=sim.board.board_id,
            baud=sim.baud, broker=broker.config, protocol="auto" if broker.caps.mqtt5 else "3.1.1",
            frame_seconds=int(opts.frame_seconds), acknack_trust=root / "acknack-trust", auxiliary=opts.auxiliary))
        rig = StationRig(station, sim, name, None)

        def on_commit(seq: int, raw: bytes) -> None:
            rig.frames_built += 1
            rig.build_times[seq] = sim.clock.time()

        def on_events(port: Any, events: list) -> None:
            for ev in events:
                if type(ev).__name__ == "DataBlock":
                    rig.chunks += 1
                    rig.samples += int(ev.samples.size)

        # The production assembly (as `ims-station edge run --config station.toml`), on the
        # simulation's clock (as the soak does: the edge's timeouts run in simulated time); only
        # the retry pacing is shortened for a run of minutes.
        rig.edge = assemble(cfg, clock=sim.clock, on_commit=on_commit, on_events=on_events,
                            uplink_options={"backoff_base_s": 0.1, "backoff_max_s": 2.0},
                            pump_options={"backoff_initial": 0.5, "backoff_max": 4.0})
    except BaseException:
        unregister(name)
        raise
    return rig


def _drive(rig: StationRig, clock: PacedClock, t_end: float, stop: threading.Event) -> None:
    """Advance one station's simulation in step with the paced clock (never ahead of it)."""
    sim = rig.sim
    try:
        while not stop.is_set() and sim.clock.monotonic() < t_end:
            ahead = -clock.wall_until(sim.clock.monotonic())
            if ahead < 0:
                # The simulation is ahead of the paced clock: let the wall clock catch up.
                stop.wait(min(0.05, -ahead))
                continue
            rig.edge.step()
    except Exception as err:  # reported, never silent
        log.exception("demo: station %s stopped", rig.station)
        rig.error = f"{type(err).__name__}: {err}"


# -------------------------------------------------------------------------------------- relay


class ArrivalLog:
    """What the relay archived, and when (on the demo's paced clock): the latency measurement."""

    def __init__(self, clock: PacedClock) -> None:
        self.clock = clock
        self.lock = threading.Lock()
        self.archived: dict[tuple[str, int], tuple[float, int]] = {}   # (frame_set, seq) -> (t, nominal_ms)
        self.duplicates = 0

    def record(self, results: list) -> None:
        now = self.clock.time()
        with self.lock:
            for r in results:
                key = (r.record.frame_set, r.record.sequence)
                if r.outcome.value == "archived":
                    self.archived.setdefault(key, (now, r.record.nominal_ms))
                elif r.outcome.value == "duplicate":
                    self.duplicates += 1


def _make_relay(root: Path, trust_dir: Path, broker: Any, clock: PacedClock, arrivals: ArrivalLog) -> Any:
    """R's relay with its embedded state store and file archive; the archive reports each commit
    to *arrivals* (a subclass, so the relay code path is unchanged)."""
    from ims_station.auth import Keystore, TrustStore
    from ims_station.relay.archive import FileArchive
    from ims_station.relay.relay import Relay
    from ims_station.relay.state import SqliteStateStore

    class TimedArchive(FileArchive):
        def commit(self, frames, quarantined=(), **messages):
            results = super().commit(frames, quarantined, **messages)
            arrivals.record(results[:len(frames)])      # the frames' (events follow them)
            return results

    trust = TrustStore.load(trust_dir)
    state = SqliteStateStore(root / "relay" / "state.sqlite")
    archive = TimedArchive(root / "relay" / "archive")
    group = "relay" if broker.caps.shared_subscriptions else None
    relay = Relay(broker.config, trust, state, archive, group=group, clock=clock, instance="demo-relay",
                  protocol="auto" if broker.caps.mqtt5 else "3.1.1", backoff_base_s=0.05, backoff_max_s=1.0,
                  name=RELAY_NAME, acknack_signer=Keystore.load(root / "relay" / "keys").signer(RELAY_ACKNACK_KEY))
    return relay


# -------------------------------------------------------------------------------------- run


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None, "n": 0}
    import numpy as np

    a = np.asarray(values, dtype=float)
    return {"p50": round(float(np.percentile(a, 50)), 3), "p99": round(float(np.percentile(a, 99)), 3),
            "max": round(float(a.max()), 3), "n": int(a.size)}


def run_demo(opts: DemoOptions, progress: Callable[[dict], None] | None = None) -> dict:
    """Run the demo; returns the JSON-ready report."""
    from ims_station.broker import start_broker

    opts.check()
    stages = stages_available()
    wall0 = time.perf_counter()
    own_dir = opts.workdir is None
    root = Path(tempfile.mkdtemp(prefix="ims-demo-") if own_dir else opts.workdir)
    root.mkdir(parents=True, exist_ok=True)
    start_utc = int(time.time())
    clock = PacedClock(start_utc, opts.speed)
    stations = [f"DEMO{i + 1}" for i in range(opts.stations)]
    rigs: list[StationRig] = []
    broker = None
    stop = threading.Event()
    threads: list[threading.Thread] = []
    missing = [k for k, v in stages.items() if not v]
    relay = None
    arrivals = ArrivalLog(clock)
    try:
        keys, trust_dir = make_keys(root, stations, [c for _, c in SIM_CHANNELS], valid_from=start_utc)
        broker = start_broker("mosquitto" if opts.broker in ("auto", "mosquitto") else "embedded",
                              root / "broker")
        if opts.broker == "mosquitto" and broker.caps.name != "mosquitto":
            from ims_station.errors import ImsStationError

            raise ImsStationError("demo: --broker mosquitto asked for, but mosquitto is not installed")
        if stages["relay"]:
            relay = _make_relay(root, trust_dir, broker, clock, arrivals).start()
            if not relay.wait_connected(10):
                from ims_station.errors import ImsStationError

                raise ImsStationError(f"demo: the relay could not connect to {broker!r}")
        for i, sta in enumerate(stations):
            rigs.append(_make_rig(i, sta, keys[sta], opts, start_utc, root, broker, stages))
        for rig in rigs:
            if rig.uplink is not None:
                rig.uplink.start()
        t_sampling = opts.minutes * 60.0
        for rig in rigs:
            rig.sim.stop_sampling(at_s=t_sampling)
        t_end = t_sampling + opts.drain_s
        clock.restart()
        for rig in rigs:
            th = threading.Thread(target=_drive, args=(rig, clock, t_end, stop), name=f"demo-{rig.station}",
                                  daemon=True)
            th.start()
            threads.append(th)
        while any(t.is_alive() for t in threads):
            for t in threads:
                t.join(0.5)
                break
            if progress is not None:
                progress(_snapshot(rigs, clock, t_end, broker, arrivals))
        # Sampling over and the last windows committed: give the network a bounded time to
        # deliver what is still in the outboxes (a frame not archived by then counts as lost).
        # Done when every outbox is empty: each frame was acknowledged by the relay's acknack (so
        # archived) or evicted with an alarm.
        if relay is not None and any(r.gateway is not None for r in rigs):
            deadline = time.monotonic() + max(30.0, 120.0 / opts.speed)
            while time.monotonic() < deadline:
                if all(r.outbox is None or _drained(r.outbox.stats(), opts) for r in rigs):
                    break
                if progress is not None:
                    progress(_snapshot(rigs, clock, t_end, broker, arrivals))
                stop.wait(0.1)
        requests = (_request_windows(root, rigs, broker, clock, arrivals, start_utc, opts)
                    if opts.auxiliary and relay is not None else None)
        report = _report(opts, stages, rigs, broker, relay, arrivals, clock, time.perf_counter() - wall0)
        if opts.auxiliary:
            _auxiliary_report(report, rigs, arrivals, requests, relay is not None)
        report["missing_stages"] = missing
        return report
    finally:
        stop.set()
        for t in threads:
            t.join(5)
        for rig in rigs:
            try:
                rig.close()
            except Exception:
                log.exception("demo: closing %s", rig.station)
        if relay is not None:
            try:
                relay.close()
            except Exception:
                log.exception("demo: closing the relay")
        if broker is not None:
            broker.close()
        if own_dir:
            shutil.rmtree(root, ignore_errors=True)


def _drained(stats: dict, opts: DemoOptions) -> bool:
    """Nothing left to deliver: an empty outbox, or (auxiliary) nothing sendable or in flight."""
    if opts.auxiliary:
        return stats["pending"] == 0 and stats["in_flight"] == 0
    return stats["frames"] == 0


def _request_windows(root: Path, rigs: list[StationRig], broker: Any, clock: PacedClock, arrivals: ArrivalLog,
                     start_utc: int, opts: DemoOptions) -> dict:
    """Auxiliary demo: the relay asks each station for one window (the 3 frames one minute into the
    run) with ``relay/request.request_window``, signed by the relay's key at the simulation's time,
    and waits (bounded) until those frames are archived.  Returns station -> (window, answer)."""
    from ims_station.relay.request import request_window

    conf = {"relay": {"name": RELAY_NAME, "trust_dir": str(root / "relay" / "trust"),
                      "acknack_key": {"keystore": str(root / "relay" / "keys"), "key_id": RELAY_ACKNACK_KEY}},
            "brokers": [broker.config]}
    fs = opts.frame_seconds
    start = (start_utc + 60) // fs * fs
    window = (float(start), float(start + 3 * fs))
    out = {}
    for r in rigs:
        try:
            doc = request_window(conf, r.station, *window, wait_s=20, now=clock.time())
        except Exception as err:      # reported, not raised: the report says what failed
            doc = {"ok": False, "error": f"{type(err).__name__}: {err}"}
        out[r.station] = {"window": window, "answer": doc}
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not all(
            _drained(r.outbox.stats(), opts) and all((f"{r.station}:0", s) in arrivals.archived
                                                     for s in _released_seqs(r, [window], fs))
            for r in rigs):
        time.sleep(0.1)
    return out


def _released_seqs(rig: StationRig, windows: list, frame_s: float) -> set[int]:
    """The frames *rig* built that overlap one of *windows* ([start, end) POSIX seconds)."""
    epoch = 946_684_800
    return {s for s in rig.build_times
            if any(epoch + s * frame_s < b and epoch + (s + 1) * frame_s > a for a, b in windows)}


def _auxiliary_report(report: dict, rigs: list[StationRig], arrivals: ArrivalLog, requests: dict | None,
                      with_relay: bool) -> None:
    """Auxiliary demo: what reached the archive must be exactly the frames of the released windows
    (events' and the request's); the rest stays in the stations' buffers, not lost."""
    fs = report["options"]["frame_seconds"]
    released, archived_outside, lost = 0, 0, 0
    per = {}
    with arrivals.lock:
        got = set(arrivals.archived)
    for r in rigs:
        aux = r.edge.auxiliary
        windows = list(aux.release.windows) + ([requests[r.station]["window"]] if requests else [])
        want = _released_seqs(r, windows, fs)
        have = {s for (f, s) in got if f == f"{r.station}:0"}
        released += len(want)
        lost += len(want - have)
        archived_outside += len(have - want)
        per[r.station] = {"event_windows": len(aux.release.windows), "frames_released": len(want),
                          "frames_archived": len(have), "held_at_station": r.outbox.stats()["held"],
                          "request": requests.get(r.station) if requests else None}
    report["auxiliary"] = {"stations": per, "frames_released": released, "archived_outside_windows": archived_outside}
    report["frames"]["lost"] = lost if with_relay else None
    report["ok"] = (with_relay and all(r.error is None for r in rigs) and not report["frames"]["quarantined"]
                    and lost == 0 and archived_outside == 0
                    and all(q["answer"].get("ok") for q in (requests or {}).values()))


def _snapshot(rigs: list[StationRig], clock: PacedClock, t_end: float, broker: Any, arrivals: ArrivalLog) -> dict:
    with arrivals.lock:
        per = {}
        for fs, _seq in arrivals.archived:
            per[fs] = per.get(fs, 0) + 1
    return {
        "simulated_s": round(min((r.sim.clock.monotonic() for r in rigs), default=0.0), 1),
        "lag_s": round(clock.monotonic() - min((r.sim.clock.monotonic() for r in rigs), default=0.0), 2),
        "total_s": t_end,
        "broker": broker.caps.name if broker else None,
        "stations": {r.station: {"samples": r.samples, "chunks": r.chunks, "frames_built": r.frames_built,
                                 "archived": per.get(f"{r.station}:0", 0),
                                 "packets_ok": r.decoder.counters.get("packets_ok", 0),
                                 "error": r.error} for r in rigs},
    }


def _report(opts: DemoOptions, stages: dict, rigs: list[StationRig], broker: Any, relay: Any,
            arrivals: ArrivalLog, clock: PacedClock, wall: float) -> dict:
    per_station = {}
    for r in rigs:
        per_station[r.station] = {
            "samples_generated": int(r.sim.truth.conversions * len(SIM_CHANNELS)),
            "samples_ingested": r.samples,
            "frames_built": r.frames_built,
            "framer": r.gateway.framer.counters if r.gateway is not None else None,
            "outbox": r.outbox.stats() if r.outbox is not None else None,
            "uplink": {k: v for k, v in r.uplink.stats().items() if k != "last_acknack"} if r.uplink else None,
            "link": {k: r.decoder.counters.get(k, 0) for k in
                     ("packets_ok", "crc_errors", "hmac_errors", "resend_requests", "packets_recovered",
                      "packets_unrecoverable")},
            "error": r.error,
        }
    rstats = relay.stats() if relay is not None else {}
    built = sum(r.frames_built for r in rigs)
    lat_last, lat_first = [], []
    frame_s = opts.frame_seconds
    with arrivals.lock:
        for (_fs, _seq), (t, nominal_ms) in arrivals.archived.items():
            first = nominal_ms / 1000.0
            lat_first.append(t - first)
            lat_last.append(t - (first + frame_s))
    built_keys = {(f"{r.station}:0", s) for r in rigs for s in r.build_times}
    delivered = len(built_keys & set(arrivals.archived))
    frames = {"built": built, "delivered": delivered if relay is not None else None,
              "verified": rstats.get("verified"), "quarantined": rstats.get("quarantined"),
              "duplicates_at_relay": rstats.get("duplicates"),
              # Frames the station's outbox dropped on purpose (age / size / disk bound), each with an
              # SOH alarm; the rest of "lost" would be a fault.
              "evicted_at_station": sum((r.outbox.stats()["evicted"] if r.outbox is not None else 0) for r in rigs),
              "lost": (built - delivered) if relay is not None and stages["framer"] and stages["station"] else None}
    return {
        "options": asdict(opts),
        "broker": {"name": broker.caps.name, **{k: v for k, v in asdict(broker.caps).items() if k != "name"}},
        "stages": stages,
        "frames": frames,
        # Simulated seconds from a sample's time to the moment the relay archived its frame: for the
        # frame's last sample (pipeline delay) and its first sample (adds the frame length).  Divide
        # by options.speed for the wall time the pipeline took.
        "latency_s": {"sample_to_archive_last_sample": _percentiles(lat_last),
                      "sample_to_archive_first_sample": _percentiles(lat_first)},
        "relay": {k: rstats.get(k) for k in ("received", "verified", "archived", "duplicates", "quarantined",
                                             "rejected", "security_events", "acknacks_sent")} if rstats else None,
        "stations": per_station,
        "simulated_s": round(min((r.sim.clock.monotonic() for r in rigs), default=0.0), 3),
        "wall_s": round(wall, 3),
        "ok": (all(r.error is None for r in rigs) and frames["lost"] is not None
               and frames["lost"] - frames["evicted_at_station"] == 0 and not frames["quarantined"]),
    }


def _cmd(args: argparse.Namespace) -> int:
    from ims_station.output import print_json

    opts = DemoOptions(minutes=args.minutes, stations=args.stations, speed=args.speed, seed=args.seed,
                       frame_seconds=args.frame_seconds, broker=args.broker, ber=args.ber, drop=args.drop,
                       workdir=args.workdir, auxiliary=args.auxiliary)
    if args.json:
        report = run_demo(opts)
        print_json(report)
        return 0 if report["ok"] else 1
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table

    console = Console(stderr=True)

    def table(snap: dict) -> Table:
        t = Table(title=f"ims-station demo -- simulated {snap['simulated_s']:.0f} / {snap['total_s']:.0f} s, "
                        f"broker {snap['broker']}")
        for col in ("station", "samples", "link packets ok", "frames built", "archived at relay", "error"):
            t.add_column(col)
        for sta, s in snap["stations"].items():
            t.add_row(sta, str(s["samples"]), str(s["packets_ok"]), str(s["frames_built"]), str(s["archived"]),
                      s["error"] or "")
        return t

    with Live(console=console, refresh_per_second=4, transient=False) as live:
        report = run_demo(opts, progress=lambda snap: live.update(table(snap)))
    print_json(report)
    return 0 if report["ok"] else 1
