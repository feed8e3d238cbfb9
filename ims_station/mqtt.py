"""MQTT connection management shared by the station uplink and the relay: one paho-mqtt 2.x session.

Owns, for one client (:class:`MqttSession`):

* the paho client's construction: MQTT 5 with ``clean_start=False`` and a session expiry when the
  broker offers it, MQTT 3.1.1 with ``clean_session=False`` otherwise, TLS and username + password
  through :meth:`ims_station.broker.BrokerConfig.apply` (no default credentials), paho's own
  reconnection switched off;
* fail-over along a list of brokers (the next one after a failed attempt), and the MQTT 5 -> 3.1.1
  fall-back, remembered per broker, when a broker accepts TCP (and TLS) but gives no positive CONNACK
  to MQTT 5 (``protocol="auto"``): that broker is tried again at once with 3.1.1 -- it answered, so
  it is not a reason to move to the next broker;
* the connect deadline (``connect_timeout_s`` for the attempt -- name lookup, TCP, TLS, which run
  on a helper thread so that :meth:`MqttSession.stop` never waits for them -- and again for the
  CONNACK), reconnection with exponential backoff and equal jitter (:func:`backoff_delay`), and
  disconnect clean-up (DISCONNECT, one last loop turn, socket closed);
* readiness: :attr:`MqttSession.connected` (and :meth:`MqttSession.wait_connected`) turn true only
  when the broker gave a positive CONNACK *and* acknowledged (SUBACK, success reason codes) every
  SUBSCRIBE the owner sent through :meth:`MqttSession.subscribe` while connecting -- before the
  SUBACK a message published on a subscribed topic may not reach us (a shared subscription, or a
  first connection, has no session at the broker yet);
* the thread that owns the paho client and runs its network loop (``Client.loop``), so every paho
  callback and every publish of the owner happens on that one thread: no locks around paho;
* the transport counters ``connects``, ``connect_failures``, ``disconnects``, ``failovers`` and
  ``protocol_fallbacks``, written into a mapping the owner passes in (its stats stay in one place).

It does not own what is sent or received: the owner (:class:`ims_station.edge.uplink.Uplink`,
:class:`ims_station.relay.relay.Relay`) plugs in through hooks -- client set-up (Last Will, message
callbacks, in-flight window), extra MQTT 5 CONNECT properties, what to do once connected (subscribe,
announce), what a SUBACK means to it (a refused subscription replaced by another), on every loop turn (publish, process, acknowledge), before a requested stop (a goodbye)
and after a connection ended (requeue what the broker never confirmed).  Topic names, outbox,
acknacks, verification and archive stay with the owners.

Why hand-written on top of paho rather than paho's ``loop_start``/``reconnect``: paho reconnects to
the one host it was given and has no broker list (eclipse/paho.mqtt.python issue #308) nor a
protocol-version fall-back; this module adds exactly fail-over and fall-back and leaves the MQTT
protocol itself to paho.

Network deadlines are measured on an injected clock (:class:`ims_station.clock.SystemClock` unless
given): they bound real socket waits inside ``Client.loop``, so they run on real time even when the
owner's data clock is simulated.
"""

from __future__ import annotations

import logging
import random
import threading
from dataclasses import dataclass
from typing import Any, Callable, MutableMapping, Sequence

from ims_station.broker import BrokerConfig
from ims_station.clock import Clock, SystemClock
from ims_station.errors import ImsStationError

log = logging.getLogger(__name__)

PROTOCOLS = ("auto", "5", "3.1.1")
LOOP_TIMEOUT_S = 0.05           # one paho loop turn while connecting (and the owner's default)

__all__ = ["PROTOCOLS", "MqttSession", "MqttSessionError", "SessionOwner", "backoff_delay"]


def _close_quietly(client: Any) -> None:
    """Close the socket of a paho client nobody uses any more (an abandoned connection attempt)."""
    try:
        sock = client.socket()
        if sock is not None:
            sock.close()
    except Exception:  # noqa: BLE001 - it may never have had one
        pass


class MqttSessionError(ImsStationError):
    """An MQTT session was configured wrongly (no brokers, unknown protocol name)."""


