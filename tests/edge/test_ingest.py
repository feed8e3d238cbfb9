"""LinkDecoder: the gateway end of the serial link, specified packet by packet."""

from __future__ import annotations

import logging
import random
import struct

import numpy as np
import pytest

from ims_station.edge import ingest
from ims_station.edge.ingest import (BoardRestarted, CommandTimeout, DataBlock, GapReport, Hello, LinkDecoder,
                                     Reply, SecurityAlert, Soh)
from ims_station.errors import LocalProtocolError
from ims_station.firmware import link

from .fakeboard import KEY, FakeBoard, FakeClock, converse, settle, truth_block

OTHER_KEY = bytes(range(100, 132))


def make(**kw):
    clock = FakeClock()
    return clock, LinkDecoder(KEY, clock, **kw)


def sent(b, out):
    """(type, payload) of every packet in the decoder's output."""
    res = []
    for fr in link.Deframer().feed(out):
        hdr, payload = link.decode(b.auth, fr)
        res.append((hdr.ptype, payload))
    return res


def resends(b, out):
    return [link.unpack_range(p) for t, p in sent(b, out) if t == link.T_RESEND]


def data_events(events):
    return [e for e in events if isinstance(e, DataBlock)]


def assert_block_is_truth(board, blk):
    t, chans, tq, status = truth_block(board, blk.seq)
    assert blk.t_first_us == t and blk.time_quality == tq and blk.status == status
    assert blk.samples.dtype == np.int32
    np.testing.assert_array_equal(blk.samples, np.array(chans, dtype=np.int32))


# ---------------------------------------------------------------- every packet type

def test_every_board_packet_type_decodes_to_its_event():
    clock, dec = make()
    b = FakeBoard(channels=4, spp=40, rate_mhz=200_000)
    dec.receive_data(b.hello() + b.data(tq=link.TQ_HOLDOVER, status=link.S_TAMPER) + b.soh())
    ev = dec.next_events()
    assert [type(e) for e in ev] == [Hello, DataBlock, Soh]
    h, d, s = ev
    assert (h.board_id, h.epoch, h.seq, h.rate_mhz, h.ring_capacity, h.samples_per_packet) == (7, 3, 0, 200_000, 256, 40)
    assert h.channel_ids == (0, 1, 2, 3) and h.firmware == "fake-1.0" and h.board_name == "fake"
    assert (d.seq, d.rate_mhz, d.channel_ids, d.samples.shape) == (1, 200_000, (0, 1, 2, 3), (4, 40))
    assert d.time_quality == link.TQ_HOLDOVER and d.status == link.S_TAMPER and not d.retransmitted
    assert_block_is_truth(b, d)
    assert d.t_end_us == d.t_first_us + 200_000      # 40 samples at 200 sps
    assert (s.seq, s.supply_mv, s.temperature_cc, s.ring_capacity, s.clock_diff_us) == (2, 5000, 2150, 256, 3)
    assert dec.counters["packets_ok"] == 3 and dec.counters["samples_delivered"] == 160


def test_command_reply_matching_and_unmatched_reply():
    clock, dec = make(board_id=7)
    b = FakeBoard()
    dec.receive_data(b.hello())
    s1 = dec.set_rate(50_000)
    s2 = dec.start_calibration(60, 1000, 0b101)
    s3 = dec.reboot()
    clock.advance(0.25)
    dec.receive_data(b.receive(dec.data_to_send()))
    assert [(c[1], c[2]) for c in b.commands] == [
        (link.CMD_SET_RATE, struct.pack(">I", 50_000)),
        (link.CMD_START_CALIBRATION, struct.pack(">HHB", 60, 1000, 5)),
        (link.CMD_REBOOT, b"")]
    replies = [e for e in dec.next_events() if isinstance(e, Reply)]
    assert [(r.cmd_seq, r.command, r.matched, r.ok, r.result) for r in replies] == [
        (s1, link.CMD_SET_RATE, True, True, b"ok"), (s2, link.CMD_START_CALIBRATION, True, True, b"ok"),
        (s3, link.CMD_REBOOT, True, True, b"ok")]
    assert replies[0].latency_s == pytest.approx(0.25)
    # A REPLY to a command we never sent is delivered but flagged.
    dec.receive_data(b._packet(link.T_REPLY, link.pack_reply(999, link.R_OK, link.CMD_HELLO)))
    (r,) = dec.next_events()
    assert not r.matched and dec.counters["replies_unmatched"] == 1


