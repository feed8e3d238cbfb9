"""Auxiliary mode end to end (issue 9, must-show 5, second half): an auxiliary station assembled by
``edge/station.assemble`` from its station file, a real Mosquitto and the relay as its own process.
Only released windows reach the relay's archive; ``ims-station relay request`` (the real command
line) for an old window brings exactly that window's frames, byte for byte; a request for an
evicted or not yet recorded window is answered with an error naming the missing span.

The station's data frames are real signed CD-1.1 frames (harness.FrameFactory) committed to the
station's own outbox, as its framer commits them, so that their times can lie in the past (one
older than the outbox's age bound, to be evicted); the release is the outbox's (the event path's
release is tests/edge/test_auxiliary.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from ims_station.clock import SystemClock

from .harness import FRAME_S, FrameFactory, RelayProcess, archived_sequences, sha256, wait_for

pytestmark = pytest.mark.usefixtures("mosquitto_installed")

STA = "AUX1"
FS = f"{STA}:0"


def _station(root, broker):
    from ims_station.demo import RELAY_ACKNACK_KEY, SIM_CHANNELS, make_keys, write_station_file
    from ims_station.edge.config import load_station_config
    from ims_station.edge.station import assemble

    keys, trust = make_keys(root, [STA], [c for _, c in SIM_CHANNELS], valid_from=time.time() - 86400)
    path = write_station_file(root / STA / "station.toml", STA, keys[STA], sim_name="unused", board_id=1,
                              baud=115200, broker=broker.config, acknack_trust=root / "acknack-trust")
    text = path.read_text().replace("[station]\n", '[station]\nmode = "auxiliary"\n', 1)
    # A 30-minute buffer, so that one frame can be evicted by age.
    text = text.replace("[outbox]\n", "[outbox]\nmax_age_days = 0.02\n", 1)
    path.write_text(text + "\n[auxiliary]\nmax_request_s = 600\n")
    st = assemble(load_station_config(path), clock=SystemClock(),
                  uplink_options={"backoff_base_s": 0.05, "backoff_max_s": 0.5, "connect_timeout_s": 3.0})
    relay = RelayProcess(root / "relayproc", broker.config, trust)
    # The relay signs acknacks and requests with the key the station trusts as the relay's.
    relay.config.write_text(relay.config.read_text().replace('name = "IDC"', 'name = "RELAY"')
                            + f'\n[relay.acknack_key]\nkeystore = "{root / "relay" / "keys"}"\n'
                              f"key_id = {RELAY_ACKNACK_KEY}\n")
    return st, relay, FrameFactory(STA, keys[STA].keystore, keys[STA].frame_key_id)


def _request(relay, start, end, *, wait=20.0) -> tuple[int, dict]:
    p = subprocess.run([sys.executable, "-m", "ims_station", "relay", "request", STA, "--start", str(start),
                        "--end", str(end), "--config", str(relay.config), "--wait", str(wait), "--json"],
                       capture_output=True, text=True, timeout=wait + 30)
    assert p.stdout.strip(), p.stderr
    return p.returncode, json.loads(p.stdout)


def test_only_released_and_requested_windows_reach_the_archive(tmp_path, mosquitto):
    from ims_station.edge.commands import iso

    st, relay, factory = _station(tmp_path, mosquitto)
    archive = relay.root / "data" / "archive"
    built: dict[int, str] = {}
    try:
        end = (int(time.time()) - 60) // FRAME_S * FRAME_S
        old = end - 3000                                    # beyond the 1728-s age bound
        seq_old, raw = factory.frame(old)
        st.outbox.put("cd11", FS, seq_old, old, raw)
        times = [float(end - (40 - i) * FRAME_S) for i in range(40)]
        for t in times:
            seq, raw = factory.frame(t)
            st.outbox.put("cd11", FS, seq, t, raw)          # evicts the old frame (held: no alarm)
            built[seq] = sha256(raw)
        seqs = sorted(built)
        assert st.outbox.stats()["held"] == 40 and st.outbox.stats()["held_expired_frames"] == 1
        relay.start()
        st.uplink.start()
        assert st.uplink.wait_connected(15)
        wait_for(lambda: '"connected": true' in relay.logs(), 30, "the relay connected", on_timeout=relay.logs)

        # An event's window (what EventRelease does): frames 5..7 only.
        assert st.outbox.release(FS, times[5], times[8]) == 3
        st.uplink.notify()
        want = {s: built[s] for s in seqs[5:8]}
        wait_for(lambda: archived_sequences(archive, FS) == want, 20, "the released window archived",
                 on_timeout=relay.logs)

        # The relay asks for an old window (frames 20..24) with the real command line.
        rc, doc = _request(relay, iso(times[20]), iso(times[25]))
        assert rc == 0 and doc["ok"] is True, doc
        assert (doc["frames"], doc["released"], doc["first_seq"], doc["last_seq"]) == (5, 5, seqs[20], seqs[24])
        assert doc["missing"] == []
        want.update({s: built[s] for s in seqs[20:25]})
        wait_for(lambda: archived_sequences(archive, FS) == want, 20, "the requested window archived",
                 on_timeout=relay.logs)

        # Evicted, and not yet recorded: errors naming the span and the reason.
        rc, doc = _request(relay, old, old + FRAME_S)
        assert rc == 1 and doc["ok"] is False and doc["frames"] == 0, doc
        assert doc["missing"] == [{"start": iso(old), "end": iso(old + FRAME_S), "reason": "evicted"}]
        assert f"{iso(old)}..{iso(old + FRAME_S)} evicted" in doc["error"]
        from ims_station.relay.cli import load_config
        from ims_station.relay.request import request_window

        future = time.time() + 100
        doc = request_window(load_config(relay.config), STA, future, future + 60, wait_s=20)
        assert doc["ok"] is False and doc["missing"][0]["reason"] == "not yet recorded", doc
        # Too long a window: refused naming the bound.
        doc = request_window(load_config(relay.config), STA, times[0], times[0] + 601, wait_s=20)
        assert doc["ok"] is False and "max_request_s = 600" in doc["error"], doc

        # A station that does not answer: exit status 2, saying so.
        p = subprocess.run([sys.executable, "-m", "ims_station", "relay", "request", "NOSUCH", "--start", str(old),
                            "--end", str(old + 10), "--config", str(relay.config), "--wait", "1"],
                           capture_output=True, text=True, timeout=30)
        assert p.returncode == 2 and "no answer from NOSUCH within 1 s" in p.stderr, (p.stdout, p.stderr)

        # Delivered frames went back to the buffer (the relay's acknacks), nothing else was sent.
        wait_for(lambda: st.outbox.stats()["held"] == 40, 20, "the delivered frames back in the buffer")
        assert archived_sequences(archive, FS) == want
        up = st.uplink.stats()
        assert up["commands"] == 4 and up["commands_detail"]["refused"] == 1 and up["command_errors"] == 0
        assert up["resent"] == 0 and up["acknacks_bad_signature"] == 0
    finally:
        st.close()
        relay.stop()
