"""What the onset logic adds to ObsPy's ``trigger_onset``: minimum duration, early onsets, margins."""

from __future__ import annotations

import numpy as np

from ims_station.edge import trigger as T


def _run(t, cf, size=3):
    out = []
    for i in range(0, len(cf), size):
        out += t.process(np.asarray(cf[i:i + size], dtype=float))
    return out + t.flush()


CF = [0, 5, 0, 0, 5, 5, 5, 5, 5, 1.5, 0, 0, 5, 5, 0]   # a spike, an 6-sample event, a 2-sample one


def test_min_len_drops_spikes_and_counts_them():
    t = T.TriggerOnset(3.0, 1.0, min_len=3)
    events = [e for e in _run(t, CF) if isinstance(e, T.Event)]
    assert [(e.on, e.off) for e in events] == [(4, 9)]
    assert t.suppressed == 2


def test_onset_is_declared_when_min_len_is_reached_not_at_the_end():
    t = T.TriggerOnset(3.0, 1.0, min_len=3)
    out = _run(t, CF, size=1)
    assert out[0] == T.Onset(0, 4, 6)
    assert isinstance(out[1], T.Event)
    # without min_len the onset is declared at the onset sample itself
    assert _run(T.TriggerOnset(3.0, 1.0), CF)[0] == T.Onset(0, 1, 1)


def test_margins_and_peak():
    t = T.TriggerOnset(3.0, 1.0, min_len=3, pre=10, post=4)
    cf = list(CF)
    cf[6] = 9.0
    (event,) = [e for e in _run(t, cf) if isinstance(e, T.Event)]
    assert (event.start, event.on, event.off, event.end) == (0, 4, 9, 13)   # start clipped at 0
    assert event.peak == 9.0 and not event.truncated


def test_max_len_cuts_and_needs_a_new_rise():
    t = T.TriggerOnset(3.0, 1.0, max_len=2)
    events = [e for e in _run(t, [5, 5, 5, 5, 5, 2, 5, 0]) if isinstance(e, T.Event)]
    assert [(e.on, e.off, e.truncated) for e in events] == [(0, 2, True), (6, 6, False)]


def test_channels_are_independent():
    t = T.TriggerOnset(3.0, 1.0, channels=2)
    out = t.process(np.array([[0, 5, 0, 0], [0, 0, 0, 5]], dtype=float)) + t.flush()
    assert sorted((e.channel, e.on, e.off) for e in out if isinstance(e, T.Event)) == [(0, 1, 1), (1, 3, 3)]
