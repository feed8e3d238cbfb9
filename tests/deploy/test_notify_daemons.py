"""``ims-station edge run`` and ``ims-station relay run`` under a supervisor speaking sd_notify, as
systemd runs them with ``Type=notify`` and ``WatchdogSec=`` (deploy/systemd/): each process gets
``$NOTIFY_SOCKET`` (a datagram socket this test reads) and ``$WATCHDOG_USEC``, and must send
``READY=1`` with a ``STATUS=`` line once started, ``WATCHDOG=1`` while running, ``STOPPING=1`` on
SIGTERM, and exit 0.  Under ``$JOURNAL_STREAM`` the log has syslog priority prefixes and no time
stamps, and the routine summary is an INFO line (``<6>``), not a WARNING.

No broker: the gateway has no ``[uplink]`` and a port that does not exist (retried), the relay a
broker port nobody listens on (retried) -- neither is a reason not to be READY.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import free_port

START_LIMIT_S = 120.0          # bounds, not timing assertions: a slow machine only waits longer


@pytest.fixture
def notify_socket():
    d = tempfile.mkdtemp(prefix="ims-n-", dir="/tmp")
    path = os.path.join(d, "notify")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    yield path, s
    s.close()
    os.unlink(path)
    os.rmdir(d)


def supervise(argv: list[str], cwd: Path, notify) -> tuple[list[str], str, int]:
    """Start *argv* as systemd would, wait for READY=1 and two WATCHDOG=1 (WatchdogSec=1: a ping
    every 0.5 s), SIGTERM it, collect until it exits.  Returns (datagrams, stderr, exit status)."""
    path, sock = notify
    err = open(cwd / "stderr", "w+")
    st = os.fstat(err.fileno())
    env = dict(os.environ, NOTIFY_SOCKET=path, WATCHDOG_USEC="1000000",
               JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=err)
    got: list[str] = []
    deadline = time.monotonic() + START_LIMIT_S
    try:
        sock.settimeout(0.2)
        while got.count("WATCHDOG=1") < 2 and time.monotonic() < deadline and proc.poll() is None:
            try:
                got.append(sock.recv(4096).decode())
            except socket.timeout:
                pass
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(30)
        sock.settimeout(0)
        while True:
            try:
                got.append(sock.recv(4096).decode())
            except BlockingIOError:
                break
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err.seek(0)
    return got, err.read(), rc


def check_protocol(got: list[str], log: str, rc: int, summary_start: str) -> None:
    assert rc == 0, log
    assert got and got[0].startswith("READY=1\nSTATUS=" + summary_start), (got, log)
    assert got.count("WATCHDOG=1") >= 2, got
    assert got.index("WATCHDOG=1") > 0                   # pings only after READY
    assert got[-1].startswith("STOPPING=1"), got
    lines = log.splitlines()
    summary = [ln for ln in lines if summary_start in ln]
    assert summary and all(ln.startswith("<6>") for ln in summary), log          # INFO, journald style
    assert all(ln[:1] == "<" and ln[2:3] == ">" for ln in lines), log            # every line prioritised
    assert not any(ln[3:5] == "20" for ln in lines), log                         # no time stamps


def test_edge_run_speaks_sd_notify(tmp_path, notify_socket):
    (tmp_path / "board.key").write_bytes(os.urandom(32))
    (tmp_path / "board.key").chmod(0o600)
    (tmp_path / "station.toml").write_text(f"""
[station]
code = "STA01"
network = "IM"
data_dir = "{tmp_path / 'data'}"

[[ports]]
name = "seismic"
url = "{tmp_path / 'no-such-tty'}"
board = "sim"
board_id = 1
key_file = "board.key"
""")
    got, log, rc = supervise([sys.executable, "-m", "ims_station", "edge", "run", "--config", "station.toml",
                              "--stats-every", "60"], tmp_path, notify_socket)
    check_protocol(got, log, rc, "gateway IM.STA01: ports seismic DOWN; frames 0; outbox 0 frames")


def test_relay_run_speaks_sd_notify(tmp_path, notify_socket):
    (tmp_path / "trust").mkdir()
    (tmp_path / "relay1.toml").write_text(f"""
[relay]
data_dir = "data"
trust_dir = "trust"
instance = "relay1"

[[broker]]
host = "127.0.0.1"
port = {free_port()}
""")
    got, log, rc = supervise([sys.executable, "-m", "ims_station", "relay", "run", "--config", "relay1.toml",
                              "--stats-every", "60"], tmp_path, notify_socket)
    check_protocol(got, log, rc, "relay relay1: received 0, archived 0")
    assert "broker DOWN" in got[0]
