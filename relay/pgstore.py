"""The relay's state in PostgreSQL: :class:`PgStateStore` and :class:`PgArchive`, for relays on several hosts.

Owns the PostgreSQL side of the relay's two stores behind the interfaces the SQLite defaults
already have (``relay.state.StateStore``, ``relay.archive.Archive``): the connection (libpq DSN,
reconnection with backoff, errors as ``StateStoreError`` / ``ArchiveError``), the schema, the
locks that exclude other writers, and the content-addressed object files.  It does not own the
decisions (new / duplicate / conflict / replay, quarantine bound, KPI arithmetic): those are
``relay.archive.IndexedArchive`` and ``relay.kpi``, shared with the SQLite ``FileArchive``; nor the
gap logic (``relay.gaps``).  Driver: psycopg 3, the optional extra ``ims-station[postgres]``.

* **State** (table ``frame_sets``, as in ``state.sqlite``): ``update(names, fn)`` is one
  transaction that first takes a transaction-scoped advisory lock per frame set (in a fixed
  order, so two relays never deadlock), then reads, lets *fn* change, upserts and commits.  Any
  number of relay processes on any hosts may share it.
* **Archive index** (tables ``frames``, ``events``, ``ims20``, ``quarantine`` and the KPI tables of
  ``relay.kpi``, the columns of ``index.sqlite``): a commit takes the advisory locks of the batch's
  frame sets, so the dedupe and replay decisions of one frame set are serialised across relays,
  while different frame sets commit in parallel.
* **Bytes**: each commit's new bytes (frames, event envelopes, IMS 2.0 texts, kept quarantine
  payloads) are written **once**, concatenated, as one object named by its SHA-256 under the
  object root: ``objects/ab/cdef...`` (temp file, fsync, rename, fsync of the directory; an object
  that already exists is identical by construction and is not rewritten).  Only then are the
  index rows that point at (object, offset, length) inserted, in the same transaction as the
  decisions and the KPI update, and committed (``synchronous_commit = on`` for our sessions
  whatever the server's default).  A crash or a lost connection before the commit leaves at most
  an object no row points at (harmless, never read; the next attempt writes its own).  So any
  relay process that shares the database and the object root (a shared file system) serves
  exports, acknack refills and the CD-1.1 provider.
* **Connection loss** (PostgreSQL restarted, network): the failing call raises
  ``ArchiveError``/``StateStoreError`` -- the relay core then acknowledges nothing and the broker
  redelivers -- and drops the connection; the next call reconnects.  Failed connects back off
  (0.1 s doubling to 5 s): inside that window calls fail at once, without a connect storm.
  A commit whose COMMIT was sent but whose reply was lost is *unknown*: it raises too; redelivery
  then finds the frames archived (``DUPLICATE``), never twice.
* Credentials: the DSN comes from the relay config (``[relay.state] dsn`` or ``dsn_file``, mode
  0600 when it holds a password, ``relay.cli``); TLS with libpq's ``sslmode``/``sslrootcert``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from ims_station.durable import fsync_dir, makedirs
from ims_station.relay.archive import (
    DEFAULT_QUARANTINE_MAX_BYTES,
    EventRecord,
    FrameRecord,
    Ims20Record,
    IndexedArchive,
    QuarantineRecord,
    StoreResult,
    _Placement,
)
from ims_station.relay.errors import ArchiveError, RelayError, StateStoreError
from ims_station.relay.gaps import FrameSetState
from ims_station.relay.state import StateStore

log = logging.getLogger(__name__)

_SCHEMA_NAME = re.compile(r"^(?!pg_)[a-z_][a-z0-9_]{0,62}$")   # pg_*: reserved by PostgreSQL
BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 5.0

STATE_SCHEMA = """
CREATE TABLE IF NOT EXISTS frame_sets (
    name    TEXT PRIMARY KEY,           -- 'creator:destination'
    record  TEXT NOT NULL,              -- FrameSetState.to_record() as JSON
    updated DOUBLE PRECISION NOT NULL   -- wall-clock seconds of the last save (for operators)
);
"""

#: ``index.sqlite``'s tables (relay.archive, relay.kpi) in PostgreSQL types; ``file`` names an object.
ARCHIVE_SCHEMA = """
CREATE TABLE IF NOT EXISTS frames (
    frame_set TEXT NOT NULL, seq BIGINT NOT NULL, station TEXT NOT NULL, nominal_ms BIGINT NOT NULL,
    day TEXT NOT NULL, file TEXT NOT NULL, "offset" BIGINT NOT NULL, length BIGINT NOT NULL,
    sha256 TEXT NOT NULL, received_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (frame_set, seq));
