"""``ims-station doctor``, ``edge check`` and ``relay check``: what is wrong with this station or relay,
and the command that fixes it.

Owns the checks an operator runs over SSH when something looks wrong, each an independent function
returning :class:`Finding` objects ``{check, status ok|warn|fail, detail, fix}`` (``fix`` is the exact
command or action that cures it; ``file`` and ``key`` name the configuration entry at fault when
there is one):

=============  ========================================================================================
check          what it looks at
=============  ========================================================================================
config         the station / relay file loads and validates (schema, referenced files)
keys           secret files (board HMAC keys, broker password, TLS client key): mode 0600, owner;
               the keystore loads and has a key valid now for the station, days to its end
trust          trust stores load; the relay's trust store accepts the station's keys (a signature
               made with each keystore key verifies), the station's acknack trust the relay's key
clock_sync     the gateway's clock: GNSS/PPS, NTP only (flagged), unsynchronised or unknown
               (``chronyc -c tracking``, ``timedatectl show``, ``adjtimex(2)``, first that answers)
disk           free space for the outbox (or the relay's data_dir) against its margin and bound
port           each ``[[ports]] url`` exists, is ours to read and write, and opens
board          the board on it answers with authenticated packets (HELLO, DATA, SOH) in ``timeout``
board_clock    the board's GNSS lock, and its time against the gateway's clock
broker         each broker: TCP reachable, MQTT CONNECT accepted with our credentials
tls            the broker's certificate chain against ``tls_ca``, its expiry and host name; the
               client certificate's expiry
=============  ========================================================================================

Every check has its outside world injected through :class:`Probes` (the clock, the clock-sync
probe, the disk-usage function, the port opener, timeouts), so a test provokes each problem for real
where it can (a missing device, a 0644 key, an expired key, a closed port, a broker with a bad
certificate, a HIL board behind a pty whose clock is far off) and through a seam where it cannot
(an unsynchronised host clock, a full disk).

The doctor never writes to a board (it reads the link; its decoder neither acknowledges nor asks
for resends, so a board keeps in its ring what the gateway has not taken), never keeps a broker
connection (one CONNECT under a client id of its own, then DISCONNECT) and changes no file.
``edge check`` / ``relay check`` run only the checks that need neither a port nor the network
(:data:`OFFLINE`).

Does not own: the configuration schemas and loaders (``edge/config.py``, ``relay/cli.py``), key
rules (``ims_station.config.read_secret_file``, ``ims_station.auth``), the link protocol
(``edge/ingest.py``), the status of a *running* gateway (its SOH).  Cheap to import: everything
heavy is imported inside the checks.  docs/doctor.md describes each check and its fixes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from ims_station.errors import ConfigError, ImsStationError

OK, WARN, FAIL = "ok", "warn", "fail"
_RANK = {OK: 0, WARN: 1, FAIL: 2}
#: every check, in the order they run (docs/doctor.md has one section per check)
CHECKS = ("config", "keys", "trust", "clock_sync", "disk", "port", "board", "board_clock", "broker", "tls")
#: checks that open no port and touch no network (``edge check``, ``relay check``)
OFFLINE = ("config", "keys", "trust")

UTC = dt.timezone.utc


@dataclass(frozen=True)
class Finding:
    check: str
    status: str                 # ok | warn | fail
    detail: str
    fix: str = ""               # the command or action that fixes it ("" when ok)
    subject: str = ""           # what was checked: a port, a broker, a file
    file: str = ""              # configuration file at fault, when there is one
    key: str = ""               # key in it

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    def line(self) -> str:
        """``file: key: reason`` (the configuration errors' format), else ``subject: detail``."""
        if self.file:
            return f"{self.file}: {self.key or '<top level>'}: {self.detail}"
        return f"{self.subject}: {self.detail}" if self.subject else self.detail


def worst(findings: Iterable[Finding]) -> str:
    return max((f.status for f in findings), key=_RANK.__getitem__, default=OK)


def exit_status(findings: Iterable[Finding]) -> int:
    """0 all ok, 1 warnings only, 2 a failure."""
    return _RANK[worst(findings)]


# --------------------------------------------------------------------------------------------------
# seams


@dataclass(frozen=True)
class ClockSync:
    """What the host's clock discipline says: *state* synced | unsynced | unknown, *source*
    gnss (PPS or a GNSS reference clock) | ntp | unknown, *via* which probe answered."""

    state: str
    source: str = "unknown"
    detail: str = ""
    via: str = ""


@dataclass
class Probes:
    """The doctor's outside world, injectable (tests pass their own)."""

    clock: Any = None                                   # .time() UTC seconds, .monotonic()
    clock_sync: Callable[[], ClockSync] | None = None   # default probe_clock_sync
    disk_usage: Callable[[str], Any] = shutil.disk_usage   # (total, used, free) of a path's file system
    open_port: Callable[..., Any] | None = None         # default ims_station.edge.serialport.open_port
    timeout: float = 5.0                                # per board probe and per broker connection
    key_warn_days: float = 30.0                         # signing key / certificate ends sooner: warn
    clock_tolerance_s: float = 5.0                      # board time vs gateway clock (incl. packet age)

    def __post_init__(self) -> None:
        if self.clock is None:
            from ims_station.clock import SystemClock

            self.clock = SystemClock()
        if self.clock_sync is None:
            self.clock_sync = probe_clock_sync
        if self.open_port is None:
            from ims_station.edge.serialport import open_port

            self.open_port = open_port

    def now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.clock.time(), UTC)


# --------------------------------------------------------------------------------------------------
# clock synchronisation of the host

_GNSS_REFS = ("PPS", "GPS", "GNSS", "NMEA", "PHC", "SHM", "SOCK", "GPSD")
TIME_ERROR = 5          # adjtimex(2) return value: clock not synchronised


