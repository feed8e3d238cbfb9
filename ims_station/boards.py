"""Board definitions (``boards/*.toml``): validation, loading, ring-capacity figures and freezing.

The definitions are package data: ``boards/`` is installed as the package ``ims_station.boards_data``
(pyproject.toml) and found through :mod:`importlib.resources`, never through a path relative to this
file, so a wheel install knows the same boards as the source tree.

Owns: the board schema (JSON Schema, checked through :func:`ims_station.config.validate`), the
semantic checks a schema cannot express (pins used twice or unusable on the MCU, duplicate SEED
channel codes, rates the ADC cannot produce from its clock, DATA packets larger than
``link.MAX_PAYLOAD``, a UART too slow for the data, a ring larger than the RAM), the derived values
the firmware needs (rates in mHz), the ring capacity in seconds, and :func:`freeze`, which turns a
board into the source of the MicroPython module ``board_config.py`` (``BOARD = {...}``, literals
only) that is copied to the board at deploy time -- the board never parses TOML.

Does not own: the firmware's use of those values (``firmware/digitizer.py``), nor the station
configuration (``edge/config.py``).  Every error is a :class:`~ims_station.errors.ConfigError`
naming file, key and reason.
"""

from __future__ import annotations

import copy
import os
from importlib import resources
from pathlib import Path
from typing import Any

from ims_station.config import load_toml, validate
from ims_station.errors import ConfigError
from ims_station.firmware import ads131m0x, link

BOARDS_PACKAGE = "ims_station.boards_data"     # boards/ in the repository (pyproject.toml's package-dir)


def _boards_dir() -> Path:
    d = resources.files(BOARDS_PACKAGE)
    if not isinstance(d, Path):      # a zip import: the TOML files are not files; we install unpacked
        raise ConfigError(str(d), "", "the board definitions are not on a file system; install "
                          "ims-station unpacked (pip install), not as a zip")
    return d


BOARDS_DIR = _boards_dir()
DEFAULT_BOARD = "sim"
SOH_PACKET_BYTES = link.OVERHEAD + link.SOH_SIZE
UART_BITS_PER_BYTE = 10          # 8N1
UART_MAX_LOAD = 0.5              # data may use at most half the line: the rest is for resends

