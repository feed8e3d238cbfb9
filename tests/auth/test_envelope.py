"""The signed envelope (ims_station/envelope.py): round trip, signatures, and every malformed input
refused with EnvelopeError (never another exception)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ims_station import envelope
from ims_station.auth import Keystore, TrustStore
from ims_station.envelope import EnvelopeError
from ims_station.errors import LocalProtocolError

from .conftest import INSIDE, KEY_IDS

T_US = int(INSIDE.timestamp() * 1e6)


@pytest.fixture(scope="module")
def keys(stores):
    return Keystore.load(stores[0]), TrustStore.load(stores[1])


@pytest.mark.parametrize("alg", sorted(KEY_IDS))
def test_signed_round_trip_verifies_and_any_flipped_bit_does_not(keys, alg):
    ks, trust = keys
    signer = ks.signer(KEY_IDS[alg])
    data = envelope.pack_json("event", "STA01", {"peak": 5.5, "seq": 3}, time_us=T_US, signer=signer, seq=3)
    env = envelope.unpack(data, kind="event")
    assert (env.kind, env.sender, env.key_id, env.time_us, env.seq) == ("event", "STA01", KEY_IDS[alg], T_US, 3)
    assert env.json() == {"peak": 5.5, "seq": 3}
    assert envelope.verify(env, trust).ok
    assert envelope.verify(env, trust, "STA01").ok
    assert not envelope.verify(env, trust, "STA02").ok          # on another station's topic
    for pos in (0, 5, 9, 17, 21, 29, 37, 41, len(data) - 1):
        bad = bytearray(data)
        bad[pos] ^= 0x01
        try:
            e2 = envelope.unpack(bytes(bad))
        except EnvelopeError:
            continue
        assert not envelope.verify(e2, trust).ok, pos


def test_unsigned_envelope_is_parsed_but_never_verifies(keys):
    _, trust = keys
    env = envelope.unpack(envelope.pack("ims20", "STA01", b"BEGIN IMS2.0\n", time_us=T_US))
    assert env.key_id == 0 and env.signature == b"" and env.body == b"BEGIN IMS2.0\n"
    v = envelope.verify(env, trust)
    assert not v.ok and "not signed" in v.reason


def test_a_signature_outside_the_keys_validity_fails(keys):
    ks, trust = keys
    data = envelope.pack("event", "STA01", b"{}", time_us=0, signer=ks.signer(KEY_IDS["ed25519"]))
    assert "validity" in envelope.verify(envelope.unpack(data), trust).reason


def test_what_we_must_never_send_is_a_local_error():
    with pytest.raises(LocalProtocolError, match="kind"):
        envelope.pack("frame", "STA01", b"", time_us=0)
    with pytest.raises(LocalProtocolError, match="sender"):
        envelope.pack("event", "sta01", b"", time_us=0)
    with pytest.raises(LocalProtocolError, match="sender"):
        envelope.pack("event", "TOOLONGNAME", b"", time_us=0)
    with pytest.raises(LocalProtocolError, match="sequence"):
        envelope.pack("event", "STA01", b"", time_us=0, seq=-1)


def _raw(**over):
    f = dict(magic=b"IMSE", version=1, kind=1, flags=0, sender=b"STA01", key_id=0, time_us=0, seq=0, body=b"{}",
             siglen=0, sig=b"", tail=b"")
    f.update(over)
    n = over.get("n", len(f["body"]))
    return (struct.pack(">4sBBH8sIqQI", f["magic"], f["version"], f["kind"], f["flags"], f["sender"].ljust(8, b"\0"),
                        f["key_id"], f["time_us"], f["seq"], n) + f["body"] + struct.pack(">H", f["siglen"]) + f["sig"]
            + f["tail"])


@pytest.mark.parametrize("raw, what", [
    (b"", "shorter"),
    (_raw(magic=b"CD11"), "magic"),
    (_raw(version=2), "version"),
    (_raw(kind=9), "kind"),
    (_raw(flags=1), "flags"),
    (_raw(sender=b"st a"), "sender"),
    (_raw(sender=b""), "sender"),
    (_raw(n=0xFFFFFFFF), "body length"),
    (_raw(seq=1 << 63), "sequence number"),
    (_raw(n=1000), "runs past"),
    (_raw(key_id=3), "key id"),
    (_raw(siglen=64, sig=b"x" * 64), "key id"),
    (_raw(siglen=60000), "signature length"),
    (_raw(tail=b"x"), "after the structure"),
])
def test_malformed_envelopes_are_refused_naming_the_field(raw, what):
    with pytest.raises(EnvelopeError, match=what):
        envelope.unpack(raw)


def test_wrong_kind_and_non_json_bodies_are_refused():
    data = envelope.pack("command", "RELAY", b"\xff\xfe", time_us=0)
    with pytest.raises(EnvelopeError, match="kind"):
        envelope.unpack(data, kind="event")
    with pytest.raises(EnvelopeError, match="JSON"):
        envelope.unpack(data).json()
    big = envelope.pack("command", "RELAY", b"[" * (envelope.MAX_JSON_BODY + 1), time_us=0)
    with pytest.raises(EnvelopeError, match="too large"):
        envelope.unpack(big).json()
    deep = envelope.pack("command", "RELAY", b"[" * 100000, time_us=0)
    with pytest.raises(EnvelopeError):
        envelope.unpack(deep).json()


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 60), st.binary(max_size=8))
def test_any_bytes_or_mutation_is_an_envelope_or_an_envelope_error(junk, pos, patch):
    base = envelope.pack("event", "STA01", b'{"a":1}', time_us=T_US)
    for data in (junk, base[:pos] + patch + base[pos + len(patch):], base[:pos]):
        try:
            env = envelope.unpack(data)
        except EnvelopeError:
            continue
        try:
            env.json()
        except EnvelopeError:
            pass
