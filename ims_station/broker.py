"""MQTT broker connection settings, and throw-away brokers for tests and the demo.

This module owns:

* :class:`BrokerConfig` -- how a client (the edge uplink, the relay) reaches one broker: host, port,
  TLS (CA, client certificate and key), username + password file, client-id prefix, keepalive.  One
  definition shared by the uplink and the relay, with :meth:`BrokerConfig.apply` to set up a
  ``paho.mqtt.client.Client`` and :meth:`BrokerConfig.from_mapping` for TOML sections.
* :class:`MosquittoBroker` -- a real Mosquitto started from a generated configuration on a free
  127.0.0.1 port inside a temporary directory, with persistence on (a graceful restart keeps queued
  QoS 1 messages of persistent sessions), and ``stop()`` (SIGTERM: Mosquitto saves its database),
  ``kill()`` (SIGKILL: the broker loses whatever it had not autosaved), ``restart()`` on the same port.
* :class:`EmbeddedBroker` -- the fallback when Mosquitto is not installed: amqtt (pure Python, from
  PyPI) run in a child process with the same start/stop/kill/restart surface.
* :func:`start_broker` -- picks Mosquitto when installed, the embedded broker otherwise.

Each broker exposes :class:`Capabilities`, because the fallback is weaker and callers must adapt
rather than discover it by losing data:

=====================  =========  ==========================================================
capability             Mosquitto  amqtt 0.12 (embedded)
=====================  =========  ==========================================================
QoS 1                  yes        yes
persistent sessions    yes        in memory, only for clients that give a username
retained messages      yes        yes, in memory only
MQTT 5                 yes        no (3.1.1 only)
shared subscriptions   yes        no -> the relay subscribes to ``{p}/+/cd11`` without ``$share``
survives restart       yes        no -> the edge outbox + relay acknack resend cover the loss
queued QoS 1 delivery  retain=0   delivered with the retain flag set (amqtt quirk; ignore it on
                                  the cd11 / acknack topics)
=====================  =========  ==========================================================

What it does not own: the topic layout (``ims_station.topics``), the uplink and relay clients, and
production broker configuration (``docs/mosquitto/``).  Durability of the data never rests on the
broker: the outbox keeps every frame until the relay's acknack covers it (peers.md §3 lists how
brokers lose queued messages).

Hand-written on purpose: starting a subprocess on a free port and waiting for its listener is a few
lines; pytest plugins that do it (pytest-mqtt, testcontainers) either need Docker or cannot be used
outside pytest, and the demo needs the same code as the tests.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ims_station.errors import ConfigError, ImsStationError

MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


class BrokerError(ImsStationError):
    """A broker could not be started, or stopped responding."""


# ---------------------------------------------------------------------------------------------
# client side


@dataclass(frozen=True)
class BrokerConfig:
    """How one MQTT client reaches one broker.  No default credentials: a broker that needs a
    password gets it from ``password_file`` (mode 0600, read with
    :func:`ims_station.config.read_secret_file`)."""

    host: str = "127.0.0.1"
    port: int = 1883
    tls_ca: str | None = None          # CA bundle (PEM) that signed the broker's certificate
    tls_cert: str | None = None        # client certificate (PEM), for certificate authentication
    tls_key: str | None = None         # client private key (PEM, mode 0600)
    username: str | None = None
    password_file: str | None = None   # one line, the password; mode 0600
    client_id_prefix: str = "ims"
    keepalive: int = 30

    @property
    def tls(self) -> bool:
        return self.tls_ca is not None

    def client_id(self, name: str) -> str:
        return f"{self.client_id_prefix}-{name}" if self.client_id_prefix else name

    def password(self) -> str | None:
        if self.password_file is None:
            return None
        from ims_station.config import read_secret_file

        raw = read_secret_file(self.password_file, what="MQTT password", min_bytes=1, max_bytes=4096)
        return raw.decode("utf-8").strip("\r\n")

    def check_secrets(self) -> None:
        """Read the password file and the TLS client key now, so a missing or world-readable file
        stops the start-up with a :class:`~ims_station.errors.KeyFileError` naming it, instead of
        failing every reconnect later on the session thread."""
        if self.tls_key is not None:
            from ims_station.config import read_secret_file

            read_secret_file(self.tls_key, what="TLS client key", min_bytes=32)
        self.password()

    def apply(self, client: Any) -> None:
        """Configure TLS and credentials on a ``paho.mqtt.client.Client`` (before ``connect``)."""
        if self.tls:
            import ssl

            if self.tls_key is not None:
                # Refuse a client key that other users can read (same rule as every key file).
                from ims_station.config import read_secret_file

                read_secret_file(self.tls_key, what="TLS client key", min_bytes=32)
            client.tls_set(ca_certs=self.tls_ca, certfile=self.tls_cert, keyfile=self.tls_key,
                           cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        if self.username is not None:
            client.username_pw_set(self.username, self.password())

    def with_port(self, port: int) -> "BrokerConfig":
        return dataclasses.replace(self, port=port)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, file: str = "<config>", key: str = "broker") -> "BrokerConfig":
        """Build from a TOML table (keys = field names).  Unknown keys and wrong types are
        :class:`ConfigError` naming file and key; relative paths stay as given (the caller resolves
        them against the config file's folder)."""
        names = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for k, v in data.items():
            if k not in names:
                raise ConfigError(file, f"{key}.{k}", "unknown key (allowed: " + ", ".join(sorted(names)) + ")")
            want = int if k in ("port", "keepalive") else str
            if not isinstance(v, want) or isinstance(v, bool):
                raise ConfigError(file, f"{key}.{k}", f"must be {'an integer' if want is int else 'a string'}")
            kwargs[k] = v
        cfg = cls(**kwargs)
        if not 0 < cfg.port < 65536:
            raise ConfigError(file, f"{key}.port", f"{cfg.port} is not a TCP port")
        if (cfg.tls_cert is None) != (cfg.tls_key is None):
            raise ConfigError(file, f"{key}.tls_cert", "tls_cert and tls_key go together")
        if cfg.tls_cert is not None and cfg.tls_ca is None:
            raise ConfigError(file, f"{key}.tls_ca", "a client certificate needs tls_ca (the broker's CA)")
        if cfg.password_file is not None and cfg.username is None:
            raise ConfigError(file, f"{key}.username", "password_file given without username")
        return cfg


# ---------------------------------------------------------------------------------------------
# throw-away brokers


@dataclass(frozen=True)
class Capabilities:
    name: str
    mqtt5: bool
    shared_subscriptions: bool
    survives_restart: bool          # queued QoS 1 messages / sessions / retained kept across restart
    retained: bool = True
    persistent_sessions: bool = True


MOSQUITTO_CAPS = Capabilities("mosquitto", mqtt5=True, shared_subscriptions=True, survives_restart=True)
EMBEDDED_CAPS = Capabilities("amqtt", mqtt5=False, shared_subscriptions=False, survives_restart=False)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def find_mosquitto() -> str | None:
    """Path of the mosquitto executable (``/usr/sbin`` is often not on a user's PATH)."""
    for p in MOSQUITTO_PATHS:
        if os.access(p, os.X_OK):
            return p
    return shutil.which("mosquitto")


# MQTT 3.1.1 CONNECT, clean session, keepalive 5 s, client id "ims-probe" (spec §3.1); the broker
# answers CONNACK (0x20) whatever it thinks of us, which proves an MQTT broker owns the port (a bare
# TCP accept could come from another program, or from the socket of a process already dying).
_PROBE_CONNECT = bytes([0x10, 21, 0, 4]) + b"MQTT" + bytes([4, 0x02, 0, 5, 0, 9]) + b"ims-probe"
_DISCONNECT = bytes([0xE0, 0])


def _probe(host: str, port: int, mqtt: bool) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0) as s:
            if not mqtt:
                return True
            s.sendall(_PROBE_CONNECT)
            head = s.recv(4)
            if len(head) >= 2 and head[0] == 0x20:
                try:
                    s.sendall(_DISCONNECT)
                except OSError:
                    pass
                return True
            return False
    except OSError:
        return False


