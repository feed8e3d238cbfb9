"""The station's state of health: one versioned status document and the watch over its states.

Owns:

* :class:`SohModel` -- what each component says about itself gathered into one document,
  ``"schema": "ims-station/soh/1"`` (docs/soh.md lists every key; a test compares): ports
  (connected, link and stream counters), boards (last packet and last sample, rate, clipping,
  supply, temperature, tamper, GNSS lock, time quality, clock differential, last sync), channels
  (latency and gaps), gateway/framer and its stages, outbox, uplink, keys (ids in use, days to
  expiry), host (disk of the outbox, CPU load, temperature where readable), the current *states*
  and the recent *alarms*.  ``Station.status()`` (the status API, the console, ``/metrics``) and
  the retained SOH the uplink publishes are this one document, so they cannot disagree.  The
  board fields come from the link decoder's events (``Soh`` every board SOH interval,
  ``DataBlock`` per packet: time quality, status flags, clip mask), seen by :meth:`observe`.
* :class:`StateWatch` -- compares successive state snapshots; each change is a log line (WARNING
  when a state goes bad, INFO when it recovers), an alarm entry with its time in the document's
  bounded ``alarms`` list, and an immediate SOH publication (``on_change``: the uplink's
  ``request_soh``).

CD-1.1 has no alert for these states: its Alert frame (§3.4) is sent only before closing a
connection.  The CD-1.1 carrier of station health is the channel status of every data frame
(tamper -> ``equipment_housing_open``, clipping -> ``clipped``, GNSS -> ``gps_receiver_unlocked``,
supply -> ``main_power_failure``, clock -> ``clock_differential_too_large``), which the framer sets
from the same packets (``Framer.status_for``).

Does not own: the counters themselves (each component's ``stats()``), the publication (uplink),
the HTTP API (``ims_station/statusapi.py``).
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import threading
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from ims_station.edge.ingest import DataBlock, GapReport, Soh
from ims_station.firmware import link

log = logging.getLogger(__name__)

SCHEMA = "ims-station/soh/1"
MAX_ALARMS = 50               # recent alarms kept in the document
KEY_CHECK_S = 60.0            # keys and host are read at most this often (a keystore walk is not free)
POLL_S = 1.0                  # states are compared at most this often (observe runs per packet)
OUTBOX_CHECK_S = 10.0         # the outbox's fill (an SQL query) at most this often
PORT_SILENT_S = 15.0          # a port with no packet for this long is down (a board sends its SOH every 10 s)

# state name -> (alarm when it goes bad, alarm when it recovers)
STATES: dict[str, tuple[str, str]] = {
    "port": ("port_down", "port_up"),
    "gnss": ("gnss_lost", "gnss_regained"),
    "tamper": ("tamper", "tamper_cleared"),
    "clipping": ("clipping", "clipping_cleared"),
    "supply": ("supply_low", "supply_ok"),
    "clock": ("clock_alarm", "clock_ok"),
    "keys": ("key_near_expiry", "key_renewed"),
    "outbox": ("outbox_alarm", "outbox_ok"),
}


def _t(us: int | None) -> float | None:
    return None if not us else us / 1e6


@dataclass
class BoardState:
    """What the link said last about one board behind one port."""

    board_id: int
    last_packet: float | None = None         # gateway clock, seconds since 1970
    last_sample: float | None = None         # end of the last sample received (board time)
    rate_hz: float | None = None
    time_quality: int | None = None
    status: int = 0                          # S_* flags of the last packet or SOH
    clipping: list[str] = field(default_factory=list)   # channels clipped in the last packet
    supply_v: float | None = None
    temperature_c: float | None = None
    last_sync: float | None = None
    clock_diff_us: int | None = None
    last_soh: float | None = None            # board time of the last SOH report
    ring_fill: int | None = None
    ring_capacity: int | None = None
    gaps: int = 0                            # link gaps reported (samples the ring no longer had)
    latency: dict[int, float] = field(default_factory=dict)   # channel id -> arrival - sample end, s
    last_channel_sample: dict[int, float] = field(default_factory=dict)

    def doc(self) -> dict:
        tq = self.time_quality
        return {
            "board_id": self.board_id, "last_packet": self.last_packet, "last_sample": self.last_sample,
            "rate_hz": self.rate_hz,
            "time_quality": None if tq is None else link.TQ_NAMES[tq] if tq < len(link.TQ_NAMES) else str(tq),
            "gnss_locked": None if tq is None else tq == link.TQ_LOCKED,
            "flags": [name for bit, name in link.STATUS_NAMES if self.status & bit],
            "tamper": bool(self.status & link.S_TAMPER), "supply_low": bool(self.status & link.S_SUPPLY_LOW),
            "clipping": list(self.clipping), "supply_v": self.supply_v, "temperature_c": self.temperature_c,
            "last_sync": self.last_sync, "clock_diff_us": self.clock_diff_us, "last_soh": self.last_soh,
            "ring_fill": self.ring_fill, "ring_capacity": self.ring_capacity, "gaps": self.gaps,
        }


class StateWatch:
    """Compares successive snapshots ``{key: (kind, bad, detail)}`` (``bad`` None: unknown, not
    judged).  A key's first known state is compared with *good*, so a station that starts bad
    (no GNSS, a key about to expire) is alarmed once at start."""

    def __init__(self, station: str, clock: Any, on_change: Callable[[dict], None] | None = None,
                 max_alarms: int = MAX_ALARMS) -> None:
        self.station = station
        self.clock = clock
        self.on_change = on_change
        self.alarms: deque[dict] = deque(maxlen=max_alarms)
        self.last: dict[str, bool] = {}
        self.changes = 0

    def update(self, states: dict[str, tuple[str, bool | None, dict]]) -> list[dict]:
        out = []
        for key, (kind, bad, detail) in states.items():
            if bad is None or self.last.get(key, False) == bad:
                if bad is not None:
                    self.last[key] = bad
                continue
            self.last[key] = bad
            out.append(self.record(STATES[kind][0 if bad else 1], key, bad, detail))
        return out

    def record(self, name: str, key: str, bad: bool, detail: dict | None = None) -> dict:
        """One alarm: logged, kept with its time, the SOH requested at once."""
        self.changes += 1
        alarm = {"alarm": name, "source": key, "state": "bad" if bad else "ok", "time": self.clock.time(),
                 **(detail or {})}
        self.alarms.append(alarm)
        extra = ", ".join(f"{k}={v}" for k, v in (detail or {}).items())
        log.log(logging.WARNING if bad else logging.INFO, "soh %s: %s: %s%s", self.station, key, name,
                f" ({extra})" if extra else "")
        if self.on_change is not None:
            try:
                self.on_change(alarm)
            except Exception:
                log.exception("soh %s: SOH request failed", self.station)
        return alarm

    def add(self, alarm: dict) -> None:
        """An alarm raised elsewhere (framer, outbox, stages: they log it themselves), kept here
        with its time so that the document lists every recent alarm in one place."""
        self.alarms.append({"time": self.clock.time(), **alarm})


class SohModel:
    """Gathers every component's status into one document (:meth:`document`) and watches the
    states (:meth:`poll`).  Thread-safe: :meth:`observe` runs in the port threads."""

    def __init__(self, station: Any, *, clock: Any, on_change: Callable[[dict], None] | None = None,
                 disk_path: str | os.PathLike[str] | None = None, thermal_glob: str =
                 "/sys/class/thermal/thermal_zone*/temp") -> None:
        self.st = station
        self.clock = clock
        self.station_id = f"{station.config.network}.{station.config.code}"
        self.watch = StateWatch(self.station_id, clock, on_change)
        self.disk_path = Path(disk_path) if disk_path is not None else None
        self.thermal_glob = thermal_glob
        self.boards: dict[tuple[str, int], BoardState] = {}
        self._seen_up: set[str] = set()
        self._lock = threading.RLock()
        self._keys: tuple[float, dict | None] | None = None
        self._host: tuple[float, dict] | None = None
        self._outbox: tuple[float, float] | None = None
        self._last_poll: float | None = None
        self.key_warn_days = float(getattr(station.framer, "key_warn_days", 30.0))

    # -- input -----------------------------------------------------------------------------------
    def observe(self, port: Any, events: list) -> None:
        """A port's batch of link events (before the gateway takes them)."""
        now = self.clock.time()
        with self._lock:
            for ev in events:
                bid = getattr(ev, "board_id", None)
                if bid is None:
                    continue
                b = self.boards.get((port.config.name, bid))
                if b is None:
                    b = self.boards[(port.config.name, bid)] = BoardState(bid)
                if isinstance(ev, DataBlock):
                    b.last_packet = now
                    b.rate_hz = ev.rate_mhz / 1000.0
                    b.time_quality, b.status = ev.time_quality, ev.status
                    end = ev.t_end_us / 1e6
                    b.last_sample = end if b.last_sample is None else max(b.last_sample, end)
                    codes = port.config.channels or {}
                    b.clipping = [codes.get(c, str(c)) for i, c in enumerate(ev.channel_ids)
                                  if ev.clip_mask >> i & 1]
                    for c in ev.channel_ids:
                        b.last_channel_sample[c] = max(end, b.last_channel_sample.get(c, end))
                        if not ev.retransmitted:
                            b.latency[c] = round(now - end, 6)
                elif isinstance(ev, Soh):
                    b.last_packet = now
                    b.time_quality, b.status = ev.time_quality, ev.status
                    b.supply_v = ev.supply_mv / 1000.0
                    b.temperature_c = ev.temperature_cc / 100.0
                    b.last_sync = _t(ev.last_sync_us)
                    b.clock_diff_us = ev.clock_diff_us
                    b.last_soh = _t(ev.time_us)
                    b.ring_fill, b.ring_capacity = ev.ring_fill, ev.ring_capacity
                elif isinstance(ev, GapReport):
                    b.gaps += 1
        self.poll()

    def alarm(self, alarm: dict) -> None:
        """Hook for the station's alarm path (framer, outbox, stages)."""
        with self._lock:
            self.watch.add(alarm)

    # -- states ------------------------------------------------------------------------------------
    def states(self) -> dict[str, tuple[str, bool | None, dict]]:
        out: dict[str, tuple[str, bool | None, dict]] = {}
        limit = getattr(self.st.framer, "clock_diff_limit_us", None)
        for p in self.st.ports:
            name = p.config.name
            up = self.receiving(name, bool(p.pump.connected))
            if up:
                self._seen_up.add(name)
            out[f"port:{name}"] = ("port", (not up) if name in self._seen_up else None, {"url": p.config.url})
        for (port, bid), b in self.boards.items():
            key = f"board:{port}/{bid}"
            if b.time_quality is not None:
                out[f"{key}:gnss"] = ("gnss", b.time_quality != link.TQ_LOCKED,
                                      {"time_quality": link.TQ_NAMES[b.time_quality]
                                       if b.time_quality < len(link.TQ_NAMES) else b.time_quality})
                out[f"{key}:tamper"] = ("tamper", bool(b.status & link.S_TAMPER), {})
                out[f"{key}:supply"] = ("supply", bool(b.status & link.S_SUPPLY_LOW), {"supply_v": b.supply_v})
                diff_bad = (b.clock_diff_us is not None and limit is not None and abs(b.clock_diff_us) > limit)
                out[f"{key}:clock"] = ("clock", bool(b.status & link.S_CLOCK_STEP) or diff_bad,
                                       {"clock_diff_us": b.clock_diff_us})
            if b.last_sample is not None:
                out[f"{key}:clipping"] = ("clipping", bool(b.clipping), {"channels": list(b.clipping)})
        keys = self._key_status()
        if keys is not None and keys.get("key_expires_in_days") is not None:
            out["keys"] = ("keys", keys["key_expires_in_days"] < self.key_warn_days,
                           {"key_ids": keys.get("key_ids"), "days": keys["key_expires_in_days"]})
        mono = self.clock.monotonic()
        if self._outbox is None or not 0 <= mono - self._outbox[0] < OUTBOX_CHECK_S:
            self._outbox = (mono, float(self.st.outbox.stats().get("fill") or 0.0))
        fill = self._outbox[1]
        out["outbox"] = ("outbox", fill >= 0.9, {"fill": round(fill, 4)})
        return out

    def receiving(self, port: str, connected: bool) -> bool:
        """Port open and a packet from one of its boards within :data:`PORT_SILENT_S` (an unplugged
        cable leaves a USB adapter's port open and silent)."""
        last = [b.last_packet for (p, _), b in self.boards.items() if p == port and b.last_packet is not None]
        return connected and bool(last) and self.clock.time() - max(last) <= PORT_SILENT_S

    def poll(self) -> list[dict]:
        """Compare the states now with the last ones (at most every :data:`POLL_S`): an alarm for
        each change."""
        with self._lock:
            mono = self.clock.monotonic()
            if self._last_poll is not None and 0 <= mono - self._last_poll < POLL_S:
                return []
            self._last_poll = mono
            return self.watch.update(self.states())

    # -- slow parts --------------------------------------------------------------------------------
    def _key_status(self) -> dict | None:
        mono = self.clock.monotonic()
        if self._keys is None or mono - self._keys[0] >= KEY_CHECK_S or mono < self._keys[0]:
            try:
                ks = self.st.framer.key_status()
            except Exception as err:        # no key valid now: the framer alarms that itself
                ks = {"key_ids": [], "key_expires_in_days": 0.0, "error": str(err)}
            self._keys = (mono, ks)
        ks = self._keys[1]
        if ks is None:
            return None
        ks = dict(ks)
        ks["days_to_expiry"] = ks.get("key_expires_in_days")
        if ks.get("key_expires"):
            # From the end instant at every poll: the crossing of the warning is seen when it
            # happens, not at the next keystore walk.
            end = datetime.fromisoformat(ks["key_expires"].replace("Z", "+00:00")).timestamp()
            ks["key_expires_in_days"] = ks["days_to_expiry"] = round((end - self.clock.time()) / 86400.0, 6)
        return ks

    def host(self) -> dict:
        mono = self.clock.monotonic()
        if self._host is not None and 0 <= mono - self._host[0] < KEY_CHECK_S:
            return self._host[1]
        doc: dict[str, Any] = {"disk_path": None, "disk_total_bytes": None, "disk_free_bytes": None,
                               "load_1m": None, "load_5m": None, "load_15m": None, "cpu_count": os.cpu_count(),
                               "temperature_c": None}
        path = self.disk_path
        if path is not None:
            try:
                du = shutil.disk_usage(path)
                doc.update(disk_path=str(path), disk_total_bytes=du.total, disk_free_bytes=du.free)
            except OSError:
                pass
        try:
            doc["load_1m"], doc["load_5m"], doc["load_15m"] = (round(x, 3) for x in os.getloadavg())
        except (OSError, AttributeError):
            pass
        temps = []
        for f in sorted(glob.glob(self.thermal_glob)):
            try:
                temps.append(int(Path(f).read_text().strip()) / 1000.0)
            except (OSError, ValueError):
                continue
        doc["temperature_c"] = max(temps) if temps else None
        self._host = (mono, doc)
        return doc

    # -- the document --------------------------------------------------------------------------------
    def document(self) -> dict:
        st = self.st
        gw = st.gateway
        with gw._lock:       # the pump threads update the counters under the gateway's lock
            ports = []
            for p in st.ports:
                ports.append({"name": p.config.name, "url": p.config.url, "connected": p.pump.connected,
                              "receiving": self.receiving(p.config.name, bool(p.pump.connected)),
                              "port": dict(p.pump.counters), "link": dict(p.decoder.counters),
                              "streams": p.assembler.summary()})
            gateway = gw.stats()
        with self._lock:
            boards, channels = [], {}
            for (port, bid), b in sorted(self.boards.items()):
                pc = next((p.config for p in st.ports if p.config.name == port), None)
                codes = (pc.channels or {}) if pc is not None else {}
                boards.append({"port": port, **b.doc()})
                summ = next((p.assembler.summary()["channels"] for p in st.ports if p.config.name == port), {})
                for c, t in sorted(b.last_channel_sample.items()):
                    code = codes.get(c, f"{bid}/{c}")
                    s = summ.get(code, {})
                    channels[code] = {"port": port, "board_id": bid, "last_sample": t,
                                      "latency_s": b.latency.get(c), "gaps": s.get("gaps", 0),
                                      "gap_s": s.get("gap_us", 0) / 1e6,
                                      "clipping": code in b.clipping}
            states = {k: ("bad" if v else "ok") for k, v in sorted(self.watch.last.items())}
            alarms = list(self.watch.alarms)
        return {"schema": SCHEMA, "station": self.station_id, "time": self.clock.time(),
                "ports": ports, "boards": boards, "channels": channels, "gateway": gateway,
                "outbox": st.outbox.stats(), "uplink": st.uplink.stats() if st.uplink is not None else None,
                "keys": self._key_status(), "host": self.host(), "states": states, "alarms": alarms}
