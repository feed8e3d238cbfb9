"""The throw-away brokers behave as the edge, the relay and the fault tests assume."""

from __future__ import annotations

import queue
import uuid

import paho.mqtt.client as mqtt
import pytest

from ims_station.broker import BrokerConfig, BrokerError, MosquittoBroker, free_port, start_broker
from ims_station.errors import ConfigError, KeyFileError

from .conftest import Collector, wait_until


def publish(broker, topic, payload, *, retain=False):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"p-{uuid.uuid4().hex[:8]}")
    broker.config.apply(c)
    c.connect(broker.host, broker.port)
    c.loop_start()
    info = c.publish(topic, payload, qos=1, retain=retain)
    info.wait_for_publish(10)   # PUBACK received: the broker has taken the message
    assert info.is_published()
    c.disconnect()
    c.loop_stop()


def test_mosquitto_start_stop_kill_restart_same_port(mosquitto):
    port = mosquitto.port
    assert mosquitto.running
    mosquitto.stop()
    assert not mosquitto.running
    mosquitto.start()
    assert mosquitto.running and mosquitto.port == port
    pid = mosquitto.proc.pid
    mosquitto.kill()
    assert not mosquitto.running
    mosquitto.restart()
    assert mosquitto.running and mosquitto.port == port and mosquitto.proc.pid != pid
    c = Collector(mosquitto.host, port)
    _, rc = c.connect()
    assert rc == 0
    c.close()


@pytest.mark.parametrize("how", ["restart", "kill-after-save"])
def test_mosquitto_keeps_queued_qos1_message_of_a_persistent_session(tmp_path, how):
    with MosquittoBroker(tmp_path / "b", autosave_interval=1) as b:
        sub = Collector(b.host, b.port, client_id="relay-1", clean=False)
        sub.connect()
        sub.subscribe("ims/STA1/cd11", 1)
        sub.close()                                     # offline: the broker queues for the session
        publish(b, "ims/STA1/cd11", b"frame-1")
        if how == "restart":
            b.restart()                                 # SIGTERM: Mosquitto saves its database
        else:
            # A crash loses what was not autosaved: wait for the autosave to be written (the log
            # says so), then SIGKILL.
            db = b.dir / "mosquitto.db"
            wait_until(lambda: db.exists() and b"frame-1" in db.read_bytes(), what="mosquitto autosave")
            b.kill()
            b.start()
        sub2 = Collector(b.host, b.port, client_id="relay-1", clean=False)
        flags, rc = sub2.connect()
        assert rc == 0 and flags.session_present
        assert sub2.get() == ("ims/STA1/cd11", b"frame-1", False)
        sub2.close()


def test_mosquitto_sigkill_before_autosave_loses_the_queue(tmp_path):
    """Why the outbox exists: a broker crash between autosaves drops what it had acknowledged."""
    with MosquittoBroker(tmp_path / "b", autosave_interval=3600) as b:
        sub = Collector(b.host, b.port, client_id="relay-1", clean=False)
        sub.connect()
        sub.subscribe("ims/STA1/cd11", 1)
        sub.close()
        publish(b, "ims/STA1/cd11", b"frame-1")
        b.kill()
        b.start()
        sub2 = Collector(b.host, b.port, client_id="relay-1", clean=False)
        flags, rc = sub2.connect()
        assert rc == 0 and not flags.session_present
        with pytest.raises(queue.Empty):
            sub2.get(timeout=0.5)
        sub2.close()


def _shared_subscription_works(broker) -> bool:
    sub = Collector(broker.host, broker.port, username=broker.config.username)
    sub.connect()
    rcs = sub.subscribe("$share/relay/ims/+/cd11", 1)
    publish(broker, "ims/STA1/cd11", b"x")
    publish(broker, "$share/relay/ims/STA1/cd11", b"y")  # a broker without $share matches this literally
    try:
        topic, payload, _ = sub.get(timeout=2)
    except queue.Empty:
        return False
    finally:
        sub.close()
    assert not any(getattr(rc, "is_failure", False) for rc in rcs)
    return payload == b"x"


def test_mosquitto_capabilities_are_true(mosquitto):
    assert mosquitto.caps.shared_subscriptions is _shared_subscription_works(mosquitto) is True
    c = Collector(mosquitto.host, mosquitto.port, protocol=mqtt.MQTTv5)
    _, rc = c.connect()
    assert rc == 0 and mosquitto.caps.mqtt5
    c.close()


