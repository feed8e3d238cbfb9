"""Interoperability with the data centres' reader (issue 8 §2): what we build, GMS's CD-1.1 reader
reads; what it refuses, our builder refuses (naming the field) while our parser stays lenient.

The reader's behaviour is taken from the spec note (``shared/specs/cd11.md`` §2.1, §3.1, §3.2, §3.4,
§3.5, §4.1) and GMS21's ``Cd11PayloadReader`` / ``Cd11Validator``: it reads command messages as
exactly *size* bytes with no padding, trims blanks from alert text and then compares the size,
takes one option of type 1 with 1..8 characters, knows station types ``IDC``/``IMS``/empty and the
service ``TCP``, reads the sensor type as a signed byte, and finds the channel string's pad bytes
in a frame with an odd channel count by peeking whether the next int32 is 0.  The small readers
below do exactly that, independently of our parser.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest

from ims_station import cd11
from ims_station.cd11.crc64 import crc64
from ims_station.errors import LocalProtocolError

TIME = "2024060 12:00:10.000"


def recrc(b: bytes | bytearray) -> bytes:
    b = bytearray(b)
    b[-8:] = crc64(bytes(b[:-8])).to_bytes(8, "big")
    return bytes(b)


# --- command messages: unpadded (§3.5) -------------------------------------------------------------
def read_command_as_gms(wire: bytes) -> dict:
    """Command request/response payload read the way GMS reads it: fixed head, then each message as
    exactly *size* bytes, no padding skipped; the payload must end at the trailer offset."""
    ftype, toff = struct.unpack_from(">ii", wire)
    pos = 36
    station, site, chan, loc, _pad, time = struct.unpack_from(">8s5s3s2s2s20s", wire, pos)
    pos += 40
    out = {"station": station.rstrip(b"\0").decode(), "site": site.rstrip(b"\0").decode(),
           "channel": chan.rstrip(b"\0").decode(), "location": loc.rstrip(b"\0").decode(),
           "time": time.decode()}
    for name in ("command", "response") if ftype == 9 else ("command",):
        (size,) = struct.unpack_from(">i", wire, pos)
        assert 0 <= size <= toff - pos - 4, f"{name} size {size} read from the wrong bytes"
        out[name] = wire[pos + 4:pos + 4 + size].decode("ascii")
        pos += 4 + size
    assert pos == toff, f"payload ends at {pos}, trailer at {toff}"
    return out


@pytest.mark.parametrize("command, response", [("reset", "ok!"), ("x", ""), ("status", "fine"),
                                               ("abcdefg", "response of odd length")])
def test_command_frames_are_read_by_an_unpadding_reader(command, response):
    req = cd11.CommandRequest(creator="IDC", station="STA01", site="STA01", channel="BHZ", location="00",
                              time=TIME, command=command)
    resp = cd11.CommandResponse(creator="STA01", sequence=7, station="STA01", site="STA01", channel="BHZ",
                                location="00", time=TIME, command=command, response=response)
    assert read_command_as_gms(req.to_bytes())["command"] == command
    got = read_command_as_gms(resp.to_bytes())
    assert (got["command"], got["response"], got["station"], got["time"]) == (command, response, "STA01", TIME)


def test_command_response_layout_byte_by_byte():
    """Spec §3.5 table, assembled by hand: head, size + message, size + response, no padding."""
    payload = (b"STA01\0\0\0" + b"STA01" + b"BHZ" + b"00" + b"\0\0" + TIME.encode()
               + struct.pack(">i", 5) + b"reset" + struct.pack(">i", 2) + b"ok")
    pre = (struct.pack(">ii8s8sqi", 9, 36 + len(payload), b"STA01", b"0", 7, 0) + payload
           + struct.pack(">ii", 0, 0))
    expected = pre + crc64(pre).to_bytes(8, "big")
    frame = cd11.CommandResponse(creator="STA01", sequence=7, station="STA01", site="STA01", channel="BHZ",
                                 location="00", time=TIME, command="reset", response="ok")
    assert frame.to_bytes() == expected
    assert len(expected) % 4 == 3          # the trailer is not 4-aligned, and need not be


def test_padded_command_frames_from_older_writers_still_parse():
    frame = cd11.CommandResponse(creator="STA01", sequence=7, station="STA01", time=TIME, command="reset",
                                 response="ok!", padded_messages=True)
    padded = frame.to_bytes()
    parsed, _ = cd11.parse_frame(padded)
    assert (parsed.command, parsed.response, parsed.padded_messages) == ("reset", "ok!", True)
    assert parsed.to_bytes() == padded                  # re-encoded as received (signatures hold)
    with pytest.raises(AssertionError):                 # and the unpadding reader cannot read it
        read_command_as_gms(padded)


# --- what the readers refuse: the builder refuses, the parser accepts ---------------------------------
def _sub(**kw) -> cd11.ChannelInput:
    ch = dict(site="STA01", channel="BHZ", location="00", samples=np.arange(20, dtype=np.int32),
              sample_rate=20.0, time=TIME)
    ch.update(kw)
    return cd11.ChannelInput(**ch)


REFUSED = [
    ("header.creator", lambda: cd11.Alert(creator="", message="bye")),
    ("header.creator", lambda: cd11.Acknack(creator="", frame_set="STA01:0")),
    ("acknack.frame_set", lambda: cd11.Acknack(creator="IDC", frame_set="")),
    ("connection.station_type", lambda: cd11.ConnectionRequest(creator="STA01", station="STA01",
                                                                station_type="USGS")),
    ("connection.station_type", lambda: cd11.ConnectionResponse(creator="IDC", station="IDC",
                                                                 station_type="IMS ")),
    ("connection.service_type", lambda: cd11.ConnectionRequest(creator="STA01", station="STA01",
                                                                service_type="UDP")),
    ("option.count", lambda: cd11.OptionRequest(creator="STA01", options=[])),
    ("option.count", lambda: cd11.OptionRequest(creator="STA01", options=[cd11.Option(1, "STA01")] * 2)),
    ("option[0].type", lambda: cd11.OptionRequest(creator="STA01", options=[cd11.Option(2, "STA01")])),
    ("option[0].value", lambda: cd11.OptionResponse(creator="IDC", options=[cd11.Option(1, "")])),
    ("option[0].value", lambda: cd11.OptionRequest(creator="STA01", options=[cd11.Option(1, "STATION01")])),
    ("alert.message", lambda: cd11.Alert(creator="STA01", message=" Shutting down")),
    ("alert.message", lambda: cd11.Alert(creator="STA01", message="Shutting down ")),
    ("subframe.sensor_type", lambda: cd11.make_data_frame("STA01", 1, TIME, [_sub(sensor_type=128)])),
    ("subframe.sensor_type", lambda: cd11.make_data_frame("STA01", 1, TIME, [_sub(sensor_type=255)])),
    ("subframe.sensor_type", lambda: cd11.make_data_frame("STA01", 1, TIME, [_sub(sensor_type=-1)])),
    ("subframe.site", lambda: cd11.make_data_frame("STA01", 1, TIME, [_sub(site="")])),
    ("subframe.channel", lambda: cd11.make_data_frame("STA01", 1, TIME, [_sub(channel="")])),
]


@pytest.mark.parametrize("field, make", REFUSED, ids=[f"{f}-{i}" for i, (f, _) in enumerate(REFUSED)])
def test_the_builder_refuses_what_readers_refuse_naming_the_field(field, make):
    with pytest.raises(cd11.Cd11BuildError) as info:
        frame = make()
        frame.to_bytes()
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")
    assert isinstance(info.value, LocalProtocolError)


def test_what_readers_accept_is_built():
    for st in cd11.frames.STATION_TYPES:
        cd11.ConnectionRequest(creator="STA01", station="STA01", station_type=st).to_bytes()
    cd11.OptionRequest(creator="STA01", options=[cd11.Option(1, "STA01XYZ")]).to_bytes()
    cd11.OptionRequest(creator="STA01", options=[cd11.Option(1, "STA01\0")]).to_bytes()   # USGS style
    cd11.Alert(creator="STA01", message="").to_bytes()
    cd11.Alert(creator="STA01", message="Shutting down: disk full").to_bytes()
    cd11.build_data_frame("STA01", 1, TIME, [_sub(sensor_type=127)])


def test_a_signed_subframe_is_refused_before_it_is_signed():
    class Signer:
        key_id, calls = 5, 0

        def sign(self, data):
            Signer.calls += 1
            return b"\1" * 64

    with pytest.raises(cd11.Cd11BuildError, match="sensor_type"):
        cd11.build_data_frame("STA01", 1, TIME, [_sub(sensor_type=200, signer=Signer())])
    assert Signer.calls == 0


@pytest.mark.parametrize("cls", sorted(set(cd11.FRAME_TYPES.values()), key=lambda c: c.FRAME_TYPE),
                         ids=lambda c: c.__name__)
def test_no_frame_class_defaults_to_an_empty_creator(cls):
    with pytest.raises(TypeError, match="creator"):
        cls()


def test_acknack_has_no_empty_frame_set_default():
    with pytest.raises(TypeError, match="frame_set"):
        cd11.Acknack(creator="IDC")


def _with_payload(frame: cd11.Frame, payload: bytes) -> bytes:
    """A frame's envelope around a hand-made payload (the builder would refuse the payload)."""
    return frame.to_bytes(_payload=payload)