def parse_chronyc_tracking(text: str) -> ClockSync | None:
    """``chronyc -c tracking`` (CSV: ref id, ref name, stratum, ref time, offset, ..., leap status)."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    parts = line.split(",")
    if len(parts) < 14:
        return None
    ref, stratum, leap = parts[1].strip(), parts[2].strip(), parts[13].strip()
    offset = parts[4].strip()
    if leap.lower().startswith("not") or stratum in ("0", "16") or ref in ("", "0.0.0.0"):
        return ClockSync("unsynced", "unknown", f"chrony: {leap or 'no reference'}", "chronyc")
    source = "gnss" if stratum == "1" and ref.upper().rstrip("0123456789") in _GNSS_REFS else "ntp"
    return ClockSync("synced", source, f"chrony: reference {ref}, stratum {stratum}, offset {offset} s", "chronyc")


def parse_timedatectl(text: str) -> ClockSync | None:
    """``timedatectl show`` (``NTPSynchronized=yes|no``): cannot tell PPS from NTP, says ntp."""
    values = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    v = values.get("NTPSynchronized")
    if v not in ("yes", "no"):
        return None
    if v == "no":
        return ClockSync("unsynced", "unknown", "timedatectl: NTPSynchronized=no", "timedatectl")
    return ClockSync("synced", "ntp", "timedatectl: NTPSynchronized=yes", "timedatectl")


def _adjtimex_state() -> int | None:
    """adjtimex(2) read-only (modes 0): the kernel's clock state, TIME_ERROR when unsynchronised."""
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        buf = ctypes.create_string_buffer(512)          # struct timex is ~208 bytes; modes = 0
        r = libc.adjtimex(buf)
    except (OSError, AttributeError):
        return None
    return None if r < 0 else int(r)


def _run(argv: list[str], timeout: float = 3.0) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return p.stdout if p.returncode == 0 else None


def probe_clock_sync() -> ClockSync:
    """The first of chrony, systemd-timesyncd (timedatectl) and the kernel (adjtimex) that answers."""
    out = _run(["chronyc", "-c", "tracking"])
    if out and (r := parse_chronyc_tracking(out)):
        return r
    out = _run(["timedatectl", "show"])
    if out and (r := parse_timedatectl(out)):
        return r
    state = _adjtimex_state()
    if state is not None:
        if state == TIME_ERROR:
            return ClockSync("unsynced", "unknown", "kernel: clock not synchronised (adjtimex TIME_ERROR)",
                             "adjtimex")
        return ClockSync("synced", "unknown", f"kernel: clock synchronised (adjtimex state {state}); "
                         "no chrony or timesyncd to say by what", "adjtimex")
    return ClockSync("unknown", "unknown", "neither chronyc, timedatectl nor adjtimex answered", "")


def check_clock_sync(probes: Probes) -> list[Finding]:
    s = probes.clock_sync()
    fix_sync = ("sudo timedatectl set-ntp true (or: sudo systemctl restart chrony && chronyc makestep); "
                "check the GNSS/PPS reference and the network to the NTP servers")
    if s.state == "unsynced":
        return [Finding("clock_sync", FAIL, f"the gateway's clock is not synchronised ({s.detail})", fix_sync)]
    if s.state == "unknown":
        return [Finding("clock_sync", WARN, f"synchronisation unknown: {s.detail}",
                        "install chrony (sudo apt-get install chrony) and run: chronyc tracking")]
    if s.source == "gnss":
        return [Finding("clock_sync", OK, f"synchronised to GNSS/PPS ({s.detail})")]
    if s.source == "unknown":
        return [Finding("clock_sync", WARN, f"synchronised, by what is unknown ({s.detail})",
                        "install chrony (sudo apt-get install chrony) to see the reference: chronyc tracking")]
    return [Finding("clock_sync", WARN, f"synchronised by NTP only, no GNSS/PPS reference ({s.detail}): "
                    "the gateway's clock is only as good as the network path",
                    "add a GNSS/PPS reference clock to chrony (refclock PPS /dev/pps0 lock NMEA, "
                    "refclock SHM 0 refid NMEA noselect) or rely on the boards' GNSS time")]


# --------------------------------------------------------------------------------------------------
# secrets and keys


def _secret_fix(err: ConfigError, path: str) -> str:
    r = err.reason
    if "too open" in r:
        return f"chmod 600 {path}"
    if "owned by another user" in r:
        return f"sudo chown {getpass.getuser()} {path} && chmod 600 {path}"
    if "not found" in r:
        return f"create {path} (mode 0600) or correct the path in the configuration"
    return f"replace {path}"


def _secret(check: str, path: str | os.PathLike[str], what: str, *, min_bytes: int = 16,
            cfg_file: str = "", cfg_key: str = "") -> Finding:
    from ims_station.config import read_secret_file

    try:
        read_secret_file(path, what=what, min_bytes=min_bytes, max_bytes=1 << 16)
    except ConfigError as err:
        return Finding(check, FAIL, f"{what} {path}: {err.reason}", _secret_fix(err, str(path)),
                       subject=str(path), file=cfg_file, key=cfg_key)
    return Finding(check, OK, f"{what} {path}: mode and owner ok", subject=str(path))


class _KeyRecorder:
    """``read_key`` for :func:`load_station_config` that records a bad key file and goes on."""

    def __init__(self, cfg_file: str) -> None:
        self.cfg_file = cfg_file
        self.findings: list[Finding] = []
        self.bad: set[str] = set()

    def __call__(self, path: Path, *, what: str) -> bytes | None:
        from ims_station.config import read_secret_file

        key = what.split(": ", 1)[-1]          # "FILE: ports[i].key_file" -> the key
        try:
            data = read_secret_file(path, what=what)
        except ConfigError as err:
            self.bad.add(str(path))
            self.findings.append(Finding("keys", FAIL, f"board HMAC key {path}: {err.reason}",
                                         _secret_fix(err, str(path)), subject=str(path),
                                         file=self.cfg_file, key=key))
            return None
        self.findings.append(Finding("keys", OK, f"board HMAC key {path}: mode and owner ok", subject=str(path)))
        return data


def _error_finding(check: str, err: ConfigError, fix: str, subject: str = "") -> Finding:
    return Finding(check, FAIL, err.reason, fix, subject=subject or err.file, file=err.file, key=err.key)


def _rotation_fix(keystore: Path, station: str, key_ids: list[int]) -> str:
    nxt = max(key_ids, default=0) + 1
    return (f"ims-station keys generate --algorithm ed25519 --key-id {nxt} --out {keystore} --station {station} "
            f"&& ims-station keys export --keystore {keystore} --key-id {nxt} --trust <the relay's trust_dir> "
            "(docs/keys.md, Rotation)")


