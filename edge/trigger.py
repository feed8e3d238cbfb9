"""Local triggering: streaming characteristic functions, filters and trigger logic (sans-I/O).

Owns the *numerics* of the station's trigger: Butterworth filters with carried state
(:class:`StreamFilter`), the STA/LTA characteristic functions (:class:`RecursiveStaLta`,
:class:`ClassicStaLta`, :class:`DelayedStaLta`, :class:`CarlStaTrig`), the on/off decision with
hysteresis, minimum duration, maximum length and margins (:class:`TriggerOnset`), the refined
onset pick (:class:`OnsetPicker`: Maeda's AIC, :func:`aic_simple`, on a bounded window before the
trigger), and coincidence across channels and stations on completed triggers (:func:`coincidence`).  Every object is fed numpy chunks and returns
numpy arrays or event tuples; it does no I/O, reads no clock and keeps no thread.  Chunks are 2-D
``(channels, samples)`` (a 1-D chunk is one channel); each channel carries its own state, so feeding a
series in chunks of any size gives the same output, bit for bit, as feeding it whole.

Does not own: where chunks come from (``edge/streams.py`` hands out per-station multi-channel chunks),
the station TOML keys that configure it, publishing events (topics, outbox) or wiring the stage into
the station (``edge/station.py``).

Vocabulary and reference algorithms are ObsPy's (``obspy.signal.trigger``, ``obspy.signal.filter``):
``nsta``/``nlta`` are window lengths in samples, ``thr_on``/``thr_off`` the thresholds.  Each
characteristic function reproduces ObsPy's start-up convention exactly, so its output equals ObsPy's
batch function on the same series (tests/trigger/test_obspy_equality.py):

* recursive STA/LTA (Withers et al. 1998, p. 98; Trnkoczy 2012, IASPEI NMSOP-2 IS 8.1): exponential
  averages of the squared signal; the first sample of the stream is skipped and the first ``nlta``
  outputs are 0, as in ObsPy's C ``recstalta``;
* classic STA/LTA (Allen 1978; Trnkoczy 2012): boxcar averages of the squared signal, running sums
  as in ObsPy's C ``stalta``; outputs before sample ``nlta - 1`` are 0;
* delayed STA/LTA (Withers et al. 1998): ObsPy's recursion taken literally (it adds the delayed
  terms); outputs before ``nsta + nlta + 50`` are 0.  ObsPy's batch function reads samples *before
  the start* with negative indices, i.e. from the end of the series (non-causal); a stream cannot,
  so they are zero here: equality holds against ObsPy on a series whose last ``nsta + nlta + 1``
  samples are zero (what the tests check) and otherwise differs by that wrapped-around constant;
* Earthworm carlSTAtrig (Johnson et al. 1995, "Earthworm: a flexible approach to seismic network
  processing"; Earthworm ``carlstatrig``; ObsPy ``carl_sta_trig``): ``eta = star - ratio*ltar - |sta - lta| - quiet``,
  window sums in ObsPy's order; outputs before ``nlta`` are -1.

Gaps, NaN and rate changes: a characteristic function never sees a gap.  The caller calls
:meth:`reset` (all channels or some) when a channel's stream breaks, and the function starts again
exactly as on a new series (warm-up included).  Non-finite input samples are replaced by 0 and the
channel is reset at that point (counted in :attr:`nonfinite`), so one corrupt sample cannot poison
an average forever.  Zero energy gives a ratio of 0 (ObsPy's Python reference divides by the tiniest
double; its C code would give NaN).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
from scipy.signal import iirfilter, sosfilt

_TINY = np.finfo(np.float64).tiny


class TriggerConfigError(ValueError):
    """A trigger parameter is invalid; ``parameter`` names it (the station config maps it to a key)."""

    def __init__(self, parameter: str, reason: str) -> None:
        super().__init__(f"{parameter}: {reason}")
        self.parameter = parameter
        self.reason = reason


def _as_chunk(chunk: np.ndarray, channels: int) -> tuple[np.ndarray, bool]:
    """The chunk as float64 ``(channels, n)`` and whether it came in 1-D."""
    x = np.asarray(chunk)
    one_d = x.ndim == 1
    if one_d:
        x = x[np.newaxis, :]
    if x.ndim != 2 or x.shape[0] != channels:
        raise ValueError(f"chunk of shape {np.shape(chunk)} for {channels} channel(s): "
                         f"expected ({channels}, samples)")
    return np.ascontiguousarray(x, dtype=np.float64), one_d


def _check_windows(nsta: int, nlta: int) -> None:
    for name, value in (("nsta", nsta), ("nlta", nlta)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TriggerConfigError(name, f"must be an integer number of samples, got {value!r}")
        if value < 1:
            raise TriggerConfigError(name, f"must be at least 1 sample, got {value}")
    if nsta >= nlta:
        raise TriggerConfigError("nsta", f"must be shorter than nlta ({nsta} >= {nlta})")


def _check_channels(channels: int) -> None:
    if isinstance(channels, bool) or not isinstance(channels, (int, np.integer)) or channels < 1:
        raise TriggerConfigError("channels", f"must be a positive integer, got {channels!r}")


class _CharacteristicFunction:
    """Shared streaming plumbing: per-channel sample counters, reset, NaN handling."""

    def __init__(self, nsta: int, nlta: int, channels: int = 1) -> None:
        _check_windows(nsta, nlta)
        _check_channels(channels)
        self.nsta = int(nsta)
        self.nlta = int(nlta)
        self.channels = int(channels)
        self.nonfinite = 0                    # non-finite input samples seen (each reset a channel)
        self._n = np.zeros(channels, dtype=np.int64)   # samples seen since the last reset
        self._init_state()

    # -- to implement ------------------------------------------------------------------------
    def _init_state(self) -> None:
        raise NotImplementedError

    def _reset_rows(self, rows: np.ndarray) -> None:
        raise NotImplementedError

    def _run(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    # -- public ------------------------------------------------------------------------------
    def reset(self, channels: Iterable[int] | None = None) -> None:
        """Start again (all channels, or the given channel indices) as on a new series."""
        rows = np.arange(self.channels) if channels is None else np.asarray(list(channels), dtype=np.int64)
        if rows.size:
            self._n[rows] = 0
            self._reset_rows(rows)

    def process(self, chunk: np.ndarray) -> np.ndarray:
        """Characteristic function of the next chunk (same shape as the chunk, float64)."""
        x, one_d = _as_chunk(chunk, self.channels)
        if x.shape[1] == 0:
            out = np.empty_like(x)
        else:
            bad = ~np.isfinite(x)
            if bad.any():
                out = self._process_with_resets(x, bad)
            else:
                out = self._run(x)
        return out[0] if one_d else out

    def _process_with_resets(self, x: np.ndarray, bad: np.ndarray) -> np.ndarray:
        # Split at the last non-finite sample of each channel: everything up to it (bad samples as
        # 0) is processed, then the channel restarts right after it.  Earlier bad samples in the
        # same chunk are rare; they are zeroed, and the restart after the last one clears them.
        self.nonfinite += int(bad.sum())
        x = np.where(bad, 0.0, x)
        out = np.empty_like(x)
        last = np.where(bad.any(axis=1), x.shape[1] - 1 - np.argmax(bad[:, ::-1], axis=1), -1)
        for cut in np.unique(last):
            rows = np.flatnonzero(last == cut)
            sub = _SubsetView(self, rows)
            if cut >= 0:
                out[rows, : cut + 1] = sub.run(x[rows, : cut + 1])
                self.reset(rows)
            if cut + 1 < x.shape[1]:
                out[rows, cut + 1:] = sub.run(x[rows, cut + 1:])
        return out


class _SubsetView:
    """Runs a characteristic function on some of its channels (state arrays indexed by rows)."""

    def __init__(self, cf: _CharacteristicFunction, rows: np.ndarray) -> None:
        self.cf = cf
        self.rows = rows

    def run(self, x: np.ndarray) -> np.ndarray:
        cf = self.cf
        if len(self.rows) == cf.channels:
            return cf._run(x)
        saved = cf._take(self.rows)
        try:
            out = cf._run(x)
        finally:
            cf._put(self.rows, saved)
        return out


class _ArrayState(_CharacteristicFunction):
    """State kept in named per-channel numpy arrays (first axis = channel)."""

    _fields: tuple[str, ...] = ()

    def _reset_rows(self, rows: np.ndarray) -> None:
        """A reset channel starts from zero in every state array (subclasses whose start is not
        zero override this)."""
        for name in self._fields:
            getattr(self, name)[rows] = 0.0

    def _take(self, rows: np.ndarray) -> dict:
        full = {name: getattr(self, name) for name in self._fields + ("_n",)}
        for name, arr in full.items():
            setattr(self, name, arr[rows].copy())
        channels, self.channels = self.channels, len(rows)
        return {"arrays": full, "channels": channels}

    def _put(self, rows: np.ndarray, saved: dict) -> None:
        for name, arr in saved["arrays"].items():
            arr[rows] = getattr(self, name)
            setattr(self, name, arr)
        self.channels = saved["channels"]


class RecursiveStaLta(_ArrayState):
    """Recursive STA/LTA (ObsPy ``recursive_sta_lta``), streaming.

    ``sta = sta + (x**2 - sta)/nsta`` written as ObsPy does, ``csta*x**2 + (1-csta)*sta``, and likewise
    the LTA.  Uses the compiled kernel (``_triggerfast``) when built, else numpy; both give the same
    numbers (tests/trigger/test_kernel.py).
    """

    _fields = ("_sta", "_lta")

    def _init_state(self) -> None:
        self._sta = np.zeros(self.channels)
        self._lta = np.full(self.channels, 1e-99)

    def _reset_rows(self, rows: np.ndarray) -> None:
        self._sta[rows] = 0.0
        self._lta[rows] = 1e-99

    def process(self, chunk: np.ndarray) -> np.ndarray:
        # Fast path: the kernel itself tells whether the chunk was all finite (NaN and inf never
        # leave the recursion) and then commits the state; otherwise nothing changed and the
        # general path (zero the bad samples, reset after them) runs, instead of scanning every chunk.
        x = chunk
        if (_fast is None or not isinstance(x, np.ndarray) or x.dtype != np.float64 or x.ndim != 2
                or x.shape[0] != self.channels or not x.flags.c_contiguous):
            return super().process(chunk)
        out = np.empty_like(x)
        if _fast.recstalta(x, out, self._sta, self._lta, self._n, self.nsta, self.nlta):
            return out
        return super().process(chunk)

    def _run(self, x: np.ndarray) -> np.ndarray:
        if _fast is not None:
            out = np.empty_like(x)
            if _fast.recstalta(x, out, self._sta, self._lta, self._n, self.nsta, self.nlta):
                return out
        # finite samples whose squares overflow: the reference carries the inf as ObsPy would
        return recstalta_reference(x, self._sta, self._lta, self._n, self.nsta, self.nlta)


def recstalta_reference(x: np.ndarray, sta: np.ndarray, lta: np.ndarray, n: np.ndarray,
                        nsta: int, nlta: int) -> np.ndarray:
    """Plain numpy recursive STA/LTA of a ``(channels, samples)`` chunk; updates ``sta``, ``lta``,
    ``n`` in place.  The reference that the C kernel is checked against."""
    csta = 1.0 / nsta
    clta = 1.0 / nlta
    icsta = 1.0 - csta
    iclta = 1.0 - clta
    sq = x * x
    out = np.empty_like(x)
    first = n == 0                     # ObsPy's loop starts at i = 1: sample 0 never enters
    for j in range(x.shape[1]):
        s = sq[:, j]
        new_sta = csta * s + icsta * sta
        new_lta = clta * s + iclta * lta
        if j == 0 and first.any():
            new_sta = np.where(first, sta, new_sta)
            new_lta = np.where(first, lta, new_lta)
        sta[:] = new_sta
        lta[:] = new_lta
        # lta reaches 0 only on exact zeros with nlta = 2 (1e-99 decays to the smallest double,
        # which a factor 1/2 rounds to 0): read 0/0 as 0, as the kernel does
        out[:, j] = 0.0
        np.divide(sta, lta, out=out[:, j], where=lta > 0.0)
    idx = n[:, None] + np.arange(x.shape[1])
    out[idx < nlta] = 0.0
    n += x.shape[1]
    return out


class ClassicStaLta(_ArrayState):
    """Classic (boxcar) STA/LTA (ObsPy ``classic_sta_lta``), streaming.

    Running sums ``sta += x[i]**2 - x[i-nsta]**2`` as in ObsPy's C ``stalta``, times ``nlta/nsta``.
    """

    _fields = ("_hist", "_sta", "_lta")

    def _init_state(self) -> None:
        self._hist = np.zeros((self.channels, self.nlta))   # last nlta squared samples
        self._sta = np.zeros(self.channels)
        self._lta = np.zeros(self.channels)

    def _run(self, x: np.ndarray) -> np.ndarray:
        nsta, nlta = self.nsta, self.nlta
        m = x.shape[1]
        sq = x * x
        ext = np.concatenate([self._hist, sq], axis=1)        # ext[:, nlta + j] = sq[:, j]
        d_sta = sq - ext[:, nlta - nsta: nlta - nsta + m]
        d_lta = sq - ext[:, :m]
        sta = np.cumsum(np.concatenate([self._sta[:, None], d_sta], axis=1), axis=1)[:, 1:]
        lta = np.cumsum(np.concatenate([self._lta[:, None], d_lta], axis=1), axis=1)[:, 1:]
        self._sta = sta[:, -1].copy()
        self._lta = lta[:, -1].copy()
        self._hist = ext[:, -nlta:].copy()
        out = _ratio(sta, lta) * (float(nlta) / float(nsta))
        idx = self._n[:, None] + np.arange(m)
        out[idx < nlta - 1] = 0.0
        self._n += m
        return out


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, 0 where den is 0 or below the smallest normal double (a flat or dead channel)."""
    out = np.zeros_like(num)
    np.divide(num, den, out=out, where=den >= _TINY)
    return out


