"""Signal generators of the HIL simulator, in physical units.

Owns: the ground motion (m/s), pressure (Pa) and their conversion to volts at an ADC input, for
every sensor type a board channel can carry:

* seismic background noise shaped to the Peterson (1993) low/high noise models,
* events with P and S arrivals (onsets from distance and velocities, enveloped wavelets),
* plane-wave delays across the elements of an array (t_i = s . r_i),
* infrasound: microbarom background and a blast-like N-wave,
* hydroacoustic: ocean background and a T-phase.

Does not own: quantisation and clipping (the ADC emulator, ``hil/adc_emu.py``), time keeping (the
simulation, ``hil/sim.py``).

Every generator is seeded and *chunked*: ``window(i0, n)`` returns samples ``i0 .. i0+n-1`` of one
endless, deterministic stream, identical however the stream is cut into windows, so a soak of any
length needs no big arrays.  Background noise is FFT-shaped Gaussian noise (one-sided PSD P(f):
real and imaginary parts of each rfft bin drawn with sigma = sqrt(P fs N / 4), DC zeroed), generated
in blocks of ``block`` samples that overlap by half and are cross-faded with a sine window
(sin^2 + cos^2 = 1 keeps the variance stationary).  Event signals are analytic functions of time, so
fractional array delays are exact without frequency-domain shifting.

Why hand-written: ObsPy provides the noise-model *tables* (used in the tests as the independent
check) but no generator of stationary, chunkable noise with a given PSD; the few lines of FFT shaping
below are the standard recipe.  References:

* J. Peterson (1993), Observations and modeling of seismic background noise, USGS Open-File Report
  93-322 (NLNM/NHNM, PSD_dB = A + B log10 T, dB re 1 (m/s^2)^2/Hz).
* D. M. Boore (2003), Simulation of ground motion using the stochastic method, PAGEOPH 160
  (enveloped windowed noise as event waveform).
* ObsPy ``obspy.signal.array_analysis.get_timeshift`` (slowness convention: t = sx x + sy y).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

# ---------------------------------------------------------------- Peterson (1993) noise models
# (period lower bound in s, A, B): PSD_dB = A + B log10(T) for T >= bound (until the next bound).
# Acceleration, dB re 1 (m/s^2)^2/Hz.  Valid for 0.1 s <= T <= 100000 s; clamped outside.
NLNM_TABLE = (
    (0.10, -162.36, 5.64), (0.17, -166.70, 0.00), (0.40, -170.00, -8.30), (0.80, -166.40, 28.90),
    (1.24, -168.60, 52.48), (2.40, -159.98, 29.81), (4.30, -141.10, 0.00), (5.00, -71.36, -99.77),
    (6.00, -97.26, -66.49), (10.00, -132.18, -31.57), (12.00, -205.27, 36.16),
    (15.60, -37.65, -104.33), (21.90, -114.37, -47.10), (31.60, -160.58, -16.28),
    (45.00, -187.50, 0.00), (70.00, -216.47, 15.70), (101.00, -185.00, 0.00),
    (154.00, -168.34, -7.61), (328.00, -217.43, 11.90), (600.00, -258.28, 26.60),
    (10000.0, -346.88, 48.75),
)
NHNM_TABLE = (
    (0.10, -108.73, -17.23), (0.22, -150.34, -80.50), (0.32, -122.31, -23.87),
    (0.80, -116.85, 32.51), (3.80, -108.48, 18.08), (4.60, -74.66, -32.95), (6.30, 0.66, -127.18),
    (7.90, -93.37, -22.42), (15.40, 73.54, -162.98), (20.00, -151.52, 10.01),
    (354.80, -206.66, 31.63),
)
T_MIN, T_MAX = 0.1, 100000.0


def peterson_db(table: Sequence[tuple[float, float, float]], period) -> np.ndarray:
    """Noise model in dB re 1 (m/s^2)^2/Hz at *period* (s), clamped to 0.1 .. 1e5 s."""
    t = np.clip(np.asarray(period, dtype=float), T_MIN, T_MAX)
    bounds = np.array([row[0] for row in table])
    idx = np.searchsorted(bounds, t * (1 + 1e-12), side="right") - 1
    a = np.array([row[1] for row in table])[idx]
    b = np.array([row[2] for row in table])[idx]
    return a + b * np.log10(t)


def nlnm_db(period) -> np.ndarray:
    return peterson_db(NLNM_TABLE, period)


def nhnm_db(period) -> np.ndarray:
    return peterson_db(NHNM_TABLE, period)


# ---------------------------------------------------------------- chunked coloured noise

PsdFn = Callable[[np.ndarray], np.ndarray]


class ShapedNoise:
    """Endless stationary Gaussian noise with one-sided PSD ``psd(f)`` (units^2/Hz) at rate *fs*.

    ``window(i0, n)`` gives samples i0 .. i0+n-1 (i0 >= 0); any cut of the stream gives the same
    samples.  Seeded by (*seed*, *stream*): different streams are independent.
    """

    def __init__(self, psd: PsdFn, fs: float, seed: int, stream: int, block: int = 1 << 15) -> None:
        if block < 16 or block % 2:
            raise ValueError("block must be an even number >= 16")
        self.fs = float(fs)
        self.seed = int(seed)
        self.stream = int(stream)
        self.block = block
        self.hop = block // 2
        f = np.fft.rfftfreq(block, 1.0 / self.fs)
        p = np.zeros_like(f)
        p[1:] = np.maximum(np.asarray(psd(f[1:]), dtype=float), 0.0)
        self._sigma = np.sqrt(p * self.fs * block / 4.0)
        self._win = np.sin(np.pi * (np.arange(block) + 0.5) / block)
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()

    def _block(self, j: int) -> np.ndarray:
        got = self._cache.get(j)
        if got is not None:
            self._cache.move_to_end(j)
            return got
        # Block j starts at sample (j - 1) * hop, so block 0 holds the fade-in before sample 0.
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, self.stream & 0xFFFFFFFF, j])
        nb = self._sigma.size
        spec = (rng.standard_normal(nb) + 1j * rng.standard_normal(nb)) * self._sigma
        spec[0] = 0.0
        x = np.fft.irfft(spec, n=self.block) * self._win
        self._cache[j] = x
        if len(self._cache) > 6:
            self._cache.popitem(last=False)
        return x

    def window(self, i0: int, n: int) -> np.ndarray:
        if i0 < 0 or n < 0:
            raise ValueError("window must start at a sample index >= 0")
        out = np.zeros(n)
        if n == 0:
            return out
        hop = self.hop
        j_first = i0 // hop          # block whose second half covers i0 ... (block j+1 its first half)
        j_last = (i0 + n - 1) // hop + 1
        for j in range(j_first, j_last + 1):
            start = (j - 1) * hop
            lo = max(i0, start)
            hi = min(i0 + n, start + self.block)
            if lo < hi:
                out[lo - i0:hi - i0] += self._block(j)[lo - start:hi - start]
        return out


# ---------------------------------------------------------------- PSD models

def seismic_psd(level: float = 0.5, units: str = "velocity", highpass_s: float | None = 120.0) -> PsdFn:
    """One-sided PSD of seismic background noise.

    *level* interpolates in dB between the NLNM (0.0) and the NHNM (1.0).  *units* "acceleration"
    ((m/s^2)^2/Hz) or "velocity" ((m/s)^2/Hz, divided by (2 pi f)^2).  *highpass_s* applies the
    flat-velocity band of a broadband seismometer (2-pole high-pass at that period; None: off).
    """
    if units not in ("acceleration", "velocity"):
        raise ValueError("units must be 'acceleration' or 'velocity'")

    def psd(f: np.ndarray) -> np.ndarray:
        period = 1.0 / f
        db = nlnm_db(period) + level * (nhnm_db(period) - nlnm_db(period))
        p = 10.0 ** (db / 10.0)
        if units == "velocity":
            p = p / (2 * np.pi * f) ** 2
        if highpass_s:
            x = (f * highpass_s) ** 4
            p = p * x / (1.0 + x)
        return p

    return psd


def microbarom_psd(rms_pa: float = 0.05, peak_hz: float = 0.2, background: float = 1e-4) -> PsdFn:
    """Infrasound background (Pa^2/Hz): microbarom peak (log-Gaussian around *peak_hz*, 0.1-0.35 Hz,
    *rms_pa* in the peak) over a wind/background floor falling as f^-1 (background at 1 Hz)."""
    sigma_ln = 0.35

    def psd(f: np.ndarray) -> np.ndarray:
        g = np.exp(-0.5 * (np.log(f / peak_hz) / sigma_ln) ** 2) / (f * sigma_ln * math.sqrt(2 * math.pi))
        return rms_pa ** 2 * g + background / np.maximum(f, 1e-3)

    return psd


def ocean_psd(level_at_10hz: float = 1e-5, slope: float = -1.5) -> PsdFn:
    """Hydroacoustic background (Pa^2/Hz), Wenz-like: 1e-5 Pa^2/Hz (70 dB re 1 uPa^2/Hz) at 10 Hz,
    falling as f^slope."""

    def psd(f: np.ndarray) -> np.ndarray:
        return level_at_10hz * (np.maximum(f, 0.05) / 10.0) ** slope

    return psd


def band_psd(lo_hz: float, hi_hz: float) -> PsdFn:
    """Unit-variance band-limited noise (flat between *lo_hz* and *hi_hz*)."""

    def psd(f: np.ndarray) -> np.ndarray:
        return np.where((f >= lo_hz) & (f <= hi_hz), 1.0 / (hi_hz - lo_hz), 0.0)

    return psd


# ---------------------------------------------------------------- geometry

@dataclass(frozen=True)
class PlaneWave:
    """A plane wave crossing an array: *backazimuth_deg* (direction to the source, clockwise from
    north) and horizontal slowness *slowness_s_per_km*."""

    backazimuth_deg: float
    slowness_s_per_km: float

    @property
    def slowness_vector(self) -> tuple[float, float]:
        """(sx east, sy north) in s/km: it points the way the wave travels (away from the source)."""
        phi = math.radians(self.backazimuth_deg)
        return (-self.slowness_s_per_km * math.sin(phi), -self.slowness_s_per_km * math.cos(phi))

    def delays(self, positions_km: Sequence[tuple[float, float]]) -> np.ndarray:
        """Arrival delay t_i = s . r_i (s) of each element at (x east, y north) km from the reference."""
        sx, sy = self.slowness_vector
        r = np.asarray(positions_km, dtype=float).reshape(-1, 2)
        return r[:, 0] * sx + r[:, 1] * sy


# ---------------------------------------------------------------- transient sources

def _onset_envelope(tau: np.ndarray, rise: float, decay: float) -> np.ndarray:
    """0 before the onset, then a smooth rise (time constant *rise*) and an exponential coda."""
    out = np.zeros_like(tau)
    m = tau >= 0
    out[m] = (1.0 - np.exp(-tau[m] / rise)) * np.exp(-tau[m] / decay)
    return out


@dataclass(frozen=True)
class SeismicEvent:
    """A local/regional event seen by a sensor *distance_km* from the epicentre (hypocentral distance
    includes *depth_km*).  P and S onsets at t0 + d/vp and t0 + d/vs; each phase is a sum of a few
    sinusoids (seeded frequencies and phases around *fp* / *fs_hz*) under an onset envelope.
    Amplitudes are peak ground velocities (m/s) at the sensor.  Explosions: pass a small
    *s_amp* / *p_amp* ratio and ``polarity=+1`` (compressional first motion).
    """

    origin_time: float               # s on the simulation time axis
    distance_km: float
    depth_km: float = 10.0
    vp_km_s: float = 6.0
    vs_km_s: float = 3.46
    p_amp: float = 1e-6
    s_amp: float = 3e-6
    fp: float = 4.0
    fs_hz: float = 2.0
    p_decay_s: float = 3.0
    s_decay_s: float = 6.0
    polarity: int = 1
    seed: int = 0
    backazimuth_deg: float = 0.0     # for array delays; local events: horizontal slowness 1/v

    @property
    def hypocentral_km(self) -> float:
        return math.hypot(self.distance_km, self.depth_km)

    def arrivals(self) -> tuple[float, float]:
        """(P onset, S onset) in s on the simulation time axis."""
        d = self.hypocentral_km
        return self.origin_time + d / self.vp_km_s, self.origin_time + d / self.vs_km_s

    def _phase(self, tau: np.ndarray, f0: float, amp: float, decay: float, k: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, k])
        freqs = f0 * np.exp(rng.uniform(-0.4, 0.4, 4))
        phases = rng.uniform(0, 2 * np.pi, 4)
        phases[0] = 0.0  # first motion: the main sinusoid starts at 0 going in the polarity's direction
        carrier = np.zeros_like(tau)
        for fr, ph in zip(freqs, phases):
            carrier += np.sin(2 * np.pi * fr * tau + ph)
        env = _onset_envelope(tau, rise=0.25 / f0, decay=decay)
        return amp * self.polarity * env * carrier / 2.0

    def velocity(self, t: np.ndarray, delay_p: float = 0.0, delay_s: float = 0.0) -> np.ndarray:
        """Ground velocity (m/s) at times *t* (s); *delay_p*/*delay_s*: array element delays."""
        tp, ts = self.arrivals()
        t = np.asarray(t, dtype=float)
        return (self._phase(t - tp - delay_p, self.fp, self.p_amp, self.p_decay_s, 1)
                + self._phase(t - ts - delay_s, self.fs_hz, self.s_amp, self.s_decay_s, 2))

    def plane_waves(self) -> tuple[PlaneWave, PlaneWave]:
        return (PlaneWave(self.backazimuth_deg, 1.0 / self.vp_km_s),
                PlaneWave(self.backazimuth_deg, 1.0 / self.vs_km_s))


@dataclass(frozen=True)
class Blast:
    """An atmospheric explosion: an N-wave (Pa) arriving at t0 + distance / celerity.

    The N-wave rises to +*peak_pa*, falls linearly to -*peak_pa* over *duration_s* and returns to 0;
    the shocks have a finite rise time (tanh) so the waveform is smooth at any sample rate.
    """

    origin_time: float
    distance_km: float
    peak_pa: float = 2.0
    duration_s: float = 1.5
    celerity_km_s: float = 0.30
    rise_s: float = 0.02
    backazimuth_deg: float = 0.0

    def arrival(self) -> float:
        return self.origin_time + self.distance_km / self.celerity_km_s

    def pressure(self, t: np.ndarray, delay: float = 0.0) -> np.ndarray:
        tau = np.asarray(t, dtype=float) - self.arrival() - delay
        dur = self.duration_s
        ramp = np.where((tau >= 0) & (tau <= dur), 1.0 - 2.0 * tau / dur, 0.0)
        edge_in = 0.5 * (1 + np.tanh(tau / self.rise_s))
        edge_out = 0.5 * (1 - np.tanh((tau - dur) / self.rise_s))
        return self.peak_pa * ramp * edge_in * edge_out

    def plane_wave(self) -> PlaneWave:
        return PlaneWave(self.backazimuth_deg, 1.0 / self.celerity_km_s)


@dataclass(frozen=True)
class TPhase:
    """A hydroacoustic T-phase (Pa): band-limited noise (2-20 Hz) under a spindle envelope (emergent
    rise over *rise_s*, decay over *decay_s*), arriving at t0 + distance / 1.485 km/s."""

    origin_time: float
    distance_km: float
    peak_pa: float = 5.0
    rise_s: float = 10.0
    decay_s: float = 30.0
    speed_km_s: float = 1.485
    lo_hz: float = 2.0
    hi_hz: float = 20.0
    seed: int = 0

    def arrival(self) -> float:
        return self.origin_time + self.distance_km / self.speed_km_s

    def envelope(self, t: np.ndarray) -> np.ndarray:
        tau = np.asarray(t, dtype=float) - self.arrival()
        out = np.zeros_like(tau)
        up = (tau >= 0) & (tau < self.rise_s)
        out[up] = np.sin(0.5 * np.pi * tau[up] / self.rise_s) ** 2
        down = tau >= self.rise_s
        out[down] = np.exp(-(tau[down] - self.rise_s) / self.decay_s)
        return self.peak_pa * out


# ---------------------------------------------------------------- per-channel drivers

SENSOR_TYPES = ("seismic", "infrasonic", "hydroacoustic", "weather")
PHYSICAL_UNITS = {"seismic": "m/s", "infrasonic": "Pa", "hydroacoustic": "Pa", "weather": "Pa"}


@dataclass
class Scenario:
    """What happens in the simulated world: background levels and transient sources."""

    seed: int = 0
    seismic_level: float = 0.5            # 0 = NLNM .. 1 = NHNM
    events: list[SeismicEvent] = field(default_factory=list)
    blasts: list[Blast] = field(default_factory=list)
    tphases: list[TPhase] = field(default_factory=list)

    @classmethod
    def standard(cls, seed: int = 0) -> "Scenario":
        """The simulator's default world: noise halfway between NLNM and NHNM, a regional
        earthquake (origin 60 s, 150 km: P at ~85 s, S at ~104 s), an atmospheric explosion (origin
        100 s, 30 km: N-wave at 200 s) and a T-phase (origin 0 s, 450 km: arrival ~303 s)."""
        return cls(seed=seed, seismic_level=0.5,
                   events=[SeismicEvent(origin_time=60.0, distance_km=150.0, depth_km=10.0, p_amp=1e-5,
                                        s_amp=3e-5, backazimuth_deg=40.0, seed=seed)],
                   blasts=[Blast(origin_time=100.0, distance_km=30.0, peak_pa=2.0, backazimuth_deg=200.0)],
                   tphases=[TPhase(origin_time=0.0, distance_km=450.0, seed=seed)])


class ChannelSignal:
    """The signal at one sensor, in physical units and in volts at the ADC input.

    *sensor*: one of SENSOR_TYPES; *sensitivity*: V per physical unit (V/(m/s) seismic, V/Pa
    pressure); *component*: "Z"/"N"/"E" for seismic (horizontal components see the S wave larger and
    the P wave smaller); *position_km*: element position in an array (x east, y north); *stream*:
    independent noise stream id (unique per channel of a station).
    """

    def __init__(self, scenario: Scenario, sensor: str, sensitivity: float, fs: float, *, stream: int,
                 component: str = "Z", position_km: tuple[float, float] = (0.0, 0.0)) -> None:
        if sensor not in SENSOR_TYPES:
            raise ValueError(f"unknown sensor type {sensor!r}")
        self.scenario = scenario
        self.sensor = sensor
        self.sensitivity = float(sensitivity)
        self.fs = float(fs)
        self.component = component.upper()[:1] or "Z"
        self.position_km = position_km
        seed = scenario.seed
        if sensor == "seismic":
            psd = seismic_psd(scenario.seismic_level, "velocity")
        elif sensor == "infrasonic":
            psd = microbarom_psd()
        elif sensor == "hydroacoustic":
            psd = ocean_psd()
        else:  # weather: barometric pressure fluctuations, slow
            psd = microbarom_psd(rms_pa=1.0, peak_hz=0.005, background=1e-3)
        self.noise = ShapedNoise(psd, self.fs, seed, stream)
        self._tcarrier = [ShapedNoise(band_psd(tp.lo_hz, min(tp.hi_hz, 0.45 * self.fs)), self.fs,
                                      tp.seed ^ seed, 1000 + k)
                          for k, tp in enumerate(scenario.tphases)]
        pos = [position_km]
        self._ev_delays = [(float(pw_p.delays(pos)[0]), float(pw_s.delays(pos)[0]))
                           for pw_p, pw_s in (ev.plane_waves() for ev in scenario.events)]
        self._blast_delays = [float(b.plane_wave().delays(pos)[0]) for b in scenario.blasts]

    def physical(self, i0: int, n: int, t0: float = 0.0) -> np.ndarray:
        """Samples i0 .. i0+n-1 in physical units; sample i is at time t0 + i / fs."""
        x = self.noise.window(i0, n)
        t = t0 + (i0 + np.arange(n)) / self.fs
        if self.sensor == "seismic":
            # Simple radiation: the vertical sees P fully and S at 0.5, horizontals the reverse.
            p_gain, s_gain = (1.0, 0.5) if self.component == "Z" else (0.4, 1.0)
            for ev, (dp, ds) in zip(self.scenario.events, self._ev_delays):
                tp, ts = ev.arrivals()
                if t[-1] < tp + dp or t[0] > ts + ds + 20 * ev.s_decay_s:
                    continue
                x = x + p_gain * ev._phase(t - tp - dp, ev.fp, ev.p_amp, ev.p_decay_s, 1) \
                      + s_gain * ev._phase(t - ts - ds, ev.fs_hz, ev.s_amp, ev.s_decay_s, 2)
        elif self.sensor == "infrasonic":
            for b, d in zip(self.scenario.blasts, self._blast_delays):
                x = x + b.pressure(t, d)
        elif self.sensor == "hydroacoustic":
            for tp, carrier in zip(self.scenario.tphases, self._tcarrier):
                env = tp.envelope(t)
                if env.any():
                    x = x + env * carrier.window(i0, n)
        return x

    def volts(self, i0: int, n: int, t0: float = 0.0) -> np.ndarray:
        return self.physical(i0, n, t0) * self.sensitivity
