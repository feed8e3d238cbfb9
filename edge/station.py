"""The gateway process: serial ports -> LinkDecoder -> StreamAssembler -> Framer -> Outbox -> Uplink.

Owns the wiring -- :func:`assemble`, the one place the station is put together from its station
file, used by ``edge run`` (:func:`run`), ``ims-station demo`` and the fault tests' harness, which
inject a clock, a ``sim://`` port and observing hooks but never rebuild the chain; the stream
stages after the framer (:data:`STAGES`) are plugged in there -- and one rule: **the board is
acknowledged only for samples that are committed**.
Each DataBlock's (board, epoch, link seq, end time) is remembered; after the framer commits, every
block that ends at or before :attr:`Framer.committed_until_us` is covered by frames on disk (or was
late for a committed window), and the highest such seq is the board's ACK point: written to the
outbox (``Outbox.set_ack_point``), then passed to ``LinkDecoder.acknowledge``.  A restarted process
hands the persisted points to its decoders (:meth:`Gateway.resume`), which ask the board's ring for
everything after them (docs/uplink.md, "ACK point and restart").  A block straddling an uncommitted
window stays unacknowledged, so after a crash it is asked for again and the framer takes the
uncommitted part (the committed part is counted late and dropped).

Clock disagreement (:meth:`Framer.judge_time` is the rule): a block whose board time is more than
``max_clock_offset_s`` from the gateway's clock is framed by board time when the board is
GNSS/PPS-locked (the framer alarms the gateway's clock).  When it is not locked, neither clock can
be trusted: the block and everything after it are *held* -- :meth:`LinkDecoder.hold` forgets their
delivery, nothing from them on is acknowledged, so the board's ring keeps them -- with a
``clock_hold`` alarm (SOH, ``stats()["clock_hold"]``) and a WARNING.  Once the board's time
(the held block's, run on by the monotonic clock) is within half ``max_clock_offset_s`` of the
gateway's clock, the hold is released and the decoder asks the board for everything held
(RESEND; what left the ring meanwhile is reported exactly as a link gap).  Only samples no clock
can place (before 2000-01-01) are acknowledged without being framed.

Usable in-process (:func:`assemble` -> :class:`Station`, with an injected clock, for the demo and
tests) and as a process, :func:`run`: ``ims-station edge run --config station.toml`` or, the same
code, ``python -m ims_station.edge.station --config station.toml`` (which the gateway-kill test
SIGKILLs).  Does not own the serial I/O (``serialport.PortPump``), the link protocol (``ingest``),
framing (``framer``), storage (``outbox``) or MQTT (``uplink``).
"""

from __future__ import annotations

import logging
import sys
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from ims_station.edge.framer import Framer
from ims_station.edge.ingest import BoardRestarted, DataBlock, GapReport, Soh
from ims_station.edge.logutil import RateLimitedLog
from ims_station.edge.noblegas import NobleGasStage
from ims_station.edge.trigger_stage import TriggerStage
from ims_station.firmware import link

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _ClockHold:
    board_id: int
    epoch: int
    seq: int                 # the first seq held back
    t_first_us: int          # its board time span
    t_end_us: int
    seen: float              # clock.monotonic() when it was held
    offset_s: float          # board time minus the gateway's clock then


