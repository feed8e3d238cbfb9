"""The gateway as systemd and the journal see it: its health, its watched states, its summary line.

Owns what ``ims-station edge run`` reports through :class:`ims_station.service.Heartbeat`:

* **healthy** (watchdog pings continue): every port's ingest thread and the uplink's MQTT session
  thread are alive.  A port that is unplugged or a broker that is unreachable is *not* unhealthy:
  the gateway retries both by itself and a restart would not help; a dead thread is, and is what the
  watchdog is for.
* **states** an operator must see change (``WARNING`` lines): each port up/down, the uplink up/down.
* **summary** (``INFO`` every ``--stats-every`` s, and the unit's ``STATUS=``): frames made, outbox
  depth, bytes and the age of its oldest frame, uplink state and broker.

It does not own the status document (:func:`ims_station.edge.station.status`) nor the pacing
(:mod:`ims_station.service`).
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

from ims_station.service import Heartbeat, Notifier

log = logging.getLogger("ims_station.edge")


def summary_line(doc: dict) -> str:
    """One line from a status document (:func:`ims_station.edge.station.status`)."""
    ports = ", ".join(f"{p['name']} {'up' if p['connected'] else 'DOWN'}" for p in doc["ports"]) or "none"
    f, o, u = doc["gateway"]["framer"], doc["outbox"], doc["uplink"]
    age = o.get("oldest_age_s")
    oldest = "" if age is None else f", oldest {age:.0f} s"
    uplink = "off" if u is None else f"{'up' if u['connected'] else 'DOWN'} ({u['broker']})"
    return (f"gateway {doc['station']}: ports {ports}; frames {f['frames']}; outbox {o['frames']} frames "
            f"({o['bytes']} B{oldest}); uplink {uplink}")


def gateway_heartbeat(station: Any, threads: Sequence[Any], *, stats_every: float,
                      notifier: Notifier | None = None) -> Heartbeat:
    """The heartbeat of an assembled :class:`~ims_station.edge.station.Station` whose ports run on
    *threads* (one per port, same order)."""
    def healthy() -> str | None:
        for p, t in zip(station.ports, threads):
            if not t.is_alive():
                return f"port {p.config.name}: ingest thread ended"
        if station.uplink is not None and not station.uplink.running:
            return "uplink: MQTT session thread ended"
        return None

    def states() -> dict[str, str]:
        d = {f"port {p.config.name}": "up" if p.pump.connected else "down" for p in station.ports}
        if station.uplink is not None:
            d["uplink"] = "up" if station.uplink.connected else "down"
        return d

    cfg = station.config
    return Heartbeat(log, healthy=healthy, states=states, summary=lambda: summary_line(station.status()),
                     summary_s=stats_every, notifier=notifier, label=f"gateway {cfg.network}.{cfg.code}")
