"""The simulation: clock, paced line, the virtual board running the firmware, device faults."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ims_station.firmware import link
from ims_station.hil.faults import FaultPlan, FaultyDirection, LineFaults, Window
from ims_station.hil.sim import NS, LineDirection, SimClock, Simulation, SimError, simulation_key


def packets(sim: Simulation, seconds: float) -> list[tuple[link.Header, bytes]]:
    """Run the simulation for *seconds* reading the edge end; decode every packet (clean line)."""
    auth = link.Authenticator(sim.key)
    deframer = link.Deframer()
    out = []
    end = sim.clock.now_ns + int(seconds * NS)
    while sim.clock.now_ns < end:
        for fr in deframer.feed(sim.edge_read(4096, 0.05)):
            out.append(link.decode(auth, fr))
    return out


def data_blocks(pkts):
    return [(h, link.unpack_data(p)) for h, p in pkts if h.ptype == link.T_DATA]


def test_sim_clock_surface():
    c = SimClock(start_utc=1_700_000_000)
    c.now_ns = 2_500_000_000
    assert c.monotonic() == 2.5 and c.time() == 1_700_000_002.5 and c.utc_us() == 1_700_000_002_500_000


def test_line_is_paced_at_ten_bits_per_byte():
    clock = SimClock()
    line = LineDirection(clock, 9600, FaultyDirection(LineFaults(), 0, 0), [])
    line.send(b"x" * 960)                 # one second at 9600 baud
    clock.now_ns = NS - 2_000_000
    assert line.available() < 960
    clock.now_ns = NS
    assert line.take() == b"x" * 960


def test_dead_window_loses_the_bytes_in_it():
    clock = SimClock()
    line = LineDirection(clock, 115200, FaultyDirection(LineFaults(), 0, 0), [Window(0.001, 0.002)])
    line.send(bytes(range(1, 101)))        # 100 bytes over ~8.7 ms
    clock.now_ns = NS
    got = line.take()
    assert 0 < len(got) < 100 and line.bytes_lost_dead == 100 - len(got)


def test_board_says_hello_first_then_sends_data_of_every_channel():
    sim = Simulation(seed=1)
    pkts = packets(sim, 3.5)
    assert pkts[0][0].ptype == link.T_HELLO
    hello = link.unpack_hello(pkts[0][1])
    assert hello["board"] == "sim" and hello["channels"] == [0, 1, 2, 3]
    blocks = data_blocks(pkts)
    assert len(blocks) >= 2
    assert all(len(d[5]) == 4 for _, d in blocks)


def test_truth_is_the_signal_quantised_by_the_adc():
    """The ADC codes are the generator's volts x gain / 1.2 V x 2^23 (physical units reach the ADC)."""
    sim = Simulation(seed=2)
    sim.run_for(4.0)                  # (the first second, before GNSS time, is not sampled into the truth)
    vb = sim.board
    et = sim.truth.epochs[0]
    codes = et.array()
    rate = vb.rate_mhz / 1000
    for ch, info in enumerate(vb.channels):
        inp = vb.adc_inputs[ch]
        gain = vb.adc_emu.gain(inp)
        for k in (5, 50, 250):
            i = round((et.true_us[k] - sim.clock.start_utc * 1_000_000) / 1e6 * rate)
            v = vb._signals[ch].volts(i, 1)[0]
            assert codes[k, inp] == math.floor(v / 1.2 * gain * 2**23 + 0.5)


def test_delivered_samples_equal_the_truth_on_a_clean_line():
    sim = Simulation(seed=3)
    blocks = data_blocks(packets(sim, 5.0))
    et = sim.truth.epochs[0]
    codes = et.array()
    for h, (t_first, rate, tq, status, clip, ids, chans) in blocks:
        k0 = et.index_of(t_first)
        n = len(chans[0])
        for slot, ch in enumerate(ids):
            assert chans[slot] == codes[k0:k0 + n, sim.board.adc_inputs[ch]].tolist()


def test_same_seed_same_bytes():
    a, b, c = (Simulation(seed=s, plan=FaultPlan.symmetric(1e-4, 1e-3, 1e-3)) for s in (5, 5, 6))
    reads = [s.edge_read(1 << 20, 3.0) for s in (a, b, c)]
    assert reads[0] == reads[1] and reads[0] != reads[2]


def test_gnss_outage_goes_holdover_then_unlocked_then_locks_again():
    sim = Simulation(seed=4, plan=FaultPlan(gnss_outages=[Window(3.0, 12.0)]), holdover_s=5, packet_ms=500)
    tq = [(h.seq, d[2]) for h, d in data_blocks(packets(sim, 22.0))]
    seq_q = [q for _, q in tq]
    assert link.TQ_HOLDOVER in seq_q and link.TQ_UNLOCKED in seq_q
    first_h = seq_q.index(link.TQ_HOLDOVER)
    assert link.TQ_UNLOCKED in seq_q[first_h:] and seq_q[-1] == link.TQ_LOCKED


