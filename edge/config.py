"""The station configuration file (TOML) of the edge gateway.

Owns: the schema of the station file, its semantic checks (unique ports and board ids, SEED code
syntax, channel ids that exist on the port's board), loading the per-board HMAC keys through :func:`ims_station.config.read_secret_file`
(mode 0600, owned by us, no default key) and the resulting :class:`StationConfig`.
docs/configuration.md documents every key and default; keep the two in step.

Does not own: TOML parsing and JSON-Schema validation mechanics (``ims_station.config``, which
makes every error read ``file: key: reason``), board definitions (``boards/``), and the gateway's
``[framer]``, ``[outbox]``, ``[keys]`` and ``[uplink]`` tables: their schema, defaults and resolution
are ``edge/uplink_config.py``'s (``[trigger]``'s are ``edge/trigger_stage.py``'s, ``[noble_gas]``'s
``edge/noblegas.py``'s), merged into :data:`SCHEMA` here so that one station file configures
the whole gateway (unknown top-level tables are rejected, so a typo never goes unnoticed).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ims_station import boards
from ims_station.config import load_toml, read_secret_file, validate
from ims_station.errors import ConfigError

from ims_station.statusapi import SCHEMA as STATUS_SCHEMA

from .ingest import DEFAULT_MAX_RESEND_TRIES, DEFAULT_RESEND_TIMEOUT
from .noblegas import SCHEMA as NOBLE_GAS_SCHEMA
from .trigger_stage import SCHEMA as TRIGGER_SCHEMA
from .uplink_config import TABLES as GATEWAY_TABLES
from .uplink_config import UplinkSettings, settings_from_data

CODE_RE = re.compile(r"^[A-Z0-9]{1,5}$")
NET_RE = re.compile(r"^[A-Z0-9]{1,2}$")
LOC_RE = re.compile(r"^[A-Z0-9]{0,2}$")
CHA_RE = re.compile(r"^[A-Z0-9]{3}$")

_LINK = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "resend_timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 600},
        "resend_margin": {"type": "number", "minimum": 0, "maximum": 60},
        "max_resend_tries": {"type": "integer", "minimum": 1, "maximum": 1000},
        "ack_interval": {"type": "number", "exclusiveMinimum": 0, "maximum": 3600},
        "command_timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 3600},
        "max_held": {"type": "integer", "minimum": 64, "maximum": 1 << 20},
        "max_inflight_bytes": {"type": "integer", "minimum": 512, "maximum": 1 << 20},
        "adapt_packet_ms": {"type": "boolean"},
        "min_packet_ms": {"type": "integer", "minimum": 1, "maximum": 65535},
    },
}

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["station", "ports"],
    "properties": {
        "station": {
            "type": "object",
            "additionalProperties": False,
            "required": ["code", "network"],
            "properties": {
                "code": {"type": "string"},
                "network": {"type": "string"},
                "data_dir": {"type": "string", "minLength": 1},
                "description": {"type": "string"},
                # auxiliary: data kept in the outbox, sent only for events and requests ([auxiliary]).
                "mode": {"enum": ["continuous", "auxiliary"]},
            },
        },
        "link": _LINK,
        "ports": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["url", "key_file"],
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "url": {"type": "string", "minLength": 1},
                    "baudrate": {"type": "integer", "minimum": 300, "maximum": 12_000_000},
                    "timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 10},
                    "board": {"type": "string", "minLength": 1},
                    "board_id": {"type": "integer", "minimum": 0, "maximum": 65535},
                    "key_file": {"type": "string", "minLength": 1},
                    "channels": {
                        "type": "object",
                        "propertyNames": {"pattern": "^[0-9]{1,2}$"},
                        "additionalProperties": {"type": "string"},
                    },
                    "link": _LINK,
                },
            },
        },
        **GATEWAY_TABLES,
        "trigger": TRIGGER_SCHEMA,          # edge/trigger_stage.py owns it
        "noble_gas": NOBLE_GAS_SCHEMA,      # edge/noblegas.py owns it
        "status": STATUS_SCHEMA,            # the local status API: ims_station/statusapi.py owns it
    },
}

DEFAULTS = {
    "data_dir": "data",
    "mode": "continuous",
    "baudrate": 115200,
    "timeout": 0.05,
    "board": "sim",
    "link": {"resend_timeout": DEFAULT_RESEND_TIMEOUT, "max_resend_tries": DEFAULT_MAX_RESEND_TRIES,
             "ack_interval": 1.0, "command_timeout": 5.0, "max_held": 2048},
}


@dataclass(frozen=True)
class PortConfig:
    name: str
    url: str
    baudrate: int
    timeout: float
    board: str
    board_id: int | None
    key_file: Path
    key: bytes = field(repr=False)     # (None only from a doctor's lenient load_station_config)
    channels: dict[int, str]          # channel id -> SEED code NET.STA.LOC.CHA
    link: dict[str, Any]              # LinkDecoder keyword arguments

    def codes(self, board_id: int) -> dict[tuple[int, int], str]:
        """The StreamAssembler's code map for this port's board."""
        return {(board_id, ch): code for ch, code in self.channels.items()}


@dataclass(frozen=True)
class StationConfig:
    file: Path
    code: str
    network: str
    data_dir: Path
    ports: list[PortConfig]
    raw: dict[str, Any] = field(repr=False)   # the whole validated document, for later sections
    settings: UplinkSettings | None = None     # [framer] [outbox] [keys] [uplink], resolved
    mode: str = "continuous"                   # [station] mode: "continuous" or "auxiliary"

    @property
    def auxiliary(self) -> bool:
        """Auxiliary station: data stays in the outbox until an event or a request releases it."""
        return self.mode == "auxiliary"

    @property
    def gateway_tables(self) -> list[str]:
        """Which of the gateway tables the file sets (the rest take their defaults)."""
        return [t for t in GATEWAY_TABLES if t in self.raw]


def load_station_config(path: str | os.PathLike[str], *,
                        read_key: Callable[..., bytes | None] = read_secret_file) -> StationConfig:
    """Read, validate and resolve a station file; every error is ``ConfigError(file, key, reason)``.

    *read_key* reads each port's ``key_file`` (``read_secret_file(path, what=...)``); ``ims-station
    doctor`` passes one that records a bad key file and goes on, so one problem does not hide the
    others."""
    file = Path(path)
    data = load_toml(file)
    validate(data, SCHEMA, file)
    base = file.resolve().parent
    st = data["station"]
    if not CODE_RE.match(st["code"]):
        raise ConfigError(str(file), "station.code", f"{st['code']!r} is not 1-5 upper-case letters or digits")
    if not NET_RE.match(st["network"]):
        raise ConfigError(str(file), "station.network", f"{st['network']!r} is not 1-2 upper-case letters or digits")
    link_defaults = dict(DEFAULTS["link"], **data.get("link", {}))
    ports = []
    seen_url: dict[str, int] = {}
    seen_id: dict[int, int] = {}
    seen_code: dict[str, str] = {}
    board_channels: dict[str, int] = {}
    for i, p in enumerate(data["ports"]):
        where = f"ports[{i}]"
        url = p["url"]
        if url in seen_url:
            raise ConfigError(str(file), f"{where}.url", f"{url!r} is already used by ports[{seen_url[url]}]")
        seen_url[url] = i
        bid = p.get("board_id")
        if bid is not None:
            if bid in seen_id:
                raise ConfigError(str(file), f"{where}.board_id", f"board id {bid} is already used by ports[{seen_id[bid]}]")
            seen_id[bid] = i
        board = p.get("board", DEFAULTS["board"])
        if board not in board_channels:
            board_channels[board] = _board_channel_count(file, f"{where}.board", board)
        n = board_channels[board]
        channels = {}
        for ch, code in p.get("channels", {}).items():
            key = f"{where}.channels.{ch}"
            if int(ch) >= n:
                # The board numbers its channels by their order in its [[channels]]; a code for an
                # id it never sends would name a stream that never comes (and hide a typo).
                raise ConfigError(str(file), key, f"board {board!r} has {n} channels (0-{n - 1}): there is no channel {ch}")
            full = _seed_code(file, key, code, st)
            if full in seen_code:
                raise ConfigError(str(file), key, f"SEED code {full} is already used by {seen_code[full]}")
            seen_code[full] = key
            channels[int(ch)] = full
        key_file = Path(p["key_file"])
        if not key_file.is_absolute():
            key_file = base / key_file
        # KeyFileError names the key file itself; the key says which entry of this file asked for it.
        key = read_key(key_file, what=f"{file}: {where}.key_file")
        ports.append(PortConfig(
            name=p.get("name", f"port{i}"), url=url, baudrate=p.get("baudrate", DEFAULTS["baudrate"]),
            timeout=float(p.get("timeout", DEFAULTS["timeout"])), board=board,
            board_id=bid, key_file=key_file, key=key, channels=channels,
            link=dict(link_defaults, **p.get("link", {}))))
    data_dir = Path(st.get("data_dir", DEFAULTS["data_dir"]))
    if not data_dir.is_absolute():
        data_dir = base / data_dir
    mode = st.get("mode", DEFAULTS["mode"])
    if "auxiliary" in data and mode != "auxiliary":
        raise ConfigError(str(file), "auxiliary", 'settings of auxiliary mode, but [station] mode is '
                          f'{mode!r}: set mode = "auxiliary" or remove the table')
    cfg = StationConfig(file=file, code=st["code"], network=st["network"], data_dir=data_dir,
                        ports=ports, raw=data, settings=settings_from_data(data, file), mode=mode)
    if "status" in data:
        # A non-loopback address without allow_remote stops the start-up here (file: status.listen: reason).
        from ims_station.statusapi import settings_from_table

        settings_from_table(data["status"], file=file, data_dir=data_dir)
    if "trigger" in data:
        # Checked now against the ports' channels and rates, so that a bad [trigger] stops the
        # start-up with the key named (the stage resolves the same table again when it is built).
        from .trigger_stage import settings_from_station

        settings_from_station(cfg)
    if "noble_gas" in data:
        from .noblegas import settings_from_station as noble_gas_settings

        noble_gas_settings(cfg)
    return cfg


def _board_channel_count(file: Path, key: str, board: str) -> int:
    """How many channels the board definition *board* (a name in ``boards/`` or a path) has.

    An unknown name is this file's error (``ports[i].board``); an invalid board definition is
    reported by :func:`ims_station.boards.load_board` against the board file, where the fix is.
    """
    if not boards.board_path(board).exists():
        raise ConfigError(str(file), key, f"no board named {board!r} (known: {', '.join(boards.list_boards())})")
    return len(boards.load_board(board)["channels"])


def _seed_code(file: Path, key: str, code: str, st: dict[str, Any]) -> str:
    """``LOC.CHA`` (station and network from [station]) or a full ``NET.STA.LOC.CHA``."""
    parts = code.split(".")
    if len(parts) == 2:
        parts = [st["network"], st["code"], *parts]
    if len(parts) != 4:
        raise ConfigError(str(file), key, f"{code!r} is neither LOC.CHA nor NET.STA.LOC.CHA")
    net, sta, loc, cha = parts
    for part, rx, what in ((net, NET_RE, "network"), (sta, CODE_RE, "station"), (loc, LOC_RE, "location"),
                           (cha, CHA_RE, "channel")):
        if not rx.match(part):
            raise ConfigError(str(file), key, f"{what} code {part!r} in {code!r} is invalid")
    return ".".join(parts)
