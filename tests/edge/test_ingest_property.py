"""Property: whatever the line does to a stream of valid packets, the decoder never delivers a
corrupt sample, delivers in order without repeats, and accounts for every sequence number the
board sent: delivered, or inside exactly one GapReport."""

from __future__ import annotations

import random

import numpy as np
from hypothesis import given, settings, HealthCheck
from hypothesis import strategies as st

from ims_station.edge.ingest import DataBlock, GapReport, LinkDecoder

from .fakeboard import KEY, FakeBoard, FakeClock, converse, settle, truth_block

FAULTS = ["none", "none", "none", "flip", "drop", "truncate", "duplicate", "garbage", "split"]

ops = st.lists(st.tuples(st.sampled_from(["data", "data", "data", "soh"]), st.sampled_from(FAULTS),
                         st.integers(0, 2**32 - 1)), min_size=1, max_size=60)


def damage(wire: bytes, fault: str, r: random.Random) -> bytes:
    if fault == "flip":
        i = r.randrange(len(wire))
        return wire[:i] + bytes([wire[i] ^ (1 << r.randrange(8))]) + wire[i + 1:]
    if fault == "drop":
        return b""
    if fault == "truncate":
        return wire[:r.randrange(1, len(wire))]
    if fault == "duplicate":
        return wire + wire
    if fault == "garbage":
        return r.randbytes(r.randrange(1, 300)) + wire
    if fault == "split":       # a byte lost in the middle
        i = r.randrange(len(wire) - 1)
        return wire[:i] + wire[i + 1:]
    return wire


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=ops, ring=st.sampled_from([8, 64, 1000]), lossy_uplink=st.booleans(),
       max_tries=st.integers(1, 4))
def test_no_corrupt_sample_and_every_missing_seq_recovered_or_reported(ops, ring, lossy_uplink, max_tries):
    clock = FakeClock()
    dec = LinkDecoder(KEY, clock, resend_timeout=1.0, max_resend_tries=max_tries, max_held=256)
    board = FakeBoard(ring=ring, spp=10)
    r = random.Random(len(ops))
    faults_on = [True]

    def line(b: bytes) -> bytes:
        # Answers from the board cross the same faulty line while faults are on.
        if not faults_on[0] or not b:
            return b
        return damage(b, r.choice(FAULTS), r)

    def uplink(b: bytes) -> bytes:
        if lossy_uplink and faults_on[0] and r.random() < 0.3:
            return b""
        return b

    events = []

    def talk(data: bytes) -> None:
        dec.receive_data(data)
        for _ in range(20):
            out = uplink(dec.data_to_send())
            if not out:
                break
            dec.receive_data(line(board.receive(out)))
        events.extend(dec.next_events())

    talk(board.hello())
    for kind, fault, seed in ops:
        r.seed(seed)
        wire = board.data() if kind == "data" else board.soh()
        talk(damage(wire, fault, r))
        clock.advance(0.2)
        dec.tick()
    # The line heals; clean packets reveal any hole at the end (two: the first may be swallowed by
    # a damaged frame that lost its delimiter); protocol time runs out the timeouts.
    faults_on[0] = False
    talk(board.soh())
    talk(board.soh())
    for _ in range(40):
        clock.advance(0.5)
        dec.tick()
        talk(b"")
    dec.close()
    events.extend(dec.next_events())

    delivered = [e.seq for e in events if hasattr(e, "seq") and not isinstance(e, GapReport)]
    assert delivered == sorted(set(delivered)), "in order, no repeats"
    for e in events:
        if isinstance(e, DataBlock):
            t, chans, tq, status = truth_block(board, e.seq)
            assert e.t_first_us == t and e.time_quality == tq and e.status == status
            np.testing.assert_array_equal(e.samples, np.array(chans, dtype=np.int32))
    reported = []
    for g in (e for e in events if isinstance(e, GapReport)):
        reported.extend(range(g.first_seq, g.last_seq + 1))
    assert len(reported) == len(set(reported)), "each lost packet reported once"
    unavailable = {s for s, v in board.sent.items() if v[0] == "unavailable"}
    accounted = set(delivered) | set(reported) | unavailable
    assert accounted >= set(range(board.seq)), "every seq delivered or reported"
    assert not (set(delivered) & set(reported))
    # With a healthy uplink and a ring large enough, nothing is lost at all.
    if not lossy_uplink and ring == 1000 and max_tries >= 3:
        assert all(g.reason != "unavailable" for e in events if isinstance(g := e, GapReport))
