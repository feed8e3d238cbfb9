"""Errors of the central relay.

Owns the exception types of the relay's own machinery (state store, archive, configuration of the
relay process).  It does not own what a *station* gets wrong: an invalid frame is not an exception
that escapes the relay but a :class:`~ims_station.relay.verify.Rejection` with a reason code that is
counted and quarantined (a station must never be able to crash the relay).

Example situations:

* :class:`StateStoreError` -- the state database cannot be opened or written (disk full, corrupt).
* :class:`ArchiveError` -- an archive file or its index cannot be written or read back; an index
  entry points past the end of its file.
* :class:`ExportError` -- miniSEED export asked for a station/day that holds no frames, or libmseed
  refused the data.
"""

from __future__ import annotations

from ims_station.errors import ImsStationError


class RelayError(ImsStationError):
    """Base class of the relay's errors."""


class StateStoreError(RelayError):
    """The frame-set state store cannot be read or written."""


class ArchiveError(RelayError):
    """The archive (frame files, index, quarantine) cannot be read or written."""


class ExportError(ArchiveError):
    """miniSEED export failed (nothing to export, or libmseed refused the data)."""
