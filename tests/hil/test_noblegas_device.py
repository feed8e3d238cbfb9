"""The noble-gas emulator as a device: the cycle on an accelerated clock, the MCA semantics, the
process controller's SOH, every fault, and the transports (noblegas:// port, a real pty with
pyserial, ``ims-station hil noblegas --pty``)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import serial

from ims_station import mca
from ims_station.edge.serialport import open_port
from ims_station.hil.noblegas import device as dev
from ims_station.hil.noblegas.device import AcceleratedClock, ManualClock, NobleGasDetector
from ims_station.hil.noblegas.faults import NobleGasFaults
from ims_station.hil.noblegas.process import CycleConfig, Schedule
from ims_station.hil.noblegas.ptyrun import DetectorPty


def ask(det: NobleGasDetector, verb: str, *args: int):
    raw = det.handle(mca.encode_command(verb, *args))
    return None if raw is None else mca.parse_reply(raw)


def q(det, verb, *args):
    return mca.expect(verb, ask(det, verb, *args))


def test_cycle_phases_follow_the_schedule_on_an_accelerated_clock():
    """12 h collection, 6 h processing with the last 30 min a gas background, 11 h acquisition:
    the cell goes DETBK -> CALIB (the start-up calibration, 30 min) -> GASBK -> ACQUIRE -> QC -> EVACUATED
    -> GASBK ... at the computed instants."""
    clk = ManualClock()
    det = NobleGasDetector(clock=clk)
    H = 3600.0
    expected = [(0, "DETBK"), (17 * H, "CALIB"), (17.5 * H, "GASBK"), (18 * H, "ACQUIRE"), (29 * H, "QC"), (29 * H + 600, "EVACUATED"),
                (29.5 * H, "GASBK"), (30 * H, "ACQUIRE"), (41 * H, "QC"), (41 * H + 600, "EVACUATED"),
                (41.5 * H, "GASBK")]
    seen = []
    step = 300.0
    last = None
    while clk.now_s < 42 * H:
        ph = q(det, "SHOW_SOH").fields["PHASE"]
        if ph != last:
            seen.append((clk.now_s, ph))
            last = ph
        clk.advance(step)
    assert seen == [(t, p) for t, p in expected]
    # the SRIDs: station 58, collection start hour, "11" (whole sample)
    clk.now_s = 18 * H + 10
    sample = q(det, "SHOW_SAMPLE").fields
    assert sample["KIND"] == "ACQUIRE" and sample["SRID"] == "58202601010011"
    assert float(sample["COLL_STOP"]) - float(sample["COLL_START"]) == 12 * H
    assert float(sample["AIR_VOLUME"]) == pytest.approx(1.8 * 12)
    assert float(sample["XE_VOLUME"]) == pytest.approx(21.6 * 0.087 * float(sample["XE_YIELD"]), rel=1e-3)
    soh = q(det, "SHOW_SOH").fields
    assert soh["ACQ_SRID"] == sample["SRID"] and soh["COLL_SRID"] == "58202601011211"
    assert soh["PROC_SRID"] == "0"               # sample 1 is processed from 24 h on


def test_accelerated_clock_runs_faster_than_the_wall():
    c = AcceleratedClock(speed=3600.0, start_utc=0)
    a = c.monotonic()
    time.sleep(0.02)                            # not a timing assertion: only "time passed"
    assert c.monotonic() - a >= 0.02 * 3600 * 0.99
    assert c.time() == pytest.approx(c.monotonic(), abs=1.0)


def test_presets_stop_the_count_at_the_exact_tick():
    clk = ManualClock()
    det = NobleGasDetector(clock=clk)
    q(det, "SET_LIVE_PRESET", 300 * 50)          # 300 s live, as the spec's example
    assert q(det, "SHOW_LIVE_PRESET").value == 15000
    q(det, "START")
    assert q(det, "SHOW_ACTIVE").value == 1
    with pytest.raises(mca.DeviceError) as e:
        q(det, "SET_LIVE_PRESET", 10)           # not while acquiring
    assert e.value.code == mca.ERR_ACTIVE
    clk.advance(1000)
    assert q(det, "SHOW_ACTIVE").value == 0
    assert q(det, "SHOW_LIVE").value == 15000
    true = q(det, "SHOW_TRUE").value
    assert true == pytest.approx(15000 / det.cycle.live_fraction, abs=1)
    q(det, "CLEAR")
    assert q(det, "SHOW_LIVE").value == 0 and det.memory()[0].sum() == 0


def test_reading_the_histogram_block_by_block_gives_the_memory():
    clk = ManualClock()
    det = NobleGasDetector(clock=clk, seed=4)
    q(det, "START")
    clk.advance(20_000)
    q(det, "STOP")
    for seg, size in ((0, 65536), (1, 256), (2, 256)):
        q(det, "SET_SEGMENT", seg)
        assert q(det, "SHOW_GAIN_CONVERSION").value == size
        got = []
        for start in range(0, size, mca.MAX_BLOCK):
            b = q(det, "SHOW_DATA", start, mca.MAX_BLOCK)
            assert b.start == start
            got.extend(b.values)
        assert (np.array(got) == det.memory()[seg].ravel()).all()
    with pytest.raises(mca.DeviceError):
        q(det, "SHOW_DATA", 250, 64)             # beyond the 256 channels of segment 2
    with pytest.raises(mca.DeviceError):
        q(det, "SET_SEGMENT", 3)
    assert q(det, "SHOW_VERSION").text.startswith("NGEMU")


def test_hv_drop_stops_counting_and_start_is_refused():
    clk = ManualClock()
    faults = NobleGasFaults().add("hv_drop", "1000:500")
    det = NobleGasDetector(clock=clk, faults=faults, seed=1)
    q(det, "START")
    clk.advance(1000)
    before = int(det.memory()[2].sum())
    assert q(det, "SHOW_HV_ACTUAL").value < 0.7 * q(det, "SHOW_HV").value
    assert q(det, "SHOW_SOH").fields["HV"] != q(det, "SHOW_SOH").fields["HV_SET"]
    clk.advance(500)
    assert int(det.memory()[2].sum()) == before            # nothing counted while the HV was low
    q(det, "STOP")
    det2 = NobleGasDetector(clock=ManualClock(), faults=faults)
    det2.clock.now_s = 1200
    with pytest.raises(mca.DeviceError) as e:
        q(det2, "START")
    assert e.value.code == mca.ERR_HV
    q(det2, "DISABLE_HV")
    assert q(det2, "SHOW_HV_ACTUAL").value == 0
    det2.clock.now_s = 2000
    q(det2, "ENABLE_HV")
    q(det2, "START")


def test_flow_failure_shows_in_soh_and_shrinks_the_sample():
    clk = ManualClock()
    faults = NobleGasFaults().add("flow_fail", "3600:7200")
    det = NobleGasDetector(clock=clk, faults=faults)
    clk.advance(4000)
    soh = q(det, "SHOW_SOH").fields
    assert float(soh["FLOW"]) == 0.0 and float(soh["COLL_VOLUME"]) == pytest.approx(1.8)
    assert det.schedule.sample(0).air_volume_m3 == pytest.approx(1.8 * 10)
    assert det.schedule.sample(1).air_volume_m3 == pytest.approx(1.8 * 12)


def test_power_and_temperature_faults_show_in_soh():
    clk = ManualClock()
    faults = NobleGasFaults().add("power_fail", "100:3600").add("temp_high", "100:60")
    det = NobleGasDetector(clock=clk, faults=faults)
    clk.advance(1900)
    soh = q(det, "SHOW_SOH").fields
    assert soh["MAINS"] == "0" and soh["UPS"] == "BATTERY" and float(soh["UPS_CHARGE"]) < 100
    assert float(soh["T_ROOM"]) < 30
    clk.now_s = 120
    assert float(q(det, "SHOW_SOH").fields["T_ROOM"]) > 35


def test_a_detector_that_disappears_comes_back_restarted():
    clk = ManualClock()
    faults = NobleGasFaults().add("disappear", "500:100")
    det = NobleGasDetector(clock=clk, faults=faults, seed=3)
    q(det, "SET_LIVE_PRESET", 10_000 * 50)
    q(det, "START")
    clk.advance(550)
    assert ask(det, "SHOW_LIVE") is None                   # gone: no reply at all
    clk.advance(100)
    r = ask(det, "SHOW_LIVE")
    assert r == mca.Ack(*mca.POWER_UP)                      # the restart, not the answer
    with pytest.raises(mca.DeviceError):
        mca.expect("SHOW_LIVE", r)
    assert q(det, "SHOW_LIVE").value == 0 and q(det, "SHOW_ACTIVE").value == 0
    assert q(det, "SHOW_LIVE_PRESET").value == 0 and q(det, "SHOW_HV_ACTUAL").value == 0
    assert det.memory()[0].sum() == 0
    with pytest.raises(mca.DeviceError):
        q(det, "START")                                   # HV off after the restart
    q(det, "ENABLE_HV")
    q(det, "START")
    assert det.counters["restarts"] == 1 and det.counters["unanswered_while_gone"] == 1


def test_reply_faults_are_classified_by_the_parser_and_counted():
    det = NobleGasDetector(clock=ManualClock(), seed=11,
                           faults=NobleGasFaults(garble=0.1, checksum=0.1, timeout=0.1))
    kinds = {"ok": 0, "garbled": 0, "checksum": 0, "timeout": 0}
    for i in range(600):
        raw = det.handle(mca.encode_command("SHOW_TRUE"))
        if raw is None:
            kinds["timeout"] += 1
            continue
        assert raw.endswith(b"\r\n")
        try:
            mca.expect("SHOW_TRUE", mca.parse_reply(raw))
            kinds["ok"] += 1
        except mca.ChecksumError:
            kinds["checksum"] += 1
        except mca.GarbledReply:
            kinds["garbled"] += 1
    c = det.counters
    assert (kinds["timeout"], kinds["garbled"], kinds["checksum"], kinds["ok"]) == \
        (c["timeouts"], c["garbled"], c["checksum_errors"], c["replies"])
    for k in ("timeout", "garbled", "checksum"):
        assert 30 < kinds[k] < 100, kinds                   # ~60 of 600 each


def test_garbled_commands_get_error_replies_not_silence():
    det = NobleGasDetector(clock=ManualClock())
    assert det.feed(b"STA\x00RT\r") == mca.encode_reply(mca.Ack(*mca.ERR_LINE))
    assert det.feed(b"STRAT\r") == mca.encode_reply(mca.Ack(*mca.ERR_VERB))
    assert det.feed(b"SHOW_ACTIVE\r\nSHOW_SEGMENT\r") == mca.seal("$C00000") + mca.seal("$C00000")
    assert det.feed(b"X" * 10_000) == b""                   # bounded: an endless line is dropped
    assert det.feed(b"\rSHOW_ACTIVE\r") == mca.seal("$C00000")


def test_noblegas_url_port_with_pyserial_and_simulated_timeouts():
    """The in-process port: open_port('noblegas://NAME'), replies in order, a lost reply costs the
    port's timeout in *simulated* time."""
    clk = ManualClock()
    det = NobleGasDetector(clock=clk, faults=NobleGasFaults(timeout=0.5), seed=5)
    dev.register("t1", det)
    try:
        port = open_port("noblegas://t1", baudrate=115200, timeout=2.0)
        lost = 0
        for _ in range(20):
            port.write(mca.encode_command("SHOW_ACTIVE"))
            line = port.read_until(b"\n")
            if not line:
                lost += 1
                continue
            assert mca.parse_reply(line) == mca.Value("C", 0)
        assert lost == det.counters["timeouts"] > 0
        assert clk.now_s >= 2.0 * lost                       # each wait was simulated, not slept
        port.close()
    finally:
        dev.unregister("t1")
    with pytest.raises(serial.SerialException, match="unknown parameter"):
        open_port("noblegas://x?colour=red")
    p = open_port("noblegas://x?mode=hpge&conc=XE-133:5&hv_drop=0:10&acquisition=30000&gasbk=600")
    p.write(b"SHOW_GAIN_CONVERSION\r")
    assert mca.parse_reply(p.read_until(b"\n")) == mca.Value("C", 4096)


