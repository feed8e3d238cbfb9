"""Signing and verification policy: each algorithm signs and verifies; every reason to refuse a
signature (tampering, wrong station, outside validity, unknown key, wrong size) is refused."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from hypothesis import given, settings
from hypothesis import strategies as st

from ims_station.auth import ALGORITHMS, SIGNATURE_SIZE, AuthError, Keystore, TrustStore, UnknownKeyError

from .conftest import INSIDE, KEY_IDS, VALID_FROM, VALID_UNTIL

DATA = b"\x00\x00\x00\x05 a CD-1.1 frame header and payload" * 20


@pytest.fixture(scope="module")
def keystore(stores):
    return Keystore.load(stores[0])


@pytest.fixture(scope="module")
def trust(stores):
    return TrustStore.load(stores[1])


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_sign_and_verify(algorithm, keystore, trust):
    signer = keystore.signer(KEY_IDS[algorithm])
    assert signer.algorithm == algorithm
    assert signer.signature_size == SIGNATURE_SIZE[algorithm]
    for _ in range(5):  # DSA/ECDSA are randomised: r, s vary in size; raw width must not
        signature = signer.sign(DATA)
        assert len(signature) == SIGNATURE_SIZE[algorithm]
        result = trust.verify("STA01", signer.key_id, DATA, signature, at=INSIDE)
        assert result.ok and result.reason == "" and result.algorithm == algorithm
        assert result.key_id == signer.key_id


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_flipped_bit_fails(algorithm, keystore, trust):
    key_id = KEY_IDS[algorithm]
    signature = keystore.signer(key_id).sign(DATA)
    for pos in (0, len(DATA) // 2, len(DATA) - 1):
        tampered = bytearray(DATA)
        tampered[pos] ^= 0x04
        result = trust.verify("STA01", key_id, bytes(tampered), signature, at=INSIDE)
        assert not result.ok
        assert result.reason == f"signature does not verify with key {key_id} ({algorithm})"
    for pos in (0, len(signature) - 1):
        bad = bytearray(signature)
        bad[pos] ^= 0x80
        assert not trust.verify("STA01", key_id, DATA, bytes(bad), at=INSIDE).ok


def test_wrong_station_fails(keystore, trust):
    signature = keystore.signer(2).sign(DATA)
    result = trust.verify("STA02", 2, DATA, signature, at=INSIDE)
    assert not result.ok
    assert result.reason == "key 2 is not trusted for station 'STA02' (only for STA01)"


@pytest.mark.parametrize("when, ok", [
    (VALID_FROM - dt.timedelta(seconds=1), False),
    (VALID_FROM, True),
    (VALID_UNTIL - dt.timedelta(milliseconds=1), True),
    (VALID_UNTIL, False),                      # valid_until is exclusive
    (dt.datetime(2030, 1, 1), False),
    (dt.datetime(2025, 1, 1), True),           # naive = UTC, as CD-1.1 nominal times
])
def test_validity_period(when, ok, keystore, trust):
    signature = keystore.signer(3).sign(DATA)
    result = trust.verify("STA01", 3, DATA, signature, at=when)
    assert result.ok is ok
    if not ok:
        assert "outside key 3's validity period 2024-01-01T00:00:00Z .. 2026-01-01T00:00:00Z" in result.reason


def test_default_time_comes_from_the_injected_clock(stores, keystore):
    now = [dt.datetime(2023, 1, 1, tzinfo=dt.timezone.utc)]
    trust = TrustStore.load(stores[1], clock=lambda: now[0])
    signature = keystore.signer(2).sign(DATA)
    assert not trust.verify("STA01", 2, DATA, signature).ok
    now[0] = INSIDE
    assert trust.verify("STA01", 2, DATA, signature).ok


def test_unknown_key_id_fails(keystore, trust):
    signature = keystore.signer(2).sign(DATA)
    result = trust.verify("STA01", 99, DATA, signature, at=INSIDE)
    assert not result.ok and result.algorithm is None
    assert result.reason.startswith("unknown key id 99")
    assert trust.verify("STA01", 0, DATA, signature, at=INSIDE).reason == "not signed (key id 0)"


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_wrong_signature_size_fails(algorithm, keystore, trust):
    key_id = KEY_IDS[algorithm]
    signature = keystore.signer(key_id).sign(DATA)
    size = SIGNATURE_SIZE[algorithm]
    for bad in (signature[:-1], signature + b"\0", b"", signature * 2):
        result = trust.verify("STA01", key_id, DATA, bad, at=INSIDE)
        assert not result.ok
        assert result.reason == f"signature is {len(bad)} bytes, {algorithm} signatures are {size}"


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(ALGORITHMS), st.binary(max_size=70), st.binary(max_size=100))
def test_verify_never_raises(stores, algorithm, signature, data):
    trust = TrustStore.load(stores[1])
    key_id = KEY_IDS[algorithm]
    sig = (signature * 70)[:SIGNATURE_SIZE[algorithm]] if signature and len(signature) % 2 else signature
    result = trust.verify("STA01", key_id, data, sig, at=INSIDE)
    assert result.ok is False and result.reason


def test_raw_signatures_are_r_s_big_endian(keystore, trust):
    """Interoperability: raw r||s converts to the DER that OpenSSL verifies, and signatures made
    directly with cryptography (DER) verify once converted to raw."""
    for algorithm, hash_alg in (("dsa-sha1", hashes.SHA1()), ("ecdsa-p256", ec.ECDSA(hashes.SHA256()))):
        key_id = KEY_IDS[algorithm]
        half = SIGNATURE_SIZE[algorithm] // 2
        public_key = trust.key(key_id).public_key
        raw = keystore.signer(key_id).sign(DATA)
        der = encode_dss_signature(int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big"))
        public_key.verify(der, DATA, hash_alg)  # raises if not
        r, s = decode_dss_signature(keystore.signer(key_id)._key.sign(DATA, hash_alg))
        assert trust.verify("STA01", key_id, DATA, r.to_bytes(half, "big") + s.to_bytes(half, "big"),
                            at=INSIDE).ok


def test_dsa_key_has_160_bit_q(keystore):
    key = keystore.signer(1)._key
    assert key.key_size == 1024
    assert key.parameters().parameter_numbers().q.bit_length() == 160


def test_unknown_signer_is_a_key_error(keystore):
    with pytest.raises(UnknownKeyError) as info:
        keystore.signer(42)
    assert isinstance(info.value, AuthError) and isinstance(info.value, KeyError)
    assert "key id 42 is not in keystore" in str(info.value)
    assert "has: 1, 2, 3" in str(info.value).replace("[", "").replace("]", "")


def test_signer_repr_does_not_leak_the_key(keystore):
    text = repr(keystore.signer(2))
    assert "PRIVATE" not in text and "ed25519" in text
