"""Errors of the CD-1.1 codec.

Owns the exception types raised by frame parsing/building and by channel-data decoding.  It does not
own the errors of Canadian compression (``ims_station.cd11.ca.CaError``, which the data decoder
translates into :class:`Cd11DataError`) nor those of keys and signatures (``ims_station.auth``).

Every parse error names the frame type, the field (a path such as ``data.subframe[3].data_size``)
and the absolute byte offset in the buffer that was handed to the parser, so a log line points at
the byte an operator can inspect with ``xxd``.  Example situations:

* :class:`Cd11TruncatedError` -- the buffer ends inside a frame (a stream reader waits for more bytes;
  a file reader reports a truncated file).
* :class:`Cd11LengthError` -- a length or count points past the end of the frame, or asks for more
  than the codec's sane maxima (a corrupt ``trailer offset`` asking for gigabytes).
* :class:`Cd11FieldError` -- a field has a value the format does not allow: a bad time string, a
  non-ASCII station name, a channel count that disagrees with the channel string.
* :class:`Cd11FrameTypeError` -- an unknown frame type code.
* :class:`Cd11CrcError` -- the CRC-64 does not match (the frame was damaged in transit).
* :class:`Cd11DataError` -- channel data that cannot be decoded (CA stream overruns, wrong size
  for the sample format, unsupported format).
* :class:`Cd11BuildError` -- *we* were asked to build something CD-1.1 cannot carry (a name too long
  for its field); a bug on our side, hence a :class:`LocalProtocolError`.
"""

from __future__ import annotations

from ims_station.errors import LocalProtocolError, RemoteProtocolError

FRAME_NAMES = {
    1: "connection request",
    2: "connection response",
    3: "option request",
    4: "option response",
    5: "data",
    6: "acknack",
    7: "alert",
    8: "command request",
    9: "command response",
    13: "CD-1 encapsulation",
}


def frame_name(frame_type: int | None) -> str:
    if frame_type is None:
        return "unknown-type"
    return FRAME_NAMES.get(frame_type, f"type-{frame_type}")


class Cd11Error(RemoteProtocolError):
    """A CD-1.1 frame received from a peer is invalid.

    Attributes: ``frame_type`` (int or None when not yet known), ``field`` (path of the offending
    field), ``offset`` (absolute byte offset in the parsed buffer), ``reason`` (what is wrong).
    """

    def __init__(self, reason: str, *, frame_type: int | None = None, field: str = "",
                 offset: int | None = None) -> None:
        self.reason = reason
        self.frame_type = frame_type
        self.field = field
        self.offset = offset
        where = f" at byte {offset}" if offset is not None else ""
        super().__init__(f"CD-1.1 {frame_name(frame_type)} frame: {field or '<frame>'}{where}: {reason}")


class Cd11TruncatedError(Cd11Error):
    """The buffer ends before the frame does.  ``needed`` is the number of bytes the frame needs
    from its start when known (else None)."""

    def __init__(self, reason: str, *, needed: int | None = None, **kw) -> None:
        self.needed = needed
        super().__init__(reason, **kw)


class Cd11LengthError(Cd11Error):
    """A length or count is inconsistent with the frame or exceeds the codec's maxima."""


class Cd11FieldError(Cd11Error):
    """A field holds a value the format does not allow."""


class Cd11FrameTypeError(Cd11Error):
    """Unknown or unsupported frame type code."""


class Cd11CrcError(Cd11Error):
    """CRC-64 mismatch."""


class Cd11DataError(Cd11Error):
    """Channel data cannot be decoded into samples."""


class Cd11BuildError(LocalProtocolError):
    """We were asked to build a frame CD-1.1 cannot represent, or one the data centres' readers
    refuse (a bug in the caller).  ``field`` is the path of the offending field when known; the
    message then starts with it."""

    def __init__(self, message: str, *, field: str = "") -> None:
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)
