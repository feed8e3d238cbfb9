"""The local status API of a running gateway or relay: ``GET /status``, ``/metrics``, ``/health``.

Owns the ``[status]`` table of the station file and of the relay file (:data:`SCHEMA`,
:data:`DEFAULTS`, :func:`settings_from_table`), the HTTP server that serves it on a Unix socket
and/or a loopback TCP port (:class:`StatusServer`), the health rule (:func:`station_health`,
:func:`relay_health`) and the client (:class:`StatusClient`, :func:`fetch`) that ``ims-station edge status`` and the
console use.

It does not own the status document (``edge/station.py`` ``Station.status()``, the same JSON the
SOH carries; ``relay.Relay.stats()``) nor its translation into Prometheus metrics
(``ims_station/metrics.py``): every request reads the document of the moment through a provider
function, so there is no second bookkeeping of any counter.

Why the standard library's ``http.server``: three read-only GET routes on a local socket need no
framework; ``ThreadingHTTPServer`` (and its Unix-socket twin below) adds no dependency to a
gateway that must stay small on a Pi, and a request can never block the data path (each runs on
its own daemon thread; the providers take the component's own lock only for as long as they copy
counters).  Routes (docs/status-api.md):

* ``GET /status``  -> the status document (JSON).
* ``GET /metrics`` -> Prometheus text format (``prometheus-client``'s ``generate_latest``).
* ``GET /health``  -> ``{"status": "ok"}`` (200) or ``{"status": "degraded", "problems": [...]}`` (503).
* ``POST /actions/<name>`` -> an extension point: only actions registered by the caller
  (:class:`StatusServer` *actions*), and only over the Unix socket (its file mode is the access
  control); a gateway registers ``calibrate``, ``resend`` and ``next_key`` (``edge/actions.py``,
  the console's actions), an unknown name is answered 404 (any action 403 over TCP).
* ``GET /waveform?channel=CODE`` -> the last samples of a channel (a gateway's
  ``edge/actions.WaveformTap``; 404 elsewhere).

Safety: the API is unauthenticated and read-only, so by default it listens only on a Unix socket
(``<data_dir>/status.sock``, the relay's ``<data_dir>/status-<instance>.sock``, mode 0660: the
owner and its group) and, if ``listen`` is set, on a
loopback address; any other address is refused at start-up (``ConfigError``) unless
``allow_remote = true``.  A failure to bind is logged as an ERROR and the component runs on
without the API: diagnostics never stop data acquisition.  A stale socket file (no process
answers on it) is replaced; a live one (another process serving) is left alone.
"""

from __future__ import annotations

import http.client
import http.server
import ipaddress
import json
import logging
import os
import socket
import socketserver
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ims_station.errors import ConfigError, ImsStationError

log = logging.getLogger(__name__)

#: The ``[status]`` table (station file and relay file; docs/configuration.md, docs/relay.md).
SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "enabled": {"type": "boolean"},
        "socket": {"type": "string"},
        "listen": {"type": "string"},
        "allow_remote": {"type": "boolean"},
    },
}

#: Defaults of every ``[status]`` key (``socket`` None: ``<data_dir>/status.sock``; ``listen`` "": no TCP).
DEFAULTS: dict[str, Any] = {"enabled": True, "socket": None, "listen": "", "allow_remote": False}

#: Socket file mode: the service user and its group (operators in the group may read the status).
SOCKET_MODE = 0o660
#: Longest request body read (POST /actions): anything longer is refused unread.
MAX_BODY = 65536
#: Seconds a client may take to send its request before its connection is dropped.
REQUEST_TIMEOUT_S = 10.0
#: AF_UNIX path limit on Linux (sun_path is 108 bytes with the terminating NUL).
MAX_SOCKET_PATH = 107


@dataclass(frozen=True)
class StatusSettings:
    enabled: bool
    socket: Path | None                 # None: no Unix socket
    listen: tuple[str, int] | None      # (host, port) or None: no TCP
    allow_remote: bool


def parse_listen(text: str, *, file: str, key: str = "status.listen") -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6; ``localhost`` means 127.0.0.1) -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(file, key, f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:9101)")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if host == "localhost":
        host = "127.0.0.1"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(file, key, f"{host!r} is not an IP address (write 127.0.0.1, ::1 or localhost)") from None
    return host, int(port)


