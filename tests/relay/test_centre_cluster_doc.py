"""docs/centre-deployment.md, "Broker cluster", stays true: its nats.conf and accounts.conf run.

The two configuration blocks of the page are taken verbatim, with only host names, ports and paths
replaced for three nodes on 127.0.0.1 and a throw-away CA: the nodes form the cluster over mutual
TLS routes (JetStream elects a meta leader only if they do), the relay (``relay/jetstream.py``)
connects over TLS with the ``relay`` account and consumes a station's frame published over MQTT/TLS
with its own account, the acknack reaches the station, and the per-station permissions refuse a
publication on another station's topic and a subscription to another station's acknacks.
"""

from __future__ import annotations

import re
import secrets
import shutil
import ssl
import sys
import threading
import time
from pathlib import Path

import pytest

from ims_station import cd11
from ims_station.config import write_secret_file
from ims_station.relay.archive import FileArchive
from ims_station.relay.jetstream import JetStreamConfig, JetStreamRelay
from ims_station.relay.state import SqliteStateStore

from ..conftest import need_nats_server
from ..integration.tlsconf import make_ca_and_server_cert

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "centre-deployment.md"
sys.path.insert(0, str(ROOT / "tools" / "cluster"))
from natscluster import NatsCluster  # noqa: E402

BASE = 8640 * 8700
TIMEOUT = 20.0


def doc_block(name: str) -> str:
    m = re.search(rf"<!-- {re.escape(name)} begin -->\s*```[a-z]*\n(.*?)```\s*<!-- {re.escape(name)} end -->",
                  DOC.read_text(), re.S)
    assert m, f"{DOC}: no {name} block"
    return m.group(1)


class DocCluster(NatsCluster):
    """Three nodes running the page's configuration on 127.0.0.1."""

    etc: Path

    def config(self, node) -> str:
        conf = doc_block("nats.conf")
        for old, new in (("server_name: nats1", f"server_name: {node.name}"),
                         ("0.0.0.0:4222", f"127.0.0.1:{node.client_port}"),
                         ("127.0.0.1:8222", f"127.0.0.1:{node.http_port}"),
                         ("0.0.0.0:6222", f"127.0.0.1:{node.cluster_port}"),
                         ("0.0.0.0:8883", f"127.0.0.1:{node.mqtt_port}"),
                         ('"/var/lib/nats"', f'"{node.dir / "js"}"'),
                         ("/etc/nats/", f"{self.etc}/")):
            assert old in conf, old
            conf = conf.replace(old, new)
        for k, m in enumerate(self.nodes):
            conf = conf.replace(f"nats-route://nats{k + 1}.example.org:6222", f"nats-route://127.0.0.1:{m.cluster_port}")
        assert "example.org" not in conf
        # include is relative to the configuration's folder (/etc/nats/ in production)
        shutil.copy2(self.etc / "accounts.conf", node.dir / "accounts.conf")
        return conf


@pytest.fixture
def doc_cluster(tmp_path):
    need_nats_server()
    etc = tmp_path / "etc"
    (etc / "tls").mkdir(parents=True)
    ca, crt, key = make_ca_and_server_cert(etc / "tls", client_auth=True)
    shutil.move(crt, etc / "tls" / "node.crt")
    shutil.move(key, etc / "tls" / "node.key")
    passwords = {u: secrets.token_hex(12) for u in ("RELAY", "STA01", "STA02")}
    accounts = doc_block("accounts.conf")
    for u, pw in passwords.items():
        assert f"{u}_PASSWORD" in accounts
        accounts = accounts.replace(f"{u}_PASSWORD", pw)
    write_secret_file(etc / "accounts.conf", accounts.encode())
    DocCluster.etc = etc
    with DocCluster(tmp_path / "nats") as c:
        yield c, etc, passwords


