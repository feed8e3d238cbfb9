"""The station's durable outbox: every frame is on disk before anything upstream forgets it.

Owns the on-disk store of outgoing messages (CD-1.1 frames and any other ``kind``), keyed by
``(frame_set, seq)``, with the bookkeeping the uplink needs: what was never sent, what is in flight,
what the relay's acknack covered (deleted) or listed as a gap (queued for resend).  It also owns the
bounds (bytes and age, oldest evicted first, each eviction raising an alarm) and the disk-full
policy.  It does not own framing (``framer.py``), MQTT (``uplink.py``) or the acknack wire format
(``ims_station.cd11``).

Store: SQLite in WAL mode with ``synchronous=FULL`` (the stdlib ``sqlite3``, no hand-written log).
Chosen by measurement (``python -m bench outbox``, or ``python -m ims_station.edge.outbox --measure DIR``
on a given medium; figures in
docs/uplink.md): at the project's rates (one 10-s frame per station) any of the candidates is
hundreds of times fast enough, so the choice is made on durability.  ``put`` returns only after the
transaction's WAL frames are fsync'd, so a power cut right after the board was acknowledged cannot
lose the frame -- with ``synchronous=NORMAL`` WAL commits survive a process crash (SIGKILL) but the
last transactions may roll back on power loss, and the board would already have dropped the
samples from its ring.  WAL rather than a rollback journal: readers (``next_to_send``, ``stats``)
never block the writer, and a commit is one sequential append + fsync instead of two fsyncs.

Durable facts beyond the rows (table ``frame_sets``): the highest sequence number ever committed
per frame set, which survives deletion and eviction, so the framer can refuse to rebuild a
committed sequence number after a restart; and the eviction counters (so an alarm count is not
reset by a restart).  Table ``ack_points``: per digitizer board, the link sequence number up to
which every sample is inside committed frames (the board's ACK point), written by the gateway
right after the frames' commit and before the board is acknowledged, so a restarted gateway resumes
from it and asks the board's ring for the rest (docs/uplink.md, "Board -> disk").

One process, an intact file: the outbox holds an exclusive lock beside its database
(``<path>.lock``, :class:`ims_station.locks.PidLock`) from opening to :meth:`Outbox.close`, so a
second gateway on the same outbox is refused naming the first (:class:`OutboxLockedError`); and it
refuses, before writing anything, a file it cannot use -- damaged, truncated, read-only, another
program's database, a missing database beside its WAL, a missing directory tree -- with an
:class:`OutboxOpenError` naming the file and the fix (docs/uplink.md, "Opening").

Maintenance (``ims-station edge outbox``, ``edge/outbox_admin.py``): :meth:`Outbox.items`,
:meth:`Outbox.delete` and :meth:`Outbox.replace_payload` change stored frames outside the normal
flow; they are allowed only on an outbox opened with ``exclusive=True`` (maintenance mode).  The
lock above keeps them off an outbox a gateway has open, and a gateway off one a maintenance command
holds: whichever comes second is refused with :class:`OutboxLockedError` naming the other process.

Disk full: SQLite reports ``SQLITE_FULL`` ("database or disk is full") both for a full file system
and for ``max_page_count``.  ``put`` then checkpoints and truncates the WAL, evicts the oldest
frames (alarm ``disk_full``), and retries, a bounded number of times.  Deleted pages go to SQLite's
freelist and are reused by the next insert, so evicting makes room without shrinking the file.
If nothing is left to evict, :class:`OutboxFullError` is raised: the caller keeps running and
simply does not acknowledge the board (its ring buffer still holds the samples).

Auxiliary mode (docs/uplink.md, "Auxiliary mode"; ``hold_kinds``): frames of those kinds (the
station's ``cd11`` data) are committed *held* -- durable like any frame but never returned by
:meth:`next_to_send` -- so the outbox is the station's continuous buffer, bounded by the same age
and byte limits (oldest evicted first; held frames rolling off by age are counted
``held_expired_frames`` without an alarm, that is the buffer working).  :meth:`release` makes the
held frames overlapping a time window sendable, and remembers the window (table ``releases``) so
that frames committed later inside it (a window reaching into the future: the post-event margin)
are committed sendable.  An acknack never makes a held frame sendable (it was never sent, so no
gap or implied gap requeues it), and a released frame the relay's acknack covers goes back to the
buffer, held, instead of being deleted: a later request for its window sends it again.  What was
evicted is remembered per frame set (``evicted_through``) so a request can say why a frame is
missing (:meth:`window`).  Opening with no ``hold_kinds`` releases every held frame (the station left
auxiliary mode: its buffer is sent; the relay dedupes what it already has), except in maintenance
mode (``exclusive=True``), which changes nothing it is not asked to.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import logging
import math
import os
import shutil
import sqlite3
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from ims_station.cd11.wire import MAX_GAPS
from ims_station.durable import makedirs
from ims_station.errors import ImsStationError, LocalProtocolError
from ims_station.locks import PidLock, ResourceBusyError

log = logging.getLogger(__name__)

# 2: auxiliary mode -- frames.held, frame_sets.evicted_through, table releases (a version-1 file is
# upgraded in place when opened: its frames are not held, nothing is known of what it evicted).
SCHEMA_VERSION = 2
_SCHEMA = """
CREATE TABLE IF NOT EXISTS frames (
    id INTEGER PRIMARY KEY,            -- commit order
    kind TEXT NOT NULL,
    frame_set TEXT NOT NULL,
    seq INTEGER NOT NULL,
    nominal_time REAL NOT NULL,        -- POSIX seconds of the frame's nominal (data) time
    committed REAL NOT NULL,           -- clock.time() at put
    size INTEGER NOT NULL,
    digest BLOB NOT NULL,              -- SHA-256 of payload: "same seq, same bytes?" without reading blobs
    state INTEGER NOT NULL DEFAULT 0,  -- 0 pending (never sent or queued for resend), 1 sent, awaiting acknack
    sent_count INTEGER NOT NULL DEFAULT 0,
    pubacked INTEGER NOT NULL DEFAULT 0, -- 1 once the broker PUBACKed a publish of it (acknack may delete)
    last_sent REAL,                    -- clock.monotonic() of the last publish (process-local)
    payload BLOB NOT NULL,
    held INTEGER NOT NULL DEFAULT 0,   -- 1: kept in the station's buffer, not sent until released
    UNIQUE (frame_set, seq)
);
CREATE INDEX IF NOT EXISTS frames_pending ON frames (state, nominal_time);
CREATE INDEX IF NOT EXISTS frames_age ON frames (nominal_time, id);
CREATE INDEX IF NOT EXISTS frames_sendable ON frames (held, state, nominal_time);
CREATE INDEX IF NOT EXISTS frames_urgent ON frames (kind, state, id);  -- URGENT_KINDS first, cheap behind a backlog
CREATE TABLE IF NOT EXISTS frame_sets (
    frame_set TEXT PRIMARY KEY,
    highest_committed INTEGER NOT NULL,
    evicted_through INTEGER            -- highest seq ever evicted (NULL: none known)
);
CREATE TABLE IF NOT EXISTS releases (
    id INTEGER PRIMARY KEY,            -- auxiliary mode: time windows whose frames are sent
    frame_set TEXT NOT NULL,
    start REAL NOT NULL,               -- POSIX seconds, [start, end)
    end REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value);