CREATE INDEX IF NOT EXISTS frames_by_time ON frames(frame_set, nominal_ms);
CREATE INDEX IF NOT EXISTS frames_by_day ON frames(station, day, nominal_ms);
CREATE TABLE IF NOT EXISTS quarantine (
    id BIGSERIAL PRIMARY KEY, received_at DOUBLE PRECISION NOT NULL, station TEXT, topic TEXT NOT NULL,
    reason TEXT NOT NULL, detail TEXT NOT NULL, frame_set TEXT, seq BIGINT, sha256 TEXT NOT NULL,
    size BIGINT NOT NULL, file TEXT, "offset" BIGINT, length BIGINT);
CREATE INDEX IF NOT EXISTS quarantine_by_reason ON quarantine(reason);
CREATE TABLE IF NOT EXISTS events (
    frame_set TEXT NOT NULL, seq BIGINT NOT NULL, station TEXT NOT NULL, time_ms BIGINT NOT NULL,
    day TEXT NOT NULL, event_id TEXT, state TEXT, key_id BIGINT NOT NULL, file TEXT NOT NULL,
    "offset" BIGINT NOT NULL, length BIGINT NOT NULL, sha256 TEXT NOT NULL,
    received_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (frame_set, seq));
CREATE INDEX IF NOT EXISTS events_by_time ON events(station, time_ms);
CREATE TABLE IF NOT EXISTS ims20 (
    frame_set TEXT NOT NULL, seq BIGINT NOT NULL, station TEXT NOT NULL, time_ms BIGINT NOT NULL,
    day TEXT NOT NULL, msg_id TEXT, msg_type TEXT, data_type TEXT, measurement_id TEXT, srid TEXT,
    msg_station TEXT, qualifier TEXT, key_id BIGINT NOT NULL, file TEXT NOT NULL,
    "offset" BIGINT NOT NULL, length BIGINT NOT NULL, sha256 TEXT NOT NULL, head BYTEA NOT NULL,
    signature BYTEA NOT NULL, received_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (frame_set, seq));
CREATE INDEX IF NOT EXISTS ims20_by_time ON ims20(station, time_ms);
CREATE TABLE IF NOT EXISTS kpi_channel_day (
    station TEXT NOT NULL, channel TEXT NOT NULL, day TEXT NOT NULL, samples BIGINT NOT NULL,
    timely BIGINT NOT NULL, refilled BIGINT NOT NULL, rate DOUBLE PRECISION NOT NULL,
    first_ms BIGINT NOT NULL,
    PRIMARY KEY (station, channel, day));
CREATE TABLE IF NOT EXISTS kpi_auth_day (
    station TEXT NOT NULL, day TEXT NOT NULL, passed BIGINT NOT NULL, failed BIGINT NOT NULL,
    PRIMARY KEY (station, day));
CREATE TABLE IF NOT EXISTS kpi_station (
    station TEXT PRIMARY KEY, frame_ms BIGINT NOT NULL, last_nominal_ms BIGINT NOT NULL,
    last_received_at DOUBLE PRECISION NOT NULL);
