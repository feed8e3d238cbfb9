"""Keystore and trust store on disk: permissions, metadata validation (errors name file, key and
reason), key generation and export, rotation, and the ``ims-station keys`` command."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil

import pytest
from cryptography.hazmat.primitives.asymmetric import dsa

from ims_station.auth import AuthError, Keystore, TrustStore, UnknownKeyError, export_public, generate_key
from ims_station.auth import algorithms
from ims_station.cli import main
from ims_station.errors import ConfigError, KeyFileError

from .conftest import INSIDE

UTC = dt.timezone.utc


@pytest.fixture
def copy(stores, tmp_path):
    """A private, writable copy of the module's stores."""
    keys, trust = tmp_path / "keys", tmp_path / "trust"
    shutil.copytree(stores[0], keys)
    shutil.copytree(stores[1], trust)
    return keys, trust


# -------------------------------------------------------------------------------------------------
# permissions


def test_private_key_readable_by_others_is_rejected(copy):
    keys, _ = copy
    os.chmod(keys / "2.pem", 0o644)
    with pytest.raises(KeyFileError) as info:
        Keystore.load(keys)
    assert info.value.file == str(keys / "2.pem")
    assert info.value.key == "private key"
    assert "permissions 0644 are too open" in info.value.reason and "chmod 600" in info.value.reason


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_private_key_modes_accepted(copy, mode):
    keys, _ = copy
    os.chmod(keys / "2.pem", mode)
    assert Keystore.load(keys).key_ids() == [1, 2, 3]


def test_generated_key_file_is_0600(tmp_path):
    pem = generate_key("ed25519", 9, tmp_path, station="STA01")
    assert pem == tmp_path / "9.pem"
    assert pem.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("target", ["3.toml", "3.pem", "."])
def test_trust_store_writable_by_others_is_rejected(copy, target):
    _, trust = copy
    path = trust / target
    os.chmod(path, os.stat(path).st_mode | 0o022)
    with pytest.raises(KeyFileError) as info:
        TrustStore.load(trust)
    assert info.value.file == str(path)
    assert "let group or others write it" in info.value.reason


# -------------------------------------------------------------------------------------------------
# trust store metadata errors name file, key and reason


def edit(path, old, new):
    text = path.read_text()
    assert old in text, (old, text)
    path.write_text(text.replace(old, new))


@pytest.mark.parametrize("old, new, key, reason", [
    ('algorithm = "ecdsa-p256"', 'algorithm = "rsa"', "algorithm", "is not one of"),
    ('stations = ["STA01"]', 'stations = []', "stations", "should be non-empty"),
    ('stations = ["STA01"]', 'stations = ["TOO-LONG-CODE"]', "stations[0]", "does not match"),
    ('stations = ["STA01"]', 'colour = "blue"\nstations = ["STA01"]', "colour", "unknown key"),
    ('stations = ["STA01"]\n', '', "stations", "required key is missing"),
    ('key_id = 3', 'key_id = 4', "key_id", "is 4 but the file is named 3.toml"),
    ('key_id = 3', 'key_id = 0', "key_id", "less than the minimum"),
    ('valid_from = 2024-01-01T00:00:00Z', 'valid_from = 2024-01-01T00:00:00', "valid_from",
     "with a UTC offset"),
    ('valid_from = 2024-01-01T00:00:00Z', 'valid_from = "2024-01-01"', "valid_from", "with a UTC offset"),
    ('valid_until = 2026-01-01T00:00:00Z', 'valid_until = 2023-01-01T00:00:00Z', "valid_until",
     "later than valid_from"),
    ('public_key_sha256 = "', 'public_key_sha256 = "0', "public_key_sha256", "does not match"),
    ('key_id = 3', 'key_id = 3\nkey_id = 3', "", "not valid TOML"),
])
def test_trust_metadata_errors(copy, old, new, key, reason):
    _, trust = copy
    meta = trust / "3.toml"
    edit(meta, old, new)
    with pytest.raises(ConfigError) as info:
        TrustStore.load(trust)
    assert info.value.file == str(meta)
    assert info.value.key == key
    assert reason in info.value.reason
    assert str(info.value).startswith(f"{meta}: ")


