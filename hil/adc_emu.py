"""Register- and byte-level emulation of a Texas Instruments ADS131M0x ADC, for the HIL.

Owns: the chip's SPI behaviour as the data sheet (ADS131M04, SBAS912) describes it, written
independently of the driver in ``firmware/ads131m0x.py`` so that one checks the other:

* frames delimited by /CS; words of 16, 24, 32 (zero padded) or 32 (sign extended) bits
  (``MODE.WLENGTH``); commands, responses and CRC words are 16 bits, MSB-aligned;
* the response to a frame's command comes in the *next* frame; NULL answers STATUS, RESET answers
  ``0xFF20 | channels``, WREG answers ``0x4000 | addr << 7 | (n - 1)``, a one-register RREG answers
  the register, a multi-register RREG answers ``0xE000 | ...`` followed by the registers;
* output CRC (CCITT 0x1021 or ANSI 0x8005 per ``MODE.CRC_TYPE``, seed 0xFFFF) over the words before
  it; optional input CRC (``MODE.RX_CRC_EN``): a command with a bad CRC is not executed and sets
  ``STATUS.CRC_ERR``; LOCK/UNLOCK; STANDBY/WAKEUP;
* conversions: ``code = round(V / 1.2 V * gain * 2**23)``, offset and gain calibration registers,
  clipping at 0x7FFFFF / 0x800000, channel enables, data rate ``f_CLKIN / 2 / OSR``;
* DRDY (active low) asserted by a conversion and released when a frame reads the data.

It does not own signal generation or scheduling: the HIL calls :meth:`EmulatedADC.set_inputs` with
voltages from its generators and :meth:`EmulatedADC.convert` at the data rate (or lets the DRDY IRQ
handler registered on :attr:`EmulatedADC.drdy` fire).  Written with the stdlib only (the chip is a
few hundred lines of logic; no maintained Python model of it exists to reuse).
"""

from __future__ import annotations

import binascii
import math
from typing import Callable

CHANNEL_COUNTS = (1, 2, 3, 4, 6, 8)
OSR_TABLE = (128, 256, 512, 1024, 2048, 4096, 8192, 16256)
GAINS = (1, 2, 4, 8, 16, 32, 64, 128)
VREF = 1.2
CODE_MAX = 0x7FFFFF
CODE_MIN = -0x800000

# Register addresses and reset values (ADS131M04 data sheet, register map).
ID, STATUS, MODE, CLOCK, GAIN1, GAIN2, CFG, THRSHLD_MSB, THRSHLD_LSB = range(9)
CH0_CFG = 0x09
REGMAP_CRC = 0x3E
N_REGS = 0x40


def _crc_ansi(data: bytes, crc: int = 0xFFFF) -> int:
    for b in data:
        crc ^= b << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x8005) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def _crc(data: bytes, ansi: bool) -> int:
    return _crc_ansi(data) if ansi else binascii.crc_hqx(bytes(data), 0xFFFF)


class EmulatedPin:
    """A ``machine.Pin``-like object: ``value()``, ``value(v)``, ``__call__``, ``irq()``."""

    IRQ_FALLING = 1
    IRQ_RISING = 2

    def __init__(self, value: int = 1, on_change: Callable[[int], None] | None = None) -> None:
        self._v = value
        self._on_change = on_change
        self._irq: Callable | None = None
        self._trigger = 0

    def value(self, v: int | None = None) -> int | None:
        if v is None:
            return self._v
        self.set(1 if v else 0)
        return None

    __call__ = value

    def on(self) -> None:
        self.set(1)

    def off(self) -> None:
        self.set(0)

    def irq(self, handler: Callable | None = None, trigger: int = IRQ_FALLING, **_kw) -> None:
        self._irq = handler
        self._trigger = trigger

    def set(self, v: int) -> None:
        old = self._v
        self._v = v
        if old != v:
            if self._on_change is not None:
                self._on_change(v)
            if self._irq is not None:
                if (v == 0 and self._trigger & self.IRQ_FALLING) or (v == 1 and self._trigger & self.IRQ_RISING):
                    self._irq(self)


class _Spi:
    """The SPI bus as the chip sees it (mode 1, full duplex)."""

    def __init__(self, chip: "EmulatedADC") -> None:
        self._chip = chip

    def write_readinto(self, write_buf, read_buf) -> None:
        if len(write_buf) != len(read_buf):
            raise ValueError("write_readinto buffers differ in length")
        read_buf[:] = self._chip._transfer(bytes(write_buf))

    def write(self, buf) -> None:
        self._chip._transfer(bytes(buf))

    def readinto(self, buf, write: int = 0) -> None:
        buf[:] = self._chip._transfer(bytes([write]) * len(buf))

    def read(self, n: int, write: int = 0) -> bytes:
        return self._chip._transfer(bytes([write]) * n)


