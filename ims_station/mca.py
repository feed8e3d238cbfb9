"""The MCA command/response dialect of the noble-gas detector: ORTEC-style ASCII records with checksums.

The one definition of this wire format.  The detector emulator (``ims_station.hil.noblegas``) and the
edge's noble-gas driver both import it; neither writes or parses a record anywhere else.  A protocol
core: no I/O, no clock.

Modelled on the ORTEC MCB dialect (``../shared/specs/ims20.md`` §6): the host sends one ASCII command
per line (``VERB`` or ``VERB ARG[,ARG]``, ended by CR; LF and CRLF are accepted), the device answers
each command with exactly one record ended by CRLF:

=========  ==========================================  =======================================
record     layout                                      used for
=========  ==========================================  =======================================
``%``      ``%`` macro(3) micro(3) checksum(3)         acknowledge / error (``%000000069`` = OK)
``$G``     ``$G`` value(10 digits) checksum(3)         32-bit values: live/true time in ticks
``$C``     ``$C`` value(5 digits) checksum(3)          16-bit values: active flag, channels, HV
``$F``     ``$F`` text checksum(3)                     text: version
``$D``     ``$D`` start(5) n(2) n x value(10) cksum(3)  spectrum/histogram channels (ours)
``$S``     ``$S`` name=value;... checksum(3)           state of health, sample record (ours)
=========  ==========================================  =======================================

The checksum is the sum of the ASCII codes of every preceding character of the record (from ``%``
or ``$`` up to the checksum), modulo 256, written as three decimal digits -- the ORTEC rule, which
the real records of the spec satisfy (``%000000069``, ``$C00001088``, ``$G0007892556117``; see
tests/hil/test_noblegas_dialect.py).  ``$D`` and ``$S`` are this project's extensions (the ORTEC
library reads spectra with a separate binary call, which a serial line does not have); ``$F`` here
carries a checksum too, so that every reply can be checked.  Commands carry no checksum (as in
the spec's ORTEC evidence): a garbled command is refused with ``%129...`` and a garbled *argument* goes
undetected, so a driver reads back every preset it sets.

Times are in ticks of 20 ms (``TICKS_PER_SECOND`` = 50), as in ORTEC MCBs.

Error codes (macro, micro) -- macro < 128 is success with a warning, >= 128 an error (ORTEC's scheme;
the values other than ``000 000`` are this project's choice):

* ``000 000`` OK; ``001 000`` power-up occurred since the last command (the device restarted:
  its memory and presets are lost);
* ``129 001`` unknown verb; ``129 128`` invalid argument; ``129 132`` wrong number of arguments;
  ``129 133`` command too long or not ASCII;
* ``130 001`` not allowed while acquiring; ``130 002`` high voltage not ready (START refused);
  ``130 003`` address out of range (SHOW_DATA, SET_SEGMENT).

Every input is untrusted: lines are bounded (``MAX_REPLY``/``MAX_COMMAND``), counts are checked
before anything is allocated, and every malformed record raises a :class:`MCAProtocolError`
subclass (:class:`ChecksumError`, :class:`GarbledReply`, :class:`UnexpectedReply`), all
``RemoteProtocolError``.  A refused command is a :class:`DeviceError` (the device works; it said no).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ims_station.errors import ImsStationError, LocalProtocolError, RemoteProtocolError

TICKS_PER_SECOND = 50
MAX_COMMAND = 64            # bytes of one command line, terminator excluded
MAX_REPLY = 1024            # bytes of one reply record, CRLF excluded
MAX_BLOCK = 64              # channels per $D record
MAX_TEXT = 128              # characters of a $F text
MAX_FIELDS = 48             # name=value pairs of a $S record
MAX_U32 = 0xFFFF_FFFF
MAX_U16 = 99_999            # five decimal digits ($C)

# -- error codes (macro, micro)
OK = (0, 0)
POWER_UP = (1, 0)
ERR_VERB = (129, 1)
ERR_ARG = (129, 128)
ERR_NARGS = (129, 132)
ERR_LINE = (129, 133)
ERR_ACTIVE = (130, 1)
ERR_HV = (130, 2)
ERR_RANGE = (130, 3)

ERROR_TEXT = {
    OK: "ok", POWER_UP: "power-up occurred", ERR_VERB: "unknown verb", ERR_ARG: "invalid argument",
    ERR_NARGS: "wrong number of arguments", ERR_LINE: "command too long or not ASCII",
    ERR_ACTIVE: "not allowed while acquiring", ERR_HV: "high voltage not ready",
    ERR_RANGE: "address out of range",
}

# verb -> (number of integer arguments, reply kind).  Reply kinds: "%" acknowledge, "G", "C", "F",
# "D", "S" (the record types above).  The single table both sides use: the device validates against
# it, the driver knows from it which record must come back.
COMMANDS: dict[str, tuple[int, str]] = {
    "START": (0, "%"),
    "STOP": (0, "%"),
    "CLEAR": (0, "%"),                   # spectrum memory and live/true times of every segment
    "CLEAR_PRESET": (0, "%"),
    "SET_LIVE_PRESET": (1, "%"),         # ticks; 0 = none
    "SET_TRUE_PRESET": (1, "%"),
    "SHOW_LIVE_PRESET": (0, "G"),
    "SHOW_TRUE_PRESET": (0, "G"),
    "SHOW_LIVE": (0, "G"),               # ticks
    "SHOW_TRUE": (0, "G"),
    "SHOW_ACTIVE": (0, "C"),             # 1 acquiring, 0 stopped
    "SHOW_GAIN_CONVERSION": (0, "C"),    # channels of the selected segment
    "SHOW_VERSION": (0, "F"),
    "SET_SEGMENT": (1, "%"),             # memory segment: see the device's documentation
    "SHOW_SEGMENT": (0, "C"),
    "SHOW_DATA": (2, "D"),               # start channel, count (1..MAX_BLOCK) of the selected segment
    "SET_HV": (1, "%"),                  # volts
    "ENABLE_HV": (0, "%"),
    "DISABLE_HV": (0, "%"),
    "SHOW_HV": (0, "C"),                 # set point, volts
    "SHOW_HV_ACTUAL": (0, "C"),          # measured, volts
    "SHOW_SOH": (0, "S"),                # process controller state of health
    "SHOW_SAMPLE": (0, "S"),             # the sample (or background) now in the detector
}


class MCAProtocolError(RemoteProtocolError):
    """The detector sent a record that is not valid in the dialect."""


class ChecksumError(MCAProtocolError):
    """A reply record whose checksum does not match its characters (corrupted on the line)."""


class GarbledReply(MCAProtocolError):
    """A reply that is not a record of the dialect (bad start, length, characters, fields)."""


class UnexpectedReply(MCAProtocolError):
    """A well-formed record of another type than the command asks for (out of step)."""


class CommandError(RemoteProtocolError):
    """(device side) a command line that is not valid; ``code`` is the error reply to send."""

    def __init__(self, code: tuple[int, int], detail: str) -> None:
        self.code = code
        super().__init__(f"{ERROR_TEXT.get(code, code)}: {detail}")


class DeviceError(ImsStationError):
    """The device refused a command with an error acknowledge (macro >= 128)."""

    def __init__(self, command: str, code: tuple[int, int]) -> None:
        self.command = command
        self.code = code
        super().__init__(f"{command}: device error {code[0]:03d} {code[1]:03d} ({ERROR_TEXT.get(code, 'unknown')})")


# ------------------------------------------------------------------ records

@dataclass(frozen=True)
class Ack:
    macro: int
    micro: int

    @property
    def code(self) -> tuple[int, int]:
        return (self.macro, self.micro)

    @property
    def ok(self) -> bool:
        return self.macro < 128

    kind = "%"


@dataclass(frozen=True)
class Value:
    kind: str        # "G" or "C"
    value: int


@dataclass(frozen=True)
class Text:
    text: str
    kind = "F"


@dataclass(frozen=True)
class Block:
    start: int
    values: tuple[int, ...]
    kind = "D"


@dataclass(frozen=True)
class Fields:
    fields: dict = field(default_factory=dict)     # name -> str (the driver converts)
    kind = "S"


Reply = Ack | Value | Text | Block | Fields

_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,23}")
_TOKEN = re.compile(r"[A-Za-z0-9_.:+/-]{0,40}")
_TEXT_OK = re.compile(r"[ -#&-~]*")              # printable ASCII except '$' and '%'
_NON_PRINTABLE = re.compile(rb"[^\x20-\x7e]")     # (a regex: a reply is checked per byte, ~700 of them)


def checksum(body: bytes) -> int:
    """Sum of the bytes modulo 256 (the ORTEC record checksum)."""
    return sum(body) & 0xFF


def seal(body: str) -> bytes:
    """A record body -> the record on the line: body, its 3-digit checksum, CRLF."""
    b = body.encode("ascii")
    return b + b"%03d\r\n" % checksum(b)


def encode_reply(reply: Reply) -> bytes:
    """A reply -> its record with checksum and CRLF.  Raises LocalProtocolError for values the
    dialect cannot carry (a bug on the device side)."""
    if isinstance(reply, Ack):
        if not (0 <= reply.macro <= 255 and 0 <= reply.micro <= 255):
            raise LocalProtocolError(f"error codes out of range: {reply}")
        return seal(f"%{reply.macro:03d}{reply.micro:03d}")
    if isinstance(reply, Value):
        if reply.kind == "G" and 0 <= reply.value <= MAX_U32:
            return seal(f"$G{reply.value:010d}")
        if reply.kind == "C" and 0 <= reply.value <= MAX_U16:
            return seal(f"$C{reply.value:05d}")
        raise LocalProtocolError(f"value out of range for ${reply.kind}: {reply.value}")
    if isinstance(reply, Text):
        if len(reply.text) > MAX_TEXT or not _TEXT_OK.fullmatch(reply.text):
            raise LocalProtocolError(f"$F text not printable ASCII or too long: {reply.text[:40]!r}")
        return seal(f"$F{reply.text}")
    if isinstance(reply, Block):
        n = len(reply.values)
        if not (1 <= n <= MAX_BLOCK and 0 <= reply.start <= 99_999):
            raise LocalProtocolError(f"$D block of {n} values at {reply.start}")
        if any(not (0 <= int(v) <= MAX_U32) for v in reply.values):
            raise LocalProtocolError("$D value out of range")
        return seal(f"$D{reply.start:05d}{n:02d}" + "".join(f"{int(v):010d}" for v in reply.values))
    if isinstance(reply, Fields):
        if len(reply.fields) > MAX_FIELDS:
            raise LocalProtocolError("too many $S fields")
        parts = []
        for k, v in reply.fields.items():
            v = _fmt(v)
            if not _NAME.fullmatch(k) or not _TOKEN.fullmatch(v):
                raise LocalProtocolError(f"$S field {k!r}={v!r} not encodable")
            parts.append(f"{k}={v}")
        body = "$S" + ";".join(parts)
        if len(body) + 3 > MAX_REPLY:
            raise LocalProtocolError("$S record too long")
        return seal(body)
    raise LocalProtocolError(f"not a reply: {reply!r}")


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, float):
        return f"{v:.6g}" if abs(v) < 1e15 else f"{v:.0f}"
    return str(v)


def parse_reply(line: bytes) -> Reply:
    """One reply record (CR/LF already removed, or still attached) -> a reply object.

    Raises :class:`ChecksumError` when the record is intact in form but its checksum disagrees,
    :class:`GarbledReply` for anything else that is not a record.
    """
    line = bytes(line).rstrip(b"\r\n")
    if len(line) > MAX_REPLY:
        raise GarbledReply(f"reply of {len(line)} bytes (max {MAX_REPLY})")
    if len(line) < 4 or line[:1] not in (b"%", b"$"):
        raise GarbledReply(f"not a record: {line[:32]!r}")
    if _NON_PRINTABLE.search(line):
        raise GarbledReply(f"non-printable byte in reply: {line[:32]!r}")
    body, ck = line[:-3], line[-3:]
    if not ck.isdigit():
        raise GarbledReply(f"record without a checksum: {line[:32]!r}")
    if int(ck) != checksum(body):
        raise ChecksumError(f"checksum {int(ck):03d}, computed {checksum(body):03d}: {line[:32]!r}")
    text = body.decode("ascii")
    if text[0] == "%":
        if len(text) != 7 or not text[1:].isdigit():
            raise GarbledReply(f"bad acknowledge record: {text!r}")
        macro, micro = int(text[1:4]), int(text[4:7])
        if macro > 255 or micro > 255:
            raise GarbledReply(f"error codes out of range: {text!r}")
        return Ack(macro, micro)
    kind, rest = text[1:2], text[2:]
    if kind == "G":
        if len(rest) != 10 or not rest.isdigit() or int(rest) > MAX_U32:
            raise GarbledReply(f"bad $G record: {text!r}")
        return Value("G", int(rest))
    if kind == "C":
        if len(rest) != 5 or not rest.isdigit():
            raise GarbledReply(f"bad $C record: {text!r}")
        return Value("C", int(rest))
    if kind == "F":
        if len(rest) > MAX_TEXT or not _TEXT_OK.fullmatch(rest):
            raise GarbledReply(f"bad $F record: {text[:40]!r}")
        return Text(rest)
    if kind == "D":
        if len(rest) < 7 or not rest.isdigit():
            raise GarbledReply(f"bad $D record: {text[:40]!r}")
        start, n = int(rest[:5]), int(rest[5:7])
        if not 1 <= n <= MAX_BLOCK or len(rest) != 7 + 10 * n:
            raise GarbledReply(f"$D record: {n} values announced, {len(rest) - 7} digits present")
        values = tuple(int(rest[7 + 10 * i:17 + 10 * i]) for i in range(n))
        if any(v > MAX_U32 for v in values):
            raise GarbledReply("$D value above 32 bits")
        return Block(start, values)
    if kind == "S":
        fields: dict[str, str] = {}
        if rest:
            parts = rest.split(";")
            if len(parts) > MAX_FIELDS:
                raise GarbledReply(f"$S record with {len(parts)} fields (max {MAX_FIELDS})")
            for p in parts:
                k, sep, v = p.partition("=")
                if not sep or not _NAME.fullmatch(k) or not _TOKEN.fullmatch(v) or k in fields:
                    raise GarbledReply(f"bad $S field {p[:40]!r}")
                fields[k] = v
        return Fields(fields)
    raise GarbledReply(f"unknown record type {text[:2]!r}")


def expect(command: str, reply: Reply) -> Reply:
    """Check that *reply* is what *command* (a verb of :data:`COMMANDS`) must get back.

    An error acknowledge raises :class:`DeviceError`; a record of another type
    :class:`UnexpectedReply` (the exchange is out of step: resynchronise).  A power-up
    acknowledge (``001 000``) to a command that expects data is also :class:`DeviceError`: the
    device restarted and answered the restart, not the command.
    """
    verb = command.split(" ", 1)[0]
    want = COMMANDS[verb][1]
    if isinstance(reply, Ack):
        if not reply.ok or (want != "%" and reply.code != OK):
            raise DeviceError(verb, reply.code)
        if want == "%":
            return reply
        raise UnexpectedReply(f"{verb}: acknowledge {reply.code} where a ${want} record was due")
    got = reply.kind
    if got != want:
        raise UnexpectedReply(f"{verb}: ${got} record where {'an acknowledge' if want == '%' else '$' + want} was due")
    return reply


# ------------------------------------------------------------------ commands

@dataclass(frozen=True)
class Command:
    verb: str
    args: tuple[int, ...] = ()

    @property
    def reply_kind(self) -> str:
        return COMMANDS[self.verb][1]


def encode_command(verb: str, *args: int) -> bytes:
    """``VERB`` or ``VERB A,B`` + CR.  Raises LocalProtocolError for an unknown verb or bad args."""
    if verb not in COMMANDS:
        raise LocalProtocolError(f"unknown MCA verb {verb!r}")
    nargs = COMMANDS[verb][0]
    if len(args) != nargs:
        raise LocalProtocolError(f"{verb} takes {nargs} argument(s), got {len(args)}")
    for a in args:
        if not isinstance(a, int) or isinstance(a, bool) or not 0 <= a <= MAX_U32:
            raise LocalProtocolError(f"{verb}: argument {a!r} is not an unsigned 32-bit integer")
    line = verb + (" " + ",".join(str(a) for a in args) if args else "")
    return line.encode("ascii") + b"\r"


def parse_command(line: bytes) -> Command:
    """(device side) one command line -> :class:`Command`, or :class:`CommandError` with the code."""
    line = bytes(line).strip(b"\r\n")
    if len(line) > MAX_COMMAND or any(b < 0x20 or b > 0x7E for b in line):
        raise CommandError(ERR_LINE, f"{line[:32]!r}")
    text = line.decode("ascii").strip()
    verb, _, rest = text.partition(" ")
    verb = verb.upper()
    if verb not in COMMANDS:
        raise CommandError(ERR_VERB, repr(verb[:24]))
    nargs = COMMANDS[verb][0]
    parts = [p.strip() for p in rest.split(",")] if rest.strip() else []
    if len(parts) != nargs:
        raise CommandError(ERR_NARGS, f"{verb} takes {nargs}, got {len(parts)}")
    args = []
    for p in parts:
        if not p.isdigit() or len(p) > 10 or int(p) > MAX_U32:
            raise CommandError(ERR_ARG, f"{verb} {p[:12]!r}")
        args.append(int(p))
    return Command(verb, tuple(args))


# ------------------------------------------------------------------ framing

class LineSplitter:
    """Splits a byte stream into lines ended by CR and/or LF, bounded: a line longer than *limit*
    is discarded up to its terminator and counted (``overlong``), never buffered without bound.
    Empty lines (the LF of a CRLF) are skipped."""

    def __init__(self, limit: int) -> None:
        self.limit = int(limit)
        self._buf = bytearray()
        self._skipping = False
        self.overlong = 0

    def feed(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        for chunk in re.split(rb"([\r\n])", bytes(data)):
            if chunk in (b"\r", b"\n"):
                if self._skipping:
                    self._skipping = False
                elif self._buf:
                    out.append(bytes(self._buf))
                self._buf.clear()
                continue
            if self._skipping or not chunk:
                continue
            if len(self._buf) + len(chunk) > self.limit:
                self._buf.clear()
                self._skipping = True
                self.overlong += 1
                continue
            self._buf += chunk
        return out

    def pending(self) -> int:
        return len(self._buf)

    def reset(self) -> None:
        self._buf.clear()
        self._skipping = False