def wait_listening(host: str, port: int, *, proc: subprocess.Popen | None = None, timeout: float = 10.0,
                   what: str = "broker", mqtt: bool = False) -> None:
    """Return as soon as *host:port* accepts TCP connections (and, with *mqtt*, answers an MQTT
    CONNECT with a CONNACK).  Polls with a short, growing pause (1 ms -> 20 ms) so a fast start costs
    a few ms; fails early if *proc* died."""
    deadline = time.monotonic() + timeout
    pause = 0.001
    while True:
        if proc is not None and proc.poll() is not None:
            raise BrokerError(f"{what} exited with status {proc.returncode} before listening on {host}:{port}")
        if _probe(host, port, mqtt):
            return
        if time.monotonic() > deadline:
            raise BrokerError(f"{what} not listening on {host}:{port} after {timeout:.0f} s")
        time.sleep(pause)
        pause = min(pause * 2, 0.02)


class _ProcessBroker:
    """Start/stop/kill/restart of a broker child process listening on fixed ports."""

    caps: Capabilities

    def __init__(self, workdir: str | os.PathLike[str] | None, *, host: str, port: int | None) -> None:
        self._own_dir = workdir is None
        self.dir = Path(tempfile.mkdtemp(prefix="ims-broker-") if workdir is None else workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.port = port or free_port(host)
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    # subclasses
    def _command(self) -> list[str]:
        raise NotImplementedError

    def _ready_ports(self) -> list[tuple[int, bool]]:
        """(port, speaks plain MQTT) pairs to wait for after a start."""
        return [(self.port, True)]

    @property
    def config(self) -> BrokerConfig:
        """Client settings for the plain listener of this broker."""
        return BrokerConfig(host=self.host, port=self.port)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def log_path(self) -> Path:
        return self.dir / "broker.log"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self) -> "_ProcessBroker":
        if self.running:
            return self
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self._command(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=self.dir, start_new_session=True)
        try:
            for p, plain in self._ready_ports():
                wait_listening(self.host, p, proc=self.proc, what=self.caps.name, mqtt=plain)
        except BrokerError as err:
            self.kill()
            raise BrokerError(f"{err}; log {self.log_path}:\n{self.log_text()[-2000:]}") from None
        self.starts += 1
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGTERM): Mosquitto writes its persistence database before exiting."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: a crash; whatever the broker had not saved is gone."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc = None

    def restart(self) -> "_ProcessBroker":
        self.stop()
        return self.start()

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<{type(self).__name__} {self.host}:{self.port} {state} dir={self.dir}>"


