"""Must-show 6: the documented Mosquitto configuration (docs/mosquitto/) gives TLS, per-station
credentials and an ACL that confines each station to its own topics -- run for real."""

from __future__ import annotations

import queue
import ssl

import paho.mqtt.client as mqtt
import pytest

from .conftest import Collector
from .tlsconf import start_secured_broker

pytestmark = pytest.mark.usefixtures("mosquitto_installed")     # tests/conftest.py: skip, or fail in CI


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    sb = start_secured_broker(tmp_path_factory.mktemp("secured"), ["STA1", "STA2", "relay"])
    yield sb
    sb.broker.close()


def client(sb, user, password=None, **kw) -> Collector:
    return Collector("127.0.0.1", sb.port, username=user,
                     password=password if password is not None else sb.passwords[user], tls_ca=sb.ca, **kw)


def test_tls_connect_with_station_password(secured):
    c = client(secured, "STA1")
    _, rc = c.connect()
    assert rc == 0
    assert c.client.socket().version() in ("TLSv1.2", "TLSv1.3")
    c.close()


def test_wrong_password_and_unknown_user_refused(secured):
    for user, pw in (("STA1", "not-the-password"), ("STA9", "whatever"), ("STA1", "")):
        c = Collector("127.0.0.1", secured.port, username=user, password=pw, tls_ca=secured.ca)
        _, rc = c.connect()
        assert rc.is_failure and rc.value in (4, 5, 134, 135), (user, rc)  # bad credentials / not authorised
        c.close()


def test_plain_tcp_and_untrusted_server_refused(secured, tmp_path):
    import socket

    # MQTT without TLS on the TLS port: the broker never answers with a CONNACK.
    with socket.create_connection(("127.0.0.1", secured.port), timeout=2) as s:
        s.sendall(bytes([0x10, 21, 0, 4]) + b"MQTT" + bytes([4, 0x02, 0, 5, 0, 9]) + b"ims-probe")
        try:
            data = s.recv(4)
        except (TimeoutError, ConnectionResetError):
            data = b""
        assert not data.startswith(b"\x20")
    # A client that trusts another CA refuses the broker's certificate.
    from .tlsconf import make_ca_and_server_cert

    other_ca, _, _ = make_ca_and_server_cert(tmp_path)
    c = Collector("127.0.0.1", secured.port, username="STA1", password=secured.passwords["STA1"], tls_ca=other_ca)
    with pytest.raises(ssl.SSLCertVerificationError):
        c.client.connect("127.0.0.1", secured.port)


def test_station_cannot_publish_or_read_another_stations_topics(secured):
    relay = client(secured, "relay")
    relay.connect()
    relay.subscribe("$share/relay/ims/+/cd11", 1)       # the relay's shared subscriptions pass the ACL
    relay.subscribe("$share/relay/ims/+/events", 1)
    sta1 = client(secured, "STA1")
    sta1.connect()
    for topic, payload in (("ims/STA2/cd11", b"forged by STA1"), ("ims/STA2/events", b"forged event"),
                           ("ims/STA1/acknack", b"STA1 acking itself"), ("ims/STA1/events", b"STA1 own event"),
                           ("ims/STA1/cd11", b"STA1 own frame")):
        sta1.client.publish(topic, payload, qos=1).wait_for_publish(10)
    # Mosquitto handles one client's messages in order: once the allowed ones arrive, the forged
    # ones would have arrived before them had the broker let them through.
    assert relay.get() == ("ims/STA1/events", b"STA1 own event", False)
    assert relay.get() == ("ims/STA1/cd11", b"STA1 own frame", False)
    assert relay.empty()

    # STA1 may not read STA2's acknacks: the subscription is refused or never delivers.
    spy = client(secured, "STA1", client_id="STA1-spy")
    spy.connect()
    rcs = spy.subscribe("ims/STA2/acknack", 1)
    spy.subscribe("ims/STA1/acknack", 1)
    relay.client.publish("ims/STA2/acknack", b"for STA2", qos=1).wait_for_publish(10)
    relay.client.publish("ims/STA1/acknack", b"for STA1", qos=1).wait_for_publish(10)
    assert spy.get() == ("ims/STA1/acknack", b"for STA1", False)
    assert spy.empty(), rcs
    for c in (relay, sta1, spy):
        c.close()


