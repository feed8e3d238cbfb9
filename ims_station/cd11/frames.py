"""CD-1.1 frames: the envelope (header, trailer, CRC, frame signature) and the control frames.

Owns :class:`Frame` (the common header/trailer fields, ``to_bytes``), the control-frame payloads
(connection request/response, option request/response, acknack, alert, command request/response),
:func:`parse_frame`, :func:`iter_frames`, :func:`frame_length` and the sans-IO
:class:`FrameDecoder` for byte streams.  Data and CD-1 encapsulation frames live in ``data.py``
and register themselves here (by frame type code) when ``ims_station.cd11`` is imported.
Does not own CRC-64 and CA (``crc64.py``, ``ca.py``, another module's concern), keys (``ims_station.auth``)
or signature verification (``verify.py``).  No I/O.

Byte identity: a parsed frame keeps its header/trailer values, its signature bytes and (for data)
every subframe's raw channel data and signature, so ``parse_frame(b)[0].to_bytes() == b`` for every
frame whose padding bytes are NUL (true of every implementation seen).  ``raw`` keeps the frame's
wire bytes, which is what signatures are verified against.

Layouts per spec ``shared/specs/cd11.md`` (§ numbers below); tables in ``wire.py`` and ``docs/cd11.md``.

Reader profile: what we *build* must be accepted by the data centres' readers (the GMS receiver is
the reference), so ``to_bytes`` refuses, with a :class:`Cd11BuildError` naming the field, what they
refuse although the layout could carry it: an empty frame creator or acknack frame set, a station
type other than ``IDC``/``IMS``/empty, a service type other than ``TCP``, an option request/response
with other than exactly one option (type 1, value of 1..8 characters), alert text with leading or
trailing blanks (a reader strips them and then finds the size wrong) and, in ``data.py``, a sensor
type >= 128 (a signed byte there) or an empty site/channel name.  Parsing stays lenient about all of
these (the USGS consumer answers with responder type ``USGS``, several options are in the layout):
a received frame is judged by the relay, not refused by the codec.  Command messages are written
unpadded (as GMS writes and reads them) and read padded or not.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator, Protocol

from ims_station.cd11.crc64 import crc64
from ims_station.cd11.errors import (
    Cd11BuildError,
    Cd11CrcError,
    Cd11Error,
    Cd11FieldError,
    Cd11FrameTypeError,
    Cd11LengthError,
    Cd11TruncatedError,
)
from ims_station.cd11.timefmt import check_time, format_time
from ims_station.cd11.wire import (
    ACKNACK,
    COMMAND,
    CONNECTION,
    GAP,
    HEADER,
    MAX_AUTH_SIZE,
    MAX_FRAME_SIZE,
    MAX_GAPS,
    MAX_OPTIONS,
    OPTION_COUNT,
    OPTION_ITEM,
    SIZE,
    TRAILER,
    Reader,
    encode_ascii,
    pad4,
)

HEADER_SIZE = HEADER.size          # 36
_ZERO4 = b"\0\0\0"

# The reader profile (module docstring): values the data centres' readers accept.
STATION_TYPES = ("IDC", "IMS", "")        # GMS Cd11Validator.KNOWN_STATION_TYPES
SERVICE_TYPES = ("TCP",)                  # GMS: "UDP is not yet implemented", anything else invalid
OPTION_CONNECTION = 1                     # the only option type defined (connection establishment)
MAX_OPTION_VALUE = 8                      # GMS: option value of 1..8 characters


class Signer(Protocol):
    """What ``to_bytes`` needs of a signer (``ims_station.auth.Signer`` fits)."""

    key_id: int

    def sign(self, data: bytes) -> bytes: ...


@dataclass(frozen=True)
class Header:
    """The 36-byte frame header as read from the wire (§2.1)."""

    frame_type: int
    trailer_offset: int
    creator: str
    destination: str
    sequence: int
    series: int


@dataclass(frozen=True)
class Trailer:
    """The frame trailer as read from the wire (§2.2), with the CRC check result."""

    auth_key_id: int
    auth_size: int
    auth_value: bytes
    crc: int
    crc_ok: bool


FRAME_TYPES: dict[int, type["Frame"]] = {}


def _pack(layout, *values) -> bytes:
    try:
        return layout.struct.pack(*values)
    except struct.error as err:
        raise Cd11BuildError(f"{layout.name}: value out of range for the wire format: {err}") from None


def _padded(raw: bytes) -> bytes:
    return raw + _ZERO4[: pad4(len(raw)) - len(raw)]


def _time_field(r: Reader, raw: bytes, field: str, offset: int) -> str:
    reason = check_time(raw)
    if reason:
        raise r.fail(Cd11FieldError, reason, field, offset)
    return raw.decode("ascii")


@dataclass(kw_only=True)
class Frame:
    """Fields common to every frame: header values and the frame signature (trailer).

    ``auth_key_id``/``auth_value`` are the trailer's authentication fields; ``to_bytes(signer)``
    replaces them by a fresh signature over header + payload.  ``header``, ``trailer``, ``raw`` and
    ``offset`` are set by :func:`parse_frame` only (not compared).
    """

    FRAME_TYPE: ClassVar[int] = 0
    PAYLOAD: ClassVar[str] = ""        # field-path prefix in errors

    creator: str                       # required: readers refuse a frame without one
    destination: str = "0"
    sequence: int = 0
    series: int = 0
    auth_key_id: int = 0
    auth_value: bytes = b""
    header: Header | None = field(default=None, compare=False, repr=False)
    trailer: Trailer | None = field(default=None, compare=False, repr=False)
    raw: bytes | None = field(default=None, compare=False, repr=False)
    offset: int = field(default=0, compare=False, repr=False)

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if cls.__dict__.get("FRAME_TYPE"):
            FRAME_TYPES[cls.FRAME_TYPE] = cls

    # -- building --------------------------------------------------------------------------------
    def payload_bytes(self) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError

    def header_bytes(self, payload_length: int) -> bytes:
        trailer_offset = HEADER_SIZE + payload_length
        if trailer_offset > MAX_FRAME_SIZE:
            raise Cd11BuildError(f"frame of {trailer_offset} bytes exceeds MAX_FRAME_SIZE")
        if not self.creator:
            raise Cd11BuildError("empty (readers refuse a frame without a creator)", field="header.creator")
        return _pack(HEADER, self.FRAME_TYPE, trailer_offset,
                     encode_ascii(self.creator, 8, "header.creator"),
                     encode_ascii(self.destination, 8, "header.destination"),
                     self.sequence, self.series)

    def to_bytes(self, signer: Signer | None = None, *, _payload: bytes | None = None) -> bytes:
        """Wire bytes with CRC.  With *signer*, the trailer carries its key id and a signature over
        header + payload (§2.3); without, the frame's own ``auth_key_id``/``auth_value`` are written
        (so a parsed frame's original signature is carried through unchanged)."""
        payload = self.payload_bytes() if _payload is None else _payload
        body = self.header_bytes(len(payload)) + payload
        if signer is not None:
            key_id, auth = signer.key_id, signer.sign(body)
        else:
            key_id, auth = self.auth_key_id, self.auth_value
        if len(auth) > MAX_AUTH_SIZE:
            raise Cd11BuildError(f"trailer.auth_value: {len(auth)} bytes exceeds {MAX_AUTH_SIZE}")
        pre = b"".join((body, _pack(TRAILER, key_id, len(auth)), _padded(auth)))
        return pre + crc64(pre).to_bytes(8, "big")

    # -- parsing ---------------------------------------------------------------------------------
    @classmethod
    def _parse_payload(cls, r: Reader) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def to_dict(self, *, samples: bool = True) -> dict[str, Any]:
        """JSON-ready view: header fields, trailer fields (incl. ``crc_ok`` when parsed), payload
        (with decoded channel samples unless *samples* is false)."""
        h, t = self.header, self.trailer
        d: dict[str, Any] = {
            "frame_type": self.FRAME_TYPE,
            "frame_name": type(self).__name__,
            "trailer_offset": h.trailer_offset if h else None,
            "creator": self.creator,
            "destination": self.destination,
            "sequence": self.sequence,
            "series": self.series,
            "frame_auth_key_id": self.auth_key_id,
            "frame_auth_size": len(self.auth_value),
            "frame_auth_value_hex": self.auth_value.hex(),
        }
        if t is not None:
            d["crc64_hex"] = f"{t.crc:016x}"
            d["crc_ok"] = t.crc_ok
            d["total_bytes"] = len(self.raw) if self.raw is not None else None
            d["offset"] = self.offset
        d.update(self.payload_dict(samples=samples))
        return d

    def payload_dict(self, *, samples: bool = True) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError


# --- connection request / response (§3.1) ------------------------------------------------------
@dataclass(kw_only=True)
class _ConnectionExchange(Frame):
    PAYLOAD: ClassVar[str] = "connection"

    major_version: int = 1
    minor_version: int = 1
    station: str = ""
    station_type: str = "IMS"
    service_type: str = "TCP"
    ip: str = "0.0.0.0"
    port: int = 0
    ip2: str = "0.0.0.0"
    port2: int = 0

    def payload_bytes(self) -> bytes:
        if self.station_type not in STATION_TYPES:
            raise Cd11BuildError(f"{self.station_type!r} is not one of {STATION_TYPES} (readers refuse "
                                 "other types)", field="connection.station_type")
        if self.service_type not in SERVICE_TYPES:
            raise Cd11BuildError(f"{self.service_type!r} is not one of {SERVICE_TYPES} (readers refuse "
                                 "other services)", field="connection.service_type")
        try:
            ip = ipaddress.IPv4Address(self.ip).packed
            ip2 = ipaddress.IPv4Address(self.ip2).packed
        except ValueError as err:
            raise Cd11BuildError(f"connection.ip: {err}") from None
        return _pack(CONNECTION, self.major_version, self.minor_version,
                     encode_ascii(self.station, 8, "connection.station"),
                     encode_ascii(self.station_type, 4, "connection.station_type"),
                     encode_ascii(self.service_type, 4, "connection.service_type"),
                     ip, self.port, ip2, self.port2)

    @classmethod
    def _parse_payload(cls, r: Reader) -> dict[str, Any]:
        at = r.pos
        major, minor, station, stype, service, ip, port, ip2, port2 = r.block(CONNECTION)
        o = CONNECTION.offsets
        return dict(major_version=major, minor_version=minor,
                    station=r.ascii(station, "station", at + o["station"]),
                    station_type=r.ascii(stype, "station_type", at + o["station_type"]),
                    service_type=r.ascii(service, "service_type", at + o["service_type"]),
                    ip=str(ipaddress.IPv4Address(ip)), port=port,
                    ip2=str(ipaddress.IPv4Address(ip2)), port2=port2)

    def payload_dict(self, *, samples: bool = True) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("major_version", "minor_version", "station",
                                              "station_type", "service_type", "ip", "port", "ip2", "port2")}


