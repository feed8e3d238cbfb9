# Serial link protocol v1: the one definition of the wire format between the digitizer board and
# the gateway.  Imported by the firmware (MicroPython), by the HIL simulator and by the edge
# (CPython); docs/link-protocol.md describes it byte by byte.
#
# Owns: COBS framing, the packet header, HMAC-SHA256 tags, CRC-32, the payload layouts of every
# packet type, difference packing of samples, and a sans-IO deframer.  Owns no I/O, no clocks and no
# session logic (resend policy lives in edge/ingest.py, ring buffer in firmware/ring.py).
#
# Cross-runtime subset only: struct, binascii, hashlib (+ optional CPython accelerators imported
# under try/except).  No typing, no dataclasses.
#
# Wire packet (before COBS):
#   header (16 bytes, big-endian)
#     0  u8   version (1)
#     1  u8   type (T_*)
#     2  u16  board id
#     4  u16  epoch: boot counter of the board; the sequence restarts at 0 when it changes
#     6  u8   flags (F_*)
#     7  u8   reserved (0)
#     8  u32  sequence number (board->gateway: one space for every packet it sends;
#             gateway->board: the gateway's own space)
#     12 u16  payload length
#     14 u16  boot: a random number the board draws at each boot, never 0 (0: not stated, older
#             firmware).  (board id, epoch, boot) names one run of one board: a replaced board or
#             one whose stored epoch was wiped restarts at an epoch and seq the gateway has seen
#             before, but not with the same boot.  Gateway->board packets carry the boot of the
#             board run they are meant for (0 before the gateway has heard the board).
#   payload (payload length bytes, <= MAX_PAYLOAD)
#   tag     (16 bytes) HMAC-SHA256(key, header | payload), truncated
#   crc     (4 bytes)  CRC-32/ISO-HDLC (binascii.crc32) of header | payload | tag
# On the line: 0x00 COBS(packet) 0x00.  The leading delimiter makes every frame start clean even
# when the previous one lost its trailing 0x00 on the line (it is swallowed alone instead of taking
# the next packet with it); back to back, the two delimiters are an empty frame, which the
# deframer skips without counting it as garbage.

import struct
import binascii
import hashlib

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):  # type: ignore[misc]  # CPython shim; the stub's const is a generic
        return x

VERSION = const(1)

# Packet types.  Board -> gateway below 0x80, gateway -> board from 0x80.
T_HELLO = const(0x01)
T_DATA = const(0x02)
T_SOH = const(0x03)
T_REPLY = const(0x04)
T_UNAVAILABLE = const(0x05)
T_ACK = const(0x81)
T_RESEND = const(0x82)
T_COMMAND = const(0x83)
TYPE_NAMES = {
    T_HELLO: "HELLO", T_DATA: "DATA", T_SOH: "SOH", T_REPLY: "REPLY",
    T_UNAVAILABLE: "UNAVAILABLE", T_ACK: "ACK", T_RESEND: "RESEND", T_COMMAND: "COMMAND",
}

# Header flags.
F_RETRANSMIT = const(0x01)   # a copy served from the ring buffer in answer to RESEND

HEADER_FMT = ">BBHHBBIHH"
HEADER_SIZE = const(16)
TAG_SIZE = const(16)
CRC_SIZE = const(4)
OVERHEAD = const(36)          # HEADER_SIZE + TAG_SIZE + CRC_SIZE
MAX_PAYLOAD = const(4096)
MAX_PACKET = const(4132)      # HEADER_SIZE + MAX_PAYLOAD + TAG_SIZE + CRC_SIZE
# COBS adds one byte per 254 plus one; anything longer between delimiters is garbage.
MAX_ENCODED = const(4150)

# DATA payload.
#   0  i64  time of the first sample, microseconds since 1970-01-01 UTC (GNSS/PPS disciplined)
#   8  u32  sample rate in millihertz (100 sps = 100000)
#   12 u16  samples per channel (n)
#   14 u8   number of channels (c)
#   15 u8   time quality (TQ_*)
#   16 u16  status flags (S_*)
#   18 u16  clip mask: bit i set = channel slot i reached the ADC's full scale in this packet
#   20 c x u8    channel ids (the board's channel index of each slot)
#   then per channel slot: u8 encoding (ENC_*), then the samples:
#     ENC_I32: n x i32
#     ENC_D8 / ENC_D16: i32 first sample, then (n-1) first differences as i8 / i16
DATA_FMT = ">qIHBBHH"
DATA_FIXED = const(20)
ENC_I32 = const(0)
ENC_D8 = const(1)
ENC_D16 = const(2)
MAX_CHANNELS = const(16)

