"""Issue 7 §1: fuzz the relay's whole per-message path, not only the parser.

Mutated CD-1.1 frames -- with time strings mutated digit by digit and replaced by out-of-calendar
values, bit flips, overwritten bytes and integer fields, truncations, extensions and splices, half of
them with a repaired CRC-64 -- go through ``RelayCore.process`` (real archive and state store in a
tmp dir, in batches) and through ``verify_buffer``, the function behind ``ims-station cd11 verify``.
Passing means: ``process`` never raises, every outcome is ``archived``/``duplicate``/``control`` or
one of the documented reason codes and never ``internal_error`` (which would mean our code raised
on the payload), and ``verify_buffer`` never raises.

Three relay cores share the cases: one as deployed (signatures required, time window on), one
with neither (unsigned frames with mutated times then reach the sequence check, the archive and
the gap state, with any year from 0001 to 9999), one with unsigned frames and the time window.

Deterministic (seeded).  ``IMS_FUZZ_CASES`` sets the number of cases (default 20 000); the issue's
10^5 run::

    IMS_FUZZ_CASES=100000 .venv/bin/python -m pytest tests/relay/test_fuzz.py -q -s
"""

from __future__ import annotations

import pytest

import os
import random
import re
import time

from ims_station.cd11.cli import verify_buffer
from ims_station.cd11.crc64 import crc64
from ims_station.clock import FakeClock
from ims_station.relay.core import Incoming, RelayCore
from ims_station.relay.verify import REASONS, Verifier

from .cd11_writer import data_frame
from .conftest import FUZZ_BACKENDS, FrameFactory, nominal_of

CASES = int(os.environ.get("IMS_FUZZ_CASES", "20000"))
BATCH = 250
BASE = 8640 * 8700
TIME_RE = re.compile(rb"\d{7} \d\d:\d\d:\d\d\.\d{3}")
SPECIAL_TIMES = [b"0000001 00:00:00.000", b"9999365 23:59:60.999", b"9999366 23:59:59.999",
                 b"2023000 00:00:00.000", b"2023366 00:00:00.000", b"2024366 23:59:60.999",
                 b"2024367 00:00:00.000", b"2023300 24:00:00.000", b"2023300 23:60:00.000",
                 b"2023300 23:59:61.000", b"2100001 00:00:00.000", b"0001001 00:00:00.000",
                 b"1969365 23:59:59.999", b"9999999 99:99:99.999", b"0000000 00:00:00.000"]
EDGE_INTS = [0, 1, -1, 3, 4, 0x7FFFFFFF, -0x80000000, 0xFFFF, 36, 1 << 24]
OUTCOMES = set(REASONS) | {"archived", "duplicate", "control"}


def base_frames(keys) -> list[bytes]:
    signed = FrameFactory(keys, channels=("BHZ", "BHN"), rate=20.0)
    frames = [signed.build(BASE + i) for i in range(4)]
    frames.append(signed.build(BASE + 9, sign=False))
    for i, t in enumerate(["2023299 00:00:00.000", "2023299 00:00:10.000"]):
        frames.append(data_frame("STA01", BASE - 5 + i, t, [("STA01", "BHZ", "00"), ("STA01", "BHE", "00")],
                                 samples=list(range(-50, 50))))
    return frames


