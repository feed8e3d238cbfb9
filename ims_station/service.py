"""What a long-running daemon tells its supervisor and its journal: sd_notify and the routine summary.

Owns two things that ``ims-station edge run`` and ``ims-station relay run`` share:

* :class:`Notifier`, the systemd notification protocol (``sd_notify(3)``): one datagram of
  ``KEY=VALUE`` lines to the ``AF_UNIX`` socket named by ``$NOTIFY_SOCKET`` (a path, or an abstract
  name written with a leading ``@``).  ``READY=1`` once the daemon is started (``Type=notify``),
  ``STATUS=...`` a one-line summary (``systemctl status`` shows it), ``WATCHDOG=1`` every half
  ``$WATCHDOG_USEC`` (``WatchdogSec=``) and ``STOPPING=1`` when it begins to stop.  Without
  ``$NOTIFY_SOCKET`` (not under systemd, or ``Type=simple``) every call is a cheap no-op.
  Hand-written rather than a dependency: the protocol is one ``sendto`` (a stable ABI since systemd
  209); the ``sdnotify`` package (last release 2017) adds nothing for it and does not read
  ``WATCHDOG_USEC``, and ``python-systemd`` needs libsystemd headers to build, which a Pi image
  does not have.
* :class:`StopSignals`, how the daemon is told to stop (``SIGTERM``, Ctrl-C) and to reload
  (``SIGHUP``): the handlers only set a plain attribute and write one byte to a pipe (the
  "self-pipe", async-signal-safe), and the main loop waits on that pipe (:meth:`StopSignals.wait`).
  A handler that called ``threading.Event.set()`` instead deadlocked when the signal arrived while
  the main thread itself held that Event's lock (inside its own ``Event.wait``): Python runs signal
  handlers on the main thread between two bytecodes, and the Event's lock is not reentrant -- the
  gateway then ignored SIGTERM until systemd's ``TimeoutStopSec`` SIGKILLed it (CPython documents
  the hazard for its locks; gh-126434 is the same deadlock in ``multiprocessing.Event``).
* :class:`Heartbeat`, the main loop's duty cycle around it: watchdog pings **only while the caller
  says the daemon is healthy** (a dead ingest thread or a stuck MQTT session must end in a restart by
  systemd, not in a process that looks alive), changes of the few states an operator must see
  (``WARNING`` log lines, going bad and coming back alike), and every *summary_s* one ``INFO``
  summary line that is also the unit's ``STATUS=``.

It does not own what is healthy or what a summary says (the daemons: ``edge/station.py``,
``relay/cli.py``), nor the logging set-up (:func:`ims_station.logutil.setup_logging`).
The clock is injected (:class:`ims_station.clock.Clock`), so the pacing is tested without sleeping.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import threading
from typing import Any, Callable, Iterable, Mapping

from ims_station.clock import Clock, SystemClock

__all__ = ["Heartbeat", "Notifier", "StopSignals"]

log = logging.getLogger(__name__)

MAX_STATUS_CHARS = 400          # STATUS= is one line for `systemctl status`, not a report


class Notifier:
    """The client side of ``sd_notify``; every method returns True if a datagram was sent."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        addr = env.get("NOTIFY_SOCKET", "")
        self.address: str | None = None
        if addr.startswith("@"):
            self.address = "\0" + addr[1:]                 # Linux abstract namespace
        elif addr.startswith("/"):
            self.address = addr
        self.watchdog_s: float | None = None
        try:
            usec = int(env.get("WATCHDOG_USEC", ""))
            pid = env.get("WATCHDOG_PID")
            if usec > 0 and (not pid or int(pid) == os.getpid()):
                self.watchdog_s = usec / 1e6
        except ValueError:
            pass
        self._sock: socket.socket | None = None
        self.errors = 0

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *lines: str) -> bool:
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            # MSG_DONTWAIT: a supervisor that stops reading (a full queue) must not block the
            # daemon's main loop; the datagram is dropped and counted instead.
            self._sock.sendto("\n".join(lines).encode("utf-8", "replace"), socket.MSG_DONTWAIT, self.address)
            return True
        except OSError as err:
            # The supervisor went away or restarted its socket: nothing we can repair, and not a
            # reason to stop collecting data.  Logged once; counted always.
            self.errors += 1
            if self.errors == 1:
                log.warning("sd_notify to %s failed: %s", self.address.lstrip("\0"), err)
            return False

    def ready(self, status: str | None = None) -> bool:
        return self.send("READY=1", *([_status_line(status)] if status else []))

    def status(self, text: str) -> bool:
        return self.send(_status_line(text))

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        return self.send("STOPPING=1", *([_status_line(status)] if status else []))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _status_line(text: str) -> str:
    one = " ".join(str(text).split())
    return "STATUS=" + (one[:MAX_STATUS_CHARS - 3] + "..." if len(one) > MAX_STATUS_CHARS else one)