def check_keystore(keystore_dir: str, stations: list[str], pins: list[int], probes: Probes, *,
                   cfg_file: str, cfg_key: str) -> tuple[list[Finding], Any]:
    """The keystore loads, and each station (frame creator) has a key valid now; days to the end of
    its gap-free coverage; each pinned key id is valid now.  Returns (findings, keystore or None)."""
    from ims_station.auth import AuthError, Keystore

    ks_path = Path(keystore_dir)
    try:
        ks = Keystore.load(ks_path)
    except ConfigError as err:
        fix = _secret_fix(err, err.file) if "permissions" in err.reason or "owned" in err.reason else \
            f"correct {err.file} (docs/keys.md) or [keys] keystore in {cfg_file}"
        return [_error_finding("keys", err, fix)], None
    except AuthError as err:
        return [Finding("keys", FAIL, f"keystore {ks_path}: {err}", f"correct the keystore (docs/keys.md)",
                        subject=str(ks_path), file=cfg_file, key=cfg_key)], None
    out = []
    now = probes.now()
    for st in stations:
        try:
            cov = ks.coverage(st, now)
        except ConfigError as err:
            out.append(_error_finding("keys", err, _rotation_fix(ks_path, st, ks.key_ids())))
            continue
        days = cov.expires_in_days(now)
        what = f"station {st}: signing key {cov.current.key_id}"
        if days is None:
            out.append(Finding("keys", OK, f"{what}, no end of validity", subject=str(ks_path)))
        elif days < probes.key_warn_days:
            out.append(Finding("keys", WARN, f"{what}: the keystore can sign only {days:.1f} more days "
                               f"(key {cov.last.key_id} ends {cov.until.isoformat()})",
                               _rotation_fix(ks_path, st, ks.key_ids()), subject=str(ks_path),
                               file=str(cov.last.info.file), key="valid_until"))
        else:
            out.append(Finding("keys", OK, f"{what}, {days:.0f} days of keys left", subject=str(ks_path)))
    for pin in pins:
        try:
            ks.check_pinned(pin, now)
        except ConfigError as err:
            out.append(_error_finding("keys", err, f"pin a key valid now, or remove the pin from [keys] in {cfg_file}"))
        except AuthError as err:
            out.append(Finding("keys", FAIL, str(err), f"generate key {pin} or correct the pin in {cfg_file}",
                               subject=str(ks_path), file=cfg_file, key="keys"))
    return out, ks


def _load_trust(path: str, *, cfg_file: str, cfg_key: str) -> tuple[list[Finding], Any]:
    from ims_station.auth import AuthError, TrustStore

    try:
        return [Finding("trust", OK, f"trust store {path} loads", subject=path)], TrustStore.load(path)
    except ConfigError as err:
        fix = f"chmod go-w {err.file}" if "let group or others" in err.reason else \
            f"correct {err.file} (docs/keys.md) or {cfg_key} in {cfg_file}"
        return [_error_finding("trust", err, fix)], None
    except AuthError as err:
        return [Finding("trust", FAIL, f"trust store {path}: {err}", "correct the trust store (docs/keys.md)",
                        subject=path, file=cfg_file, key=cfg_key)], None


def check_accepts(keystore: Any, trust: Any, stations: Iterable[str], probes: Probes, *, trust_dir: str,
                  check: str = "trust") -> list[Finding]:
    """Every key of *keystore* for *stations* that is valid now or later is accepted by *trust*: a
    signature made with it verifies, for that station, at a time inside its validity."""
    out = []
    now = probes.now()
    data = b"ims-station doctor: keystore against trust store"
    for st in stations:
        for kid in keystore.key_ids():
            signer = keystore.signer(kid)
            info = signer.info
            if st not in signer.stations or (info.valid_until is not None and info.valid_until <= now):
                continue
            at = max(now, info.valid_from)
            v = trust.verify(st, kid, data, signer.sign(data), at)
            if v.ok:
                out.append(Finding(check, OK, f"trust store {trust_dir} accepts key {kid} of {st}", subject=trust_dir))
            else:
                out.append(Finding(check, FAIL, f"trust store {trust_dir} rejects key {kid} of {st}: {v.reason}",
                                   f"ims-station keys export --keystore {keystore.directory} --key-id {kid} "
                                   f"--trust {trust_dir}", subject=trust_dir))
    return out


# --------------------------------------------------------------------------------------------------
# disk


def _existing_dir(path: Path) -> Path:
    d = path
    while not d.exists() and d != d.parent:
        d = d.parent
    return d


def _size(n: float) -> str:
    return f"{n / (1 << 30):.1f} GiB" if abs(n) >= 1 << 30 else f"{n / (1 << 20):.1f} MiB"


