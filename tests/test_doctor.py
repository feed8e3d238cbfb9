"""``ims-station doctor``, ``edge check``, ``relay check`` (ims_station/doctor.py, docs/doctor.md).

Each problem of the issue's list is provoked for real where it can be: a port path that does not
exist, a key file of mode 0644, a keystore whose key expired (``generate_key`` with a validity in the
past), a free port with nothing listening, Mosquitto serving a certificate from another CA, for
another host name or expired (made with ``cryptography``), and a HIL board behind a pty whose clock
runs far from the gateway's (``Simulation(start_utc=...)``).  The host's clock discipline and a full
disk go through the doctor's seams (``Probes.clock_sync``, ``Probes.disk_usage``).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import math
import os
import threading
import time
from collections import namedtuple
from pathlib import Path

import pytest

from ims_station import doctor
from ims_station.auth import export_public, generate_key
from ims_station.config import write_secret_file
from ims_station.doctor import FAIL, OK, WARN, ClockSync, Probes

from .conftest import free_port, need_mosquitto

UTC = dt.timezone.utc
DiskUsage = namedtuple("DiskUsage", "total used free")
GIB = 1 << 30


def gnss_synced() -> ClockSync:
    return ClockSync("synced", "gnss", "test: PPS", "test")


def roomy_disk(path: str) -> DiskUsage:
    return DiskUsage(100 * GIB, 10 * GIB, 90 * GIB)


def probes(**kw) -> Probes:
    kw.setdefault("clock_sync", gnss_synced)
    kw.setdefault("disk_usage", roomy_disk)
    kw.setdefault("timeout", 5.0)
    return Probes(**kw)


# ------------------------------------------------------------------------------------------ set-up


class HilBoard:
    """The HIL board behind a pty in this process (what ``hil run --pty`` does), its clock starting
    at *start* (UTC seconds; default now, so that it agrees with the gateway's clock)."""

    def __init__(self, key: bytes, start: float | None = None) -> None:
        from ims_station.hil.ptyport import PtyBridge
        from ims_station.hil.sim import NS, Simulation

        t = time.time() if start is None else start
        self.sim = Simulation(seed=5, key=key, start_utc=math.floor(t), packet_ms=250)
        self.sim.run_until(int((t - math.floor(t)) * NS))
        self.bridge = PtyBridge(self.sim)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.bridge.run, kwargs={"stop": self.stop}, daemon=True)
        self.thread.start()
        self.path = self.bridge.path

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.bridge.close()


def make_station(d: Path, *, url: str, brokers: list | None = None, key_valid_until=None,
                 key_valid_from=None, acknack_trust: str | None = None) -> Path:
    """station.toml + board key + keystore (key 1 of STA01) + the relay's trust store with it."""
    d.mkdir(parents=True, exist_ok=True)
    write_secret_file(d / "board.key", b"k" * 32)
    generate_key("ed25519", 1, d / "keys", station="STA01", valid_from=key_valid_from, valid_until=key_valid_until)
    export_public(d / "keys", 1, d / "trust")
    blines = ""
    for b in brokers or []:
        blines += "[[uplink.brokers]]\n" + "".join(
            f'{k} = {json.dumps(v)}\n' for k, v in b.items() if v is not None)
    uplink = ""
    if brokers:
        uplink = "[uplink]\n" + (f'acknack_trust = "{acknack_trust}"\n' if acknack_trust else "") + blines
    f = d / "station.toml"
    f.write_text(f"""[station]
code = "STA01"
network = "XX"
data_dir = "data"

[[ports]]
url = "{url}"
key_file = "board.key"
channels = {{ 0 = "00.BHZ" }}

[keys]
keystore = "keys"

{uplink}""")
    return f


