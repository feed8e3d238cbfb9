"""Fixtures of the relay tests: keys for two stations, a frame factory, a settable clock.

Keys: Ed25519 (fast to generate and verify) for stations STA01 and STA02, frame key and one channel
key each, exported into one trust store as the data centre would hold them.  Frames are built with
the codec's ``build_data_frame`` exactly as the edge does, sequence numbers derived from the nominal
time (frames of 10 s since 2000-01-01).  The clock is :class:`ims_station.clock.FakeClock`; the
MQTT tests get a throw-away broker from :class:`ims_station.broker.MosquittoBroker`, as the uplink and
integration tests do.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from ims_station.clock import FakeClock

EPOCH_2000 = datetime(2000, 1, 1, tzinfo=timezone.utc)
# Stations' keys: (frame key id, channel key id)
KEY_IDS = {"STA01": (101, 102), "STA02": (201, 202)}


@dataclass
class Keys:
    keystore: object
    trust: object
    trust_dir: Path


@pytest.fixture(scope="session")
def keys(tmp_path_factory) -> Keys:
    from ims_station.auth import Keystore, TrustStore, export_public, generate_key

    ks = tmp_path_factory.mktemp("keystore")
    tr = tmp_path_factory.mktemp("trust")
    for station, ids in KEY_IDS.items():
        for kid in ids:
            generate_key("ed25519", kid, ks, station=station, valid_from="2000-01-01T00:00:00Z")
            export_public(ks, kid, tr)
    return Keys(Keystore.load(ks), TrustStore.load(tr), tr)


def nominal_of(seq: int) -> datetime:
    return EPOCH_2000 + timedelta(seconds=10 * seq)


class FrameFactory:
    """Builds signed 10-s data frames for a station; samples are a seeded function of (seq, chan)."""

    def __init__(self, keys: Keys, station: str = "STA01", channels=("BHZ", "BHN", "BHE"), rate=40.0) -> None:
        self.keys = keys
        self.station = station
        self.channels = channels
        self.rate = rate

    def samples(self, seq: int, ci: int) -> np.ndarray:
        rng = np.random.default_rng(seq * 1000 + ci)
        n = int(10 * self.rate)
        return np.cumsum(rng.integers(-200, 200, n)).astype(np.int32)

    def build(self, seq: int, *, station: str | None = None, creator: str | None = None,
              frame_key: str | None = None, channel_key: str | None = None, nominal_seq: int | None = None,
              sign: bool = True) -> bytes:
        from ims_station import cd11

        station = station or self.station
        fk, ck = KEY_IDS[frame_key or station][0], KEY_IDS[channel_key or station][1]
        t = nominal_of(seq if nominal_seq is None else nominal_seq)
        ks = self.keys.keystore
        chans = [cd11.ChannelInput(station, ch, "00", self.samples(seq if nominal_seq is None else nominal_seq, i),
                                   self.rate, t, None, ks.signer(ck) if sign else None)
                 for i, ch in enumerate(self.channels)]
        return cd11.build_data_frame(station, seq, t, chans, ks.signer(fk) if sign else None,
                                     creator=creator)


@pytest.fixture
def factory(keys) -> FrameFactory:
    return FrameFactory(keys)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# -- one suite, two backends -------------------------------------------------------------------------
# The relay's state store and archive come from the ``stores`` fixture, parametrized over the
# embedded SQLite default (``SqliteStateStore``, ``FileArchive``) and PostgreSQL (``PgStateStore``,
# ``PgArchive``, relay/pgstore.py), so the same tests run against both.  PostgreSQL is one
# throwaway cluster per test session (ims_station.pglocal: a free port on loopback, its socket in
# a private directory, as the ``postgres`` user when we are root); the stores of one folder (a
# relay's data_dir: ``state.sqlite``, ``archive/``) map to one schema of their own, so every test
# starts empty and two stores opened on one path share their data, exactly like two SQLite
# connections to one file; the archive's objects go under the archive's path.
BACKENDS = ("sqlite", "postgresql")
#: The fuzz tests aim at the verifier and the poison-message boundary; the store calls they reach are
#: the core's, which run on both backends anyway.  On PostgreSQL they add ~25 s, so by default they
#: run on SQLite only; IMS_TEST_FUZZ_ALL_BACKENDS=1 runs them on both (run it after changing
#: relay/pgstore.py or relay/archive.py; docs/relay.md, "State in PostgreSQL").
FUZZ_BACKENDS = BACKENDS if os.environ.get("IMS_TEST_FUZZ_ALL_BACKENDS") else ("sqlite",)


@pytest.fixture(scope="session")
def pg_cluster():
    from ims_station.pglocal import PgCluster
    from tests.conftest import need_postgresql

    need_postgresql()
    cluster = PgCluster(fast=True).start()
    try:
        yield cluster, cluster.create_database("relay_tests")
    finally:
        cluster.remove()


class Stores:
    """State store and archive factories of one backend, keyed by a path like the SQLite ones."""

    def __init__(self, backend: str, dsn: str | None = None, cluster=None) -> None:
        self.backend = backend
        self.dsn = dsn
        self.cluster = cluster

    @property
    def pg(self) -> bool:
        return self.backend == "postgresql"

    @staticmethod
    def schema(path) -> str:
        """The schema of the stores at *path* (a state file or an archive root): its folder's."""
        import hashlib

        return "t_" + hashlib.blake2b(str(Path(path).absolute().parent).encode(), digest_size=8).hexdigest()

    def index_db(self, root):
        """A read-only connection to the archive index at *root* (``relay.status``, ``relay.kpi``)."""
        if self.pg:
            from ims_station.relay.pgstore import connect_reader

            return connect_reader(self.dsn, schema=self.schema(root))
        from ims_station.relay.status import connect_ro

        return connect_ro(Path(root) / "index.sqlite")

    def state_db(self, path):
        """A read-only connection to the state store at *path*."""
        if self.pg:
            from ims_station.relay.pgstore import connect_reader

            return connect_reader(self.dsn, schema=self.schema(path))
        from ims_station.relay.status import connect_ro

        return connect_ro(Path(path))

    def copy(self, src, dst) -> None:
        """Copy a relay data dir *src* (its files; with PostgreSQL also its schema) to *dst*."""
        import shutil

        shutil.copytree(src, dst)
        if self.pg:
            import psycopg

            a, b = self.schema(Path(src) / "x"), self.schema(Path(dst) / "x")
            with psycopg.connect(self.dsn, autocommit=True) as con:
                con.execute(f"CREATE SCHEMA {b}")
                for (t,) in con.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s", (a,)).fetchall():
                    con.execute(f"CREATE TABLE {b}.{t} (LIKE {a}.{t} INCLUDING ALL)")
                    con.execute(f"INSERT INTO {b}.{t} SELECT * FROM {a}.{t}")

    def state(self, path):
        if self.pg:
            from ims_station.relay.pgstore import PgStateStore

            return PgStateStore(self.dsn, schema=self.schema(path))
        from ims_station.relay.state import SqliteStateStore

        return SqliteStateStore(path)

    def archive(self, root, **kw):
        if self.pg:
            from ims_station.relay.pgstore import PgArchive

            return PgArchive(self.dsn, root, schema=self.schema(root), **kw)
        from ims_station.relay.archive import FileArchive

        return FileArchive(root, **kw)

    def cli(self, root) -> list[str]:
        """The command-line arguments naming the archive at *root* for ``relay events``, ``relay
        ims2``, ``relay export``...: ``--archive ROOT`` (SQLite), or ``--config`` a relay config
        whose ``[relay.state]`` names the PostgreSQL index (DSN in a mode-0600 ``dsn_file``)."""
        if not self.pg:
            return ["--archive", str(root)]
        return self.data_args(Path(root).parent)

    def data_args(self, data) -> list[str]:
        """``--data-dir DATA`` (``relay status``, ``relay kpi``), or with PostgreSQL ``--config``."""
        if not self.pg:
            return ["--data-dir", str(data)]
        data = Path(data)
        cfg = data.parent / f"{data.name}-pg.toml"
        cfg.write_text(f'[relay]\ndata_dir = "{data}"\ntrust_dir = "{data}"\n{self.state_toml(data)}'
                       f'[broker]\nhost = "127.0.0.1"\n')
        return ["--config", str(cfg)]

    def state_toml(self, data) -> str:
        """The ``[relay.state]`` table of a relay config for data_dir *data* ("" for SQLite)."""
        if not self.pg:
            return ""
        data = Path(data)
        dsn_file = data.parent / f"{data.name}-db.dsn"
        dsn_file.write_text(self.dsn + "\n")
        dsn_file.chmod(0o600)
        return (f'[relay.state]\nbackend = "postgresql"\ndsn_file = "{dsn_file}"\n'
                f'schema = "{self.schema(data / "archive")}"\n')

    def state_code(self, path) -> str:
        """Python source that opens the same state store in a child process."""
        if self.pg:
            return (f"__import__('ims_station.relay.pgstore', fromlist=['x']).PgStateStore("
                    f"{self.dsn!r}, schema={self.schema(path)!r})")
        return f"__import__('ims_station.relay.state', fromlist=['x']).SqliteStateStore({str(path)!r})"

    def archive_code(self, root) -> str:
        """Python source that opens the same archive in a child process."""
        if self.pg:
            return (f"__import__('ims_station.relay.pgstore', fromlist=['x']).PgArchive("
                    f"{self.dsn!r}, {str(root)!r}, schema={self.schema(root)!r})")
        return f"__import__('ims_station.relay.archive', fromlist=['x']).FileArchive({str(root)!r})"


@pytest.fixture(params=BACKENDS)
def stores(request) -> Stores:
    if request.param == "postgresql":
        cluster, dsn = request.getfixturevalue("pg_cluster")
        return Stores("postgresql", dsn, cluster)
    return Stores("sqlite")
