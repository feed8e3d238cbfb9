"""Bad input: each kind of damage gives a specific error naming frame type, field and byte offset."""

from __future__ import annotations

import struct

import pytest

from ims_station import cd11
from ims_station.cd11.crc64 import crc64
from ims_station.errors import LocalProtocolError, RemoteProtocolError


@pytest.fixture(scope="module")
def lbtb(cd11_samples) -> bytes:
    return (cd11_samples / "real_LBTB_seq9720700.cd11").read_bytes()


@pytest.fixture(scope="module")
def acknack(cd11_samples) -> bytes:
    return (cd11_samples / "generated_acknack.cd11").read_bytes()


def recrc(buf: bytes | bytearray) -> bytes:
    """Give a damaged frame a valid CRC, so the parser has to find the damage itself."""
    buf = bytearray(buf)
    buf[-8:] = crc64(bytes(buf[:-8])).to_bytes(8, "big")
    return bytes(buf)


def put(buf: bytes, offset: int, fmt: str, value) -> bytes:
    b = bytearray(buf)
    struct.pack_into(fmt, b, offset, value)
    return bytes(b)


def expect(exc_type, buf, *, frame_type, field, offset, check_crc=True, **kw):
    with pytest.raises(exc_type) as info:
        cd11.parse_frame(buf, check_crc=check_crc, **kw)
    err = info.value
    assert isinstance(err, cd11.Cd11Error) and isinstance(err, RemoteProtocolError)
    assert (err.frame_type, err.field, err.offset) == (frame_type, field, offset), str(err)
    text = str(err)
    assert field in text and f"at byte {offset}" in text
    if frame_type is not None:
        assert cd11.errors.frame_name(frame_type) in text
    return err


# Subframe 0 of the LBTB frame starts after 36 (header) + 32 (data header) + 40 (channel string).
SF0 = 36 + 32 + 40


def test_truncated_frames(lbtb):
    err = expect(cd11.Cd11TruncatedError, lbtb[:20], frame_type=5, field="header", offset=20)
    assert err.needed == 36
    err = expect(cd11.Cd11TruncatedError, lbtb[:1000], frame_type=5, field="trailer.auth_size",
                 offset=1000)
    assert err.needed == 2168 + 8
    err = expect(cd11.Cd11TruncatedError, lbtb[:-1], frame_type=5, field="trailer",
                 offset=len(lbtb) - 1)
    assert err.needed == len(lbtb)
    assert cd11.frame_length(lbtb[:1000]) is None and cd11.frame_length(lbtb) == len(lbtb)


def test_trailer_offset_asking_for_gigabytes(lbtb):
    expect(cd11.Cd11LengthError, put(lbtb, 4, ">i", 0x7FFFFFF0), frame_type=5,
           field="header.trailer_offset", offset=4)
    expect(cd11.Cd11LengthError, put(lbtb, 4, ">i", 12), frame_type=5,
           field="header.trailer_offset", offset=4)


def test_authentication_size_out_of_range(lbtb):
    expect(cd11.Cd11LengthError, put(lbtb, 2168 + 4, ">i", 1 << 30), frame_type=5,
           field="trailer.auth_size", offset=2172)
    expect(cd11.Cd11LengthError, put(lbtb, 2168 + 4, ">i", -4), frame_type=5,
           field="trailer.auth_size", offset=2172)


def test_crc_mismatch(lbtb):
    bad = bytearray(lbtb)
    bad[500] ^= 0x10
    expect(cd11.Cd11CrcError, bytes(bad), frame_type=5, field="trailer.crc", offset=len(lbtb) - 8)
    frame, _ = cd11.parse_frame(bytes(bad), check_crc=False)
    assert frame.trailer.crc_ok is False


def test_unknown_frame_types(acknack):
    for code in (0, 10, 11, 12, 14, -1, 26):
        err = expect(cd11.Cd11FrameTypeError, put(acknack, 0, ">i", code), frame_type=None,
                     field="header.frame_type", offset=0)
        assert str(code) in str(err)
    assert "custom reset" in str(err)


