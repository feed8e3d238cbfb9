"""The station's trigger stage: the ``[trigger]`` settings, the streaming :class:`Detector` and the
stream stage that makes its decisions durable events.

Owns:

* :class:`TriggerSettings` -- the station file's ``[trigger]`` table (:data:`SCHEMA`, merged into
  ``edge/config.py``'s, and :data:`DEFAULTS`; docs/configuration.md documents both) and its checks
  against the channels and rates of the station (:func:`settings_from_station`), every refusal a
  ``ConfigError(file, "trigger.<key>", reason)``.  ``ims-station trigger replay`` builds the same
  settings from its options (:func:`settings_from_table`).
* :class:`Detector` -- sans-I/O: fed per-station multi-channel chunks (codes, first sample time,
  rate, samples, time quality, clip mask, continuity), it runs each channel through the filter, the
  characteristic function and the on/off logic of ``edge/trigger.py`` and decides *network*
  triggers by coincidence as it goes: an ``on`` decision when the coincidence sum reaches the
  threshold (every channel trigger counted has lasted ``min_duration``), an ``off`` decision when
  the event can no longer grow.  Its completed events equal ObsPy's ``coincidence_trigger`` on the
  same series where the options overlap.  Each channel trigger also gets a refined onset pick
  (``pick = "aic"``: ``edge/trigger.OnsetPicker`` on the filtered trace up to the onset sample, less
  the filter's group delay at the band's centre, :func:`band_centre`); the trigger's own time is
  left as ObsPy's (docs/trigger.md, "Onset pick").  The rules for gaps, rate changes and clipping are
  docs/trigger.md's ("The station stage").
* :class:`TriggerStage` -- the stream stage registered in ``edge/station.STAGES``: each decision
  becomes one event document (:func:`event_document`, the one definition of its keys) handed to
  ``StageContext.emit_event`` at once (durable in the outbox, then sent on the ``events`` topic).

Does not own: the numerics (``edge/trigger.py``), the outbox or the uplink (``edge/outbox.py``,
``edge/uplink.py``), reading miniSEED files (``edge/trigger_cli.py``).
"""

from __future__ import annotations

import bisect
import datetime as dt
import fnmatch
import logging
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from ims_station.errors import ConfigError
from ims_station.logutil import RateLimitedLog

from .ingest import sample_offset_us

log = logging.getLogger(__name__)

ALGORITHMS = ("recstalta", "classicstalta", "delayedstalta", "carlstatrig")
FILTER_KINDS = ("bandpass", "highpass", "lowpass")
PICKERS = ("aic", "none")
MAX_PICK_WINDOW_S = 60.0        # the picker's ring: at most this many seconds per channel

# Every key of [trigger] and its default (docs/configuration.md shows the same values; a test
# compares them).  The filter, windows, thresholds and durations are the values tuned on the HIL
# detection run (hil/detection.py; docs/trigger.md, "Detection performance") for a short-period
# seismic station at 40 sps or more: they need every channel taking part above 16 sps (the band's
# upper corner below Nyquist).
DEFAULTS: dict[str, Any] = {
    "algorithm": "recstalta",
    "sta": 0.7,
    "lta": 30.0,
    "on": 3.5,
    "off": 2.0,
    "ratio": 0.8,
    "quiet": 0.8,
    "filter": "bandpass:1.5:8",
    "corners": 4,
    "channels": ["*"],
    "min_duration": 1.0,
    "max_duration": 120.0,
    "pre_event": 10.0,
    "post_event": 20.0,
    "coincidence_sum": 1.0,
    "coincidence_window": 0.0,
    "weights": {},
    "pick": "aic",
    "pick_window": 3.0,
}

_NUMBER = {"type": "number"}
SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "algorithm": {"enum": list(ALGORITHMS)},
        "sta": _NUMBER,
        "lta": _NUMBER,
        "on": _NUMBER,
        "off": _NUMBER,
        "ratio": _NUMBER,
        "quiet": _NUMBER,
        "filter": {"type": "string", "maxLength": 64},
        "corners": {"type": "integer", "minimum": 1, "maximum": 10},
        "channels": {"type": "array", "minItems": 1, "maxItems": 1024,
                     "items": {"type": "string", "minLength": 1, "maxLength": 64}},
        "min_duration": _NUMBER,
        "max_duration": _NUMBER,
        "pre_event": _NUMBER,
        "post_event": _NUMBER,
        "coincidence_sum": _NUMBER,
        "coincidence_window": _NUMBER,
        "weights": {"type": "object", "additionalProperties": _NUMBER},
        "pick": {"enum": list(PICKERS)},
        "pick_window": _NUMBER,
    },
}


# ------------------------------------------------------------------------------------------------
# Settings


@dataclass(frozen=True)
class FilterSpec:
    """``bandpass:FMIN:FMAX``, ``highpass:F`` or ``lowpass:F`` (Hz), Butterworth with ``corners``."""
    kind: str
    freqs: tuple[float, ...]

    def kwargs(self) -> dict[str, float]:
        if self.kind == "bandpass":
            return {"freqmin": self.freqs[0], "freqmax": self.freqs[1]}
        return {"freq": self.freqs[0]}

    def __str__(self) -> str:
        return ":".join([self.kind, *(f"{f:g}" for f in self.freqs)])


