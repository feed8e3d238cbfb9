"""One CD-1.1 TCP link: bounded frame reading, writing, alerts, TLS contexts, limits and counters.

Owns what both ends of a CD-1.1 connection (spec ``shared/specs/cd11.md`` §6) need on top of an
asyncio stream: :class:`LinkLimits` (every bound in one place), :class:`TlsSettings` (files ->
``ssl.SSLContext`` for servers and clients), :class:`FrameLink` (read one frame with the declared
length checked *before* anything is read or allocated, an idle/heartbeat timeout and a deadline for
a started frame against slow-loris peers; write with a timeout; Alert-then-close),
:func:`send_alert_and_close` and the link errors.  It does not own the frame layouts or parsing
(``ims_station.cd11``: :func:`~ims_station.cd11.frame_length` says how long a frame is from its
header, :func:`~ims_station.cd11.parse_frame` checks the CRC and decodes it), nor the protocol
roles (``consumer.py``, ``provider.py``).

Why not :class:`~ims_station.cd11.FrameDecoder` here: the decoder is fed whatever bytes arrive and
buffers them; a reader must instead ask the stream for exactly the bytes of one frame, after
:func:`frame_length` has accepted its header, so a peer can never make us buffer more than one
frame of at most ``max_frame_size`` (plus the stream's own bounded read buffer, ``max_buffer``).
Both use the same two codec functions, so there is one parser.
"""

from __future__ import annotations

import asyncio
import ssl
import struct
import time
from collections import Counter
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Mapping

from ims_station import cd11
from ims_station.cd11.wire import MAX_AUTH_SIZE
from ims_station.cd11.wire import MAX_FRAME_SIZE as CODEC_MAX_FRAME_SIZE
from ims_station.errors import ConfigError, ImsStationError, RemoteProtocolError

HEADER_SIZE = 36
TRAILER_FIXED = 8                  # key id + auth size; then the auth value, then the CRC


@dataclass(frozen=True)
class LinkLimits:
    """Every bound of a CD-1.1 link.  Defaults follow the spec (§6.1, §6.3) and GMS/USGS practice.

    ``max_frame_size``      largest frame accepted (declared trailer offset; checked from the header)
    ``max_gaps``            gaps per acknack we send (USGS: 4000); the FrameSetState cap
    ``max_buffer``          bytes the stream may buffer per connection (asyncio ``limit``)
    ``max_connections``     concurrent connections per server; one more gets an Alert and is closed
    ``heartbeat_timeout_s`` a link on which nothing arrives for this long is closed (GMS: 120 s)
    ``acknack_interval_s``  acknack at least this often; must be <= 60 (spec: "once a minute")
    ``handshake_timeout_s`` connect, connection request/response, identification of a data link
    ``write_timeout_s``     a write (drain) that does not complete in this time ends the link
    ``frame_timeout_s``     once a frame's first byte arrived, the whole frame must within this time
    ``ack_delay_s``         consumer: acknowledge received data within this time, besides the
                            periodic acknack (0: only the periodic one, as GMS does); lets a
                            provider release frames in seconds, not a minute
    """

    max_frame_size: int = 1 << 20
    max_gaps: int = 4000
    max_buffer: int = 256 << 10
    max_connections: int = 256
    heartbeat_timeout_s: float = 120.0
    acknack_interval_s: float = 55.0
    handshake_timeout_s: float = 30.0
    write_timeout_s: float = 30.0
    frame_timeout_s: float = 60.0
    ack_delay_s: float = 1.0

    def __post_init__(self) -> None:
        for name in ("max_frame_size", "max_gaps", "max_buffer", "max_connections"):
            if getattr(self, name) < 1:
                raise ValueError(f"LinkLimits.{name} must be >= 1")
        for name in ("heartbeat_timeout_s", "acknack_interval_s", "handshake_timeout_s",
                     "write_timeout_s", "frame_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"LinkLimits.{name} must be > 0")
        if self.ack_delay_s < 0:
            raise ValueError("LinkLimits.ack_delay_s must be >= 0")
        if self.acknack_interval_s > 60:
            raise ValueError("LinkLimits.acknack_interval_s must be <= 60 (CD-1.1: at least once a minute)")
        if self.max_frame_size < 128:
            raise ValueError("LinkLimits.max_frame_size must be >= 128 (control frames)")
        if self.max_frame_size > CODEC_MAX_FRAME_SIZE:
            raise ValueError("LinkLimits.max_frame_size exceeds the codec's maximum")
        if self.max_gaps > 100_000:
            raise ValueError("LinkLimits.max_gaps must be <= 100000 (the codec's maximum)")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, file: str = "<config>", key: str = "cd11") -> "LinkLimits":
        """Limits from a config table (keys = field names; absent keys keep the defaults).
        :class:`ConfigError` names file, key and reason."""
        known = {f.name: f for f in fields(cls)}
        kw: dict[str, Any] = {}
        for k, v in data.items():
            f = known.get(k)
            if f is None:
                raise ConfigError(file, f"{key}.{k}", f"unknown key (known: {', '.join(sorted(known))})")
            want_int = k.startswith("max_")
            if isinstance(v, bool) or not isinstance(v, int if want_int else (int, float)):
                raise ConfigError(file, f"{key}.{k}", f"must be {'an integer' if want_int else 'a number'}")
            kw[k] = v
        try:
            return cls(**kw)
        except ValueError as err:
            name = str(err).split()[0].removeprefix("LinkLimits.")
            raise ConfigError(file, f"{key}.{name}" if name in known else key, str(err)) from None


