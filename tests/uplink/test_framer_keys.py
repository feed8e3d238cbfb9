"""The framer signs with the key the keystore holds for the frame's nominal time (docs/keys.md,
"Rotation"): frame and subframe keys switch at the next key's ``valid_from`` without a restart, a
station without a key valid now does not start, a key about to run out is a WARNING and a SOH field,
and a frame for whose time no key is valid is committed unsigned with an alarm (never lost)."""

from __future__ import annotations

import datetime as dt
import logging

import numpy as np
import pytest

from ims_station import cd11
from ims_station.auth import Keystore, TrustStore, export_public, generate_key
from ims_station.clock import FakeClock
from ims_station.edge.framer import ChannelSpec, Framer
from ims_station.edge.outbox import Outbox
from ims_station.edge.station import Gateway
from ims_station.edge.streams import Chunk
from ims_station.errors import ConfigError
from ims_station.firmware import link

STA = "STA01"
CODES = ("XX.STA01.00.BHZ", "XX.STA01.00.BHN")
RATE = 40_000
UTC = dt.timezone.utc
SWITCH = 1_700_000_000                  # a window boundary (multiple of 10 s since 2000)


def iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def rotated_keys(tmp_path, switch=SWITCH, *, old_until=True):
    """Key 1 valid until *switch* (in keystore and trust store), key 2 from *switch* on."""
    ks, trust = tmp_path / "keys", tmp_path / "trust"
    generate_key("ed25519", 1, ks, station=STA, valid_from="2020-01-01T00:00:00Z",
                 valid_until=iso(switch) if old_until else None)
    export_public(ks, 1, trust, valid_until=iso(switch))
    generate_key("ecdsa-p256", 2, ks, station=STA, valid_from=iso(switch))
    export_public(ks, 2, trust)
    return ks, trust


def chunk(t_us, n, base=0):
    samples = np.vstack([np.arange(base, base + n, dtype=np.int32) * (k + 1) for k in range(len(CODES))])
    return Chunk(STA, CODES, t_us, RATE, samples, link.TQ_LOCKED, 0, 0, True)


def make(tmp_path, clock, ks, **kw):
    box = Outbox(tmp_path / "outbox.sqlite", max_bytes=1 << 30, max_age_s=1e12, clock=clock)
    return box, Framer(STA, box, clock=clock, channels=[ChannelSpec(c) for c in CODES],
                       keystore=Keystore.load(ks), **kw)


def frames_in(box):
    return [cd11.parse_frame(i.payload)[0] for i in box.next_to_send(10_000, live_window_s=1e12)]


def feed(fr, clock, t0, seconds):
    for k in range(seconds):
        clock.t = t0 + k + 1
        fr.add_chunk(chunk(int((t0 + k) * 1e6), 40, base=40 * k))


def test_frame_and_subframe_keys_switch_at_valid_from_without_a_restart(tmp_path):
    ks, trust = rotated_keys(tmp_path)
    clock = FakeClock(t=SWITCH - 30)
    box, fr = make(tmp_path, clock, ks)
    feed(fr, clock, SWITCH - 30, 61)                  # 3 windows before the switch, 3 after
    frames = frames_in(box)
    assert len(frames) == 6
    store = TrustStore.load(trust)
    for f in frames:
        before = f.sequence < cd11.sequence_from_time(float(SWITCH))
        want = 1 if before else 2
        assert f.auth_key_id == want, (f.nominal_time, f.auth_key_id)
        assert [sf.auth_key_id for sf in f.subframes] == [want, want]
        assert cd11.verify_frame(f, store).failures() == []


def test_a_backlog_frame_keeps_the_key_of_its_own_time(tmp_path):
    """After the switch, a window from before it (board ring backlog) is signed with the old key:
    the relay accepts a frame by the key valid at its nominal time."""
    ks, trust = rotated_keys(tmp_path)
    clock = FakeClock(t=SWITCH + 3600)
    box, fr = make(tmp_path, clock, ks)
    feed(fr, clock, SWITCH - 20, 10)
    clock.t = SWITCH + 3600
    clock.advance(60)
    fr.poll()
    (f,) = frames_in(box)
    assert f.auth_key_id == 1 and cd11.verify_frame(f, TrustStore.load(trust)).failures() == []


