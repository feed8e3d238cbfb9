"""Canadian compression ("CA"), the sample compression of CD-1.1 channel subframes.

Owns the CA byte stream of one channel (spec ``cd11.md`` §5): second differences in blocks of 20
samples, a 16-bit index word per block choosing the narrow {4..18} or wide {4..32} bit-width table
for its five groups of four values, the first sample, then the MSB-first packed values.  It does
not own the subframe around it (data size field, NUL padding to 4, transformation flags, signing):
that is ``ims_station.cd11.frames``.

Sources: geotool ``libcancomp/canada.c`` and USGS ``Canada.java`` (encoder and decoder, from the
CNSN protocol manual), Sandia GMS ``CanadianCompressedWaveformReader.java`` (decoder).  No maintained
Python package implements CA, hence the hand-written codec.

Encoder choices (to reproduce the bytes real stations write, checked on every real frame):

* the reference encoder's free "next value" v0 is taken as ``2*x[n-1] - x[n-2]``, so the last
  second difference is 0;
* second differences are exact (not wrapped mod 2**32): a series whose second differences do not fit
  32 bits is refused (:func:`can_encode` is false) because the GMS decoder works through doubles and
  would not reproduce it; send such data uncompressed;
* ``n`` must be a positive multiple of 20 (the reference encoders refuse other ``n``).

The decoder treats its input as untrusted: it checks ``nsamples`` against the data length before
allocating, raises :class:`CaError` (with the byte offset in the CA data) when the stream runs past
the end, has bytes left over beyond NUL padding to 4, or decodes to samples outside int32, and never
raises anything else for any bytes.

Implementations, ObsPy style (a fast one beside a plain reference, cross-checked in
``tests/cd11/test_ca.py``):

* :func:`encode_reference` / :func:`decode_reference` -- plain Python, readable against the spec;
* ``ims_station.cd11._cafast`` -- the same algorithm in C (``_ca.c``), built by ``setup.py`` as an
  *optional* extension; a pure Python loop cannot reach the goal of 20 M samples/s (and numpy's
  per-call overhead dominates on 400-sample channels).  Without a compiler the package installs
  without it and :func:`encode` / :func:`decode` use the reference (about 1 M samples/s, plenty for a
  station).  :data:`IMPLEMENTATION` says which one is in use.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ims_station.errors import LocalProtocolError, RemoteProtocolError

try:  # the optional C extension (see setup.py)
    from ims_station.cd11 import _cafast
except ImportError:  # no compiler at install time: the reference implementation is used
    _cafast = None

IMPLEMENTATION = "c" if _cafast is not None else "reference"

BLOCK = 20            # samples per index word
GROUP = 4             # values per group; 5 groups per block
INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1
NARROW_MAX = 18       # widest group width of the narrow table
# Smallest possible stream per block: a 2-byte index word and five 4-bit groups of 2 bytes each.
MIN_BYTES_PER_BLOCK = 2 + 5 * 2


class CaError(RemoteProtocolError):
    """A CA-compressed channel cannot be decoded.  ``offset`` is the byte offset in the CA data.

    Examples: the data end inside the index section or inside a group; bytes are left over after the
    last group; ``nsamples`` is not a positive multiple of 20 or needs more bytes than there are;
    the decoded samples leave the int32 range.
    """

    def __init__(self, reason: str, offset: int) -> None:
        self.reason = reason
        self.offset = offset
        super().__init__(f"CA data, byte {offset}: {reason}")


# --------------------------------------------------------------------------------------------------
# public API


def encode(samples: Sequence[int] | np.ndarray) -> bytes:
    """CA-compress *samples* (ints fitting int32, a positive multiple of 20 of them).

    Returns the CA byte string as real stations write it, not padded to 4.  Raises
    :class:`~ims_station.errors.LocalProtocolError` for input CA cannot carry (see :func:`can_encode`).
    """
    x = _as_int32(samples)
    if _cafast is None:
        return encode_reference(x.tolist())
    try:
        return _cafast.encode(x)
    except OverflowError as err:
        raise LocalProtocolError(
            f"CA: second difference at sample {err.args[0]} does not fit 32 bits; send uncompressed") from None


def decode(data: bytes | bytearray | memoryview, nsamples: int) -> np.ndarray:
    """Decode *nsamples* samples from the CA byte string *data*; returns an int32 numpy array.

    *data* is the channel data field, either exactly the data size bytes or including its NUL
    padding to 4.  Raises :class:`CaError` for anything that is not a consistent CA stream.
    """
    buf = _bytes_view(data)
    _check_count(len(buf), nsamples)
    if _cafast is None:
        return np.array(decode_reference(buf, nsamples), dtype=np.int32)
    out = np.empty(nsamples, dtype=np.int32)
    failure = _cafast.decode(buf, nsamples, out)
    if failure is not None:
        offset, reason = failure
        raise CaError(reason, offset)
    return out


def can_encode(samples: Sequence[int] | np.ndarray) -> bool:
    """True if *samples* can be CA-compressed: a positive multiple of 20 ints fitting int32 whose
    second differences fit 32 bits."""
    try:
        x = _as_int32(samples, check_differences=False)
    except LocalProtocolError:
        return False
    return _first_bad_difference(x) is None


# --------------------------------------------------------------------------------------------------
# input checks shared by both implementations


def _as_int32(samples: Any, *, check_differences: bool = True) -> np.ndarray:
    try:
        arr = np.asarray(samples)
    except (OverflowError, ValueError, TypeError) as err:
        raise LocalProtocolError(f"CA: samples are not a sequence of integers: {err}") from None
    if arr.ndim != 1:
        raise LocalProtocolError(f"CA: samples must be one-dimensional, got shape {arr.shape}")
    n = arr.shape[0]
    if n == 0 or n % BLOCK:
        raise LocalProtocolError(f"CA: sample count must be a positive multiple of {BLOCK}, got {n}")
    if arr.dtype == object:  # Python ints beyond int64
        if not all(isinstance(v, (int, np.integer)) and INT32_MIN <= v <= INT32_MAX for v in arr.tolist()):
            raise LocalProtocolError("CA: samples must be integers fitting int32")
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise LocalProtocolError(f"CA: samples must be integers, got dtype {arr.dtype}")
    if arr.dtype != np.int32:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < INT32_MIN or hi > INT32_MAX:
            raise LocalProtocolError(f"CA: samples must fit int32 (range {lo}..{hi})")
    x = np.ascontiguousarray(arr, dtype=np.int32)
    if check_differences and _cafast is None:
        bad = _first_bad_difference(x)
        if bad is not None:
            raise LocalProtocolError(
                f"CA: second difference at sample {bad} does not fit 32 bits; send uncompressed")
    return x


def _first_bad_difference(x: np.ndarray) -> int | None:
    """Index of the first second difference (as the encoder defines them) outside int32, or None."""
    x64 = x.astype(np.int64)
    d1 = np.diff(x64)
    if not INT32_MIN <= d1[0] <= INT32_MAX:
        return 0
    d2 = np.diff(d1)  # d2[k] for k = 1 .. n-2; d2[n-1] is 0 by the choice of v0
    bad = np.flatnonzero((d2 < INT32_MIN) | (d2 > INT32_MAX))
    return int(bad[0]) + 1 if bad.size else None


def _bytes_view(data: Any) -> memoryview:
    try:
        view = memoryview(data)
    except TypeError as err:
        raise TypeError(f"CA data must be bytes-like, got {type(data).__name__}") from err
    if view.ndim != 1 or view.itemsize != 1 or not view.contiguous:
        view = memoryview(view.tobytes())
    return view.cast("B") if view.format != "B" else view


def _check_count(nbytes: int, nsamples: Any) -> None:
    """Refuse sample counts that are invalid or that *nbytes* cannot possibly hold (before any
    allocation: the count comes from the wire)."""
    if isinstance(nsamples, bool) or not isinstance(nsamples, (int, np.integer)):
        raise CaError(f"sample count must be an integer, got {type(nsamples).__name__}", 0)
    if nsamples <= 0 or nsamples % BLOCK:
        raise CaError(f"sample count {nsamples} is not a positive multiple of {BLOCK}", 0)
    needed = (nsamples // BLOCK) * MIN_BYTES_PER_BLOCK + 4
    if needed > nbytes:
        raise CaError(f"{nsamples} samples need at least {needed} bytes, data has {nbytes}", nbytes)


# --------------------------------------------------------------------------------------------------
# reference implementation (plain Python; the C extension mirrors it step by step)


def _width(value: int) -> int:
    """Bits needed to hold *value* in two's complement, rounded up to the even widths CA uses (>= 4)."""
    bits = (value if value >= 0 else ~value).bit_length() + 1
    return max(4, bits + (bits & 1))


