"""Shared series for the trigger tests: long random series and ObsPy's bundled real recordings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import need_module


def random_series(n: int, channels: int = 1, seed: int = 9) -> np.ndarray:
    """Noise whose amplitude changes every 100 samples by up to 10x, so ratios swing through any
    threshold: ``(channels, n)`` float64."""
    rng = np.random.default_rng(seed)
    blocks = -(-n // 100)
    gain = np.repeat(rng.uniform(0.5, 5.0, (channels, blocks)), 100, axis=1)[:, :n]
    return rng.standard_normal((channels, n)) * gain * 1000.0


@pytest.fixture(scope="session")
def obspy():
    return need_module("obspy")


@pytest.fixture(scope="session")
def real_stream(obspy):
    """ObsPy's bundled 50-sps recordings of a local event at BW.UH1..UH3 (5 channels, 11517 samples;
    the data of ObsPy's coincidence-trigger tutorial), shipped in the obspy package."""
    data = Path(obspy.__file__).parent / "signal" / "tests" / "data"
    files = sorted(data.glob("BW.UH[123]._.SH?.D.2010.147.cut.slist.gz"))
    assert len(files) == 5, f"ObsPy's example data not found in {data}"
    st = obspy.Stream()
    for f in files:
        st += obspy.read(str(f))
    return st


def feed(obj, x: np.ndarray, size: int) -> np.ndarray:
    """Run ``obj.process`` over ``x`` (channels x n) in chunks of ``size`` and join the outputs."""
    return np.concatenate([obj.process(np.ascontiguousarray(x[:, i:i + size]))
                           for i in range(0, x.shape[1], size)], axis=1)
