"""The crash model of powerfs, as docs/testing.md states it: at the cut, a file keeps the bytes of
its last fsync, a directory the entries of its last fsync, and nothing else; after the cut every
operation fails.  Plus the fix of the class of bug the model found: ``ims_station.durable``."""

from __future__ import annotations

import errno
import os

import pytest

from ims_station.durable import fsync_dir, makedirs


def _write(path, data: bytes, *, sync: bool, flags: int = 0) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | flags, 0o644)
    try:
        os.write(fd, data)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def test_only_synced_bytes_and_synced_names_survive_the_cut(disk):
    (disk.backing / "old").write_bytes(b"on disk before the mount")
    (disk.backing / "keep").mkdir()
    with disk.mounted() as m:
        _write(m / "synced", b"data and name synced", sync=True)
        _write(m / "unsynced", b"name synced, data not", sync=False)
        _write(m / "osync", b"O_SYNC write", sync=False, flags=os.O_SYNC)
        _write(m / "old", b" + appended, not synced", sync=False, flags=os.O_APPEND)
        (m / "a").mkdir()
        (m / "a" / "b").mkdir()                                 # a's own entries are never synced
        fsync_dir(m)                                            # the root's names as they are now
        _write(m / "nameless", b"data synced, name not", sync=True)
        os.rename(m / "keep", m / "renamed")                    # after the fsync: undone
        os.truncate(m / "synced", 4)                            # not synced: undone
        assert (m / "synced").read_bytes() == b"data"           # the page cache sees it
        assert sorted(p.name for p in m.iterdir()) == ["a", "nameless", "old", "osync", "renamed", "synced",
                                                       "unsynced"]
        stats = disk.cut()
        with pytest.raises(OSError) as err:                     # the power is off: nothing more
            (m / "synced").read_bytes()                         # can be acknowledged
        assert err.value.errno in (errno.EIO, errno.ENOTCONN)
        with pytest.raises(OSError):
            _write(m / "after", b"x", sync=True)
    assert stats["fsync"] >= 3 and stats["unsynced_files"] >= 1
    names = sorted(p.name for p in disk.backing.iterdir())
    assert names == ["a", "keep", "old", "osync", "synced", "unsynced"]
    assert (disk.backing / "synced").read_bytes() == b"data and name synced"
    assert (disk.backing / "unsynced").read_bytes() == b""
    assert (disk.backing / "old").read_bytes() == b"on disk before the mount"
    assert (disk.backing / "osync").read_bytes() == b"O_SYNC write"
    assert list((disk.backing / "a").iterdir()) == []


def test_renames_and_unlinks_need_a_directory_fsync(disk):
    (disk.backing / "d").mkdir()
    (disk.backing / "d" / "x").write_bytes(b"x")
    (disk.backing / "d" / "gone").write_bytes(b"gone")
    with disk.mounted() as m:
        _write(m / "d" / "tmp", b"new", sync=True)
        os.replace(m / "d" / "tmp", m / "d" / "x")         # atomic replace, the usual idiom
        os.unlink(m / "d" / "gone")
        _write(m / "d" / "tmp2", b"new2", sync=True)
        fsync_dir(m / "d")
        os.replace(m / "d" / "tmp2", m / "d" / "y")          # not synced: stays tmp2
        disk.cut()
    d = disk.backing / "d"
    assert sorted(p.name for p in d.iterdir()) == ["tmp2", "x"]
    assert (d / "x").read_bytes() == b"new"
    assert (d / "tmp2").read_bytes() == b"new2"


def test_makedirs_makes_every_new_level_durable_where_mkdir_p_does_not(disk):
    """The bug the power-loss tests found in all three stores: ``mkdir(parents=True)`` and then
    only SQLite's / the archive's fsync of the innermost directory lost the whole store."""
    with disk.mounted() as m:
        assert makedirs(m / "durable" / "a" / "b") == [m / "durable", m / "durable" / "a", m / "durable" / "a" / "b"]
        assert makedirs(m / "durable" / "a" / "b") == []                      # idempotent
        _write(m / "durable" / "a" / "b" / "f", b"x", sync=True)
        fsync_dir(m / "durable" / "a" / "b")
        os.makedirs(m / "plain" / "a" / "b")                                  # what the stores did
        _write(m / "plain" / "a" / "b" / "f", b"x", sync=True)
        fsync_dir(m / "plain" / "a" / "b")                                    # (SQLite does this)
        disk.cut()
    assert not (disk.backing / "plain").exists()
    assert (disk.backing / "durable" / "a" / "b" / "f").read_bytes() == b"x"
