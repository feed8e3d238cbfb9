"""Fuzz: 10^5 seeded mutations of the real and reference frames (bit flips, truncations, splices,
inserted/deleted bytes, overwritten integer fields), half of them with the CRC repaired so the
damage reaches the payload parser.  The only exceptions allowed are the codec's own; every frame
that is accepted must decode its samples or say why (Cd11DataError), and re-encode to a frame that
parses back to the same object -- unless it holds a value the builder refuses because readers do
(``Cd11BuildError`` naming one of the reader-profile fields)."""

from __future__ import annotations

import random
import re
from collections import Counter

import pytest

from ims_station import cd11
from ims_station.cd11.crc64 import crc64

CASES = 100_000
SEED = 20261124
PROFILE_FIELDS = (r"header\.creator|subframe\.(sensor_type|site|channel|channel_length)"
                  r"|connection\.(station|service)_type|option\.count|option\[\d+\]\.(type|value)"
                  r"|acknack\.frame_set|alert\.message")
INTERESTING = (0, 1, -1, 3, 4, 20, 0x7FFFFFFF, -0x80000000, 0x10000, 36, 40, 400, 1 << 24)


@pytest.fixture(scope="module")
def corpus(cd11_samples) -> list[bytes]:
    return [p.read_bytes() for p in sorted(cd11_samples.glob("*.cd11"))]


def mutate(rng: random.Random, corpus: list[bytes]) -> bytes:
    buf = bytearray(rng.choice(corpus))
    kind = rng.randrange(6)
    if kind == 0:                                    # bit flips
        for _ in range(rng.choice((1, 1, 2, 4, 8))):
            buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
    elif kind == 1:                                  # truncation
        del buf[rng.randrange(len(buf)):]
    elif kind == 2:                                  # splice two frames
        other = rng.choice(corpus)
        buf = buf[:rng.randrange(len(buf) + 1)] + other[rng.randrange(len(other)):]
    elif kind == 3:                                  # insert or delete a few bytes
        at = rng.randrange(len(buf))
        if rng.random() < 0.5:
            del buf[at:at + rng.randrange(1, 9)]
        else:
            buf[at:at] = rng.randbytes(rng.randrange(1, 9))
    else:                                            # overwrite an aligned int32 field
        at = rng.randrange(0, max(1, len(buf) - 4), 4)
        value = rng.choice(INTERESTING) if kind == 4 else rng.getrandbits(32) - (1 << 31)
        buf[at:at + 4] = (value & 0xFFFFFFFF).to_bytes(4, "big")
    if len(buf) >= 8 and rng.random() < 0.5:         # repair the CRC
        buf[-8:] = crc64(bytes(buf[:-8])).to_bytes(8, "big")
    return bytes(buf)


def test_mutated_frames_only_raise_codec_errors(corpus):
    rng = random.Random(SEED)
    outcomes: Counter[str] = Counter()
    for _ in range(CASES):
        buf = mutate(rng, corpus)
        try:
            frame, end = cd11.parse_frame(buf)
        except cd11.Cd11Error as err:
            outcomes[f"rejected:{type(err).__name__}"] += 1
            continue
        outcomes["accepted"] += 1
        for sf in getattr(frame, "subframes", ()):
            try:
                sf.samples()
            except cd11.Cd11DataError:
                outcomes["samples undecodable"] += 1
        try:
            wire = frame.to_bytes()
        except cd11.Cd11BuildError as err:
            # Parsed leniently, but outside what we may send (the reader profile, frames.py).
            assert re.fullmatch(PROFILE_FIELDS, err.field), err
            outcomes["outside the reader profile"] += 1
            continue
        again, _ = cd11.parse_frame(wire)
        assert again == frame
    total = sum(v for k, v in outcomes.items() if k.split(":")[0] in ("accepted", "rejected"))
    assert total == CASES
    assert outcomes["accepted"] > 1000, outcomes
    rejected = {k: v for k, v in outcomes.items() if k.startswith("rejected:")}
    assert sum(rejected.values()) > 1000
    # Damage is found by the checks meant for it, not only by the CRC.
    for kind in ("Cd11CrcError", "Cd11TruncatedError", "Cd11LengthError", "Cd11FieldError",
                 "Cd11FrameTypeError"):
        assert rejected.get(f"rejected:{kind}", 0) > 0, outcomes
    assert outcomes["samples undecodable"] > 0, outcomes
