"""docs/doctor.md: its table of checks is the doctor's, and its "Try it" procedure runs as written
(the ```` ```sh {test} ```` blocks, in order, in a scratch directory, with the ``ims-station`` of the
tree under test first on PATH)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from ims_station import doctor

DOC = Path(__file__).resolve().parent.parent / "docs" / "doctor.md"


def test_the_documented_checks_are_the_doctors():
    text = DOC.read_text()
    table = text.split("## The checks", 1)[1].split("###", 1)[0]
    assert re.findall(r"^\| `(\w+)` \|", table, re.M) == list(doctor.CHECKS)
    assert re.findall(r"^### `(\w+)`$", text, re.M) == list(doctor.CHECKS)


def test_the_try_it_procedure_runs_as_written(tmp_path):
    blocks = re.findall(r"^```sh \{test\}\n(.*?)^```$", DOC.read_text(), re.M | re.S)
    assert len(blocks) == 2
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "ims-station"
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m ims_station "$@"\n')
    shim.chmod(0o755)
    work = tmp_path / "station"
    work.mkdir()
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = subprocess.run(["bash", "-e", "-c", "\n".join(blocks)], cwd=work, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"station.toml: ok" in proc.stdout
    assert "doctor: exit status 2" in proc.stdout          # the port is missing before the board runs
    after = json.loads((work / "after.json").read_text())
    by = {f["check"]: f for f in after["findings"] if f["check"] in ("port", "board", "board_clock")}
    assert {k: f["status"] for k, f in by.items()} == {"port": "ok", "board": "ok", "board_clock": "ok"}, by
    assert not (work / "board1").exists()                  # hil run removed its link on SIGTERM
