"""Invalid IMS 2.0 input: every refusal is an Ims20Error naming the line, the block and the field; the
writer refuses what it could not write back (Ims20BuildError); unknown blocks and data types are kept."""

from __future__ import annotations

import dataclasses
import tracemalloc
from datetime import datetime, timezone

import numpy as np
import pytest

from ims_station.errors import LocalProtocolError, RemoteProtocolError
from ims_station.ims20 import Ims20BuildError, Ims20Error, Limits, parse, write
from ims_station.ims20 import model as m

MINIMAL = """BEGIN IMS2.0
MSG_TYPE DATA
MSG_ID 42 ctbto_idc
DATA_TYPE GASBKPHD
#Header 3
AAX01 AAX01_001 B CYLINDER FULL
01202601010011G
AAX01_001-2026/01/01-00:00:00.0 0 0
2026/01/01 12:00:00.0
#Acquisition
2026/01/01 00:00:00.0 40000.5 39990.25
#g_Spectrum
8 720
0 1 2 3 4 5
5 6 7 8
#Histogram
2 3 720 550
1 2 3
4 5 6
STOP
"""


def lines_of(text: str) -> list[str]:
    return text.splitlines()


def replace_line(n: int, new: str | None, text: str = MINIMAL) -> str:
    """*text* with its 1-based line *n* replaced (None: removed)."""
    ls = lines_of(text)
    if new is None:
        del ls[n - 1]
    else:
        ls[n - 1] = new
    return "\n".join(ls) + "\n"


def refused(text, **where) -> Ims20Error:
    with pytest.raises(Ims20Error) as info:
        parse(text)
    err = info.value
    for k, v in where.items():
        assert getattr(err, k) == v, f"{k}: {getattr(err, k)!r} != {v!r} ({err})"
    return err


def test_the_minimal_message_parses():
    msg = parse(MINIMAL)
    assert msg.source == "ctbto_idc"
    b = msg.body
    assert b.header.detbk_measurement_id == "0" and b.header.gasbk_measurement_id == "0"
    assert b.g_spectrum.counts.tolist() == [1, 2, 3, 4, 5, 6, 7, 8]
    assert b.histogram.counts.tolist() == [[1, 2, 3], [4, 5, 6]]
    assert parse(write(msg)) == msg


def test_the_error_is_a_remote_protocol_error_and_reads_line_block_field():
    err = refused(replace_line(11, "2026/01/01 00:00:00.0 forty 39990.25"), line=11, block="#Acquisition",
                  field="real_time")
    assert isinstance(err, RemoteProtocolError)
    assert str(err) == "IMS 2.0: line 11: #Acquisition: real_time: not a number: 'forty'"


@pytest.mark.parametrize("n, new, line, block, field, reason", [
    (1, "BEGIN IMS1.0", 1, "BEGIN", "", "expected 'BEGIN IMS2.0'"),
    (2, None, 3, "envelope", "", "no MSG_TYPE"),
    (3, "MSG_ID", 3, "MSG_ID", "", "1 to 2 field(s) expected"),
    (3, "MSG_ID 1 2 3", 3, "MSG_ID", "", "1 to 2 field(s) expected"),
    (4, "DATA_TYPE sample phd x", 4, "DATA_TYPE", "", "1 to 2 field(s) expected"),
    (4, "DATA_TYPE 9X", 4, "DATA_TYPE", "", "not a data type"),
    (5, "# Header", 5, "DATA_TYPE GASBKPHD", "", "block line without a block name"),
    (5, "#Header 3 4", 5, "#Header", "version", "one token expected"),
    (6, "AAX01 AAX01_001 X CYLINDER FULL", 6, "#Header", "system_type", "is not one of B, G, P"),
    (6, "AAX01 AAX01_001 B CYLINDER DONE", 6, "#Header", "qualifier", "is not one of FULL, PREL"),
    (6, "AAX01 AAX01_001 B CYLINDER", 6, "#Header", "qualifier", "missing"),
    (8, "a b c d", 8, "#Header", "", "1 unexpected field(s)"),
    (9, "2026/13/01 12:00:00.0", 9, "#Header", "transmit_time", "not a valid date and time"),
    (9, "2026-01-01 12:00:00.0", 9, "#Header", "transmit_time", "not a date yyyy/mm/dd"),
    (9, "2026/01/01 12:00", 9, "#Header", "transmit_time", "not a time hh:mm:ss"),
    (11, "2026/01/01 00:00:00.0 nan 1", 11, "#Acquisition", "real_time", "not a number"),
    (11, "2026/01/01 00:00:00.0 1e999 1", 11, "#Acquisition", "real_time", "not a finite number"),
    (11, "2026/01/01 00:00:00.0 1_000 1", 11, "#Acquisition", "real_time", "not a number"),
    (10, "#Acquisition extra", 10, "#Acquisition", "", "unexpected text after the block name"),
    (13, "9 720", 15, "#g_Spectrum", "", "9 counts declared, 8 present"),
    (13, "7 720", 15, "#g_Spectrum", "", "more counts than the 7 declared"),
    (13, "0 720", 13, "#g_Spectrum", "channels", "0 channels, outside 1..65536"),
    (13, "99999999 720", 13, "#g_Spectrum", "channels", "outside 1..65536"),
    (13, "8 720 1", 13, "#g_Spectrum", "", "expected 'channels energy_span'"),
    (14, "2 1 2 3 4 5", 14, "#g_Spectrum", "first_channel", "not 0 or 1"),
    (15, "6 6 7 8", 15, "#g_Spectrum", "", "row label '6' does not follow the previous rows (expected 5)"),
    (15, "5 6 -7 8", 15, "#g_Spectrum", "", "counts must be non-negative integers; found '-'"),
    (15, "5 6 7.0 8", 15, "#g_Spectrum", "", "counts must be non-negative integers; found '.'"),
    (15, "5 6 7 8 1234567890123456789", 15, "#g_Spectrum", "", "more counts than the 8 declared"),
    (17, "2 3 720", 17, "#Histogram", "", "expected 'gamma_channels beta_channels gamma_span beta_span'"),
    (17, "3 3 720 550", 19, "#Histogram", "", "9 counts declared, 6 present"),
    (17, "2048 2048 720 550", 17, "#Histogram", "", "2048 x 2048 cells, more than the limit"),
    (17, "2 3 720 x", 17, "#Histogram", "beta_span", "not a number"),
    (19, "4 5 6 7", 19, "#Histogram", "", "more counts than the 6 declared"),
    (19, "4 5 1234567890123456789", 19, "#Histogram", "", "a count has more than 18 digits"),
    (20, None, 19, "STOP", "", "the message ends without STOP"),
    (20, "STOP now", 20, "STOP", "", "text after STOP"),
])
def test_refusals_name_line_block_field(n, new, line, block, field, reason):
    err = refused(replace_line(n, new), line=line, block=block, field=field)
    assert reason in err.reason


