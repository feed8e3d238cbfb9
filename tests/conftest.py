"""Shared test fixtures.

``../shared`` (beside the project root) holds the specs and real sample data; CI clones it there too.
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