def settings_from_table(table: dict[str, Any] | None, *, file: str | os.PathLike[str],
                        data_dir: str | os.PathLike[str], default_socket: str = "status.sock") -> StatusSettings:
    """The resolved ``[status]`` table: a relative ``socket`` is taken from the config file's
    folder (default: *default_socket* in *data_dir*); a non-loopback ``listen`` address is refused
    unless ``allow_remote = true``."""
    t = dict(DEFAULTS, **(table or {}))
    f = str(file)
    sock: Path | None = None
    if t["socket"] is None:
        sock = Path(data_dir) / default_socket
    elif t["socket"]:                     # "": no Unix socket
        sock = Path(t["socket"])
        if not sock.is_absolute():
            sock = Path(f).resolve().parent / sock
    if sock is not None and len(os.fsencode(str(sock))) > MAX_SOCKET_PATH and (table or {}).get("socket"):
        raise ConfigError(f, "status.socket", f"{sock} is longer than {MAX_SOCKET_PATH} bytes (a Unix socket limit)")
    listen = parse_listen(t["listen"], file=f) if t["listen"] else None
    if listen is not None and not ipaddress.ip_address(listen[0]).is_loopback and not t["allow_remote"]:
        raise ConfigError(f, "status.listen", f"{listen[0]} is not a loopback address: the status API has no "
                          "authentication; set allow_remote = true to serve other hosts anyway")
    return StatusSettings(bool(t["enabled"]), sock, listen, bool(t["allow_remote"]))


# -- health ----------------------------------------------------------------------------------------

def station_health(doc: dict) -> list[str]:
    """Why a gateway is degraded (empty: healthy): a port down, the uplink disconnected, a clock
    hold, signing keys unusable."""
    problems = [f"port {p.get('name')} disconnected" for p in doc.get("ports") or [] if not p.get("connected")]
    up = doc.get("uplink")
    if isinstance(up, dict) and not up.get("connected"):
        problems.append(f"uplink to {up.get('broker')} disconnected")
    gw = doc.get("gateway") or {}
    for h in gw.get("clock_hold") or []:
        problems.append(f"board {h.get('board')} on clock hold")
    keys = (gw.get("framer") or {}).get("keys")
    if isinstance(keys, dict) and keys.get("error"):
        problems.append(f"keys: {keys['error']}")
    return problems


def relay_health(doc: dict) -> list[str]:
    """Why a relay is degraded (empty: healthy): not connected (and subscribed) to a broker."""
    tr = doc.get("transport") or {}
    return [] if tr.get("connected") else ["not connected to a broker"]


# -- server ----------------------------------------------------------------------------------------

class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = "ims-station-status/1"
    timeout = REQUEST_TIMEOUT_S
    api: "StatusServer"            # set on the per-server subclass

    def log_message(self, format: str, *args: Any) -> None:   # noqa: A002 (the base class's name)
        log.debug("status API: " + format, *args)

    def _send(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, code: int, doc: Any) -> None:
        self._send(code, json.dumps(doc, default=str, allow_nan=False).encode() + b"\n", "application/json")

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = self.path.split("?", 1)[0]
        try:
            if path == "/status":
                self._json(200, self.api.status())
            elif path == "/metrics":
                from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

                self._send(200, generate_latest(self.api.registry), CONTENT_TYPE_LATEST)
            elif path == "/health":
                problems = self.api.health(self.api.status())
                self._json(200 if not problems else 503,
                           {"status": "ok" if not problems else "degraded", "problems": problems})
            elif path == "/waveform" and self.api.waveform is not None:
                from urllib.parse import parse_qs

                q = parse_qs(self.path.partition("?")[2], max_num_fields=4)
                channel = (q.get("channel") or [""])[0]
                doc = self.api.waveform(channel) if channel else self.api.waveform_summary()
                if doc is None:
                    self._json(404, {"error": f"no waveform for channel {channel!r}",
                                     "channels": self.api.waveform_channels()})
                else:
                    self._json(200, doc)
            elif path == "/":
                self._json(200, {"endpoints": ["/status", "/metrics", "/health"]
                                 + (["/waveform"] if self.api.waveform is not None else []),
                                 "actions": sorted(self.api.actions)})
            else:
                self._json(404, {"error": f"no such endpoint: {path}"})
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as err:       # a provider's failure is the client's 500, never the daemon's
            self.api.errors += 1
            log.error("status API: %s failed: %s: %s", path, type(err).__name__, err)
            try:
                self._json(500, {"error": f"{type(err).__name__}: {err}"})
            except OSError:
                pass

    do_HEAD = do_GET

    def do_POST(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0]
        name = path[len("/actions/"):] if path.startswith("/actions/") else None
        if name is None or name not in self.api.actions:
            return self._json(404, {"error": f"no such action: {path}"})
        if not isinstance(self.connection.getsockname(), (str, bytes)):    # TCP: not an AF_UNIX path
            return self._json(403, {"error": "actions are accepted only on the Unix socket"})
        try:
            n = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            n = -1
        if not 0 <= n <= MAX_BODY:
            return self._json(413, {"error": f"body must be 0..{MAX_BODY} bytes"})
        try:
            arg = json.loads(self.rfile.read(n) or b"{}")
            self._json(200, self.api.actions[name](arg))
        except Exception as err:
            self.api.errors += 1
            self._json(400, {"error": f"{type(err).__name__}: {err}"})