def test_non_ascii_names(lbtb, acknack):
    expect(cd11.Cd11FieldError, recrc(put(acknack, 8, ">B", 0xC3)), frame_type=6,
           field="header.creator", offset=8)
    expect(cd11.Cd11FieldError, recrc(put(acknack, 36 + 2, ">B", 0x07)), frame_type=6,
           field="acknack.frame_set", offset=36)
    # An embedded NUL followed by text could not be re-encoded identically.
    expect(cd11.Cd11FieldError, recrc(put(lbtb, 8 + 1, ">B", 0)), frame_type=5,
           field="header.creator", offset=8)
    # Site name of subframe 0: subframe start + 4 + 4 + 4 description bytes.
    expect(cd11.Cd11FieldError, recrc(put(lbtb, SF0 + 12, ">B", 0xE9)), frame_type=5,
           field="data.subframe[0].site", offset=SF0 + 12)
    expect(cd11.Cd11FieldError, recrc(put(lbtb, 36 + 32 + 10 + 5, ">B", 0xFF)), frame_type=5,
           field="data.channel_string[1].channel", offset=36 + 32 + 15)


def test_bad_time_strings(lbtb):
    for bad in (b"2019157 17:26:00,000", b"2019400 17:26:00.000", b"2019157 25:26:00.000",
                b"20191571 7:26:00.000", b"2019000 17:26:00.000"):
        buf = recrc(lbtb[:44] + bad + lbtb[64:])
        err = expect(cd11.Cd11FieldError, buf, frame_type=5, field="data.nominal_time", offset=44)
        assert "time stamp" in str(err)
    buf = recrc(lbtb[:SF0 + 32] + b"2019157 17:26:00.00x" + lbtb[SF0 + 52:])
    expect(cd11.Cd11FieldError, buf, frame_type=5, field="data.subframe[0].time", offset=SF0 + 32)


def test_channel_count_disagreeing_with_the_channel_string(lbtb):
    expect(cd11.Cd11FieldError, recrc(put(lbtb, 36, ">i", 3)), frame_type=5,
           field="data.channel_string_count", offset=36 + 28)
    expect(cd11.Cd11FieldError, recrc(put(lbtb, 36 + 28, ">i", 50)), frame_type=5,
           field="data.channel_string_count", offset=36 + 28)


def test_counts_asking_for_gigabytes(lbtb, acknack):
    expect(cd11.Cd11LengthError, recrc(put(lbtb, 36, ">i", 1 << 30)), frame_type=5,
           field="data.channel_count", offset=36)
    expect(cd11.Cd11LengthError, recrc(put(lbtb, 36, ">i", 400)), frame_type=5,
           field="data.channel_count", offset=36)
    expect(cd11.Cd11LengthError, recrc(put(acknack, 36 + 36, ">i", 0x7FFFFFFF)), frame_type=6,
           field="acknack.gap_count", offset=72)
    expect(cd11.Cd11LengthError, recrc(put(acknack, 36 + 36, ">i", 3)), frame_type=6,
           field="acknack.gap_count", offset=72)
    expect(cd11.Cd11LengthError, recrc(put(acknack, 36 + 36, ">i", -1)), frame_type=6,
           field="acknack.gap_count", offset=72)


def test_subframe_lengths_pointing_past_the_end(lbtb):
    expect(cd11.Cd11LengthError, recrc(put(lbtb, SF0, ">i", 1 << 28)), frame_type=5,
           field="data.subframe[0].channel_length", offset=SF0)
    expect(cd11.Cd11LengthError, recrc(put(lbtb, SF0, ">i", 618)), frame_type=5,
           field="data.subframe[0].channel_length", offset=SF0)
    # status size 32 -> 1 GB
    expect(cd11.Cd11LengthError, recrc(put(lbtb, SF0 + 60, ">i", 1 << 30)), frame_type=5,
           field="data.subframe[0].status_size", offset=SF0 + 60)
    # data size (after the 32-byte status) -> 1 GB, and -> slightly too large
    expect(cd11.Cd11LengthError, recrc(put(lbtb, SF0 + 96, ">i", 1 << 30)), frame_type=5,
           field="data.subframe[0].data_size", offset=SF0 + 96)
    expect(cd11.Cd11LengthError, recrc(put(lbtb, SF0 + 96, ">i", 600)), frame_type=5,
           field="data.subframe[0].data_size", offset=SF0 + 96)
    expect(cd11.Cd11LengthError, recrc(put(lbtb, SF0 + 56, ">i", 1 << 30)), frame_type=5,
           field="data.subframe[0].samples", offset=SF0 + 56)