class DelayedStaLta(_ArrayState):
    """Delayed STA/LTA (ObsPy ``delayed_sta_lta``), streaming; see the module docstring for ObsPy's
    wrap-around at the start of a series."""

    _fields = ("_hist", "_sta", "_lta")

    def _init_state(self) -> None:
        self._hist = np.zeros((self.channels, self.nsta + self.nlta + 1))
        self._sta = np.zeros(self.channels)
        self._lta = np.zeros(self.channels)

    def _run(self, x: np.ndarray) -> np.ndarray:
        nsta, nlta = self.nsta, self.nlta
        h = nsta + nlta + 1
        m = x.shape[1]
        sq = x * x
        ext = np.concatenate([self._hist, sq], axis=1)        # ext[:, h + j] = sq[:, j]

        def lag(k: int) -> np.ndarray:
            return ext[:, h - k: h - k + m]

        inc_sta = (sq + lag(nsta)) / nsta
        inc_lta = (lag(nsta + 1) + lag(nsta + nlta + 1)) / nlta
        sta = np.cumsum(np.concatenate([self._sta[:, None], inc_sta], axis=1), axis=1)[:, 1:]
        lta = np.cumsum(np.concatenate([self._lta[:, None], inc_lta], axis=1), axis=1)[:, 1:]
        self._sta = sta[:, -1].copy()
        self._lta = lta[:, -1].copy()
        self._hist = ext[:, -h:].copy()
        out = _ratio(sta, lta)
        idx = self._n[:, None] + np.arange(m)
        out[idx < nsta + nlta + 50] = 0.0
        self._n += m
        return out


