"""``[relay.state]`` (relay/backend.py): checks naming file, key and reason; the docs list every key;
``tools/pg-loopback.sh`` does what docs/centre-deployment.md says."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from ims_station.config import ConfigError
from ims_station.relay.backend import SCHEMA
from ims_station.relay.cli import load_config

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, state: str) -> Path:
    f = tmp_path / "relay1.toml"
    f.write_text(f'[relay]\ndata_dir = "data"\ntrust_dir = "trust"\n{state}\n[broker]\nhost = "127.0.0.1"\n')
    return f


def secret(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_default_is_sqlite_and_postgresql_reads_the_dsn_file(tmp_path):
    assert load_config(write(tmp_path, ""))["relay"]["state_settings"] == {"backend": "sqlite"}
    secret(tmp_path / "db.dsn", "host=db1 dbname=ims_relay user=relay password=s3cret sslmode=verify-full\n")
    s = load_config(write(tmp_path, '[relay.state]\nbackend = "postgresql"\ndsn_file = "db.dsn"\n'
                                    'schema = "net1"'))["relay"]["state_settings"]
    assert s == {"backend": "postgresql", "schema": "net1", "objects_dir": str(tmp_path / "data" / "archive"),
                 "dsn": "host=db1 dbname=ims_relay user=relay password=s3cret sslmode=verify-full"}
    s = load_config(write(tmp_path, '[relay.state]\nbackend = "postgresql"\ndsn = "host=db1 user=relay"\n'
                                    'objects_dir = "/srv/objects"'))["relay"]["state_settings"]
    assert (s["dsn"], s["schema"], s["objects_dir"]) == ("host=db1 user=relay", "public", "/srv/objects")


@pytest.mark.parametrize("state, key, reason", [
    ('backend = "postgresql"', "relay.state", "exactly one of dsn or dsn_file"),
    ('backend = "postgresql"\ndsn = "host=a"\ndsn_file = "x"', "relay.state", "exactly one of dsn or dsn_file"),
    ('backend = "postgresql"\ndsn = "host=a password=x"', "relay.state.dsn", "holds a password"),
    ('backend = "postgresql"\ndsn = "postgresql://relay:pw@db1/ims"', "relay.state.dsn", "holds a password"),
    ('backend = "postgresql"\ndsn_file = "open.dsn"', "relay.state.dsn_file", "too open; run: chmod 600"),
    ('backend = "postgresql"\ndsn_file = "missing.dsn"', "relay.state.dsn_file", "file not found"),
    ('dsn = "host=a"', "relay.state.dsn", 'only for backend = "postgresql"'),
    ('backend = "mysql"', "relay.state.backend", ""),
    ('backend = "postgresql"\ndsn = "host=a"\nschema = "Bad-Name"', "relay.state.schema", ""),
    ('backend = "postgresql"\ndsn = "host=a"\nschema = "pg_relay"', "relay.state.schema", ""),
])
def test_errors_name_file_key_and_reason(tmp_path, state, key, reason):
    secret(tmp_path / "open.dsn", "host=db1 password=x\n", 0o644)
    f = write(tmp_path, "[relay.state]\n" + state)
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert e.value.file == str(f) and e.value.key == key and reason in str(e.value), str(e.value)


def test_every_key_is_documented_in_relay_md_and_configuration_md():
    for doc in ("relay.md", "configuration.md"):
        text = (ROOT / "docs" / doc).read_text()
        section = text[text.index("[relay.state]"):]
        for key in SCHEMA["properties"]:
            assert re.search(rf"^\| `{key}` \|", section, re.M), (doc, key)


def test_the_loopback_script_starts_postgresql_with_a_password_on_tcp(tmp_path):
    from tests.conftest import need_postgresql

    need_postgresql()
    import psycopg

    d = Path(f"/tmp/ims-pgl-{os.getpid()}")
    script = ROOT / "tools" / "pg-loopback.sh"

    def run(*args: str) -> str:
        r = subprocess.run([str(script), *args, "--dir", str(d)], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        return r.stdout

    try:
        out = run("start", "--fast", "--db", "bench")
        tcp = re.search(r"^tcp:\s+(.*?)\s+\(password in (\S+)\)", out, re.M)
        assert tcp and Path(tcp.group(2)).stat().st_mode & 0o077 == 0
        with psycopg.connect(f"{tcp.group(1)} password={Path(tcp.group(2)).read_text().strip()}") as con:
            assert con.execute("SELECT inet_server_addr()::text").fetchone()[0].startswith("127.0.0.1")
        with pytest.raises(psycopg.OperationalError, match="password"):   # no password, no access
            psycopg.connect(tcp.group(1), connect_timeout=5)
    finally:
        run("remove")
    assert not d.exists()