class Gateway:
    """Feeds decoder events through assembler and framer, and acknowledges the boards.

    The ACK point of each board (its epoch and the highest link seq whose samples are all in
    committed frames) is written to the outbox (:meth:`Outbox.set_ack_point`) right after the
    frames' commit and *before* the board hears of it; :meth:`resume` hands the persisted points to
    a new process's decoders, which then ask the board's ring for everything after them.
    """

    def __init__(self, station_id: str, framer: Framer, *, uplink: Any = None, outbox: Any = None,
                 stages: Iterable[Any] = (), stage_names: Iterable[str] | None = None) -> None:
        self.station_id = station_id       # "NET.STA": the key of board SOH for the channel status
        self.framer = framer
        self.stages = list(stages)         # stream stages after the framer (STAGES, assemble())
        self.stage_names = list(stage_names) if stage_names is not None else [
            type(st).__name__ for st in self.stages]
        self.uplink = uplink
        self.outbox = outbox if outbox is not None else getattr(framer, "outbox", None)
        self._lock = threading.Lock()       # one call at a time: several port threads feed us
        # (id(decoder), board) -> (seq, ack_after_us, epoch, t_end_us, boot), in link order
        self._pending: dict[tuple[int, int], deque] = {}
        self._decoders: dict[int, Any] = {}
        self._holds: dict[tuple[int, int], _ClockHold] = {}
        self._log = RateLimitedLog(log, framer.clock, rate=1 / 60, burst=1)
        self.counters = dict(blocks=0, acks=0, ack_point_errors=0, resumed=0, clock_holds=0, clock_releases=0,
                             board_restarts=0, stage_errors=0)

    def resume(self, decoder: Any, board_id: int | None = None) -> int:
        """Give *decoder* the persisted ACK point of *board_id* (of every board with one if None:
        a port whose board id is learnt from its first packet).  Returns how many were given."""
        if self.outbox is None or not hasattr(self.outbox, "ack_points"):
            return 0
        n = 0
        boots = self.outbox.ack_point_boots() if hasattr(self.outbox, "ack_point_boots") else {}
        for bid, (epoch, seq, t_end_us) in self.outbox.ack_points().items():
            if board_id is None or bid == board_id:
                decoder.resume(bid, epoch, seq, t_end_us, boots.get(bid, 0))
                n += 1
        self.counters["resumed"] += n
        return n

    def on_events(self, decoder: Any, assembler: Any, events: Iterable[Any]) -> list[int]:
        """Process one batch of a port's events; return the frame seqs committed."""
        committed: list[int] = []
        with self._lock:
            self._release_holds()
            for ev in events:
                if isinstance(ev, BoardRestarted):
                    # The decoder gave the held packets up with the old epoch's ring (GapReport).
                    self._holds.pop((id(decoder), ev.board_id), None)
                    self._board_restarted(ev)
                elif self._held_back(decoder, ev):
                    continue
                if isinstance(ev, DataBlock):
                    self.counters["blocks"] += 1
                    key = (id(decoder), ev.board_id)
                    self._decoders[id(decoder)] = decoder
                    verdict = self.framer.judge_time(ev.t_first_us, ev.t_end_us, ev.time_quality)
                    if verdict == "hold" and self._hold(decoder, ev):
                        continue
                    # A block no clock can place (before 2000) is never framed: nothing to wait
                    # for, it is acknowledged with the blocks around it (else it would hold every
                    # later ACK back).  Nor does it reach the streams, whose continuity a bogus time
                    # would break.
                    ok = verdict in ("ok", "board")
                    self._pending.setdefault(key, deque()).append(
                        (ev.seq, ev.t_end_us if ok else -(1 << 62), ev.epoch, ev.t_end_us, ev.boot))
                    if not ok:
                        self.framer.refuse_implausible(ev.t_first_us, ev.samples.size,
                                                       [f"{ev.board_id}/{c}" for c in ev.channel_ids])
                        continue
                elif isinstance(ev, Soh):
                    self.framer.add_soh(self.station_id, ev.last_sync_us, ev.clock_diff_us)
                for chunk in assembler.push(ev):
                    committed += self.framer.add_chunk(chunk)
                    self._to_stages("push", chunk)
            committed += self.framer.poll()
            self._to_stages("poll")
            self._acknowledge()
        if committed and self.uplink is not None:
            self.uplink.notify()
        return committed

    def poll(self) -> list[int]:
        """Commit timed-out windows and end clock holds whose clocks agree now (call periodically
        when no data arrives)."""
        with self._lock:
            self._release_holds()
            done = self.framer.poll()
            self._to_stages("poll")
            self._acknowledge()
        if done and self.uplink is not None:
            self.uplink.notify()
        return done

    def _to_stages(self, method: str, *args: Any) -> None:
        """Hand a chunk (``push``) or a timer turn (``poll``) to each stream stage, in order.  A
        stage failing is counted and logged and does not stop the framing or the ACKs (the
        framer has taken each chunk before any stage sees it)."""
        for stage in self.stages:
            fn = getattr(stage, method, None)
            if fn is None:
                continue
            try:
                fn(*args)
            except Exception as err:
                self.counters["stage_errors"] += 1
                self._log(f"stage-{type(stage).__name__}", logging.ERROR,
                          "gateway %s: stage %s failed in %s: %s: %s", self.station_id, type(stage).__name__,
                          method, type(err).__name__, err)

    def _board_restarted(self, ev: BoardRestarted) -> None:
        """A new run of a board (the decoder logged the WARNING): alarm in the SOH.  A new run that
        a newer epoch does not explain (``new_run``: a replaced board, a wiped epoch file) is
        alarmed as ``board_replaced``: someone should know the hardware changed."""
        self.counters["board_restarts"] += 1
        self.framer.alarm({"alarm": "board_replaced" if ev.reason == "new_run" else "board_restarted",
                           "station": self.station_id, "board": ev.board_id, "old_epoch": ev.old_epoch,
                           "new_epoch": ev.new_epoch, "old_boot": ev.old_boot, "new_boot": ev.new_boot,
                           "time": self.framer.clock.time()})

    # -- clock holds ---------------------------------------------------------------------------
    def _held_back(self, decoder: Any, ev: Any) -> bool:
        """Is *ev* after the held seq of a board on hold (the decoder delivers it again later)?"""
        bid = getattr(ev, "board_id", None)
        h = self._holds.get((id(decoder), bid)) if bid is not None else None
        if h is None or getattr(ev, "epoch", None) != h.epoch:
            return False
        seq = ev.first_seq if isinstance(ev, GapReport) else getattr(ev, "seq", None)
        return seq is not None and seq >= h.seq

    def _hold(self, decoder: Any, ev: DataBlock) -> bool:
        """Neither clock can be trusted (the board is not GNSS-locked and disagrees with the
        gateway): keep the block and what follows unacknowledged in the board's ring."""
        if not decoder.hold(ev.seq, ev.board_id, ev.epoch, ev.t_first_us):
            return False
        self._decoders[id(decoder)] = decoder
        now = self.framer.clock.monotonic()
        offset = ev.t_first_us / 1e6 - self.framer.clock.time()
        self._holds[(id(decoder), ev.board_id)] = _ClockHold(ev.board_id, ev.epoch, ev.seq, ev.t_first_us,
                                                             ev.t_end_us, now, offset)
        self.counters["clock_holds"] += 1
        self.framer.alarm({"alarm": "clock_hold", "station": self.station_id, "board": ev.board_id,
                           "epoch": ev.epoch, "seq": ev.seq, "sample_time": ev.t_first_us / 1e6,
                           "gateway_time": self.framer.clock.time(), "offset_s": offset,
                           "time_quality": link.TQ_NAMES[ev.time_quality],
                           "max_clock_offset_s": self.framer.max_clock_offset_s})
        self._log("hold", logging.WARNING, "gateway %s: board %d (time %s) is %.0f s from the gateway's "
                  "clock: samples from seq %d held unacknowledged in the board's ring until the clocks agree",
                  self.station_id, ev.board_id, link.TQ_NAMES[ev.time_quality], offset, ev.seq)
        return True

    def _release_holds(self) -> None:
        if not self._holds:
            return
        now = self.framer.clock.monotonic()
        limit = self.framer.max_clock_offset_s
        for key, h in list(self._holds.items()):
            # The board's clock runs on meanwhile: where it is now, from the held block's time.
            # Released within half the limit, so that a block right at it is not held again at once.
            dt = int((now - h.seen) * 1e6)
            if limit is not None and not self.framer.clock_offset_ok(h.t_first_us + dt, h.t_end_us + dt,
                                                                     limit_s=limit / 2):
                continue
            del self._holds[key]
            self.counters["clock_releases"] += 1
            log.warning("gateway %s: board %d and the gateway's clock agree again: asking the board for "
                        "the held packets from seq %d", self.station_id, h.board_id, h.seq)
            # (Only recorded: the decoder belongs to its port's thread and acts at its next read.)
            self._decoders[key[0]].release(h.board_id)

    def _acknowledge(self) -> None:
        until = self.framer.committed_until_us
        if until is None:
            return
        for (dec_id, board), q in self._pending.items():
            n = 0
            while n < len(q) and q[n][1] <= until:
                n += 1
            if not n:
                continue
            seq, _, epoch, t_end_us, boot = q[n - 1]
            if self.outbox is not None and hasattr(self.outbox, "set_ack_point"):
                try:
                    self.outbox.set_ack_point(board, epoch, seq, t_end_us, boot)
                except Exception as err:   # full disk, I/O error: do not ACK; retried at the next commit
                    self.counters["ack_point_errors"] += 1
                    log.error("gateway %s: cannot persist the ACK point of board %d (seq %d): %s",
                              self.station_id, board, seq, err)
                    continue
            for _ in range(n):
                q.popleft()
            self._decoders[dec_id].acknowledge(seq, board, epoch=epoch)
            self.counters["acks"] += 1

    def stats(self) -> dict:
        stages = {name: st.stats() for name, st in zip(self.stage_names, self.stages) if hasattr(st, "stats")}
        return {**self.counters, "framer": self.framer.stats(), "stages": stages,
                "unacknowledged_blocks": sum(len(q) for q in self._pending.values()),
                "clock_hold": [{"board": h.board_id, "epoch": h.epoch, "seq": h.seq, "offset_s": h.offset_s}
                               for h in self._holds.values()]}


