"""Acknacks are accepted only from the relay, by name and key (issue 7 §4): a trust store that also
holds station keys must not let a station's key delete another station's frames, and settings that
cannot tell the relay's key are refused at start-up with the file, the key and the reason."""

from __future__ import annotations

import inspect

import pytest

from ims_station import cd11, topics
from ims_station.auth import Keystore, TrustStore, export_public, generate_key
from ims_station.broker import BrokerConfig
from ims_station.edge.uplink import AcknackTrustError, Uplink
from ims_station.edge.uplink_config import acknack_options, load_uplink_settings
from ims_station.errors import ConfigError

from .test_uplink import FS, STA, fill
from .test_uplink_window import connected, forged, rig  # noqa: F401  (rig is a fixture)

VALID = "2000-01-01T00:00:00Z"


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """The relay's acknack key 900 (for RELAY), STA02's station key 2, and key 3 listed for both
    RELAY and STA02.  Trust store ``mixed``: 900 and 2 (a relay that exported its station keys into
    the station's acknack trust store); ``shared``: 900 and 3; ``stations``: 2 only."""
    root = tmp_path_factory.mktemp("acknack-keys")
    ks = root / "ks"
    generate_key("ed25519", 900, ks, station="RELAY", valid_from=VALID)
    generate_key("ed25519", 2, ks, station="STA02", valid_from=VALID)
    generate_key("ed25519", 3, ks, station=["RELAY", "STA02"], valid_from=VALID)
    stores = {}
    for name, ids in (("mixed", (900, 2)), ("shared", (900, 3)), ("stations", (2,))):
        d = root / name
        d.mkdir(mode=0o755)
        for kid in ids:
            export_public(ks, kid, d)
        stores[name] = d
    return Keystore.load(ks), stores


def ack(signer=None, creator="RELAY"):
    return cd11.Acknack(creator=creator, frame_set=FS, lowest=0, highest=19).to_bytes(signer)


def test_another_stations_key_deletes_nothing_whatever_creator_it_claims(rig, clock, keys):  # noqa: F811
    """Issue 7: acknack_trust without acknack_key_ids, a trust store that also holds STA02's key:
    an acknack from creator STA02 signed with STA02's key deleted 20 frames of STA01's outbox."""
    keystore, stores = keys
    fill(rig, range(20))
    up = Uplink(STA, [BrokerConfig()], rig, clock=clock, live_window_s=0,
                acknack_trust=TrustStore.load(stores["mixed"]))
    assert up.acknack_key_ids == {900}                  # the relay's keys only, not "any key of the store"
    c = connected(up)
    up._periodic(c)
    c.puback_all(up)
    up._periodic(c)
    assert len(c.frames()) == 20 and rig.in_flight_count() == 20
    forged(up, c, ack(keystore.signer(2), creator="STA02"))    # verifies for STA02: not the relay
    forged(up, c, ack(keystore.signer(2), creator="RELAY"))    # STA02's key posing as the relay
    forged(up, c, ack(keystore.signer(900), creator="STA02"))  # the relay's key, another creator
    st = up.stats()
    assert (st["acknacks_bad_signature"], st["acknacks"], st["frames_acked"]) == (3, 0, 0)
    assert rig.stats()["frames"] == 20
    forged(up, c, ack(keystore.signer(900)))                   # the relay itself
    assert rig.stats()["frames"] == 0 and up.stats()["frames_acked"] == 20


def test_a_relay_with_another_name_is_named_and_only_that_name_is_accepted(rig, clock, tmp_path):  # noqa: F811
    generate_key("ed25519", 901, tmp_path / "ks", station="IDC", valid_from=VALID)
    (tmp_path / "trust").mkdir(mode=0o755)
    export_public(tmp_path / "ks", 901, tmp_path / "trust")
    signer = Keystore.load(tmp_path / "ks").signer(901)
    trust = TrustStore.load(tmp_path / "trust")
    with pytest.raises(AcknackTrustError, match="'RELAY'"):   # default name: no key of the store is for it
        Uplink(STA, [BrokerConfig()], rig, clock=clock, acknack_trust=trust)
    fill(rig, range(20))
    up = Uplink(STA, [BrokerConfig()], rig, clock=clock, live_window_s=0, acknack_trust=trust, relay_name="IDC")
    c = connected(up)
    up._periodic(c)
    c.puback_all(up)
    forged(up, c, ack(signer, creator="RELAY"))
    assert rig.stats()["frames"] == 20 and up.stats()["acknacks_bad_signature"] == 1
    forged(up, c, ack(signer, creator="IDC"))
    assert rig.stats()["frames"] == 0


@pytest.mark.parametrize("store, key_ids, match", [
    ("shared", None, "also for STA02"),          # the key STA02 holds is "the relay's" too
    ("shared", [3], "also for STA02"),
    ("stations", None, "no key in trust store"),
    ("mixed", [2], "not the relay's"),           # pinned, but it is STA02's key
    ("mixed", [7], "not in trust store"),
])
def test_trust_settings_that_cannot_tell_the_relays_key_are_refused(rig, clock, keys, store, key_ids,  # noqa: F811
                                                                    match):
    _, stores = keys
    with pytest.raises(AcknackTrustError, match=match):
        Uplink(STA, [BrokerConfig()], rig, clock=clock, acknack_trust=TrustStore.load(stores[store]),
               acknack_key_ids=key_ids)


@pytest.mark.parametrize("store, extra, key, reason", [
    ("stations", "", "uplink.acknack_trust", "'RELAY'"),
    ("shared", "", "uplink.acknack_trust", "also for STA02"),
    ("mixed", "acknack_key_ids = [2]\n", "uplink.acknack_key_ids", "not the relay's"),
    ("mixed", 'relay_name = "IDC"\n', "uplink.acknack_trust", "'IDC'"),
])
def test_config_errors_name_the_file_the_key_and_why(tmp_path, keys, store, extra, key, reason):
    _, stores = keys
    f = tmp_path / "uplink.toml"
    f.write_text(f'[uplink]\nacknack_trust = "{stores[store]}"\n{extra}[[uplink.brokers]]\nhost = "h"\n')
    with pytest.raises(ConfigError) as ei:
        acknack_options(load_uplink_settings(f))
    assert (ei.value.file, ei.value.key) == (str(f), key) and reason in ei.value.reason, str(ei.value)


def test_config_resolves_the_relays_keys_and_name(tmp_path, keys):
    _, stores = keys
    f = tmp_path / "uplink.toml"
    f.write_text(f'[uplink]\nacknack_trust = "{stores["mixed"]}"\n[[uplink.brokers]]\nhost = "h"\n')
    opts = acknack_options(load_uplink_settings(f))
    assert opts["relay_name"] == "RELAY" and opts["acknack_key_ids"] is None
    f.write_text('[uplink]\nrelay_name = "IDC"\n[[uplink.brokers]]\nhost = "h"\n')
    with pytest.raises(ConfigError) as ei:               # a name without a trust store means nothing
        load_uplink_settings(f)
    assert ei.value.key == "uplink.relay_name" and "no acknack_trust" in ei.value.reason


def test_the_stations_default_relay_name_is_the_relays_default_name():
    from ims_station.relay.core import RelayCore

    assert inspect.signature(RelayCore).parameters["name"].default == topics.DEFAULT_RELAY_NAME
