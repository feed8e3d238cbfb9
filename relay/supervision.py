"""The relay as systemd and the journal see it: its health, its watched state, its summary line.

Owns what ``ims-station relay run`` reports through :class:`ims_station.service.Heartbeat`:
healthy while its MQTT session thread lives (and, with ``[cd11]``, the CD-1.1/TCP loop and
ingest threads: ``relay.tcp.TcpSide.health``) (an unreachable broker is not unhealthy: the session
retries with backoff, a restart would not help); the broker connection's up/down changes as
``WARNING`` lines; every ``--stats-every`` s an ``INFO`` summary (received, archived, duplicates,
quarantined, security and clock events, internal errors, acknacks, connection) that is also the
unit's ``STATUS=``.  It does not own the counters (``relay/core.py``) nor the pacing
(:mod:`ims_station.service`).
"""

from __future__ import annotations

import logging
from typing import Any

from ims_station.service import Heartbeat, Notifier

log = logging.getLogger("ims_station.relay")


def summary_line(instance: str, s: dict[str, Any]) -> str:
    """One line from :meth:`Relay.stats() <ims_station.relay.relay.Relay.stats>`."""
    return (f"relay {instance}: received {s['received']}, archived {s['archived']} (events "
            f"{s.get('events_archived', 0)}, ims20 {s.get('ims20_archived', 0)}), duplicates "
            f"{s['duplicates']}, quarantined {s['quarantined']} (security {s['security_events']}, clock "
            f"{s['clock_events']}, internal errors {s['internal_errors']}), acknacks {s['acknacks_sent']}, "
            f"broker {'up' if s['transport']['connected'] else 'DOWN'}")


def relay_heartbeat(relay: Any, *, stats_every: float, notifier: Notifier | None = None) -> Heartbeat:
    def healthy() -> str | None:
        if not relay.running:
            return "MQTT session thread ended"
        tcp = getattr(relay, "tcp_health", None)        # the CD-1.1/TCP side, when configured
        return tcp() if tcp is not None else None

    return Heartbeat(log, healthy=healthy, summary=lambda: summary_line(relay.instance, relay.stats()),
                     states=lambda: {"broker": "up" if relay.connected else "down"},
                     summary_s=stats_every, notifier=notifier, label=f"relay {relay.instance}")
