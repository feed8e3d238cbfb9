"""The HIL simulation: a deterministic discrete-event world with its own clock, in which a virtual
digitizer board runs the real firmware code and talks over a faulty serial line.

Owns:

* :class:`SimClock` -- simulated time (integer nanoseconds) with the ``monotonic()``/``time()``
  surface every clock object of the project has, so the edge's timeouts run in simulated time;
* the event queue (:meth:`Simulation.at`), run faster than real time (``run_until``) or paced
  against the wall clock (``hil run --pty``);
* :class:`LineDirection` -- one direction of the UART line: bytes leave the sender paced at the baud
  rate (10 line bits per byte: start, 8 data, stop), go through the fault model
  (:mod:`ims_station.hil.faults`) and the dead windows (disconnects, gateway outages) and arrive at
  the receiver at their exact times;
* :class:`VirtualBoard` -- the digitizer: ``ims_station.firmware.digitizer.Digitizer`` (the firmware
  itself) wired to emulated peripherals: the ADC driver on F's register-level
  ``hil/adc_emu.EmulatedADC`` (fed the signals of :mod:`ims_station.hil.signals` at each
  conversion, DRDY at the sample rate), PPS edges each second plus GNSS time, tamper pin, supply
  ADC and an emulated ``machine.UART``; reboots (new epoch, ring lost), GNSS outages, clock jumps,
  clipping;
* :class:`Truth` -- every code the ADC produced and the firmware time-stamped (per epoch, with the
  board time it was stamped with), for bit-identical comparison at the end of a soak; conversions
  the firmware discarded before its first GNSS time are counted apart.

Does not own: the firmware logic, the ADC register protocol (``hil/adc_emu.py``), the gateway (the
soak connects E's edge through the ``sim://`` port of :mod:`ims_station.hil.protocol_sim`).

Determinism: every random draw comes from numpy Generators seeded from the simulation seed; events
at the same instant run in the order they were scheduled.  Same seed, same bytes.
"""

from __future__ import annotations

import heapq
import itertools
import math
import os
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ims_station.errors import ImsStationError

from . import signals
from .faults import FaultPlan, FaultyDirection, Window

NS = 1_000_000_000
US = 1_000
DEFAULT_START_UTC = 1_767_225_600      # 2026-01-01T00:00:00Z: a whole second, so PPS edges fall on it
DEFAULT_BAUD = 115200


def simulation_key(seed: int) -> bytes:
    """The HMAC key of a simulated board that was given none: derived from the seed, public, and
    only ever valid between the simulator and an in-process edge (soak, tests).  Real boards and
    ``hil run`` take their key from a file (``read_secret_file``); nothing has a default key."""
    import hashlib

    return hashlib.sha256(b"ims-station HIL simulation key (not a station key) %d" % int(seed)).digest()


class SimError(ImsStationError):
    """The simulation was set up wrongly (unknown board, bad parameter)."""


