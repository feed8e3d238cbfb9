"""``ims-station sim network`` (issue 13): a small network -- one station of each kind, the T-phase
station through the HIL firmware and serial link -- through the production path (framer,
signatures, outbox on disk, uplink) into Mosquitto and a ``relay run`` process, faster than real
time: every frame and IMS 2.0 message owed is archived, and the report carries the fields
docs/sim-network.md promises."""

from __future__ import annotations

import pytest

from ims_station.simnet import SimOptions, run_network, table_lines
from ims_station.simnet_network import DEFAULT_NETWORK, load_network

SMALL = """
[network]
code = "IM"
[simulation]
minutes = 1.5
speed = 30
hil_stations = 1
workers = 1
[[kind]]
name = "primary_array"
prefix = "PA"
count = 1
sensor = "seismic"
rate = 40
elements = 9
channels = ["SHZ"]
board_channels = 8
[[kind]]
name = "primary_3c"
prefix = "PS"
count = 1
sensor = "seismic"
rate = 40
channels = ["BHZ", "BHN", "BHE"]
[[kind]]
name = "infrasound_array"
prefix = "IS"
count = 1
sensor = "infrasonic"
rate = 20
elements = 4
channels = ["BDF"]
[[kind]]
name = "hydrophone"
prefix = "HA"
count = 1
sensor = "hydroacoustic"
rate = 250
elements = 3
channels = ["EDH"]
[[kind]]
name = "tphase_3c"
prefix = "HT"
count = 1
sensor = "seismic"
rate = 100
channels = ["HHZ", "HHN", "HHE"]
hil = true
[[kind]]
name = "noble_gas"
prefix = "RX"
count = 1
messages = "noble_gas"
message_hours = 0.0125
"""


def test_small_network_loses_nothing_and_reports_every_field(mosquitto_installed, tmp_path):
    (tmp_path / "net.toml").write_text(SMALL)
    rep = run_network(SimOptions(network=str(tmp_path / "net.toml"), workdir=str(tmp_path / "run")))
    assert rep["network"]["stations"] == 6 and rep["network"]["hil_stations"] == 1
    f, m = rep["frames"], rep["messages"]
    # 90 s of sampling in 10-s frames aligned to the start: 9 frames per waveform station, 5 stations
    assert f["expected"] == 45 and f["archived"] == 45 and f["lost"] == 0, (f, rep["failures"])
    assert m["expected"] == 2 and m["archived"] == 2 and m["lost"] == 0, m     # one every 45 s
    assert rep["failures"] == [] and rep["ok"]
    hil = rep["stations"]["HT1"]
    assert hil["hil"] and hil["link"]["packets_ok"] > 0 and hil["frames"]["lost"] == 0
    arr = rep["stations"]["PA1"]
    assert arr["channels"] == 9 and arr["frames"]["archived"] == 9 and arr["latency_wall_s"]["n"] == 9
    for key in ("p50", "p99"):
        assert rep["latency_wall_s"][key] is not None and rep["latency_sim_s"][key] >= rep["latency_wall_s"][key]
    t, c = rep["time"], rep["cpu"]
    assert t["simulated_s"] == 135.0 and t["speedup"] > 1 and t["speed_aimed"] == 30
    assert c["relay_s"] > 0 and c["broker_s"] is not None and c["workers_s"] > 0 and c["relay_bound_speedup"] > 0
    assert set(rep["kinds"]) == {"primary_array", "primary_3c", "infrasound_array", "hydrophone", "tphase_3c",
                                 "noble_gas"}
    assert rep["relay"]["quarantined"] == 0 and rep["relay"]["verified"] >= 47
    lines = table_lines(rep)
    assert lines[-1] == "OK" and any(line.startswith("noble_gas") for line in lines)


def test_default_network_is_the_ims_like_mix():
    net = load_network()
    assert len(net.stations) == 321 and net.simulation["speed"] == 20
    counts = net.counts()
    assert sum(v for k, v in counts.items() if k not in ("noble_gas", "particulate")) == 241
    assert counts["noble_gas"] == 40 and counts["particulate"] == 40
    arrays = [s for s in net.stations if s.kind == "primary_array"]
    assert min(s.n_channels for s in arrays) == 9 and max(s.n_channels for s in arrays) == 30
    assert sum(1 for s in net.stations if s.hil) == 2
    codes = [s.code for s in net.stations]
    assert len(set(codes)) == 321 and all(1 <= len(c) <= 5 for c in codes)
    rates = {s.kind: s.ports[0].rate for s in net.stations if s.ports}
    assert rates["primary_array"] == 40 and rates["infrasound_array"] == 20 and rates["hydrophone"] == 250
    assert "[[kind]]" in DEFAULT_NETWORK


def test_scaled_network_keeps_every_kind():
    net = load_network(stations=10)
    assert len(net.stations) == 10 and len(net.counts()) == 8


def test_network_file_errors_name_the_key(tmp_path):
    from ims_station.errors import ConfigError

    bad = tmp_path / "bad.toml"
    bad.write_text('[[kind]]\nname = "x"\nprefix = "X"\ncount = 1\nsensor = "seismic"\nrate = 7\nchannels = ["BHZ"]\n')
    with pytest.raises(ConfigError, match="rate"):
        load_network(bad)
    bad.write_text('[[kind]]\nname = "x"\nprefix = "X"\ncount = 1\nsensor = "seismic"\nchannels = ["BHZ"]\n')
    with pytest.raises(ConfigError, match=r"kind\[0\]\.rate"):
        load_network(bad)


def test_the_documented_network_file_loads_and_the_default_matches_the_doc(tmp_path):
    """docs/sim-network.md: its example file is a valid network file, and the default mix has the
    counts and channel total the page states."""
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "sim-network.md").read_text()
    example = re.search(r"```toml\n(.*?)```", doc, re.S).group(1)
    (tmp_path / "net.toml").write_text(example)
    net = load_network(tmp_path / "net.toml")
    assert net.counts() == {"primary_array": 30, "noble_gas": 40}
    default = load_network()
    channels = sum(4 if s.hil else s.n_channels for s in default.stations if s.ports or s.hil)
    assert f"default has {channels:,} waveform channels in 241 waveform stations" in doc
    for kind, count in default.counts().items():
        assert re.search(rf"\| `{kind}` \| {count} \|", doc), kind
