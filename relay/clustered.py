"""What the relay's inputs from a clustered engine share: the surface of :class:`~ims_station.relay.relay.Relay`.

Owns the part of :class:`~ims_station.relay.amqp.AmqpRelay` (RabbitMQ quorum queue) and
:class:`~ims_station.relay.jetstream.JetStreamRelay` (NATS JetStream work queue) that does not depend
on the engine: the :class:`~ims_station.relay.core.RelayCore` they drive, the relay thread, readiness
(``connected``, ``wait_connected``), ``start``/``close``, the transport counters and ``stats`` -- the
surface that ``relay run``, the status API and the systemd heartbeat use for any input.  It does not
own the engine's session, consumption, acknowledgement or stopping (each input's own module).
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections import Counter
from typing import Any, Callable

from ims_station.clock import Clock
from ims_station.logutil import RateLimitedLog
from ims_station.relay.archive import Archive
from ims_station.relay.core import Outcome, RelayCore
from ims_station.relay.errors import RelayError
from ims_station.relay.state import StateStore


class ClusteredInput(ABC):
    """Base of the clustered inputs; subclasses set :attr:`input_name`, implement ``run_forever``,
    ``stop`` and :meth:`_transport_fields`, and call :meth:`_setup` from their ``__init__``."""

    input_name = ""

    def _setup(self, config: Any, trust: Any, state: StateStore, archive: Archive, *, prefix: str,
               clock: Clock | None, instance: str, batch_max: int,
               on_outcomes: Callable[[list[Outcome]], None] | None, log: logging.Logger,
               core_kw: dict[str, Any]) -> None:
        self.config = config
        self.prefix = prefix
        self.instance = instance
        self.batch_max = max(1, batch_max)
        self.on_outcomes = on_outcomes
        self.core = RelayCore(trust, state, archive, prefix=prefix, clock=clock, **core_kw)
        self.transport: Counter = Counter()
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._server: str | None = None
        self._log = RateLimitedLog(log, self.core.clock, rate=0.2, burst=3)

    # -- public (the surface of relay.Relay: the CLI, status API and heartbeat use it) -------------
    @property
    def connected(self) -> bool:
        """Connected to a node and consuming."""
        return self._ready.is_set()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait_connected(self, timeout: float | None) -> bool:
        return self._ready.wait(timeout)

    def start(self):
        if self._thread is not None:
            raise RelayError("relay already started")
        self.config.check_secrets()
        self._thread = threading.Thread(target=self.run_forever, name=f"relay-{self.instance}", daemon=True)
        self._thread.start()
        return self

    @abstractmethod
    def run_forever(self) -> None:
        """Consume until :meth:`stop` (on the relay thread)."""

    @abstractmethod
    def stop(self, timeout: float = 10.0) -> None:
        """End consumption and join the relay thread (up to *timeout*)."""

    def close(self) -> None:
        self.stop()
        self.core.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @abstractmethod
    def _transport_fields(self) -> dict[str, Any]:
        """The engine's own fields of ``stats()["transport"]`` (queue, stream, consumer)."""

    def stats(self) -> dict[str, Any]:
        with self._lock:
            d = self.core.stats()
        if hasattr(self.core.trust, "stats"):
            d["trust"] = self.core.trust.stats()
        d["transport"] = dict(self.transport, connected=self.connected, input=self.input_name,
                              server=self._server, **self._transport_fields())
        return d
