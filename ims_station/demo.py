"""``ims-station demo``: a whole simulated network segment, end to end, in one process.

HIL digitizer(s) (the firmware itself on emulated peripherals, ``hil/sim.py``) -> serial line
(``sim://`` port, the gateway's production code path) -> edge gateway (link decoder, stream
assembly, CD-1.1 framer, durable outbox, MQTT uplink) -> broker (Mosquitto when installed, the
embedded amqtt broker otherwise; ``ims_station.broker``) -> relay (verification, dedupe, archive,
acknack) -> final JSON report: frames built, delivered, verified, quarantined, lost, and end-to-end
latency p50/p99 (sample time -> archived at the relay); the stations' trigger events (the
simulated earthquake, :data:`DEMO_TRIGGER`) from decision to the relay's archive, with a check.

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
import re
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
                    "latency p50/p99; the stations' trigger events from decision to the relay's archive).")
    p.add_argument("--minutes", type=float, default=10.0, help="simulated minutes of data (default 10)")
    p.add_argument("--stations", type=int, default=1,
                   help="number of simulated stations (default 1; codes DEMO1..DEMOZ, DEM01.. above 35)")
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
    p.add_argument("--no-trigger", action="store_true",
                   help="no [trigger] table in the stations' files: no station events (docs/trigger.md)")
    p.add_argument("--trigger-config", metavar="FILE",
                   help="a TOML file whose [trigger] table replaces the demo's (docs/configuration.md)")
    p.add_argument("--json", action="store_true", help="print only the JSON report")
    p.set_defaults(handler=_cmd)


MAX_DEMO_STATIONS = 1295       # DEM01..DEMZZ (station_codes)


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
    trigger: bool = True             # the stations run the trigger stage with DEMO_TRIGGER (or trigger_file's)
    trigger_file: str | None = None  # a TOML file with a [trigger] table replacing DEMO_TRIGGER

    def check(self) -> None:
        from ims_station.errors import ConfigError

        if not 0 < self.minutes <= 24 * 60:
            raise ConfigError("demo", "--minutes", "must be > 0 and at most one day")
        if not 1 <= self.stations <= MAX_DEMO_STATIONS:
            raise ConfigError("demo", "--stations", f"must be 1..{MAX_DEMO_STATIONS} (5-character station codes, "
                              "station_codes); each station is a HIL board simulated in this process")
        if not 0.1 <= self.speed <= 1000:
            raise ConfigError("demo", "--speed", "must be 0.1..1000")
        if not 1 <= self.frame_seconds <= 60:
            raise ConfigError("demo", "--frame-seconds", "must be 1..60")
        if self.trigger_file is not None:
            self.trigger_settings()

    def trigger_settings(self) -> dict | None:
        """The stations' ``[trigger]`` table: None with ``trigger`` off, else the ``[trigger]`` table
        of ``trigger_file`` (checked against the station when it is assembled) or :data:`DEMO_TRIGGER`."""
        import tomllib

        from ims_station.errors import ConfigError

        if not self.trigger:
            return None
        if self.trigger_file is None:
            return dict(DEMO_TRIGGER)
        try:
            with open(self.trigger_file, "rb") as f:
                table = tomllib.load(f).get("trigger")
        except (OSError, tomllib.TOMLDecodeError) as err:
            raise ConfigError(self.trigger_file, "trigger", f"cannot read: {err}") from err
        if not isinstance(table, dict):
            raise ConfigError(self.trigger_file, "trigger", "no [trigger] table")
        return table


# The demo stations' [trigger] table (docs/trigger.md "In the demo"): a P-wave detector on the
# vertical seismometer -- high-pass 4 Hz, 1 s / 20 s recursive STA/LTA, on at 4, off at 1.5, a
# trigger counting once it lasted 0.5 s.  It declares the HIL scenario's regional earthquake (P at
# ~85 s, ~4 Hz) as one event; the S wave (~104 s, ~2 Hz, mostly on the horizontals) stays below the
# high-pass, so it does not become a second event; nothing in the noise (tests/integration/test_demo.py).
DEMO_TRIGGER: dict[str, Any] = {
    "channels": ["00.BHZ"], "filter": "highpass:4", "sta": 1.0, "lta": 20.0, "on": 4.0, "off": 1.5,
    "min_duration": 0.5, "coincidence_sum": 1.0,
}


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
              valid_from: float, index_base: int = 0, relay_key: bool = True) -> tuple[dict[str, StationKeys], Path]:
    """Per station: a link HMAC key for its board, a frame key and one key per channel (keystore),
    and the public halves in one relay trust store.  Key ids: station i uses 1000*(index_base+i+1) + n
    (a caller with several groups of stations, e.g. ``sim network``, numbers them on with
    *index_base*); *relay_key*: also the relay's acknack key (once per run)."""
    import datetime as dt

    from ims_station.auth import export_public, generate_key
    from ims_station.config import write_secret_file

    trust = root / "relay" / "trust"
    start = dt.datetime.fromtimestamp(valid_from - 86400, tz=dt.timezone.utc).replace(microsecond=0)
    out: dict[str, StationKeys] = {}
    for i, sta in enumerate(stations):
        ks = root / sta / "keys"
        base = 1000 * (index_base + i + 1)
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
    if not relay_key:
        return out, trust
    generate_key(algorithm, RELAY_ACKNACK_KEY, root / "relay" / "keys", station=RELAY_NAME, valid_from=start)
    export_public(root / "relay" / "keys", RELAY_ACKNACK_KEY, root / "acknack-trust")
    return out, trust


