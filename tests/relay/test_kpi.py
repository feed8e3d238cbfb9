"""Quality figures and the network view (issue 11): availability, timeliness, refilled share and
authentication pass rate equal what a scenario injected; ``relay kpi`` / ``relay status`` output;
the silent-station alarm; the availability PNG.

The scenario (:func:`scenario`) runs signed 10-s frames through the real relay core with a real
archive and state store, on a fake clock: an outage, a stall that delivers frames late, frames lost
and refilled through a resend, tampered frames.  Every figure is then compared with ``==`` to the
value the scenario implies (the same rational computed here from the injected counts: exact).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import struct
from fractions import Fraction
from datetime import date, timedelta

import pytest

from ims_station.relay import kpi
from ims_station.relay.core import Incoming, RelayCore
from ims_station.relay.status import SilenceWatch, percentile, snapshot

from .conftest import BACKENDS, FrameFactory, Stores, nominal_of

T = "ims/STA01/cd11"
DAY0 = 8640 * 8700                 # seq of a UTC midnight (10-s frames since 2000)
N = 60                             # frames of the scenario: 10 minutes
OUTAGE = range(10, 16)             # never delivered
REFILLED = range(30, 33)           # lost, then resent after the acknack
LATE = range(55, 60)               # held 400 s by a stalled link (delivered in order)
TAMPERED = range(20, 24)           # a forged copy of each arrives too (bad signature)


def t_end(k: int) -> float:
    return nominal_of(DAY0 + k).timestamp() + 10.0


def tampered(raw: bytes) -> bytes:
    """Samples changed and the CRC fixed up: only the signatures can tell."""
    from ims_station import cd11
    from ims_station.cd11.crc64 import crc64

    b = bytearray(raw)
    f, _ = cd11.parse_frame(raw)
    b[f.subframes[0].span[0] + 120] ^= 0x40
    b[-8:] = crc64(bytes(b[:-8])).to_bytes(8, "big")
    return bytes(b)


def make_core(data, keys, clock, stores, **kw):
    return RelayCore(keys.trust, stores.state(data / "state.sqlite"), stores.archive(data / "archive"),
                     clock=clock, **kw)


def scenario(core, factory, clock) -> list[str]:
    """Deliver the scenario in arrival order; returns the outcomes."""
    arrivals: list[tuple[float, bytes]] = []
    for k in range(N):
        if k in OUTAGE or k in REFILLED:
            continue
        raw = factory.build(DAY0 + k)
        arrivals.append((t_end(k) + (400.0 if k in LATE else 1.0), raw))
        if k in TAMPERED:
            arrivals.append((t_end(k) + 1.5, tampered(raw)))
    for i, k in enumerate(REFILLED):                   # the resend, after everything else
        arrivals.append((t_end(N - 1) + 420.0 + i, factory.build(DAY0 + k)))
    arrivals.sort(key=lambda a: a[0])
    results = []
    for t, raw in arrivals:
        clock.advance(t - clock.time())
        results += [o.result for o in core.process([Incoming(T, raw, 0, received_at=t)])]
    return results


@pytest.fixture(scope="module", params=BACKENDS)
def run(request, tmp_path_factory, keys):
    """The scenario's data_dir (read only: a test that writes works on a copy), outcomes and the
    backend's stores (one run per backend)."""
    from ims_station.clock import FakeClock

    stores = Stores(request.param, *(request.getfixturevalue("pg_cluster")[::-1]
                                     if request.param == "postgresql" else ()))
    clock = FakeClock(nominal_of(DAY0).timestamp())
    data = tmp_path_factory.mktemp("kpi") / "data"
    core = make_core(data, keys, clock, stores)
    results = scenario(core, FrameFactory(keys, rate=40.0), clock)
    core.close()
    return data, results, stores


def test_scenario_figures_equal_what_was_injected(run):
    data, results, stores = run
    delivered = N - len(OUTAGE)                          # refilled frames arrive in the end
    assert results.count("archived") == delivered and results.count("frame_signature") == len(TAMPERED)
    db = stores.index_db(data / "archive")
    t0 = nominal_of(DAY0).timestamp()
    rep = kpi.report(db, nominal_of(DAY0).date(), nominal_of(DAY0).date(), now=t0 + 10 * N)
    per_frame = 400                                      # 10 s x 40 sps per channel
    assert len(rep["channels"]) == 3
    for r in rep["channels"]:
        assert r["expected"] == N * per_frame
        assert r["samples"] == delivered * per_frame
        assert r["availability"] == delivered / N
        assert r["timely"] == (delivered - len(LATE) - len(REFILLED)) * per_frame
        assert r["timeliness"] == (delivered - len(LATE) - len(REFILLED)) / delivered
        assert r["refilled_share"] == len(REFILLED) / delivered
    (s,) = rep["stations"]
    assert (s["auth_passed"], s["auth_failed"]) == (delivered, len(TAMPERED))
    assert s["auth_pass_rate"] == delivered / (delivered + len(TAMPERED))
    assert s["availability"] == delivered / N
    db.close()