# -- the one assembly ------------------------------------------------------------------------------

@dataclass
class StageContext:
    """What a stream stage may use of the assembled station (handed to its factory).

    *emit_event*: a station message (a trigger event, JSON-able dict) made durable in the outbox
    (kind ``events``, its own frame set ``STA:events``) in a signed envelope and sent on the
    station's ``events`` topic like any data (:func:`event_emitter`); returns the event's sequence
    number.  *emit_message*: the same durable, signed path for other station messages,
    ``emit_message(outbox_kind, body)`` -- ``"ims20"``: an IMS 2.0 message's text, sent on the
    ``ims20`` topic in frame set ``STA:ims20`` (:func:`message_emitter`); returns its sequence
    number.  *alarm*: a framer-style alarm (publishes the SOH at once)."""

    station_cfg: Any
    clock: Any
    outbox: Any
    framer: Any
    alarm: Callable[[dict], None]
    emit_event: Callable[[dict], int]
    emit_message: Callable[[str, bytes], int] | None = None


# Stream stages after the framer, in order: (station-file table, factory(ctx: StageContext) -> stage).
# A stage is built when the station file has its table, and gets every chunk the framer gets
# (``stage.push(chunk)``, after the framer) and every :meth:`Gateway.poll` (``stage.poll()``);
# ``stage.stats()`` (if any) appears in the SOH under ``gateway.stages.<table>``.
# The trigger stage and the noble-gas driver are registered here, once, and so run the
# same in ``edge run``, the demo and the fault tests.
STAGES: list[tuple[str, Callable[[StageContext], Any]]] = [
    ("trigger", TriggerStage),          # local triggering, docs/trigger.md "The station stage"
    ("noble_gas", NobleGasStage),       # the noble-gas system's driver, docs/noblegas.md "The driver"
]


