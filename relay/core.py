"""The relay's transport-independent core: verify, dedupe, archive, track gaps, schedule acknacks.

Owns the processing of a *batch* of received payloads (``process``) and the acknack schedule
(``due_acknacks``), and the relay's counters (:class:`RelayCounters`, one place, ready for a
Prometheus export).  It does not own any transport: the MQTT client (``relay.relay``) feeds it
``Incoming`` items and acknowledges each one to the broker only after ``process`` returned, i.e.
after the batch was archived or quarantined durably and the frame-set state saved.  A future
CD-1.1/TCP consumer (``relay.tcp``) feeds the same core, with topic ``{prefix}/{STA}/cd11`` for a frame
of station STA received over TCP, so both transports share every check, the archive and the state.

Order inside ``process`` (why it is safe to crash anywhere):

1. stateless checks (``relay.verify``) and the sequence/time check against the frame set's learned
   offset; rejects become quarantine records;
2. ``archive.commit`` -- frames and quarantine records durable in one go (dedupe and replay
   decided there, under the archive's lock);
3. frame-set states updated with every archived *or duplicate* frame, atomically in the state store
   (``state.update``: read-modify-write under the store's lock, so relay processes sharing a
   shared-subscription group and one store never overwrite each other's progress);
4. return -> the transport acks the messages.

A crash after 2 and before 3 makes the acknack under-report, so the station resends and the
archive counts duplicates; a crash before 4 makes the broker redeliver, with the same effect.
Nothing is ever acknowledged (to broker or station) before it is on disk.

Poison-message boundary (why one payload can never stop the relay): whatever a payload makes our
code raise is the payload's outcome, not the batch's.  The per-message checks run under a guard
that turns an unexpected exception into a rejection with reason ``internal_error`` (quarantined,
counted, logged rate-limited, then acknowledged like any rejection).  An unexpected exception from
the batch-wide steps (archive commit, state update) cannot be pinned on one message, so the batch is
split in halves and each half processed again (already archived frames come back as duplicates);
a single message that still fails is quarantined as ``internal_error``.  Only a
:class:`~ims_station.relay.errors.RelayError` -- the archive or state store could not write, i.e. the
disk, not the data -- leaves ``process``, with nothing acknowledged, so the broker redelivers.

Trigger events (topic ``{p}/STA/events``, signed envelopes) take the same path:
``Verifier.check_event`` (signature before body), :func:`check_message_time`, ``archive.commit`` (dedupe
by frame set ``STA:events`` and the body's ``seq``), the frame-set state and its acknacks -- so the
station's outbox deletes an event only once it is archived, exactly like a frame.  IMS 2.0 messages
(topic ``{p}/STA/ims20``) take that path too: ``Verifier.check_ims20`` (the same envelope checks,
then the text parsed), :func:`check_message_time`, ``archive.commit(..., ims20=...)`` (the text,
byte-identical, in a day file; dedupe by frame set ``STA:ims20`` and the envelope's sequence
number), the frame-set state and its acknacks.

Time plausibility: a verified frame whose span is not within ``max_past_s`` before / ``max_future_s``
after the injected clock's ``time()`` is quarantined as ``implausible_time`` and counted as a clock
event (``clock_events``); it never reaches the archive or the frame-set state, so a frame dated 2100
cannot open a gap of hundreds of millions of frames.

Acknacks: one per frame set, as the consumer's current state (spec §6.3): whenever a gap opened
(rate-limited by ``acknack_min_spacing_s``), on the first frame of a frame set seen by this process,
and at least every ``acknack_interval_s`` (default 50 s, "at least once a minute") while the frame set
has been active within ``acknack_idle_s``.
"""

from __future__ import annotations

import logging
import traceback
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

