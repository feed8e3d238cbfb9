"""The CD-1.1 wire layouts, declared once as data, and the bounds-checked reader that applies them.

Owns: every fixed-size block of the format (header, trailer, each payload's fixed part, channel
subframe header, channel status format 1) as a :class:`Layout` table, NUL-padded ASCII fields,
4-byte padding, and :class:`Reader`, which checks every read against the end of the frame and raises
:class:`~ims_station.cd11.errors.Cd11Error` subclasses naming frame type, field path and byte offset.
Does not own frame semantics (``frames.py``, ``data.py``) nor CRC/compression (``crc64.py``, ``ca.py``).

Why ``struct`` tables rather than ``construct``: measured on this machine (CPython 3.11,
construct 2.10), parsing the 36-byte header takes 19.8 us with a ``construct.Struct`` (8.5 us
compiled) against 0.15 us with one precompiled ``struct.Struct``.  A 30-channel data frame has ~20
fixed fields per subframe, i.e. ~2 ms per frame with construct -- more than the signature checks the
relay has to do anyway.  Each table below is still a single declaration per block (names, formats,
and for the docs the byte offsets), used by parser, builder and ``docs/cd11.md`` alike, and errors
carry construct-style field paths.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass

from ims_station.cd11.errors import (
    Cd11BuildError,
    Cd11FieldError,
    Cd11LengthError,
    Cd11TruncatedError,
)

# Sane maxima: checked before any allocation driven by a length or count read from the wire.
MAX_FRAME_SIZE = 16 << 20          # 16 MiB; a 10-s frame of 100 channels at 1 kHz s4 is ~4 MiB
MAX_CHANNELS = 4096
MAX_GAPS = 100_000                 # USGS caps gap lists at 4000
MAX_OPTIONS = 256
MAX_AUTH_SIZE = 1024               # DSA 40 B, ECDSA/Ed25519 64 B; room for RSA-4096 (512 B)
MAX_SAMPLES = 10_000_000


def pad4(n: int) -> int:
    """*n* rounded up to a multiple of 4 (every variable-length CD-1.1 field is NUL-padded so)."""
    return (n + 3) & ~3


@dataclass(frozen=True)
class Layout:
    """A fixed-size block: field names, ``struct`` codes (big-endian) and derived offsets."""

    name: str
    fields: tuple[tuple[str, str], ...]

    def __post_init__(self) -> None:
        fmt = ">" + "".join(code for _, code in self.fields)
        object.__setattr__(self, "struct", struct.Struct(fmt))
        offsets = {}
        pos = 0
        for fname, code in self.fields:
            offsets[fname] = pos
            pos += struct.calcsize(">" + code)
        object.__setattr__(self, "offsets", offsets)

    @property
    def size(self) -> int:
        return self.struct.size

    def rows(self):
        """(offset, size, code, field) rows, for documentation."""
        for fname, code in self.fields:
            yield self.offsets[fname], struct.calcsize(">" + code), code, fname


def _L(name: str, *fields: tuple[str, str]) -> Layout:
    return Layout(name, tuple(fields))


# --- the tables (spec section numbers from shared/specs/cd11.md) ---------------------------------
HEADER = _L("header",                                   # §2.1
            ("frame_type", "i"), ("trailer_offset", "i"), ("creator", "8s"),
            ("destination", "8s"), ("sequence", "q"), ("series", "i"))
TRAILER = _L("trailer",                                 # §2.2, then auth value, then CRC
             ("auth_key_id", "i"), ("auth_size", "i"))
CRC = _L("crc", ("crc", "Q"))
CONNECTION = _L("connection",                           # §3.1 (request and response)
                ("major_version", "h"), ("minor_version", "h"), ("station", "8s"),
                ("station_type", "4s"), ("service_type", "4s"), ("ip", "4s"), ("port", "H"),
                ("ip2", "4s"), ("port2", "H"))
OPTION_COUNT = _L("option_count", ("count", "i"))             # §3.2
OPTION_ITEM = _L("option_item", ("type", "i"), ("size", "i"))
ACKNACK = _L("acknack",                                 # §3.3
             ("frame_set", "20s"), ("lowest", "q"), ("highest", "q"), ("gap_count", "i"))
GAP = _L("gap", ("start", "q"), ("end", "q"))
SIZE = _L("size", ("size", "i"))                        # alert message, command messages
COMMAND = _L("command",                                 # §3.5
             ("station", "8s"), ("site", "5s"), ("channel", "3s"), ("location", "2s"),
             ("pad", "2s"), ("time", "20s"))
DATA_HEADER = _L("data_header",                         # §4.1 channel subframe header
                 ("channel_count", "i"), ("frame_time_length", "i"), ("nominal_time", "20s"),
                 ("channel_string_count", "i"))
SUBFRAME = _L("subframe_head",                          # §4.2 + §4.3 (description inline)
              ("channel_length", "i"), ("auth_offset", "i"),
              ("authentication", "B"), ("transformation", "B"), ("sensor_type", "B"),
              ("option_flag", "B"), ("site", "5s"), ("channel", "3s"), ("location", "2s"),
              ("data_format", "2s"), ("calib", "f"), ("calper", "f"),
              ("time", "20s"), ("time_length", "i"), ("samples", "i"), ("status_size", "i"))
SUBFRAME_TAIL = _L("subframe_tail", ("subframe_count", "i"), ("auth_key_id", "i"), ("auth_size", "i"))
STATUS1 = _L("status_format1",                          # §4.5 channel status format 1
             ("format", "B"), ("data_status", "B"), ("security", "B"), ("misc", "B"),
             ("voltage", "B"), ("unused", "3s"), ("last_gps_sync", "20s"),
             ("clock_differential_us", "i"))

LAYOUTS = (HEADER, TRAILER, CRC, CONNECTION, OPTION_COUNT, OPTION_ITEM, ACKNACK, GAP, SIZE, COMMAND,
           DATA_HEADER, SUBFRAME, SUBFRAME_TAIL, STATUS1)

_PRINTABLE = bytes(range(0x20, 0x7F))


def ascii_reason(raw: bytes) -> str | None:
    """Why *raw* is not a NUL-padded printable-ASCII field (None if it is).

    Text then only NULs: an embedded NUL followed by text could not be re-encoded identically.
    """
    text = raw.rstrip(b"\0")
    if text.translate(None, _PRINTABLE):
        bad = next(b for b in text if b < 0x20 or b > 0x7E)
        return f"non-ASCII or control byte 0x{bad:02x} in {raw!r}"
    return None


@functools.lru_cache(maxsize=4096)  # names repeat in every frame; ~30% of build time uncached
def encode_ascii(text: str, width: int | None, what: str) -> bytes:
    """Encode a name for a fixed-width (NUL-padded) or variable field; refuse what can't round-trip."""
    try:
        raw = text.encode("ascii")
    except UnicodeEncodeError as err:
        raise Cd11BuildError(f"{what}: {text!r} is not ASCII") from err
    if ascii_reason(raw) or raw.endswith(b"\0"):
        raise Cd11BuildError(f"{what}: {text!r} holds control characters")
    if width is not None:
        if len(raw) > width:
            raise Cd11BuildError(f"{what}: {text!r} longer than {width} characters")
        raw = raw.ljust(width, b"\0")
    return raw


