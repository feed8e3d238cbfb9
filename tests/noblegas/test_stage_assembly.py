"""The noble-gas driver inside the one station assembly (``edge/station.assemble``, a ``sim://``
seismic board beside it): a ``[noble_gas]`` table makes the station run the driver from the
gateway's poll, and its IMS 2.0 messages are committed to the outbox as envelopes (signed when the station has keys) of kind
``ims20`` in frame set ``STA:ims20`` (what the uplink sends on the ``ims20`` topic), its statistics
in the gateway's SOH under ``stages.noble_gas``."""

from __future__ import annotations

import pytest

from ims_station import envelope, ims20
from ims_station.config import write_secret_file

from .harness import SHORT_CYCLE, calibration_file

SPEED = 60.0      # emulator seconds per station second: the detector background ends at 85 s


class Following:
    """The emulator's clock: the station's simulated clock, *speed* times faster."""

    def __init__(self, base, speed):
        self.base, self.speed = base, speed
        self.start_utc = base.time() - base.monotonic()

    def monotonic(self):
        return self.base.monotonic() * self.speed

    def time(self):
        return self.start_utc + self.monotonic()


@pytest.fixture
def station(tmp_path):
    from ims_station.edge.config import load_station_config
    from ims_station.edge.station import assemble
    from ims_station.hil.noblegas.device import NobleGasDetector, register, unregister
    from ims_station.hil.sim import Simulation, register as register_sim, unregister as unregister_sim

    key = bytes(range(32))
    write_secret_file(tmp_path / "board.key", key)
    sim = Simulation(board="sim", seed=3, key=key)
    name = f"ng-stage-{id(sim)}"
    register_sim(name, sim)
    from ims_station.hil.noblegas.faults import NobleGasFaults

    det = NobleGasDetector(seed=2, clock=Following(sim.clock, SPEED), cycle=SHORT_CYCLE,
                           faults=NobleGasFaults(garble=0.005, checksum=0.005))
    register(name, det)
    cal = calibration_file(tmp_path)
    (tmp_path / "station.toml").write_text(f"""
[station]
code = "NG01"
network = "XX"
data_dir = "{tmp_path}"

[[ports]]
url = "sim://{name}"
board = "sim"
board_id = {sim.board.board_id}
baudrate = {sim.baud}
key_file = "board.key"
channels = {{ 0 = "00.BHZ", 1 = "00.BHN", 2 = "00.BHE", 3 = "10.BDF" }}

[outbox]
max_bytes = 1073741824

[noble_gas]
url = "noblegas://{name}"
station = "MIX58"
detector = "MIX58_222"
calibration_file = "{cal.name}"
status_interval_s = 1
resync_quiet_s = 0.1
rmssoh_interval_s = 1200
soh = {{ t_room = [10, 20] }}
""")
    st = assemble(load_station_config(tmp_path / "station.toml"), clock=sim.clock)
    try:
        st.open_ports()
        yield sim, st, det
    finally:
        st.close()
        unregister(name)
        unregister_sim(name)


def test_the_stage_commits_ims20_envelopes_and_events_to_the_outbox(station):
    sim, st, det = station
    while sim.clock.monotonic() < 90:          # past the detector background (5100 emulator seconds)
        st.step()
    items = [it for it, _ in st.outbox.items("ims20")]
    envs = [envelope.unpack(it.payload, kind="ims20") for it in items]
    assert [e.seq for e in envs] == list(range(len(envs))) and all(e.sender == "NG01" for e in envs)
    assert {it.frame_set for it in items} == {"NG01:ims20"}
    msgs = [ims20.parse(e.body) for e in envs]
    types = [m.data_type for m in msgs]
    assert "DETBKPHD" in types and types.count("RMSSOH") >= 3
    # the room is 'too warm' for this station's range: an ALERT_TEMP and its event
    assert "ALERT_TEMP" in types
    events = [envelope.unpack(it.payload, kind="event").json() for it, _ in st.outbox.items("events")]
    assert any(d["type"] == "noble_gas_alert" and d["alert_type"] == "ALERT_TEMP" and d["state"] == "on"
               for d in events)
    detbk = msgs[types.index("DETBKPHD")].body
    assert detbk.histogram.counts.sum() > 0 and detbk.header.detector == "MIX58_222"
    ng = st.status()["gateway"]["stages"]["noble_gas"]
    assert ng["connected"] and ng["phase"] == "GASBK" and ng["counting"]["kind"] == "GASBK"
    assert ng["messages"]["DETBKPHD"] == 1 and ng["alarms"] == ["soh_t_room"]
    assert st.gateway.stats()["stage_errors"] == 0
    # must-show 4 in the station's SOH: the line's faults, retried and counted as the emulator made them
    assert ng["faults"]["garbled"] == det.counters["garbled"] > 0
    assert ng["faults"]["checksum_errors"] == det.counters["checksum_errors"] > 0
    assert ng["faults"]["retries"] >= ng["faults"]["garbled"] + ng["faults"]["checksum_errors"]