class EpochFile:
    """The board's boot counter kept in a file, as the firmware keeps it in ``/epoch``
    (``firmware/main.py`` ``next_epoch``): each boot reads it, adds one (1 if the file is missing),
    writes it back, and the link's sequence numbers restart under the new epoch.  Written to a
    temporary file, fsync'd and renamed, so a killed simulator never leaves half a number."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            text = self.path.read_text() if self.path.exists() else None
        except OSError as err:
            raise SimError(f"board state file {self.path}: cannot read: {err.strerror}") from err
        if text is not None and not text.strip().isdigit():
            raise SimError(f"board state file {self.path}: {text.strip()[:20]!r} is not a boot counter "
                           "(a whole number): remove the file to start again at epoch 1")
        self._last = None if text is None else int(text)

    def next(self) -> int:
        epoch = 1 if self._last is None else (self._last + 1) & 0xFFFF
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "w") as f:
                f.write(f"{epoch}\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as err:
            raise SimError(f"board state file {self.path}: cannot write: {err.strerror}") from err
        self._last = epoch
        return epoch


# ---------------------------------------------------------------- clock and scheduler

class SimClock:
    """Simulated time.  ``monotonic()`` counts seconds from the start; ``time()`` is UTC seconds.
    Implements :class:`ims_station.clock.Clock` (structurally), so it can be injected anywhere."""

    def __init__(self, start_utc: int = DEFAULT_START_UTC) -> None:
        self.now_ns = 0
        self.start_utc = int(start_utc)

    def monotonic(self) -> float:
        return self.now_ns / NS

    def time(self) -> float:
        return self.start_utc + self.now_ns / NS

    def utc_us(self) -> int:
        return self.start_utc * 1_000_000 + self.now_ns // US


# ---------------------------------------------------------------- the line

class LineDirection:
    """One direction of the serial line: paced, faulty, possibly dead for time windows.

    ``send(data)`` at the current time queues the bytes; ``take(limit)`` returns the bytes that have
    arrived by now.  Bytes that would arrive inside a dead window are lost (counted).
    """

    def __init__(self, clock: SimClock, baud: int, faults: FaultyDirection, dead: list[Window],
                 latency_ns: int = 0) -> None:
        self.clock = clock
        self.latency_ns = int(latency_ns)
        self.on_cut: Callable[[int], None] | None = None
        self.tap: Callable[[bytes, np.ndarray], None] | None = None   # sees the clean bytes + their times
        self.byte_ns = 10 * NS / baud
        self.faults = faults
        self.dead = sorted(dead, key=lambda w: w.start)
        self.tx_free_ns = 0
        self._times: deque[np.ndarray] = deque()
        self._data: deque[bytes] = deque()
        self._head = 0                   # bytes of the first chunk already taken
        self.bytes_lost_dead = 0
        self.bytes_cut = 0               # not yet on the wire when the sender was reset
        self.max_backlog_s = 0.0

    def send(self, data: bytes) -> None:
        n = len(data)
        if not n:
            return
        now = self.clock.now_ns
        start = max(now, self.tx_free_ns)
        ends = start + np.floor((np.arange(n) + 1) * self.byte_ns).astype(np.int64)
        self.tx_free_ns = int(ends[-1])
        self.max_backlog_s = max(self.max_backlog_s, (self.tx_free_ns - now) / NS)
        if self.tap is not None:
            self.tap(data, ends)
        out, index = self.faults.apply(data)
        times = ends[index]
        if self.latency_ns:
            # A USB-serial adapter hands received bytes to the host when its latency timer expires
            # (FTDI default 16 ms): the receiver sees them in bursts.
            lat = self.latency_ns
            times = ((times + lat - 1) // lat) * lat
        if self.dead and len(times):
            alive = np.ones(len(times), dtype=bool)
            for w in self.dead:
                alive &= ~((times >= int(w.start * NS)) & (times < int(w.end * NS)))
            if not alive.all():
                self.bytes_lost_dead += int((~alive).sum())
                out = bytes(np.frombuffer(out, dtype=np.uint8)[alive])
                times = times[alive]
        if len(out):
            self._times.append(times)
            self._data.append(out)

    def queued_bytes(self) -> int:
        """Bytes accepted by the sender but not yet on the wire."""
        left = self.tx_free_ns - self.clock.now_ns
        return 0 if left <= 0 else int(math.ceil(left / self.byte_ns))

    def next_arrival_ns(self) -> int | None:
        if not self._times:
            return None
        return int(self._times[0][self._head])

    def arrival_of(self, count: int) -> int | None:
        """Time at which *count* bytes (from now on) will have arrived, if that many are queued."""
        need = count
        head = self._head
        for t in self._times:
            avail = len(t) - head
            if need <= avail:
                return int(t[head + need - 1])
            need -= avail
            head = 0
        return None

    def available(self) -> int:
        now = self.clock.now_ns
        n = 0
        head = self._head
        for t in self._times:
            k = int(np.searchsorted(t, now, side="right"))
            n += k - head
            if k < len(t):
                break
            head = 0
        return n

    def take(self, limit: int | None = None) -> bytes:
        now = self.clock.now_ns
        parts = []
        left = limit if limit is not None else 1 << 62
        while self._times and left > 0:
            t = self._times[0]
            k = min(int(np.searchsorted(t, now, side="right")), self._head + left)
            if k > self._head:
                parts.append(self._data[0][self._head:k])
                left -= k - self._head
                self._head = k
            if self._head >= len(t):
                self._times.popleft()
                self._data.popleft()
                self._head = 0
            else:
                break
        return b"".join(parts)

    def cut(self) -> None:
        """The sender was reset: what has not left it yet never will."""
        now = self.clock.now_ns
        keep_t: deque[np.ndarray] = deque()
        keep_d: deque[bytes] = deque()
        head = self._head
        for t, d in zip(self._times, self._data):
            k = int(np.searchsorted(t, now, side="right"))
            self.bytes_cut += len(t) - max(k, head)
            if k > head:
                keep_t.append(t[:k])
                keep_d.append(d[:k])
                # head applies to the first kept chunk only
            head = 0
        self._times, self._data = keep_t, keep_d
        if not keep_t:
            self._head = 0
        self.tx_free_ns = now
        self.faults.abort_frame()
        if self.on_cut is not None:
            self.on_cut(now)


# ---------------------------------------------------------------- board peripherals

class EmulatedUART:
    """The board side of the line with the ``machine.UART`` surface the firmware uses."""

    def __init__(self, tx: LineDirection, rx: LineDirection, rxbuf: int = 4096, txbuf: int = 1024) -> None:
        self._tx = tx
        self._rx = rx
        self.txbuf = txbuf
        self._buf = bytearray()
        self.rxbuf = rxbuf
        self.rx_overflow = 0
        self.bytes_written = 0

    def _pull(self) -> None:
        data = self._rx.take()
        if data:
            room = self.rxbuf - len(self._buf)
            if len(data) > room:
                self.rx_overflow += len(data) - max(room, 0)
                data = data[:max(room, 0)]
            self._buf += data

    def write(self, b) -> int:
        # Like machine.UART with timeout=0: only what fits in the TX buffer is taken; the caller
        # keeps the rest (the firmware's own bounded queue decides what to drop).
        queued = self._tx.queued_bytes()
        n = min(len(b), max(0, self.txbuf - queued))
        if n:
            self._tx.send(bytes(b[:n]))
            self.bytes_written += n
        return n

    def any(self) -> int:
        self._pull()
        return len(self._buf)

    def read(self, n: int = -1):
        self._pull()
        if not self._buf:
            return None
        if n is None or n < 0:
            n = len(self._buf)
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def readinto(self, buf, n: int | None = None):
        data = self.read(len(buf) if n is None else n)
        if not data:
            return None
        buf[:len(data)] = data
        return len(data)


class TamperPin:
    def __init__(self, sim: "Simulation") -> None:
        self._sim = sim

    def value(self, *args) -> int:
        active = FaultPlan.in_any(self._sim.plan.tamper, self._sim.clock.monotonic())
        level = (_get(self._sim.board.board, "pins", {}) or {}).get("tamper_active", 1)
        return level if active else 1 - level


class SupplyADC:
    """The supply voltage through a divider into a 16-bit ADC reading (machine.ADC.read_u16)."""

    def __init__(self, sim: "Simulation", divider: float, vref: float) -> None:
        self._sim = sim
        self.divider = divider
        self.vref = vref

    def volts(self) -> float:
        p = self._sim.plan
        return p.supply_low_v if FaultPlan.in_any(p.supply_low, self._sim.clock.monotonic()) else p.supply_v

    def read_u16(self) -> int:
        return max(0, min(65535, int(round(self.volts() / self.divider / self.vref * 65535))))


# ---------------------------------------------------------------- truth

@dataclass
class EpochTruth:
    epoch: int
    rate_mhz: int
    times_us: list[int] = field(default_factory=list)    # board time stamp of each conversion
    true_us: list[int] = field(default_factory=list)     # true UTC of each conversion
    codes: list[tuple[int, ...]] = field(default_factory=list)
    _index: dict[int, int] | None = None

    def index_of(self, t_us: int) -> int | None:
        if self._index is None or len(self._index) != len(self.times_us):
            self._index = {}
            for i, t in enumerate(self.times_us):
                self._index.setdefault(t, i)
        return self._index.get(t_us)

    def array(self) -> np.ndarray:
        return np.array(self.codes, dtype=np.int64).reshape(len(self.codes), -1)


class Truth:
    """Every conversion of the ADC that the firmware time-stamped, per board epoch; conversions it
    discarded for want of a time (before its first GNSS time) are only counted."""

    def __init__(self) -> None:
        self.epochs: dict[int, EpochTruth] = {}
        self.discarded_no_time: dict[int, int] = {}     # epoch -> conversions discarded

    def discard(self, epoch: int) -> None:
        self.discarded_no_time[epoch] = self.discarded_no_time.get(epoch, 0) + 1

    def record(self, epoch: int, rate_mhz: int, board_us: int, true_us: int, codes) -> None:
        e = self.epochs.get(epoch)
        if e is None:
            e = self.epochs[epoch] = EpochTruth(epoch, rate_mhz)
        e.times_us.append(board_us)
        e.true_us.append(true_us)
        e.codes.append(tuple(int(c) for c in codes))

    @property
    def conversions(self) -> int:
        return sum(len(e.codes) for e in self.epochs.values())


class SentLog:
    """What left the board on the line: every DATA packet (epoch, seq, first-sample time, samples),
    read from the clean byte stream with the board's key.  Packets still in the UART when the board
    is reset never left it and are removed again (:meth:`cut`)."""

    def __init__(self, key: bytes) -> None:
        from ims_station.firmware import link

        self._link = link
        self._auth = link.Authenticator(key)
        self._deframer = link.Deframer()
        self._pos = 0                     # clean byte count
        self.blocks: list[tuple[int, int, int, int, int]] = []   # (epoch, seq, t_first_us, n, sent_ns)
        self._frame_start = 0

    def feed(self, data: bytes, ends: np.ndarray) -> None:
        link = self._link
        start = 0
        while start < len(data):
            i = data.find(b"\x00", start)
            if i < 0:
                self._deframer.feed(data[start:])
                break
            for fr in self._deframer.feed(data[start:i + 1]):
                try:
                    hdr, payload = link.decode(self._auth, fr)
                except link.LinkError:
                    continue
                if hdr.ptype == link.T_DATA and not hdr.flags & link.F_RETRANSMIT:
                    t_first, n = _data_head(payload)
                    self.blocks.append((hdr.epoch, hdr.seq, t_first, n, int(ends[i])))
            start = i + 1

    def cut(self, now_ns: int) -> None:
        self.blocks = [b for b in self.blocks if b[4] <= now_ns]
        self._deframer = self._link.Deframer()


def _data_head(payload: bytes) -> tuple[int, int]:
    import struct

    t_first, _rate, n = struct.unpack_from(">qIH", payload, 0)
    return t_first, n


# ---------------------------------------------------------------- the virtual board

def load_board(name: str) -> dict:
    """The board dict exactly as the firmware sees it: ``boards/<name>.toml`` validated by
    ``ims_station.boards`` and passed through ``freeze()`` (the generated ``board_config`` module's
    ``BOARD``), so the HIL also exercises the deploy-time freezing."""
    from ims_station import boards

    src = boards.freeze(boards.load_board(name))
    namespace: dict[str, Any] = {}
    exec(compile(src, f"board_config({name})", "exec"), namespace)  # literals only, generated by us
    return namespace["BOARD"]


class VirtualBoard:
    """The digitizer: firmware code + emulated peripherals, scheduled by the simulation."""

    def __init__(self, sim: "Simulation", board: dict, key: bytes, rate_sps: float | None = None,
                 packet_ms: int | None = None) -> None:
        self.sim = sim
        if rate_sps or packet_ms:
            # Simulation knobs: the board boots with this rate as its default / this packet length.
            board = dict(board)
            acq = dict(_get(board, "acquisition", {}) or {})
            if rate_sps:
                mhz = int(round(rate_sps * 1000))
                if mhz not in (acq.get("rates_mhz") or [mhz]):
                    raise SimError(f"board {_get(_get(board, 'board', {}), 'name', '?')}: rate {rate_sps} sps "
                                   f"not among its rates {[r / 1000 for r in acq.get('rates_mhz', [])]}")
                acq["default_rate_mhz"] = mhz
            if packet_ms:
                acq["packet_ms"] = int(packet_ms)
            board["acquisition"] = acq
        self.board = board
        self.key = key
        self.epoch = -1
        self.generation = 0
        self.running = False
        self.sampling = True
        self.digitizer: Any = None
        self.adc_emu: Any = None
        self.timebase: Any = None
        self.rate_mhz = int(round((rate_sps or _board_rate_sps(board)) * 1000))
        self.channels = _board_channels(board)
        # Board channel i carries ADC input adc_input[i] (the truth is recorded per ADC input).
        self.adc_inputs = [int(_get(c, "adc_input", i)) for i, c in enumerate(_get(board, "channels") or [])]
        self.reboots = 0
        self.counters_by_epoch: dict[int, dict] = {}
        self._signals: list[signals.ChannelSignal] = []
        self._sig_cache: tuple[int, np.ndarray] | None = None
        self.clipping_drive_v = 10.0     # far beyond any ADS131M0x range (+-1.2 V / gain)

    # -------------------------------------------------------- life cycle
    def boot(self) -> None:
        from ims_station.firmware import digitizer as fw_digitizer
        from ims_station.firmware import timebase as fw_timebase
        from . import adc_emu

        sim = self.sim
        self.generation += 1
        gen = self.generation
        self.epoch = sim.epochs.next() if sim.epochs is not None else (self.epoch + 1) & 0xFFFF
        self.running = True
        tick0 = sim.tick_offset_us
        self._ticks = lambda: tick0 + sim.clock.now_ns // US
        tb_kw = {}
        holdover = sim.holdover_s if sim.holdover_s is not None else _get(_get(self.board, "timing", {}) or {}, "holdover_s")
        if holdover is not None:
            tb_kw["holdover_s"] = holdover
        self.timebase = fw_timebase.Timebase(self._ticks, **tb_kw)
        self.adc_emu = adc_emu.EmulatedADC(**_emu_kwargs(self.board, len(self.channels)))
        adc = _make_driver(self.board, self.adc_emu, len(self.channels))
        adc.configure(self.rate_mhz)
        self.digitizer = fw_digitizer.Digitizer(
            self.board, sim.uart, adc, self.timebase, self.key, epoch=self.epoch,
            tamper=TamperPin(sim), supply=SupplyADC(sim, *_supply_divider(self.board)),
            **_digitizer_extra(fw_digitizer.Digitizer, self))
        self._setup_signals()
        now = sim.clock.now_ns
        period = self.period_ns
        # DRDY on the ADC's own sample grid, PPS on whole UTC seconds, main loop every poll_ns.
        first = ((now // period) + 1) * period
        sim.at(first, lambda: self._drdy(gen))
        sim.at(((now // NS) + 1) * NS, lambda: self._pps(gen))
        sim.at(now + sim.poll_ns, lambda: self._poll(gen))

    def reset(self) -> None:
        """Power loss / watchdog: the MCU stops at once; RAM (ring, partial packet) is lost."""
        if not self.running:
            return
        self._save_counters()
        self.running = False
        self.generation += 1
        self.reboots += 1
        self.sim.down.cut()
        self.sim.uart._buf.clear()

    def _save_counters(self) -> None:
        if self.digitizer is not None:
            self.counters_by_epoch[self.epoch] = dict(getattr(self.digitizer, "counters", {}))

    @property
    def period_ns(self) -> int:
        return int(round(NS * 1000 / self.rate_mhz))

    # -------------------------------------------------------- signals
    def _setup_signals(self) -> None:
        fs = self.rate_mhz / 1000.0
        self._signals = [
            signals.ChannelSignal(self.sim.scenario, ch["sensor"], ch["sensitivity"], fs,
                                  stream=100 * (self.board_id % 1000) + i, component=ch.get("component", "Z"),
                                  position_km=ch.get("position_km", (0.0, 0.0)))
            for i, ch in enumerate(self.channels)]
        self._sig_cache = None

    @property
    def board_id(self) -> int:
        ident = _get(self.board, "board", {}) or {}
        return int(_get(ident, "id", _get(self.board, "board_id", 1)))

    def _volts(self, now_ns: int) -> list[float]:
        # Sample index on the rate's grid from the start of the simulation (t = index / fs).
        i = int(round(now_ns * self.rate_mhz / (NS * 1000)))
        cache = self._sig_cache
        if cache is None or not (cache[0] <= i < cache[0] + cache[1].shape[1]):
            block = 1024
            i0 = (i // block) * block
            arr = np.vstack([s.volts(i0, block) for s in self._signals])
            self._sig_cache = cache = (i0, arr)
        per_channel = cache[1][:, i - cache[0]].tolist()
        v = [0.0] * self.adc_emu.channels
        for ch, inp in enumerate(self.adc_inputs or range(len(per_channel))):
            v[inp] = per_channel[ch]
        if FaultPlan.in_any(self.sim.plan.clipping, now_ns / NS):
            # Driven beyond full scale: a large square wave so both rails are hit.
            sign = 1.0 if (i // 5) % 2 == 0 else -1.0
            v = [sign * self.clipping_drive_v for _ in v]
        return v

    # -------------------------------------------------------- scheduled work
    def _drdy(self, gen: int) -> None:
        if gen != self.generation:
            return
        sim = self.sim
        now = sim.clock.now_ns
        if self.sampling and now < sim.sampling_end_ns:
            self.adc_emu.set_inputs(self._volts(now))
            codes = self.adc_emu.convert()
            board_us = self.timebase.now_us(self._ticks())
            counters = self.digitizer.counters
            discarded = counters.get("samples_discarded_no_time", 0)
            self.digitizer.on_drdy()
            if counters.get("samples_discarded_no_time", 0) != discarded:
                # Before its first GNSS time the board has no time to stamp with and discards the
                # conversion: it is not part of what the link is expected to deliver.
                sim.truth.discard(self.epoch)
            else:
                sim.truth.record(self.epoch, self.rate_mhz, board_us, sim.clock.utc_us(), codes)
        rate = int(getattr(self.digitizer, "rate_mhz", self.rate_mhz) or self.rate_mhz)
        if rate != self.rate_mhz:      # the gateway changed the rate (COMMAND set_rate)
            self.rate_mhz = rate
            self._setup_signals()
        if now < sim.sampling_end_ns:
            period = self.period_ns
            sim.at(((now // period) + 1) * period, lambda: self._drdy(gen))

    def _pps(self, gen: int) -> None:
        if gen != self.generation:
            return
        sim = self.sim
        now = sim.clock.now_ns
        t = now / NS
        if not FaultPlan.in_any(sim.plan.gnss_outages, t):
            self.timebase.on_pps(self._ticks())
            step = sum(s for (tj, s) in sim.plan.clock_jumps if tj <= t)
            self.timebase.on_gnss_time(sim.clock.utc_us() + int(round(step * 1_000_000)))
        sim.at(now + NS, lambda: self._pps(gen))

    def _poll(self, gen: int) -> None:
        if gen != self.generation:
            return
        self.digitizer.poll()
        if gen != self.generation:     # the firmware rebooted itself (COMMAND reboot)
            return
        self.sim.at(self.sim.clock.now_ns + self.sim.poll_ns, lambda: self._poll(gen))

    def firmware_reset(self) -> None:
        """Called by the firmware's reset hook (machine.reset on the board)."""
        self.reset()
        self.sim.at(self.sim.clock.now_ns + int(self.sim.plan.reboot_s * NS), self.boot)


