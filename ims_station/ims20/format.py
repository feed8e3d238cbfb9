"""The IMS 2.0 text format: one definition of every line and block, read and written from it.

Owns the message envelope (``BEGIN IMS2.0``, ``MSG_TYPE``, ``MSG_ID``, ``REF_ID``, ``PROD_ID``,
``DATA_TYPE``, ``STOP``), the block tables of the PHD data types, RMSSOH and the ALERT_* bodies, and the
two directions over them: :func:`parse` (text or bytes from an untrusted peer -> :class:`Message`) and
:func:`write` (:class:`Message` -> text).  Each block is declared once below as data (a
:class:`BlockDef` with its column layouts, :class:`Col`); the parser and the writer both walk those
declarations, so a column cannot be read one way and written another.

Does not own: the dataclasses (:mod:`ims_station.ims20.model`), files, sockets, signing (the signed
envelope is :mod:`ims_station.envelope`), or what the values mean physically (the noble-gas driver).

Untrusted input rules (docs/ims20.md "Limits"): the message size and every line length are checked
before anything else; only printable ASCII and tabs are accepted; numbers must match a strict
grammar (no ``nan``, ``inf`` or ``1_000``); a spectrum's or histogram's declared channel counts are
bounded and compared with the counts actually present before any array is built; every failure is an
:class:`Ims20Error` naming the line, the block and the field.

Layout rules taken from the spec (../shared/specs/ims20.md) and the real MIX files: fields are
separated by runs of spaces or tabs (we write fixed-width, space-separated, left-aligned columns as
MIX does, with no trailing blanks); times are ``yyyy/mm/dd hh:mm:ss.s`` (seconds fraction optional on
input; we write tenths, or more digits only when the value needs them); spectrum rows start with the
label of their first channel; histogram spans are written as integers when they are (openSpex calls
``int()`` on them).  A float is written with its column's format when that gives back the same
value, else with Python's shortest round-trip form, so ``parse(write(m)) == m`` for every message.
"""

from __future__ import annotations

import math
import re
from dataclasses import MISSING, dataclass, fields
from datetime import datetime, timezone
from typing import Any

import numpy as np

from ims_station.ims20 import model as m
from ims_station.ims20.errors import Ims20BuildError, Ims20Error


@dataclass(frozen=True)
class Limits:
    """Bounds applied to untrusted input (and checked by the writer for lines)."""

    max_message_bytes: int = 8 * 1024 * 1024
    max_line_chars: int = 8192          # a 256-value histogram row of 18-digit counts fits
    max_channels: int = 65536           # per spectrum, and per histogram axis
    max_histogram_cells: int = 1 << 20  # gamma x beta channels (1024 x 1024)
    max_rows: int = 10000               # rows of one table / lines of one comment
    max_sections: int = 64


DEFAULT_LIMITS = Limits()

PHD_TYPES = frozenset({"SAMPLEPHD", "BLANKPHD", "DETBKPHD", "GASBKPHD", "QCPHD", "CALIBPHD",
                       "SPIKEPHD", "REGENPHD"})
ALERT_TYPES = frozenset({"ALERT_FLOW", "ALERT_TEMP", "ALERT_SYSTEM", "ALERT_UPS"})
SOH_TYPE = "RMSSOH"

# ------------------------------------------------------------------------------------- token level

_FLOAT_RE = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d{1,3})?")
_INT_RE = re.compile(r"[+-]?\d{1,18}")
_COUNT_LINE_RE = re.compile(r"[0-9 \t]*")
_DATE_RE = re.compile(r"(\d{4})/(\d{2})/(\d{2})")
_TIME_RE = re.compile(r"(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,6}))?")
_TOKEN_RE = re.compile(r"[!-~]+")
_BAD_CHAR_RE = re.compile(r"[^\t\x20-\x7e]")
_DATA_TYPE_RE = re.compile(r"[A-Z][A-Z0-9_]*")
_MAX_COUNT_DIGITS = 18             # fits int64


def _show(tok: str) -> str:
    return repr(tok if len(tok) <= 40 else tok[:40] + "...")


def parse_float(tok: str) -> float:
    """A finite decimal number (``ValueError`` otherwise)."""
    if len(tok) > 64 or not _FLOAT_RE.fullmatch(tok):
        raise ValueError(f"not a number: {_show(tok)}")
    v = float(tok)
    if not math.isfinite(v):
        raise ValueError(f"not a finite number: {_show(tok)}")
    return v


def parse_int(tok: str) -> int:
    if not _INT_RE.fullmatch(tok):
        raise ValueError(f"not an integer: {_show(tok)}")
    return int(tok)


def parse_time(date: str, time: str) -> datetime:
    dm = _DATE_RE.fullmatch(date)
    tm = _TIME_RE.fullmatch(time)
    if not dm:
        raise ValueError(f"not a date yyyy/mm/dd: {_show(date)}")
    if not tm:
        raise ValueError(f"not a time hh:mm:ss[.s]: {_show(time)}")
    frac = tm.group(4) or ""
    try:
        return datetime(int(dm.group(1)), int(dm.group(2)), int(dm.group(3)), int(tm.group(1)),
                        int(tm.group(2)), int(tm.group(3)), int(frac.ljust(6, "0")) if frac else 0,
                        tzinfo=timezone.utc)
    except ValueError as err:
        raise ValueError(f"not a valid date and time: {date} {time} ({err})") from None


def format_time(t: datetime) -> str:
    """``yyyy/mm/dd hh:mm:ss.s``: tenths, or as many digits as the microseconds need."""
    if not isinstance(t, datetime):
        raise TypeError(f"not a datetime: {t!r}")
    if t.tzinfo is None:
        raise ValueError("naive datetime (IMS 2.0 times are UTC: give tzinfo=timezone.utc)")
    t = t.astimezone(timezone.utc)
    us = t.microsecond
    frac = str(us // 100000) if us % 100000 == 0 else f"{us:06d}".rstrip("0")
    return (f"{t.year:04d}/{t.month:02d}/{t.day:02d} "
            f"{t.hour:02d}:{t.minute:02d}:{t.second:02d}.{frac}")


def measurement_id(detector: str, acquisition_start: datetime) -> str:
    """A measurement id as #Header line 3 holds it: ``<detector>-<yyyy/mm/dd>-<hh:mm:ss.s>`` of the
    measurement's acquisition start (``MIX58_222-2021/12/02-17:00:54.4``)."""
    _check_token(detector)
    return detector + "-" + format_time(acquisition_start).replace(" ", "-")


def format_float(v: Any, fmt: str = "") -> str:
    """*v* with *fmt* when that reads back as the same float, else the shortest round-trip form."""
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"not a number: {v!r}")
    v = float(v)
    if not math.isfinite(v):
        raise ValueError(f"not a finite number: {v!r}")
    if fmt and abs(v) < 1e15:          # fixed-point only where it stays short
        s = format(v, fmt)
        if float(s) == v:
            return s
    return repr(v)


