"""Configuration files: TOML loading, schema validation and key files.

Every configuration file of the project (station config, board definitions, relay config) is
TOML validated against a JSON Schema (the ``jsonschema`` library, rather than hand-written checks)
at start-up.  Every error is a :class:`~ims_station.errors.ConfigError` whose message names the
file, the key (dotted path, ``channels[2].code``) and the reason, so an operator can fix the file
without reading code.

Secrets (HMAC keys, private keys) live in their own files, never inside a TOML file, and
:func:`read_secret_file` refuses files that other users can read.
"""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path
from typing import Any, Iterable

import jsonschema

from ims_station.errors import ConfigError, KeyFileError


def key_path(path: Iterable[Any]) -> str:
    """Render a JSON-pointer-like path as ``a.b[3].c``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def load_toml(file: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a TOML file; every failure is a :class:`ConfigError` naming the file and the reason.

    Syntax errors carry tomllib's line and column; bytes that are not UTF-8 (which TOML requires)
    the offset and line of the first bad byte; any OS error (a directory, an unreadable file, an
    I/O error) the system's reason.  Nothing else escapes, so a daemon given a bad ``--config``
    prints one line instead of a traceback.
    """
    p = Path(file)
    try:
        with p.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as err:
        raise ConfigError(str(p), "", "file not found") from err
    except PermissionError as err:
        raise ConfigError(str(p), "", "permission denied") from err
    except IsADirectoryError as err:
        raise ConfigError(str(p), "", "is a directory, not a TOML file") from err
    except OSError as err:
        raise ConfigError(str(p), "", f"cannot read: {err.strerror or err}") from err
    except UnicodeDecodeError as err:
        line = err.object[:err.start].count(b"\n") + 1
        raise ConfigError(str(p), "", f"not UTF-8 text (TOML must be UTF-8): byte 0x{err.object[err.start]:02x} "
                                      f"at offset {err.start} (line {line})") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(str(p), "", f"not valid TOML: {err}") from err


def validate(data: Any, schema: dict[str, Any], file: str | os.PathLike[str]) -> None:
    """Validate *data* against *schema*; raise the most relevant error as ConfigError.

    ``jsonschema.exceptions.best_match`` picks the error closest to the user's mistake (e.g.
    "unknown key" at the deepest level rather than "does not match any of" at the top).
    """
    validator = jsonschema.Draft202012Validator(schema)
    best = jsonschema.exceptions.best_match(validator.iter_errors(data))
    if best is None:
        return
    path = list(best.absolute_path)
    reason = best.message
    if best.validator == "additionalProperties":
        # jsonschema says "Additional properties are not allowed ('x' was unexpected)"; name the key.
        extra = sorted(set(best.instance) - set(best.schema.get("properties", {})))
        if extra:
            path.append(extra[0])
            reason = "unknown key (allowed: " + ", ".join(sorted(best.schema.get("properties", {}))) + ")"
    elif best.validator == "required":
        missing = [k for k in best.validator_value if k not in best.instance]
        if missing:
            path.append(missing[0])
            reason = "required key is missing"
    raise ConfigError(str(file), key_path(path), reason)


def read_secret_file(file: str | os.PathLike[str], *, what: str = "key", min_bytes: int = 16,
                     max_bytes: int = 1 << 16) -> bytes:
    """Read a secret (HMAC key, private key PEM) from a file with checked permissions.

    The file must be a regular file, owned by the current user (or root), and not readable or
    writable by group or others (mode 0600 or 0400).  There is no default key anywhere in the
    project: a missing file is an error.
    """
    p = Path(file)
    try:
        st = p.stat()
    except FileNotFoundError as err:
        raise KeyFileError(str(p), what, "file not found (there is no default key; create one, mode 0600)") from err
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError(str(p), what, "not a regular file")
    if st.st_mode & 0o077:
        raise KeyFileError(str(p), what,
                           f"permissions {stat.S_IMODE(st.st_mode):04o} are too open; run: chmod 600 {p}")
    if hasattr(os, "getuid") and st.st_uid not in (os.getuid(), 0):
        raise KeyFileError(str(p), what, "file is owned by another user")
    if st.st_size > max_bytes:
        raise KeyFileError(str(p), what, f"file is larger than {max_bytes} bytes")
    data = p.read_bytes()
    if len(data) < min_bytes:
        raise KeyFileError(str(p), what, f"too short ({len(data)} bytes, need at least {min_bytes})")
    return data


def write_secret_file(file: str | os.PathLike[str], data: bytes) -> Path:
    """Create a secret file with mode 0600 from the start (no window where it is world-readable)."""
    p = Path(file)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.chmod(p, 0o600)
    return p