# ---------------------------------------------------------------- board dict access
# The frozen board dict is F's format (ims_station.boards); these helpers are the only place that
# knows its keys, so a change there is a change here.

def _get(d: dict, key: str, default: Any = None) -> Any:
    return d.get(key, default) if isinstance(d, dict) else default


def _board_rate_sps(board: dict) -> float:
    acq = _get(board, "acquisition", {}) or {}
    if _get(acq, "default_rate_mhz"):
        return _get(acq, "default_rate_mhz") / 1000.0
    for key in ("rate_sps", "sample_rate", "rate"):
        v = _get(board, key)
        if v:
            return float(v)
    rates = _get(board, "sample_rates") or _get(board, "rates")
    if rates:
        return float(rates[0])
    adc = _get(board, "adc", {})
    for key in ("rate_sps", "sample_rate", "rate"):
        v = _get(adc, key)
        if v:
            return float(v)
    return 100.0


def _board_channels(board: dict) -> list[dict]:
    chans = _get(board, "channels") or []
    out = []
    for ch in chans:
        sensor = _get(ch, "sensor") or _get(ch, "sensor_type") or _get(ch, "type") or "seismic"
        sens = _get(ch, "sensitivity") or _get(ch, "sensitivity_v") or _get(ch, "v_per_unit")
        if not sens:
            sens = {"seismic": 1500.0, "infrasonic": 0.02, "hydroacoustic": 0.02, "weather": 1e-4}.get(sensor, 1.0)
        code = _get(ch, "channel") or _get(ch, "code") or ""
        comp = code[-1:] if code else "Z"
        pos = _get(ch, "position_km") or (0.0, 0.0)
        out.append({"sensor": sensor, "sensitivity": float(sens), "component": comp,
                    "position_km": tuple(pos), "gain": _get(ch, "gain", 1)})
    return out