_pin = {"type": "integer", "minimum": 0, "maximum": 63}
_code = {"type": "string"}

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "required": ["board", "uart", "spi", "adc", "pins", "acquisition", "channels"],
    "properties": {
        "board": {
            "type": "object", "additionalProperties": False,
            "required": ["name", "id", "mcu", "ram_bytes"],
            "properties": {
                "name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,31}$"},
                "id": {"type": "integer", "minimum": 1, "maximum": 65535},
                "mcu": {"enum": ["rp2040", "esp32", "sim"]},
                "description": {"type": "string"},
                "ram_bytes": {"type": "integer", "minimum": 65536},
            },
        },
        "uart": {
            "type": "object", "additionalProperties": False,
            "required": ["id", "tx", "rx", "baud"],
            "properties": {
                "id": {"type": "integer", "minimum": 0, "maximum": 3},
                "tx": _pin, "rx": _pin,
                "baud": {"type": "integer", "minimum": 9600, "maximum": 3000000},
            },
        },
        "spi": {
            "type": "object", "additionalProperties": False,
            "required": ["id", "sck", "mosi", "miso", "baud"],
            "properties": {
                "id": {"type": "integer", "minimum": 0, "maximum": 3},
                "sck": _pin, "mosi": _pin, "miso": _pin,
                "baud": {"type": "integer", "minimum": 100000, "maximum": 25000000},
            },
        },
        "adc": {
            "type": "object", "additionalProperties": False,
            "required": ["part", "inputs", "clkin_hz", "cs", "drdy"],
            "properties": {
                "part": {"enum": ["ads131m02", "ads131m03", "ads131m04", "ads131m06", "ads131m08"]},
                "inputs": {"type": "integer", "enum": [2, 3, 4, 6, 8]},
                "clkin_hz": {"type": "integer", "minimum": 300000, "maximum": 8400000},
                "word_bits": {"enum": [24, 32], "default": 24},
                "input_crc": {"type": "boolean", "default": True},
                "cs": _pin, "drdy": _pin, "clkin_pin": _pin,
            },
        },
        "pins": {
            "type": "object", "additionalProperties": False,
            "required": ["pps", "tamper"],
            "properties": {
                "pps": _pin, "tamper": _pin, "supply_adc": _pin, "cal_enable": _pin, "led": _pin,
                "tamper_active": {"enum": [0, 1], "default": 1},
            },
        },
        "supply": {
            "type": "object", "additionalProperties": False,
            "properties": {
                "vref_mv": {"type": "integer", "minimum": 1000, "maximum": 5000},
                "divider": {"type": "number", "exclusiveMinimum": 0},
                "low_mv": {"type": "integer", "minimum": 0, "maximum": 65535},
            },
        },
        "gnss_uart": {
            "type": "object", "additionalProperties": False,
            "required": ["id", "rx", "baud"],
            "properties": {
                "id": {"type": "integer", "minimum": 0, "maximum": 3},
                "rx": _pin,
                "baud": {"type": "integer", "minimum": 4800, "maximum": 921600},
            },
        },
        "calibration": {
            "type": "object", "additionalProperties": False,
            "properties": {"enabled": {"type": "boolean"}},
        },
        "timing": {
            "type": "object", "additionalProperties": False,
            "properties": {"holdover_s": {"type": "integer", "minimum": 0, "maximum": 864000}},
        },
        "acquisition": {
            "type": "object", "additionalProperties": False,
            "required": ["rates", "default_rate", "packet_ms", "ring_bytes", "ring_packets"],
            "properties": {
                "rates": {"type": "array", "minItems": 1, "uniqueItems": True,
                          "items": {"type": "number", "exclusiveMinimum": 0, "maximum": 32000}},
                "default_rate": {"type": "number", "exclusiveMinimum": 0},
                "packet_ms": {"type": "integer", "minimum": 10, "maximum": 60000},
                "soh_interval_s": {"type": "integer", "minimum": 1, "maximum": 3600},
                "diff_packing": {"type": "boolean"},
                "ring_bytes": {"type": "integer", "minimum": 8192, "maximum": 16777216},
                "ring_packets": {"type": "integer", "minimum": 16, "maximum": 65535},
            },
        },
        "channels": {
            "type": "array", "minItems": 1, "maxItems": link.MAX_CHANNELS,
            "items": {
                "type": "object", "additionalProperties": False,
                "required": ["adc_input", "network", "station", "location", "channel", "sensor",
                             "unit", "sensitivity", "gain", "calib", "calper"],
                "properties": {
                    "adc_input": {"type": "integer", "minimum": 0, "maximum": 7},
                    # SEED 2.4 codes: network 1-2, station 1-5, location 0-2, channel 3 characters
                    # (band, instrument, orientation), upper-case letters and digits.
                    "network": {"type": "string", "pattern": "^[A-Z0-9]{1,2}$"},
                    "station": {"type": "string", "pattern": "^[A-Z0-9]{1,5}$"},
                    "location": {"type": "string", "pattern": "^[A-Z0-9]{0,2}$"},
                    "channel": {"type": "string", "pattern": "^[A-Z][A-Z0-9][A-Z0-9]$"},
                    "sensor": {"enum": ["seismic", "hydroacoustic", "infrasonic", "weather"]},
                    "unit": {"type": "string", "minLength": 1},
                    "sensitivity": {"type": "number", "exclusiveMinimum": 0,
                                    "description": "volts at the ADC input per physical unit"},
                    "gain": {"enum": list(ads131m0x.GAINS)},
                    "calib": {"type": "number", "exclusiveMinimum": 0,
                              "description": "CD-1.1 (CSS 3.0) calibration factor: seismic nm of "
                                             "displacement per count at calper, otherwise units per count"},
                    "calper": {"type": "number", "exclusiveMinimum": 0,
                               "description": "CD-1.1 calibration period, seconds"},
                },
            },
        },
    },
}

# Per-MCU pin rules: valid GPIO numbers, pins the module uses internally, pins that cannot drive
# an output, pins with an ADC.
MCU_PINS: dict[str, dict[str, set[int]]] = {
    # Raspberry Pi Pico: GP0..GP22 and GP26..GP28 on the header, GP25 the LED; GP23/24/29 are used
    # by the board (SMPS mode, VBUS sense, VSYS/3 on ADC3).
    "rp2040": {"valid": set(range(0, 23)) | {25, 26, 27, 28}, "reserved": set(),
               "input_only": set(), "adc": {26, 27, 28}},
    # ESP32-WROVER: GPIO6-11 are the SPI flash, 16/17 the PSRAM; 34-39 are input only.
    "esp32": {"valid": set(range(0, 40)) - {20, 24, 28, 29, 30, 31},
              "reserved": {6, 7, 8, 9, 10, 11, 16, 17}, "input_only": {34, 35, 36, 37, 38, 39},
              "adc": {32, 33, 34, 35, 36, 37, 38, 39}},
    "sim": {"valid": set(range(0, 64)), "reserved": set(), "input_only": set(), "adc": set(range(0, 64))},
}
# (section, key, needs an output driver)
PIN_KEYS = [
    ("uart", "tx", True), ("uart", "rx", False), ("spi", "sck", True), ("spi", "mosi", True),
    ("spi", "miso", False), ("adc", "cs", True), ("adc", "drdy", False), ("adc", "clkin_pin", True),
    ("pins", "pps", False), ("pins", "tamper", False), ("pins", "supply_adc", False),
    ("pins", "cal_enable", True), ("pins", "led", True), ("gnss_uart", "rx", False),
]


