"""The relay's clustered input over AMQP: a RabbitMQ quorum queue around :class:`~ims_station.relay.core.RelayCore`.

Owns what the relay does over AMQP 0-9-1 (pika; docs/centre-cluster.md): the connection to one of a
list of RabbitMQ nodes (TLS, user + password from a file; on loss, the next node), the durable
**quorum queue** (replicated on a majority of the nodes) bound to ``amq.topic`` -- where the MQTT
plugin publishes the stations' messages, topic ``ims/STA/cd11`` as routing key ``ims.STA.cd11`` --
for ``{p}.*.cd11``, ``.events`` and ``.ims20``, declared when missing, consumption with manual
acks shared by every relay process on the queue, batching, and publishing the core's acknacks to
``amq.topic`` with the station's acknack routing key, which the MQTT plugin delivers to the
station's subscription.  It does not own verification, dedupe, archive, state or the acknack
schedule (``core``), nor the stations: they speak MQTT 3.1.1 to the nodes' MQTT plugin.

Delivery rule (as ``relay.jetstream``): a batch is acknowledged (``basic.ack`` up to its last
delivery tag) only after ``RelayCore.process`` returned, i.e. after it is stored durably.  A relay
that dies holds its unacknowledged deliveries on a channel that dies with it: the queue requeues
them at once for the other relays (``redelivered`` set).  One that dies after storing and before
acking makes a stored frame come back: a duplicate, archived once.  A store failure (disk full)
negatively acknowledges the batch with requeue and pauses.  The MQTT plugin acknowledges a
station's QoS 1 PUBLISH only after the quorum queue confirmed it (measured: none lost when the
queue's leader node is SIGKILLed, docs/centre-cluster.md).

Threading: one thread owns the pika ``BlockingConnection`` (pika is not thread-safe) and does
everything on it; :meth:`stats` may be called from any thread (``_lock``).
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

from ims_station import topics
from ims_station.clock import Clock
from ims_station.config import read_secret_file
from ims_station.errors import ConfigError
from ims_station.relay.archive import Archive
from ims_station.relay.clustered import ClusteredInput
from ims_station.relay.core import Incoming, Outcome
from ims_station.relay.errors import RelayError
from ims_station.relay.relay import process_guarded
from ims_station.relay.state import StateStore

log = logging.getLogger(__name__)

#: The exchange RabbitMQ's MQTT plugin publishes to and delivers from (its default).
MQTT_EXCHANGE = "amq.topic"


def routing_keys(prefix: str) -> list[str]:
    """What the queue is bound to: every station's topics of :data:`topics.RELAY_KINDS`."""
    return [f"{topics.dotted(prefix)}.*.{kind}" for kind in topics.RELAY_KINDS]


@dataclass(frozen=True)
class AmqpConfig:
    """``[amqp]`` of the relay config: the RabbitMQ nodes and how the relay consumes."""

    servers: tuple[str, ...]             # amqp://host:5672 or amqps://host:5671, tried in turn
    queue: str = "ims-relay"             # the quorum queue of the stations' messages
    vhost: str = "/"
    prefetch: int = 256                  # unacknowledged deliveries per relay process
    fetch_wait_s: float = 0.2            # longest wait to fill a batch
    heartbeat_s: int = 30
    connect_timeout_s: float = 5.0
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    username: str | None = None
    password_file: str | None = None     # mode 0600

    PATH_KEYS = ("tls_ca", "tls_cert", "tls_key", "password_file")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, file: str = "<config>", key: str = "amqp",
                     resolve: Callable[[str | None], str | None] = lambda p: p) -> "AmqpConfig":
        d = dict(data)
        servers = d.pop("servers", None)
        if not servers:
            raise ConfigError(file, f"{key}.servers", "at least one amqp:// or amqps:// URL is required")
        for i, url in enumerate(servers):
            u = urlsplit(url)
            if u.scheme not in ("amqp", "amqps") or not u.hostname or u.username or u.password:
                raise ConfigError(file, f"{key}.servers[{i}]",
                                  f"{url!r} must be amqp://host[:port] or amqps://host[:port] (credentials in "
                                  "username / password_file)")
        for k in cls.PATH_KEYS:
            if k in d:
                d[k] = resolve(d[k])
        cfg = cls(servers=tuple(servers), **d)
        if (cfg.tls_cert is None) != (cfg.tls_key is None):
            raise ConfigError(file, f"{key}.tls_cert", "tls_cert and tls_key go together")
        if any(u.startswith("amqps://") for u in cfg.servers) and cfg.tls_ca is None:
            raise ConfigError(file, f"{key}.tls_ca", "amqps:// servers need tls_ca (the cluster's CA)")
        if cfg.username is None or cfg.password_file is None:
            raise ConfigError(file, f"{key}.{'username' if cfg.username is None else 'password_file'}",
                              "username and password_file are required (no default credentials)")
        return cfg

    def check_secrets(self) -> None:
        read_secret_file(self.password_file, what="AMQP password", min_bytes=1, max_bytes=4096)
        if self.tls_key is not None:
            read_secret_file(self.tls_key, what="TLS client key", min_bytes=32)

    def parameters(self, url: str) -> Any:
        """pika connection parameters for one server URL."""
        import pika

        u = urlsplit(url)
        tls = u.scheme == "amqps"
        opts = None
        if tls:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.tls_ca)
            if self.tls_cert is not None:
                ctx.load_cert_chain(self.tls_cert, self.tls_key)
            opts = pika.SSLOptions(ctx, server_hostname=u.hostname)
        password = read_secret_file(self.password_file, what="AMQP password", min_bytes=1,
                                    max_bytes=4096).decode().strip()
        return pika.ConnectionParameters(
            host=u.hostname, port=u.port or (5671 if tls else 5672), virtual_host=self.vhost,
            credentials=pika.PlainCredentials(self.username, password), ssl_options=opts,
            heartbeat=self.heartbeat_s, socket_timeout=self.connect_timeout_s,
            blocked_connection_timeout=60, connection_attempts=1, client_properties={"product": "ims-relay"})


