"""``ims-station edge outbox list|purge|resign``: frames stuck in a station's outbox because they were
signed with a key the relay never trusted can be found by key id, deleted (only with ``--yes``) or
re-signed with the keystore's key for their time (same content, same sequence number); every command
is refused while a gateway has the outbox open (docs/keys.md, "Rotation")."""

from __future__ import annotations

import os

import json

import numpy as np
import pytest

from ims_station import cd11
from ims_station.auth import Keystore, TrustStore, export_public, generate_key
from ims_station.cli import main
from ims_station.clock import FakeClock
from ims_station.edge.outbox import Outbox, OutboxLockedError

STA = "STA01"
T0 = 1_700_000_000.0


@pytest.fixture
def setup(tmp_path):
    """Outbox with 3 frames signed with key 5 (never exported to the relay) and 2 with key 1."""
    ks, trust = tmp_path / "keys", tmp_path / "trust"
    generate_key("ed25519", 1, ks, station=STA, valid_from="2020-01-01T00:00:00Z")
    export_public(ks, 1, trust)
    generate_key("ed25519", 5, ks, station=STA, valid_from="2020-01-01T00:00:00Z")
    keystore = Keystore.load(ks)
    path = tmp_path / "outbox.sqlite"
    box = Outbox(path, max_bytes=1 << 30, max_age_s=1e12, clock=FakeClock())
    for k in range(5):
        t = T0 + 10 * k
        signer = keystore.signer(5 if k < 3 else 1)
        chans = [cd11.ChannelInput(STA, ch, "00", np.arange(400, dtype=np.int32) * (i + 1) + k, 40.0, t, None, signer)
                 for i, ch in enumerate(("BHZ", "BHN"))]
        seq = cd11.sequence_from_time(t)
        box.put("cd11", f"{STA}:0", seq, t, cd11.build_data_frame(STA, seq, t, chans, signer))
    box.close()
    return path, ks, trust


def run(capsys, *argv):
    code = main(["edge", "outbox", *argv])
    out = capsys.readouterr()
    return code, (json.loads(out.out) if "--json" in argv and out.out else out.out), out.err


def test_list_shows_frame_and_subframe_key_ids_and_filters_by_key(setup, capsys):
    path, _, _ = setup
    code, doc, _ = run(capsys, "list", "--outbox", str(path), "--json")
    assert code == 0
    assert [(f["frame_key_id"], f["subframe_key_ids"]) for f in doc["frames"]] == [(5, [5])] * 3 + [(1, [1])] * 2
    seq0 = cd11.sequence_from_time(T0)
    assert doc["frames"][0]["seq"] == seq0 and doc["frames"][0]["nominal_time"] == "2023-11-14T22:13:20.000Z"
    code, doc, _ = run(capsys, "list", "--outbox", str(path), "--key-id", "5", "--seq", f"{seq0 + 1}-{seq0 + 9}", "--json")
    assert [f["seq"] for f in doc["frames"]] == [seq0 + 1, seq0 + 2]
    code, text, _ = run(capsys, "list", "--outbox", str(path))
    assert "frame key 5" in text and "5 frame(s)" in text


def test_purge_needs_yes_and_deletes_only_the_selected_frames(setup, capsys):
    path, _, _ = setup
    assert run(capsys, "purge", "--outbox", str(path))[0] == 2          # no selection: refused
    code, doc, err = run(capsys, "purge", "--outbox", str(path), "--key-id", "5", "--json")
    assert code == 1 and doc["selected"] == 3 and doc["purged"] == 0 and "--yes" in err
    code, doc, _ = run(capsys, "purge", "--outbox", str(path), "--key-id", "5", "--yes", "--json")
    assert code == 0 and doc["purged"] == 3
    _, doc, _ = run(capsys, "list", "--outbox", str(path), "--json")
    assert [f["frame_key_id"] for f in doc["frames"]] == [1, 1]
    with Outbox(path, max_bytes=1 << 30, max_age_s=1e12, clock=FakeClock()) as box:
        assert box.stats()["frames"] == 2 and box.stats()["purged_frames"] == 3


def test_resign_uses_the_keystores_key_for_the_frames_time_and_keeps_content_and_seq(setup, capsys):
    path, ks, trust = setup
    with Outbox(path, max_bytes=1 << 30, max_age_s=1e12, clock=FakeClock()) as box:
        before = {i.seq: cd11.parse_frame(i.payload)[0] for i, _ in box.items()}
        box.mark_sent([i.id for i, _ in box.items()])
    (ks / "5.pem").unlink()                  # the untrusted key is retired from the station
    (ks / "5.toml").unlink()
    code, doc, _ = run(capsys, "resign", "--outbox", str(path), "--keystore", str(ks), "--json")
    assert code == 0 and len(doc["resigned"]) == 3 and doc["unchanged"] == 2 and doc["skipped"] == []
    store = TrustStore.load(trust)
    with Outbox(path, max_bytes=1 << 30, max_age_s=1e12, clock=FakeClock()) as box:
        items = box.items()
        assert all(state == 0 for _, state in items)                 # pending: published again
        for item, _ in items:
            f = cd11.parse_frame(item.payload)[0]
            old = before[item.seq]
            assert f.sequence == old.sequence and f.nominal_time == old.nominal_time
            assert [sf.data for sf in f.subframes] == [sf.data for sf in old.subframes]
            assert [sf.status for sf in f.subframes] == [sf.status for sf in old.subframes]
            assert f.auth_key_id == 1 and cd11.verify_frame(f, store).failures() == []


