"""Shared test fixtures.

``../shared`` (beside the project root) holds the specs and real sample data; CI clones it there too.

MQTT brokers (one definition for every test package; the same :mod:`ims_station.broker` code the
demo uses):

* ``mosquitto`` -- a real Mosquitto on a free port, started for one test and stopped after it.  Use
  it when the test stops, kills or restarts the broker, or relies on a clean broker: persistent
  sessions under fixed client ids (relay, uplink), retained messages, queued QoS 1 messages.
* ``mosquitto_session`` -- one Mosquitto for the whole run, for tests that only need *a* broker
  and leave nothing behind that another test could see: unique client ids, clean sessions, their
  own topics, no stop/kill/restart.  Saves a broker start per test.
* ``embedded`` -- the embedded amqtt broker (the demo's fall-back when Mosquitto is absent), per test.

A missing Mosquitto or amqtt is a failure, not a skip: CI installs both (``./run``).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("IMS_SHARED", ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    assert SHARED.is_dir(), f"shared data not found at {SHARED} (set IMS_SHARED)"
    return SHARED


@pytest.fixture(scope="session")
def cd11_samples(shared_dir: Path) -> Path:
    return shared_dir / "samples" / "cd11"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _need_mosquitto() -> None:
    from ims_station.broker import find_mosquitto

    if find_mosquitto() is None:  # pragma: no cover - CI installs it (./run installs it with apt)
        pytest.fail("these tests need mosquitto (apt-get install mosquitto; ./run installs it)")


@pytest.fixture
def mosquitto(tmp_path):
    """A Mosquitto of this test alone (may be stopped, killed, restarted)."""
    from ims_station.broker import MosquittoBroker

    _need_mosquitto()
    with MosquittoBroker(tmp_path / "broker") as b:
        yield b


@pytest.fixture(scope="session")
def mosquitto_session(tmp_path_factory):
    """One Mosquitto shared by the run: never stop it, use unique client ids and your own topics."""
    from ims_station.broker import MosquittoBroker

    _need_mosquitto()
    with MosquittoBroker(tmp_path_factory.mktemp("mosquitto-session")) as b:
        yield b


@pytest.fixture
def embedded(tmp_path):
    """The embedded amqtt broker (MQTT 3.1.1 only, no shared subscriptions), for this test."""
    from ims_station.broker import EmbeddedBroker, embedded_available

    if not embedded_available():
        pytest.fail("amqtt is not installed: pip install -e .[embedded]")
    with EmbeddedBroker(tmp_path / "embedded", host="127.0.0.1", port=None) as b:
        yield b
