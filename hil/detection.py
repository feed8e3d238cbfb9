"""HIL detection run: the station's trigger on simulated seismic noise with injected events.

Owns: the detection experiment of issue 9 (must-show 3) -- a day (or any length) of Peterson-shaped
seismic noise at 40 sps (``hil/signals.py``) with events injected at known P onsets and known SNR,
fed in 1-s chunks through the station's own trigger (``edge/trigger_stage.Detector``), and the
scoring of the triggers against the injected onsets (detection rate per SNR bin, false triggers per
day, onset error) with the goal verdicts.  Also the trigger parameters tuned on it
(:data:`DEFAULT_PARAMS`).

Does not own: the trigger numerics (``edge/trigger.py``), the station's trigger stage and its TOML
keys (``edge/trigger_stage.py``, ``edge/config.py``), the signal generators (``hil/signals.py``).

The data do not depend on the trigger settings: the same seed gives the same noise, the same events
and the same amplitudes whatever detector runs on them, so settings can be compared on one data set.

**SNR** (fixed, independent of the detector): both the event's P phase alone and the noise are
band-passed in :data:`SNR_BAND` (1-8 Hz, 4-pole Butterworth, zero phase -- a measurement, not the
detector); SNR = peak |P signal| / RMS(noise in the 30 s before the onset), on the noise realization
of the reference channel (channel 0) at that place.  Each event's P amplitude is scaled so that its
SNR is the drawn value exactly.  SNRs are drawn stratified-uniformly over [2, 10) (one draw in each
of *n* equal strata, shuffled over the day), so every 1-wide bin holds *n* / 8 events.

**Events**: :class:`~ims_station.hil.signals.SeismicEvent` (P and S) at 30-400 km, P dominant
frequency log-uniform in 2-6 Hz, S at half of it and 1-3 times the P amplitude (the vertical sees S
at 0.5), P coda decay 1.5-4 s.  P onsets are spread over the day one per slot of
``duration / n`` (random place in the middle 60 % of the slot), after a 120-s warm-up.

**Scoring**: a trigger whose onset lies within :data:`TOLERANCE_S` (-1 s .. +3 s) of an injected P
onset detects it (the earliest such trigger; onset error = the station's refined pick - true
onset, the raw onset error = trigger onset - true onset, reported beside it); other
triggers starting inside an event's signal window (P onset - 1 s .. S onset + 5 S decay times) are
*later-phase* triggers of that event (S, coda), neither detections nor false; all others are false
triggers.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Sequence

import numpy as np
from scipy.signal import iirfilter, sosfiltfilt

from .signals import ChannelSignal, Scenario, SeismicEvent

SPS = 40.0
SNR_BAND = (1.0, 8.0)            # Hz, the fixed band in which SNR is measured
SNR_NOISE_WINDOW_S = 30.0        # noise RMS over this long before the onset
SNR_RANGE = (2.0, 10.0)
SNR_BINS = tuple((float(lo), float(lo + 1)) for lo in range(2, 10))
TOLERANCE_S = (-1.0, 3.0)        # trigger onset - true onset that counts as a detection
WARMUP_S = 120.0                 # no onset before this: the LTA's start-up
SEGMENT_S = 600                  # signal generated this many seconds at a time (memory bound)
CHUNK_S = 1                      # fed to the detector one second at a time, as the station does
NOISE_LEVEL = 0.5                # Peterson: 0 = NLNM .. 1 = NHNM
# Volts per m/s and ADC counts per volt of the simulated board's seismic channels (boards/sim.toml:
# 1500 V/(m/s), gain 1, 1.2 V full scale over 2**23 counts): the detector gets int32 counts, as the
# station's stream chunks carry.
COUNTS_PER_M_S = 1500.0 * (1 << 23) / 1.2

GOAL_RATE_SNR = 4.0
GOAL_RATE = 0.95
GOAL_FALSE_PER_DAY = 1.0
GOAL_ONSET_MEDIAN_S = 0.2


# ------------------------------------------------------------------------------------------------
# The detector


@dataclass(frozen=True)
class TriggerParams:
    """Trigger settings (station ``[trigger]`` vocabulary, in seconds and Hz).  The defaults are the
    values tuned on this run (docs/trigger.md, "Detection performance"), which are also the
    station's ``[trigger]`` defaults: 4-corner Butterworth band-pass 1.5-8 Hz, recursive STA/LTA
    0.7 s / 30 s, on 3.5, off 2.0, at least 1.0 s on, at most 120 s, AIC pick on 3 s."""

    freqmin: float = 1.5
    freqmax: float = 8.0
    corners: int = 4
    sta_s: float = 0.7
    lta_s: float = 30.0
    thr_on: float = 3.5
    thr_off: float = 2.0
    min_duration_s: float = 1.0
    max_duration_s: float = 120.0
    coincidence_sum: float = 2.0       # used only with several channels
    coincidence_window_s: float = 1.0  # trigger_off_extension of the coincidence
    pick: str = "aic"
    pick_window_s: float = 3.0

    def table(self, channels: int) -> dict:
        """The station's ``[trigger]`` table of these settings (*channels* taking part)."""
        return {"filter": f"bandpass:{self.freqmin!r}:{self.freqmax!r}", "corners": self.corners,
                "sta": self.sta_s, "lta": self.lta_s, "on": self.thr_on, "off": self.thr_off,
                "min_duration": self.min_duration_s, "max_duration": self.max_duration_s,
                "coincidence_sum": self.coincidence_sum if channels > 1 else 1.0,
                "coincidence_window": self.coincidence_window_s if channels > 1 else 0.0,
                "pick": self.pick, "pick_window": self.pick_window_s}


