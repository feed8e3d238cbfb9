"""The stream-stage plug point of the one station assembly (``edge/station.py``, docs/edge.md "One
station assembly"): stages get every chunk after the framer, in order, a failing stage is counted
and the framing and ACKs go on, and the stages are the ones the station file's tables name."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from ims_station.edge import station
from ims_station.edge.framer import ChannelSpec, Framer
from ims_station.edge.outbox import Outbox
from ims_station.edge.station import Gateway
from ims_station.edge.streams import StreamAssembler
from .test_station import CODES, FakeDecoder, block


class Recorder:
    def __init__(self, log, name):
        self.log, self.name = log, name
        self.polls = 0

    def push(self, chunk):
        self.log.append((self.name, chunk.t_first_us, chunk.samples.copy()))

    def poll(self):
        self.polls += 1


class Broken:
    def push(self, chunk):
        raise ValueError("stage bug")


def test_stages_get_every_chunk_after_the_framer_and_a_failing_stage_stops_nothing(tmp_path, clock):
    box = Outbox(tmp_path / "o.sqlite", max_bytes=1 << 30, max_age_s=1e12, clock=clock)
    framer = Framer("STA01", box, clock=clock, channels=[ChannelSpec(c) for c in CODES.values()])
    seen = []
    first, second = Recorder(seen, "first"), Recorder(seen, "second")
    gw = Gateway("XX.STA01", framer, stages=[first, Broken(), second])
    dec, asm = FakeDecoder(box), StreamAssembler(CODES)
    for seq in range(10):
        gw.on_events(dec, asm, [block(seq)])
    gw.poll()
    # The framer committed the window and the board was acknowledged, as without stages.
    assert box.stats()["frames"] == 1 and dec.acked == [(7, 9)]
    # Each chunk went to the stages in their order, with the samples the board sent.
    assert [name for name, *_ in seen] == ["first", "second"] * 10
    for seq in range(10):
        for name, t, samples in seen[2 * seq:2 * seq + 2]:
            assert t == block(seq).t_first_us and np.array_equal(samples, block(seq).samples)
    assert gw.stats()["stage_errors"] == 10
    assert first.polls == second.polls == 11        # every on_events batch and the poll


def test_the_stages_are_those_whose_table_the_station_file_has_in_registry_order(monkeypatch, clock):
    made = []
    monkeypatch.setattr(station, "STAGES", [
        ("trigger", lambda cfg, clk: made.append("trigger") or "T"),
        ("noble_gas", lambda cfg, clk: made.append("noble_gas") or "N"),
        ("other", lambda cfg, clk: made.append("other") or "O")])
    cfg = SimpleNamespace(raw={"station": {}, "other": {}, "trigger": {}})
    assert station.stages_from_config(cfg, clock) == ["T", "O"]
    assert made == ["trigger", "other"]
    monkeypatch.setattr(station, "STAGES", [])
    assert station.stages_from_config(cfg, clock) == []