def _adc_inputs(board: dict, nch: int) -> int:
    adc = _get(board, "adc", {}) or {}
    return int(_get(adc, "inputs", nch) or nch)


def _emu_kwargs(board: dict, nch: int) -> dict:
    adc = _get(board, "adc", {}) or {}
    kw = {"channels": _adc_inputs(board, nch)}
    if _get(adc, "clkin_hz") is not None:
        kw["clkin_hz"] = int(_get(adc, "clkin_hz"))
    return kw


def _make_driver(board: dict, emu: Any, nch: int) -> Any:
    from ims_station.firmware import ads131m0x

    adc = _get(board, "adc", {}) or {}
    part = str(_get(adc, "part", "ads131m04")).lower()
    if not part.startswith("ads131m0"):
        raise SimError(f"board {_get(_get(board, 'board', {}), 'name', '?')}: ADC part {part!r} has no "
                       f"emulator in hil/ (only the ADS131M0x family)")
    n_in = _adc_inputs(board, nch)
    gains = [1] * n_in
    for i, ch in enumerate(_get(board, "channels") or []):
        gains[int(_get(ch, "adc_input", i))] = int(_get(ch, "gain", 1))
    kw = {}
    for key in ("clkin_hz", "word_bits", "input_crc"):
        if _get(adc, key) is not None:
            kw[key] = _get(adc, key)
    return ads131m0x.ADS131M0x(emu.spi, emu.cs, emu.drdy, gains, channels=n_in, **kw)


