"""The relay's AMQP input (relay/amqp.py) against a real RabbitMQ node with its MQTT plugin.

One node for the module (``tools/cluster/rabbitcluster.py``).  A RabbitMQ node takes 15-30 s to
start on the 2-core machine, more than the whole suite can spend on it, so this module and the
3-node cluster test run with ``IMS_CLUSTER_LONG=1`` only (docs/centre-cluster.md): a station publishing over MQTT reaches the relay through the quorum
queue and gets its acknack back over MQTT; deliveries a dead consumer held come back to the relay;
two relays share the queue; a store failure acknowledges nothing; config errors name file and key.
Each test has its own queue.
"""

from __future__ import annotations

import itertools
import sys
import threading
import time
from pathlib import Path

import pytest

from ims_station import cd11
from ims_station.config import write_secret_file
from ims_station.errors import ConfigError
from ims_station.relay.amqp import AmqpConfig, AmqpRelay, routing_keys
from ims_station.relay.archive import FileArchive
from ims_station.relay.errors import RelayError
from ims_station.relay.state import SqliteStateStore

from ..conftest import missing_prerequisite, need_module

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools" / "cluster"))
from rabbitcluster import BIN, RabbitCluster  # noqa: E402

BASE = 8640 * 8700
TIMEOUT = 20.0
_queue_ids = itertools.count(1)


@pytest.fixture(scope="module")
def rabbit(tmp_path_factory):
    if not (BIN / "rabbitmq-server").exists():
        missing_prerequisite("rabbitmq-server", "apt-get install rabbitmq-server (./run installs it)")
    need_module("pika")
    c = RabbitCluster(tmp_path_factory.mktemp("rabbit"), nodes_n=1).start()
    pw = tmp_path_factory.mktemp("rabbit-secret") / "password"
    write_secret_file(pw, c.password.encode())
    c.password_file = pw
    yield c
    c.stop()


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


def config(rabbit, queue: str) -> AmqpConfig:
    return AmqpConfig.from_mapping({"servers": rabbit.servers, "username": rabbit.user,
                                    "password_file": str(rabbit.password_file), "queue": queue,
                                    "fetch_wait_s": 0.05})


def make_relay(rabbit, keys, data: Path, queue: str, *, instance="r1", seen=None, archive=None, **kw):
    seen = seen or Seen()
    r = AmqpRelay(config(rabbit, queue), keys.trust, SqliteStateStore(data / "state.sqlite"),
                  archive or FileArchive(data / "archive", writer=instance), instance=instance,
                  on_outcomes=seen.add, acknack_interval_s=0.5, acknack_min_spacing_s=0.05, max_past_s=None,
                  backoff_s=0.2, **kw)
    return r, seen


@pytest.fixture
def queue(rabbit):
    import pika

    name = f"relay-test-{next(_queue_ids)}"
    yield name
    conn = pika.BlockingConnection(pika.ConnectionParameters(
        "127.0.0.1", rabbit.nodes[0].amqp_port, credentials=pika.PlainCredentials(rabbit.user, rabbit.password)))
    conn.channel().queue_delete(name)
    conn.close()


class MqttStation:
    def __init__(self, rabbit, station: str = "STA01") -> None:
        import paho.mqtt.client as mqtt

        self.station = station
        self.acknacks = Seen()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-{station}-{time.monotonic_ns()}",
                             protocol=mqtt.MQTTv311)
        self.c.username_pw_set(rabbit.user, rabbit.password)
        self.c.on_message = lambda c, u, m: self.acknacks.add([cd11.parse_frame(m.payload)[0]])
        subscribed = threading.Event()
        self.c.on_subscribe = lambda *a: subscribed.set()
        self.c.on_connect = lambda c, *a: c.subscribe(f"ims/{station}/acknack", qos=1)
        self.c.connect("127.0.0.1", rabbit.mqtt_ports[0])
        self.c.loop_start()
        assert subscribed.wait(TIMEOUT)

    def publish(self, payload: bytes) -> None:
        self.c.publish(f"ims/{self.station}/cd11", payload, qos=1).wait_for_publish(TIMEOUT)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def test_routing_keys_are_the_mqtt_topics_dotted():
    assert routing_keys("ims") == ["ims.*.cd11", "ims.*.events", "ims.*.ims20"]


