"""The relay's archive: verified raw CD-1.1 frames, trigger events and IMS 2.0 messages, their index, the quarantine, miniSEED export.

Owns where verified frames and rejected payloads are kept, deduplication by (frame set, sequence
number), detection of a frame replayed under a new sequence number (same frame set and nominal
time already archived), and miniSEED export.  It does not own *deciding* whether a frame is
authentic (``relay.verify``), nor frame-set gap state (``relay.gaps``/``relay.state``).

Interface (:class:`Archive`): ``commit(frames, quarantined)`` stores a batch durably and returns one
:class:`StoreResult` per frame; ``lookup``, ``read_frame``, ``iter_day``, ``quarantine_entries``,
``export_mseed``, ``stats``; events: ``commit(..., events=...)``, ``iter_events``, ``read_event``; IMS 2.0
messages: ``commit(..., ims20=...)``, ``iter_ims20``, ``read_ims20``.  :class:`IndexedArchive` holds the
decisions below and every index query, whatever stores them: :class:`FileArchive` (here) and
``relay.pgstore.PgArchive`` (index in PostgreSQL, bytes as content-addressed objects) fill in where
the index and the bytes live.

:class:`FileArchive` (the embedded default), under ``root``::

    frames/{STA}/{YYYY}/{STA}.{YYYY}.{DDD}.{writer}.cd11   raw frames of a UTC day (by nominal time),
                                                          concatenated: `ims-station cd11 dump` reads them
    events/{STA}/{YYYY}/{STA}.{YYYY}.{DDD}.{writer}.ev     verified event envelopes of a UTC day (by event
                                                          time), verbatim, concatenated (self-delimiting)
    ims20/{STA}/{YYYY}/{STA}.{YYYY}.{DDD}.{writer}.msg     IMS 2.0 message texts of a UTC day (by envelope
                                                          time), byte-identical, concatenated (each
                                                          BEGIN IMS2.0 ... STOP; the index has offsets)
    quarantine/{YYYY}/{YYYY}.{DDD}.{writer}.q              rejected payloads of a day (by reception)
    index.sqlite                                          frames, events, ims20, quarantine and file tables (WAL)

* Files are **append-only**.  ``commit`` takes the index write lock (``BEGIN IMMEDIATE``), decides
  per frame (new / identical duplicate / different bytes / replay), appends and ``fsync``s the files,
  records each file's committed size, and commits (``synchronous=FULL``).  A crash before the commit
  leaves at most an uncommitted tail, which the next open truncates back to the committed size; so
  the index and the files always agree and nothing committed is ever rewritten.
* **Duplicates**: same (frame set, seq) with identical bytes (SHA-256) -> ``DUPLICATE``, counted, not
  stored again.  Different bytes -> ``CONFLICT``: a security event, logged, the new bytes quarantined
  with reason ``duplicate_conflict``; the archived frame is never overwritten.
* **Replay**: a frame of the same frame set and the same nominal time already archived under another
  sequence number -> ``REPLAY``, quarantined with reason ``replay``.
* **Events** (``{p}/STA/events``, frame set ``STA:events``): the signed envelope bytes as received,
  indexed in table ``events`` by (frame set, seq) with the station, event time, event id, state
  (``on``/``off``) and the verifying key id.  Deduplicated exactly like frames (same bytes:
  ``DUPLICATE``; different bytes: ``CONFLICT``, quarantined); no replay rule (events have no
  nominal-time grid).  Same commit, same fsync-before-index rule.
* **IMS 2.0 messages** (``{p}/STA/ims20``, frame set ``STA:ims20``): the same code path as events
  (``_commit``'s ``store_messages``: one dedupe/append for enveloped messages, a table per kind for
  its index columns), but the day file gets the envelope's *body* -- the message text,
  byte-identical -- and table ``ims20`` the index (data type, MSG_ID, measurement id, SRID, the
  #Header's station and qualifier, key id) plus the envelope's header and signature, so
  ``read_ims20(..., envelope=True)`` rebuilds the signed envelope.  Dedupe compares the *text*'s
  SHA-256: the same text under the same seq is a duplicate even if signed again.
* Several relay processes may share one root (shared-subscription load sharing on one host): each
  writes only its own files (``writer`` names them) and the SQLite index serialises the decisions.
  Across hosts: ``relay.pgstore.PgArchive``.
* The quarantine is bounded (``quarantine_max_bytes``); beyond it, only the index row is kept.

miniSEED export uses ``pymseed`` (libmseed, the FDSN reference library) rather than hand-packing
Steim records; format version 2 so every reader (ObsPy included) takes it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from enum import Enum
from pathlib import Path
from typing import Any, Iterator, Sequence

from ims_station.durable import fsync_dir, makedirs
from ims_station.relay import kpi
from ims_station.relay.errors import ArchiveError

log = logging.getLogger(__name__)

DEFAULT_QUARANTINE_MAX_BYTES = 1 << 30
#: Longest prefix of a single rejected payload kept in the quarantine (payloads are bounded by the
#: relay's ``max_payload`` before they get here; this bounds garbage that failed the size check).
QUARANTINE_MAX_ITEM = 1 << 20


class StoreOutcome(Enum):
    ARCHIVED = "archived"        # new frame, stored
    DUPLICATE = "duplicate"      # identical bytes already archived under this (frame set, seq)
    CONFLICT = "duplicate_conflict"  # different bytes under an archived (frame set, seq): security event
    REPLAY = "replay"            # same frame set + nominal time archived under another seq


@dataclass
class FrameRecord:
    """A verified frame to archive."""

    station: str
    frame_set: str
    sequence: int
    nominal_ms: int              # nominal time, milliseconds since 1970 (UTC)
    raw: bytes
    received_at: float = 0.0
    sha256: str = ""
    # For the quality figures (relay.kpi): the frame's channel subframes and time length.
    channels: tuple = ()
    frame_ms: int = 0

    def __post_init__(self) -> None:
        if not self.sha256:
            self.sha256 = hashlib.sha256(self.raw).hexdigest()

    @property
    def day(self) -> date:
        return _day_of_ms(self.nominal_ms)


@dataclass
class QuarantineRecord:
    """A rejected payload.  ``station`` is the station named by the topic (may be None)."""

    reason: str
    detail: str
    raw: bytes
    station: str | None = None
    topic: str = ""
    frame_set: str | None = None
    sequence: int | None = None
    received_at: float = 0.0
    sha256: str = ""

    def __post_init__(self) -> None:
        if not self.sha256:
            self.sha256 = hashlib.sha256(self.raw).hexdigest()


@dataclass
class EventRecord:
    """A verified trigger event to archive (``relay.verify.VerifiedEvent``): *raw* is the envelope."""

    station: str
    frame_set: str
    sequence: int
    time_ms: int                 # event time (its ``time`` field, else the envelope's), ms since 1970
    raw: bytes
    event_id: str | None = None
    state: str | None = None
    key_id: int = 0
    received_at: float = 0.0
    sha256: str = ""

    def __post_init__(self) -> None:
        if not self.sha256:
            self.sha256 = hashlib.sha256(self.raw).hexdigest()

    @property
    def day(self) -> date:
        return _day_of_ms(self.time_ms)


@dataclass
class Ims20Record:
    """A verified IMS 2.0 message to archive (``relay.verify.VerifiedIms20``): *raw* is the
    envelope; the day file gets only its body, the message text, byte-identical, and the index the
    envelope header and signature (:meth:`FileArchive.read_ims20` rebuilds the envelope).
    ``sha256`` is the text's: the same (frame set, seq) with the same text is a duplicate."""

    station: str
    frame_set: str
    sequence: int
    time_ms: int                 # envelope (signing) time, ms since 1970: the UTC day it is filed under
    raw: bytes
    text: bytes
    head: bytes                  # the envelope's 40-byte header
    signature: bytes
    key_id: int = 0
    msg_id: str | None = None
    msg_type: str | None = None
    data_type: str | None = None     # of every DATA_TYPE section, comma-separated
    measurement_id: str | None = None
    srid: str | None = None
    msg_station: str | None = None   # the station code the message's #Header names
    qualifier: str | None = None     # PREL / FULL (PHD)
    received_at: float = 0.0
    sha256: str = ""

    def __post_init__(self) -> None:
        if not self.sha256:
            self.sha256 = hashlib.sha256(self.text).hexdigest()

    @property
    def day(self) -> date:
        return _day_of_ms(self.time_ms)


