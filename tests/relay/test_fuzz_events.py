"""Issue 9, events: fuzz the relay's whole per-message path for trigger events.

Mutated event envelopes go through ``RelayCore.process`` on the events topic (real archive and
state store in a tmp dir, in batches): bit flips, overwritten header fields (lengths, key id,
time), truncations, extensions and splices of the raw envelope, and -- since the signature is
checked before the body is read -- body mutations *re-signed* with the station's key, so that
the JSON parser, the field checks, the time window, dedupe/conflict in the archive and the
frame-set state all see hostile bodies (wrong types, huge or negative numbers, deep nesting, odd
times, missing fields).  Passing means: ``process`` never raises, every outcome is ``archived`` /
``duplicate`` or a documented reason code, never ``internal_error``; afterwards every archived
event reads back and ``ims-station relay events`` lists the archive.

Two cores share the cases: one as deployed (signatures required, time window on) and one that
accepts unsigned events without a time window (so unsigned mutated bodies reach everything).
Deterministic (seeded).  ``IMS_FUZZ_CASES`` sets the number of cases (default 3000 here)::

    IMS_FUZZ_CASES=100000 .venv/bin/python -m pytest tests/relay/test_fuzz_events.py -q -s
"""

from __future__ import annotations

import pytest

import json
import os
import random
import struct
import time

from ims_station import envelope
from ims_station.clock import FakeClock
from ims_station.relay.cli import merge_events
from ims_station.relay.core import Incoming, RelayCore
from ims_station.relay.verify import REASONS, Verifier

from .conftest import FUZZ_BACKENDS, KEY_IDS
from .test_events import NOW, event_doc

CASES = int(os.environ.get("IMS_FUZZ_CASES", "3000"))
BATCH = 200
T = "ims/STA01/events"
OUTCOMES = set(REASONS) | {"archived", "duplicate"}
ODD_VALUES = [None, True, False, 0, -1, 1 << 70, -(1 << 63), 1e308, float("nan"), "", "x" * 70, "é\u2028\x00",
              [], {}, [[[[]]]], {"a": {"b": {"c": []}}}, "2023-11-14T22:13:15Z", "9999-12-31T23:59:59+14:00",
              "0001-01-01T00:00:00", "2023-02-30T00:00:00Z", "1e3", 3.5, ["BHZ"] * 1001, ["x" * 65]]


def sign(keys, body: bytes, *, time_us: int, key: str | None = "STA01", sender: str = "STA01") -> bytes:
    signer = keys.keystore.signer(KEY_IDS[key][0]) if key else None
    try:                # the header carries the body's seq, as the station's emitter writes it
        seq = json.loads(body).get("seq")
    except Exception:
        seq = None
    seq = seq if type(seq) is int and 0 <= seq <= envelope.MAX_SEQ else 0
    return envelope.pack("event", sender, body, time_us=time_us, signer=signer, seq=seq)


def mutate_body(rng: random.Random, doc: dict) -> bytes:
    d = dict(doc)
    for _ in range(rng.choice((1, 1, 2, 3))):
        k = rng.choice(list(d) + ["extra", "seq", "time", "station"])
        r = rng.random()
        if r < 0.25:
            d.pop(k, None)
        elif r < 0.7:
            d[k] = rng.choice(ODD_VALUES)
        elif r < 0.85:
            d["seq"] = rng.randrange(8)                 # collide with other cases: duplicates, conflicts
        else:
            d[k] = rng.randrange(-10, 10)
    if rng.random() < 0.5 and "seq" in d:
        d["seq"] = rng.randrange(1 << 20)               # mostly new: hostile bodies reach the archive
    text = json.dumps(d, allow_nan=True)
    if rng.random() < 0.15:                             # text-level damage
        b = bytearray(text.encode())
        i = rng.randrange(len(b) + 1)
        b[i:i + rng.randrange(0, 4)] = rng.choice([b"", b"{", b"]", b"\xff", b'"', b"\\u", b"[" * 3000])
        return bytes(b)
    if rng.random() < 0.05:
        return b"[" * 100_000 + b"]" * 100_000          # deep nesting (RecursionError in json)
    return text.encode()


