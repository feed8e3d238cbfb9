"""The state of health (edge/soh.py, docs/soh.md).

Issue 11, must-show 2: every change of state, provoked in the HIL -- unplugged line, GNSS outage,
tamper, clipping, supply low, clock jump, key near expiry -- appears within one SOH interval in the
SOH (state and alarm with its time; the SOH published at once), in the log at the right level
(WARNING going bad, INFO recovering) and in the status document the console and the status API
read (``Station.status()``, the same document).  CD-1.1 has no alert frame for these (§3.4: Alert
is sent only before closing a connection); its carrier, the channel status of the data frames in
the outbox, is checked for the faults it has a bit for.  One assembled station (the production
``assemble``, a ``sim://`` HIL board with a fault plan) runs 150 simulated seconds; a second one,
whose keys end 30 days and 20 s after its start, shows the key crossing the 30-day warning.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
from pathlib import Path

import pytest

from ims_station.edge.soh import SCHEMA

START = 1_780_000_000
SOH_INTERVAL_S = 60.0          # [uplink] soh_interval_s default: "within one SOH interval"

# (state key suffix, bad alarm, recovery alarm, fault start s, fault end s, CD-1.1 status flag)
FAULTS = [
    ("port:board", "port_down", "port_up", 15.0, 40.0, None),
    ("board:board/1:gnss", "gnss_lost", "gnss_regained", 50.0, 70.0, "gps_receiver_unlocked"),
    ("board:board/1:tamper", "tamper", "tamper_cleared", 80.0, 90.0, "equipment_housing_open"),
    ("board:board/1:clipping", "clipping", "clipping_cleared", 100.0, 105.0, "clipped"),
    ("board:board/1:supply", "supply_low", "supply_ok", 110.0, 125.0, "main_power_failure"),
    ("board:board/1:clock", "clock_alarm", "clock_ok", 135.0, 135.0, "clock_differential_too_large"),
]


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _run_station(root: Path, name: str, plan, seconds: float, keys_hook=None):
    from ims_station.broker import BrokerConfig
    from ims_station.demo import SIM_CHANNELS, make_keys, write_station_file
    from ims_station.edge.config import load_station_config
    from ims_station.edge.station import assemble
    from ims_station.hil.sim import Simulation, register, unregister

    keys, _ = make_keys(root, ["MET1"], [c for _, c in SIM_CHANNELS], valid_from=START)
    k = keys["MET1"]
    if keys_hook is not None:
        keys_hook(k.keystore)
    sim = Simulation(board="sim", seed=5, key=k.board_key, start_utc=START, plan=plan)
    register(name, sim)
    f = write_station_file(root / "MET1" / "station.toml", "MET1", k, sim_name=name, board_id=sim.board.board_id,
                           baud=sim.baud, broker=BrokerConfig(host="127.0.0.1", port=9))
    handler = _Records()
    logger = logging.getLogger("ims_station.edge.soh")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    st = assemble(load_station_config(f), clock=sim.clock)
    published: list[dict] = []
    # What the uplink would publish at once on each change (its loop is not started: no broker).
    st.uplink.request_soh = lambda: published.append(st.uplink._soh_provider())
    try:
        while sim.clock.monotonic() < seconds:
            st.step()
        yield st, handler.records, published
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        st.close()
        unregister(name)


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    from ims_station.hil.faults import FaultPlan, Window

    plan = FaultPlan(disconnects=[Window(15, 25)], gnss_outages=[Window(50, 20)], tamper=[Window(80, 10)],
                     clipping=[Window(100, 5)], supply_low=[Window(110, 15)], clock_jumps=[(135, 0.5)])
    yield from _run_station(tmp_path_factory.mktemp("soh"), f"soh-{os.getpid()}", plan, 150.0)


def _alarm(doc: dict, name: str, source: str) -> dict:
    found = [a for a in doc["alarms"] if a.get("alarm") == name and a.get("source") == source]
    assert found, f"no {name} alarm from {source} in {[a.get('alarm') for a in doc['alarms']]}"
    return found[0]


@pytest.mark.parametrize("source,bad,good,t0,t1,cd11_flag", FAULTS, ids=[f[1] for f in FAULTS])
def test_state_change_in_soh_log_and_status(faulty, source, bad, good, t0, t1, cd11_flag):
    st, records, published = faulty
    doc = st.status()
    assert doc["schema"] == SCHEMA
    # SOH: an alarm with its time within one SOH interval of the fault, and the recovery after it.
    a = _alarm(doc, bad, source)
    assert a["state"] == "bad" and START + t0 <= a["time"] <= START + t0 + SOH_INTERVAL_S
    r = _alarm(doc, good, source)
    assert r["state"] == "ok" and a["time"] < r["time"] <= START + t1 + SOH_INTERVAL_S
    assert doc["states"][source] == "ok"
    # The SOH published at once showed the state bad and the alarm.
    at_once = [p for p in published if any(x.get("alarm") == bad and x.get("source") == source for x in p["alarms"])]
    assert at_once and at_once[0]["states"][source] == "bad" and at_once[0]["schema"] == SCHEMA
    # The log: WARNING going bad, INFO recovering.
    msgs = [(r.levelno, r.getMessage()) for r in records]
    assert any(lv == logging.WARNING and f"{source}: {bad}" in m for lv, m in msgs), msgs
    assert any(lv == logging.INFO and f"{source}: {good}" in m for lv, m in msgs), msgs
    # CD-1.1: the channel status of a data frame in the outbox carries the fault.
    if cd11_flag is not None:
        assert _cd11_flag_seen(st, cd11_flag, t0, max(t1, t0 + 1))


def _cd11_flag_seen(st, flag: str, t0: float, t1: float) -> bool:
    from ims_station import cd11

    for it, _ in st.outbox.items("cd11"):
        if not (START + t0 - 10 <= it.nominal_time <= START + t1):
            continue
        fr = cd11.parse_frame(it.payload)[0]
        for sf in fr.subframes:
            s = cd11.ChannelStatus.from_bytes(sf.status)
            if s is not None and getattr(s, flag):
                return True
    return False


def test_board_and_channel_fields(faulty):
    """The per-board and per-channel figures the issue lists, from the HIL board's packets."""
    st, _, _ = faulty
    doc = st.status()
    (b,) = doc["boards"]
    assert b["time_quality"] == "locked" and b["gnss_locked"] is True and b["tamper"] is False
    assert b["supply_v"] == pytest.approx(12.0, abs=0.5) and b["last_sync"] is not None
    assert b["rate_hz"] > 0 and doc["time"] - b["last_packet"] < 15
    assert doc["ports"][0]["connected"] and doc["ports"][0]["receiving"]
    assert set(doc["channels"]) == set(st.config.ports[0].channels.values())
    for ch in doc["channels"].values():
        assert ch["latency_s"] is not None and abs(ch["latency_s"]) < 15   # < 0: board clock ahead (the jump)
    # The line was dead for 25 s: the streams have a gap (refilled from the board's ring or not).
    assert doc["host"]["disk_free_bytes"] > 0 and doc["host"]["cpu_count"] >= 1