def test_trust_fingerprint_must_match_the_key_file(copy):
    _, trust = copy
    shutil.copy(trust / "2.pem", trust / "3.pem")  # an Ed25519 key where metadata says ECDSA
    with pytest.raises(KeyFileError) as info:
        TrustStore.load(trust)
    assert info.value.file == str(trust / "3.pem")
    assert "expected ECDSA P-256" in info.value.reason


def test_trust_store_refuses_private_keys(copy):
    keys, trust = copy
    shutil.copy(keys / "2.pem", trust / "2.pem")
    os.chmod(trust / "2.pem", 0o644)
    with pytest.raises(KeyFileError, match="a trust store holds public keys only"):
        TrustStore.load(trust)


@pytest.mark.parametrize("remove, complaint", [("1.toml", "no metadata file 1.toml"),
                                               ("1.pem", "no key file 1.pem")])
def test_unpaired_files_are_errors(copy, remove, complaint):
    _, trust = copy
    (trust / remove).unlink()
    with pytest.raises(ConfigError, match=complaint):
        TrustStore.load(trust)


def test_missing_directory(tmp_path):
    with pytest.raises(ConfigError, match="trust store directory not found"):
        TrustStore.load(tmp_path / "nope")
    with pytest.raises(ConfigError, match="keystore directory not found"):
        Keystore.load(tmp_path / "nope")


def test_keystore_algorithm_mismatch_and_weak_dsa(copy):
    keys, _ = copy
    edit(keys / "2.toml", 'algorithm = "ed25519"', 'algorithm = "ecdsa-p256"')
    with pytest.raises(KeyFileError, match="Ed25519 key, expected ECDSA P-256"):
        Keystore.load(keys)
    # a 2048-bit DSA key has a 256-bit q: its r||s would not fit the IMS's 40 bytes
    edit(keys / "2.toml", 'algorithm = "ecdsa-p256"', 'algorithm = "dsa-sha1"')
    (keys / "2.pem").unlink()
    from ims_station.config import write_secret_file
    write_secret_file(keys / "2.pem", algorithms.private_pem(dsa.generate_private_key(2048)))
    meta = keys / "2.toml"  # the new key has a new fingerprint: drop the old one
    meta.write_text("".join(line for line in meta.read_text().splitlines(keepends=True)
                            if not line.startswith("public_key_sha256")))
    with pytest.raises(KeyFileError, match="needs a 160-bit q"):
        Keystore.load(keys)


# -------------------------------------------------------------------------------------------------
# generate / export / rotation


def test_generate_refuses_reuse_and_bad_input(tmp_path):
    generate_key("ed25519", 5, tmp_path, station="STA01")
    with pytest.raises(AuthError, match="already exists"):
        generate_key("ed25519", 5, tmp_path, station="STA01")
    for key_id in (0, -1, 2**31, True):
        with pytest.raises(AuthError, match="key id must be"):
            generate_key("ed25519", key_id, tmp_path)
    with pytest.raises(AuthError, match="unknown signature algorithm 'rsa'"):
        generate_key("rsa", 6, tmp_path)
    with pytest.raises(AuthError, match="stations"):
        generate_key("ed25519", 7, tmp_path, station="NOT A CODE")
    assert not (tmp_path / "7.pem").exists()
    with pytest.raises(AuthError, match="not later than"):
        generate_key("ed25519", 8, tmp_path, valid_from="2025-01-01T00:00:00Z", valid_until="2024-01-01")


