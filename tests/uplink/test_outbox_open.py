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


def refused(path, clock, exc=OutboxOpenError, match: str | None = None):
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


def test_outbox_cut_to_half_its_size_is_refused_untouched_as_damaged(tmp_path, clock):
    path = filled(tmp_path, clock)
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)
    # SQLite itself calls a header page count beyond the file's end corrupt (older versions did not:
    # then the outbox's own size check says "truncated").  Matched past the path, which holds the
    # test's name.
    refused(path, clock, OutboxCorruptError, r"\.sqlite is (damaged|truncated) \(")


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


# -- what each refusal says (the operator reads it in the gateway's log and acts on it) ------------
def test_a_link_to_a_missing_database_is_refused_and_not_followed(tmp_path, clock):
    path = tmp_path / "outbox.sqlite"
    path.symlink_to(tmp_path / "card" / "outbox.sqlite")        # the card is not mounted
    with pytest.raises(OutboxOpenError) as info:
        make(path, clock)
    assert str(info.value) == (f"outbox {path} is a symbolic link to a missing file: restore the database "
                               "or remove the link")
    assert not (tmp_path / "card").exists()


def test_a_missing_database_beside_an_empty_wal_starts_empty_but_any_wal_content_is_refused(tmp_path, clock):
    path = tmp_path / "outbox.sqlite"
    wal = tmp_path / "outbox.sqlite-wal"
    wal.write_bytes(b"")                  # nothing in it: a fresh outbox
    box = make(path, clock)
    assert box.stats()["frames"] == 0
    box.close()
    path.unlink()
    wal.write_bytes(b"\x37")              # anything in it: not the outbox's to discard
    with pytest.raises(OutboxOpenError) as info:
        make(path, clock)
    assert str(info.value) == (f"outbox {path} is missing but its write-ahead log {wal} is there: restore "
                               f"the database, or move {wal} aside to start an empty outbox")
    assert not path.exists() and wal.read_bytes() == b"\x37"


def test_a_directory_in_place_of_the_database_is_refused(tmp_path, clock):
    path = tmp_path / "outbox.sqlite"
    path.mkdir()
    with pytest.raises(OutboxOpenError) as info:
        make(path, clock)
    assert str(info.value) == f"outbox {path} is not a regular file: set [outbox] path to a database file"


@pytest.fixture
def unwritable():
    """Make a file unwritable for this user: immutable for root (who ignores the mode), else mode 0400."""
    made = []

    def make_unwritable(path):
        if os.geteuid() == 0:
            done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
            assert done.returncode == 0, (f"chattr +i {path} failed (the test needs a file system with "
                                          f"the immutable flag, e.g. ext4 or tmpfs): {done.stderr.strip()}")
            made.append(path)
        else:
            path.chmod(0o400)

    yield make_unwritable
    for path in made:
        subprocess.run(["chattr", "-i", str(path)], check=False)


def test_a_database_this_user_cannot_write_is_refused_untouched(tmp_path, clock, unwritable):
    path = filled(tmp_path, clock, frames=2)
    unwritable(path)
    err = refused(path, clock, OutboxOpenError)
    assert str(err) == (f"outbox {path} is not readable and writable by this user: give it to the gateway's "
                        "user (chown, chmod 600)")


def test_another_programs_database_is_refused_naming_its_tables(tmp_path, clock):
    path = tmp_path / "outbox.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE users (name TEXT)")
    db.execute("CREATE TABLE accounts (name TEXT)")
    db.commit()
    db.close()
    err = refused(path, clock, OutboxCorruptError)
    assert str(err) == (f"outbox {path} is an SQLite database but not an outbox (tables: accounts, users): "
                        "set [outbox] path to the outbox's file")


@pytest.mark.parametrize("empty_wal", [False, True])
def test_a_database_cut_short_inside_its_last_page_is_refused_as_truncated(tmp_path, clock, empty_wal):
    # A partial write at the end of the file: SQLite itself would read the missing bytes as zeros.
    # An empty WAL beside it (left by a checkpoint) holds no pages that could make up the difference.
    path = filled(tmp_path, clock, frames=10)
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size - 100)
    if empty_wal:
        path.with_name(path.name + "-wal").write_bytes(b"")
    err = refused(path, clock, OutboxCorruptError)
    assert str(err) == (f"outbox {path} is truncated ({size - 100} bytes; its header says {size}): move it "
                        "(and its -wal and -shm files) aside and start again with an empty outbox; frames it "
                        f"held that were not delivered can be salvaged with `sqlite3 {path} .recover`")


def _garble_table(path, table: str) -> None:
    db = sqlite3.connect(path)
    root = db.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0]
    page = db.execute("PRAGMA page_size").fetchone()[0]
    db.close()
    with open(path, "r+b") as f:
        f.seek((root - 1) * page)
        f.write(b"\xa5" * page)


