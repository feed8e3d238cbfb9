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


def _live_gateway(tmp_path, clock, board, codes):
    from ims_station.edge.ingest import LinkDecoder
    from tests.edge.fakeboard import KEY

    box = Outbox(tmp_path / "o.sqlite", max_bytes=1 << 30, max_age_s=1e12, clock=clock)
    alarms = []
    framer = Framer("STA01", box, clock=clock, channels=[ChannelSpec(c) for c in codes.values()],
                    on_alarm=alarms.append, max_clock_offset_s=3600)
    gw = Gateway("XX.STA01", framer)
    dec = LinkDecoder(KEY, clock, board_id=7, auto_ack=False)
    gw.resume(dec, 7)
    return box, framer, gw, dec, StreamAssembler(codes), alarms


def _run(gw, dec, asm, board, clock, seconds, tq=link.TQ_LOCKED, first=b""):
    from tests.edge.fakeboard import converse

    data = first
    for _ in range(int(seconds / 0.5)):
        data += board.data(tq)
        converse(dec, board, data)
        gw.on_events(dec, asm, dec.next_events())
        gw.poll()
        clock.advance(0.5)
        converse(dec, board, b"")
        data = b""


def test_a_locked_board_is_framed_by_its_time_when_the_gateway_clock_is_hours_off(tmp_path, clock, caplog):
    """A Pi without RTC boots with the time it had at shutdown, 6 hours ago; the board is GNSS-locked.
    Every sample is framed by board time and delivered, the board is acknowledged for what is on
    disk, and the gateway's clock is alarmed (SOH) with a rate-limited WARNING."""
    from tests.edge.fakeboard import FakeBoard

    board = FakeBoard(channels=2, spp=50, ring=1024, t0_us=T0_US)       # 100 sps, 0.5-s packets
    clock.t = T0_US / 1e6 - 6 * 3600                                    # the gateway's clock: 6 h behind
    box, framer, gw, dec, asm, alarms = _live_gateway(tmp_path, clock, board, CODES)
    _run(gw, dec, asm, board, clock, 60, first=board.hello())
    windows = _window_sample_counts(box)
    seqs = sorted(windows)
    assert seqs[0] == framer.seq_of(T0_US) and seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert len(seqs) >= 5 and all(n == {"BHZ": 1000, "BHN": 1000} for n in windows.values()), windows
    st = framer.stats()
    assert st["implausible_time_samples"] == 0 and st["board_time_trusted_samples"] > 0
    assert st["clock_alarm"]["alarm"] == "gateway_clock" and round(st["clock_alarm"]["offset_s"]) == 6 * 3600
    assert [a["alarm"] for a in alarms] == ["gateway_clock"]                 # once per episode
    persisted = box.ack_points()[7]
    assert 0 < board.acked <= persisted[1]
    warnings = [r for r in caplog.records if "gateway's clock is" in r.getMessage()]
    assert 1 <= len(warnings) <= 2                                           # rate-limited (1/min)


def test_an_unlocked_board_far_from_the_gateway_clock_is_held_unacknowledged_until_the_clocks_agree(
        tmp_path, clock):
    """The board lost its GNSS lock (holdover) and the gateway's clock is 6 hours behind: neither can
    be trusted.  Nothing is acknowledged or framed while they disagree; the board's ring keeps the
    samples; when NTP sets the gateway's clock, every held sample is asked for again and framed."""
    from tests.edge.fakeboard import FakeBoard

    board = FakeBoard(channels=2, spp=50, ring=1024, t0_us=T0_US)
    clock.t = T0_US / 1e6 - 6 * 3600
    box, framer, gw, dec, asm, alarms = _live_gateway(tmp_path, clock, board, CODES)
    _run(gw, dec, asm, board, clock, 60, tq=link.TQ_HOLDOVER, first=board.hello())
    assert board.acked == -1 and box.ack_points() == {} and box.stats()["frames"] == 0
    hold = gw.stats().get("clock_hold")
    alarm = framer.stats()["last_alarm"]
    clock.t = T0_US / 1e6 + 60.5                                     # NTP: the gateway's clock is right
    _run(gw, dec, asm, board, clock, 40, tq=link.TQ_HOLDOVER)
    assert gw.counters["clock_releases"] == 1 and not gw.stats()["clock_hold"]
    windows = _window_sample_counts(box)
    seqs = sorted(windows)
    # Every sample since the first one, the held minute included, is in the frames.
    assert seqs[0] == framer.seq_of(T0_US) and seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert len(seqs) >= 9 and all(n == {"BHZ": 1000, "BHN": 1000} for n in windows.values()), windows
    assert dec.counters["packets_unrecoverable"] == 0 and board.acked > 100
    # While held: counted, alarmed in the SOH, not refused.
    assert hold and hold[0]["seq"] == 1 and gw.counters["clock_holds"] == 1
    assert alarm["alarm"] == "clock_hold" and alarm["time_quality"] == "holdover"
    assert [a["alarm"] for a in alarms] == ["clock_hold"]
    assert framer.stats()["implausible_time_samples"] == 0 and dec.counters["held_back_packets"] > 100