def test_no_key_valid_now_is_a_start_up_error_naming_the_key_file(tmp_path):
    ks, _ = rotated_keys(tmp_path)
    (ks / "2.pem").unlink()
    (ks / "2.toml").unlink()                          # only the expired key 1 is left
    with pytest.raises(ConfigError, match=r"1\.toml: valid_until: key 1 expired at .* no key for station 'STA01'"):
        make(tmp_path, FakeClock(t=SWITCH + 10), ks)
    with pytest.raises(ConfigError, match=r"2\.toml: valid_from: key 2 is not valid before"):
        ks2, _ = rotated_keys(tmp_path / "b")
        (ks2 / "1.pem").unlink()
        (ks2 / "1.toml").unlink()
        make(tmp_path / "b", FakeClock(t=SWITCH - 10), ks2)
    # A pinned key is checked the same way.
    ks3, _ = rotated_keys(tmp_path / "c")
    with pytest.raises(ConfigError, match=r"1\.toml: valid_until: key 1 expired"):
        make(tmp_path / "c", FakeClock(t=SWITCH + 10), ks3, station_key_id=1)


def test_a_key_expiring_within_30_days_is_a_warning_and_a_soh_field(tmp_path, caplog):
    ks, _ = rotated_keys(tmp_path)
    (ks / "2.pem").unlink()
    (ks / "2.toml").unlink()
    clock = FakeClock(t=SWITCH - 10 * 86400)
    with caplog.at_level(logging.WARNING, "ims_station.edge.framer"):
        box, fr = make(tmp_path, clock, ks)
    assert any("signing key 1" in r.message and "expires in 10.0 days" in r.message for r in caplog.records)
    gw = Gateway(f"XX.{STA}", fr)
    keys = gw.stats()["framer"]["keys"]               # what the SOH document carries
    assert keys["key_expires_in_days"] == pytest.approx(10.0) and keys["key_ids"] == [1]


def test_a_successor_key_means_no_warning(tmp_path, caplog):
    ks, _ = rotated_keys(tmp_path)
    clock = FakeClock(t=SWITCH - 10 * 86400)
    with caplog.at_level(logging.WARNING, "ims_station.edge.framer"):
        box, fr = make(tmp_path, clock, ks)
    assert not any("expires in" in r.message for r in caplog.records)
    assert fr.stats()["keys"]["key_expires_in_days"] is None


def test_frames_after_the_last_key_ended_are_committed_unsigned_with_an_alarm(tmp_path):
    ks, _ = rotated_keys(tmp_path)
    (ks / "2.pem").unlink()
    (ks / "2.toml").unlink()
    alarms = []
    clock = FakeClock(t=SWITCH - 20)
    box, fr = make(tmp_path, clock, ks, on_alarm=alarms.append)
    feed(fr, clock, SWITCH - 20, 41)
    frames = frames_in(box)
    assert [f.auth_key_id for f in frames] == [1, 1, 0, 0]
    assert [sf.auth_key_id for sf in frames[-1].subframes] == [0, 0]
    assert fr.stats()["unsigned_frames"] == 2
    assert [a["alarm"] for a in alarms] == ["no_signing_key"]      # one per episode


def test_edge_run_refuses_to_start_with_an_expired_key_and_names_the_file(tmp_path, capsys):
    from ims_station.cli import main
    from ims_station.config import write_secret_file

    ks, _ = rotated_keys(tmp_path, switch=int(dt.datetime.now(UTC).timestamp()) - 86400)
    (ks / "2.pem").unlink()
    (ks / "2.toml").unlink()
    write_secret_file(tmp_path / "board.key", bytes(range(32)))
    station = tmp_path / "station.toml"
    station.write_text(f'[station]\ncode = "{STA}"\nnetwork = "XX"\ndata_dir = "{tmp_path / "data"}"\n\n'
                       f'[[ports]]\nurl = "loop://"\nkey_file = "board.key"\n\n[keys]\nkeystore = "keys"\n')
    assert main(["edge", "run", "--config", str(station), "--seconds", "0.2"]) == 2
    err = capsys.readouterr().err
    assert f"{ks / '1.toml'}: valid_until: key 1 expired at" in err and "no key for station 'STA01'" in err
