"""Issue 4, client-certificate path: the documented Mosquitto configuration (docs/mosquitto/) with its
two certificate lines uncommented (``require_certificate true``, ``use_identity_as_username true``)
and the documented ACL, run for real against the uplink's ``BrokerConfig.tls_cert`` / ``tls_key``.

Proves: (1) the edge uplink authenticated by a station certificate delivers frames and applies the
relay's acknack; (2) a client without a certificate is refused, even with the station's valid
password; (3) a certificate signed by another CA is refused; (4) a station certificate cannot publish
on another station's topic, even when the CONNECT claims the other station's username; (5) a client
key file readable by others (0644) is refused by ``BrokerConfig`` with an error naming the file.

The PKI is made here rather than with ``tlsconf.make_ca_and_server_cert``: that helper does not hand
back the CA's private key, and client certificates must be signed by the same CA as the broker's.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import secrets
import socket
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from ims_station.broker import BrokerConfig, MosquittoBroker, free_port
from ims_station.config import write_secret_file
from ims_station.errors import KeyFileError

from .conftest import Collector, wait_until
from .tlsconf import DOCS, docs_conf_for_test

pytestmark = pytest.mark.usefixtures("mosquitto_installed")     # tests/conftest.py: skip, or fail in CI


class Pki:
    """One CA (EC P-256, valid a day) that issues server and client certificates into *d*."""

    def __init__(self, d: Path, name: str) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.d, self.name = d, name
        d.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (self._builder(self.subject, self.key.public_key())
                     .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                     .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                                  content_commitment=False, key_encipherment=False,
                                                  data_encipherment=False, key_agreement=False,
                                                  encipher_only=False, decipher_only=False), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.ca_path = d / f"{name}.crt"
        self.ca_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def _builder(self, subject, public_key):
        from cryptography import x509

        now = datetime.datetime.now(datetime.timezone.utc)
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(self.subject)
                .public_key(public_key).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1)))

    def issue(self, cn: str, *, server: bool = False, key_mode: int = 0o600) -> tuple[Path, Path]:
        """(certificate, key) files for *cn*: a server certificate for 127.0.0.1 / localhost, or a
        client certificate (EKU clientAuth) whose CN the broker takes as the username."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        b = self._builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]), key.public_key())
        if server:
            b = (b.add_extension(x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
                 .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False))
        else:
            b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        cert = b.sign(self.key, hashes.SHA256())
        stem = f"{self.name}-{cn}"
        cert_path, key_path = self.d / f"{stem}.crt", self.d / f"{stem}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        write_secret_file(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()))
        os.chmod(key_path, key_mode)
        return cert_path, key_path


def certs_conf_for_test(etc: Path, var: Path, port: int) -> str:
    """docs/mosquitto/mosquitto.conf as the README's section 3 says: the two commented certificate
    lines uncommented, nothing else changed (besides the test's paths and port)."""
    text = docs_conf_for_test(etc, var, port, root=hasattr(os, "geteuid") and os.geteuid() == 0)
    for line in ("require_certificate true", "use_identity_as_username true"):
        text, n = re.subn(rf"(?m)^#{line}$", line, text)
        assert n == 1, f"docs/mosquitto/mosquitto.conf no longer has the commented line '#{line}'"
    return text


@dataclass
class CertBroker:
    broker: MosquittoBroker
    pki: Pki
    password_file: Path          # STA1's valid password (the passwd file keeps its account)

    @property
    def port(self) -> int:
        return self.broker.port

    def config(self, cn: str, **kw) -> BrokerConfig:
        """BrokerConfig of a client authenticated by a certificate with CN *cn* from the network CA."""
        cert, key = self.pki.issue(cn)
        return BrokerConfig(host="127.0.0.1", port=self.port, tls_ca=str(self.pki.ca_path), tls_cert=str(cert),
                            tls_key=str(key), **kw)

    def collector(self, cn: str, *, username: str | None = None, client_id: str | None = None) -> Collector:
        """A test client whose TLS and credentials are set by ``BrokerConfig.apply`` (the production path)."""
        c = Collector("127.0.0.1", self.port, client_id=client_id)
        self.config(cn, username=username).apply(c.client)
        return c


