"""open_port / PortPump: the same code path over loop://, a pty (a real tty device) and a broken port."""

from __future__ import annotations

import os
import select

import pytest
import serial

from ims_station.edge.ingest import DataBlock, Hello, LinkDecoder
from ims_station.edge.serialport import SIM_HANDLER_PACKAGE, PortPump, open_port
from ims_station.firmware import link

from .fakeboard import KEY, FakeBoard, FakeClock


def test_open_port_registers_the_sim_scheme_and_opens_urls():
    port = open_port("loop://", baudrate=115200, timeout=0.01)
    try:
        assert SIM_HANDLER_PACKAGE in serial.protocol_handler_packages
        assert port.baudrate == 115200 and port.timeout == 0.01
    finally:
        port.close()


def test_pump_over_loop_url():
    # loop:// echoes: the board's bytes written to it come back to the pump, and so do the pump's
    # own ACKs (refused as gateway packet types: the decoder never mistakes its own output).
    clock = FakeClock()
    events = []
    dec = LinkDecoder(KEY, clock)
    pump = PortPump("loop://", dec, timeout=0.01, clock=clock, on_events=events.extend)
    b = FakeBoard()
    pump.step()
    pump.port.write(b.hello() + b.data())
    for _ in range(5):
        pump.step()
    assert [type(e) for e in events] == [Hello, DataBlock]
    assert dec.counters["acks_sent"] == 1 and dec.counters["unexpected_type"] == 1
    assert pump.counters["opens"] == 1 and pump.counters["bytes_out"] > 0
    pump.close()


def test_a_bug_behind_the_pump_stops_the_gateway_instead_of_killing_the_thread_quietly(caplog):
    """Review of issue 7: an exception out of on_events (framer, outbox) ended the pump's thread
    without a word while the gateway went on publishing SOH and ingesting nothing.  Now it is
    logged, kept in ``failed`` and sets the stop event: the gateway exits non-zero and is
    restarted from its persisted ACK point."""
    import threading

    clock = FakeClock()
    dec = LinkDecoder(KEY, clock)

    def broken(events):
        raise RuntimeError("framer bug")

    pump = PortPump("loop://", dec, timeout=0.01, clock=clock, on_events=broken)
    b = FakeBoard()
    pump.step()
    pump.port.write(b.hello() + b.data())
    stop = threading.Event()
    t = threading.Thread(target=pump.run, args=(stop,), daemon=True)
    t.start()
    t.join(timeout=30)
    assert not t.is_alive() and stop.is_set()
    assert isinstance(pump.failed, RuntimeError) and pump.port is None
    assert "ingest failed; stopping the gateway" in caplog.text


def _read_all(fd: int, timeout: float = 1.0) -> bytes:
    out = b""
    while select.select([fd], [], [], timeout)[0]:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        out += chunk
        timeout = 0.05
    return out


def _step_until(pump, done, wall_limit: float = 10.0) -> None:
    """Step the pump until *done()*; the pty is a real OS device, so under load the bytes may take
    more than a few read timeouts to show up: bound the wait by wall time, not by a step count."""
    import time

    deadline = time.monotonic() + wall_limit
    while not done() and time.monotonic() < deadline:
        pump.step()


def test_pump_over_a_pty_like_a_real_tty_and_survives_its_loss():
    master, slave = os.openpty()
    path = os.ttyname(slave)
    clock = FakeClock()
    events = []
    dec = LinkDecoder(KEY, clock)
    pump = PortPump(path, dec, timeout=0.05, clock=clock, on_events=events.extend, backoff_initial=1.0)
    b = FakeBoard()
    try:
        pump.step()
        assert pump.connected
        os.write(master, b.hello() + b.data())
        b.data()                                   # lost on the line
        os.write(master, b.data())
        # Until the gap is seen (seq 3 read) and the RESEND and ACK are written to the tty.
        _step_until(pump, lambda: dec.counters["resend_requests"] >= 1 and dec.counters["acks_sent"] >= 1)
        # The gateway's RESEND (and ACK) came out of the tty: the board answers them.
        answer = b.receive(_read_all(master))
        assert b.resend_requests == [(2, 2)] and b.acked == 1
        os.write(master, answer)
        _step_until(pump, lambda: len(events) >= 4)
        assert [e.seq for e in events] == [0, 1, 2, 3]
    finally:
        os.close(master)
        os.close(slave)
    # The device went away: reading fails, the pump counts it and retries on the clock's schedule.
    _step_until(pump, lambda: not pump.connected)
    assert pump.counters["disconnects"] == 1 and not pump.connected
    fails = pump.counters["open_failures"]
    clock.advance(0.5)
    pump.step()
    assert pump.counters["open_failures"] == fails     # backoff not over yet
    clock.advance(0.6)
    pump.step()
    assert pump.counters["open_failures"] in (fails, fails + 1)  # a new pty may reuse the name


def test_reconnect_backoff_doubles_up_to_the_maximum_and_resets_on_success():
    clock = FakeClock()
    attempts = []
    ok = [False]

    def opener(url, baudrate, timeout):
        attempts.append(clock.monotonic())
        if not ok[0]:
            raise serial.SerialException(f"could not open port {url}")
        return serial.serial_for_url("loop://", timeout=0.0)

    pump = PortPump("/dev/ttyUSB9", LinkDecoder(KEY, clock), clock=clock, opener=opener,
                    backoff_initial=1.0, backoff_max=4.0)
    for _ in range(140):                           # 14 s in 0.1 s steps
        pump.step()
        clock.advance(0.1)
    gaps = [round(b - a, 1) for a, b in zip(attempts, attempts[1:])]
    assert gaps[:4] == [1.0, 2.0, 4.0, 4.0]
    ok[0] = True
    clock.advance(4.0)
    pump.step()
    assert pump.connected and pump.counters["opens"] == 1
    assert pump.counters["open_failures"] == len(attempts) - 1
    pump.close()
