"""``ims-station edge run`` as real processes: a second gateway on the same outbox or the same serial
port stops at once naming the first one's PID, and an outbox it cannot use stops it with one line
naming the file -- exit status 2, no traceback, the file untouched."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ims_station.config import write_secret_file
from ims_station.locks import flock_holders

from .fakeboard import KEY


def station_file(d: Path, url: str, outbox: Path | None = None) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    write_secret_file(d / "b.key", KEY)
    f = d / "station.toml"
    f.write_text(f'[station]\ncode = "XS01"\nnetwork = "IM"\ndata_dir = "spool"\n\n'
                 f'[[ports]]\nurl = "{url}"\nkey_file = "b.key"\nboard_id = 7\nchannels = {{ 0 = "00.BHZ" }}\n'
                 + (f'\n[outbox]\npath = "{outbox}"\n' if outbox else ""))
    return f


def edge(cfg: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ims_station", "edge", "run", "--config", str(cfg), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished(cfg: Path) -> tuple[int, str]:
    p = edge(cfg, "--seconds", "30")
    out, err = p.communicate(timeout=60)
    # edge run logs at INFO (its start-up notes, docs/deployment.md section 4): the error is what is left
    return p.returncode, "".join(ln for ln in err.splitlines(True) if " INFO " not in ln)


@pytest.fixture
def pty():
    master, slave = os.openpty()
    try:
        yield os.ttyname(slave)
    finally:
        os.close(master)
        os.close(slave)


def wait_until(cond, what: str, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"{what}: the first gateway exited: {proc.communicate()}")
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_second_gateway_on_the_same_outbox_or_port_stops_naming_the_first(tmp_path, pty):
    cfg = station_file(tmp_path / "a", pty)
    first = edge(cfg)
    try:
        lock = tmp_path / "a" / "spool" / "outbox.sqlite.lock"
        wait_until(lambda: lock.exists() and lock.read_text().strip() == str(first.pid), "outbox locked", first)
        wait_until(lambda: first.pid in flock_holders(pty), "port locked", first)

        # The same station file again: both would connect as one client and share the outbox.
        rc, err = finished(cfg)
        assert rc == 2, err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert f"in use by process {first.pid} (" in err and str(lock.with_suffix("")) in err, err

        # Another station file on the same serial port: they would split the board's bytes.
        rc, err = finished(station_file(tmp_path / "b", pty))
        assert rc == 2, err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert f"serial port {pty} is in use by process {first.pid} (" in err, err
        assert "edge run" in err                  # the holder's command line
        assert first.poll() is None               # the first one runs on, undisturbed
    finally:
        first.send_signal(signal.SIGTERM)
        out, err = first.communicate(timeout=30)
    assert first.returncode == 0, err


def _damaged(kind: str, path: Path) -> None:
    import sqlite3

    if kind == "not a database":
        path.write_bytes(os.urandom(16384))
        return
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE frames (id INTEGER PRIMARY KEY, payload BLOB)")
    db.executemany("INSERT INTO frames (payload) VALUES (?)", [(os.urandom(3000),) for _ in range(50)])
    db.commit()
    db.close()
    with open(path, "r+b") as f:              # "truncated"
        f.truncate(path.stat().st_size // 3)


@pytest.mark.parametrize("kind", ["not a database", "truncated"])
def test_damaged_outbox_stops_the_gateway_with_one_line_and_is_left_untouched(tmp_path, pty, kind):
    box = tmp_path / "outbox.sqlite"
    _damaged(kind, box)
    before = box.read_bytes()
    rc, err = finished(station_file(tmp_path, pty, box))
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"outbox {box} is " in err and ("damaged" in err or "truncated" in err) and ".recover" in err, err
    assert box.read_bytes() == before


def test_missing_outbox_directory_tree_stops_the_gateway(tmp_path, pty):
    box = tmp_path / "mnt" / "sd" / "outbox.sqlite"
    rc, err = finished(station_file(tmp_path, pty, box))
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert str(box) in err and "does not exist" in err, err
    assert not (tmp_path / "mnt").exists()


def test_read_only_outbox_stops_the_gateway(tmp_path, pty):
    from tests.conftest import need_root

    need_root("mounting a tmpfs and remounting it read-only (CI runs as root)")
    mnt = tmp_path / "ro"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], check=True)
    try:
        box = mnt / "outbox.sqlite"
        cfg = station_file(tmp_path, pty, box)
        from ims_station.clock import FakeClock
        from ims_station.edge.outbox import Outbox

        Outbox(box, max_bytes=1 << 20, max_age_s=1e9, clock=FakeClock()).close()   # as a gateway left it
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        before = box.read_bytes()
        rc, err = finished(cfg)
        assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err, err
        assert str(box) in err and "read-only" in err, err
        assert box.read_bytes() == before
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