def stages_from_config(ctx: StageContext) -> list[tuple[str, Any]]:
    """(table, stage) for each stream stage the station file configures, in :data:`STAGES` order."""
    raw = getattr(ctx.station_cfg, "raw", None) or {}
    return [(table, factory(ctx)) for table, factory in STAGES if table in raw]


def message_emitter(station: str, outbox_kind: str, outbox: Any, clock: Any, notify: Callable[[], None],
                    signer: Callable[[Any], Any] | None = None) -> Callable[[bytes | Callable[[int], bytes]], int]:
    """The station's durable path for enveloped messages of *outbox_kind* (``topics.MESSAGE_KINDS``:
    trigger events, IMS 2.0 messages): each body becomes a signed envelope
    (``ims_station.envelope``, sender the station, time the clock's now, the next sequence number
    of frame set ``STA:<kind>`` in its header, signed by ``signer(now)`` -- the framer's
    :meth:`~Framer.station_signer` -- or unsigned when it gives None) that is committed to the
    outbox before the uplink hears of it.  The uplink publishes it on its kind's topic and the
    relay's acknack of the frame set deletes it (docs/topics.md, docs/relay.md).  The argument is
    the body, or a function of the sequence number giving it (a body that names its own seq)."""
    import datetime as dt

    from ims_station import envelope, topics

    env_kind = topics.MESSAGE_KINDS[outbox_kind][0]
    frame_set = topics.message_frame_set(station, outbox_kind)
    lock = threading.Lock()

    def emit(body: bytes | Callable[[int], bytes]) -> int:
        with lock:
            hi = outbox.highest_committed(frame_set)
            seq = 0 if hi is None else hi + 1
            now = clock.time()
            time_us = int(round(now * 1e6))
            key = None
            if signer is not None:
                key = signer(dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(microseconds=time_us))
            data = body(seq) if callable(body) else body
            wire = envelope.pack(env_kind, station, data, time_us=time_us, signer=key, seq=seq)
            outbox.put(outbox_kind, frame_set, seq, now, wire)
        notify()
        return seq

    return emit


def event_emitter(station: str, outbox: Any, clock: Any, notify: Callable[[], None],
                  signer: Callable[[Any], Any] | None = None) -> Callable[[dict], int]:
    """Trigger events on :func:`message_emitter`: the JSON document gains ``station`` and ``seq``
    (the envelope's sequence number in ``STA:events``), compact with sorted keys."""
    import json

    emit_body = message_emitter(station, "events", outbox, clock, notify, signer)

    def emit(doc: dict) -> int:
        return emit_body(lambda seq: json.dumps({**doc, "station": station, "seq": seq}, sort_keys=True,
                                                separators=(",", ":")).encode())

    return emit


def _observed(emit: Callable[[dict], int], on_event: Callable[[dict, int], None]) -> Callable[[dict], int]:
    """*emit* followed by the observer *on_event* (document, seq): after the commit, never instead."""

    def observed(doc: dict) -> int:
        seq = emit(doc)
        on_event(doc, seq)
        return seq

    return observed


@dataclass
class StationPort:
    """One serial port of the station: its config, link decoder, stream assembler and pump."""

    config: Any
    decoder: Any
    assembler: Any
    pump: Any


@dataclass
class Station:
    """A station gateway as :func:`assemble` wires it: outbox -> framer (and stages) -> gateway ->
    uplink, with one :class:`StationPort` per serial port.  Who runs it decides the threads:
    :func:`run` one pump thread per port; the demo and the fault tests :meth:`step` it on a
    simulation's clock."""

    config: Any
    settings: Any
    clock: Any
    outbox: Any
    framer: Framer
    uplink: Any
    gateway: Gateway
    ports: list[StationPort]
    stages: list[Any]
    emit_event: Callable[[dict], int] | None = None    # the stages' event path (StageContext.emit_event)
    auxiliary: Any = None                              # edge/auxiliary.AuxiliaryStation in auxiliary mode
    soh: Any = None                                    # edge/soh.SohModel: the status document and its watch

    def open_ports(self) -> None:
        """Open every port now: one held by another process stops us here with its PID
        (``serialport.open_port``), rather than two gateways splitting a board's bytes."""
        for p in self.ports:
            p.pump.open_now()

    def step(self) -> None:
        """One turn of every port (read, decode, write) and of the gateway's timeouts: for a
        caller that drives the station itself on an injected clock (demo, fault tests)."""
        for p in self.ports:
            p.pump.step()
        self.gateway.poll()
        if self.soh is not None:
            self.soh.poll()

    def close(self) -> None:
        """Ports, uplink (``offline`` on a clean stop) and outbox; each attempted."""
        try:
            for p in self.ports:
                p.pump.close()
            for st in self.stages:
                if hasattr(st, "close"):
                    st.close()
            if self.uplink is not None:
                self.uplink.stop()
        finally:
            self.outbox.close()

    def status(self) -> dict:
        """The state of health (``edge/soh.py``, schema ``ims-station/soh/1``, docs/soh.md): the
        same document the uplink publishes as the retained SOH."""
        if self.soh is not None:
            return self.soh.document()
        return status(self.config, self.gateway, [(p.config, p.pump, p.assembler) for p in self.ports],
                      self.outbox, self.uplink)