@dataclass
class ArchivedIms20:
    station: str
    frame_set: str
    sequence: int
    time_ms: int
    msg_id: str | None
    msg_type: str | None
    data_type: str | None
    measurement_id: str | None
    srid: str | None
    msg_station: str | None
    qualifier: str | None
    key_id: int
    file: str
    offset: int
    length: int
    sha256: str
    received_at: float

    @property
    def id(self) -> str:
        """The message's archive id, ``STA:ims20:SEQ`` (``relay ims2 get``)."""
        return f"{self.frame_set}:{self.sequence}"


@dataclass
class ArchivedEvent:
    station: str
    frame_set: str
    sequence: int
    time_ms: int
    event_id: str | None
    state: str | None
    key_id: int
    file: str
    offset: int
    length: int
    sha256: str
    received_at: float


@dataclass
class StoreResult:
    outcome: StoreOutcome
    record: Any                  # FrameRecord (or EventRecord)
    detail: str = ""
    existing_sequence: int | None = None     # for REPLAY: the sequence number archived before


@dataclass
class ArchivedFrame:
    station: str
    frame_set: str
    sequence: int
    nominal_ms: int
    file: str
    offset: int
    length: int
    sha256: str
    received_at: float


class Archive(ABC):
    """Where verified frames and quarantined payloads are kept."""

    @abstractmethod
    def commit(self, frames: Sequence[FrameRecord],
               quarantined: Sequence[QuarantineRecord] = (), *,
               events: Sequence[EventRecord] = (), ims20: Sequence[Ims20Record] = ()) -> list[StoreResult]:
        """Durably store a batch; one result per frame, in order, then one per event, then one per
        IMS 2.0 message.  When it
        returns, everything reported ARCHIVED and every quarantined payload (including
        CONFLICT/REPLAY frames and CONFLICT events) survives a crash."""

    @abstractmethod
    def lookup(self, frame_set: str, sequence: int) -> ArchivedFrame | None: ...

    @abstractmethod
    def read_frame(self, frame_set: str, sequence: int) -> bytes | None: ...

    @abstractmethod
    def iter_day(self, station: str, day: date) -> Iterator[tuple[ArchivedFrame, bytes]]:
        """Frames of *station* whose nominal time falls on *day* (UTC), by nominal time."""

    @abstractmethod
    def iter_events(self, station: str | None = None, *, since_ms: int | None = None,
                    until_ms: int | None = None) -> Iterator[tuple[ArchivedEvent, bytes]]:
        """Archived events (index entry, envelope bytes) of *station* (default: all), with event
        time in [*since_ms*, *until_ms*), by event time."""

    @abstractmethod
    def read_event(self, frame_set: str, sequence: int) -> bytes | None: ...

    @abstractmethod
    def iter_ims20(self, station: str | None = None, *, since_ms: int | None = None,
                   until_ms: int | None = None, data_types: Sequence[str] | None = None) -> Iterator[ArchivedIms20]:
        """Index entries of archived IMS 2.0 messages (see :class:`FileArchive`)."""

    @abstractmethod
    def read_ims20(self, frame_set: str, sequence: int, *, envelope: bool = False) -> bytes | None:
        """An archived IMS 2.0 message's text, byte-identical (or its envelope)."""

    @abstractmethod
    def quarantine_entries(self, *, reason: str | None = None) -> list[dict[str, Any]]: ...

    @abstractmethod
    def stats(self) -> dict[str, Any]: ...

    def export_mseed(self, station: str, day: date, out_dir: str | Path, **kw: Any) -> list[Path]:
        """miniSEED files, one per channel, of *station*'s archived frames on *day*."""
        from ims_station.relay.mseed import export_frames

        return export_frames(station, day, (raw for _, raw in self.iter_day(station, day)), out_dir, **kw)

    def close(self) -> None:  # noqa: B027
        pass

    def __enter__(self) -> "Archive":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_SCHEMA = """
CREATE TABLE IF NOT EXISTS frames (
    frame_set   TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    station     TEXT NOT NULL,
    nominal_ms  INTEGER NOT NULL,
    day         TEXT NOT NULL,          -- YYYY-MM-DD (UTC) of the nominal time
    file        TEXT NOT NULL,          -- relative to the archive root
    offset      INTEGER NOT NULL,
    length      INTEGER NOT NULL,
    sha256      TEXT NOT NULL,
    received_at REAL NOT NULL,
    PRIMARY KEY (frame_set, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS frames_by_time ON frames(frame_set, nominal_ms);
CREATE INDEX IF NOT EXISTS frames_by_day ON frames(station, day, nominal_ms);
CREATE TABLE IF NOT EXISTS quarantine (
    id          INTEGER PRIMARY KEY,
    received_at REAL NOT NULL,
    station     TEXT,
    topic       TEXT NOT NULL,
    reason      TEXT NOT NULL,
    detail      TEXT NOT NULL,
    frame_set   TEXT,
    seq         INTEGER,
    sha256      TEXT NOT NULL,
    size        INTEGER NOT NULL,       -- payload size as received
    file        TEXT,                   -- NULL when the payload was not kept (quarantine full)
    offset      INTEGER,
    length      INTEGER
);
CREATE INDEX IF NOT EXISTS quarantine_by_reason ON quarantine(reason);
CREATE TABLE IF NOT EXISTS events (
    frame_set   TEXT NOT NULL,          -- STA:events
    seq         INTEGER NOT NULL,
    station     TEXT NOT NULL,
    time_ms     INTEGER NOT NULL,       -- event time, ms since 1970 (UTC)
    day         TEXT NOT NULL,          -- YYYY-MM-DD (UTC) of time_ms
    event_id    TEXT,
    state       TEXT,                   -- "on" / "off" (trigger events)
    key_id      INTEGER NOT NULL,       -- the key that verified the envelope (0: unsigned)
    file        TEXT NOT NULL,
    offset      INTEGER NOT NULL,
    length      INTEGER NOT NULL,
    sha256      TEXT NOT NULL,
    received_at REAL NOT NULL,
    PRIMARY KEY (frame_set, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS events_by_time ON events(station, time_ms);
CREATE TABLE IF NOT EXISTS ims20 (
    frame_set   TEXT NOT NULL,          -- STA:ims20
    seq         INTEGER NOT NULL,       -- the envelope header's sequence number
    station     TEXT NOT NULL,
    time_ms     INTEGER NOT NULL,       -- envelope (signing) time, ms since 1970 (UTC)
    day         TEXT NOT NULL,          -- YYYY-MM-DD (UTC) of time_ms
    msg_id      TEXT,
    msg_type    TEXT,
    data_type   TEXT,                   -- SAMPLEPHD, RMSSOH, ALERT_FLOW, ... (sections comma-separated)
    measurement_id TEXT,
    srid        TEXT,
    msg_station TEXT,                   -- station code in the message's #Header
    qualifier   TEXT,
    key_id      INTEGER NOT NULL,       -- the key that verified the envelope (0: unsigned)
    file        TEXT NOT NULL,          -- the day file holding the text
    offset      INTEGER NOT NULL,
    length      INTEGER NOT NULL,
    sha256      TEXT NOT NULL,          -- of the text
    head        BLOB NOT NULL,          -- the envelope header (40 bytes) ...
    signature   BLOB NOT NULL,          -- ... and signature: with the text, the envelope as received
    received_at REAL NOT NULL,
    PRIMARY KEY (frame_set, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ims20_by_time ON ims20(station, time_ms);
CREATE TABLE IF NOT EXISTS files (
    file        TEXT PRIMARY KEY,
    writer      TEXT NOT NULL,
    size        INTEGER NOT NULL        -- committed size: bytes beyond it are an uncommitted tail
);
"""


