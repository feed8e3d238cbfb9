"""Issue 10, relay end: fuzz the relay's whole per-message path for IMS 2.0 messages.

Mutated ``ims20`` envelopes go through ``RelayCore.process`` on the ims20 topic (real archive and
state store in a tmp dir, in batches): bit flips, overwritten header fields, truncations,
extensions and splices of the raw envelope (the events fuzz's mutations), and -- since the
signature is checked before the text is read -- text mutations *re-signed* with the station's key,
so that the IMS 2.0 codec, the index fields, the time window, dedupe/conflict in the archive and
the frame-set state all see hostile messages: lines deleted, repeated, swapped or spliced from
another message, tokens replaced by odd ones (huge, negative, not numbers, impossible dates, block
keywords, control and non-ASCII characters, a 10 000-character token), histogram and spectrum
dimensions made huge, truncations, bit flips.  Passing means: ``process`` never raises, every
outcome is ``archived`` / ``duplicate`` or a documented reason code, never ``internal_error``;
afterwards every archived message reads back byte-identical to what was sent and parses, and
``relay ims2 list`` lists the archive.

The bases are the real MIX58 SAMPLEPHD with its spectra and histogram cut to 8 channels (so a
case parses in milliseconds), the real SPIKEPHD now and then, and an ALERT_FLOW.  Two cores share
the cases: one as deployed (signatures required, time window on) and one that accepts unsigned
messages without a time window.  Deterministic (seeded).  ``IMS_FUZZ_CASES`` sets the number of
cases (default 4000 here)::

    IMS_FUZZ_CASES=50000 .venv/bin/python -m pytest tests/relay/test_fuzz_ims20.py -q -s
"""

from __future__ import annotations

import random
import re
import time
from pathlib import Path

import pytest

from ims_station import envelope, ims20
from ims_station.clock import FakeClock
from ims_station.relay.cli import ims20_row
from ims_station.relay.core import Incoming, RelayCore
from ims_station.relay.verify import REASONS, Verifier

from .conftest import FUZZ_BACKENDS, KEY_IDS
from .test_fuzz_events import mutate_raw
from .test_ims20 import NOW

CASES = int(__import__("os").environ.get("IMS_FUZZ_CASES", "4000"))
BATCH = 100
T = "ims/STA01/ims20"
OUTCOMES = set(REASONS) | {"archived", "duplicate"}
ODD_TOKENS = ["-1", "0", "99999999999999999999", "1e999", "nan", "-inf", "", "x", "2021/13/45", "0000/00/00",
              "25:61:61.9", "9999/12/31", "23:59:60.0", "#Header", "#Histogram", "STOP", "DATA_TYPE", "BEGIN",
              "MSG_ID", "\x00", "\t", "é", "\u2028", "1.5", "65536", "1048577", "4294967296", "-0", "+7",
              "FULL", "PREL", "A" * 10_000]
ALERT = (b"BEGIN IMS2.0\nMSG_TYPE DATA\nMSG_ID 7 STA01\nDATA_TYPE ALERT_FLOW\n"
         b"STA01 FLOW 2023/11/14 22:10:00.0\nsample flow below 0.5 m3/h\nSTOP\n")


def small_sample(text: str) -> bytes:
    """The real SAMPLEPHD with its spectra and histogram cut to 8 channels (the rest untouched)."""
    out = []
    for b in re.split(r"(?m)^(?=#|STOP)", text):
        if b.startswith("#g_Spectrum"):
            b = "#g_Spectrum\n8 720\n0 1 2 3 4 5\n5 6 7 8\n"
        elif b.startswith("#b_Spectrum"):
            b = "#b_Spectrum\n8 550\n0 9 8 7 6 5\n5 4 3 2\n"
        elif b.startswith("#Histogram"):
            b = "#Histogram\n8 8 720 550\n" + "".join(" ".join(str(i * j % 5) for j in range(8)) + "\n"
                                                     for i in range(8))
        out.append(b)
    return "".join(out).encode()


def sign(keys, text: bytes, seq: int, *, time_us: int, key: str | None = "STA01") -> bytes:
    signer = keys.keystore.signer(KEY_IDS[key][0]) if key else None
    return envelope.pack("ims20", "STA01", text, time_us=time_us, signer=signer, seq=seq)


def mutate_text(rng: random.Random, text: bytes, bases: list[bytes]) -> bytes:
    lines = text.split(b"\n")
    for _ in range(rng.choice((1, 1, 2, 3))):
        i = rng.randrange(len(lines))
        r = rng.random()
        if r < 0.15:
            del lines[i]
        elif r < 0.25:
            lines.insert(i, lines[i])
        elif r < 0.35:
            j = rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
        elif r < 0.45:
            other = rng.choice(bases).split(b"\n")
            lines.insert(i, rng.choice(other))
        elif r < 0.85:
            toks = lines[i].split(b" ")
            k = rng.randrange(len(toks))
            toks[k] = rng.choice(ODD_TOKENS).encode("utf-8")
            lines[i] = b" ".join(toks)
        else:                                           # dimensions of a counts block made huge
            for j, ln in enumerate(lines):
                if ln.startswith((b"#Histogram", b"#g_Spectrum", b"#b_Spectrum")) and j + 1 < len(lines):
                    lines[j + 1] = rng.choice([b"65536 65536 720 550", b"1048576 720", b"8 8 720 550 9",
                                               b"99999999999999999999 8 720 550", b"0 720", b"-8 720"])
                    break
    b = b"\n".join(lines)
    r = rng.random()
    if r < 0.1:
        b = b[:rng.randrange(len(b) + 1)]
    elif r < 0.2:
        ba = bytearray(b)
        for _ in range(rng.randrange(1, 4)):
            ba[rng.randrange(len(ba))] ^= 1 << rng.randrange(8)
        b = bytes(ba)
    return b


