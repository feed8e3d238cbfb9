"""Fixtures for the uplink tests: a settable clock (:class:`ims_station.clock.FakeClock`) and a real
Mosquitto on a free port.

The broker comes from :mod:`ims_station.broker` (M's module): the same code the demo and the
integration tests use.
"""

from __future__ import annotations

import pytest

from ims_station.clock import FakeClock


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