def format_span(v: Any) -> str:
    """An energy span: an integer when it is one (openSpex reads histogram spans with ``int()``)."""
    s = format_float(v)
    return s[:-2] if s.endswith(".0") and "e" not in s else s


def _check_token(v: Any) -> str:
    if not isinstance(v, str) or not _TOKEN_RE.fullmatch(v):
        raise ValueError(f"not a single printable ASCII token without blanks: {v!r}")
    return v


# ------------------------------------------------------------------------------------ declarations


@dataclass(frozen=True)
class Col:
    """One field of a line: its dataclass attribute, kind and how it is written.

    kind: ``float``, ``int``, ``token`` (no blanks), ``time`` (two tokens: date and time) or
    ``count`` (an integer that must equal the number of rows of the block; no attribute).
    """

    name: str
    kind: str
    fmt: str = ""               # format spec of a float column
    width: int = 0              # written left-aligned in this many characters
    optional: bool = False      # may be missing at the end of the line (None)
    choices: frozenset[str] | None = None
    tag: str = ""               # a literal token written before the value


def F(name: str, fmt: str = ".6f", width: int = 16) -> Col:
    return Col(name, "float", fmt, width)


def I(name: str, width: int = 0) -> Col:  # noqa: E743 - short names keep the tables readable
    return Col(name, "int", width=width)


def S(name: str, width: int = 0, *, choices: tuple[str, ...] | None = None, optional: bool = False,
      tag: str = "") -> Col:
    return Col(name, "token", width=width, optional=optional,
               choices=frozenset(choices) if choices else None, tag=tag)


def T(name: str) -> Col:
    return Col(name, "time")


@dataclass(frozen=True)
class BlockDef:
    """A block: ``#name`` line, fixed ``head`` lines, then (for tables) any number of ``row`` lines.

    kind: ``fields`` (head lines and/or rows), ``comment`` (free text), ``spectrum``, ``histogram``.
    ``arg`` names the field that holds the rest of the block line (``#Header 3``), if any.
    """

    name: str
    attr: str
    cls: type
    kind: str = "fields"
    head: tuple[tuple[Col, ...], ...] = ()
    row: tuple[Col, ...] | None = None
    row_cls: type | None = None
    arg: str = ""


def _table(name: str, attr: str, cls: type, row_cls: type, *row: Col) -> BlockDef:
    return BlockDef(name, attr, cls, row=row, row_cls=row_cls)


_ONOFF = ("ON", "OFF")
_OPEN = ("OPEN", "CLOSED")

# PHD blocks in the order they are written (the order of the MIX files; readers take any order).
PHD_BLOCKS: tuple[BlockDef, ...] = (
    BlockDef("#Header", "header", m.PhdHeader, arg="version", head=(
        (S("station", 5), S("detector", 9), S("system_type", 1, choices=("P", "B", "G")),
         S("geometry", 17), S("qualifier", choices=("PREL", "FULL"))),
        (S("srid"),),
        (S("measurement_id"), S("detbk_measurement_id", optional=True),
         S("gasbk_measurement_id", optional=True)),
        (T("transmit_time"),),
    )),
    BlockDef("#Comment", "comment", m.Comment, kind="comment"),
    BlockDef("#Collection", "collection", m.Collection, head=(
        (T("start"), T("stop"), F("air_volume", ".7f", 0)),)),
    BlockDef("#Acquisition", "acquisition", m.Acquisition, head=(
        (T("start"), F("real_time", ".2f", 14), F("live_time", ".2f", 14)),)),
    BlockDef("#Calibration", "calibration", m.Calibration, head=((T("time"),),)),
    BlockDef("#Processing", "processing", m.Processing, head=(
        (F("xe_volume", ".5f", 8), F("xe_volume_uncertainty", ".5f", 8)),
        (F("xe_yield", ".5f", 8), F("xe_yield_uncertainty", ".5f", 8)),
        (S("archive_id"),),
    )),
    BlockDef("#Sample", "sample", m.Sample, head=((F("dimension1", ".2f", 10), F("dimension2", ".2f", 10)),)),
    _table("#g_Energy", "g_energy", m.GEnergy, m.GEnergyRow, F("energy"), F("channel"), F("uncertainty")),
    _table("#b_Energy", "b_energy", m.BEnergy, m.BEnergyRow, F("energy"), S("mode", 1, choices=("B", "C")),
           F("channel"), F("uncertainty")),
    _table("#g_Resolution", "g_resolution", m.GResolution, m.ResolutionRow, F("energy"), F("fwhm"),
           F("uncertainty")),
    _table("#b_Resolution", "b_resolution", m.BResolution, m.ResolutionRow, F("energy"), F("fwhm"),
           F("uncertainty")),
    _table("#ROI_Limits", "roi_limits", m.RoiLimits, m.RoiLimitsRow, I("roi", 2), F("beta_low", ".6f", 10),
           F("beta_high", ".6f", 10), F("gamma_low", ".6f", 10), F("gamma_high", ".6f", 10)),
    _table("#g_Efficiency", "g_efficiency", m.GEfficiency, m.EfficiencyRow, F("energy"), F("efficiency"),
           F("uncertainty")),
    _table("#TotalEff", "total_efficiency", m.TotalEfficiency, m.EfficiencyRow, F("energy"),
           F("efficiency"), F("uncertainty")),
    _table("#b-gEfficiency", "bg_efficiency", m.BGEfficiency, m.BGEfficiencyRow, S("nuclide", 10),
           I("roi", 8), F("efficiency", ".4f", 10), F("uncertainty", ".4f", 10)),
    _table("#Ratios", "ratios", m.Ratios, m.RatioRow, S("ratio_id", 15), I("upper_roi", 2),
           I("lower_roi", 2), F("ratio", ".6f", 10), F("uncertainty", ".6f", 10)),
    BlockDef("#g_Spectrum", "g_spectrum", m.Spectrum, kind="spectrum"),
    BlockDef("#b_Spectrum", "b_spectrum", m.Spectrum, kind="spectrum"),
    BlockDef("#Histogram", "histogram", m.Histogram, kind="histogram"),
    BlockDef("#Certificate", "certificate", m.Certificate, head=(
        (F("total_activity", "", 12), T("assay_time"), S("unit")),),
        row=(S("nuclide", 10), F("half_life", "", 12), S("half_life_unit", 1, choices=tuple("YDHMS")),
             F("activity", "", 12), F("activity_uncertainty", "", 8), F("energy", "", 12),
             F("intensity", "", 8), S("electron_mode", 1, choices=("B", "C")),
             F("electron_energy", "", 12), F("electron_intensity", "", 8)),
        row_cls=m.CertificateRow),
)

