"""Property tests: for every frame type, build -> parse -> build is the identity (bytes and objects),
and parsing keeps every value including the decoded samples.  The generators cover what the builder
may send (the reader profile of ``ims_station.cd11.frames``; what it refuses: test_reader_profile.py)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ims_station import cd11
from ims_station.cd11 import ca
from ims_station.cd11.data import SAMPLE_FORMATS

PRINTABLE = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
I16 = st.integers(-(1 << 15), (1 << 15) - 1)
U16 = st.integers(0, (1 << 16) - 1)
I32 = st.integers(-(1 << 31), (1 << 31) - 1)
I64 = st.integers(-(1 << 63), (1 << 63) - 1)
F32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def text(n: int, min_size: int = 0):
    return st.text(PRINTABLE, min_size=min_size, max_size=n)


@st.composite
def times(draw):
    year = draw(st.integers(1970, 2099))
    doy = draw(st.integers(1, 365))
    h, m, s = draw(st.integers(0, 23)), draw(st.integers(0, 59)), draw(st.integers(0, 59))
    return f"{year:04d}{doy:03d} {h:02d}:{m:02d}:{s:02d}.{draw(st.integers(0, 999)):03d}"


ipv4 = st.integers(0, (1 << 32) - 1).map(lambda v: ".".join(str((v >> s) & 255) for s in (24, 16, 8, 0)))


def common():
    return dict(creator=text(8, 1), destination=text(8), sequence=I64, series=I32, auth_key_id=I32,
                auth_value=st.binary(max_size=80))


def connection(cls):
    return st.builds(cls, **common(), major_version=I16, minor_version=I16, station=text(8),
                     station_type=st.sampled_from(cd11.frames.STATION_TYPES),
                     service_type=st.sampled_from(cd11.frames.SERVICE_TYPES), ip=ipv4, port=U16, ip2=ipv4,
                     port2=U16)


# Exactly one option of type 1, 1..8 characters (USGS adds a NUL to the size: kept as sent).
option = st.builds(cd11.Option, type=st.just(cd11.frames.OPTION_CONNECTION),
                   value=st.tuples(text(8, 1), st.sampled_from(["", "\0"])).map("".join))
no_blank_ends = st.text(PRINTABLE, max_size=100).map(lambda t: t.strip(" "))
CONTROL_FRAMES = {
    "connection_request": connection(cd11.ConnectionRequest),
    "connection_response": connection(cd11.ConnectionResponse),
    "option_request": st.builds(cd11.OptionRequest, **common(), options=st.lists(option, min_size=1, max_size=1)),
    "option_response": st.builds(cd11.OptionResponse, **common(), options=st.lists(option, min_size=1, max_size=1)),
    "acknack": st.builds(cd11.Acknack, **common(), frame_set=text(20, 1), lowest=I64, highest=I64,
                         gaps=st.lists(st.tuples(I64, I64), max_size=20)),
    "alert": st.builds(cd11.Alert, **common(), message=no_blank_ends),
    "command_request": st.builds(cd11.CommandRequest, **common(), station=text(8), site=text(5),
                                 channel=text(3), location=text(2), time=times(), command=text(60)),
    "command_response": st.builds(cd11.CommandResponse, **common(), station=text(8), site=text(5),
                                  channel=text(3), location=text(2), time=times(), command=text(60),
                                  response=text(60)),
}

statuses = st.builds(cd11.ChannelStatus,
                     **{name: st.booleans() for _, _, name in cd11.status.BITS},
                     last_gps_sync=st.one_of(st.just(""), times()), clock_differential_us=I32,
                     future_bits=st.tuples(*(st.integers(0, 255).map(lambda v, m=m: v & ~m)
                                             for m in (0x0F, 0x1F, 0x1F, 0x03))),
                     unused=st.binary(min_size=3, max_size=3))


@st.composite
def subframes(draw):
    kind = draw(st.sampled_from(["ca", *SAMPLE_FORMATS]))
    if kind == "ca":
        n = 20 * draw(st.integers(1, 10))
        # Smooth-ish series (CA's domain) plus occasional large steps that need the wide table.
        steps = draw(st.lists(st.integers(-(1 << 20), 1 << 20), min_size=n, max_size=n))
        samples = np.cumsum(np.array(steps, dtype=np.int64)).clip(-(1 << 30), 1 << 30).astype(np.int32)
        assert ca.can_encode(samples)
        data, transformation, fmt = ca.encode(samples), draw(st.sampled_from([1, 2])), "s4"
    else:
        width = SAMPLE_FORMATS[kind][1]
        lim = 1 << (8 * width - 1)
        samples = np.array(draw(st.lists(st.integers(-lim, lim - 1), max_size=60)), dtype=np.int32)
        data, transformation, fmt = cd11.data.encode_samples(samples, kind), 0, kind
    status = draw(st.one_of(st.just(b""), statuses.map(lambda s: s.to_bytes()), st.binary(max_size=40)))
    sf = cd11.ChannelSubframe(
        description=cd11.ChannelDescription(
            authentication=draw(st.integers(0, 1)), transformation=transformation,
            sensor_type=draw(st.integers(0, cd11.data.MAX_SENSOR_TYPE)), option_flag=draw(st.integers(0, 1)),
            site=draw(text(5, 1)), channel=draw(text(3, 1)), location=draw(text(2)), data_format=fmt,
            calib=draw(F32), calper=draw(F32)),
        time=draw(times()), time_length_ms=draw(st.integers(0, (1 << 31) - 1)),
        nsamples=len(samples), status=status, data=data, subframe_count=draw(I32),
        auth_key_id=draw(I32), auth_value=draw(st.binary(max_size=72)))
    return sf, samples


@st.composite
def data_frames(draw, cls=cd11.DataFrame):
    subs = draw(st.lists(subframes(), max_size=4))
    ids = [cd11.ChannelId(draw(text(5)), draw(text(3)), draw(text(2))) for _ in subs]
    f = cls(**{k: draw(v) for k, v in common().items()},
            frame_time_length_ms=draw(st.integers(0, (1 << 31) - 1)), nominal_time=draw(times()),
            channel_ids=ids, subframes=[s for s, _ in subs])
    return f, [x for _, x in subs]


def roundtrip(frame):
    wire = frame.to_bytes()
    parsed, end = cd11.parse_frame(wire)
    assert end == len(wire)
    assert type(parsed) is type(frame)
    assert parsed == frame
    assert parsed.to_bytes() == wire
    assert parsed.trailer.crc_ok
    # Every field is padded to 4 but the command messages (written unpadded, spec §3.5).
    assert len(wire) % 4 == 0 or isinstance(frame, (cd11.CommandRequest, cd11.CommandResponse))
    return parsed


@pytest.mark.parametrize("kind", sorted(CONTROL_FRAMES))
def test_control_frames_build_parse_build(kind):
    @SETTINGS
    @given(CONTROL_FRAMES[kind])
    def check(frame):
        assert type(frame) is FRAME_CLASS[kind]
        roundtrip(frame)

    check()


FRAME_CLASS = {"connection_request": cd11.ConnectionRequest, "connection_response": cd11.ConnectionResponse,
               "option_request": cd11.OptionRequest, "option_response": cd11.OptionResponse,
               "acknack": cd11.Acknack, "alert": cd11.Alert, "command_request": cd11.CommandRequest,
               "command_response": cd11.CommandResponse}


@pytest.mark.parametrize("kind", ["command_request", "command_response"])
def test_command_messages_read_the_same_padded_or_not(kind):
    """Written unpadded; frames from writers that pad to 4 (older ims-station) read to the same
    fields and re-encode as they came."""
    @SETTINGS
    @given(CONTROL_FRAMES[kind])
    def check(frame):
        unpadded = frame.to_bytes()
        frame.padded_messages = True
        padded = frame.to_bytes()
        assert len(padded) % 4 == 0
        a, b = cd11.parse_frame(unpadded)[0], cd11.parse_frame(padded)[0]
        assert a == b == frame
        assert (a.padded_messages, b.padded_messages) == (False, padded != unpadded)
        assert a.to_bytes() == unpadded and b.to_bytes() == padded

    check()


def test_every_frame_type_has_a_property_test():
    assert set(FRAME_CLASS) == set(CONTROL_FRAMES)
    tested = {cls.FRAME_TYPE for cls in FRAME_CLASS.values()} | {5, 13}   # + the data tests below
    assert tested == set(cd11.FRAME_TYPES)


@SETTINGS
@given(data_frames())
def test_data_frames_build_parse_build_and_samples(case):
    frame, samples = case
    parsed = roundtrip(frame)
    for sf, x in zip(parsed.subframes, samples):
        assert np.array_equal(sf.samples(), x)


@settings(max_examples=30, deadline=None)
@given(data_frames(cd11.Cd1Encapsulation))
def test_cd1_encapsulation_parses_like_data(case):
    roundtrip(case[0])


@SETTINGS
@given(statuses)
def test_channel_status_bytes_roundtrip(status):
    raw = status.to_bytes()
    assert len(raw) == 32 and raw[0] == 1
    assert cd11.ChannelStatus.from_bytes(raw) == status


def test_each_status_bit_has_its_own_position():
    seen = set()
    for byte, bit, name in cd11.status.BITS:
        raw = cd11.ChannelStatus(**{name: True}).to_bytes()
        pos = {"data_status": 1, "security": 2, "misc": 3, "voltage": 4}[byte]
        assert raw[pos] == bit and sum(raw[1:5]) == bit
        assert cd11.ChannelStatus.from_bytes(raw).flags() == [name]
        seen.add((pos, bit))
    assert len(seen) == 16


@SETTINGS
@given(st.lists(st.integers(-(1 << 23), (1 << 23) - 1), max_size=50),
       st.sampled_from(sorted(SAMPLE_FORMATS)))
def test_uncompressed_formats_roundtrip(values, fmt):
    width = SAMPLE_FORMATS[fmt][1]
    x = np.array(values, dtype=np.int32)
    lim = 1 << (8 * width - 1)
    x = np.clip(x, -lim, lim - 1).astype(np.int32)
    raw = cd11.data.encode_samples(x, fmt)
    assert len(raw) == width * len(x)
    assert np.array_equal(cd11.data.decode_samples(raw, len(x), fmt), x)


def test_byte_orders_of_the_formats():
    x = np.array([0x010203], dtype=np.int32)
    assert cd11.data.encode_samples(x, "s4") == b"\x00\x01\x02\x03"
    assert cd11.data.encode_samples(x, "i4") == b"\x03\x02\x01\x00"
    assert cd11.data.encode_samples(x, "s3") == b"\x01\x02\x03"
    assert cd11.data.encode_samples(np.array([-2]), "s2") == b"\xff\xfe"
    assert cd11.data.encode_samples(np.array([-2]), "i2") == b"\xfe\xff"
    assert cd11.data.decode_samples(b"\xff\xff\xfe", 1, "s3").tolist() == [-2]


@SETTINGS
@given(st.integers(1, 30).map(lambda k: 20 * k), st.integers(0, 1 << 30), st.booleans())
def test_builder_uses_ca_when_it_can_and_s4_otherwise(n, seed, odd):
    rng = np.random.default_rng(seed)
    x = np.cumsum(rng.integers(-500, 500, n + int(odd))).astype(np.int32)
    wire = cd11.build_data_frame("STA01", 7, 1.7e9, [("STA01", "BHZ", "00", x, 40.0, 1.7e9, None, None)])
    sf = cd11.parse_frame(wire)[0].subframes[0]
    assert sf.description.transformation == (0 if odd else 1)
    assert np.array_equal(sf.samples(), x)
    assert sf.time_length_ms == round(len(x) * 1000 / 40)
