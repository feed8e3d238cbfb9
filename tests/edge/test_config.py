"""Station TOML: schema and semantic errors name file, key and reason; keys come from 0600 files."""

from __future__ import annotations

import os

import pytest

from ims_station.config import write_secret_file
from ims_station.edge.config import load_station_config
from ims_station.errors import ConfigError, KeyFileError

GOOD = """
[station]
code = "XS01"
network = "IM"
data_dir = "spool"

[link]
resend_timeout = 1.5

[[ports]]
url = "sim://board?seed=7"
board = "sim"
board_id = 1
key_file = "board1.key"
channels = { 0 = "00.BHZ", 1 = "00.BHN", 2 = "IM.XS02.10.BDF" }
link = { max_resend_tries = 3, adapt_packet_ms = false, max_inflight_bytes = 4096 }

[[ports]]
url = "/dev/ttyUSB0"
baudrate = 230400
key_file = "board2.key"
"""


@pytest.fixture
def station(tmp_path):
    write_secret_file(tmp_path / "board1.key", bytes(range(32)))
    write_secret_file(tmp_path / "board2.key", bytes(range(1, 33)))
    f = tmp_path / "station.toml"
    f.write_text(GOOD)
    return f


def test_a_valid_file_loads_with_defaults_resolved(station, tmp_path):
    cfg = load_station_config(station)
    assert (cfg.code, cfg.network, cfg.data_dir) == ("XS01", "IM", tmp_path / "spool")
    p1, p2 = cfg.ports
    assert p1.key == bytes(range(32)) and "key=" not in repr(p1)
    assert p1.channels == {0: "IM.XS01.00.BHZ", 1: "IM.XS01.00.BHN", 2: "IM.XS02.10.BDF"}
    assert p1.link == {"resend_timeout": 1.5, "max_resend_tries": 3, "ack_interval": 1.0,
                       "command_timeout": 5.0, "max_held": 2048, "adapt_packet_ms": False,
                       "max_inflight_bytes": 4096}
    # ... and they are the LinkDecoder's keyword arguments.
    from ims_station.edge.ingest import LinkDecoder
    dec = LinkDecoder(p1.key, None, **p1.link)
    assert not dec.adapt_packet_ms and dec.max_inflight_bytes == 4096 and dec.max_resend_tries == 3
    assert (p2.baudrate, p2.timeout, p2.board, p2.board_id, p2.name) == (230400, 0.05, "sim", None, "port1")
    assert p1.codes(1) == {(1, 0): "IM.XS01.00.BHZ", (1, 1): "IM.XS01.00.BHN", (1, 2): "IM.XS02.10.BDF"}


@pytest.mark.parametrize("edit, key, reason", [
    (("[station]", "[station]\nbogus = 1"), "station.bogus", "unknown key"),
    (('code = "XS01"\n', ""), "station.code", "required key is missing"),
    (('code = "XS01"', 'code = "toolong"'), "station.code", "not 1-5 upper-case"),
    (('network = "IM"', 'network = "I-M"'), "station.network", "not 1-2 upper-case"),
    (("baudrate = 230400", 'baudrate = "fast"'), "ports[1].baudrate", "is not of type 'integer'"),
    (('url = "/dev/ttyUSB0"', 'url = "sim://board?seed=7"'), "ports[1].url", "already used by ports[0]"),
    (('key_file = "board2.key"', 'key_file = "board2.key"\nboard_id = 1'), "ports[1].board_id", "already used by ports[0]"),
    (('"00.BHZ"', '"00.BHZZ"'), "ports[0].channels.0", "channel code 'BHZZ'"),
    (('"00.BHN"', '"00.BHZ"'), "ports[0].channels.1", "already used by ports[0].channels.0"),
    (("resend_timeout = 1.5", "resend_timeout = -1"), "link.resend_timeout", "less than or equal to the minimum"),
    # Channel ids are indexes into the board definition's [[channels]]: the sim board has 0-3.
    (('2 = "IM.XS02.10.BDF"', '99 = "IM.XS02.10.BDF"'), "ports[0].channels.99",
     "board 'sim' has 4 channels (0-3): there is no channel 99"),
    (('2 = "IM.XS02.10.BDF"', '4 = "IM.XS02.10.BDF"'), "ports[0].channels.4", "no channel 4"),
    (('key_file = "board2.key"', 'key_file = "board2.key"\nchannels = { 7 = "20.BHZ" }'), "ports[1].channels.7",
     "board 'sim' has 4 channels"),                                    # the default board is checked too
    (('board = "sim"', 'board = "nosuch"'), "ports[0].board", "no board named 'nosuch' (known: esp32, pico, sim)"),
])
def test_errors_name_file_key_and_reason(station, edit, key, reason):
    station.write_text(GOOD.replace(*edit, 1))
    with pytest.raises(ConfigError) as err:
        load_station_config(station)
    assert err.value.file == str(station) and err.value.key == key
    assert reason in err.value.reason, err.value.reason


def test_every_channel_of_the_board_may_be_named(station):
    station.write_text(GOOD.replace('2 = "IM.XS02.10.BDF"', '2 = "IM.XS02.10.BDF", 3 = "10.BDF"', 1))
    assert sorted(load_station_config(station).ports[0].channels) == [0, 1, 2, 3]


