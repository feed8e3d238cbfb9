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