def board_path(name_or_path: str | os.PathLike[str]) -> Path:
    s = str(name_or_path)
    if os.sep in s or s.endswith(".toml") or (os.altsep and os.altsep in s):
        return Path(s)
    return BOARDS_DIR / f"{s}.toml"


def list_boards() -> list[str]:
    """Names of the installed boards (``boards/*.toml``, sorted)."""
    return sorted(p.stem for p in BOARDS_DIR.glob("*.toml"))


def rate_mhz(rate: float, file: str = "", key: str = "") -> int:
    mhz = round(rate * 1000)
    if abs(mhz - rate * 1000) > 1e-6:
        raise ConfigError(file, key, f"rate {rate} is not a whole number of millihertz")
    return mhz


def samples_per_packet(rate_mhz_: int, packet_ms: int) -> int:
    return rate_mhz_ * packet_ms // 1_000_000


def data_packet_bytes(board: dict[str, Any], rate_mhz_: int) -> int:
    """Worst-case size of one DATA packet (every slot in raw int32), header to CRC, before COBS."""
    n = samples_per_packet(rate_mhz_, board["acquisition"]["packet_ms"])
    c = len(board["channels"])
    return link.OVERHEAD + link.data_size(n, c, [link.ENC_I32] * c)


def line_bytes_per_second(board: dict[str, Any], rate_mhz_: int) -> float:
    """Worst-case bytes per second on the line (COBS-encoded and delimited) for data and SOH."""
    acq = board["acquisition"]
    pkt = data_packet_bytes(board, rate_mhz_)
    per_s = 1000 / acq["packet_ms"]
    soh = SOH_PACKET_BYTES + SOH_PACKET_BYTES // 254 + 2
    return per_s * (pkt + pkt // 254 + 2) + soh / acq.get("soh_interval_s", 10)


def ring_capacity_seconds(board: dict[str, Any], rate: float) -> float:
    """Seconds of data the ring buffer is guaranteed to hold at *rate* (samples/s).

    Worst case: every DATA packet in raw int32 (noise that defeats difference packing), SOH
    packets included, one packet's worth of bytes lost at the wrap of the circular log, and the
    index limit ``ring_packets``.  Difference packing typically doubles to quadruples it.
    """
    acq = board["acquisition"]
    mhz = rate_mhz(rate)
    pkt = data_packet_bytes(board, mhz)
    soh_per_s = 1 / acq.get("soh_interval_s", 10)
    data_per_s = 1000 / acq["packet_ms"]
    by_bytes = (acq["ring_bytes"] - pkt) / (pkt * data_per_s + SOH_PACKET_BYTES * soh_per_s)
    by_index = acq["ring_packets"] / (data_per_s + soh_per_s)
    return max(0.0, min(by_bytes, by_index))


def capacity_table(boards: list[str] | None = None) -> list[dict[str, Any]]:
    """Rows (board, rate, channels, packet bytes, ring bytes, seconds) for docs/boards.md."""
    rows = []
    for name in boards or list_boards():
        b = load_board(name)
        for rate in b["acquisition"]["rates"]:
            rows.append({"board": name, "rate": rate, "channels": len(b["channels"]),
                         "packet_bytes": data_packet_bytes(b, rate_mhz(rate)),
                         "ring_bytes": b["acquisition"]["ring_bytes"],
                         "ring_packets": b["acquisition"]["ring_packets"],
                         "seconds": ring_capacity_seconds(b, rate)})
    return rows


def _check_pins(b: dict[str, Any], file: str) -> None:
    rules = MCU_PINS[b["board"]["mcu"]]
    seen: dict[int, str] = {}
    for section, key, output in PIN_KEYS:
        pin = b.get(section, {}).get(key)
        if pin is None:
            continue
        where = f"{section}.{key}"
        if pin not in rules["valid"]:
            raise ConfigError(file, where, f"GPIO {pin} does not exist on {b['board']['mcu']}")
        if pin in rules["reserved"]:
            raise ConfigError(file, where, f"GPIO {pin} is used inside the {b['board']['mcu']} module")
        if output and pin in rules["input_only"]:
            raise ConfigError(file, where, f"GPIO {pin} is input-only on {b['board']['mcu']}")
        if key == "supply_adc" and pin not in rules["adc"]:
            raise ConfigError(file, where, f"GPIO {pin} has no ADC on {b['board']['mcu']}")
        if pin in seen:
            raise ConfigError(file, where, f"GPIO {pin} is already used by {seen[pin]}")
        seen[pin] = where


def nominal_calib(ch: dict[str, Any], calper: float | None = None) -> float:
    """The CD-1.1 ``calib`` of board channel *ch* as its nominal sensitivity and PGA gain give it.

    CD-1.1 takes CSS 3.0's ``calib``: for a seismic channel nanometres of ground *displacement* per
    count at the period ``calper`` (a velocity sensor's m/s become displacement by T/2pi, an
    accelerometer's m/s**2 by (T/2pi)**2); for hydroacoustic, infrasonic and weather channels the
    channel's unit (Pa, ...) per count.  One count is ``VREF / gain / 2**23`` volts at the ADC input
    (``firmware/ads131m0x.py``), and the sensor gives ``sensitivity`` volts per unit.  A station puts
    its measured calibration in the board file; this is what it should be near (a test holds the
    shipped boards to it, which catches a value in the wrong unit).
    """
    import math

    per_count = ads131m0x.VREF / ch["gain"] / (ads131m0x.FULL_SCALE + 1) / ch["sensitivity"]
    if ch["sensor"] != "seismic":
        return per_count
    period = float(ch["calper"] if calper is None else calper)
    to_displacement = {"m": 1.0, "m/s": period / (2 * math.pi), "m/s**2": (period / (2 * math.pi)) ** 2}
    if ch["unit"] not in to_displacement:
        raise ValueError(f"seismic unit {ch['unit']!r} is not one of {sorted(to_displacement)}")
    return per_count * 1e9 * to_displacement[ch["unit"]]


def _check_channels(b: dict[str, Any], file: str) -> None:
    adc = b["adc"]
    if int(adc["part"][-1]) != adc["inputs"]:
        raise ConfigError(file, "adc.inputs", f"{adc['part']} has {adc['part'][-1]} inputs, not {adc['inputs']}")
    codes: dict[tuple, int] = {}
    inputs: dict[int, int] = {}
    for i, ch in enumerate(b["channels"]):
        if ch["adc_input"] >= adc["inputs"]:
            raise ConfigError(file, f"channels[{i}].adc_input",
                              f"input {ch['adc_input']} does not exist on {adc['part']} (0..{adc['inputs'] - 1})")
        if ch["adc_input"] in inputs:
            raise ConfigError(file, f"channels[{i}].adc_input",
                              f"input {ch['adc_input']} already used by channels[{inputs[ch['adc_input']]}]")
        inputs[ch["adc_input"]] = i
        code = (ch["network"], ch["station"], ch["location"], ch["channel"])
        if code in codes:
            raise ConfigError(file, f"channels[{i}].channel",
                              f"{'.'.join(code)} duplicates channels[{codes[code]}]")
        codes[code] = i


def _check_acquisition(b: dict[str, Any], file: str) -> None:
    acq = b["acquisition"]
    adc = b["adc"]
    mhz = []
    for i, r in enumerate(acq["rates"]):
        m = rate_mhz(r, file, f"acquisition.rates[{i}]")
        if ads131m0x.rate_settings(adc["clkin_hz"], m) is None:
            can = ", ".join(f"{x / 1000:g}" for x in ads131m0x.rates_mhz(adc["clkin_hz"]))
            raise ConfigError(file, f"acquisition.rates[{i}]",
                              f"{r} sps is not f_CLKIN/2/OSR with clkin_hz = {adc['clkin_hz']} "
                              f"(the {adc['part']} can do: {can})")
        n = m * acq["packet_ms"]
        if n % 1_000_000:
            raise ConfigError(file, "acquisition.packet_ms",
                              f"{acq['packet_ms']} ms at {r} sps is not a whole number of samples")
        spp = n // 1_000_000
        if spp < 1 or spp > 0xFFFF:
            raise ConfigError(file, "acquisition.packet_ms", f"{spp} samples per packet at {r} sps")
        payload = data_packet_bytes(b, m) - link.OVERHEAD
        if payload > link.MAX_PAYLOAD:
            raise ConfigError(file, "acquisition.packet_ms",
                              f"a DATA packet at {r} sps would carry {payload} bytes (worst case), more "
                              f"than link.MAX_PAYLOAD = {link.MAX_PAYLOAD}; shorten packet_ms")
        if 2 * (payload + link.OVERHEAD) > acq["ring_bytes"]:
            raise ConfigError(file, "acquisition.ring_bytes", f"holds fewer than 2 DATA packets at {r} sps")
        need = line_bytes_per_second(b, m) * UART_BITS_PER_BYTE
        if need > UART_MAX_LOAD * b["uart"]["baud"]:
            raise ConfigError(file, "uart.baud",
                              f"{b['uart']['baud']} baud cannot carry {r} sps x {len(b['channels'])} "
                              f"channels ({need:.0f} bit/s worst case, at most {UART_MAX_LOAD:.0%} of the line)")
        mhz.append(m)
    d = rate_mhz(acq["default_rate"], file, "acquisition.default_rate")
    if d not in mhz:
        raise ConfigError(file, "acquisition.default_rate", f"{acq['default_rate']} is not one of rates")
    if acq["ring_bytes"] > b["board"]["ram_bytes"] // 2:
        raise ConfigError(file, "acquisition.ring_bytes",
                          f"{acq['ring_bytes']} bytes is more than half the board's RAM ({b['board']['ram_bytes']})")
    acq["rates_mhz"] = mhz
    acq["default_rate_mhz"] = d


def _defaults(b: dict[str, Any]) -> None:
    b["adc"].setdefault("word_bits", 24)
    b["adc"].setdefault("input_crc", True)
    b["pins"].setdefault("tamper_active", 1)
    b.setdefault("supply", {})
    b.setdefault("calibration", {}).setdefault("enabled", False)
    b.setdefault("timing", {}).setdefault("holdover_s", 3600)
    acq = b["acquisition"]
    acq.setdefault("soh_interval_s", 10)
    acq.setdefault("diff_packing", True)


def check_board(data: dict[str, Any], file: str | os.PathLike[str] = "<board>") -> dict[str, Any]:
    """Validate a board (parsed TOML) and return the normalised dict the firmware uses.

    Raises ConfigError(file, key, reason) on the first problem found.
    """
    file = str(file)
    validate(data, SCHEMA, file)
    b = copy.deepcopy(data)
    _defaults(b)
    _check_pins(b, file)
    _check_channels(b, file)
    _check_acquisition(b, file)
    if b["board"]["name"] != Path(file).stem and Path(file).suffix == ".toml":
        raise ConfigError(file, "board.name", f"'{b['board']['name']}' differs from the file name")
    return b


def load_board(name_or_path: str | os.PathLike[str] = DEFAULT_BOARD) -> dict[str, Any]:
    """Load and validate a board by name (``boards/<name>.toml``) or path."""
    path = board_path(name_or_path)
    if not path.exists() and not str(name_or_path).endswith(".toml"):
        raise ConfigError(str(path), "", f"no board named '{name_or_path}' (known: {', '.join(list_boards())})")
    return check_board(load_toml(path), path)


def freeze(board: dict[str, Any]) -> str:
    """Source of the MicroPython module ``board_config.py``: ``BOARD = {...}`` with literals only."""
    lines = [
        "# Generated by ims_station.boards.freeze() -- do not edit; edit boards/%s.toml instead."
        % board["board"]["name"],
        "# Frozen board definition: the firmware imports BOARD and never parses TOML.",
        "BOARD = " + _literal(board, 0),
        "",
    ]
    return "\n".join(lines)


def write_frozen(board: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write :func:`freeze` output to *path* (e.g. ``build/board_config.py``) and return it."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(freeze(board), encoding="ascii")
    return p


def _literal(v: Any, indent: int) -> str:
    pad = "    " * (indent + 1)
    if isinstance(v, dict):
        if not v:
            return "{}"
        items = [f"{pad}{_literal(str(k), 0)}: {_literal(v[k], indent + 1)}," for k in sorted(v)]
        return "{\n" + "\n".join(items) + "\n" + "    " * indent + "}"
    if isinstance(v, (list, tuple)):
        if all(not isinstance(x, (dict, list, tuple)) for x in v):
            return "[" + ", ".join(_literal(x, 0) for x in v) + "]"
        return "[\n" + "\n".join(f"{pad}{_literal(x, indent + 1)}," for x in v) + "\n" + "    " * indent + "]"
    if isinstance(v, bool):
        return "True" if v else "False"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, str):
        if not v.isascii():
            raise ConfigError("<board>", "", f"non-ASCII text {v!r} cannot be frozen")
        return repr(v)
    raise TypeError(f"cannot freeze {type(v).__name__}")