def test_command_without_reply_times_out_on_the_injected_clock():
    clock, dec = make(board_id=7, command_timeout=5.0)
    seq = dec.request_hello()
    dec.data_to_send()
    clock.advance(4.9)
    dec.tick()
    assert dec.next_events() == []
    clock.advance(0.2)
    dec.tick()
    assert dec.next_events() == [CommandTimeout(7, seq, link.CMD_HELLO)]


def test_command_needs_a_board_id():
    clock, dec = make()
    with pytest.raises(LocalProtocolError):
        dec.reboot()


# ---------------------------------------------------------------- Must show 2: bad input

def _wire_packet(key=KEY, **over):
    b = FakeBoard(key=key)
    return b.data()


def test_wrong_hmac_key_is_rejected_and_counted():
    clock, dec = make()
    bad = FakeBoard(key=OTHER_KEY).data()
    dec.receive_data(bad)
    assert dec.next_events() == [] and dec.counters["hmac_errors"] == 1 and dec.counters["packets_ok"] == 0


def test_truncated_packet_is_rejected_and_counted():
    clock, dec = make()
    w = FakeBoard().data()
    dec.receive_data(w[:len(w) // 2] + b"\x00")
    assert dec.next_events() == []
    # The COBS code bytes now point past the end, or the CRC cannot match: either way, rejected.
    assert dec.counters["framing_errors"] + dec.counters["crc_errors"] == 1


def test_truncated_packet_with_valid_framing_is_rejected_by_crc():
    clock, dec = make()
    b = FakeBoard()
    pkt = link.build_packet(b.auth, link.T_DATA, 7, 3, 0, link.pack_data(0, 100_000, [0], [[1, 2, 3]]))
    dec.receive_data(link.frame(pkt[:-9]))
    assert dec.counters["crc_errors"] == 1 and dec.next_events() == []


def _reseal(pkt: bytearray, auth) -> bytes:
    """Recompute tag and CRC after editing a header field, as an attacker with the key, or a buggy
    board, would: only the field under test is wrong."""
    n = len(pkt)
    end = n - link.TAG_SIZE - link.CRC_SIZE
    pkt[end:end + link.TAG_SIZE] = auth.tag(bytes(pkt[:end]))
    pkt[n - 4:] = struct.pack(">I", link.crc32(bytes(pkt[:n - 4])))
    return bytes(pkt)


def test_unknown_version_is_rejected_and_counted():
    clock, dec = make()
    b = FakeBoard()
    pkt = bytearray(link.build_packet(b.auth, link.T_DATA, 7, 3, 0, link.pack_data(0, 100_000, [0], [[1]])))
    pkt[0] = 2
    dec.receive_data(link.frame(_reseal(pkt, b.auth)))
    assert dec.counters["version_errors"] == 1 and dec.next_events() == []


def test_length_field_pointing_past_the_end_is_rejected_and_counted():
    clock, dec = make()
    b = FakeBoard()
    pkt = bytearray(link.build_packet(b.auth, link.T_DATA, 7, 3, 0, link.pack_data(0, 100_000, [0], [[1]])))
    struct.pack_into(">H", pkt, 12, 4000)
    dec.receive_data(link.frame(_reseal(pkt, b.auth)))
    assert dec.counters["length_errors"] == 1 and dec.next_events() == []


def test_inner_length_fields_past_the_end_are_rejected_as_payload_errors_and_reported():
    # Authenticated DATA whose sample count points past the payload: a board bug, not noise.
    clock, dec = make()
    b = FakeBoard()
    payload = bytearray(link.pack_data(0, 100_000, [0], [[1, 2, 3]], pack=False))
    struct.pack_into(">H", payload, 12, 60000)
    dec.receive_data(b.hello() + b._packet(link.T_DATA, bytes(payload)) + b.data())
    ev = dec.next_events()
    assert dec.counters["payload_errors"] == 1
    assert [type(e) for e in ev] == [Hello, GapReport, DataBlock]
    assert (ev[1].first_seq, ev[1].last_seq, ev[1].reason) == (1, 1, "payload")


def test_a_megabyte_of_random_bytes_never_raises_and_valid_packets_after_it_decode():
    clock, dec = make()
    b = FakeBoard()
    rng = random.Random(20240601)
    garbage = rng.randbytes(1 << 20)
    dec.receive_data(b.hello())
    for i in range(0, len(garbage), 4093):      # odd chunking, as a UART would deliver it
        dec.receive_data(garbage[i:i + 4093])
    rejected = sum(dec.counters[k] for k in ("framing_errors", "crc_errors", "length_errors"))
    assert rejected > 1000                      # ~1/256 of the bytes are delimiters
    assert dec.counters["packets_ok"] == 1
    # Every non-delimiter byte is accounted for (but the unfinished last frame, still buffered).
    counted = dec.counters["rejected_frame_bytes"] + dec.counters["garbage_bytes"]
    assert len(garbage) - garbage.count(0) - link.MAX_ENCODED < counted <= len(garbage) - garbage.count(0)
    assert dec.counters["hmac_errors"] == 0     # CRC-32 stops random frames before HMAC
    # Resync: the delimiter after the garbage ends the last garbage frame; the next packet is clean.
    dec.receive_data(b"\x00" + b.data() + b.data())
    ev = dec.next_events()
    assert [type(e) for e in ev] == [Hello, DataBlock, DataBlock]
    for blk in ev[1:]:
        assert_block_is_truth(b, blk)


def test_garbage_and_rejected_frames_are_counted_apart():
    clock, dec = make()
    b = FakeBoard()
    good = b.hello()
    bad = bytearray(b.data())
    bad[20] ^= 0x40                                # one bit flipped inside the frame
    run = b"\x05" * (link.MAX_ENCODED + 100)       # no delimiter for longer than any frame
    dec.receive_data(good + bytes(bad) + run + b"\x00" + b.data())
    c = dec.counters
    assert c["crc_errors"] + c["framing_errors"] == 1 and c["packets_ok"] == 2
    assert c["rejected_frame_bytes"] == len(bad) - 2            # the frame, not its delimiters
    assert c["garbage_bytes"] == len(run) and c["overlong_frames"] == 1


def test_overlong_frame_is_discarded_with_bounded_memory():
    clock, dec = make()
    b = FakeBoard()
    dec.receive_data(b"\x01" * (3 * link.MAX_ENCODED) + b"\x00" + b.hello())
    assert dec.counters["overlong_frames"] == 1 and dec.counters["garbage_bytes"] >= 3 * link.MAX_ENCODED
    assert [type(e) for e in dec.next_events()] == [Hello]


def test_rejections_are_logged_rate_limited(caplog):
    clock, dec = make(log_rate=1.0, log_burst=3)
    bad = FakeBoard(key=OTHER_KEY).data()
    with caplog.at_level(logging.INFO, logger="ims_station.edge.ingest"):
        for _ in range(100):
            dec.receive_data(bad)
        clock.advance(1.0)
        dec.receive_data(bad)
    assert dec.counters["hmac_errors"] == 101
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 4
    assert "97 similar messages suppressed" in msgs[-1]


def test_packets_from_another_board_and_gateway_types_are_refused():
    clock, dec = make(board_id=7)
    dec.receive_data(FakeBoard(board_id=8).hello())
    b = FakeBoard()
    dec.receive_data(link.encode(b.auth, link.T_ACK, 7, 3, 0, link.pack_ack(1)))
    assert dec.counters["wrong_board"] == 1 and dec.counters["unexpected_type"] == 1
    assert dec.next_events() == []


# ---------------------------------------------------------------- sequence, RESEND, gaps

def test_lost_packet_is_requested_at_once_and_delivered_in_order():
    clock, dec = make()
    b = FakeBoard()
    w = [b.hello()] + [b.data() for _ in range(6)]
    for i, x in enumerate(w):
        if i != 3:
            dec.receive_data(x)
    assert [e.seq for e in dec.next_events()] == [0, 1, 2]      # 4.. held behind the hole at 3
    assert resends(b, dec.data_to_send()) == [(3, 3)]
    clock.advance(0.1)
    dec.receive_data(link.encode(b.auth, link.T_DATA, 7, 3, 3, link.pack_data(
        *_truth_args(b, 3)), link.F_RETRANSMIT))
    ev = dec.next_events()
    assert [e.seq for e in ev] == [3, 4, 5, 6] and ev[0].retransmitted
    for e in ev:
        assert_block_is_truth(b, e)
    assert dec.counters["packets_recovered"] == 1 and dec.counters["resend_requests"] == 1


def _truth_args(b, seq):
    t, chans, tq, status = truth_block(b, seq)
    return t, b.rate_mhz, b.chan_ids, chans, tq, status


def test_resend_timing_on_a_fake_clock_then_give_up_with_an_exact_gap_report():
    clock, dec = make(resend_timeout=2.0, max_resend_tries=3)
    b = FakeBoard(spp=50, rate_mhz=100_000, ring=2)  # HELLO: only 2 packets guaranteed held
    w = [b.hello()] + [b.data() for _ in range(5)]
    for i, x in enumerate(w):
        if i not in (2, 3):
            dec.receive_data(x)
    times = []
    for step in range(60):                       # 6 s of protocol time in 0.1 s steps
        rs = resends(b, dec.data_to_send())
        if rs:
            assert rs == [(2, 3)]
            times.append(round(clock.monotonic() - 1000.0, 1))
        clock.advance(0.1)
        dec.tick()
    assert times == [0.0, 2.0, 4.0]              # asked, re-asked twice after 2 s each, then silent
    ev = dec.next_events()
    assert [type(e) for e in ev] == [Hello, DataBlock, GapReport, DataBlock, DataBlock]
    gap = ev[2]
    before, after = ev[1], ev[3]
    assert (gap.board_id, gap.epoch, gap.first_seq, gap.last_seq, gap.reason) == (7, 3, 2, 3, "timeout")
    assert gap.start_us == before.t_end_us == before.t_first_us + 500_000
    assert gap.end_us == after.t_first_us == gap.start_us + 1_000_000
    assert gap.channel_ids == (0, 1, 2) and gap.samples_missing == 100
    assert dec.counters["packets_unrecoverable"] == 2 and dec.counters["gaps_reported"] == 1


def test_by_default_a_hole_is_asked_for_until_it_comes_whatever_the_line_eats():
    # A line that loses the board's answer to the first 12 RESENDs (a 1-s packet on the target
    # line is hit with p ~ 0.6): the default policy keeps asking and loses nothing.
    clock, dec = make()
    b = FakeBoard()
    w = [b.hello()] + [b.data() for _ in range(4)]
    dec.receive_data(w[0] + w[1] + w[3] + w[4])           # seq 2 lost
    eaten = [0]

    def line(data):
        if data and eaten[0] < 12:
            eaten[0] += 1
            return b""
        return data

    settle(dec, b, clock, seconds=60.0, line=line)
    ev = dec.next_events()
    assert eaten[0] == 12 and len(b.resend_requests) == 13
    assert not [e for e in ev if isinstance(e, GapReport)]
    assert [e.seq for e in data_events(ev)] == [1, 2, 3, 4]
    assert dec.counters["packets_unrecoverable"] == 0 and dec.counters["packets_recovered"] == 1


def test_a_hole_below_the_ring_floor_of_a_soh_is_given_up_without_asking():
    clock, dec = make()
    b = FakeBoard(ring=4)
    w = [b.hello(), b.data()] + [b.data() for _ in range(9)]
    soh = b.soh()                                          # seq 11 says: the ring holds 7..10
    dec.receive_data(w[0] + w[1] + w[9] + w[10] + soh)     # 2..8 missing
    out = dec.data_to_send()
    assert resends(b, out) == [(7, 8)]                     # only what the ring still holds
    assert dec.counters["packets_unrecoverable"] == 5
    dec.receive_data(b.receive(out))
    ev = dec.next_events()
    gaps = [e for e in ev if isinstance(e, GapReport)]
    # (Storing the SOH itself evicted 7 from the 4-packet ring: the board says so.)
    assert [(g.first_seq, g.last_seq, g.reason) for g in gaps] == [(2, 6, "beyond_ring"), (7, 7, "unavailable")]
    blocks = data_events(ev)
    assert [e.seq for e in blocks] == [1, 8, 9, 10]
    assert all(g.start_us == blocks[0].t_end_us and g.end_us == blocks[1].t_first_us for g in gaps)


def test_the_try_cap_never_gives_up_what_the_ring_is_sure_to_hold():
    clock, dec = make(resend_timeout=2.0, max_resend_tries=3)
    b = FakeBoard(ring=10)                          # HELLO: the 10 newest packets are held
    w = [b.hello()] + [b.data() for _ in range(5)]
    dec.receive_data(w[0] + w[1] + w[3] + w[4] + w[5])    # seq 2 lost
    asked = 0
    for _ in range(20):                             # 20 s of asking, answers lost on the line
        asked += len(resends(b, dec.data_to_send()))
        clock.advance(1.0)
        dec.tick()
    assert asked == 10 and dec.counters["packets_unrecoverable"] == 0
    for _ in range(8):                              # the board goes on: 2 leaves the guaranteed span
        dec.receive_data(b.data())
    for _ in range(4):
        dec.data_to_send()
        clock.advance(1.0)
        dec.tick()
    gaps = [e for e in dec.next_events() if isinstance(e, GapReport)]
    assert [(g.first_seq, g.reason) for g in gaps] == [(2, "timeout")]


def test_progress_on_a_request_postpones_its_timeout():
    clock, dec = make(resend_timeout=2.0)
    b = FakeBoard()
    w = [b.hello()] + [b.data() for _ in range(5)]
    dec.receive_data(w[0] + w[4])
    dec.data_to_send()                           # RESEND 1..3
    clock.advance(1.5)
    dec.receive_data(link.encode(b.auth, link.T_DATA, 7, 3, 1, link.pack_data(*_truth_args(b, 1)), link.F_RETRANSMIT))
    clock.advance(1.5)                           # 3 s after the request, 1.5 s after progress
    dec.tick()
    assert resends(b, dec.data_to_send()) == []
    clock.advance(0.6)
    dec.tick()
    assert resends(b, dec.data_to_send()) == [(2, 3)]


def test_unavailable_from_the_board_ends_the_wait_with_an_exact_report():
    clock, dec = make()
    b = FakeBoard(ring=4)
    w = [b.hello()] + [b.data() for _ in range(12)]
    dec.receive_data(w[0] + w[1])
    dec.receive_data(b"".join(w[10:]))            # 2..9 missing; ring holds only 9..12
    converse(dec, b, b"")
    ev = dec.next_events()
    assert b.resend_requests == [(2, 9)]
    gaps = [e for e in ev if isinstance(e, GapReport)]
    assert [(g.first_seq, g.last_seq, g.reason) for g in gaps] == [(2, 8, "unavailable")]
    blocks = data_events(ev)
    assert [e.seq for e in blocks] == [1, 9, 10, 11, 12]
    for g in gaps:
        assert g.start_us == blocks[0].t_end_us and g.end_us == blocks[1].t_first_us
        assert g.samples_missing == 7 * 50 and g.channel_ids == (0, 1, 2)
    assert dec.counters["unavailable_received"] == 1 and dec.counters["packets_recovered"] == 1


def test_outage_longer_than_the_ring_is_settled_in_few_round_trips():
    clock, dec = make()
    b = FakeBoard(ring=100)
    dec.receive_data(b.hello() + b.data())        # HELLO tells the ring capacity: 100 packets
    for _ in range(5000):                          # gateway away
        b.data()
    converse(dec, b, b.data())
    settle(dec, b, clock)
    ev = dec.next_events()
    gaps = [e for e in ev if isinstance(e, GapReport)]
    # Sent while away: seq 2..5001; seq 5002 revealed the hole; the ring holds 4903..5002.
    # The oldest part is asked for first; the board's UNAVAILABLE names everything below its
    # oldest packet, settling the outage in one round trip.  (Storing that UNAVAILABLE evicted
    # 4903 from the 100-packet ring: the next request learns that too.)
    assert [(g.first_seq, g.last_seq, g.reason) for g in gaps] == [(2, 4902, "unavailable"),
                                                                  (4903, 4903, "unavailable")]
    cap = dec.inflight_limit()
    assert b.resend_requests[0] == (2, 1 + cap)
    assert all(r[1] - r[0] + 1 <= cap for r in b.resend_requests)
    assert sum(r[1] - r[0] + 1 for r in b.resend_requests) <= 100 + 2 * cap
    blocks = data_events(ev)
    assert blocks[0].seq == 1 and blocks[1].seq == gaps[-1].last_seq + 1
    assert all(g.start_us == blocks[0].t_end_us and g.end_us == blocks[1].t_first_us for g in gaps)
    assert [e.seq for e in blocks[1:]] == list(range(blocks[1].seq, 5003))
    for e in blocks:
        assert_block_is_truth(b, e)


def test_catch_up_is_paced_to_what_the_boards_transmit_queue_holds():
    clock, dec = make()
    b = FakeBoard(ring=1000, spp=100)
    dec.receive_data(b.hello() + b.data())
    for _ in range(300):                           # 300 packets sent while the gateway was away
        b.data()
    dec.receive_data(b.data())
    size = max(len(b.data()) for _ in range(3))    # (frames of this board, for the arithmetic)
    cap = dec.inflight_limit()
    assert cap == ingest.DEFAULT_MAX_INFLIGHT_BYTES // ingest.wire_size(
        max(link.data_size(100, 3, [e] * 3) for e in (link.ENC_D8, link.ENC_D16)))
    out = dec.data_to_send()
    assert resends(b, out) == [(2, 1 + cap)]       # one chunk, not 128 packets at once
    assert cap * size <= ingest.DEFAULT_MAX_INFLIGHT_BYTES
    # The answers arrive one by one: each one frees room for the next request, no timeout needed.
    answer = b.receive(out)
    frames = [b"\x00" + f + b"\x00" for f in link.Deframer().feed(answer)]
    asked = []
    for fr in frames:
        dec.receive_data(fr)
        asked += resends(b, dec.data_to_send())
    assert asked == [(2 + cap + i, 2 + cap + i) for i in range(len(frames))]
    st = dec.state()
    outstanding = sum(h[1] - h[0] + 1 for h in st["holes"] if h[2] > 0)
    assert outstanding == cap                      # still exactly one budget in flight
    assert clock.monotonic() == 1000.0             # all of it without protocol time passing


def test_lost_copies_are_asked_again_as_soon_as_a_later_copy_arrives():
    clock, dec = make()
    b = FakeBoard(ring=1000)
    dec.receive_data(b.hello() + b.data())
    for _ in range(6):
        b.data()                                   # 2..7 lost
    dec.receive_data(b.data())
    out = dec.data_to_send()
    assert resends(b, out) == [(2, 7)]
    answer = [b"\x00" + f + b"\x00" for f in link.Deframer().feed(b.receive(out))]
    dec.receive_data(answer[3])                    # only the copy of 5 survives the line
    # 2..4 were sent before it and are not coming: asked again at once, without a timeout.
    assert resends(b, dec.data_to_send()) == [(2, 4)]
    assert clock.monotonic() == 1000.0


def test_packet_length_follows_the_corruption_rate():
    clock, dec = make(adapt_window=20)
    b = FakeBoard(spp=100)                         # 1-s packets at 100 sps
    converse(dec, b, b.hello())
    bad = bytearray(FakeBoard(seed=9).data())
    bad[30] ^= 1

    def traffic(n, rejected_every):
        for i in range(n):
            converse(dec, b, bytes(bad) if i % rejected_every == 0 else b.data())

    traffic(20, 2)                                 # 50 % rejected: halve
    assert b.commands[-1][1:] == (link.CMD_SET_PACKET_MS, (500).to_bytes(2, "big"))
    assert dec.packet_ms() == 500 and b.spp == 50
    traffic(20, 3)                                 # 34 %: halve again, to the 250 ms floor
    assert b.commands[-1][2] == (250).to_bytes(2, "big") and dec.packet_ms() == 250
    traffic(40, 3)                                 # still bad, but at the floor: nothing more
    assert len(b.commands) == 2
    traffic(40, 1000)                              # clean: back to the board's default
    assert b.commands[-1][2] == (0).to_bytes(2, "big") and b.spp == 100 and dec.packet_ms() == 1000
    traffic(40, 1000)
    assert len(b.commands) == 3 and dec.counters["packet_ms_changes"] == 3
    # Housekeeping of the decoder: no Reply for the consumer, the data flows on.
    ev = dec.next_events()
    assert not [e for e in ev if isinstance(e, (Reply, CommandTimeout))]
    assert [e.n_samples for e in data_events(ev)][-1] == 100 and 25 in [e.n_samples for e in data_events(ev)]


def test_hold_buffer_is_bounded():
    clock, dec = make(max_held=64)
    b = FakeBoard(ring=1000)
    dec.receive_data(b.hello())
    b.data()                                       # seq 1 lost, never answered
    for _ in range(100):
        dec.receive_data(b.data())
        dec.data_to_send()                         # RESENDs go nowhere
    ev = dec.next_events()
    assert dec.counters["held_overflow"] == 1
    assert [(g.first_seq, g.last_seq, g.reason) for g in ev if isinstance(g, GapReport)] == [(1, 1, "overflow")]
    assert [e.seq for e in data_events(ev)] == list(range(2, 102))


def test_duplicates_are_dropped_and_a_conflicting_duplicate_is_a_security_event():
    clock, dec = make()
    b = FakeBoard()
    w = [b.hello(), b.data(), b.data()]
    dec.receive_data(b"".join(w) + w[1] + w[2])
    assert [e.seq for e in dec.next_events()] == [0, 1, 2]
    assert dec.counters["duplicates"] == 2 and dec.counters["duplicate_conflicts"] == 0
    forged = link.encode(b.auth, link.T_DATA, 7, 3, 1, link.pack_data(0, 100_000, [0], [[666]]))
    dec.receive_data(forged)
    assert dec.next_events() == [SecurityAlert(7, 3, 1, "duplicate with different content")]
    assert dec.counters["duplicate_conflicts"] == 1


def test_board_reboot_ends_the_epoch_and_starts_the_next_at_zero():
    clock, dec = make()
    b = FakeBoard()
    dec.receive_data(b.hello() + b.data())
    b.data()                                       # lost just before the reboot...
    dec.receive_data(b.data())                     # ...its hole is pending, seq 3 held behind it
    dec.data_to_send()                             # the RESEND is lost in the reboot
    b.reboot()
    converse(dec, b, b.hello() + b.data())
    ev = dec.next_events()
    assert [type(e).__name__ for e in ev] == [
        "Hello", "DataBlock", "GapReport", "DataBlock", "BoardRestarted", "Hello", "DataBlock"]
    gap = ev[2]
    assert (gap.epoch, gap.first_seq, gap.last_seq, gap.reason) == (3, 2, 2, "restart")
    assert gap.start_us == ev[1].t_end_us and gap.end_us == ev[3].t_first_us
    assert ev[4] == BoardRestarted(7, 3, 4, "epoch", 0x1234, 0x1235)
    assert [(e.epoch, e.seq) for e in ev[5:]] == [(4, 0), (4, 1)]
    assert dec.state()["epoch"] == 4 and b.acked == 1


def test_new_epoch_without_its_first_packets_asks_for_them_from_zero():
    clock, dec = make()
    b = FakeBoard()
    dec.receive_data(b.hello() + b.data())
    b.reboot()
    b.hello(), b.data()                            # seq 0, 1 of epoch 4 lost
    converse(dec, b, b.data())
    ev = dec.next_events()
    assert [type(e).__name__ for e in ev] == ["Hello", "DataBlock", "BoardRestarted", "Hello", "DataBlock", "DataBlock"]
    assert [e.seq for e in ev[3:]] == [0, 1, 2] and all(e.epoch == 4 for e in ev[3:])
    assert dec.counters["board_restarts"] == 1


def test_old_epoch_packets_after_a_restart_are_dropped():
    clock, dec = make()
    b = FakeBoard()
    old = b.data()
    b.reboot()
    dec.receive_data(b.hello())
    dec.receive_data(old)
    assert dec.counters["stale_epoch"] == 1 and [type(e) for e in dec.next_events()] == [Hello]


def test_first_contact_late_in_a_long_run_does_not_backfill():
    clock, dec = make(backfill=64)
    b = FakeBoard()
    b.seq = 1_000_000
    dec.receive_data(b.data())
    assert resends(b, dec.data_to_send()) == [] and [e.seq for e in dec.next_events()] == [1_000_000]


def test_acks_are_periodic_and_the_consumer_can_hold_them_back():
    clock, dec = make(ack_interval=1.0)
    b = FakeBoard()
    converse(dec, b, b.hello() + b.data())
    assert b.acked == 1
    converse(dec, b, b.data())
    assert b.acked == 1                            # not yet: 1 s between ACKs
    clock.advance(1.0)
    dec.tick()
    converse(dec, b, b"")
    assert b.acked == 2

    clock, dec = make(auto_ack=False)
    b = FakeBoard()
    converse(dec, b, b.hello() + b.data() + b.data())
    assert b.acked == -1                           # nothing durable yet
    dec.acknowledge(1)
    dec.tick()
    converse(dec, b, b"")
    assert b.acked == 1
    dec.acknowledge(99)                            # never beyond what was delivered
    clock.advance(1.0)
    dec.tick()
    converse(dec, b, b"")
    assert b.acked == 2


def test_close_reports_pending_holes_with_unknown_end():
    clock, dec = make()
    b = FakeBoard()
    dec.receive_data(b.hello() + b.data())
    b.data()
    dec.receive_data(b.soh())
    dec.close()
    ev = dec.next_events()
    gap = [e for e in ev if isinstance(e, GapReport)][0]
    assert (gap.first_seq, gap.last_seq, gap.reason, gap.end_us, gap.samples_missing) == (2, 2, "closed", None, None)
    assert gap.start_us == ev[1].t_end_us and gap.channel_ids == (0, 1, 2)


def test_gap_without_data_on_either_side_takes_the_layout_from_hello():
    clock, dec = make()
    b = FakeBoard(channels=2)
    dec.receive_data(b.hello())
    b.data()
    dec.receive_data(b.soh())
    dec.close()
    (gap,) = [e for e in dec.next_events() if isinstance(e, GapReport)]
    assert (gap.start_us, gap.end_us, gap.channel_ids, gap.rate_mhz) == (None, None, (0, 1), 100_000)


def test_a_hole_larger_than_any_ring_is_given_up_without_asking():
    clock, dec = make(max_hole_span=1000)
    b = FakeBoard(ring=2000)
    dec.receive_data(b.hello())
    for _ in range(5000):
        b.data()
    converse(dec, b, b.data())
    settle(dec, b, clock)
    ev = dec.next_events()
    gaps = [e for e in ev if isinstance(e, GapReport)]
    assert [(g.first_seq, g.last_seq, g.reason) for g in gaps] == [(1, 4000, "beyond_ring")]
    assert min(r[0] for r in b.resend_requests) == 4001          # the ring still had 4001..5000
    assert [e.seq for e in data_events(ev)] == list(range(4001, 5002))
