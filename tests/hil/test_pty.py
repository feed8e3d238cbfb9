"""pty transport: another process's view -- the gateway opens a real tty path, in real time."""

from __future__ import annotations

import threading
import time

from ims_station.edge.ingest import DataBlock, Hello, LinkDecoder
from ims_station.edge.serialport import PortPump
from ims_station.hil.ptyport import PtyBridge
from ims_station.hil.sim import Simulation, simulation_key


def test_gateway_reads_the_simulated_board_through_a_pty():
    sim = Simulation(seed=12, packet_ms=250)
    bridge = PtyBridge(sim, speed=1.0)
    stop = threading.Event()
    thread = threading.Thread(target=bridge.run, kwargs={"stop": stop}, daemon=True)
    thread.start()
    events: list = []
    pump = PortPump(bridge.path, LinkDecoder(simulation_key(12), _WallClock()), timeout=0.05,
                    on_events=events.extend)
    try:
        deadline = time.monotonic() + 10.0      # an upper bound on a wait, not a timing assertion
        while time.monotonic() < deadline and sum(isinstance(e, DataBlock) for e in events) < 3:
            pump.step()
    finally:
        pump.close()
        stop.set()
        thread.join(5)
        bridge.close()
    assert bridge.path.startswith("/dev/pts/")
    assert isinstance(events[0], Hello) and events[0].board_name == "sim"
    blocks = [e for e in events if isinstance(e, DataBlock)]
    assert len(blocks) >= 3
    # Bit-identical to what the ADC produced.
    et = sim.truth.epochs[0]
    codes = et.array()
    for b in blocks:
        k0 = et.index_of(b.t_first_us)
        assert (b.samples.T == codes[k0:k0 + b.n_samples][:, list(b.channel_ids)]).all()


class _WallClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()


def test_hil_run_prints_the_pty_path_and_runs_for_the_given_time(tmp_path):
    import subprocess
    import sys

    from ims_station.config import write_secret_file

    key = write_secret_file(tmp_path / "board.key", b"s" * 32)
    proc = subprocess.run([sys.executable, "-m", "ims_station", "hil", "run", "--pty", "--seconds", "0.5",
                           "--speed", "4", "--key-file", str(key)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].startswith("/dev/pts/")


def test_hil_run_without_a_key_file_is_refused(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "ims_station", "hil", "run", "--key-file",
                           str(tmp_path / "missing.key")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "no default key" in proc.stderr
