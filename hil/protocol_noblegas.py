"""pyserial URL handler for ``noblegas://``: the noble-gas detector emulator as a serial port, in process.

Registered like ``sim://`` (``ims_station.hil`` in ``serial.protocol_handler_packages``; the edge's
``open_port`` does it), so a driver reaches the emulator through ``serial.serial_for_url`` exactly
as it reaches ``/dev/ttyUSB0``.

Owns: URL parsing and the port surface.  Time is the emulator's :class:`ManualClock`: bytes take
their line time (10 bits per byte at the port's baud rate) in both directions, and a ``read()``
that finds too few bytes advances the clock by the port's timeout -- a driver waiting for a reply
that never comes spends simulated seconds, not wall seconds.  Does not own the emulator
(``hil/noblegas/device.py``).

URL forms:

* ``noblegas://NAME`` -- attach to the emulator registered under NAME
  (``ims_station.hil.noblegas.device.register``);
* ``noblegas://det?mode=bg&seed=7&conc=XE-133:1.5&conc=RN-222:50&garble=0.01&checksum=0.01&timeout=0.01&hv_drop=3600:600``
  -- build one: ``mode`` (``bg`` β-γ, ``hpge`` gamma only), ``seed``, ``conc`` (NUCLIDE:mBq/m³,
  repeatable), the reply-fault rates ``garble``, ``checksum``, ``timeout``, ``late``, the fault windows
  ``disappear``, ``hv_drop``, ``flow_fail``, ``power_fail``, ``temp_high`` (START:SECONDS,
  repeatable), and the cycle ``collection``, ``processing``, ``gasbk``, ``acquisition``, ``qc``, ``calib`` (seconds).
"""

from __future__ import annotations

import urllib.parse

from serial.serialutil import PortNotOpenError, SerialException

from .faults import FaultSpecError
from .noblegas.faults import RATE_KINDS, WINDOW_KINDS
from .virtualport import VirtualSerialBase

_CYCLE = {"collection": "collection_s", "processing": "processing_s", "gasbk": "gasbk_s",
          "acquisition": "acquisition_s", "qc": "qc_s", "calib": "calib_s"}


def parse_url(url: str) -> tuple[str, dict]:
    """Split a ``noblegas://`` URL into (name, keyword arguments of the detector)."""
    from .noblegas.device import parse_concentration
    from .noblegas.faults import NobleGasFaults

    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "noblegas":
        raise SerialException(f"expected a noblegas:// URL, got {url!r}")
    name = parts.netloc or parts.path.lstrip("/") or "noblegas"
    kw: dict = {}
    faults = NobleGasFaults()
    conc: dict[str, float] = {}
    cycle: dict[str, float] = {}
    for key, values in urllib.parse.parse_qs(parts.query, keep_blank_values=True).items():
        for v in values:
            try:
                if key == "mode":
                    if v not in ("bg", "hpge"):
                        raise ValueError("mode must be bg or hpge")
                    kw["mode"] = v
                elif key == "seed":
                    kw["seed"] = int(v)
                elif key == "conc":
                    n, c = parse_concentration(v)
                    conc[n] = c
                elif key in RATE_KINDS:
                    setattr(faults, key, float(v))
                elif key in WINDOW_KINDS:
                    faults.add(key, v)
                elif key in _CYCLE:
                    cycle[_CYCLE[key]] = float(v)
                else:
                    raise ValueError("unknown parameter")
            except (ValueError, FaultSpecError) as err:
                raise SerialException(f"noblegas:// URL: parameter {key}={v!r}: {err}") from None
    try:
        faults.__post_init__()
        if cycle:
            from .noblegas.process import CycleConfig
            kw["cycle"] = CycleConfig(**cycle)
    except (ValueError, FaultSpecError) as err:
        raise SerialException(f"noblegas:// URL: {err}") from None
    kw["faults"] = faults
    if conc:
        kw["concentrations"] = conc
    return name, kw


class Serial(VirtualSerialBase):
    """A serial port whose other end is the noble-gas detector emulator."""

    def __init__(self, *args, **kwargs) -> None:
        self.device = None
        self._rx = bytearray()
        super().__init__(*args, **kwargs)

    def open(self) -> None:
        if self.is_open:
            raise SerialException("Port is already open.")
        if self._port is None:
            raise SerialException("Port must be configured before it can be used.")
        from .noblegas import device as dev

        name, kw = parse_url(self.portstr)
        self.device = dev.lookup(name)
        if self.device is None:
            self.device = dev.NobleGasDetector(clock=dev.ManualClock(), **kw)
        self._rx.clear()
        self.is_open = True

    def close(self) -> None:
        self.is_open = False

    def _reconfigure_port(self) -> None:
        pass

    def _byte_s(self) -> float:
        return 10.0 / float(self._baudrate or 9600)

    def _advance(self, seconds: float) -> None:
        adv = getattr(self.device.clock, "advance", None)
        if adv is not None:
            adv(seconds)

    @property
    def in_waiting(self) -> int:
        if not self.is_open:
            raise PortNotOpenError()
        return len(self._rx)

    def write(self, data) -> int:
        if not self.is_open:
            raise PortNotOpenError()
        data = bytes(data)
        self._advance(len(data) * self._byte_s())
        out = self.device.feed(data)
        if out:
            self._advance(len(out) * self._byte_s())
            self._rx += out
        return len(data)

    def read(self, size: int = 1) -> bytes:
        if not self.is_open:
            raise PortNotOpenError()
        self._rx += self.device.take_late()
        if len(self._rx) < size and self._timeout:
            self._advance(self._timeout)       # waited in simulated time for bytes that did not come
            self._rx += self.device.take_late()
        n = min(size, len(self._rx))
        out = bytes(self._rx[:n])
        del self._rx[:n]
        return out

    def read_until(self, expected=b"\n", size=None) -> bytes:
        if not self.is_open:
            raise PortNotOpenError()
        self._rx += self.device.take_late()
        i = self._rx.find(expected)
        if i >= 0 and (size is None or i + len(expected) <= size):
            return self.read(i + len(expected))
        # not there yet: wait (in simulated time) once, then return what came, as pyserial does
        if self._timeout:
            self._advance(self._timeout)
            self._rx += self.device.take_late()
        i = self._rx.find(expected)
        n = i + len(expected) if i >= 0 else len(self._rx)
        if size is not None:
            n = min(n, size)
        out = bytes(self._rx[:n])
        del self._rx[:n]
        return out

    def reset_input_buffer(self) -> None:
        if not self.is_open:
            raise PortNotOpenError()
        self._rx.clear()
        self.device.take_late()            # what has arrived by now is discarded too
