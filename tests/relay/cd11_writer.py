"""An independent CD-1.1 data-frame writer for tests: hand-written ``struct`` packing and a bitwise
CRC-64, from the spec (shared/specs/cd11.md §2-4), sharing no code with ``ims_station.cd11``.

Why: frames whose time fields our codec refuses to build (``0000001 00:00:00.000``,
``9999365 23:59:60.999``, day 367, hour 24) must still be produced byte-exactly, as an attacker or a
foreign implementation would, to test what the parser, the verifier and the relay make of them.
The frames are unsigned (authentication fields zero), uncompressed ``s4`` samples.
"""

from __future__ import annotations

import struct

_POLY = 0x1B
_MASK = (1 << 64) - 1


def crc64(data: bytes) -> int:
    """CRC-64 of the spec (§2.4): poly 0x1B, init 0, MSB first, no reflection, no final xor."""
    crc = 0
    for byte in data:
        crc ^= byte << 56
        for _ in range(8):
            crc = ((crc << 1) ^ _POLY) & _MASK if crc & (1 << 63) else (crc << 1) & _MASK
    return crc


def _pad(raw: bytes) -> bytes:
    return raw + b"\0" * (-len(raw) % 4)


def _time(text: str | bytes) -> bytes:
    raw = text.encode("ascii") if isinstance(text, str) else text
    assert len(raw) == 20, raw
    return raw


def subframe(site: str, chan: str, loc: str, time: str | bytes, samples: list[int], *,
             time_length_ms: int = 10_000) -> bytes:
    """One channel subframe (§4.2-4.4): uncompressed big-endian int32 samples, no status, unsigned."""
    data = struct.pack(f">{len(samples)}i", *samples)
    fixed = struct.pack(">BBBB5s3s2s2sff20siii", 0, 0, 0, 0, site.encode(), chan.encode(), loc.encode(), b"s4",
                        1.0, 1.0, _time(time), time_length_ms, len(samples), 0)
    body = fixed + struct.pack(">i", len(data)) + _pad(data) + struct.pack(">i", 0)   # subframe count
    auth_offset = 8 + len(body)            # from the channel-length field to the key identifier
    body += struct.pack(">ii", 0, 0)       # auth key id, auth size (no signature)
    return struct.pack(">ii", 4 + len(body), auth_offset) + body


def data_frame(creator: str, sequence: int, nominal: str | bytes, channels: list[tuple[str, str, str]],
               *, times: list[str | bytes] | None = None, samples: list[int] | None = None,
               destination: str = "0", frame_time_length_ms: int = 10_000) -> bytes:
    """A complete data frame (type 5) with a valid CRC-64 and no signature.  *times* are the
    subframes' first-sample times (default: the nominal time)."""
    samples = samples if samples is not None else list(range(400))
    times = times or [nominal] * len(channels)
    cs = b"".join(s.encode().ljust(5, b"\0") + c.encode().ljust(3, b"\0") + l.encode().ljust(2, b"\0")
                  for s, c, l in channels)
    payload = struct.pack(">ii20si", len(channels), frame_time_length_ms, _time(nominal), len(cs)) + _pad(cs)
    payload += b"".join(subframe(s, c, l, t, samples, time_length_ms=frame_time_length_ms)
                        for (s, c, l), t in zip(channels, times))
    header = struct.pack(">ii8s8sqi", 5, 36 + len(payload), creator.encode(), destination.encode(), sequence, 0)
    pre = header + payload + struct.pack(">ii", 0, 0)
    return pre + struct.pack(">Q", crc64(pre))


#: Byte offset of the nominal time in a data frame (header 36 + channel count, frame time length).
NOMINAL_TIME_OFFSET = 36 + 8
