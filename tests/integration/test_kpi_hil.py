"""Issue 11, must-show 5: the relay's quality figures against a HIL run with known faults.

The frames come from the HIL: the ``sim`` board (4 channels, 100 sps) through the production
station path (link decoder, stream assembler, framer, keys; ``harness.PacedStation``) for two
minutes of simulated time.  Their delivery to the relay core (real archive and state store) is then
scripted on the relay's clock, which is what makes the injected values exact: an outage (two frames
never delivered), a stalled link (the last two frames delivered 400 s late), a frame lost and
refilled by a resend after the acknack, and two tampered copies (samples changed, CRC fixed up).
Availability, timeliness, refilled share and authentication pass rate must *equal* the values the
script implies, computed here from the HIL frames' own sample counts.
"""

from __future__ import annotations

from pathlib import Path

from ims_station.broker import BrokerConfig

from .harness import PacedStation

START = 1_700_000_000             # on a 10-s boundary
SAMPLING_S = 120
OUTAGE = {3, 4}
REFILLED = {6}
LATE = {10, 11}
TAMPERED = {7, 8}


class _NoBroker:
    """The uplink is never started: frames are taken from the framer's commits."""

    config = BrokerConfig(host="127.0.0.1", port=9)


def _tamper(raw: bytes) -> bytes:
    from ims_station import cd11
    from ims_station.cd11.crc64 import crc64

    b = bytearray(raw)
    f, _ = cd11.parse_frame(raw)
    b[f.subframes[1].span[0] + 100] ^= 0x08
    b[-8:] = crc64(bytes(b[:-8])).to_bytes(8, "big")
    return bytes(b)


def test_kpi_equal_what_was_injected_into_a_hil_run(tmp_path: Path):
    from ims_station import cd11
    from ims_station.auth import TrustStore
    from ims_station.cd11.timefmt import to_datetime
    from ims_station.clock import FakeClock
    from ims_station.relay import kpi
    from ims_station.relay.archive import FileArchive
    from ims_station.relay.core import Incoming, RelayCore
    from ims_station.relay.state import SqliteStateStore
    from ims_station.relay.status import connect_ro

    st = PacedStation(tmp_path / "net", "HIL01", _NoBroker(), speed=1.0, start_utc=START)
    try:
        st.sim.stop_sampling(at_s=SAMPLING_S)
        while st.sim.clock.monotonic() < SAMPLING_S + 15:
            st.edge.step()
        frames = dict(st.committed_raw)
    finally:
        st.close()
    seqs = sorted(frames)
    assert len(seqs) == SAMPLING_S // 10, seqs
    parsed = {i: cd11.parse_frame(frames[s])[0] for i, s in enumerate(seqs)}
    nsamp = {i: f.subframes[0].nsamples for i, f in parsed.items()}
    t_end = {i: to_datetime(f.nominal_time).timestamp() + f.frame_time_length_ms / 1000 for i, f in parsed.items()}

    arrivals: list[tuple[float, bytes]] = []
    for i, s in enumerate(seqs):
        if i in OUTAGE or i in REFILLED:
            continue
        arrivals.append((t_end[i] + (400.0 if i in LATE else 1.0), frames[s]))
        if i in TAMPERED:
            arrivals.append((t_end[i] + 2.0, _tamper(frames[s])))
    for i in REFILLED:
        arrivals.append((t_end[len(seqs) - 1] + 420.0, frames[seqs[i]]))
    arrivals.sort(key=lambda a: a[0])

    clock = FakeClock(START)
    data = tmp_path / "relay"
    core = RelayCore(TrustStore.load(st.trust), SqliteStateStore(data / "state.sqlite"),
                     FileArchive(data / "archive"), clock=clock)
    results = []
    for t, raw in arrivals:
        clock.advance(t - clock.time())
        results += [o.result for o in core.process([Incoming("ims/HIL01/cd11", raw, 0, received_at=t)])]
    core.close()
    assert results.count("frame_signature") == len(TAMPERED)
    assert results.count("archived") == len(seqs) - len(OUTAGE)

    # What was injected, from the HIL frames' own sample counts (the first frame is partial: the
    # board samples from START + 1 s).
    produced = sum(nsamp.values())
    assert produced == (SAMPLING_S - 1) * 100
    delivered = [i for i in nsamp if i not in OUTAGE]
    received = sum(nsamp[i] for i in delivered)
    timely = sum(nsamp[i] for i in delivered if i not in LATE and i not in REFILLED)
    refilled = sum(nsamp[i] for i in REFILLED)
    day = kpi.day_of_ms(START * 1000)
    db = connect_ro(data / "archive" / "index.sqlite")
    rep = kpi.report(db, day, day, now=START + SAMPLING_S)
    db.close()
    assert {r["channel"] for r in rep["channels"]} == {"HIL01/BHZ/00", "HIL01/BHN/00", "HIL01/BHE/00",
                                                        "HIL01/BDF/10"}
    for r in rep["channels"]:
        assert (r["rate"], r["expected"], r["samples"]) == (100.0, produced, received)
        assert r["availability"] == received / produced
        assert r["timely"] == timely and r["timeliness"] == timely / received
        assert r["refilled"] == refilled and r["refilled_share"] == refilled / received
    (s,) = rep["stations"]
    passed = len(seqs) - len(OUTAGE)
    assert (s["auth_passed"], s["auth_failed"]) == (passed, len(TAMPERED))
    assert s["auth_pass_rate"] == passed / (passed + len(TAMPERED))
    assert s["availability"] == 4 * received / (4 * produced)
