"""CD-1.1 consumer over TCP: the connection manager (well-known port) and the data consumer.

Owns the consumer side of spec ``shared/specs/cd11.md`` §6: :class:`ConnectionManager` answers one
Connection Request per connection with a Connection Response pointing at the data consumer (known
stations only, optionally only from allowed source addresses; anything else gets an Alert and a
closed connection) and closes; :class:`DataConsumer` accepts data links from known stations, echoes
an Option Request, receives Data/Command Response frames (CRC checked by the codec), hands them to a
:class:`FrameSink` and acknowledges what the sink reports as durably stored: an Acknack as soon as a
frame set is known, after any new gap, and at least every ``acknack_interval_s``; it closes links
idle longer than ``heartbeat_timeout_s`` with an Alert.  A peer that breaks the protocol or a limit
(:class:`~ims_station.cd11tcp.link.LinkLimits`) gets an Alert and a closed connection; each
connection is its own task, so it never stalls the others.

It does not own: frame parsing (``ims_station.cd11``), bounded reading and TLS (``link.py``), the
gap list (``ims_station.relay.gaps.FrameSetState``, shared with the MQTT path; :class:`MemorySink`
shows the use), signature checks, archiving and forwarding (the sink's business: the relay's sink
verifies and archives exactly as for MQTT frames).

Station table: ``{"LBTB": None, "PLCA": ["192.0.2.0/24", "198.51.100.7"]}`` -- a name maps to the
source addresses (IPs or networks) allowed to use it, ``None`` for any.  ``stations=None`` accepts
every station (tests, ``cd11 receive`` without ``--station``).  A data link is identified by the
first of: Option Request value, the provider's Acknack frame set creator, the first data frame's
creator; every later frame's creator must match.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping, Protocol, Self, runtime_checkable

from ims_station import cd11
from ims_station.cd11.frames import STATION_TYPES
from ims_station.cd11tcp.link import (
    EventCallback,
    FrameLink,
    LinkEvent,
    LinkError,
    LinkLimits,
    LinkStats,
    PeerAlert,
    PeerClosed,
    PeerProtocolError,
    parse_hostport,
)
from ims_station.clock import SystemClock
from ims_station.logutil import RateLimitedLog
from ims_station.relay.gaps import FrameSetState

log = logging.getLogger("ims_station.cd11tcp.consumer")

DATA_FRAME_TYPES = (5, 9, 13)      # frames with a sequence number that belong to a frame set
MAX_BATCH = 256                    # data frames handed to FrameSink.deliver at once, at most


@runtime_checkable
class FrameSink(Protocol):
    """Where a :class:`DataConsumer` puts received frames, and what it acknowledges.

    ``deliver`` returns only when the frames are durably stored (or durably refused, e.g.
    quarantined); the consumer acknowledges after it returns, from ``acknack_state``.  Raising
    :class:`~ims_station.cd11tcp.link.PeerProtocolError` from ``deliver`` makes the consumer send
    an Alert and close that link; any other exception is treated as a local storage failure (the
    link is closed with an Alert, nothing is acknowledged).  Frames arrive with ``raw`` = the
    original wire bytes.
    """

    async def deliver(self, station: str, frame_set: str, frames: list[cd11.Frame]) -> None: ...

    def acknack_state(self, frame_set: str) -> tuple[int, int, list[tuple[int, int]]]:
        """(lowest, highest, gaps) of *frame_set* as an Acknack carries them; (0, -1, []) if empty."""
        ...

    def provider_acknack(self, frame_set: str, lowest: int, highest: int) -> None:
        """The provider's Acknack for *frame_set* (its available range).  Implementations apply
        :func:`apply_provider_acknack` to their :class:`FrameSetState`."""
        ...


def provider_was_reset(state: tuple[int, int, list[tuple[int, int]]], lowest: int, highest: int) -> bool:
    """Spec §6.3: the provider was reset (numbering restarted) if its highest is below our lowest.
    An empty provider (highest < lowest, e.g. 0/-1 right after it started) says nothing."""
    ours_lo, ours_hi, _ = state
    return ours_hi >= ours_lo and highest >= lowest and highest < ours_lo


def apply_provider_acknack(state: FrameSetState, lowest: int, highest: int) -> bool:
    """Reset *state* if the provider's acknack (*lowest*, *highest*) shows a reset; True if so."""
    if provider_was_reset(state.acknack_fields(), lowest, highest):
        state.reset()
        return True
    return False


