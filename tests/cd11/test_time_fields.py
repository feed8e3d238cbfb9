"""Issue 7 §1: a CD-1.1 time field is accepted only if it converts both ways (text <-> datetime /
ms since 1970), else the codec's own error names the field and the byte offset; building with a
time no time stamp can hold is a codec build error, never ValueError/OverflowError."""

from __future__ import annotations

import struct
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ims_station import cd11
from ims_station.cd11.timefmt import check_time, format_time, to_datetime, to_epoch, to_ms

from ..relay.cd11_writer import NOMINAL_TIME_OFFSET, crc64, data_frame

#: Well-formed text (the digit pattern), outside what datetime holds or the calendar allows.
OUT_OF_CALENDAR = ["0000001 00:00:00.000", "9999365 23:59:60.999", "9999365 23:59:60.000",
                   "2023000 00:00:00.000", "2023366 00:00:00.000", "2024367 00:00:00.000",
                   "2024001 24:00:00.000", "2024001 23:60:00.000", "2024001 23:59:61.000",
                   "0000366 23:59:59.999"]
CHANS = [("STA03", "BHZ", "00"), ("STA03", "BHN", "00")]
GOOD = "2026337 12:00:00.000"


@pytest.mark.parametrize("bad", OUT_OF_CALENDAR)
def test_data_frame_nominal_time_out_of_calendar_is_a_field_error_at_its_offset(bad):
    raw = data_frame("STA03", 1, bad, CHANS, times=[GOOD, GOOD])
    with pytest.raises(cd11.Cd11FieldError) as err:
        cd11.parse_frame(raw)
    assert err.value.field == "data.nominal_time" and err.value.offset == NOMINAL_TIME_OFFSET
    assert bad in str(err.value)


@pytest.mark.parametrize("bad", OUT_OF_CALENDAR)
def test_subframe_time_out_of_calendar_is_a_field_error_at_its_offset(bad):
    raw = data_frame("STA03", 1, GOOD, CHANS, times=[GOOD, bad])
    with pytest.raises(cd11.Cd11FieldError) as err:
        cd11.parse_frame(raw)
    assert err.value.field == "data.subframe[1].time"
    assert raw[err.value.offset:err.value.offset + 20] == bad.encode()


@pytest.mark.parametrize("bad", OUT_OF_CALENDAR)
def test_command_frame_time_out_of_calendar_is_a_field_error_at_its_offset(bad):
    good = cd11.CommandRequest(creator="IDC", station="STA03", time=GOOD, command="x").to_bytes()
    at = good.index(GOOD.encode())
    pre = good[:at] + bad.encode() + good[at + 20:-8]
    with pytest.raises(cd11.Cd11FieldError) as err:
        cd11.parse_frame(pre + struct.pack(">Q", crc64(pre)))
    assert err.value.field == "command.time" and err.value.offset == at


@pytest.mark.parametrize("bad", ["0000001 00:00:00.000", "9999365 23:59:60.999", "2023366 00:00:00.000"])
def test_building_with_an_out_of_calendar_text_is_a_build_error(bad):
    ch = cd11.ChannelInput("STA03", "BHZ", "00", [1, 2, 3], 40.0, GOOD, None, None)
    with pytest.raises(cd11.Cd11BuildError):
        cd11.build_data_frame("STA03", 1, bad, [ch], None)
    with pytest.raises(cd11.Cd11BuildError):
        cd11.CommandRequest(creator="IDC", station="STA03", time=bad, command="x").to_bytes()


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), 1e20, -1e15, 253402300800.0,
                                   -62135596801.0,
                                   datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1))),
                                   datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-2)))])
def test_format_time_outside_years_1_to_9999_is_a_build_error(value):
    with pytest.raises(cd11.Cd11BuildError):
        format_time(value)
    ch = cd11.ChannelInput("STA03", "BHZ", "00", [1, 2, 3], 40.0, GOOD, None, None)
    with pytest.raises(cd11.Cd11BuildError):
        cd11.build_data_frame("STA03", 1, value, [ch], None)


def test_the_extremes_that_convert_are_accepted():
    for text in ("0001001 00:00:00.000", "9999365 23:59:59.999", "2024366 23:59:60.500"):
        raw = data_frame("STA03", 1, text, CHANS[:1])
        assert cd11.parse_frame(raw)[0].nominal_time == text
    assert format_time(to_epoch("0001001 00:00:00.000")) == "0001001 00:00:00.000"
    assert format_time(to_ms("9999365 23:59:59.999") / 1000) == "9999365 23:59:59.999"


_digits = st.text("0123456789", min_size=1, max_size=1)


@st.composite
def stamps(draw):
    """Texts of the right shape (``yyyyddd hh:mm:ss.ttt``), fields drawn near and past their edges."""
    year = draw(st.sampled_from([0, 1, 2, 1969, 1970, 2000, 2024, 2100, 9998, 9999]) | st.integers(0, 9999))
    doy = draw(st.sampled_from([0, 1, 59, 60, 365, 366, 367, 999]) | st.integers(0, 999))
    h = draw(st.sampled_from([0, 23, 24, 99]) | st.integers(0, 99))
    m = draw(st.sampled_from([0, 59, 60, 99]) | st.integers(0, 99))
    s = draw(st.sampled_from([0, 59, 60, 61, 99]) | st.integers(0, 99))
    ms = draw(st.sampled_from([0, 999]) | st.integers(0, 999))
    return f"{year:04d}{doy:03d} {h:02d}:{m:02d}:{s:02d}.{ms:03d}"


@settings(max_examples=400, deadline=None)
@given(stamps())
def test_accepted_means_converts_both_ways(text):
    """check_time (what the parser applies) accepts exactly the texts that convert: to datetime,
    to epoch seconds and ms, and back to text (identical unless a leap second rolled over)."""
    raw = text.encode()
    try:
        dt = to_datetime(text)
        back = format_time(dt)
        ms = to_ms(text)
        converts = True
    except (ValueError, OverflowError, cd11.Cd11BuildError):
        converts = False
    calendar_ok = converts and int(text[8:10]) < 24 and int(text[11:13]) < 60 and int(text[14:16]) <= 60 \
        and 1 <= int(text[4:7]) <= (366 if dt.year == int(text[:4]) and _leap(int(text[:4])) else 365)
    reason = check_time(raw)
    if reason is None:
        assert converts and calendar_ok, text
        assert format_time(ms / 1000) == back and to_datetime(back) == dt
        if text[14:16] != "60":
            assert back == text
    else:
        assert not calendar_ok, (text, reason)


def _leap(y: int) -> bool:
    return y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)