@dataclass(kw_only=True)
class ConnectionRequest(_ConnectionExchange):
    """Type 1: provider -> connection manager.  ``station``, own ``ip``/``port``."""

    FRAME_TYPE: ClassVar[int] = 1


@dataclass(kw_only=True)
class ConnectionResponse(_ConnectionExchange):
    """Type 2: connection manager -> provider: where the data consumer listens (``ip``/``port``)."""

    FRAME_TYPE: ClassVar[int] = 2


# --- option request / response (§3.2) ----------------------------------------------------------
@dataclass(frozen=True)
class Option:
    """One option.  ``value`` is the text exactly as sent (USGS includes a trailing NUL in the
    size; it is kept so re-encoding is identical); ``name`` strips it."""

    type: int = 1
    value: str = ""

    @property
    def name(self) -> str:
        return self.value.rstrip("\0")


@dataclass(kw_only=True)
class _OptionExchange(Frame):
    PAYLOAD: ClassVar[str] = "option"

    options: list[Option] = field(default_factory=list)

    def payload_bytes(self) -> bytes:
        if len(self.options) != 1:
            raise Cd11BuildError(f"{len(self.options)} options (readers take exactly one)", field="option.count")
        for i, opt in enumerate(self.options):
            if opt.type != OPTION_CONNECTION:
                raise Cd11BuildError(f"type {opt.type} (only {OPTION_CONNECTION}, connection establishment, "
                                     "is defined)", field=f"option[{i}].type")
            if not 1 <= len(opt.name) <= MAX_OPTION_VALUE:
                raise Cd11BuildError(f"{opt.name!r} is not 1..{MAX_OPTION_VALUE} characters (readers "
                                     "refuse it)", field=f"option[{i}].value")
        parts = [_pack(OPTION_COUNT, len(self.options))]
        for i, opt in enumerate(self.options):
            raw = encode_ascii(opt.value.rstrip("\0"), None, f"option[{i}].value")
            raw += b"\0" * (len(opt.value) - len(opt.value.rstrip("\0")))
            parts.append(_pack(OPTION_ITEM, opt.type, len(raw)))
            parts.append(_padded(raw))
        return b"".join(parts)

    @classmethod
    def _parse_payload(cls, r: Reader) -> dict[str, Any]:
        at = r.pos
        (count,) = r.block(OPTION_COUNT)
        r.length(count, "count", at, maximum=MAX_OPTIONS, unit=OPTION_ITEM.size)
        options = []
        for i in range(count):
            at = r.pos
            otype, size = r.block(OPTION_ITEM)
            r.length(size, f"option[{i}].size", at + 4)
            vat = r.pos
            raw = r.padded(size, f"option[{i}].value")
            text = raw.rstrip(b"\0")
            value = r.ascii(text, f"option[{i}].value", vat) + "\0" * (len(raw) - len(text))
            options.append(Option(otype, value))
        return dict(options=options)

    def payload_dict(self, *, samples: bool = True) -> dict[str, Any]:
        return {"options": [{"type": o.type, "value": o.value} for o in self.options]}