@pytest.mark.parametrize("table", ["meta", "frame_sets", "ack_points", "sent_marks"])
def test_a_damaged_bookkeeping_table_is_refused_untouched(tmp_path, clock, table):
    # Not only the frames: a high-water mark or ACK point read back wrong would let the framer reuse
    # a sequence number or the gateway skip a board's samples.
    path = tmp_path / "outbox.sqlite"
    box = make(path, clock)
    box.put("cd11", FS, 1, clock.t, b"x")
    box.set_ack_point(3, 1, 42)
    box.mark_sent([box.next_to_send(1, live_window_s=1e9)[0].id])
    box.close()
    _garble_table(path, table)
    refused(path, clock, OutboxCorruptError, r"\.sqlite is damaged \(")


def test_an_outbox_from_before_ack_points_and_sent_marks_opens_with_its_frames(tmp_path, clock):
    path = tmp_path / "outbox.sqlite"
    box = make(path, clock)
    box.put("cd11", FS, 1, clock.t, b"x")
    box.close()
    db = sqlite3.connect(path)
    db.execute("DROP TABLE ack_points")
    db.execute("DROP TABLE sent_marks")
    db.commit()
    db.close()
    box = make(path, clock)
    assert box.contains(FS, 1) and box.ack_points() == {} and box.highest_sent(FS) is None
    box.close()