class MemorySink:
    """A :class:`FrameSink` in memory (tests, examples): frames by (frame set, seq), first copy
    kept, duplicates counted.  The gap logic is :class:`FrameSetState`."""

    def __init__(self, *, max_gaps: int = 4000) -> None:
        self.states: dict[str, FrameSetState] = {}
        self.frames: dict[tuple[str, int], bytes] = {}
        self.duplicates = 0
        self.resets = 0
        self.delivered = asyncio.Event()
        self._max_gaps = max_gaps

    def _state(self, frame_set: str) -> FrameSetState:
        st = self.states.get(frame_set)
        if st is None:
            st = self.states[frame_set] = FrameSetState(frame_set, max_gaps=self._max_gaps)
        return st

    async def deliver(self, station: str, frame_set: str, frames: list[cd11.Frame]) -> None:
        st = self._state(frame_set)
        for f in frames:
            key = (frame_set, f.sequence)
            if key in self.frames:
                self.duplicates += 1
            else:
                self.frames[key] = bytes(f.raw)
            st.add(f.sequence, time.time())
        self.delivered.set()

    def acknack_state(self, frame_set: str) -> tuple[int, int, list[tuple[int, int]]]:
        st = self.states.get(frame_set)
        return st.acknack_fields() if st else (0, -1, [])

    def provider_acknack(self, frame_set: str, lowest: int, highest: int) -> None:
        if apply_provider_acknack(self._state(frame_set), lowest, highest):
            self.resets += 1


# --- station table ---------------------------------------------------------------------------------
StationTable = Mapping[str, "Iterable[str] | None"]


class Stations:
    """Normalised station table (see module docstring)."""

    def __init__(self, table: StationTable | None) -> None:
        self.any = table is None
        self._t: dict[str, list[Any] | None] = {}
        for name, addrs in (table or {}).items():
            if addrs is None:
                self._t[name] = None
            else:
                try:
                    self._t[name] = [ipaddress.ip_network(a, strict=False) for a in addrs]
                except ValueError as err:
                    raise ValueError(f"station {name}: allowed address {err}") from None

    def check(self, station: str, peer_ip: str) -> None:
        """Raise PeerProtocolError unless *station* may connect from *peer_ip*."""
        if self.any:
            return
        if station not in self._t:
            raise PeerProtocolError("unknown-station", f"station {station!r} is not configured here")
        nets = self._t[station]
        if nets is None:
            return
        try:
            ip = ipaddress.ip_address(peer_ip)
        except ValueError:
            ip = None
        if ip is None or not any(ip in n for n in nets):
            raise PeerProtocolError("address-not-allowed", f"station {station!r} may not connect from {peer_ip}")




@dataclass
class ServerStats:
    """Counters of a manager or data consumer, summed over its links."""

    connections: int = 0
    active: int = 0
    refused: int = 0
    redirected: int = 0
    frames_delivered: int = 0
    acknacks_sent: int = 0
    provider_resets: int = 0
    links: LinkStats = field(default_factory=LinkStats)

    def add_link(self, s: LinkStats) -> None:
        t = self.links
        t.frames_in += s.frames_in
        t.frames_out += s.frames_out
        t.bytes_in += s.bytes_in
        t.bytes_out += s.bytes_out
        t.alerts_sent += s.alerts_sent
        t.alerts_received += s.alerts_received
        t.errors.update(s.errors)

    def as_dict(self) -> dict[str, Any]:
        return {"connections": self.connections, "active": self.active, "refused": self.refused,
                "redirected": self.redirected, "frames_delivered": self.frames_delivered,
                "acknacks_sent": self.acknacks_sent, "provider_resets": self.provider_resets,
                **self.links.as_dict()}


