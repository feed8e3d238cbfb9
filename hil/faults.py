"""Fault injection of the HIL simulator: what goes wrong on the line and on the device.

Owns:

* :class:`LineFaults` / :class:`FaultyDirection` -- one direction of the serial line: bit flips at a
  bit-error rate, dropped bytes, duplicated bytes, each drawn from its own seeded generator, with
  counters of what was done (and how many *link frames* were hit, counted on the clean stream by
  its 0x00 delimiters, which is the truth for "packets corrupted on the line").
* :class:`FaultPlan` -- the time-windowed faults: line disconnects, board reboots, clock jumps (the
  GNSS time steps), GNSS outages (no PPS, no time messages), clipping (inputs driven beyond full
  scale), gateway outages, tamper and low supply; parsed from ``START:SECONDS`` strings (CLI and
  ``sim://`` URL parameters).

Does not own: *when* bytes travel (``hil/sim.py`` paces the UART and applies the windows) nor the
reaction of firmware or edge.

Why hand-written: the fault catalogue is specific to this simulator (frame-aware counting, per-window
device faults); numpy's Generator does the random draws.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ims_station.errors import ImsStationError


class FaultSpecError(ImsStationError, ValueError):
    """A fault specification (CLI option or URL parameter) is malformed; the message names it."""


@dataclass(frozen=True)
class Window:
    """A time window on the simulation axis, seconds from the start of the simulation."""

    start: float
    duration: float

    @property
    def end(self) -> float:
        return self.start + self.duration

    def contains(self, t: float) -> bool:
        return self.start <= t < self.end

    @classmethod
    def parse(cls, text: str, what: str = "window") -> "Window":
        """``START:SECONDS`` (both seconds, floats allowed)."""
        try:
            start_s, dur_s = str(text).split(":", 1)
            start, dur = float(start_s), float(dur_s)
        except ValueError:
            raise FaultSpecError(f"{what}: expected START:SECONDS, got {text!r}") from None
        if start < 0 or dur <= 0:
            raise FaultSpecError(f"{what}: start must be >= 0 and duration > 0, got {text!r}")
        return cls(start, dur)

    def to_json(self) -> dict:
        return {"start_s": self.start, "duration_s": self.duration}


@dataclass(frozen=True)
class LineFaults:
    """Per-byte fault rates of one direction of the line."""

    ber: float = 0.0      # probability that any one data bit is inverted
    drop: float = 0.0     # probability that a byte is lost (UART framing error, overrun)
    dup: float = 0.0      # probability that a byte is received twice

    def __post_init__(self) -> None:
        for name in ("ber", "drop", "dup"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                raise FaultSpecError(f"{name}: must be in [0, 1), got {v!r}")

    @property
    def clean(self) -> bool:
        return self.ber == 0 and self.drop == 0 and self.dup == 0


class FaultyDirection:
    """Applies :class:`LineFaults` to the bytes of one direction, deterministically for a seed.

    ``apply(data)`` returns ``(out, index)``: the bytes that arrive and, for each of them, the index
    of the clean byte it came from (so the caller can give it that byte's arrival time).
    """

    def __init__(self, faults: LineFaults, seed: int, direction: int) -> None:
        self.faults = faults
        self._rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x11E, int(direction)])
        self.counters = {"bytes_in": 0, "bytes_out": 0, "bits_flipped": 0, "bytes_flipped": 0,
                         "bytes_dropped": 0, "bytes_duplicated": 0, "frames": 0, "frames_hit": 0}
        self._frame_hit = False
        self._frame_open = False     # bytes of a frame seen in an earlier call, delimiter not yet

    def apply(self, data: bytes) -> tuple[bytes, np.ndarray]:
        n = len(data)
        c = self.counters
        c["bytes_in"] += n
        if n == 0:
            return b"", np.zeros(0, dtype=np.int64)
        buf = np.frombuffer(bytes(data), dtype=np.uint8).copy()
        hit = np.zeros(n, dtype=bool)
        f = self.faults
        if not f.clean:
            if f.ber > 0:
                nflip = int(self._rng.binomial(8 * n, f.ber))
                if nflip:
                    bits = self._rng.integers(0, 8 * n, nflip)
                    np.bitwise_xor.at(buf, bits // 8, (1 << (bits % 8)).astype(np.uint8))
                    c["bits_flipped"] += nflip
                    c["bytes_flipped"] += int(np.unique(bits // 8).size)
                    hit[bits // 8] = True
            keep = np.ones(n, dtype=bool)
            if f.drop > 0:
                dropped = self._rng.random(n) < f.drop
                keep &= ~dropped
                hit |= dropped
                c["bytes_dropped"] += int(dropped.sum())
            reps = keep.astype(np.int64)
            if f.dup > 0:
                dupd = (self._rng.random(n) < f.dup) & keep
                reps += dupd
                hit |= dupd
                c["bytes_duplicated"] += int(dupd.sum())
            index = np.repeat(np.arange(n), reps)
            out = buf[index].tobytes()
        else:
            index = np.arange(n)
            out = buf.tobytes()
        self._count_frames(data, hit)
        c["bytes_out"] += len(out)
        return out, index

    def _count_frames(self, clean: bytes, hit: np.ndarray) -> None:
        # A frame is the non-empty run of bytes up to and including its 0x00 delimiter in the
        # *clean* stream.  Frames are sent as 0x00 COBS 0x00, so between two frames there is an
        # empty run (two zeros in a row): that zero is the next frame's leading delimiter, and a
        # fault on it damages the next frame.
        ends = [i for i, b in enumerate(clean) if b == 0] if 0 in clean else []
        start = 0
        for e in ends:
            if e == start and not self._frame_open:
                if hit[e]:
                    self._frame_hit = True
                start = e + 1
                continue
            if self._frame_hit or hit[start:e + 1].any():
                self.counters["frames_hit"] += 1
            self.counters["frames"] += 1
            self._frame_hit = False
            self._frame_open = False
            start = e + 1
        if start < len(clean):
            self._frame_open = True
            if hit[start:].any():
                self._frame_hit = True

    def abort_frame(self) -> None:
        """The sender stopped mid-frame (reboot): the partial frame counts as hit if it was."""
        if self._frame_hit:
            self.counters["frames_hit"] += 1
            self.counters["frames"] += 1
        self._frame_hit = False
        self._frame_open = False


@dataclass
class FaultPlan:
    """Every fault of one simulation run.  Times are seconds from the start of the simulation."""

    down: LineFaults = field(default_factory=LineFaults)   # board -> gateway
    up: LineFaults = field(default_factory=LineFaults)     # gateway -> board
    disconnects: list[Window] = field(default_factory=list)       # line dead, both directions
    gateway_outages: list[Window] = field(default_factory=list)   # edge reads/writes nothing
    reboots: list[float] = field(default_factory=list)            # board resets at these times
    reboot_s: float = 2.0                                         # time from reset to running again
    clock_jumps: list[tuple[float, float]] = field(default_factory=list)  # (time, step s): GNSS time steps
    gnss_outages: list[Window] = field(default_factory=list)      # no PPS and no GNSS time
    clipping: list[Window] = field(default_factory=list)          # inputs driven beyond full scale
    tamper: list[Window] = field(default_factory=list)            # enclosure open
    supply_low: list[Window] = field(default_factory=list)        # supply sags
    supply_v: float = 12.0
    supply_low_v: float = 9.5

    @classmethod
    def symmetric(cls, ber: float = 0.0, drop: float = 0.0, dup: float = 0.0, **kw) -> "FaultPlan":
        line = LineFaults(ber, drop, dup)
        return cls(down=line, up=line, **kw)

    @staticmethod
    def in_any(windows: list[Window], t: float) -> bool:
        return any(w.contains(t) for w in windows)

    @staticmethod
    def parse_jump(text: str) -> tuple[float, float]:
        """``TIME:STEP`` -- at TIME the GNSS time steps by STEP seconds (may be negative)."""
        try:
            t_s, step_s = str(text).split(":", 1)
            t, step = float(t_s), float(step_s)
        except ValueError:
            raise FaultSpecError(f"clock jump: expected TIME:STEP, got {text!r}") from None
        if t < 0 or step == 0:
            raise FaultSpecError(f"clock jump: time must be >= 0 and step non-zero, got {text!r}")
        return t, step

    def to_json(self) -> dict:
        return {
            "down": {"ber": self.down.ber, "drop": self.down.drop, "dup": self.down.dup},
            "up": {"ber": self.up.ber, "drop": self.up.drop, "dup": self.up.dup},
            "disconnects": [w.to_json() for w in self.disconnects],
            "gateway_outages": [w.to_json() for w in self.gateway_outages],
            "reboots_s": list(self.reboots),
            "clock_jumps": [{"time_s": t, "step_s": s} for t, s in self.clock_jumps],
            "gnss_outages": [w.to_json() for w in self.gnss_outages],
            "clipping": [w.to_json() for w in self.clipping],
            "tamper": [w.to_json() for w in self.tamper],
            "supply_low": [w.to_json() for w in self.supply_low],
        }
