"""The network description of ``ims-station sim network``: which stations, of which kinds, with which
channels -- read from a TOML file (docs/sim-network.md) or the IMS-like default mix.

Owns: the file's schema and checks (errors name file, key and reason), the default mix
(:data:`DEFAULT_NETWORK`, with its source in docs/sim-network.md), and the expansion of a description
into one :class:`StationPlan` per station (code, ports with their board definitions and SEED codes,
message schedule).  Pure: no I/O beyond reading the file; the board definitions it derives are
dicts that :mod:`ims_station.simnet` writes and :func:`ims_station.boards.check_board` validates.
Does not own running the stations (``ims_station/simnet.py``) nor the station file format
(``edge/config.py``).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ims_station.errors import ConfigError

# The IMS-like default (docs/sim-network.md, "The default mix", gives the source of each figure).
# 321 stations: the 50 primary and 120 auxiliary seismic, 60 infrasound and 11 hydroacoustic
# stations and the 80 radionuclide stations of the IMS (CTBT Protocol, Part I, Annex 1), the latter
# split into the 40 with noble-gas systems and 40 particulate-only.
DEFAULT_NETWORK = """\
# ims-station sim network: the IMS-like default mix (docs/sim-network.md)
[network]
code = "IM"
frame_seconds = 10

[simulation]
minutes = 60            # simulated time
speed = 20              # simulated seconds per wall second (the pace the stations try to keep)
block_seconds = 10      # samples handed to the stream assembler per board and step: one frame's worth
                        # (a link packet is 1 s; the edge's per-block cost is not what this run measures)
hil_stations = 2        # of the first kind with hil = true: run the HIL firmware and serial link path
workers = 2             # station processes

[[kind]]
name = "primary_array"          # primary seismic arrays: 9-30 vertical short-period elements, 40 sps
prefix = "PA"
count = 30
sensor = "seismic"
rate = 40
elements = [9, 30]              # spread evenly over the stations of the kind
channels = ["SHZ"]
board_channels = 8              # elements per digitizer board (an 8-input ADC); see docs

[[kind]]
name = "primary_3c"             # primary three-component stations, 40 sps
prefix = "PS"
count = 20
sensor = "seismic"
rate = 40
channels = ["BHZ", "BHN", "BHE"]

[[kind]]
name = "auxiliary_3c"           # auxiliary seismic stations, 40 sps (sent continuously here: the upper bound)
prefix = "AS"
count = 120
sensor = "seismic"
rate = 40
channels = ["BHZ", "BHN", "BHE"]

[[kind]]
name = "infrasound_array"       # infrasound arrays: 4-15 microbarometers, 20 sps
prefix = "IS"
count = 60
sensor = "infrasonic"
rate = 20
elements = [4, 15]
channels = ["BDF"]
board_channels = 8

[[kind]]
name = "hydrophone"             # hydroacoustic hydrophone stations: a triplet of hydrophones, 250 sps
prefix = "HA"
count = 6
sensor = "hydroacoustic"
rate = 250
elements = 3
channels = ["EDH"]
board_channels = 3

[[kind]]
name = "tphase_3c"              # hydroacoustic T-phase stations: three-component seismometers, 100 sps
prefix = "HT"
count = 5
sensor = "seismic"
rate = 100
channels = ["HHZ", "HHN", "HHE"]
hil = true                      # the HIL stations are taken from here (the sim board: 3C + BDF at 100 sps)

[[kind]]
name = "noble_gas"              # radionuclide stations with a noble-gas system: a beta-gamma SAMPLEPHD
prefix = "RX"                   # (256x256 histogram) every 12 h
count = 40
messages = "noble_gas"
message_hours = 12