@dataclass(frozen=True)
class TriggerSettings:
    """The resolved ``[trigger]`` table (times in seconds; see docs/configuration.md)."""
    algorithm: str = DEFAULTS["algorithm"]
    sta: float = DEFAULTS["sta"]
    lta: float = DEFAULTS["lta"]
    on: float = DEFAULTS["on"]
    off: float = DEFAULTS["off"]
    ratio: float = DEFAULTS["ratio"]
    quiet: float = DEFAULTS["quiet"]
    filter: FilterSpec | None = FilterSpec("bandpass", (1.5, 8.0))
    corners: int = DEFAULTS["corners"]
    channels: tuple[str, ...] = ("*",)
    min_duration: float = DEFAULTS["min_duration"]
    max_duration: float = DEFAULTS["max_duration"]
    pre_event: float = DEFAULTS["pre_event"]
    post_event: float = DEFAULTS["post_event"]
    coincidence_sum: float = DEFAULTS["coincidence_sum"]
    coincidence_window: float = DEFAULTS["coincidence_window"]
    weights: Mapping[str, float] = field(default_factory=dict)
    pick: str = DEFAULTS["pick"]
    pick_window: float = DEFAULTS["pick_window"]

    def selects(self, code: str) -> bool:
        """Does channel *code* (``NET.STA.LOC.CHA``) take part?  A pattern with one dot is matched
        against ``LOC.CHA``, any other against the whole code (``fnmatch``); channels without a SEED
        code (``"<board>/<channel>"``) never take part."""
        parts = code.split(".")
        if len(parts) != 4:
            return False
        short = f"{parts[2]}.{parts[3]}"
        return any(fnmatch.fnmatchcase(short if p.count(".") == 1 else code, p) for p in self.channels)

    def weight(self, code: str) -> float:
        """The coincidence weight of *code*: ``weights[code]``, else ``weights["LOC.CHA"]``, else 1."""
        w = self.weights.get(code)
        if w is None:
            parts = code.split(".")
            w = self.weights.get(f"{parts[2]}.{parts[3]}", 1.0) if len(parts) == 4 else 1.0
        return float(w)


# TriggerConfigError.parameter of edge/trigger.py -> the [trigger] key it comes from
_PARAMETER_KEYS = {"nsta": "sta", "nlta": "lta", "thr_on": "on", "thr_off": "off", "ratio": "ratio",
                   "quiet": "quiet", "freq": "filter", "freqmin": "filter", "freqmax": "filter",
                   "type": "filter", "corners": "corners", "min_len": "min_duration",
                   "max_len": "max_duration", "sampling_rate": "channels", "channels": "channels",
                   "window": "pick_window"}


class _Pipeline:
    """Filter -> characteristic function -> on/off logic of *channels* channels at one rate
    (edge/trigger.py), vectorised across the channels."""

    def __init__(self, s: TriggerSettings, rate_hz: float, channels: int = 1) -> None:
        from . import trigger as T

        if not (math.isfinite(rate_hz) and rate_hz > 0):
            raise T.TriggerConfigError("sampling_rate", f"must be a positive number, got {rate_hz!r}")
        # Seconds to samples as ObsPy's Trace.trigger does (truncation), durations as its
        # coincidence_trigger does max_trigger_length (rounded).
        nsta, nlta = int(s.sta * rate_hz), int(s.lta * rate_hz)
        if s.algorithm == "carlstatrig":
            self.cf: Any = T.CarlStaTrig(nsta, nlta, s.ratio, s.quiet, channels=channels)
        else:
            cls = {"recstalta": T.RecursiveStaLta, "classicstalta": T.ClassicStaLta,
                   "delayedstalta": T.DelayedStaLta}[s.algorithm]
            self.cf = cls(nsta, nlta, channels=channels)
        self.filter = (T.StreamFilter(s.filter.kind, rate_hz, corners=s.corners, channels=channels,
                                      **s.filter.kwargs()) if s.filter is not None else None)
        self.onset = T.TriggerOnset(s.on, s.off, channels=channels, min_len=int(s.min_duration * rate_hz + 0.5),
                                    max_len=int(s.max_duration * rate_hz + 0.5))
        # The refined pick (docs/trigger.md, "Onset pick"): AIC on the trace the function sees, in
        # the pick_window seconds up to the trigger's onset sample, moved earlier by the causal
        # filter's group delay at the band's centre.
        self.picker = (T.OnsetPicker(int(s.pick_window * rate_hz), channels=channels)
                       if s.pick == "aic" else None)
        self.pick_delay_us = 0
        if self.filter is not None and s.filter is not None and self.picker is not None:
            self.pick_delay_us = int(round(T.group_delay_s(self.filter.sos, band_centre(s.filter, rate_hz),
                                                           rate_hz) * 1e6))
        self._picks: dict[tuple[int, int], int] = {}      # (row, onset sample) -> pick sample

    def process(self, x: np.ndarray) -> list:
        y = x if self.filter is None else self.filter.process(x)
        found = self.onset.process(self.cf.process(y))
        if self.picker is not None:
            # Picks are kept for the open events only (bounded: one per row), plus those of the
            # events this chunk completes, which the caller reads right after.
            n0 = self.picker.fed
            on, _ = self.onset.open_events()
            found_keys = {(ev.channel, ev.on) for ev in found}
            self._picks = {k: v for k, v in self._picks.items() if on[k[0]] == k[1] or k in found_keys}
            new = {k for k in found_keys if k[1] >= n0} | {(r, int(o)) for r, o in enumerate(on) if o >= n0}
            self._picks.update(self.picker.process(y, sorted(new)))
        return found

    def pick(self, row: int, on: int) -> tuple[int, int] | None:
        """(pick sample, microseconds to take off its time) of the trigger of *row* at sample *on*;
        None without a picker (the pick is the onset)."""
        if self.picker is None:
            return None
        p = self._picks.get((row, on))
        return None if p is None else (p, self.pick_delay_us)

    def restart(self, rows: list[int]) -> list:
        """Rows start again as new series (a gap); returns the events this closes."""
        if self.filter is not None:
            self.filter.reset(rows)
        self.cf.reset(rows)
        if self.picker is not None:
            self.picker.reset(rows)
        return self.onset.reset(rows)


