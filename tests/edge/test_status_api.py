"""The gateway's local status API (ims_station/statusapi.py, ims_station/metrics.py, docs/status-api.md).

Issue 11, must-show 3: ``/metrics`` parses with the Prometheus text parser and carries the
counters of the state of health -- ports and link, streams, framer, trigger stage, outbox, uplink,
keys -- each equal to the value in the status document (``Station.status()``) it was read from.
The API is served from an assembled station (the production :func:`assemble`, a ``sim://`` HIL
board) on a temporary Unix socket and a loopback port; ``edge run`` serves it while running and
removes its socket at exit; the socket is mode 0660; a non-loopback address is refused unless
configured.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ims_station import statusapi
from ims_station.errors import ConfigError
from ims_station.metrics import STATION_METRICS, StationCollector

from ..conftest import free_port


@pytest.fixture(scope="module")
def station(tmp_path_factory):
    """An assembled station (``edge/station.assemble`` from its station file, with a trigger stage
    and an uplink that is never started), run for 40 simulated seconds."""
    from ims_station.broker import BrokerConfig
    from ims_station.demo import SIM_CHANNELS, make_keys, write_station_file
    from ims_station.edge.config import load_station_config
    from ims_station.edge.station import assemble
    from ims_station.hil.sim import Simulation, register, unregister

    root = tmp_path_factory.mktemp("status")
    start = 1_780_000_000
    keys, _ = make_keys(root, ["MET1"], [c for _, c in SIM_CHANNELS], valid_from=start)
    k = keys["MET1"]
    sim = Simulation(board="sim", seed=3, key=k.board_key, start_utc=start)
    name = f"status-{os.getpid()}"
    register(name, sim)
    f = write_station_file(root / "MET1" / "station.toml", "MET1", k, sim_name=name, board_id=sim.board.board_id,
                           baud=sim.baud, broker=BrokerConfig(host="127.0.0.1", port=9))
    with open(f, "a") as fh:
        fh.write("\n[trigger]\n")
    st = assemble(load_station_config(f), clock=sim.clock)
    try:
        while sim.clock.monotonic() < 40:
            st.step()
        yield st
    finally:
        st.close()
        unregister(name)


@pytest.fixture
def api(station, tmp_path):
    srv = statusapi.StatusServer(station.status, StationCollector(station.status), statusapi.station_health)
    srv.serve_unix(tmp_path / "status.sock")
    srv.serve_tcp("127.0.0.1", 0)
    yield srv
    srv.close()


def scrape(**where) -> dict[tuple[str, tuple], float]:
    code, body = statusapi.fetch("/metrics", **where)
    assert code == 200
    out = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_parse_and_carry_the_soh_counters_equal_to_the_status_document(station, api):
    doc = json.loads(json.dumps(station.status(), default=str))
    by_socket = scrape(socket_path=api.socket_path)
    by_tcp = scrape(url=f"http://127.0.0.1:{api.address[1]}")
    assert by_socket == by_tcp
    sta = {"station": "XX.MET1"}
    port = dict(sta, port="board")
    p = doc["ports"][0]
    gw, fr, ob, up = doc["gateway"], doc["gateway"]["framer"], doc["outbox"], doc["uplink"]

    def m(name, **labels):
        return by_socket[(name, tuple(sorted(labels.items())))]

    assert p["link"]["packets_ok"] > 0 and fr["frames"] > 0 and ob["frames"] > 0     # a station that ran
    # ports / link
    assert m("ims_station_port_connected", **port) == 1
    for k in ("packets_ok", "crc_errors", "hmac_errors", "packets_recovered", "packets_unrecoverable",
              "samples_delivered"):
        assert m(f"ims_station_link_{k}_total", **port) == p["link"][k], k
    assert m("ims_station_port_bytes_in_total", **port) == p["port"]["bytes_in"]
    assert m("ims_station_link_gaps_total", **port) == p["streams"]["link_gaps"]
    # streams, per channel
    for code, s in p["streams"]["channels"].items():
        assert m("ims_station_channel_samples_total", **port, channel=code) == s["samples"]
        assert m("ims_station_channel_gaps_total", **port, channel=code) == s["gaps"]
        assert m("ims_station_channel_rate_hertz", **port, channel=code) == s["rate_mhz"] / 1000
        assert m("ims_station_channel_next_sample_timestamp_seconds", **port, channel=code) == s["next_us"] / 1e6
    # framer, gateway
    for k in ("frames", "late_samples", "partial_frames", "samples", "alarms"):
        assert m(f"ims_station_framer_{k}_total", **sta) == fr[k], k
    assert m("ims_station_framer_open_windows", **sta) == fr["open_windows"]
    assert m("ims_station_gateway_blocks_total", **sta) == gw["blocks"]
    assert m("ims_station_gateway_unacknowledged_blocks", **sta) == gw["unacknowledged_blocks"]
    # trigger stage
    tr = gw["stages"]["trigger"]
    assert m("ims_station_trigger_events_total", **sta) == tr["events"]
    assert m("ims_station_trigger_channels", **sta) == tr["channels"] == 4
    # outbox depth, oldest, alarms
    assert m("ims_station_outbox_frames", **sta) == ob["frames"]
    assert m("ims_station_outbox_bytes", **sta) == ob["bytes"]
    assert m("ims_station_outbox_oldest_age_seconds", **sta) == ob["oldest_age_s"]
    assert m("ims_station_outbox_alarms_total", **sta) == ob["alarms"]
    assert m("ims_station_outbox_evicted_frames_total", **sta) == ob["evicted"]
    # uplink
    assert m("ims_station_uplink_connected", **sta) == 0
    for k in ("published", "connect_failures", "frames_acked", "acknacks"):
        assert m(f"ims_station_uplink_{k}_total", **sta) == up[k], k
    # keys in use (pinned keys: no end, so no days-to-expiry sample rather than a wrong number)
    assert {dict(lab)["key_id"] for (n, lab) in by_socket if n == "ims_station_key_in_use"} == \
        {str(i) for i in fr["keys"]["key_ids"]}
    assert fr["keys"]["key_expires_in_days"] is None
    assert not any(n == "ims_station_key_expires_in_days" for n, _ in by_socket)
    # Every sample is one the documentation's table lists (tests/test_status_api_doc.py checks the table).
    declared = {x.exposed for x in STATION_METRICS}
    assert {n for n, _ in by_socket} <= declared


def test_key_expiry_appears_as_days():
    doc = {"station": "XX.A", "gateway": {"framer": {"keys": {"key_ids": [7], "key_expires_in_days": 12.5}}}}
    reg_doc = {f.name: f for f in StationCollector(lambda: doc).collect()}
    assert reg_doc["ims_station_key_expires_in_days"].samples[0].value == 12.5
    # Missing components give no samples at all (no uplink, no ports, no trigger).
    assert set(reg_doc) == {"ims_station_key_expires_in_days", "ims_station_key_in_use"}


def test_status_is_the_station_status_document(station, api):
    code, body = statusapi.fetch("/status", socket_path=api.socket_path)
    assert code == 200
    assert json.loads(body) == json.loads(json.dumps(station.status(), default=str))


def test_health_says_degraded_with_the_reasons(station, api):
    code, body = statusapi.fetch("/health", socket_path=api.socket_path)
    # The fixture's uplink was never started: degraded, and why.
    assert code == 503 and json.loads(body) == {"status": "degraded",
                                                "problems": ["uplink to 127.0.0.1:9 disconnected"]}
    assert statusapi.StatusClient(url=f"http://127.0.0.1:{api.address[1]}").health()["status"] == "degraded"
    assert statusapi.station_health({"ports": [{"name": "p", "connected": True}], "uplink": None}) == []
    assert statusapi.station_health({"ports": [{"name": "p", "connected": False}]}) == ["port p disconnected"]


def test_unknown_paths_and_a_failing_provider_are_answered_not_raised(tmp_path):
    def broken():
        raise RuntimeError("boom")

    with statusapi.StatusServer(broken, StationCollector(broken), statusapi.station_health) as srv:
        srv.serve_unix(tmp_path / "s.sock")
        assert statusapi.fetch("/nothing", socket_path=srv.socket_path)[0] == 404
        code, body = statusapi.fetch("/status", socket_path=srv.socket_path)
        assert code == 500 and b"boom" in body
        assert statusapi.fetch("/metrics", socket_path=srv.socket_path)[0] == 500
        assert srv.errors == 2


def test_malformed_requests_are_refused_and_the_server_serves_on(tmp_path):
    srv = statusapi.StatusServer(lambda: {"ok": 1}, StationCollector(lambda: {}), statusapi.station_health)
    with srv:
        srv.serve_unix(tmp_path / "s.sock")
        for junk in (b"\x00\xff\xfe garbage\r\n\r\n", b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n",
                     b"GET /status HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n", b"POST /actions/x HTTP/1.1\r\n"):
            with socket.socket(socket.AF_UNIX) as c:
                c.settimeout(5)
                c.connect(str(srv.socket_path))
                c.sendall(junk)
                c.shutdown(socket.SHUT_WR)
                answer = c.recv(200)
            # An error status (http.server answers a request line it cannot parse without one: HTTP/0.9).
            assert answer == b"" or re.search(rb"(^HTTP/1\.\d |Error code: )4\d\d", answer), answer
        assert statusapi.fetch("/status", socket_path=srv.socket_path) == (200, b'{"ok": 1}\n')


def test_actions_are_an_extension_point_served_on_the_unix_socket_only(tmp_path):
    import http.client

    seen = []
    srv = statusapi.StatusServer(lambda: {}, StationCollector(lambda: {}), statusapi.station_health,
                                 actions={"echo": lambda arg: seen.append(arg) or {"ok": True}})
    with srv:
        srv.serve_unix(tmp_path / "s.sock")
        host, port = srv.serve_tcp("127.0.0.1", 0)

        def post(conn, path):
            conn.request("POST", path, body=b'{"x": 1}', headers={"Content-Length": "8"})
            r = conn.getresponse()
            return r.status, r.read()

        assert post(http.client.HTTPConnection(host, port, timeout=5), "/actions/echo")[0] == 403
        assert post(http.client.HTTPConnection(host, port, timeout=5), "/actions/nope")[0] == 404
        assert post(statusapi._UnixHTTPConnection(str(srv.socket_path), 5), "/actions/echo") == (200, b'{"ok": true}\n')
        assert seen == [{"x": 1}]
        # The client a console uses: the same over the socket, refused without one.
        assert statusapi.StatusClient(socket_path=srv.socket_path).action("echo", {"y": 2}) == {"ok": True}
        assert seen[-1] == {"y": 2}
        with pytest.raises(statusapi.StatusAPIError, match="404"):
            statusapi.StatusClient(socket_path=srv.socket_path).action("nope")
        with pytest.raises(statusapi.StatusAPIError, match="only on the Unix socket"):
            statusapi.StatusClient(url=f"http://{host}:{port}").action("echo")


def test_the_socket_is_mode_0660_a_stale_one_is_replaced_a_live_one_is_not(tmp_path):
    path = tmp_path / "s.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))          # a socket file nobody listens on: left by a killed gateway
    stale.close()
    with statusapi.StatusServer(lambda: {}, StationCollector(lambda: {}), statusapi.station_health) as srv:
        srv.serve_unix(path)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
        other = statusapi.StatusServer(lambda: {}, StationCollector(lambda: {}), statusapi.station_health)
        with pytest.raises(OSError, match="another process"):
            other.serve_unix(path)
        assert statusapi.fetch("/status", socket_path=path) == (200, b"{}\n")
    assert not path.exists()
    path.write_text("not a socket")
    with pytest.raises(OSError, match="not a socket"):
        statusapi.StatusServer(lambda: {}, StationCollector(lambda: {}), statusapi.station_health).serve_unix(path)
    assert path.read_text() == "not a socket"


def test_a_port_in_use_or_a_bad_socket_path_leaves_the_gateway_running_without_that_endpoint(tmp_path, caplog):
    from types import SimpleNamespace

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        cfg = SimpleNamespace(raw={"status": {"listen": f"127.0.0.1:{busy.getsockname()[1]}"}}, file=tmp_path / "s.toml",
                              data_dir=tmp_path, network="XX", code="A")
        st = SimpleNamespace(config=cfg, status=lambda: {"station": "XX.A"})
        api = statusapi.serve_station(st)
        try:
            assert api is not None and api.socket_path == tmp_path / "status.sock" and api.address is None
            assert "status API not served on 127.0.0.1" in caplog.text
        finally:
            api.close()
    cfg.raw = {"status": {"socket": str(tmp_path / ("x" * 120) / "s.sock")}}
    with pytest.raises(ConfigError, match="longer than 107 bytes"):
        statusapi.settings_from_table(cfg.raw["status"], file=cfg.file, data_dir=tmp_path)
    assert statusapi.serve_station(st) is None and "status API not started" in caplog.text
    cfg.raw = {"status": {"enabled": False}}
    assert statusapi.serve_station(st) is None


def test_status_table_defaults_and_loopback_rule(tmp_path):
    f = tmp_path / "station.toml"
    s = statusapi.settings_from_table(None, file=f, data_dir=tmp_path / "data")
    assert s == statusapi.StatusSettings(True, tmp_path / "data" / "status.sock", None, False)
    s = statusapi.settings_from_table({"socket": "run/st.sock", "listen": "localhost:9101"}, file=f, data_dir="d")
    assert s.socket == tmp_path / "run" / "st.sock" and s.listen == ("127.0.0.1", 9101)
    assert statusapi.settings_from_table({"socket": "", "listen": "[::1]:9"}, file=f, data_dir="d").socket is None
    for listen, reason in [("0.0.0.0:9101", "not a loopback"), ("192.168.1.5:80", "not a loopback"),
                           ("example.org:80", "not an IP address"), ("9101", "not HOST:PORT")]:
        with pytest.raises(ConfigError) as ei:
            statusapi.settings_from_table({"listen": listen}, file=f, data_dir="d")
        assert (ei.value.file, ei.value.key) == (str(f), "status.listen") and reason in ei.value.reason
    ok = statusapi.settings_from_table({"listen": "0.0.0.0:9101", "allow_remote": True}, file=f, data_dir="d")
    assert ok.listen == ("0.0.0.0", 9101)


def test_the_station_file_refuses_a_non_loopback_address_at_load(tmp_path):
    from ims_station.config import write_secret_file
    from ims_station.edge.config import load_station_config

    write_secret_file(tmp_path / "b.key", bytes(range(32)))
    f = tmp_path / "station.toml"
    base = ('[station]\ncode = "XS01"\nnetwork = "IM"\n[[ports]]\nurl = "sim://x"\nkey_file = "b.key"\n'
            'channels = { 0 = "00.BHZ" }\n[status]\n')
    f.write_text(base + 'listen = "10.0.0.1:9101"\n')
    with pytest.raises(ConfigError) as ei:
        load_station_config(f)
    assert ei.value.key == "status.listen"
    f.write_text(base + 'listen = "127.0.0.1:9101"\nsocket = "st.sock"\n')
    assert load_station_config(f).raw["status"]["socket"] == "st.sock"
    f.write_text(base + 'colour = "red"\n')
    with pytest.raises(ConfigError) as ei:
        load_station_config(f)
    assert ei.value.key == "status.colour"


def _mode(path: Path) -> int | None:
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return None


def test_edge_run_serves_while_running_and_removes_its_socket_at_exit(tmp_path, capsys):
    from ims_station.cli import main
    from ims_station.config import write_secret_file

    from .fakeboard import KEY

    master, slave = os.openpty()
    port = free_port()
    try:
        write_secret_file(tmp_path / "b.key", KEY)
        cfg = tmp_path / "station.toml"
        cfg.write_text(f'[station]\ncode = "XS01"\nnetwork = "IM"\ndata_dir = "spool"\n\n'
                       f'[[ports]]\nurl = "{os.ttyname(slave)}"\nkey_file = "b.key"\nboard_id = 7\n'
                       f'channels = {{ 0 = "00.BHZ" }}\n\n[status]\nlisten = "127.0.0.1:{port}"\n')
        sock = tmp_path / "spool" / "status.sock"
        proc = subprocess.Popen([sys.executable, "-m", "ims_station", "edge", "run", "--config", str(cfg)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 30
            # The socket is bound owner-only and then opened to the group (statusapi.serve_unix):
            # wait for the mode it settles at, not for the file alone.
            while _mode(sock) != 0o660:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, f"status socket mode {_mode(sock)!r}, want 0o660"
                time.sleep(0.05)
            doc, problems = statusapi.query(socket_path=str(sock))
            assert doc["station"] == "IM.XS01" and doc["ports"][0]["connected"] and problems == []
            code, body = statusapi.fetch("/metrics", url=f"http://127.0.0.1:{port}")
            names = {f.name for f in text_string_to_metric_families(body.decode())}
            assert code == 200 and {"ims_station_port_connected", "ims_station_link_packets_ok",
                                    "ims_station_outbox_frames"} <= names
            assert statusapi.fetch("/health", url=f"http://127.0.0.1:{port}")[0] == 200
            # The operator's command, from the station file's [status] table.
            assert main(["edge", "status", "--config", str(cfg)]) == 0
            out = capsys.readouterr().out
            assert out.startswith("IM.XS01: OK") and "port port0" in out and "uplink: none configured" in out
            assert main(["edge", "status", "--url", f"http://127.0.0.1:{port}", "--json"]) == 0
            assert json.loads(capsys.readouterr().out)["station"] == "IM.XS01"
        finally:
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert not sock.exists()
        assert main(["edge", "status", "--socket", str(sock)]) == 2
        assert "cannot reach the status API" in capsys.readouterr().err
    finally:
        os.close(master)
        os.close(slave)