from ims_station import topics
from ims_station.clock import Clock, SystemClock
from ims_station.logutil import RateLimitedLog
from ims_station.relay.archive import Archive, EventRecord, FrameRecord, Ims20Record, QuarantineRecord, StoreOutcome
from ims_station.relay.errors import RelayError
from ims_station.relay.gaps import DEFAULT_GAP_EXPIRY_S, DEFAULT_MAX_GAPS, Arrival, FrameSetState
from ims_station.relay.kpi import spans_of
from ims_station.relay.state import StateStore
from ims_station.relay.status import DEFAULT_SILENT_ALARM_S, SilenceWatch
from ims_station.relay.verify import (
    DEFAULT_MAX_FUTURE_S,
    DEFAULT_MAX_PAST_S,
    Control,
    Rejection,
    Verified,
    VerifiedEvent,
    VerifiedIms20,
    Verifier,
    check_message_time,
    check_sequence,
    check_time_window,
)

log = logging.getLogger(__name__)


@dataclass
class Incoming:
    """One received payload: the topic it came on, the bytes, an opaque token for the transport."""

    topic: str
    payload: bytes
    token: Any = None
    received_at: float = 0.0


@dataclass
class Outcome:
    token: Any
    result: str                       # "archived", "duplicate", "control", or a rejection reason
    station: str | None = None
    frame_set: str | None = None
    sequence: int | None = None
    detail: str = ""


@dataclass
class RelayCounters:
    """Every counter of the relay, in one place (for logs, the demo report, Prometheus later)."""

    received: int = 0
    bytes_received: int = 0
    verified: int = 0                 # data frames and events that passed every check (archived or duplicate)
    archived: int = 0
    events_archived: int = 0          # trigger events (frame sets STA:events), included in archived
    ims20_archived: int = 0           # IMS 2.0 messages (frame sets STA:ims20), included in archived
    duplicates: int = 0               # identical bytes already archived
    control: int = 0                  # acknack / alert frames from stations
    quarantined: int = 0
    rejected: Counter = field(default_factory=Counter)     # by reason code
    security_events: int = 0          # duplicate_conflict, replay, sequence_time, station_mismatch, keys
    clock_events: int = 0             # implausible_time: a station's clock (or a forger) far from ours
    internal_errors: int = 0          # payloads that made our code raise (quarantined as internal_error)
    acknacks_sent: int = 0
    gaps_opened: int = 0
    gaps_expired: int = 0
    frames_given_up: int = 0          # frames inside expired gaps: lost for good
    frames_overreported: int = 0      # held frames reported missing because the gap cap was hit
    unverified_signatures: int = 0    # frames accepted with signatures by keys we lack (StationPolicy)
    batches: int = 0
    store_errors: int = 0             # archive/state failures (batch not acknowledged, redelivered)
    per_station: dict[str, Counter] = field(default_factory=dict)

    def station(self, name: str) -> Counter:
        return self.per_station.setdefault(name, Counter())

    def snapshot(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k not in ("rejected", "per_station")}
        d["rejected"] = dict(self.rejected)
        d["per_station"] = {s: dict(c) for s, c in sorted(self.per_station.items())}
        return d


SECURITY_REASONS = frozenset({"duplicate_conflict", "replay", "sequence_time", "station_mismatch",
                              "wrong_station_key", "frame_signature", "subframe_signature", "event_signature",
                              "ims20_signature"})
CLOCK_REASONS = frozenset({"implausible_time"})
#: Longest exception text kept in an ``internal_error`` detail.
_MAX_ERROR_DETAIL = 500


def _text(v: Any) -> str | None:
    """An event's id or state for the index (the verifier bounded strings; anything else: None)."""
    return v if isinstance(v, str) else None


#: Longest IMS 2.0 index field kept (MSG_ID, SRID, measurement id...; the codec bounds lines).
_MAX_INDEX_TEXT = 128


