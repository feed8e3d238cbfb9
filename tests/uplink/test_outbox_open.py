"""Opening the outbox: a damaged, read-only, missing or busy store is refused with an OutboxOpenError
that names the file and the fix, and the file is left byte for byte as it was."""

from __future__ import annotations

import os
import sqlite3
import subprocess

import pytest

from ims_station.edge.outbox import (Outbox, OutboxCorruptError, OutboxLockedError, OutboxOpenError)

FS = "STA01:0"


def make(path, clock) -> Outbox:
    return Outbox(path, max_bytes=10_000_000, max_age_s=1e12, clock=clock)


def filled(tmp_path, clock, frames: int = 40):
    """A closed outbox holding *frames* 3-KB frames (spread over many pages)."""
    path = tmp_path / "outbox.sqlite"
    box = make(path, clock)
    for seq in range(frames):
        box.put("cd11", FS, seq, clock.t, os.urandom(3000))
    box.close()
    return path


def refused(path, clock, exc=OutboxOpenError, match: str = ""):
    """Opening *path* raises *exc* naming the file; the file's bytes are unchanged."""
    before = path.read_bytes() if path.is_file() else None
    with pytest.raises(exc, match=match) as info:
        make(path, clock)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    if before is not None:
        assert path.read_bytes() == before
    return info.value


def test_not_a_database_is_refused_untouched(tmp_path, clock):
    path = tmp_path / "outbox.sqlite"
    path.write_bytes(os.urandom(8192))
    err = refused(path, clock, OutboxCorruptError, "damaged")
    assert ".recover" in str(err) and "aside" in str(err)


def test_truncated_outbox_is_refused_untouched(tmp_path, clock):
    path = filled(tmp_path, clock)
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)
    refused(path, clock, OutboxCorruptError, "truncated")


def test_malformed_frame_index_is_refused_untouched(tmp_path, clock):
    path = filled(tmp_path, clock)
    db = sqlite3.connect(path)
    root = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'frames'").fetchone()[0]
    page = db.execute("PRAGMA page_size").fetchone()[0]
    db.close()
    with open(path, "r+b") as f:            # the frames table's root page: garbage
        f.seek((root - 1) * page)
        f.write(b"\xa5" * page)
    refused(path, clock, OutboxCorruptError, "damaged")


def test_another_programs_database_is_refused_untouched(tmp_path, clock):
    path = tmp_path / "outbox.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE accounts (name TEXT)")
    db.commit()
    db.close()
    refused(path, clock, OutboxCorruptError, "not an outbox")


def test_missing_database_is_created_and_its_directory_too_if_the_parent_exists(tmp_path, clock):
    box = make(tmp_path / "spool" / "outbox.sqlite", clock)
    assert box.put("cd11", FS, 1, clock.t, b"x")
    box.close()


def test_missing_directory_tree_is_refused(tmp_path, clock):
    # /mnt/sd/ims/outbox.sqlite with the card not mounted: do not write to the root file system.
    err = refused(tmp_path / "mnt" / "ims" / "outbox.sqlite", clock, OutboxOpenError, "does not exist")
    assert str(tmp_path / "mnt" / "ims") in str(err)
    assert not (tmp_path / "mnt").exists()


def test_missing_database_beside_its_wal_is_refused(tmp_path, clock):
    path = filled(tmp_path, clock)
    os.replace(path, tmp_path / "elsewhere.sqlite")
    (tmp_path / "outbox.sqlite-wal").write_bytes(b"\x37\x7f\x06\x82" + os.urandom(60))
    refused(path, clock, OutboxOpenError, "write-ahead log")
    assert not path.exists()


@pytest.fixture
def ro_fs(tmp_path):
    """A real file system remounted read-only (an SD card the kernel remounted after errors)."""
    from tests.conftest import need_root

    need_root("mounting a tmpfs and remounting it read-only (CI runs as root)")
    mnt = tmp_path / "ro"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_read_only_outbox_is_refused_untouched(ro_fs, clock):
    path = filled(ro_fs, clock, frames=5)
    subprocess.run(["mount", "-o", "remount,ro", str(ro_fs)], check=True)
    err = refused(path, clock, OutboxOpenError, "read-only")
    assert not isinstance(err, OutboxCorruptError)


def test_second_outbox_on_the_same_file_is_refused_naming_the_holder(tmp_path, clock):
    path = tmp_path / "outbox.sqlite"
    first = make(path, clock)
    err = refused(path, clock, OutboxLockedError, f"in use by process {os.getpid()}")
    assert err.pid == os.getpid()
    first.close()
    make(path, clock).close()           # released at close
