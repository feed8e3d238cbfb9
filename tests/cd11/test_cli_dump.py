"""``ims-station cd11 dump``: one JSON object per frame with every header/trailer field, ``crc_ok``
and every subframe field with the decoded samples; files of concatenated frames; bad files."""

from __future__ import annotations

import json
import subprocess
import sys

from ims_station.cli import main


def _dump_json(capsys, *args) -> tuple[int, list[dict]]:
    rc = main(["cd11", "dump", "--json", *map(str, args)])
    out = capsys.readouterr().out
    return rc, [json.loads(line) for line in out.splitlines()]


def test_dump_json_matches_the_reference(cd11_samples, capsys):
    ref = json.loads((cd11_samples / "decoded_reference.json").read_text())
    files = sorted(cd11_samples.glob("*.cd11"))
    rc, objs = _dump_json(capsys, *files)
    assert rc == 0 and len(objs) == len(files)
    for path, obj in zip(files, objs):
        r = ref[path.name]
        assert obj["file"] == str(path) and obj["crc_ok"] is True
        for key in ("frame_type", "trailer_offset", "creator", "destination", "sequence", "series",
                    "frame_auth_key_id", "frame_auth_size", "crc64_hex", "total_bytes"):
            assert obj[key] == r[key], (path.name, key)
        for i, sf in enumerate(obj.get("subframes", ())):
            rs = r["subframes"][i]
            assert sf["nsamples"] == rs["samples"] == len(sf["samples"])
            assert all(isinstance(v, int) for v in sf["samples"])
            if "decoded_samples" in rs:
                assert sf["samples"] == rs["decoded_samples"]
            for key in ("site", "chan", "loc", "auth_key_id", "auth_size", "auth_offset",
                        "channel_length", "data_size", "status_hex", "transformation", "calib"):
                assert sf[key] == rs[key], (path.name, i, key)


def test_dump_of_concatenated_frames(cd11_samples, tmp_path, capsys):
    names = ["generated_connreq.cd11", "real_LBTB_seq9720700.cd11", "generated_acknack.cd11"]
    blob = b"".join((cd11_samples / n).read_bytes() for n in names)
    p = tmp_path / "link.cd11"
    p.write_bytes(blob)
    rc, objs = _dump_json(capsys, p)
    assert rc == 0
    assert [o["frame_type"] for o in objs] == [1, 5, 6]
    assert objs[1]["offset"] == 84 and objs[2]["offset"] == 84 + 2224
    assert objs[0]["station"] == "STA01" and objs[0]["port"] == 8100
    assert objs[2]["gaps"] == [[103, 105], [110, 111]]
    assert objs[1]["subframes"][0]["status"]["last_gps_sync"] == "2019157 17:26:09.000"


def test_dump_reports_bad_crc_and_damaged_files(cd11_samples, tmp_path, capsys):
    good = (cd11_samples / "generated_alert.cd11").read_bytes()
    bad = bytearray(good)
    bad[41] ^= 0x01                                  # "Shutting" -> "Sitting"-like, still ASCII
    damaged = bytearray(good)
    damaged[40] ^= 0xFF                              # non-ASCII, and the CRC fails too
    p = tmp_path / "bad.cd11"
    p.write_bytes(good + bytes(bad) + good[:30])
    rc, objs = _dump_json(capsys, p)
    assert rc == 1
    assert [o["crc_ok"] for o in objs] == [True, False]
    err = capsys.readouterr().err
    rc = main(["cd11", "dump", str(p)])
    err = capsys.readouterr().err
    assert rc == 1
    assert "frame at byte 72: CRC-64 mismatch" in err
    assert "alert frame: header at byte 174: buffer ends after 30 bytes" in err
    p.write_bytes(bytes(damaged))
    assert main(["cd11", "dump", str(p)]) == 1
    err = capsys.readouterr().err
    assert "alert.message at byte 40: non-ASCII" in err
    assert "(and the CRC-64 does not match)" in err


def test_dump_human_output_and_missing_file(cd11_samples, tmp_path, capsys):
    rc = main(["cd11", "dump", str(cd11_samples / "generated_data_5ch_mixed.cd11"), str(tmp_path / "nope")])
    out, err = capsys.readouterr()
    assert rc == 1
    assert "subframe 3: STA01/LHZ/ 2024060 12:00:10.000 10 samples" in out
    assert "cannot read" in err


def test_console_script_runs_without_importing_numpy_for_help():
    # ``ims-station`` must start cheaply: registering ``cd11`` must not import the codec.
    code = ("import sys; from ims_station.cli import build_parser; build_parser(); "
            "print('numpy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _dump_into_closed_pipe(args: list[str]) -> tuple[int, str, bytes]:
    """Run ``ims-station ARGS`` as a real process whose reader takes one line and closes the pipe
    (``| head -1``); return (exit status, stderr, the line read)."""
    proc = subprocess.Popen([sys.executable, "-m", "ims_station", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    return proc.wait(timeout=60), err, first


def test_dump_into_a_pipe_closed_early_ends_quietly_with_141(cd11_samples, tmp_path):
    # More output than a pipe buffers (64 KiB), so the writer is still writing when the reader goes.
    many = tmp_path / "many.cd11"
    many.write_bytes((cd11_samples / "generated_data_5ch_mixed.cd11").read_bytes() * 400)
    for extra in ([], ["--json"]):
        rc, err, first = _dump_into_closed_pipe(["cd11", "dump", *extra, str(many)])
        assert first, "the command wrote nothing"
        assert rc == 141, err
        assert err == "", err          # no BrokenPipeError traceback, no "Exception ignored"


def test_broken_pipe_elsewhere_is_not_hidden(monkeypatch):
    # Only our reader going away ends quietly: a BrokenPipeError of a socket is a real error.
    import argparse

    import pytest

    from ims_station import cli

    def handler(args):
        raise BrokenPipeError(32, "Broken pipe (a socket)")

    monkeypatch.setattr(cli.argparse.ArgumentParser, "parse_args",
                        lambda self, argv=None: argparse.Namespace(verbose=0, handler=handler, command="x"))
    with pytest.raises(BrokenPipeError):
        cli.main([])
