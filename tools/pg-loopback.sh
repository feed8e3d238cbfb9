#!/usr/bin/env bash
# A private PostgreSQL on loopback for tests and benchmarks (never the system service on 5432):
#   tools/pg-loopback.sh start [--dir D] [--port N] [--fast] [--db NAME]   init (once) and start; prints the DSNs
#   tools/pg-loopback.sh stop | restart | dsn | remove [--dir D]
# Data, socket and the generated superuser password (mode 0600) live in D (default
# /tmp/ims-pg-loopback, or $IMS_PG_DIR); TCP listens on 127.0.0.1 only (scram-sha-256), the Unix
# socket in D/sock (trust, directory mode 0700). As root the server runs as Debian's `postgres`
# user (initdb refuses root). Needs Debian's postgresql package (./run tests installs it) and
# psycopg (the project's test or postgres extra). Implementation: ims_station/pglocal.py;
# operating PostgreSQL for a real centre: docs/centre-deployment.md, "PostgreSQL".
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
exec "$PY" -m ims_station.pglocal "$@"
