"""The noble-gas detector emulator behind a pseudo-terminal, for another process to open as its
serial port (``ims-station hil noblegas --pty``).

Owns :class:`DetectorPty`: creates a raw pty pair, keeps the master end, feeds every byte the other
process writes to the emulator and writes its replies back.  The emulator runs on an
:class:`~ims_station.hil.noblegas.device.AcceleratedClock` (``speed`` simulated seconds per wall
second), so a 12-hour cycle passes in minutes.  A pty has no baud rate: replies come back as fast as
the emulator makes them.

Does not own the emulator or the ``sim://`` board's pty (``hil/ptyport.py``, whose :class:`PtyLink`
this reuses for a stable path).
"""

from __future__ import annotations

import os
import select
import tty

from .device import NobleGasDetector


class DetectorPty:
    def __init__(self, device: NobleGasDetector, step_s: float = 0.05) -> None:
        self.device = device
        self.step_s = float(step_s)
        self.master, self._slave = os.openpty()
        tty.setraw(self._slave)
        tty.setraw(self.master)
        self.path = os.ttyname(self._slave)
        os.set_blocking(self.master, False)
        self.bytes_in = 0
        self.bytes_out = 0
        self.bytes_lost = 0

    def step(self) -> None:
        """Wait up to ``step_s`` for bytes from the other side; answer them."""
        r, _, _ = select.select([self.master], [], [], self.step_s)
        if not r:
            self.device.poll()
            self._write(self.device.take_late())
            return
        try:
            data = os.read(self.master, 4096)
        except (BlockingIOError, OSError):
            return
        if not data:
            return
        self.bytes_in += len(data)
        self._write(self.device.feed(data))

    def _write(self, out: bytes) -> None:
        while out:
            try:
                n = os.write(self.master, out)
            except BlockingIOError:
                self.bytes_lost += len(out)     # nobody reads the slave: lost, like a serial line
                break
            self.bytes_out += n
            out = out[n:]

    def run(self, seconds: float | None = None, stop=None) -> None:
        """Serve until *seconds* of emulator time have passed or ``stop.is_set()``."""
        end = None if seconds is None else self.device.now() + seconds
        while (end is None or self.device.now() < end) and not (stop is not None and stop.is_set()):
            self.step()

    def close(self) -> None:
        for fd in (self.master, self._slave):
            try:
                os.close(fd)
            except OSError:
                pass
