"""The relay's CD-1.1/TCP side: stations connecting over TCP, and forwarding to data centres.

Owns how the relay plugs the CD-1.1/TCP protocol library (``ims_station.cd11tcp``: handshake,
framing, acknack exchange, limits, TLS) into :class:`~ims_station.relay.core.RelayCore`, in both
directions.  It does not own the protocol (``cd11tcp``), verification (``relay.verify``), the archive,
the gap list or its persistence (``relay.gaps`` / ``relay.state``), nor the MQTT client
(``relay.relay``).

**Consumer** (stations -> relay).  :class:`RelaySink` is the library's ``FrameSink``: every data
frame a station sends over TCP goes through the *same* ``RelayCore.process`` as an MQTT message,
as an ``Incoming`` on topic ``{prefix}/{STA}/cd11`` (STA = the station the connection manager
admitted), so the same checks (CRC, creator = station, signatures through the trust store, time
window, sequence/time), the same archive, quarantine, KPIs, counters and the same per-frame-set
gap list and state store apply.  ``deliver`` returns only after ``process`` returned, i.e. after
the frames are fsync'd and the state saved; the acknacks the library sends are the core's stored
state (:meth:`RelaySink.acknack_state`), so a frame is never acknowledged before it is on disk.
Legacy stations (real IMS frames signed with DSA keys we do not hold, or unsigned) are accepted
only under an explicit per-station :class:`~ims_station.relay.verify.StationPolicy` from the
configuration.

**Threading.**  ``RelayCore`` is not thread-safe and is driven today by the MQTT session thread
under ``Relay.core_lock``.  The TCP side runs one asyncio loop in its own thread; it never calls
the core itself: :class:`TcpIngest` is a single worker thread that takes the frames of every TCP
connection from a queue, processes them in batches (the archive's fsync amortised over several
stations, as for MQTT) under the same lock, and resolves each delivery's future.  So the core
sees one caller at a time, and the event loop never blocks on a disk write.

**Provider / forwarding** (relay -> data centre; ROADMAP item 2's "forwarding stage with its own
queue and acknowledgement").  Per ``[[cd11.forward]]`` target and forwarded frame set, one library
``Provider``: live frames are offered right after they are archived, from either transport
(``Relay.batch_listeners``), and resends are read from the archive (:class:`ArchiveFrameSource`:
``Archive.frame_bounds`` / ``held_sequences`` / ``read_frame``: the original bytes, signatures and
CRC intact).  The stage's queue is the provider's live queue backed by the archive; its
acknowledgement is the data centre's acknack.

*Restart without resending everything* -- decided: the relay persists per (target, frame set) in
``<data_dir>/forward.sqlite`` (:class:`ForwardState`) the **floor** (the lowest sequence number this
target is ever offered: fixed when the frame set is first forwarded, ``backfill_frames`` below the
first frame seen) and the data centre's last acknack (lowest, highest, gaps; for status and the
first connection after a restart).  The provider's frames "available" are the archive's
``[max(floor, lowest archived), highest archived]``; after a restart the data centre's acknack lists
what it lacks in that range (its gaps and the implied gaps below its lowest), and only those are
resent.  Without the floor, the implied-gap rule (spec §6.3) would make a newly configured target
receive the station's whole archive.  A resend the data centre already has is a duplicate it drops
by (frame set, seq) -- our consumer counts it ``duplicate`` and does not store it twice.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import queue
import sqlite3
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ims_station import topics
from ims_station.relay.core import Incoming, Outcome
from ims_station.relay.errors import RelayError

log = logging.getLogger(__name__)


# -- consumer side: TCP frames into the core ---------------------------------------------------------
@dataclass
class _Submission:
    items: list[Incoming]
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)

    def resolve(self, result: Any = None, error: BaseException | None = None) -> None:
        """Set the outcome unless the waiting link went away meanwhile (its task was cancelled,
        which cancels this future: the frames are stored all the same, nobody needs the answer)."""
        try:
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(result)
        except concurrent.futures.InvalidStateError:
            pass


class TcpIngest:
    """One worker thread: TCP deliveries -> ``RelayCore.process`` batches under the relay's lock.

    *relay* is the :class:`~ims_station.relay.relay.Relay` (its ``core``, ``core_lock`` and
    ``notify_batch``).  ``submit`` is thread-safe and returns a future of the outcomes (one per
    frame, in order), or raising :class:`RelayError` when the batch could not be stored (then
    nothing was acknowledged: the station resends after our acknack).

    The queue needs no bound of its own: a data link reads its next frame only after its delivery
    returned, so it holds at most one submission per link (``max_connections``), each at most
    ``max_frame_size`` bytes."""

    def __init__(self, relay: Any, *, batch_max: int = 64, batch_wait_s: float = 0.002) -> None:
        self.relay = relay
        self.batch_max = max(1, batch_max)
        self.batch_wait_s = batch_wait_s
        self._q: queue.Queue[_Submission | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self.counters = Counter()

    def start(self) -> "TcpIngest":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="relay-tcp-ingest", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread is not None:
            self._q.put(None)
            self._thread.join(timeout)
            self._thread = None

    def submit(self, station: str, frames: Sequence[bytes], received_at: float | None = None
               ) -> concurrent.futures.Future:
        t = self.relay.core.clock.time() if received_at is None else received_at   # the relay's clock
        topic = topics.topic(self.relay.prefix, station, "cd11")
        sub = _Submission([Incoming(topic, bytes(raw), None, t) for raw in frames])
        if not sub.items:
            sub.future.set_result([])
        else:
            self._q.put(sub)
        return sub.future

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._q.get()
            if first is None:
                break
            subs = [first]
            n = len(first.items)
            deadline = time.monotonic() + self.batch_wait_s
            while n < self.batch_max:
                try:
                    nxt = self._q.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is None:
                    stopping = True
                    break
                subs.append(nxt)
                n += len(nxt.items)
            try:
                self._process(subs)
            except Exception:  # noqa: BLE001 - this thread must outlive any bug: links wait on it
                log.exception("relay: CD-1.1/TCP ingest failed on a batch")
                for s in subs:
                    s.resolve(error=RelayError("ingest failed"))
        # Whatever is still queued at stop: refused (not stored, not acknowledged).
        while True:
            try:
                sub = self._q.get_nowait()
            except queue.Empty:
                break
            if sub is not None:
                sub.resolve(error=RelayError("relay stopping"))

    def _process(self, subs: list[_Submission]) -> None:
        items = [it for s in subs for it in s.items]
        core = self.relay.core
        try:
            with self.relay.core_lock:
                outcomes = core.process(items)
        except RelayError as err:
            with self.relay.core_lock:
                core.counters.store_errors += 1
            log.error("relay: could not store %d frame(s) received over CD-1.1/TCP, not acknowledged: %s",
                      len(items), err)
            for s in subs:
                s.resolve(error=err)
            return
        except Exception as err:  # noqa: BLE001 - process is the poison boundary; a bug past it
            log.exception("relay: processing %d CD-1.1/TCP frame(s) raised", len(items))
            for s in subs:
                s.resolve(error=RelayError(f"processing raised {err!r}"))
            return
        self.counters["batches"] += 1
        self.counters["frames"] += len(items)
        # Listeners first (the sink's acknack snapshot, the forwarders' live offers), so a
        # delivery returns only once its acknack state reflects it.
        self.relay.notify_batch(items, outcomes)
        i = 0
        for s in subs:
            s.resolve(outcomes[i:i + len(s.items)])
            i += len(s.items)


class RelaySink:
    """The ``cd11tcp`` library's ``FrameSink`` for the relay: frames into the core (via
    :class:`TcpIngest`), acknack state out of the core's frame-set states.

    ``acknack_state`` is called on the event loop several times per frame, so it never touches the
    disk or the core's lock: it reads a snapshot (an immutable tuple per frame set) that
    :meth:`refresh` -- a ``Relay.batch_listener``, run after every stored batch of *either*
    transport, before the TCP deliveries of that batch return -- copies from the core's states
    under the core lock.  A frame set not seen since start is read from the state store once."""

    def __init__(self, relay: Any, ingest: TcpIngest) -> None:
        self.relay = relay
        self.ingest = ingest
        self.counters = Counter()
        self.provider_ranges: dict[str, tuple[int, int]] = {}
        self._acks: dict[str, tuple[int, int, list[tuple[int, int]]]] = {}

    async def deliver(self, station: str, frame_set: str, frames: Sequence[Any]) -> list[Outcome]:
        """Store *frames* (parsed frames with ``raw``, or bytes) of *station*; returns once they
        are archived or quarantined durably (the outcomes, one per frame).  Raises
        :class:`RelayError` if the archive could not write: the library then closes the link
        with an Alert and acknowledges nothing; the station resends after the next acknack."""
        raws = [f if isinstance(f, (bytes, bytearray, memoryview)) else f.raw for f in frames]
        outcomes = await asyncio.wrap_future(self.ingest.submit(station, raws))
        self.counters["frames"] += len(raws)
        for o in outcomes:
            self.counters[o.result] += 1
        return outcomes

    def refresh(self, items: Sequence[Incoming], outcomes: Sequence[Outcome]) -> None:
        """Batch listener: snapshot the acknack fields of the frame sets this batch touched."""
        names = {o.frame_set for o in outcomes if o.frame_set and o.result in ("archived", "duplicate")}
        if not names:
            return
        core = self.relay.core
        with self.relay.core_lock:
            for fs in names:
                st = core.states.get(fs)
                if st is not None:
                    self._acks[fs] = st.acknack_fields()

    def acknack_state(self, frame_set: str) -> tuple[int, int, list[tuple[int, int]]]:
        """(lowest, highest, gaps) of *frame_set* as stored: exactly what is durable, shared with
        the MQTT path (one gap list per frame set, whichever transport filled it)."""
        got = self._acks.get(frame_set)
        if got is None:
            core = self.relay.core
            st = core.state_store.load(frame_set, **core._state_kw)
            got = (0, -1, []) if st is None else st.acknack_fields()
            self._acks.setdefault(frame_set, got)
        return got

    def provider_acknack(self, frame_set: str, lowest: int, highest: int) -> None:
        """The station's own acknack: the range it holds.  Recorded (stats); a reset (its highest
        below our lowest, spec §6.3) is counted and logged, but the relay's gap list is *not*
        cleared: gaps stay until they expire (``gap_expiry_days``) -- the same list serves the
        MQTT path, and a station that restarted its numbering is a ``sequence_time`` matter for
        an operator (docs/relay.md, "Known limits"), not a reason to forget what is missing."""
        self.counters["provider_acknacks"] += 1
        self.provider_ranges[frame_set] = (lowest, highest)
        lo, hi, _ = self.acknack_state(frame_set)
        if hi >= lo and highest >= lowest and highest < lo:
            self.counters["provider_resets"] += 1
            log.warning("CD-1.1 frame set %s: the station's acknack says it holds up to %d, below our "
                        "lowest %d (station reset?); gaps kept", frame_set, highest, lo)


# -- provider side: forwarding to data centres ------------------------------------------------------
_FORWARD_SCHEMA = """
CREATE TABLE IF NOT EXISTS forward (
    target    TEXT NOT NULL,
    frame_set TEXT NOT NULL,
    floor     INTEGER NOT NULL,       -- lowest sequence number ever offered to this target
    lowest    INTEGER NOT NULL DEFAULT 0,
    highest   INTEGER NOT NULL DEFAULT -1,
    gaps      TEXT NOT NULL DEFAULT '[]',
    acked_at  REAL,
    PRIMARY KEY (target, frame_set)
) WITHOUT ROWID;
"""


class ForwardState:
    """The forwarding stage's durable state, ``<data_dir>/forward.sqlite`` (WAL, synchronous=FULL):
    per (target, frame set) the floor and the data centre's last acknack.  Thread-safe."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_FORWARD_SCHEMA)
        except sqlite3.Error as err:
            raise RelayError(f"{self.path}: cannot open the forwarding state: {err}") from err

    def floor(self, target: str, frame_set: str) -> int | None:
        with self._lock:
            row = self._db.execute("SELECT floor FROM forward WHERE target = ? AND frame_set = ?",
                                   (target, frame_set)).fetchone()
        return None if row is None else int(row[0])

    def set_floor(self, target: str, frame_set: str, floor: int) -> int:
        """Fix the floor once (a later call keeps the first); returns the floor in force."""
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO forward (target, frame_set, floor) VALUES (?, ?, ?)",
                             (target, frame_set, floor))
            return int(self._db.execute("SELECT floor FROM forward WHERE target = ? AND frame_set = ?",
                                        (target, frame_set)).fetchone()[0])

    def record_acknack(self, target: str, frame_set: str, lowest: int, highest: int,
                       gaps: Sequence[tuple[int, int]]) -> None:
        with self._lock:
            self._db.execute("UPDATE forward SET lowest = ?, highest = ?, gaps = ?, acked_at = ? "
                             "WHERE target = ? AND frame_set = ?",
                             (lowest, highest, json.dumps([list(g) for g in gaps]), time.time(),
                              target, frame_set))

    def acknack(self, target: str, frame_set: str) -> tuple[int, int, list[tuple[int, int]]] | None:
        with self._lock:
            row = self._db.execute("SELECT lowest, highest, gaps FROM forward WHERE target = ? AND frame_set = ?",
                                   (target, frame_set)).fetchone()
        return None if row is None else (int(row[0]), int(row[1]), [tuple(g) for g in json.loads(row[2])])

    def close(self) -> None:
        with self._lock:
            self._db.close()


