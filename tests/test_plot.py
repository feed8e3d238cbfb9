"""``ims-station plot event|soh`` (ims_station/plot.py, docs/plots.md): PNGs that render (signature,
size, not blank), the event's trigger found by the station's own code, and one-line errors with exit
status 2 for missing data, bad options and a missing matplotlib."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from ims_station.cli import main
from tests.conftest import need_module

T0_NS = 1_780_000_000 * 1_000_000_000          # 2026-05-28T20:26:40Z
RATE = 50.0
EVENT_S = 60.0                                  # burst 60 s after the start of the file
T_EVENT = "2026-05-28T20:27:40Z"


@pytest.fixture(scope="module")
def mseed(tmp_path_factory):
    """Two minutes of noise on XX.PLT..BHZ/BHN/BHE at 50 sps with a 5-s burst at 60 s, written by
    pymseed (libmseed) as Steim-2 miniSEED."""
    import pymseed

    rng = np.random.default_rng(11)
    n = int(120 * RATE)
    t = np.arange(n) / RATE
    traces = pymseed.MS3TraceList()
    for ch in ("BHZ", "BHN", "BHE"):
        x = rng.normal(0.0, 100.0, n)
        burst = (t >= EVENT_S) & (t < EVENT_S + 5.0)
        x[burst] += 3000.0 * np.sin(2 * np.pi * 5.0 * t[burst]) * np.exp(-(t[burst] - EVENT_S))
        traces.add_data(pymseed.nslc2sourceid("XX", "PLT", "", ch), np.round(x).astype(np.int32), "i", RATE,
                        starttime=T0_NS)
    f = tmp_path_factory.mktemp("plot") / "XX.PLT.mseed"
    traces.to_file(str(f), overwrite=True, encoding=pymseed.DataEncoding.STEIM2, format_version=2)
    return f


def check_png(path, min_w=300, min_h=150):
    """A PNG of at least min_w x min_h pixels that is not blank."""
    from matplotlib import image

    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = struct.unpack(">II", raw[16:24])
    assert w >= min_w and h >= min_h
    img = image.imread(path)
    assert img[..., :3].std() > 0.05                                           # pixel variance
    assert np.unique(img.reshape(-1, img.shape[-1]), axis=0).shape[0] > 10     # many colours
    return w, h


def run(capsys, *args):
    rc = main(list(map(str, args)))
    out, err = capsys.readouterr()
    return rc, out, err


def test_plot_event_from_mseed_draws_the_channels_and_finds_the_trigger(mseed, tmp_path, capsys):
    need_module("matplotlib", "pip install -e .[plot]")
    png = tmp_path / "event.png"
    rc, out, err = run(capsys, "plot", "event", "--mseed", mseed, "--station", "PLT", "--time", T_EVENT,
                       "--before", 20, "--after", 30, "--sta", 0.5, "--lta", 10, "--on", 3.5, "--off", 1.5,
                       "--out", png, "--json")
    assert rc == 0, err
    doc = json.loads(out)
    assert [c["channel"] for c in doc["channels"]] == ["XX.PLT..BHE", "XX.PLT..BHN", "XX.PLT..BHZ"]
    assert all(c["channel_triggers"] >= 1 for c in doc["channels"])
    # the station's Detector declares the event at the burst (within a second)
    assert doc["events"] and abs(float(doc["events"][0]["on"][17:19]) - 40.0) < 1.0, doc["events"]
    w, h = check_png(png)
    assert h > w / 2                     # six rows: three channels, each with its characteristic function


def test_plot_event_with_a_station_file_and_one_channel(mseed, tmp_path, capsys):
    need_module("matplotlib", "pip install -e .[plot]")
    conf = tmp_path / "station.toml"
    conf.write_text('[station]\ncode = "PLT"\nnetwork = "XX"\n\n[[ports]]\nurl = "sim://x"\nkey_file = "none"\n\n'
                    '[trigger]\nsta = 0.5\nlta = 10\non = 4\noff = 1.5\nfilter = "bandpass:1:10"\n'
                    'pre_event = 5\npost_event = 15\n')
    png = tmp_path / "z.png"
    rc, out, err = run(capsys, "plot", "event", "--mseed", mseed, "--station", "PLT", "--time", T_EVENT,
                       "--config", conf, "--channel", ".BHZ", "--out", png, "--json")
    assert rc == 0, err
    doc = json.loads(out)
    assert [c["channel"] for c in doc["channels"]] == ["XX.PLT..BHZ"]
    assert (doc["from"], doc["to"]) == ("2026-05-28T20:27:35.000000Z", "2026-05-28T20:27:55.000000Z")
    check_png(png)


@pytest.mark.parametrize("args, message", [
    (["--station", "NOPE", "--time", T_EVENT], "no samples of station NOPE"),
    (["--station", "PLT", "--time", "2030-01-01T00:00:00Z"], "no samples of"),
    (["--station", "PLT", "--time", "yesterday"], "--time: 'yesterday' is not an ISO 8601 time"),
    (["--station", "PLT", "--time", T_EVENT, "--channel", "*.HHZ"], "--channel: *.HHZ selects none"),
    (["--station", "PLT", "--time", T_EVENT, "--sta", 40], "--sta: must be shorter than lta"),
])
def test_plot_event_errors_exit_2_with_one_line(mseed, tmp_path, capsys, args, message):
    need_module("matplotlib", "pip install -e .[plot]")
    png = tmp_path / "x.png"
    rc, out, err = run(capsys, "plot", "event", "--mseed", mseed, *args, "--out", png)
    assert rc == 2 and out == "" and message in err and err.count("\n") == 1, err
    assert not png.exists()


def test_plot_event_of_a_file_that_is_not_mseed(tmp_path, capsys):
    need_module("matplotlib", "pip install -e .[plot]")
    junk = tmp_path / "junk.mseed"
    junk.write_bytes(b"no miniSEED here" * 64)
    rc, _, err = run(capsys, "plot", "event", "--mseed", junk, "--station", "PLT", "--time", T_EVENT,
                     "--out", tmp_path / "x.png")
    assert rc == 2 and "junk.mseed" in err and err.count("\n") == 1


def test_without_matplotlib_both_plots_say_which_extra(mseed, tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)         # import matplotlib -> ImportError
    soh = tmp_path / "soh.jsonl"
    soh.write_text('{"station": "PLT", "time": 1, "outbox": {"frames": 1}}\n')
    for args in (["event", "--mseed", mseed, "--station", "PLT", "--time", T_EVENT],
                 ["soh", soh, "--fields", "outbox.frames"]):
        rc, _, err = run(capsys, "plot", *args, "--out", tmp_path / "x.png")
        assert rc == 2 and "pip install 'ims-station[plot]'" in err and err.count("\n") == 1


def soh_lines(n=30, station="PLT"):
    """SOH documents as the uplink publishes them (docs/topics.md), one per minute: the outbox fills
    and drains, ``published`` counts 6 frames a minute, the gateway restarts (counters from 0) once."""
    for i in range(n):
        published = 6 * (i if i < 20 else i - 20)
        yield json.dumps({"station": station, "time": 1_780_000_000.0 + 60 * i,
                          "uplink": {"connected": i % 10 != 5, "published": published},
                          "outbox": {"frames": (i * 7) % 23, "oldest_age_s": None if i % 3 else 12.5}})


def test_plot_soh_draws_fields_and_counter_rates(tmp_path, capsys):
    need_module("matplotlib", "pip install -e .[plot]")
    f = tmp_path / "soh.jsonl"
    lines = list(soh_lines())
    lines.insert(3, "not json")
    lines[7] = "ims/PLT/soh " + lines[7]                        # what mosquitto_sub -v prints
    f.write_text("\n".join(lines) + "\n")
    png = tmp_path / "soh.png"
    rc, out, err = run(capsys, "plot", "soh", f, "--fields", "outbox.frames,uplink.published/s,uplink.connected",
                       "--out", png, "--json")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["documents"] == 30 and doc["skipped"] == 1
    assert doc["fields"] == {"outbox.frames": ["PLT"], "uplink.published/s": ["PLT"], "uplink.connected": ["PLT"]}
    check_png(png)


def test_soh_counter_rate_leaves_a_gap_at_a_restart():
    from ims_station.plot import soh_series

    docs = [(t, "PLT", json.loads(line)) for t, line in
            ((1_780_000_000.0 + 60 * i, line) for i, line in enumerate(soh_lines()))]
    ts, vs = soh_series(docs, "uplink.published/s")["PLT"]
    assert len(ts) == 29 and vs[:19] == [0.1] * 19 and np.isnan(vs[19]) and vs[20:] == [0.1] * 9


@pytest.mark.parametrize("content, args, message", [
    ("", ["--fields", "outbox.frames"], "no SOH documents with a 'time' time"),
    ('{"station": "PLT", "outbox": {"frames": 1}}\n', ["--fields", "outbox.frames"], "(1 line(s) skipped)"),
    (None, ["--fields", "outbox.nope"], "--fields: no numeric value of outbox.nope in 30 document(s)"),
    (None, ["--fields", "outbox.frames", "--station", "OTHER"], "for station OTHER"),
    (None, ["--fields", " , "], "--fields: name at least one field"),
])
def test_plot_soh_errors_exit_2_with_one_line(tmp_path, capsys, content, args, message):
    need_module("matplotlib", "pip install -e .[plot]")
    f = tmp_path / "soh.jsonl"
    f.write_text("\n".join(soh_lines()) + "\n" if content is None else content)
    rc, out, err = run(capsys, "plot", "soh", f, *args, "--out", tmp_path / "x.png")
    assert rc == 2 and out == "" and message in err and err.count("\n") == 1, err
    rc, _, err = run(capsys, "plot", "soh", tmp_path / "missing.jsonl", "--fields", "a", "--out", tmp_path / "x.png")
    assert rc == 2 and "missing.jsonl: cannot read" in err


def test_docs_name_only_options_the_commands_have():
    """docs/plots.md: every option it shows exists in the parser of its command."""
    import re
    from pathlib import Path

    from ims_station.cli import build_parser

    doc = (Path(__file__).resolve().parents[1] / "docs" / "plots.md").read_text()
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["plot"]
    cmds = next(a for a in sub._actions if a.dest == "plot_command").choices
    soh = next(a for a in build_parser()._actions if a.dest == "command").choices["soh"]
    cmds = dict(cmds, record=next(a for a in soh._actions if a.dest == "soh_command").choices["record"])
    for name, command in (("event", "plot event"), ("soh", "plot soh"), ("record", "soh record")):
        known = {o for a in cmds[name]._actions for o in a.option_strings}
        usage = doc[doc.index(f"ims-station {command} "):]
        usage = usage[:usage.index("\n\n")]
        shown = set(re.findall(r"--[a-z][a-z-]*", usage))
        assert shown and shown <= known, shown - known


def test_soh_record_appends_what_the_broker_delivers_and_plot_soh_draws_it(mosquitto, tmp_path, capsys):
    """``soh record`` (ims_station/sohrecord.py) against a Mosquitto: the retained document and the
    next ones, one line each; junk on the topic is dropped; recorded twice, ``plot soh`` reads it once."""
    import threading

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    need_module("matplotlib", "pip install -e .[plot]")
    docs = list(soh_lines(5))
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="plot-soh-test-pub")
    pub.connect(mosquitto.host, mosquitto.port)
    pub.loop_start()
    try:
        pub.publish("ims/PLT/soh", docs[0], qos=1, retain=True).wait_for_publish(10)
        out = tmp_path / "soh.jsonl"
        for rounds in range(2):                       # the second run gets the retained document again
            result: dict = {}
            size0 = out.stat().st_size if out.exists() else 0
            t = threading.Thread(target=lambda: result.setdefault("rc", main(
                ["soh", "record", "--broker", f"{mosquitto.host}:{mosquitto.port}", "--station", "PLT",
                 "--out", str(out), "--count", "5"])), daemon=True)
            t.start()
            for _ in range(400):                        # subscribed: the retained document arrived
                if out.exists() and out.stat().st_size > size0:
                    break
                t.join(0.05)
            if rounds == 0:
                pub.publish("ims/PLT/soh", b"\xff not json", qos=1).wait_for_publish(10)
                for d in docs[1:]:
                    pub.publish("ims/PLT/soh", d, qos=1).wait_for_publish(10)
            else:
                for d in docs[1:]:
                    pub.publish("ims/PLT/soh", d, qos=1).wait_for_publish(10)
            t.join(30)
            assert not t.is_alive() and result["rc"] == 0
            err = capsys.readouterr().err
            assert "5 document(s) written" in err and ("1 dropped" in err if rounds == 0 else "0 dropped" in err)
    finally:
        pub.loop_stop()
        pub.disconnect()
    lines = out.read_text().splitlines()
    assert len(lines) == 10 and [json.loads(x) for x in lines[:5]] == [json.loads(d) for d in docs]
    png = tmp_path / "soh.png"
    rc, stdout, err = run(capsys, "plot", "soh", out, "--fields", "outbox.frames", "--out", png, "--json")
    assert rc == 0 and json.loads(stdout)["documents"] == 5, err
    check_png(png)


def test_soh_recorder_writes_only_soh_objects():
    """Every message is untrusted: another kind's topic, a foreign prefix, junk, a JSON that is not an
    object, an oversized payload are dropped and counted; none ends the recorder."""
    import io

    from ims_station.sohrecord import MAX_MESSAGE, SohRecorder

    fh = io.StringIO()
    rec = SohRecorder(fh, prefix="ims", count=2)
    good = b'{"station": "PLT", "time": 1.5, "outbox": {"frames": 3}}'
    cases = [("ims/PLT/status", good), ("other/PLT/soh", good), ("ims/PLT/soh", b"\x00\xff"),
             ("ims/PLT/soh", b"[1, 2]"), ("ims/PLT/soh", b"[" * 100_000), ("ims/PLT/soh", b" " * MAX_MESSAGE + good),
             ("ims/PLT/soh", good), ("ims", b"")]
    assert [rec.feed(t, p) for t, p in cases] == [False] * 6 + [True, False]
    assert rec.counters == {"written": 1, "dropped": 7} and not rec.done.is_set()
    assert fh.getvalue() == '{"station":"PLT","time":1.5,"outbox":{"frames":3}}\n'
    rec.feed("ims/PLT/soh", good)
    assert rec.done.is_set()