def test_authentication_offset_must_point_at_the_key_identifier(lbtb):
    expect(cd11.Cd11FieldError, recrc(put(lbtb, SF0 + 4, ">i", 572 + 36 + 68)), frame_type=5,
           field="data.subframe[0].auth_offset", offset=SF0 + 4)


def test_uncompressed_size_must_match_samples(cd11_samples):
    buf = (cd11_samples / "generated_data_s4.cd11").read_bytes()
    sf0 = 36 + 32 + 12
    err = expect(cd11.Cd11LengthError, recrc(put(buf, sf0 + 56, ">i", 5)), frame_type=5,
                 field="data.subframe[0].data_size", offset=sf0 + 96)
    assert "20" in str(err)


def test_ca_streams_that_overrun(lbtb):
    # More samples than the CA stream holds: parsing succeeds (lazy decoding), decoding names it.
    frame, _ = cd11.parse_frame(recrc(put(lbtb, SF0 + 56, ">i", 800)))
    with pytest.raises(cd11.Cd11DataError) as info:
        frame.subframes[0].samples()
    err = info.value
    assert (err.frame_type, err.field) == (5, "data.subframe[0].channel_data")
    assert SF0 + 100 <= err.offset <= SF0 + 100 + 468 and "Canadian compression" in str(err)
    # Index words claiming 32-bit groups everywhere: the stream runs out.
    bad = bytearray(lbtb)
    bad[SF0 + 100:SF0 + 100 + 40] = b"\xff\xff" * 20
    frame, _ = cd11.parse_frame(recrc(bytes(bad)))
    with pytest.raises(cd11.Cd11DataError) as info:
        frame.subframes[0].samples()
    assert info.value.field == "data.subframe[0].channel_data"
    assert SF0 + 100 <= info.value.offset <= SF0 + 100 + 468


def test_errors_in_a_later_frame_have_absolute_offsets(lbtb, acknack):
    blob = acknack + put(lbtb, 4, ">i", 0x7FFFFFF0)
    it = cd11.iter_frames(blob)
    assert isinstance(next(it), cd11.Acknack)
    with pytest.raises(cd11.Cd11LengthError) as info:
        next(it)
    assert info.value.offset == len(acknack) + 4
    blob = acknack + recrc(put(lbtb, SF0 + 12, ">B", 0xE9))
    with pytest.raises(cd11.Cd11FieldError) as info:
        list(cd11.iter_frames(blob))
    assert info.value.offset == len(acknack) + SF0 + 12


def test_left_over_payload_bytes(acknack):
    # Declare one gap fewer: 16 bytes remain before the trailer.
    expect(cd11.Cd11LengthError, recrc(put(acknack, 72, ">i", 1)), frame_type=6,
           field="acknack.end", offset=36 + 40 + 16)


def test_building_what_cd11_cannot_carry_is_a_local_error():
    for frame in (cd11.Alert(creator="TOOLONGNAME"), cd11.Alert(creator="STA", message="é"),
                  cd11.Alert(creator="STA", sequence=1 << 70),
                  cd11.Acknack(creator="STA", frame_set="x" * 21),
                  cd11.CommandRequest(creator="STA", time="yesterday")):
        with pytest.raises(cd11.Cd11BuildError) as info:
            frame.to_bytes()
        assert isinstance(info.value, LocalProtocolError)
    with pytest.raises(cd11.Cd11BuildError):
        cd11.data.encode_samples([1 << 20], "s2")
    with pytest.raises(cd11.Cd11BuildError):
        cd11.build_data_frame("S", 1, 0.0, [cd11.ChannelInput("S", "BHZ", "", [1, 2], 1.0, 0.0,
                                                               calib=float("inf"))])
    with pytest.raises(cd11.Cd11BuildError):
        cd11.DataFrame(creator="S", nominal_time="2024001 00:00:00.000",
                       channel_ids=[cd11.ChannelId("A", "B")]).to_bytes()
