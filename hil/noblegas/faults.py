"""Fault injection of the noble-gas emulator: what goes wrong with the detector and the process.

Owns :class:`NobleGasFaults`:

* per-reply probabilities (each drawn from the emulator's seeded generator):
  ``garble`` -- the reply is cut short and noise bytes replace its end (the driver sees a
  :class:`~ims_station.mca.GarbledReply`); ``checksum`` -- the reply's checksum digits are wrong
  (:class:`~ims_station.mca.ChecksumError`); ``timeout`` -- no reply at all; ``late`` -- the reply
  comes ``late_s`` seconds late (after a driver's timeout: it then answers the *next* command,
  out of step, unless the driver drains its input before it sends);
* time windows (``START:SECONDS`` in run seconds, as ``hil/faults.py``'s :class:`Window`):
  ``disappear`` -- the detector is gone (no reply to anything; when it comes back it has restarted:
  memory, presets and times cleared, HV off, and its first reply is the power-up acknowledge
  ``%001000``); ``hv_drop`` -- the high voltage sags to 60 % (no counts pass the thresholds);
  ``flow_fail`` -- the sampler's flow stops (the sample collects less air); ``power_fail`` -- mains
  lost, the UPS runs on battery; ``temp_high`` -- room temperature 18 °C above normal.

Does not own the effects (``device.py`` and ``process.py`` apply them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..faults import FaultSpecError, Window

WINDOW_KINDS = ("disappear", "hv_drop", "flow_fail", "power_fail", "temp_high")
RATE_KINDS = ("garble", "checksum", "timeout", "late")


@dataclass
class NobleGasFaults:
    garble: float = 0.0
    checksum: float = 0.0
    timeout: float = 0.0
    late: float = 0.0
    late_s: float = 3.0
    windows: dict[str, list[Window]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for k in RATE_KINDS:
            v = getattr(self, k)
            if not 0.0 <= v < 1.0:
                raise FaultSpecError(f"{k}: must be in [0, 1), got {v!r}")
        if sum(getattr(self, k) for k in RATE_KINDS) >= 1.0:
            raise FaultSpecError("the reply-fault rates must add up to less than 1")
        if not self.late_s > 0:
            raise FaultSpecError(f"late_s: must be > 0, got {self.late_s!r}")
        for k in self.windows:
            if k not in WINDOW_KINDS:
                raise FaultSpecError(f"unknown fault window {k!r} (known: {', '.join(WINDOW_KINDS)})")

    def add(self, kind: str, spec: str | Window) -> "NobleGasFaults":
        if kind not in WINDOW_KINDS:
            raise FaultSpecError(f"unknown fault window {kind!r} (known: {', '.join(WINDOW_KINDS)})")
        w = spec if isinstance(spec, Window) else Window.parse(spec, kind)
        self.windows.setdefault(kind, []).append(w)
        return self

    def active(self, kind: str, t: float) -> bool:
        return any(w.contains(t) for w in self.windows.get(kind, ()))

    def overlap(self, kind: str, t0: float, t1: float) -> float:
        """Seconds of [t0, t1) covered by *kind* windows (windows of one kind assumed disjoint)."""
        return sum(max(0.0, min(t1, w.end) - max(t0, w.start)) for w in self.windows.get(kind, ()))

    def since(self, kind: str, t: float) -> float:
        """Seconds since the *kind* window containing *t* began (0 if none)."""
        for w in self.windows.get(kind, ()):
            if w.contains(t):
                return t - w.start
        return 0.0

    def windows_of(self, kind: str) -> list[Window]:
        return sorted(self.windows.get(kind, ()), key=lambda w: w.start)

    def to_json(self) -> dict:
        return {"garble": self.garble, "checksum": self.checksum, "timeout": self.timeout,
                "late": self.late, "late_s": self.late_s,
                **{k: [w.to_json() for w in self.windows_of(k)] for k in WINDOW_KINDS}}
