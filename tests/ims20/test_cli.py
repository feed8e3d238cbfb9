"""``ims-station ims2 dump FILE --json``: the envelope, every block's fields, spectra and histogram as
integer arrays; a bad file ends with status 2 and one line naming the file, line, block and field."""

from __future__ import annotations

import json

import numpy as np

from ims_station.cli import main
from ims_station.ims20 import parse
from tests.ims20.test_errors import MINIMAL, replace_line


def dump(capsys, *args) -> tuple[int, list[dict], str]:
    rc = main(["ims2", "dump", *map(str, args)])
    cap = capsys.readouterr()
    return rc, [json.loads(line) for line in cap.out.splitlines() if line.startswith("{")], cap.err


def test_dump_json_of_a_real_file(sample_phd, capsys):
    rc, docs, err = dump(capsys, "--json", sample_phd)
    assert (rc, err, len(docs)) == (0, "", 1)
    doc = docs[0]
    assert doc["file"] == str(sample_phd)
    assert (doc["version"], doc["msg_type"], doc["msg_id"], doc["source"]) == ("IMS2.0", "DATA", "20211203070613605",
                                                                             None)
    (sec,) = doc["sections"]
    assert sec["data_type"] == "SAMPLEPHD"
    body = sec["body"]
    assert body["header"]["srid"] == "58202112020111X"
    assert body["header"]["transmit_time"] == "2021-12-03T07:06:13.600000Z"
    assert body["acquisition"] == {"start": "2021-12-02T17:00:54.400000Z", "real_time": 50719.17, "live_time": 50400.0}
    assert body["processing"]["archive_id"] == "17"
    assert body["ratios"]["rows"][0] == {"ratio_id": "PB214_352:242", "upper_roi": 1, "lower_roi": 2,
                                         "ratio": 0.65, "uncertainty": 0.0083}
    msg = parse(sample_phd.read_bytes())
    g = body["g_spectrum"]
    assert (g["channels"], g["energy_span"], g["first_channel"]) == (256, 720.0, 0)
    assert g["counts"] == msg.body.g_spectrum.counts.tolist() and all(type(c) is int for c in g["counts"])
    h = body["histogram"]
    assert (h["gamma_channels"], h["beta_channels"], h["gamma_span"], h["beta_span"]) == (256, 256, 720.0, 550.0)
    assert np.array_equal(np.array(h["counts"]), msg.body.histogram.counts)
    assert body["certificate"] is None and body["extra_blocks"] == []


def test_dump_human_summary(ims20_samples, capsys):
    rc = main(["ims2", "dump", *map(str, ims20_samples)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "DATA_TYPE SAMPLEPHD" in out and "DATA_TYPE SPIKEPHD" in out
    assert "histogram: 256 x 256 channels (gamma x beta), spans 720 / 550 keV, 3480 counts" in out


def test_errors_exit_2_naming_file_line_block_field(tmp_path, sample_phd, capsys):
    bad = tmp_path / "bad.PHD"
    bad.write_text(replace_line(11, "2026/01/01 00:00:00.0 40000.5 -"))
    rc, docs, err = dump(capsys, "--json", bad, sample_phd, tmp_path / "missing.PHD")
    assert rc == 2
    assert len(docs) == 1 and docs[0]["file"] == str(sample_phd)     # the good file is still dumped
    lines = err.splitlines()
    assert lines[0] == f"ims-station ims2 dump: {bad}: IMS 2.0: line 11: #Acquisition: live_time: not a number: '-'"
    assert lines[1].startswith(f"ims-station ims2 dump: {tmp_path / 'missing.PHD'}: cannot read")


def test_a_file_over_the_size_limit_is_not_read_whole(tmp_path, capsys, monkeypatch):
    from ims_station.ims20 import format as fmt

    monkeypatch.setattr("ims_station.ims20.DEFAULT_LIMITS", fmt.Limits(max_message_bytes=len(MINIMAL) - 1))
    big = tmp_path / "big.PHD"
    big.write_text(MINIMAL)
    rc, _, err = dump(capsys, big)
    assert rc == 2 and "more than the limit" in err