def test_emulator_behind_a_real_pty_with_pyserial():
    det = NobleGasDetector(clock=AcceleratedClock(speed=3600.0), seed=6)
    pty = DetectorPty(det, step_s=0.01)
    stop = threading.Event()
    th = threading.Thread(target=pty.run, kwargs={"stop": stop}, daemon=True)
    th.start()
    try:
        port = serial.Serial(pty.path, 115200, timeout=5.0)
        def ask_port(verb, *a):
            port.write(mca.encode_command(verb, *a))
            return mca.expect(verb, mca.parse_reply(port.read_until(b"\n")))
        assert ask_port("SHOW_VERSION").text.startswith("NGEMU-1.0 BG")
        ask_port("CLEAR")
        ask_port("START")
        deadline = time.monotonic() + 10           # an upper bound on a wait, not a timing assertion
        while ask_port("SHOW_TRUE").value < 600 * 50 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ask_port("SHOW_TRUE").value >= 600 * 50   # >= 10 simulated minutes counted
        ask_port("SET_SEGMENT", 2)
        blk = ask_port("SHOW_DATA", 0, 64)
        assert sum(blk.values) > 0
        soh = ask_port("SHOW_SOH").fields
        assert soh["PHASE"] == "DETBK" and int(soh["HV"]) > 1000
        port.close()
    finally:
        stop.set()
        th.join(5)
        pty.close()
    assert pty.bytes_in > 0 and pty.bytes_out > 0


