"""The MCA dialect (ims_station/mca.py): checksums of real ORTEC records, round trips, and every way a
reply or a command can be wrong."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ims_station import mca
from ims_station.errors import LocalProtocolError, RemoteProtocolError


@pytest.mark.parametrize("record, parsed", [
    (b"%000000069", mca.Ack(0, 0)),
    (b"$C00001088", mca.Value("C", 1)),
    (b"$C00000087", mca.Value("C", 0)),
    (b"$C08192107", mca.Value("C", 8192)),
    (b"$G0007892556117", mca.Value("G", 7892556)),
])
def test_real_ortec_records_of_the_spec_parse_and_reencode_identically(record, parsed):
    """The records quoted in ../shared/specs/ims20.md §6 satisfy our checksum rule."""
    assert mca.parse_reply(record + b"\r\n") == parsed
    assert mca.encode_reply(parsed) == record + b"\r\n"


def test_checksum_is_the_byte_sum_modulo_256():
    assert mca.checksum(b"%000000") == 69
    assert mca.seal("$C00001") == b"$C00001088\r\n"


replies = st.one_of(
    st.builds(mca.Ack, st.integers(0, 255), st.integers(0, 255)),
    st.builds(mca.Value, st.just("G"), st.integers(0, mca.MAX_U32)),
    st.builds(mca.Value, st.just("C"), st.integers(0, mca.MAX_U16)),
    st.builds(mca.Text, st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E,
                                              blacklist_characters="$%"), max_size=mca.MAX_TEXT)),
    st.builds(lambda s, v: mca.Block(s, tuple(v)), st.integers(0, 65535),
              st.lists(st.integers(0, mca.MAX_U32), min_size=1, max_size=mca.MAX_BLOCK)),
    st.builds(lambda d: mca.Fields({k: str(v) for k, v in d.items()}),
              st.dictionaries(st.from_regex(r"[A-Z][A-Z0-9_]{0,10}", fullmatch=True),
                              st.from_regex(r"[A-Za-z0-9_.:+-]{0,12}", fullmatch=True), max_size=12)),
)


@settings(max_examples=150, deadline=None)
@given(replies)
def test_every_reply_round_trips(reply):
    raw = mca.encode_reply(reply)
    assert raw.endswith(b"\r\n") and len(raw) <= mca.MAX_REPLY + 2
    assert mca.parse_reply(raw) == reply


@settings(max_examples=150, deadline=None)
@given(replies, st.data())
def test_one_changed_byte_is_always_detected(reply, data):
    """A single corrupted character gives a ChecksumError or GarbledReply, never a wrong value:
    one changed byte always changes the byte sum modulo 256."""
    raw = bytearray(mca.encode_reply(reply)[:-2])
    i = data.draw(st.integers(0, len(raw) - 1))
    b = data.draw(st.integers(0, 255).filter(lambda x: x != raw[i]))
    raw[i] = b
    with pytest.raises(mca.MCAProtocolError):
        mca.parse_reply(bytes(raw))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_raise_only_protocol_errors(blob):
    try:
        mca.parse_reply(blob)
    except mca.MCAProtocolError as err:
        assert isinstance(err, RemoteProtocolError)
    try:
        mca.parse_command(blob)
    except mca.CommandError as err:
        assert isinstance(err, RemoteProtocolError) and err.code[0] >= 128


@pytest.mark.parametrize("line, error", [
    (b"$C00001089", mca.ChecksumError),           # last digit off
    (b"%00", mca.GarbledReply),                   # too short for a record
    (b"$C0001", mca.ChecksumError),               # a short record is first a checksum mismatch
    (b"#000000069", mca.GarbledReply),            # not a record
    (b"$C0000\x871088", mca.GarbledReply),        # non-printable (line noise)
    (mca.seal("$C123")[:-2], mca.GarbledReply),   # wrong width, right checksum
    (mca.seal("$D000000300")[:-2], mca.GarbledReply),   # announces 3 values, carries none
    (mca.seal("$D00000650" + "0" * 650)[:-2], mca.GarbledReply),  # 65 > MAX_BLOCK
    (mca.seal("$Sflow=1")[:-2], mca.GarbledReply),      # lower-case name
    (mca.seal("$SA=1;A=2")[:-2], mca.GarbledReply),     # duplicate field
    (mca.seal("$X1")[:-2], mca.GarbledReply),           # unknown type
    (mca.seal("%999000")[:-2], mca.GarbledReply),       # codes above 255
    (b"$G" + b"9" * 2000, mca.GarbledReply),      # longer than MAX_REPLY
])
def test_bad_replies_raise_the_specific_error(line, error):
    with pytest.raises(error):
        mca.parse_reply(line)


@pytest.mark.parametrize("line, code", [
    (b"STRAT", mca.ERR_VERB),
    (b"SET_LIVE_PRESET", mca.ERR_NARGS),
    (b"SHOW_DATA 1", mca.ERR_NARGS),
    (b"SET_LIVE_PRESET -5", mca.ERR_ARG),
    (b"SET_LIVE_PRESET 99999999999", mca.ERR_ARG),
    (b"SET_HV 1x0", mca.ERR_ARG),
    (b"START \xff", mca.ERR_LINE),
    (b"SHOW_LIVE" + b" " * 100, mca.ERR_LINE),
])
def test_bad_commands_get_the_documented_error_code(line, code):
    with pytest.raises(mca.CommandError) as e:
        mca.parse_command(line)
    assert e.value.code == code


def test_commands_round_trip_and_are_case_insensitive_on_the_device():
    assert mca.encode_command("SHOW_DATA", 256, 64) == b"SHOW_DATA 256,64\r"
    assert mca.parse_command(b"SHOW_DATA 256,64\r") == mca.Command("SHOW_DATA", (256, 64))
    assert mca.parse_command(b"start\r\n") == mca.Command("START")
    for verb, (n, _) in mca.COMMANDS.items():
        assert mca.parse_command(mca.encode_command(verb, *range(1, n + 1))).verb == verb
    with pytest.raises(LocalProtocolError):
        mca.encode_command("SHOW_DATA", 1)
    with pytest.raises(LocalProtocolError):
        mca.encode_command("FORMAT_DISK")
    with pytest.raises(LocalProtocolError):
        mca.encode_command("SET_HV", -1)


def test_expect_checks_the_record_type_and_error_codes():
    assert mca.expect("SHOW_LIVE", mca.Value("G", 5)).value == 5
    assert mca.expect("START", mca.Ack(0, 0)).ok
    with pytest.raises(mca.DeviceError) as e:
        mca.expect("START", mca.Ack(*mca.ERR_HV))
    assert e.value.code == mca.ERR_HV and "high voltage" in str(e.value)
    with pytest.raises(mca.UnexpectedReply):
        mca.expect("SHOW_LIVE", mca.Value("C", 5))       # out of step
    with pytest.raises(mca.UnexpectedReply):
        mca.expect("START", mca.Value("G", 5))
    with pytest.raises(mca.DeviceError) as e:
        mca.expect("SHOW_LIVE", mca.Ack(*mca.POWER_UP))  # restarted: answered the restart
    assert e.value.code == mca.POWER_UP
    assert mca.expect("STOP", mca.Ack(*mca.POWER_UP)).ok     # a warning acknowledges


def test_line_splitter_is_bounded_and_resynchronises():
    s = mca.LineSplitter(16)
    assert s.feed(b"$C00001088\r") == [b"$C00001088"]
    assert s.feed(b"\n%000") == [] and s.pending() == 4
    assert s.feed(b"000069\r\n") == [b"%000000069"]
    assert s.feed(b"x" * 1000) == [] and s.pending() == 0     # never buffers more than the limit
    assert s.feed(b"yyy\r\n$C00000087\r\n") == [b"$C00000087"]   # the overlong line is dropped whole
    assert s.overlong == 1


def test_encoder_refuses_values_the_dialect_cannot_carry():
    for bad in (mca.Value("C", 100_000), mca.Value("G", -1), mca.Text("a$b"), mca.Block(0, ()),
                mca.Fields({"a": "1"}), mca.Ack(256, 0)):
        with pytest.raises(LocalProtocolError):
            mca.encode_reply(bad)


def test_docs_table_lists_every_verb_error_code_and_fault():
    """docs/noblegas.md promises the whole dialect: every verb, every error code, every fault."""
    from pathlib import Path

    from ims_station.hil.noblegas.faults import RATE_KINDS, WINDOW_KINDS

    doc = (Path(__file__).resolve().parents[2] / "docs" / "noblegas.md").read_text()
    for verb, (nargs, kind) in mca.COMMANDS.items():
        rows = [ln for ln in doc.splitlines() if ln.startswith("| `") and f"`{verb}" in ln]
        assert rows, verb
        assert any(f"| `{'%' if kind == '%' else '$' + kind}` |" in r for r in rows), (verb, kind)
    for macro, micro in mca.ERROR_TEXT:
        assert f"| `{macro:03d} {micro:03d}` |" in doc
    for k in RATE_KINDS + WINDOW_KINDS:
        assert f"`{k}=" in doc, k
    for rec in (b"%000000069", b"$C00001088", b"$C08192107", b"$G0007892556117"):
        assert rec.decode() in doc
        mca.parse_reply(rec)
