"""Canadian compression: golden vectors from real IMS frames, round-trip and robustness properties,
and the C fast path cross-checked against the plain Python reference (spec cd11.md §5)."""

from __future__ import annotations

import json
import struct
from contextlib import contextmanager

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ims_station.cd11 import ca
from ims_station.errors import LocalProtocolError, RemoteProtocolError

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1
FAST = ca._cafast
IMPLS = ["reference"] + (["c"] if FAST is not None else [])
SPEC_SAMPLES = [0, 5, 12, 20, 31, 40, 44, 45, 41, 30, 15, -3, -20, -36, -47, -52, -50, -41, -27, -10]


@contextmanager
def implementation(name: str):
    """Run the public API on one implementation (the reference is what an install without a C
    compiler uses)."""
    saved = ca._cafast
    ca._cafast = FAST if name == "c" else None
    try:
        yield
    finally:
        ca._cafast = saved


@pytest.fixture(params=IMPLS)
def impl(request):
    with implementation(request.param):
        yield request.param


def pad4(n: int) -> int:
    return (n + 3) & ~3


def ca_subframes(cd11_samples):
    """(file, channel, nsamples, CA bytes, reference samples) for every CA-compressed subframe of
    the sample frames, located with the offsets of spec §4.1/§4.2 (the real parser is frames.py)."""
    reference = json.loads((cd11_samples / "decoded_reference.json").read_text())
    found = []
    for name, info in sorted(reference.items()):
        if info["frame_type"] != 5:
            continue
        raw = (cd11_samples / name).read_bytes()
        (channel_string_len,) = struct.unpack_from(">i", raw, 36 + 28)
        pos = 36 + 32 + pad4(channel_string_len)
        for sub in info["subframes"]:
            (channel_length,) = struct.unpack_from(">i", raw, pos)
            transformation = raw[pos + 9]
            nsamples, status_size = struct.unpack_from(">ii", raw, pos + 56)
            data_at = pos + 64 + pad4(status_size)
            (data_size,) = struct.unpack_from(">i", raw, data_at)
            if transformation in (1, 2):
                data = raw[data_at + 4:data_at + 4 + data_size]
                found.append((name, sub["chan"], nsamples, data, sub["decoded_samples"]))
            pos += 4 + channel_length
    return found


@pytest.fixture(scope="module")
def golden(cd11_samples):
    found = ca_subframes(cd11_samples)
    # 4 LBTB + 4 PLCA real channels, the generated 20-sample frame, two generated 400-sample ones.
    assert len(found) == 11
    return found


# -------------------------------------------------------------------------------------------------
# 1. golden vectors


def test_decode_every_sample_subframe(golden, impl):
    for name, chan, nsamples, data, expected in golden:
        got = ca.decode(data, nsamples)
        assert got.dtype == np.int32
        assert got.tolist() == expected, (name, chan)


def test_encode_reproduces_real_bytes(golden, impl):
    for name, chan, _, data, expected in golden:
        assert ca.encode(expected) == data, (name, chan)
        assert ca.encode(np.array(expected, dtype=np.int32)) == data, (name, chan)


def test_golden_set_covers_narrow_and_wide_tables(golden):
    tables = set()
    for _, _, nsamples, data, _ in golden:
        tables |= {data[2 * b] >> 7 for b in range(nsamples // 20)}
    assert tables == {0, 1}


def test_spec_vector_20_samples(cd11_samples, impl):
    payload = (cd11_samples / "generated_ca20_payload.bin").read_bytes()
    assert payload == bytes.fromhex("0000 00000000 5213ebdb9cd115677530")
    assert ca.encode(SPEC_SAMPLES) == payload
    assert ca.decode(payload, 20).tolist() == SPEC_SAMPLES


def test_decode_accepts_nul_padding_to_4_only(golden, impl):
    _, _, nsamples, data, expected = golden[0]
    assert ca.decode(data + b"\0" * 3, nsamples).tolist() == expected
    for tail in (b"\0" * 4, b"\x01", b"\0\0\x07"):
        with pytest.raises(ca.CaError) as info:
            ca.decode(data + tail, nsamples)
        assert info.value.offset == len(data)
        assert "left after the end" in str(info.value)


def test_decode_truncated_names_offset(golden, impl):
    _, _, nsamples, data, _ = golden[0]
    with pytest.raises(ca.CaError) as info:
        ca.decode(data[:-1], nsamples)
    assert isinstance(info.value, RemoteProtocolError)
    assert 0 < info.value.offset < len(data) - 1
    assert str(info.value).startswith(f"CA data, byte {info.value.offset}: ")


@pytest.mark.parametrize("nsamples", [0, -20, 19, 21, 20 * 10**12, 2**63, True, 20.0])
def test_decode_refuses_bad_counts_before_allocating(nsamples, impl):
    with pytest.raises(ca.CaError):
        ca.decode(bytes(16), nsamples)


def test_decode_refuses_samples_outside_int32(impl):
    # first sample INT32_MAX, then a second difference of +1: the next sample would be 2**31.
    data = bytes.fromhex("1000") + INT32_MAX.to_bytes(4, "big") + bytes.fromhex("1000") + bytes(8)
    with pytest.raises(ca.CaError) as info:
        ca.decode(data, 20)
    assert info.value.offset == 6
    assert "outside int32" in str(info.value)


@pytest.mark.parametrize("samples", [[], list(range(19)), list(range(21)), [0.5] * 20,
                                     [INT32_MAX + 1] + [0] * 19, [2**70] * 20, [[1, 2]] * 20,
                                     ["a"] * 20])
def test_encode_refuses_what_ca_cannot_carry(samples, impl):
    assert not ca.can_encode(samples)
    with pytest.raises(LocalProtocolError):
        ca.encode(samples)


def test_second_differences_at_the_32_bit_limit(impl):
    # d2 = 0, MAX, MIN, 0, ...: samples 0, 0, MAX, MAX-1, MAX-2, ... -- the widest legal stream.
    edge = [0, 0] + [INT32_MAX - k for k in range(18)]
    assert ca.can_encode(edge)
    data = ca.encode(edge)
    assert data[0] >> 4 == 0b1111  # wide-table flag, group 0 code 7 = 32 bits
    assert ca.decode(data, 20).tolist() == edge
    # one step further: d2 = 0, MAX, -2*MAX does not fit 32 bits.
    too_wide = [0, 0, INT32_MAX] + [0] * 17
    assert not ca.can_encode(too_wide)
    with pytest.raises(LocalProtocolError, match="sample 2 "):
        ca.encode(too_wide)


# -------------------------------------------------------------------------------------------------
# 2. properties

def int32_series(bits: int = 29):
    """Series of 20*k ints with mixed magnitudes (so every group width, both tables, occur).  Values
    within +-2**29 always have second differences within 32 bits."""
    value = st.integers(0, bits).flatmap(lambda b: st.integers(-(1 << b), (1 << b) - 1))
    return st.integers(1, 8).flatmap(lambda k: st.lists(value, min_size=20 * k, max_size=20 * k))


def random_walk():
    step = st.integers(-(1 << 12), 1 << 12)
    return st.tuples(st.integers(-(1 << 23), 1 << 23), st.integers(1, 30)).flatmap(
        lambda t: st.lists(step, min_size=20 * t[1], max_size=20 * t[1]).map(
            lambda steps: np.cumsum([t[0]] + steps[1:]).tolist()))


@settings(max_examples=300, deadline=None)
@given(st.one_of(int32_series(), random_walk()))
def test_round_trip(samples):
    assert ca.can_encode(samples)
    for name in IMPLS:
        with implementation(name):
            data = ca.encode(samples)
            assert ca.decode(data, len(samples)).tolist() == samples
    assert ca.encode_reference(samples) == data


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 4).flatmap(lambda k: st.lists(st.integers(INT32_MIN, INT32_MAX),
                                                       min_size=20 * k, max_size=20 * k)))
