"""The gateway wiring: the board is acknowledged only for samples inside committed frames."""

from __future__ import annotations

import numpy as np

from ims_station.edge.framer import ChannelSpec, Framer
from ims_station.edge.ingest import DataBlock
from ims_station.edge.outbox import Outbox
from ims_station.edge.station import Gateway
from ims_station.edge.streams import StreamAssembler
from ims_station.firmware import link

T0_US = 1_700_000_000 * 1_000_000
CODES = {(7, 0): "XX.STA01.00.BHZ", (7, 1): "XX.STA01.00.BHN"}


class FakeDecoder:
    def __init__(self, outbox=None):
        self.acked = []
        self.outbox = outbox

    def acknowledge(self, seq, board_id=None, epoch=None):
        if self.outbox is not None:
            # The ACK point is on disk before the board hears of it.
            assert self.outbox.ack_points()[board_id] == (epoch, seq, block(seq).t_end_us)
        self.acked.append((board_id, seq))


def block(seq, n=40, rate=40_000):
    t = T0_US + seq * 1_000_000
    return DataBlock(7, 1, seq, t, rate, link.TQ_LOCKED, 0, 0, (0, 1),
                     np.vstack([np.arange(n, dtype=np.int32) + 40 * seq] * 2))


def test_board_acknowledged_only_after_commit(tmp_path, clock):
    box = Outbox(tmp_path / "o.sqlite", max_bytes=1 << 30, max_age_s=1e12, clock=clock)
    framer = Framer("STA01", box, clock=clock, channels=[ChannelSpec(c) for c in CODES.values()])
    gw = Gateway("XX.STA01", framer)
    dec, asm = FakeDecoder(box), StreamAssembler(CODES)
    for seq in range(9):                                   # 9 s of a 10-s window
        assert gw.on_events(dec, asm, [block(seq)]) == []
    assert dec.acked == [] and box.stats()["frames"] == 0  # nothing on disk, nothing acknowledged
    committed = gw.on_events(dec, asm, [block(9)])          # window complete -> frame committed
    assert len(committed) == 1 and box.stats()["frames"] == 1
    assert dec.acked == [(7, 9)]                            # ...and only now the board hears of it
    gw.on_events(dec, asm, [block(10), block(11)])
    assert dec.acked == [(7, 9)] and gw.stats()["unacknowledged_blocks"] == 2


def _window_sample_counts(box: Outbox) -> dict[int, dict[str, int]]:
    from ims_station import cd11

    out = {}
    for it in box.next_to_send(10_000, live_window_s=0):
        frame, _ = cd11.parse_frame(it.payload)
        n: dict[str, int] = {}
        for sf in frame.subframes:
            n[sf.channel] = n.get(sf.channel, 0) + int(sf.samples().size)
        out[it.seq] = n
    return out


def test_a_restarted_gateway_recovers_what_the_board_ring_held_while_it_was_down(tmp_path, clock):
    """Gateway killed (nothing closed, nothing flushed) after 90 s, board alone for 10 s, a new
    gateway process on the same outbox: every window is complete and none is committed twice."""
    from ims_station.edge.ingest import LinkDecoder
    from tests.edge.fakeboard import KEY, FakeBoard, converse

    board = FakeBoard(channels=2, spp=50, ring=1024)      # 100 sps, 0.5-s packets
    codes = {(7, 0): "XX.STA01.00.BHZ", (7, 1): "XX.STA01.00.BHN"}

    def start():
        box = Outbox(tmp_path / "o.sqlite", max_bytes=1 << 30, max_age_s=1e12, clock=clock)
        framer = Framer("STA01", box, clock=clock, channels=[ChannelSpec(c) for c in codes.values()])
        gw = Gateway("XX.STA01", framer)
        dec = LinkDecoder(KEY, clock, board_id=7, auto_ack=False)
        gw.resume(dec, 7)
        return box, gw, dec, StreamAssembler(codes)

    def run(gw, dec, asm, seconds, first=b""):
        data = first
        for _ in range(int(seconds / 0.5)):
            data += board.data()
            converse(dec, board, data)
            gw.on_events(dec, asm, dec.next_events())
            clock.advance(0.5)
            data = b""

    box1, gw1, dec1, asm1 = start()
    run(gw1, dec1, asm1, 90, board.hello())
    persisted = box1.ack_points()[7]
    # The board hears of what is on disk, never more (ACKs go out at most once a second).
    assert persisted[0] == board.epoch and 0 < board.acked <= persisted[1]
    for _ in range(20):                                       # 10 s: the board talks to nobody
        board.data()
        clock.advance(0.5)
    box1._pidlock.release()     # the kernel drops a killed process's lock; nothing else is closed
    box2, gw2, dec2, asm2 = start()                           # a new process: same files, new objects
    assert gw2.counters["resumed"] == 1
    run(gw2, dec2, asm2, 40)
    windows = _window_sample_counts(box2)
    seqs = sorted(windows)
    assert seqs == list(range(seqs[0], seqs[-1] + 1)) and len(seqs) >= 13
    assert all(n == {"BHZ": 1000, "BHN": 1000} for n in windows.values()), windows
    assert dec2.counters["packets_unrecoverable"] == 0 and board.resend_requests


def test_blocks_with_implausible_time_do_not_hold_the_board_acknowledgement_back(tmp_path, clock):
    box = Outbox(tmp_path / "o.sqlite", max_bytes=1 << 30, max_age_s=1e12, clock=clock)
    framer = Framer("STA01", box, clock=clock, channels=[ChannelSpec(c) for c in CODES.values()])
    gw = Gateway("XX.STA01", framer)
    dec, asm = FakeDecoder(), StreamAssembler(CODES)
    clock.t = T0_US / 1e6 + 5
    future = 2 * 86400 * 1_000_000
    for seq in range(3):                 # a board clock two days ahead: never framed
        b = block(seq)
        gw.on_events(dec, asm, [DataBlock(7, 1, seq, b.t_first_us + future, b.rate_mhz, b.time_quality, 0, 0,
                                          b.channel_ids, b.samples)])
    for seq in range(3, 13):             # then the right time again: the first window commits...
        gw.on_events(dec, asm, [block(seq)])
    assert framer.stats()["implausible_time_samples"] == 3 * 40 * 2
    assert box.stats()["frames"] == 1
    # ...and the board hears of everything up to the last committed block, the refused ones included.
    assert dec.acked == [(7, 9)] and box.ack_points()[7][:2] == (1, 9)