# RMSSOH blocks (layouts from memory of IDC-3.4.1; no public sample exists: see docs/ims20.md).
SOH_BLOCKS: tuple[BlockDef, ...] = (
    BlockDef("#Header", "header", m.SohHeader, arg="version", head=(
        (S("station", 5), S("detector", 9), T("start"), T("stop"), T("transmit_time")),)),
    BlockDef("#Comment", "comment", m.Comment, kind="comment"),
    _table("#AirSamplerFlow", "air_sampler_flow", m.AirSamplerFlow, m.AirSamplerFlowRow,
           F("flow", ".3f", 10), F("flow_std", ".3f", 10), T("start"), I("duration")),
    _table("#AirSamplerEnv", "air_sampler_env", m.AirSamplerEnv, m.AirSamplerEnvRow,
           F("temperature", ".2f", 8), F("filter_pressure", ".2f", 8), F("pressure", ".2f", 8),
           F("humidity", ".2f", 8), T("start"), I("duration")),
    _table("#DetEnv", "det_env", m.DetEnv, m.DetEnvRow,
           F("room_temperature", ".2f", 8), S("shield_status", 6, choices=_OPEN),
           F("room_humidity", ".2f", 8), F("high_voltage", ".1f", 8), F("crystal_temperature", ".2f", 8),
           S("cooler_status", 3, choices=_ONOFF), F("fill_fraction", ".3f", 6),
           F("leakage_current", ".3f", 8), T("start"), I("duration")),
    _table("#NIMBIN", "nimbin", m.NimBin, m.NimBinRow, S("polarity", 1, choices=("+", "-")),
           F("voltage", ".2f", 8), T("start"), I("duration")),
    _table("#PowerSupply", "power_supply", m.PowerSupply, m.PowerSupplyRow,
           S("main", 3, choices=_ONOFF, tag="MAIN"), S("aux", 3, choices=_ONOFF, tag="AUX"),
           S("ups", 3, choices=_ONOFF, tag="UPS"), T("start"), I("duration")),
    _table("#EquipStatus", "equip_status", m.EquipStatus, m.EquipStatusRow,
           S("collection_srid", tag="C"), S("processing_srid", tag="P"), S("acquisition_srid", tag="A"),
           T("start"), I("duration")),
    _table("#TamperEnv", "tamper_env", m.TamperEnv, m.TamperEnvRow, S("sensor", 12),
           S("state", 6, choices=_OPEN), T("start"), I("duration")),
    _table("#ProcessSensors", "process_sensors", m.ProcessSensors, m.ProcessSensorsRow,
           S("sensor_type", 11, choices=("TEMP", "PRESSURE", "PROCESSFLOW", "VOLTAGE", "COUNTS",
                                         "DEWPOINT", "CO2VOLUME")),
           S("sensor", 12), F("reading", "", 12), T("start"), I("duration")),
    BlockDef("#Chromatogram", "chromatogram", m.Chromatogram, head=((S("srid"), Col("points", "count")),),
             row=(F("time", ".2f", 10), F("response", "", 12)), row_cls=m.ChromatogramRow),
)

ALERT_HEAD: tuple[Col, ...] = (S("station", 5), S("alert_type", 6), T("time"))

_PHD_BY_NAME = {b.name: b for b in PHD_BLOCKS}
_SOH_BY_NAME = {b.name: b for b in SOH_BLOCKS}

# ----------------------------------------------------------------------------------------- parsing


class _Lines:
    """The message's lines with 1-based numbers; checks characters and lengths once."""

    def __init__(self, text: str, limits: Limits) -> None:
        raw = text.split("\n")
        if raw and raw[-1] == "":
            raw.pop()
        self.lines: list[str] = []
        for i, line in enumerate(raw, 1):
            if line.endswith("\r"):
                line = line[:-1]
            if len(line) > limits.max_line_chars:
                raise Ims20Error(f"line is {len(line)} characters long, more than the limit of "
                                 f"{limits.max_line_chars}", line=i)
            bad = _BAD_CHAR_RE.search(line)
            if bad:
                raise Ims20Error(f"character {bad.group()!r} at column {bad.start() + 1} is not printable "
                                 "ASCII", line=i)
            self.lines.append(line.rstrip())


def _decode(data: bytes | bytearray | memoryview | str, limits: Limits) -> str:
    if isinstance(data, str):
        if len(data) > limits.max_message_bytes:
            raise Ims20Error(f"message is {len(data)} characters long, more than the limit of "
                             f"{limits.max_message_bytes}")
        if not data.isascii():
            pos = next(i for i, c in enumerate(data) if ord(c) > 127)
            raise Ims20Error(f"character {data[pos]!r} is not ASCII", line=data.count("\n", 0, pos) + 1)
        return data
    data = bytes(data)
    if len(data) > limits.max_message_bytes:
        raise Ims20Error(f"message is {len(data)} bytes long, more than the limit of "
                         f"{limits.max_message_bytes}")
    try:
        return data.decode("ascii")
    except UnicodeDecodeError as err:
        raise Ims20Error(f"byte 0x{data[err.start]:02x} is not ASCII",
                         line=data.count(b"\n", 0, err.start) + 1) from None


def _value(col: Col, tok: str) -> Any:
    if col.kind == "float":
        return parse_float(tok)
    if col.kind in ("int", "count"):
        return parse_int(tok)
    if col.choices is not None and tok not in col.choices:
        raise ValueError(f"{_show(tok)} is not one of {', '.join(sorted(col.choices))}")
    return tok


