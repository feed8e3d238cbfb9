"""A minimal board for the edge tests, built only on ``firmware/link.py``.

It numbers every packet it sends, keeps the last ``ring`` packets to serve RESEND from (answering
UNAVAILABLE for what has left the ring), answers COMMANDs with REPLY, and records what it sent so
tests can compare what the edge delivers with the truth.  It is not the firmware: the real board is
F's ``firmware/digitizer.py``, driven by the HIL.
"""

from __future__ import annotations

import random
from collections import OrderedDict

from ims_station.clock import FakeClock  # noqa: F401 - the tests import it from here
from ims_station.firmware import link

KEY = bytes(range(32))


class FakeBoard:
    def __init__(self, key: bytes = KEY, board_id: int = 7, epoch: int = 3, rate_mhz: int = 100_000,
                 channels: int = 3, spp: int = 50, ring: int = 256, seed: int = 1,
                 t0_us: int = 1_700_000_000_000_000, boot: int = 0x1234) -> None:
        self.auth = link.Authenticator(key)
        self.board_id, self.epoch, self.boot = board_id, epoch, boot
        self.other_boot = 0                     # gateway packets meant for another run, ignored
        self.rate_mhz, self.spp = rate_mhz, spp
        self.chan_ids = list(range(channels))
        self.ring_cap = ring
        self.ring: OrderedDict[int, bytes] = OrderedDict()   # seq -> packet (un-framed)
        self.seq = 0
        self.t_us = t0_us
        self.rng = random.Random(seed)
        self.sent: dict[int, tuple] = {}        # seq -> (ptype, decoded truth)
        self.deframer = link.Deframer()
        self.acked = -1
        self.commands: list[tuple[int, int, bytes]] = []
        self.resend_requests: list[tuple[int, int]] = []
        self.level = [0] * channels
        self.default_spp = spp

    # -- board -> gateway
    def _packet(self, ptype: int, payload: bytes) -> bytes:
        seq = self.seq
        self.seq += 1
        pkt = link.build_packet(self.auth, ptype, self.board_id, self.epoch, seq, payload, 0, self.boot)
        self.ring[seq] = pkt
        while len(self.ring) > self.ring_cap:
            self.ring.popitem(last=False)
        return link.frame(pkt)

    def hello(self) -> bytes:
        self.sent[self.seq] = ("hello",)
        return self._packet(link.T_HELLO, link.pack_hello(
            link.C_RESEND | link.C_DIFF_PACKING | link.C_SET_PACKET_MS, self.rate_mhz, self.ring_cap,
            self.spp, self.chan_ids, "fake-1.0", "fake"))

    def data(self, tq: int = link.TQ_LOCKED, status: int = 0) -> bytes:
        chans = []
        for c in range(len(self.chan_ids)):
            xs = []
            for _ in range(self.spp):
                self.level[c] += self.rng.randint(-300, 300)
                xs.append(self.level[c])
            chans.append(xs)
        t = self.t_us
        self.t_us += (self.spp * 1_000_000_000 + self.rate_mhz // 2) // self.rate_mhz
        self.sent[self.seq] = ("data", t, chans, tq, status)
        return self._packet(link.T_DATA, link.pack_data(t, self.rate_mhz, self.chan_ids, chans, tq, status))

    def soh(self) -> bytes:
        self.sent[self.seq] = ("soh",)
        return self._packet(link.T_SOH, link.pack_soh(self.t_us, self.t_us - 500_000, 3, 5000, 2150,
                                                      link.TQ_LOCKED, 0, len(self.ring), self.ring_cap))

    def reboot(self) -> None:
        self.epoch += 1
        self.seq = 0
        self.ring.clear()
        self.boot = self.boot % 0xFFFF + 1

    def replace(self, epoch: int = 0, boot: int = 0xB0B) -> None:
        """Another board (or this one with its epoch file wiped) in its place: it starts again at
        *epoch*, seq 0, with its own boot number; its clock goes on (GNSS time)."""
        self.epoch, self.boot = epoch, boot
        self.seq = 0
        self.ring.clear()
        self.acked = -1

    # -- gateway -> board
    def receive(self, data: bytes) -> bytes:
        """Handle gateway packets; returns the board's answer bytes."""
        out = bytearray()
        for fr in self.deframer.feed(data):
            hdr, payload = link.decode(self.auth, fr)
            if hdr.boot and hdr.boot != self.boot:
                self.other_boot += 1            # as the firmware: meant for another run
                continue
            if hdr.ptype == link.T_ACK:
                self.acked = link.unpack_ack(payload)
            elif hdr.ptype == link.T_RESEND:
                first, last = link.unpack_range(payload)
                assert last - first + 1 <= link.MAX_RESEND
                self.resend_requests.append((first, last))
                gone = [s for s in range(first, last + 1) if s not in self.ring]
                for s in range(first, last + 1):
                    if s in self.ring:
                        # Same packet, flagged as a copy (new header flags, so new tag and CRC).
                        h, pl = link.parse_packet(self.auth, self.ring[s])
                        out += link.encode(self.auth, h.ptype, h.board_id, h.epoch, h.seq, pl,
                                           link.F_RETRANSMIT, h.boot)
                if gone:
                    # The ring is FIFO: what is gone is a prefix of the range, and so is everything
                    # up to the oldest packet held (said too, as the firmware does).
                    oldest = next(iter(self.ring)) if self.ring else self.seq
                    self.sent[self.seq] = ("unavailable",)
                    out += self._packet(link.T_UNAVAILABLE, link.pack_range(gone[0], max(gone[-1], oldest - 1)))
            elif hdr.ptype == link.T_COMMAND:
                code, args = link.unpack_command(payload)
                self.commands.append((hdr.seq, code, args))
                self.sent[self.seq] = ("reply",)
                out += self._packet(link.T_REPLY, link.pack_reply(hdr.seq, link.R_OK, code, b"ok"))
                if code == link.CMD_SET_PACKET_MS:
                    ms = int.from_bytes(args, "big")
                    self.spp = self.rate_mhz * ms // 1_000_000 if ms else self.default_spp
                    out += self.hello()
        return bytes(out)


def converse(dec, board: FakeBoard, data: bytes, line=None, rounds: int = 50) -> None:
    """Feed *data* to the decoder, then let decoder and board talk until neither has anything to say.
    *line* (bytes -> bytes) is applied to everything the board sends (fault injection)."""
    line = line or (lambda b: b)
    dec.receive_data(line(data))
    for _ in range(rounds):
        out = dec.data_to_send()
        if not out:
            return
        dec.receive_data(line(board.receive(out)))


def settle(dec, board: FakeBoard, clock: FakeClock, seconds: float = 30.0, step: float = 0.5, line=None) -> None:
    """Let protocol time pass (timeouts, re-requests) while the two sides talk."""
    t_end = clock.monotonic() + seconds
    while clock.monotonic() < t_end:
        clock.advance(step)
        dec.tick()
        converse(dec, board, b"", line)


def truth_block(board: FakeBoard, seq: int):
    kind, t, chans, tq, status = board.sent[seq]
    assert kind == "data"
    return t, chans, tq, status
