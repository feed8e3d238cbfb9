"""CRC-64 of CD-1.1 frames: spec test vectors (cd11.md §2.4), every sample frame's CRC, and the
fast path (anycrc) cross-checked against the plain reference."""

from __future__ import annotations

import array
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ims_station.cd11 import crc64 as crc_module
from ims_station.cd11.crc64 import crc64, crc64_reference

FAST = crc_module._fast
IMPLS = ["reference"] + (["anycrc"] if FAST is not None else [])


@pytest.fixture(params=IMPLS)
def impl(request, monkeypatch):
    """The public function on one implementation (the reference is the fallback without anycrc)."""
    monkeypatch.setattr(crc_module, "_fast", FAST if request.param == "anycrc" else None)
    return request.param


def gms_crc64(data: bytes) -> int:
    """The Canadian data centre's routine as GMS ``CRC64.java`` writes it: bytes shifted into the low
    end of the register, no augmentation (spec §2.4)."""
    crc = 0
    for byte in data:
        crc = crc_module._TABLE[crc >> 56] ^ (((crc << 8) | byte) & crc_module.MASK64)
    return crc


@pytest.mark.parametrize("data, expected", [
    (b"123456789", 0xE4FFBEA588933790),
    (b"", 0),
    (b"\x01", 0x1B),
])
def test_spec_vectors(data, expected, impl):
    assert crc64(data) == expected


def test_standard_form_equals_gms_routine_over_zeroed_crc_field():
    assert gms_crc64(b"123456789" + bytes(8)) == crc64(b"123456789")
    # the classic mistake: the routine without the 8 zero bytes is not the CRC
    assert gms_crc64(b"123456789") == 0x3233343536373AF2 != crc64(b"123456789")


def test_every_sample_frame_verifies(cd11_samples, impl):
    reference = json.loads((cd11_samples / "decoded_reference.json").read_text())
    assert len(reference) == 8
    for name, info in reference.items():
        frame = (cd11_samples / name).read_bytes()
        assert len(frame) == info["total_bytes"]
        stored = int.from_bytes(frame[-8:], "big")
        assert stored == int(info["crc64_hex"], 16), name
        assert crc64(frame[:-8]) == stored, name
        assert crc64(memoryview(frame)[:-8]) == stored, name
        assert gms_crc64(frame[:-8] + bytes(8)) == stored, name


def test_lbtb_frame_crc(cd11_samples, impl):
    frame = (cd11_samples / "real_LBTB_seq9720700.cd11").read_bytes()
    assert len(frame) == 2224
    assert crc64(frame[:-8]) == 0x3A8B4AECFEA50E55


def test_single_bit_flip_changes_crc(cd11_samples, impl):
    frame = bytearray((cd11_samples / "real_LBTB_seq9720700.cd11").read_bytes()[:-8])
    good = crc64(frame)
    for pos in (0, 1000, len(frame) - 1):
        frame[pos] ^= 0x10
        assert crc64(frame) != good
        frame[pos] ^= 0x10


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=5000), st.integers(0, 16), st.integers(0, 16))
def test_fast_equals_reference(data, start, cut):
    expected = crc64_reference(data)
    assert crc64(data) == expected
    assert crc64(bytearray(data)) == expected
    view = memoryview(data)[min(start, len(data)):max(len(data) - cut, min(start, len(data)))]
    assert crc64(view) == crc64_reference(bytes(view))


def test_memoryview_of_wider_items():
    values = array.array("i", range(100))
    assert crc64(memoryview(values)) == crc64_reference(values.tobytes())