class CarlStaTrig(_ArrayState):
    """Earthworm carlSTAtrig (ObsPy ``carl_sta_trig``), streaming.

    ``sta`` is the mean of the ``nsta`` samples *before* each sample, ``lta`` the mean of ``nlta`` sta
    values delayed one more sample, ``star`` the mean of ``|x - lta|`` over ``nsta``, ``ltar`` the mean
    of ``star`` over ``nlta`` (all as ObsPy computes them, window sums in the same order).
    """

    _fields = ("_hx", "_hsta", "_hd", "_hstar", "_last_lta")

    def __init__(self, nsta: int, nlta: int, ratio: float, quiet: float, channels: int = 1) -> None:
        for name, value in (("ratio", ratio), ("quiet", quiet)):
            if not np.isfinite(value):
                raise TriggerConfigError(name, f"must be a finite number, got {value!r}")
        self.ratio = float(ratio)
        self.quiet = float(quiet)
        super().__init__(nsta, nlta, channels)

    def _init_state(self) -> None:
        c = self.channels
        self._hx = np.zeros((c, self.nsta))
        self._hsta = np.zeros((c, self.nlta))
        self._hd = np.zeros((c, self.nsta))
        self._hstar = np.zeros((c, self.nlta))
        self._last_lta = np.zeros((c, 1))

    @staticmethod
    def _window_mean(hist: np.ndarray, x: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        # mean of the n values before each position, summed oldest first from 0.0 as ObsPy does
        m = x.shape[1]
        ext = np.concatenate([hist, x], axis=1)
        acc = np.zeros_like(x)
        for i in range(n):
            acc += ext[:, i: i + m]
        return acc / n, ext[:, -n:].copy()

    def _run(self, x: np.ndarray) -> np.ndarray:
        nsta, nlta = self.nsta, self.nlta
        m = x.shape[1]
        idx = self._n[:, None] + np.arange(m)
        sta, self._hx = self._window_mean(self._hx, x, nsta)
        sta[idx < nsta] = 0.0
        lta_pre, self._hsta = self._window_mean(self._hsta, sta, nlta)
        lta_pre[idx < nlta] = 0.0
        lta = np.concatenate([self._last_lta, lta_pre[:, :-1]], axis=1)
        self._last_lta = lta_pre[:, -1:].copy()
        star, self._hd = self._window_mean(self._hd, np.abs(x - lta), nsta)
        star[idx < nsta] = 0.0
        ltar, self._hstar = self._window_mean(self._hstar, star, nlta)
        ltar[idx < nlta] = 0.0
        eta = star - (self.ratio * ltar) - np.abs(sta - lta) - self.quiet
        eta[idx < nlta] = -1.0
        self._n += m
        return eta


# ------------------------------------------------------------------------------------------------
# Filters

FILTER_TYPES = ("bandpass", "highpass", "lowpass")


class StreamFilter:
    """Butterworth band-/high-/low-pass as second-order sections, state carried per channel.

    Designed as ObsPy's ``Trace.filter(type, ..., corners=4, zerophase=False)`` designs it
    (``scipy.signal.iirfilter(corners, f/nyquist, btype, ftype='butter', output='sos')``) and run
    with ``sosfilt`` from zero initial conditions, so a stream filtered chunk by chunk equals ObsPy's
    filter of the whole series.  Unlike ObsPy, which warns and falls back to a high-pass when a
    band-pass's upper corner reaches Nyquist, a corner at or above Nyquist is refused.
    """

    def __init__(self, kind: str, sampling_rate: float, *, freq: float | None = None,
                 freqmin: float | None = None, freqmax: float | None = None, corners: int = 4,
                 channels: int = 1) -> None:
        _check_channels(channels)
        if kind not in FILTER_TYPES:
            raise TriggerConfigError("type", f"unknown filter {kind!r}; one of {', '.join(FILTER_TYPES)}")
        if not (np.isfinite(sampling_rate) and sampling_rate > 0):
            raise TriggerConfigError("sampling_rate", f"must be a positive number, got {sampling_rate!r}")
        if isinstance(corners, bool) or not isinstance(corners, (int, np.integer)) or corners < 1:
            raise TriggerConfigError("corners", f"must be a positive integer, got {corners!r}")
        nyquist = 0.5 * sampling_rate
        if kind == "bandpass":
            names: Sequence[str] = ("freqmin", "freqmax")
            freqs = (freqmin, freqmax)
        else:
            names = ("freq",)
            freqs = (freq,)
        for name, f in zip(names, freqs):
            if f is None or not np.isfinite(f) or f <= 0:
                raise TriggerConfigError(name, f"must be a positive frequency in Hz, got {f!r}")
            if f >= nyquist:
                raise TriggerConfigError(name, f"{f} Hz is at or above Nyquist ({nyquist} Hz)")
        if kind == "bandpass" and not freqmin < freqmax:  # type: ignore[operator]
            raise TriggerConfigError("freqmin", f"must be below freqmax ({freqmin} >= {freqmax})")
        normalized = [f / nyquist for f in freqs]  # type: ignore[operator]
        btype = {"bandpass": "band", "highpass": "highpass", "lowpass": "lowpass"}[kind]
        self.sos = iirfilter(corners, normalized if len(normalized) > 1 else normalized[0],
                             btype=btype, ftype="butter", output="sos")
        self.kind = kind
        self.channels = int(channels)
        self.nonfinite = 0
        self._zi = np.zeros((self.sos.shape[0], self.channels, 2))

    def reset(self, channels: Iterable[int] | None = None) -> None:
        """Zero the filter state (all channels or the given indices), as at the start of a series."""
        if channels is None:
            self._zi[:] = 0.0
        else:
            self._zi[:, list(channels), :] = 0.0

    def process(self, chunk: np.ndarray) -> np.ndarray:
        """Filtered chunk (float64, same shape).  Non-finite samples are filtered as 0 and the
        channel's state is then reset, so they cannot ring on forever."""
        x, one_d = _as_chunk(chunk, self.channels)
        if x.shape[1] == 0:                  # sosfilt cannot reshape an empty chunk
            return x[0] if one_d else x
        bad = ~np.isfinite(x)
        if bad.any():
            self.nonfinite += int(bad.sum())
            x = np.where(bad, 0.0, x)
        y, self._zi = sosfilt(self.sos, x, axis=-1, zi=self._zi)
        if bad.any():
            rows = np.flatnonzero(bad.any(axis=1))
            for r in rows:
                after = int(np.flatnonzero(bad[r])[-1]) + 1
                self._zi[:, r, :] = 0.0
                if after < x.shape[1]:
                    tail, self._zi[:, r, :] = sosfilt(self.sos, x[r, after:], zi=self._zi[:, r, :])
                    y[r, after:] = tail
        return y[0] if one_d else y


# ------------------------------------------------------------------------------------------------
# Trigger logic


@dataclass(frozen=True, slots=True)
class Onset:
    """A trigger declared on a channel: the characteristic function rose to ``thr_on`` at sample
    ``on`` and stayed at or above ``thr_off`` for the minimum duration, confirmed at sample
    ``declared_at`` (the decision is reported as soon as it is made, before the event ends)."""
    channel: int
    on: int
    declared_at: int


@dataclass(frozen=True, slots=True)
class Event:
    """A completed trigger: samples ``on`` .. ``off`` inclusive (ObsPy ``trigger_onset`` pairs),
    ``start`` / ``end`` with the pre- and post-event margins (``start`` not before sample 0), the peak
    of the characteristic function, and whether ``max_len`` or a reset cut it short."""
    channel: int
    on: int
    off: int
    start: int
    end: int
    peak: float
    truncated: bool


class TriggerOnset:
    """Streaming on/off trigger with hysteresis (ObsPy ``trigger_onset``), per channel.

    A channel triggers at the first sample whose characteristic function is ``>= thr_on`` (the
    start of a run above ``thr_on``) and stays on through the last sample ``>= thr_off``.  With the
    defaults (``min_len=0``, no margins) the completed events equal
    ``trigger_onset(cf, thr_on, thr_off, max_len)`` on the whole series.  Additions:

    * ``min_len``: an event whose ``off - on + 1`` is shorter than ``min_len`` samples is dropped
      (counted in :attr:`suppressed`): spikes do not trigger.  An :class:`Onset` is reported when
      the event reaches that length.
    * ``max_len``: as ObsPy, an event is cut at ``on + max_len`` samples; a new one needs the function
      to fall below ``thr_on`` and rise again.
    * ``pre`` / ``post``: margins in samples added to :attr:`Event.start` / :attr:`Event.end`.

    Sample indices count the samples fed to the channel since construction (:meth:`reset` does not
    restart them; the caller maps them to time).  Events may span any number of chunks.
    """

    def __init__(self, thr_on: float, thr_off: float, *, channels: int = 1, min_len: int = 0,
                 max_len: int | None = None, pre: int = 0, post: int = 0) -> None:
        _check_channels(channels)
        for name, value in (("thr_on", thr_on), ("thr_off", thr_off)):
            if not np.isfinite(value):
                raise TriggerConfigError(name, f"must be a finite number, got {value!r}")
        if thr_off >= thr_on:
            raise TriggerConfigError("thr_off", f"must be below thr_on ({thr_off} >= {thr_on})")
        for name, value in (("min_len", min_len), ("pre", pre), ("post", post),
                            ("max_len", 0 if max_len is None else max_len)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TriggerConfigError(name, f"must be an integer number of samples, got {value!r}")
            if value < 0:
                raise TriggerConfigError(name, f"must not be negative, got {value}")
        if max_len is not None and max_len < 1:
            raise TriggerConfigError("max_len", f"must be at least 1 sample, got {max_len}")
        if max_len is not None and min_len > max_len + 1:
            raise TriggerConfigError("min_len", f"longer than max_len + 1 ({min_len} > {max_len + 1}): "
                                     "no event could ever be reported")
        self.thr_on = float(thr_on)
        self.thr_off = float(thr_off)
        self.channels = int(channels)
        self.min_len = int(min_len)
        self.max_len = None if max_len is None else int(max_len)
        self.pre = int(pre)
        self.post = int(post)
        self.suppressed = 0            # events dropped for being shorter than min_len
        self._n = np.zeros(channels, dtype=np.int64)
        self._on = np.full(channels, -1, dtype=np.int64)       # onset of the open event, -1: none
        self._peak = np.full(channels, -np.inf)
        self._declared = np.zeros(channels, dtype=bool)
        self._above_on = np.zeros(channels, dtype=bool)        # previous sample >= thr_on

    @property
    def active(self) -> np.ndarray:
        """Which channels are triggered now (a copy)."""
        return self._on >= 0

    def open_events(self) -> tuple[np.ndarray, np.ndarray]:
        """(onset sample, peak so far) of each channel's open event, -1 and -inf where none
        (copies): a caller deciding on several channels needs to know which onsets may still
        complete (the station stage's coincidence, ``edge/trigger_stage.py``)."""
        return self._on.copy(), self._peak.copy()

    def _close(self, c: int, off: int, truncated: bool, out: list) -> None:
        on = int(self._on[c])
        if off - on + 1 >= self.min_len:
            out.append(Event(c, on, off, max(0, on - self.pre), off + self.post,
                             float(self._peak[c]), truncated))
        else:
            self.suppressed += 1
        self._on[c] = -1
        self._peak[c] = -np.inf
        self._declared[c] = False

    def _maybe_declare(self, c: int, i: int, out: list) -> None:
        if not self._declared[c] and i - self._on[c] + 1 >= max(self.min_len, 1):
            self._declared[c] = True
            out.append(Onset(c, int(self._on[c]), i))

    def process(self, cf: np.ndarray) -> list:
        """Feed the next chunk of characteristic function; returns the :class:`Onset` and
        :class:`Event` objects decided in it, in sample order per channel.  NaN counts as below
        both thresholds."""
        x, one_d = _as_chunk(cf, self.channels)
        m = x.shape[1]
        out: list = []
        if m == 0:
            return out
        with np.errstate(invalid="ignore"):
            ge_on = x >= self.thr_on
            ge_off = x >= self.thr_off
        busy = (self._on >= 0) | ge_on.any(axis=1)
        for c in np.flatnonzero(busy):
            base = int(self._n[c])
            row = x[c]
            for j in range(m):
                i = base + j
                if self._on[c] >= 0:
                    if not ge_off[c, j]:
                        self._close(c, i - 1, False, out)
                    elif self.max_len is not None and i - self._on[c] > self.max_len:
                        self._close(c, int(self._on[c]) + self.max_len, True, out)
                    else:
                        if row[j] > self._peak[c]:
                            self._peak[c] = row[j]
                        self._maybe_declare(c, i, out)
                if self._on[c] < 0 and ge_on[c, j] and not self._above_on[c]:
                    self._on[c] = i
                    self._peak[c] = row[j]
                    self._maybe_declare(c, i, out)
                self._above_on[c] = ge_on[c, j]
        self._above_on[~busy] = ge_on[~busy, -1]
        self._n += m
        return out

    def flush(self, channels: Iterable[int] | None = None) -> list:
        """Close the open events (all channels or the given ones) at the last sample fed, as
        ObsPy closes an event still on at the end of the series; returns them."""
        out: list = []
        rows = range(self.channels) if channels is None else channels
        for c in rows:
            if self._on[c] >= 0:
                end = int(self._n[c]) - 1
                truncated = self.max_len is not None and end - self._on[c] > self.max_len
                self._close(c, int(self._on[c]) + self.max_len if truncated else end,
                            truncated, out)
        return out

    def reset(self, channels: Iterable[int] | None = None) -> list:
        """A gap: close open events at the last sample before it (marked ``truncated``) and forget
        the run above ``thr_on``; returns the closed events."""
        rows = list(range(self.channels) if channels is None else channels)
        out: list = []
        for c in rows:
            if self._on[c] >= 0:
                self._close(c, int(self._n[c]) - 1, True, out)
            self._above_on[c] = False
        return out


# ------------------------------------------------------------------------------------------------
# Onset picking


def aic_simple(x: np.ndarray) -> np.ndarray:
    """Maeda's (1985) Akaike information criterion of a window, computed from the samples:
    ``AIC[j] = (j + 1) log Var(x[:j+1]) + (n - j - 2) log Var(x[j+1:])``, as ObsPy's
    ``obspy.signal.trigger.aic_simple`` defines it; equal to ObsPy's for ``1 <= j <= n - 3`` (its
    first and last two values are edge conventions; here they are +inf).  Variances from running
    sums of the window minus its mean, floored at ``1e-12`` of the window's variance so a silent
    stretch gives a finite value; non-finite samples count as 0."""
    a = np.asarray(x, dtype=np.float64)
    n = a.shape[0]
    out = np.full(n, np.inf)
    if n < 4:
        return out
    a = np.where(np.isfinite(a), a, 0.0)
    a = a - a.mean()
    floor = max(float(np.mean(a * a)) * 1e-12, _TINY)
    cs = np.cumsum(a)
    cs2 = np.cumsum(a * a)
    k = np.arange(2, n - 1)                   # samples in the first part: 2 .. n - 2
    n2 = n - k
    v1 = cs2[k - 1] / k - (cs[k - 1] / k) ** 2
    v2 = (cs2[-1] - cs2[k - 1]) / n2 - ((cs[-1] - cs[k - 1]) / n2) ** 2
    out[k - 1] = k * np.log(np.maximum(v1, floor)) + (n2 - 1) * np.log(np.maximum(v2, floor))
    return out


def aic_pick(x: np.ndarray) -> int:
    """Index of the first sample after the AIC minimum of window *x* (the first sample of the
    "signal" part: ObsPy's ``argmin(aic_simple(x)) + 1``); the last index when the window is too
    short (< 4 samples) or constant, i.e. no refinement."""
    a = aic_simple(x)
    if a.shape[0] < 4 or not np.isfinite(a).any() or np.ptp(np.asarray(x, dtype=np.float64)) == 0:
        return max(0, a.shape[0] - 1)
    return int(np.argmin(a)) + 1


def group_delay_s(sos: np.ndarray, freq: float, sampling_rate: float) -> float:
    """Group delay (s) at *freq* Hz of a filter in second-order sections (the sum of the sections':
    they run in cascade)."""
    from scipy.signal import group_delay

    total = 0.0
    for sec in np.atleast_2d(sos):
        _, gd = group_delay((sec[:3], sec[3:]), w=[freq], fs=sampling_rate)
        total += float(gd[0])
    return total / sampling_rate


class OnsetPicker:
    """Refined onset of each trigger: an AIC pick (:func:`aic_pick`, Maeda 1985) on the *window*
    samples up to and including the trigger's onset sample, per channel.

    Streaming and bounded: it keeps the last ``window - 1`` samples of each channel (a ring of
    ``channels x window`` floats) and is told, chunk by chunk, which onsets fall in the chunk.  The
    pick depends only on the samples in its window, so it is the same whatever the chunking.  The
    window never reaches before the last :meth:`reset` of the channel (a gap): it is shorter then.
    Picks are sample indices counted like :class:`TriggerOnset`'s (samples fed since construction).
    """

    def __init__(self, window: int, *, channels: int = 1) -> None:
        _check_channels(channels)
        if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 4:
            raise TriggerConfigError("window", f"must be at least 4 samples, got {window!r}")
        self.window = int(window)
        self.channels = int(channels)
        self._hist = np.zeros((channels, self.window - 1))
        self._n = 0                                         # samples fed to every channel
        self._start = np.zeros(channels, dtype=np.int64)    # first sample of the current series

    @property
    def fed(self) -> int:
        """Samples fed to each channel so far (the index of the next chunk's first sample)."""
        return self._n

    def reset(self, channels: Iterable[int] | None = None) -> None:
        """A gap: the channels' windows start again from the next sample."""
        rows = list(range(self.channels) if channels is None else channels)
        self._start[rows] = self._n

    def process(self, chunk: np.ndarray, onsets: Iterable[tuple[int, int]]) -> dict[tuple[int, int], int]:
        """Feed the next chunk (the samples the characteristic function was computed from) and pick
        the given ``(channel, onset sample)`` pairs, each onset inside this chunk; returns
        ``{(channel, onset): pick sample}`` (``pick <= onset``)."""
        x, _ = _as_chunk(chunk, self.channels)
        m = x.shape[1]
        n0 = self._n
        keep = self._hist.shape[1]
        out: dict[tuple[int, int], int] = {}
        for c, on in onsets:
            if not n0 <= on < n0 + m:
                raise ValueError(f"onset {on} of channel {c} is not in this chunk ({n0} .. {n0 + m - 1})")
            lo = max(on - self.window + 1, int(self._start[c]))
            before = n0 - lo
            seg = x[c, max(0, lo - n0):on - n0 + 1]
            if before > 0:
                seg = np.concatenate([self._hist[c, keep - before:], seg])
            out[(c, on)] = lo + aic_pick(seg)
        if m >= keep:
            self._hist = np.array(x[:, m - keep:], dtype=np.float64)
        elif m:
            self._hist = np.concatenate([self._hist[:, m:], x.astype(np.float64)], axis=1)
        self._n += m
        return out


# ------------------------------------------------------------------------------------------------
# Coincidence


@dataclass(frozen=True, slots=True)
class CoincidenceEvent:
    """A network trigger: ``time`` (s) of the first single-channel onset, ``duration`` (s) to the
    latest off of the channels that joined, and who joined, in joining order."""
    time: float
    duration: float
    stations: tuple[str, ...]
    trace_ids: tuple[str, ...]
    coincidence_sum: float


def coincidence(triggers: Iterable[tuple[float, float, str]], thr_coincidence_sum: float,
                weights: dict[str, float] | Sequence[str], *,
                trigger_off_extension: float = 0.0) -> list[CoincidenceEvent]:
    """Coincidence across channels and stations, as ObsPy's ``coincidence_trigger`` does it on the
    single-channel triggers (``(on, off, trace_id)``, times in seconds, ``trace_id`` as
    ``NET.STA.LOC.CHA``).

    In time order of onsets, each trigger opens a candidate; every later trigger of another channel
    with ``on <= off + trigger_off_extension`` joins it (``off`` grows to the latest joined off, so A
    overlapping B and B overlapping C gives ABC); the candidate is kept when the sum of the weights
    reaches ``thr_coincidence_sum`` and its off is later than the last kept event's (ObsPy's rule for
    dropping subsets).  ``weights`` maps channel ids to weights (a list gives weight 1 each); triggers
    of other channels are disregarded, as ObsPy does.  Equal to ObsPy where the options overlap
    (``trigger_type=None`` on the same characteristic functions, no event templates, no
    ``delete_long_trigger``): tests/trigger/test_coincidence.py.

    This is the decision on completed single-channel triggers; running it while a stream goes on,
    re-deciding as triggers complete, is the station stage's job (not wired yet).
    """
    if not isinstance(weights, dict):
        weights = dict.fromkeys(weights, 1.0)
    for tid, w in weights.items():
        if not isinstance(tid, str) or len(tid.split(".")) != 4:
            raise TriggerConfigError("weights", f"channel id {tid!r} is not NET.STA.LOC.CHA")
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not np.isfinite(w) or w <= 0:
            raise TriggerConfigError("weights", f"weight of {tid} must be a positive number, got {w!r}")
    if not np.isfinite(thr_coincidence_sum) or thr_coincidence_sum <= 0:
        raise TriggerConfigError("thr_coincidence_sum",
                                 f"must be a positive number, got {thr_coincidence_sum!r}")
    if not np.isfinite(trigger_off_extension) or trigger_off_extension < 0:
        raise TriggerConfigError("trigger_off_extension",
                                 f"must not be negative, got {trigger_off_extension!r}")
    pending = sorted((float(on), float(off), tid) for on, off, tid in triggers if tid in weights)
    out: list[CoincidenceEvent] = []
    last_off = 0.0
    for i, (on, off, tid) in enumerate(pending):
        ids = [tid]
        total = float(weights[tid])
        for t_on, t_off, t_id in pending[i + 1:]:
            if t_id in ids:
                continue
            if t_on > off + trigger_off_extension:
                break
            ids.append(t_id)
            total += weights[t_id]
            off = max(off, t_off)
        if total < thr_coincidence_sum or off <= last_off:
            continue
        out.append(CoincidenceEvent(on, off - on, tuple(t.split(".")[1] for t in ids), tuple(ids), total))
        last_off = off
    return out


try:  # the optional compiled kernel (setup.py builds it when a C compiler is present)
    from . import _triggerfast as _fast  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - depends on the build
    _fast = None

IMPLEMENTATION = "c" if _fast is not None else "numpy"
