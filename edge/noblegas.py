"""The noble-gas driver: the station file's ``[noble_gas]`` table and the stage that runs a radioxenon
system's acquisition cycle over its serial line and reports it as IMS 2.0 messages.

Owns:

* :class:`NobleGasSettings` -- the ``[noble_gas]`` table (:data:`SCHEMA`, merged into
  ``edge/config.py``'s, and :data:`DEFAULTS`; docs/configuration.md documents both), every refusal a
  ``ConfigError(file, "noble_gas.<key>", reason)``;
* :class:`NobleGasDriver` -- the cycle, driven by :meth:`NobleGasDriver.poll` without ever blocking:
  each command of the MCA dialect (``ims_station/mca.py``) is written, its reply collected on later
  polls (the port is opened with timeout 0), retried after a garbled record, a checksum error, an
  out-of-step record or a timeout (after a quiet pause and a drain of the input, so a late reply
  cannot answer the next command), and the port is re-opened with exponential backoff when the
  detector stops answering.  The sequences (arm a count, read the spectra, ...) are generators that
  yield commands and receive replies, so the logic reads top-down while the I/O stays non-blocking.
  Every fault is counted (:meth:`NobleGasDriver.stats`, the station's SOH);
* the local alarms (SOH values out of range, preliminary-spectrum ROI net counts above thresholds,
  system faults): each raises its ALERT_* message and an event document (``type`` ``noble_gas_alert``);
* :class:`NobleGasStage` -- the stage registered once in ``edge/station.STAGES`` as ``noble_gas``.

What the cycle is (docs/noblegas.md, "The driver"): the process controller runs the sampling
cycle on its own; the driver watches its state of health (``SHOW_SOH``) every ``status_interval_s``
and counts each cell phase with the MCA: ``DETBK``, ``CALIB`` (the calibration spike), ``GASBK``,
``ACQUIRE`` (the sample) and ``QC`` are each armed (stop, clear, true-time preset = the rest of the
phase, start) when the phase is seen and read out when the preset has stopped the count, as DETBKPHD,
CALIBPHD, GASBKPHD, SAMPLEPHD (FULL) and QCPHD; during ``ACQUIRE`` a SAMPLEPHD PREL every ``prel_interval_s`` of detector time.
RMSSOH every ``rmssoh_interval_s`` of detector time.  Times inside the messages are the detector's;
the alarms' event times are the station's clock.

Does not own: the dialect (``ims_station/mca.py``), the message format (``ims_station/ims20``), the
message builders (``edge/noblegas_messages.py``), the durable signed path (``StageContext.emit_message``
and ``emit_event``, ``edge/station.py``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Generator

import numpy as np

from ims_station import mca
from ims_station.errors import ConfigError
from ims_station.logutil import RateLimitedLog

from ims_station.ims20.format import measurement_id

from .noblegas_messages import (CalibrationError, DetectorCalibration, Measurement, alert_message, phd_message,
                                rmssoh_message, roi_net, utc)

log = logging.getLogger(__name__)

COUNTED_PHASES = ("DETBK", "CALIB", "GASBK", "ACQUIRE", "QC")
EXCHANGES_PER_POLL = 256        # commands answered within one poll at most (an in-process detector answers at once)

# Every key of [noble_gas] and its default (docs/configuration.md shows the same; a test compares them).
DEFAULTS: dict[str, Any] = {
    "url": None,                      # required
    "baudrate": 115200,
    "detector_type": "beta-gamma",
    "station": None,                  # required: IMS 2.0 station code
    "detector": None,                 # required: IMS 2.0 detector code
    "calibration_file": "",
    "calibration_uncertainty": 0.01,
    "status_interval_s": 30.0,
    "prel_interval_s": 7200.0,
    "rmssoh_interval_s": 3600.0,
    "cycle_s": 43200.0,
    "acquisition_s": 39600.0,
    "timing_tolerance": 0.05,
    "reply_timeout_s": 2.0,
    "retries": 3,
    "resync_quiet_s": 2.0,
    "reconnect_initial_s": 1.0,
    "reconnect_max_s": 60.0,
    "hv_set_v": 0,
    "roi_thresholds": {},
    "soh": {},
}

# [noble_gas.soh]: reading -> [low, high]; outside -> the alarm of that reading (and its ALERT type).
SOH_DEFAULTS: dict[str, list[float]] = {
    "flow": [1.0, 3.0],               # m3/h, FLOW
    "dp_trap": [2.0, 40.0],           # kPa, DP_TRAP
    "t_room": [10.0, 35.0],           # degC, T_ROOM
    "t_det": [5.0, 35.0],             # degC, T_DET
    "hv": [0.95, 1.05],               # HV / HV_SET
    "p_amb": [900.0, 1100.0],         # hPa, P_AMB
    "ups_charge": [50.0, 100.0],      # %, UPS_CHARGE
}
SOH_READING = {"flow": "FLOW", "dp_trap": "DP_TRAP", "t_room": "T_ROOM", "t_det": "T_DET", "hv": "HV",
               "p_amb": "P_AMB", "ups_charge": "UPS_CHARGE"}
SOH_ALERT = {"flow": "ALERT_FLOW", "dp_trap": "ALERT_FLOW", "t_room": "ALERT_TEMP", "t_det": "ALERT_TEMP",
             "hv": "ALERT_SYSTEM", "p_amb": "ALERT_SYSTEM", "ups_charge": "ALERT_UPS", "mains": "ALERT_UPS"}

_NUM = {"type": "number"}
_RANGE = {"type": "array", "minItems": 2, "maxItems": 2, "items": _NUM}
SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["url", "station", "detector"],
    "properties": {
        "url": {"type": "string", "minLength": 1, "maxLength": 512},
        "baudrate": {"type": "integer", "minimum": 300, "maximum": 12_000_000},
        "detector_type": {"enum": ["beta-gamma", "hpge"]},
        "station": {"type": "string", "pattern": "^[A-Z0-9_]{1,16}$"},
        "detector": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,32}$"},
        "calibration_file": {"type": "string", "maxLength": 1024},
        "calibration_uncertainty": {"type": "number", "minimum": 0, "maximum": 1},
        "status_interval_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 3600},
        "prel_interval_s": {"type": "number", "minimum": 0, "maximum": 86400},
        "rmssoh_interval_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 86400},
        "cycle_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 7 * 86400},
        "acquisition_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 7 * 86400},
        "timing_tolerance": {"type": "number", "minimum": 0, "maximum": 1},
        "reply_timeout_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 60},
        "retries": {"type": "integer", "minimum": 0, "maximum": 20},
        "resync_quiet_s": {"type": "number", "minimum": 0, "maximum": 60},
        "reconnect_initial_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 3600},
        "reconnect_max_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 86400},
        "hv_set_v": {"type": "integer", "minimum": 0, "maximum": 5000},
        "roi_thresholds": {"type": "object", "propertyNames": {"pattern": "^([1-9]|10)$"},
                           "additionalProperties": {"type": "number", "minimum": 0}},
        "soh": {"type": "object", "additionalProperties": False,
                "properties": {k: _RANGE for k in SOH_DEFAULTS}},
    },
}


@dataclass(frozen=True)
class NobleGasSettings:
    """The resolved ``[noble_gas]`` table (times in seconds)."""

    url: str
    station: str
    detector: str
    baudrate: int = 115200
    detector_type: str = "beta-gamma"
    calibration: DetectorCalibration | None = None
    status_interval_s: float = 30.0
    prel_interval_s: float = 7200.0
    rmssoh_interval_s: float = 3600.0
    cycle_s: float = 43200.0
    acquisition_s: float = 39600.0
    timing_tolerance: float = 0.05
    reply_timeout_s: float = 2.0
    retries: int = 3
    resync_quiet_s: float = 2.0
    reconnect_initial_s: float = 1.0
    reconnect_max_s: float = 60.0
    hv_set_v: int = 0                                      # 0: the set point the detector last reported
    roi_thresholds: dict = field(default_factory=dict)     # roi (int) -> net counts
    soh: dict = field(default_factory=lambda: {k: tuple(v) for k, v in SOH_DEFAULTS.items()})

    @property
    def beta_gamma(self) -> bool:
        return self.detector_type == "beta-gamma"


def settings_from_table(table: dict, file: str = "<noble_gas>", base: Any = None) -> NobleGasSettings:
    """A validated ``[noble_gas]`` table -> settings; semantic errors name ``noble_gas.<key>``."""
    from pathlib import Path

    def err(key: str, reason: str) -> ConfigError:
        return ConfigError(file, f"noble_gas.{key}", reason)

    for key in SCHEMA["required"]:
        if key not in table:
            raise err(key, "required")
    t = {**{k: v for k, v in DEFAULTS.items() if v is not None}, **table}
    soh = {k: tuple(float(x) for x in v) for k, v in SOH_DEFAULTS.items()}
    for k, v in dict(t.get("soh", {})).items():
        if k not in SOH_DEFAULTS:
            raise err(f"soh.{k}", f"unknown reading (known: {', '.join(SOH_DEFAULTS)})")
        lo, hi = float(v[0]), float(v[1])
        if not lo < hi:
            raise err(f"soh.{k}", f"low {lo:g} must be below high {hi:g}")
        soh[k] = (lo, hi)
    if t["reconnect_max_s"] < t["reconnect_initial_s"]:
        raise err("reconnect_max_s", f"{t['reconnect_max_s']:g} is below reconnect_initial_s "
                                     f"{t['reconnect_initial_s']:g}")
    if t["acquisition_s"] > t["cycle_s"]:
        raise err("acquisition_s", f"{t['acquisition_s']:g} s is longer than cycle_s {t['cycle_s']:g} s")
    cal = None
    if t["calibration_file"]:
        p = Path(t["calibration_file"])
        if not p.is_absolute() and base is not None:
            p = Path(base) / p
        try:
            cal = DetectorCalibration.load(p, float(t["calibration_uncertainty"]))
        except CalibrationError as e:
            raise err("calibration_file", str(e)) from None
    rois = {int(k): float(v) for k, v in dict(t["roi_thresholds"]).items()}
    if rois and t["detector_type"] != "beta-gamma":
        raise err("roi_thresholds", "ROI alarms need a beta-gamma detector (ROIs are beta-gamma regions)")
    if rois and (cal is None or not cal.roi_limits):
        raise err("roi_thresholds", "ROI alarms need calibration_file with roi_limits and energy calibrations")
    missing = [r for r in rois if cal is not None and r not in cal.roi_limits]
    if missing:
        raise err(f"roi_thresholds.{missing[0]}", "no such ROI in the calibration's roi_limits")
    return NobleGasSettings(
        url=t["url"], station=t["station"], detector=t["detector"], baudrate=int(t["baudrate"]),
        detector_type=t["detector_type"], calibration=cal, status_interval_s=float(t["status_interval_s"]),
        prel_interval_s=float(t["prel_interval_s"]), rmssoh_interval_s=float(t["rmssoh_interval_s"]),
        cycle_s=float(t["cycle_s"]), acquisition_s=float(t["acquisition_s"]),
        timing_tolerance=float(t["timing_tolerance"]), reply_timeout_s=float(t["reply_timeout_s"]),
        retries=int(t["retries"]), resync_quiet_s=float(t["resync_quiet_s"]),
        reconnect_initial_s=float(t["reconnect_initial_s"]), reconnect_max_s=float(t["reconnect_max_s"]),
        hv_set_v=int(t["hv_set_v"]), roi_thresholds=rois, soh=soh)


def settings_from_station(station_cfg: Any) -> NobleGasSettings:
    """The ``[noble_gas]`` table of a loaded station file (relative paths from the file's directory)."""
    file = getattr(station_cfg, "file", None)
    base = file.parent if file is not None and hasattr(file, "parent") else None
    return settings_from_table(station_cfg.raw.get("noble_gas", {}), file=str(file), base=base)


# ------------------------------------------------------------------------------------------ driver


@dataclass(frozen=True)
class Cmd:
    verb: str
    args: tuple[int, ...] = ()


class CommandFailed(Exception):
    """A command that got no valid reply after every retry (``timeouts``: all attempts timed out)."""

    def __init__(self, verb: str, cause: str, timeouts: bool) -> None:
        super().__init__(f"{verb}: {cause}")
        self.verb = verb
        self.timeouts = timeouts


class DetectorRestarted(Exception):
    """The detector answered a power-up acknowledge: its memory and presets are gone."""


def _fnum(fields: dict, key: str) -> float | None:
    try:
        v = float(fields[key])
    except (KeyError, TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _same_phase(a: tuple | None, b: tuple | None) -> bool:
    """(phase, start) keys of one phase: the start is TIME - PHASE_ELAPSED, each read to 0.1 s."""
    return a is not None and b is not None and a[0] == b[0] and abs(a[1] - b[1]) < 5.0


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class NobleGasDriver:
    """The acquisition cycle against one detector (see the module docstring).  *emit_message(text)*
    commits one IMS 2.0 message; *emit_event(doc)* one event document; *opener(url, baudrate)*
    opens the port (default ``serialport.open_port`` with timeout 0)."""

    def __init__(self, settings: NobleGasSettings, clock: Any, *, emit_message: Callable[[bytes], Any],
                 emit_event: Callable[[dict], Any] | None = None, alarm: Callable[[dict], None] | None = None,
                 opener: Callable[..., Any] | None = None, station_code: str | None = None) -> None:
        self.s = settings
        self.clock = clock
        self._emit_message = emit_message
        self._emit_event = emit_event
        self._alarm = alarm
        self._opener = opener
        self.station_code = station_code or settings.station
        self.port = None
        self._log = RateLimitedLog(log, clock, rate=1 / 60, burst=3)
        self.splitter = mca.LineSplitter(mca.MAX_REPLY + 8)
        self.counters = {k: 0 for k in (
            "commands", "replies", "garbled", "checksum_errors", "timeouts", "out_of_step", "refused",
            "retries", "commands_failed", "power_ups", "reconnects", "open_failures", "detector_lost",
            "counts_lost", "overlong", "aborted", "hv_restored", "messages", "alerts", "events", "emit_errors", "task_errors",
            "measurements", "prel")}
        self.messages: dict[str, int] = {}
        self.alerts: dict[str, int] = {}
        # I/O state
        self._task: Generator | None = None
        self._task_name = ""
        self._cmd: Cmd | None = None
        self._sent_at = 0.0
        self._attempt = 0
        self._attempt_faults: list[str] = []
        self._quiet_until: float | None = None
        self._reopen_at = clock.monotonic()
        self._backoff = settings.reconnect_initial_s
        self._lost = False
        self._next_status = clock.monotonic()
        self._restart_seen = False
        self._hv_set = 0.0
        # cycle state
        self.soh: dict = {}
        self.det_time: float | None = None
        self.phase = ""
        self.phase_key: tuple | None = None
        self.armed: Measurement | None = None
        self.armed_key: tuple | None = None
        self._done_keys: list[tuple] = []
        self._last_prel = -math.inf
        self._last_ids: dict[str, str] = {}
        self._background: Measurement | None = None     # last GASBK (else DETBK) count, for net ROI counts
        self._last_full: float | None = None
        self._soh_rows: list[tuple[float, dict]] = []
        self._rms_start: float | None = None
        self.active_alarms: dict[str, dict] = {}
        self._roi_raised: list[str] = []
        self._msg_n = 0
        self.cycles = 0

    # ---------------------------------------------------------------- port
    def _open(self) -> None:
        opener = self._opener
        if opener is None:
            from .serialport import open_port

            def opener(url, baudrate):
                return open_port(url, baudrate=baudrate, timeout=0)
        self.port = opener(self.s.url, self.s.baudrate)
        self.splitter.reset()

    def _close(self) -> None:
        p, self.port = self.port, None
        if p is not None:
            try:
                p.close()
            except Exception:        # closing a broken port: nothing more to do
                pass

    def close(self) -> None:
        if self._task is not None:
            self._task.close()
            self._task = None
        self._close()

    # ---------------------------------------------------------------- the poll loop
    def poll(self) -> None:
        """One turn: open the port if due, move the current sequence on by every reply that has
        arrived (at most :data:`EXCHANGES_PER_POLL`), start the next sequence when one is due."""
        now = self.clock.monotonic()
        if self.port is None:
            if now < self._reopen_at:
                return
            try:
                self._open()
            except Exception as err:
                self.counters["open_failures"] += 1
                self._log("open", logging.WARNING, "noble_gas: cannot open %s: %s", self.s.url, err)
                self._schedule_reopen(now)
                return
            if self._lost:
                self.counters["reconnects"] += 1
        for _ in range(EXCHANGES_PER_POLL):
            if not self._turn():
                break

    def _turn(self) -> bool:
        """Make progress once; False when there is nothing more to do in this poll."""
        now = self.clock.monotonic()
        if self._cmd is None:
            if self._task is None:
                self._task = self._next_task(now)
                if self._task is None:
                    return False
                return self._advance(None)
            return False
        if self._quiet_until is not None:
            if now < self._quiet_until:
                return False
            self._quiet_until = None
            try:
                self.port.reset_input_buffer()
            except Exception as err:
                return self._port_broken(err)
            self.splitter.reset()
            self._send()
            return True
        try:
            n = self.port.in_waiting
            data = self.port.read(n) if n else b""
        except Exception as err:
            return self._port_broken(err)
        lines = self.splitter.feed(data) if data else []
        if self.splitter.overlong:
            self.counters["overlong"] += self.splitter.overlong
            self.splitter.overlong = 0
        if lines:
            return self._reply(lines[0], len(lines) > 1)
        if now - self._sent_at >= self.s.reply_timeout_s:
            self.counters["timeouts"] += 1
            return self._fault("timeout")
        return False

    def _send(self) -> None:
        cmd = self._cmd
        self.counters["commands"] += 1
        self._sent_at = self.clock.monotonic()
        try:
            self.port.write(mca.encode_command(cmd.verb, *cmd.args))
        except Exception as err:
            self._port_broken(err)

    def _reply(self, line: bytes, more: bool) -> bool:
        cmd = self._cmd
        try:
            rep = mca.expect(cmd.verb, mca.parse_reply(line))
            if more:
                raise mca.UnexpectedReply(f"{cmd.verb}: more than one record came back")
            if isinstance(rep, mca.Block):
                start, count = cmd.args
                if rep.start != start or len(rep.values) != count:
                    raise mca.UnexpectedReply(f"SHOW_DATA {start},{count}: block {rep.start}+{len(rep.values)}")
        except mca.ChecksumError:
            self.counters["checksum_errors"] += 1
            return self._fault("checksum")
        except mca.GarbledReply:
            self.counters["garbled"] += 1
            return self._fault("garbled")
        except mca.UnexpectedReply:
            self.counters["out_of_step"] += 1
            return self._fault("out of step")
        except mca.DeviceError as err:
            if err.code == mca.POWER_UP:
                # The device restarted and did not execute the command: send it again.
                self.counters["power_ups"] += 1
                self._restart_seen = True
                self._log("powerup", logging.WARNING, "noble_gas: the detector restarted (power-up acknowledge)")
                self._send()
                return True
            self.counters["refused"] += 1
            self._cmd = None
            return self._advance(None, err)
        self.counters["replies"] += 1
        self._cmd = None
        return self._advance(rep)

    def _fault(self, what: str) -> bool:
        """A bad or missing reply: retry after a quiet pause and a drain, or give the command up."""
        self._attempt_faults.append(what)
        if self._attempt < self.s.retries:
            self._attempt += 1
            self.counters["retries"] += 1
            self._quiet_until = self.clock.monotonic() + self.s.resync_quiet_s
            return True
        cmd, faults = self._cmd, list(self._attempt_faults)
        self._cmd = None
        self.counters["commands_failed"] += 1
        if all(f == "timeout" for f in faults):
            self._detector_lost(f"{cmd.verb}: no reply to {len(faults)} attempts")
            return False
        return self._advance(None, CommandFailed(cmd.verb, ", ".join(faults), timeouts=False))

    def _port_broken(self, err: Exception) -> bool:
        self._log("port", logging.WARNING, "noble_gas: port %s failed: %s: %s", self.s.url, type(err).__name__, err)
        self._cmd = None
        self._detector_lost(f"port error: {type(err).__name__}: {err}")
        return False

    def _detector_lost(self, why: str) -> None:
        now = self.clock.monotonic()
        if self._task is not None:
            self._task.close()
            self._task = None
        self._close()
        self._schedule_reopen(now)
        if not self._lost:
            self._lost = True
            self.counters["detector_lost"] += 1
            self._raise("detector_lost", "ALERT_SYSTEM", f"detector not responding on {self.s.url}: {why}")
        self._next_status = now

    def _schedule_reopen(self, now: float) -> None:
        self._reopen_at = now + self._backoff
        self._backoff = min(self._backoff * 2, self.s.reconnect_max_s)

    def _advance(self, reply: Any, exc: BaseException | None = None) -> bool:
        """Move the current sequence on with *reply* (or throw *exc* into it)."""
        task = self._task
        try:
            cmd = task.throw(exc) if exc is not None else task.send(reply)
        except StopIteration:
            self._task = None
            return True
        except (CommandFailed, mca.DeviceError) as err:
            # the sequence could not go on (counted above); the next status check starts over
            self._task = None
            self.counters["aborted"] += 1
            self._log("abort", logging.WARNING, "noble_gas: %s abandoned: %s", self._task_name, err)
            return True
        except Exception as err:       # a sequence failing must never stop the station
            self._task = None
            self.counters["task_errors"] += 1
            self._log("task", logging.ERROR, "noble_gas: %s failed: %s: %s", self._task_name, type(err).__name__, err)
            return True
        self._cmd = cmd
        self._attempt = 0
        self._attempt_faults = []
        self._send()
        return True

    # ---------------------------------------------------------------- scheduling
    def _next_task(self, now: float) -> Generator | None:
        if now < self._next_status:
            return None
        self._next_status = now + self.s.status_interval_s
        self._task_name = "status"
        return self._status_task()

    def _status_task(self) -> Generator:
        """Read the SOH, then do what the cell phase calls for."""
        soh = (yield Cmd("SHOW_SOH")).fields
        if self._lost:
            self._lost = False
            self._backoff = self.s.reconnect_initial_s
            self._clear("detector_lost")
        self._take_soh(soh)
        t = self.det_time
        if t is None:
            return                           # no usable reading yet: nothing can be decided
        if self._restart_seen:
            self._restart_seen = False
            if self.armed is not None:
                self.counters["counts_lost"] += 1
                self.armed.restarted = True
                again = ("re-armed for the rest of the phase" if self.armed.kind == self.phase
                         else f"no {self.armed.kind} message for it")
                self._raise_once("restart", "ALERT_SYSTEM", f"detector restarted during the {self.armed.kind} count "
                                 f"(SRID {self.armed.sample.get('SRID', '0')}): counts lost, {again}")
                self.armed_key = None          # re-arm below for the rest of the phase
        if self.armed is not None and self.armed_key is not None:
            active = (yield Cmd("SHOW_ACTIVE")).value
            if not active or not _same_phase(self.armed_key, self.phase_key):
                yield from self._finish(stopped_itself=not active)
            elif self.armed.kind == "ACQUIRE" and self.s.prel_interval_s > 0 and t - self._last_prel >= self.s.prel_interval_s:
                yield from self._prel()
        if (self.phase in COUNTED_PHASES and not any(_same_phase(k, self.phase_key) for k in self._done_keys)
                and (self.armed is None or self.armed_key is None)):
            yield from self._arm(soh)
        self._check_overdue()
        if self._rms_start is not None and t - self._rms_start >= self.s.rmssoh_interval_s:
            self._emit_rmssoh(t)
        left = _fnum(self.soh, "PHASE_LEFT")
        if left is not None and self.armed is not None:
            # look again just after the count's preset ends (assumes the two clocks run at one rate;
            # otherwise the status interval still catches it)
            self._next_status = min(self._next_status, self.clock.monotonic() + left + 0.5)

    def _take_soh(self, soh: dict) -> None:
        t = _fnum(soh, "TIME")
        if t is None:
            return
        self.soh = soh
        self.det_time = t
        self.phase = str(soh.get("PHASE", ""))
        el = _fnum(soh, "PHASE_ELAPSED") or 0.0
        self.phase_key = (self.phase, t - el)
        if self._rms_start is None:
            self._rms_start = t
        hv_set = _fnum(soh, "HV_SET")
        if hv_set:
            self._hv_set = hv_set
        if len(self._soh_rows) < 10_000:
            self._soh_rows.append((t, dict(soh)))
        self._check_soh(soh)

    def _arm(self, soh: dict) -> Generator:
        key = self.phase_key
        sample = (yield Cmd("SHOW_SAMPLE")).fields
        # the rest of the phase, read now (reading the previous count out took a minute)
        now = (yield Cmd("SHOW_SOH")).fields
        if str(now.get("PHASE")) != self.phase:
            return                                 # the phase ended meanwhile: the next status check sees it
        ticks = int(min(_fnum(now, "PHASE_LEFT") or 0.0, 7 * 86400.0) * mca.TICKS_PER_SECOND)
        if ticks <= mca.TICKS_PER_SECOND:
            return
        hv = int(self.s.hv_set_v or self._hv_set)
        if (_fnum(now, "HV_SET") or 0) == 0 and hv > 0:
            # the HV is off (a restarted detector comes back so): set it as it was, switch it on
            yield Cmd("SET_HV", (hv,))
            yield Cmd("ENABLE_HV")
            self.counters["hv_restored"] += 1
        yield Cmd("STOP")
        yield Cmd("CLEAR")
        yield Cmd("CLEAR_PRESET")
        yield Cmd("SET_TRUE_PRESET", (ticks,))
        if (yield Cmd("SHOW_TRUE_PRESET")).value != ticks:         # a garbled argument goes undetected
            raise CommandFailed("SET_TRUE_PRESET", "read back a different preset", timeouts=False)
        try:
            yield Cmd("START")
        except mca.DeviceError as err:
            self._raise_once("start_refused", "ALERT_SYSTEM",
                             f"START of the {self.phase} count (SRID {sample.get('SRID', '0')}) refused: {err} "
                             f"(HV {now.get('HV')} V, set {now.get('HV_SET')} V); retried at the next status check")
            return
        after = (yield Cmd("SHOW_SOH")).fields
        true_ticks = (yield Cmd("SHOW_TRUE")).value
        t_after = _fnum(after, "TIME") or self.det_time
        prev = self.armed
        self.armed = Measurement(kind=self.phase, start=t_after - true_ticks / mca.TICKS_PER_SECOND, sample=sample,
                                 restarted=bool(prev is not None and prev.restarted and prev.kind == self.phase),
                                 preset_s=ticks / mca.TICKS_PER_SECOND)
        self.armed_key = key
        self._last_prel = self.armed.start

    def _read_memory(self, meas: Measurement) -> Generator:
        meas.live_s = (yield Cmd("SHOW_LIVE")).value / mca.TICKS_PER_SECOND
        meas.real_s = (yield Cmd("SHOW_TRUE")).value / mca.TICKS_PER_SECOND
        segs = {0: "hist", 1: "beta", 2: "gamma"} if self.s.beta_gamma else {0: "gamma"}
        for seg, what in segs.items():
            yield Cmd("SET_SEGMENT", (seg,))
            n = (yield Cmd("SHOW_GAIN_CONVERSION")).value
            if not 0 < n <= 65536:
                raise CommandFailed("SHOW_GAIN_CONVERSION", f"segment {seg} of {n} channels", timeouts=False)
            data = np.zeros(n, dtype=np.int64)
            for start in range(0, n, mca.MAX_BLOCK):
                count = min(mca.MAX_BLOCK, n - start)
                data[start:start + count] = (yield Cmd("SHOW_DATA", (start, count))).values
            if what == "hist":
                side = int(round(math.sqrt(n)))
                if side * side != n:
                    raise CommandFailed("SHOW_GAIN_CONVERSION", f"histogram of {n} channels is not square",
                                        timeouts=False)
                data = data.reshape(side, side)
            setattr(meas, what, data)
        if meas.live_s > meas.real_s:
            raise CommandFailed("SHOW_LIVE", f"live {meas.live_s} s above real {meas.real_s} s", timeouts=False)

    def _finish(self, stopped_itself: bool = True) -> Generator:
        meas, key = self.armed, self.armed_key
        yield Cmd("STOP")
        yield from self._read_memory(meas)
        self.armed, self.armed_key = None, None
        self._done_keys = (self._done_keys + [key])[-8:]
        self._emit_phd(meas, "FULL")
        self.counters["measurements"] += 1
        if meas.kind in ("GASBK", "DETBK") and meas.hist is not None:
            if meas.kind == "GASBK" or self._background is None or self._background.kind == "DETBK":
                self._background = meas
        srid = meas.sample.get("SRID", "0")
        if stopped_itself and meas.preset_s and meas.real_s < meas.preset_s - 1.0 and not meas.restarted:
            # the MCA stopped before its preset and no power-up was seen (a restart whose power-up
            # acknowledge was lost on the line, or someone else's STOP): these counts are incomplete
            self.counters["counts_lost"] += 1
            self._raise_once("count_stopped", "ALERT_SYSTEM", f"the {meas.kind} count (SRID {srid}) stopped after "
                             f"{meas.real_s:.0f} s of its {meas.preset_s:.0f} s preset: counts missing")
        if meas.kind == "ACQUIRE":
            self.cycles += 1
            self._last_full = self.det_time
            exp = self.s.acquisition_s
            if abs(meas.real_s - exp) > self.s.timing_tolerance * exp:
                self._raise_once("short_count", "ALERT_SYSTEM",
                                 f"sample {meas.sample.get('SRID', '0')} counted {meas.real_s:.0f} s real time, "
                                 f"expected {exp:.0f} s (+/- {100 * self.s.timing_tolerance:g} %)"
                                 + (": the detector restarted during the count" if meas.restarted else ""))

    def _prel(self) -> Generator:
        meas = Measurement(kind="ACQUIRE", start=self.armed.start, sample=self.armed.sample)
        yield from self._read_memory(meas)
        self._last_prel = self.det_time
        self.counters["prel"] += 1
        self._emit_phd(meas, "PREL")
        self._check_roi(meas)

    # ---------------------------------------------------------------- messages
    def _msg_id(self, t: float) -> str:
        self._msg_n += 1
        return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y%m%d%H%M%S") + f"{self._msg_n % 1000:03d}"

    def _emit(self, data_type: str, text: str) -> None:
        try:
            self._emit_message(text.encode("ascii"))
        except Exception as err:
            self.counters["emit_errors"] += 1
            self._log("emit", logging.ERROR, "noble_gas: %s not committed: %s: %s", data_type, type(err).__name__, err)
            return
        self.counters["messages"] += 1
        self.messages[data_type] = self.messages.get(data_type, 0) + 1

    def _emit_phd(self, meas: Measurement, qualifier: str) -> None:
        t = self.det_time
        _, text = phd_message(meas, qualifier=qualifier, station=self.s.station, detector=self.s.detector,
                              beta_gamma=self.s.beta_gamma, calibration=self.s.calibration, msg_id=self._msg_id(t),
                              transmit=t, detbk_id=self._last_ids.get("DETBK"), gasbk_id=self._last_ids.get("GASBK"))
        if qualifier == "FULL" and meas.kind in ("DETBK", "GASBK"):
            self._last_ids[meas.kind] = measurement_id(self.s.detector, utc(meas.start))
        self._emit({"ACQUIRE": "SAMPLEPHD"}.get(meas.kind, meas.kind + "PHD") + ("" if qualifier == "FULL" else "/PREL"),
                   text)

    def _emit_rmssoh(self, t: float) -> None:
        rows, self._soh_rows = self._soh_rows, []
        start, self._rms_start = self._rms_start, t
        if not rows:
            return
        try:
            _, text = rmssoh_message(rows, station=self.s.station, detector=self.s.detector,
                                     msg_id=self._msg_id(t), transmit=t, period_start=start, period_stop=t)
        except Exception as err:       # a reading the format cannot carry: counted, never fatal
            self.counters["task_errors"] += 1
            self._log("rmssoh", logging.ERROR, "noble_gas: RMSSOH not built: %s: %s", type(err).__name__, err)
            return
        self._emit("RMSSOH", text)

    # ---------------------------------------------------------------- alarms
    def _check_soh(self, soh: dict) -> None:
        for key, (lo, hi) in self.s.soh.items():
            v = _fnum(soh, SOH_READING[key])
            if v is None:
                continue
            shown = v
            if key == "hv":
                hv_set = _fnum(soh, "HV_SET") or 0.0
                v = v / hv_set if hv_set > 0 else 0.0
            bad = not lo <= v <= hi
            if bad:
                self._raise(f"soh_{key}", SOH_ALERT[key],
                            f"{SOH_READING[key]} {shown:g} outside [{lo:g}, {hi:g}]"
                            + (f" of HV_SET {soh.get('HV_SET')}" if key == "hv" else ""),
                            value=shown, low=lo, high=hi)
            else:
                self._clear(f"soh_{key}")
        mains = _fnum(soh, "MAINS")
        if mains is not None and (mains == 0 or str(soh.get("UPS", "")) == "BATTERY"):
            self._raise("soh_mains", "ALERT_UPS", f"mains lost, UPS on {soh.get('UPS')} ({soh.get('UPS_CHARGE')} %)",
                        value=mains)
        elif mains is not None:
            self._clear("soh_mains")

    def _check_roi(self, meas: Measurement) -> None:
        cal = self.s.calibration
        if not self.s.roi_thresholds or cal is None or meas.hist is None:
            return
        net = roi_net(cal, meas, self._background)
        srid = meas.sample.get("SRID", "0")
        for roi, thr in sorted(self.s.roi_thresholds.items()):
            v = net.get(roi)
            if v is None:
                continue
            key = f"roi_{roi}_{srid}"
            if v > thr and key not in self._roi_raised:
                self._roi_raised = (self._roi_raised + [key])[-64:]
                self._raise_once(key, "ALERT_SYSTEM", f"PREL sample {srid}: ROI {roi} net counts {v:.0f} above "
                                 f"threshold {thr:g} (live {meas.live_s:.0f} s)", value=round(v, 1), high=thr,
                                 roi=roi, srid=srid)

    def _check_overdue(self) -> None:
        if self._last_full is None or self.det_time is None:
            return
        late = self.det_time - self._last_full
        if late > self.s.cycle_s * (1 + self.s.timing_tolerance) + self.s.status_interval_s:
            self._raise("overdue", "ALERT_SYSTEM", f"no SAMPLEPHD FULL for {late / 3600:.1f} h (cycle "
                        f"{self.s.cycle_s / 3600:g} h)", value=round(late))
        else:
            self._clear("overdue")

    def _raise(self, key: str, alert_type: str, description: str, **extra: Any) -> None:
        """Alarm *key* on: its ALERT message and an ``on`` event, once until it clears."""
        if key in self.active_alarms:
            return
        now = self.clock.time()
        doc = {"type": "noble_gas_alert", "state": "on", "event_id": f"{self.station_code}-NG-{key}-{round(now * 1e6)}",
               "alarm": key, "alert_type": alert_type, "time": _iso(now), "onset_s": now, "end_s": None,
               "duration": None, "decided_s": now, "stations": [self.station_code], "detail": description,
               "detector_time_s": self.det_time, **extra}
        self.active_alarms[key] = doc
        self._alert(alert_type, description, doc)

    def _raise_once(self, key: str, alert_type: str, description: str, **extra: Any) -> None:
        """A fault that is an instant, not a state: ALERT and ``on`` event each time it happens."""
        self._raise(key, alert_type, description, **extra)
        self.active_alarms.pop(key, None)

    def _clear(self, key: str) -> None:
        doc = self.active_alarms.pop(key, None)
        if doc is None:
            return
        now = self.clock.time()
        off = {**doc, "state": "off", "end_s": now, "duration": now - doc["onset_s"], "decided_s": now,
               "detector_time_s": self.det_time}
        self._event(off)

    def _alert(self, alert_type: str, description: str, doc: dict) -> None:
        self.counters["alerts"] += 1
        self.alerts[alert_type] = self.alerts.get(alert_type, 0) + 1
        self._log("alert", logging.WARNING, "noble_gas: %s: %s", alert_type, description)
        t = self.clock.time()
        try:
            _, text = alert_message(alert_type, station=self.s.station, msg_id=self._msg_id(t), time=t,
                                    description=description)
        except Exception as err:
            self.counters["task_errors"] += 1
            self._log("alertmsg", logging.ERROR, "noble_gas: %s not built: %s", alert_type, err)
        else:
            self._emit(alert_type, text)
        self._event(doc)
        if self._alarm is not None:
            try:
                self._alarm({"alarm": "noble_gas", "alert_type": alert_type, "station": self.station_code,
                             "detail": description})
            except Exception:
                self.counters["emit_errors"] += 1

    def _event(self, doc: dict) -> None:
        if self._emit_event is None:
            return
        try:
            self._emit_event(dict(doc))
            self.counters["events"] += 1
        except Exception as err:
            self.counters["emit_errors"] += 1
            self._log("event", logging.ERROR, "noble_gas: event %s not committed: %s", doc.get("alarm"), err)

    # ---------------------------------------------------------------- SOH
    def stats(self) -> dict:
        soh = {k: self.soh.get(v) for k, v in (("time", "TIME"), ("phase_left_s", "PHASE_LEFT"), ("flow", "FLOW"),
                                               ("dp_trap", "DP_TRAP"), ("p_amb", "P_AMB"), ("t_room", "T_ROOM"),
                                               ("t_det", "T_DET"), ("hv", "HV"), ("hv_set", "HV_SET"),
                                               ("mains", "MAINS"), ("ups", "UPS"), ("ups_charge", "UPS_CHARGE"),
                                               ("coll_srid", "COLL_SRID"), ("acq_srid", "ACQ_SRID"))}
        return {
            "connected": self.port is not None and not self._lost,
            "phase": self.phase or None,
            "counting": None if self.armed is None else {"kind": self.armed.kind, "start": self.armed.start,
                                                          "srid": self.armed.sample.get("SRID")},
            "cycles": self.cycles,
            "soh": soh,
            "alarms": sorted(self.active_alarms),
            "messages": dict(self.messages),
            "alerts": dict(self.alerts),
            "faults": {k: self.counters[k] for k in ("garbled", "checksum_errors", "timeouts", "out_of_step",
                                                     "refused", "retries", "commands_failed", "power_ups",
                                                     "reconnects", "open_failures", "detector_lost", "counts_lost",
                                                     "overlong", "aborted", "emit_errors", "task_errors")},
            "counters": dict(self.counters),
        }


class NobleGasStage:
    """The stage ``("noble_gas", NobleGasStage)`` of ``edge/station.STAGES``: a
    :class:`NobleGasDriver` whose messages take ``ctx.emit_message("ims20", …)`` and whose alarms take
    ``ctx.emit_event``; driven by the gateway's :meth:`poll`.  Bad settings stop the station at
    start-up with the key named."""

    def __init__(self, ctx: Any, opener: Callable[..., Any] | None = None) -> None:
        self.ctx = ctx
        self.settings = settings_from_station(ctx.station_cfg)
        if ctx.emit_message is None:
            raise ConfigError(str(getattr(ctx.station_cfg, "file", "")), "noble_gas",
                              "this assembly has no IMS 2.0 message path")
        self.driver = NobleGasDriver(self.settings, ctx.clock,
                                     emit_message=lambda body: ctx.emit_message("ims20", body),
                                     emit_event=ctx.emit_event, alarm=ctx.alarm, opener=opener,
                                     station_code=ctx.station_cfg.code)

    def poll(self) -> None:
        self.driver.poll()

    def stats(self) -> dict:
        return self.driver.stats()

    def close(self) -> None:
        self.driver.close()
