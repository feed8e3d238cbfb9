"""Outbox store: frames committed per second by each candidate store, beside the fsync floor.

Wraps :func:`ims_station.edge.outbox.measure_backends`, the measurement behind the choice of store
(docs/uplink.md, "Store chosen by measurement"): *n* frames of 2300 bytes (a 10-s frame of a
3-channel 40 sps station is about 2 KB) committed one transaction each through the outbox's own
code, with

* SQLite WAL, ``synchronous=FULL`` (the choice: a commit survives a power cut),
* SQLite WAL, ``synchronous=NORMAL`` (survives a process crash, not a power cut),
* SQLite rollback journal (DELETE), ``synchronous=FULL``,

and the reference measured in the same run: an append-only file with ``os.fsync`` per frame, the
floor any crash-safe store pays.  The need is 0.1 frames/s per station (one 10-s frame).

The files go to a temporary folder on the file system of ``$BENCH_OUTBOX_DIR`` (default: the
project folder, not /tmp, which is often a RAM file system where fsync costs nothing): fsync
latency is the medium's, so run it on the target's SD card / eMMC to size a station.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from bench.harness import Result
from ims_station.edge.outbox import measure_backends

NEED = 0.1      # frames/s per station: one 10-s frame


def run(quick: bool) -> list[Result]:
    n = 30 if quick else 300
    where = Path(os.environ.get("BENCH_OUTBOX_DIR") or Path(__file__).resolve().parent.parent)
    with tempfile.TemporaryDirectory(prefix="bench-outbox-", dir=where) as d:
        rows = measure_backends(d, n)
    floor = next(r for r in rows if r["store"].startswith("append-only"))["frames_per_s"]
    out = []
    for r in rows:
        durable = "survives power loss" if r["durable_on_power_loss"] else "NOT durable on power loss"
        out.append(Result("outbox", f"commit: {r['store']}", r["frames_per_s"], "frames/s",
                          reference="append-only file + fsync per frame, same run", reference_value=floor,
                          goal=f">= {NEED} frames/s per station", note=f"{n} frames of 2300 B; {durable}",
                          extra={"stations_served_at_10s_frames": r["frames_per_s"] / NEED}))
    return out