def test_text_after_stop_and_other_envelope_faults():
    refused(MINIMAL + "\nMORE\n", line=22, block="STOP")
    refused(MINIMAL.replace("MSG_TYPE DATA\n", "MSG_TYPE DATA\nMSG_TYPE DATA\n"), line=3, block="MSG_TYPE")
    refused(MINIMAL.replace("MSG_ID 42 ctbto_idc\n", "MSG_ID 42\nHELLO there\n"), line=4, block="envelope")
    refused("", block="")
    refused("BEGIN IMS2.0\nMSG_TYPE DATA\nMSG_ID 1\nSTOP\n", line=3, block="envelope")   # no section
    err = refused(MINIMAL.replace("#Acquisition\n2026/01/01 00:00:00.0 40000.5 39990.25\n", ""),
                  line=4, block="DATA_TYPE GASBKPHD")
    assert "#Acquisition" in err.reason
    err = refused(MINIMAL.replace("GASBKPHD", "SAMPLEPHD"), line=4, block="DATA_TYPE SAMPLEPHD")
    assert "#Collection" in err.reason


def test_a_second_block_of_a_kind_is_refused():
    text = MINIMAL.replace("#g_Spectrum", "#Acquisition\n2026/01/01 00:00:00.0 1 1\n#g_Spectrum")
    err = refused(text, line=12, block="#Acquisition")
    assert "first is on line 10" in err.reason


def test_characters_and_sizes_are_checked_before_parsing():
    refused(MINIMAL.replace("ctbto_idc", "ctbto\x00idc"), line=3)
    err = refused(MINIMAL.replace("ctbto_idc", "ctbtö").encode("utf-8"), line=3)
    assert "not ASCII" in err.reason
    refused(MINIMAL.replace("ctbto_idc", "ctbtö"), line=3)      # str input as well
    refused(replace_line(7, "X" * 9000), line=7)
    for data in (MINIMAL, MINIMAL.encode()):
        with pytest.raises(Ims20Error, match="more than the limit of 300") as info:
            parse(data, Limits(max_message_bytes=300))
        assert info.value.line is None


def test_crlf_tabs_and_blank_lines_are_accepted():
    text = MINIMAL.replace("\n", "\r\n").replace("AAX01 AAX01_001", "AAX01\tAAX01_001").replace(
        "#Acquisition", "\n\n#Acquisition")
    assert parse(text) == parse(MINIMAL)
    keywords_in_lower_case = (MINIMAL.replace("BEGIN IMS2.0", "begin ims2.0").replace("MSG_TYPE DATA", "msg_type data")
                              .replace("MSG_ID", "msg_id").replace("DATA_TYPE GASBKPHD", "data_type gasbkphd")
                              .replace("STOP", "stop"))
    assert parse("\n\n" + keywords_in_lower_case) == parse(MINIMAL)


