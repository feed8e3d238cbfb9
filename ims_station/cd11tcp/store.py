"""``DirectorySink``: the durable :class:`~ims_station.cd11tcp.consumer.FrameSink` of ``cd11 receive``.

Owns the on-disk layout of the minimal consumer: one file per frame,
``DIR/<creator>_<destination>/<sequence, 20 digits>.cd11`` holding the frame's wire bytes exactly as
received, and the per-frame-set reception state (``FrameSetState``: lowest, highest, gaps) in
``DIR/state.sqlite`` (the relay's :class:`~ims_station.relay.state.SqliteStateStore`).  Durability
order as in the relay: the frame file is written to a temporary name, fsync'd, renamed and its
directory fsync'd; only then is the state updated (one fsync'd SQLite commit); only then does
``deliver`` return and the consumer acknowledge.  A crash between the two steps makes the frame be
reported missing again; its resend finds the file and is counted as a duplicate, never written twice.
A frame whose sequence number is already stored with *different* bytes is a conflict: the first
copy is kept and the conflict counted.

Names in paths come from the peer: every character outside ``[A-Za-z0-9-]`` is written as ``%XX``,
so a creator such as ``../x`` cannot leave ``DIR``.  It does not own the gap logic (``relay.gaps``)
nor the state store (``relay.state``); the relay's archive (``relay.archive``) is the production sink.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from pathlib import Path

from ims_station import cd11
from ims_station.cd11tcp.consumer import apply_provider_acknack
from ims_station.durable import fsync_dir, makedirs
from ims_station.relay.gaps import Arrival, FrameSetState
from ims_station.relay.state import SqliteStateStore

_UNSAFE = re.compile(r"[^A-Za-z0-9-]")


def _enc(part: str) -> str:
    return _UNSAFE.sub(lambda m: "%" + "%".join(f"{b:02X}" for b in m.group().encode()), part)


def frame_set_dir(root: Path, frame_set: str) -> Path:
    creator, _, dest = frame_set.partition(":")
    return root / f"{_enc(creator)}_{_enc(dest)}"


def frame_path(root: Path, frame_set: str, seq: int) -> Path:
    return frame_set_dir(root, frame_set) / f"{seq:020d}.cd11"


class DirectorySink:
    """One file per frame under *root*, gap state in ``root/state.sqlite`` (module docstring)."""

    def __init__(self, root: str | os.PathLike[str], *, max_gaps: int = 4000) -> None:
        self.root = Path(root)
        makedirs(self.root)
        self.store = SqliteStateStore(self.root / "state.sqlite")
        self.states: dict[str, FrameSetState] = self.store.load_all(max_gaps=max_gaps)
        self._max_gaps = max_gaps
        self._locks: dict[str, asyncio.Lock] = {}
        self.stored = 0
        self.duplicates = 0
        self.conflicts = 0
        self.resets = 0

    def close(self) -> None:
        close = getattr(self.store, "close", None)
        if close is not None:
            close()

    def _state(self, frame_set: str) -> FrameSetState:
        st = self.states.get(frame_set)
        if st is None:
            st = self.states[frame_set] = FrameSetState(frame_set, max_gaps=self._max_gaps)
        return st

    async def deliver(self, station: str, frame_set: str, frames: list[cd11.Frame]) -> None:
        lock = self._locks.setdefault(frame_set, asyncio.Lock())
        async with lock:
            results = await asyncio.to_thread(self._write, frame_set, [(f.sequence, bytes(f.raw)) for f in frames])
            st = self._state(frame_set)
            now = time.time()
            changed = False
            for seq, _ in results:
                changed |= st.add(seq, now).arrival is not Arrival.SEEN
            if changed:      # a batch of duplicates the state already holds costs no commit
                await asyncio.to_thread(self.store.save, [st])

    def _write(self, frame_set: str, frames: list[tuple[int, bytes]]) -> list[tuple[int, str]]:
        d = frame_set_dir(self.root, frame_set)
        if not d.is_dir():
            makedirs(d)
        out = []
        wrote = False
        for seq, raw in frames:
            path = d / f"{seq:020d}.cd11"
            if path.exists():
                if path.read_bytes() == raw:
                    self.duplicates += 1
                    out.append((seq, "duplicate"))
                else:
                    self.conflicts += 1
                    out.append((seq, "conflict"))
                continue
            tmp = d / f".{seq:020d}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, raw)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
            wrote = True
            self.stored += 1
            out.append((seq, "stored"))
        if wrote:
            fsync_dir(d)
        return out

    def acknack_state(self, frame_set: str) -> tuple[int, int, list[tuple[int, int]]]:
        st = self.states.get(frame_set)
        return st.acknack_fields() if st else (0, -1, [])

    def provider_acknack(self, frame_set: str, lowest: int, highest: int) -> None:
        st = self._state(frame_set)
        if apply_provider_acknack(st, lowest, highest):
            self.resets += 1
            self.store.save([st])

    def stored_sequences(self, frame_set: str) -> list[int]:
        d = frame_set_dir(self.root, frame_set)
        return sorted(int(p.stem) for p in d.glob("*.cd11")) if d.is_dir() else []
