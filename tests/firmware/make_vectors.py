"""Generate tests/firmware/vectors.json, the golden vectors of the link protocol and the ADC.

Run once (``python tests/firmware/make_vectors.py``) and commit the output; the tests never
regenerate it.  Every expected value comes from an implementation *other than* the firmware's:
COBS from the ``cobs`` package (C), CRC-32 from ``zlib``, HMAC from the stdlib ``hmac``, payload
layouts packed field by field with ``struct`` from docs/link-protocol.md, ADC frames from the
register-level emulator ``hil/adc_emu.py`` (written separately from the driver), RMC times from
``datetime``.  Only then does the firmware have to agree with them, under CPython and MicroPython.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import random
import struct
import zlib
from pathlib import Path

from cobs import cobs

HERE = Path(__file__).resolve().parent
KEY = bytes(range(0x20, 0x40))                   # test key (32 bytes); never used outside tests
OTHER_KEY = bytes(range(0x40, 0x60))


def h(b: bytes) -> str:
    return b.hex()


def packet(ptype: int, board: int, epoch: int, seq: int, payload: bytes, flags: int = 0, key: bytes = KEY,
           boot: int = 0) -> bytes:
    head = struct.pack(">BBHHBBIHH", 1, ptype, board, epoch, flags, 0, seq, len(payload), boot)
    tag = hmac.new(key, head + payload, hashlib.sha256).digest()[:16]
    body = head + payload + tag
    return body + struct.pack(">I", zlib.crc32(body))


def channel_bytes(samples: list[int], enc: int) -> bytes:
    if enc == 0:
        return bytes([0]) + struct.pack(f">{len(samples)}i", *samples)
    d = [b - a for a, b in zip(samples, samples[1:])]
    return bytes([enc]) + struct.pack(f">i{len(d)}{'b' if enc == 1 else 'h'}", samples[0], *d)


def main() -> None:
    rnd = random.Random(20261124)
    v: dict = {"key": h(KEY), "other_key": h(OTHER_KEY)}

    cobs_in = [b"", b"\x00", b"\x00\x00", b"\x11\x22\x00\x33", b"\x11\x00\x00\x00",
               bytes(range(1, 255)), bytes(range(1, 256)), bytes([1]) * 508, bytes([0]) * 10 + b"\x01"]
    cobs_in += [bytes(rnd.choice([0, 0, rnd.randrange(256)]) for _ in range(rnd.randrange(1, 700))) for _ in range(12)]
    v["cobs"] = [[h(x), h(cobs.encode(x))] for x in cobs_in]

    crc_in = [b"123456789", b"", b"\x00" * 32] + [rnd.randbytes(rnd.randrange(1, 300)) for _ in range(8)]
    v["crc32"] = [[h(x), zlib.crc32(x)] for x in crc_in]

    keys = [KEY, bytes(16), bytes(range(64)), bytes(range(100))]      # 100 > block size: hashed first
    v["hmac"] = [[h(k), h(m), hmac.new(k, m, hashlib.sha256).hexdigest()]
                 for k in keys for m in (b"", b"The quick brown fox jumps over the lazy dog", rnd.randbytes(200))]

    # Difference packing: the narrowest encoding that fits.
    diff = []
    cases = [
        [5, 6, 4, 4, 130, 3],                         # diffs within i8 -> enc 1? 124 and -127: i8
        [0, 127, -1, -129],                           # -128 fits i8, -128... check below
        [0, 200, -200],                               # i16
        [0, 40000],                                   # i32
        [-8388608, 8388607],                          # full-scale swing: i32
        [7],                                          # single sample: i32 always
        [rnd.randrange(-1000, 1000) for _ in range(200)],
        [rnd.randrange(-2**31, 2**31) for _ in range(20)],
    ]
    for s in cases:
        d = [b - a for a, b in zip(s, s[1:])]
        if len(s) > 1 and all(-128 <= x <= 127 for x in d):
            enc = 1
        elif len(s) > 1 and all(-32768 <= x <= 32767 for x in d):
            enc = 2
        else:
            enc = 0
        diff.append({"samples": s, "enc": enc, "bytes": h(channel_bytes(s, enc))})
    v["diff"] = diff

    pk = []
    # DATA: 4 channels x 10 samples, mixed encodings, status and clip mask set.
    chans = [[i * 3 for i in range(10)], [1000 * i for i in range(10)], [0] * 10,
             [(-1) ** i * 100000 * i for i in range(10)]]
    encs = [1, 2, 1, 0]
    t0 = 1_795_000_000_123_456
    payload = struct.pack(">qIHBBHH", t0, 100000, 10, 4, 2, 0x0009, 0x0008) + bytes([0, 1, 2, 3])
    payload += b"".join(channel_bytes(c, e) for c, e in zip(chans, encs))
    pk.append({"name": "data", "type": 2, "board": 1, "epoch": 7, "seq": 123456, "flags": 0,
               "fields": {"t_first_us": t0, "rate_mhz": 100000, "tq": 2, "status": 9, "clip_mask": 8,
                          "chan_ids": [0, 1, 2, 3], "channels": chans, "pack": True},
               "payload": h(payload)})
    payload_raw = struct.pack(">qIHBBHH", t0, 100000, 10, 4, 2, 0x0009, 0x0008) + bytes([0, 1, 2, 3])
    payload_raw += b"".join(channel_bytes(c, 0) for c in chans)
    pk.append({"name": "data_unpacked", "type": 2, "board": 1, "epoch": 7, "seq": 123457, "flags": 0,
               "fields": {"t_first_us": t0, "rate_mhz": 100000, "tq": 2, "status": 9, "clip_mask": 8,
                          "chan_ids": [0, 1, 2, 3], "channels": chans, "pack": False},
               "payload": h(payload_raw)})
    soh = struct.pack(">qqiHhBBHHH", t0, t0 - 400_000, -12, 12340, 2150, 1, 0, 0x0001, 17, 79)
    pk.append({"name": "soh", "type": 3, "board": 1, "epoch": 7, "seq": 5, "flags": 0,
               "fields": [t0, t0 - 400_000, -12, 12340, 2150, 1, 0x0001, 17, 79], "payload": h(soh)})
    hello = struct.pack(">IIHHBBBB", 0x000F, 200000, 79, 200, 4, 11, 3, 0) + bytes([0, 1, 2, 3]) + b"imsfw-0.1.0" + b"sim"
    pk.append({"name": "hello", "type": 1, "board": 1, "epoch": 7, "seq": 0, "flags": 0,
               "fields": [0x000F, 200000, 79, 200, [0, 1, 2, 3], "imsfw-0.1.0", "sim"], "payload": h(hello)})
    pk.append({"name": "reply", "type": 4, "board": 1, "epoch": 7, "seq": 9, "flags": 0,
               "fields": [42, 1, 1, "6e6f"], "payload": h(struct.pack(">IBBH", 42, 1, 1, 2) + b"no")})
    pk.append({"name": "unavailable", "type": 5, "board": 1, "epoch": 7, "seq": 10, "flags": 0,
               "fields": [3, 8], "payload": h(struct.pack(">II", 3, 8))})
    pk.append({"name": "ack", "type": 0x81, "board": 1, "epoch": 0, "seq": 1, "flags": 0,
               "fields": [99], "payload": h(struct.pack(">I", 99))})
    pk.append({"name": "resend", "type": 0x82, "board": 1, "epoch": 0, "seq": 2, "flags": 0,
               "fields": [100, 163], "payload": h(struct.pack(">II", 100, 163))})
    pk.append({"name": "command_set_rate", "type": 0x83, "board": 1, "epoch": 0, "seq": 3, "flags": 0,
               "fields": [1, "00030d40"], "payload": h(struct.pack(">BBH", 1, 0, 4) + struct.pack(">I", 200000))})
    pk.append({"name": "data_retransmit", "type": 2, "board": 1, "epoch": 7, "seq": 123456, "flags": 1,
               "fields": None, "payload": h(payload)})
    # The boot number of the board's run (header offset 14): on every packet of the run, kept by a
    # retransmitted copy, echoed by the gateway's packets to that run.
    pk.append({"name": "data_boot", "type": 2, "board": 1, "epoch": 7, "seq": 123458, "flags": 0, "boot": 0xBEEF,
               "fields": None, "payload": h(payload)})
    pk.append({"name": "data_boot_retransmit", "type": 2, "board": 1, "epoch": 7, "seq": 123458, "flags": 1,
               "boot": 0xBEEF, "fields": None, "payload": h(payload)})
    pk.append({"name": "ack_boot", "type": 0x81, "board": 1, "epoch": 7, "seq": 4, "flags": 0, "boot": 0xBEEF,
               "fields": None, "payload": h(struct.pack(">I", 99))})
    for p in pk:
        raw = packet(p["type"], p["board"], p["epoch"], p["seq"], bytes.fromhex(p["payload"]), p["flags"],
                     boot=p.get("boot", 0))
        p["packet"] = h(raw)
        p["wire"] = h(b"\x00" + cobs.encode(raw) + b"\x00")
    v["packets"] = pk

    # Bad packets: each must be rejected with the named error class.
    good = bytes.fromhex(pk[6]["packet"])          # the ACK
    wrong_key = packet(0x81, 1, 0, 1, struct.pack(">I", 99), key=OTHER_KEY)
    bad_version = bytearray(good)
    bad_version[0] = 2
    body = bytes(bad_version[:-4])
    bad_version = body + struct.pack(">I", zlib.crc32(body))
    bad_len = bytearray(good)
    bad_len[12:14] = struct.pack(">H", 500)
    body = bytes(bad_len[:-4])
    bad_len = body + struct.pack(">I", zlib.crc32(body))
    flipped = bytearray(good)
    flipped[20] ^= 0x10
    v["bad_packets"] = [
        {"name": "wrong_key", "packet": h(wrong_key), "error": "AuthError"},
        {"name": "truncated", "packet": h(good[:30]), "error": "FramingError"},
        {"name": "truncated_long", "packet": h(good[:-1]), "error": "CrcError"},
        {"name": "bit_flip", "packet": h(bytes(flipped)), "error": "CrcError"},
        {"name": "unknown_version", "packet": h(bad_version), "error": "VersionError"},
        {"name": "length_past_end", "packet": h(bad_len), "error": "LengthError"},
    ]

    # ADC: the frames the emulated ADS131M04 exchanges while the driver configures it for 200 sps
    # and reads three conversions (recorded on the emulated bus).
    from ims_station.firmware.ads131m0x import ADS131M0x
    from ims_station.hil.adc_emu import EmulatedADC

    emu = EmulatedADC(4, clkin_hz=1_638_400)
    frames = []
    real = emu.spi.write_readinto

    def spy(tx, rx):
        real(tx, rx)
        frames.append([h(bytes(tx)), h(bytes(rx))])

    emu.spi.write_readinto = spy
    drv = ADS131M0x(emu.spi, emu.cs, emu.drdy, [1, 2, 32, 128], clkin_hz=1_638_400)
    drv.configure(200000)
    config_frames = len(frames)
    truth = []
    for volts in ([0.5, -0.25, 0.001, 0.0], [1.3, -1.3, -0.0375, 0.00937], [0.0, 1e-7, 0.02, -0.00938]):
        emu.set_inputs(volts)
        truth.append(emu.convert())
        drv.read()
    v["adc"] = {"channels": 4, "clkin_hz": 1_638_400, "gains": [1, 2, 32, 128], "rate_mhz": 200000,
                "config_frames": config_frames, "frames": frames, "codes": truth}

    rmc = []
    for when in (datetime.datetime(2026, 11, 24, 8, 25, 9), datetime.datetime(2000, 2, 29, 23, 59, 59),
                 datetime.datetime(2099, 12, 31, 0, 0, 0)):
        body = "GNRMC,%s.00,A,4807.038,N,01131.000,E,0.02,0.0,%s,,,A" % (when.strftime("%H%M%S"), when.strftime("%d%m%y"))
        cs = 0
        for c in body.encode():
            cs ^= c
        utc = int(when.replace(tzinfo=datetime.timezone.utc).timestamp()) * 1_000_000
        rmc.append(["$%s*%02X\r\n" % (body, cs), utc])
    rmc.append(["$GNRMC,082509.00,V,,,,,,,241126,,,N*00\r\n", None])     # no fix
    rmc.append([rmc[0][0].replace("A,4807", "A,4808"), None])              # checksum now wrong
    v["rmc"] = rmc

    (HERE / "vectors.json").write_text(json.dumps(v, indent=1) + "\n")
    print(f"wrote {HERE / 'vectors.json'}")


if __name__ == "__main__":
    main()
