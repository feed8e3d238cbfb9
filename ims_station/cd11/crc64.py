"""CRC-64 of CD-1.1 frames (the trailer's "comm verification" field).

Owns the checksum only; which bytes of a frame it covers is the frame codec's business
(``ims_station.cd11.frames``: all bytes before the 8-byte CRC field, spec ``cd11.md`` §2.3).

The model, exactly as the Canadian data centre's ``CRC64.c`` (ported in Sandia GMS ``CRC64.java`` and
USGS ``CRC64.java``) computes it, written as standard (Rocksoft) parameters (spec §2.4):

    width 64, poly 0x000000000000001B, init 0, refin false, refout false, xorout 0

It is not one of the catalogued CRC-64 variants (CRC-64/GO-ISO has the same polynomial but is
reflected and inverted), so the usual ``crc64`` packages that only ship named variants do not fit.

Two implementations, cross-checked in ``tests/cd11/test_crc64.py``:

* :func:`crc64_reference` -- a plain MSB-first table-driven loop, readable against the spec.
* the fast path -- the ``anycrc`` package (Cython around Mark Adler's ``crcany``, which takes any
  Rocksoft model; several GB/s).  It is a dependency on platforms that have wheels for it; where it
  is missing (e.g. 32-bit Raspberry Pi OS without a compiler) :func:`crc64` falls back to the
  reference, which is slow (~MB/s) but ample for a station's one frame per 10 s.

:data:`IMPLEMENTATION` says which one :func:`crc64` uses.
"""

from __future__ import annotations

from typing import Callable

POLY = 0x1B
MASK64 = (1 << 64) - 1


def _make_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte << 56
        for _ in range(8):
            crc = ((crc << 1) ^ POLY) & MASK64 if crc & (1 << 63) else (crc << 1) & MASK64
        table.append(crc)
    return tuple(table)


_TABLE = _make_table()


def crc64_reference(data: bytes | bytearray | memoryview) -> int:
    """CRC-64 (poly 0x1B, init 0, MSB-first, no final xor) of *data*, one byte at a time."""
    crc = 0
    table = _TABLE
    for byte in memoryview(data).cast("B"):
        crc = table[((crc >> 56) ^ byte) & 0xFF] ^ ((crc << 8) & MASK64)
    return crc


def _anycrc() -> Callable[[bytes | bytearray | memoryview], int] | None:
    try:
        import anycrc
    except ImportError:
        return None
    model = anycrc.CRC(width=64, poly=POLY, init=0, refin=False, refout=False, xorout=0)
    if model.calc(b"123456789") != 0xE4FFBEA588933790:  # pragma: no cover - a broken build
        return None
    return model.calc


_fast = _anycrc()
IMPLEMENTATION = "anycrc" if _fast is not None else "reference"


def crc64(data: bytes | bytearray | memoryview) -> int:
    """CRC-64 of *data* as CD-1.1 defines it; ``crc64(b"123456789") == 0xE4FFBEA588933790``."""
    if _fast is None:
        return crc64_reference(data)
    if isinstance(data, memoryview) and not (data.contiguous and data.format == "B"):
        data = data.cast("B") if data.contiguous else data.tobytes()
    return _fast(data)
