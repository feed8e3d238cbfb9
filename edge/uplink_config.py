"""Configuration of the gateway's framing, outbox, keys and uplink (TOML, validated at start-up).

Owns the schema of the ``[framer]``, ``[outbox]``, ``[keys]``, ``[uplink]`` and ``[auxiliary]`` tables (with one
``[[uplink.brokers]]`` entry per broker, keys as :class:`ims_station.broker.BrokerConfig`), their
defaults (:data:`DEFAULTS`) and their resolution into :class:`UplinkSettings`.  The tables belong in
the station file (``edge/config.py`` merges :data:`TABLES` into its schema, docs/configuration.md
documents every key); a separate file passed with ``--uplink FILE`` (:func:`load_uplink_settings`)
is still read, for configurations written before the merge.

Example::

    [framer]
    frame_seconds = 10
    max_wait_s = 30

    [outbox]
    # max_bytes = 2_000_000_000     # payload bytes; default: 7 days of frames at the station's
    #                                 channels x rates (s4 worst case), capped by free disk space
    max_age_days = 7

    [keys]
    keystore = "keys"               # directory of <key_id>.pem (mode 0600) + metadata; the key
                                    # valid at a frame's time signs it (rotation, docs/keys.md)
    # station_key_id = 1            # optional pins (no rotation): frame key, and per channel
    # channel_key_ids = { "BHZ" = 101, "BHN" = 102, "BHE" = 103 }   # by channel code, or "LOC.CHA"

    [uplink]
    prefix = "ims"
    protocol = "auto"               # MQTT 5 if the broker offers it, else 3.1.1
    acknack_trust = "relay-trust"   # trust store with the relay's public key: unsigned acknacks dropped
    acknack_key_ids = [900]         # the relay's acknack key(s); default: the store's keys for relay_name
    relay_name = "IDC"              # the relay's [relay] name (acknack creator); default "RELAY"
    [[uplink.brokers]]
    host = "broker1.example.org"
    port = 8883
    tls_ca = "ca.pem"
    tls_cert = "sta01.crt"
    tls_key = "sta01.key"
    [[uplink.brokers]]
    host = "broker2.example.org"
    port = 8883
    username = "STA01"
    password_file = "mqtt.pass"
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ims_station import topics
from ims_station.config import load_toml, validate
from ims_station.errors import ConfigError

log = logging.getLogger(__name__)

_BROKER = {
    "type": "object",
    "additionalProperties": False,
    "required": ["host"],
    "properties": {k: {"type": "string"} for k in ("host", "tls_ca", "tls_cert", "tls_key", "username",
                                                   "password_file", "client_id_prefix")}
    | {"port": {"type": "integer", "minimum": 1, "maximum": 65535},
       "keepalive": {"type": "integer", "minimum": 5, "maximum": 3600}},
}

TABLES: dict[str, Any] = {
        "framer": {"type": "object", "additionalProperties": False, "properties": {
            "frame_seconds": {"type": "integer", "minimum": 1, "maximum": 3600},
            "max_wait_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 86400},
            "clock_diff_limit_us": {"type": "integer", "minimum": 1},
            "max_clock_offset_s": {"type": "number", "exclusiveMinimum": 0},
            "max_board_ahead_s": {"type": "number", "exclusiveMinimum": 0},
        }},
        "outbox": {"type": "object", "additionalProperties": False, "properties": {
            "path": {"type": "string"},
            "max_bytes": {"type": "integer", "minimum": 1 << 20},
            "max_age_days": {"type": "number", "exclusiveMinimum": 0},
            "min_free_bytes": {"type": "integer", "minimum": 0},
            "synchronous": {"enum": ["FULL", "EXTRA", "NORMAL"]},
        }},
        "keys": {"type": "object", "additionalProperties": False, "properties": {
            "keystore": {"type": "string"},
            "station_key_id": {"type": "integer"},
            "channel_key_ids": {"type": "object", "additionalProperties": {"type": "integer"}},
        }},
        "uplink": {"type": "object", "additionalProperties": False, "required": ["brokers"], "properties": {
            "prefix": {"type": "string", "pattern": "^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$"},
            "protocol": {"enum": ["auto", "5", "3.1.1"]},
            "brokers": {"type": "array", "minItems": 1, "items": _BROKER},
            "inflight": {"type": "integer", "minimum": 1, "maximum": 65535},
            "live_window_s": {"type": "number", "minimum": 0},
            "ack_timeout_s": {"type": "number", "exclusiveMinimum": 0},
            "acknack_stall_s": {"type": "number", "minimum": 0},
            "acknack_qos": {"enum": [0, 1]},
            "soh_interval_s": {"type": "number", "exclusiveMinimum": 0},
            "max_unacked": {"type": "integer", "minimum": 1},
            "acknack_trust": {"type": "string", "minLength": 1},
            "acknack_key_ids": {"type": "array", "minItems": 1, "uniqueItems": True,
                                "items": {"type": "integer", "minimum": 1, "maximum": 2147483647}},
            # The relay's [relay] name (relay/cli.py has the same pattern): the creator of its acknacks.
            "relay_name": {"type": "string", "pattern": "^[ -~]{1,8}$"},
        }},
        # Auxiliary mode ([station] mode = "auxiliary"; docs/uplink.md, "Auxiliary mode").
        "auxiliary": {"type": "object", "additionalProperties": False, "properties": {
            "release_pre_s": {"type": "number", "minimum": 0, "maximum": 86400},
            "release_post_s": {"type": "number", "minimum": 0, "maximum": 86400},
            "max_request_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 7 * 86400},
            "command_max_age_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 86400},
        }},
}

# A separate --uplink file: the same tables (the station tables may share it).
SCHEMA: dict[str, Any] = {"type": "object", "additionalProperties": True, "properties": TABLES}

# Defaults of every key (docs/configuration.md lists them; station.assemble() applies them).
DEFAULTS: dict[str, dict[str, Any]] = {
    "framer": {"frame_seconds": 10, "max_wait_s": 30.0, "clock_diff_limit_us": 1000, "max_clock_offset_s": 86400.0,
               "max_board_ahead_s": 2592000},   # 30 days
    # max_bytes None: derived (UplinkSettings.get, docs/uplink.md "Default byte bound").
    "outbox": {"max_bytes": None, "max_age_days": 7, "min_free_bytes": None, "synchronous": "FULL"},
    "uplink": {"prefix": "ims", "protocol": "auto", "inflight": 32, "max_unacked": 2000, "live_window_s": 60.0,
               "ack_timeout_s": 300.0, "acknack_stall_s": 0.0, "acknack_qos": 1,
               "soh_interval_s": 60.0, "acknack_trust": None, "acknack_key_ids": None,
               "relay_name": topics.DEFAULT_RELAY_NAME},
    "auxiliary": {"release_pre_s": 30.0, "release_post_s": 60.0, "max_request_s": 3600.0,
                  "command_max_age_s": 300.0},
}


@dataclass
class UplinkSettings:
    file: Path
    framer: dict = field(default_factory=dict)
    outbox: dict = field(default_factory=dict)
    keys: dict = field(default_factory=dict)
    uplink: dict = field(default_factory=dict)
    brokers: list = field(default_factory=list)     # BrokerConfig, paths resolved
    auxiliary: dict = field(default_factory=dict)
    # What the default byte bound is derived from: (channels, samples/s) per port, and where the
    # outbox lives (as edge/station.py places it: [outbox] path, else <data_dir>/outbox.sqlite).
    streams: list = field(default_factory=list)
    outbox_path: str | None = None
    max_bytes_how: dict | None = None               # how the default bound was derived (logged)

    def get(self, table: str, key: str) -> Any:
        """The configured value of ``[table] key``, else its default (``[outbox] max_bytes``: derived,
        see :meth:`default_max_bytes`)."""
        if table == "outbox" and key == "max_bytes" and "max_bytes" not in self.outbox:
            return self.default_max_bytes()
        return getattr(self, table).get(key, DEFAULTS[table][key])

    def default_max_bytes(self) -> int:
        """7 days of frames at the configured channels x rates, capped by the free disk space of the
        outbox's file system (measured now: call at start-up).  ``max_bytes_how`` says how."""
        from ims_station.edge.outbox import default_max_bytes

        bound, how = default_max_bytes(self.streams, frame_seconds=float(self.get("framer", "frame_seconds")),
                                       days=float(self.get("outbox", "max_age_days")), path=self.outbox_path,
                                       min_free_bytes=self.get("outbox", "min_free_bytes"))
        self.max_bytes_how = how
        log.info("%s: [outbox] max_bytes not set: %d bytes (%s)", self.file, bound, how)
        return bound


