"""Gaps, NaN and silence: ``reset()`` restarts a channel exactly as a new series; a non-finite
sample is filtered as 0 and resets its channel right after it; zero energy gives a ratio of 0; no
input makes a function crash or emit NaN."""

from __future__ import annotations

import numpy as np
import pytest

from ims_station.edge import trigger as T

from tests.conftest import need_trigger_kernel

from .conftest import random_series


def _make(name, channels=2):
    if name == "filter":
        return T.StreamFilter("highpass", 40.0, freq=1.0, channels=channels)
    if name == "carl":
        return T.CarlStaTrig(5, 40, 0.8, 0.2, channels=channels)
    cls = {"recursive": T.RecursiveStaLta, "classic": T.ClassicStaLta, "delayed": T.DelayedStaLta}[name]
    return cls(5, 40, channels=channels)


NAMES = ["recursive", "classic", "delayed", "carl", "filter"]


@pytest.fixture(params=["c", "numpy"])
def impl(request, monkeypatch):
    if request.param == "numpy":
        monkeypatch.setattr(T, "_fast", None)
    else:
        need_trigger_kernel()
    return request.param


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_sample_resets_its_channel_only(name, bad, impl):
    x = random_series(600, channels=2, seed=5)
    k = 250
    y = x.copy()
    y[0, k] = bad
    f = _make(name)
    got = np.concatenate([f.process(y[:, :200]), f.process(y[:, 200:400]), f.process(y[:, 400:])], axis=1)
    assert f.nonfinite == 1
    assert np.isfinite(got).all()
    head = x[0, :k + 1].copy()
    head[k] = 0.0
    np.testing.assert_array_equal(got[0, :k + 1], _make(name, 1).process(head))
    np.testing.assert_array_equal(got[0, k + 1:], _make(name, 1).process(x[0, k + 1:]))
    np.testing.assert_array_equal(got[1], _make(name, 1).process(x[1]))


@pytest.mark.parametrize("name", NAMES)
def test_reset_starts_a_channel_as_a_new_series(name, impl):
    x = random_series(400, channels=2, seed=6)
    f = _make(name)
    f.process(x[:, :150])
    f.reset([1])
    got = f.process(x[:, 150:])
    np.testing.assert_array_equal(got[1], _make(name, 1).process(x[1, 150:]))
    whole = _make(name).process(x)
    np.testing.assert_array_equal(got[0], whole[0, 150:])
    f.reset()
    np.testing.assert_array_equal(f.process(x), whole)


@pytest.mark.parametrize("name", NAMES)
def test_silence_and_odd_chunks_never_crash(name, impl):
    f = _make(name)
    assert f.process(np.zeros((2, 0))).shape == (2, 0)
    out = f.process(np.zeros((2, 300)))
    assert np.isfinite(out).all()
    out = f.process(np.full((2, 30), np.nan))
    assert np.isfinite(out).all()
    assert f.process(np.arange(60, dtype=np.int32).reshape(2, 30)).dtype == np.float64
    with pytest.raises(ValueError, match="3 channel"):
        _make(name, 3).process(np.zeros((2, 10)))


def test_trigger_reset_closes_an_open_event_as_truncated():
    t = T.TriggerOnset(2.0, 1.0, channels=2)
    out = t.process(np.array([[0, 3, 3, 3], [0, 0, 0, 0]], dtype=float))
    assert [type(e) for e in out] == [T.Onset]
    closed = t.reset()
    assert closed == [T.Event(0, 1, 3, 1, 3, 3.0, True)]
    assert not t.active.any()
    # after the gap the function is above thr_on again: a new run, a new event
    assert [type(e) for e in t.process(np.array([[3.0], [0.0]]))] == [T.Onset]


def test_trigger_treats_nan_as_below_thresholds():
    t = T.TriggerOnset(2.0, 1.0)
    out = t.process(np.array([0, 3, 3, np.nan, 0, 3, 0]))
    assert [(e.on, e.off) for e in out if isinstance(e, T.Event)] == [(1, 2), (5, 5)]


def test_recursive_lta_underflow_on_a_dead_channel_gives_zero_not_nan(impl):
    """On a dead channel (exact zeros) ObsPy's initial LTA of 1e-99 decays to the smallest double;
    with nlta = 2 the next factor 1/2 rounds it to 0 (larger nlta keep it there): 0/0 must read 0,
    and the channel must come back when data returns.  (The decayed LTA is set directly.)"""
    f = T.RecursiveStaLta(1, 2, channels=2)
    f.process(np.zeros((2, 100)))
    f._lta[:] = 5e-324                     # the smallest double: the next zero sample makes it 0
    out = f.process(np.zeros((2, 10)))
    np.testing.assert_array_equal(out, 0.0)
    assert (f._lta == 0).all()
    back = f.process(random_series(200, channels=2))
    assert np.isfinite(back).all() and (back[:, -1] > 0).all()