def make_relay(d: Path, *, brokers: list, trust: str = "trust") -> Path:
    f = d / "relay.toml"
    blines = "".join("[[broker]]\n" + "".join(f'{k} = {json.dumps(v)}\n' for k, v in b.items() if v is not None)
                     for b in brokers)
    f.write_text(f'[relay]\ndata_dir = "relay-data"\ntrust_dir = "{trust}"\n\n{blines}')
    return f


def by_check(findings, check):
    return [f for f in findings if f.check == check]


def statuses(findings, check):
    return {f.status for f in by_check(findings, check)}


# ----------------------------------------------------------------------- TLS brokers (cryptography)


def _ca(name: str):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=10))
            .not_valid_after(now + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256()))
    return cert, key


def _server_cert(d: Path, stem: str, ca, names: list[str], *, days_from: float, days_to: float) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    ca_cert, ca_key = ca
    now = dt.datetime.now(UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    alt = [x509.IPAddress(ipaddress.ip_address(n)) if n[0].isdigit() else x509.DNSName(n) for n in names]
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now + dt.timedelta(days=days_from)).not_valid_after(now + dt.timedelta(days=days_to))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .sign(ca_key, hashes.SHA256()))
    crt, kf = d / f"{stem}.crt", d / f"{stem}.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    write_secret_file(kf, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    return crt, kf


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory):
    """One Mosquitto with a plain listener and three TLS listeners: a good certificate (for
    127.0.0.1 / localhost), one for another host name, and an expired one; all from ``ca``.  A second
    CA (``other_ca``) signed none of them."""
    from cryptography.hazmat.primitives import serialization

    from ims_station.broker import MosquittoBroker

    need_mosquitto()
    d = tmp_path_factory.mktemp("tls-broker")
    ca, other = _ca("doctor test CA"), _ca("another CA")
    paths = {}
    for name, c in (("ca", ca), ("other_ca", other)):
        paths[name] = d / f"{name}.crt"
        paths[name].write_bytes(c[0].public_bytes(serialization.Encoding.PEM))
    certs = {"good": _server_cert(d, "good", ca, ["localhost", "127.0.0.1"], days_from=-1, days_to=300),
             "wrong_name": _server_cert(d, "wrong", ca, ["broker.example.org"], days_from=-1, days_to=300),
             "expired": _server_cert(d, "expired", ca, ["localhost", "127.0.0.1"], days_from=-30, days_to=-1)}
    ports = {k: free_port() for k in certs}
    extra = "".join(f"listener {ports[k]} 127.0.0.1\ncafile {paths['ca']}\ncertfile {crt}\nkeyfile {key}\n"
                    for k, (crt, key) in certs.items())
    plain = free_port()
    b = MosquittoBroker(d / "run", port=plain, extra=extra, ready_ports=[plain, *ports.values()])
    with b:
        yield {"broker": b, "ports": ports, **paths}


# ----------------------------------------------------------------------------------- healthy case


