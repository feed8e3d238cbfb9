"""The signature algorithms, as raw fixed-size signatures, on the ``cryptography`` library (OpenSSL).

Owns the mapping from an algorithm name to key type, hash and wire encoding:

* ``dsa-sha1``   -- DSA with SHA-1, 160-bit q (1024-bit p), signature ``r || s`` as 2 x 20 bytes
  big-endian (what IMS stations send; spec cd11.md §7).  Kept for interoperability only.
* ``ed25519``    -- Ed25519 (RFC 8032), its native 64-byte signature.
* ``ecdsa-p256`` -- ECDSA on P-256 with SHA-256, ``r || s`` as 2 x 32 bytes big-endian.

``cryptography`` produces and takes DSA/ECDSA signatures as DER; the conversion to and from raw
``r || s`` uses ``cryptography.hazmat.primitives.asymmetric.utils``.  No key storage here (``keys``).
"""

from __future__ import annotations

from typing import Union

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from ims_station.auth import SIGNATURE_SIZE, AuthError

PrivateKey = Union[dsa.DSAPrivateKey, ed25519.Ed25519PrivateKey, ec.EllipticCurvePrivateKey]
PublicKey = Union[dsa.DSAPublicKey, ed25519.Ed25519PublicKey, ec.EllipticCurvePublicKey]

DSA_KEY_BITS = 1024   # the only FIPS 186-2 size with a 160-bit q, i.e. 20-byte r and s
DSA_Q_BITS = 160


def generate_private_key(algorithm: str) -> PrivateKey:
    if algorithm == "dsa-sha1":
        return dsa.generate_private_key(key_size=DSA_KEY_BITS)
    if algorithm == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if algorithm == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    raise AuthError(f"unknown signature algorithm {algorithm!r}")


def key_problem(key: PrivateKey | PublicKey, algorithm: str) -> str:
    """Why *key* cannot be used for *algorithm*, or "" if it can."""
    if algorithm == "dsa-sha1":
        if not isinstance(key, (dsa.DSAPrivateKey, dsa.DSAPublicKey)):
            return f"{_kind(key)} key, expected DSA"
        q = key.parameters().parameter_numbers().q
        if q.bit_length() != DSA_Q_BITS:
            return f"DSA q has {q.bit_length()} bits; dsa-sha1 needs a 160-bit q (1024-bit key)"
        return ""
    if algorithm == "ed25519":
        return "" if isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey)) else \
            f"{_kind(key)} key, expected Ed25519"
    if algorithm == "ecdsa-p256":
        if not isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
            return f"{_kind(key)} key, expected ECDSA P-256"
        return "" if isinstance(key.curve, ec.SECP256R1) else f"curve {key.curve.name}, expected P-256"
    return f"unknown signature algorithm {algorithm!r}"


def _kind(key: object) -> str:
    name = type(key).__name__
    for prefix in ("DSA", "Ed25519", "Ed448", "EllipticCurve", "RSA", "X25519", "X448", "DH"):
        if name.startswith(prefix):
            return {"EllipticCurve": "EC"}.get(prefix, prefix)
    return name


def sign(key: PrivateKey, algorithm: str, data: bytes) -> bytes:
    """Raw signature of *data*, exactly ``SIGNATURE_SIZE[algorithm]`` bytes."""
    if algorithm == "ed25519":
        return key.sign(data)
    half = SIGNATURE_SIZE[algorithm] // 2
    if algorithm == "dsa-sha1":
        der = key.sign(data, hashes.SHA1())
    else:
        der = key.sign(data, ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    return r.to_bytes(half, "big") + s.to_bytes(half, "big")


def verify(key: PublicKey, algorithm: str, data: bytes, signature: bytes) -> bool:
    """True if *signature* (raw, already checked to be ``SIGNATURE_SIZE[algorithm]`` bytes) is
    valid for *data*.  Never raises for any signature bytes."""
    try:
        if algorithm == "ed25519":
            key.verify(signature, data)
            return True
        half = SIGNATURE_SIZE[algorithm] // 2
        r = int.from_bytes(signature[:half], "big")
        s = int.from_bytes(signature[half:], "big")
        if r == 0 or s == 0:
            return False
        der = encode_dss_signature(r, s)
        if algorithm == "dsa-sha1":
            key.verify(der, data, hashes.SHA1())
        else:
            key.verify(der, data, ec.ECDSA(hashes.SHA256()))
        return True
    except (InvalidSignature, ValueError):
        return False


def private_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def public_pem(key: PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def public_der(key: PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_private_pem(data: bytes) -> PrivateKey:
    """Parse a PEM private key; raises ValueError with the reason."""
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError as err:  # encrypted key without password
        raise ValueError("encrypted private keys are not supported (store it unencrypted, mode 0600)") from err
    except Exception as err:  # cryptography raises ValueError / UnsupportedAlgorithm
        raise ValueError(f"not a PEM private key: {err}") from err
    return key


def load_public_pem(data: bytes) -> PublicKey:
    """Parse a PEM public key (SubjectPublicKeyInfo); raises ValueError with the reason."""
    if b"PRIVATE KEY" in data:
        raise ValueError("this is a private key; a trust store holds public keys only")
    try:
        return serialization.load_pem_public_key(data)
    except Exception as err:
        raise ValueError(f"not a PEM public key: {err}") from err