class _OneLineErrors:
    """A request's failure is one log line, not socketserver's traceback on stderr: a client that
    went away (a broken pipe, a reset) at DEBUG, anything else at ERROR."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        err = sys.exc_info()[1]
        level = logging.DEBUG if isinstance(err, OSError) else logging.ERROR
        log.log(level, "status API: a request failed: %s: %s", type(err).__name__, err)


class _TCPServer(_OneLineErrors, http.server.ThreadingHTTPServer):
    daemon_threads = True

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks the host's FQDN up (DNS): not wanted on a station.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


class _TCP6Server(_TCPServer):
    address_family = socket.AF_INET6


class _UnixServer(_OneLineErrors, socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def _claim_socket_path(path: Path) -> None:
    """Remove a stale socket file at *path*; refuse if a process answers there or it is no socket."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except OSError:
        os.unlink(path)           # nobody listens: left by a process that died
        return
    finally:
        probe.close()
    raise OSError(f"{path}: another process serves its status API there")


class StatusServer:
    """The status API on a Unix socket and/or a TCP address, one daemon thread each.

    *status*: returns the status document (called per request, on the request's thread);
    *collector*: a ``prometheus_client`` collector reading it (``ims_station/metrics.py``);
    *health*: document -> list of problems; *actions*: name -> callable(dict) -> dict, the
    ``POST /actions/<name>`` extension point (Unix socket only)."""

    def __init__(self, status: Callable[[], dict], collector: Any, health: Callable[[dict], list[str]], *,
                 actions: dict[str, Callable[[dict], dict]] | None = None, waveforms: Any = None) -> None:
        from prometheus_client import CollectorRegistry

        self.status = status
        self.health = health
        self.actions = dict(actions or {})
        # GET /waveform?channel=: an object with waveform(channel) and channels() (edge/actions.py)
        self.waveform = waveforms.waveform if waveforms is not None else None
        self.waveform_channels = waveforms.channels if waveforms is not None else list
        self.waveform_summary = waveforms.summary if waveforms is not None else dict
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        self.errors = 0
        self.socket_path: Path | None = None
        self.address: tuple[str, int] | None = None
        self._servers: list[socketserver.BaseServer] = []
        self._threads: list[threading.Thread] = []
        self._wake: tuple[int, int] | None = None       # pipe that ends the serving threads
        self._handler = type("Handler", (_Handler,), {"api": self})

    def serve_unix(self, path: str | os.PathLike[str], mode: int = SOCKET_MODE) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        _claim_socket_path(path)
        srv = _UnixServer(str(path), self._handler, bind_and_activate=False)
        try:
            # Bound with no permission for anybody but the owner, then opened to the group: no
            # moment where others could connect.
            old = os.umask(0o177)
            try:
                srv.server_bind()
            finally:
                os.umask(old)
            os.chmod(path, mode)
            srv.server_activate()
        except BaseException:
            srv.server_close()
            raise
        self.socket_path = path
        self._start(srv, "status-unix")
        return path

    def serve_tcp(self, host: str, port: int) -> tuple[str, int]:
        cls = _TCP6Server if ":" in host else _TCPServer
        srv = cls((host, port), self._handler)
        self.address = srv.server_address[:2]
        self._start(srv, f"status-tcp-{self.address[1]}")
        return self.address

    def _start(self, srv: socketserver.BaseServer, name: str) -> None:
        if self._wake is None:
            self._wake = os.pipe()
        t = threading.Thread(target=self._serve, args=(srv,), name=name, daemon=True)
        self._servers.append(srv)
        self._threads.append(t)
        t.start()

    def _serve(self, srv: Any) -> None:
        """``serve_forever`` without its periodic wake-up (a station on solar power pays for each):
        the thread sleeps in ``select`` until a client connects or :meth:`close` writes the pipe."""
        import selectors

        assert self._wake is not None
        with selectors.DefaultSelector() as sel:
            sel.register(srv, selectors.EVENT_READ)
            sel.register(self._wake[0], selectors.EVENT_READ)
            while True:
                for key, _ in sel.select():
                    if key.fileobj == self._wake[0]:
                        return
                    srv._handle_request_noblock()     # accept, then a thread per request (ThreadingMixIn)

    def close(self, timeout: float = 2.0) -> None:
        """Stop serving and remove the socket file (if it is still ours); *timeout* bounds the wait
        for the serving threads (together: a daemon's shutdown has one deadline)."""
        import time

        if self._wake is not None:
            os.write(self._wake[1], b"x")
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        for srv in self._servers:
            srv.server_close()
        if self._wake is not None:
            os.close(self._wake[0])
            os.close(self._wake[1])
            self._wake = None
        self._servers.clear()
        self._threads.clear()
        if self.socket_path is not None:
            try:
                os.unlink(self.socket_path)
            except FileNotFoundError:
                pass
            self.socket_path = None

    def __enter__(self) -> "StatusServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start(settings: StatusSettings, status: Callable[[], dict], collector: Any,
          health: Callable[[dict], list[str]], *, what: str,
          actions: dict[str, Callable[[dict], dict]] | None = None, waveforms: Any = None) -> StatusServer | None:
    """The API as *settings* configure it, or None (disabled, or nothing could be bound: logged as
    an ERROR, and the component runs on without it)."""
    if not settings.enabled:
        return None
    api = StatusServer(status, collector, health, actions=actions, waveforms=waveforms)
    if settings.socket is not None:
        try:
            api.serve_unix(settings.socket)
            log.info("%s: status API on unix:%s", what, settings.socket)
        except OSError as err:
            log.error("%s: status API not served on unix:%s: %s", what, settings.socket, err)
    if settings.listen is not None:
        try:
            host, port = api.serve_tcp(*settings.listen)
            log.info("%s: status API on http://%s:%d", what, host if ":" not in host else f"[{host}]", port)
        except OSError as err:
            log.error("%s: status API not served on %s:%d: %s", what, *settings.listen, err)
    if api.socket_path is None and api.address is None:
        api.close()
        return None
    return api


