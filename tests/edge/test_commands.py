"""The relay's window requests to an auxiliary station (edge/commands.py, relay/request.py): only the
relay's signed, fresh, new, bounded commands are obeyed; every answer is signed by the station and
names what is missing and why; nothing a message contains makes the handler raise."""

from __future__ import annotations

import datetime as dt
import json
import random

import pytest

from ims_station import envelope
from ims_station.auth import Keystore, TrustStore, export_public, generate_key
from ims_station.clock import FakeClock
from ims_station.edge.commands import (
    EPOCH_2000,
    CommandCore,
    CommandHandler,
    iso,
    missing_spans,
    parse_time,
)
from ims_station.edge.outbox import Outbox
from ims_station.relay.request import check_response, make_command

STA, RELAY, FS = "AUX1", "IDC", "AUX1:0"
T0 = 1_700_000_000.0                     # FakeClock's default time; on a 10-s boundary


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    root = tmp_path_factory.mktemp("keys")
    start = dt.datetime(2023, 1, 1, tzinfo=dt.timezone.utc)
    generate_key("ed25519", 900, root / "relay", station=RELAY, valid_from=start)     # the relay's
    generate_key("ed25519", 902, root / "forger", station=RELAY, valid_from=start)    # not trusted
    generate_key("ed25519", 100, root / "station", station=STA, valid_from=start)
    for src, kid, dst in ((root / "relay", 900, "station-trust"), (root / "station", 100, "station-trust"),
                          (root / "station", 100, "relay-trust")):
        export_public(src, kid, root / dst)
    return {"relay": Keystore.load(root / "relay").signer(900), "forger": Keystore.load(root / "forger").signer(902),
            "station": Keystore.load(root / "station"), "station_trust": TrustStore.load(root / "station-trust"),
            "relay_trust": TrustStore.load(root / "relay-trust")}


@pytest.fixture
def rig(tmp_path, keys):
    clock = FakeClock(T0 + 3600)
    box = Outbox(tmp_path / "outbox.sqlite", max_bytes=1 << 24, max_age_s=7 * 86400, clock=clock,
                 hold_kinds=("cd11",), hold_span_s=10.0)
    core = CommandCore(STA, keys["station_trust"], RELAY, [900], max_request_s=3600, max_age_s=300)
    handler = CommandHandler(core, box, clock=clock, signer_for=lambda at: keys["station"].signer_for(STA, at),
                             frame_set=FS, frame_seconds=10)
    yield clock, box, handler
    box.close()


