"""docs/keys.md's "Rotation" procedure, run command by command as written (the ``ims-station`` and
``rm`` lines of the section, in order), with the gateway (``edge/station.build``: framer + outbox from
the station file) crossing the switch on a fake clock and a reloading relay trust store checking
every frame: what the document promises is what happens."""

from __future__ import annotations

import datetime as dt
import re
import shlex
import shutil
from pathlib import Path

import numpy as np

from ims_station import cd11
from ims_station.auth import Keystore, ReloadingTrustStore, export_public, generate_key
from ims_station.cli import main
from ims_station.clock import FakeClock
from ims_station.config import write_secret_file
from ims_station.edge.streams import Chunk
from ims_station.firmware import link

DOC = Path(__file__).resolve().parents[2] / "docs" / "keys.md"
SWITCH = dt.datetime(2026, 7, 1, tzinfo=dt.timezone.utc).timestamp()
CODES = ("XX.STA01.00.BHZ", "XX.STA01.00.BHN")

# What each command of the section is (the test fails here first if the document changes).
EXPECTED = [
    "ims-station keys generate --algorithm ed25519 --key-id 8 ",
    "ims-station keys export --keystore keys --key-id 8 ",
    "ims-station keys export --keystore keys --key-id 7 --trust trust --valid-until ",
    "ims-station edge outbox list --config station.toml",
    "ims-station edge outbox list --config station.toml --key-id 8",
    "rm keys/8.pem",
    "ims-station keys generate --algorithm ed25519 --key-id 9 ",
    "ims-station keys export --keystore keys --key-id 9 ",
    "ims-station edge outbox resign --config station.toml --key-id 8",
    "ims-station edge outbox purge --config station.toml --key-id 8 --yes",
]


def doc_commands() -> list[str]:
    text = DOC.read_text()
    section = text[text.index("\n## Rotation"):text.index("\n## What is not covered")]
    return re.findall(r"`((?:ims-station|rm) [^`]+)`", section)


def run(cmd: str, capsys) -> tuple[int, str]:
    argv = shlex.split(cmd)
    if argv[0] == "rm":
        for f in argv[1:]:
            Path(f).unlink()
        return 0, ""
    code = main(argv[1:])
    return code, capsys.readouterr().out


def key_ids(raw: bytes) -> tuple[int, set[int]]:
    f, _ = cd11.parse_frame(raw)
    return f.auth_key_id, {sf.auth_key_id for sf in f.subframes}


def outbox_frames(path: Path) -> dict[int, bytes]:
    import sqlite3

    con = sqlite3.connect(path)
    try:
        return {int(s): bytes(p) for s, p in con.execute("SELECT seq, payload FROM frames")}
    finally:
        con.close()


def test_the_rotation_procedure_of_docs_keys_md_as_written(tmp_path, monkeypatch, capsys):
    cmds = doc_commands()
    assert len(cmds) == len(EXPECTED) and all(c.startswith(e) for c, e in zip(cmds, EXPECTED)), cmds
    monkeypatch.chdir(tmp_path)
    # Before the procedure: key 7 in use, trusted by the relay; one station file for the gateway.
    generate_key("ed25519", 7, "keys", station="STA01", valid_from="2026-01-01T00:00:00Z")
    export_public("keys", 7, "trust")
    write_secret_file(tmp_path / "board.key", bytes(range(32)))
    Path("station.toml").write_text('[station]\ncode = "STA01"\nnetwork = "XX"\n\n[[ports]]\nurl = "loop://"\n'
                                    'key_file = "board.key"\n\n[outbox]\npath = "outbox.sqlite"\n\n'
                                    '[keys]\nkeystore = "keys"\n')
    relay = ReloadingTrustStore("trust", poll_s=0)          # the running relay's trust store

    for cmd in cmds[:3]:                                     # steps 1-3
        assert run(cmd, capsys)[0] == 0, cmd
    # Step 4: the relay reloads (SIGHUP) without a restart.
    relay.request_reload()
    assert relay.refresh() and relay.key_ids() == [7, 8]

    # Step 5: the gateway, built from the station file, crosses the switch without a restart.
    from ims_station.edge.station import build, load

    clock = FakeClock(t=SWITCH - 40)
    cfg, settings = load("station.toml")
    gw, outbox, _ = build(cfg, settings, clock=clock)
    for k in range(81):                                      # 4 windows before the switch, 4 after
        t = SWITCH - 40 + k
        clock.t = t + 1
        samples = np.vstack([np.arange(40 * k, 40 * k + 40, dtype=np.int32)] * len(CODES))
        gw.framer.add_chunk(Chunk("STA01", CODES, int(t * 1e6), 40_000, samples, link.TQ_LOCKED, 0, 0, True))
    outbox.close()
    first_new = cd11.sequence_from_time(SWITCH)
    frames = outbox_frames(tmp_path / "outbox.sqlite")
    assert len(frames) == 8
    for seq, raw in frames.items():
        want = 7 if seq < first_new else 8
        assert key_ids(raw) == (want, {want}), seq
        assert cd11.verify_frame(cd11.parse_frame(raw)[0], relay).failures() == []
    code, out = run(cmds[3], capsys)
    assert code == 0 and out.count("frame key 7") == 4 and out.count("frame key 8") == 4

    # Step 6: key 8 must not be trusted after all: list its frames, retire it, replace it, re-sign.
    code, out = run(cmds[4], capsys)
    assert code == 0 and out.count("frame key 8") == 4 and "frame key 7" not in out
    for cmd in cmds[5:8]:
        assert run(cmd, capsys)[0] == 0, cmd
    relay.request_reload()
    assert relay.refresh() and relay.key_ids() == [7, 9]
    shutil.copytree(tmp_path, tmp_path.parent / "purge-branch", ignore=shutil.ignore_patterns("*.lock"))
    code, out = run(cmds[8], capsys)                         # resign
    assert code == 0 and "resigned 4, unchanged 0, skipped 0" in out
    resigned = outbox_frames(tmp_path / "outbox.sqlite")
    assert sorted(resigned) == sorted(frames)
    for seq, raw in resigned.items():
        want = 7 if seq < first_new else 9
        assert key_ids(raw) == (want, {want}), seq
        assert cd11.verify_frame(cd11.parse_frame(raw)[0], relay).failures() == []
        old, new = cd11.parse_frame(frames[seq])[0], cd11.parse_frame(raw)[0]
        assert [sf.data for sf in new.subframes] == [sf.data for sf in old.subframes]
    # ... or give them up instead (on a copy of the station taken before the resign).
    monkeypatch.chdir(tmp_path.parent / "purge-branch")
    code, out = run(cmds[9], capsys)
    assert code == 0 and "purged 4 of 4" in out
    assert sorted(outbox_frames(Path("outbox.sqlite"))) == [s for s in sorted(frames) if s < first_new]
