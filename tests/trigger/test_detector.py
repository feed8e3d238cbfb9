"""The station's streaming Detector (edge/trigger_stage.py): its completed events equal ObsPy's
pipeline (``Trace.filter`` + ``coincidence_trigger``) on real and random series, they do not depend
on the chunk size, and gaps, rate changes and clipping behave as docs/trigger.md says."""

from __future__ import annotations

import numpy as np
import pytest

from ims_station.edge import trigger_stage as TS
from ims_station.edge.ingest import sample_offset_us

from .conftest import random_series

T0_US = 1_780_000_000_000_000


def settings(**kw):
    """Settings of the ObsPy comparisons: unless a test says otherwise, no filter, no minimum
    duration and no maximum length (ObsPy's ``coincidence_trigger`` has neither of the first two;
    the station's defaults, tuned for a 40-sps seismic station, have all three)."""
    kw.setdefault("max_duration", 1e6)
    kw.setdefault("filter", "")
    kw.setdefault("min_duration", 0.0)
    return TS.settings_from_table(kw, file="test")


def run(det, codes, x, rate_mhz, size, t0_us=T0_US, **push):
    """Feed (channels, n) *x* in chunks of *size*; returns every decision, flush included."""
    out = []
    n = x.shape[1]
    for i in range(0, n, size):
        out += det.push(codes, t0_us + sample_offset_us(i, rate_mhz), rate_mhz, x[:, i:i + size], **push)
    return out + det.flush()


def offs(decisions):
    return [d for d in decisions if d.state == "off"]


def as_tuples(events):
    return [(d.onset_s, d.duration, d.channels, d.coincidence_sum) for d in events]


def assert_same_events(ours, ref):
    assert len(ours) == len(ref), (as_tuples(ours), ref)
    for d, (time, duration, ids, total) in zip(ours, ref):
        assert d.onset_s == pytest.approx(time, abs=2e-6) and d.duration == pytest.approx(duration, abs=2e-6)
        assert (list(d.channels), d.coincidence_sum) == (list(ids), total)


def obspy_events(obspy, st, thr_on, thr_off, thr_sum, *, algorithm="recstalta", filt=None, weights=None,
                 ext=0.0, max_len_s=1e6, **options):
    from obspy.signal.trigger import coincidence_trigger

    st = st.copy()
    if filt:
        kind, *f = filt.split(":")
        kw = {"freqmin": float(f[0]), "freqmax": float(f[1])} if kind == "bandpass" else {"freq": float(f[0])}
        st.filter(kind, zerophase=False, corners=4, **kw)
    got = coincidence_trigger(algorithm, thr_on, thr_off, st, thr_sum, trace_ids=weights,
                              max_trigger_length=max_len_s, trigger_off_extension=ext, **options)
    return [(e["time"].timestamp, e["duration"], e["trace_ids"], e["coincidence_sum"]) for e in got]


def stream_of(obspy, x, rate, ids):
    st = obspy.Stream()
    for row, tid in zip(x, ids):
        tr = obspy.Trace(np.array(row))
        tr.stats.network, tr.stats.station, tr.stats.location, tr.stats.channel = tid.split(".")
        tr.stats.sampling_rate = rate
        tr.stats.starttime = obspy.UTCDateTime(T0_US / 1e6)
        st += tr
    return st


IDS6 = [f"XX.S{c // 2}..HH{'ZN'[c % 2]}" for c in range(6)]


# ---------------------------------------------------------------- ObsPy's pipeline

@pytest.mark.parametrize("algorithm, thr_sum, filt", [
    ("recstalta", 3, "bandpass:10:20"), ("recstalta", 2, "bandpass:10:20"), ("classicstalta", 3, "highpass:5"),
    ("recstalta", 4, None)])
