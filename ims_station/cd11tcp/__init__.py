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

import importlib
from typing import TYPE_CHECKING

# Re-exported names, imported on first use (PEP 562): ``ims-station`` registers ``cd11 send|receive``
# from ``cli`` at start-up, which must not import numpy (via the codec) for every command.
_EXPORTS = {
    "consumer": ["ConnectionManager", "DataConsumer", "FrameSink", "MemorySink", "ServerStats", "Stations",
                 "apply_provider_acknack", "provider_was_reset"],
    "link": ["FrameLink", "LinkError", "LinkEvent", "LinkLimits", "LinkStats", "PeerAlert", "PeerClosed",
             "PeerProtocolError", "TlsSettings", "parse_hostport", "send_alert_and_close"],
    "provider": ["FrameSource", "MemorySource", "Provider", "ProviderStats"],
}
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}


def __getattr__(name: str):
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + list(_WHERE))


if TYPE_CHECKING:  # pragma: no cover
    from ims_station.cd11tcp.consumer import *  # noqa: F401,F403
    from ims_station.cd11tcp.link import *  # noqa: F401,F403
    from ims_station.cd11tcp.provider import *  # noqa: F401,F403

__all__ = sorted(_WHERE)