# --- errors ------------------------------------------------------------------------------------
class LinkError(ImsStationError):
    """A CD-1.1 link ended or could not be set up (``reason`` is a short code for counters)."""

    reason = "link"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        if reason is not None:
            self.reason = reason
        super().__init__(message)


class PeerClosed(LinkError):
    """The peer closed the connection (EOF or reset)."""

    reason = "closed"


class PeerAlert(LinkError):
    """The peer sent an Alert frame (``text``); the link ends."""

    reason = "peer-alert"

    def __init__(self, text: str) -> None:
        self.text = text
        super().__init__(f"peer sent alert: {text!r}")


# Why a link is closed with an Alert: the reason code starts the alert text and keys the counters
# (``LinkStats.errors``).  docs/cd11-tcp.md has this table; a test compares them.
ALERT_REASONS = {
    "garbage": "bytes that are not a valid CD-1.1 frame (unknown type, bad length, bad CRC, undecodable payload)",
    "oversize": "declared frame length above max_frame_size (refused from the header, nothing more is read)",
    "slow-frame": "a frame's bytes did not all arrive within frame_timeout_s (slow-loris)",
    "heartbeat-timeout": "nothing received for heartbeat_timeout_s",
    "handshake-timeout": "no connection request (manager) or identifying frame (data port) within handshake_timeout_s",
    "unexpected-frame": "a frame type that does not belong on this connection, or more than 16 frame sets on one link",
    "unknown-station": "the station is not in the station table",
    "address-not-allowed": "the station connected from an address not allowed for it",
    "wrong-creator": "a frame names another station than the one the link was identified as",
    "too-many-connections": "max_connections links are open already",
    "refused": "the sink refused the peer (e.g. the relay's policy)",
}


