"""The sim:// pyserial URL handler: the gateway's own open_port reaches the simulator."""

from __future__ import annotations

import pytest
import serial

from ims_station.edge.ingest import DataBlock, Hello, LinkDecoder
from ims_station.edge.serialport import PortPump, open_port, register_sim
from ims_station.hil import sim as simmod
from ims_station.hil.protocol_sim import parse_url
from ims_station.hil.sim import Simulation, simulation_key


def test_serial_for_url_returns_a_port_that_advances_the_simulation():
    port = open_port("sim://sim?seed=7&ber=1e-5&drop=0.001&rate=100", baudrate=115200, timeout=0.5)
    try:
        sim = port.sim
        assert sim.clock.monotonic() == 0.0
        data = port.read(100000)                   # timeout elapses in simulated time
        assert sim.clock.monotonic() == pytest.approx(0.5)
        assert data[:1] != b"" and b"\x00" in data
        assert sim.plan.down.ber == 1e-5 and sim.plan.down.drop == 0.001 and sim.board.rate_mhz == 100000
    finally:
        port.close()


def test_read_returns_as_soon_as_size_bytes_have_arrived():
    register_sim()
    port = serial.serial_for_url("sim://sim?seed=1", timeout=10.0, do_not_open=True)
    port.open()
    t = port.sim.clock.monotonic()
    assert len(port.read(10)) == 10
    assert port.sim.clock.monotonic() - t < 1.0


def test_gateway_pump_decodes_the_board_through_sim_url():
    clock_holder = {}
    events = []

    def opener(url, **kw):
        p = open_port(url, **kw)
        clock_holder["sim"] = p.sim
        return p

    sim = Simulation(seed=3)
    simmod.register("pump-test", sim)
    try:
        dec = LinkDecoder(simulation_key(3), sim.clock)
        pump = PortPump("sim://pump-test", dec, clock=sim.clock, on_events=events.extend, opener=opener)
        while sim.clock.monotonic() < 4.0:
            pump.step()
        pump.close()
    finally:
        simmod.unregister("pump-test")
    assert clock_holder["sim"] is sim                  # attached to the registered simulation
    assert isinstance(events[0], Hello)
    assert sum(isinstance(e, DataBlock) for e in events) >= 2


def test_unplugged_port_raises_and_cannot_be_reopened_until_back():
    port = open_port("sim://sim?seed=2&unplug=1:2", timeout=0.5)
    port.read(1 << 20)                 # 0 .. 0.5 s: plugged in
    with pytest.raises(serial.SerialException, match="disconnected"):
        port.read(1 << 20)
    sim = port.sim
    simmod.register("unplug-test", sim)
    try:
        with pytest.raises(serial.SerialException):
            open_port("sim://unplug-test?unplug=1:2", timeout=0.5)
        sim.run_until(3_100_000_000)
        again = open_port("sim://unplug-test?unplug=1:2", timeout=0.5)
        assert again.read(10)
    finally:
        simmod.unregister("unplug-test")


@pytest.mark.parametrize("url, message", [
    ("sim://sim?colour=red", "unknown parameter 'colour'"),
    ("sim://sim?ber=2", "ber"),
    ("sim://sim?outage=5", "START:SECONDS"),
    ("sim://sim?seed=x", "seed"),
])
def test_bad_urls_are_refused_naming_the_parameter(url, message):
    with pytest.raises(serial.SerialException, match=message):
        open_port(url)


def test_url_parsing_collects_windows_and_repeats():
    name, opts = parse_url("sim://sim?gnss=10:20&gnss=50:5&reboot=3&jump=7:1.5&clip=1:1")
    assert name == "sim"
    assert [w.start for w in opts["windows"]["gnss_outages"]] == [10.0, 50.0]
    assert opts["reboots"] == [3.0] and opts["jumps"] == [(7.0, 1.5)]


def test_key_file_must_have_safe_permissions(tmp_path):
    key = tmp_path / "board.key"
    key.write_bytes(b"k" * 32)
    key.chmod(0o644)
    with pytest.raises(Exception, match="board HMAC key"):
        open_port(f"sim://sim?key_file={key}")
    key.chmod(0o600)
    port = open_port(f"sim://sim?key_file={key}")
    assert port.sim.key == b"k" * 32