TQ_UNLOCKED = const(0)
TQ_HOLDOVER = const(1)
TQ_LOCKED = const(2)
TQ_NAMES = ("unlocked", "holdover", "locked")

S_TAMPER = const(0x0001)        # enclosure opened / tamper input active
S_CALIBRATION = const(0x0002)   # calibration signal applied
S_SUPPLY_LOW = const(0x0004)    # supply voltage below the board's limit
S_CLOCK_STEP = const(0x0008)    # the time base was stepped inside or just before this packet
S_RING_OVERRUN = const(0x0010)  # the ring buffer overwrote packets the gateway had not acknowledged
S_ADC_FAULT = const(0x0020)     # ADC did not answer / DRDY stall
S_NO_TIME = const(0x0040)       # SOH only: the time base was never set (no GNSS time + PPS yet);
                                # the board discards its samples instead of sending DATA
STATUS_NAMES = (
    (S_TAMPER, "tamper"), (S_CALIBRATION, "calibration"), (S_SUPPLY_LOW, "supply_low"),
    (S_CLOCK_STEP, "clock_step"), (S_RING_OVERRUN, "ring_overrun"), (S_ADC_FAULT, "adc_fault"),
    (S_NO_TIME, "no_time"),
)

# SOH payload (fixed, 32 bytes):
#   0  i64  board time of this report, us since 1970 (0 while the time base was never set: S_NO_TIME)
#   8  i64  time of the last GNSS/PPS synchronisation, us since 1970 (0 = never)
#   16 i32  clock differential: board clock minus PPS at the last pulse, microseconds
#   20 u16  supply voltage, millivolts
#   22 i16  temperature, centi-degrees Celsius
#   24 u8   time quality (TQ_*)
#   25 u8   reserved
#   26 u16  status flags (S_*)
#   28 u16  ring fill: packets held in the ring buffer
#   30 u16  ring capacity: packets
SOH_FMT = ">qqiHhBBHHH"
SOH_SIZE = const(32)

# HELLO payload:
#   0  u32  capabilities (C_*)
#   4  u32  current sample rate, mHz
#   8  u16  ring capacity, packets
#   10 u16  samples per channel per DATA packet at the current rate
#   12 u8   number of channels (c)
#   13 u8   length of the firmware version string (v)
#   14 u8   length of the board name (b)
#   15 u8   reserved
#   16 c x u8 channel ids, then v bytes version (ASCII), then b bytes board name (ASCII)
HELLO_FMT = ">IIHHBBBB"
HELLO_FIXED = const(16)
C_DIFF_PACKING = const(0x0001)
C_CALIBRATION = const(0x0002)
C_RESEND = const(0x0004)
C_SET_RATE = const(0x0008)
C_SET_PACKET_MS = const(0x0010)

# REPLY payload:  u32 sequence number of the COMMAND answered, u8 status (R_*), u8 command code,
#                 u16 length, then that many bytes of result.
REPLY_FMT = ">IBBH"
R_OK = const(0)
R_BAD_ARGS = const(1)
R_UNSUPPORTED = const(2)
R_BUSY = const(3)

# UNAVAILABLE payload: u32 first, u32 last (inclusive): board sequence numbers asked for in a RESEND
# that are no longer in the ring buffer (an unrecoverable gap, reported exactly).
# ACK payload: u32 highest sequence number received contiguously (everything <= it is delivered).
# RESEND payload: u32 first, u32 last (inclusive); at most MAX_RESEND packets per request.
RANGE_FMT = ">II"
MAX_RESEND = const(64)

