"""Clustered engine for the relay: NATS JetStream vs RabbitMQ quorum queues, measured on loopback.

The comparison behind docs/centre-cluster.md.  For each engine a 3-node cluster is started from the
Debian package (``tools/cluster/natscluster.py``, ``tools/cluster/rabbitcluster.py``) and measured
the way the relays would use it -- stations publish over MQTT 3.1.1 at QoS 1 to the nodes' MQTT
gateways, one consumer takes the messages from a replicated queue with explicit acks (NATS: a
work-queue stream with 3 replicas and a durable pull consumer; RabbitMQ: a quorum queue bound to
``amq.topic``, consumed over AMQP with manual acks):

* **ready** -- seconds from starting the three processes to a cluster that takes work;
* **throughput** -- frames/s end to end (first publish to last consumed) for payloads of 1, 4 and
  10 KiB, 3 publishers (one per node) with 32 messages in flight each; the reference, measured in
  the same run, is one Mosquitto with a plain QoS 1 subscriber (no replication): the ratio says
  what the replication and the queue cost;
* **failover** -- 200 frames/s published to a surviving node while the node leading the stream /
  queue is SIGKILLed: the longest pause of the consumer after the kill, and frames that got a
  PUBACK but never reached the consumer (lost);
* **features** -- what the stations' MQTT client uses (docs/topics.md): MQTT 5 accepted, a retained
  SOH message seen by a subscriber on another node and after its node died, a last will published
  when a station's connection dies on another node, a per-station ACL refusing another station's
  topic.

    python -m bench cluster            # full (about 3 minutes: RabbitMQ takes ~25 s per cluster start)
    python -m bench cluster --quick    # 200 frames per size
"""

from __future__ import annotations

import asyncio
import socket
import struct
import sys
import threading
import time
from pathlib import Path

from bench.harness import Result

GROUP = "cluster"
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools" / "cluster"))

SUBJECTS = ["ims.*.cd11"]


# -- MQTT side (paho, as the stations' uplink uses it) ----------------------------------------------
def mqtt_client(port: int, cid: str, *, v5: bool = False, user: tuple[str, str] | None = None, will=None,
                clean: bool = True):
    import paho.mqtt.client as mqtt

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid,
                    protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311, **({} if v5 else {"clean_session": clean}))
    if user:
        c.username_pw_set(*user)
    if will:
        c.will_set(*will, qos=1, retain=False)
    c.max_inflight_messages_set(32)
    result = {}
    ev = threading.Event()

    def on_connect(cl, u, flags, rc, props=None):
        result["rc"] = rc
        ev.set()

    c.on_connect = on_connect
    try:
        c.connect("127.0.0.1", port, keepalive=5)
    except OSError as err:
        return None, f"connect: {err}"
    c.loop_start()
    if not ev.wait(5) or getattr(result.get("rc"), "is_failure", result.get("rc") != 0):
        c.loop_stop()
        return None, f"CONNACK {result.get('rc', 'none')}"
    return c, "ok"


