"""``ims-station keys``: what an operator types and reads.  The options (names, required-ness,
choices, repeatable ``--station``), the exit status and message of every refusal, and the
human-readable and ``--json`` reports of ``generate`` and ``export``."""

from __future__ import annotations

import json

import pytest

from ims_station.auth import TrustStore
from ims_station.cli import main

GEN = ["keys", "generate"]
EXP = ["keys", "export"]


def usage_error(argv, capsys) -> str:
    """Run *argv*; it must be refused by the option parser (exit status 2); returns stderr."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    return capsys.readouterr().err


def test_keys_without_an_action_prints_its_own_help_and_exits_2(capsys):
    assert main(["keys"]) == 2
    out = capsys.readouterr().out
    assert out.startswith("usage: ims-station keys [-h] ACTION ...")
    assert "generate" in out and "export" in out


def test_an_unknown_action_is_refused_naming_the_choices(capsys):
    err = usage_error(["keys", "rotate"], capsys)
    assert "argument ACTION: invalid choice: 'rotate' (choose from 'generate', 'export')" in err


@pytest.mark.parametrize("argv, missing", [
    (GEN + ["--key-id", "1", "--out", "K"], "--algorithm"),
    (GEN + ["--algorithm", "ed25519", "--out", "K"], "--key-id"),
    (GEN + ["--algorithm", "ed25519", "--key-id", "1"], "--out"),
    (EXP + ["--key-id", "1", "--trust", "T"], "--keystore"),
    (EXP + ["--keystore", "K", "--trust", "T"], "--key-id"),
    (EXP + ["--keystore", "K", "--key-id", "1"], "--trust"),
])
def test_required_options(argv, missing, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = usage_error(argv, capsys)
    assert f"the following arguments are required: {missing}" in err
    assert list(tmp_path.iterdir()) == []          # nothing created


def test_algorithm_choices(capsys, tmp_path):
    err = usage_error(GEN + ["--algorithm", "ecdsa", "--key-id", "1", "--out", str(tmp_path)], capsys)
    assert "argument --algorithm: invalid choice: 'ecdsa' (choose from 'ed25519', 'ecdsa-p256', 'dsa', " \
           "'dsa-sha1')" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("algorithm, canonical", [("ed25519", "ed25519"), ("ecdsa-p256", "ecdsa-p256"),
                                                  ("dsa", "dsa-sha1"), ("dsa-sha1", "dsa-sha1")])
def test_every_algorithm_choice_generates_its_key(algorithm, canonical, tmp_path, capsys):
    assert main(GEN + ["--algorithm", algorithm, "--key-id", "3", "--out", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["algorithm"] == canonical


def test_key_id_must_be_a_number(tmp_path, capsys):
    err = usage_error(GEN + ["--algorithm", "ed25519", "--key-id", "seven", "--out", str(tmp_path)], capsys)
    assert "argument --key-id: invalid int value: 'seven'" in err


def test_generate_report_and_files(tmp_path, capsys):
    keys = tmp_path / "keys"
    assert main(GEN + ["--algorithm", "ed25519", "--key-id", "7", "--out", str(keys), "--station", "STA01",
                       "--station", "STA02,STA03", "--valid-from", "2025-01-01T00:00:00Z",
                       "--valid-until", "2027-01-01T00:00:00Z"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"created ed25519 key 7: {keys / '7.pem'} (mode 0600), metadata {keys / '7.toml'}"
    assert lines[1] == "  stations: STA01, STA02, STA03"
    assert lines[2] == "  valid: 2025-01-01T00:00:00+00:00 .. 2027-01-01T00:00:00+00:00"
    assert lines[3].startswith("  public key sha256: ") and len(lines[3].split(": ")[1]) == 64
    assert len(lines) == 4
    # --json: the same facts, and where the files are
    assert main(GEN + ["--algorithm", "ed25519", "--key-id", "8", "--out", str(keys), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["key_file"] == str(keys / "8.pem") and doc["metadata_file"] == str(keys / "8.toml")
    assert doc["stations"] == [] and doc["valid_until"] is None


def test_generate_report_without_stations_or_end(tmp_path, capsys):
    assert main(GEN + ["--algorithm", "ed25519", "--key-id", "7", "--out", str(tmp_path),
                       "--valid-from", "2025-01-01T00:00:00Z"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "  stations: (none yet; give --station on export)"
    assert lines[2] == "  valid: 2025-01-01T00:00:00+00:00 .. open end"


def test_generate_refusal_is_exit_2_with_the_reason(tmp_path, capsys):
    argv = GEN + ["--algorithm", "ed25519", "--key-id", "7", "--out", str(tmp_path)]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == (f"ims-station keys: error: {tmp_path / '7.pem'} already exists; key ids are never reused "
                   "(pick a new id)\n")


@pytest.fixture
def keystore(tmp_path, capsys):
    keys = tmp_path / "keys"
    assert main(GEN + ["--algorithm", "ed25519", "--key-id", "7", "--out", str(keys), "--station", "STA01",
                       "--valid-from", "2025-01-01T00:00:00Z"]) == 0
    capsys.readouterr()
    return keys


def test_export_report_and_overrides(keystore, tmp_path, capsys):
    trust = tmp_path / "trust"
    assert main(EXP + ["--keystore", str(keystore), "--key-id", "7", "--trust", str(trust),
                       "--station", "STA08", "--station", "STA09", "--valid-from", "2025-06-01T00:00:00Z",
                       "--valid-until", "2026-06-01T00:00:00Z"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"exported public key 7 (ed25519) to {trust / '7.pem'}",
                     "  trusted for: STA08, STA09",
                     "  valid: 2025-06-01T00:00:00+00:00 .. 2026-06-01T00:00:00+00:00"]
    info = TrustStore.load(trust).key(7).info
    assert info.stations == {"STA08", "STA09"}
    assert info.valid_from.isoformat() == "2025-06-01T00:00:00+00:00"
    assert info.valid_until.isoformat() == "2026-06-01T00:00:00+00:00"


def test_export_report_defaults_from_the_keystore(keystore, tmp_path, capsys):
    trust = tmp_path / "trust"
    assert main(EXP + ["--keystore", str(keystore), "--key-id", "7", "--trust", str(trust)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1:] == ["  trusted for: STA01", "  valid: 2025-01-01T00:00:00+00:00 .. open end"]
    assert main(EXP + ["--keystore", str(keystore), "--key-id", "7", "--trust", str(trust), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["key_file"] == str(trust / "7.pem") and doc["metadata_file"] == str(trust / "7.toml")
    assert doc["stations"] == ["STA01"] and doc["valid_until"] is None


def test_export_refusal_is_exit_2_with_the_reason(keystore, tmp_path, capsys):
    assert main(EXP + ["--keystore", str(keystore), "--key-id", "7", "--trust", str(tmp_path / "trust"),
                       "--valid-until", "2024-01-01T00:00:00Z"]) == 2
    assert capsys.readouterr().err == ("ims-station keys: error: valid_until 2024-01-01T00:00:00Z is not later "
                                       "than valid_from 2025-01-01T00:00:00Z\n")
