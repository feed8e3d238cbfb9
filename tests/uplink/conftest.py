"""Fixtures for the uplink tests: a settable clock (:class:`ims_station.clock.FakeClock`).  The real
Mosquitto on a free port is the shared ``mosquitto`` fixture of tests/conftest.py."""

from __future__ import annotations

import pytest

from ims_station.clock import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
