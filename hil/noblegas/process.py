"""The process controller of the noble-gas emulator: the sampling cycle, the samples it makes, and its
state of health -- all pure functions of the (simulated) time.

Owns:

* :class:`CycleConfig` -- collection, processing, gas-background and acquisition durations, air
  flow, xenon yield, memory effect; defaults after SAUNA II / MIX (12 h collection, 6 h processing,
  30 min gas background, 11 h acquisition; ``../shared/specs/ims20.md`` §5.1).
* :class:`Schedule` -- which sample is in collection, in processing and in the detector cell at any
  time (``phase_at``), with the phases of the cell::

      DETBK      cell empty, never filled yet (the start of a run: a detector background count)
      CALIB      the last ``calib_s`` of the start-up detector background: the cell is filled with a
                 Xe-133 calibration spike (``calib_source_bq``) and counted (the calibration count);
                 the spike is pumped out before the first gas background (its memory is not modelled)
      GASBK      cell evacuated before the next sample: memory of the previous sample
      ACQUIRE    sample k in the cell
      QC         after each acquisition (every ``qc_every`` cycles): the Cs-137 check source is moved
                 beside the evacuated cell for ``qc_s`` (a quality-control count)
      EVACUATED  sample k pumped out to the archive bottle; memory remains

  Collection k runs over [k·P, (k+1)·P) (P = collection time); its processing over
  [(k+1)·P, (k+1)·P + t_proc); the cell counts the gas background over the last ``gasbk_s`` of the
  processing, and sample k over [(k+1)·P + t_proc, (k+1)·P + t_proc + t_acq).  Requires
  t_acq + t_gasbk + t_qc <= P (one cell).
* :class:`SampleRecord` -- SRID, collection times, air volume (flow integrated over the collection,
  zero during flow failures), stable-xenon volume and yield (with uncertainties), archive bottle,
  and the true concentrations the emulator was given (``truth``).
* :func:`soh` -- the state-of-health readings (flow, volume, pressures, temperatures, detector
  HV, mains/UPS), with seeded noise and the faults' effects.

Does not own: counting (``device.py``), the physics (``physics.py``), faults' parsing (``faults.py``).
"""

from __future__ import annotations

import math
import time as _time
from dataclasses import dataclass, field

import numpy as np

from ims_station import radioxenon as rx

from .faults import NobleGasFaults


@dataclass(frozen=True)
class CycleConfig:
    collection_s: float = 43_200.0
    processing_s: float = 21_600.0
    gasbk_s: float = 1_800.0
    acquisition_s: float = 39_600.0
    flow_m3h: float = 1.8                 # air flow through the sampler (MIX: 22.3 m³ in 12 h)
    xe_yield: float = 0.62                # xenon collection yield (MIX: 0.617 ± 0.054)
    xe_yield_rel_err: float = 0.087
    memory_fraction: float = 0.04         # xenon left in the cell after evacuation
    live_fraction: float = 0.9937         # MIX: 50400 live / 50719 real
    station: str = "MIX58"
    station_number: int = 58
    hv_v: int = 1150                      # detector high voltage set point
    qc_s: float = 600.0                   # QC count after an acquisition (0: none)
    qc_every: int = 1                     # ... after every n-th acquisition
    qc_source_bq: float = 50.0            # Cs-137 check source, as seen by the detector
    calib_s: float = 1_800.0              # Xe-133 calibration count at start-up, ending the DETBK (0: none)
    calib_source_bq: float = 100.0        # Xe-133 spike in the cell, as seen by the detector

    def __post_init__(self) -> None:
        for k in ("collection_s", "processing_s", "gasbk_s", "acquisition_s", "flow_m3h", "xe_yield"):
            if not getattr(self, k) > 0:
                raise ValueError(f"{k} must be > 0")
        if self.gasbk_s > self.processing_s:
            raise ValueError("gasbk_s must fit in processing_s (the gas background is counted while "
                             "the next sample is processed)")
        if self.qc_s < 0 or self.qc_every < 1 or self.qc_source_bq < 0:
            raise ValueError("qc_s and qc_source_bq must be >= 0, qc_every >= 1")
        if self.calib_s < 0 or self.calib_source_bq < 0:
            raise ValueError("calib_s and calib_source_bq must be >= 0")
        if self.calib_s >= self.collection_s + self.processing_s - self.gasbk_s:
            raise ValueError("calib_s must be shorter than the start-up detector background "
                             "(collection_s + processing_s - gasbk_s)")
        if self.acquisition_s + self.gasbk_s + self.qc_s > self.collection_s:
            raise ValueError("acquisition_s + gasbk_s + qc_s must be <= collection_s (one detector cell)")
        if not 0 < self.live_fraction <= 1 or not 0 <= self.memory_fraction < 1:
            raise ValueError("live_fraction in (0, 1], memory_fraction in [0, 1)")