@dataclass(kw_only=True)
class OptionRequest(_OptionExchange):
    """Type 3: provider -> consumer; option type 1 = connection establishment, value = frame-set name."""

    FRAME_TYPE: ClassVar[int] = 3


@dataclass(kw_only=True)
class OptionResponse(_OptionExchange):
    """Type 4: the consumer echoes the request's options."""

    FRAME_TYPE: ClassVar[int] = 4


# --- acknack (§3.3) -----------------------------------------------------------------------------
@dataclass(kw_only=True)
class Acknack(Frame):
    """Type 6.  ``frame_set`` = ``creator:destination`` of the acknowledged frames; ``lowest``/
    ``highest`` (0/-1 while empty); ``gaps`` = [(first missing, next present)) ranges, end exclusive.
    The codec does not judge gap semantics (that is the protocol layer's business)."""

    FRAME_TYPE: ClassVar[int] = 6
    PAYLOAD: ClassVar[str] = "acknack"

    frame_set: str                     # required: readers refuse an empty one
    lowest: int = 0
    highest: int = -1
    gaps: list[tuple[int, int]] = field(default_factory=list)

    def payload_bytes(self) -> bytes:
        if len(self.gaps) > MAX_GAPS:
            raise Cd11BuildError(f"acknack.gaps: {len(self.gaps)} gaps exceed {MAX_GAPS}")
        if not self.frame_set:
            raise Cd11BuildError("empty (readers refuse it)", field="acknack.frame_set")
        head = _pack(ACKNACK, encode_ascii(self.frame_set, 20, "acknack.frame_set"),
                     self.lowest, self.highest, len(self.gaps))
        return head + b"".join(_pack(GAP, a, b) for a, b in self.gaps)

    @classmethod
    def _parse_payload(cls, r: Reader) -> dict[str, Any]:
        at = r.pos
        fs, lowest, highest, count = r.block(ACKNACK)
        frame_set = r.ascii(fs, "frame_set", at)
        r.length(count, "gap_count", at + ACKNACK.offsets["gap_count"], maximum=MAX_GAPS, unit=GAP.size)
        gaps = list(GAP.struct.iter_unpack(r.buf[r.pos:r.pos + GAP.size * count]))
        r.pos += GAP.size * count
        return dict(frame_set=frame_set, lowest=lowest, highest=highest, gaps=gaps)

    def payload_dict(self, *, samples: bool = True) -> dict[str, Any]:
        return {"frame_set": self.frame_set, "lowest": self.lowest, "highest": self.highest,
                "gaps": [list(g) for g in self.gaps]}