CREATE TABLE IF NOT EXISTS sent_marks (
    frame_set TEXT PRIMARY KEY,
    highest_sent INTEGER NOT NULL      -- highest seq ever published (survives deletion)
);
CREATE TABLE IF NOT EXISTS ack_points (
    board_id INTEGER PRIMARY KEY,      -- the digitizer board (link board id)
    epoch INTEGER NOT NULL,            -- its boot counter (sequence numbers restart with it)
    seq INTEGER NOT NULL,              -- highest link seq whose samples are all committed here
    t_end_us INTEGER,                  -- end of the last sample of that packet (gap reports)
    updated REAL NOT NULL,             -- clock.time() of the update
    boot INTEGER NOT NULL DEFAULT 0    -- the run's boot number (link header; 0: not stated)
);
"""

STATE_PENDING = 0
STATE_SENT = 1

# Kinds sent before any data (next_to_send): station events must reach the relay within a second
# of the decision (issue 9), not wait behind hours of back-fill.  They are few and small.
URGENT_KINDS = ("events",)

# How many times put() evicts and retries on a full disk before giving up (each round evicts more).
_FULL_RETRIES = 8


class OutboxError(ImsStationError):
    """The outbox cannot do what was asked (see subclasses)."""


class OutboxFullError(OutboxError):
    """The disk is full and there is nothing left to evict: the frame was not committed."""


class OutboxOpenError(OutboxError):
    """The outbox cannot be opened: its directory is missing or not writable, the database file is
    read-only, or only its write-ahead log is left.  The message names the file and the fix; nothing
    was written to the database."""


class OutboxCorruptError(OutboxOpenError):
    """The database file is not a usable SQLite outbox (not a database, truncated, malformed).  It
    was left byte for byte as it was, for recovery (``sqlite3 FILE .recover``)."""


class OutboxLockedError(OutboxOpenError):
    """Another process (``pid``, None if unknown) has the outbox open: two gateways on one outbox
    would send, delete and acknowledge each other's frames."""

    def __init__(self, message: str, pid: int | None) -> None:
        super().__init__(message)
        self.pid = pid


class SequenceReuseError(OutboxError, LocalProtocolError):
    """A frame with the same (frame set, sequence number) but different bytes was offered.

    A bug in the framer (or a clock stepping backwards): CD-1.1 receivers dedupe by sequence
    number, so reusing one for different content would silently lose data at the relay.
    """


class AcknackTooLargeError(OutboxError, ValueError):
    """An acknack lists more gaps than the codec allows (:data:`MAX_GAPS`): not applied."""


