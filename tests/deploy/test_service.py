"""ims_station/service.py (sd_notify, the heartbeat's pacing, the stop signals) and
ims_station/logutil.setup_logging, on a fake clock and a socket the test reads: no sleeping, no systemd.
The stop-signal tests send SIGUSR1/SIGUSR2 to this process (the handlers are put back after each)."""

from __future__ import annotations

import io
import logging
import os
import select
import signal
import socket
import tempfile
import threading

import pytest

from ims_station.logutil import JournalFormatter, setup_logging, under_journald
from ims_station.service import Heartbeat, Notifier, StopSignals


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def monotonic(self) -> float:
        return self.t

    def time(self) -> float:
        return self.t


@pytest.fixture
def listener():
    d = tempfile.mkdtemp(prefix="ims-n-", dir="/tmp")       # AF_UNIX paths are short (108 bytes)
    path = os.path.join(d, "notify")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.setblocking(False)

    def received() -> list[str]:
        out = []
        while True:
            try:
                out.append(s.recv(4096).decode())
            except BlockingIOError:
                return out

    yield path, received
    s.close()
    os.unlink(path)
    os.rmdir(d)


def test_without_notify_socket_every_call_is_a_no_op():
    n = Notifier({})
    assert not n.enabled and n.watchdog_s is None
    assert not n.ready("x") and not n.watchdog() and not n.stopping()


def test_the_datagrams_are_sd_notify_lines(listener):
    path, received = listener
    n = Notifier({"NOTIFY_SOCKET": path})
    assert n.ready("up and\nrunning") and n.status("s" * 1000) and n.watchdog() and n.stopping()
    got = received()
    assert got[0] == "READY=1\nSTATUS=up and running"           # STATUS= is one line
    assert got[1].startswith("STATUS=sss") and len(got[1]) == len("STATUS=") + 400 and got[1].endswith("...")
    assert got[2:] == ["WATCHDOG=1", "STOPPING=1"]


def test_an_abstract_socket_name_is_understood():
    name = f"ims-test-{os.getpid()}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + name)
    try:
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).ready()
        assert s.recv(100) == b"READY=1"
    finally:
        s.close()


def test_watchdog_usec_is_read_and_meant_for_our_pid_only():
    assert Notifier({"WATCHDOG_USEC": "20000000"}).watchdog_s == 20.0
    assert Notifier({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(os.getpid())}).watchdog_s == 20.0
    assert Notifier({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "1"}).watchdog_s is None
    assert Notifier({"WATCHDOG_USEC": "junk"}).watchdog_s is None


def test_a_vanished_supervisor_socket_is_counted_not_raised(caplog):
    n = Notifier({"NOTIFY_SOCKET": "/nonexistent/notify"})
    assert not n.ready() and not n.watchdog()
    assert n.errors == 2
    assert sum("sd_notify" in r.message for r in caplog.records) == 1      # logged once


def test_a_supervisor_that_stops_reading_does_not_block_the_daemon(listener, caplog):
    path, received = listener
    n = Notifier({"NOTIFY_SOCKET": path})
    sent = sum(n.watchdog() for _ in range(1000))        # nobody reads: the queue fills up
    assert 0 < sent < 1000 and n.errors == 1000 - sent
    assert len(received()) == sent


def _heartbeat(path, clock, health, states, caplog, summary_s=60.0):
    caplog.set_level(logging.INFO)
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "10000000"})
    return Heartbeat(logging.getLogger("test.hb"), healthy=lambda: health[0], summary=lambda: "all fine",
                     states=lambda: dict(states), summary_s=summary_s, check_s=5.0, notifier=n, clock=clock,
                     label="gateway XX.TEST")


def test_pings_at_half_the_watchdog_interval_only_while_healthy(listener, caplog):
    path, received = listener
    clock, health, states = FakeClock(), [None], {"uplink": "up"}
    hb = _heartbeat(path, clock, health, states, caplog)
    hb.started()
    assert received() == ["READY=1\nSTATUS=all fine", "WATCHDOG=1"]
    for _ in range(4):                       # 4 x 5 s = 20 s: one ping per 5 s
        clock.t += 5.0
        hb.turn()
        hb.turn()                            # called often, paces itself
    assert received() == ["WATCHDOG=1"] * 4
    health[0] = "port seismic: ingest thread ended"
    for _ in range(4):
        clock.t += 5.0
        hb.turn()
    assert received() == []                  # systemd's watchdog fires: the unit restarts
    assert [r.levelname for r in caplog.records if "unhealthy" in r.message] == ["ERROR"]   # said once
    health[0] = None
    clock.t += 5.0
    hb.turn()
    assert received() == ["WATCHDOG=1"]


def test_a_failing_health_check_withholds_the_pings_and_raises_nothing(listener, caplog):
    path, received = listener
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "10000000"})
    hb = Heartbeat(logging.getLogger("test.hb"), healthy=lambda: {}["bug"], summary=lambda: "s", notifier=n,
                   clock=FakeClock())
    hb.started()
    assert received() == ["READY=1\nSTATUS=s"]
    assert any("health check failed: KeyError" in r.getMessage() for r in caplog.records)


def test_summary_every_interval_at_info_and_as_status(listener, caplog):
    path, received = listener
    clock, health, states = FakeClock(), [None], {}
    hb = _heartbeat(path, clock, health, states, caplog, summary_s=60.0)
    hb.started()
    received()
    got = []
    for _ in range(24):                      # 120 s in 5-s steps
        clock.t += 5.0
        hb.turn()
        got += received()
    assert got.count("STATUS=all fine") == 2
    lines = [r for r in caplog.records if r.message == "all fine"]
    assert len(lines) == 3 and {r.levelno for r in lines} == {logging.INFO}        # start + 2


