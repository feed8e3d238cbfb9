"""The demo's and the network simulation's frame accounting (issue 13, "Demo and report that
scale"): station codes valid for CD-1.1 at any count, and a ``lost`` that counts frames never
built as well as frames never archived, so a station that fails cannot look healthy."""

from __future__ import annotations

import re

import pytest

from ims_station.demo import (CD11_EPOCH, expected_frame_seqs, frame_accounting, loss_failures,
                              station_codes)
from ims_station.topics import STATION_RE


@pytest.mark.parametrize("n", [1, 9, 10, 20, 35, 36, 321, 1295])
def test_station_codes_are_valid_everywhere_at_any_count(n):
    codes = station_codes("DEMO", n)
    assert len(codes) == len(set(codes)) == n
    for c in codes:
        # CD-1.1 site and SEED station: 5 characters; station file: [A-Z0-9]{1,5}; MQTT topic level
        assert re.fullmatch(r"[A-Z0-9]{1,5}", c) and STATION_RE.match(c), c
    if n <= 9:
        assert codes[0] == "DEMO1"


def test_station_codes_refuse_what_cannot_fit():
    with pytest.raises(ValueError):
        station_codes("DEMO", 36 ** 4)
    with pytest.raises(ValueError):
        station_codes("de", 3)


def test_expected_frames_cover_the_sampling_span():
    start = CD11_EPOCH + 1000 * 10 + 3        # 3 s into window 1000
    assert expected_frame_seqs(start, 45.0, 10.0) == {1000, 1001, 1002, 1003, 1004}
    # a window touched only within the allowance at the end is not owed
    assert expected_frame_seqs(CD11_EPOCH + 10_000, 30.5, 10.0) == {1000, 1001, 1002}
    assert expected_frame_seqs(CD11_EPOCH, 1.5, 10.0) == set()
    # a run that stops before the framer's max_wait_s owes no cut last window
    assert expected_frame_seqs(start, 45.0, 10.0, partial_end=False) == {1000, 1001, 1002, 1003}
    assert expected_frame_seqs(CD11_EPOCH + 10_000, 30.0, 10.0, partial_end=False) == {1000, 1001, 1002}


def test_a_station_that_builds_nothing_is_lost_not_healthy():
    expected = set(range(100, 106))
    healthy = frame_accounting(expected, set(expected), set(expected))
    dead = frame_accounting(expected, set(), set())
    assert healthy["lost"] == 0 and dead["lost"] == 6 and dead["never_built"] == 6
    failures = loss_failures({"DEMO1": {**healthy, "error": None}, "DEMO2": {**dead, "error": None}})
    assert len(failures) == 1 and failures[0].startswith("DEMO2: 6 of 6 frame(s) lost (6 never built")


def test_built_but_not_archived_and_evictions():
    expected = {1, 2, 3}
    a = frame_accounting(expected, {1, 2, 3, 4}, {1, 2})
    assert a == {"expected": 3, "built": 4, "archived": 2, "never_built": 0, "built_not_archived": 2,
                 "lost": 2, "unexpected": 0}
    # frames the outbox evicted on purpose (with an alarm) are not a fault; an error always is
    assert loss_failures({"S": {**a, "error": None}}, evicted={"S": 2}) == []
    assert loss_failures({"S": {**a, "error": "OSError: boom"}}, evicted={"S": 2}) == ["S: stopped: OSError: boom"]
    odd = frame_accounting(expected, expected, {1, 2, 3, 9})
    assert odd["unexpected"] == 1 and loss_failures({"S": {**odd, "error": None}})
