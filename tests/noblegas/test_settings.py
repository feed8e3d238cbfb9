"""The station file's ``[noble_gas]`` table (edge/noblegas.py, docs/configuration.md): defaults as
documented, bad settings refused at start-up naming the key (``file: noble_gas.<key>: reason``),
the stage registered once in the one station assembly."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ims_station.config import write_secret_file
from ims_station.edge import noblegas as NG
from ims_station.edge import station as station_mod
from ims_station.edge.config import load_station_config
from ims_station.errors import ConfigError

from .harness import calibration_file

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"

STATION = """
[station]
code = "NG01"
network = "XX"
data_dir = "data"

[[ports]]
url = "sim://nowhere"
board = "sim"
key_file = "board.key"
channels = { 0 = "00.BHZ" }

[noble_gas]
"""
REQUIRED = 'url = "noblegas://x"\nstation = "MIX58"\ndetector = "MIX58_222"\n'


@pytest.fixture
def station(tmp_path):
    write_secret_file(tmp_path / "board.key", bytes(range(32)))
    calibration_file(tmp_path)
    f = tmp_path / "station.toml"

    def write(table: str):
        f.write_text(STATION + table + "\n")
        return f
    return write


def test_the_required_keys_alone_take_the_documented_defaults(station):
    s = NG.settings_from_station(load_station_config(station(REQUIRED)))
    assert s == NG.NobleGasSettings(url="noblegas://x", station="MIX58", detector="MIX58_222")
    assert s.soh == {k: tuple(v) for k, v in NG.SOH_DEFAULTS.items()} and s.calibration is None


def test_a_full_table_resolves(station, tmp_path):
    s = NG.settings_from_station(load_station_config(station(
        REQUIRED + 'detector_type = "beta-gamma"\ncalibration_file = "calibration-bg.json"\nretries = 5\n'
        'roi_thresholds = { "2" = 50, "3" = 80 }\nsoh = { flow = [1.5, 2.5], t_room = [15, 30] }\n')))
    assert s.retries == 5 and s.roi_thresholds == {2: 50.0, 3: 80.0}
    assert s.soh["flow"] == (1.5, 2.5) and s.soh["t_det"] == (5.0, 35.0)
    assert s.calibration.channels == 256 and len(s.calibration.ratios) == 18


BAD = [
    ('station = "MIX58"\ndetector = "D"\n', "noble_gas.url", "required"),
    (REQUIRED + "retries = -1\n", "noble_gas.retries", "minimum"),
    (REQUIRED + 'detector_type = "nai"\n', "noble_gas.detector_type", "nai"),
    (REQUIRED + "reply_timeout = 2\n", "noble_gas.reply_timeout", "unknown key"),
    (REQUIRED + "soh = { flow = [3, 1] }\n", "noble_gas.soh.flow", "below"),
    (REQUIRED + "soh = { flux = [1, 3] }\n", "noble_gas.soh.flux", ""),
    (REQUIRED + "reconnect_initial_s = 10\nreconnect_max_s = 5\n", "noble_gas.reconnect_max_s", "below"),
    (REQUIRED + "acquisition_s = 50000\n", "noble_gas.acquisition_s", "longer"),
    (REQUIRED + 'calibration_file = "missing.json"\n', "noble_gas.calibration_file", "cannot read"),
    (REQUIRED + 'roi_thresholds = { "3" = 10 }\n', "noble_gas.roi_thresholds", "calibration_file"),
    (REQUIRED + 'detector_type = "hpge"\nroi_thresholds = { "3" = 10 }\n', "noble_gas.roi_thresholds", "beta-gamma"),
    (REQUIRED + 'roi_thresholds = { "11" = 10 }\n', "noble_gas.roi_thresholds", ""),
]


@pytest.mark.parametrize("table, key, reason", BAD)
def test_bad_settings_are_refused_at_start_up_naming_the_key(station, table, key, reason):
    f = station(table)
    with pytest.raises(ConfigError) as ei:
        load_station_config(f)
    assert ei.value.file == str(f) and ei.value.key.startswith(key) and reason in ei.value.reason, str(ei.value)


def test_a_calibration_file_of_the_wrong_shape_is_named(station, tmp_path):
    (tmp_path / "bad.json").write_text('{"channels": 256}')
    with pytest.raises(ConfigError) as ei:
        load_station_config(station(REQUIRED + 'calibration_file = "bad.json"\n'))
    assert ei.value.key == "noble_gas.calibration_file" and "g_span_kev" in ei.value.reason


def test_every_key_and_default_is_documented():
    text = DOC.read_text()
    section = text[text.index("## `[noble_gas]`"):]
    section = section[:section.find("\n## ", 5)]
    for key, value in NG.DEFAULTS.items():
        row = next((line for line in section.splitlines() if line.startswith(f"| `{key}` |")), None)
        assert row is not None, f"[noble_gas] {key} not documented"
        shown = row.split("|")[3].strip()
        if value is None:
            expect = "none"
        elif isinstance(value, float):
            expect = f"`{value:g}`"
        elif isinstance(value, str):
            expect = f'`"{value}"`'
        elif isinstance(value, dict):
            expect = "`{}`"
        else:
            expect = f"`{value}`"
        assert shown == expect, (key, row)
    assert set(re.findall(r"^\| `(\w+)` \|", section, re.M)) == set(NG.DEFAULTS)
    soh_row = next(line for line in section.splitlines() if line.startswith("| `soh` |"))
    for k, (lo, hi) in NG.SOH_DEFAULTS.items():
        assert f"`{k}` `[{lo:g}, {hi:g}]`" in soh_row, k


def test_the_driver_is_registered_once_in_the_station_assembly():
    assert [t for t, _ in station_mod.STAGES].count("noble_gas") == 1
    assert dict(station_mod.STAGES)["noble_gas"] is NG.NobleGasStage


def test_docs_noblegas_lists_every_soh_field_fault_and_alarm():
    """docs/noblegas.md "State of health" and "Alarms" promise what stats() and the alarms are."""
    from ims_station.hil.noblegas.device import ManualClock

    doc = (Path(__file__).resolve().parents[2] / "docs" / "noblegas.md").read_text()
    driver = doc[doc.index("## The driver"):]
    soh = driver[driver.index("### State of health"):driver.index("### Tests")]
    st = NG.NobleGasDriver(NG.NobleGasSettings(url="noblegas://none", station="S", detector="D"), ManualClock(),
                           emit_message=lambda b: None).stats()
    rows = dict(re.findall(r"^\| `(\w+)` \| (.*) \|$", soh, re.M))
    assert set(rows) == set(st)
    for k in st["faults"]:
        assert f"`{k}`" in rows["faults"], k
    for k in st["soh"]:
        assert f"`{k}`" in rows["soh"], k
    for k in set(st["counters"]) - set(st["faults"]):
        assert f"`{k}`" in rows["counters"], k
    alarms = driver[driver.index("### Alarms"):driver.index("### State of health")]
    for key in NG.SOH_DEFAULTS:
        assert f"`soh_{key}`" in alarms and f"`{key}`" in alarms, key