DEFAULT_PARAMS = TriggerParams()

# TriggerParams field -> the [trigger] key it sets and the hil detection option that sets it (the
# errors of a bad setting name the option)
_OPTION_OF_KEY = {"filter": "--band", "corners": "--corners", "sta": "--sta", "lta": "--lta", "on": "--on",
                  "off": "--off", "min_duration": "--min-duration", "coincidence_sum": "--coincidence",
                  "max_duration": "max_duration_s", "coincidence_window": "coincidence_window_s",
                  "pick": "--pick", "pick_window": "--pick-window"}


@dataclass(frozen=True)
class Trigger:
    """A station trigger: onset and end (s on the run's time axis), the channels involved, the
    refined pick (s; the onset when the station does not pick)."""

    on_s: float
    off_s: float
    channels: tuple[str, ...]
    peak: float = 0.0
    pick_s: float | None = None

    @property
    def pick(self) -> float:
        return self.on_s if self.pick_s is None else self.pick_s


class StationDetector:
    """The station's own trigger (``edge/trigger_stage.Detector``, the code ``TriggerStage`` runs)
    fed as the station feeds it: one multi-channel chunk of counts at a time, with its first
    sample's time; its completed events (``off`` decisions kept) become :class:`Trigger` s."""

    T0_US = 0           # the run's time axis: sample 0 at the epoch

    def __init__(self, params: TriggerParams, sps: float, trace_ids: Sequence[str]) -> None:
        from ..edge.trigger_stage import Detector, settings_from_table

        self.trace_ids = list(trace_ids)
        self.rate_mhz = int(round(sps * 1000))
        settings = settings_from_table(params.table(len(self.trace_ids)), file="ims-station hil detection",
                                       prefix="", key_names=_OPTION_OF_KEY,
                                       channels={tid: float(sps) for tid in self.trace_ids})
        self.detector = Detector(settings, station=self.trace_ids[0].split(".")[1])
        self._n = 0
        self._triggers: list[Trigger] = []

    def _take(self, decisions) -> None:
        for d in decisions:
            if d.state == "off" and d.kept:
                self._triggers.append(Trigger((d.onset_us - self.T0_US) / 1e6, (d.end_us - self.T0_US) / 1e6,
                                              d.channels, d.peak,
                                              None if d.pick_us is None else (d.pick_us - self.T0_US) / 1e6))

    def push(self, chunk: np.ndarray) -> None:
        from ..edge.ingest import sample_offset_us

        x = np.atleast_2d(chunk)
        self._take(self.detector.push(self.trace_ids, self.T0_US + sample_offset_us(self._n, self.rate_mhz),
                                      self.rate_mhz, x))
        self._n += x.shape[1]

    def finish(self) -> list[Trigger]:
        """Close what is still open (as a replay ends) and return the station triggers, in time order."""
        self._take(self.detector.flush())
        return sorted(self._triggers, key=lambda t: t.on_s)


