"""A 3-node RabbitMQ cluster with the MQTT plugin on loopback: the alternative that was measured.

Owns: one configuration per node (free AMQP, MQTT and Erlang distribution ports, a private epmd
port and Erlang cookie, a temporary Mnesia directory), starting the ``rabbitmq-server`` processes
(Debian package ``rabbitmq-server``) with classic-config peer discovery so they form one cluster,
waiting until every node runs, and SIGKILLing single nodes.  Used by
``bench/bench_cluster.py`` (compared with NATS JetStream, docs/centre-cluster.md) and the tests of
the relay's AMQP input (``relay/amqp.py``).

    python tools/cluster/rabbitcluster.py [--nodes 3] [--dir DIR]

Never the system instance: own node names (``imsN@localhost``), own epmd port, fresh free ports.
"""

from __future__ import annotations

import json
import secrets
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from natscluster import ClusterError, free_port  # noqa: E402

#: The scripts themselves: Debian's /usr/sbin wrappers switch to the system ``rabbitmq`` user and its
#: home (cookie, /var/lib/rabbitmq), which a private cluster in a temporary directory must not use.
BIN = Path("/usr/lib/rabbitmq/bin")
USER = "ims"


def _accepts(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class RabbitNode:
    name: str
    dir: Path
    amqp_port: int
    mqtt_port: int
    dist_port: int
    proc: subprocess.Popen | None = None

    @property
    def nodename(self) -> str:
        return f"{self.name}@localhost"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class RabbitCluster:
    root: Path | None = None
    nodes_n: int = 3
    nodes: list[RabbitNode] = field(default_factory=list)
    _tmp: tempfile.TemporaryDirectory | None = None

    def __post_init__(self) -> None:
        if not (BIN / "rabbitmq-server").exists():
            raise ClusterError("rabbitmq-server is not installed (apt-get install rabbitmq-server)")
        if self.root is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="rabbit-cluster-")
            self.root = Path(self._tmp.name)
        self.root = Path(self.root)
        # A throw-away cluster on loopback: its one user's password is generated per cluster.
        self.user, self.password = USER, secrets.token_hex(12)
        self.epmd_port = free_port()
        self.home = self.root / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        cookie = self.home / ".erlang.cookie"
        cookie.write_text(os.urandom(16).hex().upper())
        cookie.chmod(0o400)
        for i in range(self.nodes_n):
            d = self.root / f"ims{i + 1}"
            d.mkdir(parents=True, exist_ok=True)
            self.nodes.append(RabbitNode(f"ims{i + 1}", d, free_port(), free_port(), free_port()))
        for n in self.nodes:
            (n.dir / "rabbitmq.conf").write_text(self.config(n))
            (n.dir / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")

    def config(self, n: RabbitNode) -> str:
        peers = "\n".join(f"cluster_formation.classic_config.nodes.{i + 1} = {m.nodename}"
                          for i, m in enumerate(self.nodes))
        return (f"listeners.tcp.default = 127.0.0.1:{n.amqp_port}\n"
                f"mqtt.listeners.tcp.default = 127.0.0.1:{n.mqtt_port}\n"
                "mqtt.allow_anonymous = false\n"
                # A station's persistent MQTT session in a quorum queue: it survives the loss of
                # the node it was on (the default classic queue does not; docs/centre-cluster.md).
                "mqtt.durable_queue_type = quorum\n"
                f"default_user = {self.user}\ndefault_pass = {self.password}\nloopback_users = none\n"
                "cluster_formation.peer_discovery_backend = classic_config\n" + peers + "\n")

    def env(self, n: RabbitNode) -> dict[str, str]:
        return dict(os.environ, HOME=str(self.home), RABBITMQ_NODENAME=n.nodename,
                    RABBITMQ_NODE_PORT=str(n.amqp_port), RABBITMQ_DIST_PORT=str(n.dist_port),
                    ERL_EPMD_PORT=str(self.epmd_port), RABBITMQ_CONFIG_FILE=str(n.dir / "rabbitmq"),
                    RABBITMQ_ENABLED_PLUGINS_FILE=str(n.dir / "enabled_plugins"),
                    RABBITMQ_MNESIA_BASE=str(n.dir / "mnesia"), RABBITMQ_LOG_BASE=str(n.dir / "log"),
                    RABBITMQ_PID_FILE=str(n.dir / "pid"), RABBITMQ_LOGS="-",
                    RABBITMQ_ADVANCED_CONFIG_FILE=str(n.dir / "advanced.config"))

    def ctl(self, n: RabbitNode, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "rabbitmqctl"), "-n", n.nodename, *args], env=self.env(n), capture_output=True,
                              text=True, timeout=timeout)

    def start(self, timeout: float = 180.0) -> "RabbitCluster":
        try:
            for n in self.nodes:
                log = open(n.dir / "server.log", "wb")
                n.proc = subprocess.Popen([str(BIN / "rabbitmq-server")], env=self.env(n), stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True)
                log.close()
            deadline = time.monotonic() + timeout
            # Ready when every node's AMQP and MQTT listeners accept (they open last in the boot);
            # a TCP probe costs nothing, while each rabbitmqctl call starts an Erlang VM (~1-2 s).
            for n in self.nodes:
                for port in (n.amqp_port, n.mqtt_port):
                    while not _accepts(port):
                        if not n.alive or time.monotonic() > deadline:
                            raise ClusterError(f"{n.nodename} did not start:\n"
                                               + (n.dir / "server.log").read_text(errors="replace")[-2000:])
                        time.sleep(0.2)
            while len(self.nodes) > 1:
                r = self.ctl(self.nodes[0], "cluster_status", "--formatter", "json")
                running = json.loads(r.stdout).get("running_nodes", []) if r.returncode == 0 else []
                if len(running) == len(self.nodes):
                    break
                if time.monotonic() > deadline:
                    raise ClusterError(f"cluster has only {running} running")
                time.sleep(0.5)
        except BaseException:
            self.stop()
            raise
        return self

    def kill(self, i: int) -> None:
        """SIGKILL node *i*'s Erlang VM (beam.smp, the rabbitmq-server script's child)."""
        n = self.nodes[i]
        if n.alive:
            os.killpg(n.proc.pid, signal.SIGKILL)
            n.proc.wait()

    def stop(self) -> None:
        for n in self.nodes:
            if n.alive:                     # SIGTERM: a graceful stop (without a CLI VM per node)
                os.killpg(n.proc.pid, signal.SIGTERM)
        for n in self.nodes:
            if n.proc is not None:
                try:
                    n.proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(n.proc.pid, signal.SIGKILL)
                    n.proc.wait()
        # epmd was started for this cluster's port; it goes with it.
        subprocess.run(["epmd", "-port", str(self.epmd_port), "-kill"], capture_output=True,
                       env=dict(os.environ, ERL_EPMD_PORT=str(self.epmd_port)))
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> "RabbitCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def queue_leader(self, queue: str) -> int | None:
        """Index of the node leading quorum queue *queue* (``rabbitmqctl list_queues``), or None."""
        for n in self.nodes:
            if not n.alive:
                continue
            r = self.ctl(n, "list_queues", "name", "leader", "--formatter", "json")
            if r.returncode != 0:
                continue
            try:
                rows = json.loads(r.stdout)
            except ValueError:
                continue
            names = [m.nodename for m in self.nodes]
            for row in rows:
                if row.get("name") == queue and row.get("leader") in names:
                    return names.index(row["leader"])
            return None
        return None

    def mqtt_state(self, client_ids: list[str]) -> dict:
        """What a surviving node knows of the MQTT sessions of *client_ids* -- the MQTT client ids,
        e.g. ``ims-STA01`` (BrokerConfig.client_id), not the station codes (for a stalled
        station's diagnosis): their subscription queues (``mqtt-subscription-<id>qos0/1``: type,
        durability, leader, members, consumers, messages) and those queues' bindings."""
        alive = [n for n in self.nodes if n.alive]
        if not alive:
            return {}
        n = alive[0]
        wanted = tuple(f"mqtt-subscription-{c}" for c in client_ids)
        out: dict = {"asked": n.nodename}
        r = self.ctl(n, "list_queues", "name", "type", "durable", "auto_delete", "state", "leader", "members",
                     "online", "consumers", "messages", "messages_unacknowledged", "--formatter", "json")
        try:
            out["queues"] = [q for q in json.loads(r.stdout) if q.get("name", "").startswith(wanted)]
        except ValueError:
            out["queues"] = r.stdout[-1000:] + r.stderr[-1000:]
        # The Raft view of each QoS 1 session queue (list_queues may answer nothing during an election).
        out["quorum_status"] = {}
        for c in client_ids:
            try:
                r = subprocess.run([str(BIN / "rabbitmq-queues"), "-n", n.nodename, "quorum_status",
                                    f"mqtt-subscription-{c}qos1", "--formatter", "json"], env=self.env(n),
                                   capture_output=True, text=True, timeout=20)
                out["quorum_status"][c] = (r.stdout.strip() or r.stderr.strip())[-1500:]
            except subprocess.TimeoutExpired:
                out["quorum_status"][c] = "timeout (20 s)"
        r = self.ctl(n, "list_bindings", "source_name", "destination_name", "routing_key", "--formatter", "json")
        try:
            out["bindings"] = [b for b in json.loads(r.stdout) if b.get("destination_name", "").startswith(wanted)]
        except ValueError:
            out["bindings"] = r.stdout[-1000:] + r.stderr[-1000:]
        return out

    @property
    def mqtt_ports(self) -> list[int]:
        """MQTT ports of every node (the stations' ``[[broker]]`` list)."""
        return [n.mqtt_port for n in self.nodes]

    @property
    def servers(self) -> list[str]:
        """AMQP URLs of every node (the relay's ``[amqp] servers``)."""
        return [f"amqp://127.0.0.1:{n.amqp_port}" for n in self.nodes]

    def endpoints(self) -> dict:
        return {"nodes": [{"name": n.nodename, "amqp": f"127.0.0.1:{n.amqp_port}",
                           "mqtt": f"127.0.0.1:{n.mqtt_port}", "dir": str(n.dir)} for n in self.nodes],
                "user": self.user, "password": self.password}


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=None)
    args = ap.parse_args(argv)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    cluster = RabbitCluster(args.dir, args.nodes)
    t0 = time.monotonic()
    cluster.start()
    print(json.dumps(dict(cluster.endpoints(), ready_s=round(time.monotonic() - t0, 2)), indent=2), flush=True)
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