# -------------------------------------------------------------------------------------- stations


_BASE36 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
MAX_STATION_CODE = 5        # CD-1.1 site (subframe), SEED station, [station] code: at most 5 characters


def station_codes(prefix: str, n: int) -> list[str]:
    """*n* distinct station codes valid everywhere a code goes -- the station file's ``[station]
    code`` and a SEED station (1-5 of ``A-Z0-9``), a CD-1.1 channel subframe's site (5 characters) and
    frame creator (8), an MQTT topic level (``topics.STATION_RE``, 1-8 of ``A-Z0-9``): *prefix*
    followed by the station's number 1..n in base 36, zero-padded to the width of *n*; the prefix is
    cut so that the code keeps to 5 characters (``DEMO1``..``DEMOZ`` up to 35 stations, then
    ``DEM01``..``DEMZZ`` up to 1295).  ValueError if *n* needs more than 4 digits or *prefix* is not
    upper-case letters and digits."""
    if not re.fullmatch(r"[A-Z0-9]+", prefix or "") or n < 0:
        raise ValueError(f"station code prefix {prefix!r}: 1-5 upper-case letters or digits, n >= 0")
    width = 1
    while 36 ** width - 1 < n:
        width += 1
    if width >= MAX_STATION_CODE:
        raise ValueError(f"{n} stations need {width} base-36 digits: more than a 5-character code allows")
    head = prefix[:MAX_STATION_CODE - width]

    def b36(i: int) -> str:
        out = ""
        for _ in range(width):
            i, r = divmod(i, 36)
            out = _BASE36[r] + out
        return out

    return [head + b36(i + 1) for i in range(n)]


# The HIL "sim" board's channels (boards/sim.toml), by link channel id: (location, channel).
SIM_CHANNELS = [("00", "BHZ"), ("00", "BHN"), ("00", "BHE"), ("10", "BDF")]
NETWORK = "XX"