def test_figures_survive_a_restart_and_duplicates_do_not_count(run, keys, clock, tmp_path):
    """A resend of archived frames (after a restart) is a duplicate: samples unchanged, the
    authentication count grows (each copy was verified)."""

    data = tmp_path / "data"
    stores = run[2]
    stores.copy(run[0], data)
    clock.t = t_end(N - 1) + 500.0
    core = make_core(data, keys, clock, stores)
    factory = FrameFactory(keys, rate=40.0)
    assert [o.result for o in core.process([Incoming(T, factory.build(DAY0), 0)])] == ["duplicate"]
    core.close()
    db = stores.index_db(data / "archive")
    rep = kpi.report(db, nominal_of(DAY0).date(), nominal_of(DAY0).date(), now=t_end(N - 1))
    assert rep["channels"][0]["samples"] == (N - len(OUTAGE)) * 400
    assert rep["stations"][0]["auth_passed"] == N - len(OUTAGE) + 1


def test_split_span_across_midnight_and_per_sample_timeliness():
    midnight = kpi.day_start_ms(date(2024, 3, 2))
    span = kpi.ChannelSpan("STA01/BHZ", midnight - 2500, 100, 10_000)        # 10 sps, 2.5 s before
    (d1, n1, t1, r1, f1), (d2, n2, t2, r2, f2) = kpi.split_span(span, (midnight + 7_500) / 1000 + 300 - 1.0, True)
    assert (d1, n1, r1, f1) == (date(2024, 3, 1), 25, 25, midnight - 2500)
    assert (d2, n2, r2, f2) == (date(2024, 3, 2), 75, 75, midnight)
    # Arrival 300 s after midnight + 6.5 s: samples before midnight + 6.5 s are late.
    assert (t1, t2) == (0, 10)
    assert kpi.split_span(span, 0.0, False)[0][2] == 25                    # arrival before: timely
    assert kpi.split_span(kpi.ChannelSpan("X/Y", 0, 0, 10_000), 0.0, False) == []
    # A zero-length subframe (the codec allows it) is one instant, not an endless split.
    assert kpi.split_span(kpi.ChannelSpan("X/Y", midnight, 5, 0), midnight / 1000 + 301, False) == \
        [(date(2024, 3, 2), 5, 0, 0, midnight)]
    # A subframe over several days (length is a 32-bit field) is split day by day.
    long = kpi.split_span(kpi.ChannelSpan("X/Y", midnight, 3 * 86_400, 3 * 86_400_000), 0.0, False)
    assert [(d.day, n) for d, n, *_ in long] == [(2, 86_400), (3, 86_400), (4, 86_400)]


def test_expected_starts_at_the_channel_first_sample_and_rate_carries_over(tmp_path):
    import sqlite3

    db = sqlite3.connect(tmp_path / "k.sqlite")
    db.executescript(kpi.SCHEMA)
    d0 = date(2024, 3, 1)
    noon = kpi.day_start_ms(d0) + 43_200_000
    fr = type("F", (), {"station": "S", "received_at": noon / 1000 + 20.0, "nominal_ms": noon, "frame_ms": 10_000,
                        "channels": (kpi.ChannelSpan("S/BHZ", noon, 200, 10_000),)})()
    kpi.record_batch(db, [(fr, False)], [("S", fr.received_at)], [("S", fr.received_at)])
    rep = kpi.report(db, d0, d0 + timedelta(days=3), now=kpi.day_start_ms(d0 + timedelta(days=2)) / 1000 + 3600)
    rows = {r["day"]: r for r in rep["channels"]}
    assert sorted(rows) == ["2024-03-01", "2024-03-02", "2024-03-03"]       # not 03-04: after now
    assert rows["2024-03-01"]["expected"] == 43_200 * 20 and rows["2024-03-01"]["samples"] == 200
    assert rows["2024-03-02"]["expected"] == 86_400 * 20 and rows["2024-03-02"]["availability"] == 0
    assert rows["2024-03-03"]["expected"] == 3600 * 20
    st = {r["day"]: r for r in rep["stations"]}
    assert st["2024-03-01"]["auth_pass_rate"] == 0.5 and st["2024-03-02"]["auth_pass_rate"] is None