# --- alert (§3.4) -------------------------------------------------------------------------------
@dataclass(kw_only=True)
class Alert(Frame):
    """Type 7: sent before closing a connection."""

    FRAME_TYPE: ClassVar[int] = 7
    PAYLOAD: ClassVar[str] = "alert"

    message: str = ""

    def payload_bytes(self) -> bytes:
        if self.message != self.message.strip(" "):
            # GMS strips blanks from the text it read and then refuses it: size != length.
            raise Cd11BuildError(f"{self.message!r} has leading or trailing blanks (readers refuse it)",
                                 field="alert.message")
        raw = encode_ascii(self.message, None, "alert.message")
        return _pack(SIZE, len(raw)) + _padded(raw)

    @classmethod
    def _parse_payload(cls, r: Reader) -> dict[str, Any]:
        at = r.pos
        (size,) = r.block(SIZE)
        r.length(size, "size", at)
        raw = r.padded(size, "message")
        return dict(message=r.ascii(raw, "message", at + 4))

    def payload_dict(self, *, samples: bool = True) -> dict[str, Any]:
        return {"message": self.message}


# --- command request / response (§3.5) ----------------------------------------------------------
@dataclass(kw_only=True)
class _Command(Frame):
    PAYLOAD: ClassVar[str] = "command"

    station: str = ""
    site: str = ""
    channel: str = ""
    location: str = ""
    time: str = "1970001 00:00:00.000"
    command: str = ""
    # How the messages were laid out when parsed: True if padded to 4 (older ims-station wrote so),
    # kept so a parsed frame re-encodes identically; new frames are unpadded (spec §3.5: GMS writes
    # and reads them so, and misreads a padded odd-length command message).
    padded_messages: bool = field(default=False, compare=False, repr=False)

    def _head(self) -> bytes:
        return _pack(COMMAND, encode_ascii(self.station, 8, "command.station"),
                     encode_ascii(self.site, 5, "command.site"),
                     encode_ascii(self.channel, 3, "command.channel"),
                     encode_ascii(self.location, 2, "command.location"), b"\0\0",
                     format_time(self.time).encode("ascii"))

    def _message(self, text: str, what: str) -> bytes:
        raw = encode_ascii(text, None, what)
        return _pack(SIZE, len(raw)) + (_padded(raw) if self.padded_messages else raw)

    @classmethod
    def _parse_head(cls, r: Reader) -> dict[str, Any]:
        at = r.pos
        station, site, chan, loc, _pad, time = r.block(COMMAND)
        o = COMMAND.offsets
        return dict(station=r.ascii(station, "station", at),
                    site=r.ascii(site, "site", at + o["site"]),
                    channel=r.ascii(chan, "channel", at + o["channel"]),
                    location=r.ascii(loc, "location", at + o["location"]),
                    time=_time_field(r, time, "time", at + o["time"]))

    @staticmethod
    def _parse_message(r: Reader, field: str, *, last: bool) -> tuple[str, bool]:
        """A size-prefixed message and whether padding followed it.  Writers differ on padding
        (GMS and we: none; older ims-station: to 4), so the message is taken as *size* bytes and
        padding is skipped only where the layout allows it: up to the payload end for the last
        message, or when the next size field then fits (for ASCII text only one reading fits)."""
        at = r.pos
        (size,) = r.block(SIZE)
        r.length(size, f"{field}_size", at)
        raw = bytes(r.buf[r.pos:r.pos + size])
        r.pos += size
        skip = pad4(size) - size
        if last:
            if r.end - r.pos <= 3:
                skip = r.end - r.pos
        elif r.pos + skip + 4 > r.end:
            skip = 0
        elif skip:
            # Padded layout if the following size field is consistent with the rest of the payload.
            (nxt,) = SIZE.struct.unpack_from(r.buf, r.pos + skip)
            if not 0 <= r.end - (r.pos + skip + 4) - nxt <= 3:
                skip = 0
        r.pos += skip
        return r.ascii(raw, field, at + 4), skip > 0

    def payload_dict(self, *, samples: bool = True) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("station", "site", "channel", "location", "time",
                                              "command")} | ({"response": self.response}
                                                             if hasattr(self, "response") else {})


