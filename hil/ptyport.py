"""Cross-process transport of the HIL: the simulated board behind a pseudo-terminal, in real time.

Owns: :class:`PtyBridge` -- creates a pty pair, keeps the master end, and moves bytes between it and
a :class:`~ims_station.hil.sim.Simulation` advanced against the wall clock (``speed`` simulated
seconds per wall second; 1.0 = real time).  Another process (``ims-station edge run``, minicom,
pyserial) opens the slave path like any serial device; the line's baud-rate pacing and faults are the
simulation's, since a pty itself has no baud rate.

Also owns :class:`PtyLink`, the stable name of the pty (``hil run --link /run/ims/board1``): the
slave's ``/dev/pts/N`` changes with every run, a station file's ``[[ports]] url`` should not.

Does not own the simulation or the in-process ``sim://`` transport (``hil/protocol_sim.py``).
"""

from __future__ import annotations

import os
import select
import time
import tty
from pathlib import Path

from .sim import NS, SimError, Simulation


class PtyBridge:
    def __init__(self, sim: Simulation, speed: float = 1.0, step_s: float = 0.005) -> None:
        if speed <= 0:
            raise ValueError("speed must be > 0")
        self.sim = sim
        self.speed = float(speed)
        self.step_s = float(step_s)
        self.master, self._slave = os.openpty()
        # Raw mode on both ends: no echo, no CR/LF translation, 0x00 passes (COBS delimiters).
        tty.setraw(self._slave)
        tty.setraw(self.master)
        self.path = os.ttyname(self._slave)
        os.set_blocking(self.master, False)
        self.bytes_out = 0
        self.bytes_in = 0
        self._t0: float | None = None

    def step(self) -> None:
        """Advance the simulation to the wall-clock target and move the bytes (one cycle)."""
        if self._t0 is None:
            self._t0 = time.monotonic() - self.sim.clock.now_ns / NS / self.speed
        target = int((time.monotonic() - self._t0) * self.speed * NS)
        if target > self.sim.clock.now_ns:
            self.sim.run_until(target)
        out = self.sim.down.take()
        while out:
            try:
                n = os.write(self.master, out)
            except BlockingIOError:
                # Nobody reads the slave and the pty buffer is full: like a serial line with no
                # listener, the bytes are lost.
                break
            self.bytes_out += n
            out = out[n:]
        r, _, _ = select.select([self.master], [], [], self.step_s)
        if r:
            try:
                data = os.read(self.master, 4096)
            except (BlockingIOError, OSError):
                data = b""
            if data:
                self.bytes_in += len(data)
                self.sim.edge_write(data)

    def run(self, seconds: float | None = None, stop=None) -> None:
        """Loop until *seconds* of simulated time have passed or ``stop.is_set()``."""
        end_ns = None if seconds is None else self.sim.clock.now_ns + int(seconds * NS)
        while (end_ns is None or self.sim.clock.now_ns < end_ns) and not (stop is not None and stop.is_set()):
            self.step()

    def close(self) -> None:
        for fd in (self.master, self._slave):
            try:
                os.close(fd)
            except OSError:
                pass


class PtyLink:
    """A symbolic link *path* -> the pty slave *target*, made atomically (a temporary link renamed
    over it).  A link left by a run that was killed (its pty gone) is replaced; a link to a pty that
    still exists (another ``hil run``?) or anything that is not a link is refused.  :meth:`remove`
    deletes it if it still points at *target*."""

    def __init__(self, path: str | os.PathLike[str], target: str) -> None:
        self.path = Path(path)
        self.target = target
        if self.path.is_symlink():
            old = os.readlink(self.path)
            if os.path.exists(self.path):
                raise SimError(f"--link {self.path} already points at {old}, which exists (another hil run?): "
                               "stop it or choose another path")
        elif self.path.exists():
            raise SimError(f"--link {self.path} exists and is not a symbolic link: choose another path")
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if tmp.is_symlink():
                tmp.unlink()
            os.symlink(target, tmp)
            os.replace(tmp, self.path)
        except OSError as err:
            raise SimError(f"--link {self.path}: cannot create the link: {err.strerror}") from err

    def remove(self) -> None:
        try:
            if os.readlink(self.path) == self.target:
                self.path.unlink()
        except OSError:
            pass
