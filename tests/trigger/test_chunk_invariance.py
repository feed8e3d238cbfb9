"""Chunk invariance (issue 9, Must show 2): chunk sizes 1, 7, 100, 4000 and the whole series give
identical outputs, for every characteristic function, the filters and the onset logic."""

from __future__ import annotations

import numpy as np
import pytest

from ims_station.edge import trigger as T

from .conftest import feed, random_series

SIZES = [1, 7, 100, 4000]


def _make(name):
    if name == "filter":
        return T.StreamFilter("bandpass", 40.0, freqmin=1.0, freqmax=8.0, channels=2)
    if name == "carl":
        return T.CarlStaTrig(8, 60, 0.8, 0.2, channels=2)
    cls = {"recursive": T.RecursiveStaLta, "classic": T.ClassicStaLta, "delayed": T.DelayedStaLta}[name]
    return cls(8, 60, channels=2)


@pytest.mark.parametrize("name", ["recursive", "classic", "delayed", "carl", "filter"])
def test_outputs_identical_for_any_chunking(name):
    x = random_series(9000, channels=2, seed=1)
    whole = _make(name).process(x)
    for size in SIZES:
        np.testing.assert_array_equal(feed(_make(name), x, size), whole, err_msg=f"chunk size {size}")


def test_one_dimensional_chunk_is_one_channel():
    x = random_series(500, channels=1)[0]
    np.testing.assert_array_equal(T.RecursiveStaLta(5, 50).process(x),
                                  T.RecursiveStaLta(5, 50, channels=1).process(x[None, :])[0])


@pytest.mark.parametrize("min_len,max_len,pre,post", [(0, None, 0, 0), (5, 50, 10, 20)])
def test_trigger_events_identical_for_any_chunking(min_len, max_len, pre, post):
    x = random_series(9000, channels=3, seed=2)
    cf = T.RecursiveStaLta(8, 60, channels=3).process(x)

    def run(size):
        t = T.TriggerOnset(2.0, 0.8, channels=3, min_len=min_len, max_len=max_len, pre=pre, post=post)
        out = []
        for i in range(0, cf.shape[1], size):
            out += t.process(cf[:, i:i + size])
        out += t.flush()
        return sorted(out, key=lambda e: (type(e).__name__, e.channel, e.on))

    whole = run(cf.shape[1])
    assert any(isinstance(e, T.Event) for e in whole)
    for size in SIZES:
        assert run(size) == whole, f"chunk size {size}"
