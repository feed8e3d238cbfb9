"""The relay's local status API (ims_station/statusapi.py, ims_station/metrics.py, docs/status-api.md):
``/metrics`` parses with the Prometheus text parser and carries the relay's counters (archived,
quarantined by reason, verification failures per station, acknacks, frame-set gaps), each equal to
``Relay.stats()``; ``relay run`` serves the API while running and removes its socket at exit."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ims_station import statusapi
from ims_station.clock import FakeClock
from ims_station.metrics import RELAY_METRICS
from ims_station.relay.cli import build_relay, load_config
from ims_station.relay.core import Incoming

from ..conftest import free_port

T = "ims/STA01/cd11"
BASE = 75_331_500          # frames of November 2023, when FakeClock's time() is

CONF = """
[relay]
data_dir = "data"
trust_dir = "{trust}"
instance = "r1"
{extra}
[[broker]]
host = "127.0.0.1"
port = {port}
"""


def test_relay_metrics_parse_and_equal_the_relay_statistics(tmp_path, keys, factory):
    p = tmp_path / "relay.toml"
    p.write_text(CONF.format(trust=keys.trust_dir, port=1883,
                             extra='[status]\nsocket = "r.sock"\nlisten = "127.0.0.1:0"\n'))
    conf = load_config(p)
    relay = build_relay(conf, clock=FakeClock())
    try:
        good = [factory.build(BASE), factory.build(BASE + 3)]            # a gap of two frames
        forged = factory.build(BASE + 1, frame_key="STA02", channel_key="STA02")
        out = relay.core.process([Incoming(T, good[0], 0), Incoming(T, good[1], 1), Incoming(T, good[0], 2),
                                  Incoming(T, forged, 3), Incoming(T, b"\x00garbage", 4)])
        results = [o.result for o in out]
        assert results[:3] == ["archived", "archived", "duplicate"] and len(set(results[3:]) - {"archived"}) == 2
        api = statusapi.serve_relay(conf, relay)
        assert api is not None and api.socket_path == tmp_path / "r.sock"
        try:
            code, body = statusapi.fetch("/metrics", url=f"http://127.0.0.1:{api.address[1]}")
            assert code == 200
            assert statusapi.fetch("/metrics", socket_path=api.socket_path)[1] == body
            samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                       for fam in text_string_to_metric_families(body.decode()) for s in fam.samples}
            st = json.loads(json.dumps(relay.stats(), default=str))
            code, doc = statusapi.fetch("/status", socket_path=api.socket_path)
            assert code == 200 and json.loads(doc) == {"instance": "r1", **st}
            assert statusapi.fetch("/health", socket_path=api.socket_path)[0] == 503    # never connected
        finally:
            api.close()
        assert not (tmp_path / "r.sock").exists()
    finally:
        relay.core.close()

    def m(name, **labels):
        return samples[(name, tuple(sorted(dict(instance="r1", **labels).items())))]

    for k in ("received", "archived", "duplicates", "quarantined", "security_events", "acknacks_sent",
              "gaps_opened", "internal_errors"):
        assert m(f"ims_relay_{k}_total") == st[k], k
    assert st["archived"] == 2 and st["quarantined"] == 2 and st["security_events"] >= 1
    for reason, n in st["rejected"].items():
        assert m("ims_relay_quarantined_by_reason_total", reason=reason) == n
    for result, n in st["per_station"]["STA01"].items():
        assert m("ims_relay_station_messages_total", station="STA01", result=result) == n
    assert m("ims_relay_station_verification_failures_total", station="STA01") >= 1
    fs = st["frame_sets"]["STA01:0"]
    assert m("ims_relay_frame_set_gaps", frame_set="STA01:0") == fs["gaps"] == 1
    assert m("ims_relay_frame_set_missing", frame_set="STA01:0") == fs["missing"] == 2
    assert m("ims_relay_connected") == 0
    assert {n for n, _ in samples} <= {x.exposed for x in RELAY_METRICS}


def test_relay_status_table_is_checked_at_load(tmp_path, keys):
    from ims_station.errors import ConfigError

    p = tmp_path / "relay.toml"
    p.write_text(CONF.format(trust=keys.trust_dir, port=1883, extra='[status]\nlisten = "0.0.0.0:9102"\n'))
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    assert (ei.value.file, ei.value.key) == (str(p), "status.listen")


def test_relay_run_serves_while_running_and_removes_its_socket_at_exit(tmp_path, keys):
    port = free_port()
    p = tmp_path / "relay.toml"
    # No broker listens there: the relay runs, retrying, and says it is degraded.
    p.write_text(CONF.format(trust=keys.trust_dir, port=free_port(), extra=f'[status]\nlisten = "127.0.0.1:{port}"\n'))
    sock = tmp_path / "data" / "status-r1.sock"        # one per instance: relays may share a data_dir
    proc = subprocess.Popen([sys.executable, "-m", "ims_station", "relay", "run", "--config", str(p)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no status socket"
            time.sleep(0.05)
        code, body = statusapi.fetch("/health", url=f"http://127.0.0.1:{port}")
        assert code == 503 and json.loads(body) == {"status": "degraded", "problems": ["not connected to a broker"]}
        code, body = statusapi.fetch("/status", socket_path=sock)
        assert code == 200 and json.loads(body)["instance"] == "r1"
        code, body = statusapi.fetch("/metrics", socket_path=sock)
        names = {f.name for f in text_string_to_metric_families(body.decode())}
        assert {"ims_relay_received", "ims_relay_archived", "ims_relay_connected"} <= names
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert not sock.exists()
