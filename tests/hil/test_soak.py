"""The soak: HIL board -> faulty line -> edge ingest, checked sample by sample against the truth.

Simulated durations are kept short (the whole folder runs in about a minute); the 10-minute
command is ``ims-station hil soak --minutes 10 ...`` (docs/hil.md).
"""

from __future__ import annotations

import json

import pytest

from ims_station.cli import main
from ims_station.edge import ingest
from ims_station.hil.faults import Window
from ims_station.hil.soak import SoakConfig, run_soak

REQUIRED = ("samples_generated", "samples_delivered", "samples_bit_identical", "packets_corrupted_on_line",
            "corrupt_packets_rejected", "resend_requests", "packets_recovered", "gaps_unrecovered", "gaps",
            "line_bytes", "wall_time_s", "simulated_s")


def merged_missing(report: dict) -> int:
    """Samples missing according to the link gap reports alone: union of [start, end) per epoch,
    times the rate, times the channels (independent of the soak's own truth check)."""
    rate = report["config"]["rate_sps"]
    by_epoch: dict[int, list] = {}
    for g in report["gaps"]:
        if g["start_us"] is None or g["end_us"] is None or g["start_us"] == g["end_us"]:
            continue
        by_epoch.setdefault(g["epoch"], []).append((g["start_us"], g["end_us"], len(g["channels"])))
    total = 0
    for ivs in by_epoch.values():
        ivs.sort()
        cur_lo, cur_hi, ch = ivs[0]
        for lo, hi, c in ivs[1:] + [(None, None, None)]:
            if lo is not None and lo <= cur_hi:
                cur_hi = max(cur_hi, hi)
                continue
            total += round((cur_hi - cur_lo) * rate / 1e6) * ch
            if lo is not None:
                cur_lo, cur_hi, ch = lo, hi, c
    return total


def assert_integrity(r: dict) -> None:
    assert r["samples_corrupt_accepted"] == 0
    assert r["samples_unplaced"] == 0
    assert r["samples_bit_identical"] == r["samples_delivered"]
    assert r["samples_delivered"] + r["samples_missing"] == r["samples_generated"]
    assert r["gaps_reported_exactly"], (r["samples_missing_outside_reported_gaps"],
                                        r["samples_delivered_inside_reported_gaps"])


def test_light_line_delivers_every_sample_bit_identical():
    r = run_soak(SoakConfig(minutes=3, ber=1e-5, drop=1e-3, seed=7))
    assert set(REQUIRED) <= set(r)
    # ... with the edge's production defaults: the soak overrides nothing.
    assert r["config"]["max_resend_tries"] == ingest.DEFAULT_MAX_RESEND_TRIES
    assert r["config"]["resend_timeout_s"] == ingest.DEFAULT_RESEND_TIMEOUT
    assert_integrity(r)
    assert r["samples_generated"] > 0
    assert r["samples_delivered"] == r["samples_bit_identical"] == r["samples_generated"]
    assert r["gaps_unrecovered"] == 0 and r["gaps"] == []
    # The faults really happened and were repaired.
    assert r["packets_corrupted_on_line"] > 10
    rej = r["corrupt_packets_rejected"]
    assert rej["total"] > 10 and rej["rejected_frame_bytes"] > 10 * 36
    assert rej["garbage_bytes"] < rej["rejected_frame_bytes"]       # frames, rarely runs of garbage
    assert r["line"]["down"]["bits_flipped"] > 0 and r["line"]["down"]["bytes_dropped"] > 0
    assert r["resend_requests"] > 0 and r["packets_recovered"] > 0


def test_no_sample_goes_out_before_the_board_has_a_time():
    # The board gets GNSS time + PPS at the first whole second: what it converted before is
    # discarded on the board and counted apart, never sent stamped "1970 + uptime".
    r = run_soak(SoakConfig(minutes=0.5, seed=2, reboots=[12.3]))
    assert_integrity(r)
    nch = r["config"]["channels"]
    per_boot = 100 * nch                               # at most one second of 100 sps per boot
    assert 0 < r["samples_discarded_before_time"] <= 2 * per_boot
    assert r["board_counters"]["samples_discarded_no_time"] * nch == r["samples_discarded_before_time"]
    t2026 = 1_767_225_600_000_000
    assert r["stream_gaps"] and all(g["start_us"] >= t2026 for g in r["stream_gaps"])
    assert all(g["start_us"] is None or g["start_us"] >= t2026 for g in r["gaps"])
    assert "clock_step" not in r["status_flags_blocks"]
    assert r["board_counters"]["clock_steps"] == 0


