"""Root of the exception hierarchy.

Every package defines its errors under :class:`ImsStationError` so that a daemon can catch
"anything of ours" without swallowing programming errors.  Two families matter for operators:

* :class:`RemoteProtocolError` -- the *peer* sent something invalid (garbage on a serial line, a
  corrupt CD-1.1 frame, a bad MQTT payload).  Count it, log it (rate-limited), resynchronise.
* :class:`LocalProtocolError` -- *we* were asked to produce something invalid.  That is a bug.

:class:`ConfigError` names the file, the key and the reason.
"""

from __future__ import annotations


class ImsStationError(Exception):
    """Base class of every error raised on purpose by ims-station."""


class RemoteProtocolError(ImsStationError, ValueError):
    """The other side (a board, a station, a broker client) sent invalid data."""


class LocalProtocolError(ImsStationError, ValueError):
    """We were asked to build something the protocol does not allow (a bug on our side)."""


class ConfigError(ImsStationError, ValueError):
    """A configuration file is invalid.  ``str(err)`` reads ``file: key: reason``."""

    def __init__(self, file: str, key: str, reason: str) -> None:
        self.file = str(file)
        self.key = key
        self.reason = reason
        super().__init__(f"{self.file}: {key or '<top level>'}: {reason}")


class KeyFileError(ConfigError):
    """A key file is missing, unreadable, or readable by other users."""