def test_blocks_before_2000_are_never_framed_and_do_not_hold_the_board_acknowledgement_back(tmp_path, clock):
    box = Outbox(tmp_path / "o.sqlite", max_bytes=1 << 30, max_age_s=1e12, clock=clock)
    framer = Framer("STA01", box, clock=clock, channels=[ChannelSpec(c) for c in CODES.values()])
    gw = Gateway("XX.STA01", framer)
    dec, asm = FakeDecoder(), StreamAssembler(CODES)
    clock.t = T0_US / 1e6 + 5
    for seq in range(3):                 # a board stamping 1970 + uptime: no clock can place it
        b = block(seq)
        gw.on_events(dec, asm, [DataBlock(7, 1, seq, 12_000_000 + seq, b.rate_mhz, link.TQ_LOCKED, 0, 0,
                                          b.channel_ids, b.samples)])
    for seq in range(3, 13):             # then the right time again: the first window commits...
        gw.on_events(dec, asm, [block(seq)])
    assert framer.stats()["implausible_time_samples"] == 3 * 40 * 2
    assert box.stats()["frames"] == 1
    # ...and the board hears of everything up to the last committed block, the refused ones included.
    assert dec.acked == [(7, 9)] and box.ack_points()[7][:2] == (1, 9)


def test_a_board_replaced_while_the_gateway_restarts_is_framed_within_seconds_and_alarmed(tmp_path, clock, caplog):
    """issue 7: the gateway has the persisted ACK point of a board deep into epoch 0; the board is
    replaced while the gateway restarts, and the new one starts at epoch 0 / seq 0.  Its data is
    framed within seconds (it used to be dropped as duplicates for minutes, with an INFO line), the
    ACK point becomes the new board's, and a WARNING and a SOH alarm say what happened."""
    from tests.edge.fakeboard import FakeBoard

    old = FakeBoard(channels=2, spp=50, ring=2048, epoch=0, boot=0xA1, t0_us=T0_US)
    clock.t = T0_US / 1e6
    box, framer, gw, dec, asm, alarms = _live_gateway(tmp_path, clock, old, CODES)
    _run(gw, dec, asm, old, clock, 600, first=old.hello())     # 10 minutes: seq 1200
    assert box.ack_points()[7][:2] == (0, old.acked) and old.acked > 1100
    box.close()
    new = FakeBoard(channels=2, spp=50, ring=2048, epoch=0, boot=0xB2, seed=5, t0_us=old.t_us + 30_000_000)
    clock.advance(30)
    box, framer, gw, dec, asm, alarms = _live_gateway(tmp_path, clock, new, CODES)
    frames0 = box.stats()["frames"]
    _run(gw, dec, asm, new, clock, 25, first=new.hello())
    windows = {s: n for s, n in _window_sample_counts(box).items() if s >= framer.seq_of(new.sent[1][1])}
    first = framer.seq_of(new.sent[1][1])
    assert windows and min(windows) == first and box.stats()["frames"] > frames0
    assert all(n == {"BHZ": 1000, "BHN": 1000} for s, n in windows.items() if s > first), windows
    assert box.ack_point_boots() == {7: 0xB2} and box.ack_points()[7][1] < 100 and new.acked >= 0
    assert [a["alarm"] for a in alarms] == ["board_replaced"]
    assert (alarms[0]["old_boot"], alarms[0]["new_boot"]) == (0xA1, 0xB2)
    assert any("a replaced board or a wiped epoch" in r.getMessage() and r.levelname == "WARNING"
               for r in caplog.records)