class _Server:
    """Common part: asyncio server, connection limit, per-connection tasks, stop with alerts."""

    role = "?"

    def __init__(self, *, host: str, port: int, limits: LinkLimits, ssl_context, name: str,
                 on_event: EventCallback | None) -> None:
        self.host, self.port = host, port
        self.limits = limits
        self.ssl = ssl_context
        self.name = name
        self.on_event = on_event
        self.stats = ServerStats()
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task] = set()
        self._rlog = RateLimitedLog(log, SystemClock())

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) actually bound (port 0 -> the chosen port)."""
        if self._server is None or not self._server.sockets:
            return self.host, self.port
        h, p = self._server.sockets[0].getsockname()[:2]
        return h, p

    def event(self, kind: str, peer: str, **kw: Any) -> None:
        ev = LinkEvent(kind, self.role, peer, **kw)
        level = logging.WARNING if kind in ("refused", "alert-sent") else logging.INFO
        self._rlog(f"{self.role}:{kind}", level, "%s", ev)
        if self.on_event is not None:
            try:
                self.on_event(ev)
            except Exception:  # a broken callback must not end the link
                log.exception("on_event callback failed")

    async def start(self) -> Self:
        self._server = await asyncio.start_server(self._accept, self.host, self.port, ssl=self.ssl,
                                                  limit=self.limits.max_buffer,
                                                  ssl_handshake_timeout=self.limits.handshake_timeout_s
                                                  if self.ssl else None)
        self.host, self.port = self.address
        return self

    async def stop(self, text: str = "consumer shutting down") -> None:
        """Stop listening; every open link gets an Alert (*text*) and is closed."""
        if self._server is not None:
            self._server.close()
        self._stop_text = text
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            try:
                await asyncio.wait_for(self._server.wait_closed(), 5)
            except asyncio.TimeoutError:  # pragma: no cover
                pass
            self._server = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        link = FrameLink(reader, writer, self._link_limits(), creator=self.name)
        peer = f"{link.peer[0]}:{link.peer[1]}"
        self.stats.connections += 1
        if len(self._tasks) >= self.limits.max_connections:
            err = PeerProtocolError("too-many-connections", f"limit {self.limits.max_connections} reached")
            link.stats.errors[err.reason] += 1
            self.stats.refused += 1
            self.event("refused", peer, detail=err.alert_text)
            await link.alert_and_close(err.alert_text)
            self.stats.add_link(link.stats)
            return
        self._tasks.add(task)
        self.stats.active += 1
        ctx: dict[str, str] = {}
        try:
            await self._serve(link, peer, ctx)
        except PeerProtocolError as err:
            link.stats.errors[err.reason] += 1
            if err.reason in ("unknown-station", "address-not-allowed"):
                self.stats.refused += 1
                self.event("refused", peer, detail=err.alert_text, **ctx)
            self.event("alert-sent", peer, detail=err.alert_text, **ctx)
            await link.alert_and_close(err.alert_text)
        except PeerAlert as err:
            self.event("alert-received", peer, detail=repr(err.text), **ctx)
            await link.close()
        except PeerClosed as err:
            self.event("closed", peer, detail=str(err), **ctx)
            await link.close()
        except LinkError as err:
            link.stats.errors[err.reason] += 1
            self.event("closed", peer, detail=str(err), **ctx)
            link.abort()
        except asyncio.CancelledError:
            await link.alert_and_close(getattr(self, "_stop_text", "consumer shutting down"))
        except Exception as err:  # our bug or the sink's storage failure: this link only
            link.stats.errors["internal"] += 1
            log.exception("%s link %s: internal error", self.role, peer)
            self.event("alert-sent", peer, detail=f"internal error: {type(err).__name__}", **ctx)
            await link.alert_and_close("consumer internal error")
        finally:
            self._tasks.discard(task)
            self.stats.active -= 1
            self.stats.add_link(link.stats)
            if not link.closed:
                await link.close()

    def _link_limits(self) -> LinkLimits:
        return self.limits

    async def _serve(self, link: FrameLink, peer: str, ctx: dict[str, str]) -> None:  # pragma: no cover
        raise NotImplementedError


class DataConsumer(_Server):
    """The data consumer: receives frames from identified stations and acknowledges them.

    ``advertise`` (``"host:port"`` or a tuple) is the address the connection manager hands out;
    default: the bound address (the manager's local address when bound to 0.0.0.0).  Use it
    behind NAT or a proxy.  ``name`` is the creator of the frames we send (acknacks, alerts).
    """

    role = "data"

    def __init__(self, sink: FrameSink, stations: StationTable | None = None, *, host: str = "127.0.0.1",
                 port: int = 0, limits: LinkLimits | None = None, ssl_context=None, name: str = "IDC",
                 advertise: "str | tuple[str, int] | None" = None,
                 on_event: EventCallback | None = None) -> None:
        super().__init__(host=host, port=port, limits=limits or LinkLimits(), ssl_context=ssl_context,
                         name=name, on_event=on_event)
        self.sink = sink
        self.stations = stations if isinstance(stations, Stations) else Stations(stations)
        self._advertise: tuple[str, int] | None = None
        self.advertise = advertise

    @property
    def advertise(self) -> tuple[str, int] | None:
        """The configured advertised data address (None: derived from the bound address).
        Settable (e.g. once a proxy in front of the data port is listening)."""
        return self._advertise

    @advertise.setter
    def advertise(self, value: "str | tuple[str, int] | None") -> None:
        addr = parse_hostport(value, what="advertise") if isinstance(value, str) else value
        if addr is not None:
            ipaddress.IPv4Address(addr[0])     # ValueError: a Connection Response carries IPv4
            addr = (addr[0], int(addr[1]))
        self._advertise = addr

    def advertised(self, local_ip: str | None = None) -> tuple[str, int]:
        """Where providers are sent: ``advertise``, else the bound address (with *local_ip*, the
        address the provider reached the manager on, when bound to all interfaces)."""
        if self._advertise is not None:
            return self._advertise
        host, port = self.address
        if host in ("0.0.0.0", "", "::") and local_ip:
            host = local_ip
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            host = "0.0.0.0"
        return host, port

    async def _serve(self, link: FrameLink, peer: str, ctx: dict[str, str]) -> None:
        conn = _DataLink(self, link, peer, ctx)
        try:
            await conn.run()
        finally:
            conn.cancel_timer()


class _DataLink:
    """One data connection of a :class:`DataConsumer`."""

    def __init__(self, owner: DataConsumer, link: FrameLink, peer: str, ctx: dict[str, str]) -> None:
        self.o = owner
        self.link = link
        self.peer = peer
        self.ctx = ctx
        self.station: str | None = None
        self.frame_sets: list[str] = []
        self._timer: asyncio.Task | None = None
        self._delayed: asyncio.Task | None = None
        self._unacked: set[str] = set()
        self._queue: deque[cd11.Frame] = deque()
        self._ack_lock = asyncio.Lock()
        self._queued = 0
        self._items = asyncio.Event()
        self._space = asyncio.Event()

    def cancel_timer(self) -> None:
        for t in (self._timer, self._delayed):
            if t is not None:
                t.cancel()

    def identify(self, station: str, how: str) -> None:
        if self.station is None:
            self.o.stations.check(station, self.link.peer[0])
            self.station = station
            self.ctx["station"] = station
            self.o.event("identified", self.peer, station=station, detail=f"by {how}")
        elif station != self.station:
            raise PeerProtocolError("wrong-creator", f"{how} names {station!r} on the link of {self.station!r}")

    async def run(self) -> None:
        """Read frames into a byte-bounded queue; a second task processes them in order, handing
        consecutive data frames of one frame set to the sink as one batch (one durable commit for
        what arrived while the previous batch was being stored).  The reader pauses while the queue
        holds ``max_buffer`` bytes, so TCP pushes back on a provider faster than the sink."""
        self.o.event("connected", self.peer)
        proc = asyncio.create_task(self._process())
        try:
            while True:
                frame = await self._race(self._read(), proc)
                self._queue.append(frame)
                self._queued += len(frame.raw)
                self._items.set()
                while self._queued >= self.o.limits.max_buffer:
                    self._space.clear()
                    await self._race(self._space.wait(), proc)
        finally:
            proc.cancel()
            await asyncio.gather(proc, return_exceptions=True)

    @staticmethod
    async def _race(coro, proc: asyncio.Task):
        """Await *coro* unless the processor task ends first (then raise its error)."""
        if proc.done():
            coro.close()
            proc.result()
            raise PeerClosed("link processor ended")
        task = asyncio.ensure_future(coro)
        try:
            await asyncio.wait({task, proc}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if task.done():
            return task.result()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        proc.result()
        raise PeerClosed("link processor ended")

    async def _read(self) -> cd11.Frame:
        lim = self.o.limits
        idle = lim.heartbeat_timeout_s if self.station else min(lim.handshake_timeout_s, lim.heartbeat_timeout_s)
        try:
            return await self.link.read_frame(idle_timeout=idle)
        except PeerProtocolError as err:
            if err.reason == "heartbeat-timeout" and self.station is None:
                raise PeerProtocolError("handshake-timeout", "no identifying frame received") from None
            raise

    def _pop(self) -> cd11.Frame:
        frame = self._queue.popleft()
        self._queued -= len(frame.raw)
        if self._queued < self.o.limits.max_buffer:
            self._space.set()
        return frame

    async def _process(self) -> None:
        while True:
            while not self._queue:
                self._items.clear()
                await self._items.wait()
            frame = self._pop()
            if isinstance(frame, cd11.OptionRequest):
                name = frame.options[0].name if frame.options else ""
                self.identify(name.partition(":")[0] or frame.creator, "option request")
                await self.link.send(cd11.OptionResponse(creator=self.o.name, options=frame.options).to_bytes())
                self.o.event("option", self.peer, station=self.station or "", detail=name)
            elif isinstance(frame, cd11.Acknack):
                fs = frame.frame_set
                self.identify(fs.partition(":")[0], "acknack")
                before = self.o.sink.acknack_state(fs)
                if provider_was_reset(before, frame.lowest, frame.highest):
                    self.o.stats.provider_resets += 1
                    self.o.event("reset", self.peer, station=self.station, frame_set=fs,
                                 detail=f"provider range {frame.lowest}..{frame.highest} below ours {before[0]}")
                self.o.sink.provider_acknack(fs, frame.lowest, frame.highest)
                self.o.event("acknack-in", self.peer, station=self.station, frame_set=fs,
                             detail=f"{frame.lowest}..{frame.highest}")
                await self.known(fs)
            elif frame.header.frame_type in DATA_FRAME_TYPES:
                fs = f"{frame.creator}:{frame.destination}"
                batch = [frame]
                while (self._queue and len(batch) < MAX_BATCH and self._queue[0].header.frame_type in DATA_FRAME_TYPES
                       and f"{self._queue[0].creator}:{self._queue[0].destination}" == fs):
                    batch.append(self._pop())
                await self._deliver(fs, batch)
            else:
                raise PeerProtocolError("unexpected-frame",
                                        f"{type(frame).__name__} (type {frame.header.frame_type}) on a data link")

    async def _deliver(self, fs: str, batch: list[cd11.Frame]) -> None:
        self.identify(batch[0].creator, "data frame creator")
        await self.known(fs)
        _, _, gaps_before = self.o.sink.acknack_state(fs)
        await self.o.sink.deliver(self.station, fs, batch)
        self.o.stats.frames_delivered += len(batch)
        self._unacked.add(fs)
        _, _, gaps_after = self.o.sink.acknack_state(fs)
        if gaps_after and not set(gaps_after) <= set(gaps_before):
            self.o.event("gap", self.peer, station=self.station, frame_set=fs, detail=f"{len(gaps_after)} gaps")
            await self.send_acknack(fs)
        elif self.o.limits.ack_delay_s > 0 and (self._delayed is None or self._delayed.done()):
            self._delayed = asyncio.create_task(self._delayed_acknack())

    async def known(self, fs: str) -> None:
        if fs in self.frame_sets:
            return
        if len(self.frame_sets) >= 16:
            raise PeerProtocolError("unexpected-frame", "more than 16 frame sets on one link")
        self.frame_sets.append(fs)
        await self.send_acknack(fs)
        if self._timer is None:
            self._timer = asyncio.create_task(self._acknack_loop())

    async def send_acknack(self, fs: str) -> None:
        # One acknack at a time, its state read under the lock: three tasks send acknacks (frame
        # processing, the periodic timer, the delayed ack), and a state read before waiting for
        # the writer could otherwise go out after a newer one -- the provider would take the older
        # state for the truth and resend what is already stored.
        async with self._ack_lock:
            await self._send_acknack(fs)

    async def _send_acknack(self, fs: str) -> None:
        lo, hi, gaps = self.o.sink.acknack_state(fs)
        m = self.o.limits.max_gaps
        if len(gaps) > m:  # merge the tail into one gap: over-reports, never claims a missing frame
            gaps = list(gaps[:m - 1]) + [(gaps[m - 1][0], gaps[-1][1])]
        self._unacked.discard(fs)
        await self.link.send(cd11.Acknack(creator=self.o.name, frame_set=fs, lowest=lo, highest=hi,
                                          gaps=list(gaps)).to_bytes())
        self.o.stats.acknacks_sent += 1

    async def _delayed_acknack(self) -> None:
        try:
            await asyncio.sleep(self.o.limits.ack_delay_s)
            for fs in list(self._unacked):
                await self.send_acknack(fs)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            log.debug("acknack to %s failed: %s", self.peer, err)
            self.link.abort()

    async def _acknack_loop(self) -> None:
        try:
            while True:
                await asyncio.sleep(self.o.limits.acknack_interval_s)
                for fs in list(self.frame_sets):
                    await self.send_acknack(fs)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # write failed: end the link (the reader then sees it closed)
            log.debug("acknack to %s failed: %s", self.peer, err)
            self.link.abort()


class ConnectionManager(_Server):
    """The well-known port: one Connection Request in, one Connection Response out, close.

    Redirects known stations to ``consumer.advertised()`` (or to *data_address* when given without
    a consumer, e.g. a data consumer in another process).
    """

    role = "manager"

    def __init__(self, consumer: DataConsumer | None, stations: StationTable | None = None, *,
                 host: str = "127.0.0.1", port: int = 0, limits: LinkLimits | None = None,
                 ssl_context=None, name: str = "IDC", data_address: "tuple[str, int] | None" = None,
                 on_event: EventCallback | None = None) -> None:
        super().__init__(host=host, port=port, limits=limits or LinkLimits(), ssl_context=ssl_context,
                         name=name, on_event=on_event)
        if consumer is None and data_address is None:
            raise ValueError("ConnectionManager needs a DataConsumer or a data_address")
        self.consumer = consumer
        self.data_address = data_address
        if stations is None and consumer is not None:
            self.stations = consumer.stations
        else:
            self.stations = stations if isinstance(stations, Stations) else Stations(stations)

    def _link_limits(self) -> LinkLimits:
        # A connection request is 84 bytes: nothing bigger is read on this port.
        hs = self.limits.handshake_timeout_s
        return replace(self.limits, max_frame_size=min(self.limits.max_frame_size, 4096),
                       frame_timeout_s=min(self.limits.frame_timeout_s, hs))

    async def _serve(self, link: FrameLink, peer: str, ctx: dict[str, str]) -> None:
        try:
            frame = await link.read_frame(idle_timeout=self.limits.handshake_timeout_s)
        except PeerProtocolError as err:
            if err.reason == "heartbeat-timeout":
                raise PeerProtocolError("handshake-timeout", "no connection request received") from None
            raise
        if not isinstance(frame, cd11.ConnectionRequest):
            raise PeerProtocolError("unexpected-frame",
                                    f"{type(frame).__name__} where a connection request was expected")
        station = frame.station or frame.creator
        ctx["station"] = station
        self.stations.check(station, link.peer[0])
        if self.consumer is not None:
            ip, port = self.consumer.advertised(link.local[0])
        else:
            ip, port = self.data_address
        stype = frame.station_type if frame.station_type in STATION_TYPES else "IMS"
        resp = cd11.ConnectionResponse(creator=self.name, station=station[:8], station_type=stype,
                                       ip=ip, port=port)
        await link.send(resp.to_bytes())
        self.stats.redirected += 1
        self.event("redirect", peer, station=station, detail=f"to {ip}:{port}")
        await link.close()
