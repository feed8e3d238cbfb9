"""The relay's clustered input: a NATS JetStream work queue around :class:`~ims_station.relay.core.RelayCore`.

Owns what the relay does over NATS (docs/centre-cluster.md): the connection to a list of cluster
nodes (nats-py; TLS, user + password from a file or a credentials file; reconnection to any node),
the replicated work-queue *stream* that captures the stations' MQTT topics (``{p}.*.cd11``,
``{p}.*.events``, ``{p}.*.ims20``: the NATS MQTT gateway maps ``ims/STA/cd11`` to subject
``ims.STA.cd11``), created when missing, one durable *pull consumer* shared by every relay process
(so they share the load), batching, explicit acks, and publishing the core's acknacks on each
station's acknack subject, which the gateway delivers to the station's MQTT subscription.  It does
not own verification, dedupe, archive, state or the acknack schedule (``core``), nor the stations'
side: they speak MQTT to the cluster's MQTT gateway exactly as to Mosquitto (``edge/uplink.py``).

Delivery rule (why no frame is lost and none is archived twice): a message is acknowledged
(``+ACK``) only after ``RelayCore.process`` returned, i.e. after it is archived or quarantined
durably and the frame-set state saved.  A relay that dies (SIGKILL) before that leaves its fetched
messages unacknowledged: the stream redelivers them to another relay of the consumer after
``ack_wait_s``.  A relay that dies after storing and before acking makes the stream redeliver a
message that is already archived: the archive sees the same (frame set, sequence) with identical
bytes and counts a duplicate, so nothing is archived twice.  Should the stream itself lose a
message (a node loss beyond the replication), the station's outbox still holds the frame and
resends it when the acknack shows the gap.  If storing fails (disk full), the batch is not
acknowledged but negatively acknowledged with a delay (redelivered later).

Threading: one thread runs an asyncio loop with the NATS client; each batch is processed in a
worker thread (``asyncio.to_thread``) so that a slow fsync never stalls the client's pings, one
batch at a time; :meth:`stats` may be called from any thread (``_lock``).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

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

#: Longest NATS server URL list accepted from a config (a cluster has 3-7 nodes).
MAX_SERVERS = 32


#: The NATS subject the MQTT gateway uses for a topic (``ims/STA/acknack`` -> ``ims.STA.acknack``).
subject_of = topics.dotted
#: The MQTT topic of a subject of the stream (``ims.STA.cd11`` -> ``ims/STA/cd11``).
topic_of = topics.from_dotted


def stream_subjects(prefix: str) -> list[str]:
    """What the work-queue stream captures: every station's topics of :data:`topics.RELAY_KINDS`."""
    return [f"{subject_of(prefix)}.*.{kind}" for kind in topics.RELAY_KINDS]


@dataclass(frozen=True)
class JetStreamConfig:
    """``[jetstream]`` of the relay config: where the cluster is and how the relay consumes it."""

    servers: tuple[str, ...]
    stream: str = "IMS"                  # the work-queue stream of the stations' messages
    consumer: str = "relay"              # the durable pull consumer shared by every relay process
    replicas: int = 3                    # stream replicas when the relay creates it
    create: bool = True                  # create the stream and consumer when missing
    ack_wait_s: float = 30.0             # unacknowledged for this long: redelivered to another relay
    max_ack_pending: int = 10000         # per consumer, across every relay process
    fetch_wait_s: float = 0.2            # longest wait for a batch
    max_bytes: int = 0                   # stream size limit (0: unlimited; work queue: acked ones go)
    connect_timeout_s: float = 5.0
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    username: str | None = None
    password_file: str | None = None     # mode 0600
    creds_file: str | None = None        # NATS user JWT + nkey seed (mode 0600), instead of username

    FIELDS_PATHS = ("tls_ca", "tls_cert", "tls_key", "password_file", "creds_file")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, file: str = "<config>", key: str = "jetstream",
                     resolve: Callable[[str | None], str | None] = lambda p: p) -> "JetStreamConfig":
        """Build from the TOML table (already schema-checked for types); combinations are checked
        here, each error naming file and key; *resolve* makes paths absolute."""
        d = dict(data)
        servers = d.pop("servers", None)
        if not servers:
            raise ConfigError(file, f"{key}.servers", "at least one nats:// or tls:// URL is required")
        for i, url in enumerate(servers):
            if not url.startswith(("nats://", "tls://")):
                raise ConfigError(file, f"{key}.servers[{i}]", f"{url!r} is not a nats:// or tls:// URL")
        for k in cls.FIELDS_PATHS:
            if k in d:
                d[k] = resolve(d[k])
        cfg = cls(servers=tuple(servers), **d)
        if (cfg.tls_cert is None) != (cfg.tls_key is None):
            raise ConfigError(file, f"{key}.tls_cert", "tls_cert and tls_key go together")
        if cfg.tls_cert is not None and cfg.tls_ca is None:
            raise ConfigError(file, f"{key}.tls_ca", "a client certificate needs tls_ca (the cluster's CA)")
        if cfg.password_file is not None and cfg.username is None:
            raise ConfigError(file, f"{key}.username", "password_file given without username")
        if cfg.username is not None and cfg.password_file is None:
            raise ConfigError(file, f"{key}.password_file", "username given without password_file")
        if cfg.creds_file is not None and cfg.username is not None:
            raise ConfigError(file, f"{key}.creds_file", "use either creds_file or username + password_file")
        if any(u.startswith("tls://") for u in cfg.servers) and cfg.tls_ca is None:
            raise ConfigError(file, f"{key}.tls_ca", "tls:// servers need tls_ca (the cluster's CA)")
        return cfg

    def check_secrets(self) -> None:
        """Read the secret files now, so a missing or world-readable one fails at start-up."""
        if self.password_file is not None:
            read_secret_file(self.password_file, what="NATS password", min_bytes=1, max_bytes=4096)
        if self.tls_key is not None:
            read_secret_file(self.tls_key, what="TLS client key", min_bytes=32)
        if self.creds_file is not None:
            read_secret_file(self.creds_file, what="NATS credentials", min_bytes=32)

    def connect_options(self) -> dict[str, Any]:
        """Keyword arguments of ``nats.connect`` for the servers, TLS and credentials."""
        opts: dict[str, Any] = {"servers": list(self.servers)}
        if self.tls_ca is not None:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.tls_ca)
            if self.tls_cert is not None:
                ctx.load_cert_chain(self.tls_cert, self.tls_key)
            opts["tls"] = ctx
        if self.username is not None:
            opts["user"] = self.username
            opts["password"] = read_secret_file(self.password_file, what="NATS password", min_bytes=1,
                                                max_bytes=4096).decode().strip()
        if self.creds_file is not None:
            opts["user_credentials"] = self.creds_file
        return opts