@pytest.fixture(scope="module")
def certbroker(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("certs")
    etc, var = tmp / "etc", tmp / "var"
    var.mkdir(parents=True)
    pki = Pki(etc, "network-ca")
    server_cert, server_key = pki.issue("localhost", server=True)
    os.replace(pki.ca_path, etc / "ca.crt")       # the names mosquitto.conf uses under /etc/mosquitto/ims/
    pki.ca_path = etc / "ca.crt"
    os.replace(server_cert, etc / "server.crt")
    os.replace(server_key, etc / "server.key")
    (etc / "acl").write_text((DOCS / "acl").read_text())
    # The documented file still names a password file; keep a real station account in it, so the
    # test also shows that a valid password no longer gets in without a certificate.
    password = secrets.token_urlsafe(16)
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(etc / "passwd"), "STA1", password],
                   check=True, capture_output=True)
    pw_file = write_secret_file(tmp / "STA1.password", (password + "\n").encode())
    port = free_port()
    b = MosquittoBroker(tmp / "run", port=port, conf=certs_conf_for_test(etc, var, port), ready_ports=[port]).start()
    yield CertBroker(b, pki, pw_file)
    b.close()


# MQTT 3.1.1 CONNECT without username (the certificate is the identity), clean session, client id
# "ims-probe"; a broker that accepts the client answers 20 02 00 00.
_CONNECT = bytes([0x10, 21, 0, 4]) + b"MQTT" + bytes([4, 0x02, 0, 30, 0, 9]) + b"ims-probe"


def mqtt_over_tls(port: int, ca: Path, cert: Path | None, key: Path | None) -> bytes:
    """Send CONNECT over TLS with the given client certificate (or none); the broker's first bytes,
    or b"" if the TLS handshake or the connection was refused.  With TLS 1.3 the server rejects a
    client certificate after the client considers the handshake done, so the refusal may show up
    on the read instead of on the handshake."""
    ctx = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        try:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                s.sendall(_CONNECT)
                return s.recv(4)
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError) as err:
            assert not isinstance(err, ssl.SSLCertVerificationError), "the client must trust the broker: " + str(err)
            return b""


def test_station_certificate_is_accepted(certbroker):
    """The control for the refusals below: same CONNECT, same CA, with the network's station cert."""
    cert, key = certbroker.pki.issue("STA1")
    assert mqtt_over_tls(certbroker.port, certbroker.pki.ca_path, cert, key) == b"\x20\x02\x00\x00"


def test_client_without_certificate_is_refused(certbroker):
    assert mqtt_over_tls(certbroker.port, certbroker.pki.ca_path, None, None) == b""


def test_certificate_from_another_ca_is_refused(certbroker, tmp_path):
    rogue = Pki(tmp_path, "rogue-ca")
    cert, key = rogue.issue("STA1")          # right CN, wrong issuer
    assert mqtt_over_tls(certbroker.port, certbroker.pki.ca_path, cert, key) == b""


def test_uplink_with_valid_password_but_no_certificate_never_connects(certbroker, tmp_path):
    """The password account still in the passwd file does not get around require_certificate."""
    from ims_station.edge.logutil import SystemClock
    from ims_station.edge.outbox import Outbox
    from ims_station.edge.uplink import Uplink

    clock = SystemClock()
    outbox = Outbox(tmp_path / "outbox.sqlite", max_bytes=1 << 20, max_age_s=86400, clock=clock)
    cfg = BrokerConfig(host="127.0.0.1", port=certbroker.port, tls_ca=str(certbroker.pki.ca_path),
                       username="STA1", password_file=str(certbroker.password_file))
    up = Uplink("STA1", [cfg], outbox, clock=clock, backoff_base_s=0.05, backoff_max_s=0.2)
    up.start()
    try:
        wait_until(lambda: up.stats()["connect_failures"] >= 3, what="three refused connection attempts")
        assert up.stats()["connects"] == 0, up.stats()
    finally:
        up.stop()
        outbox.close()