def mutate(rng: random.Random, frames: list[bytes]) -> bytes:
    raw = bytearray(rng.choice(frames))
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        if not raw:
            break                                    # truncated to nothing: an empty payload
        times = [m.start() for m in TIME_RE.finditer(raw)]
        kind = rng.randrange(10)
        if kind <= 1 and times:                      # one digit of a time string, or of all alike
            pos = rng.choice((0, 1, 2, 3, 4, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18, 19))
            digit = ord(str(rng.randrange(10)))
            for at in (times if kind else [rng.choice(times)]):
                raw[at + pos] = digit
        elif kind in (2, 9) and times:               # a whole time string (or all): out of calendar / extremes
            special = rng.choice(SPECIAL_TIMES)
            for at in (times if kind == 9 else [rng.choice(times)]):
                raw[at:at + 20] = special
        elif kind == 3 and times:                    # a time string of random digits, right shape
            at = rng.choice(times)
            d = "".join(str(rng.randrange(10)) for _ in range(16))
            raw[at:at + 20] = f"{d[:7]} {d[7:9]}:{d[9:11]}:{d[11:13]}.{d[13:16]}".encode()
        elif kind == 4:                              # bit flips
            for _ in range(rng.randrange(1, 4)):
                i = rng.randrange(len(raw))
                raw[i] ^= 1 << rng.randrange(8)
        elif kind == 5:                              # an int32 field (aligned) set to an edge value
            i = rng.randrange(0, max(1, len(raw) - 4)) & ~3
            raw[i:i + 4] = (rng.choice(EDGE_INTS) & 0xFFFFFFFF).to_bytes(4, "big")
        elif kind == 6:                              # truncate or extend
            raw = raw[:rng.randrange(len(raw))] if rng.random() < 0.7 else raw + bytes(rng.randrange(1, 64))
        elif kind == 7:                              # splice two frames
            other = rng.choice(frames)
            raw = raw[:rng.randrange(len(raw))] + other[rng.randrange(len(other)):]
        else:                                        # random bytes overwritten
            i = rng.randrange(len(raw))
            raw[i:i + rng.randrange(1, 9)] = rng.randbytes(rng.randrange(1, 9))
    if len(raw) >= 8 and rng.random() < 0.5:         # repair the CRC: the frame gets past it
        raw[-8:] = crc64(bytes(raw[:-8])).to_bytes(8, "big")
    return bytes(raw)


@pytest.mark.parametrize("stores", FUZZ_BACKENDS, indirect=True)    # conftest.py: why
def test_fuzz_relay_process_and_cd11_verify(tmp_path, keys, stores):
    rng = random.Random(7_2026)
    frames = base_frames(keys)
    clock = FakeClock(t=nominal_of(BASE + 100).timestamp())
    cores = [
        RelayCore(keys.trust, stores.state(tmp_path / "a" / "s.sqlite"),
                  stores.archive(tmp_path / "a" / "archive", quarantine_max_bytes=1 << 20), clock=clock),
        RelayCore(keys.trust, stores.state(tmp_path / "b" / "s.sqlite"),
                  stores.archive(tmp_path / "b" / "archive", quarantine_max_bytes=1 << 20), clock=clock,
                  verifier=Verifier(keys.trust, require_signatures=False), max_past_s=None, max_future_s=None),
        RelayCore(keys.trust, stores.state(tmp_path / "c" / "s.sqlite"),
                  stores.archive(tmp_path / "c" / "archive", quarantine_max_bytes=1 << 20), clock=clock,
                  verifier=Verifier(keys.trust, require_signatures=False)),
    ]
    seen: dict[str, int] = {}
    verify_failures = 0
    t0 = time.perf_counter()
    done = 0
    while done < CASES:
        n = min(BATCH, CASES - done)
        cases = [mutate(rng, frames) for _ in range(n)]
        for k, core in enumerate(cores):
            part = cases[k::len(cores)]
            outs = core.process([Incoming("ims/STA01/cd11", p, i) for i, p in enumerate(part)])
            assert [o.token for o in outs] == list(range(len(part)))
            for o in outs:
                seen[o.result] = seen.get(o.result, 0) + 1
                assert o.result in OUTCOMES and o.result != "internal_error", (o.result, o.detail)
        for raw in cases:
            _, fails = verify_buffer(raw, keys.trust, path="case")
            verify_failures += bool(fails)
        done += n
        clock.advance(1.0)
    elapsed = time.perf_counter() - t0
    for core in cores:
        assert core.counters.internal_errors == 0
        core.close()
    print(f"\nfuzz: {CASES} cases through RelayCore.process and cd11 verify in {elapsed:.1f} s; "
          f"outcomes {dict(sorted(seen.items()))}; cd11 verify refused {verify_failures}")
    assert sum(seen.values()) == CASES
    # The mutations reach deep: time-field refusals, the time window and the archive all occur.
    assert seen.get("malformed", 0) and seen.get("crc", 0) and seen.get("archived", 0)
    assert seen.get("implausible_time", 0) and seen.get("sequence_time", 0)