# COMMAND payload: u8 command code (CMD_*), u8 reserved, u16 length, then arguments.
COMMAND_FMT = ">BBH"
CMD_SET_RATE = const(1)          # args: u32 rate in mHz
CMD_START_CALIBRATION = const(2)  # args: u16 duration s, u16 period ms, u8 channel mask
CMD_STOP_CALIBRATION = const(3)  # no args
CMD_REBOOT = const(4)            # no args
CMD_HELLO = const(5)             # no args: send HELLO again
CMD_SET_PACKET_MS = const(6)     # args: u16 DATA packet length in ms (0: the board's default)
COMMAND_NAMES = {CMD_SET_RATE: "set_rate", CMD_START_CALIBRATION: "start_calibration",
                 CMD_STOP_CALIBRATION: "stop_calibration", CMD_REBOOT: "reboot", CMD_HELLO: "hello",
                 CMD_SET_PACKET_MS: "set_packet_ms"}


class LinkError(ValueError):
    """A packet could not be accepted.  Subclasses say why; the deframer counts them."""
    reason = "invalid"


class FramingError(LinkError):
    reason = "framing"      # COBS structure broken, or too short to hold a header


class CrcError(LinkError):
    reason = "crc"          # line noise: CRC-32 mismatch


class AuthError(LinkError):
    reason = "hmac"         # CRC fine but the HMAC tag is wrong: wrong key or tampering


class VersionError(LinkError):
    reason = "version"


class LengthError(LinkError):
    reason = "length"       # a length field disagrees with the bytes present or exceeds a limit


class PayloadError(LinkError):
    reason = "payload"      # payload layout invalid for its type


# ---------------------------------------------------------------- COBS (Cheshire & Baker 1997)
# The pure versions below run everywhere; on CPython the `cobs` package (C) is used when
# installed, and tests check both give identical results.

def _cobs_encode_py(data):
    # A block that reaches 254 data bytes (code 0xFF) is closed; a new one is opened only if more
    # data follows, so that, like the reference implementation, 254 non-zero bytes at the end do
    # not get an extra trailing code byte.
    out = bytearray()
    out.append(0)          # placeholder for the first code byte
    code_pos = 0
    code = 1
    n = len(data)
    for i in range(n):
        b = data[i]
        if b == 0:
            out[code_pos] = code
            code_pos = len(out)
            out.append(0)
            code = 1
        else:
            out.append(b)
            code += 1
            if code == 0xFF:
                out[code_pos] = code
                if i + 1 == n:
                    return bytes(out)
                code_pos = len(out)
                out.append(0)
                code = 1
    out[code_pos] = code
    return bytes(out)


def _cobs_decode_py(data):
    out = bytearray()
    i = 0
    n = len(data)
    while i < n:
        code = data[i]
        if code == 0:
            raise FramingError("COBS: zero byte inside a frame at offset %d" % i)
        end = i + code
        if end > n:
            raise FramingError("COBS: code at offset %d points past the end" % i)
        chunk = data[i + 1:end]
        if 0 in chunk:
            raise FramingError("COBS: zero byte inside a frame")
        out += chunk
        i = end
        if code < 0xFF and i < n:
            out.append(0)
    return bytes(out)


try:
    from cobs import cobs as _cobs_lib  # type: ignore[import-not-found]  # CPython fast path, optional

    def cobs_encode(data):
        return _cobs_lib.encode(bytes(data))

    def cobs_decode(data):
        try:
            return _cobs_lib.decode(bytes(data))
        except _cobs_lib.DecodeError as err:
            raise FramingError("COBS: " + str(err))
except ImportError:
    cobs_encode = _cobs_encode_py
    cobs_decode = _cobs_decode_py


# ---------------------------------------------------------------- HMAC-SHA256
# micropython-lib's hmac is not in the rp2 firmware image, so the board computes HMAC from
# hashlib.sha256 (RFC 2104).  On CPython the C-backed stdlib hmac is used; tests cross-check.