class Publisher:
    """Publishes numbered payloads at QoS 1; remembers which got a PUBACK."""

    def __init__(self, port: int, pid: int, topic: str, size: int, user=None) -> None:
        self.pid, self.topic, self.size = pid, topic, size
        self.c, why = mqtt_client(port, f"bench-pub-{pid}-{time.monotonic_ns()}", user=user)
        assert self.c is not None, why
        self._infos: list = []
        self.pad = bytes(range(256)) * (size // 256 + 1)

    @property
    def acked(self) -> set[int]:
        """Sequence numbers the broker acknowledged (PUBACK)."""
        return {seq for seq, info in self._infos if info.is_published()}

    def publish(self, seq: int) -> None:
        payload = struct.pack(">II", self.pid, seq) + self.pad[: self.size - 8]
        self._infos.append((seq, self.c.publish(self.topic, payload, qos=1)))

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


class Consumed:
    def __init__(self) -> None:
        self.times: dict[tuple[int, int], float] = {}
        self.first: float | None = None
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def add(self, payload: bytes) -> None:
        now = time.monotonic()
        with self.lock:
            self.times.setdefault(struct.unpack(">II", payload[:8]), now)

    def count(self) -> int:
        return len(self.times)

    def wait(self, n: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.count() < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.count() >= n


# -- consumers ------------------------------------------------------------------------------------
def nats_consumer(servers: list[str], got: Consumed, ready: threading.Event, info: dict) -> threading.Thread:
    async def main() -> None:
        import nats
        from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType, StreamConfig

        nc = await nats.connect(servers=servers, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
        js = nc.jetstream()
        try:
            await js.stream_info("BENCH")
        except Exception:  # noqa: BLE001 - first consumer creates it
            await js.add_stream(StreamConfig(name="BENCH", subjects=SUBJECTS, retention=RetentionPolicy.WORK_QUEUE,
                                             storage=StorageType.FILE, num_replicas=3))
            await js.add_consumer("BENCH", ConsumerConfig(durable_name="relay", ack_policy=AckPolicy.EXPLICIT,
                                                          ack_wait=5, max_deliver=-1, max_ack_pending=20000))
        psub = await js.pull_subscribe_bind("relay", "BENCH")
        info["leader"] = (await js.stream_info("BENCH")).cluster.leader
        ready.set()
        while not got.stop.is_set():
            try:
                msgs = await psub.fetch(256, timeout=0.2)
            except TimeoutError:
                continue
            except Exception:  # noqa: BLE001 - node lost: the client reconnects
                await asyncio.sleep(0.05)
                continue
            for m in msgs:
                got.add(m.data)
                await m.ack()
        await nc.close()

    t = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
    t.start()
    return t


def rabbit_consumer(amqp_port: int, got: Consumed, ready: threading.Event, info: dict,
                    user: tuple[str, str]) -> threading.Thread:
    def main() -> None:
        import pika

        conn = pika.BlockingConnection(pika.ConnectionParameters(
            "127.0.0.1", amqp_port, credentials=pika.PlainCredentials(*user)))
        ch = conn.channel()
        ch.queue_declare("relay", durable=True, arguments={"x-queue-type": "quorum"})
        ch.queue_bind("relay", "amq.topic", routing_key="ims.*.cd11")
        ch.basic_qos(prefetch_count=256)

        def on_msg(chan, method, props, body):
            got.add(body)
            chan.basic_ack(method.delivery_tag)

        ch.basic_consume("relay", on_msg)
        ready.set()
        while not got.stop.is_set():
            conn.process_data_events(time_limit=0.1)
        conn.close()

    t = threading.Thread(target=main, daemon=True)
    t.start()
    return t


def mqtt_consumer(port: int, got: Consumed, ready: threading.Event, info: dict) -> threading.Thread:
    def main() -> None:
        c, why = mqtt_client(port, "bench-ref-consumer")
        assert c is not None, why
        c.on_message = lambda cl, u, m: got.add(m.payload)
        c.subscribe("ims/+/cd11", qos=1)
        time.sleep(0.3)
        ready.set()
        got.stop.wait()
        c.loop_stop()
        c.disconnect()

    t = threading.Thread(target=main, daemon=True)
    t.start()
    return t


# -- measurements ---------------------------------------------------------------------------------
def throughput(ports: list[int], consumer, size: int, n: int, user=None) -> float:
    got, ready, info = Consumed(), threading.Event(), {}
    t = consumer(got, ready, info)
    assert ready.wait(60), "consumer not ready"
    pubs = [Publisher(ports[i % len(ports)], i, f"ims/ST{i}/cd11", size, user) for i in range(3)]
    per = n // len(pubs)
    t0 = time.monotonic()
    threads = [threading.Thread(target=lambda p=p: [p.publish(s) for s in range(per)]) for p in pubs]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    ok = got.wait(per * len(pubs), 120)
    t1 = max(got.times.values()) if got.times else time.monotonic()
    got.stop.set()
    t.join(10)
    for p in pubs:
        p.close()
    assert ok, f"only {got.count()} of {per * len(pubs)} consumed"
    return per * len(pubs) / (t1 - t0)


def failover(cluster, consumer, pub_port: int, kill_index: int, rate: float = 200.0, run_s: float = 8.0,
             kill_at_s: float = 3.0, user=None) -> dict:
    got, ready, info = Consumed(), threading.Event(), {}
    t = consumer(got, ready, info)
    assert ready.wait(60), "consumer not ready"
    pub = Publisher(pub_port, 9, "ims/FAIL/cd11", 4096, user)
    t0 = time.monotonic()
    seq = 0
    killed_at = None
    while time.monotonic() - t0 < run_s:
        if killed_at is None and time.monotonic() - t0 >= kill_at_s:
            killed_at = time.monotonic()
            cluster.kill(kill_index)
        pub.publish(seq)
        seq += 1
        time.sleep(max(0.0, t0 + seq / rate - time.monotonic()))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not pub.acked <= {s for (_p, s) in got.times}:
        time.sleep(0.1)
    got.stop.set()
    t.join(10)
    pub.close()
    after = sorted(ts for ts in got.times.values() if ts > killed_at)
    gaps = [b - a for a, b in zip([killed_at] + after, after)]
    consumed = {s for (_p, s) in got.times}
    return {"published": seq, "pubacked": len(pub.acked), "consumed": len(consumed),
            "lost_after_puback": len(pub.acked - consumed), "stall_s": round(max(gaps) if gaps else float("inf"), 3),
            "leader": info.get("leader")}


def features(ports: list[int], kill, user_of=None) -> dict:
    """MQTT 5, retained across nodes and after the publishing node died, last will across nodes."""
    out: dict = {}
    c, why = mqtt_client(ports[0], "bench-v5", v5=True, user=user_of and user_of("ims"))
    out["mqtt5"] = c is not None
    if c:
        c.loop_stop()
        c.disconnect()
    else:
        out["mqtt5_refusal"] = why
    u = user_of("ims") if user_of else None
    # retained SOH, published on node 0, read on node 1, and on node 2 after node 0 died
    pub, _ = mqtt_client(ports[0], "bench-soh", user=u)
    pub.publish("ims/STR/soh", b'{"soh": 1}', qos=1, retain=True).wait_for_publish(5)
    time.sleep(0.5)

    def read_retained(port: int) -> bool:
        got = threading.Event()
        s, _ = mqtt_client(port, f"bench-ret-{port}", user=u)
        if s is None:
            return False
        s.on_message = lambda cl, ud, m: m.retain and got.set()
        s.subscribe("ims/STR/soh", qos=1)
        ok = got.wait(3)
        s.loop_stop()
        s.disconnect()
        return ok

    out["retained_other_node"] = read_retained(ports[1])
    pub.loop_stop()
    # last will: a station on node 0 whose connection dies; a watcher on node 1
    got_will = threading.Event()
    w, _ = mqtt_client(ports[1], "bench-watch", user=u)
    w.on_message = lambda cl, ud, m: got_will.set()
    w.subscribe("ims/STW/status", qos=1)
    time.sleep(0.5)
    st, _ = mqtt_client(ports[0], "bench-will", user=u, will=("ims/STW/status", b'{"state":"offline"}'))
    time.sleep(0.3)
    st.loop_stop()
    st.socket().shutdown(socket.SHUT_RDWR)      # the link dies: no DISCONNECT
    st.socket().close()
    out["last_will_other_node"] = got_will.wait(10)
    w.loop_stop()
    w.disconnect()
    kill(0)
    t_kill = time.monotonic()
    while not (ok := read_retained(ports[2])) and time.monotonic() - t_kill < 20:
        time.sleep(0.5)                     # leader elections of the gateway's own streams
    out["retained_after_node_died"] = ok
    if ok:
        out["retained_after_node_died_s"] = round(time.monotonic() - t_kill, 1)
    return out


def run(quick: bool) -> list[Result]:
    from ims_station.broker import MosquittoBroker
    from natscluster import NatsCluster
    from rabbitcluster import RabbitCluster

    n = 300 if quick else 3000
    sizes = (1024, 4096, 10240)
    out: list[Result] = []
    ref: dict[int, float] = {}
    with MosquittoBroker() as m:
        for size in sizes:
            ref[size] = throughput([m.port], lambda g, r, i: mqtt_consumer(m.port, g, r, i), size, n)
    engines = {
        "NATS JetStream (R3 work-queue stream)": (lambda: NatsCluster(), None,
                                                  lambda c: (lambda g, r, i: nats_consumer(c.servers, g, r, i))),
        "RabbitMQ (quorum queue, MQTT plugin)": (lambda: RabbitCluster(), True,
                                                 lambda c: (lambda g, r, i: rabbit_consumer(c.nodes[2].amqp_port, g, r, i,
                                                                                            (c.user, c.password)))),
    }
    for name, (make, auth, consumer_of) in engines.items():
        ports_of = (lambda c: c.mqtt_ports)
        c = make()
        user = (c.user, c.password) if auth else None
        t0 = time.monotonic()
        c.start()
        ready_s = time.monotonic() - t0
        out.append(Result(GROUP, f"{name}: 3 nodes ready", ready_s, "s"))
        print(f"bench cluster: {name}: ready in {ready_s:.1f} s", file=sys.stderr, flush=True)
        try:
            for size in sizes:
                rate = throughput(ports_of(c), consumer_of(c), size, n, user)
                out.append(Result(GROUP, f"{name}: {size // 1024} KiB frames, QoS 1 -> replicated queue -> ack",
                                  rate, "frames/s", reference="one Mosquitto, plain QoS 1 subscriber",
                                  reference_value=ref[size]))
            # NATS: repeated (the killed node restarts in a second and catches up); RabbitMQ once
            # (a node takes ~10 s to rejoin, and the quorum queue's leader is where it was declared).
            for rep in range(1 if quick or "NATS" not in name else 3):
                info: dict = {}
                if "NATS" in name:
                    # the stream's leader: kill it, publish to another node, consume from the third
                    ev = threading.Event()
                    g = Consumed()
                    th = nats_consumer(c.servers, g, ev, info)
                    ev.wait(30)
                    g.stop.set()
                    th.join(5)
                    lead = [nd.name for nd in c.nodes].index(info["leader"])
                else:
                    lead = 2                    # the quorum queue was declared through node 3 (its leader)
                others = [i for i in range(3) if i != lead]
                if "NATS" in name:
                    cons = lambda g, r, i: nats_consumer([c.nodes[others[1]].url], g, r, i)  # noqa: E731
                else:
                    cons = lambda g, r, i: rabbit_consumer(c.nodes[others[1]].amqp_port, g, r, i, user)  # noqa: E731
                print(f"bench cluster: {name}: failover {rep + 1}, leader node {lead + 1}", file=sys.stderr,
                      flush=True)
                f = failover(c, cons, ports_of(c)[others[0]], lead, rate=100 if quick else 200, user=user)
                out.append(Result(GROUP, f"{name}: consumer pause when the leading node is SIGKILLed", f["stall_s"],
                                  "s", note=f"lost after PUBACK: {f['lost_after_puback']} of {f['pubacked']}",
                                  extra=f))
                if "NATS" in name:
                    c.restart(lead)
        finally:
            c.stop()
        # features on a fresh cluster (the failover left one node dead)
        c = make()
        user = (c.user, c.password) if auth else None
        c.start()
        try:
            order = ports_of(c)
            feats = features(order, c.kill, (lambda _u: user) if user else None)
        finally:
            c.stop()
        out.append(Result(GROUP, f"{name}: MQTT features", sum(bool(v) for k, v in feats.items()
                                                                if isinstance(v, bool)), "of 4",
                          note=", ".join(f"{k}={v}" for k, v in feats.items()), extra=feats))
    return out