@dataclass(kw_only=True)
class CommandRequest(_Command):
    """Type 8: consumer -> provider.  (The command vocabulary is not documented in any source.)"""

    FRAME_TYPE: ClassVar[int] = 8

    def payload_bytes(self) -> bytes:
        return self._head() + self._message(self.command, "command.command")

    @classmethod
    def _parse_payload(cls, r: Reader) -> dict[str, Any]:
        d = cls._parse_head(r)
        d["command"], d["padded_messages"] = cls._parse_message(r, "command", last=True)
        return d


@dataclass(kw_only=True)
class CommandResponse(_Command):
    """Type 9: provider -> consumer; ``station`` is the responder; carries a sequence number."""

    FRAME_TYPE: ClassVar[int] = 9

    response: str = ""

    def payload_bytes(self) -> bytes:
        return (self._head() + self._message(self.command, "command.command")
                + self._message(self.response, "command.response"))

    @classmethod
    def _parse_payload(cls, r: Reader) -> dict[str, Any]:
        d = cls._parse_head(r)
        d["command"], pad1 = cls._parse_message(r, "command", last=False)
        d["response"], pad2 = cls._parse_message(r, "response", last=True)
        d["padded_messages"] = pad1 or pad2
        return d


# --- envelope parsing ---------------------------------------------------------------------------
def frame_length(buf, offset: int = 0, *, max_frame_size: int = MAX_FRAME_SIZE) -> int | None:
    """Total wire length of the frame starting at *offset*, or None if more bytes are needed to
    know it.  Raises :class:`Cd11Error` if the header cannot start a valid frame."""
    have = len(buf) - offset
    if have < HEADER_SIZE:
        return None
    ftype, toff = struct.unpack_from(">ii", buf, offset)
    if ftype not in FRAME_TYPES:
        hint = " (GMS-only 'custom reset', not CD-1.1)" if ftype == 26 else ""
        raise Cd11FrameTypeError(f"unknown frame type {ftype}{hint}", frame_type=None,
                                 field="header.frame_type", offset=offset)
    if toff < HEADER_SIZE or toff > max_frame_size:
        raise Cd11LengthError(f"trailer offset {toff} outside [{HEADER_SIZE}, {max_frame_size}]",
                              frame_type=ftype, field="header.trailer_offset", offset=offset + 4)
    if have < toff + TRAILER.size:
        return None
    (auth_size,) = struct.unpack_from(">i", buf, offset + toff + 4)
    if not 0 <= auth_size <= MAX_AUTH_SIZE:
        raise Cd11LengthError(f"authentication size {auth_size} outside [0, {MAX_AUTH_SIZE}]",
                              frame_type=ftype, field="trailer.auth_size", offset=offset + toff + 4)
    return toff + TRAILER.size + pad4(auth_size) + 8


