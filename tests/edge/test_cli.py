"""``ims-station edge run`` over a pty: config in, counters out."""

from __future__ import annotations

import json
import os
import threading

from ims_station.cli import main
from ims_station.config import write_secret_file
from ims_station.edge import serialport

from .fakeboard import KEY, FakeBoard


def test_edge_run_reads_a_pty_board_and_reports_json(tmp_path, capsys, monkeypatch):
    master, slave = os.openpty()
    write_secret_file(tmp_path / "b.key", KEY)
    cfg = tmp_path / "station.toml"
    cfg.write_text(f'[station]\ncode = "XS01"\nnetwork = "IM"\n\n[[ports]]\nurl = "{os.ttyname(slave)}"\n'
                   f'key_file = "b.key"\nboard_id = 7\nchannels = {{ 0 = "00.BHZ" }}\n'
                   # FakeBoard's samples are stamped November 2023
                   '\n[framer]\nmax_clock_offset_s = 630_720_000\n')
    b = FakeBoard()
    real_open = serialport.open_port

    def open_then_board_speaks(*a, **kw):
        port = real_open(*a, **kw)          # (opening flushes the tty's input)
        os.write(master, b.hello() + b.data() + b.data())
        return port

    monkeypatch.setattr(serialport, "open_port", open_then_board_speaks)
    rc = main(["edge", "run", "--config", str(cfg), "--seconds", "0.6", "--interval", "100", "--json"])
    os.close(master)
    os.close(slave)
    assert rc == 0
    doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    link = doc["ports"][0]["link"]
    assert doc["station"] == "IM.XS01" and link["packets_ok"] == 3 and link["data_blocks"] == 2
    assert doc["ports"][0]["streams"]["channels"]["IM.XS01.00.BHZ"]["samples"] == 100
    # The full gateway: the blocks reached the framer (one window open, nothing committed yet).
    assert doc["gateway"]["blocks"] == 2 and doc["gateway"]["framer"]["open_windows"] == 1
    assert doc["outbox"]["frames"] == 0 and doc["uplink"] is None


def test_edge_run_config_error_is_one_line_exit_2(tmp_path, capsys):
    cfg = tmp_path / "station.toml"
    cfg.write_text('[station]\ncode = "XS01"\nnetwork = "IM"\nports = 3\n')
    assert main(["edge", "run", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert str(cfg) in err and "ports" in err
