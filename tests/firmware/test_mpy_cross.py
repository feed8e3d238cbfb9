"""Every file under firmware/ compiles with mpy-cross (the MicroPython compiler used at deploy)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.firmware.conftest import FIRMWARE

FILES = sorted(FIRMWARE.glob("*.py"))


def mpy_cross(src, out) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mpy_cross", "-o", str(out), str(src)],
                          capture_output=True, text=True, timeout=60)


def test_firmware_has_the_expected_modules():
    names = {p.name for p in FILES}
    assert {"link.py", "ring.py", "timebase.py", "ads131m0x.py", "digitizer.py", "gnss.py", "main.py"} <= names


@pytest.mark.parametrize("src", FILES, ids=[p.name for p in FILES])
def test_compiles(src, tmp_path):
    proc = mpy_cross(src, tmp_path / (src.stem + ".mpy"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / (src.stem + ".mpy")).read_bytes()[:1] == b"M"   # .mpy header


def test_mpy_cross_rejects_cpython_only_syntax(tmp_path):
    """The gate can fail: a match statement (CPython 3.10+) is refused."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f(x):\n    match x:\n        case 1:\n            return 2\n")
    proc = mpy_cross(bad, tmp_path / "bad.mpy")
    assert proc.returncode != 0 and "SyntaxError" in proc.stderr
