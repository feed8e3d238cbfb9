"""Misbehaving peers on the data consumer and the connection manager: each gets an Alert and a
closed connection while a healthy station keeps being served (its acknowledgement latency is
measured during the attack; only that it kept being served is asserted, no timing threshold)."""

from __future__ import annotations

import asyncio
import struct

import pytest

from ims_station import cd11
from tests.cd11tcp.util import FAST, Healthy, alert_texts, consumer_pair, data_frame, read_reply, run


async def _garbage(addr):
    r, w = await asyncio.open_connection(*addr)
    w.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(range(64)))
    return r, w


async def _two_gigabytes(addr):
    r, w = await asyncio.open_connection(*addr)
    w.write(struct.pack(">ii", 5, 0x7FFFFFF0) + b"STA01\0\0\0" + b"0" + bytes(19))
    return r, w


async def _slow_loris(addr):
    r, w = await asyncio.open_connection(*addr)
    raw = data_frame(1, "GOOD")

    async def trickle():
        try:
            for b in raw:
                w.write(bytes([b]))
                await asyncio.sleep(0.1)
        except (OSError, RuntimeError):
            pass
    asyncio.ensure_future(trickle())
    return r, w


async def _silent_after_identifying(addr):
    r, w = await asyncio.open_connection(*addr)
    w.write(cd11.OptionRequest(creator="GOOD", options=[cd11.Option(1, "GOOD")]).to_bytes())
    return r, w


async def _never_identifies(addr):
    return await asyncio.open_connection(*addr)


ATTACKS = {
    "garbage": (_garbage, "garbage"),
    "2GB-declared-length": (_two_gigabytes, "oversize"),
    "slow-loris": (_slow_loris, "slow-frame"),
    "idle-past-heartbeat": (_silent_after_identifying, "heartbeat-timeout"),
    "never-identifies": (_never_identifies, "handshake-timeout"),
}


async def _attack_while_healthy(target: str, make, expect: str):
    async with consumer_pair({"GOOD": None}) as (cm, dc, sink, events):
        async with Healthy(cm.address) as good:
            await asyncio.sleep(0.2)
            before = len(good.latencies)
            addr = dc.address if target == "data" else cm.address
            t0 = asyncio.get_running_loop().time()
            r, w = await make(addr)
            frames = await read_reply(r, timeout=4)
            # an instant refusal (garbage, 2 GB) is over at once: watch the healthy link a bit longer
            # (until it was served again, at most 5 s: a loaded machine may be slow)
            loop = asyncio.get_running_loop()
            while loop.time() < t0 + 0.5 or (len(good.latencies) == before and loop.time() < t0 + 5):
                await asyncio.sleep(0.05)
            during = len(good.latencies) - before
            w.close()
        texts = alert_texts(frames)
        assert texts and texts[-1].startswith(expect), texts
        server = dc if target == "data" else cm
        assert server.stats.links.errors[expect] == 1
        # the healthy station kept being acknowledged while the attacker was connected
        assert during > 0, "healthy link starved during the attack"
        assert good.provider.stats.reconnects == 0
        lat = sorted(good.latencies[before:before + during])
        print(f"{target} {expect}: healthy link served {during} frames during the attack, "
              f"ack latency median {lat[len(lat) // 2] * 1000:.0f} ms, max {lat[-1] * 1000:.0f} ms")
        return good.latencies


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_data_consumer_attack(attack):
    make, expect = ATTACKS[attack]
    run(_attack_while_healthy("data", make, expect))


@pytest.mark.parametrize("attack", ["garbage", "2GB-declared-length", "never-identifies"])
def test_connection_manager_attack(attack):
    make, expect = ATTACKS[attack]
    run(_attack_while_healthy("manager", make, expect))


def test_too_many_connections():
    limits = FAST.__class__(**{**FAST.__dict__, "max_connections": 3, "handshake_timeout_s": 3.0})

    async def main():
        async with consumer_pair({"GOOD": None}, limits=limits) as (cm, dc, sink, events):
            async with Healthy(cm.address, limits=limits) as good:
                await asyncio.sleep(0.2)
                idle = [await asyncio.open_connection(*dc.address) for _ in range(2)]   # 1 + 2 = limit
                await asyncio.sleep(0.05)
                before = len(good.latencies)
                r, w = await asyncio.open_connection(*dc.address)
                texts = alert_texts(await read_reply(r))
                assert texts and texts[0].startswith("too-many-connections")
                await asyncio.sleep(0.3)
                assert len(good.latencies) > before
                for _, iw in idle:
                    iw.close()
                w.close()
            assert dc.stats.links.errors["too-many-connections"] == 1
    run(main())


def test_oversize_frame_refused_before_reading_it():
    """A frame whose declared length exceeds max_frame_size is refused from its header alone."""
    limits = FAST.__class__(**{**FAST.__dict__, "max_frame_size": 4096})

    async def main():
        async with consumer_pair({"STA01": None}, limits=limits) as (cm, dc, sink, events):
            r, w = await asyncio.open_connection(*dc.address)
            w.write(struct.pack(">ii", 5, 5000) + bytes(28))      # header only, nothing after
            texts = alert_texts(await read_reply(r))
            assert texts[0].startswith("oversize")
            w.close()
    run(main())


def test_unexpected_frame_and_bad_crc():
    async def main():
        async with consumer_pair({"STA01": None}) as (cm, dc, sink, events):
            r, w = await asyncio.open_connection(*dc.address)
            w.write(cd11.ConnectionRequest(creator="STA01", station="STA01").to_bytes())
            assert alert_texts(await read_reply(r))[0].startswith("unexpected-frame")
            w.close()
            bad = bytearray(data_frame(3))
            bad[-1] ^= 1
            r, w = await asyncio.open_connection(*dc.address)
            w.write(bytes(bad))
            text = alert_texts(await read_reply(r))[0]
            assert text.startswith("garbage") and "CRC" in text
            w.close()
            assert not sink.frames
    run(main())