@dataclass(frozen=True)
class Phase:
    name: str            # DETBK, CALIB, GASBK, ACQUIRE, QC, EVACUATED
    sample: int          # index of the sample in the cell (ACQUIRE) or the last one counted; -1: none
    start: float         # seconds from the start of the run
    end: float

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class SampleRecord:
    index: int
    srid: str
    collection_start: float      # run seconds
    collection_stop: float
    air_volume_m3: float
    xe_volume_cm3: float
    xe_volume_err_cm3: float
    xe_yield: float
    xe_yield_err: float
    archive_id: int
    acquisition_start: float
    acquisition_stop: float
    truth: dict = field(default_factory=dict)     # nuclide -> mBq/m³ given to the emulator

    @property
    def effective_volume_m3(self) -> float:
        """Air volume whose xenon is in the cell: V_Xe / 0.087 cm³·m⁻³ = sampled air × yield."""
        return self.xe_volume_cm3 / rx.STABLE_XE_CM3_PER_M3


class Schedule:
    """The cycle as a function of time (seconds from the start of the run, ``t0_utc`` at 0)."""

    def __init__(self, cfg: CycleConfig, concentrations: dict[str, float], t0_utc: float,
                 faults: NobleGasFaults | None = None, per_sample: dict[int, dict[str, float]] | None = None,
                 seed: int = 0) -> None:
        self.cfg = cfg
        self.seed = int(seed)
        self.concentrations = {k.upper(): float(v) for k, v in concentrations.items()}
        for k in self.concentrations:
            if k not in rx.HALF_LIFE_S:
                raise ValueError(f"unknown nuclide {k!r} (known: {', '.join(rx.HALF_LIFE_S)})")
        self.per_sample = per_sample or {}
        self.t0_utc = float(t0_utc)
        self.faults = faults or NobleGasFaults()
        self._samples: dict[int, SampleRecord] = {}

    # ---- phases
    def first_gasbk(self) -> float:
        c = self.cfg
        return c.collection_s + c.processing_s - c.gasbk_s

    def phase_at(self, t: float) -> Phase:
        c = self.cfg
        P = c.collection_s
        if t < self.first_gasbk():
            cal0 = self.first_gasbk() - c.calib_s
            if t < cal0:
                return Phase("DETBK", -1, 0.0, cal0)
            return Phase("CALIB", -1, cal0, self.first_gasbk())
        # the cell cycle k starts with the GASBK before sample k
        k = int(math.floor((t - self.first_gasbk()) / P))
        base = self.first_gasbk() + k * P
        acq0 = base + c.gasbk_s
        if t < acq0:
            return Phase("GASBK", k - 1, base, acq0)
        acq1 = acq0 + c.acquisition_s
        if t < acq1:
            return Phase("ACQUIRE", k, acq0, acq1)
        if c.qc_s > 0 and k % c.qc_every == 0:
            if t < acq1 + c.qc_s:
                return Phase("QC", k, acq1, acq1 + c.qc_s)
            return Phase("EVACUATED", k, acq1 + c.qc_s, base + P)
        return Phase("EVACUATED", k, acq1, base + P)

    def collecting(self, t: float) -> int:
        return int(t // self.cfg.collection_s)

    def processing(self, t: float) -> int:
        """Index of the sample in processing at *t*, or -1."""
        k = self.collecting(t) - 1
        if k >= 0 and t < (k + 1) * self.cfg.collection_s + self.cfg.processing_s:
            return k
        return -1

    # ---- samples
    def srid(self, k: int) -> str:
        t = _time.gmtime(self.t0_utc + k * self.cfg.collection_s)
        return f"{self.cfg.station_number:02d}{_time.strftime('%Y%m%d%H', t)}11"

    def sample(self, k: int) -> SampleRecord:
        if k not in self._samples:
            c = self.cfg
            t0, t1 = k * c.collection_s, (k + 1) * c.collection_s
            flowing = (t1 - t0) - self.faults.overlap("flow_fail", t0, t1)
            air = c.flow_m3h * flowing / 3600.0
            rng = np.random.default_rng([self.seed & 0xFFFFFFFF, 0x5A, k])
            y = c.xe_yield * float(np.clip(1 + 0.03 * rng.standard_normal(), 0.8, 1.2))
            vxe = air * y * rx.STABLE_XE_CM3_PER_M3
            acq0 = t1 + c.processing_s
            truth = dict(self.concentrations)
            truth.update({n.upper(): float(v) for n, v in self.per_sample.get(k, {}).items()})
            self._samples[k] = SampleRecord(
                index=k, srid=self.srid(k), collection_start=t0, collection_stop=t1, air_volume_m3=air,
                xe_volume_cm3=vxe, xe_volume_err_cm3=vxe * c.xe_yield_rel_err, xe_yield=y,
                xe_yield_err=y * c.xe_yield_rel_err, archive_id=1 + k % 40,
                acquisition_start=acq0, acquisition_stop=acq0 + c.acquisition_s, truth=truth)
        return self._samples[k]

    def activities(self, k: int, t: float) -> dict[str, float]:
        """Activities (Bq) of sample k at run time *t* (after its collection stopped)."""
        s = self.sample(k)
        v = s.effective_volume_m3
        tc = s.collection_stop - s.collection_start
        return {n: rx.sample_activity_bq(n, c, v, tc, t - s.collection_stop)
                for n, c in s.truth.items() if c > 0}

    def cell_activities(self, phase: Phase, t: float) -> dict[str, float]:
        """What the cell holds at *t* in *phase* (Bq per nuclide): the sample, and the memory of the
        previous one (xenon only; radon progeny leave with the gas)."""
        out: dict[str, float] = {}
        mem = self.cfg.memory_fraction

        def add(k: int, w: float, xenon_only: bool) -> None:
            if k < 0 or w <= 0:
                return
            for n, a in self.activities(k, t).items():
                if xenon_only and n not in rx.XENON:
                    continue
                out[n] = out.get(n, 0.0) + w * a
        if phase.name == "ACQUIRE":
            add(phase.sample, 1.0, False)
            add(phase.sample - 1, mem, True)
        elif phase.name in ("GASBK", "EVACUATED", "QC"):
            add(phase.sample, mem, True)
        if phase.name == "QC" and self.cfg.qc_source_bq > 0:
            out["CS-137"] = self.cfg.qc_source_bq
        if phase.name == "CALIB" and self.cfg.calib_source_bq > 0:
            out["XE-133"] = self.cfg.calib_source_bq
        return out


def soh(sched: Schedule, t: float, hv_set: int, hv_on: bool, rng: np.random.Generator) -> dict:
    """State-of-health readings at run time *t* (values with seeded noise, faults applied)."""
    c = sched.cfg
    f = sched.faults
    day = 2 * math.pi * ((sched.t0_utc + t) % 86_400) / 86_400
    flow_fail = f.active("flow_fail", t)
    flow = 0.0 if flow_fail else c.flow_m3h * (1 + 0.01 * rng.standard_normal())
    k = sched.collecting(t)
    t0 = k * c.collection_s
    vol = c.flow_m3h * ((t - t0) - f.overlap("flow_fail", t0, t)) / 3600.0
    power_fail = f.active("power_fail", t)
    since = f.since("power_fail", t)
    ups_charge = max(0.0, 100.0 - since / 36.0) if power_fail else 100.0
    hv = hv_actual(sched, t, hv_set, hv_on, rng)
    t_room = 22.0 + 1.5 * math.sin(day) + 0.1 * rng.standard_normal() + (18.0 if f.active("temp_high", t) else 0.0)
    proc = sched.processing(t)
    phase = sched.phase_at(t)
    cell = sched.sample(phase.sample).srid if phase.name == "ACQUIRE" else "0"
    return {
        "TIME": f"{sched.t0_utc + t:.1f}",
        "PHASE": phase.name,
        "PHASE_ELAPSED": round(t - phase.start, 1),
        "PHASE_LEFT": round(phase.end - t, 1),
        "COLL_SRID": sched.srid(k),
        "PROC_SRID": sched.srid(proc) if proc >= 0 else "0",
        "ACQ_SRID": cell,
        "FLOW": round(flow, 4),
        "FLOW_SD": round(0.0 if flow_fail else 0.01 * c.flow_m3h, 4),
        "COLL_VOLUME": round(vol, 4),
        "P_AMB": round(1013.0 + 4.0 * math.sin(day / 3) + 0.2 * rng.standard_normal(), 1),
        "DP_TRAP": round((0.0 if flow_fail else 12.5) + 0.1 * rng.standard_normal(), 2),
        "P_CELL": round(101.0 if phase.name == "ACQUIRE" else 0.05, 2),
        "T_ROOM": round(t_room, 2),
        "T_DET": round(t_room - 1.0, 2),
        "T_TRAP": round(285.0 if proc >= 0 else 35.0, 1),
        "HV": hv,
        "HV_SET": hv_set if hv_on else 0,
        "MAINS": 0 if power_fail else 1,
        "UPS": "BATTERY" if power_fail else "ONLINE",
        "UPS_CHARGE": round(ups_charge, 1),
    }


def hv_actual(sched: Schedule, t: float, hv_set: int, hv_on: bool, rng: np.random.Generator | None = None) -> int:
    """Measured detector HV (V): the set point (±1 V) or, during an HV-drop fault, 60 % of it."""
    if not hv_on:
        return 0
    v = hv_set * (0.6 if sched.faults.active("hv_drop", t) else 1.0)
    if rng is not None:
        v += rng.normal(0, 0.5)
    return max(0, int(round(v)))


def hv_ok(sched: Schedule, t: float, hv_set: int, hv_on: bool) -> bool:
    """The PMT gain is right only within 5 % of the set point; outside it no event passes the
    thresholds (the emulator's HV-drop effect)."""
    return hv_on and hv_set > 0 and not sched.faults.active("hv_drop", t)
