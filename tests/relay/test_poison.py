"""Issue 7 §1: no single payload stops the relay.

* out-of-calendar times are ``malformed`` for the verifier, never an exception;
* ``RelayCore.process`` is a poison-message boundary: whatever one message makes our code raise
  (verifier, archive commit, state update), it is quarantined as ``internal_error``, counted, and
  the other messages of the batch are archived; only a storage failure (``RelayError``) leaves
  ``process``, with nothing stored as acknowledged;
* the time-plausibility window (``implausible_time``, a clock event) on the injected clock;
* ``[relay] max_past_s`` / ``max_future_s`` are validated like every key.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone

import pytest

from ims_station.clock import FakeClock
from ims_station.relay.core import Incoming, RelayCore
from ims_station.relay.errors import ArchiveError
from ims_station.relay.verify import REASONS, Verifier

from .cd11_writer import data_frame
from .conftest import nominal_of

T = "ims/STA01/cd11"
BASE = 8640 * 8700                           # 2023-10-26 (conftest: 10-s frames since 2000)
NOW = nominal_of(BASE + 100).timestamp()     # the relay's (fake) clock: 1000 s after BASE
BAD_TIMES = ["0000001 00:00:00.000", "9999365 23:59:60.999", "2023366 00:00:00.000", "2023300 24:00:00.000"]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(t=NOW)


@pytest.fixture
def core(tmp_path, keys, clock, stores):
    c = RelayCore(keys.trust, stores.state(tmp_path / "state.sqlite"), stores.archive(tmp_path / "archive"),
                  clock=clock)
    yield c
    c.close()


def run(core, *payloads, topic=T):
    return [o.result for o in core.process([Incoming(topic, p, i) for i, p in enumerate(payloads)])]


@pytest.mark.parametrize("bad", BAD_TIMES)
@pytest.mark.parametrize("where", ["nominal", "subframe"])
def test_out_of_calendar_times_are_malformed_not_an_exception(keys, bad, where):
    good = "2023299 00:00:00.000"
    raw = data_frame("STA01", BASE, bad if where == "nominal" else good, [("STA01", "BHZ", "00")],
                     times=[bad if where == "subframe" else good])
    for require in (True, False):
        r = Verifier(keys.trust, require_signatures=require).check("STA01", raw)
        assert r.reason == "malformed" and ("nominal_time" if where == "nominal" else "subframe[0].time") in r.detail


def test_out_of_calendar_frames_are_quarantined_and_the_batch_goes_on(core, factory):
    bad = [data_frame("STA01", BASE + 50, t, [("STA01", "BHZ", "00")]) for t in BAD_TIMES]
    out = run(core, factory.build(BASE), *bad, factory.build(BASE + 1))
    assert out == ["archived"] + ["malformed"] * len(bad) + ["archived"]
    assert core.archive.frame_keys() == [("STA01:0", BASE), ("STA01:0", BASE + 1)]
    assert len(core.archive.quarantine_entries(reason="malformed")) == len(bad)


def test_an_exception_in_the_verifier_quarantines_that_message_only(core, factory, caplog):
    frames = [factory.build(BASE + i) for i in range(6)]
    poison = frames[3]
    real = core.verifier.check

    def check(station, payload):
        if payload == poison:
            raise ZeroDivisionError("injected")
        return real(station, payload)

    core.verifier.check = check
    with caplog.at_level(logging.ERROR):
        out = run(core, *frames)
    assert out == ["archived"] * 3 + ["internal_error"] + ["archived"] * 2
    assert [s for _, s in core.archive.frame_keys()] == [BASE + i for i in (0, 1, 2, 4, 5)]
    (q,) = core.archive.quarantine_entries(reason="internal_error")
    assert q["station"] == "STA01" and "ZeroDivisionError: injected" in q["detail"]
    assert core.archive.read_quarantined(q) == poison
    st = core.stats()
    assert st["internal_errors"] == 1 and st["rejected"] == {"internal_error": 1} and st["archived"] == 5
    assert st["received"] == 6 and st["quarantined"] == 1
    assert "internal_error" in caplog.text and "Traceback" not in caplog.text
    # and the next batch is processed normally
    core.verifier.check = real
    assert run(core, factory.build(BASE + 6)) == ["archived"]


def test_a_poison_record_in_the_archive_commit_does_not_lose_the_batch(core, factory):
    """The commit is one transaction for the batch: one record that makes it raise (not a disk
    error) would take the others with it.  The batch is split until the poison stands alone."""
    frames = [factory.build(BASE + i) for i in range(8)]
    poison = frames[5]
    real = core.archive.commit

    def commit(recs, quarantined=()):
        if any(r.raw == poison for r in recs):
            raise OverflowError("injected: Python int too large to convert to SQLite INTEGER")
        return real(recs, quarantined)

    core.archive.commit = commit
    out = run(core, *frames, b"garbage")
    assert out == ["archived"] * 5 + ["internal_error"] + ["archived"] * 2 + ["malformed"]
    assert [s for _, s in core.archive.frame_keys()] == [BASE + i for i in range(8) if i != 5]
    st = core.stats()
    assert st["received"] == 9 and st["archived"] == 7 and st["internal_errors"] == 1 and st["quarantined"] == 2
    assert st["frame_sets"]["STA01:0"]["gaps"] == 1          # seq 5 missing: the station resends it


def test_a_poison_state_update_quarantines_only_its_message(core, factory):
    real = core.state_store.update

    def update(names, fn, **kw):
        if "STA01:0" in names and len(names["STA01:0"]) and BASE + 2 in names["STA01:0"]:
            raise KeyError("injected")
        return real(names, fn, **kw)

    core.state_store.update = update
    out = run(core, *[factory.build(BASE + i) for i in range(4)])
    # The first attempt archived all four before the state update raised: the halves processed
    # again find them archived (duplicates); the state takes every one but the poison's frame.
    assert out == ["duplicate", "duplicate", "internal_error", "duplicate"]
    assert len(core.archive.frame_keys()) == 4
    st = core.stats()
    assert st["frame_sets"]["STA01:0"] == {"lowest": BASE, "highest": BASE + 3, "gaps": 1, "missing": 1}
    assert st["internal_errors"] == 1 and st["received"] == 4


def test_a_disk_failure_still_leaves_process_with_nothing_acknowledged(core, factory):
    """Fail-safe kept: an ArchiveError (the disk, not the data) is raised, the batch not split."""
    calls = []

    def commit(recs, quarantined=()):
        calls.append(len(recs))
        raise ArchiveError("disk full (simulated)")

    core.archive.commit = commit
    with pytest.raises(ArchiveError):
        core.process([Incoming(T, factory.build(BASE + i)) for i in range(4)])
    assert calls == [4]


def test_a_signed_frame_dated_2100_is_quarantined_as_a_clock_event(core, factory, caplog):
    t2100 = datetime(2100, 1, 1, tzinfo=timezone.utc)
    seq2100 = int((t2100.timestamp() - nominal_of(0).timestamp()) // 10)
    assert run(core, factory.build(BASE)) == ["archived"]
    with caplog.at_level(logging.WARNING):
        out = run(core, *[factory.build(seq2100 + i) for i in range(20)], factory.build(BASE + 1))
    assert out == ["implausible_time"] * 20 + ["archived"]
    assert core.archive.frame_keys() == [("STA01:0", BASE), ("STA01:0", BASE + 1)]
    st = core.stats()
    assert st["clock_events"] == 20 and st["rejected"] == {"implausible_time": 20}
    assert st["frame_sets"]["STA01:0"] == {"lowest": BASE, "highest": BASE + 1, "gaps": 0, "missing": 0}
    assert len(core.archive.quarantine_entries(reason="implausible_time")) == 20
    lines = [r for r in caplog.records if "implausible_time" in r.getMessage()]
    assert lines and all(r.levelno == logging.WARNING for r in lines)
    assert len(lines) == 5          # rate-limited: a burst of 5, the clock does not move


@pytest.mark.parametrize("past,future,offsets,expected", [
    # offsets: nominal time of the frame relative to the clock, in frames of 10 s
    (30 * 86400.0, 86400.0, [-100, -259199, 8630], ["archived"] * 3),
    (30 * 86400.0, 86400.0, [-259201, 8640], ["implausible_time"] * 2),   # 30 days + 10 s ago; ends 1 d + 10 s ahead
    (3600.0, 60.0, [-360, -361, 5, 6], ["archived", "implausible_time", "archived", "implausible_time"]),
    (None, None, [-10 ** 6, 10 ** 6], ["archived", "archived"]),
])
def test_time_window_is_configurable_and_uses_the_injected_clock(tmp_path, keys, factory, clock, past, future,
                                                                 offsets, expected, stores):
    core = RelayCore(keys.trust, stores.state(tmp_path / "s"), stores.archive(tmp_path / "a"), clock=clock,
                     max_past_s=past, max_future_s=future, sequence_check=False)
    now_seq = BASE + 100
    out = [run(core, factory.build(now_seq + off))[0] for off in offsets]
    core.close()
    assert out == expected


def test_reason_codes_are_documented():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "relay.md").read_text()
    for reason in REASONS:
        assert f"`{reason}`" in doc, reason


GOOD_CONF = """
[relay]
data_dir = "data"
trust_dir = "{trust}"
{extra}
[[broker]]
host = "127.0.0.1"
port = 1883
"""


@pytest.mark.parametrize("extra,key,reason", [
    ("max_past_s = 0", "relay.max_past_s", "0 is less than or equal to the minimum of 0"),
    ("max_future_s = -5", "relay.max_future_s", "-5 is less than or equal to the minimum of 0"),
    ('max_future_s = "1d"', "relay.max_future_s", "'1d' is not of type 'number'"),
])
def test_time_window_config_errors_name_file_key_and_reason(tmp_path, keys, extra, key, reason):
    from ims_station.errors import ConfigError
    from ims_station.relay.cli import load_config

    p = tmp_path / "relay.toml"
    p.write_text(GOOD_CONF.format(trust=keys.trust_dir, extra=extra))
    with pytest.raises(ConfigError) as err:
        load_config(p)
    assert err.value.file == str(p) and err.value.key == key and reason in err.value.reason


def test_time_window_config_reaches_the_core(tmp_path, keys):
    from ims_station.relay.cli import build_relay, load_config

    p = tmp_path / "relay.toml"
    p.write_text(GOOD_CONF.format(trust=keys.trust_dir, extra="max_past_s = 7200\nmax_future_s = 30.5"))
    relay = build_relay(load_config(p))
    try:
        assert (relay.core.max_past_s, relay.core.max_future_s) == (7200, 30.5)
    finally:
        relay.core.close()
    p.write_text(GOOD_CONF.format(trust=keys.trust_dir, extra=""))
    relay = build_relay(load_config(p))
    try:
        assert (relay.core.max_past_s, relay.core.max_future_s) == (30 * 86400, 86400)
    finally:
        relay.core.close()


def test_even_a_payload_that_is_not_bytes_does_not_raise_out_of_process(core, factory):
    """A transport bug handing over something that is not bytes, or a topic that is not text: the
    boundary still holds (the record keeps what it can)."""
    out = core.process([Incoming(T, None, 0), Incoming(12345, factory.build(BASE), 1),
                        Incoming(T, factory.build(BASE + 1), 2)])
    assert [o.result for o in out] == ["internal_error", "internal_error", "archived"]
    assert core.stats()["received"] == 3