class EmulatedADC:
    """An ADS131M0x on an emulated SPI bus.

    ``spi``, ``cs`` and ``drdy`` are what the driver receives.  ``set_inputs(volts)`` sets the
    differential input voltage of each channel for the next conversion; ``convert()`` runs one
    conversion now and returns the codes the chip will answer with.
    """

    def __init__(self, channels: int = 4, clkin_hz: int = 8_192_000) -> None:
        if channels not in CHANNEL_COUNTS:
            raise ValueError(f"ADS131M0x has {CHANNEL_COUNTS} channels, not {channels}")
        self.channels = channels
        self.clkin_hz = clkin_hz
        self.spi = _Spi(self)
        self.cs = EmulatedPin(1, self._cs_changed)
        self.drdy = EmulatedPin(1)
        self.frames = 0
        self.commands_rejected = 0     # input CRC mismatches
        self.missed_reads = 0          # conversions overwritten before a frame read them
        self.corrupt_next = 0          # test hook: XOR this into the next output frame's first data byte
        self._inputs = [0.0] * channels
        self._in_frame = False
        self._reset()

    # ------------------------------------------------------------ chip state
    def _reset(self) -> None:
        r = [0] * N_REGS
        r[ID] = 0x2000 | (self.channels << 8)
        r[MODE] = 0x0510
        r[CLOCK] = (((1 << self.channels) - 1) << 8) | (3 << 2) | 2
        r[CFG] = 0x0600
        for ch in range(self.channels):
            r[CH0_CFG + 5 * ch + 3] = 0x8000       # GCAL_MSB: gain 1.0
        self.regs = r
        self._locked = False
        self._standby = False
        self._crc_err = False
        self._drdy_bits = 0
        self._codes = [0] * self.channels
        self._pending: list[int] = []    # words of the next frame's response (empty: STATUS)
        self._out = b""
        self._pos = 0
        self._rx = bytearray()
        self._data_end = 0
        self.drdy.set(1)

    @property
    def word_bytes(self) -> int:
        return (2, 3, 4, 4)[(self.regs[MODE] >> 8) & 3]

    @property
    def status(self) -> int:
        m = self.regs[MODE]
        return ((0x8000 if self._locked else 0) | (0x1000 if self._crc_err else 0) | (m & 0x0800) |
                (m & 0x0400) | (m & 0x0300) | self._drdy_bits)

    @property
    def osr(self) -> int:
        return OSR_TABLE[(self.regs[CLOCK] >> 2) & 7]

    @property
    def rate_mhz(self) -> int:
        """Output data rate in millihertz (rounded down)."""
        return self.clkin_hz * 1000 // (2 * self.osr)

    def gain(self, ch: int) -> int:
        reg = self.regs[GAIN1] if ch < 4 else self.regs[GAIN2]
        return GAINS[(reg >> (4 * (ch % 4))) & 7]

    def full_scale_volts(self, ch: int) -> float:
        return VREF / self.gain(ch)

    # ------------------------------------------------------------ analog side
    def set_inputs(self, volts) -> None:
        if len(volts) != self.channels:
            raise ValueError(f"{len(volts)} input voltages for {self.channels} channels")
        self._inputs = [float(v) for v in volts]

    def convert(self) -> list[int]:
        """One conversion of every channel now; asserts DRDY; returns the codes it will answer with."""
        if self._standby:
            return list(self._codes)
        enables = self.regs[CLOCK] >> 8
        codes = []
        for ch, v in enumerate(self._inputs):
            if not (enables >> ch) & 1:
                codes.append(0)
                continue
            base = CH0_CFG + 5 * ch
            x = v / VREF * self.gain(ch) * 8_388_608
            code = math.floor(x + 0.5) if math.isfinite(x) else (CODE_MAX if x > 0 else CODE_MIN)
            ocal = (self.regs[base + 1] << 8) | (self.regs[base + 2] >> 8)
            if ocal & 0x800000:
                ocal -= 0x1000000
            gcal = (self.regs[base + 3] << 8) | (self.regs[base + 4] >> 8)
            code = ((code - ocal) * gcal) >> 23 if (ocal or gcal != 0x800000) else code
            codes.append(max(CODE_MIN, min(CODE_MAX, code)))
        if self._drdy_bits:
            self.missed_reads += 1
        self._codes = codes
        self._drdy_bits = (1 << self.channels) - 1
        if self.drdy.value() == 0:
            # Unread data: the chip pulses DRDY high briefly so that an edge is seen again.
            self.drdy.set(1)
        self.drdy.set(0)
        return list(codes)

    # ------------------------------------------------------------ digital side
    def _cs_changed(self, v: int) -> None:
        if v == 0:
            self._begin_frame()
        else:
            self._end_frame()

    def _word(self, value16: int) -> bytes:
        return (value16 << (8 * (self.word_bytes - 2))).to_bytes(self.word_bytes, "big")

    def _data_word(self, code: int) -> bytes:
        wb = self.word_bytes
        wl = (self.regs[MODE] >> 8) & 3
        if wl == 0:
            return ((code >> 8) & 0xFFFF).to_bytes(2, "big")
        if wl == 1:
            return (code & 0xFFFFFF).to_bytes(3, "big")
        if wl == 2:
            return ((code & 0xFFFFFF) << 8).to_bytes(4, "big")
        return (code & 0xFFFFFFFF).to_bytes(wb, "big")

    def _begin_frame(self) -> None:
        self._in_frame = True
        if self._pending:
            words = [self._word(w) for w in self._pending]
            multi = len(self._pending) > 1
        else:
            words = [self._word(self.status)]
            multi = False
        self._pending = []
        if not multi:
            words += [self._data_word(c) for c in self._codes]
        clean = b"".join(words)
        # The CRC covers what the chip meant to send, so a byte corrupted on the bus (test hook
        # corrupt_next) shows up as a CRC mismatch at the driver.
        crc = _crc(clean, bool(self.regs[MODE] & 0x0800))
        body = bytearray(clean)
        if self.corrupt_next and len(body) > self.word_bytes:
            body[self.word_bytes] ^= self.corrupt_next
            self.corrupt_next = 0
        self._out = bytes(body) + self._word(crc)
        self._data_end = len(words[0]) if not multi else 0
        self._pos = 0
        self._rx = bytearray()

    def _transfer(self, data: bytes) -> bytes:
        if not self._in_frame:
            # Clocks without /CS low: the chip's DOUT is high impedance and DIN is ignored.
            return b"\xff" * len(data)
        out = self._out[self._pos:self._pos + len(data)]
        out += bytes(len(data) - len(out))
        self._pos += len(data)
        self._rx += data
        return out

    def _end_frame(self) -> None:
        self._in_frame = False
        self.frames += 1
        if self._data_end and self._pos > self._data_end:
            # The frame clocked out the conversion data: DRDY releases.
            self._drdy_bits = 0
            self.drdy.set(1)
        self._execute(bytes(self._rx))

    def _execute(self, rx: bytes) -> None:
        wb = self.word_bytes
        if len(rx) < wb:
            return
        words = [int.from_bytes(rx[i:i + 2], "big") for i in range(0, len(rx) - wb + 1, wb)]
        cmd = words[0]
        nargs = 0
        if cmd & 0xE000 == 0x6000:
            nargs = (cmd & 0x7F) + 1
        if self.regs[MODE] & 0x1000:
            if len(words) < 2 + nargs:
                self._crc_err = True
                self.commands_rejected += 1
                return
            end = (1 + nargs) * wb
            got = words[1 + nargs]
            if _crc(rx[:end], bool(self.regs[MODE] & 0x0800)) != got:
                self._crc_err = True
                self.commands_rejected += 1
                return
        if self._locked and cmd not in (0x0000, 0x0655) and cmd & 0xE000 != 0xA000:
            return
        if cmd == 0x0000:
            return
        if cmd == 0x0011:
            self._reset()
            self._pending = [0xFF20 | self.channels]
        elif cmd == 0x0022:
            self._standby = True
            self._pending = [cmd]
        elif cmd == 0x0033:
            self._standby = False
            self._pending = [cmd]
        elif cmd == 0x0555:
            self._locked = True
            self._pending = [cmd]
        elif cmd == 0x0655:
            self._locked = False
            self._pending = [cmd]
        elif cmd & 0xE000 == 0xA000:
            addr = (cmd >> 7) & 0x3F
            n = (cmd & 0x7F) + 1
            regs = [self.regs[a] if a < N_REGS else 0 for a in range(addr, addr + n)]
            if addr == STATUS and n >= 1:
                regs[0] = self.status
            self._pending = regs if n == 1 else [0xE000 | (addr << 7) | (n - 1)] + regs
            if addr <= STATUS < addr + n:
                self._crc_err = False           # reading STATUS clears CRC_ERR
        elif cmd & 0xE000 == 0x6000:
            addr = (cmd >> 7) & 0x3F
            if len(words) < 1 + nargs:
                return
            written = 0
            for i in range(nargs):
                a = addr + i
                if a in (ID, STATUS) or a >= N_REGS:
                    continue
                self.regs[a] = words[1 + i]
                written += 1
            self._pending = [0x4000 | (addr << 7) | (max(nargs, 1) - 1)]
