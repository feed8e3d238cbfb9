"""Continuous per-channel streams from the link decoder's :class:`~ims_station.edge.ingest.DataBlock` s.

Owns: continuity in *time* (the next sample of a channel is due at the end of its last sample;
a block starting within half a sample period of that is contiguous), the accounting of gaps and
overlaps (counts, durations, the exact intervals), segments carrying time quality and status flags,
and per-station multi-channel chunks (numpy int32) for the later stages (CD-1.1 frames every 10 s,
STA/LTA triggers).

Does not own: sequence numbers, RESEND and link gap reports (``edge/ingest.py``; a GapReport tells
*why* samples are missing, this module sees *that* they are), framing into CD-1.1, storage.

Overlaps (a board clock stepped back, a board re-sending after reboot) keep the samples already
delivered: the overlapping head of the new block is trimmed and counted, so downstream stages see
each instant once.  Channels are keyed by SEED code ``NET.STA.LOC.CHA`` when the station config
gives one for ``(board id, channel id)``, else by ``"<board id>/<channel id>"``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np

from .ingest import DataBlock, GapReport, SampleSpan, sample_offset_us

MAX_INTERVALS = 10_000   # exact intervals kept per channel (counts and durations are never capped)


@dataclass(slots=True)
class Segment:
    """A run of contiguous samples with one rate, time quality and status."""
    start_us: int
    end_us: int                   # end of the last sample (= next sample due)
    rate_mhz: int
    samples: int
    time_quality: int
    status: int
    clip: bool = False


@dataclass(frozen=True, slots=True)
class Interval:
    start_us: int
    end_us: int

    @property
    def duration_us(self) -> int:
        return self.end_us - self.start_us


@dataclass(slots=True)
class ChannelStream:
    key: str                      # SEED code or "board/channel"
    station: str
    board_id: int
    channel_id: int
    rate_mhz: int = 0
    next_us: int | None = None
    samples: int = 0
    gaps: int = 0
    gap_us: int = 0
    overlaps: int = 0
    overlap_us: int = 0
    samples_dropped: int = 0      # trimmed as overlap
    gap_intervals: deque = field(default_factory=lambda: deque(maxlen=MAX_INTERVALS))
    overlap_intervals: deque = field(default_factory=lambda: deque(maxlen=MAX_INTERVALS))
    segments: deque = field(default_factory=lambda: deque(maxlen=MAX_INTERVALS))

    def summary(self) -> dict[str, Any]:
        return {"key": self.key, "station": self.station, "samples": self.samples, "rate_mhz": self.rate_mhz,
                "gaps": self.gaps, "gap_us": self.gap_us, "overlaps": self.overlaps,
                "overlap_us": self.overlap_us, "samples_dropped": self.samples_dropped,
                "segments": len(self.segments), "next_us": self.next_us}


@dataclass(frozen=True, slots=True, eq=False)
class Chunk(SampleSpan):
    """Samples of several channels of one station, aligned in time: ``samples[i]`` is ``codes[i]``."""
    station: str
    codes: tuple[str, ...]
    t_first_us: int
    rate_mhz: int
    samples: np.ndarray           # int32 (channels, n)
    time_quality: int
    status: int
    clip_mask: int                # bit i: codes[i] clipped in this chunk
    contiguous: bool              # True: continues the previous chunk of these channels without gap


def parse_code(code: str) -> tuple[str, str, str, str]:
    parts = code.split(".")
    if len(parts) != 4:
        raise ValueError(f"SEED code {code!r} is not NET.STA.LOC.CHA")
    return parts[0], parts[1], parts[2], parts[3]


class StreamAssembler:
    """Feed it events from :class:`~ims_station.edge.ingest.LinkDecoder`; get :class:`Chunk` s back.

    ``codes`` maps ``(board_id, channel_id)`` to a SEED code ``NET.STA.LOC.CHA``.
    """

    def __init__(self, codes: Mapping[tuple[int, int], str] | None = None) -> None:
        self._codes = dict(codes or {})
        self.streams: dict[str, ChannelStream] = {}
        self.link_gaps: list[GapReport] = []
        self.link_gap_count = 0

    def add_codes(self, codes: Mapping[tuple[int, int], str]) -> None:
        """Name more channels (e.g. once a board's id is known).  Streams already open keep their key."""
        self._codes.update(codes)

    def push(self, event: Any) -> list[Chunk]:
        if isinstance(event, DataBlock):
            return self._block(event)
        if isinstance(event, GapReport):
            self.link_gap_count += 1
            if len(self.link_gaps) < MAX_INTERVALS:
                self.link_gaps.append(event)
        return []

    def push_all(self, events: Iterable[Any]) -> list[Chunk]:
        out: list[Chunk] = []
        for ev in events:
            out.extend(self.push(ev))
        return out

    def _stream(self, board_id: int, ch: int) -> ChannelStream:
        code = self._codes.get((board_id, ch))
        key = code if code else f"{board_id}/{ch}"
        s = self.streams.get(key)
        if s is None:
            station = ".".join(parse_code(code)[:2]) if code else f"board{board_id}"
            s = self.streams[key] = ChannelStream(key, station, board_id, ch)
        return s

    def _block(self, blk: DataBlock) -> list[Chunk]:
        n = blk.n_samples
        rate = blk.rate_mhz
        half = sample_offset_us(1, rate) / 2
        # Per channel: how many leading samples to drop (overlap), and whether it continues.
        groups: dict[tuple[str, int, bool], list[int]] = {}
        for slot, ch in enumerate(blk.channel_ids):
            s = self._stream(blk.board_id, ch)
            skip = 0
            contiguous = False
            if s.next_us is not None:
                delta = blk.t_first_us - s.next_us
                if abs(delta) <= half:
                    contiguous = True
                elif delta > 0:
                    s.gaps += 1
                    s.gap_us += delta
                    s.gap_intervals.append(Interval(s.next_us, blk.t_first_us))
                else:
                    end = min(s.next_us, blk.t_end_us)
                    s.overlaps += 1
                    s.overlap_us += end - blk.t_first_us
                    s.overlap_intervals.append(Interval(blk.t_first_us, end))
                    # First sample at or after next_us (within half a period) is kept.
                    while skip < n and blk.t_first_us + sample_offset_us(skip, rate) < s.next_us - half:
                        skip += 1
                    s.samples_dropped += skip
                    contiguous = skip < n
            if skip >= n:
                continue
            t0 = blk.t_first_us + sample_offset_us(skip, rate)
            kept = n - skip
            clip = bool(blk.clip_mask >> slot & 1)
            seg = s.segments[-1] if s.segments else None
            if (contiguous and seg is not None and seg.rate_mhz == rate and seg.time_quality == blk.time_quality
                    and seg.status == blk.status):
                seg.samples += kept
                seg.end_us = blk.t_end_us
                seg.clip |= clip
            else:
                s.segments.append(Segment(t0, blk.t_end_us, rate, kept, blk.time_quality, blk.status, clip))
            s.rate_mhz = rate
            s.samples += kept
            s.next_us = blk.t_end_us if s.next_us is None else max(s.next_us, blk.t_end_us)
            groups.setdefault((s.station, skip, contiguous), []).append(slot)

        chunks = []
        for (station, skip, contiguous), slots in groups.items():
            codes = tuple(self._stream(blk.board_id, blk.channel_ids[i]).key for i in slots)
            clip = 0
            for j, slot in enumerate(slots):
                if blk.clip_mask >> slot & 1:
                    clip |= 1 << j
            samples = blk.samples[slots, skip:]
            chunks.append(Chunk(station, codes, blk.t_first_us + sample_offset_us(skip, rate), rate,
                                np.ascontiguousarray(samples), blk.time_quality, blk.status, clip, contiguous))
        return chunks

    def summary(self) -> dict[str, Any]:
        return {"channels": {k: s.summary() for k, s in self.streams.items()},
                "link_gaps": self.link_gap_count}
