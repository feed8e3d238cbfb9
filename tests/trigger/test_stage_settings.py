"""The station file's ``[trigger]`` table (edge/trigger_stage.py, docs/configuration.md): defaults as
documented, and bad settings refused at start-up with the key named (``file: trigger.<key>: reason``)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ims_station.config import write_secret_file
from ims_station.edge import trigger_stage as TS
from ims_station.edge.config import load_station_config
from ims_station.errors import ConfigError

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"

STATION = """
[station]
code = "TRG1"
network = "XX"
data_dir = "data"

[[ports]]
url = "sim://nowhere"
board = "sim"
key_file = "board.key"
channels = { 0 = "00.BHZ", 1 = "00.BHN", 2 = "00.BHE", 3 = "10.BDF" }
"""


@pytest.fixture
def station(tmp_path):
    write_secret_file(tmp_path / "board.key", bytes(range(32)))
    f = tmp_path / "station.toml"

    def write(trigger: str):
        f.write_text(STATION + "\n[trigger]\n" + trigger + "\n")
        return f
    return write


def test_an_empty_table_takes_the_documented_defaults(station):
    cfg = load_station_config(station(""))
    s = TS.settings_from_station(cfg)
    assert s == TS.TriggerSettings()
    assert [c for c in TS.station_channels(cfg) if s.selects(c)] == [
        "XX.TRG1.00.BHZ", "XX.TRG1.00.BHN", "XX.TRG1.00.BHE", "XX.TRG1.10.BDF"]


def test_a_full_table_resolves(station):
    cfg = load_station_config(station(
        'algorithm = "classicstalta"\nsta = 0.5\nlta = 5\non = 4\noff = 2\nfilter = "bandpass:1:10"\n'
        'corners = 2\nchannels = ["00.BH?"]\nmin_duration = 0.5\nmax_duration = 60\npre_event = 5\n'
        'post_event = 30\ncoincidence_sum = 2.5\ncoincidence_window = 1\nweights = { "00.BHZ" = 1.5 }\n'))
    s = TS.settings_from_station(cfg)
    assert s.filter == TS.FilterSpec("bandpass", (1.0, 10.0)) and s.corners == 2
    assert s.selects("XX.TRG1.00.BHN") and not s.selects("XX.TRG1.10.BDF") and not s.selects("1/0")
    assert s.weight("XX.TRG1.00.BHZ") == 1.5 and s.weight("XX.TRG1.00.BHE") == 1.0


BAD = [
    ("sta = 10\nlta = 5", "trigger.sta", "shorter than lta"),
    ("sta = 0.001", "trigger.sta", "at least 1 sample"),          # 0 samples at 100 sps
    ("on = 2\noff = 2", "trigger.off", "below on"),
    ("min_duration = -1", "trigger.min_duration", "negative"),
    ("pre_event = -0.5", "trigger.pre_event", "negative"),
    ("post_event = -3", "trigger.post_event", "negative"),
    ("coincidence_window = -1", "trigger.coincidence_window", "negative"),
    ("max_duration = 0", "trigger.max_duration", "positive"),
    ("min_duration = 20\nmax_duration = 10", "trigger.min_duration", "longer than max_duration"),
    ('filter = "bandpass:1:60"', "trigger.filter", "Nyquist (50.0 Hz)"),     # sim board: 100 sps
    ('filter = "lowpass:50"', "trigger.filter", "Nyquist"),
    ('filter = "notch:5"', "trigger.filter", "unknown filter"),
    ('filter = "bandpass:5"', "trigger.filter", "FMIN:FMAX"),
    ('filter = "bandpass:10:1"', "trigger.filter", "below FMAX"),
    ('channels = ["00.HH?"]', "trigger.channels[0]", "selects none"),
    ('weights = { "00.BHX" = 1 }', "trigger.weights.00.BHX", "not a channel taking part"),
    ('channels = ["00.BHZ"]\nweights = { "00.BHN" = 1 }', "trigger.weights.00.BHN", "not a channel taking part"),
    ('weights = { "00.BHZ" = 0 }', "trigger.weights.00.BHZ", "positive"),
    ("coincidence_sum = 5", "trigger.coincidence_sum", "never be reached"),
    ("coincidence_sum = 0", "trigger.coincidence_sum", "positive"),
    ('algorithm = "zdetect"', "trigger.algorithm", "is not one of"),
    ("bogus = 1", "trigger.bogus", "unknown key"),
    ("corners = 0", "trigger.corners", "minimum"),
]


@pytest.mark.parametrize("table, key, reason", BAD, ids=[b[1] + "-" + str(i) for i, b in enumerate(BAD)])
def test_bad_settings_are_refused_at_start_up_naming_the_key(station, table, key, reason):
    f = station(table)
    with pytest.raises(ConfigError) as ei:
        load_station_config(f)
    err = ei.value
    assert (err.file, err.key) == (str(f), key) and reason in err.reason, str(err)


def test_the_replay_options_are_named_in_their_errors():
    with pytest.raises(ConfigError) as ei:
        TS.settings_from_table({"sta": 5, "lta": 1}, file="cmd", prefix="", key_names={"sta": "--sta"})
    assert ei.value.key == "--sta"


def test_every_key_and_default_is_documented():
    text = DOC.read_text()
    section = text[text.index("## `[trigger]`"):]
    section = section[:section.find("\n## ", 5)] if "\n## " in section[5:] else section
    for key, value in TS.DEFAULTS.items():
        row = next((line for line in section.splitlines() if line.startswith(f"| `{key}` |")), None)
        assert row is not None, f"[trigger] {key} not documented"
        shown = row.split("|")[3].strip()
        if isinstance(value, float):
            expect = f"`{value:g}`"
        elif isinstance(value, str):
            expect = f'`"{value}"`'
        elif isinstance(value, list):
            expect = "`[" + ", ".join(f'"{v}"' for v in value) + "]`"
        elif isinstance(value, dict):
            expect = "`{}`"
        else:
            expect = f"`{value}`"
        assert shown == expect, (key, row)
    assert set(re.findall(r"^\| `(\w+)` \|", section, re.M)) == set(TS.DEFAULTS)


def test_edge_run_stops_at_start_up_with_the_key_named(station, capsys):
    from ims_station.cli import main

    f = station('filter = "highpass:70"')
    assert main(["edge", "run", "--config", str(f)]) == 2
    err = capsys.readouterr().err
    assert f"{f}: trigger.filter: 70.0 Hz is at or above Nyquist" in err and err.count("\n") == 1, err