def parse_frame(buf, offset: int = 0, *, check_crc: bool = True,
                max_frame_size: int = MAX_FRAME_SIZE) -> tuple[Frame, int]:
    """Parse the frame at *offset* of *buf*; return ``(frame, end_offset)``.

    With ``check_crc`` (default) a CRC mismatch raises :class:`Cd11CrcError` before the payload
    is looked at; without, the result is in ``frame.trailer.crc_ok``.  Channel samples are not
    decoded here (``ChannelSubframe.samples()`` does, on demand).
    """
    total = frame_length(buf, offset, max_frame_size=max_frame_size)
    have = len(buf) - offset
    if total is None or have < total:
        ftype = struct.unpack_from(">i", buf, offset)[0] if have >= 4 else None
        if have < HEADER_SIZE:
            field, needed = "header", HEADER_SIZE
        elif total is None:
            field, needed = "trailer.auth_size", struct.unpack_from(">i", buf, offset + 4)[0] + 8
        else:
            field, needed = "trailer", total
        raise Cd11TruncatedError(f"buffer ends after {have} bytes, the frame needs {needed}"
                                 + ("" if total else " or more"),
                                 needed=needed, frame_type=ftype if ftype in FRAME_TYPES else None,
                                 field=field, offset=len(buf))
    view = memoryview(buf)
    raw = bytes(view[offset:offset + total])
    ftype, toff, creator, dest, seq, series = HEADER.struct.unpack_from(raw, 0)
    cls = FRAME_TYPES[ftype]
    key_id, auth_size = TRAILER.struct.unpack_from(raw, toff)
    auth = raw[toff + 8:toff + 8 + auth_size]
    crc = int.from_bytes(raw[-8:], "big")
    crc_ok = crc64(raw[:-8]) == crc
    if check_crc and not crc_ok:
        raise Cd11CrcError(f"CRC-64 0x{crc:016x} does not match the frame (0x{crc64(raw[:-8]):016x})",
                           frame_type=ftype, field="trailer.crc", offset=offset + total - 8)
    hr = Reader(raw, 0, HEADER_SIZE, ftype, base=offset)
    hr.path = "header"
    kw = dict(creator=hr.ascii(creator, "creator", 8), destination=hr.ascii(dest, "destination", 16))
    # The payload is parsed from the frame's own copy; ``base`` makes error offsets absolute.
    r = Reader(raw, HEADER_SIZE, toff, ftype, base=offset)
    r.path = cls.PAYLOAD
    try:
        kw.update(cls._parse_payload(r))
        if r.pos != r.end:
            raise r.fail(Cd11LengthError, f"{r.end - r.pos} bytes left over before the trailer", "end")
    except Cd11Error as err:
        if not crc_ok:  # (only reachable with check_crc=False) say so: the damage is likely in transit
            err.reason += " (and the CRC-64 does not match)"
            err.args = (f"{err.args[0]} (and the CRC-64 does not match)",)
        raise
    frame = cls(sequence=seq, series=series, auth_key_id=key_id, auth_value=auth, **kw)
    frame.header = Header(ftype, toff, kw["creator"], kw["destination"], seq, series)
    frame.trailer = Trailer(key_id, auth_size, auth, crc, crc_ok)
    frame.raw = raw
    frame.offset = offset
    return frame, offset + total


