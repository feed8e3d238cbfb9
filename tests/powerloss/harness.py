"""The power-loss harness: powerfs mounts, writers, cuts, and the ledger of what was acknowledged.

:func:`run` plays rounds of: mount the disk (powerfs over the durable state of the previous cut),
start a writer (``tests/powerloss/scenarios.py``), check that what it finds on opening contains
everything acknowledged in earlier rounds, let it write and acknowledge, cut the power while it is
busy (every operation after the cut fails; only synced data is kept), kill it, unmount.  A last
round only opens and checks.  Any acknowledged datum missing or changed raises :class:`DataLoss`.
"""

from __future__ import annotations

import json
import os
import queue
import random
import shutil
import subprocess
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parents[2]
POWERFS = Path(__file__).with_name("powerfs.py")
LINE_TIMEOUT_S = 60.0     # a hung writer or file system fails the test instead of hanging it


class DataLoss(AssertionError):
    """Something acknowledged before the power cut is missing or different after it."""


class HarnessError(RuntimeError):
    """The harness itself failed (mount, writer crash before the cut, ...)."""


class _Lines:
    """The stdout lines of a process, read by a thread (so reads can time out)."""

    def __init__(self, proc: subprocess.Popen, what: str, stderr: Path | None) -> None:
        self.proc, self.what, self.stderr = proc, what, stderr
        self.q: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.q.put(line)
        self.q.put(None)

    def _why(self) -> str:
        err = self.stderr.read_text(errors="replace")[-3000:] if self.stderr and self.stderr.exists() else ""
        return f"{self.what} (exit status {self.proc.poll()}); stderr:\n{err}"

    def next(self, timeout: float = LINE_TIMEOUT_S) -> str:
        try:
            line = self.q.get(timeout=timeout)
        except queue.Empty:
            raise HarnessError(f"no output for {timeout:.0f} s from {self._why()}") from None
        if line is None:
            self.q.put(None)
            raise HarnessError(f"output ended: {self._why()}")
        return line.rstrip("\n")

    def rest(self) -> list[str]:
        """Every line up to the end of output (call after the process was killed)."""
        out = []
        while (line := self.q.get(timeout=LINE_TIMEOUT_S)) is not None:
            out.append(line.rstrip("\n"))
        return out


class PowerDisk:
    """A directory of durable state, mounted through powerfs; :meth:`cut` is the power cut."""

    def __init__(self, root: Path) -> None:
        self.backing = root / "disk"
        self.mountpoint = root / "mnt"
        self.log = root / "powerfs.log"
        self.backing.mkdir(parents=True, exist_ok=True)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        self._proc: subprocess.Popen | None = None
        self._lines: _Lines | None = None
        self.cuts: list[dict] = []

    @contextmanager
    def mounted(self) -> Iterator[Path]:
        with open(self.log, "a") as log:
            self._proc = subprocess.Popen([sys.executable, str(POWERFS), str(self.backing), str(self.mountpoint)],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True)
        self._lines = _Lines(self._proc, "powerfs", self.log)
        try:
            if self._lines.next() != "ready":
                raise HarnessError("powerfs did not say ready")
            yield self.mountpoint
        finally:
            self._unmount()

    def cut(self) -> dict:
        """Power off now: what was not synced is gone; the backing directory holds the rest."""
        assert self._proc is not None and self._lines is not None
        self._proc.stdin.write("cut\n")
        self._proc.stdin.flush()
        reply = self._lines.next()
        if not reply.startswith("cut "):
            raise HarnessError(f"powerfs answered {reply!r} to cut")
        stats = json.loads(reply[4:])
        self.cuts.append(stats)
        return stats

    def _unmount(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], capture_output=True)
        try:
            proc.stdin.close()
            proc.wait(timeout=20)
        except (subprocess.TimeoutExpired, BrokenPipeError):
            proc.kill()
            proc.wait()


# -- what was acknowledged, and what must therefore be found --------------------------------------------
class OutboxLedger:
    """Frames whose ``put`` returned (the board was acknowledged), ACK points, and the relay's
    acknacks (reported before the outbox deletes: from then on those frames may be gone)."""

    def __init__(self) -> None:
        self.frames: dict[int, str] = {}
        self.highest = 0
        self.ack_point: tuple[int, int] | None = None
        self.released_through = 0     # highest seq an acknack covered
        self.count = 0

    def record(self, ack: dict) -> None:
        self.count += 1
        if "put" in ack:
            _, seq, digest = ack["put"]
            self.frames[seq] = digest
            self.highest = max(self.highest, seq)
        elif "ack_point" in ack:
            _, epoch, seq = ack["ack_point"]
            self.ack_point = max(self.ack_point or (epoch, seq), (epoch, seq))
        elif "acknack" in ack:
            _, hi = ack["acknack"]
            self.released_through = max(self.released_through, hi)
            for seq in [s for s in self.frames if s <= hi]:
                del self.frames[seq]     # the relay has it: it may be deleted, or come back after a cut

    def problems(self, seen: dict) -> list[str]:
        held = {seq: digest for _, seq, digest in seen["frames"]}
        out = [f"acknowledged frame seq {seq} lost" for seq in sorted(self.frames) if seq not in held]
        out += [f"acknowledged frame seq {seq} has other bytes" for seq, d in sorted(self.frames.items())
                if seq in held and held[seq] != d]
        if self.highest and (seen["highest_committed"] or 0) < self.highest:
            out.append(f"highest committed seq went back from {self.highest} to {seen['highest_committed']} "
                       "(the framer could reuse committed sequence numbers)")
        if self.ack_point is not None:
            got = seen["ack_points"].get("1")
            if got is None or (got[0], got[1]) < self.ack_point:
                out.append(f"board ACK point {self.ack_point} (epoch, seq) went back to {got}")
        return out