def _supply_divider(board: dict) -> tuple[float, float]:
    # Same scaling as the firmware: mV = read_u16 * vref_mv * divider / 65535.
    sup = _get(board, "supply", {}) or {}
    return float(_get(sup, "divider", 1.0)), float(_get(sup, "vref_mv", 3300)) / 1000.0


def _digitizer_extra(cls: Any, vb: VirtualBoard) -> dict:
    import inspect

    params = inspect.signature(cls).parameters
    extra = {}
    for name in ("reset", "on_reset", "reboot"):
        if name in params:
            extra[name] = vb.firmware_reset
    if "ticks_us" in params:
        extra["ticks_us"] = lambda: vb._ticks()
    if "boot" in params:
        # A boot number per run, from the simulation's seed: reproducible, and new at every boot.
        rng = np.random.default_rng([vb.sim.seed & 0xFFFFFFFF, 0xB007, vb.board_id & 0xFFFF, vb.generation])
        extra["boot"] = int(rng.integers(1, 1 << 16))
    return extra


# ---------------------------------------------------------------- the simulation

class Simulation:
    """One board on one faulty line, with an edge endpoint (``edge_read``/``edge_write``)."""

    def __init__(self, *, board: str | dict = "sim", seed: int = 0, plan: FaultPlan | None = None,
                 baud: int = DEFAULT_BAUD, rate_sps: float | None = None, key: bytes | None = None,
                 scenario: signals.Scenario | None = None, start_utc: int = DEFAULT_START_UTC,
                 poll_s: float = 0.005, holdover_s: int | None = None, latency_ms: float = 16.0,
                 packet_ms: int | None = None, epochs: EpochFile | None = None, first_epoch: int = 0) -> None:
        self.seed = int(seed)
        # The board's epoch (boot counter): from *epochs* (a state file, as the firmware's) at every
        # boot, or *first_epoch* at the first boot and one more at each reboot.
        self.epochs = epochs
        self.key = key if key is not None else simulation_key(self.seed)
        key = self.key
        self.clock = SimClock(start_utc)
        self.plan = plan or FaultPlan()
        self.baud = int(baud)
        self.poll_ns = int(poll_s * NS)
        self.holdover_s = holdover_s
        self.scenario = scenario or signals.Scenario.standard(self.seed)
        self.truth = Truth()
        self.sampling_end_ns = 1 << 62
        self._queue: list[tuple[int, int, Callable[[], None]]] = []
        self._order = itertools.count()
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, 0x71C])
        self.tick_offset_us = int(rng.integers(0, 1 << 29))
        dead_down = list(self.plan.disconnects) + list(self.plan.gateway_outages)
        self.down = LineDirection(self.clock, self.baud, FaultyDirection(self.plan.down, self.seed, 0), dead_down,
                                  latency_ns=int(latency_ms * 1e6))
        self.up = LineDirection(self.clock, self.baud, FaultyDirection(self.plan.up, self.seed, 1),
                                list(self.plan.disconnects))
        self.uart = EmulatedUART(self.down, self.up)
        self.sent = SentLog(key)
        self.down.tap = self.sent.feed
        self.down.on_cut = self.sent.cut
        board_dict = load_board(board) if isinstance(board, str) else board
        self.board_name = board if isinstance(board, str) else str(_get(board, "name", "custom"))
        self.board = VirtualBoard(self, board_dict, key, rate_sps, packet_ms)
        self.board.epoch = (int(first_epoch) - 1) & 0xFFFF
        for t in self.plan.reboots:
            self.at(int(t * NS), self._reboot_fault)
        self.board.boot()

    # -------------------------------------------------------- events
    def at(self, t_ns: int, fn: Callable[[], None]) -> None:
        heapq.heappush(self._queue, (int(t_ns), next(self._order), fn))

    def _reboot_fault(self) -> None:
        self.board.reset()
        self.at(self.clock.now_ns + int(self.plan.reboot_s * NS), self.board.boot)

    def run_until(self, t_ns: int) -> None:
        q = self._queue
        clock = self.clock
        while q and q[0][0] <= t_ns:
            t, _, fn = heapq.heappop(q)
            if t > clock.now_ns:
                clock.now_ns = t
            fn()
        if t_ns > clock.now_ns:
            clock.now_ns = t_ns

    def run_for(self, seconds: float) -> None:
        self.run_until(self.clock.now_ns + int(round(seconds * NS)))

    def stop_sampling(self, at_s: float | None = None) -> None:
        """The ADC stops converting (end of a soak: what follows is draining the link)."""
        self.sampling_end_ns = self.clock.now_ns if at_s is None else int(at_s * NS)

    # -------------------------------------------------------- edge endpoint
    def edge_in_waiting(self) -> int:
        return self.down.available()

    def edge_read(self, size: int, timeout_s: float | None) -> bytes:
        """Block (in simulated time) until *size* bytes have arrived or *timeout_s* has passed."""
        horizon = 3600.0 if timeout_s is None else timeout_s
        deadline = self.clock.now_ns + int(round(horizon * NS))
        while self.down.available() < size and self.clock.now_ns < deadline:
            step = deadline
            if self._queue:
                step = min(step, self._queue[0][0])
            t_bytes = self.down.arrival_of(size)
            if t_bytes is not None:
                step = min(step, t_bytes)
            self.run_until(max(step, self.clock.now_ns + 1))
        return self.down.take(size)

    def edge_write(self, data: bytes) -> int:
        self.up.send(bytes(data))
        return len(data)

    # -------------------------------------------------------- report
    def line_counters(self) -> dict:
        d, u = self.down.faults.counters, self.up.faults.counters
        return {
            "down": dict(d, bytes_lost_dead=self.down.bytes_lost_dead, bytes_cut_by_reboot=self.down.bytes_cut,
                         max_tx_backlog_s=round(self.down.max_backlog_s, 6)),
            "up": dict(u, bytes_lost_dead=self.up.bytes_lost_dead),
            "board_uart_rx_overflow": self.uart.rx_overflow,
        }


# ---------------------------------------------------------------- named simulations (sim://NAME)

_REGISTRY: dict[str, Simulation] = {}


def register(name: str, sim: Simulation) -> None:
    """Make *sim* reachable as ``sim://NAME`` (like python-can's virtual channels)."""
    _REGISTRY[name] = sim


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def lookup(name: str) -> Simulation | None:
    return _REGISTRY.get(name)
