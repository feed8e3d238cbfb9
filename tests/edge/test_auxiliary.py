"""Auxiliary mode in the station assembly (edge/auxiliary.py, edge/station.py): the station-file
switch, and every emitted event releasing its data -- [onset - pre, now + post] on "on",
[onset - pre, end + post] on "off" -- whichever stage emitted it."""

from __future__ import annotations

import pytest

from ims_station.clock import FakeClock
from ims_station.config import write_secret_file
from ims_station.edge.auxiliary import EventRelease, release_window
from ims_station.edge.config import load_station_config
from ims_station.errors import ConfigError

STATION = """
[station]
code = "AUX1"
network = "XX"
data_dir = "data"
{mode}

[[ports]]
url = "sim://nowhere"
board_id = 1
key_file = "board.key"
channels = {{ 0 = "00.BHZ" }}
{extra}
"""


def station_file(tmp_path, mode='mode = "auxiliary"', extra="[auxiliary]\nrelease_pre_s = 20\nrelease_post_s = 40\n"):
    write_secret_file(tmp_path / "board.key", bytes(range(32)))
    f = tmp_path / "station.toml"
    f.write_text(STATION.format(mode=mode, extra=extra))
    return f


def test_release_windows_of_on_and_off_events():
    now = 1000.0
    assert release_window({"state": "on", "onset_s": 990.0}, now, 30, 60) == (960.0, 1060.0)
    assert release_window({"state": "off", "onset_s": 990.0, "end_s": 1020.0}, now, 30, 60) == (960.0, 1080.0)
    # The event's own margins win over the configured ones.
    assert release_window({"state": "on", "onset_s": 990.0, "pre_s": 5, "post_s": 1}, now, 30, 60) == (985.0, 1001.0)
    assert release_window({"state": "off", "onset_s": 990.0, "end_s": None}, now, 30, 60) == (960.0, 1060.0)
    # Not an event with an onset, or nonsense values: nothing (or bounded margins).
    for doc in ({"state": "on"}, {"type": "soh"}, {"state": "maybe", "onset_s": 1.0},
                {"state": "on", "onset_s": True}, {"state": "on", "onset_s": float("inf")}, {"state": "on", "onset_s": "x"}):
        assert release_window(doc, now, 30, 60) is None
    assert release_window({"state": "on", "onset_s": 990.0, "pre_s": -5, "post_s": 1e12}, now, 30, 60) == (990.0, 87400.0)


def test_event_release_wraps_the_emitter_and_survives_a_failing_outbox():
    clock = FakeClock(1000.0)
    calls = []

    class Box:
        fail = False

        def release(self, fs, a, b):
            if self.fail:
                raise OSError("disk full")
            calls.append((fs, a, b))
            return 3

    box, woken = Box(), []
    rel = EventRelease(box, "AUX1:0", clock, pre_s=30, post_s=60, on_release=lambda: woken.append(1))
    emitted = []
    emit = rel.wrap(lambda doc: emitted.append(doc) or len(emitted) - 1)
    assert emit({"type": "trigger", "state": "on", "onset_s": 995.0}) == 0
    assert calls == [("AUX1:0", 965.0, 1060.0)] and woken == [1]
    box.fail = True
    assert emit({"type": "trigger", "state": "off", "onset_s": 995.0, "end_s": 1010.0}) == 1   # the event still goes
    assert len(emitted) == 2 and rel.stats()["release_errors"] == 1 and rel.stats()["frames_released"] == 3


def test_the_station_file_switch(tmp_path):
    cfg = load_station_config(station_file(tmp_path))
    assert cfg.auxiliary and cfg.mode == "auxiliary"
    assert cfg.settings.get("auxiliary", "release_pre_s") == 20 and cfg.settings.get("auxiliary", "max_request_s") == 3600
    cfg = load_station_config(station_file(tmp_path, mode="", extra=""))
    assert not cfg.auxiliary and cfg.mode == "continuous"
    with pytest.raises(ConfigError) as ei:
        load_station_config(station_file(tmp_path, mode=""))
    assert ei.value.key == "auxiliary" and 'mode = "auxiliary"' in ei.value.reason
    with pytest.raises(ConfigError) as ei:
        load_station_config(station_file(tmp_path, extra="[auxiliary]\nmax_request_s = 0\n"))
    assert ei.value.key == "auxiliary.max_request_s"
    with pytest.raises(ConfigError) as ei:
        load_station_config(station_file(tmp_path, mode='mode = "secondary"', extra=""))
    assert ei.value.key == "station.mode"


def test_an_assembled_auxiliary_station_holds_its_data_and_its_events_release_it(tmp_path):
    """The one assembly (edge/station.assemble): data frames held, any stage's event (the
    StageContext emitter, exposed as Station.emit_event) releases its window."""
    from ims_station.edge.station import assemble

    clock = FakeClock(1_700_000_000.0)
    st = assemble(load_station_config(station_file(tmp_path)), clock=clock)
    try:
        assert st.uplink is None and st.auxiliary.stats()["requests"] == {"disabled": "no [uplink]"}
        fs = st.framer.frame_set
        t0 = clock.t - 300
        for i in range(30):
            st.outbox.put("cd11", fs, 1000 + i, t0 + 10 * i, b"f%d" % i)
        assert st.outbox.stats()["held"] == 30
        st.emit_event({"type": "trigger", "state": "on", "event_id": "e1", "onset_s": t0 + 150.0, "end_s": None})
        # [t0 + 130, now + 40): frames from t0 + 130 on (the on-event's window reaches the present).
        sent = st.outbox.next_to_send(100, live_window_s=1e9)
        assert [it.kind for it in sent].count("events") == 1
        assert sorted(it.seq for it in sent if it.kind == "cd11") == list(range(1013, 1030))
        assert st.auxiliary.stats()["events"]["frames_released"] == 17
    finally:
        st.close()
