"""Per-frame-set reception state of a CD-1.1 data consumer: lowest, highest and the gap list.

Owns the consumer side of CD-1.1 §6.2/§6.3 (``shared/specs/cd11.md``): which sequence numbers of a
frame set (``creator:destination``) have been received, expressed as

* ``lowest`` / ``highest`` -- the smallest and largest sequence number received (0 / -1 while the
  set is empty, as on the wire);
* ``gaps`` -- the missing runs strictly inside that range, each ``[first missing, next present)``
  (end exclusive), sorted, disjoint and never adjacent.

That triple is exactly an Acknack payload; the provider resends what the gaps list (and what lies
outside ``[lowest, highest]``, the "implied gaps").  Pure and transport-independent: no I/O, no
clock (callers pass ``now``), so the MQTT relay and a later CD-1.1/TCP consumer share it
(ROADMAP item 4).  It does not own persistence (``relay.state``), deduplication of frame *bytes*
(``relay.archive``) nor the acknack frame encoding (``ims_station.cd11``).

Bounds, as real consumers do (spec §6.3):

* **cap** on the gap count (USGS: 4000).  When a new gap would exceed it, the two neighbouring gaps
  with the fewest received frames between them are merged.  This over-reports (the provider resends
  some frames we already hold, which the archive counts as duplicates) and never under-reports:
  dropping a gap instead would tell the station to delete frames we never received.
* **expiry** of gaps older than ``gap_expiry_s`` (GMS: configurable days): a gap the provider could
  not fill by then is given up (its frames have left the station's outbox).  The caller counts the
  frames given up; they are the only way frames are ever "lost" by this module.

No library implements CD-1.1 gap lists (GMS and USGS have their own, in Java); an interval list with
``bisect`` over at most a few thousand gaps is all it takes.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

DEFAULT_MAX_GAPS = 4000            # USGS: "CD1.1 C code seems to think this is the upper bound"
DEFAULT_GAP_EXPIRY_S = 8 * 86400   # a day beyond the edge outbox's default 7-day retention


class Arrival(Enum):
    """How a sequence number relates to what was held before it arrived."""

    FIRST = "first"          # the set was empty
    NEXT = "next"            # highest + 1: in order
    AHEAD = "ahead"          # beyond highest + 1: a new gap opened below it
    BELOW = "below"          # below lowest: back-fill of older frames (may open a gap above it)
    FILLED = "filled"        # inside a gap: a resend or late frame arrived
    SEEN = "seen"            # inside [lowest, highest] and not missing: already held


@dataclass
class Gap:
    start: int        # first missing sequence number
    end: int          # next present sequence number (exclusive)
    since: float      # when the gap was first known (caller's clock, seconds)

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass
class AddResult:
    arrival: Arrival
    new_gap: bool = False        # a gap appeared: send an acknack soon
    merged: int = 0              # frames held but now reported missing because the cap was hit


@dataclass
class FrameSetState:
    """Reception state of one frame set.  ``sequence_offset`` is relay metadata kept with it:
    sequence number minus the frame's nominal-time index, learned from the first frame (replay
    detection, ``relay.verify``)."""

    name: str
    lowest: int | None = None
    highest: int | None = None
    gaps: list[Gap] = field(default_factory=list)
    max_gaps: int = DEFAULT_MAX_GAPS
    gap_expiry_s: float = DEFAULT_GAP_EXPIRY_S
    sequence_offset: int | None = None
    # sorted starts of ``gaps`` (kept in step with it) for bisect
    _starts: list[int] = field(default_factory=list, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.max_gaps < 1:
            raise ValueError("max_gaps must be >= 1")
        self.gaps.sort(key=lambda g: g.start)
        self._starts = [g.start for g in self.gaps]

    # -- queries -----------------------------------------------------------------------------------
    @property
    def empty(self) -> bool:
        return self.lowest is None

    @property
    def station(self) -> str:
        """The frame creator (``creator:destination`` -> ``creator``)."""
        return self.name.partition(":")[0]

    def missing(self) -> int:
        """Number of sequence numbers reported missing inside [lowest, highest]."""
        return sum(g.size for g in self.gaps)

    def received_count(self) -> int:
        if self.lowest is None:
            return 0
        return self.highest - self.lowest + 1 - self.missing()

    def holds(self, seq: int) -> bool:
        """True if *seq* counts as received (inside the range and not in a gap)."""
        if self.lowest is None or not self.lowest <= seq <= self.highest:
            return False
        return self._gap_index(seq) is None

    def acknack_fields(self) -> tuple[int, int, list[tuple[int, int]]]:
        """(lowest, highest, gaps) as an Acknack carries them; (0, -1, []) while empty."""
        if self.lowest is None:
            return 0, -1, []
        return self.lowest, self.highest, [(g.start, g.end) for g in self.gaps]

    # -- updates -----------------------------------------------------------------------------------
    def add(self, seq: int, now: float) -> AddResult:
        """Record that *seq* was received (durably archived) at *now*."""
        if self.lowest is None:
            self.lowest = self.highest = seq
            return AddResult(Arrival.FIRST)
        if seq == self.highest + 1:
            self.highest = seq
            return AddResult(Arrival.NEXT)
        if seq > self.highest:
            merged = self._insert(Gap(self.highest + 1, seq, now))
            self.highest = seq
            return AddResult(Arrival.AHEAD, new_gap=True, merged=merged)
        if seq < self.lowest:
            merged = 0
            new_gap = seq + 1 < self.lowest
            if new_gap:
                merged = self._insert(Gap(seq + 1, self.lowest, now))
            self.lowest = seq
            return AddResult(Arrival.BELOW, new_gap=new_gap, merged=merged)
        i = self._gap_index(seq)
        if i is None:
            return AddResult(Arrival.SEEN)
        g = self.gaps[i]
        # Split [start, end) around seq; both halves keep the original 'since' (expiry is
        # counted from when the frames were first known missing).
        parts = [p for p in (Gap(g.start, seq, g.since), Gap(seq + 1, g.end, g.since)) if p.size > 0]
        self.gaps[i:i + 1] = parts
        self._starts[i:i + 1] = [p.start for p in parts]
        merged = self._enforce_cap() if len(parts) == 2 else 0
        return AddResult(Arrival.FILLED, merged=merged)

    def expire(self, now: float) -> list[Gap]:
        """Give up gaps older than ``gap_expiry_s``; return them (the caller counts their frames)."""
        limit = now - self.gap_expiry_s
        gone = [g for g in self.gaps if g.since < limit]
        if gone:
            self.gaps = [g for g in self.gaps if g.since >= limit]
            self._starts = [g.start for g in self.gaps]
        return gone

    def reset(self) -> None:
        """Forget everything (the provider restarted its numbering)."""
        self.lowest = self.highest = None
        self.gaps.clear()
        self._starts.clear()
        self.sequence_offset = None

    # -- persistence -------------------------------------------------------------------------------
    def to_record(self) -> dict[str, Any]:
        """JSON-ready dict (state stores keep this)."""
        return {"name": self.name, "lowest": self.lowest, "highest": self.highest,
                "gaps": [[g.start, g.end, g.since] for g in self.gaps],
                "sequence_offset": self.sequence_offset}

    @classmethod
    def from_record(cls, rec: dict[str, Any], **kw: Any) -> "FrameSetState":
        gaps = [Gap(int(a), int(b), float(t)) for a, b, t in rec.get("gaps") or []]
        return cls(rec["name"], rec.get("lowest"), rec.get("highest"), gaps,
                   sequence_offset=rec.get("sequence_offset"), **kw)

    # -- internals ---------------------------------------------------------------------------------
    def _gap_index(self, seq: int) -> int | None:
        i = bisect.bisect_right(self._starts, seq) - 1
        if i >= 0 and seq < self.gaps[i].end:
            return i
        return None

    def _insert(self, gap: Gap) -> int:
        # New gaps open only at either end of the range, next to a received frame, so they never
        # touch an existing gap.
        i = bisect.bisect_left(self._starts, gap.start)
        self.gaps.insert(i, gap)
        self._starts.insert(i, gap.start)
        return self._enforce_cap()

    def _enforce_cap(self) -> int:
        merged = 0
        while len(self.gaps) > self.max_gaps:
            if len(self.gaps) < 2:  # max_gaps >= 1, so unreachable; keeps the loop obviously finite
                break
            # Merge the neighbours separated by the fewest received frames (the cheapest resend).
            j = min(range(len(self.gaps) - 1), key=lambda k: self.gaps[k + 1].start - self.gaps[k].end)
            a, b = self.gaps[j], self.gaps[j + 1]
            merged += b.start - a.end
            self.gaps[j:j + 2] = [Gap(a.start, b.end, min(a.since, b.since))]
            self._starts[j:j + 2] = [a.start]
        return merged
