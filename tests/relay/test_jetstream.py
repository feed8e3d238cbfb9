"""The relay's clustered input (relay/jetstream.py) against a real nats-server on free ports.

One node is enough for what is checked here (the 3-node cluster with kills is
tests/integration/test_cluster.py): a station publishing over the server's MQTT gateway reaches the
relay through the work-queue stream, the acknack comes back to the station's MQTT subscription; a
consumer that dies holding unacknowledged messages loses none (the relay gets them after
``ack_wait_s``); two relays share one consumer; a store failure acknowledges nothing; the config
table's errors name file and key.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from pathlib import Path

import pytest

from ims_station import cd11
from ims_station.errors import ConfigError
from ims_station.relay.archive import FileArchive
from ims_station.relay.errors import RelayError
from ims_station.relay.jetstream import JetStreamConfig, JetStreamRelay, stream_subjects, subject_of, topic_of
from ims_station.relay.state import SqliteStateStore

from ..conftest import need_nats_server

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools" / "cluster"))
from natscluster import NatsCluster  # noqa: E402

BASE = 8640 * 8700
TIMEOUT = 15.0


@pytest.fixture
def nats1(tmp_path):
    need_nats_server()
    with NatsCluster(tmp_path / "nats", nodes_n=1) as c:
        yield c


class Seen:
    def __init__(self) -> None:
        self.items: list = []
        self.cond = threading.Condition()

    def add(self, outs) -> None:
        with self.cond:
            self.items.extend(outs)
            self.cond.notify_all()

    def wait(self, pred, timeout: float = TIMEOUT) -> list:
        with self.cond:
            assert self.cond.wait_for(lambda: pred(self.items), timeout), f"timed out; have {self.items!r:.600}"
            return list(self.items)


def make_relay(cluster, keys, data: Path, *, instance="r1", seen=None, archive=None, **kw):
    seen = seen or Seen()
    cfg = JetStreamConfig(servers=tuple(cluster.servers), replicas=1, ack_wait_s=kw.pop("ack_wait_s", 1.0),
                          fetch_wait_s=0.05)
    r = JetStreamRelay(cfg, keys.trust, SqliteStateStore(data / "state.sqlite"),
                       archive or FileArchive(data / "archive", writer=instance), instance=instance,
                       on_outcomes=seen.add, acknack_interval_s=0.5, acknack_min_spacing_s=0.05,
                       max_past_s=None, **kw)
    return r, seen


class MqttStation:
    """A bare MQTT 3.1.1 station on the gateway: publishes frames, collects acknacks."""

    def __init__(self, port: int, station: str = "STA01") -> None:
        import paho.mqtt.client as mqtt

        self.station = station
        self.acknacks = Seen()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-{station}",
                             protocol=mqtt.MQTTv311)
        self.c.on_message = lambda c, u, m: self.acknacks.add([cd11.parse_frame(m.payload)[0]])
        subscribed = threading.Event()
        self.c.on_subscribe = lambda *a: subscribed.set()
        self.c.on_connect = lambda c, *a: c.subscribe(f"ims/{station}/acknack", qos=1)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert subscribed.wait(TIMEOUT)

    def publish(self, payload: bytes) -> None:
        self.c.publish(f"ims/{self.station}/cd11", payload, qos=1).wait_for_publish(TIMEOUT)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def test_subjects_map_the_gateway_topics():
    assert stream_subjects("ims") == ["ims.*.cd11", "ims.*.events", "ims.*.ims20"]
    assert subject_of("ims/STA01/acknack") == "ims.STA01.acknack"
    assert topic_of("net.ims.STA01.cd11") == "net/ims/STA01/cd11"


def test_mqtt_station_to_relay_and_acknack_back(nats1, keys, factory, tmp_path):
    relay, seen = make_relay(nats1, keys, tmp_path)
    with relay:
        assert relay.wait_connected(TIMEOUT)
        sta = MqttStation(nats1.mqtt_ports[0])
        try:
            for s in (0, 1, 3):
                sta.publish(factory.build(BASE + s))
            sta.publish(b"garbage that must not crash anything")
            seen.wait(lambda it: len(it) == 4)
            acks = sta.acknacks.wait(lambda a: any(x.gaps == [(BASE + 2, BASE + 3)] for x in a))
            assert all(a.frame_set == "STA01:0" for a in acks)
        finally:
            sta.close()
        st = relay.stats()
    assert sorted(o.result for o in seen.items) == ["archived"] * 3 + ["malformed"]
    assert st["transport"]["acked"] == 4 and st["transport"]["input"] == "jetstream"
    assert st["transport"]["stream_created"] == 1 and st["acknacks_sent"] >= 1


async def _take_and_die(servers: list[str], n: int) -> int:
    """A consumer of the relays' durable that fetches *n* messages and disconnects without acking."""
    import nats

    nc = await nats.connect(servers=servers)
    psub = await nc.jetstream().pull_subscribe_bind("relay", "IMS")
    got = await psub.fetch(n, timeout=5)
    await nc.close()
    return len(got)