def test_percentile_is_nearest_rank():
    assert percentile([], 50) is None
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([float(i) for i in range(1, 101)], 99) == 99.0


def test_silence_watch_alarms_once_per_transition(caplog):
    w = SilenceWatch(600.0)
    w.seen("STA01", 1000.0)
    with caplog.at_level(logging.INFO, logger="ims_station.relay.status"):
        assert w.check(1500.0) == []
        assert w.check(1601.0) == ["STA01"] and w.check(1700.0) == []
        w.seen("STA01", 1800.0)
        assert w.check(1900.0) == []
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "STA01 silent" in warnings[0].getMessage()
    assert any("alarm cleared" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)
    assert SilenceWatch(None).check(1e12) == []


def test_core_raises_the_silent_alarm_and_reseeds_after_restart(tmp_path, keys, clock, caplog, stores):
    clock.t = nominal_of(DAY0).timestamp() + 11.0
    core = make_core(tmp_path / "d", keys, clock, stores, silent_alarm_s=60.0)
    core.process([Incoming(T, FrameFactory(keys).build(DAY0), 0)])
    assert core.check_silence() == [] and core.stats()["silent"] == []
    clock.advance(61.0)
    with caplog.at_level(logging.WARNING, logger="ims_station.relay.status"):
        assert core.check_silence() == ["STA01"]
    assert core.stats()["silent"] == ["STA01"] and core.stats()["silent_alarms"] == 1
    core.close()
    core = make_core(tmp_path / "d", keys, clock, stores, silent_alarm_s=60.0)      # restart: still silent
    clock.advance(1.0)
    assert core.check_silence() == ["STA01"]
    core.close()


def test_status_snapshot_of_the_scenario(run):
    data, _, stores = run
    snap = snapshot(stores.index_db(data / "archive"), stores.state_db(data / "state.sqlite"),
                    now=t_end(N - 1) + 430.0, silent_alarm_s=600.0)
    (s,) = snap["stations"]
    assert s["station"] == "STA01" and s["online"] and snap["alarms"] == []
    assert s["last_frame"] == nominal_of(DAY0 + N).isoformat().replace("+00:00", "Z")
    assert s["quarantined"] == len(TAMPERED) == s["verification_failures"]
    assert (s["gaps_open"], s["backlog"]) == (1, len(OUTAGE))              # the refilled gap closed
    # Latency: arrival - frame end; 1 s for in-time frames, 400 s for the stalled ones.
    assert s["latency_frames"] == N - len(OUTAGE) and s["latency_p50_s"] == 1.0
    assert s["latency_p99_s"] == t_end(N - 1) + 420.0 - t_end(REFILLED[0])     # the first resend
    later = snapshot(stores.index_db(data / "archive"), None, now=t_end(N - 1) + 5000.0,
                     silent_alarm_s=600.0)
    assert later["alarms"] == ["STA01"] and not later["stations"][0]["online"]


