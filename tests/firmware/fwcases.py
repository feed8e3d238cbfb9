# Firmware test cases that run unchanged under CPython (pytest, tests/firmware/test_fw_cases.py)
# and under the MicroPython unix port (tests/firmware/mp_runner.py, launched by
# tests/firmware/test_micropython.py).  Plain functions named case_* using assert; no pytest, no
# unittest (the unix port has neither), no f-strings with '=' and nothing CPython-only.
#
# Expected values come from tests/firmware/vectors.json (made by make_vectors.py with independent
# implementations: cobs, zlib, hmac, struct, the ADC emulator); call setup(vectors, board) first.

import binascii
import struct

try:
    from ims_station.firmware import link, ring, timebase, ads131m0x, digitizer, gnss
except ImportError:  # MicroPython: the firmware package is on MICROPYPATH as 'imsfw'
    from imsfw import link, ring, timebase, ads131m0x, digitizer, gnss

V = None
BOARD = None


def setup(vectors, board):
    global V, BOARD
    V = vectors
    BOARD = board


def cases():
    g = globals()
    return sorted(k for k in g if k.startswith("case_"))


def unhex(s):
    return binascii.unhexlify(s)


def raises(cls, fn, *args):
    try:
        fn(*args)
    except cls:
        return True
    except Exception as err:  # noqa: BLE001 - report the wrong class
        raise AssertionError("expected %s, got %s: %s" % (cls.__name__, type(err).__name__, err))
    raise AssertionError("expected %s, nothing raised" % cls.__name__)


# ---------------------------------------------------------------- framing, CRC, HMAC

def case_cobs_vectors():
    for raw, enc in V["cobs"]:
        raw = unhex(raw)
        enc = unhex(enc)
        assert link.cobs_encode(raw) == enc, raw
        assert link._cobs_encode_py(raw) == enc, raw
        assert link.cobs_decode(enc) == raw
        assert link._cobs_decode_py(enc) == raw
        assert 0 not in enc


def case_cobs_rejects_broken_frames():
    raises(link.FramingError, link._cobs_decode_py, b"\x03\x11\x00")
    raises(link.FramingError, link._cobs_decode_py, b"\x05\x11\x22")
    raises(link.FramingError, link.cobs_decode, b"\x05\x11\x22")


def case_crc32_vectors():
    for data, crc in V["crc32"]:
        assert link.crc32(unhex(data)) == crc
    assert link.crc32(b"123456789") == 0xCBF43926


def case_hmac_vectors():
    for key, msg, digest in V["hmac"]:
        a = link.Authenticator(unhex(key))
        assert a.digest(unhex(msg)) == unhex(digest)
        assert a.digest_pure(unhex(msg)) == unhex(digest)
        assert a.tag(unhex(msg)) == unhex(digest)[:link.TAG_SIZE]


def case_hmac_refuses_short_keys():
    raises(ValueError, link.Authenticator, b"short key")
    raises(ValueError, link.Authenticator, "not bytes at all")


# ---------------------------------------------------------------- packets

def _auth():
    return link.Authenticator(unhex(V["key"]))


def _payload_from_fields(p):
    f = p["fields"]
    name = p["name"]
    if name.startswith("data"):
        return link.pack_data(f["t_first_us"], f["rate_mhz"], f["chan_ids"], f["channels"], f["tq"],
                              f["status"], f["clip_mask"], f["pack"])
    if name == "soh":
        return link.pack_soh(*f)
    if name == "hello":
        return link.pack_hello(*f)
    if name == "reply":
        return link.pack_reply(f[0], f[1], f[2], unhex(f[3]))
    if name in ("unavailable", "resend"):
        return link.pack_range(f[0], f[1])
    if name == "ack":
        return link.pack_ack(f[0])
    if name.startswith("command"):
        return link.pack_command(f[0], unhex(f[1]))
    raise AssertionError(name)


def case_packet_vectors():
    auth = _auth()
    by_name = {}
    for p in V["packets"]:
        by_name[p["name"]] = p
        payload = unhex(p["payload"])
        if p["fields"] is not None:
            assert _payload_from_fields(p) == payload, p["name"]
        boot = p.get("boot", 0)
        pkt = link.build_packet(auth, p["type"], p["board"], p["epoch"], p["seq"], payload, p["flags"], boot)
        assert pkt == unhex(p["packet"]), p["name"]
        wire = link.encode(auth, p["type"], p["board"], p["epoch"], p["seq"], payload, p["flags"], boot)
        assert wire == unhex(p["wire"]), p["name"]
        assert wire[0] == 0 and wire[-1] == 0 and 0 not in wire[1:-1]
        hdr, got = link.decode(auth, wire[1:-1])
        assert got == payload
        assert (hdr.ptype, hdr.board_id, hdr.epoch, hdr.seq, hdr.flags, hdr.length, hdr.boot) == (
            p["type"], p["board"], p["epoch"], p["seq"], p["flags"], len(payload), boot)
    copy = link.retransmit_copy(auth, unhex(by_name["data"]["packet"]))
    assert copy == unhex(by_name["data_retransmit"]["packet"])
    copy = link.retransmit_copy(auth, unhex(by_name["data_boot"]["packet"]))
    assert copy == unhex(by_name["data_boot_retransmit"]["packet"])


