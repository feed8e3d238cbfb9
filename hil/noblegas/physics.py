"""Detector physics of the noble-gas emulator: what a β-γ coincidence cell or an HPGe detector records
for given activities, as expected counts per channel and as Poisson-distributed events.

Owns:

* :class:`BetaGammaModel` -- a NaI(Tl) well with a plastic-scintillator gas cell, 256 γ × 256 β
  channels, with the energy calibration, resolution, γ efficiency and ROI limits of the real MIX58
  sample (``../shared/samples/ims20/SAMPLE20211203070613605.PHD``; the tables are copied below).
  Per nuclide a list of *branches* (coincidence γ×β, β only, γ only) with their per-decay
  probabilities; a detector response (Gaussian with the calibrated FWHM, threshold at channel 4,
  overflow above the last channel) turns each into a 256×256 coincidence map and β / γ singles
  spectra.  The ROI efficiencies and interference ratios written into a PHD file
  (``#b-gEfficiency``, ``#Ratios``) are *computed* from the same model, so that a standard net-count
  analysis of synthesised data gives back the concentrations it was made from.
* :class:`HPGeModel` -- gamma-only: 4096 channels of 0.25 keV, FWHM ≈ 1 keV, a smooth
  efficiency curve, photopeak + Compton continuum.
* the ambient background (NaI and plastic singles, random coincidences) and the Rn-222 progeny
  (Pb-214, Bi-214 in equilibrium, with Compton continua) that the sample brings along.
* ``roi_mask`` -- which histogram channels belong to an ROI (``low ≤ channel < high`` after the
  keV limits are converted with the quadratic calibration fit and rounded, as openSpex does).

Simplifications (documented in docs/noblegas.md): Xe γ lines have no Compton continuum (only the
Rn progeny do), β spectra have the allowed shape with a non-relativistic Fermi function, K X-rays
are one line per element, no summing, no gain drift, no Xe-133m → Xe-133 ingrowth.

Does not own: the timing (which activities are in the cell when: ``process.py``), the serial
dialect (``ims_station.mca``) or the concentration formula (``ims_station.radioxenon``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr

from ims_station import radioxenon as rx

# ----------------------------------------------------------------- MIX58 calibration (sample S1)

G_ENERGY = [(30.0, 11.70), (53.16, 19.90), (81.0, 31.55), (356.01, 127.70), (661.66, 229.70)]
B_ENERGY = [(79.02, 21.2), (94.26, 25.5), (109.4538, 29.82), (124.595, 34.7), (139.6853, 40.5),
            (154.7265, 45.1), (169.72, 51.0), (184.66, 56.6), (199.56, 60.4), (214.41, 66.0),
            (229.207, 70.4), (243.961, 75.5), (258.67, 80.9), (273.33, 86.0), (287.95, 91.2),
            (302.52, 96.9), (317.046, 100.1), (331.5287, 107.0), (345.968, 111.35), (360.36, 116.3),
            (374.716, 121.4), (389.026, 127.0), (403.2939, 131.4), (417.5199, 135.3)]
G_RESOLUTION = [(30.0, 6.26), (53.16, 8.6), (81.0, 11.7), (356.01, 35.45), (661.66, 51.1)]
B_RESOLUTION = [(94.26, 8.3), (124.595, 29.5), (154.7265, 32.03), (184.66, 39.96), (214.41, 49.96),
                (243.961, 53.6), (273.33, 60.84), (302.52, 67.03), (331.5287, 74.5), (360.36, 84.3),
                (389.026, 93.06)]
G_EFFICIENCY = [(30.0, 0.41), (32.8, 0.46), (59.537, 0.72), (391.7, 0.15), (661.7, 0.09)]
# ROI number -> (β low, β high, γ low, γ high) keV
ROI_LIMITS = {1: (29.8, 597.67, 320.9, 384.7), 2: (29.8, 733.912, 228.98, 280.54),
              3: (29.8, 352.5, 71.15, 99.83), 4: (29.8, 394.14, 19.25, 41.03),
              5: (78.2, 166.0, 19.25, 41.03), 6: (170.73, 252.93, 19.25, 41.03),
              7: (29.8, 78.2, 19.25, 41.03), 8: (252.93, 394.14, 19.25, 41.03),
              9: (170.73, 394.14, 19.25, 41.03), 10: (29.8, 166.0, 19.25, 41.03)}
G_SPAN_KEV = 720
B_SPAN_KEV = 550
NCH = 256
THRESHOLD_CH = 4           # channels 0-3 stay empty, as in the real files
BETA_EFFICIENCY = 0.92     # electrons above threshold in the gas cell (4π plastic)
XE_KX = 30.2               # Xe K X-rays (Kα 29.5/29.8, Kβ 33.6), one line
CS_KX = 31.3               # Cs K X-rays after Xe-133 β decay
ME = 510.999


def _fit(pairs, deg=2):
    x, y = np.array(pairs, dtype=float).T
    return np.polyfit(x, y, deg)


# ----------------------------------------------------------------- branches

@dataclass(frozen=True)
class Deposit:
    """Energy deposited in one detector: a line at *energy* keV, a β continuum with end point
    *beta_qmax* shifted up by *energy*, or nothing (energy None)."""

    energy: float | None = None
    beta_qmax: float | None = None
    photo_fraction: float = 1.0   # γ: the rest is a Compton continuum up to the edge


@dataclass(frozen=True)
class Branch:
    """One way a decay shows in the detector, with its probability per decay."""

    prob: float
    gamma: Deposit | None = None
    beta: Deposit | None = None


def _pf(e_kev: float) -> float:
    """Photopeak fraction of a γ absorbed in the NaI well (rest: Compton) -- a smooth guess."""
    return 1.0 / (1.0 + (e_kev / 320.0) ** 1.6)


BRANCHES: dict[str, list[Branch]] = {
    "XE-133": [
        Branch(0.37289, Deposit(80.997), Deposit(beta_qmax=346.4)),
        Branch(0.4894, Deposit(CS_KX), Deposit(45.0, beta_qmax=346.4)),   # K-CE + β, Cs K X-ray
        Branch(0.10, None, Deposit(beta_qmax=346.4)),
    ],
    "XE-131M": [
        Branch(0.54, Deposit(XE_KX), Deposit(129.4)),                   # K-CE × Xe K X-ray
        Branch(0.288, None, Deposit(158.5)),                            # L-CE (L X-ray below threshold)
        Branch(0.0195, Deposit(163.93), None),
    ],
    "XE-133M": [
        Branch(0.5577, Deposit(XE_KX), Deposit(198.7)),
        Branch(0.21, None, Deposit(227.8)),
        Branch(0.1012, Deposit(233.22), None),
    ],
    "XE-135": [
        Branch(0.90, Deposit(249.79), Deposit(beta_qmax=910.0)),
        Branch(0.03, Deposit(608.2), Deposit(beta_qmax=550.0)),
    ],
    # Rn-222 stands for Pb-214 + Bi-214 in equilibrium with it (per Rn-222 decay).
    "RN-222": [
        Branch(0.356, Deposit(351.93, photo_fraction=_pf(351.93)), Deposit(beta_qmax=672.0)),
        Branch(0.184, Deposit(295.22, photo_fraction=_pf(295.22)), Deposit(beta_qmax=729.0)),
        Branch(0.073, Deposit(241.99, photo_fraction=_pf(241.99)), Deposit(beta_qmax=1019.0)),
        Branch(0.11, None, Deposit(beta_qmax=1019.0)),
        Branch(0.455, Deposit(609.32, photo_fraction=_pf(609.32)), Deposit(beta_qmax=2270.0)),
        Branch(0.19, None, Deposit(beta_qmax=3270.0)),
    ],
    # The QC check source beside the cell: 661.7 keV γ × β (Q 514 keV), Ba K X-ray × 624 keV CE.
    "CS-137": [
        Branch(0.851, Deposit(661.66, photo_fraction=_pf(661.66)), Deposit(beta_qmax=514.0)),
        Branch(0.078, Deposit(32.2), Deposit(624.2)),
        Branch(0.056, None, Deposit(beta_qmax=1175.6)),
    ],
}


def beta_shape(qmax: float, e: np.ndarray, z: int = 55) -> np.ndarray:
    """Allowed β spectrum density on the kinetic-energy grid *e* (keV), not normalised:
    p·W·(Q−T)²·F(Z, W) with a non-relativistic Fermi function."""
    t = np.clip(e, 1e-3, None)
    w = t + ME
    p = np.sqrt(w * w - ME * ME)
    eta = (z / 137.036) * w / p
    x = 2 * math.pi * eta
    fermi = x / -np.expm1(-x)
    out = p * w * (qmax - t) ** 2 * fermi
    out[(e <= 0) | (e >= qmax)] = 0.0
    return out


# ----------------------------------------------------------------- response

class Axis:
    """One detector axis: energy grid -> channel probabilities (Gaussian resolution, threshold,
    overflow lost)."""

    def __init__(self, nch: int, cal: np.ndarray, fwhm, e_max: float, de: float,
                 threshold: int, smear_continua: bool = True) -> None:
        self.nch = nch
        self.cal = cal                                    # E -> channel, polynomial
        self.fwhm = fwhm
        self.threshold = threshold
        self.grid = np.arange(de / 2, e_max, de)          # deposited energies (keV)
        self.de = de
        e = np.linspace(1, e_max * 1.2, 400)
        self.inv = np.polyfit(np.polyval(cal, e), e, len(cal) - 1)
        # energies of the channel edges c-0.5 .. nch-0.5 (channel c holds ch(E) in [c-.5, c+.5))
        self.edges = np.polyval(self.inv, np.arange(nch + 1) - 0.5)
        self.response = None
        if smear_continua:
            sigma = np.maximum(fwhm(self.grid), 0.3) / 2.3548
            cdf = ndtr((self.edges[None, :] - self.grid[:, None]) / sigma[:, None])
            resp = np.diff(cdf, axis=1)
            resp[:, :threshold] = 0.0
            self.response = resp                           # (n_energies, nch)

    def line_pdf(self, e_kev: float) -> np.ndarray:
        """Channel probabilities of a line at *e_kev* (Gaussian with the calibrated FWHM)."""
        sigma = max(float(self.fwhm(np.array([e_kev]))[0]), 0.05) / 2.3548
        p = np.diff(ndtr((self.edges - e_kev) / sigma))
        p[:self.threshold] = 0.0
        return p

    def smear(self, density: np.ndarray) -> np.ndarray:
        """Deposited-energy density on the grid -> channel probabilities."""
        if self.response is not None:
            return density @ self.response
        p, _ = np.histogram(self.grid, bins=self.edges, weights=density)
        p[:self.threshold] = 0.0
        return p

    def channel(self, e_kev) -> np.ndarray:
        return np.polyval(self.cal, e_kev)

    def energy(self, ch) -> np.ndarray:
        return np.polyval(self.inv, ch)

    def density(self, dep: Deposit, compton: bool = True) -> np.ndarray:
        """Normalised deposited-energy density (sum 1 over the grid, before detector losses)."""
        g = self.grid
        d = np.zeros_like(g)
        if dep.beta_qmax is not None:
            shift = dep.energy or 0.0
            d = beta_shape(dep.beta_qmax, g - shift)
        elif dep.energy is not None:
            i = min(int(dep.energy / self.de), len(g) - 1)
            d[i] = dep.photo_fraction
            if compton and dep.photo_fraction < 1.0:
                edge = dep.energy * (2 * dep.energy / ME) / (1 + 2 * dep.energy / ME)
                flat = (g < edge).astype(float)
                if flat.sum():
                    d += (1.0 - dep.photo_fraction) * flat / flat.sum()
        s = d.sum()
        return d / s if s > 0 else d

    def pdf(self, dep: Deposit) -> np.ndarray:
        """Channel probabilities of a deposit (sums to <= 1: threshold and overflow lose some)."""
        if dep.beta_qmax is None and dep.energy is not None and dep.photo_fraction >= 1.0:
            return self.line_pdf(dep.energy)
        return self.smear(self.density(dep))


def _loglog(pairs):
    x, y = np.log(np.array(pairs, dtype=float)).T

    def f(e):
        return float(np.exp(np.interp(math.log(max(e, 1e-3)), x, y)))
    return f


@dataclass
class Expected:
    """Expected (or drawn) counts of one measurement.  β-γ: the coincidence histogram (γ rows × β
    columns) and the singles counts that are *not* coincidences (``g_only``, ``b_only``); the
    singles spectra are derived (projections + singles-only), so a coincidence counts in both, as
    in the hardware.  HPGe: only ``g_only`` (the γ spectrum)."""

    g_only: np.ndarray
    b_only: np.ndarray | None = None
    hist: np.ndarray | None = None

    @property
    def gamma(self) -> np.ndarray:
        return self.g_only if self.hist is None else self.hist.sum(axis=1) + self.g_only

    @property
    def beta(self) -> np.ndarray | None:
        return None if self.hist is None else self.hist.sum(axis=0) + self.b_only

    def scaled(self, k: float) -> "Expected":
        if self.hist is None:
            return Expected(self.g_only * k)
        return Expected(self.g_only * k, self.b_only * k, self.hist * k)

    def __add__(self, other: "Expected") -> "Expected":
        if self.hist is None:
            return Expected(self.g_only + other.g_only)
        return Expected(self.g_only + other.g_only, self.b_only + other.b_only, self.hist + other.hist)

    def categories(self) -> np.ndarray:
        """Flattened event categories: histogram cells (γ·256 + β), then γ-only, then β-only
        (HPGe: the γ channels)."""
        if self.hist is None:
            return self.g_only.ravel()
        return np.concatenate([self.hist.ravel(), self.g_only, self.b_only])


@dataclass(frozen=True)
class Ambient:
    """Detector background independent of the cell contents (counts per second)."""

    gamma_cps: float = 4.5
    beta_cps: float = 0.4
    coinc_cps: float = 0.008


class BetaGammaModel:
    """The β-γ coincidence detector (SAUNA / MIX-like) with the MIX58 calibration."""

    mode = "bg"
    segments = {0: NCH * NCH, 1: NCH, 2: NCH}    # histogram, β singles, γ singles

    def __init__(self, ambient: Ambient | None = None, beta_efficiency: float = BETA_EFFICIENCY) -> None:
        self.ambient = ambient or Ambient()
        self.eps_b = beta_efficiency
        self.g_cal = _fit(G_ENERGY)
        self.b_cal = _fit(B_ENERGY)
        g_fw, b_fw = _fit(G_RESOLUTION), _fit(B_RESOLUTION)
        self.g = Axis(NCH, self.g_cal, lambda e: np.polyval(g_fw, np.clip(e, 20, 700)), 1000.0, 0.5, THRESHOLD_CH)
        self.b = Axis(NCH, self.b_cal, lambda e: np.polyval(b_fw, np.clip(e, 90, 420)), 1100.0, 0.5, THRESHOLD_CH)
        self.eps_g = _loglog(G_EFFICIENCY)
        self._per_decay: dict[str, Expected] = {}
        self._branch_hists: dict[str, list[np.ndarray]] = {}
        self._ambient = self._make_ambient()

    # ----- per-decay maps
    def per_decay(self, nuclide: str) -> Expected:
        """Expected counts per decay of *nuclide* (live detector)."""
        if nuclide not in self._per_decay:
            hist = np.zeros((NCH, NCH))
            g_only = np.zeros(NCH)
            b_only = np.zeros(NCH)
            branch_hists = []
            for br in BRANCHES[nuclide]:
                before = hist.copy()
                gp = self.g.pdf(br.gamma) if br.gamma else None
                bp = self.b.pdf(br.beta) if br.beta else None
                eg = self.eps_g(br.gamma.energy) if br.gamma else 0.0
                eb = self.eps_b if br.beta else 0.0
                if gp is not None and bp is not None:
                    hist += br.prob * eg * eb * np.outer(gp, bp)
                    g_only += br.prob * (eg * eb * (1 - bp.sum()) + eg * (1 - eb)) * gp
                    b_only += br.prob * (eg * eb * (1 - gp.sum()) + eb * (1 - eg)) * bp
                elif gp is not None:
                    g_only += br.prob * eg * gp
                else:
                    b_only += br.prob * eb * bp
                branch_hists.append(hist - before)
            self._per_decay[nuclide] = _expected(hist, g_only, b_only)
            self._branch_hists[nuclide] = branch_hists
        return self._per_decay[nuclide]

    def _make_ambient(self) -> Expected:
        """Ambient background per second."""
        a = self.ambient
        ge = self.g.grid
        gd = np.exp(-ge / 230.0) * (ge > 15)
        gd /= gd.sum()
        pb = np.exp(-0.5 * ((ge - 75.0) / 1.0) ** 2)       # Pb K X-rays from the shield
        gd = 0.93 * gd + 0.05 * pb / pb.sum()
        i609 = int(609.3 / self.g.de)
        gd[i609] += 0.02
        gpdf = self.g.smear(gd)
        be = self.b.grid
        bd = 0.55 * np.exp(-be / 25.0) / np.exp(-be / 25.0).sum() + 0.45 * (be < 900) / (be < 900).sum()
        bpdf = self.b.smear(bd)
        hist = a.coinc_cps * np.outer(gpdf / gpdf.sum(), bpdf / bpdf.sum())
        return _expected(hist, a.gamma_cps * gpdf / gpdf.sum(), a.beta_cps * bpdf / bpdf.sum())

    def ambient_per_second(self) -> Expected:
        return self._ambient

    def expected(self, decays: dict[str, float], live_s: float) -> Expected:
        """Expected counts for *decays* (nuclide -> decays while the analyser is live) plus the
        ambient background over *live_s* seconds."""
        out = self._ambient.scaled(live_s)
        for nuc, n in decays.items():
            if n:
                out = out + self.per_decay(nuc).scaled(n)
        return out

    # ----- analysis helpers (what a PHD file's calibration blocks say about this model)
    def roi_channels(self, roi: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """(γ lo, γ hi), (β lo, β hi) channel bounds: channel c is in when lo <= c < hi, the limits
        being the keV limits through the calibration fit, rounded (openSpex ``calibrate``)."""
        b_lo, b_hi, g_lo, g_hi = ROI_LIMITS[roi]
        cg = np.polyval(self.g_cal, [g_lo, g_hi])
        cb = np.polyval(self.b_cal, [b_lo, b_hi])
        return (int(cg[0] + 0.5), int(cg[1] + 0.5)), (int(cb[0] + 0.5), int(cb[1] + 0.5))

    def roi_mask(self, roi: int) -> np.ndarray:
        (g0, g1), (b0, b1) = self.roi_channels(roi)
        m = np.zeros((NCH, NCH), dtype=bool)
        m[max(g0, 0):min(g1, NCH), max(b0, 0):min(b1, NCH)] = True
        return m

    def roi_counts(self, hist: np.ndarray) -> dict[int, float]:
        return {r: float(hist[self.roi_mask(r)].sum()) for r in ROI_LIMITS}

    def roi_sum(self, hist: np.ndarray, roi: int) -> float:
        return float(hist[self.roi_mask(roi)].sum())

    def roi_efficiency(self, nuclide: str, roi: int | None = None) -> float:
        """ε of the PHD ``#b-gEfficiency`` block, with openSpex's meaning (its ``bgm.ResponseMatrix``):
        counts in the nuclide's ROI per decay / BR; for Xe-133 in the X-ray ROIs (4, 7-10) only the
        counts of the X-ray branches per decay / BR(30 keV) -- the 81 keV branch's share there is
        an interference ratio (:meth:`xe133_81_ratio`)."""
        if roi is None or roi == rx.BG_SIGNATURE[nuclide][0]:
            r, br = rx.BG_SIGNATURE[nuclide]
            return self.roi_sum(self.per_decay(nuclide).hist, r) / br
        if nuclide != "XE-133" or roi not in (4, 7, 8, 9, 10):
            raise ValueError(f"no #b-gEfficiency row for {nuclide} in ROI {roi}")
        self.per_decay(nuclide)
        xray = sum(self._branch_hists[nuclide][1:])
        return self.roi_sum(xray, roi) / rx.XE133_XRAY_ROI[1]

    def ratio(self, nuclide: str, src_roi: int, dst_roi: int) -> float:
        """Interference ratio of the ``#Ratios`` block: counts of *nuclide* in *dst_roi* per count
        in *src_roi*."""
        h = self.per_decay(nuclide).hist
        return self.roi_sum(h, dst_roi) / self.roi_sum(h, src_roi)

    def xe133_81_ratio(self, dst_roi: int) -> float:
        """Counts of Xe-133's 81 keV branch in an X-ray ROI per Xe-133 count in ROI 3 (the rows
        ``XE133-4_81:30`` and ``XE133-7..10_81:30``; MIX58 has 0.10, 0.04, 0.007, 0.02, 0.08)."""
        self.per_decay("XE-133")
        return self.roi_sum(self._branch_hists["XE-133"][0], dst_roi) / self.roi_sum(self.per_decay("XE-133").hist, 3)

    def calibration(self) -> dict:
        """The calibration blocks a PHD file of this detector carries (values of this model).

        ``ratios`` has 18 rows in the order openSpex indexes them: Rn progeny (ROI 1) into ROIs 2-10;
        Xe-133 (ROI 3) into ROIs 4-10 -- the 81 keV branch only for the X-ray ROIs 4, 7-10, every
        Xe-133 count for the metastable ROIs 5 and 6; then the metastable cross-talk Xe-133m (ROI 6)
        into ROI 5 and Xe-131m (ROI 5) into ROI 6."""
        effs = [("XE-135", 2), ("XE-133", 3), ("XE-133", 4), ("XE-131m", 5), ("XE-133m", 6),
                ("XE-133", 7), ("XE-133", 8), ("XE-133", 9), ("XE-133", 10)]
        x133 = [(f"XE133-{d}_81:30", 3, d, self.ratio("XE-133", 3, d) if d in (5, 6) else self.xe133_81_ratio(d))
                for d in range(4, 11)]
        return {
            "g_energy": G_ENERGY, "b_energy": B_ENERGY, "g_resolution": G_RESOLUTION,
            "b_resolution": B_RESOLUTION, "g_efficiency": G_EFFICIENCY, "roi_limits": ROI_LIMITS,
            "g_span_kev": G_SPAN_KEV, "b_span_kev": B_SPAN_KEV, "channels": NCH,
            "bg_efficiency": [(n, r, self.roi_efficiency(n.upper(), r)) for n, r in effs],
            "ratios": ([(f"PB214_352:{x}", 1, d, self.ratio("RN-222", 1, d))
                        for x, d in (("242", 2), ("80", 3))]
                       + [(f"PB214_352:30_{d}", 1, d, self.ratio("RN-222", 1, d)) for d in range(4, 11)]
                       + x133
                       + [("XE133M_199:129", 6, 5, self.ratio("XE-133M", 6, 5)),
                          ("XE131M_129:199", 5, 6, self.ratio("XE-131M", 5, 6))]),
        }


def _expected(hist, g_only, b_only) -> Expected:
    return Expected(g_only, b_only, hist)


# ----------------------------------------------------------------- HPGe

HPGE_NCH = 4096
HPGE_KEV_PER_CH = 0.25
HPGE_LINES: dict[str, list[tuple[float, float]]] = {
    "XE-131M": [(XE_KX, 0.54), (163.93, 0.0195)],
    "XE-133": [(CS_KX, 0.489), (80.997, 0.369)],
    "XE-133M": [(XE_KX, 0.56), (233.22, 0.1012)],
    "XE-135": [(249.79, 0.90), (608.19, 0.029)],
    "RN-222": [(241.99, 0.073), (295.22, 0.184), (351.93, 0.356), (609.32, 0.455), (1120.29, 0.149)],
    "CS-137": [(32.2, 0.07), (661.66, 0.851)],
}


class HPGeModel:
    """Gamma-only noble-gas detector (SPALAX-like): a coaxial HPGe on the concentrated xenon."""

    mode = "hpge"
    segments = {0: HPGE_NCH}

    def __init__(self, ambient_cps: float = 2.0) -> None:
        self.cal = np.array([1.0 / HPGE_KEV_PER_CH, 0.0])        # E -> channel, linear
        self.axis = Axis(HPGE_NCH, self.cal, self.fwhm, HPGE_NCH * HPGE_KEV_PER_CH * 1.05, 0.05, 40,
                         smear_continua=False)
        self.ambient_cps = ambient_cps
        self._per_decay: dict[str, Expected] = {}
        ge = self.axis.grid
        cont = np.exp(-ge / 300.0) * (ge > 10)
        p = 0.97 * self.axis.smear(cont / cont.sum())
        for e, w in ((74.97, 0.01), (238.6, 0.004), (351.9, 0.004), (609.3, 0.006), (1001.0, 0.006)):
            p = p + w * self.axis.line_pdf(e)            # Pb X-rays, Pb-212, Pb-214, Bi-214, Pa-234m
        self._ambient = Expected(ambient_cps * p / p.sum())

    @staticmethod
    def fwhm(e):
        return np.sqrt(0.7 ** 2 + 0.0013 * np.asarray(e, dtype=float))     # keV: ~0.77 @ 81, ~0.9 @ 250

    @staticmethod
    def efficiency(e: float) -> float:
        """Full-energy-peak efficiency (concentrated Xe in a well geometry, smooth guess)."""
        return 0.12 * (1 - math.exp(-((e / 25.0) ** 2.5))) * (e / 120.0) ** -0.55 if e > 120 else \
            0.12 * (1 - math.exp(-((e / 25.0) ** 2.5)))

    def per_decay(self, nuclide: str) -> Expected:
        """Expected counts per decay: full-energy peaks plus a flat Compton continuum up to each
        line's edge (peak-to-total 0.8 below 200 keV, 0.35 above)."""
        if nuclide not in self._per_decay:
            g = np.zeros(HPGE_NCH)
            for e, p in HPGE_LINES[nuclide]:
                peak = p * self.efficiency(e)
                g += peak * self.axis.line_pdf(e)
                pf = 0.8 if e < 200 else 0.35
                edge = e * (2 * e / ME) / (1 + 2 * e / ME)
                flat = (self.axis.grid < edge).astype(float)
                g += peak * (1 - pf) / pf * self.axis.smear(flat / flat.sum())
            self._per_decay[nuclide] = Expected(g)
        return self._per_decay[nuclide]

    def ambient_per_second(self) -> Expected:
        return self._ambient

    def expected(self, decays: dict[str, float], live_s: float) -> Expected:
        out = self._ambient.scaled(live_s)
        for nuc, n in decays.items():
            if n:
                out = out + self.per_decay(nuc).scaled(n)
        return out

    def channel(self, e: float) -> float:
        return float(np.polyval(self.cal, e))

    def calibration(self) -> dict:
        """The calibration blocks a gamma-only PHD file of this detector carries."""
        pts = (30.0, 81.0, 163.93, 233.22, 249.79, 351.93, 609.32, 1000.0)
        return {
            "g_energy": [(e, self.channel(e)) for e in pts],
            "g_resolution": [(e, float(self.fwhm(e))) for e in pts],
            "g_efficiency": [(e, self.efficiency(e)) for e in pts],
            "channels": HPGE_NCH, "g_span_kev": int(HPGE_NCH * HPGE_KEV_PER_CH),
            "peak_efficiency": {n: self.peak_efficiency(n) for n in rx.XENON},
        }

    def peak_efficiency(self, nuclide: str) -> float:
        """Counts in the ±1.5 FWHM window of the nuclide's main line per decay / emission probability."""
        e, p = rx.GAMMA_LINE[nuclide]
        lo, hi = self.window(e)
        return float(self.axis.line_pdf(e)[lo:hi].sum() * self.efficiency(e))

    def window(self, e: float, k: float = 1.5) -> tuple[int, int]:
        w = float(self.fwhm(e)) * k
        return int(round(self.channel(e - w))), int(round(self.channel(e + w))) + 1