def test_cli_status_and_kpi(run, tmp_path, capsys):
    from ims_station.cli import main

    data, _, stores = run
    day = nominal_of(DAY0).date().isoformat()
    at = nominal_of(DAY0 + N).isoformat()
    assert main(["relay", "status", *stores.data_args(data), "--at", at, "--json"]) == 0
    snap = json.loads(capsys.readouterr().out)
    assert snap["stations"][0]["verification_failures"] == len(TAMPERED)
    assert main(["relay", "status", *stores.data_args(data), "--at", at]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("STATION") and "STA01" in out and max(map(len, out.splitlines())) <= 80
    assert main(["relay", "status", *stores.data_args(data), "--alarm-exit"]) == 1      # now: long silent
    assert "ALARM" in capsys.readouterr().out

    args = ["relay", "kpi", *stores.data_args(data), "--from", day, "--to", day, "--at", at]
    assert main([*args, "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["stations"][0]["availability"] == (N - len(OUTAGE)) / N
    assert main([*args, "--csv", "--station", "STA01"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 4 and rows[-1]["channel"] == "*"
    assert float(rows[0]["availability"]) == (N - len(OUTAGE)) / N
    assert float(rows[-1]["auth_pass_rate"]) == (N - len(OUTAGE)) / (N - len(OUTAGE) + len(TAMPERED))
    assert main([*args, "--station", "NOPE", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["channels"] == []
    assert main([*args]) == 0 and "STA01" in capsys.readouterr().out
    assert main(["relay", "kpi", "--data-dir", str(tmp_path / "none"), "--from", day, "--to", day]) == 2


def test_kpi_png_renders(run, tmp_path):
    import numpy as np
    from matplotlib import image

    from ims_station.cli import main

    data, _, stores = run
    day = nominal_of(DAY0).date()
    png = tmp_path / "avail.png"
    assert main(["relay", "kpi", *stores.data_args(data), "--from", (day - timedelta(days=1)).isoformat(),
                 "--to", (day + timedelta(days=1)).isoformat(), "--at", nominal_of(DAY0 + N).isoformat(),
                 "--png", str(png), "--json"]) == 0
    raw = png.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = struct.unpack(">II", raw[16:24])
    assert w >= 300 and h >= 150
    img = image.imread(png)
    assert np.unique(img.reshape(-1, img.shape[-1]), axis=0).shape[0] > 10          # not blank


def test_docs_match_the_code(run):
    """docs/relay.md: the example status row is this scenario's; defaults, keys, reasons, threshold."""
    import re
    from pathlib import Path

    from ims_station.relay.cli import RELAY_SCHEMA
    from ims_station.relay.core import SECURITY_REASONS
    from ims_station.relay.status import DEFAULT_SILENT_ALARM_S, format_table

    doc = (Path(__file__).resolve().parents[2] / "docs" / "relay.md").read_text()
    data, _, stores = run
    snap = snapshot(stores.index_db(data / "archive"), stores.state_db(data / "state.sqlite"),
                    now=t_end(N - 1) + 430.0, silent_alarm_s=600.0)
    header, row = format_table(snap).splitlines()
    assert f"\n{header}\n{row}\n" in doc
    assert f"# silent_alarm_s = {DEFAULT_SILENT_ALARM_S}" in doc
    for key in RELAY_SCHEMA["properties"]["relay"]["properties"]:
        assert re.search(rf"^#? ?{key}\b|^\[relay\.{key}\]|^# \[relay\.{key}\]", doc, re.M), key
    for reason in SECURITY_REASONS | kpi.AUTH_FAILED | kpi.AUTH_PASSED_REJECTIONS:
        assert f"`{reason}`" in doc.split("## Network view")[1], reason
    assert f"T = {kpi.TIMELY_S} s" in doc


def test_split_span_conserves_samples():
    """Any span: the days' samples sum to nsamples, timely and refilled never exceed them, and
    timely samples are exactly those with arrival - t_i <= T (arrival to the microsecond; checked
    sample by sample)."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=200, deadline=None)
    @given(st.integers(0, 4 * 86_400_000), st.integers(0, 2000), st.integers(0, 200_000),
           st.floats(0, 5 * 86_400, allow_nan=False), st.booleans())
    def check(start, n, length, arrive_after_s, refilled):
        span = kpi.ChannelSpan("X/Y", start, n, length)
        received = start / 1000 + arrive_after_s
        parts = kpi.split_span(span, received, refilled)
        assert sum(p[1] for p in parts) == n
        assert all(0 <= p[2] <= p[1] and p[3] == (p[1] if refilled else 0) for p in parts)
        if length > 0:
            timely = sum(1 for i in range(n)
                         if Fraction(round(received * 1e6), 1000) - (start + Fraction(i * length, n))
                         <= kpi.TIMELY_S * 1000)
            assert sum(p[2] for p in parts) == timely

    check()


def test_status_reads_next_to_a_writing_relay(tmp_path, keys, clock, stores):
    """The relay holds its write connections open (WAL): status reads read-only beside it and sees
    each committed batch; its read-only connection can write nothing."""
    import sqlite3

    clock.t = t_end(0) + 1.0
    core = make_core(tmp_path / "d", keys, clock, stores)
    factory = FrameFactory(keys)
    try:
        core.process([Incoming(T, factory.build(DAY0), 0)])
        index = stores.index_db(tmp_path / "d" / "archive")
        state = stores.state_db(tmp_path / "d" / "state.sqlite")
        assert snapshot(index, state, now=clock.time())["stations"][0]["latency_frames"] == 1
        clock.advance(10.0)
        core.process([Incoming(T, factory.build(DAY0 + 1), 0)])
        s = snapshot(index, state, now=clock.time())["stations"][0]
        assert s["latency_frames"] == 2 and s["online"]
        if stores.pg:
            import psycopg

            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                index.execute("DELETE FROM frames")
        else:
            with pytest.raises(sqlite3.OperationalError):
                index.execute("DELETE FROM frames")
    finally:
        core.close()