def write_station_file(path: Path, station: str, keys: StationKeys, *, sim_name: str, board_id: int, baud: int,
                       broker: Any, protocol: str = "auto", frame_seconds: int = 10, pin_keys: bool = True,
                       keystore: Path | None = None, acknack_trust: Path | None = None,
                       ack_timeout_s: float | None = None, auxiliary: bool = False,
                       trigger: dict | None = None, ports: list[dict] | None = None) -> Path:
    """The station file (docs/configuration.md) of a simulated station: one ``sim://`` port to the
    HIL board *sim_name* (``sim`` board, channels :data:`SIM_CHANNELS`), the outbox in the file's
    folder, the keys of *keys* (pinned, or chosen by time from *keystore* with ``pin_keys=False``),
    the broker *broker* (a :class:`ims_station.broker.BrokerConfig`), with *acknack_trust* the
    relay's acknack key and with *trigger* a ``[trigger]`` table (e.g. :data:`DEMO_TRIGGER`).
    *ports* (``sim network``): the ``[[ports]]`` entries instead of the one ``sim://`` port, each a
    dict of the port keys (``name``, ``url``, ``board``, ``board_id``, ``baudrate``, ``key_file``,
    ``channels``: id -> ``LOC.CHA``).  The demo and the fault tests load it and call
    :func:`ims_station.edge.station.assemble`, as ``edge run`` does with an operator's file (its
    ``sim://NAME`` port exists only in the process that registered the simulation)."""
    import json

    q = json.dumps          # a TOML basic string is a JSON string for these values
    if ports is None:
        ports = [{"name": "board", "url": "sim://" + sim_name, "board": "sim", "board_id": int(board_id),
                  "baudrate": int(baud), "key_file": str(keys.board_key_file),
                  "channels": {i: f"{loc}.{cha}" for i, (loc, cha) in enumerate(SIM_CHANNELS)}}]
    lines = ["[station]", f"code = {q(station)}", f"network = {q(NETWORK)}", f"data_dir = {q(str(path.parent))}",
             *(['mode = "auxiliary"'] if auxiliary else [])]
    for port in ports:
        lines += ["", "[[ports]]", *(f"{k} = {_toml_value(v)}" for k, v in port.items() if k != "channels"),
                  "channels = " + _toml_value({str(i): c for i, c in port["channels"].items()})]
    lines += ["", "[framer]", f"frame_seconds = {int(frame_seconds)}",
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
    if trigger is not None:
        lines += ["", "[trigger]", *(f"{q(k)} = {_toml_value(v)}" for k, v in trigger.items())]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def _toml_value(v: Any) -> str:
    """A TOML value for the scalars, arrays and inline tables of a ``[trigger]`` table."""
    import json

    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float, str)):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(str(k))} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"no TOML value for {v!r}")


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
    decided: dict[int, dict] = field(default_factory=dict)       # event seq -> document committed (+ _paced_s)
    step_started: float | None = None                            # demo clock at the start of the current step
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
              broker: Any, stages: dict, on_built: Callable[[int, bytes], None] | None = None) -> StationRig:
    """One HIL station (``sim network`` samples a few with it); *on_built* observes each commit."""
    from ims_station.edge.config import load_station_config
    from ims_station.edge.station import assemble
    from ims_station.hil.faults import FaultPlan, LineFaults
    from ims_station.mqtt import LOOP_TIMEOUT_S
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
            frame_seconds=int(opts.frame_seconds), acknack_trust=root / "acknack-trust", auxiliary=opts.auxiliary,
            trigger=opts.trigger_settings()))
        rig = StationRig(station, sim, name, None)

        def on_commit(seq: int, raw: bytes) -> None:
            rig.frames_built += 1
            rig.build_times[seq] = sim.clock.time()
            if on_built is not None:
                on_built(seq, raw)

        def on_events(port: Any, events: list) -> None:
            for ev in events:
                if type(ev).__name__ == "DataBlock":
                    rig.chunks += 1
                    rig.samples += int(ev.samples.size)

        # The production assembly (as `ims-station edge run --config station.toml`), on the
        # simulation's clock (as the soak does: the edge's timeouts run in simulated time); only
        # the retry pacing is shortened for a run of minutes, and the uplink's network-loop wait (wall
        # time: 50 ms in production) is divided by the speed so that it stays 50 ms of simulated time.
        def on_event(doc: dict, seq: int) -> None:
            # with the demo's time at the start of the station step that decided it (see _events_report)
            rig.decided[seq] = {**doc, "_paced_s": rig.step_started}

        rig.edge = assemble(cfg, clock=sim.clock, on_commit=on_commit, on_events=on_events, on_event=on_event,
                            uplink_options={"backoff_base_s": 0.1, "backoff_max_s": 2.0,
                                            "loop_wait_s": LOOP_TIMEOUT_S / opts.speed},
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
            rig.step_started = clock.time()
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
        self.events: dict[tuple[str, int], tuple[float, dict]] = {}     # (frame_set, seq) -> (t, document)
        self.events_archived_twice = 0
        self.event_duplicates = 0

    def record(self, results: list) -> None:
        now = self.clock.time()
        with self.lock:
            for r in results:
                key = (r.record.frame_set, r.record.sequence)
                if r.outcome.value == "archived":
                    self.archived.setdefault(key, (now, r.record.nominal_ms))
                elif r.outcome.value == "duplicate":
                    self.duplicates += 1

    def record_events(self, results: list) -> None:
        """The relay archived these events (their signed envelopes, already verified by the relay)."""
        from ims_station import envelope

        now = self.clock.time()
        with self.lock:
            for r in results:
                key = (r.record.frame_set, r.record.sequence)
                if r.outcome.value == "archived":
                    if key in self.events:
                        self.events_archived_twice += 1       # the relay's dedupe failed: the check says so
                        continue
                    try:
                        doc = envelope.unpack(r.record.raw, kind="event").json()
                    except Exception as err:                # reported, not raised
                        doc = {"error": f"{type(err).__name__}: {err}"}
                    self.events[key] = (now, doc)
                elif r.outcome.value == "duplicate":
                    self.event_duplicates += 1


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
            arrivals.record_events(results[len(frames):])
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
    """Run the demo; returns the JSON-ready report.

    The simulation, the stations' gateways and the relay share one process, hence one interpreter
    lock; its switch interval (5 ms of wall time) would be ``--speed`` times longer in simulated
    time than a real station's, so for the run it is divided by the speed (at least 0.2 ms), as the
    uplink's network-loop wait is: the event latency then measures the pipeline, not the
    simulation's hold on the lock."""
    import sys

    interval = sys.getswitchinterval()
    sys.setswitchinterval(max(interval / max(opts.speed, 1.0), 0.0002))
    try:
        return _run_demo(opts, progress)
    finally:
        sys.setswitchinterval(interval)


def _run_demo(opts: DemoOptions, progress: Callable[[dict], None] | None) -> dict:
    from ims_station.broker import start_broker

    opts.check()
    stages = stages_available()
    wall0 = time.perf_counter()
    own_dir = opts.workdir is None
    root = Path(tempfile.mkdtemp(prefix="ims-demo-") if own_dir else opts.workdir)
    root.mkdir(parents=True, exist_ok=True)
    start_utc = int(time.time())
    clock = PacedClock(start_utc, opts.speed)
    stations = station_codes("DEMO", opts.stations)
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
        report["events"] = _events_report(opts, rigs, arrivals, start_utc, relay is not None)
        if not report["events"]["ok"]:
            report["failures"].append(f"events: {report['events']['check']}")
        if opts.auxiliary:
            _auxiliary_report(report, rigs, arrivals, requests, relay is not None, start_utc)
            if not report["ok"]:
                report["failures"].append(f"auxiliary: {report['auxiliary']['check']}")
        report["ok"] = not report["failures"]
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
                      with_relay: bool, start_utc: int) -> None:
    """Auxiliary demo: what reached the archive must be exactly the frames of the released windows
    -- each decided event's (``edge/auxiliary.release_window`` of the documents the station
    committed, computed here, not read back from the station) and the relay's request -- nothing
    more, nothing less; the rest stays in the stations' buffers, not lost.  A frame archived outside
    those windows fails the run, named in ``auxiliary.stations.<STA>.archived_outside`` and logged."""
    from ims_station.edge.auxiliary import release_window

    fs = report["options"]["frame_seconds"]
    released, archived_outside, lost = 0, 0, 0
    per = {}
    with arrivals.lock:
        got = set(arrivals.archived)
    problems = []
    for r in rigs:
        rel = r.edge.auxiliary.release
        event_windows = [w for d in r.decided.values()
                         if (w := release_window(d, float(d["decided_s"]), rel.pre_s, rel.post_s)) is not None]
        requested = [requests[r.station]["window"]] if requests else []
        want = _released_seqs(r, event_windows + requested, fs)
        have = {s for (f, s) in got if f == f"{r.station}:0"}
        extra, missing = sorted(have - want), sorted(want - have)
        released += len(want)
        lost += len(missing)
        archived_outside += len(extra)
        epoch = 946_684_800           # frame seq -> start time, as _released_seqs
        per[r.station] = {
            "event_windows": [[_rel(a, start_utc), _rel(b, start_utc)] for a, b in event_windows],
            "requested_windows": [[_rel(a, start_utc), _rel(b, start_utc)] for a, b in requested],
            "frames_in_event_windows": len(_released_seqs(r, event_windows, fs)),
            "frames_in_requested_windows": len(_released_seqs(r, requested, fs)),
            "frames_released": len(want), "frames_archived": len(have),
            "archived_outside": [_rel(epoch + s * fs, start_utc) for s in extra],
            "not_archived": [_rel(epoch + s * fs, start_utc) for s in missing],
            "held_at_station": r.outbox.stats()["held"],
            "request": requests.get(r.station) if requests else None}
        if extra:
            problems.append(f"{r.station}: {len(extra)} frame(s) archived outside the released windows "
                            f"(frame starts, s: {per[r.station]['archived_outside'][:10]})")
        if missing:
            problems.append(f"{r.station}: {len(missing)} released frame(s) not archived")
    for p in problems:
        log.error("demo: auxiliary check failed: %s", p)
    report["auxiliary"] = {"stations": per, "frames_released": released, "archived_outside_windows": archived_outside,
                           "check": ("FAIL: " + "; ".join(problems)) if problems else
                           (f"OK: the archive holds exactly the {released} frame(s) of the event and requested "
                            "windows, nothing else")}
    report["frames"]["lost"] = lost if with_relay else None
    report["ok"] = (with_relay and all(r.error is None for r in rigs) and not report["frames"]["quarantined"]
                    and lost == 0 and archived_outside == 0
                    and all(q["answer"].get("ok") for q in (requests or {}).values()))


