"""A running demo-like station for the console's pilot tests: the production assembly
(``edge/station.assemble``) of a ``sim://`` HIL board with a trigger stage, keys chosen by time
from a keystore, served by ``statusapi.serve_station`` on a temporary Unix socket, and stepped on
its own thread as ``edge run``'s pump threads would (so the actions' decoder calls run there)."""

from __future__ import annotations

import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

START = 1_780_000_000


@dataclass
class RunningStation:
    station: Any
    api: Any
    socket: Path
    keystore: Path
    sim: Any


def start_station(root: Path, seconds: float = 20.0):
    """Assemble, run *seconds* of simulated time, serve, and step on a thread; a generator."""
    from ims_station import statusapi
    from ims_station.broker import BrokerConfig
    from ims_station.demo import SIM_CHANNELS, make_keys, write_station_file
    from ims_station.edge.config import load_station_config
    from ims_station.edge.station import assemble
    from ims_station.hil.sim import Simulation, register, unregister

    keys, _ = make_keys(root, ["MET1"], [c for _, c in SIM_CHANNELS], valid_from=START)
    k = keys["MET1"]
    sim = Simulation(board="sim", seed=3, key=k.board_key, start_utc=START)
    name = f"console-{os.getpid()}-{id(root)}"
    register(name, sim)
    f = write_station_file(root / "MET1" / "station.toml", "MET1", k, sim_name=name, board_id=sim.board.board_id,
                           baud=sim.baud, broker=BrokerConfig(host="127.0.0.1", port=9), pin_keys=False)
    sock = Path(tempfile.mkdtemp(prefix="imsc-")) / "status.sock"      # short: AF_UNIX path limit
    with open(f, "a") as fh:
        fh.write(f'\n[trigger]\n\n[status]\nsocket = "{sock}"\n')
    st = assemble(load_station_config(f), clock=sim.clock)
    stop = threading.Event()
    lock = threading.Lock()
    try:
        while sim.clock.monotonic() < seconds:
            st.step()
        api = statusapi.serve_station(st)
        assert api is not None and api.socket_path == sock
        end = sim.clock.monotonic() + 3          # the waveform tap (attached by serve_station) fills
        while sim.clock.monotonic() < end:
            st.step()

        def run() -> None:
            while not stop.is_set():
                with lock:
                    st.step()
                time.sleep(0.05)          # a live station, not a busy loop on a shared machine
        t = threading.Thread(target=run, name="console-station", daemon=True)
        t.start()
        try:
            yield RunningStation(st, api, sock, k.keystore, sim)
        finally:
            stop.set()
            t.join(timeout=10)
            api.close()
    finally:
        st.close()
        unregister(name)
        try:
            sock.parent.rmdir()
        except OSError:
            pass


@pytest.fixture(scope="module")
def running_station(tmp_path_factory):
    yield from start_station(tmp_path_factory.mktemp("console"))
