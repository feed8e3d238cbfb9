"""CD-1.1 data frames from the reassembled streams: one frame per station per window (10 s default).

Owns the cut of :class:`~ims_station.edge.streams.Chunk` s into frame windows, the decision *when*
a window is committed, its sequence number, the channel status (format 1) derived from the
board's flags, and the hand-over of the built frame to the outbox.  It does not own the wire format
(``ims_station.cd11.build_data_frame``: CA when possible, s4 otherwise, subframe and frame
signatures, CRC), the keys (``ims_station.auth.Keystore``) or storage (``outbox.py``).

Sequence numbers: ``seq = (window start - 2000-01-01) / frame length`` (the USGS sender's rule;
``cd11.sequence_from_time`` gives the same), so a restarted gateway never needs a counter and
never reuses a number.  The frame set is ``STATION:0``.

When a window is committed:

* as soon as every expected channel's stream has reached the window's end (live data: latency is
  one window plus the board's packet length);
* or ``max_wait_s`` of clock time after the window received its first sample, if some channel is
  still missing (dead board, unrecovered link gap).  Measured from the first sample *received*,
  not from the nominal time, so that after a gateway outage the board's ring-buffer backlog fills
  its windows completely instead of each old window being committed the moment it opens.

Windows are committed in order.  A committed sequence number is never built again: samples that
arrive later for a committed window (the other half of a board packet that straddled a window
boundary after a restart, or data that came after ``max_wait_s``) are counted in
``late_samples`` and dropped -- their instants are either already in the committed frame (a
restart) or recorded as a gap in it.  The outbox enforces the same rule durably
(``highest_committed``), so it holds across restarts.

Within a window, each contiguous run of a channel is one channel subframe (a gap inside a window
gives two subframes of that channel; the channel string lists it twice, which the format allows).

Signing keys (docs/keys.md, "Rotation"): with a keystore, each frame *and* each channel subframe
is signed with the key the keystore holds for the station at the frame's nominal time
(``Keystore.signer_for``), chosen per frame: the next key takes over at its ``valid_from`` without
a restart, and a frame keeps the key of its own time (a backlog from before the switch is signed
with the old key, which the relay accepts for that time).  ``station_key_id`` and a channel's
``key_id`` pin a fixed key instead (no rotation).  At start-up a station (or pin) with no key
valid now is a ``ConfigError`` naming the key file; a key expiring within ``key_warn_days``
(30) with no successor is a WARNING (again once a day) and the SOH field
``keys.key_expires_in_days``.  A frame for whose time no key is valid (keys ended during a run)
is committed unsigned -- its samples are not lost, the relay quarantines it, ``ims-station edge
outbox resign`` can sign it later -- counted (``unsigned_frames``) with an alarm.

Implausible time: the firmware sends no DATA before its first time fix, but the framer does not
rely on it (an old firmware, a GNSS week roll-over, a corrupted time base).  :meth:`Framer.judge_time`
is the one rule, used here and by the gateway (``edge/station.py``), which acts on it before the
streams:

* samples before 2000-01-01 (the CD-1.1 sequence origin: the seq would be negative) or after year 9999
  (no CD-1.1 time stamp holds them) are ``refuse``:
  no clock can place them.  They are counted (``implausible_time_samples``), the first chunk of each
  episode raises an alarm (``on_alarm``, which the gateway turns into an immediate SOH publication;
  ``stats()["last_alarm"]``), and they are never framed;
* samples within ``max_clock_offset_s`` (default one day) of the gateway's clock are ``ok``;
* samples further away whose board time is GNSS/PPS **locked** (``link.TQ_LOCKED``) and *ahead* of
  the gateway's clock are ``board``: the locked board is the better clock (a Raspberry Pi without
  RTC boots with the time it had at shutdown, or its build date, until NTP answers: a wrong
  gateway clock lags), so they are framed by board time, and the gateway's clock is alarmed:
  ``gateway_clock`` alarm (SOH, ``stats()["clock_alarm"]``), counter
  ``board_time_trusted_samples``, a rate-limited WARNING;
* every other disagreement is ``hold``: a board that is not locked (holdover, unlocked), or a
  locked one *behind* the gateway's clock -- the failure of a GNSS receiver after a week-number
  roll-over (1024 weeks, 19.6 years back) while it reports a lock.  Neither clock can be trusted,
  so the gateway holds the samples unacknowledged in the board's ring until the clocks agree
  (``Gateway`` and ``LinkDecoder.hold``); a framer fed such a chunk directly refuses it like a
  ``refuse`` chunk.

A day leaves room for the board's ring-buffer backlog after a long gateway outage, while a board
stamping a date 19.6 years off (GPS week roll-over) without a lock is caught.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from ims_station.cd11 import ChannelInput, ChannelStatus, build_data_frame
from ims_station.cd11.timefmt import try_format_time
from ims_station.firmware import link

from .logutil import RateLimitedLog

log = logging.getLogger(__name__)

EPOCH_2000_US = int(datetime(2000, 1, 1, tzinfo=timezone.utc).timestamp()) * 1_000_000


def sample_offset_us(i: int, rate_mhz: int) -> int:
    # Same integer rounding as edge/ingest.py, so window cuts agree with the stream times.
    return (i * 1_000_000_000 + rate_mhz // 2) // rate_mhz


def first_index_at_or_after(t_first_us: int, rate_mhz: int, boundary_us: int) -> int:
    """Index of the first sample whose time is >= *boundary_us*."""
    if boundary_us <= t_first_us:
        return 0
    i = ((boundary_us - t_first_us) * rate_mhz) // 1_000_000_000
    while t_first_us + sample_offset_us(i, rate_mhz) < boundary_us:
        i += 1
    while i > 0 and t_first_us + sample_offset_us(i - 1, rate_mhz) >= boundary_us:
        i -= 1
    return i


@dataclass(frozen=True)
class ChannelSpec:
    """How one stream (``NET.STA.LOC.CHA``) appears in the frames and who signs its subframes."""

    code: str
    key_id: int | None = None          # pinned subframe key (None: the station's key at the frame's time)
    sensor_type: int = 0               # 0 seismic, 1 hydroacoustic, 2 infrasonic, 3 weather
    calib: float | None = None
    calper: float | None = None

    @property
    def site_chan_loc(self) -> tuple[str, str, str]:
        net, sta, loc, cha = self.code.split(".")
        return sta, cha, loc


@dataclass
class _Piece:
    t_first_us: int
    rate_mhz: int
    samples: np.ndarray
    time_quality: int
    status: int
    clip: bool

    @property
    def t_end_us(self) -> int:
        return self.t_first_us + sample_offset_us(len(self.samples), self.rate_mhz)


@dataclass
class _Window:
    seq: int
    start_us: int
    end_us: int
    opened: float                                  # clock.monotonic() of the first sample
    pieces: dict[str, list[_Piece]] = field(default_factory=dict)
    reached: dict[str, int] = field(default_factory=dict)   # code -> end of its last sample here


@dataclass
class BoardHealth:
    """The latest SOH of a board (``ingest.Soh``) as the status needs it."""

    last_sync_us: int = 0
    clock_diff_us: int = 0


class Framer:
    """Cuts chunks into windows and commits one signed CD-1.1 data frame per window."""

    def __init__(self, station: str, outbox: Any, *, clock: Any, channels: Iterable[ChannelSpec] = (),
                 keystore: Any = None, station_key_id: int | None = None, frame_seconds: int = 10,
                 max_wait_s: float = 30.0, destination: str = "0", compress: bool = True,
                 clock_diff_limit_us: int = 1000, on_commit: Callable[[int, bytes], None] | None = None,
                 max_clock_offset_s: float | None = 86400.0,
                 max_board_ahead_s: float | None = 30 * 86400.0,
                 on_alarm: Callable[[dict], None] | None = None, key_warn_days: float = 30.0) -> None:
        if frame_seconds <= 0:
            raise ValueError("frame_seconds must be positive")
        self.station = station
        self.frame_set = f"{station}:{destination}"
        self.outbox = outbox
        self._clock = clock
        self.channels: dict[str, ChannelSpec] = {c.code: c for c in channels}
        self.frame_us = int(frame_seconds) * 1_000_000
        self.max_wait_s = float(max_wait_s)
        self.destination = destination
        self.compress = compress
        self.clock_diff_limit_us = int(clock_diff_limit_us)
        self._on_commit = on_commit
        # None: no comparison with the gateway's clock (the 2000-01-01 floor always applies).
        self.max_clock_offset_s = None if max_clock_offset_s is None else float(max_clock_offset_s)
        self.max_board_ahead_s = None if max_board_ahead_s is None else float(max_board_ahead_s)
        self._on_alarm = on_alarm
        self.last_alarm: dict | None = None
        self.clock_alarm: dict | None = None      # the gateway's clock disagrees with a locked board
        self._implausible_episode = False
        self._clock_log = RateLimitedLog(log, clock, rate=1 / 60, burst=1)
        self._signers: dict[int, Any] = {}
        self._keystore = keystore
        self.station_key_id = station_key_id
        self.key_warn_days = float(key_warn_days)
        self._no_key_episode = False
        self._frame_missing_key = False
        self._next_key_warning = float("-inf")
        if station_key_id is not None and keystore is None:
            raise ValueError(f"key id {station_key_id} configured but no keystore given")
        for c in self.channels.values():
            if c.key_id is not None and keystore is None:
                raise ValueError(f"key id {c.key_id} configured but no keystore given")
        self.key_status()                   # fail at start-up (ConfigError), not at the first frame
        self.health: dict[str, BoardHealth] = {}   # station code -> latest SOH
        self._windows: dict[int, _Window] = {}
        hi = outbox.highest_committed(self.frame_set)
        self.committed_seq: int | None = hi   # highest seq committed (ever, incl. previous runs)
        self.counters = dict(frames=0, frame_bytes=0, samples=0, late_samples=0, partial_frames=0,
                             outbox_errors=0, implausible_time_samples=0, implausible_time_chunks=0,
                             alarms=0, unsigned_frames=0, board_time_trusted_samples=0,
                             gateway_clock_alarms=0)

    # -- keys ----------------------------------------------------------------------------------------
    def _roles(self) -> list[tuple[str, Any]]:
        """Who signs what: ("station", code) for keys chosen by time, ("pin", key id) for pins."""
        roles = [("pin", self.station_key_id) if self.station_key_id is not None else ("station", self.station)]
        for c in self.channels.values():
            roles.append(("pin", c.key_id) if c.key_id is not None else ("station", c.site_chan_loc[0]))
        return list(dict.fromkeys(roles))

    def key_status(self) -> dict | None:
        """The keys in use now and how long the keystore can still sign (None without a keystore):
        ``{"key_ids": [...], "key_expires_in_days": float | None}`` (None: no end).  Raises
        ``ConfigError`` (naming the key file) if a station or pin has no key valid now."""
        if self._keystore is None:
            return None
        now = datetime.fromtimestamp(self._clock.time(), timezone.utc)
        ids, ends = [], []
        for kind, who in self._roles():
            if kind == "pin":
                signer = self._signers[who] = self._keystore.check_pinned(who, now)
                ids.append(signer.key_id)
                end, last = signer.info.valid_until, signer
            else:
                cov = self._keystore.coverage(who, now)
                ids.append(cov.current.key_id)
                end, last = cov.until, cov.last
            if end is not None:
                ends.append((end, last))
        status: dict = {"key_ids": sorted(set(ids)), "key_expires_in_days": None}
        if ends:
            end, last = min(ends, key=lambda e: e[0])
            days = (end - now).total_seconds() / 86400.0
            status["key_expires_in_days"] = round(days, 3)
            status["key_expires"] = end.isoformat().replace("+00:00", "Z")
            mono = self._clock.monotonic()
            if days < self.key_warn_days and mono >= self._next_key_warning:
                self._next_key_warning = mono + 86400.0      # once a day, not at every SOH
                log.warning("framer %s: signing key %d (%s) expires in %.1f days (%s) and no key in %s "
                            "follows it: generate and export the next key (docs/keys.md, Rotation)",
                            self.station, last.key_id, last.info.file, days, status["key_expires"],
                            self._keystore.directory)
        return status

    def pinned_keys(self) -> list[int]:
        """The key ids pinned by ``station_key_id`` / channel ``key_id`` (empty: keys chosen by time)."""
        return [who for kind, who in self._roles() if kind == "pin"]

    def replace_keystore(self, keystore: Any) -> None:
        """Sign with *keystore* from the next frame on (the console's ``next_key``: a key
        installed since start-up takes over by the time rule).  If it cannot sign now the old
        keystore stays and the ``ConfigError`` is raised.  Call under the gateway's lock."""
        old, old_signers = self._keystore, dict(self._signers)
        self._keystore, self._signers = keystore, {}
        try:
            self.key_status()
        except Exception:
            self._keystore, self._signers = old, old_signers
            raise

    def station_signer(self, at: dt.datetime) -> Any:
        """The key that signs a station-level message (a trigger event's envelope) made at *at*:
        the pinned station key, else the keystore's key for the station then; None without a
        keystore, or when no key is valid (alarmed once per episode, as for frames)."""
        return self._signer_at(self.station_key_id, self.station, at)

    def _signer_at(self, pin: int | None, station: str, at: dt.datetime) -> Any:
        """The key for one signature of a frame whose nominal time is *at*; None if unsigned."""
        if self._keystore is None:
            return None
        if pin is not None:
            if pin not in self._signers:
                self._signers[pin] = self._keystore.signer(pin)
            return self._signers[pin]
        from ims_station.auth import UnknownKeyError

        try:
            return self._keystore.signer_for(station, at)
        except UnknownKeyError as err:
            self._no_signing_key(station, at, err)
            return None

    def _no_signing_key(self, station: str, at: dt.datetime, err: Exception) -> None:
        self._frame_missing_key = True
        if self._no_key_episode:
            return
        self._no_key_episode = True          # one error and alarm per episode, not per frame
        self.counters["alarms"] += 1
        alarm = {"alarm": "no_signing_key", "station": station, "frame_time": at.timestamp(),
                 "reason": str(err)}
        self.last_alarm = alarm
        log.error("framer %s: %s: frames are committed unsigned (the relay quarantines them) until a key "
                  "is installed; then run ims-station edge outbox resign", self.station, err)
        if self._on_alarm is not None:
            try:
                self._on_alarm(alarm)
            except Exception:
                log.exception("framer %s: alarm callback failed", self.station)

    @property
    def clock(self) -> Any:
        """The injected clock (the gateway's holds read it too)."""
        return self._clock

    def seq_of(self, t_us: int) -> int:
        return (t_us - EPOCH_2000_US) // self.frame_us

    def window_start_us(self, seq: int) -> int:
        return EPOCH_2000_US + seq * self.frame_us

    @property
    def committed_until_us(self) -> int | None:
        """Every sample before this instant is committed (or was late for a committed window)."""
        if self.committed_seq is None:
            return None
        return self.window_start_us(self.committed_seq + 1)

    # -- input ---------------------------------------------------------------------------------------
    def add_soh(self, station: str, last_sync_us: int, clock_diff_us: int) -> None:
        self.health[station] = BoardHealth(last_sync_us, clock_diff_us)

    def clock_offset_ok(self, t_first_us: int, t_end_us: int, *, limit_s: float | None = None) -> bool:
        """Do the board time span and the gateway's clock agree within *limit_s* (default
        ``max_clock_offset_s``; always True when that is None)?"""
        if self.max_clock_offset_s is None:
            return True
        now_us = self._clock.time() * 1e6
        limit = (self.max_clock_offset_s if limit_s is None else limit_s) * 1e6
        return abs(t_first_us - now_us) <= limit and abs(t_end_us - now_us) <= limit

    def judge_time(self, t_first_us: int, t_end_us: int, time_quality: int) -> str:
        """The time rule (module docstring): ``ok``, ``board`` (frame by the locked board's time,
        alarm the gateway's clock), ``hold`` (keep unacknowledged until the clocks agree) or
        ``refuse`` (before 2000 or after year 9999: never framed)."""
        if t_first_us < EPOCH_2000_US or try_format_time(t_end_us / 1e6) is None:
            return "refuse"              # before the sequence origin, or past what CD-1.1 can stamp
        if self.clock_offset_ok(t_first_us, t_end_us):
            return "ok"
        ahead_us = t_first_us - self._clock.time() * 1e6
        # A locked board is believed only so far ahead: one glitched block years ahead would
        # otherwise move the committed point past every later good sample (all "late", lost).
        plausible = self.max_board_ahead_s is None or ahead_us <= self.max_board_ahead_s * 1e6
        return "board" if time_quality == link.TQ_LOCKED and 0 < ahead_us and plausible else "hold"

    def _gateway_clock_wrong(self, chunk: Any) -> None:
        """A locked board's samples far from the gateway's clock: framed by board time; the
        gateway's clock is alarmed (once per episode in the SOH, a WARNING at most once a minute)."""
        self.counters["board_time_trusted_samples"] += int(chunk.samples.size)
        gw_time = self._clock.time()
        offset = chunk.t_first_us / 1e6 - gw_time
        if self.clock_alarm is None:
            self.counters["gateway_clock_alarms"] += 1
            self.clock_alarm = alarm = {
                "alarm": "gateway_clock", "station": self.station, "sample_time": chunk.t_first_us / 1e6,
                "gateway_time": gw_time, "offset_s": offset, "max_clock_offset_s": self.max_clock_offset_s}
            self.last_alarm = alarm
            self._fire(alarm)
        self._clock_log("gateway_clock", logging.WARNING,
                        "framer %s: the gateway's clock is %.0f s off the GNSS-locked board time (%s): "
                        "framing by board time; check NTP", self.station, -offset,
                        try_format_time(chunk.t_first_us / 1e6))

    def alarm(self, alarm: dict) -> None:
        """Raise *alarm* (a dict with an ``alarm`` name) for the SOH: counted, kept as
        ``last_alarm``, passed to ``on_alarm`` (the gateway publishes the SOH at once)."""
        self.counters["alarms"] += 1
        self.last_alarm = alarm
        self._fire(alarm)

    def _fire(self, alarm: dict) -> None:
        if self._on_alarm is not None:
            try:
                self._on_alarm(alarm)
            except Exception:   # an SOH publisher failing must not stop the framing
                log.exception("framer %s: alarm callback failed", self.station)

    def _implausible(self, chunk: Any) -> None:
        self.refuse_implausible(chunk.t_first_us, int(chunk.samples.size), chunk.codes)

    def refuse_implausible(self, t_first_us: int, n_samples: int, channels: Iterable[str]) -> None:
        """Count *n_samples* (all channels) stamped from *t_first_us* that will never be framed, and
        raise the alarm if this starts an episode (for callers that filter before the streams)."""
        n = int(n_samples)
        self.counters["implausible_time_samples"] += n
        self.counters["implausible_time_chunks"] += 1
        if self._implausible_episode:
            return
        # One alarm per episode (until a plausible chunk comes), not one per packet.
        self._implausible_episode = True
        self.counters["alarms"] += 1
        gw_time = self._clock.time()
        alarm = {"alarm": "implausible_time", "station": self.station, "channels": list(channels),
                 "sample_time": t_first_us / 1e6, "gateway_time": gw_time,
                 "offset_s": t_first_us / 1e6 - gw_time, "max_clock_offset_s": self.max_clock_offset_s}
        self.last_alarm = alarm
        stamp = try_format_time(max(t_first_us, 0) / 1e6) or f"{t_first_us} us"   # beyond year 9999: raw
        log.error("framer %s: samples stamped %s are %.0f s from the gateway's clock (or before 2000): "
                  "not framed", self.station, stamp, alarm["offset_s"])
        self._fire(alarm)

    def add_chunk(self, chunk: Any) -> list[int]:
        """Take a :class:`~ims_station.edge.streams.Chunk`; return the seqs committed as a result."""
        now = self._clock.monotonic()
        n = chunk.samples.shape[1]
        t0, rate = chunk.t_first_us, chunk.rate_mhz
        verdict = self.judge_time(t0, chunk.t_end_us, chunk.time_quality)
        if verdict in ("refuse", "hold"):
            self._implausible(chunk)
            return self.poll()
        self._implausible_episode = False
        if verdict == "board":
            self._gateway_clock_wrong(chunk)
        elif self.clock_alarm is not None and chunk.time_quality == link.TQ_LOCKED:
            log.warning("framer %s: the gateway's clock agrees with the board time again", self.station)
            self.clock_alarm = None
        i = 0
        while i < n:
            t_i = t0 + sample_offset_us(i, rate)
            seq = self.seq_of(t_i)
            end_us = self.window_start_us(seq + 1)
            j = min(n, first_index_at_or_after(t0, rate, end_us))
            if self.committed_seq is not None and seq <= self.committed_seq:
                self.counters["late_samples"] += (j - i) * len(chunk.codes)
                i = j
                continue
            w = self._windows.get(seq)
            if w is None:
                w = self._windows[seq] = _Window(seq, self.window_start_us(seq), end_us, now)
            for k, code in enumerate(chunk.codes):
                piece = _Piece(t_i, rate, chunk.samples[k, i:j], chunk.time_quality, chunk.status,
                               bool(chunk.clip_mask >> k & 1))
                w.pieces.setdefault(code, []).append(piece)
                w.reached[code] = max(w.reached.get(code, 0), piece.t_end_us)
                if code not in self.channels:
                    self.channels[code] = ChannelSpec(code)   # unconfigured channel: unsigned
            self.counters["samples"] += (j - i) * len(chunk.codes)
            i = j
        return self.poll()

    def _complete(self, w: _Window) -> bool:
        half = 0
        for code in self.channels:
            reached = w.reached.get(code)
            if reached is None:
                return False
            pieces = w.pieces[code]
            half = sample_offset_us(1, pieces[-1].rate_mhz) // 2
            if reached < w.end_us - half:
                return False
        return bool(self.channels)

    def poll(self) -> list[int]:
        """Commit the windows that are complete, or waited ``max_wait_s``; in sequence order."""
        done: list[int] = []
        now = self._clock.monotonic()
        for seq in sorted(self._windows):
            w = self._windows[seq]
            forced = now - w.opened >= self.max_wait_s
            # A later window that is complete or timed out also pushes out the earlier ones.
            if not (self._complete(w) or forced or any(
                    now - x.opened >= self.max_wait_s for s, x in self._windows.items() if s > seq)):
                break
            if not self._commit(w, partial=not self._complete(w)):
                break
            done.append(seq)
        return done

    # -- building -----------------------------------------------------------------------------------
    def status_for(self, station: str, p: _Piece) -> ChannelStatus:
        h = self.health.get(station, BoardHealth())
        return ChannelStatus(
            clipped=p.clip,
            calibration_underway=bool(p.status & link.S_CALIBRATION),
            dead_sensor_channel=bool(p.status & link.S_ADC_FAULT),
            equipment_housing_open=bool(p.status & link.S_TAMPER),
            clock_differential_too_large=bool(p.status & link.S_CLOCK_STEP)
            or abs(h.clock_diff_us) > self.clock_diff_limit_us,
            gps_receiver_off=h.last_sync_us == 0 and p.time_quality == link.TQ_UNLOCKED,
            gps_receiver_unlocked=p.time_quality != link.TQ_LOCKED,
            main_power_failure=bool(p.status & link.S_SUPPLY_LOW),
            last_gps_sync=(try_format_time(h.last_sync_us / 1e6) or "") if h.last_sync_us else "",
            clock_differential_us=max(-(2 ** 31), min(2 ** 31 - 1, h.clock_diff_us)),
        )

    def _runs(self, pieces: list[_Piece]) -> list[_Piece]:
        """Merge a channel's pieces into contiguous runs (flags OR-ed, time quality = worst)."""
        runs: list[_Piece] = []
        for p in sorted(pieces, key=lambda p: p.t_first_us):
            r = runs[-1] if runs else None
            if r is not None and r.rate_mhz == p.rate_mhz and \
                    abs(p.t_first_us - r.t_end_us) <= sample_offset_us(1, p.rate_mhz) // 2:
                runs[-1] = _Piece(r.t_first_us, r.rate_mhz, np.concatenate([r.samples, p.samples]),
                                  min(r.time_quality, p.time_quality), r.status | p.status, r.clip or p.clip)
            else:
                runs.append(p)
        return runs

    def build(self, w: _Window) -> bytes:
        # Keys by the frame's nominal time, not the clock: a backlog frame from before a switch
        # keeps the old key (docs/keys.md, "Rotation").
        at = datetime.fromtimestamp(w.start_us / 1e6, timezone.utc)
        self._frame_missing_key = False
        inputs = []
        for code in sorted(w.pieces):
            spec = self.channels.get(code) or ChannelSpec(code)
            site, chan, loc = spec.site_chan_loc
            station = ".".join(code.split(".")[:2])
            signer = self._signer_at(spec.key_id, site, at)
            for run in self._runs(w.pieces[code]):
                inputs.append(ChannelInput(site, chan, loc, np.ascontiguousarray(run.samples, dtype=np.int32),
                                           run.rate_mhz / 1000.0, run.t_first_us / 1e6,
                                           self.status_for(station, run), signer,
                                           spec.sensor_type, spec.calib, spec.calper))
        frame_signer = self._signer_at(self.station_key_id, self.station, at)
        if self._frame_missing_key:
            self.counters["unsigned_frames"] += 1
        else:
            self._no_key_episode = False     # keys are back: a later failure is a new episode
        return build_data_frame(self.station, w.seq, w.start_us / 1e6, inputs, frame_signer,
                                destination=self.destination, frame_time_length_ms=self.frame_us // 1000,
                                compress=self.compress)

    def _commit(self, w: _Window, *, partial: bool) -> bool:
        wire = self.build(w)
        try:
            self.outbox.put("cd11", self.frame_set, w.seq, w.start_us / 1e6, wire)
        except Exception as err:
            from ims_station.edge.outbox import SequenceReuseError

            if isinstance(err, SequenceReuseError):
                raise
            # Disk full with nothing to evict, I/O error: keep the window (and the board's ring
            # keeps the samples, as nothing is acknowledged); try again at the next poll.
            self.counters["outbox_errors"] += 1
            log.error("framer %s: cannot commit seq %d: %s", self.station, w.seq, err)
            return False
        del self._windows[w.seq]
        self.committed_seq = w.seq if self.committed_seq is None else max(self.committed_seq, w.seq)
        self.counters["frames"] += 1
        self.counters["frame_bytes"] += len(wire)
        if partial:
            self.counters["partial_frames"] += 1
        if self._on_commit is not None:
            self._on_commit(w.seq, wire)
        return True

    def stats(self) -> dict:
        try:
            keys = self.key_status()
        except Exception as err:     # keys ended during the run: the SOH says so, it does not fail
            keys = {"error": str(err), "key_ids": [], "key_expires_in_days": 0.0}
        return {**self.counters, "open_windows": len(self._windows), "committed_seq": self.committed_seq,
                "channels": sorted(self.channels), "last_alarm": self.last_alarm, "keys": keys,
                "clock_alarm": self.clock_alarm}
