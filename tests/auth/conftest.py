"""Fixtures for the auth tests: one key per algorithm, generated once per module (DSA takes ~0.1 s)."""

from __future__ import annotations

import datetime as dt

import pytest

from ims_station.auth import ALGORITHMS, export_public, generate_key

UTC = dt.timezone.utc
VALID_FROM = dt.datetime(2024, 1, 1, tzinfo=UTC)
VALID_UNTIL = dt.datetime(2026, 1, 1, tzinfo=UTC)
INSIDE = dt.datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
KEY_IDS = {alg: i for i, alg in enumerate(ALGORITHMS, start=1)}


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """(keystore dir, trust store dir) with keys 1 dsa-sha1, 2 ed25519, 3 ecdsa-p256 for STA01,
    valid 2024-01-01 .. 2026-01-01."""
    base = tmp_path_factory.mktemp("auth")
    keystore, trust = base / "keys", base / "trust"
    for alg, key_id in KEY_IDS.items():
        generate_key(alg, key_id, keystore, station="STA01", valid_from=VALID_FROM, valid_until=VALID_UNTIL)
        export_public(keystore, key_id, trust)
    return keystore, trust
