"""Where the console's data comes from, and the rows it shows: no Textual here.

* :class:`StationSource` -- one running gateway through its status API
  (:class:`ims_station.statusapi.StatusClient`: ``/status``, ``/health``, ``/waveform``, and the
  actions on the Unix socket);
* :class:`RelaySource` -- the network as the centre sees it over MQTT: the retained
  ``{p}/+/soh`` and ``{p}/+/status`` of every station and the ``{p}/+/events`` envelopes
  (docs/topics.md), one read-only paho client;
* the row functions (``channel_rows``, ``link_rows``, ...) that turn those documents into table
  rows, pure and tested without a terminal.

Every document is untrusted (an MQTT message from anywhere on the broker, a status document of some
version): rows are built with ``.get`` and type checks, a message that is not a JSON object of
bounded size is counted and dropped, and the per-station table is bounded.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from typing import Any

from ims_station import topics

#: Longest MQTT message the console parses (a SOH is a few kB).
MAX_MESSAGE = 256 * 1024
#: Most stations the relay view keeps.
MAX_STATIONS = 2000
#: Recent events kept (relay view and station view).
MAX_EVENTS = 50
#: Unicode block characters of a sparkline, lowest to highest.
BLOCKS = "▁▂▃▄▅▆▇█"


def sparkline(samples: list[int] | None, width: int) -> str:
    """*samples* squeezed into *width* block characters (min..max of each bin, its max shown)."""
    if not samples or width <= 0:
        return ""
    n = len(samples)
    bins = [samples[i * n // width:max(i * n // width + 1, (i + 1) * n // width)] for i in range(min(width, n))]
    lo, hi = min(samples), max(samples)
    span = hi - lo or 1
    return "".join(BLOCKS[min(7, int((max(b) - lo) * 8 / span))] for b in bins)


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def fmt_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def fmt_time(t: float | None) -> str:
    if t is None:
        return "-"
    return time.strftime("%H:%M:%S", time.gmtime(t))


def channels(doc: dict) -> list[tuple[str, str, dict]]:
    """(port name, channel code, stream summary) for every channel of a status document."""
    out = []
    for p in doc.get("ports") or []:
        if not isinstance(p, dict):
            continue
        chans = (p.get("streams") or {}).get("channels") or {}
        for code, s in sorted(chans.items()):
            if isinstance(s, dict):
                out.append((str(p.get("name")), str(code), s))
    return out


def channel_rows(doc: dict, extra: dict | None, now: float) -> list[tuple[str, ...]]:
    """Channel, rate, latency (now - end of the last sample), last sample, clipping, time quality."""
    info = ((extra or {}).get("channels") or {})
    now = _num((extra or {}).get("time")) or now      # the station's clock when it says (a simulation's)
    rows = []
    for _port, code, s in channels(doc):
        rate = _num(s.get("rate_mhz"))
        nxt = _num(s.get("next_us"))
        i = info.get(code) if isinstance(info.get(code), dict) else {}
        lat = now - nxt / 1e6 if nxt is not None else None
        clip = "CLIP" if i.get("clipped") else (f"{i.get('clipped_chunks', 0)}x" if i.get("clipped_chunks") else "no")
        tq = str(i.get("time_quality", "-"))
        flags = i.get("flags") or []
        rows.append((code, f"{rate / 1000:g}" if rate is not None else "-", fmt_age(lat),
                     str(i.get("last_sample", "-")), clip, tq + ("" if not flags else " " + ",".join(map(str, flags)))))
    return rows


def link_rows(doc: dict) -> list[tuple[str, ...]]:
    rows = []
    for p in doc.get("ports") or []:
        if not isinstance(p, dict):
            continue
        c, pc = p.get("link") or {}, p.get("port") or {}
        rows.append((str(p.get("name")), "up" if p.get("connected") else "DOWN", str(c.get("packets_ok", 0)),
                     str(c.get("crc_errors", 0)), str(c.get("hmac_errors", 0)), str(c.get("packets_recovered", 0)),
                     str(c.get("packets_unrecoverable", 0)), str(pc.get("bytes_in", 0))))
    return rows


def outbox_uplink_rows(doc: dict) -> list[tuple[str, str]]:
    o = doc.get("outbox") or {}
    u = doc.get("uplink")
    rows = [("outbox depth", f"{o.get('frames', 0)} frames, {o.get('bytes', 0)} B"),
            ("outbox fill", f"{100 * (_num(o.get('fill')) or 0):.1f} %"),
            ("oldest unacked", fmt_age(_num(o.get("oldest_age_s")))),
            ("outbox alarms", str(o.get("alarms", 0)))]
    rows += soh_rows(doc)
    if not isinstance(u, dict):
        rows.append(("uplink", "none configured"))
    else:
        rows += [("broker", str(u.get("broker"))), ("connected", "yes" if u.get("connected") else "NO"),
                 ("published", str(u.get("published", 0))), ("frames acked", str(u.get("frames_acked", 0))),
                 ("acknacks", str(u.get("acknacks", 0))), ("last acknack", _acknack(u.get("last_acknack")))]
    return rows


def soh_rows(doc: dict) -> list[tuple[str, str]]:
    """The state of health (docs/soh.md): the states now bad and the last alarm, with its time."""
    states = doc.get("states")
    if not isinstance(states, dict):
        return []
    bad = sorted(str(k) for k, v in states.items() if v == "bad")
    rows = [("SOH bad", ", ".join(bad) if bad else "none")]
    alarms = [a for a in doc.get("alarms") or [] if isinstance(a, dict)]
    if alarms:
        a = alarms[-1]
        what = f"{fmt_time(_num(a.get('time')))} {a.get('alarm', '?')} {a.get('source', '')}"
        rows.append(("last alarm", what.strip()))
    return rows


def _acknack(a: Any) -> str:
    if not isinstance(a, dict):
        return "none yet"
    return f"{a.get('frame_set', '')} {a.get('lowest', '?')}..{a.get('highest', '?')} gaps {a.get('gaps', 0)}".strip()


def key_rows(doc: dict) -> list[tuple[str, str]]:
    k = ((doc.get("gateway") or {}).get("framer") or {}).get("keys")
    if not isinstance(k, dict):
        return [("keys", "no keystore (frames unsigned)")]
    days = _num(k.get("key_expires_in_days"))
    rows = [("key ids", ", ".join(map(str, k.get("key_ids") or [])) or "-"),
            ("expires in", "no end" if days is None else f"{days:.1f} days"),
            ("expires at", str(k.get("key_expires", "-")))]
    if k.get("error"):
        rows.append(("ERROR", str(k["error"])))
    return rows


def stage_rows(doc: dict) -> list[tuple[str, str]]:
    """Trigger statistics and the noble-gas cycle phase, when those stages are present."""
    stages = (doc.get("gateway") or {}).get("stages") or {}
    rows: list[tuple[str, str]] = []
    tr = stages.get("trigger")
    if isinstance(tr, dict):
        for k in ("channels", "events", "active", "suppressed", "errors"):
            if k in tr:
                rows.append((f"trigger {k}", str(tr[k])))
        for p in tr.get("problems") or []:
            rows.append(("trigger problem", str(p)))
    ng = stages.get("noble_gas")
    if isinstance(ng, dict):
        phase = next((ng[k] for k in ("phase", "PHASE", "state") if k in ng), "-")
        rows.append(("noble-gas phase", str(phase)))
        for k, v in sorted(ng.items()):
            if k not in ("phase", "PHASE", "state") and isinstance(v, (int, float, str)):
                rows.append((f"noble-gas {k}", str(v)))
    if not rows:
        rows.append(("stages", "no trigger or noble-gas stage"))
    return rows


def last_trigger(doc: dict) -> dict | None:
    """The trigger stage's last event (``{"time": ISO, "peak": x}``), if any."""
    tr = ((doc.get("gateway") or {}).get("stages") or {}).get("trigger")
    ev = tr.get("last_event") if isinstance(tr, dict) else None
    return ev if isinstance(ev, dict) else None


