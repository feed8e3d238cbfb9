"""``ims-station hil``: the simulator's commands.

* ``hil soak`` -- the HIL board through a faulty line into the edge ingest; JSON report (``--json``)
  or a progress display and a summary.
* ``hil detection`` -- the station's trigger on simulated noise with injected events (``hil/detection.py``):
  detection rate per SNR bin, false triggers per day, onset error, goal verdicts; ``--json``.
* ``hil run --pty`` -- the HIL board behind a pseudo-terminal in real time, for another process
  (the gateway) to open; prints the slave path (``--link PATH``: also a stable symbolic link to it).
  The board's clock starts now (``--start``), its epoch comes from a state file (``--state``) or the
  start time.
* ``hil noblegas --pty`` -- the noble-gas detector emulator (β-γ or HPGe MCA + process controller,
  ``hil/noblegas``) behind a pseudo-terminal, its cycle accelerated by ``--speed``; prints the path.

Cheap to import: the simulator, numpy and rich are imported inside the handlers.
"""

from __future__ import annotations

import argparse
import sys


def _window(what: str):
    def parse(text: str):
        from .faults import FaultSpecError, Window

        try:
            return Window.parse(text, what)
        except FaultSpecError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    return parse


def _jump(text: str):
    from .faults import FaultPlan, FaultSpecError

    try:
        return FaultPlan.parse_jump(text)
    except FaultSpecError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _rate(text: str) -> float:
    v = float(text)
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return v


def _add_fault_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("line and device faults (times in simulated seconds from the start)")
    g.add_argument("--ber", type=_rate, default=0.0, help="bit-error rate, both directions")
    g.add_argument("--drop", type=_rate, default=0.0, help="probability that a byte is lost")
    g.add_argument("--dup", type=_rate, default=0.0, help="probability that a byte arrives twice")
    g.add_argument("--outage", type=_window("--outage"), action="append", default=[], metavar="START:SECONDS",
                   help="gateway outage: the edge reads nothing while the board keeps sampling (repeatable)")
    g.add_argument("--disconnect", type=_window("--disconnect"), action="append", default=[],
                   metavar="START:SECONDS", help="line dead in both directions (repeatable)")
    g.add_argument("--unplug", type=_window("--unplug"), action="append", default=[], metavar="START:SECONDS",
                   help="the serial adapter disappears: port reads/opens fail (soak only; repeatable)")
    g.add_argument("--reboot", type=float, action="append", default=[], metavar="T",
                   help="board reset at T: new epoch, ring lost (repeatable)")
    g.add_argument("--gnss-outage", type=_window("--gnss-outage"), action="append", default=[],
                   metavar="START:SECONDS", help="no PPS and no GNSS time (repeatable)")
    g.add_argument("--clock-jump", type=_jump, action="append", default=[], metavar="T:STEP",
                   help="GNSS time steps by STEP seconds at T (repeatable)")
    g.add_argument("--clip", type=_window("--clip"), action="append", default=[], metavar="START:SECONDS",
                   help="inputs driven beyond full scale (repeatable)")
    g.add_argument("--tamper", type=_window("--tamper"), action="append", default=[], metavar="START:SECONDS",
                   help="enclosure open (repeatable)")
    g.add_argument("--holdover", type=int, default=None, metavar="S",
                   help="board holdover time in seconds (default: the board's)")


def _add_board_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--board", default="sim", help="board definition (boards/<name>.toml), default sim")
    p.add_argument("--rate", type=float, default=None, metavar="SPS", help="sample rate (one of the board's)")
    p.add_argument("--packet-ms", type=int, default=None, metavar="MS", help="DATA packet length (default: the board's)")
    p.add_argument("--seed", type=int, default=7, help="random seed (same seed, same run)")
    p.add_argument("--baud", type=int, default=115200, help="line baud rate")