def test_retained_soh_is_the_status_document(faulty):
    st, _, _ = faulty
    soh = st.uplink._soh_provider()
    doc = st.status()
    assert soh["schema"] == doc["schema"] == SCHEMA
    assert set(soh) == set(doc) - {"station"}
    assert soh["states"] == doc["states"] and soh["alarms"] == doc["alarms"]


def _documented(section: str) -> set[str]:
    text = (Path(__file__).resolve().parents[2] / "docs" / "soh.md").read_text()
    body = text.split(f"### {section}\n", 1)[1].split("\n#", 1)[0]
    return set(re.findall(r"^\| `([a-z_0-9]+)` \|", body, re.M))


def test_documented_schema_matches(faulty):
    """docs/soh.md lists exactly the keys the document has."""
    st, _, _ = faulty
    doc = st.status()
    assert set(doc) == _documented("top level")
    assert set(doc["ports"][0]) == _documented("ports[]")
    assert set(doc["boards"][0]) == _documented("boards[]")
    assert set(next(iter(doc["channels"].values()))) == _documented("channels.CODE")
    assert set(doc["host"]) == _documented("host")
    alarm_keys = set().union(*(set(a) for a in doc["alarms"] if "source" in a))
    assert _documented("alarms[]") <= alarm_keys


def test_key_near_expiry(tmp_path):
    """Keys that end 30 days and 20 s after the start: the state turns bad (WARNING, alarm, SOH
    at once) within one SOH interval of crossing the 30-day warning."""
    end = dt.datetime.fromtimestamp(START + 30 * 86400 + 20, dt.timezone.utc)

    def expire(keystore: Path) -> None:
        for meta in keystore.glob("*.toml"):
            meta.write_text(meta.read_text() + f"valid_until = {end.isoformat().replace('+00:00', 'Z')}\n")

    gen = _run_station(tmp_path, f"sohkey-{os.getpid()}", None, 90.0, keys_hook=expire)
    st, records, published = next(gen)
    try:
        doc = st.status()
        a = _alarm(doc, "key_near_expiry", "keys")
        assert START + 20 < a["time"] <= START + 20 + SOH_INTERVAL_S
        assert a["days"] < 30 and doc["states"]["keys"] == "bad"
        assert doc["keys"]["days_to_expiry"] < 30 and doc["keys"]["key_ids"]
        assert any(p["states"].get("keys") == "bad" for p in published)
        assert any(r.levelno == logging.WARNING and "keys: key_near_expiry" in r.getMessage() for r in records)
    finally:
        gen.close()