class PeerProtocolError(LinkError, RemoteProtocolError):
    """The peer broke the protocol or a limit.  ``reason`` is one of :data:`ALERT_REASONS` (short
    code, used in counters and at the start of the Alert text); ``detail`` says what exactly."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason, reason=reason)

    @property
    def alert_text(self) -> str:
        text = f"{self.reason}: {self.detail}" if self.detail else self.reason
        return text.encode("ascii", "replace").decode("ascii").strip()[:200] or self.reason


# --- events ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LinkEvent:
    """Something that happened on a link, for the ``on_event`` callback (``cd11 receive`` prints
    them, the relay logs/counts them).  ``kind``: ``redirect``, ``refused``, ``connected``,
    ``identified``, ``option``, ``acknack-in``, ``reset``, ``gap``, ``alert-sent``,
    ``alert-received``, ``closed``."""

    kind: str
    role: str                      # "manager", "data" or "provider"
    peer: str
    station: str = ""
    frame_set: str = ""
    detail: str = ""

    def __str__(self) -> str:
        parts = [self.role, self.kind, f"peer={self.peer}"]
        if self.station:
            parts.append(f"station={self.station}")
        if self.frame_set:
            parts.append(f"frame_set={self.frame_set}")
        if self.detail:
            parts.append(self.detail)
        return " ".join(parts)


EventCallback = Callable[[LinkEvent], None]


# --- TLS ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TlsSettings:
    """TLS for a link, from PEM files.  Server: ``cert`` + ``key`` required; with ``ca`` clients must
    present a certificate signed by it.  Client: ``ca`` required (the server is verified against it;
    no system defaults, a CD-1.1 peer is a known party); ``cert`` + ``key`` for client
    authentication.  Key files must be mode 0600/0400 and owned by us (``read_secret_file``)."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    server_hostname: str | None = None     # client: name to verify instead of the host connected to
    source: str = "<tls>"                  # config file, for error messages

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, file: str = "<config>", key: str = "tls") -> "TlsSettings | None":
        """``tls_ca``/``tls_cert``/``tls_key``/``tls_server_name`` of a config table (other keys are
        ignored: they belong to the table's owner); None if none is set (no TLS)."""
        vals = {}
        for k in ("tls_ca", "tls_cert", "tls_key", "tls_server_name"):
            v = data.get(k)
            if v is not None and not isinstance(v, str):
                raise ConfigError(file, f"{key}.{k}", "must be a string (a file path or host name)")
            vals[k] = v
        if not any(vals.values()):
            return None
        return cls(ca=vals["tls_ca"], cert=vals["tls_cert"], key=vals["tls_key"],
                   server_hostname=vals["tls_server_name"], source=file)

    def _check(self, where: str) -> None:
        from ims_station.config import read_secret_file

        if (self.cert is None) != (self.key is None):
            raise ConfigError(self.source, f"{where}.tls_cert", "tls_cert and tls_key go together")
        if self.key is not None:
            read_secret_file(self.key, what="TLS private key", min_bytes=32)

    def server_context(self, where: str = "tls") -> ssl.SSLContext:
        self._check(where)
        if self.cert is None:
            raise ConfigError(self.source, f"{where}.tls_cert", "a TLS server needs a certificate and key")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(self.cert, self.key)
            if self.ca is not None:
                ctx.load_verify_locations(cafile=self.ca)
                ctx.verify_mode = ssl.CERT_REQUIRED
        except (OSError, ssl.SSLError) as err:
            raise ConfigError(self.source, f"{where}.tls_cert", f"cannot load certificate/CA: {err}") from err
        return ctx

    def client_context(self, where: str = "tls") -> ssl.SSLContext:
        self._check(where)
        if self.ca is None:
            raise ConfigError(self.source, f"{where}.tls_ca", "a TLS client needs the CA that signed the server")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_verify_locations(cafile=self.ca)
            if self.cert is not None:
                ctx.load_cert_chain(self.cert, self.key)
        except (OSError, ssl.SSLError) as err:
            raise ConfigError(self.source, f"{where}.tls_ca", f"cannot load certificate/CA: {err}") from err
        return ctx


# --- counters ----------------------------------------------------------------------------------
@dataclass
class LinkStats:
    """Counters of one link (or summed over a server's links)."""

    frames_in: int = 0
    frames_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    alerts_sent: int = 0
    alerts_received: int = 0
    errors: Counter = field(default_factory=Counter)     # PeerProtocolError.reason -> count

    def as_dict(self) -> dict[str, Any]:
        return {"frames_in": self.frames_in, "frames_out": self.frames_out, "bytes_in": self.bytes_in,
                "bytes_out": self.bytes_out, "alerts_sent": self.alerts_sent,
                "alerts_received": self.alerts_received, "errors": dict(self.errors)}


