"""Serial link: decode throughput of the edge on one core, and link efficiency at 115200 baud.

For 3 ch x 100 sps and 4 ch x 200 sps, DATA packets are built as the firmware builds them
(``link.pack_data`` with the ``sim`` board's settings: one packet per ``packet_ms`` = 1000 ms,
difference packing on), from seeded band-limited noise of a 24-bit ADC (first differences fit
16 bits, the usual case for seismic noise; the worst case, raw int32, is reported too).

* decode: bytes -> :class:`~ims_station.edge.ingest.LinkDecoder` (deframe, COBS, CRC-32, HMAC,
  sequence tracking, DATA unpack to numpy) -> events; packets/s and samples/s on one core.  The
  reference is the number of such packets a 115200 baud 8N1 line carries per second, so the ratio
  says how many such lines one core can serve.
* efficiency: DATA payload bits / line bits, counting 10 line bits per byte (8N1) and the whole
  framed packet (header, tag, CRC, COBS overhead, leading and trailing delimiter).
"""

from __future__ import annotations

import numpy as np

from bench.harness import Result, best_rate
from ims_station.clock import FakeClock
from ims_station.edge.ingest import LinkDecoder
from ims_station.firmware import link

BAUD = 115200
LINE_BYTES_PER_S = BAUD / 10          # 8N1: start + 8 data + stop bits
KEY = bytes(range(32))


def _board_settings() -> tuple[int, bool]:
    try:
        from ims_station.boards import load_board

        acq = load_board("sim")["acquisition"]
        return int(acq["packet_ms"]), bool(acq.get("diff_packing", True))
    except Exception:  # boards/ not available: the firmware's documented defaults
        return 1000, True


def _packets(channels: int, sps: int, count: int, packet_ms: int, pack: bool, worst: bool) -> list[bytes]:
    auth = link.Authenticator(KEY)
    rng = np.random.default_rng(7)
    n = sps * packet_ms // 1000
    rate_mhz = sps * 1000
    out = []
    t = 1_700_000_000_000_000
    level = np.zeros(channels)
    for seq in range(count):
        if worst:
            x = rng.integers(-(1 << 23), 1 << 23, size=(channels, n))
        else:
            steps = rng.normal(0, 3000, size=(channels, n))
            x = np.cumsum(steps, axis=1) + level[:, None]
            x -= 0.01 * x.mean(axis=1, keepdims=True)     # keep it bounded (high-pass-ish)
            level = x[:, -1]
            x = np.clip(np.round(x), -(1 << 23), (1 << 23) - 1).astype(np.int64)
        payload = link.pack_data(t, rate_mhz, list(range(channels)), [list(map(int, r)) for r in x],
                                 pack=pack)
        out.append(link.encode(auth, link.T_DATA, 1, 0, seq, payload))
        t += packet_ms * 1000
    return out


def run(quick: bool) -> list[Result]:
    packet_ms, pack = _board_settings()
    count = 50 if quick else 400
    results: list[Result] = []
    for channels, sps in ((3, 100), (4, 200)):
        cfg = f"{channels} ch x {sps} sps"
        for worst in (False, True):
            pkts = _packets(channels, sps, count, packet_ms, pack and not worst, worst)
            wire = b"".join(pkts)
            n = sps * packet_ms // 1000
            mean_wire = len(wire) / count
            # (each frame is 0x00 COBS 0x00 on the wire: strip both delimiters)
            payload = sum(len(link.cobs_decode(p[1:-1])) - link.OVERHEAD for p in pkts) / count
            line_pkts_per_s = LINE_BYTES_PER_S / mean_wire
            util = mean_wire * (1000 / packet_ms) / LINE_BYTES_PER_S
            enc = "int32 (worst case)" if worst else "difference-packed"
            if not worst:
                def decode_all(wire=wire):
                    # A clock that stands still: no RESEND timeout fires, only decoding is measured.
                    dec = LinkDecoder(KEY, FakeClock(), auto_ack=False)
                    dec.receive_data(wire)
                    ev = dec.next_events()
                    assert len(ev) == count
                rate = best_rate(decode_all, count, min_time=0.2 if quick else 1.0, repeat=3 if quick else 5)
                results.append(Result(
                    "link", f"decode {cfg}", rate, "packets/s",
                    reference=f"packets/s one {BAUD} baud line carries ({mean_wire:.0f} B/packet)",
                    reference_value=line_pkts_per_s,
                    note=f"{rate * n * channels / 1e6:.2f} M samples/s on one core; "
                         f"{packet_ms} ms packets, {enc}",
                    extra={"samples_per_s": rate * n * channels, "wire_bytes": mean_wire}))
            results.append(Result(
                "link", f"efficiency {cfg} {'int32' if worst else 'packed'}",
                payload * 8 / (mean_wire * 10), "payload/line",
                reference="", reference_value=None,
                note=f"{packet_ms} ms packets, {enc}: {payload:.0f} B payload in {mean_wire:.0f} B on the line; "
                     f"sample bits / line bits = {n * channels * 32 / (mean_wire * 10):.2f} (32-bit samples); "
                     f"line utilisation at {BAUD} baud {100 * util:.1f} %",
                extra={"payload_bytes": payload, "wire_bytes": mean_wire, "packet_ms": packet_ms,
                       "line_utilisation": util}))
    return results