def case_payload_round_trips():
    for p in V["packets"]:
        payload = unhex(p["payload"])
        f = p["fields"]
        n = p["name"]
        if n == "data" or n == "data_unpacked":
            t, rate, tq, st, clip, ids, chans = link.unpack_data(payload)
            assert (t, rate, tq, st, clip, ids) == (f["t_first_us"], f["rate_mhz"], f["tq"], f["status"],
                                                    f["clip_mask"], f["chan_ids"])
            assert chans == f["channels"]
        elif n == "soh":
            d = link.unpack_soh(payload)
            assert d["time_us"] == f[0] and d["clock_diff_us"] == f[2] and d["ring_capacity"] == f[8]
        elif n == "hello":
            d = link.unpack_hello(payload)
            assert d["firmware"] == "imsfw-0.1.0" and d["board"] == "sim" and d["channels"] == [0, 1, 2, 3]
        elif n == "reply":
            assert link.unpack_reply(payload) == (42, 1, 1, b"no")
        elif n in ("unavailable", "resend"):
            assert link.unpack_range(payload) == (f[0], f[1])
        elif n == "ack":
            assert link.unpack_ack(payload) == 99
        elif n == "command_set_rate":
            assert link.unpack_command(payload) == (1, unhex(f[1]))


def case_bad_packets_rejected_with_named_error():
    auth = _auth()
    for b in V["bad_packets"]:
        cls = getattr(link, b["error"])
        raises(cls, link.parse_packet, auth, unhex(b["packet"]))


def case_payload_length_lies_rejected():
    good = unhex(V["packets"][0]["payload"])
    raises(link.LengthError, link.unpack_data, good[:-1])
    raises(link.LengthError, link.unpack_data, good + b"\x00")
    raises(link.PayloadError, link.unpack_data, good[:10])
    big_n = bytearray(good)
    struct.pack_into(">H", big_n, 12, 60000)          # claims 60000 samples per channel
    raises(link.LengthError, link.unpack_data, bytes(big_n))
    bad_enc = bytearray(good)
    bad_enc[24] = 9
    raises(link.PayloadError, link.unpack_data, bytes(bad_enc))
    raises(link.PayloadError, link.unpack_soh, b"\x00" * 31)
    raises(link.LengthError, link.unpack_command, b"\x01\x00\x00\x09\x00")
    raises(link.PayloadError, link.unpack_range, struct.pack(">II", 9, 3))


def case_difference_packing_vectors():
    for d in V["diff"]:
        got = link._pack_channel(d["samples"], True)
        assert got == unhex(d["bytes"]), d["samples"][:4]
        n = len(d["samples"])
        payload = link.pack_data(0, 1000, [0], [d["samples"]])
        assert len(payload) == link.data_size(n, 1, [d["enc"]])
        assert link.unpack_data(payload)[6] == [d["samples"]]


def case_deframer_resynchronises_after_garbage():
    auth = _auth()
    w1 = unhex(V["packets"][0]["wire"])
    w2 = unhex(V["packets"][2]["wire"])
    df = link.Deframer()
    stream = b"\x13\x37garbage\x00" + w1 + b"\xff" * 5000 + b"\x00" + w2
    got = []
    for i in range(0, len(stream), 97):               # arbitrary chunking
        got += df.feed(stream[i:i + 97])
    ok = []
    bad = 0
    for f in got:
        try:
            ok.append(link.decode(auth, f)[0].seq)
        except link.LinkError:
            bad += 1
    assert ok == [V["packets"][0]["seq"], V["packets"][2]["seq"]], ok
    assert bad == 1                                   # the short garbage frame
    assert df.overlong_frames == 1 and df.garbage_bytes >= 5000


def case_frame_that_lost_its_trailing_delimiter_costs_only_itself():
    auth = _auth()
    wires = [unhex(p["wire"]) for p in V["packets"][:4]]
    df = link.Deframer()
    got = []
    # Frame 1 loses its trailing 0x00 on the line: the next frame's leading 0x00 still ends it,
    # so neither it nor the next packet is lost.  Frame 2 also loses one byte of its body: only
    # frame 2 is rejected.
    damaged = wires[2][:9] + wires[2][10:]
    for f in df.feed(wires[0] + wires[1][:-1] + damaged[:-1] + wires[3]):
        try:
            got.append(link.decode(auth, f)[0].seq)
        except link.LinkError:
            got.append(None)
    seqs = [V["packets"][i]["seq"] for i in range(4)]
    assert got == [seqs[0], seqs[1], None, seqs[3]], got
    # Back-to-back delimiters are empty frames: skipped, and not garbage.
    df = link.Deframer()
    frames = df.feed(b"".join(wires) + b"\x00\x00")
    assert len(frames) == 4 and df.garbage_bytes == 0 and df.overlong_frames == 0


