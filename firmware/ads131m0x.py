# Driver for the Texas Instruments ADS131M0x family (ADS131M02/03/04/06/08): 24-bit delta-sigma
# ADCs with one modulator per channel, so all channels sample simultaneously -- what a
# three-component seismometer or a small infrasound/hydroacoustic array element needs.
#
# Written from the data sheet (SBAS890/SBAS912, ADS131M04 "24-bit, 4-channel, simultaneously
# sampling delta-sigma ADC"):
#   * SPI mode 1, frames delimited by /CS, every frame a sequence of words of WLENGTH bits
#     (16, 24 (reset default), 32 zero-padded or 32 sign-extended).
#   * Input frame:  command word | argument words (WREG) | input CRC word (when MODE.RX_CRC_EN) | 0...
#     Output frame: response word (to the PREVIOUS frame's command) | one data word per channel |
#     output CRC word.  The response to NULL is the STATUS register.
#   * Commands and responses are 16 bits, MSB-aligned in the word, zero padded.
#   * CRC: 16-bit, seed 0xFFFF, CCITT polynomial 0x1021 (MODE.CRC_TYPE = 0) or ANSI 0x8005 (= 1),
#     MSB first, over every byte of the words that precede the CRC word.
#   * Data rate = f_CLKIN / 2 / OSR with OSR in {128, 256, ..., 8192, 16256} (CLOCK.OSR).
#   * Codes are two's complement; full scale +-1.2 V / gain; the output clips at 0x7FFFFF / 0x800000.
#
# Owns: the register protocol, configuration (rate -> OSR, gains, word length, CRC), reading one
# conversion of all channels with CRC check and sign extension.  Does not own the bus objects: spi,
# cs and drdy are machine.SPI / machine.Pin on the board and hil/adc_emu.py objects in the HIL.

import binascii

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):  # type: ignore[misc]  # CPython shim; the stub's const is a generic
        return x

CMD_NULL = const(0x0000)
CMD_RESET = const(0x0011)
CMD_STANDBY = const(0x0022)
CMD_WAKEUP = const(0x0033)
CMD_LOCK = const(0x0555)
CMD_UNLOCK = const(0x0655)
CMD_RREG = const(0xA000)   # 101a aaaa annn nnnn: read n+1 registers from address a
CMD_WREG = const(0x6000)   # 011a aaaa annn nnnn: write n+1 registers from address a
RSP_RESET = const(0xFF20)  # | channel count
RSP_WREG = const(0x4000)   # 010a aaaa ammm mmmm: m+1 registers written
RSP_RREG = const(0xE000)   # 111a aaaa annn nnnn: header of a multi-register read

REG_ID = const(0x00)
REG_STATUS = const(0x01)
REG_MODE = const(0x02)
REG_CLOCK = const(0x03)
REG_GAIN1 = const(0x04)    # PGAGAIN3..0, 3 bits each at bits 14:12, 10:8, 6:4, 2:0
REG_GAIN2 = const(0x05)    # PGAGAIN7..4 (M06/M08)
REG_CFG = const(0x06)
REG_CH0_CFG = const(0x09)  # then 5 registers per channel (CFG, OCAL_MSB/LSB, GCAL_MSB/LSB)
REG_REGMAP_CRC = const(0x3E)

# STATUS
ST_LOCK = const(0x8000)
ST_F_RESYNC = const(0x4000)
ST_REG_MAP = const(0x2000)
ST_CRC_ERR = const(0x1000)
ST_CRC_TYPE = const(0x0800)
ST_RESET = const(0x0400)
# MODE
MODE_REG_CRC_EN = const(0x2000)
MODE_RX_CRC_EN = const(0x1000)
MODE_CRC_TYPE = const(0x0800)
MODE_RESET = const(0x0400)
MODE_WLENGTH_SHIFT = const(8)
MODE_TIMEOUT = const(0x0010)
MODE_RESET_VALUE = const(0x0510)
WLEN_16 = const(0)
WLEN_24 = const(1)
WLEN_32_ZERO = const(2)
WLEN_32_SIGN = const(3)
# CLOCK
CLOCK_OSR_SHIFT = const(2)
PWR_VLP = const(0)
PWR_LP = const(1)
PWR_HR = const(2)

OSR_TABLE = (128, 256, 512, 1024, 2048, 4096, 8192, 16256)
GAINS = (1, 2, 4, 8, 16, 32, 64, 128)
VREF = 1.2
FULL_SCALE = const(0x7FFFFF)


class AdcError(OSError):
    """The ADC did not answer as the data sheet says (wrong response, CRC mismatch, no device)."""


class AdcCrcError(AdcError):
    pass


# CRC-16/CCITT, seed 0xFFFF, not reflected (what binascii.crc_hqx computes on CPython).  MicroPython's
# binascii has no crc_hqx, so the board uses a 256-entry table built once at import.
def _make_table(poly):
    t = []
    for i in range(256):
        c = i << 8
        for _ in range(8):
            c = ((c << 1) ^ poly) if c & 0x8000 else (c << 1)
        t.append(c & 0xFFFF)
    return tuple(t)


