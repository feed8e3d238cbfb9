"""Helpers of the CD-1.1/TCP tests: run a coroutine with a deadline, start a consumer pair, make
frames, read what a server answered an attacker."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from contextlib import asynccontextmanager
from pathlib import Path

from ims_station import cd11
from ims_station.cd11tcp import ConnectionManager, DataConsumer, LinkLimits, MemorySink, Provider

SAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "samples" / "cd11"
FAST = LinkLimits(acknack_interval_s=0.2, heartbeat_timeout_s=1.0, handshake_timeout_s=1.0,
                  write_timeout_s=1.0, frame_timeout_s=0.5, max_connections=8, ack_delay_s=0.05)


def run(coro, timeout: float = 10.0):
    """asyncio.run with a deadline (a hung test fails instead of hanging the suite)."""
    async def main():
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(main())


def data_frame(seq: int, station: str = "STA01") -> bytes:
    """A small valid data frame (s4 samples), distinct bytes per *seq*."""
    import numpy as np

    samples = np.arange(20, dtype=np.int32) + seq % 1000
    nominal = f"2024060 12:{(seq // 6) % 60:02d}:{(seq % 6) * 10:02d}.000"
    ch = cd11.ChannelInput(station, "BHZ", "00", samples, 2.0, nominal)
    frame = cd11.build_data_frame(station, seq, nominal, [ch])
    return frame


@asynccontextmanager
async def consumer_pair(stations=None, *, limits: LinkLimits = FAST, sink=None, **kw):
    """A DataConsumer + ConnectionManager on free loopback ports; yields (manager, consumer, sink, events)."""
    sink = sink if sink is not None else MemorySink()
    events: list = []
    dc = await DataConsumer(sink, stations, limits=limits, on_event=events.append, **kw).start()
    cm = await ConnectionManager(dc, limits=limits, on_event=events.append).start()
    try:
        yield cm, dc, sink, events
    finally:
        await cm.stop()
        await dc.stop()


async def read_reply(reader: asyncio.StreamReader, timeout: float = 3.0) -> list[cd11.Frame]:
    """Everything the server sends until it closes, parsed (a server must close: the timeout fails the test)."""
    data = await asyncio.wait_for(reader.read(), timeout)
    return list(cd11.iter_frames(data))


def alert_texts(frames) -> list[str]:
    return [f.message for f in frames if isinstance(f, cd11.Alert)]


class Healthy:
    """A provider streaming a frame every *period* s; records how long each took to be acknowledged."""

    def __init__(self, to, station: str = "GOOD", *, limits: LinkLimits = FAST, period: float = 0.02):
        from ims_station.cd11tcp import MemorySource

        self.source = MemorySource()
        # the provider's own heartbeat is generous: the attacks must not be confused with a
        # loaded machine's scheduling delays (the consumer's limits are the ones under test)
        plim = dataclasses.replace(limits, heartbeat_timeout_s=max(limits.heartbeat_timeout_s, 5.0))
        self.provider = Provider(station, to, self.source, limits=plim, backoff_initial_s=0.05)
        self.station = station
        self.period = period
        self.latencies: list[float] = []
        self.seq = 0
        self._task = None

    async def _loop(self):
        while True:
            self.seq += 1
            raw = data_frame(self.seq, self.station)
            self.source.add(self.seq, raw)
            t0 = time.monotonic()
            self.provider.offer(self.seq, raw)
            await asyncio.sleep(self.period)
            asyncio.ensure_future(self._measure(self.seq, t0))

    async def _measure(self, seq, t0):
        if await self.provider.wait_acked(seq, timeout=5):
            self.latencies.append(time.monotonic() - t0)

    async def __aenter__(self):
        self.provider.start()
        self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(self, *exc):
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self.provider.stop()
