"""Frame and subframe signatures with every algorithm: valid ones verify, one flipped bit anywhere
in a signed range fails, keys not trusted for the station fail; the ``cd11 verify`` CLI reports
each failure on its own line and exits non-zero."""

from __future__ import annotations

import datetime as dt
import random

import numpy as np
import pytest

from ims_station import cd11
from ims_station.auth import ALGORITHMS, Keystore, TrustStore, export_public, generate_key
from ims_station.cd11 import ca
from ims_station.cd11.crc64 import crc64
from ims_station.cli import main

UTC = dt.timezone.utc
NOMINAL = "2025152 06:00:00.000"          # inside the keys' validity
FRAME_KEY = {alg: 10 + i for i, alg in enumerate(ALGORITHMS)}
CHANNEL_KEY = {alg: 100 + i for i, alg in enumerate(ALGORITHMS)}
UNTRUSTED_KEY = 999                        # in the keystore, never exported


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    base = tmp_path_factory.mktemp("cd11keys")
    keys, trust = base / "keys", base / "trust"
    start, end = dt.datetime(2024, 1, 1, tzinfo=UTC), dt.datetime(2027, 1, 1, tzinfo=UTC)
    for alg in ALGORITHMS:
        for key_id in (FRAME_KEY[alg], CHANNEL_KEY[alg]):
            generate_key(alg, key_id, keys, station="STA01", valid_from=start, valid_until=end)
            export_public(keys, key_id, trust)
    generate_key("ed25519", UNTRUSTED_KEY, keys, station="STA01", valid_from=start)
    return Keystore.load(keys), TrustStore.load(trust), trust


def signed_frame(keystore, alg: str, *, creator: str = "STA01", nch: int = 3) -> bytes:
    rng = np.random.default_rng(1)
    chans = [cd11.ChannelInput("STA01", f"BH{c}", "00",
                               np.cumsum(rng.integers(-300, 300, 40 if i else 30)).astype(np.int32),
                               4.0, NOMINAL, cd11.ChannelStatus(gps_receiver_unlocked=bool(i)),
                               keystore.signer(CHANNEL_KEY[alg]))
             for i, c in zip(range(nch), "ZNE")]
    return cd11.build_data_frame(creator, 5, NOMINAL, chans, keystore.signer(FRAME_KEY[alg]))


def recrc(buf: bytearray) -> bytes:
    buf[-8:] = crc64(bytes(buf[:-8])).to_bytes(8, "big")
    return bytes(buf)


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_signed_frames_and_subframes_verify(stores, alg):
    keystore, trust, _ = stores
    frame, _ = cd11.parse_frame(signed_frame(keystore, alg))
    assert frame.subframes[0].description.transformation == 0        # 30 samples: s4
    assert frame.subframes[1].description.transformation == 1        # 40 samples: CA before signature
    res = cd11.verify_frame(frame, trust)
    assert res.crc_ok and res.ok() and res.failures() == []
    assert (res.frame.ok, res.frame.key_id, res.frame.algorithm) == (True, FRAME_KEY[alg], alg)
    assert len(res.subframes) == 3
    for sf in res.subframes:
        assert (sf.ok, sf.result.key_id, sf.result.algorithm) == (True, CHANNEL_KEY[alg], alg)
    assert len(frame.auth_value) == len(frame.subframes[0].auth_value) == {"dsa-sha1": 40}.get(alg, 64)


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_one_flipped_bit_anywhere_in_a_signed_range_fails(stores, alg):
    keystore, trust, _ = stores
    wire = signed_frame(keystore, alg, nch=2)
    frame, _ = cd11.parse_frame(wire)
    toff = frame.header.trailer_offset
    ranges = [(sf.span[0] + 8, sf.span[0] + sf.span[1]) for sf in frame.subframes]
    rng = random.Random(alg)
    checked_sub = 0
    for pos in range(toff):                         # every byte of header + payload, a random bit
        bad = bytearray(wire)
        bad[pos] ^= 1 << rng.randrange(8)
        try:
            damaged, _ = cd11.parse_frame(recrc(bad))
        except cd11.Cd11Error:
            continue                                # rejected by the parser: also a failure
        res = cd11.verify_frame(damaged, trust)
        # (Flips in the creator or the nominal time fail as "not trusted for station" or "outside
        # the validity period" before the signature is checked; any failure counts.)
        assert not res.frame.ok, pos
        for i, (a, b) in enumerate(ranges):
            if a <= pos < b:
                assert not res.subframes[i].ok, (pos, i)
                checked_sub += 1
    assert checked_sub > 100
    # Flipped bits in the signatures themselves.
    for sig_at in (toff + 8, ranges[1][1] + 8):
        bad = bytearray(wire)
        bad[sig_at + 5] ^= 0x40
        res = cd11.verify_frame(cd11.parse_frame(recrc(bad))[0], trust)
        assert not res.ok()


def test_key_not_trusted_for_the_station_fails(stores):
    keystore, trust, _ = stores
    frame, _ = cd11.parse_frame(signed_frame(keystore, "ed25519", creator="STA02"))
    res = cd11.verify_frame(frame, trust)
    assert not res.frame.ok and "not trusted for station 'STA02'" in res.frame.reason
    assert all(not sf.ok for sf in res.subframes)
    # A key the trust store does not hold at all.
    frame = cd11.Alert(creator="STA01", message="bye")
    res = cd11.verify_frame(cd11.parse_frame(frame.to_bytes(keystore.signer(UNTRUSTED_KEY)))[0], trust)
    assert not res.frame.ok and "unknown key id 999" in res.frame.reason
    # Outside the validity period (the frame's own time is used).
    old = signed_frame(keystore, "ed25519").replace(NOMINAL.encode(), b"2023152 06:00:00.000")
    frame, _ = cd11.parse_frame(recrc(bytearray(old)))
    res = cd11.verify_frame(frame, trust)
    assert "validity period" in res.frame.reason