def assemble(station_cfg: Any, settings: Any = None, *, clock: Any,
             on_commit: Callable[[int, bytes], None] | None = None,
             on_alarm: Callable[[dict], None] | None = None,
             on_events: Callable[[StationPort, list], None] | None = None,
             on_event: Callable[[dict, int], None] | None = None,
             uplink_options: dict | None = None, pump_options: dict | None = None) -> Station:
    """The station gateway from a StationConfig: outbox, framer, stream stages, uplink, gateway and
    the ports (decoder, assembler, pump; not opened).  The one place this chain is wired: ``edge
    run`` (:func:`run`), ``ims-station demo`` and the fault tests' harness all call it.

    *settings*: the gateway tables (default: the station file's own, ``station_cfg.settings``).
    Without brokers (no ``[uplink]`` table) there is no uplink: frames stay in the outbox.
    What an in-process caller injects, beside the *clock* (the simulation's, for the demo):
    hooks that observe and never replace a production action -- *on_commit* (seq, frame bytes)
    after each outbox commit, *on_alarm* for every framer and outbox alarm (after the SOH is
    requested), *on_events* (port, events) before the gateway takes a port's events, *on_event* (document,
    seq) after a stage's event document was committed to the outbox -- and
    keyword arguments for timings the station file does not set: *uplink_options* (``Uplink``:
    e.g. ``backoff_base_s``, ``connect_timeout_s``) and *pump_options* (``PortPump``:
    ``backoff_initial``, ``backoff_max``).  The board transport is the port's URL (``sim://``
    for a HIL board, a device for a real one).  An auxiliary station (``[station] mode``) gets an
    outbox that holds its data frames and, at the event emitter, the release of each event's data
    and the handler of the relay's window requests (``edge/auxiliary.py``, ``edge/commands.py``).
    """
    from ims_station.edge.outbox import Outbox

    if settings is None:
        settings = station_cfg.settings
    ob = settings.outbox
    path = ob.get("path") or str(station_cfg.data_dir / "outbox.sqlite")
    uplink_box: list[Any] = []
    soh_box: list[Any] = []

    def alarm(a: dict) -> None:
        # Every alarm publishes the SOH at once (the gateway's statistics say what happened) and
        # is kept with its time in the SOH's recent alarms.
        if soh_box:
            soh_box[0].alarm(a)
        if uplink_box:
            uplink_box[0].request_soh()
        if on_alarm is not None:
            on_alarm(a)

    outbox = Outbox(path, max_bytes=settings.get("outbox", "max_bytes"),
                    max_age_s=float(settings.get("outbox", "max_age_days")) * 86400, clock=clock,
                    synchronous=settings.get("outbox", "synchronous"),
                    min_free_bytes=settings.get("outbox", "min_free_bytes"), on_alarm=alarm,
                    # Auxiliary mode: data frames stay held in the outbox until released (edge/auxiliary.py).
                    hold_kinds=("cd11",) if getattr(station_cfg, "auxiliary", False) else (),
                    hold_span_s=float(settings.get("framer", "frame_seconds")))
    try:
        st = _assemble_rest(station_cfg, settings, outbox, uplink_box, clock, alarm, on_commit, on_events,
                            uplink_options or {}, pump_options or {}, soh_box, on_event)
    except BaseException:
        outbox.close()      # and its lock: a caller may try again in this process
        raise
    from ims_station.edge.soh import SohModel

    st.soh = SohModel(st, clock=clock, disk_path=Path(path).parent,
                      on_change=lambda a: uplink_box[0].request_soh() if uplink_box else None)
    soh_box.append(st.soh)
    return st


def build(station_cfg: Any, settings: Any = None, *, clock: Any) -> tuple[Gateway, Any, Any]:
    """(gateway, outbox, uplink) of :func:`assemble` (the ports are built, not opened)."""
    st = assemble(station_cfg, settings, clock=clock)
    return st.gateway, st.outbox, st.uplink


