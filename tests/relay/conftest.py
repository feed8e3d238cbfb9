"""Fixtures of the relay tests: keys for two stations, a frame factory, a settable clock.

Keys: Ed25519 (fast to generate and verify) for stations STA01 and STA02, frame key and one channel
key each, exported into one trust store as the data centre would hold them.  Frames are built with
the codec's ``build_data_frame`` exactly as the edge does, sequence numbers derived from the nominal
time (frames of 10 s since 2000-01-01).  The clock is :class:`ims_station.clock.FakeClock`; the
MQTT tests get a throw-away broker from :class:`ims_station.broker.MosquittoBroker`, as the uplink and
integration tests do.
"""

from __future__ import annotations

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
