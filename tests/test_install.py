"""The documented install is a plain ``pip install`` (docs/deployment.md), not ``pip install -e``:
build the wheel from the source tree, install it into a fresh venv, and run ``ims-station demo`` and
``ims-station hil run`` from there, in a folder outside the repository.

Only the project comes from the wheel.  To keep the test fast and offline, the fresh venv is made
``--without-pip``, the wheel is installed into it with this venv's pip (``pip --python``,
``--no-deps``), and a ``.pth`` file lists this venv's site-packages for the *dependencies*.  That
directory holds the editable install of the project too, but through its own ``.pth`` finder hook,
which a path line in another ``.pth`` does not run; every test asserts that ``ims_station`` was
imported from the fresh venv.

The wheel is also checked for completeness: every file the repository keeps in a folder that is
installed as a package is in it (a data file added beside the code without a package-data rule is
caught here, not by an operator), and every top-level folder of the architecture that the running
code needs is installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import time
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT, need_amqtt

# Top-level folders of the architecture (README.md, "Layout") that the installed program needs at
# run time: code, and the board definitions every command that starts a board or a gateway loads.
RUNTIME_FOLDERS = {"ims_station", "edge", "hil", "relay", "firmware", "boards"}


def tracked_files() -> list[str]:
    """The source tree as a clone would have it: tracked and new (not ignored) files."""
    out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         capture_output=True, check=True).stdout
    return sorted({f for f in out.decode().split("\0") if f and (ROOT / f).is_file()})


def _package_dirs() -> dict[str, str]:
    """Package name -> repository folder, from pyproject.toml (packages + package-dir)."""
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping = cfg.get("package-dir", {})
    out = {}
    for pkg in cfg["packages"]:
        parent, _, leaf = pkg.rpartition(".")
        if pkg in mapping:
            out[pkg] = mapping[pkg]
        else:
            out[pkg] = f"{out[parent]}/{leaf}" if parent in out else pkg.replace(".", "/")
    return out


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel pip builds from a copy of the source tree (pip builds in the tree: build/, egg-info)."""
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    for f in tracked_files():
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        (src / f).write_bytes((ROOT / f).read_bytes())
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(work / "dist"), str(src)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (whl,) = (work / "dist").glob("ims_station-*.whl")
    return whl


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv with the project from the wheel only; dependencies from this venv (.pth)."""
    v = tmp_path_factory.mktemp("venv") / "v"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(v)], check=True, timeout=300)
    py = v / "bin" / "python"
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index",
                           "-q", str(wheel)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(site) / "zz_test_dependencies.pth").write_text("".join(f"{p}\n" for p in sorted(ours)))
    return v


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PYTHONSAFEPATH"] = "1"
    return env


def _run(venv: Path, cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "bin" / "ims-station"), *args], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def test_the_project_is_imported_from_the_wheel_not_the_source_tree(venv, tmp_path):
    proc = subprocess.run([str(venv / "bin" / "python"), "-c",
                           "import ims_station, ims_station.boards as b; print(ims_station.__file__); "
                           "print(b.BOARDS_DIR); print(','.join(b.list_boards()))"],
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    init, boards_dir, names = proc.stdout.splitlines()
    assert Path(init).is_relative_to(venv) and Path(boards_dir).is_relative_to(venv), proc.stdout
    assert set(names.split(",")) == {p.stem for p in (ROOT / "boards").glob("*.toml")}


def test_the_wheel_holds_every_file_of_the_installed_folders(wheel):
    dirs = _package_dirs()
    assert RUNTIME_FOLDERS <= {d.split("/")[0] for d in dirs.values()}, \
        f"top-level folders not installed: {RUNTIME_FOLDERS - {d.split('/')[0] for d in dirs.values()}}"
    names = set(zipfile.ZipFile(wheel).namelist())
    by_dir = {d: pkg for pkg, d in dirs.items()}
    missing, unpackaged = [], set()
    for f in tracked_files():
        folder, _, name = f.rpartition("/")
        if folder.split("/")[0] not in {d.split("/")[0] for d in dirs.values()}:
            continue                                  # docs/, tests/, bench/: not part of the install
        if folder not in by_dir:
            unpackaged.add(folder)                    # a sub-folder no package maps
        elif f"{by_dir[folder].replace('.', '/')}/{name}" not in names:
            missing.append(f)
    assert not unpackaged, f"folders under installed packages that are not packages: {sorted(unpackaged)}"
    assert not missing, f"files of installed folders that the wheel lacks: {missing}"


def test_demo_runs_from_the_wheel(venv, tmp_path):
    import json

    need_amqtt()
    proc = _run(venv, tmp_path, "demo", "--minutes", "0.5", "--speed", "15", "--broker", "embedded",
                "--json", "--workdir", str(tmp_path / "demo"), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = json.loads(proc.stdout)
    assert rep["ok"] and rep["missing_stages"] == [], rep
    assert rep["frames"]["built"] > 0 and rep["frames"]["verified"] == rep["frames"]["delivered"] > 0, rep["frames"]


def test_hil_run_from_the_wheel_serves_the_board_on_a_pty(venv, tmp_path):
    """``hil run`` from the wheel: the gateway's decoder (this venv) reads the board's HELLO and data
    from the pty path it prints, and the command exits cleanly after ``--seconds``."""
    from ims_station.config import write_secret_file
    from ims_station.edge.ingest import DataBlock, Hello, LinkDecoder
    from ims_station.edge.serialport import PortPump

    key = write_secret_file(tmp_path / "board.key", bytes(range(32)))
    proc = subprocess.Popen([str(venv / "bin" / "ims-station"), "hil", "run", "--pty", "--seconds", "6",
                             "--speed", "2", "--key-file", str(key)], cwd=tmp_path, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    events: list = []
    try:
        path = proc.stdout.readline().strip()
        if not path.startswith("/dev/"):
            proc.wait(timeout=120)
            pytest.fail(f"hil run printed {path!r}, exit status {proc.returncode}: {proc.stderr.read()}")
        pump = PortPump(path, LinkDecoder(bytes(range(32)), _WallClock()), timeout=0.05, on_events=events.extend)
        try:
            deadline = time.monotonic() + 60.0        # a bound on the wait, not a timing assertion
            while time.monotonic() < deadline and not any(isinstance(e, DataBlock) for e in events):
                pump.step()
        finally:
            pump.close()
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = proc.stderr.read()
    assert rc == 0, err
    hellos = [e for e in events if isinstance(e, Hello)]
    assert hellos and hellos[0].board_name == "sim", events
    assert any(isinstance(e, DataBlock) for e in events), events


class _WallClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()


def test_hil_noblegas_from_the_wheel_prints_its_calibration(venv, tmp_path):
    """The noble-gas emulator (sub-package ``ims_station.hil.noblegas``) is in the wheel and runs."""
    import json

    proc = _run(venv, tmp_path, "hil", "noblegas", "--calibration")
    assert proc.returncode == 0, proc.stderr
    cal = json.loads(proc.stdout)
    assert len(cal["ratios"]) == 18 and cal["channels"] == 256