def make_detector(params: TriggerParams, sps: float, trace_ids: Sequence[str]) -> StationDetector:
    """THE construction of the detector under test: the station's ``Detector``
    (:class:`StationDetector`), built from *params* through the station's own ``[trigger]``
    resolution (``settings_from_table``, checked against the run's channels and rate; a bad setting
    is a ``ConfigError`` naming the option).

    Returns an object with ``push(chunk)`` (a ``(channels, samples)`` int32 array of counts,
    channels in the order of *trace_ids*, consecutive chunks from time 0) and ``finish() ->
    list[Trigger]`` (station triggers with onset/end/pick in seconds from the first sample).
    """
    return StationDetector(params, sps, trace_ids)


# ------------------------------------------------------------------------------------------------
# The injected events and the signal


@dataclass(frozen=True)
class InjectedEvent:
    """An event put into the data: P onset at the reference point, its SNR, where its signal ends."""

    onset_s: float
    snr: float
    end_s: float
    event: SeismicEvent | None = field(repr=False, compare=False, default=None)


def _snr_filter() -> np.ndarray:
    return iirfilter(4, [SNR_BAND[0] / (SPS / 2), SNR_BAND[1] / (SPS / 2)], btype="band", output="sos")


def noise_rms_before(noise, onset_s: float, sps: float = SPS) -> float:
    """RMS of *noise* (a ``ShapedNoise``) in :data:`SNR_BAND` over the 30 s before *onset_s*."""
    i1 = int(math.floor(onset_s * sps))
    n_win = int(round(SNR_NOISE_WINDOW_S * sps))
    pad = int(20 * sps)                      # filter edge effects stay outside the window
    i0 = i1 - n_win - pad
    x = noise.window(i0, n_win + 2 * pad)
    y = sosfiltfilt(_snr_filter(), x)
    return float(np.sqrt(np.mean(y[pad:pad + n_win] ** 2)))


def p_peak(event, sps: float = SPS) -> float:
    """Peak |P phase| of *event* (vertical, at the reference point) in :data:`SNR_BAND`."""
    tp, _ = event.arrivals()
    t = tp + np.arange(int(-20 * sps), int(40 * sps)) / sps
    p = replace(event, s_amp=0.0).velocity(t)            # the P phase alone (the vertical sees it at 1)
    return float(np.max(np.abs(sosfiltfilt(_snr_filter(), p))))


def plan_events(duration_s: float, n_events: int, seed: int, noise) -> list[InjectedEvent]:
    """The events of a run: onsets, SNRs and waveforms, amplitudes scaled to the SNR on *noise*."""
    if n_events < 1:
        return []
    rng = np.random.default_rng([seed & 0xFFFFFFFF, 0xDE7EC7])
    slot = (duration_s - WARMUP_S - 60.0) / n_events
    if slot < 90.0:
        raise ValueError(f"{n_events} events do not fit in {duration_s:.0f} s (need 90 s each)")
    lo, hi = SNR_RANGE
    snrs = lo + (hi - lo) * (rng.permutation(n_events) + rng.uniform(0, 1, n_events)) / n_events
    out = []
    for k in range(n_events):
        onset = round(WARMUP_S + slot * (k + rng.uniform(0.2, 0.8)), 3)
        dist = rng.uniform(30.0, 400.0)
        fp = float(np.exp(rng.uniform(np.log(2.0), np.log(6.0))))
        s_ratio = rng.uniform(1.0, 3.0)
        p_decay = rng.uniform(1.5, 4.0)
        unit = SeismicEvent(origin_time=0.0, distance_km=dist, p_amp=1.0, s_amp=s_ratio, fp=fp,
                            fs_hz=fp / 2, p_decay_s=p_decay, seed=int(rng.integers(1 << 31)))
        origin = onset - unit.arrivals()[0]
        unit = replace(unit, origin_time=origin)
        amp = float(snrs[k]) * noise_rms_before(noise, onset) / p_peak(unit)
        ev = replace(unit, p_amp=amp, s_amp=amp * s_ratio)
        ts = ev.arrivals()[1]
        out.append(InjectedEvent(onset, float(snrs[k]), ts + 5 * ev.s_decay_s, ev))
    return out


