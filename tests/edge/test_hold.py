"""LinkDecoder.hold / release: the consumer cannot take a packet yet (its board time disagrees with
the gateway's clock and neither can be trusted); it stays in the board's ring, unacknowledged,
and is asked for again on release.  issue 7, section 2 (the gateway side is tests/uplink/test_station.py)."""

from __future__ import annotations

from ims_station.edge.ingest import BoardRestarted, DataBlock, GapReport, LinkDecoder

from .fakeboard import KEY, FakeBoard, FakeClock, converse


def _blocks(events):
    return [e for e in events if isinstance(e, DataBlock)]


def test_held_packets_are_neither_delivered_nor_acknowledged_until_release_then_come_again_in_order():
    clock = FakeClock()
    dec = LinkDecoder(KEY, clock, board_id=7, auto_ack=False)
    board = FakeBoard()
    converse(dec, board, board.hello() + b"".join(board.data() for _ in range(5)))
    first = _blocks(dec.next_events())
    assert [b.seq for b in first] == [1, 2, 3, 4, 5]
    dec.acknowledge(2)
    assert dec.hold(3, 7, board.epoch, first[2].t_first_us)
    for _ in range(20):                                  # the board goes on; nothing is delivered
        converse(dec, board, board.data())
        clock.advance(0.5)
        dec.tick()
        converse(dec, board, b"")
    assert dec.next_events() == [] and board.acked == 2 and board.resend_requests == []
    assert dec.counters["held_back_packets"] == 20 and dec.state()["acked"] == 2
    dec.release(7)
    converse(dec, board, b"")
    again = _blocks(dec.next_events())
    assert [b.seq for b in again] == list(range(3, board.seq))       # 3..25, each once, in order
    assert again[0] == first[2] and dec.counters["packets_unrecoverable"] == 0
    assert not dec.hold(1, 7, board.epoch)                            # acknowledged already: no


def test_a_board_reboot_during_a_hold_reports_the_held_range_as_lost_with_the_old_ring():
    clock = FakeClock()
    dec = LinkDecoder(KEY, clock, board_id=7, auto_ack=False)
    board = FakeBoard()
    converse(dec, board, board.hello() + b"".join(board.data() for _ in range(4)))
    blocks = _blocks(dec.next_events())
    dec.hold(3, 7, board.epoch, blocks[2].t_first_us)
    converse(dec, board, board.data() + board.data())                 # 5, 6 held back
    board.reboot()
    converse(dec, board, board.hello() + board.data())
    ev = dec.next_events()
    gaps = [e for e in ev if isinstance(e, GapReport)]
    assert [(g.epoch, g.first_seq, g.last_seq, g.reason) for g in gaps] == [(3, 3, 6, "restart")]
    assert gaps[0].start_us == blocks[2].t_first_us                   # from the refused block on
    assert [type(e) for e in ev if isinstance(e, BoardRestarted)] == [BoardRestarted]
    assert [b.seq for b in _blocks(ev)] == [1] and dec.state()["epoch"] == board.epoch