EVENT_LATENCY_GOAL_S = 1.0      # issue 9: an event reaches the relay within a second of the decision


def _scenario_events(rig: StationRig, t_sampling: float) -> int:
    """Seismic events of *rig*'s simulated world whose P wave arrives while the station samples."""
    return sum(1 for ev in rig.sim.scenario.events if ev.arrivals()[0] < t_sampling)


def _events_report(opts: DemoOptions, rigs: list[StationRig], arrivals: ArrivalLog, start_utc: int,
                   with_relay: bool) -> dict:
    """The event path end to end (must-show 5): the events the stations decided (``on``/``off``
    documents committed to their outboxes), the events the relay archived, and for each the
    latency from the decision to the moment the relay archived it, both on the paced clock (the
    demo's one time axis).  The decision's moment is the start of the station step that made it:
    the document's ``decided_s`` is the station's simulated clock, which a step does not advance
    and which runs behind the paced clock when the simulation lags; a real station's clock is the
    real time, so measuring from ``decided_s`` would charge the simulation's lag to the event path
    (reported as ``from_decided_s``).  The check: with a trigger,
    each station decided an event for each earthquake of its scenario, every decided event was
    archived exactly once and within :data:`EVENT_LATENCY_GOAL_S`, and nothing else was archived."""
    with arrivals.lock:
        got = dict(arrivals.events)
        twice, dups = arrivals.events_archived_twice, arrivals.event_duplicates
    rows, lat, lag, from_doc, missing, late, open_on = [], [], [], [], [], [], 0
    decided = {"on": 0, "off": 0}
    expected = 0
    for r in rigs:
        fs = f"{r.station}:events"
        expected += _scenario_events(r, opts.minutes * 60.0) if opts.trigger else 0
        offs = {d.get("event_id") for d in r.decided.values() if d.get("state") == "off"}
        for seq, doc in sorted(r.decided.items()):
            state = doc.get("state")
            decided[state] = decided.get(state, 0) + 1
            if state == "on" and doc.get("event_id") not in offs:
                open_on += 1
            arrived = got.get((fs, seq))
            decided_at = doc.get("_paced_s")
            if decided_at is None:                  # not decided in a step (no demo time): the station's clock
                decided_at = float(doc["decided_s"])
            latency = None if arrived is None else round(arrived[0] - decided_at, 3)
            behind = round(decided_at - float(doc["decided_s"]), 3)
            if arrived is not None:
                from_doc.append(round(arrived[0] - float(doc["decided_s"]), 3))
            lag.append(behind)
            if latency is None:
                missing.append(f"{fs}#{seq}")
            else:
                lat.append(latency)
                if latency > EVENT_LATENCY_GOAL_S:
                    late.append(f"{fs}#{seq}")
            rows.append({"station": r.station, "seq": seq, "state": state, "event_id": doc.get("event_id"),
                         "onset_s": _rel(doc.get("onset_s"), start_utc), "end_s": _rel(doc.get("end_s"), start_utc),
                         "decided_s": _rel(doc.get("decided_s"), start_utc), "peak": _round(doc.get("peak")),
                         "channels": doc.get("channels"), "latency_s": latency, "simulation_behind_s": behind})
    known = {(f"{r.station}:events", seq) for r in rigs for seq in r.decided}
    unexpected = sorted(f"{fs}#{seq}" for fs, seq in got if (fs, seq) not in known)
    archived = {"on": 0, "off": 0}
    for _t, doc in got.values():
        archived[doc.get("state", "?")] = archived.get(doc.get("state", "?"), 0) + 1
    ok = (with_relay and not missing and not late and not unexpected and not twice
          and decided["on"] == expected and decided["off"] >= expected - open_on)
    n = decided["on"] + decided["off"]
    if not opts.trigger:
        line = "no trigger stage (--no-trigger): no events"
    elif ok:
        worst = f", max {max(lat):.3f} s simulated" if lat else ""
        line = (f"OK: {decided['on']} event(s) decided for {expected} earthquake(s) in the scenario; "
                f"all {n} event message(s) archived exactly once within {EVENT_LATENCY_GOAL_S:g} s{worst}")
    else:
        why = [f"{decided['on']} event(s) decided, {expected} earthquake(s) in the scenario"]
        why += [f"not archived: {', '.join(missing)}"] if missing else []
        why += [f"later than {EVENT_LATENCY_GOAL_S:g} s: {', '.join(late)} (max {max(lat):.2f} s simulated, "
                f"{1000 * max(lat) / opts.speed:.0f} ms wall at --speed {opts.speed:g}; on a busy machine "
                "a lower --speed gives each simulated second more wall time)"] if late else []
        why += [f"archived but never decided: {', '.join(unexpected)}"] if unexpected else []
        why += [f"archived twice: {twice}"] if twice else []
        why += ["no relay"] if not with_relay else []
        line = "FAIL: " + "; ".join(why)
        log.error("demo: event path check failed: %s", line)
    pct = _percentiles(lat)
    return {
        "trigger": opts.trigger_settings(),
        "scenario_earthquakes": expected,
        "decided": decided,
        "archived": archived,
        "open_at_end": open_on,
        "duplicates_at_relay": dups,
        # Simulated seconds from the station's decision to the relay's archive commit; divided by
        # options.speed, the wall time it took.
        # Simulated seconds from the decision to the relay's archive commit, both on the demo's clock
        # (the decision: the start of the station step that made it, so the step's own work counts);
        # divided by options.speed ("wall"), the wall time it took.  "from_decided_s" measures from
        # the document's decided_s instead, the station's simulated clock, which runs behind the
        # demo's by "simulation_behind" (the simulation's backlog and the frozen clock of a step).
        "latency_s": {"decision_to_archive": pct,
                      "wall": {k: (None if pct[k] is None else round(pct[k] / opts.speed, 4)) for k in ("p50", "max")},
                      "from_decided_s": _percentiles(from_doc),
                      "simulation_behind": _percentiles(lag)},
        "list": rows,
        "check": line,
        "ok": ok or not opts.trigger,
    }