class Authenticator:
    """HMAC-SHA256 with a per-board key, truncated to TAG_SIZE bytes."""

    def __init__(self, key):
        if not isinstance(key, (bytes, bytearray)) or len(key) < 16:
            raise ValueError("HMAC key must be at least 16 bytes")
        key = bytes(key)
        if len(key) > 64:
            key = hashlib.sha256(key).digest()
        key = key + bytes(64 - len(key))
        self._ipad = bytes([b ^ 0x36 for b in key])
        self._opad = bytes([b ^ 0x5C for b in key])
        self._key = key
        self._std = None
        try:
            import hmac as _hmac  # type: ignore[import-not-found]  # CPython only; board: RFC 2104 below
            if hasattr(_hmac, "digest"):
                self._std = _hmac
        except ImportError:
            pass

    def digest(self, msg):
        if self._std is not None:
            return self._std.digest(self._key, msg, "sha256")
        inner = hashlib.sha256(self._ipad)
        inner.update(msg)
        outer = hashlib.sha256(self._opad)
        outer.update(inner.digest())
        return outer.digest()

    def digest_pure(self, msg):
        inner = hashlib.sha256(self._ipad)
        inner.update(msg)
        outer = hashlib.sha256(self._opad)
        outer.update(inner.digest())
        return outer.digest()

    def tag(self, msg):
        return self.digest(msg)[:TAG_SIZE]


def _equal(a, b):
    # Constant time comparison (MicroPython's hmac has no compare_digest).
    if len(a) != len(b):
        return False
    acc = 0
    for i in range(len(a)):
        acc |= a[i] ^ b[i]
    return acc == 0


def crc32(data):
    return binascii.crc32(data) & 0xFFFFFFFF


# ---------------------------------------------------------------- packets

class Header:
    __slots__ = ("version", "ptype", "board_id", "epoch", "flags", "seq", "length", "boot")

    def __init__(self, ptype, board_id, epoch, seq, length, flags=0, version=VERSION, boot=0):
        self.version = version
        self.ptype = ptype
        self.board_id = board_id
        self.epoch = epoch
        self.flags = flags
        self.seq = seq
        self.length = length
        self.boot = boot

    def __repr__(self):
        return "Header(%s board=%d epoch=%d boot=%d seq=%d len=%d flags=%d)" % (
            TYPE_NAMES.get(self.ptype, str(self.ptype)), self.board_id, self.epoch, self.boot, self.seq,
            self.length, self.flags)


def build_packet(auth, ptype, board_id, epoch, seq, payload, flags=0, boot=0):
    """Packet bytes (not yet COBS-encoded): header | payload | tag | crc."""
    n = len(payload)
    if n > MAX_PAYLOAD:
        raise LengthError("payload of %d bytes exceeds %d" % (n, MAX_PAYLOAD))
    buf = bytearray(HEADER_SIZE + n + TAG_SIZE + CRC_SIZE)
    struct.pack_into(HEADER_FMT, buf, 0, VERSION, ptype, board_id, epoch, flags, 0, seq, n, boot)
    buf[HEADER_SIZE:HEADER_SIZE + n] = payload
    end = HEADER_SIZE + n
    buf[end:end + TAG_SIZE] = auth.tag(memoryview(buf)[:end])
    end += TAG_SIZE
    struct.pack_into(">I", buf, end, crc32(memoryview(buf)[:end]))
    return bytes(buf)


def encode(auth, ptype, board_id, epoch, seq, payload, flags=0, boot=0):
    """Wire bytes: 0x00 + COBS(packet) + 0x00."""
    return frame(build_packet(auth, ptype, board_id, epoch, seq, payload, flags, boot))


def frame(packet):
    """Wire bytes for an already built packet: 0x00 + COBS(packet) + 0x00 (a delimiter on both
    sides, so that a frame whose trailing 0x00 is lost on the line costs only itself)."""
    return b"\x00" + cobs_encode(packet) + b"\x00"


FRAME_OVERHEAD = const(2)     # delimiters per frame on the line (plus COBS code bytes)


def retransmit_copy(auth, packet):
    """A copy of an already built *packet* with F_RETRANSMIT set, re-tagged and re-checksummed
    (the flag is covered by the tag).  Used to serve RESEND from the ring buffer."""
    n = len(packet)
    if n < OVERHEAD:
        raise LengthError("packet of %d bytes is shorter than the %d-byte minimum" % (n, OVERHEAD))
    buf = bytearray(packet)
    buf[6] |= F_RETRANSMIT
    end = n - TAG_SIZE - CRC_SIZE
    buf[end:end + TAG_SIZE] = auth.tag(memoryview(buf)[:end])
    end += TAG_SIZE
    struct.pack_into(">I", buf, end, crc32(memoryview(buf)[:end]))
    return bytes(buf)


