"""The relay's trust store follows its directory without a restart: a new key exported into it is
used from the next message on (SIGHUP, or the directory's change noticed by polling), the swap
happens between two messages (none is dropped or rejected by a half-loaded store), and a broken
trust directory keeps the old store with an error in the log (docs/relay.md, "Trust store reload")."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from ims_station import cd11
from ims_station.auth import Keystore, ReloadingTrustStore, export_public, generate_key
from ims_station.clock import FakeClock

STA = "STA01"


@pytest.fixture
def dirs(tmp_path):
    ks, trust = tmp_path / "keys", tmp_path / "trust"
    generate_key("ed25519", 101, ks, station=STA, valid_from="2020-01-01T00:00:00Z")
    generate_key("ed25519", 102, ks, station=STA, valid_from="2020-01-01T00:00:00Z")
    export_public(ks, 101, trust)
    return ks, trust


def frame(keystore: Keystore, key_id: int, seq: int) -> bytes:
    t = cd11.to_datetime("2025001 00:00:00.000").timestamp() + 10 * seq
    signer = keystore.signer(key_id)
    ch = cd11.ChannelInput(STA, "BHZ", "00", np.arange(400, dtype=np.int32) + seq, 40.0, t, None, signer)
    return cd11.build_data_frame(STA, cd11.sequence_from_time(t), t, [ch], signer)


def ok(store, keystore, key_id: int) -> bool:
    f, _ = cd11.parse_frame(frame(keystore, key_id, 1))
    return cd11.verify_frame(f, store).failures() == []


def test_a_changed_directory_is_reloaded_at_the_next_poll(dirs):
    ks, trust = dirs
    keystore, clock = Keystore.load(ks), FakeClock()
    store = ReloadingTrustStore(trust, clock=clock, poll_s=5)
    assert ok(store, keystore, 101) and not ok(store, keystore, 102)
    export_public(ks, 102, trust)
    assert store.refresh() is False               # not polled yet: nothing changes mid-interval
    clock.advance(5)
    assert store.refresh() is False               # changed: loaded once it held still for a poll
    clock.advance(5)
    assert store.refresh() is True
    assert ok(store, keystore, 102) and ok(store, keystore, 101)
    clock.advance(5)
    assert store.refresh() is False               # unchanged directory: no reload
    assert store.stats()["reloads"] == 1


def test_a_requested_reload_happens_with_polling_off(dirs):
    ks, trust = dirs
    keystore = Keystore.load(ks)
    store = ReloadingTrustStore(trust, clock=FakeClock(), poll_s=0)
    export_public(ks, 102, trust)
    assert store.refresh() is False
    store.request_reload()                        # what the SIGHUP handler does
    assert store.refresh() is True and ok(store, keystore, 102)


def test_a_bad_trust_directory_keeps_the_old_store_and_logs_an_error(dirs, caplog):
    ks, trust = dirs
    keystore, clock = Keystore.load(ks), FakeClock()
    store = ReloadingTrustStore(trust, clock=clock, poll_s=1)
    (trust / "7.pem").write_text("not a key\n")   # no metadata beside it: the store does not load
    os.chmod(trust / "7.pem", 0o644)
    clock.advance(1)
    assert store.refresh() is False               # settling
    clock.advance(1)
    with caplog.at_level(logging.ERROR, "ims_station.auth"):
        assert store.refresh() is False
    assert any("reload (directory changed) failed, keeping the 1 key(s)" in r.message and "7.pem" in r.message
               for r in caplog.records)
    assert ok(store, keystore, 101) and store.stats()["reload_errors"] == 1
    clock.advance(1)
    assert store.refresh() is False and store.stats()["reload_errors"] == 1   # not retried until it changes
    (trust / "7.pem").unlink()
    export_public(ks, 102, trust)
    clock.advance(1)
    store.refresh()
    clock.advance(1)
    assert store.refresh() is True and ok(store, keystore, 102)


# -- the relay process -------------------------------------------------------------------------------


class RelayRun:
    """``ims-station relay run`` as a child process, its JSON stats lines parsed."""

    def __init__(self, root: Path, broker, trust: Path, poll_s: float) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.config = root / "relay.toml"
        self.config.write_text(
            f'[relay]\ndata_dir = "{root / "data"}"\ntrust_dir = "{trust}"\ninstance = "r1"\nname = "IDC"\nmax_past_s = 1e10   # the frames are of 2025\n'
            f"trust_poll_s = {poll_s}\nacknack_interval_s = 1.0\n\n"
            f'[[broker]]\nhost = "{broker.host}"\nport = {broker.port}\n')
        self.log = root / "relay.log"
        with open(self.log, "wb") as fh:
            self.proc = subprocess.Popen([sys.executable, "-m", "ims_station", "relay", "run", "--config",
                                          str(self.config), "--json", "--stats-every", "0.2"],
                                         stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)

    def stats(self) -> dict:
        last = {}
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    last = json.loads(line)
                except ValueError:
                    pass
        return last

    def wait(self, pred, what: str, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s = self.stats()
            if s and pred(s):
                return s
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Publisher:
    """A station publishing frames of key 101 without pause, in a thread, while the test reloads."""

    def __init__(self, broker, keystore: Keystore) -> None:
        import paho.mqtt.client as mqtt

        self.keystore = keystore
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-sta01")
        self.c.connect(broker.host, broker.port)
        self.c.loop_start()
        self.sent: list[int] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def publish(self, raw: bytes) -> None:
        self.c.publish(f"ims/{STA}/cd11", raw, qos=1).wait_for_publish(10)

    def _run(self) -> None:
        seq = 0
        while not self.stop.is_set():
            self.publish(frame(self.keystore, 101, seq))
            self.sent.append(seq)
            seq += 1
            time.sleep(0.01)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        self.c.loop_stop()
        self.c.disconnect()


@pytest.mark.parametrize("how", ["sighup", "poll"])
def test_the_running_relay_reloads_its_trust_store_without_dropping_a_message(tmp_path, dirs, mosquitto, how):
    ks, trust = dirs
    keystore = Keystore.load(ks)
    relay = RelayRun(tmp_path / "relay", mosquitto, trust, poll_s=0 if how == "sighup" else 0.2)
    pub = None
    try:
        relay.wait(lambda s: s["transport"]["connected"], "the relay's subscription")
        pub = Publisher(mosquitto, keystore)
        pub.publish(frame(keystore, 102, 50_000))         # key 102 not trusted yet: quarantined
        relay.wait(lambda s: s["rejected"].get("frame_signature") == 1, "the untrusted frame quarantined")
        pub.thread.start()
        relay.wait(lambda s: s["archived"] >= 20, "frames flowing")

        def reload(expect_reloads: int) -> None:
            if how == "sighup":
                relay.proc.send_signal(signal.SIGHUP)
            relay.wait(lambda s: s["trust"]["reloads"] + s["trust"]["reload_errors"] >= expect_reloads,
                       "the reload")

        # A broken change first: the old store stays (key 101 frames go on being archived).
        (trust / "7.pem").write_text("half-copied\n")
        os.chmod(trust / "7.pem", 0o644)
        reload(1)
        s = relay.stats()
        assert s["trust"]["reload_errors"] == 1 and s["trust"]["reloads"] == 0 and s["trust"]["keys"] == [101]
        assert "reload" in relay.log.read_text() and "7.pem" in relay.log.read_text()
        (trust / "7.pem").unlink()
        export_public(ks, 102, trust)
        reload(2)
        assert relay.stats()["trust"]["keys"] == [101, 102]
        pub.publish(frame(keystore, 102, 50_001))          # trusted now
        time.sleep(0.3)
        pub.close()
        n = len(pub.sent)
        # Every message is accounted for: all key-101 frames and the post-reload key-102 frame
        # archived, only the frame sent before its key was trusted quarantined.
        s = relay.wait(lambda s: s["archived"] == n + 1, f"{n + 1} frames archived")
        assert s["quarantined"] == 1 and s["received"] == n + 2
    finally:
        if pub is not None and not pub.stop.is_set():
            pub.close()
        relay.stop()
