"""The noble-gas detector emulator: an MCA with a β-γ (or HPGe) detector and its process controller,
answering the ORTEC-style dialect of :mod:`ims_station.mca` one command line at a time.

Owns :class:`NobleGasDetector` -- the MCA state (acquiring, live/true time, presets, memory
segments, high voltage), the command semantics, the accumulation of counts from the cell's contents
over simulated time, and the application of the reply and device faults; plus the clocks it runs on
(:class:`ManualClock` for in-process tests and the ``noblegas://`` port, :class:`AcceleratedClock`
for the pty).

Time: the emulator reads ``clock.monotonic()`` (run second 0 = when it was built) and lazily catches
up whenever it is asked something (``handle``/``feed``/``poll``).  Counts are *events*: when the
cell enters a phase (``process.Schedule``), the events of the whole phase are drawn at once from a
generator seeded by (seed, phase start) -- Poisson numbers per component (each nuclide with its
decay during the phase, the ambient background), event times from the decaying rate, channels from
the model's maps -- and the MCA adds to its memory those that fall in the intervals it is live.  So
the spectra do not depend on how often the driver polls, presets stop the count at the exact
instant, and the same seed gives the same data.

Memory segments: β-γ mode -- 0 the 256×256 histogram (channel = γ·256 + β), 1 the β singles, 2
the γ singles (256 each); HPGe mode -- 0 the γ spectrum (4096).

Restart (``disappear`` fault): no replies while it lasts; afterwards memory, presets and times are
cleared, acquisition stopped, HV off, and the first command is answered ``%001000`` (power-up)
without being executed.

Does not own the wire format (``ims_station.mca``), the physics, the cycle, the transports.
"""

from __future__ import annotations

import functools
import math
import time as _time

import numpy as np

from ims_station import mca
from ims_station import radioxenon as rx

from ..sim import DEFAULT_START_UTC       # 2026-01-01T00:00:00Z, the HIL's epoch
from . import physics
from .faults import NobleGasFaults
from .process import CycleConfig, Phase, Schedule, hv_actual, hv_ok, soh

VERSION = "NGEMU-1.0"


class ManualClock:
    """Simulated time advanced explicitly (tests, the ``noblegas://`` port)."""

    def __init__(self, start_utc: float = DEFAULT_START_UTC) -> None:
        self.start_utc = float(start_utc)
        self.now_s = 0.0

    def monotonic(self) -> float:
        return self.now_s

    def time(self) -> float:
        return self.start_utc + self.now_s

    def advance(self, seconds: float) -> None:
        if seconds > 0:
            self.now_s += seconds


class AcceleratedClock:
    """Wall-clock time run *speed* times faster, starting at *start_utc* (default: now)."""

    def __init__(self, speed: float = 1.0, start_utc: float | None = None) -> None:
        if speed <= 0:
            raise ValueError("speed must be > 0")
        self.speed = float(speed)
        self._w0 = _time.monotonic()
        self.start_utc = _time.time() if start_utc is None else float(start_utc)

    def monotonic(self) -> float:
        return (_time.monotonic() - self._w0) * self.speed

    def time(self) -> float:
        return self.start_utc + self.monotonic()


@functools.lru_cache(maxsize=2)
def detector_model(mode: str):
    """The detector model (built once per process: the response matrices take ~1 s)."""
    return physics.model_for(mode)


DEFAULT_CONCENTRATIONS = {"XE-133": 1.5, "XE-131M": 0.3, "XE-133M": 0.1, "XE-135": 0.5, "RN-222": 50.0}