_TABLE_CCITT = _make_table(0x1021)
_TABLE_ANSI = _make_table(0x8005)


def crc16(data, ansi=False, crc=0xFFFF):
    table = _TABLE_ANSI if ansi else _TABLE_CCITT
    for b in data:
        crc = ((crc << 8) & 0xFFFF) ^ table[(crc >> 8) ^ b]
    return crc


try:
    _crc_hqx = binascii.crc_hqx  # type: ignore[attr-defined]  # CPython only, AttributeError on the board
except AttributeError:  # MicroPython
    _crc_hqx = None


def crc_ccitt(data):
    if _crc_hqx is not None:
        return _crc_hqx(data, 0xFFFF)
    return crc16(data)


def rate_settings(clkin_hz, rate_mhz):
    """OSR giving exactly *rate_mhz* (millihertz) from *clkin_hz*, or None."""
    for osr in OSR_TABLE:
        if clkin_hz * 1000 == rate_mhz * 2 * osr:
            return osr
    return None


def rates_mhz(clkin_hz):
    """Every output rate (mHz) the part produces exactly from *clkin_hz*."""
    out = []
    for osr in OSR_TABLE:
        if (clkin_hz * 1000) % (2 * osr) == 0:
            out.append(clkin_hz * 1000 // (2 * osr))
    return out


def power_mode(clkin_hz):
    # Nominal CLKIN per power mode: 8.192 MHz high resolution, 4.096 MHz low power, 2.048 MHz very
    # low power.  Pick the lowest power mode whose nominal clock is at least CLKIN.
    if clkin_hz > 4096000:
        return PWR_HR
    if clkin_hz > 2048000:
        return PWR_LP
    return PWR_VLP


class ADS131M0x:
    """One ADS131M0x on an SPI bus.

    spi: has write_readinto(tx, rx) (machine.SPI, mode 1); cs: Pin, active low; drdy: Pin, active
    low (the caller attaches the IRQ).  gains: PGA gain per channel (1..128).
    """

    def __init__(self, spi, cs, drdy, gains, channels=None, clkin_hz=8192000, word_bits=24,
                 input_crc=True):
        self.spi = spi
        self.cs = cs
        self.drdy = drdy
        self.channels = channels if channels is not None else len(gains)
        if self.channels not in (1, 2, 3, 4, 6, 8):
            raise ValueError("ADS131M0x has 1, 2, 3, 4, 6 or 8 channels, not %d" % self.channels)
        if len(gains) > self.channels:
            raise ValueError("%d gains for %d channels" % (len(gains), self.channels))
        for g in gains:
            if g not in GAINS:
                raise ValueError("PGA gain %r not one of %r" % (g, GAINS))
        self.gains = list(gains) + [1] * (self.channels - len(gains))
        if word_bits not in (24, 32):
            raise ValueError("word_bits must be 24 or 32")
        self.wb = word_bits // 8
        self.clkin_hz = clkin_hz
        self.input_crc = input_crc
        self.full_scale = FULL_SCALE
        self.rate_mhz = 0
        self.osr = 0
        self.status = 0
        self.crc_errors = 0
        self.frames = 0
        # Words per frame: response/command + channels + CRC.  Buffers are allocated once.
        self._nwords = self.channels + 2
        self._tx = bytearray(self._nwords * self.wb)
        self._rx = bytearray(self._nwords * self.wb)
        self._null = self._frame_bytes(CMD_NULL, ())
        # After reset the device speaks 24-bit words; _wb_dev tracks what it speaks now.
        self._wb_dev = 3

    # ------------------------------------------------------------ frames
    def _frame_bytes(self, cmd, args, wb=None):
        wb = wb or self.wb
        words = [cmd] + list(args)
        n = max(self._nwords, len(words) + 1)
        buf = bytearray(n * wb)
        for i, w in enumerate(words):
            buf[i * wb] = w >> 8
            buf[i * wb + 1] = w & 0xFF
        if self.input_crc:
            end = len(words) * wb
            c = crc_ccitt(buf[:end])
            buf[end] = c >> 8
            buf[end + 1] = c & 0xFF
        return buf

    def _xfer(self, tx):
        rx = bytearray(len(tx))
        self.cs.value(0)
        try:
            self.spi.write_readinto(tx, rx)
        finally:
            self.cs.value(1)
        return rx

    def _check_crc(self, rx, wb, nwords):
        end = (nwords - 1) * wb
        got = (rx[end] << 8) | rx[end + 1]
        if crc_ccitt(rx[:end]) != got:
            self.crc_errors += 1
            raise AdcCrcError("ADS131M0x output CRC mismatch")

    def command(self, cmd, args=(), wb_after=None):
        """Send one command frame and return (response word, frame) of the FOLLOWING frame (a NULL
        frame): the device answers one frame late.  *wb_after*: word size (bytes) the device speaks
        after this command (a MODE write changes it from the next frame on)."""
        self._xfer(self._frame_bytes(cmd, args, self._wb_dev))
        if wb_after:
            self._wb_dev = wb_after
        wb = self._wb_dev
        rx = self._xfer(self._frame_bytes(CMD_NULL, (), wb))
        self._check_crc(rx, wb, self._nwords)
        return (rx[0] << 8) | rx[1], rx

    def read_register(self, addr):
        rsp, _ = self.command(CMD_RREG | (addr << 7))
        return rsp

    def write_register(self, addr, value):
        wb_after = None
        if addr == REG_MODE:
            wl = (value >> MODE_WLENGTH_SHIFT) & 3
            wb_after = 2 if wl == WLEN_16 else (3 if wl == WLEN_24 else 4)
        rsp, _ = self.command(CMD_WREG | (addr << 7), (value,), wb_after)
        if rsp != (RSP_WREG | (addr << 7)):
            raise AdcError("WREG 0x%02x: response 0x%04x" % (addr, rsp))
        back = self.read_register(addr)
        if back != value:
            raise AdcError("register 0x%02x reads back 0x%04x, wrote 0x%04x" % (addr, back, value))
        return back

    # ------------------------------------------------------------ setup
    def reset(self):
        self._wb_dev = 3
        rsp, _ = self.command(CMD_RESET)
        want = RSP_RESET | self.channels
        if rsp != want:
            raise AdcError("RESET answered 0x%04x, expected 0x%04x (no ADS131M0%d on the bus?)" % (
                rsp, want, self.channels))
        ident = self.read_register(REG_ID)
        if (ident >> 8) & 0x0F != self.channels:
            raise AdcError("ID register 0x%04x: channel count is not %d" % (ident, self.channels))
        return ident

    def configure(self, rate_mhz):
        """Reset and set up the part for *rate_mhz* (millihertz); returns the OSR used."""
        osr = rate_settings(self.clkin_hz, rate_mhz)
        if osr is None:
            raise ValueError("%d mHz is not f_CLKIN/2/OSR for f_CLKIN = %d Hz" % (rate_mhz, self.clkin_hz))
        self.reset()
        mode = (MODE_RESET_VALUE & ~MODE_RESET & ~(3 << MODE_WLENGTH_SHIFT)) | \
            ((WLEN_24 if self.wb == 3 else WLEN_32_SIGN) << MODE_WLENGTH_SHIFT)
        if self.input_crc:
            mode |= MODE_RX_CRC_EN
        self.write_register(REG_MODE, mode)
        g1 = 0
        g2 = 0
        for ch in range(self.channels):
            code = GAINS.index(self.gains[ch])
            if ch < 4:
                g1 |= code << (4 * ch)
            else:
                g2 |= code << (4 * (ch - 4))
        self.write_register(REG_GAIN1, g1)
        if self.channels > 4:
            self.write_register(REG_GAIN2, g2)
        enables = ((1 << self.channels) - 1) << 8
        self.write_register(REG_CLOCK, enables | (OSR_TABLE.index(osr) << CLOCK_OSR_SHIFT) |
                            power_mode(self.clkin_hz))
        self.osr = osr
        self.rate_mhz = rate_mhz
        self._null = self._frame_bytes(CMD_NULL, ())
        return osr

    # ------------------------------------------------------------ data
    def ready(self):
        return self.drdy.value() == 0

    def read(self):
        """One conversion of every channel: list of signed codes.  Raises AdcCrcError when the
        output CRC does not match (the caller drops that sample and flags S_ADC_FAULT)."""
        tx = self._null
        rx = self._rx
        self.cs.value(0)
        self.spi.write_readinto(tx, rx)
        self.cs.value(1)
        self.frames += 1
        wb = self.wb
        nw = self._nwords
        end = (nw - 1) * wb
        got = (rx[end] << 8) | rx[end + 1]
        if crc_ccitt(rx[:end]) != got:
            self.crc_errors += 1
            raise AdcCrcError("ADS131M0x output CRC mismatch")
        self.status = (rx[0] << 8) | rx[1]
        out = []
        o = wb
        if wb == 3:
            for _ in range(self.channels):
                v = (rx[o] << 16) | (rx[o + 1] << 8) | rx[o + 2]
                if v & 0x800000:
                    v -= 0x1000000
                out.append(v)
                o += 3
        else:
            for _ in range(self.channels):
                v = (rx[o] << 24) | (rx[o + 1] << 16) | (rx[o + 2] << 8) | rx[o + 3]
                if v & 0x80000000:
                    v -= 0x100000000
                out.append(v)
                o += 4
        return out

    def counts_per_volt(self, ch):
        return (FULL_SCALE + 1) * self.gains[ch] / VREF
