"""The inverse check of the emulator: net counts per ROI (β-γ) or per peak (HPGe) back to activity
concentrations, with counting uncertainties.

Owns the simple net-count method used to show that what the emulator synthesises gives back the
concentrations it was given:

* β-γ: gross counts per ROI (``physics.roi_mask``), minus the detector background scaled by live
  time, minus the gas background (memory) net of its own detector background; then the
  interferences, with the model's ratios (``#Ratios``): Rn-222 progeny (ROI 1) into ROIs 2, 3, 5, 6
  and Xe-133 (ROI 3) into ROIs 5 and 6::

      N1 = n1;  N2 = n2 − r12·N1;  N3 = n3 − r13·N1
      m5 = n5 − r15·N1 − r35·N3;  m6 = n6 − r16·N1 − r36·N3
      N5 = (m5 − r65·m6) / (1 − r65·r56);  N6 = (m6 − r56·m5) / (1 − r65·r56)

  (r65, r56: the metastable cross-talk, Xe-133m's 199 keV line in ROI 5 and Xe-131m's in ROI 6)

  and C = N / (ε_ROI · BR · V · D) with the decay factor D of :mod:`ims_station.radioxenon`.
  Variances are propagated to first order from the Poisson variances of every gross count.
* HPGe: counts in a ±1.5 FWHM window around the line minus a linear baseline estimated from two
  side windows of the same width.

Not the station's analysis (IDC uses the full ROI 7–10 method, MDCs, L_C); enough to test the
emulator and to give the local alarms a first estimate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ims_station import radioxenon as rx

from .physics import BetaGammaModel, HPGeModel


@dataclass(frozen=True)
class Count:
    """A measured spectrum with its live time (s)."""

    data: np.ndarray          # β-γ: the 256×256 histogram; HPGe: the γ spectrum
    live_s: float


@dataclass(frozen=True)
class Result:
    nuclide: str
    net: float
    net_sigma: float
    conc_mbq_m3: float
    sigma_mbq_m3: float


def _roi(model: BetaGammaModel, c: Count | None) -> dict[int, float]:
    if c is None:
        return {r: 0.0 for r in range(1, 11)}
    return model.roi_counts(c.data)


def net_roi_counts(model: BetaGammaModel, sample: Count, detbk: Count | None = None,
                   gasbk: Count | None = None) -> dict[int, tuple[float, float]]:
    """ROI -> (net counts of the sample, variance) before interference correction."""
    g, d, b = _roi(model, sample), _roi(model, detbk), _roi(model, gasbk)
    out = {}
    for r in g:
        kd = sample.live_s / detbk.live_s if detbk else 0.0
        n = g[r] - kd * d[r]
        var = g[r] + kd * kd * d[r]
        if gasbk is not None:
            kg = sample.live_s / gasbk.live_s
            kgd = gasbk.live_s / detbk.live_s if detbk else 0.0
            n -= kg * (b[r] - kgd * d[r])
            var += kg * kg * (b[r] + kgd * kgd * d[r])
        out[r] = (n, var)
    return out


def analyse_bg(model: BetaGammaModel, sample: Count, volume_m3: float, timing: rx.Timing,
               detbk: Count | None = None, gasbk: Count | None = None) -> dict[str, Result]:
    n = net_roi_counts(model, sample, detbk, gasbk)
    r = model.ratio
    N1, v1 = n[1]
    N2, v2 = n[2][0] - r("RN-222", 1, 2) * N1, n[2][1] + r("RN-222", 1, 2) ** 2 * v1
    N3, v3 = n[3][0] - r("RN-222", 1, 3) * N1, n[3][1] + r("RN-222", 1, 3) ** 2 * v1
    out = {"RN-222": (N1, v1), "XE-135": (N2, v2), "XE-133": (N3, v3)}
    m = {}
    for roi in (5, 6):
        a, b = r("RN-222", 1, roi), r("XE-133", 3, roi)
        m[roi] = (n[roi][0] - a * N1 - b * N3, n[roi][1] + a * a * v1 + b * b * v3)
    # metastable cross-talk: m5 = A5 + r65·A6, m6 = A6 + r56·A5
    r65, r56 = r("XE-133M", 6, 5), r("XE-131M", 5, 6)
    k = 1.0 - r65 * r56
    out["XE-131M"] = ((m[5][0] - r65 * m[6][0]) / k, (m[5][1] + r65 * r65 * m[6][1]) / (k * k))
    out["XE-133M"] = ((m[6][0] - r56 * m[5][0]) / k, (m[6][1] + r56 * r56 * m[5][1]) / (k * k))
    res = {}
    for nuc, (N, var) in out.items():
        roi, br = rx.BG_SIGNATURE[nuc]
        eff = model.roi_efficiency(nuc)
        c = rx.concentration(nuc, N, volume_m3, eff, br, timing)
        s = rx.concentration(nuc, math.sqrt(max(var, 1.0)), volume_m3, eff, br, timing)
        res[nuc] = Result(nuc, N, math.sqrt(max(var, 0.0)), c, s)
    return res


def analyse_hpge(model: HPGeModel, sample: Count, volume_m3: float, timing: rx.Timing,
                 nuclides=("XE-133", "XE-135", "XE-133M", "XE-131M")) -> dict[str, Result]:
    res = {}
    spec = np.asarray(sample.data, dtype=float)
    for nuc in nuclides:
        e, br = rx.GAMMA_LINE[nuc]
        lo, hi = model.window(e)
        w = hi - lo
        left, right = spec[lo - w:lo].sum(), spec[hi:hi + w].sum()
        gross = spec[lo:hi].sum()
        base = (left + right) / 2
        N = gross - base
        var = gross + (left + right) / 4
        eff = model.peak_efficiency(nuc)
        c = rx.concentration(nuc, N, volume_m3, eff, br, timing)
        s = rx.concentration(nuc, math.sqrt(max(var, 1.0)), volume_m3, eff, br, timing)
        res[nuc] = Result(nuc, N, math.sqrt(var), c, s)
    return res
