"""Fixtures of the IMS 2.0 codec tests: the real sample files in ../shared/samples/ims20/."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import SHARED

SAMPLES = SHARED / "samples" / "ims20"
SAMPLE_FILES = sorted(SAMPLES.glob("*.PHD"))


@pytest.fixture(scope="session")
def ims20_samples(shared_dir) -> list[Path]:
    files = sorted((shared_dir / "samples" / "ims20").glob("*.PHD"))
    assert files, f"no IMS 2.0 sample in {shared_dir / 'samples' / 'ims20'}"
    return files


@pytest.fixture(scope="session")
def sample_phd(shared_dir) -> Path:
    """The real FULL SAMPLEPHD of MIX58."""
    return shared_dir / "samples" / "ims20" / "SAMPLE20211203070613605.PHD"