class NobleGasDetector:
    def __init__(self, *, mode: str = "bg", seed: int = 0, clock=None, cycle: CycleConfig | None = None,
                 concentrations: dict[str, float] | None = None, faults: NobleGasFaults | None = None,
                 per_sample: dict[int, dict[str, float]] | None = None) -> None:
        self.mode = mode
        self.model = detector_model(mode)
        self.seed = int(seed)
        self.clock = clock or ManualClock()
        self.cycle = cycle or CycleConfig()
        self.faults = faults or NobleGasFaults()
        self._t_origin = self.clock.monotonic()
        self.schedule = Schedule(self.cycle, DEFAULT_CONCENTRATIONS if concentrations is None else concentrations,
                                 t0_utc=self.clock.time(), faults=self.faults, per_sample=per_sample,
                                 seed=self.seed)
        self._rng_reply = np.random.default_rng([self.seed & 0xFFFFFFFF, 0x4E47, 1])
        self._rng_soh = np.random.default_rng([self.seed & 0xFFFFFFFF, 0x4E47, 2])
        self.splitter = mca.LineSplitter(4 * mca.MAX_COMMAND)
        self.counters = {"commands": 0, "replies": 0, "refused": 0, "garbled": 0, "checksum_errors": 0,
                         "timeouts": 0, "late": 0, "unanswered_while_gone": 0, "restarts": 0, "events": 0}
        self._n_cat = len(self.model.expected({}, 0.0).categories())
        self._reset_mca()
        self.hv_set = int(self.cycle.hv_v)
        self.hv_on = True
        self._t = 0.0
        self._power_up_pending = False
        self._events: dict[float, tuple[np.ndarray, np.ndarray]] = {}
        self._late: list[tuple[float, bytes]] = []

    # ------------------------------------------------------------------ time
    def now(self) -> float:
        """Run seconds (0 = when the emulator was built)."""
        return self.clock.monotonic() - self._t_origin

    def gone(self, t: float | None = None) -> bool:
        return self.faults.active("disappear", self.now() if t is None else t)

    def poll(self) -> None:
        self._advance(self.now())

    def _reset_mca(self) -> None:
        self.active = False
        self.live_s = 0.0
        self.true_s = 0.0
        self.live_preset = 0
        self.true_preset = 0
        self.segment = 0
        self._cat = np.zeros(self._n_cat, dtype=np.int64)
        self._views: dict[int, np.ndarray] | None = None

    def _advance(self, t: float) -> None:
        while self._t < t:
            if self.gone(self._t):
                w = next(w for w in self.faults.windows_of("disappear") if w.contains(self._t))
                self._t = min(t, w.end)
                continue
            nxt = [w.start for w in self.faults.windows_of("disappear") if self._t < w.start <= t]
            seg_end = min(nxt) if nxt else t
            self._accumulate(self._t, seg_end)
            self._t = seg_end
            if nxt:
                self._restart()

    def _restart(self) -> None:
        self._reset_mca()
        self.hv_on = False
        self._power_up_pending = True
        self.counters["restarts"] += 1

    def _accumulate(self, t0: float, t1: float) -> None:
        if not self.active or t1 <= t0:
            return
        lf = self.cycle.live_fraction
        stop = math.inf
        if self.live_preset:
            stop = min(stop, t0 + max(0.0, self.live_preset / mca.TICKS_PER_SECOND - self.live_s) / lf)
        if self.true_preset:
            stop = min(stop, t0 + max(0.0, self.true_preset / mca.TICKS_PER_SECOND - self.true_s))
        end = min(t1, stop)
        a = t0
        while a < end:
            ph = self.schedule.phase_at(a)
            b = min(end, ph.end)
            self._add_events(ph, a, b)
            a = b
        self.true_s += end - t0
        self.live_s += (end - t0) * lf
        if stop <= t1:
            self.active = False       # preset reached
            # snap to the tick so SHOW_LIVE / SHOW_TRUE equal the preset exactly
            if self.live_preset and abs(self.live_s * mca.TICKS_PER_SECOND - self.live_preset) < 1e-6:
                self.live_s = self.live_preset / mca.TICKS_PER_SECOND
            if self.true_preset and abs(self.true_s * mca.TICKS_PER_SECOND - self.true_preset) < 1e-6:
                self.true_s = self.true_preset / mca.TICKS_PER_SECOND

    def _add_events(self, ph: Phase, a: float, b: float) -> None:
        if not self.hv_on:
            return
        times, codes = self._phase_events(ph)
        i0, i1 = np.searchsorted(times, [a, b])
        if i1 <= i0:
            return
        sel_t, sel_c = times[i0:i1], codes[i0:i1]
        drops = self.faults.windows_of("hv_drop")
        if drops:
            keep = np.ones(len(sel_t), dtype=bool)
            for w in drops:
                keep &= ~((sel_t >= w.start) & (sel_t < w.end))
            sel_c = sel_c[keep]
        self._cat += np.bincount(sel_c, minlength=self._n_cat)
        self.counters["events"] += int(len(sel_c))
        self._views = None

    def _phase_events(self, ph: Phase) -> tuple[np.ndarray, np.ndarray]:
        """Every event the detector sees during *ph* (times in run seconds, sorted; categories)."""
        key = ph.start
        if key in self._events:
            return self._events[key]
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, 0x4E47, 7, int(round(ph.start * 1000))])
        lf = self.cycle.live_fraction
        dur = ph.duration
        comps: list[tuple[float, np.ndarray]] = [(0.0, self.model.ambient_per_second().scaled(dur * lf).categories())]
        for nuc, a0 in sorted(self.schedule.cell_activities(ph, ph.start).items()):
            lam = rx.decay_constant(nuc)
            decays = a0 * -math.expm1(-lam * dur) / lam * lf
            comps.append((lam, self.model.per_decay(nuc).scaled(decays).categories()))
        all_t, all_c = [], []
        for lam, mu in comps:
            total = float(mu.sum())
            n = int(rng.poisson(total)) if total > 0 else 0
            if n == 0:
                continue
            cats = rng.choice(len(mu), size=n, p=mu / total)
            u = rng.random(n)
            if lam > 0:
                tt = -np.log1p(u * np.expm1(-lam * dur)) / lam
            else:
                tt = u * dur
            all_t.append(ph.start + tt)
            all_c.append(cats)
        if all_t:
            t = np.concatenate(all_t)
            c = np.concatenate(all_c)
            order = np.argsort(t, kind="stable")
            out = (t[order], c[order].astype(np.int64))
        else:
            out = (np.zeros(0), np.zeros(0, dtype=np.int64))
        # keep the phases still needed (the current and the next); a phase is ~a few MB
        for k in [k for k in self._events if k < ph.start]:
            del self._events[k]
        self._events[key] = out
        return out

    # ------------------------------------------------------------------ memory
    def memory(self) -> dict[int, np.ndarray]:
        """The memory segments as arrays (β-γ: 0 histogram 256×256 γ rows × β columns, 1 β, 2 γ),
        caught up to the clock first."""
        self.poll()
        if self._views is None:
            c = self._cat
            if self.mode == "bg":
                n = physics.NCH
                hist = c[:n * n].reshape(n, n)
                self._views = {0: hist, 1: hist.sum(axis=0) + c[n * n + n:], 2: hist.sum(axis=1) + c[n * n:n * n + n]}
            else:
                self._views = {0: c}
        return self._views

    # ------------------------------------------------------------------ commands
    def take_late(self) -> bytes:
        """Late replies (fault ``late``) whose time has come: the transports call this while idle."""
        now = self.now()
        due = [r for t, r in self._late if t <= now]
        self._late = [(t, r) for t, r in self._late if t > now]
        return b"".join(due)

    def feed(self, data: bytes) -> bytes:
        """Bytes from the host -> bytes of the replies (one record per complete command line),
        after any late reply that fell due before them."""
        out = [self.take_late()]
        for line in self.splitter.feed(data):
            r = self.handle(line)
            if r:
                out.append(r)
        return b"".join(out)

    def handle(self, line: bytes) -> bytes | None:
        """One command line -> the reply record (with faults applied), or None (no reply)."""
        t = self.now()
        self._advance(t)
        self.counters["commands"] += 1
        if self.gone(t):
            self.counters["unanswered_while_gone"] += 1
            return None
        if self._power_up_pending:
            self._power_up_pending = False
            reply: mca.Reply = mca.Ack(*mca.POWER_UP)
        else:
            try:
                cmd = mca.parse_command(line)
            except mca.CommandError as err:
                reply = mca.Ack(*err.code)
            else:
                reply = self._execute(cmd, t)
        if isinstance(reply, mca.Ack) and not reply.ok:
            self.counters["refused"] += 1
        return self._apply_faults(mca.encode_reply(reply))

    def _apply_faults(self, raw: bytes) -> bytes | None:
        f = self.faults
        u = self._rng_reply.random()
        if u < f.timeout:
            self.counters["timeouts"] += 1
            return None
        u -= f.timeout
        if u < f.late:
            self.counters["late"] += 1
            self._late.append((self.now() + f.late_s, raw))
            return None
        u -= f.late
        if u < f.garble:
            self.counters["garbled"] += 1
            body = raw[:-2]
            cut = int(self._rng_reply.integers(1, max(2, len(body) - 1)))
            noise = bytes(self._rng_reply.integers(0x20, 0x7F, int(self._rng_reply.integers(0, 6))).astype(np.uint8))
            return body[:cut] + bytes([int(self._rng_reply.integers(0x80, 0x100))]) + noise + b"\r\n"
        u -= f.garble
        if u < f.checksum:
            self.counters["checksum_errors"] += 1
            body = raw[:-5]
            bad = (int(raw[-5:-2]) + int(self._rng_reply.integers(1, 256))) % 256
            return body + b"%03d\r\n" % bad
        self.counters["replies"] += 1
        return raw

    def _execute(self, cmd: mca.Command, t: float) -> mca.Reply:
        v = cmd.verb
        a = cmd.args
        ok = mca.Ack(*mca.OK)
        if v == "START":
            if not self.active:
                if not hv_ok(self.schedule, t, self.hv_set, self.hv_on):
                    return mca.Ack(*mca.ERR_HV)
                self.active = True
            return ok
        if v == "STOP":
            self.active = False
            return ok
        if v == "CLEAR":
            n = self._n_cat
            self._cat = np.zeros(n, dtype=np.int64)
            self._views = None
            self.live_s = self.true_s = 0.0
            return ok
        if v == "CLEAR_PRESET":
            if self.active:
                return mca.Ack(*mca.ERR_ACTIVE)
            self.live_preset = self.true_preset = 0
            return ok
        if v in ("SET_LIVE_PRESET", "SET_TRUE_PRESET"):
            if self.active:
                return mca.Ack(*mca.ERR_ACTIVE)
            if v == "SET_LIVE_PRESET":
                self.live_preset = a[0]
            else:
                self.true_preset = a[0]
            return ok
        if v == "SHOW_LIVE_PRESET":
            return self._g(self.live_preset)
        if v == "SHOW_TRUE_PRESET":
            return self._g(self.true_preset)
        if v == "SHOW_LIVE":
            return self._g(math.floor(self.live_s * mca.TICKS_PER_SECOND + 1e-9))
        if v == "SHOW_TRUE":
            return self._g(math.floor(self.true_s * mca.TICKS_PER_SECOND + 1e-9))
        if v == "SHOW_ACTIVE":
            return self._c(1 if self.active else 0)
        if v == "SHOW_GAIN_CONVERSION":
            return self._c(self.model.segments[self.segment])
        if v == "SHOW_VERSION":
            return mca.Text(f"{VERSION} {self.mode.upper()} {self.cycle.station}")
        if v == "SET_SEGMENT":
            if a[0] not in self.model.segments:
                return mca.Ack(*mca.ERR_RANGE)
            self.segment = a[0]
            return ok
        if v == "SHOW_SEGMENT":
            return self._c(self.segment)
        if v == "SHOW_DATA":
            start, count = a
            size = self.model.segments[self.segment]
            if not 1 <= count <= mca.MAX_BLOCK or start + count > size:
                return mca.Ack(*mca.ERR_RANGE)
            seg = self.memory()[self.segment].ravel()
            vals = np.minimum(seg[start:start + count], mca.MAX_U32)
            return mca.Block(start, tuple(int(x) for x in vals))
        if v == "SET_HV":
            if self.active:
                return mca.Ack(*mca.ERR_ACTIVE)
            if a[0] > 3000:
                return mca.Ack(*mca.ERR_ARG)
            self.hv_set = a[0]
            return ok
        if v == "ENABLE_HV":
            self.hv_on = True
            return ok
        if v == "DISABLE_HV":
            self.hv_on = False
            return ok
        if v == "SHOW_HV":
            return self._c(self.hv_set)
        if v == "SHOW_HV_ACTUAL":
            return self._c(hv_actual(self.schedule, t, self.hv_set, self.hv_on, self._rng_soh))
        if v == "SHOW_SOH":
            return mca.Fields(soh(self.schedule, t, self.hv_set, self.hv_on, self._rng_soh))
        if v == "SHOW_SAMPLE":
            return mca.Fields(self.sample_fields(t))
        return mca.Ack(*mca.ERR_VERB)    # a verb of the table this device does not implement

    @staticmethod
    def _g(x) -> mca.Value:
        return mca.Value("G", min(int(x), mca.MAX_U32))

    @staticmethod
    def _c(x) -> mca.Value:
        return mca.Value("C", min(int(x), mca.MAX_U16))

    def sample_fields(self, t: float) -> dict:
        """What ``SHOW_SAMPLE`` reports: the cell's phase and the sample it concerns."""
        ph = self.schedule.phase_at(t)
        u = self.schedule.t0_utc
        f: dict = {"KIND": ph.name, "PHASE_START": f"{u + ph.start:.1f}", "PHASE_END": f"{u + ph.end:.1f}"}
        if ph.name == "QC":
            f.update({"SRID": "0", "SOURCE": "CS-137", "SOURCE_BQ": self.cycle.qc_source_bq})
            return f
        if ph.name == "CALIB":
            f.update({"SRID": "0", "SOURCE": "XE-133", "SOURCE_BQ": self.cycle.calib_source_bq})
            return f
        if ph.sample < 0:
            f["SRID"] = "0"
            return f
        s = self.schedule.sample(ph.sample)
        f.update({
            "SRID": s.srid, "COLL_START": f"{u + s.collection_start:.1f}", "COLL_STOP": f"{u + s.collection_stop:.1f}",
            "AIR_VOLUME": round(s.air_volume_m3, 5), "XE_VOLUME": round(s.xe_volume_cm3, 5),
            "XE_VOLUME_ERR": round(s.xe_volume_err_cm3, 5), "XE_YIELD": round(s.xe_yield, 5),
            "XE_YIELD_ERR": round(s.xe_yield_err, 5), "ARCHIVE": s.archive_id,
            "ACQ_START": f"{u + s.acquisition_start:.1f}", "ACQ_STOP": f"{u + s.acquisition_stop:.1f}",
        })
        return f


# ------------------------------------------------------------------ registry (noblegas://NAME)

_REGISTRY: dict[str, NobleGasDetector] = {}


def register(name: str, detector: NobleGasDetector) -> None:
    """Make ``noblegas://NAME`` attach to *detector* (tests and the soak hold it to inspect it)."""
    _REGISTRY[name] = detector


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def lookup(name: str) -> NobleGasDetector | None:
    return _REGISTRY.get(name)


def parse_concentration(text: str) -> tuple[str, float]:
    """``NUCLIDE:MBQ_PER_M3`` (e.g. ``XE-133:1.5``) -> (nuclide, value); ValueError names the problem."""
    nuc, sep, val = str(text).partition(":")
    nuc = nuc.strip().upper()
    if not sep or nuc not in rx.HALF_LIFE_S:
        raise ValueError(f"expected NUCLIDE:MBQ_PER_M3 with NUCLIDE one of {', '.join(rx.HALF_LIFE_S)}, got {text!r}")
    v = float(val)
    if not (v >= 0 and math.isfinite(v)):
        raise ValueError(f"concentration must be >= 0, got {text!r}")
    return nuc, v