class StationSource:
    """One gateway's status API (``--socket`` or ``--url``)."""

    def __init__(self, *, socket_path: str | None = None, url: str | None = None, timeout: float = 3.0) -> None:
        from ims_station.statusapi import StatusClient

        self.client = StatusClient(socket_path=socket_path, url=url, timeout=timeout)
        self.where = f"unix:{socket_path}" if socket_path else str(url)

    def poll(self) -> dict:
        """``{"status", "health", "extra", "error"}``: what the station view shows now."""
        from ims_station.statusapi import StatusAPIError

        try:
            doc = self.client.status()
            health = self.client.health()
            extra = self.client.waveform()
            return {"status": doc, "health": health, "extra": extra, "error": None}
        except StatusAPIError as err:
            return {"status": {}, "health": {}, "extra": None, "error": str(err)}

    def waveform(self, channel: str) -> list[int]:
        from ims_station.statusapi import StatusAPIError

        try:
            doc = self.client.waveform(channel)
        except StatusAPIError:
            return []
        s = (doc or {}).get("samples")
        return [int(x) for x in s if isinstance(x, int)] if isinstance(s, list) else []

    def action(self, name: str, arg: dict) -> dict:
        from ims_station.statusapi import StatusAPIError

        try:
            return self.client.action(name, arg)
        except StatusAPIError as err:
            return {"ok": False, "message": str(err)}