def _rel(t: Any, start_utc: int) -> float | None:
    """POSIX seconds as seconds since the simulation's start (the scenario's time axis)."""
    return None if not isinstance(t, (int, float)) else round(float(t) - start_utc, 3)


def _round(x: Any) -> Any:
    return round(float(x), 2) if isinstance(x, (int, float)) else x


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


CD11_EPOCH = 946_684_800        # frame seq n of a station covers [CD11_EPOCH + n * frame_s, + frame_s)
EDGE_ALLOWANCE_S = 1.0          # a window this close to the span's ends may hold no sample: not expected


def expected_frame_seqs(start_utc: float, span_s: float, frame_s: float, *, partial_end: bool = True) -> set[int]:
    """The frame sequence numbers a station sampling from *start_utc* for *span_s* seconds must
    build: every window of *frame_s* seconds (aligned as the framer aligns them) that overlaps the
    span, less :data:`EDGE_ALLOWANCE_S` at each end (a board's first sample may come a moment
    after the start, so a window touching only that moment is not owed).  The last window, cut by
    the end of sampling, is committed only after the framer's ``max_wait_s``: *partial_end* False
    (a run that stops sooner) leaves it out unless the span ends on a window boundary."""
    import math

    a = start_utc + EDGE_ALLOWANCE_S - CD11_EPOCH
    b = start_utc + span_s - EDGE_ALLOWANCE_S - CD11_EPOCH
    if b <= a:
        return set()
    last = int(math.ceil(b / frame_s))
    if not partial_end:
        last = int(math.floor((start_utc + span_s - CD11_EPOCH) / frame_s))
    return set(range(int(math.floor(a / frame_s)), last))


