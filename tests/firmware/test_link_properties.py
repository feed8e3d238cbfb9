"""Property tests of the wire format (hypothesis), on CPython: round trips, the pure COBS against
the C library, and that arbitrary damage is always rejected with a LinkError, never a crash."""

from __future__ import annotations

import struct

from cobs import cobs
from hypothesis import given, settings
from hypothesis import strategies as st

from ims_station.firmware import link

AUTH = link.Authenticator(bytes(range(32)))
int32 = st.integers(-2 ** 31, 2 ** 31 - 1)


@given(st.binary(max_size=2000))
def test_cobs_pure_equals_library(data):
    enc = link._cobs_encode_py(data)
    assert enc == cobs.encode(data)
    assert link._cobs_decode_py(enc) == data and b"\x00" not in enc


@settings(max_examples=200)
@given(st.integers(1, 16).flatmap(lambda c: st.lists(
    st.lists(st.one_of(int32, st.integers(-300, 300)), min_size=5, max_size=5), min_size=c, max_size=c)),
    st.booleans())
def test_data_round_trip(channels, pack):
    ids = list(range(len(channels)))
    p = link.pack_data(1_795_000_000_000_000, 100_000, ids, channels, link.TQ_HOLDOVER, 3, 5, pack)
    assert link.unpack_data(p) == (1_795_000_000_000_000, 100_000, link.TQ_HOLDOVER, 3, 5, ids, channels)


@settings(max_examples=300)
@given(st.binary(min_size=1, max_size=300), st.integers(0, 10_000), st.integers(0, 7))
def test_any_single_bit_flip_is_rejected(payload, pos, bit):
    wire = link.encode(AUTH, link.T_DATA, 1, 2, 3, payload)[:-1]
    pos %= len(wire)
    bad = bytearray(wire)
    bad[pos] ^= 1 << bit
    try:
        frames = link.Deframer().feed(bytes(bad) + b"\x00")
        for f in frames:
            link.decode(AUTH, f)
    except link.LinkError:
        return
    raise AssertionError("a damaged frame was accepted")


@settings(max_examples=200)
@given(st.binary(max_size=5000))
def test_random_bytes_never_crash_the_decoder(data):
    df = link.Deframer()
    for f in df.feed(data):
        try:
            hdr, payload = link.decode(AUTH, f)
        except link.LinkError:
            continue
        raise AssertionError("random bytes decoded as a valid packet")
    for unpack in (link.unpack_data, link.unpack_soh, link.unpack_hello, link.unpack_command,
                   link.unpack_reply, link.unpack_range, link.unpack_ack):
        try:
            unpack(data[:200])
        except link.LinkError:
            pass


def test_megabyte_of_random_bytes_is_garbage_not_a_crash():
    import random
    data = random.Random(7).randbytes(1 << 20)
    df = link.Deframer()
    bad = ok = 0
    for f in df.feed(data):
        try:
            link.decode(AUTH, f)
            ok += 1
        except link.LinkError:
            bad += 1
    assert ok == 0 and bad > 1000          # ~4000 zero bytes delimit ~4000 candidate frames


@given(st.integers(0, 2 ** 32 - 1), st.integers(0, 2 ** 32 - 1))
def test_retransmit_copy_is_valid_and_flagged(seq, other):
    pkt = link.build_packet(AUTH, link.T_SOH, 9, 1, seq, struct.pack(">I", other))
    hdr, payload = link.parse_packet(AUTH, link.retransmit_copy(AUTH, pkt))
    assert hdr.flags & link.F_RETRANSMIT and hdr.seq == seq and payload == struct.pack(">I", other)
