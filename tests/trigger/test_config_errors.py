"""Bad configuration is refused with an error naming the parameter (issue 9, Bad input)."""

from __future__ import annotations

import pytest

from ims_station.edge import trigger as T


@pytest.mark.parametrize("cls", [T.RecursiveStaLta, T.ClassicStaLta, T.DelayedStaLta])
@pytest.mark.parametrize("nsta,nlta,param", [(10, 10, "nsta"), (20, 10, "nsta"), (0, 10, "nsta"),
                                             (5, -1, "nlta"), (2.5, 10, "nsta"), (True, 10, "nsta")])
def test_bad_windows_name_the_parameter(cls, nsta, nlta, param):
    with pytest.raises(T.TriggerConfigError) as err:
        cls(nsta, nlta)
    assert err.value.parameter == param
    assert str(err.value).startswith(param + ":")


def test_carl_refuses_non_finite_ratio_and_quiet():
    with pytest.raises(T.TriggerConfigError, match="^ratio:"):
        T.CarlStaTrig(5, 50, float("nan"), 0.0)
    with pytest.raises(T.TriggerConfigError, match="^quiet:"):
        T.CarlStaTrig(5, 50, 0.5, float("inf"))
    with pytest.raises(T.TriggerConfigError, match="^nsta:"):
        T.CarlStaTrig(50, 50, 0.5, 0.1)


@pytest.mark.parametrize("kwargs,param", [
    ({"thr_on": 2.0, "thr_off": 2.0}, "thr_off"),
    ({"thr_on": 2.0, "thr_off": 3.0}, "thr_off"),
    ({"thr_on": float("nan"), "thr_off": 1.0}, "thr_on"),
    ({"thr_on": 2.0, "thr_off": 1.0, "min_len": -1}, "min_len"),
    ({"thr_on": 2.0, "thr_off": 1.0, "pre": -5}, "pre"),
    ({"thr_on": 2.0, "thr_off": 1.0, "post": -5}, "post"),
    ({"thr_on": 2.0, "thr_off": 1.0, "max_len": -3}, "max_len"),
    ({"thr_on": 2.0, "thr_off": 1.0, "max_len": 0}, "max_len"),
    ({"thr_on": 2.0, "thr_off": 1.0, "max_len": 10, "min_len": 20}, "min_len"),
    ({"thr_on": 2.0, "thr_off": 1.0, "channels": 0}, "channels"),
])
def test_bad_trigger_settings_name_the_parameter(kwargs, param):
    with pytest.raises(T.TriggerConfigError) as err:
        T.TriggerOnset(**kwargs)
    assert err.value.parameter == param


@pytest.mark.parametrize("kind,kwargs,param", [
    ("bandpass", {"freqmin": 1.0, "freqmax": 20.0}, "freqmax"),      # at Nyquist (40 sps)
    ("bandpass", {"freqmin": 1.0, "freqmax": 25.0}, "freqmax"),
    ("bandpass", {"freqmin": 5.0, "freqmax": 2.0}, "freqmin"),
    ("bandpass", {"freqmin": -1.0, "freqmax": 2.0}, "freqmin"),
    ("highpass", {"freq": 20.0}, "freq"),
    ("lowpass", {"freq": 30.0}, "freq"),
    ("lowpass", {}, "freq"),
    ("notch", {"freq": 1.0}, "type"),
])
def test_bad_filters_name_the_parameter(kind, kwargs, param):
    with pytest.raises(T.TriggerConfigError) as err:
        T.StreamFilter(kind, 40.0, **kwargs)
    assert err.value.parameter == param


def test_bad_sampling_rate_and_corners():
    with pytest.raises(T.TriggerConfigError, match="^sampling_rate:"):
        T.StreamFilter("lowpass", 0.0, freq=1.0)
    with pytest.raises(T.TriggerConfigError, match="^corners:"):
        T.StreamFilter("lowpass", 40.0, freq=1.0, corners=0)


def test_error_is_a_value_error():
    assert issubclass(T.TriggerConfigError, ValueError)