def register(subparsers) -> None:
    hil = subparsers.add_parser("hil", help="hardware-in-the-loop simulator: soak test, virtual board on a pty",
                                description=__doc__.splitlines()[0])
    sub = hil.add_subparsers(dest="hil_command", metavar="SUBCOMMAND")

    soak = sub.add_parser("soak", help="run the HIL board through a faulty line into the edge; report",
                          description="Run the simulated digitizer (the real firmware) through a faulty "
                                      "serial line into the edge's ingest and compare what arrives with "
                                      "what the ADC produced.")
    soak.add_argument("--minutes", type=float, default=10.0, help="simulated minutes of sampling (default 10)")
    _add_board_options(soak)
    _add_fault_options(soak)
    soak.add_argument("--resend-tries", type=int, default=None,
                      help="override the edge's last-resort cap of RESEND requests per hole (default: the edge's)")
    soak.add_argument("--drain", type=float, default=30.0, metavar="S",
                      help="simulated seconds after sampling stops for the last resends (default 30)")
    soak.add_argument("--json", action="store_true", help="print only the JSON report")
    soak.set_defaults(handler=_soak)

    det = sub.add_parser("detection", help="trigger detection run: noise with injected events, scored per SNR bin",
                         description="Feed simulated seismic noise (Peterson model, 40 sps) with injected "
                                     "events of known onset and SNR through the station's trigger in 1-s "
                                     "chunks; report detection rate per SNR bin, false triggers per day and "
                                     "onset error against the goals (docs/trigger.md).")
    det.add_argument("--hours", type=_positive, default=24.0, help="simulated hours (default 24)")
    det.add_argument("--events", type=int, default=60, help="injected events, SNR 2-10 (default 60)")
    det.add_argument("--seed", type=int, default=1, help="random seed (same seed, same data)")
    det.add_argument("--channels", type=int, default=1,
                     help="vertical sensors (1: one channel; more: array elements with coincidence)")
    g = det.add_argument_group("trigger settings (default: the tuned values)")
    g.add_argument("--band", type=_band, default=None, metavar="FMIN:FMAX", help="band-pass corners, Hz")
    g.add_argument("--corners", type=int, default=None, help="Butterworth corners")
    g.add_argument("--sta", type=_positive, default=None, metavar="S", help="STA window, s")
    g.add_argument("--lta", type=_positive, default=None, metavar="S", help="LTA window, s")
    g.add_argument("--on", type=float, default=None, help="trigger-on threshold")
    g.add_argument("--off", type=float, default=None, help="trigger-off threshold")
    g.add_argument("--min-duration", type=float, default=None, metavar="S", help="minimum time on, s")
    g.add_argument("--coincidence", type=float, default=None, metavar="N",
                   help="coincidence sum with several channels (default 2)")
    g.add_argument("--pick", choices=("aic", "none"), default=None,
                   help="refined onset pick (default aic; none: the trigger onset)")
    g.add_argument("--pick-window", type=_positive, default=None, metavar="S",
                   help="seconds before the trigger in which the AIC picks (default 3)")
    det.add_argument("--json", action="store_true", help="print only the JSON report")
    det.set_defaults(handler=_detection)

    run = sub.add_parser("run", help="run the HIL board behind a pty in real time",
                         description="Run the simulated digitizer behind a pseudo-terminal; another "
                                     "process opens the printed path as its serial port.")
    run.add_argument("--pty", action="store_true", default=True, help="pty transport (the default and only one)")
    run.add_argument("--seconds", type=float, default=None, help="stop after this many simulated seconds")
    run.add_argument("--speed", type=float, default=1.0, help="simulated seconds per wall second (default 1)")
    run.add_argument("--key-file", required=True, metavar="PATH",
                     help="the board's HMAC key (mode 0600; the gateway's station config names the same file)")
    run.add_argument("--start", type=_start_time, default="now", metavar="now|ISO-TIME",
                     help="UTC time of the simulation's start: 'now' (default: the board's clock is the "
                          "wall clock) or e.g. 2026-01-01T00:00:00Z")
    run.add_argument("--link", metavar="PATH", default=None,
                     help="also make PATH a symbolic link to the pty (e.g. /run/ims/board1), so a station "
                          "file can name a stable port; removed on exit")
    run.add_argument("--state", metavar="FILE", default=None,
                     help="the board's boot counter (epoch), kept in FILE like the firmware's /epoch: +1 at "
                          "every start and reboot (default: derived from the start time)")
    _add_board_options(run)
    _add_fault_options(run)
    run.set_defaults(handler=_run)

    ng = sub.add_parser("noblegas", help="run the noble-gas detector emulator behind a pty",
                        description="Run the noble-gas detector emulator (MCA dialect of ims_station.mca, "
                                    "docs/noblegas.md) behind a pseudo-terminal; another process opens the "
                                    "printed path as its serial port.")
    ng.add_argument("--pty", action="store_true", default=True, help="pty transport (the default and only one)")
    ng.add_argument("--mode", choices=("bg", "hpge"), default="bg",
                    help="bg: β-γ coincidence (256x256), hpge: gamma only (4096 channels); default bg")
    ng.add_argument("--seed", type=int, default=7, help="random seed (same seed, same data)")
    ng.add_argument("--speed", type=float, default=1.0, help="simulated seconds per wall second (default 1)")
    ng.add_argument("--seconds", type=float, default=None, help="stop after this many simulated seconds")
    ng.add_argument("--start", type=_start_time, default="now", metavar="now|ISO-TIME",
                    help="UTC time of the emulator's start (default now)")
    ng.add_argument("--conc", type=_conc, action="append", default=[], metavar="NUCLIDE:MBQ_M3",
                    help="activity concentration in air, e.g. XE-133:1.5 (repeatable; nuclides XE-131M, "
                         "XE-133, XE-133M, XE-135, RN-222; default a typical background)")
    ng.add_argument("--link", metavar="PATH", default=None, help="also make PATH a symbolic link to the pty")
    ng.add_argument("--calibration", action="store_true",
                    help="print the detector's calibration blocks (energy, resolution, efficiencies, ROI "
                         "limits, ratios) as JSON and exit: what a station file needs to write its PHD")
    cyc = ng.add_argument_group("cycle (seconds)")
    cyc.add_argument("--collection", type=float, default=43_200.0)
    cyc.add_argument("--processing", type=float, default=21_600.0)
    cyc.add_argument("--gasbk", type=float, default=1_800.0)
    cyc.add_argument("--acquisition", type=float, default=39_600.0)
    cyc.add_argument("--qc", type=float, default=600.0, help="Cs-137 QC count after each acquisition (0: none)")
    cyc.add_argument("--calib", type=float, default=1_800.0,
                     help="Xe-133 calibration count at start-up, ending the detector background (0: none)")
    fl = ng.add_argument_group("faults (rates per reply; windows START:SECONDS in simulated seconds)")
    fl.add_argument("--garble", type=_rate, default=0.0, help="probability that a reply is garbled")
    fl.add_argument("--checksum", type=_rate, default=0.0, help="probability that a reply has a bad checksum")
    fl.add_argument("--timeout", type=_rate, default=0.0, help="probability that a command gets no reply")
    fl.add_argument("--late", type=_rate, default=0.0,
                    help="probability that a reply comes 3 s late (out of step with the next command)")
    for opt in ("disappear", "hv-drop", "flow-fail", "power-fail", "temp-high"):
        fl.add_argument(f"--{opt}", type=_window(f"--{opt}"), action="append", default=[], metavar="START:SECONDS",
                        help={"disappear": "the detector is gone, then restarts (repeatable)",
                              "hv-drop": "detector high voltage sags to 60 %% (repeatable)",
                              "flow-fail": "sampler flow stops (repeatable)",
                              "power-fail": "mains lost, UPS on battery (repeatable)",
                              "temp-high": "room temperature +18 °C (repeatable)"}[opt])
    ng.set_defaults(handler=_noblegas)
    hil.set_defaults(handler=lambda args: (hil.print_help(), 2)[1])


