"""Signature and CRC verification of parsed CD-1.1 frames against a trust store.

Owns *which bytes* are verified (spec §2.3 and §4.2) and the per-frame / per-subframe report;
the keys, algorithms and the cryptographic check are ``ims_station.auth`` (``TrustStore.verify``).

* Frame signature: trailer key id and value over ``raw[0:trailer_offset]`` (header + payload).
* Subframe signature: subframe key id and value over ``[subframe + 8, subframe + auth_offset)``
  (channel description .. subframe count, padding included), taken from the received bytes.
* Transformation 2 ("CA after signature"): the signature was computed before compression; we
  verify over the same range with the channel data replaced by the decompressed samples in the
  subframe's uncompressed format (data size adjusted).  What real stations re-serialise is not
  documented anywhere we found [uncertain, spec §10.3]; our builder uses transformation 1.

Keys are looked up under the frame creator (the station) unless the caller names another station;
subframe key ids (per digitizer in real frames) belong to the same station's trust entry.
Verification happens on the received bytes (``frame.raw``), never on a re-encoding.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from ims_station.cd11.data import TRANSFORM_CA_AFTER_SIGNATURE, DataFrame, encode_samples
from ims_station.cd11.errors import Cd11BuildError, Cd11Error, frame_name
from ims_station.cd11.frames import Frame, parse_frame
from ims_station.cd11.timefmt import to_datetime


@dataclass
class SubframeVerification:
    """Result for one channel subframe; ``result`` is the trust store's ``Verification`` (None when
    the subframe carries no signature)."""

    index: int
    channel: str
    result: Any | None

    @property
    def signed(self) -> bool:
        return self.result is not None

    @property
    def ok(self) -> bool:
        return self.result is not None and bool(self.result.ok)


@dataclass
class FrameVerification:
    """Result for one frame: CRC, frame signature (``frame`` None if unsigned), subframes."""

    frame_type: int
    creator: str
    sequence: int
    offset: int
    crc_ok: bool
    frame: Any | None
    subframes: list[SubframeVerification] = field(default_factory=list)

    def failures(self, *, require_signatures: bool = True) -> list[str]:
        """One line per failure: which frame, which subframe, why."""
        name = (f"{frame_name(self.frame_type)} frame {self.creator} seq {self.sequence} "
                f"at byte {self.offset}")
        out = []
        if not self.crc_ok:
            out.append(f"{name}: CRC-64 mismatch")
        if self.frame is None:
            if require_signatures:
                out.append(f"{name}: frame signature: not signed")
        elif not self.frame.ok:
            out.append(f"{name}: frame signature (key {self.frame.key_id}): {self.frame.reason}")
        for sf in self.subframes:
            where = f"{name}: subframe {sf.index} ({sf.channel})"
            if sf.result is None:
                if require_signatures:
                    out.append(f"{where}: not signed")
            elif not sf.result.ok:
                out.append(f"{where} (key {sf.result.key_id}): {sf.result.reason}")
        return out

    def ok(self, *, require_signatures: bool = True) -> bool:
        return not self.failures(require_signatures=require_signatures)


def _signed(key_id: int, value: bytes, flag: int = 0) -> bool:
    return bool(flag or key_id or value)


def _verification(ok: bool, key_id: int, reason: str):
    from ims_station.auth import Verification

    return Verification(ok=ok, key_id=key_id, algorithm=None, reason=reason)


def verify_frame(frame: Frame, trust, *, station: str | None = None,
                 at: datetime | None = None) -> FrameVerification:
    """Check CRC and every signature of *frame* (a parsed frame; a built one is re-parsed from its
    bytes).  *trust* is an ``ims_station.auth.TrustStore``; *station* defaults to the creator.
    Key validity is judged at *at*, by default the frame's own time (data: nominal time; command
    frames: their time stamp; other frames: the trust store's clock)."""
    if frame.raw is None:
        frame, _ = parse_frame(frame.to_bytes(), check_crc=False)
    if at is None:
        stamp = getattr(frame, "nominal_time", None) or getattr(frame, "time", None)
        at = to_datetime(stamp) if stamp else None
    raw, toff = frame.raw, frame.header.trailer_offset
    station = station or frame.creator
    result = FrameVerification(frame.FRAME_TYPE, frame.creator, frame.sequence, frame.offset,
                               frame.trailer.crc_ok, None)
    if _signed(frame.auth_key_id, frame.auth_value):
        result.frame = trust.verify(station, frame.auth_key_id, raw[:toff], frame.auth_value, at=at)
    if isinstance(frame, DataFrame):
        for i, sf in enumerate(frame.subframes):
            label = f"{sf.site}/{sf.channel}/{sf.location}"
            res = None
            if _signed(sf.auth_key_id, sf.auth_value, sf.description.authentication):
                if not sf.auth_value:
                    res = _verification(False, sf.auth_key_id, "authentication flag set but no signature")
                else:
                    res = _verify_subframe(sf, raw, station, trust, at)
            result.subframes.append(SubframeVerification(i, label, res))
    return result


def _verify_subframe(sf, raw: bytes, station: str, trust, at):
    start, auth_offset = sf.span
    if sf.description.transformation == TRANSFORM_CA_AFTER_SIGNATURE:
        try:
            plain = encode_samples(sf.samples(), sf.description.data_format)
        except Cd11Error as err:
            return _verification(False, sf.auth_key_id, f"channel data undecodable: {err.reason}")
        except Cd11BuildError as err:  # e.g. a format we cannot re-serialise
            return _verification(False, sf.auth_key_id, f"cannot re-serialise for transformation 2: {err}")
        data = replace(sf, data=plain).signed_bytes()
        res = trust.verify(station, sf.auth_key_id, data, sf.auth_value, at=at)
        if not res.ok:
            res = replace(res, reason=f"{res.reason} (transformation 2: signed bytes re-serialised "
                                      "from decompressed samples; convention uncertain)")
        return res
    data = raw[start + 8:start + auth_offset]
    return trust.verify(station, sf.auth_key_id, data, sf.auth_value, at=at)