def test_export_needs_a_station_and_never_replaces_a_key(tmp_path):
    keys, trust = tmp_path / "keys", tmp_path / "trust"
    generate_key("ed25519", 1, keys)
    with pytest.raises(AuthError, match="lists no station"):
        export_public(keys, 1, trust)
    export_public(keys, 1, trust, station=["STA01", "STA02"])
    assert TrustStore.load(trust).key(1).info.stations == {"STA01", "STA02"}
    with pytest.raises(UnknownKeyError):
        export_public(keys, 2, trust)
    generate_key("ed25519", 1, tmp_path / "other", station="STA01")
    with pytest.raises(AuthError, match="already holds a different key"):
        export_public(tmp_path / "other", 1, trust)


def test_rotation(tmp_path):
    """Old key valid until the switch, new key from the switch: the edge picks the key by time, the
    relay accepts each frame by the key valid at the frame's time, and old frames stay verifiable."""
    keys, trust = tmp_path / "keys", tmp_path / "trust"
    switch = dt.datetime(2025, 1, 1, tzinfo=UTC)
    generate_key("ed25519", 10, keys, station="STA01", valid_from="2024-01-01T00:00:00Z")
    export_public(keys, 10, trust)
    generate_key("ecdsa-p256", 11, keys, station="STA01", valid_from=switch)
    export_public(keys, 11, trust)
    export_public(keys, 10, trust, valid_until=switch)  # end the old key's validity
    keystore, store = Keystore.load(keys), TrustStore.load(trust)
    before, after = switch - dt.timedelta(hours=1), switch + dt.timedelta(hours=1)
    assert keystore.signer_for("STA01", before).key_id == 10
    old = keystore.signer(10)
    assert keystore.signer_for("STA01", after).key_id == 11
    assert store.verify("STA01", 10, b"frame", old.sign(b"frame"), at=before).ok
    assert not store.verify("STA01", 10, b"frame", old.sign(b"frame"), at=after).ok
    new = keystore.signer(11)
    assert store.verify("STA01", 11, b"frame", new.sign(b"frame"), at=after).ok
    assert not store.verify("STA01", 11, b"frame", new.sign(b"frame"), at=before).ok
    with pytest.raises(UnknownKeyError, match="no key in keystore .* valid for station 'STA01'"):
        keystore.signer_for("STA01", dt.datetime(2023, 1, 1))
    with pytest.raises(UnknownKeyError):
        keystore.signer_for("STA09", after)


# -------------------------------------------------------------------------------------------------
# CLI


def test_cli_generate_and_export(tmp_path, capsys):
    keys, trust = tmp_path / "keys", tmp_path / "trust"
    assert main(["keys", "generate", "--algorithm", "dsa", "--key-id", "4", "--out", str(keys),
                 "--station", "LBTB", "--valid-from", "2024-01-01T00:00:00Z", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["algorithm"] == "dsa-sha1" and doc["key_id"] == 4 and doc["stations"] == ["LBTB"]
    assert doc["valid_from"] == "2024-01-01T00:00:00+00:00" and doc["valid_until"] is None
    assert main(["keys", "export", "--keystore", str(keys), "--key-id", "4", "--trust", str(trust),
                 "--valid-until", "2030-01-01T00:00:00Z", "--json"]) == 0
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 1
    exported = json.loads(out)
    assert exported["valid_until"] == "2030-01-01T00:00:00+00:00"
    assert exported["public_key_sha256"] == doc["public_key_sha256"]
    signature = Keystore.load(keys).signer(4).sign(b"x")
    assert TrustStore.load(trust).verify("LBTB", 4, b"x", signature, at=INSIDE).ok


def test_cli_errors_are_one_line(tmp_path, capsys):
    keys = tmp_path / "keys"
    assert main(["keys", "generate", "--algorithm", "ed25519", "--key-id", "4", "--out", str(keys)]) == 0
    os.chmod(keys / "4.pem", 0o640)
    assert main(["keys", "export", "--keystore", str(keys), "--key-id", "4", "--trust",
                 str(tmp_path / "t"), "--station", "STA01"]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0
    assert "4.pem: private key: permissions 0640 are too open" in err
