"""LinkDecoder.resume: a restarted gateway continues from the persisted ACK point of the board."""

from __future__ import annotations

import pytest

from ims_station.edge.ingest import BoardRestarted, DataBlock, GapReport, LinkDecoder
from ims_station.errors import LocalProtocolError
from ims_station.firmware import link

from .fakeboard import KEY, FakeBoard, FakeClock, converse, settle


def _acks(board: FakeBoard, out: bytes) -> list[int]:
    return [link.unpack_ack(p) for hdr, p in
            (link.decode(board.auth, fr) for fr in link.Deframer().feed(out)) if hdr.ptype == link.T_ACK]


def test_a_restarted_gateway_asks_for_everything_after_the_persisted_ack_point():
    board = FakeBoard(ring=256)
    board.hello()
    for _ in range(300):          # a long-running board: far beyond the decoder's first-contact backfill
        board.data()
    acked = 269                   # the previous gateway's ACK point ...
    t_end = board.sent[acked + 1][1]          # ... and the end of its last sample
    clock = FakeClock()
    dec = LinkDecoder(KEY, clock, board_id=7, auto_ack=False)
    dec.resume(7, board.epoch, acked, t_end)
    converse(dec, board, board.data())        # the first live packet, seq 301 (HELLO was 0)
    blocks = [e for e in dec.next_events() if isinstance(e, DataBlock)]
    # 270..300 came from the ring (RESEND, paced), then 301: nothing skipped, nothing twice.
    assert [b.seq for b in blocks] == list(range(acked + 1, 302))
    assert all(b.retransmitted for b in blocks[:-1]) and not blocks[-1].retransmitted
    assert board.resend_requests[0][0] == acked + 1
    assert dec.counters["resumed"] == 1 and dec.counters["packets_unrecoverable"] == 0
    # The persisted point is re-sent to the board (the dead process may not have sent it), and
    # nothing beyond it until the consumer says so.
    assert board.acked == acked
    clock.advance(2)
    dec.tick()
    assert _acks(board, dec.data_to_send()) == []


def test_what_left_the_ring_during_the_outage_is_reported_exactly_from_the_ack_point():
    board = FakeBoard(ring=64)
    board.hello()
    for _ in range(200):
        board.data()
    acked = 99
    t_end = board.sent[acked + 1][1]
    dec = LinkDecoder(KEY, FakeClock(), board_id=7, auto_ack=False)
    dec.resume(7, board.epoch, acked, t_end)
    live_seq = board.seq
    live = board.data()                       # seq 201; the ring holds the newest 64 packets
    converse(dec, board, live)
    ev = dec.next_events()
    gaps = [e for e in ev if isinstance(e, GapReport)]
    blocks = [e for e in ev if isinstance(e, DataBlock)]
    first = blocks[0].seq                     # the oldest packet the ring still held
    assert first >= live_seq - 64             # (an UNAVAILABLE packet takes a ring slot too)
    # Every packet after the ACK point is either recovered or in a gap the board declared
    # UNAVAILABLE: contiguous ranges from acked + 1 to the first one recovered.
    covered = [s for g in gaps for s in range(g.first_seq, g.last_seq + 1)]
    assert covered == list(range(acked + 1, first)) and {g.reason for g in gaps} == {"unavailable"}
    # Exact in time too: from the end of the ACK point's last sample to the first sample recovered.
    assert {(g.start_us, g.end_us) for g in gaps} == {(t_end, blocks[0].t_first_us)}
    assert gaps[0].samples_missing == (first - acked - 1) * board.spp
    assert [b.seq for b in blocks] == list(range(first, live_seq + 1))

def test_a_board_that_rebooted_while_the_gateway_was_down_starts_a_new_epoch():
    board = FakeBoard()
    board.hello()
    for _ in range(20):
        board.data()
    old_epoch = board.epoch
    board.reboot()
    dec = LinkDecoder(KEY, FakeClock(), board_id=7, auto_ack=False)
    dec.resume(7, old_epoch, 15, None)
    converse(dec, board, board.hello() + board.data() + board.data())
    ev = dec.next_events()
    assert isinstance(ev[0], BoardRestarted) and (ev[0].old_epoch, ev[0].new_epoch) == (old_epoch, board.epoch)
    assert [e.seq for e in ev if isinstance(e, DataBlock)] == [1, 2]
    assert dec.state()["acked"] == -1          # nothing of the new epoch is safe yet


def test_resume_after_the_board_spoke_is_a_local_error_and_stale_acks_are_ignored():
    board = FakeBoard()
    clock = FakeClock()
    dec = LinkDecoder(KEY, clock, board_id=7, auto_ack=False)
    converse(dec, board, board.hello() + board.data() + board.data())
    with pytest.raises(LocalProtocolError):
        dec.resume(7, board.epoch, 0)
    dec.acknowledge(2, 7, epoch=board.epoch + 1)       # an ACK point of another epoch
    assert dec.state()["acked"] == -1
    dec.acknowledge(2, 7, epoch=board.epoch)
    assert dec.state()["acked"] == 2
    settle(dec, board, clock, 3)
    assert board.acked == 2