def _parse_cols(tokens: list[str], cols: tuple[Col, ...], lineno: int, block: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    i = 0
    for col in cols:
        need = (2 if col.kind == "time" else 1) + (1 if col.tag else 0)
        if i >= len(tokens) and col.optional:
            out[col.name] = None
            continue
        if i + need > len(tokens):
            raise Ims20Error(f"missing (the line has {len(tokens)} field(s))", line=lineno, block=block,
                             field=col.name)
        try:
            if col.tag:
                if tokens[i] != col.tag:
                    raise ValueError(f"expected {col.tag!r} before the value, found {_show(tokens[i])}")
                i += 1
            if col.kind == "time":
                out[col.name] = parse_time(tokens[i], tokens[i + 1])
            else:
                out[col.name] = _value(col, tokens[i])
        except ValueError as err:
            raise Ims20Error(str(err), line=lineno, block=block, field=col.name) from None
        i += need - (1 if col.tag else 0)
    if i != len(tokens):
        raise Ims20Error(f"{len(tokens) - i} unexpected field(s) at the end of the line: "
                         f"{_show(' '.join(tokens[i:]))}", line=lineno, block=block)
    return out


@dataclass
class _RawBlockText:
    name: str
    arg: str
    lineno: int
    lines: list[tuple[int, str]]


def _parse_fields_block(bd: BlockDef, blk: _RawBlockText, limits: Limits) -> Any:
    content = [(n, ln) for n, ln in blk.lines if ln.strip()]
    kwargs: dict[str, Any] = {}
    if len(content) < len(bd.head):
        raise Ims20Error(f"{len(bd.head)} line(s) expected, {len(content)} found",
                         line=content[-1][0] if content else blk.lineno, block=bd.name)
    count_col: tuple[Col, int, int] | None = None
    for cols, (n, ln) in zip(bd.head, content):
        vals = _parse_cols(ln.split(), cols, n, bd.name)
        for c in cols:
            if c.kind == "count":
                count_col = (c, vals.pop(c.name), n)
        kwargs.update(vals)
    rest = content[len(bd.head):]
    if bd.row is None:
        if rest:
            raise Ims20Error(f"{len(bd.head)} line(s) expected, more found", line=rest[0][0], block=bd.name)
    else:
        if len(rest) > limits.max_rows:
            raise Ims20Error(f"{len(rest)} rows, more than the limit of {limits.max_rows}",
                             line=rest[limits.max_rows][0], block=bd.name)
        assert bd.row_cls is not None
        kwargs["rows"] = tuple(bd.row_cls(**_parse_cols(ln.split(), bd.row, n, bd.name)) for n, ln in rest)
        if count_col is not None and count_col[1] != len(rest):
            raise Ims20Error(f"{count_col[1]} rows declared, {len(rest)} present", line=count_col[2],
                             block=bd.name, field=count_col[0].name)
    if bd.arg:
        if len(blk.arg.split()) > 1:
            raise Ims20Error(f"one token expected after the block name, found {_show(blk.arg)}",
                             line=blk.lineno, block=bd.name, field=bd.arg)
        kwargs[bd.arg] = blk.arg or None
    elif blk.arg:
        raise Ims20Error(f"unexpected text after the block name: {_show(blk.arg)}", line=blk.lineno,
                         block=bd.name)
    return bd.cls(**kwargs)


def _parse_counts(content: list[tuple[int, str]], expected: int, block: str, labelled: bool
                  ) -> tuple[np.ndarray, int]:
    """Counts from *content* lines: exactly *expected* of them (never allocated from *expected*:
    values are gathered line by line and refused as soon as they would exceed it)."""
    chunks: list[np.ndarray] = []
    got = 0
    first_label = 0
    for k, (n, ln) in enumerate(content):
        if not _COUNT_LINE_RE.fullmatch(ln):
            bad = next(c for c in ln if c not in "0123456789 \t")
            raise Ims20Error(f"counts must be non-negative integers; found {bad!r}", line=n, block=block)
        toks = ln.split()
        if labelled:
            label = int(toks[0]) if len(toks[0]) <= _MAX_COUNT_DIGITS else -1
            if k == 0:
                if label not in (0, 1):
                    raise Ims20Error(f"the first row's channel label is {_show(toks[0])}, not 0 or 1",
                                     line=n, block=block, field="first_channel")
                first_label = label
            elif label != first_label + got:
                raise Ims20Error(f"row label {_show(toks[0])} does not follow the previous rows "
                                 f"(expected {first_label + got})", line=n, block=block)
            toks = toks[1:]
        if got + len(toks) > expected:
            raise Ims20Error(f"more counts than the {expected} declared", line=n, block=block)
        if toks:
            if max(map(len, toks)) > _MAX_COUNT_DIGITS:
                raise Ims20Error(f"a count has more than {_MAX_COUNT_DIGITS} digits", line=n, block=block)
            chunks.append(np.array(toks, dtype=np.int64))
            got += len(toks)
    if got != expected:
        raise Ims20Error(f"{expected} counts declared, {got} present",
                         line=content[-1][0] if content else None, block=block)
    counts = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int64)
    return counts, first_label


def _dims(tokens: list[str], names: tuple[str, ...], lineno: int, block: str, limits: Limits) -> list[int]:
    out = []
    for tok, name in zip(tokens, names):
        try:
            v = parse_int(tok)
        except ValueError as err:
            raise Ims20Error(str(err), line=lineno, block=block, field=name) from None
        if not 1 <= v <= limits.max_channels:
            raise Ims20Error(f"{v} channels, outside 1..{limits.max_channels}", line=lineno, block=block,
                             field=name)
        out.append(v)
    return out


def _span(tok: str, lineno: int, block: str, name: str) -> float:
    try:
        return parse_float(tok)
    except ValueError as err:
        raise Ims20Error(str(err), line=lineno, block=block, field=name) from None


def _parse_spectrum(bd: BlockDef, blk: _RawBlockText, limits: Limits) -> m.Spectrum:
    content = [(n, ln) for n, ln in blk.lines if ln.strip()]
    if blk.arg:
        raise Ims20Error(f"unexpected text after the block name: {_show(blk.arg)}", line=blk.lineno,
                         block=bd.name)
    if not content:
        raise Ims20Error("no channel count line", line=blk.lineno, block=bd.name)
    n, head = content[0]
    toks = head.split()
    if len(toks) != 2:
        raise Ims20Error(f"expected 'channels energy_span', found {len(toks)} field(s)", line=n, block=bd.name)
    (channels,) = _dims(toks[:1], ("channels",), n, bd.name, limits)
    span = _span(toks[1], n, bd.name, "energy_span")
    counts, first = _parse_counts(content[1:], channels, bd.name, labelled=True)
    return m.Spectrum(counts, span, first)


