"""``ims-station edge run --config station.toml``: the full gateway from one station file.

A simulated board (``sim://``, the HIL in-process: simulated time runs as fast as the gateway reads)
-> framer -> outbox -> uplink -> a real Mosquitto started by the test.
"""

from __future__ import annotations

import json
import queue
import socket
import threading

import pytest

from ims_station import cd11
from ims_station.broker import MosquittoBroker
from ims_station.cli import main
from ims_station.config import write_secret_file
from ims_station.errors import ConfigError
from tests.conftest import need_mosquitto
from tests.integration.conftest import Collector

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


def subscriber(host: str, port: int, topic: str, timeout: float = 10.0) -> Collector:
    """A client subscribed to *topic*, returned once the broker granted the subscription (SUBACK):
    a message published between the CONNACK and the SUBACK may not reach it."""
    sub = Collector(host, port, client_id="check")
    try:
        sub.connect(timeout)
        try:
            rcs = sub.subscribe(topic, qos=1, timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no SUBACK for {topic} within {timeout} s") from None
        assert rcs and not any(r.is_failure for r in rcs), f"subscription to {topic} refused: {rcs}"
    except BaseException:
        sub.close()
        raise
    return sub


def test_edge_run_runs_the_full_gateway_from_one_station_file(tmp_path, capsys):
    need_mosquitto()
    with MosquittoBroker(tmp_path / "broker") as broker:
        sub = subscriber(broker.config.host, broker.config.port, "ims/XS01/cd11")
        try:
            cfg = station_file(tmp_path, broker.config.port)
            rc = main(["edge", "run", "--config", str(cfg), "--seconds", "3", "--json"])
        finally:
            sub.close()
    got = []
    while not sub.empty():
        got.append(cd11.parse_frame(sub.get()[1])[0].sequence)
    assert rc == 0
    doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    framer, outbox, uplink = doc["gateway"]["framer"], doc["outbox"], doc["uplink"]
    # Simulated minutes in wall seconds: full frames, signed by nobody (no [keys]), none partial.
    # At least one: how many the 3 wall seconds give depends on the machine's load.
    assert framer["frames"] >= 1 and framer["partial_frames"] == 0 and framer["implausible_time_samples"] == 0
    assert sorted(framer["channels"]) == ["IM.XS01.00.BHE", "IM.XS01.00.BHN", "IM.XS01.00.BHZ", "IM.XS01.10.BDF"]
    # Every frame is on disk (no relay acknowledged any), and went out over MQTT.
    assert outbox["frames"] == framer["frames"] and uplink["published"] >= 1 and uplink["connects"] >= 1
    assert got and set(got) <= set(range(framer["committed_seq"] - framer["frames"] + 1,
                                         framer["committed_seq"] + 1))
    # The board was acknowledged from the persisted ACK point.
    assert doc["ports"][0]["link"]["acks_sent"] >= 1 and doc["gateway"]["acks"] >= 1


class _SilentBroker:
    """Answers CONNECT with a CONNACK, then SUBSCRIBE with *suback* (None: never)."""

    def __init__(self, suback: int | None) -> None:
        self.suback = suback
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            conn.settimeout(15)
            try:
                while True:
                    head = conn.recv(2)
                    if len(head) < 2:
                        return
                    body = conn.recv(head[1]) if head[1] else b""   # small packets: 1-byte length
                    if head[0] >> 4 == 1:                              # CONNECT
                        conn.sendall(b"\x20\x02\x00\x00")
                    elif head[0] >> 4 == 8 and self.suback is not None:  # SUBSCRIBE: packet id first
                        conn.sendall(b"\x90\x03" + body[:2] + bytes([self.suback]))
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("suback, error", [(None, "no SUBACK"), (0x80, "refused")])
def test_the_subscriber_is_ready_at_the_suback_not_the_connack(suback, error):
    """The test above counts on its subscriber seeing the gateway's frames: it may only start the
    gateway once the subscription is granted.  A broker that sends the CONNACK but no SUBACK, or a
    failed one, must not count as ready (it did when readiness was taken at the CONNACK)."""
    broker = _SilentBroker(suback)
    try:
        with pytest.raises(AssertionError, match=error):
            subscriber("127.0.0.1", broker.port, "ims/XS01/cd11", timeout=1.0)
    finally:
        broker.close()


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
