"""Benchmark harness: one command runs every ``bench/bench_*.py`` module.

Each module defines ``run(quick: bool) -> list[Result]``.  A result carries the measured figure and,
where one exists, the *reference measured in the same run* (ObsPy, the bare OpenSSL signature, a
memory copy, the serial line rate) and the ratio between them, so figures from different machines
can be compared.  Timing thresholds never appear in unit tests; they live here and in
``docs/benchmarks.md``.

    python -m bench                 # everything, full size
    python -m bench --quick         # small sizes (smoke test, used by the test suite)
    python -m bench cd11 link       # only bench_cd11.py and bench_link.py
    python -m bench --json out.json # also write machine-readable results
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent


@dataclass
class Result:
    group: str                 # e.g. "cd11", "link"
    name: str                  # e.g. "CA decode"
    value: float               # the figure
    unit: str                  # e.g. "samples/s"
    reference: str = ""        # what it is compared with, e.g. "ObsPy 1.5.1 ... " or "memcpy"
    reference_value: float | None = None
    goal: str = ""             # the goal from the issue, e.g. ">= 20e6 samples/s"
    note: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.reference_value:
            return self.value / self.reference_value
        return None


def best_rate(fn: Callable[[], object], items: float, *, min_time: float = 0.3, repeat: int = 5) -> float:
    """Items per second of *fn* (which processes *items* items per call): best of *repeat* rounds,
    each round long enough (>= min_time / repeat) to swamp timer resolution."""
    fn()  # warm up (imports, caches, JIT of numpy paths)
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        dt = time.perf_counter() - t0
        if dt >= min_time / repeat:
            break
        n *= 2
    best = dt
    for _ in range(repeat - 1):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, time.perf_counter() - t0)
    return items * n / best


def machine_info() -> dict:
    info = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if abs(v) >= 1e6:
        return f"{v / 1e6:.2f} M"
    if abs(v) >= 1e3:
        return f"{v / 1e3:.1f} k"
    return f"{v:.3g}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description="Run the ims-station benchmarks.")
    ap.add_argument("groups", nargs="*", help="bench module names without 'bench_' (default: all)")
    ap.add_argument("--quick", action="store_true", help="small sizes, for smoke tests")
    ap.add_argument("--json", metavar="FILE", help="write results as JSON to FILE ('-' for stdout only)")
    args = ap.parse_args(argv)

    # Pin to one core where the OS allows: figures are "per core" and the other core stays free
    # for the reference measurements' noise to be comparable.
    if hasattr(os, "sched_setaffinity") and not os.environ.get("BENCH_NO_PIN"):
        try:
            os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        except OSError:
            pass

    names = args.groups or sorted(p.stem[len("bench_"):] for p in HERE.glob("bench_*.py"))
    results: list[Result] = []
    for name in names:
        mod = importlib.import_module(f"bench.bench_{name}")
        t0 = time.perf_counter()
        got = mod.run(quick=args.quick)
        results.extend(got)
        if args.json != "-":
            print(f"# bench_{name}: {len(got)} results in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

    doc = {"machine": machine_info(), "quick": args.quick,
           "results": [dict(asdict(r), ratio=r.ratio) for r in results]}
    if args.json == "-":
        print(json.dumps(doc, indent=1))
        return 0
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=1) + "\n")
    print(f"machine: {doc['machine']}")
    print(f"{'group':8} {'benchmark':44} {'value':>12} {'unit':12} {'reference':>12} {'ratio':>8}  goal / reference")
    for r in results:
        ratio = f"{r.ratio:.2f}" if r.ratio is not None else "-"
        print(f"{r.group:8} {r.name:44} {_fmt(r.value):>12} {r.unit:12} {_fmt(r.reference_value):>12} "
              f"{ratio:>8}  {r.goal}{' | ' if r.goal and r.reference else ''}{r.reference}")
        if r.note:
            print(f"{'':8} {'':44} note: {r.note}")
    return 0