def station_signals(seed: int, events: Sequence[InjectedEvent], channels: int):
    """The vertical sensors of the station: channel 0 at the reference point; more channels are array
    elements on a 1-km ring (independent noise, plane-wave delays)."""
    scenario = Scenario(seed=seed, seismic_level=NOISE_LEVEL, events=[e.event for e in events if e.event is not None])
    out = []
    for c in range(channels):
        pos = (0.0, 0.0) if c == 0 else (math.cos(2 * math.pi * c / (channels - 1)),
                                          math.sin(2 * math.pi * c / (channels - 1)))
        out.append(ChannelSignal(scenario, "seismic", 1.0, SPS, stream=c, component="Z", position_km=pos))
    return out


def trace_ids(channels: int) -> list[str]:
    return ["XX.SIM01.00.BHZ"] + [f"XX.SIM01.{c:02d}.BHZ" for c in range(1, channels)]


def counts(x: np.ndarray) -> np.ndarray:
    """Velocity (m/s) to int32 ADC counts of the simulated board (24-bit range)."""
    return np.clip(np.rint(x * COUNTS_PER_M_S), -(1 << 23), (1 << 23) - 1).astype(np.int32)


# ------------------------------------------------------------------------------------------------
# Scoring


def snr_bin(snr: float) -> int:
    """Index in :data:`SNR_BINS` ([lo, hi) each; the last also takes 10)."""
    if not SNR_RANGE[0] <= snr <= SNR_RANGE[1]:
        raise ValueError(f"SNR {snr} outside {SNR_RANGE}")
    return min(int(math.floor(snr)) - 2, len(SNR_BINS) - 1)


def _q(values: Sequence[float], q: float) -> float | None:
    return None if not values else round(float(np.percentile(values, q)), 4)


def score(triggers: Sequence[Trigger], events: Sequence[InjectedEvent], duration_s: float,
          tolerance: tuple[float, float] = TOLERANCE_S) -> dict:
    """Match *triggers* to *events*; per-SNR-bin figures, false triggers per day, onset errors and
    the goal verdicts (see the module docstring for the rules)."""
    lo_tol, hi_tol = tolerance
    trig = sorted(triggers, key=lambda t: t.on_s)
    used: set[int] = set()
    per_event: list[dict] = []
    for ev in sorted(events, key=lambda e: e.onset_s):
        hit = next((i for i, t in enumerate(trig)
                    if i not in used and lo_tol <= t.on_s - ev.onset_s <= hi_tol), None)
        if hit is not None:
            used.add(hit)
        t = None if hit is None else trig[hit]
        per_event.append({"onset_s": round(ev.onset_s, 3), "snr": round(ev.snr, 3), "detected": t is not None,
                          "trigger_on_s": None if t is None else round(t.on_s, 3),
                          "pick_s": None if t is None else round(t.pick, 3),
                          "onset_error_s": None if t is None else round(t.pick - ev.onset_s, 4),
                          "raw_onset_error_s": None if t is None else round(t.on_s - ev.onset_s, 4)})
    later, false = [], []
    for i, t in enumerate(trig):
        if i in used:
            continue
        if any(ev.onset_s + lo_tol <= t.on_s <= ev.end_s for ev in events):
            later.append(t)
        else:
            false.append(t)
    bins = []
    for b, (lo, hi) in enumerate(SNR_BINS):
        evs = [e for e in per_event if snr_bin(e["snr"]) == b]
        errs = [e["onset_error_s"] for e in evs if e["detected"]]
        raw = [e["raw_onset_error_s"] for e in evs if e["detected"]]
        bins.append({"snr": f"{lo:g}-{hi:g}", "events": len(evs), "detected": len(errs),
                     "rate": round(len(errs) / len(evs), 4) if evs else None,
                     "onset_error_median_s": _q(errs, 50), "raw_onset_error_median_s": _q(raw, 50)})
    strong = [e for e in per_event if e["snr"] >= GOAL_RATE_SNR]
    strong_rate = sum(e["detected"] for e in strong) / len(strong) if strong else None
    errors = [e["onset_error_s"] for e in per_event if e["detected"]]
    abs_errors = [abs(e) for e in errors]
    raw_errors = [e["raw_onset_error_s"] for e in per_event if e["detected"]]
    days = duration_s / 86400.0
    false_per_day = len(false) / days if days > 0 else None
    median_abs = _q(abs_errors, 50)
    goals = {
        "detected_snr_ge_4": {"value": None if strong_rate is None else round(strong_rate, 4),
                              "goal": f">= {GOAL_RATE}", "met": strong_rate is not None and strong_rate >= GOAL_RATE},
        "false_triggers_per_day": {"value": None if false_per_day is None else round(false_per_day, 3),
                                   "goal": f"<= {GOAL_FALSE_PER_DAY}",
                                   "met": false_per_day is not None and false_per_day <= GOAL_FALSE_PER_DAY},
        "onset_error_median_abs_s": {"value": median_abs, "goal": f"<= {GOAL_ONSET_MEDIAN_S}",
                                     "met": median_abs is not None and median_abs <= GOAL_ONSET_MEDIAN_S},
    }
    return {
        "events": len(per_event),
        "detected": len(errors),
        "bins": bins,
        "snr_ge_4": {"events": len(strong), "detected": sum(e["detected"] for e in strong),
                     "rate": goals["detected_snr_ge_4"]["value"]},
        "false_triggers": len(false),
        "false_triggers_per_day": goals["false_triggers_per_day"]["value"],
        "later_phase_triggers": len(later),
        "onset_error_s": {"n": len(errors), "median": _q(errors, 50), "p90": _q(errors, 90),
                          "median_abs": median_abs, "p90_abs": _q(abs_errors, 90),
                          "min": _q(errors, 0), "max": _q(errors, 100)},
        "raw_onset_error_s": {"n": len(raw_errors), "median": _q(raw_errors, 50), "p90": _q(raw_errors, 90),
                              "median_abs": _q([abs(e) for e in raw_errors], 50),
                              "p90_abs": _q([abs(e) for e in raw_errors], 90),
                              "min": _q(raw_errors, 0), "max": _q(raw_errors, 100)},
        "goals": goals,
        "all_goals_met": all(g["met"] for g in goals.values()),
        "per_event": per_event,
        "false": [{"on_s": round(t.on_s, 3), "pick_s": round(t.pick, 3), "off_s": round(t.off_s, 3),
                   "peak": round(t.peak, 3),
                   "channels": list(t.channels)} for t in false],
    }