def check_outbox_disk(settings: Any, probes: Probes) -> list[Finding]:
    """Free space of the outbox's file system: below the eviction margin ([outbox] min_free_bytes)
    fails (frames are being evicted), less than the outbox's bound (configured, or days of frames at
    the configured rates) warns."""
    from ims_station.edge.outbox import estimate_frame_bytes

    path = Path(settings.outbox_path)
    d = _existing_dir(path.parent)
    du = probes.disk_usage(str(d))
    used = sum(f.stat().st_size for f in (path, path.with_name(path.name + "-wal"),
                                           path.with_name(path.name + ".reserve")) if f.exists())
    margin = settings.outbox.get("min_free_bytes")
    if margin is None:
        margin = min(16 << 20, du.total // 4)
    if "max_bytes" in settings.outbox:
        want, why = int(settings.outbox["max_bytes"]), "[outbox] max_bytes"
    else:
        fs = float(settings.get("framer", "frame_seconds"))
        days = float(settings.get("outbox", "max_age_days"))
        streams = [(c, r) for c, r in settings.streams if c > 0 and r > 0]
        want = int(days * 86400 / fs) * estimate_frame_bytes(streams, fs) if streams else 0
        why = f"{days:g} days of frames at the configured rates"
    room = du.free + used - margin
    subject = str(path)
    fix = (f"free space on the file system of {d} (df -h {d}; du -xsh {d}/*), or move the outbox to a bigger "
           f"disk ([outbox] path in {settings.file})")
    if du.free < margin:
        return [Finding("disk", FAIL, f"{_size(du.free)} free on {d}, below the outbox's margin of {_size(margin)}: "
                        "the outbox evicts its oldest frames to make room", fix, subject=subject)]
    if want and room < want:
        return [Finding("disk", WARN, f"{_size(du.free)} free on {d}: the outbox can grow to {_size(max(room, 0))}, "
                        f"less than {why} ({_size(want)})", fix, subject=subject)]
    return [Finding("disk", OK, f"{_size(du.free)} free on {d} (outbox {_size(used)}, margin {_size(margin)})",
                    subject=subject)]


def check_dir_disk(path: str, probes: Probes, *, what: str, warn_fraction: float = 0.05,
                   fail_fraction: float = 0.01) -> list[Finding]:
    d = _existing_dir(Path(path))
    du = probes.disk_usage(str(d))
    share = du.free / du.total if du.total else 0.0
    detail = f"{du.free / (1 << 30):.2f} GiB free on {d} ({share:.1%} of {du.total / (1 << 30):.1f} GiB), {what}"
    fix = f"free space on the file system of {d} (df -h {d}; du -xsh {d}/*) or move {what} to a bigger disk"
    if share < fail_fraction:
        return [Finding("disk", FAIL, detail, fix, subject=path)]
    if share < warn_fraction:
        return [Finding("disk", WARN, detail, fix, subject=path)]
    return [Finding("disk", OK, detail, subject=path)]


# --------------------------------------------------------------------------------------------------
# serial ports and boards


@dataclass
class BoardProbe:
    """What :func:`probe_board` heard: ``answered`` once an authenticated packet arrived."""

    answered: bool = False
    hello: Any = None
    blocks: int = 0
    soh: Any = None
    time_quality: int | None = None
    offset_s: float | None = None          # board time - gateway clock (newest sample or SOH time)
    counters: dict = field(default_factory=dict)


def probe_board(port: Any, key: bytes, probes: Probes, *, board_id: int | None = None) -> BoardProbe:
    """Listen on an open *port* with a decoder that neither acknowledges nor asks for resends until
    a DATA or SOH packet arrives (or ``probes.timeout`` passes).  Nothing is written to the board."""
    from ims_station.clock import SystemClock
    from ims_station.edge.ingest import DataBlock, Hello, LinkDecoder, Soh

    dec = LinkDecoder(key, SystemClock(), board_id=board_id, auto_ack=False, backfill=0, adapt_packet_ms=False,
                      log_rate=0.2, log_burst=1)
    res = BoardProbe()
    deadline = time.monotonic() + probes.timeout      # a real wait on a real port
    while time.monotonic() < deadline:
        data = port.read(4096)
        if data:
            dec.receive_data(data)
        dec.data_to_send()                              # never sent: the doctor only listens
        for ev in dec.next_events():
            if isinstance(ev, Hello):
                res.answered, res.hello = True, ev
            elif isinstance(ev, Soh):
                res.answered, res.soh = True, ev
                res.time_quality = ev.time_quality
                if ev.time_us:
                    res.offset_s = ev.time_us / 1e6 - probes.clock.time()
            elif isinstance(ev, DataBlock):
                res.answered = True
                res.blocks += 1
                res.time_quality = ev.time_quality
                off = ev.t_end_us / 1e6 - probes.clock.time()
                if res.soh is None:     # the freshest of the blocks: the one least delayed
                    res.offset_s = off if res.offset_s is None else max(res.offset_s, off)
        if res.blocks >= 2 or (res.soh is not None and res.blocks):
            break
    res.counters = dict(dec.counters)
    return res


def check_ports(station: Any, probes: Probes, bad_keys: set[str]) -> list[Finding]:
    import serial

    from ims_station.edge.serialport import PortInUseError
    from ims_station.firmware import link

    out = []
    f = str(station.file)
    for i, p in enumerate(station.ports):
        subj = f"{p.name} ({p.url})"
        where = f"ports[{i}].url"
        if "://" not in p.url:
            if not os.path.exists(p.url):
                by_id = "/dev/serial/by-id/"
                out.append(Finding("port", FAIL, f"{p.url} does not exist: the board is unplugged, its adapter "
                                   "not recognised, or the name changed",
                                   f"plug the board in and run: ls -l {by_id} (dmesg | tail); then set "
                                   f"{where} in {f} to the stable /dev/serial/by-id/... name",
                                   subject=subj, file=f, key=where))
                continue
            if not os.access(p.url, os.R_OK | os.W_OK):
                out.append(Finding("port", FAIL, f"{p.url}: no read/write permission for {getpass.getuser()}",
                                   f"sudo usermod -aG dialout {getpass.getuser()} (then log in again)",
                                   subject=subj))
                continue
        try:
            port = probes.open_port(p.url, baudrate=p.baudrate, timeout=0.05)
        except PortInUseError as err:
            out.append(Finding("port", WARN, f"in use ({err}): the board was not probed",
                               "if that is the running gateway, its SOH shows the board; stop it "
                               "(sudo systemctl stop ims-gateway) to probe here", subject=subj))
            continue
        except (serial.SerialException, OSError, ValueError) as err:
            out.append(Finding("port", FAIL, f"cannot open: {err}",
                               f"check the device and {where} in {f}", subject=subj, file=f, key=where))
            continue
        out.append(Finding("port", OK, "exists and opens", subject=subj))
        if p.key is None or str(p.key_file) in bad_keys:
            port.close()
            out.append(Finding("board", WARN, "not probed: its key file cannot be read (see keys)",
                               "fix the key file first", subject=subj))
            continue
        try:
            res = probe_board(port, p.key, probes, board_id=p.board_id)
        except (serial.SerialException, OSError) as err:
            out.append(Finding("board", FAIL, f"the port failed while listening: {err}",
                               "check the cable and the adapter (dmesg | tail)", subject=subj))
            continue
        finally:
            port.close()
        out += _board_findings(res, p, probes, subj, f, i, link)
    return out


def _board_findings(res: BoardProbe, p: Any, probes: Probes, subj: str, f: str, i: int, link: Any) -> list[Finding]:
    c = res.counters
    if not res.answered:
        if c.get("hmac_errors"):
            return [Finding("board", FAIL, f"the board sends packets ({c['hmac_errors']} seen) that fail "
                            "authentication: the key file is not the board's key",
                            f"put the board's HMAC key in {p.key_file} (ports[{i}].key_file in {f})",
                            subject=subj, file=f, key=f"ports[{i}].key_file")]
        if c.get("wrong_board"):
            return [Finding("board", FAIL, f"a board answers but with another board id than ports[{i}].board_id",
                            f"correct ports[{i}].board_id in {f}", subject=subj, file=f, key=f"ports[{i}].board_id")]
        if c.get("bytes_received"):
            return [Finding("board", FAIL, f"{c['bytes_received']} bytes in {probes.timeout:g} s but no valid "
                            f"packet (CRC errors {c.get('crc_errors', 0)}, framing {c.get('framing_errors', 0)}): "
                            "wrong baud rate or a damaged line",
                            f"check ports[{i}].baudrate in {f} ({p.baudrate}) against the board, and the wiring",
                            subject=subj, file=f, key=f"ports[{i}].baudrate")]
        return [Finding("board", FAIL, f"silent: nothing received in {probes.timeout:g} s",
                        "check the board's power and the cable; the board streams without being asked, "
                        "so silence is not a configuration matter (a longer --timeout if its packets are long)",
                        subject=subj)]
    name = f"board {res.hello.board_name} id {res.hello.board_id} firmware {res.hello.firmware}" if res.hello \
        else "board"
    if not res.blocks and res.soh is None:
        return [Finding("board", WARN, f"{name} answers (HELLO) but sent no data in {probes.timeout:g} s",
                        "wait for GNSS time (a board discards samples it cannot time) or run with a longer --timeout",
                        subject=subj)]
    out = [Finding("board", OK, f"{name} answers ({res.blocks} data packets)", subject=subj)]
    tq = res.time_quality
    tq_name = link.TQ_NAMES[tq] if tq is not None and 0 <= tq < len(link.TQ_NAMES) else str(tq)
    if res.soh is not None and res.soh.status & link.S_NO_TIME:
        out.append(Finding("board_clock", FAIL, "the board has never had GNSS time (SOH no_time)",
                           "check the GNSS antenna (sky view, cable) and wait for a fix", subject=subj))
        return out
    if tq != link.TQ_LOCKED:
        out.append(Finding("board_clock", WARN, f"the board's time quality is {tq_name}, not GNSS-locked",
                           "check the GNSS antenna (sky view, cable) and the PPS wiring", subject=subj))
    if res.offset_s is None:
        return out
    off = res.offset_s
    what = "SOH time" if res.soh is not None else "newest sample"
    if abs(off) > probes.clock_tolerance_s:
        gw = probes.clock_sync()
        if gw.state == "synced" and tq == link.TQ_LOCKED:
            fix = ("the board is GNSS-locked and the gateway synchronised, yet they disagree: check the "
                   "gateway's NTP sources (chronyc sources) and the board's GNSS (a spoofed or stale fix)")
        elif tq == link.TQ_LOCKED:
            fix = "synchronise the gateway's clock: sudo timedatectl set-ntp true; chronyc makestep"
        else:
            fix = "the board is not GNSS-locked: check its antenna; then compare again"
        out.append(Finding("board_clock", FAIL, f"board time ({what}) and the gateway's clock differ by {off:+.1f} s "
                           f"(tolerance {probes.clock_tolerance_s:g} s; time quality {tq_name})", fix, subject=subj))
    elif tq == link.TQ_LOCKED:          # (not locked: warned above)
        out.append(Finding("board_clock", OK, f"GNSS-locked; board time ({what}) within {abs(off):.2f} s of the "
                           "gateway's clock", subject=subj))
    return out


# --------------------------------------------------------------------------------------------------
# brokers and TLS


def _cert_names(cert: Any) -> list[str]:
    from cryptography import x509

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        return [str(n) for n in san.get_values_for_type(x509.DNSName)] + \
               [str(n) for n in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        return [a.value for a in cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)]


def _peer_certificate(host: str, port: int, timeout: float) -> Any | None:
    """The broker's certificate without verifying it (to say what is wrong with it)."""
    import ssl

    from cryptography import x509

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=timeout) as s, \
                ctx.wrap_socket(s, server_hostname=host) as t:
            der = t.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError):
        return None
    return x509.load_der_x509_certificate(der) if der else None


