"""CD-1.1 data frames (type 5) and CD-1 encapsulation frames (type 13, parse only).

Owns the channel subframe header (§4.1), channel subframes (§4.2) with their channel description
(§4.3), the uncompressed sample formats s4, s3, s2, i4, i2 (§4.4), subframe signatures, the edge's
builder :func:`build_data_frame` (which keeps every subframe below 64 KiB, splitting a channel into
consecutive subframes if need be: ``MAX_CHANNEL_LENGTH``) and re-signer :func:`resign_data_frame`.
Channel status blocks are interpreted by ``status.py``; CA by ``ca.py``; the frame envelope by
``frames.py``.

A :class:`ChannelSubframe` keeps its channel data as sent (``data``: CA stream or uncompressed
bytes, unpadded) and its signature bytes, so a parsed frame re-encodes byte-identically;
:meth:`ChannelSubframe.samples` decodes on demand.  Parsing checks every length against the bytes
left in the enclosing field and the maxima in ``wire.py`` before using it.

Signed range of a subframe (§4.2): the contiguous bytes from the channel description to the
subframe count, i.e. ``[subframe + 8, subframe + auth_offset)``, padding included.  We build with
transformation 1 (CA *before* signature), so a signature covers exactly the bytes sent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, ClassVar, NamedTuple, Sequence

import numpy as np

from ims_station.cd11 import ca
from ims_station.cd11.errors import Cd11BuildError, Cd11DataError, Cd11FieldError, Cd11LengthError
from ims_station.cd11.frames import Frame, Signer, _pack, _padded, _time_field
from ims_station.cd11.status import ChannelStatus
from ims_station.cd11.timefmt import format_time, to_datetime
from ims_station.errors import LocalProtocolError
from ims_station.cd11.wire import (
    DATA_HEADER,
    MAX_AUTH_SIZE,
    MAX_CHANNELS,
    MAX_SAMPLES,
    SIZE,
    SUBFRAME,
    SUBFRAME_TAIL,
    Reader,
    encode_ascii,
    pad4,
)

# Transformation codes (channel description byte 2).
TRANSFORM_NONE = 0
TRANSFORM_CA_BEFORE_SIGNATURE = 1
TRANSFORM_CA_AFTER_SIGNATURE = 2
TRANSFORM_STEIM_BEFORE_SIGNATURE = 3
TRANSFORM_STEIM_AFTER_SIGNATURE = 4
CA_TRANSFORMS = (TRANSFORM_CA_BEFORE_SIGNATURE, TRANSFORM_CA_AFTER_SIGNATURE)

SENSOR_SEISMIC, SENSOR_HYDROACOUSTIC, SENSOR_INFRASONIC, SENSOR_WEATHER = 0, 1, 2, 3
MAX_SENSOR_TYPE = 127      # GMS reads the byte signed: >= 128 is a negative, unknown sensor type
# A subframe's channel length must stay below 64 KiB: in a frame with an odd channel count GMS finds
# the channel string's 2 pad bytes by peeking whether the next int32 is 0, i.e. whether the high 16
# bits of the first subframe's channel length are 0 (spec §4.1).  We keep every subframe below it,
# wherever it stands; the builder splits a channel into consecutive subframes to get there.
MAX_CHANNEL_LENGTH = 0xFFFF

# Uncompressed formats: numpy dtype (None = 3-byte, handled apart) and bytes per sample.
SAMPLE_FORMATS: dict[str, tuple[str | None, int]] = {
    "s4": (">i4", 4), "s3": (None, 3), "s2": (">i2", 2), "i4": ("<i4", 4), "i2": ("<i2", 2),
}
_LIMITS = {2: (-(1 << 15), (1 << 15) - 1), 3: (-(1 << 23), (1 << 23) - 1), 4: (-(1 << 31), (1 << 31) - 1)}
# Fixed bytes of a subframe after its channel-length field: 60 of SUBFRAME + data size + tail.
_SUBFRAME_FIXED = SUBFRAME.size - 4 + SIZE.size + SUBFRAME_TAIL.size
_EPOCH_2000 = datetime(2000, 1, 1, tzinfo=timezone.utc)


def encode_samples(samples, data_format: str) -> bytes:
    """Serialise int samples in an uncompressed CD-1.1 format; refuse values that do not fit."""
    try:
        dtype, width = SAMPLE_FORMATS[data_format]
    except KeyError:
        raise Cd11BuildError(f"unsupported uncompressed data format {data_format!r}") from None
    x = np.asarray(samples)
    if x.ndim != 1 or (x.size and x.dtype.kind not in "iu"):
        raise Cd11BuildError(f"samples must be a 1-D integer array, got {x.dtype} {x.shape}")
    lo, hi = _LIMITS[width]
    if x.size and (int(x.min()) < lo or int(x.max()) > hi):
        raise Cd11BuildError(f"samples outside the range of format {data_format!r}")
    if dtype is not None:
        return x.astype(dtype).tobytes()
    be = x.astype(">i4").view(np.uint8).reshape(-1, 4)
    return be[:, 1:].tobytes()


def decode_samples(data: bytes, nsamples: int, data_format: str) -> np.ndarray:
    """Uncompressed bytes -> int32 array.  ValueError if the size does not match (callers wrap it)."""
    dtype, width = SAMPLE_FORMATS[data_format]
    if len(data) != nsamples * width:
        raise ValueError(f"{len(data)} bytes for {nsamples} samples of {data_format!r} "
                         f"(expected {nsamples * width})")
    if dtype is not None:
        return np.frombuffer(data, dtype=dtype).astype(np.int32)
    b = np.frombuffer(data, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
    v = (b[:, 0] << 16) | (b[:, 1] << 8) | b[:, 2]
    return np.where(v & 0x800000, v - 0x1000000, v).astype(np.int32)


class ChannelId(NamedTuple):
    """One entry of the channel string (site 5, channel 3, location 2 characters)."""

    site: str
    channel: str
    location: str = ""


@dataclass(kw_only=True)
class ChannelDescription:
    """The 24-byte channel description (§4.3)."""

    authentication: int = 0            # 0 off, 1 subframe signed
    transformation: int = TRANSFORM_NONE
    sensor_type: int = SENSOR_SEISMIC
    option_flag: int = 0               # 1 = calib/calper meaningful
    site: str = ""
    channel: str = ""
    location: str = ""
    data_format: str = "s4"            # format of the samples before any compression
    calib: float = 0.0
    calper: float = 0.0

    def check_readable(self, where: str = "subframe") -> None:
        """Refuse what the data centres' readers refuse although the layout could carry it (the
        reader profile of ``frames.py``): a sensor type >= 128, an empty site or channel name."""
        if not 0 <= self.sensor_type <= MAX_SENSOR_TYPE:
            raise Cd11BuildError(f"{self.sensor_type} outside 0..{MAX_SENSOR_TYPE} (readers take the byte "
                                 "as signed and refuse a negative type)", field=f"{where}.sensor_type")
        for name in ("site", "channel"):
            if not getattr(self, name):
                raise Cd11BuildError("empty (readers refuse it)", field=f"{where}.{name}")


@dataclass(kw_only=True)
class ChannelSubframe:
    """One channel subframe.  ``data`` is the channel data field as sent (unpadded); ``status``
    the raw channel status field ('' if none; see :attr:`status_format1`)."""

    description: ChannelDescription
    time: str                          # time stamp of the first sample
    time_length_ms: int
    nsamples: int
    status: bytes = b""
    data: bytes = b""
    subframe_count: int = 0
    auth_key_id: int = 0
    auth_value: bytes = b""
    # Set by parsing (not compared): offset of the subframe in its frame's ``raw``, absolute
    # offset of the channel data in the parsed buffer, field path and frame type for errors.
    span: tuple[int, int] | None = field(default=None, compare=False, repr=False)
    where: tuple[int, str, int] | None = field(default=None, compare=False, repr=False)

    # -- conveniences ----------------------------------------------------------------------------
    @property
    def site(self) -> str:
        return self.description.site

    @property
    def channel(self) -> str:
        return self.description.channel

    @property
    def location(self) -> str:
        return self.description.location

    @property
    def status_format1(self) -> ChannelStatus | None:
        return ChannelStatus.from_bytes(self.status)

    @property
    def auth_offset(self) -> int:
        """Subframe-relative offset of the authentication key id (§4.2, verified on real frames)."""
        return 4 + SUBFRAME.size - 4 + pad4(len(self.status)) + 4 + pad4(len(self.data)) + 4

    def samples(self) -> np.ndarray:
        """Decoded samples (int32).  Raises :class:`Cd11DataError` naming the subframe."""
        ftype, path, data_off = self.where or (5, "subframe", 0)
        d = self.description

        def fail(reason: str, extra: int = 0) -> Cd11DataError:
            return Cd11DataError(reason, frame_type=ftype, field=f"{path}.channel_data",
                                 offset=data_off + extra)

        if d.transformation in CA_TRANSFORMS:
            try:
                return ca.decode(self.data, self.nsamples)
            except ca.CaError as err:
                raise fail(f"Canadian compression: {err.reason}", err.offset) from None
        if d.transformation != TRANSFORM_NONE:
            raise fail(f"transformation {d.transformation} (Steim or unknown) is not supported")
        if d.data_format not in SAMPLE_FORMATS:
            raise fail(f"uncompressed data format {d.data_format!r} is not supported")
        try:
            return decode_samples(self.data, self.nsamples, d.data_format)
        except ValueError as err:
            raise fail(str(err)) from None

    # -- wire ------------------------------------------------------------------------------------
    def signed_bytes(self) -> bytes:
        """The bytes a subframe signature covers: channel description .. subframe count.  (No reader-
        profile check here: verification re-serialises received subframes with it.)"""
        d = self.description
        if not (math.isfinite(d.calib) and math.isfinite(d.calper)):
            raise Cd11BuildError(f"subframe {d.site}/{d.channel}: calib/calper must be finite")
        head = _pack(SUBFRAME, 0, 0, d.authentication, d.transformation, d.sensor_type, d.option_flag,
                     encode_ascii(d.site, 5, "subframe.site"),
                     encode_ascii(d.channel, 3, "subframe.channel"),
                     encode_ascii(d.location, 2, "subframe.location"),
                     encode_ascii(d.data_format, 2, "subframe.data_format"),
                     d.calib, d.calper, format_time(self.time).encode("ascii"),
                     self.time_length_ms, self.nsamples, len(self.status))
        return b"".join((head[8:], _padded(self.status), _pack(SIZE, len(self.data)),
                         _padded(self.data), _pack(SIZE, self.subframe_count)))

    def to_bytes(self, *, _body: bytes | None = None) -> bytes:
        self.description.check_readable()
        body = self.signed_bytes() if _body is None else _body
        auth = self.auth_value
        if len(auth) > MAX_AUTH_SIZE:
            raise Cd11BuildError(f"subframe auth_value: {len(auth)} bytes exceeds {MAX_AUTH_SIZE}")
        auth_offset = 8 + len(body)
        channel_length = auth_offset + 8 + pad4(len(auth)) - 4
        if channel_length > MAX_CHANNEL_LENGTH:
            raise Cd11BuildError(f"{channel_length} bytes ({self.nsamples} samples of {self.site}/{self.channel}) "
                                 f"exceed {MAX_CHANNEL_LENGTH}, which readers misparse (build_data_frame "
                                 "splits such a channel)", field="subframe.channel_length")
        return b"".join((_pack(SIZE, channel_length), _pack(SIZE, auth_offset), body,
                         _pack(SIZE, self.auth_key_id), _pack(SIZE, len(auth)), _padded(auth)))

    def sign(self, signer: Signer) -> bytes:
        """Set the authentication flag and key id and sign the subframe (in place); returns the
        signed bytes (so a builder need not serialise them twice)."""
        self.description.check_readable()     # never sign what will not be sent
        self.description.authentication = 1
        self.auth_key_id = signer.key_id
        body = self.signed_bytes()
        self.auth_value = signer.sign(body)
        return body

    def to_dict(self, *, samples: bool = True) -> dict[str, Any]:
        d = self.description
        out: dict[str, Any] = {
            "site": d.site, "chan": d.channel, "loc": d.location,
            "auth_flag": d.authentication, "transformation": d.transformation,
            "sensor_type": d.sensor_type, "option_flag": d.option_flag, "data_format": d.data_format,
            "calib": d.calib, "calper": d.calper, "time_stamp": self.time,
            "subframe_time_length_ms": self.time_length_ms, "nsamples": self.nsamples,
            "status_size": len(self.status), "status_hex": self.status.hex(),
        }
        st = self.status_format1
        if st is not None:
            out["status"] = st.to_dict()
        out.update({
            "data_size": len(self.data), "subframe_count": self.subframe_count,
            "auth_offset": self.auth_offset,
            "channel_length": self.auth_offset + 8 + pad4(len(self.auth_value)) - 4,
            "auth_key_id": self.auth_key_id, "auth_size": len(self.auth_value),
            "auth_value_hex": self.auth_value.hex(),
        })
        if samples:
            try:
                out["samples"] = self.samples().tolist()
            except Cd11DataError as err:
                out["samples"] = None
                out["samples_error"] = str(err)
        return out


def _parse_subframe(r: Reader, index: int) -> ChannelSubframe:
    r.path = f"data.subframe[{index}]"
    start = r.pos
    r.need(4, "channel_length")
    vals = r.block(SUBFRAME)
    (length, auth_offset, auth_flag, transformation, sensor, option, site, chan, loc, fmt,
     calib, calper, time, time_length, nsamples, status_size) = vals
    o = SUBFRAME.offsets
    if length % 4 or length < _SUBFRAME_FIXED:
        raise r.fail(Cd11LengthError, f"{length} is not a multiple of 4 >= {_SUBFRAME_FIXED}",
                     "channel_length", start)
    if length > r.end - (start + 4):
        raise r.fail(Cd11LengthError, f"{length} points past the end of the payload "
                                      f"({r.end - start - 4} bytes left)", "channel_length", start)
    outer_end, r.end = r.end, start + 4 + length
    desc = ChannelDescription(
        authentication=auth_flag, transformation=transformation, sensor_type=sensor,
        option_flag=option,
        site=r.ascii(site, "site", start + o["site"]),
        channel=r.ascii(chan, "channel", start + o["channel"]),
        location=r.ascii(loc, "location", start + o["location"]),
        data_format=r.ascii(fmt, "data_format", start + o["data_format"]),
        calib=calib, calper=calper)
    for name, value in (("calib", calib), ("calper", calper)):
        if not math.isfinite(value):  # NaN payloads would not survive a float round trip either
            raise r.fail(Cd11FieldError, f"{value} is not a finite number", name, start + o[name])
    time_text = _time_field(r, time, "time", start + o["time"])
    if time_length < 0:
        raise r.fail(Cd11FieldError, f"negative ({time_length})", "time_length", start + o["time_length"])
    if not 0 <= nsamples <= MAX_SAMPLES:
        raise r.fail(Cd11LengthError, f"{nsamples} outside [0, {MAX_SAMPLES}]", "samples",
                     start + o["samples"])
    r.length(status_size, "status_size", start + o["status_size"])
    status = r.padded(status_size, "status")
    at = r.pos
    (data_size,) = r.block(SIZE)
    r.length(data_size, "data_size", at)
    data_at = r.pos
    data = r.padded(data_size, "channel_data")
    if transformation == TRANSFORM_NONE and desc.data_format in SAMPLE_FORMATS:
        width = SAMPLE_FORMATS[desc.data_format][1]
        if data_size != nsamples * width:
            raise r.fail(Cd11LengthError, f"{data_size} bytes but {nsamples} samples of "
                                          f"{desc.data_format!r} need {nsamples * width}",
                         "data_size", at)
    key_at = r.pos + 4
    count, key_id, auth_size = r.block(SUBFRAME_TAIL)
    if key_at - start != auth_offset:
        raise r.fail(Cd11FieldError, f"{auth_offset} but the key identifier is at subframe offset "
                                     f"{key_at - start}", "auth_offset", start + 4)
    r.length(auth_size, "auth_size", key_at + 4, maximum=MAX_AUTH_SIZE)
    auth = r.padded(auth_size, "auth_value")
    if r.pos != r.end:
        raise r.fail(Cd11LengthError, f"{length} but the subframe's fields end {r.end - r.pos} bytes "
                                      "earlier", "channel_length", start)
    r.end = outer_end
    return ChannelSubframe(
        description=desc, time=time_text, time_length_ms=time_length, nsamples=nsamples,
        status=status, data=data, subframe_count=count, auth_key_id=key_id, auth_value=auth,
        span=(start, auth_offset), where=(r.frame_type, r.path, r.base + data_at))


@dataclass(kw_only=True)
class DataFrame(Frame):
    """Type 5.  ``channel_ids`` is the channel string (kept apart from the subframes' own
    descriptions: real stations put a country code in its location field)."""

    FRAME_TYPE: ClassVar[int] = 5
    PAYLOAD: ClassVar[str] = "data"

    frame_time_length_ms: int = 10_000
    nominal_time: str = ""
    channel_ids: list[ChannelId] = field(default_factory=list)
    subframes: list[ChannelSubframe] = field(default_factory=list)

    def channel_string(self) -> bytes:
        return b"".join(encode_ascii(c.site, 5, "data.channel_string.site")
                        + encode_ascii(c.channel, 3, "data.channel_string.channel")
                        + encode_ascii(c.location, 2, "data.channel_string.location")
                        for c in self.channel_ids)

    def payload_bytes(self, *, _subframe_bytes: Sequence[bytes] | None = None) -> bytes:
        n = len(self.subframes)
        if len(self.channel_ids) != n:
            raise Cd11BuildError(f"data: {len(self.channel_ids)} channel ids for {n} subframes")
        if n > MAX_CHANNELS:
            raise Cd11BuildError(f"data: {n} channels exceed {MAX_CHANNELS}")
        cs = self.channel_string()
        head = _pack(DATA_HEADER, n, self.frame_time_length_ms,
                     format_time(self.nominal_time).encode("ascii"), len(cs))
        if _subframe_bytes is None:
            _subframe_bytes = [sf.to_bytes() for sf in self.subframes]
        return b"".join([head, _padded(cs), *_subframe_bytes])

    @classmethod
    def _parse_payload(cls, r: Reader) -> dict[str, Any]:
        at = r.pos
        nch, ftl, nominal, cs_count = r.block(DATA_HEADER)
        o = DATA_HEADER.offsets
        nominal_time = _time_field(r, nominal, "nominal_time", at + o["nominal_time"])
        if ftl < 0:
            raise r.fail(Cd11FieldError, f"negative ({ftl})", "frame_time_length", at + 4)
        r.length(nch, "channel_count", at, maximum=MAX_CHANNELS, unit=10 + 4 + _SUBFRAME_FIXED)
        if cs_count != 10 * nch:
            raise r.fail(Cd11FieldError, f"{cs_count} disagrees with the channel count {nch} "
                                         f"(expected {10 * nch})", "channel_string_count",
                         at + o["channel_string_count"])
        cs_at = r.pos
        cs = r.padded(cs_count, "channel_string")
        ids = [ChannelId(r.ascii(cs[i:i + 5], f"channel_string[{i // 10}].site", cs_at + i),
                         r.ascii(cs[i + 5:i + 8], f"channel_string[{i // 10}].channel", cs_at + i + 5),
                         r.ascii(cs[i + 8:i + 10], f"channel_string[{i // 10}].location", cs_at + i + 8))
               for i in range(0, cs_count, 10)]
        subframes = [_parse_subframe(r, i) for i in range(nch)]
        r.path = "data"
        return dict(frame_time_length_ms=ftl, nominal_time=nominal_time, channel_ids=ids,
                    subframes=subframes)

    def payload_dict(self, *, samples: bool = True) -> dict[str, Any]:
        return {
            "frame_time_length_ms": self.frame_time_length_ms,
            "nominal_time": self.nominal_time,
            "channel_count": len(self.subframes),
            "channel_string": self.channel_string().decode("ascii"),
            "subframes": [sf.to_dict(samples=samples) for sf in self.subframes],
        }


@dataclass(kw_only=True)
class Cd1Encapsulation(DataFrame):
    """Type 13, CD-1 encapsulation: parsed exactly like a data frame (GMS does the same); its
    ``CD``-format channel data are kept as bytes and not decoded.  Legacy; we never build it (the
    generic ``to_bytes`` still re-encodes a parsed one identically)."""

    FRAME_TYPE: ClassVar[int] = 13
    PAYLOAD: ClassVar[str] = "cd1"


# --- the edge's builder -------------------------------------------------------------------------
class ChannelInput(NamedTuple):
    """One channel for :func:`build_data_frame`.  ``time`` is the first sample's time (datetime,
    POSIX seconds or time-stamp text); ``status`` a :class:`ChannelStatus`, raw bytes or None;
    ``signer`` signs the subframe (None = unsigned)."""

    site: str
    channel: str
    location: str
    samples: Any
    sample_rate: float
    time: Any
    status: ChannelStatus | bytes | None = None
    signer: Signer | None = None
    sensor_type: int = SENSOR_SEISMIC
    calib: float | None = None
    calper: float | None = None


def sequence_from_time(nominal_time: datetime | float | str, frame_seconds: int = 10) -> int:
    """Sequence number derived from the nominal time, as the USGS sender does: frames of
    *frame_seconds* since 2000-01-01.  Survives restarts and stays monotonic across reconnects."""
    text = format_time(nominal_time)
    return int((to_datetime(text) - _EPOCH_2000).total_seconds() // frame_seconds)


def make_subframe(ch: ChannelInput | Sequence, *, compress: bool = True) -> ChannelSubframe:
    """Build (and sign, if the channel has a signer) one subframe.  A channel too long for one
    subframe (:data:`MAX_CHANNEL_LENGTH`) is a :class:`Cd11BuildError`: use :func:`build_data_frame`."""
    built = _make_subframes(ch, compress)
    if len(built) > 1:
        raise Cd11BuildError(f"{len(built)} subframes needed to stay below {MAX_CHANNEL_LENGTH} bytes each",
                             field="subframe.channel_length")
    return built[0][0]


# Largest signed range (channel description .. subframe count) that leaves room for any signature
# (up to MAX_AUTH_SIZE) within MAX_CHANNEL_LENGTH: channel length = signed range + 12 + pad4(auth).
_MAX_SIGNED = MAX_CHANNEL_LENGTH - 12 - MAX_AUTH_SIZE


def _later(t: Any, seconds: float) -> Any:
    """*t* (datetime, POSIX seconds or time-stamp text) plus *seconds*, in a form format_time takes."""
    if isinstance(t, datetime):
        return t + timedelta(seconds=seconds)
    if isinstance(t, str):
        return to_datetime(t) + timedelta(seconds=seconds)
    return float(t) + seconds


def _make_subframes(ch, compress: bool) -> list[tuple[ChannelSubframe, bytes]]:
    """[(subframe, its wire bytes)] for one channel: one subframe, or consecutive ones when a
    single subframe would reach :data:`MAX_CHANNEL_LENGTH` (split in halves on CA block
    boundaries, so the pieces still compress; each piece's first-sample time is the original
    time plus its offset, rounded to the millisecond like every CD-1.1 time stamp)."""
    ch = ch if isinstance(ch, ChannelInput) else ChannelInput(*ch)
    sf = _subframe_unsigned(ch, compress)
    if sf.auth_offset - 8 <= _MAX_SIGNED:          # the signed range's length, not serialised yet
        body = sf.sign(ch.signer) if ch.signer is not None else sf.signed_bytes()
        return [(sf, sf.to_bytes(_body=body))]
    n = sf.nsamples
    half = n // 2 // ca.BLOCK * ca.BLOCK or n // 2
    if half == 0:
        raise Cd11BuildError(f"one sample of {ch.site}/{ch.channel} exceeds {MAX_CHANNEL_LENGTH} bytes",
                             field="subframe.channel_length")
    x = np.asarray(ch.samples)
    return (_make_subframes(ch._replace(samples=x[:half]), compress)
            + _make_subframes(ch._replace(samples=x[half:], time=_later(ch.time, half / ch.sample_rate)),
                              compress))


def _subframe_unsigned(ch: ChannelInput, compress: bool) -> ChannelSubframe:
    """The subframe of *ch* (all its samples), not signed yet."""
    x = np.asarray(ch.samples)
    if x.ndim != 1 or (x.size and x.dtype.kind not in "iu"):
        raise Cd11BuildError(f"{ch.site}/{ch.channel}: samples must be a 1-D integer array")
    if not ch.sample_rate or ch.sample_rate <= 0:
        raise Cd11BuildError(f"{ch.site}/{ch.channel}: sample rate must be positive")
    transformation, data = TRANSFORM_NONE, None
    if compress and x.size and x.size % ca.BLOCK == 0:
        # ca.encode refuses exactly what ca.can_encode rejects (second differences beyond 32 bits);
        # asking it directly saves can_encode's separate numpy pass (~15% of a frame build).
        try:
            transformation, data = TRANSFORM_CA_BEFORE_SIGNATURE, ca.encode(x)
        except LocalProtocolError:
            transformation = TRANSFORM_NONE
    if transformation == TRANSFORM_NONE:  # CA needs a multiple of 20 samples, differences in 32 bits
        data = encode_samples(x, "s4")
    status = ch.status.to_bytes() if isinstance(ch.status, ChannelStatus) else (ch.status or b"")
    calibrated = ch.calib is not None
    sf = ChannelSubframe(
        description=ChannelDescription(
            transformation=transformation, sensor_type=ch.sensor_type, option_flag=int(calibrated),
            site=ch.site, channel=ch.channel, location=ch.location, data_format="s4",
            calib=float(ch.calib or 0.0), calper=float(ch.calper or (1.0 if calibrated else 0.0))),
        time=format_time(ch.time), time_length_ms=int(round(x.size * 1000 / ch.sample_rate)),
        nsamples=int(x.size), status=bytes(status), data=data)
    sf.description.check_readable()
    return sf


def make_data_frame(station: str, sequence: int, nominal_time: datetime | float | str,
                    channels: Sequence[ChannelInput | Sequence], *, creator: str | None = None,
                    destination: str = "0", frame_time_length_ms: int = 10_000, series: int = 0,
                    compress: bool = True) -> DataFrame:
    """A :class:`DataFrame` with signed subframes (the frame signature is added by ``to_bytes``).
    *station* is the frame creator unless *creator* is given."""
    return _make_data_frame(station, sequence, nominal_time, channels, creator=creator,
                            destination=destination, frame_time_length_ms=frame_time_length_ms,
                            series=series, compress=compress)[0]


def _make_data_frame(station, sequence, nominal_time, channels, *, creator=None, destination="0",
                     frame_time_length_ms=10_000, series=0, compress=True):
    built = [piece for ch in channels for piece in _make_subframes(ch, compress)]
    subframes = [sf for sf, _ in built]
    frame = DataFrame(creator=creator or station, destination=destination, sequence=sequence,
                      series=series, frame_time_length_ms=frame_time_length_ms,
                      nominal_time=format_time(nominal_time),
                      channel_ids=[ChannelId(sf.site, sf.channel, sf.location) for sf in subframes],
                      subframes=subframes)
    return frame, [wire for _, wire in built]


def build_data_frame(station: str, sequence: int, nominal_time: datetime | float | str,
                     channels: Sequence[ChannelInput | Sequence], frame_signer: Signer | None = None,
                     **kw: Any) -> bytes:
    """Wire bytes of a data frame: each channel CA-compressed when CA can carry it (else s4),
    each subframe signed by its channel's signer, the frame signed by *frame_signer*, CRC-64.
    A channel whose subframe would reach :data:`MAX_CHANNEL_LENGTH` (64 KiB, which readers
    misparse) is sent as several consecutive subframes of that channel, each below it.

    ``channels`` items are :class:`ChannelInput` or tuples ``(site, chan, loc, samples,
    sample_rate, time, status, signer)``; keyword arguments as :func:`make_data_frame`."""
    frame, subframe_bytes = _make_data_frame(station, sequence, nominal_time, channels, **kw)
    return frame.to_bytes(frame_signer, _payload=frame.payload_bytes(_subframe_bytes=subframe_bytes))


def resign_data_frame(raw: bytes, frame_signer: Signer | None,
                      subframe_signer: Callable[[ChannelSubframe], Signer | None] | None = None) -> bytes:
    """The data frame *raw* (CRC checked) signed again: each subframe for which *subframe_signer*
    gives a signer, then the frame with *frame_signer* (None: the frame signature is kept).  Header,
    sequence number, channel data and status are unchanged; a subframe without a new signer keeps
    its bytes.  Used to re-sign frames waiting in a station's outbox (``ims-station edge outbox
    resign``).  Transformation 2 subframes are refused: their signed bytes are not the sent bytes."""
    from ims_station.cd11.errors import Cd11FrameTypeError
    from ims_station.cd11.frames import parse_frame

    frame, end = parse_frame(raw)
    if not isinstance(frame, DataFrame) or isinstance(frame, Cd1Encapsulation):
        raise Cd11FrameTypeError(f"frame type {frame.FRAME_TYPE} is not a data frame: only data frames "
                                 "are re-signed")
    if end != len(raw):
        raise Cd11BuildError(f"{len(raw) - end} bytes after the frame: expected exactly one frame")
    parts = []
    for sf in frame.subframes:
        signer = subframe_signer(sf) if subframe_signer is not None else None
        if signer is None:
            parts.append(sf.to_bytes())
            continue
        if sf.description.transformation == TRANSFORM_CA_AFTER_SIGNATURE:
            raise Cd11BuildError(f"subframe {sf.site}/{sf.channel}: transformation 2 (CA after signature) "
                                 "cannot be re-signed")
        parts.append(sf.to_bytes(_body=sf.sign(signer)))
    return frame.to_bytes(frame_signer, _payload=frame.payload_bytes(_subframe_bytes=parts))