def _never_raises(fn: Callable[..., StatusServer | None]) -> Callable[..., StatusServer | None]:
    """The API is diagnostics: whatever goes wrong starting it is an ERROR line, never the end of
    the gateway or relay it reports on."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kw: Any) -> StatusServer | None:
        try:
            return fn(*args, **kw)
        except Exception as err:
            log.error("status API not started: %s: %s", type(err).__name__, err)
            return None
    return wrapper


@_never_raises
def serve_station(st: Any) -> StatusServer | None:
    """The status API of an assembled gateway (``edge/station.py`` ``Station``), per its ``[status]``."""
    from ims_station.metrics import StationCollector

    cfg = st.config
    settings = settings_from_table((getattr(cfg, "raw", None) or {}).get("status"), file=cfg.file,
                                   data_dir=cfg.data_dir)
    if not settings.enabled:
        return None
    # The console's actions and live waveform (edge/actions.py, docs/console.md); a Station-like
    # object without ports (a test double) serves the read-only routes only.
    actions = tap = None
    if hasattr(st, "gateway") and hasattr(st, "ports"):
        from ims_station.edge.actions import attach_waveform_tap, station_actions

        actions, tap = station_actions(st), attach_waveform_tap(st)
    return start(settings, st.status, StationCollector(st.status), station_health,
                 what=f"gateway {cfg.network}.{cfg.code}", actions=actions, waveforms=tap)


def relay_socket_name(instance: str) -> str:
    """The relay's default socket file in its data_dir (relay processes may share a data_dir)."""
    return f"status-{instance}.sock"


