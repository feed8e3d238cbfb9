"""CD-1.1 over TCP (spec ``shared/specs/cd11.md`` §6): the protocol roles on asyncio streams.

What the rest of the project uses::

    from ims_station.cd11tcp import (ConnectionManager, DataConsumer, FrameSink, LinkLimits,
                                     Provider, FrameSource, TlsSettings)

    consumer = await DataConsumer(sink, {"LBTB": None}, port=0, limits=LinkLimits()).start()
    manager = await ConnectionManager(consumer, port=8000).start()      # well-known port
    provider = Provider("LBTB", "dc.example.org:8000", source); provider.start()
    provider.offer(seq, raw_frame_bytes); await provider.wait_acked(seq, timeout=60)

Modules: ``link`` (limits, TLS contexts, bounded frame reading, alerts, link errors and counters),
``consumer`` (connection manager, data consumer, the ``FrameSink`` protocol, ``MemorySink``),
``provider`` (``Provider``, the ``FrameSource`` protocol, ``MemorySource``), ``store``
(``DirectorySink``: durable one-file-per-frame sink of ``cd11 receive``), ``cli`` (``ims-station
cd11 send|receive``).  The frame codec is ``ims_station.cd11`` (sans-IO); the gap list is
``ims_station.relay.gaps.FrameSetState``.  Operator documentation: ``docs/cd11-tcp.md``.
"""

from ims_station.cd11tcp.consumer import (
    ConnectionManager,
    DataConsumer,
    FrameSink,
    MemorySink,
    ServerStats,
    Stations,
    apply_provider_acknack,
    provider_was_reset,
)
from ims_station.cd11tcp.link import (
    FrameLink,
    LinkError,
    LinkEvent,
    LinkLimits,
    LinkStats,
    PeerAlert,
    PeerClosed,
    PeerProtocolError,
    TlsSettings,
    parse_hostport,
    send_alert_and_close,
)
from ims_station.cd11tcp.provider import FrameSource, MemorySource, Provider, ProviderStats

__all__ = [
    "ConnectionManager", "DataConsumer", "FrameLink", "FrameSink", "FrameSource", "LinkError",
    "LinkEvent", "LinkLimits", "LinkStats", "MemorySink", "MemorySource", "PeerAlert", "PeerClosed",
    "PeerProtocolError", "Provider", "ProviderStats", "ServerStats", "Stations", "TlsSettings",
    "apply_provider_acknack", "parse_hostport", "provider_was_reset", "send_alert_and_close",
]
