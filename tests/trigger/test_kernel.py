"""The C recursive STA/LTA kernel equals the numpy reference (ObsPy style: fast beside plain)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from ims_station.edge import trigger as T

from tests.conftest import need_trigger_kernel
from .conftest import random_series


def test_c_extension_is_built_here():
    """Optional build product; on a machine with a C compiler it must exist."""
    if shutil.which("cc") or shutil.which("gcc"):
        assert T.IMPLEMENTATION == "c", "C compiler present but ims_station.edge._triggerfast is not built"
    else:
        assert T.IMPLEMENTATION == "numpy"


@pytest.mark.parametrize("channels", [1, 7, 8, 9, 100])
def test_kernel_equals_reference(channels):
    need_trigger_kernel()
    x = random_series(3000, channels=channels, seed=channels)
    state_c = (np.zeros(channels), np.full(channels, 1e-99), np.zeros(channels, np.int64))
    state_r = tuple(s.copy() for s in state_c)
    for i in range(0, 3000, 37):
        chunk = np.ascontiguousarray(x[:, i:i + 37])
        out = np.empty_like(chunk)
        T._fast.recstalta(chunk, out, *state_c, 5, 60)
        np.testing.assert_array_equal(out, T.recstalta_reference(chunk, *state_r, 5, 60))
        for a, b in zip(state_c, state_r):
            np.testing.assert_array_equal(a, b)


def test_kernel_refuses_wrong_buffers():
    need_trigger_kernel()
    x = np.zeros((2, 4))
    state = (np.zeros(2), np.ones(2), np.zeros(2, np.int64))
    with pytest.raises(ValueError):
        T._fast.recstalta(x, np.empty((2, 3)), *state, 2, 4)
    with pytest.raises(ValueError):
        T._fast.recstalta(x.astype(np.float32), np.empty((2, 4)), *state, 2, 4)
    with pytest.raises(ValueError):
        T._fast.recstalta(x, np.empty((2, 4)), state[0], state[1], np.zeros(2, np.int32), 2, 4)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_kernel_reports_non_finite_input_and_leaves_the_state(bad):
    need_trigger_kernel()
    x = random_series(400, channels=9, seed=3)
    state = (np.zeros(9), np.full(9, 1e-99), np.zeros(9, np.int64))
    out = np.empty_like(x)
    assert T._fast.recstalta(x, out, *state, 5, 60) is True
    before = tuple(s.copy() for s in state)
    y = x.copy()
    y[8, 17] = bad
    assert T._fast.recstalta(y, out, *state, 5, 60) is False
    for a, b in zip(state, before):
        np.testing.assert_array_equal(a, b)