class Reader:
    """Bounds-checked cursor over ``buf[start:end]`` of one frame.

    ``path`` is the field-path prefix for errors (``data.subframe[2]``); ``base`` is added to
    buffer positions so offsets in errors are absolute within the caller's buffer.
    """

    __slots__ = ("buf", "pos", "end", "frame_type", "path", "base", "truncated_means_short")

    def __init__(self, buf, pos: int, end: int, frame_type: int | None, *, base: int = 0,
                 truncated: bool = False):
        self.buf = buf
        self.base = base
        self.pos = pos
        self.end = end
        self.frame_type = frame_type
        self.path = ""
        # True when *end* is the end of the caller's buffer (missing bytes = truncation) rather
        # than a boundary the frame itself declared (missing bytes = a bad length field).
        self.truncated_means_short = truncated

    def name(self, field: str) -> str:
        return f"{self.path}.{field}" if self.path else field

    def fail(self, exc, reason: str, field: str, offset: int | None = None):
        return exc(reason, frame_type=self.frame_type, field=self.name(field),
                   offset=self.base + (self.pos if offset is None else offset))

    def need(self, n: int, field: str) -> None:
        if n < 0 or self.pos + n > self.end:
            left = self.end - self.pos
            exc = Cd11TruncatedError if self.truncated_means_short else Cd11LengthError
            raise self.fail(exc, f"needs {n} bytes, only {left} left before the end of the "
                                 f"{'buffer' if self.truncated_means_short else 'enclosing field'}",
                            field)

    def block(self, layout: Layout) -> tuple:
        self.need(layout.size, layout.fields[0][0] if layout.size else layout.name)
        vals = layout.struct.unpack_from(self.buf, self.pos)
        self.pos += layout.size
        return vals

    def length(self, value: int, field: str, field_offset: int, *, maximum: int = MAX_FRAME_SIZE,
               unit: int = 1) -> int:
        """Check a length/count (already read at *field_offset*) against the remaining bytes."""
        if value < 0:
            raise self.fail(Cd11LengthError, f"negative ({value})", field, field_offset)
        if value > maximum:
            raise self.fail(Cd11LengthError, f"{value} exceeds the limit {maximum}", field, field_offset)
        if value * unit > self.end - self.pos:
            what = f"{value} x {unit} bytes" if unit > 1 else f"{value} bytes"
            raise self.fail(Cd11LengthError, f"{what} point past the end: only "
                                             f"{self.end - self.pos} bytes left", field, field_offset)
        return value

    def padded(self, n: int, field: str) -> bytes:
        """Read an *n*-byte field and skip its NUL padding to 4 (pad bytes' content is not checked:
        re-encoding writes NULs, as every implementation seen does)."""
        total = pad4(n)
        self.need(total, field)
        raw = bytes(self.buf[self.pos:self.pos + n])
        self.pos += total
        return raw

    def ascii(self, raw: bytes, field: str, offset: int) -> str:
        reason = ascii_reason(raw)
        if reason:
            raise self.fail(Cd11FieldError, reason, field, offset)
        return raw.rstrip(b"\0").decode("ascii")


_TYPE_NAMES = {"b": "int8", "B": "uint8", "h": "int16", "H": "uint16", "i": "int32", "I": "uint32",
               "q": "int64", "Q": "uint64", "f": "float32"}


def markdown_table(layout: Layout) -> str:
    """The layout as a Markdown table (``docs/cd11.md`` embeds these; a test keeps them in sync)."""
    lines = [f"`{layout.name}` ({layout.size} bytes)", "",
             "| offset | size | type | field |", "| --- | --- | --- | --- |"]
    for offset, size, code, fname in layout.rows():
        kind = _TYPE_NAMES.get(code, "ASCII, NUL-padded" if code.endswith("s") else code)
        if fname in ("ip", "ip2", "unused", "pad"):
            kind = "raw bytes"
        lines.append(f"| {offset} | {size} | {kind} | {fname} |")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m ims_station.cd11.wire  -> the tables for docs/cd11.md
    for _layout in LAYOUTS:
        print(markdown_table(_layout) + "\n")