def test_cli_serves_the_emulator_on_a_pty():
    proc = subprocess.Popen([sys.executable, "-m", "ims_station", "hil", "noblegas", "--pty", "--seconds", "360000",
                             "--speed", "3600", "--mode", "hpge", "--conc", "XE-133:5", "--garble", "0.01"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        path = proc.stdout.readline().strip()
        assert path.startswith("/dev/pts/"), proc.stderr.read()
        with serial.Serial(path, 115200, timeout=5.0) as port:
            for _ in range(3):                      # garble=0.01: retry a bad reply
                port.write(b"SHOW_GAIN_CONVERSION\r")
                try:
                    assert mca.parse_reply(port.read_until(b"\n")) == mca.Value("C", 4096)
                    break
                except mca.MCAProtocolError:
                    continue
            else:
                pytest.fail("no good reply in three tries")
        proc.terminate()                            # SIGTERM: a clean stop
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_bad_cli_and_cycle_options_are_refused():
    with pytest.raises(ValueError):
        CycleConfig(acquisition_s=43_000, gasbk_s=1800)
    with pytest.raises(ValueError):
        dev.parse_concentration("XE-999:1")
    proc = subprocess.run([sys.executable, "-m", "ims_station", "hil", "noblegas", "--conc", "XE-133=1"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "NUCLIDE:MBQ_PER_M3" in proc.stderr


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_FUZZ_DET = None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=80),
                          st.sampled_from([mca.encode_command(v, *([1] * n)) for v, (n, _) in mca.COMMANDS.items()])),
                max_size=8))
