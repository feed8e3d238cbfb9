"""Auxiliary-station mode: which events release the station's held data.

An auxiliary station ([station] mode = "auxiliary", docs/uplink.md "Auxiliary mode") keeps its
continuous data in the outbox, held (``Outbox(hold_kinds=...)``), and sends a segment only when
something releases it: a station event (here) or the relay's window request (``edge/commands.py``).

The rule, for every event document the station emits (any stage's, through the one emitter of
``edge/station.py``), that has ``"state"`` and a numeric ``"onset_s"``:

* ``"on"``: release ``[onset_s - pre, now + post]`` -- the pre-event margin and the event so far,
  and ``post`` seconds ahead (frames committed later inside the window are sent when committed);
* ``"off"``: release ``[onset_s - pre, end_s + post]`` (``end_s`` missing: now).

``pre``/``post`` are the document's ``pre_s``/``post_s`` when given (the trigger's own margins),
else ``[auxiliary] release_pre_s``/``release_post_s``; each bounded to [0, 1 day].  Other documents
release nothing.  A failed release (disk full) is counted and logged and never stops the event,
which is committed first.  Pure except for the outbox call; does not own the hold/release store
(``outbox``), the event path (``station.event_emitter``) or requests (``commands``).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from typing import Any, Callable

from ims_station.logutil import RateLimitedLog

log = logging.getLogger(__name__)

MAX_MARGIN_S = 86400.0


def release_window(doc: dict, now: float, pre_s: float, post_s: float) -> tuple[float, float] | None:
    """The window [start, end) an event document releases (module docstring), or None."""
    state = doc.get("state")
    onset = doc.get("onset_s")
    if state not in ("on", "off") or isinstance(onset, bool) or not isinstance(onset, (int, float)) \
            or not math.isfinite(onset):
        return None

    def margin(key: str, default: float) -> float:
        v = doc.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            v = default
        return min(max(float(v), 0.0), MAX_MARGIN_S)

    pre, post = margin("pre_s", pre_s), margin("post_s", post_s)
    end = doc.get("end_s") if state == "off" else None
    if isinstance(end, bool) or not isinstance(end, (int, float)) or not math.isfinite(end):
        end = now
    start, stop = float(onset) - pre, max(float(end), float(onset)) + post
    return (start, stop) if stop > start else None


class EventRelease:
    """Releases the held data frames of *frame_set* around each event (:func:`release_window`)."""

    def __init__(self, outbox: Any, frame_set: str, clock: Any, *, pre_s: float, post_s: float,
                 on_release: Callable[[], None] = lambda: None) -> None:
        self.outbox = outbox
        self.frame_set = frame_set
        self.clock = clock
        self.pre_s = float(pre_s)
        self.post_s = float(post_s)
        self.on_release = on_release           # wakes the uplink
        self._rlog = RateLimitedLog(log, clock)
        self.counters = dict(events=0, releases=0, frames_released=0, release_errors=0)
        self.last_window: tuple[float, float] | None = None
        self.windows: deque[tuple[float, float]] = deque(maxlen=1000)     # the last windows released

    def on_event(self, doc: dict) -> int:
        """Release the window of *doc*; the number of frames released now (0 on failure)."""
        self.counters["events"] += 1
        try:
            w = release_window(doc, self.clock.time(), self.pre_s, self.post_s)
            if w is None:
                return 0
            n = self.outbox.release(self.frame_set, *w)
        except Exception as err:
            self.counters["release_errors"] += 1
            self._rlog("release", logging.ERROR, "auxiliary %s: could not release the data of an event: %s: %s",
                       self.frame_set, type(err).__name__, err)
            return 0
        self.counters["releases"] += 1
        self.counters["frames_released"] += n
        self.last_window = w
        self.windows.append(w)
        if n:
            self.on_release()
        return n

    def wrap(self, emit: Callable[[dict], int]) -> Callable[[dict], int]:
        """*emit* (the station's event emitter) that also releases the event's data, after the
        event is committed."""
        def emit_and_release(doc: dict) -> int:
            seq = emit(doc)
            self.on_event(doc)
            return seq

        return emit_and_release

    def stats(self) -> dict:
        return {**self.counters, "last_window": self.last_window}


class AuxiliaryStation:
    """Auxiliary mode of one assembled station: the event release and (when the station can
    authenticate the relay and sign its answers) the window-request handler on its uplink."""

    def __init__(self, release: EventRelease, commands: Any = None, disabled_reason: str | None = None) -> None:
        self.release = release
        self.commands = commands
        self.disabled_reason = disabled_reason

    @classmethod
    def build(cls, station_cfg: Any, settings: Any, *, outbox: Any, framer: Any, clock: Any, keystore: Any,
              uplink: Any) -> "AuxiliaryStation":
        """From the station file (``[auxiliary]``, ``[keys]``, ``[uplink] acknack_trust``), as
        ``edge/station.assemble`` wires it.  Requests need the relay's trust store (``[uplink]
        acknack_trust``: the relay's key) and the station's keystore (its answers are signed);
        without them the station still releases data around its events, and says why requests
        are off (a WARNING, and ``disabled`` in the SOH)."""
        from ims_station.edge.commands import CommandCore, CommandHandler
        from ims_station.edge.uplink import relay_acknack_keys
        from ims_station.edge.uplink_config import acknack_options

        aux = lambda key: settings.get("auxiliary", key)  # noqa: E731
        notify = uplink.notify if uplink is not None else (lambda: None)
        release = EventRelease(outbox, framer.frame_set, clock, pre_s=aux("release_pre_s"),
                               post_s=aux("release_post_s"), on_release=notify)
        opts = acknack_options(settings) if uplink is not None else {}
        why = None
        if uplink is None:
            why = "no [uplink]"
        elif not opts:
            why = "no [uplink] acknack_trust (the relay's key authenticates requests)"
        elif keystore is None:
            why = "no [keys] keystore (the station signs its answers)"
        if why is not None:
            if uplink is not None:
                log.warning("station %s: auxiliary mode: window requests are off: %s", station_cfg.code, why)
            return cls(release, None, why)
        keys = settings.keys
        pinned = keys.get("station_key_id")
        code = station_cfg.code

        def signer_for(at: Any) -> Any:
            return keystore.signer(pinned) if pinned is not None else keystore.signer_for(code, at)

        core = CommandCore(code, opts["acknack_trust"], opts["relay_name"],
                           relay_acknack_keys(opts["acknack_trust"], opts["relay_name"], opts["acknack_key_ids"]),
                           max_request_s=aux("max_request_s"), max_age_s=aux("command_max_age_s"))
        handler = CommandHandler(core, outbox, clock=clock, signer_for=signer_for, frame_set=framer.frame_set,
                                 frame_seconds=framer.frame_us / 1e6)
        uplink.command_handler = handler
        return cls(release, handler)

    def wrap(self, emit: Callable[[dict], int]) -> Callable[[dict], int]:
        return self.release.wrap(emit)

    def stats(self) -> dict:
        return {"events": self.release.stats(),
                "requests": self.commands.stats() if self.commands is not None else {"disabled": self.disabled_reason}}
