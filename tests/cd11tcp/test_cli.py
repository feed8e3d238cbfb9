"""``ims-station cd11 send`` to ``ims-station cd11 receive`` as subprocesses: the real sample
frames are archived byte-identical, a second send adds no duplicate, bad input is refused."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

from tests.cd11tcp.util import SAMPLES

DATA_FILES = ["real_LBTB_seq9720700.cd11", "gms_reheadered_PLCA_seq1669371.cd11",
              "generated_data_ca20.cd11", "generated_data_s4.cd11", "generated_data_5ch_mixed.cd11"]
EXPECTED = {  # file -> (frame-set directory, sequence number)
    "real_LBTB_seq9720700.cd11": ("LBTB_0", 9720700),
    "gms_reheadered_PLCA_seq1669371.cd11": ("TEST_GMS", 1669371),
    "generated_data_ca20.cd11": ("STA01_0", 1),
    "generated_data_s4.cd11": ("STA01_0", 2),
    "generated_data_5ch_mixed.cd11": ("STA01_0", 42),
}
CLI = [sys.executable, "-m", "ims_station"]


def start_receive(out: Path, *extra: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([*CLI, "cd11", "receive", "--listen", "127.0.0.1:0", "--out", str(out),
                             "--acknack-interval", "0.5", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = proc.stdout.readline()
    m = re.search(r"manager=127\.0\.0\.1:(\d+)", line)
    assert m, line
    return proc, int(m.group(1))


def stop_receive(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0, out
    return out


def send(port: int, *files: str, extra=()) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "cd11", "send", *files, "--to", f"127.0.0.1:{port}",
                           "--acknack-interval", "0.5", "--timeout", "10", *extra],
                          capture_output=True, text=True, timeout=30)


def test_send_samples_to_receive_byte_identical(tmp_path):
    out = tmp_path / "archive"
    proc, port = start_receive(out, "--station", "LBTB", "--station", "TEST@127.0.0.1",
                               "--station", "STA01@127.0.0.0/8")
    try:
        files = [str(SAMPLES / f) for f in DATA_FILES]
        r = send(port, *files)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "STA01:0: 3 frames acknowledged" in r.stdout
        for name, (d, seq) in EXPECTED.items():
            assert (out / d / f"{seq:020d}.cd11").read_bytes() == (SAMPLES / name).read_bytes()
        assert sorted(p.name for p in out.glob("*/*.cd11")) == sorted(f"{s:020d}.cd11" for _, s in EXPECTED.values())
        # again: the frames arrive a second time and are recognised, nothing is written twice
        r = send(port, *files)
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        text = stop_receive(proc)
    m = re.search(r"stopped: (\d+) frames stored, (\d+) duplicates, (\d+) conflicts", text)
    assert m and m.group(1) == "5" and m.group(3) == "0", text
    assert int(m.group(2)) <= 5       # frames of the second send that arrived again (timing)
    assert "data identified" in text and "manager redirect" in text


def test_send_to_a_consumer_that_refuses_the_station(tmp_path):
    proc, port = start_receive(tmp_path / "a", "--station", "OTHER")
    try:
        r = send(port, str(SAMPLES / "generated_data_s4.cd11"), extra=["--timeout", "1"])
        assert r.returncode == 1
        assert "not all 1 frames acknowledged" in r.stderr and "unknown-station" in r.stderr
    finally:
        stop_receive(proc)


def test_send_bad_input(capsys):
    from ims_station.cli import main

    assert main(["cd11", "send", str(SAMPLES / "generated_acknack.cd11"), "--to", "127.0.0.1:1"]) == 2
    assert "is a Acknack, not a data frame" in capsys.readouterr().err
    assert main(["cd11", "send", str(SAMPLES / "real_LBTB_seq9720700.cd11"), "--to", "127.0.0.1:1",
                 "--station", "XYZ"]) == 2
    assert "not --station 'XYZ'" in capsys.readouterr().err
    assert main(["cd11", "send", str(SAMPLES / "real_LBTB_seq9720700.cd11"), "--to", "nowhere"]) == 2
    assert "--to: 'nowhere' is not HOST:PORT" in capsys.readouterr().err
    assert main(["cd11", "send", str(SAMPLES / "real_LBTB_seq9720700.cd11"), "--to", "127.0.0.1:1",
                 "--acknack-interval", "90"]) == 2
    assert "acknack_interval_s must be <= 60" in capsys.readouterr().err


def test_receive_killed_and_restarted_keeps_frames_and_gap_state(tmp_path):
    """SIGKILL of ``cd11 receive`` after it acknowledged: the frames and the gap state are on disk;
    the restarted receiver reports the same state and stores nothing twice."""
    import sqlite3

    out = tmp_path / "archive"
    proc, port = start_receive(out)
    files = [str(SAMPLES / f) for f in ("generated_data_ca20.cd11", "generated_data_5ch_mixed.cd11")]
    r = send(port, *files)
    assert r.returncode == 0, r.stdout + r.stderr
    proc.kill()
    proc.wait(timeout=10)
    import json

    rec = json.loads(sqlite3.connect(out / "state.sqlite").execute("SELECT record FROM frame_sets").fetchone()[0])
    assert (rec["lowest"], rec["highest"], [g[:2] for g in rec["gaps"]]) == (1, 42, [[2, 42]])
    proc, port = start_receive(out)
    try:
        r = send(port, *files, str(SAMPLES / "generated_data_s4.cd11"))
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        text = stop_receive(proc)
    assert "stopped: 1 frames stored" in text and "0 conflicts" in text
    assert sorted(p.name for p in (out / "STA01_0").glob("*.cd11")) == [
        f"{s:020d}.cd11" for s in (1, 2, 42)]