def backoff_delay(attempt: int, *, base: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with "equal jitter": half the step fixed, half random, so a fleet of
    clients that lost the same broker does not reconnect in lock-step (and never with zero delay)."""
    step = min(cap, base * (2 ** min(attempt, 30)))
    return step / 2 + rng.uniform(0, step / 2)


def _session_setting(name: str) -> property:
    return property(lambda owner: getattr(owner._mqtt, name),
                    lambda owner, value: setattr(owner._mqtt, name, value),
                    doc=f"The MQTT session's ``{name}`` (read and write).")


class SessionOwner:
    """Mixin for the clients built on a session kept in ``self._mqtt`` (uplink, relay): their
    connection state and settings, with one copy of each setting (in the session)."""

    _mqtt: "MqttSession"

    session_expiry_s = _session_setting("session_expiry_s")
    backoff_base_s = _session_setting("backoff_base_s")
    backoff_max_s = _session_setting("backoff_max_s")
    connect_timeout_s = _session_setting("connect_timeout_s")

    @property
    def connected(self) -> bool:
        """Ready: a positive CONNACK was seen and the broker acknowledged (SUBACK) every subscription
        of this connection, so messages published from now on reach this client."""
        return self._mqtt.connected

    def wait_connected(self, timeout: float | None = 10.0) -> bool:
        """Wait until :attr:`connected` (False after *timeout* seconds)."""
        return self._mqtt.wait_connected(timeout)

    @property
    def running(self) -> bool:
        """The session's thread is alive: started and not stopped (it ends on no error of its own,
        so a dead one is a bug; the daemons' watchdog stops pinging then, ims_station/service.py)."""
        t = self._mqtt.thread
        return t is not None and t.is_alive()


@dataclass
class BrokerState:
    """One broker of the list and the protocol version to try next on it ("5" or "3.1.1")."""

    config: BrokerConfig
    protocol: str


class MqttSession:
    """Keeps one paho client connected to one of *brokers*, and runs the owner's hooks on its thread.

    Hooks (all optional, all called on the session's thread):

    * ``setup(client)`` -- after the client was created and TLS/credentials applied: Last Will,
      ``on_message`` / ``on_publish`` / ``on_subscribe``, in-flight window.  (``on_connect`` and
      ``on_disconnect`` belong to the session.)
    * ``connect_properties(props)`` -- add MQTT 5 CONNECT properties (the session expiry is set).
    * ``on_begin()`` -- before each connection attempt: reset per-connection state.
    * ``on_connected(client, flags)`` -- after a positive CONNACK: subscribe (through
      :meth:`subscribe`, so the SUBACK is awaited), announce.
    * ``on_subscribed(client, mid, reason_codes) -> bool`` -- a SUBACK arrived for a subscription
      sent through :meth:`subscribe`; return True if the connection is usable (default: no reason
      code is a failure).  An owner that replaces a refused subscription (calls :meth:`subscribe`
      again) returns True: readiness then waits for the new SUBACK.
    * ``on_turn(client) -> bool`` -- after each loop turn while connected; False drops the connection
      (the owner wants the broker to redeliver, say).
    * ``loop_timeout() -> float`` -- how long the next loop turn may wait while connected
      (default :data:`LOOP_TIMEOUT_S`).
    * ``on_stop(client)`` -- :meth:`stop` was called while connected: a last turn or a goodbye.
    * ``on_end()`` -- the connection is over (before DISCONNECT is sent): requeue, clean up.

    *counters* receives ``connects``, ``connect_failures``, ``disconnects``, ``failovers`` and
    ``protocol_fallbacks`` increments (a ``dict`` with those keys or a ``Counter``).  *label*
    prefixes every log message (``"uplink STA01"``, ``"relay r1"``) and *logger* is the owner's.
    """

    def __init__(self, brokers: Sequence[BrokerConfig], *, client_name: str, label: str,
                 protocol: str = "auto", session_expiry_s: int = 86400, manual_ack: bool = False,
                 backoff_base_s: float = 0.5, backoff_max_s: float = 60.0, connect_timeout_s: float = 10.0,
                 counters: MutableMapping[str, int] | None = None, rng: random.Random | None = None,
                 clock: Clock | None = None, logger: logging.Logger | None = None,
                 setup: Callable[[Any], None] | None = None,
                 connect_properties: Callable[[Any], None] | None = None,
                 on_begin: Callable[[], None] | None = None,
                 on_connected: Callable[[Any, Any], None] | None = None,
                 on_subscribed: Callable[[Any, int, Any], bool] | None = None,
                 on_turn: Callable[[Any], bool] | None = None,
                 loop_timeout: Callable[[], float] | None = None,
                 on_stop: Callable[[Any], None] | None = None,
                 on_end: Callable[[], None] | None = None) -> None:
        if not brokers:
            raise MqttSessionError(f"{label}: at least one broker is needed")
        if protocol not in PROTOCOLS:
            raise MqttSessionError(f"{label}: protocol must be one of {PROTOCOLS}, not {protocol!r}")
        for b in brokers:
            b.check_secrets()   # a bad key or password file is a start-up error, not a retry loop
        self.brokers = [BrokerState(b, "3.1.1" if protocol == "3.1.1" else "5") for b in brokers]
        self.index = 0
        self.client_name = client_name
        self.label = label
        self.protocol_pref = protocol
        self.session_expiry_s = int(session_expiry_s)
        self.manual_ack = manual_ack
        self.backoff_base_s = float(backoff_base_s)
        self.backoff_max_s = float(backoff_max_s)
        self.connect_timeout_s = float(connect_timeout_s)
        self.counters: MutableMapping[str, int] = counters if counters is not None else dict.fromkeys(
            ("connects", "connect_failures", "disconnects", "failovers", "protocol_fallbacks"), 0)
        self.rng = rng or random.Random()
        self.clock = clock or SystemClock()
        self.log = logger or log
        self._setup = setup
        self._connect_properties = connect_properties
        self._on_begin = on_begin
        self._on_connected = on_connected
        self._on_subscribed = on_subscribed
        self._on_turn = on_turn
        self.clean_next = False             # the next connection starts a clean session (once)
        self._loop_timeout = loop_timeout
        self._on_stop = on_stop
        self._on_end = on_end
        self.client: Any = None                      # the current paho client (session thread only)
        self.thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._link = threading.Event()           # positive CONNACK seen on the current connection
        self._ready = threading.Event()          # ... and every SUBSCRIBE acknowledged (`connected`)
        self._sub_pending: set[int] = set()      # SUBSCRIBE mids without SUBACK (session thread only)
        self._sub_ok = True                      # no refused subscription left unreplaced
        self._connack: int | None = None
        self._fell_back = False                  # the last attempt switched its broker to 3.1.1
        self._attempt_done: threading.Event | None = None   # set to give up the connect in progress

    # -- state ---------------------------------------------------------------------------------------
    @property
    def current(self) -> BrokerState:
        return self.brokers[self.index]

    @property
    def broker(self) -> BrokerConfig:
        """The broker currently used (or tried)."""
        return self.current.config

    @property
    def protocol(self) -> str:
        """The MQTT version used (or tried next) on the current broker: "5" or "3.1.1"."""
        return self.current.protocol

    @property
    def connected(self) -> bool:
        """Ready: positive CONNACK and every subscription of this connection acknowledged (SUBACK)."""
        return self._ready.is_set()

    def wait_connected(self, timeout: float | None) -> bool:
        return self._ready.wait(timeout)

    @property
    def link_up(self) -> bool:
        """A positive CONNACK was seen on the current connection (SUBACKs may still be due)."""
        return self._link.is_set()

    @property
    def subscriptions_settled(self) -> bool:
        """Connected and no SUBACK outstanding (whether each subscription was granted or refused)."""
        return self._link.is_set() and not self._sub_pending

    def subscribe(self, client: Any, topic: str, qos: int = 1) -> int | None:
        """SUBSCRIBE on *client* (session thread only) and hold :attr:`connected` back until its
        SUBACK.  Returns the message id, or None if paho could not send it (the connection is
        going down; the next one subscribes again)."""
        import paho.mqtt.client as mqtt

        rc, mid = client.subscribe(topic, qos=qos)
        if rc != mqtt.MQTT_ERR_SUCCESS or mid is None:
            self.log.warning("%s: could not send SUBSCRIBE %s (rc %s)", self.label, topic, rc)
            return None
        self._sub_pending.add(mid)
        self._ready.clear()
        return mid

    def _update_ready(self) -> None:
        if self._link.is_set() and not self._sub_pending and self._sub_ok:
            self._ready.set()
        else:
            self._ready.clear()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # -- thread ---------------------------------------------------------------------------------------
    def start(self, thread_name: str) -> bool:
        """Run :meth:`run` on a daemon thread.  False (and nothing done) if it already runs."""
        if self.thread is not None:
            return False
        self._stop.clear()
        self.thread = threading.Thread(target=self.run, name=thread_name, daemon=True)
        self.thread.start()
        return True

    def request_stop(self) -> None:
        """Ask the session to end, without waiting: a backoff wait or a connection attempt in
        progress is given up at once (see :meth:`_connect`), a connection ends after its loop turn."""
        self._stop.set()
        attempt = self._attempt_done
        if attempt is not None:
            attempt.set()

    def stop(self, timeout: float = 10.0) -> None:
        """End the session (``on_stop`` runs first if connected) and join the thread (up to *timeout*)."""
        self.request_stop()
        if self.thread is not None:
            self.thread.join(timeout)
            if not self.thread.is_alive():
                self.thread = None        # (still running after *timeout*: :attr:`running` says so)

    def run(self) -> None:
        """Connect, stay connected, fail over and back off until :meth:`stop` (on the calling thread)."""
        attempt = 0
        while not self._stop.is_set():
            try:
                got_connected = self._session(self.current)
            except Exception:  # never let the thread die: the owner's data is safe, retry later
                self.log.exception("%s: unexpected error in the MQTT session", self.label)
                got_connected = False
            if self._stop.is_set():
                break
            if got_connected:
                attempt = 0          # lost a working connection: first try the same broker again
            elif self._fell_back:
                self.counters["connect_failures"] += 1      # same broker again, now with 3.1.1
            else:
                attempt += 1
                self.counters["connect_failures"] += 1
                if len(self.brokers) > 1:
                    self.index = (self.index + 1) % len(self.brokers)
                    self.counters["failovers"] += 1
            self._stop.wait(backoff_delay(attempt, base=self.backoff_base_s, cap=self.backoff_max_s,
                                          rng=self.rng))

    # -- one connection -------------------------------------------------------------------------------
    def _make_client(self, state: BrokerState, clean: bool = False) -> Any:
        import paho.mqtt.client as mqtt

        kw: dict[str, Any] = ({"protocol": mqtt.MQTTv5} if state.protocol == "5"
                              else {"protocol": mqtt.MQTTv311, "clean_session": clean})
        if self.manual_ack:
            kw["manual_ack"] = True
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=state.config.client_id(self.client_name),
                             reconnect_on_failure=False, **kw)
        state.config.apply(client)
        if self._setup is not None:
            self._setup(client)
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_subscribe = self._handle_subscribe
        return client

    def _session(self, state: BrokerState) -> bool:
        """One connection attempt and, if it succeeds, its lifetime.  True if CONNACK was positive."""
        import paho.mqtt.client as mqtt

        self._fell_back = False
        # clean_next: the owner asked to drop the broker's session once (a session that a clustered
        # broker keeps after a fail-over without delivering to it; edge/uplink.py acknack_stall_s).
        clean, self.clean_next = self.clean_next, False
        client = self._make_client(state, clean)
        self.client = client
        self._connack = None
        self._link.clear()
        self._ready.clear()
        self._sub_pending.clear()
        self._sub_ok = True
        if self._on_begin is not None:
            self._on_begin()
        b = state.config
        kw: dict[str, Any] = {}
        if state.protocol == "5":
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.session_expiry_s
            if self._connect_properties is not None:
                self._connect_properties(props)
            kw = {"clean_start": clean, "properties": props}
        err = self._connect(client, b.host, b.port, b.keepalive, kw)
        if err is not None:
            if not self._stop.is_set():
                self.log.info("%s: cannot connect to %s:%s: %s", self.label, b.host, b.port, err)
            return False
        deadline = self.clock.monotonic() + self.connect_timeout_s
        ever_connected = False
        try:
            while True:
                wait = LOOP_TIMEOUT_S
                if self._loop_timeout is not None and self._link.is_set():
                    wait = self._loop_timeout()
                rc = client.loop(timeout=wait)
                if self._stop.is_set():
                    if self._link.is_set() and self._on_stop is not None:
                        self._on_stop(client)
                    break
                if rc != mqtt.MQTT_ERR_SUCCESS:
                    break
                if self._link.is_set():
                    ever_connected = True
                    if self._on_turn is not None and not self._on_turn(client):
                        break
                elif self._connack is not None or self.clock.monotonic() > deadline:
                    break      # refused, or no CONNACK in time
        finally:
            if self._link.is_set() or ever_connected:
                self.counters["disconnects"] += 1
            self._link.clear()
            self._ready.clear()
            if self._on_end is not None:
                try:
                    self._on_end()
                except Exception:
                    self.log.exception("%s: clean-up after the connection failed", self.label)
            try:
                client.disconnect()
            except Exception:  # noqa: BLE001 - the socket may already be gone
                pass
            try:
                client.loop(timeout=0.01)
                client.socket() and client.socket().close()
            except Exception:  # noqa: BLE001
                pass
        if not ever_connected and state.protocol == "5" and self.protocol_pref == "auto":
            # TCP (and TLS) worked but no positive CONNACK with MQTT 5: a 3.1.1-only broker refuses
            # the version (CONNACK 1) or just closes.  Fall back to 3.1.1 for this broker.
            state.protocol = "3.1.1"
            self._fell_back = True
            self.counters["protocol_fallbacks"] += 1
            self.log.info("%s: %s:%s refused MQTT 5, using 3.1.1", self.label, b.host, b.port)
        return ever_connected

    def _connect(self, client: Any, host: str, port: int, keepalive: int, kw: dict) -> BaseException | None:
        """``client.connect`` -- name lookup, TCP connect, TLS handshake, CONNECT sent -- on a
        helper thread, so that :meth:`stop` does not wait for it: each of those steps blocks in
        the C library (``getaddrinfo`` has no timeout of ours at all; paho gives TCP and TLS its
        own 5 s each) and none of them can be interrupted from Python.  The session waits for the
        attempt until it ends, :meth:`stop` is called, or ``connect_timeout_s`` passes; an
        attempt given up this way is left to end by itself on its daemon thread, which then closes
        whatever socket it got (the client is used by nobody else).  Returns None when connected
        (CONNECT sent), else the reason."""
        lock = threading.Lock()
        done = threading.Event()
        state: dict[str, Any] = {"finished": False, "abandoned": False, "error": None}

        def attempt() -> None:
            try:
                client.connect(host, port, keepalive, **kw)
            except BaseException as e:  # noqa: BLE001 - handed to the session (or dropped with it)
                state["error"] = e
            with lock:
                state["finished"] = True
                abandoned = state["abandoned"]
            done.set()
            if abandoned:
                _close_quietly(client)

        self._attempt_done = done
        threading.Thread(target=attempt, name=f"{threading.current_thread().name}-connect", daemon=True).start()
        if not self._stop.is_set():
            done.wait(self.connect_timeout_s)        # also set by stop()
        self._attempt_done = None
        with lock:
            finished = state["finished"]
            state["abandoned"] = not finished
        if not finished:
            return TimeoutError("stopping" if self._stop.is_set() else
                                f"no connection within {self.connect_timeout_s:g} s (name lookup, TCP, TLS)")
        err = state["error"]
        if err is None or isinstance(err, (OSError, ValueError)):
            return err
        raise err

    # -- paho callbacks (on the session thread, inside client.loop) --------------------------------------
    def _handle_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connack = 0 if not reason_code.is_failure else (reason_code.value or 1)
        if reason_code.is_failure:
            self.log.warning("%s: connection refused: %s", self.label, reason_code)
            return
        self.counters["connects"] += 1
        self._link.set()
        if self._on_connected is not None:
            self._on_connected(client, flags)
        self._update_ready()          # at once if the owner subscribed nothing, else at the last SUBACK

    def _handle_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        if mid not in self._sub_pending:
            return                    # not ours (sent before this connection, or outside subscribe())
        self._sub_pending.discard(mid)
        if self._on_subscribed is not None:
            ok = bool(self._on_subscribed(client, mid, reason_codes))
        else:
            ok = not any(rc.is_failure for rc in reason_codes)
        if not ok:
            self._sub_ok = False
            self.log.error("%s: broker refused a subscription (%s); not ready on this connection",
                           self.label, ", ".join(str(rc) for rc in reason_codes))
        self._update_ready()

    def _handle_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._link.clear()
        self._ready.clear()