def test_real_recording_equals_obspy(obspy, real_stream, algorithm, thr_sum, filt):
    st = real_stream.copy()
    on, off = (3.5, 1.0) if filt else (2.5, 1.0)
    ref = obspy_events(obspy, st, on, off, thr_sum, algorithm=algorithm, filt=filt, sta=0.5, lta=10)
    assert ref, "the recording has an event: the comparison must not be vacuous"
    det = TS.Detector(settings(algorithm=algorithm, sta=0.5, lta=10, on=on, off=off, coincidence_sum=thr_sum,
                               filter=filt or ""), "UH")
    # The traces start at slightly different times: each is its own chunk, a round of all of them
    # before the decisions (as the replay feeds files).
    got = []
    for i in range(0, max(tr.stats.npts for tr in st), 250):
        for tr in st:
            t0 = int(round(tr.stats.starttime.timestamp * 1e6))
            if i < tr.stats.npts:
                got += det.push([tr.id], t0 + sample_offset_us(i, 50_000), 50_000,
                                tr.data[i:i + 250].astype(np.float64), decide=False)
        got += det.decide()
    got += det.flush()
    # ObsPy's times carry the recording's sub-microsecond start; ours are microseconds.
    assert_same_events(offs(got), ref)


@pytest.mark.filterwarnings("ignore:At least one trace.s ID was not found:UserWarning")
@pytest.mark.parametrize("seed", range(4))
def test_random_network_equals_obspy(obspy, seed):
    rng = np.random.default_rng(seed)
    x = random_series(8000, channels=6, seed=seed)
    weights = {tid: float(rng.choice([0.5, 1.0, 2.0])) for tid in IDS6[:5]}   # IDS6[5] sits out
    ext = float(rng.uniform(0, 2))
    max_len = float(rng.choice([1e6, 3.0]))
    filt = [None, "lowpass:8", "bandpass:1:10", "highpass:2"][seed]
    ref = obspy_events(obspy, stream_of(obspy, x, 40.0, IDS6), 2.0, 0.9, 2.5, filt=filt, weights=weights,
                       ext=ext, max_len_s=max_len, sta=0.25, lta=2.5)
    assert ref
    det = TS.Detector(settings(sta=0.25, lta=2.5, on=2.0, off=0.9, coincidence_sum=2.5, weights=weights,
                               channels=IDS6[:5], coincidence_window=ext, max_duration=max_len,
                               filter=filt or ""), "S")
    assert_same_events(offs(run(det, IDS6, x, 40_000, 40)), ref)


@pytest.mark.parametrize("algorithm, on, off, extra", [
    ("delayedstalta", 11.0, 10.3, {}), ("carlstatrig", 1500.0, 300.0, {"ratio": 0.8, "quiet": 0.8})])
def test_delayed_and_carl_networks_equal_obspy(obspy, algorithm, on, off, extra):
    """The other characteristic functions through the same pipeline; the series ends in zeros, where
    ObsPy's delayed STA/LTA wraps around to (docs/trigger.md)."""
    x = random_series(6000, channels=6, seed=3)
    x[:, -200:] = 0.0
    ref = obspy_events(obspy, stream_of(obspy, x, 40.0, IDS6), on, off, 2, algorithm=algorithm, sta=0.25,
                       lta=2.5, **extra)
    assert len(ref) >= 2, len(ref)
    det = TS.Detector(settings(algorithm=algorithm, sta=0.25, lta=2.5, on=on, off=off, coincidence_sum=2,
                               **extra), "S")
    assert_same_events(offs(run(det, IDS6, x, 40_000, 40)), ref)


def test_gapped_series_equals_obspy_on_the_pieces_as_separate_traces(obspy):
    """A gap restarts a channel as a new trace: ObsPy's pipeline on the pieces, ours across the gap."""
    x = random_series(6000, channels=4, seed=11)
    ids = IDS6[:4]
    st = stream_of(obspy, x[:, :3000], 40.0, ids) + stream_of(obspy, x[:, 3000:], 40.0, ids)
    gap_s = 37.5
    for tr in st[4:]:
        tr.stats.starttime += 3000 / 40.0 + gap_s
    ref = obspy_events(obspy, st, 2.0, 0.9, 2, sta=0.25, lta=2.5)
    assert ref
    det2 = TS.Detector(settings(sta=0.25, lta=2.5, on=2.0, off=0.9, coincidence_sum=2), "S")
    out = []
    for i in range(0, 3000, 100):
        out += det2.push(ids, T0_US + sample_offset_us(i, 40_000), 40_000, x[:, i:i + 100])
    t1 = T0_US + sample_offset_us(3000, 40_000) + int(gap_s * 1e6)
    for i in range(0, 3000, 100):
        out += det2.push(ids, t1 + sample_offset_us(i, 40_000), 40_000, x[:, 3000 + i:3100 + i])
    out += det2.flush()
    assert det2.stats()["resets_gap"] == 4          # each channel once
    assert_same_events(offs(out), ref)