def ims20_record(v: VerifiedIms20, received_at: float) -> Ims20Record:
    """The archive record of a verified IMS 2.0 message: the envelope split into header, text and
    signature, and the index fields (data type, MSG_ID, measurement id, SRID, the #Header's
    station and qualifier) the message has."""
    from ims_station.envelope import HEADER_SIZE

    msg = v.message

    def text(x: Any) -> str | None:
        return x[:_MAX_INDEX_TEXT] if isinstance(x, str) else None

    header = None
    for sec in msg.sections:
        header = getattr(sec.body, "header", None) or (sec.body if hasattr(sec.body, "alert_type") else None)
        if header is not None:
            break
    env = v.envelope
    return Ims20Record(
        v.station, v.frame_set, v.sequence, v.time_ms, v.raw, env.body, v.raw[:HEADER_SIZE], env.signature,
        key_id=v.key_id, msg_id=text(msg.msg_id), msg_type=text(msg.msg_type),
        data_type=text(",".join(sec.data_type for sec in msg.sections)),
        measurement_id=text(getattr(header, "measurement_id", None)), srid=text(getattr(header, "srid", None)),
        msg_station=text(getattr(header, "station", None)), qualifier=text(getattr(header, "qualifier", None)),
        received_at=received_at)


def describe_exception(err: BaseException) -> str:
    """``Type: message (at file:line in function)`` of *err*'s innermost frame, for logs and
    quarantine details (a traceback per poison message would flood the log)."""
    where = ""
    tb = traceback.extract_tb(err.__traceback__)
    if tb:
        f = tb[-1]
        where = f" (at {f.filename.rsplit('/', 1)[-1]}:{f.lineno} in {f.name})"
    return f"{type(err).__name__}: {str(err)[:_MAX_ERROR_DETAIL]}{where}"


@dataclass
class _Schedule:
    last_sent: float | None = None    # monotonic
    gap_pending: bool = False
    last_active: float = 0.0          # monotonic, last frame received


