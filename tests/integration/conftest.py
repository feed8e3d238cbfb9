"""Helpers for the end-to-end tests: an MQTT collector that waits for messages on events (never a
fixed sleep) and a bounded poll for state that has no event.  The brokers on free ports come from
the shared fixtures in tests/conftest.py."""

from __future__ import annotations

import queue
import uuid

# The brokers (``mosquitto``, ``mosquitto_session``, ``embedded``) are fixtures of tests/conftest.py.


def wait_until(predicate, timeout: float = 10.0, what: str = "condition"):
    """Poll *predicate* with a short pause until it is true (for state that has no event to wait on,
    such as a file another process writes)."""
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


class Collector:
    """A paho client that records what it receives; ``get()`` blocks until a message arrives."""

    def __init__(self, host: str, port: int, *, client_id: str | None = None, clean: bool = True,
                 protocol=None, username: str | None = None, password: str | None = None, tls_ca=None) -> None:
        import paho.mqtt.client as mqtt

        self.q: queue.Queue = queue.Queue()
        self.subscribed: queue.Queue = queue.Queue()
        self.connected: queue.Queue = queue.Queue()
        protocol = protocol or mqtt.MQTTv311
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"c-{uuid.uuid4().hex[:8]}",
                                  clean_session=None if protocol == mqtt.MQTTv5 else clean, protocol=protocol)
        if username:
            self.client.username_pw_set(username, password)
        if tls_ca:
            self.client.tls_set(ca_certs=str(tls_ca))
        self.client.on_message = lambda c, u, m: self.q.put((m.topic, m.payload, m.retain))
        self.client.on_subscribe = lambda c, u, mid, rcs, props: self.subscribed.put(rcs)
        self.client.on_connect = lambda c, u, flags, rc, props: self.connected.put((flags, rc))
        self.host, self.port = host, port

    def connect(self, timeout: float = 10.0):
        self.client.connect(self.host, self.port, keepalive=30)
        self.client.loop_start()
        flags, rc = self.connected.get(timeout=timeout)
        return flags, rc

    def subscribe(self, topic: str, qos: int = 1, timeout: float = 10.0):
        self.client.subscribe(topic, qos)
        return self.subscribed.get(timeout=timeout)

    def get(self, timeout: float = 10.0):
        return self.q.get(timeout=timeout)

    def empty(self) -> bool:
        return self.q.empty()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
