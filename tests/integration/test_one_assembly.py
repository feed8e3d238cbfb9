"""Issue 9, "one station assembly": the demo's station and the fault tests' station are the
production assembly (``edge/station.assemble``), not copies of it.

What a hand-wired copy lost and this proves it has: an alarm publishes the SOH at once (the uplink
is asked for it, :meth:`Uplink.request_soh`) and the SOH carries the gateway's statistics.  The
alarm comes through the production path (a ``BoardRestarted`` event handed to the gateway, as the
port pump hands it).  The station's simulated clock is not driven, so the periodic SOH
(``soh_interval_s``, 60 simulated seconds) can never be due: an SOH after the alarm was asked for
by it.
"""

from __future__ import annotations

import json

import pytest

from ims_station import topics
from ims_station.edge.ingest import BoardRestarted

from .conftest import Collector
from .harness import PacedStation, wait_for


def demo_station(tmp_path, broker):
    """One station as ``ims-station demo`` builds it (``_make_rig``), with its keys."""
    from ims_station.demo import SIM_CHANNELS, DemoOptions, _make_rig, make_keys, stages_available

    start_utc = 1_780_000_000
    keys, _ = make_keys(tmp_path, ["DEMO1"], [c for _, c in SIM_CHANNELS], valid_from=start_utc)
    rig = _make_rig(0, "DEMO1", keys["DEMO1"], DemoOptions(), start_utc, tmp_path, broker, stages_available())
    return rig, rig.close


def harness_station(tmp_path, broker):
    """One station as the fault tests build it (``harness.PacedStation``)."""
    sta = PacedStation(tmp_path / "station", "STH1", broker, speed=20.0)
    return sta, sta.close


def soh_messages(sub: Collector, timeout: float) -> list[dict]:
    """The SOH documents received within *timeout* s of the first (at least one)."""
    out = [json.loads(sub.get(timeout)[1])]
    while not sub.empty():
        out.append(json.loads(sub.get(1)[1]))
    return out


@pytest.mark.parametrize("make", [demo_station, harness_station], ids=["demo", "harness"])
def test_an_alarm_publishes_the_soh_at_once_with_the_gateway_statistics(make, mosquitto, tmp_path):
    sta, close = make(tmp_path, mosquitto)
    station = sta.gateway.station_id.split(".")[1]
    sub = Collector(mosquitto.config.host, mosquitto.config.port)
    try:
        sub.connect()
        sub.subscribe(topics.topic("ims", station, "soh"))
        sta.uplink.start()
        wait_for(lambda: sta.uplink.stats()["soh_published"] >= 1, 30, "the SOH at connection")
        soh_messages(sub, 10)                        # the connection's SOH (retained or fresh)
        board = sta.decoder.board_id
        sta.gateway.on_events(sta.decoder, sta.assembler,
                              [BoardRestarted(board, old_epoch=1, new_epoch=2, reason="new_run")])
        # Asked for by the alarm, not by the interval (the station's clock stands still).
        doc = soh_messages(sub, 15)[-1]
        assert doc["gateway"]["board_restarts"] == 1, doc
        last = doc["gateway"]["framer"]["last_alarm"]
        assert last["alarm"] == "board_replaced" and last["board"] == board, doc
    finally:
        sub.close()
        close()
