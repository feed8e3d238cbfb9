"""docs/cd11-tcp.md: its limits and alert-reason tables are the code's, and its "Try it" example
runs as written (the ```` ```sh {test} ```` block, in a scratch directory holding ``LBTB.cd11``,
with the ``ims-station`` of the tree under test first on PATH; only its two port numbers are
replaced by free ones, each replacement must apply)."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from ims_station.cd11tcp import LinkLimits
from ims_station.cd11tcp.link import ALERT_REASONS
from tests.cd11tcp.util import SAMPLES

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "cd11-tcp.md"


def _table(section: str) -> list[list[str]]:
    text = DOC.read_text().split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("| ")]
    return [r for r in rows[1:] if not r[0].startswith("---")]      # without header and rule


def test_limits_table_is_linklimits():
    rows = _table("Limits")
    assert [r[0].strip("`") for r in rows] == [f.name for f in dataclasses.fields(LinkLimits)]


def test_alert_reason_table_is_the_codes():
    rows = _table("Alert reasons")
    assert {r[0].strip("`"): r[1] for r in rows} == ALERT_REASONS


def test_every_raised_reason_is_documented():
    src = "".join(p.read_text() for p in (ROOT / "ims_station" / "cd11tcp").glob("*.py"))
    raised = set(re.findall(r'PeerProtocolError\(\s*"([a-z-]+)"', src))
    assert raised and raised <= set(ALERT_REASONS), raised - set(ALERT_REASONS)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_try_it_runs_as_written(tmp_path):
    blocks = re.findall(r"^```sh \{test\}\n(.*?)^```$", DOC.read_text(), re.M | re.S)
    assert len(blocks) == 1
    script = blocks[0]
    for port in ("18000", "18001"):
        assert port in script
        script = script.replace(port, str(_free_port()))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "ims-station"
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m ims_station "$@"\n')
    shim.chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(SAMPLES / "real_LBTB_seq9720700.cd11", work / "LBTB.cd11")
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = subprocess.run(["bash", "-e", "-m", "-c", script], cwd=work, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "LBTB:0: 1 frames acknowledged by 127.0.0.1:" in proc.stdout
    assert "(sent 1, resent 0, consumer range 9720700..9720700)" in proc.stdout
    log = (work / "receive.log").read_text()
    assert "stopped: 1 frames stored, 0 duplicates, 0 conflicts, 0 refused" in log
