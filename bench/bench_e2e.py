"""End-to-end latency under the demo: sample time -> frame archived at the relay, p50 / p99.

Runs :func:`ims_station.demo.run_demo` (HIL board(s) -> edge -> Mosquitto or embedded broker ->
relay) and reports the latency of each frame's *last* sample (what the pipeline adds: waiting for the
frame to close, framing, signing, outbox commit, MQTT, verification, archive fsync) and of its
*first* sample (adds the frame length), in wall-clock seconds: the demo measures on its paced
simulated clock, so its figures are divided by the speed.  At speed 1 the simulated and wall
clocks coincide; the full run uses speed 1 so the figure is a real-time one, the quick run speeds up.

Reference in the same run: the frame length (the first-sample latency can never be below it) and
the IMS requirement that data reach the IDC "with less than five min delay" (peers.md §2).  The p99
is set by the partial windows at the start and end of a run (the first window after the board's
GNSS fix, the last one when sampling stops), which the framer commits after ``max_wait_s`` (30 s).
"""

from __future__ import annotations

from bench.harness import Result


def run(quick: bool) -> list[Result]:
    from ims_station.demo import DemoOptions, run_demo

    opts = DemoOptions(minutes=1.0 if quick else 3.0, stations=1 if quick else 2, speed=10.0 if quick else 1.0,
                       seed=3, drain_s=20.0)
    rep = run_demo(opts)
    lat = rep["latency_s"]
    out: list[Result] = []
    missing = rep.get("missing_stages") or []
    note = f"stations={opts.stations}, speed={opts.speed}, broker={rep['broker']['name']}, " \
           f"{lat['sample_to_archive_last_sample']['n']} frames"
    if missing:
        note += f"; stages missing in this tree: {', '.join(missing)}"
    for key, label in (("sample_to_archive_last_sample", "last sample -> archived"),
                       ("sample_to_archive_first_sample", "first sample -> archived")):
        for p in ("p50", "p99"):
            v = lat[key][p]
            out.append(Result("e2e", f"{label} {p}", float("nan") if v is None else v / opts.speed, "s",
                              reference="frame length", reference_value=opts.frame_seconds,
                              goal="< 300 s (IMS: data at the IDC within five minutes)", note=note))
    f = rep["frames"]
    # Frames the outbox evicted with an alarm (its age bound: the HIL board stamps the samples it
    # takes before its first GNSS fix with 1970 times) are reported, not counted as lost.
    lost = None if f["lost"] is None else f["lost"] - f["evicted_at_station"]
    out.append(Result("e2e", "frames lost (not evicted with an alarm)", float("nan") if lost is None else lost,
                      "frames", goal="0", note=f"built {f['built']}, delivered {f['delivered']}, verified "
                                               f"{f['verified']}, evicted at the station with alarm "
                                               f"{f['evicted_at_station']}"))
    return out