# --- the link ----------------------------------------------------------------------------------
async def send_alert_and_close(writer: asyncio.StreamWriter, creator: str, text: str, *,
                               timeout: float = 2.0, reader: asyncio.StreamReader | None = None,
                               linger_s: float = 0.0) -> bool:
    """Write an Alert frame (*creator*, *text*) and close *writer*; never raises.  True if the alert
    was written and drained within *timeout*.

    With *reader* and *linger_s*, our side is shut down for writing (FIN) and what the peer still
    sends is read and discarded for at most *linger_s* seconds before closing: closing a socket
    with unread input makes the kernel send a reset, which can destroy the alert before the peer
    reads it (a peer that keeps writing, such as a slow-loris trickle)."""
    ok = False
    try:
        text = " ".join(text.encode("ascii", "replace").decode("ascii").split())[:200] or "closing"
        writer.write(cd11.Alert(creator=creator or "0", message=text).to_bytes())
        await asyncio.wait_for(writer.drain(), timeout)
        ok = True
        if reader is not None and linger_s > 0 and writer.can_write_eof():
            writer.write_eof()
            await asyncio.wait_for(_discard(reader), linger_s)
    except (OSError, asyncio.TimeoutError, RuntimeError, ImsStationError):
        pass
    await close_writer(writer, timeout=timeout)
    return ok


async def _discard(reader: asyncio.StreamReader) -> None:
    while await reader.read(65536):
        pass


async def close_writer(writer: asyncio.StreamWriter, *, timeout: float = 2.0) -> None:
    """Close *writer*, waiting at most *timeout* for the close; abort the transport if it hangs."""
    try:
        writer.close()
        await asyncio.wait_for(writer.wait_closed(), timeout)
    except (OSError, asyncio.TimeoutError, RuntimeError, ssl.SSLError):
        writer.transport.abort()
    except asyncio.CancelledError:
        writer.transport.abort()
        raise