def encode_reference(samples: Sequence[int]) -> bytes:
    """CA-compress *samples* (already checked: n a positive multiple of 20, each fitting int32)."""
    x = [int(v) for v in samples]
    n = len(x)
    if n == 0 or n % BLOCK:
        raise LocalProtocolError(f"CA: sample count must be a positive multiple of {BLOCK}, got {n}")
    # First differences; the last one uses v0 = 2*x[n-1] - x[n-2] (see module docstring).
    d1 = [x[k + 1] - x[k] for k in range(n - 1)] + [x[n - 1] - x[n - 2]]
    d2 = [d1[0]] + [d1[k] - d1[k - 1] for k in range(1, n)]
    for k, v in enumerate(d2):
        if not INT32_MIN <= v <= INT32_MAX:
            raise LocalProtocolError(
                f"CA: second difference at sample {k} does not fit 32 bits; send uncompressed")
    index = bytearray()
    packed = bytearray()
    for b in range(0, n, BLOCK):
        groups = [d2[g:g + GROUP] for g in range(b, b + BLOCK, GROUP)]
        widths = [max(_width(v) for v in grp) for grp in groups]
        if max(widths) <= NARROW_MAX:
            word = 0
            codes = [(w - 4) // 2 for w in widths]
        else:  # wide table: 4, 8, ..., 32
            word = 0x8000
            widths = [(w + 3) // 4 * 4 for w in widths]
            codes = [(w - 4) // 4 for w in widths]
        for g, code in enumerate(codes):
            word |= code << (12 - 3 * g)
        index += word.to_bytes(2, "big")
        for grp, w in zip(groups, widths):
            bits = 0
            for v in grp:
                bits = (bits << w) | (v & ((1 << w) - 1))
            packed += bits.to_bytes(w // 2, "big")  # 4 values of w bits = w/2 bytes
    return bytes(index) + x[0].to_bytes(4, "big", signed=True) + bytes(packed)


def decode_reference(data: bytes | bytearray | memoryview, nsamples: int) -> list[int]:
    """Decode *nsamples* samples from CA *data*; raises :class:`CaError` like :func:`decode`.

    Error offsets and reasons are the C extension's, word for word, so that errors do not depend on
    which implementation is installed (the tests compare them).
    """
    buf = bytes(data)
    _check_count(len(buf), nsamples)
    n = int(nsamples)
    nblocks = n // BLOCK
    pos = 2 * nblocks + 4  # index section + first sample (length checked by _check_count)
    x = int.from_bytes(buf[2 * nblocks:pos], "big", signed=True)
    out = [x]
    d1 = 0
    k = 0  # index of the next second difference
    for b in range(nblocks):
        word = int.from_bytes(buf[2 * b:2 * b + 2], "big")
        wide = word & 0x8000
        for g in range(5):
            code = (word >> (12 - 3 * g)) & 7
            w = 4 + 4 * code if wide else 4 + 2 * code
            size = w // 2
            if pos + size > len(buf):
                raise CaError("a group runs past the end of the data", pos)
            bits = int.from_bytes(buf[pos:pos + size], "big")
            for i in range(GROUP):
                v = (bits >> (w * (GROUP - 1 - i))) & ((1 << w) - 1)
                if v >> (w - 1):
                    v -= 1 << w
                d1 += v
                if k < n - 1:  # the last first difference leads to v0, which is discarded
                    x += d1
                    if not INT32_MIN <= x <= INT32_MAX:
                        raise CaError("a sample decodes outside int32", pos)
                    out.append(x)
                k += 1
            pos += size
    rest = buf[pos:]
    if len(rest) >= 4 or any(rest):
        raise CaError("bytes left after the end of the CA stream (not NUL padding to 4)", pos)
    return out