def _framer_max_wait_s() -> float:
    from ims_station.edge.uplink_config import DEFAULTS

    return float(DEFAULTS["framer"]["max_wait_s"])


def frame_accounting(expected: set[int], built: set[int], archived: set[int]) -> dict:
    """One station's frames: those owed (*expected* from its sampling span, and anything it
    *built*) against those the relay *archived*.  ``lost`` counts every owed frame not archived --
    never built or never delivered -- so a station that built nothing is lost entirely, not
    healthy.  Archived frames outside both sets are ``unexpected`` (a fault of the accounting or
    of the relay)."""
    owed = expected | built
    return {"expected": len(expected), "built": len(built), "archived": len(archived & owed),
            "never_built": len(expected - built), "built_not_archived": len(built - archived),
            "lost": len(owed - archived), "unexpected": len(archived - owed)}


def loss_failures(per_station: dict[str, dict], *, evicted: dict[str, int] | None = None) -> list[str]:
    """The reasons a run is not healthy, one per station that lost frames (less those its outbox
    evicted on purpose, *evicted*, each with its own alarm) or stopped with an error; empty when all
    is well.  Pure: the demo's and the network simulation's reports both use it."""
    out = []
    for sta, a in per_station.items():
        lost = a["lost"] - (evicted or {}).get(sta, 0)
        if a.get("error"):
            out.append(f"{sta}: stopped: {a['error']}")
        if lost > 0:
            out.append(f"{sta}: {lost} of {a['expected'] or a['built']} frame(s) lost "
                       f"({a['never_built']} never built, {a['built_not_archived']} built but not archived)")
        if a.get("unexpected"):
            out.append(f"{sta}: {a['unexpected']} archived frame(s) outside the expected span")
    return out