class AmqpRelay(ClusteredInput):
    """Consume the stations' messages from the quorum queue, process them with the core,
    acknowledge them after they are stored, publish the acknacks."""

    input_name = "amqp"

    def __init__(self, config: AmqpConfig, trust: Any, state: StateStore, archive: Archive, *,
                 prefix: str = topics.DEFAULT_PREFIX, clock: Clock | None = None, instance: str = "relay",
                 batch_max: int = 64, on_outcomes: Callable[[list[Outcome]], None] | None = None,
                 backoff_s: float = 1.0, **core_kw: Any) -> None:
        try:
            import pika  # noqa: F401
        except ImportError:
            raise RelayError("[relay] input = \"amqp\" needs pika: pip install 'ims-station[cluster]'") from None
        self._setup(config, trust, state, archive, prefix=prefix, clock=clock, instance=instance,
                    batch_max=batch_max, on_outcomes=on_outcomes, log=log, core_kw=core_kw)
        self.backoff_s = backoff_s
        self._stop = threading.Event()

    # -- public: relay.clustered.ClusteredInput, and --------------------------------------------
    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _transport_fields(self) -> dict[str, Any]:
        return {"queue": self.config.queue}

    # -- the loop (on the relay thread) ------------------------------------------------------------
    def run_forever(self) -> None:
        i = 0
        while not self._stop.is_set():
            url = self.config.servers[i % len(self.config.servers)]
            i += 1
            try:
                self._session(url)
            except Exception as err:  # noqa: BLE001 - node lost, refused, timed out: the next one
                self.transport["connection_losses"] += 1
                self._log("connection", logging.WARNING, "relay %s: AMQP %s: %s: %s; trying the next node",
                          self.instance, url, type(err).__name__, err)
            finally:
                self._ready.clear()
            self._stop.wait(self.backoff_s if i % len(self.config.servers) == 0 else 0.05)

    def _session(self, url: str) -> None:
        import pika

        conn = pika.BlockingConnection(self.config.parameters(url))
        try:
            ch = conn.channel()
            q = self.config.queue
            ch.queue_declare(q, durable=True, arguments={"x-queue-type": "quorum"})
            for key in routing_keys(self.prefix):
                ch.queue_bind(q, MQTT_EXCHANGE, routing_key=key)
            ch.basic_qos(prefetch_count=self.config.prefetch)
            self._server = urlsplit(url).netloc
            self.transport["connects"] += 1
            self._ready.set()
            log.info("relay %s: consuming quorum queue %s via AMQP %s", self.instance, q, self._server)
            batch: list = []
            for method, props, body in ch.consume(q, inactivity_timeout=self._wait()):
                if method is not None:
                    batch.append((method, body))
                if batch and (method is None or len(batch) >= self.batch_max):
                    self._process(ch, batch)
                    batch = []
                self._turn(ch)
                if self._stop.is_set():
                    break
            if batch:                           # stopping with deliveries in hand: store them first
                self._process(ch, batch)
            ch.cancel()                         # what is still prefetched goes back to the queue
        finally:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - the connection is already gone
                pass

    def _wait(self) -> float:
        return max(0.02, min(self.config.fetch_wait_s, self.core.next_acknack_in()))

    def _turn(self, ch: Any) -> None:
        refresh = getattr(self.core.trust, "refresh", None)
        if refresh is not None:
            with self._lock:
                refresh()
        if self.core.next_acknack_in() <= 0:
            with self._lock:
                due = self.core.due_acknacks()
            for topic, _fs, payload in due:
                ch.basic_publish(MQTT_EXCHANGE, topics.dotted(topic), payload)
        with self._lock:
            self.core.check_silence()

    def _process(self, ch: Any, batch: list) -> None:
        now = time.time()
        items = [Incoming(topics.from_dotted(m.routing_key), bytes(body), m.delivery_tag, now) for m, body in batch]
        self.transport["received"] += len(items)
        self.transport["redelivered"] += sum(1 for m, _ in batch if m.redelivered)
        outcomes = process_guarded(self.core, items, lock=self._lock, label=f"relay {self.instance}",
                                   transport=self.transport)
        last = batch[-1][0].delivery_tag
        if outcomes is None:                    # not stored: back to the queue, for any relay, later
            ch.basic_nack(last, multiple=True, requeue=True)
            self.transport["nacked"] += len(batch)
            self._stop.wait(self.backoff_s)
            return
        ch.basic_ack(last, multiple=True)
        self.transport["acked"] += len(batch)
        if self.on_outcomes is not None:
            try:
                self.on_outcomes(outcomes)
            except Exception:  # an observer's bug must not stop the relay
                log.exception("relay %s: on_outcomes callback failed", self.instance)


__all__ = ["AmqpConfig", "AmqpRelay", "MQTT_EXCHANGE", "routing_keys"]