@pytest.mark.opt_in("IMS_CLUSTER_LONG")     # RabbitMQ takes 15-30 s to start here (docs/centre-cluster.md)
def test_mqtt_station_to_relay_and_acknack_back(rabbit, queue, keys, factory, tmp_path):
    relay, seen = make_relay(rabbit, keys, tmp_path, queue)
    with relay:
        assert relay.wait_connected(TIMEOUT), relay.stats()
        sta = MqttStation(rabbit)
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
    assert st["transport"]["acked"] == 4 and st["transport"]["input"] == "amqp"


@pytest.mark.opt_in("IMS_CLUSTER_LONG")     # RabbitMQ takes 15-30 s to start here (docs/centre-cluster.md)
def test_deliveries_held_by_a_dead_consumer_come_back_to_the_relay(rabbit, queue, keys, factory, tmp_path):
    import pika

    relay, seen = make_relay(rabbit, keys, tmp_path, queue)
    with relay:                                   # declares and binds the queue
        assert relay.wait_connected(TIMEOUT)
    sta = MqttStation(rabbit)
    try:
        for s in range(5):
            sta.publish(factory.build(BASE + s))
    finally:
        sta.close()
    conn = pika.BlockingConnection(pika.ConnectionParameters(
        "127.0.0.1", rabbit.nodes[0].amqp_port, credentials=pika.PlainCredentials(rabbit.user, rabbit.password)))
    ch = conn.channel()
    held = [m for m, _p, _b in itertools.islice(ch.consume(queue, inactivity_timeout=5), 5) if m is not None]
    assert len(held) == 5
    conn.close()                                  # dies without acknowledging
    relay, seen = make_relay(rabbit, keys, tmp_path, queue, instance="r2")
    with relay:
        seen.wait(lambda it: len(it) == 5)
        st = relay.stats()
    assert [o.result for o in seen.items] == ["archived"] * 5
    assert st["transport"]["redelivered"] == 5


@pytest.mark.opt_in("IMS_CLUSTER_LONG")     # RabbitMQ takes 15-30 s to start here (docs/centre-cluster.md)
def test_two_relays_share_the_queue(rabbit, queue, keys, factory, tmp_path):
    seen = Seen()
    r1, _ = make_relay(rabbit, keys, tmp_path, queue, instance="r1", seen=seen, batch_max=2)
    r2, _ = make_relay(rabbit, keys, tmp_path, queue, instance="r2", seen=seen, batch_max=2)
    r1.config = r2.config = AmqpConfig(**{**r1.config.__dict__, "prefetch": 2})
    with r1, r2:
        assert r1.wait_connected(TIMEOUT) and r2.wait_connected(TIMEOUT)
        sta = MqttStation(rabbit)
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


@pytest.mark.opt_in("IMS_CLUSTER_LONG")     # RabbitMQ takes 15-30 s to start here (docs/centre-cluster.md)
def test_store_failure_acknowledges_nothing_and_the_frame_comes_back(rabbit, queue, keys, factory, tmp_path):
    archive = FailingArchive(tmp_path / "archive", writer="r1")
    relay, seen = make_relay(rabbit, keys, tmp_path, queue, archive=archive)
    with relay:
        assert relay.wait_connected(TIMEOUT)
        sta = MqttStation(rabbit)
        try:
            sta.publish(factory.build(BASE))
            deadline = time.monotonic() + TIMEOUT
            while relay.stats()["store_errors"] < 1:
                assert time.monotonic() < deadline, relay.stats()
                time.sleep(0.02)
            assert relay.stats()["transport"].get("acked", 0) == 0
            archive.fail = False
            seen.wait(lambda it: [o.result for o in it] == ["archived"])
        finally:
            sta.close()
    assert relay.stats()["transport"]["nacked"] >= 1


def test_config_errors_name_file_and_key():
    def err(table: dict) -> ConfigError:
        with pytest.raises(ConfigError) as e:
            AmqpConfig.from_mapping(table, file="relay.toml")
        return e.value

    assert err({}).key == "amqp.servers"
    assert err({"servers": ["nats://x:4222"]}).key == "amqp.servers[0]"
    assert err({"servers": ["amqp://u:p@x"]}).key == "amqp.servers[0]"          # no credentials in URLs
    assert err({"servers": ["amqp://x"]}).key == "amqp.username"               # no default credentials
    assert err({"servers": ["amqps://x"], "username": "r", "password_file": "p"}).key == "amqp.tls_ca"
    cfg = AmqpConfig.from_mapping({"servers": ["amqps://a:5671"], "tls_ca": "ca.pem", "username": "relay",
                                   "password_file": "pw"}, resolve=lambda p: f"/etc/ims/{p}")
    assert cfg.tls_ca == "/etc/ims/ca.pem" and cfg.password_file == "/etc/ims/pw"