def test_bad_line_accepts_no_corrupt_sample_and_reports_every_gap_exactly():
    # Defaults everywhere: the board starts with 1-s packets, which never get through this line
    # (p ~ 3e-5); the edge sees most frames rejected and shortens them (set_packet_ms).
    r = run_soak(SoakConfig(minutes=1.5, ber=1e-4, drop=1e-2, seed=7))
    assert_integrity(r)
    assert r["config"]["packet_ms"] == 1000 and r["config"]["packet_ms_at_end"] == 250
    assert r["edge_counters"]["packet_ms_changes"] >= 2
    assert r["samples_delivered"] > 0 and r["gaps_unrecovered"] > 0
    assert r["corrupt_packets_rejected"]["crc"] > 0 and r["corrupt_packets_rejected"]["framing"] > 0
    assert r["samples_lost_on_board"] == 0
    for g in r["gaps"]:
        assert g["channels"] == [0, 1, 2, 3] and g["first_seq"] <= g["last_seq"]


def test_gateway_outage_longer_than_the_ring_is_reported_exactly():
    # The sim board's ring holds ~280 one-second packets; the gateway is away for 330 s.
    r = run_soak(SoakConfig(minutes=7, seed=3, outages=[Window(30, 330)]))
    assert_integrity(r)
    assert r["gaps_unrecovered"] >= 1
    assert r["packets_recovered"] > 200              # what the ring still held came back
    assert {g["reason"] for g in r["gaps"]} & {"unavailable", "beyond_ring"}
    first = min(r["gaps"], key=lambda g: g["start_us"])
    t0 = 1_767_225_600_000_000
    assert 25e6 < first["start_us"] - t0 < 40e6      # the gap starts where the outage began
    assert r["status_flags_blocks"].get("ring_overrun", 0) > 0
    assert merged_missing(r) == r["samples_missing"]
    # The catch-up is paced to the board's transmit queue: it never had to drop a copy, and the
    # ring's tail was fetched before it was evicted (one gap, not a few pieces).
    assert r["board_counters"]["tx_dropped_packets"] == 0
    assert r["gaps_unrecovered"] == 1


def test_board_reboot_loses_only_what_was_in_its_ram_and_says_so():
    r = run_soak(SoakConfig(minutes=1.5, seed=4, reboots=[40.3]))
    assert_integrity(r)
    assert r["board_restarts"] == [{"old_epoch": 0, "new_epoch": 1}]
    assert r["samples_lost_on_board"] > 0
    assert r["samples_lost_on_board_outside_stream_gaps"] == 0
    assert r["samples_missing"] == r["samples_lost_on_board"]


def test_gnss_unlock_shows_in_the_delivered_time_quality():
    r = run_soak(SoakConfig(minutes=1.5, seed=5, gnss_outages=[Window(20, 45)], holdover_s=15))
    assert_integrity(r)
    tq = r["time_quality_samples"]
    assert tq.get("holdover", 0) > 0 and tq.get("unlocked", 0) > 0 and tq.get("locked", 0) > 0


def test_clipping_flags_arrive():
    r = run_soak(SoakConfig(minutes=1, seed=6, clipping=[Window(20, 2.5)]))
    assert_integrity(r)
    assert r["samples_missing"] == 0
    assert 2 <= r["clipped_blocks"] <= 4


def test_disconnect_is_repaired_from_the_ring():
    r = run_soak(SoakConfig(minutes=1.5, seed=8, disconnects=[Window(30, 15)]))
    assert_integrity(r)
    assert r["line"]["down"]["bytes_lost_dead"] > 0
    assert r["samples_missing"] == 0 and r["packets_recovered"] > 0


def test_unplugged_adapter_reconnects_and_loses_nothing():
    r = run_soak(SoakConfig(minutes=1, seed=9, unplugs=[Window(20, 5)]))
    assert_integrity(r)
    assert r["port_counters"]["disconnects"] >= 1 and r["port_counters"]["opens"] >= 2
    assert r["samples_missing"] == 0


def test_duplicated_bytes_are_rejected_and_repaired():
    r = run_soak(SoakConfig(minutes=1.5, seed=10, dup=5e-4))
    assert_integrity(r)
    assert r["line"]["down"]["bytes_duplicated"] > 0 and r["corrupt_packets_rejected"]["total"] > 0
    assert r["samples_missing"] == 0


def test_same_seed_same_report():
    cfg = dict(minutes=0.5, ber=1e-4, drop=3e-3, seed=11, packet_ms=250)
    a, b = run_soak(SoakConfig(**cfg)), run_soak(SoakConfig(**cfg))
    for r in (a, b):
        r.pop("wall_time_s"), r.pop("speedup")
    assert a == b


def test_cli_prints_one_json_report(capsys):
    rc = main(["hil", "soak", "--minutes", "0.5", "--ber", "1e-5", "--drop", "0.001", "--seed", "7", "--json"])
    out = capsys.readouterr().out
    assert rc == 0 and out.count("\n") == 1
    r = json.loads(out)
    assert set(REQUIRED) <= set(r) and r["config"]["seed"] == 7


def test_cli_summary_without_json(capsys):
    rc = main(["hil", "soak", "--minutes", "0.2", "--seed", "1"])
    out = capsys.readouterr().out
    assert rc == 0 and "samples generated" in out and "gaps unrecovered" in out


def test_cli_refuses_a_malformed_window(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["hil", "soak", "--outage", "30"])
    assert exc.value.code == 2 and "START:SECONDS" in capsys.readouterr().err