def check_tls(cfg: Any, probes: Probes, *, subj: str, cfg_file: str, cfg_key: str) -> list[Finding]:
    """The broker's certificate chain against ``tls_ca``, its host name and expiry (Python's ssl,
    i.e. OpenSSL, as paho uses it); the client certificate's expiry."""
    import ssl

    from cryptography import x509

    ca = cfg.tls_ca
    if not os.path.isfile(ca):
        return [Finding("tls", FAIL, f"tls_ca {ca} does not exist", f"put the CA certificate that signed the "
                        f"broker's certificate at {ca}", subject=subj, file=cfg_file, key=f"{cfg_key}.tls_ca")]
    try:
        ctx = ssl.create_default_context(cafile=ca)
    except (ssl.SSLError, OSError) as err:
        return [Finding("tls", FAIL, f"tls_ca {ca} is not a PEM CA certificate: {err}",
                        f"replace {ca} with the CA certificate (PEM)", subject=subj, file=cfg_file,
                        key=f"{cfg_key}.tls_ca")]
    out = []
    reissue = ("reissue the broker's certificate from the CA in tls_ca with subjectAltName "
               f"DNS:{cfg.host} (docs/mosquitto/README.md), or correct {cfg_key}.host / tls_ca in {cfg_file}")
    try:
        with socket.create_connection((cfg.host, cfg.port), timeout=probes.timeout) as s, \
                ctx.wrap_socket(s, server_hostname=cfg.host) as t:
            der = t.getpeercert(binary_form=True)
    except ssl.SSLCertVerificationError as err:
        cert = _peer_certificate(cfg.host, cfg.port, probes.timeout)
        desc = ""
        if cert is not None:
            desc = (f" (certificate for {', '.join(_cert_names(cert)) or '?'}, issued by "
                    f"{cert.issuer.rfc4514_string()}, valid until {cert.not_valid_after_utc.isoformat()})")
        code = getattr(err, "verify_code", None)
        key = f"{cfg_key}.tls_ca"
        if code == 10:
            why, fix = "the broker's certificate has expired", "renew the broker's certificate (docs/mosquitto/README.md) and restart mosquitto"
        elif code in (62, 64):          # host name / IP address mismatch
            why, fix, key = f"the broker's certificate is not for {cfg.host}", reissue, f"{cfg_key}.host"
        elif code in (18, 19, 20, 21, 2):
            why, fix = (f"the broker's certificate is not signed by the CA in {ca}",
                        f"put the CA that signed the broker's certificate in {ca}, or reissue the broker's "
                        "certificate from that CA (docs/mosquitto/README.md)")
        else:
            why, fix = "the broker's certificate does not verify", reissue
        return [Finding("tls", FAIL, f"{why}: {getattr(err, 'verify_message', err)}{desc}", fix, subject=subj,
                        file=cfg_file, key=key)]
    except (ssl.SSLError, ConnectionError) as err:
        why = getattr(err, "reason", None) or err.strerror or err
        return [Finding("tls", FAIL, f"TLS handshake failed: {why}: is {cfg.host}:{cfg.port} a TLS "
                        "listener?", f"check {cfg_key}.port in {cfg_file} (8883 is MQTT over TLS, 1883 plain)",
                        subject=subj, file=cfg_file, key=f"{cfg_key}.port")]
    except OSError as err:
        return [Finding("tls", FAIL, f"TLS connection failed: {err}", "see the broker check", subject=subj)]
    cert = x509.load_der_x509_certificate(der)
    out.append(_expiry("tls", f"broker certificate ({', '.join(_cert_names(cert))})", cert, probes, subj,
                       "renew the broker's certificate (docs/mosquitto/README.md) and restart mosquitto"))
    if cfg.tls_cert:
        try:
            client = x509.load_pem_x509_certificate(Path(cfg.tls_cert).read_bytes())
        except (OSError, ValueError) as err:
            out.append(Finding("tls", FAIL, f"client certificate {cfg.tls_cert}: {err}",
                               f"put the station's client certificate (PEM) at {cfg.tls_cert}", subject=subj,
                               file=cfg_file, key=f"{cfg_key}.tls_cert"))
        else:
            out.append(_expiry("tls", f"client certificate {cfg.tls_cert}", client, probes, subj,
                               "have the network's CA issue a new client certificate (docs/mosquitto/README.md)"))
    return out


