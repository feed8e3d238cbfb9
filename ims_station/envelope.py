"""The signed envelope: the one wire format of every MQTT message that is not a CD-1.1 frame.

Trigger events (``{p}/{STA}/events``), commands and their responses (``cmd``, ``cmd/response``) and
IMS 2.0 messages (``ims20``) travel in it, so that each is authenticated with the same keys as the
CD-1.1 frames (``ims_station.auth``: the station's keystore signs, the relay's trust store
verifies; the relay's own key signs what it sends to a station) and is bounded before anything is
allocated.  A protocol core: no I/O, no clock.

Layout (big-endian, ``struct``; 40-byte header, body, 2-byte signature length, signature)::

    offset size  field
    0      4     magic  b"IMSE"
    4      1     version (1)
    5      1     kind   (KINDS: 1 event, 2 command, 3 command response, 4 IMS 2.0 message)
    6      2     flags  (0; a reader refuses others)
    8      8     sender: station or relay name, ASCII, NUL-padded (1-8 upper-case letters/digits)
    16     4     key id (0: unsigned)
    20     8     time, microseconds since 1970 UTC (signing time: the key must be valid then)
    28     8     sequence number in the sender's frame set of this kind (STA:events, STA:ims20:
                 the relay's dedupe, gap lists and acknacks, as for CD-1.1 frames; 0 for commands)
    36     4     body length (<= MAX_BODY)
    40     n     body (events, commands: UTF-8 JSON; IMS 2.0: the message text, byte-identical)
    40+n   2     signature length (0 when unsigned, else the key's algorithm's size)
    42+n   s     signature over bytes 0 .. 40+n (header and body)

Nothing follows the signature: trailing bytes are an error, as is any length that disagrees with
the buffer.  :func:`unpack` checks the structure only; :func:`verify` checks the signature against a
:class:`~ims_station.auth.keys.TrustStore` (never trust a body before it says ok).
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from typing import Any

from ims_station.errors import LocalProtocolError, RemoteProtocolError

MAGIC = b"IMSE"
VERSION = 1
KINDS = {"event": 1, "command": 2, "command_response": 3, "ims20": 4}
KIND_NAMES = {v: k for k, v in KINDS.items()}
MAX_BODY = 8 << 20            # an IMS 2.0 beta-gamma SAMPLEPHD is a few hundred KiB
MAX_SIGNATURE = 512
MAX_JSON_BODY = 256 << 10     # events and commands are small; refuse a large JSON before parsing
_HEAD = struct.Struct(">4sBBH8sIqQI")
MAX_SEQ = (1 << 62) - 1
_SIGLEN = struct.Struct(">H")
HEADER_SIZE = _HEAD.size      # 40
_SENDER_RE = re.compile(rb"^[A-Z0-9]{1,8}$")


class EnvelopeError(RemoteProtocolError):
    """A signed-envelope message is malformed (names the field and what is wrong)."""


@dataclass(frozen=True)
class Envelope:
    kind: str
    sender: str
    key_id: int
    time_us: int
    seq: int
    body: bytes
    signature: bytes
    signed_part: bytes          # header and body: what the signature covers

    def json(self) -> Any:
        """The body as JSON (events, commands); :class:`EnvelopeError` if it is not."""
        if len(self.body) > MAX_JSON_BODY:
            raise EnvelopeError(f"envelope body: {len(self.body)} bytes is too large for a {self.kind} "
                                f"(at most {MAX_JSON_BODY})")
        try:
            return json.loads(self.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as err:
            raise EnvelopeError(f"envelope body: not UTF-8 JSON ({type(err).__name__}: {err})") from None


def pack(kind: str, sender: str, body: bytes, *, time_us: int, signer: Any = None, seq: int = 0) -> bytes:
    """The envelope of *body* from *sender*, signed with *signer* (``auth.keys.Signer``; None:
    unsigned, key id 0).  Raises :class:`LocalProtocolError` for what we must never send."""
    if kind not in KINDS:
        raise LocalProtocolError(f"envelope: unknown kind {kind!r} (known: {', '.join(KINDS)})")
    s = sender.encode("ascii", "replace")
    if not _SENDER_RE.match(s):
        raise LocalProtocolError(f"envelope: sender {sender!r} must be 1-8 upper-case letters or digits")
    body = bytes(body)
    if len(body) > MAX_BODY:
        raise LocalProtocolError(f"envelope: body of {len(body)} bytes is above {MAX_BODY}")
    if not -(1 << 63) <= time_us < (1 << 63):
        raise LocalProtocolError(f"envelope: time {time_us} us does not fit 64 bits")
    if not 0 <= seq <= MAX_SEQ:
        raise LocalProtocolError(f"envelope: sequence number {seq} is outside 0..{MAX_SEQ}")
    key_id = signer.key_id if signer is not None else 0
    signed = _HEAD.pack(MAGIC, VERSION, KINDS[kind], 0, s.ljust(8, b"\0"), key_id, time_us, seq,
                        len(body)) + body
    sig = signer.sign(signed) if signer is not None else b""
    return signed + _SIGLEN.pack(len(sig)) + sig


def pack_json(kind: str, sender: str, doc: Any, *, time_us: int, signer: Any = None, seq: int = 0) -> bytes:
    """:func:`pack` of a JSON document (compact, keys sorted: the same document gives the same bytes)."""
    return pack(kind, sender, json.dumps(doc, sort_keys=True, separators=(",", ":")).encode(),
                time_us=time_us, signer=signer, seq=seq)


def unpack(data: bytes | bytearray | memoryview, *, kind: str | None = None) -> Envelope:
    """Parse an envelope (structure only, no signature check); :class:`EnvelopeError` naming the
    field if anything is off.  With *kind*, a message of another kind is refused too."""
    data = bytes(data)
    if len(data) < HEADER_SIZE + _SIGLEN.size:
        raise EnvelopeError(f"envelope: {len(data)} bytes is shorter than the {HEADER_SIZE + 2}-byte minimum")
    magic, version, k, flags, sender, key_id, time_us, seq, n = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise EnvelopeError(f"envelope: magic {magic!r} is not {MAGIC!r} (not a signed envelope)")
    if version != VERSION:
        raise EnvelopeError(f"envelope: version {version} is not supported (this reader knows {VERSION})")
    if k not in KIND_NAMES:
        raise EnvelopeError(f"envelope: unknown kind {k}")
    if kind is not None and KIND_NAMES[k] != kind:
        raise EnvelopeError(f"envelope: kind {KIND_NAMES[k]!r} where {kind!r} was expected")
    if flags:
        raise EnvelopeError(f"envelope: flags {flags:#06x} are not defined in version {VERSION}")
    name = sender.rstrip(b"\0")
    if not _SENDER_RE.match(name) or b"\0" in name:
        raise EnvelopeError(f"envelope: sender {sender!r} is not 1-8 upper-case letters or digits")
    if seq > MAX_SEQ:
        raise EnvelopeError(f"envelope: sequence number {seq} is above {MAX_SEQ}")
    if n > MAX_BODY:
        raise EnvelopeError(f"envelope: body length {n} is above {MAX_BODY}")
    end = HEADER_SIZE + n
    if end + _SIGLEN.size > len(data):
        raise EnvelopeError(f"envelope: body length {n} runs past the {len(data)}-byte message")
    (slen,) = _SIGLEN.unpack_from(data, end)
    if slen > MAX_SIGNATURE:
        raise EnvelopeError(f"envelope: signature length {slen} is above {MAX_SIGNATURE}")
    if (key_id == 0) != (slen == 0):
        raise EnvelopeError(f"envelope: key id {key_id} with a {slen}-byte signature")
    total = end + _SIGLEN.size + slen
    if total != len(data):
        raise EnvelopeError(f"envelope: {len(data) - total:+d} bytes after the structure "
                            f"({total} expected, {len(data)} received)")
    return Envelope(KIND_NAMES[k], name.decode("ascii"), key_id, time_us, seq, data[HEADER_SIZE:end],
                    data[end + _SIGLEN.size:], data[:end])


def verify(env: Envelope, trust: Any, sender: str | None = None) -> Any:
    """The trust store's :class:`~ims_station.auth.keys.Verification` of *env*'s signature, at the
    envelope's time, for *sender* (default: the envelope's; pass the topic's station so that a
    message on another station's topic fails).  Never raises for any envelope."""
    import datetime as dt

    from ims_station.auth.keys import Verification

    who = env.sender if sender is None else sender
    if sender is not None and sender != env.sender:
        return Verification(False, env.key_id, None, f"sender {env.sender!r} is not {sender!r}")
    try:
        at = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(microseconds=env.time_us)
    except OverflowError:
        return Verification(False, env.key_id, None, f"time {env.time_us} us is out of range")
    return trust.verify(who, env.key_id, env.signed_part, env.signature, at=at)
