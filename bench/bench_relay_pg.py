"""Relay verify + archive with the state in PostgreSQL, beside the SQLite default measured in the same run.

The frames and the processing are ``bench_relay``'s "verify + archive" (30 channels x 40 sps, 31
Ed25519 signatures per frame, ``RelayCore.process`` in batches of 64), once on the embedded default
(``SqliteStateStore`` + ``FileArchive``: day files, ``index.sqlite``) and once on ``PgStateStore`` +
``PgArchive`` (relay/pgstore.py: index and state in PostgreSQL, one content-addressed object per
commit), against a private PostgreSQL on loopback started for the run (``ims_station.pglocal``,
``fsync = on``: the durable configuration, Unix socket).  Also reported: the PostgreSQL index's
size per archived frame (tables and indexes of ``frames`` and the KPI tables), for sizing
(docs/centre-deployment.md, "PostgreSQL").
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from bench.bench_relay import _setup
from bench.harness import Result

GROUP = "relay_pg"


def _rate(make, trust, frames: list[bytes], rounds: int) -> float:
    from ims_station.relay.core import Incoming, RelayCore

    best = 0.0
    for r in range(rounds):
        state, archive = make(r)
        core = RelayCore(trust, state, archive, max_past_s=None)     # frames of 2023: no lower bound
        items = [Incoming("ims/STA01/cd11", raw) for raw in frames]
        t0 = time.perf_counter()
        for i in range(0, len(items), 64):
            outs = core.process(items[i:i + 64])
            assert all(o.result == "archived" for o in outs), {o.result for o in outs}
        dt = time.perf_counter() - t0
        core.close()
        best = max(best, len(items) / dt)
    return best


def run(quick: bool) -> list[Result]:
    from ims_station.pglocal import PgCluster
    from ims_station.relay.archive import FileArchive
    from ims_station.relay.pgstore import PgArchive, PgStateStore, connect_reader
    from ims_station.relay.state import SqliteStateStore

    nframes = 64 if quick else 512
    rounds = 1 if quick else 3
    with tempfile.TemporaryDirectory(prefix="bench-relay-pg-") as tmpdir, PgCluster(fast=False) as cluster:
        tmp = Path(tmpdir)
        dsn = cluster.create_database("bench")
        trust, frames = _setup("ed25519", nframes, tmp)
        sqlite = _rate(lambda r: (SqliteStateStore(tmp / f"s{r}" / "state.sqlite"),
                                  FileArchive(tmp / f"s{r}" / "archive")), trust, frames, rounds)
        pg = _rate(lambda r: (PgStateStore(dsn, schema=f"r{r}"), PgArchive(dsn, tmp / f"p{r}", schema=f"r{r}")),
                   trust, frames, rounds)
        db = connect_reader(dsn, schema="r0")
        try:
            (size,) = db.execute("SELECT pg_total_relation_size('frames') + pg_total_relation_size('kpi_channel_day')"
                                 " + pg_total_relation_size('kpi_station')").fetchone()
        finally:
            db.close()
    note = f"ed25519, 30 ch x 40 sps x 10 s, batches of 64, {nframes} frames, PostgreSQL fsync=on over its Unix socket"
    return [
        Result(GROUP, "relay verify + archive, PostgreSQL state and index", pg, "frames/s",
               "the same on SQLite (FileArchive, state.sqlite)", sqlite, "", note),
        Result(GROUP, "PostgreSQL index size per archived frame", size / nframes, "bytes/frame", "", None, "",
               f"frames + KPI tables with their indexes after {nframes} frames (30 channels)"),
    ]