def _parse_histogram(bd: BlockDef, blk: _RawBlockText, limits: Limits) -> m.Histogram:
    content = [(n, ln) for n, ln in blk.lines if ln.strip()]
    if blk.arg:
        raise Ims20Error(f"unexpected text after the block name: {_show(blk.arg)}", line=blk.lineno,
                         block=bd.name)
    if not content:
        raise Ims20Error("no dimension line", line=blk.lineno, block=bd.name)
    n, head = content[0]
    toks = head.split()
    if len(toks) != 4:
        raise Ims20Error(f"expected 'gamma_channels beta_channels gamma_span beta_span', found {len(toks)} "
                         "field(s)", line=n, block=bd.name)
    ng, nb = _dims(toks[:2], ("gamma_channels", "beta_channels"), n, bd.name, limits)
    if ng * nb > limits.max_histogram_cells:
        raise Ims20Error(f"{ng} x {nb} cells, more than the limit of {limits.max_histogram_cells}",
                         line=n, block=bd.name)
    gspan = _span(toks[2], n, bd.name, "gamma_span")
    bspan = _span(toks[3], n, bd.name, "beta_span")
    counts, _ = _parse_counts(content[1:], ng * nb, bd.name, labelled=False)
    return m.Histogram(counts.reshape(ng, nb), gspan, bspan)


def _parse_comment(bd: BlockDef, blk: _RawBlockText, limits: Limits) -> m.Comment:
    if blk.arg:
        raise Ims20Error(f"unexpected text after the block name: {_show(blk.arg)}", line=blk.lineno,
                         block=bd.name)
    if len(blk.lines) > limits.max_rows:
        raise Ims20Error(f"{len(blk.lines)} lines, more than the limit of {limits.max_rows}",
                         line=blk.lineno, block=bd.name)
    return m.Comment("\n".join(ln for _, ln in blk.lines))


_PARSERS = {"fields": _parse_fields_block, "comment": _parse_comment, "spectrum": _parse_spectrum,
            "histogram": _parse_histogram}


def _split_blocks(body: list[tuple[int, str]], where: str) -> list[_RawBlockText]:
    blocks: list[_RawBlockText] = []
    for n, ln in body:
        if ln.startswith("#"):
            rest = ln[1:]
            if not rest or rest[0] in " \t":
                raise Ims20Error("block line without a block name right after '#'", line=n, block=where)
            parts = rest.split(None, 1)
            blocks.append(_RawBlockText(parts[0], parts[1].strip() if len(parts) > 1 else "", n, []))
        elif blocks:
            blocks[-1].lines.append((n, ln))
        elif ln.strip():
            raise Ims20Error(f"text before the first block: {_show(ln.strip())}", line=n, block=where)
    return blocks


def _parse_blocks(body: list[tuple[int, str]], defs: dict[str, BlockDef], cls: type, where: str,
                  first_line: int, limits: Limits) -> Any:
    kwargs: dict[str, Any] = {}
    seen: dict[str, int] = {}
    extra: list[m.RawBlock] = []
    for blk in _split_blocks(body, where):
        bd = defs.get("#" + blk.name)
        if bd is None:
            extra.append(m.RawBlock(blk.name, blk.arg, tuple(ln for _, ln in blk.lines)))
            continue
        if bd.name in seen:
            raise Ims20Error(f"second {bd.name} block (the first is on line {seen[bd.name]})",
                             line=blk.lineno, block=bd.name)
        seen[bd.name] = blk.lineno
        kwargs[bd.attr] = _PARSERS[bd.kind](bd, blk, limits)
    kwargs["extra_blocks"] = tuple(extra)
    # the body's fields without a default are its mandatory blocks
    missing = [f.name for f in fields(cls)
               if f.name not in kwargs and f.default is MISSING and f.default_factory is MISSING]
    if missing:
        names = [bd.name for bd in defs.values() if bd.attr in missing]
        raise Ims20Error(f"mandatory block(s) missing: {', '.join(names)}", line=first_line, block=where)
    return cls(**kwargs)


def _parse_alert(body: list[tuple[int, str]], where: str, first_line: int) -> m.AlertBody:
    while body and not body[0][1].strip():
        body = body[1:]
    if not body:
        raise Ims20Error("no alert line (station alert_type date time)", line=first_line, block=where)
    n, ln = body[0]
    if ln.startswith("#"):
        raise Ims20Error("an alert has no blocks", line=n, block=where)
    vals = _parse_cols(ln.split(), ALERT_HEAD, n, where)
    return m.AlertBody(description="\n".join(x for _, x in body[1:]), **vals)


def _keyword(line: str) -> str:
    return line.split(None, 1)[0].upper() if line.strip() else ""


def _envelope_tokens(line: str, lineno: int, key: str, lo: int, hi: int) -> list[str]:
    toks = line.split()[1:]
    if not lo <= len(toks) <= hi:
        want = f"{lo}" if lo == hi else f"{lo} to {hi}"
        raise Ims20Error(f"{want} field(s) expected after {key}, {len(toks)} found", line=lineno, block=key)
    return toks


def _parse_ref_id(toks: list[str], lineno: int) -> m.RefId:
    ref, rest = toks[0], toks[1:]
    source = None
    if rest and rest[0].upper() != "PART":
        source, rest = rest[0], rest[1:]
    part = total = None
    try:
        if rest:
            if rest[0].upper() != "PART" or len(rest) not in (2, 4):
                raise ValueError("expected 'PART n [OF m]'")
            part = parse_int(rest[1])
            if len(rest) == 4:
                if rest[2].upper() != "OF":
                    raise ValueError("expected 'PART n OF m'")
                total = parse_int(rest[3])
    except ValueError as err:
        raise Ims20Error(str(err), line=lineno, block="REF_ID") from None
    return m.RefId(ref, source, part, total)


