"""``ims-station hil run`` as a real process, as an operator uses it: the board's clock is the wall
clock (``--start now``, the default) or a given time, a stable symbolic link names the pty and goes
away on exit, and a restarted board comes back under a new epoch (``--state``: +1 per boot, as the
firmware's ``/epoch``; without it, derived from the start time)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone

import pytest

from ims_station.config import write_secret_file
from ims_station.edge.ingest import DataBlock, LinkDecoder
from ims_station.edge.serialport import PortPump
from ims_station.hil.sim import EpochFile, Simulation

KEY = b"k" * 32


class _WallClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()


def hil_run(tmp_path, *args: str) -> subprocess.Popen:
    key = tmp_path / "board.key"
    if not key.exists():
        write_secret_file(key, KEY)
    return subprocess.Popen([sys.executable, "-m", "ims_station", "hil", "run", "--key-file", str(key),
                             "--packet-ms", "250", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def first_block(port_path: str, proc: subprocess.Popen) -> DataBlock:
    """The first DATA block read from *port_path* (the board's epoch and sample times)."""
    events: list = []
    pump = PortPump(port_path, LinkDecoder(KEY, _WallClock()), timeout=0.05, on_events=events.extend)
    try:
        deadline = time.monotonic() + 30        # an upper bound on a wait, not a timing assertion
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            pump.step()                         # reads, and asks the board for what it missed
            for ev in events:
                if isinstance(ev, DataBlock):
                    return ev
    finally:
        pump.close()
    raise AssertionError("no DATA block from the board")


def stop(proc: subprocess.Popen) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    return proc.returncode, err


def test_hil_run_starts_now_behind_a_stable_link_and_counts_epochs_in_its_state_file(tmp_path):
    link, state = tmp_path / "run" / "ims" / "board1", tmp_path / "state" / "board1.epoch"
    epochs = []
    for run in range(2):
        proc = hil_run(tmp_path, "--link", str(link), "--state", str(state))
        try:
            pts = proc.stdout.readline().strip()
            assert pts.startswith("/dev/pts/") and os.readlink(link) == pts
            t_open = time.time()
            block = first_block(str(link), proc)       # the gateway opens the link, not /dev/pts/N
        finally:
            rc, err = stop(proc)
        assert rc == 0, err                              # SIGTERM: a clean exit ...
        assert not os.path.lexists(link)                 # ... that removes the link
        # The board's clock is the wall clock: its samples are stamped now, not 2026-01-01.
        assert abs(block.t_first_us / 1e6 - t_open) < 30
        epochs.append(block.epoch)
    assert epochs == [1, 2] and state.read_text().strip() == "2"


def test_hil_run_start_at_a_given_time(tmp_path):
    proc = hil_run(tmp_path, "--start", "2031-03-04T05:06:07Z")
    try:
        block = first_block(proc.stdout.readline().strip(), proc)
    finally:
        stop(proc)
    t0 = datetime(2031, 3, 4, 5, 6, 7, tzinfo=timezone.utc).timestamp()
    assert t0 <= block.t_first_us / 1e6 < t0 + 30


def test_without_a_state_file_the_epoch_comes_from_the_start_second(tmp_path):
    t0 = int(time.time())
    proc = hil_run(tmp_path)
    try:
        block = first_block(proc.stdout.readline().strip(), proc)
    finally:
        stop(proc)
    assert block.epoch != 0 and block.epoch in {(t0 + k) & 0xFFFF for k in range(0, 60)}


def test_link_over_a_regular_file_is_refused(tmp_path):
    (tmp_path / "board1").write_text("not a link")
    proc = hil_run(tmp_path, "--link", str(tmp_path / "board1"), "--seconds", "1")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "not a symbolic link" in err and err.count("\n") == 1, err
    assert (tmp_path / "board1").read_text() == "not a link"


def test_epoch_file_counts_boots_like_the_firmware(tmp_path):
    """A reboot fault in the simulation boots the board under the next epoch of its state file."""
    sim = Simulation(seed=1, epochs=EpochFile(tmp_path / "epoch"), plan=_reboot_at(3.0))
    assert sim.board.epoch == 1
    sim.run_for(6.0)
    assert sim.board.epoch == 2 and (tmp_path / "epoch").read_text().strip() == "2"
    (tmp_path / "bad").write_text("seven")
    from ims_station.hil.sim import SimError

    with pytest.raises(SimError, match="not a boot counter"):
        EpochFile(tmp_path / "bad")


def _reboot_at(t: float):
    from ims_station.hil.faults import FaultPlan

    return FaultPlan(reboots=[t])
