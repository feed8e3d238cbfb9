"""Which state store and archive a relay uses: the ``[relay.state]`` table of the relay config.

Owns the table's schema, its checks (errors name file, key and reason) and opening the stores it
names: the embedded default ``sqlite`` (``<data_dir>/state.sqlite`` and the ``FileArchive`` under
``<data_dir>/archive``, one host) or ``postgresql`` (``relay.pgstore``: state and archive index in
PostgreSQL, the bytes as content-addressed objects under ``objects_dir``, relays on any number of
hosts).  It does not own the stores themselves (``relay.state``, ``relay.archive``,
``relay.pgstore``) nor the rest of the relay config (``relay.cli``)::

    [relay.state]
    backend = "postgresql"              # default "sqlite"
    dsn_file = "relay-db.dsn"           # libpq connection string, in a file (mode 0600 when it holds
                                        #   a password); or inline: dsn = "host=db1 dbname=ims_relay user=relay"
                                        #   (inline only without a password)
    schema = "public"                   # PostgreSQL schema of the tables (created if missing)
    objects_dir = "/srv/ims-relay/objects-root"   # default <data_dir>/archive; shared by every relay

There is no default DSN and no default credential.  TLS: libpq's ``sslmode=verify-full
sslrootcert=...`` (and ``sslcert``/``sslkey``) in the DSN.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ims_station.config import ConfigError

BACKENDS = ("sqlite", "postgresql")

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "backend": {"enum": list(BACKENDS)},
        "dsn": {"type": "string", "minLength": 1, "maxLength": 4096},
        "dsn_file": {"type": "string", "minLength": 1},
        "schema": {"type": "string", "pattern": "^(?!pg_)[a-z_][a-z0-9_]{0,62}$"},
        "objects_dir": {"type": "string", "minLength": 1},
    },
}

_PASSWORD = re.compile(r"(^|\s)password\s*=|://[^/@:]*:[^/@]*@")


def settings(table: dict[str, Any] | None, *, file: str | Path, data_dir: str | Path,
             resolve: Any = lambda p: p) -> dict[str, Any]:
    """The checked ``[relay.state]`` settings: ``backend``, and for PostgreSQL ``dsn`` (read from
    ``dsn_file`` now), ``schema``, ``objects_dir``.  *resolve* makes paths absolute."""
    t = dict(table or {})
    backend = t.get("backend", "sqlite")
    key = "relay.state"
    if backend == "sqlite":
        extra = sorted(set(t) - {"backend"})
        if extra:
            raise ConfigError(str(file), f"{key}.{extra[0]}", 'only for backend = "postgresql"')
        return {"backend": "sqlite"}
    if ("dsn" in t) == ("dsn_file" in t):
        raise ConfigError(str(file), key, 'backend "postgresql" needs exactly one of dsn or dsn_file '
                                          "(there is no default database)")
    if "dsn" in t:
        dsn = t["dsn"]
        if _PASSWORD.search(dsn):
            raise ConfigError(str(file), f"{key}.dsn", "holds a password: put the connection string in "
                                                      "dsn_file (mode 0600) instead")
    else:
        from ims_station.config import KeyFileError, read_secret_file

        p = resolve(t["dsn_file"])
        try:
            dsn = read_secret_file(p, what="PostgreSQL connection string", min_bytes=1).decode().strip()
        except KeyFileError as err:
            raise ConfigError(str(file), f"{key}.dsn_file", str(err)) from None
        except UnicodeDecodeError:
            raise ConfigError(str(file), f"{key}.dsn_file", f"{p}: not UTF-8 text") from None
        if not dsn:
            raise ConfigError(str(file), f"{key}.dsn_file", f"{p}: empty")
    objects = resolve(t["objects_dir"]) if "objects_dir" in t else str(Path(data_dir) / "archive")
    return {"backend": "postgresql", "dsn": dsn, "schema": t.get("schema", "public"), "objects_dir": objects}


def open_stores(relay: dict[str, Any], *, writer: str, quarantine_max_bytes: int) -> tuple[Any, Any]:
    """(state store, archive) of a loaded relay config table (``relay.cli.load_config``)."""
    s = relay.get("state_settings") or {"backend": "sqlite"}
    data = Path(relay["data_dir"])
    if s["backend"] == "postgresql":
        from ims_station.relay.pgstore import PgArchive, PgStateStore

        archive = PgArchive(s["dsn"], s["objects_dir"], schema=s["schema"], writer=writer,
                            quarantine_max_bytes=quarantine_max_bytes)
        try:
            return PgStateStore(s["dsn"], schema=s["schema"]), archive
        except BaseException:
            archive.close()
            raise
    from ims_station.relay.archive import FileArchive
    from ims_station.relay.state import SqliteStateStore

    archive = FileArchive(data / "archive", writer=writer, quarantine_max_bytes=quarantine_max_bytes)
    # One state store per data_dir, shared by the relay processes of a group (update() locks).
    return SqliteStateStore(data / "state.sqlite"), archive


def open_archive(relay: dict[str, Any], *, writer: str) -> Any:
    """The archive of a loaded relay config, for reading (export, events, IMS 2.0, KPIs)."""
    s = relay.get("state_settings") or {"backend": "sqlite"}
    if s["backend"] == "postgresql":
        from ims_station.relay.pgstore import PgArchive

        return PgArchive(s["dsn"], s["objects_dir"], schema=s["schema"], writer=writer)
    return None
