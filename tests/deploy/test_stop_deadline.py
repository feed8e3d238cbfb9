"""``edge run`` and ``relay run`` end on SIGTERM within the unit's ``TimeoutStopSec`` even when the
broker never answers -- a contract of deploy/systemd/ (past it, systemd SIGKILLs the daemon), not a
performance figure: the bound is half the unit's own ``TimeoutStopSec``, read from the unit file.

The broker never answers in the two ways that block a connection attempt inside the C library,
where Python cannot interrupt it:

* ``tls``: a TCP port that accepts (the kernel completes the handshake of every connection in the
  listen backlog) but never says a word, so the TLS handshake waits for a ServerHello; SIGTERM is
  sent once the daemon's connection is seen waiting there;
* ``dns``: the broker's name lookup never returns, as with a resolver that does not answer
  (``getaddrinfo`` blocks, and a C library's timeouts and retries add up to tens of seconds).
  Injected into the daemon only -- a ``sitecustomize`` on its ``PYTHONPATH`` makes
  ``socket.getaddrinfo`` block for the one name ``broker.invalid`` -- since the test cannot own a
  DNS server.

Before the fix the session thread sat in that attempt while ``run`` joined it for 10 s; and the
SIGTERM handler called ``threading.Event.set()``, which deadlocks (a SIGKILL after TimeoutStopSec)
when the signal arrives while the main thread holds that Event's lock -- a race this test cannot
force from outside; tests/deploy/test_service.py checks the handler that replaced it.
"""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ims_station.config import write_secret_file
from tests.integration.tlsconf import make_ca_and_server_cert

UNITS = Path(__file__).resolve().parents[2] / "deploy" / "systemd"
START_LIMIT_S = 120.0          # bounds, not timing assertions: a slow machine only waits longer
HANGING_NAME = "broker.invalid"

SITECUSTOMIZE = f'''
import socket, threading
_real = socket.getaddrinfo
def getaddrinfo(host, *args, **kw):
    if host == {HANGING_NAME!r}:
        threading.Event().wait()        # a resolver that never answers
    return _real(host, *args, **kw)
socket.getaddrinfo = getaddrinfo
'''


def stop_bound(unit: str) -> float:
    """Half the unit's TimeoutStopSec: what stopping may take, with room for a loaded machine."""
    m = re.search(r"^TimeoutStopSec=(\d+)s?$", (UNITS / unit).read_text(), re.M)
    assert m, f"{unit}: no TimeoutStopSec"
    return int(m.group(1)) / 2


@pytest.fixture
def silent_broker():
    """A listening TCP socket nobody accepts from: connections complete, nothing is ever sent."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    yield s
    s.close()


def broker_table(kind: str, silent: socket.socket, tmp_path: Path, key: str) -> str:
    ca, _, _ = make_ca_and_server_cert(tmp_path)
    write_secret_file(tmp_path / "mqtt.password", b"secret\n")
    host, port = ("127.0.0.1", silent.getsockname()[1]) if kind == "tls" else (HANGING_NAME, 8883)
    return (f'[[{key}]]\nhost = "{host}"\nport = {port}\ntls_ca = "{ca}"\n'
            f'username = "STA01"\npassword_file = "mqtt.password"\n')


def run_and_stop(argv: list[str], cwd: Path, kind: str, silent: socket.socket,
                 bound: float) -> tuple[float, int | None, str]:
    """Start *argv* as systemd does (Type=notify), wait for READY=1 and for the broker connection to
    be under way, SIGTERM it and wait up to *bound* seconds; return (seconds from SIGTERM to exit,
    exit status or None if it still ran, output)."""
    notify_path = cwd / "notify"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(0.1)
    env = dict(os.environ, NOTIFY_SOCKET=str(notify_path))
    if kind == "dns":
        (cwd / "hang").mkdir()
        (cwd / "hang" / "sitecustomize.py").write_text(SITECUSTOMIZE)
        env["PYTHONPATH"] = os.pathsep.join([str(cwd / "hang"), *filter(None, [env.get("PYTHONPATH")])])
    out = open(cwd / "output", "w+")
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_LIMIT_S
        got: list[str] = []
        while not any(g.startswith("READY=1") for g in got):
            assert proc.poll() is None and time.monotonic() < deadline, open(out.name).read()
            try:
                got.append(notify.recv(4096).decode())
            except socket.timeout:
                pass
        if kind == "tls":               # the daemon's TCP connection waits in the backlog: TLS is hanging
            assert select.select([silent], [], [], START_LIMIT_S)[0], open(out.name).read()
        else:
            time.sleep(0.3)             # the session thread is in getaddrinfo from its first attempt on
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=bound)
        except subprocess.TimeoutExpired:
            rc = None
        return time.monotonic() - t0, rc, open(out.name).read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()
        out.close()


@pytest.mark.parametrize("kind", ["tls", "dns"])
def test_the_gateway_stops_within_its_units_deadline_while_the_broker_hangs(tmp_path, silent_broker, kind):
    bound = stop_bound("ims-gateway.service")
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

[uplink]
""" + broker_table(kind, silent_broker, tmp_path, "uplink.brokers"))
    took, rc, output = run_and_stop([sys.executable, "-m", "ims_station", "edge", "run", "--config",
                                     "station.toml"], tmp_path, kind, silent_broker, bound)
    assert rc == 0, (f"status {rc} {took:.1f} s after SIGTERM (None: still running; bound {bound:g} s)", output)
    # nothing lost on the way out: the outbox was closed cleanly (its pid lock released, WAL folded in)
    assert (tmp_path / "data" / "outbox.sqlite").exists() and not (tmp_path / "data" / "outbox.sqlite-wal").exists()


def test_the_relay_stops_within_its_units_deadline_while_the_broker_hangs(tmp_path, silent_broker):
    bound = stop_bound("ims-relay@.service")
    (tmp_path / "trust").mkdir()
    (tmp_path / "relay1.toml").write_text(f"""
[relay]
data_dir = "data"
trust_dir = "trust"
instance = "relay1"

""" + broker_table("tls", silent_broker, tmp_path, "broker"))
    took, rc, output = run_and_stop([sys.executable, "-m", "ims_station", "relay", "run", "--config",
                                     "relay1.toml"], tmp_path, "tls", silent_broker, bound)
    assert rc == 0, (f"status {rc} {took:.1f} s after SIGTERM (None: still running; bound {bound:g} s)", output)
