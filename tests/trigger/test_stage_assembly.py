"""The trigger stage inside the one station assembly (``edge/station.assemble``, a ``sim://`` HIL
board): the simulated world's regional earthquake (``hil.signals.Scenario.standard``: P at ~85 s,
S at ~104 s) is declared ``on`` and then ``off`` as event documents committed to the outbox (kind
``events``), the ``on`` decided within one chunk of onset + ``min_duration`` (simulated time), and
the stage's statistics are in the gateway's SOH statistics."""

from __future__ import annotations


import pytest

from ims_station import envelope
from ims_station.config import write_secret_file
from ims_station.edge.trigger_stage import iso_time

MIN_DURATION = 0.5
KEYS = {"type", "state", "event_id", "time", "onset_s", "pick", "pick_s", "end_s", "duration", "peak", "coincidence_sum", "stations",
        "channels", "time_quality", "algorithm", "decided_s", "pre_s", "post_s", "clipped"}


@pytest.fixture
def station(tmp_path):
    from ims_station.edge.config import load_station_config
    from ims_station.edge.station import assemble
    from ims_station.hil.sim import Simulation, register, unregister

    key = bytes(range(32))
    write_secret_file(tmp_path / "board.key", key)
    sim = Simulation(board="sim", seed=3, key=key)
    name = f"trigger-stage-{id(sim)}"
    register(name, sim)
    (tmp_path / "station.toml").write_text(f"""
[station]
code = "TRG1"
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

[trigger]
channels = ["00.BH?"]
sta = 1.0
lta = 20.0
on = 4.0
off = 1.5
filter = "bandpass:1:10"
min_duration = {MIN_DURATION}
coincidence_sum = 2
""")
    blocks = []
    st = assemble(load_station_config(tmp_path / "station.toml"), clock=sim.clock,
                  on_events=lambda port, evs: blocks.extend(e for e in evs if type(e).__name__ == "DataBlock"))
    try:
        st.open_ports()
        yield sim, st, blocks
    finally:
        st.close()
        unregister(name)


def test_an_earthquake_is_committed_as_on_and_off_events_within_a_chunk_of_the_decision(station):
    sim, st, blocks = station
    while sim.clock.monotonic() < 100:        # past the P wave, before the S wave
        st.step()
    # Each event is a signed envelope (ims_station/envelope.py) around its JSON document.
    docs = [envelope.unpack(it.payload, kind="event").json() for it, _ in st.outbox.items("events")]
    assert [(d["state"], d["seq"]) for d in docs] == [("on", 0), ("off", 1)], docs
    on, off = docs
    assert all(set(d) == KEYS | {"station", "seq"} for d in docs)
    assert on["event_id"] == off["event_id"] == f"TRG1-{round(on['onset_s'] * 1e6)}"
    # the P wave (arrival ~85 s after the simulation's start)
    start = sim.clock.time() - sim.clock.monotonic()
    assert 84 < on["onset_s"] - start < 87 and on["end_s"] is None and on["duration"] is None
    assert on["coincidence_sum"] >= 2 and on["time_quality"] == "locked" and not on["clipped"]
    assert (on["pre_s"], on["post_s"], on["algorithm"]) == (10.0, 20.0, "recstalta")
    # Decided once the onset had lasted min_duration, at the latest one chunk (one board packet, plus
    # its time on the line) later; committed at once (decided_s is the clock at the decision).
    chunk_s = max((b.t_end_us - b.t_first_us) / 1e6 for b in blocks)
    due = on["onset_s"] + MIN_DURATION
    assert due <= on["decided_s"] <= due + chunk_s + 0.25, (on["decided_s"] - due, chunk_s)
    assert off["onset_s"] == on["onset_s"] and off["end_s"] > off["onset_s"]
    # the refined pick (docs/trigger.md, "Onset pick"): the same in on and off, at or before the onset
    assert on["pick_s"] == off["pick_s"] and on["onset_s"] - 3.5 <= on["pick_s"] <= on["onset_s"]
    assert on["pick"] == iso_time(round(on["pick_s"] * 1e6))
    assert off["duration"] == pytest.approx(off["end_s"] - off["onset_s"], abs=1e-6)
    assert off["decided_s"] >= off["end_s"] and off["peak"] >= on["peak"] >= 4.0
    assert sorted(off["channels"]) == ["XX.TRG1.00.BHE", "XX.TRG1.00.BHN", "XX.TRG1.00.BHZ"]
    soh = st.gateway.stats()["stages"]["trigger"]
    assert soh["events"] == 1 and not soh["active"] and soh["errors"] == 0 and soh["resets_gap"] == 0
    assert soh["last_event"] == {"time": on["time"], "peak": off["peak"]}
