"""Radioxenon activity-concentration arithmetic: nuclear data and the decay-corrected formula.

Owns the one definition of the relation between an activity concentration in air and the net counts
a β-γ or γ measurement of the processed sample gives, both ways:

    N = C · V · ε · BR · (t_l / t_a) · (1 − e^{−λ t_c}) · e^{−λ t_p} · (1 − e^{−λ t_a}) / (λ² t_c)

    C = N · λ² · t_c · (t_a / t_l) / [ε · BR · V · (1 − e^{−λ t_c}) · e^{−λ t_p} · (1 − e^{−λ t_a})]

with C the activity concentration (Bq/m³; the functions take and give mBq/m³), V the air volume whose
xenon is in the detector (m³; for β-γ systems the effective volume V_Xe / 0.087 cm³·m⁻³, i.e. the
sampled air times the xenon yield), t_c the collection time, t_p the time from the end of
collection to the start of the count (processing), t_a the real (true) and t_l the live counting
time (s), λ the decay constant, ε the detection efficiency of the region and BR the branching
ratio of the signature counted there.  Derivation: air sampled at a constant rate V/t_c with
concentration C/λ atoms per m³ leaves C·V·(1 − e^{−λ t_c}) / (λ t_c) becquerels in the sample at the
end of collection; that decays by e^{−λ t_p} until the count starts; during the count
(1 − e^{−λ t_a})/λ of each becquerel decays; a fraction t_l/t_a of them happens while the
analyser is live (``../shared/specs/ims20.md`` §5.2).  Xe-133m → Xe-133 ingrowth is not included.

Used by the detector emulator (``hil/noblegas``) to know how many counts to synthesise and by the
tests (and the station's local alarms) to turn net counts back into concentrations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

DAY = 86_400.0
HOUR = 3_600.0

# Half-lives (s).  Xe: the decay constants of openSpex const.py (FOI-R--3451--SE), so that an
# independent β-γ reader decay-corrects exactly as we do (Xe-133 5.2449 d, Xe-131m 11.930 d,
# Xe-133m 2.190 d, Xe-135 9.140 h); Rn-222 stands for its short-lived progeny (Pb-214, Bi-214) in
# secular equilibrium with it, which is what a β-γ cell counts.
HALF_LIFE_S: dict[str, float] = {
    "XE-131M": math.log(2) / 6.72467e-7,
    "XE-133": math.log(2) / 1.52956e-6,
    "XE-133M": math.log(2) / 3.66326e-6,
    "XE-135": math.log(2) / 2.10657e-5,
    "RN-222": 3.8235 * DAY,
    "CS-137": 30.08 * 365.25 * DAY,    # the QC check source
}

XENON = ("XE-131M", "XE-133", "XE-133M", "XE-135")

# β-γ coincidence branching ratios of each nuclide's ROI (openSpex const.py, from FOI-R--3451--SE;
# ../shared/specs/ims20.md §5.3).  ROI numbers as in the #ROI_Limits block.
BG_SIGNATURE: dict[str, tuple[int, float]] = {
    "RN-222": (1, 0.376),     # Pb-214 351.9 keV γ × β
    "XE-135": (2, 0.90),      # 249.8 keV γ × β
    "XE-133": (3, 0.37289),   # 81.0 keV γ × β
    "XE-131M": (5, 0.54),     # Xe K X-ray × 129 keV K conversion electron
    "XE-133M": (6, 0.5577),   # Xe K X-ray × 199 keV K conversion electron
}
XE133_XRAY_ROI = (4, 0.4894)   # Xe-133: Cs K X-ray × (β + 45 keV CE), the second Xe-133 ROI

# γ lines for gamma-only (HPGe) measurement: nuclide -> (energy keV, emission probability).
GAMMA_LINE: dict[str, tuple[float, float]] = {
    "XE-131M": (163.93, 0.0195),
    "XE-133": (80.997, 0.369),
    "XE-133M": (233.22, 0.1012),
    "XE-135": (249.79, 0.90),
    "RN-222": (351.93, 0.356),    # Pb-214
}

STABLE_XE_CM3_PER_M3 = 0.087      # stable xenon in air (openSpex: V_air = V_Xe / 0.087)


def decay_constant(nuclide: str) -> float:
    return math.log(2) / HALF_LIFE_S[nuclide]


@dataclass(frozen=True)
class Timing:
    """The times of one measurement (s): collection, processing (collection stop -> count start),
    real and live counting time."""

    collection_s: float
    processing_s: float
    real_s: float
    live_s: float

    def __post_init__(self) -> None:
        if self.collection_s <= 0 or self.real_s <= 0 or self.live_s <= 0 or self.processing_s < 0:
            raise ValueError(f"timing must be positive: {self}")
        if self.live_s > self.real_s:
            raise ValueError(f"live time {self.live_s} s exceeds real time {self.real_s} s")


def decay_factor(nuclide: str, t: Timing) -> float:
    """Detected decays per (Bq/m³ · m³ · ε · BR): the timing part of the formula, in seconds."""
    lam = decay_constant(nuclide)
    return ((t.live_s / t.real_s) * -math.expm1(-lam * t.collection_s) * math.exp(-lam * t.processing_s)
            * -math.expm1(-lam * t.real_s) / (lam * lam * t.collection_s))


def expected_counts(nuclide: str, conc_mbq_m3: float, volume_m3: float, efficiency: float,
                    branching: float, timing: Timing) -> float:
    """Net counts a region sees for a concentration (mBq/m³) -- the formula of the module doc."""
    return conc_mbq_m3 * 1e-3 * volume_m3 * efficiency * branching * decay_factor(nuclide, timing)


def concentration(nuclide: str, net_counts: float, volume_m3: float, efficiency: float,
                  branching: float, timing: Timing) -> float:
    """Activity concentration (mBq/m³) from net counts -- the inverse formula of the module doc."""
    return net_counts / (volume_m3 * efficiency * branching * decay_factor(nuclide, timing)) * 1e3


def sample_activity_bq(nuclide: str, conc_mbq_m3: float, volume_m3: float, collection_s: float,
                       since_stop_s: float) -> float:
    """Activity (Bq) of *nuclide* in a sample *since_stop_s* after the end of its collection."""
    lam = decay_constant(nuclide)
    return (conc_mbq_m3 * 1e-3 * volume_m3 * -math.expm1(-lam * collection_s) / (lam * collection_s)
            * math.exp(-lam * since_stop_s))
