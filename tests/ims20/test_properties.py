"""Property: for every message the writer accepts, ``parse(write(msg)) == msg`` (generated from the
codec's own block declarations: every block, column, optional field and data type)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings

from ims_station.ims20 import parse, write
from ims_station.ims20.format import format_float, parse_float
from tests.ims20.strategies import floats, messages


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages)
def test_generated_messages_round_trip(msg):
    text = write(msg)
    assert parse(text) == msg
    assert write(parse(text)) == text


@settings(max_examples=300, deadline=None)
@given(floats)
def test_every_float_is_written_so_it_reads_back_exactly(v):
    for f in ("", ".6f", ".2f", ".5f"):
        assert parse_float(format_float(v, f)) == v