class ArchiveFrameSource:
    """The library's ``FrameSource`` of one frame set, over the relay archive: what is held is
    what is archived at or above the target's floor; bytes are the archived originals.  The
    methods are coroutines that run the index queries and file reads in a worker thread, so the
    event loop never waits for the archive's lock (held across an fsync by the ingest)."""

    def __init__(self, archive: Any, frame_set: str, floor: int) -> None:
        self.archive = archive
        self.frame_set = frame_set
        self.floor = floor

    def bounds_now(self) -> tuple[int, int]:
        b = self.archive.frame_bounds(self.frame_set)
        if b is None or b[1] < self.floor:
            return 0, -1
        return max(b[0], self.floor), b[1]

    async def bounds(self) -> tuple[int, int]:
        return await asyncio.to_thread(self.bounds_now)

    async def held(self, start: int, end: int, limit: int) -> list[int]:
        return await asyncio.to_thread(self.archive.held_sequences, self.frame_set, max(start, self.floor),
                                       end, limit)

    async def read(self, seq: int) -> bytes | None:
        if seq < self.floor:
            return None
        return await asyncio.to_thread(self.archive.read_frame, self.frame_set, seq)


#: Default ``backfill_frames``: a frame set new to a target is forwarded from one day (8640 10-s
#: frames) before the first frame seen, so a station's refill of a recent outage is forwarded too.
DEFAULT_BACKFILL_FRAMES = 8640


