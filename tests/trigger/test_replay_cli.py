"""``ims-station trigger replay`` (edge/trigger_cli.py): miniSEED written by ObsPy, read with pymseed,
run through the station's Detector; the JSON equals ObsPy's ``coincidence_trigger``; bad files and
bad settings end with one line and exit status 2."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ims_station.cli import main


@pytest.fixture(scope="module")
def uh_file(real_stream, tmp_path_factory):
    st = real_stream.copy()
    for tr in st:
        tr.data = tr.data.astype(np.int32)
    f = tmp_path_factory.mktemp("replay") / "uh.mseed"
    st.write(str(f), format="MSEED")
    return f


def replay(capsys, *args):
    rc = main(["trigger", "replay", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


def test_replay_prints_the_events_obspy_finds(obspy, uh_file, capsys):
    from obspy.signal.trigger import coincidence_trigger

    st = obspy.read(str(uh_file))
    ref = coincidence_trigger("recstalta", 3.5, 1.0, st.copy().filter("bandpass", freqmin=10, freqmax=20), 3,
                              sta=0.5, lta=10)
    assert ref
    rc, out, _ = replay(capsys, uh_file, "--algorithm", "recstalta", "--sta", 0.5, "--lta", 10, "--on", 3.5,
                        "--off", 1.0, "--filter", "bandpass:10:20", "--coincidence", 3, "--max-duration", 1e6,
                        "--min-duration", 0, "--json")        # ObsPy has no minimum duration
    assert rc == 0
    events = json.loads(out)["events"]
    assert len(events) == len(ref)
    for e, r in zip(events, ref):
        assert e["time"] == r["time"].strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        assert e["duration"] == pytest.approx(r["duration"], abs=2e-6)
        assert (e["stations"], e["channels"], e["coincidence_sum"]) == (r["stations"], r["trace_ids"],
                                                                       r["coincidence_sum"])
        assert e["peak"] >= 3.5
        # the refined pick: at or before the trigger time, within the 3-s window and the filter's delay
        assert r["time"].timestamp - 3.2 <= e["pick_s"] <= r["time"].timestamp + 1e-6 and e["pick"] <= e["time"]
    rc, out, _ = replay(capsys, uh_file, "--sta", 0.5, "--lta", 10, "--on", 3.5, "--off", 1.0, "--filter",
                        "bandpass:10:20", "--coincidence", 3, "--max-duration", 1e6, "--min-duration", 0,
                        "--pick", "none", "--json")
    assert [(e["time"], e["pick"]) for e in json.loads(out)["events"]] == [(e["time"], e["time"]) for e in events]


def test_replay_takes_the_settings_of_a_station_file_and_options_override_them(uh_file, tmp_path, capsys):
    conf = tmp_path / "station.toml"
    conf.write_text('[station]\ncode = "UH"\nnetwork = "BW"\n\n[[ports]]\nurl = "sim://x"\nkey_file = "none"\n\n'
                    '[trigger]\nsta = 0.5\nlta = 10\non = 3.5\noff = 1.0\nfilter = "bandpass:10:20"\n'
                    'coincidence_sum = 3\nchannels = ["*.SHZ"]\n')
    rc, out, _ = replay(capsys, uh_file, "--config", conf, "--json")
    events = json.loads(out)["events"]
    assert rc == 0 and events and all(c.endswith("SHZ") for e in events for c in e["channels"])
    # the three vertical channels only: a sum of 3 at most
    assert {e["coincidence_sum"] for e in events} == {3.0}
    rc, out, err = replay(capsys, uh_file, "--config", conf, "--coincidence", 4, "--json")
    assert rc == 2 and "trigger.(option --coincidence) coincidence_sum" in err and "never be reached" in err


@pytest.mark.parametrize("args, message", [
    (["--sta", 10, "--lta", 5], "--sta: must be shorter than lta"),
    (["--on", 1, "--off", 2], "--off: must be below on"),
    (["--filter", "bandpass:10:30"], "--filter: 30.0 Hz is at or above Nyquist (25.0 Hz)"),
    (["--filter", "comb:3"], "--filter:"),
    (["--algorithm", "zdetect"], "--algorithm: 'zdetect' is not one of"),
    (["--min-duration", -1], "--min-duration: must not be negative"),
])
def test_bad_settings_exit_2_naming_the_option(uh_file, capsys, args, message):
    rc, out, err = replay(capsys, uh_file, *args)
    assert rc == 2 and out == "" and message in err and err.count("\n") == 1, err


def test_bad_files_exit_2_with_one_line(tmp_path, capsys):
    junk = tmp_path / "junk.mseed"
    junk.write_bytes(b"\x00garbage" * 100)
    for f, message in ((junk, "not readable as miniSEED"), (tmp_path / "missing.mseed", "cannot read"),
                       (tmp_path, "not a file")):
        rc, out, err = replay(capsys, f)
        assert rc == 2 and message in err and err.count("\n") == 1, err


def test_arguments_argparse_refuses_exit_2(capsys):
    with pytest.raises(SystemExit) as ei:
        main(["trigger", "replay", "x.mseed", "--sta", "abc"])
    assert ei.value.code == 2