def test_control_frames_are_signed_over_header_and_payload(stores):
    keystore, trust, _ = stores
    signer = keystore.signer(FRAME_KEY["ecdsa-p256"])
    for frame in (cd11.Acknack(creator="STA01", frame_set="STA01:0", lowest=1, highest=4, gaps=[(2, 3)]),
                  cd11.ConnectionRequest(creator="STA01", station="STA01", ip="10.0.0.1", port=8000),
                  cd11.CommandResponse(creator="STA01", station="STA01", time=NOMINAL, command="x",
                                       response="ok")):
        wire = frame.to_bytes(signer)
        parsed, _ = cd11.parse_frame(wire)
        assert cd11.verify_frame(parsed, trust).ok()
        assert signer.key_id == parsed.auth_key_id
        assert parsed.to_bytes() == wire              # signature carried through


def test_transformation_2_is_verified_over_the_uncompressed_samples(stores):
    # Our reading of "CA applied after signature" (spec §4.3, uncertain): signed with the s4 data,
    # sent with the CA stream in its place.
    keystore, trust, _ = stores
    x = np.cumsum(np.arange(-20, 20)).astype(np.int32)
    sf = cd11.ChannelSubframe(
        description=cd11.ChannelDescription(transformation=2, site="STA01", channel="BHZ", location="00"),
        time=NOMINAL, time_length_ms=10_000, nsamples=40, data=cd11.data.encode_samples(x, "s4"))
    sf.sign(keystore.signer(CHANNEL_KEY["ed25519"]))
    sf.data = ca.encode(x)
    frame = cd11.DataFrame(creator="STA01", nominal_time=NOMINAL,
                           channel_ids=[cd11.ChannelId("STA01", "BHZ", "00")], subframes=[sf])
    res = cd11.verify_frame(frame, trust)
    assert res.subframes[0].ok, res.failures()
    sf.auth_value = bytes(64)
    res = cd11.verify_frame(frame, trust)
    assert not res.subframes[0].ok and "transformation 2" in res.subframes[0].result.reason


# --- the CLI ------------------------------------------------------------------------------------
def test_cli_verify_ok(stores, tmp_path, capsys):
    keystore, _, trust_dir = stores
    files = []
    for alg in ALGORITHMS:
        p = tmp_path / f"{alg}.cd11"
        p.write_bytes(signed_frame(keystore, alg) + signed_frame(keystore, alg))
        files.append(str(p))
    assert main(["cd11", "verify", *files, "--trust", str(trust_dir)]) == 0
    out = capsys.readouterr().out
    assert "6 frames in 3 files: all CRCs and signatures OK" in out


def test_cli_verify_reports_each_failure(stores, tmp_path, capsys, cd11_samples):
    keystore, _, trust_dir = stores
    good = signed_frame(keystore, "ed25519")
    frame, _ = cd11.parse_frame(good)
    bad_sub = bytearray(good)
    bad_sub[frame.subframes[1].span[0] + 40] ^= 1            # inside subframe 1's signed range
    bad_crc = bytearray(good)
    bad_crc[-1] ^= 1
    p = tmp_path / "mixed.cd11"
    p.write_bytes(good + recrc(bad_sub) + bytes(bad_crc) + cd11.Alert(creator="STA01").to_bytes())
    real = str(cd11_samples / "real_LBTB_seq9720700.cd11")
    assert main(["cd11", "verify", str(p), real, "--trust", str(trust_dir)]) == 1
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("FAIL")]
    at2 = len(good)
    at3 = 2 * len(good)
    assert any(f"seq 5 at byte {at2}: subframe 1 (STA01/BHN/00) (key {CHANNEL_KEY['ed25519']}): "
               "signature does not verify" in ln for ln in lines), lines
    assert any(f"at byte {at2}: frame signature" in ln and "does not verify" in ln for ln in lines)
    assert any(f"at byte {at3}: CRC-64 mismatch" in ln for ln in lines)
    assert any("alert frame STA01 seq 0" in ln and "not signed" in ln for ln in lines)
    # The real frame: its DSA keys are not public, so every signature is "unknown key id".
    assert any("real_LBTB" in ln and "frame signature (key 1): unknown key id 1" in ln for ln in lines)
    assert sum("real_LBTB" in ln and "subframe" in ln for ln in lines) == 4
    assert not any("at byte 0:" in ln and str(p) in ln for ln in lines)   # the good frame passes


def test_cli_verify_allow_unsigned_and_parse_errors(stores, tmp_path, capsys):
    _, _, trust_dir = stores
    p = tmp_path / "unsigned.cd11"
    p.write_bytes(cd11.Alert(creator="STA01", message="bye").to_bytes())
    assert main(["cd11", "verify", str(p), "--trust", str(trust_dir), "--allow-unsigned"]) == 0
    assert main(["cd11", "verify", str(p), "--trust", str(trust_dir)]) == 1
    p.write_bytes(p.read_bytes()[:50])
    capsys.readouterr()
    assert main(["cd11", "verify", str(p), "--trust", str(trust_dir), "--allow-unsigned"]) == 1
    out = capsys.readouterr().out
    assert "alert frame: trailer.auth_size at byte 50: buffer ends" in out
