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
    def __init__(self):
        self.acked = []

    def acknowledge(self, seq, board_id=None):
        self.acked.append((board_id, seq))


def block(seq, n=40, rate=40_000):
    t = T0_US + seq * 1_000_000
    return DataBlock(7, 1, seq, t, rate, link.TQ_LOCKED, 0, 0, (0, 1),
                     np.vstack([np.arange(n, dtype=np.int32) + 40 * seq] * 2))


def test_board_acknowledged_only_after_commit(tmp_path, clock):
    box = Outbox(tmp_path / "o.sqlite", max_bytes=1 << 30, max_age_s=1e12, clock=clock)
    framer = Framer("STA01", box, clock=clock, channels=[ChannelSpec(c) for c in CODES.values()])
    gw = Gateway("XX.STA01", framer)
    dec, asm = FakeDecoder(), StreamAssembler(CODES)
    for seq in range(9):                                   # 9 s of a 10-s window
        assert gw.on_events(dec, asm, [block(seq)]) == []
    assert dec.acked == [] and box.stats()["frames"] == 0  # nothing on disk, nothing acknowledged
    committed = gw.on_events(dec, asm, [block(9)])          # window complete -> frame committed
    assert len(committed) == 1 and box.stats()["frames"] == 1
    assert dec.acked == [(7, 9)]                            # ...and only now the board hears of it
    gw.on_events(dec, asm, [block(10), block(11)])
    assert dec.acked == [(7, 9)] and gw.stats()["unacknowledged_blocks"] == 2
