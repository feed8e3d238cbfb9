"""The ADS131M0x driver (firmware/ads131m0x.py) against the register-level emulator
(hil/adc_emu.py): two implementations of the same data sheet checking each other."""

from __future__ import annotations

import binascii

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ims_station.firmware import ads131m0x
from ims_station.hil.adc_emu import EmulatedADC, _crc_ansi

CLK = 1_638_400


def rig(channels=4, gains=None, word_bits=24, input_crc=True):
    emu = EmulatedADC(channels, clkin_hz=CLK)
    drv = ads131m0x.ADS131M0x(emu.spi, emu.cs, emu.drdy, gains or [1] * channels, clkin_hz=CLK,
                              word_bits=word_bits, input_crc=input_crc)
    return emu, drv


@settings(max_examples=60, deadline=None)
@given(channels=st.sampled_from([2, 3, 4, 6, 8]), word_bits=st.sampled_from([24, 32]),
       data=st.data())
def test_driver_reads_what_the_chip_converts(channels, word_bits, data):
    gains = data.draw(st.lists(st.sampled_from(ads131m0x.GAINS), min_size=channels, max_size=channels))
    emu, drv = rig(channels, gains, word_bits)
    drv.configure(200_000)
    assert emu.rate_mhz == 200_000 and [emu.gain(c) for c in range(channels)] == gains
    for _ in range(3):
        volts = data.draw(st.lists(st.floats(-2.0, 2.0), min_size=channels, max_size=channels))
        emu.set_inputs(volts)
        codes = emu.convert()
        assert emu.drdy.value() == 0 and drv.ready()
        assert drv.read() == codes
        assert emu.drdy.value() == 1 and not drv.ready()
        assert drv.status & ((1 << channels) - 1) == (1 << channels) - 1   # DRDY bits in STATUS
        for v, g, c in zip(volts, gains, codes):
            ideal = v / 1.2 * g * 2 ** 23
            if -2 ** 23 <= ideal <= 2 ** 23 - 1:
                assert abs(c - ideal) <= 0.5
            else:
                assert c in (2 ** 23 - 1, -2 ** 23)          # clipped at full scale


def test_quantisation_and_clipping_at_full_scale():
    emu, drv = rig(4, [1, 1, 2, 128])
    drv.configure(100_000)
    lsb = 1.2 / 2 ** 23
    emu.set_inputs([lsb, 1.2, 0.6, -1.2 / 128 * 1.5])
    assert emu.convert() == [1, 0x7FFFFF, 0x7FFFFF, -0x800000]
    assert drv.read() == [1, 0x7FFFFF, 0x7FFFFF, -0x800000]
    assert drv.full_scale == 0x7FFFFF


def test_registers_after_configure():
    emu, drv = rig(4, [1, 2, 4, 8])
    assert drv.configure(100_000) == 8192
    assert emu.regs[ads131m0x.REG_GAIN1] == 0x3210
    assert emu.regs[ads131m0x.REG_CLOCK] == 0x0F00 | (6 << 2) | ads131m0x.PWR_VLP
    assert emu.regs[ads131m0x.REG_MODE] & ads131m0x.MODE_RX_CRC_EN
    assert not emu.regs[ads131m0x.REG_MODE] & ads131m0x.MODE_RESET


def test_output_crc_error_on_the_bus_is_detected():
    emu, drv = rig()
    drv.configure(200_000)
    emu.set_inputs([0.1, 0.2, 0.3, 0.4])
    emu.convert()
    emu.corrupt_next = 0x04
    with pytest.raises(ads131m0x.AdcCrcError):
        drv.read()
    assert drv.crc_errors == 1


def test_input_crc_protects_register_writes():
    emu, drv = rig()
    drv.configure(200_000)
    before = emu.regs[ads131m0x.REG_GAIN1]
    frame = drv._frame_bytes(ads131m0x.CMD_WREG | (ads131m0x.REG_GAIN1 << 7), (0x7777,))
    frame[4] ^= 0x01                                        # damaged on the way to the chip
    drv._xfer(frame)
    assert emu.regs[ads131m0x.REG_GAIN1] == before and emu.commands_rejected == 1
    assert emu.status & ads131m0x.ST_CRC_ERR


def test_reset_and_missing_chip():
    emu, drv = rig()
    assert drv.reset() == 0x2400
    dead = ads131m0x.ADS131M0x(_DeadSpi(), emu.cs, emu.drdy, [1, 1, 1, 1], clkin_hz=CLK)
    with pytest.raises(ads131m0x.AdcError):
        dead.reset()
    with pytest.raises(ValueError):
        drv.configure(123_000)                              # not f_CLKIN / 2 / OSR


class _DeadSpi:
    def write_readinto(self, tx, rx):
        rx[:] = b"\xff" * len(rx)                           # nothing drives MISO: all ones


def test_drdy_irq_fires_on_conversion():
    emu, drv = rig()
    drv.configure(200_000)
    fired = []
    emu.drdy.irq(lambda pin: fired.append(drv.read()), trigger=emu.drdy.IRQ_FALLING)
    emu.set_inputs([0.0, 0.1, -0.1, 0.0])
    codes = emu.convert()
    assert fired == [codes]
    emu.convert()
    emu.convert()                                           # the second conversion was never read
    assert emu.missed_reads == 0 and len(fired) == 3        # each edge was served by the IRQ


def test_emulator_word_lengths_and_crc_types():
    emu = EmulatedADC(4, clkin_hz=CLK)
    for wl, size in ((0, 2), (1, 3), (2, 4), (3, 4)):
        emu.regs[2] = (emu.regs[2] & ~0x0300) | (wl << 8)
        emu.set_inputs([-0.3, 0, 0, 0])
        code = emu.convert()[0]
        emu.cs.value(0)
        rx = emu.spi.read(6 * size)
        emu.cs.value(1)
        word = int.from_bytes(rx[size:2 * size], "big")
        expect = {0: (code >> 8) & 0xFFFF, 1: code & 0xFFFFFF, 2: (code & 0xFFFFFF) << 8,
                  3: code & 0xFFFFFFFF}[wl]
        assert word == expect
        crc = int.from_bytes(rx[5 * size:5 * size + 2], "big")
        assert crc == binascii.crc_hqx(rx[:5 * size], 0xFFFF)
    assert _crc_ansi(b"123456789") == 0xAEE7 == ads131m0x.crc16(b"123456789", ansi=True)


def test_table_crc_matches_binascii():
    data = bytes(range(256)) * 3
    assert ads131m0x.crc16(data) == binascii.crc_hqx(data, 0xFFFF)