def test_station_last_will_allowed_on_own_status_only(secured):
    watcher = client(secured, "relay")
    watcher.connect()
    watcher.subscribe("ims/+/status", 1)
    import paho.mqtt.client as m

    sta2 = m.Client(m.CallbackAPIVersion.VERSION2, client_id="STA2-will")
    sta2.username_pw_set("STA2", secured.passwords["STA2"])
    sta2.tls_set(ca_certs=str(secured.ca))
    sta2.will_set("ims/STA2/status", b'{"state": "offline"}', qos=1, retain=True)
    sta2.connect("127.0.0.1", secured.port)
    sta2.loop_start()
    sta2.publish("ims/STA2/status", b'{"state": "online"}', qos=1, retain=True).wait_for_publish(10)
    assert watcher.get()[:2] == ("ims/STA2/status", b'{"state": "online"}')
    sta2.loop_stop()
    sta2.socket().close()          # connection lost without DISCONNECT: the broker sends the will
    assert watcher.get()[:2] == ("ims/STA2/status", b'{"state": "offline"}')
    watcher.close()


def test_edge_uplink_over_tls_with_station_credentials(secured, tmp_path):
    """U's uplink (edge/uplink.py) against the documented broker: frames from the outbox arrive at
    the relay account, the relay's acknack (CD-1.1) deletes them from the outbox, status is online."""
    from ims_station import cd11
    from ims_station.edge.logutil import SystemClock
    from ims_station.edge.outbox import Outbox
    from ims_station.edge.uplink import Uplink

    clock = SystemClock()
    relay = client(secured, "relay")
    relay.connect()
    relay.subscribe("$share/relay/ims/+/cd11", 1)
    watcher = client(secured, "relay", client_id="relay-status")
    watcher.connect()
    watcher.subscribe("ims/STA1/status", 1)
    outbox = Outbox(tmp_path / "outbox.sqlite", max_bytes=10 << 20, max_age_s=86400, clock=clock)
    now = clock.time()
    for seq in range(5):
        assert outbox.put("cd11", "STA1:0", 100 + seq, now - 50 + 10 * seq, b"frame %d" % seq)
    up = Uplink("STA1", [secured.client_config("STA1")], outbox, clock=clock, backoff_base_s=0.05)
    up.start()
    try:
        assert up.wait_connected(10), up.stats()
        got = sorted(relay.get()[1] for _ in range(5))
        assert got == [b"frame %d" % i for i in range(5)]
        assert b'"online"' in watcher.get()[1]
        ack = cd11.Acknack(creator="RELAY", frame_set="STA1:0", lowest=100, highest=104).to_bytes()
        relay.client.publish("ims/STA1/acknack", ack, qos=1).wait_for_publish(10)
        from .conftest import wait_until

        wait_until(lambda: outbox.stats()["frames"] == 0, what="outbox emptied by the acknack")
        assert up.stats()["acknacks"] == 1 and up.stats()["frames_acked"] == 5
    finally:
        up.stop()
        outbox.close()
    assert b'"offline"' in watcher.get()[1]
    relay.close()
    watcher.close()


def test_edge_uplink_as_wrong_station_is_confined(secured, tmp_path):
    """STA2's credentials used by an uplink configured as STA1: the broker drops every frame (the
    ACL), so nothing reaches the relay, and the outbox keeps them all."""
    from ims_station.edge.logutil import SystemClock
    from ims_station.edge.outbox import Outbox
    from ims_station.edge.uplink import Uplink

    clock = SystemClock()
    relay = client(secured, "relay")
    relay.connect()
    relay.subscribe("ims/+/cd11", 1)
    outbox = Outbox(tmp_path / "outbox.sqlite", max_bytes=10 << 20, max_age_s=86400, clock=clock)
    outbox.put("cd11", "STA1:0", 1, clock.time(), b"frame as STA1")
    cfg = secured.client_config("STA2")
    up = Uplink("STA1", [cfg], outbox, clock=clock, backoff_base_s=0.05, protocol="3.1.1")
    up.start()
    try:
        assert up.wait_connected(10)
        from .conftest import wait_until

        wait_until(lambda: up.stats()["pubacks"] >= 1, what="the broker's PUBACK for the denied frame")
        # Ordering barrier: STA2 publishing its own topic arrives; the denied frame came before it.
        sta2 = client(secured, "STA2", client_id="STA2-own")
        sta2.connect()
        sta2.client.publish("ims/STA2/cd11", b"STA2 own", qos=1).wait_for_publish(10)
        assert relay.get()[:2] == ("ims/STA2/cd11", b"STA2 own")
        assert relay.empty()
        assert outbox.stats()["frames"] == 1      # not acknowledged by any relay: kept for resend
        sta2.close()
    finally:
        up.stop()
        outbox.close()
    relay.close()
