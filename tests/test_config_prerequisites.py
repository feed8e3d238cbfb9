"""The test suite's configuration: one rule for a missing prerequisite (tests/conftest.py).

A developer machine without mosquitto, amqtt, obspy, root or micropython skips the tests that need
them and says why; CI (env ``CI`` set) fails them, since there a missing prerequisite is a missing
install step.  And no test module decides this for itself.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests import conftest
from tests.conftest import (in_ci, missing_prerequisite, need_micropython, need_module, need_mosquitto,
                            need_root)

TESTS = Path(__file__).resolve().parent


@pytest.fixture
def developer(monkeypatch):
    monkeypatch.delenv("CI", raising=False)


@pytest.fixture
def ci(monkeypatch):
    monkeypatch.setenv("CI", "true")


@pytest.mark.parametrize("value, expected", [(None, False), ("", False), ("false", False), ("0", False),
                                             ("true", True), ("1", True), ("yes", True)])
def test_what_counts_as_ci(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    assert in_ci() is expected


def test_a_developer_machine_skips_with_the_reason(developer):
    with pytest.raises(pytest.skip.Exception, match="needs the thing: install it"):
        missing_prerequisite("the thing", "install it")


def test_ci_fails_and_says_it_is_a_missing_install_step(ci):
    with pytest.raises(pytest.fail.Exception, match="the thing is missing, and CI .* must run every test: install it"):
        missing_prerequisite("the thing", "install it")


def _missing_mosquitto(monkeypatch):
    import ims_station.broker

    monkeypatch.setattr(ims_station.broker, "find_mosquitto", lambda: None)
    return need_mosquitto


def _missing_root(monkeypatch):
    monkeypatch.setattr(conftest.os, "geteuid", lambda: 1000)
    return lambda: need_root("mounting a tmpfs")


def _missing_module(monkeypatch):
    return lambda: need_module("ims_station_no_such_module")


def _missing_micropython(monkeypatch):
    # Neither on PATH nor beside the interpreter (the venv's bin, where pip installs it).
    monkeypatch.setenv("PATH", "/nonexistent-ims-test")
    monkeypatch.setattr(conftest.sys, "executable", "/nonexistent-ims-test/venv/bin/python")
    return need_micropython


def _missing_openspex(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_openspex(name, *args, **kwargs):
        if name.startswith("open_spex"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_openspex)
    for mod in [m for m in conftest.sys.modules if m.startswith("open_spex")]:
        monkeypatch.delitem(conftest.sys.modules, mod)
    return conftest.need_openspex


MISSING = [(_missing_mosquitto, "mosquitto"), (_missing_root, "root"), (_missing_module, "ims_station_no_such_module"),
           (_missing_micropython, "micropython"), (_missing_openspex, "open-spex")]


@pytest.mark.parametrize("make, what", MISSING)
def test_every_helper_skips_on_a_developer_machine(developer, monkeypatch, make, what):
    with pytest.raises(pytest.skip.Exception, match=what):
        make(monkeypatch)()


@pytest.mark.parametrize("make, what", MISSING)
def test_every_helper_fails_in_ci(ci, monkeypatch, make, what):
    with pytest.raises(pytest.fail.Exception, match=what):
        make(monkeypatch)()


def test_a_present_module_is_returned(ci):
    assert need_module("json") is __import__("json")


def _executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def fake_venv(tmp_path, monkeypatch):
    """A venv-like ``bin`` folder holding the interpreter, and an empty PATH: the situation of
    ``.venv/bin/python -m pytest`` without an activated venv."""
    bin_dir = tmp_path / "venv" / "bin"
    _executable(bin_dir / "python")
    monkeypatch.setattr(conftest.sys, "executable", str(bin_dir / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    return bin_dir


def test_micropython_beside_the_interpreter_is_found_without_path(ci, fake_venv):
    # The defect this pins: the helper looked only at PATH, so `.venv/bin/python -m pytest`
    # skipped every MicroPython test although the test extra had installed the binary.
    exe = _executable(fake_venv / "micropython")
    assert need_micropython() == str(exe)


def test_micropython_on_path_is_found(ci, fake_venv, tmp_path, monkeypatch):
    exe = _executable(tmp_path / "elsewhere" / "micropython")
    monkeypatch.setenv("PATH", str(exe.parent))
    assert need_micropython() == str(exe)


def test_the_venv_micropython_wins_over_path(ci, fake_venv, tmp_path, monkeypatch):
    venv_exe = _executable(fake_venv / "micropython")
    monkeypatch.setenv("PATH", str(_executable(tmp_path / "elsewhere" / "micropython").parent))
    assert need_micropython() == str(venv_exe)


def test_a_non_executable_file_beside_the_interpreter_is_not_taken(ci, fake_venv):
    (fake_venv / "micropython").write_text("not a program")
    with pytest.raises(pytest.fail.Exception, match="micropython"):
        need_micropython()


# Ways a test module could decide on its own that a missing prerequisite is a skip (or a failure).
OWN_RULE = re.compile(r"importorskip\(|mark\.skipif\(|pytest\.skip\(|environ\.get\(\"CI\"\)|find_mosquitto\(\) is None"
                      r"|geteuid\(\) ?!= ?0")
# Files that still apply the rule locally (same behaviour, written out by hand); their owners
# should move them to tests/conftest.py's need_micropython / need_mosquitto.  Drop an entry
# once its file is clean: the last test below insists.
NOT_YET: dict[str, str] = {}


def _own_rule_files() -> dict[str, list[str]]:
    found = {}
    for f in sorted(TESTS.rglob("*.py")):
        rel = f.relative_to(TESTS).as_posix()
        if rel in ("conftest.py", Path(__file__).name):
            continue
        lines = [f"{rel}:{n}: {line.strip()}" for n, line in enumerate(f.read_text().splitlines(), 1)
                 if OWN_RULE.search(line)]
        if lines:
            found[rel] = lines
    return found


def test_no_test_module_has_its_own_rule_for_missing_prerequisites():
    offenders = [line for rel, lines in _own_rule_files().items() if rel not in NOT_YET for line in lines]
    assert offenders == [], "use tests/conftest.py's need_* helpers:\n" + "\n".join(offenders)


def test_the_list_of_files_not_yet_converted_is_not_stale():
    assert sorted(set(NOT_YET) - set(_own_rule_files())) == []
