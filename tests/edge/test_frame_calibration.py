"""Every channel subframe the gateway builds carries its sensor type, ``calib`` and ``calper`` from the
board definition (boards/*.toml), and the relay's archive keeps them; the shipped boards' ``calib``
is in CD-1.1's (CSS 3.0) units."""

from __future__ import annotations

import math
import sqlite3

import pytest

from ims_station import boards, cd11
from ims_station.cli import main

from .test_gateway_run import station_file

SENSOR_TYPE = {"seismic": 0, "hydroacoustic": 1, "infrasonic": 2, "weather": 3}


def f32(x: float) -> float:
    import struct

    return struct.unpack(">f", struct.pack(">f", x))[0]


def test_frames_from_the_sim_board_carry_the_board_files_calibration(tmp_path, capsys):
    cfg = station_file(tmp_path, None)          # sim board, channels 0-3 -> 00.BHZ/BHN/BHE, 10.BDF
    assert main(["edge", "run", "--config", str(cfg), "--seconds", "3", "--json"]) == 0
    capsys.readouterr()
    db = sqlite3.connect(tmp_path / "spool" / "outbox.sqlite")
    raws = [r[0] for r in db.execute("SELECT payload FROM frames ORDER BY seq")]
    db.close()
    assert len(raws) >= 2
    want = {(ch["location"], ch["channel"]): ch for ch in boards.load_board("sim")["channels"]}
    seen = set()
    for raw in raws:
        frame, _ = cd11.parse_frame(raw)
        for sf in frame.to_dict(samples=False)["subframes"]:
            ch = want[(sf["loc"], sf["chan"])]
            assert sf["sensor_type"] == SENSOR_TYPE[ch["sensor"]], sf
            assert sf["option_flag"] == 1, sf
            assert sf["calib"] == f32(ch["calib"]) and sf["calper"] == f32(ch["calper"]), sf
            seen.add((sf["chan"], sf["sensor_type"]))
    # The infrasound channel is an infrasound channel on the wire, not seismic.
    assert seen == {("BHZ", 0), ("BHN", 0), ("BHE", 0), ("BDF", 2)}

    # The relay archives the frames byte for byte: what it serves (and exports) keeps them.
    from ims_station.relay.archive import FileArchive, FrameRecord

    with FileArchive(tmp_path / "archive") as arch:
        frame, _ = cd11.parse_frame(raws[0])
        arch.commit([FrameRecord("XS01", "XS01:0", frame.sequence, 0, raws[0])])
        back, _ = cd11.parse_frame(arch.read_frame("XS01:0", frame.sequence))
    sub = {s["chan"]: s for s in back.to_dict(samples=False)["subframes"]}
    assert sub["BDF"]["sensor_type"] == 2 and sub["BDF"]["calib"] == f32(want[("10", "BDF")]["calib"])


@pytest.mark.parametrize("name", boards.list_boards())
def test_shipped_boards_calib_is_in_cd11_units(name):
    """Seismic: nm of displacement per count at calper; else the unit per count -- as the channel's
    nominal sensitivity and gain give it.  (The sim board had 0.0954, its nm/s per count, and
    0.00357 for a microbarometer whose count is 1.8 uPa.)"""
    for i, ch in enumerate(boards.load_board(name)["channels"]):
        assert math.isclose(ch["calib"], boards.nominal_calib(ch), rel_tol=0.01), (name, i, ch["channel"])


def test_nominal_calib_of_a_velocity_sensor_is_displacement_at_calper():
    ch = {"sensor": "seismic", "unit": "m/s", "gain": 1, "sensitivity": 1500.0, "calper": 1.0}
    nm_per_s = 1.2 / 2 ** 23 / 1500.0 * 1e9                    # 0.0954 nm/s per count
    assert math.isclose(boards.nominal_calib(ch), nm_per_s / (2 * math.pi))
    assert math.isclose(boards.nominal_calib(ch, calper=20.0), nm_per_s * 20 / (2 * math.pi))
    assert math.isclose(boards.nominal_calib(dict(ch, sensor="infrasonic", unit="Pa", sensitivity=0.02, gain=4)),
                        1.2 / 4 / 2 ** 23 / 0.02)
