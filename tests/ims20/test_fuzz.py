"""Fuzz: mutated real files and mutated small messages through the parser.  Whatever the input, the
parser returns a message or raises Ims20Error -- never another exception -- and a message it accepts
is written back and parses to the same content.  Memory stays proportional to the input."""

from __future__ import annotations

import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ims_station.ims20 import Ims20Error, parse, write
from tests.ims20.test_errors import MINIMAL

NASTY = [b"", b"nan", b"inf", b"-1", b"1e999", b"99999999999999999999", b"#Header", b"#g_Spectrum", b"STOP",
         b"DATA_TYPE", b"DATA_TYPE RMSSOH", b"\x00", b"\xc3\xa9", b"0", b"65536", b"1048576 1048576", b"1.5",
         b"2021/13/01", b"25:00:00", b"#", b"   ", b"\t", b"\r", b"BEGIN IMS2.0", b"MSG_ID", b"PART", b"+5",
         b"1_0", b".", b"-0", b"0x10", b"1" * 5000]


@st.composite
def mutated(draw, original: bytes):
    lines = original.split(b"\n")
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["token", "token", "delete", "duplicate", "swap", "truncate", "byte",
                                   "insert"]))
        i = draw(st.integers(0, len(lines) - 1))
        if op == "token":
            toks = lines[i].split(b" ")
            j = draw(st.integers(0, len(toks) - 1))
            toks[j] = draw(st.sampled_from(NASTY) | st.binary(max_size=6))
            lines[i] = b" ".join(toks)
        elif op == "delete" and len(lines) > 1:
            del lines[i]
        elif op == "duplicate":
            lines.insert(i, lines[i])
        elif op == "swap":
            k = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[k] = lines[k], lines[i]
        elif op == "truncate":
            lines = lines[:i + 1]
            lines[-1] = lines[-1][:draw(st.integers(0, len(lines[-1])))]
        elif op == "byte" and lines[i]:
            k = draw(st.integers(0, len(lines[i]) - 1))
            lines[i] = lines[i][:k] + bytes([draw(st.integers(0, 255))]) + lines[i][k + 1:]
        elif op == "insert":
            lines.insert(i, draw(st.sampled_from(NASTY) | st.binary(max_size=20)))
    return b"\n".join(lines)


def only_ims20_errors(data: bytes) -> None:
    try:
        msg = parse(data)
    except Ims20Error:
        return
    assert parse(write(msg)) == msg


@settings(max_examples=250, deadline=None)
@given(mutated(MINIMAL.encode()))
def test_mutated_small_messages(data):
    only_ims20_errors(data)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_mutated_real_files(data, ims20_samples):
    original = data.draw(st.sampled_from(ims20_samples)).read_bytes()
    only_ims20_errors(data.draw(mutated(original)))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes(data):
    only_ims20_errors(b"BEGIN IMS2.0\nMSG_TYPE DATA\nMSG_ID 1\nDATA_TYPE SAMPLEPHD\n" + data)
    only_ims20_errors(data)


@pytest.mark.parametrize("change", [
    (b"256   256   720  550", b"1024  1024  720  550"),       # declares 16x the cells present
    (b"#g_Spectrum\n256   720", b"#g_Spectrum\n65536 720"),   # declares 256x the channels present
    (b"#Histogram\n256   256   720  550", b"#Histogram\n1 1 720 550"),   # far more counts than declared
])
def test_memory_stays_proportional_to_the_input(sample_phd, change):
    data = sample_phd.read_bytes().replace(*change)
    assert data != sample_phd.read_bytes()
    tracemalloc.start()
    try:
        with pytest.raises(Ims20Error):
            parse(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 * len(data), f"peak {peak} bytes for a {len(data)}-byte message"