# ---------------------------------------------------------------- chunk invariance

@pytest.mark.parametrize("min_duration", [0.0, 0.5])
def test_event_lists_do_not_depend_on_the_chunk_size(min_duration):
    # (Size 1 costs a filter call per sample and channel: a short series, four channels.)
    x = random_series(1600, channels=4, seed=5)
    s = settings(sta=0.25, lta=2.5, on=2.0, off=0.9, coincidence_sum=2, filter="bandpass:1:10",
                 min_duration=min_duration, coincidence_window=0.5, max_duration=20)
    lists = {}
    for size in (1, 7, 100, 4000, x.shape[1]):
        det = TS.Detector(s, "S")
        events = offs(run(det, IDS6[:4], x, 40_000, size))
        lists[size] = [(d.onset_us, d.end_us, d.channels, d.coincidence_sum, d.peak) for d in events]
    assert lists[1], "events expected: the comparison must not be vacuous"
    for size, got in lists.items():
        assert got == lists[1], size


def test_every_on_is_followed_by_its_off_and_decided_no_later_than_the_off():
    x = random_series(6000, channels=6, seed=8)
    det = TS.Detector(settings(sta=0.25, lta=2.5, on=2.0, off=0.9, coincidence_sum=2, min_duration=0.25), "S")
    out = run(det, IDS6, x, 40_000, 40)
    ids = [(d.state, d.event_id) for d in out]
    assert ids and len(ids) % 2 == 0
    assert ids[::2] == [("on", e) for _, e in ids[1::2]]          # on, off, on, off, ... same ids
    for on, off in zip(out[::2], out[1::2]):
        assert on.end_us is None and off.end_us >= off.onset_us and off.kept
        assert on.coincidence_sum >= 2


# ---------------------------------------------------------------- gaps, rate changes, clipping

def _burst(n=4000, at=2000, rate=40.0):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, n)) * 100.0
    x[0, at:at + 200] *= 30.0
    return x


def test_a_gap_closes_the_open_trigger_at_the_last_sample_before_it_and_restarts_the_channel():
    x = _burst()
    s = settings(sta=0.5, lta=5, on=3, off=1.5)
    det = TS.Detector(s, "S")
    code = ["XX.S.00.BHZ"]
    out = []
    for i in range(0, 2100, 50):                      # into the burst
        out += det.push(code, T0_US + sample_offset_us(i, 40_000), 40_000, x[:, i:i + 50])
    assert [d.state for d in out] == ["on"] and det.active
    t_gap = T0_US + sample_offset_us(2100 + 400, 40_000)     # 10 s missing
    out += det.push(code, t_gap, 40_000, x[:, 2100:2150])
    assert [d.state for d in out] == ["on", "off"] and not det.active
    assert out[1].end_us == T0_US + sample_offset_us(2099, 40_000)
    assert det.stats()["resets_gap"] == 1
    # restarted: warm-up again (the LTA is new), so the rest of the burst cannot trigger at once
    out += det.push(code, t_gap + sample_offset_us(50, 40_000), 40_000, x[:, 2150:2250])
    assert len(out) == 2


def test_a_chunk_flagged_not_contiguous_restarts_the_channel_even_on_time():
    x = _burst()
    det = TS.Detector(settings(sta=0.5, lta=5, on=3, off=1.5), "S")
    det.push(["XX.S.00.BHZ"], T0_US, 40_000, x[:, :100])
    det.push(["XX.S.00.BHZ"], T0_US + sample_offset_us(100, 40_000), 40_000, x[:, 100:200], contiguous=False)
    assert det.stats()["resets_gap"] == 1