def test_any_bytes_from_the_host_get_valid_records_or_silence(chunks):
    """The emulator is a poison-message boundary too: whatever the host sends, it answers with valid
    records (or nothing, for an unterminated line) and never raises."""
    global _FUZZ_DET
    if _FUZZ_DET is None:
        _FUZZ_DET = NobleGasDetector(clock=ManualClock(), seed=1)
    out = _FUZZ_DET.feed(b"".join(chunks))
    for line in mca.LineSplitter(mca.MAX_REPLY).feed(out):
        mca.parse_reply(line)


def _client_query(port, verb, *args, tries=4):
    """A minimal reference client: send, read one record, retry on any protocol error or silence."""
    last = None
    for _ in range(tries):
        port.reset_input_buffer()
        port.write(mca.encode_command(verb, *args))
        line = port.read_until(b"\n")
        if not line:
            last = "timeout"
            continue
        try:
            return mca.expect(verb, mca.parse_reply(line))
        except (mca.MCAProtocolError, mca.DeviceError) as err:
            if isinstance(err, mca.DeviceError) and err.code not in (mca.POWER_UP,):
                raise
            last = err
    raise AssertionError(f"{verb}: no good reply after {tries} tries ({last})")


def test_48_hours_accelerated_with_faults_every_sample_is_counted():
    """Four cycles through the noblegas:// port with 2 % garbled, 2 % bad-checksum, 2 % lost and 2 %
    late replies and an HV dip: a retrying client counts every sample's acquisition; the emulator's
    fault counters match what the client saw go wrong."""
    clk = ManualClock()
    faults = NobleGasFaults(garble=0.02, checksum=0.02, timeout=0.02, late=0.02).add("hv_drop", f"{20 * 3600}:600")
    det = NobleGasDetector(clock=clk, faults=faults, seed=21)
    dev.register("soak48", det)
    try:
        port = open_port("noblegas://soak48", baudrate=115200, timeout=1.0)
        counted = {}
        while clk.now_s < 48 * 3600:
            soh = _client_query(port, "SHOW_SOH").fields
            if soh["PHASE"] == "ACQUIRE" and soh["ACQ_SRID"] not in counted:
                srid = soh["ACQ_SRID"]
                left = float(soh["PHASE_LEFT"])
                _client_query(port, "STOP")
                _client_query(port, "CLEAR")
                _client_query(port, "SET_TRUE_PRESET", int(left * 50))
                _client_query(port, "START")
                clk.advance(left + 1)
                assert _client_query(port, "SHOW_ACTIVE").value == 0
                _client_query(port, "SET_SEGMENT", 2)
                gamma = sum(sum(_client_query(port, "SHOW_DATA", s, 64).values) for s in range(0, 256, 64))
                counted[srid] = (gamma, _client_query(port, "SHOW_LIVE").value / 50)
            clk.advance(600)
        port.close()
    finally:
        dev.unregister("soak48")
    assert list(counted) == ["58202601010011", "58202601011211", "58202601020011"]
    for srid, (gamma, live) in counted.items():
        assert live > 39_600 * det.cycle.live_fraction - 700            # started at most one poll late
        assert gamma > 3.5 * live                                     # ~4.6 γ/s of singles
    c = det.counters
    assert c["garbled"] > 0 and c["checksum_errors"] > 0 and c["timeouts"] > 0 and c["late"] > 0