def _conc(text: str):
    from .noblegas.device import parse_concentration

    try:
        return parse_concentration(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _noblegas(args) -> int:
    import signal
    import threading
    import time

    from .faults import FaultSpecError
    from .noblegas.device import DEFAULT_CONCENTRATIONS, AcceleratedClock, NobleGasDetector
    from .noblegas.faults import NobleGasFaults
    from .noblegas.process import CycleConfig
    from .noblegas.ptyrun import DetectorPty
    from .ptyport import PtyLink

    if args.calibration:
        from ims_station.output import print_json

        from .noblegas.device import detector_model

        print_json(detector_model(args.mode).calibration())
        return 0
    try:
        faults = NobleGasFaults(garble=args.garble, checksum=args.checksum, timeout=args.timeout, late=args.late)
        for opt in ("disappear", "hv_drop", "flow_fail", "power_fail", "temp_high"):
            for w in getattr(args, opt):
                faults.add(opt, w)
        cycle = CycleConfig(collection_s=args.collection, processing_s=args.processing, gasbk_s=args.gasbk,
                            acquisition_s=args.acquisition, qc_s=args.qc, calib_s=args.calib)
    except (ValueError, FaultSpecError) as err:
        print(f"hil noblegas: {err}", file=sys.stderr)
        return 2
    conc = dict(DEFAULT_CONCENTRATIONS)
    conc.update(dict(args.conc))
    clock = AcceleratedClock(args.speed, None if args.start == "now" else float(args.start))
    det = NobleGasDetector(mode=args.mode, seed=args.seed, clock=clock, cycle=cycle, concentrations=conc,
                           faults=faults)
    pty = DetectorPty(det)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    try:
        link = PtyLink(args.link, pty.path) if args.link else None
    except BaseException:
        pty.close()
        raise
    print(pty.path, flush=True)
    print(f"hil noblegas: {args.mode} detector on {pty.path}{f' (link {args.link})' if link else ''}, "
          f"x{args.speed:g} time, starting {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(clock.start_utc))}; "
          f"concentrations (mBq/m3) {conc}; Ctrl-C stops", file=sys.stderr)
    try:
        pty.run(args.seconds, stop)
    except KeyboardInterrupt:
        pass
    finally:
        if link is not None:
            link.remove()
        pty.close()
    return 0


def _positive(text: str) -> float:
    v = float(text)
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return v


def _band(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(x) for x in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not FMIN:FMAX (e.g. 1.5:8)") from None
    return lo, hi


def _detection(args) -> int:
    from dataclasses import replace

    from ims_station.edge.trigger import TriggerConfigError
    from ims_station.errors import ConfigError
    from ims_station.output import print_json

    from .detection import DEFAULT_PARAMS, DetectionConfig, run_detection

    over = {"corners": args.corners, "sta_s": args.sta, "lta_s": args.lta, "thr_on": args.on,
            "thr_off": args.off, "min_duration_s": args.min_duration, "coincidence_sum": args.coincidence,
            "pick": args.pick, "pick_window_s": args.pick_window}
    if args.band is not None:
        over["freqmin"], over["freqmax"] = args.band
    params = replace(DEFAULT_PARAMS, **{k: v for k, v in over.items() if v is not None})
    cfg = DetectionConfig(hours=args.hours, events=args.events, seed=args.seed, channels=args.channels,
                          params=params)
    try:
        if args.json:
            print_json(run_detection(cfg))
            return 0
        from rich.console import Console

        console = Console()
        with console.status("detection run ...") as status:
            def progress(done: float, total: float) -> None:
                status.update(f"detection run: {done / 3600:.1f} / {total / 3600:.1f} simulated hours")

            report = run_detection(cfg, progress)
    except ConfigError as err:         # names the option: "ims-station hil detection: --band: ..."
        print(err, file=sys.stderr)
        return 2
    except (TriggerConfigError, ValueError) as err:
        print(f"ims-station hil detection: {err}", file=sys.stderr)
        return 2
    _detection_summary(console, report)
    return 0


def _detection_summary(console, r: dict) -> None:
    from rich.table import Table

    c = r["config"]
    tp = c["trigger"]
    t = Table(title=f"HIL detection ({c['hours']:g} h, {c['events']} events, seed {c['seed']}, "
                    f"{c['channels']} channel(s)); trigger {tp['freqmin']:g}-{tp['freqmax']:g} Hz x{tp['corners']}, "
                    f"STA/LTA {tp['sta_s']:g}/{tp['lta_s']:g} s, on {tp['thr_on']:g}, off {tp['thr_off']:g}, "
                    f"min {tp['min_duration_s']:g} s, pick {tp['pick']}")
    for col in ("SNR", "events", "detected", "rate", "pick error median, s", "trigger onset error median, s"):
        t.add_column(col, justify="right")
    for b in r["bins"]:
        t.add_row(b["snr"], str(b["events"]), str(b["detected"]),
                  "-" if b["rate"] is None else f"{b['rate']:.0%}",
                  "-" if b["onset_error_median_s"] is None else f"{b['onset_error_median_s']:.3f}",
                  "-" if b["raw_onset_error_median_s"] is None else f"{b['raw_onset_error_median_s']:.3f}")
    console.print(t)
    e, raw = r["onset_error_s"], r["raw_onset_error_s"]
    console.print(f"false triggers: {r['false_triggers']} ({r['false_triggers_per_day']} per day); "
                  f"later-phase triggers: {r['later_phase_triggers']}; onset error (pick - true) median "
                  f"{e['median']} s, median |.| {e['median_abs']} s, p90 |.| {e['p90_abs']} s; trigger onset "
                  f"error (trigger - true) median {raw['median']} s, p90 {raw['p90']} s; "
                  f"wall time {r['wall_time_s']} s")
    for name, g in r["goals"].items():
        console.print(f"{'[green]met[/]' if g['met'] else '[red]NOT met[/]'}  {name}: {g['value']} (goal {g['goal']})")


def _start_time(text: str):
    """'now' or an ISO 8601 time (naive = UTC) -> POSIX seconds, or the string 'now'."""
    if text == "now":
        return text
    from datetime import datetime, timezone

    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither 'now' nor an ISO 8601 time "
                                         "(e.g. 2026-01-01T00:00:00Z)") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return t.timestamp()


def _plan_kwargs(args) -> dict:
    return dict(ber=args.ber, drop=args.drop, dup=args.dup, outages=args.outage, disconnects=args.disconnect,
                reboots=args.reboot, gnss_outages=args.gnss_outage, clipping=args.clip,
                clock_jumps=args.clock_jump, tamper=args.tamper, holdover_s=args.holdover)


def _soak(args) -> int:
    from ims_station.output import print_json

    from .soak import SoakConfig, run_soak

    cfg = SoakConfig(minutes=args.minutes, seed=args.seed, board=args.board, rate_sps=args.rate,
                     baud=args.baud, packet_ms=args.packet_ms, unplugs=args.unplug,
                     max_resend_tries=args.resend_tries, drain_s=args.drain, **_plan_kwargs(args))
    if args.json:
        print_json(run_soak(cfg))
        return 0
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=False)
    with Progress(TextColumn("[bold]soak[/]"), BarColumn(), TextColumn("{task.fields[sim]}"),
                  TextColumn("{task.fields[line]}"), TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task("soak", total=None, sim="", line="")

        def progress(p: dict) -> None:
            c = p["counters"]
            bar.update(task, total=p["total_s"], completed=p["simulated_s"],
                       sim=f"{p['simulated_s']:.0f}/{p['total_s']:.0f} s simulated",
                       line=f"ok {c['packets_ok']}  crc {c['crc_errors']}  framing {c['framing_errors']}  "
                            f"resend {c['resend_requests']}  lost {c['packets_unrecoverable']}")

        report = run_soak(cfg, progress)
    _summary(console, report)
    return 0


def _summary(console, r: dict) -> None:
    from rich.table import Table

    t = Table(title=f"HIL soak (seed {r['config']['seed']}, ber {r['config']['ber']}, drop {r['config']['drop']})")
    t.add_column("figure")
    t.add_column("value", justify="right")
    rej = r["corrupt_packets_rejected"]
    rows = [
        ("samples generated", r["samples_generated"]),
        ("samples delivered", r["samples_delivered"]),
        ("delivered bit-identical", r["samples_bit_identical"]),
        ("corrupt samples accepted", r["samples_corrupt_accepted"]),
        ("samples missing", r["samples_missing"]),
        ("gaps reported exactly", r["gaps_reported_exactly"]),
        ("packets corrupted on the line", r["packets_corrupted_on_line"]),
        ("corrupt packets rejected", f"{rej['total']} (crc {rej['crc']}, framing {rej['framing']}, "
                                     f"length {rej['length']}, hmac {rej['hmac']})"),
        ("resend requests", r["resend_requests"]),
        ("packets recovered", r["packets_recovered"]),
        ("gaps unrecovered", r["gaps_unrecovered"]),
        ("line bytes down / up", f"{r['line_bytes']['down']} / {r['line_bytes']['up']}"),
        ("simulated / wall time", f"{r['simulated_s']:.1f} s / {r['wall_time_s']:.2f} s (x{r['speedup']})"),
    ]
    for k, v in rows:
        t.add_row(k, str(v))
    console.print(t)
    for g in r["gaps"][:20]:
        console.print(f"gap epoch {g['epoch']} seq {g['first_seq']}..{g['last_seq']} {g['start']} .. {g['end']} "
                      f"channels {g['channels']} ({g['reason']})")
    if len(r["gaps"]) > 20:
        console.print(f"... {len(r['gaps']) - 20} more gaps (use --json for all)")


def _run(args) -> int:
    import math
    import signal
    import threading
    import time

    from .faults import FaultPlan, LineFaults
    from .ptyport import PtyBridge, PtyLink
    from .sim import NS, EpochFile, Simulation

    line = LineFaults(args.ber, args.drop, args.dup)
    plan = FaultPlan(down=line, up=line, disconnects=args.disconnect, gateway_outages=args.outage,
                     reboots=args.reboot, gnss_outages=args.gnss_outage, clipping=args.clip,
                     clock_jumps=args.clock_jump, tamper=args.tamper)
    from ims_station.config import read_secret_file

    key = read_secret_file(args.key_file, what="board HMAC key")
    start = time.time() if args.start == "now" else float(args.start)
    # The simulation starts on a whole second (PPS edges fall on simulated whole seconds) and is
    # advanced at once to the fraction, so that at speed 1 its clock is the wall clock.
    start_utc = math.floor(start)
    epochs = EpochFile(args.state) if args.state else None
    # Without a state file the epoch comes from the start second: a restarted board never repeats
    # the last epoch the gateway saw (it would take the new sequence numbers for old ones), and
    # counts forward for 2**15 s (9 h) -- a board that is off longer needs --state (docs/hil.md).
    sim = Simulation(board=args.board, seed=args.seed, plan=plan, baud=args.baud, rate_sps=args.rate,
                     holdover_s=args.holdover, packet_ms=args.packet_ms, key=key, start_utc=start_utc,
                     epochs=epochs, first_epoch=start_utc & 0xFFFF)
    sim.run_until(int((start - start_utc) * NS))
    bridge = PtyBridge(sim, speed=args.speed)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    try:
        link = PtyLink(args.link, bridge.path) if args.link else None
    except BaseException:
        bridge.close()
        raise
    print(bridge.path, flush=True)
    print(f"hil run: board {sim.board_name} (id {sim.board.board_id}, epoch {sim.board.epoch}) on {bridge.path}"
          f"{f' (link {args.link})' if link else ''}, starting {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(start_utc))}; "
          f"the simulator's HMAC key from {args.key_file}; Ctrl-C stops", file=sys.stderr)
    try:
        bridge.run(args.seconds, stop)
    except KeyboardInterrupt:
        pass
    finally:
        if link is not None:
            link.remove()
        bridge.close()
    return 0