class RelaySource:
    """The network view over MQTT: retained SOH and status of every station, and its events."""

    def __init__(self, broker: Any, *, prefix: str = "ims", client_id: str | None = None) -> None:
        """*broker*: an :class:`ims_station.broker.BrokerConfig` (TLS and credentials applied)."""
        self.broker, self.prefix = broker, prefix
        self.host, self.port = broker.host, broker.port
        self._lock = threading.Lock()
        self.stations: dict[str, dict] = {}
        self.events: deque = deque(maxlen=MAX_EVENTS)
        self.counters = {"messages": 0, "dropped": 0}
        self.connected = False
        self._client: Any = None
        self._client_id = client_id

    def start(self) -> None:
        import paho.mqtt.client as mqtt

        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                        client_id=self._client_id or f"ims-console-{id(self):x}-{int(time.time())}")
        self.broker.apply(c)
        c.on_connect = self._on_connect
        c.on_disconnect = lambda *a, **k: setattr(self, "connected", False)
        c.on_message = self._on_message
        c.connect_async(self.host, self.port, keepalive=30)
        c.loop_start()
        self._client = c

    def stop(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any = None) -> None:
        if getattr(reason, "is_failure", False):
            return
        self.connected = True
        for kind in ("soh", "status", "events"):
            client.subscribe(f"{self.prefix}/+/{kind}", qos=0)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        try:
            self.feed(msg.topic, msg.payload)
        except Exception:             # an untrusted message never ends the viewer's network thread
            self.counters["dropped"] += 1

    def feed(self, topic: str, payload: bytes, now: float | None = None) -> None:
        """One message (also called directly by tests)."""
        self.counters["messages"] += 1
        try:
            station, kind = topics.parse(self.prefix, topic)
        except Exception:
            self.counters["dropped"] += 1
            return
        if len(payload) > MAX_MESSAGE:
            self.counters["dropped"] += 1
            return
        try:
            doc = json.loads(payload) if payload else {}
        except ValueError:
            self.counters["dropped"] += 1
            return
        if not isinstance(doc, dict):
            self.counters["dropped"] += 1
            return
        now = time.time() if now is None else now
        with self._lock:
            st = self.stations.get(station)
            if st is None:
                if len(self.stations) >= MAX_STATIONS:
                    self.counters["dropped"] += 1
                    return
                st = self.stations[station] = {}
            if kind == "soh":
                st["soh"], st["soh_seen"] = doc, now
            elif kind == "status":
                st["status"] = doc
            elif kind == "events":
                body = doc.get("body") if isinstance(doc.get("body"), dict) else doc
                self.events.append({"station": station, "seen": now, "event": body})

    def snapshot(self) -> tuple[dict, list]:
        with self._lock:
            return {k: dict(v) for k, v in self.stations.items()}, list(self.events)


def relay_rows(stations: dict, now: float) -> list[tuple[str, ...]]:
    """Station, online, last SOH (age), outbox depth, oldest, uplink, alarms."""
    rows = []
    for sta, st in sorted(stations.items()):
        status = (st.get("status") or {}).get("status", "?")
        soh = st.get("soh") or {}
        t = _num(soh.get("time"))
        o = soh.get("outbox") if isinstance(soh.get("outbox"), dict) else {}
        u = soh.get("uplink") if isinstance(soh.get("uplink"), dict) else {}
        fr = ((soh.get("gateway") or {}).get("framer") or {}) if isinstance(soh.get("gateway"), dict) else {}
        alarms = int(_num(o.get("alarms")) or 0) + int(_num(fr.get("alarms")) or 0)
        rows.append((sta, str(status), fmt_age(now - t) if t is not None else "-",
                     str(o.get("frames", "-")), fmt_age(_num(o.get("oldest_age_s"))),
                     str(u.get("frames_acked", "-")), str(alarms)))
    return rows
