"""docs/deployment.md, docs/deploy-raspberry-pi.md and docs/mosquitto/README.md stay true to the code.

* Every systemd ``ExecStart`` (of the units in ``deploy/systemd/``, which the guide installs) is a
  command line the CLI accepts, the gateway runs from the one
  station file (no separate ``uplink.toml``), and the tables the doc lists for that file are the
  ones the station file's schema knows.
* The guides' commands run **as written**: every fenced block opened with ```` ```sh {test} ```` is
  extracted and run, in document order, by ``bash -euo pipefail`` (one shell per document, so a
  ``cd`` or a variable carries over as it would for an operator pasting them), with ``IMS_ROOT``
  set to a scratch directory (the guides prefix every system path with ``"$IMS_ROOT"``, empty on a
  real machine).  The Mosquitto README runs first, in a copy of ``docs/mosquitto/`` (the broker
  administrator); then ``ca/ca.crt``, ``STA01.password`` and ``relay.password`` are copied, as the
  guides say to hand them out, into the folder where the deployment guide runs (the station and
  the relay host).  The Raspberry Pi guide's blocks run last, on the machine the deployment guide
  made.  Blocks without the marker are not run; the guides say why next to each.

Shims, on ``PATH`` in front of the real commands, for what needs the real system:

* ``sudo [-u USER] CMD...`` runs CMD as the test's user (root in CI; the scratch root is ours);
* ``install`` drops ``-o USER`` / ``-g GROUP`` (the ``ims`` and ``mosquitto`` accounts do not exist
  here) and runs the real ``install`` with everything else, modes included;
* ``apt-get``, ``useradd``, ``usermod``, ``chown``, ``udevadm``, ``raspi-config`` only record their
  arguments (checked below);
* ``git clone URL DIR`` copies the source tree under test to DIR (no network); ``git -C DIR pull``
  (an upgrade) records its arguments;
* ``systemd-analyze verify UNIT...`` runs the real one with ``--root`` the scratch root (so the
  installed ``ExecStart`` programs are the ones checked; ``--recursive-errors=no``: the scratch root
  has no ``sysinit.target``); without systemd-analyze it only records;
* ``python3 -m venv DIR`` makes DIR with ``--without-pip`` and gives it a ``pip`` that is this venv's
  pip aimed at DIR (``pip --python``) with ``--no-deps``, the dependencies coming from this venv
  through a ``.pth`` line, as in tests/test_install.py; the project itself is built and installed
  from the cloned tree by the guide's own ``pip install`` command.  Any other ``python3`` is the real one;
* ``systemctl`` records its arguments; ``enable --now UNIT`` / ``start UNIT`` / ``restart UNIT`` also
  runs the unit's ``ExecStart`` from the unit file the guide installed (``%i`` replaced, absolute
  paths put under the scratch root) until it has started -- for ``Type=notify`` as systemd does: a
  notification socket in ``$NOTIFY_SOCKET``, ``$WATCHDOG_USEC`` from ``WatchdogSec``, started at
  ``READY=1``, and it must then send a ``WATCHDOG=1``; otherwise once it handles its
  ``KillSignal`` -- then sends that signal and requires a clean exit within the unit's
  ``TimeoutStopSec`` (and ``STOPPING=1`` from a ``Type=notify`` service).  A service that fails at start-up (a bad config, a key file the
  guide did not make) fails the test with the service's output.

mosquitto_passwd and openssl are the real ones.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.conftest import missing_prerequisite, need_mosquitto

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "deployment.md"
PI_DOC = ROOT / "docs" / "deploy-raspberry-pi.md"
UNITS = ROOT / "deploy" / "systemd"
MOSQUITTO_DOC = ROOT / "docs" / "mosquitto" / "README.md"
TEST_MARK = "```sh {test}"
SERVICE_START_LIMIT = 300.0     # upper bound on a service's start-up in the systemctl shim (not a timing test)


def exec_starts() -> list[list[str]]:
    """The ``ExecStart`` of each unit the guide installs (gateway first)."""
    assert "deploy/systemd/ims-gateway.service" in DOC.read_text()
    units = [UNITS / "ims-gateway.service", UNITS / "ims-relay@.service"]
    return [shlex.split(m) for u in units for m in re.findall(r"^ExecStart=(.+)$", u.read_text(), re.M)]


def test_every_exec_start_parses_with_the_cli():
    from ims_station.cli import build_parser

    cmds = exec_starts()
    assert len(cmds) == 2                              # gateway and relay
    for argv in cmds:
        assert argv[0].endswith("/ims-station"), argv
        args = build_parser().parse_args(argv[1:])
        assert getattr(args, "handler", None) is not None, argv


def test_the_gateway_unit_runs_edge_run_with_the_one_station_file():
    gateway = next(a for a in exec_starts() if a[1] == "edge")
    assert gateway[1:] == ["edge", "run", "--config", "/etc/ims-station/station.toml", "--stats-every", "60"]
    text = DOC.read_text()
    assert "/etc/ims-station/uplink.toml" not in text and "python -m ims_station.edge.station" not in text


def test_the_tables_the_doc_names_for_the_station_file_exist_in_its_schema():
    from ims_station.edge.config import SCHEMA

    section = DOC.read_text().split("## 3. Configuration", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`\[\[?([a-z_.]+)\]\]?`", section))
    assert {"station", "link", "ports", "framer", "outbox", "keys", "uplink", "uplink.brokers"} <= named
    for table in named:
        node = SCHEMA
        for part in table.split("."):
            node = node["properties"][part]
            node = node.get("items", node)              # [[ports]], [[uplink.brokers]]: arrays of tables
        assert node.get("type") == "object", table


# ---------------------------------------------------------------- the guides' commands, as written

def doc_blocks(doc: Path) -> list[str]:
    """The text of every ```` ```sh {test} ```` block of *doc*, in order."""
    blocks = re.findall(r"^```sh \{test\}\n(.*?)^```$", doc.read_text(), re.M | re.S)
    assert blocks, f"{doc}: no {TEST_MARK} block"
    return blocks


def run_blocks(blocks: list[str], cwd: Path, env: dict[str, str], what: str) -> str:
    script = "\n".join(blocks)
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, (f"{what}: a command failed (exit {proc.returncode})\n--- stdout\n"
                                  f"{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-6000:]}")
    return proc.stdout


_SYSTEMCTL = r"""
import os, re, shlex, signal, socket, subprocess, sys, tempfile, time
root, log = os.environ["IMS_ROOT"], os.environ["IMS_SHIM_LOG"]
with open(log, "a") as f:
    f.write("systemctl " + " ".join(sys.argv[1:]) + "\n")
args = [a for a in sys.argv[1:] if not a.startswith("-")]
if args[:1] not in (["enable"], ["start"], ["restart"]) or (args[0] == "enable" and "--now" not in sys.argv):
    sys.exit(0)
for unit in args[1:]:
    name, _, inst = unit.removesuffix(".service").partition("@")
    path = os.path.join(root, "etc/systemd/system", f"{name}@.service" if inst else f"{name}.service")
    if not os.path.exists(path) and name in os.environ["IMS_SYSTEM_UNITS"].split():
        continue                                  # the system's own (systemd-journald, chrony): recorded
    text = open(path).read()
    keys = dict(re.findall(r"^(ExecStart|KillSignal|TimeoutStopSec|Type|WatchdogSec)=(.*)$", text, re.M))
    argv = [(root + a if a.startswith("/") else a) for a in shlex.split(keys["ExecStart"].replace("%i", inst))]
    out = open(os.path.join(root, f"{unit}.log"), "w")
    env, notify, got = dict(os.environ), None, []
    if keys.get("Type") == "notify":            # as systemd: a datagram socket, READY=1 is "started"
        sock_dir = tempfile.mkdtemp(prefix="ims-notify-", dir="/tmp")
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(os.path.join(sock_dir, "notify"))
        notify.settimeout(0.1)
        env["NOTIFY_SOCKET"] = os.path.join(sock_dir, "notify")
        if keys.get("WatchdogSec"):
            env["WATCHDOG_USEC"] = str(int(float(keys["WatchdogSec"].rstrip("s")) * 1e6))

    def receive():
        try:
            got.append(notify.recv(4096).decode())
        except socket.timeout:
            pass

    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    sig = getattr(signal, keys.get("KillSignal", "SIGTERM"))
    deadline = time.monotonic() + float(os.environ["IMS_SERVICE_START_LIMIT"])
    while proc.poll() is None and time.monotonic() < deadline:
        if notify is not None:
            receive()
            if any(g.startswith("READY=1") for g in got) and "WATCHDOG=1" in got:
                break
            continue
        # Started = it handles its KillSignal (SigCgt in /proc): both daemons install the handler after
        # their configuration, keys and state files are loaded, so this is "past start-up", not a guess.
        caught = re.search(r"^SigCgt:\s*([0-9a-f]+)$", open(f"/proc/{proc.pid}/status").read(), re.M)
        if caught and int(caught.group(1), 16) >> (sig - 1) & 1:
            break
        time.sleep(0.05)
    else:
        proc.kill()
        sys.exit(f"systemctl shim: {unit} " + (f"exited at start-up with status {proc.wait()}" if proc.returncode
                 is not None else "never got started (READY=1 and a WATCHDOG=1, or its KillSignal handled)")
                 + f" (notifications {got}):\n" + open(out.name).read())
    proc.send_signal(sig)
    try:
        rc = proc.wait(float(keys.get("TimeoutStopSec", "90")))
    except subprocess.TimeoutExpired:
        proc.kill()
        sys.exit(f"systemctl shim: {unit} did not stop within TimeoutStopSec:\n" + open(out.name).read())
    if rc != 0:
        sys.exit(f"systemctl shim: {unit} stopped with status {rc}:\n" + open(out.name).read())
    if notify is not None:
        notify.settimeout(0)
        try:
            while True:
                got.append(notify.recv(4096).decode())
        except BlockingIOError:
            pass
        if not any(g.startswith("STOPPING=1") for g in got):
            sys.exit(f"systemctl shim: {unit} sent no STOPPING=1 (notifications {got})")
    with open(log, "a") as f:
        f.write(f"ran {unit}: {shlex.join(argv)}\n")
        if notify is not None:
            f.write(f"notified {unit}: " + " | ".join(g.replace(chr(10), " ") for g in got) + "\n")
"""

_SYSTEMD_ANALYZE = r"""#!/bin/sh
echo "systemd-analyze $*" >> "$IMS_SHIM_LOG"
real=$(PATH=/usr/bin:/bin command -v systemd-analyze) || exit 0
[ "$1" = verify ] || exit 2
shift
exec "$real" verify --root="$IMS_ROOT" --recursive-errors=no --man=no "$@"
"""


def make_shims(shims: Path, src: Path) -> None:
    """The shims of the module docstring."""
    shims.mkdir()
    record = '#!/bin/sh\necho "$(basename "$0") $*" >> "$IMS_SHIM_LOG"\n'
    py = sys.executable
    deps = "\n".join(sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}))
    scripts = {
        "sudo": '#!/bin/sh\nwhile [ $# -gt 0 ]; do case "$1" in -u|-g) shift 2;; -*) shift;; *) break;; esac; done\n'
                'exec "$@"\n',
        "install": '#!/bin/sh\nn=$#; i=0\nwhile [ $i -lt $n ]; do a=$1; shift; i=$((i+1))\n'
                   '  case "$a" in -o|-g) shift; i=$((i+1));; *) set -- "$@" "$a";; esac\ndone\n'
                   'exec /usr/bin/install "$@"\n',
        "apt-get": record, "useradd": record, "usermod": record, "chown": record, "udevadm": record,
        "raspi-config": record, "systemd-analyze": _SYSTEMD_ANALYZE,
        "git": f'#!/bin/sh\necho "git $*" >> "$IMS_SHIM_LOG"\n[ "$1 $3" = "-C pull" ] && exit 0\n'
               f'[ "$1" = clone ] || exit 2\ncp -a {shlex.quote(str(src))} "$3"\n',
        "python3": f'#!/bin/sh\nif [ "$1 $2" = "-m venv" ]; then\n'
                   f'  d=$3; {shlex.quote(py)} -m venv --without-pip "$d" || exit 1\n'
                   f'  site=$("$d/bin/python" -c "import sysconfig; print(sysconfig.get_paths()[\'purelib\'])")\n'
                   f'  printf "%s\\n" {shlex.quote(deps)} > "$site/zz_test_dependencies.pth"\n'
                   f'  printf "#!/bin/sh\\nexec %s -m pip --python %s \\"\\$@\\" --no-deps\\n" '
                   f'{shlex.quote(py)} "$d/bin/python" > "$d/bin/pip"; chmod 755 "$d/bin/pip"\n'
                   f'else exec {shlex.quote(shutil.which("python3") or "/usr/bin/python3")} "$@"; fi\n',
        "systemctl": f"#!{py}\n{_SYSTEMCTL}",
    }
    for name, text in scripts.items():
        (shims / name).write_text(text)
        (shims / name).chmod(0o755)


def source_copy(dest: Path) -> Path:
    """What ``git clone`` gives: the tracked (and new, not ignored) files of the tree under test."""
    from tests.test_install import tracked_files

    for f in tracked_files():
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, dest / f)
    return dest


def _need_tools() -> None:
    need_mosquitto()
    for tool in ("mosquitto_passwd", "openssl", "bash"):
        if shutil.which(tool) is None:
            missing_prerequisite(f"the {tool} command", "apt-get install mosquitto openssl bash")


def _env(root: Path, shims: Path, log: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(IMS_ROOT=str(root), IMS_SHIM_LOG=str(log), IMS_SERVICE_START_LIMIT=str(SERVICE_START_LIMIT),
               IMS_SYSTEM_UNITS="systemd-journald chrony gpsd",
               PATH=f"{shims}:{os.environ.get('PATH', '/usr/bin:/bin')}")
    return env


def test_a_failing_command_in_a_tested_block_fails_the_run(tmp_path):
    """The runner cannot pass a guide whose command fails: -e, -u and pipefail hold in every block."""
    for bad in ("false", "echo $UNSET_VARIABLE", "false | cat", "cd /nonexistent-dir"):
        with pytest.raises(AssertionError, match="a command failed"):
            run_blocks(["true", bad, "true"], tmp_path, dict(os.environ), bad)


@pytest.mark.slow
def test_the_guides_run_as_written_in_a_scratch_root(tmp_path):
    _need_tools()
    root, shims, log = tmp_path / "root", tmp_path / "shims", tmp_path / "shim.log"
    make_shims(shims, source_copy(tmp_path / "checkout"))
    # What the Debian packages provide: mosquitto's conf.d, systemd's unit folder, the kill of the
    # relay's ExecReload (systemd-analyze verify checks it exists), the Pi's firmware configuration.
    for d in ("etc/mosquitto/conf.d", "etc/systemd/system", "bin", "boot/firmware"):
        (root / d).mkdir(parents=True)
    shutil.copy2(shutil.which("kill", path="/bin:/usr/bin"), root / "bin" / "kill")
    (root / "boot/firmware/config.txt").write_text("[all]\n")
    env = _env(root, shims, log)

    # The broker's administrator, in a copy of docs/mosquitto/.
    admin = tmp_path / "ims-broker"
    shutil.copytree(ROOT / "docs" / "mosquitto", admin)
    run_blocks(doc_blocks(MOSQUITTO_DOC), admin, env, "docs/mosquitto/README.md")
    etc = root / "etc" / "mosquitto"
    assert (etc / "conf.d" / "ims.conf").read_bytes() == (ROOT / "docs/mosquitto/mosquitto.conf").read_bytes()
    assert (etc / "ims" / "acl").read_bytes() == (ROOT / "docs/mosquitto/acl").read_bytes()
    for name in ("ca.crt", "server.crt", "server.key"):
        assert (etc / "ims" / name).is_file(), name
    conf_files = re.findall(r"^(?:password_file|acl_file|cafile|certfile|keyfile) (/\S+)$",
                            (ROOT / "docs/mosquitto/mosquitto.conf").read_text(), re.M)
    for f in conf_files:                   # every file the configuration names, the README made
        assert (root / f.lstrip("/")).is_file(), f
    # Every account the ACL has a section for, and the example stations, have a password.
    accounts = {line.split(":", 1)[0] for line in (etc / "ims" / "passwd").read_text().splitlines() if line}
    acl_users = set(re.findall(r"^user (\S+)$", (ROOT / "docs/mosquitto/acl").read_text(), re.M))
    assert acl_users == {"relay", "ops"}, acl_users
    missing = (acl_users | {"STA01", "STA02"}) - accounts
    assert not missing, f"accounts the ACL or the guides use that no command of the README creates: {sorted(missing)}"
    for acct in acl_users | {"STA01", "STA02"}:
        assert (admin / f"{acct}.password").stat().st_mode & 0o077 == 0, acct

    # The station and the relay host get what the administrator hands out.
    site = tmp_path / "site"
    site.mkdir()
    for f in ("ca/ca.crt", "STA01.password", "relay.password"):
        shutil.copy2(admin / f, site)
    run_blocks(doc_blocks(DOC), site, env, "docs/deployment.md")
    pi_out = run_blocks(doc_blocks(PI_DOC), site, env, "docs/deploy-raspberry-pi.md")

    calls = log.read_text()
    for expected in ("apt-get install", "useradd --system", "usermod -aG dialout ims", "git clone",
                     "systemctl enable --now ims-gateway", "ran ims-gateway:",
                     "systemctl enable --now ims-relay@relay1", "ran ims-relay@relay1:"):
        assert expected in calls, (expected, calls)
    # The units were verified (systemd-analyze, against the scratch root) and ran as Type=notify.
    assert "systemd-analyze verify ims-gateway.service ims-relay@relay1.service" in calls
    for unit, summary in (("ims-gateway", "STATUS=gateway IM.STA01: ports seismic"),
                          ("ims-relay@relay1", "STATUS=relay relay1: received 0")):
        notified = [ln for ln in calls.splitlines() if ln.startswith(f"notified {unit}:")]
        assert notified and all("READY=1" in n and summary in n and "WATCHDOG=1" in n and "STOPPING=1" in n
                                for n in notified), (unit, notified)
    # The Raspberry Pi guide: its files installed as deploy/ has them, its commands recorded, the
    # gateway restarted after the upgrade, the key backup holds the keys.
    for rel, src in (("etc/udev/rules.d/99-ims-station.rules", "deploy/udev/99-ims-station.rules"),
                     ("etc/chrony/conf.d/ims-gnss.conf", "deploy/chrony/ims-gnss.conf"),
                     ("etc/systemd/journald.conf.d/ims-station.conf", "deploy/journald/ims-station.conf")):
        assert (root / rel).read_bytes() == (ROOT / src).read_bytes(), rel
    assert "dtoverlay=pps-gpio,gpiopin=18" in (root / "boot/firmware/config.txt").read_text()
    for expected in ("udevadm control --reload", "raspi-config nonint do_serial_cons 1",
                     "raspi-config nonint do_serial_hw 0", "apt-get install -y chrony gpsd pps-tools",
                     "git -C", "systemctl restart ims-gateway"):
        assert expected in calls, (expected, calls)
    assert calls.count("ran ims-gateway:") == 2, calls                  # enable --now, then the upgrade
    assert "ims-station/keys/board1.key" in pi_out and "ims-station/keystore/1.pem" in pi_out
    backups = list(site.glob("ims-station-keys-*.tar.gz"))
    assert len(backups) == 1 and backups[0].stat().st_mode & 0o077 == 0, backups
    installed = root / "opt" / "ims-station" / "venv"
    assert list(installed.glob("lib/python*/site-packages/ims_station/__init__.py")), "not installed from the clone"
    for secret in ("etc/ims-station/keys/board1.key", "etc/ims-station/mqtt.password",
                   "etc/ims-station/keystore/1.pem", "etc/ims-relay/relay.password"):
        assert (root / secret).stat().st_mode & 0o077 == 0, secret
    assert (root / "etc/ims-relay/trust/1.pem").is_file()
    assert (root / "var/lib/ims-station/outbox.sqlite").is_file()      # the gateway really ran
    assert (root / "var/lib/ims-relay/state.sqlite").is_file()         # and so did the relay


def test_the_paths_the_guides_name_agree():
    """The units' --config files are the files the guide writes; the broker snippet of the
    Mosquitto README names the files the deployment guide installs."""
    text = DOC.read_text()
    written = set(re.findall(r'"\$IMS_ROOT"(/etc/\S+\.toml)', text))
    for argv in exec_starts():
        conf = argv[argv.index("--config") + 1].replace("%i", "relay1")
        assert conf in written, (conf, written)
    snippet = MOSQUITTO_DOC.read_text().split("```toml", 1)[1].split("```", 1)[0]
    for path in re.findall(r'= "(/etc/ims-station/[^"]+)"', snippet):
        assert f'"$IMS_ROOT"{path}' in text, path


def test_untested_commands_parse_and_the_suite_runs_from_the_checkout():
    """The guides' blocks that no test runs still hold commands the CLI accepts, and the test suite
    is run where it exists: the checkout's ``./run tests`` (the installed venv has neither pytest
    nor the tests)."""
    from ims_station.cli import build_parser

    for doc in (DOC, MOSQUITTO_DOC, PI_DOC):
        blocks = re.findall(r"^```sh\n(.*?)^```$", doc.read_text(), re.M | re.S)
        lines = [ln.split(" #")[0].strip() for b in blocks for ln in b.replace("\\\n", " ").splitlines()]
        for line in lines:
            if "pytest" in line:
                assert re.search(r"(^|[;&|]\s*|\s)(sudo )?\./run tests\b", line) and "python -m pytest" not in line, \
                    f"{doc.name}: {line!r} runs pytest outside the checkout's ./run"
            words = shlex.split(line, comments=True) if line else []
            while words and (words[0] == "sudo" or "=" in words[0]):
                words = words[1:]
            if words and words[0].endswith("ims-station"):
                args = build_parser().parse_args(words[1:])
                assert getattr(args, "handler", None) is not None, line