def _expiry(check: str, what: str, cert: Any, probes: Probes, subj: str, fix: str) -> Finding:
    now = probes.now()
    end = cert.not_valid_after_utc
    days = (end - now).total_seconds() / 86400
    if days <= 0:
        return Finding(check, FAIL, f"{what} expired at {end.isoformat()}", fix, subject=subj)
    if cert.not_valid_before_utc > now:
        return Finding(check, FAIL, f"{what} is not valid before {cert.not_valid_before_utc.isoformat()}",
                       "check the gateway's clock (clock_sync)", subject=subj)
    if days < probes.key_warn_days:
        return Finding(check, WARN, f"{what} expires in {days:.1f} days ({end.isoformat()})", fix, subject=subj)
    return Finding(check, OK, f"{what} valid for {days:.0f} more days", subject=subj)


_CONNACK = {1: "unacceptable protocol version", 2: "client id rejected", 3: "server unavailable",
            4: "bad user name or password", 5: "not authorised"}


def _mqtt_connect(cfg: Any, timeout: float) -> str | None:
    """One MQTT CONNECT with our TLS and credentials (BrokerConfig.apply); None if accepted, else why."""
    import paho.mqtt.client as mqtt

    result: list = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cfg.client_id(f"doctor-{os.getpid()}"),
                         protocol=mqtt.MQTTv311, clean_session=True)
    client.on_connect = lambda c, u, flags, rc, props=None: result.append(rc)
    try:
        cfg.apply(client)
        client.connect(cfg.host, cfg.port, keepalive=cfg.keepalive)
        deadline = time.monotonic() + timeout
        while not result and time.monotonic() < deadline:
            if client.loop(timeout=0.05) not in (mqtt.MQTT_ERR_SUCCESS,):
                break
        if not result:
            return f"no CONNACK within {timeout:g} s"
        rc = result[0]
        if rc.is_failure:
            return f"CONNACK refused: {rc}"
        client.disconnect()
        client.loop(timeout=0.05)
        return None
    except ImsStationError as err:
        return f"cannot use the credentials: {err}"
    except (OSError, ValueError) as err:
        return f"{type(err).__name__}: {err}"
    finally:
        try:
            client.socket() and client.socket().close()
        except Exception:       # noqa: BLE001 -- best effort
            pass


def check_brokers(brokers: list, probes: Probes, *, cfg_file: str, table: str) -> list[Finding]:
    out = []
    for i, cfg in enumerate(brokers):
        key = f"{table}[{i}]"
        subj = f"{cfg.host}:{cfg.port}"
        try:
            with socket.create_connection((cfg.host, cfg.port), timeout=probes.timeout):
                pass
        except OSError as err:
            out.append(Finding("broker", FAIL, f"unreachable: {err.strerror or err}",
                               f"check that the broker runs (on it: sudo systemctl status mosquitto), the network "
                               f"and firewall to {subj} (nc -vz {cfg.host} {cfg.port}), and {key}.host/port in {cfg_file}",
                               subject=subj, file=cfg_file, key=f"{key}.host"))
            continue
        if cfg.tls:
            tls = check_tls(cfg, probes, subj=subj, cfg_file=cfg_file, cfg_key=key)
            out += tls
            if any(f.status == FAIL for f in tls):
                continue
        why = _mqtt_connect(cfg, probes.timeout)
        if why is None:
            out.append(Finding("broker", OK, "reachable; MQTT CONNECT accepted" + (" over TLS" if cfg.tls else ""),
                               subject=subj))
        else:
            if not any(w in why.lower() for w in ("password", "authori", "user name")):
                fix = f"check the broker's log (journalctl -u mosquitto) and {key} in {cfg_file}"
            elif cfg.password_file is None:
                fix = f"the broker wants an account: set {key}.username and password_file in {cfg_file}"
            else:
                fix = (f"check {key}.username and the password in {cfg.password_file} against the broker's "
                       "password file (mosquitto_passwd) and its ACL (docs/mosquitto/README.md)")
            out.append(Finding("broker", FAIL, f"reachable, but {why}", fix, subject=subj, file=cfg_file, key=key))
    return out


