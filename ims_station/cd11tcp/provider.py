"""CD-1.1 provider over TCP: one station frame set forwarded to a data centre's consumer.

Owns the provider side of spec ``shared/specs/cd11.md`` §6: connect to the consumer's well-known
port, Connection Request, follow the Connection Response to the data port, Option Request (type 1,
value = station name), our Acknack at once and at least every ``acknack_interval_s``, then data
frames sent **byte-identical** (the bytes handed to :meth:`Provider.offer` or read from the
:class:`FrameSource`, original signatures and CRC intact).  Each consumer Acknack is the current
truth: frames it lists as gaps and the *implied gaps* (frames the source holds outside the
consumer's [lowest, highest], §6.3) are resent from the source, interleaved one-for-one with live
frames, live first (§6.4, as GMS alternates).  Reconnects with exponential backoff and jitter;
:meth:`Provider.stop` sends an Alert before closing.

Bounds: the live queue (``live_queue`` frames; :meth:`offer` beyond it drops the new frame from the
queue only -- the source still holds it, so it is resent as an implied gap); frames sent and not yet
acknowledged (``max_unacked``; sending pauses until the next consumer acknack).  A frame sent on
the current connection is in flight, not missing, until the consumer acknowledges a frame sent
*after* it (TCP delivers in order and the consumer stores in order, so only then is it known to be
refused) or ``resend_grace_s`` passed (default: the heartbeat timeout); only then is it resent.

It does not own where frames are kept (the :class:`FrameSource`: the relay's archive, or
:class:`MemorySource`), parsing (``ims_station.cd11``) nor bounded reading/TLS (``link.py``).
"""

from __future__ import annotations

import asyncio
import bisect
import inspect
import logging
import random
import ssl
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ims_station import cd11
from ims_station.cd11tcp.link import (
    EventCallback,
    FrameLink,
    LinkError,
    LinkEvent,
    LinkLimits,
    LinkStats,
    PeerAlert,
    PeerClosed,
    PeerProtocolError,
    parse_hostport,
)

log = logging.getLogger("ims_station.cd11tcp.provider")


@runtime_checkable
class FrameSource(Protocol):
    """The frames a provider can (re)send.  Methods may return values or awaitables."""

    def bounds(self) -> tuple[int, int]:
        """(lowest, highest) sequence number held; (0, -1) when empty."""
        ...

    def held(self, start: int, end: int, limit: int) -> list[int]:
        """Up to *limit* sequence numbers held in [start, end), ascending."""
        ...

    def read(self, seq: int) -> bytes | None:
        """The original wire bytes of frame *seq*, or None if no longer held."""
        ...


class MemorySource:
    """A :class:`FrameSource` in memory keeping the newest ``max_frames`` frames."""

    def __init__(self, frames: dict[int, bytes] | None = None, *, max_frames: int = 1_000_000) -> None:
        self._f: dict[int, bytes] = {}
        self._keys: list[int] = []          # sorted
        self._max = max_frames
        for seq, raw in sorted((frames or {}).items()):
            self.add(seq, raw)

    def add(self, seq: int, raw: bytes) -> None:
        if seq not in self._f:
            if not self._keys or seq > self._keys[-1]:
                self._keys.append(seq)
            else:
                bisect.insort(self._keys, seq)
        self._f[seq] = raw
        while len(self._keys) > self._max:
            del self._f[self._keys.pop(0)]

    def __len__(self) -> int:
        return len(self._keys)

    def bounds(self) -> tuple[int, int]:
        if not self._keys:
            return 0, -1
        return self._keys[0], self._keys[-1]

    def held(self, start: int, end: int, limit: int) -> list[int]:
        i = bisect.bisect_left(self._keys, start)
        j = bisect.bisect_left(self._keys, end, lo=i)
        return self._keys[i:min(j, i + limit)]

    def read(self, seq: int) -> bytes | None:
        return self._f.get(seq)


async def _maybe(value):
    return await value if inspect.isawaitable(value) else value


@dataclass
class ProviderStats:
    """Counters of a provider (all connections)."""

    sent: int = 0                  # live frames sent
    resent: int = 0                # frames sent from the source because of (implied) gaps
    dropped_live: int = 0          # offers dropped from the full live queue (resent later)
    connects: int = 0              # data links established
    reconnects: int = 0            # connection attempts after the first
    acknacks_in: int = 0
    acknacks_out: int = 0
    acked_lowest: int = 0
    acked_highest: int = -1
    acked_gaps: int = 0
    connected: bool = False
    last_error: str = ""
    errors: Counter = field(default_factory=Counter)
    links: LinkStats = field(default_factory=LinkStats)

    def as_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in ("sent", "resent", "dropped_live", "connects", "reconnects",
                                           "acknacks_in", "acknacks_out", "acked_lowest", "acked_highest",
                                           "acked_gaps", "connected", "last_error")}
        d["errors"] = dict(self.errors)
        return d