def test_qc_count_sees_the_cs137_check_source():
    clk = ManualClock()
    det = NobleGasDetector(clock=clk, seed=2)
    clk.now_s = 29 * 3600 + 1
    smp = q(det, "SHOW_SAMPLE").fields
    assert smp["KIND"] == "QC" and smp["SOURCE"] == "CS-137" and smp["SRID"] == "0"
    q(det, "SET_TRUE_PRESET", 590 * 50)
    q(det, "START")
    clk.advance(600)
    gamma = det.memory()[2]
    ch662 = int(round(float(det.model.g.channel(661.66))))
    assert 226 <= ch662 <= 233                                   # MIX58: 661.66 keV at channel 229.7
    peak = gamma[ch662 - 8:ch662 + 9].sum()
    side = gamma[ch662 - 40:ch662 - 23].sum()
    assert peak > 3 * side > 0


def test_calib_count_sees_the_xe133_spike_at_the_calibrated_channels():
    """The start-up calibration (the last 30 min of the first detector background): SHOW_SAMPLE names
    the Xe-133 spike, and its 81 keV γ × β coincidences sit at the channel the calibration states."""
    clk = ManualClock()
    det = NobleGasDetector(clock=clk, seed=2)
    clk.now_s = 17 * 3600 + 1
    smp = q(det, "SHOW_SAMPLE").fields
    assert smp["KIND"] == "CALIB" and smp["SOURCE"] == "XE-133" and smp["SRID"] == "0"
    assert float(smp["SOURCE_BQ"]) == det.cycle.calib_source_bq
    q(det, "SET_TRUE_PRESET", 1790 * 50)
    q(det, "START")
    clk.advance(1800)
    proj = det.memory()[0].sum(axis=1)                           # γ projection of the β-γ histogram
    ch81 = int(round(float(det.model.g.channel(81.0))))
    assert 30 <= ch81 <= 33                                      # MIX58: 81 keV at channel 31.55
    peak = proj[ch81 - 3:ch81 + 4].sum()
    side = proj[ch81 + 15:ch81 + 22].sum()
    assert peak > 1000 and peak > 20 * side
    # a detector background count of the same length sees no such peak
    det2 = NobleGasDetector(clock=(clk2 := ManualClock()), seed=2)
    clk2.now_s = 16 * 3600
    q(det2, "SET_TRUE_PRESET", 1790 * 50)
    q(det2, "START")
    clk2.advance(1800)
    assert det2.memory()[0].sum(axis=1)[ch81 - 3:ch81 + 4].sum() < peak / 10