def test_messages_held_by_a_dead_consumer_are_redelivered_to_the_relay(nats1, keys, factory, tmp_path):
    """The takeover rule: what a dying relay fetched and never acknowledged comes back from the
    stream after ack_wait_s, to another relay of the consumer; nothing is lost."""
    relay, seen = make_relay(nats1, keys, tmp_path)
    with relay:
        assert relay.wait_connected(TIMEOUT)
    sta = MqttStation(nats1.mqtt_ports[0])          # the relay is gone: the stream keeps the frames
    try:
        for s in range(5):
            sta.publish(factory.build(BASE + s))
    finally:
        sta.close()
    assert asyncio.run(_take_and_die(nats1.servers, 5)) == 5
    relay, seen = make_relay(nats1, keys, tmp_path, instance="r2")
    with relay:
        seen.wait(lambda it: len(it) == 5)
        st = relay.stats()
    assert [o.result for o in seen.items] == ["archived"] * 5
    assert st["transport"]["redelivered"] == 5


def test_two_relays_share_the_consumer(nats1, keys, factory, tmp_path):
    seen = Seen()
    r1, _ = make_relay(nats1, keys, tmp_path, instance="r1", seen=seen, batch_max=2)
    with r1:
        assert r1.wait_connected(TIMEOUT)
        r2, _ = make_relay(nats1, keys, tmp_path, instance="r2", seen=seen, batch_max=2)
        with r2:
            assert r2.wait_connected(TIMEOUT)
            sta = MqttStation(nats1.mqtt_ports[0])
            try:
                for s in range(40):
                    sta.publish(factory.build(BASE + s))
                seen.wait(lambda it: len(it) == 40)
            finally:
                sta.close()
            a1, a2 = r1.stats()["transport"]["acked"], r2.stats()["transport"]["acked"]
    assert a1 + a2 == 40 and a1 > 0 and a2 > 0, (a1, a2)
    assert sorted(o.sequence for o in seen.items) == list(range(BASE, BASE + 40))


class FailingArchive(FileArchive):
    fail = True

    def commit(self, *a, **kw):
        if self.fail:
            raise RelayError("disk full (test)")
        return super().commit(*a, **kw)


def test_store_failure_acknowledges_nothing_and_the_frame_comes_back(nats1, keys, factory, tmp_path):
    archive = FailingArchive(tmp_path / "archive", writer="r1")
    relay, seen = make_relay(nats1, keys, tmp_path, archive=archive)
    with relay:
        assert relay.wait_connected(TIMEOUT)
        sta = MqttStation(nats1.mqtt_ports[0])
        try:
            sta.publish(factory.build(BASE))
            deadline = time.monotonic() + TIMEOUT
            while relay.stats()["store_errors"] < 1:
                assert time.monotonic() < deadline, relay.stats()
                time.sleep(0.02)
            assert relay.stats()["transport"].get("acked", 0) == 0
            archive.fail = False                      # the disk has room again: redelivered, stored
            seen.wait(lambda it: [o.result for o in it] == ["archived"], timeout=20)
        finally:
            sta.close()


def test_config_errors_name_file_and_key(tmp_path):
    def err(table: dict) -> ConfigError:
        with pytest.raises(ConfigError) as e:
            JetStreamConfig.from_mapping(table, file="relay.toml")
        return e.value

    assert err({}).key == "jetstream.servers"
    assert err({"servers": ["http://x:4222"]}).key == "jetstream.servers[0]"
    assert err({"servers": ["tls://x:4222"]}).key == "jetstream.tls_ca"
    assert err({"servers": ["nats://x:4222"], "username": "relay"}).key == "jetstream.password_file"
    assert err({"servers": ["nats://x:4222"], "tls_cert": "c.pem"}).key == "jetstream.tls_cert"
    cfg = JetStreamConfig.from_mapping({"servers": ["nats://a:4222", "nats://b:4222"], "tls_ca": "ca.pem"},
                                       resolve=lambda p: f"/etc/ims/{p}")
    assert cfg.servers == ("nats://a:4222", "nats://b:4222") and cfg.tls_ca == "/etc/ims/ca.pem"


def test_relay_config_input_jetstream(tmp_path):
    from ims_station.relay.cli import load_config

    conf = tmp_path / "relay.toml"
    conf.write_text('[relay]\ndata_dir = "d"\ntrust_dir = "t"\ninput = "jetstream"\n')
    with pytest.raises(ConfigError) as e:
        load_config(conf)
    assert e.value.key == "jetstream"
    conf.write_text('[relay]\ndata_dir = "d"\ntrust_dir = "t"\n')
    with pytest.raises(ConfigError) as e:
        load_config(conf)
    assert e.value.key == "broker"
    conf.write_text('[relay]\ndata_dir = "d"\ntrust_dir = "t"\ninput = "jetstream"\n'
                    '[jetstream]\nservers = ["nats://127.0.0.1:4222"]\ncreds_file = "relay.creds"\n')
    c = load_config(conf)
    assert c["jetstream"].creds_file == str(tmp_path / "relay.creds") and c["brokers"] == []
