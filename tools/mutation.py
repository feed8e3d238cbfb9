"""Mutation testing of the critical modules with mutmut (``./run mutation [GROUP...]``).

Owns: laying out a staging tree that mutmut can work in, running mutmut on one group of modules at a
time with the tests that cover them, and printing the score per module.  It does not own the list of
survivors judged equivalent (``docs/testing.md``) nor any test.

Why a staging tree: the repository maps its top-level folders onto sub-packages (``edge/`` is imported
as ``ims_station.edge``, see ``pyproject.toml``).  mutmut names a mutant after its file path and its
trampoline compares that name with the function's ``__module__`` at run time, so ``edge/outbox.py``
(named ``edge.outbox``) would never match ``ims_station.edge.outbox`` and every mutant would "survive"
untested.  The staging tree (``.mutation/GROUP/``) is the installed layout, ``ims_station/edge/...``,
with ``tests/``, ``boards/`` and the rest beside it; mutmut then runs there unchanged.  The tests find
``../shared`` through ``IMS_SHARED``.

Mutants of the firmware's link module are judged by the CPython tests only: the MicroPython runs load
``firmware/*.py`` from the original tree by path.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MUTMUT = str(Path(sys.executable).parent / "mutmut")   # not `python -m mutmut`: it must fork from its own main

# The relay groups run every test file of tests/relay (a new one is included without editing this
# list) but those of other subsystems that only pass through these modules: the clustered inputs,
# CD-1.1 over TCP, PostgreSQL restarts and configuration, the cluster document.  They take seconds
# each and kill nothing the core, state and archive tests do not.
RELAY_NOT_RUN = {"test_amqp.py", "test_jetstream.py", "test_tcp.py", "test_pg_restart.py", "test_pg_config.py",
                 "test_centre_cluster_doc.py"}
RELAY_TESTS = sorted(f"tests/relay/{p.name}" for p in (ROOT / "tests" / "relay").glob("test_*.py")
                     if p.name not in RELAY_NOT_RUN)

# group -> (modules under the installed layout, tests that exercise them)
GROUPS: dict[str, tuple[list[str], list[str]]] = {
    "cd11": (["ims_station/cd11/*.py"], ["tests/cd11"]),
    "auth": (["ims_station/auth/*.py"], ["tests/auth"]),
    "link": (["ims_station/firmware/link.py"], ["tests/firmware", "tests/edge"]),
    "ingest": (["ims_station/edge/ingest.py"], ["tests/edge"]),
    "outbox": (["ims_station/edge/outbox.py"], ["tests/uplink/test_outbox.py", "tests/uplink/test_outbox_acknack.py",
                                                "tests/uplink/test_outbox_open.py", "tests/uplink/test_outbox_mutants.py",
                                                "tests/edge/test_outbox_cli.py"]),
    "uplink": (["ims_station/edge/uplink.py"], ["tests/uplink"]),
    "verify": (["ims_station/relay/verify.py"], RELAY_TESTS + ["tests/cd11/test_verify.py"]),
    "archive": (["ims_station/relay/archive.py"], RELAY_TESTS),
    "state": (["ims_station/relay/state.py"], RELAY_TESTS),
}

# folder in the repository -> folder in the installed layout
PACKAGE_DIRS = {"ims_station": "ims_station", "edge": "ims_station/edge", "relay": "ims_station/relay",
                "hil": "ims_station/hil", "firmware": "ims_station/firmware"}
ALSO = ["tests", "tools", "boards", "docs", "bench", "pyproject.toml", "setup.py", "README.md", "run"]
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", ".hypothesis")


def stage(group: str, work: Path) -> Path:
    """Lay out ``work/GROUP`` as the installed package plus the tests; returns it."""
    modules, tests = GROUPS[group]
    dest = work / group
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for src, rel in PACKAGE_DIRS.items():
        shutil.copytree(ROOT / src, dest / rel, ignore=IGNORE, dirs_exist_ok=True)
    for name in ALSO:
        p = ROOT / name
        if p.is_dir():
            shutil.copytree(p, dest / name, ignore=IGNORE)
        elif p.exists():
            shutil.copy2(p, dest / name)
    # The firmware tests and the board lookup find firmware/ and boards/ beside the package, as in
    # the repository.
    (dest / "firmware").symlink_to(dest / "ims_station" / "firmware")
    # Tests that start a child Python with the tree on PYTHONPATH (the SIGKILL tests) load this file
    # first.  In mutmut's stats phase the trampolines of a child would look for mutmut's config in the
    # child's working folder and fail; a child there runs the original code (its calls could not be
    # reported to mutmut anyway).  With a mutant active, the child runs that mutant, so a SIGKILL test
    # can kill, say, a dropped fsync.
    (dest / "sitecustomize.py").write_text(
        "import os\n"
        "if os.environ.get('MUTANT_UNDER_TEST') == 'stats':\n"
        "    os.environ['MUTANT_UNDER_TEST'] = ''\n", encoding="utf-8")
    also = [a for a in ALSO if (ROOT / a).exists()] + ["firmware", "sitecustomize.py"]
    conf = (
        "\n[tool.mutmut]\n"
        f"source_paths = [\"ims_station\"]\n"
        f"only_mutate = {json.dumps(modules)}\n"
        f"also_copy = {json.dumps(also)}\n"
        f"pytest_add_cli_args_test_selection = {json.dumps(tests)}\n"
        "pytest_add_cli_args = [\"-p\", \"no:cacheprovider\", \"-x\", \"-q\"]\n"
    )
    with open(dest / "pyproject.toml", "a", encoding="utf-8") as fh:
        fh.write(conf)
    return dest


def results(dest: Path) -> dict[str, dict[str, int]]:
    """Per-module counts from ``mutmut results --all true``."""
    out = subprocess.run([MUTMUT, "results", "--all", "true"], cwd=dest,
                         capture_output=True, text=True, check=False).stdout
    per: dict[str, dict[str, int]] = {}
    for line in out.splitlines():
        line = line.strip()
        if ": " not in line or "__mutmut_" not in line:
            continue
        name, _, status = line.rpartition(": ")
        module = name.split(".x_")[0].split(".xǁ")[0]
        per.setdefault(module, {}).setdefault(status, 0)
        per[module][status] += 1
    return per


def write_survivors(dest: Path, out: Path) -> None:
    """Append every survivor of the run in *dest* with its diff (``mutmut show``) to *out*."""
    listing = subprocess.run([MUTMUT, "results"], cwd=dest, capture_output=True, text=True,
                             check=False).stdout
    names = [line.strip().rpartition(": ")[0] for line in listing.splitlines()
             if line.strip().endswith(": survived")]
    with open(out, "a", encoding="utf-8") as fh:
        for name in names:
            diff = subprocess.run([MUTMUT, "show", name], cwd=dest, capture_output=True, text=True,
                                  check=False).stdout
            fh.write(f"### {name}\n{diff}\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="./run mutation", description=__doc__.split("\n")[0])
    ap.add_argument("groups", nargs="*", metavar="GROUP", help=f"default: all of {', '.join(GROUPS)}")
    ap.add_argument("--work", type=Path, default=ROOT / ".mutation", help="staging folder (%(default)s)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--report", action="store_true", help="only print the scores of the last run")
    ap.add_argument("--rerun", nargs="+", metavar="MUTANT",
                    help="with one GROUP (`--rerun GROUP MUTANT...` or `GROUP --rerun MUTANT...`): stage it "
                         "afresh and run only these mutants (names or globs as `mutmut results` prints "
                         "them; quote globs), e.g. after adding tests for them")
    ap.add_argument("--survivors", type=Path, metavar="FILE",
                    help="with --report: write every survivor of the GROUP(s) with its diff to FILE")
    args = ap.parse_args(argv)
    if args.rerun and not args.groups and args.rerun[0] in GROUPS:
        # `--rerun GROUP MUTANT...`: argparse gives --rerun every word after it, the group too.
        args.groups = [args.rerun.pop(0)]
        if not args.rerun:
            ap.error("--rerun GROUP needs at least one MUTANT")
    groups = args.groups or list(GROUPS)
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        ap.error(f"unknown group(s) {unknown}; known: {', '.join(GROUPS)}")
    env = dict(os.environ)
    env.setdefault("IMS_SHARED", str(ROOT.parent / "shared"))
    if args.rerun:
        if len(groups) != 1:
            ap.error("--rerun takes exactly one GROUP")
        dest = stage(groups[0], args.work)
        subprocess.run([MUTMUT, "run", "--max-children", str(args.jobs), *args.rerun],
                       cwd=dest, env=env, check=False)
        out = subprocess.run([MUTMUT, "results", "--all", "true"], cwd=dest, capture_output=True,
                             text=True, check=False).stdout
        wanted = [line.strip() for line in out.splitlines()
                  if any(fnmatch.fnmatchcase(line.strip().rpartition(": ")[0], pat) for pat in args.rerun)]
        print("\n".join(wanted))
        left = [w for w in wanted if not w.endswith(("killed", "timeout"))]
        print(f"\n{len(wanted) - len(left)} of {len(wanted)} killed")
        return 0
    total: dict[str, dict[str, int]] = {}
    for group in groups:
        dest = args.work / group
        if not args.report:
            t0 = time.monotonic()
            dest = stage(group, args.work)
            print(f"== {group}: mutmut run in {dest}", flush=True)
            subprocess.run([MUTMUT, "run", "--max-children", str(args.jobs)],
                           cwd=dest, env=env, check=False)
            print(f"== {group}: {time.monotonic() - t0:.0f} s", flush=True)
        total.update(results(dest))
        if args.survivors:
            write_survivors(dest, args.survivors)
    print(f"\n{'module':45} {'killed':>7} {'survived':>9} {'other':>6} {'score':>6}")
    for module, counts in sorted(total.items()):
        killed = counts.get("killed", 0) + counts.get("timeout", 0)
        survived = counts.get("survived", 0)
        other = sum(counts.values()) - killed - survived
        score = killed / (killed + survived) if killed + survived else 0.0
        print(f"{module:45} {killed:7} {survived:9} {other:6} {score:6.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
