"""The gateway's operator actions and live waveform, served by its status API (docs/console.md).

Owns what ``ims-station console`` may ask of a running gateway beyond reading its status document:

* ``POST /actions/calibrate`` ``{"port": NAME?, "duration_s": 10, "period_ms": 1000, "channel_mask": M?}``
  -- the link protocol's ``START_CALIBRATION`` command (firmware/link.py ``CMD_START_CALIBRATION``;
  the board applies its calibration signal and flags the DATA packets ``calibration``); the mask
  defaults to the port's configured channels; the answer waits up to :data:`REPLY_WAIT_S` for the
  board's REPLY (accepted / refused and why).
* ``POST /actions/resend`` ``{"port": NAME?, "first": SEQ, "last": SEQ}`` -- a link ``RESEND`` of
  board sequence numbers (``LinkDecoder.request_resend``): at most ``link.MAX_RESEND`` packets.
* ``POST /actions/next_key`` ``{}`` -- re-reads the keystore directory so that a key installed
  since start-up takes over by the usual rule (of the keys valid now, the one that became valid
  last, docs/keys.md "Rotation"); refused when the station's keys are pinned
  (``station_key_id`` / a channel ``key_id``), or when no keystore is configured.
* ``GET /waveform?channel=NET.STA.LOC.CHA`` -- the last :data:`WAVEFORM_SAMPLES` samples of one
  channel (:class:`WaveformTap`, a stream stage with no ``stats``: nothing is added to the SOH).

Every action runs the decoder call on the port pump's own thread (``PortPump.call_soon``; the
decoder is not thread-safe) and answers a dict with ``ok`` and a one-line ``message`` the console
shows.  Arguments are untrusted (the socket's group may POST): each is type- and range-checked, and
anything wrong is ``{"ok": false, "message": ...}``, never an exception into the server.

Does not own the HTTP server (``ims_station/statusapi.py``), the link protocol (``firmware/link.py``,
``edge/ingest.py``) or key selection (``edge/framer.py``, ``ims_station/auth``).
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any, Callable

from ims_station.firmware import link

#: Samples kept per channel for the console's waveform (int32 each: 4 channels x 400 = a few kB).
WAVEFORM_SAMPLES = 400
#: Most channels a tap keeps (a bound on memory whatever the configuration says).
MAX_WAVEFORM_CHANNELS = 64
#: Seconds an action waits for the pump thread to run its decoder call.
ACTION_TIMEOUT_S = 5.0
#: Seconds ``calibrate`` waits for the board's REPLY before answering "sent, no reply yet".
REPLY_WAIT_S = 3.0
#: REPLY / COMMAND_TIMEOUT events remembered per port (by the command's link seq).
MAX_REPLIES = 32
_R_NAMES = {link.R_OK: "accepted", link.R_BAD_ARGS: "refused: bad arguments",
            link.R_UNSUPPORTED: "refused: not supported by this firmware", link.R_BUSY: "refused: busy"}


class ReplyWatch:
    """Remembers the last board replies of one port (wraps its pump's ``on_events``; the events
    go on to the gateway unchanged), so that an action can wait for the answer to its command."""

    def __init__(self, pump: Any) -> None:
        from ims_station.edge.ingest import CommandTimeout, Reply

        self._types = (Reply, CommandTimeout)
        self._cond = threading.Condition()
        self._seen: dict[int, Any] = {}
        inner = pump.on_events

        def on_events(events: list) -> None:
            got = [ev for ev in events if isinstance(ev, self._types)]
            if got:
                with self._cond:
                    for ev in got:
                        self._seen[ev.cmd_seq] = ev
                        while len(self._seen) > MAX_REPLIES:
                            self._seen.pop(next(iter(self._seen)))
                    self._cond.notify_all()
            if inner is not None:
                inner(events)
        pump.on_events = on_events

    def wait(self, cmd_seq: int, timeout: float) -> Any:
        with self._cond:
            self._cond.wait_for(lambda: cmd_seq in self._seen, timeout)
            return self._seen.get(cmd_seq)


class WaveformTap:
    """A stream stage that keeps the last *n* samples of each channel (bounded, O(chunk) per push)."""

    def __init__(self, n: int = WAVEFORM_SAMPLES, clock: Any = None) -> None:
        self.n = n
        self.clock = clock              # the station's: "time" of the summary (latency = time - end)
        self._lock = threading.Lock()
        self._rings: dict[str, deque] = {}
        self._rate: dict[str, int] = {}
        self._end: dict[str, int] = {}
        self._info: dict[str, dict] = {}     # per channel: time quality, status flags, clipping

    def push(self, chunk: Any) -> None:
        with self._lock:
            for i, code in enumerate(chunk.codes):
                ring = self._rings.get(code)
                if ring is None:
                    if len(self._rings) >= MAX_WAVEFORM_CHANNELS:
                        continue
                    ring = self._rings[code] = deque(maxlen=self.n)
                row = chunk.samples[i]
                ring.extend(row[-self.n:].tolist())
                self._rate[code] = int(chunk.rate_mhz)
                self._end[code] = int(chunk.t_first_us + len(row) * 1_000_000_000 // max(1, int(chunk.rate_mhz)))
                info = self._info.setdefault(code, {"clipped_chunks": 0})
                info["time_quality"] = link.TQ_NAMES[chunk.time_quality] if 0 <= chunk.time_quality < 3 \
                    else str(chunk.time_quality)
                info["flags"] = [name for bit, name in link.STATUS_NAMES if chunk.status & bit]
                clipped = bool(chunk.clip_mask >> i & 1)
                info["clipped"] = clipped
                info["clipped_chunks"] += clipped
                info["last_sample"] = int(row[-1]) if len(row) else None
                info["t_end_us"] = self._end[code]

    def channels(self) -> list[str]:
        with self._lock:
            return sorted(self._rings)

    def summary(self) -> dict:
        """Per channel what the status document does not carry: time quality, flags, clipping,
        the last sample and its end time (``GET /waveform`` without a channel)."""
        with self._lock:
            doc: dict = {"channels": {c: dict(i) for c, i in sorted(self._info.items())}}
        if self.clock is not None:
            doc["time"] = self.clock.time()
        return doc

    def waveform(self, channel: str) -> dict | None:
        with self._lock:
            ring = self._rings.get(channel)
            if ring is None:
                return None
            return {"channel": channel, "rate_mhz": self._rate[channel], "t_end_us": self._end[channel],
                    "samples": list(ring)}


def _port(st: Any, arg: dict) -> Any:
    name = arg.get("port")
    if name is None:
        if len(st.ports) != 1:
            raise ValueError(f"give the port: one of {[p.config.name for p in st.ports]}")
        return st.ports[0]
    for p in st.ports:
        if p.config.name == name:
            return p
    raise ValueError(f"no port {name!r} (ports: {[p.config.name for p in st.ports]})")


def _int(arg: dict, key: str, default: int | None, lo: int, hi: int) -> int:
    v = arg.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ValueError(f"{key} must be an integer {lo}..{hi}")
    return v


def _on_pump(p: Any, fn: Callable[[], Any]) -> Any:
    return p.pump.call_soon(fn).result(timeout=ACTION_TIMEOUT_S)


def _guarded(fn: Callable[[Any, dict], dict]) -> Callable[[Any, dict], dict]:
    def wrapper(st: Any, arg: Any) -> dict:
        if not isinstance(arg, dict):
            return {"ok": False, "message": "the body must be a JSON object"}
        try:
            return fn(st, arg)
        except (ValueError, LookupError) as err:
            return {"ok": False, "message": str(err)}
        except TimeoutError:
            return {"ok": False, "message": f"the port's thread did not answer within {ACTION_TIMEOUT_S:g} s"}
        except Exception as err:          # e.g. LocalProtocolError from the decoder
            return {"ok": False, "message": f"{type(err).__name__}: {err}"}
    wrapper.__name__ = fn.__name__
    return wrapper


@_guarded
def calibrate(st: Any, arg: dict) -> dict:
    p = _port(st, arg)
    duration = _int(arg, "duration_s", 10, 1, 3600)
    period = _int(arg, "period_ms", 1000, 1, 60000)
    configured = [c for c in (getattr(p.config, "channels", None) or {}) if isinstance(c, int) and 0 <= c < 8]
    mask = _int(arg, "channel_mask", sum(1 << c for c in configured) or 1, 1, 0xFF)   # default: the port's channels
    seq = _on_pump(p, lambda: p.decoder.start_calibration(duration, period, mask))
    what = f"START_CALIBRATION ({duration} s, period {period} ms, channels 0x{mask:02x}) on port {p.config.name}"
    watch = getattr(p.pump, "reply_watch", None)
    reply = watch.wait(seq, REPLY_WAIT_S) if watch is not None else None
    if reply is None:
        return {"ok": True, "port": p.config.name, "command_seq": seq, "reply": None,
                "message": f"{what}: sent, no reply yet (the board's answer is counted in the link counters)"}
    status = getattr(reply, "status", None)
    if status is None:             # CommandTimeout
        return {"ok": False, "port": p.config.name, "command_seq": seq, "reply": "timeout",
                "message": f"{what}: the board did not answer (command timed out)"}
    return {"ok": status == link.R_OK, "port": p.config.name, "command_seq": seq, "reply": status,
            "message": f"{what}: board {reply.board_id} {_R_NAMES.get(status, f'answered status {status}')}"
                       + (f" ({bytes(reply.result[:120]).decode('ascii', 'replace')})" if status != link.R_OK
                          and reply.result else "")}


@_guarded
def resend(st: Any, arg: dict) -> dict:
    p = _port(st, arg)
    first = _int(arg, "first", None, 0, 0xFFFFFFFF)
    last = _int(arg, "last", first, 0, 0xFFFFFFFF)
    board, epoch, seq = _on_pump(p, lambda: p.decoder.request_resend(first, last))
    return {"ok": True, "port": p.config.name, "board": board, "epoch": epoch, "first": first, "last": last,
            "message": f"RESEND {first}..{last} sent to board {board} (epoch {epoch}) on port {p.config.name}: "
                       "copies it still holds come back; ones already received count as duplicates"}


@_guarded
def next_key(st: Any, arg: dict) -> dict:
    fr = st.framer
    if getattr(fr, "_keystore", None) is None:
        return {"ok": False, "message": "no keystore configured: frames are not signed with rotating keys"}
    pins = fr.pinned_keys()
    if pins:
        return {"ok": False, "message": f"keys are pinned ({', '.join(map(str, pins))}: station_key_id / "
                                         "channel key_id): rotate by changing the station file and restarting"}
    from ims_station.auth import Keystore

    old = fr._keystore
    new = Keystore.load(old.directory)
    with st.gateway._lock:            # the framer signs under the gateway's lock
        before = (fr.key_status() or {}).get("key_ids")
        fr.replace_keystore(new)      # a keystore that cannot sign now is refused, the old one kept
        after = (fr.key_status() or {}).get("key_ids")
    added = sorted(set(new.key_ids()) - set(old.key_ids()))
    if after == before:
        return {"ok": True, "key_ids": after,
                "message": f"keystore re-read ({len(added)} new key(s)); no other key is valid now: still signing "
                           f"with {after}"}
    return {"ok": True, "key_ids": after, "message": f"switched from key(s) {before} to {after}"}


def station_actions(st: Any) -> dict[str, Callable[[dict], dict]]:
    """The POST actions of an assembled :class:`~ims_station.edge.station.Station`."""
    attach_reply_watches(st)
    return {"calibrate": lambda a: calibrate(st, a), "resend": lambda a: resend(st, a),
            "next_key": lambda a: next_key(st, a)}


def attach_reply_watches(st: Any) -> None:
    """A :class:`ReplyWatch` on every port's pump (``pump.reply_watch``), once."""
    for p in st.ports:
        if getattr(p.pump, "reply_watch", None) is None:
            p.pump.reply_watch = ReplyWatch(p.pump)


def attach_waveform_tap(st: Any) -> WaveformTap:
    """Add a :class:`WaveformTap` to the station's stream stages (after the others; it has no
    ``stats``, so the SOH and ``/status`` do not change)."""
    tap = WaveformTap(clock=getattr(st, "clock", None))
    gw = st.gateway
    with gw._lock:
        gw.stages.append(tap)
        gw.stage_names.append("waveform")
    return tap