def acknack_options(settings: UplinkSettings) -> dict[str, Any]:
    """``Uplink`` keyword arguments for acknack authentication: the relay's trust store (loaded and
    checked now, so a bad directory stops the start-up), the pinned key ids and the relay's name;
    empty when ``[uplink] acknack_trust`` is not set (acknacks then rely on the broker ACL and the
    PUBACK rule).  The relay's keys are resolved now too (:func:`edge.uplink.relay_acknack_keys`):
    a trust store with no key for the relay's name, a pinned key that is not the relay's, or a key
    shared with a station is a :class:`ConfigError` naming the file and the key at fault."""
    path = settings.uplink.get("acknack_trust")
    if path is None:
        return {}
    from ims_station.auth import TrustStore
    from ims_station.edge.uplink import AcknackTrustError, relay_acknack_keys

    try:
        trust = TrustStore.load(path)
    except ConfigError:
        raise
    except Exception as err:      # AuthError and friends: name the setting that led here
        raise ConfigError(str(settings.file), "uplink.acknack_trust", f"{path}: {err}") from err
    relay_name = settings.get("uplink", "relay_name")
    key_ids = settings.uplink.get("acknack_key_ids")
    try:
        relay_acknack_keys(trust, relay_name, key_ids)
    except AcknackTrustError as err:
        raise ConfigError(str(settings.file), f"uplink.{err.setting}", err.reason) from None
    return {"acknack_trust": trust, "acknack_key_ids": key_ids, "relay_name": relay_name}