def test_the_parser_is_lenient_with_what_real_peers_send():
    """Readers refuse these from us, but a peer may send them (the USGS consumer answers with
    responder type ``USGS``; the layout allows several options): parse, keep the values, and
    refuse to send them on."""
    good = cd11.ConnectionResponse(creator="IDC", station="USGS", ip="10.0.0.1", port=8000).to_bytes()
    usgs = bytearray(good)
    usgs[36 + 12:36 + 16] = b"USGS"
    noname = bytearray(good)
    noname[8:16] = bytes(8)
    alert = cd11.Alert(creator="STA01", message="x")
    options = cd11.OptionRequest(creator="STA01", options=[cd11.Option(1, "STA01")])
    two = struct.pack(">iii8sii8s", 2, 1, 5, b"STA01", 1, 5, b"STA02")
    cases = [
        (recrc(usgs), "station_type", "USGS", "connection.station_type"),
        (recrc(noname), "creator", "", "header.creator"),
        (_with_payload(alert, struct.pack(">i8s", 7, b" bye   ")), "message", " bye   ", "alert.message"),
        (_with_payload(options, struct.pack(">i", 0)), "options", [], "option.count"),
        (_with_payload(options, two), "options", [cd11.Option(1, "STA01"), cd11.Option(1, "STA02")],
         "option.count"),
    ]
    for wire, attr, value, field in cases:
        frame, _ = cd11.parse_frame(wire)
        assert getattr(frame, attr) == value
        with pytest.raises(cd11.Cd11BuildError) as info:
            frame.to_bytes()
        assert info.value.field == field