class JetStreamRelay(ClusteredInput):
    """Consume the stations' messages from the cluster's work-queue stream, process them with the
    core, acknowledge them after they are stored, publish the acknacks."""

    input_name = "jetstream"

    def __init__(self, config: JetStreamConfig, trust: Any, state: StateStore, archive: Archive, *,
                 prefix: str = topics.DEFAULT_PREFIX, clock: Clock | None = None, instance: str = "relay",
                 batch_max: int = 64, on_outcomes: Callable[[list[Outcome]], None] | None = None,
                 **core_kw: Any) -> None:
        """*core_kw* go to :class:`~ims_station.relay.core.RelayCore`; *on_outcomes* as for
        :class:`~ims_station.relay.relay.Relay`."""
        try:
            import nats  # noqa: F401
        except ImportError:
            raise RelayError("[relay] input = \"jetstream\" needs nats-py: pip install 'ims-station[cluster]'") from None
        if "." in prefix:
            raise RelayError(f"prefix {prefix!r}: a '.' is a subject separator in NATS; use '/' or none")
        self._setup(config, trust, state, archive, prefix=prefix, clock=clock, instance=instance,
                    batch_max=batch_max, on_outcomes=on_outcomes, log=log, core_kw=core_kw)
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- public: relay.clustered.ClusteredInput, and --------------------------------------------
    def run_forever(self) -> None:
        asyncio.run(self._main())

    def stop(self, timeout: float = 10.0) -> None:
        loop, ev = self._loop, self._stop
        if loop is not None and ev is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(ev.set)
            except RuntimeError:            # the loop just closed
                pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _transport_fields(self) -> dict[str, Any]:
        return {"stream": self.config.stream, "consumer": self.config.consumer}

    # -- the loop ----------------------------------------------------------------------------------
    async def _main(self) -> None:
        import nats

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        c = self.config

        async def disconnected() -> None:
            self.transport["disconnects"] += 1
            log.warning("relay %s: disconnected from NATS %s", self.instance, self._server)

        async def reconnected() -> None:
            self.transport["reconnects"] += 1
            self._server = str(nc.connected_url.netloc) if nc.connected_url else None
            log.info("relay %s: reconnected to NATS %s", self.instance, self._server)

        async def error(err: Exception) -> None:
            self.transport["client_errors"] += 1
            log.debug("relay %s: NATS client: %s", self.instance, err)

        nc = None
        while not self._stop.is_set():
            try:
                nc = await nats.connect(name=f"relay-{self.instance}", connect_timeout=c.connect_timeout_s,
                                        reconnect_time_wait=0.5, max_reconnect_attempts=-1,
                                        allow_reconnect=True, disconnected_cb=disconnected,
                                        reconnected_cb=reconnected, error_cb=error, **c.connect_options())
                break
            except Exception as err:  # noqa: BLE001 - no node reachable yet: retry, never crash
                self.transport["connect_failures"] += 1
                log.warning("relay %s: cannot connect to NATS %s: %s", self.instance, ", ".join(c.servers), err)
                await self._sleep(1.0)
        if nc is None:
            return
        self._server = str(nc.connected_url.netloc) if nc.connected_url else None
        try:
            js = nc.jetstream()
            psub = None
            while psub is None and not self._stop.is_set():
                try:
                    psub = await self._bind(js)
                except Exception as err:  # noqa: BLE001 - JetStream not ready (leader election): retry
                    self.transport["bind_failures"] += 1
                    log.warning("relay %s: stream %s / consumer %s not available: %s", self.instance,
                                c.stream, c.consumer, err)
                    await self._sleep(1.0)
            if psub is None:
                return
            self._ready.set()
            log.info("relay %s: consuming stream %s (consumer %s) via NATS %s", self.instance, c.stream,
                     c.consumer, self._server)
            while not self._stop.is_set():
                await self._turn(nc, psub)
        finally:
            self._ready.clear()
            try:
                await nc.close()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass

    async def _sleep(self, s: float) -> None:
        try:
            await asyncio.wait_for(self._stop.wait(), s)
        except asyncio.TimeoutError:
            pass

    async def _bind(self, js: Any) -> Any:
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, RetentionPolicy, StorageType, StreamConfig
        from nats.js.errors import NotFoundError

        c = self.config
        try:
            info = await js.stream_info(c.stream)
            want = set(stream_subjects(self.prefix))
            if not want <= set(info.config.subjects or ()):
                raise RelayError(f"stream {c.stream} captures {info.config.subjects}, not {sorted(want)}")
        except NotFoundError:
            if not c.create:
                raise
            await js.add_stream(StreamConfig(
                name=c.stream, subjects=stream_subjects(self.prefix), retention=RetentionPolicy.WORK_QUEUE,
                storage=StorageType.FILE, num_replicas=c.replicas, max_bytes=c.max_bytes or None,
                max_msg_size=self.core.verifier.max_payload, description="stations' messages for the relays"))
            self.transport["stream_created"] += 1
        try:
            await js.consumer_info(c.stream, c.consumer)
        except NotFoundError:
            if not c.create:
                raise
            await js.add_consumer(c.stream, ConsumerConfig(
                durable_name=c.consumer, ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL,
                ack_wait=c.ack_wait_s, max_deliver=-1, max_ack_pending=c.max_ack_pending))
            self.transport["consumer_created"] += 1
        return await js.pull_subscribe_bind(c.consumer, c.stream)

    async def _turn(self, nc: Any, psub: Any) -> None:
        refresh = getattr(self.core.trust, "refresh", None)
        if refresh is not None:
            with self._lock:
                refresh()
        wait = max(0.02, min(self.config.fetch_wait_s, self.core.next_acknack_in()))
        msgs: list = []
        try:
            msgs = await psub.fetch(self.batch_max, timeout=wait)
        except TimeoutError:                   # nats.errors.TimeoutError and asyncio's: nothing waiting
            pass
        except Exception as err:  # noqa: BLE001 - node lost / leader election: the client reconnects
            self.transport["fetch_errors"] += 1
            self._log("fetch", logging.WARNING, "relay %s: fetch from stream %s failed (%s: %s); retrying", self.instance,
                                    self.config.stream, type(err).__name__, err)
            await self._sleep(0.2)
        if msgs:
            await self._process(msgs)
        await self._send_acknacks(nc)
        with self._lock:
            self.core.check_silence()

    async def _process(self, msgs: Sequence[Any]) -> None:
        now = time.time()
        items = [Incoming(topic_of(m.subject), bytes(m.data), m, now) for m in msgs]
        self.transport["received"] += len(items)
        self.transport["redelivered"] += sum(1 for m in msgs if _delivered(m) > 1)
        outcomes = await asyncio.to_thread(process_guarded, self.core, items, lock=self._lock,
                                           label=f"relay {self.instance}", transport=self.transport)
        if outcomes is None:                      # not stored: redeliver later, to any relay
            for m in msgs:
                try:
                    await m.nak(delay=min(5.0, self.config.ack_wait_s))
                except Exception:  # noqa: BLE001 - then ack_wait redelivers it
                    pass
            await self._sleep(1.0)
            return
        for o in outcomes:
            try:
                await o.token.ack()
                self.transport["acked"] += 1
            except Exception as err:  # noqa: BLE001 - redelivered after ack_wait: a harmless duplicate
                self.transport["ack_failures"] += 1
                log.debug("relay %s: ack failed: %s", self.instance, err)
        if self.on_outcomes is not None:
            try:
                self.on_outcomes(outcomes)
            except Exception:  # an observer's bug must not stop the relay
                log.exception("relay %s: on_outcomes callback failed", self.instance)

    async def _send_acknacks(self, nc: Any) -> None:
        if self.core.next_acknack_in() > 0:
            return
        with self._lock:
            due = self.core.due_acknacks()
        for topic, _fs, payload in due:
            try:
                await nc.publish(subject_of(topic), payload)
            except Exception as err:  # noqa: BLE001 - the next periodic acknack carries the same state
                self.transport["acknack_publish_failures"] += 1
                log.debug("relay %s: acknack publish failed: %s", self.instance, err)


def _delivered(msg: Any) -> int:
    try:
        return int(msg.metadata.num_delivered)
    except Exception:  # noqa: BLE001 - no JetStream metadata: count as a first delivery
        return 1


__all__ = ["JetStreamConfig", "JetStreamRelay", "stream_subjects", "subject_of", "topic_of"]
