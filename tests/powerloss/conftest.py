"""Fixtures of the power-loss tests: a FUSE mount that works here (or the prerequisite rule)."""

from __future__ import annotations

import pytest

from tests.conftest import missing_prerequisite, need_fuse
from tests.powerloss.harness import HarnessError, PowerDisk


@pytest.fixture(scope="session")
def powerfs_works(tmp_path_factory) -> None:
    """Mount powerfs once: the helpers can be present and the kernel still refuse the mount (a
    container without the FUSE capability)."""
    need_fuse()
    disk = PowerDisk(tmp_path_factory.mktemp("powerfs-probe"))
    try:
        with disk.mounted() as mnt:
            (mnt / "probe").write_bytes(b"x")
    except HarnessError as err:
        missing_prerequisite("a FUSE mount that works", f"powerfs could not be mounted: {err}")


@pytest.fixture
def disk(tmp_path, powerfs_works) -> PowerDisk:
    return PowerDisk(tmp_path)
