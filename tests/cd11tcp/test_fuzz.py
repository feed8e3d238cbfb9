"""Hypothesis fuzz of the servers' per-connection path: random bytes and mutated valid streams sent
to the data consumer and the connection manager never raise out of the server (no ``internal``
error), every connection is closed, and a healthy station is served afterwards."""

from __future__ import annotations

import asyncio

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ims_station import cd11
from ims_station.cd11tcp import ConnectionManager, DataConsumer, MemorySink, MemorySource, Provider
from tests.cd11tcp.util import FAST, data_frame

VALID = b"".join([
    cd11.OptionRequest(creator="STA01", options=[cd11.Option(1, "STA01")]).to_bytes(),
    cd11.Acknack(creator="STA01", frame_set="STA01:0", lowest=1, highest=3).to_bytes(),
    data_frame(1), data_frame(2), data_frame(3),
])
CONNREQ = cd11.ConnectionRequest(creator="STA01", station="STA01", ip="127.0.0.1", port=1).to_bytes()


def mutate(base: bytes, edits, cut: int | None, insert: bytes, at: int) -> bytes:
    b = bytearray(base)
    for i, v in edits:
        b[i % len(b)] = v
    if insert:
        at %= len(b)
        b[at:at] = insert
    if cut is not None:
        del b[cut % len(b):]
    return bytes(b)


streams = st.one_of(
    st.binary(max_size=400),
    st.builds(mutate, st.sampled_from([VALID, CONNREQ]),
              st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6),
              st.none() | st.integers(0, 10_000), st.binary(max_size=40), st.integers(0, 10_000)),
)


class Servers:
    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.sink = MemorySink()
        self.dc = self.loop.run_until_complete(DataConsumer(self.sink, {"STA01": None}, limits=FAST).start())
        self.cm = self.loop.run_until_complete(ConnectionManager(self.dc, limits=FAST).start())

    def send(self, data: bytes, to_manager: bool) -> None:
        async def go():
            addr = self.cm.address if to_manager else self.dc.address
            r, w = await asyncio.open_connection(*addr)
            try:
                w.write(data)
                w.write_eof()
                await asyncio.wait_for(r.read(), 3)     # the server must close the connection
            except ConnectionResetError:
                pass
            finally:
                w.close()
        self.loop.run_until_complete(asyncio.wait_for(go(), 5))

    def close(self):
        self.loop.run_until_complete(self.cm.stop())
        self.loop.run_until_complete(self.dc.stop())
        self.loop.close()


def test_fuzz_servers_never_raise():
    servers = Servers()

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(data=streams, to_manager=st.booleans())
    @example(data=CONNREQ, to_manager=True)
    @example(data=VALID, to_manager=False)
    def check(data, to_manager):
        servers.send(data, to_manager)

    try:
        check()
        assert servers.dc.stats.links.errors["internal"] == 0
        assert servers.cm.stats.links.errors["internal"] == 0
        assert servers.dc.stats.active == 0 and servers.cm.stats.active == 0
        assert servers.cm.stats.redirected >= 1 and servers.dc.stats.frames_delivered >= 3   # paths reached

        async def healthy():
            p = Provider("STA01", servers.cm.address, MemorySource({99: data_frame(99)}), limits=FAST)
            p.start()
            ok = await p.wait_acked(99, timeout=5)
            await p.stop()
            return ok
        assert servers.loop.run_until_complete(healthy())
    finally:
        servers.close()