def test_a_rate_change_rebuilds_the_channel_at_the_new_rate():
    x = _burst()
    det = TS.Detector(settings(sta=0.5, lta=5, on=3, off=1.5, filter="lowpass:8"), "S")
    code = ["XX.S.00.BHZ"]
    det.push(code, T0_US, 40_000, x[:, :1000])
    t = T0_US + sample_offset_us(1000, 40_000)
    out = run(det, code, x[:, 1000:], 20_000, 100, t0_us=t)     # the board went to 20 sps
    st = det.stats()
    assert st["rate_changes"] == 1 and st["resets_gap"] == 0 and st["errors"] == 0
    fresh = TS.Detector(det.settings, "S")
    assert [(d.state, d.onset_us, d.end_us) for d in out] == [
        (d.state, d.onset_us, d.end_us) for d in run(fresh, code, x[:, 1000:], 20_000, 100, t0_us=t)]
    assert offs(out)


def test_a_rate_the_filter_does_not_fit_sits_the_channel_out_counted_not_crashing():
    x = _burst()
    det = TS.Detector(settings(sta=0.5, lta=5, on=3, off=1.5, filter="lowpass:15"), "S")
    out = run(det, ["XX.S.00.BHZ"], x, 20_000, 100)       # Nyquist 10 Hz < 15 Hz
    st = det.stats()
    assert out == [] and st["errors"] == 1 and "trigger.filter" in st["problems"][0]


def test_clipped_chunks_are_counted_and_mark_the_events_they_touch():
    x = _burst()
    det = TS.Detector(settings(sta=0.5, lta=5, on=3, off=1.5), "S")
    code = ["XX.S.00.BHZ"]
    out = []
    for i in range(0, 4000, 100):
        clip = 1 if i in (500, 2100) else 0          # one chunk in the noise, one in the burst
        out += det.push(code, T0_US + sample_offset_us(i, 40_000), 40_000, x[:, i:i + 100], clip_mask=clip)
    out += det.flush()
    assert det.stats()["clipped_chunks"] == 2
    (ev,) = offs(out)
    assert ev.clipped and ev.onset_us <= T0_US + sample_offset_us(2100, 40_000) <= ev.end_us


def test_a_channel_arriving_in_other_company_restarts_with_its_old_group():
    codes = ["XX.S.00.BHZ", "XX.S.00.BHN", "XX.S.00.BHE"]
    x = random_series(300, channels=3, seed=4)
    det = TS.Detector(settings(sta=0.5, lta=2, on=3, off=1.5), "S")
    det.push(codes, T0_US, 40_000, x[:, :100])
    t = T0_US + sample_offset_us(100, 40_000)
    det.push(codes[:2], t, 40_000, x[:2, 100:200])        # the assembler split the board's chunk
    det.push(codes[2:], t, 40_000, x[2:, 100:200])
    st = det.stats()
    assert (st["regroups"], st["resets_gap"], st["channels"]) == (3, 0, 3)
    t = T0_US + sample_offset_us(200, 40_000)
    det.push(codes, t, 40_000, x[:, 200:300])
    assert det.stats()["regroups"] == 6


def test_unselected_and_unnamed_channels_are_ignored_and_bad_chunks_raise_value_errors():
    det = TS.Detector(settings(channels=["00.BHZ"]), "S")
    assert det.push(["1/0", "XX.S.00.BHN"], T0_US, 40_000, np.ones((2, 10))) == []
    assert det.stats()["channels"] == 0
    with pytest.raises(ValueError):
        det.push(["XX.S.00.BHZ"], T0_US, 40_000, np.ones((2, 10)))
    with pytest.raises(ValueError):
        det.push(["XX.S.00.BHZ"], T0_US, 0, np.ones((1, 10)))
    with pytest.raises(ValueError):
        det.push(["XX.S.00.BHZ", "XX.S.00.BHZ"], T0_US, 40_000, np.ones((2, 10)))