class RelayLedger:
    """Batches whose ``process`` returned (acked to the broker) and acknacks sent to the station."""

    def __init__(self) -> None:
        self.frames: dict[tuple[str, int], str] = {}
        self.quarantined: set[str] = set()
        self.acknacked: set[tuple[str, int]] = set()
        self.count = 0

    def record(self, ack: dict) -> None:
        self.count += 1
        if "batch" in ack:
            for fs, seq, digest in ack["batch"]["archived"]:
                self.frames[(fs, seq)] = digest
            self.quarantined.update(ack["batch"]["quarantined"])
        elif "acknack" in ack:
            fs, lo, hi, gaps = ack["acknack"]
            self.acknacked.update((fs, s) for s in range(lo, hi + 1) if not any(a <= s < b for a, b in gaps))

    def problems(self, seen: dict) -> list[str]:
        held = {(fs, seq): digest for fs, seq, digest in seen["frames"]}
        out = [f"archived frame {k} (batch acked to the broker) lost" for k in sorted(self.frames) if k not in held]
        out += [f"archived frame {k} has other bytes" for k, d in sorted(self.frames.items())
                if k in held and held[k] != d]
        out += [f"acknacked frame {k} not in the archive" for k in sorted(self.acknacked) if k not in held]
        quarantine = set(seen["quarantine"])
        out += [f"quarantined payload {d[:16]}.. lost" for d in sorted(self.quarantined - quarantine)]
        for fs, seq in sorted(self.acknacked):
            lo, hi, gaps = seen["states"].get(fs, (0, -1, []))
            if not (lo <= seq <= hi and not any(a <= seq < b for a, b in gaps)):
                out.append(f"frame set state forgot acknacked frame {(fs, seq)} (state {lo}..{hi}, gaps {gaps})")
        return out


@dataclass
class Result:
    acks: int = 0            # acknowledgements recorded
    checked: int = 0         # openings checked against them (the first on an empty disk)
    cuts: list[dict] = field(default_factory=list)
    ledger: Any = None       # what was acknowledged (OutboxLedger / RelayLedger)
    seen: list[dict] = field(default_factory=list)   # what each opening reported


def run(tmp: Path, scenario: str, *, rounds: int = 3, mutant: str | None = None, seed: int = 0,
        cut_after: tuple[int, int] = (15, 60), extra: tuple[str, ...] = (), cut_at_hold: bool = False) -> Result:
    """Play *rounds* write-and-cut rounds and a final check; raise :class:`DataLoss` at the first
    round whose opening misses acknowledged data.  The cut comes after a random number of
    acknowledgements (*cut_after*), or with *cut_at_hold* when the writer prints ``{"hold": ...}``
    (a writer run with a ``--hold-...`` option in *extra*: a cut at one chosen instant)."""
    ledger: Any = OutboxLedger() if scenario == "outbox" else RelayLedger()
    disk = PowerDisk(tmp)
    rng = random.Random(f"{scenario}/{seed}")
    result = Result()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    for rnd in range(rounds + 1):
        last = rnd == rounds
        cmd = [sys.executable, "-m", "tests.powerloss.scenarios", scenario, str(disk.mountpoint),
               "--round", str(seed * 100 + rnd), *extra]
        if mutant:
            cmd += ["--mutant", mutant]
        if last:
            cmd.append("--report-only")
        stderr = tmp / f"writer-{rnd}.log"
        with disk.mounted(), open(stderr, "w") as err:
            child = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
            lines = _Lines(child, f"writer round {rnd}", stderr)
            try:
                first = json.loads(lines.next())
                if "open_failed" in first:
                    problems = [f"the store does not open after the cut: {first['open_failed']}"]
                else:
                    result.seen.append(first["seen"])
                    problems = ledger.problems(first["seen"])
                if problems:
                    raise DataLoss(f"{scenario}{' mutant ' + mutant if mutant else ''}, after cut {rnd}: "
                                   + "; ".join(problems[:10]) + (f" (+{len(problems) - 10} more)"
                                                                  if len(problems) > 10 else ""))
                result.checked += 1
                if last:
                    break
                target = rng.randrange(*cut_after)
                if cut_at_hold:
                    while "hold" not in (msg := json.loads(lines.next())):
                        ledger.record(msg["ack"])
                else:
                    for _ in range(target):
                        ledger.record(json.loads(lines.next())["ack"])
                result.cuts.append(disk.cut())        # the writer is still writing
                child.kill()
                child.wait()
                for line in lines.rest():             # acknowledged before the cut, not yet read
                    if "ack" in (msg := json.loads(line)):
                        ledger.record(msg["ack"])
            finally:
                if child.poll() is None:
                    child.kill()
                    child.wait()
    result.acks = ledger.count
    result.ledger = ledger
    return result


def make_keys(directory: Path) -> tuple[Path, Path]:
    """STA01's frame key (101) and channel key (102), Ed25519, and the trust store holding them."""
    from ims_station.auth import export_public, generate_key

    ks, tr = directory / "keystore", directory / "trust"
    for kid in (101, 102):
        generate_key("ed25519", kid, ks, station="STA01", valid_from="2000-01-01T00:00:00Z")
        export_public(ks, kid, tr)
    return ks, tr


def fusermount_available() -> bool:
    return shutil.which("fusermount3") is not None
