"""The refined onset pick (edge/trigger.py ``aic_simple``/``aic_pick``/``OnsetPicker``; the station's
``Detector`` and event documents, edge/trigger_stage.py; docs/trigger.md, "Onset pick"): ObsPy's AIC,
known onsets in noise, bounds, gaps, chunk invariance, and the trigger's own time left as it was."""

from __future__ import annotations

import numpy as np
import pytest

from ims_station.edge import trigger as T
from ims_station.edge import trigger_stage as TS
from ims_station.edge.ingest import sample_offset_us
from ims_station.errors import ConfigError

T0_US = 1_780_000_000_000_000
RATE_MHZ = 40_000
SPS = 40.0


def burst_series(onsets_s, n_s=240.0, seed=3, snr=8.0, f_hz=4.0, channels=1, delays_s=(0.0, 0.3, 0.6)):
    """White noise (100 counts RMS) with a decaying 4-Hz wavelet (*snr* x the noise RMS) starting
    abruptly at each onset (delayed by *delays_s* on the other channels)."""
    rng = np.random.default_rng(seed)
    n = int(n_s * SPS)
    x = rng.normal(0.0, 100.0, (channels, n))
    t = np.arange(n) / SPS
    for c in range(channels):
        for on in onsets_s:
            tt = t - on - delays_s[c]
            env = np.where(tt >= 0, np.exp(-np.clip(tt, 0, None) / 3.0), 0.0)
            x[c] += snr * 100.0 * env * np.sin(2 * np.pi * f_hz * np.clip(tt, 0, None))
    return x


def run(det, codes, x, size):
    out = []
    for i in range(0, x.shape[1], size):
        out += det.push(codes, T0_US + sample_offset_us(i, RATE_MHZ), RATE_MHZ, x[:, i:i + size])
    return out + det.flush()


def offs(decisions):
    return [d for d in decisions if d.state == "off" and d.kept]


# ------------------------------------------------------------------------------------------------
# the numerics


