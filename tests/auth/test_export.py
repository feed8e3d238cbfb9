""":func:`export_public`: from a keystore directory or a key's ``.pem`` file, the overrides of
stations and validity, the files and modes it writes into the trust store, and its refusals (type,
file and reason)."""

from __future__ import annotations

import os
import shutil

import pytest

from ims_station.auth import AuthError, TrustStore, UnknownKeyError, export_public, generate_key
from ims_station.errors import ConfigError


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    keys = tmp_path_factory.mktemp("export") / "keys"
    generate_key("ed25519", 7, keys, station="STA01", valid_from="2025-01-01T00:00:00Z")
    generate_key("ed25519", 8, keys, station="STA01", valid_from="2025-01-01T00:00:00Z")
    return keys


def test_export_from_the_key_file_into_a_new_nested_trust_store(keys, tmp_path):
    trust = tmp_path / "etc" / "ims" / "trust"
    assert export_public(keys / "7.pem", 7, trust) == trust / "7.pem"
    assert TrustStore.load(trust).key_ids() == [7]
    assert os.stat(trust).st_mode & 0o777 == 0o755
    for name in ("7.pem", "7.toml"):
        assert os.stat(trust / name).st_mode & 0o777 == 0o644
    assert sorted(p.name for p in trust.iterdir()) == ["7.pem", "7.toml"]


def test_a_key_file_holding_another_key_id(keys, tmp_path):
    with pytest.raises(AuthError) as info:
        export_public(keys / "8.pem", 7, tmp_path / "trust")
    assert str(info.value) == f"{keys / '8.pem'} holds key 8, not 7"


def test_unknown_key_and_missing_metadata(keys, tmp_path):
    with pytest.raises(UnknownKeyError) as info:
        export_public(keys, 9, tmp_path / "trust")
    assert str(info.value) == f"key id 9 is not in keystore {keys}"
    copy = tmp_path / "copy"
    shutil.copytree(keys, copy)
    (copy / "7.toml").unlink()
    with pytest.raises(ConfigError) as info:
        export_public(copy, 7, tmp_path / "trust")
    assert not isinstance(info.value, UnknownKeyError)
    assert (info.value.file, info.value.key, info.value.reason) == (str(copy / "7.toml"), "",
                                                                    "metadata file not found")


def test_a_key_without_stations_needs_station(tmp_path):
    generate_key("ed25519", 3, tmp_path / "keys")
    with pytest.raises(AuthError) as info:
        export_public(tmp_path / "keys", 3, tmp_path / "trust")
    assert str(info.value) == "key 3 lists no station; say which station(s) it may sign for (--station CODE)"


def test_validity_overrides(keys, tmp_path):
    trust = tmp_path / "trust"
    export_public(keys, 7, trust, valid_from="2025-03-01T00:00:00Z", valid_until="2025-04-01T00:00:00Z")
    info = TrustStore.load(trust).key(7).info
    assert info.period() == "2025-03-01T00:00:00Z .. 2025-04-01T00:00:00Z"


@pytest.mark.parametrize("name", ["valid_from", "valid_until"])
def test_a_bad_time_names_the_option(keys, tmp_path, name):
    with pytest.raises(AuthError) as info:
        export_public(keys, 7, tmp_path / "trust", **{name: "next tuesday"})
    assert str(info.value) == f"{name}: not an ISO 8601 time: 'next tuesday'"


def test_an_empty_validity_period_is_refused(keys, tmp_path):
    with pytest.raises(AuthError) as info:
        export_public(keys, 7, tmp_path / "trust", valid_until="2025-01-01T00:00:00Z")
    assert str(info.value) == "valid_until 2025-01-01T00:00:00Z is not later than valid_from 2025-01-01T00:00:00Z"
    assert not (tmp_path / "trust").exists()
