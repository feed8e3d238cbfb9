"""Static type check of firmware/ against the MicroPython rp2 stubs (digitizer spec §3c).

Owns: running mypy on every file under firmware/ with the stubs of ``micropython-rp2-rpi-pico-stubs``
(and its dependency ``micropython-stdlib-stubs``, a reduced typeshed) as the *only* standard
library and module path, laid out as the board sees it (``/main.py``, ``/board_config.py``,
``/lib/imsfw/``).  That catches what mpy-cross (syntax) and test_portability.py (an import list)
cannot: a misspelt ``machine``/``time``/``micropython`` API, wrong argument types, a stdlib module
or function the board lacks (``dataclasses``, ``hmac``, ``binascii.crc_hqx``).  The second test
proves the gate fails on such code.

Does not own: checking the gateway's CPython code (a separate run with the normal typeshed), or
whether a module listed by the stubs is really in a given firmware build (the stubs list
``hashlib.sha1`` for RPI_PICO; only a run on the board settles that).

mypy rather than pyright: pyright's PyPI package downloads its npm package on first run, and
mypy with a custom typeshed dir also rejects CPython-only stdlib imports without an empty venv.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from ims_station import boards
from tests.conftest import missing_prerequisite, need_module
from tests.firmware.conftest import FIRMWARE

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "mypy-firmware.ini"
STUB_DISTS = ("micropython-rp2-rpi-pico-stubs", "micropython-stdlib-stubs")
FIRMWARE_MODULES = {"main", "board_config", "imsfw"}

# board_config.py is generated literal data (validated by ims_station.boards, not by mypy); checked
# as a literal, every nested lookup would be `object`.  The checker sees its interface only.
BOARD_CONFIG_STUB = "from typing import Any\n\nBOARD: dict[str, Any]\n"


def _stub_tree(dest: Path) -> tuple[Path, set[str]]:
    """Copy the stub packages' .pyi files into *dest* (what `pip install --target typings` gives).

    Returns the typings folder and the top-level names of the modules the stubs provide outside
    ``stdlib/`` (the ignore_errors section).  The files are found from the installed
    distributions' records, wherever pip put them.
    """
    typings = dest / "typings"
    tops: set[str] = set()
    for name in STUB_DISTS:
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            missing_prerequisite(f"the stub package {name}", "pip install -e .[test] (./run installs it)")
        for f in dist.files or ():
            if f.parts[0].endswith((".dist-info", ".egg-info")):
                continue
            if f.suffix != ".pyi" and not (f.parts[0] == "stdlib" and f.name == "VERSIONS"):
                continue
            target = typings.joinpath(*f.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(dist.locate_file(f), target)
            if f.parts[0] not in ("stdlib", "stubs"):
                tops.add(f.parts[0].removesuffix(".pyi"))
    assert (typings / "stdlib" / "VERSIONS").is_file(), "micropython-stdlib-stubs has no stdlib/VERSIONS"
    assert {"machine", "time", "micropython"} <= tops, f"stub modules found from the install records: {sorted(tops)}"
    assert not tops & FIRMWARE_MODULES, f"a stub module would hide firmware code: {tops & FIRMWARE_MODULES}"
    return typings, tops


@pytest.fixture(scope="module")
def checker(tmp_path_factory: pytest.TempPathFactory):
    """A function running mypy on given files (relative to a board-layout root) -> (rc, output)."""
    need_module("mypy")
    work = tmp_path_factory.mktemp("typecheck")
    typings, tops = _stub_tree(work)
    ignored = ",".join(sorted(f"{t},{t}.*" for t in tops))
    config = work / "mypy.ini"
    config.write_text(CONFIG.read_text() + f"\n# errors inside the stubs themselves\n[mypy-{ignored}]\n"
                      "ignore_errors = True\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MYPY")}
    env["MYPYPATH"] = str(typings)

    def run(root: Path, files: list[str]) -> tuple[int, str]:
        proc = subprocess.run(
            [sys.executable, "-m", "mypy", "--config-file", str(config), "--custom-typeshed-dir",
             str(typings), "--cache-dir", str(work / "cache"), *files],
            cwd=root, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode in (0, 1), f"mypy crashed (rc {proc.returncode}):\n{proc.stdout}{proc.stderr}"
        return proc.returncode, proc.stdout + proc.stderr

    return run


def board_layout(root: Path) -> list[str]:
    """firmware/ as deployed: /main.py, /lib/imsfw/*.py (on sys.path), board_config beside main."""
    pkg = root / "imsfw"
    pkg.mkdir(parents=True)
    files = []
    for src in sorted(FIRMWARE.glob("*.py")):
        if src.name == "main.py":
            shutil.copyfile(src, root / "main.py")
            files.append("main.py")
        else:
            shutil.copyfile(src, pkg / src.name)
            files.append(f"imsfw/{src.name}")
    (root / "board_config.pyi").write_text(BOARD_CONFIG_STUB)
    return files


def test_firmware_type_checks_against_rp2_stubs(checker, tmp_path: Path) -> None:
    files = board_layout(tmp_path)
    assert "main.py" in files and len(files) == len(list(FIRMWARE.glob("*.py")))
    rc, out = checker(tmp_path, files)
    # Name the repository files, not the copies.
    out = re.sub(r"^(?:imsfw/)?(\w+\.py)", r"firmware/\1", out, flags=re.M)
    assert rc == 0, f"mypy against the MicroPython rp2 stubs:\n{out}"
    assert f"no issues found in {len(files)} source files" in out, out


# Each line must draw exactly the error code beside it: the gate is not vacuous.
BAD = {
    'machine.UART(0).writeX(b"")': "attr-defined",          # misspelt method
    'time.sleep_ms("5")': "arg-type",                       # wrong argument type
    "t: int = time.ticks_us()": "assignment",               # ticks are their own type (wrap, use ticks_diff)
    "micropython.schedul(print, 0)": "attr-defined",        # misspelt micropython API
    "import dataclasses": "import-not-found",               # CPython-only stdlib module
    "import hmac": "import-not-found",                      # micropython-lib, not in the rp2 image
    "binascii.crc_hqx(b'', 0)": "attr-defined",             # CPython-only stdlib function
}


def test_gate_reports_misuse_of_board_apis(checker, tmp_path: Path) -> None:
    lines = ["import binascii", "import time", "import machine", "import micropython", "", "", "def f():"]
    first = len(lines) + 1
    lines += ["    " + code for code in BAD]
    (tmp_path / "bad.py").write_text("\n".join(lines) + "\n")
    rc, out = checker(tmp_path, ["bad.py"])
    assert rc == 1, out
    found = {int(m.group(1)): m.group(2)
             for m in re.finditer(r"^bad\.py:(\d+): error: .*\[([\w-]+)\]$", out, re.M)}
    expected = {first + i: code for i, code in enumerate(BAD.values())}
    assert found == expected, out