def test_edge_uplink_authenticated_by_certificate(certbroker, tmp_path):
    """Requirement 1: frames from the outbox reach the relay (itself certificate-authenticated), the
    relay's CD-1.1 acknack comes back through the ACL and empties the outbox."""
    from ims_station import cd11
    from ims_station.edge.logutil import SystemClock
    from ims_station.edge.outbox import Outbox
    from ims_station.edge.uplink import Uplink

    cfg = certbroker.config("STA1")
    assert cfg.username is None and cfg.password_file is None      # the certificate alone
    assert Path(cfg.tls_key).stat().st_mode & 0o777 == 0o600

    clock = SystemClock()
    relay = certbroker.collector("relay")
    relay.connect()
    relay.subscribe("$share/relay/ims/+/cd11", 1)
    outbox = Outbox(tmp_path / "outbox.sqlite", max_bytes=10 << 20, max_age_s=86400, clock=clock)
    now = clock.time()
    for seq in range(5):
        assert outbox.put("cd11", "STA1:0", 100 + seq, now - 50 + 10 * seq, b"frame %d" % seq)
    up = Uplink("STA1", [cfg], outbox, clock=clock, backoff_base_s=0.05)
    up.start()
    try:
        assert up.wait_connected(10), up.stats()
        got = sorted(relay.get()[1] for _ in range(5))
        assert got == [b"frame %d" % i for i in range(5)]
        ack = cd11.Acknack(creator="RELAY", frame_set="STA1:0", lowest=100, highest=104).to_bytes()
        relay.client.publish("ims/STA1/acknack", ack, qos=1).wait_for_publish(10)
        wait_until(lambda: outbox.stats()["frames"] == 0, what="outbox emptied by the acknack")
        assert up.stats()["acknacks"] == 1 and up.stats()["frames_acked"] == 5
        assert up.stats()["acknack_subscribe_refused"] == 0
    finally:
        up.stop()
        outbox.close()
        relay.close()


@pytest.mark.parametrize("claimed_username", [None, "STA2"])
def test_station_certificate_cannot_publish_for_another_station(certbroker, claimed_username):
    """Requirement 4: STA1's certificate publishing on STA2's topic never reaches the relay, also
    when the CONNECT carries the username "STA2" (use_identity_as_username: the CN wins)."""
    relay = certbroker.collector("relay")
    relay.connect()
    relay.subscribe("ims/+/cd11", 1)
    sta1 = certbroker.collector("STA1", username=claimed_username)
    _, rc = sta1.connect()
    assert rc == 0
    sta1.client.publish("ims/STA2/cd11", b"forged by STA1", qos=1).wait_for_publish(10)
    # Ordering barrier: Mosquitto forwards one client's messages in order, so the forged frame would
    # have arrived before STA1's own one had the ACL let it through.
    sta1.client.publish("ims/STA1/cd11", b"STA1 own frame", qos=1).wait_for_publish(10)
    assert relay.get() == ("ims/STA1/cd11", b"STA1 own frame", False)
    assert relay.empty()
    for c in (sta1, relay):
        c.close()


def test_world_readable_client_key_refused(certbroker, tmp_path):
    """Requirement 5: a 0644 client key is refused before any connection, naming the file; an
    uplink configured with it does not start."""
    import paho.mqtt.client as mqtt

    from ims_station.edge.logutil import SystemClock
    from ims_station.edge.outbox import Outbox
    from ims_station.edge.uplink import Uplink

    cert, key = certbroker.pki.issue("STA1", key_mode=0o644)
    cfg = BrokerConfig(host="127.0.0.1", port=certbroker.port, tls_ca=str(certbroker.pki.ca_path),
                       tls_cert=str(cert), tls_key=str(key))
    with pytest.raises(KeyFileError) as info:
        cfg.apply(mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="key-check"))
    assert info.value.file == str(key)
    assert str(key) in str(info.value) and "0644" in str(info.value)

    # The gateway refuses to start with it (a start-up error naming the file, not a retry loop).
    clock = SystemClock()
    outbox = Outbox(tmp_path / "outbox.sqlite", max_bytes=1 << 20, max_age_s=86400, clock=clock)
    try:
        with pytest.raises(KeyFileError) as info:
            Uplink("STA1", [cfg], outbox, clock=clock, backoff_base_s=0.05, backoff_max_s=0.2)
        assert info.value.file == str(key) and "0644" in str(info.value)
    finally:
        outbox.close()