def load_uplink_settings(path: str | os.PathLike[str]) -> UplinkSettings:
    """A separate ``--uplink`` file (compatibility): validated, paths relative to it."""
    file = Path(path)
    data = load_toml(file)
    validate(data, SCHEMA, file)
    return settings_from_data(data, file)


def settings_from_data(data: dict[str, Any], file: Path) -> UplinkSettings:
    """Resolve validated tables: relative paths against *file*'s folder, semantic checks (errors
    name *file*, the key and the reason)."""
    from ims_station.broker import BrokerConfig

    base = file.resolve().parent

    def resolve(p: str | None) -> str | None:
        return None if p is None else str(p if Path(p).is_absolute() else base / p)

    brokers = []
    for i, b in enumerate(data.get("uplink", {}).get("brokers", [])):
        b = dict(b)
        for k in ("tls_ca", "tls_cert", "tls_key", "password_file"):
            if k in b:
                b[k] = resolve(b[k])
        brokers.append(BrokerConfig.from_mapping(b, file=str(file), key=f"uplink.brokers[{i}]"))
    keys = dict(data.get("keys", {}))
    if "keystore" in keys:
        keys["keystore"] = resolve(keys["keystore"])
    if ("station_key_id" in keys or keys.get("channel_key_ids")) and "keystore" not in keys:
        raise ConfigError(str(file), "keys.keystore", "key ids given but no keystore directory")
    outbox = dict(data.get("outbox", {}))
    if "path" in outbox:
        outbox["path"] = resolve(outbox["path"])
    uplink = {k: v for k, v in data.get("uplink", {}).items() if k != "brokers"}
    if "acknack_trust" in uplink:
        uplink["acknack_trust"] = resolve(uplink["acknack_trust"])
    else:
        for k in ("acknack_key_ids", "relay_name"):    # they only mean something with a trust store
            if k in uplink:
                raise ConfigError(str(file), f"uplink.{k}", f"{k} given but no acknack_trust directory: "
                                  "acknacks are not authenticated without one")
    data_dir = Path(data.get("station", {}).get("data_dir", "data"))
    outbox_path = outbox.get("path") or str((data_dir if data_dir.is_absolute() else base / data_dir) / "outbox.sqlite")
    return UplinkSettings(file, dict(data.get("framer", {})), outbox, keys, uplink, brokers,
                          auxiliary=dict(data.get("auxiliary", {})),
                          streams=_streams(data.get("ports", [])), outbox_path=outbox_path)


def _streams(ports: list[dict[str, Any]]) -> list[tuple[int, float]]:
    """(mapped channels, samples/s) per port: the rate is the board definition's ``default_rate``
    (what the firmware acquires unless told otherwise); a board that cannot be read here counts at
    100 sps (edge/config.py reports the bad board itself)."""
    from ims_station import boards

    out = []
    for p in ports:
        n = len(p.get("channels", {}))
        try:
            rate = float(boards.load_board(p.get("board", "sim"))["acquisition"]["default_rate"])
        except Exception:
            rate = 100.0
        out.append((n, rate))
    return out
