"""The relay's CD-1.1/TCP side (relay/tcp.py, docs/relay.md "CD-1.1 over TCP").

* the ``[cd11]`` configuration: schema, cross-checks naming file and key, every key documented;
* the explicit legacy-station policy (unsigned, or signed with keys we do not hold) on the real
  LBTB frame, and that it never lets a key we *do* hold go unverified;
* relay A's forwarding stage -> the fault proxy (``hil/tcpproxy.py``: drops, delays, resets,
  half-open connections) -> relay B's TCP consumer: an accelerated hour (360 frames per station)
  arrives complete, byte-identical, without duplicates, with resends after the resets.  The
  same with ``IMS_TCP_LONG=1`` runs several hours of frames per station.

Both relays run in this process without MQTT (the TCP side needs only the relay's core); the
full ``relay run`` with Mosquitto is in tests/integration/test_relay_tcp.py.
"""

from __future__ import annotations

import os
import sys
import time
import time
from pathlib import Path

import pytest

from ims_station import cd11
from ims_station.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.integration.harness import (  # noqa: E402
    FrameFactory,
    archived_sequences,
    frame_times,
    sha256,
    wait_for,
    write_keys,
)

SAMPLES = ROOT.parent / "shared" / "samples" / "cd11"


def write_config(tmp: Path, cd11_text: str) -> Path:
    (tmp / "trust").mkdir(exist_ok=True)
    p = tmp / "relay.toml"
    p.write_text('[relay]\ndata_dir = "data"\ntrust_dir = "trust"\nname = "IDC"\n\n'
                 '[[broker]]\nhost = "127.0.0.1"\nport = 1883\n\n' + cd11_text)
    return p


FULL = """
[cd11.consumer]
listen = "0.0.0.0:8000"
data_listen = "0.0.0.0:8001"
advertise = "192.0.2.10"
heartbeat_timeout_s = 120.0
acknack_interval_s = 50.0
handshake_timeout_s = 30.0
frame_timeout_s = 60.0
write_timeout_s = 30.0
max_frame_size = 1048576
max_gaps = 4000
max_connections = 256
buffer_bytes = 262144

[[cd11.consumer.station]]
name = "LBTB"
allowed_addresses = ["192.0.2.0/24"]
require_signatures = false
accept_unknown_keys = true

[[cd11.consumer.station]]
name = "STA01"

[[cd11.forward]]
name = "idc"
consumer = "idc.example.org:8000"
stations = ["STA01", "LBTB"]
acknack_interval_s = 50.0
heartbeat_timeout_s = 120.0
backoff_base_s = 1.0
backoff_max_s = 60.0
backfill_frames = 8640
max_frame_size = 1048576
server_name = "idc.example.org"
"""


def test_cd11_config_loads_and_builds_the_station_policies(tmp_path):
    from ims_station.relay.cli import build_relay, load_config

    conf = load_config(write_config(tmp_path, FULL))
    c = conf["cd11"]
    assert c["consumer"]["listen"] == ("0.0.0.0", 8000) and c["consumer"]["data_listen"] == ("0.0.0.0", 8001)
    assert set(c["consumer"]["station"]) == {"LBTB", "STA01"}
    assert c["forward"][0]["consumer"] == ("idc.example.org", 8000)
    relay = build_relay(conf)
    try:
        pol = relay.core.verifier.station_policies
        assert set(pol) == {"LBTB"} and not pol["LBTB"].require_signatures and pol["LBTB"].accept_unknown_keys
        assert relay.tcp_stations == {"LBTB", "STA01"}
    finally:
        relay.core.close()