"""


def _driver() -> Any:
    try:
        import psycopg
    except ImportError:
        raise RelayError("the PostgreSQL backend needs psycopg 3: pip install 'ims-station[postgres]'") from None
    return psycopg


def _lock_key(namespace: str, name: str) -> int:
    """A signed 64-bit advisory-lock key for *name* in *namespace* (schema and store kind)."""
    return int.from_bytes(hashlib.blake2b(f"{namespace}\0{name}".encode(), digest_size=8).digest(), "big",
                          signed=True)


def redact(dsn: str) -> str:
    """*dsn* without its password (for messages and logs)."""
    return re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", dsn))


class _Sql:
    """``execute``/``executemany`` with ``?`` parameters (the SQL the archive shares with SQLite)
    on a psycopg connection."""

    _cache: dict[str, str] = {}

    def __init__(self, con: Any) -> None:
        self.con = con

    @classmethod
    def _q(cls, sql: str) -> str:
        q = cls._cache.get(sql)
        if q is None:
            q = cls._cache[sql] = sql.replace("%", "%%").replace("?", "%s")
        return q

    def execute(self, sql: str, args: Iterable[Any] = ()) -> Any:
        return self.con.execute(self._q(sql), tuple(args))

    def executemany(self, sql: str, rows: Iterable[Iterable[Any]]) -> None:
        rows = [tuple(r) for r in rows]
        if rows:
            with self.con.cursor() as cur:
                cur.executemany(self._q(sql), rows)


class PgReader(_Sql):
    """A read-only session on the relay's tables (``relay status``, ``relay kpi``, tests): the
    ``execute`` of :class:`_Sql` and ``has_table``; safe next to running relays."""

    def has_table(self, name: str) -> bool:
        return bool(self.execute("SELECT to_regclass(?) IS NOT NULL", (name,)).fetchone()[0])

    def close(self) -> None:
        self.con.close()


def connect_reader(dsn: str, *, schema: str = "public") -> PgReader:
    """A :class:`PgReader` on *schema* (raises ``ArchiveError`` naming the redacted DSN)."""
    pg = _driver()
    if not _SCHEMA_NAME.match(schema):
        raise ArchiveError(f"PostgreSQL schema {schema!r} must be lower-case letters, digits and '_'")
    try:
        con = pg.connect(dsn, autocommit=True, connect_timeout=5)
        con.execute("SET default_transaction_read_only = on")
        con.execute(f'SET search_path TO "{schema}"')
    except pg.Error as err:
        raise ArchiveError(f"PostgreSQL {redact(dsn)!r}: cannot connect ({str(err).strip()})") from err
    return PgReader(con)


class PgConnection:
    """One libpq connection, made on first use and after a failure (with backoff); *schema* is
    created if missing and set as the search path; *setup* runs once per connection."""

    def __init__(self, dsn: str, *, schema: str = "public", setup: str = "", error: type[RelayError] = RelayError,
                 connect_timeout_s: float = 5.0) -> None:
        if not _SCHEMA_NAME.match(schema):
            raise error(f"PostgreSQL schema {schema!r} must be lower-case letters, digits and '_'")
        self._psycopg = _driver()
        self.dsn = dsn
        self.schema = schema
        self.setup = setup
        self.error = error
        self.connect_timeout_s = connect_timeout_s
        self._con: Any = None
        self._backoff = 0.0
        self._next_try = 0.0
        self.reconnects = 0
        self.failures = 0

    def where(self) -> str:
        return f"PostgreSQL {redact(self.dsn)!r} (schema {self.schema})"

    def connection(self) -> Any:
        """The live connection (connecting if needed); raises *error* while PostgreSQL is unreachable."""
        con = self._con
        if con is not None and not con.closed and not con.broken:
            return con
        self._drop()
        now = time.monotonic()
        if now < self._next_try:
            raise self.error(f"{self.where()}: unreachable, next attempt in {self._next_try - now:.1f} s")
        pg = self._psycopg
        try:
            con = pg.connect(self.dsn, autocommit=True, connect_timeout=max(1, round(self.connect_timeout_s)))
            # Durable commits whatever the server's default: we acknowledge after COMMIT returns.
            con.execute("SET synchronous_commit = on")
            with con.transaction():
                con.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key(self.schema, "schema"),))
                con.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
                con.execute(f'SET search_path TO "{self.schema}"')
                for stmt in filter(str.strip, self.setup.split(";")):
                    con.execute(stmt)
        except pg.Error as err:
            self._backoff = min(BACKOFF_MAX_S, max(BACKOFF_MIN_S, self._backoff * 2))
            self._next_try = time.monotonic() + self._backoff
            self.failures += 1
            raise self.error(f"{self.where()}: cannot connect ({str(err).strip()}); is the server up, "
                             f"the DSN right? (next attempt after {self._backoff:.1f} s)") from err
        if self.reconnects or self.failures:
            log.info("%s: connected again", self.where())
        self.reconnects += 1
        self._backoff = 0.0
        self._next_try = 0.0
        self._con = con
        return con

    def run(self, what: str, fn: Callable[[_Sql], Any]) -> Any:
        """``fn(sql)`` inside one transaction (committed when it returns); a database error drops
        the connection if it broke and raises *error* naming *what*."""
        pg = self._psycopg
        con = self.connection()
        try:
            with con.transaction():
                return fn(_Sql(con))
        except pg.Error as err:
            self.failures += 1
            if con.broken or isinstance(err, pg.OperationalError):
                log.warning("%s: %s failed, connection dropped: %s", self.where(), what, str(err).strip())
                self._drop()
            raise self.error(f"{self.where()}: {what} failed: {str(err).strip()}") from err

    def lock(self, sql: _Sql, kind: str, names: Iterable[str]) -> None:
        """Transaction-scoped advisory locks on *names* of *kind*, in key order (no deadlock)."""
        for key in sorted({_lock_key(f"{self.schema}\0{kind}", n) for n in names}):
            sql.execute("SELECT pg_advisory_xact_lock(?)", (key,))

    def _drop(self) -> None:
        con, self._con = self._con, None
        if con is not None:
            try:
                con.close()
            except Exception:  # noqa: BLE001 - a broken connection may fail to close; it is gone anyway
                pass

    def close(self) -> None:
        self._drop()


class PgStateStore(StateStore):
    """Frame-set states in PostgreSQL (see the module docstring); shared by relays on any host."""

    def __init__(self, dsn: str, *, schema: str = "public") -> None:
        self.db = PgConnection(dsn, schema=schema, setup=STATE_SCHEMA, error=StateStoreError)
        self._lock = threading.Lock()
        with self._lock:
            self.db.connection()           # fail at start-up on a wrong DSN, not at the first frame

    def _decode(self, name: str, record: str, state_kw: dict[str, Any]) -> FrameSetState:
        try:
            return FrameSetState.from_record(json.loads(record), **state_kw)
        except (ValueError, KeyError, TypeError) as err:
            raise StateStoreError(f"{self.db.where()}: frame set {name!r}: unreadable record: {err}") from err

    def load_all(self, **state_kw: Any) -> dict[str, FrameSetState]:
        with self._lock:
            rows = self.db.run("reading frame sets",
                               lambda sql: sql.execute("SELECT name, record FROM frame_sets").fetchall())
        return {n: self._decode(n, r, state_kw) for n, r in rows}

    def load(self, name: str, **state_kw: Any) -> FrameSetState | None:
        with self._lock:
            row = self.db.run(f"reading frame set {name!r}", lambda sql: sql.execute(
                "SELECT record FROM frame_sets WHERE name = ?", (name,)).fetchone())
        return None if row is None else self._decode(name, row[0], state_kw)

    @staticmethod
    def _upsert(sql: _Sql, states: Iterable[FrameSetState]) -> None:
        now = time.time()
        sql.executemany("INSERT INTO frame_sets(name, record, updated) VALUES (?, ?, ?) "
                        "ON CONFLICT(name) DO UPDATE SET record = excluded.record, updated = excluded.updated",
                        [(s.name, json.dumps(s.to_record(), separators=(",", ":")), now) for s in states])

    def save(self, states: Iterable[FrameSetState]) -> None:
        states = list(states)
        if not states:
            return

        def tx(sql: _Sql) -> None:
            self.db.lock(sql, "state", [s.name for s in states])
            self._upsert(sql, states)

        with self._lock:
            self.db.run(f"saving {len(states)} frame set(s)", tx)

    def update(self, names: Iterable[str], fn: Callable[[dict[str, FrameSetState]], None],
               **state_kw: Any) -> dict[str, FrameSetState]:
        names = list(dict.fromkeys(names))

        def tx(sql: _Sql) -> dict[str, FrameSetState]:
            self.db.lock(sql, "state", names)     # other writers of these frame sets wait here
            found = dict(sql.execute("SELECT name, record FROM frame_sets WHERE name = ANY(?)",
                                     (names,)).fetchall()) if names else {}
            states = {n: self._decode(n, found[n], state_kw) if n in found else FrameSetState(n, **state_kw)
                      for n in names}
            fn(states)
            self._upsert(sql, states.values())
            return states

        with self._lock:
            return self.db.run(f"updating {len(names)} frame set(s)", tx)

    def close(self) -> None:
        with self._lock:
            self.db.close()


class _Objects(_Placement):
    """PgArchive's placement: the commit's bytes as one content-addressed object."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.buf = bytearray()
        self.placed: list[tuple[int, int]] = []
        self.name = ""

    def place(self, kind: str, station: str | None, when: Any, data: bytes) -> int:
        self.placed.append((len(self.buf), len(data)))
        self.buf += data
        return len(self.placed) - 1

    def write(self) -> None:
        if not self.buf:
            return
        digest = hashlib.sha256(self.buf).hexdigest()
        self.name = f"objects/{digest[:2]}/{digest[2:]}"
        write_object(self.root / self.name, bytes(self.buf))

    def where(self, handle: int) -> tuple[str, int, int]:
        off, n = self.placed[handle]
        return self.name, off, n