def test_late_replies_come_out_of_step_unless_the_driver_drains_its_input():
    clk = ManualClock()
    det = NobleGasDetector(clock=clk, seed=1, faults=NobleGasFaults(late=0.999))
    dev.register("late", det)
    try:
        port = open_port("noblegas://late", timeout=1.0)
        port.write(mca.encode_command("SHOW_ACTIVE"))
        assert port.read_until(b"\n") == b""                   # timed out (1 s < late_s 3 s)
        clk.advance(5)
        det.faults.late = 0.0
        port.write(mca.encode_command("SHOW_LIVE"))             # not drained: the old $C comes first
        with pytest.raises(mca.UnexpectedReply):
            mca.expect("SHOW_LIVE", mca.parse_reply(port.read_until(b"\n")))
        assert mca.expect("SHOW_LIVE", mca.parse_reply(port.read_until(b"\n"))).value == 0
        det.faults.late = 0.999
        port.write(mca.encode_command("SHOW_ACTIVE"))
        assert port.read_until(b"\n") == b""
        clk.advance(5)
        det.faults.late = 0.0
        port.reset_input_buffer()                               # drained: in step again
        port.write(mca.encode_command("SHOW_LIVE"))
        assert mca.expect("SHOW_LIVE", mca.parse_reply(port.read_until(b"\n"))).value == 0
        assert det.counters["late"] == 2
    finally:
        dev.unregister("late")


def test_the_calibration_count_is_configurable_and_must_fit_the_startup_background():
    off = Schedule(CycleConfig(calib_s=0), {}, t0_utc=0.0)
    assert off.phase_at(17.5 * 3600 - 1).name == "DETBK"          # calib_s 0: no calibration count
    on = Schedule(CycleConfig(calib_s=3600), {}, t0_utc=0.0)
    assert on.phase_at(16.5 * 3600).name == "CALIB" and on.phase_at(16.5 * 3600 - 1).name == "DETBK"
    for bad in ({"calib_s": -1.0}, {"calib_source_bq": -1.0}, {"calib_s": 63_000.0}):
        with pytest.raises(ValueError):
            CycleConfig(**bad)
