"""``ims-station plot event --archive`` (ims_station/plot.py, docs/plots.md): CD-1.1 frames in the relay
archive, read through the archive's miniSEED export, and the archived event at ``--time`` choosing the
channels, the network code and the window."""

from __future__ import annotations

import json
from datetime import timedelta

import numpy as np
import pytest

from ims_station.cli import main
from ims_station.relay.archive import FrameRecord
from tests.conftest import need_module
from tests.test_plot import check_png

from .conftest import EPOCH_2000, nominal_of
from .test_events import NOW, T, event_doc, iso, make_event, new_core, run

T_EVENT = NOW - 5                 # the burst and the archived event


def burst_samples(factory):
    """Noise with a 4-s burst at T_EVENT on every channel (instead of the factory's random walk)."""
    def samples(seq, ci):
        n = int(10 * factory.rate)
        t = (nominal_of(seq) - EPOCH_2000).total_seconds() + EPOCH_2000.timestamp() + np.arange(n) / factory.rate
        x = np.random.default_rng(seq * 10 + ci).normal(0.0, 100.0, n)
        b = (t >= T_EVENT) & (t < T_EVENT + 4.0)
        x[b] += 4000.0 * np.sin(2 * np.pi * 4.0 * t[b])
        return np.round(x).astype(np.int32)
    return samples


# `ims-station plot event` opens an archive by its path (--archive): the SQLite layout only (the
# PostgreSQL backend is reached through a relay config, which `plot` does not take).
@pytest.mark.parametrize("stores", ["sqlite"], indirect=True)
def test_plot_event_from_the_archive_takes_the_archived_event(tmp_path, keys, clock, factory, capsys, stores):
    need_module("matplotlib", "pip install -e .[plot]")
    from ims_station import cd11
    from ims_station.cd11.timefmt import to_epoch

    core = new_core(tmp_path, keys, clock, stores)
    chans = ["XX.STA01.00.BHZ", "XX.STA01.00.BHN"]
    assert run(core, (T, make_event(keys, 0, t=T_EVENT, channels=chans)),
               (T, make_event(keys, 1, state="off", t=T_EVENT, channels=chans))) == ["archived"] * 2
    core.close()
    factory.samples = burst_samples(factory)
    first = int((NOW - EPOCH_2000.timestamp()) // 10) - 12                # two minutes before, one after
    recs = []
    for s in range(first, first + 18):
        raw = factory.build(s)
        f, _ = cd11.parse_frame(raw)
        recs.append(FrameRecord("STA01", "STA01:0", s, int(round(to_epoch(f.nominal_time) * 1000)), raw))
    with stores.archive(tmp_path / "archive") as arc:
        arc.commit(recs)

    png = tmp_path / "ev.png"
    rc = main(["plot", "event", "--archive", str(tmp_path / "archive"), "--station", "STA01", "--time",
               iso(T_EVENT), "--sta", "0.5", "--lta", "10", "--out", str(png), "--json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    doc = json.loads(out)
    # the archived event's channels (not BHE), its network code, its duration (3.5 s) + post_event (20 s)
    assert doc["archived_event"] == "STA01-1"
    assert [c["channel"] for c in doc["channels"]] == ["XX.STA01.00.BHN", "XX.STA01.00.BHZ"]
    assert doc["to"] == "2023-11-14T22:13:38.500000Z"                      # NOW - 5 + 3.5 + 20
    assert all(c["channel_triggers"] >= 1 for c in doc["channels"]) and doc["events"]
    check_png(png)

    # no frames of that hour: one line, exit 2
    later = iso(T_EVENT + timedelta(days=3).total_seconds())
    rc = main(["plot", "event", "--archive", str(tmp_path / "archive"), "--station", "STA01", "--time", later,
               "--out", str(tmp_path / "x.png")])
    _, err = capsys.readouterr()
    assert rc == 2 and "no archived data of station STA01" in err and err.count("\n") == 1
    rc = main(["plot", "event", "--archive", str(tmp_path / "nothing"), "--station", "STA01", "--time", later,
               "--out", str(tmp_path / "x.png")])
    _, err = capsys.readouterr()
    assert rc == 2 and "no relay archive here" in err
