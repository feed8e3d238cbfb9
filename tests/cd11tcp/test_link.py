"""CD-1.1/TCP basics: handshake, refusal, byte-identical delivery, acknack/gap resend, reset, backoff."""

from __future__ import annotations

import asyncio

import pytest

from ims_station import cd11
from ims_station.cd11tcp import LinkLimits, MemorySink, MemorySource, Provider, provider_was_reset
from tests.cd11tcp.util import FAST, SAMPLES, alert_texts, consumer_pair, data_frame, read_reply, run


def test_limits_validate():
    with pytest.raises(ValueError, match="acknack_interval_s"):
        LinkLimits(acknack_interval_s=61)
    with pytest.raises(ValueError, match="max_frame_size"):
        LinkLimits(max_frame_size=10)


def test_handshake_and_byte_identical_delivery():
    raws = {p.name: p.read_bytes() for p in SAMPLES.glob("*.cd11")}
    lbtb = raws["real_LBTB_seq9720700.cd11"]

    async def main():
        async with consumer_pair({"LBTB": ["127.0.0.1"]}) as (cm, dc, sink, events):
            p = Provider("LBTB", cm.address, MemorySource({9720700: lbtb}), limits=FAST)
            p.start()
            assert await p.wait_acked(9720700, timeout=5)
            await p.stop()
            kinds = [e.kind for e in events]
            assert "redirect" in kinds and "identified" in kinds and "option" in kinds
            assert sink.frames[("LBTB:0", 9720700)] == lbtb
            assert dc.stats.acknacks_sent >= 1 and cm.stats.redirected == 1
            # the provider said goodbye with an alert
            await asyncio.sleep(0.05)
            assert any(e.kind == "alert-received" and "provider stopping" in e.detail for e in events)
    run(main())


def test_unknown_station_and_wrong_address_refused_with_alert():
    async def main():
        async with consumer_pair({"LBTB": ["192.0.2.1"]}) as (cm, dc, sink, events):
            for station, why in (("NOPE", "unknown-station"), ("LBTB", "address-not-allowed")):
                r, w = await asyncio.open_connection(*cm.address)
                w.write(cd11.ConnectionRequest(creator=station, station=station, ip="127.0.0.1", port=1).to_bytes())
                texts = alert_texts(await read_reply(r))
                assert texts and texts[0].startswith(why), texts
                w.close()
            assert cm.stats.refused == 2
            # the same refusal on the data port (a station that skips the manager)
            r, w = await asyncio.open_connection(*dc.address)
            w.write(cd11.OptionRequest(creator="NOPE", options=[cd11.Option(1, "NOPE")]).to_bytes())
            assert alert_texts(await read_reply(r))[0].startswith("unknown-station")
            w.close()
            assert dc.stats.refused == 1 and not sink.frames
    run(main())


def test_provider_refused_keeps_retrying_with_backoff():
    async def main():
        async with consumer_pair({"OTHER": None}) as (cm, dc, sink, events):
            p = Provider("NOPE", cm.address, MemorySource(), limits=FAST, backoff_initial_s=0.01,
                         backoff_max_s=0.05, seed=1)
            p.start()
            await asyncio.sleep(0.4)
            await p.stop()
            assert p.stats.reconnects >= 3
            assert p.stats.errors["peer-alert"] >= 3 and "unknown-station" in p.stats.last_error
    run(main())


def test_backoff_grows_exponentially_with_jitter():
    events = []

    async def main():
        # nothing listens: every attempt fails at connect
        import socket
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        p = Provider("STA01", ("127.0.0.1", port), MemorySource(), limits=FAST, backoff_initial_s=0.01,
                     backoff_max_s=0.08, seed=7, on_event=events.append)
        p.start()
        await asyncio.sleep(0.6)
        await p.stop()
    run(main())
    delays = [float(e.detail.split()[0]) for e in events if e.kind == "backoff"]
    assert len(delays) >= 4
    # attempt n waits in [d_n/2, d_n) with d_n = min(0.08, 0.01 * 2**n)
    for n, d in enumerate(delays[:6], start=1):
        nominal = min(0.08, 0.01 * 2 ** n)
        assert nominal / 2 <= d < nominal
    assert len(set(delays)) > 1


def test_gaps_and_implied_gaps_are_resent_from_the_source():
    frames = {s: data_frame(s) for s in range(1, 41)}

    async def main():
        async with consumer_pair({"STA01": None}) as (cm, dc, sink, events):
            src = MemorySource()
            p = Provider("STA01", cm.address, src, limits=FAST, live_queue=5)
            # 1..10 held by the source but never offered live (an outbox after a restart: implied
            # gaps below/above what the consumer holds), 11..40 offered live into a queue of 5: the
            # overflow is dropped from the queue and must come back as (implied) gaps
            for s in range(1, 41):
                src.add(s, frames[s])
            accepted = [s for s in range(11, 41) if p.offer(s, frames[s])]
            assert len(accepted) == 5 and p.stats.dropped_live == 25
            p.start()
            assert await p.wait_acked(40, timeout=5)
            await p.stop()
            assert {k[1] for k in sink.frames} == set(range(1, 41))
            assert all(sink.frames[("STA01:0", s)] == frames[s] for s in frames)
            assert p.stats.sent == 5 and p.stats.resent >= 35
    run(main())