class TlsStation:
    def __init__(self, port: int, ca: Path, user: str, password: str) -> None:
        import paho.mqtt.client as mqtt

        self.frames: list = []
        self.granted: list = []
        self.cond = threading.Condition()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"ims-{user}", protocol=mqtt.MQTTv311)
        self.c.tls_set(ca_certs=str(ca), cert_reqs=ssl.CERT_REQUIRED)
        self.c.username_pw_set(user, password)
        self.c.on_message = self._on_message
        self.c.on_subscribe = self._on_subscribe
        connected = threading.Event()
        self.c.on_connect = lambda *a: connected.set()
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert connected.wait(TIMEOUT)

    def _on_message(self, c, u, m) -> None:
        with self.cond:
            self.frames.append(cd11.parse_frame(m.payload)[0])
            self.cond.notify_all()

    def _on_subscribe(self, c, u, mid, reason_codes, props=None) -> None:
        with self.cond:
            self.granted += [not rc.is_failure for rc in reason_codes]
            self.cond.notify_all()

    def subscribe(self, topic: str) -> bool:
        with self.cond:
            n = len(self.granted)
            self.c.subscribe(topic, qos=1)
            assert self.cond.wait_for(lambda: len(self.granted) > n, TIMEOUT)
            return self.granted[n]

    def wait(self, pred) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: pred(self.frames), TIMEOUT), self.frames

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def test_the_documented_cluster_runs_with_tls_routes_and_per_station_permissions(doc_cluster, keys, factory,
                                                                                   tmp_path):
    cluster, etc, pw = doc_cluster              # started: the routes' mutual TLS works
    write_secret_file(tmp_path / "relay.password", pw["RELAY"].encode())
    cfg = JetStreamConfig.from_mapping({"servers": [f"tls://127.0.0.1:{n.client_port}" for n in cluster.nodes],
                                        "tls_ca": str(etc / "tls" / "ca.crt"), "username": "relay",
                                        "password_file": str(tmp_path / "relay.password"), "ack_wait_s": 2.0,
                                        "fetch_wait_s": 0.05}, file="test")
    seen: list = []
    got = threading.Condition()

    def on_outcomes(outs):
        with got:
            seen.extend(outs)
            got.notify_all()

    relay = JetStreamRelay(cfg, keys.trust, SqliteStateStore(tmp_path / "state.sqlite"),
                           FileArchive(tmp_path / "archive", writer="r1"), on_outcomes=on_outcomes,
                           acknack_interval_s=0.5, acknack_min_spacing_s=0.05, max_past_s=None)
    sta1 = sta2 = None
    with relay:
        assert relay.wait_connected(TIMEOUT), relay.stats()
        sta1 = TlsStation(cluster.mqtt_ports[0], etc / "tls" / "ca.crt", "STA01", pw["STA01"])
        sta2 = TlsStation(cluster.mqtt_ports[1], etc / "tls" / "ca.crt", "STA02", pw["STA02"])
        try:
            assert sta1.subscribe("ims/STA01/acknack")
            assert not sta2.subscribe("ims/STA01/acknack")          # another station's acknacks: refused
            # The gateway's delivery subjects ($MQTT.sub.>, which the station accounts need for
            # their QoS 1 subscriptions) are not reachable as MQTT topics.
            assert not sta2.subscribe("$MQTT/sub/#") and not sta2.subscribe("#")
            # Another station's topic: refused by the node (never reaches the stream), then its own.
            sta1.c.publish("ims/STA02/cd11", factory.build(BASE), qos=1)
            sta1.c.publish("ims/STA01/cd11", factory.build(BASE + 1), qos=1).wait_for_publish(TIMEOUT)
            with got:
                assert got.wait_for(lambda: len(seen) >= 1, TIMEOUT)
            sta1.wait(lambda fs: any(f.frame_set == "STA01:0" and f.highest == BASE + 1 for f in fs))
            time.sleep(0.5)                                          # room for a wrong extra message
            assert [(o.result, o.sequence) for o in seen] == [("archived", BASE + 1)]
            assert sta2.frames == []
        finally:
            for s in (sta1, sta2):
                if s is not None:
                    s.close()
