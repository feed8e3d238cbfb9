"""Gateway side of the serial link: a sans-IO decoder with sequence tracking and RESEND recovery.

Owns: turning the byte stream from one serial port into checked, in-order events
(:class:`Hello`, :class:`DataBlock`, :class:`Soh`, :class:`Reply`, :class:`GapReport`,
:class:`BoardRestarted`, :class:`CommandTimeout`, :class:`SecurityAlert`), the session policy of the
link (which sequence numbers are missing, when to ask the board to RESEND them, when to give up and
report the gap exactly, when to ACK) and the COMMAND/REPLY bookkeeping.

Does not own: the wire format (``ims_station.firmware.link`` is its one definition: framing, CRC,
HMAC, payload layouts are all called from there, never re-implemented), I/O (see
``edge/serialport.py``), stream continuity in *time* (``edge/streams.py``) or persistence (the
later outbox acknowledges through :meth:`LinkDecoder.acknowledge`).

Shape (h11-style): ``receive_data(bytes)``, ``next_events()``, ``data_to_send()``, ``tick()``.  Time
comes from an injected clock (``monotonic()``), so tests and the simulator run hours of protocol
time in milliseconds.  Nothing that arrives on the wire raises out of this module: every rejected
frame is counted by kind and logged rate-limited.

Sequence policy, per board epoch (the board's boot counter; sequence numbers restart at 0 with it):

* packets are handed to the consumer in sequence order; later packets are held (bounded) while an
  earlier one is being re-requested;
* a hole is asked for with RESEND, oldest part first, paced: the packets asked for and not yet
  arrived never exceed ``max_inflight_bytes`` (default 8 KiB, half the board's 16 KiB transmit
  queue, which also carries the live packets; about 0.7 s of a 115200 baud line) nor
  ``max_inflight`` packets, and the next chunk is asked for as the requested packets arrive; a
  request is re-asked when its copies should have arrived (with ``baudrate``: their bytes at
  10 bits per byte behind the copies asked before, plus ``resend_margin``; without: after
  ``resend_timeout`` seconds without progress).  It is given up when the board says it is gone (UNAVAILABLE), when it has
  certainly left the board's ring (below the ring floor the board's SOH states: its sequence number
  minus its ring fill), when no ring can hold it (``max_hole_span``) or when the hold buffer is
  full -- and, as a last resort, after ``max_resend_tries`` requests (default 30: a minute of
  asking), though never while it is within the newest ``ring_capacity`` packets the board's
  HELLO/SOH guarantee to hold (a line that damages most packets needs many tries, and the ring
  holds minutes);
* a given-up range becomes a :class:`GapReport` with the exact sequence range, the end of the last
  sample before (``start_us``), the first sample after (``end_us``) and the channels, emitted just
  before the next :class:`DataBlock` (whose first sample defines ``end_us``);
* packet length follows the line: over the last ``adapt_window`` frames, more than
  ``adapt_high`` (30 %) rejected -> COMMAND set_packet_ms with half the board's current DATA packet
  length (not below ``min_packet_ms``, 250 ms); below ``adapt_low`` (5 %) after the decoder shortened
  them -> set_packet_ms 0, the board's own default.  Shorter packets are hit less often (a
  packet survives a byte-damage rate q with p = (1-q)^size), at the cost of more overhead;
* the same sequence number twice is a duplicate (dropped, counted); with different content it is
  a security event (counted, logged, :class:`SecurityAlert`), and the first copy wins;
* a board *run* is (epoch, boot number), both in every packet's header: a newer epoch is a reboot
  at once; another run that is not a newer epoch (a replaced board or a wiped epoch file, back at
  an epoch and seq seen before -- or an old packet replayed on the line) is believed only when it
  is still talking ``new_run_confirm_s`` after its first packet with nothing of the current run in
  between, and then its packets are taken from seq 0 (:class:`BoardRestarted`, ``new_run``); the
  same rule guards a persisted ACK point before first contact (:meth:`LinkDecoder.resume`);
* the consumer may :meth:`LinkDecoder.hold` a delivered packet it cannot take yet (board time and
  gateway clock disagree, neither trusted): nothing from it on is delivered, asked for or
  acknowledged until :meth:`LinkDecoder.release`, which asks the board's ring for it again.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ims_station.errors import LocalProtocolError
from ims_station.firmware import link

from .logutil import RateLimitedLog

log = logging.getLogger(__name__)

SEQ_MOD = 1 << 32
EPOCH_MOD = 1 << 16

# Defaults of the session policy (edge/config.py documents and reuses them).
DEFAULT_RESEND_TIMEOUT = 2.0
# Last resort only: a hole is normally settled by the packet arriving, by UNAVAILABLE or by the
# ring floor of the board's SOH.  On a line that damages 60 % of the 1-s packets (BER 1e-5 and
# 0.1 % of bytes dropped) a packet survives 30 requests in a row with p = 0.6^30, about 2e-7.
DEFAULT_MAX_RESEND_TRIES = 30
# Bytes of requested copies outstanding at a time: the board queues at most 16 KiB for its UART
# (firmware/digitizer.py _TX_LIMIT) and drops what does not fit, live packets included.
DEFAULT_MAX_INFLIGHT_BYTES = 8192
# With a baud rate, a request is due again when its copies should have arrived (their bytes at 10
# bits per byte, queued behind the copies asked for before) plus this margin: the request's own way
# up, the board's main-loop period and the USB adapters' latency timers (16 ms each way), and
# DATA packets the board interleaves.
DEFAULT_RESEND_MARGIN = 0.25
# A packet of another run of the board that is not a newer epoch (a replaced board, a wiped epoch
# file -- or an old packet replayed on the line, e.g. left in a buffer at start-up) is believed
# only when that run is still talking this long after its first packet, with nothing of the
# current run in between: a replay is a burst, a new run goes on.
DEFAULT_NEW_RUN_CONFIRM_S = 2.0
_SIZE_SAMPLES = 16     # DATA frames of a packet length seen before their largest replaces the worst case


def wire_size(payload_len: int) -> int:
    """Bytes on the line of a packet with *payload_len* bytes of payload (worst-case COBS, both
    delimiters)."""
    p = payload_len + link.OVERHEAD
    return p + p // 254 + 1 + link.FRAME_OVERHEAD


def sample_offset_us(i: int, rate_mhz: int) -> int:
    """Microseconds from the first sample to sample *i* at *rate_mhz*, rounded to the nearest us.

    Integer arithmetic so that the same block always gives the same times on every machine.
    """
    return (i * 1_000_000_000 + rate_mhz // 2) // rate_mhz


class SampleSpan:
    """Time arithmetic shared by every multi-channel sample block (link DataBlock, stream Chunk):
    the subclass has ``t_first_us``, ``rate_mhz`` and ``samples`` of shape (channels, n)."""

    __slots__ = ()
    t_first_us: int
    rate_mhz: int
    samples: np.ndarray

    @property
    def n_samples(self) -> int:
        return int(self.samples.shape[1])

    @property
    def t_end_us(self) -> int:
        """End of the last sample: the time the next sample is due."""
        return self.t_first_us + sample_offset_us(self.n_samples, self.rate_mhz)

    @property
    def t_last_us(self) -> int:
        return self.t_first_us + sample_offset_us(self.n_samples - 1, self.rate_mhz)


# ---------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class Hello:
    board_id: int
    epoch: int
    seq: int
    capabilities: int
    rate_mhz: int
    ring_capacity: int
    samples_per_packet: int
    channel_ids: tuple[int, ...]
    firmware: str
    board_name: str


@dataclass(frozen=True, slots=True, eq=False)
class DataBlock(SampleSpan):
    board_id: int
    epoch: int
    seq: int
    t_first_us: int
    rate_mhz: int
    time_quality: int
    status: int
    clip_mask: int
    channel_ids: tuple[int, ...]
    samples: np.ndarray            # int32, shape (channels, n)
    retransmitted: bool = False
    boot: int = 0                  # the board run's boot number (link header; 0: not stated)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DataBlock):
            return NotImplemented
        return (self.board_id, self.epoch, self.seq, self.t_first_us, self.rate_mhz, self.time_quality,
                self.status, self.clip_mask, self.channel_ids) == (
                other.board_id, other.epoch, other.seq, other.t_first_us, other.rate_mhz,
                other.time_quality, other.status, other.clip_mask, other.channel_ids) and \
            np.array_equal(self.samples, other.samples)


@dataclass(frozen=True, slots=True)
class Soh:
    board_id: int
    epoch: int
    seq: int
    time_us: int
    last_sync_us: int
    clock_diff_us: int
    supply_mv: int
    temperature_cc: int
    time_quality: int
    status: int
    ring_fill: int
    ring_capacity: int


@dataclass(frozen=True, slots=True)
class Reply:
    board_id: int
    epoch: int
    seq: int
    cmd_seq: int                  # the gateway sequence number of the COMMAND answered
    command: int                  # command code (link.CMD_*)
    status: int                   # link.R_*
    result: bytes
    matched: bool                 # False: no COMMAND of ours with that sequence number was pending
    latency_s: float | None = None

    @property
    def ok(self) -> bool:
        return self.status == link.R_OK


@dataclass(frozen=True, slots=True)
class CommandTimeout:
    board_id: int
    cmd_seq: int
    command: int


@dataclass(frozen=True, slots=True)
class GapReport:
    """Board sequence numbers ``first_seq..last_seq`` (inclusive) of ``epoch`` will never arrive.

    ``start_us`` is the end of the last sample delivered before them (None if nothing of this epoch
    was delivered before), ``end_us`` the first sample delivered after them (None if the epoch ended
    first).  The samples missing on each channel in ``channel_ids`` are those due in
    ``[start_us, end_us)``; packets in the range that carried no samples (SOH, REPLY) give a report
    with ``start_us == end_us``.
    """

    board_id: int
    epoch: int
    first_seq: int
    last_seq: int
    start_us: int | None
    end_us: int | None
    channel_ids: tuple[int, ...]
    rate_mhz: int | None
    reason: str                   # unavailable / timeout / beyond_ring / overflow / restart / payload

    @property
    def packets(self) -> int:
        return (self.last_seq - self.first_seq) % SEQ_MOD + 1

    @property
    def samples_missing(self) -> int | None:
        """Samples missing per channel, or None when an end is unknown."""
        if self.start_us is None or self.end_us is None or not self.rate_mhz:
            return None
        return max(0, round((self.end_us - self.start_us) * self.rate_mhz / 1_000_000_000))


@dataclass(frozen=True, slots=True)
class BoardRestarted:
    """The board is in a new run: a newer epoch (``reason="epoch"``), or a run the epoch alone does
    not tell apart (``"new_run"``: a replaced board, or a wiped epoch file, with an epoch seen
    before and another boot number).  Nothing of the new run is taken for data of the old."""
    board_id: int
    old_epoch: int
    new_epoch: int
    reason: str = "epoch"
    old_boot: int = 0
    new_boot: int = 0


@dataclass(frozen=True, slots=True)
class SecurityAlert:
    board_id: int
    epoch: int
    seq: int
    reason: str


Event = Hello | DataBlock | Soh | Reply | CommandTimeout | GapReport | BoardRestarted | SecurityAlert

# ---------------------------------------------------------------- internal state

_LOST = object()  # marker in the hold buffer: given up


@dataclass(slots=True)
class _Hole:
    first: int
    last: int
    tries: int = 0
    due: float | None = None       # when the request counts as failed and is asked again; None: due now
                                   # (never asked, or a later copy proved this one lost)
    req: int = 0                   # number of the last RESEND that asked for it (0: none)

    @property
    def size(self) -> int:
        return self.last - self.first + 1


@dataclass(slots=True)
class _Board:
    board_id: int
    epoch: int
    next_seq: int                       # next sequence number to deliver
    highest: int                        # highest sequence number seen (next_seq - 1 if none held)
    held: dict[int, Any] = field(default_factory=dict)       # seq -> (digest, event|None) or _LOST
    lost_reason: dict[int, str] = field(default_factory=dict)
    holes: list[_Hole] = field(default_factory=list)         # sorted, disjoint
    digests: dict[int, bytes] = field(default_factory=dict)  # recent delivered seq -> digest
    digest_order: deque = field(default_factory=deque)
    last_data: DataBlock | None = None
    hello: Hello | None = None
    pending_gaps: list[tuple[int, int, str]] = field(default_factory=list)
    gap_start: tuple[int | None, tuple[int, ...], int | None] | None = None
    ring_capacity: int | None = None
    ring_floor: int = 0                 # every seq below it has left the board's ring (from SOH)
    frame_bytes: int = 0                # largest DATA frame on the line since the last HELLO (pacing)
    sizes: list = field(default_factory=list)   # [first seq, largest DATA frame seen, HELLO worst case, frames seen]
                                                # per packet-length segment (a HELLO starts one), by seq
    line_free: float = 0.0              # line model: when the copies asked for will have left the board
    reqs: deque = field(default_factory=deque)  # line model: [req no, first, last, modeled end] in FIFO order
    ring_guaranteed: int | None = None  # fewest packets the ring is guaranteed to hold (HELLO/SOH, this epoch)
    hello_rx: Hello | None = None       # newest HELLO received, delivered or not (for adaptation)
    acked: int = -1                     # highest sequence number the consumer has acknowledged
    ack_sent: int = -1
    resume_t_us: int | None = None      # end of the last sample of a resumed session's ACK point
    ack_sent_at: float | None = None
    boot: int = 0                       # the run's boot number (0: not known yet / not stated)
    candidate: list | None = None       # [epoch, boot, first seen (monotonic), packets]: another run
    release_asked: bool = False         # release() was called: end the hold at the next service
    hold_from: int | None = None        # the consumer refused this seq (hold): nothing from it on is
                                        # delivered or asked for until release()


def _digest(ptype: int, payload: bytes) -> bytes:
    # Content identity of a packet: the retransmitted copy differs only in the header flags.
    return hashlib.blake2b(bytes((ptype,)) + payload, digest_size=16).digest()


class LinkDecoder:
    """Sans-IO gateway end of one serial link (one board per port; several are tolerated).

    ``key`` is the board's HMAC key.  ``board_id``: if given, packets from any other board id are
    rejected (counted ``wrong_board``) and commands can be sent before the board has spoken.
    ``auto_ack``: ACK what has been delivered to the consumer (default, for now); with False the
    consumer calls :meth:`acknowledge` once data is durable (the outbox, later).
    """

    def __init__(self, key: bytes, clock: Any, *, board_id: int | None = None,
                 resend_timeout: float = DEFAULT_RESEND_TIMEOUT,
                 baudrate: int | None = None, resend_margin: float = DEFAULT_RESEND_MARGIN,
                 max_resend_tries: int = DEFAULT_MAX_RESEND_TRIES,
                 max_inflight: int = link.MAX_RESEND, max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES,
                 max_held: int = 2048,
                 ack_interval: float = 1.0, auto_ack: bool = True,
                 command_timeout: float = 5.0, backfill: int = link.MAX_RESEND,
                 max_hole_span: int = 1 << 16, dup_window: int = 4096,
                 adapt_packet_ms: bool = True, adapt_window: int = 50, adapt_high: float = 0.30,
                 adapt_low: float = 0.05, min_packet_ms: int = 250,
                 new_run_confirm_s: float = DEFAULT_NEW_RUN_CONFIRM_S,
                 log_rate: float = 1.0, log_burst: int = 5) -> None:
        self._auth = link.Authenticator(key)
        self._clock = clock
        self.board_id = board_id
        self.resend_timeout = float(resend_timeout)
        if baudrate is not None and int(baudrate) <= 0:
            raise LocalProtocolError(f"LinkDecoder: baudrate must be positive, got {baudrate!r}")
        self.baudrate = int(baudrate) if baudrate is not None else None
        self.resend_margin = float(resend_margin)
        self.max_resend_tries = int(max_resend_tries)
        self.max_inflight = int(max_inflight)
        self.max_inflight_bytes = int(max_inflight_bytes)
        self.max_held = int(max_held)
        self.ack_interval = float(ack_interval)
        self.auto_ack = auto_ack
        self.command_timeout = float(command_timeout)
        self.backfill = int(backfill)
        self.max_hole_span = int(max_hole_span)
        self.dup_window = int(dup_window)
        self.adapt_packet_ms = bool(adapt_packet_ms)
        self.adapt_window = max(1, int(adapt_window))
        self.adapt_high = float(adapt_high)
        self.adapt_low = float(adapt_low)
        self.min_packet_ms = int(min_packet_ms)
        self.new_run_confirm_s = float(new_run_confirm_s)
        self._outcomes: deque[bool] = deque(maxlen=self.adapt_window)   # True: frame rejected
        self._packet_ms: dict[int, int] = {}      # board -> current DATA packet length, ms (HELLO)
        self._shortened: set[int] = set()         # boards whose packets this decoder shortened
        self._adapt_cmd: tuple[int, int, int] | None = None   # (cmd seq, board, ms asked) pending
        self._req_no = 0                          # RESEND requests numbered in sending order
        self._adapt_sent: dict[int, int] = {}     # cmd seq -> ms asked, until its REPLY (bounded)
        self._deframer = link.Deframer()
        self._events: list[Event] = []
        self._out = bytearray()
        self._boards: dict[int, _Board] = {}
        self._pending_runs: dict[int, _Board] = {}   # board -> candidate run before first contact
        self._resume: dict[int, tuple[int, int, int | None, int]] = {}   # board -> persisted ACK point
        self._tx_seq = 0
        self._commands: dict[int, tuple[int, int, float]] = {}   # cmd_seq -> (board, code, sent_at)
        self._log = RateLimitedLog(log, clock, rate=log_rate, burst=log_burst)
        self.counters: dict[str, int] = dict.fromkeys((
            "bytes_received", "frames", "packets_ok", "garbage_bytes", "rejected_frame_bytes", "overlong_frames",
            "framing_errors", "crc_errors", "hmac_errors", "version_errors", "length_errors",
            "payload_errors", "wrong_board", "unexpected_type", "stale_epoch", "duplicates",
            "duplicate_conflicts", "retransmits_received", "resend_requests", "resend_packets_requested",
            "packets_recovered", "packets_unrecoverable", "gaps_reported", "unavailable_received",
            "held_overflow", "late_packets", "board_restarts", "hellos", "data_blocks", "samples_delivered", "soh",
            "acks_sent", "commands_sent", "replies", "replies_unmatched", "command_timeouts",
            "packet_ms_commands", "packet_ms_changes", "resumed", "holds", "held_back_packets",
            "new_runs", "operator_resends",
        ), 0)

    # ------------------------------------------------------------ sans-IO surface

    def receive_data(self, data: bytes) -> None:
        """Feed bytes read from the port (any amount, any split)."""
        self.counters["bytes_received"] += len(data)
        d = self._deframer
        g0, o0 = d.garbage_bytes, d.overlong_frames
        frames = d.feed(data)
        self.counters["garbage_bytes"] += d.garbage_bytes - g0
        if d.overlong_frames != o0:
            self.counters["overlong_frames"] += d.overlong_frames - o0
            self._log("overlong", logging.WARNING, "link: discarded an over-long frame (no delimiter "
                      "within %d bytes): garbage on the line", link.MAX_ENCODED)
        for fr in frames:
            self._frame(fr)
        self._service()

    def next_events(self) -> list[Event]:
        ev, self._events = self._events, []
        return ev

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def tick(self) -> None:
        """Run timeouts (re-request, give up, ACK, command timeouts); call it now and then."""
        self._service()

    def close(self) -> None:
        """End of the session: give up every hole and report it; pending gaps end unknown."""
        for b in self._boards.values():
            self._end_epoch(b, "closed")

    # ------------------------------------------------------------ consumer hooks

    def acknowledge(self, seq: int, board_id: int | None = None, epoch: int | None = None) -> None:
        """Everything up to *seq* of the board's current epoch is safe (e.g. on disk): ACK it.
        With *epoch*, an acknowledgement for another epoch (the board restarted since) is ignored."""
        b = self._board_for(board_id)
        if b is None:
            raise LocalProtocolError("acknowledge: no board known yet")
        if epoch is not None and epoch != b.epoch:
            return
        b.acked = max(b.acked, min(seq, b.next_seq - 1))

    def hold(self, seq: int, board_id: int | None = None, epoch: int | None = None,
             t_first_us: int | None = None) -> bool:
        """The consumer cannot take packet *seq* of the board's current epoch yet (e.g. its time
        disagrees with the gateway's clock and neither can be trusted): forget that it and what
        followed were delivered, and neither deliver nor ask for anything from *seq* on until
        :meth:`release`.  Nothing from *seq* on is acknowledged, so the board's ring keeps it.
        *t_first_us* (the refused block's first sample) is where a gap reported later starts.
        Returns False (and does nothing) for another epoch or a seq not delivered."""
        b = self._board_for(board_id)
        if b is None or (epoch is not None and epoch != b.epoch) or seq >= b.next_seq or seq <= b.acked:
            return False
        if b.hold_from is not None and b.hold_from <= seq:
            return True
        b.hold_from = seq
        b.next_seq = seq
        b.highest = max(b.highest, seq - 1)
        for s in [s for s in b.held if s >= seq]:
            del b.held[s]
            b.lost_reason.pop(s, None)
        b.holes = [h for h in b.holes if h.last < seq]
        for h in b.holes:
            h.last = min(h.last, seq - 1)
        d = b.last_data
        if d is not None and d.seq >= seq:
            # A gap opened later starts where the refused block started.
            b.last_data, b.resume_t_us = None, t_first_us
        self.counters["holds"] += 1
        return True

    def release(self, board_id: int | None = None) -> None:
        """End a :meth:`hold`: everything the board sent from the held seq on is asked for again
        (RESEND, paced, oldest first; what left the ring is settled by UNAVAILABLE and reported).

        Like :meth:`acknowledge`, it only records the request (the gateway calls it from its own
        thread, not the port's): the decoder acts on it at its next ``receive_data`` or ``tick``."""
        b = self._board_for(board_id)
        if b is not None and b.hold_from is not None:
            b.release_asked = True

    def _release(self, b: _Board) -> None:
        b.release_asked = False
        if b.hold_from is None:
            return
        first, b.hold_from = b.hold_from, None
        if b.highest >= first:
            self._add_hole(b, first, b.highest, self._clock.monotonic())

    def resume(self, board_id: int, epoch: int, seq: int, t_end_us: int | None = None, boot: int = 0) -> None:
        """Continue from a persisted ACK point: *seq* of *epoch* and everything before it are safe
        (committed by a previous gateway process); *t_end_us* is the end of its last sample.

        Applied at first contact with the board.  If it is still in *epoch*, the decoder delivers from
        ``seq + 1`` on: everything in between is a hole, asked for with RESEND like any other (paced,
        oldest first), so the packets the board's ring held while no gateway listened are recovered,
        and what left the ring is settled by the board's UNAVAILABLE and reported as a
        :class:`GapReport` from *t_end_us*.  It re-sends ACK *seq* (the previous process may have died
        before it did).  If the board is in another epoch (it rebooted meanwhile, its ring is gone), a
        :class:`BoardRestarted` is emitted and the new epoch starts as at any first contact.
        *boot* is the run's boot number (0: not known): a board at the same epoch with another boot
        number (replaced, or its epoch file wiped) is a new run, and so is an older epoch -- once it
        is confirmed (``new_run_confirm_s``), since an old packet replayed on the line at start-up
        looks the same; until then, and if the persisted run speaks first, the point is kept.
        """
        if board_id in self._boards:
            raise LocalProtocolError(f"resume: board {board_id} has spoken already")
        self._resume[board_id] = (int(epoch), int(seq), t_end_us, int(boot))

    def _run_of(self, epoch: int, boot: int, hdr: link.Header) -> str:
        """How the packet's run relates to the run (*epoch*, *boot*): ``same``, ``newer`` (a
        newer epoch: a reboot) or ``other`` (same epoch with another boot number, or an older
        epoch: a new run of a replaced or wiped board, or an old packet replayed on the line)."""
        if hdr.epoch == epoch:
            return "same" if not boot or not hdr.boot or hdr.boot == boot else "other"
        return "newer" if 0 < (hdr.epoch - epoch) % EPOCH_MOD < EPOCH_MOD // 2 else "other"

    def _candidate(self, holder: Any, hdr: link.Header, now: float) -> bool:
        """A packet of another run (``other``): True once that run is confirmed -- it is still
        talking ``new_run_confirm_s`` after its first packet, nothing of the current run between."""
        c = holder.candidate
        if c is None or c[0] != hdr.epoch or c[1] != hdr.boot:
            holder.candidate = [hdr.epoch, hdr.boot, now, 1]
            self._log("epoch", logging.WARNING, "link: board %d: packet of another run (epoch %d boot %d, "
                      "seq %d) than the current one: a new board or an old packet; waiting to see",
                      hdr.board_id, hdr.epoch, hdr.boot, hdr.seq)
            return False
        c[3] += 1
        return now - c[2] >= self.new_run_confirm_s

    def _first_contact(self, hdr: link.Header, now: float) -> _Board | None:
        r = self._resume.get(hdr.board_id)
        run = self._run_of(r[0], r[3], hdr) if r is not None else None
        if run == "same":
            del self._resume[hdr.board_id]
            self._pending_runs.pop(hdr.board_id, None)    # old packets on the line, if any
            epoch, acked, t_end_us, boot = r
            b = self._boards[hdr.board_id] = _Board(hdr.board_id, hdr.epoch, acked + 1, acked)
            b.acked, b.resume_t_us, b.boot = acked, t_end_us, hdr.boot or boot
            self.counters["resumed"] += 1
            self._log("resume", logging.INFO, "link: board %d epoch %d: resuming after seq %d (now at %d)",
                      hdr.board_id, epoch, acked, hdr.seq)
            return b
        if run == "other":
            # Not the persisted run and not a newer epoch: keep the ACK point until it is clear
            # whether the board really is a new run or this is an old packet on the line.
            holder = self._pending_runs.setdefault(hdr.board_id, _Board(hdr.board_id, r[0], 0, -1))
            if not self._candidate(holder, hdr, now):
                self.counters["stale_epoch"] += 1
                return None
        self._pending_runs.pop(hdr.board_id, None)
        self._resume.pop(hdr.board_id, None)
        # A board that booted recently still has its first packets in the ring: ask for them (a
        # gateway started together with the board loses nothing).
        start = 0 if hdr.seq <= self.backfill else hdr.seq
        b = self._boards[hdr.board_id] = _Board(hdr.board_id, hdr.epoch, start, start - 1)
        b.boot = hdr.boot
        if r is not None:
            # Rebooted (or replaced) while no gateway listened: what it sent after the ACK point is
            # gone with its ring (an unknown number of packets, so no GapReport; the streams see the
            # time gap).
            self.counters["board_restarts"] += 1
            reason = "epoch" if run == "newer" else "new_run"
            if reason == "new_run":
                self.counters["new_runs"] += 1
            why = "" if reason == "epoch" else ": a replaced board or a wiped epoch; the persisted ACK point is dropped"
            self._log("restart", logging.WARNING, "link: board %d restarted while the gateway was down "
                      "(epoch %d boot %d -> epoch %d boot %d%s): packets of the old run after seq %d are lost",
                      hdr.board_id, r[0], r[3], hdr.epoch, hdr.boot, why, r[1])
            self._events.append(BoardRestarted(hdr.board_id, r[0], hdr.epoch, reason, r[3], hdr.boot))
        return b

    def send_command(self, code: int, args: bytes = b"", *, board_id: int | None = None) -> int:
        """Queue a COMMAND; returns its sequence number, which the :class:`Reply` carries."""
        bid = board_id if board_id is not None else self.board_id
        if bid is None:
            if len(self._boards) != 1:
                raise LocalProtocolError("send_command: board id unknown (pass board_id)")
            bid = next(iter(self._boards))
        b = self._boards.get(bid)
        seq = self._send(bid, b.epoch if b else 0, link.T_COMMAND, link.pack_command(code, args),
                         b.boot if b else 0)
        self._commands[seq] = (bid, code, self._clock.monotonic())
        self.counters["commands_sent"] += 1
        return seq

    def request_resend(self, first: int, last: int, *, board_id: int | None = None) -> tuple[int, int, int]:
        """An operator's RESEND of board sequence numbers *first*..*last* (inclusive, at most
        ``link.MAX_RESEND`` packets, none beyond the highest seen): the board serves the copies it
        still holds in its ring, UNAVAILABLE for the rest.  A copy of a packet already delivered
        is a duplicate (counted, compared with the first copy, never delivered twice); one that
        fills a hole is delivered as usual.  Returns (board id, epoch, RESEND's link seq)."""
        b = self._board_for(board_id)
        if b is None:
            raise LocalProtocolError("request_resend: no board has been heard on this link yet")
        if not 0 <= first <= last or last - first + 1 > link.MAX_RESEND:
            raise LocalProtocolError(f"request_resend: range {first}..{last} is not 1..{link.MAX_RESEND} packets")
        if b.highest is not None and last > b.highest:
            raise LocalProtocolError(f"request_resend: seq {last} is beyond the highest seen ({b.highest})")
        seq = self._send(b.board_id, b.epoch, link.T_RESEND, link.pack_range(first, last), b.boot)
        self.counters["operator_resends"] += 1
        return b.board_id, b.epoch, seq

    def set_rate(self, rate_mhz: int, **kw: Any) -> int:
        return self.send_command(link.CMD_SET_RATE, rate_mhz.to_bytes(4, "big"), **kw)

    def start_calibration(self, duration_s: int, period_ms: int, channel_mask: int, **kw: Any) -> int:
        args = duration_s.to_bytes(2, "big") + period_ms.to_bytes(2, "big") + bytes((channel_mask,))
        return self.send_command(link.CMD_START_CALIBRATION, args, **kw)

    def stop_calibration(self, **kw: Any) -> int:
        return self.send_command(link.CMD_STOP_CALIBRATION, **kw)

    def reboot(self, **kw: Any) -> int:
        return self.send_command(link.CMD_REBOOT, **kw)

    def request_hello(self, **kw: Any) -> int:
        return self.send_command(link.CMD_HELLO, **kw)

    def set_packet_ms(self, ms: int, **kw: Any) -> int:
        """Ask the board for DATA packets of *ms* milliseconds (0: the board's default)."""
        return self.send_command(link.CMD_SET_PACKET_MS, int(ms).to_bytes(2, "big"), **kw)

    def packet_ms(self, board_id: int | None = None) -> int | None:
        """The board's current DATA packet length as last announced (HELLO), ms."""
        b = self._board_for(board_id)
        return self._packet_ms.get(b.board_id) if b is not None else None

    def state(self, board_id: int | None = None) -> dict[str, Any] | None:
        """Snapshot of the sequence state of one board (for status pages and tests)."""
        b = self._board_for(board_id)
        if b is None:
            return None
        return {"board_id": b.board_id, "epoch": b.epoch, "next_seq": b.next_seq, "highest": b.highest,
                "held": len(b.held), "holes": [(h.first, h.last, h.tries) for h in b.holes],
                "acked": b.acked, "ring_capacity": b.ring_capacity}

    # ------------------------------------------------------------ frames

    def _frame(self, fr: bytes) -> None:
        self.counters["frames"] += 1
        try:
            hdr, payload = link.decode(self._auth, fr)
        except link.LinkError as err:
            kind = err.reason
            key = {"framing": "framing_errors", "crc": "crc_errors", "hmac": "hmac_errors",
                   "version": "version_errors", "length": "length_errors"}.get(kind, "payload_errors")
            self.counters[key] += 1
            self._outcomes.append(True)
            # A frame that reached the checks is not garbage (bytes outside any frame): count it
            # apart, so each counter means one thing.  Delimiters are not counted.
            self.counters["rejected_frame_bytes"] += len(fr)
            self._log(kind, logging.WARNING if kind == "hmac" else logging.INFO,
                      "link: rejected a %d-byte frame (%s): %s", len(fr), kind, err)
            return
        if self.board_id is not None and hdr.board_id != self.board_id:
            self.counters["wrong_board"] += 1
            self._log("board", logging.WARNING, "link: packet from board %d on the port of board %d",
                      hdr.board_id, self.board_id)
            return
        if hdr.ptype >= 0x80 or hdr.ptype not in link.TYPE_NAMES:
            self.counters["unexpected_type"] += 1
            self._log("type", logging.WARNING, "link: board %d sent packet type 0x%02x", hdr.board_id, hdr.ptype)
            return
        self.counters["packets_ok"] += 1
        self._outcomes.append(False)
        if hdr.flags & link.F_RETRANSMIT:
            self.counters["retransmits_received"] += 1
        self._packet(hdr, payload)

    def _packet(self, hdr: link.Header, payload: bytes) -> None:
        now = self._clock.monotonic()
        b = self._boards.get(hdr.board_id)
        if b is None:
            b = self._first_contact(hdr, now)
            if b is None:
                return
        else:
            run = self._run_of(b.epoch, b.boot, hdr)
            if run == "same":
                # The current run is still talking: what looked like another run was old packets
                # on the line.
                b.candidate = None
                if hdr.boot and not b.boot:
                    b.boot = hdr.boot
            elif run == "newer":
                self._restart(b, hdr, "epoch")
            elif self._candidate(b, hdr, now):
                self._restart(b, hdr, "new_run")
                # Its first packets are still in its ring: ask for them, as at first contact.
                if hdr.seq <= self.backfill:
                    b.next_seq, b.highest = 0, -1
                else:
                    b.next_seq, b.highest = hdr.seq, hdr.seq - 1
            else:
                self.counters["stale_epoch"] += 1
                return
        seq = hdr.seq
        if b.hold_from is not None and seq >= b.hold_from:
            # Held back by the consumer: the board's ring keeps it; release() asks for it again.
            b.highest = max(b.highest, seq)
            self.counters["held_back_packets"] += 1
            return
        dig = _digest(hdr.ptype, payload)
        if hdr.ptype == link.T_DATA:
            b.frame_bytes = max(b.frame_bytes, wire_size(hdr.length))
            self._size_seen(b, seq, wire_size(hdr.length))
        elif hdr.ptype == link.T_HELLO:
            b.frame_bytes = 0       # a new rate or packet length: re-learn the size

        if seq < b.next_seq or seq in b.held:
            self._duplicate(b, seq, dig)
            return
        if seq > b.highest:
            if seq > b.highest + 1:
                self._add_hole(b, b.highest + 1, seq - 1, now)
            b.highest = seq
        else:
            # Fills a hole (usually a retransmitted copy answering our RESEND).
            if self._fill(b, seq, now, bool(hdr.flags & link.F_RETRANSMIT)):
                self.counters["packets_recovered"] += 1
            else:
                # Not in a hole, not held, not delivered: it was given up already (arrived late).
                self.counters["late_packets"] += 1
                return

        if hdr.ptype == link.T_UNAVAILABLE:
            self._unavailable(b, payload)
        ev = self._event(hdr, payload)
        if isinstance(ev, Hello):
            self._size_segment(b, ev)
        if isinstance(ev, (Hello, Reply)):
            # Packet length and the answer to our own set_packet_ms are needed now, not when the
            # packet's turn comes: on a bad line that can be minutes behind (holes before it).
            ev = self._adapt_receipt(b, ev)
        if isinstance(ev, (Hello, Soh)) and ev.ring_capacity:
            # The board holds at least its `ring_capacity` newest packets (stated at worst-case
            # size; the smallest stated this epoch, since older packets may be larger).
            g = b.ring_guaranteed
            b.ring_guaranteed = ev.ring_capacity if g is None else min(g, ev.ring_capacity)
        if isinstance(ev, Soh) and ev.ring_fill < 0xFFFF:
            # The SOH was built while the ring held exactly seq-fill .. seq-1 (firmware/ring.py
            # holds one contiguous run and only moves forward within an epoch): anything older is
            # gone for good, whatever HELLO's (worst-case, minimum) capacity suggested.
            b.ring_floor = max(b.ring_floor, seq - ev.ring_fill)
        if ev is _LOST:
            b.held[seq] = _LOST
            b.lost_reason[seq] = "payload"
            self.counters["packets_unrecoverable"] += 1
        else:
            b.held[seq] = (dig, ev)
        self._deliver(b)

    def _event(self, hdr: link.Header, payload: bytes) -> Any:
        t = hdr.ptype
        try:
            if t == link.T_DATA:
                t_first, rate, tq, status, clip, chan_ids, channels = link.unpack_data(payload)
                return DataBlock(hdr.board_id, hdr.epoch, hdr.seq, t_first, rate, tq, status, clip,
                                 tuple(chan_ids), np.array(channels, dtype=np.int32),
                                 bool(hdr.flags & link.F_RETRANSMIT), hdr.boot)
            if t == link.T_SOH:
                s = link.unpack_soh(payload)
                return Soh(hdr.board_id, hdr.epoch, hdr.seq, s["time_us"], s["last_sync_us"],
                           s["clock_diff_us"], s["supply_mv"], s["temperature_cc"], s["time_quality"],
                           s["status"], s["ring_fill"], s["ring_capacity"])
            if t == link.T_HELLO:
                h = link.unpack_hello(payload)
                return Hello(hdr.board_id, hdr.epoch, hdr.seq, h["capabilities"], h["rate_mhz"],
                             h["ring_capacity"], h["samples_per_packet"], tuple(h["channels"]),
                             h["firmware"], h["board"])
            if t == link.T_REPLY:
                cmd_seq, status, code, result = link.unpack_reply(payload)
                return Reply(hdr.board_id, hdr.epoch, hdr.seq, cmd_seq, code, status, result, False)
            if t == link.T_UNAVAILABLE:
                link.unpack_range(payload)
                return None
        except (link.LinkError, ValueError, OverflowError) as err:
            # (OverflowError: difference-packed samples whose running sum leaves the int32 range.)
            # Authenticated but malformed: a firmware bug, not line noise.  Re-asking would give
            # the same bytes, so the sequence number is given up and reported.
            self.counters["payload_errors"] += 1
            self._log("payload", logging.ERROR, "link: board %d seq %d: bad %s payload: %s",
                      hdr.board_id, hdr.seq, link.TYPE_NAMES.get(t, t), err)
            return _LOST
        return None

    def _adapt_receipt(self, b: _Board, ev: Any) -> Any:
        if isinstance(ev, Hello):
            last = self._packet_ms.get(b.board_id)
            if ev.rate_mhz and (last is None or b.hello_rx is None or ev.seq >= b.hello_rx.seq):
                b.hello_rx = ev
                self._packet_ms[b.board_id] = ev.samples_per_packet * 1_000_000 // ev.rate_mhz
            return ev
        asked = self._adapt_sent.pop(ev.cmd_seq, None)
        if asked is None or ev.command != link.CMD_SET_PACKET_MS:
            return ev
        # The answer to our own set_packet_ms (also a late one, after its timeout): decoder
        # housekeeping like RESEND and ACK, not an event for the consumer.
        self._commands.pop(ev.cmd_seq, None)
        if self._adapt_cmd is not None and self._adapt_cmd[0] == ev.cmd_seq:
            self._adapt_cmd = None
        if ev.ok:
            self.counters["packet_ms_changes"] += 1
            self._outcomes.clear()          # judge the new length on its own frames
            if asked:
                self._shortened.add(b.board_id)
            else:
                self._shortened.discard(b.board_id)
        return None

    def _duplicate(self, b: _Board, seq: int, dig: bytes) -> None:
        self.counters["duplicates"] += 1
        held = b.held.get(seq)
        known = held[0] if isinstance(held, tuple) else b.digests.get(seq)
        if not isinstance(known, bytes):
            return
        if known is not None and known != dig:
            self.counters["duplicate_conflicts"] += 1
            self._log("conflict", logging.ERROR, "link: SECURITY: board %d epoch %d seq %d arrived twice "
                      "with different content (valid HMAC both times); first copy kept",
                      b.board_id, b.epoch, seq)
            self._events.append(SecurityAlert(b.board_id, b.epoch, seq, "duplicate with different content"))

    # ------------------------------------------------------------ holes

    def _add_hole(self, b: _Board, first: int, last: int, now: float) -> None:
        # Never allocate per missing packet: a hole is one object however large.  No board ring
        # holds more than max_hole_span packets (the ring index is 16-bit), so anything older
        # than that is given up at once.  (HELLO's ring capacity is a guaranteed *minimum* at
        # worst-case packet size, so it cannot serve as this bound.)
        oldest_possible = last + 1 - self.max_hole_span
        if first < oldest_possible:
            self._give_up_range(b, first, oldest_possible - 1, "beyond_ring")
            first = oldest_possible
        b.holes.append(_Hole(first, last))

    def _fill(self, b: _Board, seq: int, now: float, copy: bool = False) -> bool:
        for i, h in enumerate(b.holes):
            if h.first <= seq <= h.last:
                parts = []
                # Fixed timeout: progress restarts the timer of the rest.  Line model: the rest
                # keeps its place in the board's queue (re-anchored below when this is a copy).
                asked = None if h.due is None else h.due if self.baudrate else now + self.resend_timeout
                if h.first < seq:
                    parts.append(_Hole(h.first, seq - 1, h.tries, asked, h.req))
                if seq < h.last:
                    parts.append(_Hole(seq + 1, h.last, h.tries, asked, h.req))
                b.holes[i:i + 1] = parts
                if copy and h.req:
                    self._lost_in_order(b, h.req, seq)
                    if self.baudrate:
                        self._reanchor(b, h.req, seq, now)
                return True
        return False

    def _lost_in_order(self, b: _Board, req: int, seq: int) -> None:
        # The board answers RESENDs in the order they come, copies in sequence order, through one
        # FIFO to the UART.  A copy of *seq* asked for by request *req* arriving means every copy
        # queued before it has been sent: those not here (earlier in the same request, or from an
        # earlier request) were damaged or dropped.  They are due again now, instead of holding
        # the request budget until the timeout -- on a line that damages most packets this is
        # what keeps the line busy with useful copies.
        for h in b.holes:
            if h.req and h.due is not None and (h.req < req or (h.req == req and h.last < seq)):
                h.due = None

    def _take(self, b: _Board, first: int, last: int) -> list[tuple[int, int]]:
        """Remove [first, last] from the holes; return the sub-ranges that were missing."""
        taken = []
        out = []
        for h in b.holes:
            if h.last < first or h.first > last:
                out.append(h)
                continue
            lo, hi = max(h.first, first), min(h.last, last)
            taken.append((lo, hi))
            if h.first < lo:
                out.append(_Hole(h.first, lo - 1, h.tries, h.due, h.req))
            if hi < h.last:
                out.append(_Hole(hi + 1, h.last, h.tries, h.due, h.req))
        b.holes = out
        return taken

    def _give_up_range(self, b: _Board, first: int, last: int, reason: str) -> None:
        # Marks are one entry per sequence number, but only for ranges bounded by the ring
        # capacity / max_hole_span / MAX_RESEND; the "beyond_ring" part is recorded as one entry.
        if last < first:
            return
        self.counters["packets_unrecoverable"] += last - first + 1
        b.held[first] = (_LOST, last)
        b.lost_reason[first] = reason
        self._log("gap", logging.WARNING, "link: board %d epoch %d: packets %d..%d unrecoverable (%s)",
                  b.board_id, b.epoch, first, last, reason)

    def _unavailable(self, b: _Board, payload: bytes) -> None:
        try:
            first, last = link.unpack_range(payload)
        except link.LinkError:
            return
        self.counters["unavailable_received"] += 1
        # The board's ring holds one contiguous run of sequence numbers ending at its newest
        # packet (firmware/ring.py): if `last` is gone, so is everything before it.
        self._give_up_through(b, last, "unavailable")

    def _give_up_through(self, b: _Board, last: int, reason: str) -> None:
        """Give up every missing seq of the board up to *last* (inclusive)."""
        merged: list[list[int]] = []
        for lo, hi in self._take(b, b.next_seq, last):
            if merged and merged[-1][1] + 1 == lo:
                merged[-1][1] = hi
            else:
                merged.append([lo, hi])
        for lo, hi in merged:
            self._give_up_range(b, lo, hi, reason)

    # ------------------------------------------------------------ delivery

    def _deliver(self, b: _Board) -> None:
        while True:
            item = b.held.pop(b.next_seq, None)
            if item is None:
                break
            seq = b.next_seq
            if item is _LOST or item[0] is _LOST:
                last = seq if item is _LOST else item[1]
                reason = b.lost_reason.pop(seq, "lost")
                self._gap_open(b, seq, last, reason)
                b.next_seq = last + 1
                continue
            dig, ev = item
            b.next_seq = seq + 1
            self._remember(b, seq, dig)
            if ev is None:
                continue
            self._emit(b, ev)
        if self.auto_ack:
            b.acked = b.next_seq - 1
        self._check_overflow(b)

    def _remember(self, b: _Board, seq: int, dig: bytes) -> None:
        b.digests[seq] = dig
        b.digest_order.append(seq)
        if len(b.digest_order) > self.dup_window:
            b.digests.pop(b.digest_order.popleft(), None)

    def _emit(self, b: _Board, ev: Any) -> None:
        if isinstance(ev, DataBlock):
            self._gap_close(b, ev.t_first_us, ev)
            b.last_data = ev
            self.counters["data_blocks"] += 1
            self.counters["samples_delivered"] += ev.samples.size
        elif isinstance(ev, Soh):
            self.counters["soh"] += 1
            b.ring_capacity = ev.ring_capacity or b.ring_capacity
        elif isinstance(ev, Hello):
            self.counters["hellos"] += 1
            b.hello = ev
            b.ring_capacity = ev.ring_capacity or b.ring_capacity
        elif isinstance(ev, Reply):
            self.counters["replies"] += 1
            pending = self._commands.get(ev.cmd_seq)
            if pending is not None and pending[0] == b.board_id and pending[1] == ev.command:
                del self._commands[ev.cmd_seq]
                ev = Reply(ev.board_id, ev.epoch, ev.seq, ev.cmd_seq, ev.command, ev.status, ev.result,
                           True, self._clock.monotonic() - pending[2])
            else:
                self.counters["replies_unmatched"] += 1
        self._events.append(ev)

    def _gap_open(self, b: _Board, first: int, last: int, reason: str) -> None:
        if b.gap_start is None:
            d = b.last_data
            # Nothing delivered yet in a resumed session: the gap starts where the ACK point ended.
            b.gap_start = (d.t_end_us, d.channel_ids, d.rate_mhz) if d else (b.resume_t_us, (), None)
        b.pending_gaps.append((first, last, reason))

    def _gap_close(self, b: _Board, end_us: int | None, after: DataBlock | None) -> None:
        if not b.pending_gaps:
            return
        start_us, chans, rate = b.gap_start
        if not chans and after is not None:
            chans, rate = after.channel_ids, after.rate_mhz
        if not chans and b.hello is not None:
            # No data on either side in this epoch: the layout the board announced.
            chans, rate = b.hello.channel_ids, b.hello.rate_mhz
        for first, last, reason in b.pending_gaps:
            self.counters["gaps_reported"] += 1
            self._events.append(GapReport(b.board_id, b.epoch, first, last, start_us, end_us, chans, rate, reason))
        b.pending_gaps.clear()
        b.gap_start = None

    def _check_overflow(self, b: _Board) -> None:
        # Bounded memory: if too much is held behind a hole, give the oldest hole up.
        while len(b.held) > self.max_held and b.holes:
            h = b.holes.pop(0)
            self.counters["held_overflow"] += 1
            self._give_up_range(b, h.first, h.last, "overflow")
            self._deliver(b)

    def _end_epoch(self, b: _Board, reason: str) -> None:
        if b.hold_from is not None:
            # Held back and not yet asked for again: gone with the old epoch's ring.
            if b.highest >= b.hold_from:
                b.holes.append(_Hole(b.hold_from, b.highest))
            b.hold_from = None
        for h in b.holes:
            self._give_up_range(b, h.first, h.last, reason)
        b.holes = []
        # Deliver everything held, skipping over nothing: holes are all marked now.
        while b.held:
            if b.next_seq not in b.held:
                b.next_seq = min(b.held)
            self._deliver(b)
        self._gap_close(b, None, None)

    def _restart(self, b: _Board, hdr: link.Header, reason: str) -> None:
        old, old_boot = b.epoch, b.boot
        self._end_epoch(b, "restart")
        self.counters["board_restarts"] += 1
        if reason == "new_run":
            self.counters["new_runs"] += 1
            self._log("restart", logging.WARNING, "link: board %d is a new run (epoch %d boot %d -> epoch %d "
                      "boot %d): a replaced board or a wiped epoch; its data is taken from seq 0",
                      b.board_id, old, old_boot, hdr.epoch, hdr.boot)
        else:
            self._log("restart", logging.WARNING, "link: board %d restarted (epoch %d -> %d)", b.board_id, old,
                      hdr.epoch)
        self._events.append(BoardRestarted(b.board_id, old, hdr.epoch, reason, old_boot, hdr.boot))
        ring = b.ring_capacity
        b.__init__(b.board_id, hdr.epoch, 0, -1)
        b.ring_capacity = ring
        b.boot = hdr.boot
        # A rebooted board is back at its default packet length (its HELLO will say so).
        self._shortened.discard(b.board_id)
        self._packet_ms.pop(b.board_id, None)

    # ------------------------------------------------------------ output

    def _send(self, board_id: int, epoch: int, ptype: int, payload: bytes, boot: int = 0) -> int:
        seq = self._tx_seq
        self._tx_seq = (self._tx_seq + 1) % SEQ_MOD
        self._out += link.encode(self._auth, ptype, board_id, epoch, seq, payload, 0, boot)
        return seq

    def _service(self) -> None:
        now = self._clock.monotonic()
        for b in self._boards.values():
            if b.release_asked:
                self._release(b)
            self._service_holes(b, now)
            self._deliver(b)
            if b.acked > b.ack_sent and (b.ack_sent_at is None or now - b.ack_sent_at >= self.ack_interval):
                self._send(b.board_id, b.epoch, link.T_ACK, link.pack_ack(b.acked), b.boot)
                b.ack_sent, b.ack_sent_at = b.acked, now
                self.counters["acks_sent"] += 1
        for seq, (bid, code, t0) in list(self._commands.items()):
            if now - t0 >= self.command_timeout:
                del self._commands[seq]
                self.counters["command_timeouts"] += 1
                if self._adapt_cmd is not None and self._adapt_cmd[0] == seq:
                    self._adapt_cmd = None      # lost on the line: decided again from the window
                    continue
                self._events.append(CommandTimeout(bid, seq, code))
        if self.adapt_packet_ms:
            self._adapt()

    def _adapt(self) -> None:
        if self._adapt_cmd is not None or len(self._outcomes) < self.adapt_window:
            return
        b = self._board_for(None)
        h = b.hello_rx if b is not None else None
        if h is None or not h.capabilities & link.C_SET_PACKET_MS or not h.rate_mhz:
            return
        current = self._packet_ms.get(b.board_id)
        rejected = sum(self._outcomes) / len(self._outcomes)
        target = None
        if rejected > self.adapt_high and current:
            # Half as long, on the board's sample grid (a whole number of samples), not below the floor.
            rate = h.rate_mhz
            grain = 1_000_000 // math.gcd(rate, 1_000_000)
            target = max(current // 2 // grain * grain, -(-self.min_packet_ms // grain) * grain)
            if target >= current:
                return
        elif rejected < self.adapt_low and b.board_id in self._shortened:
            target = 0
        if target is None:
            return
        seq = self.set_packet_ms(target, board_id=b.board_id)
        self._adapt_cmd = (seq, b.board_id, target)
        self._adapt_sent[seq] = target
        while len(self._adapt_sent) > 64:
            del self._adapt_sent[next(iter(self._adapt_sent))]
        self.counters["packet_ms_commands"] += 1
        self._log("adapt", logging.WARNING, "link: board %d: %.0f %% of the last %d frames rejected: "
                  "asking for %s DATA packets", b.board_id, 100 * rejected, len(self._outcomes),
                  "%d ms" % target if target else "its default")

    def _service_holes(self, b: _Board, now: float) -> None:
        if any(h.first < b.ring_floor for h in b.holes):
            self._give_up_through(b, b.ring_floor - 1, "beyond_ring")
        # Last resort: give up what has been asked for very often without progress -- but never
        # while the board is certain to still hold it (within the newest `ring_capacity` packets
        # its HELLO/SOH guarantee): then the line is the problem, and asking again is the cure.
        keep = []
        sure = b.ring_guaranteed
        for h in b.holes:
            if h.due is not None and now >= h.due and h.tries >= self.max_resend_tries \
                    and (sure is None or b.highest - h.last >= sure):
                self._give_up_range(b, h.first, h.last, "timeout")
            else:
                keep.append(h)
        b.holes = keep
        # Pacing: the copies asked for and not yet sent must fit the board's transmit queue beside
        # its live packets, or the board drops them and they must be asked for again (a catch-up
        # after a long outage used to ask for 128 packets at once).  This runs after every read, so
        # the next chunk goes out as soon as there is room.
        line = self.baudrate is not None
        if line:
            # Line model: the board sends the copies in the order asked, at the line's rate, so
            # what is still queued is known from the clock; a request whose copies should have
            # arrived and did not was lost (its copies or the request itself) and is asked again
            # after the margin -- the line stays busy instead of idling out a fixed timeout.
            rate = self._copy_rate(b)
            room_bytes = self.max_inflight_bytes - max(0.0, b.line_free - now) * rate
            while b.reqs and b.reqs[0][3] + self.resend_margin < now:
                b.reqs.popleft()        # its deadline has passed: nothing left to anchor on
        else:
            cap = self.inflight_limit(b.board_id)
            inflight = sum(h.size for h in b.holes if h.due is not None and now < h.due)
        # Line model: on a bad line, cheap packets first.  A copy survives with p = (1-q)^size, so
        # the long packets sent before the edge shortened them (still in the ring) cost the line
        # many times more per packet recovered than the short ones (at BER 1e-4 / 1 % dropped a
        # 1-s copy gets through with p ~ 3e-5, a 250-ms one with p ~ 0.05): they are asked for
        # only with the room the shorter ones leave, oldest first within each class.
        big = 1.5 * self._packet_bytes(b, b.highest) if line and self._shortened_now(b) else None
        for cheap in ((True, False) if big else (None,)):
            out = []
            for h in b.holes:
                due = h.due is None or now >= h.due
                if due and cheap is not None and (self._packet_bytes(b, h.first) <= big) != cheap:
                    due = False
                if line:
                    room = self._fit(b, h.first, min(h.last, h.first + link.MAX_RESEND - 1), room_bytes) if due else 0
                else:
                    room = min(cap - inflight, link.MAX_RESEND)
                if not due or room <= 0:
                    out.append(h)
                    continue
                # Oldest part first: it is the next to be evicted from the board's ring.  (If it is
                # gone already, the board's UNAVAILABLE names everything below its oldest packet, so
                # a long outage is still settled in one round trip.)
                if h.size > room:
                    ask = _Hole(h.first, h.first + room - 1, h.tries, h.due, h.req)
                    out.append(ask)
                    out.append(_Hole(ask.last + 1, h.last, h.tries, h.due, h.req))
                else:
                    ask = h
                    out.append(h)
                ask.tries += 1
                self._req_no += 1
                ask.req = self._req_no
                if line:
                    nbytes = self._range_bytes(b, ask.first, ask.last)
                    b.line_free = max(now, b.line_free) + nbytes / rate
                    ask.due = b.line_free + self.resend_margin
                    room_bytes -= nbytes
                    b.reqs.append([ask.req, ask.first, ask.last, b.line_free])
                else:
                    ask.due = now + self.resend_timeout
                    inflight += ask.size
                self._send(b.board_id, b.epoch, link.T_RESEND, link.pack_range(ask.first, ask.last), b.boot)
                self.counters["resend_requests"] += 1
                self.counters["resend_packets_requested"] += ask.size
            b.holes = out

    # ------------------------------------------------------------ line model (baudrate given)

    def resend_deadline(self, board_id: int | None = None) -> float | None:
        """Earliest time an outstanding RESEND of the board is due again (None: none outstanding)."""
        b = self._board_for(board_id)
        dues = [h.due for h in b.holes if h.due is not None] if b is not None else []
        return min(dues) if dues else None

    def _shortened_now(self, b: _Board) -> bool:
        return b.board_id in self._shortened

    def _copy_rate(self, b: _Board) -> float:
        """Bytes per second the board's copies get: the line (10 bits a byte at 8N1) less the
        board's live DATA stream, which shares the same queue (at least a tenth of the line)."""
        line = self.baudrate / 10
        ms = self._packet_ms.get(b.board_id)
        live = self._packet_bytes(b, b.highest) * 1000 / ms if ms else 0.0
        return max(line - live, line / 10)

    def _size_seen(self, b: _Board, seq: int, size: int) -> None:
        i = bisect.bisect_right(b.sizes, seq, key=lambda s: s[0]) - 1
        if i < 0:
            # No HELLO known before it: a segment from here on; what came before is of a length
            # never seen (the board's default before a lost HELLO, often longer).
            b.sizes.insert(0, [seq, size, 0, 1])
        else:
            b.sizes[i][1] = max(b.sizes[i][1], size)
            b.sizes[i][3] += 1

    def _size_segment(self, b: _Board, h: Hello) -> None:
        # A HELLO announces a new packet length from its own seq on; the packets before it keep
        # theirs in the ring (after a shortening, the old long ones are still asked for).
        n = len(h.channel_ids) or 1
        worst = wire_size(link.data_size(h.samples_per_packet, n, [link.ENC_I32] * n)) if h.samples_per_packet else 0
        i = bisect.bisect_right(b.sizes, h.seq, key=lambda s: s[0])
        if i and b.sizes[i - 1][0] == h.seq:
            b.sizes[i - 1][2] = worst
        else:
            b.sizes.insert(i, [h.seq, 0, worst, 0])
            del b.sizes[:-64]                     # bounded: only the recent segments matter

    def _packet_bytes(self, b: _Board, seq: int) -> int:
        """Line bytes of packet *seq*: the largest DATA frame seen in its packet-length segment,
        else the worst case its HELLO implies, else the largest frame possible.  (A packet of a
        length the decoder never saw is not assumed as short as the current ones: on a bad line
        the board's first, long packets are often known only by their sequence numbers, and
        under-counting them overfilled the board's queue.)"""
        i = bisect.bisect_right(b.sizes, seq, key=lambda s: s[0]) - 1
        if i >= 0:
            _, seen, worst, count = b.sizes[i]
            # Difference-packed sizes vary about 2x with the signal: the largest of a few frames
            # is no bound (a quiet d8 packet is half a busy d16 one), so the worst case stands
            # until enough frames of the segment were seen.
            if seen and (count >= _SIZE_SAMPLES or not worst):
                return max(seen, worst) if count < _SIZE_SAMPLES else seen
            if worst:
                return worst
        return link.MAX_ENCODED + link.FRAME_OVERHEAD

    def _range_bytes(self, b: _Board, first: int, last: int) -> int:
        return sum(self._packet_bytes(b, s) for s in range(first, last + 1))

    def _fit(self, b: _Board, first: int, last: int, room_bytes: float) -> int:
        """How many packets from *first* (up to *last*) fit in *room_bytes*."""
        n = 0
        for s in range(first, last + 1):
            room_bytes -= self._packet_bytes(b, s)
            if room_bytes < 0:
                break
            n += 1
        return n

    def _reanchor(self, b: _Board, req: int, seq: int, now: float) -> None:
        # A copy of *seq* (asked for by request *req*) has just arrived: everything queued before
        # it on the board has been sent, and what follows it is due at the line's rate from now.
        # This corrects the model for live packets, SOH and late starts.
        reqs = b.reqs
        while reqs and reqs[0][0] < req:
            reqs.popleft()
        if not reqs or reqs[0][0] != req:
            return
        # (The copy may answer an earlier request for the same seq, asked again because it was
        # overdue; the model then runs ahead of the board by that much.  The budget is half the
        # board's queue, which absorbs it; the soak shows no copy dropped.)
        rate = self._copy_rate(b)
        t = now
        start: dict[int, tuple[float, int]] = {}
        for r in reqs:
            lo = seq + 1 if r[0] == req else r[1]
            start[r[0]] = (t, lo)
            t += self._range_bytes(b, lo, r[2]) / rate
            r[3] = t
        b.line_free = t
        for h in b.holes:
            s = start.get(h.req)
            if s is not None and h.due is not None and h.last >= s[1]:
                h.due = s[0] + self._range_bytes(b, s[1], h.last) / rate + self.resend_margin
        if seq >= reqs[0][2]:
            reqs.popleft()

    def inflight_limit(self, board_id: int | None = None) -> int:
        """Packets that may be asked for and outstanding at a time for this board: the byte budget
        over the largest DATA frame seen since its last HELLO (or, before any, the worst case
        HELLO announces), within ``max_inflight``; at least one."""
        b = self._board_for(board_id)
        size = b.frame_bytes if b is not None else 0
        if not size and b is not None and b.hello is not None and b.hello.samples_per_packet:
            h = b.hello
            size = wire_size(link.data_size(h.samples_per_packet, len(h.channel_ids) or 1,
                                            [link.ENC_I32] * (len(h.channel_ids) or 1)))
        if not size:
            size = link.MAX_ENCODED + link.FRAME_OVERHEAD
        return max(1, min(self.max_inflight, self.max_inflight_bytes // size))

    def _board_for(self, board_id: int | None) -> _Board | None:
        if board_id is None:
            board_id = self.board_id
        if board_id is None:
            return next(iter(self._boards.values()), None) if len(self._boards) == 1 else None
        return self._boards.get(board_id)
