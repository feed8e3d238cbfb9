"""Hypothesis strategies for IMS 2.0 messages, derived from the codec's own block declarations
(``ims_station.ims20.format.PHD_BLOCKS`` / ``SOH_BLOCKS``), so a new column is generated as soon as it
is declared."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ims_station.ims20 import format as fmt
from ims_station.ims20 import model as m

KEYWORDS = {"STOP", "DATA_TYPE"}

tokens = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=12).filter(
    lambda t: not t.startswith("#") and t.upper() not in KEYWORDS)
floats = st.floats(allow_nan=False, allow_infinity=False) | st.decimals(
    min_value=-10**6, max_value=10**6, places=6, allow_nan=False, allow_infinity=False).map(float)
ints = st.integers(-(10**17), 10**17)
times = st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31),
                     timezones=st.just(timezone.utc))
free_lines = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126) | st.just("\t"),
                     max_size=30).map(str.rstrip).filter(
    lambda t: not t.startswith("#") and (t.split() or [""])[0].upper() not in KEYWORDS)
texts = st.lists(free_lines, max_size=4).map("\n".join)
# Bodies without blocks (ALERT_* descriptions, unknown data types) may have lines starting with '#'.
unblocked_lines = free_lines | free_lines.map(lambda t: "#" + t)


def col_strategy(col: fmt.Col):
    if col.kind == "float":
        return floats
    if col.kind == "int":
        return ints
    if col.kind == "time":
        return times
    if col.choices is not None:
        return st.sampled_from(sorted(col.choices))
    return tokens


def cols_strategy(cols) -> st.SearchStrategy[dict]:
    named = {c.name: col_strategy(c) for c in cols if c.kind != "count"}
    optional = [c.name for c in cols if c.optional]

    def trailing_none(d):
        # Optional columns are trailing: once one is missing, the rest are missing too.
        gone = False
        for name in optional:
            gone = gone or d[name] is None
            if gone:
                d[name] = None
        return d

    return st.fixed_dictionaries({k: (st.none() | s) if k in optional else s for k, s in named.items()}
                                 ).map(trailing_none)


def block_strategy(bd: fmt.BlockDef):
    if bd.kind == "comment":
        return texts.map(m.Comment)
    if bd.kind == "spectrum":
        return st.builds(m.Spectrum, hnp.arrays(np.int64, st.integers(1, 40), elements=st.integers(0, 10**18 - 1)),
                         floats, st.sampled_from([0, 1]))
    if bd.kind == "histogram":
        return st.builds(m.Histogram, hnp.arrays(np.int64, st.tuples(st.integers(1, 6), st.integers(1, 6)),
                                                  elements=st.integers(0, 10**6)), floats, floats)
    head = [c for line in bd.head for c in line]
    parts = cols_strategy(tuple(head))
    if bd.row is not None:
        rows = st.lists(cols_strategy(bd.row).map(lambda d: bd.row_cls(**d)), max_size=4).map(tuple)
        parts = st.tuples(parts, rows).map(lambda pr: {**pr[0], "rows": pr[1]})
    if bd.arg:
        parts = st.tuples(parts, st.none() | tokens).map(lambda pa: {**pa[0], bd.arg: pa[1]})
    return parts.map(lambda d: bd.cls(**d))


def raw_blocks(known: set[str]):
    name = tokens.filter(lambda t: t not in known)
    return st.lists(st.builds(m.RawBlock, name, st.just("") | tokens,
                              st.lists(free_lines, max_size=3).map(tuple)), max_size=2).map(tuple)


def body_strategy(defs, cls, mandatory: set[str]):
    kw = {bd.attr: (block_strategy(bd) if bd.attr in mandatory else st.none() | block_strategy(bd))
          for bd in defs}
    kw["extra_blocks"] = raw_blocks({bd.name[1:] for bd in defs})
    return st.fixed_dictionaries(kw).map(lambda d: cls(**d))


phd_bodies = body_strategy(fmt.PHD_BLOCKS, m.PhdBody, {"header", "acquisition"})
soh_bodies = body_strategy(fmt.SOH_BLOCKS, m.RmsSohBody, {"header"})
alert_bodies = st.builds(m.AlertBody, tokens, tokens, times, st.lists(unblocked_lines, max_size=4).map("\n".join))
raw_bodies = st.lists(unblocked_lines, max_size=4).map(tuple).map(m.RawBody)


@st.composite
def sections(draw):
    kind = draw(st.sampled_from(["phd", "soh", "alert", "raw"]))
    fmt_token = draw(st.none() | st.just("IMS2.0"))
    if kind == "phd":
        dt = draw(st.sampled_from(sorted(fmt.PHD_TYPES)))
        body = draw(phd_bodies)
        if dt == "SAMPLEPHD" and body.collection is None:
            body = dataclasses.replace(body, collection=draw(block_strategy(fmt.PHD_BLOCKS[2])))
        return m.Section(dt, body, fmt_token)
    if kind == "soh":
        return m.Section("RMSSOH", draw(soh_bodies), fmt_token)
    if kind == "alert":
        return m.Section(draw(st.sampled_from(sorted(fmt.ALERT_TYPES))), draw(alert_bodies), fmt_token)
    return m.Section(draw(st.sampled_from(["MET", "ARR", "RNPS"])), draw(raw_bodies), fmt_token)


ref_ids = st.builds(m.RefId, tokens, st.none() | tokens.filter(lambda t: t.upper() != "PART"),
                    st.none() | ints).flatmap(
    lambda r: st.just(r) if r.part is None else st.builds(dataclasses.replace, st.just(r),
                                                          total=st.none() | ints))

messages = st.builds(m.Message, msg_id=tokens, sections=st.lists(sections(), min_size=1, max_size=3).map(tuple),
                     msg_type=st.sampled_from(["DATA", "CUBE"]), source=st.none() | tokens,
                     ref_id=st.none() | ref_ids, prod_id=st.none() | st.builds(m.ProdId, ints, ints))