@pytest.mark.parametrize("text, key, reason", [
    (FULL.replace('name = "STA01"', 'name = "LBTB"'), "cd11.consumer.station[1].name", "listed twice"),
    (FULL.replace('advertise = "192.0.2.10"', 'advertise = "relay.example.org"'), "cd11.consumer.advertise",
     "IPv4"),
    (FULL.replace('allowed_addresses = ["192.0.2.0/24"]', 'allowed_addresses = ["192.0.2.0/33"]'),
     "cd11.consumer.station[0].allowed_addresses[0]", "192.0.2.0/33"),
    (FULL.replace('server_name = "idc.example.org"', 'tls_cert = "c.pem"'), "cd11.forward[0].tls_cert",
     "together"),
    (FULL.replace("backoff_max_s = 60.0", "backoff_max_s = 0.5"), "cd11.forward[0].backoff_max_s", "backoff_base_s"),
    (FULL.replace("max_gaps = 4000", "max_gaps = 0"), "cd11.consumer.max_gaps", ""),
    (FULL.replace('require_signatures = false', 'require_signature = false'), "cd11.consumer.station", ""),
])
def test_cd11_config_errors_name_file_key_and_reason(tmp_path, text, key, reason):
    from ims_station.relay.cli import load_config

    path = write_config(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert str(path) in msg and key in msg and reason in msg, msg


def test_an_mqtt_only_config_is_unchanged(tmp_path):
    from ims_station.relay.cli import build_tcp, load_config

    conf = load_config(write_config(tmp_path, ""))
    assert conf["cd11"] is None and build_tcp(conf, None) is None


def test_every_cd11_key_is_documented():
    from ims_station.relay.cli import CD11_SCHEMA

    doc = (ROOT / "docs" / "relay.md").read_text()
    section = doc.split("## CD-1.1 over TCP")[1].split("\n## ")[0]
    props = CD11_SCHEMA["properties"]
    keys = ([k for k in props["consumer"]["properties"] if k != "station"] + list(props["consumer"]["properties"]["station"]["items"]
            ["properties"]) + list(props["forward"]["items"]["properties"]))
    import re

    for key in keys:
        assert re.search(rf"^#? ?{key} = ", section, re.M), key
    assert "[[cd11.consumer.station]]" in section and "[[cd11.forward]]" in section


def test_legacy_policy_accepts_only_keys_we_do_not_hold(tmp_path):
    """The real LBTB frame is signed with DSA keys (ids 1 and 8-digit subframe ids) that no trust
    store of ours holds: rejected by default, accepted *unverified* and counted only under the
    station's explicit policy; the same policy still rejects a frame whose key we do hold but
    whose signature does not verify."""
    from ims_station.auth import TrustStore, export_public, generate_key
    from ims_station.relay.verify import StationPolicy, Verified, Verifier

    raw = (SAMPLES / "real_LBTB_seq9720700.cd11").read_bytes()
    trust_dir = tmp_path / "trust"
    generate_key("ed25519", 1, tmp_path / "ks", station="LBTB", valid_from="2000-01-01T00:00:00Z")
    (tmp_path / "none").mkdir()
    trust_empty = TrustStore.load(tmp_path / "none")
    assert Verifier(trust_empty).check("LBTB", raw).reason == "frame_signature"
    v = Verifier(trust_empty, station_policies={"LBTB": StationPolicy(False, True)}).check("LBTB", raw)
    assert isinstance(v, Verified) and v.unverified and v.unverified[0] == "frame (key 1)"
    assert len(v.unverified) == 1 + len(v.frame.subframes)
    # The exception is the named station's alone.
    assert Verifier(trust_empty, station_policies={"OTHER": StationPolicy(False, True)}).check(
        "LBTB", raw).reason == "frame_signature"
    # A key the trust store holds (id 1, as in the frame) must verify, whatever the policy.
    export_public(tmp_path / "ks", 1, trust_dir)
    r = Verifier(TrustStore.load(trust_dir), station_policies={"LBTB": StationPolicy(False, True)}).check("LBTB", raw)
    assert r.reason == "frame_signature", r


# -- relay A -> proxy -> relay B ----------------------------------------------------------------------
def in_process_relay(root: Path, name: str, trust, stores=None):
    """A relay whose MQTT session is never started (the TCP side drives the core through its own
    worker); on SQLite, or on *stores*' backend (tests/relay/conftest.py)."""
    from ims_station.broker import BrokerConfig
    from ims_station.relay.archive import FileArchive
    from ims_station.relay.relay import Relay
    from ims_station.relay.state import SqliteStateStore

    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    if stores is None:
        state, archive = SqliteStateStore(d / "state.sqlite"), FileArchive(d / "archive", writer=name)
    else:
        state, archive = stores.state(d / "state.sqlite"), stores.archive(d / "archive", writer=name)
    return Relay(BrokerConfig(host="127.0.0.1", port=1), trust, state, archive, name="IDC", instance=name)


class Proxies:
    """Two ``hil/tcpproxy.py`` fault proxies (well-known port and data port) on a loop thread."""

    def __init__(self, manager: tuple[str, int], data: tuple[str, int], seed: int) -> None:
        import asyncio
        import threading

        from ims_station.hil.tcpproxy import FaultProxy

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

        async def start():
            return (await FaultProxy(manager, seed=seed).start(), await FaultProxy(data, seed=seed + 1).start())

        self.manager, self.data = self.call(start())

    def call(self, coro):
        import asyncio

        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def do(self, fn, *args) -> None:
        self.loop.call_soon_threadsafe(fn, *args)

    def stats(self) -> dict:
        return {"manager": dict(vars(self.manager.stats)), "data": dict(vars(self.data.stats))}

    def stop(self) -> None:
        async def stop():
            import asyncio

            await self.manager.stop()
            await self.data.stop()
            # Connections left half-open wait forever by design: end them with the loop.
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in rest:
                t.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        self.call(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def test_forwarding_through_a_faulty_link_arrives_complete_and_byte_identical(tmp_path):
    """Must-show 1: relay A's providers -> tcpproxy (drops, delays, resets, half-open) -> relay B."""
    from ims_station.auth import TrustStore
    from ims_station.relay.tcp import TcpSide
    from tests.conftest import free_port

    long_run = bool(os.environ.get("IMS_TCP_LONG"))
    stations = ["STA01", "STA02", "STA03"] if not long_run else [f"ST{i:03d}" for i in range(10)]
    n = 360 if not long_run else 360 * 6          # one hour (six hours) of 10-s frames per station
    keys = write_keys(tmp_path, stations)
    trust = TrustStore.load(tmp_path / "trust")
    port, data_port = free_port(), free_port()
    proxies = Proxies(("127.0.0.1", port), ("127.0.0.1", data_port), seed=7)
    b = in_process_relay(tmp_path, "B", trust)
    bside = TcpSide(b, {"consumer": {"listen": ("127.0.0.1", port), "data_listen": ("127.0.0.1", data_port),
                                     "advertise": proxies.data.address, "heartbeat_timeout_s": 2.5,
                                     "station": {s: {"name": s} for s in stations}}, "forward": []},
                    data_dir=tmp_path / "B", relay_conf={"name": "IDC", "acknack_interval_s": 0.5}).start()
    a = in_process_relay(tmp_path, "A", trust)
    aside = None
    try:
        aside = TcpSide(a, {"consumer": None, "forward": [
            {"name": "b", "consumer": proxies.manager.address, "stations": stations, "acknack_interval_s": 2.0,
             "heartbeat_timeout_s": 1.0, "backoff_base_s": 0.05, "backoff_max_s": 0.3}]},
            data_dir=tmp_path / "A", relay_conf={"name": "IDC"}).start()
        times = frame_times(n)
        sent: dict[str, dict[int, str]] = {s: {} for s in stations}
        factories = {s: FrameFactory(s, keys[s], 100 * (i + 1), rate=20.0) for i, s in enumerate(stations)}
        t_start = time.monotonic()
        # Faults at fixed points of the stream (so each kind surely happens), random ones besides.
        faults = {n // 8: (proxies.data.reset,), n // 4: (proxies.data.half_open, 0.3),
                  3 * n // 8: (proxies.data.drop, 0.2, "up"), n // 2: (proxies.data.delay, 0.05, 0.5),
                  5 * n // 8: (proxies.manager.reset,), 3 * n // 4: (proxies.data.reset,),
                  7 * n // 8: (proxies.data.drop, 0.2, "down")}
        proxies.do(proxies.data.random_faults, 0.5)
        futures = []
        for i, t in enumerate(times):           # interleaved, as live stations arrive
            if i in faults:
                proxies.do(*faults[i])
            for s in stations:
                seq, raw = factories[s].frame(t)
                sent[s][seq] = sha256(raw)
                futures.append(aside.ingest.submit(s, [raw]))
            if i % 8 == 7:                      # a few seconds for the hour: the faults land mid-stream
                for f in futures:
                    assert [o.result for o in f.result(30)] == ["archived"]
                futures = []
                time.sleep(0.01)
        for f in futures:
            assert [o.result for o in f.result(30)] == ["archived"]
        t_fed = time.monotonic()

        def complete() -> bool:
            return all(len(archived_sequences(tmp_path / "B" / "archive", f"{s}:0")) == n for s in stations)

        wait_for(complete, 180 if long_run else 60, "relay B's archive to be complete",
                 on_timeout=lambda: f"A: {aside.stats()}\nB: {bside.stats()}\nproxy: {proxies.stats()}")
        t_complete = time.monotonic()
        # ... and A has B's acknack of all of it (persisted within a second, and at stop)
        def acked(fs: dict, s: str) -> bool:
            return (fs["acked_lowest"], fs["acked_highest"], fs["acked_gaps"]) == (min(sent[s]), max(sent[s]), 0)

        wait_for(lambda: all(acked(aside.stats()["forward"]["b"]["frame_sets"][f"{s}:0"], s) for s in stations),
                 30, "B's acknacks of everything at relay A")
        fw = aside.stats()["forward"]["b"]["frame_sets"]
        ps = proxies.stats()
    finally:
        if aside is not None:
            aside.stop()
        proxies.stop()
        bside.stop()
    for s in stations:
        got = archived_sequences(tmp_path / "B" / "archive", f"{s}:0")   # asserts: no seq twice
        assert got == sent[s], s
    f = ps["data"]["faults"]                   # every kind injected (how many links each hit varies)
    assert f["reset"] >= 2 and f["half_open"] >= 1 and f["drop"] >= 2 and f["delay"] >= 1, ps
    assert ps["data"]["resets"] + ps["manager"]["resets"] > 0, ps
    assert sum(f["resent"] for f in fw.values()) > 0, fw       # gaps after the faults refilled via acknack
    assert sum(f["reconnects"] for f in fw.values()) > 0, fw
    # What B received more than once was counted as a duplicate and not stored again.
    assert b.core.counters.archived == n * len(stations)
    assert b.core.counters.quarantined == 0, b.core.counters.rejected
    print(f"fed in {t_fed - t_start:.1f} s, complete after {t_complete - t_fed:.1f} s more; "
          f"forwarded {n * len(stations)} frames; resent {sum(f['resent'] for f in fw.values())}, "
          f"reconnects {sum(f['reconnects'] for f in fw.values())}, B duplicates {b.core.counters.duplicates}; "
          f"proxy {ps}")
    # The target's acknowledgement is persisted (a restart resumes from it).
    from ims_station.relay.tcp import ForwardState

    st = ForwardState(tmp_path / "A" / "forward.sqlite")
    for s in stations:
        assert st.acknack("b", f"{s}:0") == (min(sent[s]), max(sent[s]), []), s
    st.close()
    a.core.close()
    b.core.close()


def test_a_restarted_forwarder_resends_nothing_the_target_acknowledged(tmp_path, stores):
    """On both state/archive backends (the provider's reads are the archive index's range
    queries).  The forwarding stage's floor and the target's acknack survive a restart of relay A: the
    new providers announce the archived range, relay B's acknack covers all but the frame archived
    while forwarding was down, and that frame is the only one sent (from the archive)."""
    from ims_station.auth import TrustStore
    from ims_station.relay.tcp import TcpSide

    stations = ["STA01"]
    keys = write_keys(tmp_path, stations)
    trust = TrustStore.load(tmp_path / "trust")
    b = in_process_relay(tmp_path, "B", trust, stores)
    bside = TcpSide(b, {"consumer": {"listen": ("127.0.0.1", 0), "data_listen": ("127.0.0.1", 0),
                                     "station": {"STA01": {"name": "STA01"}}}, "forward": []},
                    data_dir=tmp_path / "B", relay_conf={"name": "IDC", "acknack_interval_s": 0.2}).start()
    target = {"name": "b", "consumer": bside.manager.address, "stations": stations, "acknack_interval_s": 0.2,
              "backoff_base_s": 0.05, "backoff_max_s": 0.2}
    factory = FrameFactory("STA01", keys["STA01"], 100, rate=20.0)
    frames = [factory.frame(t) for t in frame_times(21)]
    a = in_process_relay(tmp_path, "A", trust, stores)
    try:
        aside = TcpSide(a, {"consumer": None, "forward": [target]}, data_dir=tmp_path / "A",
                        relay_conf={"name": "IDC"}).start()
        for seq, raw in frames[:20]:
            aside.ingest.submit("STA01", [raw]).result(10)
        fs = "STA01:0"
        wait_for(lambda: aside.stats()["forward"]["b"]["frame_sets"][fs]["acked_highest"] == frames[19][0], 20,
                 "B's acknack covering the 20 frames")
        aside.stop()
        dups_before = b.core.counters.duplicates     # (resends racing live frames while connecting)
        # A frame archived while forwarding is down (straight into A's core) ...
        from ims_station.relay.core import Incoming

        assert [o.result for o in a.core.process([Incoming("ims/STA01/cd11", frames[20][1])])] == ["archived"]
        # ... then relay A's forwarding restarts (new state in memory, same data_dir).
        aside = TcpSide(a, {"consumer": None, "forward": [target]}, data_dir=tmp_path / "A",
                        relay_conf={"name": "IDC"}).start()
        wait_for(lambda: len(b.core.archive.frame_keys("STA01")) == 21, 20, "B complete")
        wait_for(lambda: aside.stats()["forward"]["b"]["frame_sets"][fs]["acked_highest"] == frames[20][0], 20,
                 "B's acknack of the new frame")
        st = aside.stats()["forward"]["b"]["frame_sets"][fs]
        aside.stop()
    finally:
        bside.stop()
    assert st["resent"] == 1 and st["sent"] == 0, st      # the one frame B lacked, from the archive
    assert st["floor"] == frames[0][0] - 8640
    assert b.core.counters.duplicates == dups_before and b.core.counters.archived == 21
    a.core.close()
    b.core.close()


def test_the_ingest_outlives_a_link_that_went_away_while_its_frames_were_stored(tmp_path):
    """A link closed while its delivery waits cancels the delivery's future; the ingest thread
    stores the frames all the same and goes on serving the other links."""
    from ims_station.auth import TrustStore
    from ims_station.relay.tcp import TcpIngest

    keys = write_keys(tmp_path, ["STA01"])
    relay = in_process_relay(tmp_path, "A", TrustStore.load(tmp_path / "trust"))
    factory = FrameFactory("STA01", keys["STA01"], 100, rate=20.0)
    (s1, f1), (s2, f2) = [factory.frame(t) for t in frame_times(2)]
    ingest = TcpIngest(relay).start()
    try:
        with relay.core_lock:                  # hold the core: the first delivery waits ...
            gone = ingest.submit("STA01", [f1])
            gone.cancel()                      # ... and its link goes away
        assert [o.result for o in ingest.submit("STA01", [f2]).result(10)] == ["archived"]
    finally:
        ingest.stop()
    assert relay.core.archive.frame_keys("STA01") == [("STA01:0", s1), ("STA01:0", s2)]
    relay.core.close()


def test_forwarding_over_tls(tmp_path):
    """TLS on both roles from the [cd11] settings: B's consumer with a certificate, A's forwarding
    verifying it against the CA; the frames arrive, and a peer speaking plain TCP gets nothing."""
    import socket

    from ims_station.auth import TrustStore
    from ims_station.relay.tcp import TcpSide
    from tests.integration.tlsconf import make_ca_and_server_cert

    ca, cert, key = make_ca_and_server_cert(tmp_path)
    keys = write_keys(tmp_path, ["STA01"])
    trust = TrustStore.load(tmp_path / "trust")
    b = in_process_relay(tmp_path, "B", trust)
    bside = TcpSide(b, {"consumer": {"listen": ("127.0.0.1", 0), "data_listen": ("127.0.0.1", 0),
                                     "tls_cert": str(cert), "tls_key": str(key), "handshake_timeout_s": 1.0,
                                     "station": {"STA01": {"name": "STA01"}}}, "forward": []},
                    data_dir=tmp_path / "B", relay_conf={"name": "IDC", "acknack_interval_s": 0.5}).start()
    a = in_process_relay(tmp_path, "A", trust)
    aside = TcpSide(a, {"consumer": None, "forward": [
        {"name": "b", "consumer": ("localhost", bside.manager.address[1]), "stations": ["STA01"],
         "tls_ca": str(ca), "acknack_interval_s": 0.5, "backoff_base_s": 0.05, "backoff_max_s": 0.2}]},
        data_dir=tmp_path / "A", relay_conf={"name": "IDC"}).start()
    try:
        frames = [FrameFactory("STA01", keys["STA01"], 100, rate=20.0).frame(t) for t in frame_times(5)]
        for seq, raw in frames:
            aside.ingest.submit("STA01", [raw]).result(10)
        wait_for(lambda: archived_sequences(tmp_path / "B" / "archive", "STA01:0") ==
                 {seq: sha256(raw) for seq, raw in frames}, 20, "B to hold the frames sent over TLS",
                 on_timeout=lambda: f"A: {aside.stats()}\nB: {bside.stats()}")
        with socket.create_connection(bside.manager.address) as s:       # plain text on a TLS port
            s.sendall(cd11.ConnectionRequest(creator="STA01", station="STA01").to_bytes())
            s.settimeout(10)
            assert b"\x00\x00\x00\x02" not in s.recv(4096)                 # never a connection response
    finally:
        aside.stop()
        bside.stop()
    a.core.close()
    b.core.close()


def test_relay_check_reports_a_cd11_tls_key_others_can_read(tmp_path):
    from ims_station.doctor import Probes, relay_checks

    key = tmp_path / "relay.key"
    key.write_text("-----BEGIN PRIVATE KEY-----\n" + "A" * 64 + "\n-----END PRIVATE KEY-----\n")
    key.chmod(0o644)
    text = FULL.replace('server_name = "idc.example.org"', 'tls_ca = "ca.crt"').replace(
        "buffer_bytes = 262144", 'buffer_bytes = 262144\ntls_cert = "relay.crt"\ntls_key = "relay.key"')
    found, _ = relay_checks(str(write_config(tmp_path, text)), Probes(), offline=True)
    bad = [x for x in found if x.status != "ok" and "cd11.consumer.tls_key" in str(vars(x))]
    assert bad, [vars(x) for x in found]


def test_tcp_stations_get_no_mqtt_acknacks(tmp_path):
    """A station configured under [cd11.consumer] is acknowledged on its TCP link; the MQTT side
    publishes acknacks for the other stations only."""
    from ims_station.auth import TrustStore
    from ims_station.relay.core import Incoming

    keys = write_keys(tmp_path, ["STA01", "STA02"])
    relay = in_process_relay(tmp_path, "A", TrustStore.load(tmp_path / "trust"))
    relay.tcp_stations = {"STA01"}
    t = frame_times(1)[0]
    items = [Incoming(f"ims/{s}/cd11", FrameFactory(s, keys[s], 100 * (i + 1), rate=20.0).frame(t)[1])
             for i, s in enumerate(["STA01", "STA02"])]
    assert [o.result for o in relay.core.process(items)] == ["archived", "archived"]

    class Client:
        published: list = []

        def publish(self, topic, payload, qos=0, retain=False):
            self.published.append(topic)

    client = Client()
    relay._send_acknacks(client)
    assert client.published == ["ims/STA02/acknack"]
    relay.core.close()
