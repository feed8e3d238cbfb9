"""Provider -> fault-injecting proxy -> consumer: an accelerated hour of 10-s frames per station
arrives complete, byte-identical and without duplicates in the archive, whatever the proxy does
(drops, delays, resets, half-open connections); gaps made by resets are refilled through acknack.

The consumer advertises the data-side proxy, so both the well-known port and the data port go
through faults.  ``IMS_CD11TCP_LONG=1`` runs a longer stream (24 h of frames for 4 stations) for
docs/cd11-tcp.md."""

from __future__ import annotations

import asyncio
import os
import time

from ims_station.cd11tcp import ConnectionManager, DataConsumer, LinkLimits, MemorySource, Provider
from ims_station.cd11tcp.store import DirectorySink
from ims_station.hil.tcpproxy import FaultProxy
from tests.cd11tcp.util import data_frame, run

LIMITS = LinkLimits(acknack_interval_s=0.1, heartbeat_timeout_s=0.4, handshake_timeout_s=0.4,
                    write_timeout_s=0.4, frame_timeout_s=0.3, ack_delay_s=0.02)


async def stream(tmp, *, stations: int, frames: int, rate: float, seed: int, period: float,
                 wait_s: float = 60):
    sink = DirectorySink(tmp / "archive")
    dc = await DataConsumer(sink, None, limits=LIMITS).start()
    dproxy = await FaultProxy(dc.address, seed=seed).start()
    dc.advertise = dproxy.address
    cm = await ConnectionManager(dc, limits=LIMITS).start()
    mproxy = await FaultProxy(cm.address, seed=seed + 1).start()
    dproxy.random_faults(rate)
    mproxy.random_faults(rate / 4, kinds=("drop", "reset", "half_open"))
    names = [f"ST{i:02d}" for i in range(stations)]
    want = {n: {s: data_frame(s, n) for s in range(1000, 1000 + frames)} for n in names}
    provs = []
    for n in names:
        src = MemorySource()
        p = Provider(n, mproxy.address, src, limits=LIMITS, backoff_initial_s=0.01, backoff_max_s=0.1,
                     seed=seed, live_queue=50)
        p.start()
        provs.append((n, src, p))

    async def feed(src, p, frames):
        for s, raw in frames.items():      # the station's outbox keeps every frame: the source
            src.add(s, raw)
            p.offer(s, raw)
            await asyncio.sleep(period)

    t0 = time.monotonic()
    await asyncio.gather(*(feed(src, p, want[n]) for n, src, p in provs))
    ok = await asyncio.gather(*(p.wait_acked(999 + frames, timeout=wait_s) for _, _, p in provs))
    elapsed = time.monotonic() - t0
    faults = dproxy.stats.faults + mproxy.stats.faults
    for _, _, p in provs:
        await p.stop()
    await mproxy.stop()
    await dproxy.stop()
    await cm.stop()
    await dc.stop()
    assert all(ok), [(n, p.stats.as_dict()) for n, _, p in provs]
    for n in names:
        fs = f"{n}:0"
        assert sink.stored_sequences(fs) == sorted(want[n])
        for s, raw in want[n].items():
            assert (tmp / "archive" / f"{n}_0" / f"{s:020d}.cd11").read_bytes() == raw
        assert sink.acknack_state(fs) == (1000, 999 + frames, [])
    sink.close()
    stats = {"elapsed_s": round(elapsed, 2), "faults": dict(faults), "stored": sink.stored,
             "duplicates": sink.duplicates, "conflicts": sink.conflicts,
             "reconnects": sum(p.stats.reconnects for _, _, p in provs),
             "resent": sum(p.stats.resent for _, _, p in provs)}
    assert sink.conflicts == 0 and sink.stored == stations * frames
    return stats


def test_accelerated_hour_through_faulty_proxy(tmp_path):
    stats = run(stream(tmp_path, stations=2, frames=360, rate=6.0, seed=3, period=0.003), timeout=60)
    print(stats)
    # the faults happened and were repaired: connections were reset and frames resent
    assert stats["faults"] and stats["reconnects"] > 0 and stats["resent"] > 0


def test_reset_gap_is_refilled_through_acknack(tmp_path):
    """One deterministic reset in the middle of a stream: the frames lost with the connection come
    back as consumer gaps / implied gaps and are resent."""
    async def main():
        sink = DirectorySink(tmp_path / "a")
        dc = await DataConsumer(sink, {"STA01": None}, limits=LIMITS).start()
        proxy = await FaultProxy(dc.address).start()
        dc.advertise = proxy.address
        cm = await ConnectionManager(dc, limits=LIMITS).start()
        src = MemorySource()
        p = Provider("STA01", cm.address, src, limits=LIMITS, backoff_initial_s=0.01, backoff_max_s=0.05)
        p.start()
        for s in range(1, 101):
            raw = data_frame(s)
            src.add(s, raw)
            p.offer(s, raw)
            if s == 50:
                await asyncio.sleep(0.05)
                proxy.drop(0.2, "up")          # frames 51.. vanish ...
            if s == 60:
                proxy.reset()                  # ... and the connection is reset
            await asyncio.sleep(0.002)
        assert await p.wait_acked(100, timeout=10)
        await p.stop()
        await cm.stop()
        await proxy.stop()
        await dc.stop()
        assert sink.stored_sequences("STA01:0") == list(range(1, 101))
        assert p.stats.reconnects >= 1 and p.stats.resent >= 1
        sink.close()
    run(main(), timeout=20)


if os.environ.get("IMS_CD11TCP_LONG"):
    def test_long_accelerated_day(tmp_path):
        stats = run(stream(tmp_path, stations=4, frames=8640, rate=1.0, seed=11, period=0.002, wait_s=600),
                    timeout=900)
        print(stats)


def test_operator_proxy_command(tmp_path):
    """``python -m ims_station.hil.tcpproxy`` as documented: in front of the well-known port, with
    random faults; a station still gets its frames through."""
    import re
    import subprocess
    import sys

    async def main():
        sink = DirectorySink(tmp_path / "a")
        dc = await DataConsumer(sink, {"STA01": None}, limits=LIMITS).start()
        cm = await ConnectionManager(dc, limits=LIMITS).start()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ims_station.hil.tcpproxy", "--listen", "127.0.0.1:0",
            "--to", f"{cm.address[0]}:{cm.address[1]}", "--random", "2", "--kinds", "reset,delay",
            "--seed", "1", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        try:
            line = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode()
            port = int(re.search(r"proxy 127\.0\.0\.1:(\d+) ->", line).group(1))
            src = MemorySource({s: data_frame(s) for s in range(1, 11)})
            p = Provider("STA01", ("127.0.0.1", port), src, limits=LIMITS, backoff_initial_s=0.01)
            p.start()
            assert await p.wait_acked(10, timeout=10)
            await p.stop()
        finally:
            proc.terminate()
            await proc.wait()
            await cm.stop()
            await dc.stop()
        assert sink.stored_sequences("STA01:0") == list(range(1, 11))
        sink.close()
    run(main(), timeout=30)