class Forwarder:
    """One ``[[cd11.forward]]`` target: a library ``Provider`` per forwarded frame set (one TCP
    connection each, as CD-1.1 has it), fed live from every stored batch and from the archive for
    resends; the floor and the target's acknacks persisted in :class:`ForwardState`."""

    def __init__(self, side: "TcpSide", target: dict[str, Any]) -> None:
        self.side = side
        self.target = target
        self.name = target["name"]
        self.stations = set(target["stations"])
        self.backfill = target.get("backfill_frames", DEFAULT_BACKFILL_FRAMES)
        self.providers: dict[str, Any] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._persist: asyncio.Task | None = None
        self._saved: dict[str, Any] = {}
        self.counters = Counter()

    async def start(self) -> None:
        from ims_station.cd11tcp.link import LinkLimits, TlsSettings

        t = self.target
        kw = {"acknack_interval_s": t.get("acknack_interval_s", 50.0)}
        for key in ("heartbeat_timeout_s", "max_frame_size"):
            if key in t:
                kw[key] = t[key]
        self.limits = LinkLimits(**kw)
        self.ssl = None
        if "tls_ca" in t:
            self.ssl = TlsSettings(ca=t["tls_ca"], cert=t.get("tls_cert"), key=t.get("tls_key"),
                                   server_hostname=t.get("server_name"),
                                   source=self.side.source).client_context(f"cd11.forward {self.name}")
        self._loop = asyncio.get_running_loop()
        archive = self.side.relay.core.archive
        for sta in sorted(self.stations):
            for fs in await asyncio.to_thread(archive.frame_sets, sta):
                await self._ensure(fs, None)
        self.side.relay.batch_listeners.append(self._on_batch)
        self._persist = asyncio.create_task(self._persist_loop())

    async def stop(self) -> None:
        try:
            self.side.relay.batch_listeners.remove(self._on_batch)
        except ValueError:
            pass
        if self._persist is not None:
            self._persist.cancel()
            await asyncio.gather(self._persist, return_exceptions=True)
        await asyncio.gather(*(p.stop("relay shutting down") for p in self.providers.values()),
                             return_exceptions=True)
        self._save()

    # -- live frames (called on the thread that stored the batch) ----------------------------------
    def _on_batch(self, items: Sequence[Incoming], outcomes: Sequence[Outcome]) -> None:
        live = [(o.frame_set, o.sequence, bytes(it.payload)) for it, o in zip(items, outcomes)
                if o.result == "archived" and o.station in self.stations and o.frame_set
                and not o.frame_set.endswith((":events", ":ims20"))]
        if live and self._loop is not None:
            self._loop.call_soon_threadsafe(lambda: self._loop.create_task(self._offer(live)))

    async def _offer(self, live: list[tuple[str, int, bytes]]) -> None:
        for fs, seq, raw in live:
            p = self.providers.get(fs) or await self._ensure(fs, seq)
            if seq >= p.source.floor:
                if p.offer(seq, raw):
                    self.counters["offered"] += 1
                else:
                    self.counters["offer_dropped"] += 1    # resent from the archive (implied gap)

    async def _ensure(self, frame_set: str, first_seq: int | None) -> Any:
        """The provider of *frame_set*, created with its floor fixed (persisted) on first use."""
        if frame_set in self.providers:
            return self.providers[frame_set]
        from ims_station.cd11tcp.provider import Provider

        st = self.side.forward_state
        archive = self.side.relay.core.archive
        floor = await asyncio.to_thread(st.floor, self.name, frame_set)
        if floor is None:
            if first_seq is None:
                b = await asyncio.to_thread(archive.frame_bounds, frame_set)
                ref = (b[1] + 1) if b else 0
            else:
                ref = first_seq
            floor = await asyncio.to_thread(st.set_floor, self.name, frame_set, max(0, ref - self.backfill))
        if frame_set in self.providers:            # created meanwhile (awaits above)
            return self.providers[frame_set]
        station = frame_set.split(":", 1)[0]
        t = self.target
        p = Provider(station, t["consumer"], ArchiveFrameSource(archive, frame_set, floor), frame_set=frame_set,
                     limits=self.limits, ssl_context=self.ssl, server_hostname=t.get("server_name"),
                     backoff_initial_s=t.get("backoff_base_s", 1.0), backoff_max_s=t.get("backoff_max_s", 60.0),
                     on_event=self.side.on_event)
        self.providers[frame_set] = p
        p.start()
        log.info("CD-1.1 forward %s: frame set %s to %s:%d from seq %d", self.name, frame_set,
                 *t["consumer"], floor)
        return p

    # -- the target's acknowledgement, persisted ------------------------------------------------------
    async def _persist_loop(self) -> None:
        while True:
            await asyncio.sleep(min(5.0, self.limits.acknack_interval_s))
            await asyncio.to_thread(self._save)

    def _save(self) -> None:
        st = self.side.forward_state
        if st is None:
            return
        for fs, p in list(self.providers.items()):
            c = p.consumer_state
            if c is not None and self._saved.get(fs) != c:
                st.record_acknack(self.name, fs, *c)
                self._saved[fs] = c

    def stats(self) -> dict[str, Any]:
        return {"counters": dict(self.counters),
                "frame_sets": {fs: dict(p.stats.as_dict(), floor=p.source.floor)
                               for fs, p in sorted(self.providers.items())}}


