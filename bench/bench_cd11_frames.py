"""CD-1.1 frames: build+sign and parse+verify of a 10-s data frame, per signature algorithm.

The frame: 30 channels x 40 sps x 10 s (400 seismic-like samples each, CA-compressed), every
subframe signed with a channel key and the frame signed with a frame key -- 31 signatures.  Each
figure (frames/s) stands beside its floor measured in the same run: the bare ``cryptography``
(OpenSSL) time of the same number of signatures (verifications) over byte strings of the same sizes
(``bench.bench_cd11.signing_floor``), i.e. what a frame would cost if building/parsing were free.
Goal (issue 3): build+sign within 2x of the signing floor (ratio >= 0.5).  The unsigned build and
parse figures are shown too, to say what bounds the signed ones.
"""

from __future__ import annotations

import datetime as dt
import tempfile

from bench.bench_cd11 import seismic_like, signing_floor
from bench.harness import Result, best_rate

GROUP = "cd11"
NCHANNELS, RATE, SECONDS = 30, 40, 10
NOMINAL = "2025152 06:00:00.000"


def _keys(tmp: str):
    from ims_station.auth import ALGORITHMS, Keystore, TrustStore, export_public, generate_key

    start = dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc)
    for i, alg in enumerate(ALGORITHMS):
        for key_id in (10 + i, 100 + i):
            generate_key(alg, key_id, f"{tmp}/keys", station="BENCH", valid_from=start)
            export_public(f"{tmp}/keys", key_id, f"{tmp}/trust")
    return Keystore.load(f"{tmp}/keys"), TrustStore.load(f"{tmp}/trust")


def _channels(signer=None):
    from ims_station import cd11

    return [cd11.ChannelInput("BENCH", f"C{i:02d}", "00", seismic_like(RATE * SECONDS, seed=i), RATE,
                              NOMINAL, cd11.ChannelStatus(), signer)
            for i in range(NCHANNELS)]


def run(quick: bool) -> list[Result]:
    from ims_station import cd11
    from ims_station.auth import ALGORITHMS

    min_time = 0.1 if quick else 0.5
    out: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp:
        keystore, trust = _keys(tmp)

        unsigned = _channels()
        wire0 = cd11.build_data_frame("BENCH", 1, NOMINAL, unsigned)
        rate_build = best_rate(lambda: cd11.build_data_frame("BENCH", 1, NOMINAL, unsigned), 1,
                               min_time=min_time)
        rate_parse = best_rate(lambda: cd11.parse_frame(wire0), 1, min_time=min_time)
        frame0, _ = cd11.parse_frame(wire0)
        rate_decode = best_rate(lambda: [sf.samples() for sf in frame0.subframes], 1, min_time=min_time)
        note = f"{NCHANNELS} ch x {RATE} sps x {SECONDS} s, CA, {len(wire0)} bytes"
        out += [
            Result(GROUP, "data frame build, unsigned", rate_build, "frames/s", note=note),
            Result(GROUP, "data frame parse + CRC, unsigned", rate_parse, "frames/s", note=note),
            Result(GROUP, "data frame samples decode (30 ch)", rate_decode, "frames/s", note=note),
        ]

        for i, alg in enumerate(ALGORITHMS):
            if quick and alg != "ed25519":
                continue
            frame_signer, channel_signer = keystore.signer(10 + i), keystore.signer(100 + i)
            chans = _channels(channel_signer)
            wire = cd11.build_data_frame("BENCH", 1, NOMINAL, chans, frame_signer)
            frame, _ = cd11.parse_frame(wire)
            res = cd11.verify_frame(frame, trust)
            assert res.ok() and res.frame.algorithm == alg, res.failures()
            sub_bytes = len(frame.subframes[0].signed_bytes())
            body_bytes = frame.header.trailer_offset
            fs = signing_floor(alg, sub_bytes, min_time=min_time)
            ff = signing_floor(alg, body_bytes, min_time=min_time)
            floor_sign = 1 / (NCHANNELS / fs["sign_per_s"] + 1 / ff["sign_per_s"])
            floor_verify = 1 / (NCHANNELS / fs["verify_per_s"] + 1 / ff["verify_per_s"])

            def build():
                cd11.build_data_frame("BENCH", 1, NOMINAL, chans, frame_signer)

            def parse_verify():
                f, _ = cd11.parse_frame(wire)
                cd11.verify_frame(f, trust)

            ref = f"bare cryptography: {NCHANNELS + 1} {alg} signatures over the same sizes"
            out.append(Result(GROUP, f"data frame build+sign ({alg})", best_rate(build, 1, min_time=min_time),
                              "frames/s", reference=ref, reference_value=floor_sign,
                              goal="within 2x of the signing floor (ratio >= 0.5)",
                              note=f"{len(wire)} bytes, {NCHANNELS + 1} signatures"))
            out.append(Result(GROUP, f"data frame parse+verify ({alg})",
                              best_rate(parse_verify, 1, min_time=min_time), "frames/s",
                              reference=ref.replace("signatures", "verifications"),
                              reference_value=floor_verify))
    return out
