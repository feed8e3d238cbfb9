"""Relay configuration: validated at start-up, errors name file, key and reason."""

from __future__ import annotations

import pytest

from ims_station.errors import ConfigError
from ims_station.relay.cli import build_relay, load_config


def write(tmp_path, text: str):
    p = tmp_path / "relay.toml"
    p.write_text(text)
    return p


GOOD = """
[relay]
data_dir = "data"
trust_dir = "{trust}"
instance = "r1"
[[broker]]
host = "127.0.0.1"
port = 1883
"""


def test_valid_config_resolves_paths_and_builds(tmp_path, keys):
    conf = load_config(write(tmp_path, GOOD.format(trust=keys.trust_dir)))
    assert conf["relay"]["data_dir"] == str(tmp_path / "data")
    assert conf["brokers"][0].port == 1883
    relay = build_relay(conf)
    try:
        assert relay.subscription == "$share/relay/ims/+/cd11" and relay.instance == "r1"
    finally:
        relay.core.close()


@pytest.mark.parametrize("edit,key,reason", [
    (lambda t: t.replace('instance = "r1"', 'instance = "r1"\ncolour = "red"'), "relay.colour", "unknown key"),
    (lambda t: t.replace('data_dir = "data"\n', ""), "relay.data_dir", "required"),
    (lambda t: t.replace('instance = "r1"', 'acknack_interval_s = 120'), "relay.acknack_interval_s", "120"),
    (lambda t: t.replace("port = 1883", 'port = 1883\npassword = "secret"'), "broker[0].password", "unknown key"),
    (lambda t: t.replace("port = 1883", 'port = 1883\npassword_file = "pw"'), "broker[0].username", "without username"),
])
def test_config_errors_name_file_key_and_reason(tmp_path, keys, edit, key, reason):
    p = write(tmp_path, edit(GOOD.format(trust=keys.trust_dir)))
    with pytest.raises(ConfigError) as err:
        load_config(p)
    assert err.value.file == str(p) and err.value.key == key and reason in err.value.reason
