"""Relay throughput: frames verified per second per core, beside the signature-verification floor.

The frame is the issue's case: a 10-s data frame of 30 channels x 40 sps (CA-compressed, each
subframe signed with the channel key, the frame signed with the station key: 31 signatures).
Per algorithm (ed25519, ecdsa-p256, dsa-sha1), measured in the same run:

* **verify** -- ``relay.verify.Verifier.check``: parse, CRC-64, 31 signatures through the trust store,
  subframe time windows, CA decode of every channel (the stateless part of the relay);
* **verify + archive** -- ``RelayCore.process`` in batches of 64: the above plus the sequence/time
  check, dedupe against the SQLite index, appending to the day file with ``fsync``, the index and
  state commits (``synchronous=FULL``), i.e. everything but MQTT;
* **floor** -- the bare ``cryptography`` (OpenSSL) verification of the same 31 signatures over the
  same bytes, no ims-station code involved: the rate no verifier of these frames can beat on one
  core.  The ratio says how close the relay gets to it.

Figures are per core (the harness pins the process to one CPU).
"""

from __future__ import annotations

import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from bench.bench_cd11 import seismic_like
from bench.harness import Result, best_rate

GROUP = "relay"
ALGORITHMS = ("ed25519", "ecdsa-p256", "dsa-sha1")
EPOCH_2000 = datetime(2000, 1, 1, tzinfo=timezone.utc)
CHANNELS = [f"{b}{c}" for b in ("BH", "HH", "SH", "EH", "LH", "MH", "UH", "VH", "BD", "HD") for c in "ZNE"]


def _setup(algorithm: str, nframes: int, tmp: Path):
    from ims_station import cd11
    from ims_station.auth import Keystore, TrustStore, export_public, generate_key

    for kid in (1, 2):
        generate_key(algorithm, kid, tmp / "ks", station="STA01", valid_from="2000-01-01T00:00:00Z")
        export_public(tmp / "ks", kid, tmp / "trust")
    ks, trust = Keystore.load(tmp / "ks"), TrustStore.load(tmp / "trust")
    fsig, csig = ks.signer(1), ks.signer(2)
    base = 8640 * 8700
    frames = []
    for i in range(nframes):
        t = EPOCH_2000 + timedelta(seconds=10 * (base + i))
        chans = [cd11.ChannelInput("STA01", ch, "00", seismic_like(400, seed=i * 64 + k), 40.0, t, None, csig)
                 for k, ch in enumerate(CHANNELS)]
        frames.append(cd11.build_data_frame("STA01", base + i, t, chans, fsig))
    return trust, frames


def _bare_ops(algorithm: str):
    """sign(data) -> DER/native signature and verify(sig, data) with ``cryptography`` alone.  The
    public key is loaded from PEM, as any verifier holds it: a public key object obtained with
    ``private_key.public_key()`` verifies Ed25519 about 2x slower here (cryptography 48 / OpenSSL 3),
    which would flatter the relay."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519

    if algorithm == "dsa-sha1":
        key, args = dsa.generate_private_key(1024), (hashes.SHA1(),)
    elif algorithm == "ecdsa-p256":
        key, args = ec.generate_private_key(ec.SECP256R1()), (ec.ECDSA(hashes.SHA256()),)
    else:
        key, args = ed25519.Ed25519PrivateKey.generate(), ()
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    pub = serialization.load_pem_public_key(pem)
    return (lambda d: key.sign(d, *args)), (lambda s, d: pub.verify(s, d, *args))


def _floor(algorithm: str, frames: list[bytes], min_time: float) -> float:
    """Frames/s of bare cryptography verifying the same 31 signatures over the same bytes."""
    from ims_station import cd11

    sign, verify = _bare_ops(algorithm)
    work = []
    for raw in frames[:8]:
        f, _ = cd11.parse_frame(raw)
        ranges = [raw[:f.header.trailer_offset]]
        for sf in f.subframes:
            start, auth_offset = sf.span
            ranges.append(raw[start + 8:start + auth_offset])
        work.append([(sign(d), d) for d in ranges])

    def run() -> None:
        for sigs in work:
            for s, d in sigs:
                verify(s, d)

    return best_rate(run, len(work), min_time=min_time)


def _archive_rate(trust, frames: list[bytes], tmp: Path, rounds: int) -> float:
    from ims_station.relay.archive import FileArchive
    from ims_station.relay.core import Incoming, RelayCore
    from ims_station.relay.state import SqliteStateStore

    best = 0.0
    for r in range(rounds):
        d = tmp / f"round{r}"
        # The frames are of 2023 (fixed, for comparable figures): no lower time-plausibility bound.
        core = RelayCore(trust, SqliteStateStore(d / "state.sqlite"), FileArchive(d / "archive"), max_past_s=None)
        items = [Incoming("ims/STA01/cd11", raw) for raw in frames]
        t0 = time.perf_counter()
        for i in range(0, len(items), 64):
            outs = core.process(items[i:i + 64])
            assert all(o.result == "archived" for o in outs), {o.result for o in outs}
        dt = time.perf_counter() - t0
        core.close()
        best = max(best, len(items) / dt)
    return best


def run(quick: bool) -> list[Result]:
    from ims_station.relay.verify import Verifier

    nframes = 32 if quick else 256
    min_time = 0.1 if quick else 0.5
    out = []
    for alg in ALGORITHMS:
        with tempfile.TemporaryDirectory(prefix="bench-relay-") as tmpdir:
            tmp = Path(tmpdir)
            trust, frames = _setup(alg, nframes, tmp)
            size = sum(map(len, frames)) / len(frames)
            v = Verifier(trust)
            assert all(type(v.check("STA01", f)).__name__ == "Verified" for f in frames[:4])
            sample = frames[:16]

            def verify_all() -> None:
                for f in sample:
                    v.check("STA01", f)

            floor = _floor(alg, frames, min_time)
            rate = best_rate(verify_all, len(sample), min_time=min_time)
            note = f"30 ch x 40 sps x 10 s, CA, 31 signatures, {size / 1024:.1f} KiB/frame"
            out.append(Result(GROUP, f"relay verify, {alg}", rate, "frames/s",
                              "bare cryptography verify of the same 31 signatures", floor, "", note))
            arate = _archive_rate(trust, frames, tmp, 1 if quick else 3)
            out.append(Result(GROUP, f"relay verify + archive (fsync), {alg}", arate, "frames/s",
                              "bare cryptography verify of the same 31 signatures", floor, "",
                              f"batches of 64; dedupe index, day file append + fsync, state commit; {nframes} frames"))
    return out
