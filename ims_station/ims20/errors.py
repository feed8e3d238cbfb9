"""Errors of the IMS 2.0 message codec.

Owns the two exception types of :mod:`ims_station.ims20`; nothing else.

* :class:`Ims20Error` -- a message received from a peer (a detector driver's file, a station over the
  uplink, a file an operator hands to ``ims-station ims2 dump``) is not valid IMS 2.0 as this codec
  reads it.  It names the 1-based line number, the block (``#Acquisition``, ``DATA_TYPE``...) and the
  field, so an operator can open the file at that line.  Example situations: a live time that is not a
  number; a ``#g_Spectrum`` declaring 256 channels and holding 250; a histogram row label that does not
  follow the previous row; a line longer than the limit; a byte that is not ASCII; a second
  ``#Acquisition``; no ``STOP``.
* :class:`Ims20BuildError` -- *we* were asked to write something IMS 2.0 cannot carry (a station code
  with a space, a comment line starting with ``#``, a negative count).  A bug on our side, hence a
  :class:`~ims_station.errors.LocalProtocolError`.
"""

from __future__ import annotations

from ims_station.errors import LocalProtocolError, RemoteProtocolError


def _where(line: int | None, block: str, field: str) -> str:
    parts = []
    if line is not None:
        parts.append(f"line {line}")
    if block:
        parts.append(block)
    if field:
        parts.append(field)
    return ": ".join(parts)


class Ims20Error(RemoteProtocolError):
    """An IMS 2.0 message from a peer is invalid.

    Attributes: ``line`` (1-based line number, None when the message as a whole is at fault, e.g. too
    long), ``block`` (``#Header``, ``MSG_ID``, ``DATA_TYPE RMSSOH`` ...), ``field`` (the field name of
    the dataclass, e.g. ``live_time``) and ``reason``.
    """

    def __init__(self, reason: str, *, line: int | None = None, block: str = "", field: str = "") -> None:
        self.reason = reason
        self.line = line
        self.block = block
        self.field = field
        where = _where(line, block, field)
        super().__init__(f"IMS 2.0: {where}: {reason}" if where else f"IMS 2.0: {reason}")


class Ims20BuildError(LocalProtocolError):
    """We were asked to write a message IMS 2.0 cannot carry; names the block and field."""

    def __init__(self, reason: str, *, block: str = "", field: str = "") -> None:
        self.reason = reason
        self.block = block
        self.field = field
        where = _where(None, block, field)
        super().__init__(f"IMS 2.0 writer: {where}: {reason}" if where else f"IMS 2.0 writer: {reason}")
