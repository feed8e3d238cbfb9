"""Coincidence across channels and stations equals ObsPy's ``coincidence_trigger`` where the options
overlap (precomputed characteristic functions, weights, off extension, maximum trigger length)."""

from __future__ import annotations

import numpy as np
import pytest

from ims_station.edge import trigger as T

from .conftest import random_series


def _ours(cf_stream, thr_on, thr_off, thr_sum, weights, ext=0.0, max_len_s=1e6):
    trig = []
    for tr in cf_stream:
        sr = tr.stats.sampling_rate
        onset = T.TriggerOnset(thr_on, thr_off, max_len=int(max_len_s * sr + 0.5))
        events = []
        for i in range(0, tr.stats.npts, 40):
            events += onset.process(tr.data[i:i + 40])
        events += onset.flush()
        for e in events:
            if isinstance(e, T.Event):
                trig.append(((tr.stats.starttime + e.on / sr).timestamp,
                             (tr.stats.starttime + e.off / sr).timestamp, tr.id))
    return T.coincidence(trig, thr_sum, weights, trigger_off_extension=ext)


def _theirs(obspy, cf_stream, thr_on, thr_off, thr_sum, weights, ext=0.0, max_len_s=1e6):
    from obspy.signal.trigger import coincidence_trigger
    got = coincidence_trigger(None, thr_on, thr_off, cf_stream.copy(), thr_sum, trace_ids=weights,
                              max_trigger_length=max_len_s, trigger_off_extension=ext)
    return [T.CoincidenceEvent(e["time"].timestamp, e["duration"], tuple(e["stations"]),
                               tuple(e["trace_ids"]), e["coincidence_sum"]) for e in got]


def _cf_stream(obspy, st, nsta_s, nlta_s):
    out = st.copy()
    for tr in out:
        sr = tr.stats.sampling_rate
        tr.data = T.RecursiveStaLta(int(nsta_s * sr), int(nlta_s * sr)).process(tr.data)
    return out


@pytest.mark.parametrize("thr_sum,ext", [(3, 0.0), (2, 0.0), (4, 1.5)])
def test_real_recording_equals_obspy(obspy, real_stream, thr_sum, ext):
    st = real_stream.copy()
    st.filter("bandpass", freqmin=10, freqmax=20)
    cf = _cf_stream(obspy, st, 0.5, 10)
    weights = {tr.id: 1.0 for tr in st}
    ref = _theirs(obspy, cf, 3.5, 1.0, thr_sum, weights, ext)
    assert ref, "the recording has an event: the comparison must not be vacuous"
    assert _ours(cf, 3.5, 1.0, thr_sum, weights, ext) == ref


@pytest.mark.filterwarnings("ignore:At least one trace.s ID was not found:UserWarning")
@pytest.mark.parametrize("seed", range(6))
def test_random_network_with_weights_equals_obspy(obspy, seed):
    rng = np.random.default_rng(seed)
    x = random_series(6000, channels=6, seed=seed)
    st = obspy.Stream()
    for c in range(6):
        tr = obspy.Trace(x[c])
        tr.stats.network, tr.stats.station, tr.stats.channel = "XX", f"S{c // 2}", f"HH{'ZN'[c % 2]}"
        tr.stats.sampling_rate = 40.0
        st += tr
    cf = _cf_stream(obspy, st, 0.25, 2.5)
    weights = {tr.id: float(rng.choice([0.5, 1.0, 2.0])) for tr in st}
    del weights[st[5].id]                  # a channel outside the coincidence group: disregarded
    kw = dict(thr_on=2.0, thr_off=0.9, thr_sum=2.5, weights=weights,
              ext=float(rng.uniform(0, 2)), max_len_s=float(rng.choice([1e6, 3.0])))
    ref = _theirs(obspy, cf, **kw)
    assert ref
    assert _ours(cf, **kw) == ref


@pytest.mark.parametrize("kwargs,param", [
    ({"weights": {"XX.A..HHZ": 0.0}}, "weights"),
    ({"weights": {"A.HHZ": 1.0}}, "weights"),
    ({"weights": ["XX.A..HHZ"], "thr_coincidence_sum": 0}, "thr_coincidence_sum"),
    ({"weights": ["XX.A..HHZ"], "trigger_off_extension": -1.0}, "trigger_off_extension"),
])
def test_bad_coincidence_settings_name_the_parameter(kwargs, param):
    kwargs = {"thr_coincidence_sum": 2, **kwargs}
    with pytest.raises(T.TriggerConfigError) as err:
        T.coincidence([], **kwargs)
    assert err.value.parameter == param