def parse(data: bytes | bytearray | memoryview | str, limits: Limits = DEFAULT_LIMITS) -> m.Message:
    """Parse one IMS 2.0 message (``BEGIN IMS2.0`` ... ``STOP``); :class:`Ims20Error` if invalid."""
    lines = _Lines(_decode(data, limits), limits).lines
    i = 0
    while i < len(lines) and not lines[i].strip():
        i += 1
    if i == len(lines):
        raise Ims20Error("empty message")
    toks = lines[i].split()
    if toks[0].upper() != "BEGIN" or len(toks) != 2 or toks[1].upper() != "IMS2.0":
        raise Ims20Error(f"expected 'BEGIN IMS2.0', found {_show(lines[i].strip())}", line=i + 1, block="BEGIN")
    version = toks[1].upper()
    env: dict[str, Any] = {}
    env_line: dict[str, int] = {}
    i += 1
    while i < len(lines):
        ln = lines[i]
        key = _keyword(ln)
        if key in ("", "DATA_TYPE", "STOP"):
            if key:
                break
            i += 1
            continue
        if key in env_line:
            raise Ims20Error(f"second {key} line (the first is line {env_line[key]})", line=i + 1, block=key)
        env_line[key] = i + 1
        if key == "MSG_TYPE":
            env["msg_type"] = _envelope_tokens(ln, i + 1, key, 1, 1)[0].upper()
        elif key == "MSG_ID":
            t = _envelope_tokens(ln, i + 1, key, 1, 2)
            env["msg_id"] = t[0]
            env["source"] = t[1] if len(t) > 1 else None
        elif key == "REF_ID":
            env["ref_id"] = _parse_ref_id(_envelope_tokens(ln, i + 1, key, 1, 6), i + 1)
        elif key == "PROD_ID":
            t = _envelope_tokens(ln, i + 1, key, 2, 2)
            try:
                env["prod_id"] = m.ProdId(parse_int(t[0]), parse_int(t[1]))
            except ValueError as err:
                raise Ims20Error(str(err), line=i + 1, block=key) from None
        else:
            raise Ims20Error(f"unexpected line before DATA_TYPE: {_show(ln.strip())}", line=i + 1,
                             block="envelope")
        i += 1
    for key in ("MSG_TYPE", "MSG_ID"):
        if key not in env_line:
            raise Ims20Error(f"no {key} line", line=min(i + 1, len(lines)), block="envelope")
    sections: list[m.Section] = []
    stopped = False
    while i < len(lines):
        key = _keyword(lines[i])
        if key == "STOP":
            if len(lines[i].split()) != 1:
                raise Ims20Error("text after STOP", line=i + 1, block="STOP")
            stopped = True
            i += 1
            break
        assert key == "DATA_TYPE"
        if len(sections) >= limits.max_sections:
            raise Ims20Error(f"more than {limits.max_sections} DATA_TYPE sections", line=i + 1, block="DATA_TYPE")
        t = _envelope_tokens(lines[i], i + 1, "DATA_TYPE", 1, 2)
        data_type = t[0].upper()
        if not _DATA_TYPE_RE.fullmatch(data_type):
            raise Ims20Error(f"not a data type: {_show(t[0])}", line=i + 1, block="DATA_TYPE")
        fmt = t[1] if len(t) > 1 else None
        start = i + 1
        i += 1
        body: list[tuple[int, str]] = []
        while i < len(lines) and _keyword(lines[i]) not in ("DATA_TYPE", "STOP"):
            body.append((i + 1, lines[i]))
            i += 1
        sections.append(m.Section(data_type, _parse_body(data_type, body, start, limits), fmt))
    if not stopped:
        raise Ims20Error("the message ends without STOP", line=len(lines), block="STOP")
    for j in range(i, len(lines)):
        if lines[j].strip():
            raise Ims20Error(f"text after STOP: {_show(lines[j].strip())}", line=j + 1, block="STOP")
    if not sections:
        raise Ims20Error("no DATA_TYPE section", line=env_line["MSG_ID"], block="envelope")
    return m.Message(sections=tuple(sections), version=version, **env)


def _parse_body(data_type: str, body: list[tuple[int, str]], start: int, limits: Limits) -> m.Body:
    where = f"DATA_TYPE {data_type}"
    if data_type in PHD_TYPES:
        phd = _parse_blocks(body, _PHD_BY_NAME, m.PhdBody, where, start, limits)
        if data_type == "SAMPLEPHD" and phd.collection is None:
            raise Ims20Error("mandatory block(s) missing: #Collection", line=start, block=where)
        return phd
    if data_type == SOH_TYPE:
        return _parse_blocks(body, _SOH_BY_NAME, m.RmsSohBody, where, start, limits)
    if data_type in ALERT_TYPES:
        return _parse_alert(body, where, start)
    if len(body) > limits.max_rows:
        raise Ims20Error(f"{len(body)} lines, more than the limit of {limits.max_rows}", line=start, block=where)
    return m.RawBody(tuple(ln for _, ln in body))


# ----------------------------------------------------------------------------------------- writing


class _Writer:
    def __init__(self, limits: Limits) -> None:
        self.out: list[str] = []
        self.limits = limits

    def line(self, text: str, block: str, field: str = "") -> None:
        if not isinstance(text, str):
            raise Ims20BuildError(f"not text: {text!r}", block=block, field=field)
        bad = _BAD_CHAR_RE.search(text)
        if bad:
            raise Ims20BuildError(f"character {bad.group()!r} is not printable ASCII", block=block, field=field)
        if len(text) > self.limits.max_line_chars:
            raise Ims20BuildError(f"a line of {len(text)} characters is over the limit of "
                                  f"{self.limits.max_line_chars}", block=block, field=field)
        self.out.append(text)

    def body_line(self, text: str, block: str, field: str = "", *, blocks: bool = True) -> None:
        """A line inside a body: it must not read as structure when parsed back (a keyword line, or
        where the body has blocks, a line starting with '#')."""
        if not isinstance(text, str):
            raise Ims20BuildError(f"not text: {text!r}", block=block, field=field)
        if text != text.rstrip():
            raise Ims20BuildError(f"line ends in blanks, which IMS 2.0 does not keep: {text!r}",
                                  block=block, field=field)
        if blocks and text.startswith("#"):
            raise Ims20BuildError(f"line starts with '#' (would start a block): {text!r}", block=block,
                                  field=field)
        if _keyword(text) in ("DATA_TYPE", "STOP"):
            raise Ims20BuildError(f"line starts with a message keyword: {text!r}", block=block, field=field)
        self.line(text, block, field)


