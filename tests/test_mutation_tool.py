"""tools/mutation.py lays out a tree in which mutmut's names for mutants are the modules' import
names (docs/testing.md, "Mutation testing"): otherwise every mutant of edge/, relay/ and firmware/
would be reported as surviving without having been run.  Checked without mutmut (it is in the
``mutation`` extra, not the test extra): the staged file of every group's modules is the file that
importing that dotted name loads from the repository."""

from __future__ import annotations

import glob
import importlib
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _tool():
    spec = importlib.util.spec_from_file_location("ims_mutation_tool", ROOT / "tools" / "mutation.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("group", ["verify", "outbox", "link", "cd11"])
def test_staged_paths_are_the_import_names(tmp_path, group):
    tool = _tool()
    dest = tool.stage(group, tmp_path)
    modules, tests = tool.GROUPS[group]
    staged = [Path(p) for pattern in modules for p in glob.glob(str(dest / pattern))]
    assert staged, f"{group}: {modules} match no file in the staged tree"
    for path in staged:
        rel = path.relative_to(dest)
        dotted = ".".join(rel.with_suffix("").parts)
        if dotted.endswith(".__init__"):
            dotted = dotted[: -len(".__init__")]
        loaded = Path(importlib.import_module(dotted).__file__).resolve()
        assert loaded.read_bytes() == path.read_bytes(), f"{rel} is not what `import {dotted}` loads"
    for t in tests:
        assert (dest / t).exists(), f"{group}: test path {t} missing from the staged tree"
    conf = (dest / "pyproject.toml").read_text()
    assert "[tool.mutmut]" in conf and 'source_paths = ["ims_station"]' in conf


def test_every_group_names_existing_modules_and_tests():
    tool = _tool()
    for group, (modules, tests) in tool.GROUPS.items():
        for pattern in modules:
            repo_pattern = pattern
            for src, rel in sorted(tool.PACKAGE_DIRS.items(), key=lambda kv: -len(kv[1])):
                if pattern.startswith(rel + "/"):
                    repo_pattern = src + pattern[len(rel):]
                    break
            assert glob.glob(str(ROOT / repo_pattern)), f"{group}: {pattern} ({repo_pattern}) matches nothing"
        for t in tests:
            assert glob.glob(str(ROOT / t)), f"{group}: {t} does not exist"


@pytest.mark.parametrize("argv", [["--rerun", "outbox", "m.x_f__mutmut_*"],
                                  ["outbox", "--rerun", "m.x_f__mutmut_*"]])
def test_rerun_takes_the_group_before_or_after_the_flag(tmp_path, monkeypatch, capsys, argv):
    """`--rerun GROUP MUTANT...` (as docs and notes write it) and `GROUP --rerun MUTANT...` both
    stage that group and run only the named mutants."""
    tool = _tool()
    staged, runs = [], []
    monkeypatch.setattr(tool, "stage", lambda group, work: staged.append(group) or tmp_path)

    class Done:
        stdout = "    m.x_f__mutmut_1: killed\n    m.x_f__mutmut_2: survived\n    m.x_g__mutmut_1: survived\n"

    monkeypatch.setattr(tool.subprocess, "run", lambda cmd, **kw: runs.append(cmd) or Done())
    assert tool.main(argv) == 0
    assert staged == ["outbox"]
    assert runs[0][1:2] == ["run"] and runs[0][-1] == "m.x_f__mutmut_*"
    out = capsys.readouterr().out
    assert "m.x_g__mutmut_1" not in out and "1 of 2 killed" in out


def test_rerun_without_a_mutant_is_refused(capsys):
    with pytest.raises(SystemExit):
        _tool().main(["--rerun", "outbox"])
    assert "needs at least one MUTANT" in capsys.readouterr().err
