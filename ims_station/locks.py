"""Exclusive locks that keep two processes off one resource, and say which process holds it.

Owns: :class:`PidLock` -- an exclusive ``flock`` on a lock file, held for the life of the process
(or until :meth:`PidLock.release`), with the holder's PID written into the file; :func:`flock_holders`
-- who holds a ``flock`` on a file or device, read from ``/proc/locks`` (Linux), for locks whose
holder wrote no PID (a serial device opened with pyserial's ``exclusive=True``); and
:class:`ResourceBusyError`, the one-line error naming the other process.

Does not own what is locked: the outbox takes a :class:`PidLock` beside its database
(``edge/outbox.py``), the gateway's serial ports lock the device itself (``edge/serialport.py``).

Why ``flock`` and not a PID file checked with ``kill(pid, 0)``: the kernel drops the lock when the
holder dies (even by SIGKILL or power loss), so there is never a stale lock to clean up and no race
between "is it running?" and "take it".  The PID in the file is only there to name the holder.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from ims_station.errors import ImsStationError


class ResourceBusyError(ImsStationError):
    """Another process holds the lock on *what* (``pid``: that process, None if unknown)."""

    def __init__(self, what: str, pid: int | None, advice: str = "") -> None:
        self.what = what
        self.pid = pid
        holder = describe_process(pid) if pid is not None else "another process"
        super().__init__(f"{what} is in use by {holder}" + (f": {advice}" if advice else ""))


def describe_process(pid: int) -> str:
    """``process 1234 (ims-station edge run --config s.toml)``, or without the command line when
    it cannot be read (another user's process, not Linux)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return f"process {pid}"
    cmd = " ".join(a.decode(errors="replace") for a in raw.split(b"\0") if a)
    if len(cmd) > 160:
        cmd = cmd[:157] + "..."
    return f"process {pid} ({cmd})" if cmd else f"process {pid}"


def flock_holders(path: str | os.PathLike[str]) -> list[int]:
    """PIDs holding a ``flock`` on *path* (a file or a device node), from ``/proc/locks``; [] when
    unknown.  ``/proc/locks`` names the inode as ``MAJOR:MINOR:INODE`` (major and minor in hex)."""
    try:
        st = os.stat(path)
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return []
    want = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    pids = []
    for line in lines:
        f = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 00:19:5 0 EOF"; blocked waiters ("1: -> FLOCK ...") skipped.
        if len(f) < 6 or f[1] != "FLOCK":
            continue
        try:
            major, minor, ino = f[5].split(":")
            key = (int(major, 16), int(minor, 16), int(ino))
            pid = int(f[4])
        except ValueError:
            continue
        if key == want and pid not in pids:
            pids.append(pid)
    return pids


class PidLock:
    """An exclusive lock on *path*, taken at construction and held until :meth:`release` (or the
    process ends).  Raises :class:`ResourceBusyError` naming the holder if another process has it,
    and ``OSError`` if the lock file cannot be created (the caller says what that means).

    Two :class:`PidLock` s on one file conflict within one process too (``flock`` locks belong to
    the open file description), so a second outbox object on the same database is refused as well.
    """

    def __init__(self, path: str | os.PathLike[str], what: str, advice: str = "") -> None:
        self.path = Path(path)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            if pid is None:      # it has the lock but has not written its PID yet
                holders = flock_holders(self.path)
                pid = holders[0] if holders else None
            raise ResourceBusyError(what, pid, advice) from None
        except OSError:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Give the lock up (the file stays: removing it would let a third process lock a new
        inode while a second one still waits on the old)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        os.close(fd)     # closing the last descriptor drops the flock


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", errors="replace").strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None