# --------------------------------------------------------------------------------------------------
# the station and the relay


def station_checks(config: str, probes: Probes, *, offline: bool = False) -> tuple[list[Finding], Any]:
    """Every check of a station file; *offline*: only :data:`OFFLINE` ones.  Returns (findings,
    (station config, keystore) or None)."""
    from ims_station.edge.config import load_station_config

    rec = _KeyRecorder(str(config))
    try:
        st = load_station_config(config, read_key=rec)
    except ConfigError as err:
        return [*rec.findings, _error_finding("config", err, f"edit {err.file} (docs/configuration.md)")], None
    out = [Finding("config", OK, f"{config} is valid", subject=str(config)), *rec.findings]
    s = st.settings
    f = str(st.file)
    for i, b in enumerate(s.brokers):
        if b.password_file:
            out.append(_secret("keys", b.password_file, "MQTT password file", min_bytes=1, cfg_file=f,
                               cfg_key=f"uplink.brokers[{i}].password_file"))
        if b.tls_key:
            out.append(_secret("keys", b.tls_key, "TLS client key", min_bytes=32, cfg_file=f,
                               cfg_key=f"uplink.brokers[{i}].tls_key"))
        for k in ("tls_ca", "tls_cert"):
            p = getattr(b, k)
            if p and not os.path.isfile(p):
                out.append(Finding("config", FAIL, f"{p} does not exist", f"put the file there or correct "
                                   f"uplink.brokers[{i}].{k}", subject=p, file=f, key=f"uplink.brokers[{i}].{k}"))
    keystore = None
    keys = s.keys
    if keys.get("keystore"):
        pins = ([keys["station_key_id"]] if "station_key_id" in keys else []) + \
            sorted(set(keys.get("channel_key_ids", {}).values()))
        found, keystore = check_keystore(keys["keystore"], [] if "station_key_id" in keys else [st.code], pins,
                                         probes, cfg_file=f, cfg_key="keys.keystore")
        out += found
    else:
        out.append(Finding("keys", WARN, "no [keys] keystore: frames leave unsigned, and a relay with "
                           "require_signatures (the default) quarantines them",
                           f"ims-station keys generate --algorithm ed25519 --key-id 1 --out keys --station {st.code}; "
                           f"then [keys] keystore = \"keys\" in {f} (docs/keys.md)", subject=f, file=f, key="keys"))
    if s.uplink.get("acknack_trust"):
        from ims_station.edge.uplink_config import acknack_options

        try:
            acknack_options(s)
            out.append(Finding("trust", OK, f"acknack trust store {s.uplink['acknack_trust']} holds the relay's key",
                               subject=s.uplink["acknack_trust"]))
        except ConfigError as err:
            fix = f"chmod go-w {err.file}" if "let group or others" in err.reason else \
                "ims-station keys export --keystore <the relay's acknack keystore> --key-id N --trust " \
                f"{s.uplink['acknack_trust']} (docs/keys.md)"
            out.append(_error_finding("trust", err, fix))
    if offline:
        return out, (st, keystore)
    out += check_clock_sync(probes)
    out += check_outbox_disk(s, probes)
    out += check_ports(st, probes, rec.bad)
    out += check_brokers(s.brokers, probes, cfg_file=f, table="uplink.brokers")
    return out, (st, keystore)


def relay_checks(config: str, probes: Probes, *, offline: bool = False) -> tuple[list[Finding], Any]:
    """Every check of a relay file; returns (findings, (conf, trust store) or None)."""
    from ims_station.relay.cli import load_config

    try:
        conf = load_config(config)
    except ConfigError as err:
        return [_error_finding("config", err, f"edit {err.file} (docs/relay.md)")], None
    f = conf["file"]
    r = conf["relay"]
    out = [Finding("config", OK, f"{config} is valid", subject=f)]
    for i, b in enumerate(conf["brokers"]):
        if b.password_file:
            out.append(_secret("keys", b.password_file, "MQTT password file", min_bytes=1, cfg_file=f,
                               cfg_key=f"broker[{i}].password_file"))
        if b.tls_key:
            out.append(_secret("keys", b.tls_key, "TLS client key", min_bytes=32, cfg_file=f,
                               cfg_key=f"broker[{i}].tls_key"))
    cd = conf.get("cd11") or {}
    tls_tables = ([("cd11.consumer", cd["consumer"])] if cd.get("consumer") else []) + \
        [(f"cd11.forward[{i}]", t) for i, t in enumerate(cd.get("forward", []))]
    for key, t in tls_tables:            # CD-1.1/TCP links (docs/relay.md, "CD-1.1 over TCP")
        if t.get("tls_key"):
            out.append(_secret("keys", t["tls_key"], "CD-1.1 TLS key", min_bytes=32, cfg_file=f,
                               cfg_key=f"{key}.tls_key"))
    found, trust = _load_trust(r["trust_dir"], cfg_file=f, cfg_key="relay.trust_dir")
    out += found
    if trust is not None:
        now = probes.now()
        for kid in trust.key_ids():
            info = trust.key(kid).info
            if info.valid_until is not None and now < info.valid_until:
                days = (info.valid_until - now).total_seconds() / 86400
                if days < probes.key_warn_days:
                    out.append(Finding("trust", WARN, f"trusted key {kid} ({', '.join(sorted(info.stations))}) ends in "
                                       f"{days:.1f} days", "make sure its station has exported its next key "
                                       "(docs/keys.md, Rotation)", subject=r["trust_dir"], file=str(info.file),
                                       key="valid_until"))
    ak = r.get("acknack_key")
    signer = None
    if ak:
        found, ks = check_keystore(ak["keystore"], [], [ak["key_id"]], probes, cfg_file=f,
                                   cfg_key="relay.acknack_key")
        out += found
        if ks is not None and not any(x.status == FAIL for x in found):
            signer = ks.signer(ak["key_id"])
    if offline:
        return out, (conf, trust, signer)
    out += check_clock_sync(probes)
    out += check_dir_disk(r["data_dir"], probes, what="the relay's archive")
    out += check_brokers(conf["brokers"], probes, cfg_file=f, table="broker")
    return out, (conf, trust, signer)