class Provider:
    """Forward one frame set to a CD-1.1 consumer (see module docstring).

    ``to`` is the consumer's well-known port (``"host:port"`` or a tuple).  ``station`` goes into
    the Connection Request and the Option Request; ``frame_set`` (default ``station:0``) names the
    frames in our Acknacks; ``creator`` (default ``station``) is the creator of the frames we
    originate.  ``ssl_context`` (from ``TlsSettings.client_context()``) enables TLS on both
    connections; ``server_hostname`` is the name checked in the consumer's certificate (default:
    the host of ``to``).
    """

    def __init__(self, station: str, to: "str | tuple[str, int]", source: FrameSource, *,
                 frame_set: str | None = None, creator: str | None = None,
                 limits: LinkLimits | None = None, ssl_context: ssl.SSLContext | None = None,
                 server_hostname: str | None = None, live_queue: int = 1000, max_unacked: int = 10_000,
                 resend_grace_s: float | None = None, backoff_initial_s: float = 1.0,
                 backoff_max_s: float = 60.0, seed: int | None = None,
                 on_event: EventCallback | None = None) -> None:
        if not 1 <= len(station) <= 8:
            raise ValueError(f"station {station!r}: 1..8 characters (CD-1.1 station name field)")
        self.station = station
        host, port = parse_hostport(to, what="consumer address") if isinstance(to, str) else to
        self.to: tuple[str, int] = (str(host), int(port))
        self.source = source
        self.frame_set = frame_set or f"{station}:0"
        self.creator = creator or station
        self.limits = limits or LinkLimits()
        self.ssl = ssl_context
        self.server_hostname = server_hostname
        self.live_max = live_queue
        self.max_unacked = max_unacked
        self.resend_grace_s = self.limits.heartbeat_timeout_s if resend_grace_s is None else resend_grace_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.on_event = on_event
        self.stats = ProviderStats()
        self._rng = random.Random(seed)
        self._live: deque[tuple[int, bytes]] = deque()
        self._live_seqs: set[int] = set()
        self._inflight: dict[int, tuple[int, float]] = {}      # seq -> (send number, time) on this link
        self._send_no = 0
        self._acked_mark = -1          # highest send number the consumer has acknowledged
        self._plan: deque[tuple[int, int]] = deque()
        self._batch: deque[int] = deque()
        self._turn_live = True
        self._consumer: tuple[int, int, list[tuple[int, int]]] | None = None
        self._first_unacked: int | None = None
        self._src_highest_at_ack = -1
        self._wake = asyncio.Event()
        self._ack_changed = asyncio.Event()
        self._stopping = False
        self._stop_text = "provider stopping"
        self._stop_event = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._link: FrameLink | None = None
        self._consumer_seen = False

    # -- public API -------------------------------------------------------------------------------
    def offer(self, seq: int, raw: bytes) -> bool:
        """Queue a live frame (original bytes).  False if the live queue is full: the frame is then
        dropped from the queue only and resent later from the source as an implied gap."""
        if len(self._live) >= self.live_max:
            self.stats.dropped_live += 1
            return False
        self._live.append((seq, raw))
        self._live_seqs.add(seq)
        self._wake.set()
        return True

    def start(self) -> asyncio.Task:
        """Run :meth:`run` as a task (returned; also kept for :meth:`stop`)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.run(), name=f"cd11-provider-{self.station}")
        return self._task

    async def stop(self, text: str = "provider stopping", timeout: float = 5.0) -> None:
        """Send an Alert (*text*) on the open data link, close it and end :meth:`run`."""
        self._stopping = True
        self._stop_text = text
        self._stop_event.set()
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except asyncio.TimeoutError:
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)

    @property
    def consumer_state(self) -> tuple[int, int, list[tuple[int, int]]] | None:
        """The last consumer Acknack (lowest, highest, gaps), or None before the first."""
        return self._consumer

    def acked(self, upto: int) -> bool:
        """True if the consumer's last Acknack covers every frame the source held (when it arrived)
        up to *upto*: none of them lies in a gap or an implied gap, and *upto* was within the
        source's range then."""
        if self._consumer is None or upto > self._src_highest_at_ack:
            return False
        return self._first_unacked is None or self._first_unacked > upto

    async def wait_acked(self, upto: int, timeout: float | None = None) -> bool:
        """Wait until :meth:`acked` (*upto*); False on timeout."""
        async def _wait() -> None:
            while not self.acked(upto):
                self._ack_changed.clear()
                await self._ack_changed.wait()
        try:
            await asyncio.wait_for(_wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    # -- connection loop --------------------------------------------------------------------------
    def _event(self, kind: str, detail: str = "", peer: str = "") -> None:
        ev = LinkEvent(kind, "provider", peer or f"{self.to[0]}:{self.to[1]}", station=self.station,
                       frame_set=self.frame_set, detail=detail)
        log.info("%s", ev)
        if self.on_event is not None:
            try:
                self.on_event(ev)
            except Exception:
                log.exception("on_event callback failed")

    async def run(self) -> None:
        """Connect, stream, reconnect with backoff until :meth:`stop`."""
        attempt = 0
        first = True
        while not self._stopping:
            if not first:
                self.stats.reconnects += 1
            first = False
            good = False
            try:
                good = await self._session()
            except asyncio.CancelledError:
                raise
            except PeerAlert as err:
                self.stats.errors["peer-alert"] += 1
                self.stats.last_error = str(err)
                self._event("alert-received", repr(err.text))
            except (LinkError, OSError, asyncio.TimeoutError, ssl.SSLError, cd11.Cd11Error) as err:
                reason = getattr(err, "reason", type(err).__name__)
                self.stats.errors[reason] += 1
                self.stats.last_error = str(err) or type(err).__name__
                self._event("closed", self.stats.last_error)
            finally:
                self.stats.connected = False
                self._link = None
            if self._stopping:
                break
            attempt = 0 if good else attempt + 1
            delay = min(self.backoff_max_s, self.backoff_initial_s * (2 ** min(attempt, 30)))
            delay *= 0.5 + 0.5 * self._rng.random()          # jitter: [delay/2, delay)
            self._event("backoff", f"{delay:.3f} s")
            try:
                await asyncio.wait_for(self._stop_event.wait(), delay)
            except asyncio.TimeoutError:
                pass

    async def _open(self, host: str, port: int) -> FrameLink:
        kw: dict[str, Any] = {"limit": self.limits.max_buffer}
        if self.ssl is not None:
            kw.update(ssl=self.ssl, server_hostname=self.server_hostname or self.to[0],
                      ssl_handshake_timeout=self.limits.handshake_timeout_s)
        r, w = await asyncio.wait_for(asyncio.open_connection(host, port, **kw), self.limits.handshake_timeout_s)
        return FrameLink(r, w, self.limits, creator=self.creator, stats=self.stats.links)

    async def _session(self) -> bool:
        """One connection manager exchange and one data link; True if the consumer acknowledged."""
        host, port = self.to
        link = await self._open(host, port)
        try:
            ip = link.local[0] if ":" not in link.local[0] else "0.0.0.0"
            await link.send(cd11.ConnectionRequest(creator=self.creator, station=self.station, ip=ip,
                                                   port=link.local[1]).to_bytes())
            resp = await link.read_frame(idle_timeout=self.limits.handshake_timeout_s)
            if not isinstance(resp, cd11.ConnectionResponse):
                raise PeerProtocolError("unexpected-frame", f"{type(resp).__name__} instead of a connection response")
        except PeerProtocolError as err:
            await link.alert_and_close(err.alert_text)
            raise
        finally:
            await link.close()
        dhost = host if resp.ip in ("0.0.0.0", "") else resp.ip
        self._event("redirect", f"to {dhost}:{resp.port}")
        link = await self._open(dhost, resp.port)
        self._link = link
        self._inflight.clear()
        self._send_no = 0
        self._acked_mark = -1
        self._plan.clear()
        self._batch.clear()
        self._consumer_seen = False
        self.stats.connects += 1
        self.stats.connected = True
        self._event("connected", peer=f"{dhost}:{resp.port}")
        reader = asyncio.create_task(self._reader(link))
        try:
            await link.send(cd11.OptionRequest(creator=self.creator,
                                               options=[cd11.Option(1, self.station)]).to_bytes())
            await self._writer(link, reader)
        except PeerProtocolError as err:
            await link.alert_and_close(err.alert_text)
            raise
        except PeerAlert:
            await link.close()
            raise
        except LinkError:
            link.abort()
            raise
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            if not link.closed:
                link.abort()
        return self._consumer_seen

    async def _send_acknack(self, link: FrameLink) -> None:
        lo, hi = await _maybe(self.source.bounds())
        await link.send(cd11.Acknack(creator=self.creator, frame_set=self.frame_set,
                                     lowest=lo, highest=hi).to_bytes())
        self.stats.acknacks_out += 1

    async def _writer(self, link: FrameLink, reader: asyncio.Task) -> None:
        await self._send_acknack(link)
        next_ack = time.monotonic() + self.limits.acknack_interval_s
        while True:
            if reader.done():
                reader.result()          # raises the reader's error
                raise PeerClosed("reader ended")
            if self._stopping:
                self._event("alert-sent", self._stop_text)
                await link.alert_and_close(self._stop_text)
                return
            now = time.monotonic()
            if now >= next_ack:
                await self._send_acknack(link)
                next_ack = now + self.limits.acknack_interval_s
            self._wake.clear()
            item = None if len(self._inflight) >= self.max_unacked else await self._next_frame()
            if item is not None:
                seq, raw, resend = item
                await link.send(raw)
                self._send_no += 1
                # A resend keeps the first copy's send number: when the consumer then holds the
                # frame, only the first copy is known to have arrived (frames sent before the
                # resend may still be on their way).
                first = self._inflight.get(seq)
                self._inflight[seq] = (first[0] if first else self._send_no, time.monotonic())
                if resend:
                    self.stats.resent += 1
                else:
                    self.stats.sent += 1
                continue
            waiter = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait({waiter, reader}, timeout=max(0.0, next_ack - time.monotonic()),
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()

    async def _next_frame(self) -> tuple[int, bytes, bool] | None:
        if self._live and self._turn_live:
            live = self._pop_live()
            if live is not None:
                return live
        r = await self._next_resend()
        if r is not None:
            self._turn_live = True
            return r[0], r[1], True
        if self._live:
            return self._pop_live()
        return None

    def _pop_live(self) -> tuple[int, bytes, bool] | None:
        while self._live:
            seq, raw = self._live.popleft()
            self._live_seqs.discard(seq)
            if not self._consumer_holds(seq):
                self._turn_live = False
                return seq, raw, False
        return None

    def _consumer_holds(self, seq: int) -> bool:
        c = self._consumer
        if c is None:
            return False
        lo, hi, gaps = c
        return lo <= seq <= hi and not any(a <= seq < b for a, b in gaps)

    async def _next_resend(self) -> tuple[int, bytes] | None:
        now = time.monotonic()
        while True:
            while self._batch:
                seq = self._batch.popleft()
                if seq in self._live_seqs or self._consumer_holds(seq):
                    continue
                t = self._inflight.get(seq)
                if t is not None and t[0] > self._acked_mark and now - t[1] < self.resend_grace_s:
                    continue            # still in flight on this connection
                raw = await _maybe(self.source.read(seq))
                if raw is not None:
                    return seq, raw
            if not self._plan:
                return None
            start, end = self._plan[0]
            seqs = await _maybe(self.source.held(start, end, 256))
            seqs = [s for s in seqs if start <= s < end]
            if not seqs:
                self._plan.popleft()
                continue
            self._batch.extend(seqs)
            if seqs[-1] + 1 >= end:
                self._plan.popleft()
            else:
                self._plan[0] = (seqs[-1] + 1, end)

    async def _reader(self, link: FrameLink) -> None:
        while True:
            frame = await link.read_frame()
            if isinstance(frame, cd11.Acknack):
                if frame.frame_set != self.frame_set:
                    self.stats.errors["foreign-acknack"] += 1
                    continue
                await self._on_acknack(frame.lowest, frame.highest, list(frame.gaps))
            elif isinstance(frame, (cd11.OptionResponse, cd11.CommandRequest)):
                continue          # option echo; commands: no vocabulary is defined (spec §3.5)
            else:
                raise PeerProtocolError("unexpected-frame",
                                        f"{type(frame).__name__} (type {frame.header.frame_type}) from the consumer")

    async def _on_acknack(self, lo: int, hi: int, gaps: list[tuple[int, int]]) -> None:
        self.stats.acknacks_in += 1
        self._consumer = (lo, hi, gaps)
        self._consumer_seen = True
        self.stats.acked_lowest, self.stats.acked_highest, self.stats.acked_gaps = lo, hi, len(gaps)
        for seq in [s for s in self._inflight if self._consumer_holds(s)]:
            self._acked_mark = max(self._acked_mark, self._inflight.pop(seq)[0])
        src_lo, src_hi = await _maybe(self.source.bounds())
        ranges: list[tuple[int, int]] = []
        if src_hi >= src_lo:
            top = src_hi + 1
            if hi < lo:                          # consumer holds nothing: all of it is implied
                ranges.append((src_lo, top))
            else:
                if src_lo < lo:
                    ranges.append((src_lo, min(lo, top)))
                ranges += [(max(a, src_lo), min(b, top)) for a, b in gaps if b > src_lo and a < top]
                if src_hi > hi:
                    ranges.append((max(hi + 1, src_lo), top))
        first = None
        for a, b in ranges:
            held = await _maybe(self.source.held(a, b, 1))
            if held:
                first = held[0]
                break
        self._first_unacked = first
        self._src_highest_at_ack = src_hi
        self._plan = deque(r for r in ranges if r[0] < r[1])
        self._batch.clear()
        self._ack_changed.set()
        self._wake.set()