class RelayCore:
    """Sans-transport relay: ``process(batch) -> outcomes``, ``due_acknacks() -> [(topic, bytes)]``."""

    def __init__(self, trust: Any, state: StateStore, archive: Archive, *, prefix: str = topics.DEFAULT_PREFIX,
                 clock: Clock | None = None, verifier: Verifier | None = None, name: str = "RELAY",
                 acknack_signer: Any = None, acknack_interval_s: float = 50.0,
                 acknack_min_spacing_s: float = 2.0, acknack_idle_s: float = 900.0,
                 max_gaps: int = DEFAULT_MAX_GAPS, gap_expiry_s: float = DEFAULT_GAP_EXPIRY_S,
                 sequence_check: bool = True, expiry_sweep_s: float = 60.0,
                 max_past_s: float | None = DEFAULT_MAX_PAST_S,
                 max_future_s: float | None = DEFAULT_MAX_FUTURE_S,
                 silent_alarm_s: float | None = DEFAULT_SILENT_ALARM_S,
                 log_rate: float = 0.2, log_burst: int = 5) -> None:
        """*max_past_s* / *max_future_s*: the time-plausibility window around ``clock.time()``
        (None: that side unbounded).  *silent_alarm_s*: a station without a verified frame for
        longer is an alarm (``relay.status.SilenceWatch``; None: no alarm).  *log_rate* /
        *log_burst*: rejections and internal errors are logged at most *log_burst* at once, then
        one per ``1 / log_rate`` s per reason (the counters are exact)."""
        self.trust = trust
        self.state_store = state
        self.archive = archive
        self.prefix = prefix
        self.clock = clock or SystemClock()
        self.verifier = verifier or Verifier(trust)
        self.name = name
        self.acknack_signer = acknack_signer
        self.acknack_interval_s = acknack_interval_s
        self.acknack_min_spacing_s = acknack_min_spacing_s
        self.acknack_idle_s = acknack_idle_s
        self.sequence_check = sequence_check
        self.expiry_sweep_s = expiry_sweep_s
        self.max_past_s = max_past_s
        self.max_future_s = max_future_s
        self._log = RateLimitedLog(log, self.clock, rate=log_rate, burst=log_burst)
        self._next_sweep = float("-inf")
        self.counters = RelayCounters()
        self._state_kw = {"max_gaps": max_gaps, "gap_expiry_s": gap_expiry_s}
        self.states: dict[str, FrameSetState] = state.load_all(**self._state_kw)
        self._schedule: dict[str, _Schedule] = {}
        self.silence = SilenceWatch(silent_alarm_s)
        last = getattr(archive, "last_arrivals", None)
        if last is not None:                 # stations silent since before a restart alarm too
            for sta, t in last().items():
                self.silence.seen(sta, t)
        self._next_silence_check = float("-inf")

    # -- processing --------------------------------------------------------------------------------
    def process(self, batch: Sequence[Incoming]) -> list[Outcome]:
        """Verify, archive/quarantine durably and update state for *batch*; one outcome per item,
        in order.  Raises only :class:`~ims_station.relay.errors.RelayError` (archive/state could
        not write), without having acknowledged anything; the caller must then not ack the batch.
        Any other exception is the poison-message boundary's (module docstring): never raised."""
        try:
            return self._process(batch)
        except RelayError:
            raise
        except Exception as err:
            # _process counts nothing before its last step that can fail: no double counting.
            if len(batch) > 1:
                mid = len(batch) // 2
                return self.process(batch[:mid]) + self.process(batch[mid:])
            return [self._quarantine_poison(batch[0], err)]

    def _quarantine_poison(self, item: Incoming, err: Exception) -> Outcome:
        """*item* alone made ``_process`` raise *err*: quarantine it as ``internal_error``."""
        c = self.counters
        try:
            raw = bytes(item.payload)
        except Exception:  # noqa: BLE001 - not even bytes (a transport bug): keep the record
            raw = b""
        c.received += 1
        c.bytes_received += len(raw)
        station = self._station_of(item.topic)
        detail = f"{item.topic!r}: processing raised {describe_exception(err)}"
        rec = QuarantineRecord(reason="internal_error", detail=detail, raw=raw, station=station,
                               topic=str(item.topic), received_at=self.clock.time())
        try:
            self.archive.commit([], [rec])       # RelayError (disk) propagates: not acknowledged
        except RelayError:
            raise
        except Exception as qerr:
            # Not even the quarantine takes it: acknowledge anyway (a payload that can never be
            # stored must not block every station), with its digest in the log.
            detail += f"; not quarantined: {describe_exception(qerr)}"
        outcome = Outcome(item.token, "internal_error", station, detail=detail)
        self._account([outcome])
        return outcome

    def _station_of(self, topic: Any) -> str | None:
        """The station named by *topic*, or None (for the record of a poison message)."""
        try:
            return topics.parse(self.prefix, topic)[0]
        except Exception:  # noqa: BLE001 - any topic at all: the station is just unknown then
            return None

    def _process(self, batch: Sequence[Incoming]) -> list[Outcome]:
        c = self.counters
        now = self.clock.time()
        outcomes: list[Outcome | None] = [None] * len(batch)
        frames: list[FrameRecord] = []
        frame_idx: list[int] = []
        events: list[EventRecord] = []
        event_idx: list[int] = []
        messages: list[Ims20Record] = []
        message_idx: list[int] = []
        quarantine: list[QuarantineRecord] = []
        offsets: dict[str, int] = {}          # offsets learned in this batch (not yet saved)

        controls: list[str] = []               # counted at the end, with everything else
        unverified = 0                         # frames with signatures accepted unverified (policy)
        for i, item in enumerate(batch):
            received_at = item.received_at or now
            station = None
            spans: tuple = ()
            try:
                station, r = self._check(item, now, offsets)
                if isinstance(r, Verified):
                    spans = spans_of(r.frame)        # for the quality figures (relay.kpi)
                    unverified += bool(r.unverified)
            except RelayError:
                raise                              # the state store could not read: disk, not data
            except Exception as err:
                station = self._station_of(item.topic)
                r = Rejection("internal_error", f"{item.topic!r}: checking raised {describe_exception(err)}")
            if isinstance(r, Control):
                controls.append(station)
                if r.kind == "alert":
                    log.warning("station %s sent an alert: %s", station, getattr(r.frame, "message", ""))
                outcomes[i] = Outcome(item.token, "control", station, detail=r.kind)
                continue
            if isinstance(r, Rejection):
                quarantine.append(QuarantineRecord(reason=r.reason, detail=r.detail, raw=bytes(item.payload),
                                                   station=station, topic=item.topic, frame_set=r.frame_set,
                                                   sequence=r.sequence, received_at=received_at))
                outcomes[i] = Outcome(item.token, r.reason, station, r.frame_set, r.sequence, r.detail)
                continue
            if isinstance(r, VerifiedEvent):
                events.append(EventRecord(r.station, r.frame_set, r.sequence, r.time_ms, r.raw,
                                          event_id=_text(r.doc.get("event_id")), state=_text(r.doc.get("state")),
                                          key_id=r.key_id, received_at=received_at))
                event_idx.append(i)
                continue
            if isinstance(r, VerifiedIms20):
                messages.append(ims20_record(r, received_at))
                message_idx.append(i)
                continue
            frames.append(FrameRecord(r.station, r.frame_set, r.sequence, r.nominal_ms, r.raw,
                                      received_at=received_at, channels=spans, frame_ms=r.frame_ms))
            frame_idx.append(i)

        # Durable, or raises: nothing acked.  (Without messages, the archive's original call.)
        kw: dict[str, Any] = {}
        if events:
            kw["events"] = events
        if messages:
            kw["ims20"] = messages
        results = self.archive.commit(frames, quarantine, **kw)

        adds: dict[str, list[int]] = {}
        for i, res in zip(frame_idx + event_idx + message_idx, results):
            fr = res.record
            if res.outcome in (StoreOutcome.ARCHIVED, StoreOutcome.DUPLICATE):
                adds.setdefault(fr.frame_set, []).append(fr.sequence)
            outcomes[i] = Outcome(batch[i].token, res.outcome.value, fr.station, fr.frame_set, fr.sequence,
                                  res.detail)
        added: list[tuple[str, Any]] = []

        def apply(states: dict[str, FrameSetState]) -> None:
            added.clear()
            for name, seqs in adds.items():
                st = states[name]
                if st.sequence_offset is None and name in offsets:
                    st.sequence_offset = offsets[name]
                added.extend((name, st.add(seq, now)) for seq in seqs)

        if adds:
            self.states.update(self.state_store.update(adds, apply, **self._state_kw))
        # Counting starts here, after the last step that may raise (see ``process``).
        c.received += len(batch)
        c.bytes_received += sum(len(item.payload) for item in batch)
        c.unverified_signatures += unverified
        for station in controls:
            c.control += 1
            c.station(station)["control"] += 1
        mono = self.clock.monotonic()
        for name, add in added:
            sched = self._schedule.setdefault(name, _Schedule())
            sched.last_active = mono
            if add.new_gap:
                c.gaps_opened += 1
                sched.gap_pending = True
            if add.arrival is Arrival.FIRST or sched.last_sent is None:
                sched.gap_pending = True      # tell a frame set new to this process where we stand
            c.frames_overreported += add.merged

        self._account(outcomes)  # type: ignore[arg-type]
        for i in frame_idx:
            o = outcomes[i]
            if o is not None and o.result in ("archived", "duplicate") and o.station:
                self.silence.seen(o.station, batch[i].received_at or now)
        c.batches += 1
        return outcomes  # type: ignore[return-value]

    def _check(self, item: Incoming, now: float, offsets: dict[str, int]) -> tuple[str | None, Any]:
        """The per-message checks: topic, verifier, time window, sequence/time (-> station and a
        Verified, Control or Rejection).  May raise only on a bug: ``_process`` guards it."""
        try:
            station, kind = topics.parse(self.prefix, item.topic)
            if kind not in topics.RELAY_KINDS:
                raise topics.TopicError(f"topic {item.topic!r}: kind {kind!r} is not one of "
                                        f"{', '.join(topics.RELAY_KINDS)}")
        except topics.TopicError as err:
            return None, Rejection("bad_topic", str(err))
        if kind in ("events", "ims20"):        # enveloped messages: one path (frame set STA:<kind>)
            check = self.verifier.check_event if kind == "events" else self.verifier.check_ims20
            m = check(station, item.payload)
            if isinstance(m, (VerifiedEvent, VerifiedIms20)):
                return station, check_message_time(m, now, self.max_past_s, self.max_future_s) or m
            return station, m
        r = self.verifier.check(station, item.payload)
        if not isinstance(r, Verified):
            return station, r
        bad = check_time_window(r, now, self.max_past_s, self.max_future_s)
        if bad is not None:
            return station, bad
        if self.sequence_check:
            st = self.states.get(r.frame_set)
            if (st is None or st.sequence_offset is None) and r.frame_set not in offsets:
                # Another relay process may have learned it: ask the store once per batch.
                st = self.state_store.load(r.frame_set, **self._state_kw) or st
                if st is not None:
                    self.states[r.frame_set] = st
            learned = offsets.get(r.frame_set, st.sequence_offset if st else None)
            off, bad = check_sequence(r, learned)
            if bad is not None:
                return station, bad
            offsets.setdefault(r.frame_set, off)
        return station, r

    def _account(self, outcomes: Sequence[Outcome]) -> None:
        """Count *outcomes* and log the rejections (rate-limited per reason)."""
        c = self.counters
        for o in outcomes:
            if o.station:
                c.station(o.station)[o.result] += 1
            if o.result == "archived":
                c.archived += 1
                c.verified += 1
                if o.frame_set and o.frame_set.endswith(":events"):
                    c.events_archived += 1
                elif o.frame_set and o.frame_set.endswith(":ims20"):
                    c.ims20_archived += 1
            elif o.result == "duplicate":
                c.duplicates += 1
                c.verified += 1
            elif o.result != "control":
                c.quarantined += 1
                c.rejected[o.result] += 1
                who = o.station or "?"
                if o.result == "internal_error":
                    c.internal_errors += 1
                    self._log(o.result, logging.ERROR, "internal_error: a payload from %s made the relay "
                              "raise; quarantined and acknowledged: %s", who, o.detail)
                elif o.result in CLOCK_REASONS:
                    c.clock_events += 1
                    self._log(o.result, logging.WARNING, "CLOCK %s from %s: %s", o.result, who, o.detail)
                elif o.result in SECURITY_REASONS:
                    c.security_events += 1
                    self._log(o.result, logging.WARNING, "SECURITY %s from %s: %s", o.result, who, o.detail)
                else:
                    self._log(o.result, logging.INFO, "rejected %s from %s: %s", o.result, who, o.detail)

    # -- acknacks ----------------------------------------------------------------------------------
    def acknack_bytes(self, frame_set: str) -> bytes:
        """The CD-1.1 acknack frame of *frame_set*'s current stored state."""
        st = self.state_store.load(frame_set, **self._state_kw) or FrameSetState(frame_set, **self._state_kw)
        return self._acknack_of(st)

    def _acknack_of(self, st: FrameSetState) -> bytes:
        from ims_station import cd11

        frame_set = st.name
        lowest, highest, gaps = st.acknack_fields()
        frame = cd11.Acknack(creator=self.name, destination="0", frame_set=frame_set,
                             lowest=lowest, highest=highest, gaps=gaps)
        return frame.to_bytes(self.acknack_signer)

    def _next_due(self, sched: _Schedule, mono: float) -> float:
        """Monotonic time at which *sched*'s frame set is due an acknack (inf: not due)."""
        last = float("-inf") if sched.last_sent is None else sched.last_sent
        if sched.gap_pending:
            return last + self.acknack_min_spacing_s
        if mono - sched.last_active <= self.acknack_idle_s:
            return last + self.acknack_interval_s
        return float("inf")

    def _sweep_expired(self) -> None:
        """Give up gaps older than the expiry in every stored frame set (counted as lost)."""
        now = self.clock.time()
        gone_by: dict[str, list] = {}

        def expire(states: dict[str, FrameSetState]) -> None:
            gone_by.clear()
            for name, st in states.items():
                gone = st.expire(now)
                if gone:
                    gone_by[name] = gone

        names = list(self.state_store.load_all(**self._state_kw))
        if names:
            self.states.update(self.state_store.update(names, expire, **self._state_kw))
        for name, gone in gone_by.items():
            n = sum(g.size for g in gone)
            self.counters.gaps_expired += len(gone)
            self.counters.frames_given_up += n
            log.warning("frame set %s: gave up %d gap(s), %d frame(s) never received", name, len(gone), n)
            self._schedule.setdefault(name, _Schedule(last_active=self.clock.monotonic())).gap_pending = True

    def due_acknacks(self, *, force: bool = False) -> list[tuple[str, str, bytes]]:
        """(topic, frame set, acknack bytes) for every frame set due now (every stored one with
        *force*); marks them sent.  Every ``expiry_sweep_s`` it first expires old gaps."""
        mono = self.clock.monotonic()
        if force or mono >= self._next_sweep:
            self._next_sweep = mono + self.expiry_sweep_s
            self._sweep_expired()
        if force:
            for name in self.state_store.load_all(**self._state_kw):
                self._schedule.setdefault(name, _Schedule(last_active=mono))
        out = []
        for fs, sched in self._schedule.items():
            if not (force or self._next_due(sched, mono) <= mono):
                continue
            # The latest stored state: another relay process may have archived more since.
            st = self.state_store.load(fs, **self._state_kw) or self.states.get(fs)
            if st is None:
                continue
            self.states[fs] = st
            try:
                station = topics.check_station(st.station)
            except topics.TopicError:
                continue      # cannot happen for verified frames (creator == topic station)
            out.append((topics.topic(self.prefix, station, "acknack"), fs, self._acknack_of(st)))
            sched.last_sent = mono
            sched.gap_pending = False
            self.counters.acknacks_sent += 1
        return out

    def next_acknack_in(self) -> float:
        """Seconds until ``due_acknacks`` has something (at most ``acknack_interval_s``)."""
        mono = self.clock.monotonic()
        best = min((self._next_due(s, mono) for s in self._schedule.values()), default=float("inf"))
        return max(0.0, min(best - mono, self.acknack_interval_s))

    def check_silence(self, *, every_s: float = 1.0) -> list[str]:
        """Run the silent-station alarm (at most every *every_s* s): stations that went silent now."""
        mono = self.clock.monotonic()
        if mono < self._next_silence_check:
            return []
        self._next_silence_check = mono + every_s
        return self.silence.check(self.clock.time())

    def stats(self) -> dict[str, Any]:
        d = self.counters.snapshot()
        d["silent"] = sorted(self.silence.silent)
        d["silent_alarms"] = self.silence.alarms
        d["frame_sets"] = {fs: {"lowest": st.lowest, "highest": st.highest, "gaps": len(st.gaps),
                                "missing": st.missing()} for fs, st in sorted(self.states.items())}
        return d

    def close(self) -> None:
        self.archive.close()
        self.state_store.close()


