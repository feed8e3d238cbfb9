"""The CD-1.1 codec (IDC-3.4.3 continuous data frames): sans-IO, fed bytes, returns objects.

What the rest of the project uses::

    from ims_station import cd11

    # relay: parse, check, verify
    frame, end = cd11.parse_frame(buf)             # CRC checked; Cd11Error on anything invalid
    for frame in cd11.iter_frames(buf): ...        # concatenated frames
    frames = decoder.feed(chunk)                   # decoder = cd11.FrameDecoder(), for TCP streams
    frame.subframes[0].samples()                   # int32 numpy array (CA or s4/s3/s2/i4/i2)
    result = cd11.verify_frame(frame, trust_store) # per-frame / per-subframe signature results

    # edge: build
    wire = cd11.build_data_frame("STA01", seq, nominal_time,
                                 [cd11.ChannelInput("STA01", "BHZ", "00", samples, 40.0, t0,
                                                    status, channel_signer)],
                                 frame_signer)
    ack = cd11.Acknack(creator="STA01", frame_set="STA01:0", lowest=1, highest=9).to_bytes()

Frame classes (``to_bytes(signer=None)``; ``parse_frame`` returns them): ConnectionRequest (1),
ConnectionResponse (2), OptionRequest (3), OptionResponse (4), DataFrame (5), Acknack (6),
Alert (7), CommandRequest (8), CommandResponse (9), Cd1Encapsulation (13, parse only).  Every
frame has ``creator``, ``destination``, ``sequence``, ``series``, ``auth_key_id``, ``auth_value``;
parsed ones also ``header``, ``trailer`` (with ``crc_ok``) and ``raw`` (wire bytes).

Sequence numbers: unique and increasing per frame set (``creator:destination``), one per 10-s data
frame; :func:`sequence_from_time` derives them from the nominal time so they survive restarts.
Control frames carry 0.

Modules: ``wire`` (layout tables, bounds-checked reader), ``frames`` (envelope and control frames),
``data`` (data frames, subframes, sample formats, builder), ``status`` (channel status format 1),
``timefmt`` (time stamps), ``verify`` (signatures), ``errors``; ``ca`` and ``crc64`` (compression
and checksum).  Byte layouts: ``docs/cd11.md``.
"""

import importlib
from typing import TYPE_CHECKING

# Names re-exported from the submodules, imported on first use (PEP 562) so that ``ims-station``
# (whose command modules live in packages like this one) starts without importing numpy.
_EXPORTS = {
    "errors": ["Cd11BuildError", "Cd11CrcError", "Cd11DataError", "Cd11Error", "Cd11FieldError",
               "Cd11FrameTypeError", "Cd11LengthError", "Cd11TruncatedError"],
    "frames": ["FRAME_TYPES", "Acknack", "Alert", "CommandRequest", "CommandResponse",
               "ConnectionRequest", "ConnectionResponse", "Frame", "FrameDecoder", "Header", "Option",
               "OptionRequest", "OptionResponse", "Trailer", "frame_length", "iter_frames",
               "parse_frame"],
    "data": ["SAMPLE_FORMATS", "TRANSFORM_CA_AFTER_SIGNATURE", "TRANSFORM_CA_BEFORE_SIGNATURE",
             "TRANSFORM_NONE", "Cd1Encapsulation", "ChannelDescription", "ChannelId", "ChannelInput",
             "ChannelSubframe", "DataFrame", "build_data_frame", "make_data_frame", "make_subframe",
             "resign_data_frame", "sequence_from_time"],
    "status": ["ChannelStatus"],
    "timefmt": ["format_time", "to_datetime"],
    "verify": ["FrameVerification", "SubframeVerification", "verify_frame"],
}
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}


def __getattr__(name: str):
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + list(_WHERE))


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from ims_station.cd11.data import *  # noqa: F401,F403
    from ims_station.cd11.errors import *  # noqa: F401,F403
    from ims_station.cd11.frames import *  # noqa: F401,F403
    from ims_station.cd11.status import ChannelStatus  # noqa: F401
    from ims_station.cd11.timefmt import format_time, to_datetime  # noqa: F401
    from ims_station.cd11.verify import FrameVerification, SubframeVerification, verify_frame  # noqa: F401

__all__ = sorted(_WHERE)