def test_healthy_station_and_relay_are_all_ok(tmp_path, tls_broker, capsys):
    """A HIL board on a pty with the gateway's time, a broker over TLS with a good certificate, a
    keystore the relay trusts, a synchronised clock, room on disk: every check ok, exit 0."""
    from ims_station import cli

    key = b"k" * 32
    board = HilBoard(key)
    try:
        broker = {"host": "127.0.0.1", "port": tls_broker["ports"]["good"], "tls_ca": str(tls_broker["ca"])}
        st = make_station(tmp_path, url=board.path, brokers=[broker])
        relay = make_relay(tmp_path, brokers=[broker])
        found = doctor.run(str(st), str(relay), probes())
    finally:
        board.close()
    bad = [f for f in found if f.status != OK]
    assert not bad, "\n".join(f.line() for f in bad)
    checks = {f.check for f in found}
    assert checks >= {"config", "keys", "trust", "clock_sync", "disk", "port", "board", "board_clock", "broker", "tls"}
    assert doctor.exit_status(found) == 0
    assert any("accepts key 1 of STA01" in f.detail for f in by_check(found, "trust"))
    # the offline check of the same files: ok, exit 0
    assert cli.main(["edge", "check", "--config", str(st)]) == 0
    assert cli.main(["relay", "check", "--config", str(relay)]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{st}: ok", f"{relay}: ok"]


# ------------------------------------------------------------------------------- each problem


def test_missing_port(tmp_path):
    st = make_station(tmp_path, url=str(tmp_path / "ttyUSB9"))
    found, _ = doctor.station_checks(str(st), probes())
    (port,) = by_check(found, "port")
    assert port.status == FAIL and "does not exist" in port.detail
    assert port.key == "ports[0].url" and "/dev/serial/by-id/" in port.fix


def test_wrong_key_permissions(tmp_path, capsys):
    st = make_station(tmp_path, url=str(tmp_path / "ttyUSB9"))
    os.chmod(tmp_path / "board.key", 0o644)
    found, _ = doctor.station_checks(str(st), probes(), offline=True)
    bad = [f for f in by_check(found, "keys") if f.status == FAIL]
    assert len(bad) == 1
    assert "0644" in bad[0].detail and bad[0].fix == f"chmod 600 {tmp_path / 'board.key'}"
    assert (bad[0].file, bad[0].key) == (str(st), "ports[0].key_file")
    # the other checks still ran (one problem does not hide the rest)
    assert statuses(found, "config") == {OK} and statuses(found, "trust") == set()
    # edge check: exit 2, the problem as file: key: reason
    from ims_station import cli

    assert cli.main(["edge", "check", "--config", str(st)]) == 2
    out = capsys.readouterr().out
    assert out.startswith(f"{st}: ports[0].key_file: board HMAC key {tmp_path / 'board.key'}: permissions 0644")


def test_wrong_permissions_of_a_signing_key(tmp_path):
    st = make_station(tmp_path, url=str(tmp_path / "ttyUSB9"))
    os.chmod(tmp_path / "keys" / "1.pem", 0o640)
    found, _ = doctor.station_checks(str(st), probes(), offline=True)
    (bad,) = [f for f in found if f.status == FAIL]
    assert bad.check == "keys" and bad.fix == f"chmod 600 {tmp_path / 'keys' / '1.pem'}"


def test_expired_key(tmp_path, capsys):
    now = dt.datetime.now(UTC).replace(microsecond=0)
    st = make_station(tmp_path, url=str(tmp_path / "ttyUSB9"), key_valid_from=now - dt.timedelta(days=400),
                      key_valid_until=now - dt.timedelta(days=1))
    found, _ = doctor.station_checks(str(st), probes(), offline=True)
    (bad,) = [f for f in found if f.status == FAIL]
    assert bad.check == "keys" and "expired" in bad.detail
    assert (bad.file, bad.key) == (str(tmp_path / "keys" / "1.toml"), "valid_until")
    assert bad.fix.startswith(f"ims-station keys generate --algorithm ed25519 --key-id 2 --out {tmp_path / 'keys'} "
                              "--station STA01")
    from ims_station import cli

    assert cli.main(["edge", "check", "--config", str(st)]) == 2
    assert f"{tmp_path / 'keys' / '1.toml'}: valid_until: key 1 expired" in capsys.readouterr().out


def test_key_near_its_end_is_a_warning(tmp_path):
    now = dt.datetime.now(UTC).replace(microsecond=0)
    st = make_station(tmp_path, url=str(tmp_path / "ttyUSB9"), key_valid_until=now + dt.timedelta(days=3))
    found, _ = doctor.station_checks(str(st), probes(), offline=True)
    (w,) = [f for f in found if f.status != OK]
    assert w.status == WARN and w.check == "keys" and "can sign only" in w.detail
    assert (w.file, w.key) == (str(tmp_path / "keys" / "1.toml"), "valid_until") and "--key-id 2" in w.fix
    assert doctor.exit_status(found) == 1


def test_key_expiry_is_judged_by_the_injected_clock(tmp_path):
    """The time source is a seam: the same keystore is fine today and expired 20 days on."""
    from ims_station.clock import FakeClock

    now = dt.datetime.now(UTC).replace(microsecond=0)
    st = make_station(tmp_path, url=str(tmp_path / "ttyUSB9"), key_valid_until=now + dt.timedelta(days=100))
    clock = FakeClock(t=time.time())
    found, _ = doctor.station_checks(str(st), probes(clock=clock), offline=True)
    assert doctor.exit_status(found) == 0
    clock.advance(90 * 86400)
    found, _ = doctor.station_checks(str(st), probes(clock=clock), offline=True)
    assert doctor.exit_status(found) == 1          # 10 days left: a warning
    clock.advance(20 * 86400)
    found, _ = doctor.station_checks(str(st), probes(clock=clock), offline=True)
    assert [(f.check, f.key) for f in found if f.status == FAIL] == [("keys", "valid_until")]


def test_broker_unreachable(tmp_path):
    from ims_station.broker import BrokerConfig

    port = free_port()            # nothing listens there
    found = doctor.check_brokers([BrokerConfig("127.0.0.1", port)], probes(timeout=2.0),
                                 cfg_file="station.toml", table="uplink.brokers")
    (b,) = found
    assert b.check == "broker" and b.status == FAIL and "unreachable" in b.detail
    assert f"nc -vz 127.0.0.1 {port}" in b.fix and b.key == "uplink.brokers[0].host"


@pytest.mark.parametrize("case, ca, expect", [
    ("wrong_name", "ca", "not for 127.0.0.1"),
    ("expired", "ca", "has expired"),
    ("good", "other_ca", "not signed by the CA"),
])
def test_bad_tls_certificate(tls_broker, case, ca, expect):
    from ims_station.broker import BrokerConfig

    cfg = BrokerConfig("127.0.0.1", tls_broker["ports"][case], tls_ca=str(tls_broker[ca]))
    found = doctor.check_brokers([cfg], probes(), cfg_file="station.toml", table="uplink.brokers")
    (tls,) = found                # a failed TLS check ends that broker's checks
    assert tls.check == "tls" and tls.status == FAIL and expect in tls.detail, tls.detail
    assert tls.fix and tls.key == ("uplink.brokers[0].host" if case == "wrong_name" else "uplink.brokers[0].tls_ca")


def test_plain_listener_where_tls_is_configured(tls_broker):
    from ims_station.broker import BrokerConfig

    cfg = BrokerConfig("127.0.0.1", tls_broker["broker"].port, tls_ca=str(tls_broker["ca"]))
    (tls,) = doctor.check_brokers([cfg], probes(), cfg_file="f", table="uplink.brokers")
    assert tls.status == FAIL and "TLS handshake failed" in tls.detail and "8883" in tls.fix


@pytest.mark.parametrize("sync, status", [
    (ClockSync("unsynced", "unknown", "chrony: Not synchronised", "chronyc"), FAIL),
    (ClockSync("synced", "ntp", "timedatectl: NTPSynchronized=yes", "timedatectl"), WARN),
    (ClockSync("unknown"), WARN),
    (ClockSync("synced", "unknown", "kernel: clock synchronised", "adjtimex"), WARN),
    (ClockSync("synced", "gnss", "chrony: reference PPS", "chronyc"), OK),
])
def test_clock_sync(sync, status):
    (f,) = doctor.check_clock_sync(probes(clock_sync=lambda: sync))
    assert f.status == status
    if status == FAIL:
        assert "not synchronised" in f.detail and "timedatectl set-ntp true" in f.fix
    if sync.source == "ntp":
        assert "NTP only" in f.detail and "refclock PPS" in f.fix


def test_clock_probe_parsers():
    gnss = "50505300,PPS,1,1764770000.1,0.000000012,0.000000010,0.000000100,-1.2,0.0,0.01,0.0,0.00001,16.0,Normal\n"
    ntp = "C0A80001,192.168.0.1,3,1764770000.1,0.0001,0.0,0.0001,-1.2,0.0,0.01,0.01,0.001,64.0,Normal\n"
    unsync = "00000000,,0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,1.0,1.0,0.0,Not synchronised\n"
    assert doctor.parse_chronyc_tracking(gnss).source == "gnss"
    assert doctor.parse_chronyc_tracking(ntp) == ClockSync("synced", "ntp", doctor.parse_chronyc_tracking(ntp).detail,
                                                           "chronyc")
    assert doctor.parse_chronyc_tracking(unsync).state == "unsynced"
    assert doctor.parse_chronyc_tracking("garbage") is None
    assert doctor.parse_timedatectl("Timezone=UTC\nNTPSynchronized=no\n").state == "unsynced"
    assert doctor.parse_timedatectl("NTPSynchronized=yes\n").source == "ntp"
    assert doctor.parse_timedatectl("") is None
    # the real probe answers something on any machine, never raises
    assert doctor.probe_clock_sync().state in ("synced", "unsynced", "unknown")


def test_board_clock_far_from_the_gateway(tmp_path):
    """A HIL board whose GNSS time is ten days behind the gateway's clock (its simulation starts
    then): the board answers, and the clocks' disagreement fails."""
    board = HilBoard(b"k" * 32, start=time.time() - 10 * 86400)
    try:
        st = make_station(tmp_path, url=board.path)
        found, _ = doctor.station_checks(str(st), probes())
    finally:
        board.close()
    assert statuses(found, "port") == {OK} and statuses(found, "board") == {OK}
    (c,) = by_check(found, "board_clock")
    assert c.status == FAIL and "differ by -86" in c.detail, c.detail
    assert "gateway" in c.fix


def test_board_with_another_key_is_named(tmp_path):
    board = HilBoard(b"x" * 32)
    try:
        st = make_station(tmp_path, url=board.path)          # board.key holds b"k" * 32
        found, _ = doctor.station_checks(str(st), probes(timeout=1.0))
    finally:
        board.close()
    (b,) = by_check(found, "board")
    assert b.status == FAIL and "fail authentication" in b.detail and b.key == "ports[0].key_file"


def test_disk_nearly_full(tmp_path):
    st = make_station(tmp_path, url=str(tmp_path / "ttyUSB9"))
    from ims_station.edge.config import load_station_config

    settings = load_station_config(st).settings
    full = lambda p: DiskUsage(32 * GIB, 32 * GIB - (4 << 20), 4 << 20)   # noqa: E731  4 MiB free
    (f,) = doctor.check_outbox_disk(settings, probes(disk_usage=full))
    assert f.check == "disk" and f.status == FAIL and "below the outbox's margin" in f.detail and "df -h" in f.fix
    tight = lambda p: DiskUsage(32 * GIB, 32 * GIB - (40 << 20), 40 << 20)   # noqa: E731  room < 7 days
    (f,) = doctor.check_outbox_disk(settings, probes(disk_usage=tight))
    assert f.status == WARN and "7 days of frames" in f.detail
    (f,) = doctor.check_outbox_disk(settings, probes())
    assert f.status == OK


def test_relay_disk_nearly_full(tmp_path):
    (f,) = doctor.check_dir_disk(str(tmp_path), probes(disk_usage=lambda p: DiskUsage(100 * GIB, 99.5 * GIB, GIB // 2)),
                                 what="the relay's archive")
    assert f.status == FAIL and "0.5% of 100.0 GiB" in f.detail
    (f,) = doctor.check_dir_disk(str(tmp_path), probes(disk_usage=lambda p: DiskUsage(100 * GIB, 97 * GIB, 3 * GIB)),
                                 what="the relay's archive")
    assert f.status == WARN


def test_broker_refuses_our_credentials(tmp_path):
    """The production Mosquitto configuration (docs/mosquitto/) over TLS: the right password is
    accepted, a wrong one is a failure naming the password file."""
    from tests.integration.tlsconf import start_secured_broker

    need_mosquitto()
    sb = start_secured_broker(tmp_path / "broker", ["STA01"])
    try:
        good = doctor.check_brokers([sb.client_config("STA01")], probes(), cfg_file="f", table="uplink.brokers")
        # tlsconf's certificates are valid for one day: near their end, a warning with the fix
        assert [(f.check, f.status) for f in good] == [("tls", WARN), ("broker", OK)], good
        assert "expires in" in good[0].detail and "renew" in good[0].fix and "over TLS" in good[1].detail
        bad_cfg = sb.client_config("STA01", password="wrong")
        bad = doctor.check_brokers([bad_cfg], probes(), cfg_file="f", table="uplink.brokers")
    finally:
        sb.broker.close()
    (b,) = [f for f in bad if f.check == "broker"]
    assert b.status == FAIL and "refused" in b.detail and bad_cfg.password_file in b.fix, b


def test_relay_trust_store_without_the_station_key(tmp_path):
    st = make_station(tmp_path, url=str(tmp_path / "ttyUSB9"))
    (tmp_path / "empty-trust").mkdir(mode=0o755)
    relay = make_relay(tmp_path, brokers=[{"host": "127.0.0.1", "port": 1}], trust="empty-trust")
    found = doctor.run(str(st), str(relay), probes(), offline=True)
    (bad,) = [f for f in found if f.status == FAIL]
    assert bad.check == "trust" and "rejects key 1 of STA01" in bad.detail
    assert bad.fix == (f"ims-station keys export --keystore {tmp_path / 'keys'} --key-id 1 "
                       f"--trust {tmp_path / 'empty-trust'}")


def test_doctor_command_json_and_exit_status(tmp_path, capsys):
    """The command: --json prints one object; a failure exits 2."""
    from ims_station import cli

    st = make_station(tmp_path, url=str(tmp_path / "ttyUSB9"))
    assert cli.main(["doctor", "--config", str(st), "--json", "--timeout", "1"]) == 2
    doc = json.loads(capsys.readouterr().out)
    assert doc["status"] == FAIL
    port = [f for f in doc["findings"] if f["check"] == "port"][0]
    assert set(port) == {"check", "status", "detail", "fix", "subject", "file", "key"}
    assert cli.main(["doctor"]) == 2
    assert "--config" in capsys.readouterr().err


def test_config_error_is_file_key_reason(tmp_path, capsys):
    from ims_station import cli

    f = tmp_path / "bad.toml"
    f.write_text('[station]\ncode = "STA01"\nnetwork = "XX"\nbogus = 1\n[[ports]]\nurl = "x"\nkey_file = "k"\n')
    assert cli.main(["edge", "check", "--config", str(f)]) == 2
    assert capsys.readouterr().out.startswith(f"{f}: station.bogus: unknown key")
    r = tmp_path / "relay.toml"
    r.write_text('[relay]\ndata_dir = "d"\n[broker]\nhost = "127.0.0.1"\n')
    assert cli.main(["relay", "check", "--config", str(r)]) == 2
    assert capsys.readouterr().out.startswith(f"{r}: relay.trust_dir: required key is missing")


def test_clock_probe_parsers_take_any_text():
    """The clock probes parse another program's output: any text gives a ClockSync or None."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=300, deadline=None)
    @given(st.text(alphabet=st.sampled_from("abcNOTsyn=,.0123456789\n PPS-yes"), max_size=200))
    def check(text):
        for parse in (doctor.parse_chronyc_tracking, doctor.parse_timedatectl):
            r = parse(text)
            assert r is None or r.state in ("synced", "unsynced")

    check()
