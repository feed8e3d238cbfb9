"""HIL detection run: the station's trigger on simulated noise with injected events, and its scoring.

Short runs only (1.5 simulated hours at most); the 24-h run is the command
``ims-station hil detection --hours 24 --events 60 --seed N`` (docs/trigger.md, "Detection performance").
"""

from __future__ import annotations

import json
import math

import numpy as np

import pytest

from ims_station.cli import main
from ims_station.hil import detection as D
from ims_station.hil.detection import DetectionConfig, InjectedEvent, Trigger, TriggerParams, score, snr_bin


@pytest.fixture(scope="module")
def short_run() -> dict:
    return D.run_detection(DetectionConfig(hours=1.5, events=10, seed=3))


def test_short_run_report_structure(short_run):
    r = short_run
    assert r["events"] == 10 and len(r["per_event"]) == 10
    assert [b["snr"] for b in r["bins"]] == ["2-3", "3-4", "4-5", "5-6", "6-7", "7-8", "8-9", "9-10"]
    assert sum(b["events"] for b in r["bins"]) == 10
    assert set(r["goals"]) == {"detected_snr_ge_4", "false_triggers_per_day", "onset_error_median_abs_s"}
    assert r["config"]["trigger"]["sta_s"] == D.DEFAULT_PARAMS.sta_s
    assert r["config"]["chunk_s"] == 1 and r["config"]["sps"] == 40.0
    assert r["triggers"] == r["detected"] + r["false_triggers"] + r["later_phase_triggers"]
    json.dumps(r)                                     # JSON-ready as it is


