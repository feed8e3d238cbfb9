"""``ims-station relay request`` without a broker: what it refuses before sending anything."""

from __future__ import annotations

import argparse

import pytest

from ims_station.errors import ConfigError
from ims_station.relay.cli import load_config
from ims_station.relay.request import parse_cli_time, request_window


def test_a_relay_without_its_signing_key_cannot_request(tmp_path):
    f = tmp_path / "relay.toml"
    f.write_text('[relay]\ndata_dir = "d"\ntrust_dir = "t"\n\n[[broker]]\nhost = "127.0.0.1"\nport = 1\n')
    with pytest.raises(ConfigError) as ei:
        request_window(load_config(f), "STA01", 1.7e9, 1.7e9 + 60)
    assert ei.value.key == "relay.acknack_key" and "signed with the relay's key" in ei.value.reason


def test_request_times_are_iso_or_posix():
    assert parse_cli_time("2023-11-14T22:13:20Z") == 1_700_000_000.0 == parse_cli_time("1700000000")
    for bad in ("yesterday", "1e400", "1800-01-01T00:00:00"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_cli_time(bad)