class MosquittoBroker(_ProcessBroker):
    """A real Mosquitto on a free port with a generated configuration.

    ``conf`` replaces the generated configuration entirely (used by the TLS/ACL test, which runs the
    configuration from ``docs/mosquitto/``); then ``ready_ports`` names the ports to wait for (TCP
    accept only, since they may be TLS listeners).
    ``autosave_interval`` (seconds) bounds what a SIGKILLed broker loses; a graceful stop loses
    nothing.  ``max_queued`` is raised far above Mosquitto's default 1000 because Mosquitto drops the
    *newest* message of a full session queue (peers.md §3); the outbox would resend it, but a test
    should see the broker behave like a correctly sized production one.
    """

    caps = MOSQUITTO_CAPS

    def __init__(self, workdir: str | os.PathLike[str] | None = None, *, host: str = "127.0.0.1",
                 port: int | None = None, executable: str | None = None, conf: str | None = None,
                 ready_ports: list[int] | None = None, autosave_interval: int = 30,
                 max_queued: int = 100_000, extra: str = "") -> None:
        super().__init__(workdir, host=host, port=port)
        exe = executable or find_mosquitto()
        if exe is None:
            raise BrokerError("mosquitto is not installed (apt-get install mosquitto); "
                              "use start_broker() to fall back to the embedded broker")
        self.executable = exe
        self._conf = conf
        self._ready = ready_ports
        self.autosave_interval = autosave_interval
        self.max_queued = max_queued
        self.extra = extra
        self.conf_path = self.dir / "mosquitto.conf"

    def _ready_ports(self) -> list[tuple[int, bool]]:
        # Ports of a caller's configuration may be TLS listeners: TCP accept only.
        return [(p, False) for p in self._ready] if self._ready else [(self.port, True)]

    def generated_conf(self) -> str:
        lines = [
            "# generated by ims_station.broker for a test / demo instance",
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {self.dir}/",
            "persistence_file mosquitto.db",
            f"autosave_interval {self.autosave_interval}",
            f"max_queued_messages {self.max_queued}",
            "max_queued_bytes 0",
            "max_inflight_messages 100",
            "set_tcp_nodelay true",
            "log_dest stdout",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            # Started as root, Mosquitto switches to user "mosquitto", which cannot write the
            # persistence file in our temporary directory; a test broker stays the caller's user.
            lines.append("user root")
        if self.extra:
            lines.append(self.extra)
        return "\n".join(lines) + "\n"

    def _command(self) -> list[str]:
        self.conf_path.write_text(self._conf if self._conf is not None else self.generated_conf())
        return [self.executable, "-c", str(self.conf_path)]


class EmbeddedBroker(_ProcessBroker):
    """amqtt in a child process (``python -m ims_station.broker --embedded PORT``): the same
    start/stop/kill/restart surface as :class:`MosquittoBroker` with weaker guarantees
    (:data:`EMBEDDED_CAPS`): no shared subscriptions, MQTT 3.1.1 only, nothing survives a restart."""

    caps = EMBEDDED_CAPS
    USERNAME = "ims-embedded"

    @property
    def config(self) -> BrokerConfig:
        """Clients must give a username (any; no password): amqtt keeps the offline QoS 1 queue only
        for sessions that are not anonymous."""
        return BrokerConfig(host=self.host, port=self.port, username=self.USERNAME)

    def _command(self) -> list[str]:
        return [sys.executable, "-m", "ims_station.broker", "--embedded", str(self.port), "--host", self.host]


def embedded_available() -> bool:
    try:
        import amqtt  # noqa: F401
    except ImportError:
        return False
    return True


def start_broker(prefer: str = "mosquitto", workdir: str | os.PathLike[str] | None = None,
                 **kwargs: Any) -> _ProcessBroker:
    """Start a broker for tests and the demo: Mosquitto when installed (``prefer="mosquitto"``),
    the embedded amqtt broker otherwise or when ``prefer="embedded"``.  Check ``broker.caps``."""
    if prefer not in ("mosquitto", "embedded"):
        raise ValueError(f"prefer must be 'mosquitto' or 'embedded', not {prefer!r}")
    if prefer == "mosquitto" and find_mosquitto() is not None:
        return MosquittoBroker(workdir, **kwargs).start()
    if not embedded_available():
        raise BrokerError("no MQTT broker available: install mosquitto (apt-get install mosquitto) "
                          "or the embedded fallback (pip install amqtt)")
    return EmbeddedBroker(workdir, host=kwargs.get("host", "127.0.0.1"), port=kwargs.get("port")).start()


def _run_embedded(host: str, port: int) -> None:  # pragma: no cover - runs in the child process
    import asyncio
    import logging

    from amqtt.broker import Broker

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        # amqtt drops the offline queue of *anonymous* sessions (its broker.py: "no expectation that
        # messages should be retained"), and with allow_anonymous every session counts as anonymous.
        # So: anonymous refused, any client that names a username accepted without a password check
        # -- acceptable for a broker bound to 127.0.0.1 that serves tests and the demo only.
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": False}},
    }

    async def main() -> None:
        broker = Broker(config)
        await broker.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        await stop.wait()
        await broker.shutdown()

    asyncio.run(main())


if __name__ == "__main__":  # pragma: no cover
    import argparse

    ap = argparse.ArgumentParser(prog="python -m ims_station.broker")
    ap.add_argument("--embedded", type=int, metavar="PORT", required=True, help="run the amqtt broker on PORT")
    ap.add_argument("--host", default="127.0.0.1")
    a = ap.parse_args()
    _run_embedded(a.host, a.embedded)