def parse_packet(auth, packet):
    """Check and split a decoded (un-COBSed) packet.  Returns (Header, payload bytes).

    Order of checks: size, CRC (line noise), version, length, HMAC (tampering or wrong key).
    """
    n = len(packet)
    if n < OVERHEAD:
        raise FramingError("packet of %d bytes is shorter than the %d-byte minimum" % (n, OVERHEAD))
    if n > MAX_PACKET:
        raise LengthError("packet of %d bytes exceeds %d" % (n, MAX_PACKET))
    mv = memoryview(packet)
    (crc,) = struct.unpack_from(">I", packet, n - CRC_SIZE)
    if crc32(mv[:n - CRC_SIZE]) != crc:
        raise CrcError("CRC-32 mismatch")
    version, ptype, board_id, epoch, flags, _r1, seq, length, boot = struct.unpack_from(HEADER_FMT, packet, 0)
    if version != VERSION:
        raise VersionError("unknown link protocol version %d (this side speaks %d)" % (version, VERSION))
    if length != n - OVERHEAD:
        raise LengthError("payload length field %d but %d bytes present" % (length, n - OVERHEAD))
    end = HEADER_SIZE + length
    if not _equal(auth.tag(mv[:end]), mv[end:end + TAG_SIZE]):
        raise AuthError("HMAC tag mismatch (wrong key or tampering) for board %d seq %d" % (board_id, seq))
    return Header(ptype, board_id, epoch, seq, length, flags, version, boot), bytes(mv[HEADER_SIZE:end])


def decode(auth, wire_frame):
    """COBS-decode one frame (without its 0x00 delimiter) and parse it."""
    if len(wire_frame) > MAX_ENCODED:
        raise LengthError("frame of %d bytes exceeds %d" % (len(wire_frame), MAX_ENCODED))
    return parse_packet(auth, cobs_decode(wire_frame))


class Deframer:
    """Sans-IO splitter of the byte stream into COBS frames.

    ``feed(data)`` returns the complete frames (bytes, without delimiter) found so far.  Empty
    frames (two delimiters in a row: the trailing 0x00 of one frame and the leading 0x00 of the
    next) are skipped and are not garbage.  Bytes beyond MAX_ENCODED without a delimiter are
    discarded and counted as garbage; the deframer resynchronises at the next 0x00.  Memory use is
    bounded by MAX_ENCODED.
    """

    def __init__(self, max_frame=MAX_ENCODED):
        self._buf = bytearray()
        self._max = max_frame
        self._discarding = False
        self.garbage_bytes = 0
        self.overlong_frames = 0

    def feed(self, data):
        frames = []
        start = 0
        n = len(data)
        while start < n:
            i = data.find(b"\x00", start)
            if i < 0:
                chunk_len = n - start
                if self._discarding:
                    self.garbage_bytes += chunk_len
                elif len(self._buf) + chunk_len > self._max:
                    self.garbage_bytes += len(self._buf) + chunk_len
                    self.overlong_frames += 1
                    self._buf = bytearray()
                    self._discarding = True
                else:
                    self._buf += data[start:]
                break
            if self._discarding:
                self.garbage_bytes += i - start
                self._discarding = False
            elif len(self._buf) + (i - start) > self._max:
                self.garbage_bytes += len(self._buf) + (i - start)
                self.overlong_frames += 1
            else:
                self._buf += data[start:i]
                if self._buf:
                    frames.append(bytes(self._buf))
            self._buf = bytearray()
            start = i + 1
        return frames


# ---------------------------------------------------------------- payloads

def pack_data(t_first_us, rate_mhz, chan_ids, channels, tq=TQ_LOCKED, status=0, clip_mask=0, pack=True):
    """DATA payload.  *channels* is a list (one per slot) of sequences of ints (int32 range), all of
    the same length.  With *pack*, each slot uses the narrowest difference encoding that fits."""
    c = len(channels)
    if c != len(chan_ids) or c == 0 or c > MAX_CHANNELS:
        raise PayloadError("channel count %d invalid" % c)
    n = len(channels[0])
    parts = [struct.pack(DATA_FMT, t_first_us, rate_mhz, n, c, tq, status, clip_mask), bytes(chan_ids)]
    for samples in channels:
        if len(samples) != n:
            raise PayloadError("channels have different sample counts")
        parts.append(_pack_channel(samples, pack))
    payload = b"".join(parts)
    if len(payload) > MAX_PAYLOAD:
        raise LengthError("DATA payload of %d bytes exceeds %d; send fewer samples per packet" % (
            len(payload), MAX_PAYLOAD))
    return payload