def write_object(path: Path, data: bytes) -> None:
    """Write *data* to *path* once and durably: temp file, fsync, rename, fsync of the directory.
    An existing *path* is left alone (its name is its content's SHA-256; it was fsync'd before its
    rename), but its directory is synced again: the process that renamed it may have died before
    its own directory sync, and the index row about to be committed must not outlive the name."""
    if path.exists() and path.stat().st_size == len(data):
        fsync_dir(path.parent)
        return
    makedirs(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


class PgArchive(IndexedArchive):
    """The archive index in PostgreSQL, the bytes as content-addressed objects under *root*."""

    def __init__(self, dsn: str, root: str | Path, *, schema: str = "public", writer: str = "relay",
                 quarantine_max_bytes: int = DEFAULT_QUARANTINE_MAX_BYTES) -> None:
        if not writer or not all(c.isalnum() or c in "-_" for c in writer):
            raise ArchiveError(f"archive writer name {writer!r} must be letters, digits, '-' or '_'")
        self.root = Path(root)
        self.writer = writer
        self.quarantine_max_bytes = quarantine_max_bytes
        self._lock = threading.Lock()
        self.conn = PgConnection(dsn, schema=schema, setup=ARCHIVE_SCHEMA, error=ArchiveError)
        self._db: Any = None
        self._tx: Any = None
        try:
            makedirs(self.root / "objects")
        except OSError as err:
            raise ArchiveError(f"{self.root}: cannot create the object root: {err}") from err
        with self._lock:
            (q,) = self.conn.run("reading the quarantine size", lambda sql: sql.execute(
                "SELECT COALESCE(SUM(length), 0) FROM quarantine").fetchone())
        self._quarantine_bytes = int(q)

    # -- the IndexedArchive hooks --------------------------------------------------------------------
    def commit(self, frames: Iterable[FrameRecord], quarantined: Iterable[QuarantineRecord] = (), *,
               events: Iterable[EventRecord] = (), ims20: Iterable[Ims20Record] = ()) -> list[StoreResult]:
        frames, quarantined, events, ims20 = list(frames), list(quarantined), list(events), list(ims20)
        with self._lock:
            q_bytes = self._quarantine_bytes     # _commit counts kept payloads before our COMMIT
            try:
                return self.conn.run(f"commit of {len(frames)} frame(s)",
                                     lambda sql: self._in_tx(sql, frames, quarantined, events, ims20))
            except OSError as err:
                self._quarantine_bytes = q_bytes
                raise ArchiveError(f"{self.root}: writing an archive object failed: {err}") from err
            except BaseException:
                self._quarantine_bytes = q_bytes
                raise

    def _in_tx(self, sql: _Sql, frames: list, quarantined: list, events: list, ims20: list) -> list[StoreResult]:
        self._db = sql
        try:
            return self._commit(frames, quarantined, events, ims20)
        finally:
            self._db = None

    def _begin(self, frame_sets: set[str]) -> None:
        self.conn.lock(self._db, "archive", frame_sets)   # (PgConnection.run opened the transaction)

    def _end(self) -> None:
        pass                                               # committed when run()'s block ends

    def _abort(self) -> None:
        pass                                               # run() rolls back

    def _placement(self) -> _Placement:
        return _Objects(self.root)

    # -- reading ------------------------------------------------------------------------------------
    def _rows(self, sql_text: str, args: Any = ()) -> list[tuple]:
        with self._lock:
            return self.conn.run("reading the archive index",
                                 lambda sql: [tuple(r) for r in sql.execute(sql_text, tuple(args)).fetchall()])

    def stats(self) -> dict[str, Any]:
        def q(sql: _Sql) -> dict[str, Any]:
            frames, nbytes = sql.execute("SELECT COUNT(*), COALESCE(SUM(length), 0) FROM frames").fetchone()
            by_reason = {r: int(n) for r, n in
                         sql.execute("SELECT reason, COUNT(*) FROM quarantine GROUP BY reason").fetchall()}
            (events,) = sql.execute("SELECT COUNT(*) FROM events").fetchone()
            (ims20,) = sql.execute("SELECT COUNT(*) FROM ims20").fetchone()
            return {"frames": int(frames), "bytes": int(nbytes), "events": int(events), "ims20": int(ims20),
                    "quarantined": sum(by_reason.values()), "quarantined_by_reason": by_reason,
                    "quarantine_bytes": self._quarantine_bytes}

        with self._lock:
            return self.conn.run("reading archive statistics", q)

    def query(self, fn: Callable[[_Sql], Any]) -> Any:
        """``fn(sql)`` on the index in one read transaction (``relay kpi`` / ``relay status``)."""
        with self._lock:
            return self.conn.run("reading the archive index", fn)

    def _read(self, rel: str, offset: int, length: int) -> bytes:
        p = self.root / rel
        try:
            with open(p, "rb") as f:
                f.seek(offset)
                data = f.read(length)
        except OSError as err:
            raise ArchiveError(f"{p}: cannot read an archived object: {err}") from err
        if len(data) != length:
            raise ArchiveError(f"{p}: index entry at {offset}+{length} is past the end of the object")
        return data

    def close(self) -> None:
        with self._lock:
            self.conn.close()