class Heartbeat:
    """Call :meth:`turn` from the daemon's main loop (as often as it likes; it paces itself).

    *healthy()* -> ``None`` when healthy, else the reason (then no watchdog ping, logged once per
    reason at ERROR).  *states()* -> ``{name: state}`` of things an operator must see change
    (cheap: read every *check_s*).  *summary()* -> the routine one-line summary (may be costly:
    every *summary_s*; 0 = never).
    """

    def __init__(self, logger: logging.Logger, *, healthy: Callable[[], str | None],
                 summary: Callable[[], str], states: Callable[[], dict[str, str]] | None = None,
                 summary_s: float = 60.0, check_s: float = 5.0, notifier: Notifier | None = None,
                 clock: Clock | None = None, label: str = "") -> None:
        self.log = logger
        self.prefix = f"{label}: " if label else ""
        self.notifier = notifier if notifier is not None else Notifier()
        self.clock = clock or SystemClock()
        self._healthy, self._summary, self._states = healthy, summary, states
        self.summary_s, self.check_s = summary_s, check_s
        wd = self.notifier.watchdog_s
        self.ping_s = wd / 2 if wd else None                 # sd_watchdog_enabled(3): ping at half
        now = self.clock.monotonic()
        self._next_ping = now
        self._next_check = now
        self._next_summary = now + summary_s if summary_s > 0 else float("inf")
        self._last_states: dict[str, str] = {}
        self._unhealthy: str | None = None
        self.pings = 0

    def started(self) -> None:
        """The daemon is up (ports opened, broker session started): READY=1 with a first summary."""
        self._last_states = self._read_states()
        line = self._safe_summary()
        self.log.info("%s", line)
        self.notifier.ready(line)
        self.turn()

    def turn(self) -> None:
        now = self.clock.monotonic()
        if self.ping_s is not None and now >= self._next_ping:
            try:
                reason = self._healthy()
            except Exception as err:     # a bug in the check: no pings (a restart), never a crash here
                reason = f"health check failed: {type(err).__name__}: {err}"
            if reason is None:
                if self._unhealthy is not None:
                    self.log.warning("%shealthy again (was: %s)", self.prefix, self._unhealthy)
                    self._unhealthy = None
                if self.notifier.watchdog():
                    self.pings += 1
            elif reason != self._unhealthy:
                self._unhealthy = reason
                self.log.error("%sunhealthy, watchdog pings withheld (systemd restarts us): %s", self.prefix, reason)
            self._next_ping = now + self.ping_s
        if self._states is not None and now >= self._next_check:
            self._next_check = now + self.check_s
            self._check_states()
        if now >= self._next_summary:
            self._next_summary = now + self.summary_s
            line = self._safe_summary()
            self.log.info("%s", line)
            self.notifier.status(line)

    def stopping(self) -> None:
        self.notifier.stopping("stopping")

    def close(self) -> None:
        self.notifier.close()

    # -- internals ---------------------------------------------------------------------------------
    def _read_states(self) -> dict[str, str]:
        if self._states is None:
            return {}
        try:
            return dict(self._states())
        except Exception:  # a status bug must not stop the daemon (nor its watchdog)
            self.log.exception("reading the states failed")
            return dict(self._last_states)

    def _check_states(self) -> None:
        new = self._read_states()
        for name, state in new.items():
            old = self._last_states.get(name)
            if old is not None and old != state:
                self.log.warning("%s%s %s (was %s)", self.prefix, name, state, old)
        self._last_states = new

    def _safe_summary(self) -> str:
        try:
            return self._summary()
        except Exception as err:
            self.log.exception("building the summary failed")
            return f"summary unavailable: {type(err).__name__}"



