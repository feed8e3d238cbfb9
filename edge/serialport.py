"""Serial ports for the gateway: opening by URL and the read -> decode -> write pump.

Owns: :func:`open_port` (every port is opened through ``serial.serial_for_url``, so the same code
serves ``/dev/ttyUSB0``, a pty, ``rfc2217://host:port``, ``loop://`` and the simulator's
``sim://``) and :class:`PortPump`, the thin I/O shell around a sans-IO
:class:`~ims_station.edge.ingest.LinkDecoder`: read what is there, feed it, write what it wants
sent, hand the events on, and reconnect with exponential backoff when the port breaks.

Does not own: the protocol (``edge/ingest.py``), the ``sim://`` handler (``hil/protocol_sim.py``,
written by the HIL), threads or event loops (the caller runs :meth:`PortPump.run` or calls
:meth:`PortPump.step` from its own loop).
"""

from __future__ import annotations

import errno
import logging
from collections import deque
from concurrent.futures import Future
from typing import Any, Callable

import serial

from ims_station.errors import ImsStationError
from ims_station.locks import ResourceBusyError, flock_holders

from .logutil import RateLimitedLog, SystemClock

log = logging.getLogger(__name__)

# pyserial looks up URL scheme "foo://" as module "<package>.protocol_foo" in these packages.
SIM_HANDLER_PACKAGE = "ims_station.hil"


def register_sim() -> None:
    """Make ``sim://`` URLs resolve to the simulator (idempotent)."""
    if SIM_HANDLER_PACKAGE not in serial.protocol_handler_packages:
        serial.protocol_handler_packages.append(SIM_HANDLER_PACKAGE)


class PortInUseError(ImsStationError, serial.SerialException):
    """Another process holds the port (``pid``, None if unknown).  A ``SerialException``, so a
    reconnecting :class:`PortPump` keeps retrying; at start-up the gateway stops on it."""

    def __init__(self, message: str, pid: int | None) -> None:
        super().__init__(message)
        self.pid = pid


def open_port(url: str, baudrate: int = 115200, timeout: float | None = 0.05, **kw: Any) -> serial.SerialBase:
    """Open a serial port by URL or device path (8N1, no flow control unless *kw* says so).

    Exclusively (``exclusive=True``: pyserial takes a ``flock`` on the device, as on a pty), so two
    gateways cannot split one board's bytes between them: if another process holds the port,
    :class:`PortInUseError` names it.  The URL handlers (``sim://``, ``loop://``, ``socket://``)
    ignore the flag: a ``sim://`` board lives inside the process that opened it, so there is
    nothing to share; a TCP serial server decides itself whether it takes a second client.
    """
    register_sim()
    kw.setdefault("exclusive", True)
    try:
        return serial.serial_for_url(url, baudrate=baudrate, timeout=timeout, **kw)
    except serial.SerialException as err:
        if getattr(err, "errno", None) not in (errno.EAGAIN, errno.EWOULDBLOCK) or "://" in url:
            raise
        holders = flock_holders(url)
        pid = holders[0] if holders else None
        raise PortInUseError(str(ResourceBusyError(
            f"serial port {url}", pid, "stop that process first; two gateways must never share a board's "
            "port")), pid) from err


