"""TLS on both CD-1.1 connections (manager and data port): server-authenticated and mutual; a
plaintext or untrusted client is refused without disturbing the link; key file permissions checked."""

from __future__ import annotations

import asyncio
import datetime
import os
import ssl

import pytest

from ims_station.cd11tcp import (ConnectionManager, DataConsumer, MemorySink, MemorySource, Provider,
                                 TlsSettings)
from ims_station.config import write_secret_file
from ims_station.errors import ConfigError
from tests.cd11tcp.util import FAST, data_frame, run


def make_pki(d):
    """CA, server certificate (127.0.0.1/localhost) and client certificate, EC P-256, one day."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cd11tcp test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))

    def leaf(name, usage, san):
        key = ec.generate_private_key(ec.SECP256R1())
        b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
             .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        cert = b.sign(ca_key, hashes.SHA256())
        (d / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        write_secret_file(d / f"{name}.key", key.private_bytes(serialization.Encoding.PEM,
                                                               serialization.PrivateFormat.PKCS8,
                                                               serialization.NoEncryption()))
        return str(d / f"{name}.crt"), str(d / f"{name}.key")

    (d / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    server = leaf("localhost", ExtendedKeyUsageOID.SERVER_AUTH,
                  [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    client = leaf("STA01", ExtendedKeyUsageOID.CLIENT_AUTH, None)
    return str(d / "ca.crt"), server, client


@pytest.mark.parametrize("mutual", [False, True], ids=["server-auth", "mutual"])
def test_tls_both_connections(tmp_path, mutual):
    ca, (scert, skey), (ccert, ckey) = make_pki(tmp_path)
    server_ctx = TlsSettings(ca=ca if mutual else None, cert=scert, key=skey).server_context()
    client_ctx = TlsSettings(ca=ca, cert=ccert if mutual else None, key=ckey if mutual else None).client_context()
    frames = {s: data_frame(s) for s in range(1, 6)}

    async def main():
        sink = MemorySink()
        dc = await DataConsumer(sink, {"STA01": None}, limits=FAST, ssl_context=server_ctx).start()
        cm = await ConnectionManager(dc, limits=FAST, ssl_context=server_ctx).start()
        try:
            # a plaintext client and (mutual) a client without certificate get nowhere ...
            r, w = await asyncio.open_connection(*cm.address)
            w.write(b"\0" * 100)
            try:     # the server ends the failed TLS handshake (a hang fails the wait_for)
                data = await asyncio.wait_for(r.read(), 3)
            except ConnectionResetError:
                data = b""
            assert not data.startswith(b"\0\0\0\x02")       # no connection response in clear
            w.close()
            if mutual:
                anon = TlsSettings(ca=ca).client_context()
                bad = Provider("STA01", cm.address, MemorySource(frames), limits=FAST, ssl_context=anon,
                               backoff_initial_s=0.05)
                bad.start()
                await asyncio.sleep(0.3)
                await bad.stop()
                assert bad.stats.connects == 0 and bad.stats.errors
            # ... the real station gets through on both connections
            p = Provider("STA01", cm.address, MemorySource(frames), limits=FAST, ssl_context=client_ctx)
            p.start()
            assert await p.wait_acked(5, timeout=5)
            await p.stop()
            assert {sink.frames[("STA01:0", s)] for s in frames} == set(frames.values())
            assert p.stats.connects == 1
        finally:
            await cm.stop()
            await dc.stop()
    run(main())


def test_key_file_permissions_checked(tmp_path):
    ca, (scert, skey), _ = make_pki(tmp_path)
    os.chmod(skey, 0o644)
    with pytest.raises(ConfigError, match="too open"):
        TlsSettings(cert=scert, key=skey).server_context()
    with pytest.raises(ConfigError, match="tls_ca"):
        TlsSettings().client_context()
    with pytest.raises(ConfigError, match="go together"):
        TlsSettings(ca=ca, cert=scert).client_context()
    os.chmod(skey, 0o600)
    assert isinstance(TlsSettings(cert=scert, key=skey).server_context(), ssl.SSLContext)
