"""Issue 9, events end to end with a real Mosquitto: a station's emitted event goes outbox ->
``{p}/STA/events`` -> relay process (``ims-station relay run``) -> relay archive, is listed by
``ims-station relay events --json``, and the relay's acknack of frame set ``STA:events`` removes it
from the station's outbox; a restarted relay given the same event again does not archive it twice.

The station is the production assembly (``harness.PacedStation``: ``edge/station.assemble`` from a
station file, keys pinned as the demo pins them), its board not sampling: the test emits through
``Station.emit_event``, the function the trigger stage is handed (``StageContext.emit_event``).
The relay is a child process, as deployed.  Printed: the wall time from ``emit_event`` to the
event's index row in the relay's archive, and to its deletion from the station's outbox.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timezone

from .conftest import Collector
from .harness import PacedStation, RelayProcess, archived_sequences, wait_for
from .test_faults import relay_stats

STA = "EVT1"
EFS = f"{STA}:events"


def archived_events(root) -> dict[int, str]:
    """seq -> sha256 of the archived events of EVT1 (read-only; the relay keeps writing)."""
    return archived_sequences(root, EFS, "events")


def trigger_doc(state: str, t: float) -> dict:
    return {"type": "trigger", "state": state, "event_id": f"{STA}-1", "algorithm": "recstalta",
            "time": datetime.fromtimestamp(t, timezone.utc).isoformat().replace("+00:00", "Z"),
            "onset_s": t, "end_s": None if state == "on" else t + 4.0,
            "duration": None if state == "on" else 4.0, "peak": 6.5 if state == "on" else 8.25,
            "coincidence_sum": 3.0, "stations": [STA], "channels": ["HHZ", "HHN", "HHE"], "time_quality": 0,
            "decided_s": t + 0.4, "pre_s": 5.0, "post_s": 10.0, "clipped": state == "off"}


def outbox_events(sta) -> list[int]:
    return [it.seq for it, _ in sta.outbox.items("events")]


def test_an_emitted_event_is_archived_listed_acknowledged_and_never_archived_twice(mosquitto, tmp_path):
    sta = PacedStation(tmp_path / "station", STA, mosquitto, speed=1.0)
    relay = RelayProcess(tmp_path / "relay", mosquitto.config, sta.trust, acknack_interval_s=1.0)
    archive = relay.root / "data" / "archive"
    diag = lambda: relay.logs() + f"\nuplink: {sta.uplink.stats()}"  # noqa: E731
    try:
        relay.start()
        wait_for(lambda: relay_stats(relay).get("transport", {}).get("connected"), 30, "the relay subscribed",
                 on_timeout=diag)
        sta.uplink.start()
        wait_for(lambda: sta.uplink.connected, 30, "the station connected", on_timeout=diag)

        t_event = time.time() - 2.0
        latencies = []
        for state in ("on", "off"):
            t0 = time.monotonic()
            seq = sta.edge.emit_event(trigger_doc(state, t_event))
            assert seq in outbox_events(sta)           # durable before anything was sent
            wait_for(lambda: seq in archived_events(archive), 20, f"event {seq} archived", on_timeout=diag,
                     pause=0.005)
            t_arch = time.monotonic() - t0
            wait_for(lambda: seq not in outbox_events(sta), 20, f"event {seq} acknowledged", on_timeout=diag,
                     pause=0.005)
            latencies.append((t_arch, time.monotonic() - t0))
        assert sorted(archived_events(archive)) == [0, 1] and outbox_events(sta) == []
        up = sta.uplink.stats()
        assert up["events_published"] >= 2 and up["events_acked"] == 2
        print(f"\nevent latency (wall): emit -> relay archive {', '.join(f'{a * 1000:.0f} ms' for a, _ in latencies)}; "
              f"emit -> deleted from the station outbox by the acknack "
              f"{', '.join(f'{b * 1000:.0f} ms' for _, b in latencies)}")

        out = subprocess.run([sys.executable, "-m", "ims_station", "relay", "events", "--archive", str(archive),
                              "--station", STA, "--json"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        [row] = json.loads(out.stdout)["events"]
        assert row["event_id"] == f"{STA}-1" and row["states"] == ["on", "off"] and not row["open"]
        assert (row["duration"], row["peak"], row["clipped"]) == (4.0, 8.25, True)
        assert row["channels"] == ["HHZ", "HHN", "HHE"] and row["stations"] == [STA]
        assert row["time"] == trigger_doc("on", t_event)["time"]
        assert row["key_ids"] == [sta.framer.station_key_id]          # verified with the station's key

        # A restarted relay given the same event again (a broker redelivery, a station resend).
        con = sqlite3.connect(f"file:{archive / 'index.sqlite'}?mode=ro", uri=True)
        file, off, length = con.execute("SELECT file, offset, length FROM events WHERE frame_set = ? "
                                        "AND seq = 0", (EFS,)).fetchone()
        con.close()
        raw = (archive / file).read_bytes()[off:off + length]
        relay.stop()
        relay.start()
        wait_for(lambda: relay_stats(relay).get("transport", {}).get("connected"), 30, "the relay subscribed again",
                 on_timeout=diag)
        pub = Collector(mosquitto.config.host, mosquitto.config.port)
        pub.connect()
        pub.client.publish(f"ims/{STA}/events", raw, qos=1).wait_for_publish(10)
        pub.close()
        wait_for(lambda: relay_stats(relay).get("duplicates", 0) >= 1, 20, "the duplicate counted", on_timeout=diag)
        assert sorted(archived_events(archive)) == [0, 1]
        st = relay_stats(relay)
        assert st["quarantined"] == 0 and st["archived"] == 0, st
    finally:
        relay.stop()
        sta.close()