def model_for(mode: str):
    if mode == "bg":
        return BetaGammaModel()
    if mode == "hpge":
        return HPGeModel()
    raise ValueError(f"detector mode must be 'bg' (β-γ coincidence) or 'hpge' (gamma only), got {mode!r}")


# ----------------------------------------------------------------- synthesis

def synthesise(expected: Expected, rng: np.random.Generator) -> Expected:
    """Poisson counting statistics: histogram cells and γ-only / β-only singles are drawn
    independently; the singles spectra are the histogram's projections plus the singles-only
    counts (so a coincidence counts in both singles spectra, as in the hardware)."""
    if expected.hist is None:
        return Expected(rng.poisson(expected.g_only).astype(np.int64))
    return Expected(rng.poisson(expected.g_only).astype(np.int64), rng.poisson(expected.b_only).astype(np.int64),
                    rng.poisson(expected.hist).astype(np.int64))


def decays_during(activities_bq: dict[str, float], real_s: float, live_fraction: float) -> dict[str, float]:
    """Decays counted while live during a count of *real_s* seconds that starts with these activities."""
    out = {}
    for nuc, a in activities_bq.items():
        lam = rx.decay_constant(nuc)
        out[nuc] = a * -math.expm1(-lam * real_s) / lam * live_fraction
    return out