def test_full_int32_range_round_trips_or_is_refused(samples):
    """Any int32 series: encodable exactly when its second differences fit 32 bits, and then exact."""
    x = np.array(samples, dtype=np.int64)
    fits = abs(int(x[1] - x[0])) <= INT32_MAX and bool(
        ((np.diff(x, 2) >= INT32_MIN) & (np.diff(x, 2) <= INT32_MAX)).all())
    assert ca.can_encode(samples) == fits
    for name in IMPLS:
        with implementation(name):
            if fits:
                assert ca.decode(ca.encode(samples), len(samples)).tolist() == samples
            else:
                with pytest.raises(LocalProtocolError):
                    ca.encode(samples)


def decode_outcome(fn, data, nsamples):
    try:
        return ("ok", list(fn(data, nsamples)))
    except ca.CaError as err:  # anything else fails the test
        return ("error", err.offset, err.reason)


def check_same_outcome(data, nsamples):
    ref = decode_outcome(ca.decode_reference, data, nsamples)
    for name in IMPLS:
        with implementation(name):
            got = decode_outcome(ca.decode, data, nsamples)
            if got[0] == "ok":
                assert all(INT32_MIN <= v <= INT32_MAX for v in got[1])
                assert len(got[1]) == nsamples
            assert got == ref, name
    return ref


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200), st.one_of(st.integers(-100, 400), st.integers()))
def test_decode_random_bytes_raises_only_ca_error(data, nsamples):
    check_same_outcome(data, nsamples)


@settings(max_examples=500, deadline=None)
@given(int32_series(), st.data())
def test_decode_mutated_stream_raises_only_ca_error(samples, draw):
    data = bytearray(ca.encode_reference(samples))
    kind = draw.draw(st.sampled_from(["flip", "overwrite", "truncate", "extend", "count"]))
    nsamples = len(samples)
    if kind == "flip":
        pos = draw.draw(st.integers(0, len(data) - 1))
        data[pos] ^= 1 << draw.draw(st.integers(0, 7))
    elif kind == "overwrite":
        pos = draw.draw(st.integers(0, len(data) - 1))
        chunk = draw.draw(st.binary(min_size=1, max_size=8))
        data[pos:pos + len(chunk)] = chunk
    elif kind == "truncate":
        del data[draw.draw(st.integers(0, len(data) - 1)):]
    elif kind == "extend":
        data += draw.draw(st.binary(min_size=1, max_size=8))
    else:
        nsamples = draw.draw(st.sampled_from([nsamples - 20, nsamples + 20, nsamples * 2, nsamples + 1]))
    check_same_outcome(bytes(data), nsamples)


@settings(max_examples=200, deadline=None)
@given(int32_series())
def test_fast_equals_reference(samples):
    data = ca.encode_reference(samples)
    assert ca.encode(np.array(samples, dtype=np.int64)) == data
    assert ca.decode(memoryview(data), len(samples)).tolist() == ca.decode_reference(data, len(samples))


def test_c_extension_is_built_here():
    """The fast path is an optional build product; on a machine with a C compiler it must exist
    (otherwise `pip install` silently fell back).  This machine is expected to have one."""
    import shutil

    if shutil.which("cc") or shutil.which("gcc"):
        assert ca.IMPLEMENTATION == "c", "C compiler present but ims_station.cd11._cafast is not built"
    else:
        assert ca.IMPLEMENTATION == "reference"