def _report(opts: DemoOptions, stages: dict, rigs: list[StationRig], broker: Any, relay: Any,
            arrivals: ArrivalLog, clock: PacedClock, wall: float) -> dict:
    per_station = {}
    with arrivals.lock:
        got = set(arrivals.archived)
    for r in rigs:
        expected = expected_frame_seqs(r.sim.clock.start_utc, opts.minutes * 60.0, opts.frame_seconds,
                                       partial_end=opts.drain_s >= _framer_max_wait_s())
        archived = {s for (fs, s) in got if fs == f"{r.station}:0"}
        per_station[r.station] = {
            "samples_generated": int(r.sim.truth.conversions * len(SIM_CHANNELS)),
            "samples_ingested": r.samples,
            "frames_built": r.frames_built,
            "frames": {**frame_accounting(expected, set(r.build_times), archived), "error": r.error},
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
    delivered = len(built_keys & got)
    evicted = {r.station: (r.outbox.stats()["evicted"] if r.outbox is not None else 0) for r in rigs}
    complete = relay is not None and stages["framer"] and stages["station"]
    accounts = {sta: p["frames"] for sta, p in per_station.items()}
    if not complete:
        failures = ["missing stages: " + ", ".join(k for k, v in stages.items() if not v) or "no relay"]
    elif opts.auxiliary:        # data stays held on purpose: _auxiliary_report accounts for the windows
        failures = [f"{sta}: stopped: {r.error}" for sta, r in ((r.station, r) for r in rigs) if r.error]
    else:
        failures = loss_failures(accounts, evicted=evicted)
    if complete and not opts.auxiliary and rstats.get("quarantined"):
        failures.append(f"the relay quarantined {rstats['quarantined']} message(s)")
    frames = {"expected": sum(a["expected"] for a in accounts.values()),
              "built": built, "delivered": delivered if relay is not None else None,
              "verified": rstats.get("verified"), "quarantined": rstats.get("quarantined"),
              "duplicates_at_relay": rstats.get("duplicates"),
              # Frames the station's outbox dropped on purpose (age / size / disk bound), each with an
              # SOH alarm; the rest of "lost" would be a fault.
              "evicted_at_station": sum(evicted.values()),
              # Frames owed (expected from each station's sampling span, or built) and not archived:
              # never built or never delivered (frame_accounting).
              "lost": sum(a["lost"] for a in accounts.values()) if complete else None}
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
        "failures": failures,
        "ok": not failures,
    }


