"""miniSEED export of archived CD-1.1 frames (one file per station, channel and UTC day).

Owns the mapping CD-1.1 subframe -> SEED trace (network from the caller, station = subframe site,
location and channel from the channel description, sample rate = samples / subframe time length)
and the file naming ``{NET}.{STA}.{LOC}.{CHA}.{YYYY}.{DDD}.mseed``.  It does not own reading the
archive (``relay.archive`` hands it raw frames) nor decoding samples (``ims_station.cd11``).

Records are packed by ``pymseed`` (libmseed, the FDSN reference implementation), not by hand:
Steim-2 by default, miniSEED format version 2 (what ObsPy and most data centres read), falling back
to uncompressed int32 for a channel whose differences Steim-2 cannot hold.  Samples are exported
exactly as decoded (int32 counts), so a reader gets them back sample-identical.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Iterable

import numpy as np

from ims_station.relay.errors import ExportError

log = logging.getLogger(__name__)

ENCODINGS = ("steim2", "steim1", "int32")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass
class _Segment:
    start_ns: int
    rate: float
    samples: np.ndarray


@dataclass
class _Channel:
    segments: list[_Segment] = field(default_factory=list)


def _start_ns(text: str) -> int:
    from ims_station.cd11.timefmt import to_datetime

    # Integer arithmetic (no float epoch seconds, whose rounding could move a sample by 1 ns).
    return (to_datetime(text) - _EPOCH) // timedelta(microseconds=1) * 1000


def export_frames(station: str, day: date, frames: Iterable[bytes], out_dir: str | Path, *,
                  network: str = "XX", encoding: str = "steim2", record_length: int = 4096,
                  channels: Iterable[str] | None = None) -> list[Path]:
    """Write miniSEED files for the data frames in *frames* (raw CD-1.1 bytes, any order);
    return the files written.  *channels* restricts the export to these channel codes (e.g. BHZ)."""
    import pymseed

    from ims_station import cd11

    if encoding not in ENCODINGS:
        raise ExportError(f"unknown miniSEED encoding {encoding!r} (known: {', '.join(ENCODINGS)})")
    wanted = set(channels) if channels else None
    by_channel: dict[tuple[str, str, str], _Channel] = {}
    for raw in frames:
        try:
            frame, _ = cd11.parse_frame(raw)
        except cd11.Cd11Error as err:  # the archive holds verified frames; a bad one is disk damage
            raise ExportError(f"{station} {day}: archived frame unreadable: {err}") from err
        if not isinstance(frame, cd11.DataFrame):
            continue
        for sf in frame.subframes:
            if wanted is not None and sf.channel not in wanted:
                continue
            if sf.nsamples <= 0 or sf.time_length_ms <= 0:
                continue
            try:
                x = np.ascontiguousarray(sf.samples(), dtype=np.int32)
            except cd11.Cd11Error as err:
                raise ExportError(f"{station} {day}: {sf.site}/{sf.channel}: {err}") from err
            rate = sf.nsamples * 1000.0 / sf.time_length_ms
            by_channel.setdefault((sf.site, sf.location, sf.channel), _Channel()).segments.append(
                _Segment(_start_ns(sf.time), rate, x))
    if not by_channel:
        raise ExportError(f"no data frames for station {station} on {day.isoformat()}"
                          + (f" (channels {sorted(wanted)})" if wanted else ""))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    doy = day.timetuple().tm_yday
    for (site, loc, chan), ch in sorted(by_channel.items()):
        path = out / f"{network}.{site}.{loc}.{chan}.{day.year:04d}.{doy:03d}.mseed"
        try:
            sid = pymseed.nslc2sourceid(network, site, loc, chan)
        except (pymseed.MiniSEEDError, ValueError) as err:
            raise ExportError(f"{network}.{site}.{loc}.{chan}: not a valid SEED source id: {err}") from err
        for enc in dict.fromkeys((encoding, "int32")):
            traces = pymseed.MS3TraceList()
            for seg in sorted(ch.segments, key=lambda s: s.start_ns):
                traces.add_data(sid, seg.samples, "i", seg.rate, starttime=seg.start_ns)
            try:
                traces.to_file(path, overwrite=True, max_record_length=record_length,
                               encoding=getattr(pymseed.DataEncoding, enc.upper()), format_version=2)
                break
            except pymseed.MiniSEEDError as err:
                if enc == "int32":
                    raise ExportError(f"{path}: libmseed refused the data: {err}") from err
                log.warning("%s: %s encoding failed (%s); writing int32", path, enc, err)
        written.append(path)
    return written
