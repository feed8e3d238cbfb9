"""One relay, two transports: 50 CD-1.1/TCP stations and 50 MQTT stations at once.

``ims-station relay run`` (a child process, its own core where the machine has two) with a real
Mosquitto started here and a ``[cd11.consumer]`` listing the TCP stations.  The load generator (this
process, the other core) runs 50 CD-1.1 providers (the ``cd11tcp`` library, one TCP connection each,
full handshake) and 50 paho MQTT clients (QoS 1 on ``ims/STA/cd11``), every station sending signed
10-s frames (3 channels x 20 sps, Ed25519) at a fixed pace.  Measured:

* **zero loss**: every frame of every station in the archive index, byte-identical (SHA-256), none
  twice -- the run fails otherwise;
* **frames/s** archived: in the paced phase (offered rate as the reference: the relay keeps up when
  the two are equal), then in a burst where every station sends its next frames at once (the
  relay's capacity with both transports busy; the paced rate as the reference);
* **latency** p50 / p99 per transport, paced phase: the relay's arrival stamp in the archive index
  (``received_at``: when the relay took the frame in -- the TCP ingest's submission, the MQTT
  batch's start; the batch's verification and fsync follow) minus the time the generator handed
  the frame to its socket (same machine, same clock);
* **relay CPU**: the relay process's user+system CPU time over the run's wall time (1.0 = one core).

    python -m bench relaytcp            # 50 + 50 stations, 120 frames each paced + 40 in a burst
    python -m bench relaytcp --quick    # 5 + 5 stations, 10 + 5 frames each
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.harness import Result

GROUP = "relaytcp"
ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pct(values: list[float], p: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, max(0, int(round(p / 100 * len(v) + 0.5)) - 1))] if v else float("nan")


def run(quick: bool) -> list[Result]:
    sys.path.insert(0, str(ROOT))
    from tests.integration.harness import FrameFactory, frame_times, sha256, write_keys

    from ims_station.broker import MosquittoBroker

    n_tcp = n_mqtt = 5 if quick else 50
    paced = 10 if quick else 120                # paced phase: frames per station ...
    interval_s = 0.5 if quick else 0.25         # ... one every 0.25 s: 400 frames/s offered
    burst = 5 if quick else 40                  # then a burst, as fast as the generator can send
    nframes = paced + burst
    tmp = Path(tempfile.mkdtemp(prefix="bench-relaytcp-"))
    try:
        tcp_st = [f"T{i:03d}" for i in range(n_tcp)]
        mqtt_st = [f"M{i:03d}" for i in range(n_mqtt)]
        stations = tcp_st + mqtt_st
        keys = write_keys(tmp, stations)
        times = frame_times(nframes, end_ago_s=120.0)
        frames = {s: [FrameFactory(s, keys[s], 100 * (i + 1), rate=20.0).frame(t) for t in times]
                  for i, s in enumerate(stations)}
        broker = MosquittoBroker(tmp / "broker").start()
        port, data_port = _free_port(), _free_port()
        conf = tmp / "relay.toml"
        conf.write_text(
            f'[relay]\ndata_dir = "{tmp / "data"}"\ntrust_dir = "{tmp / "trust"}"\ninstance = "bench"\n'
            'name = "IDC"\nacknack_interval_s = 5.0\n'
            f'\n[[broker]]\nhost = "{broker.host}"\nport = {broker.port}\n'
            f'\n[cd11.consumer]\nlisten = "127.0.0.1:{port}"\ndata_listen = "127.0.0.1:{data_port}"\n'
            "max_connections = 256\n"
            + "".join(f'\n[[cd11.consumer.station]]\nname = "{s}"\n' for s in tcp_st))
        cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        all_cores = sorted(range(os.cpu_count() or 1))
        relay_cores = [c for c in all_cores if c not in cores] or all_cores

        def pin() -> None:
            if hasattr(os, "sched_setaffinity"):
                os.sched_setaffinity(0, set(relay_cores))

        log = open(tmp / "relay.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "ims_station", "relay", "run", "--config", str(conf),
                                 "--json", "--stats-every", "1"], stdout=log, stderr=subprocess.STDOUT,
                                preexec_fn=pin)
        try:
            _wait_up(proc, port, tmp / "relay.log")
            sent_at, measured = _drive(proc.pid, port, broker, tcp_st, mqtt_st, frames,
                                       [(0, paced, interval_s), (paced, nframes, 0.0)], tmp)
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
            broker.stop()

        con = sqlite3.connect(tmp / "data" / "archive" / "index.sqlite")
        lat: dict[str, list[float]] = {"tcp": [], "mqtt": []}      # the paced phase's frames
        missing = wrong = 0
        for s in stations:
            rows = {seq: (h, t) for seq, h, t in
                    con.execute("SELECT seq, sha256, received_at FROM frames WHERE frame_set = ?", (f"{s}:0",))}
            for i, (seq, raw) in enumerate(frames[s]):
                got = rows.get(seq)
                if got is None:
                    missing += 1
                    continue
                if got[0] != sha256(raw):
                    wrong += 1
                if i < paced:
                    lat["tcp" if s in tcp_st else "mqtt"].append(got[1] - sent_at[(s, seq)])
        con.close()
        total = len(stations) * nframes
        if missing or wrong or len(rows) != nframes:
            raise AssertionError(f"relaytcp bench: {missing} frames missing, {wrong} differ, of {total}; "
                                 f"log {tmp / 'relay.log'}")
        (wall, cpu, n), (bwall, bcpu, bn) = measured
        offered = len(stations) / interval_s
        note = (f"{n_tcp} TCP + {n_mqtt} MQTT stations, {paced} frames each paced + {burst} in a burst "
                f"(3 ch x 20 sps, Ed25519): all {total} archived byte-identical, none twice; "
                f"relay pinned to core(s) {relay_cores}, generator to {cores}")
        out = [Result(GROUP, "paced: frames archived/s (both transports)", n / wall, "frames/s",
                      reference="offered rate", reference_value=offered, note=note),
               Result(GROUP, "paced: relay CPU", cpu / wall, "cores", note=f"{cpu:.1f} s CPU over {wall:.1f} s")]
        for tr in ("tcp", "mqtt"):
            for p in (50, 99):
                out.append(Result(GROUP, f"paced: latency {tr.upper()} p{p} (sent -> taken in)",
                                  _pct(lat[tr], p) * 1000, "ms", goal="< 300 s (IMS)"))
        out += [Result(GROUP, "burst: frames archived/s (both transports)", bn / bwall, "frames/s",
                       reference="paced rate", reference_value=n / wall,
                       note=f"{bn} frames sent at once, archived in {bwall:.1f} s"),
                Result(GROUP, "burst: relay CPU", bcpu / bwall, "cores", note=f"{bcpu:.1f} s CPU over {bwall:.1f} s")]
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _wait_up(proc: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"relay exited: {log.read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            for line in reversed(log.read_text(errors="replace").splitlines()):
                if line.startswith("{") and json.loads(line).get("transport", {}).get("connected"):
                    return
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"relay did not come up: {log.read_text()[-2000:]}")


def _drive(pid: int, port: int, broker, tcp_st, mqtt_st, frames, phases, tmp: Path):
    """Send every station's frames phase by phase (first frame index, end index, interval per
    station; 0 = as fast as the generator goes); returns (sent_at, [(wall s, relay CPU s, frames)
    per phase]), each phase measured until the relay archived all of it (polled in the index)."""
    import paho.mqtt.client as mqtt

    from ims_station.cd11tcp.link import LinkLimits
    from ims_station.cd11tcp.provider import MemorySource, Provider

    sent_at: dict[tuple[str, int], float] = {}
    loop = asyncio.new_event_loop()
    th = threading.Thread(target=loop.run_forever, daemon=True)
    th.start()
    providers = {}

    async def start_providers() -> None:
        for s in tcp_st:
            p = Provider(s, ("127.0.0.1", port), MemorySource(), limits=LinkLimits(acknack_interval_s=5.0),
                         backoff_initial_s=0.1, backoff_max_s=1.0)
            p.start()
            providers[s] = p

    asyncio.run_coroutine_threadsafe(start_providers(), loop).result(10)
    clients = {}
    for s in mqtt_st:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-{s}")
        c.connect(broker.host, broker.port)
        c.loop_start()
        clients[s] = c
    # Steady state only: every TCP station through its handshake, every MQTT client connected.
    deadline = time.monotonic() + 60
    while not (all(p.stats.connected and p.stats.acknacks_in for p in providers.values())
               and all(c.is_connected() for c in clients.values())):
        if time.monotonic() > deadline:
            raise RuntimeError("stations did not all connect within 60 s")
        time.sleep(0.05)
    stations = list(tcp_st) + list(mqtt_st)
    db = tmp / "data" / "archive" / "index.sqlite"
    measured = []
    for first, end, interval_s in phases:
        cpu0, t0 = _cpu_seconds(pid), time.monotonic()
        step = interval_s / len(stations)        # stations spread evenly over each interval
        start = time.monotonic()
        for i in range(first, end):
            for k, s in enumerate(stations):
                due = start + (i - first) * interval_s + k * step
                d = due - time.monotonic()
                if d > 0:
                    time.sleep(d)
                seq, raw = frames[s][i]
                sent_at[(s, seq)] = time.time()
                if s in providers:
                    p = providers[s]

                    def go(p=p, seq=seq, raw=raw) -> None:
                        p.source.add(seq, raw)
                        p.offer(seq, raw)
                    loop.call_soon_threadsafe(go)
                else:
                    clients[s].publish(f"ims/{s}/cd11", raw, qos=1)
        total = len(stations) * end
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
            (n,) = con.execute("SELECT COUNT(*) FROM frames").fetchone()
            con.close()
            if n >= total:
                break
            time.sleep(0.05)
        measured.append((time.monotonic() - t0, _cpu_seconds(pid) - cpu0, len(stations) * (end - first)))
    for c in clients.values():
        c.loop_stop()
        c.disconnect()
    async def stop_all() -> None:
        await asyncio.gather(*(p.stop() for p in providers.values()))

    asyncio.run_coroutine_threadsafe(stop_all(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    th.join(5)
    return sent_at, measured