def channel_specs(board: str | dict, codes: dict[int, str],
                  key_id: Callable[[str], int | None] = lambda code: None) -> list[Any]:
    """The framer's :class:`ChannelSpec` for each board channel id -> SEED code in *codes*: the
    subframe signing key (*key_id*) and, from the board definition's channel, the sensor type,
    ``calib`` and ``calper`` that every CD-1.1 channel subframe carries (docs/boards.md).  The one
    place this is derived (the gateway process and the demo both call it)."""
    from ims_station import boards
    from ims_station.cd11.data import (SENSOR_HYDROACOUSTIC, SENSOR_INFRASONIC, SENSOR_SEISMIC,
                                       SENSOR_WEATHER)
    from ims_station.edge.framer import ChannelSpec

    sensor_types = {"seismic": SENSOR_SEISMIC, "hydroacoustic": SENSOR_HYDROACOUSTIC,
                    "infrasonic": SENSOR_INFRASONIC, "weather": SENSOR_WEATHER}
    chans = (boards.load_board(board) if isinstance(board, str) else board)["channels"]
    # edge/config.py has checked that the board has every channel id of the station file.
    return [ChannelSpec(code, key_id(code), sensor_type=sensor_types[chans[ch]["sensor"]],
                        calib=float(chans[ch]["calib"]), calper=float(chans[ch]["calper"]))
            for ch, code in codes.items()]


def _assemble_rest(station_cfg: Any, settings: Any, outbox: Any, uplink_box: list, clock: Any,
                   alarm: Callable[[dict], None], on_commit: Any, on_events: Any, uplink_options: dict,
                   pump_options: dict, soh_box: list, on_event: Any = None) -> Station:
    from ims_station.edge.ingest import LinkDecoder
    from ims_station.edge.serialport import PortPump
    from ims_station.edge.streams import StreamAssembler
    from ims_station.edge.uplink import Uplink
    from ims_station.edge.uplink_config import acknack_options

    keys = settings.keys
    keystore = None
    if keys.get("keystore"):
        from ims_station.auth import Keystore

        keystore = Keystore.load(keys["keystore"])
    chan_keys = keys.get("channel_key_ids", {})

    def key_id(code: str) -> int | None:
        net, sta, loc, cha = code.split(".")
        return chan_keys.get(f"{loc}.{cha}", chan_keys.get(cha))

    specs = []
    for port in station_cfg.ports:
        specs += channel_specs(port.board, port.channels, key_id)
    fr = lambda key: settings.get("framer", key)  # noqa: E731
    framer = Framer(station_cfg.code, outbox, clock=clock, channels=specs, keystore=keystore,
                    station_key_id=keys.get("station_key_id"), frame_seconds=fr("frame_seconds"),
                    max_wait_s=fr("max_wait_s"), clock_diff_limit_us=fr("clock_diff_limit_us"),
                    max_clock_offset_s=fr("max_clock_offset_s"), max_board_ahead_s=fr("max_board_ahead_s"),
                    on_commit=on_commit, on_alarm=alarm)
    uplink = None
    gw_ref: list[Gateway] = []
    aux_ref: list[Any] = []
    aux_soh = lambda: {"auxiliary": aux_ref[0].stats()} if aux_ref else {}  # noqa: E731
    if settings.brokers:
        up = lambda key: settings.get("uplink", key)  # noqa: E731
        uplink = Uplink(station_cfg.code, settings.brokers, outbox, clock=clock, prefix=up("prefix"),
                        protocol=up("protocol"), inflight=up("inflight"), max_unacked=up("max_unacked"),
                        live_window_s=up("live_window_s"), ack_timeout_s=up("ack_timeout_s"),
                        acknack_stall_s=up("acknack_stall_s"), acknack_qos=up("acknack_qos"),
                        soh_interval_s=up("soh_interval_s"),
                        soh_provider=lambda: _soh_document(soh_box, gw_ref) | aux_soh(),
                        **acknack_options(settings), **uplink_options)
        uplink_box.append(uplink)
    emit = event_emitter(station_cfg.code, outbox, clock, uplink.notify if uplink is not None else (lambda: None),
                         signer=framer.station_signer)
    if getattr(station_cfg, "auxiliary", False):
        # Every emitted event releases its data; the relay's window requests reach the outbox.
        from ims_station.edge.auxiliary import AuxiliaryStation

        aux_ref.append(AuxiliaryStation.build(station_cfg, settings, outbox=outbox, framer=framer, clock=clock,
                                              keystore=keystore, uplink=uplink))
        emit = aux_ref[0].wrap(emit)
    if on_event is not None:
        emit = _observed(emit, on_event)
    notify = uplink.notify if uplink is not None else (lambda: None)
    message_paths = {kind: message_emitter(station_cfg.code, kind, outbox, clock, notify, signer=framer.station_signer)
                     for kind in ("ims20",)}

    def emit_message(outbox_kind: str, body: bytes) -> int:
        if outbox_kind not in message_paths:
            raise ValueError(f"no station message path for outbox kind {outbox_kind!r} "
                             f"(known: {', '.join(message_paths)}; events go through emit_event)")
        return message_paths[outbox_kind](body)

    named_stages = stages_from_config(StageContext(station_cfg, clock, outbox, framer, alarm, emit, emit_message))
    stages = [st for _, st in named_stages]
    gw = Gateway(f"{station_cfg.network}.{station_cfg.code}", framer, uplink=uplink, stages=stages,
                 stage_names=[name for name, _ in named_stages])
    gw_ref.append(gw)
    ports = []
    for port in station_cfg.ports:
        assembler = StreamAssembler()
        # auto_ack=False: the board is acknowledged from the persisted ACK point only (Gateway).
        dec = LinkDecoder(port.key, clock, board_id=port.board_id, auto_ack=False, baudrate=port.baudrate,
                          **port.link)
        gw.resume(dec, port.board_id)
        sp = StationPort(port, dec, assembler, None)

        def port_events(events: list, sp: StationPort = sp) -> None:
            for ev in events:
                # Codes are known once the board id is (from the config or the first packet).
                bid = getattr(ev, "board_id", None)
                if bid is not None and sp.config.channels:
                    sp.assembler.add_codes(sp.config.codes(bid))
            if on_events is not None:
                on_events(sp, events)
            if soh_box:
                soh_box[0].observe(sp, events)
            gw.on_events(sp.decoder, sp.assembler, events)

        sp.pump = PortPump(port.url, dec, baudrate=port.baudrate, timeout=port.timeout, clock=clock,
                           on_events=port_events, **pump_options)
        ports.append(sp)
    return Station(station_cfg, settings, clock, outbox, framer, uplink, gw, ports, stages, emit,
                   aux_ref[0] if aux_ref else None)


