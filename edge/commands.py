"""Commands to a station over MQTT: the relay's ``send_window`` request and the station's answer.

Owns the command protocol of ``{p}/{STA}/cmd`` (relay -> station) and ``{p}/{STA}/cmd/response``
(station -> relay), docs/topics.md, "Commands": both are signed envelopes
(:mod:`ims_station.envelope`, kinds ``command`` and ``command_response``).  A command is trusted
only when it comes from the relay by name *and* key -- the envelope's sender is ``[uplink]
relay_name`` and it is signed by one of the relay's keys in the ``[uplink] acknack_trust`` store,
the same rule as the relay's acknacks (``edge/uplink.py``, :func:`relay_acknack_keys`) -- is fresh
(its signing time within ``[auxiliary] command_max_age_s`` of the station's clock, either way) and
new (its ``id`` not seen within that time).  Its body::

    {"cmd": "send_window", "id": "<1-64 printable ASCII>", "start": T, "end": T}

with T an ISO-8601 UTC time (``2026-12-03T12:00:00Z``; no zone: UTC) or POSIX seconds, the window
``[start, end)`` at most ``[auxiliary] max_request_s`` long.  The station releases the held frames
overlapping the window (``Outbox.release``; frames recorded later inside it are sent when committed)
and answers, signed with its own key::

    {"id": ..., "ok": true, "frames": n, "released": r, "first_seq": s, "last_seq": s,
     "start": ISO, "end": ISO, "missing": [{"start": ISO, "end": ISO, "reason": R}, ...]}

``frames``: the frames of the window the station holds (all now sendable; ``released`` of them were
held until now); ``missing``: the spans of the window it has no frame for, ``reason`` one of
``evicted`` (left the buffer: age or byte bound), ``not yet recorded`` (beyond the last frame
committed) or ``gap in data`` (never framed: no samples reached the station).  A window with no
frame at all is answered ``{"id", "ok": false, "error": "...", "missing": [...]}`` naming the
missing spans and their reasons; a refused command ``{"id", "ok": false, "error": "..."}`` naming
what is wrong (``id`` is echoed when the body had a well-formed one, else null).

Split: :class:`CommandCore` is the protocol core (no I/O, no clock: the caller passes *now*) --
authentication, freshness, replay, the request's bounds, and :func:`missing_spans`;
:class:`CommandHandler` applies a request to the outbox and signs the answer (the uplink calls
:meth:`CommandHandler.handle` for each message on the cmd topic, on its network thread, and
publishes what it returns).  Every command is untrusted input: bounded before parsing, refused with
a :class:`CommandRefused` (a :class:`RemoteProtocolError`) counted by reason, logged rate-limited;
whatever else one message raises is counted ``internal_errors`` and answered, never raised to the
uplink.  Replay memory is in RAM: after a restart a replayed command within its age limit
re-releases the same window, which is harmless (the relay dedupes).  Does not own MQTT (``uplink``),
the envelope format, the hold/release store (``outbox``) or event-triggered release
(``edge/auxiliary.py``).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from ims_station import envelope
from ims_station.errors import RemoteProtocolError
from ims_station.logutil import RateLimitedLog

log = logging.getLogger(__name__)

COMMANDS = ("send_window",)
EPOCH_2000 = 946_684_800.0             # the CD-1.1 sequence numbers' origin (edge/framer.py)
MAX_COMMAND_BYTES = 16 << 10           # a command is a few hundred bytes: refuse more before parsing
MAX_MISSING_SPANS = 100                # spans listed in an answer (then "missing_truncated": true)
_ID_RE = re.compile(r"^[ -~]{1,64}$")
_TIME_MIN, _TIME_MAX = EPOCH_2000, 4_102_444_800.0      # 2000-01-01 .. 2100-01-01


class CommandRefused(RemoteProtocolError):
    """A command was refused; *reason* is the counter (``unsigned``, ``bad_signature``,
    ``wrong_sender``, ``stale``, ``replay``, ``malformed``, ``unknown_command``, ``bad_window``,
    ``window_too_long``) and the message says what is wrong; *id* the command's id if it had one."""

    def __init__(self, reason: str, message: str, id: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.id = id


@dataclass(frozen=True)
class WindowRequest:
    id: str
    start: float               # POSIX seconds, [start, end)
    end: float
    sender: str
    time_us: int               # the command's signing time


def iso(t: float) -> str:
    """POSIX seconds as ISO-8601 UTC with a ``Z`` (milliseconds when not whole)."""
    d = dt.datetime.fromtimestamp(t, tz=dt.timezone.utc)
    return d.strftime("%Y-%m-%dT%H:%M:%S") + (f".{d.microsecond // 1000:03d}" if d.microsecond else "") + "Z"


def parse_time(value: Any, what: str) -> float:
    """A command's time: ISO-8601 (``Z``, an offset, or none for UTC) or POSIX seconds; finite and
    within 2000-2100, else :class:`CommandRefused` (``bad_window``) naming *what*."""
    if isinstance(value, bool):
        t = math.nan
    elif isinstance(value, (int, float)):
        t = float(value)
    elif isinstance(value, str) and len(value) <= 40:
        try:
            d = dt.datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise CommandRefused("bad_window", f"{what}: {value!r} is not an ISO-8601 time or POSIX seconds") from None
        if d.tzinfo is None:
            d = d.replace(tzinfo=dt.timezone.utc)
        t = d.timestamp()
    else:
        raise CommandRefused("bad_window", f"{what}: must be an ISO-8601 string or POSIX seconds")
    if not (math.isfinite(t) and _TIME_MIN <= t <= _TIME_MAX):
        raise CommandRefused("bad_window", f"{what}: {value!r} is not a time between 2000 and 2100")
    return t


def missing_spans(present: Iterable[int], start: float, end: float, *, frame_seconds: float,
                  highest_committed: int | None, evicted_through: int | None, now: float) -> list[dict]:
    """The spans of [*start*, *end*) with no stored frame, each with its reason (module docstring):
    a frame slot (sequence number ``s`` covers ``EPOCH_2000 + s * frame_seconds`` for
    *frame_seconds*) is ``not yet recorded`` when it starts at or after *now* or lies beyond the
    highest sequence number ever committed, ``evicted`` when at or below the highest evicted one,
    else ``gap in data``.  Consecutive slots of one reason make one span, clipped to the window."""
    have = set(present)
    first = math.floor((start - EPOCH_2000) / frame_seconds)
    last = math.ceil((end - EPOCH_2000) / frame_seconds) - 1
    spans: list[dict] = []
    for s in range(first, last + 1):
        if s in have:
            continue
        t0 = EPOCH_2000 + s * frame_seconds
        if t0 >= now or highest_committed is None or s > highest_committed:
            reason = "not yet recorded"
        elif evicted_through is not None and s <= evicted_through:
            reason = "evicted"
        else:
            reason = "gap in data"
        a, b = max(t0, start), min(t0 + frame_seconds, end)
        if spans and spans[-1]["reason"] == reason and spans[-1]["_end"] == a:
            spans[-1]["_end"] = b
        else:
            spans.append({"_start": a, "_end": b, "reason": reason})
    return [{"start": iso(sp["_start"]), "end": iso(sp["_end"]), "reason": sp["reason"]} for sp in spans]


class CommandCore:
    """Authenticates and bounds commands (no I/O, no clock).

    *trust*: the relay's trust store; *relay_key_ids*: the relay's keys in it (resolved as for the
    acknacks, :func:`ims_station.edge.uplink.relay_acknack_keys`); *max_age_s*: how far a
    command's signing time may be from *now*; *max_request_s*: the longest window."""

    def __init__(self, station: str, trust: Any, relay_name: str, relay_key_ids: Iterable[int], *,
                 max_request_s: float, max_age_s: float, max_ids: int = 4096) -> None:
        self.station = station
        self.trust = trust
        self.relay_name = relay_name
        self.relay_key_ids = frozenset(relay_key_ids)
        self.max_request_s = float(max_request_s)
        self.max_age_s = float(max_age_s)
        self.max_ids = int(max_ids)
        self._seen: OrderedDict[str, float] = OrderedDict()    # id -> signing time (s), oldest first

    def check(self, payload: bytes, now: float) -> tuple[str, WindowRequest]:
        """The verified command (name, request) in *payload*, else :class:`CommandRefused`."""
        if len(payload) > MAX_COMMAND_BYTES:
            raise CommandRefused("malformed", f"command of {len(payload)} bytes is above {MAX_COMMAND_BYTES}")
        try:
            env = envelope.unpack(payload, kind="command")
        except envelope.EnvelopeError as err:
            raise CommandRefused("malformed", str(err)) from None
        cid = self._peek_id(env)           # only to echo it: nothing else of the body is read yet
        if env.key_id == 0:
            raise CommandRefused("unsigned", "command is not signed (the relay's key must sign it)", cid)
        if env.sender != self.relay_name:
            raise CommandRefused("wrong_sender", f"sender {env.sender!r} is not the relay {self.relay_name!r}", cid)
        if env.key_id not in self.relay_key_ids:
            raise CommandRefused("bad_signature", f"key {env.key_id} is not one of the relay's keys "
                                 f"{sorted(self.relay_key_ids)}", cid)
        res = envelope.verify(env, self.trust, self.relay_name)
        if not res.ok:
            raise CommandRefused("bad_signature", f"signature: {res.reason}", cid)
        # Authentic from here on.
        t = env.time_us / 1e6
        if abs(now - t) > self.max_age_s:
            raise CommandRefused("stale", f"command signed at {iso(t) if _TIME_MIN <= t <= _TIME_MAX else t} "
                                 f"is more than {self.max_age_s:g} s from the station's clock {iso(now)}", cid)
        body = env.json()
        if not isinstance(body, dict):
            raise CommandRefused("malformed", "command body is not a JSON object", cid)
        if cid is None:
            raise CommandRefused("malformed", "id: must be a string of 1-64 printable ASCII characters")
        self._forget(now)
        if cid in self._seen:
            raise CommandRefused("replay", f"id {cid!r} was already used (replayed command)", cid)
        self._seen[cid] = t
        while len(self._seen) > self.max_ids:
            self._seen.popitem(last=False)
        cmd = body.get("cmd")
        if cmd not in COMMANDS:
            raise CommandRefused("unknown_command", f"cmd: {str(cmd)[:40]!r} is not one of {', '.join(COMMANDS)}", cid)
        try:
            start = parse_time(body.get("start"), "start")
            end = parse_time(body.get("end"), "end")
        except CommandRefused as err:
            err.id = cid
            raise
        if end <= start:
            raise CommandRefused("bad_window", f"end {iso(end)} is not after start {iso(start)}", cid)
        if end - start > self.max_request_s:
            raise CommandRefused("window_too_long", f"window of {end - start:g} s is longer than the station's "
                                 f"[auxiliary] max_request_s = {self.max_request_s:g} s: ask for shorter windows", cid)
        return cmd, WindowRequest(cid, start, end, env.sender, env.time_us)

    @staticmethod
    def _peek_id(env: envelope.Envelope) -> str | None:
        try:
            body = env.json()
        except envelope.EnvelopeError:
            return None
        cid = body.get("id") if isinstance(body, dict) else None
        return cid if isinstance(cid, str) and _ID_RE.match(cid) else None

    def _forget(self, now: float) -> None:
        """Ids older than the age limit cannot come back (a replay of them is stale)."""
        while self._seen:
            cid, t = next(iter(self._seen.items()))
            if now - t <= self.max_age_s:
                break
            self._seen.popitem(last=False)


class CommandHandler:
    """Applies verified commands to the outbox and signs the answers (the uplink's cmd hook).

    *outbox*: ``release(frame_set, start, end)`` and ``window(frame_set, start, end)``
    (:class:`ims_station.edge.outbox.Outbox`); *signer_for*: ``at (datetime) -> Signer`` with the
    station's key; *frame_set*/*frame_seconds*: the data frames' (the framer's)."""

    def __init__(self, core: CommandCore, outbox: Any, *, clock: Any, signer_for: Callable[[dt.datetime], Any],
                 frame_set: str, frame_seconds: float) -> None:
        self.core = core
        self.outbox = outbox
        self.clock = clock
        self.signer_for = signer_for
        self.frame_set = frame_set
        self.frame_seconds = float(frame_seconds)
        self._rlog = RateLimitedLog(log, clock)
        self.counters: dict[str, int] = dict(commands=0, answered=0, refused=0, internal_errors=0,
                                             frames_released=0)
        self.refused: dict[str, int] = {}
        self.last: dict | None = None

    def stats(self) -> dict:
        return {**self.counters, "refused_by_reason": dict(self.refused), "last": self.last}

    def handle(self, payload: bytes) -> bytes | None:
        """The signed answer to one message of the cmd topic (None if it cannot be signed).  Never
        raises: a bad command is counted and answered with its error."""
        self.counters["commands"] += 1
        now = self.clock.time()
        try:
            cmd, req = self.core.check(bytes(payload), now)
            doc = self._send_window(req, now)
        except CommandRefused as err:
            self.counters["refused"] += 1
            self.refused[err.reason] = self.refused.get(err.reason, 0) + 1
            self._rlog(f"refused-{err.reason}", logging.WARNING, "station %s: refused a command (%s): %s",
                       self.core.station, err.reason, err)
            doc = {"id": err.id, "ok": False, "error": str(err), "reason": err.reason}
        except Exception as err:        # poison-message boundary: counted, answered, never raised
            self.counters["internal_errors"] += 1
            self._rlog("internal", logging.ERROR, "station %s: command failed: %s: %s", self.core.station,
                       type(err).__name__, err)
            doc = {"id": None, "ok": False, "error": f"internal error: {type(err).__name__}", "reason": "internal"}
        self.last = {k: doc.get(k) for k in ("id", "ok", "frames", "error")} | {"time": now}
        try:
            at = dt.datetime.fromtimestamp(now, tz=dt.timezone.utc)
            out = envelope.pack_json("command_response", self.core.station, doc, time_us=int(now * 1e6),
                                     signer=self.signer_for(at))
        except Exception as err:
            self.counters["internal_errors"] += 1
            self._rlog("sign", logging.ERROR, "station %s: cannot sign a command response: %s", self.core.station, err)
            return None
        self.counters["answered"] += 1
        return out

    def _send_window(self, req: WindowRequest, now: float) -> dict:
        released = self.outbox.release(self.frame_set, req.start, req.end)
        self.counters["frames_released"] += released
        w = self.outbox.window(self.frame_set, req.start, req.end)
        seqs = w["seqs"]
        missing = missing_spans(seqs, req.start, req.end, frame_seconds=self.frame_seconds,
                                highest_committed=w["highest_committed"], evicted_through=w["evicted_through"],
                                now=now)
        doc: dict[str, Any] = {"id": req.id, "ok": bool(seqs), "frames": len(seqs), "released": released,
                               "first_seq": seqs[0] if seqs else None, "last_seq": seqs[-1] if seqs else None,
                               "start": iso(req.start), "end": iso(req.end),
                               "missing": missing[:MAX_MISSING_SPANS]}
        if len(missing) > MAX_MISSING_SPANS:
            doc["missing_truncated"] = True
        if not seqs:
            named = "; ".join(f"{m['start']}..{m['end']} {m['reason']}" for m in missing[:5])
            doc["error"] = (f"no data for {iso(req.start)}..{iso(req.end)}: {named}"
                            + (" ..." if len(missing) > 5 else ""))
        log.info("station %s: window %s..%s requested by %s (id %s): %d frames (%d released), %d spans missing",
                 self.core.station, iso(req.start), iso(req.end), req.sender, req.id, len(seqs), released,
                 len(missing))
        return doc