class StopSignals:
    """A daemon's stop request, raised by a signal or by the daemon itself, waited for by its main loop.

    :meth:`install` (main thread only; elsewhere -- a test running the daemon's function on a
    thread -- it installs nothing) makes each of *stop* (default ``SIGTERM``) request the stop and
    each signal of *actions* ask for its action, which :meth:`wait` then runs **on the main loop**,
    outside the handler.  The handlers take no lock and call nothing that might: they set an
    attribute and write one byte to a non-blocking pipe (a full pipe already wakes the loop).  So
    :meth:`set` is safe from a signal handler, from any thread and from the main loop alike, and
    :meth:`wait` (``select`` on the pipe) returns at once however the request came.
    """

    def __init__(self, stop: Iterable[int] = (signal.SIGTERM,),
                 actions: Mapping[int, Callable[[], Any]] | None = None) -> None:
        self.stop_signals = tuple(stop)
        self.actions = dict(actions or {})
        self.signal: int | None = None             # the stop signal received (None: none, or set())
        self._stop = False                         # plain attributes: written by the handlers
        self._pending: list[int] = []              # action signals not yet run (list.append: no lock)
        self._r, self._w = os.pipe()
        for fd in (self._r, self._w):
            os.set_blocking(fd, False)
            os.set_inheritable(fd, False)
        self._previous: dict[int, Any] = {}

    def install(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in self.stop_signals:
                self._previous[sig] = signal.signal(sig, self._on_stop_signal)
            for sig in self.actions:
                self._previous[sig] = signal.signal(sig, self._on_action_signal)
        return self

    def _on_stop_signal(self, signum: int, frame: Any) -> None:
        self.signal = signum
        self.set()

    def _on_action_signal(self, signum: int, frame: Any) -> None:
        self._pending.append(signum)
        self._poke()

    def _poke(self) -> None:
        try:
            os.write(self._w, b"\0")
        except OSError:          # full (the loop is woken already) or closed (stopped): nothing to do
            pass

    def set(self) -> None:
        """Request the stop (from anywhere, a signal handler included)."""
        self._stop = True
        self._poke()

    def is_set(self) -> bool:
        return self._stop

    def wait(self, timeout: float | None) -> bool:
        """Sleep until the stop is requested, an action signal arrives or *timeout* passes; run the
        actions asked for meanwhile.  True if the stop was requested."""
        if not self._stop and not self._pending:
            try:
                select.select([self._r], [], [], timeout)
            except (OSError, ValueError):      # closed: nothing left to wait for
                return self._stop
        self._drain()
        while self._pending:
            action = self.actions.get(self._pending.pop(0))
            if action is not None:
                action()
        return self._stop

    def _drain(self) -> None:
        if self._stop:
            return              # stays readable: every later wait() returns at once
        try:
            while os.read(self._r, 512):
                pass
        except OSError:
            pass

    def close(self) -> None:
        """Put the previous handlers back and close the pipe."""
        for sig, old in self._previous.items():
            signal.signal(sig, old)
        self._previous.clear()
        for fd in (self._r, self._w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._r = self._w = -1
