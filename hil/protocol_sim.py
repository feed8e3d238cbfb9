"""pyserial URL handler for ``sim://``: the HIL simulator as a serial port.

Registered by adding ``"ims_station.hil"`` to ``serial.protocol_handler_packages`` (the edge's
``open_port`` does it), so ``serial.serial_for_url("sim://...")`` returns :class:`Serial` and the
gateway reaches the simulator through exactly the code path it uses for ``/dev/ttyUSB0`` or
``rfc2217://``.

Owns: URL parsing and the port surface (``read``/``write``/``in_waiting``...).  ``read()`` advances
the simulation: it returns when *size* bytes have arrived or the port's timeout has passed **in
simulated time**, so a gateway loop runs the simulation faster than real time.  Does not own the
simulation (``hil/sim.py``).

URL forms:

* ``sim://NAME`` -- attach to the simulation registered under NAME (``ims_station.hil.sim.register``),
  e.g. the one a soak built with its full fault plan;
* ``sim://sim?seed=7&ber=1e-5&drop=0.001&rate=100`` -- build a new simulation from the parameters:
  ``board`` (board definition name, default the host part or ``sim``), ``seed``, ``rate`` (sps),
  ``ber``, ``drop``, ``dup`` (both directions), ``latency_ms`` (USB adapter latency timer),
  ``holdover`` (s), ``key_file`` (the board's HMAC key, read with checked permissions; without
  it the simulation's public per-seed test key ``ims_station.hil.sim.simulation_key(seed)``), and the windows ``disconnect``, ``gnss``, ``clip``, ``tamper``, ``outage``
  (``START:SECONDS``, repeatable), ``reboot`` (time s, repeatable), ``jump`` (``TIME:STEP``), and
  ``unplug=START:SECONDS``: the port itself fails (reads and writes raise SerialException, opening
  fails) during that window, as a USB adapter being pulled out does.
"""

from __future__ import annotations

import urllib.parse

from serial.serialutil import PortNotOpenError, SerialException

from .faults import FaultPlan, FaultSpecError, LineFaults, Window
from .virtualport import VirtualSerialBase

_FLOAT = ("ber", "drop", "dup", "rate", "latency_ms", "holdover")
_WINDOWS = {"disconnect": "disconnects", "gnss": "gnss_outages", "clip": "clipping", "tamper": "tamper",
            "outage": "gateway_outages", "supply_low": "supply_low"}


def parse_url(url: str) -> tuple[str, dict]:
    """Split a ``sim://`` URL into (name, options); raises SerialException naming the bad part."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "sim":
        raise SerialException(f"expected a sim:// URL, got {url!r}")
    name = parts.netloc or parts.path.lstrip("/") or "sim"
    opts: dict = {"windows": {}, "reboots": [], "jumps": [], "unplug": []}
    for key, values in urllib.parse.parse_qs(parts.query, keep_blank_values=True).items():
        for v in values:
            try:
                if key in _FLOAT:
                    opts[key] = float(v)
                elif key == "seed":
                    opts["seed"] = int(v)
                elif key == "board":
                    opts["board"] = v
                elif key == "key_file":
                    opts["key_file"] = v
                elif key in _WINDOWS:
                    opts["windows"].setdefault(_WINDOWS[key], []).append(Window.parse(v, key))
                elif key == "reboot":
                    opts["reboots"].append(float(v))
                elif key == "jump":
                    opts["jumps"].append(FaultPlan.parse_jump(v))
                elif key == "unplug":
                    opts["unplug"].append(Window.parse(v, key))
                else:
                    raise SerialException(f"sim:// URL: unknown parameter {key!r}")
            except (ValueError, FaultSpecError) as err:
                raise SerialException(f"sim:// URL: parameter {key}={v!r}: {err}") from None
    return name, opts


def plan_from_options(opts: dict) -> FaultPlan:
    try:
        line = LineFaults(opts.get("ber", 0.0), opts.get("drop", 0.0), opts.get("dup", 0.0))
    except FaultSpecError as err:
        raise SerialException(f"sim:// URL: {err}") from None
    plan = FaultPlan(down=line, up=line, reboots=list(opts.get("reboots", [])),
                     clock_jumps=list(opts.get("jumps", [])))
    for attr, windows in opts.get("windows", {}).items():
        setattr(plan, attr, list(windows))
    return plan


def _key(opts: dict) -> bytes | None:
    if "key_file" not in opts:
        return None          # the simulation derives its public test key from the seed
    from ims_station.config import read_secret_file

    return read_secret_file(opts["key_file"], what="board HMAC key")


class Serial(VirtualSerialBase):
    """A serial port whose other end is a simulated digitizer board."""

    def __init__(self, *args, **kwargs) -> None:
        self.sim = None
        self.owns_sim = False
        self._unplug: list[Window] = []
        super().__init__(*args, **kwargs)

    def open(self) -> None:
        if self.is_open:
            raise SerialException("Port is already open.")
        if self._port is None:
            raise SerialException("Port must be configured before it can be used.")
        from . import sim as simmod

        name, opts = parse_url(self.portstr)
        self._unplug = opts["unplug"]
        existing = simmod.lookup(name)
        if existing is not None:
            self.sim = existing
        elif self.sim is None:
            self.sim = simmod.Simulation(
                board=opts.get("board", name if name != "sim" else "sim"), seed=opts.get("seed", 0),
                plan=plan_from_options(opts), baud=int(self._baudrate),
                rate_sps=opts.get("rate"), latency_ms=opts.get("latency_ms", 16.0),
                holdover_s=int(opts["holdover"]) if "holdover" in opts else None,
                key=_key(opts))
            self.owns_sim = True
        self._check_plugged("open")
        self.is_open = True

    def close(self) -> None:
        self.is_open = False

    def _reconfigure_port(self) -> None:
        pass

    def _check_plugged(self, what: str) -> None:
        t = self.sim.clock.monotonic()
        for w in self._unplug:
            if w.contains(t):
                raise SerialException(f"{what}: device reports readiness to read but returned no data "
                                      f"(device disconnected or multiple access on port?)")

    # -------------------------------------------------------- data
    @property
    def in_waiting(self) -> int:
        if not self.is_open:
            raise PortNotOpenError()
        return self.sim.edge_in_waiting()

    def read(self, size: int = 1) -> bytes:
        if not self.is_open:
            raise PortNotOpenError()
        self._check_plugged("read")
        data = self.sim.edge_read(size, self._timeout)
        self._check_plugged("read")
        return data

    def write(self, data) -> int:
        if not self.is_open:
            raise PortNotOpenError()
        self._check_plugged("write")
        return self.sim.edge_write(bytes(data))

    def reset_input_buffer(self) -> None:
        if not self.is_open:
            raise PortNotOpenError()
        self.sim.down.take()
