"""The gateway tables read from a separate ``--uplink`` file (compatibility): paths resolved against
that file, errors naming file, key and reason.  (The same tables inside the station file:
tests/edge/test_config.py.)"""

from __future__ import annotations

import pytest

from ims_station.edge.uplink_config import DEFAULTS, load_uplink_settings
from ims_station.errors import ConfigError


def write(tmp_path, text):
    f = tmp_path / "uplink.toml"
    f.write_text(text)
    return f


def test_paths_resolve_against_the_file_and_defaults_fill_the_rest(tmp_path):
    f = write(tmp_path, '[keys]\nkeystore = "ks"\nstation_key_id = 3\n[outbox]\npath = "o.sqlite"\n'
                        '[uplink]\n[[uplink.brokers]]\nhost = "h"\ntls_ca = "ca.pem"\n')
    st = load_uplink_settings(f)
    assert st.keys["keystore"] == str(tmp_path / "ks") and st.outbox["path"] == str(tmp_path / "o.sqlite")
    assert st.brokers[0].tls_ca == str(tmp_path / "ca.pem") and st.brokers[0].port == 1883
    assert st.get("uplink", "ack_timeout_s") == DEFAULTS["uplink"]["ack_timeout_s"] == 300.0
    assert st.get("framer", "frame_seconds") == 10


@pytest.mark.parametrize("text, key, reason", [
    ("[uplink]\n[[uplink.brokers]]\nhost = 5\n", "uplink.brokers[0].host", "string"),
    ("[uplink]\nprotocol = \"4\"\n[[uplink.brokers]]\nhost = \"h\"\n", "uplink.protocol", "4"),
    ("[uplink]\nbrokers = []\n", "uplink.brokers", ""),
    ("[uplink]\nprefix = \"a//b\"\n[[uplink.brokers]]\nhost = \"h\"\n", "uplink.prefix", "a//b"),
    ("[uplink]\n[[uplink.brokers]]\nhost = \"h\"\nusername = \"u\"\nclient_id = \"x\"\n",
     "uplink.brokers[0].client_id", "unknown key"),
    ("[keys]\nchannel_key_ids = { BHZ = 1 }\n", "keys.keystore", "no keystore"),
    ("[outbox]\nmax_bytes = 1000\n", "outbox.max_bytes", "minimum"),
    ("[framer]\nmax_clock_offset_s = 0\n", "framer.max_clock_offset_s", ""),
    ("[uplink]\nacknack_qos = 2\n[[uplink.brokers]]\nhost = \"h\"\n", "uplink.acknack_qos", "2"),
    ("[uplink]\nacknack_key_ids = [900]\n[[uplink.brokers]]\nhost = \"h\"\n", "uplink.acknack_key_ids",
     "no acknack_trust"),
    ("[uplink]\nacknack_trust = \"t\"\nacknack_key_ids = [0]\n[[uplink.brokers]]\nhost = \"h\"\n",
     "uplink.acknack_key_ids[0]", ""),
])
def test_errors_name_file_key_and_reason(tmp_path, text, key, reason):
    f = write(tmp_path, text)
    with pytest.raises(ConfigError) as ei:
        load_uplink_settings(f)
    assert (ei.value.file, ei.value.key) == (str(f), key) and reason in ei.value.reason, str(ei.value)


def test_a_toml_syntax_error_names_the_file_and_line(tmp_path):
    f = write(tmp_path, "[uplink\n")
    with pytest.raises(ConfigError) as ei:
        load_uplink_settings(f)
    assert ei.value.file == str(f) and "line 1" in str(ei.value)


def test_acknack_trust_is_loaded_from_the_file_s_folder_and_checked(tmp_path):
    from ims_station.auth import export_public, generate_key
    from ims_station.edge.uplink_config import acknack_options

    f = write(tmp_path, '[uplink]\nacknack_trust = "relay-trust"\nacknack_key_ids = [900]\n'
                        '[[uplink.brokers]]\nhost = "h"\n')
    st = load_uplink_settings(f)
    assert st.get("uplink", "acknack_trust") == str(tmp_path / "relay-trust")
    with pytest.raises(ConfigError) as ei:                 # the directory does not exist yet
        acknack_options(st)
    assert ei.value.file in (str(f), str(tmp_path / "relay-trust")), str(ei.value)
    generate_key("ed25519", 900, tmp_path / "relay-keys", station="RELAY", valid_from="2000-01-01T00:00:00Z")
    (tmp_path / "relay-trust").mkdir(mode=0o755)
    export_public(tmp_path / "relay-keys", 900, tmp_path / "relay-trust")
    opts = acknack_options(st)
    assert opts["acknack_key_ids"] == [900] and opts["acknack_trust"].key_ids() == [900]
    assert acknack_options(load_uplink_settings(write(tmp_path, '[uplink]\n[[uplink.brokers]]\nhost = "h"\n'))) == {}


def test_outbox_bound_defaults_to_seven_days_of_the_stations_channels_unless_set(tmp_path):
    from ims_station.edge.uplink_config import settings_from_data

    f = tmp_path / "station.toml"
    ports = [{"url": "sim://a", "board": "pico", "channels": {"0": "00.BHZ", "1": "00.BHN", "2": "00.BHE"}}]
    st = settings_from_data({"station": {"data_dir": "d"}, "ports": ports}, f)
    assert st.streams == [(3, 100.0)] and st.outbox_path == str(tmp_path / "d" / "outbox.sqlite")
    assert st.get("outbox", "max_bytes") == 766_402_560          # 3 ch x 100 sps (pico), 7 days
    assert st.max_bytes_how["frame_bytes"] == 12672
    st = settings_from_data({"ports": ports, "outbox": {"max_age_days": 1}}, f)
    assert st.get("outbox", "max_bytes") == 8640 * 12672
    st = settings_from_data({"ports": ports, "outbox": {"max_bytes": 5 << 20}}, f)
    assert st.get("outbox", "max_bytes") == 5 << 20               # the operator's value, uncapped