# ---------------------------------------------------------------- ring buffer

def case_ring_get_by_sequence_and_evict_oldest():
    r = ring.Ring(1000, 64)
    for seq in range(10, 30):
        r.put(seq, bytes([seq]) * 100)
    # 1000 bytes hold 10 packets of 100 bytes.
    assert len(r) == 10 and r.oldest == 20 and r.newest == 29
    assert r.get(19) is None and r.get(30) is None
    assert bytes(r.get(25)) == bytes([25]) * 100
    assert 20 in r and 19 not in r
    assert r.used == 1000


def case_ring_wraps_with_unequal_packets():
    r = ring.Ring(1000, 64)
    sizes = [300, 50, 420, 90, 333, 10, 250, 499, 1, 77, 460, 123]
    for seq, n in enumerate(sizes):
        r.put(seq, bytes([seq + 1]) * n)
        # everything held is intact and the held bytes never exceed the buffer
        for s in range(r.oldest, r.newest + 1):
            assert bytes(r.get(s)) == bytes([s + 1]) * sizes[s], (seq, s)
        assert r.used <= 1000
        assert r.newest == seq
    raises(ValueError, r.put, 99, bytes(501))


def case_ring_index_limit_and_restart():
    r = ring.Ring(10000, 4)
    for seq in range(7):
        r.put(seq, b"x" * 10)
    assert len(r) == 4 and r.oldest == 3
    r.put(0, b"new epoch")                            # not the next sequence: the ring restarts
    assert len(r) == 1 and r.oldest == 0 and bytes(r.get(0)) == b"new epoch"


