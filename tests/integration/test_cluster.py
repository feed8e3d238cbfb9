"""Must-show 2 of issue 13: the relay scaled out over a 3-node NATS JetStream cluster.

Stations (outbox + uplink, production code) publish over MQTT to the cluster's MQTT gateway, each
with the list of the three nodes as its brokers; two relay processes (``ims-station relay run``
with ``[relay] input = "jetstream"``, one shared data_dir) share the replicated work-queue stream.
During the run one relay is SIGKILLed, then the broker node that leads the stream's replicas (the
worst case: the stream elects a new leader while a third of the stations fail over to the other
nodes, and the MQTT gateway may have acknowledged messages the stream never stored, which the
stations' outboxes resend on the relay's acknacks): every frame must be archived exactly
once and byte-identical (read from the archive's index), every station's outbox must empty (the
acknacks came back through the cluster) within DRAIN_BOUND_S of its last archived frame, and the
failover times are measured.  The stations are configured as a clustered centre's: acknack
subscription at QoS 0 (``[uplink] acknack_qos``) and the ``acknack_stall_s`` safety net.

The short version in the normal suite kills a relay only (NATS; see its docstring);
``IMS_CLUSTER_LONG=1`` runs the versions that also kill a node: RabbitMQ (the AMQP input, the
chosen engine) and NATS, whose figures docs/centre-cluster.md records.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from ims_station.broker import BrokerConfig
from ims_station.edge.logutil import SystemClock
from ims_station.edge.outbox import Outbox
from ims_station.edge.uplink import Uplink
from ims_station.relay.archive import FileArchive
from ims_station.relay.state import SqliteStateStore

from ims_station.config import write_secret_file

from ..conftest import missing_prerequisite, need_nats_server
from .harness import FrameFactory, RelayProcess, archived_sequences, frame_times, sha256, wait_for, write_keys

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools" / "cluster"))
from natscluster import NatsCluster  # noqa: E402
from rabbitcluster import BIN as RABBIT_BIN, RabbitCluster  # noqa: E402


#: The stations' [uplink] acknack_stall_s and the uplink's timing here, and the relays' acknack
#: interval (harness.RelayProcess default): the drain bound below is derived from them.
ACKNACK_STALL_S = 5.0
CONNECT_TIMEOUT_S = 2.0
BACKOFF_MAX_S = 0.5
ACKNACK_INTERVAL_S = RelayProcess.acknack_interval_s
#: The contract of acknack_stall_s: once a station's frames are all archived (and the node kill is
#: over), its outbox is empty within the time to notice a stuck session (acknack_stall_s after the
#: last acknack on the connection), to connect again with a clean session (TCP and CONNACK, each
#: within connect_timeout_s, after at most one backoff) and to receive the relay's next periodic
#: acknack (one interval; a second one in case the first left before the SUBACK).  A station that
#: misses it is stuck for good, however slow the machine: it is not a performance threshold.
DRAIN_BOUND_S = ACKNACK_STALL_S + 2 * CONNECT_TIMEOUT_S + BACKOFF_MAX_S + 2 * ACKNACK_INTERVAL_S


class ClusterStation:
    """One station's outbox + uplink, its brokers the cluster's MQTT ports starting at *first*."""

    def __init__(self, tmp: Path, name: str, keystore: Path, key_base: int, ports: list[int], first: int,
                 auth: tuple[str, Path] | None = None, acknack_qos: int = 0):
        self.name, self.frame_set = name, f"{name}:0"
        self.clock = SystemClock()
        order = ports[first:] + ports[:first]
        creds = {"username": auth[0], "password_file": str(auth[1])} if auth else {}
        self.brokers = [BrokerConfig(host="127.0.0.1", port=p, **creds) for p in order]
        self.outbox = Outbox(tmp / f"{name}-outbox.sqlite", max_bytes=64 << 20, max_age_s=7 * 86400,
                             clock=self.clock, resend_holdoff_s=0.5)
        # RabbitMQ 3.10 does not answer an MQTT 5 CONNECT: 3.1.1 at once (docs/centre-cluster.md).
        self.uplink = Uplink(name, self.brokers, self.outbox, clock=self.clock, backoff_base_s=0.05,
                             backoff_max_s=BACKOFF_MAX_S, ack_timeout_s=3.0, connect_timeout_s=CONNECT_TIMEOUT_S,
                             protocol="3.1.1" if auth else "auto",
                             # the acknack subscription outside the persistent session (the relays
                             # repeat acknacks; docs/centre-cluster.md), the configuration a
                             # clustered centre's stations use ...
                             acknack_qos=acknack_qos,
                             # ... and the safety net: a failed-over session that delivers no
                             # acknack is replaced ([uplink] acknack_stall_s)
                             acknack_stall_s=ACKNACK_STALL_S)
        self.factory = FrameFactory(name, keystore, key_base)
        self.built: dict[int, str] = {}

    def commit(self, t: float) -> None:
        seq, raw = self.factory.frame(t)
        assert self.outbox.put("cd11", self.frame_set, seq, t, raw)
        self.built[seq] = sha256(raw)
        self.uplink.notify()

    def close(self) -> None:
        self.uplink.stop()
        self.outbox.close()


class ArchiveWatch:
    """Polls the shared archive's index; remembers when each (station, seq) first appeared."""

    def __init__(self, archive: Path, stations: list[ClusterStation], n_frames: int):
        self.archive, self.stations, self.n_frames = archive, stations, n_frames
        self.seen: dict[str, dict[int, float]] = {s.name: {} for s in stations}
        # First time a station's outbox was seen empty with all its frames archived.
        self.drained: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll()
            time.sleep(0.02)

    def poll(self) -> None:
        now = time.monotonic()
        for s in self.stations:
            for seq in archived_sequences(self.archive, s.frame_set):
                self.seen[s.name].setdefault(seq, now)
            if (s.name not in self.drained and len(self.seen[s.name]) == self.n_frames
                    and s.outbox.stats()["frames"] == 0):
                self.drained[s.name] = now

    def drain_times(self, after: float) -> dict[str, float]:
        """Per station: seconds from the later of *after* and its last frame's archiving to its
        outbox seen empty (inf: never)."""
        out = {}
        for n, seen in self.seen.items():
            ref = max([after, *seen.values()])
            out[n] = self.drained[n] - ref if n in self.drained else float("inf")
        return out

    def count(self) -> int:
        return sum(len(v) for v in self.seen.values())

    def first_after(self, t: float, names: list[str]) -> float | None:
        """Seconds from *t* to the first frame of *names* archived after it."""
        after = [ts for n in names for ts in self.seen[n].values() if ts > t]
        return min(after) - t if after else None

    def largest_gap_after(self, t: float, names: list[str], until: float = float("inf")) -> float:
        """Per station of *names*: the longest wait for its next archived frame from *t* on (from
        *t* to its first arrival after *t*, then between arrivals, up to the first arrival after
        *until*); the largest of them."""
        worst = 0.0
        for n in names:
            prev = t
            for ts in sorted(x for x in self.seen[n].values() if x > t):
                if prev > until:
                    break
                worst = max(worst, ts - prev)
                prev = ts
        return worst

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def relay_stats(relay: RelayProcess) -> dict:
    last: dict = {}
    for p in relay.log_files:
        for line in p.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    doc = json.loads(line)
                except ValueError:
                    continue
                if doc.get("event") in ("stats", "stopped"):
                    last = doc
    return last