def seq(t: float) -> int:
    return int((t - EPOCH_2000) // 10)


def command(keys, start, end, *, id="r1", now=T0 + 3600, signer="relay", sender=RELAY, body=None) -> bytes:
    doc = body if body is not None else {"cmd": "send_window", "id": id, "start": start, "end": end}
    s = None if signer is None else keys[signer]
    return envelope.pack_json("command", sender, doc, time_us=int(now * 1e6), signer=s)


def answer(keys, handler, payload: bytes, id: str | None = "r1") -> dict:
    out = handler.handle(payload)
    env = envelope.unpack(out, kind="command_response")
    assert env.sender == STA and envelope.verify(env, keys["relay_trust"], STA).ok
    doc = env.json()
    assert doc["id"] == id, doc
    return doc


def test_a_good_request_releases_the_window_and_is_answered_with_its_frames(keys, rig):
    clock, box, handler = rig
    for i in range(30):                                  # T0 .. T0 + 290
        box.put("cd11", FS, seq(T0) + i, T0 + 10 * i, b"f%d" % i)
    # make_command is what `relay request` publishes (ISO times).
    doc = check_response(handler.handle(make_command(RELAY, keys["relay"], T0 + 100, T0 + 150, id="r1",
                                                     now=clock.t)), keys["relay_trust"], STA, "r1")
    assert doc["ok"] is True and doc["frames"] == 5 and doc["released"] == 5 and doc["missing"] == []
    assert (doc["first_seq"], doc["last_seq"]) == (seq(T0 + 100), seq(T0 + 140))
    assert (doc["start"], doc["end"]) == (iso(T0 + 100), iso(T0 + 150))
    assert [it.seq for it in box.next_to_send(100, live_window_s=1e9)] == list(range(seq(T0 + 100), seq(T0 + 150)))
    assert handler.stats()["answered"] == 1 and handler.stats()["frames_released"] == 5
    # POSIX seconds work too; an answer to another id is not this request's.
    doc = answer(keys, handler, command(keys, T0, T0 + 20, id="r2"), "r2")
    assert doc["frames"] == 2 and doc["released"] == 2
    assert check_response(handler.handle(command(keys, T0, T0 + 20, id="r3")), keys["relay_trust"], STA, "r4") is None


def test_missing_spans_are_named_evicted_gap_or_not_yet_recorded(keys, rig):
    clock, box, handler = rig
    box2 = Outbox(box.path.with_name("small.sqlite"), max_bytes=1 << 24, max_age_s=600, clock=clock,
                  hold_kinds=("cd11",))
    handler.outbox = box2
    base = clock.t - 900                                   # frames base .. base + 890, minus a gap
    for i in range(90):
        if not 50 <= i < 53:
            box2.put("cd11", FS, seq(base) + i, base + 10 * i, b"f%d" % i)
    # The age bound (600 s) rolled off frames 0..29: evicted.  50..52: never framed.  Beyond the
    # last frame (base + 890) and the clock: not yet recorded.
    doc = answer(keys, handler, command(keys, base + 250, clock.t + 30))
    assert doc["ok"] is True and doc["frames"] == 90 - 30 - 3
    assert doc["missing"] == [
        {"start": iso(base + 250), "end": iso(base + 300), "reason": "evicted"},
        {"start": iso(base + 500), "end": iso(base + 530), "reason": "gap in data"},
        {"start": iso(base + 900), "end": iso(clock.t + 30), "reason": "not yet recorded"}]
    # Nothing at all: an error naming the span and why.
    doc = answer(keys, handler, command(keys, base, base + 100, id="r2"), "r2")
    assert doc["ok"] is False and doc["frames"] == 0
    assert doc["error"] == f"no data for {iso(base)}..{iso(base + 100)}: {iso(base)}..{iso(base + 100)} evicted"
    doc = answer(keys, handler, command(keys, clock.t + 100, clock.t + 200, id="r3"), "r3")
    assert doc["ok"] is False and "not yet recorded" in doc["error"]
    box2.close()


@pytest.mark.parametrize("case, reason, match", [
    ("unsigned", "unsigned", "not signed"),
    ("tampered", "bad_signature", "does not verify"),
    ("forged key", "bad_signature", "902 is not one of the relay's keys"),
    ("station key", "wrong_sender", "sender 'AUX1' is not the relay"),
    ("stale", "stale", "more than 300 s"),
    ("future", "stale", "more than 300 s"),
    ("too long", "window_too_long", "max_request_s = 3600"),
    ("reversed", "bad_window", "is not after start"),
    ("bad time", "bad_window", "start: 'yesterday'"),
    ("unknown", "unknown_command", "'reboot' is not one of send_window"),
    ("no id", "malformed", "id: must be"),
])
def test_bad_commands_are_refused_naming_what_is_wrong(keys, rig, case, reason, match):
    clock, box, handler = rig
    box.put("cd11", FS, seq(T0), T0, b"f")
    s, e = T0, T0 + 10
    payload = {
        "unsigned": lambda: command(keys, s, e, signer=None),
        "tampered": lambda: bytearray(command(keys, s, e)),
        "forged key": lambda: command(keys, s, e, signer="forger"),
        "station key": lambda: envelope.pack_json("command", STA, {"cmd": "send_window", "id": "r1", "start": s,
                                                                    "end": e}, time_us=int(clock.t * 1e6),
                                                  signer=keys["station"].signer(100)),
        "stale": lambda: command(keys, s, e, now=clock.t - 301),
        "future": lambda: command(keys, s, e, now=clock.t + 301),
        "too long": lambda: command(keys, s, s + 3601),
        "reversed": lambda: command(keys, e, s),
        "bad time": lambda: command(keys, "yesterday", e),
        "unknown": lambda: command(keys, s, e, body={"cmd": "reboot", "id": "r1"}),
        "no id": lambda: command(keys, s, e, body={"cmd": "send_window", "start": s, "end": e}),
    }[case]()
    if case == "tampered":
        i = payload.index(b"send_window")
        payload[i] = ord("S")
        payload = bytes(payload)
    doc = answer(keys, handler, payload, None if case == "no id" else "r1")
    assert doc["ok"] is False and doc["reason"] == reason and match in doc["error"], doc
    assert handler.stats()["refused_by_reason"] == {reason: 1}
    assert box.stats()["held"] == 1                                  # nothing released


def test_a_replayed_command_is_refused_and_old_ids_are_forgotten_once_stale(keys, rig):
    clock, box, handler = rig
    p = command(keys, T0, T0 + 10, now=clock.t)
    assert answer(keys, handler, p)["ok"] is False          # no data, but obeyed
    doc = answer(keys, handler, p)
    assert doc["reason"] == "replay" and "already used" in doc["error"]
    clock.advance(301)
    assert answer(keys, handler, p)["reason"] == "stale"     # the replay window is the age limit
    assert len(handler.core._seen) <= 1


def test_garbage_never_raises_and_is_answered(keys, rig):
    clock, box, handler = rig
    rng = random.Random(9)
    good = command(keys, T0, T0 + 10)
    for n in range(300):
        if n % 3 == 0:
            p = rng.randbytes(rng.randrange(0, 200))
        else:
            b = bytearray(good)
            for _ in range(rng.randrange(1, 4)):
                b[rng.randrange(len(b))] = rng.randrange(256)
            p = bytes(b[:rng.randrange(len(b) + 1)] if n % 3 == 2 else b)
        out = handler.handle(p)
        doc = json.loads(envelope.unpack(out, kind="command_response").body)
        assert doc["ok"] is False or doc["id"] == "r1"
    assert handler.stats()["internal_errors"] == 0
    big = command(keys, T0, T0 + 10, body={"cmd": "send_window", "id": "x", "pad": "a" * 20000})
    assert answer(keys, handler, big, None)["reason"] == "malformed"


def test_a_failing_outbox_is_an_answered_internal_error(keys, rig):
    clock, box, handler = rig

    class Broken:
        def release(self, *a):
            raise OSError("disk on fire")

    handler.outbox = Broken()
    doc = answer(keys, handler, command(keys, T0, T0 + 10), None)
    assert doc == {"id": None, "ok": False, "error": "internal error: OSError", "reason": "internal"}
    assert handler.stats()["internal_errors"] == 1


def test_times_and_missing_spans_helpers():
    assert parse_time("2023-11-14T22:13:20Z", "t") == T0 == parse_time("2023-11-14T22:13:20", "t")
    assert parse_time("2023-11-15T00:13:20+02:00", "t") == T0 == parse_time(T0, "t")
    for bad in (True, float("nan"), 1e300, "x" * 50, None, [1]):
        with pytest.raises(ValueError):
            parse_time(bad, "t")
    assert iso(T0 + 0.5) == "2023-11-14T22:13:20.500Z"
    # A window inside one frame slot: the span is clipped to the window.
    assert missing_spans([], T0 + 2, T0 + 4, frame_seconds=10, highest_committed=seq(T0),
                         evicted_through=None, now=T0 + 100) == [
        {"start": iso(T0 + 2), "end": iso(T0 + 4), "reason": "gap in data"}]


def test_the_uplink_answers_on_cmd_response_and_survives_a_failing_handler(tmp_path, keys, rig):
    """Sans broker: the uplink's cmd path (edge/uplink.py) with a fake paho client."""
    from types import SimpleNamespace

    from ims_station.broker import BrokerConfig
    from ims_station.edge.uplink import Uplink

    clock, box, handler = rig
    up = Uplink(STA, [BrokerConfig()], box, clock=clock, command_handler=handler)
    published = []
    client = SimpleNamespace(publish=lambda topic, payload, qos: published.append((topic, payload, qos)))
    up._on_message(client, None, SimpleNamespace(topic="ims/AUX1/cmd", payload=command(keys, T0, T0 + 10)))
    (topic, payload, qos), = published
    assert topic == "ims/AUX1/cmd/response" and qos == 1
    assert check_response(payload, keys["relay_trust"], STA, "r1")["ok"] is False     # no data there
    up.command_handler = SimpleNamespace(handle=lambda p: 1 / 0, stats=lambda: {})
    up._on_message(client, None, SimpleNamespace(topic="ims/AUX1/cmd", payload=b"x"))
    assert up.stats()["commands"] == 2 and up.stats()["command_errors"] == 1
    # Another station's cmd topic, or no handler: ignored.
    up._on_message(client, None, SimpleNamespace(topic="ims/AUX2/cmd", payload=b"x"))
    assert up.stats()["commands"] == 2 and len(published) == 1


def test_the_relay_believes_only_the_stations_signed_answer_to_its_command(keys):
    from ims_station.errors import RemoteProtocolError

    doc = {"id": "r1", "ok": True, "frames": 1}
    good = envelope.pack_json("command_response", STA, doc, time_us=int(T0 * 1e6), signer=keys["station"].signer(100))
    assert check_response(good, keys["relay_trust"], STA, "r1") == doc
    assert check_response(good, keys["relay_trust"], STA, "other") is None
    bad = [envelope.pack_json("command_response", STA, doc, time_us=int(T0 * 1e6)),                  # unsigned
           envelope.pack_json("command_response", RELAY, doc, time_us=int(T0 * 1e6), signer=keys["relay"]),
           good[:-1] + bytes([good[-1] ^ 1]),                                                       # tampered
           envelope.pack_json("command", STA, doc, time_us=int(T0 * 1e6), signer=keys["station"].signer(100)),
           b"garbage"]
    for payload in bad:
        with pytest.raises(RemoteProtocolError):
            check_response(payload, keys["relay_trust"], STA, "r1")
