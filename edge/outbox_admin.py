"""``ims-station edge outbox list|purge|resign``: frames stuck in a station's outbox.

Owns the operator's view of the outbox by *signing key*: which frames carry which frame and
subframe key ids (a frame signed with a key the relay never trusted is quarantined there, never
acknowledged, and stays in the outbox, resent forever), deleting them (``purge``, only with
``--yes``), and re-signing them (``resign``) with the key the keystore holds for each frame's
nominal time -- the key the gateway would pick now (docs/keys.md, "Rotation") -- keeping the
frame's content and sequence number.

It does not own the store (``outbox.py``: ``items``, ``delete``, ``replace_payload``, the lock),
the CD-1.1 bytes (``ims_station.cd11``: ``resign_data_frame``) or the keys (``ims_station.auth``).

Concurrency: every command opens the outbox with ``exclusive=True`` and is refused while a gateway
has it open (an ``flock`` on ``<outbox>.lock``), so nothing changes under a running gateway's
uplink or counters; ``purge`` and ``resign`` change the frames in one transaction (all or none).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ims_station.errors import ConfigError, ImsStationError

UTC = dt.timezone.utc


@dataclass
class StuckFrame:
    """One outbox frame as the commands show it."""

    id: int
    frame_set: str
    seq: int
    nominal_time: float
    state: str                   # "pending", "sent" or "held" (auxiliary mode: kept in the buffer)
    sent_count: int
    size: int
    frame_key_id: int | None     # None: the payload does not parse as CD-1.1
    subframe_key_ids: list[int]
    error: str = ""

    @property
    def key_ids(self) -> set[int]:
        return ({self.frame_key_id} if self.frame_key_id is not None else set()) | set(self.subframe_key_ids)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "frame_set": self.frame_set, "seq": self.seq,
                "nominal_time": _iso(self.nominal_time), "state": self.state, "sent_count": self.sent_count,
                "bytes": self.size, "frame_key_id": self.frame_key_id,
                "subframe_key_ids": self.subframe_key_ids, **({"error": self.error} if self.error else {})}


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def locate(config: str | None, outbox: str | None, keystore: str | None) -> tuple[Path, Path | None]:
    """The outbox file and keystore directory: from the station file (as ``edge run`` resolves
    them), or given directly (``--outbox``, ``--keystore``, which win)."""
    ob_path, ks_path = (Path(outbox) if outbox else None), (Path(keystore) if keystore else None)
    if config:
        from ims_station.edge.station import load

        cfg, settings = load(config)
        if ob_path is None:
            ob_path = Path(settings.outbox.get("path") or cfg.data_dir / "outbox.sqlite")
        if ks_path is None and settings.keys.get("keystore"):
            ks_path = Path(settings.keys["keystore"])
    if ob_path is None:
        raise ImsStationError("say which outbox: --config station.toml or --outbox FILE")
    if not ob_path.is_file():
        raise ConfigError(str(ob_path), "", "no outbox here (the gateway creates it when it first runs)")
    return ob_path, ks_path


def open_exclusive(path: Path):
    """The outbox, for maintenance; :class:`~ims_station.edge.outbox.OutboxLockedError` (naming it)
    if a gateway has it open."""
    from ims_station.clock import SystemClock
    from ims_station.edge.outbox import Outbox

    # The bounds matter only for put(), which maintenance never calls: nothing is evicted here.
    return Outbox(path, max_bytes=1 << 62, max_age_s=1e15, clock=SystemClock(), exclusive=True,
                  reserve_bytes=0)


def describe(item: Any, state: int) -> StuckFrame:
    from ims_station import cd11

    base = dict(id=item.id, frame_set=item.frame_set, seq=item.seq, nominal_time=item.nominal_time,
                state=("pending", "sent", "held")[state], sent_count=item.sent_count, size=len(item.payload))
    try:
        frame, _ = cd11.parse_frame(item.payload)
    except cd11.Cd11Error as err:
        return StuckFrame(**base, frame_key_id=None, subframe_key_ids=[], error=str(err))
    subs = sorted({sf.auth_key_id for sf in getattr(frame, "subframes", [])})
    return StuckFrame(**base, frame_key_id=frame.auth_key_id, subframe_key_ids=subs)


def select(frames: Iterable[StuckFrame], *, key_ids: Iterable[int] = (), seq_from: int | None = None,
           seq_to: int | None = None, before: float | None = None) -> list[StuckFrame]:
    """Frames signed (frame or any subframe) with one of *key_ids* (any if none given), with seq in
    [seq_from, seq_to] and nominal time before *before* when given."""
    want = set(key_ids)
    out = []
    for f in frames:
        if want and not (f.key_ids & want):
            continue
        if seq_from is not None and f.seq < seq_from or seq_to is not None and f.seq > seq_to:
            continue
        if before is not None and f.nominal_time >= before:
            continue
        out.append(f)
    return out


def list_frames(outbox: Any, **filters: Any) -> list[StuckFrame]:
    return select((describe(item, state) for item, state in outbox.items("cd11")), **filters)


def purge(outbox: Any, frames: list[StuckFrame]) -> tuple[int, int]:
    return outbox.delete(f.id for f in frames)


@dataclass
class ResignResult:
    resigned: list[StuckFrame]
    unchanged: list[StuckFrame]          # already signed with the keys the keystore picks
    skipped: list[tuple[StuckFrame, str]]  # no key valid at the frame's time, unparseable, ...


def resign(outbox: Any, keystore: Any, frames: list[StuckFrame], *, key_id: int | None = None,
           force: bool = False) -> ResignResult:
    """Re-sign *frames* (frame and every subframe) with the keystore's key for each frame's nominal
    time (or key *key_id*, which must be valid then), in one transaction.  Frames already signed
    with exactly those keys are left alone unless *force*."""
    from ims_station import cd11
    from ims_station.auth import AuthError

    selected = {f.id: f for f in frames}
    result = ResignResult([], [], [])
    replacements = []
    found = set()
    for item, _ in list_payloads(outbox, selected):
        f = selected[item.id]
        found.add(item.id)
        if f.frame_key_id is None:
            result.skipped.append((f, f.error))
            continue
        frame, _ = cd11.parse_frame(item.payload)
        if not isinstance(frame, cd11.DataFrame):
            result.skipped.append((f, f"frame type {frame.FRAME_TYPE} is not a data frame"))
            continue
        at = cd11.to_datetime(frame.nominal_time).replace(tzinfo=UTC)
        try:
            if key_id is not None:
                fixed = keystore.signer(key_id)
                if not fixed.info.valid_at(at):
                    raise AuthError(f"key {key_id} is not valid at the frame's time ({fixed.info.period()})")
                frame_signer, sub = fixed, (lambda sf, s=fixed: s)
            else:
                frame_signer = keystore.signer_for(frame.creator, at)
                subs = {sf.site: keystore.signer_for(sf.site, at) for sf in frame.subframes}
                sub = lambda sf, subs=subs: subs[sf.site]   # noqa: E731
        except AuthError as err:
            result.skipped.append((f, str(err)))
            continue
        want = {frame_signer.key_id} | {sub(sf).key_id for sf in frame.subframes}
        if not force and f.key_ids == want:
            result.unchanged.append(f)
            continue
        try:
            raw = cd11.resign_data_frame(item.payload, frame_signer, sub)
        except (cd11.Cd11Error, cd11.Cd11BuildError) as err:
            result.skipped.append((f, str(err)))
            continue
        replacements.append((f.id, raw))
        result.resigned.append(describe(dataclasses.replace(item, payload=raw), 0))
    result.skipped += [(f, "no longer in the outbox") for i, f in selected.items() if i not in found]
    if replacements:
        outbox.replace_payload(replacements)
    return result


def list_payloads(outbox: Any, ids: Any) -> list[tuple[Any, int]]:
    """The stored items whose id is in *ids* (only those payloads are kept in memory)."""
    return [(item, state) for item, state in outbox.items("cd11") if item.id in ids]
