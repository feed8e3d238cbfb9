"""The demo (the README's main command) end to end, short: with Mosquitto and with the embedded
fallback broker.  Everything the gateway built reaches the relay verified, except frames the outbox
evicted with an alarm."""

from __future__ import annotations

import pytest

from ims_station.demo import DemoOptions, run_demo


@pytest.mark.parametrize("broker", ["mosquitto", "embedded"])
def test_demo_delivers_every_frame_verified(broker, tmp_path):
    rep = run_demo(DemoOptions(minutes=0.75, stations=2, speed=15.0, seed=11, broker=broker,
                               workdir=str(tmp_path / "demo")))
    assert rep["broker"]["name"] == ("mosquitto" if broker == "mosquitto" else "amqtt")
    assert rep["missing_stages"] == []
    f = rep["frames"]
    assert f["built"] >= 8, f
    assert f["quarantined"] == 0 and f["delivered"] == f["verified"], f
    assert f["lost"] - f["evicted_at_station"] == 0, f
    lat = rep["latency_s"]["sample_to_archive_last_sample"]
    assert lat["n"] == f["delivered"] and lat["p50"] is not None
    assert rep["ok"], rep
    for sta in rep["stations"].values():
        assert sta["samples_ingested"] == sta["samples_generated"] > 0


def test_auxiliary_demo_archives_only_the_released_windows(mosquitto_installed, tmp_path):
    """Must-show 5, second half: in auxiliary mode the stations keep their data; what reaches the
    archive is exactly the frames of the released windows -- here the window the relay requests
    (``relay/request.py``, signed, over MQTT) one minute into the run; with a trigger stage
    configured, each event's window too."""
    rep = run_demo(DemoOptions(minutes=1.75, stations=1, speed=20.0, seed=5, broker="mosquitto", auxiliary=True,
                               workdir=str(tmp_path / "demo")))
    aux, f = rep["auxiliary"], rep["frames"]
    sta = aux["stations"]["DEMO1"]
    answer = sta["request"]["answer"]
    assert answer["ok"] and answer["frames"] == 3 and answer["missing"] == [], answer
    assert aux["archived_outside_windows"] == 0 and f["lost"] == 0 and f["quarantined"] == 0, rep
    assert f["delivered"] == aux["frames_released"] == sta["frames_archived"] >= 3
    assert f["built"] >= 9 and sta["held_at_station"] == f["built"]       # the buffer keeps everything
    assert rep["ok"], rep
