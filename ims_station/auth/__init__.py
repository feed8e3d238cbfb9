"""Keys and signatures: the keystore (our private keys), the trust store (others' public keys) and the
signature algorithms of CD-1.1 frame and subframe authentication.

Owns: which algorithms exist and their raw signature sizes, the on-disk layout of keystore and trust
store (documented in ``docs/keys.md``), signing, and the verification policy (key known, trusted for
the station, valid at the frame's time, right signature size, signature verifies).  It does not own
*which bytes* are signed: that is the CD-1.1 codec (``ims_station.cd11.frames``, spec cd11.md §2.3,
§4.2).

Modules:

* ``algorithms`` -- raw sign/verify per algorithm on top of the ``cryptography`` library (OpenSSL);
* ``keys``       -- :class:`Keystore`, :class:`Signer`, :class:`TrustStore`, :class:`Verification`,
  :func:`generate_key`, :func:`export_public`;
* ``cli``        -- ``ims-station keys generate|export``.

This module stays cheap to import (the CLI imports it): the classes above are loaded from ``keys``
on first use, and ``cryptography`` only then.
"""

from __future__ import annotations

from typing import Any

from ims_station.errors import ImsStationError

#: CD-1.1 algorithm names.  ``dsa-sha1`` is the IMS's historical DSS (FIPS 186, 1024-bit p, 160-bit q,
#: SHA-1); the other two are modern choices for links where both ends are ours.
ALGORITHMS = ("dsa-sha1", "ed25519", "ecdsa-p256")

#: Raw signature sizes in bytes: DSA and ECDSA as ``r || s`` (fixed width, big-endian), no DER.
SIGNATURE_SIZE = {"dsa-sha1": 40, "ed25519": 64, "ecdsa-p256": 64}

#: Short names accepted on the command line.
ALIASES = {"dsa": "dsa-sha1", "ecdsa": "ecdsa-p256", "p256": "ecdsa-p256"}


class AuthError(ImsStationError):
    """Keys or signatures cannot be used as asked: a key id that is not in the keystore, a key file
    of the wrong algorithm, a key id that already exists when generating."""


class UnknownKeyError(AuthError, KeyError):
    """No key with this id (in the keystore, or the trust store for export)."""

    def __str__(self) -> str:  # KeyError would print the repr of its argument
        return str(self.args[0]) if self.args else ""


def canonical_algorithm(name: str) -> str:
    """The canonical algorithm name for *name* (an alias such as ``dsa`` allowed)."""
    name = ALIASES.get(name, name)
    if name not in ALGORITHMS:
        raise AuthError(f"unknown signature algorithm {name!r} (known: {', '.join(ALGORITHMS)})")
    return name


_LAZY = {"Signer", "Keystore", "Verification", "TrustStore", "TrustedKey", "KeyCoverage", "ReloadingTrustStore", "generate_key", "export_public"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from ims_station.auth import keys

        return getattr(keys, name)
    raise AttributeError(f"module 'ims_station.auth' has no attribute {name!r}")


__all__ = ["ALGORITHMS", "SIGNATURE_SIZE", "ALIASES", "AuthError", "UnknownKeyError",
           "canonical_algorithm", *sorted(_LAZY)]