[[kind]]
name = "particulate"            # particulate-only radionuclide stations: an HPGe SAMPLEPHD every 24 h
prefix = "RP"
count = 40
messages = "particulate"
message_hours = 24
"""

_rate = {"type": "number", "exclusiveMinimum": 0, "maximum": 1000}
SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["kind"],
    "properties": {
        "network": {"type": "object", "additionalProperties": False, "properties": {
            "code": {"type": "string", "pattern": "^[A-Z0-9]{1,2}$"},
            "frame_seconds": {"type": "integer", "minimum": 1, "maximum": 60},
        }},
        "simulation": {"type": "object", "additionalProperties": False, "properties": {
            "minutes": {"type": "number", "exclusiveMinimum": 0, "maximum": 7 * 24 * 60},
            "speed": {"type": "number", "exclusiveMinimum": 0, "maximum": 10000},
            "block_seconds": {"type": "number", "exclusiveMinimum": 0, "maximum": 10},
            "hil_stations": {"type": "integer", "minimum": 0, "maximum": 20},
            "workers": {"type": "integer", "minimum": 1, "maximum": 64},
        }},
        "kind": {"type": "array", "minItems": 1, "items": {
            "type": "object", "additionalProperties": False, "required": ["name", "prefix", "count"],
            "properties": {
                "name": {"type": "string", "pattern": "^[a-z0-9_]{1,32}$"},
                "prefix": {"type": "string", "pattern": "^[A-Z][A-Z0-9]{0,3}$"},
                "count": {"type": "integer", "minimum": 0, "maximum": 1295},
                "sensor": {"enum": ["seismic", "infrasonic", "hydroacoustic"]},
                "rate": _rate,
                "elements": {"oneOf": [{"type": "integer", "minimum": 1, "maximum": 99},
                                       {"type": "array", "minItems": 2, "maxItems": 2,
                                        "items": {"type": "integer", "minimum": 1, "maximum": 99}}]},
                "channels": {"type": "array", "minItems": 1, "maxItems": 8, "uniqueItems": True,
                             "items": {"type": "string", "pattern": "^[A-Z0-9]{3}$"}},
                "board_channels": {"type": "integer", "minimum": 1, "maximum": 8},
                "hil": {"type": "boolean"},
                "messages": {"enum": ["noble_gas", "particulate"]},
                "message_hours": {"type": "number", "exclusiveMinimum": 0, "maximum": 24 * 7},
            },
        }},
    },
}

SIMULATION_DEFAULTS = {"minutes": 60.0, "speed": 20.0, "block_seconds": 10.0, "hil_stations": 2, "workers": 2}
ADC_PARTS = {2: "ads131m02", 3: "ads131m03", 4: "ads131m04", 6: "ads131m06", 8: "ads131m08"}


@dataclass(frozen=True)
class PortPlan:
    board_name: str              # the board definition's name (a file <run>/boards/<name>.toml)
    board_id: int
    rate: float
    channels: dict[int, str]     # board channel id -> "LOC.CHA"


@dataclass(frozen=True)
class StationPlan:
    code: str
    kind: str
    index: int                   # in the whole network: key ids, seeds
    ports: tuple[PortPlan, ...] = ()
    hil: bool = False            # runs the HIL board + serial link path (the demo's station)
    messages: str | None = None  # "noble_gas" / "particulate": IMS 2.0 SAMPLEPHD messages
    message_s: float = 0.0       # their interval, simulated seconds
    message_phase_s: float = 0.0

    @property
    def channel_codes(self) -> list[str]:
        """The distinct channel codes (one signing key each)."""
        return sorted({c.split(".")[1] for p in self.ports for c in p.channels.values()})

    @property
    def n_channels(self) -> int:
        return sum(len(p.channels) for p in self.ports)


@dataclass
class Network:
    file: str
    code: str
    frame_seconds: int
    simulation: dict[str, Any]
    kinds: list[dict[str, Any]]
    boards: dict[str, dict] = field(default_factory=dict)      # name -> board definition (dict)
    stations: list[StationPlan] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.stations:
            out[s.kind] = out.get(s.kind, 0) + 1
        return out


def load_network(path: str | Path | None = None, *, stations: int | None = None,
                 simulation: dict[str, Any] | None = None) -> Network:
    """The network of the file *path* (None: :data:`DEFAULT_NETWORK`), expanded into stations.
    *stations*: scale the per-kind counts so that the total is this (each kind with a count keeps at
    least one station while the total allows; for the scaling curve).  *simulation*: values that
    replace the file's ``[simulation]`` keys (the command line's)."""
    from ims_station.config import load_toml, validate

    if path is None:
        file, data = "<default network>", tomllib.loads(DEFAULT_NETWORK)
    else:
        file, data = str(path), load_toml(path)
    validate(data, SCHEMA, file)
    net = data.get("network", {})
    sim = {**SIMULATION_DEFAULTS, **data.get("simulation", {}), **(simulation or {})}
    kinds = [dict(k) for k in data["kind"]]
    seen: dict[str, int] = {}
    for i, k in enumerate(kinds):
        where = f"kind[{i}]"
        for key in ("name", "prefix"):
            if k[key] in seen.get(key, {}):
                raise ConfigError(file, f"{where}.{key}", f"{k[key]!r} is already used by another kind")
            seen.setdefault(key, {})[k[key]] = i
        if "messages" in k:
            if any(x in k for x in ("rate", "channels", "elements", "sensor")):
                raise ConfigError(file, where, "a message kind (messages = ...) has no waveform channels")
            k.setdefault("message_hours", 12.0 if k["messages"] == "noble_gas" else 24.0)
        else:
            for key in ("sensor", "rate", "channels"):
                if key not in k:
                    raise ConfigError(file, f"{where}.{key}", "required for a waveform kind (or set messages)")
            if k.get("elements", 1) != 1 and len(k["channels"]) * _max_elements(k) > 999:
                raise ConfigError(file, f"{where}.elements", "more than 999 channels")
            lo_hi = k.get("elements")
            if isinstance(lo_hi, list) and lo_hi[0] > lo_hi[1]:
                raise ConfigError(file, f"{where}.elements", f"[{lo_hi[0]}, {lo_hi[1]}]: min above max")
    if stations is not None:
        _scale(kinds, stations, file)
    n = Network(file, net.get("code", "IM"), int(net.get("frame_seconds", 10)), sim, kinds)
    _expand(n)
    return n


def _max_elements(k: dict) -> int:
    e = k.get("elements", 1)
    return max(e) if isinstance(e, list) else int(e)


def _scale(kinds: list[dict], total: int, file: str) -> None:
    """Scale the counts to *total* stations, largest remainders; kinds keep >= 1 while possible."""
    have = sum(k["count"] for k in kinds)
    if total < 1 or have < 1:
        raise ConfigError(file, "kind", f"cannot scale {have} station(s) to {total}")
    exact = [k["count"] * total / have for k in kinds]
    counts = [int(x) for x in exact]
    for i in sorted(range(len(kinds)), key=lambda i: exact[i] - counts[i], reverse=True):
        if sum(counts) >= total:
            break
        counts[i] += 1
    # every kind present at least once if the total allows: take from the largest
    for i, k in enumerate(kinds):
        if k["count"] and not counts[i] and total >= sum(1 for x in kinds if x["count"]):
            j = max(range(len(kinds)), key=lambda j: counts[j])
            counts[j] -= 1
            counts[i] += 1
    for k, c in zip(kinds, counts):
        k["count"] = c


def _expand(n: Network) -> None:
    from ims_station.demo import station_codes

    index = 0
    hil_left = int(n.simulation["hil_stations"])
    # The HIL stations come from the first kind marked hil = true (none without one): they run the
    # HIL "sim" board (3 seismic channels and one infrasound at 100 sps) instead of the kind's layout.
    hil_kind = next((k["name"] for k in n.kinds if k.get("hil") and "messages" not in k), None)
    for i, k in enumerate(n.kinds):
        codes = station_codes(k["prefix"], k["count"]) if k["count"] else []
        for j, code in enumerate(codes):
            if "messages" in k:
                interval = float(k["message_hours"]) * 3600.0
                n.stations.append(StationPlan(code, k["name"], index, messages=k["messages"], message_s=interval,
                                              message_phase_s=interval * (j + 0.5) / len(codes)))
            elif k["name"] == hil_kind and hil_left > 0:
                hil_left -= 1
                n.stations.append(StationPlan(code, k["name"], index, hil=True))
            else:
                n.stations.append(StationPlan(code, k["name"], index, ports=tuple(_ports(n, k, j, len(codes)))))
            index += 1


def _elements(k: dict, j: int, count: int) -> int:
    e = k.get("elements", 1)
    if isinstance(e, int):
        return e
    lo, hi = e
    return lo if count == 1 else lo + round((hi - lo) * j / (count - 1))


def _ports(n: Network, k: dict, j: int, count: int) -> list[PortPlan]:
    """The station's digitizer boards: its channels (elements x channels, location codes 01.. per
    element when there are several, 00 otherwise) packed *board_channels* to a board."""
    elements = _elements(k, j, count)
    codes = [(f"{e + 1:02d}" if elements > 1 else "00", cha) for e in range(elements) for cha in k["channels"]]
    per_board = int(k.get("board_channels", len(k["channels"])))
    ports = []
    for b, start in enumerate(range(0, len(codes), per_board)):
        chunk = codes[start:start + per_board]
        name = _board(n, k, len(chunk))
        ports.append(PortPlan(name, b + 1, float(k["rate"]),
                              {i: f"{loc}.{cha}" for i, (loc, cha) in enumerate(chunk)}))
    return ports


def _board(n: Network, k: dict, channels: int) -> str:
    """The name of a board definition with *channels* inputs of the kind's sensor at its rate
    (derived from the ``sim`` board: same MCU, link and pins; an ADS131M0x with enough inputs whose
    clock gives the rate exactly)."""
    from ims_station import boards
    from ims_station.boards import nominal_calib
    from ims_station.firmware import ads131m0x

    rate = float(k["rate"])
    name = f"simnet-{k['sensor']}-{channels}ch-{rate:g}sps".replace(".", "p")
    if name in n.boards:
        return name
    from ims_station.config import load_toml

    b = load_toml(boards.board_path("sim"))
    inputs = next(i for i in sorted(ADC_PARTS) if i >= channels)
    mhz = int(round(rate * 1000))
    clk = next((mhz * 2 * osr // 1000 for osr in (8192, 4096, 2048, 16256, 1024, 512, 256, 128)
                if (mhz * 2 * osr) % 1000 == 0 and 300_000 <= mhz * 2 * osr // 1000 <= 8_200_000), None)
    if clk is None or ads131m0x.rate_settings(clk, mhz) is None:
        raise ConfigError(n.file, f"kind {k['name']}.rate", f"{rate:g} sps: no ADS131M0x clock gives it exactly")
    unit, sens, gain = {"seismic": ("m/s", 1500.0, 1), "infrasonic": ("Pa", 0.02, 4),
                        "hydroacoustic": ("Pa", 0.001, 8)}[k["sensor"]]
    chans = []
    for i in range(channels):
        # A board file's station/channel are only its defaults: each station file maps the board's
        # inputs to its own code and SEED channels ([[ports]] channels), as for the demo's boards.
        ch = {"adc_input": i, "network": n.code, "station": "SIMNT", "location": f"{i:02d}", "channel": "XXX",
              "sensor": k["sensor"], "unit": unit, "sensitivity": sens, "gain": gain, "calper": 1.0}
        ch["calib"] = float(f"{nominal_calib(ch):.6g}")
        chans.append(ch)
    b["board"] = {**{x: b["board"][x] for x in ("id", "mcu", "ram_bytes")}, "name": name,
                  "description": f"sim network: {channels} x {k['sensor']} at {rate:g} sps"}
    b["adc"] = {**{x: v for x, v in b["adc"].items()}, "part": ADC_PARTS[inputs], "inputs": inputs, "clkin_hz": clk}
    b["acquisition"] = {**{x: v for x, v in b["acquisition"].items() if x not in ("rates_mhz", "default_rate_mhz")},
                        "rates": [rate], "default_rate": rate}
    b["uart"]["baud"] = 921600
    b["channels"] = chans
    n.boards[name] = b
    return name
