"""A noble-gas driver against the detector emulator in process (``noblegas://NAME``), on one
simulated clock: the emulator's :class:`ManualClock` is also the driver's, bytes take their line
time at the port's baud rate and the loop advances the clock between polls, so hours of cycle run
in seconds and a lost reply costs simulated, not wall, seconds."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ims_station import ims20, mca
from ims_station.edge.noblegas import NobleGasDriver, settings_from_table
from ims_station.hil.noblegas.device import ManualClock, NobleGasDetector, detector_model, register, unregister
from ims_station.hil.noblegas.faults import NobleGasFaults
from ims_station.hil.noblegas.process import CycleConfig

# A one-hour cycle: collection 1 h, processing 30 min (gas background its last 5 min), acquisition
# 45 min, QC 5 min; the first gas background at 85 min.
SHORT_CYCLE = CycleConfig(collection_s=3600, processing_s=1800, gasbk_s=300, acquisition_s=2700, qc_s=300)
# High activity concentrations (mBq/m3): a 1-hour sample of 1.1 m3 of air needs them to be measured.
CONC = {"XE-133": 4000.0, "XE-131M": 1500.0, "XE-133M": 1000.0, "XE-135": 3000.0, "RN-222": 5000.0}


@dataclass
class Run:
    det: NobleGasDetector
    clock: ManualClock
    driver: NobleGasDriver
    texts: list = field(default_factory=list)          # IMS 2.0 messages as emitted (bytes)
    events: list = field(default_factory=list)
    truth: list = field(default_factory=list)          # (run s, live ticks, true ticks, memory copies) at each STOP

    _parsed: dict = field(default_factory=dict)

    def parsed(self, text: bytes):
        if id(text) not in self._parsed:
            self._parsed[id(text)] = ims20.parse(text)
        return self._parsed[id(text)]

    def messages(self):
        return [self.parsed(t) for t in self.texts]

    def of_type(self, data_type, qualifier=None):
        out = []
        for t in self.texts:
            m = self.parsed(t)
            if m.data_type == data_type and (qualifier is None or m.body.header.qualifier == qualifier):
                out.append((m, t))
        return out


def calibration_file(tmp: Path, mode: str = "bg") -> Path:
    p = tmp / f"calibration-{mode}.json"
    p.write_text(json.dumps(detector_model(mode).calibration()))
    return p


def start(name: str, tmp: Path, *, faults: NobleGasFaults | None = None, conc=None, seed: int = 1,
          cycle: CycleConfig = SHORT_CYCLE, mode: str = "bg", **table) -> Run:
    clock = ManualClock()
    det = NobleGasDetector(mode=mode, seed=seed, clock=clock, cycle=cycle, faults=faults or NobleGasFaults(),
                           concentrations=CONC if conc is None else conc)
    register(name, det)
    settings = settings_from_table({
        "url": f"noblegas://{name}", "station": "MIX58", "detector": "MIX58_222",
        "detector_type": "beta-gamma" if mode == "bg" else "hpge",
        "calibration_file": str(calibration_file(tmp, mode)), "prel_interval_s": 1200.0,
        "rmssoh_interval_s": 1800.0, "cycle_s": cycle.collection_s, "acquisition_s": cycle.acquisition_s,
        **table})
    run = Run(det, clock, None)
    run.driver = NobleGasDriver(settings, clock, emit_message=run.texts.append, emit_event=run.events.append,
                                station_code="NG01")
    handle = det.handle

    def watched(line: bytes):
        # the truth of each count: the MCA's memory when the driver stops it (the preset stopped it before)
        if line.strip().upper() == b"STOP" and not det.gone(det.now()):
            det.poll()
            mem = det.memory()
            run.truth.append((det.now(), math.floor(det.live_s * mca.TICKS_PER_SECOND + 1e-9),
                              math.floor(det.true_s * mca.TICKS_PER_SECOND + 1e-9),
                              {k: np.array(v, copy=True) for k, v in mem.items()}))
        return handle(line)
    det.handle = watched
    return run


def advance(run: Run, until_s: float, step_s: float = 2.0) -> None:
    """Poll the driver and let simulated time pass until the emulator's run second *until_s*."""
    while run.clock.monotonic() < until_s:
        run.driver.poll()
        run.clock.advance(step_s)


def stop(name: str, run: Run) -> None:
    run.driver.close()
    unregister(name)