def cross_checks(station: Any, relay: Any, probes: Probes) -> list[Finding]:
    """Station and relay configured on this machine (or copied here): the relay's trust store
    accepts the station's keys; the station's acknack trust store the relay's acknack key."""
    (st, keystore), (conf, trust, signer) = station, relay
    out = []
    if keystore is not None and trust is not None:
        found = check_accepts(keystore, trust, [st.code], probes, trust_dir=conf["relay"]["trust_dir"])
        out += found or [Finding("trust", WARN, f"no key of {st.code} in keystore {keystore.directory} is valid now "
                                 "or later", "see the keys check", subject=str(keystore.directory))]
    at = st.settings.uplink.get("acknack_trust")
    if signer is not None and at:
        from ims_station.auth import TrustStore

        try:
            station_trust = TrustStore.load(at)
        except ImsStationError:
            return out               # reported by the station's trust check
        name = conf["relay"].get("name", "RELAY")
        data = b"ims-station doctor: acknack key"
        v = station_trust.verify(name, signer.key_id, data, signer.sign(data), max(probes.now(), signer.info.valid_from))
        if v.ok:
            out.append(Finding("trust", OK, f"station trust {at} accepts the relay's acknack key {signer.key_id}",
                               subject=at))
        else:
            out.append(Finding("trust", FAIL, f"station trust {at} rejects the relay's acknack key "
                               f"{signer.key_id}: {v.reason}",
                               f"ims-station keys export --keystore {conf['relay']['acknack_key']['keystore']} "
                               f"--key-id {signer.key_id} --trust {at} --station {name}", subject=at))
    return out


def run(config: str | None, relay: str | None, probes: Probes | None = None, *,
        offline: bool = False) -> list[Finding]:
    """All checks for a station file and/or a relay file."""
    probes = probes or Probes()
    out: list[Finding] = []
    s = r = None
    if config:
        found, s = station_checks(config, probes, offline=offline)
        out += found
    if relay:
        found, r = relay_checks(relay, probes, offline=offline)
        if config and not offline:   # one host clock: checked once
            found = [x for x in found if x.check != "clock_sync"]
        out += found
    if s is not None and r is not None:
        out += cross_checks(s, r, probes)
    return out


# --------------------------------------------------------------------------------------------------
# output and commands

_MARK = {OK: "ok", WARN: "WARN", FAIL: "FAIL"}


def print_table(findings: list[Finding], out: Any = None, *, verbose: bool = True) -> None:
    """A plain table: status, check, subject, detail, and the fix under each problem (plain text,
    so it reads the same over a slow SSH link, in a log and in a mail)."""
    out = out or sys.stdout
    for f in findings:
        if f.status == OK and not verbose:
            continue
        where = f" [{f.subject}]" if f.subject and f.subject not in f.detail else ""
        print(f"{_MARK[f.status]:<4} {f.check:<11} {f.detail}{where}", file=out)
        if f.fix and f.status != OK:
            print(f"     {'':<11} fix: {f.fix}", file=out)
    counts = {s: sum(f.status == s for f in findings) for s in (OK, WARN, FAIL)}
    print(f"{counts[FAIL]} failed, {counts[WARN]} warnings, {counts[OK]} ok", file=out)


def _doctor(args: argparse.Namespace) -> int:
    from ims_station.output import print_json

    if not (args.config or args.relay):
        raise ImsStationError("say what to examine: --config station.toml and/or --relay relay.toml")
    findings = run(args.config, args.relay, Probes(timeout=args.timeout, clock_tolerance_s=args.clock_tolerance))
    if args.json:
        print_json({"status": worst(findings), "findings": [f.to_dict() for f in findings]})
    else:
        print_table(findings)
    return exit_status(findings)


def config_check(config: str | None = None, relay: str | None = None, probes: Probes | None = None,
                 out: Any = None, err: Any = None) -> int:
    """``edge check`` / ``relay check``: the offline checks; problems as ``file: key: reason`` lines
    (failures on stdout, warnings on stderr prefixed ``warning:``); 0 or 2."""
    out, err = out or sys.stdout, err or sys.stderr
    findings = run(config, relay, probes, offline=True)
    for f in findings:
        if f.status == FAIL:
            print(f.line() + (f" (fix: {f.fix})" if f.fix else ""), file=out)
        elif f.status == WARN:
            print("warning: " + f.line() + (f" (fix: {f.fix})" if f.fix else ""), file=err)
    if worst(findings) == FAIL:
        return 2
    print(f"{config or relay}: ok", file=out)
    return 0


def add_check_parser(sub: Any, what: str) -> argparse.ArgumentParser:
    """``edge check`` / ``relay check`` (registered by edge/cli.py and relay/cli.py)."""
    p = sub.add_parser("check", help=f"validate a {what} file without opening ports or connecting",
                       description=f"Validate a {what} file: schema, referenced files, key permissions and "
                                   "validity, trust stores; opens no port and no connection (docs/doctor.md).")
    p.add_argument("--config", required=True, metavar="FILE", help=f"{what} TOML file")
    p.set_defaults(handler=lambda a: config_check(**{("config" if what == "station" else "relay"): a.config}))
    return p


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("doctor", help="check a station or relay: ports, boards, clocks, disk, broker, TLS, keys",
                              description="Check ports and boards, clock sync, disk, broker reachability and TLS, "
                                          "key and secret files, trust stores; each problem with the command that "
                                          "fixes it (docs/doctor.md).  Exit 0 all ok, 1 warnings, 2 failures.")
    p.add_argument("--config", metavar="FILE", help="station TOML file")
    p.add_argument("--relay", metavar="FILE", help="relay TOML file")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--timeout", type=float, default=5.0, metavar="S",
                   help="seconds to wait for each board and each broker (default 5)")
    p.add_argument("--clock-tolerance", type=float, default=5.0, metavar="S",
                   help="allowed difference of board time and gateway clock, seconds (default 5)")
    p.set_defaults(handler=_doctor)
