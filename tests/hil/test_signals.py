"""Signal generators: Peterson noise against ObsPy's tables, chunking, events, array delays."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.signal import welch

from ims_station.hil import signals
from ims_station.hil.signals import (Blast, ChannelSignal, PlaneWave, Scenario, SeismicEvent, ShapedNoise,
                                     TPhase, nhnm_db, nlnm_db, seismic_psd)
from tests.conftest import need_module

spectral = need_module("obspy.signal.spectral_estimation")


@pytest.mark.parametrize("ours, theirs", [(nlnm_db, spectral.get_nlnm), (nhnm_db, spectral.get_nhnm)])
def test_peterson_tables_match_obspy(ours, theirs):
    periods, db = theirs()
    m = (periods >= 0.1) & (periods <= 1e5)
    assert np.max(np.abs(ours(periods[m]) - db[m])) < 0.01


@pytest.mark.parametrize("level, theirs", [(0.0, spectral.get_nlnm), (1.0, spectral.get_nhnm)])
@pytest.mark.parametrize("fs, nperseg, periods", [
    (20.0, 2048, (0.2, 0.5, 1.0, 2.0, 3.0)),
    (2.0, 4096, (8.0, 15.0, 20.0, 30.0, 50.0, 100.0)),
])
def test_noise_psd_matches_obspy_noise_model(level, theirs, fs, nperseg, periods):
    """Welch PSD of the generated acceleration noise within 1 dB of ObsPy's NLNM/NHNM."""
    psd = seismic_psd(level, "acceleration", highpass_s=None)
    x = ShapedNoise(psd, fs, seed=3, stream=1).window(0, 1 << 18)
    f, p = welch(x, fs, nperseg=nperseg)
    model_t, model_db = theirs()
    order = np.argsort(model_t)
    for period in periods:
        band = (f > 0.9 / period) & (f < 1.1 / period)
        model = np.mean(10 ** (np.interp(1 / f[band], model_t[order], model_db[order]) / 10))
        assert abs(10 * np.log10(p[band].mean() / model)) < 1.0, period


def test_level_interpolates_between_the_models_in_db():
    f = np.array([0.05, 0.2, 1.0, 5.0])
    lo = seismic_psd(0.0, "acceleration", None)(f)
    hi = seismic_psd(1.0, "acceleration", None)(f)
    mid = seismic_psd(0.5, "acceleration", None)(f)
    assert np.allclose(10 * np.log10(mid), (10 * np.log10(lo) + 10 * np.log10(hi)) / 2)


def test_velocity_psd_is_acceleration_over_omega_squared():
    f = np.array([0.1, 1.0, 10.0])
    a = seismic_psd(0.3, "acceleration", None)(f)
    v = seismic_psd(0.3, "velocity", None)(f)
    assert np.allclose(v, a / (2 * np.pi * f) ** 2)


@settings(max_examples=30, deadline=None)
@given(cuts=st.lists(st.integers(1, 20000), min_size=1, max_size=6), start=st.integers(0, 50000))
def test_any_cut_of_the_stream_gives_the_same_samples(cuts, start):
    src = ShapedNoise(seismic_psd(0.5), 100.0, seed=9, stream=2, block=4096)
    total = sum(cuts)
    whole = src.window(start, total)
    pieces = []
    i = start
    for n in cuts:
        pieces.append(src.window(i, n))
        i += n
    assert np.array_equal(whole, np.concatenate(pieces))


def test_noise_is_seeded():
    a = ShapedNoise(seismic_psd(), 100.0, seed=1, stream=0).window(1000, 500)
    b = ShapedNoise(seismic_psd(), 100.0, seed=1, stream=0).window(1000, 500)
    c = ShapedNoise(seismic_psd(), 100.0, seed=2, stream=0).window(1000, 500)
    d = ShapedNoise(seismic_psd(), 100.0, seed=1, stream=1).window(1000, 500)
    assert np.array_equal(a, b)
    assert not np.allclose(a, c) and not np.allclose(a, d)


def test_crossfade_keeps_variance_stationary():
    src = ShapedNoise(signals.band_psd(1.0, 10.0), 50.0, seed=4, stream=0, block=1024)
    x = src.window(0, 512 * 400).reshape(400, 512)
    # Variance at block joints (index 0) equals variance mid-block (index 256), within sampling error.
    assert np.var(x[:, :8]) == pytest.approx(np.var(x[:, 250:258]), rel=0.2)
    assert np.var(x) == pytest.approx(1.0, rel=0.1)


