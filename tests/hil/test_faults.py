"""The line fault model: rates, determinism, frame accounting; fault specifications."""

from __future__ import annotations

import numpy as np
import pytest

from ims_station.hil.faults import FaultPlan, FaultSpecError, FaultyDirection, LineFaults, Window


def _stream(n_frames: int, size: int = 200, lead: bool = False) -> bytes:
    """Frames of random non-zero bytes, each ended by 0x00 (and begun by one with *lead*, as the
    link sends them)."""
    rng = np.random.default_rng(0)
    frames = [b"\x00" * lead + bytes(rng.integers(1, 256, size, dtype=np.uint8)) + b"\x00"
              for _ in range(n_frames)]
    return b"".join(frames)


def test_clean_line_is_transparent():
    d = FaultyDirection(LineFaults(), seed=1, direction=0)
    data = _stream(5)
    out, index = d.apply(data)
    assert out == data and list(index) == list(range(len(data)))
    assert d.counters["frames"] == 5 and d.counters["frames_hit"] == 0


def test_bit_error_rate_flips_that_many_bits():
    d = FaultyDirection(LineFaults(ber=1e-3), seed=2, direction=0)
    data = _stream(500)
    out, _ = d.apply(data)
    flipped = sum(bin(a ^ b).count("1") for a, b in zip(data, out))
    expected = 8 * len(data) * 1e-3
    assert flipped == d.counters["bits_flipped"]
    assert abs(flipped - expected) < 5 * expected ** 0.5


def test_drops_and_duplicates_change_the_length_and_are_counted():
    d = FaultyDirection(LineFaults(drop=0.01, dup=0.01), seed=3, direction=0)
    data = _stream(300)
    out, index = d.apply(data)
    c = d.counters
    assert len(out) == len(data) - c["bytes_dropped"] + c["bytes_duplicated"]
    assert c["bytes_dropped"] > 0 and c["bytes_duplicated"] > 0
    # Every output byte comes from the clean byte its index names (no bit flips here).
    assert bytes(data[i] for i in index) == out


def test_faults_are_deterministic_per_seed_and_direction():
    data = _stream(100)
    f = LineFaults(ber=1e-3, drop=1e-3, dup=1e-3)
    a = FaultyDirection(f, 7, 0).apply(data)[0]
    b = FaultyDirection(f, 7, 0).apply(data)[0]
    c = FaultyDirection(f, 7, 1).apply(data)[0]
    d = FaultyDirection(f, 8, 0).apply(data)[0]
    assert a == b and a != c and a != d


def test_frames_hit_counts_frames_with_any_fault():
    d = FaultyDirection(LineFaults(drop=0.002), seed=4, direction=0)
    data = _stream(400)
    out, index = d.apply(data)
    # Truth from the index: a frame is hit if one of its bytes is missing (no dups/flips here).
    kept = np.bincount(index, minlength=len(data))
    ends = [i for i, b in enumerate(data) if b == 0]
    hit, start = 0, 0
    for e in ends:
        hit += int((kept[start:e + 1] != 1).any())
        start = e + 1
    assert d.counters["frames_hit"] == hit > 0


def test_frames_with_leading_and_trailing_delimiters_are_counted_once():
    d = FaultyDirection(LineFaults(), seed=1, direction=0)
    data = _stream(7, size=50, lead=True)
    for i in range(0, len(data), 51):              # splits fall on and between delimiters
        d.apply(data[i:i + 51])
    assert d.counters["frames"] == 7 and d.counters["frames_hit"] == 0


def test_a_fault_on_the_leading_delimiter_hits_the_frame_it_opens():
    d = FaultyDirection(LineFaults(), seed=1, direction=0)
    data = _stream(3, size=20, lead=True)
    hit = np.zeros(len(data), dtype=bool)
    hit[22] = True                                 # the leading 0x00 of the second frame
    d._count_frames(data, hit)
    assert d.counters["frames"] == 3 and d.counters["frames_hit"] == 1


def test_frames_split_across_calls_are_counted_once():
    d = FaultyDirection(LineFaults(), seed=1, direction=0)
    data = _stream(3)
    for i in range(0, len(data), 37):
        d.apply(data[i:i + 37])
    assert d.counters["frames"] == 3


@pytest.mark.parametrize("text", ["10", "a:b", "-1:5", "5:0", ""])
def test_bad_windows_are_refused_with_the_option_named(text):
    with pytest.raises(FaultSpecError, match="--outage"):
        Window.parse(text, "--outage")


def test_window_and_jump_parsing():
    w = Window.parse("12.5:30", "x")
    assert (w.start, w.end) == (12.5, 42.5) and w.contains(12.5) and not w.contains(42.5)
    assert FaultPlan.parse_jump("60:-1.5") == (60.0, -1.5)
    with pytest.raises(FaultSpecError):
        FaultPlan.parse_jump("60:0")


@pytest.mark.parametrize("kw", [{"ber": 1.0}, {"drop": -0.1}, {"dup": 2}])
def test_rates_outside_0_1_are_refused(kw):
    with pytest.raises(FaultSpecError):
        LineFaults(**kw)