@_never_raises
def serve_relay(conf: dict, relay: Any) -> StatusServer | None:
    """The status API of a relay (``relay/cli.py`` config and :class:`~ims_station.relay.relay.Relay`)."""
    from ims_station.metrics import RelayCollector

    # Relay processes of a group may share a data_dir: one socket per instance.
    settings = settings_from_table(conf.get("status"), file=conf["file"], data_dir=conf["relay"]["data_dir"],
                                   default_socket=relay_socket_name(relay.instance))
    doc = lambda: {"instance": relay.instance, **relay.stats()}  # noqa: E731
    return start(settings, doc, RelayCollector(doc), relay_health, what=f"relay {relay.instance}")


# -- client ----------------------------------------------------------------------------------------

class StatusAPIError(ImsStationError):
    """The status API could not be reached or answered with an error."""


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self._path)
        except OSError:
            s.close()
            raise
        self.sock = s


def fetch(endpoint: str, *, socket_path: str | os.PathLike[str] | None = None, url: str | None = None,
          timeout: float = 5.0, max_bytes: int = 16 << 20) -> tuple[int, bytes]:
    """GET *endpoint* (``/status``...) from the API on *socket_path* or at *url*
    (``http://127.0.0.1:9101``): (HTTP status, body).  Raises :class:`StatusAPIError`."""
    from urllib.parse import urlsplit

    where = f"unix:{socket_path}" if socket_path is not None else str(url)
    try:
        if socket_path is not None:
            conn: http.client.HTTPConnection = _UnixHTTPConnection(str(socket_path), timeout)
        else:
            u = urlsplit(str(url))
            if u.scheme != "http" or not u.hostname:
                raise StatusAPIError(f"{url}: not an http://HOST:PORT URL")
            conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)
            endpoint = u.path.rstrip("/") + endpoint
        try:
            conn.request("GET", endpoint)
            resp = conn.getresponse()
            body = resp.read(max_bytes + 1)
        finally:
            conn.close()
    except (OSError, http.client.HTTPException) as err:
        raise StatusAPIError(f"{where}: cannot reach the status API: {err}") from None
    if len(body) > max_bytes:
        raise StatusAPIError(f"{where}: answer longer than {max_bytes} bytes")
    return resp.status, body


