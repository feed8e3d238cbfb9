"""deploy/: the systemd units and the example /etc layout agree with the code and with every document.

* Each unit's ``ExecStart`` is a command line the CLI accepts; its ``--config`` file is the example
  under ``deploy/etc/``, which is what docs/deployment.md writes and which the config schemas accept;
  the unit's writable and read-only paths are that file's ``data_dir`` and folder.
* The units say what the brief of a supervised daemon needs (``Type=notify``, ``WatchdogSec``,
  ``User=ims`` without ``DynamicUser``, ``ProtectSystem=strict``, ...), and ``systemd-analyze
  verify`` accepts them in a scratch root holding the programs they start.
* Every ``/etc/ims-*``, ``/var/lib/ims-*`` path any document or module names is under one of the
  layout's four roots (no ``/etc/ims/`` drift).
The units running under a notify socket: tests/deploy/test_notify_daemons.py and, as the guide
installs them, tests/integration/test_deployment_doc.py.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import missing_prerequisite

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
UNITS = {"ims-gateway.service": "edge", "ims-relay@.service": "relay"}


def unit_keys(name: str) -> dict[str, list[str]]:
    """``{key: [values]}`` of a unit file (keys may repeat: ``DeviceAllow``)."""
    out: dict[str, list[str]] = {}
    for line in (DEPLOY / "systemd" / name).read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            k, _, v = line.partition("=")
            out.setdefault(k.strip(), []).append(v.strip())
    return out


def one(keys: dict[str, list[str]], k: str) -> str:
    assert len(keys.get(k, [])) == 1, (k, keys.get(k))
    return keys[k][0]


@pytest.mark.parametrize("name", sorted(UNITS))
def test_unit_runs_the_cli_on_the_example_config(name):
    from ims_station.cli import build_parser
    from ims_station.config import load_toml

    keys = unit_keys(name)
    argv = shlex.split(one(keys, "ExecStart").replace("%i", "relay1"))
    assert argv[0] == "/opt/ims-station/venv/bin/ims-station" and argv[1:3] == [UNITS[name], "run"]
    args = build_parser().parse_args(argv[1:])
    assert args.handler is not None and args.stats_every == 60 and args.log_level == 20   # INFO summary
    conf = Path(args.config)
    example = DEPLOY / conf.relative_to("/")
    assert example.is_file(), example
    data = load_toml(example)
    data_dir = (data.get("station") or data.get("relay"))["data_dir"]
    assert one(keys, "ReadWritePaths") == data_dir == "/var/lib/" + one(keys, "StateDirectory")
    assert one(keys, "WorkingDirectory") == data_dir
    assert one(keys, "ReadOnlyPaths") == str(conf.parent)


@pytest.mark.parametrize("name", sorted(UNITS))
def test_unit_is_a_supervised_hardened_service(name):
    keys = unit_keys(name)
    want = {"Type": "notify", "NotifyAccess": "main", "User": "ims", "Group": "ims", "Restart": "on-failure",
            "ProtectSystem": "strict", "NoNewPrivileges": "yes", "KillSignal": "SIGTERM", "PrivateTmp": "yes"}
    for k, v in want.items():
        assert one(keys, k) == v, (name, k)
    assert "DynamicUser" not in keys                     # the keys belong to a fixed account
    assert 10 <= int(one(keys, "WatchdogSec")) <= 300
    assert int(one(keys, "TimeoutStopSec")) >= 20
    assert one(keys, "CapabilityBoundingSet") == ""
    if UNITS[name] == "edge":
        assert one(keys, "SupplementaryGroups") == "dialout"
        assert {"char-ttyUSB rw", "char-ttyACM rw", "char-ttyAMA rw"} <= set(keys["DeviceAllow"])
    else:
        assert one(keys, "ExecReload") == "/bin/kill -HUP $MAINPID"      # trust store reload


def test_systemd_analyze_verifies_the_units(tmp_path):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        missing_prerequisite("systemd-analyze", "apt-get install systemd")
    (tmp_path / "etc/systemd/system").mkdir(parents=True)
    for name in UNITS:
        shutil.copy(DEPLOY / "systemd" / name, tmp_path / "etc/systemd/system" / name)
    prog = tmp_path / "opt/ims-station/venv/bin/ims-station"
    prog.parent.mkdir(parents=True)
    prog.write_text("#!/bin/sh\n")
    prog.chmod(0o755)
    (tmp_path / "bin").mkdir()
    shutil.copy2(shutil.which("kill", path="/bin:/usr/bin"), tmp_path / "bin" / "kill")

    def verify(*units: str) -> subprocess.CompletedProcess:
        return subprocess.run([tool, "verify", f"--root={tmp_path}", "--recursive-errors=no", "--man=no", *units],
                              capture_output=True, text=True, timeout=60)

    proc = verify("ims-gateway.service", "ims-relay@relay1.service")
    assert proc.returncode == 0, proc.stderr
    # ... and it would notice a unit that drifted: an unknown key, a program not installed.
    bad = tmp_path / "etc/systemd/system/ims-bad.service"
    bad.write_text((DEPLOY / "systemd/ims-gateway.service").read_text().replace("WatchdogSec=", "WatchdogSecs="))
    assert verify("ims-bad.service").returncode != 0
    prog.unlink()
    assert verify("ims-gateway.service").returncode != 0


def test_the_example_etc_files_are_what_the_guide_writes_and_the_schemas_accept():
    from ims_station.config import load_toml, validate
    from ims_station.edge.config import SCHEMA
    from ims_station.relay.cli import RELAY_SCHEMA

    doc = (ROOT / "docs/deployment.md").read_text()
    for rel, schema in (("etc/ims-station/station.toml", SCHEMA), ("etc/ims-relay/relay1.toml", RELAY_SCHEMA)):
        m = re.search(r'tee "\$IMS_ROOT"/' + re.escape(rel) + r" >/dev/null <<EOF\n(.*?)^EOF$", doc, re.S | re.M)
        assert m, rel
        assert (DEPLOY / rel).read_text() == m.group(1).replace("$IMS_ROOT", ""), rel
        validate(load_toml(DEPLOY / rel), schema, DEPLOY / rel)


def test_every_document_names_paths_of_the_one_layout():
    roots = ("/etc/ims-station", "/etc/ims-relay", "/var/lib/ims-station", "/var/lib/ims-relay", "/opt/ims-station")
    files = [*ROOT.glob("docs/**/*.md"), ROOT / "README.md", *DEPLOY.rglob("*"),
             *ROOT.glob("ims_station/**/*.py"), *ROOT.glob("edge/*.py"), *ROOT.glob("relay/*.py")]
    stray = []
    for f in files:
        if f.is_file():
            for p in re.findall(r"/(?:etc|var/lib|opt)/ims[^\s`'\"),;:]*", f.read_text(errors="replace")):
                if not any(p == r or p.startswith(r + "/") for r in roots):
                    stray.append((f.relative_to(ROOT), p))
    assert not stray, stray
    layout = (DEPLOY / "README.md").read_text()
    for name in ("station.toml", "board1.key", "mqtt.password", "outbox.sqlite", "relay1.toml", "relay.password"):
        assert name in layout
        assert name in (ROOT / "docs/deployment.md").read_text()


def test_journald_drop_in_uses_known_keys_only():
    known = {"Storage", "Compress", "SystemMaxUse", "SystemKeepFree", "SystemMaxFileSize", "RuntimeMaxUse",
             "RuntimeKeepFree", "MaxRetentionSec", "MaxFileSec", "RateLimitIntervalSec", "RateLimitBurst",
             "ForwardToSyslog"}
    text = (DEPLOY / "journald/ims-station.conf").read_text()
    assert "[Journal]" in text
    keys = {ln.split("=", 1)[0] for ln in text.splitlines() if "=" in ln and not ln.startswith("#")}
    assert keys and keys <= known, keys - known


def test_the_doctor_recognises_the_chrony_reference_clocks_as_gnss():
    """The refids of deploy/chrony/ims-gnss.conf are what ``chronyc tracking`` reports and what the
    doctor must count as GNSS/PPS, not "NTP only"."""
    from ims_station.doctor import parse_chronyc_tracking

    refids = re.findall(r"^refclock \S+ \S+ .*?refid (\S+)", (DEPLOY / "chrony/ims-gnss.conf").read_text(), re.M)
    assert refids == ["NMEA", "PPS"]
    for ref in refids:
        line = f"50505300,{ref},1,1733230000.0,0.000000123,0,0,0,0,0,0,0,0,Normal"
        assert parse_chronyc_tracking(line).source == "gnss", ref
