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
        ("trigger", lambda ctx: made.append(("trigger", ctx.clock)) or "T"),
        ("noble_gas", lambda ctx: made.append(("noble_gas", ctx.clock)) or "N"),
        ("other", lambda ctx: made.append(("other", ctx.clock)) or "O")])
    cfg = SimpleNamespace(raw={"station": {}, "other": {}, "trigger": {}})
    ctx = station.StageContext(cfg, clock, None, None, lambda a: None, lambda d: 0)
    assert station.stages_from_config(ctx) == [("trigger", "T"), ("other", "O")]
    assert made == [("trigger", clock), ("other", clock)]
    monkeypatch.setattr(station, "STAGES", [])
    assert station.stages_from_config(ctx) == []


def test_emitted_events_are_in_the_outbox_before_the_uplink_hears_of_them(tmp_path, clock):
    from ims_station import envelope
    from ims_station.edge.outbox import Outbox

    with Outbox(tmp_path / "o.sqlite", max_bytes=1 << 20, max_age_s=86400, clock=clock) as box:
        told = []
        emit = station.event_emitter("STA01", box, clock,
                                     lambda: told.append(box.highest_committed("STA01:events")))
        assert emit({"peak": 5.0}) == 0 and emit({"peak": 6.0}) == 1
        assert told == [0, 1]
        # Each payload is an (here unsigned: no signer) event envelope with the document as body.
        rows = [(it.kind, it.frame_set, it.seq, envelope.unpack(it.payload, kind="event").json())
                for it, _ in box.items("events")]
        assert rows == [("events", "STA01:events", 0, {"peak": 5.0, "station": "STA01", "seq": 0}),
                        ("events", "STA01:events", 1, {"peak": 6.0, "station": "STA01", "seq": 1})]


def test_other_station_messages_take_the_same_durable_signed_path(tmp_path, clock):
    from ims_station import envelope
    from ims_station.edge.outbox import Outbox

    with Outbox(tmp_path / "o.sqlite", max_bytes=1 << 20, max_age_s=86400, clock=clock) as box:
        told = []
        emit = station.message_emitter("STA01", "ims20", box, clock, lambda: told.append(1))
        text = b"BEGIN IMS2.0\nMSG_TYPE DATA\nSTOP\n"
        assert emit(text) == 0 and emit(text) == 1 and told == [1, 1]
        rows = [(it.kind, it.frame_set, it.seq) for it, _ in box.items("ims20")]
        assert rows == [("ims20", "STA01:ims20", 0), ("ims20", "STA01:ims20", 1)]
        env = envelope.unpack(next(iter(box.items("ims20")))[0].payload, kind="ims20")
        assert (env.sender, env.seq, env.body) == ("STA01", 0, text)    # the text byte-identical