def test_aic_simple_equals_obspys_inside_the_window(obspy):
    from obspy.signal.trigger import aic_simple

    rng = np.random.default_rng(5)
    for n in (4, 5, 17, 160, 1000):
        a = np.r_[rng.normal(0, 1, n // 2), rng.normal(3, 6, n - n // 2)] + 1e4   # an offset too
        ours, ref = T.aic_simple(a), aic_simple(a)
        np.testing.assert_allclose(ours[1:n - 2], ref[1:n - 2], rtol=1e-9)
        assert T.aic_pick(a) == int(np.argmin(ref[:n - 2])) + 1 or n < 6


@pytest.mark.parametrize("seed", range(6))
def test_aic_pick_finds_a_known_onset_in_noise(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(30, 90))
    x = rng.normal(0, 1, 120)
    x[k:] += 6 * np.sin(2 * np.pi * 0.1 * np.arange(120 - k) + 0.5)
    assert abs(T.aic_pick(x) - k) <= 2


def test_aic_pick_without_information_does_not_move():
    assert T.aic_pick(np.zeros(50)) == 49                  # constant: no refinement
    assert T.aic_pick(np.ones(3)) == 2                     # too short
    x = np.zeros(60)
    x[40:] = np.sin(np.arange(20) + 0.5)                   # silence, then signal
    assert T.aic_pick(x) == 40
    y = np.r_[np.full(10, np.nan), np.random.default_rng(1).normal(0, 1, 30)]
    assert 0 <= T.aic_pick(y) < 40                         # non-finite samples count as 0


def test_group_delay_of_the_sections_is_the_filters():
    from scipy.signal import group_delay, sos2tf

    f = T.StreamFilter("bandpass", SPS, freqmin=1.5, freqmax=8.0, corners=4)
    _, gd = group_delay(sos2tf(f.sos), w=[np.sqrt(12.0)], fs=SPS)
    assert T.group_delay_s(f.sos, np.sqrt(12.0), SPS) == pytest.approx(gd[0] / SPS, rel=1e-6)
    assert 0.10 < T.group_delay_s(f.sos, np.sqrt(12.0), SPS) < 0.14     # docs/trigger.md: 0.12 s


def test_onset_picker_is_bounded_and_never_reaches_before_a_reset():
    p = T.OnsetPicker(40, channels=2)
    rng = np.random.default_rng(2)
    p.process(rng.normal(0, 1, (2, 100)), [])
    assert p._hist.shape == (2, 39)                        # window - 1 samples per channel kept
    p.reset([1])
    got = p.process(rng.normal(0, 1, (2, 10)), [(0, 105), (1, 105)])
    assert 66 <= got[(0, 105)] <= 105                      # a full window: samples 66 .. 105
    assert 100 <= got[(1, 105)] <= 105                     # restarted at sample 100
    with pytest.raises(ValueError, match="not in this chunk"):
        p.process(np.zeros((2, 5)), [(0, 3)])
    with pytest.raises(T.TriggerConfigError):
        T.OnsetPicker(3)


def test_onset_picker_does_not_depend_on_the_chunking():
    rng = np.random.default_rng(7)
    x = rng.normal(0, 1, (3, 3000))
    x[:, 1500:] *= 8
    onsets = [(0, 17), (1, 1520), (2, 1530), (0, 2999), (1, 60)]
    want = None
    for size in (1, 7, 100, 4000):
        p = T.OnsetPicker(120, channels=3)
        got: dict = {}
        for i in range(0, 3000, size):
            m = min(size, 3000 - i)
            got.update(p.process(x[:, i:i + m], [(c, o) for c, o in onsets if i <= o < i + m]))
        want = got if want is None else want
        assert got == want, size
    assert 1495 <= want[(1, 1520)] <= 1505 and want[(0, 17)] <= 17


# ------------------------------------------------------------------------------------------------
# in the station's Detector


def test_the_pick_is_close_to_a_known_onset_and_the_trigger_time_is_unchanged():
    onsets = [60.0, 130.0, 200.0]
    x = burst_series(onsets)
    det = TS.Detector(TS.settings_from_table({}), "S")
    ev = offs(run(det, ["XX.S.00.BHZ"], x, 40))
    assert len(ev) == 3
    plain = offs(run(TS.Detector(TS.settings_from_table({"pick": "none"}), "S"), ["XX.S.00.BHZ"], x, 40))
    for d, p, on in zip(ev, plain, onsets):
        true_us = T0_US + int(on * 1e6)
        assert (d.onset_us, d.end_us, d.peak, d.channels) == (p.onset_us, p.end_us, p.peak, p.channels)
        assert p.pick_us is None and p.pick_s == p.onset_s                  # pick = "none"
        assert d.onset_us - true_us > 50_000                                # the trigger is late ...
        assert abs(d.pick_us - true_us) <= 75_000, (d.pick_us - true_us) / 1e6   # ... the pick is not
        assert d.onset_us - 3_000_000 - 200_000 <= d.pick_us <= d.onset_us    # bounded by the window


@pytest.mark.parametrize("size", [1, 7, 100, 4000, None])
def test_the_pick_does_not_depend_on_the_chunk_size(size):
    x = burst_series([45.0, 75.0], n_s=100.0, channels=3)
    codes = ["XX.S.00.BHZ", "XX.S.00.BHN", "XX.S.00.BHE"]
    s = TS.settings_from_table({"coincidence_sum": 2, "coincidence_window": 1.0})
    ref = offs(run(TS.Detector(s, "S"), codes, x, x.shape[1]))
    got = offs(run(TS.Detector(s, "S"), codes, x, size or x.shape[1]))
    assert len(ref) == 2 and all(d.pick_us is not None for d in ref)
    assert [(d.onset_us, d.end_us, d.channels, d.pick_us) for d in got] == \
        [(d.onset_us, d.end_us, d.channels, d.pick_us) for d in ref]


def test_the_on_decision_carries_the_same_pick_as_the_off():
    x = burst_series([60.0])
    ds = run(TS.Detector(TS.settings_from_table({}), "S"), ["XX.S.00.BHZ"], x, 40)
    on = [d for d in ds if d.state == "on"]
    off = offs(ds)
    assert len(on) == len(off) == 1 and on[0].pick_us == off[0].pick_us is not None


def test_a_gap_restarts_the_pick_window():
    x = burst_series([40.0], n_s=80.0)
    det = TS.Detector(TS.settings_from_table({"lta": 5.0}), "S")
    code = ["XX.S.00.BHZ"]
    det.push(code, T0_US, RATE_MHZ, x[:, :800])                      # 20 s
    gap_us = T0_US + 30_000_000                                       # 10 s of gap
    out = []
    for i in range(1200, 3200, 40):
        out += det.push(code, gap_us + sample_offset_us(i - 1200, RATE_MHZ), RATE_MHZ, x[:, i:i + 40])
    ev = offs(out + det.flush())
    assert ev and all(d.pick_us >= gap_us for d in ev)


def test_event_document_and_replay_json_carry_the_pick():
    from ims_station.edge.trigger_cli import event_json

    d = offs(run(TS.Detector(TS.settings_from_table({}), "S"), ["XX.S.00.BHZ"], burst_series([60.0]), 40))[0]
    doc = TS.event_document(d, TS.settings_from_table({}), 0.0)
    assert doc["pick_s"] == d.pick_us / 1e6 and doc["pick"] == TS.iso_time(d.pick_us)
    assert doc["time"] == TS.iso_time(d.onset_us) and doc["onset_s"] == d.onset_s
    j = event_json(d)
    assert (j["pick"], j["pick_s"]) == (doc["pick"], doc["pick_s"])


def test_the_relay_type_checks_the_pick():
    from ims_station.relay.verify import _event_problem

    ok = {"seq": 1, "station": "S", "pick": "2026-12-03T13:00:01.250000Z", "pick_s": 1.5}
    assert _event_problem(ok) == ""
    assert "pick" in _event_problem(dict(ok, pick="yesterday"))
    assert "pick" in _event_problem(dict(ok, pick=3))
    assert "pick_s" in _event_problem(dict(ok, pick_s="1.5"))


@pytest.mark.parametrize("table, key", [
    ({"pick": "baer"}, "trigger.pick"),
    ({"pick_window": 0}, "trigger.pick_window"),
    ({"pick_window": 61}, "trigger.pick_window"),
    ({"pick_window": float("nan")}, "trigger.pick_window"),
])
def test_bad_pick_settings_are_refused_naming_the_key(table, key):
    with pytest.raises(ConfigError) as ei:
        TS.settings_from_table(table, file="station.toml")
    assert ei.value.key == key


def test_a_pick_window_too_short_for_the_rate_is_refused():
    with pytest.raises(ConfigError) as ei:
        TS.settings_from_table({"pick_window": 0.05}, file="station.toml", channels={"XX.S.00.BHZ": 40.0})
    assert ei.value.key == "trigger.pick_window" and "4 samples" in str(ei.value)