def test_state_changes_are_warnings_both_ways(listener, caplog):
    path, received = listener
    clock, health, states = FakeClock(), [None], {"uplink": "up", "port seismic": "up"}
    hb = _heartbeat(path, clock, health, states, caplog)
    hb.started()
    states["uplink"] = "down"
    clock.t += 5.0
    hb.turn()
    states["uplink"] = "up"
    clock.t += 5.0
    hb.turn()
    changes = [(r.levelname, r.getMessage()) for r in caplog.records if "(was" in r.getMessage()]
    assert changes == [("WARNING", "gateway XX.TEST: uplink down (was up)"),
                       ("WARNING", "gateway XX.TEST: uplink up (was down)")]


def test_a_failing_summary_does_not_stop_the_pings(listener, caplog):
    path, received = listener
    caplog.set_level(logging.INFO)
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "10000000"})
    clock = FakeClock()
    hb = Heartbeat(logging.getLogger("test.hb"), healthy=lambda: None, summary=lambda: 1 / 0,
                   summary_s=5.0, notifier=n, clock=clock)
    hb.started()
    clock.t += 5.0
    hb.turn()
    got = received()
    assert got[0] == "READY=1\nSTATUS=summary unavailable: ZeroDivisionError" and "WATCHDOG=1" in got


# ---------------------------------------------------------------- logging set-up

def test_journal_lines_carry_the_syslog_priority_and_no_time_stamp():
    f = JournalFormatter()
    rec = logging.LogRecord("ims_station.edge", logging.WARNING, __file__, 1, "uplink: %s", ("down",), None)
    assert f.format(rec) == "<4>ims_station.edge: uplink: down"
    rec = logging.LogRecord("x", logging.INFO, __file__, 1, "a\nb", (), None)
    assert f.format(rec) == "<6>x: a\n<6>b"          # each line of a traceback keeps the priority


def test_journal_stream_detected_only_for_the_stream_it_names(tmp_path):
    with open(tmp_path / "err", "w") as stream:
        st = os.fstat(stream.fileno())
        assert under_journald(stream, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        assert not under_journald(stream, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"})
        assert not under_journald(stream, {})
        assert not under_journald(io.StringIO(), {"JOURNAL_STREAM": "1:2"})


def test_setup_logging_level_and_format(tmp_path, monkeypatch):
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers[:] = []
    try:
        with open(tmp_path / "err", "w+") as stream:
            st = os.fstat(stream.fileno())
            h = setup_logging(0, default=logging.INFO, stream=stream,
                              env={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
            assert isinstance(h.formatter, JournalFormatter) and root.level == logging.INFO
            logging.getLogger("ims_station.relay").info("relay r: received 1")
            logging.getLogger("ims_station.relay").debug("not shown")
            h2 = setup_logging(1, stream=stream, env={})      # replaces ours; -v: WARNING -> INFO
            assert root.handlers == [h2] and root.level == logging.INFO
            assert not isinstance(h2.formatter, JournalFormatter)
            h2.flush()
            stream.seek(0)
            assert stream.read().splitlines() == ["<6>ims_station.relay: relay r: received 1"]
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
        import ims_station.logutil as lu
        lu._handler = None


def test_setup_logging_leaves_a_configured_root_logger_alone():
    root = logging.getLogger()
    foreign = logging.NullHandler()
    root.addHandler(foreign)
    try:
        assert setup_logging(2) is None and foreign in root.handlers
    finally:
        root.removeHandler(foreign)


# -- StopSignals ---------------------------------------------------------------------------------

BOUND_S = 30.0          # a wait that must return at once is given this long before the test fails


@pytest.fixture
def signals():
    s = StopSignals((signal.SIGUSR1,)).install()
    yield s
    s.close()


def test_a_stop_signal_is_seen_by_wait_and_stays_seen(signals):
    assert not signals.is_set() and signals.wait(0) is False
    os.kill(os.getpid(), signal.SIGUSR1)
    assert signals.is_set() and signals.signal == signal.SIGUSR1
    assert signals.wait(BOUND_S) and signals.wait(BOUND_S)      # every later wait returns at once


def test_a_signal_that_arrives_while_the_loop_goes_to_sleep_still_wakes_it(signals, monkeypatch):
    """The race that hung the gateway: the signal lands while the main loop is entering its wait
    (with threading.Event it could deadlock there; here the handler's byte ends the select)."""
    real = select.select

    def signal_then_select(r, w, x, timeout):
        os.kill(os.getpid(), signal.SIGUSR1)
        return real(r, w, x, timeout)

    monkeypatch.setattr(select, "select", signal_then_select)
    assert signals.wait(BOUND_S) is True


def test_set_from_another_thread_wakes_the_loop(signals):
    t = threading.Thread(target=signals.set)
    t.start()
    assert signals.wait(BOUND_S) is True and signals.signal is None
    t.join()


def test_an_action_signal_runs_its_action_on_the_loop_not_in_the_handler():
    ran: list[str] = []
    s = StopSignals((signal.SIGUSR1,), actions={signal.SIGUSR2: lambda: ran.append("reload")}).install()
    try:
        os.kill(os.getpid(), signal.SIGUSR2)
        assert ran == []                                # the handler only noted it
        assert s.wait(BOUND_S) is False and ran == ["reload"]
        assert s.wait(0) is False and ran == ["reload"]     # once
    finally:
        s.close()


def test_close_puts_the_previous_handlers_back():
    before = signal.getsignal(signal.SIGUSR1)
    s = StopSignals((signal.SIGUSR1,)).install()
    assert signal.getsignal(signal.SIGUSR1) != before
    s.close()
    assert signal.getsignal(signal.SIGUSR1) == before
    s.set()                                             # after close: harmless
    assert s.is_set()
