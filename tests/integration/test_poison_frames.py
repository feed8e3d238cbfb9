"""Issue 7, must-show: frames with out-of-calendar times, built by an independent writer
(hand-written ``struct`` packing, tests/relay/cd11_writer.py) and published live through the
documented Mosquitto (TLS, per-station passwords, ACL) with one station's own credentials on its
own topic, while two other stations publish good signed frames: the relay archives every frame of
the other stations, quarantines the bad ones (``malformed``; a signed frame dated 2100:
``implausible_time``) and keeps going -- also across a relay restart, whose persistent session
brings none of the bad messages back (they were acknowledged)."""

from __future__ import annotations

import threading

import pytest

from ims_station.relay.archive import FileArchive
from ims_station.relay.relay import Relay
from ims_station.relay.state import SqliteStateStore

from ..relay.cd11_writer import data_frame
from .conftest import Collector
from .harness import FrameFactory, frame_times, write_keys
from .tlsconf import start_secured_broker

pytestmark = pytest.mark.usefixtures("mosquitto_installed")     # tests/conftest.py: skip, or fail in CI

TIMEOUT = 30.0
GOOD = ["STA1", "STA2"]
BAD = "STA3"
OUT_OF_CALENDAR = ["0000001 00:00:00.000", "9999365 23:59:60.999", "2025000 00:00:00.000",
                   "2025366 00:00:00.000", "2024367 12:00:00.000", "2025100 24:00:00.000"]


class Outcomes:
    def __init__(self) -> None:
        self.items: list = []
        self.cond = threading.Condition()

    def add(self, outs) -> None:
        with self.cond:
            self.items.extend(outs)
            self.cond.notify_all()

    def wait(self, pred, what: str):
        with self.cond:
            assert self.cond.wait_for(lambda: pred(self.items), TIMEOUT), f"{what}; have {self.items!r:.1500}"
            return list(self.items)


def _relay(sb, root, trust_dir, seen: Outcomes) -> Relay:
    from ims_station.auth import TrustStore

    data = root / "relay"
    return Relay(sb.client_config("relay"), TrustStore.load(trust_dir), SqliteStateStore(data / "state.sqlite"),
                 FileArchive(data / "archive", writer="r1"), instance="r1", group="relay",
                 on_outcomes=seen.add, backoff_base_s=0.05, backoff_max_s=0.2, acknack_interval_s=1.0)


def _station(sb, user: str) -> Collector:
    c = Collector("127.0.0.1", sb.port, username=user, password=sb.passwords[user], tls_ca=sb.ca,
                  client_id=f"{user}-test")
    _, rc = c.connect()
    assert rc == 0
    return c


def _publish(c: Collector, station: str, payload: bytes) -> None:
    c.client.publish(f"ims/{station}/cd11", payload, qos=1).wait_for_publish(TIMEOUT)


def _archived(root) -> dict[str, list[int]]:
    with FileArchive(root / "relay" / "archive", writer="check") as arc:
        out: dict[str, list[int]] = {}
        for fs, seq in arc.frame_keys():
            out.setdefault(fs, []).append(seq)
        return {k: sorted(v) for k, v in out.items()}


def test_out_of_calendar_frames_from_one_station_do_not_stop_the_relay(tmp_path):
    sb = start_secured_broker(tmp_path / "broker", [*GOOD, BAD, "relay"])
    try:
        stores = write_keys(tmp_path, [*GOOD, BAD])
        factories = {sta: FrameFactory(sta, stores[sta], 100 * (i + 1)) for i, sta in enumerate([*GOOD, BAD])}
        times = frame_times(16)
        first, second = times[:10], times[10:]
        seen = Outcomes()
        relay = _relay(sb, tmp_path, tmp_path / "trust", seen)
        clients = {sta: _station(sb, sta) for sta in [*GOOD, BAD]}
        expected: dict[str, list[int]] = {f"{sta}:0": [] for sta in GOOD}

        def stream(nominals, bad_times):
            """Interleaved: each good station's frame, then one bad frame of STA3."""
            n = 0
            for i, t in enumerate(nominals):
                for sta in GOOD:
                    seq, raw = factories[sta].frame(t)
                    _publish(clients[sta], sta, raw)
                    expected[f"{sta}:0"].append(seq)
                    n += 1
                bad = bad_times[i % len(bad_times)]
                # Nominal time or (every other frame) a subframe's time out of the calendar; valid
                # CRC, no signature: exactly the frame of the issue.
                raw = (data_frame(BAD, 5000 + i, bad, [(BAD, "BHZ", "00")]) if i % 2 == 0 else
                       data_frame(BAD, 5000 + i, "2025100 00:00:00.000", [(BAD, "BHZ", "00")], times=[bad]))
                _publish(clients[BAD], BAD, raw)
                n += 1
            return n

        with relay:
            assert relay.wait_connected(TIMEOUT)
            n1 = stream(first, OUT_OF_CALENDAR)
            # A correctly signed frame of STA3 dated 2100: not archived, no gap opened.
            _, raw2100 = factories[BAD].frame(4102444800.0)
            _publish(clients[BAD], BAD, raw2100)
            got = seen.wait(lambda it: len(it) == n1 + 1, "every message of the first stream processed")
            st1 = relay.stats()
        bad1 = [o for o in got if o.station == BAD]
        assert [o.result for o in bad1] == ["malformed"] * len(first) + ["implausible_time"]
        assert all("time stamp" in o.detail and ("nominal_time" in o.detail or "subframe[0].time" in o.detail)
                   for o in bad1[:-1])
        assert _archived(tmp_path) == expected
        assert st1["archived"] == 2 * len(first) and st1["clock_events"] == 1 and st1["internal_errors"] == 0
        assert st1["transport"]["acked"] == n1 + 1 and st1["store_errors"] == 0
        assert f"{BAD}:0" not in st1["frame_sets"]

        # While the relay is down, the broker queues both kinds for its persistent session.
        n2 = stream(second, list(reversed(OUT_OF_CALENDAR)))
        seen2 = Outcomes()
        relay2 = _relay(sb, tmp_path, tmp_path / "trust", seen2)
        with relay2:
            assert relay2.wait_connected(TIMEOUT)
            # A marker published after the session resumed arrives after whatever the broker
            # redelivers or had queued: once it is processed, nothing else is coming.
            mseq, marker = factories[GOOD[0]].frame(times[-1] + 10)
            _publish(clients[GOOD[0]], GOOD[0], marker)
            expected[f"{GOOD[0]}:0"].append(mseq)
            got2 = seen2.wait(lambda it: any(o.sequence == mseq for o in it), "the marker after the restart")
            st2 = relay2.stats()
        assert len(got2) == n2 + 1, "a message of the first stream was redelivered after the restart"
        assert sorted(o.result for o in got2 if o.station == BAD) == ["malformed"] * len(second)
        assert _archived(tmp_path) == expected
        assert st2["received"] == n2 + 1 and st2["archived"] == 2 * len(second) + 1
        for c in clients.values():
            c.close()
    finally:
        sb.broker.close()