class StatusClient:
    """The API of one running gateway or relay, for programs (the console): ``status()``,
    ``health()``, ``metrics()`` (text) and ``action(name, arg)`` (Unix socket only)."""

    def __init__(self, *, socket_path: str | os.PathLike[str] | None = None, url: str | None = None,
                 timeout: float = 5.0) -> None:
        if (socket_path is None) == (url is None):
            raise ValueError("give exactly one of socket_path and url")
        self.socket_path, self.url, self.timeout = socket_path, url, timeout

    def _get(self, endpoint: str) -> tuple[int, bytes]:
        return fetch(endpoint, socket_path=self.socket_path, url=self.url, timeout=self.timeout)

    def _json(self, endpoint: str, ok: tuple[int, ...] = (200,)) -> dict:
        code, body = self._get(endpoint)
        try:
            doc = json.loads(body)
        except ValueError as err:
            raise StatusAPIError(f"{endpoint}: not JSON: {err}") from None
        if code not in ok or not isinstance(doc, dict):
            raise StatusAPIError(f"{endpoint} answered {code}: {body[:200].decode(errors='replace')}")
        return doc

    def status(self) -> dict:
        return self._json("/status")

    def health(self) -> dict:
        """``{"status": "ok"|"degraded", "problems": [...]}``."""
        return self._json("/health", ok=(200, 503))

    def waveform(self, channel: str | None = None) -> dict | None:
        """The last samples of *channel* (``GET /waveform?channel=``), or without a channel the
        per-channel time quality and clipping; None if the gateway serves none."""
        from urllib.parse import quote

        code, body = self._get(f"/waveform?channel={quote(channel)}" if channel else "/waveform")
        if code != 200:
            return None
        try:
            doc = json.loads(body)
        except ValueError:
            return None
        return doc if isinstance(doc, dict) else None

    def metrics(self) -> str:
        code, body = self._get("/metrics")
        if code != 200:
            raise StatusAPIError(f"/metrics answered {code}")
        return body.decode()

    def action(self, name: str, arg: dict | None = None) -> dict:
        if self.socket_path is None:
            raise StatusAPIError("actions are accepted only on the Unix socket")
        body = json.dumps(arg or {}).encode()
        conn = _UnixHTTPConnection(str(self.socket_path), self.timeout)
        try:
            conn.request("POST", f"/actions/{name}", body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read(MAX_BODY + 1)
        except (OSError, http.client.HTTPException) as err:
            raise StatusAPIError(f"unix:{self.socket_path}: cannot reach the status API: {err}") from None
        finally:
            conn.close()
        try:
            doc = json.loads(data)
        except ValueError:
            doc = None
        if resp.status != 200 or not isinstance(doc, dict):
            raise StatusAPIError(f"action {name} answered {resp.status}: {data[:200].decode(errors='replace')}")
        return doc


def query(*, socket_path: str | None = None, url: str | None = None,
          config: str | None = None) -> tuple[dict, list[str]]:
    """The status document and the health problems of a running gateway, from its socket, its
    URL, or where its station file's ``[status]`` says the API is (socket first)."""
    if socket_path is None and url is None:
        from ims_station.edge.config import load_station_config

        # Only the [status] table is needed: no key file is read (an operator may not read it).
        cfg = load_station_config(config, read_key=lambda *a, **k: None)
        s = settings_from_table(cfg.raw.get("status"), file=cfg.file, data_dir=cfg.data_dir)
        if not s.enabled:
            raise StatusAPIError(f"{config}: [status] enabled = false: the gateway serves no status API")
        if s.socket is not None:
            socket_path = str(s.socket)
        elif s.listen is not None:
            host, port = s.listen
            url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
        else:
            raise StatusAPIError(f"{config}: [status] has neither a socket nor a listen address")
    doc = StatusClient(socket_path=socket_path, url=url).status()
    return doc, station_health(doc)


def summary_lines(doc: dict, problems: list[str]) -> list[str]:
    """A short text summary of a gateway's status document (``ims-station edge status``)."""
    sta = doc.get("station", "?")
    out = [f"{sta}: {'OK' if not problems else 'DEGRADED: ' + '; '.join(problems)}"]
    for p in doc.get("ports") or []:
        c = p.get("link") or {}
        out.append(f"  port {p.get('name')} ({p.get('url')}): {'up' if p.get('connected') else 'DOWN'}  "
                   f"packets {c.get('packets_ok', 0)}  crc {c.get('crc_errors', 0)}  hmac {c.get('hmac_errors', 0)}  "
                   f"lost {c.get('packets_unrecoverable', 0)}")
        for code, s in sorted(((p.get("streams") or {}).get("channels") or {}).items()):
            out.append(f"    {code}: {s.get('rate_mhz', 0) / 1000:g} sps  samples {s.get('samples', 0)}  "
                       f"gaps {s.get('gaps', 0)}")
    f = (doc.get("gateway") or {}).get("framer") or {}
    out.append(f"  framer: frames {f.get('frames', 0)}  partial {f.get('partial_frames', 0)}  "
               f"late samples {f.get('late_samples', 0)}")
    keys = f.get("keys")
    if isinstance(keys, dict):
        days = keys.get("key_expires_in_days")
        out.append(f"  keys: {','.join(map(str, keys.get('key_ids') or [])) or '-'}  "
                   f"expire in {'-' if days is None else f'{days:.1f} d'}")
    o = doc.get("outbox") or {}
    age = o.get("oldest_age_s")
    out.append(f"  outbox: {o.get('frames', 0)} frames ({o.get('bytes', 0)} B, {100 * (o.get('fill') or 0):.1f} %)  "
               f"oldest {'-' if age is None else f'{age:.0f} s'}")
    u = doc.get("uplink")
    if u is None:
        out.append("  uplink: none configured")
    else:
        out.append(f"  uplink: {'connected' if u.get('connected') else 'DISCONNECTED'} to {u.get('broker')}  "
                   f"published {u.get('published', 0)}  acked {u.get('frames_acked', 0)}")
    return out