def _cmd(args: argparse.Namespace) -> int:
    from ims_station.output import print_json

    opts = DemoOptions(minutes=args.minutes, stations=args.stations, speed=args.speed, seed=args.seed,
                       frame_seconds=args.frame_seconds, broker=args.broker, ber=args.ber, drop=args.drop,
                       workdir=args.workdir, auxiliary=args.auxiliary, trigger=not args.no_trigger,
                       trigger_file=args.trigger_config)
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
    for line in summary_lines(report):
        console.print(line, markup=False, highlight=False)
    return 0 if report["ok"] else 1


def summary_lines(report: dict) -> list[str]:
    """The report's headline, for a human, after the JSON (README "Quickstart" explains them)."""
    f, sp = report["frames"], report["options"]["speed"]
    lat = report["latency_s"]["sample_to_archive_last_sample"]
    out = [f"frames: {f['built']} built, {f['delivered']} archived at the relay, {f['lost']} lost, "
           f"{f['quarantined']} quarantined; sample -> archive p50 {_s(lat['p50'])} simulated"]
    ev = report.get("events")
    if ev is not None:
        if ev["trigger"] is None:
            out.append("events: no trigger stage (--no-trigger)")
        else:
            out.append(f"events: {ev['decided']['on']} decided at the stations ({ev['decided']['on']} on, "
                       f"{ev['decided']['off']} off), {sum(ev['archived'].values())} event message(s) archived "
                       f"at the relay; {ev['scenario_earthquakes']} earthquake(s) in the simulated world")
            for row in ev["list"]:
                out.append(f"  {row['station']} {row['event_id']} {row['state']:>3}: onset {_s(row['onset_s'])}, "
                           f"decided {_s(row['decided_s'])}, archived {_s(row['latency_s'])} later "
                           f"({_ms(row['latency_s'], sp)} wall)")
            d = ev["latency_s"]["decision_to_archive"]
            out.append(f"  decision -> relay archive: p50 {_s(d['p50'])}, max {_s(d['max'])} simulated "
                       f"(p50 {_ms(d['p50'], sp)}, max {_ms(d['max'], sp)} wall)")
        out.append(f"event check: {ev['check']}")
    if "auxiliary" in report:
        out.append(f"auxiliary check: {report['auxiliary']['check']}")
    out += [f"failure: {why}" for why in report.get("failures", [])]
    out.append("OK" if report["ok"] else "FAILED (see the report above)")
    return out


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f} s"


def _ms(x: float | None, speed: float) -> str:
    return "-" if x is None else f"{1000 * x / speed:.0f} ms"
