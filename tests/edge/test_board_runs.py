"""A board's run (board id, epoch, boot number) is recognised: new data is never taken for old.

A replaced board, or one whose epoch file was wiped, starts again at an epoch the gateway has seen
before and at seq 0; only its boot number (link header) is new.  An old packet replayed on the line
(left in a buffer at gateway start-up) also carries another run, but it is a burst, not a run that
goes on.  issue 7, section 2.
"""

from __future__ import annotations

from ims_station.edge.ingest import BoardRestarted, DataBlock, GapReport, Hello, LinkDecoder
from ims_station.firmware import link

from .fakeboard import KEY, FakeBoard, FakeClock, converse


def _talk(dec, board, clock, seconds, step=0.5, first=b""):
    """The board sends a DATA packet every *step* s (and HELLO/SOH when given); returns the events."""
    events = []
    data = first
    for _ in range(int(round(seconds / step))):
        data += board.data()
        converse(dec, board, data)
        events += dec.next_events()
        clock.advance(step)
        dec.tick()
        converse(dec, board, b"")
        events += dec.next_events()
        data = b""
    return events


def _blocks(events):
    return [e for e in events if isinstance(e, DataBlock)]


def _resumed_decoder(board: FakeBoard, acked: int, t_end: int | None, boot: int):
    clock = FakeClock()
    dec = LinkDecoder(KEY, clock, board_id=7, auto_ack=False)
    dec.resume(7, board.epoch, acked, t_end, boot)
    return clock, dec


def test_a_replaced_board_at_epoch_0_seq_0_after_a_gateway_restart_is_taken_within_seconds():
    """The issue's scenario: the gateway persisted ACK point (epoch 0, seq 1100) of a board; it is
    replaced while the gateway restarts, and the new board talks from epoch 0 / seq 0.  Its data
    used to be dropped as duplicates until its seq passed 1100 (9 minutes seen)."""
    old = FakeBoard(epoch=0, boot=0xA1)
    clock, dec = _resumed_decoder(old, 1100, 1_700_000_000_000_000, 0xA1)
    new = FakeBoard(epoch=0, boot=0xB2, seed=2)          # another board: epoch 0, seq 0, its own boot
    events = _talk(dec, new, clock, 4, first=new.hello())
    blocks = _blocks(events)
    # Within seconds, and from its first packet on: nothing of the new board is lost or skipped.
    assert [b.seq for b in blocks] == list(range(1, new.seq)) and len(blocks) >= 6
    restarts = [e for e in events if isinstance(e, BoardRestarted)]
    assert restarts == [BoardRestarted(7, 0, 0, "new_run", 0xA1, 0xB2)]
    assert all(b.boot == 0xB2 and b.epoch == 0 for b in blocks)
    assert [e.seq for e in events if isinstance(e, Hello)] == [0]
    assert dec.counters["duplicates"] == 0 and dec.counters["new_runs"] == 1
    assert not [e for e in events if isinstance(e, GapReport)]
    assert dec.state()["acked"] == -1                    # the old ACK point is not the new board's


def test_a_wiped_epoch_going_backwards_while_the_gateway_runs_is_a_new_run():
    clock = FakeClock()
    dec = LinkDecoder(KEY, clock, board_id=7, auto_ack=True)
    board = FakeBoard(epoch=57, boot=0x77)
    events = _talk(dec, board, clock, 5, first=board.hello())
    assert len(_blocks(events)) == 10
    board.replace(epoch=1, boot=0x99)                    # epoch file wiped: next_epoch() gives 1
    events = _talk(dec, board, clock, 4, first=board.hello())
    blocks = _blocks(events)
    assert [b.seq for b in blocks] == list(range(1, board.seq)) and all(b.epoch == 1 for b in blocks)
    assert [e for e in events if isinstance(e, BoardRestarted)] == [BoardRestarted(7, 57, 1, "new_run", 0x77, 0x99)]
    assert dec.state()["epoch"] == 1


def test_a_board_replaced_at_the_same_epoch_while_the_gateway_runs_is_not_taken_for_duplicates():
    clock = FakeClock()
    dec = LinkDecoder(KEY, clock, board_id=7, auto_ack=True)
    board = FakeBoard(epoch=3, boot=0x77)
    _talk(dec, board, clock, 30, first=board.hello())
    board.replace(epoch=3, boot=0x88)                    # a spare with the same epoch count
    events = _talk(dec, board, clock, 4, first=board.hello())
    assert [e.reason for e in events if isinstance(e, BoardRestarted)] == ["new_run"]
    assert [b.seq for b in _blocks(events)] == list(range(1, board.seq))
    assert dec.counters["duplicates"] == 0


def test_old_packets_replayed_at_startup_keep_the_persisted_ack_point_and_report_no_false_gap():
    """At gateway start-up the line still holds packets of the board's previous epoch (a burst),
    then the board talks in the epoch of the persisted ACK point: the point is kept, no
    BoardRestarted, no GapReport, and everything after the point is asked for."""
    board = FakeBoard(epoch=4, boot=0x44, ring=512)
    board.hello()
    stale = b"".join(board.data() for _ in range(5))     # epoch 4: left on the line
    board.reboot()                                       # epoch 5, the run of the ACK point
    board.hello()
    for _ in range(300):
        board.data()
    acked = 269
    t_end = board.sent[acked + 1][1]
    clock, dec = _resumed_decoder(board, acked, t_end, board.boot)
    dec.receive_data(stale)                              # the burst first
    assert dec.next_events() == [] and dec.counters["stale_epoch"] == 5
    clock.advance(0.3)
    converse(dec, board, board.data())                   # then the board itself
    events = dec.next_events()
    assert not [e for e in events if isinstance(e, (BoardRestarted, GapReport))]
    assert [b.seq for b in _blocks(events)] == list(range(acked + 1, board.seq))
    assert dec.counters["resumed"] == 1 and dec.counters["board_restarts"] == 0
    assert dec.state()["acked"] == acked and board.acked == acked


def test_an_old_packet_replayed_while_the_gateway_runs_is_dropped_without_a_restart():
    clock = FakeClock()
    dec = LinkDecoder(KEY, clock, board_id=7, auto_ack=True)
    board = FakeBoard(epoch=4, boot=0x44)
    stale = board.data()
    board.reboot()
    _talk(dec, board, clock, 5, first=board.hello())
    for _ in range(10):                                  # the old packet again and again, 10 s long
        dec.receive_data(stale)
        events = _talk(dec, board, clock, 1)
        assert not [e for e in events if isinstance(e, (BoardRestarted, GapReport))]
    assert dec.counters["stale_epoch"] == 10 and dec.counters["board_restarts"] == 0
    assert dec.state()["epoch"] == board.epoch


def test_gateway_packets_carry_the_boot_of_the_run_they_are_meant_for():
    clock = FakeClock()
    dec = LinkDecoder(KEY, clock, board_id=7, auto_ack=True)
    board = FakeBoard(epoch=2, boot=0x2B)
    _talk(dec, board, clock, 3, first=board.hello())
    dec.request_hello()
    hdrs = [link.decode(board.auth, fr)[0] for fr in link.Deframer().feed(dec.data_to_send())]
    assert hdrs and all(h.boot == 0x2B for h in hdrs)
    # A replaced board ignores what was meant for its predecessor (as the firmware does).
    board.replace(epoch=2, boot=0x3C)
    dec.acknowledge(1)
    dec.request_hello()
    board.receive(dec.data_to_send())
    assert board.other_boot >= 1 and board.acked == -1