def test_a_sensor_type_above_127_parses_and_decodes(cd11_samples):
    buf = bytearray((cd11_samples / "generated_data_ca20.cd11").read_bytes())
    frame, _ = cd11.parse_frame(bytes(buf))
    start, _ = frame.subframes[0].span
    buf[start + 10] = 200                               # channel description byte 3
    frame, _ = cd11.parse_frame(recrc(buf))
    sf = frame.subframes[0]
    assert sf.description.sensor_type == 200 and len(sf.samples()) == 20
    with pytest.raises(cd11.Cd11BuildError, match="sensor_type"):
        frame.to_bytes()


# --- subframes below 64 KiB (§4.1) ------------------------------------------------------------------
def first_subframe_as_gms_finds_it(wire: bytes) -> int:
    """Where GMS starts reading the first subframe: after the channel string, skipping 2 pad
    bytes (odd channel count) only if the int32 it peeks there is 0."""
    (n,) = struct.unpack_from(">i", wire, 36)
    pos = 36 + 32 + 10 * n
    if n % 2 and struct.unpack_from(">i", wire, pos)[0] == 0:
        pos += 2
    return pos


def subframe_lengths(wire: bytes) -> list[int]:
    frame, _ = cd11.parse_frame(wire)
    return [struct.unpack_from(">i", wire, sf.span[0])[0] for sf in frame.subframes]