def test_console_shows_the_state_change(faulty, tmp_path):
    """The console (Textual, 80x24, attached to the status API) shows a bad state and its alarm
    from the document the station serves (pilot test; the state is set as the HIL left it at the
    tamper's start)."""
    from ..conftest import need_module

    need_module("textual")
    import asyncio

    from textual.widgets import DataTable

    from ims_station import statusapi
    from ims_station.console import app as console_app
    from ims_station.console import sources as src
    from ims_station.metrics import StationCollector

    st, _, published = faulty
    during = next(p for p in published if p["states"].get("board:board/1:tamper") == "bad")
    doc = st.status() | {k: during[k] for k in ("states", "alarms")}
    srv = statusapi.StatusServer(lambda: doc, StationCollector(st.status), statusapi.station_health)
    srv.serve_unix(tmp_path / "s.sock")
    try:
        app = console_app.ConsoleApp(src.StationSource(socket_path=str(tmp_path / "s.sock")), refresh_s=3600)

        async def drive() -> dict:
            async with app.run_test(size=(80, 24)) as pilot:
                await app.refresh_data()
                await pilot.pause()
                await pilot.press("3")
                t = app.query_one("#outbox-table", DataTable)
                return {str(t.get_row_at(i)[0]): str(t.get_row_at(i)[1]) for i in range(t.row_count)}

        rows = asyncio.run(drive())
    finally:
        srv.close()
    assert "board:board/1:tamper" in rows["SOH bad"]
    assert rows["last alarm"].split()[1:] == ["tamper", "board:board/1:tamper"]


def test_alarms_of_other_components_are_listed_with_their_time(faulty):
    """The framer's, the outbox's and the stages' own alarms (their path: ``assemble``'s alarm
    hook) are in the SOH's recent alarms with the gateway's time, and request the SOH at once."""
    st, _, published = faulty
    n = len(published)
    st.framer.alarm({"alarm": "outbox_eviction", "reason": "bytes", "frames": 1})
    doc = st.status()
    assert doc["alarms"][-1] == {"time": doc["time"], "alarm": "outbox_eviction", "reason": "bytes", "frames": 1}
    assert len(published) == n + 1


def test_metrics_carry_the_states(faulty):
    """``/metrics``: ``ims_station_soh_state_bad`` is 1 for a state bad in the document, 0 when ok."""
    from ims_station.metrics import StationCollector

    st, _, published = faulty
    during = next(p for p in published if p["states"].get("board:board/1:supply") == "bad")
    doc = st.status() | {k: during[k] for k in ("states", "alarms")}
    samples = {s.labels["state"]: s.value for fam in StationCollector(lambda: doc).collect()
               for s in fam.samples if s.name == "ims_station_soh_state_bad"}
    assert samples["board:board/1:supply"] == 1.0 and samples["port:board"] == 0.0
    assert set(samples) == set(doc["states"])