def test_embedded_broker_qos1_persistent_session_and_retained(embedded):
    user = embedded.config.username
    sub = Collector(embedded.host, embedded.port, client_id="relay-1", clean=False, username=user)
    sub.connect()
    sub.subscribe("ims/+/cd11", 1)
    sub.close()
    publish(embedded, "ims/STA1/cd11", b"frame-1")
    publish(embedded, "ims/STA1/status", b'{"state": "online"}', retain=True)
    sub2 = Collector(embedded.host, embedded.port, client_id="relay-1", clean=False, username=user)
    flags, rc = sub2.connect()
    assert rc == 0 and flags.session_present
    topic, payload, _retain = sub2.get()   # amqtt sets the retain flag on queued messages
    assert (topic, payload) == ("ims/STA1/cd11", b"frame-1")
    sub2.close()
    late = Collector(embedded.host, embedded.port, username=user)
    late.connect()
    late.subscribe("ims/STA1/status", 1)
    assert late.get() == ("ims/STA1/status", b'{"state": "online"}', True)
    late.close()


def test_embedded_capability_flags_are_true(embedded):
    assert embedded.caps.shared_subscriptions is _shared_subscription_works(embedded) is False
    assert not embedded.caps.mqtt5 and not embedded.caps.survives_restart
    embedded.restart()
    user = embedded.config.username
    c = Collector(embedded.host, embedded.port, client_id="relay-1", clean=False, username=user)
    c.connect()
    c.subscribe("ims/+/cd11", 1)
    c.close()
    publish(embedded, "ims/STA1/cd11", b"frame-1")
    embedded.restart()
    c2 = Collector(embedded.host, embedded.port, client_id="relay-1", clean=False, username=user)
    flags, _ = c2.connect()
    assert not flags.session_present   # nothing survives: the outbox and acknack must cover it
    c2.close()


def test_start_broker_prefers_mosquitto_and_falls_back(tmp_path):
    with start_broker("mosquitto", tmp_path / "m") as m:
        assert m.caps.name == "mosquitto"
    with start_broker("embedded", tmp_path / "e") as e:
        assert e.caps.name == "amqtt"
    with pytest.raises(ValueError):
        start_broker("rabbit")


def test_broker_that_cannot_listen_reports_its_log(tmp_path):
    with socket_held() as port:
        b = MosquittoBroker(tmp_path / "b", port=port)
        with pytest.raises(BrokerError, match="exited|not listening"):
            b.start()
        assert not b.running


class socket_held:
    """Hold a listening socket on a port so a broker cannot bind it."""

    def __enter__(self):
        import socket

        self.s = socket.socket()
        self.s.bind(("127.0.0.1", 0))
        self.s.listen()
        return self.s.getsockname()[1]

    def __exit__(self, *exc):
        self.s.close()


def test_broker_config_from_toml_table_names_file_and_key(tmp_path):
    cfg = BrokerConfig.from_mapping({"host": "broker.example", "port": 8883, "tls_ca": "ca.pem",
                                     "username": "STA1", "password_file": "pw"}, file="sta.toml")
    assert cfg.tls and cfg.port == 8883 and cfg.client_id("STA1") == "ims-STA1"
    with pytest.raises(ConfigError, match=r"sta.toml: broker.prot: unknown key"):
        BrokerConfig.from_mapping({"prot": 1}, file="sta.toml")
    with pytest.raises(ConfigError, match=r"broker.port: must be an integer"):
        BrokerConfig.from_mapping({"port": "1883"}, file="sta.toml")
    with pytest.raises(ConfigError, match=r"broker.port: 70000 is not a TCP port"):
        BrokerConfig.from_mapping({"port": 70000}, file="sta.toml")
    with pytest.raises(ConfigError, match=r"tls_cert and tls_key go together"):
        BrokerConfig.from_mapping({"tls_ca": "ca", "tls_cert": "c"}, file="sta.toml")
    with pytest.raises(ConfigError, match=r"password_file given without username"):
        BrokerConfig.from_mapping({"password_file": "pw"}, file="sta.toml")


def test_password_file_must_be_private(tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    pw.chmod(0o644)
    cfg = BrokerConfig(username="STA1", password_file=str(pw))
    with pytest.raises(KeyFileError, match="too open"):
        cfg.password()
    pw.chmod(0o600)
    assert cfg.password() == "s3cret"
    assert BrokerConfig().password() is None
