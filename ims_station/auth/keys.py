"""Keystore (our private keys), trust store (public keys we accept) and the verification policy.

On-disk layout (full description and rotation procedure in ``docs/keys.md``); both are plain
directories with one pair of files per key id::

    keystore/<key_id>.pem    PKCS#8 private key, unencrypted PEM, mode 0600 (checked on load)
    keystore/<key_id>.toml   metadata: key_id, algorithm, stations, valid_from, valid_until, ...
    trust/<key_id>.pem       SubjectPublicKeyInfo public key PEM
    trust/<key_id>.toml      metadata as above; stations required; public_key_sha256 binds it to the PEM

Metadata is validated with ``ims_station.config`` (JSON Schema); every error names the file, the key
and the reason.  Trust store files and the directory must not be writable by group or others (anyone
who can add a file there can make us accept their frames).  All keys are loaded and checked when the
store is loaded, so a bad file stops a daemon at start-up, not at the first frame.

Why hand-written rather than X.509: the IMS's own certificates (CTBTO PKI, spec cd11.md §7) are not
public and their id-to-certificate mapping is undocumented; what a relay needs per key is an
algorithm, the stations it may sign for and a validity period, which this small TOML file states
directly.  All cryptography is the ``cryptography`` library (``algorithms``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from ims_station import config
from ims_station.auth import SIGNATURE_SIZE, AuthError, UnknownKeyError, algorithms, canonical_algorithm
from ims_station.errors import ConfigError, ImsStationError, KeyFileError

KEY_ID_MAX = (1 << 31) - 1   # int32 on the wire; 0 means "not signed"
UTC = dt.timezone.utc

_STATION = {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,8}$"}
_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["key_id", "algorithm", "stations", "valid_from"],
    "properties": {
        "key_id": {"type": "integer", "minimum": 1, "maximum": KEY_ID_MAX},
        "algorithm": {"enum": ["dsa-sha1", "ed25519", "ecdsa-p256"]},
        "stations": {"type": "array", "items": _STATION, "uniqueItems": True},
        "valid_from": {},      # TOML offset date-times, checked below (JSON Schema has no such type)
        "valid_until": {},
        "public_key_sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        "comment": {"type": "string"},
    },
}
KEYSTORE_SCHEMA = _SCHEMA
TRUST_SCHEMA: dict[str, Any] = {
    **_SCHEMA,
    "required": [*_SCHEMA["required"], "public_key_sha256"],
    "properties": {**_SCHEMA["properties"],
                   "stations": {**_SCHEMA["properties"]["stations"], "minItems": 1}},
}


def utc_now() -> dt.datetime:
    return dt.datetime.now(UTC)


def as_utc(when: dt.datetime | str, what: str = "time") -> dt.datetime:
    """An aware UTC datetime from a datetime (naive = UTC, as CD-1.1 times are) or an ISO string."""
    if isinstance(when, str):
        try:
            when = dt.datetime.fromisoformat(when.strip().replace("Z", "+00:00"))
        except ValueError as err:
            raise AuthError(f"{what}: not an ISO 8601 time: {when!r}") from err
    if not isinstance(when, dt.datetime):
        raise AuthError(f"{what}: expected a date-time, got {type(when).__name__}")
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


# --------------------------------------------------------------------------------------------------
# metadata


@dataclass(frozen=True)
class KeyInfo:
    """The metadata of one key (either store)."""

    key_id: int
    algorithm: str
    stations: frozenset[str]
    valid_from: dt.datetime
    valid_until: dt.datetime | None
    file: Path                       # the metadata file
    public_key_sha256: str | None = None

    def valid_at(self, when: dt.datetime) -> bool:
        return self.valid_from <= when and (self.valid_until is None or when < self.valid_until)

    def period(self) -> str:
        return f"{_iso(self.valid_from)} .. {_iso(self.valid_until) if self.valid_until else 'open end'}"


def _iso(when: dt.datetime) -> str:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _read_info(file: Path, schema: dict[str, Any]) -> KeyInfo:
    data = config.load_toml(file)
    config.validate(data, schema, file)
    times = {}
    for name in ("valid_from", "valid_until"):
        value = data.get(name)
        if value is None:
            continue
        if not isinstance(value, dt.datetime) or value.tzinfo is None:
            raise ConfigError(str(file), name,
                              "must be a TOML date-time with a UTC offset, e.g. 2025-01-01T00:00:00Z")
        times[name] = value.astimezone(UTC)
    if "valid_until" in times and times["valid_until"] <= times["valid_from"]:
        raise ConfigError(str(file), "valid_until", "must be later than valid_from")
    if file.stem != str(data["key_id"]):
        raise ConfigError(str(file), "key_id", f"is {data['key_id']} but the file is named {file.name} "
                          f"(expected {data['key_id']}.toml)")
    return KeyInfo(key_id=data["key_id"], algorithm=data["algorithm"], stations=frozenset(data["stations"]),
                   valid_from=times["valid_from"], valid_until=times.get("valid_until"), file=file,
                   public_key_sha256=data.get("public_key_sha256"))


def _toml_value(value: Any) -> str:
    if isinstance(value, dt.datetime):
        return _iso(value)
    if isinstance(value, (list, tuple, frozenset, set)):
        return "[" + ", ".join(_toml_value(v) for v in sorted(value)) + "]"
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"cannot write {value!r} as TOML")
    return json.dumps(value) if isinstance(value, str) else str(value)  # JSON strings are TOML strings


def _write_info(file: Path, header: str, info: dict[str, Any]) -> None:
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    lines += [f"{k} = {_toml_value(v)}" for k, v in info.items() if v is not None]
    tmp = file.with_name(file.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, file)


def _stations(station: str | Iterable[str] | None) -> list[str]:
    if station is None:
        return []
    items = [station] if isinstance(station, str) else list(station)
    out = []
    for s in items:
        for part in str(s).split(","):
            part = part.strip()
            if part and part not in out:
                out.append(part)
    return out


def _metadata_pairs(directory: Path, what: str) -> list[tuple[Path, Path]]:
    """(metadata, pem) per key id in *directory*; a PEM without metadata or vice versa is an error."""
    if not directory.is_dir():
        raise ConfigError(str(directory), "", f"{what} directory not found")
    tomls = {p.stem: p for p in directory.glob("*.toml")}
    pems = {p.stem: p for p in directory.glob("*.pem")}
    for stem, pem in sorted(pems.items()):
        if stem not in tomls:
            raise ConfigError(str(pem), "", f"no metadata file {stem}.toml beside it")
    pairs = []
    for stem, meta in sorted(tomls.items()):
        if stem not in pems:
            raise ConfigError(str(meta), "", f"no key file {stem}.pem beside it")
        pairs.append((meta, pems[stem]))
    return pairs


def _check_not_writable_by_others(path: Path, what: str) -> None:
    try:
        mode = path.stat().st_mode
    except OSError as err:
        raise KeyFileError(str(path), what, f"cannot stat: {err.strerror}") from err
    if mode & 0o022:
        raise KeyFileError(str(path), what, f"permissions {stat.S_IMODE(mode):04o} let group or others "
                           f"write it (anyone could add a trusted key); run: chmod go-w {path}")


# --------------------------------------------------------------------------------------------------
# signing side


class Signer:
    """A private key usable for signing, with its metadata."""

    def __init__(self, info: KeyInfo, key: algorithms.PrivateKey) -> None:
        self.info = info
        self.key_id = info.key_id
        self.algorithm = info.algorithm
        self.signature_size = SIGNATURE_SIZE[info.algorithm]
        self._key = key

    @property
    def stations(self) -> frozenset[str]:
        return self.info.stations

    def sign(self, data: bytes | bytearray | memoryview) -> bytes:
        """Raw signature of *data*, exactly :attr:`signature_size` bytes."""
        return algorithms.sign(self._key, self.algorithm, bytes(data))

    def public_pem(self) -> bytes:
        return algorithms.public_pem(self._key.public_key())

    def __repr__(self) -> str:  # never the key material
        return f"Signer(key_id={self.key_id}, algorithm={self.algorithm!r}, stations={sorted(self.stations)})"


class Keystore:
    """Our private keys (``<key_id>.pem`` mode 0600 + ``<key_id>.toml``), all loaded and checked by
    :meth:`load`."""

    def __init__(self, directory: Path, signers: dict[int, Signer]) -> None:
        self.directory = directory
        self._signers = signers

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> "Keystore":
        directory = Path(directory)
        signers = {}
        for meta, pem in _metadata_pairs(directory, "keystore"):
            info = _read_info(meta, KEYSTORE_SCHEMA)
            signers[info.key_id] = Signer(info, _load_private(pem, info))
        return cls(directory, signers)

    def key_ids(self) -> list[int]:
        return sorted(self._signers)

    def signer(self, key_id: int) -> Signer:
        try:
            return self._signers[key_id]
        except KeyError:
            raise UnknownKeyError(f"key id {key_id} is not in keystore {self.directory} "
                                  f"(has: {self.key_ids() or 'none'})") from None

    def signer_for(self, station: str, at: dt.datetime | None = None) -> Signer:
        """The key to sign *station*'s frames with at time *at* (default now): of the keys listing
        the station and valid then, the one that became valid last.  This is what makes rotation
        work without a restart: a new key takes over at its ``valid_from``."""
        when = as_utc(at) if at is not None else utc_now()
        usable = [s for s in self._signers.values() if station in s.stations and s.info.valid_at(when)]
        if not usable:
            raise UnknownKeyError(f"no key in keystore {self.directory} is valid for station {station!r} "
                                  f"at {_iso(when)}")
        return max(usable, key=lambda s: (s.info.valid_from, s.key_id))

    def coverage(self, station: str, at: dt.datetime | None = None) -> "KeyCoverage":
        """Which key signs *station*'s frames at *at* (default now) and until when the keystore can
        sign for it without a gap: the current key's ``valid_until``, extended by every key valid at
        that instant (a successor), and so on.  Raises :class:`ConfigError` naming the key file
        when no key of the station is valid at *at* (a start-up error: the gateway would sign with
        an expired or not-yet-valid key, and the relay would reject every frame)."""
        when = as_utc(at) if at is not None else utc_now()
        mine = sorted((s for s in self._signers.values() if station in s.stations),
                      key=lambda s: (s.info.valid_from, s.key_id))
        if not mine:
            raise ConfigError(str(self.directory), "", f"no key lists station {station!r} "
                              f"(keys: {self.key_ids() or 'none'}); generate one (docs/keys.md)")
        try:
            current = self.signer_for(station, when)
        except UnknownKeyError:
            raise _no_valid_key(mine, station, when) from None
        end, last = current.info.valid_until, current
        while end is not None:
            nxt = [s for s in mine if s.info.valid_at(end)]
            if not nxt:
                break
            last = max(nxt, key=lambda s: (s.info.valid_until is None, s.info.valid_until or end))
            end = last.info.valid_until
        return KeyCoverage(station, current, end, last)

    def check_pinned(self, key_id: int, at: dt.datetime | None = None) -> Signer:
        """Key *key_id* (a configured pin), which must be valid at *at* (default now): else a
        :class:`ConfigError` naming its metadata file."""
        signer = self.signer(key_id)
        when = as_utc(at) if at is not None else utc_now()
        if not signer.info.valid_at(when):
            raise _no_valid_key([signer], f"key id {key_id}", when, pinned=True)
        return signer


@dataclass(frozen=True)
class KeyCoverage:
    """What :meth:`Keystore.coverage` found: the key valid now, and the end of the keystore's
    gap-free validity for the station (None: open end) with the key that ends it."""

    station: str
    current: Signer
    until: dt.datetime | None
    last: Signer

    def expires_in_days(self, now: dt.datetime) -> float | None:
        if self.until is None:
            return None
        return (self.until - as_utc(now)).total_seconds() / 86400.0


def _no_valid_key(signers: list[Signer], what: str, when: dt.datetime, *, pinned: bool = False) -> ConfigError:
    """The start-up error for "no key valid now", naming the key file an operator must look at:
    the key that expired last, else the one that becomes valid first."""
    who = what if pinned else f"station {what!r}"
    expired = [s for s in signers if s.info.valid_until is not None and s.info.valid_until <= when]
    if expired:
        s = max(expired, key=lambda s: s.info.valid_until)
        return ConfigError(str(s.info.file), "valid_until",
                           f"key {s.key_id} expired at {_iso(s.info.valid_until)} and no key for {who} "
                           f"is valid now ({_iso(when)}): generate and export the next key "
                           "(docs/keys.md, Rotation)")
    s = min(signers, key=lambda s: s.info.valid_from)
    return ConfigError(str(s.info.file), "valid_from",
                       f"key {s.key_id} is not valid before {_iso(s.info.valid_from)} and no key for {who} "
                       f"is valid now ({_iso(when)})")


def _load_private(pem: Path, info: KeyInfo) -> algorithms.PrivateKey:
    data = config.read_secret_file(pem, what="private key", min_bytes=32)
    try:
        key = algorithms.load_private_pem(data)
    except ValueError as err:
        raise KeyFileError(str(pem), "private key", str(err)) from None
    problem = algorithms.key_problem(key, info.algorithm)
    if problem:
        raise KeyFileError(str(pem), "private key", f"{problem} (metadata {info.file.name} says "
                           f"algorithm = {info.algorithm!r})")
    if info.public_key_sha256 and _fingerprint(key.public_key()) != info.public_key_sha256:
        raise ConfigError(str(info.file), "public_key_sha256", f"does not match the key in {pem.name}")
    return key


def _fingerprint(public_key: algorithms.PublicKey) -> str:
    return hashlib.sha256(algorithms.public_der(public_key)).hexdigest()


# --------------------------------------------------------------------------------------------------
# verifying side


@dataclass(frozen=True)
class Verification:
    """Outcome of :meth:`TrustStore.verify`; ``reason`` is "" when ``ok``, else why not."""

    ok: bool
    key_id: int
    algorithm: str | None
    reason: str = ""


@dataclass(frozen=True)
class TrustedKey:
    info: KeyInfo
    public_key: algorithms.PublicKey = field(repr=False)


class TrustStore:
    """Public keys we accept, by key id, each with the stations it may sign for and a validity period."""

    def __init__(self, directory: Path, keys: dict[int, TrustedKey],
                 clock: Callable[[], dt.datetime] = utc_now) -> None:
        self.directory = directory
        self._keys = keys
        self._clock = clock

    @classmethod
    def load(cls, directory: str | os.PathLike[str], *,
             clock: Callable[[], dt.datetime] = utc_now) -> "TrustStore":
        """Load and check every key in *directory*.  *clock* gives "now" for :meth:`verify` calls
        without a time."""
        directory = Path(directory)
        keys = {}
        pairs = _metadata_pairs(directory, "trust store")
        _check_not_writable_by_others(directory, "trust store directory")
        for meta, pem in pairs:
            _check_not_writable_by_others(meta, "metadata")
            _check_not_writable_by_others(pem, "public key")
            info = _read_info(meta, TRUST_SCHEMA)
            try:
                public_key = algorithms.load_public_pem(pem.read_bytes())
            except ValueError as err:
                raise KeyFileError(str(pem), "public key", str(err)) from None
            problem = algorithms.key_problem(public_key, info.algorithm)
            if problem:
                raise KeyFileError(str(pem), "public key", f"{problem} (metadata {meta.name} says "
                                   f"algorithm = {info.algorithm!r})")
            if _fingerprint(public_key) != info.public_key_sha256:
                raise ConfigError(str(meta), "public_key_sha256", f"does not match the key in {pem.name}")
            keys[info.key_id] = TrustedKey(info, public_key)
        return cls(directory, keys, clock)

    def key_ids(self) -> list[int]:
        return sorted(self._keys)

    def key(self, key_id: int) -> TrustedKey:
        try:
            return self._keys[key_id]
        except KeyError:
            raise UnknownKeyError(f"key id {key_id} is not in trust store {self.directory}") from None

    def verify(self, station: str, key_id: int, data: bytes | bytearray | memoryview, signature: bytes,
               at: dt.datetime | None = None) -> Verification:
        """Check *signature* over *data* from *station* (frame creator, or the subframe's site /
        station) made with *key_id*, at time *at* (the frame's nominal time; default: the clock's
        now; naive = UTC).  Never raises for any input bytes."""
        entry = self._keys.get(key_id)
        if entry is None:
            reason = ("not signed (key id 0)" if key_id == 0 else
                      f"unknown key id {key_id} (not in trust store {self.directory})")
            return Verification(False, key_id, None, reason)
        info = entry.info
        alg = info.algorithm
        if station not in info.stations:
            return Verification(False, key_id, alg, f"key {key_id} is not trusted for station {station!r} "
                                f"(only for {', '.join(sorted(info.stations))})")
        when = as_utc(at) if at is not None else as_utc(self._clock())
        if not info.valid_at(when):
            return Verification(False, key_id, alg, f"time {_iso(when)} is outside key {key_id}'s "
                                f"validity period {info.period()}")
        size = SIGNATURE_SIZE[alg]
        if len(signature) != size:
            return Verification(False, key_id, alg,
                                f"signature is {len(signature)} bytes, {alg} signatures are {size}")
        if not algorithms.verify(entry.public_key, alg, bytes(data), bytes(signature)):
            return Verification(False, key_id, alg, f"signature does not verify with key {key_id} ({alg})")
        return Verification(True, key_id, alg, "")


# --------------------------------------------------------------------------------------------------
# making keys


def generate_key(algorithm: str, key_id: int, out_dir: str | os.PathLike[str],
                 station: str | Iterable[str] | None = None,
                 valid_from: dt.datetime | str | None = None,
                 valid_until: dt.datetime | str | None = None, *,
                 clock: Callable[[], dt.datetime] = utc_now) -> Path:
    """Create a new private key ``<out_dir>/<key_id>.pem`` (mode 0600) and its metadata
    ``<key_id>.toml``; returns the PEM path.  *valid_from* defaults to now.  Never overwrites."""
    algorithm = canonical_algorithm(algorithm)
    key_id = _check_key_id(key_id)
    out = Path(out_dir)
    pem, meta = out / f"{key_id}.pem", out / f"{key_id}.toml"
    for p in (pem, meta):
        if p.exists():
            raise AuthError(f"{p} already exists; key ids are never reused (pick a new id)")
    start = as_utc(valid_from, "valid_from") if valid_from is not None else as_utc(clock()).replace(microsecond=0)
    end = as_utc(valid_until, "valid_until") if valid_until is not None else None
    if end is not None and end <= start:
        raise AuthError(f"valid_until {_iso(end)} is not later than valid_from {_iso(start)}")
    stations = _stations(station)
    key = algorithms.generate_private_key(algorithm)
    out.mkdir(parents=True, exist_ok=True)
    config.write_secret_file(pem, algorithms.private_pem(key))
    _write_info(meta, f"ims-station private key {key_id}: the key is {pem.name} (mode 0600).\n"
                "See docs/keys.md.", {
                    "key_id": key_id, "algorithm": algorithm, "stations": stations,
                    "valid_from": start, "valid_until": end,
                    "public_key_sha256": _fingerprint(key.public_key())})
    # Validate what we wrote with the reader's own rules (e.g. station code syntax).
    try:
        _read_info(meta, KEYSTORE_SCHEMA)
    except ConfigError as err:
        pem.unlink()
        meta.unlink()
        raise AuthError(f"invalid key metadata: {err.key}: {err.reason}") from None
    return pem


def export_public(private_key_file_or_dir: str | os.PathLike[str], key_id: int,
                  trust_dir: str | os.PathLike[str], *,
                  station: str | Iterable[str] | None = None,
                  valid_from: dt.datetime | str | None = None,
                  valid_until: dt.datetime | str | None = None) -> Path:
    """Copy key *key_id*'s public half and metadata from a keystore (directory, or the ``.pem``
    file) into trust store *trust_dir*; returns the public PEM path.

    *station*, *valid_from*, *valid_until* override the keystore's metadata (e.g. to end an old key's
    validity during rotation).  Re-exporting the same key updates its metadata; a different key
    under an existing id is refused.
    """
    key_id = _check_key_id(key_id)
    src = Path(private_key_file_or_dir)
    pem = src if src.suffix == ".pem" else src / f"{key_id}.pem"
    meta = pem.with_suffix(".toml")
    if not pem.exists() and not meta.exists():
        raise UnknownKeyError(f"key id {key_id} is not in keystore {pem.parent}")
    if not meta.exists():
        raise ConfigError(str(meta), "", "metadata file not found")
    info = _read_info(meta, KEYSTORE_SCHEMA)
    if info.key_id != key_id:
        raise AuthError(f"{pem} holds key {info.key_id}, not {key_id}")
    public_key = _load_private(pem, info).public_key()
    stations = _stations(station) or sorted(info.stations)
    if not stations:
        raise AuthError(f"key {key_id} lists no station; say which station(s) it may sign for "
                        "(--station CODE)")
    start = as_utc(valid_from, "valid_from") if valid_from is not None else info.valid_from
    end = as_utc(valid_until, "valid_until") if valid_until is not None else info.valid_until
    if end is not None and end <= start:
        raise AuthError(f"valid_until {_iso(end)} is not later than valid_from {_iso(start)}")
    fingerprint = _fingerprint(public_key)
    trust = Path(trust_dir)
    out_pem, out_meta = trust / f"{key_id}.pem", trust / f"{key_id}.toml"
    if out_pem.exists():
        try:
            existing = _fingerprint(algorithms.load_public_pem(out_pem.read_bytes()))
        except ValueError:
            existing = None
        if existing != fingerprint:
            raise AuthError(f"{out_pem} already holds a different key; key ids are never reused")
    if not trust.exists():
        trust.mkdir(parents=True)
        os.chmod(trust, 0o755)
    tmp = out_pem.with_name(out_pem.name + ".tmp")
    tmp.write_bytes(algorithms.public_pem(public_key))
    os.chmod(tmp, 0o644)
    os.replace(tmp, out_pem)
    _write_info(out_meta, f"ims-station trusted public key {key_id} ({out_pem.name}).\nSee docs/keys.md.", {
        "key_id": key_id, "algorithm": info.algorithm, "stations": stations,
        "valid_from": start, "valid_until": end, "public_key_sha256": fingerprint})
    os.chmod(out_meta, 0o644)
    return out_pem


def _check_key_id(key_id: Any) -> int:
    if isinstance(key_id, bool) or not isinstance(key_id, int) or not 1 <= key_id <= KEY_ID_MAX:
        raise AuthError(f"key id must be an integer 1..{KEY_ID_MAX} (0 means unsigned), got {key_id!r}")
    return key_id


# --------------------------------------------------------------------------------------------------
# a trust store that follows its directory (the relay)


class ReloadingTrustStore:
    """A :class:`TrustStore` that can be replaced while a daemon runs (the relay: SIGHUP, or a change
    of the directory), without a restart and without dropping a message.

    It has the trust store's interface (``verify``, ``key``, ``key_ids``, ``directory``) and
    delegates to the store loaded last.  Loading and swapping happen only in :meth:`refresh`,
    which the daemon calls on its processing thread *between* messages: a message is verified
    against one store from its first signature to its last.  The swap is one reference
    assignment.  A directory that does not load (a bad file, wrong permissions, a half-copied key)
    keeps the old store, is logged as an error naming the file, and counted; it is tried again
    when the directory changes again or on the next SIGHUP.

    Change detection polls, at most every *poll_s* seconds of *clock* (injectable), the directory's
    and its files' (name, mtime_ns, size, inode): no inotify dependency, and a copy that replaces
    a file (``mv``/``os.replace``, which ``keys export`` does) changes the inode even within one
    mtime tick.  A change is loaded once it held still for one poll interval (a copy in progress is
    not loaded half-way).  ``poll_s = 0`` turns polling off (SIGHUP only).
    """

    def __init__(self, directory: str | os.PathLike[str], *, clock: Any = None, poll_s: float = 5.0,
                 store_clock: Callable[[], dt.datetime] = utc_now) -> None:
        import threading
        import time as _time

        self.directory = Path(directory)
        self._mono = clock.monotonic if clock is not None else _time.monotonic
        self._store_clock = store_clock
        self.poll_s = float(poll_s)
        self._store = TrustStore.load(self.directory, clock=store_clock)   # start-up: errors raise
        self._signature = self._snapshot()
        self._requested = threading.Event()
        self._settling: tuple | None = None
        self._next_poll = self._mono() + self.poll_s
        self.counters = {"reloads": 0, "reload_errors": 0}
        self.last_error: str | None = None

    # -- the trust store's interface --------------------------------------------------------------
    @property
    def current(self) -> TrustStore:
        return self._store

    def key_ids(self) -> list[int]:
        return self._store.key_ids()

    def key(self, key_id: int) -> TrustedKey:
        return self._store.key(key_id)

    def verify(self, *args: Any, **kw: Any) -> Verification:
        return self._store.verify(*args, **kw)

    # -- reloading -------------------------------------------------------------------------------
    def request_reload(self) -> None:
        """Ask for a reload at the next :meth:`refresh` (safe from a signal handler: sets a flag)."""
        self._requested.set()

    def _snapshot(self) -> tuple:
        try:
            st = self.directory.stat()
            entries = sorted((p.name, p.stat()) for p in self.directory.iterdir())
        except OSError as err:
            return ("error", str(err))
        return ((st.st_mtime_ns, st.st_ino, st.st_mode),
                tuple((n, s.st_mtime_ns, s.st_size, s.st_ino, s.st_mode) for n, s in entries))

    def refresh(self) -> bool:
        """Reload if a reload was requested or (polling) the directory changed; True if a new store
        is now in use.  Never raises: a failed load is logged and the old store stays."""
        requested = self._requested.is_set()
        if not requested:
            if self.poll_s <= 0:
                return False
            now = self._mono()
            if now < self._next_poll:
                return False
            self._next_poll = now + self.poll_s
            snap = self._snapshot()
            if snap == self._signature:
                self._settling = None
                return False
            if snap != self._settling:
                # Changed since the last poll: wait until it holds still for one interval, so that
                # a copy in progress (key file there, metadata not yet) is not loaded half-way.
                self._settling = snap
                return False
        self._settling = None
        self._requested.clear()
        return self.reload("SIGHUP" if requested else "directory changed")

    def reload(self, why: str = "reload") -> bool:
        """Load the directory now; on success swap it in (True), else keep the old store (False)."""
        import logging

        log = logging.getLogger("ims_station.auth")
        signature = self._snapshot()
        try:
            store = TrustStore.load(self.directory, clock=self._store_clock)
        except Exception as err:   # whatever a bad directory raises: keep the old store, say why
            self._signature = signature        # do not retry a broken directory on every poll
            self.counters["reload_errors"] += 1
            self.last_error = str(err)
            log.error("trust store %s: reload (%s) failed, keeping the %d key(s) loaded before: %s",
                      self.directory, why, len(self._store.key_ids()), err)
            return False
        old = set(self._store.key_ids())
        self._store, self._signature = store, signature
        self.counters["reloads"] += 1
        self.last_error = None
        new = set(store.key_ids())
        log.warning("trust store %s reloaded (%s): %d key(s); added %s, removed %s", self.directory, why,
                    len(new), sorted(new - old) or "none", sorted(old - new) or "none")
        return True

    def stats(self) -> dict[str, Any]:
        return {**self.counters, "keys": self.key_ids(), "last_error": self.last_error}
