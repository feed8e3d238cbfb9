"""A fault-injecting TCP proxy (asyncio) for link tests and operators.

Owns: forwarding one listening address to one target, and the faults a WAN link shows --

* ``drop(duration_s, direction)``  bytes read in that direction are silently discarded (a CD-1.1
  stream then loses its framing: the receiver must alert and close, the provider reconnect);
* ``delay(seconds, duration_s)``   every chunk waits *seconds* before it is forwarded;
* ``reset()``                       every open connection is reset (RST) on both sides at once;
* ``half_open(duration_s)``         connections open now stop forwarding for good but stay open
                                    (a peer that vanished without FIN/RST: only heartbeat and
                                    write timeouts notice); new connections during *duration_s*
                                    are accepted and dead as well;
* ``random_faults(rate_per_s, ...)`` the above at random (exponential inter-arrival, seeded).

``direction``: ``"up"`` (client -> target), ``"down"`` (target -> client) or ``"both"``.

CD-1.1's connection manager hands out the data consumer's address; put one proxy in front of each
port and let the consumer advertise the data proxy (``DataConsumer(advertise=...)``, ``cd11 receive
--advertise``), which is also what operators behind NAT need.  The proxy does not rewrite payloads.

Operators: ``python -m ims_station.hil.tcpproxy --listen 127.0.0.1:9000 --to dc.example.org:8000
--random 0.1 --seed 1`` (``--help`` for the rest).  Tests: ``tests/cd11tcp/test_proxy_stream.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import socket
import struct
import time
from collections import Counter
from dataclasses import dataclass, field

log = logging.getLogger("ims_station.hil.tcpproxy")

KINDS = ("drop", "delay", "reset", "half_open")


@dataclass
class ProxyStats:
    connections: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    dropped_bytes: int = 0
    resets: int = 0
    faults: Counter = field(default_factory=Counter)


class _Conn:
    def __init__(self, cw: asyncio.StreamWriter) -> None:
        self.cw = cw
        self.tw: asyncio.StreamWriter | None = None
        self.dead = False
        self.tasks: list[asyncio.Task] = []


def _rst(writer: asyncio.StreamWriter | None) -> None:
    if writer is None:
        return
    sock = writer.get_extra_info("socket")
    try:
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    writer.transport.abort()


class FaultProxy:
    """Forward ``host:port`` (0 = any free port) to *target*, with injectable faults."""

    def __init__(self, target: tuple[str, int], *, host: str = "127.0.0.1", port: int = 0,
                 seed: int | None = None) -> None:
        self.target = target
        self.host, self.port = host, port
        self.stats = ProxyStats()
        self.rng = random.Random(seed)
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[_Conn] = set()
        self._drop_until = {"up": 0.0, "down": 0.0}
        self._delay = 0.0
        self._delay_until = 0.0
        self._dead_until = 0.0
        self._random: asyncio.Task | None = None

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    async def start(self) -> "FaultProxy":
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.host, self.port = self._server.sockets[0].getsockname()[:2]
        return self

    async def stop(self) -> None:
        if self._random is not None:
            self._random.cancel()
            await asyncio.gather(self._random, return_exceptions=True)
        if self._server is not None:
            self._server.close()
        conns = list(self._conns)
        tasks = [t for c in conns for t in c.tasks]
        for c in conns:
            self._close(c)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> "FaultProxy":
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    # -- faults --------------------------------------------------------------------------------
    def drop(self, duration_s: float, direction: str = "both") -> None:
        until = time.monotonic() + duration_s
        for d in (("up", "down") if direction == "both" else (direction,)):
            self._drop_until[d] = max(self._drop_until[d], until)
        self.stats.faults["drop"] += 1

    def delay(self, seconds: float, duration_s: float) -> None:
        self._delay = seconds
        self._delay_until = time.monotonic() + duration_s
        self.stats.faults["delay"] += 1

    def reset(self) -> None:
        for c in list(self._conns):
            self._close(c, rst=True)
            self.stats.resets += 1
        self.stats.faults["reset"] += 1

    def half_open(self, duration_s: float = 0.0) -> None:
        for c in self._conns:
            c.dead = True
        self._dead_until = max(self._dead_until, time.monotonic() + duration_s)
        self.stats.faults["half_open"] += 1

    def random_faults(self, rate_per_s: float, *, kinds: tuple[str, ...] = KINDS,
                      duration_s: tuple[float, float] = (0.05, 0.3), delay_s: tuple[float, float] = (0.01, 0.1)
                      ) -> asyncio.Task:
        """Inject faults of *kinds* at random, on average *rate_per_s* per second (seeded)."""
        bad = set(kinds) - set(KINDS)
        if bad:
            raise ValueError(f"unknown fault kinds {sorted(bad)}; known: {KINDS}")

        async def loop() -> None:
            while True:
                await asyncio.sleep(self.rng.expovariate(rate_per_s))
                kind = self.rng.choice(kinds)
                dur = self.rng.uniform(*duration_s)
                if kind == "drop":
                    self.drop(dur, self.rng.choice(("up", "down", "both")))
                elif kind == "delay":
                    self.delay(self.rng.uniform(*delay_s), dur)
                elif kind == "reset":
                    self.reset()
                else:
                    self.half_open(dur)
                log.info("fault %s (%.3f s)", kind, dur)

        self._random = asyncio.create_task(loop())
        return self._random

    # -- forwarding ------------------------------------------------------------------------------
    def _close(self, c: _Conn, *, rst: bool = False) -> None:
        for w in (c.cw, c.tw):
            if w is None:
                continue
            if rst:
                _rst(w)
            else:
                w.transport.abort()
        self._conns.discard(c)

    async def _accept(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        c = _Conn(cw)
        c.dead = time.monotonic() < self._dead_until
        self._conns.add(c)
        self.stats.connections += 1
        try:
            tr, tw = await asyncio.open_connection(*self.target)
        except OSError:
            self._close(c, rst=True)
            return
        c.tw = tw
        c.tasks = [asyncio.create_task(self._pump(c, cr, tw, "up")),
                   asyncio.create_task(self._pump(c, tr, cw, "down"))]
        await asyncio.gather(*c.tasks, return_exceptions=True)
        self._close(c)

    async def _pump(self, c: _Conn, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    direction: str) -> None:
        try:
            while True:
                if c.dead:
                    # half-open: forward nothing ever again, keep both sockets open (until stop)
                    await asyncio.Event().wait()
                data = await reader.read(65536)
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                now = time.monotonic()
                if c.dead:
                    continue
                if now < self._drop_until[direction]:
                    self.stats.dropped_bytes += len(data)
                    continue
                if now < self._delay_until and self._delay > 0:
                    await asyncio.sleep(self._delay)
                writer.write(data)
                await writer.drain()
                if direction == "up":
                    self.stats.bytes_up += len(data)
                else:
                    self.stats.bytes_down += len(data)
        except (OSError, RuntimeError):
            self._close(c)


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - operator entry point
    from ims_station.cd11tcp.link import parse_hostport

    p = argparse.ArgumentParser(prog="python -m ims_station.hil.tcpproxy",
                                description="Fault-injecting TCP proxy (drops, delays, resets, half-open).")
    p.add_argument("--listen", required=True, metavar="[HOST:]PORT")
    p.add_argument("--to", required=True, metavar="HOST:PORT")
    p.add_argument("--random", type=float, default=0.0, metavar="RATE", help="random faults per second")
    p.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated subset of {','.join(KINDS)}")
    p.add_argument("--seed", type=int)
    args = p.parse_args(argv)
    listen = parse_hostport(args.listen, what="--listen", default_host="127.0.0.1")
    target = parse_hostport(args.to, what="--to")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    async def run() -> None:
        proxy = await FaultProxy(target, host=listen[0], port=listen[1], seed=args.seed).start()
        print(f"proxy {proxy.address[0]}:{proxy.address[1]} -> {target[0]}:{target[1]}", flush=True)
        if args.random > 0:
            proxy.random_faults(args.random, kinds=tuple(k for k in args.kinds.split(",") if k))
        await asyncio.Event().wait()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
