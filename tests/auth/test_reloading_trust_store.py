""":class:`ReloadingTrustStore` on a fake clock, without a relay: when the directory is polled, when
a change is loaded (after it held still for one poll interval), what a SIGHUP-style request does
with polling off, what is kept when the directory does not load, the counters and ``last_error`` of
``stats()``, and the log lines an operator reads (docs/relay.md, "Trust store reload")."""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil

import pytest

from ims_station.auth import Keystore, ReloadingTrustStore, export_public, generate_key
from ims_station.clock import FakeClock

STA = "STA01"
UTC = dt.timezone.utc
INSIDE = dt.datetime(2020, 6, 1, tzinfo=UTC)     # both keys are valid in 2020 only


@pytest.fixture(scope="module")
def keystore_dir(tmp_path_factory):
    ks = tmp_path_factory.mktemp("reload") / "keys"
    for key_id in (101, 102):
        generate_key("ed25519", key_id, ks, station=STA, valid_from="2020-01-01T00:00:00Z",
                     valid_until="2021-01-01T00:00:00Z")
    return ks


@pytest.fixture
def trust(keystore_dir, tmp_path):
    trust = tmp_path / "trust"
    export_public(keystore_dir, 101, trust)
    return trust


def messages(caplog, level):
    return [r.getMessage() for r in caplog.records if r.name == "ims_station.auth" and r.levelno == level]


def poll(store, clock, seconds=1.0):
    clock.advance(seconds)
    return store.refresh()


def test_defaults_and_fresh_stats(trust):
    store = ReloadingTrustStore(trust, clock=FakeClock())
    assert store.poll_s == 5.0
    assert store.stats() == {"reloads": 0, "reload_errors": 0, "keys": [101], "last_error": None}


def test_verify_without_a_time_uses_the_store_clock_also_after_a_reload(trust, keystore_dir):
    signature = Keystore.load(keystore_dir).signer(101).sign(b"frame")
    store = ReloadingTrustStore(trust, clock=FakeClock(), poll_s=0, store_clock=lambda: INSIDE)
    assert store.verify(STA, 101, b"frame", signature).ok          # real now (2026+) is outside
    assert store.reload() is True
    assert store.verify(STA, 101, b"frame", signature).ok


def test_polling_loads_a_change_once_it_held_still_for_one_interval(trust, keystore_dir, caplog):
    clock = FakeClock()
    store = ReloadingTrustStore(trust, clock=clock, poll_s=1)
    for _ in range(3):                                  # unchanged directory: never reloaded
        assert poll(store, clock) is False
    export_public(keystore_dir, 102, trust)
    assert store.refresh() is False                     # mid-interval: not even looked at
    assert poll(store, clock) is False                  # polled exactly at the interval: settling
    assert store.refresh() is False                     # no second look within the interval
    assert store.key_ids() == [101]
    with caplog.at_level(logging.INFO, "ims_station.auth"):
        assert poll(store, clock) is True               # held still for one interval: loaded
    assert store.key_ids() == [101, 102]
    assert messages(caplog, logging.WARNING) == [
        f"trust store {trust} reloaded (directory changed): 2 key(s); added [102], removed none"]
    for _ in range(3):                                  # the loaded state is the new reference
        assert poll(store, clock) is False
    assert store.stats()["reloads"] == 1


def test_polling_off_reloads_only_on_request(trust, keystore_dir, caplog):
    clock = FakeClock()
    store = ReloadingTrustStore(trust, clock=clock, poll_s=0)
    export_public(keystore_dir, 102, trust)
    for _ in range(3):
        assert poll(store, clock, 10) is False
    assert store.key_ids() == [101] and store.stats()["reloads"] == 0
    store.request_reload()
    with caplog.at_level(logging.INFO, "ims_station.auth"):
        assert store.refresh() is True
    assert store.key_ids() == [101, 102]
    assert messages(caplog, logging.WARNING) == [
        f"trust store {trust} reloaded (SIGHUP): 2 key(s); added [102], removed none"]
    assert store.refresh() is False                     # the request was used up


def test_a_direct_reload_says_so_and_counts(trust, caplog):
    store = ReloadingTrustStore(trust, clock=FakeClock(), poll_s=0)
    (trust / "101.pem").unlink()
    (trust / "101.toml").unlink()
    with caplog.at_level(logging.INFO, "ims_station.auth"):
        assert store.reload() is True
        assert store.reload() is True
    assert messages(caplog, logging.WARNING) == [
        f"trust store {trust} reloaded (reload): 0 key(s); added none, removed [101]",
        f"trust store {trust} reloaded (reload): 0 key(s); added none, removed none"]
    assert store.stats() == {"reloads": 2, "reload_errors": 0, "keys": [], "last_error": None}


def test_a_directory_that_does_not_load_keeps_the_old_store(trust, keystore_dir, caplog):
    clock = FakeClock()
    store = ReloadingTrustStore(trust, clock=clock, poll_s=1)
    (trust / "7.pem").write_text("half-copied\n")
    os.chmod(trust / "7.pem", 0o644)
    assert poll(store, clock) is False                  # settling
    with caplog.at_level(logging.INFO, "ims_station.auth"):
        assert poll(store, clock) is False              # loaded, failed, old store kept
    reason = f"{trust / '7.pem'}: <top level>: no metadata file 7.toml beside it"
    assert messages(caplog, logging.ERROR) == [
        f"trust store {trust}: reload (directory changed) failed, keeping the 1 key(s) loaded before: {reason}"]
    assert store.stats() == {"reloads": 0, "reload_errors": 1, "keys": [101], "last_error": reason}
    for _ in range(3):                                  # not retried until it changes again
        assert poll(store, clock) is False
    assert store.stats()["reload_errors"] == 1
    caplog.clear()
    store.request_reload()                              # ... or until asked
    with caplog.at_level(logging.INFO, "ims_station.auth"):
        assert store.refresh() is False
    assert messages(caplog, logging.ERROR) == [
        f"trust store {trust}: reload (SIGHUP) failed, keeping the 1 key(s) loaded before: {reason}"]
    assert store.stats()["reload_errors"] == 2
    (trust / "7.pem").unlink()
    export_public(keystore_dir, 102, trust)
    store.request_reload()
    assert store.refresh() is True
    assert store.stats() == {"reloads": 1, "reload_errors": 2, "keys": [101, 102], "last_error": None}


def test_a_vanished_directory_is_retried_when_its_state_changes(trust, keystore_dir):
    clock = FakeClock()
    store = ReloadingTrustStore(trust, clock=clock, poll_s=1)
    shutil.rmtree(trust)
    poll(store, clock)
    assert poll(store, clock) is False
    assert store.stats()["reload_errors"] == 1 and "trust store directory not found" in store.last_error
    assert [poll(store, clock) for _ in range(3)] == [False] * 3
    assert store.stats()["reload_errors"] == 1          # the same failure is not retried
    trust.write_text("a file where the directory was\n")
    poll(store, clock)
    assert poll(store, clock) is False
    assert store.stats()["reload_errors"] == 2          # a different failure is
    trust.unlink()
    export_public(keystore_dir, 102, trust)
    poll(store, clock)
    assert poll(store, clock) is True
    assert store.key_ids() == [102] and store.last_error is None