def _pack_channel(samples, pack):
    n = len(samples)
    enc = ENC_I32
    if pack and n > 1:
        lo = 0
        hi = 0
        prev = samples[0]
        for i in range(1, n):
            d = samples[i] - prev
            prev = samples[i]
            if d < lo:
                lo = d
            elif d > hi:
                hi = d
        if -128 <= lo and hi <= 127:
            enc = ENC_D8
        elif -32768 <= lo and hi <= 32767:
            enc = ENC_D16
    if enc == ENC_I32:
        return bytes([ENC_I32]) + struct.pack(">%di" % n, *samples)
    diffs = [samples[i] - samples[i - 1] for i in range(1, n)]
    fmt = ">i%d%s" % (n - 1, "b" if enc == ENC_D8 else "h")
    return bytes([enc]) + struct.pack(fmt, samples[0], *diffs)


def data_size(n, c, encs):
    """Payload size of a DATA packet with n samples per channel and the given slot encodings."""
    size = DATA_FIXED + c
    for e in encs:
        size += 1 + (4 * n if e == ENC_I32 else 4 + (n - 1) * (1 if e == ENC_D8 else 2))
    return size


def unpack_data(payload):
    """Parse a DATA payload; returns (t_first_us, rate_mhz, tq, status, clip_mask, chan_ids, channels)
    with channels a list of lists of ints.  Every length is checked before it is used."""
    p = len(payload)
    if p < DATA_FIXED:
        raise PayloadError("DATA payload of %d bytes is shorter than its %d-byte fixed part" % (p, DATA_FIXED))
    t_first, rate, n, c, tq, status, clip = struct.unpack_from(DATA_FMT, payload, 0)
    if c == 0 or c > MAX_CHANNELS:
        raise PayloadError("DATA channel count %d outside 1..%d" % (c, MAX_CHANNELS))
    if n == 0:
        raise PayloadError("DATA with zero samples")
    if rate == 0:
        raise PayloadError("DATA sample rate is zero")
    if tq > TQ_LOCKED:
        raise PayloadError("DATA time quality %d unknown" % tq)
    off = DATA_FIXED
    if off + c > p:
        raise LengthError("DATA channel ids run past the end")
    chan_ids = list(payload[off:off + c])
    off += c
    channels = []
    for slot in range(c):
        if off >= p:
            raise LengthError("DATA slot %d missing" % slot)
        enc = payload[off]
        off += 1
        if enc == ENC_I32:
            need = 4 * n
            fmt = ">%di" % n
        elif enc == ENC_D8:
            need = 4 + (n - 1)
            fmt = ">i%db" % (n - 1)
        elif enc == ENC_D16:
            need = 4 + 2 * (n - 1)
            fmt = ">i%dh" % (n - 1)
        else:
            raise PayloadError("DATA slot %d: unknown encoding %d" % (slot, enc))
        if off + need > p:
            raise LengthError("DATA slot %d: %d bytes needed, %d left" % (slot, need, p - off))
        vals = struct.unpack_from(fmt, payload, off)
        off += need
        if enc == ENC_I32:
            channels.append(list(vals))
        else:
            acc = vals[0]
            out = [acc]
            for d in vals[1:]:
                acc += d
                out.append(acc)
            if acc > 0x7FFFFFFF or acc < -0x80000000:
                raise PayloadError("DATA slot %d: samples overflow int32" % slot)
            channels.append(out)
    if off != p:
        raise LengthError("DATA payload has %d trailing bytes" % (p - off))
    return t_first, rate, tq, status, clip, chan_ids, channels


