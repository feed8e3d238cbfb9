"""LinkDecoder with the port's baud rate: RESEND deadlines follow what the line can carry.

The board answers RESENDs through one FIFO at the line's rate (10 bits a byte at 8N1) beside its
live DATA stream; a request is due again when its copies should have arrived, plus a margin.
"""

from __future__ import annotations

import pytest

from ims_station.edge import ingest
from ims_station.edge.ingest import LinkDecoder
from ims_station.firmware import link

from .fakeboard import KEY, FakeBoard, FakeClock

SPP, CHANNELS, RATE_MHZ = 50, 3, 100_000          # FakeBoard: 500-ms packets, always difference-packed i16
FRAME = ingest.wire_size(link.data_size(SPP, CHANNELS, [link.ENC_D16] * CHANNELS))
PACKET_MS = SPP * 1_000_000 // RATE_MHZ
F = 17                                            # first missing seq in hole_of()


def resends(b, out):
    res = []
    for fr in link.Deframer().feed(out):
        hdr, payload = link.decode(b.auth, fr)
        if hdr.ptype == link.T_RESEND:
            res.append(link.unpack_range(payload))
    return res


def copy_rate(baud):
    """Bytes/s left to the copies: the line less the board's live DATA stream."""
    return baud / 10 - FRAME * 1000 / PACKET_MS


def hole_of(n, baud, margin=0.25, **kw):
    """A decoder that has seen HELLO and DATA 1..16 (enough to learn their size), then packets
    17..16+n missing, and asked for them."""
    clock = FakeClock()
    dec = LinkDecoder(KEY, clock, baudrate=baud, resend_margin=margin, **kw)
    b = FakeBoard(ring=1000, spp=SPP)
    dec.receive_data(b.hello() + b"".join(b.data() for _ in range(16)))
    for _ in range(n):
        b.data()
    dec.receive_data(b.data())
    return clock, dec, b, dec.data_to_send()


@pytest.mark.parametrize("n", [1, 4, 12])
@pytest.mark.parametrize("baud", [9600, 57600, 115200])
def test_deadline_is_the_requested_bytes_at_the_line_rate_plus_the_margin(n, baud):
    clock, dec, b, out = hole_of(n, baud, max_inflight_bytes=1 << 20)
    t0 = clock.monotonic()
    assert resends(b, out) == [(F, F - 1 + n)]
    expected = t0 + n * FRAME / copy_rate(baud) + 0.25
    assert dec.resend_deadline() == pytest.approx(expected)
    # Nothing is asked again before the copies can have arrived ...
    clock.advance(expected - t0 - 1e-6)
    dec.tick()
    assert resends(b, dec.data_to_send()) == []
    # ... and the request is repeated as soon as they are overdue (no fixed 2-s wait).
    clock.advance(2e-6)
    dec.tick()
    assert resends(b, dec.data_to_send()) == [(F, F - 1 + n)]


def test_deadline_scales_with_bytes_and_baud_rate():
    def transmit(n, baud):
        clock, dec, b, _ = hole_of(n, baud, margin=0.0, max_inflight_bytes=1 << 20)
        return dec.resend_deadline() - clock.monotonic()

    assert transmit(8, 115200) == pytest.approx(2 * transmit(4, 115200))
    # Without the live stream (which takes the same share of the line at any rate), the time per
    # byte is 10 bits over the baud rate.
    live = FRAME * 1000 / PACKET_MS
    per_byte = {baud: transmit(4, baud) / (4 * FRAME) for baud in (9600, 115200)}
    assert 1 / per_byte[9600] + live == pytest.approx(960)
    assert 1 / per_byte[115200] + live == pytest.approx(11520)


def test_without_a_baud_rate_the_fixed_timeout_applies():
    clock = FakeClock()
    dec = LinkDecoder(KEY, clock, resend_timeout=2.0)
    b = FakeBoard(ring=1000, spp=SPP)
    dec.receive_data(b.hello() + b.data())
    b.data()
    dec.receive_data(b.data())
    assert resends(b, dec.data_to_send()) == [(2, 2)]
    assert dec.resend_deadline() == clock.monotonic() + 2.0


def test_queue_stays_within_budget_and_drains_at_line_rate_without_any_copy_arriving():
    baud, budget = 115200, 4096
    clock, dec, b, out = hole_of(200, baud, max_inflight_bytes=budget)
    per = budget // FRAME
    assert resends(b, out) == [(F, F - 1 + per)]               # one budget's worth, not 200 packets
    # Half the budget's transmission time later the line model has room for about half again,
    # though every copy was lost: the line is kept busy, the board's queue never overfills.
    clock.advance(per * FRAME / copy_rate(baud) / 2)
    dec.tick()
    asked = resends(b, dec.data_to_send())
    assert len(asked) == 1 and asked[0][0] == F + per
    n2 = asked[0][1] - asked[0][0] + 1
    assert per // 2 - 1 <= n2 <= per // 2 + 1
    queued = (per - per / 2 + n2) * FRAME
    assert queued <= budget


def test_a_late_copy_re_anchors_the_deadlines_of_what_follows_it():
    baud = 115200
    clock, dec, b, out = hole_of(6, baud, max_inflight_bytes=1 << 20)
    answer = [b"\x00" + f + b"\x00" for f in link.Deframer().feed(b.receive(out))]
    rate = copy_rate(baud)
    # The copy of F+1 arrives 0.1 s later than the model expected (the board interleaved other
    # packets): F+2..F+5 are due at their bytes after *its* arrival, not at the first estimate.
    clock.advance(2 * FRAME / rate + 0.1)
    t = clock.monotonic()
    dec.receive_data(answer[1])
    assert dec.resend_deadline() == pytest.approx(t + 4 * FRAME / rate + 0.25)
    # F, whose copy should have come before 3's, is asked again at once.
    assert resends(b, dec.data_to_send()) == [(F, F)]