def mutate_raw(rng: random.Random, raw: bytes, bases: list[bytes]) -> bytes:
    b = bytearray(raw)
    kind = rng.randrange(6)
    if kind == 0:
        for _ in range(rng.randrange(1, 4)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    elif kind == 1:                                     # a header field set to an edge value
        off, fmt = rng.choice([(4, ">B"), (5, ">B"), (6, ">H"), (16, ">I"), (20, ">q"), (28, ">I")])
        v = rng.choice([0, 1, 2, 4, 5, 255, 0xFFFF, 0xFFFFFFFF, 1 << 23, len(raw), -1, 1 << 62])
        size = struct.calcsize(fmt)
        lim = 1 << (8 * size)
        v = v % lim
        if fmt == ">q" and v >= 1 << 63:
            v -= lim
        b[off:off + size] = struct.pack(fmt, v)
    elif kind == 2:
        b = b[:rng.randrange(len(b))] if rng.random() < 0.7 else b + rng.randbytes(rng.randrange(1, 64))
    elif kind == 3:
        other = rng.choice(bases)
        b = b[:rng.randrange(len(b))] + other[rng.randrange(len(other)):]
    elif kind == 4:                                     # the signature length
        n = len(b)
        sl = rng.choice([0, 1, 63, 64, 65, 512, 513, 0xFFFF])
        body_len = int.from_bytes(b[28:32], "big")
        if 32 + body_len + 2 <= n:
            b[32 + body_len:34 + body_len] = sl.to_bytes(2, "big")
    else:
        i = rng.randrange(len(b))
        b[i:i + rng.randrange(1, 9)] = rng.randbytes(rng.randrange(1, 9))
    return bytes(b)


@pytest.mark.parametrize("stores", FUZZ_BACKENDS, indirect=True)    # conftest.py: why
def test_fuzz_relay_process_with_event_envelopes(tmp_path, keys, stores):
    rng = random.Random(9_2026)
    clock = FakeClock(t=NOW)
    now_us = int(NOW * 1e6)
    docs = [event_doc(s, event_id=f"E{s // 2}", state="on" if s % 2 == 0 else "off") for s in range(6)]
    bases = [sign(keys, json.dumps(d).encode(), time_us=now_us) for d in docs]
    bases.append(sign(keys, json.dumps(docs[0]).encode(), time_us=now_us, key=None))
    cores = [
        RelayCore(keys.trust, stores.state(tmp_path / "a" / "s.sqlite"),
                  stores.archive(tmp_path / "a" / "archive", quarantine_max_bytes=1 << 20), clock=clock),
        RelayCore(keys.trust, stores.state(tmp_path / "b" / "s.sqlite"),
                  stores.archive(tmp_path / "b" / "archive", quarantine_max_bytes=1 << 20), clock=clock,
                  verifier=Verifier(keys.trust, require_signatures=False), max_past_s=None, max_future_s=None),
    ]
    seen: dict[str, int] = {}
    t0 = time.perf_counter()
    done = 0
    while done < CASES:
        n = min(BATCH, CASES - done)
        cases = []
        for _ in range(n):
            r = rng.random()
            if r < 0.45:                               # a hostile body, validly signed (or unsigned)
                t_us = now_us if rng.random() < 0.8 else rng.choice([0, -(1 << 62), (1 << 62), now_us + 10**12])
                key = "STA01" if rng.random() < 0.8 else rng.choice([None, "STA02"])
                cases.append(sign(keys, mutate_body(rng, rng.choice(docs)), time_us=t_us, key=key))
            elif r < 0.9:
                cases.append(mutate_raw(rng, rng.choice(bases), bases))
            else:
                cases.append(rng.choice(bases))        # the good ones again: duplicates
        for k, core in enumerate(cores):
            part = cases[k::len(cores)]
            outs = core.process([Incoming(T, p, i) for i, p in enumerate(part)])
            assert [o.token for o in outs] == list(range(len(part)))
            for o in outs:
                seen[o.result] = seen.get(o.result, 0) + 1
                assert o.result in OUTCOMES and o.result != "internal_error", (o.result, o.detail)
        done += n
    elapsed = time.perf_counter() - t0
    listed = 0
    for core in cores:
        assert core.counters.internal_errors == 0
        archived = list(core.archive.iter_events())
        for a, raw in archived:                         # every archived event reads back whole
            assert envelope.unpack(raw, kind="event").json()["seq"] == a.sequence
        rows, unreadable = merge_events(archived)
        assert unreadable == 0
        listed += len(rows)
        core.close()
    print(f"\nevent fuzz: {CASES} cases through RelayCore.process in {elapsed:.1f} s; "
          f"outcomes {dict(sorted(seen.items()))}; {listed} rows listed")
    assert sum(seen.values()) == CASES
    # The mutations reach every stage: envelope, signature, body, time window, archive dedupe.
    for r in ("malformed", "event_signature", "unsigned", "wrong_station_key", "implausible_time",
              "archived", "duplicate", "duplicate_conflict"):
        assert seen.get(r, 0), (r, seen)
