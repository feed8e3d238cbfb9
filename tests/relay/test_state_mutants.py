"""The relay's frame-set state stores in detail: what ``update`` hands to its callback and keeps, the
error an operator reads when the state file cannot be opened, read or written (and that the store
is usable again afterwards), how the SQLite file waits for another writer and what it holds.
Written from the survivors of a mutation run (docs/testing.md, "Mutation testing").  The round trip
and SIGKILL survival on both backends are in test_state_archive.py; these tests use the in-memory
store and the SQLite store directly (the PostgreSQL store has its own error paths)."""

from __future__ import annotations

import json
import sqlite3

import pytest

from ims_station.relay.errors import StateStoreError
from ims_station.relay.gaps import FrameSetState
from ims_station.relay.state import MemoryStateStore, SqliteStateStore


def _state(name: str = "STA01:0", seqs=(1, 2, 7), offset: int | None = 12) -> FrameSetState:
    s = FrameSetState(name, sequence_offset=offset)
    for n in seqs:
        s.add(n, 5.0)
    return s


@pytest.fixture(params=["memory", "sqlite"])
def store(request, tmp_path):
    if request.param == "memory":
        yield MemoryStateStore()
        return
    with SqliteStateStore(tmp_path / "state.sqlite") as s:
        yield s


@pytest.fixture
def sq(tmp_path):
    with SqliteStateStore(tmp_path / "state.sqlite") as s:
        yield s


def _other(store: SqliteStateStore) -> sqlite3.Connection:
    """A second connection to the store's file (an operator's sqlite3 shell, another process)."""
    return sqlite3.connect(store.path, isolation_level=None)


# -- both stores -----------------------------------------------------------------------------------
def test_loaded_states_carry_the_gap_settings_asked_for(store):
    store.save([_state()])
    for got in (store.load_all(max_gaps=3, gap_expiry_s=60.0)["STA01:0"],
                store.load("STA01:0", max_gaps=3, gap_expiry_s=60.0)):
        assert (got.max_gaps, got.gap_expiry_s) == (3, 60.0)
        assert got.acknack_fields() == (1, 7, [(3, 7)])
        assert got.sequence_offset == 12
    assert store.load("STA09:0") is None


def test_update_hands_stored_and_new_states_to_fn_and_keeps_its_changes(store):
    store.save([_state()])
    seen = {}

    def fn(states):
        seen.update({n: (s.acknack_fields(), s.sequence_offset, s.max_gaps, s.gap_expiry_s)
                     for n, s in states.items()})
        states["STA01:0"].add(4, 6.0)
        states["STA02:0"].add(100, 6.0)
        states["STA02:0"].sequence_offset = -3

    got = store.update(["STA01:0", "STA02:0", "STA01:0"], fn, max_gaps=5, gap_expiry_s=90.0)
    # fn saw the stored state and an empty new one, each with the gap settings asked for
    assert seen == {"STA01:0": ((1, 7, [(3, 7)]), 12, 5, 90.0), "STA02:0": ((0, -1, []), None, 5, 90.0)}
    # it returns the states as fn left them, and stored exactly that
    assert list(got) == ["STA01:0", "STA02:0"]
    assert got["STA01:0"].acknack_fields() == (1, 7, [(3, 4), (5, 7)])
    after = store.load_all()
    assert {n: (s.acknack_fields(), s.sequence_offset) for n, s in after.items()} == {
        "STA01:0": ((1, 7, [(3, 4), (5, 7)]), 12), "STA02:0": ((100, 100, []), -3)}


def test_update_starts_from_the_stored_state_not_from_an_earlier_copy(store):
    store.update(["STA01:0"], lambda st: st["STA01:0"].add(1, 0.0))
    first = store.update(["STA01:0"], lambda st: st["STA01:0"].add(2, 0.0))
    first["STA01:0"].add(9, 0.0)                 # a caller's copy, never saved
    store.update(["STA01:0"], lambda st: st["STA01:0"].add(3, 0.0))
    assert store.load("STA01:0").acknack_fields() == (1, 3, [])


def test_update_whose_fn_fails_stores_nothing(store):
    store.save([_state()])

    def fn(states):
        states["STA01:0"].add(4, 6.0)
        states["STA02:0"].add(1, 6.0)
        raise RuntimeError("worker died")

    with pytest.raises(RuntimeError, match="worker died"):
        store.update(["STA01:0", "STA02:0"], fn)
    assert set(store.load_all()) == {"STA01:0"}
    assert store.load("STA01:0").acknack_fields() == (1, 7, [(3, 7)])
    # and the store still takes updates
    store.update(["STA02:0"], lambda st: st["STA02:0"].add(1, 0.0))
    assert store.load("STA02:0").acknack_fields() == (1, 1, [])


# -- SQLite: settings and file content ---------------------------------------------------------------
def test_sqlite_store_waits_30_s_for_another_writer_and_syncs_every_commit(sq):
    # Relay processes sharing the file queue for its write lock (BEGIN IMMEDIATE) for up to 30 s
    # before a save fails; the WAL is fsync'd at each commit (module docstring).
    assert sq._db.execute("PRAGMA busy_timeout").fetchone()[0] == 30_000
    assert sq._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert sq._db.execute("PRAGMA synchronous").fetchone()[0] == 2          # FULL