def iter_frames(buf, *, check_crc: bool = True, max_frame_size: int = MAX_FRAME_SIZE) -> Iterator[Frame]:
    """Parse concatenated frames until the end of *buf* (errors propagate with their offsets)."""
    offset = 0
    while offset < len(buf):
        frame, offset = parse_frame(buf, offset, check_crc=check_crc, max_frame_size=max_frame_size)
        yield frame


class FrameDecoder:
    """Sans-IO stream decoder: ``feed(bytes) -> [frames]``.

    CD-1.1 has no resynchronisation marker, so after a :class:`Cd11Error` the stream is unusable
    and the caller should send an Alert and close the connection.  Offsets in errors and in
    ``frame.offset`` are relative to the decoder's internal buffer, not to the stream.
    """

    def __init__(self, *, check_crc: bool = True, max_frame_size: int = MAX_FRAME_SIZE) -> None:
        self._buf = bytearray()
        self._check_crc = check_crc
        self._max = max_frame_size

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        out = []
        pos = 0
        while True:
            total = frame_length(self._buf, pos, max_frame_size=self._max)
            if total is None or len(self._buf) - pos < total:
                break
            frame, pos = parse_frame(self._buf, pos, check_crc=self._check_crc, max_frame_size=self._max)
            out.append(frame)
        del self._buf[:pos]
        return out

    @property
    def buffered(self) -> int:
        """Bytes held while waiting for the rest of a frame."""
        return len(self._buf)


# Data and CD-1 encapsulation frames register themselves (frame types 5 and 13) on import; import
# them here so that parse_frame knows every type whichever module the caller imported first.
from ims_station.cd11 import data as _data  # noqa: E402,F401  (circular by design; names above exist)