def band_centre(f: FilterSpec, rate_hz: float) -> float:
    """The frequency (Hz) at which the pick takes the filter's group delay off: the geometric
    centre of a band-pass, twice a high-pass corner (at most 0.4 x the rate), half a low-pass one."""
    if f.kind == "bandpass":
        return math.sqrt(f.freqs[0] * f.freqs[1])
    if f.kind == "highpass":
        return min(2.0 * f.freqs[0], 0.4 * rate_hz)
    return 0.5 * f.freqs[0]


def _key_error(file: str, prefix: str, key: str, reason: str) -> ConfigError:
    return ConfigError(file, f"{prefix}{key}", reason)


def settings_from_table(table: Mapping[str, Any], *, file: str = "<settings>", prefix: str = "trigger.",
                        channels: Mapping[str, float] | None = None, station: tuple[str, str] | None = None,
                        key_names: Mapping[str, str] | None = None) -> TriggerSettings:
    """Resolve and check a ``[trigger]`` table (already schema-validated, or built by the replay
    command); every refusal is ``ConfigError(file, prefix + key, reason)`` (*key_names* renames keys,
    e.g. to the command's options).

    *channels*: the station's channels (SEED code -> sampling rate in Hz) when known: each pattern of
    ``channels`` must select one of them, each key of ``weights`` must be one that takes part, the
    coincidence threshold must be reachable and the windows and filter corners must fit each
    channel's rate.  *station*: (network, station) for ``LOC.CHA`` weight keys.
    """
    names = dict(key_names or {})

    def err(key: str, reason: str) -> ConfigError:
        return _key_error(file, prefix, names.get(key, key), reason)

    t = dict(DEFAULTS, **table)
    for key in ("sta", "lta", "on", "off", "ratio", "quiet", "min_duration", "max_duration", "pre_event",
                "post_event", "coincidence_sum", "coincidence_window", "pick_window"):
        v = t[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise err(key, f"must be a finite number, got {v!r}")
    if t["algorithm"] not in ALGORITHMS:
        raise err("algorithm", f"{t['algorithm']!r} is not one of {', '.join(ALGORITHMS)}")
    for key in ("sta", "lta"):
        if t[key] <= 0:
            raise err(key, f"must be a positive number of seconds, got {t[key]!r}")
    if t["sta"] >= t["lta"]:
        raise err("sta", f"must be shorter than lta ({t['sta']} s >= {t['lta']} s)")
    if t["off"] >= t["on"]:
        raise err("off", f"must be below on ({t['off']} >= {t['on']})")
    for key in ("min_duration", "pre_event", "post_event", "coincidence_window"):
        if t[key] < 0:
            raise err(key, f"must not be negative, got {t[key]!r}")
    if t["max_duration"] <= 0:
        raise err("max_duration", f"must be a positive number of seconds, got {t['max_duration']!r}")
    if t["min_duration"] > t["max_duration"]:
        raise err("min_duration", f"longer than max_duration ({t['min_duration']} s > {t['max_duration']} s): "
                                  "no event could ever be declared")
    if t["pick"] not in PICKERS:
        raise err("pick", f"{t['pick']!r} is not one of {', '.join(PICKERS)}")
    if not 0 < t["pick_window"] <= MAX_PICK_WINDOW_S:
        raise err("pick_window", f"must be more than 0 and at most {MAX_PICK_WINDOW_S:g} s, got {t['pick_window']!r}")
    if t["coincidence_sum"] <= 0:
        raise err("coincidence_sum", f"must be a positive number, got {t['coincidence_sum']!r}")
    corners = t["corners"]
    if isinstance(corners, bool) or not isinstance(corners, int) or corners < 1:
        raise err("corners", f"must be a positive integer, got {corners!r}")
    filt = parse_filter(t["filter"], lambda reason: err("filter", reason))
    pats = t["channels"]
    if isinstance(pats, str) or not isinstance(pats, Sequence) or not pats or not all(
            isinstance(p, str) and p for p in pats):
        raise err("channels", f"must be a non-empty list of channel patterns, got {pats!r}")
    weights: dict[str, float] = {}
    for code, w in dict(t["weights"]).items():
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w <= 0:
            raise err(f"weights.{code}", f"must be a positive number, got {w!r}")
        if len(code.split(".")) not in (2, 4):
            raise err(f"weights.{code}", "not a channel code LOC.CHA or NET.STA.LOC.CHA")
        weights[code] = float(w)
    s = TriggerSettings(
        algorithm=t["algorithm"], sta=float(t["sta"]), lta=float(t["lta"]), on=float(t["on"]),
        off=float(t["off"]), ratio=float(t["ratio"]), quiet=float(t["quiet"]), filter=filt, corners=corners,
        channels=tuple(pats), min_duration=float(t["min_duration"]), max_duration=float(t["max_duration"]),
        pre_event=float(t["pre_event"]), post_event=float(t["post_event"]),
        coincidence_sum=float(t["coincidence_sum"]), coincidence_window=float(t["coincidence_window"]),
        weights=weights, pick=t["pick"], pick_window=float(t["pick_window"]))
    if channels is not None:
        _check_channels(s, channels, station, err)
    return s


def parse_filter(text: str | None, err: Any = None) -> FilterSpec | None:
    """``"bandpass:1:10"``, ``"highpass:0.5"``, ``"lowpass:8"`` -> :class:`FilterSpec`; ``""`` or
    ``"none"`` -> None.  Corner checks against a rate are the pipeline's."""
    def fail(reason: str) -> Exception:
        return err(reason) if err is not None else ValueError(reason)

    if text is None or text.strip().lower() in ("", "none"):
        return None
    parts = text.strip().split(":")
    kind = parts[0].lower()
    if kind not in FILTER_KINDS:
        raise fail(f"{text!r}: unknown filter {parts[0]!r} (bandpass:FMIN:FMAX, highpass:F or lowpass:F)")
    want = 2 if kind == "bandpass" else 1
    if len(parts) != want + 1:
        raise fail(f"{text!r}: {kind} takes {want} corner frequenc{'ies' if want > 1 else 'y'} "
                   f"({'bandpass:FMIN:FMAX' if want > 1 else kind + ':F'})")
    try:
        freqs = tuple(float(p) for p in parts[1:])
    except ValueError:
        raise fail(f"{text!r}: corner frequencies must be numbers in Hz") from None
    if not all(math.isfinite(f) and f > 0 for f in freqs):
        raise fail(f"{text!r}: corner frequencies must be positive")
    if kind == "bandpass" and not freqs[0] < freqs[1]:
        raise fail(f"{text!r}: FMIN must be below FMAX")
    return FilterSpec(kind, freqs)


def _check_channels(s: TriggerSettings, channels: Mapping[str, float], station: tuple[str, str] | None,
                    err: Any) -> None:
    from . import trigger as T

    for i, p in enumerate(s.channels):
        if not any(TriggerSettings(channels=(p,)).selects(c) for c in channels):
            raise err(f"channels[{i}]", f"{p!r} selects none of the station's channels ({', '.join(channels)})")
    taking_part = [c for c in channels if s.selects(c)]
    for key in s.weights:
        parts = key.split(".")
        full = key if len(parts) == 4 else (f"{station[0]}.{station[1]}.{key}" if station else None)
        if full not in taking_part and not (station is None and len(parts) == 2
                                            and any(c.endswith("." + key) for c in taking_part)):
            raise err(f"weights.{key}", f"not a channel taking part in the trigger "
                                        f"({', '.join(taking_part) or 'none'})")
    total = sum(s.weight(c) for c in taking_part)
    if s.coincidence_sum > total + 1e-9:
        raise err("coincidence_sum", f"{s.coincidence_sum:g} can never be reached: the channels taking part "
                                     f"weigh {total:g} together")
    for code in taking_part:
        rate = channels[code]
        try:
            _Pipeline(s, rate)
        except T.TriggerConfigError as e:
            key = _PARAMETER_KEYS.get(e.parameter, e.parameter)
            raise err(key, f"{e.reason} (channel {code} at {rate:g} sps)") from None


def station_channels(station_cfg: Any) -> dict[str, float]:
    """SEED code -> sampling rate (Hz) of every named channel of the station file: the board
    definition's default rate of its port (``ims_station.boards``)."""
    from ims_station import boards

    out: dict[str, float] = {}
    for port in station_cfg.ports:
        rate = float(boards.load_board(port.board)["acquisition"]["default_rate"])
        for code in port.channels.values():
            out[code] = rate
    return out


def settings_from_station(station_cfg: Any) -> TriggerSettings:
    """The ``[trigger]`` table of a loaded station file, checked against its channels and rates."""
    return settings_from_table(station_cfg.raw.get("trigger", {}), file=str(station_cfg.file),
                               channels=station_channels(station_cfg),
                               station=(station_cfg.network, station_cfg.code))


# ------------------------------------------------------------------------------------------------
# Detector


@dataclass(frozen=True, slots=True)
class Decision:
    """A network trigger decided by :class:`Detector`: ``on`` (declared, ``end_us`` None) or ``off``
    (complete).  Times in microseconds since 1970 (UTC); ``stations``/``channels`` in joining
    order, as ObsPy lists them (a station once per channel).  ``kept`` is False on the rare ``off``
    that retracts an ``on`` whose event ObsPy's rule drops in the end (docs/trigger.md).
    ``pick_us``: the refined onset of the first member (None with ``pick = "none"``)."""
    state: str
    event_id: str
    onset_us: int
    end_us: int | None
    peak: float
    coincidence_sum: float
    stations: tuple[str, ...]
    channels: tuple[str, ...]
    time_quality: int
    clipped: bool
    kept: bool = True
    pick_us: int | None = None

    @property
    def onset_s(self) -> float:
        return self.onset_us / 1e6

    @property
    def pick_s(self) -> float:
        """The refined onset (docs/trigger.md, "Onset pick"); the onset itself without a pick."""
        return (self.onset_us if self.pick_us is None else self.pick_us) / 1e6

    @property
    def end_s(self) -> float | None:
        return None if self.end_us is None else self.end_us / 1e6

    @property
    def duration(self) -> float | None:
        """Seconds from onset to end, computed as ObsPy computes it (``off - on`` in seconds)."""
        return None if self.end_us is None else self.end_us / 1e6 - self.onset_us / 1e6


@dataclass(slots=True)
class _Trig:
    """One channel's trigger: onset and (last) off sample times, peak, clipping, time quality."""
    on_us: int
    off_us: int
    code: str
    peak: float
    clipped: bool
    tq: int
    pick_us: int | None = None

    @property
    def key(self) -> tuple[float, float, str]:
        return (self.on_us / 1e6, self.off_us / 1e6, self.code)


class _Group:
    """Channels that arrive together (the same selected codes at the same rate: one board's
    chunks), run as one vectorised pipeline; ``n`` samples fed to each row so far.  Every chunk
    gives all rows the same first sample time, so they share one time base: sample *i* is at
    ``base_us + offset(i - base_i)`` (the base moves at a gap)."""

    def __init__(self, codes: tuple[str, ...], rate_mhz: int, pipe: _Pipeline | None, problem: str,
                 t0_us: int) -> None:
        self.codes = codes
        self.rate_mhz = rate_mhz
        self.pipe = pipe
        self.problem = problem                  # why pipe is None (the settings do not fit the rate)
        self.n = 0
        self.base_i = 0
        self.base_us = t0_us

    def time_us(self, i: int) -> int:
        return self.base_us + sample_offset_us(i - self.base_i, self.rate_mhz)

    @property
    def next_us(self) -> int:
        return self.time_us(self.n)

    def gap(self, t_first_us: int) -> bool:
        """More than half a sample period from where the group's last chunk ended."""
        return abs(t_first_us - self.next_us) * 2 * self.rate_mhz > 1_000_000_000

    def rebase(self, t_us: int) -> None:
        self.base_i = self.n
        self.base_us = t_us


class _Channel:
    """A channel: row *row* of its group, its time-quality and clipping history."""

    MAX_HISTORY = 256

    def __init__(self, code: str, group: _Group, row: int) -> None:
        self.code = code
        self.group = group
        self.row = row
        self.tq: deque = deque(maxlen=self.MAX_HISTORY)     # (first sample, time quality) at changes
        self.clips: deque = deque(maxlen=self.MAX_HISTORY)  # (first, last) sample of clipped chunks
        self.declared = False                   # its open trigger has lasted min_duration

    def time_us(self, i: int) -> int:
        return self.group.time_us(i)

    def tq_at(self, i: int) -> int:
        q = self.tq[0][1] if self.tq else 0
        for first, tq in self.tq:
            if first > i:
                break
            q = tq
        return q

    def clipped(self, first: int, last: int) -> bool:
        return any(a <= last and b >= first for a, b in self.clips)

    def trig(self, on: int, off: int, peak: float) -> _Trig:
        p = self.group.pipe.pick(self.row, on) if self.group.pipe is not None else None
        pick_us = None if p is None else self.time_us(p[0]) - p[1]
        return _Trig(self.time_us(on), self.time_us(off), self.code, float(peak), self.clipped(on, off),
                     self.tq_at(on), pick_us)


@dataclass
class _Active:
    event_id: str
    starter: tuple[int, str]                    # (onset us, code) of the channel trigger it began with


class Detector:
    """Streaming network trigger of one station (or, in the replay, of the files given): see the
    module docstring and docs/trigger.md ("The station stage").

    :meth:`push` takes one multi-channel chunk and returns the :class:`Decision` s it led to;
    :meth:`flush` closes everything at the end of a replay.  Channels that the settings do not
    select are ignored.  *stale_s*: a channel whose data is this far behind the most advanced one no
    longer holds the other channels' decisions back (a board that stopped sending).
    """

    MAX_PENDING = 10_000        # completed channel triggers waiting for a decision (bounded)

    def __init__(self, settings: TriggerSettings, station: str = "", *, stale_s: float = 60.0) -> None:
        self.settings = settings
        self.station = station
        self.stale_us = int(stale_s * 1e6)
        self._chans: dict[str, _Channel] = {}
        self._groups: dict[tuple[tuple[str, ...], int], _Group] = {}
        self._selected: dict[str, bool] = {}     # code -> settings.selects(code), remembered
        self._recent_ids: deque = deque(maxlen=64)
        self._done: list[_Trig] = []            # completed channel triggers, sorted by key
        self._last_off = 0.0                    # off of the last kept event (ObsPy's last_off_time)
        self._active: _Active | None = None
        self.counters = dict(events=0, retracted=0, resets_gap=0, rate_changes=0, regroups=0,
                             clipped_chunks=0, errors=0, dropped_triggers=0)
        self.last_event: dict | None = None
        self.problems: deque = deque(maxlen=16)  # (code, reason) of channels that cannot run

    # -- feeding -----------------------------------------------------------------------------------
    def push(self, codes: Sequence[str], t_first_us: int, rate_mhz: int, samples: np.ndarray, *,
             time_quality: int = 0, clip_mask: int = 0, contiguous: bool = True,
             decide: bool = True) -> list[Decision]:
        """Feed one chunk: ``samples[i]`` (numbers, ``(channels, n)``) is channel ``codes[i]``,
        its first sample at *t_first_us*, *rate_mhz* samples per 1000 s.  *contiguous* False (a
        gap before the chunk) restarts the channels, as does a first sample more than half a
        sample period away from where the channel's last chunk ended.  *decide* False: only feed;
        the caller calls :meth:`decide` once the chunks of the same time span of its other channels
        are in too (the replay does, so that a channel starting mid-way is not decided past)."""
        x = np.asarray(samples)
        if x.ndim == 1:
            x = x[np.newaxis, :]
        if x.ndim != 2 or x.shape[0] != len(codes):
            raise ValueError(f"samples of shape {np.shape(samples)} for {len(codes)} channel code(s)")
        if isinstance(rate_mhz, bool) or int(rate_mhz) <= 0:
            raise ValueError(f"rate_mhz must be positive, got {rate_mhz!r}")
        rate_mhz = int(rate_mhz)
        m = x.shape[1]
        sel = self._selected
        if len(sel) > 4096:             # codes are few; a bound all the same
            sel.clear()
        rows = []
        for r, code in enumerate(codes):
            ok = sel.get(code)
            if ok is None:
                ok = sel[code] = self.settings.selects(code)
            if ok:
                rows.append(r)
        if len(set(codes)) != len(codes):
            raise ValueError(f"a channel code twice in one chunk: {list(codes)}")
        if rows:
            self._feed(tuple(codes[r] for r in rows), rows, t_first_us, rate_mhz, x, int(time_quality),
                       int(clip_mask), bool(contiguous), m)
        return self.decide() if decide else []

    def _feed(self, key: tuple[str, ...], rows: list[int], t_first_us: int, rate_mhz: int, x: np.ndarray,
              tq: int, clip_mask: int, contiguous: bool, m: int) -> None:
        g = self._groups.get((key, rate_mhz))
        if g is None:
            # New channels, or channels that came in other company or at another rate: they
            # (and the rest of their old groups) start again in a new group.
            for code in key:
                ch = self._chans.get(code)
                if ch is not None:
                    self._dissolve(ch.group, t_first_us, rate_mhz, contiguous)
            g = self._new_group(key, rate_mhz, t_first_us)
            for i, code in enumerate(key):
                self._chans[code] = _Channel(code, g, i)
        elif not contiguous or g.gap(t_first_us):
            rows_all = list(range(len(key)))
            self.counters["resets_gap"] += len(key)
            self._take(g, g.pipe.restart(rows_all) if g.pipe is not None else [])
            for code in key:
                self._chans[code].declared = False
            g.rebase(t_first_us)
        if m == 0:
            return
        clipped = False
        for i, r in enumerate(rows):
            ch = self._chans[key[i]]
            if not ch.tq or ch.tq[-1][1] != tq:
                ch.tq.append((g.n, tq))
            if clip_mask >> r & 1:
                clipped = True
                ch.clips.append((g.n, g.n + m - 1))
        if clipped:
            self.counters["clipped_chunks"] += 1
        if g.pipe is not None:
            self._take(g, g.pipe.process(np.ascontiguousarray(x[rows], dtype=np.float64)))
        g.n += m

    def decide(self) -> list[Decision]:
        """The decisions the data fed so far allows (:meth:`push` calls it unless told not to)."""
        return self._decide(self._horizon())

    def flush(self) -> list[Decision]:
        """End of the data (a replay): channel triggers still on are closed at their last sample,
        as ObsPy's ``trigger_onset`` closes them at the end of a trace; every event is decided."""
        for g in self._groups.values():
            if g.pipe is not None:
                self._take(g, g.pipe.onset.flush())
        return self._decide(None)

    # -- channels ----------------------------------------------------------------------------------
    def _new_group(self, codes: tuple[str, ...], rate_mhz: int, t0_us: int) -> _Group:
        from . import trigger as T

        try:
            pipe, problem = _Pipeline(self.settings, rate_mhz / 1000.0, len(codes)), ""
        except T.TriggerConfigError as e:
            # Checked at start-up for the board's rate; a rate the board switched to later may not
            # fit (a corner above its Nyquist): these channels sit out, counted and reported.
            pipe, problem = None, f"trigger.{_PARAMETER_KEYS.get(e.parameter, e.parameter)}: {e.reason}"
            self.counters["errors"] += 1
            for code in codes:
                self.problems.append((code, f"{problem} at {rate_mhz / 1000:g} sps"))
        g = self._groups[(codes, rate_mhz)] = _Group(codes, rate_mhz, pipe, problem, t0_us)
        return g

    def _dissolve(self, g: _Group, t_first_us: int, rate_mhz: int, contiguous: bool) -> None:
        """A channel of *g* comes in new company: the group ends, its channels' open triggers end at
        their last sample and each of them starts anew when its data comes."""
        n = sum(1 for c in g.codes if c in self._chans and self._chans[c].group is g)   # channels restarted
        if g.rate_mhz != rate_mhz:
            self.counters["rate_changes"] += n
        elif not contiguous or g.gap(t_first_us):
            self.counters["resets_gap"] += n
        else:
            self.counters["regroups"] += n
        if g.pipe is not None:
            self._take(g, g.pipe.onset.reset())
        for c in g.codes:
            if self._chans.get(c) is not None and self._chans[c].group is g:
                del self._chans[c]
        del self._groups[(g.codes, g.rate_mhz)]

    def _take(self, g: _Group, found: list) -> None:
        from . import trigger as T

        for ev in found:
            ch = self._chans.get(g.codes[ev.channel])
            if ch is None or ch.group is not g:
                continue
            if isinstance(ev, T.Onset):
                ch.declared = True
            elif isinstance(ev, T.Event):
                ch.declared = False
                t = ch.trig(ev.on, ev.off, ev.peak)
                if len(self._done) >= self.MAX_PENDING:
                    del self._done[0]
                    self.counters["dropped_triggers"] += 1
                bisect.insort(self._done, t, key=lambda tr: tr.key)

    # -- deciding ----------------------------------------------------------------------------------
    def _horizon(self) -> int | None:
        """Every channel trigger with an onset before this time (us) is known and complete."""
        live = [g for g in self._groups.values() if g.pipe is not None]
        if not live:
            return None
        newest = max(g.next_us for g in live)
        h = None
        for g in live:
            t = g.next_us
            if t < newest - self.stale_us:
                continue
            on, _ = g.pipe.onset.open_events()
            if (on >= 0).any():
                t = g.time_us(int(on[on >= 0].min()))
            h = t if h is None else min(h, t)
        return h

    def _chain(self, trigs: list[_Trig], i: int, horizon: int | None) -> tuple[list[_Trig], float, int, float] | None:
        """The coincidence group that trigger *i* begins, as ``edge/trigger.coincidence`` (ObsPy)
        forms it -- (members, off s, off us, sum) -- or None while triggers still to come could
        change it (*horizon*: onsets from then on are unknown; None: nothing more comes)."""
        s = self.settings
        ext = s.coincidence_window
        first = trigs[i]
        members = [first]
        ids = {first.code}
        off_s, off_us = first.off_us / 1e6, first.off_us
        total = s.weight(first.code)
        h_s = math.inf if horizon is None else horizon / 1e6
        for t in trigs[i + 1:]:
            if t.code in ids:
                continue
            if t.on_us / 1e6 > off_s + ext:
                break
            if horizon is not None and t.on_us >= horizon:
                return None         # an unknown trigger with an earlier onset could come first
            members.append(t)
            ids.add(t.code)
            total += s.weight(t.code)
            if t.off_us / 1e6 > off_s:
                off_s, off_us = t.off_us / 1e6, t.off_us
        if not off_s + ext < h_s:
            return None             # a trigger still to come could join
        return members, off_s, off_us, total

    def _decide(self, horizon: int | None) -> list[Decision]:
        out: list[Decision] = []
        s = self.settings
        done = self._done
        i = 0
        # 1. Events that can no longer change, in onset order (ObsPy's loop, run as far as known).
        while i < len(done):
            if horizon is not None and done[i].on_us >= horizon:
                break
            res = self._chain(done, i, horizon)
            if res is None:
                break
            members, off_s, off_us, total = res
            if total >= s.coincidence_sum and off_s > self._last_off:
                self._last_off = off_s
                out += self._finish(members, off_us, total)
            elif self._active is not None and self._active.starter == (done[i].on_us, done[i].code):
                out.append(self._decision("off", self._active.event_id, members, off_us, total, kept=False))
                self.counters["retracted"] += 1
                self._active = None
            i += 1
        del done[:i]
        # 2. An event declared before it is complete: open channel triggers that have lasted
        #    min_duration count with their off so far (a lower bound: the group can only grow).
        if self._active is None and horizon is not None:
            opened = []
            for g in self._groups.values():
                declared = [i for i, c in enumerate(g.codes) if self._chans[c].declared]
                if declared and g.pipe is not None:
                    on, peak = g.pipe.onset.open_events()
                    for i in declared:
                        if on[i] >= 0:
                            opened.append(self._chans[g.codes[i]].trig(int(on[i]), g.n - 1, float(peak[i])))
            if opened or done:
                cand = sorted(done + opened, key=lambda tr: tr.key)
                for j in range(len(cand)):
                    members, off_s, off_us, total = self._chain(cand, j, None)  # type: ignore[misc]
                    if total >= s.coincidence_sum and off_s > self._last_off:
                        first = members[0]
                        self._active = _Active(self._event_id(first.on_us), (first.on_us, first.code))
                        out.append(self._decision("on", self._active.event_id, members, None, total))
                        break
        return out

    def _finish(self, members: list[_Trig], off_us: int, total: float) -> list[Decision]:
        out = []
        keys = {(t.on_us, t.code) for t in members}
        if self._active is not None and self._active.starter in keys:
            event_id = self._active.event_id
            self._active = None
        else:
            # an earlier group, complete before the declared one (which stays declared)
            event_id = self._event_id(members[0].on_us)
            out.append(self._decision("on", event_id, members, None, total))
        d = self._decision("off", event_id, members, off_us, total)
        out.append(d)
        self.counters["events"] += 1
        self.last_event = {"time": iso_time(d.onset_us), "peak": d.peak}
        return out

    def _event_id(self, onset_us: int) -> str:
        """``<STA>-<onset us>``, unique per station (two groups starting at the same microsecond
        get ``-2``, ``-3``, ...)."""
        base = eid = f"{self.station}-{onset_us}"
        k = 1
        while eid in self._recent_ids:
            k += 1
            eid = f"{base}-{k}"
        self._recent_ids.append(eid)
        return eid

    @staticmethod
    def _decision(state: str, event_id: str, members: list[_Trig], off_us: int | None, total: float,
                  kept: bool = True) -> Decision:
        first = members[0]
        return Decision(state, event_id, first.on_us, off_us, max(t.peak for t in members), total,
                        tuple(t.code.split(".")[1] for t in members), tuple(t.code for t in members),
                        first.tq, any(t.clipped for t in members), kept, first.pick_us)

    # -- state -------------------------------------------------------------------------------------
    @property
    def active(self) -> bool:
        """An ``on`` has been decided and its ``off`` not yet."""
        return self._active is not None

    def stats(self) -> dict:
        return {**self.counters, "active": self.active, "channels": len(self._chans),
                "suppressed": sum(g.pipe.onset.suppressed for g in self._groups.values() if g.pipe),
                "last_event": self.last_event,
                "problems": [f"{code}: {reason}" for code, reason in self.problems]}


def iso_time(t_us: int) -> str:
    """ISO-8601 UTC with microseconds: ``2026-12-03T13:00:01.250000Z``."""
    t = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(microseconds=int(t_us))
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ------------------------------------------------------------------------------------------------
# The stage


def event_document(d: Decision, settings: TriggerSettings, decided_s: float) -> dict:
    """The event document of a decision: the one definition of its keys (docs/trigger.md, "Event
    documents"); the transport and the auxiliary mode read exactly these."""
    from ims_station.firmware.link import TQ_NAMES

    tq = TQ_NAMES[d.time_quality] if 0 <= d.time_quality < len(TQ_NAMES) else f"unknown({d.time_quality})"
    pick_us = d.onset_us if d.pick_us is None else d.pick_us
    return {"type": "trigger", "state": d.state, "event_id": d.event_id, "time": iso_time(d.onset_us),
            "onset_s": d.onset_s, "pick": iso_time(pick_us), "pick_s": pick_us / 1e6, "end_s": d.end_s,
            "duration": d.duration, "peak": d.peak,
            "coincidence_sum": d.coincidence_sum, "stations": list(d.stations), "channels": list(d.channels),
            "time_quality": tq, "algorithm": settings.algorithm, "decided_s": float(decided_s),
            "pre_s": settings.pre_event, "post_s": settings.post_event, "clipped": d.clipped}


class TriggerStage:
    """The stream stage ``("trigger", TriggerStage)`` of ``edge/station.STAGES``: every chunk after
    the framer goes through the :class:`Detector`; each decision is committed at once through
    ``ctx.emit_event`` (the outbox, then the uplink's ``events`` topic).  Bad settings stop the
    station at start-up (``ConfigError`` naming the key); a failure on one chunk or one event is
    counted (``errors``) and logged, rate-limited, and the stage goes on."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.settings = settings_from_station(ctx.station_cfg)
        self.detector = Detector(self.settings, station=ctx.station_cfg.code)
        self.errors = 0
        self._log = RateLimitedLog(log, ctx.clock, rate=1 / 60, burst=2)
        self._problems_logged = 0

    def push(self, chunk: Any) -> None:
        try:
            decisions = self.detector.push(chunk.codes, chunk.t_first_us, chunk.rate_mhz, chunk.samples,
                                           time_quality=chunk.time_quality, clip_mask=chunk.clip_mask,
                                           contiguous=chunk.contiguous)
        except Exception as err:      # one bad chunk must not stop the trigger (nor the station)
            self.errors += 1
            self._log("chunk", logging.ERROR, "trigger %s: chunk at %d us failed: %s: %s",
                      self.ctx.station_cfg.code, chunk.t_first_us, type(err).__name__, err)
            return
        self._report_problems()
        for d in decisions:
            self._emit(d)

    def poll(self) -> None:
        """Nothing runs on time alone: decisions follow the data."""

    def _emit(self, d: Decision) -> None:
        try:
            self.ctx.emit_event(event_document(d, self.settings, self.ctx.clock.time()))
        except Exception as err:
            self.errors += 1
            self._log("emit", logging.ERROR, "trigger %s: event %s (%s) not committed: %s: %s",
                      self.ctx.station_cfg.code, d.event_id, d.state, type(err).__name__, err)

    def _report_problems(self) -> None:
        probs = self.detector.problems
        if len(probs) and self.detector.counters["errors"] != self._problems_logged:
            self._problems_logged = self.detector.counters["errors"]
            code, reason = probs[-1]
            self._log("problem", logging.WARNING, "trigger %s: channel %s sits out: %s",
                      self.ctx.station_cfg.code, code, reason)

    def stats(self) -> dict:
        st = self.detector.stats()
        st["errors"] += self.errors
        return st
