"""Durable frame-set state of the relay: the :class:`StateStore` interface and its SQLite default.

Owns where the per-frame-set reception state (``relay.gaps.FrameSetState``: lowest, highest, gap
list, learned sequence offset) lives between restarts.  It does not own the gap logic itself
(``relay.gaps``) nor the archive (``relay.archive``).

The interface is small on purpose (a PostgreSQL backend shared by relay processes on several hosts
is a subclass, not a rewrite: ``relay.pgstore.PgStateStore``):

* ``load_all()`` / ``load(name)`` -- stored states;
* ``update(names, fn)`` -- read the current states of *names*, let *fn* change them, write them back,
  all in **one atomic, durable transaction** that excludes other writers: several relay processes
  sharing a shared-subscription group see each other's frames (the broker hands each message to any
  one of them), so each update must start from the latest stored state, never from a process's own
  copy (a last-writer-wins ``save`` would make one relay forget what the other archived);
* ``save(states)`` -- overwrite (tools and tests; one atomic, durable transaction).

When ``update``/``save`` return, a SIGKILL or power cut cannot lose the change.

Ordering argument (why state may lag the archive): the relay saves state only *after* the frames
are durably archived.  If it dies between the two, the restarted relay's acknack reports those
frames missing; the station resends them; the archive recognises identical bytes as duplicates and
the state catches up.  State therefore never claims a frame the archive does not hold, which is the
one thing that could make a station delete an unarchived frame from its outbox.

SQLite settings: WAL journal (readers never block the writer; a commit is one sequential append to
the WAL), ``synchronous=FULL`` (the WAL is fsync'd at every commit, so commits also survive power
loss, not only process death; the relay commits once per batch of frames, so the fsync is
amortised).  One connection per store, used from one thread at a time (the relay's worker).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, Iterable

from ims_station.durable import makedirs
from ims_station.relay.errors import StateStoreError
from ims_station.relay.gaps import FrameSetState


class StateStore(ABC):
    """Where frame-set states are kept.  Implementations must make ``save`` atomic and durable."""

    @abstractmethod
    def load_all(self, **state_kw: Any) -> dict[str, FrameSetState]:
        """Every stored frame set, by name; *state_kw* (``max_gaps``, ``gap_expiry_s``) are passed
        to each :class:`FrameSetState`."""

    @abstractmethod
    def save(self, states: Iterable[FrameSetState]) -> None:
        """Store *states* (replacing previous versions) in one durable transaction."""

    @abstractmethod
    def update(self, names: Iterable[str], fn: Callable[[dict[str, FrameSetState]], None],
               **state_kw: Any) -> dict[str, FrameSetState]:
        """Atomically: load *names* (missing ones as empty states), ``fn(states)`` mutates them,
        store them; return them.  Other writers are excluded for the duration."""

    def load(self, name: str, **state_kw: Any) -> FrameSetState | None:
        """One stored frame set, or None."""
        return self.load_all(**state_kw).get(name)

    def close(self) -> None:  # noqa: B027 - optional for stores without resources
        """Release resources."""

    def __enter__(self) -> "StateStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MemoryStateStore(StateStore):
    """Not durable: for tests and benchmarks that measure everything but the disk."""

    def __init__(self) -> None:
        self._records: dict[str, dict[str, Any]] = {}

    def load_all(self, **state_kw: Any) -> dict[str, FrameSetState]:
        return {n: FrameSetState.from_record(json.loads(json.dumps(r)), **state_kw)
                for n, r in self._records.items()}

    def save(self, states: Iterable[FrameSetState]) -> None:
        for s in states:
            self._records[s.name] = s.to_record()

    def update(self, names: Iterable[str], fn: Callable[[dict[str, FrameSetState]], None],
               **state_kw: Any) -> dict[str, FrameSetState]:
        states = {n: (FrameSetState.from_record(json.loads(json.dumps(self._records[n])), **state_kw)
                      if n in self._records else FrameSetState(n, **state_kw)) for n in names}
        fn(states)
        self.save(states.values())
        return states


_SCHEMA = """
CREATE TABLE IF NOT EXISTS frame_sets (
    name TEXT PRIMARY KEY,          -- 'creator:destination'
    record TEXT NOT NULL,           -- FrameSetState.to_record() as JSON
    updated REAL NOT NULL           -- wall-clock seconds of the last save (for operators)
);
"""


class SqliteStateStore(StateStore):
    """Frame-set states in one SQLite file (WAL, synchronous=FULL)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            makedirs(self.path.parent)      # durably: SQLite syncs only the directory of its files
            # check_same_thread=False: opened by the constructor's thread, used by the relay worker;
            # the lock below keeps use serialised.
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as err:
            raise StateStoreError(f"{self.path}: cannot open state store: {err}") from err
        self._lock = threading.Lock()

    def load_all(self, **state_kw: Any) -> dict[str, FrameSetState]:
        out = {}
        with self._lock:
            try:
                rows = self._db.execute("SELECT name, record FROM frame_sets").fetchall()
            except sqlite3.Error as err:
                raise StateStoreError(f"{self.path}: cannot read frame sets: {err}") from err
        for name, record in rows:
            out[name] = self._decode(name, record, state_kw)
        return out

    def save(self, states: Iterable[FrameSetState]) -> None:
        now = time.time()
        rows = [(s.name, json.dumps(s.to_record(), separators=(",", ":")), now) for s in states]
        if not rows:
            return
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany(
                    "INSERT INTO frame_sets(name, record, updated) VALUES (?, ?, ?) "
                    "ON CONFLICT(name) DO UPDATE SET record=excluded.record, updated=excluded.updated",
                    rows)
                self._db.execute("COMMIT")
            except sqlite3.Error as err:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise StateStoreError(f"{self.path}: cannot save {len(rows)} frame set(s): {err}") from err

    def load(self, name: str, **state_kw: Any) -> FrameSetState | None:
        with self._lock:
            try:
                row = self._db.execute("SELECT record FROM frame_sets WHERE name = ?", (name,)).fetchone()
            except sqlite3.Error as err:
                raise StateStoreError(f"{self.path}: cannot read frame set {name!r}: {err}") from err
        return None if row is None else self._decode(name, row[0], state_kw)

    def _decode(self, name: str, record: str, state_kw: dict[str, Any]) -> FrameSetState:
        try:
            return FrameSetState.from_record(json.loads(record), **state_kw)
        except (ValueError, KeyError, TypeError) as err:
            raise StateStoreError(f"{self.path}: frame set {name!r}: unreadable record: {err}") from err

    def update(self, names: Iterable[str], fn: Callable[[dict[str, FrameSetState]], None],
               **state_kw: Any) -> dict[str, FrameSetState]:
        names = list(dict.fromkeys(names))
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")      # the write lock, before reading
                states = {}
                for n in names:
                    row = self._db.execute("SELECT record FROM frame_sets WHERE name = ?", (n,)).fetchone()
                    states[n] = self._decode(n, row[0], state_kw) if row else FrameSetState(n, **state_kw)
                fn(states)
                now = time.time()
                self._db.executemany(
                    "INSERT INTO frame_sets(name, record, updated) VALUES (?, ?, ?) "
                    "ON CONFLICT(name) DO UPDATE SET record=excluded.record, updated=excluded.updated",
                    [(s.name, json.dumps(s.to_record(), separators=(",", ":")), now) for s in states.values()])
                self._db.execute("COMMIT")
                return states
            except sqlite3.Error as err:
                raise StateStoreError(f"{self.path}: cannot update {len(names)} frame set(s): {err}") from err
            finally:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")

    def close(self) -> None:
        with self._lock:
            self._db.close()