def test_short_run_finds_every_strong_event_with_a_small_onset_error(short_run):
    strong = [e for e in short_run["per_event"] if e["snr"] >= 6]
    assert len(strong) >= 4
    assert all(e["detected"] for e in strong), strong
    # the trigger itself: late, never early; the P phases are emergent, so up to ~1 s late (docs/trigger.md)
    raw = sorted(e["raw_onset_error_s"] for e in strong)
    assert 0.0 < raw[0] and raw[-1] <= 1.2 and raw[len(raw) // 2] <= 0.6, strong
    assert all(e["raw_onset_error_s"] == pytest.approx(e["trigger_on_s"] - e["onset_s"], abs=2e-3) for e in strong)
    # the station's refined pick (AIC, docs/trigger.md "Onset pick"): what the onset error scores
    picks = sorted(abs(e["onset_error_s"]) for e in short_run["per_event"] if e["detected"])
    assert short_run["onset_error_s"]["median_abs"] <= 0.2 and picks[len(picks) // 2] <= 0.2, short_run["per_event"]
    assert short_run["goals"]["onset_error_median_abs_s"]["met"]
    assert all(e["pick_s"] <= e["trigger_on_s"] for e in short_run["per_event"] if e["detected"])
    assert short_run["raw_onset_error_s"]["median"] > short_run["onset_error_s"]["median_abs"]
    assert short_run["false_triggers"] <= 1


def test_events_are_spread_and_their_snr_is_the_drawn_one():
    """The SNR definition: peak |P| in the SNR band over the band-passed noise RMS in the 30 s before."""
    noise = D.station_signals(5, [], 1)[0].noise
    events = D.plan_events(7200, 12, 5, noise)
    assert len(events) == 12
    onsets = [e.onset_s for e in events]
    assert onsets == sorted(onsets) and onsets[0] >= D.WARMUP_S and onsets[-1] < 7200
    assert all(b.onset_s > a.end_s for a, b in zip(events, events[1:]))       # signals do not overlap
    assert all(2.0 <= e.snr < 10.0 for e in events)
    assert sorted(int((e.snr - 2.0) * 12 / 8) for e in events) == list(range(12))   # one per stratum
    for e in events:
        measured = D.p_peak(e.event) / D.noise_rms_before(noise, e.onset_s)
        assert measured == pytest.approx(e.snr, rel=1e-9)
        assert e.event.arrivals()[0] == pytest.approx(e.onset_s)
    again = D.plan_events(7200, 12, 5, D.station_signals(5, [], 1)[0].noise)
    assert [(e.onset_s, e.snr, e.event) for e in again] == [(e.onset_s, e.snr, e.event) for e in events]


def test_same_seed_same_triggers():
    cfg = DetectionConfig(hours=0.5, events=3, seed=2)
    assert D.simulate(cfg)[0] == D.simulate(cfg)[0]


def test_the_data_do_not_depend_on_the_trigger_settings():
    """Settings are compared on identical days: same events (onsets, SNRs, waveforms) and samples."""
    a = DetectionConfig(hours=0.5, events=3, seed=6)
    b = DetectionConfig(hours=0.5, events=3, seed=6, params=TriggerParams(freqmin=2.0, freqmax=15.0, corners=2,
                                                                          sta_s=0.3, thr_on=3.0))
    ev_a, ev_b = D.simulate(a)[1], D.simulate(b)[1]
    assert [(e.onset_s, e.snr, e.event) for e in ev_a] == [(e.onset_s, e.snr, e.event) for e in ev_b]
    sig_a, sig_b = D.station_signals(6, ev_a, 1)[0], D.station_signals(6, ev_b, 1)[0]
    i0 = int(ev_a[0].onset_s * D.SPS) - 400
    assert (D.counts(sig_a.physical(i0, 2000)) == D.counts(sig_b.physical(i0, 2000))).all()


def test_too_many_events_for_the_duration_is_refused():
    with pytest.raises(ValueError, match="do not fit"):
        D.plan_events(600, 10, 1, D.station_signals(1, [], 1)[0].noise)


def test_several_channels_go_through_coincidence():
    triggers, events, duration = D.simulate(DetectionConfig(hours=0.5, events=3, seed=4, channels=3))
    assert duration == 1800.0 and len(events) == 3
    ids = set(D.trace_ids(3))
    assert triggers and all(len(t.channels) >= 2 and set(t.channels) <= ids for t in triggers)
    strong = [e for e in events if e.snr >= 6]
    assert strong and all(any(-1 <= t.on_s - e.onset_s <= 3 for t in triggers) for e in strong)


# ------------------------------------------------------------------------------------------------
# scoring with synthetic trigger lists


def ev(onset: float, snr: float, end: float | None = None) -> InjectedEvent:
    return InjectedEvent(onset, snr, onset + 40.0 if end is None else end)


def tr(on: float, off: float | None = None) -> Trigger:
    return Trigger(on, on + 2.0 if off is None else off, ("XX.SIM01.00.BHZ",))


def test_score_hits_misses_and_false_triggers():
    events = [ev(1000, 2.5), ev(2000, 4.5), ev(3000, 6.0), ev(4000, 9.9)]
    triggers = [tr(1000.3), tr(2999.2), tr(5000.0), tr(7000.0), tr(3010.0)]
    r = score(triggers, events, 86400.0)
    hit = {e["onset_s"]: e for e in r["per_event"]}
    assert hit[1000]["detected"] and hit[1000]["onset_error_s"] == pytest.approx(0.3)
    assert hit[3000]["detected"] and hit[3000]["onset_error_s"] == pytest.approx(-0.8)
    assert not hit[2000]["detected"] and not hit[4000]["detected"]
    assert r["detected"] == 2 and r["false_triggers"] == 2 and r["later_phase_triggers"] == 1
    assert r["false_triggers_per_day"] == 2.0
    assert r["snr_ge_4"] == {"events": 3, "detected": 1, "rate": pytest.approx(1 / 3, abs=1e-4)}
    assert r["onset_error_s"]["median"] == pytest.approx(-0.25) and r["onset_error_s"]["median_abs"] == pytest.approx(0.55)
    assert not r["goals"]["detected_snr_ge_4"]["met"] and not r["goals"]["false_triggers_per_day"]["met"]
    assert [f["on_s"] for f in r["false"]] == [5000.0, 7000.0]


def test_score_tolerance_edges_and_the_event_window():
    events = [ev(1000, 5.0, end=1050.0)]
    assert score([tr(999.0)], events, 86400)["detected"] == 1             # -1 s: inside
    assert score([tr(1003.0)], events, 86400)["detected"] == 1            # +3 s: inside
    late = score([tr(1003.01)], events, 86400)
    assert late["detected"] == 0 and late["later_phase_triggers"] == 1 and late["false_triggers"] == 0
    early = score([tr(998.9)], events, 86400)
    assert early["detected"] == 0 and early["false_triggers"] == 1        # before the event: false
    after = score([tr(1050.01)], events, 86400)
    assert after["false_triggers"] == 1                                     # after the signal: false


def test_score_one_trigger_detects_one_event_and_the_earliest_trigger_wins():
    events = [ev(1000, 5.0), ev(1002, 5.0)]
    r = score([tr(1001.0)], events, 86400)
    assert r["detected"] == 1 and [e["detected"] for e in r["per_event"]] == [True, False]
    r = score([tr(1002.0), tr(1000.5)], [ev(1000, 5.0)], 86400)
    assert r["per_event"][0]["onset_error_s"] == pytest.approx(0.5) and r["later_phase_triggers"] == 1


def test_score_goal_verdicts_at_their_limits():
    events = [ev(1000.0 * (k + 1), 4.0 + 0.1 * k) for k in range(20)]
    triggers = [tr(e.onset_s + 0.2) for e in events[:19]] + [tr(50000.0)]
    r = score(triggers, events, 86400.0)
    assert r["goals"]["detected_snr_ge_4"] == {"value": 0.95, "goal": ">= 0.95", "met": True}
    assert r["goals"]["false_triggers_per_day"]["met"] and r["goals"]["false_triggers_per_day"]["value"] == 1.0
    assert r["goals"]["onset_error_median_abs_s"]["met"] and r["all_goals_met"]
    r = score(triggers + [tr(60000.0)], events, 86400.0)
    assert not r["goals"]["false_triggers_per_day"]["met"] and not r["all_goals_met"]
    assert score(triggers, events, 43200.0)["false_triggers_per_day"] == 2.0    # per day, not per run


@pytest.mark.parametrize("snr, index", [(2.0, 0), (2.999, 0), (3.0, 1), (4.0, 2), (9.0, 7), (9.999, 7), (10.0, 7)])
def test_snr_bin_edges(snr, index):
    assert snr_bin(snr) == index


@pytest.mark.parametrize("snr", [1.99, 10.01, math.nan])
def test_snr_bin_refuses_values_outside_the_range(snr):
    with pytest.raises(ValueError):
        snr_bin(snr)


def test_score_with_no_events_and_no_triggers():
    r = score([], [], 3600.0)
    assert r["events"] == 0 and r["false_triggers"] == 0 and r["snr_ge_4"]["rate"] is None
    assert all(b["rate"] is None for b in r["bins"]) and not r["all_goals_met"]


# ------------------------------------------------------------------------------------------------
# the command


def test_cli_json(capsys):
    assert main(["hil", "detection", "--hours", "0.5", "--events", "3", "--seed", "2", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["config"]["hours"] == 0.5 and r["events"] == 3 and "goals" in r and "wall_time_s" in r


def test_cli_overrides_reach_the_detector(capsys):
    assert main(["hil", "detection", "--hours", "0.5", "--events", "3", "--band", "2:10", "--sta", "0.3",
                 "--on", "4", "--off", "2", "--min-duration", "1", "--json"]) == 0
    t = json.loads(capsys.readouterr().out)["config"]["trigger"]
    assert (t["freqmin"], t["freqmax"], t["sta_s"], t["thr_on"], t["thr_off"], t["min_duration_s"]) == \
        (2.0, 10.0, 0.3, 4.0, 2.0, 1.0)


def test_cli_refuses_bad_trigger_settings_naming_the_parameter(capsys):
    assert main(["hil", "detection", "--hours", "0.5", "--events", "3", "--band", "2:25"]) == 2
    assert "--band: 25.0 Hz is at or above Nyquist" in capsys.readouterr().err
    assert main(["hil", "detection", "--hours", "0.5", "--events", "3", "--pick-window", "0.05"]) == 2
    assert "--pick-window:" in capsys.readouterr().err


def test_table_output(capsys):
    assert main(["hil", "detection", "--hours", "0.5", "--events", "3", "--seed", "2"]) == 0
    out = capsys.readouterr().out
    assert "HIL detection" in out and "9-10" in out and "false triggers" in out


def test_make_detector_is_the_single_construction_point_and_runs_the_station_detector():
    from ims_station.edge.trigger_stage import Detector, FilterSpec

    det = D.make_detector(TriggerParams(), D.SPS, D.trace_ids(1))
    assert hasattr(det, "push") and hasattr(det, "finish") and det.finish() == []
    assert type(det.detector) is Detector                    # the stage's own, as TriggerStage runs it
    s = det.detector.settings
    assert (s.filter, s.corners, s.sta, s.lta, s.on, s.off, s.min_duration, s.max_duration, s.pick) == \
        (FilterSpec("bandpass", (1.5, 8.0)), 4, 0.7, 30.0, 3.5, 2.0, 1.0, 120.0, "aic")


def test_the_tuned_settings_are_the_station_defaults():
    from ims_station.edge.trigger_stage import settings_from_table

    assert settings_from_table(D.DEFAULT_PARAMS.table(1)) == settings_from_table({})


def test_the_station_detector_finds_the_triggers_of_the_numerics_alone():
    """The run's figures carry over from the former detector (edge/trigger.py chained directly):
    with one channel the station's Detector reports the same trigger onsets and ends."""
    from ims_station.edge import trigger as T

    cfg = DetectionConfig(hours=0.5, events=3, seed=2)
    triggers, events, duration = D.simulate(cfg)
    p = cfg.params
    sig = D.station_signals(cfg.seed, events, 1)
    x = D.counts(np.stack([ch.physical(0, int(duration * D.SPS)) for ch in sig])).astype(float)
    y = T.StreamFilter("bandpass", D.SPS, freqmin=p.freqmin, freqmax=p.freqmax, corners=p.corners).process(x)
    cf = T.RecursiveStaLta(int(p.sta_s * D.SPS), int(p.lta_s * D.SPS)).process(y)
    onset = T.TriggerOnset(p.thr_on, p.thr_off, min_len=int(p.min_duration_s * D.SPS),
                           max_len=int(p.max_duration_s * D.SPS))
    ref = [(e.on / D.SPS, e.off / D.SPS) for e in onset.process(cf) + onset.flush() if isinstance(e, T.Event)]
    assert ref and [(round(t.on_s, 6), round(t.off_s, 6)) for t in triggers] == ref