# -- the runtime: one asyncio loop thread for every CD-1.1/TCP link -------------------------------
class TcpSide:
    """The relay's CD-1.1/TCP side, started beside the MQTT client by ``relay run``: the
    connection manager and data consumer (``[cd11.consumer]``) and one forwarding stage per
    ``[[cd11.forward]]`` target, all on one asyncio loop in a thread of its own."""

    def __init__(self, relay: Any, settings: dict[str, Any], *, data_dir: str | Path,
                 relay_conf: dict[str, Any] | None = None, source: str = "<relay config>") -> None:
        self.relay = relay
        self.settings = settings
        self.relay_conf = relay_conf or {}
        self.source = source
        self.ingest = TcpIngest(relay, batch_max=self.relay_conf.get("batch_max", 64))
        self.sink = RelaySink(relay, self.ingest)
        relay.batch_listeners.append(self.sink.refresh)
        self.events: Counter = Counter()       # LinkEvent kinds (consumer and providers)
        self.alerts: list[str] = []            # the latest alerts sent/received (bounded), for stats
        self.manager = self.consumer = None
        self.forward_state = (ForwardState(Path(data_dir) / "forward.sqlite")
                              if settings.get("forward") else None)
        self.forwarders: list[Forwarder] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping: asyncio.Event | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._listening = ""
        relay.extra_stats = self.stats
        relay.tcp_health = self.health

    # -- thread ------------------------------------------------------------------------------------
    def health(self) -> str | None:
        """None while the loop and ingest threads live (the relay's watchdog asks), else why not."""
        if self._thread is None or not self._thread.is_alive():
            return f"CD-1.1/TCP loop thread ended: {self._error!r}" if self._error else "CD-1.1/TCP loop thread ended"
        if self.ingest._thread is None or not self.ingest._thread.is_alive():
            return "CD-1.1/TCP ingest thread ended"
        return None

    def start(self, timeout: float = 30.0) -> "TcpSide":
        self.ingest.start()
        self._thread = threading.Thread(target=self._run, name="relay-cd11-tcp", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout):
            raise RelayError("CD-1.1/TCP side did not start in time")
        if self._error is not None:
            raise self._error
        return self

    def stop(self, timeout: float = 15.0) -> None:
        """Alert and close every link, stop the providers, drain the ingest: within *timeout*."""
        deadline = time.monotonic() + timeout
        if self._loop is not None and self._stopping is not None:
            try:
                self._loop.call_soon_threadsafe(self._stopping.set)
            except RuntimeError:        # the loop already ended (it failed to start)
                pass
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()))
            self._thread = None
        self.ingest.stop(max(0.1, deadline - time.monotonic()))
        if self.forward_state is not None:
            self.forward_state.close()
            self.forward_state = None

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as err:  # noqa: BLE001 - reported to start() / logged
            self._error = err
            log.exception("CD-1.1/TCP side stopped")
        finally:
            self._started.set()


    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        try:
            await self._start_consumer()
            for target in self.settings.get("forward", []):
                fw = Forwarder(self, target)
                await fw.start()
                self.forwarders.append(fw)
        except OSError as err:       # a port in use, an address we do not have
            self._error = RelayError(f"{self.source}: cd11.consumer: cannot listen on {self._listening}: "
                                     f"{err.strerror or err}")
            self._started.set()
            await self._shutdown()
            return
        except BaseException as err:
            self._error = err
            self._started.set()
            await self._shutdown()
            return
        self._started.set()
        refresh = asyncio.create_task(self._refresh_loop())
        await self._stopping.wait()
        refresh.cancel()
        await self._shutdown()

    async def _shutdown(self) -> None:
        for fw in self.forwarders:
            await fw.stop()
        if self.manager is not None:
            await self.manager.stop("relay shutting down")
        if self.consumer is not None:
            await self.consumer.stop("relay shutting down")

    async def _refresh_loop(self) -> None:
        """Gap expiry runs on the MQTT thread's acknack schedule; copy its effect into the
        sink's snapshot now and then (every acknack interval)."""
        c = self.settings.get("consumer") or {}
        every = c.get("acknack_interval_s", self.relay_conf.get("acknack_interval_s", 50.0))
        while True:
            await asyncio.sleep(every)
            names = list(self.sink._acks)
            await asyncio.to_thread(self._snapshot, names)

    def _snapshot(self, names: list[str]) -> None:
        core = self.relay.core
        with self.relay.core_lock:
            for fs in names:
                st = core.states.get(fs)
                if st is not None:
                    self.sink._acks[fs] = st.acknack_fields()

    def on_event(self, ev: Any) -> None:
        self.events[f"{ev.role}:{ev.kind}"] += 1
        if ev.kind in ("alert-sent", "alert-received", "refused"):
            self.alerts.append(str(ev))
            del self.alerts[:-50]

    # -- consumer ------------------------------------------------------------------------------------
    def consumer_limits(self) -> Any:
        from ims_station.cd11tcp.link import LinkLimits

        c, r = self.settings["consumer"], self.relay_conf
        kw = {"max_frame_size": c.get("max_frame_size", min(r.get("max_payload", 4 << 20), 4 << 20)),
              "max_gaps": c.get("max_gaps", r.get("max_gaps", 4000)),
              "acknack_interval_s": c.get("acknack_interval_s", r.get("acknack_interval_s", 50.0))}
        for key, arg in (("buffer_bytes", "max_buffer"), ("max_connections", "max_connections"),
                         ("heartbeat_timeout_s", "heartbeat_timeout_s"),
                         ("handshake_timeout_s", "handshake_timeout_s"), ("frame_timeout_s", "frame_timeout_s"),
                         ("write_timeout_s", "write_timeout_s")):
            if key in c:
                kw[arg] = c[key]
        return LinkLimits(**kw)

    async def _start_consumer(self) -> None:
        c = self.settings.get("consumer")
        if not c:
            return
        from ims_station.cd11tcp.consumer import ConnectionManager, DataConsumer
        from ims_station.cd11tcp.link import TlsSettings

        limits = self.consumer_limits()
        ctx = None
        if "tls_cert" in c:
            ctx = TlsSettings(ca=c.get("tls_ca"), cert=c["tls_cert"], key=c["tls_key"],
                              source=self.source).server_context("cd11.consumer")
        table = {name: (st.get("allowed_addresses") or None) for name, st in c["station"].items()}
        name = self.relay_conf.get("name", "RELAY")
        adv = tuple(c["advertise"]) if c.get("advertise") else None
        self.consumer = DataConsumer(self.sink, table, host=c["data_listen"][0], port=c["data_listen"][1],
                                     limits=limits, ssl_context=ctx, name=name, advertise=adv,
                                     on_event=self.on_event)
        self._listening = "%s:%d (data_listen)" % c["data_listen"]
        await self.consumer.start()
        self.manager = ConnectionManager(self.consumer, host=c["listen"][0], port=c["listen"][1], limits=limits,
                                         ssl_context=ctx, name=name, on_event=self.on_event)
        self._listening = "%s:%d (listen)" % c["listen"]
        await self.manager.start()
        log.info("CD-1.1/TCP consumer: well-known port %s:%d, data port %s:%d, %d station(s)",
                 *self.manager.address, *self.consumer.address, len(table))

    # -- stats ---------------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        d: dict[str, Any] = {"events": dict(self.events), "alerts": list(self.alerts[-10:]),
                             "sink": dict(self.sink.counters), "ingest": dict(self.ingest.counters)}
        if self.consumer is not None:
            d["consumer"] = self.consumer.stats.as_dict()
            d["manager"] = self.manager.stats.as_dict()
            d["listen"] = "%s:%d" % self.manager.address
            d["data_listen"] = "%s:%d" % self.consumer.address
        d["forward"] = {fw.name: fw.stats() for fw in self.forwarders}
        return d
