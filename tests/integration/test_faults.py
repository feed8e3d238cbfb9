"""Must-show 1, 3 and 5: store-and-forward survives a stopped broker, a killed relay and a full disk,
end to end against a real Mosquitto and the relay process (see harness.py for what is accelerated)."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time

import pytest

from ims_station.edge.logutil import SystemClock
from ims_station.edge.outbox import Outbox
from ims_station.edge.uplink import Uplink

from .harness import (FrameFactory, PacedStation, RelayProcess, archived_sequences, frame_times, sha256,
                      start_mosquitto, wait_for, write_keys)

STA = "STA1"
FRAME_SET = f"{STA}:0"


class Station:
    """The station side: outbox + uplink (production code) fed by a FrameFactory."""

    def __init__(self, tmp, broker_cfg, keystore, *, outbox_path=None, max_bytes=64 << 20, **frames):
        self.clock = SystemClock()
        self.alarms: list[dict] = []
        self.outbox = Outbox(outbox_path or tmp / "outbox.sqlite", max_bytes=max_bytes, max_age_s=7 * 86400,
                             clock=self.clock, on_alarm=self.alarms.append, resend_holdoff_s=0.5)
        self.uplink = Uplink(STA, [broker_cfg], self.outbox, clock=self.clock, backoff_base_s=0.05,
                             backoff_max_s=0.5, ack_timeout_s=5.0, connect_timeout_s=3.0)
        self.factory = FrameFactory(STA, keystore, 100, **frames)
        self.built: dict[int, str] = {}

    def commit(self, t: float) -> int:
        seq, raw = self.factory.frame(t)
        assert self.outbox.put("cd11", FRAME_SET, seq, t, raw)
        self.built[seq] = sha256(raw)
        self.uplink.notify()
        return seq

    def close(self):
        self.uplink.stop()
        self.outbox.close()


@pytest.fixture
def net(tmp_path):
    stores = write_keys(tmp_path, [STA])
    broker = start_mosquitto(tmp_path)
    relay = RelayProcess(tmp_path / "relay", broker.config, tmp_path / "trust").start()
    sta = Station(tmp_path, broker.config, stores[STA])
    yield broker, relay, sta
    sta.close()
    relay.stop()
    broker.close()


def relay_stats(relay: RelayProcess) -> dict:
    last = {}
    for p in relay.log_files:
        for line in p.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    doc = json.loads(line)
                except ValueError:
                    continue
                if doc.get("event") in ("stats", "stopped"):
                    last = doc
    return last


def all_delivered(relay, sta, expected: dict[int, str], frame_set: str = FRAME_SET):
    def check():
        got = archived_sequences(relay.root / "data" / "archive", frame_set)
        return len(got) == len(expected) and sta.outbox.stats()["frames"] == 0 and got
    return check


def assert_archive_exact(relay, expected: dict[int, str], frame_set: str = FRAME_SET):
    got = archived_sequences(relay.root / "data" / "archive", frame_set)
    assert sorted(got) == sorted(expected), "lost or extra sequence numbers"
    assert got == expected, "archived bytes differ from the frames built"


SPEED = 60.0                      # simulated seconds per wall second: 30 minutes in about 31 s
RUN_S = 1800.0                    # 30 simulated minutes of sampling
OUTAGE_S = (600.0, 900.0)         # the broker is dead from minute 10 to minute 15 (simulated)


def test_broker_stopped_for_5_of_30_minutes_loses_nothing(tmp_path):
    """Must-show 1: the real station path (HIL board -> sim:// -> link decoder -> streams -> framer
    -> outbox -> uplink) runs 30 simulated minutes at 60x; Mosquitto is SIGKILLed at minute 10 and
    started again on the same port 300 simulated seconds later, while the board keeps sampling and
    the framer keeps committing.  Every frame committed is archived exactly once, verified, with
    the bytes the outbox committed; nothing quarantined, nothing evicted."""
    broker = start_mosquitto(tmp_path)
    port = broker.config.port
    sta = PacedStation(tmp_path / "station", "STB1", broker, speed=SPEED)
    relay = RelayProcess(tmp_path / "relay-proc", broker.config, sta.trust).start()
    archive = relay.root / "data" / "archive"
    diag = lambda: f"{sta.uplink.stats()}\n{sta.outbox.stats()}\n{relay.logs()}"  # noqa: E731
    try:
        wait_for(lambda: relay_stats(relay).get("transport", {}).get("connected"), 30, "the relay subscribed",
                 on_timeout=relay.logs)
        sta.start(sampling_s=RUN_S)
        wait_for(lambda: sta.done() or sta.sim_time() >= OUTAGE_S[0], 60, "minute 10 of the run", on_timeout=diag)
        broker.kill()
        t_down = sta.sim_time()                 # the broker is dead from here (kill() waited for it)
        archived_before = set(archived_sequences(archive, sta.frame_set))
        wait_for(lambda: sta.done() or sta.sim_time() >= t_down + OUTAGE_S[1] - OUTAGE_S[0], 60,
                 "5 simulated minutes of outage", on_timeout=diag)
        t_restart = sta.sim_time()
        archived_during = set(archived_sequences(archive, sta.frame_set))
        backlog = sta.outbox.stats()["frames"]
        broker.start()
        t_up = sta.sim_time()                   # listening again
        assert broker.config.port == port
        during = {s for s, t in sta.commit_times.items() if t_down <= t < t_restart}
        wait_for(sta.done, 90, "the end of the 30-minute run", on_timeout=diag)
        wait_for(all_delivered(relay, sta, sta.committed, sta.frame_set), 60,
                 "every committed frame archived and acknowledged", on_timeout=diag)

        # The outage was real and long: 5 simulated minutes, ~30 frames committed meanwhile, none of
        # which could reach the archive until the broker was back.
        assert t_restart - t_down >= 300 and t_up - t_down < 330, (t_down, t_restart, t_up)
        assert 29 <= len(during) <= 31, sorted(during)
        assert len(archived_before) >= 40, "no steady state before the outage"
        assert not during & archived_during, "frames archived while the broker was dead"
        assert backlog >= len(during)
        assert sta.uplink.stats()["disconnects"] >= 1
        # Every frame of the 30 minutes (180 full 10-s windows) built, archived once, same bytes.
        assert len(sta.committed) == RUN_S / 10, len(sta.committed)
        assert sta.framer.stats()["partial_frames"] == 0, sta.framer.stats()
        assert_archive_exact(relay, sta.committed, sta.frame_set)
        st = sta.outbox.stats()
        assert st["frames"] == 0 and st["evicted"] == 0 and sta.alarms == [], (st, sta.alarms)
    finally:
        sta.close()
        relay.stop()
        broker.close()
    s = relay_stats(relay)
    assert s["quarantined"] == 0 and s["security_events"] == 0, s
    assert s["archived"] == len(sta.committed) and s["verified"] >= len(sta.committed), s


def test_relay_killed_and_restarted_mid_run_loses_nothing(net):
    """Must-show 3: the relay SIGKILLed mid-run (while frames flow), restarted later; the station
    resends what the dead relay never acknowledged, and the relay archives each frame once.

    Checked from counters, not assumed: the kill came while frames were awaiting the relay's
    acknack, nothing was archived while it was dead, the station resent frames (its ack timeout
    ran out while the relay was dead), and the restarted relay received copies it already had
    (``duplicates``) and dropped them."""
    broker, relay, sta = net
    sta.uplink.start()
    times = frame_times(180)
    archive = relay.root / "data" / "archive"

    def paced(ts):                          # frames keep coming while the relay is killed
        for t in ts:
            sta.commit(t)
            time.sleep(0.05)

    committer = threading.Thread(target=paced, args=(times[:60],))
    committer.start()
    try:
        wait_for(lambda: len(archived_sequences(archive, FRAME_SET)) >= 30, 30, "first frames archived",
                 on_timeout=relay.logs)
        relay.kill()
        archived_at_kill = set(archived_sequences(archive, FRAME_SET))
        unacked_at_kill = sta.outbox.stats()["frames"]
        still_committing = committer.is_alive()
        resent_at_kill = sta.uplink.stats()["resent"]
    finally:
        committer.join()
    for t in times[60:120]:
        sta.commit(t)
    # Dead for longer than the station's ack timeout: what it sent goes unacknowledged, is resent.
    wait_for(lambda: sta.uplink.stats()["requeued_ack_timeout"] > 0
             and sta.uplink.stats()["resent"] > resent_at_kill, 30, "the station resending unacknowledged frames",
             on_timeout=lambda: f"{sta.uplink.stats()}\n{sta.outbox.stats()}")
    archived_while_dead = set(archived_sequences(archive, FRAME_SET)) - archived_at_kill
    relay.start()
    for t in times[120:]:
        sta.commit(t)
    wait_for(all_delivered(relay, sta, sta.built), 60, "all 180 frames archived and acknowledged",
             on_timeout=lambda: f"{sta.uplink.stats()}\n{sta.outbox.stats()}\n{relay.logs()}")
    assert_archive_exact(relay, sta.built)
    relay.stop()
    # The kill interrupted delivery: frames were flowing and awaiting the relay's acknack.
    assert still_committing and unacked_at_kill > 0, (still_committing, unacked_at_kill)
    assert 30 <= len(archived_at_kill) < 60 and archived_while_dead == set(), (len(archived_at_kill),
                                                                             archived_while_dead)
    up = sta.uplink.stats()
    assert up["resent"] > 0 and up["requeued_ack_timeout"] > 0, up
    s = relay_stats(relay)                  # the restarted process's counters
    assert s["quarantined"] == 0, s
    assert s["duplicates"] > 0, s           # the resent copies reached it and were dropped
    assert s["archived"] == len(sta.built) - len(archived_at_kill), s


@pytest.fixture
def small_disk(tmp_path):
    """An 8 MiB tmpfs: a real full file system (ENOSPC), not a simulated one."""
    d = tmp_path / "disk"
    d.mkdir()
    from tests.conftest import need_root

    need_root("the disk-full test mounts a tmpfs (CI runs ./run tests as root)")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(d)], check=True)
    yield d
    subprocess.run(["umount", "-l", str(d)], check=False)


def test_disk_full_on_gateway_evicts_oldest_with_alarm_keeps_newest_and_runs_on(tmp_path, small_disk):
    """Must-show 5: with the broker unreachable the outbox fills an 8 MiB file system (frames of
    200 sps x 3 channels, about 20 kB each); every commit
    still succeeds by evicting the oldest frames (alarm), the newest are kept, and once the broker
    and relay are back the kept frames arrive."""
    stores = write_keys(tmp_path, [STA])
    broker = start_mosquitto(tmp_path)
    broker.stop()                                   # network down from the start
    sta = Station(tmp_path, broker.config, stores[STA], outbox_path=small_disk / "outbox.sqlite",
                  max_bytes=1 << 30, rate=200.0, step=1 << 16)  # the disk, not the byte bound, is the limit
    relay = None
    try:
        sta.uplink.start()
        times = frame_times(700, end_ago_s=60)
        for t in times:
            sta.commit(t)                           # never raises: the disk-full path evicts
        st = sta.outbox.stats()
        assert st["frames"] < len(times), "the disk never filled: the test proves nothing"
        assert any(a.get("reason") == "disk_full" for a in sta.alarms), sta.alarms[:3]
        newest = [sta.factory.frame(t)[0] for t in times[-20:]]
        missing = [s for s in newest if not sta.outbox.contains(FRAME_SET, s)]
        assert not missing, f"newest frames must be kept; missing {missing} of {newest}, stats {st}"
        oldest = sta.factory.frame(times[0])[0]
        assert not sta.outbox.contains(FRAME_SET, oldest), "oldest frame must be the one evicted"
        assert sta.uplink._thread is not None and sta.uplink._thread.is_alive()
        kept = {s: sta.built[s] for s in sta.built if sta.outbox.contains(FRAME_SET, s)}
        # The network comes back: what the disk kept reaches the archive.
        broker.start()
        relay = RelayProcess(tmp_path / "relay", broker.config, tmp_path / "trust").start()
        wait_for(lambda: set(kept) <= set(archived_sequences(relay.root / "data" / "archive", FRAME_SET)),
                 90, "the kept frames archived", on_timeout=lambda: f"{sta.uplink.stats()}\n{relay.logs()}")
        got = archived_sequences(relay.root / "data" / "archive", FRAME_SET)
        assert all(got[s] == kept[s] for s in kept)
    finally:
        sta.close()
        if relay is not None:
            relay.stop()
        broker.close()