def test_a_refused_outbox_is_not_left_open(tmp_path, clock):
    # The operator moves a damaged outbox aside or unmounts its card to repair it: the gateway must
    # not hold it open, even while the refusal is still being reported.
    path = filled(tmp_path, clock, frames=5)
    _garble_table(path, "frames")
    with pytest.raises(OutboxCorruptError) as info:
        make(path, clock)
    held = {os.path.realpath(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")}
    assert str(path.resolve()) not in held, info.value


# -- the directory, the lock and the reserve file -------------------------------------------------------
def test_a_file_in_place_of_the_outbox_directory_is_refused(tmp_path, clock):
    (tmp_path / "spool").write_bytes(b"")
    path = tmp_path / "spool" / "outbox.sqlite"
    with pytest.raises(OutboxOpenError) as info:
        make(path, clock)
    assert str(info.value) == (f"outbox {path}: {tmp_path / 'spool'} is not a directory: set [outbox] path or "
                               "[station] data_dir to a directory")


def test_a_missing_directory_tree_is_refused_naming_both_levels(tmp_path, clock):
    path = tmp_path / "mnt" / "ims" / "outbox.sqlite"
    with pytest.raises(OutboxOpenError) as info:
        make(path, clock)
    assert str(info.value) == (f"outbox {path}: its directory {tmp_path / 'mnt' / 'ims'} does not exist, nor "
                               f"does {tmp_path / 'mnt'}: create it (is its file system mounted?) or correct "
                               "[station] data_dir")


def test_a_directory_that_cannot_be_created_or_locked_in_is_refused_saying_why(ro_fs, clock):
    subprocess.run(["mount", "-o", "remount,ro", str(ro_fs)], check=True)
    path = ro_fs / "spool" / "outbox.sqlite"
    with pytest.raises(OutboxOpenError) as info:
        make(path, clock)
    assert str(info.value) == (f"outbox {path}: cannot create its directory {ro_fs / 'spool'} (Read-only file "
                               "system): create it, writable by the gateway's user")
    path = ro_fs / "outbox.sqlite"
    with pytest.raises(OutboxOpenError) as info:
        make(path, clock)
    assert str(info.value) == (f"outbox {path}: cannot create its lock file {ro_fs / 'outbox.sqlite.lock'} "
                               f"(Read-only file system): the directory {ro_fs} must be writable by the "
                               "gateway's user (is the file system mounted read-only?)")


def test_the_lock_is_the_file_beside_the_database_and_a_second_opener_is_told_what_to_do(tmp_path, clock):
    path = tmp_path / "outbox.sqlite"
    first = make(path, clock)
    assert (tmp_path / "outbox.sqlite.lock").read_text().strip() == str(os.getpid())
    with pytest.raises(OutboxLockedError) as info:
        make(path, clock)
    msg = str(info.value)
    assert msg.startswith(f"outbox {path} is in use by process {os.getpid()}")
    assert msg.endswith(": stop that gateway first; two gateways must never share an outbox (each station "
                        "needs its own [station] data_dir)")
    first.close()


@pytest.mark.parametrize("reserve_bytes", [0, 1, 5000])
def test_the_reserve_file_has_the_size_asked_and_none_for_0(tmp_path, clock, reserve_bytes):
    box = Outbox(tmp_path / "outbox.sqlite", max_bytes=10_000_000, max_age_s=1e12, clock=clock,
                 reserve_bytes=reserve_bytes)
    reserve = tmp_path / "outbox.sqlite.reserve"
    assert (reserve.stat().st_size if reserve.exists() else None) == (reserve_bytes or None)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["outbox.sqlite", "outbox.sqlite-wal", "outbox.sqlite-shm", "outbox.sqlite.lock"]
        + (["outbox.sqlite.reserve"] if reserve_bytes else []))          # no temporary file left
    box.close()


def test_an_outbox_opens_without_its_reserve_when_the_file_system_has_no_room_for_it(tmp_path, clock):
    from tests.conftest import need_root

    need_root("mounting a tmpfs (CI runs as root)")
    mnt = tmp_path / "few_inodes"
    mnt.mkdir()
    # Five inodes: the directory, the database, its WAL and shared memory, the lock; none for the reserve.
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,nr_inodes=5", "tmpfs", str(mnt)], check=True)
    try:
        box = make(mnt / "outbox.sqlite", clock)
        assert box.put("cd11", FS, 1, clock.t, b"x")
        assert not (mnt / "outbox.sqlite.reserve").exists()
        box.close()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


# -- the settings the outbox is opened with ------------------------------------------------------------
@pytest.mark.parametrize("max_bytes, max_age_s", [(0, 60), (-1, 60), (1000, 0), (1000, -1), (0, 0)])
def test_bounds_that_are_not_positive_are_refused(tmp_path, clock, max_bytes, max_age_s):
    with pytest.raises(ValueError) as info:
        Outbox(tmp_path / "outbox.sqlite", max_bytes=max_bytes, max_age_s=max_age_s, clock=clock)
    assert str(info.value) == "max_bytes and max_age_s must be positive"
    assert not (tmp_path / "outbox.sqlite").exists()


def test_the_smallest_bounds_are_accepted(tmp_path, clock):
    box = Outbox(tmp_path / "outbox.sqlite", max_bytes=1, max_age_s=1, clock=clock)
    assert (box.max_bytes, box.max_age_s) == (1, 1.0)
    box.close()


@pytest.mark.parametrize("synchronous, level", [(None, 2), ("FULL", 2), ("NORMAL", 1), ("EXTRA", 3)])
def test_the_durability_asked_is_the_one_sqlite_applies(tmp_path, clock, synchronous, level):
    kw = {} if synchronous is None else {"synchronous": synchronous}
    box = Outbox(tmp_path / "outbox.sqlite", max_bytes=1000, max_age_s=60, clock=clock, **kw)
    assert box._db.execute("PRAGMA synchronous").fetchone()[0] == level      # default: FULL
    box.close()


@pytest.mark.parametrize("synchronous", ["OFF", "full", "normal"])
def test_a_durability_other_than_full_extra_or_normal_is_refused(tmp_path, clock, synchronous):
    with pytest.raises(ValueError) as info:
        Outbox(tmp_path / "outbox.sqlite", max_bytes=1000, max_age_s=60, clock=clock, synchronous=synchronous)
    assert str(info.value) == "synchronous must be FULL, EXTRA or NORMAL"


def test_defaults_resend_after_5_s_frames_of_10_s_gateway_mode_and_a_30_s_lock_wait(tmp_path, clock):
    box = make(tmp_path / "outbox.sqlite", clock)
    assert (box.resend_holdoff_s, box.hold_span_s, box.hold_kinds, box.min_free_bytes) == (5.0, 10.0, frozenset(), None)
    # Another connection's transaction (the maintenance command's read) is waited for up to 30 s.
    assert box._db.execute("PRAGMA busy_timeout").fetchone()[0] == 30_000
    with pytest.raises(Exception, match="exclusive=True"):
        box.delete([1])                                       # a gateway, not a maintenance command
    box.close()


def test_one_outbox_serves_the_ingest_and_the_network_threads(tmp_path, clock):
    import threading

    box = make(tmp_path / "outbox.sqlite", clock)
    errors = []

    def network_thread():
        try:
            box.put("events", FS + "e", 1, clock.t, b"from another thread")
            box.mark_sent([i.id for i in box.next_to_send(10, live_window_s=1e9)])
        except Exception as err:     # noqa: BLE001 -- reported below
            errors.append(err)

    t = threading.Thread(target=network_thread)
    t.start()
    t.join()
    assert errors == [] and box.in_flight_count() == 1
    box.close()


def test_a_damaged_index_met_while_opening_is_refused_naming_the_file_and_the_lock_released(tmp_path, clock):
    path = filled(tmp_path, clock, frames=5)
    db = sqlite3.connect(path)
    root = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'frames_pending'").fetchone()[0]
    page = db.execute("PRAGMA page_size").fetchone()[0]
    db.close()
    with open(path, "r+b") as f:             # an index only the start-up's requeue reads
        f.seek((root - 1) * page)
        f.write(b"\xa5" * page)
    with pytest.raises(OutboxCorruptError) as info:
        make(path, clock)
    assert str(info.value).startswith(f"outbox {path} is damaged (database disk image is malformed): move it")
    with pytest.raises(OutboxCorruptError):
        make(path, clock)                    # refused again, not "in use": the lock was released
