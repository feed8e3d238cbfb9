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