def test_consumer_gap_list_drives_resend():
    frames = {s: data_frame(s) for s in range(1, 21)}

    async def main():
        async with consumer_pair({"STA01": None}) as (cm, dc, sink, events):
            # the consumer already holds 1..20 except 5..7 and 12 (an earlier connection broke)
            st = sink._state("STA01:0")
            for s in set(range(1, 21)) - {5, 6, 7, 12}:
                st.add(s, 0.0)
                sink.frames[("STA01:0", s)] = frames[s]
            src = MemorySource(frames)
            p = Provider("STA01", cm.address, src, limits=FAST)
            p.start()
            assert await p.wait_acked(20, timeout=5)
            await p.stop()
            assert p.stats.resent == 4 and sink.duplicates == 0
            assert st.acknack_fields() == (1, 20, [])
    run(main())


def test_provider_reset_detected_from_its_acknack():
    assert provider_was_reset((100, 200, []), 1, 5)
    assert not provider_was_reset((100, 200, []), 0, -1)      # empty provider says nothing
    assert not provider_was_reset((0, -1, []), 1, 5)
    assert not provider_was_reset((100, 200, []), 1, 150)

    async def main():
        async with consumer_pair({"STA01": None}) as (cm, dc, sink, events):
            st = sink._state("STA01:0")
            for s in range(1000, 1010):
                st.add(s, 0.0)
            p = Provider("STA01", cm.address, MemorySource({1: data_frame(1), 2: data_frame(2)}), limits=FAST)
            p.start()
            assert await p.wait_acked(2, timeout=5)
            await p.stop()
            assert dc.stats.provider_resets == 1 and sink.resets == 1
            assert st.acknack_fields() == (1, 2, [])
    run(main())


def test_limits_and_tls_from_config_mapping():
    from ims_station.cd11tcp import TlsSettings
    from ims_station.errors import ConfigError

    lim = LinkLimits.from_mapping({"heartbeat_timeout_s": 30, "max_connections": 10}, file="r.toml", key="cd11")
    assert lim.heartbeat_timeout_s == 30 and lim.max_connections == 10
    with pytest.raises(ConfigError, match=r"r.toml: cd11.acknack_interval_s: .*<= 60"):
        LinkLimits.from_mapping({"acknack_interval_s": 90}, file="r.toml", key="cd11")
    with pytest.raises(ConfigError, match=r"cd11.heartbeat: unknown key"):
        LinkLimits.from_mapping({"heartbeat": 3}, file="r.toml", key="cd11")
    with pytest.raises(ConfigError, match=r"cd11.max_gaps: must be an integer"):
        LinkLimits.from_mapping({"max_gaps": 1.5}, file="r.toml", key="cd11")
    assert TlsSettings.from_mapping({"port": 1}) is None
    t = TlsSettings.from_mapping({"tls_ca": "ca.pem"}, file="r.toml", key="x")
    assert t.ca == "ca.pem" and t.source == "r.toml"


def test_nothing_resent_when_nothing_is_lost(tmp_path):
    """A slow durable sink on a clean link with frequent acknacks: the provider must not take frames
    in flight for missing ones, and the consumer's acknacks must never go backwards (three tasks
    send them: after a gap, periodically, ack_delay_s after data), so no frame is sent twice."""
    from ims_station.cd11tcp.store import DirectorySink

    limits = LinkLimits(acknack_interval_s=0.1, heartbeat_timeout_s=2.0, ack_delay_s=0.02)
    frames = {s: data_frame(s) for s in range(1, 401)}

    async def main():
        sink = DirectorySink(tmp_path / "a")
        async with consumer_pair({"STA01": None}, sink=sink, limits=limits) as (cm, dc, _, events):
            src = MemorySource()
            # resend_grace_s: a loaded machine's fsyncs may keep frames in flight for seconds;
            # what is tested is the in-flight rule and the order of acknacks, not the fallback
            p = Provider("STA01", cm.address, src, limits=limits, resend_grace_s=60)
            p.start()
            for s, raw in frames.items():
                src.add(s, raw)
                p.offer(s, raw)
                await asyncio.sleep(0.0005)
            assert await p.wait_acked(400, timeout=20)
            await p.stop()
            assert p.stats.resent == 0 and sink.duplicates == 0 and p.stats.reconnects == 0
            assert sink.stored == 400
        sink.close()
    run(main(), timeout=30)
