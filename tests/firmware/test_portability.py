"""firmware/ imports nothing CPython-only and uses no construct MicroPython lacks.

mpy-cross catches syntax MicroPython cannot compile (match, except*, positional-only parameters);
this test catches what compiles but fails at run time on the board: imports outside MicroPython's
modules, CPython-only builtins and methods the cases have shown to be missing.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.firmware.conftest import FIRMWARE

# Modules of MicroPython's core / common ports (docs.micropython.org "library").
ALLOWED = {"struct", "binascii", "hashlib", "time", "micropython", "gc", "sys", "array",
           "collections", "errno", "io", "json", "math", "os", "select", "random", "re", "uctypes"}
MAIN_ONLY = {"machine", "board_config", "imsfw"}       # the board entry point builds real peripherals
OPTIONAL_CPYTHON = {("link.py", "cobs"), ("link.py", "hmac")}  # accelerators under try/except ImportError
FORBIDDEN_CALLS = {"open"}                             # no file I/O below main.py
FORBIDDEN_NAMES = {"__import__", "exec", "eval", "compile", "breakpoint", "memoryview.cast"}
FORBIDDEN_METHODS = {"removeprefix", "removesuffix", "casefold", "format_map", "bit_count", "isascii"}


def violations(path: Path, source: str | None = None) -> list[str]:
    src = path.read_text() if source is None else source
    tree = ast.parse(src, filename=str(path))
    out = []
    guarded = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
                isinstance(h.type, ast.Name) and h.type.id == "ImportError" for h in node.handlers):
            for sub in node.body:
                for n in ast.walk(sub):
                    guarded.add(id(n))
    for node in ast.walk(tree):
        where = f"{path.name}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            if isinstance(node, ast.ImportFrom) and node.level > 0:
                continue                               # relative: inside the firmware package
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for name in names:
                top = name.split(".")[0]
                if top in ALLOWED or (path.name == "main.py" and top in MAIN_ONLY):
                    continue
                if (path.name, top) in OPTIONAL_CPYTHON and id(node) in guarded:
                    continue
                out.append(f"{where}: import of '{name}' (not a MicroPython module)")
        elif isinstance(node, ast.Match):
            out.append(f"{where}: match statement")
        elif isinstance(node, ast.TryStar):
            out.append(f"{where}: except*")
        elif isinstance(node, (ast.AnnAssign,)) or (isinstance(node, ast.arg) and node.annotation is not None):
            out.append(f"{where}: annotation (typing is not available on the board)")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id in FORBIDDEN_CALLS and path.name != "main.py":
                out.append(f"{where}: {node.func.id}() below main.py")
            if node.func.id in FORBIDDEN_NAMES:
                out.append(f"{where}: {node.func.id}()")
        elif isinstance(node, ast.Attribute) and node.attr in FORBIDDEN_METHODS:
            out.append(f"{where}: .{node.attr} (missing in MicroPython)")
        elif isinstance(node, ast.Delete):
            for t in node.targets:
                if isinstance(t, ast.Subscript) and isinstance(t.slice, ast.Slice):
                    out.append(f"{where}: slice deletion (MicroPython's bytearray has none)")
        elif isinstance(node, ast.FunctionDef) and node.args.posonlyargs:
            out.append(f"{where}: positional-only parameters")
    return out


@pytest.mark.parametrize("src", sorted(FIRMWARE.glob("*.py")), ids=lambda p: p.name)
def test_portable(src):
    assert violations(src) == []


@pytest.mark.parametrize("snippet, what", [
    ("import typing\n", "typing"),
    ("from dataclasses import dataclass\n", "dataclasses"),
    ("import numpy as np\n", "numpy"),
    ("import serial\n", "serial"),
    ("import machine\n", "machine"),
    ("def f(x: int):\n    return x\n", "annotation"),
    ("b = bytearray(4)\ndel b[:2]\n", "slice deletion"),
    ("s = 'ab'.removeprefix('a')\n", "removeprefix"),
    ("f = open('x')\n", "open"),
    ("try:\n    import cobs\nexcept ImportError:\n    pass\n", "cobs"),   # only link.py may try cobs
])
def test_checker_catches(snippet, what):
    found = violations(Path("digitizer.py"), snippet)
    assert found and any(what in v for v in found), found


def test_checker_allows_guarded_accelerator_in_link():
    assert violations(Path("link.py"), "try:\n    from cobs import cobs\nexcept ImportError:\n    pass\n") == []
