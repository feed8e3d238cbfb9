"""Verification of one received payload: is it an authentic CD-1.1 frame of the station that sent it?

Owns the relay's acceptance policy and the *reason codes* under which rejected payloads are
counted and quarantined.  The checks, in order (cheapest and least trusting first):

==========================  ==================================================================
reason code                 check
==========================  ==================================================================
``oversize``                payload longer than ``max_payload`` (checked before parsing)
``crc``                     CRC-64 mismatch (damage in transit, or a flipped bit)
``malformed``               not exactly one parseable CD-1.1 frame (codec error: field, offset)
``frame_type``              not a data frame (acknack and alert frames are *control*, not archived,
                            once CRC, creator and -- with ``require_signatures`` -- the frame
                            signature passed; the same reasons below apply to them)
``station_mismatch``        frame creator is not the station named by the topic
``unsigned``                frame or a subframe carries no signature (``require_signatures``)
``wrong_station_key``       signed with a key the trust store holds for *another* station
``frame_signature``         frame signature invalid / unknown key / outside the key's validity
``subframe_signature``      a channel subframe's signature fails (same sub-reasons)
``subframe_time``           a subframe's first sample lies outside its frame's time window
``undecodable``             channel data that cannot be decoded (e.g. CA stream overrun)
``implausible_time``        the frame's time span is not within ``max_past_s`` before /
                            ``max_future_s`` after the relay's clock (checked by
                            :func:`check_time_window` with the clock; a clock event)
``sequence_time``           sequence number inconsistent with the nominal time (replay under a
                            new sequence number; checked by :func:`check_sequence` with state)
``event_signature``         (events) the envelope's signature is invalid / unknown key / outside the
                            key's validity (``wrong_station_key`` when the key is another station's)
``ims20_signature``         (IMS 2.0 messages) the same for an ``ims20`` envelope
``malformed_ims20``         (IMS 2.0 messages) signed text that ``ims_station.ims20`` refuses
``internal_error``          processing the payload raised an unexpected exception (a bug of ours
                            that this payload triggers): the relay's poison-message boundary
                            quarantines it instead of stopping (``relay.core``)
==========================  ==================================================================

Trigger events (``{p}/STA/events``, :meth:`Verifier.check_event`) are signed envelopes
(``ims_station.envelope``, kind ``event``) with a JSON body; the same reason codes apply in this
order: ``oversize``; ``malformed`` (not an event envelope, or -- only once the signature verified --
a body that is not a JSON object with an integer ``seq`` and the event fields' types);
``station_mismatch`` (envelope sender or body ``station`` is not the topic's station);
``unsigned`` / ``wrong_station_key`` / ``event_signature``; ``implausible_time`` (envelope time or
event ``time`` outside the window, :func:`check_message_time`).  The body's ``seq`` is the event's
sequence number in frame set ``STA:events``: deduplicated, acknowledged and gap-tracked like data.

IMS 2.0 messages (``{p}/STA/ims20``, :meth:`Verifier.check_ims20`) share the events' envelope checks
(:meth:`Verifier._open_envelope`: ``oversize``, ``malformed``, ``station_mismatch``, ``unsigned`` /
``wrong_station_key`` / ``ims20_signature``); only then is the body, the message text, parsed by
``ims_station.ims20`` (``malformed_ims20``, naming line, block and field), and the envelope time
checked by :func:`check_message_time`.  The envelope header's sequence number is the message's in
frame set ``STA:ims20``.

The archive adds ``duplicate_conflict`` (same frame set and sequence number, different bytes) and
``replay`` (same frame set and nominal time archived under another sequence number).

Signatures are checked by the codec (``ims_station.cd11.verify_frame``: which bytes) against the
trust store (``ims_station.auth.TrustStore``: which key, which station, which validity period), at
the frame's nominal time.  The topic station, the frame creator and the key's station must agree:
the topic is what the broker ACL ties to the station's credentials, the creator is what the frame
claims, and the key is what proves it.

Time fields are converted only after ``parse_frame`` accepted them, which guarantees that they
convert (``ims_station.cd11.timefmt``): a time no ``datetime`` can hold is a ``malformed`` frame
(a codec error naming the field and offset), never an exception out of :meth:`Verifier.check`.

Per-station exceptions (:class:`StationPolicy`, configured for legacy CD-1.1/TCP stations): a
station may be allowed to send unsigned frames, or frames signed with keys the trust store does not
hold (accepted *unverified*, listed in ``Verified.unverified`` and counted by the core).  Never a
silent bypass: only stations named in the configuration, and a key the trust store holds must
verify whatever the policy.

Pure: no I/O, no clock (the time window takes the relay's ``now``); the relay core and the
CD-1.1/TCP consumer (``relay.tcp``) share it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

DEFAULT_MAX_PAYLOAD = 4 << 20       # a 10-s frame of 100 channels x 100 sps s4 is ~400 KB
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_EPOCH_2000_MS = 946_684_800_000

REASONS = ("oversize", "bad_topic", "crc", "malformed", "frame_type", "station_mismatch", "unsigned",
           "wrong_station_key", "frame_signature", "subframe_signature", "subframe_time", "undecodable",
           "implausible_time", "sequence_time", "duplicate_conflict", "replay", "event_signature",
           "ims20_signature", "malformed_ims20", "internal_error")
#: Bounds of an event body's fields (the JSON body itself is bounded by ``envelope.MAX_JSON_BODY``).
MAX_EVENT_SEQ = (1 << 62) - 1
MAX_EVENT_TEXT = 64
MAX_EVENT_LIST = 1000

#: Default time-plausibility window (``[relay] max_past_s`` / ``max_future_s``).  The future bound
#: is the edge's ``max_clock_offset_s`` default (a day): a frame the edge would frame with a sane
#: gateway clock is accepted.  The past bound leaves room for a station's outbox backlog (the
#: edge keeps 7 days by default, the relay gives gaps up after 8) with margin.
DEFAULT_MAX_PAST_S = 30 * 86400.0
DEFAULT_MAX_FUTURE_S = 86400.0


@dataclass
class Rejection:
    reason: str                      # one of REASONS
    detail: str                      # human explanation: which field/subframe/key and why
    frame_set: str | None = None
    sequence: int | None = None


@dataclass
class Control:
    """A valid non-data frame from the station (acknack, alert): counted, not archived."""

    frame: Any
    kind: str


@dataclass
class Verified:
    """A data frame that passed every stateless check."""

    frame: Any                       # ims_station.cd11.DataFrame
    station: str
    frame_set: str
    sequence: int
    nominal_ms: int
    frame_ms: int                    # frame time length, ms
    #: signatures accepted *unverified* under the station's ``accept_unknown_keys`` policy
    #: (frame / subframe labels with the key id); empty for every other frame
    unverified: tuple[str, ...] = ()

    @property
    def raw(self) -> bytes:
        return self.frame.raw


@dataclass(frozen=True)
class StationPolicy:
    """A per-station exception to the relay-wide signature policy, for legacy stations (real IMS
    frames signed with DSA keys whose certificates we do not hold, or unsigned).  Configured
    explicitly per station (``[[cd11.consumer.station]]`` in the relay file), never implied.

    *require_signatures*: False accepts unsigned frames and subframes of this station.
    *accept_unknown_keys*: True accepts a signature whose key id is **not in the trust store at
    all** as unverified (counted: ``RelayCounters.unverified_signatures``); a signature made with
    a key the trust store does hold must still verify, and a key of another station is still
    ``wrong_station_key``."""

    require_signatures: bool = True
    accept_unknown_keys: bool = False


@dataclass
class VerifiedEvent:
    """A trigger event whose envelope signature verified (or, without ``require_signatures``, an
    unsigned one) and whose body has the fields the relay relies on."""

    envelope: Any                    # ims_station.envelope.Envelope
    doc: dict
    station: str
    frame_set: str                   # STA:events
    sequence: int                    # the body's seq
    time_ms: int                     # the event's ``time`` (ms since 1970), else the envelope's time
    raw: bytes                       # the envelope, verbatim

    @property
    def key_id(self) -> int:
        return self.envelope.key_id

    @property
    def sent_ms(self) -> int:
        return self.envelope.time_us // 1000


@dataclass
class VerifiedIms20:
    """An IMS 2.0 message whose envelope signature verified (or, without ``require_signatures``,
    an unsigned one) and whose text the codec parsed; ``envelope.body`` is the text, byte-identical."""

    envelope: Any                    # ims_station.envelope.Envelope
    message: Any                     # ims_station.ims20.Message
    station: str
    frame_set: str                   # STA:ims20
    sequence: int                    # the envelope header's sequence number
    time_ms: int                     # the envelope (signing) time: files the message by UTC day
    raw: bytes                       # the envelope, verbatim

    @property
    def key_id(self) -> int:
        return self.envelope.key_id

    @property
    def sent_ms(self) -> int:
        return self.envelope.time_us // 1000

    @property
    def text(self) -> bytes:
        return self.envelope.body


def _ms(dt: datetime) -> int:
    return (dt - _EPOCH) // timedelta(milliseconds=1)


class Verifier:
    """Stateless checks of one payload (see the module docstring for the order and reasons)."""

    def __init__(self, trust: Any, *, max_payload: int = DEFAULT_MAX_PAYLOAD, require_signatures: bool = True,
                 decode_samples: bool = True, subframe_time_tolerance_ms: int = 1000,
                 station_policies: dict[str, StationPolicy] | None = None) -> None:
        """*station_policies*: per-station exceptions (:class:`StationPolicy`) to
        *require_signatures*; stations not listed follow the relay-wide policy."""
        self.trust = trust
        self.max_payload = max_payload
        self.require_signatures = require_signatures
        self.station_policies = dict(station_policies or {})
        self.decode_samples = decode_samples
        self.subframe_time_tolerance_ms = subframe_time_tolerance_ms

    def check(self, station: str, payload: bytes) -> Verified | Control | Rejection:
        """Verify *payload* received from *station* (the station named by the topic).  Never
        raises for any payload."""
        from ims_station import cd11
        from ims_station.cd11.timefmt import to_datetime

        if len(payload) > self.max_payload:
            return Rejection("oversize", f"{len(payload)} bytes exceeds max_payload {self.max_payload}")
        try:
            frame, end = cd11.parse_frame(payload, max_frame_size=self.max_payload)
        except cd11.Cd11CrcError as err:
            return Rejection("crc", str(err))
        except cd11.Cd11Error as err:
            return Rejection("malformed", str(err))
        if end != len(payload):
            return Rejection("malformed", f"{len(payload) - end} bytes after the frame's end at byte {end}")
        frame_set = f"{frame.creator}:{frame.destination}"
        if frame.creator != station:
            return Rejection("station_mismatch", f"frame creator {frame.creator!r} published on station "
                             f"{station!r}'s topic", frame_set, frame.sequence)
        if isinstance(frame, (cd11.Acknack, cd11.Alert)):
            return self._check_control(frame, station, frame_set)
        if not isinstance(frame, cd11.DataFrame) or isinstance(frame, cd11.Cd1Encapsulation):
            return Rejection("frame_type", f"{type(frame).__name__} (type {frame.FRAME_TYPE}) is not "
                             "accepted on the cd11 topic", frame_set, frame.sequence)

        def reject(reason: str, detail: str) -> Rejection:
            return Rejection(reason, f"{frame_set} seq {frame.sequence}: {detail}", frame_set, frame.sequence)

        nominal = to_datetime(frame.nominal_time)     # the parser accepted it: it converts
        nominal_ms = _ms(nominal)
        policy = self.station_policies.get(station)
        required = self.require_signatures if policy is None else policy.require_signatures
        unknown_ok = policy is not None and policy.accept_unknown_keys
        unverified: list[str] = []
        res = cd11.verify_frame(frame, self.trust, station=station, at=nominal)
        if res.frame is None:
            if required:
                return reject("unsigned", "frame is not signed")
        elif not res.frame.ok:
            if unknown_ok and self._unknown_key(res.frame.key_id):
                unverified.append(f"frame (key {res.frame.key_id})")
            else:
                return reject(self._key_reason(res.frame, station, "frame_signature"),
                              f"frame signature (key {res.frame.key_id}): {res.frame.reason}")
        for sf in res.subframes:
            if sf.result is None:
                if required:
                    return reject("unsigned", f"subframe {sf.index} ({sf.channel}) is not signed")
            elif not sf.result.ok:
                if unknown_ok and self._unknown_key(sf.result.key_id):
                    unverified.append(f"subframe {sf.index} {sf.channel} (key {sf.result.key_id})")
                    continue
                return reject(self._key_reason(sf.result, station, "subframe_signature"),
                              f"subframe {sf.index} ({sf.channel}) signature (key {sf.result.key_id}): "
                              f"{sf.result.reason}")
        window = frame.frame_time_length_ms
        tol = self.subframe_time_tolerance_ms
        for i, sf in enumerate(frame.subframes):
            t = _ms(to_datetime(sf.time))
            if not nominal_ms - tol <= t < nominal_ms + max(window, 1):
                return reject("subframe_time", f"subframe {i} ({sf.site}/{sf.channel}) starts at {sf.time}, "
                              f"outside frame window {frame.nominal_time} + {window} ms")
            if self.decode_samples:
                try:
                    sf.samples()
                except cd11.Cd11Error as err:
                    return reject("undecodable", f"subframe {i} ({sf.site}/{sf.channel}): {err}")
        return Verified(frame, station, frame_set, frame.sequence, nominal_ms, window, tuple(unverified))

    def _unknown_key(self, key_id: int) -> bool:
        """True if *key_id* is not in the trust store at all (the legacy policy's only exception:
        a key we do hold must verify).  Key id 0 with a signature value (seen in real
        GMS-reheadered frames) is never in a trust store: unknown too."""
        from ims_station.auth import UnknownKeyError

        try:
            self.trust.key(key_id)
        except UnknownKeyError:
            return True
        except AttributeError:     # a trust store without key lookup: nothing is "unknown"
            return False
        return False

    def _check_control(self, frame: Any, station: str, frame_set: str) -> Control | Rejection:
        """An alert or acknack from a station: CRC and creator were checked above; its frame
        signature is checked like a data frame's, because the relay acts on it (an alert is logged
        as the station's).  Control frames carry no data time: key validity is judged at the trust
        store's clock."""
        from ims_station import cd11

        kind = type(frame).__name__.lower()
        res = cd11.verify_frame(frame, self.trust, station=station)
        if res.frame is None:
            if self.require_signatures:
                return Rejection("unsigned", f"{frame_set} {kind} seq {frame.sequence}: frame is not signed",
                                 frame_set, frame.sequence)
        elif not res.frame.ok:
            return Rejection(self._key_reason(res.frame, station, "frame_signature"),
                             f"{frame_set} {kind} seq {frame.sequence}: frame signature (key "
                             f"{res.frame.key_id}): {res.frame.reason}", frame_set, frame.sequence)
        return Control(frame, kind)

    def _open_envelope(self, station: str, payload: bytes, kind: str, frame_set: str,
                       signature_reason: str) -> Any:
        """The envelope checks every enveloped station message shares (events, IMS 2.0): size,
        structure and *kind*, sender = the topic's *station*, and the signature against the trust
        store at the envelope's time -- all before any body is parsed.  Returns the
        :class:`~ims_station.envelope.Envelope` or a :class:`Rejection`."""
        from ims_station import envelope

        if len(payload) > self.max_payload:
            return Rejection("oversize", f"{len(payload)} bytes exceeds max_payload {self.max_payload}")
        try:
            env = envelope.unpack(payload, kind=kind)
        except envelope.EnvelopeError as err:
            return Rejection("malformed", str(err))
        if env.sender != station:
            return Rejection("station_mismatch", f"{kind} envelope from {env.sender!r} published on station "
                             f"{station!r}'s topic", frame_set)
        if env.key_id == 0:
            if self.require_signatures:
                return Rejection("unsigned", f"{frame_set}: {kind} envelope is not signed", frame_set)
        else:
            res = envelope.verify(env, self.trust, station)
            if not res.ok:
                return Rejection(self._key_reason(res, station, signature_reason),
                                 f"{frame_set}: {kind} signature (key {env.key_id}): {res.reason}", frame_set)
        return env

    def check_event(self, station: str, payload: bytes) -> VerifiedEvent | Rejection:
        """Verify a trigger event received on *station*'s events topic (module docstring, "Trigger
        events").  The signature is checked before the body is parsed.  Never raises for any payload."""
        from ims_station import envelope, topics

        frame_set = topics.events_frame_set(station)
        env = self._open_envelope(station, payload, "event", frame_set, "event_signature")
        if isinstance(env, Rejection):
            return env
        try:
            doc = env.json()
        except envelope.EnvelopeError as err:
            return Rejection("malformed", f"{frame_set}: {err}", frame_set)
        problem = _event_problem(doc)
        if problem:
            seq = doc.get("seq") if isinstance(doc, dict) else None
            return Rejection("malformed", f"{frame_set}: event body: {problem}", frame_set,
                             seq if _is_int(seq) and 0 <= seq <= MAX_EVENT_SEQ else None)
        seq = doc["seq"]
        if env.seq != seq:
            return Rejection("malformed", f"{frame_set}: envelope sequence number {env.seq} is not the body's "
                             f"seq {seq}", frame_set)
        if doc["station"] != station:
            return Rejection("station_mismatch", f"{frame_set} seq {seq}: event body names station "
                             f"{doc['station']!r}", frame_set, seq)
        t = _event_time_ms(doc.get("time"))
        t = env.time_us // 1000 if t is None else t
        try:            # the archive files events by UTC day: a time no date can hold is not plausible
            _EPOCH + timedelta(milliseconds=t)
        except OverflowError:
            return Rejection("implausible_time", f"{frame_set} seq {seq}: event time {t} ms is not a date",
                             frame_set, seq)
        return VerifiedEvent(env, doc, station, frame_set, seq, t, bytes(payload))

    def check_ims20(self, station: str, payload: bytes) -> VerifiedIms20 | Rejection:
        """Verify an IMS 2.0 message received on *station*'s ims20 topic (module docstring, "IMS 2.0
        messages"): the envelope checks of events, then -- only once the signature verified -- the
        text parsed by ``ims_station.ims20`` (``malformed_ims20`` with the codec's line, block and
        field).  The header's sequence number is the message's in frame set ``STA:ims20``.  Never
        raises for any payload."""
        from ims_station import ims20, topics

        frame_set = topics.message_frame_set(station, "ims20")
        env = self._open_envelope(station, payload, "ims20", frame_set, "ims20_signature")
        if isinstance(env, Rejection):
            return env
        seq = env.seq
        try:
            msg = ims20.parse(env.body)
        except ims20.Ims20Error as err:
            return Rejection("malformed_ims20", f"{frame_set} seq {seq}: {err}", frame_set, seq)
        try:            # the archive files messages by UTC day of the envelope time
            _EPOCH + timedelta(microseconds=env.time_us)
        except OverflowError:
            return Rejection("implausible_time", f"{frame_set} seq {seq}: envelope time {env.time_us} us is "
                             "not a date", frame_set, seq)
        return VerifiedIms20(env, msg, station, frame_set, seq, env.time_us // 1000, bytes(payload))

    def _key_reason(self, result: Any, station: str, default: str) -> str:
        """``wrong_station_key`` when the key is known but trusted only for other stations."""
        from ims_station.auth import UnknownKeyError

        try:
            stations = self.trust.key(result.key_id).info.stations
        except (UnknownKeyError, AttributeError):
            return default
        return "wrong_station_key" if station not in stations else default


def sequence_index(nominal_ms: int, frame_ms: int) -> int:
    """Frame index of a nominal time: frames of *frame_ms* since 2000-01-01 (the USGS/our edge's
    sequence numbering; ``ims_station.cd11.sequence_from_time``)."""
    return (nominal_ms - _EPOCH_2000_MS) // max(frame_ms, 1)


def check_time_window(v: Verified, now_s: float, max_past_s: float | None,
                      max_future_s: float | None) -> Rejection | None:
    """Time plausibility (``implausible_time``): the frame's span, nominal time to its end, must lie
    within *max_past_s* before and *max_future_s* after *now_s* (the relay's clock; None: no
    bound).  A signed frame dated 2100 would otherwise be archived and open a gap of hundreds of
    millions of frames in its frame set; like the edge's ``max_clock_offset_s`` rule
    (``edge/framer.py``), both ends are checked."""
    now_ms = int(now_s * 1000)
    start, end = v.nominal_ms, v.nominal_ms + max(v.frame_ms, 0)
    if max_past_s is not None and start < now_ms - int(max_past_s * 1000):
        off = (now_ms - start) / 1000
        return Rejection("implausible_time", f"{v.frame_set} seq {v.sequence}: nominal time "
                         f"{v.frame.nominal_time} is {off:.0f} s before the relay's clock "
                         f"(max_past_s {max_past_s:g})", v.frame_set, v.sequence)
    if max_future_s is not None and end > now_ms + int(max_future_s * 1000):
        off = (end - now_ms) / 1000
        return Rejection("implausible_time", f"{v.frame_set} seq {v.sequence}: frame ending "
                         f"{off:.0f} s after the relay's clock (nominal time {v.frame.nominal_time} + "
                         f"{v.frame_ms} ms; max_future_s {max_future_s:g})", v.frame_set, v.sequence)
    return None


def check_sequence(v: Verified, learned_offset: int | None) -> tuple[int, Rejection | None]:
    """Sequence-number vs nominal-time consistency.  Stations number frames as a fixed offset from
    the nominal-time frame index (0 for ours; another constant for a station with a counter); the
    offset is learned from the frame set's first archived frame.  A frame whose offset differs was
    renumbered: a replay of old data under a new sequence number (or a station that reset its
    counter, which an operator must look at).  Returns (offset of this frame, rejection or None)."""
    offset = v.sequence - sequence_index(v.nominal_ms, v.frame_ms)
    if learned_offset is None or offset == learned_offset:
        return offset, None
    return offset, Rejection(
        "sequence_time", f"{v.frame_set} seq {v.sequence}: nominal time {v.frame.nominal_time} implies "
        f"seq {v.sequence - offset + learned_offset} (offset {learned_offset} learned for this frame set); "
        "replayed or renumbered", v.frame_set, v.sequence)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _event_time_ms(v: Any) -> int | None:
    """Milliseconds since 1970 of an event's ``time`` (ISO 8601, naive = UTC); None if absent or
    not such a time (``_event_problem`` refuses that first)."""
    if not isinstance(v, str) or len(v) > MAX_EVENT_TEXT:
        return None
    try:
        t = datetime.fromisoformat(v)
        if t.tzinfo is None:
            t = t.replace(tzinfo=timezone.utc)
        return _ms(t)
    except (ValueError, OverflowError):
        return None


def _event_problem(doc: Any) -> str:
    """What is wrong with an event body ("" if nothing): a JSON object with an integer ``seq`` and
    ``station``; optional fields, when present, of the documented types and bounded."""
    if not isinstance(doc, dict):
        return f"a JSON {type(doc).__name__}, not an object"
    seq = doc.get("seq")
    if not _is_int(seq) or not 0 <= seq <= MAX_EVENT_SEQ:
        return f"seq {seq!r} is not an integer in 0..{MAX_EVENT_SEQ}"
    if not isinstance(doc.get("station"), str):
        return "station missing or not a string"
    for k in ("type", "state", "event_id", "algorithm", "time", "pick"):
        v = doc.get(k)
        if v is not None and (not isinstance(v, str) or len(v) > MAX_EVENT_TEXT):
            return f"{k} is not a string of at most {MAX_EVENT_TEXT} characters"
    for k in ("time", "pick"):
        if doc.get(k) is not None and _event_time_ms(doc[k]) is None:
            return f"{k} {doc[k]!r} is not an ISO 8601 time"
    for k in ("stations", "channels"):
        v = doc.get(k)
        if v is not None and (not isinstance(v, list) or len(v) > MAX_EVENT_LIST
                              or not all(isinstance(x, str) and len(x) <= MAX_EVENT_TEXT for x in v)):
            return f"{k} is not a list of at most {MAX_EVENT_LIST} short strings"
    for k in ("onset_s", "pick_s", "end_s", "duration", "peak", "coincidence_sum", "decided_s", "pre_s", "post_s"):
        v = doc.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            return f"{k} is not a number"
    return ""


def check_message_time(v: VerifiedEvent | VerifiedIms20, now_s: float, max_past_s: float | None,
                       max_future_s: float | None) -> Rejection | None:
    """Time plausibility of an enveloped message (``implausible_time``), as
    :func:`check_time_window` for a frame: the envelope's (signing) time -- and an event's ``time``
    -- must lie within *max_past_s* before and *max_future_s* after *now_s*."""
    now_ms = int(now_s * 1000)
    times = [("envelope time", v.sent_ms)]
    if isinstance(v, VerifiedEvent):
        times.append(("event time", v.time_ms))
    for what, t in times:
        if max_past_s is not None and t < now_ms - int(max_past_s * 1000):
            return Rejection("implausible_time", f"{v.frame_set} seq {v.sequence}: {what} is "
                             f"{(now_ms - t) / 1000:.0f} s before the relay's clock (max_past_s {max_past_s:g})",
                             v.frame_set, v.sequence)
        if max_future_s is not None and t > now_ms + int(max_future_s * 1000):
            return Rejection("implausible_time", f"{v.frame_set} seq {v.sequence}: {what} is "
                             f"{(t - now_ms) / 1000:.0f} s after the relay's clock (max_future_s {max_future_s:g})",
                             v.frame_set, v.sequence)
    return None
