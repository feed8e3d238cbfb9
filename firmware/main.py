# Board entry point (copied to the board as /main.py; the package lives in /lib/imsfw).
#
# Owns: building the real peripherals (machine.UART / SPI / Pin / ADC / PWM) from the frozen board
# definition (board_config.py, written by ims_station.boards.freeze()), the key and boot counter
# files, the interrupt wiring (DRDY and PPS edges captured with ticks_us() in hard IRQs, the work
# deferred with micropython.schedule), the GNSS UART, the watchdog, and the main loop.
# Everything else is in the imsfw package, which the tests and the HIL run on CPython.
# This file is compiled by mpy-cross in the tests but never executed there (no machine module).

import gc
import time
import machine
import micropython
from board_config import BOARD
from imsfw import ads131m0x, digitizer, gnss, timebase

KEY_FILE = "/key.bin"        # per-board HMAC key, written once with mpremote at provisioning
EPOCH_FILE = "/epoch"        # boot counter: the link sequence restarts when it changes

micropython.alloc_emergency_exception_buf(128)


def read_key():
    with open(KEY_FILE, "rb") as f:
        key = f.read()
    if len(key) < 16:
        raise ValueError("key file too short")
    return key


def next_epoch():
    try:
        with open(EPOCH_FILE) as f:
            epoch = int(f.read()) + 1
    except (OSError, ValueError):
        epoch = 1
    epoch &= 0xFFFF
    with open(EPOCH_FILE, "w") as f:
        f.write(str(epoch))
    return epoch


class Calibrator:
    """Square-wave calibration signal on the board's cal_enable pin (PWM)."""

    def __init__(self, pin_no):
        self.pin = machine.Pin(pin_no, machine.Pin.OUT, value=0)
        self.pwm = None

    def start(self, period_ms, mask):
        self.pwm = machine.PWM(self.pin, freq=max(1, 1000 // period_ms), duty_u16=32768)

    def stop(self):
        if self.pwm is not None:
            self.pwm.deinit()
            self.pwm = None
        self.pin.value(0)


def main():
    b = BOARD
    u = b["uart"]
    s = b["spi"]
    a = b["adc"]
    p = b["pins"]
    uart = machine.UART(u["id"], baudrate=u["baud"], tx=machine.Pin(u["tx"]), rx=machine.Pin(u["rx"]),
                        timeout=0, txbuf=4096, rxbuf=1024)
    spi = machine.SPI(s["id"], baudrate=s["baud"], polarity=0, phase=1, bits=8,
                      sck=machine.Pin(s["sck"]), mosi=machine.Pin(s["mosi"]), miso=machine.Pin(s["miso"]))
    cs = machine.Pin(a["cs"], machine.Pin.OUT, value=1)
    drdy = machine.Pin(a["drdy"], machine.Pin.IN, machine.Pin.PULL_UP)
    adc = ads131m0x.ADS131M0x(spi, cs, drdy, [c["gain"] for c in b["channels"]], channels=a["inputs"],
                              clkin_hz=a["clkin_hz"], word_bits=a["word_bits"], input_crc=a["input_crc"])
    tb = timebase.Timebase(time.ticks_us, holdover_s=b["timing"]["holdover_s"], ticks_diff=time.ticks_diff)
    tamper = machine.Pin(p["tamper"], machine.Pin.IN)
    supply = machine.ADC(machine.Pin(p["supply_adc"])) if "supply_adc" in p else None
    cal = Calibrator(p["cal_enable"]) if b["calibration"]["enabled"] and "cal_enable" in p else None
    dig = digitizer.Digitizer(b, uart, adc, tb, read_key(), epoch=next_epoch(), tamper=tamper,
                              supply=supply, calibrator=cal, reboot=machine.reset)

    # Hard IRQs only capture the tick count; the work runs as a scheduled (soft) callback.
    on_drdy = dig.on_drdy
    on_pps = tb.on_pps

    def drdy_irq(_pin):
        micropython.schedule(on_drdy, time.ticks_us())

    def pps_irq(_pin):
        micropython.schedule(on_pps, time.ticks_us())

    drdy.irq(drdy_irq, machine.Pin.IRQ_FALLING, hard=True)
    machine.Pin(p["pps"], machine.Pin.IN).irq(pps_irq, machine.Pin.IRQ_RISING, hard=True)

    gnss_uart = None
    if "gnss_uart" in b:
        g = b["gnss_uart"]
        gnss_uart = machine.UART(g["id"], baudrate=g["baud"], rx=machine.Pin(g["rx"]), timeout=0)
    line = bytearray()
    wdt = machine.WDT(timeout=8000)
    while True:
        dig.poll()
        if gnss_uart is not None and gnss_uart.any():
            for ch in gnss_uart.read(gnss_uart.any()):  # type: ignore[union-attr]  # any() > 0: not None
                if ch == 10:
                    utc = gnss.parse_rmc(bytes(line))
                    if utc is not None:
                        tb.on_gnss_time(utc)
                    line = bytearray()
                elif len(line) < 100:
                    line.append(ch)
        wdt.feed()
        if gc.mem_free() < 32768:
            gc.collect()
        time.sleep_ms(5)


main()