def run_failover(tmp_path: Path, *, n_stations: int, n_relays: int, n_frames: int, interval_s: float,
                 engine: str = "nats", kill_leader: bool = True, kill_node: bool = True,
                 acknack_qos: int | None = None) -> dict:
    """The whole scenario on *engine* (``nats``: JetStream input; ``rabbitmq``: AMQP input); returns
    the measured figures (asserting everything on the way).  *kill_leader*: the node killed leads
    the relays' stream / queue; else (NATS) one that leads none of the streams, the gateway's own
    included (docs/centre-cluster.md: the NATS 2.9 gateway does not always recover from the loss
    of a node leading its streams).  *acknack_qos*: the stations' acknack subscription (default 0,
    the clustered centre's configuration; ``IMS_CLUSTER_ACKNACK_QOS=1`` runs the subscription in
    the persistent session, as before, to reproduce the stuck sessions)."""
    if acknack_qos is None:
        acknack_qos = int(os.environ.get("IMS_CLUSTER_ACKNACK_QOS", "0"))
    names = [f"CL{i:02d}" for i in range(n_stations)]
    stores = write_keys(tmp_path, names)
    auth = None
    if engine == "nats":
        need_nats_server()
        cluster = NatsCluster(tmp_path / "nats").start()
        source = {"jetstream": cluster.servers, "ack_wait_s": 2.0}
    else:
        if not (RABBIT_BIN / "rabbitmq-server").exists():
            missing_prerequisite("rabbitmq-server", "apt-get install rabbitmq-server (./run installs it)")
        cluster = RabbitCluster(tmp_path / "rabbit").start()
        pw = tmp_path / "mq.password"
        write_secret_file(pw, cluster.password.encode())
        auth = (cluster.user, pw)
        source = {"amqp": cluster.servers, "amqp_auth": auth}
    relays: list[RelayProcess] = []
    stations: list[ClusterStation] = []
    watch = None
    try:
        data = tmp_path / "data"
        relays = [RelayProcess(tmp_path / f"relay{i}", None, tmp_path / "trust", instance=f"relay{i}",
                               data_dir=data, **source)
                  for i in range(n_relays)]
        # The archive and the state store exist before the relays start together (two processes
        # creating a fresh archive index or state.sqlite at the same instant can find it locked:
        # "cannot open state store: database is locked" in 1 of 10 NATS runs, measured; the
        # stream / queue declaration is idempotent).
        FileArchive(data / "archive", writer="setup").close()
        SqliteStateStore(data / "state.sqlite").close()
        for r in relays:
            r.start()
        wait_for(lambda: all(relay_stats(r).get("transport", {}).get("connected") for r in relays), 60,
                 "relays bound to the stream / queue", on_timeout=lambda: "\n".join(r.logs() for r in relays))
        # The node to kill is the one leading the stream's replicas (the worst case: the stream
        # elects a new leader while stations fail over); station i starts on node i % 3, so the
        # killed node carries a third of the stations.
        def leader() -> list[int] | None:
            i = cluster.stream_leader("IMS") if engine == "nats" else cluster.queue_leader("ims-relay")
            return None if i is None else [i]

        victim = wait_for(leader, 30, "the stream's / queue's leader")[0]
        if not kill_leader:
            assert engine == "nats", "only the NATS cluster has a choice of leaders here"
            leaders = {cluster.stream_leader(n) for n in ("IMS", "$MQTT_sess", "$MQTT_msgs", "$MQTT_rmsgs")}
            victim = min(range(3), key=lambda i: (i in leaders, i == victim))
        stations = [ClusterStation(tmp_path, n, stores[n], 100 * (i + 1), cluster.mqtt_ports, i % 3, auth=auth,
                                   acknack_qos=acknack_qos)
                    for i, n in enumerate(names)]
        on_victim = [s.name for i, s in enumerate(stations) if i % 3 == victim]
        for s in stations:
            s.uplink.start()
        watch = ArchiveWatch(data / "archive", stations, n_frames)
        times = frame_times(n_frames)
        total = n_frames * n_stations
        events: dict[str, float] = {}

        def faults() -> None:
            wait_for(lambda: watch.count() >= total // 3, 60, "a third archived")
            events["relay_killed"] = time.monotonic()
            relays[0].kill()
            if kill_node:
                wait_for(lambda: watch.count() >= 2 * total // 3, 60, "two thirds archived")
                events["node_killed"] = time.monotonic()
                cluster.kill(victim)

        fault_thread = threading.Thread(target=faults, daemon=True)
        fault_thread.start()
        stalls: list[dict] = []

        def stall_watch() -> None:
            """After the node kill: a station with frames in flight and no new acknack for 60 % of
            acknack_stall_s (before its uplink replaces the session) has the broker's view of its
            session recorded (RabbitMQ: the surviving nodes' subscription queues and bindings)."""
            last: dict[str, tuple[int, float]] = {}
            while not watch._stop.is_set():
                time.sleep(0.25)
                if "node_killed" not in events or engine != "rabbitmq":
                    continue
                now = time.monotonic()
                for s in stations:
                    acks = s.uplink.stats()["acknacks"]
                    if last.get(s.name, (None,))[0] != acks:
                        last[s.name] = (acks, now)
                    elif (now - last[s.name][1] >= 0.6 * ACKNACK_STALL_S and s.outbox.in_flight_count() > 0
                          and len(stalls) < 3 and not any(d["station"] == s.name for d in stalls)):
                        d = {"station": s.name, "after_kill_s": round(now - events["node_killed"], 2),
                             "uplink": s.uplink.stats(),
                             "broker": cluster.mqtt_state([s.brokers[0].client_id(s.name)])}
                        stalls.append(d)
                        print("station without acknacks:", json.dumps(d, default=str))

        threading.Thread(target=stall_watch, daemon=True).start()
        held = {len(times) // 2: "relay_killed", 3 * len(times) // 4: "node_killed" if kill_node else None}
        for k, t in enumerate(times):               # frames keep coming through both faults
            if held.get(k):                         # ... and some only after each (a loaded machine
                wait_for(lambda: held[k] in events, 90, held[k])   # may archive faster than it kills)
            for s in stations:
                s.commit(t)
            time.sleep(interval_s)
        fault_thread.join(90)
        assert set(events) == {"relay_killed"} | ({"node_killed"} if kill_node else set()), \
            "the faults did not happen during the run"

        def done() -> bool:
            return watch.count() == total and all(s.outbox.stats()["frames"] == 0 for s in stations)

        wait_for(done, 120, "every frame archived and acknowledged", pause=0.1,
                 on_timeout=lambda: f"archived {watch.count()}/{total}\n"
                 + "\n".join(f"{s.name}: {s.uplink.stats()} {s.outbox.stats()['frames']}" for s in stations)
                 + "\n" + "\n".join(r.logs() for r in relays))
        watch.stop()
        watch.poll()
        # Every outbox drained within the acknack_stall_s contract after the faults (DRAIN_BOUND_S).
        drain = watch.drain_times(events.get("node_killed", events["relay_killed"]))
        assert max(drain.values()) <= DRAIN_BOUND_S, \
            f"outboxes drained {drain} s after their last frame was archived; the bound is {DRAIN_BOUND_S} s"
        for s in stations:                          # exactly once (archived_sequences asserts), same bytes
            got = archived_sequences(data / "archive", s.frame_set)
            assert sorted(got) == sorted(s.built), f"{s.name}: lost or extra sequence numbers"
            assert got == s.built, f"{s.name}: archived bytes differ from the frames built"
        survivors = relays[1:]
        for r in survivors:
            r.stop()
        stats = [relay_stats(r) for r in survivors]
        assert all(st.get("transport", {}).get("acked", 0) > 0 for st in stats), stats   # all shared the load
        assert sum(st["quarantined"] for st in stats) == 0, stats
        node_killed = events.get("node_killed", float("inf"))
        others = [n for n in names if n not in on_victim]
        figures = {
            "engine": engine, "stations": n_stations, "relays": n_relays, "frames": total,
            "node_killed": ("leading the queue" if kill_leader else "leading none") if kill_node else "none",
            # Time without any newly archived frame after the relay's SIGKILL (the survivors go on).
            "relay_kill_to_next_archived_s": round(watch.first_after(events["relay_killed"], names), 3),
            "relay_kill_largest_gap_s": round(watch.largest_gap_after(events["relay_killed"], names,
                                                                      until=node_killed), 3),
            "redelivered_by_queue": sum(st["transport"].get("redelivered", 0) for st in stats),
            "duplicates_dropped": sum(st["duplicates"] for st in stats),
            "station_resent": sum(s.uplink.stats()["resent"] for s in stations),
            "station_failovers": sum(s.uplink.stats()["failovers"] for s in stations),
            "station_stall_reconnects": sum(s.uplink.stats()["acknack_stall_reconnects"] for s in stations),
            "station_acknack_subscribe_refused": sum(s.uplink.stats()["acknack_subscribe_refused"] for s in stations),
            "acknack_qos": acknack_qos,
            "outbox_drained_max_s": round(max(0.0, *drain.values()), 2),
            "drain_bound_s": DRAIN_BOUND_S,
            "stations_without_acknacks_seen": [d["station"] for d in stalls],
        }
        if kill_node:
            # The stations of the killed node: reconnect to another node, resend what got no PUBACK.
            figures["node_kill_largest_gap_its_stations_s"] = round(watch.largest_gap_after(node_killed, on_victim), 3)
            figures["node_kill_largest_gap_other_stations_s"] = round(watch.largest_gap_after(node_killed, others), 3)
        print("cluster failover figures:", json.dumps(figures))
        return figures
    finally:
        if watch is not None:
            watch.stop()
        for s in stations:
            s.close()
        for r in relays:
            r.stop()
        cluster.stop()


def test_cluster_relay_killed_every_frame_archived_once(tmp_path):
    """Short version for the normal suite: NATS (a 3-node RabbitMQ cluster takes 25-40 s to start
    here), 3 nodes, 2 relays, 3 stations, 12 frames each, relay 0 SIGKILLed after a third.  No node
    is killed here: the NATS 2.9 gateway sometimes refuses a failed-over station's acknack
    subscription for minutes (docs/centre-cluster.md), which would make the suite flaky; the node
    kills run in the long versions below."""
    f = run_failover(tmp_path, n_stations=3, n_relays=2, n_frames=12, interval_s=0.15, kill_node=False)
    assert f["frames"] == 36


@pytest.mark.opt_in("IMS_CLUSTER_LONG")
def test_nats_cluster_relay_and_non_leading_node_killed(tmp_path):
    """NATS, 3 stations, 2 relays, 16 frames each; relay 0 killed, then a node leading none of the
    streams (exposed to the gateway's subscription refusal, docs/centre-cluster.md)."""
    f = run_failover(tmp_path, n_stations=3, n_relays=2, n_frames=16, interval_s=0.15, kill_leader=False)
    assert f["frames"] == 48


@pytest.mark.opt_in("IMS_CLUSTER_LONG")
def test_rabbitmq_cluster_relay_and_node_killed_every_frame_archived_once(tmp_path):
    """The same on RabbitMQ (the AMQP input; a 3-node cluster takes 25-40 s to start here):
    6 stations, 3 relays, 30 frames each; the node leading the quorum queue is SIGKILLed."""
    f = run_failover(tmp_path, n_stations=6, n_relays=3, n_frames=30, interval_s=0.3, engine="rabbitmq")
    assert f["frames"] == 180


@pytest.mark.opt_in("IMS_CLUSTER_LONG")
def test_cluster_failover_long(tmp_path):
    """Long version on NATS (docs/centre-cluster.md figures): 3 relays, 6 stations, 30 frames (5
    minutes) each, the node leading the relays' stream SIGKILLed."""
    f = run_failover(tmp_path, n_stations=6, n_relays=3, n_frames=30, interval_s=0.3)
    assert f["frames"] == 180