class FrameLink:
    """A CD-1.1 connection: ``await read_frame()``, ``await send(raw)``, ``await alert_and_close()``.

    ``creator`` is the name written into the frames we originate (alerts).  One writer at a time is
    enforced by a lock, so a periodic acknack task and a data task may share the link.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limits: LinkLimits,
                 *, creator: str, stats: LinkStats | None = None) -> None:
        self.reader = reader
        self.writer = writer
        self.limits = limits
        self.creator = creator
        self.stats = stats if stats is not None else LinkStats()
        self.closed = False
        self.last_received = time.monotonic()
        self._wlock = asyncio.Lock()
        peer = writer.get_extra_info("peername")
        self.peer: tuple[str, int] = (str(peer[0]), int(peer[1])) if peer else ("?", 0)
        sock = writer.get_extra_info("sockname")
        self.local: tuple[str, int] = (str(sock[0]), int(sock[1])) if sock else ("0.0.0.0", 0)

    def __repr__(self) -> str:
        return f"FrameLink({self.peer[0]}:{self.peer[1]})"

    async def read_frame(self, idle_timeout: float | None = None) -> cd11.Frame:
        """Read exactly one frame.  Waits at most *idle_timeout* (default ``heartbeat_timeout_s``)
        for its first byte, then at most ``frame_timeout_s`` for the rest.  Raises
        :class:`PeerProtocolError` (``oversize``, ``garbage``, ``slow-frame``,
        ``heartbeat-timeout``), :class:`PeerClosed` or :class:`PeerAlert`."""
        idle = self.limits.heartbeat_timeout_s if idle_timeout is None else idle_timeout
        try:
            first = await asyncio.wait_for(self.reader.readexactly(1), idle)
        except asyncio.TimeoutError:
            raise PeerProtocolError("heartbeat-timeout", f"nothing received for {idle:g} s") from None
        except asyncio.IncompleteReadError:
            raise PeerClosed("peer closed the connection") from None
        except (OSError, ssl.SSLError) as err:
            raise PeerClosed(f"connection lost: {err}") from None
        try:
            raw = await asyncio.wait_for(self._rest_of_frame(first), self.limits.frame_timeout_s)
        except asyncio.TimeoutError:
            raise PeerProtocolError("slow-frame", f"frame not complete within "
                                                  f"{self.limits.frame_timeout_s:g} s") from None
        except asyncio.IncompleteReadError:
            raise PeerClosed("peer closed the connection inside a frame") from None
        except (OSError, ssl.SSLError) as err:
            raise PeerClosed(f"connection lost: {err}") from None
        try:
            frame, _ = cd11.parse_frame(raw, max_frame_size=self.limits.max_frame_size)
        except cd11.Cd11Error as err:
            raise PeerProtocolError("garbage", str(err)) from None
        self.last_received = time.monotonic()
        self.stats.frames_in += 1
        self.stats.bytes_in += len(raw)
        if isinstance(frame, cd11.Alert):
            self.stats.alerts_received += 1
            raise PeerAlert(frame.message)
        return frame

    async def _rest_of_frame(self, first: bytes) -> bytes:
        buf = bytearray(first)
        buf += await self.reader.readexactly(HEADER_SIZE - 1)
        # The header decides the length; frame_length refuses a trailer offset above the limit
        # (a 2 GB declared length fails here, before anything more is read).
        total = self._length(buf)
        if total is None:
            (toff,) = struct.unpack_from(">i", buf, 4)
            buf += await self.reader.readexactly(toff + TRAILER_FIXED - HEADER_SIZE)
            total = self._length(buf)
        if total is None or total < len(buf):  # pragma: no cover - frame_length guarantees this
            raise PeerProtocolError("garbage", "frame length undeterminable")
        if total > self.limits.max_frame_size + MAX_AUTH_SIZE + 16:
            raise PeerProtocolError("oversize", f"frame of {total} bytes")
        buf += await self.reader.readexactly(total - len(buf))
        return bytes(buf)

    def _length(self, buf: bytearray) -> int | None:
        try:
            return cd11.frame_length(buf, max_frame_size=self.limits.max_frame_size)
        except cd11.Cd11LengthError as err:
            reason = "oversize" if err.field == "header.trailer_offset" and \
                struct.unpack_from(">i", buf, 4)[0] > self.limits.max_frame_size else "garbage"
            raise PeerProtocolError(reason, str(err)) from None
        except cd11.Cd11Error as err:
            raise PeerProtocolError("garbage", str(err)) from None

    async def send(self, raw: bytes) -> None:
        """Write one frame's bytes (unchanged) and drain within ``write_timeout_s``."""
        if self.closed:
            raise PeerClosed("link already closed")
        async with self._wlock:
            try:
                self.writer.write(raw)
                await asyncio.wait_for(self.writer.drain(), self.limits.write_timeout_s)
            except asyncio.TimeoutError:
                raise LinkError(f"write not drained within {self.limits.write_timeout_s:g} s "
                                "(peer not reading)", reason="write-timeout") from None
            except (OSError, RuntimeError, ssl.SSLError) as err:
                raise PeerClosed(f"connection lost while writing: {err}") from None
        self.stats.frames_out += 1
        self.stats.bytes_out += len(raw)

    async def send_frame(self, frame: cd11.Frame) -> None:
        await self.send(frame.to_bytes())

    async def alert_and_close(self, text: str) -> None:
        """Send an Alert with *text* (best effort, bounded by ``write_timeout_s``) and close."""
        if self.closed:
            return
        self.closed = True
        if await send_alert_and_close(self.writer, self.creator, text,
                                      timeout=min(self.limits.write_timeout_s, 5.0), reader=self.reader,
                                      linger_s=min(self.limits.write_timeout_s, 1.0)):
            self.stats.alerts_sent += 1

    async def close(self) -> None:
        """Close without an alert (after the peer's alert or EOF)."""
        if self.closed:
            return
        self.closed = True
        await close_writer(self.writer, timeout=min(self.limits.write_timeout_s, 5.0))

    def abort(self) -> None:
        self.closed = True
        self.writer.transport.abort()


def parse_hostport(text: str, *, what: str = "address", default_host: str | None = None) -> tuple[str, int]:
    """``HOST:PORT`` (or ``PORT`` with *default_host*) -> (host, port); ValueError naming *what*."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = default_host or "", text
    host = host.strip("[]")
    if not host:
        raise ValueError(f"{what}: {text!r} is not HOST:PORT")
    try:
        p = int(port)
    except ValueError:
        raise ValueError(f"{what}: {text!r}: port {port!r} is not a number") from None
    if not 0 <= p <= 65535:
        raise ValueError(f"{what}: {text!r}: port out of range")
    return host, p