def test_sqlite_file_holds_each_state_as_compact_json(sq):
    a = _state()
    sq.save([a])
    sq.update(["STA02:0"], lambda st: st["STA02:0"].add(5, 1.5))
    b = sq.load("STA02:0")
    with _other(sq) as con:
        rows = dict(con.execute("SELECT name, record FROM frame_sets").fetchall())
    assert rows == {"STA01:0": json.dumps(a.to_record(), separators=(",", ":")),
                    "STA02:0": json.dumps(b.to_record(), separators=(",", ":"))}
    assert " " not in rows["STA01:0"]


# -- SQLite: errors ----------------------------------------------------------------------------------
def test_sqlite_store_that_is_not_a_database_fails_to_open_naming_the_file(tmp_path):
    path = tmp_path / "state.sqlite"
    path.write_bytes(b"this is not an SQLite file " * 100)
    with pytest.raises(StateStoreError) as exc:
        SqliteStateStore(path)
    assert str(exc.value) == f"{path}: cannot open state store: file is not a database"


def test_sqlite_errors_of_a_store_whose_table_is_gone_name_the_file_the_frame_set_and_the_table(sq):
    sq.save([_state()])
    with _other(sq) as con:
        con.execute("DROP TABLE frame_sets")
    calls = [(sq.load_all, "cannot read frame sets"),
             (lambda: sq.load("STA01:0"), "cannot read frame set 'STA01:0'"),
             (lambda: sq.save([_state()]), "cannot save 1 frame set(s)"),
             (lambda: sq.update(["STA01:0", "STA02:0"], lambda st: None), "cannot update 2 frame set(s)")]
    for call, what in calls:
        with pytest.raises(StateStoreError) as exc:
            call()
        assert str(exc.value) == f"{sq.path}: {what}: no such table: frame_sets"
        assert not sq._db.in_transaction


@pytest.mark.parametrize("record", ["{not json", '{"lowest": 1}', '{"name": "STA01:0", "gaps": [[1, 2]]}'])
def test_sqlite_unreadable_record_names_the_frame_set(sq, record):
    sq.save([_state("STA02:0")])
    with _other(sq) as con:
        con.execute("INSERT INTO frame_sets(name, record, updated) VALUES ('STA01:0', ?, 0)", (record,))
    msg = f"{sq.path}: frame set 'STA01:0': unreadable record: "     # then the decoder's complaint
    for call in (sq.load_all, lambda: sq.load("STA01:0"),
                 lambda: sq.update(["STA02:0", "STA01:0"], lambda st: st["STA02:0"].add(99, 0.0))):
        with pytest.raises(StateStoreError) as exc:
            call()
        assert str(exc.value).startswith(msg)
    # nothing was written, and the store takes the next update
    sq.update(["STA02:0"], lambda st: st["STA02:0"].add(8, 0.0))
    assert sq.load("STA02:0").acknack_fields() == (1, 8, [(3, 7)])


@pytest.fixture
def refusing(sq):
    """The SQLite store with writes to its table refused (like a full disk) until the trigger goes."""
    sq.save([_state()])
    con = _other(sq)
    con.execute("CREATE TRIGGER refuse BEFORE INSERT ON frame_sets BEGIN SELECT RAISE(ABORT, 'refused'); END")
    yield sq, con
    con.close()


def test_sqlite_failed_save_says_how_many_frame_sets_were_lost_and_rolls_back(refusing):
    sq, con = refusing
    with pytest.raises(StateStoreError) as exc:
        sq.save([_state("STA01:0", (1, 2, 3)), _state("STA02:0")])
    assert str(exc.value) == f"{sq.path}: cannot save 2 frame set(s): refused"
    assert not sq._db.in_transaction                     # the write lock is released
    assert sq.load("STA01:0").acknack_fields() == (1, 7, [(3, 7)])
    assert sq.load("STA02:0") is None
    con.execute("DROP TRIGGER refuse")
    sq.save([_state("STA02:0")])
    assert sq.load("STA02:0").acknack_fields() == (1, 7, [(3, 7)])


def test_sqlite_failed_update_says_how_many_frame_sets_and_rolls_back(refusing):
    sq, con = refusing
    with pytest.raises(StateStoreError) as exc:
        sq.update(["STA01:0", "STA02:0", "STA01:0"], lambda st: st["STA01:0"].add(3, 0.0))
    assert str(exc.value) == f"{sq.path}: cannot update 2 frame set(s): refused"
    assert not sq._db.in_transaction
    assert sq.load("STA01:0").acknack_fields() == (1, 7, [(3, 7)])
    con.execute("DROP TRIGGER refuse")
    sq.update(["STA01:0"], lambda st: st["STA01:0"].add(3, 0.0))
    assert sq.load("STA01:0").acknack_fields() == (1, 7, [(4, 7)])
