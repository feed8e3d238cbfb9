"""CD-1.1 codec primitives: Canadian compression, CRC-64, and the signature floor.

Each figure beside a floor measured in the same run:

* CA encode / decode (samples/s) on seismic-like data -- a random walk plus noise, as 10-s x 40 sps
  channels (400 samples, the size of a real subframe) and as one long series -- beside a numpy copy
  of the same int32 samples (the memory floor) and beside the pure Python reference (the fallback
  used where the C extension could not be built);
* CRC-64 (bytes/s) on a 2224-byte frame (the size of the real LBTB frame) and on 1 MB, beside
  ``zlib.crc32`` of the same bytes;
* sign and verify of one ~2 KB frame per algorithm through ``ims_station.auth`` beside the bare
  ``cryptography`` (OpenSSL) call: :func:`signing_floor` is that floor, importable by other benchmarks
  (the frame benchmark compares signed-frame building against it).
"""

from __future__ import annotations

import os
import tempfile
import zlib

import numpy as np

from bench.harness import Result, best_rate

GROUP = "cd11"


def seismic_like(n: int, seed: int = 11) -> np.ndarray:
    """A random walk (microseism-like drift) plus white noise, in 24-bit digitizer counts."""
    rng = np.random.default_rng(seed)
    walk = np.cumsum(rng.normal(0.0, 40.0, n))
    noise = rng.normal(0.0, 25.0, n)
    return np.clip(walk + noise, -(1 << 23), (1 << 23) - 1).astype(np.int32)


def _raw_ops(algorithm: str):
    """(private key, sign(data) -> sig, verify(sig, data)) with cryptography directly."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519

    if algorithm == "dsa-sha1":
        key = dsa.generate_private_key(1024)
        pub = key.public_key()
        return key, (lambda d: key.sign(d, hashes.SHA1())), (lambda s, d: pub.verify(s, d, hashes.SHA1()))
    if algorithm == "ed25519":
        key = ed25519.Ed25519PrivateKey.generate()
        pub = key.public_key()
        return key, key.sign, (lambda s, d: pub.verify(s, d))
    if algorithm == "ecdsa-p256":
        key = ec.generate_private_key(ec.SECP256R1())
        pub = key.public_key()
        alg = ec.ECDSA(hashes.SHA256())
        return key, (lambda d: key.sign(d, alg)), (lambda s, d: pub.verify(s, d, alg))
    raise ValueError(f"unknown algorithm {algorithm!r}")


def signing_floor(algorithm: str, nbytes: int = 2224, *, min_time: float = 0.3) -> dict[str, float]:
    """Signatures per second that bare OpenSSL (via ``cryptography``) achieves for *algorithm* on
    *nbytes* of data: ``{"sign_per_s": ..., "verify_per_s": ...}``.  Nothing of ims-station is
    involved, so it is the floor any signed-frame path is compared with."""
    _, sign, verify = _raw_ops(algorithm)
    data = os.urandom(nbytes)
    sig = sign(data)
    return {"sign_per_s": best_rate(lambda: sign(data), 1, min_time=min_time),
            "verify_per_s": best_rate(lambda: verify(sig, data), 1, min_time=min_time)}


def _ca_results(quick: bool) -> list[Result]:
    from ims_station.cd11 import ca

    min_time = 0.1 if quick else 0.5
    out = []
    cases = [("10 s x 40 sps channel", seismic_like(400)),
             ("long series", seismic_like(100_000 if quick else 2_000_000))]
    for label, x in cases:
        n = x.size
        data = ca.encode(x)
        assert (ca.decode(data, n) == x).all()
        copy_rate = best_rate(lambda: x.copy(), n, min_time=min_time)
        note = f"{ca.IMPLEMENTATION} implementation; {len(data) / n:.2f} bytes/sample"
        out.append(Result(GROUP, f"CA encode, {label} ({n} samples)", best_rate(lambda: ca.encode(x), n,
                          min_time=min_time), "samples/s", "numpy copy of the samples", copy_rate,
                          ">= 20e6 samples/s", note))
        out.append(Result(GROUP, f"CA decode, {label} ({n} samples)", best_rate(lambda: ca.decode(data, n), n,
                          min_time=min_time), "samples/s", "numpy copy of the samples", copy_rate,
                          ">= 20e6 samples/s", note))
    # The fallback (no C compiler at install time), on one channel.
    x = cases[0][1]
    data = ca.encode(x)
    xs = x.tolist()
    out.append(Result(GROUP, "CA encode, Python reference (400 samples)",
                      best_rate(lambda: ca.encode_reference(xs), 400, min_time=min_time, repeat=3),
                      "samples/s", note="fallback without the C extension"))
    out.append(Result(GROUP, "CA decode, Python reference (400 samples)",
                      best_rate(lambda: ca.decode_reference(data, 400), 400, min_time=min_time, repeat=3),
                      "samples/s", note="fallback without the C extension"))
    return out


def _crc_results(quick: bool) -> list[Result]:
    from ims_station.cd11 import crc64 as crc_module

    min_time = 0.1 if quick else 0.5
    out = []
    for label, size in (("2224-byte frame", 2224), ("1 MB", 1 << 20)):
        data = os.urandom(size)
        out.append(Result(GROUP, f"CRC-64, {label}", best_rate(lambda: crc_module.crc64(data), size,
                          min_time=min_time), "B/s", "zlib.crc32 of the same bytes",
                          best_rate(lambda: zlib.crc32(data), size, min_time=min_time),
                          ">= 500e6 B/s", f"{crc_module.IMPLEMENTATION} implementation"))
    data = os.urandom(2224)
    out.append(Result(GROUP, "CRC-64, Python reference, 2224-byte frame",
                      best_rate(lambda: crc_module.crc64_reference(data), 2224, min_time=min_time, repeat=3),
                      "B/s", note="fallback without anycrc"))
    return out


def _signature_results(quick: bool) -> list[Result]:
    from ims_station.auth import ALGORITHMS, Keystore, TrustStore, export_public, generate_key

    min_time = 0.1 if quick else 0.5
    out = []
    data = os.urandom(2224)
    with tempfile.TemporaryDirectory() as tmp:
        for key_id, algorithm in enumerate(ALGORITHMS, start=1):
            generate_key(algorithm, key_id, f"{tmp}/keys", station="BENCH", valid_from="2000-01-01T00:00:00Z")
            export_public(f"{tmp}/keys", key_id, f"{tmp}/trust")
        keystore, trust = Keystore.load(f"{tmp}/keys"), TrustStore.load(f"{tmp}/trust")
        for key_id, algorithm in enumerate(ALGORITHMS, start=1):
            floor = signing_floor(algorithm, len(data), min_time=min_time)
            signer = keystore.signer(key_id)
            sig = signer.sign(data)
            out.append(Result(GROUP, f"sign 2224 B, {algorithm}", best_rate(lambda: signer.sign(data), 1,
                              min_time=min_time), "sig/s", "cryptography (OpenSSL) sign",
                              floor["sign_per_s"], note="incl. DER-to-raw r||s for DSA/ECDSA"))
            out.append(Result(GROUP, f"verify 2224 B, {algorithm}",
                              best_rate(lambda: trust.verify("BENCH", key_id, data, sig), 1, min_time=min_time),
                              "sig/s", "cryptography (OpenSSL) verify", floor["verify_per_s"],
                              note="incl. policy checks, raw-to-DER for DSA/ECDSA"))
    return out


def run(quick: bool) -> list[Result]:
    return _ca_results(quick) + _crc_results(quick) + _signature_results(quick)