class PortPump:
    """Moves bytes between one port and one decoder; survives the port going away.

    ``on_events(list)`` receives the decoder's events after every step.  ``opener`` (default
    :func:`open_port`) and ``clock`` are injectable; reconnect waits are measured on the clock,
    never slept inside :meth:`step`, so a test drives disconnects with a fake clock.
    """

    def __init__(self, url: str, decoder: Any, *, baudrate: int = 115200, timeout: float = 0.05,
                 on_events: Callable[[list], None] | None = None, clock: Any = None,
                 opener: Callable[..., serial.SerialBase] | None = None,
                 backoff_initial: float = 0.5, backoff_max: float = 30.0, read_size: int = 4096) -> None:
        self.url = url
        self.decoder = decoder
        self.baudrate = baudrate
        self.timeout = timeout
        self.on_events = on_events
        self.clock = clock or SystemClock()
        self.opener = opener or (lambda *a, **kw: open_port(*a, **kw))
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.read_size = read_size
        self.port: serial.SerialBase | None = None
        self._backoff = backoff_initial
        self._retry_at = 0.0
        self._log = RateLimitedLog(log, self.clock, rate=0.2, burst=3)
        self.counters = {"opens": 0, "open_failures": 0, "disconnects": 0, "bytes_in": 0, "bytes_out": 0}
        self.failed: BaseException | None = None   # set when run() stopped on a bug (see run)
        self._calls: deque[tuple[Callable[[], Any], Future]] = deque()   # call_soon: run on the pump's thread

    def call_soon(self, fn: Callable[[], Any]) -> Future:
        """Run *fn* on the pump's own thread at its next :meth:`step` (the decoder is not
        thread-safe: an operator's command from the status API's thread goes through here).
        Returns a :class:`concurrent.futures.Future` of its result."""
        fut: Future = Future()
        self._calls.append((fn, fut))
        return fut

    def _run_calls(self) -> None:
        while self._calls:
            fn, fut = self._calls.popleft()
            try:
                fut.set_result(fn())
            except Exception as err:            # the caller's failure, reported to the caller
                fut.set_exception(err)

    @property
    def connected(self) -> bool:
        return self.port is not None

    def step(self) -> bool:
        """One cycle: (re)open if due, read (blocking up to the port timeout), feed, write.
        Returns True if bytes were read."""
        now = self.clock.monotonic()
        if self._calls:
            self._run_calls()
        if self.port is None:
            if now < self._retry_at or not self._open(now):
                self._finish()
                return False
        got = False
        try:
            waiting = self.port.in_waiting
            data = self.port.read(min(max(1, waiting), self.read_size))
            if data:
                got = True
                self.counters["bytes_in"] += len(data)
                self.decoder.receive_data(data)
            else:
                self.decoder.tick()
            out = self.decoder.data_to_send()
            if out:
                self.port.write(out)
                self.counters["bytes_out"] += len(out)
        except (serial.SerialException, OSError) as err:
            self.counters["disconnects"] += 1
            self._log("io", logging.WARNING, "edge: port %s broke: %s", self.url, err)
            self._drop(now)
        self._finish()
        return got

    def open_now(self) -> bool:
        """Try to open the port once, from the caller's thread (the gateway does at start-up): a
        port held by another process raises :class:`PortInUseError`; any other failure is logged and
        retried by :meth:`step` as usual (a USB adapter may be plugged in later).  True if open."""
        return self.port is not None or self._open(self.clock.monotonic(), busy_is_fatal=True)

    def _open(self, now: float, busy_is_fatal: bool = False) -> bool:
        try:
            self.port = self.opener(self.url, baudrate=self.baudrate, timeout=self.timeout)
        except (serial.SerialException, OSError, ValueError) as err:
            if busy_is_fatal and isinstance(err, PortInUseError):
                raise
            self.counters["open_failures"] += 1
            self._schedule_retry(now)
            self._log("open", logging.WARNING, "edge: cannot open %s: %s (retry in %.1f s)",
                      self.url, err, self._retry_at - now)
            return False
        self.counters["opens"] += 1
        self._backoff = self.backoff_initial
        return True

    def _finish(self) -> None:
        if self.on_events is not None:
            ev = self.decoder.next_events()
            if ev:
                self.on_events(ev)

    def _schedule_retry(self, now: float) -> None:
        self._retry_at = now + self._backoff
        self._backoff = min(self._backoff * 2, self.backoff_max)

    def _drop(self, now: float) -> None:
        try:
            if self.port is not None:
                self.port.close()
        except (serial.SerialException, OSError):
            pass
        self.port = None
        self._schedule_retry(now)

    def close(self) -> None:
        if self.port is not None:
            try:
                self.port.close()
            finally:
                self.port = None

    def run(self, stop: Any, idle_sleep: float = 0.05) -> None:
        """Loop until ``stop.is_set()`` (a threading.Event).  Sleeps only while waiting to reconnect.

        Crash-only on a bug: an exception out of the chain behind ``on_events`` (framer, outbox)
        is logged with its traceback, kept in :attr:`failed`, and sets *stop*, so the gateway ends
        with a non-zero status and its supervisor restarts it.  Nothing is lost that way: only
        committed samples were acknowledged, and the restarted gateway asks the board's ring for
        the rest from the persisted ACK point.  A thread that died quietly would leave a gateway
        that publishes SOH but ingests nothing."""
        try:
            while not stop.is_set():
                self.step()
                if self.port is None:
                    stop.wait(min(idle_sleep, max(0.0, self._retry_at - self.clock.monotonic())) or idle_sleep)
        except Exception as err:
            self.failed = err
            log.exception("edge: port %s: ingest failed; stopping the gateway so that it restarts from "
                          "the persisted ACK point", self.url)
            stop.set()
        finally:
            self.close()