def test_clipping_window_sets_clip_flags_and_rail_codes():
    sim = Simulation(seed=5, plan=FaultPlan(clipping=[Window(2.0, 1.0)]))
    blocks = data_blocks(packets(sim, 5.0))
    clipped = [d for _, d in blocks if d[4]]
    assert clipped and all(d[4] == 0b1111 for d in clipped)
    rails = {v for d in clipped for ch in d[6] for v in ch if abs(v) >= 0x7FFFFF}
    assert rails == {0x7FFFFF, -0x800000}
    assert not any(d[4] for _, d in blocks if d[0] < sim.clock.start_utc * 10**6 + 2_000_000)


def test_tamper_and_low_supply_reach_the_status_flags():
    sim = Simulation(seed=6, plan=FaultPlan(tamper=[Window(2.0, 1.5)], supply_low=[Window(2.0, 1.5)]))
    pkts = packets(sim, 6.0)
    status = [d[3] for _, d in data_blocks(pkts)]
    assert any(s & link.S_TAMPER for s in status) and any(s & link.S_SUPPLY_LOW for s in status)
    assert not status[-1] & (link.S_TAMPER | link.S_SUPPLY_LOW)
    soh = [link.unpack_soh(p) for h, p in pkts if h.ptype == link.T_SOH]
    assert any(s["status"] & link.S_TAMPER for s in soh)           # reported at once by SOH


def test_clock_jump_steps_board_time_and_flags_it():
    sim = Simulation(seed=7, plan=FaultPlan(clock_jumps=[(3.5, 2.0)]), packet_ms=500)
    blocks = data_blocks(packets(sim, 8.0))
    stepped = [d for _, d in blocks if d[3] & link.S_CLOCK_STEP and d[0] > 10**15]
    assert stepped
    et = sim.truth.epochs[0]
    # After the jump the board's time stamps run 2 s ahead of the true time.
    assert et.times_us[-1] - et.true_us[-1] == pytest.approx(2_000_000, abs=2)


def test_reboot_starts_a_new_epoch_with_hello_and_sequence_zero():
    sim = Simulation(seed=8, plan=FaultPlan(reboots=[2.5]))
    pkts = packets(sim, 8.0)
    epochs = [h.epoch for h, _ in pkts]
    assert epochs[0] == 0 and epochs[-1] == 1
    first1 = next(h for h, _ in pkts if h.epoch == 1)
    assert first1.seq == 0 and first1.ptype == link.T_HELLO
    assert set(sim.truth.epochs) == {0, 1} and sim.board.reboots == 1


def test_rate_must_be_one_of_the_boards():
    with pytest.raises(SimError, match="not among its rates"):
        Simulation(seed=1, rate_sps=123)


def test_simulation_key_is_per_seed_and_long_enough():
    assert simulation_key(1) != simulation_key(2) and len(simulation_key(1)) == 32


@pytest.mark.parametrize("name", __import__("ims_station.boards", fromlist=["list_boards"]).list_boards())
def test_every_board_definition_runs_in_the_simulator(name):
    sim = Simulation(board=name, seed=1)
    blocks = data_blocks(packets(sim, 3.5))
    assert blocks
    et = sim.truth.epochs[0]
    codes = et.array()
    h, (t_first, rate, tq, status, clip, ids, chans) = blocks[-1]
    k0 = et.index_of(t_first)
    for slot, ch in enumerate(ids):
        assert chans[slot] == codes[k0:k0 + len(chans[0]), sim.board.adc_inputs[ch]].tolist()


def test_standard_scenario_puts_the_event_into_the_adc_codes():
    """P at ~85 s on the seismic channels, the N-wave at 200 s on the infrasound channel."""
    sim = Simulation(seed=1)
    sim.run_for(210.0)
    et = sim.truth.epochs[0]
    codes = et.array().astype(float)
    t = (np.asarray(et.true_us) - sim.clock.start_utc * 1_000_000) / 1e6
    z = codes[:, sim.board.adc_inputs[0]]
    bdf = codes[:, sim.board.adc_inputs[3]]
    quiet, p_wave = z[(t > 40) & (t < 80)], z[(t > 86) & (t < 95)]
    assert np.abs(p_wave - np.median(z)).max() > 10 * np.std(quiet)
    tp = sim.scenario.events[0].arrivals()[0]
    assert tp == pytest.approx(60 + math.hypot(150, 10) / 6.0)
    quiet_p, blast = bdf[(t > 150) & (t < 195)], bdf[(t > 200) & (t < 202)]
    assert np.abs(blast - np.median(bdf)).max() > 10 * np.std(quiet_p)
