"""The whole network through one Mosquitto and one relay process: the scaling curve.

Runs :func:`ims_station.simnet.run_network` with the IMS-like default mix scaled to 10, 50, 100 and
321 stations (``--quick``: 8 stations, one of each kind, one simulated minute) and reports for each:
the speed-up over real time the run achieved (aiming at 20x), the frames and IMS 2.0 messages lost
(goal 0), the relay's CPU per station and per simulated hour, the speed-up the relay alone would
sustain on one core (simulated seconds per relay CPU second), the broker's CPU share and the
build -> archive latency.

References measured in the same run: real time (the speed-up is simulated over wall seconds) and
the relay's CPU per station in the smallest network of the run (the ratio shows how the relay's cost
per station grows with the network).  The figures and the machine's load go to docs/benchmarks.md
("Whole network").

The harness pins the benchmark process to one core; this benchmark gives its children (workers,
relay, Mosquitto) every core again, since it measures them side by side.
"""

from __future__ import annotations

import os

from bench.harness import Result

SIZES = (10, 50, 100, 321)
MINUTES = 10.0


def run(quick: bool) -> list[Result]:
    from ims_station.simnet import SimOptions, run_network

    if hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
        except OSError:
            pass
    sizes = (8,) if quick else SIZES
    minutes = 1.0 if quick else float(os.environ.get("BENCH_NETWORK_MINUTES", MINUTES))
    out: list[Result] = []
    ref_cpu = None
    for n in sizes:
        load_before = os.getloadavg()[0]
        try:
            rep = run_network(SimOptions(stations=n, minutes=minutes, hil=0 if quick else None))
        except Exception as err:          # one size failing does not hide the others' figures
            out.append(Result("network", f"{n} st: run failed", float("nan"), "", note=f"{type(err).__name__}: {err}"))
            continue
        t, c, f, m = rep["time"], rep["cpu"], rep["frames"], rep["messages"]
        per = c["relay_ms_per_station_per_sim_hour"]
        if ref_cpu is None:
            ref_cpu = per
        note = (f"{n} stations ({rep['network']['waveform_channels']} waveform channels), {minutes:g} min simulated, "
                f"{rep['options']['workers']} worker(s); {f['archived']}/{f['expected']} frames, "
                f"{m['archived']}/{m['expected']} messages archived; relay {c['relay_s']} s CPU, broker "
                f"{c['broker_s']} s, stations {c['workers_s']} s; load {load_before:.1f} -> {c['loadavg'][0]}; "
                f"{'ok' if rep['ok'] else 'FAILED: ' + '; '.join(rep['failures'][:3])}")
        g = f"network{n}"
        out += [
            Result("network", f"{n} st: speed-up over real time", t["speedup"] or float("nan"), "x",
                   reference="real time", reference_value=1.0, goal=">= 20x (aimed at 20)", note=note),
            Result("network", f"{n} st: frames + messages lost", f["lost"] + m["lost"], "", goal="0"),
            Result("network", f"{n} st: relay CPU per station", per or float("nan"), "ms/sim h",
                   reference=f"same, {sizes[0]} stations", reference_value=ref_cpu),
            Result("network", f"{n} st: relay-bound speed-up (1 core)", c["relay_bound_speedup"] or float("nan"),
                   "x", reference="real time", reference_value=1.0),
            Result("network", f"{n} st: broker CPU share", c["broker_core_share"] or 0.0, "cores"),
            Result("network", f"{n} st: build -> archive p50 / p99", rep["latency_wall_s"]["p50"] or float("nan"),
                   "s wall", note=f"p99 {rep['latency_wall_s']['p99']} s wall, "
                                  f"p50 {rep['latency_sim_s']['p50']} s simulated"),
        ]
        for r in out[-6:]:
            r.extra = {"group_key": g}
    return out
