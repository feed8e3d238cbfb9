"""``ims-station edge run --config station.toml``: the full gateway from one station file.

A simulated board (``sim://``, the HIL in-process: simulated time runs as fast as the gateway reads)
-> framer -> outbox -> uplink -> a real Mosquitto started by the test.
"""

from __future__ import annotations

import json
import threading

import paho.mqtt.client as mqtt
import pytest

from ims_station import cd11
from ims_station.broker import MosquittoBroker
from ims_station.cli import main
from ims_station.config import write_secret_file
from ims_station.errors import ConfigError
from tests.conftest import need_mosquitto

SEED = 3


def station_file(tmp_path, broker_port: int | None, *, tables: bool = True) -> "object":
    from ims_station.hil.sim import simulation_key

    write_secret_file(tmp_path / "board.key", simulation_key(SEED))
    f = tmp_path / "station.toml"
    gateway = """
[framer]
max_clock_offset_s = 630_720_000   # the simulation's clock starts at 2026-01-01, whatever today is

[outbox]
max_age_days = 3650
"""
    uplink = f"""
[uplink]
prefix = "ims"
[[uplink.brokers]]
host = "127.0.0.1"
port = {broker_port}
""" if broker_port else ""
    f.write_text(f"""
[station]
code = "XS01"
network = "IM"
data_dir = "spool"

[[ports]]
url = "sim://sim?seed={SEED}"
key_file = "board.key"
board_id = 1
channels = {{ 0 = "00.BHZ", 1 = "00.BHN", 2 = "00.BHE", 3 = "10.BDF" }}
{gateway if tables else ""}{uplink}""")
    return f


def test_edge_run_runs_the_full_gateway_from_one_station_file(tmp_path, capsys):
    need_mosquitto()
    with MosquittoBroker(tmp_path / "broker") as broker:
        got: list[int] = []
        lock = threading.Lock()
        sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="check")
        ready = threading.Event()
        sub.on_connect = lambda c, u, f, rc, p: (c.subscribe("ims/XS01/cd11", qos=1), ready.set())

        def on_message(c, u, msg):
            frame, _ = cd11.parse_frame(msg.payload)
            with lock:
                got.append(frame.sequence)

        sub.on_message = on_message
        sub.connect(broker.config.host, broker.config.port)
        sub.loop_start()
        try:
            assert ready.wait(10)
            cfg = station_file(tmp_path, broker.config.port)
            rc = main(["edge", "run", "--config", str(cfg), "--seconds", "3", "--json"])
        finally:
            sub.loop_stop()
            sub.disconnect()
    assert rc == 0
    doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    framer, outbox, uplink = doc["gateway"]["framer"], doc["outbox"], doc["uplink"]
    # Simulated minutes in wall seconds: full frames, signed by nobody (no [keys]), none partial.
    assert framer["frames"] >= 3 and framer["partial_frames"] == 0 and framer["implausible_time_samples"] == 0
    assert sorted(framer["channels"]) == ["IM.XS01.00.BHE", "IM.XS01.00.BHN", "IM.XS01.00.BHZ", "IM.XS01.10.BDF"]
    # Every frame is on disk (no relay acknowledged any), and went out over MQTT.
    assert outbox["frames"] == framer["frames"] and uplink["published"] >= 1 and uplink["connects"] >= 1
    with lock:
        assert got and set(got) <= set(range(framer["committed_seq"] - framer["frames"] + 1,
                                              framer["committed_seq"] + 1))
    # The board was acknowledged from the persisted ACK point.
    assert doc["ports"][0]["link"]["acks_sent"] >= 1 and doc["gateway"]["acks"] >= 1


def test_uplink_file_and_gateway_tables_in_the_station_file_are_not_both_allowed(tmp_path):
    from ims_station.edge.station import load

    cfg = station_file(tmp_path, None)
    up = tmp_path / "uplink.toml"
    up.write_text("[outbox]\nmax_age_days = 1\n")
    with pytest.raises(ConfigError) as ei:
        load(str(cfg), str(up))
    assert ei.value.key == "framer" and str(up) in ei.value.reason
    cfg = station_file(tmp_path, None, tables=False)
    _, settings = load(str(cfg), str(up))                    # compatibility: the tables from --uplink
    assert settings.get("outbox", "max_age_days") == 1 and settings.file == up


def test_the_gateway_checks_acknacks_against_the_trust_store_the_station_file_names(tmp_path):
    """[uplink] acknack_trust reaches the running uplink (built by station.build, as `edge run` does)."""
    from ims_station.auth import export_public, generate_key
    from ims_station.clock import SystemClock
    from ims_station.edge.config import load_station_config
    from ims_station.edge.station import build

    f = station_file(tmp_path, 1883)
    generate_key("ed25519", 900, tmp_path / "relay-keys", station="RELAY", valid_from="2000-01-01T00:00:00Z")
    (tmp_path / "relay-trust").mkdir(mode=0o755)
    export_public(tmp_path / "relay-keys", 900, tmp_path / "relay-trust")
    f.write_text(f.read_text().replace('prefix = "ims"\n', 'prefix = "ims"\nacknack_trust = "relay-trust"\n'
                                                          'acknack_key_ids = [900]\n'))
    gw, outbox, uplink = build(load_station_config(f), clock=SystemClock())
    try:
        assert uplink.acknack_trust is not None and uplink.acknack_trust.key_ids() == [900]
        assert set(uplink.acknack_key_ids) == {900}
    finally:
        outbox.close()