@pytest.fixture(scope="module")
def bases(shared_dir: Path) -> list[bytes]:
    d = shared_dir / "samples" / "ims20"
    return [small_sample((d / "SAMPLE20211203070613605.PHD").read_text()), ALERT]


@pytest.mark.parametrize("stores", FUZZ_BACKENDS, indirect=True)    # conftest.py: why
def test_fuzz_relay_process_with_ims20_envelopes(tmp_path, keys, bases, shared_dir, stores):
    rng = random.Random(10_2026)
    clock = FakeClock(t=NOW)
    now_us = int(NOW * 1e6)
    spike = (shared_dir / "samples" / "ims20" / "SPIKE20211228080107855.PHD").read_bytes()
    for b in bases + [spike]:
        ims20.parse(b)                                   # the bases are valid messages
    good = [sign(keys, b, s, time_us=now_us) for s, b in enumerate(bases)]
    good.append(sign(keys, bases[0], 0, time_us=now_us, key=None))
    cores = [
        RelayCore(keys.trust, stores.state(tmp_path / "a" / "s.sqlite"),
                  stores.archive(tmp_path / "a" / "archive", quarantine_max_bytes=4 << 20), clock=clock),
        RelayCore(keys.trust, stores.state(tmp_path / "b" / "s.sqlite"),
                  stores.archive(tmp_path / "b" / "archive", quarantine_max_bytes=4 << 20), clock=clock,
                  verifier=Verifier(keys.trust, require_signatures=False), max_past_s=None, max_future_s=None),
    ]
    sent: dict[int, dict[tuple[str, int], set[bytes]]] = {0: {}, 1: {}}   # core -> (frame set, seq) -> texts
    seen: dict[str, int] = {}
    t0 = time.perf_counter()
    done = 0
    while done < CASES:
        n = min(BATCH, CASES - done)
        cases = []
        for _ in range(n):
            r = rng.random()
            if r < 0.55:                                # a hostile text, validly signed (or unsigned)
                t_us = now_us if rng.random() < 0.85 else rng.choice([0, -(1 << 62), 1 << 62, now_us + 10**12])
                key = "STA01" if rng.random() < 0.85 else rng.choice([None, "STA02"])
                base = spike if rng.random() < 0.01 else rng.choice(bases)
                seq = rng.randrange(8) if rng.random() < 0.3 else rng.randrange(1 << 20)
                cases.append(sign(keys, mutate_text(rng, base, bases), seq, time_us=t_us, key=key))
            elif r < 0.9:
                cases.append(mutate_raw(rng, rng.choice(good), good))
            else:
                cases.append(rng.choice(good))          # the good ones again: duplicates
        for k, core in enumerate(cores):
            part = cases[k::len(cores)]
            outs = core.process([Incoming(T, p, i) for i, p in enumerate(part)])
            assert [o.token for o in outs] == list(range(len(part)))
            for o, p in zip(outs, part):
                seen[o.result] = seen.get(o.result, 0) + 1
                assert o.result in OUTCOMES and o.result != "internal_error", (o.result, o.detail)
                if o.result == "archived":
                    env = envelope.unpack(p)
                    sent[k].setdefault((o.frame_set, o.sequence), set()).add(env.body)
        done += n
    elapsed = time.perf_counter() - t0
    listed = 0
    for k, core in enumerate(cores):
        assert core.counters.internal_errors == 0
        entries = list(core.archive.iter_ims20())
        assert len(entries) == len(sent[k])
        for a in entries:                               # every archived text reads back and parses
            text = core.archive.read_ims20(a.frame_set, a.sequence)
            assert text in sent[k][(a.frame_set, a.sequence)]
            ims20.parse(text)
            env = envelope.unpack(core.archive.read_ims20(a.frame_set, a.sequence, envelope=True), kind="ims20")
            assert env.body == text and env.seq == a.sequence
            ims20_row(a)
        listed += len(entries)
        core.close()
    print(f"\nims20 fuzz: {CASES} cases through RelayCore.process in {elapsed:.1f} s; "
          f"outcomes {dict(sorted(seen.items()))}; {listed} messages listed")
    assert sum(seen.values()) == CASES
    # The mutations reach every stage: envelope, signature, text, time window, archive dedupe.
    for r in ("malformed", "malformed_ims20", "ims20_signature", "unsigned", "wrong_station_key",
              "implausible_time", "archived", "duplicate", "duplicate_conflict"):
        assert seen.get(r, 0), (r, seen)