def _format_col(col: Col, v: Any, block: str) -> str:
    try:
        if col.kind == "float":
            return format_float(v, col.fmt)
        if col.kind == "int":
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or abs(int(v)) >= 10 ** 18:
                raise ValueError(f"not an integer below 10**18: {v!r}")
            return str(int(v))
        if col.kind == "time":
            return format_time(v)
        _check_token(v)
        if col.choices is not None and v not in col.choices:
            raise ValueError(f"{v!r} is not one of {', '.join(sorted(col.choices))}")
        return v
    except (TypeError, ValueError) as err:
        raise Ims20BuildError(str(err), block=block, field=col.name) from None


def _format_cols(obj: Any, cols: tuple[Col, ...], block: str, rows: int = 0) -> str:
    parts: list[str] = []
    absent: str | None = None
    for col in cols:
        if col.kind == "count":
            parts.append(str(rows))
            continue
        v = getattr(obj, col.name)
        if v is None:
            if not col.optional:
                raise Ims20BuildError("missing", block=block, field=col.name)
            absent = col.name
            continue
        if absent is not None:
            raise Ims20BuildError(f"given while {absent} before it is not", block=block, field=col.name)
        if col.tag:
            parts.append(col.tag)
        parts.append(_format_col(col, v, block).ljust(col.width))
    return " ".join(parts).rstrip()


def _block_line(w: _Writer, bd: BlockDef, obj: Any) -> None:
    arg = getattr(obj, bd.arg) if bd.arg else None
    if arg is not None:
        try:
            _check_token(arg)
        except ValueError as err:
            raise Ims20BuildError(str(err), block=bd.name, field=bd.arg) from None
    w.line(f"{bd.name} {arg}" if arg is not None else bd.name, bd.name)


def _write_spectrum(w: _Writer, bd: BlockDef, sp: m.Spectrum) -> None:
    counts = _checked_counts(sp.counts, 1, bd.name)
    if sp.first_channel not in (0, 1) or isinstance(sp.first_channel, bool):
        raise Ims20BuildError(f"first channel label {sp.first_channel!r} is not 0 or 1", block=bd.name,
                              field="first_channel")
    w.line(bd.name, bd.name)
    w.line(f"{counts.size:<5} {_span_text(sp.energy_span, bd.name, 'energy_span')}", bd.name)
    for k in range(0, counts.size, 5):
        vals = " ".join(f"{int(c):<10}" for c in counts[k:k + 5])
        w.line(f"{k + sp.first_channel:<5} {vals}".rstrip(), bd.name)


def _write_histogram(w: _Writer, bd: BlockDef, h: m.Histogram) -> None:
    counts = _checked_counts(h.counts, 2, bd.name)
    ng, nb = counts.shape
    w.line(bd.name, bd.name)
    w.line(f"{ng:<5} {nb:<5} {_span_text(h.gamma_span, bd.name, 'gamma_span'):<4} "
           f"{_span_text(h.beta_span, bd.name, 'beta_span')}", bd.name)
    per_line = 256  # one gamma row per line as MIX writes it; wider rows wrap to keep lines bounded
    for row in counts:
        for k in range(0, nb, per_line):
            w.line(" ".join(map(str, row[k:k + per_line].tolist())), bd.name)


def _checked_counts(counts: Any, ndim: int, block: str) -> np.ndarray:
    a = np.asarray(counts)
    if a.ndim != ndim or a.size == 0 or a.dtype.kind not in "iu":
        raise Ims20BuildError(f"counts must be a non-empty {ndim}-D integer array", block=block, field="counts")
    if a.size and (a.min() < 0 or a.max() >= 10 ** _MAX_COUNT_DIGITS):
        raise Ims20BuildError("counts must be in 0 .. 10**18-1", block=block, field="counts")
    return a


def _span_text(v: Any, block: str, name: str) -> str:
    try:
        return format_span(v)
    except (TypeError, ValueError) as err:
        raise Ims20BuildError(str(err), block=block, field=name) from None


def _write_blocks(w: _Writer, body: Any, defs: tuple[BlockDef, ...]) -> None:
    for bd in defs:
        obj = getattr(body, bd.attr)
        if obj is None:
            continue
        if not isinstance(obj, bd.cls):
            raise Ims20BuildError(f"expected {bd.cls.__name__}, got {type(obj).__name__}", block=bd.name)
        if bd.kind == "comment":
            w.line(bd.name, bd.name)
            for ln in str(obj.text).split("\n"):
                w.body_line(ln, bd.name, "text")
        elif bd.kind == "spectrum":
            _write_spectrum(w, bd, obj)
        elif bd.kind == "histogram":
            _write_histogram(w, bd, obj)
        else:
            _block_line(w, bd, obj)
            rows = obj.rows if bd.row is not None else ()
            for cols in bd.head:
                w.body_line(_format_cols(obj, cols, bd.name, len(rows)), bd.name)
            if bd.row is not None:
                assert bd.row_cls is not None
                for r in rows:
                    if not isinstance(r, bd.row_cls):
                        raise Ims20BuildError(f"row is {type(r).__name__}, not {bd.row_cls.__name__}",
                                              block=bd.name)
                    w.body_line(_format_cols(r, bd.row, bd.name), bd.name)
    known = {bd.name[1:] for bd in defs}
    for rb in body.extra_blocks:
        if not isinstance(rb, m.RawBlock):
            raise Ims20BuildError(f"extra block is {type(rb).__name__}, not RawBlock", block="extra_blocks")
        try:
            _check_token(rb.name)
        except ValueError as err:
            raise Ims20BuildError(str(err), block="extra_blocks", field="name") from None
        if rb.name in known:
            raise Ims20BuildError(f"#{rb.name} is a known block: give it as a typed block", block="#" + rb.name)
        if rb.arg != rb.arg.strip():
            raise Ims20BuildError("argument has leading or trailing blanks", block="#" + rb.name, field="arg")
        w.line(f"#{rb.name} {rb.arg}" if rb.arg else f"#{rb.name}", "#" + rb.name)
        for ln in rb.lines:
            w.body_line(ln, "#" + rb.name, "lines")


def _token(v: Any, block: str, field: str = "") -> str:
    try:
        return _check_token(v)
    except ValueError as err:
        raise Ims20BuildError(str(err), block=block, field=field) from None