def test_syntax_error_names_the_file(station):
    station.write_text("[station\n")
    with pytest.raises(ConfigError, match="not valid TOML") as err:
        load_station_config(station)
    assert err.value.file == str(station)


def test_key_file_must_exist_there_is_no_default_key(station, tmp_path):
    os.unlink(tmp_path / "board2.key")
    with pytest.raises(KeyFileError) as err:
        load_station_config(station)
    assert err.value.file == str(tmp_path / "board2.key")
    assert "ports[1].key_file" in err.value.key and "no default key" in err.value.reason


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_key_file_readable_by_others_is_refused(station, tmp_path, mode):
    os.chmod(tmp_path / "board1.key", mode)
    with pytest.raises(KeyFileError, match="too open") as err:
        load_station_config(station)
    assert str(station) in err.value.key and "ports[0].key_file" in err.value.key


def test_short_key_is_refused(station, tmp_path):
    write_secret_file(tmp_path / "board1.key", b"short")
    with pytest.raises(KeyFileError, match="too short"):
        load_station_config(station)


# ---------------------------------------------------------------- one file for the whole gateway

DOC = __import__("pathlib").Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def _doc_example() -> str:
    text = DOC.read_text()
    start = text.index("```toml", text.index("## Example")) + len("```toml")
    return text[start:text.index("```", start)]


def test_the_complete_example_of_the_documentation_loads(tmp_path):
    write_secret_file(tmp_path / "keys" / "board1.key", bytes(range(32)))
    f = tmp_path / "station.toml"
    f.write_text(_doc_example())
    cfg = load_station_config(f)
    assert cfg.gateway_tables == ["framer", "outbox", "keys", "uplink"]
    st = cfg.settings
    assert st.get("framer", "frame_seconds") == 10 and st.get("framer", "max_clock_offset_s") == 86400
    assert st.outbox["path"] == "/var/lib/ims-station/outbox.sqlite" and st.get("outbox", "synchronous") == "FULL"
    assert st.keys["keystore"] == str(tmp_path / "keystore")            # relative to the station file
    assert "station_key_id" not in st.keys and "channel_key_ids" not in st.keys   # keys rotate by time
    assert cfg.ports[0].channels == {0: "IM.XS01.00.SHZ", 1: "IM.XS01.00.SHN", 2: "IM.XS01.00.SHE"}
    b1, b2 = st.brokers
    assert (b1.host, b1.port, b1.tls_ca, b1.tls_key) == ("broker1.example.org", 8883, str(tmp_path / "ca.crt"),
                                                        str(tmp_path / "XS01.key"))
    assert (b2.username, b2.password_file) == ("XS01", str(tmp_path / "mqtt.password"))
    assert st.get("uplink", "ack_timeout_s") == 300 and st.get("uplink", "max_unacked") == 2000


def test_every_key_of_the_schema_is_documented_with_its_default():
    from ims_station.edge.config import SCHEMA
    from ims_station.edge.uplink_config import DEFAULTS

    text = DOC.read_text()

    def keys(schema, path=""):
        for k, sub in schema.get("properties", {}).items():
            yield k
            if sub.get("type") == "object":
                yield from keys(sub)
            if sub.get("type") == "array":
                yield from keys(sub.get("items", {}))

    tables = SCHEMA["properties"]
    assert all(f"`[{t}]`" in text or f"`[[{t}]]`" in text for t in tables)
    missing = sorted({k for t in tables.values() for k in keys(t.get("items", t)) if f"`{k}`" not in text})
    assert missing == [], f"keys not in docs/configuration.md: {missing}"
    for table, defaults in DEFAULTS.items():
        for key, value in defaults.items():
            row = next(line for line in text.splitlines() if line.startswith(f"| `{key}` |"))
            if value is not None:
                shown = row.split("|")[3].strip()
                assert shown.strip("`\"") == (f"{value:g}" if isinstance(value, float) else str(value)), (key, row)


GATEWAY_ERRORS = [
    ("[framer]\nframe_seconds = 0\n", "framer.frame_seconds", "minimum"),
    ("[framer]\nframe_second = 10\n", "framer.frame_second", "unknown key"),
    ("[outbox]\nsynchronous = \"OFF\"\n", "outbox.synchronous", "OFF"),
    ("[keys]\nstation_key_id = 1\n", "keys.keystore", "no keystore"),
    ("[uplink]\nprefix = \"ims\"\n", "uplink.brokers", "required"),
    ("[uplink]\n[[uplink.brokers]]\nhost = \"b\"\nport = 70000\n", "uplink.brokers[0].port", "maximum"),
    ("[uplink]\n[[uplink.brokers]]\nhost = \"b\"\ntls_cert = \"c.pem\"\n", "uplink.brokers[0].tls_cert", "together"),
    ("[uplink]\n[[uplink.brokers]]\nhost = \"b\"\npassword_file = \"p\"\n", "uplink.brokers[0].username",
     "without username"),
    ("[mqtt]\nhost = \"b\"\n", "mqtt", "unknown"),
]


@pytest.mark.parametrize("extra, key, reason", GATEWAY_ERRORS)
def test_gateway_table_errors_name_file_key_and_reason(station, extra, key, reason):
    station.write_text(GOOD + "\n" + extra)
    with pytest.raises(ConfigError) as ei:
        load_station_config(station)
    err = ei.value
    assert (err.file, err.key) == (str(station), key) and reason in err.reason, str(err)