def merge_gaps(lowest: int, highest: int, gaps: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """The gaps ``[start, end)`` of an acknack that matter for [lowest, highest]: each clipped to
    ``[lowest, highest + 1)``, empty ones dropped, sorted and merged into disjoint ranges in
    increasing order (touching ones joined).  A sequence number lies in one of the result exactly
    when it lies in [lowest, highest] and in one of *gaps*."""
    clipped = sorted((max(int(a), lowest), min(int(b), highest + 1)) for a, b in gaps)
    out: list[tuple[int, int]] = []
    for a, b in clipped:
        if a >= b:
            continue
        if out and a <= out[-1][1]:
            if b > out[-1][1]:
                out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


@dataclass(frozen=True)
class OutboxItem:
    id: int
    kind: str
    frame_set: str
    seq: int
    nominal_time: float
    payload: bytes
    sent_count: int


def _is_disk_full(err: BaseException) -> bool:
    if isinstance(err, sqlite3.OperationalError):
        code = getattr(err, "sqlite_errorcode", None)
        if code == sqlite3.SQLITE_FULL:
            return True
        msg = str(err).lower()
        return "database or disk is full" in msg or "no space" in msg
    return isinstance(err, OSError) and err.errno == errno.ENOSPC



# -- default byte bound (docs/uplink.md, "Default byte bound") --------------------------------------
# Bytes a CD-1.1 data frame needs, at worst: every sample as uncompressed s4 (CA is what we send
# where it helps, typically 1-2.5 bytes a sample, so s4 is the headroom), plus per channel subframe
# its header, channel status, key id and a 64-byte signature, plus per frame the headers, trailer
# signature and CRC.  Measured with the codec on incompressible int32 samples and Ed25519 keys:
# 3 ch x 100 sps 12,612 bytes, 30 ch x 40 sps 52,768, 1 ch x 1 sps 344 (tests/uplink/test_outbox.py
# checks the estimate stays above a built frame).
BOUND_BYTES_PER_SAMPLE = 4
BOUND_SUBFRAME_OVERHEAD = 160
BOUND_FRAME_OVERHEAD = 192
BOUND_DAYS = 7
# SQLite stores a payload with its row, index entries and page slack: keep the bound below the
# space the file system has for it.
BOUND_DISK_FRACTION = 0.9
MIN_MAX_BYTES = 1 << 20              # the schema's minimum for [outbox] max_bytes
FALLBACK_MAX_BYTES = 2_000_000_000   # no channels known (a separate --uplink file): the old default


def estimate_frame_bytes(streams: Iterable[tuple[int, float]], frame_seconds: float = 10.0) -> int:
    """Worst-case bytes of one data frame of *streams* (channel count, samples/s per channel)."""
    streams = list(streams)
    n = sum(ch for ch, _ in streams)
    samples = sum(ch * math.ceil(rate * frame_seconds) for ch, rate in streams)
    return samples * BOUND_BYTES_PER_SAMPLE + n * BOUND_SUBFRAME_OVERHEAD + BOUND_FRAME_OVERHEAD


def disk_bound(path: str | os.PathLike[str], min_free_bytes: int | None = None) -> int:
    """Payload bytes an outbox at *path* can hold on its file system now: free space plus what the
    outbox files already use, less the free-space margin (``min_free_bytes``, default min(16 MiB,
    a quarter of the file system)), times :data:`BOUND_DISK_FRACTION`."""
    p = Path(path)
    used = sum(f.stat().st_size for f in (p, p.with_name(p.name + "-wal"), p.with_name(p.name + ".reserve"))
               if f.exists())
    d = p.parent
    while not d.exists() and d != d.parent:
        d = d.parent
    du = shutil.disk_usage(d)
    margin = min_free_bytes if min_free_bytes is not None else min(16 << 20, du.total // 4)
    return max(0, int((du.free + used - margin) * BOUND_DISK_FRACTION))


def default_max_bytes(streams: Iterable[tuple[int, float]], *, frame_seconds: float = 10.0,
                      days: float = BOUND_DAYS, path: str | os.PathLike[str] | None = None,
                      min_free_bytes: int | None = None) -> tuple[int, dict]:
    """The byte bound when the operator set none: *days* of frames at the configured rates
    (:func:`estimate_frame_bytes` x frames in *days*), capped by :func:`disk_bound` of *path*.
    Returns (bound, how) where *how* says which figures gave it (logged, and shown in the stats)."""
    streams = [(int(c), float(r)) for c, r in streams if c > 0 and r > 0]
    if streams:
        per_frame = estimate_frame_bytes(streams, frame_seconds)
        want = math.ceil(days * 86400 / frame_seconds) * per_frame
        how = {"rule": f"{days:g} days", "frame_bytes": per_frame, "frames": math.ceil(days * 86400 / frame_seconds)}
    else:
        want, how = FALLBACK_MAX_BYTES, {"rule": "no channels known: fixed fallback"}
    how["wanted"] = want
    bound = want
    if path is not None:
        disk = disk_bound(path, min_free_bytes)
        how["disk"] = disk
        if disk < bound:
            bound, how["capped_by"] = disk, "disk"
    return max(bound, MIN_MAX_BYTES), how


def _lock(path: Path) -> PidLock:
    """The outbox's directory (created if missing, but only if its parent exists: a missing parent
    is more often an unmounted file system or a typo than a fresh install) and the exclusive lock
    ``<db>.lock`` beside the database, held until :meth:`Outbox.close` (or the process ends)."""
    d = path.parent
    if not d.is_dir():
        if d.exists():
            raise OutboxOpenError(f"outbox {path}: {d} is not a directory: set [outbox] path or "
                                  "[station] data_dir to a directory")
        if not d.parent.is_dir():
            raise OutboxOpenError(f"outbox {path}: its directory {d} does not exist, nor does {d.parent}: "
                                  "create it (is its file system mounted?) or correct [station] data_dir")
        try:
            # Durable: SQLite syncs the directory of its files, not the one above (ims_station.durable).
            makedirs(d)
        except OSError as err:
            raise OutboxOpenError(f"outbox {path}: cannot create its directory {d} ({err.strerror}): "
                                  "create it, writable by the gateway's user") from err
    lock = path.with_name(path.name + ".lock")
    try:
        return PidLock(lock, f"outbox {path}", "stop that gateway first; two gateways must never share an "
                                                "outbox (each station needs its own [station] data_dir)")
    except ResourceBusyError as err:
        raise OutboxLockedError(str(err), err.pid) from None
    except OSError as err:
        raise OutboxOpenError(f"outbox {path}: cannot create its lock file {lock} ({err.strerror}): "
                              f"the directory {d} must be writable by the gateway's user "
                              "(is the file system mounted read-only?)") from err


def _check_store(path: Path) -> None:
    """Refuse, before anything writes to it, a database file the outbox cannot use: missing while
    its write-ahead log is there (the frames are in a file SQLite would discard), not a regular
    file, not writable, not an SQLite database, another program's database, truncated, or
    malformed where the start-up reads (schema, frame index, counters).  Looked at through a
    read-only connection, which never writes to the file, so a damaged outbox stays as it was."""
    wal = path.with_name(path.name + "-wal")
    if not path.exists():
        if path.is_symlink():
            raise OutboxOpenError(f"outbox {path} is a symbolic link to a missing file: restore the "
                                  "database or remove the link")
        if wal.exists() and wal.stat().st_size > 0:
            raise OutboxOpenError(f"outbox {path} is missing but its write-ahead log {wal} is there: "
                                  f"restore the database, or move {wal} aside to start an empty outbox")
        return
    if not path.is_file():
        raise OutboxOpenError(f"outbox {path} is not a regular file: set [outbox] path to a database file")
    if not os.access(path, os.R_OK | os.W_OK):
        raise OutboxOpenError(f"outbox {path} is not readable and writable by this user: give it to the "
                              "gateway's user (chown, chmod 600)")
    from urllib.parse import quote

    ro = None
    try:
        ro = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True)
        page_size = ro.execute("PRAGMA page_size").fetchone()[0]
        tables = {r[0] for r in ro.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if tables and "frames" not in tables:
            raise OutboxCorruptError(f"outbox {path} is an SQLite database but not an outbox (tables: "
                                     f"{', '.join(sorted(tables))}): set [outbox] path to the outbox's file")
        pages = ro.execute("PRAGMA page_count").fetchone()[0]
        size = path.stat().st_size
        if not (wal.exists() and wal.stat().st_size > 0) and pages * page_size > size:
            # The header's page count is SQLite's own (valid only if the change counter agrees).
            raise OutboxCorruptError(f"outbox {path} is truncated ({size} bytes; its header says "
                                     f"{pages * page_size}): {_CORRUPT_ADVICE.format(path=path)}")
        if "frames" in tables:
            ro.execute("SELECT COUNT(*), SUM(size), MIN(nominal_time) FROM frames").fetchone()
            for t in ("meta", "frame_sets", "ack_points", "sent_marks"):
                if t in tables:
                    ro.execute(f"SELECT * FROM {t}").fetchall()
    except sqlite3.DatabaseError as err:
        raise _open_error(path, err) from err
    finally:
        if ro is not None:
            ro.close()


_CORRUPT_ADVICE = ("move it (and its -wal and -shm files) aside and start again with an empty outbox; "
                   "frames it held that were not delivered can be salvaged with `sqlite3 {path} .recover`")


def _open_error(path: Path, err: sqlite3.DatabaseError) -> OutboxOpenError:
    """The one-line error for an SQLite error met while opening *path*."""
    code = getattr(err, "sqlite_errorcode", None)
    if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB) or type(err) is sqlite3.DatabaseError:
        return OutboxCorruptError(f"outbox {path} is damaged ({err}): {_CORRUPT_ADVICE.format(path=path)}")
    if code == sqlite3.SQLITE_READONLY or "readonly" in str(err):
        return OutboxOpenError(f"outbox {path} cannot be written ({err}): make it and its directory "
                               "writable by the gateway's user (is the file system mounted read-only?)")
    return OutboxOpenError(f"outbox {path} cannot be opened ({err}): check the file, its directory "
                           "and the file system")


class Outbox:
    """Durable, bounded store of outgoing frames.  Thread-safe (one connection, one lock): the
    gateway's ingest thread ``put``s while paho's network thread applies acknacks."""

    def __init__(self, path: str | os.PathLike[str], *, max_bytes: int, max_age_s: float, clock: Any,
                 on_alarm: Callable[[dict], None] | None = None, synchronous: str = "FULL",
                 resend_holdoff_s: float = 5.0, reserve_bytes: int = 256 * 1024,
                 min_free_bytes: int | None = None, exclusive: bool = False,
                 hold_kinds: Iterable[str] = (), hold_span_s: float = 10.0) -> None:
        """*hold_kinds*: kinds committed held (auxiliary mode; see the module docstring);
        *hold_span_s*: the time a held frame covers from its nominal time (the framer's frame
        length), for the overlap of a frame with a released window."""
        if max_bytes <= 0 or max_age_s <= 0:
            raise ValueError("max_bytes and max_age_s must be positive")
        if synchronous not in ("FULL", "NORMAL", "EXTRA"):
            raise ValueError("synchronous must be FULL, EXTRA or NORMAL")
        self.path = Path(path)
        self.max_bytes = int(max_bytes)
        self.max_age_s = float(max_age_s)
        self.resend_holdoff_s = float(resend_holdoff_s)
        self._clock = clock
        self._on_alarm = on_alarm
        self._lock = threading.RLock()
        self._maintenance = bool(exclusive)
        self.hold_kinds = frozenset(hold_kinds)
        self.hold_span_s = float(hold_span_s)
        self._pidlock = _lock(self.path)
        try:
            _check_store(self.path)
            # isolation_level=None: we issue BEGIN IMMEDIATE / COMMIT ourselves, so a transaction is
            # exactly one put (or one acknack) and nothing is left open by the sqlite3 module.
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
            try:
                self._open_schema(synchronous)
            except BaseException as err:
                self._db.close()
                if isinstance(err, sqlite3.DatabaseError):
                    raise _open_error(self.path, err) from err
                raise
        except BaseException:
            self._pidlock.release()
            raise
        self.last_alarm: dict | None = None
        self._alarms_pending: list[dict] = []
        self._resends_queued = 0
        self.reserve_bytes = int(reserve_bytes)
        # Free space kept on the file system (default: 16 MiB, or a quarter of a small one).
        self.min_free_bytes = None if min_free_bytes is None else int(min_free_bytes)
        self._reserve = self.path.with_name(self.path.name + ".reserve")
        self._ensure_reserve()

    def _open_schema(self, synchronous: str) -> None:
        """Journal mode, pragmas, schema (created or upgraded), counters; frames left "sent" by a
        previous process go back to pending.  After :func:`_check_store`, so a damaged file is
        refused before anything here writes to it."""
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        # Keep the WAL file from staying large after a burst (matters on a small SD card / tmpfs).
        # Bounded WAL: the checkpoint must be able to copy it into the database file, so on a
        # small or nearly full medium the WAL must not be what fills it (SQLite's default lets
        # it reach 4 MB before checkpointing).
        self._db.execute("PRAGMA wal_autocheckpoint=100")
        self._db.execute("PRAGMA journal_size_limit=524288")
        cols = {r[1] for r in self._db.execute("PRAGMA table_info(frames)")}
        if cols and "pubacked" not in cols:
            # An outbox written before acknacks were limited to PUBACKed frames: its frames count as
            # not PUBACKed, so they are published again before an acknack can delete them.
            self._db.execute("ALTER TABLE frames ADD COLUMN pubacked INTEGER NOT NULL DEFAULT 0")
        cols = {r[1] for r in self._db.execute("PRAGMA table_info(ack_points)")}
        if cols and "boot" not in cols:
            # ACK points written before runs had boot numbers: 0, "not known", matches any run.
            self._db.execute("ALTER TABLE ack_points ADD COLUMN boot INTEGER NOT NULL DEFAULT 0")
        tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "meta" in tables:
            stored = self._meta("schema_version", SCHEMA_VERSION)
            if int(stored) > SCHEMA_VERSION:
                raise OutboxOpenError(f"outbox {self.path} has schema version {stored}, written by a newer "
                                      f"ims-station (this one knows up to {SCHEMA_VERSION}): upgrade the software")
        # Version 1 -> 2 (auxiliary mode): one transaction, so a crash leaves version 1 or 2.
        cols = {r[1] for r in self._db.execute("PRAGMA table_info(frames)")}
        fs_cols = {r[1] for r in self._db.execute("PRAGMA table_info(frame_sets)")}
        if (cols and "held" not in cols) or (fs_cols and "evicted_through" not in fs_cols):
            self._db.execute("BEGIN IMMEDIATE")
            if cols and "held" not in cols:
                self._db.execute("ALTER TABLE frames ADD COLUMN held INTEGER NOT NULL DEFAULT 0")
            if fs_cols and "evicted_through" not in fs_cols:
                self._db.execute("ALTER TABLE frame_sets ADD COLUMN evicted_through INTEGER")
            self._db.execute("COMMIT")
        self._db.executescript(_SCHEMA)
        self._db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
        row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM frames").fetchone()
        self._frames, self._bytes = int(row[0]), int(row[1])
        # Frames marked "sent" by a previous process are in an unknown state (the broker may or may
        # not have them): queue them again; the relay dedupes.
        self._db.execute("UPDATE frames SET state = 0, last_sent = NULL WHERE state = 1")
        if not self.hold_kinds and not self._maintenance:
            # A gateway not (or no longer) in auxiliary mode: the buffer is sent (module docstring).
            # Maintenance commands (exclusive) leave it as it is.
            self._db.execute("UPDATE frames SET held = 0 WHERE held = 1")
        self._counters = {k: int(self._meta(k, 0)) for k in ("evicted_frames", "evicted_bytes", "alarms",
                                                             "disk_full_events", "acked_frames",
                                                             "purged_frames", "held_expired_frames",
                                                             "released_frames")}

    # -- helpers ---------------------------------------------------------------------------------
    def _meta(self, key: str, default: Any = None) -> Any:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else row[0]

    def _save_counters(self) -> None:
        self._db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", list(self._counters.items()))

    @contextmanager
    def _txn(self):
        """One write transaction.  Counters and alarms raised inside it take effect only if it
        commits: a rolled-back eviction (full disk) did not happen and must not be reported."""
        saved = dict(self._counters)
        self._alarms_pending = []
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            self._rollback()
            self._counters = saved
            self._alarms_pending = []
            row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM frames").fetchone()
            self._frames, self._bytes = int(row[0]), int(row[1])
            raise
        pending, self._alarms_pending = self._alarms_pending, []
        for alarm in pending:
            self._fire(alarm)

    def _alarm(self, reason: str, **info: Any) -> None:
        self._counters["alarms"] += 1
        self._alarms_pending.append({"alarm": "outbox_eviction", "reason": reason, "time": self._clock.time(),
                                     **info})

    def _fire(self, alarm: dict) -> None:
        self.last_alarm = alarm
        info = alarm
        log.warning("outbox: %s: evicted %s frames (%s bytes), seq %s..%s", alarm["reason"], info.get("frames"),
                    info.get("bytes"), info.get("first_seq"), info.get("last_seq"))
        if self._on_alarm is not None:
            try:
                self._on_alarm(alarm)
            except Exception:  # an SOH publisher failing must not lose the frame being committed
                log.exception("outbox: alarm callback failed")

    def _evict_where(self, reason: str, where: str, args: Iterable[Any], *, alarm: bool = True) -> int:
        """Delete rows selected by *where* (inside the caller's transaction); alarm if any (without
        *alarm*: held frames rolling off the auxiliary buffer by age, counted ``held_expired_frames``)."""
        rows = self._db.execute(f"SELECT id, seq, size, frame_set FROM frames WHERE {where}",
                                tuple(args)).fetchall()
        if not rows:
            return 0
        ids = [(r[0],) for r in rows]
        nbytes = sum(r[2] for r in rows)
        self._db.executemany("DELETE FROM frames WHERE id = ?", ids)
        through: dict[str, int] = {}
        for _, seq, _, fs in rows:
            through[fs] = max(seq, through.get(fs, seq))
        # What was evicted, durably: a request for it is answered "evicted" (window()).
        self._db.executemany("UPDATE frame_sets SET evicted_through = MAX(COALESCE(evicted_through, -1), ?) "
                             "WHERE frame_set = ?", [(seq, fs) for fs, seq in through.items()])
        self._frames -= len(rows)
        self._bytes -= nbytes
        if not alarm:
            self._counters["held_expired_frames"] += len(rows)
            return len(rows)
        self._counters["evicted_frames"] += len(rows)
        self._counters["evicted_bytes"] += nbytes
        self._alarm(reason, frames=len(rows), bytes=nbytes, first_seq=min(r[1] for r in rows),
                    last_seq=max(r[1] for r in rows))
        return len(rows)

    def _evict_oldest_bytes(self, reason: str, need: int) -> int:
        """Evict the oldest frames (by nominal time, then commit order) until *need* bytes are freed."""
        count, freed = 0, 0
        # Stream the oldest rows rather than loading a week of index into memory.
        for (size,) in self._db.execute("SELECT size FROM frames ORDER BY nominal_time, id"):
            if freed >= need:
                break
            count += 1
            freed += size
        if not count:
            return 0
        return self._evict_where(
            reason, "id IN (SELECT id FROM frames ORDER BY nominal_time, id LIMIT ?)", (count,))

    # -- the interface ---------------------------------------------------------------------------
    def put(self, kind: str, frame_set: str, seq: int, nominal_time: float, payload: bytes) -> bool:
        """Commit one frame durably; return True once it is on disk (or already was, same bytes).

        Raises :class:`SequenceReuseError` if (frame_set, seq) is stored with different bytes, or was
        committed before (and since acknowledged or evicted) -- the framer must never rebuild it --
        and :class:`OutboxFullError` if the disk is full and nothing can be evicted.
        """
        payload = bytes(payload)
        digest = hashlib.sha256(payload).digest()
        with self._lock:
            row = self._db.execute("SELECT digest FROM frames WHERE frame_set = ? AND seq = ?",
                                   (frame_set, seq)).fetchone()
            if row is not None:
                if row[0] == digest:
                    return True
                raise SequenceReuseError(f"outbox: frame set {frame_set!r} seq {seq} already committed "
                                         "with different bytes")
            hi = self.highest_committed(frame_set)
            if hi is not None and seq <= hi:
                # Below the high-water mark and no longer stored: acknowledged or evicted.  We cannot
                # compare the bytes any more, so refuse: a sequence number is committed only once.
                raise SequenceReuseError(f"outbox: frame set {frame_set!r} seq {seq} is not above the "
                                         f"highest committed seq {hi} (already delivered or evicted)")
            self._keep_free_space(len(payload))
            last_err: BaseException | None = None
            for attempt in range(_FULL_RETRIES):
                try:
                    self._put_txn(kind, frame_set, seq, nominal_time, payload, digest)
                    return True
                except (sqlite3.OperationalError, OSError) as err:
                    if not _is_disk_full(err):
                        raise
                    last_err = err
                    if not self._make_room(len(payload) * (2 ** attempt) + 65536):
                        break
            raise OutboxFullError(f"outbox {self.path}: disk full and nothing left to evict "
                                  f"(frame set {frame_set!r} seq {seq} not committed)") from last_err

    def _put_txn(self, kind: str, frame_set: str, seq: int, nominal_time: float, payload: bytes,
                 digest: bytes) -> None:
        now = self._clock.time()
        with self._txn():
            held = kind in self.hold_kinds and self._db.execute(
                "SELECT 1 FROM releases WHERE frame_set = ? AND start < ? AND end > ? LIMIT 1",
                (frame_set, float(nominal_time) + self.hold_span_s, float(nominal_time))).fetchone() is None
            self._db.execute(
                "INSERT INTO frames (kind, frame_set, seq, nominal_time, committed, size, digest, payload, held)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (kind, frame_set, seq, float(nominal_time), now, len(payload), digest, payload, int(held)))
            self._db.execute(
                "INSERT INTO frame_sets (frame_set, highest_committed) VALUES (?, ?) ON CONFLICT (frame_set) DO UPDATE SET "
                "highest_committed = MAX(highest_committed, excluded.highest_committed)", (frame_set, seq))
            self._frames += 1
            self._bytes += len(payload)
            before = self._counters["evicted_frames"] + self._counters["held_expired_frames"]
            self._evict_where("age", "nominal_time < ? AND held = 1 AND NOT (frame_set = ? AND seq = ?)",
                              (now - self.max_age_s, frame_set, seq), alarm=False)
            self._evict_where("age", "nominal_time < ? AND NOT (frame_set = ? AND seq = ?)",
                              (now - self.max_age_s, frame_set, seq))
            if self._bytes > self.max_bytes:
                self._evict_oldest_bytes("bytes", self._bytes - self.max_bytes)
            if self._counters["evicted_frames"] + self._counters["held_expired_frames"] != before:
                self._save_counters()

    def _rollback(self) -> None:
        try:
            self._db.execute("ROLLBACK")
        except sqlite3.OperationalError:
            pass  # no transaction open (SQLite already rolled back on SQLITE_FULL)

    def _free_bytes(self) -> tuple[int, int] | None:
        try:
            st = os.statvfs(self.path.parent)
        except (OSError, AttributeError):
            return None
        return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize

    def _keep_free_space(self, size: int) -> None:
        """Evict *before* the file system is full.  Once SQLite hits a full disk, even a delete may
        not fit in the WAL, and the WAL cannot be checkpointed into a database file that needs to
        grow; so when free space is under the margin, the new frame must fit in pages freed inside
        the database file (SQLite's freelist), which it reuses without growing the file."""
        fs = self._free_bytes()
        if fs is None:
            return
        free, total = fs
        margin = self.min_free_bytes if self.min_free_bytes is not None else min(16 << 20, total // 4)
        if free >= margin or self._frames == 0:
            return
        page = self._db.execute("PRAGMA page_size").fetchone()[0]
        reusable = self._db.execute("PRAGMA freelist_count").fetchone()[0] * page
        # payload + b-tree/overflow overhead, at least 64 KiB at a time so that a full disk costs
        # one eviction (and one alarm) per few frames, not one per frame.
        need = max(size + size // 4 + 4 * page, 64 << 10) - reusable
        if need <= 0:
            return
        self._counters["low_space_events"] = self._counters.get("low_space_events", 0) + 1
        try:
            with self._txn():
                self._evict_oldest_bytes("disk_full", need)
                self._save_counters()
        except sqlite3.OperationalError as err:
            if not _is_disk_full(err):
                raise
            # put() meets SQLITE_FULL next and takes the slower path (_make_room).

    def _checkpoint(self) -> bool:
        """Copy the WAL into the database; True if it completed.  RESTART, not TRUNCATE: the WAL
        file keeps its size (up to journal_size_limit), so the next transactions reuse that space
        instead of needing the file system to grow it.  It cannot complete while the database
        file needs to grow on a full disk."""
        try:
            busy, log_pages, done = self._db.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
        except sqlite3.OperationalError:
            return False
        return not busy and done == log_pages

    def _ensure_reserve(self) -> None:
        """Best effort: (re)create the reserve file that a full disk gives back for eviction."""
        if self.reserve_bytes <= 0 or self._reserve.exists():
            return
        tmp = self._reserve.with_suffix(".tmp")
        try:
            with open(tmp, "wb") as fh:
                fh.write(b"\0" * self.reserve_bytes)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self._reserve)
        except OSError:
            tmp.unlink(missing_ok=True)

    def _release_reserve(self) -> bool:
        try:
            self._reserve.unlink()
        except FileNotFoundError:
            return False
        self._counters["reserve_released"] = self._counters.get("reserve_released", 0) + 1
        return True

    def _make_room(self, need: int) -> bool:
        """On a full disk: evict the oldest frames and give their pages back to the file system.
        False if nothing could be freed.

        Deleting is itself a write (the WAL must take the changed pages); if even that fails, the
        reserve file is given up first -- the classic ballast-file technique -- and recreated
        once space is back.
        """
        self._counters["disk_full_events"] += 1
        if not self._checkpoint() and self._release_reserve():
            self._checkpoint()
        if self._frames == 0:
            return False
        for use_reserve in (False, True):
            if use_reserve:
                if not self._release_reserve():
                    break
                self._checkpoint()
            try:
                with self._txn():
                    n = self._evict_oldest_bytes("disk_full", max(need, 1))
                    self._save_counters()
            except sqlite3.OperationalError as err:
                if not _is_disk_full(err):
                    raise
                log.error("outbox: cannot evict on a full disk%s: %s",
                          " even after releasing the reserve" if use_reserve else "", err)
                continue
            self._checkpoint()
            self._ensure_reserve()
            return n > 0
        return False

    def set_ack_point(self, board_id: int, epoch: int, seq: int, t_end_us: int | None = None,
                      boot: int = 0) -> None:
        """Record durably (own transaction, fsync'd like a frame) that every sample of *board_id*'s
        packets up to *seq* of *epoch* (run *boot*) is in committed frames.  Only moves forward
        within a run (a lower *seq* of the same epoch and boot is ignored); another run replaces it."""
        with self._lock:
            with self._txn():
                self._db.execute(
                    "INSERT INTO ack_points (board_id, epoch, seq, t_end_us, updated, boot) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (board_id) DO UPDATE SET "
                    "epoch = excluded.epoch, seq = excluded.seq, t_end_us = excluded.t_end_us, "
                    "updated = excluded.updated, boot = excluded.boot WHERE ack_points.epoch != excluded.epoch "
                    "OR ack_points.boot != excluded.boot OR excluded.seq > ack_points.seq",
                    (int(board_id), int(epoch), int(seq), t_end_us, self._clock.time(), int(boot)))

    def ack_points(self) -> dict[int, tuple[int, int, int | None]]:
        """board id -> (epoch, seq, t_end_us) of every persisted ACK point."""
        with self._lock:
            rows = self._db.execute("SELECT board_id, epoch, seq, t_end_us FROM ack_points").fetchall()
        return {int(b): (int(e), int(s), None if t is None else int(t)) for b, e, s, t in rows}

    def ack_point_boots(self) -> dict[int, int]:
        """board id -> boot number of the run of its persisted ACK point (0: not stated)."""
        with self._lock:
            rows = self._db.execute("SELECT board_id, boot FROM ack_points").fetchall()
        return {int(b): int(n) for b, n in rows}

    def highest_committed(self, frame_set: str) -> int | None:
        """Highest sequence number ever committed in *frame_set* (survives deletion), or None."""
        with self._lock:
            row = self._db.execute("SELECT highest_committed FROM frame_sets WHERE frame_set = ?",
                                   (frame_set,)).fetchone()
        return None if row is None else int(row[0])

    def contains(self, frame_set: str, seq: int) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM frames WHERE frame_set = ? AND seq = ?",
                                    (frame_set, seq)).fetchone() is not None

    def next_to_send(self, limit: int, *, live_window_s: float, data_limit: int | None = None) -> list[OutboxItem]:
        """Up to *limit* pending items: first those of :data:`URGENT_KINDS` (events, in commit
        order), then data -- at most *data_limit* of it (default *limit*; the uplink's bound on
        unacknowledged data, which events do not wait for) -- live frames first (nominal time
        within *live_window_s* of now, oldest of them first so the relay sees them in order), then
        back-fill, oldest first.  Ordering only: what is sent, kept and deleted is unchanged."""
        if limit <= 0:
            return []
        cols = "id, kind, frame_set, seq, nominal_time, payload, sent_count"
        marks = ",".join("?" * len(URGENT_KINDS))
        with self._lock:
            rows = self._db.execute(
                f"SELECT {cols} FROM frames WHERE kind IN ({marks}) AND state = 0 AND held = 0 "
                "ORDER BY id LIMIT ?", (*URGENT_KINDS, limit)).fetchall()
            room = limit - len(rows) if data_limit is None else min(limit - len(rows), data_limit)
            if room > 0:
                cut = self._clock.time() - live_window_s
                data = self._db.execute(
                    f"SELECT {cols} FROM frames WHERE held = 0 AND state = 0 AND nominal_time >= ? "
                    f"AND kind NOT IN ({marks}) ORDER BY nominal_time, id LIMIT ?",
                    (cut, *URGENT_KINDS, room)).fetchall()
                if len(data) < room:
                    data += self._db.execute(
                        f"SELECT {cols} FROM frames WHERE held = 0 AND state = 0 AND nominal_time < ? "
                        f"AND kind NOT IN ({marks}) ORDER BY nominal_time, id LIMIT ?",
                        (cut, *URGENT_KINDS, room - len(data))).fetchall()
                rows += data
        return [OutboxItem(*r) for r in rows]

    def mark_sent(self, ids: Iterable[int]) -> None:
        """The uplink handed these to the MQTT client; they now wait for the relay's acknack."""
        now = self._clock.monotonic()
        ids = list(ids)
        if not ids:
            return
        with self._lock, self._txn():
            self._db.executemany(
                "UPDATE frames SET state = 1, sent_count = sent_count + 1, last_sent = ? WHERE id = ?",
                [(now, i) for i in ids])
            # What was published, per frame set: an acknack claiming more is suspicious (uplink).
            self._db.execute(
                "INSERT INTO sent_marks SELECT frame_set, MAX(seq) FROM frames WHERE id IN "
                f"({','.join('?' * len(ids))}) GROUP BY frame_set ON CONFLICT (frame_set) DO UPDATE SET "
                "highest_sent = MAX(highest_sent, excluded.highest_sent)", ids)

    def mark_pubacked(self, ids: Iterable[int]) -> None:
        """The broker PUBACKed these frames: from now on a relay acknack may delete them (one
        transaction for the batch; the uplink batches the PUBACKs of a network-loop turn)."""
        ids = [(i,) for i in ids]
        if not ids:
            return
        with self._lock, self._txn():
            self._db.executemany("UPDATE frames SET pubacked = 1 WHERE id = ?", ids)

    def highest_sent(self, frame_set: str) -> int | None:
        """Highest sequence number of *frame_set* ever published (survives deletion), or None."""
        with self._lock:
            row = self._db.execute("SELECT highest_sent FROM sent_marks WHERE frame_set = ?",
                                   (frame_set,)).fetchone()
        return None if row is None else int(row[0])

    def requeue(self, ids: Iterable[int]) -> None:
        """Put frames back in the pending queue (publish failed, connection lost before PUBACK)."""
        with self._lock:
            self._db.executemany("UPDATE frames SET state = 0 WHERE id = ?", [(i,) for i in ids])

    def requeue_unacked(self, older_than_s: float) -> int:
        """Frames sent more than *older_than_s* ago and never acknowledged go back to pending
        (the relay's acknacks stopped mentioning them, e.g. it lost state)."""
        with self._lock:
            cur = self._db.execute("UPDATE frames SET state = 0 WHERE state = 1 AND last_sent < ?",
                                   (self._clock.monotonic() - older_than_s,))
            return cur.rowcount

    def in_flight_count(self) -> int:
        """Frames sent and not yet covered by an acknack."""
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM frames WHERE state = 1").fetchone()[0])

    def apply_acknack(self, frame_set: str, lowest: int, highest: int,
                      gaps: Iterable[tuple[int, int]]) -> int:
        """Apply a consumer acknack (spec §6.3): delete the frames it covers, queue the rest for
        resend.  Returns the number of frames deleted.

        Covered = lowest <= seq <= highest and not inside a gap ``[start, end)``, and PUBACKed by the
        broker at least once: an acknack never deletes a frame the station has not verifiably handed
        over (a forged or confused acknack covering everything removes at most what the broker
        already took; a frame never sent, or still waiting for its PUBACK, stays).  Frames inside a
        gap, and (after the resend hold-off) sent frames outside [lowest, highest] -- the "implied
        gaps" -- go back to pending.  The hold-off keeps a frame that is still on its way from being
        sent twice because an acknack was generated just before it arrived.

        Cost (this runs on the uplink's MQTT thread): at most :data:`MAX_GAPS` gaps (the codec's own
        bound on an acknack; more raise :class:`AcknackTooLargeError` and nothing is applied); they
        are clipped to [lowest, highest], sorted and merged (:func:`merge_gaps`, G log G), then walked
        once beside the frame set's frames in sequence order: O(F + G log G), not F x G.
        """
        gaps = list(itertools.islice(gaps, MAX_GAPS + 1))
        if len(gaps) > MAX_GAPS:
            raise AcknackTooLargeError(f"outbox: acknack for {frame_set!r} lists more than {MAX_GAPS} gaps "
                                       "(the codec's bound): not applied")
        lowest, highest = int(lowest), int(highest)
        empty = highest < lowest
        merged = [] if empty else merge_gaps(lowest, highest, gaps)
        with self._lock:
            hold = self._clock.monotonic() - self.resend_holdoff_s
            rows = self._db.execute(
                "SELECT id, seq, size, state, last_sent, pubacked, held, kind FROM frames WHERE frame_set = ? "
                "ORDER BY seq", (frame_set,)).fetchall()
            delete, resend, rehold = [], [], []
            j, ngaps = 0, len(merged)
            for rid, seq, size, state, last_sent, pubacked, held, kind in rows:
                if held:
                    continue          # never sent: no gap, implied or listed, makes it sendable
                while j < ngaps and merged[j][1] <= seq:      # gaps wholly below this frame
                    j += 1
                in_gap = j < ngaps and merged[j][0] <= seq
                if not empty and lowest <= seq <= highest and not in_gap:
                    if pubacked:
                        # Auxiliary mode: delivered data goes back to the buffer (module docstring).
                        (rehold if kind in self.hold_kinds else delete).append((rid, size))
                elif state == STATE_SENT and (last_sent is None or last_sent <= hold):
                    resend.append(rid)
            if not delete and not resend and not rehold:
                return 0
            with self._txn():
                self._db.executemany("DELETE FROM frames WHERE id = ?", [(r,) for r, _ in delete])
                self._db.executemany("UPDATE frames SET held = 1, state = 0 WHERE id = ?", [(r,) for r, _ in rehold])
                delete = delete + rehold      # acknowledged, for the counters (kept: not in the byte sums)
                self._db.executemany("UPDATE frames SET state = 0 WHERE id = ?", [(r,) for r in resend])
                self._counters["acked_frames"] += len(delete)
                self._db.execute("INSERT OR REPLACE INTO meta VALUES ('acked_frames', ?)",
                                 (self._counters["acked_frames"],))
                self._frames -= len(delete) - len(rehold)
                self._bytes -= sum(s for _, s in delete) - sum(s for _, s in rehold)
            self._resends_queued += len(resend)
            return len(delete)

    def available(self, frame_set: str) -> tuple[int, int]:
        """(lowest, highest) sequence numbers held for *frame_set*, (0, -1) when empty: the range
        a provider announces in its own acknack (spec §6.3)."""
        with self._lock:
            row = self._db.execute("SELECT MIN(seq), MAX(seq) FROM frames WHERE frame_set = ?",
                                   (frame_set,)).fetchone()
        return (0, -1) if row[0] is None else (int(row[0]), int(row[1]))

    # -- auxiliary mode ----------------------------------------------------------------------------
    MAX_RELEASES = 10_000      # remembered release windows (merged, pruned by age); beyond, oldest go

    def release(self, frame_set: str, start_s: float, end_s: float) -> int:
        """Make the held frames of *frame_set* overlapping [*start_s*, *end_s*) sendable, and
        remember the window so that frames committed later inside it are not held (a window that
        reaches into the future).  Returns the number of frames released now.  Durable (one
        transaction); windows are merged with overlapping ones and forgotten once older than the
        age bound (no frame that old can be committed)."""
        start_s, end_s = float(start_s), float(end_s)
        if not (math.isfinite(start_s) and math.isfinite(end_s)) or end_s <= start_s:
            raise ValueError(f"outbox: release window {start_s!r}..{end_s!r} is empty or not finite")
        with self._lock, self._txn():
            cur = self._db.execute(
                "UPDATE frames SET held = 0, state = 0 WHERE held = 1 AND frame_set = ? AND nominal_time < ? "
                "AND nominal_time > ?", (frame_set, end_s, start_s - self.hold_span_s))
            n = cur.rowcount
            over = self._db.execute("SELECT id, start, end FROM releases WHERE frame_set = ? AND start <= ? "
                                    "AND end >= ?", (frame_set, end_s, start_s)).fetchall()
            if over:
                start_s = min([start_s] + [r[1] for r in over])
                end_s = max([end_s] + [r[2] for r in over])
                self._db.executemany("DELETE FROM releases WHERE id = ?", [(r[0],) for r in over])
            self._db.execute("INSERT INTO releases (frame_set, start, end) VALUES (?, ?, ?)",
                             (frame_set, start_s, end_s))
            self._db.execute("DELETE FROM releases WHERE end < ?", (self._clock.time() - self.max_age_s,))
            self._db.execute("DELETE FROM releases WHERE id NOT IN (SELECT id FROM releases ORDER BY end DESC "
                             "LIMIT ?)", (self.MAX_RELEASES,))
            self._counters["released_frames"] += n
            self._save_counters()
        return n

    def window(self, frame_set: str, start_s: float, end_s: float) -> dict:
        """What the outbox knows of *frame_set* in [*start_s*, *end_s*): the stored frames
        overlapping it (``seqs``, sorted; ``held``: how many of them are held), the highest
        sequence number ever committed and the highest ever evicted (None: none), for a request's
        answer (``edge/commands.py`` names what is missing from them)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, held FROM frames WHERE frame_set = ? AND nominal_time < ? AND nominal_time > ? "
                "ORDER BY seq", (frame_set, float(end_s), float(start_s) - self.hold_span_s)).fetchall()
            fs = self._db.execute("SELECT highest_committed, evicted_through FROM frame_sets WHERE frame_set = ?",
                                  (frame_set,)).fetchone()
        return {"seqs": [int(r[0]) for r in rows], "held": sum(int(r[1]) for r in rows),
                "highest_committed": None if fs is None else fs[0],
                "evicted_through": None if fs is None else fs[1]}

    def stats(self) -> dict:
        with self._lock:
            row = self._db.execute(
                "SELECT MIN(nominal_time), SUM(state = 0 AND held = 0), SUM(state = 1), SUM(held = 1), "
                "COALESCE(SUM(CASE WHEN held = 1 THEN size END), 0), MIN(CASE WHEN held = 1 THEN nominal_time END) "
                "FROM frames").fetchone()
            now = self._clock.time()
            return {
                "frames": self._frames,
                "bytes": self._bytes,
                "max_bytes": self.max_bytes,
                "max_age_s": self.max_age_s,
                "fill": self._bytes / self.max_bytes,
                "oldest": row[0],
                "oldest_age_s": None if row[0] is None else now - row[0],
                "pending": int(row[1] or 0),
                "in_flight": int(row[2] or 0),
                "held": int(row[3] or 0),
                "held_bytes": int(row[4]),
                "oldest_held": row[5],
                "resends_queued": self._resends_queued,
                **{("evicted" if k == "evicted_frames" else k): v for k, v in self._counters.items()},
                "last_alarm": self.last_alarm,
            }

    # -- maintenance (needs exclusive=True: see the module docstring) ----------------------------
    def items(self, kind: str | None = None) -> Iterator[tuple[OutboxItem, int]]:
        """Every stored frame (of *kind*) with its state (0 pending, 1 sent, 2 held: auxiliary mode),
        in (frame set, seq) order, streamed (a week of frames does not fit a small gateway's memory
        at once)."""
        with self._lock:
            cur = self._db.execute(
                "SELECT id, kind, frame_set, seq, nominal_time, payload, sent_count, "
                "CASE WHEN held = 1 THEN 2 ELSE state END FROM frames "
                "WHERE ? IS NULL OR kind = ? ORDER BY frame_set, seq", (kind, kind))
            for r in cur:
                yield OutboxItem(*r[:7]), int(r[7])

    def delete(self, ids: Iterable[int]) -> tuple[int, int]:
        """Delete frames by id in one transaction (counted as ``purged_frames``); (frames, bytes)."""
        self._check_exclusive("delete")
        ids = [(int(i),) for i in ids]
        with self._lock, self._txn():
            n, nbytes = 0, 0
            for (i,) in ids:
                row = self._db.execute("SELECT size FROM frames WHERE id = ?", (i,)).fetchone()
                if row is None:
                    continue
                self._db.execute("DELETE FROM frames WHERE id = ?", (i,))
                n, nbytes = n + 1, nbytes + int(row[0])
            self._frames -= n
            self._bytes -= nbytes
            self._counters["purged_frames"] += n
            self._save_counters()
        return n, nbytes

    def replace_payload(self, replacements: Iterable[tuple[int, bytes]]) -> int:
        """Give frames new bytes under the same (frame set, seq), in one transaction (all or none):
        they become pending and un-PUBACKed, so they are published again.  For re-signing only --
        the content must be the same; the framer's rule "one seq, one content" still holds."""
        self._check_exclusive("replace_payload")
        n = 0
        with self._lock, self._txn():
            for i, payload in replacements:
                payload = bytes(payload)
                row = self._db.execute("SELECT size FROM frames WHERE id = ?", (int(i),)).fetchone()
                if row is None:
                    continue
                self._db.execute(
                    "UPDATE frames SET payload = ?, digest = ?, size = ?, state = 0, pubacked = 0, "
                    "last_sent = NULL WHERE id = ?",
                    (payload, hashlib.sha256(payload).digest(), len(payload), int(i)))
                self._bytes += len(payload) - int(row[0])
                n += 1
        return n

    def _check_exclusive(self, what: str) -> None:
        if not self._maintenance:
            raise OutboxError(f"outbox {self.path}: {what} needs the outbox opened with exclusive=True "
                              "(no gateway running)")

    def close(self) -> None:
        """Close the database (the reserve file stays: it belongs to the store)."""
        with self._lock:
            try:
                self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error:
                pass
            try:
                self._db.close()
            finally:
                self._pidlock.release()

    def __enter__(self) -> "Outbox":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# -- measurement of the candidate stores (the basis of the choice above) --------------------------
def measure_backends(directory: str | os.PathLike[str], n: int = 300, size: int = 2300) -> list[dict]:
    """Commit *n* frames of *size* bytes with each candidate store; return frames/s committed.

    Candidates: SQLite WAL synchronous FULL / NORMAL, SQLite rollback journal (DELETE) FULL, and a
    plain append-only file with ``os.fsync`` per frame (the floor: what any crash-safe store must
    at least pay).  Run it on the target medium (SD card, eMMC, SSD): the fsync cost is the device's.
    """
    import time

    from types import SimpleNamespace

    clock = SimpleNamespace(time=time.time, monotonic=time.monotonic)

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    payload = os.urandom(size)
    out = []
    for name, sync, journal in (("sqlite WAL synchronous=FULL", "FULL", "WAL"),
                                ("sqlite WAL synchronous=NORMAL", "NORMAL", "WAL"),
                                ("sqlite DELETE-journal synchronous=FULL", "FULL", "DELETE")):
        p = d / f"measure-{sync}-{journal}.sqlite"
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(str(p) + suffix).unlink(missing_ok=True)
        box = Outbox(p, max_bytes=1 << 40, max_age_s=1e12, clock=clock, synchronous=sync)
        if journal != "WAL":
            box._db.execute(f"PRAGMA journal_mode={journal}")
        t0 = time.perf_counter()
        for i in range(n):
            box.put("cd11", "MEAS:0", i, time.time(), payload)
        dt = time.perf_counter() - t0
        box.close()
        out.append({"store": name, "frames_per_s": n / dt, "durable_on_power_loss": sync == "FULL"})
    p = d / "measure-append.log"
    with open(p, "wb") as fh:
        t0 = time.perf_counter()
        for _ in range(n):
            fh.write(len(payload).to_bytes(4, "big") + payload)
            fh.flush()
            os.fsync(fh.fileno())
        dt = time.perf_counter() - t0
    out.append({"store": "append-only file + fsync per frame (floor)", "frames_per_s": n / dt,
                "durable_on_power_loss": True})
    return out


def _main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    ap = argparse.ArgumentParser(prog="python -m ims_station.edge.outbox",
                                 description="Measure the outbox store candidates on this machine.")
    ap.add_argument("--measure", metavar="DIR", required=True, help="directory on the target medium")
    ap.add_argument("-n", type=int, default=300)
    args = ap.parse_args(argv)
    for r in measure_backends(args.measure, args.n):
        print(json.dumps(r))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(_main())