def _soh_document(soh_box: list, gw_ref: list) -> dict:
    """The retained SOH's body: the status document (the uplink adds its own ``station`` code)."""
    if soh_box:
        doc = soh_box[0].document()
        doc.pop("station", None)
        return doc
    return {"gateway": gw_ref[0].stats()} if gw_ref else {}


def load(station_file: str, uplink_file: str | None = None) -> tuple[Any, Any]:
    """The station file, and the gateway settings: its own tables, or (compatibility) those of a
    separate ``--uplink`` file -- not both, so that no setting silently shadows another."""
    from ims_station.edge.config import load_station_config
    from ims_station.edge.uplink_config import load_uplink_settings
    from ims_station.errors import ConfigError

    cfg = load_station_config(station_file)
    if uplink_file is None:
        return cfg, cfg.settings
    if cfg.gateway_tables:
        raise ConfigError(station_file, cfg.gateway_tables[0],
                          f"also configured in --uplink {uplink_file}: keep the tables in the station file only")
    return cfg, load_uplink_settings(uplink_file)


# The longest that stopping may take, from the stop request to the outbox closed: well inside
# TimeoutStopSec=20 of deploy/systemd/ims-gateway.service, after which systemd SIGKILLs us
# (tests/deploy/test_stop_deadline.py holds the unit to it).
SHUTDOWN_BUDGET_S = 8.0