def test_declared_sizes_are_never_allocated_before_the_counts_are_there():
    # 65536 x 16 cells declared (the limit), a handful present: refused, and nothing near 8 MiB taken.
    text = replace_line(17, "65536 16 720 550", MINIMAL.replace("2 3 720 550", "2 3 720 550"))
    tracemalloc.start()
    try:
        with pytest.raises(Ims20Error, match="1048576 counts declared, 6 present"):
            parse(text)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000


def test_unknown_blocks_and_data_types_are_kept():
    text = MINIMAL.replace("#g_Spectrum", "#ROI_Chan_Limits 2\n1 2 3 4 5\n\n#g_Spectrum")
    msg = parse(text)
    assert msg.body.extra_blocks == (m.RawBlock("ROI_Chan_Limits", "2", ("1 2 3 4 5", "")),)
    assert parse(write(msg)) == msg
    met = parse("BEGIN IMS2.0\nMSG_TYPE DATA\nMSG_ID 7\nDATA_TYPE MET\nAAX01 2026/01/01 00:00:00 21.5\nSTOP\n")
    assert met.body == m.RawBody(("AAX01 2026/01/01 00:00:00 21.5",))
    assert parse(write(met)) == met


def test_several_sections_ref_id_and_prod_id():
    text = ("BEGIN IMS2.0\nMSG_TYPE DATA\nMSG_ID 9 AAX01\nREF_ID 77 ctbto PART 2 OF 3\nPROD_ID 1234 5\n"
            "DATA_TYPE ALERT_FLOW\nAAX01 FLOW 2026/01/02 03:04:05.6\nflow below 0.3 m3/h\nfor 10 min\n"
            + "\n".join(MINIMAL.splitlines()[3:]) + "\n")
    msg = parse(text)
    assert msg.ref_id == m.RefId("77", "ctbto", 2, 3) and msg.prod_id == m.ProdId(1234, 5)
    assert [s.data_type for s in msg.sections] == ["ALERT_FLOW", "GASBKPHD"]
    assert msg.sections[0].body == m.AlertBody("AAX01", "FLOW", datetime(2026, 1, 2, 3, 4, 5, 600000, timezone.utc),
                                               "flow below 0.3 m3/h\nfor 10 min")
    assert parse(write(msg)) == msg
    with pytest.raises(ValueError):
        msg.body    # noqa: B018 - two sections have no single body
    refused(text.replace("PART 2 OF 3", "PART two"), line=4, block="REF_ID")


def test_the_writer_refuses_what_it_could_not_read_back():
    msg = parse(MINIMAL)
    body = msg.body

    def with_body(**changes):
        sec = dataclasses.replace(msg.sections[0], body=dataclasses.replace(body, **changes))
        return dataclasses.replace(msg, sections=(sec,))

    cases = [
        (with_body(header=dataclasses.replace(body.header, station="AA X01")), "#Header", "station"),
        (with_body(header=dataclasses.replace(body.header, srid="STOP")), "#Header", ""),
        (with_body(header=dataclasses.replace(body.header, transmit_time=datetime(2026, 1, 1))), "#Header",
         "transmit_time"),
        (with_body(header=dataclasses.replace(body.header, detbk_measurement_id=None)), "#Header",
         "gasbk_measurement_id"),
        (with_body(comment=m.Comment("#not a block")), "#Comment", "text"),
        (with_body(comment=m.Comment("trailing ")), "#Comment", "text"),
        (with_body(comment=m.Comment("stop")), "#Comment", "text"),
        (with_body(acquisition=dataclasses.replace(body.acquisition, live_time=float("nan"))), "#Acquisition",
         "live_time"),
        (with_body(g_spectrum=m.Spectrum(np.array([1, -2]), 720.0)), "#g_Spectrum", "counts"),
        (with_body(g_spectrum=m.Spectrum(np.array([1, 2]), 720.0, 2)), "#g_Spectrum", "first_channel"),
        (with_body(extra_blocks=(m.RawBlock("Header"),)), "#Header", ""),
        (dataclasses.replace(msg, msg_id="has space"), "MSG_ID", "msg_id"),
    ]
    for bad, block, field in cases:
        with pytest.raises(Ims20BuildError) as info:
            write(bad)
        assert isinstance(info.value, LocalProtocolError)
        assert (info.value.block, info.value.field) == (block, field), str(info.value)
    with pytest.raises(Ims20BuildError, match="SAMPLEPHD needs #Collection"):
        write(dataclasses.replace(msg, sections=(dataclasses.replace(msg.sections[0], data_type="SAMPLEPHD"),)))
    with pytest.raises(Ims20BuildError, match="RMSSOH takes a RmsSohBody"):
        write(dataclasses.replace(msg, sections=(dataclasses.replace(msg.sections[0], data_type="RMSSOH"),)))


def test_spectra_compare_by_content():
    a = m.Spectrum(np.arange(4), 720.0)
    assert a == m.Spectrum([0, 1, 2, 3], 720.0)
    assert a != m.Spectrum(np.arange(4), 720.0, 1)
    with pytest.raises(TypeError):
        m.Spectrum(np.array([1.5]), 720.0)
