"""Run the production Mosquitto configuration of docs/mosquitto/ on free ports, with a throw-away CA.

Shared by the TLS/ACL test and the fault tests that want the secured broker."""

from __future__ import annotations

import datetime
import ipaddress
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ims_station.broker import BrokerConfig, MosquittoBroker, free_port
from ims_station.config import write_secret_file

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "mosquitto"


def make_ca_and_server_cert(d: Path, *, client_auth: bool = False) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 / localhost (EC P-256, valid one day); with
    *client_auth* also usable as a client certificate (a NATS node's, for its routes)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ims-station test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]
                                                 + ([ExtendedKeyUsageOID.CLIENT_AUTH] if client_auth else [])),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_path, cert_path, key_path = d / "ca.crt", d / "server.crt", d / "server.key"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    write_secret_file(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    return ca_path, cert_path, key_path


def docs_conf_for_test(etc: Path, var: Path, port: int, *, root: bool) -> str:
    """docs/mosquitto/mosquitto.conf with its paths and port rewritten; every rewrite must apply, so a
    change of the documented file that the test does not understand fails loudly."""
    text = (DOCS / "mosquitto.conf").read_text()
    rewrites = [
        (r"(?m)^listener 8883$", f"listener {port} 127.0.0.1"),
        (r"/etc/mosquitto/ims/", f"{etc}/"),
        (r"(?m)^persistence_location /var/lib/mosquitto/$", f"persistence_location {var}/"),
        (r"(?m)^log_dest syslog$", "log_dest stdout"),
    ]
    for pattern, repl in rewrites:
        text, n = re.subn(pattern, repl, text)
        assert n, f"docs/mosquitto/mosquitto.conf no longer contains {pattern!r}"
    if root:
        text += "user root\n"
    return text


@dataclass
class SecuredBroker:
    broker: MosquittoBroker
    etc: Path
    ca: Path
    passwords: dict[str, str]

    def client_config(self, user: str, *, password: str | None = None) -> BrokerConfig:
        """BrokerConfig for *user* with its password in a 0600 file (or *password* instead)."""
        pw = self.etc / f"{user}.password"
        write_secret_file(pw, ((password if password is not None else self.passwords[user]) + "\n").encode())
        return BrokerConfig(host="127.0.0.1", port=self.broker.port, tls_ca=str(self.ca), username=user,
                            password_file=str(pw))

    @property
    def port(self) -> int:
        return self.broker.port


def start_secured_broker(tmp: Path, users: list[str]) -> SecuredBroker:
    import os
    import secrets

    etc, var = tmp / "etc", tmp / "var"
    etc.mkdir(parents=True)
    var.mkdir(parents=True)
    ca, _, _ = make_ca_and_server_cert(etc)
    passwords = {u: secrets.token_urlsafe(16) for u in users}
    passwd = etc / "passwd"
    for i, (u, p) in enumerate(passwords.items()):
        args = ["mosquitto_passwd", "-b"] + (["-c"] if i == 0 else []) + [str(passwd), u, p]
        subprocess.run(args, check=True, capture_output=True)
    (etc / "acl").write_text((DOCS / "acl").read_text())
    port = free_port()
    conf = docs_conf_for_test(etc, var, port, root=hasattr(os, "geteuid") and os.geteuid() == 0)
    b = MosquittoBroker(tmp / "run", port=port, conf=conf, ready_ports=[port]).start()
    return SecuredBroker(b, etc, ca, passwords)
