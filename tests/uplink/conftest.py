"""Fixtures for the uplink tests: a settable clock and a real Mosquitto on a free port.

The broker comes from :mod:`ims_station.broker` (M's module): the same code the demo and the
integration tests use.
"""

from __future__ import annotations

import pytest


class FakeClock:
    """``time()`` (UTC seconds) and ``monotonic()`` that move only when the test says so."""

    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = float(t)
        self.m = 1000.0

    def time(self) -> float:
        return self.t

    def monotonic(self) -> float:
        return self.m

    def advance(self, dt: float) -> None:
        self.t += dt
        self.m += dt


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def mosquitto(tmp_path):
    from ims_station.broker import MosquittoBroker, find_mosquitto

    if find_mosquitto() is None:  # pragma: no cover - CI installs it (./run installs it with apt)
        pytest.fail("these tests need mosquitto (apt-get install mosquitto)")
    with MosquittoBroker(tmp_path / "broker") as b:
        yield b