def write(msg: m.Message, limits: Limits = DEFAULT_LIMITS) -> str:
    """The message as IMS 2.0 text (``\\n`` line ends, ending with ``STOP\\n``)."""
    w = _Writer(limits)
    if str(msg.version).upper() != "IMS2.0":
        raise Ims20BuildError(f"version {msg.version!r} is not IMS2.0", block="BEGIN")
    w.line(f"BEGIN {msg.version}", "BEGIN")
    w.line(f"MSG_TYPE {_token(msg.msg_type, 'MSG_TYPE')}", "MSG_TYPE")
    mid = _token(msg.msg_id, "MSG_ID", "msg_id")
    w.line(f"MSG_ID {mid} {_token(msg.source, 'MSG_ID', 'source')}" if msg.source is not None
           else f"MSG_ID {mid}", "MSG_ID")
    if msg.ref_id is not None:
        r = msg.ref_id
        parts = ["REF_ID", _token(r.ref, "REF_ID", "ref")]
        if r.source is not None:
            if r.source.upper() == "PART":
                raise Ims20BuildError("a source named PART cannot be read back", block="REF_ID", field="source")
            parts.append(_token(r.source, "REF_ID", "source"))
        if r.part is not None:
            parts += ["PART", _format_col(I("part"), r.part, "REF_ID")]
            if r.total is not None:
                parts += ["OF", _format_col(I("total"), r.total, "REF_ID")]
        elif r.total is not None:
            raise Ims20BuildError("total given without part", block="REF_ID", field="total")
        w.line(" ".join(parts), "REF_ID")
    if msg.prod_id is not None:
        w.line(f"PROD_ID {_format_col(I('product_id'), msg.prod_id.product_id, 'PROD_ID')} "
               f"{_format_col(I('delivery_id'), msg.prod_id.delivery_id, 'PROD_ID')}", "PROD_ID")
    if not msg.sections:
        raise Ims20BuildError("no section", block="DATA_TYPE")
    for sec in msg.sections:
        _write_section(w, sec)
    w.line("STOP", "STOP")
    return "\n".join(w.out) + "\n"


def _write_section(w: _Writer, sec: m.Section) -> None:
    dt = sec.data_type
    if not isinstance(dt, str) or not _DATA_TYPE_RE.fullmatch(dt):
        raise Ims20BuildError(f"not a data type: {dt!r}", block="DATA_TYPE")
    where = f"DATA_TYPE {dt}"
    w.line(f"DATA_TYPE {dt} {_token(sec.format, 'DATA_TYPE', 'format')}" if sec.format is not None
           else f"DATA_TYPE {dt}", "DATA_TYPE")
    body = sec.body
    expected: type = (m.PhdBody if dt in PHD_TYPES else m.RmsSohBody if dt == SOH_TYPE
                      else m.AlertBody if dt in ALERT_TYPES else m.RawBody)
    if not isinstance(body, expected):
        raise Ims20BuildError(f"{dt} takes a {expected.__name__}, not {type(body).__name__}", block=where)
    if isinstance(body, m.PhdBody):
        if dt == "SAMPLEPHD" and body.collection is None:
            raise Ims20BuildError("SAMPLEPHD needs #Collection", block=where, field="collection")
        _write_blocks(w, body, PHD_BLOCKS)
    elif isinstance(body, m.RmsSohBody):
        _write_blocks(w, body, SOH_BLOCKS)
    elif isinstance(body, m.AlertBody):
        w.body_line(_format_cols(body, ALERT_HEAD, where), where)
        if body.description:
            for ln in body.description.split("\n"):
                w.body_line(ln, where, "description", blocks=False)
    else:
        for ln in body.lines:
            w.body_line(ln, where, "lines", blocks=False)


# ------------------------------------------------------------------------------------ block tables


def _col_doc(col: Col) -> str:
    kind = {"float": "number", "int": "integer", "time": "date time", "count": "number of rows"}.get(
        col.kind, "token")
    text = f"`{col.name}` {kind}"
    if col.choices:
        text += " (" + "/".join(sorted(col.choices)) + ")"
    if col.tag:
        text = f"`{col.tag}` " + text
    if col.optional:
        text = f"[{text}]"
    return text


def block_tables() -> str:
    """The block tables of docs/ims20.md, generated from the declarations above (a test compares)."""
    out: list[str] = []
    for title, defs in (("PHD (SAMPLEPHD, BLANKPHD, DETBKPHD, GASBKPHD, QCPHD, CALIBPHD, SPIKEPHD, REGENPHD)",
                         PHD_BLOCKS), ("RMSSOH", SOH_BLOCKS)):
        out += [f"#### {title}", "", "| block | attribute | line | fields |", "| --- | --- | --- | --- |"]
        for bd in defs:
            name = f"`{bd.name}" + (f" [{bd.arg}]`" if bd.arg else "`")
            first = f"| {name} | `{bd.attr}` "
            if bd.kind == "comment":
                out.append(first + "| any | free text up to the next block (`text`) |")
            elif bd.kind == "spectrum":
                out.append(first + "| 1 | `channels` integer · `energy_span` number |")
                out.append("| | | rows | first channel label (0 or 1, then consecutive) · counts |")
            elif bd.kind == "histogram":
                out.append(first + "| 1 | `gamma_channels` · `beta_channels` integers · `gamma_span` · "
                           "`beta_span` numbers |")
                out.append("| | | rows | gamma_channels x beta_channels counts, gamma row by gamma row "
                           "(any wrapping) |")
            else:
                for k, cols in enumerate(bd.head, 1):
                    out.append((first if k == 1 else "| | ") + f"| {k} | " + " · ".join(map(_col_doc, cols)) + " |")
                if bd.row is not None:
                    out.append((first if not bd.head else "| | ") + "| rows (`rows`) | "
                               + " · ".join(map(_col_doc, bd.row)) + " |")
        out.append("")
    out += ["#### ALERT_FLOW, ALERT_TEMP, ALERT_SYSTEM, ALERT_UPS (no blocks)", "",
            "| line | fields |", "| --- | --- |",
            "| 1 | " + " · ".join(map(_col_doc, ALERT_HEAD)) + " |",
            "| further lines | `description`, free text |", ""]
    return "\n".join(out)


def limits_table() -> str:
    """The limits table of docs/ims20.md, from :class:`Limits` (a test compares)."""
    rows = ["| limit | default |", "| --- | --- |"]
    rows += [f"| `{f.name}` | {getattr(DEFAULT_LIMITS, f.name)} |" for f in fields(Limits)]
    return "\n".join(rows) + "\n"
