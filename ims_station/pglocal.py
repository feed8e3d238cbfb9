"""A throwaway PostgreSQL cluster on loopback: for the tests, the benchmarks and ``tools/pg-loopback.sh``.

Owns starting, restarting and removing a private PostgreSQL server from the Debian binaries
(``/usr/lib/postgresql/<version>/bin``: ``initdb``, ``pg_ctl``), never the system's service on 5432:
its own data directory, a free port on 127.0.0.1 and a Unix socket in its own directory.  It does
not own what the relay stores in it (``relay.pgstore``) nor a production deployment
(docs/centre-deployment.md, "PostgreSQL").

* ``initdb`` refuses to run as root: as root, the cluster's commands run as the ``postgres`` user
  of Debian's package (``runuser -u postgres``), and the cluster directory is made theirs.
* Authentication: ``trust`` on the Unix socket only (the socket's directory is mode 0700, owned by
  the cluster's user, so only that user and root reach it), ``scram-sha-256`` on TCP loopback with a
  random password written to ``<dir>/password`` (mode 0600): no default credential.
* ``fast=True`` (the tests): ``fsync=off`` -- the tests restart the server cleanly (``pg_ctl
  restart -m fast`` flushes everything) and never test PostgreSQL's own crash safety; a benchmark
  or a soak run uses ``fast=False``.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from ims_station.errors import ImsStationError


class PgLocalError(ImsStationError):
    """The local PostgreSQL cluster could not be created or started."""


def bin_dir() -> Path:
    """The newest ``/usr/lib/postgresql/*/bin`` holding ``initdb`` (Debian's ``postgresql`` package)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    raise PgLocalError("PostgreSQL server binaries not found (no /usr/lib/postgresql/*/bin/initdb): "
                       "install them with `apt-get install postgresql` (./run tests does)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgCluster:
    """One private PostgreSQL server.  ``start()``, ``dsn(dbname)``, ``restart()``, ``stop()``, ``remove()``."""

    def __init__(self, root: str | Path | None = None, *, port: int | None = None, fast: bool = False) -> None:
        # The socket path must stay short (sun_path: 107 bytes) and the directory reachable by the
        # cluster's user: a fresh directory under /tmp, not pytest's root-only tmp_path.
        self.root = Path(root) if root else Path(tempfile.mkdtemp(prefix="ims-pg-"))
        self.data = self.root / "data"
        self.sock = self.root / "sock"
        self.port = port or free_port()
        self.fast = fast
        self.bin = bin_dir()
        self.user = "postgres" if os.geteuid() == 0 else None   # run as; None: ourselves
        self.password_file = self.root / "password"

    # -- running commands as the cluster's user ------------------------------------------------------
    def _cmd(self, *args: str) -> list[str]:
        return (["runuser", "-u", self.user, "--"] if self.user else []) + list(args)

    def _run(self, *args: str, timeout: float = 60.0) -> None:
        r = subprocess.run(self._cmd(*args), capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise PgLocalError(f"{' '.join(args[:2])} failed ({r.returncode}): {(r.stderr or r.stdout).strip()[-2000:]}")

    def _chown(self, p: Path) -> None:
        if self.user:
            shutil.chown(p, self.user, self.user)

    # -- life cycle ---------------------------------------------------------------------------------
    def start(self) -> "PgCluster":
        self.root.mkdir(parents=True, exist_ok=True)
        self._chown(self.root)
        if not (self.data / "PG_VERSION").exists():
            self.sock.mkdir(mode=0o700, exist_ok=True)
            self._chown(self.sock)
            password = secrets.token_urlsafe(24)
            pwfile = self.root / "initdb.pw"
            pwfile.write_text(password + "\n")
            os.chmod(pwfile, 0o600)
            self._chown(pwfile)
            try:
                self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-E", "UTF8",
                          "--locale=C", "--auth-local=trust", "--auth-host=scram-sha-256",
                          f"--pwfile={pwfile}", "--no-instructions")
            finally:
                pwfile.unlink(missing_ok=True)
            self.password_file.write_text(password + "\n")
            os.chmod(self.password_file, 0o600)
            conf = [f"port = {self.port}", "listen_addresses = '127.0.0.1'",
                    f"unix_socket_directories = '{self.sock}'", "max_connections = 200",
                    "shared_buffers = 32MB"]
            if self.fast:
                conf += ["fsync = off", "full_page_writes = off", "synchronous_commit = off"]
            with open(self.data / "postgresql.conf", "a") as fh:
                fh.write("\n# ims_station.pglocal\n" + "\n".join(conf) + "\n")
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "server.log"),
                  "-w", "-t", "60", "start")
        return self

    def stop(self, mode: str = "fast") -> None:
        if (self.data / "postmaster.pid").exists():
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def restart(self, mode: str = "fast") -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "server.log"),
                  "-m", mode, "-w", "-t", "60", "restart")

    def remove(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "PgCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.remove()

    # -- connecting ---------------------------------------------------------------------------------
    def dsn(self, dbname: str = "postgres", *, tcp: bool = False) -> str:
        """A libpq connection string: over the Unix socket (trust), or with *tcp* over loopback
        with the password from :attr:`password_file` (``passfile`` is not used: libpq wants the
        password inline or in ~/.pgpass; the relay's ``dsn_file`` keeps it in a file instead)."""
        if tcp:
            pw = self.password_file.read_text().strip()
            return f"host=127.0.0.1 port={self.port} dbname={dbname} user=postgres password={pw}"
        return f"host={self.sock} port={self.port} dbname={dbname} user=postgres"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.dsn(), autocommit=True) as con:
            con.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)


def main(argv: list[str] | None = None) -> int:
    """``python -m ims_station.pglocal [--dir D] [--port N] [--fast] start|stop|restart|remove|dsn``
    (``tools/pg-loopback.sh``)."""
    import argparse

    p = argparse.ArgumentParser(prog="pg-loopback", description="a private PostgreSQL on loopback "
                                "(tests, benchmarks); prints its connection strings")
    p.add_argument("action", choices=["start", "stop", "restart", "remove", "dsn"])
    p.add_argument("--dir", default=os.environ.get("IMS_PG_DIR", "/tmp/ims-pg-loopback"),
                   help="cluster directory (data/, sock/, password); default %(default)s")
    p.add_argument("--port", type=int, default=None, help="TCP port on 127.0.0.1 (default: a free one, "
                   "remembered in DIR/port)")
    p.add_argument("--fast", action="store_true", help="fsync=off (throwaway data only)")
    p.add_argument("--db", default="ims_relay", help="database to create on start (default %(default)s)")
    a = p.parse_args(argv)
    root = Path(a.dir)
    port_file = root / "port"
    port = a.port or (int(port_file.read_text()) if port_file.exists() else None)
    try:
        c = PgCluster(root, port=port, fast=a.fast)
        if a.action == "start":
            new = not (c.data / "PG_VERSION").exists()
            c.start()
            port_file.write_text(f"{c.port}\n")
            if new:
                c.create_database(a.db)
        elif a.action == "stop":
            c.stop()
        elif a.action == "restart":
            c.restart()
        elif a.action == "remove":
            c.remove()
            return 0
        print(f"socket: {c.dsn(a.db)}")
        print(f"tcp:    host=127.0.0.1 port={c.port} dbname={a.db} user=postgres  (password in {c.password_file})")
    except (PgLocalError, OSError, subprocess.SubprocessError) as err:
        print(f"pg-loopback: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