# ------------------------------------------------------------------------------------------------
# The run


@dataclass(frozen=True)
class DetectionConfig:
    hours: float = 24.0
    events: int = 60
    seed: int = 1
    channels: int = 1
    params: TriggerParams = DEFAULT_PARAMS


def simulate(cfg: DetectionConfig, progress: Callable[[float, float], None] | None = None
             ) -> tuple[list[Trigger], list[InjectedEvent], float]:
    """Generate the run's data segment by segment and feed it to the detector in 1-s chunks.
    Returns (triggers, injected events, duration in s)."""
    if cfg.channels < 1:
        raise ValueError("channels must be at least 1")
    duration = int(round(cfg.hours * 3600))
    ref_noise = station_signals(cfg.seed, [], 1)[0].noise
    events = plan_events(duration, cfg.events, cfg.seed, ref_noise)
    sig = station_signals(cfg.seed, events, cfg.channels)
    det = make_detector(cfg.params, SPS, trace_ids(cfg.channels))
    fs = int(SPS)
    step = CHUNK_S * fs
    for s0 in range(0, duration, SEGMENT_S):
        n = min(SEGMENT_S, duration - s0) * fs
        block = counts(np.stack([ch.physical(s0 * fs, n) for ch in sig]))
        for j in range(0, n, step):
            det.push(block[:, j:j + step])
        if progress is not None:
            progress(s0 + n / fs, duration)
    return det.finish(), events, float(duration)


def run_detection(cfg: DetectionConfig, progress: Callable[[float, float], None] | None = None) -> dict:
    """The detection run and its report (JSON-ready)."""
    t0 = time.perf_counter()
    triggers, events, duration = simulate(cfg, progress)
    report = score(triggers, events, duration)
    wall = time.perf_counter() - t0
    report["config"] = {"hours": cfg.hours, "events": cfg.events, "seed": cfg.seed, "channels": cfg.channels,
                        "sps": SPS, "chunk_s": CHUNK_S, "noise_level": NOISE_LEVEL,
                        "snr_band_hz": list(SNR_BAND), "snr_noise_window_s": SNR_NOISE_WINDOW_S,
                        "tolerance_s": list(TOLERANCE_S), "trace_ids": trace_ids(cfg.channels),
                        "trigger": asdict(cfg.params)}
    report["triggers"] = len(triggers)
    report["wall_time_s"] = round(wall, 2)
    return report
