"""Key rotation end to end, as docs/keys.md's "Rotation" says: the real station path (HIL board ->
sim:// -> link decoder -> streams -> framer -> outbox -> uplink) runs across the next key's
``valid_from`` on a paced simulated clock, without a restart, while ``ims-station relay run``
verifies every frame and subframe signature against its trust store.  Every frame before and after
the switch is archived with the bytes the station committed; those before carry the old key id,
those after the new one (frame and every subframe)."""

from __future__ import annotations

import datetime as dt

import pytest

from ims_station import cd11
from ims_station.auth import export_public, generate_key

from .harness import PacedStation, RelayProcess, archived_sequences, start_mosquitto, wait_for
from .test_faults import relay_stats

pytestmark = pytest.mark.usefixtures("mosquitto_installed")

SPEED = 20.0                  # simulated seconds per wall second
SAMPLING_S = 120.0            # two simulated minutes of data
SWITCH_AFTER_S = 60           # the new key is valid from the 7th window on


def iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat().replace("+00:00", "Z")


def test_a_running_gateway_switches_keys_at_valid_from_and_the_relay_verifies_both(tmp_path):
    broker = start_mosquitto(tmp_path)
    start_utc = int(dt.datetime.now(dt.timezone.utc).timestamp()) // 10 * 10
    switch = start_utc + SWITCH_AFTER_S
    keys, trust = tmp_path / "station-keys", tmp_path / "trust"
    # The rotation procedure of docs/keys.md: key 1 in use, key 2 valid from the switch, exported
    # to the relay, key 1's validity ended in the trust store at the same instant.
    generate_key("ed25519", 1, keys, station="STR1", valid_from=iso(start_utc - 86400))
    export_public(keys, 1, trust)
    generate_key("ed25519", 2, keys, station="STR1", valid_from=iso(switch))
    export_public(keys, 2, trust)
    export_public(keys, 1, trust, valid_until=iso(switch))
    sta = PacedStation(tmp_path / "station", "STR1", broker, speed=SPEED, start_utc=start_utc, keystore=keys)
    relay = RelayProcess(tmp_path / "relay", broker.config, trust).start()
    archive = relay.root / "data" / "archive"
    diag = lambda: f"{sta.uplink.stats()}\n{sta.outbox.stats()}\n{relay.logs()}"  # noqa: E731
    try:
        wait_for(lambda: relay_stats(relay).get("transport", {}).get("connected"), 30, "the relay subscribed",
                 on_timeout=relay.logs)
        sta.start(sampling_s=SAMPLING_S)
        wait_for(sta.done, 60, "the end of the run", on_timeout=diag)
        wait_for(lambda: len(archived_sequences(archive, sta.frame_set)) >= len(sta.committed)
                 and sta.outbox.stats()["frames"] == 0, 60, "every committed frame archived", on_timeout=diag)
        got = archived_sequences(archive, sta.frame_set)
        assert got == sta.committed, "lost, extra or altered frames"
        first_new = cd11.sequence_from_time(float(switch))
        before = [s for s in got if s < first_new]
        after = [s for s in got if s >= first_new]
        assert len(before) >= 5 and len(after) >= 5, (before, after)
        for seq, raw in sta.committed_raw.items():
            f, _ = cd11.parse_frame(raw)
            want = 1 if seq < first_new else 2
            assert f.auth_key_id == want, (seq, f.auth_key_id)
            assert {sf.auth_key_id for sf in f.subframes} == {want}, seq
        s = relay_stats(relay)
        assert s["quarantined"] == 0 and s["security_events"] == 0, s["rejected"]
        assert sta.framer.stats()["unsigned_frames"] == 0
    finally:
        sta.close()
        relay.stop()
        broker.stop()