def case_ring_capacity_formula_holds():
    for cap, size in ((65536, 1262), (98304, 2462), (262144, 3264), (10000, 999)):
        r = ring.Ring(cap, 4096)
        for seq in range(3 * cap // size):
            r.put(seq, bytes(size))
        assert len(r) >= ring.capacity_packets(cap, 4096, size), (cap, size, len(r))


def case_ring_overrun_counted_only_after_first_ack():
    r = ring.Ring(1000, 64)
    for seq in range(20):
        r.put(seq, bytes(100))
    assert r.overrun == 0 and r.evicted == 10
    r.ack(15)
    for seq in range(20, 30):
        r.put(seq, bytes(100))
    # evicted 10..19, of which 16..19 were not acknowledged
    assert r.overrun == 4, r.overrun
    assert r.unacked() == 10


# ---------------------------------------------------------------- timebase

class Ticks:
    def __init__(self, t=1000):
        self.t = t

    def __call__(self):
        return self.t


def case_timebase_lock_holdover_unlocked():
    clk = Ticks()
    tb = timebase.Timebase(clk, holdover_s=10)
    assert tb.quality() == link.TQ_UNLOCKED
    utc0 = 1795000000 * 1000000
    for s in range(3):
        clk.t = 1000 + s * 1000000
        tb.on_pps(clk.t)
        tb.on_gnss_time(utc0 + s * 1000000)
    assert tb.quality() == link.TQ_LOCKED
    clk.t += 250000
    assert tb.now_us() == utc0 + 2 * 1000000 + 250000
    clk.t += 5000000                                  # PPS lost
    assert tb.quality() == link.TQ_HOLDOVER
    clk.t += 10000000
    assert tb.quality() == link.TQ_UNLOCKED
    assert tb.last_sync_us == utc0 + 2000000


def case_timebase_detects_steps_and_reports_clock_differential():
    clk = Ticks()
    tb = timebase.Timebase(clk)
    utc0 = 1795000000 * 1000000
    tb.set_time(utc0 - 5000000)                       # a coarse RTC time is not a time to stamp with
    assert not tb.has_time and not tb.step_pending
    tb.on_pps(1000)
    tb.on_gnss_time(utc0)
    assert tb.has_time                                # first GNSS time + PPS: the board has a time
    assert not tb.take_step() and tb.steps == 0       # setting it the first time is not a step
    tb.on_pps(1001000)
    assert tb.clock_diff_us == 0 and not tb.step_pending
    tb.on_pps(2001000)
    tb.on_gnss_time(utc0 + 3000000)                   # the receiver disagrees by a second
    assert tb.take_step()
    assert tb.last_step_us == 1000000 and tb.steps == 1
    clk.t = 2501000
    assert tb.now_us() == utc0 + 3500000


def case_timebase_estimates_frequency_and_rejects_glitches():
    clk = Ticks(0)
    tb = timebase.Timebase(clk)
    utc0 = 1795000000 * 1000000
    # The tick counter runs 50 ppm fast: 1000050 ticks per second.
    for s in range(6):
        tb.on_pps(s * 1000050)
        if s == 0:
            tb.on_gnss_time(utc0)
    assert tb.ppm() == 50
    tb.on_pps(5 * 1000050 + 300000)                   # spurious edge
    assert tb.pps_rejected == 1
    # Holdover: 10 s later (in ticks) the clock still reads true time within a microsecond or two.
    t = 15 * 1000050
    assert abs(tb.now_us(t) - (utc0 + 15000000)) <= 2
    tb.on_pps(t)                                      # 10 seconds of missing pulses, then back
    assert tb.pps_rejected == 1 and abs(tb.clock_diff_us) <= 2


def case_timebase_survives_tick_wrap():
    period = 1 << 30

    def diff(a, b):
        return ((a - b + period // 2) % period) - period // 2

    clk = Ticks(period - 400000)
    tb = timebase.Timebase(clk, ticks_diff=diff)
    utc0 = 1795000000 * 1000000
    tb.on_pps(clk.t)
    tb.on_gnss_time(utc0)
    nxt = (clk.t + 1000000) % period                  # wrapped
    tb.on_pps(nxt)
    assert tb.pps_rejected == 0 and tb.clock_diff_us == 0
    assert tb.now_us((nxt + 500) % period) == utc0 + 1000500


# ---------------------------------------------------------------- ADC driver

class ReplaySpi:
    """Replays the frames recorded from the emulated ADS131M04 and checks what the driver sends."""

    def __init__(self, frames):
        self.frames = [(unhex(t), unhex(r)) for t, r in frames]
        self.i = 0
        self.corrupt = None

    def write_readinto(self, tx, rx):
        want_tx, give = self.frames[self.i]
        assert bytes(tx) == want_tx, "frame %d: driver sent %s, expected %s" % (
            self.i, binascii.hexlify(bytes(tx)), binascii.hexlify(want_tx))
        rx[:] = give
        if self.corrupt is not None:
            rx[self.corrupt] ^= 0x01
        self.i += 1


class Pin:
    def __init__(self, v=1):
        self.v = v
        self.log = []

    def value(self, v=None):
        if v is None:
            return self.v
        self.v = v
        self.log.append(v)


def case_adc_driver_against_recorded_frames():
    a = V["adc"]
    spi = ReplaySpi(a["frames"])
    cs = Pin()
    drv = ads131m0x.ADS131M0x(spi, cs, Pin(0), a["gains"], clkin_hz=a["clkin_hz"])
    assert drv.configure(a["rate_mhz"]) == 4096
    assert spi.i == a["config_frames"]
    for codes in a["codes"]:
        assert drv.read() == codes
    assert spi.i == len(a["frames"])
    assert cs.log[-2:] == [0, 1] and cs.v == 1         # /CS released after every frame
    assert drv.read is not None and drv.full_scale == 0x7FFFFF


def case_adc_driver_detects_crc_mismatch():
    a = V["adc"]
    spi = ReplaySpi(a["frames"])
    drv = ads131m0x.ADS131M0x(spi, Pin(), Pin(0), a["gains"], clkin_hz=a["clkin_hz"])
    drv.configure(a["rate_mhz"])
    spi.corrupt = 4                                   # one bit of channel 0 flipped on the bus
    raises(ads131m0x.AdcCrcError, drv.read)
    assert drv.crc_errors == 1


def case_adc_crc16_and_rates():
    assert ads131m0x.crc16(b"123456789") == 0x29B1                 # CRC-16/CCITT-FALSE check value
    assert ads131m0x.crc16(b"123456789", ansi=True) == 0xAEE7      # CRC-16/CMS check value
    assert ads131m0x.crc_ccitt(b"123456789") == 0x29B1
    assert ads131m0x.rate_settings(8192000, 1000000) == 4096
    assert ads131m0x.rate_settings(1638400, 100000) == 8192
    assert ads131m0x.rate_settings(1638400, 150000) is None
    assert 200000 in ads131m0x.rates_mhz(1638400)
    raises(ValueError, ads131m0x.ADS131M0x, None, None, None, [3])


# ---------------------------------------------------------------- digitizer

class Uart:
    def __init__(self):
        self.tx = bytearray()
        self.rx = bytearray()
        self.limit = None

    def write(self, b):
        n = len(b) if self.limit is None else min(len(b), self.limit)
        self.tx += b[:n]
        return n

    def any(self):
        return len(self.rx)

    def read(self, n):
        d = bytes(self.rx[:n])
        self.rx = self.rx[n:]
        return d


class FakeAdc:
    full_scale = 0x7FFFFF

    def __init__(self, nch):
        self.n = 0
        self.nch = nch
        self.rate = None
        self.override = None
        self.fail = False

    def configure(self, rate):
        self.rate = rate

    def read(self):
        if self.fail:
            self.fail = False
            raise ads131m0x.AdcCrcError("injected")
        self.n += 1
        if self.override is not None:
            return list(self.override)
        return [self.n * (c + 1) for c in range(self.nch)]


class Level:
    def __init__(self, v):
        self.v = v

    def value(self):
        return self.v

    def read_u16(self):
        return self.v


def _board(ring_bytes=None, ring_packets=None):
    b = {}
    for k in BOARD:
        b[k] = dict(BOARD[k]) if isinstance(BOARD[k], dict) else BOARD[k]
    if ring_bytes:
        b["acquisition"]["ring_bytes"] = ring_bytes
    if ring_packets:
        b["acquisition"]["ring_packets"] = ring_packets
    return b


class Rig:
    """A digitizer on fake peripherals, with a locked clock and a gateway-side decoder."""

    def __init__(self, **kw):
        self.board = _board(kw.pop("ring_bytes", None), kw.pop("ring_packets", None))
        self.clk = Ticks(0)
        self.tb = timebase.Timebase(self.clk, **kw.pop("tb_kw", {}))
        self.utc0 = 1795000000 * 1000000
        self.gnss = kw.pop("gnss", True)
        if self.gnss:
            self.tb.on_pps(0)
            self.tb.on_gnss_time(self.utc0)
        self.uart = Uart()
        self.nch = len(self.board["channels"])
        self.adc = FakeAdc(self.nch)
        self.key = unhex(V["key"])
        self.auth = link.Authenticator(self.key)
        self.dig = digitizer.Digitizer(self.board, self.uart, self.adc, self.tb, self.key, epoch=5, **kw)
        self.df = link.Deframer()
        self.gw_seq = 0
        self.period = 1000000000 // self.dig.rate_mhz

    def run(self, samples, poll_every=10, pps=True):
        for i in range(samples):
            self.clk.t += self.period
            if pps and self.clk.t % 1000000 < self.period:
                edge = self.clk.t - self.clk.t % 1000000
                self.tb.on_pps(edge)
                if self.gnss:
                    self.tb.on_gnss_time(self.utc0 + edge)
            self.dig.on_drdy()
            if i % poll_every == 0:
                self.dig.poll()
        self.dig.poll()

    def packets(self):
        out = []
        for f in self.df.feed(bytes(self.uart.tx)):
            out.append(link.decode(self.auth, f))
        self.uart.tx = bytearray()
        return out

    def send(self, ptype, payload, key=None, board_id=None, boot=0):
        auth = self.auth if key is None else link.Authenticator(key)
        bid = self.board["board"]["id"] if board_id is None else board_id
        self.uart.rx += link.encode(auth, ptype, bid, 0, self.gw_seq, payload, 0, boot)
        self.gw_seq += 1
        self.dig.poll()


def case_digitizer_hello_then_data_bit_exact():
    rig = Rig()
    rate = rig.dig.rate_mhz
    spp = rig.dig.spp
    assert rig.adc.rate == rate                        # the firmware configured the ADC
    rig.run(3 * spp)
    pk = rig.packets()
    assert pk[0][0].ptype == link.T_HELLO and pk[0][0].seq == 0 and pk[0][0].epoch == 5
    hello = link.unpack_hello(pk[0][1])
    assert hello["rate_mhz"] == rate and hello["samples_per_packet"] == spp
    assert hello["ring_capacity"] == rig.dig.ring_capacity() > 0
    data = [p for p in pk if p[0].ptype == link.T_DATA]
    assert len(data) == 3
    seqs = [h.seq for h, _ in pk]
    assert seqs == list(range(len(pk)))               # one sequence space, no holes
    n = 0
    for k, (h, payload) in enumerate(data):
        t, r, tq, st, clip, ids, chans = link.unpack_data(payload)
        assert r == rate and tq == link.TQ_LOCKED and st == 0 and clip == 0
        assert t == rig.utc0 + (k * spp + 1) * rig.period, (t, k)
        for c in range(rig.nch):
            assert chans[c] == [(n + i + 1) * (c + 1) for i in range(spp)]
        n += spp
    assert rig.dig.counters["samples"] == 3 * spp


def case_digitizer_sends_no_data_before_its_first_gnss_time():
    rig = Rig(gnss=False, tb_kw={"holdover_s": 3})
    spp = rig.dig.spp
    rig.run(2 * spp + 7)                              # PPS edges but no GNSS time: no time yet
    rig.clk.t += 10000000                             # 10 s later the periodic SOH is due
    rig.dig.poll()
    pk = rig.packets()
    assert [h.ptype for h, _ in pk] == [link.T_HELLO, link.T_SOH]
    soh = link.unpack_soh(pk[1][1])
    assert soh["status"] & link.S_NO_TIME and soh["time_us"] == 0 and soh["last_sync_us"] == 0
    assert soh["time_quality"] == link.TQ_UNLOCKED
    c = rig.dig.counters
    assert c["samples_discarded_no_time"] == 2 * spp + 7 and c["samples"] == 0 and c["data_packets"] == 0
    # GNSS names the next PPS edge: from the next conversion on, samples carry true time.
    rig.gnss = True
    rig.run(3 * spp)
    data = [link.unpack_data(p) for h, p in rig.packets() if h.ptype == link.T_DATA]
    assert data, "no DATA after the time was set"
    for t, r, tq, st, clip, ids, chans in data:
        assert t > 1700000000 * 1000000               # a real date, never 1970 + uptime
        assert not st & link.S_CLOCK_STEP and not st & link.S_NO_TIME
    assert c["samples"] > 0 and c["clock_steps"] == 0
    # Losing GNSS later does not stop the data: the time is known, its quality degrades.
    n = c["samples"]
    rig.run(6 * spp, pps=False)
    data = [link.unpack_data(p) for h, p in rig.packets() if h.ptype == link.T_DATA]
    assert c["samples"] == n + 6 * spp
    assert data[-1][2] == link.TQ_UNLOCKED and any(d[2] == link.TQ_HOLDOVER for d in data)
    rig.dig._send_soh()
    rig.dig._flush()
    soh = [link.unpack_soh(p) for h, p in rig.packets() if h.ptype == link.T_SOH]
    assert not soh[-1]["status"] & link.S_NO_TIME and soh[-1]["time_us"] > 0


def case_digitizer_resend_served_from_ring_and_unavailable_exact():
    b = BOARD["acquisition"]
    rig = Rig(ring_bytes=20000, ring_packets=64)
    rig.run(60 * rig.dig.spp)
    pk = rig.packets()
    last = pk[-1][0].seq
    oldest = rig.dig.ring.oldest
    assert oldest > 3, oldest                         # the small ring has dropped the first packets
    rig.send(link.T_RESEND, link.pack_range(1, oldest + 1))
    got = rig.packets()
    copies = [(h, p) for h, p in got if h.flags & link.F_RETRANSMIT]
    assert [h.seq for h, _ in copies] == [oldest, oldest + 1]
    for h, p in copies:
        orig = [q for q in pk if q[0].seq == h.seq][0]
        assert p == orig[1] and h.ptype == orig[0].ptype
    un = [(h, p) for h, p in got if h.ptype == link.T_UNAVAILABLE]
    assert len(un) == 1 and link.unpack_range(un[0][1]) == (1, oldest - 1)
    assert un[0][0].seq == last + 1
    assert rig.dig.counters["unavailable_seqs"] == oldest - 1
    # Asking for a range wholly below the ring: UNAVAILABLE names everything below the oldest held
    # packet, beyond the range asked for (one round trip settles a long outage).
    oldest = rig.dig.ring.oldest
    rig.send(link.T_RESEND, link.pack_range(1, 2))
    un = [link.unpack_range(p) for h, p in rig.packets() if h.ptype == link.T_UNAVAILABLE]
    assert un == [(1, oldest - 1)] and oldest - 1 > 2, un
    last = rig.dig.seq - 1
    # Asking for packets never sent answers nothing for them.
    rig.send(link.T_RESEND, link.pack_range(last + 5, last + 9))
    assert rig.packets() == [] and rig.dig.counters["resend_future"] == 1
    assert b["ring_bytes"] == BOARD["acquisition"]["ring_bytes"]   # the shared board is untouched


def case_digitizer_commands_and_replies():
    rig = Rig()
    rig.packets()
    other = [r for r in rig.dig.rates_mhz if r != rig.dig.rate_mhz][0]
    rig.send(link.T_COMMAND, link.pack_command(link.CMD_SET_RATE, struct.pack(">I", other)))
    got = rig.packets()
    reply = [link.unpack_reply(p) for h, p in got if h.ptype == link.T_REPLY]
    assert reply == [(0, link.R_OK, link.CMD_SET_RATE, b"")]
    assert rig.adc.rate == other and rig.dig.rate_mhz == other
    rig.period = 1000000000 // other                  # the ADC now converts at the new rate
    assert [h.ptype for h, _ in got][-1] == link.T_HELLO
    rig.send(link.T_COMMAND, link.pack_command(link.CMD_SET_RATE, struct.pack(">I", 123)))
    rig.send(link.T_COMMAND, link.pack_command(link.CMD_SET_RATE, b"\x01"))
    rig.send(link.T_COMMAND, link.pack_command(0x7E))
    rig.send(link.T_COMMAND, link.pack_command(link.CMD_HELLO))
    got = rig.packets()
    replies = [link.unpack_reply(p)[:3] for h, p in got if h.ptype == link.T_REPLY]
    assert replies == [(1, link.R_BAD_ARGS, 1), (2, link.R_BAD_ARGS, 1), (3, link.R_UNSUPPORTED, 0x7E),
                       (4, link.R_OK, link.CMD_HELLO)]
    assert rig.dig.counters["bad_commands"] == 3
    # Calibration (the sim board has a calibration output).
    assert rig.dig.cal_enabled
    rig.send(link.T_COMMAND, link.pack_command(link.CMD_START_CALIBRATION, struct.pack(">HHB", 2, 1000, 1)))
    assert rig.dig.calibrating
    rig.run(rig.dig.spp)
    data = [link.unpack_data(p) for h, p in rig.packets() if h.ptype == link.T_DATA]
    assert data and data[-1][3] & link.S_CALIBRATION
    rig.run(2 * rig.dig.spp)
    assert not rig.dig.calibrating                    # ended after its 2 s
    rig.send(link.T_COMMAND, link.pack_command(link.CMD_START_CALIBRATION, struct.pack(">HHB", 2, 0, 1)))
    rig.send(link.T_COMMAND, link.pack_command(link.CMD_STOP_CALIBRATION))
    # Reboot: replied first, then requested; a repeated COMMAND (same gateway seq) is answered again
    # but not executed twice.
    rig.packets()
    rig.send(link.T_COMMAND, link.pack_command(link.CMD_REBOOT))
    assert rig.dig.reboot_requested
    rig.dig.reboot_requested = False
    rig.gw_seq -= 1
    rig.send(link.T_COMMAND, link.pack_command(link.CMD_REBOOT))
    assert not rig.dig.reboot_requested and rig.dig.counters["duplicate_commands"] == 1
    got = rig.packets()
    assert len([1 for h, p in got if h.ptype == link.T_REPLY]) == 2


def case_digitizer_set_packet_ms_shortens_packets_and_back():
    rig = Rig()
    spp0 = rig.dig.spp
    ms0 = rig.dig.packet_ms
    rig.run(spp0 + spp0 // 2)                         # one full packet, half of the next
    rig.packets()
    rig.send(link.T_COMMAND, link.pack_command(link.CMD_SET_PACKET_MS, struct.pack(">H", ms0 // 4)))
    got = rig.packets()
    kinds = [h.ptype for h, _ in got]
    assert kinds == [link.T_REPLY, link.T_DATA, link.T_HELLO], kinds
    assert link.unpack_reply(got[0][1])[:3] == (0, link.R_OK, link.CMD_SET_PACKET_MS)
    half = link.unpack_data(got[1][1])
    assert len(half[6][0]) == spp0 // 2               # the partial packet was closed
    hello = link.unpack_hello(got[2][1])
    assert hello["samples_per_packet"] == spp0 // 4 and hello["capabilities"] & link.C_SET_PACKET_MS
    rig.run(spp0)
    data = [link.unpack_data(p) for h, p in rig.packets() if h.ptype == link.T_DATA]
    assert [len(d[6][0]) for d in data] == [spp0 // 4] * 4
    t0 = data[0][0]
    for k, d in enumerate(data):                      # still one continuous timeline
        assert d[0] == t0 + k * (spp0 // 4) * rig.period
    assert data[0][0] == half[0] + (spp0 // 2) * rig.period
    # Refused: a length that is not a whole number of samples, one too large, bad arguments.
    rig.send(link.T_COMMAND, link.pack_command(link.CMD_SET_PACKET_MS, struct.pack(">H", 3)))
    rig.send(link.T_COMMAND, link.pack_command(link.CMD_SET_PACKET_MS, struct.pack(">H", 60000)))
    rig.send(link.T_COMMAND, link.pack_command(link.CMD_SET_PACKET_MS, b"\x01"))
    replies = [link.unpack_reply(p)[1] for h, p in rig.packets() if h.ptype == link.T_REPLY]
    assert replies == [link.R_BAD_ARGS] * 3 and rig.dig.spp == spp0 // 4
    # 0: back to the board's own default.
    rig.send(link.T_COMMAND, link.pack_command(link.CMD_SET_PACKET_MS, struct.pack(">H", 0)))
    assert rig.dig.packet_ms == ms0 and rig.dig.spp == spp0


def case_digitizer_rejects_forged_and_foreign_packets():
    rig = Rig()
    rig.packets()
    rig.send(link.T_COMMAND, link.pack_command(link.CMD_REBOOT), key=unhex(V["other_key"]))
    rig.send(link.T_COMMAND, link.pack_command(link.CMD_REBOOT), board_id=999)
    rig.uart.rx += b"\x01\x02\x03\x00" + bytes(range(1, 200)) + b"\x00"
    rig.dig.poll()
    assert not rig.dig.reboot_requested
    c = rig.dig.counters
    assert c["rx_hmac_errors"] == 1 and c["wrong_board"] == 1 and c["rx_framing_errors"] + c["rx_crc_errors"] == 2
    assert c["rx_garbage_bytes"] == 0 and c["rx_rejected_frame_bytes"] > 3 + 199
    assert rig.packets() == []


def case_digitizer_flags_clipping_tamper_supply():
    tamper = Level(0)
    supply = Level(65535)
    rig = Rig(tamper=tamper, supply=supply)
    spp = rig.dig.spp
    rig.run(spp)
    rig.adc.override = [0, 0x7FFFFF, 0, -0x800000][:rig.nch]
    rig.run(1)
    rig.adc.override = None
    tamper.v = 1
    supply.v = 1000
    rig.run(spp - 1)
    pk = rig.packets()
    data = [link.unpack_data(p) for h, p in pk if h.ptype == link.T_DATA]
    assert data[0][3] == 0 and data[0][4] == 0
    st = data[1][3]
    assert data[1][4] == (0b1010 & ((1 << rig.nch) - 1)), data[1][4]
    assert st & link.S_TAMPER and st & link.S_SUPPLY_LOW
    soh = [link.unpack_soh(p) for h, p in pk if h.ptype == link.T_SOH]
    assert soh and soh[0]["status"] & link.S_TAMPER   # sent at once when the enclosure opened
    assert rig.dig.counters["tamper_events"] == 1


def case_digitizer_splits_blocks_at_clock_steps_and_lost_samples():
    rig = Rig()
    spp = rig.dig.spp
    rig.run(spp // 2)
    rig.tb.on_gnss_time(rig.utc0 + 7000000)           # GNSS relabels: the clock steps 7 s
    rig.run(spp // 2)
    rig.adc.fail = True                               # one conversion lost on the SPI bus
    rig.run(spp)
    data = [link.unpack_data(p) for h, p in rig.packets() if h.ptype == link.T_DATA]
    assert data[1][3] & link.S_CLOCK_STEP and not data[0][3] & link.S_CLOCK_STEP
    assert data[1][0] - data[0][0] > 6000000
    assert rig.dig.counters["adc_errors"] == 1 and rig.dig.counters["timeline_breaks"] >= 1
    assert any(d[3] & link.S_ADC_FAULT for d in data)
    for d in data:                                    # every block is evenly spaced in itself
        assert len(d[6][0]) <= spp


def case_digitizer_names_its_run_and_ignores_packets_for_another():
    # Every packet of a run carries its boot number, drawn at random (never 0) at each boot; the
    # gateway's packets for another run (the board this one replaced, or its own previous boot)
    # are ignored: their ACK and RESEND numbers name that run's packets, not ours.
    rig = Rig()
    rig.run(2 * rig.dig.spp)
    pk = rig.packets()
    boot = rig.dig.boot
    assert 0 < boot <= 0xFFFF and all(h.boot == boot for h, p in pk)
    boots = set([boot])
    for _ in range(8):
        boots.add(Rig().dig.boot)
    assert len(boots) > 1 and 0 not in boots
    assert Rig(boot=0x1234).dig.boot == 0x1234
    other = boot % 0xFFFF + 1
    rig.send(link.T_ACK, link.pack_ack(1), boot=other)
    rig.send(link.T_RESEND, link.pack_range(0, 1), boot=other)
    rig.send(link.T_COMMAND, link.pack_command(link.CMD_REBOOT), boot=other)
    assert rig.dig.counters["other_boot"] == 3 and rig.dig.ring.acked != 1 and not rig.dig.reboot_requested
    assert rig.packets() == [] and rig.dig.counters["resend_requests"] == 0
    rig.send(link.T_ACK, link.pack_ack(1), boot=boot)      # ours, and 0 (a gateway that has not
    rig.send(link.T_RESEND, link.pack_range(0, 0))         # heard us yet) are served
    assert rig.dig.ring.acked == 1 and rig.dig.counters["resend_requests"] == 1


def case_digitizer_ack_and_ring_overrun_flag():
    rig = Rig(ring_bytes=20000, ring_packets=64)
    rig.run(2 * rig.dig.spp)
    rig.packets()
    rig.send(link.T_ACK, link.pack_ack(1))
    assert rig.dig.ring.acked == 1
    rig.send(link.T_ACK, link.pack_ack(10 ** 6))      # acknowledges the future: ignored, counted
    assert rig.dig.ring.acked == 1 and rig.dig.counters["rx_payload_errors"] == 1
    rig.run(60 * rig.dig.spp)                         # ~420-byte packets: 60 s overflow 20000 bytes
    data = [link.unpack_data(p) for h, p in rig.packets() if h.ptype == link.T_DATA]
    assert any(d[3] & link.S_RING_OVERRUN for d in data)
    assert rig.dig.counters["ring_overrun"] > 0


def case_digitizer_slow_uart_keeps_packets_in_ring():
    rig = Rig()
    rig.uart.limit = 0                                # the line is stalled
    rig.run(60 * rig.dig.spp)                         # ~25 kB: more than the 16 kB transmit queue
    assert rig.dig.counters["tx_dropped_packets"] > 0
    assert len(rig.dig.ring) == rig.dig.seq            # everything is still in the ring
    rig.uart.limit = None
    rig.dig.poll()
    assert len(rig.uart.tx) > 0


# ---------------------------------------------------------------- GNSS

def case_gnss_rmc_vectors():
    for line, utc in V["rmc"]:
        assert gnss.parse_rmc(line) == utc, line
        assert gnss.parse_rmc(line.encode()) == utc
    assert gnss.days_from_civil(1970, 1, 1) == 0
    assert gnss.days_from_civil(2000, 3, 1) == 11017