def test_event_onsets_follow_distance_and_velocities():
    ev = SeismicEvent(origin_time=10.0, distance_km=120.0, depth_km=0.0, vp_km_s=6.0, vs_km_s=3.5)
    tp, ts = ev.arrivals()
    assert tp == pytest.approx(30.0)
    assert ts - tp == pytest.approx(120.0 * (1 / 3.5 - 1 / 6.0))
    t = np.arange(0, 80, 0.01)
    v = ev.velocity(t)
    assert not v[t < tp].any()                      # nothing before P
    assert np.abs(v[(t > tp) & (t < tp + 2)]).max() > 0.2 * ev.p_amp
    s_win = np.abs(v[(t > ts) & (t < ts + 5)]).max()
    p_win = np.abs(v[(t > tp) & (t < tp + 5)]).max()
    assert s_win > p_win                             # earthquake: S stronger than P


def test_plane_wave_delays_match_obspy_timeshift():
    array_analysis = need_module("obspy.signal.array_analysis")
    positions = np.array([[0.0, 0.0], [1.2, 0.3], [-0.8, 1.5], [0.4, -2.0]])
    pw = PlaneWave(backazimuth_deg=63.0, slowness_s_per_km=0.08)
    sx, sy = pw.slowness_vector
    table = array_analysis.get_timeshift(positions, sx, sy, 0.01, 1, 1)
    assert np.allclose(pw.delays(positions), table[:, 0, 0], atol=1e-6)


def test_plane_wave_reaches_the_element_towards_the_source_first():
    pw = PlaneWave(backazimuth_deg=90.0, slowness_s_per_km=0.1)    # source due east
    d = pw.delays([(0.0, 0.0), (2.0, 0.0), (-2.0, 0.0)])
    assert d[1] == pytest.approx(-0.2) and d[2] == pytest.approx(0.2)


def test_array_elements_see_the_event_shifted_by_their_delay():
    ev = SeismicEvent(origin_time=0.0, distance_km=60.0, backazimuth_deg=45.0, seed=1)
    sc = Scenario(seed=1, seismic_level=0.0, events=[ev])
    fs = 200.0
    ref = ChannelSignal(sc, "seismic", 1.0, fs, stream=1, position_km=(0.0, 0.0))
    pos = (1.0, 1.0)
    el = ChannelSignal(sc, "seismic", 1.0, fs, stream=1, position_km=pos)
    delay = ev.plane_waves()[0].delays([pos])[0]
    t = np.arange(0, 30, 1 / fs)
    tp = ev.arrivals()[0]
    onset = lambda x: t[np.argmax(np.abs(x - ref.noise.window(0, len(t))) > 1e-9)]  # noqa: E731
    assert onset(el.physical(0, len(t))) - onset(ref.physical(0, len(t))) == pytest.approx(delay, abs=1.5 / fs)
    assert onset(ref.physical(0, len(t))) == pytest.approx(tp, abs=1.5 / fs)


def test_blast_is_an_n_wave_at_the_celerity_arrival():
    b = Blast(origin_time=5.0, distance_km=30.0, peak_pa=3.0, duration_s=2.0, celerity_km_s=0.3)
    ta = b.arrival()
    assert ta == pytest.approx(105.0)
    p = b.pressure(np.array([ta - 1, ta + 0.2, ta + 1.0, ta + 1.8, ta + 3]))
    assert p[0] == 0 and p[-1] == 0
    assert p[1] == pytest.approx(3.0 * (1 - 0.2), rel=1e-3)
    assert p[2] == pytest.approx(0.0, abs=1e-6)
    assert p[3] == pytest.approx(-3.0 * 0.8, rel=1e-3)


def test_tphase_arrives_at_sound_speed_with_a_spindle_envelope():
    tp = TPhase(origin_time=0.0, distance_km=1485.0, peak_pa=4.0, rise_s=10.0, decay_s=30.0)
    assert tp.arrival() == pytest.approx(1000.0)
    env = tp.envelope(np.array([999.0, 1005.0, 1010.0, 1040.0]))
    assert env[0] == 0 and 0 < env[1] < env[2] == pytest.approx(4.0) and env[3] == pytest.approx(4.0 / math.e)
    sc = Scenario(seed=2, tphases=[tp])
    ch = ChannelSignal(sc, "hydroacoustic", 0.01, 100.0, stream=3)
    quiet = ch.physical(90000, 500)          # before the arrival: ocean background only
    loud = ch.physical(100800, 500)          # in the T-phase
    assert np.std(loud) > 10 * np.std(quiet)


def test_volts_are_physical_units_times_sensitivity():
    sc = Scenario(seed=5, seismic_level=0.5)
    ch = ChannelSignal(sc, "seismic", 1500.0, 100.0, stream=7)
    assert np.allclose(ch.volts(123, 400), 1500.0 * ch.physical(123, 400))


def test_unknown_sensor_type_is_refused():
    with pytest.raises(ValueError, match="sensor type"):
        ChannelSignal(Scenario(), "gravity", 1.0, 100.0, stream=0)