def test_resign_skips_frames_for_whose_time_no_key_is_valid(setup, capsys):
    path, ks, _ = setup
    (ks / "5.pem").unlink()
    (ks / "5.toml").unlink()
    (ks / "1.pem").unlink()
    (ks / "1.toml").unlink()
    generate_key("ed25519", 2, ks, station=STA, valid_from="2030-01-01T00:00:00Z")
    code, doc, _ = run(capsys, "resign", "--outbox", str(path), "--keystore", str(ks), "--json")
    assert code == 0 and doc["resigned"] == [] and len(doc["skipped"]) == 5
    assert "no key in keystore" in doc["skipped"][0]["reason"]
    code, doc, _ = run(capsys, "resign", "--outbox", str(path), "--keystore", str(ks), "--with-key", "2", "--json")
    assert len(doc["skipped"]) == 5 and "not valid at the frame's time" in doc["skipped"][0]["reason"]


@pytest.mark.parametrize("action", [["list"], ["purge", "--all", "--yes"], ["resign"]])
def test_every_action_is_refused_while_a_gateway_has_the_outbox_open(setup, capsys, action):
    path, ks, _ = setup
    with Outbox(path, max_bytes=1 << 30, max_age_s=1e12, clock=FakeClock()):    # the running gateway
        code, _, err = run(capsys, *action, "--outbox", str(path), "--keystore", str(ks))
    assert code == 2 and f"is in use by process {os.getpid()}" in err
    _, doc, _ = run(capsys, "list", "--outbox", str(path), "--json")
    assert len(doc["frames"]) == 5                                             # nothing changed


def test_a_gateway_does_not_start_while_a_maintenance_command_holds_the_outbox(setup):
    path, _, _ = setup
    from ims_station.edge.outbox_admin import open_exclusive

    box = open_exclusive(path)
    try:
        with pytest.raises(OutboxLockedError, match=f"is in use by process {os.getpid()}"):
            Outbox(path, max_bytes=1 << 30, max_age_s=1e12, clock=FakeClock())
    finally:
        box.close()
    Outbox(path, max_bytes=1 << 30, max_age_s=1e12, clock=FakeClock()).close()


def test_the_station_file_locates_outbox_and_keystore(tmp_path, setup, capsys):
    path, ks, _ = setup
    key = tmp_path / "board.key"
    key.write_bytes(b"k" * 32)
    key.chmod(0o600)
    station = tmp_path / "station.toml"
    station.write_text(f'[station]\ncode = "{STA}"\nnetwork = "XX"\n\n[[ports]]\nurl = "loop://"\n'
                       f'key_file = "{key}"\n\n[outbox]\npath = "{path}"\n\n[keys]\nkeystore = "{ks}"\n')
    (ks / "5.pem").unlink()
    (ks / "5.toml").unlink()
    code, doc, _ = run(capsys, "resign", "--config", str(station), "--key-id", "5", "--json")
    assert code == 0 and len(doc["resigned"]) == 3


def test_resign_signs_frames_committed_unsigned_when_no_key_was_valid(tmp_path, capsys):
    """The framer commits frames unsigned while no key is valid (docs/keys.md); once a key is
    installed, ``resign --key-id 0`` signs them."""
    ks, trust = tmp_path / "keys", tmp_path / "trust"
    generate_key("ed25519", 3, ks, station=STA, valid_from="2020-01-01T00:00:00Z")
    export_public(ks, 3, trust)
    path = tmp_path / "outbox.sqlite"
    with Outbox(path, max_bytes=1 << 30, max_age_s=1e12, clock=FakeClock()) as box:
        chans = [cd11.ChannelInput(STA, "BHZ", "00", np.arange(400, dtype=np.int32), 40.0, T0)]
        seq = cd11.sequence_from_time(T0)
        box.put("cd11", f"{STA}:0", seq, T0, cd11.build_data_frame(STA, seq, T0, chans))
    code, doc, _ = run(capsys, "resign", "--outbox", str(path), "--keystore", str(ks), "--key-id", "0", "--json")
    assert code == 0 and [(f["frame_key_id"], f["subframe_key_ids"]) for f in doc["resigned"]] == [(3, [3])]
    with Outbox(path, max_bytes=1 << 30, max_age_s=1e12, clock=FakeClock()) as box:
        (item, _), = box.items()
        assert cd11.verify_frame(cd11.parse_frame(item.payload)[0], TrustStore.load(trust)).failures() == []
