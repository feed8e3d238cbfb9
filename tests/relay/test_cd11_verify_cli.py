"""Issue 7 §1: ``ims-station cd11 verify`` on frames with out-of-calendar times (built by an
independent writer) refuses each with one line naming the field -- no traceback -- and exits 1."""

from __future__ import annotations

import subprocess
import sys

from ims_station.cli import main

from .cd11_writer import data_frame
from .test_poison import BAD_TIMES

CH = [("STA01", "BHZ", "00")]


def test_cd11_verify_refuses_out_of_calendar_frames_one_line_each(keys, factory, tmp_path, capsys):
    files = []
    for i, bad in enumerate(BAD_TIMES):
        p = tmp_path / f"bad{i}.cd11"
        p.write_bytes(data_frame("STA01", 1, bad, CH) if i % 2 else
                      data_frame("STA01", 1, "2023299 00:00:00.000", CH, times=[bad]))
        files.append(p)
    good = tmp_path / "good.cd11"
    good.write_bytes(factory.build(8640 * 8700))
    rc = main(["cd11", "verify", "--trust", str(keys.trust_dir), str(good), *map(str, files)])
    out = capsys.readouterr()
    assert rc == 1
    lines = [line for line in out.out.splitlines() if line.startswith("FAIL")]
    assert len(lines) == len(files), out.out
    for p, line, bad in zip(files, lines, BAD_TIMES):
        assert line.startswith(f"FAIL {p}: CD-1.1 data frame: data.") and bad in line
        assert ("nominal_time at byte 44" in line) == (p.name[3] in "13")
    assert "Traceback" not in out.out + out.err
    assert out.out.splitlines()[-1] == f"1 frames in {len(files) + 1} files: {len(files)} failures"


def test_cd11_verify_console_script_exit_status_and_no_traceback(keys, tmp_path):
    p = tmp_path / "bad.cd11"
    p.write_bytes(data_frame("STA01", 1, "9999365 23:59:60.999", CH))
    r = subprocess.run([sys.executable, "-m", "ims_station", "cd11", "verify", "--trust", str(keys.trust_dir),
                        str(p)], capture_output=True, text=True)
    assert r.returncode == 1 and "Traceback" not in r.stderr + r.stdout
    assert r.stdout.splitlines()[0].endswith("data.nominal_time at byte 44: time stamp '9999365 23:59:60.999': "
                                             "after the last representable instant (9999-12-31)")