@pytest.mark.parametrize("n, compress", [(20_001, True), (20_000, False), (100_000, False), (16_400, False)])
def test_a_long_channel_is_split_into_subframes_below_64_kib(n, compress):
    rng = np.random.default_rng(n)
    x = rng.integers(-(1 << 23), 1 << 23, n).astype(np.int32)      # white noise: CA gains little
    t0 = 1_700_000_000.0
    chans = [_sub(samples=x, sample_rate=2000.0, time=t0), _sub(channel="BHN", samples=x[:400], time=t0),
             _sub(channel="BHE", samples=x[:400], time=t0)]            # 3 channels: an odd count
    wire = cd11.build_data_frame("STA01", 1, t0, chans, compress=compress)
    frame, _ = cd11.parse_frame(wire)
    assert max(subframe_lengths(wire)) < 65536
    assert first_subframe_as_gms_finds_it(wire) == frame.subframes[0].span[0]
    bhz = [sf for sf in frame.subframes if sf.channel == "BHZ"]
    assert len(bhz) >= 2
    assert np.array_equal(np.concatenate([sf.samples() for sf in bhz]), x)
    # Consecutive pieces: each starts where the previous one ends (to the millisecond).
    t = [cd11.to_datetime(sf.time).timestamp() for sf in bhz]
    offsets = np.cumsum([0] + [sf.nsamples for sf in bhz[:-1]]) / 2000.0
    assert np.allclose(np.array(t) - t0, offsets, atol=0.00051)
    assert [c.channel for c in frame.channel_ids] == [sf.channel for sf in frame.subframes]


def test_an_oversized_subframe_is_refused_naming_the_field():
    x = np.arange(16_400, dtype=np.int32)                                  # 65 600 bytes of s4
    sf = cd11.ChannelSubframe(
        description=cd11.ChannelDescription(site="STA01", channel="BHZ"), time=TIME, time_length_ms=8200,
        nsamples=x.size, data=cd11.data.encode_samples(x, "s4"))
    with pytest.raises(cd11.Cd11BuildError) as info:
        sf.to_bytes()
    assert info.value.field == "subframe.channel_length"
    with pytest.raises(cd11.Cd11BuildError):
        cd11.make_subframe(_sub(samples=x, sample_rate=2000.0), compress=False)


def test_the_gms_peek_misreads_a_first_subframe_of_64_kib():
    """The reader quirk itself (why the cap exists): the same frame with the first subframe at
    65 536 bytes or more is found 2 bytes off."""
    x = np.arange(16_400, dtype=np.int32)
    big = cd11.ChannelSubframe(
        description=cd11.ChannelDescription(site="STA01", channel="BHZ"), time=TIME, time_length_ms=8200,
        nsamples=x.size, data=cd11.data.encode_samples(x, "s4"))
    body = big.signed_bytes()
    sub = struct.pack(">ii", 8 + len(body) + 8 - 4, 8 + len(body)) + body + struct.pack(">ii", 0, 0)
    frame = cd11.DataFrame(creator="STA01", nominal_time=TIME, channel_ids=[cd11.ChannelId("STA01", "BHZ")],
                           subframes=[big])
    wire = frame.to_bytes(_payload=frame.payload_bytes(_subframe_bytes=[sub]))
    parsed, _ = cd11.parse_frame(wire)                 # our parser reads it ...
    assert first_subframe_as_gms_finds_it(wire) != parsed.subframes[0].span[0]   # ... GMS does not
