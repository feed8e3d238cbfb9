"""A 3-node RabbitMQ cluster with the MQTT plugin on loopback: the alternative that was measured.

Owns: one configuration per node (free AMQP, MQTT and Erlang distribution ports, a private epmd
port and Erlang cookie, a temporary Mnesia directory), starting the ``rabbitmq-server`` processes
(Debian package ``rabbitmq-server``) with classic-config peer discovery so they form one cluster,
waiting until every node runs, and SIGKILLing single nodes.  Used only by
``bench/bench_cluster.py`` to compare it with NATS JetStream (docs/centre-cluster.md); the relay's
clustered input is NATS (``relay/jetstream.py``, ``tools/cluster/natscluster.py``).

    python tools/cluster/rabbitcluster.py [--nodes 3] [--dir DIR]

Never the system instance: own node names (``imsN@localhost``), own epmd port, fresh free ports.
"""

from __future__ import annotations

import json
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
PASSWORD = "bench-only-not-a-default"      # a throw-away cluster on loopback, generated per run


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
                f"default_user = {USER}\ndefault_pass = {PASSWORD}\nloopback_users = none\n"
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
            for n in self.nodes:
                # await_startup fails at once while the VM has not registered with epmd yet: poll.
                while (r := self.ctl(n, "await_startup", "--timeout", "30", timeout=60)).returncode != 0:
                    if not n.alive or time.monotonic() > deadline:
                        raise ClusterError(f"{n.nodename} did not start: {r.stderr[-2000:]}")
                    time.sleep(1)
            while True:
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
            if n.alive:
                self.ctl(n, "stop", timeout=60)
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

    def endpoints(self) -> dict:
        return {"nodes": [{"name": n.nodename, "amqp": f"127.0.0.1:{n.amqp_port}",
                           "mqtt": f"127.0.0.1:{n.mqtt_port}", "dir": str(n.dir)} for n in self.nodes],
                "user": USER}


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