def _day_of_ms(ms: int) -> date:
    return (datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(milliseconds=ms)).date()


class _Placement(ABC):
    """Where one commit's bytes go: ``place`` registers a payload (before anything is written),
    ``write`` makes them all durable, ``where`` then names each one's (file, offset, length)."""

    @abstractmethod
    def place(self, kind: str, station: str | None, when: Any, data: bytes) -> int:
        """Register *data* of *kind* (``frames``, ``events``, ``ims20``, ``quarantine``) of
        *station* on *when* (a UTC ``date``; for the quarantine the reception time, s); a handle."""

    @abstractmethod
    def write(self) -> None:
        """Write and fsync every placed payload (before the index rows that point at them)."""

    @abstractmethod
    def where(self, handle: int) -> tuple[str, int, int]:
        """(file relative to the root, offset, length) of a placed payload, after ``write``."""

    def index(self, db: Any) -> None:  # noqa: B027 - the index rows of the placement itself, if any
        """Inside the transaction, after the rows that point at the bytes."""


class IndexedArchive(Archive):
    """The archive's decisions and its index queries, whatever holds the index and the bytes.

    Shared by :class:`FileArchive` (SQLite index, append-only day files) and
    ``relay.pgstore.PgArchive`` (PostgreSQL index, content-addressed objects): per frame new /
    duplicate / conflict / replay, events and IMS 2.0 messages, the bounded quarantine, the KPI
    tables (``relay.kpi``) in the same transaction, and every read through the index.  A subclass
    provides ``self._db`` (``execute``/``executemany`` with ``?`` parameters, SQL common to SQLite
    and PostgreSQL), ``self._lock``, ``self.root`` (what the index's file names are relative to),
    ``self._quarantine_bytes`` and the hooks ``_begin(frame_sets)``, ``_end()``, ``_abort()``,
    ``_placement()`` and ``_read(rel, offset, length)``.
    """

    _db: Any
    _lock: threading.Lock
    root: Path
    quarantine_max_bytes: int
    _quarantine_bytes: int

    @abstractmethod
    def _begin(self, frame_sets: set[str]) -> None:
        """Start the commit's transaction, excluding other writers of *frame_sets*."""

    @abstractmethod
    def _end(self) -> None:
        """Commit the transaction durably."""

    @abstractmethod
    def _abort(self) -> None:
        """Roll back after a failure (and whatever the backend needs to stay consistent)."""

    @abstractmethod
    def _placement(self) -> _Placement: ...

    @abstractmethod
    def _read(self, rel: str, offset: int, length: int) -> bytes: ...

    def _commit(self, frames: list[FrameRecord], quarantined: list[QuarantineRecord],
                events: list[EventRecord] = (),  # type: ignore[assignment]
                ims20: list[Ims20Record] = ()) -> list[StoreResult]:  # type: ignore[assignment]
        db = self._db
        self._begin({r.frame_set for r in (*frames, *events, *ims20)})
        try:
            results: list[StoreResult] = []
            pending: dict[tuple[str, int], FrameRecord] = {}     # new in this batch
            pending_time: dict[tuple[str, int], int] = {}
            place = self._placement()
            # (handle of the bytes, row builder(rel, off, n)) per new index row, by table
            placed: dict[str, list[tuple[int, Any]]] = {"frames": [], "events": [], "ims20": [], "quarantine": []}
            extra_q: list[QuarantineRecord] = []
            kpi_frames: list[tuple[FrameRecord, bool]] = []
            t_commit = time.time()
            for fr in frames:             # one arrival time for the index and the figures
                fr.received_at = fr.received_at or t_commit
            top_seq: dict[str, int] = {}                         # highest seq archived in this batch

            for fr in frames:
                key = (fr.frame_set, fr.sequence)
                prev = pending.get(key)
                if prev is None:
                    row = db.execute("SELECT sha256 FROM frames WHERE frame_set = ? AND seq = ?",
                                     key).fetchone()
                    prev_sha = row[0] if row else None
                else:
                    prev_sha = prev.sha256
                if prev_sha is not None:
                    if prev_sha == fr.sha256:
                        results.append(StoreResult(StoreOutcome.DUPLICATE, fr))
                    else:
                        detail = (f"frame set {fr.frame_set} seq {fr.sequence}: different bytes "
                                  f"(sha256 {fr.sha256[:16]}..) than the archived frame ({prev_sha[:16]}..)")
                        log.error("SECURITY: %s", detail)
                        results.append(StoreResult(StoreOutcome.CONFLICT, fr, detail))
                        extra_q.append(self._q_from_frame(fr, StoreOutcome.CONFLICT.value, detail))
                    continue
                tkey = (fr.frame_set, fr.nominal_ms)
                other = pending_time.get(tkey)
                if other is None:
                    row = db.execute("SELECT seq FROM frames WHERE frame_set = ? AND nominal_ms = ? LIMIT 1",
                                     tkey).fetchone()
                    other = row[0] if row else None
                if other is not None:
                    detail = (f"frame set {fr.frame_set} seq {fr.sequence}: nominal time already "
                              f"archived as seq {other} (replayed under a new sequence number)")
                    log.error("SECURITY: %s", detail)
                    results.append(StoreResult(StoreOutcome.REPLAY, fr, detail, existing_sequence=other))
                    extra_q.append(self._q_from_frame(fr, StoreOutcome.REPLAY.value, detail))
                    continue
                # Refilled (relay.kpi): a later frame of its set was archived before it.
                refilled = top_seq.get(fr.frame_set, -1) > fr.sequence or db.execute(
                    "SELECT 1 FROM frames WHERE frame_set = ? AND seq > ? LIMIT 1", key).fetchone() is not None
                top_seq[fr.frame_set] = max(top_seq.get(fr.frame_set, -1), fr.sequence)
                kpi_frames.append((fr, refilled))
                h = place.place("frames", fr.station, fr.day, fr.raw)
                placed["frames"].append((h, lambda rel, off, n, fr=fr: (
                    fr.frame_set, fr.sequence, fr.station, fr.nominal_ms, fr.day.isoformat(), rel, off, n,
                    fr.sha256, fr.received_at or time.time())))
                pending[key] = fr
                pending_time[tkey] = fr.sequence
                results.append(StoreResult(StoreOutcome.ARCHIVED, fr))

            def store_messages(records: Sequence[Any], table: str, what: str, data_of: Any, row_of: Any) -> None:
                """Enveloped messages (events, IMS 2.0), one path: dedupe by (frame set, seq) on
                ``sha256`` -- same: DUPLICATE, different: CONFLICT (quarantined) -- else place
                ``data_of(rec)`` on the station's day and index ``row_of(rec, file, off, n)``."""
                pending_sha: dict[tuple[str, int], str] = {}     # new in this batch -> sha256
                for rec in records:
                    key = (rec.frame_set, rec.sequence)
                    prev_sha = pending_sha.get(key)
                    if prev_sha is None:
                        row = db.execute(f"SELECT sha256 FROM {table} WHERE frame_set = ? AND seq = ?",
                                         key).fetchone()
                        prev_sha = row[0] if row else None
                    if prev_sha is not None:
                        if prev_sha == rec.sha256:
                            results.append(StoreResult(StoreOutcome.DUPLICATE, rec))
                        else:
                            detail = (f"frame set {rec.frame_set} seq {rec.sequence}: different bytes (sha256 "
                                      f"{rec.sha256[:16]}..) than the archived {what} ({prev_sha[:16]}..)")
                            log.error("SECURITY: %s", detail)
                            results.append(StoreResult(StoreOutcome.CONFLICT, rec, detail))
                            extra_q.append(QuarantineRecord(reason=StoreOutcome.CONFLICT.value, detail=detail,
                                                            raw=rec.raw, station=rec.station, topic="",
                                                            frame_set=rec.frame_set, sequence=rec.sequence,
                                                            received_at=rec.received_at))
                        continue
                    h = place.place(table, rec.station, rec.day, data_of(rec))
                    placed[table].append((h, lambda rel, off, n, rec=rec: row_of(rec, rel, off, n)))
                    pending_sha[key] = rec.sha256
                    results.append(StoreResult(StoreOutcome.ARCHIVED, rec))

            store_messages(
                events, "events", "event", lambda ev: ev.raw,
                lambda ev, rel, off, n: (ev.frame_set, ev.sequence, ev.station, ev.time_ms, ev.day.isoformat(),
                                         ev.event_id, ev.state, ev.key_id, rel, off, n, ev.sha256,
                                         ev.received_at or time.time()))
            store_messages(
                ims20, "ims20", "IMS 2.0 message", lambda m: m.text,
                lambda m, rel, off, n: (m.frame_set, m.sequence, m.station, m.time_ms, m.day.isoformat(), m.msg_id,
                                        m.msg_type, m.data_type, m.measurement_id, m.srid, m.msg_station,
                                        m.qualifier, m.key_id, rel, off, n, m.sha256, m.head, m.signature,
                                        m.received_at or time.time()))

            qrows = []
            q_bytes = self._quarantine_bytes
            for q in [*quarantined, *extra_q]:
                keep = q.raw[:QUARANTINE_MAX_ITEM]
                t = q.received_at or time.time()
                h = None
                if keep and q_bytes + len(keep) <= self.quarantine_max_bytes:
                    h = place.place("quarantine", q.station, t, keep)
                    q_bytes += len(keep)
                qrows.append((h, (t, q.station, q.topic, q.reason, q.detail[:2000], q.frame_set, q.sequence,
                                  q.sha256, len(q.raw))))

            # Bytes first (fsync'd), then the index rows that point at them, in one commit.
            place.write()

            def rows_of(table: str) -> list[tuple]:
                return [build(*place.where(h)) for h, build in placed[table]]

            db.executemany('INSERT INTO frames(frame_set, seq, station, nominal_ms, day, file, "offset", length,'
                           " sha256, received_at) VALUES (?,?,?,?,?,?,?,?,?,?)", rows_of("frames"))
            db.executemany('INSERT INTO events(frame_set, seq, station, time_ms, day, event_id, state, key_id, file,'
                           ' "offset", length, sha256, received_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)',
                           rows_of("events"))
            db.executemany("INSERT INTO ims20(frame_set, seq, station, time_ms, day, msg_id, msg_type, data_type,"
                           ' measurement_id, srid, msg_station, qualifier, key_id, file, "offset", length, sha256,'
                           " head, signature, received_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                           rows_of("ims20"))
            db.executemany("INSERT INTO quarantine(received_at, station, topic, reason, detail, frame_set,"
                           ' seq, sha256, size, file, "offset", length) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)',
                           [(*r, *(place.where(h) if h is not None else (None, None, None))) for h, r in qrows])
            # The quality figures, in the same transaction (relay.kpi): every data frame handed in
            # passed its signatures; of the rejections, only the cd11 topic's count.
            kpi.record_batch(
                db, kpi_frames,
                [(fr.station, fr.received_at) for fr in frames] +
                [(q.station, q.received_at or time.time()) for q in quarantined
                 if q.station and q.topic.endswith("/cd11") and q.reason in kpi.AUTH_PASSED_REJECTIONS],
                [(q.station, q.received_at or time.time()) for q in quarantined
                 if q.station and q.topic.endswith("/cd11") and q.reason in kpi.AUTH_FAILED])
            place.index(db)
            self._end()
            self._quarantine_bytes = q_bytes
            return results
        except BaseException:
            self._abort()
            raise

    @staticmethod
    def _q_from_frame(fr: FrameRecord, reason: str, detail: str) -> QuarantineRecord:
        return QuarantineRecord(reason=reason, detail=detail, raw=fr.raw, station=fr.station,
                                topic="", frame_set=fr.frame_set, sequence=fr.sequence,
                                received_at=fr.received_at, sha256=fr.sha256)

    # -- reading -----------------------------------------------------------------------------------
    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[tuple]:
        with self._lock:
            return [tuple(r) for r in self._db.execute(sql, tuple(args)).fetchall()]

    _FRAME_COLS = 'station, frame_set, seq, nominal_ms, file, "offset", length, sha256, received_at'

    def lookup(self, frame_set: str, sequence: int) -> ArchivedFrame | None:
        rows = self._rows(f"SELECT {self._FRAME_COLS} FROM frames WHERE frame_set = ? AND seq = ?",
                          (frame_set, sequence))
        return ArchivedFrame(*rows[0]) if rows else None

    def read_frame(self, frame_set: str, sequence: int) -> bytes | None:
        a = self.lookup(frame_set, sequence)
        return None if a is None else self._read(a.file, a.offset, a.length)

    def iter_day(self, station: str, day: date) -> Iterator[tuple[ArchivedFrame, bytes]]:
        rows = self._rows(f"SELECT {self._FRAME_COLS} FROM frames WHERE station = ? AND day = ? "
                          "ORDER BY nominal_ms, frame_set, seq", (station, day.isoformat()))
        for row in rows:
            a = ArchivedFrame(*row)
            yield a, self._read(a.file, a.offset, a.length)

    def frame_keys(self, station: str | None = None) -> list[tuple[str, int]]:
        """(frame set, seq) of every archived frame (tests and tools)."""
        if station is None:
            return self._rows("SELECT frame_set, seq FROM frames ORDER BY frame_set, seq")
        return self._rows("SELECT frame_set, seq FROM frames WHERE station = ? ORDER BY frame_set, seq", (station,))

    def last_arrivals(self) -> dict[str, float]:
        """Station -> arrival (relay clock) of its latest archived frame (``relay.kpi`` table)."""
        return dict(self._rows("SELECT station, last_received_at FROM kpi_station"))

    def days(self, station: str) -> list[date]:
        rows = self._rows("SELECT DISTINCT day FROM frames WHERE station = ? ORDER BY day", (station,))
        return [date.fromisoformat(r[0]) for r in rows]

    @staticmethod
    def _where_time(station: str | None, since_ms: int | None, until_ms: int | None) -> tuple[str, list[Any]]:
        conds, args = [], []
        for cond, v in (("station = ?", station), ("time_ms >= ?", since_ms), ("time_ms < ?", until_ms)):
            if v is not None:
                conds.append(cond)
                args.append(v)
        return (" WHERE " + " AND ".join(conds)) if conds else "", args

    _EVENT_COLS = ('station, frame_set, seq, time_ms, event_id, state, key_id, file, "offset", length, '
                   "sha256, received_at")

    def iter_events(self, station: str | None = None, *, since_ms: int | None = None,
                    until_ms: int | None = None) -> Iterator[tuple[ArchivedEvent, bytes]]:
        """Archived events (index entry, envelope bytes) of *station* (default: all), with event
        time in [*since_ms*, *until_ms*), by event time."""
        where, args = self._where_time(station, since_ms, until_ms)
        for row in self._rows(f"SELECT {self._EVENT_COLS} FROM events{where} ORDER BY time_ms, frame_set, seq", args):
            a = ArchivedEvent(*row)
            yield a, self._read(a.file, a.offset, a.length)

    def read_event(self, frame_set: str, sequence: int) -> bytes | None:
        rows = self._rows(f"SELECT {self._EVENT_COLS} FROM events WHERE frame_set = ? AND seq = ?",
                          (frame_set, sequence))
        if not rows:
            return None
        a = ArchivedEvent(*rows[0])
        return self._read(a.file, a.offset, a.length)

    _IMS20_COLS = ("station, frame_set, seq, time_ms, msg_id, msg_type, data_type, measurement_id, srid, "
                   'msg_station, qualifier, key_id, file, "offset", length, sha256, received_at')

    def iter_ims20(self, station: str | None = None, *, since_ms: int | None = None,
                   until_ms: int | None = None, data_types: Sequence[str] | None = None) -> Iterator[ArchivedIms20]:
        """Index entries of archived IMS 2.0 messages of *station* (default: all), with envelope
        time in [*since_ms*, *until_ms*) and (when given) a data type among *data_types*, by time."""
        where, args = self._where_time(station, since_ms, until_ms)
        rows = self._rows(f"SELECT {self._IMS20_COLS} FROM ims20{where} ORDER BY time_ms, frame_set, seq", args)
        wanted = None if not data_types else {t.upper() for t in data_types}
        for row in rows:
            a = ArchivedIms20(*row)
            if wanted is None or wanted & set((a.data_type or "").split(",")):
                yield a

    def read_ims20(self, frame_set: str, sequence: int, *, envelope: bool = False) -> bytes | None:
        """The archived message text, byte-identical (with *envelope*: the signed envelope as
        received, rebuilt from the indexed header and signature); None if not archived."""
        import struct

        rows = self._rows('SELECT file, "offset", length, head, signature FROM ims20 '
                          "WHERE frame_set = ? AND seq = ?", (frame_set, sequence))
        if not rows:
            return None
        rel, off, n, head, sig = rows[0]
        text = self._read(rel, off, n)
        return bytes(head) + text + struct.pack(">H", len(sig)) + bytes(sig) if envelope else text

    def quarantine_entries(self, *, reason: str | None = None) -> list[dict[str, Any]]:
        cols = ("id", "received_at", "station", "topic", "reason", "detail", "frame_set", "seq",
                "sha256", "size", "file", "offset", "length")
        q = "SELECT " + ", ".join(f'"{c}"' for c in cols) + " FROM quarantine"
        args: tuple = ()
        if reason is not None:
            q += " WHERE reason = ?"
            args = (reason,)
        return [dict(zip(cols, r)) for r in self._rows(q + " ORDER BY id", args)]

    def read_quarantined(self, entry: dict[str, Any]) -> bytes | None:
        if entry.get("file") is None:
            return None
        return self._read(entry["file"], entry["offset"], entry["length"])

    def stats(self) -> dict[str, Any]:
        with self._lock:
            frames, nbytes = self._db.execute("SELECT COUNT(*), COALESCE(SUM(length), 0) FROM frames").fetchone()
            by_reason = {r: int(n) for r, n in
                         self._db.execute("SELECT reason, COUNT(*) FROM quarantine GROUP BY reason").fetchall()}
            (events,) = self._db.execute("SELECT COUNT(*) FROM events").fetchone()
            (ims20,) = self._db.execute("SELECT COUNT(*) FROM ims20").fetchone()
        return {"frames": int(frames), "bytes": int(nbytes), "events": int(events), "ims20": int(ims20),
                "quarantined": sum(by_reason.values()), "quarantined_by_reason": by_reason,
                "quarantine_bytes": self._quarantine_bytes}


class _DayFiles(_Placement):
    """FileArchive's placement: appended to the writer's day files, committed sizes in ``files``."""

    def __init__(self, arc: "FileArchive") -> None:
        self.arc = arc
        self.sizes: dict[str, int] = {}
        self.appends: dict[str, list[bytes]] = {}
        self.placed: list[tuple[str, int, int]] = []

    def _offset_of(self, rel: str) -> int:
        if rel not in self.sizes:
            r = self.arc._db.execute("SELECT size FROM files WHERE file = ?", (rel,)).fetchone()
            self.sizes[rel] = r[0] if r else 0
            p = self.arc.root / rel
            if r is None and p.exists() and p.stat().st_size:
                log.warning("%s: truncating an uncommitted file left by a crash", p)
                os.truncate(p, 0)
        return self.sizes[rel]

    def place(self, kind: str, station: str | None, when: Any, data: bytes) -> int:
        arc = self.arc
        rel = (arc._quarantine_file(when) if kind == "quarantine" else
               {"frames": arc._frame_file, "events": arc._event_file, "ims20": arc._ims20_file}[kind](station, when))
        off = self._offset_of(rel)
        self.sizes[rel] = off + len(data)
        self.appends.setdefault(rel, []).append(data)
        self.placed.append((rel, off, len(data)))
        return len(self.placed) - 1

    def write(self) -> None:
        for rel, chunks in self.appends.items():
            fh = self.arc._handle(rel)
            fh.write(b"".join(chunks))
            fh.flush()
            os.fsync(fh.fileno())

    def where(self, handle: int) -> tuple[str, int, int]:
        return self.placed[handle]

    def index(self, db: Any) -> None:
        db.executemany("INSERT INTO files(file, writer, size) VALUES (?,?,?) "
                       "ON CONFLICT(file) DO UPDATE SET size = excluded.size",
                       [(rel, self.arc.writer, self.sizes[rel]) for rel in self.appends])


class FileArchive(IndexedArchive):
    """Append-only day files per station + an SQLite index (see the module docstring)."""

    def __init__(self, root: str | Path, *, writer: str = "relay",
                 quarantine_max_bytes: int = DEFAULT_QUARANTINE_MAX_BYTES, max_open_files: int = 64) -> None:
        if not writer or not all(c.isalnum() or c in "-_" for c in writer):
            raise ArchiveError(f"archive writer name {writer!r} must be letters, digits, '-' or '_'")
        self.root = Path(root)
        self.writer = writer
        self.quarantine_max_bytes = quarantine_max_bytes
        self._max_open = max_open_files
        self._handles: dict[str, Any] = {}
        self._lock = threading.Lock()
        try:
            makedirs(self.root)
            self._db = sqlite3.connect(self.root / "index.sqlite", isolation_level=None,
                                       check_same_thread=False, timeout=30.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            self._db.executescript(kpi.SCHEMA)
            self._recover()
            (q,) = self._db.execute("SELECT COALESCE(SUM(length), 0) FROM quarantine").fetchone()
            self._quarantine_bytes = int(q)
        except sqlite3.Error as err:
            raise ArchiveError(f"{self.root}/index.sqlite: cannot open archive index: {err}") from err
        except OSError as err:
            raise ArchiveError(f"{self.root}: cannot open archive: {err}") from err

    # -- crash recovery ----------------------------------------------------------------------------
    def _recover(self) -> None:
        """Cut each of our files back to its committed size (a crash between the file append and
        the index commit leaves bytes the index does not know)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for rel, size in self._db.execute("SELECT file, size FROM files WHERE writer = ?", (self.writer,)):
                p = self.root / rel
                try:
                    actual = p.stat().st_size
                except FileNotFoundError:
                    raise ArchiveError(f"{p}: archive file missing (index says {size} bytes)") from None
                if actual > size:
                    log.warning("%s: truncating %d uncommitted bytes left by a crash", p, actual - size)
                    with open(p, "r+b") as fh:
                        fh.truncate(size)
                        os.fsync(fh.fileno())
                elif actual < size:
                    raise ArchiveError(f"{p}: archive file is {actual} bytes, index says {size} (data lost?)")
            # A file created by a commit that never completed is not in the table at all; the
            # first commit that appends to it again cuts it (``_DayFiles._offset_of``).
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    # -- writing -----------------------------------------------------------------------------------
    def _handle(self, rel: str):
        fh = self._handles.pop(rel, None)
        if fh is None:
            p = self.root / rel
            # The names must be durable too, not only the bytes: every directory level made here
            # (frames/STA/YYYY/, quarantine/YYYY/) and the new file's entry.
            makedirs(p.parent)
            new = not p.exists()
            fh = open(p, "ab")
            if new:
                fsync_dir(p.parent)
            if len(self._handles) >= self._max_open:
                old = next(iter(self._handles))
                self._handles.pop(old).close()
        self._handles[rel] = fh   # re-insert: most recently used last
        return fh

    def _frame_file(self, station: str, day: date) -> str:
        return (f"frames/{station}/{day.year:04d}/"
                f"{station}.{day.year:04d}.{day.timetuple().tm_yday:03d}.{self.writer}.cd11")

    def _quarantine_file(self, t: float) -> str:
        d = datetime.fromtimestamp(t, timezone.utc).date()
        return f"quarantine/{d.year:04d}/{d.year:04d}.{d.timetuple().tm_yday:03d}.{self.writer}.q"

    def _event_file(self, station: str, day: date) -> str:
        return (f"events/{station}/{day.year:04d}/"
                f"{station}.{day.year:04d}.{day.timetuple().tm_yday:03d}.{self.writer}.ev")

    def _ims20_file(self, station: str, day: date) -> str:
        return (f"ims20/{station}/{day.year:04d}/"
                f"{station}.{day.year:04d}.{day.timetuple().tm_yday:03d}.{self.writer}.msg")

    def commit(self, frames: Sequence[FrameRecord],
               quarantined: Sequence[QuarantineRecord] = (), *,
               events: Sequence[EventRecord] = (), ims20: Sequence[Ims20Record] = ()) -> list[StoreResult]:
        with self._lock:
            try:
                return self._commit(list(frames), list(quarantined), list(events), list(ims20))
            except sqlite3.Error as err:
                raise ArchiveError(f"{self.root}/index.sqlite: commit of {len(frames)} frame(s) "
                                   f"failed: {err}") from err
            except OSError as err:
                raise ArchiveError(f"{self.root}: writing archive files failed: {err}") from err

    def _begin(self, frame_sets: set[str]) -> None:
        self._db.execute("BEGIN IMMEDIATE")     # the index write lock: one writer decides at a time

    def _end(self) -> None:
        self._db.execute("COMMIT")

    def _placement(self) -> _Placement:
        return _DayFiles(self)

    def _abort(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")
        # The uncommitted tails are cut on the next open; make sure we do not append after them
        # with stale offsets in this process either.
        for fh in self._handles.values():
            fh.close()
        self._handles.clear()
        self._recover_quietly()

    def _recover_quietly(self) -> None:
        try:
            self._recover()
        except (sqlite3.Error, OSError, ArchiveError) as err:  # pragma: no cover - disk trouble
            log.error("archive recovery after a failed commit failed: %s", err)
        (q,) = self._db.execute("SELECT COALESCE(SUM(length), 0) FROM quarantine").fetchone()
        self._quarantine_bytes = int(q)

    # -- reading -----------------------------------------------------------------------------------
    def _read(self, rel: str, offset: int, length: int) -> bytes:
        with self._lock:
            fh = self._handles.get(rel)
            if fh is not None:
                fh.flush()
        with open(self.root / rel, "rb") as f:
            f.seek(offset)
            data = f.read(length)
        if len(data) != length:
            raise ArchiveError(f"{self.root / rel}: index entry at {offset}+{length} is past the end of the file")
        return data

    def close(self) -> None:
        with self._lock:
            for fh in self._handles.values():
                fh.close()
            self._handles.clear()
            self._db.close()