def pack_soh(t_us, last_sync_us, clock_diff_us, supply_mv, temp_cc, tq, status, ring_fill, ring_capacity):
    return struct.pack(SOH_FMT, t_us, last_sync_us, clock_diff_us, supply_mv, temp_cc, tq, 0, status,
                       ring_fill, ring_capacity)


def unpack_soh(payload):
    if len(payload) != SOH_SIZE:
        raise PayloadError("SOH payload must be %d bytes, got %d" % (SOH_SIZE, len(payload)))
    t, last, diff, mv, temp, tq, _r, status, fill, cap = struct.unpack(SOH_FMT, payload)
    if tq > TQ_LOCKED:
        raise PayloadError("SOH time quality %d unknown" % tq)
    return {"time_us": t, "last_sync_us": last, "clock_diff_us": diff, "supply_mv": mv,
            "temperature_cc": temp, "time_quality": tq, "status": status, "ring_fill": fill,
            "ring_capacity": cap}


def pack_hello(capabilities, rate_mhz, ring_capacity, samples_per_packet, chan_ids, version, name):
    v = version.encode() if isinstance(version, str) else bytes(version)
    b = name.encode() if isinstance(name, str) else bytes(name)
    if len(v) > 255 or len(b) > 255 or len(chan_ids) > MAX_CHANNELS:
        raise PayloadError("HELLO field too long")
    return struct.pack(HELLO_FMT, capabilities, rate_mhz, ring_capacity, samples_per_packet,
                       len(chan_ids), len(v), len(b), 0) + bytes(chan_ids) + v + b


def unpack_hello(payload):
    if len(payload) < HELLO_FIXED:
        raise PayloadError("HELLO payload too short")
    caps, rate, cap, spp, c, lv, lb, _r = struct.unpack_from(HELLO_FMT, payload, 0)
    if c > MAX_CHANNELS:
        raise PayloadError("HELLO channel count %d exceeds %d" % (c, MAX_CHANNELS))
    if HELLO_FIXED + c + lv + lb != len(payload):
        raise LengthError("HELLO lengths disagree with the payload size")
    off = HELLO_FIXED
    chan_ids = list(payload[off:off + c])
    off += c
    version = bytes(payload[off:off + lv])
    off += lv
    name = bytes(payload[off:off + lb])
    try:
        version = version.decode()  # type: ignore[assignment]  # bytes -> str on purpose
        name = name.decode()  # type: ignore[assignment]  # bytes -> str on purpose
    except UnicodeError:
        raise PayloadError("HELLO strings are not ASCII")
    return {"capabilities": caps, "rate_mhz": rate, "ring_capacity": cap, "samples_per_packet": spp,
            "channels": chan_ids, "firmware": version, "board": name}


def pack_range(first, last):
    return struct.pack(RANGE_FMT, first, last)


def unpack_range(payload):
    if len(payload) != 8:
        raise PayloadError("range payload must be 8 bytes, got %d" % len(payload))
    first, last = struct.unpack(RANGE_FMT, payload)
    if last < first:
        raise PayloadError("range %d..%d is reversed" % (first, last))
    return first, last


def pack_ack(seq):
    return struct.pack(">I", seq)


def unpack_ack(payload):
    if len(payload) != 4:
        raise PayloadError("ACK payload must be 4 bytes, got %d" % len(payload))
    return struct.unpack(">I", payload)[0]


def pack_command(code, args=b""):
    return struct.pack(COMMAND_FMT, code, 0, len(args)) + bytes(args)


def unpack_command(payload):
    if len(payload) < 4:
        raise PayloadError("COMMAND payload too short")
    code, _r, n = struct.unpack_from(COMMAND_FMT, payload, 0)
    if 4 + n != len(payload):
        raise LengthError("COMMAND argument length %d disagrees with payload size" % n)
    return code, bytes(payload[4:])


def pack_reply(cmd_seq, status, code, result=b""):
    return struct.pack(REPLY_FMT, cmd_seq, status, code, len(result)) + bytes(result)


def unpack_reply(payload):
    if len(payload) < 8:
        raise PayloadError("REPLY payload too short")
    seq, status, code, n = struct.unpack_from(REPLY_FMT, payload, 0)
    if 8 + n != len(payload):
        raise LengthError("REPLY result length %d disagrees with payload size" % n)
    return seq, status, code, bytes(payload[8:])