def run(station_file: str, uplink_file: str | None = None, *, seconds: float = 0.0,
        status_interval: float = 0.0, on_status: Callable[[dict], None] | None = None,
        stats_every: float = 60.0) -> int:
    """The standalone gateway: one pump thread per serial port, until SIGTERM/Ctrl-C or *seconds*.

    ``ims-station edge run`` and ``python -m ims_station.edge.station`` both run this.  With
    *on_status*, a status document (:func:`status`) every *status_interval* seconds and at the end.
    systemd (``Type=notify``, watchdog) and the journal's summary line every *stats_every* seconds:
    :mod:`ims_station.edge.supervision`.  SIGTERM or Ctrl-C (:class:`ims_station.service.StopSignals`)
    ends it within :data:`SHUTDOWN_BUDGET_S`, the outbox closed last.
    """
    import signal
    import time

    from ims_station.clock import SystemClock
    from ims_station.service import StopSignals

    cfg, settings = load(station_file, uplink_file)
    st = assemble(cfg, settings, clock=SystemClock())
    gw, outbox, uplink = st.gateway, st.outbox, st.uplink
    # SIGTERM only wakes the main loop (self-pipe, ims_station/service.py): the pump threads' Event
    # is set by the main loop, never by a signal handler, which could deadlock on its lock.
    signals = StopSignals((signal.SIGTERM, signal.SIGINT)).install()
    stop = threading.Event()
    threads = []
    try:
        st.open_ports()
    except BaseException:
        for p in st.ports:
            p.pump.close()
        outbox.close()
        signals.close()
        raise
    for p in st.ports:
        t = threading.Thread(target=p.pump.run, args=(stop,), name=f"pump-{p.config.name}", daemon=True)
        threads.append(t)
        t.start()
    if uplink is not None:
        uplink.start()
    # [status]: GET /status, /metrics, /health on a Unix socket / loopback port (docs/status-api.md).
    from ims_station.statusapi import serve_station

    api = serve_station(st)
    from ims_station.edge.supervision import gateway_heartbeat

    heartbeat = gateway_heartbeat(st, threads, stats_every=stats_every)
    heartbeat.started()             # READY=1: ports opened (or retrying), uplink session, status API
    show = (lambda: on_status(st.status())) if on_status else (lambda: None)
    t0 = time.monotonic()
    next_status = t0 + status_interval if status_interval > 0 else float("inf")
    try:
        while not stop.is_set():            # a pump that failed sets it (PortPump.run)
            now = time.monotonic()
            if seconds and now - t0 >= seconds:
                break
            gw.poll()
            st.soh.poll()
            if now >= next_status:
                show()
                next_status += status_interval
            heartbeat.turn()
            if signals.wait(0.2):
                break
    except KeyboardInterrupt:
        pass
    finally:
        # Every wait below shares one deadline, well inside the unit's TimeoutStopSec; what does not
        # end in time is a daemon thread that dies with the process, and the outbox is still closed
        # (under its lock, so never in the middle of another thread's transaction).
        deadline = time.monotonic() + SHUTDOWN_BUDGET_S

        def left() -> float:
            return max(0.0, deadline - time.monotonic())

        heartbeat.stopping()
        stop.set()
        if uplink is not None:
            uplink.request_stop()   # gives up a connection attempt now, in parallel with the rest
        if api is not None:
            api.close(timeout=min(2.0, left()))         # and its socket file
        for t in threads:
            t.join(timeout=min(2.0, left()))
        gw.poll()
        if uplink is not None:
            uplink.stop(timeout=left())
            if uplink.running:
                log.warning("edge: the uplink did not stop within the %g s shutdown budget; closing the "
                            "outbox regardless (what it did not publish stays there)", SHUTDOWN_BUDGET_S)
        try:
            show()          # may raise BrokenPipeError (stdout's reader gone): close regardless
        finally:
            outbox.close()
            signals.close()
    failed = [p for p in st.ports if p.pump.failed is not None]
    for p in failed:
        log.error("edge: port %s stopped the gateway: %s: %s", p.config.name, type(p.pump.failed).__name__,
                  p.pump.failed)
    return 1 if failed else 0


def status(cfg: Any, gw: Gateway, pumps: list, outbox: Any, uplink: Any) -> dict:
    """One status document: ports (link and stream counters), gateway/framer, outbox, uplink."""
    with gw._lock:       # the pump threads update the counters under the gateway's lock
        ports = [{"name": p.name, "url": p.url, "connected": pump.connected, "port": dict(pump.counters),
                  "link": dict(pump.decoder.counters), "streams": asm.summary()} for p, pump, asm in pumps]
        gateway = gw.stats()
    return {"station": f"{cfg.network}.{cfg.code}", "ports": ports, "gateway": gateway,
            "outbox": outbox.stats(), "uplink": uplink.stats() if uplink is not None else None}


def run_from_args(args: Any) -> int:
    from ims_station.output import print_json

    def show(doc: dict) -> None:
        if args.json:
            print_json(doc)
            return
        for p in doc["ports"]:
            c = p["link"]
            print(f"{doc['station']} {p['name']} ({p['url']}): {'up' if p['connected'] else 'DOWN'}  "
                  f"ok={c['packets_ok']} crc={c['crc_errors']} hmac={c['hmac_errors']} "
                  f"resent={c['packets_recovered']} lost={c['packets_unrecoverable']} "
                  f"samples={c['samples_delivered']} garbage={c['garbage_bytes']}B")
        f, o, u = doc["gateway"]["framer"], doc["outbox"], doc["uplink"]
        print(f"{doc['station']} frames={f['frames']} partial={f['partial_frames']} late={f['late_samples']} "
              f"bad_time={f['implausible_time_samples']} outbox={o['frames']} ({o['bytes']} B) "
              f"uplink={'off' if u is None else ('up' if u['connected'] else 'DOWN')}", flush=True)

    return run(args.config, args.uplink, seconds=args.seconds, status_interval=args.interval, on_status=show,
               stats_every=args.stats_every)


def _main(argv: list[str] | None = None) -> int:
    import argparse

    from ims_station.errors import ImsStationError

    ap = argparse.ArgumentParser(prog="python -m ims_station.edge.station", description=__doc__.split("\n")[0])
    from ims_station.edge.cli import add_run_arguments

    add_run_arguments(ap)
    ap.add_argument("-v", "--verbose", action="count", default=0)
    args = ap.parse_args(argv)
    from ims_station.logutil import setup_logging

    setup_logging(args.verbose, default=logging.INFO)
    try:
        return run_from_args(args)
    except ImsStationError as err:
        print(f"ims_station.edge.station: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        from ims_station.output import stdout_broken, stdout_gone

        if not stdout_broken():
            raise
        return stdout_gone()


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(_main())
