"""Board definitions: every board validates; each kind of error names file, key and reason; the
frozen module compiles with mpy-cross and MicroPython imports it."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
import tomllib

import pytest

from ims_station import boards
from ims_station.errors import ConfigError
from tests.conftest import ROOT, need_micropython
from ims_station.firmware import link

NAMES = boards.list_boards()


def test_required_boards_exist():
    assert {"pico", "esp32", "sim"} <= set(NAMES)
    assert boards.DEFAULT_BOARD == "sim"


@pytest.mark.parametrize("name", NAMES)
def test_board_validates(name):
    b = boards.load_board(name)
    assert b["board"]["name"] == name
    acq = b["acquisition"]
    assert acq["default_rate_mhz"] in acq["rates_mhz"]
    for rate in acq["rates"]:
        assert boards.data_packet_bytes(b, boards.rate_mhz(rate)) - link.OVERHEAD <= link.MAX_PAYLOAD
        assert boards.ring_capacity_seconds(b, rate) > 10


def test_board_ids_are_unique():
    ids = [boards.load_board(n)["board"]["id"] for n in NAMES]
    assert len(set(ids)) == len(ids)


def test_ring_capacity_seconds_by_hand():
    b = boards.load_board("sim")
    # 4 channels x 200 sps, 1 s packets: 36 + 20 + 4 + 4 x (1 + 800) = 3264 bytes; SOH 68 bytes / 10 s.
    pkt = 3264
    expect = (b["acquisition"]["ring_bytes"] - pkt) / (pkt + 6.8)
    assert boards.ring_capacity_seconds(b, 200) == pytest.approx(expect)
    assert boards.data_packet_bytes(b, 200_000) == pkt


def test_capacity_table_matches_docs():
    text = (ROOT / "docs" / "boards.md").read_text()
    for row in boards.capacity_table():
        assert f"| {row['board']} | {row['rate']:g} | {row['channels']} | {row['packet_bytes']} | " \
               f"{row['ring_bytes']} | {row['ring_packets']} | {row['seconds']:.0f} |" in text, row


def raw(name="sim"):
    with open(boards.board_path(name), "rb") as f:
        return tomllib.load(f)


def expect_error(data, key, words, file="boards/sim.toml"):
    with pytest.raises(ConfigError) as info:
        boards.check_board(data, file)
    err = info.value
    assert err.file == file and err.key == key, str(err)
    for w in words:
        assert w in err.reason, str(err)
    assert str(err).startswith(f"{file}: {key}: ")


def test_schema_unknown_key():
    d = raw()
    d["uart"]["parity"] = "even"
    expect_error(d, "uart.parity", ["unknown key"])


def test_schema_missing_key():
    d = raw()
    del d["adc"]["cs"]
    expect_error(d, "adc.cs", ["required"])


def test_schema_wrong_type_and_enum():
    d = raw()
    d["channels"][2]["sensor"] = "seismometer"
    expect_error(d, "channels[2].sensor", ["seismometer"])
    d = raw()
    d["uart"]["baud"] = "fast"
    expect_error(d, "uart.baud", ["not of type"])


def test_schema_bad_seed_code():
    d = raw()
    d["channels"][1]["station"] = "toolong1"
    expect_error(d, "channels[1].station", ["does not match"])


def test_duplicate_pin():
    d = raw()
    d["pins"]["tamper"] = d["adc"]["drdy"]
    expect_error(d, "pins.tamper", ["already used by adc.drdy"])


def test_pin_rules_of_the_mcu():
    d = raw("esp32")
    d["adc"]["cs"] = 34
    expect_error(d, "adc.cs", ["input-only"], "boards/esp32.toml")
    d = raw("esp32")
    d["uart"]["tx"] = 16
    expect_error(d, "uart.tx", ["used inside"], "boards/esp32.toml")
    d = raw("pico")
    d["pins"]["supply_adc"] = 14
    expect_error(d, "pins.supply_adc", ["no ADC"], "boards/pico.toml")
    d = raw("pico")
    d["pins"]["led"] = 40
    with pytest.raises(ConfigError):
        boards.check_board(d, "boards/pico.toml")


def test_duplicate_channel_code_and_input():
    d = raw()
    d["channels"][3] = copy.deepcopy(d["channels"][0]) | {"adc_input": 3}
    expect_error(d, "channels[3].channel", ["XX.SIM01.00.BHZ", "channels[0]"])
    d = raw()
    d["channels"][1]["adc_input"] = 0
    expect_error(d, "channels[1].adc_input", ["already used by channels[0]"])
    d = raw()
    d["channels"][1]["adc_input"] = 5
    expect_error(d, "channels[1].adc_input", ["does not exist"])


def test_rate_the_adc_cannot_do():
    d = raw()
    d["acquisition"]["rates"] = [100, 150]
    expect_error(d, "acquisition.rates[1]", ["150", "clkin_hz", "can do"])
    d = raw()
    d["acquisition"]["default_rate"] = 400
    expect_error(d, "acquisition.default_rate", ["not one of rates"])


def test_packet_too_large_for_the_link():
    d = raw()
    d["acquisition"]["packet_ms"] = 2000
    d["uart"]["baud"] = 921600
    expect_error(d, "acquisition.packet_ms", ["MAX_PAYLOAD"])


def test_uart_too_slow():
    d = raw()
    d["uart"]["baud"] = 38400
    expect_error(d, "uart.baud", ["cannot carry"])


def test_ring_larger_than_ram_and_name_mismatch():
    d = raw()
    d["acquisition"]["ring_bytes"] = 900000
    expect_error(d, "acquisition.ring_bytes", ["RAM"])
    d = raw()
    expect_error(d, "board.name", ["file name"], "boards/other.toml")


def test_adc_part_and_inputs_disagree():
    d = raw()
    d["adc"]["part"] = "ads131m03"
    expect_error(d, "adc.inputs", ["ads131m03"])


def test_unknown_board_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError) as info:
        boards.load_board("nosuchboard")
    assert "known: " in str(info.value) and "sim" in str(info.value)
    bad = tmp_path / "broken.toml"
    bad.write_text("[board\nname=1")
    with pytest.raises(ConfigError) as info:
        boards.load_board(bad)
    assert str(bad) in str(info.value) and "TOML" in str(info.value)


@pytest.mark.parametrize("name", NAMES)
def test_freeze_is_literals_and_round_trips(name, tmp_path):
    b = boards.load_board(name)
    src = boards.freeze(b)
    ns: dict = {}
    exec(compile(src, "board_config.py", "exec"), {"__builtins__": {}}, ns)   # literals only
    assert ns["BOARD"] == b
    path = boards.write_frozen(b, tmp_path / "board_config.py")
    proc = subprocess.run([sys.executable, "-m", "mpy_cross", "-o", str(tmp_path / "bc.mpy"), str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("name", NAMES)
def test_micropython_imports_frozen_board(name, tmp_path):
    exe = need_micropython()
    b = boards.load_board(name)
    boards.write_frozen(b, tmp_path / "board_config.py")
    proc = subprocess.run([exe, "-c", "from board_config import BOARD; "
                           "print(BOARD['board']['name'], BOARD['acquisition']['default_rate_mhz'], "
                           "len(BOARD['channels']), BOARD['channels'][0]['channel'])"],
                          cwd=tmp_path, env=dict(os.environ, MICROPYPATH=str(tmp_path)),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [name, str(b["acquisition"]["default_rate_mhz"]), str(len(b["channels"])),
                                   b["channels"][0]["channel"]]
