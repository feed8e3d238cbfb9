"""Synthesis statistics of the noble-gas emulator: expected counts per ROI, Poisson draws, peaks at the
right energies, reproducibility by seed, and the inverse check (net counts -> concentrations)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ims_station import mca
from ims_station import radioxenon as rx
from ims_station.hil.noblegas import analysis, physics
from ims_station.hil.noblegas.device import ManualClock, NobleGasDetector, detector_model


@pytest.fixture(scope="module")
def bg():
    return detector_model("bg")


@pytest.fixture(scope="module")
def hpge():
    return detector_model("hpge")


def test_formula_and_inverse_agree():
    t = rx.Timing(43_200, 21_600, 39_600, 39_350)
    n = rx.expected_counts("XE-133", 1.0, 13.4, 0.37, 0.373, t)
    assert rx.concentration("XE-133", n, 13.4, 0.37, 0.373, t) == pytest.approx(1.0)
    # about 50 counts for 1 mBq/m3 of Xe-133 in a 12 h MIX-like sample: the MDC is ~1 mBq/m3
    assert 30 < n < 80
    # the decay correction: a short-lived nuclide loses more between collection and count
    assert rx.decay_factor("XE-135", t) < rx.decay_factor("XE-133", t)


def test_calibration_blocks_have_the_phd_shape_and_realistic_values(bg):
    cal = bg.calibration()
    assert len(cal["bg_efficiency"]) == 9 and len(cal["ratios"]) == 18       # openSpex reads 16 or 18
    eff = {(n, r): e for n, r, e in cal["bg_efficiency"]}
    for key in (("XE-135", 2), ("XE-133", 3), ("XE-131m", 5), ("XE-133m", 6)):
        assert 0.15 < eff[key] < 0.5, key        # the real MIX58 values are 0.21 .. 0.37
    ratios = {name: v for name, _, _, v in cal["ratios"]}
    # Rn progeny into the X-ray ROIs: close to MIX58's 0.22 / 0.06 / 0.06
    assert ratios["PB214_352:30_4"] == pytest.approx(0.22, abs=0.08)
    assert ratios["PB214_352:30_5"] == pytest.approx(0.06, abs=0.03)


def test_peaks_sit_at_the_calibrated_channels(bg):
    """Xe-133: 81 keV γ peak at channel ~31.6 (MIX58 #g_Energy); Xe-131m: 129 keV CE in β, ~30 keV
    X-ray in γ; Xe-135: 250 keV γ; Rn progeny: 352 keV γ.  Thresholds leave channels 0-3 empty."""
    for nuc, g_kev, b_kev, above in (("XE-133", 81.0, None, 20), ("XE-133", 31.3, None, 0),
                                     ("XE-131M", 30.2, 129.4, 0), ("XE-135", 249.8, None, 0),
                                     ("RN-222", 351.9, None, 110)):
        e = bg.per_decay(nuc)
        g_peak = above + int(np.argmax(e.hist.sum(axis=1)[above:]))
        assert abs(g_peak - bg.g.channel(g_kev)) <= 1.5, nuc
        if b_kev:
            assert abs(int(np.argmax(e.hist.sum(axis=0))) - bg.b.channel(b_kev)) <= 2.5, nuc
        assert e.hist[:physics.THRESHOLD_CH].sum() == 0 and e.hist[:, :physics.THRESHOLD_CH].sum() == 0


def test_poisson_draws_match_the_expected_roi_counts(bg):
    acts = {"XE-133": 0.05, "XE-131M": 0.01, "XE-133M": 0.005, "XE-135": 0.02, "RN-222": 0.4}
    exp = bg.expected(physics.decays_during(acts, 40_000, 0.9937), 39_750)
    mu = bg.roi_counts(exp.hist)
    rng = np.random.default_rng(5)
    draws = [bg.roi_counts(physics.synthesise(exp, rng).hist) for _ in range(60)]
    for r, m in mu.items():
        mean = np.mean([d[r] for d in draws])
        assert abs(mean - m) < 4 * math.sqrt(m / len(draws)) + 0.5, (r, mean, m)
        var = np.var([d[r] for d in draws], ddof=1)
        assert 0.4 * m < var < 1.8 * m + 1, (r, var, m)     # Poisson: variance = mean
    s = physics.synthesise(exp, rng)
    # singles include the coincidences: each spectrum is at least the histogram's projection
    assert (s.gamma >= s.hist.sum(axis=1)).all() and (s.beta >= s.hist.sum(axis=0)).all()
    assert s.gamma.dtype.kind == "i"


def _driver_count(det: NobleGasDetector, clk: ManualClock, until: float) -> tuple[analysis.Count, float, float]:
    """Count from now until *until* (run seconds) with a true-time preset, as a driver would."""
    def q(verb, *a):
        return mca.expect(verb, mca.parse_reply(det.handle(mca.encode_command(verb, *a))))
    q("STOP")
    q("CLEAR")
    q("SET_TRUE_PRESET", int(round((until - det.now()) * mca.TICKS_PER_SECOND)))
    start = det.now()
    q("START")
    clk.advance(until - det.now())
    assert q("SHOW_ACTIVE").value == 0           # the preset stopped it
    live, real = q("SHOW_LIVE").value / 50, q("SHOW_TRUE").value / 50
    return analysis.Count(det.memory()[0].copy(), live), real, start


CONC = {"XE-133": 40.0, "XE-131M": 15.0, "XE-133M": 10.0, "XE-135": 30.0, "RN-222": 50.0}


@pytest.mark.parametrize("seed", [3, 4])
def test_beta_gamma_cycle_gives_back_the_concentrations(seed):
    """DETBK, GASBK and the sample counted through the dialect; the net-count analysis recovers every
    input concentration within 4 sigma of counting statistics."""
    clk = ManualClock()
    det = NobleGasDetector(seed=seed, clock=clk, concentrations=CONC)
    s = det.schedule
    detbk, _, _ = _driver_count(det, clk, s.first_gasbk() - det.cycle.calib_s)
    _driver_count(det, clk, s.first_gasbk())             # the start-up calibration (Xe-133 spike)
    gasbk, _, _ = _driver_count(det, clk, s.first_gasbk() + det.cycle.gasbk_s)
    smp, real, start = _driver_count(det, clk, s.first_gasbk() + det.cycle.gasbk_s + det.cycle.acquisition_s)
    rec = s.sample(0)
    assert start == rec.acquisition_start
    timing = rx.Timing(rec.collection_stop - rec.collection_start, start - rec.collection_stop, real, smp.live_s)
    res = analysis.analyse_bg(det.model, smp, rec.effective_volume_m3, timing, detbk, gasbk)
    for nuc, r in res.items():
        assert abs(r.conc_mbq_m3 - CONC[nuc]) < 4 * r.sigma_mbq_m3, (nuc, r)
        assert r.sigma_mbq_m3 < 0.35 * CONC[nuc], (nuc, r)      # a real measurement, not noise


def test_hpge_mode_gives_back_the_concentrations():
    clk = ManualClock()
    det = NobleGasDetector(mode="hpge", seed=2, clock=clk, concentrations={k: 10 * v for k, v in CONC.items()})
    s = det.schedule
    assert det.model.segments == {0: physics.HPGE_NCH}
    _driver_count(det, clk, s.first_gasbk() + det.cycle.gasbk_s)
    smp, real, start = _driver_count(det, clk, s.first_gasbk() + det.cycle.gasbk_s + det.cycle.acquisition_s)
    rec = s.sample(0)
    timing = rx.Timing(rec.collection_stop - rec.collection_start, start - rec.collection_stop, real, smp.live_s)
    res = analysis.analyse_hpge(det.model, smp, rec.effective_volume_m3, timing)
    for nuc in ("XE-133", "XE-135", "XE-133M"):
        r = res[nuc]
        assert abs(r.conc_mbq_m3 - 10 * CONC[nuc]) < 4 * r.sigma_mbq_m3, (nuc, r)
    spec = smp.data
    for e in (80.997, 249.79, 351.93):          # the lines stand out of the continuum
        c = int(round(det.model.channel(e)))
        assert spec[c - 3:c + 4].sum() > 3 * spec[c - 40:c - 33].sum()


def test_same_seed_same_data_other_seed_other_data():
    def run(seed):
        clk = ManualClock()
        det = NobleGasDetector(seed=seed, clock=clk)
        for verb in ("CLEAR", "START"):
            det.handle(mca.encode_command(verb))
        # polling pattern must not matter: advance in uneven steps
        for step in ((1000, 7.5, 30_000, 2.5) if seed == 1 else (31_010,)):
            clk.advance(step)
            det.handle(mca.encode_command("SHOW_LIVE"))
        return det.memory()[0].copy(), det.memory()[2].copy()
    a, b, c = run(1), run(1), run(2)
    assert a[0].sum() > 0
    assert (a[0] == b[0]).all() and (a[1] == b[1]).all()
    assert not (a[1] == c[1]).all()


def test_uneven_polling_does_not_change_the_data():
    """The events of a phase are drawn once; how often the driver asks does not change them."""
    out = []
    for steps in ((31_010.0,), (1000.0, 7.5, 30_000.0, 2.5)):
        clk = ManualClock()
        det = NobleGasDetector(seed=9, clock=clk)
        det.handle(mca.encode_command("START"))
        for s in steps:
            clk.advance(s)
            det.handle(mca.encode_command("SHOW_LIVE"))
        out.append(det.memory()[2].copy())
    assert (out[0] == out[1]).all()


def _real_sample(shared_dir):
    """The real MIX58 SAMPLEPHD's spectra (a minimal reader of three blocks, for comparison only;
    the IMS 2.0 codec is ims_station/ims20)."""
    lines = (shared_dir / "samples" / "ims20" / "SAMPLE20211203070613605.PHD").read_text().splitlines()

    def spectrum(name):
        i = lines.index(name)
        out = []
        for ln in lines[i + 2:]:
            if ln.startswith(("#", "STOP")):
                break
            out += [int(x) for x in ln.split()[1:]]
        return np.array(out)
    i = lines.index("#Histogram")
    hist = np.array([[int(x) for x in lines[i + 2 + k].split()] for k in range(256)])
    return spectrum("#g_Spectrum"), spectrum("#b_Spectrum"), hist, 50400.0


def test_synthesised_sample_looks_like_the_real_mix58_sample(shared_dir):
    """Default background concentrations, one 11 h acquisition: count rates within a factor of two
    of the real file's, the same empty threshold channels, the X-ray and 81 keV bands at the same
    γ channels."""
    g_real, b_real, h_real, live_real = _real_sample(shared_dir)
    clk = ManualClock()
    det = NobleGasDetector(seed=8, clock=clk)
    s = det.schedule
    clk.advance(s.first_gasbk() + det.cycle.gasbk_s)
    count, _, _ = _driver_count(det, clk, det.now() + det.cycle.acquisition_s)
    mem = det.memory()
    for ours, real in ((mem[2].sum(), g_real.sum()), (mem[1].sum(), b_real.sum()), (mem[0].sum(), h_real.sum())):
        rate, rate_real = ours / count.live_s, real / live_real
        assert 0.5 < rate / rate_real < 2.0, (rate, rate_real)
    for h in (mem[0], h_real):
        assert h[:4].sum() == 0 and h[:, :4].sum() == 0
        proj = h.sum(axis=1)
        assert 11 <= int(np.argmax(proj[:20])) <= 13          # ~31 keV X-rays
        assert 29 <= 20 + int(np.argmax(proj[20:60])) <= 32   # 81 keV


def test_open_spex_bgm_analysis_gives_back_the_concentrations(monkeypatch):
    """An independent analysis: openSpex's BGM (FOI's net-count method, open-spex 1.0.7) run on the
    emulator's ROI gross counts with the calibration the model states (efficiencies, 18 ratios,
    xenon volume) recovers the input concentrations -- so the calibration blocks mean what openSpex
    thinks they mean."""
    monkeypatch.setenv("MPLBACKEND", "Agg")
    from tests.conftest import need_module

    bgm = need_module("open_spex.bgm", how="pip install --no-deps open-spex==1.0.7 (./run tests installs it)")
    # Its Monte-Carlo estimate of the *systematic* errors (10 000 histories in a Python loop, 6 s) is
    # not what is checked here: only the activities and their counting errors.
    monkeypatch.setattr(bgm, "calcErr", lambda a, da, z: (np.zeros(np.size(a, 0)), [], []))
    clk = ManualClock()
    det = NobleGasDetector(seed=3, clock=clk, concentrations=CONC)
    s = det.schedule
    counts = []
    # the detector background, the start-up calibration (the Xe-133 spike: not a background, unused),
    # the gas background, the sample
    for until in (s.first_gasbk() - det.cycle.calib_s, s.first_gasbk(), s.first_gasbk() + det.cycle.gasbk_s,
                  s.first_gasbk() + det.cycle.gasbk_s + det.cycle.acquisition_s):
        c, real, start = _driver_count(det, clk, until)
        counts.append((c, real, start))
    (d, d_real, _), _calib, (g, g_real, g_start), (smp, s_real, s_start) = counts
    rec = s.sample(0)
    cal = det.model.calibration()
    eff = [e for _, _, e in cal["bg_efficiency"]]
    rat = [r for *_, r in cal["ratios"]]

    def gross(c):
        return [det.model.roi_counts(c.data)[r] for r in range(1, 11)]
    setup = [s_start - g_start, rec.collection_stop - rec.collection_start, s_start - rec.collection_stop,
             s_real, smp.live_s, g_real, g.live_s, d_real, d.live_s, rec.xe_volume_cm3, rec.xe_volume_err_cm3]
    h = bgm.bgmHandler(None, False, setup, eff + [0.01 * e for e in eff], rat + [0.01 * r for r in rat],
                       gross(smp), gross(g), gross(d))
    bgm.bgm(h, comb=False, ingrowth=False)
    for i, nuc in ((1, "XE-135"), (2, "XE-133"), (3, "XE-133"), (4, "XE-131M"), (5, "XE-133M")):
        assert abs(h.AC[i] - CONC[nuc]) < 4 * h.ACErr[i], (nuc, h.AC[i], h.ACErr[i])
    assert abs(h.Xe133AC - CONC["XE-133"]) < 4 * h.Xe133ACErr
