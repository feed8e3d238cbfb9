"""Fixtures shared by the firmware tests: the golden vectors and the frozen sim board."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ims_station import boards

HERE = Path(__file__).resolve().parent
FIRMWARE = HERE.parent.parent / "firmware"


@pytest.fixture(scope="session")
def vectors() -> dict:
    return json.loads((HERE / "vectors.json").read_text())


@pytest.fixture(scope="session")
def sim_board() -> dict:
    return boards.load_board("sim")
