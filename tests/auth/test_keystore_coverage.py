""":meth:`Keystore.coverage`: which key signs a station's frames now and until when the keystore can
sign for it without a gap (the figure behind ``key_expires_in_days``), and the start-up errors
that name the key file to look at."""

from __future__ import annotations

import datetime as dt

import pytest

from ims_station.auth import Keystore, generate_key
from ims_station.errors import ConfigError

UTC = dt.timezone.utc
STA = "STA01"


def t(year, month=1, day=1):
    return dt.datetime(year, month, day, tzinfo=UTC)


def make(tmp_path, *keys):
    """Keystore with keys (key_id, valid_from, valid_until or None[, station])."""
    d = tmp_path / "keys"
    d.mkdir(exist_ok=True)
    for key_id, start, end, *station in keys:
        generate_key("ed25519", key_id, d, station=station[0] if station else STA, valid_from=start,
                     valid_until=end)
    return Keystore.load(d)


def test_a_chain_of_overlapping_keys_covers_to_the_last_one(tmp_path):
    ks = make(tmp_path, (1, t(2024), t(2025)), (2, t(2024, 12), t(2026)), (3, t(2025, 6), t(2027)),
              (4, t(2020), None, "STA02"))
    cov = ks.coverage(STA, t(2024, 6))
    assert (cov.station, cov.current.key_id, cov.until, cov.last.key_id) == (STA, 1, t(2027), 3)
    assert cov.expires_in_days(t(2026, 12, 2)) == pytest.approx(30.0)
    cov = ks.coverage(STA, dt.datetime(2025, 3, 1))           # naive = UTC
    assert (cov.current.key_id, cov.until, cov.last.key_id) == (2, t(2027), 3)


def test_a_gap_ends_the_coverage(tmp_path):
    ks = make(tmp_path, (1, t(2024), t(2025)), (2, t(2025, 2), None))
    cov = ks.coverage(STA, t(2024, 6))
    assert (cov.current.key_id, cov.until, cov.last.key_id) == (1, t(2025), 1)


def test_of_several_successors_the_longest_is_followed(tmp_path):
    ks = make(tmp_path, (1, t(2024), t(2025)), (2, t(2024, 6), t(2025, 6)), (3, t(2024, 7), t(2026)),
              (4, t(2024, 8), t(2025, 3)))
    cov = ks.coverage(STA, t(2024, 2))
    assert (cov.current.key_id, cov.until, cov.last.key_id) == (1, t(2026), 3)
    ks = make(tmp_path, (5, t(2024, 9), None, "STA02"), (6, t(2024), t(2025), "STA02"),
              (7, t(2024, 10), t(2030), "STA02"))
    cov = ks.coverage("STA02", t(2024, 2))
    assert (cov.current.key_id, cov.until, cov.last.key_id) == (6, None, 5)
    assert cov.expires_in_days(t(2024, 2)) is None


def test_default_time_is_now(tmp_path):
    ks = make(tmp_path, (1, t(2020), None))
    cov = ks.coverage(STA)
    assert (cov.current.key_id, cov.until, cov.last.key_id) == (1, None, 1)


def test_a_station_without_keys(tmp_path):
    ks = make(tmp_path, (1, t(2020), None), (2, t(2020), None))
    with pytest.raises(ConfigError) as info:
        ks.coverage("STA09", t(2024))
    assert (info.value.file, info.value.key) == (str(tmp_path / "keys"), "")
    assert info.value.reason == "no key lists station 'STA09' (keys: [1, 2]); generate one (docs/keys.md)"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError) as info:
        Keystore.load(tmp_path / "empty").coverage(STA, t(2024))
    assert info.value.reason == "no key lists station 'STA01' (keys: none); generate one (docs/keys.md)"


def test_no_key_valid_at_the_time_names_the_key_that_expired_last(tmp_path):
    ks = make(tmp_path, (1, t(2023), t(2024)), (2, t(2024), t(2025)), (3, t(2026), None),
              (4, t(2020), None, "STA02"))
    with pytest.raises(ConfigError) as info:
        ks.coverage(STA, t(2025, 6))
    assert (info.value.file, info.value.key) == (str(tmp_path / "keys" / "2.toml"), "valid_until")
    assert info.value.reason == ("key 2 expired at 2025-01-01T00:00:00Z and no key for station 'STA01' is "
                                 "valid now (2025-06-01T00:00:00Z): generate and export the next key "
                                 "(docs/keys.md, Rotation)")
    with pytest.raises(ConfigError) as info:
        ks.coverage(STA, t(2022, 6))
    assert (info.value.file, info.value.key) == (str(tmp_path / "keys" / "1.toml"), "valid_from")
    assert info.value.reason == ("key 1 is not valid before 2023-01-01T00:00:00Z and no key for station "
                                 "'STA01' is valid now (2022-06-01T00:00:00Z)")
